//! Which events a sink forwards.
//!
//! A [`SinkFilter`] is part of a sink's configuration (JSON/TOML, camelCase, unknown keys
//! refused so that a typo does not silently widen a filter). An event passes when it passes
//! every condition that is set; an empty filter passes everything.
//!
//! | condition | passes when | an event without the field |
//! | --- | --- | --- |
//! | `actions` (patterns) | empty, or `action` equals a pattern, or starts with a pattern's text before its trailing `*` (`*` alone matches every action) | fails a non-empty list |
//! | `classifications` | empty, or `dataClassification` is listed | counts as `INTERNAL`, the SPEC §2 default |
//! | `minSeverity` | unset, or the event's severity ≥ it (low < medium < high < critical) | gets the severity the server would derive ([`Severity::derive`]) |
//! | `alertsOnly` | false, or `action` starts with `security.alert.` | fails |
//! | `organizations` | empty, or `organizationId` is listed | fails a non-empty list |
//!
//! Matching is exact and case-sensitive, as stored values are.

use crate::model::{DataClassification, Severity};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The action prefix of the alerts the detection rules raise (SPEC §8).
pub const ALERT_PREFIX: &str = "security.alert.";

/// Which events a sink forwards (semantics in the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SinkFilter {
    /// Action patterns; a trailing `*` makes a prefix. Empty: every action.
    pub actions: Vec<String>,
    /// Data classifications (`PUBLIC`, `INTERNAL`, `CONFIDENTIAL`, `PHI`). Empty: all.
    pub classifications: Vec<String>,
    /// Lowest severity forwarded. `None`: all.
    pub min_severity: Option<Severity>,
    /// Only alerts raised by the detection rules (`security.alert.*`).
    pub alerts_only: bool,
    /// Organizations (`organizationId`). Empty: all, and events without an organization too.
    pub organizations: Vec<String>,
}

fn pattern_matches(pattern: &str, action: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => action.starts_with(prefix),
        None => action == pattern,
    }
}

/// Whether some action that starts with `security.alert.` can match `pattern`.
fn pattern_can_match_alert(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => prefix.starts_with(ALERT_PREFIX) || ALERT_PREFIX.starts_with(prefix),
        None => pattern.starts_with(ALERT_PREFIX),
    }
}

fn event_severity(event: &Value) -> Severity {
    let parsed = event
        .get("severity")
        .cloned()
        .and_then(|s| serde_json::from_value::<Severity>(s).ok());
    parsed.unwrap_or_else(|| {
        let text = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or("");
        let emergency = event
            .pointer("/healthcareContext/emergencyAccess")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Severity::derive(text("action"), text("status"), emergency)
    })
}

impl SinkFilter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Value) -> bool {
        let action = event.get("action").and_then(Value::as_str);
        if !self.actions.is_empty()
            && !action.is_some_and(|a| self.actions.iter().any(|p| pattern_matches(p, a)))
        {
            return false;
        }
        if self.alerts_only && !action.is_some_and(|a| a.starts_with(ALERT_PREFIX)) {
            return false;
        }
        if !self.classifications.is_empty() {
            let classification = event
                .get("dataClassification")
                .and_then(Value::as_str)
                .unwrap_or(DataClassification::Internal.as_str());
            if !self.classifications.iter().any(|c| c == classification) {
                return false;
            }
        }
        if let Some(min) = self.min_severity
            && event_severity(event) < min
        {
            return false;
        }
        if !self.organizations.is_empty() {
            let organization = event.get("organizationId").and_then(Value::as_str);
            if !organization.is_some_and(|o| self.organizations.iter().any(|x| x == o)) {
                return false;
            }
        }
        true
    }

    /// Checks the filter when a sink is configured: patterns are not empty and use `*` only at
    /// the end, classifications are known, organizations are not empty, and `alertsOnly` does
    /// not contradict `actions` (a filter that can never pass anything is a mistake).
    pub fn validate(&self) -> Result<(), String> {
        for pattern in &self.actions {
            if pattern.is_empty() {
                return Err("action pattern must not be empty".to_owned());
            }
            if pattern.trim_end_matches('*').contains('*') || pattern.ends_with("**") {
                return Err(format!(
                    "action pattern {pattern:?}: '*' is only allowed once, at the end"
                ));
            }
        }
        for classification in &self.classifications {
            if DataClassification::parse(classification).is_none() {
                return Err(format!(
                    "unknown classification {classification:?} (expected one of {})",
                    DataClassification::ALL.join(", ")
                ));
            }
        }
        if self.organizations.iter().any(String::is_empty) {
            return Err("organization must not be empty".to_owned());
        }
        if self.alerts_only
            && !self.actions.is_empty()
            && !self.actions.iter().any(|p| pattern_can_match_alert(p))
        {
            return Err(
                "alertsOnly with action patterns that match no security.alert.* action".to_owned(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(action: &str) -> Value {
        json!({"action": action, "status": "success", "organizationId": "org-1", "dataClassification": "PHI", "severity": "medium"})
    }

    #[test]
    fn empty_filter_passes_everything() {
        let filter = SinkFilter::default();
        assert!(filter.validate().is_ok());
        for e in [event("x"), json!({}), json!(null), json!([1])] {
            assert!(filter.matches(&e));
        }
    }

    #[test]
    fn action_patterns() {
        let filter = SinkFilter {
            actions: vec!["fhir.*".into(), "auth.login.failure".into()],
            ..SinkFilter::default()
        };
        assert!(filter.matches(&event("fhir.patient.read")));
        assert!(filter.matches(&event("auth.login.failure")));
        assert!(!filter.matches(&event("auth.login.failure.extra")));
        assert!(!filter.matches(&event("auth.login.success")));
        assert!(!filter.matches(&event("fhi")));
        assert!(!filter.matches(&json!({"status": "success"})), "no action");
        let all = SinkFilter {
            actions: vec!["*".into()],
            ..SinkFilter::default()
        };
        assert!(all.matches(&event("anything")));
    }

    #[test]
    fn classifications_default_to_internal() {
        let filter = SinkFilter {
            classifications: vec!["PHI".into(), "INTERNAL".into()],
            ..SinkFilter::default()
        };
        assert!(filter.matches(&event("a")));
        assert!(filter.matches(&json!({"action": "a"})), "absent = INTERNAL");
        assert!(!filter.matches(&json!({"action": "a", "dataClassification": "PUBLIC"})));
        assert!(!filter.matches(&json!({"action": "a", "dataClassification": "phi"})));
    }

    #[test]
    fn min_severity() {
        let filter = SinkFilter {
            min_severity: Some(Severity::High),
            ..SinkFilter::default()
        };
        assert!(!filter.matches(&event("a")), "medium < high");
        assert!(filter.matches(&json!({"action": "a", "severity": "critical"})));
        assert!(filter.matches(&json!({"action": "a", "severity": "high"})));
        // No severity: derived as the server would (security failure → high).
        assert!(filter.matches(&json!({"action": "auth.login.failure", "status": "failure"})));
        assert!(!filter.matches(&json!({"action": "fhir.patient.read", "status": "success"})));
        assert!(
            filter.matches(&json!({"action": "fhir.patient.read", "status": "success",
            "healthcareContext": {"emergencyAccess": true}}))
        );
    }

    #[test]
    fn alerts_only() {
        let filter = SinkFilter {
            alerts_only: true,
            ..SinkFilter::default()
        };
        assert!(filter.matches(&event("security.alert.brute_force")));
        assert!(!filter.matches(&event("security.alerting")));
        assert!(!filter.matches(&event("auth.login.failure")));
        assert!(!filter.matches(&json!({})));
    }

    #[test]
    fn organizations() {
        let filter = SinkFilter {
            organizations: vec!["org-1".into()],
            ..SinkFilter::default()
        };
        assert!(filter.matches(&event("a")));
        assert!(!filter.matches(&json!({"action": "a", "organizationId": "org-2"})));
        assert!(!filter.matches(&json!({"action": "a"})));
    }

    #[test]
    fn conditions_combine() {
        let filter = SinkFilter {
            actions: vec!["security.*".into()],
            classifications: vec!["PHI".into()],
            min_severity: Some(Severity::Medium),
            alerts_only: true,
            organizations: vec!["org-1".into()],
        };
        assert!(filter.validate().is_ok());
        assert!(filter.matches(&event("security.alert.phi_volume")));
        let mut other_org = event("security.alert.phi_volume");
        other_org["organizationId"] = json!("org-2");
        assert!(!filter.matches(&other_org));
        let mut low = event("security.alert.phi_volume");
        low["severity"] = json!("low");
        assert!(!filter.matches(&low));
    }

    #[test]
    fn serde_shape() {
        let filter: SinkFilter = serde_json::from_value(json!({
            "actions": ["fhir.*"], "minSeverity": "high", "alertsOnly": true
        }))
        .expect("camelCase, other fields default");
        assert_eq!(filter.min_severity, Some(Severity::High));
        assert!(filter.alerts_only && filter.classifications.is_empty());
        let back = serde_json::to_value(&filter).expect("serializes");
        assert_eq!(back["minSeverity"], "high");
        assert_eq!(
            serde_json::from_value::<SinkFilter>(back).expect("round trip"),
            filter
        );
        assert!(serde_json::from_value::<SinkFilter>(json!({"action": ["x"]})).is_err());
        assert!(serde_json::from_value::<SinkFilter>(json!({"minSeverity": "urgent"})).is_err());
        assert_eq!(
            serde_json::from_value::<SinkFilter>(json!({})).expect("empty"),
            SinkFilter::default()
        );
    }

    #[test]
    fn validation() {
        let bad = [
            SinkFilter {
                actions: vec![String::new()],
                ..SinkFilter::default()
            },
            SinkFilter {
                actions: vec!["fhir.*.read".into()],
                ..SinkFilter::default()
            },
            SinkFilter {
                actions: vec!["fhir.**".into()],
                ..SinkFilter::default()
            },
            SinkFilter {
                classifications: vec!["SECRET".into()],
                ..SinkFilter::default()
            },
            SinkFilter {
                organizations: vec![String::new()],
                ..SinkFilter::default()
            },
            SinkFilter {
                actions: vec!["fhir.*".into(), "auth.login.failure".into()],
                alerts_only: true,
                ..SinkFilter::default()
            },
        ];
        for filter in bad {
            assert!(filter.validate().is_err(), "{filter:?}");
        }
        for ok in ["security.*", "security.alert.brute_force", "sec*", "*"] {
            let filter = SinkFilter {
                actions: vec![ok.into()],
                alerts_only: true,
                ..SinkFilter::default()
            };
            assert!(filter.validate().is_ok(), "{ok}");
        }
    }
}
