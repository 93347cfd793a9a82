//! Assembles the gRPC server: every registered Store service, health, reflection and the
//! size-limit remapping, served until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::admin::AdminState;
use crate::api::validation::Tenants;
use crate::api::{Arrival, Backends, CallDeadlines, CallLimiter};
use crate::auth::{CredentialSource, TokenProvider};
use crate::config::Settings;
use crate::error::ApiError;
use crate::ops::{self, SERVICE_NAMES};
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::resilience::retry::RetryPolicy;
use crate::telemetry::metrics::Metrics;
use crate::tls::{Incoming, TlsError, TlsReloader};
use crate::upstream::{HttpClient, StoreClient};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not be built from the embedded descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS files do not make a configuration.
    #[error("--tls-cert/--tls-key/--tls-client-ca: {0}")]
    Tls(#[from] TlsError),
}

/// Builds the backends of `settings`: one HTTP client shared by the Store and token clients,
/// and one metrics registry for the instance.
pub fn backends(settings: &Settings) -> Backends {
    let resilience = &settings.resilience;
    let http = HttpClient::new(CONNECT_TIMEOUT, resilience.upstream_max_idle_per_host);
    let metrics = Arc::new(Metrics::new());
    let limiter = Arc::new(CallLimiter::new(resilience.max_concurrent_calls));
    let watched = limiter.clone();
    metrics.sample_gauge("msstore_calls_in_flight", Vec::new(), move || {
        watched.in_flight() as f64
    });
    Backends {
        store: StoreClient::new(http.clone(), &settings.upstreams, resilience, &metrics)
            .with_client_secret(client_secret(settings)),
        tokens: TokenProvider::new(
            http,
            &settings.authority_host,
            settings.credentials.clone(),
            resilience.upstream_timeout,
            metrics.clone(),
        ),
        retry: Arc::new(RetryPolicy::new(resilience)),
        limiter,
        deadlines: CallDeadlines::new(resilience),
        metrics,
        tenants: Arc::new(Tenants::new(
            settings.credentials.as_ref().map(|c| c.tenant_id.clone()),
            settings.allowed_tenants.clone(),
        )),
        refund_sas: Arc::default(),
    }
}

/// The configured client secret, if the credential is one.
fn client_secret(settings: &Settings) -> Option<secrecy::SecretString> {
    match &settings.credentials.as_ref()?.source {
        CredentialSource::ClientSecret(secret) => Some(secret.clone()),
        CredentialSource::FederatedTokenFile(_) => None,
    }
}

/// How often recorded histogram samples are folded into buckets between scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// How long establishing an upstream connection (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves gRPC on `listener`, and the admin endpoints (`/metrics`, `/healthz`, `/readyz`) on
/// `admin` when given, until `shutdown` completes; then health turns NOT_SERVING (and
/// `/readyz` 503) at once, calls are still accepted for `settings.drain_delay` (load
/// balancers take a while to notice), then new connections are refused and calls in flight get
/// `settings.shutdown_grace` to finish (long-lived streams such as health `Watch` would
/// otherwise hold the process forever).
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let backends = backends(&settings);
    let tls = match &settings.tls {
        Some(files) => Some(Arc::new(TlsReloader::new(
            files.clone(),
            backends.metrics.tls(),
        )?)),
        None => None,
    };
    let limit = settings.max_request_bytes;
    // Registers every method's metric series before the admin server can be scraped.
    let store_services = ops::routes(&backends, limit);
    let admin_state = Arc::new(AdminState::new(
        backends.metrics.clone(),
        backends.tokens.clone(),
    ));
    let mut background = vec![
        tokio::spawn(upkeep(backends.metrics.clone())),
        tokio::spawn(serve_admin(admin, admin_state.clone())),
    ];
    background.extend(tls.clone().map(|tls| tokio::spawn(tls.watch())));
    let _background = BackgroundTasks(background);

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in SERVICE_NAMES.iter().copied() {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let (grace, drain_delay) = (settings.shutdown_grace, settings.drain_delay);
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        admin_state.stop_serving();
        for name in [""].iter().chain(SERVICE_NAMES).copied() {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        if !drain_delay.is_zero() {
            tracing::info!(
                ?drain_delay,
                "shutting down: health NOT_SERVING, still accepting calls"
            );
            tokio::time::sleep(drain_delay).await;
        }
        tracing::info!(
            ?grace,
            "shutting down: health NOT_SERVING, finishing calls in flight"
        );
        let _ = draining_tx.send(());
    };
    let resilience = &settings.resilience;
    let server = Server::builder()
        .max_concurrent_streams(resilience.http2_max_concurrent_streams)
        .http2_keepalive_interval(Some(resilience.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(resilience.http2_keepalive_timeout))
        .http2_max_header_list_size(resilience.max_header_list_bytes)
        .layer(tower::util::MapRequestLayer::new(
            |mut request: http::Request<tonic::body::Body>| {
                request.extensions_mut().insert(Arrival(Instant::now()));
                request
            },
        ))
        .layer(tower::util::MapResponseLayer::new(
            move |mut response: http::Response<tonic::body::Body>| {
                remap_size_limit(response.headers_mut(), limit);
                response
            },
        ))
        .add_routes(store_services)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(Incoming::new(listener, tls), shutdown);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return Ok(result?),
        Ok(()) = draining_rx => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "shutdown grace period over: closing the calls still open"
            );
            Ok(())
        }
    }
}

/// Tasks that live as long as the server: aborted when it returns.
struct BackgroundTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn upkeep(metrics: Arc<Metrics>) {
    let mut every = tokio::time::interval(METRICS_UPKEEP);
    loop {
        every.tick().await;
        metrics.run_upkeep();
    }
}

async fn serve_admin(listener: Option<TcpListener>, state: Arc<AdminState>) {
    let Some(listener) = listener else { return };
    if let Err(error) = crate::admin::serve(listener, state).await {
        tracing::error!(%error, "admin server failed");
    }
}

/// tonic answers an over-limit request message with OUT_OF_RANGE; the contract says
/// RESOURCE_EXHAUSTED with ErrorInfo. No handler of ours answers OUT_OF_RANGE, so every
/// trailers-only OUT_OF_RANGE is that limit.
fn remap_size_limit(headers: &mut HeaderMap, limit: usize) {
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let out_of_range = headers
        .get(GRPC_STATUS)
        .is_some_and(|status| status.as_bytes() == b"11");
    if !out_of_range {
        return;
    }
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    let status = tonic::Status::from(ApiError::RequestTooLarge { limit });
    if let Err(status) = status.add_header(headers) {
        tracing::warn!(error = %status, "cannot rewrite the size-limit status");
    }
}
