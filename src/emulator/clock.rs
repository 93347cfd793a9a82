//! Time and identifiers as the emulated services print them.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub(super) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// `2024-05-01T12:00:00Z`: RFC 3339 in UTC, whole seconds.
pub(super) fn rfc3339(unix_seconds: i64) -> String {
    format!("{}T{}Z", civil_date(unix_seconds), civil_time(unix_seconds))
}

/// `2024-05-01T12:00Z`: RFC 3339 in UTC without seconds, the form of the clawback SAS
/// token's `expiresOn`.
pub(super) fn rfc3339_minutes(unix_seconds: i64) -> String {
    let time = civil_time(unix_seconds);
    format!("{}T{}Z", civil_date(unix_seconds), &time[..5])
}

/// `2024-05-01T12:00:00.0000000Z`: ISO 8601 with seven fraction digits, as Azure Storage
/// writes `Time` in its error messages.
pub(super) fn azure_timestamp(unix_millis: i64) -> String {
    let seconds = unix_millis.div_euclid(1000);
    let ticks = unix_millis.rem_euclid(1000) * 10_000;
    format!(
        "{}T{}.{ticks:07}Z",
        civil_date(seconds),
        civil_time(seconds)
    )
}

/// `Fri, 09 Oct 2009 21:04:30 GMT`: RFC 1123, the form of HTTP dates and of Azure Storage
/// Queue times.
pub(super) fn rfc1123(unix_millis: i64) -> String {
    let seconds = u64::try_from(unix_millis.div_euclid(1000)).unwrap_or(0);
    httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// The seconds since the Unix epoch of `2024-05-01T12:00:00Z` (exactly this form: UTC,
/// whole seconds), if `text` is one.
pub(super) fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() == 20
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            19 => *b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let fits = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    if !fits {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if civil_from_days(days) != (year, month, day) {
        return None;
    }
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// A proleptic Gregorian date to days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
    fn rfc_forms_and_their_parse() {
        assert_eq!(rfc3339(1_714_564_800), "2024-05-01T12:00:00Z");
        assert_eq!(rfc3339_minutes(1_714_564_859), "2024-05-01T12:00Z");
        assert_eq!(rfc1123(1_255_122_270_999), "Fri, 09 Oct 2009 21:04:30 GMT");
        assert_eq!(
            azure_timestamp(1_714_564_800_123),
            "2024-05-01T12:00:00.1230000Z"
        );
        for at in [0, 951_782_400, 1_714_564_859, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(at)), Some(at));
        }
        for bad in [
            "2024-02-30T00:00:00Z",
            "2024-05-01T12:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01 12:00:00Z",
            "2024-05-01T12:00:00+00:00",
            "",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
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
