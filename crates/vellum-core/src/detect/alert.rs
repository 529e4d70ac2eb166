//! [`RuleId`] and [`Alert`]: what a rule raises, and the audit event it becomes.

use crate::model::Severity;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The detection rules, by their stable names (`failed_logins`, …), which appear in alert
/// actions (`security.alert.failed_logins`), in `GET /v1/alerts?rule=` and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleId {
    /// Repeated failed logins.
    FailedLogins,
    /// Bulk PHI access.
    PhiVolume,
    /// PHI access outside working hours.
    OffHours,
    /// Access from a new address or location.
    NewLocation,
    /// Large exports.
    ExportVolume,
    /// Sensitive data in free text.
    Dlp,
    /// Integrity verification failures.
    Integrity,
    /// Injection-looking input.
    Injection,
    /// Emergency (break-glass) access.
    BreakGlass,
    /// A usually active source gone silent.
    SilentSource,
}

/// The action prefix of every alert event; events with it are never observed by the rules
/// (alerts must not raise alerts).
pub(super) const ALERT_ACTION_PREFIX: &str = "security.alert.";

impl RuleId {
    /// Every rule, in the order the engine runs them.
    pub const ALL: [RuleId; 10] = [
        Self::FailedLogins,
        Self::PhiVolume,
        Self::OffHours,
        Self::NewLocation,
        Self::ExportVolume,
        Self::Dlp,
        Self::Integrity,
        Self::Injection,
        Self::BreakGlass,
        Self::SilentSource,
    ];

    /// The rule's name, `snake_case`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailedLogins => "failed_logins",
            Self::PhiVolume => "phi_volume",
            Self::OffHours => "off_hours",
            Self::NewLocation => "new_location",
            Self::ExportVolume => "export_volume",
            Self::Dlp => "dlp",
            Self::Integrity => "integrity",
            Self::Injection => "injection",
            Self::BreakGlass => "break_glass",
            Self::SilentSource => "silent_source",
        }
    }

    /// The action of this rule's alert events, `security.alert.<rule>`.
    pub fn action(self) -> String {
        format!("{ALERT_ACTION_PREFIX}{}", self.as_str())
    }

    /// Parses a rule name (as [`RuleId::as_str`] spells it).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// How serious this rule's alerts are: integrity failures are critical (the evidence
    /// itself is in doubt); off-hours, new-location and silent-source alerts are medium (often
    /// innocent); the rest high.
    pub fn severity(self) -> Severity {
        match self {
            Self::Integrity => Severity::Critical,
            Self::OffHours | Self::NewLocation | Self::SilentSource => Severity::Medium,
            Self::FailedLogins
            | Self::PhiVolume
            | Self::ExportVolume
            | Self::Dlp
            | Self::Injection
            | Self::BreakGlass => Severity::High,
        }
    }
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert raised by a rule. The caller appends it to the log as an audit event
/// ([`Alert::to_event`]), so alerts are as tamper-evident as what they are about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// The rule that raised it.
    pub rule: RuleId,
    /// The rule's severity ([`RuleId::severity`]).
    pub severity: Severity,
    /// The principal concerned, if the rule's key is one.
    pub principal_id: Option<String>,
    /// The organization of the (newest) triggering event, so access control scopes the alert.
    pub organization_id: Option<String>,
    /// One human sentence, e.g. `6 failed logins for dr-ana within 60 s`.
    pub description: String,
    /// Ids of the events that made the alert, oldest first (at most
    /// [`MAX_TRIGGERING_IDS`](super::MAX_TRIGGERING_IDS), the most recent ones).
    pub triggering_event_ids: Vec<String>,
    /// Event time of the oldest triggering event, Unix µs.
    pub window_start_micros: i64,
    /// Event time of the newest triggering event (tick time for `silent_source`), Unix µs.
    pub window_end_micros: i64,
    /// Rule-specific facts (count, threshold, address, pattern index, …); never the sensitive
    /// text that was matched.
    pub details: Map<String, Value>,
    /// When it was raised: the triggering event's time, or the tick time for `silent_source`.
    pub at_micros: i64,
}

impl Alert {
    /// The audit event to append for this alert: action `security.alert.<rule>`, status
    /// `warning`, the rule's severity, the principal and organization when known,
    /// classification `CONFIDENTIAL` (alerts name people and addresses), the description as
    /// `outcomeDescription`, and `details` = `{rule, triggeringEventIds, windowStart, windowEnd,
    /// …rule-specific facts}` with RFC 3339 times. It is a valid client event: the server runs
    /// it through its ordinary pipeline.
    pub fn to_event(&self) -> Value {
        let mut details = Map::new();
        details.insert("rule".into(), Value::String(self.rule.as_str().into()));
        details.insert(
            "triggeringEventIds".into(),
            Value::Array(
                self.triggering_event_ids
                    .iter()
                    .map(|id| Value::String(id.clone()))
                    .collect(),
            ),
        );
        details.insert(
            "windowStart".into(),
            Value::String(format_micros(self.window_start_micros)),
        );
        details.insert(
            "windowEnd".into(),
            Value::String(format_micros(self.window_end_micros)),
        );
        for (key, value) in &self.details {
            if !details.contains_key(key) {
                details.insert(key.clone(), value.clone());
            }
        }
        let mut event = Map::new();
        event.insert("action".into(), Value::String(self.rule.action()));
        event.insert("status".into(), Value::String("warning".into()));
        event.insert(
            "severity".into(),
            Value::String(self.severity.as_str().into()),
        );
        if let Some(principal) = &self.principal_id {
            event.insert("principalId".into(), Value::String(principal.clone()));
        }
        if let Some(org) = &self.organization_id {
            event.insert("organizationId".into(), Value::String(org.clone()));
        }
        event.insert(
            "dataClassification".into(),
            Value::String("CONFIDENTIAL".into()),
        );
        event.insert(
            "outcomeDescription".into(),
            Value::String(self.description.clone()),
        );
        event.insert("details".into(), Value::Object(details));
        Value::Object(event)
    }
}

/// RFC 3339 (the server's form) of Unix microseconds, clamped to years 0–9999.
pub(super) fn format_micros(micros: i64) -> String {
    const MIN: i64 = -62_167_219_200_000_000; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z
    let nanos = i128::from(micros.clamp(MIN, MAX)) * 1_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(at) => crate::time_fmt::format_server_time(at),
        Err(_) => "1970-01-01T00:00:00.000000Z".to_owned(),
    }
}

/// A duration in words: `60 s`, `15 min`, `1 h`, `2 d`, `1 h 5 min`.
pub(super) fn human_secs(secs: u64) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 3_600;
    const DAY: u64 = 86_400;
    match secs {
        s if s < 2 * MIN => format!("{s} s"),
        s if s < HOUR => match s % MIN {
            0 => format!("{} min", s / MIN),
            r => format!("{} min {r} s", s / MIN),
        },
        s if s < 2 * DAY => match (s % HOUR) / MIN {
            0 => format!("{} h", s / HOUR),
            m => format!("{} h {m} min", s / HOUR),
        },
        s => match (s % DAY) / HOUR {
            0 => format!("{} d", s / DAY),
            h => format!("{} d {h} h", s / DAY),
        },
    }
}

/// [`human_secs`] of microseconds (negative counts as zero).
pub(super) fn human_micros(micros: i64) -> String {
    human_secs(u64::try_from(micros / 1_000_000).unwrap_or(0))
}
