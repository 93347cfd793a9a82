//! Entra tenant ids: a GUID or a DNS domain name.

use std::fmt;
use std::sync::Arc;

pub use crate::upstream::is_guid;

/// A validated Entra tenant: a GUID or a domain name such as `contoso.onmicrosoft.com`,
/// stored lower-cased so one tenant has one cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(Arc<str>);

/// The text is neither a GUID nor a domain name.
#[derive(Debug, thiserror::Error)]
#[error("must be a GUID or a domain name such as contoso.onmicrosoft.com")]
pub struct InvalidTenantId;

impl TenantId {
    /// Validates `text` as a GUID or a domain name.
    pub fn parse(text: &str) -> Result<Self, InvalidTenantId> {
        if is_guid(text) || is_domain(text) {
            Ok(Self(text.to_ascii_lowercase().into()))
        } else {
            Err(InvalidTenantId)
        }
    }

    /// The tenant as sent in the token URL path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tenants a call may name in `tenant_id` (`--allowed-tenants`); the configured tenant
/// (`AZURE_TENANT_ID`) is allowed whatever the list says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedTenants {
    /// `*`: any tenant.
    Any,
    /// These tenants (none: only the configured one).
    Only(Vec<TenantId>),
}

impl Default for AllowedTenants {
    /// Only the configured tenant.
    fn default() -> Self {
        Self::Only(Vec::new())
    }
}

impl AllowedTenants {
    /// Parses a comma-separated list of GUIDs and domain names, or `*`; the error names the
    /// first bad entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let entries: Vec<&str> = text.split(',').map(str::trim).collect();
        if entries == ["*"] {
            return Ok(Self::Any);
        }
        entries
            .into_iter()
            .map(|entry| match entry {
                "" => Err("an entry is empty".to_owned()),
                "*" => Err("`*` stands alone, not in a list".to_owned()),
                _ => TenantId::parse(entry).map_err(|error| format!("{entry:?} {error}")),
            })
            .collect::<Result<_, _>>()
            .map(Self::Only)
    }

    /// Whether `tenant` is on the list (tenants compare lower-cased, as [`TenantId`] stores
    /// them).
    pub fn allows(&self, tenant: &TenantId) -> bool {
        match self {
            Self::Any => true,
            Self::Only(tenants) => tenants.contains(tenant),
        }
    }
}

fn is_domain(text: &str) -> bool {
    let labels: Vec<&str> = text.split('.').collect();
    text.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_and_domains_are_tenants() {
        for ok in [
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "contoso.onmicrosoft.com",
            "Fabrikam.COM",
        ] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            TenantId::parse("Fabrikam.COM").unwrap().as_str(),
            "fabrikam.com"
        );
    }

    #[test]
    fn other_text_is_not_a_tenant() {
        for bad in [
            "",
            "common",
            "contoso",
            "../evil",
            "a/b.com",
            "72f988bf-86f1-41af-91ab-2d7cd011db4",
            "contoso.onmicrosoft.com?x=1",
            "-bad.com",
            "x.123",
            "white space.com",
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod proptests {
    //! [`crate::fuzzing::tenant_id`]'s properties (shared with its fuzz target) over arbitrary
    //! text, GUIDs and domains with one character changed, and allow-lists of them; plus what
    //! only holds of well-formed tenants.
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    const GUID: &str =
        "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
    const DOMAIN: &str =
        "([a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?\\.){1,4}[a-zA-Z][a-zA-Z0-9]{0,6}";

    const OFF_BY: &[char] = &['-', '.', '/', 'g', 'G', 'F', '0', ' ', 'é', '\0'];

    fn tenant_like() -> impl Strategy<Value = String> {
        prop_oneof![
            GUID,
            DOMAIN,
            fuzzing::one_char_off(GUID, OFF_BY),
            fuzzing::one_char_off(DOMAIN, OFF_BY),
            "[a-z0-9.-]{0,12}",
            "[a-z]{63,64}\\.com",
            // Around the 253-byte limit of a whole name.
            "([a-z]{60,63}\\.){3,4}com",
            any::<String>(),
        ]
    }

    fn allow_list() -> impl Strategy<Value = String> {
        let entry = prop_oneof![tenant_like(), Just("*".to_owned()), Just(String::new())];
        vec((entry, "[ \t]{0,2}"), 1..5).prop_map(|entries| {
            let entries: Vec<String> = entries
                .into_iter()
                .map(|(e, pad)| format!("{pad}{e}{pad}"))
                .collect();
            entries.join(",")
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_parse_without_panic(bytes in vec(any::<u8>(), 0..300)) {
            fuzzing::tenant_id(&bytes);
        }

        #[test]
        fn accepted_tenants_are_lower_case_url_safe_and_stable(text in tenant_like()) {
            fuzzing::tenant_id(text.as_bytes());
        }

        #[test]
        fn allow_lists_hold_exactly_their_entries(text in allow_list()) {
            fuzzing::tenant_id(text.as_bytes());
        }

        #[test]
        fn every_guid_and_domain_is_a_tenant(text in prop_oneof![GUID, DOMAIN]) {
            let tenant = TenantId::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(tenant.as_str(), text.to_ascii_lowercase());
        }

        #[test]
        fn a_guid_one_character_off_is_refused_unless_still_a_guid_or_now_a_domain(
            text in fuzzing::one_char_off(GUID, OFF_BY),
        ) {
            let guid_shaped = text.len() == 36
                && text.char_indices().all(|(at, c)| match at {
                    8 | 13 | 18 | 23 => c == '-',
                    _ => c.is_ascii_hexdigit(),
                });
            let accepted = TenantId::parse(&text).is_ok();
            prop_assert!(accepted || !guid_shaped, "{}", text);
            // Only a dot can make it another kind of tenant: a domain.
            prop_assert!(!accepted || guid_shaped || text.contains('.'), "{}", text);
        }
    }
}
