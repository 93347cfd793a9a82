//! The admin server: `/metrics` parses as Prometheus text and its series move as calls are
//! made, the per-RPC and per-host series of every operation of [`OPERATIONS`]; `/healthz` and
//! `/readyz` answer as probes expect.

mod common;

use std::time::Duration;

use common::*;
use msstore_facade::upstream::Host;
use serde_json::json;
use tonic::Code;
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

/// README, "Metrics": the `upstream` label of a Store host's series.
fn upstream_label(host: Host) -> &'static str {
    match host {
        Host::BusinessStore => "business_store",
        Host::Collections => "collections",
        Host::Purchase => "purchase",
        Host::RefundQueue => "refund_queue",
    }
}

/// `name{service="...",method="..."<extra>}`: a series of `op`.
fn series(name: &str, op: &Op, extra: &str) -> String {
    format!(
        r#"{name}{{service="{}",method="{}"{extra}}}"#,
        op.service, op.method
    )
}

/// The `msstore_rpc_requests_total` series of `op` and gRPC code `code`.
fn requests(op: &Op, code: &str) -> String {
    series(
        "msstore_rpc_requests_total",
        op,
        &format!(r#",code="{code}""#),
    )
}

/// The `service` and `method` labels of `op`.
fn labels(op: &Op) -> [(&'static str, &'static str); 2] {
    [("service", op.service), ("method", op.method)]
}

#[tokio::test]
async fn every_operations_rpc_series_are_registered_at_zero() {
    let h = Harness::start().await;
    let metrics = h.facade.metrics().await;
    for op in OPERATIONS {
        for series in [
            requests(op, "OK"),
            series("msstore_rpc_duration_seconds_count", op, ""),
            series("msstore_rpc_shed_total", op, ""),
        ] {
            assert_eq!(metrics.0.get(&series), Some(&0.0), "{series}");
        }
    }
}

#[tokio::test]
async fn rpc_counts_by_method_and_code_move_with_calls() {
    for_every_operation(|op| async move {
        let h = Harness::start().await;
        op.mount(&h, op.ok()).await;
        let channel = &h.facade.channel;
        let before = h.facade.metrics().await;
        (op.call)(channel.clone(), None, 0)
            .await
            .unwrap_or_else(|s| panic!("{op:?}: {s:?}"));
        let answered = h.facade.metrics().await;
        let bad = (op.call_invalid)(channel.clone()).await.unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{op:?}");
        let after = h.facade.metrics().await;

        let ok = requests(op, "OK");
        assert_eq!(after.get(&ok) - before.get(&ok), 1.0, "{ok}");
        let invalid = requests(op, "INVALID_ARGUMENT");
        assert_eq!(after.get(&invalid) - before.get(&invalid), 1.0, "{invalid}");
        let duration = "msstore_rpc_duration_seconds_count";
        assert_eq!(
            answered.sum(duration, &labels(op)) - before.sum(duration, &labels(op)),
            1.0,
            "{op:?}"
        );
        let upstream = upstream_label(op.host);
        assert_eq!(
            after.sum(
                "msstore_upstream_requests_total",
                &[("upstream", upstream), ("status", "200")]
            ),
            1.0,
            "{op:?}"
        );
        assert_eq!(
            after.sum(
                "msstore_upstream_duration_seconds_count",
                &[("upstream", upstream)]
            ),
            1.0,
            "{op:?}"
        );
        assert_eq!(
            after.sum("msstore_token_requests_total", &[("outcome", "issued")]),
            1.0,
            "{op:?}"
        );
        assert_eq!(
            after.sum("msstore_upstream_requests_total", &[("upstream", "entra")]),
            1.0,
            "{op:?}"
        );
        assert_eq!(after.get("msstore_calls_in_flight"), 0.0, "{op:?}");
    })
    .await;
}

#[tokio::test]
async fn token_cache_hits_are_counted() {
    let h = Harness::start().await;
    h.mount_license(ResponseTemplate::new(200).set_body_json(license_body()))
        .await;
    for _ in 0..3 {
        h.entitlements()
            .get_offline_license(license_request())
            .await
            .unwrap();
    }
    let metrics = h.facade.metrics().await;
    assert_eq!(metrics.sum("msstore_token_requests_total", &[]), 1.0);
    assert_eq!(metrics.get("msstore_token_cache_hits_total"), 2.0);
}

#[tokio::test]
async fn retries_and_upstream_statuses_are_counted() {
    for_every_operation(|op| async move {
        let h = Harness::builder()
            .resilience(|r| r.retry_base_delay = Duration::from_millis(1))
            .start()
            .await;
        h.mount_token(3599).await;
        op.mount_once(&h, ResponseTemplate::new(503)).await;
        op.mount(&h, op.ok()).await;
        (op.call)(h.facade.channel.clone(), None, 0)
            .await
            .unwrap_or_else(|s| panic!("{op:?}: {s:?}"));
        let metrics = h.facade.metrics().await;
        let upstream = upstream_label(op.host);
        assert_eq!(
            metrics.get(&format!(
                r#"msstore_upstream_retries_total{{upstream="{upstream}"}}"#
            )),
            1.0,
            "{op:?}"
        );
        let on_its_host = |status| [("upstream", upstream), ("status", status)];
        assert_eq!(
            metrics.sum("msstore_upstream_requests_total", &on_its_host("503")),
            1.0,
            "{op:?}"
        );
        assert_eq!(
            metrics.sum("msstore_upstream_requests_total", &on_its_host("200")),
            1.0,
            "{op:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn open_circuit_shows_in_the_circuit_gauge() {
    for_every_operation(|op| async move {
        let h = Harness::builder()
            .resilience(|r| {
                r.circuit_failures = 1;
                r.max_attempts = 1;
                r.circuit_open_for = Duration::from_secs(60);
            })
            .start()
            .await;
        h.mount_token(3599).await;
        let circuit = |metrics: &Metrics, host| {
            metrics.sum(
                "msstore_circuit_state",
                &[("upstream", upstream_label(host))],
            )
        };
        let closed = h.facade.metrics().await;
        assert_eq!(circuit(&closed, op.host), 0.0, "{op:?}");
        op.mount(&h, ResponseTemplate::new(503)).await;
        let _ = op.fail(&h.facade.channel).await;
        let open = h.facade.metrics().await;
        assert_eq!(circuit(&open, op.host), 1.0, "{op:?}");
        for other in Host::all().filter(|host| *host != op.host) {
            assert_eq!(circuit(&open, other), 0.0, "{op:?}: {other:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn shed_and_coalesced_calls_are_counted() {
    for_every_operation(|op| async move {
        let h = Harness::builder()
            .resilience(|r| r.max_concurrent_calls = 2)
            .start()
            .await;
        h.mount_token(3599).await;
        op.mount(&h, op.ok().set_delay(Duration::from_millis(400)))
            .await;
        let channel = &h.facade.channel;
        let call = |variant| (op.call)(channel.clone(), None, variant);
        let (first, second) = tokio::join!(call(0), call(0));
        first.unwrap_or_else(|s| panic!("{op:?}: {s:?}"));
        second.unwrap_or_else(|s| panic!("{op:?}: {s:?}"));
        let coalesced = h.facade.metrics().await;
        assert_eq!(
            coalesced.get("msstore_coalesced_calls_total"),
            if op.coalesces { 1.0 } else { 0.0 },
            "{op:?}"
        );

        // Two distinct calls fill the limit; a third, identical to one of them, is shed (the
        // limit comes before coalescing).
        let slow = tokio::spawn(futures_util::future::join(call(0), call(1)));
        assert_eventually(|| async {
            let in_flight = h.facade.metrics().await.get("msstore_calls_in_flight");
            (in_flight == 2.0).then_some(())
        })
        .await;
        let refused = call(0).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{op:?}");
        let metrics = h.facade.metrics().await;
        assert_eq!(
            metrics.sum("msstore_rpc_shed_total", &labels(op)),
            1.0,
            "{op:?}"
        );
        let (a, b) = slow.await.unwrap();
        a.unwrap_or_else(|s| panic!("{op:?}: {s:?}"));
        b.unwrap_or_else(|s| panic!("{op:?}: {s:?}"));
    })
    .await;
}

#[tokio::test]
async fn healthz_answers_while_alive() {
    let h = Harness::start().await;
    assert_eq!(h.facade.admin_get("/healthz").await, (200, "ok\n".into()));
}

#[tokio::test]
async fn readyz_is_ready_when_a_token_is_obtainable() {
    let h = Harness::start().await;
    assert_eq!(h.facade.admin_get("/readyz").await, (200, "ready\n".into()));
}

#[tokio::test]
async fn readyz_without_credentials_is_ready() {
    let h = Harness::builder()
        .credential(Credential::None)
        .start()
        .await;
    assert_eq!(h.facade.admin_get("/readyz").await.0, 200);
    assert!(h.token.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn readyz_fails_when_entra_rejects_and_caches_the_verdict() {
    let h = Harness::builder().start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": "invalid_client",
            "error_codes": [7000215],
        })))
        .mount(&h.token)
        .await;
    for _ in 0..3 {
        let (status, body) = h.facade.admin_get("/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("invalid_client"), "{body}");
        assert!(!body.contains(CLIENT_SECRET));
    }
    assert_eq!(h.token.received_requests().await.unwrap().len(), 1);
    let metrics = h.facade.metrics().await;
    assert_eq!(
        metrics.sum("msstore_token_requests_total", &[("outcome", "rejected")]),
        1.0
    );
}

#[tokio::test]
async fn unknown_admin_path_is_404() {
    let h = Harness::start().await;
    assert_eq!(h.facade.admin_get("/nope").await.0, 404);
}

/// Polls `check` until it gives a value (10 s at most).
async fn assert_eventually<T, F, Fut>(check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..500 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met within 10 s");
}

#[tokio::test]
async fn readyz_turns_503_once_shutdown_begins_while_calls_drain() {
    let mut h = Harness::builder()
        .shutdown_grace(Duration::from_secs(10))
        .start()
        .await;
    h.mount_token(3599).await;
    h.mount_license(
        ResponseTemplate::new(200)
            .set_body_json(license_body())
            .set_delay(Duration::from_millis(800)),
    )
    .await;
    assert_eq!(h.facade.admin_get("/readyz").await.0, 200);
    let mut client = h.entitlements();
    let call = tokio::spawn(async move { client.get_offline_license(license_request()).await });
    assert_eventually(|| async {
        let in_flight = h.facade.metrics().await.get("msstore_calls_in_flight");
        (in_flight == 1.0).then_some(())
    })
    .await;
    h.facade.begin_shutdown();
    let (status, body) = assert_eventually(|| async {
        let answer = h.facade.admin_get("/readyz").await;
        (answer.0 == 503).then_some(answer)
    })
    .await;
    assert_eq!((status, body.as_str()), (503, "not ready: shutting down\n"));
    assert_eq!(h.facade.admin_get("/healthz").await.0, 200);
    call.await.unwrap().expect("the call in flight finishes");
    h.facade.stopped().await.unwrap();
}

#[tokio::test]
async fn readyz_stays_ready_through_a_later_entra_outage() {
    let h = Harness::builder().start().await;
    // A token that must be fetched again at once, so that every later check meets the outage.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer",
            "expires_in": 1,
            "access_token": "short-lived",
        })))
        .up_to_n_times(1)
        .mount(&h.token)
        .await;
    assert_eq!(h.facade.admin_get("/readyz").await, (200, "ready\n".into()));
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&h.token)
        .await;
    // Past the token's life and the readiness verdict's (5 s): the outage is real for calls…
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let status = h
        .entitlements()
        .get_offline_license(license_request())
        .await
        .expect_err("no token can be had");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // …but the instance stays in the load balancer: taking every pod out helps no one.
    assert_eq!(h.facade.admin_get("/readyz").await, (200, "ready\n".into()));
}

#[tokio::test]
async fn a_token_issued_for_a_call_makes_the_instance_ready_without_asking_again() {
    let h = Harness::builder().start().await;
    h.mount_token(1).await;
    h.mount_license(ResponseTemplate::new(200).set_body_json(license_body()))
        .await;
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .expect("the call is served");
    // The token is gone from the cache and Entra answers nothing any more.
    h.token.reset().await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(h.facade.admin_get("/readyz").await.0, 200);
    assert!(h.token.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn readyz_is_not_ready_on_a_key_creation_token_alone() {
    // Entra issues the key-creation tokens but refuses the service token, with which every
    // Store call is made.
    let h = Harness::builder().start().await;
    Mock::given(method("POST"))
        .respond_with(|request: &wiremock::Request| {
            let form = form(&request.body);
            let scope = form
                .iter()
                .find(|(name, _)| name == "scope")
                .map(|(_, value)| value.as_str())
                .unwrap_or_default();
            if scope == "https://onestore.microsoft.com/.default" {
                ResponseTemplate::new(400).set_body_json(json!({
                    "error": "invalid_resource",
                    "error_codes": [500011],
                }))
            } else {
                ResponseTemplate::new(200).set_body_json(json!({
                    "token_type": "Bearer",
                    "expires_in": 3599,
                    "access_token": format!("{TOKEN_PREFIX}-key-creation"),
                }))
            }
        })
        .mount(&h.token)
        .await;
    h.keys()
        .get_key_creation_tokens(
            msstore_facade::proto::msstore::v1::GetKeyCreationTokensRequest::default(),
        )
        .await
        .expect("the key-creation tokens are issued");
    let (status, body) = h.facade.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("invalid_resource"), "{body}");
}
