//! The client's circuit breaker: [`vellum_core::breaker::CircuitBreaker`] behind a mutex, with
//! its state published so an application can watch it (a health check, a metric, a log line).

use parking_lot::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;
pub use vellum_core::breaker::BreakerState;

/// Settings of the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed sends (network errors, 5xx) that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before one probe is let through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

/// A shared breaker whose state changes are broadcast.
#[derive(Debug)]
pub(crate) struct Breaker {
    inner: Mutex<vellum_core::breaker::CircuitBreaker>,
    state: watch::Sender<BreakerState>,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            inner: Mutex::new(vellum_core::breaker::CircuitBreaker::new(
                config.failure_threshold.max(1),
                config.open_for,
            )),
            state: watch::channel(BreakerState::Closed).0,
        }
    }

    fn publish(&self, breaker: &vellum_core::breaker::CircuitBreaker, now: Instant) {
        let state = breaker.state(now);
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    /// Whether a send may go out now; `Err(wait)` says how long until one may.
    pub(crate) fn admit(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut breaker = self.inner.lock();
        let allowed = breaker.allow(now);
        let wait = breaker.retry_after(now);
        self.publish(&breaker, now);
        if allowed {
            Ok(())
        } else {
            Err(wait.unwrap_or(Duration::from_millis(50)))
        }
    }

    pub(crate) fn success(&self) {
        let now = Instant::now();
        let mut breaker = self.inner.lock();
        breaker.on_success(now);
        self.publish(&breaker, now);
    }

    pub(crate) fn failure(&self) {
        let now = Instant::now();
        let mut breaker = self.inner.lock();
        breaker.on_failure(now);
        self.publish(&breaker, now);
    }

    /// The state now (an open breaker whose period has passed reads half-open).
    pub(crate) fn state(&self) -> BreakerState {
        let now = Instant::now();
        let breaker = self.inner.lock();
        self.publish(&breaker, now);
        breaker.state(now)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.state.subscribe()
    }
}
