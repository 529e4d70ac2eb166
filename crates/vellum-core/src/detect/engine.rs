//! The [`Engine`]: runs every enabled rule on each observed event and on each tick, and
//! snapshots its state.

use super::alert::{ALERT_ACTION_PREFIX, Alert, RuleId, human_micros, human_secs};
use super::config::{
    DAY_NAMES, DetectionConfig, Glob, SourceKey, WorkingHours, compile_dlp, format_offset, hhmm,
    secs_to_micros,
};
use super::event::ObservedEvent;
use super::lru::KeyedLru;
use super::state::{Burst, Cooldown, CountWindow, Locations, Source, SumWindow};
use super::{MAX_FUTURE_SKEW_SECS, MAX_TRIGGERING_IDS};
use crate::redact::{MASK, TOKEN_PREFIX};
use regex::RegexSet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The snapshot format this engine writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Most DLP findings listed in one alert.
const MAX_DLP_FINDINGS: usize = 20;

/// Prefix of a rule key made from an IP address (no principal). Stored text never holds C0
/// control characters (sanitization removes them), so such a key cannot collide with a
/// principal's.
const IP_KEY: char = '\u{1}';

/// Prefix of a rule key made from an organization (no principal, no address).
const ORG_KEY: char = '\u{2}';

/// The detection rules with their state. One engine serves every log; feed it each log's
/// events in `seq` order.
#[derive(Debug)]
pub struct Engine {
    config: DetectionConfig,
    rules: Compiled,
    positions: BTreeMap<String, u64>,
    failed_logins: KeyedLru<CountWindow>,
    phi_volume: KeyedLru<CountWindow>,
    export_volume: KeyedLru<SumWindow>,
    new_location: KeyedLru<Locations>,
    silent_source: KeyedLru<Source>,
    off_hours: KeyedLru<Cooldown>,
    dlp: KeyedLru<Cooldown>,
    integrity: KeyedLru<Cooldown>,
    injection: KeyedLru<Cooldown>,
    break_glass: KeyedLru<Cooldown>,
    /// Silence is measured from no earlier than this (set at the first tick after a restore:
    /// while the server was down no source could send, and that is not their silence).
    silence_floor: Option<i64>,
    /// Whether the next tick sets `silence_floor`.
    resumed: bool,
}

/// The configuration in the form the rules run it.
#[derive(Debug)]
struct Compiled {
    failed_actions: Vec<Glob>,
    failed_window: i64,
    phi_window: i64,
    hours: Option<WorkingHours>,
    export_actions: Vec<Glob>,
    export_window: i64,
    dlp: Option<RegexSet>,
    integrity_actions: Vec<Glob>,
    cooldown: i64,
    silent_min: i64,
    silent_max: i64,
}

impl Compiled {
    fn new(config: &DetectionConfig) -> Self {
        Self {
            failed_actions: Glob::compile_all(&config.failed_logins.actions),
            failed_window: secs_to_micros(config.failed_logins.window_secs),
            phi_window: secs_to_micros(config.phi_volume.window_secs),
            hours: WorkingHours::compile(&config.off_hours).ok(),
            export_actions: Glob::compile_all(&config.export_volume.actions),
            export_window: secs_to_micros(config.export_volume.window_secs),
            dlp: compile_dlp(&config.dlp.patterns).ok().flatten(),
            integrity_actions: Glob::compile_all(&config.integrity.actions),
            cooldown: secs_to_micros(config.cooldown_secs),
            silent_min: secs_to_micros(config.silent_source.min_silence_secs),
            silent_max: secs_to_micros(config.silent_source.max_silence_secs),
        }
    }
}

/// A rule that counts matching events per key over a sliding window (`failed_logins`,
/// `phi_volume`) and alerts past a threshold.
struct CountRule {
    rule: RuleId,
    threshold: u64,
    window_secs: u64,
    window_micros: i64,
    cooldown: i64,
}

impl CountRule {
    /// Counts `event` for its key in `windows`; the alert when the window passes the
    /// threshold (outside the key's cooldown). `describe(count, who, window)` words it.
    fn count(
        &self,
        windows: &mut KeyedLru<CountWindow>,
        event: &ObservedEvent,
        at: i64,
        describe: impl FnOnce(u64, &str, String) -> String,
    ) -> Option<Alert> {
        let key = window_key(event)?;
        let burst = windows.touch(&key, CountWindow::default).add(
            at,
            &event.id,
            self.window_micros,
            self.threshold,
            self.cooldown,
        )?;
        let description = describe(burst.count, &who(event), human_secs(self.window_secs));
        Some(window_alert(
            self.rule,
            event,
            burst,
            self.threshold,
            self.window_secs,
            description,
        ))
    }
}

/// The engine's state, serializable, so that a restart keeps windows, known locations, source
/// rates and cooldowns. Opaque but for its version and the per-log positions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineSnapshot {
    /// Format version ([`SNAPSHOT_VERSION`]); a snapshot of another version restores the
    /// positions only.
    pub version: u32,
    /// Per log, the last `seq` observed: the caller replays from the event after it.
    pub positions: BTreeMap<String, u64>,
    #[serde(default)]
    pub(super) failed_logins: Vec<(String, CountWindow)>,
    #[serde(default)]
    pub(super) phi_volume: Vec<(String, CountWindow)>,
    #[serde(default)]
    pub(super) export_volume: Vec<(String, SumWindow)>,
    #[serde(default)]
    pub(super) new_location: Vec<(String, Locations)>,
    #[serde(default)]
    pub(super) silent_source: Vec<(String, Source)>,
    /// What `silent_source` keys were (sources are dropped when the key kind changes).
    #[serde(default)]
    pub(super) silent_source_key: SourceKey,
    /// Per-event rules: key → time of the last alert.
    #[serde(default)]
    pub(super) cooldowns: BTreeMap<RuleId, Vec<(String, Cooldown)>>,
}

impl Engine {
    /// An engine with empty state. `config` should have passed [`DetectionConfig::validate`];
    /// a setting that does not compile turns its rule off rather than panicking.
    pub fn new(config: DetectionConfig) -> Self {
        let cap = config.max_tracked_keys;
        Self {
            rules: Compiled::new(&config),
            config,
            positions: BTreeMap::new(),
            failed_logins: KeyedLru::new(cap),
            phi_volume: KeyedLru::new(cap),
            export_volume: KeyedLru::new(cap),
            new_location: KeyedLru::new(cap),
            silent_source: KeyedLru::new(cap),
            off_hours: KeyedLru::new(cap),
            dlp: KeyedLru::new(cap),
            integrity: KeyedLru::new(cap),
            injection: KeyedLru::new(cap),
            break_glass: KeyedLru::new(cap),
            silence_floor: None,
            resumed: false,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &DetectionConfig {
        &self.config
    }

    /// Runs every enabled rule on one committed event and returns the alerts it raises.
    ///
    /// Idempotent per log: an event whose `seq` is at or below the last one observed in its
    /// log changes nothing and raises nothing (the caller replays from the store after a
    /// restart and may overlap). Alert events (`security.alert.*`) advance the position but are
    /// otherwise ignored. Events may arrive slightly out of time order (several logs): windows
    /// are by event time and take a late event in if it still falls inside.
    pub fn observe(&mut self, event: &ObservedEvent) -> Vec<Alert> {
        match self.positions.get_mut(event.log_id.as_str()) {
            Some(position) if event.seq <= *position => return Vec::new(),
            Some(position) => *position = event.seq,
            None => {
                self.positions.insert(event.log_id.clone(), event.seq);
            }
        }
        if !self.config.enabled || event.action.starts_with(ALERT_ACTION_PREFIX) {
            return Vec::new();
        }
        let at = event_time(event);
        let mut alerts = Vec::new();
        self.failed_logins(event, at, &mut alerts);
        self.phi_volume(event, at, &mut alerts);
        self.off_hours(event, at, &mut alerts);
        self.new_location(event, at, &mut alerts);
        self.export_volume(event, at, &mut alerts);
        self.dlp(event, at, &mut alerts);
        self.integrity(event, at, &mut alerts);
        self.injection(event, at, &mut alerts);
        self.break_glass(event, at, &mut alerts);
        self.note_arrival(event);
        alerts
    }

    /// Runs the time-driven rule (`silent_source`) at `now_micros` (Unix µs, server time); call
    /// it every few seconds. A silence raises one alert; the source must send again before it
    /// can raise another.
    pub fn tick(&mut self, now_micros: i64) -> Vec<Alert> {
        if self.resumed {
            self.silence_floor = Some(now_micros);
            self.resumed = false;
        }
        let config = &self.config.silent_source;
        if !self.config.enabled || !config.enabled {
            return Vec::new();
        }
        let (factor, min_events, key_kind) = (config.silence_factor, config.min_events, config.key);
        let (floor, min, max) = (
            self.silence_floor.unwrap_or(i64::MIN),
            self.rules.silent_min,
            self.rules.silent_max,
        );
        let mut alerts = Vec::new();
        self.silent_source.for_each_mut(|key, source| {
            if source.alerted || source.events < min_events || source.gaps == 0 {
                return;
            }
            // `as` saturates for floats; the clamp bounds it anyway.
            let limit = ((source.mean_gap as f64) * factor) as i64;
            // Not `clamp`: it panics when min > max (an unvalidated configuration).
            let limit = limit.max(min).min(max);
            let since = source.last_arrival.max(floor);
            let silent = now_micros.saturating_sub(since);
            if silent <= limit {
                return;
            }
            source.alerted = true;
            let (principal_id, organization_id, noun) = match key_kind {
                SourceKey::OrganizationId => (None, Some(key.to_owned()), "organization"),
                SourceKey::PrincipalId => (Some(key.to_owned()), None, "principal"),
            };
            let mut details = Map::new();
            details.insert("source".into(), json!(key));
            details.insert("sourceKey".into(), json!(key_kind.as_str()));
            details.insert("events".into(), json!(source.events));
            details.insert("silentSecs".into(), json!(silent / 1_000_000));
            details.insert("limitSecs".into(), json!(limit / 1_000_000));
            details.insert("usualGapSecs".into(), json!(source.mean_gap / 1_000_000));
            alerts.push(Alert {
                rule: RuleId::SilentSource,
                severity: RuleId::SilentSource.severity(),
                principal_id,
                organization_id,
                description: format!(
                    "no events from {noun} {key} for {} (usually one burst every {}; limit {})",
                    human_micros(silent),
                    human_micros(source.mean_gap),
                    human_micros(limit),
                ),
                triggering_event_ids: vec![source.last_id.to_id()],
                window_start_micros: source.last_arrival,
                window_end_micros: now_micros,
                details,
                at_micros: now_micros,
            });
        });
        alerts
    }

    /// The state to save; [`Engine::restore`] takes it back.
    pub fn snapshot(&self) -> EngineSnapshot {
        fn entries<V: Clone>(map: &KeyedLru<V>) -> Vec<(String, V)> {
            map.iter().map(|(k, v)| (k.to_owned(), v.clone())).collect()
        }
        let mut cooldowns = BTreeMap::new();
        for (rule, map) in self.cooldown_maps() {
            if map.len() > 0 {
                cooldowns.insert(rule, entries(map));
            }
        }
        EngineSnapshot {
            version: SNAPSHOT_VERSION,
            positions: self.positions.clone(),
            failed_logins: entries(&self.failed_logins),
            phi_volume: entries(&self.phi_volume),
            export_volume: entries(&self.export_volume),
            new_location: entries(&self.new_location),
            silent_source: entries(&self.silent_source),
            silent_source_key: self.config.silent_source.key,
            cooldowns,
        }
    }

    /// An engine with `config` and the state of `snapshot`, keeping what still applies: state
    /// of rules now disabled is dropped, windows are cut to the new thresholds (and slide by
    /// the new window lengths from the next event on), location histories to the new
    /// `remember`, sources are dropped if the source key changed, and each rule keeps its most
    /// recently seen `maxTrackedKeys` keys. Positions are always kept. The first
    /// [`Engine::tick`] after a restore starts the silence clocks afresh (no source could send
    /// while the server was down).
    pub fn restore(config: DetectionConfig, snapshot: EngineSnapshot) -> Self {
        let mut engine = Self::new(config);
        engine.positions = snapshot.positions;
        engine.resumed = true;
        if snapshot.version != SNAPSHOT_VERSION {
            return engine;
        }
        let c = &engine.config;
        if c.failed_logins.enabled {
            let threshold = c.failed_logins.threshold;
            for (key, mut window) in snapshot.failed_logins {
                window.trim(threshold);
                *engine.failed_logins.touch(&key, CountWindow::default) = window;
            }
        }
        if c.phi_volume.enabled {
            let threshold = c.phi_volume.threshold;
            for (key, mut window) in snapshot.phi_volume {
                window.trim(threshold);
                *engine.phi_volume.touch(&key, CountWindow::default) = window;
            }
        }
        if c.export_volume.enabled {
            for (key, window) in snapshot.export_volume {
                *engine.export_volume.touch(&key, SumWindow::default) = window;
            }
        }
        if c.new_location.enabled {
            let remember = c.new_location.remember;
            for (key, mut locations) in snapshot.new_location {
                locations.trim(remember);
                *engine.new_location.touch(&key, Locations::default) = locations;
            }
        }
        if c.silent_source.enabled && snapshot.silent_source_key == c.silent_source.key {
            for (key, source) in snapshot.silent_source {
                let at = source.last_arrival;
                *engine.silent_source.touch(&key, || Source::new(at, "")) = source;
            }
        }
        for (rule, entries) in snapshot.cooldowns {
            if !engine.rule_enabled(rule) {
                continue;
            }
            if let Some(map) = engine.cooldown_map_mut(rule) {
                for (key, cooldown) in entries {
                    *map.touch(&key, || cooldown) = cooldown;
                }
            }
        }
        engine
    }

    /// The last `seq` observed in `log_id`.
    pub fn position(&self, log_id: &str) -> Option<u64> {
        self.positions.get(log_id).copied()
    }

    /// Keys held by all rules together (each rule holds at most `maxTrackedKeys`), for metrics.
    /// Per-log positions are not counted: there is one per log.
    pub fn tracked_keys(&self) -> usize {
        self.failed_logins.len()
            + self.phi_volume.len()
            + self.export_volume.len()
            + self.new_location.len()
            + self.silent_source.len()
            + self.cooldown_maps().map(|(_, m)| m.len()).sum::<usize>()
    }

    fn cooldown_maps(&self) -> impl Iterator<Item = (RuleId, &KeyedLru<Cooldown>)> {
        [
            (RuleId::OffHours, &self.off_hours),
            (RuleId::Dlp, &self.dlp),
            (RuleId::Integrity, &self.integrity),
            (RuleId::Injection, &self.injection),
            (RuleId::BreakGlass, &self.break_glass),
        ]
        .into_iter()
    }

    fn cooldown_map_mut(&mut self, rule: RuleId) -> Option<&mut KeyedLru<Cooldown>> {
        match rule {
            RuleId::OffHours => Some(&mut self.off_hours),
            RuleId::Dlp => Some(&mut self.dlp),
            RuleId::Integrity => Some(&mut self.integrity),
            RuleId::Injection => Some(&mut self.injection),
            RuleId::BreakGlass => Some(&mut self.break_glass),
            RuleId::FailedLogins
            | RuleId::PhiVolume
            | RuleId::NewLocation
            | RuleId::ExportVolume
            | RuleId::SilentSource => None,
        }
    }

    fn rule_enabled(&self, rule: RuleId) -> bool {
        let c = &self.config;
        c.enabled
            && match rule {
                RuleId::FailedLogins => c.failed_logins.enabled,
                RuleId::PhiVolume => c.phi_volume.enabled,
                RuleId::OffHours => c.off_hours.enabled,
                RuleId::NewLocation => c.new_location.enabled,
                RuleId::ExportVolume => c.export_volume.enabled,
                RuleId::Dlp => c.dlp.enabled,
                RuleId::Integrity => c.integrity.enabled,
                RuleId::Injection => c.injection.enabled,
                RuleId::BreakGlass => c.break_glass.enabled,
                RuleId::SilentSource => c.silent_source.enabled,
            }
    }

    /// Whether `rule` may alert for `key` at `at`; if so, records the alert.
    fn claim(&mut self, rule: RuleId, key: &str, at: i64) -> bool {
        let cooldown = self.rules.cooldown;
        let Some(map) = self.cooldown_map_mut(rule) else {
            return false;
        };
        if map.get(key).is_some_and(|c| c.cooling(at, cooldown)) {
            return false;
        }
        map.touch(key, || Cooldown { last_alert: at }).record(at);
        true
    }

    fn failed_logins(&mut self, event: &ObservedEvent, at: i64, alerts: &mut Vec<Alert>) {
        let c = &self.config.failed_logins;
        if !c.enabled || !Glob::any_match(&self.rules.failed_actions, &event.action) {
            return;
        }
        let window = CountRule {
            rule: RuleId::FailedLogins,
            threshold: c.threshold,
            window_secs: c.window_secs,
            window_micros: self.rules.failed_window,
            cooldown: self.rules.cooldown,
        };
        alerts.extend(
            window.count(&mut self.failed_logins, event, at, |count, who, within| {
                format!("{count} failed logins for {who} within {within}")
            }),
        );
    }

    fn phi_volume(&mut self, event: &ObservedEvent, at: i64, alerts: &mut Vec<Alert>) {
        let c = &self.config.phi_volume;
        if !c.enabled || !event.is_phi() {
            return;
        }
        let window = CountRule {
            rule: RuleId::PhiVolume,
            threshold: c.threshold,
            window_secs: c.window_secs,
            window_micros: self.rules.phi_window,
            cooldown: self.rules.cooldown,
        };
        alerts.extend(
            window.count(&mut self.phi_volume, event, at, |count, who, within| {
                format!("{count} PHI accesses by {who} within {within}")
            }),
        );
    }
    fn off_hours(&mut self, event: &ObservedEvent, at: i64, alerts: &mut Vec<Alert>) {
        if !self.config.off_hours.enabled || !event.is_phi() {
            return;
        }
        let Some(hours) = self.rules.hours else {
            return;
        };
        if hours.is_working(at) || !self.claim(RuleId::OffHours, &actor_key(event), at) {
            return;
        }
        let (weekday, minute) = hours.local(at);
        let local = format!("{} {}", DAY_NAMES[weekday], hhmm(minute));
        let offset = format_offset(hours.offset_secs);
        let working = hours.describe();
        let description = format!(
            "PHI access by {} at {local} (UTC{offset}), outside working hours ({working})",
            who(event)
        );
        let mut details = Map::new();
        details.insert("action".into(), json!(event.action));
        details.insert("localTime".into(), json!(local));
        details.insert("utcOffset".into(), json!(offset));
        details.insert("workingHours".into(), json!(working));
        alerts.push(event_alert(
            RuleId::OffHours,
            event,
            at,
            description,
            details,
        ));
    }

    fn new_location(&mut self, event: &ObservedEvent, at: i64, alerts: &mut Vec<Alert>) {
        let c = &self.config.new_location;
        if !c.enabled {
            return;
        }
        let Some(principal) = event.principal_id.as_deref() else {
            return;
        };
        let ip = event.ip_address.as_deref();
        let place = event.country.as_deref();
        if ip.is_none() && place.is_none() {
            return;
        }
        let (min_history, remember) = (c.min_history, c.remember);
        let novelty = self.new_location.touch(principal, Locations::default).add(
            at,
            ip,
            place,
            min_history,
            remember,
            self.rules.cooldown,
        );
        let Some(novelty) = novelty else {
            return;
        };
        let mut parts = Vec::new();
        if novelty.new_ip {
            parts.push(format!("a new IP address {}", ip.unwrap_or("")));
        }
        if novelty.new_place {
            parts.push(format!("a new location {}", place.unwrap_or("")));
        }
        let description = format!(
            "{} used {} after {} located events",
            who(event),
            parts.join(" and "),
            novelty.history
        );
        let mut details = Map::new();
        details.insert("action".into(), json!(event.action));
        if let Some(ip) = ip {
            details.insert("ipAddress".into(), json!(ip));
        }
        if let Some(place) = place {
            details.insert("location".into(), json!(place));
        }
        details.insert("newIpAddress".into(), json!(novelty.new_ip));
        details.insert("newLocation".into(), json!(novelty.new_place));
        details.insert("history".into(), json!(novelty.history));
        alerts.push(event_alert(
            RuleId::NewLocation,
            event,
            at,
            description,
            details,
        ));
    }

    fn export_volume(&mut self, event: &ObservedEvent, at: i64, alerts: &mut Vec<Alert>) {
        let c = &self.config.export_volume;
        if !c.enabled
            || event.record_count == 0
            || !Glob::any_match(&self.rules.export_actions, &event.action)
        {
            return;
        }
        let Some(key) = window_key(event) else {
            return;
        };
        let (threshold, window_secs) = (c.threshold, c.window_secs);
        let burst = self.export_volume.touch(&key, SumWindow::default).add(
            at,
            event.record_count,
            &event.id,
            self.rules.export_window,
            threshold,
            self.rules.cooldown,
        );
        if let Some(burst) = burst {
            let description = format!(
                "{} records exported by {} within {} (threshold {threshold})",
                burst.count,
                who(event),
                human_secs(window_secs)
            );
            let mut alert = window_alert(
                RuleId::ExportVolume,
                event,
                burst,
                threshold,
                window_secs,
                description,
            );
            if let Some(count) = alert.details.remove("count") {
                alert.details.insert("records".into(), count);
            }
            alerts.push(alert);
        }
    }

    fn dlp(&mut self, event: &ObservedEvent, at: i64, alerts: &mut Vec<Alert>) {
        let c = &self.config.dlp;
        if !c.enabled {
            return;
        }
        let mut findings: Vec<(&str, String)> = Vec::new();
        if c.redacted_free_text {
            for pointer in &event.redactions {
                if redacted_inside_free_text(event, pointer) {
                    findings.push((pointer, "redacted".to_owned()));
                }
            }
        }
        if let Some(set) = &self.rules.dlp {
            for (pointer, text) in &event.free_text {
                for i in set.matches(text).iter() {
                    findings.push((pointer, format!("patterns[{i}]")));
                }
            }
        }
        if findings.is_empty() || !self.claim(RuleId::Dlp, &actor_key(event), at) {
            return;
        }
        let total = findings.len();
        findings.truncate(MAX_DLP_FINDINGS);
        let mut pointers: Vec<&str> = findings.iter().map(|(p, _)| *p).collect();
        pointers.dedup();
        let shown = pointers
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let description = format!(
            "sensitive data in free text of {} by {}: {total} finding{} ({shown}{})",
            event.action,
            who(event),
            if total == 1 { "" } else { "s" },
            if pointers.len() > 5 { ", …" } else { "" },
        );
        let mut details = Map::new();
        details.insert("action".into(), json!(event.action));
        details.insert("findingCount".into(), json!(total));
        details.insert(
            "findings".into(),
            Value::Array(
                findings
                    .iter()
                    .map(|(pointer, what)| json!({"pointer": pointer, "match": what}))
                    .collect(),
            ),
        );
        alerts.push(event_alert(RuleId::Dlp, event, at, description, details));
    }

    fn integrity(&mut self, event: &ObservedEvent, at: i64, alerts: &mut Vec<Alert>) {
        if !self.config.integrity.enabled
            || !Glob::any_match(&self.rules.integrity_actions, &event.action)
            || !self.claim(RuleId::Integrity, &actor_key(event), at)
        {
            return;
        }
        let description = format!(
            "integrity failure reported ({}, status {}) by {}",
            event.action,
            event.status,
            who(event)
        );
        let mut details = Map::new();
        details.insert("action".into(), json!(event.action));
        details.insert("status".into(), json!(event.status));
        alerts.push(event_alert(
            RuleId::Integrity,
            event,
            at,
            description,
            details,
        ));
    }

    fn injection(&mut self, event: &ObservedEvent, at: i64, alerts: &mut Vec<Alert>) {
        if !self.config.injection.enabled
            || event.injection.is_empty()
            || !self.claim(RuleId::Injection, &actor_key(event), at)
        {
            return;
        }
        let kinds = event.injection.join(", ");
        let description = format!(
            "injection-looking input ({kinds}) from {} in {}",
            who(event),
            event.action
        );
        let mut details = Map::new();
        details.insert("action".into(), json!(event.action));
        details.insert("kinds".into(), json!(event.injection));
        alerts.push(event_alert(
            RuleId::Injection,
            event,
            at,
            description,
            details,
        ));
    }

    fn break_glass(&mut self, event: &ObservedEvent, at: i64, alerts: &mut Vec<Alert>) {
        if !self.config.break_glass.enabled
            || !event.emergency_access
            || !self.claim(RuleId::BreakGlass, &actor_key(event), at)
        {
            return;
        }
        let justified = event
            .clinical_justification
            .as_deref()
            .is_some_and(|j| !j.trim().is_empty());
        let description = format!(
            "break-glass emergency access by {} ({}), {} clinical justification",
            who(event),
            event.action,
            if justified { "with a" } else { "without" }
        );
        let mut details = Map::new();
        details.insert("action".into(), json!(event.action));
        details.insert("clinicalJustification".into(), json!(justified));
        alerts.push(event_alert(
            RuleId::BreakGlass,
            event,
            at,
            description,
            details,
        ));
    }

    /// Feeds `silent_source` (alerts come from [`Engine::tick`]).
    fn note_arrival(&mut self, event: &ObservedEvent) {
        let c = &self.config.silent_source;
        if !c.enabled {
            return;
        }
        let key = match c.key {
            SourceKey::OrganizationId => event.organization_id.as_deref(),
            SourceKey::PrincipalId => event.principal_id.as_deref(),
        };
        let Some(key) = key else {
            return;
        };
        let at = event.received_micros;
        self.silent_source
            .touch(key, || Source::new(at, &event.id))
            .arrive(at, &event.id);
    }
}

/// The event's time for the rules: `timestamp`, but never more than
/// [`MAX_FUTURE_SKEW_SECS`] after `receivedAt`.
fn event_time(event: &ObservedEvent) -> i64 {
    if event.received_micros == 0 {
        return event.occurred_micros;
    }
    let latest = event
        .received_micros
        .saturating_add(MAX_FUTURE_SKEW_SECS * 1_000_000);
    event.occurred_micros.min(latest)
}

/// Key of a window rule: the principal, else the IP address; `None` when the event has neither.
fn window_key(event: &ObservedEvent) -> Option<Cow<'_, str>> {
    match (&event.principal_id, &event.ip_address) {
        (Some(p), _) => Some(Cow::Borrowed(p.as_str())),
        (None, Some(ip)) => Some(Cow::Owned(format!("{IP_KEY}{ip}"))),
        (None, None) => None,
    }
}

/// Key of a per-event rule's cooldown: the principal, else the IP, else the organization, else
/// one key for everything anonymous.
fn actor_key(event: &ObservedEvent) -> Cow<'_, str> {
    match (
        &event.principal_id,
        &event.ip_address,
        &event.organization_id,
    ) {
        (Some(p), _, _) => Cow::Borrowed(p.as_str()),
        (None, Some(ip), _) => Cow::Owned(format!("{IP_KEY}{ip}")),
        (None, None, Some(org)) => Cow::Owned(format!("{ORG_KEY}{org}")),
        (None, None, None) => Cow::Borrowed(""),
    }
}

/// Who acted, for a description.
fn who(event: &ObservedEvent) -> String {
    match (
        &event.principal_id,
        &event.ip_address,
        &event.organization_id,
    ) {
        (Some(p), _, _) => p.clone(),
        (None, Some(ip), _) => format!("IP address {ip}"),
        (None, None, Some(org)) => format!("an unnamed principal of {org}"),
        (None, None, None) => "an unnamed principal".to_owned(),
    }
}

/// Whether the redaction at `pointer` replaced part of a free-text value: the pointer is one
/// of the event's free-text strings and that string is not wholly a mask or a token. A whole
/// value replaced (`details.ssn` masked by its field name, say) is a field used as intended,
/// not sensitive data typed into free text.
fn redacted_inside_free_text(event: &ObservedEvent, pointer: &str) -> bool {
    event
        .free_text
        .iter()
        .find(|(p, _)| p == pointer)
        .is_some_and(|(_, text)| !is_whole_redaction(text))
}

fn is_whole_redaction(text: &str) -> bool {
    text == MASK
        || text
            .strip_prefix(TOKEN_PREFIX)
            .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An alert of a window rule.
fn window_alert(
    rule: RuleId,
    event: &ObservedEvent,
    burst: Burst,
    threshold: u64,
    window_secs: u64,
    description: String,
) -> Alert {
    let mut details = Map::new();
    details.insert("count".into(), json!(burst.count));
    details.insert("threshold".into(), json!(threshold));
    details.insert("windowSecs".into(), json!(window_secs));
    if event.principal_id.is_none()
        && let Some(ip) = &event.ip_address
    {
        details.insert("ipAddress".into(), json!(ip));
    }
    debug_assert!(burst.ids.len() <= MAX_TRIGGERING_IDS);
    Alert {
        rule,
        severity: rule.severity(),
        principal_id: event.principal_id.clone(),
        organization_id: event.organization_id.clone(),
        description,
        triggering_event_ids: burst.ids,
        window_start_micros: burst.start,
        window_end_micros: burst.end,
        details,
        at_micros: burst.end,
    }
}

/// An alert about one event.
fn event_alert(
    rule: RuleId,
    event: &ObservedEvent,
    at: i64,
    description: String,
    details: Map<String, Value>,
) -> Alert {
    Alert {
        rule,
        severity: rule.severity(),
        principal_id: event.principal_id.clone(),
        organization_id: event.organization_id.clone(),
        description,
        triggering_event_ids: vec![event.id.clone()],
        window_start_micros: at,
        window_end_micros: at,
        details,
        at_micros: at,
    }
}
