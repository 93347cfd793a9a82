//! The Store's REST hosts and the one way to talk to them: one shared, pooled HTTP client, one
//! [`Host`] per upstream with its base URL, circuit breaker, retry budget and metrics, and
//! [`StoreClient::exchange`], which sends an [`UpstreamRequest`] and reads the answer. Nothing
//! here knows about gRPC or about any one operation: answers and failures are plain values.

pub mod client;
mod error_body;
mod host;
pub mod queue;
pub mod redact;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use enum_map::EnumMap;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use http::StatusCode;
use http_body_util::Full;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument;
use url::Url;

pub use client::{BodyFailure, HttpAnswer, HttpClient};
pub use error_body::{clean as clean_text, ErrorBody, DOCUMENTED_INNER_CODES};
pub use host::Host;
pub use redact::Redactor;

use crate::resilience::breaker::CircuitBreaker;
use crate::resilience::retry::{RetryAdvice, RetryBudget, Retryable};
use crate::resilience::ResilienceConfig;
use crate::telemetry::metrics::{Metrics, UpstreamMetrics};
use crate::telemetry::otel::{self, client_span, record_response, Route};

/// The facade's `User-Agent` on every upstream request.
pub const USER_AGENT: &str = concat!("msstore-facade/", env!("CARGO_PKG_VERSION"));

/// The upstream correlation headers handed back to callers, in metadata order.
pub const ID_HEADERS: [&str; 4] = ["ms-correlationid", "ms-requestid", "ms-cv", "ms-serverid"];

const MS_CV: HeaderName = HeaderName::from_static("ms-cv");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// [`ID_HEADERS`] as header names, made once: looking a header up by `&str` parses the name
/// on every call.
const ID_HEADER_NAMES: [HeaderName; 4] = [
    HeaderName::from_static(ID_HEADERS[0]),
    HeaderName::from_static(ID_HEADERS[1]),
    HeaderName::from_static(ID_HEADERS[2]),
    HeaderName::from_static(ID_HEADERS[3]),
];

/// A GUID in its 8-4-4-4-12 hexadecimal form (either case, no braces).
pub fn is_guid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Everything but RFC 3986 unreserved characters is escaped, so an id is always exactly one
/// path segment: `/`, `%`, `?`, `#` and non-ASCII can never change the path called.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` percent-encoded as exactly one path segment.
pub fn segment(text: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(text, SEGMENT)
}

/// [`SEGMENT`] leaving `:` and `@` as they are: RFC 3986 allows both in a path segment, and
/// ids that carry colons (`mdr:0:...` recurrence ids) are sent so by every client Microsoft
/// documents; `/`, `?`, `#`, `%`, spaces and non-ASCII are still escaped.
const SEGMENT_WITH_COLONS: &AsciiSet = &SEGMENT.remove(b':').remove(b'@');

/// `text` as exactly one path segment, its `:` and `@` left as they are ([`segment`]
/// escapes them too).
pub fn segment_with_colons(text: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(text, SEGMENT_WITH_COLONS)
}

/// One request to a Store host, as an operation describes it: the host's base URL is
/// prepended by [`StoreClient::exchange`], which also adds the correlation headers. Its
/// `Debug` shows the route only: the headers and body carry tokens and keys.
#[derive(Clone)]
pub struct UpstreamRequest {
    route: &'static Route,
    /// The path below the host's base URL, or (`absolute`) the whole URL.
    path: String,
    absolute: bool,
    authorization: Option<HeaderValue>,
    json: Option<Bytes>,
}

impl UpstreamRequest {
    /// A request of `route` (its method, and its name in spans) to `path` (below the host's
    /// base URL, starting with `/`, segments encoded with [`segment`]), with an empty body
    /// (`Content-Length: 0`).
    pub fn new(route: &'static Route, path: String) -> Self {
        Self {
            route,
            path,
            absolute: false,
            authorization: None,
            json: None,
        }
    }

    /// A request of `route` to the whole URL `url`, for a host whose URLs are handed out
    /// rather than configured (the refund queue: [`queue::QueueUrl`]). The host's circuit,
    /// retry budget and metrics still apply.
    pub fn to_url(route: &'static Route, url: String) -> Self {
        Self {
            absolute: true,
            ..Self::new(route, url)
        }
    }

    /// Sends `Authorization: <value>` (a value marked sensitive).
    pub fn authorization(mut self, value: HeaderValue) -> Self {
        self.authorization = Some(value);
        self
    }

    /// Sends `body` as `application/json`; the same bytes on every attempt. Serializing the
    /// plain structs operations send cannot fail; if one ever did, the body would be empty
    /// and the Store would refuse it (400), which maps like any refusal.
    pub fn json(mut self, body: &impl serde::Serialize) -> Self {
        self.json = Some(serde_json::to_vec(body).unwrap_or_default().into());
        self
    }
}

impl std::fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRequest")
            .field("route", &self.route.name)
            .finish_non_exhaustive()
    }
}

/// Correlation headers for one upstream attempt.
#[derive(Debug, Clone)]
pub struct Correlation {
    /// The `MS-CV` value to send.
    pub ms_cv: String,
    /// The W3C `traceparent` value to send.
    pub traceparent: String,
}

/// The upstream ids of one answer (`MS-CorrelationId`, `MS-RequestId`, `MS-CV`, `MS-ServerId`).
#[derive(Debug, Clone, Default)]
pub struct UpstreamIds([Option<HeaderValue>; 4]);

impl UpstreamIds {
    /// The ids among `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self(ID_HEADER_NAMES.map(|name| headers.get(&name).cloned()))
    }

    /// Replaces each id that carries one of `secrets` (a Store echoing a token in a header).
    pub fn scrub(&mut self, secrets: &Redactor<'_>) {
        secrets.scrub_headers(&mut self.0);
    }

    /// Each of [`ID_HEADERS`]' values, in that order.
    pub fn values(&self) -> &[Option<HeaderValue>; 4] {
        &self.0
    }

    /// The ids present, as (lower-case header name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &HeaderValue)> {
        ID_HEADERS
            .iter()
            .zip(self.0.iter())
            .filter_map(|(name, value)| value.as_ref().map(|v| (*name, v)))
    }
}

/// A successful upstream answer.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The decoded body.
    pub value: T,
    /// The upstream ids.
    pub ids: UpstreamIds,
    /// The HTTP status.
    pub http_status: u16,
}

impl<T> Answer<T> {
    /// The same answer (ids and status) with its value mapped by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        Answer {
            value: f(self.value),
            ids: self.ids,
            http_status: self.http_status,
        }
    }
}

/// How the connection to an upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// No connection could be made (DNS, connect, TLS).
    Connect,
    /// The attempt ran past its timeout.
    Timeout,
    /// The connection broke before the whole answer arrived.
    ConnectionLost,
}

/// Why an upstream call did not give a usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The host's circuit is open: nothing was sent.
    #[error("the Store ({host}) is failing: its circuit is open")]
    CircuitOpen {
        /// The Store host, without port.
        host: Arc<str>,
        /// Time until a probe request will be let through.
        retry_after: Duration,
    },
    /// The Store answered with a non-2xx status.
    #[error("the Store answered HTTP {}", .0.http_status.as_u16())]
    Status(Box<StatusFailure>),
    /// No complete answer arrived.
    #[error("{kind:?} talking to {host}")]
    Transport {
        /// The Store host, without port.
        host: Arc<str>,
        /// What failed.
        kind: TransportFailure,
    },
    /// The Store answered 2xx with a body that does not parse.
    #[error("the Store answered HTTP {http_status} with a body that is not {expected}")]
    Malformed {
        /// The Store host, without port.
        host: Arc<str>,
        /// The HTTP status.
        http_status: u16,
        /// The upstream ids.
        ids: Box<UpstreamIds>,
        /// What the body should have been.
        expected: &'static str,
    },
}

/// A non-2xx answer from the Store.
#[derive(Debug, Clone)]
pub struct StatusFailure {
    /// The Store host, without port.
    pub host: Arc<str>,
    /// The HTTP status.
    pub http_status: StatusCode,
    /// The upstream ids.
    pub ids: UpstreamIds,
    /// The `Retry-After` header, as a duration from now.
    pub retry_after: Option<Duration>,
    /// What the error body says.
    pub body: ErrorBody,
}

/// A Store host, prepared once: its base URL, circuit breaker, retry budget and metrics.
#[derive(Debug)]
pub struct Base {
    url: Url,
    prefix: String,
    host: Arc<str>,
    breaker: CircuitBreaker,
    retry_budget: RetryBudget,
    metrics: UpstreamMetrics,
}

impl Base {
    fn new(upstream: Host, url: &Url, config: &ResilienceConfig, metrics: &Metrics) -> Arc<Self> {
        let host = url.host_str().unwrap_or_default();
        let label = upstream.label();
        let base = Arc::new(Self {
            url: url.clone(),
            prefix: url.as_str().trim_end_matches('/').to_owned(),
            host: host.into(),
            breaker: CircuitBreaker::new(host, config.circuit_failures, config.circuit_open_for),
            retry_budget: RetryBudget::new(config, label, metrics.retries(label)),
            metrics: metrics.upstream(label, host),
        });
        let watched = Arc::downgrade(&base);
        metrics.sample_gauge(
            "msstore_circuit_state",
            vec![
                metrics::Label::from_static_parts("upstream", label),
                metrics::Label::new("host", host.to_owned()),
            ],
            move || {
                watched
                    .upgrade()
                    .map_or(0.0, |b| f64::from(b.breaker.state_code()))
            },
        );
        base
    }

    /// The host's name, without port, as errors name it.
    pub fn name(&self) -> &Arc<str> {
        &self.host
    }

    /// The host's configured base URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The retry budget of this host.
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.retry_budget
    }
}

impl Retryable for UpstreamError {
    /// Whether this failure may be retried, and after how long the upstream asks: connect
    /// errors, 408, 502, 503, 504, and 429 with a `Retry-After`.
    fn retry_advice(&self) -> Option<RetryAdvice> {
        match self {
            Self::Transport {
                kind: TransportFailure::Connect,
                ..
            } => Some(RetryAdvice { after: None }),
            Self::Status(failure) => match failure.http_status.as_u16() {
                408 | 502 | 503 | 504 => Some(RetryAdvice {
                    after: failure.retry_after,
                }),
                429 => failure
                    .retry_after
                    .map(|after| RetryAdvice { after: Some(after) }),
                _ => None,
            },
            _ => None,
        }
    }
}

impl UpstreamError {
    /// Whether the Store certainly did not act on the request: it was never sent (a connect
    /// error, an open circuit), or the Store said so (429 throttled, 503 unavailable).
    pub fn certainly_not_processed(&self) -> bool {
        match self {
            Self::Transport {
                kind: TransportFailure::Connect,
                ..
            }
            | Self::CircuitOpen { .. } => true,
            Self::Status(failure) => matches!(failure.http_status.as_u16(), 429 | 503),
            Self::Transport { .. } | Self::Malformed { .. } => false,
        }
    }

    /// Whether the request was sent but its answer never came (the connection dropped, or the
    /// attempt timed out): the Store may or may not have processed it.
    pub fn answer_lost(&self) -> bool {
        matches!(
            self,
            Self::Transport {
                kind: TransportFailure::ConnectionLost | TransportFailure::Timeout,
                ..
            }
        )
    }

    /// Whether this failure counts toward opening the host's circuit: only failures of the
    /// host itself (no complete answer: connect errors, attempt timeouts, lost connections;
    /// or 502, 503, 504, 408). A 500, a 501 or any other 4xx or 5xx can be provoked by a
    /// caller's input, so counting it would let one caller open the circuit for everyone.
    fn counts_against_host(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status(failure) => {
                matches!(failure.http_status.as_u16(), 408 | 502 | 503 | 504)
            }
            Self::CircuitOpen { .. } | Self::Malformed { .. } => false,
        }
    }
}

/// The client of every Store host, cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreClient {
    http: HttpClient,
    hosts: Arc<EnumMap<Host, Arc<Base>>>,
    attempt_timeout: Duration,
    /// The facade's client secret, scrubbed out of every answer like the request's own
    /// secrets (the Store is never sent it, so it can only quote it by accident).
    client_secret: Option<Arc<SecretString>>,
}

/// A 2xx answer, not decoded yet (no `Debug`: the body may carry a key).
pub struct Reply {
    host: Arc<str>,
    http_status: u16,
    ids: UpstreamIds,
    body: Bytes,
}

impl Reply {
    /// Decodes the body with `parse`; a body it refuses is [`UpstreamError::Malformed`],
    /// described as not being `expected`.
    pub fn decode<T>(
        self,
        parse: impl FnOnce(&[u8]) -> Option<T>,
        expected: &'static str,
    ) -> Result<Answer<T>, UpstreamError> {
        match parse(&self.body) {
            Some(value) => Ok(Answer {
                value,
                ids: self.ids,
                http_status: self.http_status,
            }),
            None => Err(UpstreamError::Malformed {
                host: self.host,
                http_status: self.http_status,
                ids: Box::new(self.ids),
                expected,
            }),
        }
    }
}

impl StoreClient {
    /// A client calling the base URL of each host in `urls` through `http`, with the
    /// breakers and retry budgets of `config`, recording in `metrics`.
    pub fn new(
        http: HttpClient,
        urls: &EnumMap<Host, Url>,
        config: &ResilienceConfig,
        metrics: &Metrics,
    ) -> Self {
        Self {
            http,
            hosts: Arc::new(EnumMap::from_fn(|host| {
                Base::new(host, &urls[host], config, metrics)
            })),
            attempt_timeout: config.upstream_timeout,
            client_secret: None,
        }
    }

    /// The prepared state of `host`.
    pub fn host(&self, host: Host) -> &Base {
        &self.hosts[host]
    }

    /// Whether any upstream host's circuit is open.
    pub fn any_circuit_open(&self) -> bool {
        self.hosts.values().any(|base| base.breaker.is_open())
    }

    /// Scrubs `secret` out of every answer too (see [`redact`]).
    pub fn with_client_secret(mut self, secret: Option<SecretString>) -> Self {
        self.client_secret = secret.map(Arc::new);
        self
    }

    /// Sends `request` to `host` through its circuit breaker, in a client span named by its
    /// route, with the correlation headers of this attempt. `secrets` are the secret values
    /// the request carries besides its `Authorization` header (the token or ticket in its
    /// body, Store keys): they, the header's credential and the client secret are scrubbed
    /// from the answer's text and ids before anything of it leaves this function.
    pub async fn exchange(
        &self,
        host: Host,
        request: UpstreamRequest,
        correlation: &Correlation,
        mut secrets: Redactor<'_>,
    ) -> Result<Reply, UpstreamError> {
        let base = &self.hosts[host];
        let permit = base
            .breaker
            .admit()
            .map_err(|open| UpstreamError::CircuitOpen {
                host: base.host.clone(),
                retry_after: open.retry_after,
            })?;
        let started = Instant::now();
        let span = client_span(request.route, &base.host);
        span.record("ms_cv", correlation.ms_cv.as_str());
        let traceparent = otel::traceparent(&span);
        let traceparent = traceparent.as_deref().unwrap_or(&correlation.traceparent);
        if let Some(value) = &request.authorization {
            secrets.authorization(value);
        }
        if let Some(secret) = &self.client_secret {
            secrets.secret(secret.expose_secret());
        }
        let outcome = self
            .send(base, &request, &correlation.ms_cv, traceparent, &secrets)
            .instrument(span.clone())
            .await;
        let status = match &outcome {
            Ok(reply) => Some(reply.http_status),
            Err(UpstreamError::Status(failure)) => Some(failure.http_status.as_u16()),
            Err(UpstreamError::Malformed { http_status, .. }) => Some(*http_status),
            Err(_) => None,
        };
        base.metrics.attempt(status, started.elapsed());
        record_response(&span, status);
        permit.record(
            outcome
                .as_ref()
                .is_err_and(UpstreamError::counts_against_host),
        );
        outcome
    }

    /// The HTTP request of `request` to `base`, with this attempt's correlation headers.
    fn build(
        base: &Base,
        request: &UpstreamRequest,
        ms_cv: &str,
        traceparent: &str,
    ) -> Result<http::Request<Full<Bytes>>, http::Error> {
        let uri = if request.absolute {
            request.path.clone()
        } else {
            let mut uri = String::with_capacity(base.prefix.len() + request.path.len());
            uri.push_str(&base.prefix);
            uri.push_str(&request.path);
            uri
        };
        let mut builder = http::Request::builder()
            .method(request.route.method.clone())
            .uri(uri)
            .header(MS_CV, ms_cv)
            .header(TRACEPARENT, traceparent);
        if let Some(authorization) = &request.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        match request.json.clone() {
            Some(body) => builder
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(Full::new(body)),
            None => builder
                .header(CONTENT_LENGTH, HeaderValue::from_static("0"))
                .body(Full::new(Bytes::new())),
        }
    }

    /// Sends `request` and reads the whole answer, turning non-2xx into [`UpstreamError::Status`].
    async fn send(
        &self,
        base: &Base,
        request: &UpstreamRequest,
        ms_cv: &str,
        traceparent: &str,
        secrets: &Redactor<'_>,
    ) -> Result<Reply, UpstreamError> {
        let host = &base.host;
        let transport = |kind| UpstreamError::Transport {
            host: host.clone(),
            kind,
        };
        // A URL or header the Store cannot be sent (a queue URL it handed out with bytes no
        // URI allows) is never sent: as if the host could not be reached.
        let built = Self::build(base, request, ms_cv, traceparent)
            .map_err(|_| transport(TransportFailure::Connect))?;
        let answer = self
            .http
            .send(built, self.attempt_timeout)
            .await
            .map_err(transport)?;
        let status = answer.status;
        let mut ids = UpstreamIds::from_headers(&answer.headers);
        ids.scrub(secrets);
        let body = match answer.body {
            Ok(body) => body,
            // A non-2xx answer is mapped on its status; its body only adds detail, so one
            // that is too large or cut off is treated as empty.
            Err(_) if !status.is_success() => Bytes::new(),
            Err(BodyFailure::Transport(kind)) => return Err(transport(kind)),
            Err(BodyFailure::TooLarge) => {
                return Err(UpstreamError::Malformed {
                    host: host.clone(),
                    http_status: status.as_u16(),
                    ids: Box::new(ids.clone()),
                    expected: "an answer of at most 4 MiB",
                })
            }
        };
        if status.is_success() {
            return Ok(Reply {
                host: host.clone(),
                http_status: status.as_u16(),
                ids,
                body,
            });
        }
        Err(UpstreamError::Status(Box::new(StatusFailure {
            host: host.clone(),
            http_status: status,
            retry_after: retry_after(&answer.headers),
            ids,
            body: ErrorBody::parse_redacted(&body, secrets),
        })))
    }
}

/// The longest `Retry-After` taken from an upstream; a longer one is cut to this. Whatever
/// the upstream sends, the delay can then be added to an `Instant` or a `SystemTime`, and
/// turned into a RetryInfo, without overflow.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Reads `Retry-After` as delay-seconds or an HTTP date, as a duration from now, at most
/// [`MAX_RETRY_AFTER`]. Delay-seconds too large for a `u64` count as the maximum.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(text).ok()?;
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(retry_after: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(RETRY_AFTER, HeaderValue::from_str(retry_after).unwrap());
        map
    }

    #[test]
    fn ids_are_single_escaped_segments() {
        let encode = |s| segment(s).to_string();
        assert_eq!(encode("9NBLGGH4R2R6"), "9NBLGGH4R2R6");
        assert_eq!(encode("a/../b"), "a%2F..%2Fb");
        assert_eq!(encode("50%?#x"), "50%25%3F%23x");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after(&headers("7")), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let parsed = retry_after(&headers(&httpdate::fmt_http_date(later))).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        let past = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH);
        assert_eq!(retry_after(&headers(&past)), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("soon")), None);
        assert_eq!(retry_after(&headers("-5")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn absurd_retry_after_is_clamped_to_a_day() {
        for absurd in [
            "86401",
            "18446744073709551615",
            "99999999999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            let delay = retry_after(&headers(absurd)).unwrap();
            assert_eq!(delay, MAX_RETRY_AFTER, "{absurd}");
            // What callers of `retry_after` do with it must not overflow.
            let _ = Instant::now() + delay;
            let _ = SystemTime::now() + delay;
        }
        assert_eq!(
            retry_after(&headers("86400")),
            Some(Duration::from_secs(86400))
        );
    }

    fn failure(http_status: u16) -> UpstreamError {
        UpstreamError::Status(Box::new(StatusFailure {
            host: "store.example".into(),
            http_status: StatusCode::from_u16(http_status).unwrap(),
            ids: UpstreamIds::default(),
            retry_after: None,
            body: ErrorBody::parse(b""),
        }))
    }

    #[test]
    fn only_failures_of_the_host_count_against_its_circuit() {
        for status in [408, 502, 503, 504] {
            assert!(failure(status).counts_against_host(), "{status}");
        }
        for status in [400, 401, 403, 404, 409, 412, 429, 500, 501, 505, 599] {
            assert!(!failure(status).counts_against_host(), "{status}");
        }
        for kind in [
            TransportFailure::Connect,
            TransportFailure::Timeout,
            TransportFailure::ConnectionLost,
        ] {
            let error = UpstreamError::Transport {
                host: "store.example".into(),
                kind,
            };
            assert!(error.counts_against_host(), "{kind:?}");
        }
    }
}

#[cfg(test)]
mod proptests {
    //! [`crate::fuzzing::retry_after`]'s properties (shared with its fuzz target) over
    //! arbitrary header bytes, delay-seconds of any length, and HTTP dates in the three
    //! formats for any second up to year 9999, as sent and with one character changed.
    use std::time::UNIX_EPOCH;

    use proptest::prelude::*;

    use crate::fuzzing;

    /// The latest second an HTTP date can name: 9999-12-31T23:59:59Z.
    const LAST: u64 = 253_402_300_799;
    const WEEKDAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];

    fn http_date() -> impl Strategy<Value = String> {
        let second = prop_oneof![0..=LAST, Just(LAST), Just(0)];
        (second, 0..3).prop_map(|(second, format)| {
            let date = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(second));
            // IMF-fixdate as sent; the obsolete RFC 850 and asctime forms from its parts.
            let parts: Vec<&str> = date.split([' ', ',']).filter(|p| !p.is_empty()).collect();
            match (format, parts.as_slice()) {
                (1, [day, dd, mon, year, time, _]) => {
                    let day = WEEKDAYS.iter().find(|d| d.starts_with(day)).unwrap_or(day);
                    format!("{day}, {dd}-{mon}-{} {time} GMT", &year[year.len() - 2..])
                }
                (2, [day, dd, mon, year, time, _]) => format!("{day} {mon} {dd:>2} {time} {year}"),
                _ => date,
            }
        })
    }

    fn header() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ \t]?[0-9]{1,40}[ \t]?",
            "[-+]?[0-9]{0,6}(\\.[0-9]{0,3})?",
            http_date(),
            fuzzing::one_char_off(http_date(), &['0', '9', ' ', ',', ':', '-', 'x']),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_header_bytes_are_read_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            fuzzing::retry_after(&bytes);
        }

        #[test]
        fn any_delay_or_date_is_at_most_a_day(value in header()) {
            fuzzing::retry_after(value.as_bytes());
        }
    }
}
