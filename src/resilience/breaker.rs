//! A per-host circuit breaker: after `threshold` consecutive failures the circuit opens and
//! calls fail fast; once `open_for` has passed, one probe request goes through, and its outcome
//! closes the circuit or opens it again. Lock-free: a few atomics per host.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const PROBING: u8 = 2;

/// The state of one upstream host's circuit.
#[derive(Debug)]
pub struct CircuitBreaker {
    host: String,
    threshold: u32,
    open_for: Duration,
    state: AtomicU8,
    failures: AtomicU32,
    /// When the circuit last opened, in milliseconds since `epoch`.
    opened_at_ms: AtomicU64,
    epoch: Instant,
}

/// The circuit is open: no request is sent before `retry_after` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    /// Time until a probe will be let through.
    pub retry_after: Duration,
}

/// Leave to send one request; report its outcome with [`Permit::record`].
#[derive(Debug)]
#[must_use]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl CircuitBreaker {
    /// A closed breaker for `host`; a `threshold` of 0 never opens.
    pub fn new(host: &str, threshold: u32, open_for: Duration) -> Self {
        Self {
            host: host.to_owned(),
            threshold,
            open_for,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Whether the circuit is open (or probing) now.
    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }

    /// The state as a number, for the circuit gauge: 0 closed, 1 open, 2 probing (half-open).
    pub fn state_code(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Lets a request through, or says how long the circuit stays open.
    pub fn admit(&self) -> Result<Permit<'_>, CircuitOpen> {
        let permit = |probe| Permit {
            breaker: self,
            probe,
            settled: false,
        };
        match self.state.load(Ordering::Acquire) {
            CLOSED => Ok(permit(false)),
            OPEN => {
                let open_ms = millis(self.open_for);
                let elapsed = self
                    .now_ms()
                    .saturating_sub(self.opened_at_ms.load(Ordering::Acquire));
                if elapsed >= open_ms
                    && self
                        .state
                        .compare_exchange(OPEN, PROBING, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    return Ok(permit(true));
                }
                Err(CircuitOpen {
                    retry_after: Duration::from_millis(open_ms.saturating_sub(elapsed).max(1)),
                })
            }
            _ => Err(CircuitOpen {
                retry_after: self.open_for.min(Duration::from_secs(1)),
            }),
        }
    }

    fn open(&self) {
        self.opened_at_ms.store(self.now_ms(), Ordering::Release);
        let previous = self.state.swap(OPEN, Ordering::AcqRel);
        if previous == CLOSED {
            tracing::warn!(host = %self.host, open_for = ?self.open_for, "circuit opened: failing calls fast");
        }
    }
}

impl Permit<'_> {
    /// Reports the outcome of the request this permit let through.
    pub fn record(mut self, failed: bool) {
        self.settled = true;
        let breaker = self.breaker;
        if breaker.threshold == 0 {
            return;
        }
        if !failed {
            breaker.failures.store(0, Ordering::Release);
            if self.probe {
                breaker.state.store(CLOSED, Ordering::Release);
                tracing::info!(host = %breaker.host, "circuit closed: probe succeeded");
            }
            return;
        }
        let failures = breaker.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if self.probe || failures >= breaker.threshold {
            breaker.open();
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // A probe whose caller went away proved nothing: let the next call probe at once.
        if self.probe && !self.settled {
            let breaker = self.breaker;
            let eligible = breaker.now_ms().saturating_sub(millis(breaker.open_for));
            breaker.opened_at_ms.store(eligible, Ordering::Release);
            breaker.state.store(OPEN, Ordering::Release);
        }
    }
}

/// `duration` in whole milliseconds, saturating: an absurd `--circuit-open-for` means "open
/// for as long as can be counted", never a wrapped-around short period.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let breaker = CircuitBreaker::new("h", 3, Duration::from_secs(60));
        for _ in 0..2 {
            breaker.admit().unwrap().record(true);
        }
        breaker.admit().unwrap().record(false);
        for _ in 0..3 {
            breaker.admit().unwrap().record(true);
        }
        let open = breaker.admit().unwrap_err();
        assert!(open.retry_after > Duration::from_secs(50));
    }

    #[test]
    fn one_probe_after_open_for_then_closes_on_success() {
        let breaker = CircuitBreaker::new("h", 1, Duration::ZERO);
        breaker.admit().unwrap().record(true);
        let probe = breaker.admit().unwrap();
        assert!(breaker.admit().is_err(), "only one probe at a time");
        probe.record(false);
        assert!(!breaker.is_open());
        breaker.admit().unwrap().record(false);
    }

    #[test]
    fn failed_probe_reopens_and_dropped_probe_frees_the_slot() {
        let breaker = CircuitBreaker::new("h", 1, Duration::ZERO);
        breaker.admit().unwrap().record(true);
        breaker.admit().unwrap().record(true);
        assert!(breaker.is_open());
        drop(breaker.admit().unwrap());
        assert!(breaker.admit().is_ok());
    }

    #[test]
    fn an_absurd_open_period_stays_open_and_does_not_overflow() {
        let breaker = CircuitBreaker::new("h", 1, Duration::MAX);
        breaker.admit().unwrap().record(true);
        let open = breaker.admit().unwrap_err();
        assert!(open.retry_after > Duration::from_secs(365 * 24 * 3600));
        drop(breaker.admit());
    }

    #[test]
    fn threshold_zero_never_opens() {
        let breaker = CircuitBreaker::new("h", 0, Duration::from_secs(60));
        for _ in 0..100 {
            breaker.admit().unwrap().record(true);
        }
        assert!(!breaker.is_open());
    }
}
