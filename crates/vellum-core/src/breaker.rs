//! A circuit breaker: stop calling a dependency that keeps failing, then probe it carefully.
//!
//! Scale-out API nodes put every event through Redis (and workers through PostgreSQL). When such
//! a dependency is down, each request would otherwise wait for its own connection timeout, pile
//! up, and turn one outage into exhausted sockets and memory. The breaker answers "don't even
//! try" for a while, so callers can answer 503 with `Retry-After` at once.
//!
//! States ([`BreakerState`]):
//!
//! * **Closed** — calls flow. Consecutive failures are counted; a success resets the count.
//!   Reaching `failure_threshold` consecutive failures opens the breaker.
//! * **Open** — calls are refused for `open_for`. [`CircuitBreaker::retry_after`] says how long
//!   is left, which is exactly what a `Retry-After` header needs.
//! * **Half-open** — `open_for` has passed. The next [`CircuitBreaker::allow`] admits exactly one
//!   probe; others are refused until it reports. Its success closes the breaker; its failure
//!   opens it again for another `open_for`. A probe that never reports (its caller was cancelled)
//!   is given up after `open_for`, and a new probe is admitted, so the breaker cannot get stuck.
//!
//! The breaker is plain data with no clock and no lock: every method takes the caller's `now`
//! (an [`Instant`]), which keeps this crate free of I/O and lets the tests step through time
//! without sleeping. Callers that share one breaker between tasks wrap it in a mutex; every
//! method is O(1), so the critical section is tiny.

use std::time::{Duration, Instant};

/// The externally visible state of a [`CircuitBreaker`] at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow normally; failures are being counted.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// The open period has ended; one probe call at a time decides whether to close again.
    HalfOpen,
}

impl BreakerState {
    /// A stable lowercase name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What the breaker remembers between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Counting consecutive failures.
    Closed { failures: u32 },
    /// Refusing calls until `until`.
    Open { until: Instant },
    /// Open period over; `probe_since` is when the probe in flight was admitted, if any.
    HalfOpen { probe_since: Option<Instant> },
}

/// A consecutive-failure circuit breaker with a single-probe half-open state.
///
/// See the [module documentation](self) for the state machine. Not thread-safe by itself on
/// purpose: wrap it in a mutex to share it.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    open_for: Duration,
    phase: Phase,
}

impl CircuitBreaker {
    /// A closed breaker that opens after `failure_threshold` consecutive failures and stays open
    /// for `open_for` before probing.
    ///
    /// A threshold of 0 is treated as 1: a breaker that opens without any failure would refuse
    /// every call forever.
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        CircuitBreaker {
            failure_threshold: failure_threshold.max(1),
            open_for,
            phase: Phase::Closed { failures: 0 },
        }
    }

    /// The configured number of consecutive failures that opens the breaker.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// The configured time the breaker stays open before admitting a probe.
    pub fn open_for(&self) -> Duration {
        self.open_for
    }

    /// Whether a call may be attempted now.
    ///
    /// Returns `true` while closed. While open, returns `false` until the open period has
    /// passed; the first call after that becomes the half-open probe (`true`) and every other
    /// call is refused until the probe reports through [`on_success`](Self::on_success) or
    /// [`on_failure`](Self::on_failure), or until the probe has been outstanding for `open_for`
    /// (its caller presumably gave up), when another probe is admitted.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.phase {
            Phase::Closed { .. } => true,
            Phase::Open { until } => {
                if now >= until {
                    self.phase = Phase::HalfOpen {
                        probe_since: Some(now),
                    };
                    true
                } else {
                    false
                }
            }
            Phase::HalfOpen { probe_since } => match probe_since {
                Some(since) if now.saturating_duration_since(since) < self.open_for => false,
                _ => {
                    self.phase = Phase::HalfOpen {
                        probe_since: Some(now),
                    };
                    true
                }
            },
        }
    }

    /// Record a successful call.
    ///
    /// Closed: resets the failure count. Half-open: the probe succeeded, so the breaker closes.
    /// Open: ignored — it is a late answer to a call admitted before the breaker opened, and one
    /// slow success says nothing about the failures that opened it.
    pub fn on_success(&mut self, now: Instant) {
        let _ = now;
        match self.phase {
            Phase::Closed { .. } | Phase::HalfOpen { .. } => {
                self.phase = Phase::Closed { failures: 0 };
            }
            Phase::Open { .. } => {}
        }
    }

    /// Record a failed call.
    ///
    /// Closed: counts it, and opens the breaker for `open_for` once the count reaches the
    /// threshold. Half-open: the probe failed, so the breaker opens again for `open_for` from
    /// `now`. Open: ignored — a late failure of a call admitted earlier must not extend the
    /// open period, or a burst of slow timeouts would keep the breaker open indefinitely.
    pub fn on_failure(&mut self, now: Instant) {
        match self.phase {
            Phase::Closed { failures } => {
                let failures = failures.saturating_add(1);
                self.phase = if failures >= self.failure_threshold {
                    Phase::Open {
                        until: now + self.open_for,
                    }
                } else {
                    Phase::Closed { failures }
                };
            }
            Phase::HalfOpen { .. } => {
                self.phase = Phase::Open {
                    until: now + self.open_for,
                };
            }
            Phase::Open { .. } => {}
        }
    }

    /// The state as seen at `now`, without changing anything.
    ///
    /// An open breaker whose open period has passed reports [`BreakerState::HalfOpen`]: the next
    /// [`allow`](Self::allow) will admit a probe. Suitable for metrics and readiness checks.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How long a refused caller should wait before trying again (`None` when calls are
    /// admitted now).
    ///
    /// Open: the rest of the open period. Half-open with a probe in flight: the time until that
    /// probe would be given up. Meant for the `Retry-After` header of a 503 (round it up to
    /// whole seconds there).
    pub fn retry_after(&self, now: Instant) -> Option<Duration> {
        match self.phase {
            Phase::Closed { .. } => None,
            Phase::Open { until } => {
                let left = until.saturating_duration_since(now);
                (!left.is_zero()).then_some(left)
            }
            Phase::HalfOpen { probe_since } => {
                let since = probe_since?;
                let left = self
                    .open_for
                    .saturating_sub(now.saturating_duration_since(since));
                (!left.is_zero()).then_some(left)
            }
        }
    }

    /// The number of consecutive failures counted while closed (0 in the other states).
    pub fn consecutive_failures(&self) -> u32 {
        match self.phase {
            Phase::Closed { failures } => failures,
            Phase::Open { .. } | Phase::HalfOpen { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Duration = Duration::from_secs(10);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A breaker with threshold 3, already opened at `t0`.
    fn opened(t0: Instant) -> CircuitBreaker {
        let mut b = CircuitBreaker::new(3, OPEN);
        for _ in 0..3 {
            assert!(b.allow(t0));
            b.on_failure(t0);
        }
        assert_eq!(b.state(t0), BreakerState::Open);
        b
    }

    #[test]
    fn starts_closed_and_allows() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, OPEN);
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert!(b.allow(t0));
        assert_eq!(b.retry_after(t0), None);
        assert_eq!(b.failure_threshold(), 3);
        assert_eq!(b.open_for(), OPEN);
    }

    #[test]
    fn closed_stays_closed_below_threshold() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, OPEN);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 2);
        assert!(b.allow(t0));
    }

    #[test]
    fn success_resets_the_consecutive_count() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, OPEN);
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success(t0);
        assert_eq!(b.consecutive_failures(), 0);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn closed_to_open_at_threshold() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        assert!(!b.allow(t0));
        assert!(!b.allow(t0 + secs(9)));
        assert_eq!(b.retry_after(t0), Some(OPEN));
        assert_eq!(b.retry_after(t0 + secs(4)), Some(secs(6)));
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn zero_threshold_means_one() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(0, OPEN);
        assert_eq!(b.failure_threshold(), 1);
        assert!(b.allow(t0));
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn open_ignores_late_results() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        // A slow call admitted before opening fails late: the open period is not extended.
        b.on_failure(t0 + secs(5));
        assert_eq!(b.retry_after(t0 + secs(5)), Some(secs(5)));
        // A slow call succeeds late: the breaker stays open.
        b.on_success(t0 + secs(6));
        assert_eq!(b.state(t0 + secs(6)), BreakerState::Open);
        assert!(!b.allow(t0 + secs(6)));
    }

    #[test]
    fn open_to_half_open_after_open_for() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + OPEN;
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.retry_after(t1), None);
        // The first caller is the probe; the others wait.
        assert!(b.allow(t1));
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(!b.allow(t1));
        assert!(!b.allow(t1 + secs(1)));
        assert_eq!(b.retry_after(t1 + secs(1)), Some(secs(9)));
    }

    #[test]
    fn half_open_probe_success_closes() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + OPEN;
        assert!(b.allow(t1));
        b.on_success(t1 + secs(1));
        assert_eq!(b.state(t1 + secs(1)), BreakerState::Closed);
        assert!(b.allow(t1 + secs(1)));
        assert!(b.allow(t1 + secs(1)));
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn half_open_probe_failure_reopens_from_now() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + OPEN;
        assert!(b.allow(t1));
        let t2 = t1 + secs(2);
        b.on_failure(t2);
        assert_eq!(b.state(t2), BreakerState::Open);
        assert!(!b.allow(t2 + secs(9)));
        assert_eq!(b.retry_after(t2), Some(OPEN));
        assert!(b.allow(t2 + OPEN));
    }

    #[test]
    fn lost_probe_is_replaced_after_open_for() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + OPEN;
        assert!(b.allow(t1));
        // The probe's caller was cancelled and never reports.
        assert!(!b.allow(t1 + secs(9)));
        assert!(b.allow(t1 + OPEN));
        assert!(!b.allow(t1 + OPEN));
        b.on_success(t1 + OPEN + secs(1));
        assert_eq!(b.state(t1 + OPEN + secs(1)), BreakerState::Closed);
    }

    #[test]
    fn late_results_after_open_period_do_not_skip_the_probe() {
        // Results of calls admitted while closed that arrive after the open period (but before
        // any probe) neither close nor re-open the breaker: only a probe decides.
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + OPEN + secs(1);
        b.on_success(t1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        b.on_failure(t1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(b.allow(t1));
        assert!(!b.allow(t1));
    }

    #[test]
    fn state_is_read_only() {
        let t0 = Instant::now();
        let b = opened(t0);
        let late = t0 + OPEN + secs(100);
        assert_eq!(b.state(late), BreakerState::HalfOpen);
        assert_eq!(b.state(late), BreakerState::HalfOpen);
        assert_eq!(b.clone().state(t0), BreakerState::Open);
    }

    #[test]
    fn state_names_are_stable() {
        assert_eq!(BreakerState::Closed.as_str(), "closed");
        assert_eq!(BreakerState::Open.as_str(), "open");
        assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
    }
}
