//! Splunk HTTP Event Collector (HEC) payloads, for `POST /services/collector/event`.
//!
//! One event becomes one HEC envelope:
//!
//! | HEC key | value | why |
//! | --- | --- | --- |
//! | `time` | `receivedAt` as epoch seconds with millisecond precision (a JSON number, e.g. `1795424462.123`); left out when absent or unparseable, so HEC uses its receipt time | `receivedAt` is the server's acceptance time, which a client cannot backdate, and it is what the log is ordered by; HEC's `time` is seconds with a fraction |
//! | `host` | [`HecConfig::host`], when set | |
//! | `source` | [`HecConfig::source`] (`vellum`) | |
//! | `sourcetype` | [`HecConfig::sourcetype`] (`vellum:audit`) | one sourcetype lets Splunk field extraction treat every Vellum event alike |
//! | `index` | [`HecConfig::index`], when set; otherwise the token's default index | |
//! | `event` | the stored event, unchanged | Splunk parses the JSON; the complete event keeps `hash` and `signature` for later verification |
//!
//! A batch is the envelopes one after another, separated by newlines, which HEC accepts in one
//! request ("stacked" events). Every envelope is written as canonical JSON (RFC 8785), so a batch
//! has one spelling and no formatter call can fail.

use crate::canonical::write_value;
use serde_json::{Map, Value, json};

/// Settings of a HEC sink that shape its payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HecConfig {
    /// HEC `source`, normally `vellum`.
    pub source: String,
    /// HEC `sourcetype`, normally `vellum:audit`.
    pub sourcetype: String,
    /// HEC `index`; `None` leaves it to the token's default index.
    pub index: Option<String>,
    /// HEC `host`; `None` leaves it to HEC (the sender's address).
    pub host: Option<String>,
}

impl Default for HecConfig {
    fn default() -> Self {
        Self {
            source: "vellum".to_owned(),
            sourcetype: "vellum:audit".to_owned(),
            index: None,
            host: None,
        }
    }
}

/// `receivedAt` in epoch seconds, millisecond precision.
fn hec_time(event: &Value) -> Option<f64> {
    let at = super::time_at(event, "/receivedAt")?;
    // Milliseconds fit an f64 exactly for any date `time` can parse; dividing by 1000 gives the
    // nearest double to the decimal seconds value, which JSON then prints in shortest form.
    Some(super::epoch_millis(at) as f64 / 1000.0)
}

/// The HEC envelope of one event (table in the module docs).
pub fn hec_event(event: &Value, config: &HecConfig) -> Value {
    let mut out = Map::new();
    if let Some(time) = hec_time(event) {
        out.insert("time".into(), json!(time));
    }
    if let Some(host) = &config.host {
        out.insert("host".into(), json!(host));
    }
    out.insert("source".into(), json!(config.source));
    out.insert("sourcetype".into(), json!(config.sourcetype));
    if let Some(index) = &config.index {
        out.insert("index".into(), json!(index));
    }
    out.insert("event".into(), event.clone());
    Value::Object(out)
}

/// The HEC body for several events: their envelopes, newline-separated (no trailing newline).
pub fn hec_batch(events: &[Value], config: &HecConfig) -> String {
    let mut out = String::with_capacity(events.len() * 1024);
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        write_value(&mut out, &hec_event(event, config));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(received_at: &str) -> Value {
        json!({"id": "e1", "action": "fhir.patient.read", "status": "success", "receivedAt": received_at, "hash": "ab"})
    }

    #[test]
    fn envelope_with_defaults() {
        let e = event("2026-11-23T09:01:02.123456Z");
        let hec = hec_event(&e, &HecConfig::default());
        assert_eq!(
            hec,
            json!({"time": 1_795_424_462.123, "source": "vellum", "sourcetype": "vellum:audit", "event": e})
        );
        assert!(hec.get("host").is_none() && hec.get("index").is_none());
    }

    #[test]
    fn envelope_with_host_and_index() {
        let config = HecConfig {
            index: Some("audit".into()),
            host: Some("vellum-1".into()),
            ..HecConfig::default()
        };
        let hec = hec_event(&event("2026-11-23T10:01:02.5+01:00"), &config);
        assert_eq!(hec["time"], json!(1_795_424_462.5));
        assert_eq!(hec["host"], "vellum-1");
        assert_eq!(hec["index"], "audit");
    }

    #[test]
    fn time_is_seconds_with_milliseconds() {
        let hec = hec_event(&event("2026-11-23T09:01:02Z"), &HecConfig::default());
        assert_eq!(
            crate::canonical::to_canonical_string(&hec["time"]),
            "1795424462"
        );
        let hec = hec_event(&event("2026-11-23T09:01:02.000999Z"), &HecConfig::default());
        assert_eq!(
            crate::canonical::to_canonical_string(&hec["time"]),
            "1795424462"
        );
        let hec = hec_event(&event("2026-11-23T09:01:02.999Z"), &HecConfig::default());
        assert_eq!(
            crate::canonical::to_canonical_string(&hec["time"]),
            "1795424462.999"
        );
        let hec = hec_event(&event("garbage"), &HecConfig::default());
        assert!(hec.get("time").is_none());
        let hec = hec_event(&json!(null), &HecConfig::default());
        assert!(hec.get("time").is_none());
        assert_eq!(hec["event"], json!(null));
    }

    #[test]
    fn batch_is_stacked_json() {
        let events = [
            event("2026-11-23T09:01:02Z"),
            event("2026-11-23T09:01:03Z"),
            json!({"odd": "event\nwith newline"}),
        ];
        let body = hec_batch(&events, &HecConfig::default());
        let lines: Vec<&str> = body.split('\n').collect();
        assert_eq!(
            lines.len(),
            3,
            "one line per event; newlines inside strings are escaped"
        );
        for (line, event) in lines.iter().zip(&events) {
            let parsed: Value = serde_json::from_str(line).expect("each line is one JSON object");
            assert!(parsed.is_object());
            let envelope = hec_event(event, &HecConfig::default());
            assert_eq!(*line, crate::canonical::to_canonical_string(&envelope));
            assert_eq!(parsed["event"], *event);
        }
        let stacked: Vec<Value> = serde_json::Deserializer::from_str(&body)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .expect("a stream of JSON objects");
        assert_eq!(stacked.len(), 3);
        assert_eq!(hec_batch(&[], &HecConfig::default()), "");
    }
}
