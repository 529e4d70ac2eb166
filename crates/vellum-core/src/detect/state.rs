//! Per-key rule state: count windows, sum windows, location histories, source rates and
//! cooldowns. Every type serializes as is into the engine snapshot.

use super::MAX_TRIGGERING_IDS;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;

/// An event id held in a window: 16 bytes for the usual lowercase hyphenated UUID (the
/// server's ids), the text otherwise. Windows hold many ids, so this halves their memory and
/// saves an allocation per counted event. Serialized as the id text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum EventRef {
    Uuid([u8; 16]),
    Text(Box<str>),
}

impl EventRef {
    pub(super) fn new(id: &str) -> Self {
        parse_canonical_uuid(id).map_or_else(|| Self::Text(id.into()), Self::Uuid)
    }

    pub(super) fn to_id(&self) -> String {
        match self {
            Self::Uuid(bytes) => format_uuid(bytes),
            Self::Text(text) => text.to_string(),
        }
    }
}

/// Where the hyphens of a hyphenated UUID are.
const UUID_HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// Where each byte's two hex digits start in a hyphenated UUID.
const UUID_DIGITS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/// Value of a lowercase hex digit, 0xFF for any other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// The bytes of a lowercase hyphenated UUID (`0190f5e2-0000-7000-8000-000000000000`); `None`
/// for any other text, so that [`format_uuid`] gives back exactly the same text. Hand-written
/// because it runs for every event (`silent_source` keeps each source's last id).
fn parse_canonical_uuid(text: &str) -> Option<[u8; 16]> {
    let b = text.as_bytes();
    if b.len() != 36 || UUID_HYPHENS.iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut invalid = 0u8;
    for (byte, &at) in out.iter_mut().zip(UUID_DIGITS.iter()) {
        let hi = HEX_VALUE[usize::from(b[at])];
        let lo = HEX_VALUE[usize::from(b[at + 1])];
        invalid |= (hi | lo) & 0xF0;
        *byte = (hi << 4) | (lo & 0x0F);
    }
    (invalid == 0).then_some(out)
}

fn format_uuid(bytes: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

impl Serialize for EventRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_id())
    }
}

impl<'de> Deserialize<'de> for EventRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Self::new(&text))
    }
}

/// The ids of `entries`, the most recent [`MAX_TRIGGERING_IDS`].
fn recent_ids<'a>(entries: impl DoubleEndedIterator<Item = &'a (i64, EventRef)>) -> Vec<String> {
    let mut ids: Vec<String> = entries
        .rev()
        .take(MAX_TRIGGERING_IDS)
        .map(|(_, id)| id.to_id())
        .collect();
    ids.reverse();
    ids
}

/// Whether a key that last alerted at `last_alert` is still quiet at `at`: within `cooldown`
/// of the alert on either side (a late event just before the alert belongs to the same burst;
/// one older than that is a separate incident).
fn cooling(last_alert: Option<i64>, at: i64, cooldown: i64) -> bool {
    last_alert.is_some_and(|a| at > a.saturating_sub(cooldown) && at < a.saturating_add(cooldown))
}

/// The alert time to remember: the newest of the previous one and `at`.
fn latest(last_alert: Option<i64>, at: i64) -> Option<i64> {
    Some(last_alert.map_or(at, |a| a.max(at)))
}

/// Event times (and ids) of one key within a sliding window, sorted by time, at most
/// `threshold + 1` of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CountWindow {
    events: VecDeque<(i64, EventRef)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_alert: Option<i64>,
}

/// What a window reports when it alerts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Burst {
    pub(super) count: u64,
    pub(super) start: i64,
    pub(super) end: i64,
    pub(super) ids: Vec<String>,
}

impl CountWindow {
    /// Adds an event at `at`; the window is `(newest - window, newest]` where `newest` is the
    /// newest event time of this key. Returns the burst when the window now holds more than
    /// `threshold` events and the key is not cooling down (the alert is then recorded).
    pub(super) fn add(
        &mut self,
        at: i64,
        id: &str,
        window: i64,
        threshold: u64,
        cooldown: i64,
    ) -> Option<Burst> {
        let newest = self.events.back().map_or(at, |(t, _)| (*t).max(at));
        let cutoff = newest.saturating_sub(window);
        if at <= cutoff {
            // Arrived too late to be in this key's window.
            return None;
        }
        let pos = self.events.partition_point(|(t, _)| *t <= at);
        self.events.insert(pos, (at, EventRef::new(id)));
        while self.events.front().is_some_and(|(t, _)| *t <= cutoff) {
            self.events.pop_front();
        }
        self.trim(threshold);
        let count = self.events.len() as u64;
        if count <= threshold || cooling(self.last_alert, newest, cooldown) {
            return None;
        }
        self.last_alert = latest(self.last_alert, newest);
        Some(Burst {
            count,
            start: self.events.front().map_or(at, |(t, _)| *t),
            end: newest,
            ids: recent_ids(self.events.iter()),
        })
    }

    /// Keeps the newest `threshold + 1` events (all a window needs to know it is exceeded).
    pub(super) fn trim(&mut self, threshold: u64) {
        let keep = usize::try_from(threshold.saturating_add(1)).unwrap_or(usize::MAX);
        while self.events.len() > keep {
            self.events.pop_front();
        }
    }
}

/// One bucket of a sum window: events of one `window / SUM_BUCKETS` slot of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bucket {
    first: i64,
    last: i64,
    records: u64,
}

/// Records (summed) of one key within a sliding window, in time buckets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SumWindow {
    buckets: VecDeque<Bucket>,
    total: u64,
    /// The most recent ids in the window, sorted by time.
    ids: VecDeque<(i64, EventRef)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_alert: Option<i64>,
}

/// Most buckets a sum window keeps (more only after a restore with a shorter window; the
/// oldest are merged).
const MAX_BUCKETS: usize = super::SUM_BUCKETS as usize + 2;

impl SumWindow {
    /// Adds `records` at `at`. Returns the burst (its `count` is the record total) when the
    /// window now holds more than `threshold` records and the key is not cooling down.
    pub(super) fn add(
        &mut self,
        at: i64,
        records: u64,
        id: &str,
        window: i64,
        threshold: u64,
        cooldown: i64,
    ) -> Option<Burst> {
        let newest = self.buckets.back().map_or(at, |b| b.last.max(at));
        let cutoff = newest.saturating_sub(window);
        if at <= cutoff {
            return None;
        }
        let width = (window / super::SUM_BUCKETS).max(1);
        let slot = at.div_euclid(width);
        let pos = self
            .buckets
            .partition_point(|b| b.first.div_euclid(width) < slot);
        match self.buckets.get_mut(pos) {
            Some(b) if b.first.div_euclid(width) == slot => {
                b.first = b.first.min(at);
                b.last = b.last.max(at);
                b.records = b.records.saturating_add(records);
            }
            _ => self.buckets.insert(
                pos,
                Bucket {
                    first: at,
                    last: at,
                    records,
                },
            ),
        }
        self.total = self.total.saturating_add(records);
        let pos = self.ids.partition_point(|(t, _)| *t <= at);
        self.ids.insert(pos, (at, EventRef::new(id)));
        self.expire(cutoff);
        while self.ids.len() > MAX_TRIGGERING_IDS {
            self.ids.pop_front();
        }
        while self.buckets.len() > MAX_BUCKETS {
            // Only after a restore with a different window: merge the two oldest.
            if let Some(oldest) = self.buckets.pop_front()
                && let Some(next) = self.buckets.front_mut()
            {
                next.first = next.first.min(oldest.first);
                next.records = next.records.saturating_add(oldest.records);
            }
        }
        if self.total <= threshold || cooling(self.last_alert, newest, cooldown) {
            return None;
        }
        self.last_alert = latest(self.last_alert, newest);
        Some(Burst {
            count: self.total,
            start: self.buckets.front().map_or(at, |b| b.first),
            end: newest,
            ids: recent_ids(self.ids.iter()),
        })
    }

    /// Drops buckets whose newest event is at or before `cutoff`.
    fn expire(&mut self, cutoff: i64) {
        while let Some(front) = self.buckets.front().copied() {
            if front.last > cutoff {
                break;
            }
            self.total = self.total.saturating_sub(front.records);
            self.buckets.pop_front();
        }
        while self.ids.front().is_some_and(|(t, _)| *t <= cutoff) {
            self.ids.pop_front();
        }
        if self.buckets.is_empty() {
            self.total = 0;
        }
    }
}

/// Recently used addresses and locations of one principal, as 64-bit fingerprints (FNV-1a of
/// the lowercased text): the snapshot then names no address, and a history costs 8 bytes per
/// entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Locations {
    /// Located events seen.
    history: u64,
    /// Distinct addresses, least recently used first.
    ips: VecDeque<u64>,
    /// Distinct locations, least recently used first.
    places: VecDeque<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_alert: Option<i64>,
}

/// What [`Locations::add`] found new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Novelty {
    pub(super) new_ip: bool,
    pub(super) new_place: bool,
    /// Located events before this one.
    pub(super) history: u64,
}

impl Locations {
    /// Records a located event; returns what was new when the history was long enough, the
    /// key is not cooling down and something was new (the alert is then recorded).
    pub(super) fn add(
        &mut self,
        at: i64,
        ip: Option<&str>,
        place: Option<&str>,
        min_history: u64,
        remember: usize,
        cooldown: i64,
    ) -> Option<Novelty> {
        let history = self.history;
        let new_ip = ip.is_some_and(|ip| remember_value(&mut self.ips, fingerprint(ip), remember));
        let new_place =
            place.is_some_and(|p| remember_value(&mut self.places, fingerprint(p), remember));
        self.history = self.history.saturating_add(1);
        if history < min_history || !(new_ip || new_place) || cooling(self.last_alert, at, cooldown)
        {
            return None;
        }
        self.last_alert = latest(self.last_alert, at);
        Some(Novelty {
            new_ip,
            new_place,
            history,
        })
    }

    /// Keeps the `remember` most recent of each kind.
    pub(super) fn trim(&mut self, remember: usize) {
        while self.ips.len() > remember {
            self.ips.pop_front();
        }
        while self.places.len() > remember {
            self.places.pop_front();
        }
    }
}

/// Moves `value` to the most recent end of `list` (adding it when absent, forgetting the least
/// recent beyond `remember`); returns whether it was absent.
fn remember_value(list: &mut VecDeque<u64>, value: u64, remember: usize) -> bool {
    if list.back() == Some(&value) {
        // The usual case: the same address as last time.
        return false;
    }
    let absent = match list.iter().position(|v| *v == value) {
        Some(at) => {
            list.remove(at);
            false
        }
        None => true,
    };
    list.push_back(value);
    while list.len() > remember.max(1) {
        list.pop_front();
    }
    absent
}

/// FNV-1a 64 of the trimmed, ASCII-lowercased text: stable across runs (the snapshot keeps
/// it), cheap, and enough to tell a principal's few dozen addresses apart.
fn fingerprint(text: &str) -> u64 {
    text.trim().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Arrivals of one source, for `silent_source`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Source {
    pub(super) events: u64,
    /// Start of the current burst of arrivals.
    burst_start: i64,
    /// Newest arrival.
    pub(super) last_arrival: i64,
    /// Exponentially weighted mean of the gaps between burst starts, µs.
    pub(super) mean_gap: i64,
    /// Gaps measured.
    pub(super) gaps: u64,
    /// The newest event's id.
    pub(super) last_id: EventRef,
    /// Whether the current silence has been alerted.
    pub(super) alerted: bool,
}

/// Arrivals within this long of a burst's start belong to the burst.
const BURST_MICROS: i64 = 1_000_000;

/// Weight of a new gap in the mean: 1/8.
const GAP_WEIGHT_SHIFT: u32 = 3;

impl Source {
    pub(super) fn new(at: i64, id: &str) -> Self {
        Self {
            events: 0,
            burst_start: at,
            last_arrival: at,
            mean_gap: 0,
            gaps: 0,
            last_id: EventRef::new(id),
            alerted: false,
        }
    }

    /// Records an arrival at `at` (server time).
    pub(super) fn arrive(&mut self, at: i64, id: &str) {
        if self.events > 0 && at > self.burst_start.saturating_add(BURST_MICROS) {
            let gap = at.saturating_sub(self.burst_start);
            self.mean_gap = if self.gaps == 0 {
                gap
            } else {
                self.mean_gap
                    .saturating_add(gap.saturating_sub(self.mean_gap) >> GAP_WEIGHT_SHIFT)
            };
            self.gaps = self.gaps.saturating_add(1);
            self.burst_start = at;
        }
        self.events = self.events.saturating_add(1);
        if at >= self.last_arrival {
            self.last_arrival = at;
            self.last_id = EventRef::new(id);
        }
        self.alerted = false;
    }
}

/// When a per-event rule last alerted for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Cooldown {
    pub(super) last_alert: i64,
}

impl Cooldown {
    pub(super) fn cooling(&self, at: i64, cooldown: i64) -> bool {
        cooling(Some(self.last_alert), at, cooldown)
    }

    /// Records an alert at `at`.
    pub(super) fn record(&mut self, at: i64) {
        self.last_alert = self.last_alert.max(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_refs_round_trip() {
        for id in [
            "0190f5e2-0000-7000-8000-000000000000",
            "0190F5E2-0000-7000-8000-000000000000",
            "0190f5e200007000800000000000000a",
            "0190f5e2-0000-7000-8000-00000000000g",
            "0190f5e2-0000-7000-8000+000000000000",
            "e-1",
            "",
            "ффффффффффффффффff",
        ] {
            assert_eq!(EventRef::new(id).to_id(), id);
        }
        for i in 0..100 {
            let at = uuid::Timestamp::from_unix(uuid::NoContext, 1_795_392_000 + i, 0);
            let id = uuid::Uuid::new_v7(at).hyphenated().to_string();
            assert!(matches!(EventRef::new(&id), EventRef::Uuid(_)));
            assert_eq!(EventRef::new(&id).to_id(), id);
        }
        assert!(matches!(
            EventRef::new("0190f5e2-0000-7000-8000-000000000000"),
            EventRef::Uuid(_)
        ));
        assert!(std::mem::size_of::<EventRef>() <= 24);
    }

    #[test]
    fn count_window_tolerates_late_and_extreme_times() {
        let mut w = CountWindow::default();
        assert!(w.add(i64::MAX, "a", i64::MAX, 5, i64::MAX).is_none());
        assert!(w.add(i64::MIN, "b", i64::MAX, 5, i64::MAX).is_none());
        let mut w = CountWindow::default();
        for (i, t) in [10, 5, 7, 1, 9].into_iter().enumerate() {
            assert!(w.add(t, &format!("e{i}"), 100, 5, 0).is_none());
        }
        let burst = w.add(3, "e5", 100, 5, 0).expect("sixth event");
        assert_eq!((burst.start, burst.end, burst.count), (1, 10, 6));
        assert_eq!(burst.ids, ["e3", "e5", "e1", "e2", "e4", "e0"]);
    }

    #[test]
    fn sum_window_expires_whole_buckets_by_their_newest_event() {
        let mut w = SumWindow::default();
        assert!(w.add(0, 6_000, "a", 1_000_000, 10_000, 0).is_none());
        assert!(w.add(1_000_001, 6_000, "b", 1_000_000, 10_000, 0).is_none());
        assert_eq!(w.total, 6_000);
        let burst = w
            .add(1_500_000, 4_001, "c", 1_000_000, 10_000, 0)
            .expect("over");
        assert_eq!(burst.count, 10_001);
        assert_eq!(burst.ids, ["b", "c"]);
        // Many events: the buckets stay bounded.
        let mut w = SumWindow::default();
        for i in 0..10_000 {
            w.add(i * 97, 1, &format!("e{i}"), 1_000_000, u64::MAX, 0);
        }
        assert!(w.buckets.len() <= MAX_BUCKETS, "{}", w.buckets.len());
        assert_eq!(w.ids.len(), MAX_TRIGGERING_IDS);
    }

    #[test]
    fn source_gaps_are_between_bursts() {
        let mut s = Source::new(0, "a");
        for hour in 0..5i64 {
            for i in 0..100 {
                s.arrive(hour * 3_600_000_000 + i * 1_000, "x");
            }
        }
        assert_eq!(s.events, 500);
        assert_eq!(s.gaps, 4);
        assert_eq!(s.mean_gap, 3_600_000_000);
    }
}
