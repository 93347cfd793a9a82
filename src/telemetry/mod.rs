//! Logs, metrics and correlation: the subscriber set-up, the metrics registry, MS-CV vectors
//! and W3C trace context.

pub mod metrics;
pub mod ms_cv;
pub mod otel;
pub mod trace_context;

use std::io::IsTerminal;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the process-wide log subscriber (`RUST_LOG`, default `info`) writing to stderr.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::registry()
        .with(filter)
        .with(log_layer(format, std::io::stderr, ansi))
        .init();
}

/// Installs logs and, when the environment names an OTLP endpoint, the OpenTelemetry layer;
/// returns the tracer provider to shut down (flushing spans) before the process exits. Must
/// run inside a Tokio runtime.
pub fn init_telemetry(
    format: LogFormat,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, otel::OtelError> {
    let Some(provider) = otel::provider_from_env()? else {
        init_logging(format);
        return Ok(None);
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::registry()
        .with(otel::layer(&provider))
        .with(filter)
        .with(log_layer(format, std::io::stderr, ansi))
        .init();
    Ok(Some(provider))
}

/// The log line formatter of `format`: `text` for humans, `json` one object per line with the
/// event's fields at the top level (`rpc.method`, `grpc.code`, `latency_ms`, `trace_id`,
/// `span_id`, `ms_cv`, ...). Tests install it with a writer of their own.
pub fn log_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => layer.with_ansi(ansi).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    }
}
