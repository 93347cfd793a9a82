//! The one mapping from validation, token and upstream failures to `tonic::Status` with rich
//! details (contract section 4). Nothing else in the crate builds a `Status`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::StatusCode;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::auth::{TenantId, TokenError};
use crate::resilience::retry::{RetryAdvice, Retryable};
use crate::upstream::{TransportFailure, UpstreamError, UpstreamIds, ID_HEADERS};

/// `ErrorInfo.domain` of the facade's own errors.
pub const FACADE_DOMAIN: &str = "msstore-facade";

/// RetryInfo delay of a shed call.
const OVERLOAD_RETRY_DELAY: Duration = Duration::from_millis(200);

/// RetryInfo delay when the upstream names none.
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// How one operation's upstream failures map beyond the common table: which upstream
/// parameter names stand for which proto fields (for BadRequest), and the HTTP statuses whose
/// gRPC code differs for this operation (RenewKey's 409 is ABORTED).
#[derive(Debug, PartialEq, Eq)]
pub struct ErrorMapping {
    /// (upstream parameter name, proto field name), e.g. `("skuId", "sku_id")`.
    pub fields: &'static [(&'static str, &'static str)],
    /// (HTTP status, gRPC code) pairs that replace the common table's code.
    pub overrides: &'static [(u16, Code)],
    /// Which failed attempts are made again (within the deadline and the host's retry budget).
    pub retries: Retries,
}

/// Which failed attempts of an operation are made again: what the operation can bear being
/// sent twice (contract, sections 5 and 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// Connect errors, 408, 429 with `Retry-After`, 502, 503 and 504: the Store most likely
    /// did not act, or acting twice does no harm (GetOfflineLicense, RenewKey).
    Transient,
    /// [`Retries::Transient`], and an attempt whose answer was lost (the connection dropped
    /// or the attempt timed out after the request was sent): for reads, and for writes the
    /// Store makes idempotent (ConsumeProduct by its tracking id, GrantFreeProduct by its
    /// order id).
    TransientAndLostAnswers,
    /// Only where the request certainly was not processed: connect errors, 429 with
    /// `Retry-After` and 503. Never after 408, 502, 504 or a lost answer: for writes that are
    /// not idempotent.
    NotProcessed,
}

impl ErrorMapping {
    /// The gRPC code for an HTTP status the Store answered (contract section 4).
    pub fn code_for(&self, status: u16) -> Code {
        if let Some((_, code)) = self.overrides.iter().find(|(s, _)| *s == status) {
            return *code;
        }
        match status {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            409 | 412 => Code::FailedPrecondition,
            429 => Code::ResourceExhausted,
            501 => Code::Unimplemented,
            408 | 502 | 503 | 504 => Code::Unavailable,
            500..=599 => Code::Internal,
            _ => Code::Unknown,
        }
    }
}

/// One invalid request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Proto field name, e.g. `sku_id`.
    pub field: &'static str,
    /// What is wrong with it; never echoes a secret.
    pub description: String,
}

/// Everything that can end a call unsuccessfully.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request failed local validation.
    #[error("the request is invalid")]
    Invalid {
        /// `ErrorInfo.reason`.
        reason: &'static str,
        /// One entry per bad field.
        violations: Vec<Violation>,
    },
    /// The call names a tenant outside `--allowed-tenants`.
    #[error("the facade may not act for tenant {tenant}")]
    TenantNotAllowed {
        /// The tenant the call named.
        tenant: TenantId,
    },
    /// The caller's Store ID key has expired: the client must mint a new one.
    #[error("the Store ID key in {field} expired")]
    StoreKeyExpired {
        /// The request field that carried the key.
        field: &'static str,
        /// The key's `exp` claim, seconds since the Unix epoch.
        expires_at: i64,
    },
    /// No token could be had.
    #[error(transparent)]
    Token(Arc<TokenError>),
    /// The upstream call failed.
    #[error("{error}")]
    Upstream {
        /// How the operation maps upstream failures.
        mapping: &'static ErrorMapping,
        /// What failed.
        error: Box<UpstreamError>,
    },
    /// The caller's deadline ran out.
    #[error("the caller's deadline of {budget:?} ran out")]
    DeadlineExceeded {
        /// The deadline the caller set.
        budget: Duration,
    },
    /// Too many calls are in flight: this one was shed without being started.
    #[error("the facade is at its limit of {limit} calls in flight")]
    Overloaded {
        /// The concurrency limit.
        limit: usize,
    },
    /// The request message is larger than the configured limit.
    #[error("the request message exceeds the {limit}-byte limit")]
    RequestTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

impl ApiError {
    /// A failure of an upstream call, mapped with `mapping`.
    pub fn upstream(mapping: &'static ErrorMapping, error: UpstreamError) -> Self {
        Self::Upstream {
            mapping,
            error: Box::new(error),
        }
    }

    /// A validation failure on one field.
    pub fn invalid(
        reason: &'static str,
        field: &'static str,
        description: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            reason,
            violations: vec![Violation {
                field,
                description: description.into(),
            }],
        }
    }

    /// The HTTP status of the upstream answer behind this error, when there was one.
    pub fn upstream_http_status(&self) -> Option<u16> {
        match self {
            Self::Upstream { error, .. } => match error.as_ref() {
                UpstreamError::Status(failure) => Some(failure.http_status.as_u16()),
                UpstreamError::Malformed { http_status, .. } => Some(*http_status),
                UpstreamError::Transport { .. } | UpstreamError::CircuitOpen { .. } => None,
            },
            _ => None,
        }
    }

    /// Whether this is the Store refusing the credentials (HTTP 401).
    pub fn is_upstream_unauthorized(&self) -> bool {
        self.upstream_http_status() == Some(401)
    }
}

impl Retryable for ApiError {
    /// Whether the upstream failure behind this error may be retried, and when.
    fn retry_advice(&self) -> Option<RetryAdvice> {
        match self {
            Self::Upstream { mapping, error } => match mapping.retries {
                Retries::Transient => error.retry_advice(),
                Retries::TransientAndLostAnswers => error
                    .retry_advice()
                    .or_else(|| error.answer_lost().then_some(RetryAdvice { after: None })),
                Retries::NotProcessed => error
                    .retry_advice()
                    .filter(|_| error.certainly_not_processed()),
            },
            _ => None,
        }
    }
}

/// The gRPC status, details and metadata of an error, before it becomes a `Status`.
struct Mapped {
    code: Code,
    message: String,
    reason: String,
    domain: String,
    info: HashMap<String, String>,
    retry: Option<Duration>,
    violations: Vec<Violation>,
    ids: Option<UpstreamIds>,
}

impl Mapped {
    fn facade(code: Code, reason: &str, message: String) -> Self {
        Self {
            code,
            message,
            reason: reason.to_owned(),
            domain: FACADE_DOMAIN.to_owned(),
            info: HashMap::new(),
            retry: None,
            violations: Vec::new(),
            ids: None,
        }
    }

    fn with_info(mut self, key: &str, value: impl ToString) -> Self {
        self.info.insert(key.to_owned(), value.to_string());
        self
    }

    fn with_ids(mut self, ids: &UpstreamIds) -> Self {
        for (name, value) in ids.iter() {
            if let Ok(text) = value.to_str() {
                self.info.insert(name.replace('-', "_"), text.to_owned());
            }
        }
        self.ids = Some(ids.clone());
        self
    }

    fn into_status(self) -> Status {
        let mut details = ErrorDetails::with_error_info(self.reason, self.domain, self.info);
        if let Some(delay) = self.retry {
            details.set_retry_info(Some(delay));
        }
        if !self.violations.is_empty() {
            details.set_bad_request(
                self.violations
                    .into_iter()
                    .map(|v| FieldViolation::new(v.field, v.description))
                    .collect::<Vec<_>>(),
            );
        }
        let mut metadata = MetadataMap::new();
        if let Some(ids) = &self.ids {
            insert_ids(&mut metadata, ids);
        }
        Status::with_error_details_and_metadata(self.code, self.message, details, metadata)
    }
}

/// [`ID_HEADERS`]' metadata keys, made once (inserting by `&str` parses the name each time).
static ID_KEYS: LazyLock<[MetadataKey<Ascii>; 4]> =
    LazyLock::new(|| ID_HEADERS.map(MetadataKey::from_static));

/// Puts the upstream ids in an answer's metadata. They are sent as never-indexed HPACK
/// literals: each answer's ids are new, so adding them to the connection's compression table
/// would only push out entries worth keeping, and cost the search (callgrind: about 3 % of a
/// GetOfflineLicense call).
pub(crate) fn insert_ids(metadata: &mut MetadataMap, ids: &UpstreamIds) {
    for (key, value) in ID_KEYS.iter().zip(ids.values()) {
        if let Some(Ok(mut value)) = value
            .as_ref()
            .map(|v| MetadataValue::try_from(v.as_bytes()))
        {
            value.set_sensitive(true);
            metadata.insert(key.clone(), value);
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        map(error).into_status()
    }
}

fn map(error: ApiError) -> Mapped {
    match error {
        ApiError::Invalid { reason, violations } => {
            let fields: Vec<&str> = violations.iter().map(|v| v.field).collect();
            let mut mapped = Mapped::facade(
                Code::InvalidArgument,
                reason,
                format!("invalid request: {}", describe(&violations, &fields)),
            );
            mapped.violations = violations;
            mapped
        }
        ApiError::TenantNotAllowed { tenant } => Mapped::facade(
            Code::PermissionDenied,
            "TENANT_NOT_ALLOWED",
            format!("tenant_id {tenant} is not among the tenants this facade may act for"),
        )
        .with_info("tenant_id", tenant),
        ApiError::StoreKeyExpired { field, expires_at } => {
            let at = prost_types::Timestamp {
                seconds: expires_at,
                nanos: 0,
            };
            Mapped::facade(
                Code::FailedPrecondition,
                "STORE_KEY_EXPIRED",
                format!(
                    "the Store ID key in {field} expired at {at}; get a new key from the user's client app"
                ),
            )
            .with_info("field", field)
            .with_info("expires_at", at)
        }
        ApiError::Token(error) => map_token(&error),
        ApiError::Upstream { mapping, error } => map_upstream(mapping, *error),
        ApiError::DeadlineExceeded { budget } => Mapped::facade(
            Code::DeadlineExceeded,
            "DEADLINE_EXCEEDED",
            format!("the caller's deadline of {} ms ran out", budget.as_millis()),
        ),
        ApiError::Overloaded { limit } => {
            let mut mapped = Mapped::facade(
                Code::Unavailable,
                "OVERLOADED",
                format!("the facade is at its limit of {limit} calls in flight; retry shortly"),
            )
            .with_info("limit", limit);
            mapped.retry = Some(OVERLOAD_RETRY_DELAY);
            mapped
        }
        ApiError::RequestTooLarge { limit } => Mapped::facade(
            Code::ResourceExhausted,
            "REQUEST_TOO_LARGE",
            format!("the request message exceeds the {limit}-byte limit"),
        )
        .with_info("limit_bytes", limit),
    }
}

fn describe(violations: &[Violation], fields: &[&str]) -> String {
    match violations {
        [one] => format!("{}: {}", one.field, one.description),
        _ => format!("bad fields {}", fields.join(", ")),
    }
}

fn map_token(error: &TokenError) -> Mapped {
    let message = error.to_string();
    match error {
        TokenError::NotConfigured => {
            Mapped::facade(Code::Unauthenticated, "SERVICE_TICKET_REQUIRED", message)
        }
        TokenError::Rejected {
            http_status,
            error,
            aadsts,
        } => {
            let mut mapped = Mapped::facade(Code::Internal, "TOKEN_REQUEST_REJECTED", message)
                .with_info("http_status", http_status)
                .with_info("entra_error", error);
            if let Some(code) = aadsts {
                mapped = mapped.with_info("entra_error_code", code);
            }
            mapped
        }
        TokenError::Unavailable {
            http_status,
            retry_after,
            ..
        } => {
            let mut mapped =
                Mapped::facade(Code::Unavailable, "TOKEN_ENDPOINT_UNAVAILABLE", message);
            if let Some(status) = http_status {
                mapped = mapped.with_info("http_status", status);
            }
            mapped.retry = Some(retry_after.unwrap_or(DEFAULT_RETRY_DELAY));
            mapped
        }
        TokenError::Malformed { http_status } => {
            Mapped::facade(Code::Internal, "TOKEN_RESPONSE_MALFORMED", message)
                .with_info("http_status", http_status)
        }
        TokenError::AssertionUnreadable(_) => {
            Mapped::facade(Code::Internal, "FEDERATED_TOKEN_FILE_UNREADABLE", message)
        }
    }
}

fn map_upstream(mapping: &ErrorMapping, error: UpstreamError) -> Mapped {
    match error {
        UpstreamError::CircuitOpen { host, retry_after } => {
            let mut mapped = Mapped::facade(
                Code::Unavailable,
                "CIRCUIT_OPEN",
                format!("the Store ({host}) is failing; calls fail fast until a probe succeeds"),
            )
            .with_info("host", &host);
            mapped.retry = Some(retry_after);
            mapped
        }
        UpstreamError::Transport { host, kind } => {
            let (reason, what) = match kind {
                TransportFailure::Connect => ("UPSTREAM_UNREACHABLE", "could not be reached"),
                TransportFailure::Timeout => ("UPSTREAM_TIMEOUT", "did not answer in time"),
                TransportFailure::ConnectionLost => (
                    "UPSTREAM_CONNECTION_LOST",
                    "closed the connection mid-answer",
                ),
            };
            let mut mapped = Mapped::facade(
                Code::Unavailable,
                reason,
                format!("the Store ({host}) {what}"),
            )
            .with_info("host", &host);
            mapped.retry = Some(DEFAULT_RETRY_DELAY);
            mapped
        }
        UpstreamError::Malformed {
            host,
            http_status,
            ids,
            expected,
        } => Mapped::facade(
            Code::Internal,
            "UPSTREAM_MALFORMED_RESPONSE",
            format!(
                "the Store ({host}) answered HTTP {http_status} with a body that is not {expected}"
            ),
        )
        .with_info("http_status", http_status)
        .with_info("host", &host)
        .with_ids(&ids),
        UpstreamError::Status(failure) => {
            let status = failure.http_status;
            let code = mapping.code_for(status.as_u16());
            let reason = failure
                .body
                .inner_code
                .as_deref()
                .map(upper_snake)
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| http_reason(status));
            let mut message = format!(
                "the Store ({}) answered HTTP {}",
                failure.host,
                status.as_u16()
            );
            if let Some(text) = &failure.body.message {
                message.push_str(": ");
                message.push_str(text);
            }
            let mut mapped = Mapped {
                code,
                message,
                reason,
                domain: failure.host.to_string(),
                info: HashMap::new(),
                retry: None,
                violations: Vec::new(),
                ids: None,
            }
            .with_info("http_status", status.as_u16())
            .with_ids(&failure.ids);
            if let Some(inner) = &failure.body.inner_code {
                mapped = mapped.with_info("store_code", crate::upstream::clean_text(inner));
            }
            match code {
                Code::ResourceExhausted | Code::Unavailable => {
                    mapped.retry = Some(failure.retry_after.unwrap_or(DEFAULT_RETRY_DELAY));
                }
                Code::InvalidArgument => {
                    let names: Vec<&str> = mapping.fields.iter().map(|(u, _)| *u).collect();
                    if let Some(upstream_name) = failure.body.mentions(&names) {
                        let field = mapping
                            .fields
                            .iter()
                            .find(|(u, _)| *u == upstream_name)
                            .map(|(_, proto)| *proto)
                            .unwrap_or_default();
                        let description = failure
                            .body
                            .message
                            .clone()
                            .unwrap_or_else(|| "rejected by the Store".to_owned());
                        mapped.violations.push(Violation { field, description });
                    }
                }
                _ => {}
            }
            mapped
        }
    }
}

/// `NOT_FOUND`, `TOO_MANY_REQUESTS`, ... from the HTTP reason phrase.
fn http_reason(status: StatusCode) -> String {
    status
        .canonical_reason()
        .map(upper_snake)
        .unwrap_or_else(|| format!("HTTP_{}", status.as_u16()))
}

/// `InconsistentClientId` -> `INCONSISTENT_CLIENT_ID`; `Not Found` -> `NOT_FOUND`.
pub fn upper_snake(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            continue;
        }
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1);
        let boundary = c.is_ascii_uppercase()
            && prev.is_some_and(|p| {
                p.is_ascii_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_ascii_uppercase() && next.is_some_and(char::is_ascii_lowercase))
            });
        if boundary && !out.ends_with('_') {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
        if out.len() >= 63 {
            break;
        }
    }
    out.trim_end_matches('_').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_codes_become_upper_snake_reasons() {
        assert_eq!(
            upper_snake("InconsistentClientId"),
            "INCONSISTENT_CLIENT_ID"
        );
        assert_eq!(
            upper_snake("PartnerAadTicketRequired"),
            "PARTNER_AAD_TICKET_REQUIRED"
        );
        assert_eq!(
            upper_snake("AuthenticationTokenInvalid"),
            "AUTHENTICATION_TOKEN_INVALID"
        );
        assert_eq!(
            upper_snake("HTTPVersionNotSupported"),
            "HTTP_VERSION_NOT_SUPPORTED"
        );
        assert_eq!(upper_snake("Too Many Requests"), "TOO_MANY_REQUESTS");
        assert_eq!(upper_snake("already_snake"), "ALREADY_SNAKE");
    }

    #[test]
    fn http_statuses_map_per_operation() {
        const COMMON: ErrorMapping = ErrorMapping {
            fields: &[],
            overrides: &[],
            retries: Retries::Transient,
        };
        const RENEW: ErrorMapping = ErrorMapping {
            fields: &[],
            overrides: &[(409, Code::Aborted)],
            retries: Retries::Transient,
        };
        for mapping in [&COMMON, &RENEW] {
            assert_eq!(mapping.code_for(502), Code::Unavailable);
            assert_eq!(mapping.code_for(408), Code::Unavailable);
            assert_eq!(mapping.code_for(505), Code::Internal);
            assert_eq!(mapping.code_for(412), Code::FailedPrecondition);
        }
        assert_eq!(COMMON.code_for(409), Code::FailedPrecondition);
        assert_eq!(RENEW.code_for(409), Code::Aborted);
    }

    #[test]
    fn what_is_retried_follows_what_the_operation_can_bear() {
        use crate::upstream::{ErrorBody, StatusFailure, TransportFailure, UpstreamIds};
        let host: Arc<str> = "store".into();
        let status = |code: u16| {
            UpstreamError::Status(Box::new(StatusFailure {
                host: host.clone(),
                http_status: http::StatusCode::from_u16(code).unwrap(),
                ids: UpstreamIds::default(),
                retry_after: Some(Duration::from_secs(1)),
                body: ErrorBody::parse(b""),
            }))
        };
        let transport = |kind| UpstreamError::Transport {
            host: host.clone(),
            kind,
        };
        let failures = [
            ("connect", transport(TransportFailure::Connect)),
            ("lost", transport(TransportFailure::ConnectionLost)),
            ("timeout", transport(TransportFailure::Timeout)),
            ("408", status(408)),
            ("429", status(429)),
            ("500", status(500)),
            ("502", status(502)),
            ("503", status(503)),
            ("504", status(504)),
        ];
        for (retries, expected) in [
            (
                Retries::Transient,
                &["connect", "408", "429", "502", "503", "504"][..],
            ),
            (
                Retries::TransientAndLostAnswers,
                &[
                    "connect", "lost", "timeout", "408", "429", "502", "503", "504",
                ],
            ),
            (Retries::NotProcessed, &["connect", "429", "503"]),
        ] {
            let mapping: &'static ErrorMapping = Box::leak(Box::new(ErrorMapping {
                fields: &[],
                overrides: &[],
                retries,
            }));
            let retried: Vec<&str> = failures
                .iter()
                .filter(|(_, failure)| {
                    ApiError::upstream(mapping, failure.clone())
                        .retry_advice()
                        .is_some()
                })
                .map(|(name, _)| *name)
                .collect();
            assert_eq!(retried, expected, "{retries:?}");
        }
    }
}
