//! What every RPC does around its own logic: the caller's deadline, correlation ids, upstream
//! metadata on the answer, and one log line.

use std::future::Future;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap};
use tonic::{Request, Response, Status};
use tracing::field::Empty;
use tracing::Instrument;

use crate::error::{insert_ids, ApiError};
use crate::resilience::ResilienceConfig;
use crate::telemetry::metrics::RpcMetrics;
use crate::telemetry::ms_cv::CorrelationVector;
use crate::telemetry::otel;
use crate::telemetry::trace_context::TraceContext;
use crate::upstream::{Answer, Correlation};

/// The longest safety margin taken off the caller's deadline (a tenth of it is taken up to
/// this), so that the facade's DEADLINE_EXCEEDED reaches the caller before the caller's own
/// clock runs out (a tonic client's timer answers CANCELLED). It has to cover the answer's way
/// back and a busy scheduler: with 20 ms a tonic caller saw CANCELLED on a loaded 2-core box.
const MAX_DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// How long a call may take: the budget of a call whose caller sets no deadline, and the most
/// a caller's `grpc-timeout` may ask for.
#[derive(Debug, Clone, Copy)]
pub struct CallDeadlines {
    /// The budget of a call whose caller sets no deadline (`--default-deadline`).
    pub default: Duration,
    /// The cap on a caller's deadline (`--max-deadline`).
    pub max: Duration,
}

impl CallDeadlines {
    /// The deadlines of `config`.
    pub fn new(config: &ResilienceConfig) -> Self {
        Self {
            default: config.default_deadline,
            max: config.max_deadline,
        }
    }

    /// The caller's budget as the facade keeps it: its `grpc-timeout`, capped.
    pub(crate) fn caller_budget(&self, grpc_timeout: Option<Duration>) -> Option<Duration> {
        grpc_timeout.map(|budget| budget.min(self.max))
    }

    /// The call's own budget: the caller's less a safety margin, or the default one.
    pub(crate) fn call_budget(&self, caller_budget: Option<Duration>) -> Duration {
        caller_budget.map_or(self.default, |budget| {
            budget.saturating_sub((budget / 10).min(MAX_DEADLINE_MARGIN))
        })
    }
}

/// `budget` after `started`; a budget beyond what `Instant` can hold (only a configured cap
/// of centuries could ask for one) is halved until it fits, rather than panicking.
pub(crate) fn deadline_after(started: Instant, mut budget: Duration) -> Instant {
    loop {
        match started.checked_add(budget) {
            Some(deadline) => return deadline,
            None => budget /= 2,
        }
    }
}

/// The metadata every call reads, as keys made once (a lookup by `&str` parses the name).
static CALL_KEYS: LazyLock<[MetadataKey<Ascii>; 3]> =
    LazyLock::new(|| ["grpc-timeout", "ms-cv", "traceparent"].map(MetadataKey::from_static));

/// When the request's headers reached the server, stamped by the server's outermost layer:
/// the caller's deadline runs from there (as tonic's own timer does), not from when the
/// handler first got to run, which can be much later on a loaded machine.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

/// The identity of an RPC method, for its span and log line.
#[derive(Debug)]
pub struct RpcId {
    service: &'static str,
    method: &'static str,
    full_name: String,
}

impl RpcId {
    /// `service`/`method`.
    pub fn new(service: &'static str, method: &'static str) -> Self {
        Self {
            service,
            method,
            full_name: format!("{service}/{method}"),
        }
    }
}

/// What the upstream attempts of one call share: correlation, the call's deadline, and the
/// last upstream HTTP status (for the log line). Behind an `Arc` so that a coalesced flight
/// can own the context of the call that started it.
pub struct Attempts {
    ms_cv: Mutex<CorrelationVector>,
    trace: TraceContext,
    upstream_status: AtomicU16,
    deadline: Instant,
}

impl Attempts {
    /// Correlation headers for the next upstream attempt (MS-CV incremented).
    pub fn next_attempt(&self) -> Correlation {
        let ms_cv = self
            .ms_cv
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .next_attempt();
        Correlation {
            ms_cv,
            traceparent: self.trace.traceparent(),
        }
    }

    /// Records the HTTP status of an upstream answer, for the call's log line.
    pub fn record_upstream_status(&self, status: Option<u16>) {
        if let Some(status) = status {
            self.upstream_status.store(status, Ordering::Relaxed);
        }
    }

    /// When the call's budget runs out (the caller's deadline, or the default one).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    fn upstream_status(&self) -> Option<u16> {
        Some(self.upstream_status.load(Ordering::Relaxed)).filter(|s| *s != 0)
    }
}

/// One RPC from arrival to answer.
pub struct CallContext<'a> {
    rpc: &'a RpcId,
    started: Instant,
    caller_budget: Option<Duration>,
    attempts: Arc<Attempts>,
    /// The server span (disabled unless traces are exported).
    span: tracing::Span,
}

impl<'a> CallContext<'a> {
    /// Starts a call: reads deadline and correlation from the metadata, returns the message.
    /// A caller's deadline above `deadlines.max` is capped to it; a call whose caller sets no
    /// deadline gets `deadlines.default`.
    pub fn begin<Req>(
        rpc: &'a RpcId,
        request: Request<Req>,
        deadlines: CallDeadlines,
    ) -> (Self, Req) {
        let metadata = request.metadata();
        let text = |key: &MetadataKey<Ascii>| metadata.get(key).and_then(|v| v.to_str().ok());
        let [grpc_timeout_key, ms_cv_key, traceparent_key] = &*CALL_KEYS;
        let started = request
            .extensions()
            .get::<Arrival>()
            .map_or_else(Instant::now, |arrival| arrival.0);
        let caller_budget = deadlines.caller_budget(text(grpc_timeout_key).and_then(grpc_timeout));
        let budget = deadlines.call_budget(caller_budget);
        let attempts = Arc::new(Attempts {
            ms_cv: Mutex::new(CorrelationVector::for_call(text(ms_cv_key))),
            trace: TraceContext::for_call(text(traceparent_key)),
            upstream_status: AtomicU16::new(0),
            deadline: deadline_after(started, budget),
        });
        let span = if otel::active() {
            server_span(rpc, request.metadata(), &attempts)
        } else {
            tracing::Span::none()
        };
        let context = Self {
            rpc,
            started,
            caller_budget,
            attempts,
            span,
        };
        (context, request.into_inner())
    }

    /// The attempts of this call.
    pub fn attempts(&self) -> &Arc<Attempts> {
        &self.attempts
    }

    /// Runs `work` within the call's deadline, if `limiter` has room for it (else the call is
    /// shed at once), then maps the outcome, puts the upstream ids in the response metadata
    /// and writes the call's log line.
    pub async fn complete<T>(
        &self,
        limiter: &CallLimiter,
        metrics: &RpcMetrics,
        work: impl Future<Output = Result<Answer<T>, ApiError>>,
    ) -> Result<Response<T>, Status> {
        let outcome = match limiter.permits.try_acquire() {
            Ok(_permit) => {
                let deadline = tokio::time::Instant::from_std(self.attempts.deadline);
                let budget = self.caller_budget.unwrap_or_else(|| {
                    self.attempts
                        .deadline
                        .saturating_duration_since(self.started)
                });
                tokio::time::timeout_at(deadline, work.instrument(self.span.clone()))
                    .await
                    .unwrap_or(Err(ApiError::DeadlineExceeded { budget }))
            }
            Err(_) => {
                metrics.shed();
                Err(ApiError::Overloaded {
                    limit: limiter.limit,
                })
            }
        };
        self.finish(metrics, outcome)
    }

    /// Maps the outcome, puts the upstream ids in the response metadata, records the call's
    /// metrics and writes its log line.
    pub fn finish<T>(
        &self,
        metrics: &RpcMetrics,
        outcome: Result<Answer<T>, ApiError>,
    ) -> Result<Response<T>, Status> {
        let attempts = &self.attempts;
        let result = match outcome {
            Ok(answer) => {
                attempts.record_upstream_status(Some(answer.http_status));
                let mut response = Response::new(answer.value);
                insert_ids(response.metadata_mut(), &answer.ids);
                Ok(response)
            }
            Err(error) => {
                attempts.record_upstream_status(error.upstream_http_status());
                Err(Status::from(error))
            }
        };
        let latency = self.started.elapsed();
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        metrics.finished(code, latency);
        if !self.span.is_disabled() {
            record_outcome(&self.span, code);
        }
        log_call(self.rpc, &result, latency, attempts);
        result
    }
}

/// The limit on calls in flight: a call that finds no room is shed at once, never queued.
#[derive(Debug)]
pub struct CallLimiter {
    permits: Semaphore,
    limit: usize,
}

impl CallLimiter {
    /// Room for `limit` calls at once.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Semaphore::new(limit),
            limit,
        }
    }

    /// How many calls are being handled now.
    pub fn in_flight(&self) -> usize {
        self.limit.saturating_sub(self.permits.available_permits())
    }
}

/// The server span of an RPC, following the OpenTelemetry RPC conventions, continuing the
/// caller's W3C trace context when the metadata carries one.
fn server_span(rpc: &RpcId, metadata: &MetadataMap, attempts: &Attempts) -> tracing::Span {
    let ms_cv = attempts
        .ms_cv
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .to_string();
    let span = tracing::info_span!(
        "rpc",
        otel.name = rpc.full_name.as_str(),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = rpc.service,
        rpc.method = rpc.method,
        rpc.grpc.status_code = Empty,
        ms_cv = ms_cv,
    );
    otel::continue_from(&span, &metadata.clone().into_headers());
    span
}

/// Codes that are the server's fault: the span's status is ERROR (OpenTelemetry conventions).
fn server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

fn record_outcome(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i64);
    if server_error(code) {
        span.record("otel.status_code", "ERROR");
    }
}

/// Parses a `grpc-timeout` value (`<digits><unit>`, units H M S m u n).
pub fn grpc_timeout(text: &str) -> Option<Duration> {
    let digits = text.get(..text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match text.as_bytes()[text.len() - 1] {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn log_call<T>(
    rpc: &RpcId,
    result: &Result<Response<T>, Status>,
    latency: Duration,
    attempts: &Attempts,
) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let (code, message) = match result {
        Ok(_) => (tonic::Code::Ok, None),
        // Status messages are built by crate::error and never carry a secret.
        Err(status) => (status.code(), Some(status.message())),
    };
    let latency_ms = (latency.as_secs_f64() * 1e6).round() / 1e3;
    // The last MS-CV sent upstream (or the call's own, when nothing was sent).
    let ms_cv = attempts
        .ms_cv
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    tracing::info!(
        rpc.service = rpc.service,
        rpc.method = rpc.method,
        grpc.code = ?code,
        latency_ms,
        upstream.http_status = attempts.upstream_status(),
        grpc.message = message,
        trace_id = %attempts.trace.trace_id_hex(),
        span_id = %attempts.trace.span_id_hex(),
        ms_cv = %ms_cv,
        "rpc finished"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_deadline_above_the_cap_is_capped() {
        let deadlines = CallDeadlines {
            default: Duration::from_secs(30),
            max: Duration::from_secs(60),
        };
        let absurd = grpc_timeout("99999999H");
        assert_eq!(
            deadlines.caller_budget(absurd),
            Some(Duration::from_secs(60))
        );
        let modest = Some(Duration::from_secs(5));
        assert_eq!(deadlines.caller_budget(modest), modest);
        assert_eq!(deadlines.caller_budget(None), None);
        assert_eq!(deadlines.call_budget(None), Duration::from_secs(30));
        let margin = deadlines.call_budget(Some(Duration::from_secs(60)));
        assert_eq!(margin, Duration::from_secs(60) - MAX_DEADLINE_MARGIN);
    }

    #[test]
    fn a_deadline_beyond_what_instant_holds_does_not_panic() {
        let now = Instant::now();
        let far = deadline_after(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(3600 * 24 * 365));
        assert_eq!(deadline_after(now, Duration::ZERO), now);
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod proptests {
    //! [`crate::fuzzing::grpc_timeout`]'s properties (shared with its fuzz target) over
    //! arbitrary text and `grpc-timeout`-shaped values, and the deadline of a call under any
    //! settings and any caller's timeout, `Duration::MAX` included.
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    fn any_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            (0u64..200_000).prop_map(Duration::from_millis),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_text_parses_without_panic(text in any::<String>()) {
            fuzzing::grpc_timeout(text.as_bytes());
        }

        #[test]
        fn a_timeout_is_up_to_eight_digits_and_a_unit(
            digits in "[0-9]{0,10}",
            unit in prop::sample::select(vec!["H", "M", "S", "m", "u", "n", "h", "s", "x", "", "é"]),
        ) {
            let text = format!("{digits}{unit}");
            fuzzing::grpc_timeout(text.as_bytes());
            let nanos_per_unit: Option<u128> = match unit {
                "H" => Some(3_600_000_000_000),
                "M" => Some(60_000_000_000),
                "S" => Some(1_000_000_000),
                "m" => Some(1_000_000),
                "u" => Some(1_000),
                "n" => Some(1),
                _ => None,
            };
            let expected = nanos_per_unit
                .filter(|_| (1..=8).contains(&digits.len()))
                .map(|per| per * digits.parse::<u128>().unwrap());
            prop_assert_eq!(grpc_timeout(&text).map(|t| t.as_nanos()), expected, "{}", text);
        }

        #[test]
        fn any_settings_and_timeout_give_a_deadline_without_panic(
            default in any_duration(),
            max in any_duration(),
            asked in proptest::option::of(any_duration()),
        ) {
            fuzzing::call_deadline_holds(CallDeadlines { default, max }, asked);
        }
    }
}
