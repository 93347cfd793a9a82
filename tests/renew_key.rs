//! RenewKey end to end: host selection from the key's `aud`, the exact upstream request, the
//! decoded answer, and the key-type validation.

mod common;

use common::*;
use msstore_facade::proto::msstore::v1::{KeyType, RenewKeyRequest};
use serde_json::json;
use tonic::Code;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn renew(key: String, key_type: KeyType) -> RenewKeyRequest {
    RenewKeyRequest {
        key,
        key_type: key_type as i32,
        service_ticket: String::new(),
    }
}

fn new_key_answer(key: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"key": key}))
        .insert_header("MS-CorrelationId", "renew-corr")
}

#[tokio::test]
async fn collections_key_is_renewed_on_the_collections_host_with_the_documented_body() {
    let h = Harness::start().await;
    h.mount_renew(new_key_answer("new-key")).await;
    let key = store_key(COLLECTIONS_AUD, now(), now() + 3600);
    let response = h
        .keys()
        .renew_key(renew(key.clone(), KeyType::Unspecified))
        .await
        .unwrap();
    assert_eq!(
        response.metadata().get("ms-correlationid").unwrap(),
        "renew-corr"
    );
    assert_eq!(response.into_inner().key_type(), KeyType::Collections);

    assert!(Harness::requests(&h.purchase).await.is_empty());
    let sent = Harness::requests(&h.collections).await;
    assert_eq!(sent.len(), 1);
    let sent = &sent[0];
    assert_eq!(sent.method.as_str(), "POST");
    assert_eq!(sent.url.path(), "/v6.0/b2b/keys/renew");
    assert_eq!(sent.headers["content-type"], "application/json");
    assert!(sent.headers.get("authorization").is_none());
    assert!(sent.headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("msstore-facade/"));
    assert!(sent.headers.contains_key("ms-cv"));
    assert!(sent.headers.contains_key("traceparent"));
    let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(
        body,
        json!({"serviceTicket": format!("{TOKEN_PREFIX}-1"), "key": key})
    );
}

#[tokio::test]
async fn purchase_key_is_renewed_on_the_purchase_host() {
    let h = Harness::start().await;
    h.mount_renew(new_key_answer("new-key")).await;
    let key = store_key(PURCHASE_AUD, now(), now() + 3600);
    let response = h
        .keys()
        .renew_key(renew(key, KeyType::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.key_type(), KeyType::Purchase);
    assert_eq!(Harness::requests(&h.purchase).await.len(), 1);
    assert!(Harness::requests(&h.collections).await.is_empty());
}

#[tokio::test]
async fn new_key_is_returned_verbatim_with_expiry_and_refresh_time() {
    let h = Harness::start().await;
    let iat = 1_790_000_000;
    let new_key = store_key(COLLECTIONS_AUD, iat, iat + 30 * 86_400);
    h.mount_renew(new_key_answer(&new_key)).await;
    let old = store_key(COLLECTIONS_AUD, now() - 86_400, now() + 3600);
    let response = h
        .keys()
        .renew_key(renew(old, KeyType::Collections))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.key, new_key);
    assert_eq!(response.key_type(), KeyType::Collections);
    assert_eq!(response.expires_at.unwrap().seconds, iat + 30 * 86_400);
    assert_eq!(response.refresh_after.unwrap().seconds, iat + 14 * 86_400);
}

#[tokio::test]
async fn opaque_new_key_is_returned_without_times() {
    let h = Harness::start().await;
    h.mount_renew(new_key_answer("opaque-not-a-jwt")).await;
    let key = store_key(PURCHASE_AUD, now(), now() + 3600);
    let response = h
        .keys()
        .renew_key(renew(key, KeyType::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.key, "opaque-not-a-jwt");
    assert_eq!(response.expires_at, None);
    assert_eq!(response.refresh_after, None);
}

#[tokio::test]
async fn declared_type_routes_a_key_that_does_not_decode() {
    let h = Harness::start().await;
    h.mount_renew(new_key_answer("k")).await;
    let response = h
        .keys()
        .renew_key(renew("opaque-old-key".into(), KeyType::Purchase))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.key_type(), KeyType::Purchase);
    assert_eq!(Harness::requests(&h.purchase).await.len(), 1);
}

#[tokio::test]
async fn key_type_must_match_the_decoded_audience() {
    let h = Harness::start().await;
    h.mount_renew(new_key_answer("k")).await;
    let key = store_key(PURCHASE_AUD, now(), now() + 3600);
    let status = h
        .keys()
        .renew_key(renew(key, KeyType::Collections))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["key_type"]);
    assert_eq!(error_info(&status).reason, "KEY_TYPE_MISMATCH");
    assert_eq!(error_info(&status).domain, "msstore-facade");
    assert!(Harness::requests(&h.collections).await.is_empty());
    assert!(Harness::requests(&h.purchase).await.is_empty());
}

#[tokio::test]
async fn key_with_a_foreign_audience_cannot_be_inferred() {
    let h = Harness::start().await;
    let key = store_key("https://evil.example/v6.0/keys", now(), now() + 3600);
    let status = h
        .keys()
        .renew_key(renew(key.clone(), KeyType::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["key"]);
    assert_eq!(error_info(&status).reason, "KEY_AUDIENCE_UNKNOWN");
    assert!(!status.message().contains(&key));
    let status = h
        .keys()
        .renew_key(renew(key, KeyType::Purchase))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["key_type"]);
}

#[tokio::test]
async fn undecodable_key_without_a_type_is_invalid() {
    let h = Harness::start().await;
    for key in ["not-a-jwt", "a.b.c", "a.!!!.c"] {
        let status = h
            .keys()
            .renew_key(renew(key.into(), KeyType::Unspecified))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{key}");
        assert_eq!(bad_fields(&status), ["key"]);
        assert_eq!(error_info(&status).reason, "KEY_NOT_DECODABLE");
    }
}

#[tokio::test]
async fn empty_or_oversized_key_and_unknown_key_type_are_rejected() {
    let h = Harness::start().await;
    let cases: [(RenewKeyRequest, &[&str]); 3] = [
        (renew(String::new(), KeyType::Unspecified), &["key"]),
        (
            renew("k".repeat(16 * 1024 + 1), KeyType::Purchase),
            &["key"],
        ),
        (
            RenewKeyRequest {
                key: "k".into(),
                key_type: 9,
                service_ticket: "t".repeat(16 * 1024 + 1),
            },
            &["service_ticket", "key_type"],
        ),
    ];
    for (request, fields) in cases {
        let status = h.keys().renew_key(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&status), *fields);
    }
    assert!(h.token_requests().await.is_empty());
}

#[tokio::test]
async fn the_keys_refresh_uri_is_never_called() {
    let h = Harness::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"key": "from-refresh-uri"})))
        .mount(&elsewhere)
        .await;
    h.mount_renew(new_key_answer("from-configured-host")).await;
    let key = jwt(&json!({
        "aud": COLLECTIONS_AUD,
        "exp": now() + 3600,
        "http://schemas.microsoft.com/marketplace/2015/08/claims/key/refreshUri":
            format!("{}/v6.0/b2b/keys/renew", elsewhere.uri()),
    }));
    let response = h
        .keys()
        .renew_key(renew(key, KeyType::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.key, "from-configured-host");
    assert!(Harness::requests(&elsewhere).await.is_empty());
}
