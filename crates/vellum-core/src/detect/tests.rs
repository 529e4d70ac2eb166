//! Tests of the detection rules: for every rule, fixtures that must and must not trigger, plus
//! cooldowns, snapshots, replay, bounds, configuration errors and the alert event's validity.

use super::*;
use crate::config::{RedactionConfig, ValidationConfig};
use crate::pipeline::Pipeline;
use crate::redact::Redactor;
use serde_json::{Value, json};

/// 2026-11-23T00:00:00Z, a Monday.
const MONDAY: i64 = 1_795_392_000_000_000;
const SEC: i64 = 1_000_000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// A configuration with every rule off but the ones `enable` turns on.
fn only(enable: impl FnOnce(&mut DetectionConfig)) -> DetectionConfig {
    let mut c = DetectionConfig::default();
    c.failed_logins.enabled = false;
    c.phi_volume.enabled = false;
    c.off_hours.enabled = false;
    c.new_location.enabled = false;
    c.export_volume.enabled = false;
    c.dlp.enabled = false;
    c.integrity.enabled = false;
    c.injection.enabled = false;
    c.break_glass.enabled = false;
    c.silent_source.enabled = false;
    enable(&mut c);
    c.validate().expect("valid test configuration");
    c
}

/// An engine fed events of one log in sequence.
struct Feed {
    engine: Engine,
    seq: u64,
}

impl Feed {
    fn new(config: DetectionConfig) -> Self {
        Self {
            engine: Engine::new(config),
            seq: 0,
        }
    }

    fn observe(&mut self, mut event: ObservedEvent) -> Vec<Alert> {
        event.log_id = "default".into();
        event.seq = self.seq;
        if event.id.is_empty() {
            event.id = format!("e{}", self.seq);
        }
        self.seq += 1;
        self.engine.observe(&event)
    }

    /// Observes every event, returning all alerts.
    fn observe_all(&mut self, events: impl IntoIterator<Item = ObservedEvent>) -> Vec<Alert> {
        events.into_iter().flat_map(|e| self.observe(e)).collect()
    }
}

fn event(action: &str, principal: &str, at: i64) -> ObservedEvent {
    ObservedEvent {
        action: action.into(),
        status: "success".into(),
        principal_id: Some(principal.into()),
        organization_id: Some("clinic-1".into()),
        occurred_micros: at,
        received_micros: at,
        record_count: 1,
        ..ObservedEvent::default()
    }
}

fn login_failure(principal: &str, at: i64) -> ObservedEvent {
    ObservedEvent {
        status: "failure".into(),
        ..event("auth.login.failure", principal, at)
    }
}

fn phi(principal: &str, at: i64) -> ObservedEvent {
    ObservedEvent {
        classification: Some("PHI".into()),
        ..event("fhir.patient.read", principal, at)
    }
}

fn located(principal: &str, at: i64, ip: &str, country: Option<&str>) -> ObservedEvent {
    ObservedEvent {
        ip_address: Some(ip.into()),
        country: country.map(str::to_owned),
        ..event("fhir.patient.read", principal, at)
    }
}

fn export(principal: &str, at: i64, records: u64) -> ObservedEvent {
    ObservedEvent {
        record_count: records,
        ..event("fhir.patient.export", principal, at)
    }
}

fn rules(alerts: &[Alert]) -> Vec<RuleId> {
    alerts.iter().map(|a| a.rule).collect()
}

fn failed_logins_only() -> DetectionConfig {
    only(|c| c.failed_logins.enabled = true)
}

// ---------------------------------------------------------------- failed_logins

#[test]
fn failed_logins_threshold_reached_is_quiet_one_more_alerts() {
    let mut feed = Feed::new(failed_logins_only());
    let quiet = feed.observe_all((0..5).map(|i| login_failure("dr-ana", MONDAY + i * SEC)));
    assert!(quiet.is_empty(), "exactly the threshold: {quiet:?}");
    let alerts = feed.observe(login_failure("dr-ana", MONDAY + 5 * SEC));
    assert_eq!(rules(&alerts), [RuleId::FailedLogins]);
    let alert = &alerts[0];
    assert_eq!(alert.description, "6 failed logins for dr-ana within 60 s");
    assert_eq!(alert.severity, crate::model::Severity::High);
    assert_eq!(alert.principal_id.as_deref(), Some("dr-ana"));
    assert_eq!(alert.organization_id.as_deref(), Some("clinic-1"));
    assert_eq!(
        alert.triggering_event_ids,
        ["e0", "e1", "e2", "e3", "e4", "e5"]
    );
    assert_eq!(alert.window_start_micros, MONDAY);
    assert_eq!(alert.window_end_micros, MONDAY + 5 * SEC);
    assert_eq!(alert.details["count"], 6);
    assert_eq!(alert.details["threshold"], 5);
    assert_eq!(alert.details["windowSecs"], 60);
}

#[test]
fn failed_logins_outside_the_window_do_not_count() {
    let mut feed = Feed::new(failed_logins_only());
    // Six failures spread over exactly 60 s: the first is not within 60 s of the last.
    let alerts = feed.observe_all((0..6).map(|i| login_failure("dr-ana", MONDAY + i * 12 * SEC)));
    assert!(alerts.is_empty(), "{alerts:?}");
    // One more 1 s later makes six within (t - 60 s, t].
    let alerts = feed.observe(login_failure("dr-ana", MONDAY + 61 * SEC));
    assert_eq!(rules(&alerts), [RuleId::FailedLogins]);
    assert_eq!(
        alerts[0].triggering_event_ids,
        ["e1", "e2", "e3", "e4", "e5", "e6"]
    );
}

#[test]
fn failed_logins_count_per_principal_and_only_matching_actions() {
    let mut feed = Feed::new(failed_logins_only());
    let mut events = Vec::new();
    for i in 0..5 {
        events.push(login_failure("dr-ana", MONDAY + i * SEC));
        events.push(login_failure("dr-bob", MONDAY + i * SEC));
        events.push(event("auth.login.success", "dr-ana", MONDAY + i * SEC));
    }
    assert!(feed.observe_all(events).is_empty());
    let alerts = feed.observe(login_failure("dr-bob", MONDAY + 6 * SEC));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].principal_id.as_deref(), Some("dr-bob"));
}

#[test]
fn failed_logins_action_patterns_with_a_trailing_star() {
    let mut feed = Feed::new(only(|c| {
        c.failed_logins.enabled = true;
        c.failed_logins.actions = vec!["auth.login.fail*".into()];
        c.failed_logins.threshold = 1;
    }));
    assert!(feed.observe(login_failure("a", MONDAY)).is_empty());
    let alerts = feed.observe(event("auth.login.failed_mfa", "a", MONDAY + SEC));
    assert_eq!(rules(&alerts), [RuleId::FailedLogins]);
}

#[test]
fn failed_logins_without_a_principal_are_keyed_by_ip() {
    let mut feed = Feed::new(failed_logins_only());
    let anonymous = |ip: &str, at| ObservedEvent {
        principal_id: None,
        ip_address: Some(ip.into()),
        ..login_failure("", at)
    };
    let mut events: Vec<_> = (0..5)
        .map(|i| anonymous("198.51.100.7", MONDAY + i * SEC))
        .collect();
    events.extend((0..5).map(|i| anonymous("198.51.100.8", MONDAY + i * SEC)));
    assert!(feed.observe_all(events).is_empty());
    let alerts = feed.observe(anonymous("198.51.100.7", MONDAY + 9 * SEC));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].principal_id, None);
    assert_eq!(alerts[0].details["ipAddress"], "198.51.100.7");
    assert_eq!(
        alerts[0].description,
        "6 failed logins for IP address 198.51.100.7 within 60 s"
    );
    // Neither principal nor address: nothing to key on, nothing counted.
    let mut feed = Feed::new(failed_logins_only());
    let nobody = ObservedEvent {
        principal_id: None,
        ..login_failure("", MONDAY)
    };
    assert!(feed.observe_all(vec![nobody; 10]).is_empty());
    assert_eq!(feed.engine.tracked_keys(), 0);
}

#[test]
fn cooldown_suppresses_the_second_alert_then_allows_after() {
    let mut feed = Feed::new(failed_logins_only());
    let alerts = feed.observe_all((0..20).map(|i| login_failure("dr-ana", MONDAY + i * SEC)));
    assert_eq!(alerts.len(), 1, "an ongoing burst is one alert");
    // A new burst still within the 300 s cooldown of the first alert (at +5 s): quiet.
    let start = MONDAY + 200 * SEC;
    let alerts = feed.observe_all((0..10).map(|i| login_failure("dr-ana", start + i * SEC)));
    assert!(alerts.is_empty(), "{alerts:?}");
    // After the cooldown a new burst alerts again, with only its own events.
    let start = MONDAY + 400 * SEC;
    let quiet = feed.observe_all((0..5).map(|i| login_failure("dr-ana", start + i * SEC)));
    assert!(quiet.is_empty());
    let alerts = feed.observe(login_failure("dr-ana", start + 5 * SEC));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].triggering_event_ids.len(), 6);
    assert_eq!(alerts[0].window_start_micros, start);
}

#[test]
fn late_events_inside_the_window_count_and_older_ones_are_ignored() {
    let mut feed = Feed::new(failed_logins_only());
    // Out of time order (several logs), all within 60 s.
    let times = [30, 10, 50, 20, 40];
    let quiet = feed.observe_all(times.map(|t| login_failure("a", MONDAY + t * SEC)));
    assert!(quiet.is_empty());
    // A very late one (before the window) does not count and does not panic.
    assert!(feed.observe(login_failure("a", MONDAY - DAY)).is_empty());
    let alerts = feed.observe(login_failure("a", MONDAY + 15 * SEC));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].window_start_micros, MONDAY + 10 * SEC);
    assert_eq!(alerts[0].window_end_micros, MONDAY + 50 * SEC);
    assert_eq!(
        alerts[0].triggering_event_ids,
        ["e1", "e6", "e3", "e0", "e4", "e2"]
    );
}

#[test]
fn a_timestamp_far_in_the_future_cannot_blind_a_window() {
    let mut feed = Feed::new(failed_logins_only());
    let mut forged = login_failure("a", MONDAY + 365 * DAY);
    forged.received_micros = MONDAY;
    assert!(feed.observe(forged).is_empty());
    let alerts = feed.observe_all((1..6).map(|i| login_failure("a", MONDAY + i * SEC)));
    assert_eq!(
        alerts.len(),
        1,
        "the forged date counts as receivedAt + 60 s"
    );
}

// ---------------------------------------------------------------- phi_volume

#[test]
fn phi_volume_counts_phi_events_per_principal() {
    let mut feed = Feed::new(only(|c| c.phi_volume.enabled = true));
    let mut events: Vec<_> = (0..50).map(|i| phi("dr-ana", MONDAY + i * MIN)).collect();
    // Non-PHI events and other principals do not count; any status does.
    events.extend((0..60).map(|i| event("fhir.patient.read", "dr-ana", MONDAY + i * SEC)));
    events.extend((0..50).map(|i| phi("dr-bob", MONDAY + i * SEC)));
    assert!(feed.observe_all(events).is_empty());
    let failed = ObservedEvent {
        status: "failure".into(),
        ..phi("dr-ana", MONDAY + 50 * MIN)
    };
    let alerts = feed.observe(failed);
    assert_eq!(rules(&alerts), [RuleId::PhiVolume]);
    assert_eq!(
        alerts[0].description,
        "51 PHI accesses by dr-ana within 1 h"
    );
    assert_eq!(alerts[0].triggering_event_ids.len(), 51);
    assert_eq!(alerts[0].severity, crate::model::Severity::High);
}

#[test]
fn phi_volume_window_slides() {
    let mut feed = Feed::new(only(|c| c.phi_volume.enabled = true));
    // 51 PHI events, one every 72 s: 3600 s from the first to the last, so never 51 in a window.
    let alerts = feed.observe_all((0..51).map(|i| phi("dr-ana", MONDAY + i * 72 * SEC)));
    assert!(alerts.is_empty());
}

#[test]
fn triggering_ids_are_bounded_to_the_most_recent() {
    let mut feed = Feed::new(only(|c| {
        c.phi_volume.enabled = true;
        c.phi_volume.threshold = 150;
    }));
    let alerts = feed.observe_all((0..151).map(|i| phi("dr-ana", MONDAY + i * SEC)));
    assert_eq!(alerts.len(), 1);
    let ids = &alerts[0].triggering_event_ids;
    assert_eq!(ids.len(), MAX_TRIGGERING_IDS);
    assert_eq!(ids.first().map(String::as_str), Some("e51"));
    assert_eq!(ids.last().map(String::as_str), Some("e150"));
    assert_eq!(alerts[0].details["count"], 151);
}

// ---------------------------------------------------------------- off_hours

fn off_hours(setup: impl FnOnce(&mut OffHours)) -> Feed {
    Feed::new(only(|c| {
        c.off_hours.enabled = true;
        c.cooldown_secs = 0;
        setup(&mut c.off_hours);
    }))
}

/// UTC micros of local `day` (0 = Monday 2026-11-23) `hh:mm` at `offset_hours`.
fn local(day: i64, hh: i64, mm: i64, offset_hours: i64) -> i64 {
    MONDAY + day * DAY + hh * HOUR + mm * MIN - offset_hours * HOUR
}

#[test]
fn off_hours_boundaries_with_an_offset() {
    let mut feed = off_hours(|h| h.utc_offset = "-03:00".into());
    // Monday 18:59 local (21:59 UTC): working. 19:00 local: off hours.
    assert!(feed.observe(phi("dr-ana", local(0, 18, 59, -3))).is_empty());
    let alerts = feed.observe(phi("dr-ana", local(0, 19, 0, -3)));
    assert_eq!(rules(&alerts), [RuleId::OffHours]);
    assert_eq!(alerts[0].severity, crate::model::Severity::Medium);
    assert_eq!(alerts[0].details["localTime"], "Mon 19:00");
    assert_eq!(alerts[0].details["utcOffset"], "-03:00");
    assert_eq!(
        alerts[0].description,
        "PHI access by dr-ana at Mon 19:00 (UTC-03:00), outside working hours (Mon–Fri 07:00–19:00)"
    );
    // 07:00 is working, 06:59 is not.
    assert!(feed.observe(phi("dr-ana", local(1, 7, 0, -3))).is_empty());
    assert_eq!(feed.observe(phi("dr-ana", local(1, 6, 59, -3))).len(), 1);
    // 18:59 local is 21:59 UTC: the same instant at +00:00 would be off hours.
    let mut utc = off_hours(|_| {});
    assert_eq!(utc.observe(phi("dr-ana", local(0, 18, 59, -3))).len(), 1);
    // Non-PHI at night: nothing.
    assert!(
        feed.observe(event("fhir.patient.read", "dr-ana", local(0, 3, 0, -3)))
            .is_empty()
    );
}

#[test]
fn off_hours_on_the_weekend() {
    let mut feed = off_hours(|_| {});
    assert!(
        feed.observe(phi("dr-ana", local(4, 12, 0, 0))).is_empty(),
        "Friday noon"
    );
    let alerts = feed.observe(phi("dr-ana", local(5, 12, 0, 0)));
    assert_eq!(alerts.len(), 1, "Saturday noon");
    assert_eq!(alerts[0].details["localTime"], "Sat 12:00");
    assert_eq!(
        feed.observe(phi("dr-ana", local(6, 10, 0, 0))).len(),
        1,
        "Sunday"
    );
    // A weekend-only team.
    let mut weekend = off_hours(|h| h.days = vec!["Saturday".into(), "sun".into()]);
    assert!(weekend.observe(phi("a", local(5, 12, 0, 0))).is_empty());
    assert_eq!(weekend.observe(phi("a", local(0, 12, 0, 0))).len(), 1);
}

#[test]
fn off_hours_wrapping_midnight() {
    // Night shift 22:00–06:00 starting Monday to Friday.
    let mut feed = off_hours(|h| {
        h.start = "22:00".into();
        h.end = "06:00".into();
        h.utc_offset = "+05:30".into();
    });
    let working = [
        local(0, 22, 0, 0),  // Monday 22:00
        local(0, 23, 59, 0), // Monday 23:59
        local(1, 3, 0, 0),   // Tuesday 03:00, Monday's shift
        local(5, 5, 59, 0),  // Saturday 05:59, Friday's shift
    ];
    for (i, t) in working.into_iter().enumerate() {
        let t = t - 5 * HOUR - 30 * MIN;
        assert!(feed.observe(phi("n", t)).is_empty(), "working #{i}");
    }
    let off = [
        local(0, 21, 59, 0), // Monday 21:59
        local(0, 3, 0, 0),   // Monday 03:00, Sunday's shift
        local(5, 6, 0, 0),   // Saturday 06:00
        local(5, 23, 0, 0),  // Saturday 23:00
        local(2, 12, 0, 0),  // Wednesday noon
    ];
    for (i, t) in off.into_iter().enumerate() {
        let t = t - 5 * HOUR - 30 * MIN;
        assert_eq!(feed.observe(phi("n", t)).len(), 1, "off #{i}");
    }
}

#[test]
fn off_hours_cooldown_is_per_actor() {
    let mut feed = Feed::new(only(|c| c.off_hours.enabled = true));
    let night = local(1, 2, 0, 0);
    let alerts = feed.observe_all((0..40).map(|i| phi("night-owl", night + i * SEC)));
    assert_eq!(alerts.len(), 1, "one alert for a burst of night reads");
    assert_eq!(feed.observe(phi("other", night)).len(), 1);
    assert_eq!(feed.observe(phi("night-owl", night + 301 * SEC)).len(), 1);
}

// ---------------------------------------------------------------- new_location

#[test]
fn new_ip_alerts_only_after_min_history() {
    let mut feed = Feed::new(only(|c| {
        c.new_location.enabled = true;
        c.cooldown_secs = 0;
    }));
    // Five events, each from a new address: too little history to judge.
    let first: Vec<_> = (0..5)
        .map(|i| {
            located(
                "dr-ana",
                MONDAY + i * MIN,
                &format!("10.0.0.{i}"),
                Some("PT"),
            )
        })
        .collect();
    assert!(feed.observe_all(first).is_empty());
    // Known address and location: nothing.
    assert!(
        feed.observe(located("dr-ana", MONDAY + 6 * MIN, "10.0.0.2", Some("PT")))
            .is_empty()
    );
    // Now a new address alerts.
    let alerts = feed.observe(located(
        "dr-ana",
        MONDAY + 7 * MIN,
        "203.0.113.9",
        Some("PT"),
    ));
    assert_eq!(rules(&alerts), [RuleId::NewLocation]);
    let alert = &alerts[0];
    assert_eq!(alert.severity, crate::model::Severity::Medium);
    assert_eq!(alert.details["ipAddress"], "203.0.113.9");
    assert_eq!(alert.details["newIpAddress"], true);
    assert_eq!(alert.details["newLocation"], false);
    assert_eq!(
        alert.description,
        "dr-ana used a new IP address 203.0.113.9 after 6 located events"
    );
    // ... then it is known.
    assert!(
        feed.observe(located(
            "dr-ana",
            MONDAY + 8 * MIN,
            "203.0.113.9",
            Some("PT")
        ))
        .is_empty()
    );
    // A new country from a known address alerts too.
    let alerts = feed.observe(located("dr-ana", MONDAY + 9 * MIN, "10.0.0.1", Some("BR")));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].details["newLocation"], true);
    assert_eq!(alerts[0].details["newIpAddress"], false);
    // Another principal has its own history.
    assert!(
        feed.observe(located("dr-bob", MONDAY, "203.0.113.50", None))
            .is_empty()
    );
}

#[test]
fn new_location_remembers_a_bounded_number_of_addresses() {
    let mut feed = Feed::new(only(|c| {
        c.new_location.enabled = true;
        c.new_location.min_history = 0;
        c.new_location.remember = 2;
        c.cooldown_secs = 0;
    }));
    assert_eq!(feed.observe(located("a", MONDAY, "1.1.1.1", None)).len(), 1);
    assert_eq!(feed.observe(located("a", MONDAY, "2.2.2.2", None)).len(), 1);
    assert!(
        feed.observe(located("a", MONDAY, "1.1.1.1", None))
            .is_empty()
    );
    assert_eq!(feed.observe(located("a", MONDAY, "3.3.3.3", None)).len(), 1);
    // 2.2.2.2 was the least recently used of the two remembered, so it was forgotten.
    assert_eq!(feed.observe(located("a", MONDAY, "2.2.2.2", None)).len(), 1);
    assert!(
        feed.observe(located("a", MONDAY, "3.3.3.3", None))
            .is_empty()
    );
    // Events without a location or without a principal are not counted.
    assert!(feed.observe(event("x", "a", MONDAY)).is_empty());
    let anonymous = ObservedEvent {
        principal_id: None,
        ..located("a", MONDAY, "9.9.9.9", None)
    };
    assert!(feed.observe(anonymous).is_empty());
}

// ---------------------------------------------------------------- export_volume

#[test]
fn export_volume_sums_records_per_principal() {
    let mut feed = Feed::new(only(|c| c.export_volume.enabled = true));
    assert!(feed.observe(export("dr-ana", MONDAY, 6_000)).is_empty());
    assert!(feed.observe(export("dr-bob", MONDAY, 9_999)).is_empty());
    assert!(
        feed.observe(export("dr-ana", MONDAY + HOUR, 4_000))
            .is_empty(),
        "exactly 10 000"
    );
    // Non-export actions do not count, whatever their recordCount.
    assert!(
        feed.observe(ObservedEvent {
            record_count: 50_000,
            ..event("fhir.patient.read", "dr-ana", MONDAY)
        })
        .is_empty()
    );
    let alerts = feed.observe(export("dr-ana", MONDAY + 2 * HOUR, 1));
    assert_eq!(rules(&alerts), [RuleId::ExportVolume]);
    assert_eq!(alerts[0].details["records"], 10_001);
    assert_eq!(alerts[0].details["threshold"], 10_000);
    assert_eq!(alerts[0].triggering_event_ids, ["e0", "e2", "e4"]);
    assert_eq!(
        alerts[0].description,
        "10001 records exported by dr-ana within 24 h (threshold 10000)"
    );
}

#[test]
fn export_volume_outside_the_window_does_not_count() {
    let mut feed = Feed::new(only(|c| c.export_volume.enabled = true));
    assert!(feed.observe(export("dr-ana", MONDAY, 10_000)).is_empty());
    assert!(feed.observe(export("dr-ana", MONDAY + DAY, 1)).is_empty());
    assert!(
        feed.observe(export("dr-ana", MONDAY + DAY + SEC, 9_999))
            .is_empty()
    );
    assert_eq!(
        feed.observe(export("dr-ana", MONDAY + DAY + 2 * SEC, 1))
            .len(),
        1
    );
}

#[test]
fn export_action_patterns() {
    let globs = config::Glob::compile_all(&ExportVolume::default().actions);
    for action in [
        "fhir.patient.export",
        "export.csv",
        "bulk.export.start",
        "export.x.y",
    ] {
        assert!(config::Glob::any_match(&globs, action), "{action}");
    }
    for action in [
        "export",
        "fhir.patient.exported",
        "fhir.exporter.run",
        "reexport.csv",
    ] {
        assert!(!config::Glob::any_match(&globs, action), "{action}");
    }
    let middle = config::Glob::new("a*b*c");
    assert!(middle.matches("abc") && middle.matches("a-b-b-c") && !middle.matches("acb"));
    assert!(!middle.matches("ab"));
    assert!(config::Glob::new("x").matches("x") && !config::Glob::new("x").matches("xx"));
}

// ---------------------------------------------------------------- dlp

#[test]
fn dlp_on_a_value_redacted_inside_free_text() {
    let mut feed = Feed::new(only(|c| c.dlp.enabled = true));
    let leaked = ObservedEvent {
        redactions: vec!["/outcomeDescription".into()],
        free_text: vec![(
            "/outcomeDescription".into(),
            "patient called, SSN tok:0123456789abcdef".into(),
        )],
        ..event("fhir.patient.update", "dr-ana", MONDAY)
    };
    let alerts = feed.observe(leaked);
    assert_eq!(rules(&alerts), [RuleId::Dlp]);
    assert_eq!(alerts[0].severity, crate::model::Severity::High);
    assert_eq!(
        alerts[0].details["findings"],
        json!([{"pointer": "/outcomeDescription", "match": "redacted"}])
    );
    assert!(!alerts[0].description.contains("tok:"));
    // A named field redacted as a whole is the field used as intended: no alert.
    let named = ObservedEvent {
        redactions: vec!["/details/ssn".into(), "/details/password".into()],
        free_text: vec![
            ("/details/ssn".into(), "tok:0123456789abcdef".into()),
            ("/details/password".into(), "[REDACTED]".into()),
        ],
        ..event("fhir.patient.update", "dr-bob", MONDAY)
    };
    assert!(feed.observe(named).is_empty());
    // Switched off: nothing.
    let mut off = Feed::new(only(|c| {
        c.dlp.enabled = true;
        c.dlp.redacted_free_text = false;
    }));
    let leaked = ObservedEvent {
        redactions: vec!["/details/note".into()],
        free_text: vec![("/details/note".into(), "card [REDACTED] on file".into())],
        ..event("a", "b", MONDAY)
    };
    assert!(off.observe(leaked.clone()).is_empty());
    assert_eq!(
        Feed::new(only(|c| c.dlp.enabled = true))
            .observe(leaked)
            .len(),
        1
    );
}

#[test]
fn dlp_extra_patterns_name_the_pattern_not_the_text() {
    let mut feed = Feed::new(only(|c| {
        c.dlp.enabled = true;
        c.dlp.patterns = vec![r"(?i)password\s*[:=]".into(), r"\bINT-\d{6}\b".into()];
    }));
    let clean = ObservedEvent {
        free_text: vec![("/details/note".into(), "password reset requested".into())],
        ..event("a", "dr-ana", MONDAY)
    };
    assert!(feed.observe(clean).is_empty());
    let leaked = ObservedEvent {
        free_text: vec![
            ("/outcomeDescription".into(), "ok".into()),
            ("/details/note".into(), "password= hunter2".into()),
            ("/changes/newValues/ref".into(), "INT-123456".into()),
        ],
        ..event("a", "dr-ana", MONDAY)
    };
    let alerts = feed.observe(leaked);
    assert_eq!(rules(&alerts), [RuleId::Dlp]);
    assert_eq!(
        alerts[0].details["findings"],
        json!([
            {"pointer": "/details/note", "match": "patterns[0]"},
            {"pointer": "/changes/newValues/ref", "match": "patterns[1]"}
        ])
    );
    let text = serde_json::to_string(&alerts[0]).expect("json");
    assert!(
        !text.contains("hunter2") && !text.contains("INT-123456"),
        "{text}"
    );
}

// ---------------------------------------------------------------- integrity, injection, break-glass

#[test]
fn integrity_failures_are_critical() {
    let mut feed = Feed::new(only(|c| c.integrity.enabled = true));
    assert!(
        feed.observe(event("integrity.verify.success", "admin", MONDAY))
            .is_empty()
    );
    assert!(
        feed.observe(event("integrity.failure", "admin", MONDAY))
            .is_empty()
    );
    let failure = ObservedEvent {
        status: "failure".into(),
        ..event("integrity.verify.failure", "admin", MONDAY)
    };
    let alerts = feed.observe(failure);
    assert_eq!(rules(&alerts), [RuleId::Integrity]);
    assert_eq!(alerts[0].severity, crate::model::Severity::Critical);
    assert_eq!(alerts[0].triggering_event_ids, ["e2"]);
    let other = event("integrity.checkpoint.failure", "auditor", MONDAY);
    assert_eq!(feed.observe(other).len(), 1, "integrity.*.failure");
}

/// A stored event as the store returns it.
fn stored(extra: Value) -> Value {
    let mut event = json!({
        "id": "0190f5e2-0000-7000-8000-00000000000a",
        "logId": "default",
        "seq": 7,
        "receivedAt": "2026-11-23T10:00:00.000001Z",
        "prevHash": "0".repeat(64),
        "hash": "1".repeat(64),
        "action": "search.run",
        "status": "success",
        "timestamp": "2026-11-23T09:59:59.5Z",
        "eventVersion": "1.0",
        "dataClassification": "INTERNAL",
        "severity": "low",
        "retentionPolicy": "administrative",
    });
    if let (Some(map), Value::Object(extra)) = (event.as_object_mut(), extra) {
        map.extend(extra);
    }
    event
}

#[test]
fn injection_from_a_script_in_the_outcome_description_through_from_stored() {
    let stored = stored(json!({
        "principalId": "mallory", "organizationId": "clinic-2",
        "outcomeDescription": "query <script>alert(1)</script>",
    }));
    let observed = ObservedEvent::from_stored(&stored).expect("complete");
    assert_eq!(observed.injection, ["script"]);
    let mut engine = Engine::new(only(|c| c.injection.enabled = true));
    let alerts = engine.observe(&observed);
    assert_eq!(rules(&alerts), [RuleId::Injection]);
    assert_eq!(alerts[0].principal_id.as_deref(), Some("mallory"));
    assert_eq!(alerts[0].details["kinds"], json!(["script"]));
    assert_eq!(
        alerts[0].triggering_event_ids,
        ["0190f5e2-0000-7000-8000-00000000000a"]
    );
    // SQL in a nested detail, a key, and the script again: each kind once.
    let stored = stored_with_sql();
    let mut kinds = ObservedEvent::from_stored(&stored)
        .expect("complete")
        .injection;
    kinds.sort();
    assert_eq!(kinds, ["script", "sql"]);
    // Clean text raises nothing.
    let clean = stored_clean();
    assert!(
        ObservedEvent::from_stored(&clean)
            .expect("complete")
            .injection
            .is_empty()
    );
}

fn stored_with_sql() -> Value {
    stored(json!({
        "principalId": "mallory",
        "details": {"q": ["x", "1' OR 1=1 --"], "<iframe>": 1, "s": "<script>"},
    }))
}

fn stored_clean() -> Value {
    stored(json!({
        "principalId": "dr-ana", "outcomeDescription": "O'Brien's chart -- reviewed at 09:00",
    }))
}

#[test]
fn break_glass_access_alerts() {
    let mut feed = Feed::new(only(|c| c.break_glass.enabled = true));
    assert!(feed.observe(phi("dr-ana", MONDAY)).is_empty());
    let glass = ObservedEvent {
        emergency_access: true,
        clinical_justification: Some("unconscious in ER".into()),
        ..phi("dr-ana", MONDAY)
    };
    let alerts = feed.observe(glass);
    assert_eq!(rules(&alerts), [RuleId::BreakGlass]);
    assert_eq!(alerts[0].severity, crate::model::Severity::High);
    assert_eq!(alerts[0].details["clinicalJustification"], true);
    assert_eq!(
        alerts[0].description,
        "break-glass emergency access by dr-ana (fhir.patient.read), with a clinical justification"
    );
    let unjustified = ObservedEvent {
        emergency_access: true,
        ..phi("dr-bob", MONDAY)
    };
    let alerts = feed.observe(unjustified);
    assert_eq!(alerts[0].details["clinicalJustification"], false);
}

// ---------------------------------------------------------------- silent_source

fn silent_only() -> DetectionConfig {
    only(|c| c.silent_source.enabled = true)
}

/// Ticks every 30 s from `from` to `to` inclusive, collecting alerts.
fn tick_until(engine: &mut Engine, from: i64, to: i64) -> Vec<(i64, Alert)> {
    let mut out = Vec::new();
    let mut now = from;
    while now <= to {
        out.extend(engine.tick(now).into_iter().map(|a| (now, a)));
        now += 30 * SEC;
    }
    out
}

#[test]
fn silent_source_alerts_once_per_silence() {
    let mut feed = Feed::new(silent_only());
    // clinic-1: 30 events one minute apart. tiny-clinic: only 10.
    for i in 0..30 {
        feed.observe(event("fhir.patient.read", "dr-ana", MONDAY + i * MIN));
        if i < 10 {
            let mut e = event("fhir.patient.read", "dr-x", MONDAY + i * MIN);
            e.organization_id = Some("tiny-clinic".into());
            feed.observe(e);
        }
    }
    let last = MONDAY + 29 * MIN;
    // Usual gap 60 s × 10 = 600 s, clamped up to the 900 s minimum.
    let alerts = tick_until(&mut feed.engine, last, last + 3 * HOUR);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let (at, alert) = &alerts[0];
    assert_eq!(
        *at,
        last + 930 * SEC,
        "first tick more than 900 s after the last event"
    );
    assert_eq!(alert.rule, RuleId::SilentSource);
    assert_eq!(alert.severity, crate::model::Severity::Medium);
    assert_eq!(alert.organization_id.as_deref(), Some("clinic-1"));
    assert_eq!(alert.principal_id, None);
    assert_eq!(alert.triggering_event_ids, ["e39"]);
    assert_eq!(alert.window_start_micros, last);
    assert_eq!(alert.at_micros, *at);
    assert_eq!(alert.details["limitSecs"], 900);
    assert_eq!(alert.details["usualGapSecs"], 60);
    // The source comes back, then goes silent again: a new alert.
    let back = last + 4 * HOUR;
    feed.observe(event("fhir.patient.read", "dr-ana", back));
    assert!(tick_until(&mut feed.engine, back, back + 10 * MIN).is_empty());
    let again = tick_until(&mut feed.engine, back + 10 * MIN, back + 30 * DAY);
    assert_eq!(again.len(), 1);
    // The 4 h gap raised the usual gap (weight 1/8): 60 s + (14 400 s - 60 s) / 8 = 1852.5 s,
    // so the limit is 10 × that.
    assert_eq!(again[0].1.details["limitSecs"], 18_525);
}

#[test]
fn silent_source_keyed_by_principal_and_bursts() {
    let mut feed = Feed::new(only(|c| {
        c.silent_source.enabled = true;
        c.silent_source.key = SourceKey::PrincipalId;
    }));
    // A batch of 50 events every hour for 5 hours: the usual gap is an hour, not milliseconds.
    for hour in 0..5 {
        for i in 0..50 {
            feed.observe(event(
                "batch.item",
                "svc-lab",
                MONDAY + hour * HOUR + i * 1_000,
            ));
        }
    }
    let last = MONDAY + 4 * HOUR;
    assert!(tick_until(&mut feed.engine, last, last + 9 * HOUR).is_empty());
    let alerts = tick_until(&mut feed.engine, last + 9 * HOUR, last + 11 * HOUR);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].1.principal_id.as_deref(), Some("svc-lab"));
    assert_eq!(alerts[0].1.organization_id, None);
}

#[test]
fn silent_source_with_too_few_events_never_alerts() {
    let mut feed = Feed::new(silent_only());
    for i in 0..19 {
        feed.observe(event("a", "p", MONDAY + i * MIN));
    }
    assert!(tick_until(&mut feed.engine, MONDAY, MONDAY + 3 * DAY).is_empty());
    // Twenty events in one burst have no usual gap either.
    let mut feed = Feed::new(silent_only());
    for i in 0..20 {
        feed.observe(event("a", "p", MONDAY + i));
    }
    assert!(tick_until(&mut feed.engine, MONDAY, MONDAY + 3 * DAY).is_empty());
}

#[test]
fn silence_clocks_restart_after_a_restore() {
    let mut feed = Feed::new(silent_only());
    for i in 0..30 {
        feed.observe(event("a", "p", MONDAY + i * MIN));
    }
    let snapshot = feed.engine.snapshot();
    // The server was down for a day: no source could send. The first tick after the restore
    // starts the clocks; only a silence after it alerts.
    let mut engine = Engine::restore(silent_only(), snapshot);
    let up = MONDAY + DAY;
    assert!(tick_until(&mut engine, up, up + 900 * SEC).is_empty());
    assert_eq!(
        tick_until(&mut engine, up + 900 * SEC, up + 2 * HOUR).len(),
        1
    );
}

// ---------------------------------------------------------------- snapshot, replay, bounds

#[test]
fn snapshot_restore_in_the_middle_of_a_window() {
    let config = DetectionConfig::default();
    let mut feed = Feed::new(config.clone());
    assert!(
        feed.observe_all((0..4).map(|i| login_failure("carol", MONDAY + 10 * HOUR + i * SEC)))
            .is_empty()
    );
    let text = serde_json::to_string(&feed.engine.snapshot()).expect("serializes");
    let snapshot: EngineSnapshot = serde_json::from_str(&text).expect("parses");
    assert_eq!(snapshot.version, SNAPSHOT_VERSION);
    assert_eq!(snapshot.positions.get("default"), Some(&3));
    assert_eq!(snapshot, feed.engine.snapshot());
    let restored = Engine::restore(config, snapshot);
    assert_eq!(restored.position("default"), Some(3));
    assert_eq!(restored.snapshot(), feed.engine.snapshot());
    feed.engine = restored;
    assert!(
        feed.observe(login_failure("carol", MONDAY + 10 * HOUR + 4 * SEC))
            .is_empty()
    );
    let alerts = feed.observe(login_failure("carol", MONDAY + 10 * HOUR + 5 * SEC));
    assert_eq!(rules(&alerts), [RuleId::FailedLogins]);
    assert_eq!(
        alerts[0].triggering_event_ids,
        ["e0", "e1", "e2", "e3", "e4", "e5"]
    );
}

#[test]
fn restore_keeps_what_still_applies() {
    let mut feed = Feed::new(DetectionConfig::default());
    feed.observe_all((0..5).map(|i| login_failure("a", MONDAY + 10 * HOUR + i * SEC)));
    feed.observe_all((0..3).map(|i| {
        located(
            "a",
            MONDAY + 10 * HOUR + i * SEC,
            &format!("10.0.0.{i}"),
            None,
        )
    }));
    feed.observe(ObservedEvent {
        emergency_access: true,
        ..phi("a", MONDAY + 10 * HOUR)
    });
    let snapshot = feed.engine.snapshot();
    // Lower threshold: the five kept failures are cut to three, and one more alerts.
    let mut config = DetectionConfig::default();
    config.failed_logins.threshold = 2;
    config.break_glass.enabled = false;
    config.new_location.remember = 1;
    let mut engine = Engine::restore(config, snapshot.clone());
    let mut e = login_failure("a", MONDAY + 10 * HOUR + 6 * SEC);
    e.log_id = "default".into();
    e.seq = 100;
    e.id = "late".into();
    let alerts = engine.observe(&e);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].triggering_event_ids, ["e3", "e4", "late"]);
    let after = engine.snapshot();
    assert!(!after.cooldowns.contains_key(&RuleId::BreakGlass));
    assert!(snapshot.cooldowns.contains_key(&RuleId::BreakGlass));
    // A snapshot of another version keeps the positions only.
    let mut future = snapshot;
    future.version = 99;
    let engine = Engine::restore(DetectionConfig::default(), future);
    assert_eq!(engine.position("default"), Some(8));
    assert_eq!(engine.tracked_keys(), 0);
}

#[test]
fn replaying_observed_events_changes_nothing() {
    let events: Vec<ObservedEvent> = (0..8)
        .map(|i| {
            let mut e = login_failure("eve", MONDAY + i * SEC);
            e.log_id = "default".into();
            e.seq = i as u64;
            e.id = format!("e{i}");
            e.emergency_access = i == 3;
            e
        })
        .collect();
    let mut engine = Engine::new(DetectionConfig::default());
    let first: Vec<Alert> = events.iter().flat_map(|e| engine.observe(e)).collect();
    assert_eq!(rules(&first), [RuleId::BreakGlass, RuleId::FailedLogins]);
    let before = engine.snapshot();
    let second: Vec<Alert> = events.iter().flat_map(|e| engine.observe(e)).collect();
    assert!(second.is_empty(), "{second:?}");
    assert_eq!(engine.snapshot(), before);
    assert_eq!(engine.position("default"), Some(7));
    assert_eq!(engine.position("other"), None);
    // Another log's seq 0 is new.
    let mut other = events[0].clone();
    other.log_id = "org-2".into();
    engine.observe(&other);
    assert_eq!(engine.position("org-2"), Some(0));
}

#[test]
fn tracked_keys_stay_bounded() {
    let config = DetectionConfig {
        max_tracked_keys: 1_000,
        cooldown_secs: 0,
        ..DetectionConfig::default()
    };
    let mut feed = Feed::new(config);
    for i in 0..1_100 {
        let p = format!("user-{i}");
        let mut e = located(
            &p,
            MONDAY + i * SEC,
            &format!("10.1.{}.{}", i / 256, i % 256),
            Some("PT"),
        );
        e.classification = Some("PHI".into());
        e.organization_id = Some(format!("org-{i}"));
        e.emergency_access = true;
        e.injection = vec!["sql".into()];
        feed.observe(e.clone());
        e.action = "auth.login.failure".into();
        feed.observe(e.clone());
        e.action = "fhir.patient.export".into();
        feed.observe(e.clone());
        e.action = "integrity.verify.failure".into();
        e.redactions = vec!["/outcomeDescription".into()];
        e.free_text = vec![("/outcomeDescription".into(), "x [REDACTED]".into())];
        feed.observe(e);
        assert!(feed.engine.tracked_keys() <= 10 * 1_000);
    }
    assert_eq!(feed.engine.tracked_keys(), 10 * 1_000);
    // The most recent key is there, the oldest evicted.
    let snapshot = feed.engine.snapshot();
    assert!(snapshot.phi_volume.iter().any(|(k, _)| k == "user-1099"));
    assert!(!snapshot.phi_volume.iter().any(|(k, _)| k == "user-0"));
}

#[test]
fn alert_events_are_ignored_but_advance_the_position() {
    let mut feed = Feed::new(DetectionConfig::default());
    let alert_event = ObservedEvent {
        emergency_access: true,
        injection: vec!["script".into()],
        classification: Some("PHI".into()),
        ..event("security.alert.break_glass", "dr-ana", local(5, 3, 0, 0))
    };
    assert!(feed.observe(alert_event).is_empty());
    assert_eq!(feed.engine.position("default"), Some(0));
    assert_eq!(feed.engine.tracked_keys(), 0);
}

#[test]
fn disabled_detection_raises_nothing() {
    let config = DetectionConfig {
        enabled: false,
        ..DetectionConfig::default()
    };
    let mut feed = Feed::new(config);
    let glass = ObservedEvent {
        emergency_access: true,
        ..phi("dr-ana", MONDAY)
    };
    assert!(feed.observe(glass).is_empty());
    assert!(feed.engine.tick(MONDAY + DAY).is_empty());
    assert_eq!(feed.engine.position("default"), Some(0));
}

#[test]
fn extreme_inputs_do_not_panic() {
    let mut engine = Engine::new(DetectionConfig {
        cooldown_secs: 0,
        ..DetectionConfig::default()
    });
    let mut seq = 0;
    for t in [
        i64::MIN,
        i64::MAX,
        0,
        -1,
        i64::MIN + 1,
        i64::MAX - 1,
        MONDAY,
    ] {
        for r in [i64::MIN, i64::MAX, 0, MONDAY] {
            for records in [0, u64::MAX, 1] {
                let e = ObservedEvent {
                    id: String::new(),
                    log_id: String::new(),
                    seq,
                    action: "x.export".into(),
                    status: String::new(),
                    principal_id: Some(String::new()),
                    organization_id: Some(String::new()),
                    classification: Some("PHI".into()),
                    occurred_micros: t,
                    received_micros: r,
                    ip_address: Some(String::new()),
                    country: Some(String::new()),
                    emergency_access: true,
                    clinical_justification: None,
                    record_count: records,
                    redactions: vec![String::new(), "/outcomeDescription".into()],
                    free_text: vec![("/outcomeDescription".into(), String::new())],
                    injection: vec!["sql".into()],
                };
                seq += 1;
                engine.observe(&e);
                for now in [i64::MIN, i64::MAX, 0, t] {
                    engine.tick(now);
                }
            }
        }
    }
    let text = serde_json::to_string(&engine.snapshot()).expect("serializes");
    let snapshot: EngineSnapshot = serde_json::from_str(&text).expect("parses");
    let engine = Engine::restore(DetectionConfig::default(), snapshot);
    assert!(engine.tracked_keys() > 0);
}

// ---------------------------------------------------------------- configuration

#[test]
fn default_configuration_is_valid_and_matches_spec() {
    let c = DetectionConfig::default();
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(
        (c.failed_logins.threshold, c.failed_logins.window_secs),
        (5, 60)
    );
    assert_eq!(
        (c.phi_volume.threshold, c.phi_volume.window_secs),
        (50, 3_600)
    );
    assert_eq!(
        (c.export_volume.threshold, c.export_volume.window_secs),
        (10_000, 86_400)
    );
    assert_eq!(c.cooldown_secs, 300);
    assert_eq!(c.max_tracked_keys, 100_000);
}

#[test]
fn configuration_deserializes_partially_and_refuses_unknown_fields() {
    let c: DetectionConfig = serde_json::from_value(json!({
        "failedLogins": {"threshold": 3},
        "offHours": {"start": "08:00", "utcOffset": "-05:00"},
        "silentSource": {"key": "principalId"},
        "cooldownSecs": 60,
    }))
    .expect("valid");
    assert_eq!(c.failed_logins.threshold, 3);
    assert_eq!(c.failed_logins.window_secs, 60);
    assert_eq!(c.failed_logins.actions, ["auth.login.failure"]);
    assert_eq!(c.off_hours.end, "19:00");
    assert_eq!(c.silent_source.key, SourceKey::PrincipalId);
    assert_eq!(c.cooldown_secs, 60);
    assert!(c.validate().is_ok());
    let round: DetectionConfig =
        serde_json::from_value(serde_json::to_value(&c).expect("json")).expect("round trip");
    assert_eq!(round, c);
    for bad in [
        json!({"failedLogin": {}}),
        json!({"failedLogins": {"treshold": 5}}),
        json!({"silentSource": {"key": "ip"}}),
    ] {
        assert!(
            serde_json::from_value::<DetectionConfig>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn configuration_errors_name_the_field() {
    type Breaker = Box<dyn Fn(&mut DetectionConfig)>;
    let cases: Vec<(&str, Breaker)> = vec![
        (
            "detection.offHours.start: ",
            Box::new(|c| c.off_hours.start = "7am".into()),
        ),
        (
            "detection.offHours.start: ",
            Box::new(|c| c.off_hours.start = "24:00".into()),
        ),
        (
            "detection.offHours.end: ",
            Box::new(|c| c.off_hours.end = "19:60".into()),
        ),
        (
            "detection.offHours.end: ",
            Box::new(|c| c.off_hours.end = "9:00".into()),
        ),
        (
            "detection.offHours.days[1]: ",
            Box::new(|c| c.off_hours.days = vec!["mon".into(), "funday".into()]),
        ),
        (
            "detection.offHours.utcOffset: ",
            Box::new(|c| c.off_hours.utc_offset = "+3".into()),
        ),
        (
            "detection.offHours.utcOffset: ",
            Box::new(|c| c.off_hours.utc_offset = "+24:00".into()),
        ),
        (
            "detection.failedLogins.windowSecs: ",
            Box::new(|c| c.failed_logins.window_secs = 0),
        ),
        (
            "detection.failedLogins.threshold: ",
            Box::new(|c| c.failed_logins.threshold = 1 << 40),
        ),
        (
            "detection.failedLogins.actions[0]: ",
            Box::new(|c| c.failed_logins.actions = vec!["*".into()]),
        ),
        (
            "detection.phiVolume.windowSecs: ",
            Box::new(|c| c.phi_volume.window_secs = 0),
        ),
        (
            "detection.exportVolume.windowSecs: ",
            Box::new(|c| c.export_volume.window_secs = u64::MAX),
        ),
        (
            "detection.exportVolume.actions[1]: ",
            Box::new(|c| c.export_volume.actions = vec!["a".into(), " ".into()]),
        ),
        (
            "detection.integrity.actions[0]: ",
            Box::new(|c| c.integrity.actions = vec![String::new()]),
        ),
        (
            "detection.dlp.patterns[1]: ",
            Box::new(|c| c.dlp.patterns = vec!["ok".into(), "(unclosed".into()]),
        ),
        (
            "detection.dlp.patterns[0]: ",
            Box::new(|c| c.dlp.patterns = vec![String::new()]),
        ),
        (
            "detection.newLocation.remember: ",
            Box::new(|c| c.new_location.remember = 0),
        ),
        (
            "detection.maxTrackedKeys: ",
            Box::new(|c| c.max_tracked_keys = 0),
        ),
        (
            "detection.silentSource.minEvents: ",
            Box::new(|c| c.silent_source.min_events = 1),
        ),
        (
            "detection.silentSource.silenceFactor: ",
            Box::new(|c| c.silent_source.silence_factor = f64::NAN),
        ),
        (
            "detection.silentSource.silenceFactor: ",
            Box::new(|c| c.silent_source.silence_factor = 0.0),
        ),
        (
            "detection.silentSource.minSilenceSecs: ",
            Box::new(|c| c.silent_source.min_silence_secs = 0),
        ),
        (
            "detection.silentSource.maxSilenceSecs: ",
            Box::new(|c| c.silent_source.max_silence_secs = 10),
        ),
        (
            "detection.cooldownSecs: ",
            Box::new(|c| c.cooldown_secs = u64::MAX),
        ),
    ];
    for (prefix, break_it) in cases {
        let mut c = DetectionConfig::default();
        break_it(&mut c);
        let err = c.validate().expect_err(prefix);
        assert!(err.to_string().starts_with(prefix), "{prefix} vs {err}");
        // An engine built from it anyway does not panic.
        let mut engine = Engine::new(c);
        engine.observe(&ObservedEvent {
            classification: Some("PHI".into()),
            ..login_failure("a", MONDAY)
        });
    }
    let mut ok = DetectionConfig::default();
    ok.off_hours.end = "24:00".into();
    ok.off_hours.start = "00:00".into();
    ok.off_hours.utc_offset = "Z".into();
    ok.off_hours.days = vec!["MON".into(), "Sunday".into()];
    assert_eq!(ok.validate(), Ok(()));
}

#[test]
fn working_hours_arithmetic() {
    let hours = |start: &str, end: &str| {
        config::WorkingHours::compile(&OffHours {
            start: start.into(),
            end: end.into(),
            ..OffHours::default()
        })
        .expect("valid")
    };
    let all_day = hours("00:00", "24:00");
    assert!(all_day.is_working(local(0, 0, 0, 0)) && all_day.is_working(local(0, 23, 59, 0)));
    assert!(!all_day.is_working(local(5, 12, 0, 0)));
    // 24-hour shift from 07:00 Monday to 07:00 Tuesday, … Friday to Saturday 07:00.
    let shift = hours("07:00", "07:00");
    assert!(shift.is_working(local(5, 6, 59, 0)));
    assert!(!shift.is_working(local(5, 7, 0, 0)));
    assert!(!shift.is_working(local(0, 6, 59, 0)));
    // Before 1970 and at the extremes: no panic.
    for t in [i64::MIN, i64::MAX, -1, 0] {
        let _ = shift.is_working(t);
    }
    assert_eq!(shift.local(0), (3, 0), "1970-01-01 was a Thursday");
    assert_eq!(shift.describe(), "Mon–Fri 07:00–07:00");
}

// ---------------------------------------------------------------- RuleId and Alert

#[test]
fn rule_names_round_trip() {
    for rule in RuleId::ALL {
        assert_eq!(RuleId::parse(rule.as_str()), Some(rule));
        assert_eq!(rule.action(), format!("security.alert.{}", rule.as_str()));
        assert_eq!(
            serde_json::to_value(rule).expect("json"),
            json!(rule.as_str())
        );
    }
    assert_eq!(RuleId::parse("nope"), None);
    assert_eq!(
        RuleId::FailedLogins.action(),
        "security.alert.failed_logins"
    );
}

fn pipeline() -> Pipeline {
    let redactor = Redactor::new(&RedactionConfig::default(), b"token-key-for-tests").expect("ok");
    Pipeline::new(ValidationConfig::default(), redactor)
}

/// One alert of every rule, from one engine with every rule on.
fn one_alert_of_each_rule() -> Vec<Alert> {
    let mut config = DetectionConfig::default();
    config.dlp.patterns = vec!["secret-project".into()];
    let mut feed = Feed::new(config);
    let mut alerts = Vec::new();
    let id = |i: u64| uuid_v7(1_795_392_000_000 + i, i);
    let mut n = 0;
    let mut next = |mut e: ObservedEvent| {
        n += 1;
        e.id = id(n);
        e
    };
    let night = local(5, 3, 0, 0);
    for i in 0..6 {
        alerts.extend(feed.observe(next(login_failure("dr-ana@clinic.org", night + i * SEC))));
    }
    for i in 0..51 {
        alerts.extend(feed.observe(next(phi("dr-bob", night + i * SEC))));
    }
    for i in 0..6 {
        alerts.extend(feed.observe(next(located(
            "dr-carl",
            night + i * SEC,
            &format!("192.168.10.{i}"),
            Some("PT"),
        ))));
    }
    alerts.extend(feed.observe(next(export("dr-dan", night, 20_000))));
    alerts.extend(feed.observe(next(ObservedEvent {
        redactions: vec!["/details/note".into()],
        free_text: vec![(
            "/details/note".into(),
            "the secret-project plan, SSN tok:0123456789abcdef".into(),
        )],
        ..event("note.write", "dr-eve", night)
    })));
    alerts.extend(feed.observe(next(event("integrity.verify.failure", "admin", night))));
    alerts.extend(feed.observe(next(ObservedEvent {
        injection: vec!["script".into(), "sql".into()],
        principal_id: None,
        ip_address: Some("203.0.113.66".into()),
        ..event("search.run", "", night)
    })));
    alerts.extend(feed.observe(next(ObservedEvent {
        emergency_access: true,
        ..event("fhir.patient.read", "dr-fay", night)
    })));
    for i in 0..30 {
        let mut e = next(event("heartbeat", "svc", night + i * MIN));
        e.organization_id = Some("org-quiet".into());
        feed.observe(e);
    }
    let now = night + 29 * MIN;
    for (_, alert) in tick_until(&mut feed.engine, now, now + HOUR) {
        alerts.push(alert);
    }
    alerts
}

#[test]
fn every_rule_raises_in_one_engine() {
    let alerts = one_alert_of_each_rule();
    let mut seen: Vec<RuleId> = alerts.iter().map(|a| a.rule).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, RuleId::ALL.to_vec(), "{alerts:#?}");
}

#[test]
fn alert_events_pass_the_server_pipeline() {
    let pipeline = pipeline();
    let now = crate::time_fmt::parse_rfc3339("2026-11-28T03:00:00Z").expect("valid");
    for alert in one_alert_of_each_rule() {
        let event = alert.to_event();
        assert_eq!(event["action"], alert.rule.action());
        assert_eq!(event["status"], "warning");
        assert_eq!(event["severity"], alert.severity.as_str());
        assert_eq!(event["dataClassification"], "CONFIDENTIAL");
        assert_eq!(event["outcomeDescription"], alert.description.as_str());
        assert!(event.get("principalType").is_none());
        let details = &event["details"];
        assert_eq!(details["rule"], alert.rule.as_str());
        assert_eq!(
            details["triggeringEventIds"],
            json!(alert.triggering_event_ids)
        );
        assert!(
            details["windowStart"]
                .as_str()
                .is_some_and(|s| s.ends_with('Z'))
        );
        let len = serde_json::to_string(&event).expect("json").len();
        let prepared = pipeline
            .prepare(event, len, now)
            .unwrap_or_else(|e| panic!("{}: {e:?}", alert.rule));
        // Nothing in an alert is mistaken for sensitive data by the default redaction rules
        // (the addresses, the RFC 3339 times and the event ids in particular).
        assert!(
            prepared.redactions.is_empty(),
            "{}: {:?}",
            alert.rule,
            prepared.redactions
        );
        // An alert event observed again is ignored.
        let stored = json!({"id": "x", "logId": "l", "seq": 0, "action": alert.rule.action(), "status": "warning"});
        let observed = ObservedEvent::from_stored(&stored).expect("complete");
        assert!(
            Engine::new(DetectionConfig::default())
                .observe(&observed)
                .is_empty()
        );
    }
}

/// A UUIDv7 with deterministic random bits.
fn uuid_v7(millis: u64, seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes = [0u8; 10];
    for b in &mut bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[0];
    }
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// A UUID whose dash-joined digit groups happen to form a Luhn-valid 13–19 digit run
/// (`…b6-5489-7659-8416-6bb4…`, about 0.3 % of UUIDv7 texts) is not a card number: its end
/// groups touch hex letters. Regression test for the card scan of `redact.rs`.
#[test]
fn uuids_in_alert_details_survive_default_redaction() {
    let mut alert = one_alert_of_each_rule().remove(0);
    alert.triggering_event_ids = vec!["01a205b6-5489-7659-8416-6bb406c83d25".into()];
    let event = alert.to_event();
    let prepared = pipeline()
        .prepare(event, 0, time::OffsetDateTime::UNIX_EPOCH)
        .expect("valid");
    assert_eq!(prepared.redactions, Vec::<String>::new());
}

#[test]
fn alert_window_times_are_rfc3339() {
    assert_eq!(
        alert::format_micros(MONDAY + 1),
        "2026-11-23T00:00:00.000001Z"
    );
    assert_eq!(
        alert::format_micros(i64::MIN),
        "0000-01-01T00:00:00.000000Z"
    );
    assert_eq!(
        alert::format_micros(i64::MAX),
        "9999-12-31T23:59:59.999999Z"
    );
    assert_eq!(alert::human_secs(60), "60 s");
    assert_eq!(alert::human_secs(900), "15 min");
    assert_eq!(alert::human_secs(930), "15 min 30 s");
    assert_eq!(alert::human_secs(3_600), "1 h");
    assert_eq!(alert::human_secs(3_660), "1 h 1 min");
    assert_eq!(alert::human_secs(86_400), "24 h");
    assert_eq!(alert::human_secs(172_800), "2 d");
    assert_eq!(alert::human_secs(180_000), "2 d 2 h");
}

// ---------------------------------------------------------------- from_stored

#[test]
fn from_stored_reads_the_facts() {
    let stored = stored(json!({
        "principalId": "dr-ana", "organizationId": "clinic-1", "dataClassification": "PHI",
        "outcomeDescription": "read chart",
        "sessionContext": {"ipAddress": "10.0.0.7", "geolocation": {"country": "PT", "city": "Porto"}},
        "healthcareContext": {"emergencyAccess": true, "clinicalJustification": "ER admission"},
        "details": {"recordCount": 250, "nested": {"a/b": ["x", 1, {"c~d": "y"}]}, "flag": true},
        "changes": {"newValues": {"note": "z"}},
        "redactions": ["/details/ssn"],
    }));
    let e = ObservedEvent::from_stored(&stored).expect("complete");
    assert_eq!(e.id, "0190f5e2-0000-7000-8000-00000000000a");
    assert_eq!((e.log_id.as_str(), e.seq), ("default", 7));
    assert_eq!(
        (e.action.as_str(), e.status.as_str()),
        ("search.run", "success")
    );
    assert_eq!(e.principal_id.as_deref(), Some("dr-ana"));
    assert_eq!(e.organization_id.as_deref(), Some("clinic-1"));
    assert!(e.is_phi());
    assert_eq!(e.occurred_micros, MONDAY + 10 * HOUR - SEC / 2);
    assert_eq!(e.received_micros, MONDAY + 10 * HOUR + 1);
    assert_eq!(e.ip_address.as_deref(), Some("10.0.0.7"));
    assert_eq!(e.country.as_deref(), Some("PT"));
    assert!(e.emergency_access);
    assert_eq!(e.clinical_justification.as_deref(), Some("ER admission"));
    assert_eq!(e.record_count, 250);
    assert_eq!(e.redactions, ["/details/ssn"]);
    let pointers: Vec<&str> = e.free_text.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        pointers,
        [
            "/outcomeDescription",
            "/healthcareContext/clinicalJustification",
            "/details/nested/a~1b/0",
            "/details/nested/a~1b/2/c~0d",
            "/changes/newValues/note",
        ]
    );
    assert!(e.injection.is_empty());
    // A geolocation string is the location itself; a missing timestamp falls back to receivedAt;
    // a recordCount that is not a non-negative integer counts as 1.
    let mut other = stored.clone();
    other["sessionContext"]["geolocation"] = json!("Lisbon, PT");
    if let Some(map) = other.as_object_mut() {
        map.remove("timestamp");
    }
    other["details"]["recordCount"] = json!(-5);
    let e = ObservedEvent::from_stored(&other).expect("complete");
    assert_eq!(e.country.as_deref(), Some("Lisbon, PT"));
    assert_eq!(e.occurred_micros, e.received_micros);
    assert_eq!(e.record_count, 1);
}

#[test]
fn from_stored_refuses_incomplete_events() {
    for key in ["id", "logId", "seq", "action", "status"] {
        let mut event = stored(json!({}));
        if let Some(map) = event.as_object_mut() {
            map.remove(key);
        }
        assert_eq!(ObservedEvent::from_stored(&event), None, "{key}");
    }
    let mut event = stored(json!({}));
    event["seq"] = json!(-1);
    assert_eq!(ObservedEvent::from_stored(&event), None);
    assert_eq!(ObservedEvent::from_stored(&json!([1])), None);
    assert_eq!(ObservedEvent::from_stored(&json!(null)), None);
}

#[test]
fn from_stored_bounds_free_text() {
    let many: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
    let long = "é".repeat(3_000); // 6000 bytes
    let event = stored(json!({"outcomeDescription": long, "details": {"many": many}}));
    let e = ObservedEvent::from_stored(&event).expect("complete");
    assert_eq!(e.free_text.len(), MAX_FREE_TEXT_STRINGS);
    assert_eq!(e.free_text[0].1.len(), MAX_FREE_TEXT_BYTES);
    assert_eq!(e.free_text[1], ("/details/many/0".into(), "s0".into()));
    // Deeply nested: bounded, no stack overflow.
    let mut deep = json!("bottom");
    for _ in 0..200 {
        deep = json!({"d": deep});
    }
    let e = ObservedEvent::from_stored(&stored(json!({"details": deep}))).expect("complete");
    assert!(e.free_text.is_empty());
}

/// `from_stored_text` (the detection thread's, over a tree borrowed from the text) reads
/// the same facts as `from_stored` over a `Value` parsed from the same stored text.
#[test]
fn from_stored_text_reads_what_from_stored_reads() {
    let cases = [
        stored(json!({
            "principalId": "dr-ana", "organizationId": "clinic-1", "dataClassification": "PHI",
            "outcomeDescription": "read chart <script>alert(1)</script>",
            "sessionContext": {"ipAddress": "10.0.0.7", "geolocation": {"countryCode": "PT"}},
            "healthcareContext": {"emergencyAccess": true, "clinicalJustification": "ER"},
            "details": {"recordCount": 250, "q\"uote": "1' OR '1'='1", "n": [1.5, -2, null, true],
                        "nested": {"a/b": ["x\u{1}", 1, {"c~d": "y\n\u{2028}é😀"}]}},
            "changes": {"newValues": {"note": "z"}}, "redactions": ["/details/ssn", 5],
        })),
        stored(json!({"details": {"recordCount": 1e3}, "sessionContext": {"geolocation": " "}})),
        stored(json!({"details": {"recordCount": 18446744073709551615u64}, "seq": 0})),
        stored(json!({"healthcareContext": "not an object", "sessionContext": [1]})),
        stored(json!({"details": {"many": (0..80).map(|i| format!("s{i}")).collect::<Vec<_>>()}})),
        json!({"id": "x", "logId": "l", "seq": 1, "action": "a"}),
        json!([1, 2]),
    ];
    for value in cases {
        let text = crate::canonical::to_canonical_string(&value);
        assert_eq!(
            ObservedEvent::from_stored_text(&text),
            from_value_of(&text),
            "{text}"
        );
    }
    assert_eq!(ObservedEvent::from_stored_text("{not json"), None);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// The same, over arbitrary `details` and `changes` (names and strings from a set that
    /// includes escapes, pointer characters and injection patterns).
    #[test]
    fn from_stored_text_agrees_on_arbitrary_details(details in arb_detail(), changes in arb_detail()) {
        let value = stored(json!({"details": details, "changes": changes}));
        let text = crate::canonical::to_canonical_string(&value);
        proptest::prop_assert_eq!(ObservedEvent::from_stored_text(&text), from_value_of(&text));
    }
}

/// What detection read before `from_stored_text`: the text parsed into a `Value`.
fn from_value_of(text: &str) -> Option<ObservedEvent> {
    ObservedEvent::from_stored(&serde_json::from_str::<Value>(text).ok()?)
}

fn arb_detail() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let word = prop_oneof![
        Just("recordCount".to_owned()),
        Just("a/b~c".to_owned()),
        Just("q\"x\\".to_owned()),
        Just("<script>x</script>".to_owned()),
        Just("1; DROP TABLE t".to_owned()),
        Just("é\u{1}\n".to_owned()),
        "[a-z]{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        word.clone().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(word.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn fast_timestamp_parsing_agrees_with_the_time_crate() {
    for text in [
        "2026-11-23T09:01:02.123456Z",
        "2026-11-23T09:01:02Z",
        "2026-11-23T09:01:02.1Z",
        "2026-11-23T09:01:02.123456789Z",
        "2024-02-29T23:59:59.999999Z",
        "1970-01-01T00:00:00Z",
        "2000-03-01T00:00:00Z",
        "2100-12-31T12:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "1969-12-31T23:59:59.5Z",
    ] {
        let expected =
            crate::time_fmt::unix_micros(crate::time_fmt::parse_rfc3339(text).expect(text));
        assert_eq!(event::parse_micros(text), Some(expected), "{text}");
    }
    assert_eq!(
        event::parse_micros("2026-11-23T10:01:02.5+01:00"),
        event::parse_micros("2026-11-23T09:01:02.5Z")
    );
    for bad in [
        "2026-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-11-23T24:00:00Z",
        "2026-11-23T09:01:02.Z",
        "x",
        "",
    ] {
        assert_eq!(event::parse_micros(bad), None, "{bad}");
    }
}

// ---------------------------------------------------------------- property

mod property {
    use super::*;
    use proptest::prelude::*;

    fn arbitrary_event() -> impl Strategy<Value = ObservedEvent> {
        (
            0usize..6,
            0u8..4,
            -3_600i64..3_600,
            -120i64..120,
            0u64..5_000,
            any::<bool>(),
            0u8..5,
        )
            .prop_map(|(who, kind, dt, skew, records, glass, ip)| {
                let action = [
                    "auth.login.failure",
                    "fhir.patient.read",
                    "x.export",
                    "integrity.verify.failure",
                ][kind as usize];
                ObservedEvent {
                    action: action.into(),
                    principal_id: (who > 0).then(|| format!("p{who}")),
                    classification: (kind == 1).then(|| "PHI".into()),
                    occurred_micros: MONDAY + dt * SEC,
                    received_micros: MONDAY + (dt + skew) * SEC,
                    ip_address: (ip > 0).then(|| format!("10.0.0.{ip}")),
                    record_count: records,
                    emergency_access: glass,
                    ..ObservedEvent::default()
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random mixes in random time order: no panic, keys bounded, replay silent, and a
        /// snapshot restores to the same state.
        #[test]
        fn random_streams_keep_the_invariants(events in proptest::collection::vec(arbitrary_event(), 1..200)) {
            let config = DetectionConfig { max_tracked_keys: 3, ..DetectionConfig::default() };
            let mut engine = Engine::new(config.clone());
            let mut stamped = Vec::new();
            for (i, mut e) in events.into_iter().enumerate() {
                e.log_id = "l".into();
                e.seq = i as u64;
                e.id = format!("e{i}");
                for alert in engine.observe(&e) {
                    prop_assert!(alert.triggering_event_ids.len() <= MAX_TRIGGERING_IDS);
                    prop_assert!(alert.window_start_micros <= alert.window_end_micros);
                }
                prop_assert!(engine.tracked_keys() <= 10 * 3);
                stamped.push(e);
            }
            engine.tick(MONDAY + DAY);
            let before = engine.snapshot();
            for e in &stamped {
                prop_assert!(engine.observe(e).is_empty());
            }
            prop_assert_eq!(&engine.snapshot(), &before);
            let restored = Engine::restore(config, before.clone());
            prop_assert_eq!(restored.snapshot(), before);
        }
    }
}

#[test]
fn engine_and_snapshot_can_move_to_the_detection_thread() {
    fn send<T: Send + 'static>() {}
    send::<Engine>();
    send::<EngineSnapshot>();
    send::<Alert>();
}
