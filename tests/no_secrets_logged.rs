//! No client secret, access token, service ticket or Store key (old or new) reaches a log
//! line, at TRACE level for every crate (hyper, h2, reqwest, tonic included), in text or JSON.
//! One test per binary: it owns the process-wide subscriber.

mod common;

use common::*;
use msstore_facade::config::LogFormat;
use msstore_facade::proto::msstore::v1::RenewKeyRequest;
use msstore_facade::telemetry::log_layer;
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_log_line_at_trace_level() {
    let capture = LogCapture::default();
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::TRACE)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(capture.clone()),
        )
        .with(log_layer(LogFormat::Json, capture.clone(), false))
        .init();

    let h = Harness::start().await;
    let old_key = store_key(COLLECTIONS_AUD, now(), now() + 3600);
    let new_key = store_key(COLLECTIONS_AUD, now(), now() + 30 * 86_400);
    let caller_ticket = "caller-ticket-Qw3rty-never-log-me";

    // A license call whose first attempt is refused: token fetch, 401, fresh token, retry.
    Harness::answer_next_once(&h.business, ResponseTemplate::new(401)).await;
    h.mount_license(ResponseTemplate::new(200).set_body_json(license_body()))
        .await;
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();

    // A renewal with the facade's token that returns a new key.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"key": new_key})))
        .mount(&h.collections)
        .await;
    let renewed = h
        .keys()
        .renew_key(RenewKeyRequest {
            key: old_key.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(renewed.into_inner().key, new_key);

    // A renewal with the caller's ticket that the Store refuses, echoing key and ticket back.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "code": "Unauthorized",
            "message": format!("ticket {caller_ticket} cannot renew {old_key}"),
            "innererror": {"code": "AuthenticationTokenInvalid", "data": [old_key]}
        })))
        .mount(&h.purchase)
        .await;
    let refused = h
        .keys()
        .renew_key(RenewKeyRequest {
            key: old_key.clone(),
            key_type: 2,
            service_ticket: caller_ticket.into(),
        })
        .await
        .unwrap_err();
    assert!(
        !refused.message().contains(&old_key),
        "{}",
        refused.message()
    );

    let logs = capture.text();
    // The capture really saw the calls, at trace level, from the HTTP stacks too.
    assert_eq!(
        logs.matches("rpc finished").count(),
        6,
        "one text + one JSON line per RPC"
    );
    assert!(logs.contains("TRACE"), "no trace-level lines captured");
    // The JSON lines are the production format: they parse, and RPC lines carry the trace id.
    let json_rpc_lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .filter(|line: &serde_json::Value| line["message"] == "rpc finished")
        .collect();
    assert_eq!(json_rpc_lines.len(), 3);
    for line in &json_rpc_lines {
        assert_eq!(line["trace_id"].as_str().map(str::len), Some(32), "{line}");
        assert!(line["ms_cv"].is_string(), "{line}");
    }
    assert!(
        logs.contains("hyper") || logs.contains("h2"),
        "HTTP stack not captured"
    );

    let key_payload = |key: &str| key.split('.').nth(1).unwrap().to_owned();
    let secrets = [
        ("client secret", CLIENT_SECRET.to_owned()),
        ("access token", "access-token-never-log-me".to_owned()),
        ("caller ticket", caller_ticket.to_owned()),
        ("old key", key_payload(&old_key)),
        ("new key", key_payload(&new_key)),
    ];
    for (what, secret) in secrets {
        if let Some(at) = logs.find(&secret) {
            let line_start = logs[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = logs[at..].find('\n').map_or(logs.len(), |i| at + i);
            panic!("{what} logged: {}", &logs[line_start..line_end]);
        }
    }
}
