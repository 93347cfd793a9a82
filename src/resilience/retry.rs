//! Retries of transient upstream failures: bounded attempts, exponential backoff with full
//! jitter, a `Retry-After` that must be short (`--max-retry-wait`) and fit the call's remaining
//! budget, and a retry budget per upstream host (tower's `TpsBudget`) so that a failing
//! upstream is not hammered.

use std::future::Future;
use std::time::{Duration, Instant};

use metrics::Counter;
use tower::retry::budget::{Budget, TpsBudget};

use super::ResilienceConfig;

/// Least time an attempt must have left for a retry to be worth sending.
const MIN_ATTEMPT_TIME: Duration = Duration::from_millis(50);
/// How long a call counts toward the retry budget.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// A failure that may say it is worth retrying.
pub trait Retryable: std::fmt::Display {
    /// Whether this failure may be retried, and when.
    fn retry_advice(&self) -> Option<RetryAdvice>;
}

/// The retry budget of one upstream host, and the counter of its retries.
#[derive(Debug)]
pub struct RetryBudget {
    budget: TpsBudget,
    retries: Counter,
    upstream: &'static str,
}

impl RetryBudget {
    /// The budget of `config` for the host labelled `upstream`, counting retries in `retries`.
    pub fn new(config: &ResilienceConfig, upstream: &'static str, retries: Counter) -> Self {
        Self {
            budget: TpsBudget::new(
                BUDGET_WINDOW,
                config.retry_budget_min_per_sec,
                config.retry_budget_percent / 100.0,
            ),
            retries,
            upstream,
        }
    }
}

/// When a failed attempt may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAdvice {
    /// The upstream's `Retry-After`: the retry waits exactly this long, or is not made (when
    /// it is longer than the policy's longest wait, or does not fit the deadline).
    pub after: Option<Duration>,
}

/// The retry policy shared by every call.
#[derive(Debug)]
pub struct RetryPolicy {
    max_attempts: u32,
    base: Duration,
    cap: Duration,
    max_retry_wait: Duration,
}

impl RetryPolicy {
    /// The policy of `config`.
    pub fn new(config: &ResilienceConfig) -> Self {
        Self {
            max_attempts: config.max_attempts,
            base: config.retry_base_delay,
            cap: config.retry_max_delay,
            max_retry_wait: config.max_retry_wait,
        }
    }

    /// Full jitter: uniformly random between zero and `base * 2^(retry - 1)`, capped.
    fn backoff(&self, retry: u32) -> Duration {
        let exponential = self.base.saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let ceiling = exponential.min(self.cap).as_micros() as u64;
        Duration::from_micros(fastrand::u64(0..=ceiling))
    }

    /// Runs `attempt` until it succeeds, fails for good, runs out of attempts or budget, or
    /// another attempt would not fit before `deadline`. Returns the last outcome.
    pub async fn run<T, E, Fut>(
        &self,
        budget: &RetryBudget,
        deadline: Instant,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T, E>
    where
        E: Retryable,
        Fut: Future<Output = Result<T, E>>,
    {
        let upstream = budget.upstream;
        budget.budget.deposit();
        let mut made = 1;
        loop {
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let Some(advice) = error.retry_advice() else {
                return Err(error);
            };
            if made >= self.max_attempts {
                return Err(error);
            }
            if let Some(after) = advice.after.filter(|after| *after > self.max_retry_wait) {
                // The caller is told to wait instead, and the facade's place is freed now.
                tracing::debug!(
                    ?after,
                    "no retry: Retry-After is longer than the facade waits"
                );
                return Err(error);
            }
            let delay = advice.after.unwrap_or_else(|| self.backoff(made));
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < delay.saturating_add(MIN_ATTEMPT_TIME) {
                tracing::debug!(
                    ?delay,
                    ?remaining,
                    "no retry: it would not fit the deadline"
                );
                return Err(error);
            }
            if !budget.budget.withdraw() {
                tracing::debug!(upstream, "no retry: retry budget exhausted");
                return Err(error);
            }
            tracing::debug!(upstream, attempt = made + 1, ?delay, %error, "retrying");
            budget.retries.increment(1);
            tokio::time::sleep(delay).await;
            made += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_cap() {
        let policy = RetryPolicy::new(&ResilienceConfig {
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_millis(300),
            ..ResilienceConfig::default()
        });
        for _ in 0..200 {
            assert!(policy.backoff(1) <= Duration::from_millis(100));
            assert!(policy.backoff(2) <= Duration::from_millis(200));
            assert!(policy.backoff(9) <= Duration::from_millis(300));
            assert!(policy.backoff(40) <= Duration::from_millis(300));
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| policy.backoff(3)).collect();
        assert!(spread.len() > 10, "delays are not jittered");
    }

    /// A failure whose `Retry-After` is `after`.
    #[derive(Debug)]
    struct Throttled {
        after: Duration,
    }

    impl std::fmt::Display for Throttled {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "throttled for {:?}", self.after)
        }
    }

    impl Retryable for Throttled {
        fn retry_advice(&self) -> Option<RetryAdvice> {
            Some(RetryAdvice {
                after: Some(self.after),
            })
        }
    }

    /// How many attempts a call throttled with `after` makes under `max_retry_wait`, with
    /// a minute of deadline.
    async fn attempts_when_throttled(after: Duration, max_retry_wait: Duration) -> u32 {
        let config = ResilienceConfig {
            max_retry_wait,
            ..ResilienceConfig::default()
        };
        let policy = RetryPolicy::new(&config);
        let budget = RetryBudget::new(&config, "test", Counter::noop());
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut made = 0;
        let outcome: Result<(), Throttled> = policy
            .run(&budget, deadline, || {
                made += 1;
                async move { Err(Throttled { after }) }
            })
            .await;
        assert!(outcome.is_err());
        made
    }

    #[tokio::test]
    async fn retry_after_longer_than_the_longest_wait_is_not_waited() {
        let longest = Duration::from_millis(20);
        let beyond = longest + Duration::from_millis(1);
        assert_eq!(attempts_when_throttled(beyond, longest).await, 1);
        assert_eq!(
            attempts_when_throttled(Duration::from_secs(7), longest).await,
            1
        );
    }

    #[tokio::test]
    async fn retry_after_up_to_the_longest_wait_is_waited() {
        let longest = Duration::from_millis(20);
        let attempts = ResilienceConfig::default().max_attempts;
        assert_eq!(attempts_when_throttled(longest, longest).await, attempts);
        assert_eq!(
            attempts_when_throttled(Duration::ZERO, longest).await,
            attempts
        );
    }
}
