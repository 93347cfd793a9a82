//! Reading the Store's JSON leniently: a field of an unexpected type is dropped rather than
//! failing the answer, and dates as the Store writes them become valid Timestamps.

use std::str::FromStr;

use serde::Deserialize;

use crate::auth::KeyClaims;

/// A field of the wrong JSON type (or null) reads as absent instead of failing the page.
pub fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

/// An ISO 8601 date and time as the Store writes it (with an offset, or without one, which
/// is UTC as Microsoft's library reads it; up to 7 fractional digits); `None` if unreadable.
pub fn timestamp(text: &str) -> Option<prost_types::Timestamp> {
    let text = text.trim();
    prost_types::Timestamp::from_str(text)
        .or_else(|_| prost_types::Timestamp::from_str(&format!("{text}Z")))
        .ok()
        // Beyond the range of a Timestamp (years 1 to 9999), which other languages refuse.
        .filter(|at| (KeyClaims::EARLIEST..=KeyClaims::LATEST).contains(&at.seconds))
}
