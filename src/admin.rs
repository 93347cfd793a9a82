//! The admin HTTP server (`--admin-addr`): `/metrics` in Prometheus text, `/healthz` (the
//! process is alive) and `/readyz` (serving, and the credentials accepted by Entra at least
//! once). Plain HTTP/1.1, apart from the gRPC port, with a header-read timeout and a cap on
//! open connections, so that idle or slow clients cannot pile up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};

use crate::auth::TokenProvider;
use crate::telemetry::metrics::Metrics;

/// How long a client may take to send a request's headers, counted from the connection's
/// start or the end of the previous answer; then the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections open at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// How long a readiness verdict is reused, so that probes do not hammer Entra.
const READINESS_TTL: Duration = Duration::from_secs(5);
/// Longest a readiness check waits for a token.
const READINESS_TOKEN_TIMEOUT: Duration = Duration::from_secs(5);
/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin endpoints read.
pub struct AdminState {
    metrics: Arc<Metrics>,
    tokens: TokenProvider,
    serving: AtomicBool,
    verdict: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl AdminState {
    /// The state of a serving facade.
    pub fn new(metrics: Arc<Metrics>, tokens: TokenProvider) -> Self {
        Self {
            metrics,
            tokens,
            serving: AtomicBool::new(true),
            verdict: Mutex::new(None),
        }
    }

    /// Marks the facade as draining: `/readyz` answers 503 from now on.
    pub fn stop_serving(&self) {
        self.serving.store(false, Ordering::Release);
    }

    /// Whether the facade can serve calls: not draining and, with credentials configured,
    /// the credentials accepted by Entra once since start. Until then each verdict asks for a
    /// token (kept for a few seconds); after that, an Entra outage or a later rejection does
    /// not make a ready instance unready: its callers get the error, and taking every
    /// instance out of the load balancer at once would help no one.
    async fn readiness(&self) -> Result<(), String> {
        if !self.serving.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        if !self.tokens.is_configured() || self.tokens.credentials_accepted() {
            return Ok(());
        }
        let mut verdict = self.verdict.lock().await;
        if let Some((at, result)) = verdict.as_ref() {
            if at.elapsed() < READINESS_TTL {
                return result.clone();
            }
        }
        let result =
            match tokio::time::timeout(READINESS_TOKEN_TIMEOUT, self.tokens.token(None)).await {
                Ok(Ok(_)) => Ok(()),
                // Token errors never carry a secret (see auth::TokenError).
                Ok(Err(error)) => Err(format!("no Entra token: {error}")),
                Err(_) => Err("no Entra token: the token endpoint did not answer in time".into()),
            };
        *verdict = Some((Instant::now(), result.clone()));
        result
    }
}

/// The admin routes over `state`.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the admin routes on `listener` until the task is dropped or aborted. Each
/// connection is HTTP/1.1 with [`HEADER_READ_TIMEOUT`]; at most [`MAX_CONNECTIONS`] are
/// served at once.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) -> std::io::Result<()> {
    let service = TowerToHyperService::new(router(state));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::debug!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let connection = http.serve_connection(TokioIo::new(stream), service.clone());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "admin connection ended");
            }
            drop(slot);
        });
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> (StatusCode, String) {
    match state.readiness().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}
