//! Local validation: every request is checked before any upstream call.

use crate::auth::{AllowedTenants, KeyClaims, KeyDecodeError, TenantId};
use crate::error::{ApiError, Violation};
use crate::upstream::Host;

/// Longest accepted Store id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest accepted Store key or service ticket, in bytes.
pub const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;
/// `ErrorInfo.reason` of local validation failures.
pub const INVALID_REQUEST: &str = "INVALID_REQUEST";

/// Which tenants calls act for: the facade's configured tenant (`AZURE_TENANT_ID`), and the
/// others a call may name (`--allowed-tenants`).
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    configured: Option<TenantId>,
    allowed: AllowedTenants,
}

impl Tenants {
    /// The policy of a facade configured for `configured` (`None` without credentials).
    pub fn new(configured: Option<TenantId>, allowed: AllowedTenants) -> Self {
        Self {
            configured,
            allowed,
        }
    }
}

/// The tenant a call acts for: the one it names, else the facade's configured tenant. A named
/// tenant that is neither the configured one nor allowed is PERMISSION_DENIED
/// `TENANT_NOT_ALLOWED`; with no tenant at all, UNAUTHENTICATED `SERVICE_TICKET_REQUIRED`.
/// Either before any token request.
pub fn acting_tenant(named: Option<TenantId>, tenants: &Tenants) -> Result<TenantId, ApiError> {
    match named {
        Some(tenant)
            if tenants.configured.as_ref() == Some(&tenant) || tenants.allowed.allows(&tenant) =>
        {
            Ok(tenant)
        }
        Some(tenant) => Err(ApiError::TenantNotAllowed { tenant }),
        None => tenants.configured.clone().ok_or_else(|| {
            ApiError::Token(std::sync::Arc::new(crate::auth::TokenError::NotConfigured))
        }),
    }
}

/// A user's Store ID key (already checked by [`Checks::credential`]) for a call on `host`,
/// read without verifying its signature: a key that is not a JWT is INVALID_ARGUMENT
/// `KEY_NOT_DECODABLE`, a key of another host (a purchase key for a collections call)
/// INVALID_ARGUMENT `KEY_TYPE_MISMATCH`, both with BadRequest on `field`; an expired key is
/// FAILED_PRECONDITION `STORE_KEY_EXPIRED` (contract, section 7). All before any call, so the
/// caller learns to ask its client for a new key instead of reading a Store 401.
pub fn user_key(field: &'static str, key: &str, host: Host, now_unix: i64) -> Result<(), ApiError> {
    let claims = KeyClaims::decode(key).map_err(|_| {
        ApiError::invalid(
            "KEY_NOT_DECODABLE",
            field,
            "is not a Microsoft Store ID key (a JWT with a readable payload)",
        )
    })?;
    match claims.host() {
        Ok(kind) if kind == host => {}
        Ok(kind) => {
            return Err(ApiError::invalid(
                "KEY_TYPE_MISMATCH",
                field,
                format!(
                    "is a {} key; this call needs a {} key",
                    kind.key_kind(),
                    host.key_kind()
                ),
            ))
        }
        Err(KeyDecodeError::UnknownAudience | KeyDecodeError::NotAJwt) => {
            return Err(ApiError::invalid(
                "KEY_TYPE_MISMATCH",
                field,
                format!(
                    "has an aud claim of neither Store key service; this call needs a {} key",
                    host.key_kind()
                ),
            ))
        }
    }
    match claims.exp {
        Some(expires_at) if expires_at <= now_unix => {
            Err(ApiError::StoreKeyExpired { field, expires_at })
        }
        _ => Ok(()),
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

/// Collects violations of one request.
#[derive(Default)]
pub struct Checks(Vec<Violation>);

impl Checks {
    fn fail(&mut self, field: &'static str, description: impl Into<String>) {
        self.0.push(Violation {
            field,
            description: description.into(),
        });
    }

    /// A Store id: one path segment, so non-empty, at most 256 bytes, no control characters,
    /// and not `.` or `..` (which a URL resolver would fold away).
    pub fn store_id(&mut self, field: &'static str, value: &str) {
        if value.is_empty() {
            self.fail(field, "is required");
        } else if value.len() > MAX_ID_BYTES {
            self.fail(field, format!("is longer than {MAX_ID_BYTES} bytes"));
        } else if value.chars().any(char::is_control) {
            self.fail(field, "contains a control character");
        } else if value == "." || value == ".." {
            self.fail(field, "must not be \".\" or \"..\"");
        }
    }

    /// An optional tenant: empty, a GUID, or a domain name.
    pub fn tenant(&mut self, field: &'static str, value: &str) -> Option<TenantId> {
        if value.is_empty() {
            return None;
        }
        match TenantId::parse(value) {
            Ok(tenant) => Some(tenant),
            Err(error) => {
                self.fail(field, error.to_string());
                None
            }
        }
    }

    /// A credential-like text (key, ticket): length only, and never echoed back.
    pub fn credential(&mut self, field: &'static str, value: &str, required: bool) {
        if required && value.is_empty() {
            self.fail(field, "is required");
        } else if value.len() > MAX_CREDENTIAL_BYTES {
            self.fail(
                field,
                format!("is longer than {MAX_CREDENTIAL_BYTES} bytes"),
            );
        } else if value.chars().any(char::is_control) {
            self.fail(field, "contains a control character");
        }
    }

    /// An optional development sandbox id (sent as `sbx`): letters, digits, `.`, `-` and
    /// `_`, at most 64 characters.
    pub fn sandbox_id(&mut self, field: &'static str, value: &str) {
        if value.len() > 64 {
            self.fail(field, "is longer than 64 characters");
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            self.fail(field, "may hold only letters, digits, '.', '-' and '_'");
        }
    }

    /// Records a violation found elsewhere.
    pub fn violation(&mut self, field: &'static str, description: impl Into<String>) {
        self.fail(field, description);
    }

    /// `Ok` when nothing failed, else INVALID_ARGUMENT with one violation per field.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid {
                reason: INVALID_REQUEST,
                violations: self.0,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(check: impl FnOnce(&mut Checks)) -> Vec<&'static str> {
        let mut checks = Checks::default();
        check(&mut checks);
        match checks.finish() {
            Ok(()) => vec![],
            Err(ApiError::Invalid { violations, .. }) => {
                violations.iter().map(|v| v.field).collect()
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    fn tenant(text: &str) -> TenantId {
        TenantId::parse(text).unwrap()
    }

    #[test]
    fn a_named_tenant_must_be_the_configured_one_or_allowed() {
        let only_configured = Tenants::new(Some(tenant("contoso.com")), AllowedTenants::default());
        let named = |t: &str| acting_tenant(Some(tenant(t)), &only_configured);
        assert_eq!(named("CONTOSO.com").unwrap(), tenant("contoso.com"));
        assert!(matches!(
            named("fabrikam.com"),
            Err(ApiError::TenantNotAllowed { .. })
        ));
        assert_eq!(
            acting_tenant(None, &only_configured).unwrap(),
            tenant("contoso.com")
        );

        let listed = Tenants::new(None, AllowedTenants::Only(vec![tenant("fabrikam.com")]));
        assert!(acting_tenant(Some(tenant("fabrikam.com")), &listed).is_ok());
        assert!(acting_tenant(Some(tenant("contoso.com")), &listed).is_err());
        assert!(matches!(
            acting_tenant(None, &listed),
            Err(ApiError::Token(_))
        ));

        let any = Tenants::new(None, AllowedTenants::Any);
        assert!(acting_tenant(Some(tenant("fabrikam.com")), &any).is_ok());
    }

    #[test]
    fn store_ids_reject_what_could_change_the_path() {
        for bad in ["", ".", "..", "a\nb", "\u{7f}", &"x".repeat(257)] {
            assert_eq!(
                violations(|c| c.store_id("sku_id", bad)),
                ["sku_id"],
                "{bad:?}"
            );
        }
        for ok in ["0016", "a/b", "50%", "?#", "é", "...", &"x".repeat(256)] {
            assert!(
                violations(|c| c.store_id("sku_id", ok)).is_empty(),
                "{ok:?}"
            );
        }
    }
}

#[cfg(test)]
mod proptests {
    //! The properties are [`crate::fuzzing::store_id`]'s, shared with its fuzz target; here
    //! they meet arbitrary bytes and ids shaped to sit on either side of every rule.
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::{MAX_CREDENTIAL_BYTES, MAX_ID_BYTES};
    use crate::fuzzing;

    /// Text of `len` bytes or so: ASCII with one multi-byte or control character somewhere.
    fn near_length(len: usize) -> impl Strategy<Value = String> {
        (
            len - 4..len + 4,
            any::<char>(),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(n, c, at)| {
                let mut text = "x".repeat(n);
                text.insert(at.index(n + 1), c);
                text
            })
    }

    fn id_like() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[ -~]{0,40}",
            "[.]{0,3}",
            "[a-z0-9./%?#é\u{0}\t\n\u{7f}\u{85}\u{2028}]{0,12}",
            near_length(MAX_ID_BYTES),
            near_length(MAX_CREDENTIAL_BYTES),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_are_checked_without_panic(bytes in vec(any::<u8>(), 0..512)) {
            fuzzing::store_id(&bytes);
        }

        #[test]
        fn ids_and_credentials_are_accepted_only_by_the_documented_rules(id in id_like()) {
            fuzzing::store_id(id.as_bytes());
        }
    }
}
