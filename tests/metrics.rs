//! The admin server: `/metrics` parses as Prometheus text and its series move as calls are
//! made; `/healthz` and `/readyz` answer as probes expect.

mod common;

use std::time::Duration;

use common::*;
use msstore_facade::proto::msstore::v1::RenewKeyRequest;
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

const LICENSE: &[(&str, &str)] = &[("method", "GetOfflineLicense")];

#[tokio::test]
async fn rpc_counts_by_method_and_code_move_with_calls() {
    let h = Harness::start().await;
    h.mount_license(ResponseTemplate::new(200).set_body_json(license_body()))
        .await;
    let before = h.facade.metrics().await;
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();
    let bad = h
        .keys()
        .renew_key(RenewKeyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let after = h.facade.metrics().await;

    let ok = r#"msstore_rpc_requests_total{service="msstore.v1.StoreEntitlements",method="GetOfflineLicense",code="OK"}"#;
    assert_eq!(after.get(ok) - before.get(ok), 1.0);
    let invalid = r#"msstore_rpc_requests_total{service="msstore.v1.StoreKeys",method="RenewKey",code="INVALID_ARGUMENT"}"#;
    assert_eq!(after.get(invalid) - before.get(invalid), 1.0);
    assert_eq!(
        after.sum("msstore_rpc_duration_seconds_count", LICENSE)
            - before.sum("msstore_rpc_duration_seconds_count", LICENSE),
        1.0
    );
    let upstream_ok = [("upstream", "business_store"), ("status", "200")];
    assert_eq!(
        after.sum("msstore_upstream_requests_total", &upstream_ok),
        1.0
    );
    assert_eq!(
        after.sum(
            "msstore_upstream_duration_seconds_count",
            &[("upstream", "business_store")]
        ),
        1.0
    );
    assert_eq!(
        after.sum("msstore_token_requests_total", &[("outcome", "issued")]),
        1.0
    );
    assert_eq!(
        after.sum("msstore_upstream_requests_total", &[("upstream", "entra")]),
        1.0
    );
    assert_eq!(after.get("msstore_calls_in_flight"), 0.0);
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
    let h = Harness::builder()
        .resilience(|r| r.retry_base_delay = Duration::from_millis(1))
        .start()
        .await;
    h.mount_token(3599).await;
    Harness::answer_next_once(&h.business, ResponseTemplate::new(503)).await;
    h.mount_license(ResponseTemplate::new(200).set_body_json(license_body()))
        .await;
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();
    let metrics = h.facade.metrics().await;
    assert_eq!(
        metrics.get(r#"msstore_upstream_retries_total{upstream="business_store"}"#),
        1.0
    );
    let business = |status| [("upstream", "business_store"), ("status", status)];
    assert_eq!(
        metrics.sum("msstore_upstream_requests_total", &business("503")),
        1.0
    );
    assert_eq!(
        metrics.sum("msstore_upstream_requests_total", &business("200")),
        1.0
    );
}

#[tokio::test]
async fn open_circuit_shows_in_the_circuit_gauge() {
    let h = Harness::builder()
        .resilience(|r| {
            r.circuit_failures = 1;
            r.max_attempts = 1;
            r.circuit_open_for = Duration::from_secs(60);
        })
        .start()
        .await;
    h.mount_token(3599).await;
    let closed = h.facade.metrics().await;
    assert_eq!(
        closed.sum("msstore_circuit_state", &[("upstream", "business_store")]),
        0.0
    );
    h.mount_license(ResponseTemplate::new(503)).await;
    let _ = h
        .entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap_err();
    let open = h.facade.metrics().await;
    assert_eq!(
        open.sum("msstore_circuit_state", &[("upstream", "business_store")]),
        1.0
    );
    assert_eq!(
        open.sum("msstore_circuit_state", &[("upstream", "collections")]),
        0.0
    );
}

#[tokio::test]
async fn shed_and_coalesced_calls_are_counted() {
    let h = Harness::builder()
        .resilience(|r| r.max_concurrent_calls = 2)
        .start()
        .await;
    h.mount_token(3599).await;
    h.mount_license(
        ResponseTemplate::new(200)
            .set_body_json(license_body())
            .set_delay(Duration::from_millis(400)),
    )
    .await;
    let (mut one, mut two) = (h.entitlements(), h.entitlements());
    let (first, second) = tokio::join!(
        one.get_offline_license(license_request()),
        two.get_offline_license(license_request()),
    );
    first.unwrap();
    second.unwrap();
    let coalesced = h.facade.metrics().await;
    assert_eq!(coalesced.get("msstore_coalesced_calls_total"), 1.0);

    let slow = tokio::spawn({
        let (a, b) = (h.entitlements(), h.entitlements());
        async move {
            let mut a = a;
            let mut b = b;
            let mut other = license_request();
            other.sku_id = "0002".into();
            tokio::join!(
                a.get_offline_license(license_request()),
                b.get_offline_license(other)
            )
        }
    });
    assert_eventually(|| async {
        let in_flight = h.facade.metrics().await.get("msstore_calls_in_flight");
        (in_flight == 2.0).then_some(())
    })
    .await;
    let refused = h
        .entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let metrics = h.facade.metrics().await;
    assert_eq!(metrics.sum("msstore_rpc_shed_total", LICENSE), 1.0);
    let (a, b) = slow.await.unwrap();
    a.unwrap();
    b.unwrap();
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
