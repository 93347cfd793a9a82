//! Fault injection for issue 4: the caller's deadline and cancellation end the upstream
//! request; transient failures (and only those) are retried, within the deadline and a retry
//! budget; per-host circuits open and close; calls beyond the concurrency limit are shed, never
//! queued; identical concurrent calls share one upstream request.
//!
//! Every upstream is on 127.0.0.1: wiremock, or a raw TCP "server" where the test must see the
//! connection itself (was it closed?) or hold an answer back until it says so. No test sleeps
//! to synchronise: each awaits a signal (a request received, a connection closed, a call shed),
//! and only time-based state (an open circuit's period) is polled, under a generous cap.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::stream::{FuturesUnordered, StreamExt};
use msstore_facade::auth::TenantId;
use msstore_facade::auth::{CredentialSource, Credentials};
use msstore_facade::proto::msstore::v1 as pb;
use msstore_facade::resilience::ResilienceConfig;
use msstore_facade::Settings;
use pb::store_entitlements_client::StoreEntitlementsClient;
use pb::store_keys_client::StoreKeysClient;
use secrecy::SecretString;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// How long a test waits for something that takes milliseconds when all is well.
const GENEROUS: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Calls and their outcomes.

type LicenseOutcome = Result<pb::OfflineLicense, Status>;

/// A valid offline-license request for `content_id` (distinct ids are never coalesced).
fn license(content_id: &str) -> pb::GetOfflineLicenseRequest {
    pb::GetOfflineLicenseRequest {
        content_id: content_id.into(),
        ..license_request()
    }
}

async fn get_license(
    channel: &Channel,
    message: pb::GetOfflineLicenseRequest,
    timeout: Option<Duration>,
) -> LicenseOutcome {
    let mut request = tonic::Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    StoreEntitlementsClient::new(channel.clone())
        .get_offline_license(request)
        .await
        .map(tonic::Response::into_inner)
}

/// RenewKey of `key` with the facade's own token.
async fn renew(channel: &Channel, key: String) -> Result<pb::RenewKeyResponse, Status> {
    StoreKeysClient::new(channel.clone())
        .renew_key(pb::RenewKeyRequest {
            key,
            key_type: pb::KeyType::Unspecified as i32,
            service_ticket: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn collections_key() -> String {
    store_key(COLLECTIONS_AUD, now() - 3600, now() + 29 * 24 * 3600)
}

fn purchase_key() -> String {
    store_key(PURCHASE_AUD, now() - 3600, now() + 29 * 24 * 3600)
}

/// Mounts `template` for renew requests on `server` only.
async fn mount_renew_on(server: &MockServer, template: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path("/v6.0/b2b/keys/renew"))
        .respond_with(template)
        .mount(server)
        .await;
}

fn renewed() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({ "key": collections_key() }))
}

fn license_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(license_body())
}

/// The call failed with `code` and ErrorInfo `reason`.
#[track_caller]
fn expect_failure<T: std::fmt::Debug>(
    outcome: Result<T, Status>,
    code: Code,
    reason: &str,
) -> Status {
    let status = outcome.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(error_info(&status).reason, reason, "{status:?}");
    status
}

/// Whether `status` is a call shed cleanly: UNAVAILABLE, reason OVERLOADED, with RetryInfo.
fn is_shed(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == "OVERLOADED")
        && retry_delay(status).is_some()
}

/// `future`, which must finish within `limit`.
async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// Polls `check` every 20 ms until it gives `Some`, failing after `cap`. Only for time-based
/// state (an open circuit's period); anything with a signal awaits the signal.
async fn eventually<T, Fut>(what: &str, cap: Duration, mut check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < cap, "{what}: not within {cap:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `MS-CV` headers of `requests`, which must be one call's consecutive attempts: the same
/// vector incremented per attempt (`V.1`, `V.2`, ...).
#[track_caller]
fn assert_consecutive_ms_cv(requests: &[wiremock::Request]) {
    let vectors: Vec<String> = requests
        .iter()
        .map(|r| {
            r.headers
                .get("ms-cv")
                .expect("every attempt carries MS-CV")
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let (prefix, _) = vectors[0].rsplit_once('.').expect("a correlation vector");
    for (attempt, vector) in vectors.iter().enumerate() {
        assert_eq!(vector, &format!("{prefix}.{}", attempt + 1), "{vectors:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// A facade built by hand, for upstreams that are not wiremock.

/// The token endpoint hands out a new token per request, for any tenant.
async fn token_server() -> MockServer {
    let server = MockServer::start().await;
    let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Mock::given(method("POST"))
        .and(path_regex(r"^/[^/]+/oauth2/v2\.0/token$"))
        .respond_with(move |_: &wiremock::Request| {
            let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            ResponseTemplate::new(200).set_body_json(json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "access_token": format!("{TOKEN_PREFIX}-{n}"),
            }))
        })
        .mount(&server)
        .await;
    server
}

/// A facade whose three Store hosts are `store_base`, with client-secret credentials, a token
/// endpoint serving any tenant, and resilience settings changed by `tweak`.
async fn facade_at(
    store_base: &str,
    tweak: impl FnOnce(&mut ResilienceConfig),
) -> (MockServer, Facade) {
    let token = token_server().await;
    let mut settings = Settings::for_upstream(store_base).expect("valid base URL");
    settings.authority_host = token.uri().parse().unwrap();
    settings.credentials = Some(Credentials {
        tenant_id: TenantId::parse(TENANT).unwrap(),
        client_id: CLIENT_ID.to_owned(),
        source: CredentialSource::ClientSecret(SecretString::from(CLIENT_SECRET)),
    });
    tweak(&mut settings.resilience);
    (token, Facade::start(settings).await)
}

/// `http://127.0.0.1:<port>` where nothing listens (a port just bound and released).
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 upstream.

/// What the raw upstream does with each request it has read.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Never answers: waits for the facade to close the connection (EOF or reset), and
    /// reports that on `closed`.
    NeverAnswer,
    /// Answers 200 with [`license_body`] once released (and at once after that).
    LicenseOnceReleased,
}

/// A loopback upstream on raw TCP, for what wiremock cannot show: whether the facade closed a
/// connection whose request is still unanswered, and answers held until the test says so.
struct RawUpstream {
    addr: SocketAddr,
    /// The head (request line and headers) of every request read, in order.
    heads: Arc<Mutex<Vec<String>>>,
    /// One message per request read.
    received: mpsc::UnboundedReceiver<()>,
    /// One message per connection the facade closed with its request unanswered.
    closed: mpsc::UnboundedReceiver<()>,
    /// `true` while answers are held back.
    hold: watch::Sender<bool>,
}

impl RawUpstream {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (received_tx, received) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let (hold, held) = watch::channel(true);
        let recorded = heads.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(
                    stream,
                    behaviour,
                    recorded.clone(),
                    received_tx.clone(),
                    closed_tx.clone(),
                    held.clone(),
                ));
            }
        });
        Self {
            addr,
            heads,
            received,
            closed,
            hold,
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Lets every held answer (and every later one) go.
    fn release(&self) {
        self.hold.send_replace(false);
    }

    /// Waits until the upstream has read a request.
    async fn request_received(&mut self) {
        within(
            GENEROUS,
            "the request reaching the upstream",
            self.received.recv(),
        )
        .await
        .expect("the upstream runs");
    }

    /// Waits until the facade has closed a connection with its request unanswered.
    async fn connection_closed(&mut self) {
        within(
            GENEROUS,
            "the facade closing the upstream connection",
            self.closed.recv(),
        )
        .await
        .expect("the upstream runs");
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    behaviour: Behaviour,
    heads: Arc<Mutex<Vec<String>>>,
    received: mpsc::UnboundedSender<()>,
    closed: mpsc::UnboundedSender<()>,
    mut held: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    while let Some(head) = read_request(&mut stream, &mut buf).await {
        heads.lock().unwrap().push(head);
        let _ = received.send(());
        match behaviour {
            Behaviour::NeverAnswer => {
                let mut chunk = [0u8; 1024];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            let _ = closed.send(());
                            return;
                        }
                        Ok(_) => {}
                    }
                }
            }
            Behaviour::LicenseOnceReleased => {
                if held.wait_for(|held| !*held).await.is_err() {
                    return;
                }
                let body = license_body().to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads one request (head, then `Content-Length` bytes of body) and returns its head, or
/// `None` when the connection ends first. What follows the request stays in `buf`.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let body_len = header(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + body_len {
                buf.drain(..end + 4 + body_len);
                return Some(head);
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The value of header `name` in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

// ---------------------------------------------------------------------------------------------
// Deadlines and cancellation.

#[tokio::test]
async fn caller_deadline_answers_deadline_exceeded_and_drops_the_upstream_request() {
    let mut upstream = RawUpstream::start(Behaviour::NeverAnswer).await;
    // Only the caller's deadline can end this call: the per-attempt timeout is far away.
    let (_token, facade) = facade_at(&upstream.base(), |r| {
        r.upstream_timeout = Duration::from_secs(600);
        r.default_deadline = Duration::from_secs(600);
    })
    .await;
    let started = Instant::now();
    let outcome = get_license(
        &facade.channel,
        license_request(),
        Some(Duration::from_secs(1)),
    )
    .await;
    // The facade's own answer: tonic's timer would answer CANCELLED without ErrorInfo.
    expect_failure(outcome, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(started.elapsed() < GENEROUS, "{:?}", started.elapsed());
    upstream.request_received().await;
    upstream.connection_closed().await;
    assert_eq!(upstream.heads().len(), 1, "a timed-out call is not retried");
}

#[tokio::test]
async fn without_a_caller_deadline_the_default_deadline_applies() {
    let mut upstream = RawUpstream::start(Behaviour::NeverAnswer).await;
    let (_token, facade) = facade_at(&upstream.base(), |r| {
        r.upstream_timeout = Duration::from_secs(600);
        r.default_deadline = Duration::from_secs(1);
    })
    .await;
    let call = get_license(&facade.channel, license_request(), None);
    let outcome = within(GENEROUS, "the default deadline", call).await;
    let status = expect_failure(outcome, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(status.message().contains("1000 ms"), "{status:?}");
    upstream.request_received().await;
    upstream.connection_closed().await;
}

#[tokio::test]
async fn the_per_attempt_upstream_timeout_ends_a_silent_attempt() {
    let mut upstream = RawUpstream::start(Behaviour::NeverAnswer).await;
    let (_token, facade) = facade_at(&upstream.base(), |r| {
        r.upstream_timeout = Duration::from_millis(500);
        r.default_deadline = Duration::from_secs(600);
    })
    .await;
    let call = get_license(&facade.channel, license_request(), None);
    let outcome = within(GENEROUS, "the per-attempt timeout", call).await;
    let status = expect_failure(outcome, Code::Unavailable, "UPSTREAM_TIMEOUT");
    assert!(retry_delay(&status).is_some(), "{status:?}");
    upstream.request_received().await;
    upstream.connection_closed().await;
}

#[tokio::test]
async fn caller_cancellation_drops_the_upstream_request() {
    let mut upstream = RawUpstream::start(Behaviour::NeverAnswer).await;
    let (_token, facade) = facade_at(&upstream.base(), |r| {
        r.upstream_timeout = Duration::from_secs(600);
        r.default_deadline = Duration::from_secs(600);
    })
    .await;
    let channel = facade.channel.clone();
    let call = tokio::spawn(async move { get_license(&channel, license_request(), None).await });
    upstream.request_received().await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    upstream.connection_closed().await;
}

// ---------------------------------------------------------------------------------------------
// Retries.

#[tokio::test]
async fn transient_statuses_are_retried_with_consecutive_correlation_vectors() {
    let h = Harness::start().await;
    for status in [503, 502, 504, 408] {
        h.business.reset().await;
        Harness::answer_next_once(&h.business, ResponseTemplate::new(status)).await;
        h.mount_license(license_ok()).await;
        let license = get_license(
            &h.facade.channel,
            license_request(),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap_or_else(|s| panic!("HTTP {status} then 200: {s:?}"));
        assert_eq!(license.license_blob, license_body()["licenseBlob"]);
        let requests = Harness::requests(&h.business).await;
        assert_eq!(requests.len(), 2, "HTTP {status} then 200");
        assert_consecutive_ms_cv(&requests);
    }
}

#[tokio::test]
async fn renew_key_502_then_200_is_retried_on_its_host() {
    let h = Harness::start().await;
    Harness::answer_next_once(&h.collections, ResponseTemplate::new(502)).await;
    h.mount_renew(renewed()).await;
    renew(&h.facade.channel, collections_key()).await.unwrap();
    let requests = Harness::requests(&h.collections).await;
    assert_eq!(requests.len(), 2);
    assert_consecutive_ms_cv(&requests);
    assert!(Harness::requests(&h.purchase).await.is_empty());
}

#[tokio::test]
async fn connect_errors_are_retried() {
    // Attempts to a closed port cannot be counted at the port, but the circuit breaker counts
    // them: with a threshold of 3, one call opens the circuit only if it made 3 attempts.
    let closed = closed_port_url();
    let circuit_of_three = |attempts: u32| {
        move |r: &mut ResilienceConfig| {
            r.max_attempts = attempts;
            r.circuit_failures = 3;
            r.circuit_open_for = Duration::from_secs(600);
            r.retry_base_delay = Duration::from_millis(1);
        }
    };

    let (_token, retrying) = facade_at(&closed, circuit_of_three(3)).await;
    let first = get_license(&retrying.channel, license_request(), None).await;
    expect_failure(first, Code::Unavailable, "UPSTREAM_UNREACHABLE");
    let second = get_license(&retrying.channel, license_request(), None).await;
    expect_failure(second, Code::Unavailable, "CIRCUIT_OPEN");

    // The control: without retries, one call is one failure, and the circuit stays closed.
    let (_token, single) = facade_at(&closed, circuit_of_three(1)).await;
    for _ in 0..2 {
        let outcome = get_license(&single.channel, license_request(), None).await;
        expect_failure(outcome, Code::Unavailable, "UPSTREAM_UNREACHABLE");
    }
}

#[tokio::test]
async fn retry_after_that_fits_the_deadline_is_honoured() {
    let h = Harness::start().await;
    Harness::answer_next_once(
        &h.business,
        ResponseTemplate::new(429).insert_header("Retry-After", "1"),
    )
    .await;
    h.mount_license(license_ok()).await;
    let started = Instant::now();
    get_license(
        &h.facade.channel,
        license_request(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    // A lower bound only: the facade waited the second the Store asked for.
    assert!(
        started.elapsed() >= Duration::from_millis(990),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(Harness::requests(&h.business).await.len(), 2);
}

#[tokio::test]
async fn retry_after_beyond_the_deadline_is_handed_back_at_once() {
    let h = Harness::start().await;
    h.mount_license(ResponseTemplate::new(429).insert_header("Retry-After", "30"))
        .await;
    // Waiting 30 s would run out the 2 s deadline: DEADLINE_EXCEEDED instead of this.
    let outcome = get_license(
        &h.facade.channel,
        license_request(),
        Some(Duration::from_secs(2)),
    )
    .await;
    let status = outcome.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(30)));
    assert_eq!(Harness::requests(&h.business).await.len(), 1);
}

#[tokio::test]
async fn other_failures_are_never_retried() {
    let h = Harness::start().await;
    let cases = [
        (ResponseTemplate::new(400), Code::InvalidArgument),
        (ResponseTemplate::new(404), Code::NotFound),
        (ResponseTemplate::new(409), Code::FailedPrecondition),
        // A 429 without Retry-After: nothing says when a retry could succeed.
        (ResponseTemplate::new(429), Code::ResourceExhausted),
        (ResponseTemplate::new(500), Code::Internal),
        (ResponseTemplate::new(501), Code::Unimplemented),
    ];
    for (template, code) in cases {
        h.business.reset().await;
        h.mount_license(template).await;
        let status = get_license(&h.facade.channel, license_request(), None)
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(
            Harness::requests(&h.business).await.len(),
            1,
            "{code:?} was retried"
        );
    }
    h.mount_renew(ResponseTemplate::new(409)).await;
    let status = renew(&h.facade.channel, collections_key())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(Harness::requests(&h.collections).await.len(), 1);
}

#[tokio::test]
async fn a_failure_storm_is_capped_by_the_retry_budget() {
    const CALLS: usize = 200;
    const CONCURRENCY: usize = 10;
    const MIN_PER_SEC: usize = 1;
    let h = Harness::builder()
        .resilience(|r| {
            r.circuit_failures = 0;
            r.max_attempts = 3;
            r.retry_base_delay = Duration::from_millis(1);
            r.retry_max_delay = Duration::from_millis(1);
            r.retry_budget_percent = 20.0;
            r.retry_budget_min_per_sec = MIN_PER_SEC as u32;
        })
        .start()
        .await;
    h.mount_token(3599).await;
    h.mount_license(ResponseTemplate::new(503)).await;

    let started = Instant::now();
    let channel = h.facade.channel.clone();
    let outcomes: Vec<LicenseOutcome> = futures_util::stream::iter(0..CALLS)
        .map(|i| {
            let channel = channel.clone();
            async move { get_license(&channel, license(&format!("storm-{i}")), None).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();
    for outcome in outcomes {
        expect_failure(outcome, Code::Unavailable, "SERVICE_UNAVAILABLE");
    }

    // Without a budget every call would make 3 attempts: 600 requests. The budget is tower's
    // TpsBudget over a 10 s window: each call deposits 1, each retry withdraws 5 (= 1 / 20%),
    // and a reserve of MIN_PER_SEC * 10 s * 5 is added, so a retry is allowed only while
    // reserve + deposits - 5 * retries stays >= 0: retries <= 10 + CALLS / 5 per window, so
    // at most CALLS + CALLS / 5 + 10 = 250 requests (exactly what a fast run sends). A run
    // slower than the window gets its reserve again per window (counted generously as one per
    // 9 s, for the window's 1 s slots); 5 more for slack.
    let windows = 1 + (elapsed.as_secs() / 9) as usize;
    let cap = CALLS + CALLS / 5 + MIN_PER_SEC * 10 * windows + 5;
    let sent = Harness::requests(&h.business).await.len();
    assert!(
        sent <= cap,
        "{sent} upstream requests for {CALLS} calls in {elapsed:?}: above the budget's {cap}"
    );
    eprintln!("{CALLS} failing calls: {sent} upstream requests (cap {cap}) in {elapsed:?}");
    // And the reserve alone guarantees some retries were made.
    assert!(sent >= CALLS + 10, "{sent} upstream requests: no retries?");
}

// ---------------------------------------------------------------------------------------------
// Circuit breaking.

#[tokio::test]
async fn the_circuit_opens_after_consecutive_failures_and_closes_after_a_probe() {
    // Long enough that the call right after the third failure surely finds it open, even on a
    // loaded machine; short enough to wait out.
    const OPEN_FOR: Duration = Duration::from_secs(1);
    let h = Harness::builder()
        .resilience(|r| {
            r.circuit_failures = 3;
            r.circuit_open_for = OPEN_FOR;
            r.max_attempts = 1;
        })
        .start()
        .await;
    h.mount_token(3599).await;
    h.mount_license(ResponseTemplate::new(503)).await;
    let channel = &h.facade.channel;
    let upstream_requests = || async { Harness::requests(&h.business).await.len() };

    for _ in 0..3 {
        let outcome = get_license(channel, license_request(), None).await;
        expect_failure(outcome, Code::Unavailable, "SERVICE_UNAVAILABLE");
    }
    assert_eq!(upstream_requests().await, 3);

    let outcome = get_license(channel, license_request(), None).await;
    let status = expect_failure(outcome, Code::Unavailable, "CIRCUIT_OPEN");
    let delay = retry_delay(&status).expect("RetryInfo on CIRCUIT_OPEN");
    assert!(delay > Duration::ZERO && delay <= OPEN_FOR, "{delay:?}");
    assert_eq!(
        upstream_requests().await,
        3,
        "an open circuit sends nothing"
    );

    // The facade itself stays healthy while a Store host fails (README, "Health meanwhile").
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    h.business.reset().await;
    h.mount_license(license_ok()).await;
    eventually(
        "a probe closing the circuit",
        Duration::from_secs(60),
        || async {
            match get_license(channel, license_request(), None).await {
                Ok(_) => Some(()),
                Err(status) => {
                    assert_eq!(error_info(&status).reason, "CIRCUIT_OPEN", "{status:?}");
                    None
                }
            }
        },
    )
    .await;
    assert_eq!(upstream_requests().await, 1, "only the probe went upstream");
    for expected in 2..=4 {
        get_license(channel, license_request(), None).await.unwrap();
        assert_eq!(upstream_requests().await, expected);
    }
}

#[tokio::test]
async fn an_open_circuit_on_one_host_leaves_the_other_hosts_alone() {
    let h = Harness::builder()
        .resilience(|r| {
            r.circuit_failures = 3;
            r.circuit_open_for = Duration::from_secs(600);
            r.max_attempts = 1;
        })
        .start()
        .await;
    h.mount_token(3599).await;
    mount_renew_on(&h.purchase, ResponseTemplate::new(503)).await;
    mount_renew_on(&h.collections, renewed()).await;
    h.mount_license(license_ok()).await;
    let channel = &h.facade.channel;

    for _ in 0..3 {
        let outcome = renew(channel, purchase_key()).await;
        expect_failure(outcome, Code::Unavailable, "SERVICE_UNAVAILABLE");
    }
    let outcome = renew(channel, purchase_key()).await;
    expect_failure(outcome, Code::Unavailable, "CIRCUIT_OPEN");
    assert_eq!(Harness::requests(&h.purchase).await.len(), 3);

    renew(channel, collections_key()).await.unwrap();
    get_license(channel, license_request(), None).await.unwrap();
    assert_eq!(Harness::requests(&h.collections).await.len(), 1);
    assert_eq!(Harness::requests(&h.business).await.len(), 1);
    let outcome = renew(channel, purchase_key()).await;
    expect_failure(outcome, Code::Unavailable, "CIRCUIT_OPEN");
}

// ---------------------------------------------------------------------------------------------
// Overload.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_against_a_small_limit_are_all_answered_and_the_excess_shed() {
    const CALLS: usize = 10_000;
    const LIMIT: usize = 8;
    const CHANNELS: usize = 10;
    let h = Harness::builder()
        .resilience(|r| r.max_concurrent_calls = LIMIT)
        .start()
        .await;
    h.mount_token(3599).await;
    h.mount_license(license_ok().set_delay(Duration::from_millis(100)))
        .await;
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        let channel = Channel::from_shared(format!("http://{}", h.facade.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        channels.push(channel);
    }

    let started = Instant::now();
    let calls: FuturesUnordered<JoinHandle<LicenseOutcome>> = (0..CALLS)
        .map(|i| {
            let channel = channels[i % CHANNELS].clone();
            tokio::spawn(
                async move { get_license(&channel, license(&format!("c-{i}")), None).await },
            )
        })
        .collect();
    let outcomes: Vec<_> = within(
        Duration::from_secs(300),
        "10,000 calls answered",
        calls.collect::<Vec<_>>(),
    )
    .await;
    let elapsed = started.elapsed();

    let (mut ok, mut shed) = (0, 0);
    for outcome in outcomes {
        match outcome.expect("call task") {
            Ok(_) => ok += 1,
            Err(status) if is_shed(&status) => shed += 1,
            Err(status) => panic!("neither answered nor shed cleanly: {status:?}"),
        }
    }
    assert_eq!(ok + shed, CALLS);
    assert!(ok >= LIMIT, "{ok} answered, {shed} shed");
    assert!(shed > 0, "{ok} answered, {shed} shed");
    assert_eq!(
        Harness::requests(&h.business).await.len(),
        ok,
        "every answered call made one upstream request, every shed call none"
    );
    eprintln!("{CALLS} calls: {ok} answered, {shed} shed, in {elapsed:?}");
}

// ---------------------------------------------------------------------------------------------
// Coalescing.
//
// The upstream holds its answers until the test releases them. To know that every call has
// joined a flight before releasing, the concurrency limit is set to the number of calls that
// must join, and EXTRA more calls are sent: a call takes its place under the limit and joins
// (or starts) its flight in the same poll, and no call can finish while the upstream holds its
// answer, so once EXTRA calls have been shed, exactly LIMIT calls are inside, joined.

const LIMIT: usize = 100;
const EXTRA: usize = 20;

/// Room for LIMIT calls; no timeout can end a held flight while the test waits for sheds.
fn coalescing_limit(r: &mut ResilienceConfig) {
    r.max_concurrent_calls = LIMIT;
    r.upstream_timeout = Duration::from_secs(600);
    r.default_deadline = Duration::from_secs(600);
}

/// Starts every call of `messages` at once, each in its own task.
fn spawn_calls(
    channel: &Channel,
    messages: impl IntoIterator<Item = pb::GetOfflineLicenseRequest>,
) -> FuturesUnordered<JoinHandle<LicenseOutcome>> {
    messages
        .into_iter()
        .map(|message| {
            let channel = channel.clone();
            tokio::spawn(async move { get_license(&channel, message, None).await })
        })
        .collect()
}

/// Waits for EXTRA of `calls` to be shed, releases the upstream, and returns the answers of
/// the other calls.
async fn answers_after_shedding_the_extra(
    upstream: &RawUpstream,
    mut calls: FuturesUnordered<JoinHandle<LicenseOutcome>>,
) -> Vec<pb::OfflineLicense> {
    for _ in 0..EXTRA {
        let outcome = within(Duration::from_secs(60), "a call shed", calls.next())
            .await
            .expect("calls left")
            .expect("call task");
        match outcome {
            Err(status) if is_shed(&status) => {}
            other => panic!("answered while the upstream holds its answer: {other:?}"),
        }
    }
    upstream.release();
    let mut answers = Vec::new();
    while let Some(outcome) = calls.next().await {
        answers.push(
            outcome
                .expect("call task")
                .expect("a call inside the limit succeeds"),
        );
    }
    answers
}

#[tokio::test]
async fn identical_concurrent_calls_share_one_upstream_request() {
    let upstream = RawUpstream::start(Behaviour::LicenseOnceReleased).await;
    let (_token, facade) = facade_at(&upstream.base(), coalescing_limit).await;

    let calls = spawn_calls(
        &facade.channel,
        (0..LIMIT + EXTRA).map(|_| license_request()),
    );
    let answers = answers_after_shedding_the_extra(&upstream, calls).await;
    assert_eq!(answers.len(), LIMIT);
    for answer in &answers {
        assert_eq!(answer, &answers[0]);
    }
    assert_eq!(answers[0].license_blob, license_body()["licenseBlob"]);
    assert_eq!(upstream.heads().len(), 1, "{:#?}", upstream.heads());

    // Nothing is cached: a call after the flight landed makes a new request.
    get_license(&facade.channel, license_request(), None)
        .await
        .unwrap();
    assert_eq!(upstream.heads().len(), 2);
}

#[tokio::test]
async fn identical_calls_for_different_tenants_are_not_shared() {
    const OTHER: &str = "a.onmicrosoft.com";
    let upstream = RawUpstream::start(Behaviour::LicenseOnceReleased).await;
    let (token, facade) = facade_at(&upstream.base(), coalescing_limit).await;

    // Half of the first LIMIT name the other tenant, the rest the default one: at most EXTRA
    // of either are shed, so both tenants have calls inside the limit.
    let messages = (0..LIMIT + EXTRA).map(|i| pb::GetOfflineLicenseRequest {
        tenant_id: if i % 2 == 0 && i < LIMIT {
            OTHER.into()
        } else {
            String::new()
        },
        ..license_request()
    });
    let calls = spawn_calls(&facade.channel, messages);
    let answers = answers_after_shedding_the_extra(&upstream, calls).await;
    assert_eq!(answers.len(), LIMIT);

    let heads = upstream.heads();
    assert_eq!(heads.len(), 2, "one request per tenant: {heads:#?}");
    let bearer = |head: &String| header(head, "authorization").map(str::to_owned);
    assert_ne!(bearer(&heads[0]), bearer(&heads[1]), "one token per tenant");
    let mut tenants: Vec<String> = token
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().split('/').nth(1).unwrap().to_owned())
        .collect();
    tenants.sort();
    assert_eq!(tenants, [OTHER, TENANT]);
}
