//! One pass over a stored event's canonical text for its index row.
//!
//! Both stores index every event they append, so this runs once per event on the writer's
//! path. Parsing into a `serde_json::Value` first built a tree of maps and strings only to
//! read a dozen fields and every string out of it, then looked each field up by pointer; here
//! a serde visitor walks the text once and keeps only what the row needs: the filter fields
//! (by their place in the event) and the free text (every string outside the top-level
//! fields of [`NOT_TEXT`]).
//!
//! The free text is in document order, which for stored (canonical, RFC 8785) events is key
//! order by UTF-16 code units; the `Value` walk it replaces went in byte order. The two differ
//! only between keys holding characters above U+FFFF and keys holding U+E000..U+FFFF, and
//! then only in which order two values' words sit in the text (what a phrase spanning both
//! would match).

use crate::StoreError;
use crate::index::IndexRow;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Top-level fields whose strings are not free text (ids, hashes, server bookkeeping).
pub(crate) const NOT_TEXT: &[&str] = &[
    "id",
    "logId",
    "seq",
    "prevHash",
    "keyId",
    "receivedAt",
    "timestamp",
    "eventVersion",
    "redactions",
    "idempotencyKey",
    "sealed",
];

/// A value the row keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Timestamp,
    ReceivedAt,
    LogId,
    Action,
    Status,
    Classification,
    PrincipalId,
    OrganizationId,
    TargetType,
    TargetId,
    CorrelationId,
    SessionId,
    Ip,
    PatientId,
    Emergency,
    SubjectId,
    SealedSubjectTag,
}

/// An object whose members include kept fields.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    Session,
    Healthcare,
    Gdpr,
    Sealed,
}

/// Where the walk is: what the value at hand means to the row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The event object itself.
    Root,
    /// A member object of the event that holds kept fields.
    Context(Context),
    /// A kept field's value.
    Field(Field),
    /// Anything else (only its strings matter, as text).
    Other,
}

fn place_in_root(key: &str) -> Place {
    match key {
        "timestamp" => Place::Field(Field::Timestamp),
        "receivedAt" => Place::Field(Field::ReceivedAt),
        "logId" => Place::Field(Field::LogId),
        "action" => Place::Field(Field::Action),
        "status" => Place::Field(Field::Status),
        "dataClassification" => Place::Field(Field::Classification),
        "principalId" => Place::Field(Field::PrincipalId),
        "organizationId" => Place::Field(Field::OrganizationId),
        "targetResourceType" => Place::Field(Field::TargetType),
        "targetResourceId" => Place::Field(Field::TargetId),
        "correlationId" => Place::Field(Field::CorrelationId),
        "sessionContext" => Place::Context(Context::Session),
        "healthcareContext" => Place::Context(Context::Healthcare),
        "gdprContext" => Place::Context(Context::Gdpr),
        "sealed" => Place::Context(Context::Sealed),
        _ => Place::Other,
    }
}

fn place_in_context(context: Context, key: &str) -> Place {
    match (context, key) {
        (Context::Session, "sessionId") => Place::Field(Field::SessionId),
        (Context::Session, "ipAddress") => Place::Field(Field::Ip),
        (Context::Healthcare, "patientId") => Place::Field(Field::PatientId),
        (Context::Healthcare, "emergencyAccess") => Place::Field(Field::Emergency),
        (Context::Gdpr, "dataSubjectId") => Place::Field(Field::SubjectId),
        (Context::Sealed, "subjectTag") => Place::Field(Field::SealedSubjectTag),
        _ => Place::Other,
    }
}

/// What the walk has found so far.
#[derive(Default)]
struct Found {
    timestamp: Option<String>,
    received_at: Option<String>,
    log_id: Option<String>,
    action: Option<String>,
    status: Option<String>,
    classification: Option<String>,
    principal_id: Option<String>,
    organization_id: Option<String>,
    target_type: Option<String>,
    target_id: Option<String>,
    correlation_id: Option<String>,
    session_id: Option<String>,
    ip: Option<String>,
    patient_id: Option<String>,
    emergency: bool,
    subject_id: Option<String>,
    sealed_subject_tag: Option<String>,
    text: String,
}

impl Found {
    /// Where a kept string field goes (`None` for the one boolean).
    fn slot(&mut self, field: Field) -> Option<&mut Option<String>> {
        Some(match field {
            Field::Timestamp => &mut self.timestamp,
            Field::ReceivedAt => &mut self.received_at,
            Field::LogId => &mut self.log_id,
            Field::Action => &mut self.action,
            Field::Status => &mut self.status,
            Field::Classification => &mut self.classification,
            Field::PrincipalId => &mut self.principal_id,
            Field::OrganizationId => &mut self.organization_id,
            Field::TargetType => &mut self.target_type,
            Field::TargetId => &mut self.target_id,
            Field::CorrelationId => &mut self.correlation_id,
            Field::SessionId => &mut self.session_id,
            Field::Ip => &mut self.ip,
            Field::PatientId => &mut self.patient_id,
            Field::SubjectId => &mut self.subject_id,
            Field::SealedSubjectTag => &mut self.sealed_subject_tag,
            Field::Emergency => return None,
        })
    }

    fn string(&mut self, place: Place, value: &str) {
        if let Place::Field(field) = place
            && let Some(slot) = self.slot(field)
        {
            *slot = Some(value.to_owned());
        } else {
            self.other(place);
        }
    }

    /// A kept field whose value is not of its kind counts as absent (a later duplicate hides
    /// an earlier one, as in a parsed object).
    fn other(&mut self, place: Place) {
        if let Place::Field(field) = place {
            match self.slot(field) {
                Some(slot) => *slot = None,
                None => self.emergency = false,
            }
        }
    }
}

/// Visits one value at `place`; its strings go to the text when `text` is set.
struct Walk<'f> {
    found: &'f mut Found,
    place: Place,
    text: bool,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<(), E> {
        if self.text {
            let text = &mut self.found.text;
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(value);
        }
        self.found.string(self.place, value);
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<(), E> {
        if self.place == Place::Field(Field::Emergency) {
            self.found.emergency = value;
        } else {
            self.found.other(self.place);
        }
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.found.other(self.place);
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.found.other(self.place);
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.found.other(self.place);
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.found.other(self.place);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.found.other(self.place);
        while seq
            .next_element_seed(Walk {
                found: &mut *self.found,
                place: Place::Other,
                text: self.text,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.found.other(self.place);
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let key = key.as_str();
            let (place, text) = match self.place {
                Place::Root => (place_in_root(key), !NOT_TEXT.contains(&key)),
                Place::Context(context) => (place_in_context(context, key), self.text),
                Place::Field(_) | Place::Other => (Place::Other, self.text),
            };
            map.next_value_seed(Walk {
                found: &mut *self.found,
                place,
                text,
            })?;
        }
        Ok(())
    }
}

/// A member name, borrowed from the text when it has no escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Extracts the index row of a stored event's canonical text.
pub(crate) fn extract(canonical: &str) -> Result<IndexRow, StoreError> {
    let mut found = Found::default();
    let mut deserializer = serde_json::Deserializer::from_str(canonical);
    Walk {
        found: &mut found,
        place: Place::Root,
        text: true,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end())
    .map_err(|e| StoreError::Corrupt(format!("stored event is not JSON: {e}")))?;
    let ts = found
        .timestamp
        .as_deref()
        .or(found.received_at.as_deref())
        .and_then(|t| vellum_core::time_fmt::parse_rfc3339(t).ok())
        .map(vellum_core::time_fmt::unix_micros)
        .unwrap_or(0);
    Ok(IndexRow {
        ts,
        log_id: found.log_id.unwrap_or_default(),
        action: found.action.unwrap_or_default(),
        status: found.status.unwrap_or_default(),
        classification: found.classification,
        principal_id: found.principal_id,
        organization_id: found.organization_id,
        target_type: found.target_type,
        target_id: found.target_id,
        session_id: found.session_id,
        ip: found.ip,
        patient_id: found.patient_id,
        // A sealed event keeps its subject only as a tag under the subject's own key
        // (`vellum_core::shred`): searchable while the key exists, unreachable after erasure.
        subject_id: found.subject_id.or(found.sealed_subject_tag),
        correlation_id: found.correlation_id,
        emergency: found.emergency,
        text: found.text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    // The reference: the `Value` walk this module replaced (same NOT_TEXT list).

    fn collect_text(value: &Value, out: &mut String) {
        match value {
            Value::String(s) => {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(s);
            }
            Value::Array(items) => items.iter().for_each(|v| collect_text(v, out)),
            Value::Object(map) => map.values().for_each(|v| collect_text(v, out)),
            _ => {}
        }
    }

    fn string_at(event: &Value, pointer: &str) -> Option<String> {
        event
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// Extracts the index row of a stored event's canonical text.
    fn extract_via_value(canonical: &str) -> Result<IndexRow, StoreError> {
        let event: Value = serde_json::from_str(canonical)
            .map_err(|e| StoreError::Corrupt(format!("stored event is not JSON: {e}")))?;
        let ts = string_at(&event, "/timestamp")
            .or_else(|| string_at(&event, "/receivedAt"))
            .and_then(|t| vellum_core::time_fmt::parse_rfc3339(&t).ok())
            .map(vellum_core::time_fmt::unix_micros)
            .unwrap_or(0);
        let mut text = String::new();
        if let Value::Object(map) = &event {
            for (key, value) in map {
                if !NOT_TEXT.contains(&key.as_str()) {
                    collect_text(value, &mut text);
                }
            }
        }
        Ok(IndexRow {
            ts,
            log_id: string_at(&event, "/logId").unwrap_or_default(),
            action: string_at(&event, "/action").unwrap_or_default(),
            status: string_at(&event, "/status").unwrap_or_default(),
            classification: string_at(&event, "/dataClassification"),
            principal_id: string_at(&event, "/principalId"),
            organization_id: string_at(&event, "/organizationId"),
            target_type: string_at(&event, "/targetResourceType"),
            target_id: string_at(&event, "/targetResourceId"),
            session_id: string_at(&event, "/sessionContext/sessionId"),
            ip: string_at(&event, "/sessionContext/ipAddress"),
            patient_id: string_at(&event, "/healthcareContext/patientId"),
            // A sealed event keeps its subject only as a tag under the subject's own key
            // (`vellum_core::shred`): searchable while the key exists, unreachable after erasure.
            subject_id: string_at(&event, "/gdprContext/dataSubjectId")
                .or_else(|| string_at(&event, "/sealed/subjectTag")),
            correlation_id: string_at(&event, "/correlationId"),
            emergency: event.pointer("/healthcareContext/emergencyAccess")
                == Some(&Value::Bool(true)),
            text,
        })
    }

    fn same_row(event: &Value) {
        let text = serde_json::to_string(event).expect("json");
        let canonical = vellum_core::canonical::to_canonical_string(event);
        for t in [&text, &canonical] {
            assert_eq!(
                extract(t).expect("streamed"),
                extract_via_value(t).expect("tree"),
                "{t}"
            );
        }
    }

    #[test]
    fn the_walk_finds_what_the_value_tree_found() {
        let mut rng = vellum_core::synthetic::Rng(7);
        for n in 0..2_000 {
            let mut event = vellum_core::synthetic::synthetic_event(&mut rng, n);
            if n % 2 == 0 {
                // As stored: with the server's fields.
                event["logId"] = json!("org-1");
                event["seq"] = json!(n);
                event["receivedAt"] = json!("2026-12-07T10:00:00.000001Z");
                event["prevHash"] = json!("00".repeat(32));
                event["id"] = json!(format!("00000000-0000-7000-8000-{n:012}"));
            }
            same_row(&event);
        }
        let odd = [
            json!({}),
            json!({"action": 5, "status": null, "timestamp": "not a time",
                   "receivedAt": "2026-01-02T03:04:05.000006Z"}),
            json!({"sessionContext": "flat", "healthcareContext": [1, {"patientId": "p"}],
                   "gdprContext": {"dataSubjectId": {"deep": "x"}}}),
            json!({"healthcareContext": {"emergencyAccess": "true", "patientId": "p-1"}}),
            json!({"healthcareContext": {"emergencyAccess": true}, "sealed": {"subjectTag": "t",
                   "other": "hidden"}, "prevHash": "ab", "details": {"b": ["x", {"y": "z"}],
                   "a": "first \"quoted\" \\ é \u{1F600}"}}),
            json!({"gdprContext": {"dataSubjectId": "s-1"}, "sealed": {"subjectTag": "t"},
                   "redactions": ["/x"], "idempotencyKey": "k", "z": 1.5, "y": true}),
        ];
        for event in &odd {
            same_row(event);
        }
        // The one documented difference: text in document order. RFC 8785 puts U+1F600
        // (UTF-16 D83D DE00) before U+E000; byte order puts it after.
        let keys = json!({"\u{E000}k": "private", "\u{1F600}k": "astral", "x\"y": "escaped key",
                          "action": "a.b", "timestamp": "2026-12-07T10:00:00Z"});
        let canonical = vellum_core::canonical::to_canonical_string(&keys);
        let streamed = extract(&canonical).expect("streamed");
        assert_eq!(streamed.text, "a.b escaped key astral private");
        assert_eq!(
            extract_via_value(&canonical).expect("tree").text,
            "a.b escaped key private astral"
        );
        assert_eq!(streamed.action, "a.b");
        assert!(extract("[1, 2]").is_ok_and(|row| row == IndexRow::default()));
        assert!(extract("{\"a\": ").is_err());
        assert!(extract("{} trailing").is_err());
    }
}
