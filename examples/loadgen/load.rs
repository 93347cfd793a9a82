//! The loads: a closed loop (a fixed number of calls in flight), an open loop (calls sent on a
//! fixed schedule, latency counted from the scheduled time, so a stall cannot hide the calls
//! it delayed), and a burst of slow calls held in flight while the facade's memory is sampled.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::children::memory_kib;
use super::target::{CallIds, Outcome, Target};
use super::Fallible;

/// Latencies (HDR histogram, microseconds) and outcomes of calls.
#[derive(Clone)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    outcomes: HashMap<Outcome, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            latency_us: micros_histogram(),
            outcomes: HashMap::new(),
        }
    }
}

/// 1 µs to 1 h at 3 significant digits.
fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Recorder {
    /// One call.
    pub fn record(&mut self, latency: Duration, outcome: Outcome) {
        self.latency_us.saturating_record(micros(latency));
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    /// Adds another recorder's calls.
    pub fn merge(&mut self, other: &Recorder) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds add");
        for (outcome, count) in &other.outcomes {
            *self.outcomes.entry(*outcome).or_default() += count;
        }
    }

    /// Calls recorded.
    pub fn calls(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// Whether every call succeeded.
    pub fn all_ok(&self) -> bool {
        self.outcomes.keys().all(|outcome| outcome.is_ok())
    }

    /// The latency at quantile `q` (0 to 1), in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.latency_us.value_at_quantile(q)
    }

    fn outcomes_json(&self) -> Value {
        let labelled: BTreeMap<String, u64> = self
            .outcomes
            .iter()
            .map(|(outcome, count)| (outcome.label(), *count))
            .collect();
        json!(labelled)
    }
}

/// Quantiles of a microsecond histogram, for the report.
fn quantiles_json(histogram: &Histogram<u64>) -> Value {
    json!({
        "min": histogram.min(),
        "p50": histogram.value_at_quantile(0.50),
        "p90": histogram.value_at_quantile(0.90),
        "p99": histogram.value_at_quantile(0.99),
        "p99_9": histogram.value_at_quantile(0.999),
        "max": histogram.max(),
        "mean": round1(histogram.mean()),
    })
}

/// `x` to one decimal, for reading.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The calls of one phase against one target.
pub struct Phase {
    /// `facade` or `direct`.
    pub target: &'static str,
    /// Latencies and outcomes.
    pub recorder: Recorder,
    /// From the first call (or its scheduled time) to the last answer.
    pub elapsed: Duration,
    /// Open loop: the schedule and how late calls left (the load generator's own lag).
    pub schedule: Option<Schedule>,
}

/// An open loop's schedule.
pub struct Schedule {
    /// Calls per second asked for.
    pub rate: u64,
    /// How late each call was sent after its scheduled time, in microseconds.
    pub send_lag_us: Histogram<u64>,
}

impl Phase {
    /// Answers per second over the phase.
    pub fn calls_per_sec(&self) -> f64 {
        self.recorder.calls() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The phase in the report.
    pub fn to_json(&self) -> Value {
        let mut value = json!({
            "calls": self.recorder.calls(),
            "elapsed_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "calls_per_sec": round1(self.calls_per_sec()),
            "outcomes": self.recorder.outcomes_json(),
            "latency_us": quantiles_json(&self.recorder.latency_us),
        });
        if let Some(schedule) = &self.schedule {
            value["intended_calls_per_sec"] = json!(schedule.rate);
            value["send_lag_us"] = quantiles_json(&schedule.send_lag_us);
        }
        value
    }
}

/// `calls` calls (`ids` 0 to calls - 1), `concurrency` at a time: each of `concurrency`
/// workers sends its next call when its previous one has answered.
pub async fn closed_loop(target: &Target, ids: &CallIds, calls: u64, concurrency: usize) -> Phase {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (target, ids, next) = (target.clone(), ids.clone(), next.clone());
            tokio::spawn(async move {
                let mut recorder = Recorder::default();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= calls {
                        return recorder;
                    }
                    let sent = Instant::now();
                    let outcome = target.call(&ids, n).await;
                    recorder.record(sent.elapsed(), outcome);
                }
            })
        })
        .collect();
    let mut recorder = Recorder::default();
    for worker in workers {
        recorder.merge(&worker.await.expect("a load worker does not panic"));
    }
    Phase {
        target: target.name(),
        recorder,
        elapsed: started.elapsed(),
        schedule: None,
    }
}

/// `rate` calls per second for `duration`: call `n` is due at `n / rate` s and is sent then,
/// however many earlier calls are still waiting; its latency runs from when it was due.
pub async fn open_loop(target: &Target, ids: &CallIds, rate: u64, duration: Duration) -> Phase {
    let rate = rate.max(1);
    let calls = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let (answers, mut answers_rx) = tokio::sync::mpsc::unbounded_channel();
    let collector = tokio::spawn(async move {
        let mut recorder = Recorder::default();
        while let Some((latency, outcome)) = answers_rx.recv().await {
            recorder.record(latency, outcome);
        }
        recorder
    });
    let start = Instant::now() + Duration::from_millis(5);
    let runtime = tokio::runtime::Handle::current();
    let (sender_target, sender_ids) = (target.clone(), ids.clone());
    // The sender is a thread of its own: the runtime's timers tick in whole milliseconds,
    // which at 1,000 calls/s would add up to a millisecond to every call's latency.
    let send_lag_us = tokio::task::spawn_blocking(move || {
        let mut send_lag_us = micros_histogram();
        for n in 0..calls {
            let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            send_lag_us.saturating_record(micros(due.elapsed()));
            let (target, ids, answers) =
                (sender_target.clone(), sender_ids.clone(), answers.clone());
            runtime.spawn(async move {
                let outcome = target.call(&ids, n).await;
                let _ = answers.send((due.elapsed(), outcome));
            });
        }
        send_lag_us
    })
    .await
    .expect("the sender does not panic");
    let recorder = collector.await.expect("the collector does not panic");
    Phase {
        target: target.name(),
        recorder,
        elapsed: start.elapsed(),
        schedule: Some(Schedule { rate, send_lag_us }),
    }
}

/// The facade's memory while many calls were in flight at once.
pub struct InFlight {
    /// The calls (all sent at once; the upstream holds each for a while).
    pub phase: Phase,
    /// Largest VmRSS of the facade seen while every call was in flight, in KiB.
    pub peak_rss_kib: Option<u64>,
    /// How many memory samples saw every call in flight (one every 10 ms).
    pub samples: u64,
}

/// Sends `calls` distinct calls at once and samples VmRSS of `pid` every 10 ms while all of
/// them are sent and none has answered.
pub async fn hold_in_flight(
    target: &Target,
    ids: &CallIds,
    calls: u64,
    pid: u32,
) -> Fallible<InFlight> {
    let in_flight = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..calls)
        .map(|n| {
            let (target, ids, in_flight) = (target.clone(), ids.clone(), in_flight.clone());
            tokio::spawn(async move {
                in_flight.fetch_add(1, Ordering::SeqCst);
                let sent = Instant::now();
                let outcome = target.call(&ids, n).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                (sent.elapsed(), outcome)
            })
        })
        .collect();
    let (mut peak_rss_kib, mut samples) = (None, 0);
    let mut answered = 0;
    while answered < calls {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let before = in_flight.load(Ordering::SeqCst);
        let rss = memory_kib(pid, "VmRSS")?;
        if before == calls && in_flight.load(Ordering::SeqCst) == calls {
            peak_rss_kib = peak_rss_kib.max(Some(rss));
            samples += 1;
        }
        answered = tasks.iter().filter(|task| task.is_finished()).count() as u64;
    }
    let mut recorder = Recorder::default();
    for task in tasks {
        let (latency, outcome) = task.await.expect("a call task does not panic");
        recorder.record(latency, outcome);
    }
    Ok(InFlight {
        phase: Phase {
            target: target.name(),
            recorder,
            elapsed: started.elapsed(),
            schedule: None,
        },
        peak_rss_kib,
        samples,
    })
}
