//! Exponential backoff with full jitter, and the server's `Retry-After` respected.
//!
//! Full jitter (a uniform delay between zero and the exponential cap) spreads the retries of
//! many clients that failed together, so a server coming back from an outage is not met by a
//! synchronized wave; see "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015).

use std::time::Duration;

/// How a failed send is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all for `log` and `log_batch` (the first one included). Guaranteed
    /// delivery ignores it: spooled events are retried until they are delivered or refused.
    pub max_attempts: u32,
    /// Cap of the first retry's delay.
    pub initial_delay: Duration,
    /// Largest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The exponential cap before retry number `retry` (0-based): `initial * 2^retry`, at most
    /// `max_delay`.
    pub fn cap(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(30)).unwrap_or(u32::MAX);
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }

    /// The delay before retry number `retry`: uniform in `[0, cap]`, but never shorter than
    /// what the server asked for with `Retry-After` (itself bounded by `max_delay`, so a
    /// misconfigured proxy cannot park a client for a day).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let cap = self.cap(retry);
        let jittered = cap.mul_f64(fastrand::f64());
        match retry_after {
            Some(asked) => jittered.max(asked.min(self.max_delay)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_grow_exponentially_up_to_the_maximum() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let caps: Vec<u128> = (0..6).map(|r| policy.cap(r).as_millis()).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.cap(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn delays_are_jittered_within_the_cap_and_honour_retry_after() {
        let policy = RetryPolicy::default();
        let delays: Vec<Duration> = (0..200).map(|_| policy.delay(3, None)).collect();
        assert!(delays.iter().all(|d| *d <= policy.cap(3)));
        // Jitter: 200 draws are not all the same.
        assert!(delays.iter().any(|d| *d != delays[0]));
        let asked = Duration::from_secs(2);
        assert!((0..50).all(|_| policy.delay(0, Some(asked)) >= asked));
        // A Retry-After of a day is bounded by max_delay.
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(86_400))),
            policy.max_delay
        );
    }
}
