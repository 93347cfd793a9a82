//! REST clients of the Store APIs: one shared, pooled HTTP client; one file per API.
//! Nothing here knows about gRPC: answers and failures are plain typed values.

mod business_store;
mod error_body;
mod keys;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use tracing::Instrument;

pub use business_store::{LicenseIds, OfflineLicense, ProductKey};
pub use error_body::{clean as clean_text, ErrorBody, DOCUMENTED_INNER_CODES};
pub use keys::KeyHost;

use crate::config::Settings;
use crate::resilience::breaker::CircuitBreaker;
use crate::resilience::retry::RetryAdvice;
use crate::resilience::ResilienceConfig;
use crate::telemetry::metrics::{Metrics, Upstream, UpstreamMetrics};
use crate::telemetry::otel;

/// Largest upstream answer body read; a larger one is treated as malformed.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The facade's `User-Agent` on every upstream request.
pub const USER_AGENT: &str = concat!("msstore-facade/", env!("CARGO_PKG_VERSION"));

/// The upstream correlation headers handed back to callers, in metadata order.
pub const ID_HEADERS: [&str; 4] = ["ms-correlationid", "ms-requestid", "ms-cv", "ms-serverid"];

/// Builds the one HTTP client the process shares (rustls, HTTP/1.1 and HTTP/2, pooled).
pub fn http_client(connect_timeout: Duration, max_idle_per_host: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle_per_host)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client's fixed configuration is valid")
}

/// What a client span names an upstream request by: never the URL itself, which carries ids.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The span name, `METHOD template`.
    pub name: &'static str,
    /// The HTTP method.
    pub method: &'static str,
    /// The path with its variable parts as `{placeholders}`.
    pub template: &'static str,
}

/// A client span for one attempt of `route` to `host` (disabled unless traces are exported).
pub fn client_span(route: Route, host: &str) -> tracing::Span {
    if !otel::active() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "upstream",
        otel.name = route.name,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = route.method,
        url.template = route.template,
        server.address = host,
        http.response.status_code = tracing::field::Empty,
        ms_cv = tracing::field::Empty,
    )
}

/// Records the answer's HTTP status (or its absence) on a client span.
pub fn record_response(span: &tracing::Span, status: Option<u16>) {
    if span.is_disabled() {
        return;
    }
    match status {
        Some(status) => {
            span.record("http.response.status_code", i64::from(status));
            if status >= 400 {
                span.record("otel.status_code", "ERROR");
            }
        }
        None => {
            span.record("otel.status_code", "ERROR");
        }
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
    fn from_headers(headers: &HeaderMap) -> Self {
        Self(ID_HEADERS.map(|name| headers.get(name).cloned()))
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
        ids: UpstreamIds,
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

/// An upstream base URL, prepared once.
#[derive(Debug, Clone)]
struct Base {
    prefix: String,
    host: Arc<str>,
    breaker: Arc<CircuitBreaker>,
    metrics: Arc<UpstreamMetrics>,
}

impl Base {
    fn new(url: &Url, config: &ResilienceConfig, upstream: Upstream, metrics: &Metrics) -> Self {
        let host = url.host_str().unwrap_or_default();
        let breaker = Arc::new(CircuitBreaker::new(
            host,
            config.circuit_failures,
            config.circuit_open_for,
        ));
        let watched = breaker.clone();
        metrics.sample_gauge(
            "msstore_circuit_state",
            vec![
                metrics::Label::from_static_parts("upstream", upstream.label()),
                metrics::Label::new("host", host.to_owned()),
            ],
            move || f64::from(watched.state_code()),
        );
        Self {
            prefix: url.as_str().trim_end_matches('/').to_owned(),
            host: host.into(),
            breaker,
            metrics: Arc::new(metrics.upstream(upstream, host)),
        }
    }
}

impl UpstreamError {
    /// Whether this failure may be retried, and after how long the upstream asks: connect
    /// errors, 408, 502, 503, 504, and 429 with a `Retry-After`.
    pub fn retry_advice(&self) -> Option<RetryAdvice> {
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

    /// Whether this failure counts toward opening the host's circuit: the host, not the
    /// request, is at fault (no answer, 408 or 5xx).
    fn counts_against_host(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status(failure) => {
                failure.http_status.is_server_error() || failure.http_status.as_u16() == 408
            }
            Self::CircuitOpen { .. } | Self::Malformed { .. } => false,
        }
    }
}

/// The client of both Store APIs, cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreClient {
    http: reqwest::Client,
    business: Base,
    collections: Base,
    purchase: Base,
    attempt_timeout: Duration,
}

impl StoreClient {
    /// A client calling the base URLs of `settings` through `http`, recording in `metrics`.
    pub fn new(http: reqwest::Client, settings: &Settings, metrics: &Metrics) -> Self {
        let base = |url, upstream| Base::new(url, &settings.resilience, upstream, metrics);
        Self {
            http,
            business: base(&settings.business_store_url, Upstream::BusinessStore),
            collections: base(&settings.collections_url, Upstream::Collections),
            purchase: base(&settings.purchase_url, Upstream::Purchase),
            attempt_timeout: settings.resilience.upstream_timeout,
        }
    }

    /// Whether any upstream host's circuit is open.
    pub fn any_circuit_open(&self) -> bool {
        [&self.business, &self.collections, &self.purchase]
            .iter()
            .any(|base| base.breaker.is_open())
    }

    /// Sends `request` to `base` through its circuit breaker.
    async fn exchange(
        &self,
        base: &Base,
        route: Route,
        request: reqwest::RequestBuilder,
        correlation: &Correlation,
    ) -> Result<(StatusCode, UpstreamIds, Bytes), UpstreamError> {
        let permit = base
            .breaker
            .admit()
            .map_err(|open| UpstreamError::CircuitOpen {
                host: base.host.clone(),
                retry_after: open.retry_after,
            })?;
        let started = Instant::now();
        let span = client_span(route, &base.host);
        span.record("ms_cv", correlation.ms_cv.as_str());
        let traceparent = otel::traceparent(&span);
        let traceparent = traceparent.as_deref().unwrap_or(&correlation.traceparent);
        let outcome = self
            .send(&base.host, request, &correlation.ms_cv, traceparent)
            .instrument(span.clone())
            .await;
        let status = match &outcome {
            Ok((status, ..)) => Some(status.as_u16()),
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

    /// Sends `request` and reads the whole answer, turning non-2xx into [`UpstreamError::Status`].
    async fn send(
        &self,
        host: &Arc<str>,
        request: reqwest::RequestBuilder,
        ms_cv: &str,
        traceparent: &str,
    ) -> Result<(StatusCode, UpstreamIds, Bytes), UpstreamError> {
        let transport = |kind| UpstreamError::Transport {
            host: host.clone(),
            kind,
        };
        let mut response = request
            .header(HeaderName::from_static("ms-cv"), ms_cv)
            .header(HeaderName::from_static("traceparent"), traceparent)
            .timeout(self.attempt_timeout)
            .send()
            .await
            .map_err(|e| transport(classify(&e)))?;
        let status = response.status();
        let ids = UpstreamIds::from_headers(response.headers());
        let body = match read_body(&mut response).await {
            Ok(body) => body,
            // A non-2xx answer is mapped on its status; its body only adds detail, so one
            // that is too large or cut off is treated as empty.
            Err(_) if !status.is_success() => Bytes::new(),
            Err(BodyFailure::Transport(kind)) => return Err(transport(kind)),
            Err(BodyFailure::TooLarge) => {
                return Err(UpstreamError::Malformed {
                    host: host.clone(),
                    http_status: status.as_u16(),
                    ids: ids.clone(),
                    expected: "an answer of at most 4 MiB",
                })
            }
        };
        if status.is_success() {
            return Ok((status, ids, body));
        }
        Err(UpstreamError::Status(Box::new(StatusFailure {
            host: host.clone(),
            http_status: status,
            retry_after: retry_after(response.headers()),
            ids,
            body: ErrorBody::parse(&body),
        })))
    }
}

enum BodyFailure {
    Transport(TransportFailure),
    TooLarge,
}

async fn read_body(response: &mut reqwest::Response) -> Result<Bytes, BodyFailure> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_BODY_BYTES as u64)
    {
        return Err(BodyFailure::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyFailure::Transport(classify(&e)))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(BodyFailure::TooLarge);
        }
        if body.is_empty() && response.content_length().is_none() {
            body.reserve(chunk.len());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

fn classify(error: &reqwest::Error) -> TransportFailure {
    if error.is_timeout() {
        TransportFailure::Timeout
    } else if error.is_connect() {
        TransportFailure::Connect
    } else {
        TransportFailure::ConnectionLost
    }
}

/// Reads `Retry-After` as delay-seconds or an HTTP date, as a duration from now.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
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
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after(&headers("7")), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let parsed = retry_after(&headers(&httpdate::fmt_http_date(later))).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        let past = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH);
        assert_eq!(retry_after(&headers(&past)), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("soon")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
