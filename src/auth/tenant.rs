//! Entra tenant ids: a GUID or a DNS domain name.

use std::fmt;
use std::sync::Arc;

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

fn is_guid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
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
