//! Fine Grained Rate Limiting (store-services-apis.md 1.4): the Store's service-to-service
//! limit of [`RATE_LIMIT_OPERATIONS`] operations per [`RATE_LIMIT_WINDOW_SECONDS`] for each
//! `{userId; publisherId}`, sustained, no burst allowance. The emulator counts the operations
//! of each key `userId` and `clientId` claim pair in a sliding window on its own clock; a
//! refused operation does not count.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::http::HeaderMap;
use axum::response::Response;

use super::store_answer;

/// Operations allowed per user and publisher in one window.
pub const RATE_LIMIT_OPERATIONS: usize = 200;
/// The window, in seconds.
pub const RATE_LIMIT_WINDOW_SECONDS: i64 = 300;
/// Past this many tracked pairs, pairs with nothing in their window are forgotten.
const SWEEP_ABOVE: usize = 4096;

/// The text of a throttled answer, as GDK26 documents it.
pub(super) fn message() -> String {
    format!(
        "The rate limit of {RATE_LIMIT_OPERATIONS} operations in {RATE_LIMIT_WINDOW_SECONDS} seconds has been exceeded for aspect {{userId; publisherId}}."
    )
}

/// The 429 answer, with `Retry-After` in seconds.
pub(super) fn throttled(request: &HeaderMap, retry_after_seconds: u64) -> Response {
    store_answer::throttled(request, retry_after_seconds, &message())
}

/// The operations of each user and publisher in the current window.
#[derive(Debug, Default)]
pub(super) struct RateLimiter {
    /// When each counted operation happened, oldest first, per (userId, publisher).
    windows: Mutex<HashMap<(String, String), VecDeque<i64>>>,
}

impl RateLimiter {
    /// Counts one operation of `user` for `publisher` at `now` (seconds), or refuses it with
    /// the seconds until the window has room again.
    pub(super) fn admit(&self, user: &str, publisher: &str, now: i64) -> Result<(), u64> {
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.len() > SWEEP_ABOVE {
            windows.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now - t < RATE_LIMIT_WINDOW_SECONDS)
            });
        }
        let times = windows
            .entry((user.to_owned(), publisher.to_owned()))
            .or_default();
        while times
            .front()
            .is_some_and(|t| now - t >= RATE_LIMIT_WINDOW_SECONDS)
        {
            times.pop_front();
        }
        if times.len() < RATE_LIMIT_OPERATIONS {
            times.push_back(now);
            return Ok(());
        }
        let oldest = times.front().copied().unwrap_or(now);
        let wait = (oldest + RATE_LIMIT_WINDOW_SECONDS - now).max(1);
        Err(u64::try_from(wait).unwrap_or(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_201st_operation_in_a_window_waits_for_the_oldest_to_leave_it() {
        let limiter = RateLimiter::default();
        for i in 0..RATE_LIMIT_OPERATIONS {
            let at = 1000 + i64::try_from(i).unwrap() / 10;
            assert_eq!(limiter.admit("u", "p", at), Ok(()));
        }
        assert_eq!(limiter.admit("u", "p", 1030), Err(270));
        assert_eq!(limiter.admit("v", "p", 1030), Ok(()), "another user");
        assert_eq!(limiter.admit("u", "q", 1030), Ok(()), "another publisher");
        assert_eq!(limiter.admit("u", "p", 1299), Err(1));
        assert_eq!(limiter.admit("u", "p", 1300), Ok(()));
    }

    #[test]
    fn the_message_is_the_documented_text() {
        assert_eq!(
            message(),
            "The rate limit of 200 operations in 300 seconds has been exceeded for aspect {userId; publisherId}."
        );
    }
}
