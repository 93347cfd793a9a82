//! OpenTelemetry traces: installed only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, exporting over OTLP/gRPC and honouring the
//! standard `OTEL_*` variables. Without it no span is even created on the call path.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// W3C trace context, stateless: used directly, not through the global propagator's lock.
static PROPAGATOR: std::sync::LazyLock<TraceContextPropagator> =
    std::sync::LazyLock::new(TraceContextPropagator::new);

/// Whether spans are exported (an OTLP endpoint is configured and the layer installed).
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("OTLP trace exporter: {0}")]
pub struct OtelError(String);

/// A tracer provider exporting over OTLP/gRPC when the environment names an endpoint, else
/// `None`. The exporter reads `OTEL_EXPORTER_OTLP_*` itself; the resource reads
/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (service name defaults to
/// `msstore-facade`); the sampler `OTEL_TRACES_SAMPLER(_ARG)`. Must run inside a Tokio runtime.
pub fn provider_from_env() -> Result<Option<SdkTracerProvider>, OtelError> {
    let set = |name| std::env::var(name).is_ok_and(|v: String| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if disabled
        || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| OtelError(e.to_string()))?;
    let mut resource = Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(env!("CARGO_PKG_NAME"));
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// The tracing layer that turns spans into OpenTelemetry spans of `provider`; marks tracing
/// active, so that the call path starts creating spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    ACTIVE.store(true, Ordering::Relaxed);
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(env!("CARGO_PKG_NAME")))
        .with_error_records_to_exceptions(false)
        // No `code.file.path` and friends: they carry the build machine's source paths.
        .with_location(false)
        // Only the facade's own spans leave the process: library-internal ones (h2's
        // `Connection`, hyper's) would start traces of their own.
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            metadata.target().starts_with(env!("CARGO_CRATE_NAME"))
        }))
}

/// Makes `span` a child of the W3C trace context in `headers` (gRPC metadata), if any.
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = PROPAGATOR.extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
}

/// The `traceparent` naming `span`, for the request it wraps; `None` when it is not recorded.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = TraceparentInjector(None);
    PROPAGATOR.inject_context(&span.context(), &mut carrier);
    carrier.0
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct TraceparentInjector(Option<String>);

impl Injector for TraceparentInjector {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// An upstream request's method and URL template: what a client span names it by (never the
/// URL itself, which carries ids), and the method it is sent with.
#[derive(Debug, Clone)]
pub struct Route {
    /// The span name, `METHOD template`.
    pub name: &'static str,
    /// The HTTP method.
    pub method: http::Method,
    /// The path with its variable parts as `{placeholders}`.
    pub template: &'static str,
}

/// A client span for one attempt of `route` to `host` (disabled unless traces are exported).
pub fn client_span(route: &Route, host: &str) -> tracing::Span {
    if !active() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "upstream",
        otel.name = route.name,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = route.method.as_str(),
        url.template = route.template,
        server.address = host,
        http.response.status_code = tracing::field::Empty,
        ms_cv = tracing::field::Empty,
    )
}

/// Records the answer's HTTP status (or its absence) on a client span.
pub fn record_response(span: &tracing::Span, status: Option<u16>) {
    if span.is_disabled() {
        return;
    }
    match status {
        Some(status) => {
            span.record("http.response.status_code", i64::from(status));
            if status >= 400 {
                span.record("otel.status_code", "ERROR");
            }
        }
        None => {
            span.record("otel.status_code", "ERROR");
        }
    }
}
