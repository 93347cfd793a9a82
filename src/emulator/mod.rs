//! The sandbox emulator: a local imitation of the upstreams the facade calls, faithful to
//! what Microsoft documents (`shared/docs/upstream-apis.md`), so that the facade, its tests
//! and its users can run with no Entra tenant and no Store account. It is NOT Microsoft: its
//! tokens and keys are JWT-shaped but carry no real signature, and its licenses are made up.
//!
//! One HTTP/1.1 listener serves every upstream under its own path prefix:
//!
//! | prefix | stands for |
//! |---|---|
//! | `/login` | the Entra authority: `POST /login/{tenant}/oauth2/v2.0/token` |
//! | `/bspmts` | Store for Business: `POST /bspmts/V1/Products/{p}/{s}/OfflineLicense/{c}` |
//! | `/collections` | `POST /collections/v6.0/b2b/keys/renew`, `POST /collections/v9.0/collections/publisherQuery`, `POST /collections/v8.0/collections/consume` |
//! | `/purchase` | `POST /purchase/v6.0/b2b/keys/renew`, `POST /purchase/v7.0/purchases/grant` (or `v6.0`), `POST /purchase/v8.0/b2b/recurrences/query`, `POST /purchase/v8.0/b2b/recurrences/{recurrenceId}/change`, `POST /purchase/v8.0/b2b/orders/query`, `GET /purchase/v8.0/b2b/clawback/sastoken` ([`sas`]) |
//! | `/queue` | the Azure Storage queues of refund events ([`queue`]): `GET /queue/{queue}/messages` (get, or peek with `peekonly=true`), `DELETE /queue/{queue}/messages/{messageId}` |
//! | `/emulator` | the emulator's own control surface, no authentication ([`refunds`]): `POST /emulator/refunds`, `POST /emulator/refund-queue/rotate-key`, `POST /emulator/refund-queue/messages`, `POST /emulator/refund-queue/faults` |
//!
//! The sandbox application ([`SANDBOX_CLIENT_ID`], [`SANDBOX_CLIENT_SECRET`]) is the only
//! registered client; any tenant is accepted. [`magic`] ids make it fail on purpose. Every
//! sandbox user owns the [`catalog`] and has its subscriptions and seed orders; consumable
//! balances, granted products, recurrence changes, refunds, the refund queues and the rate
//! limit's counts live in the emulator's memory, from start to stop.

mod b2b;
mod business_store;
pub mod catalog;
mod cli;
mod clock;
mod collections;
mod connection;
mod consume;
mod entra;
mod fgrl;
mod grant;
mod jwt;
mod keys;
pub mod magic;
mod orders;
mod queue;
mod recurrences;
mod refunds;
mod sas;
mod store_answer;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;

pub use cli::{EmulatorArgs, SandboxKeyArgs, SandboxKeyType};
pub use collections::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_PRODUCT_SKU_IDS};
pub use fgrl::{RATE_LIMIT_OPERATIONS, RATE_LIMIT_WINDOW_SECONDS};
pub use keys::{StoreKeySpec, KEY_LIFETIME, SANDBOX_USER_ID};
pub use magic::Magic;
pub use orders::{ORDERS_PAGE_SIZE, SEED_ORDERS};
pub use recurrences::DEFAULT_RECURRENCE_PAGE_SIZE;

use crate::config::SandboxUpstreams;
use crate::upstream::Host;
use connection::{ConnectionControl, ResettableListener};

/// The tenant of the sandbox (any tenant is accepted; this one is the default).
pub const SANDBOX_TENANT: &str = "sandbox.onmicrosoft.com";
/// The one application the emulator's token endpoint knows.
pub const SANDBOX_CLIENT_ID: &str = "5a4db0c0-c11e-4e47-8000-000000000001";
/// The sandbox application's client secret. Published on purpose: it opens nothing but the
/// emulator.
pub const SANDBOX_CLIENT_SECRET: &str = "msstore-facade-sandbox-secret";

/// Where `msstore-facade emulator` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8480";
/// The base URL of an emulator on [`DEFAULT_LISTEN`].
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:8480";

/// Path prefix of the Entra authority.
pub const LOGIN_PREFIX: &str = "/login";
/// Path prefix of the Store for Business.
pub const BUSINESS_STORE_PREFIX: &str = "/bspmts";
/// Path prefix of the collections host.
pub const COLLECTIONS_PREFIX: &str = "/collections";
/// Path prefix of the purchase host.
pub const PURCHASE_PREFIX: &str = "/purchase";
/// Path prefix of the refund event queues (the Azure Storage queue service): what
/// `--refund-queue-base-url` is set to, under the emulator's base URL.
pub const REFUND_QUEUE_PREFIX: &str = "/queue";
/// Path prefix of the emulator's own control surface (not a Microsoft endpoint).
pub const ADMIN_PREFIX: &str = "/emulator";

/// The path prefix under which the emulator serves `host`.
pub fn host_prefix(host: Host) -> &'static str {
    match host {
        Host::BusinessStore => BUSINESS_STORE_PREFIX,
        Host::Collections => COLLECTIONS_PREFIX,
        Host::Purchase => PURCHASE_PREFIX,
        Host::RefundQueue => REFUND_QUEUE_PREFIX,
    }
}

/// How long [`RunningEmulator::stop`] lets answers in flight (a slow magic id) finish.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Where an emulator serves each upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    addr: SocketAddr,
}

impl Endpoints {
    /// The address the emulator listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` (an unspecified listen address is written as loopback).
    pub fn base_url(&self) -> Url {
        let ip = match self.addr.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        let text = format!("http://{}", SocketAddr::new(ip, self.addr.port()));
        Url::parse(&text).expect("an IP address and port make a valid URL")
    }

    fn under(&self, prefix: &str) -> Url {
        self.base_url()
            .join(prefix)
            .expect("a fixed path prefix joins onto a base URL")
    }

    /// The base URL of `host` (what `--business-store-url` and the like would be set to).
    pub fn host_url(&self, host: Host) -> Url {
        self.under(host_prefix(host))
    }

    /// The Entra authority (`AZURE_AUTHORITY_HOST`).
    pub fn authority_host(&self) -> Url {
        self.under(LOGIN_PREFIX)
    }

    /// Everything a facade needs to use this emulator: URLs and sandbox credentials.
    pub fn sandbox_upstreams(&self) -> SandboxUpstreams {
        SandboxUpstreams {
            upstreams: enum_map::EnumMap::from_fn(|host| self.host_url(host)),
            authority_host: self.authority_host(),
            tenant_id: SANDBOX_TENANT.to_owned(),
            client_id: SANDBOX_CLIENT_ID.to_owned(),
            client_secret: SANDBOX_CLIENT_SECRET.into(),
        }
    }
}

/// A bound emulator, not serving yet.
#[derive(Debug)]
pub struct Emulator {
    listener: TcpListener,
    endpoints: Endpoints,
}

/// What every handler shares.
#[derive(Debug, Clone)]
struct EmulatorState {
    /// The emulator's base URL: put into renewed keys' `refreshUri` and the refund queue's
    /// SAS URIs.
    refresh_base: Arc<Url>,
    /// Consumable balances and committed consumes.
    ledger: Arc<consume::Ledger>,
    /// The Store's per-user rate limit on the collections and purchase operations.
    rate_limiter: Arc<fgrl::RateLimiter>,
    /// The orders of granted free products.
    grants: Arc<grant::GrantBook>,
    /// Changed recurrences.
    recurrences: Arc<recurrences::RecurrenceBook>,
    /// Order line items that refunds changed.
    order_changes: Arc<orders::OrderChanges>,
    /// The refund event queues, their SAS key and their faults.
    refund_queue: Arc<queue::RefundQueue>,
}

impl Emulator {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let endpoints = Endpoints {
            addr: listener.local_addr()?,
        };
        Ok(Self {
            listener,
            endpoints,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoints.addr
    }

    /// Its URLs.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints
    }

    /// Serves until `shutdown` completes, then lets open connections finish.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let state = EmulatorState {
            refresh_base: Arc::new(self.endpoints.base_url()),
            ledger: Arc::default(),
            rate_limiter: Arc::default(),
            grants: Arc::default(),
            recurrences: Arc::default(),
            order_changes: Arc::default(),
            refund_queue: Arc::default(),
        };
        let app = router(state).into_make_service_with_connect_info::<ConnectionControl>();
        axum::serve(ResettableListener(self.listener), app)
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Serves in a background task until [`RunningEmulator::stop`] (or until dropped).
    pub fn spawn(self) -> RunningEmulator {
        let endpoints = self.endpoints;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(async {
            let _ = stopped.await;
        }));
        RunningEmulator {
            endpoints,
            stop: Some(stop),
            task,
        }
    }
}

/// An emulator serving in a background task; dropping it stops it abruptly.
#[derive(Debug)]
pub struct RunningEmulator {
    endpoints: Endpoints,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl RunningEmulator {
    /// Its URLs.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints
    }

    /// Stops accepting, lets answers in flight finish for up to two seconds, then closes
    /// whatever is left.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(STOP_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every emulated endpoint: each file of the emulator declares its own routes.
fn router(state: EmulatorState) -> Router {
    Router::new()
        .route("/", get(about))
        .merge(entra::routes())
        .merge(business_store::routes())
        .merge(keys::routes())
        .merge(collections::routes())
        .merge(consume::routes())
        .merge(grant::routes())
        .merge(recurrences::routes())
        .merge(orders::routes())
        .merge(sas::routes())
        .merge(queue::routes())
        .merge(refunds::routes())
        .layer(middleware::from_fn(log_exchange))
        .with_state(state)
}

/// One log line per answer: method, path, status, latency. Never headers or bodies, which
/// carry secrets, tokens and keys.
async fn log_exchange(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match response.extensions().get::<Magic>() {
        Some(magic) => {
            tracing::info!(%method, path, %magic, latency_ms, "emulator failed on purpose");
        }
        None => {
            let http_status = response.status().as_u16();
            tracing::info!(%method, path, http_status, latency_ms, "emulator answered");
        }
    }
    response
}

async fn about() -> &'static str {
    concat!(
        "msstore-facade emulator: a local imitation of the Microsoft Store and Entra ID endpoints. ",
        "It is NOT Microsoft.\n",
        "POST /login/{tenant}/oauth2/v2.0/token\n",
        "POST /bspmts/V1/Products/{productId}/{skuId}/OfflineLicense/{contentId}\n",
        "POST /collections/v6.0/b2b/keys/renew\n",
        "POST /collections/v9.0/collections/publisherQuery\n",
        "POST /collections/v8.0/collections/consume\n",
        "POST /purchase/v6.0/b2b/keys/renew\n",
        "POST /purchase/v7.0/purchases/grant\n",
        "POST /purchase/v8.0/b2b/recurrences/query\n",
        "POST /purchase/v8.0/b2b/recurrences/{recurrenceId}/change\n",
        "POST /purchase/v8.0/b2b/orders/query\n",
        "GET /purchase/v8.0/b2b/clawback/sastoken\n",
        "GET /queue/{queue}/messages\n",
        "DELETE /queue/{queue}/messages/{messageId}\n",
        "POST /emulator/refunds (emulator only)\n",
        "POST /emulator/refund-queue/rotate-key (emulator only)\n",
        "POST /emulator/refund-queue/messages (emulator only)\n",
        "POST /emulator/refund-queue/faults (emulator only)\n",
    )
}
