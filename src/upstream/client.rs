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
//! "Performance"). reqwest stays for the emulator's own tooling and the tests.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, USER_AGENT as USER_AGENT_HEADER};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
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
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
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
            .expect("the fixed TLS configuration is valid")
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
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
        request
            .headers_mut()
            .insert(USER_AGENT_HEADER, self.user_agent.clone());
        let deadline = tokio::time::Instant::now() + timeout;
        let response = tokio::time::timeout_at(deadline, self.inner.request(request))
            .await
            .map_err(|_| TransportFailure::Timeout)?
            .map_err(|e| {
                if e.is_connect() {
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
