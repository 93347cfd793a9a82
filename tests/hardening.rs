//! What no caller or upstream can make the facade do (contract, section 6): open a host's
//! circuit for everyone with answers a caller's input provokes, or panic on absurd numbers
//! (token lifetimes, `Retry-After`, key claims). Absurd numbers are clamped; each call still
//! gets a clean answer, never a reset stream.
//!
//! What applies to every operation is checked for every row of [`OPERATIONS`], the operations
//! at once, each on upstreams and a facade of its own (see [`for_every_operation`]).

mod common;

use std::time::Duration;

use common::*;
use msstore_facade::proto::msstore::v1 as pb;
use serde_json::{json, Value};
use tonic::Code;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, ResponseTemplate};

/// The longest `Retry-After` the facade believes, and so the longest RetryInfo it answers.
const A_DAY: Duration = Duration::from_secs(24 * 3600);

/// The range of a valid `google.protobuf.Timestamp`: 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59Z, in seconds since the Unix epoch.
const EARLIEST: i64 = -62_135_596_800;
const LATEST: i64 = 253_402_300_799;

/// The latest date an HTTP date can name.
const FAR_FUTURE_DATE: &str = "Fri, 31 Dec 9999 23:59:59 GMT";

/// A facade whose circuits open after three host failures and stay open (for the test), and
/// which never retries.
async fn circuit_of_three() -> Harness {
    let h = Harness::builder()
        .resilience(|r| {
            r.circuit_failures = 3;
            r.circuit_open_for = Duration::from_secs(600);
            r.max_attempts = 1;
        })
        .start()
        .await;
    h.mount_token(3599).await;
    h
}

/// Calls `op` (as variant `variant`), which must fail with `code`; returns the reason.
async fn fails_with(op: &Op, h: &Harness, variant: u32, code: Code) -> String {
    let status = match (op.call)(h.facade.channel.clone(), None, variant).await {
        Ok(()) => panic!("{op:?}: the call must fail"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{op:?}: {status:?}");
    error_info(&status).reason
}

#[tokio::test]
async fn answers_a_caller_can_provoke_never_open_the_circuit_but_host_failures_do() {
    for_every_operation(|op| async move {
        let h = circuit_of_three().await;
        let sent = || async { Harness::requests(op.store(&h)).await.len() };

        // 25 calls provoking a 500 (then a few 400, 404 and 501): far more than the three
        // failures that open the circuit, and every one reaches the upstream.
        let provoked = [(500, Code::Internal, 25), (400, Code::InvalidArgument, 5)]
            .into_iter()
            .chain([(404, Code::NotFound, 5), (501, Code::Unimplemented, 5)]);
        let mut calls = 0;
        for (http_status, code, times) in provoked {
            op.store(&h).reset().await;
            op.mount(&h, ResponseTemplate::new(http_status)).await;
            for _ in 0..times {
                calls += 1;
                let reason = fails_with(op, &h, calls, code).await;
                assert_ne!(reason, "CIRCUIT_OPEN", "{op:?}: HTTP {http_status}");
            }
            assert_eq!(sent().await, times as usize, "{op:?}: HTTP {http_status}");
        }

        op.store(&h).reset().await;
        op.mount(&h, op.ok()).await;
        (op.call)(h.facade.channel.clone(), None, 0)
            .await
            .unwrap_or_else(|s| panic!("{op:?}: the circuit must be closed: {s:?}"));
        assert_eq!(sent().await, 1, "{op:?}");

        // While three failures of the host itself do open it.
        op.store(&h).reset().await;
        op.mount(&h, ResponseTemplate::new(503)).await;
        for variant in 0..3 {
            let reason = fails_with(op, &h, variant, Code::Unavailable).await;
            assert_eq!(reason, "SERVICE_UNAVAILABLE", "{op:?}");
        }
        let reason = fails_with(op, &h, 3, Code::Unavailable).await;
        assert_eq!(reason, "CIRCUIT_OPEN", "{op:?}");
        assert_eq!(sent().await, 3, "{op:?}: an open circuit sends nothing");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Token lifetimes.

/// The token endpoint answers every request with a new token whose `expires_in` is
/// `expires_in`, as given (a JSON number or string, however absurd).
async fn mount_token_expiring(h: &Harness, expires_in: Value) {
    Mock::given(method("POST"))
        .and(path_regex(r"^/[^/]+/oauth2/v2\.0/token$"))
        .respond_with(issued_tokens(expires_in))
        .mount(&h.token)
        .await;
}

#[tokio::test]
async fn absurd_token_lifetimes_give_working_calls_and_a_cached_token() {
    for_every_operation(|op| async move {
        for expires_in in [
            json!(u64::MAX),
            json!(u64::MAX.to_string()),
            json!("1e300"),
            json!(-1),
            json!(0),
            json!("0"),
        ] {
            let h = Harness::builder().start().await;
            mount_token_expiring(&h, expires_in.clone()).await;
            op.mount(&h, op.ok()).await;
            const CALLS: u32 = 3;
            for variant in 0..CALLS {
                (op.call)(h.facade.channel.clone(), None, variant)
                    .await
                    .unwrap_or_else(|s| panic!("{op:?}, expires_in {expires_in}: {s:?}"));
            }
            // A huge lifetime is cut to a day, still cached; none at all is cached briefly
            // (README, "Errors"), never re-requested for every call.
            let requested = h.token_requests().await.len();
            assert!(
                (1..CALLS as usize).contains(&requested),
                "{op:?}, expires_in {expires_in}: {requested} token requests for {CALLS} calls"
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Retry-After.

#[tokio::test]
async fn absurd_retry_after_is_answered_as_at_most_a_day() {
    for_every_operation(|op| async move {
        let h = Harness::start().await;
        let cases = [
            (429, "18446744073709551615", Code::ResourceExhausted),
            (503, "18446744073709551615", Code::Unavailable),
            (
                429,
                "99999999999999999999999999999",
                Code::ResourceExhausted,
            ),
            (429, FAR_FUTURE_DATE, Code::ResourceExhausted),
            (503, FAR_FUTURE_DATE, Code::Unavailable),
        ];
        for (variant, (http_status, retry_after, code)) in (0..).zip(cases) {
            let case = format!("{op:?}: HTTP {http_status}, Retry-After {retry_after}");
            op.store(&h).reset().await;
            op.mount(
                &h,
                ResponseTemplate::new(http_status).insert_header("Retry-After", retry_after),
            )
            .await;
            let status = match (op.call)(h.facade.channel.clone(), None, variant).await {
                Ok(()) => panic!("{case}: the call must fail"),
                Err(status) => status,
            };
            assert_eq!(status.code(), code, "{case}: {status:?}");
            assert_eq!(retry_delay(&status), Some(A_DAY), "{case}");
            // Far longer than any deadline: answered at once, not waited out.
            assert_eq!(Harness::requests(op.store(&h)).await.len(), 1, "{case}");
        }
    })
    .await;
}

#[tokio::test]
async fn absurd_retry_after_of_the_token_endpoint_is_answered_as_at_most_a_day() {
    for_every_operation(|op| async move {
        for retry_after in ["18446744073709551615", FAR_FUTURE_DATE] {
            let h = Harness::builder().start().await;
            Mock::given(method("POST"))
                .and(path_regex(r"^/[^/]+/oauth2/v2\.0/token$"))
                .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", retry_after))
                .mount(&h.token)
                .await;
            let status = op.fail(&h.facade.channel).await;
            let case = format!("{op:?}: Retry-After {retry_after}");
            assert_eq!(status.code(), Code::Unavailable, "{case}: {status:?}");
            assert_eq!(error_info(&status).reason, "TOKEN_ENDPOINT_UNAVAILABLE");
            assert_eq!(retry_delay(&status), Some(A_DAY), "{case}");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Key claims.

/// A collections key with `iat` and `exp` as given (any JSON number).
fn collections_key_dated(iat: Value, exp: Value) -> String {
    let mut claims = claims(&store_key(COLLECTIONS_AUD, 0, 0));
    claims["iat"] = iat;
    claims["nbf"] = claims["iat"].clone();
    claims["exp"] = exp;
    jwt(&claims)
}

/// The seconds of `timestamp`, which must be a valid `google.protobuf.Timestamp`.
#[track_caller]
fn valid_seconds(timestamp: Option<prost_types::Timestamp>, what: &str) -> i64 {
    let timestamp = timestamp.unwrap_or_else(|| panic!("{what}: no timestamp"));
    assert_eq!(timestamp.nanos, 0, "{what}");
    assert!(
        (EARLIEST..=LATEST).contains(&timestamp.seconds),
        "{what}: {timestamp:?} is not a valid Timestamp"
    );
    timestamp.seconds
}

#[tokio::test]
async fn renewed_keys_with_absurd_dates_are_answered_with_valid_timestamps() {
    let h = Harness::start().await;
    let (max, min) = (json!(i64::MAX), json!(i64::MIN));
    // `refresh_after` is `iat` + 14 days, within the range too.
    let (latest, earliest) = (LATEST, EARLIEST);
    let earliest_refresh = EARLIEST + 14 * 24 * 3600;
    let cases = [
        (max.clone(), max.clone(), latest, latest),
        (min.clone(), min.clone(), earliest_refresh, earliest),
        (max.clone(), min.clone(), latest, earliest),
        (min.clone(), max.clone(), earliest_refresh, latest),
        (json!(u64::MAX), json!(u64::MAX), latest, latest),
        (json!(-1e300), json!(1e300), earliest_refresh, latest),
    ];
    for (iat, exp, refresh_after, expires_at) in cases {
        let case = format!("iat {iat}, exp {exp}");
        let new_key = collections_key_dated(iat.clone(), exp.clone());
        h.collections.reset().await;
        h.mount_renew(ResponseTemplate::new(200).set_body_json(json!({ "key": new_key })))
            .await;
        // The caller's key claims the same absurd dates: the facade still reads its `aud`.
        let renewed = h
            .keys()
            .renew_key(pb::RenewKeyRequest {
                key: collections_key_dated(iat, exp),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("{case}: {s:?}"))
            .into_inner();
        assert_eq!(renewed.key, new_key, "{case}");
        assert_eq!(renewed.key_type(), pb::KeyType::Collections, "{case}");
        assert_eq!(
            valid_seconds(renewed.expires_at, &case),
            expires_at,
            "{case}"
        );
        assert_eq!(
            valid_seconds(renewed.refresh_after, &case),
            refresh_after,
            "{case}"
        );
        assert_eq!(Harness::requests(&h.collections).await.len(), 1, "{case}");
    }
}

// ---------------------------------------------------------------------------------------------
// Token discipline: a caller cannot churn the facade's tokens, nor abort a token request.

/// A facade that never retries transient failures, with a token endpoint issuing hour tokens.
async fn with_tokens() -> Harness {
    let h = Harness::builder()
        .resilience(|r| r.max_attempts = 1)
        .start()
        .await;
    h.mount_token(3599).await;
    h
}

#[tokio::test]
async fn store_401s_force_a_new_token_at_most_once_a_minute() {
    for_every_operation(|op| async move {
        let h = with_tokens().await;
        op.mount(
            &h,
            ResponseTemplate::new(401)
                .set_body_json(service_error("Unauthorized", "AuthenticationTokenInvalid")),
        )
        .await;
        for variant in 0..20 {
            let reason = fails_with(op, &h, variant, Code::Unauthenticated).await;
            assert_eq!(reason, "AUTHENTICATION_TOKEN_INVALID", "{op:?}");
        }
        // Only the first 401 of the minute is retried, with a fresh token.
        assert_eq!(
            Harness::requests(op.store(&h)).await.len(),
            20 + 1,
            "{op:?}"
        );
        assert_eq!(h.token_requests().await.len(), 2, "{op:?}");
    })
    .await;
}

#[tokio::test]
async fn an_entra_rejection_is_remembered_for_the_tenant() {
    for_every_operation(|op| async move {
        let h = Harness::builder().start().await;
        Mock::given(method("POST"))
            .and(path_regex(r"^/[^/]+/oauth2/v2\.0/token$"))
            .respond_with(ResponseTemplate::new(401).set_body_json(json!({
                "error": "invalid_client",
                "error_codes": [7000215],
            })))
            .mount(&h.token)
            .await;
        for variant in 0..20 {
            let reason = fails_with(op, &h, variant, Code::Internal).await;
            assert_eq!(reason, "TOKEN_REQUEST_REJECTED", "{op:?}");
        }
        assert_eq!(h.token_requests().await.len(), 1, "{op:?}");
        assert!(Harness::requests(op.store(&h)).await.is_empty(), "{op:?}");
    })
    .await;
}

#[tokio::test]
async fn callers_that_give_up_do_not_abort_the_token_request() {
    for_every_operation(|op| async move {
        let h = Harness::builder().start().await;
        Mock::given(method("POST"))
            .and(path_regex(r"^/[^/]+/oauth2/v2\.0/token$"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_delay(Duration::from_millis(500))
                    .set_body_json(json!({
                        "token_type": "Bearer",
                        "expires_in": 3599,
                        "access_token": format!("{TOKEN_PREFIX}-1"),
                    })),
            )
            .mount(&h.token)
            .await;
        op.mount(&h, op.ok()).await;
        let impatient = (0..10).map(|variant| {
            (op.call)(
                h.facade.channel.clone(),
                Some(Duration::from_millis(50)),
                variant,
            )
        });
        let given_up = futures_util::future::join_all(impatient).await;
        assert!(given_up.iter().all(Result::is_err), "{op:?}: {given_up:?}");
        (op.call)(h.facade.channel.clone(), Some(Duration::from_secs(10)), 10)
            .await
            .unwrap_or_else(|s| panic!("{op:?}: the late caller must succeed: {s:?}"));
        assert_eq!(h.token_requests().await.len(), 1, "{op:?}");
    })
    .await;
}

/// Reads from `stream` until the server closes it; how long that took.
async fn closed_after(mut stream: tokio::net::TcpStream) -> Duration {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the admin server closes a connection that sends no complete request");
    started.elapsed()
}

#[tokio::test]
async fn admin_clients_that_never_finish_their_headers_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start().await;
    let addr = h.facade.admin_addr;
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (silent, slow, idle) =
        tokio::join!(closed_after(silent), closed_after(slow), closed_after(idle));
    for (what, took) in [
        ("silent", silent),
        ("slow", slow),
        ("idle keep-alive", idle),
    ] {
        assert!(
            took < Duration::from_secs(15),
            "{what} connection held {took:?}"
        );
    }
    // Probes are still answered.
    assert_eq!(h.facade.admin_get("/healthz").await.0, 200);
}
