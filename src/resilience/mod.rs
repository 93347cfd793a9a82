//! Behaviour under slow, failing and overloaded upstreams: the knobs, the per-host circuit
//! breaker, the retry policy with its budget, and request coalescing.

pub mod breaker;
pub mod coalesce;
pub mod retry;

use std::time::Duration;

use clap::Args;

/// Resilience settings, each a flag with an environment fallback.
#[derive(Debug, Clone, Args)]
pub struct ResilienceConfig {
    /// Timeout of one upstream attempt; a caller's deadline can cut it shorter.
    #[arg(long, env = "MSSTORE_UPSTREAM_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// Overall budget of a call whose caller sets no deadline (token, attempts and backoff).
    #[arg(long, env = "MSSTORE_DEFAULT_DEADLINE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub default_deadline: Duration,

    /// Longest call budget a caller may ask for: a `grpc-timeout` above it is capped to it.
    #[arg(long, env = "MSSTORE_MAX_DEADLINE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_deadline: Duration,

    /// Longest upstream `Retry-After` the facade waits out itself before retrying; a longer one
    /// goes back to the caller at once, with that delay in RetryInfo.
    #[arg(long, env = "MSSTORE_MAX_RETRY_WAIT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub max_retry_wait: Duration,

    /// Most upstream attempts per call, the first included (1 = no retries).
    #[arg(long, env = "MSSTORE_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// First retry backoff; each retry doubles it, with full jitter.
    #[arg(long, env = "MSSTORE_RETRY_BASE_DELAY", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub retry_base_delay: Duration,

    /// Longest retry backoff.
    #[arg(long, env = "MSSTORE_RETRY_MAX_DELAY", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_max_delay: Duration,

    /// Retries allowed per upstream host, as a percentage of calls over the last 10 s.
    #[arg(long, env = "MSSTORE_RETRY_BUDGET_PERCENT", default_value_t = 20.0)]
    pub retry_budget_percent: f32,

    /// Retries per second per upstream host allowed on top of the percentage.
    #[arg(long, env = "MSSTORE_RETRY_BUDGET_MIN_PER_SEC", default_value_t = 5)]
    pub retry_budget_min_per_sec: u32,

    /// Consecutive failures of an upstream host (connect errors, attempt timeouts, lost
    /// connections, 502, 503, 504, 408; never a 500 or a 4xx) that open its circuit; 0 turns
    /// circuit breaking off.
    #[arg(long, env = "MSSTORE_CIRCUIT_FAILURES", default_value_t = 20)]
    pub circuit_failures: u32,

    /// How long an open circuit fails calls fast before one probe request is let through.
    #[arg(long, env = "MSSTORE_CIRCUIT_OPEN_FOR", default_value = "5s", value_parser = humantime::parse_duration)]
    pub circuit_open_for: Duration,

    /// Most Store calls handled at once; more are shed at once with UNAVAILABLE + RetryInfo.
    #[arg(long, env = "MSSTORE_MAX_CONCURRENT_CALLS", default_value_t = 1024)]
    pub max_concurrent_calls: usize,

    /// HTTP/2 streams one client connection may have open at once.
    #[arg(
        long,
        env = "MSSTORE_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 1024
    )]
    pub http2_max_concurrent_streams: u32,

    /// Interval of HTTP/2 keepalive pings to idle clients.
    #[arg(long, env = "MSSTORE_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = "MSSTORE_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Largest accepted request header list, in bytes.
    #[arg(long, env = "MSSTORE_MAX_HEADER_LIST_BYTES", default_value_t = 16 * 1024)]
    pub max_header_list_bytes: u32,

    /// Idle upstream connections kept per host.
    #[arg(long, env = "MSSTORE_UPSTREAM_MAX_IDLE_PER_HOST", default_value_t = 64)]
    pub upstream_max_idle_per_host: usize,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            upstream_timeout: Duration::from_secs(10),
            default_deadline: Duration::from_secs(30),
            max_deadline: Duration::from_secs(60),
            max_retry_wait: Duration::from_secs(2),
            max_attempts: 3,
            retry_base_delay: Duration::from_millis(50),
            retry_max_delay: Duration::from_secs(2),
            retry_budget_percent: 20.0,
            retry_budget_min_per_sec: 5,
            circuit_failures: 20,
            circuit_open_for: Duration::from_secs(5),
            max_concurrent_calls: 1024,
            http2_max_concurrent_streams: 1024,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            max_header_list_bytes: 16 * 1024,
            upstream_max_idle_per_host: 64,
        }
    }
}

impl ResilienceConfig {
    /// Checks the ranges clap cannot; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--upstream-timeout", self.upstream_timeout),
            ("--default-deadline", self.default_deadline),
            ("--max-deadline", self.max_deadline),
            ("--circuit-open-for", self.circuit_open_for),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{name} must be above 0"));
        }
        if self.max_attempts == 0 {
            return Err("--max-attempts must be at least 1".into());
        }
        if !(0.0..=1000.0).contains(&self.retry_budget_percent) {
            return Err("--retry-budget-percent must be between 0 and 1000".into());
        }
        if self.max_concurrent_calls == 0 || self.http2_max_concurrent_streams == 0 {
            return Err(
                "--max-concurrent-calls and --http2-max-concurrent-streams must be above 0".into(),
            );
        }
        if self.retry_base_delay > self.retry_max_delay {
            return Err("--retry-base-delay must not exceed --retry-max-delay".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_max_deadline_is_refused_naming_the_flag() {
        let config = ResilienceConfig {
            max_deadline: Duration::ZERO,
            ..ResilienceConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err, "--max-deadline must be above 0");
    }

    #[test]
    fn a_zero_max_retry_wait_is_allowed() {
        // Every Retry-After (but `0`) then goes back to the caller.
        let config = ResilienceConfig {
            max_retry_wait: Duration::ZERO,
            ..ResilienceConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }
}
