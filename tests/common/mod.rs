//! The one test fixture: the real facade on `127.0.0.1:0`, called through the generated tonic
//! clients, with real HTTP upstreams (wiremock) on loopback for the token endpoint, the Store
//! for Business, and the collections and purchase hosts.
#![allow(dead_code)]

pub mod tools;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use msstore_facade::auth::{CredentialSource, Credentials};
use msstore_facade::proto::msstore::v1 as pb;
use msstore_facade::resilience::ResilienceConfig;
use msstore_facade::upstream::Host;
use msstore_facade::Settings;
use pb::store_entitlements_client::StoreEntitlementsClient;
use pb::store_keys_client::StoreKeysClient;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// The tenant the facade is configured for.
pub const TENANT: &str = "contoso.onmicrosoft.com";
/// The facade's client id.
pub const CLIENT_ID: &str = "6f1b2c3d-0000-4000-8000-00000000c11e";
/// The facade's client secret: must never appear in a log line or an error.
pub const CLIENT_SECRET: &str = "client-secret-Zq8~never-log-me";
/// The access token the token endpoint hands out (with a counter suffix).
pub const TOKEN_PREFIX: &str = "eyJ0eXAiOiJKV1QifQ.access-token-never-log-me";
/// The audience of collections keys.
pub const COLLECTIONS_AUD: &str = "https://collections.mp.microsoft.com/v6.0/keys";
/// The audience of purchase keys.
pub const PURCHASE_AUD: &str = "https://purchase.mp.microsoft.com/v6.0/keys";

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
        let (token, business, collections, purchase) = tokio::join!(
            MockServer::start(),
            MockServer::start(),
            MockServer::start(),
            MockServer::start()
        );
        let mut settings = Settings::for_upstream(&business.uri()).expect("valid base URL");
        settings.upstreams[Host::Collections] = collections.uri().parse().unwrap();
        settings.upstreams[Host::Purchase] = purchase.uri().parse().unwrap();
        settings.authority_host = token.uri().parse().unwrap();
        settings.max_request_bytes = self.max_request_bytes;
        settings.resilience.upstream_timeout = self.upstream_timeout;
        settings.shutdown_grace = self.shutdown_grace;
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
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(msstore_facade::serve(
            settings,
            listener,
            Some(admin),
            async {
                let _ = stopped.await;
            },
        ));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("facade accepts connections");
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
            resilience: Vec::new(),
        }
    }

    /// A facade with client-secret credentials whose token endpoint hands out tokens.
    pub async fn start() -> Self {
        let harness = Self::builder().start().await;
        harness.mount_token(3599).await;
        harness
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
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        Mock::given(method("POST"))
            .and(path_regex(r"^/[^/]+/oauth2/v2\.0/token$"))
            .respond_with(move |_: &Request| {
                let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                ResponseTemplate::new(200).set_body_json(json!({
                    "token_type": "Bearer",
                    "expires_in": expires_in,
                    "access_token": format!("{TOKEN_PREFIX}-{n}"),
                }))
            })
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

/// Decodes an `application/x-www-form-urlencoded` body.
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// A well-formed `OfflineLicense` body.
pub fn license_body() -> Value {
    json!({
        "productKey": {"productId": "9NBLGGH4R2R6", "skuId": "0016"},
        "licenseBlob": "PExpY2Vuc2U+c2lnbmVkPC9MaWNlbnNlPg==",
        "licenseInstanceId": "3",
        "requestorId": "contoso",
        "contentId": "c-1",
        "futureField": {"ignored": true}
    })
}

/// A JWT-shaped Store key (unsigned) with these claims.
pub fn store_key(aud: &str, iat: i64, exp: i64) -> String {
    jwt(&json!({
        "aud": aud,
        "iss": aud,
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "http://schemas.microsoft.com/marketplace/2015/08/claims/key/clientId": CLIENT_ID,
        "http://schemas.microsoft.com/marketplace/2015/08/claims/key/refreshUri": "https://refresh.invalid/never-called",
        "http://schemas.microsoft.com/marketplace/2015/08/claims/key/payload": "opaque",
    }))
}

/// A JWT (header `RS256`, signature bytes fixed) with `claims` as payload.
pub fn jwt(claims: &Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(b"signature-bytes")
    )
}

/// A ServiceError body as the Store sends it, the inner code only inside `innererror.data`.
pub fn service_error(code: &str, inner_code: &str) -> Value {
    json!({
        "code": code,
        "message": "The request failed.",
        "source": "b2b",
        "data": [],
        "details": [],
        "innererror": {
            "code": "AuthenticationFailure",
            "message": "Authentication failed.",
            "source": "auth",
            "details": [],
            "data": [format!("MSA : {{ : {inner_code} : Details of {inner_code} }}")]
        }
    })
}

/// A valid request for an offline license.
pub fn license_request() -> pb::GetOfflineLicenseRequest {
    pb::GetOfflineLicenseRequest {
        product_id: "9NBLGGH4R2R6".into(),
        sku_id: "0016".into(),
        content_id: "c-1".into(),
        tenant_id: String::new(),
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The ErrorInfo of `status`, which every facade error must carry.
pub fn error_info(status: &tonic::Status) -> tonic_types::ErrorInfo {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"))
}

/// The BadRequest field names of `status`.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The RetryInfo delay of `status`.
pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    status.get_details_retry_info().and_then(|r| r.retry_delay)
}

// ---------------------------------------------------------------------------------------------
// The sandbox emulator as upstream, and the binary as a child process.

/// An emulator on an ephemeral loopback port, serving in the background.
pub async fn start_emulator() -> msstore_facade::emulator::RunningEmulator {
    msstore_facade::emulator::Emulator::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("the emulator binds a loopback port")
        .spawn()
}

/// Settings that point every upstream and the authority at `emulator`, with the sandbox
/// credentials.
pub fn sandbox_settings(emulator: &msstore_facade::emulator::RunningEmulator) -> Settings {
    Settings::for_upstream("http://127.0.0.1")
        .and_then(|s| s.with_sandbox(emulator.endpoints().sandbox_upstreams()))
        .expect("sandbox settings are valid")
}

/// A client-credentials token request to `emulator` with `form`, answered as (status, JSON).
pub async fn emulator_token_request(
    emulator: &msstore_facade::emulator::Endpoints,
    tenant: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let url = format!("{}/{tenant}/oauth2/v2.0/token", emulator.authority_host());
    let response = reqwest::Client::new()
        .post(url)
        .form(form)
        .send()
        .await
        .expect("the emulator answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// The form of a sandbox client-secret token request.
pub fn sandbox_secret_form() -> Vec<(&'static str, &'static str)> {
    use msstore_facade::emulator::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET};
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", SANDBOX_CLIENT_ID),
        ("client_secret", SANDBOX_CLIENT_SECRET),
        ("scope", "https://onestore.microsoft.com/.default"),
    ]
}

/// An access token for the sandbox application from `emulator`.
pub async fn emulator_token(emulator: &msstore_facade::emulator::Endpoints) -> String {
    let tenant = msstore_facade::emulator::SANDBOX_TENANT;
    let (status, body) = emulator_token_request(emulator, tenant, &sandbox_secret_form()).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// The claims of a JWT, read without checking the signature.
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

/// The binary as a child process with an empty environment (so no `AZURE_*` or `MSSTORE_*`
/// variable of the machine leaks in) plus `env`. Its stdout and stderr lines arrive on one
/// channel as they are written; it is killed on drop if a test fails half-way.
pub struct Process {
    child: Option<std::process::Child>,
    output: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    /// Starts `msstore-facade args...`.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::process::Stdio;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_msstore-facade"))
            .args(args)
            .env_clear()
            .env("RUST_LOG", "info")
            // Many binaries run at once: none may take the default admin port.
            .env("MSSTORE_ADMIN_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let (tx, output) = std::sync::mpsc::channel();
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        for stream in [stdout, stderr].into_iter().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child: Some(child),
            output,
            seen: Vec::new(),
        }
    }

    /// Waits for the first line containing `marker` and returns the word that follows it.
    pub fn wait_for(&mut self, marker: &str) -> String {
        let found = |line: &String| {
            line.split_once(marker).map(|(_, rest)| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        };
        if let Some(value) = self.seen.iter().find_map(found) {
            return value;
        }
        loop {
            let line = self
                .output
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no line with {marker:?}; got {:#?}", self.seen));
            let value = found(&line);
            self.seen.push(line);
            if let Some(value) = value {
                return value;
            }
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code and every output line.
    /// The wait runs off the test's runtime, which stays free to close client connections.
    pub async fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        let mut child = self.child.take().expect("still running");
        let signalled = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(signalled.success());
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("the wait does not panic")
            .expect("the child is waited for");
        // Both pipes close with the process, so this ends.
        self.seen.extend(self.output.try_iter());
        self.seen.extend(self.output.iter());
        (status.code(), std::mem::take(&mut self.seen))
    }
}

/// A channel to the facade at `addr` (as the binary logs it).
pub async fn channel_to(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the facade accepts connections")
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Facade {
    /// GETs `path` on the admin server: (HTTP status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.admin_addr))
            .send()
            .await
            .expect("admin server answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("admin body is text"))
    }

    /// The facade's metrics, parsed from `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        let (status, text) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        Metrics::parse(&text)
    }
}

/// Samples of a Prometheus text exposition: `name{labels}` -> value.
#[derive(Debug, Clone)]
pub struct Metrics(pub std::collections::BTreeMap<String, f64>);

impl Metrics {
    /// Parses Prometheus text format 0.0.4, panicking on any line that is not a comment, a
    /// blank line or a `name{label="value",...} number` sample.
    pub fn parse(text: &str) -> Self {
        let mut samples = std::collections::BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                other => other
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value: {line}")),
            };
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
                "bad metric name: {line}"
            );
            if name_end < series.len() {
                let labels = &series[name_end..];
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels: {line}"
                );
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (key, value) = pair.split_once("=\"").expect("label is key=\"value\"");
                    assert!(
                        !key.is_empty() && !value.ends_with('\\'),
                        "bad label: {line}"
                    );
                }
            }
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "duplicate series: {line}"
            );
        }
        Self(samples)
    }

    /// The value of the series named exactly `series` (`name{a="b",...}`), 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The sum over every series of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                series.split('{').next() == Some(name)
                    && labels
                        .iter()
                        .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, value)| value)
            .sum()
    }
}

/// A log writer for `tracing_subscriber` that keeps everything written, for log assertions.
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("log output is UTF-8")
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
