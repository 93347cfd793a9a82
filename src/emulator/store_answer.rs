//! Answers in the Store's shape: the `MS-*` correlation headers on every answer, JSON bodies,
//! and the `ServiceError` body of Microsoft's B2B APIs for every failure.

use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use super::clock::random_guid;

/// What the emulator says in `MS-ServerId`.
const SERVER_ID: &str = "msstore-facade-emulator";
/// What the emulator says in the `source` fields of a `ServiceError`.
const SOURCE: &str = "msstore-facade-emulator";

/// The Store's documented inner error codes.
pub(super) mod inner_code {
    /// The token or the key is invalid, expired or revoked.
    pub const AUTHENTICATION_TOKEN_INVALID: &str = "AuthenticationTokenInvalid";
    /// The key's `clientId` differs from the token's `appid`.
    pub const INCONSISTENT_CLIENT_ID: &str = "InconsistentClientId";
    /// No Entra token came with the request.
    pub const PARTNER_AAD_TICKET_REQUIRED: &str = "PartnerAadTicketRequired";
    /// A request parameter is missing or invalid.
    pub const INVALID_PARAMETER: &str = "InvalidParameter";
}

/// `MS-CorrelationId`, `MS-RequestId`, `MS-CV` (the request's own, else a new vector) and
/// `MS-ServerId`, as the Store sends them on every answer.
pub(super) fn correlation_headers(request: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let ms_cv = request.get("ms-cv").cloned().unwrap_or_else(|| {
        new_vector()
            .parse()
            .unwrap_or(HeaderValue::from_static("0"))
    });
    for (name, value) in [
        (
            "ms-correlationid",
            HeaderValue::from_str(&random_guid()).ok(),
        ),
        ("ms-requestid", HeaderValue::from_str(&random_guid()).ok()),
        ("ms-cv", Some(ms_cv)),
        ("ms-serverid", Some(HeaderValue::from_static(SERVER_ID))),
    ] {
        if let Some(value) = value {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    headers
}

/// A v1 correlation vector: 16 base64 characters and `.0`.
fn new_vector() -> String {
    let bytes: [u8; 12] = std::array::from_fn(|_| fastrand::u8(..));
    format!("{}.0", STANDARD.encode(bytes))
}

/// `body` as JSON with `status` and the correlation headers.
pub(super) fn json_answer(status: StatusCode, request: &HeaderMap, body: &Value) -> Response {
    let mut response = (
        status,
        [(CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response();
    response.headers_mut().extend(correlation_headers(request));
    response
}

/// `Ok` when the request says its body is JSON, else the 415 answer.
pub(super) fn require_json(request: &HeaderMap) -> Result<(), Box<Response>> {
    let is_json = request
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if is_json {
        Ok(())
    } else {
        Err(Box::new(failure(
            request,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json.",
        )))
    }
}

/// A `ServiceError` whose documented inner code sits only inside `innererror.data`, as in
/// real 401 answers.
pub(super) fn unauthorized(request: &HeaderMap, inner: &str, detail: &str) -> Response {
    let body = service_error(
        StatusCode::UNAUTHORIZED,
        "Authentication failed.",
        Some(json!({
            "code": "AuthenticationFailure",
            "message": detail,
            "source": SOURCE,
            "details": [],
            "data": [format!("{SOURCE} : {{ : {inner} : {detail} }}")],
        })),
    );
    json_answer(StatusCode::UNAUTHORIZED, request, &body)
}

/// 400 `InvalidParameter` naming the upstream parameter `field` (e.g. `productId`, `key`).
pub(super) fn invalid_parameter(request: &HeaderMap, field: &str, detail: &str) -> Response {
    let body = service_error(
        StatusCode::BAD_REQUEST,
        "The request is invalid.",
        Some(json!({
            "code": inner_code::INVALID_PARAMETER,
            "message": detail,
            "source": SOURCE,
            "details": [],
            "data": [format!("{field} : {detail}")],
        })),
    );
    json_answer(StatusCode::BAD_REQUEST, request, &body)
}

/// Any other failure: a `ServiceError` with no inner error, so callers map it on the status.
pub(super) fn failure(request: &HeaderMap, status: StatusCode, message: &str) -> Response {
    json_answer(status, request, &service_error(status, message, None))
}

/// A refusal the Store documents no shape for (insufficient balance and the like): `status`
/// with an inner error whose `code` is the emulator's own `inner` and whose `data` names
/// `field`, so that callers can tell the cases apart.
pub(super) fn refused(
    request: &HeaderMap,
    status: StatusCode,
    inner: &str,
    field: &str,
    detail: &str,
) -> Response {
    let body = service_error(
        status,
        detail,
        Some(json!({
            "code": inner,
            "message": detail,
            "source": SOURCE,
            "details": [],
            "data": [format!("{field} : {detail}")],
        })),
    );
    json_answer(status, request, &body)
}

/// What a 429 says unless the endpoint has its own text.
pub(super) const THROTTLED_MESSAGE: &str = "Too many requests; retry later.";

/// 429 saying `message`, with `Retry-After: retry_after_seconds`.
pub(super) fn throttled(request: &HeaderMap, retry_after_seconds: u64, message: &str) -> Response {
    let mut response = failure(request, StatusCode::TOO_MANY_REQUESTS, message);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_seconds));
    response
}

fn service_error(status: StatusCode, message: &str, inner: Option<Value>) -> Value {
    let code: String = status
        .canonical_reason()
        .unwrap_or("Error")
        .split(|c: char| !c.is_ascii_alphanumeric())
        .collect();
    let mut body = json!({
        "code": code,
        "message": message,
        "source": SOURCE,
        "data": [],
        "details": [],
    });
    if let (Some(inner), Some(object)) = (inner, body.as_object_mut()) {
        object.insert("innererror".into(), inner);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requests_vector_is_echoed_and_a_new_one_is_v1_shaped() {
        let mut request = HeaderMap::new();
        request.insert("ms-cv", HeaderValue::from_static("xu2HW6SrSkyfHyFh.0.1"));
        let headers = correlation_headers(&request);
        assert_eq!(headers["ms-cv"], "xu2HW6SrSkyfHyFh.0.1");
        assert_eq!(headers["ms-serverid"], SERVER_ID);
        let fresh = correlation_headers(&HeaderMap::new());
        let vector = fresh["ms-cv"].to_str().unwrap();
        assert_eq!(vector.len(), 18, "{vector}");
        assert!(vector.ends_with(".0"));
    }

    #[test]
    fn service_error_codes_are_pascal_case_reasons() {
        let body = service_error(StatusCode::TOO_MANY_REQUESTS, "m", None);
        assert_eq!(body["code"], "TooManyRequests");
        assert!(body.get("innererror").is_none());
    }
}
