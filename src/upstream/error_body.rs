//! What can be read out of a Store error body. No schema is published (the B2B APIs send
//! Microsoft's `ServiceError`, the Store for Business nothing documented), so parsing is lenient:
//! whatever is missing stays `None`.

use serde_json::Value;

use super::redact::Redactor;

/// The Store's documented inner error codes, searched for in `innererror`.
pub const DOCUMENTED_INNER_CODES: [&str; 4] = [
    "AuthenticationTokenInvalid",
    "InconsistentClientId",
    "PartnerAadTicketRequired",
    "InvalidParameter",
];

const MAX_TEXT_CHARS: usize = 300;

/// The useful parts of an error body.
#[derive(Debug, Clone, Default)]
pub struct ErrorBody {
    /// The Store's inner error code, e.g. `InconsistentClientId`.
    pub inner_code: Option<String>,
    /// A human-readable message, cleaned of anything that looks like a token or a URL.
    pub message: Option<String>,
    /// Every text of the body (codes, messages, data, targets), for finding a named field.
    texts: Vec<String>,
}

impl ErrorBody {
    /// Parses `body` with no secret to remove (see [`ErrorBody::parse_redacted`]).
    pub fn parse(body: &[u8]) -> Self {
        Self::parse_redacted(body, &Redactor::none())
    }

    /// Parses `body`; anything that is not JSON counts as one opaque text. The message and the
    /// inner code are scrubbed of `secrets` before they are shortened (so that no cut-off
    /// piece of a secret survives), then of anything that looks like a JWT or a URL.
    pub fn parse_redacted(body: &[u8], secrets: &Redactor<'_>) -> Self {
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            if let Some((code, message)) = azure_storage_error(body) {
                // Only the first line of the message: Azure adds the request id and time, and
                // for a refused SAS the string it signed (the queue's account and name).
                let first_line = message.lines().next().unwrap_or_default().trim().to_owned();
                return Self {
                    inner_code: (!code.trim().is_empty())
                        .then(|| clean(&secrets.scrub(code.trim()))),
                    message: (!first_line.is_empty()).then(|| clean(&secrets.scrub(&first_line))),
                    texts: vec![code, first_line],
                };
            }
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            return Self {
                inner_code: None,
                message: (!text.is_empty()).then(|| clean(&secrets.scrub(text))),
                texts: vec![text.chars().take(4096).collect()],
            };
        };
        let inner = field(&json, "innererror");
        let mut texts = Vec::new();
        collect_texts(&json, &mut texts);
        Self {
            inner_code: inner_code(inner, &json).map(|code| secrets.scrub(&code).into_owned()),
            message: inner
                .and_then(|i| field(i, "message"))
                .or_else(|| field(&json, "message"))
                .or_else(|| field(&json, "error_description"))
                .and_then(Value::as_str)
                .map(|text| clean(&secrets.scrub(text))),
            texts,
        }
    }

    /// The first of `names` that the body mentions as a whole word.
    pub fn mentions<'a>(&self, names: &[&'a str]) -> Option<&'a str> {
        names.iter().copied().find(|name| {
            self.texts
                .iter()
                .any(|text| find_word(text, name).is_some())
        })
    }
}

/// Looks `name` up case-insensitively (`innererror`, `innerError`, ...).
fn field<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
    value
        .as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The `Code` and `Message` of an Azure Storage error body
/// (`<?xml ...?><Error><Code>...</Code><Message>...</Message>...</Error>`), if `body` is one.
fn azure_storage_error(body: &[u8]) -> Option<(String, String)> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let (mut code, mut message) = (String::new(), String::new());
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).ok()? {
            Event::Start(start) => path.push(start.name().as_ref().to_vec()),
            Event::End(_) => {
                path.pop()?;
            }
            Event::Text(text) => {
                let text = text.xml10_content().ok()?;
                match path.as_slice() {
                    [root, name] if root == b"Error" && name == b"Code" => code.push_str(&text),
                    [root, name] if root == b"Error" && name == b"Message" => {
                        message.push_str(&text);
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    (!code.is_empty() || !message.is_empty()).then_some((code, message))
}

fn collect_texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if out.len() < 64 => out.push(s.chars().take(4096).collect()),
        Value::Array(items) => items.iter().for_each(|v| collect_texts(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_texts(v, out)),
        _ => {}
    }
}

/// The first documented code in `innererror.code`, else in the text of `innererror.data`,
/// else `innererror.code` as it stands, else a documented top-level `code`.
fn inner_code(inner: Option<&Value>, body: &Value) -> Option<String> {
    let documented = |code: &str| DOCUMENTED_INNER_CODES.contains(&code);
    let code = inner.and_then(|i| field(i, "code")).and_then(Value::as_str);
    if let Some(code) = code.filter(|c| documented(c)) {
        return Some(code.to_owned());
    }
    if let Some(data) = inner.and_then(|i| field(i, "data")) {
        let mut texts = Vec::new();
        collect_texts(data, &mut texts);
        let first = texts.iter().find_map(|text| {
            DOCUMENTED_INNER_CODES
                .iter()
                .filter_map(|c| find_word(text, c).map(|at| (at, *c)))
                .min()
        });
        if let Some((_, code)) = first {
            return Some(code.to_owned());
        }
    }
    if let Some(code) = code.filter(|c| !c.trim().is_empty()) {
        return Some(code.to_owned());
    }
    field(body, "code")
        .and_then(Value::as_str)
        .filter(|c| documented(c))
        .map(str::to_owned)
}

/// Where `word` stands in `text` with no letter or digit glued to either side.
fn find_word(text: &str, word: &str) -> Option<usize> {
    text.match_indices(word).map(|(at, _)| at).find(|&at| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Shortens `text` and blanks anything that looks like a JWT or a URL, so that an upstream
/// message that echoes a key, a token or an address never reaches the caller.
pub fn clean(text: &str) -> String {
    let cleaned: Vec<&str> = text
        .split_whitespace()
        .map(|word| {
            let secret_like = word.contains("eyJ")
                || word.contains("://")
                || (word.len() > 40 && word.matches('.').count() >= 2);
            if secret_like {
                "[redacted]"
            } else {
                word
            }
        })
        .collect();
    let joined = cleaned.join(" ");
    match joined.char_indices().nth(MAX_TEXT_CHARS) {
        Some((cut, _)) => format!("{}...", &joined[..cut]),
        None => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_storage_errors_give_their_code_and_first_line_only() {
        let body = b"<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code>\
            <Message>Server failed to authenticate the request.\nRequestId:5974b586\nTime:2026-11-20</Message>\
            <AuthenticationErrorDetail>String to sign used was rp /queue/acct/refunds</AuthenticationErrorDetail></Error>";
        let parsed = ErrorBody::parse(body);
        assert_eq!(parsed.inner_code.as_deref(), Some("AuthenticationFailed"));
        assert_eq!(
            parsed.message.as_deref(),
            Some("Server failed to authenticate the request.")
        );
        assert_eq!(
            parsed.mentions(&["AuthenticationFailed"]),
            Some("AuthenticationFailed")
        );
        assert_eq!(parsed.mentions(&["acct"]), None);
    }

    #[test]
    fn documented_code_is_found_inside_innererror_data() {
        let body = br#"{"code":"Unauthorized","message":"Access denied","innererror":{"code":"AuthenticationFailure","message":"Auth failed","data":["MSA : { : InconsistentClientId : clientId differs, AuthenticationTokenInvalid later"]}}"#;
        let parsed = ErrorBody::parse(body);
        assert_eq!(parsed.inner_code.as_deref(), Some("InconsistentClientId"));
        assert_eq!(parsed.message.as_deref(), Some("Auth failed"));
    }

    #[test]
    fn documented_innererror_code_wins_and_undocumented_stands() {
        let body =
            br#"{"innerError":{"code":"PartnerAadTicketRequired","data":["InvalidParameter"]}}"#;
        assert_eq!(
            ErrorBody::parse(body).inner_code.as_deref(),
            Some("PartnerAadTicketRequired")
        );
        let body = br#"{"innererror":{"code":"SomethingNew","data":[]}}"#;
        assert_eq!(
            ErrorBody::parse(body).inner_code.as_deref(),
            Some("SomethingNew")
        );
        assert_eq!(ErrorBody::parse(b"<html>oops</html>").inner_code, None);
    }

    #[test]
    fn named_fields_are_found_as_whole_words() {
        let body = br#"{"code":"BadRequest","innererror":{"code":"InvalidParameter","data":["skuId : must be 4 characters"]}}"#;
        let parsed = ErrorBody::parse(body);
        assert_eq!(parsed.mentions(&["productId", "skuId"]), Some("skuId"));
        assert_eq!(parsed.mentions(&["sku"]), None);
    }

    #[test]
    fn tokens_and_urls_are_blanked() {
        let text = "key eyJhbGciOi.eyJhdWQi.sig is bad at https://x.example/y";
        assert_eq!(clean(text), "key [redacted] is bad at [redacted]");
        assert!(clean(&"a ".repeat(400)).ends_with("..."));
    }
}

#[cfg(test)]
mod proptests {
    //! [`crate::fuzzing::error_body`]'s properties (shared with its fuzz target) over arbitrary
    //! bytes, JSON bodies of any shape around the fields that are read, and deep nesting.
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use crate::fuzzing;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            prop::sample::select(vec![
                "InconsistentClientId",
                "skuId : bad",
                "eyJhbGciOi.eyJhdWQi.sig",
                "https://x.example/y",
                "",
            ])
            .prop_map(str::to_owned),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            text().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            let key = prop::sample::select(vec![
                "code",
                "message",
                "innererror",
                "innerError",
                "data",
                "x",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(key.prop_map(str::to_owned), inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_parse_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
            fuzzing::error_body(&bytes);
        }

        #[test]
        fn json_bodies_of_any_shape_parse_without_panic(
            code in json_value(), message in json_value(), inner in json_value(),
        ) {
            let body = json!({ "code": code, "message": message, "innererror": inner });
            fuzzing::error_body(body.to_string().as_bytes());
        }

        #[test]
        fn deep_nesting_parses_without_panic(depth in 0usize..400, open in "[\\[{]") {
            let close = if open == "[" { "]" } else { "}" };
            let body = format!("{}{}", open.repeat(depth), close.repeat(depth));
            fuzzing::error_body(body.as_bytes());
        }
    }
}
