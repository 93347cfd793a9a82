//! Time and identifiers as the emulated services print them.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub(super) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// `2024-05-01 12:00:00Z`, the form of Entra's `timestamp` field.
pub(super) fn entra_timestamp(unix_seconds: i64) -> String {
    format!("{} {}Z", civil_date(unix_seconds), civil_time(unix_seconds))
}

/// `2026-01-02T03:04:05.0000000+00:00`, the form of the Store's dates (ISO-8601, seven
/// fraction digits, an offset).
pub(super) fn store_timestamp(unix_seconds: i64) -> String {
    format!(
        "{}T{}.0000000+00:00",
        civil_date(unix_seconds),
        civil_time(unix_seconds)
    )
}

/// `2024-05-01`, in UTC.
fn civil_date(unix_seconds: i64) -> String {
    let (year, month, day) = civil_from_days(unix_seconds.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02}")
}

/// `12:00:00`, in UTC.
fn civil_time(unix_seconds: i64) -> String {
    let of_day = unix_seconds.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A random GUID, for request, trace and correlation ids.
pub(super) fn random_guid() -> String {
    format_guid(fastrand::u64(..), fastrand::u64(..))
}

/// A GUID derived from `parts`: the same parts always give the same GUID.
pub(super) fn guid_for(parts: &[&str]) -> String {
    format_guid(fnv1a(parts, 0), fnv1a(parts, 1))
}

/// FNV-1a over `parts` (each followed by a 0 byte, so `["ab","c"]` differs from `["a","bc"]`),
/// started from a `seed`-dependent offset. Not cryptographic: only stable and well spread.
pub(super) fn fnv1a(parts: &[&str], seed: u64) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(PRIME);
    for byte in parts.iter().flat_map(|p| p.bytes().chain([0])) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// A version-4-shaped GUID from 128 bits.
fn format_guid(high: u64, low: u64) -> String {
    let high = (high & 0xffff_ffff_ffff_0fff) | 0x4000;
    let low = (low & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_like_entras() {
        assert_eq!(entra_timestamp(0), "1970-01-01 00:00:00Z");
        assert_eq!(entra_timestamp(1_714_564_800), "2024-05-01 12:00:00Z");
        assert_eq!(entra_timestamp(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(
            store_timestamp(1_714_564_800),
            "2024-05-01T12:00:00.0000000+00:00"
        );
    }

    #[test]
    fn derived_guids_are_stable_and_guid_shaped() {
        let guid = guid_for(&["tenant", "product"]);
        assert_eq!(guid, guid_for(&["tenant", "product"]));
        assert_ne!(guid, guid_for(&["tenantp", "roduct"]));
        assert!(crate::auth::TenantId::parse(&guid).is_ok(), "{guid}");
        assert_eq!(&guid[14..15], "4");
        assert!(crate::auth::TenantId::parse(&random_guid()).is_ok());
    }
}
