//! The sandbox emulator alone, spoken to over HTTP: its answers have the documented shapes
//! and headers (upstream-apis.md), its token endpoint refuses like Entra, its key checks work,
//! and its magic ids fail the way they say.

mod common;

use std::time::{Duration, Instant};

use common::*;
use msstore_facade::emulator::{
    magic, Endpoints, StoreKeySpec, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT,
};
use msstore_facade::upstream::Host;
use serde_json::{json, Value};

const ONESTORE: &str = "https://onestore.microsoft.com";
/// The key-creation audiences (store-services-apis.md 1.1): tokens for client apps, never
/// accepted by a Store endpoint.
const KEY_CREATION_AUDIENCES: [&str; 2] = [
    "https://onestore.microsoft.com/b2b/keys/create/collections",
    "https://onestore.microsoft.com/b2b/keys/create/purchase",
];
const KEY_CLAIMS: &str = "http://schemas.microsoft.com/marketplace/2015/08/claims/key/";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An answer of the emulator: status, lower-case headers, body text.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Self {
        Self {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.expect("a complete body"),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    /// The Store inner code inside `innererror.data`, as real 401 bodies carry it.
    fn inner_data(&self) -> String {
        self.json()["innererror"]["data"].to_string()
    }

    /// A 401 in the real ServiceError shape with `inner` inside `innererror.data`.
    fn assert_unauthorized(&self, inner: &str, case: &str) {
        assert_eq!(self.status, 401, "{case}: {}", self.body);
        self.assert_store_ids();
        let body = self.json();
        assert_eq!(body["code"], "Unauthorized", "{case}");
        assert_eq!(
            body["innererror"]["code"], "AuthenticationFailure",
            "{case}"
        );
        assert!(self.inner_data().contains(inner), "{case}: {}", self.body);
    }

    fn assert_store_ids(&self) {
        for name in ["ms-correlationid", "ms-requestid", "ms-cv", "ms-serverid"] {
            assert!(!self.header(name).is_empty(), "{name}");
        }
    }
}

/// A running emulator, its URLs and a sandbox access token from it.
async fn emulator_and_token() -> (msstore_facade::emulator::RunningEmulator, Endpoints, String) {
    let emulator = start_emulator().await;
    let endpoints = emulator.endpoints();
    let token = emulator_token(&endpoints).await;
    (emulator, endpoints, token)
}

fn license_url(emulator: &Endpoints, product_id: &str) -> String {
    format!(
        "{}/V1/Products/{product_id}/0016/OfflineLicense/c-1",
        emulator.host_url(Host::BusinessStore)
    )
}

async fn license(emulator: &Endpoints, product_id: &str, bearer: Option<&str>) -> Answer {
    let mut request = reqwest::Client::new()
        .post(license_url(emulator, product_id))
        .header("content-length", "0")
        .header("ms-cv", "xu2HW6SrSkyfHyFh.0.1");
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    Answer::read(request.send().await.expect("the emulator answers")).await
}

async fn renew_raw(emulator: &Endpoints, host: Host, body: &Value) -> Answer {
    let base = emulator.host_url(host);
    let response = reqwest::Client::new()
        .post(format!("{base}/v6.0/b2b/keys/renew"))
        .header("ms-cv", "xu2HW6SrSkyfHyFh.0.2")
        .json(body)
        .send()
        .await
        .expect("the emulator answers");
    Answer::read(response).await
}

async fn renew(emulator: &Endpoints, host: Host, ticket: &str, key: &str) -> Answer {
    renew_raw(
        emulator,
        host,
        &json!({"serviceTicket": ticket, "key": key}),
    )
    .await
}

/// `token` with its `exp` claim changed and its header and signature kept: a tampered token.
fn with_exp(token: &str, exp: i64) -> String {
    let mut edited = claims(token);
    edited["exp"] = json!(exp);
    let parts: Vec<&str> = token.split('.').collect();
    let claims_part = jwt(&edited).split('.').nth(1).unwrap().to_owned();
    format!("{}.{claims_part}.{}", parts[0], parts[2])
}

/// A sandbox token from `emulator` for `scope`, answered as (status, JSON).
async fn token_for_scope(emulator: &Endpoints, scope: &str) -> (u16, Value) {
    let mut form = sandbox_secret_form();
    form.retain(|(name, _)| *name != "scope");
    form.push(("scope", scope));
    emulator_token_request(emulator, SANDBOX_TENANT, &form).await
}

fn assert_entra_error(status: u16, body: &Value, expected_status: u16, error: &str, code: u64) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], json!([code]), "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    for field in ["timestamp", "trace_id", "correlation_id"] {
        assert!(
            body[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

#[tokio::test]
async fn token_endpoint_grants_jwt_shaped_onestore_tokens_for_the_sandbox_secret() {
    let emulator = start_emulator().await;
    let before = now();
    let (status, body) = emulator_token_request(
        &emulator.endpoints(),
        SANDBOX_TENANT,
        &sandbox_secret_form(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);
    let claims = claims(token);
    assert_eq!(claims["aud"], ONESTORE);
    assert_eq!(claims["appid"], SANDBOX_CLIENT_ID);
    assert!(
        claims["tid"].as_str().is_some_and(|t| t.len() == 36),
        "{claims}"
    );
    let iat = claims["iat"].as_i64().unwrap();
    assert!(iat >= before && iat <= now(), "{claims}");
    assert_eq!(claims["exp"].as_i64().unwrap() - iat, 3599);
}

#[tokio::test]
async fn token_endpoint_grants_key_creation_tokens_whose_aud_is_the_scope_without_default() {
    let emulator = start_emulator().await;
    for audience in KEY_CREATION_AUDIENCES {
        let (status, body) =
            token_for_scope(&emulator.endpoints(), &format!("{audience}/.default")).await;
        assert_eq!(status, 200, "{audience}: {body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3599);
        let claims = claims(body["access_token"].as_str().unwrap());
        assert_eq!(claims["aud"], audience, "{claims}");
        assert_eq!(claims["appid"], SANDBOX_CLIENT_ID);
        assert!(claims["tid"].as_str().is_some_and(|t| t.len() == 36));
    }
}

#[tokio::test]
async fn token_endpoint_refuses_unknown_scopes_naming_the_three_it_grants() {
    let emulator = start_emulator().await;
    let unknown = [
        "https://onestore.microsoft.com/b2b/keys/create/.default",
        "https://onestore.microsoft.com/b2b/keys/create/collections",
        "https://onestore.microsoft.com/b2b/keys/create/purchase/",
        "https://onestore.microsoft.com/b2b/keys/renew/.default",
        "https://graph.microsoft.com/.default",
    ];
    for scope in unknown {
        let (status, body) = token_for_scope(&emulator.endpoints(), scope).await;
        assert_entra_error(status, &body, 400, "invalid_scope", 70_011);
        let description = body["error_description"].as_str().unwrap();
        for audience in [ONESTORE].into_iter().chain(KEY_CREATION_AUDIENCES) {
            let valid = format!("{audience}/.default");
            assert!(description.contains(&valid), "{scope}: {description}");
        }
    }
}

#[tokio::test]
async fn token_endpoint_grants_tokens_for_a_client_assertion() {
    let emulator = start_emulator().await;
    let assertion = jwt(&json!({
        "iss": "https://oidc.example/cluster",
        "sub": "system:serviceaccount:store:facade",
        "aud": "api://AzureADTokenExchange",
        "exp": now() + 600,
    }));
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", SANDBOX_CLIENT_ID),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion.as_str()),
        ("scope", "https://onestore.microsoft.com/.default"),
    ];
    let guid_tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let (status, body) = emulator_token_request(&emulator.endpoints(), guid_tenant, &form).await;
    assert_eq!(status, 200, "{body}");
    let claims = claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["tid"], guid_tenant);
    assert_eq!(claims["appidacr"], "2");
}

#[tokio::test]
async fn wrong_secret_is_refused_like_entra_without_echoing_it() {
    let emulator = start_emulator().await;
    let wrong = "wrong-secret-Qx7~must-not-echo";
    let mut form = sandbox_secret_form();
    form.retain(|(name, _)| *name != "client_secret");
    form.push(("client_secret", wrong));
    let (status, body) = emulator_token_request(&emulator.endpoints(), SANDBOX_TENANT, &form).await;
    assert_entra_error(status, &body, 401, "invalid_client", 7_000_215);
    assert!(!body.to_string().contains(wrong), "{body}");
    assert!(!body.to_string().contains(SANDBOX_CLIENT_SECRET), "{body}");
}

#[tokio::test]
async fn token_endpoint_refuses_unknown_clients_bad_scopes_grants_and_tenants() {
    let emulator = start_emulator().await;
    let with = |name: &'static str, value: &'static str| {
        let mut form = sandbox_secret_form();
        form.retain(|(n, _)| *n != name);
        form.push((name, value));
        form
    };
    let cases = [
        (
            SANDBOX_TENANT,
            with("client_id", "00000000-0000-4000-8000-000000000bad"),
            400,
            "unauthorized_client",
            700_016,
        ),
        (
            SANDBOX_TENANT,
            with("scope", "https://graph.microsoft.com/.default"),
            400,
            "invalid_scope",
            70_011,
        ),
        (
            SANDBOX_TENANT,
            with("grant_type", "password"),
            400,
            "unsupported_grant_type",
            70_003,
        ),
        (
            SANDBOX_TENANT,
            with("client_secret", ""),
            401,
            "invalid_client",
            7_000_218,
        ),
        (
            "not a tenant",
            sandbox_secret_form(),
            400,
            "invalid_request",
            900_023,
        ),
        (
            "magic-400.onmicrosoft.com",
            sandbox_secret_form(),
            400,
            "invalid_request",
            90_002,
        ),
        (
            "magic-503.onmicrosoft.com",
            sandbox_secret_form(),
            503,
            "temporarily_unavailable",
            50_000,
        ),
    ];
    for (tenant, form, status, error, code) in cases {
        let (got, body) = emulator_token_request(&emulator.endpoints(), tenant, &form).await;
        assert_entra_error(got, &body, status, error, code);
    }
}

#[tokio::test]
async fn token_endpoint_refuses_malformed_and_expired_assertions() {
    let emulator = start_emulator().await;
    let expired = jwt(&json!({"sub": "x", "exp": now() - 60}));
    let cases = [
        ("not-a-jwt", 401, "invalid_client", 50_027),
        (expired.as_str(), 400, "invalid_client", 700_024),
    ];
    for (assertion, status, error, code) in cases {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", SANDBOX_CLIENT_ID),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
            ("scope", "https://onestore.microsoft.com/.default"),
        ];
        let (got, body) =
            emulator_token_request(&emulator.endpoints(), SANDBOX_TENANT, &form).await;
        assert_entra_error(got, &body, status, error, code);
    }
}

// ---------------------------------------------------------------------------------------------
// Offline license

#[tokio::test]
async fn offline_license_has_the_documented_shape_and_correlation_headers() {
    let emulator = start_emulator().await;
    let token = emulator_token(&emulator.endpoints()).await;
    let answer = license(&emulator.endpoints(), "9NBLGGH4R2R6", Some(&token)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.assert_store_ids();
    assert_eq!(answer.header("ms-cv"), "xu2HW6SrSkyfHyFh.0.1");
    let body = answer.json();
    assert_eq!(
        body["productKey"],
        json!({"productId": "9NBLGGH4R2R6", "skuId": "0016"})
    );
    assert_eq!(body["contentId"], "c-1");
    assert_eq!(body["requestorId"], claims(&token)["tid"]);
    assert!(body["licenseInstanceId"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(body["licenseBlob"].as_str().unwrap())
        .expect("licenseBlob is standard base64");
    assert!(String::from_utf8_lossy(&blob).contains("<ProductId>9NBLGGH4R2R6</ProductId>"));
}

#[tokio::test]
async fn offline_license_is_deterministic_per_tenant_and_ids() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let first = license(&endpoints, "9NBLGGH4R2R6", Some(&token))
        .await
        .json();
    let again = license(&endpoints, "9NBLGGH4R2R6", Some(&token))
        .await
        .json();
    assert_eq!(first, again);
    let other_product = license(&endpoints, "9WZDNCRFJ3TJ", Some(&token))
        .await
        .json();
    assert_ne!(first["licenseBlob"], other_product["licenseBlob"]);
    let (_, other_tenant) = emulator_token_request(
        &endpoints,
        "fabrikam.onmicrosoft.com",
        &sandbox_secret_form(),
    )
    .await;
    let other_token = other_tenant["access_token"].as_str().unwrap();
    let for_fabrikam = license(&endpoints, "9NBLGGH4R2R6", Some(other_token))
        .await
        .json();
    assert_ne!(first["licenseBlob"], for_fabrikam["licenseBlob"]);
}

#[tokio::test]
async fn offline_license_needs_a_token_issued_by_the_emulator() {
    let emulator = start_emulator().await;
    let endpoints = emulator.endpoints();
    let missing = license(&endpoints, "9NBLGGH4R2R6", None).await;
    missing.assert_unauthorized("PartnerAadTicketRequired", "no token");

    let foreign = jwt(&json!({"aud": ONESTORE, "appid": SANDBOX_CLIENT_ID, "exp": now() + 600}));
    let token = emulator_token(&endpoints).await;
    let edited = with_exp(&token, now() + 86_400);
    for bad in [foreign.as_str(), edited.as_str(), "opaque"] {
        let answer = license(&endpoints, "9NBLGGH4R2R6", Some(bad)).await;
        answer.assert_unauthorized("AuthenticationTokenInvalid", bad);
    }
}

#[tokio::test]
async fn store_endpoints_refuse_key_creation_tokens_as_a_foreign_audience_but_take_the_service_token(
) {
    let (_emulator, endpoints, service_token) = emulator_and_token().await;
    let key = StoreKeySpec::new(Host::Collections).mint();
    for audience in KEY_CREATION_AUDIENCES {
        let (_, body) = token_for_scope(&endpoints, &format!("{audience}/.default")).await;
        let token = body["access_token"].as_str().unwrap();

        let answer = license(&endpoints, "9NBLGGH4R2R6", Some(token)).await;
        answer.assert_unauthorized("AuthenticationTokenInvalid", audience);
        let message = answer.json()["innererror"]["message"].clone();
        assert_eq!(
            message,
            format!(
                "Authentication token supplied is invalid: the token's audience is not {ONESTORE}."
            ),
            "{audience}"
        );
        assert!(
            !answer.body.contains(token),
            "{audience}: the token is echoed"
        );

        let answer = renew(&endpoints, Host::Collections, token, &key).await;
        answer.assert_unauthorized("AuthenticationTokenInvalid", audience);
        assert!(
            !answer.body.contains(token),
            "{audience}: the token is echoed"
        );
    }
    let licensed = license(&endpoints, "9NBLGGH4R2R6", Some(&service_token)).await;
    assert_eq!(licensed.status, 200, "{}", licensed.body);
    let renewed = renew(&endpoints, Host::Collections, &service_token, &key).await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
}

// ---------------------------------------------------------------------------------------------
// Key renewal

#[tokio::test]
async fn renew_issues_a_30_day_key_for_the_same_client_carrying_user_and_payload() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    for host in [Host::Collections, Host::Purchase] {
        let old = StoreKeySpec::new(host)
            .user_id("user-42")
            .payload("opaque-payload")
            .issued_at(now() - 3600)
            .mint();
        let answer = renew(&endpoints, host, &token, &old).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.assert_store_ids();
        assert_eq!(answer.header("ms-cv"), "xu2HW6SrSkyfHyFh.0.2");
        let new_key = answer.json()["key"].as_str().unwrap().to_owned();
        assert_ne!(new_key, old);
        let claims = claims(&new_key);
        let aud = msstore_facade::auth::key_audience(host).unwrap();
        assert_eq!(
            (claims["aud"].as_str(), claims["iss"].as_str()),
            (Some(aud), Some(aud))
        );
        let iat = claims["iat"].as_i64().unwrap();
        assert!(iat >= now() - 60, "{claims}");
        assert_eq!(claims["nbf"].as_i64(), Some(iat));
        assert_eq!(claims["exp"].as_i64(), Some(iat + 30 * 24 * 3600));
        let claim = |name: &str| claims[format!("{KEY_CLAIMS}{name}")].clone();
        assert_eq!(claim("clientId"), SANDBOX_CLIENT_ID);
        assert_eq!(claim("userId"), "user-42");
        assert_eq!(claim("payload"), "opaque-payload");
        let base = endpoints.host_url(host);
        assert_eq!(claim("refreshUri"), format!("{base}/v6.0/b2b/keys/renew"));
        // The new key renews in turn.
        assert_eq!(renew(&endpoints, host, &token, &new_key).await.status, 200);
    }
}

#[tokio::test]
async fn sandbox_key_user_flag_sets_the_user_id_claim_and_renewal_keeps_it() {
    let user_id = |key: &str| claims(key)[format!("{KEY_CLAIMS}userId")].clone();
    assert_eq!(user_id(&sandbox_key(&[])), "sandbox-user");
    let key = sandbox_key(&["--user", "alice"]);
    assert_eq!(user_id(&key), "alice");
    let purchase_key = sandbox_key(&["--type", "purchase", "--user", "alice"]);
    assert_eq!(user_id(&purchase_key), "alice");

    let (_emulator, endpoints, token) = emulator_and_token().await;
    let answer = renew(&endpoints, Host::Collections, &token, &key).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(user_id(answer.json()["key"].as_str().unwrap()), "alice");
}

#[tokio::test]
async fn renew_refuses_a_key_sent_to_the_other_host() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let collections_key = StoreKeySpec::new(Host::Collections).mint();
    let answer = renew(&endpoints, Host::Purchase, &token, &collections_key).await;
    answer.assert_unauthorized("AuthenticationTokenInvalid", "");
}

#[tokio::test]
async fn renew_refuses_expired_tampered_and_foreign_keys() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let expired = StoreKeySpec::new(Host::Collections)
        .issued_at(now() - 31 * 24 * 3600)
        .mint();
    let valid = StoreKeySpec::new(Host::Collections).mint();
    let tampered = with_exp(&valid, now() + 365 * 24 * 3600);
    let foreign = store_key(COLLECTIONS_AUD, now(), now() + 3600);
    for (case, key) in [
        ("expired", &expired),
        ("tampered", &tampered),
        ("foreign", &foreign),
    ] {
        let answer = renew(&endpoints, Host::Collections, &token, key).await;
        answer.assert_unauthorized("AuthenticationTokenInvalid", case);
        assert!(
            !answer.body.contains(key.as_str()),
            "{case}: the key is echoed"
        );
    }
}

#[tokio::test]
async fn renew_refuses_a_key_whose_client_id_is_not_the_tickets_appid() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = StoreKeySpec::new(Host::Purchase)
        .client_id("11111111-2222-4333-8444-555555555555")
        .mint();
    let answer = renew(&endpoints, Host::Purchase, &token, &key).await;
    answer.assert_unauthorized("InconsistentClientId", "");
}

#[tokio::test]
async fn renew_without_a_ticket_or_with_a_bad_one_is_unauthorized() {
    let emulator = start_emulator().await;
    let endpoints = emulator.endpoints();
    let key = StoreKeySpec::new(Host::Collections).mint();
    let answer = renew(&endpoints, Host::Collections, "", &key).await;
    answer.assert_unauthorized("PartnerAadTicketRequired", "");
    let answer = renew(&endpoints, Host::Collections, "not-a-token", &key).await;
    answer.assert_unauthorized("AuthenticationTokenInvalid", "");
}

#[tokio::test]
async fn renew_with_a_field_missing_is_invalid_parameter_naming_it() {
    let emulator = start_emulator().await;
    let endpoints = emulator.endpoints();
    let cases = [
        (json!({"key": "k"}), "serviceTicket"),
        (json!({"serviceTicket": "t"}), "key"),
        (json!({"serviceTicket": "t", "key": ""}), "key"),
    ];
    for (body, field) in cases {
        let answer = renew_raw(&endpoints, Host::Collections, &body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        let parsed = answer.json();
        assert_eq!(parsed["innererror"]["code"], "InvalidParameter", "{parsed}");
        assert!(answer.inner_data().contains(field), "{field}: {parsed}");
    }
    let url = format!(
        "{}/v6.0/b2b/keys/renew",
        endpoints.host_url(Host::Collections)
    );
    let not_json = reqwest::Client::new()
        .post(url)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status().as_u16(), 415);
}

// ---------------------------------------------------------------------------------------------
// Magic ids, at the HTTP level (tests/sandbox.rs checks what the facade makes of each)

#[tokio::test]
async fn magic_statuses_answer_in_the_store_error_shape_with_correlation_headers() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let throttled = license(&endpoints, magic::MAGIC_429, Some(&token)).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.header("retry-after"), "30");
    throttled.assert_store_ids();
    assert_eq!(throttled.json()["code"], "TooManyRequests");

    let bad = license(&endpoints, magic::MAGIC_400, Some(&token)).await;
    assert_eq!(bad.status, 400);
    assert!(bad.inner_data().contains("productId"), "{}", bad.body);

    let key = StoreKeySpec::new(Host::Purchase)
        .payload(magic::MAGIC_401_INCONSISTENT_CLIENT_ID)
        .mint();
    let answer = renew(&endpoints, Host::Purchase, &token, &key).await;
    answer.assert_unauthorized("InconsistentClientId", "magic");

    let key = StoreKeySpec::new(Host::Collections)
        .payload(magic::MAGIC_409)
        .mint();
    assert_eq!(
        renew(&endpoints, Host::Collections, &token, &key)
            .await
            .status,
        409
    );
}

#[tokio::test]
async fn magic_reset_and_truncated_break_the_connection_before_and_mid_answer() {
    let emulator = start_emulator().await;
    let client = reqwest::Client::new();
    let post = |magic| {
        client
            .post(license_url(&emulator.endpoints(), magic))
            .send()
    };

    let error = post(magic::MAGIC_RESET)
        .await
        .expect_err("no answer arrives");
    assert!(!error.is_timeout() && !error.is_connect(), "{error:?}");

    let response = post(magic::MAGIC_TRUNCATED)
        .await
        .expect("the head arrives");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.content_length(), Some(4096));
    assert!(response.headers().contains_key("ms-correlationid"));
    assert!(response.bytes().await.is_err(), "the body must be cut off");
}

#[tokio::test]
async fn magic_malformed_answers_200_with_a_body_that_is_not_json() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let answer = license(&endpoints, magic::MAGIC_MALFORMED, Some(&token)).await;
    assert_eq!(answer.status, 200);
    assert!(
        serde_json::from_str::<Value>(&answer.body).is_err(),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn magic_slow_answers_as_usual_after_the_delay() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let started = Instant::now();
    let answer = license(&endpoints, "MAGIC-SLOW-300", Some(&token)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn emulator_stops_when_asked_and_frees_its_port() {
    let emulator = start_emulator().await;
    let addr = emulator.endpoints().local_addr();
    emulator.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Collections: publisherQuery and consume (store-services-apis.md 2.3, 2.5, 1.4)

/// The fields of a v9 collections item, as store-services-apis.md 2.3 lists them.
const ITEM_FIELDS: [&str; 16] = [
    "acquiredDate",
    "acquisitionType",
    "endDate",
    "id",
    "modifiedDate",
    "productId",
    "productKind",
    "quantity",
    "recurrenceData",
    "satisfiedByProductIds",
    "skuId",
    "startDate",
    "status",
    "tags",
    "transactionId",
    "trialData",
];

async fn post_collections(endpoints: &Endpoints, path: &str, token: &str, body: &Value) -> Answer {
    let base = endpoints.host_url(Host::Collections);
    let mut request = reqwest::Client::new()
        .post(format!("{base}/{path}"))
        .header("ms-cv", "xu2HW6SrSkyfHyFh.0.3")
        .json(body);
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    Answer::read(request.send().await.expect("the emulator answers")).await
}

fn query_body(key: &str, products: &[&str], extra: Value) -> Value {
    let products: Vec<Value> = products.iter().map(|p| json!({"productId": p})).collect();
    let mut body = json!({
        "beneficiaries": [{"identityType": "b2b", "identityValue": key, "localTicketReference": "t"}],
        "productSkuIds": products,
    });
    for (name, value) in extra.as_object().into_iter().flatten() {
        body[name] = value.clone();
    }
    body
}

async fn query(endpoints: &Endpoints, token: &str, body: &Value) -> Answer {
    post_collections(endpoints, "v9.0/collections/publisherQuery", token, body).await
}

/// Every item of `key`'s collection for `products`, page by page.
async fn query_pages(
    endpoints: &Endpoints,
    token: &str,
    key: &str,
    products: &[&str],
    extra: Value,
) -> Vec<Vec<Value>> {
    let mut body = query_body(key, products, extra);
    let mut pages = Vec::new();
    loop {
        let answer = query(endpoints, token, &body).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let page = answer.json();
        pages.push(page["items"].as_array().unwrap().clone());
        match page.get("continuationToken") {
            Some(next) => body["continuationToken"] = next.clone(),
            None => return pages,
        }
    }
}

fn consume_body(key: &str, product_id: &str, tracking_id: &str, remove: Option<i64>) -> Value {
    let mut body = json!({
        "beneficiary": {"identityType": "b2b", "identityValue": key, "localTicketReference": "t"},
        "productId": product_id,
        "trackingId": tracking_id,
        "includeOrderIds": true,
    });
    if let Some(quantity) = remove {
        body["removeQuantity"] = json!(quantity);
    }
    body
}

async fn consume(endpoints: &Endpoints, token: &str, body: &Value) -> Answer {
    post_collections(endpoints, "v8.0/collections/consume", token, body).await
}

fn collections_key(user: &str) -> String {
    StoreKeySpec::new(Host::Collections).user_id(user).mint()
}

fn tracking_id(n: u32) -> String {
    format!("1b0d1a3c-6a30-4c2e-9a0b-{n:012x}")
}

/// The quantity `key`'s collection shows for `product_id`.
async fn balance(endpoints: &Endpoints, token: &str, key: &str, product_id: &str) -> i64 {
    let answer = query(endpoints, token, &query_body(key, &[product_id], json!({}))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["items"][0]["quantity"].as_i64().unwrap()
}

/// A 400 `InvalidParameter` naming `field`.
fn assert_invalid_parameter(answer: &Answer, field: &str, case: &str) {
    assert_eq!(answer.status, 400, "{case}: {}", answer.body);
    assert_eq!(
        answer.json()["innererror"]["code"],
        "InvalidParameter",
        "{case}"
    );
    assert!(
        answer.inner_data().contains(field),
        "{case}: {}",
        answer.body
    );
}

#[tokio::test]
async fn publisher_query_lists_the_catalog_with_the_documented_item_fields() {
    use msstore_facade::emulator::catalog::*;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = collections_key("alice");
    for path in [
        "v9.0/collections/publisherQuery",
        "v9.0/collections/PublisherQuery",
    ] {
        let body = query_body(&key, &PRODUCTS, json!({}));
        let answer = post_collections(&endpoints, path, &token, &body).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        answer.assert_store_ids();
        let page = answer.json();
        assert!(page.get("continuationToken").is_none(), "{page}");
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 11, "{page}");
        for item in items {
            let mut fields: Vec<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            fields.sort_unstable();
            let mut expected = ITEM_FIELDS.to_vec();
            if item.get("recurrenceId").is_some() {
                expected.retain(|f| *f != "recurrenceData");
                expected.push("recurrenceId");
                expected.sort_unstable();
            }
            assert_eq!(fields, expected, "{item}");
            assert_eq!(item["skuId"], SANDBOX_SKU);
            assert!(
                item["acquiredDate"]
                    .as_str()
                    .unwrap()
                    .ends_with(".0000000+00:00"),
                "{item}"
            );
            for id in ["id", "transactionId"] {
                assert!(
                    msstore_facade::auth::TenantId::parse(item[id].as_str().unwrap()).is_ok(),
                    "{id}: {item}"
                );
            }
        }
        let find = |product: &str, acquisition: &str| {
            items
                .iter()
                .find(|i| i["productId"] == product && i["acquisitionType"] == acquisition)
                .unwrap_or_else(|| panic!("{product} {acquisition}: {page}"))
        };
        let pass = find(SANDBOX_PASS, "Recurring");
        assert_eq!(pass["productKind"], "Pass");
        assert!(pass["recurrenceData"]
            .as_str()
            .unwrap()
            .starts_with("mdr:0:"));
        let game_via_pass = find(SANDBOX_GAME, "Recurring");
        assert_eq!(game_via_pass["recurrenceId"], pass["recurrenceData"]);
        assert_eq!(
            game_via_pass["satisfiedByProductIds"],
            json!([SANDBOX_PASS])
        );
        assert_eq!(find(SANDBOX_GAME, "Single")["status"], "Revoked");
        assert_eq!(find(SANDBOX_PROMO, "Conditional")["status"], "Active");
        assert_eq!(
            find(SANDBOX_APP_TRIAL, "Single")["trialData"],
            json!({"isInTrialPeriod": true, "isTrial": true, "trialTimeRemaining": "6.23:59:59.1234567"})
        );
        let consumable = find(SANDBOX_CONSUMABLE, "Single");
        assert_eq!(consumable["productKind"], "Consumable");
        assert!((10..20).contains(&consumable["quantity"].as_i64().unwrap()));
        assert_eq!(
            find(SANDBOX_UNMANAGED_CONSUMABLE, "Single")["productKind"],
            "UnmanagedConsumable"
        );
        let durables: Vec<&Value> = items
            .iter()
            .filter(|i| i["productId"] == SANDBOX_DURABLE)
            .collect();
        assert_eq!(durables.len(), 2);
        assert_eq!(
            durables[1]["satisfiedByProductIds"],
            json!([SANDBOX_BUNDLE])
        );
    }
}

#[tokio::test]
async fn publisher_query_is_stable_per_user_differs_between_users_and_filters() {
    use msstore_facade::emulator::catalog::*;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let products = [SANDBOX_GAME, SANDBOX_PASS, "9NOTINCATALOG"];
    let items = |key: String, extra: Value| {
        let token = token.clone();
        async move {
            let answer = query(&endpoints, &token, &query_body(&key, &products, extra)).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            answer.json()["items"].clone()
        }
    };
    let alice = items(collections_key("alice"), json!({})).await;
    assert_eq!(alice.as_array().unwrap().len(), 3, "{alice}");
    assert_eq!(alice, items(collections_key("alice"), json!({})).await);
    let bob = items(collections_key("bob"), json!({})).await;
    assert_ne!(alice[0]["id"], bob[0]["id"]);
    assert_ne!(alice[0]["acquiredDate"], bob[0]["acquiredDate"]);

    let valid = items(collections_key("alice"), json!({"validityType": "Valid"})).await;
    assert!(
        valid
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "Active"),
        "{valid}"
    );
    assert_eq!(valid.as_array().unwrap().len(), 2);
    let invalid = items(collections_key("alice"), json!({"validityType": "Invalid"})).await;
    assert_eq!(invalid.as_array().unwrap().len(), 1, "{invalid}");
    assert_eq!(invalid[0]["status"], "Revoked");

    let other_sku = query_body(
        &collections_key("alice"),
        &[],
        json!({
            "productSkuIds": [{"productId": SANDBOX_GAME, "skuId": "0099"}]
        }),
    );
    let answer = query(&endpoints, &token, &other_sku).await;
    assert_eq!(answer.json()["items"], json!([]), "{}", answer.body);
}

#[tokio::test]
async fn publisher_query_pages_of_two_walk_everything_with_duplicates_on_other_pages() {
    use msstore_facade::emulator::catalog::*;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = collections_key("alice");
    let extra = json!({"maxPageSize": 2, "excludeDuplicates": true});
    let pages = query_pages(&endpoints, &token, &key, &PRODUCTS, extra).await;
    assert_eq!(pages.len(), 6, "{pages:?}");
    assert!(pages.iter().all(|page| page.len() <= 2));
    let whole = query_pages(&endpoints, &token, &key, &PRODUCTS, json!({})).await;
    assert_eq!(
        pages.concat(),
        whole.concat(),
        "paging sees every item once, in order"
    );
    for product in [SANDBOX_GAME, SANDBOX_DURABLE] {
        let on: Vec<usize> = (0..pages.len())
            .filter(|&n| pages[n].iter().any(|i| i["productId"] == product))
            .collect();
        assert_eq!(on.len(), 2, "{product} is on two different pages: {on:?}");
    }
}

#[tokio::test]
async fn publisher_query_refuses_garbled_and_foreign_continuation_tokens() {
    use msstore_facade::emulator::catalog::*;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = collections_key("alice");
    let first = query(
        &endpoints,
        &token,
        &query_body(&key, &PRODUCTS, json!({"maxPageSize": 2})),
    )
    .await;
    let next = first.json()["continuationToken"].clone();
    assert!(next.is_string(), "{}", first.body);
    let with_token = |key: &str, products: &[&str], extra: Value| {
        let mut body = query_body(key, products, extra);
        body["continuationToken"] = next.clone();
        body
    };
    let fine = query(
        &endpoints,
        &token,
        &with_token(&key, &PRODUCTS, json!({"maxPageSize": 3})),
    )
    .await;
    assert_eq!(fine.status, 200, "the page size may change: {}", fine.body);
    let cases = [
        (
            "another user",
            with_token(&collections_key("bob"), &PRODUCTS, json!({})),
        ),
        (
            "other products",
            with_token(
                &key,
                &[SANDBOX_GAME, SANDBOX_DURABLE, SANDBOX_PASS],
                json!({}),
            ),
        ),
        (
            "another validity",
            with_token(&key, &PRODUCTS, json!({"validityType": "Valid"})),
        ),
        (
            "garbled",
            query_body(&key, &PRODUCTS, json!({"continuationToken": "not a token"})),
        ),
    ];
    for (case, body) in cases {
        let answer = query(&endpoints, &token, &body).await;
        assert_invalid_parameter(&answer, "continuationToken", case);
    }
}

#[tokio::test]
async fn publisher_query_refuses_101_products_page_size_201_and_bad_bodies_naming_the_field() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = collections_key("alice");
    let many: Vec<String> = (0..101).map(|n| format!("9NSANDBOX{n:03}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let cases = [
        (
            "101 products",
            query_body(&key, &many, json!({})),
            "productSkuIds",
        ),
        (
            "no products",
            json!({"beneficiaries": [{"identityType": "b2b", "identityValue": key}]}),
            "productSkuIds",
        ),
        (
            "page 201",
            query_body(&key, &["9NSANDBOXGME"], json!({"maxPageSize": 201})),
            "maxPageSize",
        ),
        (
            "two beneficiaries",
            query_body(
                &key,
                &["9NSANDBOXGME"],
                json!({"beneficiaries": [
                    {"identityType": "b2b", "identityValue": key},
                    {"identityType": "b2b", "identityValue": key},
                ]}),
            ),
            "beneficiaries",
        ),
        ("not an object", json!("query"), "body"),
    ];
    for (case, body, field) in cases {
        let answer = query(&endpoints, &token, &body).await;
        assert_invalid_parameter(&answer, field, case);
        assert!(!answer.body.contains(&key), "{case}: the key is echoed");
    }
    let hundred = query(
        &endpoints,
        &token,
        &query_body(&key, &many[..100], json!({"maxPageSize": 200})),
    )
    .await;
    assert_eq!(hundred.status, 200, "{}", hundred.body);
}

#[tokio::test]
async fn collections_endpoints_check_the_token_and_the_key_like_renewal() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let (_, body) = token_for_scope(
        &endpoints,
        &format!("{}/.default", KEY_CREATION_AUDIENCES[0]),
    )
    .await;
    let key_creation_token = body["access_token"].as_str().unwrap().to_owned();
    let valid = collections_key("alice");
    let purchase = StoreKeySpec::new(Host::Purchase).mint();
    let expired = StoreKeySpec::new(Host::Collections)
        .issued_at(now() - 31 * 24 * 3600)
        .mint();
    let other_client = StoreKeySpec::new(Host::Collections)
        .client_id("11111111-2222-4333-8444-555555555555")
        .mint();
    let cases = [
        ("no token", "", valid.as_str(), "PartnerAadTicketRequired"),
        (
            "key-creation token",
            key_creation_token.as_str(),
            valid.as_str(),
            "AuthenticationTokenInvalid",
        ),
        (
            "purchase key",
            token.as_str(),
            purchase.as_str(),
            "AuthenticationTokenInvalid",
        ),
        (
            "expired key",
            token.as_str(),
            expired.as_str(),
            "AuthenticationTokenInvalid",
        ),
        (
            "garbage key",
            token.as_str(),
            "not-a-key",
            "AuthenticationTokenInvalid",
        ),
        (
            "other client",
            token.as_str(),
            other_client.as_str(),
            "InconsistentClientId",
        ),
    ];
    for (case, bearer, key, inner) in cases {
        let answer = query(
            &endpoints,
            bearer,
            &query_body(key, &["9NSANDBOXGME"], json!({})),
        )
        .await;
        answer.assert_unauthorized(inner, &format!("query, {case}"));
        let body = consume_body(key, "9NSANDBOXCNS", &tracking_id(1), Some(1));
        let answer = consume(&endpoints, bearer, &body).await;
        answer.assert_unauthorized(inner, &format!("consume, {case}"));
        assert!(!answer.body.contains(key), "{case}: the key is echoed");
    }
}

#[tokio::test]
async fn sandbox_key_user_keys_work_with_the_collections_endpoints() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = sandbox_key(&["--user", "carol"]);
    let answer = query(
        &endpoints,
        &token,
        &query_body(&key, &["9NSANDBOXGME"], json!({})),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let expected = query(
        &endpoints,
        &token,
        &query_body(&collections_key("carol"), &["9NSANDBOXGME"], json!({})),
    )
    .await;
    assert_eq!(answer.json(), expected.json());
}

#[tokio::test]
async fn consume_of_a_store_managed_consumable_deducts_once_per_tracking_id() {
    use msstore_facade::emulator::catalog::SANDBOX_CONSUMABLE;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = collections_key("alice");
    let start = balance(&endpoints, &token, &key, SANDBOX_CONSUMABLE).await;
    let body = consume_body(&key, SANDBOX_CONSUMABLE, &tracking_id(7), Some(3));
    let first = consume(&endpoints, &token, &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    first.assert_store_ids();
    let answer = first.json();
    assert_eq!(answer["newQuantity"], start - 3);
    assert_eq!(answer["productId"], SANDBOX_CONSUMABLE);
    assert_eq!(answer["trackingId"], tracking_id(7));
    assert!(answer["itemId"].is_string(), "{answer}");
    let orders = answer["orderTransactions"].as_array().unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["$type"], "consumeOrderTransactionV9");
    assert_eq!(orders[0]["quantityConsumed"], 3);
    assert!(orders[0]["orderId"].is_string() && orders[0]["orderLineItemId"].is_string());
    assert_eq!(
        balance(&endpoints, &token, &key, SANDBOX_CONSUMABLE).await,
        start - 3
    );

    let replay = consume(&endpoints, &token, &body).await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.json(), answer, "same result, no second deduction");
    assert_eq!(
        balance(&endpoints, &token, &key, SANDBOX_CONSUMABLE).await,
        start - 3
    );

    let mut without_ids = consume_body(&key, SANDBOX_CONSUMABLE, &tracking_id(8), Some(1));
    without_ids["includeOrderIds"] = json!(false);
    let answer = consume(&endpoints, &token, &without_ids).await.json();
    assert!(answer.get("orderTransactions").is_none(), "{answer}");
    assert_eq!(answer["newQuantity"], start - 4);
    let bob = collections_key("bob");
    assert_eq!(
        balance(&endpoints, &token, &bob, SANDBOX_CONSUMABLE).await,
        balance(&endpoints, &token, &bob, SANDBOX_CONSUMABLE).await,
    );
}

#[tokio::test]
async fn consume_refuses_more_than_the_balance_and_a_reused_tracking_id() {
    use msstore_facade::emulator::catalog::SANDBOX_CONSUMABLE;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = collections_key("alice");
    let start = balance(&endpoints, &token, &key, SANDBOX_CONSUMABLE).await;
    let too_much = consume_body(&key, SANDBOX_CONSUMABLE, &tracking_id(1), Some(start + 1));
    let answer = consume(&endpoints, &token, &too_much).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.json()["innererror"]["code"], "InsufficientQuantity");
    assert_eq!(
        balance(&endpoints, &token, &key, SANDBOX_CONSUMABLE).await,
        start
    );

    let all = consume_body(&key, SANDBOX_CONSUMABLE, &tracking_id(2), Some(start));
    assert_eq!(
        consume(&endpoints, &token, &all).await.json()["newQuantity"],
        0
    );
    let other_quantity = consume_body(&key, SANDBOX_CONSUMABLE, &tracking_id(2), Some(1));
    let answer = consume(&endpoints, &token, &other_quantity).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.json()["innererror"]["code"], "TrackingIdConflict");
    assert!(
        answer.inner_data().contains("trackingId"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn consume_of_a_developer_managed_consumable_takes_no_quantity_and_replays_without_orders() {
    use msstore_facade::emulator::catalog::SANDBOX_UNMANAGED_CONSUMABLE as UNMANAGED;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = collections_key("alice");
    let with_quantity = consume_body(&key, UNMANAGED, &tracking_id(1), Some(1));
    let answer = consume(&endpoints, &token, &with_quantity).await;
    assert_invalid_parameter(&answer, "removeQuantity", "unmanaged with removeQuantity");

    let body = consume_body(&key, UNMANAGED, &tracking_id(2), None);
    let first = consume(&endpoints, &token, &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert_eq!(first["newQuantity"], 0);
    assert_eq!(
        first["orderTransactions"].as_array().map(Vec::len),
        Some(1),
        "{first}"
    );
    let replay = consume(&endpoints, &token, &body).await.json();
    assert_eq!(replay["newQuantity"], 0);
    assert_eq!(replay["itemId"], first["itemId"]);
    assert_eq!(replay["orderTransactions"], json!([]), "{replay}");

    let mut in_sandbox = consume_body(&key, UNMANAGED, &tracking_id(3), None);
    in_sandbox["sbx"] = json!("XDKS.1");
    let answer = consume(&endpoints, &token, &in_sandbox).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(
        answer.json()["innererror"]["code"],
        "XstsAuthenticationRequired"
    );
    in_sandbox["sbx"] = json!("RETAIL");
    assert_eq!(consume(&endpoints, &token, &in_sandbox).await.status, 200);
}

#[tokio::test]
async fn consume_refuses_bad_tracking_ids_and_products_that_are_not_consumables() {
    use msstore_facade::emulator::catalog::{SANDBOX_CONSUMABLE, SANDBOX_DURABLE};
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = collections_key("alice");
    let cases = [
        (
            "non-GUID trackingId",
            consume_body(&key, SANDBOX_CONSUMABLE, "retry-1", Some(1)),
            "trackingId",
        ),
        (
            "no removeQuantity",
            consume_body(&key, SANDBOX_CONSUMABLE, &tracking_id(1), None),
            "removeQuantity",
        ),
        (
            "zero removeQuantity",
            consume_body(&key, SANDBOX_CONSUMABLE, &tracking_id(1), Some(0)),
            "removeQuantity",
        ),
        (
            "durable",
            consume_body(&key, SANDBOX_DURABLE, &tracking_id(1), Some(1)),
            "productId",
        ),
        (
            "not owned",
            consume_body(&key, "9NOTINCATALOG", &tracking_id(1), Some(1)),
            "productId",
        ),
    ];
    for (case, body, field) in cases {
        assert_invalid_parameter(&consume(&endpoints, &token, &body).await, field, case);
    }
}

#[tokio::test]
async fn magic_reset_after_commit_loses_the_first_answer_and_the_replay_tells_it() {
    use msstore_facade::emulator::magic::MAGIC_RESET_AFTER_COMMIT;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = collections_key("alice");
    let start = balance(&endpoints, &token, &key, MAGIC_RESET_AFTER_COMMIT).await;
    let body = consume_body(&key, MAGIC_RESET_AFTER_COMMIT, &tracking_id(5), Some(2));
    let url = format!(
        "{}/v8.0/collections/consume",
        endpoints.host_url(Host::Collections)
    );
    let error = reqwest::Client::new()
        .post(url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect_err("the connection is reset");
    assert!(!error.is_timeout() && !error.is_connect(), "{error:?}");
    assert_eq!(
        balance(&endpoints, &token, &key, MAGIC_RESET_AFTER_COMMIT).await,
        start - 2
    );

    for _ in 0..2 {
        let replay = consume(&endpoints, &token, &body).await;
        assert_eq!(replay.status, 200, "{}", replay.body);
        assert_eq!(replay.json()["newQuantity"], start - 2);
        assert_eq!(replay.json()["orderTransactions"][0]["quantityConsumed"], 2);
    }
    assert_eq!(
        balance(&endpoints, &token, &key, MAGIC_RESET_AFTER_COMMIT).await,
        start - 2
    );
}

#[tokio::test]
async fn magic_ids_fail_the_collections_endpoints_on_purpose() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = collections_key("alice");
    let fgrl = "The rate limit of 200 operations in 300 seconds has been exceeded for aspect {userId; publisherId}.";
    for (magic, field) in [
        (magic::MAGIC_400, "productSkuIds"),
        (magic::MAGIC_429, ""),
        (magic::MAGIC_503, ""),
    ] {
        let queried = query(
            &endpoints,
            &token,
            &query_body(&key, &["9NSANDBOXGME", magic], json!({})),
        )
        .await;
        let consumed = consume(
            &endpoints,
            &token,
            &consume_body(&key, magic, &tracking_id(1), Some(1)),
        )
        .await;
        for (answer, field) in [(queried, field), (consumed, "productId")] {
            answer.assert_store_ids();
            match magic {
                magic::MAGIC_400 => assert_invalid_parameter(&answer, field, magic),
                magic::MAGIC_429 => {
                    assert_eq!(answer.status, 429, "{}", answer.body);
                    assert_eq!(answer.header("retry-after"), "30");
                    assert_eq!(answer.json()["message"], fgrl);
                }
                _ => assert_eq!(answer.status, 503, "{}", answer.body),
            }
        }
    }
    let answer = query(
        &endpoints,
        &token,
        &query_body(&key, &[magic::MAGIC_401_INCONSISTENT_CLIENT_ID], json!({})),
    )
    .await;
    answer.assert_unauthorized("InconsistentClientId", "magic 401");
}

#[tokio::test]
async fn the_201st_collections_operation_of_a_user_in_300_seconds_is_throttled() {
    use msstore_facade::emulator::{catalog::SANDBOX_GAME, RATE_LIMIT_OPERATIONS};
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = collections_key("busy-user");
    let body = query_body(&key, &[SANDBOX_GAME], json!({}));
    for n in 0..RATE_LIMIT_OPERATIONS - 1 {
        let answer = query(&endpoints, &token, &body).await;
        assert_eq!(answer.status, 200, "operation {n}: {}", answer.body);
    }
    let last = consume(
        &endpoints,
        &token,
        &consume_body(&key, "9NSANDBOXCNS", &tracking_id(1), Some(1)),
    )
    .await;
    assert_eq!(last.status, 200, "consume counts too: {}", last.body);
    let throttled = query(&endpoints, &token, &body).await;
    assert_eq!(throttled.status, 429, "{}", throttled.body);
    let retry_after: u64 = throttled.header("retry-after").parse().unwrap();
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    assert_eq!(
        throttled.json()["message"],
        "The rate limit of 200 operations in 300 seconds has been exceeded for aspect {userId; publisherId}."
    );
    let other_user = query(
        &endpoints,
        &token,
        &query_body(&collections_key("calm-user"), &[SANDBOX_GAME], json!({})),
    )
    .await;
    assert_eq!(other_user.status, 200, "{}", other_user.body);
}

// The purchase endpoints: grant, recurrences (query and change) and orders.

async fn post_purchase(endpoints: &Endpoints, path: &str, token: &str, body: &Value) -> Answer {
    let base = endpoints.host_url(Host::Purchase);
    let mut request = reqwest::Client::new()
        .post(format!("{base}/{path}"))
        .header("ms-cv", "xu2HW6SrSkyfHyFh.0.4")
        .json(body);
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    Answer::read(request.send().await.expect("the emulator answers")).await
}

fn purchase_key(user: &str) -> String {
    StoreKeySpec::new(Host::Purchase).user_id(user).mint()
}

fn order_id(n: u32) -> String {
    format!("6a0d1a3c-6a30-4c2e-9a0b-{n:012x}")
}

fn grant_body(key: &str, product_id: &str, order_id: &str) -> Value {
    json!({
        "availabilityId": "9RSANDBOXAVL",
        "b2bKey": key,
        "devOfferId": "offer-1",
        "language": "en-us",
        "market": "us",
        "orderId": order_id,
        "productId": product_id,
        "quantity": 1,
        "skuId": "0010",
    })
}

async fn grant(endpoints: &Endpoints, token: &str, body: &Value) -> Answer {
    post_purchase(endpoints, "v7.0/purchases/grant", token, body).await
}

async fn recurrences_query(endpoints: &Endpoints, token: &str, body: &Value) -> Answer {
    post_purchase(endpoints, "v8.0/b2b/recurrences/query", token, body).await
}

/// Every recurrence of `key`, page by page.
async fn recurrence_pages(
    endpoints: &Endpoints,
    token: &str,
    key: &str,
    extra: Value,
) -> Vec<Vec<Value>> {
    let mut body = json!({"b2bKey": key});
    for (name, value) in extra.as_object().into_iter().flatten() {
        body[name] = value.clone();
    }
    let mut pages = Vec::new();
    loop {
        let answer = recurrences_query(endpoints, token, &body).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let page = answer.json();
        pages.push(page["items"].as_array().unwrap().clone());
        match page.get("continuationToken") {
            Some(next) => body["continuationToken"] = next.clone(),
            None => return pages,
        }
    }
}

/// A user of the purchase endpoints: a purchase key and the emulator's token.
struct Buyer {
    endpoints: Endpoints,
    token: String,
    key: String,
}

impl Buyer {
    fn new(endpoints: &Endpoints, token: &str, key: &str) -> Self {
        Self {
            endpoints: *endpoints,
            token: token.to_owned(),
            key: key.to_owned(),
        }
    }

    /// A change of the recurrence `id`, written into the path as is.
    async fn change(&self, id: &str, change_type: &str, days: Option<Value>) -> Answer {
        let mut body = json!({"b2bKey": self.key, "changeType": change_type});
        if let Some(days) = days {
            body["extensionTimeInDays"] = days;
        }
        let path = format!("v8.0/b2b/recurrences/{id}/change");
        post_purchase(&self.endpoints, &path, &self.token, &body).await
    }

    /// Every recurrence, all pages.
    async fn recurrences(&self) -> Vec<Value> {
        recurrence_pages(&self.endpoints, &self.token, &self.key, json!({}))
            .await
            .concat()
    }
}

async fn orders_query(endpoints: &Endpoints, token: &str, body: &Value) -> Answer {
    post_purchase(endpoints, "v8.0/b2b/orders/query", token, body).await
}

/// Every order of `key` in `filter` (none: no filter sent), and how many pages they took.
async fn all_orders(
    endpoints: &Endpoints,
    token: &str,
    key: &str,
    filter: Option<Value>,
) -> (Vec<Value>, usize) {
    let mut body = json!({"b2bKey": key});
    if let Some(filter) = filter {
        body["lineItemStateFilter"] = filter;
    }
    let mut orders = Vec::new();
    for pages in 1.. {
        let answer = orders_query(endpoints, token, &body).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let page = answer.json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= msstore_facade::emulator::ORDERS_PAGE_SIZE);
        orders.extend(items.iter().cloned());
        match page.get("continuationToken") {
            Some(next) => body["continuationToken"] = next.clone(),
            None => return (orders, pages),
        }
    }
    unreachable!()
}

fn is_guid(value: &Value) -> bool {
    msstore_facade::auth::TenantId::parse(value.as_str().unwrap_or_default()).is_ok()
}

#[tokio::test]
async fn grant_answers_a_purchased_order_once_per_order_id_and_the_queries_show_it() {
    use msstore_facade::emulator::catalog::{SANDBOX_FREE_CONSUMABLE, SANDBOX_FREE_DURABLE};
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = purchase_key("alice");
    let body = grant_body(&key, SANDBOX_FREE_DURABLE, &order_id(1));
    let first = grant(&endpoints, &token, &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    first.assert_store_ids();
    let order = first.json();
    assert_eq!(order["orderId"], order_id(1));
    assert_eq!(order["orderState"], "Purchased");
    assert_eq!(
        (order["language"].clone(), order["market"].clone()),
        (json!("en-us"), json!("us"))
    );
    assert_eq!(order["totalAmount"], 0.0);
    assert!(
        order["createdTime"].as_str().unwrap().ends_with("+00:00"),
        "{order}"
    );
    let lines = order["orderLineItems"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{order}");
    let line = &lines[0];
    assert!(is_guid(&line["lineItemId"]), "{line}");
    assert_eq!(line["billingState"], "Charged");
    assert_eq!(line["fulfillmentState"], "Fulfilled");
    assert_eq!(
        line["beneficiary"],
        json!({"identityType": "pub", "identityValue": "alice"})
    );
    assert_eq!(
        (line["productId"].clone(), line["skuId"].clone()),
        (json!(SANDBOX_FREE_DURABLE), json!("0010"))
    );
    assert_eq!(
        (line["listPrice"].clone(), line["quantity"].clone()),
        (json!(0.0), json!(1))
    );
    assert_eq!(line["availabilityId"], "9RSANDBOXAVL");

    let replay = post_purchase(&endpoints, "v6.0/purchases/grant", &token, &body).await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.json(), order, "a replay answers the same order");
    let consumable = grant_body(&key, SANDBOX_FREE_CONSUMABLE, &order_id(2));
    assert_eq!(grant(&endpoints, &token, &consumable).await.status, 200);

    let (orders, _) = all_orders(&endpoints, &token, &key, Some(json!(["Purchased"]))).await;
    let granted: Vec<&Value> = orders
        .iter()
        .filter(|o| o["orderId"] == order_id(1))
        .collect();
    assert_eq!(granted.len(), 1, "granted once: {orders:?}");
    assert_eq!(
        granted[0]["orderLineItems"][0]["lineItemId"],
        line["lineItemId"]
    );
    assert_eq!(
        granted[0]["orderLineItems"][0]["lineItemState"],
        "Purchased"
    );
    assert_eq!(
        orders.last().unwrap()["orderId"],
        order_id(2),
        "newest last"
    );

    let alices_collections = collections_key("alice");
    let products = [
        SANDBOX_FREE_DURABLE,
        SANDBOX_FREE_CONSUMABLE,
        "9NSANDBOXGME",
    ];
    let answer = query(
        &endpoints,
        &token,
        &query_body(&alices_collections, &products, json!({})),
    )
    .await;
    let items = answer.json()["items"].as_array().unwrap().clone();
    let durable = items
        .iter()
        .find(|i| i["productId"] == SANDBOX_FREE_DURABLE)
        .unwrap_or_else(|| panic!("the granted durable is owned: {items:?}"));
    assert_eq!(
        (durable["status"].clone(), durable["quantity"].clone()),
        (json!("Active"), json!(1))
    );
    assert_eq!(durable["transactionId"], order_id(1));
    let bob = query(
        &endpoints,
        &token,
        &query_body(&collections_key("bob"), &products, json!({})),
    )
    .await;
    assert_eq!(
        bob.json()["items"].as_array().unwrap().len(),
        2,
        "bob was granted nothing"
    );
}

#[tokio::test]
async fn grant_refuses_priced_products_other_quantities_and_a_reused_order_id() {
    use msstore_facade::emulator::catalog::*;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = purchase_key("alice");
    let mut two = grant_body(&key, SANDBOX_FREE_DURABLE, &order_id(1));
    two["quantity"] = json!(2);
    let mut no_order = grant_body(&key, SANDBOX_FREE_DURABLE, &order_id(1));
    no_order.as_object_mut().unwrap().remove("orderId");
    let cases = [
        (
            "priced",
            grant_body(&key, SANDBOX_PRICED_DURABLE, &order_id(1)),
            "productId",
        ),
        (
            "owned game",
            grant_body(&key, SANDBOX_GAME, &order_id(1)),
            "productId",
        ),
        (
            "unknown",
            grant_body(&key, "9NOTINCATALOG", &order_id(1)),
            "productId",
        ),
        ("quantity 2", two, "quantity"),
        ("no orderId", no_order, "orderId"),
        (
            "orderId not a GUID",
            grant_body(&key, SANDBOX_FREE_DURABLE, "order-1"),
            "orderId",
        ),
    ];
    for (case, body, field) in cases {
        let answer = grant(&endpoints, &token, &body).await;
        assert_invalid_parameter(&answer, field, case);
        assert!(!answer.body.contains(&key), "{case}: the key is echoed");
    }
    let priced = grant(
        &endpoints,
        &token,
        &grant_body(&key, SANDBOX_PRICED_DURABLE, &order_id(1)),
    )
    .await;
    assert!(priced.body.contains("not free"), "{}", priced.body);

    let first = grant(
        &endpoints,
        &token,
        &grant_body(&key, SANDBOX_FREE_DURABLE, &order_id(3)),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let other = grant(
        &endpoints,
        &token,
        &grant_body(&key, SANDBOX_FREE_CONSUMABLE, &order_id(3)),
    )
    .await;
    assert_eq!(other.status, 409, "{}", other.body);
    assert_eq!(other.json()["innererror"]["code"], "OrderIdConflict");
    assert!(other.inner_data().contains("orderId"), "{}", other.body);
    let bob = grant(
        &endpoints,
        &token,
        &grant_body(&purchase_key("bob"), SANDBOX_FREE_CONSUMABLE, &order_id(3)),
    )
    .await;
    assert_eq!(bob.status, 200, "order ids are per user: {}", bob.body);
}

#[tokio::test]
async fn recurrences_query_has_every_state_for_every_user_and_pages() {
    use msstore_facade::emulator::catalog::{SANDBOX_PASS, SANDBOX_SUB_TRIAL};
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = purchase_key("alice");
    let whole = recurrence_pages(&endpoints, &token, &key, json!({})).await;
    assert_eq!(whole.len(), 1, "the default page of 25 holds them all");
    let items = &whole[0];
    let states: Vec<&str> = items
        .iter()
        .map(|i| i["recurrenceState"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "Active",
            "InDunning",
            "Canceled",
            "Inactive",
            "Failed",
            "None",
            "Active"
        ]
    );
    let fields = [
        "autoRenew",
        "beneficiary",
        "expirationTime",
        "expirationTimeWithGrace",
        "id",
        "isTrial",
        "lastModified",
        "market",
        "productId",
        "recurrenceState",
        "skuId",
        "startTime",
    ];
    for item in items {
        let mut expected = fields.to_vec();
        if item["recurrenceState"] == "Canceled" {
            expected.push("cancellationDate");
        }
        let mut keys: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        expected.sort_unstable();
        assert_eq!(keys, expected, "{item}");
        assert_eq!(item["beneficiary"], "pub:alice");
        let id = item["id"].as_str().unwrap();
        let parts: Vec<&str> = id.split(':').collect();
        assert_eq!(parts.len(), 4, "{id}");
        assert_eq!(
            (parts[0], parts[1], parts[3]),
            ("mdr", "0", item["productId"].as_str().unwrap())
        );
        assert!(
            parts[2].len() == 32 && parts[2].bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
    assert_eq!(
        (items[0]["productId"].clone(), items[0]["autoRenew"].clone()),
        (json!(SANDBOX_PASS), json!(true))
    );
    let dunning = &items[1];
    assert!(dunning["expirationTimeWithGrace"].as_str() > dunning["expirationTime"].as_str());
    assert_eq!(items.iter().filter(|i| i["isTrial"] == true).count(), 1);
    assert_eq!(items[6]["productId"], SANDBOX_SUB_TRIAL);

    let pass_id = &items[0]["id"];
    let collections = query(
        &endpoints,
        &token,
        &query_body(&collections_key("alice"), &[SANDBOX_PASS], json!({})),
    )
    .await;
    assert_eq!(
        &collections.json()["items"][0]["recurrenceData"],
        pass_id,
        "the collections query names the same id"
    );

    let pages = recurrence_pages(&endpoints, &token, &key, json!({"pageSize": "2"})).await;
    assert_eq!(pages.len(), 4, "{pages:?}");
    assert_eq!(pages.concat(), *items);
    let numeric = recurrence_pages(&endpoints, &token, &key, json!({"pageSize": 3})).await;
    assert_eq!(numeric.len(), 3);
    let bob = recurrence_pages(&endpoints, &token, &purchase_key("bob"), json!({})).await;
    assert_ne!(bob[0][0]["id"], items[0]["id"]);
    assert_eq!(bob[0].len(), 7);

    let first = recurrences_query(&endpoints, &token, &json!({"b2bKey": key, "pageSize": 2})).await;
    let next = first.json()["continuationToken"].clone();
    let foreign = recurrences_query(
        &endpoints,
        &token,
        &json!({"b2bKey": purchase_key("bob"), "continuationToken": next}),
    )
    .await;
    assert_invalid_parameter(&foreign, "continuationToken", "another user's token");
    let zero = recurrences_query(&endpoints, &token, &json!({"b2bKey": key, "pageSize": 0})).await;
    assert_invalid_parameter(&zero, "pageSize", "page size 0");
}

#[tokio::test]
async fn recurrence_changes_show_in_the_next_query_and_terminal_ones_refuse_them() {
    use msstore_facade::emulator::catalog::*;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let alice = Buyer::new(&endpoints, &token, &purchase_key("alice"));
    let before = alice.recurrences().await;
    let id_of = |product: &str| {
        before.iter().find(|r| r["productId"] == product).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let days = |item: &Value, field: &str| {
        let text = item[field].as_str().unwrap();
        chrono_days(text)
    };

    let extended = alice
        .change(&id_of(SANDBOX_PASS), "Extend", Some(json!("5")))
        .await;
    assert_eq!(extended.status, 200, "{}", extended.body);
    let extended = extended.json();
    assert_eq!(
        extended["productId"], SANDBOX_PASS,
        "a bare recurrence: {extended}"
    );
    let pass_before = &before[0];
    assert_eq!(
        days(&extended, "expirationTime") - days(pass_before, "expirationTime"),
        5
    );
    let shortened = alice
        .change(&id_of(SANDBOX_PASS), "Extend", Some(json!(-2)))
        .await
        .json();
    assert_eq!(
        days(&shortened, "expirationTime") - days(pass_before, "expirationTime"),
        3
    );
    assert_eq!(
        days(&shortened, "expirationTimeWithGrace") - days(pass_before, "expirationTimeWithGrace"),
        3
    );
    let no_days = alice.change(&id_of(SANDBOX_PASS), "Extend", None).await;
    assert_invalid_parameter(&no_days, "extensionTimeInDays", "Extend without days");
    let pause = alice.change(&id_of(SANDBOX_PASS), "Pause", None).await;
    assert_invalid_parameter(&pause, "changeType", "unknown change");

    let toggled = alice
        .change(
            &id_of(SANDBOX_SUB_DUNNING),
            "ToggleAutoRenew",
            Some(json!(0)),
        )
        .await
        .json();
    assert_eq!(
        (
            toggled["autoRenew"].clone(),
            toggled["recurrenceState"].clone()
        ),
        (json!(false), json!("InDunning"))
    );

    let refunded = alice
        .change(&id_of(SANDBOX_SUB_TRIAL), "Refund", None)
        .await;
    assert_eq!(refunded.status, 200, "{}", refunded.body);
    let refunded = refunded.json();
    let items = refunded["items"]
        .as_array()
        .unwrap_or_else(|| panic!("the trial answers items: {refunded}"));
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["recurrenceState"], "Canceled");

    let encoded = id_of(SANDBOX_PASS).replace(':', "%3A");
    let canceled = alice.change(&encoded, "Cancel", None).await;
    assert_eq!(
        canceled.status, 200,
        "percent-encoded id: {}",
        canceled.body
    );
    let canceled = canceled.json();
    assert_eq!(canceled["recurrenceState"], "Canceled");
    assert_eq!(canceled["autoRenew"], false);
    assert!(canceled["cancellationDate"].is_string(), "{canceled}");

    let after = alice.recurrences().await;
    assert_eq!(after[0], canceled, "the query shows the change");
    assert_eq!(after[1]["autoRenew"], false);
    assert_eq!(after[6]["recurrenceState"], "Canceled");
    let bob = Buyer::new(&endpoints, &token, &purchase_key("bob"));
    let bob = bob.recurrences().await;
    assert_eq!(bob[0]["recurrenceState"], "Active", "changes are per user");

    for (product, change_type) in [
        (SANDBOX_PASS, "Cancel"),
        (SANDBOX_SUB_INACTIVE, "Extend"),
        (SANDBOX_SUB_FAILED, "Refund"),
        (SANDBOX_SUB_CANCELED, "Cancel"),
    ] {
        let answer = alice
            .change(&id_of(product), change_type, Some(json!(1)))
            .await;
        assert_eq!(
            answer.status, 409,
            "{product} {change_type}: {}",
            answer.body
        );
        assert_eq!(answer.json()["innererror"]["code"], "RecurrenceTerminal");
    }
    let toggle_failed = alice
        .change(&id_of(SANDBOX_SUB_FAILED), "ToggleAutoRenew", None)
        .await;
    assert_eq!(toggle_failed.status, 200, "{}", toggle_failed.body);

    let bobs_id = bob[1]["id"].as_str().unwrap().to_owned();
    for id in [
        "mdr:0:00000000000000000000000000000000:9NSANDBOXPAS",
        bobs_id.as_str(),
    ] {
        let answer = alice.change(id, "Cancel", None).await;
        assert_eq!(answer.status, 404, "{id}: {}", answer.body);
        assert_eq!(answer.json()["innererror"]["code"], "RecurrenceNotFound");
    }
}

/// Days since the epoch of a Store timestamp (`2026-01-02T03:04:05.0000000+00:00`).
fn chrono_days(text: &str) -> i64 {
    let date: Vec<i64> = text[..10].split('-').map(|p| p.parse().unwrap()).collect();
    let (y, m, d) = (date[0], date[1], date[2]);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[tokio::test]
async fn orders_query_lists_seed_orders_in_every_state_filters_and_pages() {
    use msstore_facade::emulator::{ORDERS_PAGE_SIZE, SEED_ORDERS};
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = purchase_key("alice");
    let (orders, pages) = all_orders(&endpoints, &token, &key, None).await;
    assert_eq!(orders.len(), SEED_ORDERS);
    assert_eq!(
        pages,
        SEED_ORDERS.div_ceil(ORDERS_PAGE_SIZE),
        "pages of {ORDERS_PAGE_SIZE}"
    );
    for order in &orders {
        assert!(is_guid(&order["orderId"]), "{order}");
        assert_eq!(order["shortOrderId"].as_str().unwrap().len(), 10);
        let line = &order["orderLineItems"][0];
        let mut fields: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "lineItemId",
                "lineItemState",
                "productId",
                "quantity",
                "skuId",
                "wasConsumableQuantityRevoked"
            ]
        );
        let refunded = line["lineItemState"] != "Purchased";
        assert_eq!(
            order.get("orderRefundedDate").is_some(),
            refunded,
            "{order}"
        );
        assert_eq!(
            line["wasConsumableQuantityRevoked"],
            line["lineItemState"] == "Revoked"
        );
    }
    let dates: Vec<&str> = orders
        .iter()
        .map(|o| o["orderPurchasedDate"].as_str().unwrap())
        .collect();
    assert!(
        dates.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {dates:?}"
    );
    assert_eq!(
        all_orders(&endpoints, &token, &key, None).await.0,
        orders,
        "stable"
    );

    for state in ["Purchased", "Revoked", "Refunded"] {
        let (some, _) = all_orders(&endpoints, &token, &key, Some(json!([state]))).await;
        assert_eq!(some.len(), 4, "{state}");
        assert!(some
            .iter()
            .all(|o| o["orderLineItems"][0]["lineItemState"] == state));
    }
    let (two, _) = all_orders(
        &endpoints,
        &token,
        &key,
        Some(json!(["Revoked", "Refunded"])),
    )
    .await;
    assert_eq!(two.len(), 8);
    let bad = orders_query(
        &endpoints,
        &token,
        &json!({"b2bKey": key, "lineItemStateFilter": ["Returned"]}),
    )
    .await;
    assert_invalid_parameter(&bad, "lineItemStateFilter", "unknown state");
    let first = orders_query(&endpoints, &token, &json!({"b2bKey": key})).await;
    let next = first.json()["continuationToken"].clone();
    let other_filter =
        json!({"b2bKey": key, "lineItemStateFilter": ["Revoked"], "continuationToken": next});
    assert_invalid_parameter(
        &orders_query(&endpoints, &token, &other_filter).await,
        "continuationToken",
        "another filter",
    );
    let (bob, _) = all_orders(&endpoints, &token, &purchase_key("bob"), None).await;
    assert_ne!(bob[0]["orderId"], orders[0]["orderId"]);
}

/// One request of each purchase endpoint for `key`, answered.
async fn each_purchase_endpoint(
    endpoints: &Endpoints,
    bearer: &str,
    key: &str,
    magic: Option<&str>,
) -> Vec<(&'static str, Answer)> {
    use msstore_facade::emulator::catalog::SANDBOX_FREE_DURABLE;
    let product = magic.unwrap_or(SANDBOX_FREE_DURABLE);
    let id = magic.map_or_else(
        || "mdr:0:00000000000000000000000000000000:9NSANDBOXPAS".to_owned(),
        str::to_owned,
    );
    vec![
        (
            "grant",
            grant(endpoints, bearer, &grant_body(key, product, &order_id(9))).await,
        ),
        (
            "recurrences",
            recurrences_query(endpoints, bearer, &json!({"b2bKey": key})).await,
        ),
        (
            "change",
            Buyer::new(endpoints, bearer, key)
                .change(&id, "Cancel", None)
                .await,
        ),
        (
            "orders",
            orders_query(endpoints, bearer, &json!({"b2bKey": key})).await,
        ),
    ]
}

#[tokio::test]
async fn purchase_endpoints_check_the_token_and_the_purchase_key() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let expired = StoreKeySpec::new(Host::Purchase)
        .issued_at(now() - 31 * 24 * 3600)
        .mint();
    let other_client = StoreKeySpec::new(Host::Purchase)
        .client_id("11111111-2222-4333-8444-555555555555")
        .mint();
    let collections = collections_key("alice");
    let valid = purchase_key("alice");
    let cases = [
        ("no token", "", valid.as_str(), "PartnerAadTicketRequired"),
        (
            "collections key",
            token.as_str(),
            collections.as_str(),
            "AuthenticationTokenInvalid",
        ),
        (
            "expired key",
            token.as_str(),
            expired.as_str(),
            "AuthenticationTokenInvalid",
        ),
        (
            "other client",
            token.as_str(),
            other_client.as_str(),
            "InconsistentClientId",
        ),
    ];
    for (case, bearer, key, inner) in cases {
        for (endpoint, answer) in each_purchase_endpoint(&endpoints, bearer, key, None).await {
            answer.assert_unauthorized(inner, &format!("{endpoint}, {case}"));
            assert!(
                !answer.body.contains(key),
                "{endpoint}, {case}: the key is echoed"
            );
        }
    }
    let missing_key = orders_query(&endpoints, &token, &json!({})).await;
    assert_invalid_parameter(&missing_key, "b2bKey", "no b2bKey");
}

#[tokio::test]
async fn magic_ids_fail_the_purchase_endpoints_on_purpose() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let fgrl = "The rate limit of 200 operations in 300 seconds has been exceeded for aspect {userId; publisherId}.";
    for magic in [magic::MAGIC_400, magic::MAGIC_429, magic::MAGIC_503] {
        // Grant and change carry it in the product id and the path; the queries in the key.
        let key = StoreKeySpec::new(Host::Purchase).payload(magic).mint();
        let answers = each_purchase_endpoint(&endpoints, &token, &key, Some(magic)).await;
        for ((endpoint, answer), field) in
            answers
                .into_iter()
                .zip(["productId", "b2bKey", "recurrenceId", "b2bKey"])
        {
            answer.assert_store_ids();
            match magic {
                magic::MAGIC_400 => assert_invalid_parameter(&answer, field, endpoint),
                magic::MAGIC_429 => {
                    assert_eq!(answer.status, 429, "{endpoint}: {}", answer.body);
                    assert_eq!(answer.header("retry-after"), "30");
                    assert_eq!(answer.json()["message"], fgrl);
                }
                _ => assert_eq!(answer.status, 503, "{endpoint}: {}", answer.body),
            }
        }
    }
    let key = purchase_key("slow");
    let buyer = Buyer::new(&endpoints, &token, &key);
    let slow = grant(
        &endpoints,
        &token,
        &grant_body(&key, "MAGIC-SLOW-10", &order_id(1)),
    )
    .await;
    assert_eq!(slow.status, 200, "{}", slow.body);
    assert_eq!(
        slow.json()["orderLineItems"][0]["productId"],
        "9NSANDBOXFRD"
    );
    let slow = buyer.change("MAGIC-SLOW-10", "ToggleAutoRenew", None).await;
    assert_eq!(slow.status, 200, "{}", slow.body);
    assert_eq!(slow.json()["productId"], "9NSANDBOXPAS");
    let answer = recurrences_query(&endpoints, &token, &json!({"b2bKey": StoreKeySpec::new(Host::Purchase).payload(magic::MAGIC_401_INCONSISTENT_CLIENT_ID).mint()})).await;
    answer.assert_unauthorized("InconsistentClientId", "magic 401");
}

#[tokio::test]
async fn purchase_operations_count_in_the_users_rate_limit() {
    use msstore_facade::emulator::RATE_LIMIT_OPERATIONS;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let key = purchase_key("busy-buyer");
    let body = json!({"b2bKey": key});
    for n in 0..RATE_LIMIT_OPERATIONS - 1 {
        let answer = orders_query(&endpoints, &token, &body).await;
        assert_eq!(answer.status, 200, "operation {n}: {}", answer.body);
    }
    let query = query(
        &endpoints,
        &token,
        &query_body(&collections_key("busy-buyer"), &["9NSANDBOXGME"], json!({})),
    )
    .await;
    assert_eq!(
        query.status, 200,
        "collections operations count too: {}",
        query.body
    );
    for (endpoint, answer) in each_purchase_endpoint(&endpoints, &token, &key, None).await {
        assert_eq!(answer.status, 429, "{endpoint}: {}", answer.body);
        assert!(answer.header("retry-after").parse::<u64>().is_ok());
    }
}

// ---------------------------------------------------------------------------------------------
// Refund events (clawback v2): the SAS token, the Azure queue and the emulator's control calls.

/// `GET /purchase/v8.0/b2b/clawback/sastoken` with `bearer` (none when empty).
async fn sas_token(endpoints: &Endpoints, bearer: &str) -> Answer {
    let base = endpoints.host_url(Host::Purchase);
    let mut request = reqwest::Client::new().get(format!("{base}/v8.0/b2b/clawback/sastoken"));
    if !bearer.is_empty() {
        request = request.bearer_auth(bearer);
    }
    Answer::read(request.send().await.expect("the emulator answers")).await
}

/// The SAS URI of a fresh SAS token.
async fn sas_uri(endpoints: &Endpoints, token: &str) -> String {
    let answer = sas_token(endpoints, token).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["uri"].as_str().unwrap().to_owned()
}

/// `{queue}{path}?{sas}{extra}` for the SAS URI `sas`.
fn queue_url(sas: &str, path: &str, extra: &str) -> String {
    let (queue, query) = sas.split_once('?').expect("a SAS URI has a query");
    format!("{queue}{path}?{query}{extra}")
}

/// Get (or peek) messages: `extra` is appended to the SAS query (`&numofmessages=2`, ...).
async fn queue_get(sas: &str, extra: &str) -> Answer {
    let response = reqwest::Client::new()
        .get(queue_url(sas, "/messages", extra))
        .send()
        .await
        .expect("the emulator answers");
    Answer::read(response).await
}

/// Delete message `id` with `receipt` (percent-encoded; none when `None`).
async fn queue_delete(sas: &str, id: &str, receipt: Option<&str>) -> Answer {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let extra = receipt.map_or_else(String::new, |r| {
        format!("&popreceipt={}", utf8_percent_encode(r, NON_ALPHANUMERIC))
    });
    let response = reqwest::Client::new()
        .delete(queue_url(sas, &format!("/messages/{id}"), &extra))
        .send()
        .await
        .expect("the emulator answers");
    Answer::read(response).await
}

/// `POST /emulator{path}` with a JSON body.
async fn admin(endpoints: &Endpoints, path: &str, body: &Value) -> Answer {
    let response = reqwest::Client::new()
        .post(format!("{}emulator{path}", endpoints.base_url()))
        .json(body)
        .send()
        .await
        .expect("the emulator answers");
    Answer::read(response).await
}

/// One `QueueMessage` of a `QueueMessagesList`.
#[derive(Debug, Clone)]
struct QueueMessage {
    id: String,
    pop_receipt: Option<String>,
    time_next_visible: Option<String>,
    insertion_time: String,
    dequeue_count: u32,
    text: String,
}

impl QueueMessage {
    /// The event its text carries: base64 of JSON.
    fn event(&self) -> Value {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.text)
            .unwrap_or_else(|_| panic!("not base64: {}", self.text));
        serde_json::from_slice(&bytes).expect("the event is JSON")
    }
}

/// The text of each `<name>` element of `xml`, unescaped.
fn xml_elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    xml.split(&open)
        .skip(1)
        .map(|rest| {
            let text = rest.split(&close).next().unwrap_or_default();
            text.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&")
        })
        .collect()
}

/// The messages of a 200 get or peek answer, checking Azure's headers.
fn queue_messages(answer: &Answer) -> Vec<QueueMessage> {
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_azure_headers(answer);
    assert_eq!(answer.header("content-type"), "application/xml");
    assert!(answer
        .body
        .starts_with(r#"<?xml version="1.0" encoding="utf-8"?><QueueMessagesList"#));
    let one = |xml: &str, name: &str| xml_elements(xml, name).into_iter().next();
    xml_elements(&answer.body, "QueueMessage")
        .iter()
        .map(|xml| QueueMessage {
            id: one(xml, "MessageId").expect("MessageId"),
            pop_receipt: one(xml, "PopReceipt"),
            time_next_visible: one(xml, "TimeNextVisible"),
            insertion_time: one(xml, "InsertionTime").expect("InsertionTime"),
            dequeue_count: one(xml, "DequeueCount").unwrap().parse().unwrap(),
            text: one(xml, "MessageText").expect("MessageText"),
        })
        .collect()
}

fn assert_azure_headers(answer: &Answer) {
    assert!(is_guid(&json!(answer.header("x-ms-request-id"))));
    assert_eq!(answer.header("x-ms-version"), "2021-08-06");
    assert!(httpdate::parse_http_date(answer.header("date")).is_ok());
    assert_eq!(answer.headers.get_all("date").iter().count(), 1, "one Date");
}

/// An Azure Storage error with `code`.
fn assert_azure_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{code}: {}", answer.body);
    assert_azure_headers(answer);
    assert_eq!(answer.header("x-ms-error-code"), code);
    assert_eq!(answer.header("content-type"), "application/xml");
    assert!(answer
        .body
        .starts_with(r#"<?xml version="1.0" encoding="utf-8"?><Error><Code>"#));
    assert_eq!(xml_elements(&answer.body, "Code"), [code]);
    let message = &xml_elements(&answer.body, "Message")[0];
    let request_id = answer.header("x-ms-request-id");
    assert!(
        message.contains(&format!("\nRequestId:{request_id}\nTime:")),
        "{message}"
    );
}

/// Every message of the queue, dequeued (hidden 30 s) and decoded.
async fn dequeue_all(sas: &str) -> Vec<QueueMessage> {
    queue_messages(&queue_get(sas, "&numofmessages=32").await)
}

#[tokio::test]
async fn refund_sas_token_has_the_documented_shape_and_needs_the_service_token() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let before = now();
    let answer = sas_token(&endpoints, &token).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.assert_store_ids();
    let body = answer.json();
    let expires_on = body["expiresOn"].as_str().unwrap();
    // `2022-12-09T02:13Z`: minutes, no seconds.
    assert_eq!(expires_on.len(), 17, "{expires_on}");
    assert!(expires_on.ends_with('Z') && expires_on.as_bytes()[10] == b'T');
    let with_seconds = format!("{}:00Z", &expires_on[..16]);
    let expiry = chrono_seconds(&with_seconds);
    assert!(
        expiry > before + 6 * 3600 - 61 && expiry <= now() + 6 * 3600,
        "{expires_on}"
    );
    let uri = body["uri"].as_str().unwrap();
    let queue = format!(
        "{}/refunds-{}?",
        endpoints.host_url(Host::RefundQueue),
        SANDBOX_CLIENT_ID.to_lowercase()
    );
    assert!(uri.starts_with(&queue), "{uri}");
    let query = uri.split_once('?').unwrap().1;
    let names: Vec<&str> = query
        .split('&')
        .map(|p| p.split('=').next().unwrap())
        .collect();
    assert_eq!(names, ["sv", "se", "sp", "sig"], "{uri}");
    assert!(query.starts_with("sv=2021-08-06&se="), "{uri}");
    assert!(
        query.contains(&format!(
            "se={}%3A{}%3A00Z&sp=rp&sig=",
            &expires_on[..13],
            &expires_on[14..16]
        )),
        "{uri}"
    );

    let refused = sas_token(&endpoints, "").await;
    refused.assert_unauthorized("PartnerAadTicketRequired", "no token");
    for audience in KEY_CREATION_AUDIENCES {
        let (_, foreign) = token_for_scope(&endpoints, &format!("{audience}/.default")).await;
        let foreign = foreign["access_token"].as_str().unwrap().to_owned();
        sas_token(&endpoints, &foreign)
            .await
            .assert_unauthorized("AuthenticationTokenInvalid", audience);
    }
}

/// Seconds since the Unix epoch of `2024-05-01T12:00:00Z`.
fn chrono_seconds(text: &str) -> i64 {
    let days = chrono_days(&text[..10]);
    let time: Vec<i64> = text[11..19]
        .split(':')
        .map(|p| p.parse().unwrap())
        .collect();
    days * 86_400 + time[0] * 3600 + time[1] * 60 + time[2]
}

#[tokio::test]
async fn a_dequeued_message_is_invisible_until_deleted_and_peek_changes_nothing() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let sas = sas_uri(&endpoints, &token).await;
    assert_eq!(
        queue_get(&sas, "").await.body,
        r#"<?xml version="1.0" encoding="utf-8"?><QueueMessagesList />"#
    );
    let text = "not base64 <&> at all";
    let added = admin(&endpoints, "/refund-queue/messages", &json!({"text": text})).await;
    assert_eq!(added.status, 201, "{}", added.body);
    let id = added.json()["messageId"].as_str().unwrap().to_owned();

    let peeked = queue_messages(&queue_get(&sas, "&peekonly=true").await);
    assert_eq!(peeked.len(), 1);
    assert_eq!(
        (peeked[0].id.as_str(), peeked[0].text.as_str()),
        (id.as_str(), text)
    );
    assert_eq!(peeked[0].dequeue_count, 0);
    assert!(peeked[0].pop_receipt.is_none() && peeked[0].time_next_visible.is_none());
    assert!(peeked[0].insertion_time.ends_with(" GMT"));
    assert_eq!(
        queue_messages(&queue_get(&sas, "&peekonly=true").await).len(),
        1
    );

    let got = queue_messages(&queue_get(&sas, "&numofmessages=32").await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].dequeue_count, 1);
    let receipt = got[0].pop_receipt.clone().expect("a pop receipt");
    assert!(receipt.contains('+') && receipt.contains('/') && receipt.contains('='));
    let next_visible = httpdate::parse_http_date(got[0].time_next_visible.as_ref().unwrap());
    assert!(next_visible.is_ok());
    assert!(
        queue_messages(&queue_get(&sas, "").await).is_empty(),
        "invisible"
    );
    assert!(queue_messages(&queue_get(&sas, "&peekonly=true").await).is_empty());

    let deleted = queue_delete(&sas, &id, Some(&receipt)).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert_azure_headers(&deleted);
    assert_azure_error(
        &queue_delete(&sas, &id, Some(&receipt)).await,
        404,
        "MessageNotFound",
    );
    assert_azure_error(
        &queue_delete(&sas, &id, None).await,
        400,
        "MissingRequiredQueryParameter",
    );
    for bad in [
        "&numofmessages=33",
        "&numofmessages=0",
        "&visibilitytimeout=604801",
    ] {
        assert_azure_error(
            &queue_get(&sas, bad).await,
            400,
            "OutOfRangeQueryParameterValue",
        );
    }
}

#[tokio::test]
async fn pop_receipts_go_stale_on_redequeue_but_not_when_the_timeout_lapses() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let sas = sas_uri(&endpoints, &token).await;
    for text in ["first", "second"] {
        let added = admin(&endpoints, "/refund-queue/messages", &json!({"text": text})).await;
        assert_eq!(added.status, 201, "{}", added.body);
    }
    let got = queue_messages(&queue_get(&sas, "&numofmessages=2&visibilitytimeout=1").await);
    let texts: Vec<&str> = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["first", "second"], "oldest first");
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Visible again, but nobody dequeued the first one: its receipt still deletes it.
    let (first, second) = (&got[0], &got[1]);
    let deleted = queue_delete(&sas, &first.id, first.pop_receipt.as_deref()).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);

    // The second one is dequeued again: its old receipt is stale.
    let again = queue_messages(&queue_get(&sas, "&numofmessages=32").await);
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].dequeue_count),
        (second.id.as_str(), 2)
    );
    assert_ne!(again[0].pop_receipt, second.pop_receipt);
    assert_azure_error(
        &queue_delete(&sas, &second.id, second.pop_receipt.as_deref()).await,
        400,
        "PopReceiptMismatch",
    );
    let deleted = queue_delete(&sas, &second.id, again[0].pop_receipt.as_deref()).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert_azure_error(
        &queue_delete(&sas, &second.id, again[0].pop_receipt.as_deref()).await,
        404,
        "MessageNotFound",
    );
}

#[tokio::test]
async fn queue_requests_need_a_current_unaltered_sas() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let sas = sas_uri(&endpoints, &token).await;
    assert_eq!(queue_get(&sas, "").await.status, 200);
    let sig = sas.split("&sig=").nth(1).unwrap().to_owned();
    let (queue, query) = sas.split_once('?').unwrap();
    let altered = [
        ("no sig", sas.replace(&format!("&sig={sig}"), "")),
        ("other sig", sas.replace(&sig, "AAAA")),
        ("read only", sas.replace("sp=rp", "sp=r")),
        ("longer", sas.replace("%3A00Z", "%3A59Z")),
        ("other queue", format!("{queue}x?{query}")),
    ];
    for (case, uri) in altered {
        let refused = queue_get(&uri, "").await;
        assert_azure_error(&refused, 403, "AuthenticationFailed");
        assert!(
            refused.body.contains("Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature."),
            "{case}: {}",
            refused.body
        );
        assert!(!refused.body.contains(&sig), "{case}: the sig is echoed");
    }
    // Peek needs only read.
    let read_only = sas.replace("sp=rp", "sp=r");
    assert_eq!(
        queue_get(&read_only, "&peekonly=true").await.status,
        403,
        "the sig covers sp"
    );

    let rotated = reqwest::Client::new()
        .post(format!(
            "{}emulator/refund-queue/rotate-key",
            endpoints.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status().as_u16(), 204);
    for extra in ["", "&peekonly=true"] {
        assert_azure_error(&queue_get(&sas, extra).await, 403, "AuthenticationFailed");
    }
    assert_azure_error(
        &queue_delete(&sas, "00000000-0000-4000-8000-000000000000", Some("x")).await,
        403,
        "AuthenticationFailed",
    );
    let fresh = sas_uri(&endpoints, &token).await;
    assert_ne!(fresh, sas);
    assert_eq!(queue_get(&fresh, "").await.status, 200);
}

#[tokio::test]
async fn an_admin_refund_changes_the_order_and_enqueues_its_event() {
    use msstore_facade::emulator::catalog::SANDBOX_FREE_DURABLE;
    use msstore_facade::emulator::SANDBOX_USER_ID;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let sas = sas_uri(&endpoints, &token).await;
    let key = purchase_key(SANDBOX_USER_ID);
    let mut body = grant_body(&key, SANDBOX_FREE_DURABLE, &order_id(1));
    body["sbx"] = json!("XDKS.1");
    let granted = grant(&endpoints, &token, &body).await;
    assert_eq!(granted.status, 200, "{}", granted.body);
    let line_item = granted.json()["orderLineItems"][0]["lineItemId"].clone();

    let refunded = admin(&endpoints, "/refunds", &json!({"orderId": order_id(1)})).await;
    assert_eq!(refunded.status, 200, "{}", refunded.body);
    let event = refunded.json()["event"].clone();
    assert!(is_guid(&event["id"]), "{event}");
    assert_eq!(event["source"], "/Purchase/Refund");
    assert_eq!(event["type"], "ClawbackEventContractV2");
    assert_eq!(event["subject"], order_id(1));
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["datacontenttype"], "application/json");
    let data = &event["data"];
    assert_eq!(data["eventState"], "Refunded");
    assert_eq!(data["orderId"], order_id(1));
    assert_eq!(data["lineItemId"], line_item);
    assert_eq!(data["productId"], SANDBOX_FREE_DURABLE);
    assert_eq!(data["productType"], "Durable");
    assert_eq!(data["skuId"], "0010");
    assert_eq!(data["sandboxId"], "XDKS.1");
    assert!(data.get("recurrenceData").is_none());

    let (orders, _) = all_orders(&endpoints, &token, &key, Some(json!(["Refunded"]))).await;
    let order = orders
        .iter()
        .find(|o| o["orderId"] == order_id(1))
        .unwrap_or_else(|| panic!("the refunded order is listed: {orders:?}"));
    assert_eq!(order["orderLineItems"][0]["lineItemState"], "Refunded");
    assert!(order["orderRefundedDate"].is_string(), "{order}");

    let messages = dequeue_all(&sas).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].id, refunded.json()["messageId"]);
    assert_eq!(messages[0].event(), event);

    // A seed order of another user: revoked on a chargeback, then reversed.
    let alice = purchase_key("alice");
    let (alices, _) = all_orders(&endpoints, &token, &alice, Some(json!(["Purchased"]))).await;
    let seed = alices[0]["orderId"].as_str().unwrap().to_owned();
    let revoke = json!({"orderId": seed, "userId": "alice", "eventState": "Revoked", "source": "Chargeback"});
    let revoked = admin(&endpoints, "/refunds", &revoke).await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(revoked.json()["event"]["source"], "/Purchase/Chargeback");
    let product = alices[0]["orderLineItems"][0]["productId"].clone();
    let kind = if product == "9NSANDBOXCNS" {
        "Consumable"
    } else {
        "UnmanagedConsumable"
    };
    assert_eq!(revoked.json()["event"]["data"]["productType"], kind);
    let (revoked_orders, _) =
        all_orders(&endpoints, &token, &alice, Some(json!(["Revoked"]))).await;
    let listed = revoked_orders
        .iter()
        .find(|o| o["orderId"] == seed.as_str())
        .expect("revoked");
    assert_eq!(
        listed["orderLineItems"][0]["wasConsumableQuantityRevoked"],
        true
    );
    let reversal = json!({"orderId": seed, "userId": "alice", "eventState": "ChargebackReversal"});
    let reversed = admin(&endpoints, "/refunds", &reversal).await;
    assert_eq!(reversed.status, 200, "{}", reversed.body);
    assert_eq!(reversed.json()["event"]["source"], "/Purchase/Chargeback");
    let (purchased, _) = all_orders(&endpoints, &token, &alice, Some(json!(["Purchased"]))).await;
    assert!(purchased.iter().any(|o| o["orderId"] == seed.as_str()));
    let states: Vec<Value> = dequeue_all(&sas)
        .await
        .iter()
        .map(|m| m.event()["data"]["eventState"].clone())
        .collect();
    assert_eq!(states, [json!("Revoked"), json!("ChargebackReversal")]);

    let unknown = admin(&endpoints, "/refunds", &json!({"orderId": order_id(77)})).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(unknown.json()["error"], "OrderNotFound");
    assert!(unknown.body.contains(&order_id(77)), "{}", unknown.body);
    let other_user = json!({"orderId": order_id(1), "userId": "bob"});
    assert_eq!(admin(&endpoints, "/refunds", &other_user).await.status, 404);
    let line = json!({"orderId": order_id(1), "lineItemId": "nope"});
    assert_eq!(
        admin(&endpoints, "/refunds", &line).await.json()["error"],
        "LineItemNotFound"
    );
    let bad = admin(
        &endpoints,
        "/refunds",
        &json!({"orderId": order_id(1), "eventState": "Lost"}),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["field"], "eventState");
}

#[tokio::test]
async fn granting_the_revoked_on_grant_product_yields_a_revoked_event() {
    use msstore_facade::emulator::catalog::SANDBOX_REVOKED_ON_GRANT;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let sas = sas_uri(&endpoints, &token).await;
    let key = purchase_key("carol");
    let body = grant_body(&key, SANDBOX_REVOKED_ON_GRANT, &order_id(5));
    let granted = grant(&endpoints, &token, &body).await;
    assert_eq!(granted.status, 200, "{}", granted.body);
    assert_eq!(granted.json()["orderState"], "Purchased");
    let line_item = granted.json()["orderLineItems"][0]["lineItemId"].clone();

    let (orders, _) = all_orders(&endpoints, &token, &key, None).await;
    let order = orders.last().unwrap();
    assert_eq!(order["orderId"], order_id(5));
    assert_eq!(order["orderLineItems"][0]["lineItemState"], "Revoked");
    assert!(order["orderRefundedDate"].is_string(), "{order}");

    let messages = dequeue_all(&sas).await;
    assert_eq!(messages.len(), 1);
    let event = messages[0].event();
    assert_eq!(event["source"], "/Purchase/Refund");
    let data = &event["data"];
    assert_eq!(data["eventState"], "Revoked");
    assert_eq!(data["productId"], SANDBOX_REVOKED_ON_GRANT);
    assert_eq!(data["productType"], "Consumable");
    assert_eq!(data["lineItemId"], line_item);
    assert_eq!(data["sandboxId"], "RETAIL");

    let replay = grant(&endpoints, &token, &body).await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    let peeked = queue_messages(&queue_get(&sas, "&peekonly=true").await);
    assert!(
        peeked.is_empty(),
        "a replay refunds nothing more: {peeked:?}"
    );
}

#[tokio::test]
async fn a_subscription_refund_enqueues_a_returned_event_with_recurrence_data() {
    use msstore_facade::emulator::catalog::SANDBOX_PASS;
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let sas = sas_uri(&endpoints, &token).await;
    let key = purchase_key("dave");
    let buyer = Buyer::new(&endpoints, &token, &key);
    let pass = buyer.recurrences().await[0].clone();
    assert_eq!(pass["productId"], SANDBOX_PASS);
    let id = pass["id"].as_str().unwrap();
    let changed = buyer.change(id, "Refund", None).await;
    assert_eq!(changed.status, 200, "{}", changed.body);

    let messages = dequeue_all(&sas).await;
    assert_eq!(messages.len(), 1);
    let event = messages[0].event();
    assert_eq!(event["source"], "/Purchase/Refund");
    let data = &event["data"];
    assert_eq!(data["eventState"], "Returned");
    assert_eq!(data["productId"], SANDBOX_PASS);
    assert_eq!(data["productType"], "Pass");
    assert!(
        is_guid(&data["orderId"]) && is_guid(&data["lineItemId"]),
        "{data}"
    );
    assert_eq!(event["subject"], data["orderId"]);
    let recurrence = &data["recurrenceData"];
    assert_eq!(recurrence["recurrenceId"], id);
    assert_eq!(recurrence["refundType"], "Full");
    assert_eq!(recurrence["durationInDays"], 5 * 365);
    let start = chrono_seconds(recurrence["durationIntervalStart"].as_str().unwrap());
    let start_time = pass["startTime"].as_str().unwrap();
    assert_eq!(chrono_seconds(&start_time[..19]), start, "{start_time}");
    assert_eq!(
        recurrence["consumedDurationInDays"],
        (now() - start) / 86_400
    );
}

#[tokio::test]
async fn refund_queue_faults_answer_as_configured_then_stop() {
    let (_emulator, endpoints, token) = emulator_and_token().await;
    let fault = |operation: &str, magic: &str, times: Option<u32>| {
        let mut body = json!({"operation": operation, "magic": magic});
        if let Some(times) = times {
            body["times"] = json!(times);
        }
        body
    };
    let set = admin(
        &endpoints,
        "/refund-queue/faults",
        &fault("sastoken", "MAGIC-503", Some(2)),
    )
    .await;
    assert_eq!(set.status, 204, "{}", set.body);
    for _ in 0..2 {
        assert_eq!(sas_token(&endpoints, &token).await.status, 503);
    }
    let sas = sas_uri(&endpoints, &token).await;

    admin(
        &endpoints,
        "/refund-queue/faults",
        &fault("get", "MAGIC-429", None),
    )
    .await;
    admin(
        &endpoints,
        "/refund-queue/faults",
        &fault("get", "MAGIC-MALFORMED", None),
    )
    .await;
    let throttled = queue_get(&sas, "").await;
    assert_eq!(throttled.status, 429, "{}", throttled.body);
    assert_eq!(throttled.header("retry-after"), "30");
    let malformed = queue_get(&sas, "&peekonly=true").await;
    assert_eq!(malformed.status, 200);
    assert!(malformed.body.starts_with("<html>"), "{}", malformed.body);
    assert_eq!(
        queue_get(&sas, "").await.status,
        200,
        "the faults are spent"
    );

    admin(&endpoints, "/refund-queue/messages", &json!({"text": "x"})).await;
    let got = queue_messages(&queue_get(&sas, "").await);
    admin(
        &endpoints,
        "/refund-queue/faults",
        &fault("delete", "MAGIC-RESET", None),
    )
    .await;
    let reset = reqwest::Client::new()
        .delete(queue_url(
            &sas,
            &format!("/messages/{}", got[0].id),
            "&popreceipt=x",
        ))
        .send()
        .await;
    assert!(reset.is_err(), "the connection is reset");
    let deleted = queue_delete(&sas, &got[0].id, got[0].pop_receipt.as_deref()).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);

    for (body, field) in [
        (fault("put", "MAGIC-503", None), "operation"),
        (fault("get", "MAGIC-OK", None), "magic"),
        (fault("get", "MAGIC-503", Some(0)), "times"),
    ] {
        let refused = admin(&endpoints, "/refund-queue/faults", &body).await;
        assert_eq!(refused.status, 400, "{}", refused.body);
        assert_eq!(refused.json()["field"], field);
    }
}
