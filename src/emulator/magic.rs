//! Magic ids: values that make the emulator fail on purpose, so every error path of a client
//! can be reached on demand. For offline licenses the product id is the magic value; for key
//! renewal, the recurrences query and the orders query it is the key's `payload` claim
//! (`msstore-facade sandbox-key --magic ...`; `MAGIC-400` names `key`, respectively `b2bKey`);
//! for the collections query it is a `productId` in `productSkuIds`, for consume and grant the
//! `productId`, for a recurrence change the `recurrenceId` path segment. The refund endpoints
//! (the clawback SAS token and the refund queue) carry no such value: a fault set with
//! `POST /emulator/refund-queue/faults` makes their next requests answer as a magic id would
//! ([`super::refunds`]).
//!
//! [`MAGIC_RESET_AFTER_COMMIT`] is different: not a failure [`Magic::parse`] knows, but a
//! product of the sandbox catalog whose consume does its work and then loses the answer
//! (see [`CONSUME_PRODUCTS`]).

use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;

use super::connection::ConnectionControl;
use super::store_answer::{self, inner_code};

/// 400 `InvalidParameter`, naming the parameter that carried the magic value.
pub const MAGIC_400: &str = "MAGIC-400";
/// 401 with the inner code `AuthenticationTokenInvalid` (also what plain `MAGIC-401` gives).
pub const MAGIC_401_AUTHENTICATION_TOKEN_INVALID: &str = "MAGIC-401-AUTHENTICATION-TOKEN-INVALID";
/// 401 with the inner code `InconsistentClientId`.
pub const MAGIC_401_INCONSISTENT_CLIENT_ID: &str = "MAGIC-401-INCONSISTENT-CLIENT-ID";
/// 401 with the inner code `PartnerAadTicketRequired`.
pub const MAGIC_401_PARTNER_AAD_TICKET_REQUIRED: &str = "MAGIC-401-PARTNER-AAD-TICKET-REQUIRED";
/// 403.
pub const MAGIC_403: &str = "MAGIC-403";
/// 404.
pub const MAGIC_404: &str = "MAGIC-404";
/// 408.
pub const MAGIC_408: &str = "MAGIC-408";
/// 409 (for a license: not owned / not offline).
pub const MAGIC_409: &str = "MAGIC-409";
/// 412.
pub const MAGIC_412: &str = "MAGIC-412";
/// 429 with `Retry-After: 30`.
pub const MAGIC_429: &str = "MAGIC-429";
/// 500.
pub const MAGIC_500: &str = "MAGIC-500";
/// 501.
pub const MAGIC_501: &str = "MAGIC-501";
/// 502.
pub const MAGIC_502: &str = "MAGIC-502";
/// 503.
pub const MAGIC_503: &str = "MAGIC-503";
/// 504.
pub const MAGIC_504: &str = "MAGIC-504";
/// Prefix of `MAGIC-SLOW-<ms>`: wait that many milliseconds (at most [`MAX_SLOW`]), then
/// answer as usual.
pub const MAGIC_SLOW_PREFIX: &str = "MAGIC-SLOW-";
/// The TCP connection is reset (RST) once the request has been read; no answer byte is sent.
pub const MAGIC_RESET: &str = "MAGIC-RESET";
/// 200 with an HTML body instead of JSON.
pub const MAGIC_MALFORMED: &str = "MAGIC-MALFORMED";
/// 200 whose `Content-Length` promises 4096 bytes; the connection is closed after the first
/// 39 (a JSON object cut off mid-string).
pub const MAGIC_TRUNCATED: &str = "MAGIC-TRUNCATED";

/// A store-managed consumable every sandbox user owns, for testing exactly-once consumes: the
/// first consume of each `trackingId` is committed (the balance goes down, the result is kept)
/// and then the TCP connection is reset with no answer byte, as if the answer were lost on the
/// way back; a replay of the same `trackingId` answers 200 with the kept result. Only
/// `POST /collections/v8.0/collections/consume` resets; the collections query lists it like
/// any other consumable.
pub const MAGIC_RESET_AFTER_COMMIT: &str = "MAGIC-RESET-AFTER-COMMIT";

/// The magic products of consume: catalog products with an effect, not failures, and so not
/// in [`DOCUMENTED`] (which every endpoint answers the same way).
pub const CONSUME_PRODUCTS: [&str; 1] = [MAGIC_RESET_AFTER_COMMIT];

/// The longest `MAGIC-SLOW-<ms>` delay; larger values wait this long.
pub const MAX_SLOW: Duration = Duration::from_secs(60);

/// `Retry-After` of `MAGIC-429`, in seconds.
pub const THROTTLE_RETRY_AFTER_SECONDS: u64 = 30;

/// Every documented magic id (`MAGIC-SLOW-1000` standing for the slow family). Besides these,
/// `MAGIC-<status>` answers any status from 400 to 599 with a `ServiceError` body.
pub const DOCUMENTED: [&str; 21] = [
    MAGIC_400,
    MAGIC_401_AUTHENTICATION_TOKEN_INVALID,
    MAGIC_401_INCONSISTENT_CLIENT_ID,
    MAGIC_401_PARTNER_AAD_TICKET_REQUIRED,
    MAGIC_403,
    MAGIC_404,
    MAGIC_408,
    MAGIC_409,
    MAGIC_412,
    MAGIC_429,
    MAGIC_500,
    MAGIC_501,
    MAGIC_502,
    MAGIC_503,
    MAGIC_504,
    "MAGIC-505",
    "MAGIC-SLOW-1000",
    MAGIC_RESET,
    MAGIC_MALFORMED,
    MAGIC_TRUNCATED,
    "MAGIC-422",
];

/// How many bytes of the promised body `MAGIC-TRUNCATED` sends.
const TRUNCATED_SENT: &[u8] = b"{\"emulator\":\"this answer is cut off her";
const TRUNCATED_PROMISED: u64 = 4096;

/// What a magic value asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Magic {
    /// Answer this status with a `ServiceError` body carrying the inner code, if any.
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The documented inner code (401 and 400 only).
        inner_code: Option<&'static str>,
    },
    /// Wait, then answer as usual.
    Slow(Duration),
    /// Reset the connection without answering.
    Reset,
    /// Answer 200 with a body that is not JSON.
    Malformed,
    /// Answer 200 and cut the body off.
    Truncated,
}

impl Magic {
    /// The magic `value` names, if it is one (exact, upper case).
    pub fn parse(value: &str) -> Option<Self> {
        let rest = value.strip_prefix("MAGIC-")?;
        let fixed = match rest {
            "RESET" => Some(Self::Reset),
            "MALFORMED" => Some(Self::Malformed),
            "TRUNCATED" => Some(Self::Truncated),
            "401-AUTHENTICATION-TOKEN-INVALID" | "401" => {
                Some(unauthorized(inner_code::AUTHENTICATION_TOKEN_INVALID))
            }
            "401-INCONSISTENT-CLIENT-ID" => Some(unauthorized(inner_code::INCONSISTENT_CLIENT_ID)),
            "401-PARTNER-AAD-TICKET-REQUIRED" => {
                Some(unauthorized(inner_code::PARTNER_AAD_TICKET_REQUIRED))
            }
            _ => None,
        };
        fixed
            .or_else(|| Self::slow(rest))
            .or_else(|| Self::status(rest))
    }

    fn slow(rest: &str) -> Option<Self> {
        let millis = rest.strip_prefix("SLOW-")?;
        if millis.is_empty() || millis.len() > 9 || !millis.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let delay = Duration::from_millis(millis.parse().ok()?);
        Some(Self::Slow(delay.min(MAX_SLOW)))
    }

    fn status(rest: &str) -> Option<Self> {
        if rest.len() != 3 || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let status = StatusCode::from_u16(rest.parse().ok()?).ok()?;
        if !(400..=599).contains(&status.as_u16()) {
            return None;
        }
        Some(Self::Status {
            status,
            inner_code: (status == StatusCode::BAD_REQUEST)
                .then_some(inner_code::INVALID_PARAMETER),
        })
    }

    /// Carries out the magic: `Some(answer)` to send instead of the usual one, or `None` to go
    /// on as usual (after the delay of [`Magic::Slow`]). `parameter` names the upstream
    /// parameter that carried the magic value (`productId`, `key`).
    pub(super) async fn apply(
        self,
        request: &HeaderMap,
        parameter: &str,
        connection: &ConnectionControl,
    ) -> Option<Response> {
        self.apply_throttling_as(
            request,
            parameter,
            connection,
            store_answer::THROTTLED_MESSAGE,
        )
        .await
    }

    /// [`Magic::apply`] for an endpoint whose 429 says `throttle_message` (the collections
    /// endpoints answer with the rate limiter's own text).
    pub(super) async fn apply_throttling_as(
        self,
        request: &HeaderMap,
        parameter: &str,
        connection: &ConnectionControl,
        throttle_message: &str,
    ) -> Option<Response> {
        let mut answer = match self {
            Self::Slow(delay) => {
                tokio::time::sleep(delay).await;
                return None;
            }
            Self::Reset => {
                connection.reset();
                store_answer::failure(
                    request,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "never sent: the connection is reset first",
                )
            }
            Self::Malformed => malformed(request),
            Self::Truncated => truncated(request),
            Self::Status { status, inner_code } => {
                let texts = StatusTexts {
                    parameter,
                    throttle_message,
                };
                status_answer(request, status, inner_code, &texts)
            }
        };
        // For the log line: what the wire saw may not be what the status says.
        answer.extensions_mut().insert(self);
        Some(answer)
    }
}

impl std::fmt::Display for Magic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status { status, .. } => write!(f, "HTTP {}", status.as_u16()),
            Self::Slow(delay) => write!(f, "slow answer after {delay:?}"),
            Self::Reset => f.write_str("connection reset, nothing sent"),
            Self::Malformed => f.write_str("200 with a body that is not JSON"),
            Self::Truncated => f.write_str("200 cut off mid-body"),
        }
    }
}

fn unauthorized(inner_code: &'static str) -> Magic {
    Magic::Status {
        status: StatusCode::UNAUTHORIZED,
        inner_code: Some(inner_code),
    }
}

/// What a status answer names: the parameter that carried the magic value, and the text of
/// a 429.
struct StatusTexts<'a> {
    parameter: &'a str,
    throttle_message: &'a str,
}

fn status_answer(
    request: &HeaderMap,
    status: StatusCode,
    inner: Option<&'static str>,
    texts: &StatusTexts<'_>,
) -> Response {
    let detail = "Answered on purpose by a magic id of the sandbox emulator.";
    match (status, inner) {
        (StatusCode::BAD_REQUEST, _) => {
            store_answer::invalid_parameter(request, texts.parameter, detail)
        }
        (StatusCode::UNAUTHORIZED, Some(code)) => store_answer::unauthorized(request, code, detail),
        (StatusCode::TOO_MANY_REQUESTS, _) => store_answer::throttled(
            request,
            THROTTLE_RETRY_AFTER_SECONDS,
            texts.throttle_message,
        ),
        _ => store_answer::failure(request, status, detail),
    }
}

fn malformed(request: &HeaderMap) -> Response {
    let mut response = Response::new(Body::from(
        "<html><body>Service temporarily rerouted (sandbox emulator: MAGIC-MALFORMED)</body></html>",
    ));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        "text/html".parse().expect("static header value"),
    );
    headers.extend(store_answer::correlation_headers(request));
    response
}

fn truncated(request: &HeaderMap) -> Response {
    let mut response = Response::new(Body::new(CutBody::Start));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        "application/json".parse().expect("static header value"),
    );
    headers.insert(CONTENT_LENGTH, TRUNCATED_PROMISED.into());
    headers.extend(store_answer::correlation_headers(request));
    response
}

/// A body that yields a first chunk, then waits once (so that hyper flushes what it has
/// buffered: the head and that chunk), then fails, which makes hyper close the connection
/// with the promised `Content-Length` unmet.
enum CutBody {
    Start,
    Sent,
    Flushed,
}

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        match *self {
            Self::Start => {
                *self = Self::Sent;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                    TRUNCATED_SENT,
                )))))
            }
            Self::Sent => {
                *self = Self::Flushed;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Self::Flushed => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "MAGIC-TRUNCATED: the answer is cut off on purpose",
            )))),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(TRUNCATED_PROMISED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_id_parses() {
        for id in DOCUMENTED {
            assert!(Magic::parse(id).is_some(), "{id}");
        }
    }

    #[test]
    fn statuses_slow_delays_and_non_magic_values() {
        assert_eq!(
            Magic::parse("MAGIC-401"),
            Magic::parse(MAGIC_401_AUTHENTICATION_TOKEN_INVALID)
        );
        assert_eq!(
            Magic::parse("MAGIC-SLOW-250"),
            Some(Magic::Slow(Duration::from_millis(250)))
        );
        assert_eq!(
            Magic::parse("MAGIC-SLOW-999999999"),
            Some(Magic::Slow(MAX_SLOW))
        );
        for not_magic in [
            "9NBLGGH4R2R6",
            "magic-503",
            "MAGIC-",
            "MAGIC-200",
            "MAGIC-600",
            "MAGIC-5030",
            "MAGIC-SLOW-",
            "MAGIC-SLOW-1s",
            "MAGIC-401-SOMETHING",
            MAGIC_RESET_AFTER_COMMIT,
        ] {
            assert_eq!(Magic::parse(not_magic), None, "{not_magic}");
        }
    }
}
