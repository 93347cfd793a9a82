//! JWT-shaped tokens: `base64url(header).base64url(claims).base64url(tag)`.
//!
//! Real Entra tokens and Store keys are RS256-signed. The emulator only needs tokens that look
//! and decode the same, and that it can tell apart from ones it did not issue, so the third
//! part is a keyed FNV-1a tag over the first two: it catches edits and foreign tokens, and is
//! NOT a cryptographic signature. Nothing the emulator issues proves anything to anyone else.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::clock::fnv1a;

/// The key id in every header the emulator writes, so its tokens are recognisable.
const KEY_ID: &str = "msstore-facade-sandbox";
/// Mixed into every tag: a token made by other means does not carry a matching tag.
const TAG_KEY: &str = "msstore-facade sandbox emulator; not a signature";

/// The claims of a decoded token.
pub(super) type Claims = Map<String, Value>;

/// Why a token could not be read or was not issued by the emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum JwtError {
    /// Not three base64url parts with a JSON object as claims.
    #[error("not a JWT")]
    Malformed,
    /// Well formed, but not issued by the emulator (or edited since).
    #[error("not issued by this emulator")]
    ForeignTag,
}

/// Encodes `claims` as a token the emulator will accept back.
pub(super) fn encode(claims: &Value) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": KEY_ID});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let tag = tag(&signing_input);
    format!("{signing_input}.{tag}")
}

/// The claims of `token` if it is JWT-shaped, whoever issued it.
pub(super) fn decode_unverified(token: &str) -> Result<Claims, JwtError> {
    split(token).map(|(_, claims, _)| claims)
}

/// The claims of `token` if the emulator issued it unchanged.
pub(super) fn decode(token: &str) -> Result<Claims, JwtError> {
    let (signing_input, claims, tag_text) = split(token)?;
    if tag(signing_input) == tag_text {
        Ok(claims)
    } else {
        Err(JwtError::ForeignTag)
    }
}

fn split(token: &str) -> Result<(&str, Claims, &str), JwtError> {
    let (signing_input, tag_text) = token.trim().rsplit_once('.').ok_or(JwtError::Malformed)?;
    let (header, claims) = signing_input.split_once('.').ok_or(JwtError::Malformed)?;
    let object = |part: &str| {
        let bytes = URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| JwtError::Malformed)?;
        serde_json::from_slice::<Claims>(&bytes).map_err(|_| JwtError::Malformed)
    };
    object(header)?;
    Ok((signing_input, object(claims)?, tag_text))
}

fn tag(signing_input: &str) -> String {
    let parts = [TAG_KEY, signing_input];
    let bytes: Vec<u8> = [fnv1a(&parts, 7), fnv1a(&parts, 11)]
        .iter()
        .flat_map(|half| half.to_be_bytes())
        .collect();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A string claim.
pub(super) fn text<'c>(claims: &'c Claims, name: &str) -> Option<&'c str> {
    claims.get(name).and_then(Value::as_str)
}

/// A numeric date claim (`exp`, `nbf`, `iat`), in seconds since the Unix epoch.
pub(super) fn seconds(claims: &Claims, name: &str) -> Option<i64> {
    claims.get(name).and_then(Value::as_i64)
}

/// Whether `claims` are inside their `nbf`..`exp` window at `now` (`exp` is required).
pub(super) fn is_current(claims: &Claims, now: i64) -> bool {
    let not_before = seconds(claims, "nbf").unwrap_or(i64::MIN);
    seconds(claims, "exp").is_some_and(|exp| now < exp) && not_before <= now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_decode_and_edited_ones_do_not() {
        let token = encode(&json!({"aud": "x", "exp": 10}));
        assert_eq!(token.split('.').count(), 3);
        let claims = decode(&token).unwrap();
        assert_eq!(text(&claims, "aud"), Some("x"));
        assert_eq!(seconds(&claims, "exp"), Some(10));

        let (input, _) = token.rsplit_once('.').unwrap();
        let other_claims = URL_SAFE_NO_PAD.encode(r#"{"aud":"y","exp":10}"#);
        let header = input.split('.').next().unwrap();
        let edited = format!(
            "{header}.{other_claims}.{}",
            token.rsplit('.').next().unwrap()
        );
        assert_eq!(decode(&edited), Err(JwtError::ForeignTag));
        assert_eq!(text(&decode_unverified(&edited).unwrap(), "aud"), Some("y"));
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in ["", "abc", "a.b", "a.!!.c", "e30.bm90IGpzb24.c2ln"] {
            assert_eq!(decode(bad), Err(JwtError::Malformed), "{bad}");
        }
    }

    #[test]
    fn validity_window_needs_exp_and_respects_nbf() {
        let claims = |v: Value| v.as_object().cloned().unwrap();
        assert!(is_current(&claims(json!({"exp": 20, "nbf": 5})), 10));
        assert!(!is_current(&claims(json!({"exp": 10})), 10));
        assert!(!is_current(&claims(json!({"exp": 20, "nbf": 11})), 10));
        assert!(!is_current(&claims(json!({})), 10));
    }
}
