//! `MSSTORE_LOG_FORMAT=json`: one JSON object per line, and the RPC line carries the trace id
//! (continued from the caller's `traceparent`), span id, MS-CV, method, code and latency.
//! One test per binary: it owns the process-wide subscriber.

mod common;

use common::*;
use msstore_facade::config::LogFormat;
use msstore_facade::telemetry::log_layer;
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use wiremock::ResponseTemplate;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_CV: &str = "xu2HW6SrSkyfHyFh.7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_line_carries_trace_id_span_id_ms_cv_code_and_latency() {
    let capture = LogCapture::default();
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with(log_layer(LogFormat::Json, capture.clone(), false))
        .init();

    let h = Harness::builder()
        .resilience(|r| r.retry_base_delay = std::time::Duration::from_millis(1))
        .start()
        .await;
    h.mount_token(3599).await;
    Harness::answer_next_once(&h.business, ResponseTemplate::new(503)).await;
    h.mount_license(ResponseTemplate::new(200).set_body_json(license_body()))
        .await;
    let mut request = tonic::Request::new(license_request());
    let metadata = request.metadata_mut();
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    metadata.insert("traceparent", traceparent.parse().unwrap());
    metadata.insert("ms-cv", CALLER_CV.parse().unwrap());
    h.entitlements().get_offline_license(request).await.unwrap();
    let refused = h
        .keys()
        .renew_key(msstore_facade::proto::msstore::v1::RenewKeyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let logs = capture.text();
    let lines: Vec<Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let rpc_lines: Vec<&Value> = lines
        .iter()
        .filter(|line| line["message"] == "rpc finished")
        .collect();
    assert_eq!(rpc_lines.len(), 2, "{logs}");

    let license = rpc_lines
        .iter()
        .find(|line| line["rpc.method"] == "GetOfflineLicense")
        .unwrap();
    assert_eq!(license["level"], "INFO");
    assert_eq!(license["rpc.service"], "msstore.v1.StoreEntitlements");
    assert_eq!(license["grpc.code"], "Ok");
    assert_eq!(
        license["trace_id"], TRACE_ID,
        "the caller's trace continues"
    );
    let span_id = license["span_id"].as_str().unwrap();
    assert!(span_id.len() == 16 && span_id != "00f067aa0ba902b7" && span_id != "0000000000000000");
    // Extended once, incremented for each of the two upstream attempts.
    assert_eq!(license["ms_cv"], format!("{CALLER_CV}.2"));
    assert!(license["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(license["upstream.http_status"], 200);
    assert!(license["timestamp"].is_string());

    let renew = rpc_lines
        .iter()
        .find(|line| line["rpc.method"] == "RenewKey")
        .unwrap();
    assert_eq!(renew["grpc.code"], "InvalidArgument");
    let trace_id = renew["trace_id"].as_str().unwrap();
    assert!(
        trace_id.len() == 32 && trace_id != TRACE_ID,
        "a new trace: {trace_id}"
    );
    assert!(renew["grpc.message"].is_string());

    // Both attempts carried the same trace and an incremented MS-CV.
    let sent = h.business.received_requests().await.unwrap();
    let sent: Vec<(String, String)> = sent
        .iter()
        .filter(|r| r.url.path().starts_with("/V1/"))
        .map(|r| {
            let header = |name: &str| r.headers.get(name).unwrap().to_str().unwrap().to_owned();
            (header("traceparent"), header("ms-cv"))
        })
        .collect();
    assert_eq!(sent.len(), 2);
    for (n, (traceparent, ms_cv)) in sent.iter().enumerate() {
        assert!(
            traceparent.starts_with(&format!("00-{TRACE_ID}-")),
            "{traceparent}"
        );
        assert_eq!(ms_cv, &format!("{CALLER_CV}.{}", n + 1));
    }
}
