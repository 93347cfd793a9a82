//! Claims of Microsoft Store ID keys, read without verifying the signature (as Microsoft's
//! own library does): the Store verifies keys, the facade only routes them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

use crate::upstream::Host;

const COLLECTIONS_AUDIENCE: &str = "https://collections.mp.microsoft.com/v6.0/keys";
const PURCHASE_AUDIENCE: &str = "https://purchase.mp.microsoft.com/v6.0/keys";

/// Why a key's claims could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyDecodeError {
    /// The key is not three dot-separated base64url parts with a JSON payload.
    #[error("the key is not a JWT with a readable payload")]
    NotAJwt,
    /// The payload has no `aud`, or one that names neither Store key host.
    #[error("the key's aud claim names neither the collections nor the purchase service")]
    UnknownAudience,
}

/// The claims of a Store ID key that the facade uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KeyClaims {
    /// Audience: which Store service the key belongs to.
    #[serde(default)]
    pub aud: Option<String>,
    /// Issued at, seconds since the Unix epoch, within [`KeyClaims::EARLIEST`] and
    /// [`KeyClaims::LATEST`].
    #[serde(default, deserialize_with = "numeric_date")]
    pub iat: Option<i64>,
    /// Expiry, seconds since the Unix epoch, within [`KeyClaims::EARLIEST`] and
    /// [`KeyClaims::LATEST`].
    #[serde(default, deserialize_with = "numeric_date")]
    pub exp: Option<i64>,
}

/// A JWT NumericDate (any JSON number: integer, beyond `i64`, or with a fraction) as whole
/// seconds clamped to the range of a `google.protobuf.Timestamp`, so that whatever a key
/// claims can be computed with and answered without overflow or an invalid timestamp.
fn numeric_date<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let seconds = match (number.as_i64(), number.as_u64()) {
        (Some(seconds), _) => seconds,
        (None, Some(_)) => i64::MAX,
        // `as` saturates, and JSON has no NaN.
        (None, None) => number.as_f64().map_or(0, |f| f.floor() as i64),
    };
    Ok(Some(KeyClaims::clamp_seconds(seconds)))
}

impl KeyClaims {
    /// The earliest instant a claim can name: 0001-01-01T00:00:00Z, the start of the range
    /// of a `google.protobuf.Timestamp`.
    pub const EARLIEST: i64 = -62_135_596_800;
    /// The latest instant a claim can name: 9999-12-31T23:59:59Z, the end of the range of a
    /// `google.protobuf.Timestamp`.
    pub const LATEST: i64 = 253_402_300_799;

    /// `seconds` since the Unix epoch within [`KeyClaims::EARLIEST`] and
    /// [`KeyClaims::LATEST`]: a valid `google.protobuf.Timestamp`.
    pub fn clamp_seconds(seconds: i64) -> i64 {
        seconds.clamp(Self::EARLIEST, Self::LATEST)
    }

    /// Decodes the payload of `key`; the signature is not checked.
    pub fn decode(key: &str) -> Result<Self, KeyDecodeError> {
        let mut parts = key.split('.');
        let (Some(_header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(KeyDecodeError::NotAJwt);
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| KeyDecodeError::NotAJwt)?;
        serde_json::from_slice(&bytes).map_err(|_| KeyDecodeError::NotAJwt)
    }

    /// The host that renews this key, from its `aud` claim.
    pub fn host(&self) -> Result<Host, KeyDecodeError> {
        match self.aud.as_deref() {
            Some(COLLECTIONS_AUDIENCE) => Ok(Host::Collections),
            Some(PURCHASE_AUDIENCE) => Ok(Host::Purchase),
            _ => Err(KeyDecodeError::UnknownAudience),
        }
    }
}

/// The `aud` (and `iss`) of the Store ID keys that `host` issues and renews; only the
/// collections and purchase hosts have keys.
pub fn key_audience(host: Host) -> Option<&'static str> {
    match host {
        Host::Collections => Some(COLLECTIONS_AUDIENCE),
        Host::Purchase => Some(PURCHASE_AUDIENCE),
        Host::BusinessStore | Host::RefundQueue => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn audience_selects_the_host() {
        let key = jwt(r#"{"aud":"https://purchase.mp.microsoft.com/v6.0/keys","exp":10,"iat":5}"#);
        let claims = KeyClaims::decode(&key).unwrap();
        assert_eq!(claims.host(), Ok(Host::Purchase));
        assert_eq!((claims.iat, claims.exp), (Some(5), Some(10)));
        let key = jwt(r#"{"aud":"https://collections.mp.microsoft.com/v6.0/keys"}"#);
        assert_eq!(
            KeyClaims::decode(&key).unwrap().host(),
            Ok(Host::Collections)
        );
    }

    #[test]
    fn absurd_dates_are_clamped_to_the_timestamp_range() {
        let cases = [
            (i64::MAX.to_string(), KeyClaims::LATEST),
            (i64::MIN.to_string(), KeyClaims::EARLIEST),
            (u64::MAX.to_string(), KeyClaims::LATEST),
            ("1e300".to_owned(), KeyClaims::LATEST),
            ("-1e300".to_owned(), KeyClaims::EARLIEST),
            ("1700000000.75".to_owned(), 1_700_000_000),
            ("1700000000".to_owned(), 1_700_000_000),
        ];
        for (date, expected) in cases {
            let key = jwt(&format!(r#"{{"iat":{date},"exp":{date}}}"#));
            let claims = KeyClaims::decode(&key).unwrap();
            assert_eq!(
                (claims.iat, claims.exp),
                (Some(expected), Some(expected)),
                "{date}"
            );
        }
        let claims = KeyClaims::decode(&jwt(r#"{"iat":null}"#)).unwrap();
        assert_eq!((claims.iat, claims.exp), (None, None));
    }

    #[test]
    fn foreign_audience_and_garbage_are_errors() {
        let key = jwt(r#"{"aud":"https://evil.example/v6.0/keys"}"#);
        assert_eq!(
            KeyClaims::decode(&key).unwrap().host(),
            Err(KeyDecodeError::UnknownAudience)
        );
        for bad in ["", "abc", "a.b", "a.!!!.c", "a.b.c.d"] {
            assert_eq!(
                KeyClaims::decode(bad).unwrap_err(),
                KeyDecodeError::NotAJwt,
                "{bad}"
            );
        }
    }
}

#[cfg(test)]
mod proptests {
    //! [`crate::fuzzing::store_key`]'s properties (shared with its fuzz target) over arbitrary
    //! text, arbitrary base64url segments, and payloads whose `aud`, `iat` and `exp` are any
    //! JSON; plus that dates within the timestamp range are read as they are.
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;
    use crate::fuzzing;

    fn claim() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            (KeyClaims::EARLIEST - 10..=KeyClaims::LATEST + 10).prop_map(Value::from),
            // Integers beyond u64, and huge exponents, written out.
            "-?[1-9][0-9]{19,40}(\\.[0-9]{1,5})?(e[-+]?[0-9]{1,3})?"
                .prop_map(|n| { serde_json::from_str(&n).unwrap_or(Value::Null) }),
            any::<String>().prop_map(Value::from),
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            Just(json!([1, 2])),
            Just(json!({"seconds": 1})),
            Just(Value::from(COLLECTIONS_AUDIENCE)),
            Just(Value::from(PURCHASE_AUDIENCE)),
        ]
    }

    /// A payload with any subset of the claims, each of any type.
    fn payload() -> impl Strategy<Value = String> {
        let maybe = || proptest::option::of(claim());
        (maybe(), maybe(), maybe(), maybe()).prop_map(|(aud, iat, exp, other)| {
            let mut claims = serde_json::Map::new();
            for (name, value) in [("aud", aud), ("iat", iat), ("exp", exp), ("nbf", other)] {
                if let Some(value) = value {
                    claims.insert(name.to_owned(), value);
                }
            }
            Value::Object(claims).to_string()
        })
    }

    proptest! {
        #[test]
        fn arbitrary_text_decodes_without_panic(text in any::<String>()) {
            fuzzing::store_key(text.as_bytes());
        }

        #[test]
        fn arbitrary_base64url_segments_decode_without_panic(
            parts in prop::collection::vec("[A-Za-z0-9_=+/-]{0,40}", 0..5),
        ) {
            fuzzing::store_key(parts.join(".").as_bytes());
        }

        #[test]
        fn claims_of_any_type_give_valid_timestamps(payload in payload()) {
            // The entry point sends the bytes both as they are and as a JWT's payload.
            fuzzing::store_key(payload.as_bytes());
        }

        #[test]
        fn dates_within_the_timestamp_range_are_read_as_they_are(
            seconds in KeyClaims::EARLIEST..=KeyClaims::LATEST,
            fraction in 0.0f64..1.0,
        ) {
            let key = |date: String| {
                format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(format!(r#"{{"iat":{date},"exp":{date}}}"#)))
            };
            let claims = KeyClaims::decode(&key(seconds.to_string())).unwrap();
            prop_assert_eq!((claims.iat, claims.exp), (Some(seconds), Some(seconds)));
            // A fraction is cut off (towards the past), within what an f64 can tell apart.
            let claims = KeyClaims::decode(&key(format!("{}", seconds as f64 + fraction))).unwrap();
            let iat = claims.iat.unwrap();
            prop_assert!((iat - seconds).abs() <= 1, "{} read as {}", seconds, iat);
        }
    }
}
