//! The Entra token provider seen from outside: the token request, caching per tenant, refresh
//! after expiry, single-flight on concurrent misses, 401 invalidation, federated credentials.

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, ResponseTemplate};

fn ok_license() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(license_body())
}

async fn authorizations(h: &Harness) -> Vec<String> {
    Harness::requests(&h.business)
        .await
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn token_request_is_a_client_credentials_form_for_the_store_scope() {
    let h = Harness::start().await;
    h.mount_license(ok_license()).await;
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();
    let requests = Harness::requests(&h.token).await;
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.method.as_str(), "POST");
    assert_eq!(sent.url.path(), format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(
        sent.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let form = form(&sent.body);
    assert_eq!(field(&form, "grant_type"), Some("client_credentials"));
    assert_eq!(field(&form, "client_id"), Some(CLIENT_ID));
    assert_eq!(field(&form, "client_secret"), Some(CLIENT_SECRET));
    assert_eq!(
        field(&form, "scope"),
        Some("https://onestore.microsoft.com/.default")
    );
    assert_eq!(field(&form, "client_assertion"), None);
}

#[tokio::test]
async fn token_is_cached_across_calls_and_rpcs() {
    let h = Harness::start().await;
    h.mount_license(ok_license()).await;
    h.mount_renew(ResponseTemplate::new(200).set_body_json(serde_json::json!({"key": "new"})))
        .await;
    for _ in 0..3 {
        h.entitlements()
            .get_offline_license(license_request())
            .await
            .unwrap();
    }
    let key = store_key(COLLECTIONS_AUD, now(), now() + 3600);
    h.keys()
        .renew_key(msstore_facade::proto::msstore::v1::RenewKeyRequest {
            key,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h.token_requests().await.len(), 1);
    let expected = format!("Bearer {TOKEN_PREFIX}-1");
    assert_eq!(authorizations(&h).await, vec![expected; 3]);
    let renew = &Harness::requests(&h.collections).await[0];
    let body: serde_json::Value = serde_json::from_slice(&renew.body).unwrap();
    assert_eq!(body["serviceTicket"], format!("{TOKEN_PREFIX}-1"));
}

#[tokio::test]
async fn token_is_refreshed_once_it_nears_expiry() {
    let h = Harness::builder().start().await;
    // A 1 s token is renewed at half its life.
    h.mount_token(1).await;
    h.mount_license(ok_license()).await;
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();
    assert_eq!(h.token_requests().await.len(), 2);
    assert_eq!(
        authorizations(&h).await,
        [
            format!("Bearer {TOKEN_PREFIX}-1"),
            format!("Bearer {TOKEN_PREFIX}-2")
        ]
    );
}

#[tokio::test]
async fn fifty_concurrent_first_calls_make_one_token_request() {
    let h = Harness::builder().start().await;
    Mock::given(method("POST"))
        .and(path_regex("/oauth2/v2.0/token$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_millis(300))
                .set_body_json(serde_json::json!({
                    "token_type": "Bearer", "expires_in": 3599, "access_token": "shared-token"
                })),
        )
        .mount(&h.token)
        .await;
    h.mount_license(ok_license()).await;
    // Distinct content ids, so that the calls are not coalesced into one upstream request.
    let calls = (0..50).map(|i| {
        let mut client = h.entitlements();
        let mut request = license_request();
        request.content_id = format!("content-{i}");
        async move { client.get_offline_license(request).await }
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(h.token_requests().await.len(), 1);
    assert_eq!(authorizations(&h).await.len(), 50);
}

#[tokio::test]
async fn tenants_have_separate_tokens() {
    let h = Harness::start().await;
    h.mount_license(ok_license()).await;
    for tenant in [
        "",
        "fabrikam.onmicrosoft.com",
        "",
        "FABRIKAM.onmicrosoft.com",
    ] {
        let mut request = license_request();
        request.tenant_id = tenant.into();
        h.entitlements().get_offline_license(request).await.unwrap();
    }
    assert_eq!(h.token_requests().await.len(), 2);
}

#[tokio::test]
async fn upstream_401_drops_the_token_and_retries_once_with_a_fresh_one() {
    let h = Harness::start().await;
    Harness::answer_next_once(&h.business, ResponseTemplate::new(401)).await;
    h.mount_license(ok_license()).await;
    let mut request = tonic::Request::new(license_request());
    request
        .metadata_mut()
        .insert("ms-cv", "xu2HW6SrSkyfHyFh.2".parse().unwrap());
    h.entitlements().get_offline_license(request).await.unwrap();
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();
    assert_eq!(h.token_requests().await.len(), 2);
    assert_eq!(
        authorizations(&h).await,
        [
            format!("Bearer {TOKEN_PREFIX}-1"),
            format!("Bearer {TOKEN_PREFIX}-2"),
            format!("Bearer {TOKEN_PREFIX}-2")
        ]
    );
    // Each attempt gets the next correlation vector.
    let sent = Harness::requests(&h.business).await;
    let cvs: Vec<&str> = sent[..2]
        .iter()
        .map(|r| r.headers["ms-cv"].to_str().unwrap())
        .collect();
    assert_eq!(cvs, ["xu2HW6SrSkyfHyFh.2.1", "xu2HW6SrSkyfHyFh.2.2"]);
}

#[tokio::test]
async fn persistent_401_is_retried_only_once() {
    let h = Harness::start().await;
    h.mount_license(
        ResponseTemplate::new(401)
            .set_body_json(service_error("Unauthorized", "AuthenticationTokenInvalid")),
    )
    .await;
    let status = h
        .entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_info(&status).reason, "AUTHENTICATION_TOKEN_INVALID");
    assert_eq!(Harness::requests(&h.business).await.len(), 2);
    assert_eq!(h.token_requests().await.len(), 2);
}

#[tokio::test]
async fn renew_with_own_token_is_retried_once_after_401() {
    let h = Harness::start().await;
    Harness::answer_next_once(&h.collections, ResponseTemplate::new(401)).await;
    h.mount_renew(ResponseTemplate::new(200).set_body_json(serde_json::json!({"key": "k2"})))
        .await;
    let key = store_key(COLLECTIONS_AUD, now(), now() + 3600);
    h.keys()
        .renew_key(msstore_facade::proto::msstore::v1::RenewKeyRequest {
            key,
            ..Default::default()
        })
        .await
        .unwrap();
    let tickets: Vec<String> = Harness::requests(&h.collections)
        .await
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            body["serviceTicket"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        tickets,
        [format!("{TOKEN_PREFIX}-1"), format!("{TOKEN_PREFIX}-2")]
    );
}

#[tokio::test]
async fn caller_ticket_is_used_as_is_and_not_retried_on_401() {
    let h = Harness::start().await;
    h.mount_renew(
        ResponseTemplate::new(401)
            .set_body_json(service_error("Unauthorized", "InconsistentClientId")),
    )
    .await;
    let key = store_key(PURCHASE_AUD, now(), now() + 3600);
    let status = h
        .keys()
        .renew_key(msstore_facade::proto::msstore::v1::RenewKeyRequest {
            key,
            key_type: 0,
            service_ticket: "caller-ticket-never-log-me".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_info(&status).reason, "INCONSISTENT_CLIENT_ID");
    let sent = Harness::requests(&h.purchase).await;
    assert_eq!(sent.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(body["serviceTicket"], "caller-ticket-never-log-me");
    assert!(h.token_requests().await.is_empty());
}

#[tokio::test]
async fn federated_credential_sends_the_assertion_file_and_rereads_it() {
    let dir = std::env::temp_dir().join(format!("msstore-facade-fic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "assertion-one\n").unwrap();
    let h = Harness::builder()
        .credential(Credential::FederatedFile(file.clone()))
        .start()
        .await;
    h.mount_token(1).await;
    h.mount_license(ok_license()).await;
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();
    // The kubelet rotates the projected token; the next token request must read the new one.
    std::fs::write(&file, "assertion-two").unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();
    let forms: Vec<Vec<(String, String)>> = h
        .token_requests()
        .await
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    assert_eq!(forms.len(), 2);
    for (form, assertion) in forms.iter().zip(["assertion-one", "assertion-two"]) {
        assert_eq!(
            field(form, "client_assertion_type"),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        assert_eq!(field(form, "client_assertion"), Some(assertion));
        assert_eq!(field(form, "client_secret"), None);
        assert_eq!(field(form, "client_id"), Some(CLIENT_ID));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn unreadable_assertion_file_is_an_internal_error_naming_it() {
    let h = Harness::builder()
        .credential(Credential::FederatedFile(
            "/nonexistent/msstore-facade/token".into(),
        ))
        .start()
        .await;
    let status = h
        .entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        error_info(&status).reason,
        "FEDERATED_TOKEN_FILE_UNREADABLE"
    );
    assert!(h.token_requests().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// StoreKeys/GetKeyCreationTokens: the two key-creation audiences, cached like the service token.

const COLLECTIONS_SCOPE: &str =
    "https://onestore.microsoft.com/b2b/keys/create/collections/.default";
const PURCHASE_SCOPE: &str = "https://onestore.microsoft.com/b2b/keys/create/purchase/.default";
const SERVICE_SCOPE: &str = "https://onestore.microsoft.com/.default";

fn key_creation_request(
    tenant: &str,
) -> msstore_facade::proto::msstore::v1::GetKeyCreationTokensRequest {
    msstore_facade::proto::msstore::v1::GetKeyCreationTokensRequest {
        tenant_id: tenant.to_owned(),
    }
}

/// The scope of each token request received so far, with the token it was answered with
/// (`<TOKEN_PREFIX>-n`, n in request order).
async fn scopes(h: &Harness) -> Vec<String> {
    h.token_requests()
        .await
        .iter()
        .map(|(_, form)| field(form, "scope").unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn key_creation_tokens_are_one_per_key_creation_audience_and_never_the_service_token() {
    let h = Harness::start().await;
    let before = std::time::SystemTime::now();
    let tokens = h
        .keys()
        .get_key_creation_tokens(key_creation_request(""))
        .await
        .unwrap()
        .into_inner();
    let mut asked = scopes(&h).await;
    asked.sort();
    assert_eq!(asked, [COLLECTIONS_SCOPE, PURCHASE_SCOPE]);
    for (path, form) in h.token_requests().await {
        assert_eq!(path, format!("/{TENANT}/oauth2/v2.0/token"));
        assert_eq!(field(&form, "client_id"), Some(CLIENT_ID));
        assert_eq!(field(&form, "grant_type"), Some("client_credentials"));
    }
    // Each token is the one Entra issued for its scope.
    let issued_for = |scope: &str, scopes: &[String]| {
        let n = scopes.iter().position(|s| s == scope).unwrap() + 1;
        format!("{TOKEN_PREFIX}-{n}")
    };
    let asked = scopes(&h).await;
    assert_eq!(
        tokens.collections_token,
        issued_for(COLLECTIONS_SCOPE, &asked)
    );
    assert_eq!(tokens.purchase_token, issued_for(PURCHASE_SCOPE, &asked));
    // The harness's tokens live 3600 s.
    let expires_at = tokens.expires_at.expect("an expiry").seconds;
    let from = before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (from + 3590..=from + 3610).contains(&expires_at),
        "{expires_at} vs {from}"
    );

    // A Store call asks for the service token on its own; the key-creation tokens are never
    // sent to the Store, and the service token is never what GetKeyCreationTokens returns.
    h.mount_license(ok_license()).await;
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();
    let asked = scopes(&h).await;
    assert_eq!(asked.len(), 3);
    assert_eq!(asked[2], SERVICE_SCOPE);
    let service = format!("Bearer {}", issued_for(SERVICE_SCOPE, &asked));
    assert_eq!(authorizations(&h).await, std::slice::from_ref(&service));
    assert_ne!(format!("Bearer {}", tokens.collections_token), service);
    assert_ne!(format!("Bearer {}", tokens.purchase_token), service);
}

#[tokio::test]
async fn key_creation_tokens_are_cached_and_fetched_once_for_concurrent_calls() {
    let h = Harness::start().await;
    let calls = (0..20).map(|_| {
        let mut keys = h.keys();
        async move {
            keys.get_key_creation_tokens(key_creation_request(""))
                .await
                .map(|r| r.into_inner())
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let first = answers[0].as_ref().unwrap().clone();
    for answer in &answers {
        assert_eq!(answer.as_ref().unwrap(), &first);
    }
    assert_eq!(h.token_requests().await.len(), 2);
    // Later calls are served from the cache too.
    let again = h
        .keys()
        .get_key_creation_tokens(key_creation_request(TENANT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(h.token_requests().await.len(), 2);
}

#[tokio::test]
async fn key_creation_tokens_are_refused_for_a_tenant_not_allowed_before_any_token_request() {
    // Only the configured tenant.
    let h = Harness::builder()
        .allowed_tenants(Default::default())
        .start()
        .await;
    let status = h
        .keys()
        .get_key_creation_tokens(key_creation_request("fabrikam.onmicrosoft.com"))
        .await
        .expect_err("not an allowed tenant");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(error_info(&status).reason, "TENANT_NOT_ALLOWED");
    let status = h
        .keys()
        .get_key_creation_tokens(key_creation_request("not a tenant!"))
        .await
        .expect_err("not a tenant id");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(&status), ["tenant_id"]);
    assert!(h.token_requests().await.is_empty());
}

#[tokio::test]
async fn key_creation_tokens_from_the_sandbox_carry_their_audiences_and_no_store_endpoint_takes_them(
) {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let mut keys = msstore_facade::proto::msstore::v1::store_keys_client::StoreKeysClient::new(
        facade.channel.clone(),
    );
    let tokens = keys
        .get_key_creation_tokens(key_creation_request(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        claims(&tokens.collections_token)["aud"],
        "https://onestore.microsoft.com/b2b/keys/create/collections"
    );
    assert_eq!(
        claims(&tokens.purchase_token)["aud"],
        "https://onestore.microsoft.com/b2b/keys/create/purchase"
    );
    // Renewing a key with a key-creation token as the service ticket is refused by the Store.
    let key =
        msstore_facade::emulator::StoreKeySpec::new(msstore_facade::upstream::Host::Collections)
            .mint();
    let status = keys
        .renew_key(msstore_facade::proto::msstore::v1::RenewKeyRequest {
            key,
            service_ticket: tokens.collections_token.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a key-creation token is not a service token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(!status.message().contains(&tokens.collections_token));
}
