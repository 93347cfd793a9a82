//! OpenTelemetry traces exported over OTLP to an in-process collector: a server span per RPC
//! with the RPC conventions, continuing the caller's `traceparent`; a client span per upstream
//! attempt (token request included) whose context is what the upstream receives.
//! Its own binary: the tracer provider and the subscriber are process-wide.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use msstore_facade::config::LogFormat;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use wiremock::ResponseTemplate;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP trace collector keeping every span it receives.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|kv| kv.key == key)?;
    Some(match value.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_rpc_and_http_conventions_and_continue_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://{collector_addr}"),
    );
    std::env::set_var("OTEL_SERVICE_NAME", "facade-under-test");
    let provider = msstore_facade::telemetry::init_telemetry(LogFormat::Text)
        .expect("exporter builds")
        .expect("an endpoint is set: traces are exported");

    let h = Harness::builder()
        .resilience(|r| r.retry_base_delay = Duration::from_millis(1))
        .start()
        .await;
    h.mount_token(3599).await;
    Harness::answer_next_once(&h.business, ResponseTemplate::new(503)).await;
    h.mount_license(ResponseTemplate::new(200).set_body_json(license_body()))
        .await;
    let mut request = tonic::Request::new(license_request());
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
        .metadata_mut()
        .insert("ms-cv", "xu2HW6SrSkyfHyFh.7".parse().unwrap());
    h.entitlements().get_offline_license(request).await.unwrap();

    let flushed = provider.clone();
    tokio::task::spawn_blocking(move || flushed.force_flush())
        .await
        .unwrap()
        .expect("spans flush to the collector");
    let spans = collector.0.lock().unwrap().clone();

    // Only the facade's own spans leave the process, and none names a source file.
    for span in &spans {
        let own = (span.kind == SpanKind::Server as i32
            && span.name == "msstore.v1.StoreEntitlements/GetOfflineLicense")
            || (span.kind == SpanKind::Client as i32 && attr(span, "url.template").is_some());
        assert!(own, "a span that is not the facade's own: {span:#?}");
        for kv in &span.attributes {
            assert!(!kv.key.starts_with("code."), "{}: {kv:?}", span.name);
        }
    }
    let server: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(server.len(), 1, "{spans:#?}");
    let server = server[0];
    assert_eq!(
        server.name,
        "msstore.v1.StoreEntitlements/GetOfflineLicense"
    );
    assert_eq!(
        hex(&server.trace_id),
        TRACE_ID,
        "the caller's trace continues"
    );
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(attr(server, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attr(server, "rpc.service").as_deref(),
        Some("msstore.v1.StoreEntitlements")
    );
    assert_eq!(
        attr(server, "rpc.method").as_deref(),
        Some("GetOfflineLicense")
    );
    assert_eq!(attr(server, "rpc.grpc.status_code").as_deref(), Some("0"));
    assert_eq!(
        attr(server, "ms_cv").as_deref(),
        Some("xu2HW6SrSkyfHyFh.7.0")
    );

    let clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    let license_template = "/V1/Products/{productId}/{skuId}/OfflineLicense/{contentId}";
    let attempts: Vec<&&Span> = clients
        .iter()
        .filter(|s| attr(s, "url.template").as_deref() == Some(license_template))
        .collect();
    assert_eq!(attempts.len(), 2, "{clients:#?}");
    let mut statuses = Vec::new();
    for attempt in &attempts {
        assert_eq!(attempt.name, format!("POST {license_template}"));
        assert_eq!(hex(&attempt.trace_id), TRACE_ID);
        assert_eq!(attempt.parent_span_id, server.span_id);
        assert_eq!(
            attr(attempt, "http.request.method").as_deref(),
            Some("POST")
        );
        assert_eq!(
            attr(attempt, "server.address").as_deref(),
            Some("127.0.0.1")
        );
        statuses.push(attr(attempt, "http.response.status_code").unwrap());
        let ms_cv = attr(attempt, "ms_cv").unwrap();
        assert!(ms_cv.starts_with("xu2HW6SrSkyfHyFh.7."), "{ms_cv}");
        for kv in &attempt.attributes {
            let text = format!("{:?}", kv.value);
            assert!(
                !text.contains(&license_request().product_id),
                "raw URL: {kv:?}"
            );
        }
    }
    statuses.sort();
    assert_eq!(statuses, ["200", "503"]);

    let token = clients
        .iter()
        .find(|s| attr(s, "url.template").as_deref() == Some("/{tenant}/oauth2/v2.0/token"))
        .expect("the token request has a client span");
    assert_eq!(token.parent_span_id, server.span_id);
    assert_eq!(
        attr(token, "http.response.status_code").as_deref(),
        Some("200")
    );

    // What the Store received is each attempt's own span context.
    let sent: Vec<String> = h
        .business
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            r.headers
                .get("traceparent")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut expected: Vec<String> = attempts
        .iter()
        .map(|s| format!("00-{TRACE_ID}-{}-01", hex(&s.span_id)))
        .collect();
    let mut sent_sorted = sent.clone();
    sent_sorted.sort();
    expected.sort();
    assert_eq!(sent_sorted, expected);
    let token_sent = h.token.received_requests().await.unwrap();
    assert_eq!(
        token_sent[0].headers.get("traceparent").unwrap(),
        &format!("00-{TRACE_ID}-{}-01", hex(&token.span_id))
    );

    // Every operation of the table, with no code of its own for tracing: a server span named
    // after the RPC, and a client span per attempt under it whose context is what its Store
    // received.
    collector.0.lock().unwrap().clear();
    for op in OPERATIONS {
        op.store(&h).reset().await;
        op.mount(&h, op.ok()).await;
        (op.call)(h.facade.channel.clone(), None, 7)
            .await
            .unwrap_or_else(|status| panic!("{op:?}: {status:?}"));
        let flushed = provider.clone();
        tokio::task::spawn_blocking(move || flushed.force_flush())
            .await
            .unwrap()
            .expect("spans flush to the collector");
        let spans = std::mem::take(&mut *collector.0.lock().unwrap());
        let server: Vec<&Span> = spans
            .iter()
            .filter(|s| s.kind == SpanKind::Server as i32)
            .collect();
        assert_eq!(server.len(), 1, "{op:?}: {spans:#?}");
        let server = server[0];
        assert_eq!(server.name, op.full_name());
        assert_eq!(attr(server, "rpc.service").as_deref(), Some(op.service));
        assert_eq!(attr(server, "rpc.method").as_deref(), Some(op.method));
        assert_eq!(attr(server, "rpc.grpc.status_code").as_deref(), Some("0"));
        let attempt = spans
            .iter()
            .find(|s| {
                s.kind == SpanKind::Client as i32
                    && s.parent_span_id == server.span_id
                    && attr(s, "http.request.method").as_deref() == Some(op.http_method)
                    && attr(s, "url.template").is_some_and(|t| !t.contains("oauth2"))
            })
            .unwrap_or_else(|| panic!("{op:?}: no client span for the Store: {spans:#?}"));
        assert_eq!(
            attr(attempt, "http.response.status_code").as_deref(),
            Some("200")
        );
        let received = op.store(&h).received_requests().await.unwrap();
        let last = received.last().expect("the Store was called");
        assert_eq!(
            last.headers.get("traceparent").unwrap(),
            &format!("00-{}-{}-01", hex(&attempt.trace_id), hex(&attempt.span_id)),
            "{op:?}"
        );
    }

    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .unwrap()
        .unwrap();
}
