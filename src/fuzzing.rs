//! One entry point per parser of outside data, taking arbitrary bytes: the fuzz targets in
//! `fuzz/` call them, and so do the property tests next to each parser. Each one parses, then
//! checks what must hold of the outcome and panics when it does not; a panic inside a parser
//! is a finding too. Not part of the API.
//!
//! Besides the bytes as they come, each entry point also reads them the way a parser's
//! interesting inputs are shaped (a number for `expires_in`, a JWT payload, an HTTP date), so
//! that a fuzzer reaches the paths behind the outer syntax.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use http::StatusCode;

use crate::api::validation::{Checks, MAX_CREDENTIAL_BYTES, MAX_ID_BYTES};
use crate::api::{deadline_after, CallDeadlines};
use crate::auth::{
    key_audience, token_from_answer, AllowedTenants, KeyClaims, TenantId, TokenError,
};
use crate::error::{ApiError, Violation};
use crate::telemetry::ms_cv::CorrelationVector;
use crate::telemetry::trace_context::TraceContext;
use crate::upstream::redact::REDACTED;
use crate::upstream::{clean_text, segment, ErrorBody, Redactor, MAX_RETRY_AFTER};

/// The bytes as the text a proto string or a header would carry (lossy, so that every input
/// reaches the parser).
fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Little-endian numbers read off the front of the bytes; zeros once they run out.
struct Numbers<'a>(&'a [u8]);

impl Numbers<'_> {
    fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        let n = self.0.len().min(8);
        bytes[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u64::from_le_bytes(bytes)
    }

    /// Any `Duration`, `Duration::MAX` included.
    fn duration(&mut self) -> Duration {
        let seconds = self.u64();
        Duration::new(seconds, (self.u64() % 1_000_000_000) as u32)
    }
}

fn violations(check: impl FnOnce(&mut Checks)) -> Vec<Violation> {
    let mut checks = Checks::default();
    check(&mut checks);
    match checks.finish() {
        Ok(()) => Vec::new(),
        Err(ApiError::Invalid { violations, .. }) => violations,
        Err(other) => panic!("validation ended in {other:?}"),
    }
}

/// Store ids and credentials (`api::validation::Checks`). An id is accepted exactly when it is
/// 1 to 256 bytes without a control character and is not `.` or `..`, and then it is sent as
/// one path segment that decodes back to it. A credential is accepted by length and control
/// characters only, and a refusal never echoes it. A tenant is accepted when it parses.
pub fn store_id(data: &[u8]) {
    let text = text(data);
    let refused = violations(|c| c.store_id("product_id", &text));
    let documented = !text.is_empty()
        && text.len() <= MAX_ID_BYTES
        && !text.chars().any(char::is_control)
        && text != "."
        && text != "..";
    assert_eq!(refused.is_empty(), documented, "store id {text:?}");
    assert!(refused.len() <= 1 && refused.iter().all(|v| v.field == "product_id"));
    if documented {
        let encoded = segment(&text).to_string();
        assert!(
            !encoded.contains(['/', '?', '#']) && encoded != "." && encoded != "..",
            "{text:?} is sent as {encoded:?}"
        );
        let decoded = percent_encoding::percent_decode_str(&encoded).decode_utf8();
        assert_eq!(decoded.as_deref(), Ok(&*text), "{encoded:?}");
    }

    for required in [true, false] {
        let refused = violations(|c| c.credential("key", &text, required));
        let documented = !(required && text.is_empty())
            && text.len() <= MAX_CREDENTIAL_BYTES
            && !text.chars().any(char::is_control);
        assert_eq!(refused.is_empty(), documented, "credential {text:?}");
        for violation in &refused {
            assert_eq!(violation.field, "key");
            assert!(
                text.len() < 8 || !violation.description.contains(&*text),
                "a refusal echoes the credential: {violation:?}"
            );
        }
    }

    let mut checks = Checks::default();
    let tenant = checks.tenant("tenant_id", &text);
    let refused = checks.finish().is_err();
    assert_eq!(tenant, TenantId::parse(&text).ok());
    assert_eq!(refused, !text.is_empty() && tenant.is_none());
}

/// Tenant ids (`TenantId::parse`, `AllowedTenants::parse`). An accepted tenant is the text
/// lower-cased, at most 253 bytes of `[a-z0-9.-]`, needs no escaping in the token URL's path,
/// and parses again to itself. An allow-list is `*` alone, or one tenant per comma-separated
/// entry; it is refused only when an entry is not a tenant.
pub fn tenant_id(data: &[u8]) {
    let text = text(data);
    if let Ok(tenant) = TenantId::parse(&text) {
        let id = tenant.as_str();
        assert_eq!(id, text.to_ascii_lowercase());
        assert!(id.len() <= 253, "{id:?}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
            "{id:?}"
        );
        assert_eq!(segment(id).to_string(), id, "the token URL would change");
        assert!(!id.starts_with('.') && !id.ends_with('.') && !id.contains(".."));
        assert_eq!(TenantId::parse(id).ok().as_ref(), Some(&tenant));
        assert_eq!(tenant.to_string(), id);
    }
    let entries: Vec<&str> = text.split(',').map(str::trim).collect();
    match AllowedTenants::parse(&text) {
        Ok(AllowedTenants::Any) => assert_eq!(entries, ["*"]),
        Ok(AllowedTenants::Only(tenants)) => {
            assert_eq!(tenants.len(), entries.len());
            for (tenant, entry) in tenants.iter().zip(&entries) {
                assert_eq!(TenantId::parse(entry).ok().as_ref(), Some(tenant));
            }
            let list = AllowedTenants::Only(tenants.clone());
            assert!(tenants.iter().all(|tenant| list.allows(tenant)));
        }
        Err(_) => assert!(entries.iter().any(|entry| TenantId::parse(entry).is_err())),
    }
}

/// The field names the operations look for in error bodies.
const FIELD_NAMES: [&str; 5] = ["productId", "skuId", "contentId", "key", "serviceTicket"];

/// Store error bodies (`ErrorBody::parse`, `parse_redacted`, `mentions`, `clean`). Any bytes
/// parse; a message is at most 300 characters (and `...`) with nothing that looks like a JWT
/// or a URL; an inner code is never blank; `mentions` answers one of the names it was asked
/// about; a secret of the request (here: the first run of 8 or more base64url or JWT
/// characters in the bytes) is in neither the message nor the inner code. The bytes are also
/// tried as every text of a `ServiceError`-shaped body.
pub fn error_body(data: &[u8]) {
    let text = text(data);
    let shaped = serde_json::json!({
        "code": "BadRequest",
        "message": text,
        "innererror": { "code": text, "message": text, "data": [text, { "target": text }] },
    })
    .to_string();
    let secret = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .find(|run| run.len() >= 8)
        .map(|run| &run[..run.len().min(64)]);
    for body in [data, shaped.as_bytes()] {
        error_body_holds(&ErrorBody::parse(body));
        if let Some(secret) = secret {
            let mut secrets = Redactor::none();
            secrets.secret(secret);
            let parsed = ErrorBody::parse_redacted(body, &secrets);
            error_body_holds(&parsed);
            for said in parsed.message.iter().chain(&parsed.inner_code) {
                assert!(
                    !said.contains(secret) || REDACTED.contains(secret),
                    "{secret:?} is in {said:?}"
                );
            }
        }
    }
    assert_cleaned(&clean_text(&text));
}

fn error_body_holds(parsed: &ErrorBody) {
    if let Some(message) = &parsed.message {
        assert_cleaned(message);
    }
    if let Some(code) = &parsed.inner_code {
        assert!(!code.trim().is_empty(), "blank inner code");
    }
    if let Some(name) = parsed.mentions(&FIELD_NAMES) {
        assert!(FIELD_NAMES.contains(&name));
    }
}

fn assert_cleaned(message: &str) {
    assert!(message.chars().count() <= 303, "{message:?} is too long");
    assert!(
        !message.contains("eyJ") && !message.contains("://"),
        "{message:?} is not cleaned"
    );
}

/// Entra token responses (`token_from_answer`). Any body under any status gives a token only
/// on 2xx, whose text is non-empty and whose `Bearer` header carries it marked sensitive;
/// 429 and 5xx are unavailable; other refusals name an OAuth code or the HTTP status. The
/// first 8 bytes are also tried as an `expires_in` of any `f64`, as a number and as text.
pub fn token_response(data: &[u8]) {
    for status in [200, 201, 400, 401, 404, 429, 500, 503] {
        token_answer(StatusCode::from_u16(status).expect("a valid status"), data);
    }
    let expires_in = f64::from_bits(Numbers(data).u64());
    let access_token = serde_json::Value::from(text(data.get(8..).unwrap_or_default()));
    let as_text = serde_json::Value::from(expires_in.to_string());
    for expires_in in [expires_in.to_string(), as_text.to_string()] {
        let body = format!(r#"{{"access_token":{access_token},"expires_in":{expires_in}}}"#);
        token_answer(StatusCode::OK, body.as_bytes());
    }
}

fn token_answer(status: StatusCode, body: &[u8]) {
    match token_from_answer(status, None, body, Instant::now()) {
        Ok(token) => {
            assert!(status.is_success(), "a token from HTTP {status}");
            assert!(!token.expose().is_empty());
            let bearer = token.bearer();
            assert!(bearer.is_sensitive());
            assert_eq!(
                bearer.as_bytes(),
                format!("Bearer {}", token.expose()).as_bytes()
            );
        }
        Err(TokenError::Malformed { http_status }) => {
            assert!(status.is_success());
            assert_eq!(http_status, status.as_u16());
        }
        Err(TokenError::Unavailable { http_status, .. }) => {
            assert!(status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error());
            assert_eq!(http_status, Some(status.as_u16()));
        }
        Err(TokenError::Rejected {
            http_status,
            error,
            aadsts,
        }) => {
            assert!(!status.is_success() && status != StatusCode::TOO_MANY_REQUESTS);
            assert!(!status.is_server_error());
            assert_eq!(http_status, status.as_u16());
            let oauth_code = (1..=64).contains(&error.len())
                && error
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            assert!(
                oauth_code || error == format!("HTTP {http_status}"),
                "{error:?}"
            );
            if let Some(code) = aadsts {
                let digits = code.strip_prefix("AADSTS").unwrap_or_default();
                assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
            }
        }
        Err(other) => panic!("a token answer ended in {other:?}"),
    }
}

/// Store ID key claims (`KeyClaims::decode`). Any text decodes or is refused; decoded `iat`
/// and `exp` are valid `google.protobuf.Timestamp` seconds; the host is the one its `aud`
/// names. The bytes are also tried as the payload of a JWT.
pub fn store_key(data: &[u8]) {
    claims_hold(KeyClaims::decode(&text(data)));
    let key = format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(data));
    claims_hold(KeyClaims::decode(&key));
}

fn claims_hold(decoded: Result<KeyClaims, crate::auth::KeyDecodeError>) {
    let Ok(claims) = decoded else { return };
    for seconds in [claims.iat, claims.exp].into_iter().flatten() {
        assert!(
            (KeyClaims::EARLIEST..=KeyClaims::LATEST).contains(&seconds),
            "{seconds}"
        );
        let timestamp = prost_types::Timestamp { seconds, nanos: 0 };
        let shown = timestamp.to_string();
        assert_eq!(
            shown.parse::<prost_types::Timestamp>().as_ref(),
            Ok(&timestamp),
            "{shown}"
        );
    }
    if let Ok(host) = claims.host() {
        assert_eq!(key_audience(host), claims.aud.as_deref());
    }
}

/// MS-CV (`CorrelationVector`). Any text parses or is refused; an accepted vector shows as
/// text that parses back to it, and stays within its version's length (63 or 127, and `!`)
/// and valid through any extends and increments (one per byte); once frozen it never changes.
/// The vector of a call is always valid, and every attempt's vector starts with the caller's.
pub fn ms_cv(data: &[u8]) {
    let text = text(data);
    let limit = match text.split_once('.').map(|(base, _)| base.len()) {
        Some(16) => 63,
        _ => 127,
    };
    if let Some(mut cv) = CorrelationVector::parse(&text) {
        let caller = cv.to_string();
        let mut frozen: Option<String> = None;
        for byte in data.iter().take(64) {
            let shown = cv.to_string();
            assert_eq!(
                CorrelationVector::parse(&shown).as_ref(),
                Some(&cv),
                "{shown}"
            );
            assert!(
                shown.trim_end_matches('!').len() <= limit,
                "{shown} is too long"
            );
            assert!(shown.len() <= limit + 1);
            assert_eq!(
                shown.split('.').next(),
                caller.split('.').next(),
                "the base changed"
            );
            match &frozen {
                Some(frozen) => assert_eq!(&shown, frozen),
                None if shown.ends_with('!') => frozen = Some(shown),
                None => {}
            }
            if byte & 1 == 0 {
                cv.extend();
            } else {
                cv.increment();
            }
        }
    }
    let mut call = CorrelationVector::for_call(Some(&text));
    let shown = call.to_string();
    if let Some(caller) = CorrelationVector::parse(&text) {
        let caller = caller.to_string();
        assert!(
            shown.starts_with(caller.trim_end_matches('!')),
            "{shown} from {caller}"
        );
    }
    let stem = shown.trim_end_matches('!');
    let stem = stem
        .rsplit_once('.')
        .map_or(stem, |(prefix, _)| prefix)
        .to_owned();
    for _ in 0..3 {
        let sent = call.next_attempt();
        assert!(CorrelationVector::parse(&sent).is_some(), "{sent}");
        assert!(
            sent.len() <= 128 && sent.starts_with(&stem),
            "{sent} from {stem}"
        );
    }
}

/// W3C `traceparent` (`TraceContext::parse`). An accepted header is `version-trace-parent-flags`
/// of lower-case hex (version not `ff`, ids not zero); the call continues its trace id and
/// flags, and every `traceparent` it sends parses again to the same trace. Whatever arrives,
/// the call's outgoing `traceparent` is valid.
pub fn traceparent(data: &[u8]) {
    let text = text(data);
    if let Some(context) = TraceContext::parse(&text) {
        let fields: Vec<&str> = text.trim().split('-').collect();
        assert!(fields.len() >= 4 && fields[0] != "ff", "{text:?}");
        assert!(
            fields[1] != "0".repeat(32) && fields[2] != "0".repeat(16),
            "{text:?}"
        );
        assert_eq!(context.trace_id(), fields[1]);
        let sent = context.traceparent();
        assert_eq!(sent.len(), 55, "{sent}");
        assert!(sent.starts_with(&format!("00-{}-", fields[1])), "{sent}");
        assert!(sent.ends_with(&format!("-{}", fields[3])), "{sent}");
        let again = TraceContext::parse(&sent).expect("a sent traceparent parses");
        assert_eq!(again.trace_id(), context.trace_id());
        assert_eq!(again.traceparent()[..36], sent[..36]);
    }
    let sent = TraceContext::for_call(Some(&text)).traceparent();
    assert!(TraceContext::parse(&sent).is_some(), "{sent}");
}

/// `grpc-timeout` and the call's deadline (`grpc_timeout`, `CallDeadlines`, `deadline_after`).
/// An accepted timeout is 1 to 8 digits and a unit; the caller's budget is at most the cap
/// and the timeout; the call's own budget is at most 100 ms (and a tenth) less; the deadline
/// is never before the start, whatever the settings (read off the bytes, up to
/// `Duration::MAX`).
pub fn grpc_timeout(data: &[u8]) {
    let text = text(data);
    let timeout = crate::api::grpc_timeout(&text);
    if let Some(timeout) = timeout {
        assert!((2..=9).contains(&text.len()), "{text:?}");
        assert!(timeout <= Duration::from_secs(99_999_999 * 3600));
    }
    let mut numbers = Numbers(data);
    let deadlines = CallDeadlines {
        default: numbers.duration(),
        max: numbers.duration(),
    };
    for asked in [timeout, Some(numbers.duration()), None] {
        call_deadline_holds(deadlines, asked);
    }
}

/// The deadline of a call under `deadlines` whose caller asked for `asked` (see
/// [`grpc_timeout`]).
pub(crate) fn call_deadline_holds(deadlines: CallDeadlines, asked: Option<Duration>) {
    let caller = deadlines.caller_budget(asked);
    assert_eq!(caller.is_some(), asked.is_some());
    if let (Some(caller), Some(asked)) = (caller, asked) {
        assert!(caller <= deadlines.max && caller <= asked);
    }
    let budget = deadlines.call_budget(caller);
    match caller {
        None => assert_eq!(budget, deadlines.default),
        Some(caller) => {
            let margin = caller - budget;
            assert!(margin <= Duration::from_millis(100) && margin <= caller / 10);
        }
    }
    let started = Instant::now();
    let deadline = deadline_after(started, budget);
    assert!(deadline >= started);
    if let Some(exact) = started.checked_add(budget) {
        assert_eq!(deadline, exact);
    }
}

/// The latest second an HTTP date can name: 9999-12-31T23:59:59Z.
const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// `Retry-After` (`upstream::retry_after`). A delay is at most a day and can be added to an
/// `Instant` and a `SystemTime`; delay-seconds of any size count (capped), HTTP dates in the
/// past count as zero. The bytes are also tried as delay-seconds of any `u64` and as an HTTP
/// date of any second up to year 9999.
pub fn retry_after(data: &[u8]) {
    if let Ok(value) = HeaderValue::from_bytes(data) {
        retry_after_holds(value);
    }
    let number = Numbers(data).u64();
    let seconds = retry_after_holds(HeaderValue::from(number));
    let day = MAX_RETRY_AFTER;
    assert_eq!(seconds, Some(Duration::from_secs(number).min(day)));
    let at = UNIX_EPOCH + Duration::from_secs(number % (LAST_HTTP_DATE + 1));
    let date = httpdate::fmt_http_date(at);
    let before = SystemTime::now();
    let delay = retry_after_holds(HeaderValue::from_str(&date).expect("a valid header"));
    let after = SystemTime::now();
    let delay = delay.unwrap_or_else(|| panic!("{date:?} is not read"));
    let from = |now: SystemTime| at.duration_since(now).unwrap_or(Duration::ZERO).min(day);
    assert!(
        from(after) <= delay && delay <= from(before),
        "{date:?}: {delay:?}"
    );
}

fn retry_after_holds(value: HeaderValue) -> Option<Duration> {
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, value.clone());
    let delay = crate::upstream::retry_after(&headers);
    if let Some(delay) = delay {
        assert!(delay <= MAX_RETRY_AFTER, "{value:?}: {delay:?}");
        let _ = Instant::now() + delay;
        let _ = SystemTime::now() + delay;
    }
    let text = value.to_str().map(str::trim).unwrap_or_default();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let seconds = text.parse::<u64>().unwrap_or(u64::MAX);
        assert_eq!(
            delay,
            Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
        );
    }
    delay
}

/// Property-test inputs one step off well-formed ones: one character of `text` replaced by
/// any character or one of `by`, or removed.
#[cfg(test)]
pub(crate) fn one_char_off(
    text: impl proptest::strategy::Strategy<Value = String>,
    by: &'static [char],
) -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    use proptest::sample::{select, Index};

    let by = prop_oneof![
        2 => any::<char>().prop_map(Some),
        2 => select(by).prop_map(Some),
        1 => Just(None),
    ];
    (text, any::<Index>(), by).prop_map(|(text, at, by)| {
        let mut chars: Vec<char> = text.chars().collect();
        if chars.is_empty() {
            return text;
        }
        let at = at.index(chars.len());
        match by {
            Some(by) => chars[at] = by,
            None => {
                chars.remove(at);
            }
        }
        chars.into_iter().collect()
    })
}

/// The refund queue's answers (`upstream::queue::parse_messages`, the pulled events, the SAS
/// answer's `expiresOn`). A messages list is read or refused, never half-read: every message
/// read has an id and a pop receipt that can be sent back, and its `ack_id` names exactly
/// them. An event is decoded exactly when its text is base64 of a JSON object with an `id`;
/// otherwise `decode_error` says why and the text is handed back as it came. Every date is a
/// valid `google.protobuf.Timestamp`. The bytes are also tried as a message's text (escaped
/// into a list), as base64 of that text, and as `expiresOn`.
pub fn refund_queue(data: &[u8]) {
    use base64::engine::general_purpose::STANDARD;

    let text = text(data);
    let escaped = quick_xml::escape::escape(text.as_ref());
    let as_message = |body: &str| {
        format!(
            "<QueueMessagesList><QueueMessage><MessageId>0c2e5b1a-7d3f-4e8a-9b6c-1f2e3d4c5b6a</MessageId>\
             <PopReceipt>r+/=</PopReceipt>\
             <DequeueCount>1</DequeueCount><MessageText>{body}</MessageText></QueueMessage>\
             </QueueMessagesList>"
        )
    };
    let shaped = [as_message(&escaped), as_message(&STANDARD.encode(data))];
    for body in std::iter::once(data).chain(shaped.iter().map(String::as_bytes)) {
        let Some(messages) = crate::upstream::queue::parse_messages(body) else {
            continue;
        };
        for message in &messages {
            refund_event_holds(message);
        }
    }
    for shaped in &shaped {
        let messages = crate::upstream::queue::parse_messages(shaped.as_bytes());
        assert_eq!(
            messages.map(|m| m.len()),
            Some(1),
            "{shaped:?} is one message"
        );
    }
    if let Some(at) = crate::ops::sas_expires_on(&text) {
        let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
        assert!(
            (KeyClaims::EARLIEST..=KeyClaims::LATEST).contains(&seconds),
            "{text:?}: {seconds}"
        );
    }
}

fn refund_event_holds(message: &crate::upstream::queue::QueueMessage) {
    let event = crate::ops::refund_event(message);
    let ack = crate::ops::AckId::decode(&event.ack_id).expect("the ack id of a pulled message");
    assert_eq!(ack.message_id, message.message_id);
    assert_eq!(ack.pop_receipt, message.pop_receipt);
    if event.decode_error.is_empty() {
        assert!(!event.id.is_empty(), "a decoded event has an id");
        assert!(event.message_text.is_empty());
    } else {
        assert!(event.id.is_empty());
        assert_eq!(event.message_text, message.text);
    }
    let dates = [
        &event.purchased_date,
        &event.event_date,
        &event.time,
        &event.insertion_time,
        &event.expiration_time,
        &event.time_next_visible,
    ];
    let recurrence = event
        .recurrence_data
        .as_ref()
        .and_then(|r| r.duration_interval_start.as_ref());
    for at in dates.into_iter().flatten().chain(recurrence) {
        assert!(
            (KeyClaims::EARLIEST..=KeyClaims::LATEST).contains(&at.seconds)
                && (0..1_000_000_000).contains(&at.nanos),
            "{at:?}"
        );
    }
}
