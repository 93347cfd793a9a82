//! The contract's error table (section 4) in two layers, both driven by the operation table
//! ([`OPERATIONS`]), so a new operation is covered as soon as its row exists:
//!
//! - [`table`]: every row of the error table, as an input of the one mapping function
//!   (`impl From<ApiError> for tonic::Status`), evaluated for every operation with its own
//!   error declaration: the gRPC code, ErrorInfo (reason, domain, `http_status`, upstream ids,
//!   `store_code`, `host`), RetryInfo and BadRequest, and that nothing the caller sees
//!   (message, details, metadata) carries a secret, a token, a key or an upstream URL.
//! - [`end_to_end`]: one case per operation and status class through the real facade on
//!   `127.0.0.1:0`, with wiremock upstreams and raw TCP upstreams that refuse, reset or cut
//!   answers: what only the whole path decides (retries, token refresh, transport failures,
//!   deadlines, size limits, bodies that cannot be read).
//!
//! Expectations come from the contract and the README's error table, never from the code
//! under test.

mod common;

use std::time::Duration;

use common::*;
use msstore_facade::proto::msstore::v1 as pb;
use pb::store_keys_client::StoreKeysClient;
use serde_json::{json, Value};
use tonic::metadata::KeyAndValueRef;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::{ErrorInfo, StatusExt};

/// `ErrorInfo.domain` of the facade's own errors.
const FACADE: &str = "msstore-facade";
/// A service ticket a caller brings: must never come back.
const CALLER_TICKET: &str = "eyJ0eXAiOiJKV1QifQ.caller-ticket-never-log-me";
/// No answer may carry this: the client secret, the tokens and the caller's ticket all contain it.
const NEVER: &str = "never-log-me";
/// The Store's correlation headers on every answer the tests make up, and their values.
const UPSTREAM_IDS: [(&str, &str); 4] = [
    ("ms-correlationid", "corr-1"),
    ("ms-requestid", "req-1"),
    ("ms-cv", "xu2HW6SrSkyfHyFh.0.1.0"),
    ("ms-serverid", "server-7"),
];

// ---------------------------------------------------------------------------------------------
// What the contract says of every error the caller sees.

/// Checks code, ErrorInfo reason and domain, and that nothing leaks; returns the ErrorInfo.
#[track_caller]
fn expect(status: &Status, case: &str, code: Code, reason: &str, domain: &str) -> ErrorInfo {
    assert_eq!(status.code(), code, "{case}: {status:?}");
    let info = error_info(status);
    assert_eq!(info.reason, reason, "{case}: {status:?}");
    assert_eq!(info.domain, domain, "{case}: {status:?}");
    assert!(
        !info.reason.is_empty()
            && info
                .reason
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
        "{case}: reason {:?} is not UPPER_SNAKE",
        info.reason
    );
    assert_no_leaks(status, case);
    info
}

/// The message, the details and the metadata carry no secret, token, key or upstream URL.
#[track_caller]
fn assert_no_leaks(status: &Status, case: &str) {
    let mut seen = vec![
        ("message", status.message().to_owned()),
        (
            "details",
            String::from_utf8_lossy(status.details()).into_owned(),
        ),
    ];
    for entry in status.metadata().iter() {
        if let KeyAndValueRef::Ascii(name, value) = entry {
            seen.push((
                "metadata",
                format!("{}: {}", name, value.to_str().unwrap_or_default()),
            ));
        }
    }
    let forbidden = [
        CLIENT_SECRET,
        NEVER,
        TOKEN_PREFIX,
        // Every JWT (tokens, tickets and keys alike) starts with a base64 `{"`.
        "eyJ",
        "http://127.0.0.1:",
        "refresh.invalid",
        // Any URL at all: upstream addresses and the URLs inside keys.
        "://",
    ];
    for (place, text) in &seen {
        for bad in forbidden {
            assert!(
                !text.contains(bad),
                "{case}: {place} contains {bad:?}: {text:?}"
            );
        }
    }
}

fn meta<'a>(info: &'a ErrorInfo, key: &str) -> Option<&'a str> {
    info.metadata.get(key).map(String::as_str)
}

/// `ErrorInfo.metadata.http_status` is `expected`.
#[track_caller]
fn expect_http_status(info: &ErrorInfo, case: &str, expected: u16) {
    assert_eq!(
        meta(info, "http_status"),
        Some(expected.to_string().as_str()),
        "{case}: {info:?}"
    );
}

/// The upstream ids of [`UPSTREAM_IDS`] are in ErrorInfo and in the trailing metadata.
#[track_caller]
fn expect_upstream_ids(status: &Status, info: &ErrorInfo, case: &str) {
    for (header, value) in UPSTREAM_IDS {
        assert_eq!(
            meta(info, &header.replace('-', "_")),
            Some(value),
            "{case}: ErrorInfo {header}: {info:?}"
        );
        assert_eq!(
            status.metadata().get(header).and_then(|v| v.to_str().ok()),
            Some(value),
            "{case}: trailing {header}"
        );
    }
}

/// No upstream id is claimed where no answer came.
#[track_caller]
fn expect_no_upstream_ids(status: &Status, info: &ErrorInfo, case: &str) {
    for (header, _) in UPSTREAM_IDS {
        assert_eq!(
            meta(info, &header.replace('-', "_")),
            None,
            "{case}: ErrorInfo {header}: {info:?}"
        );
        assert!(
            status.metadata().get(header).is_none(),
            "{case}: trailing {header}"
        );
    }
}

#[track_caller]
fn expect_retry(status: &Status, case: &str, expected: Duration) {
    assert_eq!(retry_delay(status), Some(expected), "{case}: RetryInfo");
}

#[track_caller]
fn expect_no_retry(status: &Status, case: &str) {
    assert!(
        status.get_details_retry_info().is_none(),
        "{case}: unexpected RetryInfo on {status:?}"
    );
}

#[track_caller]
fn expect_no_bad_request(status: &Status, case: &str) {
    assert!(
        status.get_details_bad_request().is_none(),
        "{case}: unexpected BadRequest on {status:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Store error bodies, shared by both layers.

/// A ServiceError 400 whose `innererror.data` names the upstream parameter `named`.
fn invalid_parameter(named: &str) -> Value {
    json!({
        "code": "BadRequest",
        "message": "The request is invalid.",
        "innererror": {
            "code": "InvalidParameter",
            "message": "A parameter is invalid.",
            "data": [format!("{named} : is not valid")]
        }
    })
}

/// An address of the Store as a careless upstream might echo it.
const ECHOED_URL: &str = "http://127.0.0.1:1/v6.0/b2b/keys/renew";

/// A Store error body whose message echoes a token, a key and the upstream URL, with no inner
/// code: none of it may reach the caller.
fn echoing_body(code: &str) -> Value {
    json!({
        "code": code,
        "message": format!(
            "Request POST {ECHOED_URL} with token {TOKEN_PREFIX}-1 and credential {} failed",
            collections_key()
        ),
    })
}

/// A Store error body whose inner message echoes a key, a token and the upstream URL, with
/// the inner code `InvalidParameter`, and whose `innererror.data` names the upstream
/// parameter `named` beside a token.
fn echoing_inner_body(named: &str) -> Value {
    json!({
        "code": "Failure",
        "message": "outer",
        "innererror": {
            "code": "InvalidParameter",
            "message": format!(
                "credential {} with ticket {TOKEN_PREFIX}-1 rejected by {ECHOED_URL}",
                collections_key()
            ),
            "data": [format!("{named} : {TOKEN_PREFIX}-1")]
        }
    })
}

// =============================================================================================
// The one mapping function, row by row.

mod table {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::Arc;
    use std::time::SystemTime;

    use msstore_facade::auth::TokenError;
    use msstore_facade::error::{ApiError, Violation};
    use msstore_facade::upstream::{
        self, ErrorBody, StatusFailure, TransportFailure, UpstreamError, UpstreamIds,
    };
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
    use reqwest::StatusCode;

    use super::*;
    use WantCode::{Conflict, Is};

    const SECOND: Duration = Duration::from_secs(1);
    const THIRTY_SECONDS: Duration = Duration::from_secs(30);

    /// What failed: the input of the mapping function.
    enum Input {
        /// The Store answered `http` with the correlation headers, a `Retry-After` and a body
        /// (made for the upstream parameter the case names).
        Answer {
            http: u16,
            retry_after: RetryAfter,
            body: Body,
        },
        /// Another failure of the call to the operation's Store host.
        Upstream(fn(Arc<str>) -> UpstreamError),
        /// A failure of the facade's own, whatever the operation.
        Facade(fn() -> ApiError),
    }

    /// An error body, made for the upstream parameter a case names.
    type Body = Box<dyn Fn(&str) -> Vec<u8>>;

    #[derive(Clone, Copy)]
    enum RetryAfter {
        Absent,
        Seconds(u64),
        /// An HTTP date this many seconds from now.
        DateIn(u64),
    }

    /// The gRPC code a row expects.
    #[derive(Clone, Copy)]
    enum WantCode {
        Is(Code),
        /// The operation's code for an upstream 409 ([`Op::conflict`]).
        Conflict,
    }

    #[derive(Clone, Copy)]
    enum Domain {
        /// The Store host that answered.
        Store,
        /// `msstore-facade`.
        Facade,
    }

    #[derive(Clone, Copy)]
    enum Retry {
        None,
        Exactly(Duration),
        /// More than the first, at most the second.
        Within(Duration, Duration),
    }

    #[derive(Clone, Copy)]
    enum BadRequest {
        None,
        /// One violation, on the proto field of the upstream parameter the body names; the
        /// row is evaluated once per named field of the operation ([`Op::named_fields`]).
        OnNamedField,
        /// These violations, in order.
        Fields(&'static [&'static str]),
    }

    /// What the contract says the caller sees.
    struct Want {
        code: WantCode,
        reason: &'static str,
        domain: Domain,
        /// `ErrorInfo.metadata.http_status`; `None`: absent.
        http_status: Option<u16>,
        /// The upstream ids in ErrorInfo and trailing metadata; `false`: absent.
        upstream_ids: bool,
        /// `ErrorInfo.metadata.store_code`; `None`: absent.
        store_code: Option<&'static str>,
        /// `ErrorInfo.metadata.host` is the Store host.
        host: bool,
        retry: Retry,
        bad_request: BadRequest,
        /// Further `ErrorInfo.metadata` entries.
        metadata: Vec<(&'static str, &'static str)>,
        /// Texts the message names.
        message_names: Vec<&'static str>,
    }

    /// One row of the error table.
    struct Row {
        name: String,
        input: Input,
        want: Want,
    }

    impl Want {
        fn new(code: WantCode, reason: &'static str, domain: Domain) -> Self {
            Self {
                code,
                reason,
                domain,
                http_status: None,
                upstream_ids: false,
                store_code: None,
                host: false,
                retry: Retry::None,
                bad_request: BadRequest::None,
                metadata: Vec::new(),
                message_names: Vec::new(),
            }
        }
    }

    /// The Store answers `http` with `body`: domain the Store host, `http_status` and the ids.
    fn answer(
        name: &str,
        http: u16,
        body: impl Fn(&str) -> Vec<u8> + 'static,
        code: WantCode,
        reason: &'static str,
    ) -> Row {
        let mut want = Want::new(code, reason, Domain::Store);
        want.http_status = Some(http);
        want.upstream_ids = true;
        Row {
            name: format!("HTTP {http} {name}"),
            input: Input::Answer {
                http,
                retry_after: RetryAfter::Absent,
                body: Box::new(body),
            },
            want,
        }
    }

    /// The call to the Store failed without an error answer: the facade's domain, the host.
    fn upstream(
        name: &str,
        error: fn(Arc<str>) -> UpstreamError,
        code: Code,
        reason: &'static str,
    ) -> Row {
        let mut want = Want::new(Is(code), reason, Domain::Facade);
        want.host = true;
        Row {
            name: name.to_owned(),
            input: Input::Upstream(error),
            want,
        }
    }

    /// A failure of the facade's own.
    fn facade(name: &str, error: fn() -> ApiError, code: Code, reason: &'static str) -> Row {
        Row {
            name: name.to_owned(),
            input: Input::Facade(error),
            want: Want::new(Is(code), reason, Domain::Facade),
        }
    }

    impl Row {
        fn retry_after(mut self, header: RetryAfter) -> Self {
            if let Input::Answer { retry_after, .. } = &mut self.input {
                *retry_after = header;
            }
            self
        }

        fn retry(mut self, retry: Retry) -> Self {
            self.want.retry = retry;
            self
        }

        fn store_code(mut self, code: &'static str) -> Self {
            self.want.store_code = Some(code);
            self
        }

        fn bad_request(mut self, bad_request: BadRequest) -> Self {
            self.want.bad_request = bad_request;
            self
        }

        fn http_status(mut self, http: u16) -> Self {
            self.want.http_status = Some(http);
            self
        }

        fn upstream_ids(mut self) -> Self {
            self.want.upstream_ids = true;
            self
        }

        fn meta(mut self, key: &'static str, value: &'static str) -> Self {
            self.want.metadata.push((key, value));
            self
        }

        fn message_names(mut self, text: &'static str) -> Self {
            self.want.message_names.push(text);
            self
        }
    }

    // -----------------------------------------------------------------------------------------
    // The rows of contract section 4 (and of the README's error table) that the mapping
    // function decides.

    fn rows() -> Vec<Row> {
        [
            validation_rows(),
            bad_request_rows(),
            unauthorized_rows(),
            status_rows(),
            throttled_rows(),
            transport_rows(),
            facade_rows(),
            token_rows(),
            redaction_rows(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn json_body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    /// local validation fails -> INVALID_ARGUMENT, one violation per bad field; explicit
    /// `key_type` contradicting the key's `aud` -> INVALID_ARGUMENT on `key_type`.
    fn validation_rows() -> Vec<Row> {
        vec![
            facade(
                "local validation of two fields",
                || ApiError::Invalid {
                    reason: "INVALID_REQUEST",
                    violations: vec![
                        Violation {
                            field: "sku_id",
                            description: "must not be empty".into(),
                        },
                        Violation {
                            field: "content_id",
                            description: "must not be `..`".into(),
                        },
                    ],
                },
                Code::InvalidArgument,
                "INVALID_REQUEST",
            )
            .bad_request(BadRequest::Fields(&["sku_id", "content_id"])),
            facade(
                "key_type contradicting the key's aud",
                || {
                    ApiError::invalid(
                        "KEY_TYPE_MISMATCH",
                        "key_type",
                        "is Purchase but the key's aud claim names Collections",
                    )
                },
                Code::InvalidArgument,
                "KEY_TYPE_MISMATCH",
            )
            .bad_request(BadRequest::Fields(&["key_type"])),
        ]
    }

    /// upstream 400 -> INVALID_ARGUMENT, BadRequest when the body names the field.
    fn bad_request_rows() -> Vec<Row> {
        let invalid = Is(Code::InvalidArgument);
        let naming_no_field = json!({
            "code": "BadRequest",
            "message": "Something about this request is wrong.",
            "innererror": {"code": "InvalidParameter", "data": ["one of the values is wrong"]}
        });
        vec![
            answer(
                "naming a parameter",
                400,
                |named| json_body(invalid_parameter(named)),
                invalid,
                "INVALID_PARAMETER",
            )
            .store_code("InvalidParameter")
            .bad_request(BadRequest::OnNamedField),
            answer(
                "ServiceError naming no field",
                400,
                move |_| json_body(naming_no_field.clone()),
                invalid,
                "INVALID_PARAMETER",
            )
            .store_code("InvalidParameter"),
            answer(
                "plain text",
                400,
                |_| b"Bad Request: SKU unknown".to_vec(),
                invalid,
                "BAD_REQUEST",
            ),
            answer("empty", 400, |_| Vec::new(), invalid, "BAD_REQUEST"),
        ]
    }

    /// upstream 401 -> UNAUTHENTICATED, the reason from the Store inner code, found inside
    /// `innererror.data` (where real 401 bodies carry it) or in `innererror.code`.
    fn unauthorized_rows() -> Vec<Row> {
        let unauthenticated = Is(Code::Unauthenticated);
        let inner_codes = [
            ("AuthenticationTokenInvalid", "AUTHENTICATION_TOKEN_INVALID"),
            ("InconsistentClientId", "INCONSISTENT_CLIENT_ID"),
            ("PartnerAadTicketRequired", "PARTNER_AAD_TICKET_REQUIRED"),
        ];
        let mut rows = Vec::new();
        for (inner, reason) in inner_codes {
            let in_data = service_error("Unauthorized", inner);
            let in_code = json!({
                "code": "Unauthorized",
                "message": "The request failed.",
                "innererror": {"code": inner, "message": "Authentication failed.", "data": []}
            });
            rows.push(
                answer(
                    &format!("{inner} in innererror.data"),
                    401,
                    move |_| json_body(in_data.clone()),
                    unauthenticated,
                    reason,
                )
                .store_code(inner),
            );
            rows.push(
                answer(
                    &format!("{inner} in innererror.code"),
                    401,
                    move |_| json_body(in_code.clone()),
                    unauthenticated,
                    reason,
                )
                .store_code(inner),
            );
        }
        rows.push(answer(
            "without an inner code",
            401,
            |_| json_body(json!({"code": "Unauthorized", "message": "Access denied."})),
            unauthenticated,
            "UNAUTHORIZED",
        ));
        rows
    }

    /// Store answers mapped on their status alone: (HTTP status, code, reason, RetryInfo).
    /// 403, 404, 409 (per operation), 412; 500 and other 5xx; 501; 502, 503, 504, 408 with
    /// RetryInfo 1 s; any other status UNKNOWN with the HTTP reason.
    #[rustfmt::skip]
    const BY_STATUS: &[(u16, WantCode, &str, Retry)] = &[
        (403, Is(Code::PermissionDenied),   "FORBIDDEN",                  Retry::None),
        (404, Is(Code::NotFound),           "NOT_FOUND",                  Retry::None),
        (409, Conflict,                     "CONFLICT",                   Retry::None),
        (412, Is(Code::FailedPrecondition), "PRECONDITION_FAILED",        Retry::None),
        (500, Is(Code::Internal),           "INTERNAL_SERVER_ERROR",      Retry::None),
        (505, Is(Code::Internal),           "HTTP_VERSION_NOT_SUPPORTED", Retry::None),
        (507, Is(Code::Internal),           "INSUFFICIENT_STORAGE",       Retry::None),
        (599, Is(Code::Internal),           "HTTP_599",                   Retry::None),
        (501, Is(Code::Unimplemented),      "NOT_IMPLEMENTED",            Retry::None),
        (502, Is(Code::Unavailable),        "BAD_GATEWAY",                Retry::Exactly(SECOND)),
        (503, Is(Code::Unavailable),        "SERVICE_UNAVAILABLE",        Retry::Exactly(SECOND)),
        (504, Is(Code::Unavailable),        "GATEWAY_TIMEOUT",            Retry::Exactly(SECOND)),
        (408, Is(Code::Unavailable),        "REQUEST_TIMEOUT",            Retry::Exactly(SECOND)),
        (301, Is(Code::Unknown),            "MOVED_PERMANENTLY",          Retry::None),
        (302, Is(Code::Unknown),            "FOUND",                      Retry::None),
        (405, Is(Code::Unknown),            "METHOD_NOT_ALLOWED",         Retry::None),
        (415, Is(Code::Unknown),            "UNSUPPORTED_MEDIA_TYPE",     Retry::None),
        (422, Is(Code::Unknown),            "UNPROCESSABLE_ENTITY",       Retry::None),
    ];

    /// Every row of [`BY_STATUS`], the body echoing a token, a key and a URL; and the inner
    /// code, when the body has one, as the reason.
    fn status_rows() -> Vec<Row> {
        let echoing = |_: &str| json_body(echoing_body("Failure"));
        let mut rows: Vec<Row> = BY_STATUS
            .iter()
            .map(|&(http, code, reason, retry)| {
                answer("echoing", http, echoing, code, reason).retry(retry)
            })
            .collect();
        rows.push(
            answer(
                "echoing, Retry-After: 30",
                503,
                echoing,
                Is(Code::Unavailable),
                "SERVICE_UNAVAILABLE",
            )
            .retry_after(RetryAfter::Seconds(30))
            .retry(Retry::Exactly(THIRTY_SECONDS)),
        );
        rows.push(
            answer(
                "with an undocumented inner code",
                403,
                |_| json_body(json!({"innererror": {"code": "SomethingNew", "data": []}})),
                Is(Code::PermissionDenied),
                "SOMETHING_NEW",
            )
            .store_code("SomethingNew"),
        );
        rows
    }

    /// upstream 429 -> RESOURCE_EXHAUSTED, RetryInfo = `Retry-After` (seconds or HTTP date),
    /// else 1 s.
    fn throttled_rows() -> Vec<Row> {
        let throttled = |name: &str| {
            answer(
                name,
                429,
                |_| Vec::new(),
                Is(Code::ResourceExhausted),
                "TOO_MANY_REQUESTS",
            )
        };
        vec![
            throttled("Retry-After: 30")
                .retry_after(RetryAfter::Seconds(30))
                .retry(Retry::Exactly(THIRTY_SECONDS)),
            throttled("Retry-After: an HTTP date 120 s ahead")
                .retry_after(RetryAfter::DateIn(120))
                .retry(Retry::Within(
                    Duration::from_secs(60),
                    Duration::from_secs(120),
                )),
            throttled("without Retry-After").retry(Retry::Exactly(SECOND)),
        ]
    }

    fn ids() -> UpstreamIds {
        UpstreamIds::from_headers(&answer_headers(RetryAfter::Absent))
    }

    /// connect, timeout, lost connection -> UNAVAILABLE + RetryInfo 1 s; the host's circuit
    /// open -> UNAVAILABLE + RetryInfo = time until the probe; 2xx with a body that does not
    /// parse -> INTERNAL, UPSTREAM_MALFORMED_RESPONSE.
    fn transport_rows() -> Vec<Row> {
        let malformed = |name: &str, error: fn(Arc<str>) -> UpstreamError, http: u16| {
            upstream(name, error, Code::Internal, "UPSTREAM_MALFORMED_RESPONSE")
                .http_status(http)
                .upstream_ids()
        };
        vec![
            upstream(
                "connect failure",
                |host| UpstreamError::Transport {
                    host,
                    kind: TransportFailure::Connect,
                },
                Code::Unavailable,
                "UPSTREAM_UNREACHABLE",
            )
            .retry(Retry::Exactly(SECOND)),
            upstream(
                "attempt timeout",
                |host| UpstreamError::Transport {
                    host,
                    kind: TransportFailure::Timeout,
                },
                Code::Unavailable,
                "UPSTREAM_TIMEOUT",
            )
            .retry(Retry::Exactly(SECOND)),
            upstream(
                "connection lost mid-answer",
                |host| UpstreamError::Transport {
                    host,
                    kind: TransportFailure::ConnectionLost,
                },
                Code::Unavailable,
                "UPSTREAM_CONNECTION_LOST",
            )
            .retry(Retry::Exactly(SECOND)),
            upstream(
                "circuit open",
                |host| UpstreamError::CircuitOpen {
                    host,
                    retry_after: Duration::from_millis(2500),
                },
                Code::Unavailable,
                "CIRCUIT_OPEN",
            )
            .retry(Retry::Exactly(Duration::from_millis(2500))),
            malformed(
                "malformed 200",
                |host| UpstreamError::Malformed {
                    host,
                    http_status: 200,
                    ids: Box::new(ids()),
                    expected: "what the operation answers",
                },
                200,
            ),
            malformed(
                "malformed 201",
                |host| UpstreamError::Malformed {
                    host,
                    http_status: 201,
                    ids: Box::new(ids()),
                    expected: "what the operation answers",
                },
                201,
            ),
        ]
    }

    /// caller's deadline -> DEADLINE_EXCEEDED; request over the limit -> RESOURCE_EXHAUSTED
    /// with `limit_bytes`; more calls in flight than the limit -> UNAVAILABLE, RetryInfo 200 ms.
    fn facade_rows() -> Vec<Row> {
        vec![
            facade(
                "caller's deadline",
                || ApiError::DeadlineExceeded { budget: SECOND },
                Code::DeadlineExceeded,
                "DEADLINE_EXCEEDED",
            ),
            facade(
                "request too large",
                || ApiError::RequestTooLarge { limit: 1024 },
                Code::ResourceExhausted,
                "REQUEST_TOO_LARGE",
            )
            .meta("limit_bytes", "1024"),
            facade(
                "overloaded",
                || ApiError::Overloaded { limit: 1024 },
                Code::Unavailable,
                "OVERLOADED",
            )
            .retry(Retry::Exactly(Duration::from_millis(200))),
        ]
    }

    fn token(error: TokenError) -> ApiError {
        ApiError::Token(Arc::new(error))
    }

    fn rejected(http_status: u16) -> TokenError {
        TokenError::Rejected {
            http_status,
            error: "invalid_client".into(),
            aadsts: Some("AADSTS7000215".into()),
        }
    }

    fn token_unavailable(http_status: Option<u16>, retry_after: Option<Duration>) -> ApiError {
        token(TokenError::Unavailable {
            http_status,
            retry_after,
            cause: "the token endpoint failed",
        })
    }

    /// Token endpoint rejects the credentials -> INTERNAL naming the rejection; unreachable,
    /// 429 or 5xx -> UNAVAILABLE + RetryInfo; 2xx without a token, federated token file
    /// unreadable -> INTERNAL; no credential at all -> UNAUTHENTICATED.
    fn token_rows() -> Vec<Row> {
        let rejected_with = |http: u16, error: fn() -> ApiError| {
            facade(
                &format!("token endpoint rejecting with {http}"),
                error,
                Code::Internal,
                "TOKEN_REQUEST_REJECTED",
            )
            .http_status(http)
            .meta("entra_error", "invalid_client")
            .meta("entra_error_code", "AADSTS7000215")
            .message_names("invalid_client")
        };
        let unavailable_row = |name: &str, error: fn() -> ApiError, retry: Duration| {
            facade(name, error, Code::Unavailable, "TOKEN_ENDPOINT_UNAVAILABLE")
                .retry(Retry::Exactly(retry))
        };
        vec![
            rejected_with(400, || token(rejected(400))),
            rejected_with(401, || token(rejected(401))),
            unavailable_row(
                "token endpoint 503, Retry-After: 30",
                || token_unavailable(Some(503), Some(THIRTY_SECONDS)),
                THIRTY_SECONDS,
            )
            .http_status(503),
            unavailable_row(
                "token endpoint 500",
                || token_unavailable(Some(500), None),
                SECOND,
            )
            .http_status(500),
            unavailable_row(
                "token endpoint unreachable",
                || token_unavailable(None, None),
                SECOND,
            ),
            facade(
                "token endpoint answering 2xx without a token",
                || token(TokenError::Malformed { http_status: 200 }),
                Code::Internal,
                "TOKEN_RESPONSE_MALFORMED",
            )
            .http_status(200),
            facade(
                "federated token file unreadable",
                || {
                    token(TokenError::AssertionUnreadable(
                        std::io::ErrorKind::PermissionDenied,
                    ))
                },
                Code::Internal,
                "FEDERATED_TOKEN_FILE_UNREADABLE",
            ),
            facade(
                "no credential",
                || token(TokenError::NotConfigured),
                Code::Unauthenticated,
                "SERVICE_TICKET_REQUIRED",
            ),
        ]
    }

    /// Messages never carry tokens, keys or upstream URLs, whatever the Store echoes: bodies
    /// echoing them inside `innererror` (inner code `InvalidParameter`), on these statuses.
    #[rustfmt::skip]
    const ECHOED: &[(u16, WantCode, Retry)] = &[
        (400, Is(Code::InvalidArgument),  Retry::None),
        (401, Is(Code::Unauthenticated),  Retry::None),
        (403, Is(Code::PermissionDenied), Retry::None),
        (404, Is(Code::NotFound),         Retry::None),
        (409, Conflict,                   Retry::None),
        (500, Is(Code::Internal),         Retry::None),
        (503, Is(Code::Unavailable),      Retry::Exactly(SECOND)),
    ];

    fn redaction_rows() -> Vec<Row> {
        ECHOED
            .iter()
            .map(|&(http, code, retry)| {
                let bad_request = match http {
                    400 => BadRequest::OnNamedField,
                    _ => BadRequest::None,
                };
                answer(
                    "echoing a key, a token and a URL inside innererror",
                    http,
                    |named| json_body(echoing_inner_body(named)),
                    code,
                    "INVALID_PARAMETER",
                )
                .store_code("InvalidParameter")
                .retry(retry)
                .bad_request(bad_request)
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Evaluation.

    /// The headers of a made-up Store answer: the correlation ids and `retry_after`.
    fn answer_headers(retry_after: RetryAfter) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in UPSTREAM_IDS {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let value = match retry_after {
            RetryAfter::Absent => return headers,
            RetryAfter::Seconds(seconds) => seconds.to_string(),
            RetryAfter::DateIn(seconds) => {
                httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(seconds))
            }
        };
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&value).unwrap());
        headers
    }

    /// The Store host of `op`, without port, as the facade calls it by default.
    fn store_host(op: &Op) -> Arc<str> {
        let url = url::Url::parse(op.host.default_url()).unwrap();
        url.host_str().unwrap().into()
    }

    impl Row {
        /// The error this row stands for on `op`, with a body naming `named`.
        fn error(&self, op: &Op, host: &Arc<str>, named: &str) -> ApiError {
            match &self.input {
                Input::Answer {
                    http,
                    retry_after,
                    body,
                } => {
                    let headers = answer_headers(*retry_after);
                    let failure = StatusFailure {
                        host: host.clone(),
                        http_status: StatusCode::from_u16(*http).unwrap(),
                        ids: UpstreamIds::from_headers(&headers),
                        retry_after: upstream::retry_after(&headers),
                        body: ErrorBody::parse(&body(named)),
                    };
                    ApiError::upstream(op.errors, UpstreamError::Status(Box::new(failure)))
                }
                Input::Upstream(error) => ApiError::upstream(op.errors, error(host.clone())),
                Input::Facade(error) => error(),
            }
        }

        /// The (upstream parameter, proto field) pairs the row is evaluated with on `op`.
        fn named(&self, op: &Op) -> Vec<(&'static str, &'static str)> {
            match self.want.bad_request {
                BadRequest::OnNamedField => op.named_fields.to_vec(),
                _ => vec![op.named_field()],
            }
        }

        /// What the cases of this row on `op` are called.
        fn case(&self, op: &Op, named: &str) -> String {
            match self.want.bad_request {
                BadRequest::OnNamedField => format!("{op:?} {} naming {named}", self.name),
                _ => format!("{op:?} {}", self.name),
            }
        }
    }

    impl Want {
        #[track_caller]
        fn check(&self, status: &Status, op: &Op, host: &str, field: &str, case: &str) {
            let code = match self.code {
                Is(code) => code,
                Conflict => op.conflict,
            };
            let domain = match self.domain {
                Domain::Store => host,
                Domain::Facade => FACADE,
            };
            let info = expect(status, case, code, self.reason, domain);
            match self.http_status {
                Some(http) => expect_http_status(&info, case, http),
                None => assert_eq!(meta(&info, "http_status"), None, "{case}: {info:?}"),
            }
            if self.upstream_ids {
                expect_upstream_ids(status, &info, case);
            } else {
                expect_no_upstream_ids(status, &info, case);
            }
            let store_code = meta(&info, "store_code");
            assert_eq!(store_code, self.store_code, "{case}: store_code");
            if self.host {
                assert_eq!(meta(&info, "host"), Some(host), "{case}: host");
            }
            for (key, value) in &self.metadata {
                assert_eq!(meta(&info, key), Some(*value), "{case}: {key}: {info:?}");
            }
            for text in &self.message_names {
                assert!(
                    status.message().contains(text),
                    "{case}: the message does not name {text:?}: {status:?}"
                );
            }
            self.check_details(status, field, case);
        }

        #[track_caller]
        fn check_details(&self, status: &Status, field: &str, case: &str) {
            match self.retry {
                Retry::None => expect_no_retry(status, case),
                Retry::Exactly(delay) => expect_retry(status, case, delay),
                Retry::Within(above, at_most) => {
                    let delay = retry_delay(status)
                        .unwrap_or_else(|| panic!("{case}: no RetryInfo on {status:?}"));
                    assert!(delay > above && delay <= at_most, "{case}: {delay:?}");
                }
            }
            match self.bad_request {
                BadRequest::None => expect_no_bad_request(status, case),
                BadRequest::OnNamedField => assert_eq!(bad_fields(status), [field], "{case}"),
                BadRequest::Fields(fields) => assert_eq!(bad_fields(status), fields, "{case}"),
            }
        }
    }

    #[test]
    fn every_row_of_the_error_table_maps_as_the_contract_says_on_every_operation() {
        let rows = rows();
        let mut cases = 0;
        let mut failures = Vec::new();
        for op in OPERATIONS {
            let host = store_host(op);
            for row in &rows {
                for (named, field) in row.named(op) {
                    let case = row.case(op, named);
                    cases += 1;
                    let checked = catch_unwind(AssertUnwindSafe(|| {
                        let status = Status::from(row.error(op, &host, named));
                        row.want.check(&status, op, &host, field, &case);
                    }));
                    if checked.is_err() {
                        failures.push(case);
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {cases} cases failed (their panics are printed above):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

// =============================================================================================
// End to end: one case per operation and status class.

mod end_to_end {
    use std::net::SocketAddr;
    use std::time::Instant;

    use msstore_facade::auth::{CredentialSource, Credentials, TenantId};
    use msstore_facade::Settings;
    use secrecy::SecretString;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    /// `ErrorInfo.domain` of errors the (loopback) Store answered: its host without port.
    const STORE: &str = "127.0.0.1";

    /// The Store's correlation headers on an answer.
    fn with_ids(mut template: ResponseTemplate) -> ResponseTemplate {
        for (name, value) in UPSTREAM_IDS {
            template = template.insert_header(name, value);
        }
        template
    }

    async fn renew(channel: &Channel, message: pb::RenewKeyRequest) -> Result<(), Status> {
        StoreKeysClient::new(channel.clone())
            .renew_key(message)
            .await
            .map(drop)
    }

    /// The token the facade sent on an upstream request (in a header or in the body).
    fn token_sent(request: &wiremock::Request) -> Option<String> {
        let mut text = String::from_utf8_lossy(&request.body).into_owned();
        for value in request.headers.values() {
            text.push('\n');
            text.push_str(value.to_str().unwrap_or_default());
        }
        let at = text.find(TOKEN_PREFIX)?;
        let rest = text[at + TOKEN_PREFIX.len()..].strip_prefix('-')?;
        let serial: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some(format!("{TOKEN_PREFIX}-{serial}"))
    }

    // -----------------------------------------------------------------------------------------
    // Facades built by hand, and upstreams that misbehave at the TCP level.

    fn secret_credentials() -> Credentials {
        Credentials {
            tenant_id: TenantId::parse(TENANT).unwrap(),
            client_id: CLIENT_ID.to_owned(),
            source: CredentialSource::ClientSecret(SecretString::from(CLIENT_SECRET)),
        }
    }

    /// How a raw upstream breaks the exchange, after reading the whole request.
    #[derive(Debug, Clone, Copy)]
    enum Breakage {
        /// RST (SO_LINGER 0) before any byte of an answer.
        ResetBeforeAnswer,
        /// Part of the status line and headers, then FIN.
        CutMidHeaders,
        /// Headers promising 4096 bytes, a few of them, then FIN.
        CutMidBody,
        /// Headers promising 4096 bytes, a few of them, then RST.
        ResetMidBody,
        /// A 429 with `Retry-After: 30` whose error body is cut off (FIN).
        CutMidErrorBody,
    }

    const PARTIAL_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
        Content-Length: 4096\r\nMS-CorrelationId: corr-1\r\n\r\n{\"licenseBlob\":\"QUJD";

    const THROTTLED_CUT: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\n\
        Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"code\":\"Throttled\",";

    /// A loopback HTTP/1.1 "server" that breaks every exchange the way `breakage` says.
    async fn broken_upstream(breakage: Breakage) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    read_request(&mut stream, &mut Vec::new()).await;
                    match breakage {
                        Breakage::ResetBeforeAnswer => {
                            let _ = stream.set_zero_linger();
                        }
                        Breakage::CutMidHeaders => {
                            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
                            let _ = stream.shutdown().await;
                        }
                        Breakage::CutMidBody => {
                            let _ = stream.write_all(PARTIAL_ANSWER).await;
                            let _ = stream.shutdown().await;
                        }
                        Breakage::CutMidErrorBody => {
                            let _ = stream.write_all(THROTTLED_CUT).await;
                            let _ = stream.shutdown().await;
                        }
                        Breakage::ResetMidBody => {
                            let _ = stream.write_all(PARTIAL_ANSWER).await;
                            let _ = stream.flush().await;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let _ = stream.set_zero_linger();
                        }
                    }
                    drop(stream);
                });
            }
        });
        addr
    }

    // -----------------------------------------------------------------------------------------
    // local validation fails -> INVALID_ARGUMENT, BadRequest one violation per bad field
    // (which fields are bad is each operation's own: these cases name them)

    #[tokio::test]
    async fn local_validation_failure_maps_to_invalid_argument_with_one_violation_per_field() {
        let h = Harness::start().await;
        let mut license = license_request();
        license.sku_id = String::new();
        license.content_id = "..".into();
        let status = h
            .entitlements()
            .get_offline_license(license)
            .await
            .unwrap_err();
        expect(
            &status,
            "GetOfflineLicense",
            Code::InvalidArgument,
            "INVALID_REQUEST",
            FACADE,
        );
        assert_eq!(bad_fields(&status), ["sku_id", "content_id"]);

        let status = renew(
            &h.facade.channel,
            pb::RenewKeyRequest {
                key: String::new(),
                key_type: 7,
                service_ticket: format!("{CALLER_TICKET}\u{7}"),
            },
        )
        .await
        .unwrap_err();
        expect(
            &status,
            "RenewKey",
            Code::InvalidArgument,
            "INVALID_REQUEST",
            FACADE,
        );
        assert_eq!(bad_fields(&status), ["key", "service_ticket", "key_type"]);

        assert!(Harness::requests(&h.business).await.is_empty());
        assert!(Harness::requests(&h.collections).await.is_empty());
        assert!(h.token_requests().await.is_empty());
    }

    // -----------------------------------------------------------------------------------------
    // a Store 4xx reaches the caller mapped, with the upstream ids, and redacted

    #[tokio::test]
    async fn a_store_400_naming_a_field_maps_to_invalid_argument_with_the_upstream_ids() {
        for op in OPERATIONS {
            let (named, field) = op.named_field();
            let case = format!("{op:?} 400 naming {named}, echoing a key, a token and a URL");
            let h = Harness::start().await;
            op.mount(
                &h,
                with_ids(ResponseTemplate::new(400).set_body_json(echoing_inner_body(named))),
            )
            .await;
            let status = op.fail(&h.facade.channel).await;
            let info = expect(
                &status,
                &case,
                Code::InvalidArgument,
                "INVALID_PARAMETER",
                STORE,
            );
            expect_http_status(&info, &case, 400);
            expect_upstream_ids(&status, &info, &case);
            assert_eq!(bad_fields(&status), [field], "{case}");
            expect_no_retry(&status, &case);
        }
    }

    // -----------------------------------------------------------------------------------------
    // upstream 401 -> UNAUTHENTICATED; retried once with a fresh token, never with a caller's

    #[tokio::test]
    async fn a_store_401_on_the_facades_token_is_retried_once_with_a_fresh_token() {
        for op in OPERATIONS {
            let case = format!("{op:?} 401 on the facade's token");
            let h = Harness::start().await;
            let body = service_error("Unauthorized", "AuthenticationTokenInvalid");
            op.mount(&h, with_ids(ResponseTemplate::new(401).set_body_json(body)))
                .await;
            let status = op.fail(&h.facade.channel).await;
            let info = expect(
                &status,
                &case,
                Code::Unauthenticated,
                "AUTHENTICATION_TOKEN_INVALID",
                STORE,
            );
            expect_http_status(&info, &case, 401);
            expect_upstream_ids(&status, &info, &case);
            expect_no_retry(&status, &case);
            let sent: Vec<_> = Harness::requests(op.store(&h))
                .await
                .iter()
                .map(token_sent)
                .collect();
            assert_eq!(sent.len(), 2, "{case}: one retry");
            assert!(
                sent[0].is_some() && sent[1].is_some() && sent[0] != sent[1],
                "{case}: the retry must carry a fresh token: {sent:?}"
            );
        }
    }

    #[tokio::test]
    async fn renew_key_401_on_the_callers_own_ticket_is_not_retried() {
        let case = "RenewKey 401 on the caller's ticket";
        let h = Harness::start().await;
        h.mount_renew(
            ResponseTemplate::new(401)
                .set_body_json(service_error("Unauthorized", "AuthenticationTokenInvalid")),
        )
        .await;
        let request = pb::RenewKeyRequest {
            key: collections_key(),
            key_type: pb::KeyType::Unspecified as i32,
            service_ticket: CALLER_TICKET.into(),
        };
        let status = renew(&h.facade.channel, request).await.unwrap_err();
        let info = expect(
            &status,
            case,
            Code::Unauthenticated,
            "AUTHENTICATION_TOKEN_INVALID",
            STORE,
        );
        expect_http_status(&info, case, 401);
        assert_eq!(Harness::requests(&h.collections).await.len(), 1, "{case}");
    }

    // -----------------------------------------------------------------------------------------
    // upstream 429 -> RESOURCE_EXHAUSTED, RetryInfo = Retry-After

    #[tokio::test]
    async fn a_store_429_maps_to_resource_exhausted_with_retry_info_from_retry_after() {
        for op in OPERATIONS {
            let case = format!("{op:?} 429 Retry-After: 30");
            let h = Harness::start().await;
            op.mount(
                &h,
                with_ids(ResponseTemplate::new(429)).insert_header("Retry-After", "30"),
            )
            .await;
            let status = op.fail(&h.facade.channel).await;
            let info = expect(
                &status,
                &case,
                Code::ResourceExhausted,
                "TOO_MANY_REQUESTS",
                STORE,
            );
            expect_http_status(&info, &case, 429);
            expect_upstream_ids(&status, &info, &case);
            expect_retry(&status, &case, Duration::from_secs(30));
        }
    }

    // -----------------------------------------------------------------------------------------
    // upstream 500 -> INTERNAL; 503 -> UNAVAILABLE + RetryInfo

    #[tokio::test]
    async fn a_store_500_maps_to_internal() {
        for op in OPERATIONS {
            let case = format!("{op:?} 500 echoing a token, a key and a URL");
            let h = Harness::start().await;
            op.mount(
                &h,
                with_ids(ResponseTemplate::new(500).set_body_json(echoing_body("Failure"))),
            )
            .await;
            let status = op.fail(&h.facade.channel).await;
            let info = expect(
                &status,
                &case,
                Code::Internal,
                "INTERNAL_SERVER_ERROR",
                STORE,
            );
            expect_http_status(&info, &case, 500);
            expect_upstream_ids(&status, &info, &case);
            expect_no_retry(&status, &case);
            expect_no_bad_request(&status, &case);
        }
    }

    #[tokio::test]
    async fn a_store_503_maps_to_unavailable_with_retry_info() {
        for op in OPERATIONS {
            let case = format!("{op:?} 503 Retry-After: 30");
            let h = Harness::start().await;
            op.mount(
                &h,
                with_ids(ResponseTemplate::new(503).set_body_json(echoing_body("Unavailable")))
                    .insert_header("Retry-After", "30"),
            )
            .await;
            let status = op.fail(&h.facade.channel).await;
            let info = expect(
                &status,
                &case,
                Code::Unavailable,
                "SERVICE_UNAVAILABLE",
                STORE,
            );
            expect_http_status(&info, &case, 503);
            expect_upstream_ids(&status, &info, &case);
            expect_retry(&status, &case, Duration::from_secs(30));
        }
    }

    // -----------------------------------------------------------------------------------------
    // connect, reset and cut-off errors, attempt timeouts -> UNAVAILABLE + RetryInfo

    #[tokio::test]
    async fn connection_refused_maps_to_unavailable_with_retry_info() {
        let (_token, facade) = facade_at(&closed_port_url(), |_| {}).await;
        for op in OPERATIONS {
            let case = format!("{op:?} connection refused");
            let status = op.fail(&facade.channel).await;
            let info = expect(
                &status,
                &case,
                Code::Unavailable,
                "UPSTREAM_UNREACHABLE",
                FACADE,
            );
            assert_eq!(meta(&info, "host"), Some(STORE), "{case}");
            assert_eq!(meta(&info, "http_status"), None, "{case}");
            expect_retry(&status, &case, Duration::from_secs(1));
        }
    }

    #[tokio::test]
    async fn connection_reset_or_cut_off_mid_answer_maps_to_unavailable_with_retry_info() {
        let breakages = [
            Breakage::ResetBeforeAnswer,
            Breakage::CutMidHeaders,
            Breakage::CutMidBody,
            Breakage::ResetMidBody,
        ];
        for breakage in breakages {
            let addr = broken_upstream(breakage).await;
            let (_token, facade) = facade_at(&format!("http://{addr}"), |_| {}).await;
            for op in OPERATIONS {
                let case = format!("{op:?} {breakage:?}");
                let status = op.fail(&facade.channel).await;
                let info = expect(
                    &status,
                    &case,
                    Code::Unavailable,
                    "UPSTREAM_CONNECTION_LOST",
                    FACADE,
                );
                assert_eq!(meta(&info, "host"), Some(STORE), "{case}");
                expect_retry(&status, &case, Duration::from_secs(1));
            }
        }
    }

    #[tokio::test]
    async fn upstream_attempt_timeout_maps_to_unavailable_with_retry_info() {
        let h = Harness::builder()
            .upstream_timeout(Duration::from_millis(300))
            .start()
            .await;
        h.mount_token(3599).await;
        for op in OPERATIONS {
            let case = format!("{op:?} attempt timeout");
            op.mount(
                &h,
                ResponseTemplate::new(200)
                    .set_body_json((op.ok_body)())
                    .set_delay(Duration::from_secs(5)),
            )
            .await;
            let status = op.fail(&h.facade.channel).await;
            let info = expect(
                &status,
                &case,
                Code::Unavailable,
                "UPSTREAM_TIMEOUT",
                FACADE,
            );
            assert_eq!(meta(&info, "host"), Some(STORE), "{case}");
            expect_retry(&status, &case, Duration::from_secs(1));
        }
    }

    // -----------------------------------------------------------------------------------------
    // 2xx with a body that does not parse -> INTERNAL, UPSTREAM_MALFORMED_RESPONSE

    #[tokio::test]
    async fn malformed_2xx_answers_map_to_internal_upstream_malformed_response() {
        for op in OPERATIONS {
            let h = Harness::start().await;
            for (name, template, http) in (op.malformed)() {
                let case = format!("{op:?} {name}");
                op.store(&h).reset().await;
                op.mount(&h, with_ids(template)).await;
                let status = op.fail(&h.facade.channel).await;
                let info = expect(
                    &status,
                    &case,
                    Code::Internal,
                    "UPSTREAM_MALFORMED_RESPONSE",
                    FACADE,
                );
                expect_http_status(&info, &case, http);
                expect_upstream_ids(&status, &info, &case);
                expect_no_retry(&status, &case);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // caller's deadline runs out -> DEADLINE_EXCEEDED, well before the upstream answers

    #[tokio::test]
    async fn caller_deadline_running_out_maps_to_deadline_exceeded_before_the_upstream_answers() {
        let upstream_delay = Duration::from_secs(8);
        for_every_operation(|op| async move {
            let h = Harness::start().await;
            op.mount(
                &h,
                ResponseTemplate::new(200)
                    .set_body_json((op.ok_body)())
                    .set_delay(upstream_delay),
            )
            .await;
            let case = format!("{op:?} 1 s deadline");
            let started = Instant::now();
            let status = (op.call)(h.facade.channel.clone(), Some(Duration::from_secs(1)), 0)
                .await
                .expect_err("the deadline runs out first");
            let elapsed = started.elapsed();
            expect(
                &status,
                &case,
                Code::DeadlineExceeded,
                "DEADLINE_EXCEEDED",
                FACADE,
            );
            assert!(
                elapsed < upstream_delay - Duration::from_secs(2),
                "{case}: answered after {elapsed:?}"
            );
            assert_eq!(Harness::requests(op.store(&h)).await.len(), 1, "{case}");
        })
        .await;
    }

    // -----------------------------------------------------------------------------------------
    // token endpoint rejects the credentials -> INTERNAL, reason names it, secret never appears

    #[tokio::test]
    async fn token_endpoint_rejecting_the_credentials_maps_to_internal_naming_the_rejection() {
        for op in OPERATIONS {
            for http in [400, 401] {
                let case = format!("{op:?} token endpoint {http}");
                let h = Harness::builder().start().await;
                Mock::given(method("POST"))
                    .respond_with(ResponseTemplate::new(http).set_body_json(json!({
                        "error": "invalid_client",
                        "error_description": format!(
                            "AADSTS7000215: Invalid client secret provided. Ensure the secret \
                             being sent in the request is the client secret value: \
                             {CLIENT_SECRET} Trace ID: 0000 See \
                             https://login.microsoftonline.com/error?code=7000215"
                        ),
                        "error_codes": [7000215],
                        "trace_id": "0000",
                        "correlation_id": "1111"
                    })))
                    .mount(&h.token)
                    .await;
                op.mount(&h, ResponseTemplate::new(200).set_body_json((op.ok_body)()))
                    .await;
                let status = op.fail(&h.facade.channel).await;
                let info = expect(
                    &status,
                    &case,
                    Code::Internal,
                    "TOKEN_REQUEST_REJECTED",
                    FACADE,
                );
                expect_http_status(&info, &case, http);
                assert!(
                    status.message().contains("invalid_client")
                        && (status.message().contains("AADSTS7000215")
                            || info.metadata.values().any(|v| v.contains("7000215"))),
                    "{case}: the Entra error is not named: {status:?}"
                );
                expect_no_retry(&status, &case);
                assert!(Harness::requests(op.store(&h)).await.is_empty(), "{case}");
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // token endpoint unreachable or 5xx -> UNAVAILABLE + RetryInfo

    #[tokio::test]
    async fn token_endpoint_5xx_maps_to_unavailable_with_retry_info() {
        // A failed token request is not remembered: each call makes one, answered in turn.
        let answers = [(503, None), (500, None), (504, None), (503, Some("30"))];
        for op in OPERATIONS {
            let h = Harness::builder().start().await;
            for (http, retry_after) in answers {
                let case = format!("{op:?} token endpoint {http} Retry-After {retry_after:?}");
                let mut template = ResponseTemplate::new(http).set_body_string("upstream trouble");
                if let Some(value) = retry_after {
                    template = template.insert_header("Retry-After", value);
                }
                h.token.reset().await;
                Mock::given(method("POST"))
                    .respond_with(template)
                    .mount(&h.token)
                    .await;
                let status = op.fail(&h.facade.channel).await;
                let info = expect(
                    &status,
                    &case,
                    Code::Unavailable,
                    "TOKEN_ENDPOINT_UNAVAILABLE",
                    FACADE,
                );
                expect_http_status(&info, &case, http);
                let delay = retry_after.map_or(1, |s| s.parse().unwrap());
                expect_retry(&status, &case, Duration::from_secs(delay));
                assert_eq!(h.token_requests().await.len(), 1, "{case}");
            }
            assert!(Harness::requests(op.store(&h)).await.is_empty(), "{op:?}");
        }
    }

    #[tokio::test]
    async fn token_endpoint_unreachable_maps_to_unavailable_with_retry_info() {
        let store = MockServer::start().await;
        let mut settings = Settings::for_upstream(&store.uri()).unwrap();
        settings.authority_host = closed_port_url().parse().unwrap();
        settings.credentials = Some(secret_credentials());
        let facade = Facade::start(settings).await;
        for op in OPERATIONS {
            let case = format!("{op:?} token endpoint unreachable");
            let status = op.fail(&facade.channel).await;
            let info = expect(
                &status,
                &case,
                Code::Unavailable,
                "TOKEN_ENDPOINT_UNAVAILABLE",
                FACADE,
            );
            assert_eq!(meta(&info, "http_status"), None, "{case}");
            expect_retry(&status, &case, Duration::from_secs(1));
        }
        assert!(Harness::requests(&store).await.is_empty());
    }

    // -----------------------------------------------------------------------------------------
    // no credential at all -> UNAUTHENTICATED, SERVICE_TICKET_REQUIRED

    #[tokio::test]
    async fn no_credential_at_all_maps_to_unauthenticated_service_ticket_required() {
        let h = Harness::builder()
            .credential(Credential::None)
            .start()
            .await;
        for op in OPERATIONS {
            let case = format!("{op:?} without any credential");
            let status = op.fail(&h.facade.channel).await;
            expect(
                &status,
                &case,
                Code::Unauthenticated,
                "SERVICE_TICKET_REQUIRED",
                FACADE,
            );
            expect_no_retry(&status, &case);
            assert!(Harness::requests(op.store(&h)).await.is_empty(), "{case}");
        }
        assert!(h.token_requests().await.is_empty());
    }

    // -----------------------------------------------------------------------------------------
    // request larger than the limit -> RESOURCE_EXHAUSTED (not tonic's OUT_OF_RANGE)

    /// A request message for any method: one field no request declares, `len` bytes of the
    /// caller's ticket over and over. It is refused for its size before it is decoded.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Oversized {
        #[prost(string, tag = "2047")]
        padding: String,
    }

    /// Sends `message` to `op`'s method, whatever its request type.
    async fn call_raw(channel: &Channel, op: &Op, message: Oversized) -> Result<(), Status> {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = format!("/{}", op.full_name()).parse().unwrap();
        let codec = tonic_prost::ProstCodec::<Oversized, ()>::default();
        grpc.unary(tonic::Request::new(message), path, codec)
            .await
            .map(drop)
    }

    #[tokio::test]
    async fn request_over_the_size_limit_maps_to_resource_exhausted_not_out_of_range() {
        let h = Harness::builder().max_request_bytes(1024).start().await;
        h.mount_token(3599).await;
        let oversized = Oversized {
            padding: CALLER_TICKET.repeat(4096 / CALLER_TICKET.len() + 1),
        };
        for op in OPERATIONS {
            let case = format!("{op:?} 4 KiB");
            let status = call_raw(&h.facade.channel, op, oversized.clone())
                .await
                .unwrap_err();
            let info = expect(
                &status,
                &case,
                Code::ResourceExhausted,
                "REQUEST_TOO_LARGE",
                FACADE,
            );
            assert_eq!(meta(&info, "limit_bytes"), Some("1024"), "{case}");
            expect_no_bad_request(&status, &case);
            assert!(Harness::requests(op.store(&h)).await.is_empty(), "{case}");

            // Under the limit, the same facade serves.
            op.mount(&h, ResponseTemplate::new(200).set_body_json((op.ok_body)()))
                .await;
            (op.call)(h.facade.channel.clone(), None, 0)
                .await
                .unwrap_or_else(|status| panic!("{op:?} under the limit: {status:?}"));
            assert_eq!(Harness::requests(op.store(&h)).await.len(), 1, "{case}");
            op.store(&h).reset().await;
        }
    }

    // -----------------------------------------------------------------------------------------
    // explicit key_type contradicts the key's aud -> INVALID_ARGUMENT, BadRequest on key_type

    #[tokio::test]
    async fn renew_key_type_contradicting_the_keys_aud_maps_to_invalid_argument_on_key_type() {
        let h = Harness::start().await;
        let later = now() + 29 * 24 * 3600;
        let cases = [
            (
                "collections key declared PURCHASE",
                store_key(COLLECTIONS_AUD, now(), later),
                pb::KeyType::Purchase,
            ),
            (
                "purchase key declared COLLECTIONS",
                store_key(PURCHASE_AUD, now(), later),
                pb::KeyType::Collections,
            ),
            (
                "foreign aud declared COLLECTIONS",
                store_key("https://evil.example/v6.0/keys", now(), later),
                pb::KeyType::Collections,
            ),
        ];
        for (case, key, declared) in cases {
            let status = renew(
                &h.facade.channel,
                pb::RenewKeyRequest {
                    key,
                    key_type: declared as i32,
                    service_ticket: String::new(),
                },
            )
            .await
            .unwrap_err();
            expect(
                &status,
                case,
                Code::InvalidArgument,
                "KEY_TYPE_MISMATCH",
                FACADE,
            );
            assert_eq!(bad_fields(&status), ["key_type"], "{case}");
            assert!(!status.message().contains("evil.example"), "{case}");
        }
        assert!(Harness::requests(&h.collections).await.is_empty());
        assert!(Harness::requests(&h.purchase).await.is_empty());
    }

    // -----------------------------------------------------------------------------------------
    // a non-2xx answer maps on its status even when its body cannot be read in full

    #[tokio::test]
    async fn non_2xx_answers_map_on_their_status_even_when_the_body_is_too_large_or_cut() {
        let huge = "x".repeat(5 * 1024 * 1024);
        let cases = [
            (
                503,
                None,
                Code::Unavailable,
                "SERVICE_UNAVAILABLE",
                Duration::from_secs(1),
            ),
            (
                429,
                Some("30"),
                Code::ResourceExhausted,
                "TOO_MANY_REQUESTS",
                Duration::from_secs(30),
            ),
        ];
        for op in OPERATIONS {
            let h = Harness::start().await;
            for (http, retry_after, code, reason, delay) in cases {
                let case = format!("{op:?} HTTP {http} with a 5 MiB body");
                let mut template =
                    with_ids(ResponseTemplate::new(http).set_body_string(huge.clone()));
                if let Some(value) = retry_after {
                    template = template.insert_header("Retry-After", value);
                }
                op.store(&h).reset().await;
                op.mount(&h, template).await;
                let status = op.fail(&h.facade.channel).await;
                let info = expect(&status, &case, code, reason, STORE);
                expect_http_status(&info, &case, http);
                expect_upstream_ids(&status, &info, &case);
                expect_retry(&status, &case, delay);
            }
        }

        let addr = broken_upstream(Breakage::CutMidErrorBody).await;
        let (_token, facade) = facade_at(&format!("http://{addr}"), |_| {}).await;
        for op in OPERATIONS {
            let case = format!("{op:?} 429 with its body cut off");
            let status = op.fail(&facade.channel).await;
            let info = expect(
                &status,
                &case,
                Code::ResourceExhausted,
                "TOO_MANY_REQUESTS",
                STORE,
            );
            expect_http_status(&info, &case, 429);
            expect_retry(&status, &case, Duration::from_secs(30));
        }
    }
}
