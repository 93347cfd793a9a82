//! Secrets scrubbed out of upstream text by value (contract, section 6).
//!
//! Every secret a Store request carries (the `Authorization` token or ticket, the tokens,
//! tickets and keys in its body, declared by the operation) and the facade's client secret are
//! removed from the answer's text, its inner code and its correlation headers before any of it
//! can reach a status message, a detail, a span or a log line. This is the one place: the
//! failure [`super::StoreClient::exchange`] returns has been through it. Matching is by value,
//! so an opaque ticket is removed as surely as a JWT; besides the whole value, each
//! dot-separated part of at least [`MIN_PART`] characters is removed (a Store that quotes only a
//! key's payload or signature).

use std::borrow::Cow;

use http::HeaderValue;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// The shortest part of a dotted secret (a JWT's header, payload or signature) removed on its
/// own; shorter parts are common words of base64 text, not secrets by themselves.
pub const MIN_PART: usize = 16;

/// Shorter values are not treated as secrets: they would blank ordinary words.
const MIN_SECRET: usize = 8;

/// The secret values of one upstream request. Building one costs nothing on the hot path:
/// the values are borrowed, and split into parts only when an answer's text is scrubbed.
#[derive(Default)]
pub struct Redactor<'a> {
    values: Vec<&'a str>,
    authorization: Option<&'a HeaderValue>,
}

impl<'a> Redactor<'a> {
    /// No secrets: text passes unchanged (parsers' own tests, fuzzing).
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds `value` (and its dotted parts) to the secrets.
    pub fn secret(&mut self, value: &'a str) -> &mut Self {
        self.values.push(value);
        self
    }

    /// Adds the credential of an `Authorization` header value: the part after its scheme
    /// (`Bearer <token>`), or the whole value when it has none.
    pub fn authorization(&mut self, value: &'a HeaderValue) -> &mut Self {
        self.authorization = Some(value);
        self
    }

    /// Every value of at most `limit` bytes to remove (longer ones cannot occur in a text of
    /// that length): each secret, and each dotted part of at least [`MIN_PART`] characters.
    /// Allocates nothing when none is that short, as on a success path whose ids are short.
    fn patterns(&self, limit: usize) -> Vec<&'a str> {
        // The header's credential (after its scheme) is the secret; the whole value contains
        // it. `from_utf8` rather than `HeaderValue::to_str`: this runs on every call, and the
        // latter checks a kilobyte-long token byte by byte.
        let credential = self
            .authorization
            .and_then(|value| std::str::from_utf8(value.as_bytes()).ok())
            .map(|text| {
                text.split_once(' ')
                    .map_or(text, |(_, credential)| credential)
            })
            .filter(|credential| !self.values.contains(credential));
        let mut patterns = Vec::new();
        for value in self.values.iter().copied().chain(credential) {
            let value = value.trim();
            if value.len() < MIN_SECRET {
                continue;
            }
            if value.len() <= limit {
                patterns.push(value);
            }
            if value.contains('.') {
                patterns.extend(
                    value
                        .split('.')
                        .filter(|part| part.len() >= MIN_PART && part.len() <= limit),
                );
            }
        }
        patterns
    }

    /// `text` with every secret replaced by [`REDACTED`]; borrowed when none occurs.
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut patterns = self.patterns(text.len());
        // Longest first: a whole key goes before its parts, leaving one marker.
        patterns.sort_unstable_by_key(|value| std::cmp::Reverse(value.len()));
        let mut text = Cow::Borrowed(text);
        for pattern in patterns {
            if text.contains(pattern) {
                text = Cow::Owned(text.replace(pattern, REDACTED));
            }
        }
        text
    }

    /// Replaces each of `values` that carries a secret by [`REDACTED`] whole (a header value
    /// is not worth keeping in part). On the hot path: secrets longer than the longest value
    /// are never looked for, so with the usual short ids this costs a few comparisons.
    pub fn scrub_headers(&self, values: &mut [Option<HeaderValue>]) {
        let longest = values
            .iter()
            .flatten()
            .map(HeaderValue::len)
            .max()
            .unwrap_or(0);
        if longest < MIN_SECRET {
            return;
        }
        let patterns = self.patterns(longest);
        if patterns.is_empty() {
            return;
        }
        for value in values.iter_mut().flatten() {
            let bytes = value.as_bytes();
            let carries = patterns.iter().any(|pattern| {
                bytes
                    .windows(pattern.len())
                    .any(|window| window == pattern.as_bytes())
            });
            if carries {
                *value = HeaderValue::from_static(REDACTED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_removed_by_value_whatever_their_shape() {
        let header = HeaderValue::from_static("Bearer opaque-ticket-0123456789");
        let key = "aaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbb.short.cccccccccccccccccccccccc";
        let mut redactor = Redactor::none();
        redactor.authorization(&header).secret(key).secret("tiny");
        assert_eq!(
            redactor.scrub("ticket opaque-ticket-0123456789 refused"),
            "ticket [redacted] refused"
        );
        assert_eq!(redactor.scrub(&format!("key {key}!")), "key [redacted]!");
        assert_eq!(
            redactor.scrub("payload bbbbbbbbbbbbbbbbbbbbbbbb and cccccccccccccccccccccccc"),
            "payload [redacted] and [redacted]"
        );
        // Short values and short parts are not secrets on their own.
        assert_eq!(redactor.scrub("tiny short"), "tiny short");
        assert!(matches!(redactor.scrub("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_header_carrying_a_secret_is_replaced_whole() {
        let header = HeaderValue::from_static("Bearer opaque-ticket-0123456789");
        let mut redactor = Redactor::none();
        redactor.authorization(&header);
        let mut values = [
            Some(HeaderValue::from_static("cv-opaque-ticket-0123456789-x")),
            Some(HeaderValue::from_static(
                "8f14e45f-ceea-467f-a9f3-9c5d4b0d0a11",
            )),
            None,
        ];
        redactor.scrub_headers(&mut values);
        assert_eq!(values[0], Some(HeaderValue::from_static(REDACTED)));
        assert_eq!(
            values[1],
            Some(HeaderValue::from_static(
                "8f14e45f-ceea-467f-a9f3-9c5d4b0d0a11"
            ))
        );
    }
}
