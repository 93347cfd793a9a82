//! Local validation: every request is checked before any upstream call.

use crate::auth::TenantId;
use crate::error::{ApiError, Violation};

/// Longest accepted Store id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest accepted Store key or service ticket, in bytes.
pub const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;
/// `ErrorInfo.reason` of local validation failures.
pub const INVALID_REQUEST: &str = "INVALID_REQUEST";

/// The tenant a call acts for: the one it names, else the facade's configured tenant; with
/// neither, UNAUTHENTICATED `SERVICE_TICKET_REQUIRED`, before any call.
pub fn acting_tenant(
    named: Option<TenantId>,
    configured: Option<&TenantId>,
) -> Result<TenantId, ApiError> {
    named
        .or_else(|| configured.cloned())
        .ok_or_else(|| ApiError::Token(std::sync::Arc::new(crate::auth::TokenError::NotConfigured)))
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
