//! Fault injection for issue 4: the caller's deadline and cancellation end the upstream
//! request; transient failures (and only those) are retried, within the deadline and a retry
//! budget; per-host circuits open and close; calls beyond the concurrency limit are shed, never
//! queued; identical concurrent calls share one upstream request where the operation coalesces.
//!
//! Every behaviour every operation must have is checked for every row of [`OPERATIONS`], the
//! operations at once, each on upstreams and a facade of its own (see [`for_every_operation`]).
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
use msstore_facade::proto::msstore::v1 as pb;
use msstore_facade::resilience::ResilienceConfig;
use msstore_facade::upstream::Host;
use pb::store_keys_client::StoreKeysClient;
use serde_json::Value;
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
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// How long a test waits for something that takes milliseconds when all is well.
const GENEROUS: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Calls and their outcomes.

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

/// The call (of `what`) failed with `code` and ErrorInfo `reason`.
#[track_caller]
fn expect_failure<T: std::fmt::Debug>(
    what: impl std::fmt::Debug,
    outcome: Result<T, Status>,
    code: Code,
    reason: &str,
) -> Status {
    let status = match outcome {
        Ok(answer) => panic!("{what:?}: the call must fail: {answer:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{what:?}: {status:?}");
    assert_eq!(error_info(&status).reason, reason, "{what:?}: {status:?}");
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

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 upstream.

/// What the raw upstream does with each request it has read.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Never answers: waits for the facade to close the connection (EOF or reset), and
    /// reports that on `closed`.
    NeverAnswer,
    /// Answers 200 with its body (the operation's [`Op::ok_body`]) once released (and at once
    /// after that).
    AnswerOnceReleased,
}

/// A loopback upstream on raw TCP, for what wiremock cannot show: whether the facade closed a
/// connection whose request is still unanswered, and answers held until the test says so.
struct RawUpstream {
    addr: SocketAddr,
    /// The body of its 200 answers.
    body: Value,
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
    /// An upstream of `op` (whose 200 answers carry its [`Op::ok_body`]).
    async fn start(op: &Op, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = (op.ok_body)();
        let answer: Arc<str> = body.to_string().into();
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
                    answer.clone(),
                    recorded.clone(),
                    received_tx.clone(),
                    closed_tx.clone(),
                    held.clone(),
                ));
            }
        });
        Self {
            addr,
            body,
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
    body: Arc<str>,
    heads: Arc<Mutex<Vec<String>>>,
    received: mpsc::UnboundedSender<()>,
    closed: mpsc::UnboundedSender<()>,
    mut held: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        heads.lock().unwrap().push(request.head);
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
            Behaviour::AnswerOnceReleased => {
                if held.wait_for(|held| !*held).await.is_err() {
                    return;
                }
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

// ---------------------------------------------------------------------------------------------
// Deadlines and cancellation.

/// Resilience settings under which only the caller's deadline can end a call: the per-attempt
/// timeout and the default deadline are far away.
fn only_the_callers_deadline(r: &mut ResilienceConfig) {
    r.upstream_timeout = Duration::from_secs(600);
    r.default_deadline = Duration::from_secs(600);
}

#[tokio::test]
async fn caller_deadline_answers_deadline_exceeded_and_drops_the_upstream_request() {
    for_every_operation(|op| async move {
        let mut upstream = RawUpstream::start(op, Behaviour::NeverAnswer).await;
        let (_token, facade) = facade_at(&upstream.base(), only_the_callers_deadline).await;
        let started = Instant::now();
        let timeout = Some(Duration::from_secs(1));
        let outcome = (op.call)(facade.channel.clone(), timeout, 0).await;
        // The facade's own answer: tonic's timer would answer CANCELLED without ErrorInfo.
        expect_failure(op, outcome, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
        assert!(
            started.elapsed() < GENEROUS,
            "{op:?}: {:?}",
            started.elapsed()
        );
        upstream.request_received().await;
        upstream.connection_closed().await;
        assert_eq!(
            upstream.heads().len(),
            1,
            "{op:?}: a timed-out call is not retried"
        );
    })
    .await;
}

/// A call of `op` with the caller's deadline `timeout`, to a facade whose `--max-deadline` is
/// 1 s, against an upstream that never answers, ends with DEADLINE_EXCEEDED after the cap (the
/// budget it names), not after `timeout`, and drops the upstream request.
async fn the_capped_deadline_ends_the_call(op: &'static Op, timeout: Duration) {
    let mut upstream = RawUpstream::start(op, Behaviour::NeverAnswer).await;
    let (_token, facade) = facade_at(&upstream.base(), |r| {
        only_the_callers_deadline(r);
        r.max_deadline = Duration::from_secs(1);
    })
    .await;
    let call = (op.call)(facade.channel.clone(), Some(timeout), 0);
    let outcome = within(GENEROUS, "the capped deadline", call).await;
    let status = expect_failure(op, outcome, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(status.message().contains("1000 ms"), "{op:?}: {status:?}");
    upstream.request_received().await;
    upstream.connection_closed().await;
}

#[tokio::test]
async fn a_caller_deadline_above_max_deadline_is_capped_to_it() {
    for_every_operation(|op| the_capped_deadline_ends_the_call(op, Duration::from_secs(30))).await;
}

#[tokio::test]
async fn an_absurd_caller_deadline_is_capped_not_a_panic() {
    // 99999999H, the largest grpc-timeout there is (about 11,000 years).
    const ABSURD: Duration = Duration::from_secs(99_999_999 * 3600);
    for_every_operation(|op| async move {
        // The call works...
        let h = Harness::start().await;
        op.mount(&h, op.ok()).await;
        let call = (op.call)(h.facade.channel.clone(), Some(ABSURD), 0);
        within(GENEROUS, "a call with a 99999999H deadline", call)
            .await
            .unwrap_or_else(|s| panic!("{op:?}: {s:?}"));
        assert_eq!(Harness::requests(op.store(&h)).await.len(), 1, "{op:?}");
        // ...under the capped deadline, which still ends it.
        the_capped_deadline_ends_the_call(op, ABSURD).await;
    })
    .await;
}

#[tokio::test]
async fn without_a_caller_deadline_the_default_deadline_applies() {
    for_every_operation(|op| async move {
        let mut upstream = RawUpstream::start(op, Behaviour::NeverAnswer).await;
        let (_token, facade) = facade_at(&upstream.base(), |r| {
            r.upstream_timeout = Duration::from_secs(600);
            r.default_deadline = Duration::from_secs(1);
        })
        .await;
        let call = (op.call)(facade.channel.clone(), None, 0);
        let outcome = within(GENEROUS, "the default deadline", call).await;
        let status = expect_failure(op, outcome, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
        assert!(status.message().contains("1000 ms"), "{op:?}: {status:?}");
        upstream.request_received().await;
        upstream.connection_closed().await;
    })
    .await;
}

#[tokio::test]
async fn the_per_attempt_upstream_timeout_ends_a_silent_attempt() {
    for_every_operation(|op| async move {
        let mut upstream = RawUpstream::start(op, Behaviour::NeverAnswer).await;
        let (_token, facade) = facade_at(&upstream.base(), |r| {
            r.upstream_timeout = Duration::from_millis(500);
            r.default_deadline = Duration::from_secs(600);
        })
        .await;
        let call = (op.call)(facade.channel.clone(), None, 0);
        let outcome = within(GENEROUS, "the per-attempt timeout", call).await;
        let status = expect_failure(op, outcome, Code::Unavailable, "UPSTREAM_TIMEOUT");
        assert!(retry_delay(&status).is_some(), "{op:?}: {status:?}");
        upstream.request_received().await;
        upstream.connection_closed().await;
    })
    .await;
}

#[tokio::test]
async fn caller_cancellation_drops_the_upstream_request() {
    for_every_operation(|op| async move {
        let mut upstream = RawUpstream::start(op, Behaviour::NeverAnswer).await;
        let (_token, facade) = facade_at(&upstream.base(), only_the_callers_deadline).await;
        let call = tokio::spawn((op.call)(facade.channel.clone(), None, 0));
        upstream.request_received().await;
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled(), "{op:?}");
        upstream.connection_closed().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Retries.

#[tokio::test]
async fn transient_statuses_are_retried_with_consecutive_correlation_vectors() {
    for_every_operation(|op| async move {
        let h = Harness::start().await;
        for &status in op.retried {
            let case = format!("{op:?}: HTTP {status} then 200");
            op.store(&h).reset().await;
            op.mount_once(&h, ResponseTemplate::new(status)).await;
            let body = (op.ok_body)();
            op.mount(&h, ResponseTemplate::new(200).set_body_json(&body))
                .await;
            let timeout = Some(Duration::from_secs(10));
            let answer = (op.answer)(h.facade.channel.clone(), timeout, 0)
                .await
                .unwrap_or_else(|s| panic!("{case}: {s:?}"));
            assert_eq!(answer.echoed, (op.echoed)(&body), "{case}");
            let requests = Harness::requests(op.store(&h)).await;
            assert_eq!(requests.len(), 2, "{case}");
            assert_consecutive_ms_cv(&requests);
            // Retried on the operation's own host, and nowhere else.
            for host in Host::all().filter(|host| *host != op.host) {
                let elsewhere = Harness::requests(h.store(host)).await;
                assert!(elsewhere.is_empty(), "{case}: requests to {host:?}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn connect_errors_are_retried() {
    // Attempts to a closed port cannot be counted at the port, but the circuit breaker counts
    // them: with a threshold of 3, one call opens the circuit only if it made 3 attempts.
    let circuit_of_three = |attempts: u32| {
        move |r: &mut ResilienceConfig| {
            r.max_attempts = attempts;
            r.circuit_failures = 3;
            r.circuit_open_for = Duration::from_secs(600);
            r.retry_base_delay = Duration::from_millis(1);
        }
    };
    for_every_operation(|op| async move {
        let closed = closed_port_url();
        let (_token, retrying) = facade_at(&closed, circuit_of_three(3)).await;
        let first = (op.call)(retrying.channel.clone(), None, 0).await;
        expect_failure(op, first, Code::Unavailable, "UPSTREAM_UNREACHABLE");
        let second = (op.call)(retrying.channel.clone(), None, 0).await;
        expect_failure(op, second, Code::Unavailable, "CIRCUIT_OPEN");

        // The control: without retries, one call is one failure, and the circuit stays closed.
        let (_token, single) = facade_at(&closed, circuit_of_three(1)).await;
        for _ in 0..2 {
            let outcome = (op.call)(single.channel.clone(), None, 0).await;
            expect_failure(op, outcome, Code::Unavailable, "UPSTREAM_UNREACHABLE");
        }
    })
    .await;
}

#[tokio::test]
async fn retry_after_that_fits_the_deadline_is_honoured() {
    // Retry-After 1 is within the default --max-retry-wait of 2 s: the facade waits it out.
    for_every_operation(|op| async move {
        let h = Harness::start().await;
        let throttled = ResponseTemplate::new(429).insert_header("Retry-After", "1");
        op.mount_once(&h, throttled).await;
        op.mount(&h, op.ok()).await;
        let started = Instant::now();
        (op.call)(h.facade.channel.clone(), Some(Duration::from_secs(10)), 0)
            .await
            .unwrap_or_else(|s| panic!("{op:?}: {s:?}"));
        // A lower bound only: the facade waited the second the Store asked for.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(990), "{op:?}: {elapsed:?}");
        assert_eq!(Harness::requests(op.store(&h)).await.len(), 2, "{op:?}");
    })
    .await;
}

#[tokio::test]
async fn retry_after_beyond_the_deadline_is_handed_back_at_once() {
    for_every_operation(|op| async move {
        let h = Harness::start().await;
        op.mount(
            &h,
            ResponseTemplate::new(429).insert_header("Retry-After", "30"),
        )
        .await;
        // Waiting 30 s would run out the 2 s deadline: DEADLINE_EXCEEDED instead of this.
        let outcome = (op.call)(h.facade.channel.clone(), Some(Duration::from_secs(2)), 0).await;
        let status = outcome.expect_err("the Store throttles");
        assert_eq!(status.code(), Code::ResourceExhausted, "{op:?}: {status:?}");
        assert_eq!(
            retry_delay(&status),
            Some(Duration::from_secs(30)),
            "{op:?}"
        );
        assert_eq!(Harness::requests(op.store(&h)).await.len(), 1, "{op:?}");
    })
    .await;
}

#[tokio::test]
async fn retry_after_beyond_max_retry_wait_is_handed_back_at_once() {
    // Retry-After 7 fits the 30 s deadline, but is above the default --max-retry-wait of 2 s:
    // the facade does not sit on it (holding a place under the call limit), the caller does.
    for_every_operation(|op| async move {
        let h = Harness::start().await;
        let mut cases = vec![(429, Code::ResourceExhausted)];
        if op.retried.contains(&503) {
            cases.push((503, Code::Unavailable));
        }
        for (http_status, code) in cases {
            let case = format!("{op:?}: HTTP {http_status} with Retry-After: 7");
            op.store(&h).reset().await;
            let waiting = ResponseTemplate::new(http_status).insert_header("Retry-After", "7");
            op.mount(&h, waiting).await;
            let started = Instant::now();
            let outcome = (op.call)(h.facade.channel.clone(), Some(Duration::from_secs(30)), 0);
            let status = outcome.await.expect_err("the Store asks to wait");
            let elapsed = started.elapsed();
            assert!(elapsed < Duration::from_secs(5), "{case}: {elapsed:?}");
            assert_eq!(status.code(), code, "{case}: {status:?}");
            assert_eq!(retry_delay(&status), Some(Duration::from_secs(7)), "{case}");
            assert_eq!(Harness::requests(op.store(&h)).await.len(), 1, "{case}");
        }
    })
    .await;
}

#[tokio::test]
async fn other_failures_are_never_retried() {
    for_every_operation(|op| async move {
        let h = Harness::start().await;
        let mut cases = vec![
            (400, Code::InvalidArgument),
            (404, Code::NotFound),
            (409, op.conflict),
            // A 429 without Retry-After: nothing says when a retry could succeed.
            (429, Code::ResourceExhausted),
            (500, Code::Internal),
            (501, Code::Unimplemented),
        ];
        // Transient statuses after which the operation is not retried (section 7: not
        // idempotent) are UNAVAILABLE, sent once.
        cases.extend(
            TRANSIENT_STATUSES
                .iter()
                .filter(|status| !op.retried.contains(status))
                .map(|&status| (status, Code::Unavailable)),
        );
        for (http_status, code) in cases {
            op.store(&h).reset().await;
            op.mount(&h, ResponseTemplate::new(http_status)).await;
            let status = op.fail(&h.facade.channel).await;
            assert_eq!(status.code(), code, "{op:?} HTTP {http_status}: {status:?}");
            assert_eq!(
                Harness::requests(op.store(&h)).await.len(),
                1,
                "{op:?}: HTTP {http_status} was retried"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_failure_storm_is_capped_by_the_retry_budget() {
    const CALLS: usize = 200;
    const CONCURRENCY: usize = 10;
    const MIN_PER_SEC: usize = 1;
    for_every_operation(|op| async move {
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
        op.mount(&h, ResponseTemplate::new(503)).await;

        let started = Instant::now();
        let channel = h.facade.channel.clone();
        // Distinct requests (variants 1 to CALLS), so that none is coalesced.
        let outcomes: Vec<Result<(), Status>> = futures_util::stream::iter(1..=CALLS as u32)
            .map(|variant| (op.call)(channel.clone(), None, variant))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let elapsed = started.elapsed();
        for outcome in outcomes {
            expect_failure(op, outcome, Code::Unavailable, "SERVICE_UNAVAILABLE");
        }

        // Without a budget every call would make 3 attempts: 600 requests. The budget is
        // tower's TpsBudget over a 10 s window: each call deposits 1, each retry withdraws 5
        // (= 1 / 20%), and a reserve of MIN_PER_SEC * 10 s * 5 is added, so a retry is allowed
        // only while reserve + deposits - 5 * retries stays >= 0: retries <= 10 + CALLS / 5
        // per window, so at most CALLS + CALLS / 5 + 10 = 250 requests (exactly what a fast
        // run sends). A run slower than the window gets its reserve again per window (counted
        // generously as one per 9 s, for the window's 1 s slots); 5 more for slack.
        let windows = 1 + (elapsed.as_secs() / 9) as usize;
        let cap = CALLS + CALLS / 5 + MIN_PER_SEC * 10 * windows + 5;
        let sent = Harness::requests(op.store(&h)).await.len();
        assert!(
            sent <= cap,
            "{op:?}: {sent} upstream requests for {CALLS} calls in {elapsed:?}: above the \
             budget's {cap}"
        );
        eprintln!(
            "{op:?}: {CALLS} failing calls: {sent} upstream requests (cap {cap}) in {elapsed:?}"
        );
        // And the reserve alone guarantees some retries were made.
        assert!(
            sent >= CALLS + 10,
            "{op:?}: {sent} upstream requests: no retries?"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Circuit breaking.

#[tokio::test]
async fn the_circuit_opens_after_consecutive_failures_and_closes_after_a_probe() {
    // Long enough that the call right after the third failure surely finds it open, even on a
    // loaded machine; short enough to wait out.
    const OPEN_FOR: Duration = Duration::from_secs(1);
    for_every_operation(|op| async move {
        let h = Harness::builder()
            .resilience(|r| {
                r.circuit_failures = 3;
                r.circuit_open_for = OPEN_FOR;
                r.max_attempts = 1;
            })
            .start()
            .await;
        h.mount_token(3599).await;
        op.mount(&h, ResponseTemplate::new(503)).await;
        let channel = &h.facade.channel;
        let call = || (op.call)(channel.clone(), None, 0);
        let upstream_requests = || async { Harness::requests(op.store(&h)).await.len() };

        for _ in 0..3 {
            expect_failure(op, call().await, Code::Unavailable, "SERVICE_UNAVAILABLE");
        }
        assert_eq!(upstream_requests().await, 3, "{op:?}");

        let status = expect_failure(op, call().await, Code::Unavailable, "CIRCUIT_OPEN");
        let delay = retry_delay(&status).expect("RetryInfo on CIRCUIT_OPEN");
        assert!(
            delay > Duration::ZERO && delay <= OPEN_FOR,
            "{op:?}: {delay:?}"
        );
        assert_eq!(
            upstream_requests().await,
            3,
            "{op:?}: an open circuit sends nothing"
        );

        // The facade itself stays healthy while a Store host fails (README, "Health
        // meanwhile").
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(health.status(), ServingStatus::Serving, "{op:?}");

        op.store(&h).reset().await;
        op.mount(&h, op.ok()).await;
        eventually(
            "a probe closing the circuit",
            Duration::from_secs(60),
            || async {
                match call().await {
                    Ok(()) => Some(()),
                    Err(status) => {
                        let reason = error_info(&status).reason;
                        assert_eq!(reason, "CIRCUIT_OPEN", "{op:?}: {status:?}");
                        None
                    }
                }
            },
        )
        .await;
        assert_eq!(
            upstream_requests().await,
            1,
            "{op:?}: only the probe went upstream"
        );
        for expected in 2..=4 {
            call().await.unwrap_or_else(|s| panic!("{op:?}: {s:?}"));
            assert_eq!(upstream_requests().await, expected, "{op:?}");
        }
    })
    .await;
}

/// Resilience settings where three failures open a circuit for good (for the test).
fn circuit_of_three_for_good(r: &mut ResilienceConfig) {
    r.circuit_failures = 3;
    r.circuit_open_for = Duration::from_secs(600);
    r.max_attempts = 1;
}

/// Every operation is called once through `h`, which has every operation's upstream answer
/// 200: those on `open` (a host whose circuit is open) fail fast with CIRCUIT_OPEN and send
/// nothing, every other one succeeds with one request to its host.
async fn only_the_open_host_fails_fast(h: &Harness, open: Host) {
    for other in OPERATIONS {
        let before = Harness::requests(other.store(h)).await.len();
        let outcome = (other.call)(h.facade.channel.clone(), None, 0).await;
        let sent = Harness::requests(other.store(h)).await.len() - before;
        if other.host == open {
            expect_failure(other, outcome, Code::Unavailable, "CIRCUIT_OPEN");
            assert_eq!(sent, 0, "{other:?} on the open host {open:?}");
        } else {
            outcome.unwrap_or_else(|s| panic!("{other:?} with {open:?} open: {s:?}"));
            assert_eq!(sent, 1, "{other:?} with {open:?} open");
        }
    }
}

#[tokio::test]
async fn an_open_circuit_on_one_host_leaves_the_other_hosts_alone() {
    // One operation on two hosts: RenewKey of a purchase key opens the purchase host's circuit,
    // and RenewKey of a collections key (the table's row) still goes through.
    let h = Harness::builder()
        .resilience(circuit_of_three_for_good)
        .start()
        .await;
    h.mount_token(3599).await;
    mount_renew_on(&h.purchase, ResponseTemplate::new(503)).await;
    for op in OPERATIONS {
        op.mount(&h, op.ok()).await;
    }
    let channel = &h.facade.channel;

    for _ in 0..3 {
        let outcome = renew(channel, purchase_key()).await;
        expect_failure(
            "purchase",
            outcome,
            Code::Unavailable,
            "SERVICE_UNAVAILABLE",
        );
    }
    let outcome = renew(channel, purchase_key()).await;
    expect_failure("purchase", outcome, Code::Unavailable, "CIRCUIT_OPEN");
    assert_eq!(Harness::requests(&h.purchase).await.len(), 3);

    only_the_open_host_fails_fast(&h, Host::Purchase).await;
    let outcome = renew(channel, purchase_key()).await;
    expect_failure("purchase", outcome, Code::Unavailable, "CIRCUIT_OPEN");
}

#[tokio::test]
async fn an_operations_failures_open_its_hosts_circuit_only() {
    for_every_operation(|op| async move {
        let h = Harness::builder()
            .resilience(circuit_of_three_for_good)
            .start()
            .await;
        h.mount_token(3599).await;
        op.mount(&h, ResponseTemplate::new(503)).await;
        for other in OPERATIONS.iter().filter(|other| other.host != op.host) {
            other.mount(&h, other.ok()).await;
        }
        for _ in 0..3 {
            let outcome = (op.call)(h.facade.channel.clone(), None, 0).await;
            expect_failure(op, outcome, Code::Unavailable, "SERVICE_UNAVAILABLE");
        }
        only_the_open_host_fails_fast(&h, op.host).await;
        assert_eq!(Harness::requests(op.store(&h)).await.len(), 3, "{op:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Overload.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_against_a_small_limit_are_all_answered_and_the_excess_shed() {
    // The limit is the facade's, over every operation: the calls take turns over the table.
    const CALLS: usize = 10_000;
    const LIMIT: usize = 8;
    const CHANNELS: usize = 10;
    let h = Harness::builder()
        .resilience(|r| r.max_concurrent_calls = LIMIT)
        .start()
        .await;
    h.mount_token(3599).await;
    for op in OPERATIONS {
        op.mount(&h, op.ok().set_delay(Duration::from_millis(100)))
            .await;
    }
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
    let calls: FuturesUnordered<JoinHandle<(usize, Result<(), Status>)>> = (0..CALLS)
        .map(|i| {
            let row = i % OPERATIONS.len();
            let channel = channels[(i / OPERATIONS.len()) % CHANNELS].clone();
            // Distinct requests (variants 1 to CALLS), so that none is coalesced.
            let call = (OPERATIONS[row].call)(channel, None, 1 + i as u32);
            tokio::spawn(async move { (row, call.await) })
        })
        .collect();
    let outcomes: Vec<_> = within(
        Duration::from_secs(300),
        "10,000 calls answered",
        calls.collect::<Vec<_>>(),
    )
    .await;
    let elapsed = started.elapsed();

    let mut answered = vec![0; OPERATIONS.len()];
    let mut shed = vec![0; OPERATIONS.len()];
    for outcome in outcomes {
        match outcome.expect("call task") {
            (row, Ok(())) => answered[row] += 1,
            (row, Err(status)) if is_shed(&status) => shed[row] += 1,
            (row, Err(status)) => panic!(
                "{:?}: neither answered nor shed cleanly: {status:?}",
                OPERATIONS[row]
            ),
        }
    }
    let (ok, shed_total) = (answered.iter().sum::<usize>(), shed.iter().sum::<usize>());
    assert_eq!(ok + shed_total, CALLS);
    assert!(ok >= LIMIT, "{ok} answered, {shed_total} shed");
    assert!(shed_total > 0, "{ok} answered, {shed_total} shed");
    for (row, op) in OPERATIONS.iter().enumerate() {
        let (ok, shed) = (answered[row], shed[row]);
        assert!(ok > 0 && shed > 0, "{op:?}: {ok} answered, {shed} shed");
    }
    for host in Host::all() {
        let answered_here: usize = OPERATIONS
            .iter()
            .zip(&answered)
            .filter(|(op, _)| op.host == host)
            .map(|(_, ok)| ok)
            .sum();
        assert_eq!(
            Harness::requests(h.store(host)).await.len(),
            answered_here,
            "{host:?}: every answered call made one upstream request, every shed call none"
        );
    }
    eprintln!(
        "{CALLS} calls: {ok} answered ({answered:?}), {shed_total} shed ({shed:?}), in \
         {elapsed:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Coalescing, of the operations that coalesce ([`Op::coalesces`]).
//
// The upstream holds its answers until the test releases them. To know that every call has
// joined a flight before releasing, the concurrency limit is set to the number of calls that
// must join, and EXTRA more calls are sent: a call takes its place under the limit and joins
// (or starts) its flight in the same poll, and no call can finish while the upstream holds its
// answer, so once EXTRA calls have been shed, exactly LIMIT calls are inside, joined.

const LIMIT: usize = 100;
const EXTRA: usize = 20;

/// Runs `check` for every operation that coalesces, at once.
async fn for_every_coalescing_operation<Fut>(check: impl FnMut(&'static Op) -> Fut)
where
    Fut: Future<Output = ()>,
{
    for_each_at_once(OPERATIONS.iter().filter(|op| op.coalesces), check).await;
}

/// Room for LIMIT calls; no timeout can end a held flight while the test waits for sheds.
fn coalescing_limit(r: &mut ResilienceConfig) {
    r.max_concurrent_calls = LIMIT;
    r.upstream_timeout = Duration::from_secs(600);
    r.default_deadline = Duration::from_secs(600);
}

/// Starts every call of `calls` at once, each in its own task.
fn spawn_calls<T: Send + 'static>(
    calls: impl IntoIterator<Item = futures_util::future::BoxFuture<'static, Result<T, Status>>>,
) -> FuturesUnordered<JoinHandle<Result<T, Status>>> {
    calls.into_iter().map(tokio::spawn).collect()
}

/// Waits for EXTRA of `calls` to be shed, releases the upstream, and returns the answers of
/// the other calls.
async fn answers_after_shedding_the_extra<T: std::fmt::Debug>(
    upstream: &RawUpstream,
    mut calls: FuturesUnordered<JoinHandle<Result<T, Status>>>,
) -> Vec<T> {
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
    for_every_coalescing_operation(|op| async move {
        let upstream = RawUpstream::start(op, Behaviour::AnswerOnceReleased).await;
        let (_token, facade) = facade_at(&upstream.base(), coalescing_limit).await;

        let calls =
            spawn_calls((0..LIMIT + EXTRA).map(|_| (op.answer)(facade.channel.clone(), None, 0)));
        let answers = answers_after_shedding_the_extra(&upstream, calls).await;
        assert_eq!(answers.len(), LIMIT, "{op:?}");
        for answer in &answers {
            assert_eq!(answer, &answers[0], "{op:?}");
        }
        assert_eq!(answers[0].echoed, (op.echoed)(&upstream.body), "{op:?}");
        assert_eq!(upstream.heads().len(), 1, "{op:?}: {:#?}", upstream.heads());

        // Nothing is cached: a call after the flight landed makes a new request.
        (op.call)(facade.channel.clone(), None, 0)
            .await
            .unwrap_or_else(|s| panic!("{op:?}: {s:?}"));
        assert_eq!(upstream.heads().len(), 2, "{op:?}");
    })
    .await;
}

#[tokio::test]
async fn identical_calls_for_different_tenants_are_not_shared() {
    const OTHER: &str = "a.onmicrosoft.com";
    for_every_coalescing_operation(|op| async move {
        let Some(call_for_tenant) = op.call_for_tenant else {
            return;
        };
        let upstream = RawUpstream::start(op, Behaviour::AnswerOnceReleased).await;
        let (token, facade) = facade_at(&upstream.base(), coalescing_limit).await;

        // Half of the first LIMIT name the other tenant, the rest the default one: at most
        // EXTRA of either are shed, so both tenants have calls inside the limit.
        let calls = spawn_calls((0..LIMIT + EXTRA).map(|i| {
            if i % 2 == 0 && i < LIMIT {
                call_for_tenant(facade.channel.clone(), OTHER)
            } else {
                (op.call)(facade.channel.clone(), None, 0)
            }
        }));
        let answers = answers_after_shedding_the_extra(&upstream, calls).await;
        assert_eq!(answers.len(), LIMIT, "{op:?}");

        let heads = upstream.heads();
        assert_eq!(heads.len(), 2, "{op:?}: one request per tenant: {heads:#?}");
        let bearer = |head: &String| header(head, "authorization").map(str::to_owned);
        assert_ne!(
            bearer(&heads[0]),
            bearer(&heads[1]),
            "{op:?}: one token per tenant"
        );
        let mut tenants: Vec<String> = token
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r| r.url.path().split('/').nth(1).unwrap().to_owned())
            .collect();
        tenants.sort();
        assert_eq!(tenants, [OTHER, TENANT], "{op:?}");
    })
    .await;
}
