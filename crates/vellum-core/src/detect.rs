//! Detection rules (SPEC §8): pure logic that watches committed events and raises alerts.
//!
//! The caller (the server's detection thread) turns each committed event into an
//! [`ObservedEvent`] with [`ObservedEvent::from_stored`], feeds it to [`Engine::observe`] in log
//! order, calls [`Engine::tick`] every few seconds with the current time, appends every
//! [`Alert`] it gets back as an audit event ([`Alert::to_event`], action
//! `security.alert.<rule>`), and saves [`Engine::snapshot`] so that a restart keeps the windows.
//! Nothing here reads a clock, a file or spawns a thread: time comes in with the events and
//! with `tick`.
//!
//! ## The rules
//! | rule | raises when | key | severity |
//! | --- | --- | --- | --- |
//! | `failed_logins` | more than `threshold` events whose action matches `actions` within `windowSecs` | principal, else IP | high |
//! | `phi_volume` | more than `threshold` PHI events within `windowSecs` | principal, else IP | high |
//! | `off_hours` | a PHI event outside the working hours (local time at a fixed UTC offset) or on a non-working day | actor | medium |
//! | `new_location` | an IP or location not among the last `remember` seen, once the principal has `minHistory` events with one | principal | medium |
//! | `export_volume` | more than `threshold` records (`details.recordCount`, else 1) in events whose action matches `actions` within `windowSecs` | principal, else IP | high |
//! | `dlp` | a free-text string matching an extra pattern, or a value redacted inside free text | actor | high |
//! | `integrity` | any event whose action matches `actions` | actor | critical |
//! | `injection` | any event with injection signals (script, SQL) | actor | high |
//! | `break_glass` | `healthcareContext.emergencyAccess == true` | actor | high |
//! | `silent_source` | a source (organization or principal) with `minEvents` events sends nothing for longer than `clamp(silenceFactor × usual gap, minSilenceSecs, maxSilenceSecs)` | source | medium |
//!
//! "Actor" is the principal, else the IP address, else the organization, else one key for all.
//! After a rule alerts for a key it stays quiet for that key for `cooldownSecs` (an ongoing burst
//! is one alert, not one per event); `silent_source` alerts once per silence instead.
//!
//! ## Time
//! Windows are by event time (`timestamp`, clamped to at most
//! [`MAX_FUTURE_SKEW_SECS`] after `receivedAt`, so one event dated in the future cannot blind a
//! key's windows). Each key's window ends at the newest event time seen for that key; an event
//! that arrives late is counted when it still falls inside, and ignored otherwise. Silence is
//! measured on `receivedAt` (server time), against the `now` passed to [`Engine::tick`].
//!
//! ## Memory
//! Each rule holds at most `maxTrackedKeys` keys; a new key beyond that evicts the key that was
//! seen least recently. The index is an intrusive doubly linked list over a slab (see
//! `lru.rs`): touching a key, and evicting one, is O(1) with no allocation beyond the new key's
//! name. Per key a count window holds at most `threshold + 1` event times and ids, a sum window
//! at most [`SUM_BUCKETS`]` + 2` buckets and [`MAX_TRIGGERING_IDS`] ids, a location history
//! `remember` fingerprints of each kind.

mod alert;
mod config;
mod engine;
mod event;
mod lru;
mod state;
#[cfg(test)]
mod tests;

pub use alert::{Alert, RuleId};
pub use config::{
    BreakGlass, DetectionConfig, DetectionConfigError, Dlp, ExportVolume, FailedLogins, Injection,
    Integrity, NewLocation, OffHours, PhiVolume, SilentSource, SourceKey,
};
pub use engine::{Engine, EngineSnapshot, SNAPSHOT_VERSION};
pub use event::{MAX_FREE_TEXT_BYTES, MAX_FREE_TEXT_STRINGS, ObservedEvent};

/// Most event ids an alert carries (the most recent ones), so an alert event stays small
/// whatever the threshold.
pub const MAX_TRIGGERING_IDS: usize = 100;

/// How far after `receivedAt` an event's own `timestamp` is believed, in seconds. A later
/// timestamp is taken as `receivedAt` plus this: a client clock that runs ahead (or a forged
/// date) must not push a key's window into the future and hide the events that follow.
pub const MAX_FUTURE_SKEW_SECS: i64 = 60;

/// Buckets a sum window (`export_volume`) is divided into: events in one bucket share one
/// record, so memory per key is bounded whatever the event rate, and the window edge is exact
/// to within `windowSecs / SUM_BUCKETS` (a bucket leaves the window when its newest event does).
pub const SUM_BUCKETS: i64 = 256;
