//! No client secret, access token, service ticket, Store key (old or new) or refund queue SAS
//! (refused or not) reaches a log
//! line, at TRACE level for every crate (hyper, h2, reqwest, tonic included), in text or JSON,
//! or a span's fields; and none that a Store echoes back (in its error text, inner code or
//! correlation headers) reaches a caller's status, details or metadata, for every operation
//! and error class (contract, section 6: scrubbed by value, not guessed by shape: the tokens
//! and tickets here are opaque, not JWT-shaped). One test per binary: it owns the
//! process-wide subscriber.

mod common;

use common::*;
use msstore_facade::config::LogFormat;
use msstore_facade::proto::msstore::v1::store_refunds_client::StoreRefundsClient;
use msstore_facade::proto::msstore::v1::{
    AcknowledgeRefundEventsRequest, GetKeyCreationTokensRequest, PullRefundEventsRequest,
    RenewKeyRequest,
};
use msstore_facade::telemetry::log_layer;
use serde_json::json;
use tracing_subscriber::fmt::format::FmtSpan;
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
                // Every span's fields, as recorded by the time it closes.
                .with_span_events(FmtSpan::CLOSE)
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

    // A renewal of a purchase key with the caller's ticket that the Store refuses, echoing
    // key and ticket back.
    let old_key = store_key(PURCHASE_AUD, now(), now() + 3600);
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
        refused.message().contains("[redacted]") && !refused.message().contains(&old_key),
        "the Store's answer reached the mapping, scrubbed: {}",
        refused.message()
    );
    // The key-creation tokens are meant for the caller, never for a log line.
    let tokens = h
        .keys()
        .get_key_creation_tokens(GetKeyCreationTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(tokens
        .collections_token
        .contains("access-token-never-log-me"));
    // The refund queue: a SAS the queue refuses (quoting it back), a new SAS, a pull and an
    // acknowledgement. Neither signature may be logged.
    let queue = h.refund_queue.uri();
    for (sig, times) in [(OLD_SAS_SIG, Some(1)), (SAS_SIG, None)] {
        let mock = Mock::given(method("GET"))
            .and(wiremock::matchers::path("/v8.0/b2b/clawback/sastoken"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "expiresOn": "2099-01-01T00:00Z",
                "uri": format!("{queue}/refunds?sv=2021-08-06&sp=rp&sig={sig}"),
            })));
        match times {
            Some(n) => mock.up_to_n_times(n).mount(&h.purchase).await,
            None => mock.mount(&h.purchase).await,
        }
    }
    Mock::given(method("GET"))
        .and(wiremock::matchers::query_param("sig", OLD_SAS_SIG))
        .respond_with(ResponseTemplate::new(403).set_body_string(format!(
            "<?xml version=\"1.0\"?><Error><Code>AuthenticationFailed</Code><Message>sig {OLD_SAS_SIG} \
             is not valid</Message></Error>"
        )))
        .mount(&h.refund_queue)
        .await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::query_param("sig", SAS_SIG))
        .respond_with(ResponseTemplate::new(200).set_body_string(
            "<QueueMessagesList><QueueMessage><MessageId>0c2e5b1a-7d3f-4e8a-9b6c-1f2e3d4c5b6a\
             </MessageId><PopReceipt>AgAAAAMA+/x=</PopReceipt><DequeueCount>1</DequeueCount>\
             <MessageText>eyJpZCI6ImUifQ==</MessageText></QueueMessage></QueueMessagesList>",
        ))
        .mount(&h.refund_queue)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&h.refund_queue)
        .await;
    let mut refunds = StoreRefundsClient::new(h.facade.channel.clone());
    let pulled = refunds
        .pull_refund_events(PullRefundEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let acked = refunds
        .acknowledge_refund_events(AcknowledgeRefundEventsRequest {
            ack_ids: vec![pulled.events[0].ack_id.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.acknowledged.len(), 1);
    let before_echoes = capture.text();
    let echoed = every_operation_echoed_by_the_store(&capture).await;

    let logs = before_echoes;
    // The capture really saw the calls, at trace level, from the HTTP stacks too.
    assert_eq!(
        logs.matches("rpc finished").count(),
        12,
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
    assert_eq!(json_rpc_lines.len(), 6);
    for line in &json_rpc_lines {
        assert_eq!(line["trace_id"].as_str().map(str::len), Some(32), "{line}");
        assert!(line["ms_cv"].is_string(), "{line}");
    }
    assert!(
        logs.contains("hyper") || logs.contains("h2"),
        "HTTP stack not captured"
    );

    let key_payload = |key: &str| key.split('.').nth(1).unwrap().to_owned();
    let mut secrets = vec![
        ("client secret", CLIENT_SECRET.to_owned()),
        ("access token", "access-token-never-log-me".to_owned()),
        ("caller ticket", caller_ticket.to_owned()),
        ("old key", key_payload(&old_key)),
        ("new key", key_payload(&new_key)),
        ("refused SAS signature", OLD_SAS_SIG.to_owned()),
        ("SAS signature", SAS_SIG.to_owned()),
    ];
    secrets.extend(echoed.secrets);
    let logs = capture.text();
    for (what, secret) in &secrets {
        for (place, text) in [("logged", &logs), ("answered", &echoed.answers)] {
            if let Some(at) = text.find(secret.as_str()) {
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                panic!("{what} {place}: {}", &text[line_start..line_end]);
            }
        }
    }
}

/// The refund queue's SAS signatures (opaque: scrubbed by value).
const OLD_SAS_SIG: &str = "old-sas-signature-never-log-me";
const SAS_SIG: &str = "sas-signature-never-log-me-Zq9";

/// Every status and error class of every operation, from a Store that quotes back everything
/// secret it was sent.
const ECHOED_STATUSES: [u16; 8] = [400, 401, 403, 404, 409, 429, 500, 503];

/// The opaque token the facade gets from Entra in the echo phase (a counter is appended).
const OPAQUE_TOKEN: &str = "opaque-facade-token-Hx7q";
/// The opaque service ticket callers bring in the echo phase (a counter is appended).
const OPAQUE_TICKET: &str = "opaque-caller-ticket-Pz4w";

/// What the echo phase saw.
struct Echoed {
    /// Every status (message, details, metadata) the callers got, as text.
    answers: String,
    /// Every secret the Store was sent, with what it is.
    secrets: Vec<(&'static str, String)>,
}

/// A Store answering `status` with a body and headers that quote the request's
/// `Authorization` header, its whole body, and each of `secret_fields`.
fn echo(status: u16, secret_fields: &'static [&'static str]) -> impl wiremock::Respond {
    move |request: &wiremock::Request| {
        let authorization = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = String::from_utf8_lossy(&request.body).into_owned();
        let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let fields: Vec<String> = secret_fields
            .iter()
            .filter_map(|field| json.pointer(field)?.as_str().map(str::to_owned))
            .collect();
        let quoted = fields
            .first()
            .cloned()
            .unwrap_or_else(|| authorization.clone());
        ResponseTemplate::new(status)
            .insert_header("MS-CorrelationId", quoted.as_str())
            .insert_header("MS-CV", format!("cv.{authorization}").as_str())
            .set_body_json(json!({
                "code": quoted,
                "message": format!("you sent {authorization} with {body}; key {}", fields.join(" ")),
                "innererror": {
                    "code": authorization,
                    "message": format!("refused {}: {body}", fields.join(", ")),
                    "data": fields,
                },
            }))
    }
}

/// The values of `op`'s secret fields in every request `store` received, and their parts.
async fn sent_secrets(op: &Op, store: &wiremock::MockServer) -> Vec<(&'static str, String)> {
    let mut secrets = Vec::new();
    for request in store.received_requests().await.unwrap_or_default() {
        let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        for field in op.secret_fields {
            let Some(value) = json.pointer(field).and_then(|v| v.as_str()) else {
                continue;
            };
            secrets.push((*field, value.to_owned()));
            // A JWT's parts, each of which a Store might quote alone.
            secrets.extend(
                value
                    .split('.')
                    .filter(|part| part.len() >= 16)
                    .map(|part| (*field, part.to_owned())),
            );
        }
    }
    secrets
}

/// Status message, details and metadata as one text.
fn status_text(status: &tonic::Status) -> String {
    let mut text = format!(
        "{:?} {}\n{}\n",
        status.code(),
        status.message(),
        String::from_utf8_lossy(status.details())
    );
    for entry in status.metadata().iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(name, value) = entry {
            text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or_default()));
        }
    }
    text
}

async fn every_operation_echoed_by_the_store(capture: &LogCapture) -> Echoed {
    let h = Harness::builder()
        .resilience(|r| r.max_attempts = 1)
        .start()
        .await;
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    Mock::given(method("POST"))
        .respond_with(move |_: &wiremock::Request| {
            let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ResponseTemplate::new(200).set_body_json(json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "access_token": format!("{OPAQUE_TOKEN}-{n}"),
            }))
        })
        .mount(&h.token)
        .await;
    let mut answers = String::new();
    let mut tickets = 0;
    let mut secrets = vec![
        ("opaque facade token", OPAQUE_TOKEN.to_owned()),
        ("opaque caller ticket", OPAQUE_TICKET.to_owned()),
    ];
    for op in OPERATIONS {
        for status in ECHOED_STATUSES {
            op.store(&h).reset().await;
            Mock::given(method(op.http_method))
                .respond_with(echo(status, op.secret_fields))
                .mount(op.store(&h))
                .await;
            let mut outcomes = vec![(op.call)(h.facade.channel.clone(), None, 0).await];
            if let Some(call) = op.call_with_ticket {
                tickets += 1;
                let ticket: &'static str = format!("{OPAQUE_TICKET}-{tickets}").leak();
                outcomes.push(call(h.facade.channel.clone(), ticket).await);
            }
            for outcome in outcomes {
                let refused = outcome.expect_err("the Store refuses every call");
                answers.push_str(&status_text(&refused));
            }
            secrets.extend(sent_secrets(op, op.store(&h)).await);
        }
    }
    // The echoes went through the mapping and were scrubbed there.
    assert!(answers.contains("[redacted]"), "{answers}");
    assert!(capture.text().contains("rpc finished"));
    Echoed { answers, secrets }
}
