//! The facade on `127.0.0.1:0` between the test and five loopback wiremock upstreams (the
//! token endpoint, the Store for Business, the collections and purchase hosts, and the refund
//! queue).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use msstore_facade::auth::{AllowedTenants, CredentialSource, Credentials};
use msstore_facade::proto::msstore::v1 as pb;
use msstore_facade::resilience::ResilienceConfig;
use msstore_facade::upstream::Host;
use msstore_facade::Settings;
use pb::store_entitlements_client::StoreEntitlementsClient;
use pb::store_keys_client::StoreKeysClient;
use secrecy::SecretString;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::fixtures::form;
use super::{CLIENT_ID, CLIENT_SECRET, TENANT, TOKEN_PREFIX};

/// Which credential the facade is started with.
#[derive(Debug, Clone)]
pub enum Credential {
    /// None: callers must bring a service ticket.
    None,
    /// `AZURE_CLIENT_SECRET`.
    Secret,
    /// `AZURE_FEDERATED_TOKEN_FILE` at this path.
    FederatedFile(PathBuf),
}

/// Builds a [`Harness`].
pub struct HarnessBuilder {
    credential: Credential,
    max_request_bytes: usize,
    upstream_timeout: Duration,
    shutdown_grace: Duration,
    drain_delay: Duration,
    allowed_tenants: AllowedTenants,
    resilience: Vec<ResilienceTweak>,
}

/// A change to the resilience settings, see [`HarnessBuilder::resilience`].
type ResilienceTweak = Box<dyn FnOnce(&mut ResilienceConfig) + Send>;

impl HarnessBuilder {
    /// How long calls in flight may run after shutdown begins.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How long calls are still accepted after shutdown begins.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// The tenants a call may name (the fixture's default is `*`, so that suites about other
    /// things can name any tenant).
    pub fn allowed_tenants(mut self, allowed: AllowedTenants) -> Self {
        self.allowed_tenants = allowed;
        self
    }

    /// The facade's credential.
    pub fn credential(mut self, credential: Credential) -> Self {
        self.credential = credential;
        self
    }

    /// The request size limit.
    pub fn max_request_bytes(mut self, limit: usize) -> Self {
        self.max_request_bytes = limit;
        self
    }

    /// The per-attempt upstream timeout.
    pub fn upstream_timeout(mut self, timeout: Duration) -> Self {
        self.upstream_timeout = timeout;
        self
    }

    /// Changes the resilience settings (applied after every other setting, in order).
    pub fn resilience(
        mut self,
        tweak: impl FnOnce(&mut ResilienceConfig) + Send + 'static,
    ) -> Self {
        self.resilience.push(Box::new(tweak));
        self
    }

    /// Starts the upstreams and the facade.
    pub async fn start(self) -> Harness {
        let (token, business, collections, purchase, refund_queue) = tokio::join!(
            MockServer::start(),
            MockServer::start(),
            MockServer::start(),
            MockServer::start(),
            MockServer::start()
        );
        let mut settings = Settings::for_upstream(&business.uri()).expect("valid base URL");
        settings.upstreams[Host::Collections] = collections.uri().parse().unwrap();
        settings.upstreams[Host::Purchase] = purchase.uri().parse().unwrap();
        // The refund queue's URL comes from the purchase host's SAS answer: a queue URL under
        // this mock server is one the facade follows.
        settings.upstreams[Host::RefundQueue] = refund_queue.uri().parse().unwrap();
        settings.authority_host = token.uri().parse().unwrap();
        settings.max_request_bytes = self.max_request_bytes;
        settings.resilience.upstream_timeout = self.upstream_timeout;
        settings.shutdown_grace = self.shutdown_grace;
        settings.drain_delay = self.drain_delay;
        settings.allowed_tenants = self.allowed_tenants;
        for tweak in self.resilience {
            tweak(&mut settings.resilience);
        }
        let source = match self.credential {
            Credential::None => None,
            Credential::Secret => Some(CredentialSource::ClientSecret(SecretString::from(
                CLIENT_SECRET,
            ))),
            Credential::FederatedFile(path) => Some(CredentialSource::FederatedTokenFile(path)),
        };
        settings.credentials = source.map(|source| Credentials {
            tenant_id: msstore_facade::auth::TenantId::parse(TENANT).unwrap(),
            client_id: CLIENT_ID.to_owned(),
            source,
        });
        let facade = Facade::start(settings).await;
        Harness {
            token,
            business,
            collections,
            purchase,
            refund_queue,
            facade,
        }
    }
}

/// A running facade and its clients.
pub struct Facade {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin HTTP server (`/metrics`, `/healthz`, `/readyz`) listens.
    pub admin_addr: SocketAddr,
    /// A channel to it.
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), msstore_facade::server::ServeError>>>,
}

impl Facade {
    /// Serves `settings` on an ephemeral loopback port.
    pub async fn start(settings: Settings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let tls = settings.tls.is_some();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(msstore_facade::serve(
            settings,
            listener,
            Some(admin),
            async {
                let _ = stopped.await;
            },
        ));
        let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
        let channel = if tls {
            // A plaintext channel to a TLS port: made for tests that show it is refused.
            endpoint.connect_lazy()
        } else {
            endpoint
                .connect()
                .await
                .expect("facade accepts connections")
        };
        Self {
            addr,
            admin_addr,
            channel,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Asks the server to shut down; returns when it has stopped.
    pub async fn shutdown(&mut self) -> Result<(), msstore_facade::server::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task does not panic"),
            None => Ok(()),
        }
    }

    /// Asks the server to shut down without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the server task after [`Facade::begin_shutdown`].
    pub async fn stopped(&mut self) -> Result<(), msstore_facade::server::ServeError> {
        match self.task.take() {
            Some(task) => task.await.expect("server task does not panic"),
            None => Ok(()),
        }
    }
}

/// The facade between the test and four loopback upstreams.
pub struct Harness {
    /// Entra token endpoint.
    pub token: MockServer,
    /// Store for Business.
    pub business: MockServer,
    /// Collections host.
    pub collections: MockServer,
    /// Purchase host.
    pub purchase: MockServer,
    /// The refund queue (Azure Storage), whose URL the purchase host's SAS answer names.
    pub refund_queue: MockServer,
    /// The facade.
    pub facade: Facade,
}

impl Harness {
    /// A builder with client-secret credentials, a 1 MiB request limit, 10 s upstream timeout.
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder {
            credential: Credential::Secret,
            max_request_bytes: 1024 * 1024,
            upstream_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            allowed_tenants: AllowedTenants::Any,
            resilience: Vec::new(),
        }
    }

    /// A facade with client-secret credentials whose token endpoint hands out tokens.
    pub async fn start() -> Self {
        let harness = Self::builder().start().await;
        harness.mount_token(3599).await;
        harness
    }

    /// The mock server standing for `host`.
    pub fn store(&self, host: Host) -> &MockServer {
        match host {
            Host::BusinessStore => &self.business,
            Host::Collections => &self.collections,
            Host::Purchase => &self.purchase,
            Host::RefundQueue => &self.refund_queue,
        }
    }

    /// A `StoreEntitlements` client.
    pub fn entitlements(&self) -> StoreEntitlementsClient<Channel> {
        StoreEntitlementsClient::new(self.facade.channel.clone())
    }

    /// A `StoreKeys` client.
    pub fn keys(&self) -> StoreKeysClient<Channel> {
        StoreKeysClient::new(self.facade.channel.clone())
    }

    /// The token endpoint answers every request with a new token living `expires_in` seconds
    /// (`<TOKEN_PREFIX>-1`, `-2`, ... in request order).
    pub async fn mount_token(&self, expires_in: u64) {
        Mock::given(method("POST"))
            .and(path_regex(r"^/[^/]+/oauth2/v2\.0/token$"))
            .respond_with(super::raw::issued_tokens(json!(expires_in)))
            .mount(&self.token)
            .await;
    }

    /// The token requests received so far, as decoded forms.
    pub async fn token_requests(&self) -> Vec<(String, Vec<(String, String)>)> {
        self.token
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.url.path().to_owned(), form(&r.body)))
            .collect()
    }

    /// The paths of the token requests received so far (`/{tenant}/oauth2/v2.0/token`).
    pub async fn token_paths(&self) -> Vec<String> {
        self.token_requests()
            .await
            .into_iter()
            .map(|(path, _)| path)
            .collect()
    }

    /// The Store for Business answers every offline-license request with `template`.
    pub async fn mount_license(&self, template: ResponseTemplate) {
        Mock::given(method("POST"))
            .and(path_regex(r"^/V1/Products/"))
            .respond_with(template)
            .mount(&self.business)
            .await;
    }

    /// `server` answers its next POST with `template`, before any other mock.
    pub async fn answer_next_once(server: &MockServer, template: ResponseTemplate) {
        Mock::given(method("POST"))
            .respond_with(template)
            .up_to_n_times(1)
            .with_priority(1)
            .mount(server)
            .await;
    }

    /// Both key hosts answer every renew request with `template`.
    pub async fn mount_renew(&self, template: ResponseTemplate) {
        for server in [&self.collections, &self.purchase] {
            Mock::given(method("POST"))
                .and(path("/v6.0/b2b/keys/renew"))
                .respond_with(template.clone())
                .mount(server)
                .await;
        }
    }

    /// Requests received by `server`.
    pub async fn requests(server: &MockServer) -> Vec<Request> {
        server.received_requests().await.unwrap_or_default()
    }
}
