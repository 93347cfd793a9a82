//! The facade in front of the sandbox emulator, end to end: every operation of
//! [`OPERATIONS`] succeeds with the sandbox credentials, the emulator's real checks come back as
//! the contract's statuses, and every magic id gives the gRPC status the contract names through
//! every operation. Then the binary itself: `--sandbox` (and `MSSTORE_SANDBOX=1`) with no other
//! configuration, `emulator` alone, `sandbox-key`.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use futures_util::FutureExt;
use msstore_facade::emulator::{
    magic, RunningEmulator, StoreKeySpec, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET,
};
use msstore_facade::error::FACADE_DOMAIN;
use msstore_facade::proto::msstore::v1 as pb;
use msstore_facade::upstream::Host;
use pb::store_entitlements_client::StoreEntitlementsClient;
use pb::store_keys_client::StoreKeysClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// `ErrorInfo.domain` of errors the emulator answered: its host, without the port.
const EMULATOR_DOMAIN: &str = "127.0.0.1";

/// What the contract says a failing call must carry.
#[derive(Debug)]
struct Expected {
    code: Code,
    reason: &'static str,
    /// The emulator's host (the Store answered) or the facade's own domain.
    domain: &'static str,
    /// The BadRequest field, for 400s naming the parameter.
    field: Option<&'static str>,
    /// The RetryInfo delay.
    retry: Option<Duration>,
}

fn store(code: Code, reason: &'static str) -> Option<Expected> {
    Some(Expected {
        code,
        reason,
        domain: EMULATOR_DOMAIN,
        field: None,
        retry: None,
    })
}

fn retried(mut expected: Option<Expected>, delay: Duration) -> Option<Expected> {
    if let Some(e) = expected.as_mut() {
        e.retry = Some(delay);
    }
    expected
}

fn facade_own(code: Code, reason: &'static str) -> Option<Expected> {
    Some(Expected {
        code,
        reason,
        domain: FACADE_DOMAIN,
        field: None,
        retry: None,
    })
}

/// The contract's status for each documented magic id through `op` (`None`: the call
/// succeeds). A magic id without an expectation fails the test, so a new one cannot go untested.
fn expected(magic: &str, op: &Op) -> Option<Expected> {
    let second = Duration::from_secs(1);
    match magic {
        "MAGIC-400" => Some(Expected {
            field: Some(op.magic_400_field),
            ..store(Code::InvalidArgument, "INVALID_PARAMETER")?
        }),
        "MAGIC-401-AUTHENTICATION-TOKEN-INVALID" => {
            store(Code::Unauthenticated, "AUTHENTICATION_TOKEN_INVALID")
        }
        "MAGIC-401-INCONSISTENT-CLIENT-ID" => {
            store(Code::Unauthenticated, "INCONSISTENT_CLIENT_ID")
        }
        "MAGIC-401-PARTNER-AAD-TICKET-REQUIRED" => {
            store(Code::Unauthenticated, "PARTNER_AAD_TICKET_REQUIRED")
        }
        "MAGIC-403" => store(Code::PermissionDenied, "FORBIDDEN"),
        "MAGIC-404" => store(Code::NotFound, "NOT_FOUND"),
        "MAGIC-408" => retried(store(Code::Unavailable, "REQUEST_TIMEOUT"), second),
        "MAGIC-409" => store(op.conflict, "CONFLICT"),
        "MAGIC-412" => store(Code::FailedPrecondition, "PRECONDITION_FAILED"),
        "MAGIC-429" => retried(
            store(Code::ResourceExhausted, "TOO_MANY_REQUESTS"),
            Duration::from_secs(magic::THROTTLE_RETRY_AFTER_SECONDS),
        ),
        "MAGIC-500" => store(Code::Internal, "INTERNAL_SERVER_ERROR"),
        "MAGIC-501" => store(Code::Unimplemented, "NOT_IMPLEMENTED"),
        "MAGIC-502" => retried(store(Code::Unavailable, "BAD_GATEWAY"), second),
        "MAGIC-503" => retried(store(Code::Unavailable, "SERVICE_UNAVAILABLE"), second),
        "MAGIC-504" => retried(store(Code::Unavailable, "GATEWAY_TIMEOUT"), second),
        "MAGIC-505" => store(Code::Internal, "HTTP_VERSION_NOT_SUPPORTED"),
        "MAGIC-422" => store(Code::Unknown, "UNPROCESSABLE_ENTITY"),
        "MAGIC-SLOW-1000" => None,
        "MAGIC-RESET" | "MAGIC-TRUNCATED" => retried(
            facade_own(Code::Unavailable, "UPSTREAM_CONNECTION_LOST"),
            second,
        ),
        "MAGIC-MALFORMED" => facade_own(Code::Internal, "UPSTREAM_MALFORMED_RESPONSE"),
        other => panic!("no expectation for the documented magic id {other}"),
    }
}

/// `RenewKey` of `key` with `service_ticket` (empty: the facade's own token).
async fn renew_key(
    channel: &Channel,
    key: &str,
    service_ticket: &str,
) -> Result<pb::RenewKeyResponse, Status> {
    let request = pb::RenewKeyRequest {
        key: key.to_owned(),
        service_ticket: service_ticket.to_owned(),
        ..Default::default()
    };
    let mut client = StoreKeysClient::new(channel.clone());
    client
        .renew_key(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Calls `op` with `magic` through a facade of its own (so that no circuit breaker or retry
/// budget is shared between cases) and returns what does not match `expected`.
async fn check_magic(
    emulator: &RunningEmulator,
    op: &'static Op,
    magic: &'static str,
) -> Option<String> {
    let facade = Facade::start(sandbox_settings(emulator)).await;
    // Well inside the contract's 30 s Retry-After of MAGIC-429, so it is not waited out.
    let timeout = Some(Duration::from_secs(20));
    let outcome = (op.sandbox_call)(facade.channel.clone(), Some(magic), timeout).await;
    let case = format!("{op:?} {magic}");
    match (expected(magic, op), outcome) {
        (None, Ok(())) => None,
        (None, Err(status)) => Some(format!("{case}: expected success, got {status:?}")),
        (Some(want), Ok(())) => Some(format!("{case}: expected {want:?}, got success")),
        (Some(want), Err(status)) => mismatch(&case, &want, &status),
    }
}

fn mismatch(case: &str, want: &Expected, status: &Status) -> Option<String> {
    use tonic_types::StatusExt;
    let info = status.get_details_error_info();
    let got_field = bad_fields(status).into_iter().next();
    let got = (
        status.code(),
        info.as_ref().map(|i| i.reason.as_str()),
        info.as_ref().map(|i| i.domain.as_str()),
        got_field.as_deref(),
        retry_delay(status),
    );
    let wanted = (
        want.code,
        Some(want.reason),
        Some(want.domain),
        want.field,
        want.retry,
    );
    if got != wanted {
        return Some(format!(
            "{case}: expected {wanted:?}, got {got:?} ({status:?})"
        ));
    }
    let ids_expected = want.domain == EMULATOR_DOMAIN;
    let has_ids = info.is_some_and(|i| i.metadata.contains_key("ms_correlationid"));
    (ids_expected && !has_ids).then(|| format!("{case}: no upstream ids in {status:?}"))
}

#[tokio::test]
async fn every_magic_id_gives_the_contracts_status_through_every_operation() {
    let emulator = start_emulator().await;
    let cases = magic::DOCUMENTED
        .iter()
        .flat_map(|id| OPERATIONS.iter().map(move |op| (op, *id)));
    let failures: Vec<String> = join_all(cases.map(|(op, id)| check_magic(&emulator, op, id)))
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A call of every operation through `settings` with `magic`, all at once, fails with `code`
/// and `reason`.
async fn every_operation_fails(
    settings: msstore_facade::Settings,
    magic: &'static str,
    timeout: Option<Duration>,
    code: Code,
    reason: &str,
) {
    let facade = Facade::start(settings).await;
    let calls = OPERATIONS.iter().map(|op| {
        (op.sandbox_call)(facade.channel.clone(), Some(magic), timeout).map(move |o| (op, o))
    });
    for (op, outcome) in join_all(calls).await {
        let status = outcome.expect_err("the emulator answers too late");
        assert_eq!(status.code(), code, "{op:?}: {status:?}");
        assert_eq!(error_info(&status).reason, reason, "{op:?}");
    }
}

#[tokio::test]
async fn magic_slow_past_the_callers_deadline_is_deadline_exceeded() {
    let emulator = start_emulator().await;
    let deadline = Some(Duration::from_millis(800));
    let settings = sandbox_settings(&emulator);
    let (code, reason) = (Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    every_operation_fails(settings, "MAGIC-SLOW-10000", deadline, code, reason).await;
}

#[tokio::test]
async fn magic_slow_past_the_attempt_timeout_is_unavailable_upstream_timeout() {
    let emulator = start_emulator().await;
    let mut settings = sandbox_settings(&emulator);
    settings.resilience.upstream_timeout = Duration::from_millis(300);
    let (code, reason) = (Code::Unavailable, "UPSTREAM_TIMEOUT");
    every_operation_fails(settings, "MAGIC-SLOW-5000", None, code, reason).await;
}

#[tokio::test]
async fn token_endpoint_failures_map_to_the_token_rows_and_never_show_the_secret() {
    let emulator = start_emulator().await;
    let cases = [
        (
            "magic-503.onmicrosoft.com",
            Code::Unavailable,
            "TOKEN_ENDPOINT_UNAVAILABLE",
            None,
        ),
        (
            "magic-400.onmicrosoft.com",
            Code::Internal,
            "TOKEN_REQUEST_REJECTED",
            Some("AADSTS90002"),
        ),
    ];
    // Through every operation whose request names a tenant, each on a facade of its own.
    for op in OPERATIONS {
        let Some(call_for_tenant) = op.call_for_tenant else {
            continue;
        };
        let facade = Facade::start(sandbox_settings(&emulator)).await;
        for (tenant, code, reason, entra_code) in cases {
            let status = call_for_tenant(facade.channel.clone(), tenant)
                .await
                .expect_err("the token endpoint refuses");
            assert_eq!(status.code(), code, "{op:?} {tenant}: {status:?}");
            let info = error_info(&status);
            assert_eq!(info.reason, reason, "{op:?} {tenant}");
            assert_eq!(
                info.metadata.get("entra_error_code").map(String::as_str),
                entra_code,
                "{op:?} {tenant}"
            );
        }
    }
    // And GetKeyCreationTokens, which calls nothing but the token endpoint.
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    for (tenant, code, reason, entra_code) in cases {
        let status = StoreKeysClient::new(facade.channel.clone())
            .get_key_creation_tokens(pb::GetKeyCreationTokensRequest {
                tenant_id: tenant.to_owned(),
            })
            .await
            .expect_err("the token endpoint refuses");
        assert_eq!(status.code(), code, "{tenant}: {status:?}");
        let info = error_info(&status);
        assert_eq!(info.reason, reason, "{tenant}");
        assert_eq!(
            info.metadata.get("entra_error_code").map(String::as_str),
            entra_code,
            "{tenant}"
        );
    }

    // Through every operation, each on a facade of its own (nothing remembered between them).
    let wrong = "wrong-sandbox-secret-never-shown";
    for op in OPERATIONS {
        let mut settings = sandbox_settings(&emulator);
        if let Some(credentials) = settings.credentials.as_mut() {
            credentials.source =
                msstore_facade::auth::CredentialSource::ClientSecret(wrong.to_owned().into());
        }
        let facade = Facade::start(settings).await;
        let status = (op.sandbox_call)(facade.channel.clone(), None, None)
            .await
            .expect_err("the secret is wrong");
        assert_eq!(status.code(), Code::Internal, "{op:?}: {status:?}");
        let info = error_info(&status);
        assert_eq!(info.reason, "TOKEN_REQUEST_REJECTED", "{op:?}");
        assert_eq!(info.metadata["entra_error_code"], "AADSTS7000215", "{op:?}");
        assert!(!format!("{status:?}").contains(wrong), "{op:?}");
    }
}

#[tokio::test]
async fn facade_in_front_of_the_emulator_serves_every_operation() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    for op in OPERATIONS {
        (op.sandbox_call)(facade.channel.clone(), None, None)
            .await
            .unwrap_or_else(|status| panic!("{op:?}: {status:?}"));
    }

    // What the seed operations answer.
    let answer = StoreEntitlementsClient::new(facade.channel.clone())
        .get_offline_license(license_request())
        .await
        .expect("a license");
    assert!(answer.metadata().contains_key("ms-correlationid"));
    let license = answer.into_inner();
    assert!(!license.license_blob.is_empty());
    assert_eq!(license.content_id, "c-1");
    let key = license.product_key.expect("a product key");
    assert_eq!(
        (key.product_id.as_str(), key.sku_id.as_str()),
        ("9NBLGGH4R2R6", "0016")
    );

    let old = StoreKeySpec::new(Host::Purchase).mint();
    let renewed = renew_key(&facade.channel, &old, "")
        .await
        .expect("a new key");
    assert_eq!(renewed.key_type(), pb::KeyType::Purchase);
    assert_ne!(renewed.key, old);
    let issued = claims(&renewed.key)["iat"].as_i64().unwrap();
    let expires = renewed.expires_at.expect("exp decodes").seconds;
    let refresh = renewed.refresh_after.expect("iat decodes").seconds;
    assert_eq!(expires - issued, 30 * 24 * 3600);
    assert_eq!(refresh - issued, 14 * 24 * 3600);
}

#[tokio::test]
async fn the_emulators_own_key_checks_come_back_as_unauthenticated_reasons() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let ticket = emulator_token(&emulator.endpoints()).await;
    let expired = StoreKeySpec::new(Host::Collections)
        .issued_at(now() - 31 * 24 * 3600)
        .mint();
    let other_client = StoreKeySpec::new(Host::Collections)
        .client_id("11111111-2222-4333-8444-555555555555")
        .mint();
    let fresh = StoreKeySpec::new(Host::Collections).mint();
    let cases = [
        (
            "expired key",
            expired,
            ticket.clone(),
            "AUTHENTICATION_TOKEN_INVALID",
        ),
        (
            "other client",
            other_client,
            ticket.clone(),
            "INCONSISTENT_CLIENT_ID",
        ),
        (
            "foreign ticket",
            fresh,
            format!("{TOKEN_PREFIX}-1"),
            "AUTHENTICATION_TOKEN_INVALID",
        ),
    ];
    for (case, key, service_ticket, reason) in cases {
        let status = renew_key(&facade.channel, &key, &service_ticket)
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert_eq!(error_info(&status).reason, reason, "{case}");
        assert_eq!(error_info(&status).domain, EMULATOR_DOMAIN, "{case}");
    }
}

// ---------------------------------------------------------------------------------------------
// The binary

async fn health(channel: &Channel) -> tonic_health::pb::health_check_response::ServingStatus {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status()
}

#[tokio::test]
async fn sandbox_binary_answers_every_operation_with_no_configuration_and_exits_zero_on_sigterm() {
    use tonic_health::pb::health_check_response::ServingStatus;
    // TRACE, so that every crate's logging is searched for secrets below.
    let args = ["--sandbox", "--grpc-addr", "127.0.0.1:0"];
    let mut process = Process::start(&args, &[("RUST_LOG", "trace")]);
    let addr = process.wait_for("grpc_addr=");
    let channel = channel_to(&addr).await;
    assert_eq!(health(&channel).await, ServingStatus::Serving);
    for op in OPERATIONS {
        (op.sandbox_call)(channel.clone(), None, None)
            .await
            .unwrap_or_else(|status| panic!("{op:?} through the binary: {status:?}"));
    }

    let license = StoreEntitlementsClient::new(channel.clone())
        .get_offline_license(license_request())
        .await
        .expect("a license from the emulator")
        .into_inner();
    assert!(!license.license_blob.is_empty());

    let key = sandbox_key(&[]);
    let renewed = renew_key(&channel, &key, "")
        .await
        .expect("a renewed key from the emulator");
    assert_eq!(renewed.key_type(), pb::KeyType::Collections);

    let (code, lines) = process.terminate().await;
    assert_eq!(code, Some(0), "{lines:#?}");
    let logged = |text: &str| lines.iter().any(|l| l.contains(text));
    assert!(logged("SANDBOX MODE"), "{lines:#?}");
    assert!(logged("NOT to Microsoft"), "{lines:#?}");
    assert!(logged("stopped"), "{lines:#?}");
    // No secret, token or key, old or new, in any line (every JWT here starts with `eyJ`).
    for secret in [SANDBOX_CLIENT_SECRET, &key, &renewed.key, "eyJ"] {
        assert!(!logged(secret), "a log line shows {secret:.12}...");
    }
}

#[tokio::test]
async fn sandbox_env_variable_turns_it_on_and_azure_variables_are_ignored() {
    use tonic_health::pb::health_check_response::ServingStatus;
    // Half-configured credentials would stop a normal start with exit status 2.
    let env = [("MSSTORE_SANDBOX", "1"), ("AZURE_CLIENT_ID", "some-app")];
    let mut process = Process::start(&["--grpc-addr", "127.0.0.1:0"], &env);
    let channel = channel_to(&process.wait_for("grpc_addr=")).await;
    assert_eq!(health(&channel).await, ServingStatus::Serving);
    let (code, lines) = process.terminate().await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("SANDBOX MODE")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains("ignored")), "{lines:#?}");
}

#[tokio::test]
async fn sandbox_is_never_entered_implicitly() {
    let mut process = Process::start(&["--grpc-addr", "127.0.0.1:0"], &[("MSSTORE_SANDBOX", "0")]);
    process.wait_for("grpc_addr=");
    let (code, lines) = process.terminate().await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("SANDBOX")), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("no Entra credential")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn emulator_command_prints_its_settings_and_grants_tokens_until_sigterm() {
    let mut process = Process::start(&["emulator", "--listen", "127.0.0.1:0"], &[]);
    let authority = process.wait_for("AZURE_AUTHORITY_HOST=");
    for setting in [
        "MSSTORE_BUSINESS_STORE_URL=",
        "MSSTORE_COLLECTIONS_URL=",
        "MSSTORE_PURCHASE_URL=",
    ] {
        let url = process.wait_for(setting);
        assert!(url.starts_with("http://127.0.0.1:"), "{setting}{url}");
    }
    assert_eq!(process.wait_for("AZURE_CLIENT_ID="), SANDBOX_CLIENT_ID);
    let tenant = process.wait_for("AZURE_TENANT_ID=");
    let response = reqwest::Client::new()
        .post(format!("{authority}/{tenant}/oauth2/v2.0/token"))
        .form(&sandbox_secret_form())
        .send()
        .await
        .expect("the emulator answers");
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["appid"],
        SANDBOX_CLIENT_ID
    );
    let (code, lines) = process.terminate().await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("NOT Microsoft")),
        "{lines:#?}"
    );
}

#[test]
fn sandbox_key_command_prints_a_key_for_the_chosen_service_and_magic() {
    let key = sandbox_key(&["--type", "purchase", "--magic", "MAGIC-503"]);
    let claims = claims(&key);
    assert_eq!(claims["aud"], "https://purchase.mp.microsoft.com/v6.0/keys");
    let claim = |name: &str| {
        claims[format!("http://schemas.microsoft.com/marketplace/2015/08/claims/key/{name}")]
            .clone()
    };
    assert_eq!(claim("payload"), "MAGIC-503");
    assert_eq!(claim("clientId"), SANDBOX_CLIENT_ID);
    assert!(claims["exp"].as_i64().unwrap() > now() + 29 * 24 * 3600);

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_msstore-facade"))
        .args(["sandbox-key", "--magic", "MAGIC-NOPE"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a magic id"));
}
