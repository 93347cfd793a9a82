//! The one HTTP client of the process: hyper's pooled client over rustls (HTTP/1.1, and
//! HTTP/2 where the host offers it by ALPN), shared by the Store calls and the token
//! requests. Each exchange sends one request and reads its whole answer, bounded in time
//! and size; failures are plain [`TransportFailure`]s.
//!
//! Why not reqwest here: per Store call, reqwest 0.13 parsed the URL three times (the
//! request, the `http::Uri` conversion, and its redirect layer, which parses the URI's text
//! again even with redirects off), cloned the header map, and boxed two timers. The same
//! hyper connection pool without those layers does the same work with 22 % fewer user-space
//! instructions per GetOfflineLicense call: 193,700 -> 151,200 (callgrind, README
//! "Performance"). What reqwest did besides is kept: the connect timeout covers DNS, TCP and
//! TLS; TCP keepalive; `Accept: */*`; and an HTTP/2 stream the server refused unprocessed
//! (`REFUSED_STREAM`, or `GOAWAY` with `NO_ERROR`) counts as never sent, so it is retried.
//! Not kept: `HTTP(S)_PROXY` (README, "Configuration").

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, USER_AGENT as USER_AGENT_HEADER};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_platform_verifier::BuilderVerifierExt;

use super::{TransportFailure, USER_AGENT};

/// Largest answer body read; a larger one is [`BodyFailure::TooLarge`].
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The shared, pooled client; cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<TimedConnect<HttpsConnector<HttpConnector>>, Full<Bytes>>,
    user_agent: HeaderValue,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

/// An answer: its status and headers, and its body or why it could not be read.
pub struct HttpAnswer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The answer's headers.
    pub headers: HeaderMap,
    /// The whole body, or why it is not here.
    pub body: Result<Bytes, BodyFailure>,
}

/// Why an answer's body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// The connection broke or the time ran out while reading it.
    Transport(TransportFailure),
    /// It was larger than [`MAX_BODY_BYTES`].
    TooLarge,
}

impl HttpClient {
    /// A client whose connections are made within `connect_timeout`, keeping at most
    /// `max_idle_per_host` idle connections per host for 90 s. Server certificates are
    /// checked by the platform's verifier (the system's roots), as reqwest does.
    pub fn new(connect_timeout: Duration, max_idle_per_host: usize) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.with_platform_verifier())
            .expect("the system's trusted root certificates can be loaded")
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));
        #[cfg(target_os = "linux")]
        http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
        let connector = TimedConnect {
            inner: hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(http),
            timeout: connect_timeout,
        };
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Self {
            inner,
            user_agent: HeaderValue::from_static(USER_AGENT),
        }
    }

    /// Sends `request` with the facade's `User-Agent` and reads its whole answer, all
    /// within `timeout`. `Err` means no answer arrived; an answer whose body could not be
    /// read is `Ok` with the body's failure, so the caller can still use its status.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<HttpAnswer, TransportFailure> {
        let headers = request.headers_mut();
        headers.insert(USER_AGENT_HEADER, self.user_agent.clone());
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        let deadline = tokio::time::Instant::now() + timeout;
        let response = tokio::time::timeout_at(deadline, self.inner.request(request))
            .await
            .map_err(|_| TransportFailure::Timeout)?
            .map_err(|e| {
                if e.is_connect() || refused_unprocessed(&e) {
                    TransportFailure::Connect
                } else {
                    TransportFailure::ConnectionLost
                }
            })?;
        let (parts, body) = response.into_parts();
        let too_large = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|len| len > MAX_BODY_BYTES as u64);
        let body = if too_large {
            Err(BodyFailure::TooLarge)
        } else {
            match tokio::time::timeout_at(deadline, Limited::new(body, MAX_BODY_BYTES).collect())
                .await
            {
                Err(_) => Err(BodyFailure::Transport(TransportFailure::Timeout)),
                Ok(Ok(collected)) => Ok(collected.to_bytes()),
                Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyFailure::TooLarge),
                Ok(Err(_)) => Err(BodyFailure::Transport(TransportFailure::ConnectionLost)),
            }
        };
        Ok(HttpAnswer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// Whether an HTTP/2 server said it did not process the request (RFC 9113, section 8.7): it
/// refused the stream, or went away gracefully before reaching it.
fn refused_unprocessed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return unprocessed(h2.is_remote(), h2.is_reset(), h2.is_go_away(), h2.reason());
        }
        cause = error.source();
    }
    false
}

/// The rule of [`refused_unprocessed`] on an HTTP/2 error's facts (h2 makes no remote error
/// outside a connection, so the rule is tested on its own).
fn unprocessed(remote: bool, reset: bool, go_away: bool, reason: Option<h2::Reason>) -> bool {
    remote
        && (reset && reason == Some(h2::Reason::REFUSED_STREAM)
            || go_away && reason == Some(h2::Reason::NO_ERROR))
}

/// A connector whose whole connection (DNS, TCP and the TLS handshake) must be made within
/// `timeout`; hyper's own connect timeout covers TCP only.
#[derive(Clone)]
struct TimedConnect<C> {
    inner: C,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower::Service<Uri> for TimedConnect<C>
where
    C: tower::Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (connecting, timeout) = (self.inner.call(uri), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::{Service, ServiceExt};

    use super::*;

    #[tokio::test]
    async fn a_connection_not_made_in_time_fails_as_timed_out() {
        let stalled = tower::service_fn(|_: Uri| std::future::pending::<Result<(), BoxError>>());
        let mut connect = TimedConnect {
            inner: stalled,
            timeout: Duration::from_millis(20),
        };
        let uri = Uri::from_static("https://store.example/");
        let error = connect.ready().await.unwrap().call(uri).await.unwrap_err();
        let io = error
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);

        let quick = tower::service_fn(|_: Uri| async { Ok::<_, BoxError>(7) });
        let mut connect = TimedConnect {
            inner: quick,
            timeout: Duration::from_millis(20),
        };
        let uri = Uri::from_static("https://store.example/");
        assert_eq!(connect.ready().await.unwrap().call(uri).await.unwrap(), 7);
    }

    #[test]
    fn only_a_servers_refusal_counts_as_unprocessed() {
        use h2::Reason;
        // (remote, reset, go_away, reason) -> unprocessed
        let cases = [
            ((true, true, false, Some(Reason::REFUSED_STREAM)), true),
            ((true, false, true, Some(Reason::NO_ERROR)), true),
            ((false, true, false, Some(Reason::REFUSED_STREAM)), false),
            ((false, false, true, Some(Reason::NO_ERROR)), false),
            ((true, true, false, Some(Reason::CANCEL)), false),
            ((true, true, false, Some(Reason::NO_ERROR)), false),
            ((true, false, true, Some(Reason::INTERNAL_ERROR)), false),
            ((true, false, true, Some(Reason::REFUSED_STREAM)), false),
            ((true, false, false, None), false),
        ];
        for ((remote, reset, go_away, reason), expected) in cases {
            let case = format!("remote {remote}, reset {reset}, go_away {go_away}, {reason:?}");
            assert_eq!(
                unprocessed(remote, reset, go_away, reason),
                expected,
                "{case}"
            );
        }
        // Errors that are not the server's word: a library reset, and no h2 error at all.
        let local = h2::Error::from(Reason::REFUSED_STREAM);
        assert!(!refused_unprocessed(&local), "not said by the server");
        let other = std::io::Error::other("reset by peer");
        assert!(!refused_unprocessed(&other));
    }
}
