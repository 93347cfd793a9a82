//! Prometheus metrics of one facade instance: a registry of its own (no process-wide recorder,
//! so several servers in one process keep apart), with every hot-path handle registered once.
//! Recording is an atomic add; names and labels are never formatted per call.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use enum_map::EnumMap;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Latency buckets, in seconds, of every histogram.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every gRPC code, in numeric order, with its canonical name.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// How a token request ended, as the `outcome` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, enum_map::Enum)]
pub enum TokenOutcome {
    /// A token was issued.
    Issued,
    /// The endpoint refused the credentials.
    Rejected,
    /// The endpoint was unreachable, throttled or failing, or its answer unusable.
    Failed,
}

impl TokenOutcome {
    fn label(self) -> &'static str {
        match self {
            TokenOutcome::Issued => "issued",
            TokenOutcome::Rejected => "rejected",
            TokenOutcome::Failed => "failed",
        }
    }
}

/// Handles of one RPC method, registered (at zero) when the method's pipeline is built.
pub struct RpcMetrics {
    by_code: [Counter; 17],
    latency: Histogram,
    shed: Counter,
}

impl RpcMetrics {
    /// Records a finished call.
    pub fn finished(&self, code: tonic::Code, latency: Duration) {
        if let Some(counter) = self.by_code.get(code as usize) {
            counter.increment(1);
        }
        self.latency.record(latency.as_secs_f64());
    }

    /// Records a call shed because too many calls were in flight.
    pub fn shed(&self) {
        self.shed.increment(1);
    }
}

impl std::fmt::Debug for RpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RpcMetrics")
    }
}

/// Handles of one upstream host: attempt counters per HTTP status (registered on first use),
/// transport failures and the attempt latency.
pub struct UpstreamMetrics {
    registry: Arc<Registry>,
    labels: [Label; 2],
    by_status: Box<[OnceLock<Counter>]>,
    no_answer: Counter,
    latency: Histogram,
}

impl UpstreamMetrics {
    /// Records one attempt: its HTTP status (`None` when no answer came) and how long it took.
    pub fn attempt(&self, status: Option<u16>, latency: Duration) {
        self.latency.record(latency.as_secs_f64());
        let Some(status) = status else {
            self.no_answer.increment(1);
            return;
        };
        let Some(slot) = self.by_status.get(usize::from(status).wrapping_sub(100)) else {
            self.no_answer.increment(1);
            return;
        };
        slot.get_or_init(|| {
            let mut labels = self.labels.to_vec();
            labels.push(Label::new("status", status.to_string()));
            self.registry
                .counter("msstore_upstream_requests_total", labels)
        })
        .increment(1);
    }
}

impl std::fmt::Debug for UpstreamMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamMetrics")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

struct Registry {
    recorder: PrometheusRecorder,
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Registry {
    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &METADATA)
    }
}

/// The handles of TLS on the gRPC port.
#[derive(Clone)]
pub struct TlsMetrics {
    /// A connection whose handshake failed or timed out.
    pub handshakes_failed: Counter,
    /// Changed certificate files loaded.
    pub loaded: Counter,
    /// Changed certificate files refused (the previous ones stay in force).
    pub rejected: Counter,
}

/// A gauge read from live state when `/metrics` is scraped.
type Sampler = Box<dyn Fn() -> f64 + Send + Sync>;

/// The metrics of one facade instance (cheap to share behind an `Arc`).
pub struct Metrics {
    registry: Arc<Registry>,
    handle: PrometheusHandle,
    coalesced: Counter,
    token_requests: EnumMap<TokenOutcome, Counter>,
    token_cache_hits: Counter,
    sampled: std::sync::Mutex<Vec<(Gauge, Sampler)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every fixed series registered (at zero).
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .expect("the latency buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let registry = Arc::new(Registry { recorder });
        describe(&registry.recorder);
        let token_requests = EnumMap::from_fn(|outcome: TokenOutcome| {
            registry.counter(
                "msstore_token_requests_total",
                vec![Label::from_static_parts("outcome", outcome.label())],
            )
        });
        Self {
            coalesced: registry.counter("msstore_coalesced_calls_total", Vec::new()),
            token_cache_hits: registry.counter("msstore_token_cache_hits_total", Vec::new()),
            registry,
            handle,
            token_requests,
            sampled: std::sync::Mutex::default(),
        }
    }

    /// Registers the series of one RPC method (every gRPC code at zero) and returns their
    /// handles.
    pub fn rpc(&self, service: &'static str, method: &'static str) -> RpcMetrics {
        let labels = || {
            vec![
                Label::from_static_parts("service", service),
                Label::from_static_parts("method", method),
            ]
        };
        RpcMetrics {
            by_code: GRPC_CODES.map(|code| {
                let mut labels = labels();
                labels.push(Label::from_static_parts("code", code));
                self.registry.counter("msstore_rpc_requests_total", labels)
            }),
            latency: self
                .registry
                .histogram("msstore_rpc_duration_seconds", labels()),
            shed: self.registry.counter("msstore_rpc_shed_total", labels()),
        }
    }

    /// Registers the retry counter of one upstream (label `upstream`) and returns it.
    pub fn retries(&self, upstream: &'static str) -> Counter {
        self.registry.counter(
            "msstore_upstream_retries_total",
            vec![Label::from_static_parts("upstream", upstream)],
        )
    }

    /// Records a call that joined an identical call's upstream request.
    pub fn coalesced(&self) {
        self.coalesced.increment(1);
    }

    /// Records a token request to Entra.
    pub fn token_request(&self, outcome: TokenOutcome) {
        self.token_requests[outcome].increment(1);
    }

    /// Records a token lookup served without a token request of its own.
    pub fn token_cache_hit(&self) {
        self.token_cache_hits.increment(1);
    }

    /// The handles of one upstream host; `upstream` is the `upstream` label.
    pub fn upstream(&self, upstream: &'static str, host: &str) -> UpstreamMetrics {
        let labels = [
            Label::from_static_parts("upstream", upstream),
            Label::new("host", host.to_owned()),
        ];
        UpstreamMetrics {
            registry: self.registry.clone(),
            no_answer: self.registry.counter(
                "msstore_upstream_requests_total",
                [
                    labels.to_vec(),
                    vec![Label::from_static_parts("status", "none")],
                ]
                .concat(),
            ),
            latency: self
                .registry
                .histogram("msstore_upstream_duration_seconds", labels.to_vec()),
            by_status: (100..600).map(|_| OnceLock::new()).collect(),
            labels,
        }
    }

    /// Registers the series of TLS on the gRPC port and returns their handles.
    pub fn tls(&self) -> TlsMetrics {
        let reloads = |outcome| {
            self.registry.counter(
                "msstore_tls_reloads_total",
                vec![Label::from_static_parts("outcome", outcome)],
            )
        };
        TlsMetrics {
            handshakes_failed: self
                .registry
                .counter("msstore_tls_handshakes_failed_total", Vec::new()),
            loaded: reloads("loaded"),
            rejected: reloads("rejected"),
        }
    }

    /// Registers a gauge whose value `sample` reads at each scrape (circuit state, calls in
    /// flight): nothing is recorded on the hot path.
    pub fn sample_gauge(
        &self,
        name: &'static str,
        labels: Vec<Label>,
        sample: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let gauge = self.registry.gauge(name, labels);
        self.sampled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((gauge, Box::new(sample)));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        for (gauge, sample) in self
            .sampled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            gauge.set(sample());
        }
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets; run it every few seconds so that
    /// memory stays bounded between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn describe(recorder: &PrometheusRecorder) {
    let help = [
        (
            "msstore_rpc_requests_total",
            "Finished RPCs by service, method and gRPC code.",
        ),
        (
            "msstore_rpc_duration_seconds",
            "RPC latency from arrival of the headers to the answer.",
        ),
        (
            "msstore_rpc_shed_total",
            "RPCs refused at once (UNAVAILABLE) because too many calls were in flight.",
        ),
        (
            "msstore_upstream_requests_total",
            "Upstream HTTP attempts by upstream, host and HTTP status (none: no answer).",
        ),
        (
            "msstore_upstream_duration_seconds",
            "Latency of one upstream HTTP attempt.",
        ),
        (
            "msstore_upstream_retries_total",
            "Retries of a failed Store attempt.",
        ),
        (
            "msstore_coalesced_calls_total",
            "Calls that shared an identical call's upstream request.",
        ),
        (
            "msstore_token_requests_total",
            "Token requests sent to Entra, by outcome.",
        ),
        (
            "msstore_token_cache_hits_total",
            "Token lookups answered without a token request of their own.",
        ),
        (
            "msstore_circuit_state",
            "Circuit of each upstream host: 0 closed, 1 open, 2 half-open (probing).",
        ),
        ("msstore_calls_in_flight", "Store calls being handled now."),
        (
            "msstore_tls_handshakes_failed_total",
            "gRPC connections closed because their TLS handshake failed or timed out.",
        ),
        (
            "msstore_tls_reloads_total",
            "Certificate files read again after a change, by outcome (loaded, or rejected and the previous ones kept).",
        ),
    ];
    for (name, text) in help {
        if name.ends_with("_seconds") {
            recorder.describe_histogram(name.into(), Some(metrics::Unit::Seconds), text.into());
        } else if name.ends_with("_total") {
            recorder.describe_counter(name.into(), None, text.into());
        } else {
            recorder.describe_gauge(name.into(), None, text.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_codes_follow_tonic_numbering() {
        assert_eq!(GRPC_CODES[tonic::Code::Unavailable as usize], "UNAVAILABLE");
        assert_eq!(
            GRPC_CODES[tonic::Code::Unauthenticated as usize],
            "UNAUTHENTICATED"
        );
    }

    #[test]
    fn rendered_text_carries_recorded_series() {
        let metrics = Metrics::new();
        metrics
            .rpc("msstore.v1.StoreKeys", "RenewKey")
            .finished(tonic::Code::Ok, Duration::from_millis(3));
        let upstream = metrics.upstream("collections", "collections.example");
        upstream.attempt(Some(503), Duration::from_millis(2));
        upstream.attempt(None, Duration::from_millis(2));
        metrics.sample_gauge("msstore_calls_in_flight", Vec::new(), || 7.0);
        let text = metrics.render();
        assert!(
            text.contains(r#"msstore_rpc_requests_total{service="msstore.v1.StoreKeys",method="RenewKey",code="OK"} 1"#),
            "{text}"
        );
        assert!(text.contains(
            r#"msstore_upstream_requests_total{upstream="collections",host="collections.example",status="503"} 1"#
        ));
        assert!(text.contains(
            r#"msstore_upstream_requests_total{upstream="collections",host="collections.example",status="none"} 1"#
        ));
        assert!(text.contains("msstore_calls_in_flight 7"));
        assert!(text.contains("msstore_rpc_duration_seconds_bucket{"));
    }
}
