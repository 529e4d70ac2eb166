//! Export formats of SPEC §11 that are pure transformations of one stored event: the CSV
//! record (with formula guarding) and the FHIR R4 `AuditEvent` resource. The server streams
//! them; keeping the mapping here makes it testable without I/O and identical in every
//! deployment shape.

use serde_json::{Map, Value, json};
use std::borrow::Cow;

/// CSV columns, in order (SPEC §11).
pub const CSV_COLUMNS: [&str; 13] = [
    "id",
    "seq",
    "timestamp",
    "action",
    "status",
    "principalId",
    "organizationId",
    "targetResourceType",
    "targetResourceId",
    "dataClassification",
    "outcomeDescription",
    "ipAddress",
    "hash",
];

/// Guards a cell against spreadsheet formula injection (CWE-1236): a cell starting with `=`,
/// `+`, `-`, `@` (or a tab or carriage return, which some spreadsheets strip before parsing)
/// gets a leading `'`, which spreadsheets show as text and never evaluate.
pub fn formula_guard(cell: &str) -> Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

fn text_at<'a>(event: &'a Value, pointer: &str) -> Cow<'a, str> {
    match event.pointer(pointer) {
        None | Some(Value::Null) => Cow::Borrowed(""),
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(other) => Cow::Owned(other.to_string()),
    }
}

/// The CSV record of an event (as the API returns it, with `hash`), guarded cell by cell.
pub fn csv_record(event: &Value) -> Vec<String> {
    const POINTERS: [&str; 13] = [
        "/id",
        "/seq",
        "/timestamp",
        "/action",
        "/status",
        "/principalId",
        "/organizationId",
        "/targetResourceType",
        "/targetResourceId",
        "/dataClassification",
        "/outcomeDescription",
        "/sessionContext/ipAddress",
        "/hash",
    ];
    POINTERS
        .iter()
        .map(|p| formula_guard(&text_at(event, p)).into_owned())
        .collect()
}

/// The FHIR CRUDE action code for a dotted Vellum action, from its verb: the last segment that
/// names an operation (`fhir.patient.read` → `R`, `admin.user.delete` → `D`); anything else
/// (login, export, sign, …) is `E`, "execute".
pub fn fhir_action(action: &str) -> &'static str {
    for segment in action.rsplit(['.', ':', '/', '_', '-']) {
        let verb = segment.to_ascii_lowercase();
        let code = match verb.as_str() {
            "create" | "add" | "insert" | "register" | "new" | "post" | "upload" => "C",
            "read" | "view" | "get" | "search" | "query" | "list" | "access" | "open"
            | "download" | "vread" | "history" => "R",
            "update" | "modify" | "edit" | "change" | "patch" | "put" | "write" | "amend"
            | "merge" => "U",
            "delete" | "remove" | "purge" | "erase" | "destroy" => "D",
            "execute" | "run" | "login" | "logout" | "export" | "import" | "send" | "print"
            | "sign" | "approve" | "invoke" => "E",
            _ => continue,
        };
        return code;
    }
    "E"
}

/// The FHIR outcome code: success 0, warning 4 (minor failure), failure 8 (serious failure) or
/// 12 (major failure) when its severity is `critical`. An `attempt` has no known outcome yet,
/// so it has none (the element is optional in R4).
pub fn fhir_outcome(status: &str, severity: Option<&str>) -> Option<&'static str> {
    match (status, severity) {
        ("success", _) => Some("0"),
        ("warning", _) => Some("4"),
        ("failure", Some("critical")) => Some("12"),
        ("failure", _) => Some("8"),
        _ => None,
    }
}

/// The DICOM audit event type (`http://dicom.nema.org/resources/ontology/DCM`) for an action:
/// `(code, display)`.
pub fn fhir_event_type(action: &str) -> (&'static str, &'static str) {
    let a = action.to_ascii_lowercase();
    let has = |s: &str| a.split(['.', ':', '/', '_', '-']).any(|seg| seg == s);
    if a.starts_with("auth.") || has("login") || has("logout") {
        ("110114", "User Authentication")
    } else if a.starts_with("security.") || has("violation") || has("breach") {
        ("110113", "Security Alert")
    } else if a.starts_with("audit.") {
        ("110101", "Audit Log Used")
    } else if has("export") || has("download") {
        ("110106", "Export")
    } else if has("import") || has("upload") {
        ("110107", "Import")
    } else if has("search") || has("query") || has("list") {
        ("110112", "Query")
    } else if a.starts_with("fhir.") || has("patient") || has("phi") {
        ("110110", "Patient Record")
    } else {
        ("110100", "Application Activity")
    }
}

/// Whether `s` is a valid FHIR `id` (`[A-Za-z0-9\-\.]{1,64}`), so it can go into a literal
/// reference; other ids are carried as identifiers instead.
fn fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Whether `s` looks like a FHIR resource type name (`Patient`, `Observation`).
fn fhir_type(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn reference(resource_type: &str, id: &str) -> Value {
    if fhir_type(resource_type) && fhir_id(id) {
        json!({"reference": format!("{resource_type}/{id}")})
    } else {
        json!({"identifier": {"system": format!("urn:vellum:resource:{resource_type}"), "value": id}})
    }
}

/// Who observed the events: this Vellum instance.
#[derive(Debug, Clone)]
pub struct FhirObserver {
    /// Display name, e.g. `Vellum (audit.hospital.example)`.
    pub display: String,
}

/// Maps one stored event (API form, with `hash`) to a FHIR R4 `AuditEvent`.
///
/// `type` is the DICOM event type; `subtype` carries the Vellum action verbatim; `agent` is the
/// principal (requestor) with the session's IP as its network address; `source.observer` is
/// this Vellum instance; `entity` is the target resource and, when there is one, the patient
/// (role 1, Patient). The event's hash rides in an extension so a FHIR consumer can match the
/// resource to the verifiable log.
pub fn fhir_audit_event(event: &Value, observer: &FhirObserver) -> Value {
    let s = |p: &str| event.pointer(p).and_then(Value::as_str);
    let action = s("/action").unwrap_or("");
    let (type_code, type_display) = fhir_event_type(action);
    let mut resource = Map::new();
    resource.insert("resourceType".into(), json!("AuditEvent"));
    if let Some(id) = s("/id").filter(|id| fhir_id(id)) {
        resource.insert("id".into(), json!(id));
    }
    if let Some(hash) = s("/hash") {
        resource.insert(
            "extension".into(),
            json!([{"url": "https://vellum.dev/fhir/StructureDefinition/event-hash", "valueString": hash}]),
        );
    }
    resource.insert(
        "type".into(),
        json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": type_code, "display": type_display}),
    );
    if !action.is_empty() {
        resource.insert(
            "subtype".into(),
            json!([{"system": "https://vellum.dev/fhir/CodeSystem/action", "code": action}]),
        );
    }
    resource.insert("action".into(), json!(fhir_action(action)));
    let recorded = s("/timestamp").or(s("/receivedAt")).unwrap_or("");
    resource.insert("recorded".into(), json!(recorded));
    if let Some(outcome) = fhir_outcome(s("/status").unwrap_or(""), s("/severity")) {
        resource.insert("outcome".into(), json!(outcome));
    }
    if let Some(desc) = s("/outcomeDescription") {
        resource.insert("outcomeDesc".into(), json!(desc));
    }

    let mut agent = Map::new();
    let agent_type = match s("/principalType") {
        Some("service" | "system" | "ai_agent") => "dataprocessor",
        _ => "humanuser",
    };
    agent.insert(
        "type".into(),
        json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": agent_type}]}),
    );
    if let Some(principal) = s("/principalId") {
        agent.insert(
            "who".into(),
            json!({"identifier": {"system": "urn:vellum:principal", "value": principal}}),
        );
    }
    if let Some(session) = s("/sessionContext/sessionId") {
        agent.insert("altId".into(), json!(session));
    }
    agent.insert("requestor".into(), json!(true));
    if let Some(ip) = s("/sessionContext/ipAddress") {
        agent.insert("network".into(), json!({"address": ip, "type": "2"}));
    }
    resource.insert("agent".into(), json!([Value::Object(agent)]));

    let mut source = json!({
        "observer": {"display": observer.display},
        "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
    });
    if let Some(org) = s("/organizationId") {
        source["site"] = json!(org);
    }
    resource.insert("source".into(), source);

    let mut entities = Vec::new();
    if let Some(target_type) = s("/targetResourceType") {
        let id = s("/targetResourceId").unwrap_or("");
        let what = if id.is_empty() {
            json!({"display": target_type})
        } else {
            reference(target_type, id)
        };
        entities.push(json!({
            "what": what,
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
        }));
    }
    if let Some(patient) = s("/healthcareContext/patientId") {
        entities.push(json!({
            "what": reference("Patient", patient),
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
        }));
    }
    if !entities.is_empty() {
        resource.insert("entity".into(), Value::Array(entities));
    }
    Value::Object(resource)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_guarded_and_others_untouched() {
        for bad in ["=SUM(A1)", "+1", "-2", "@cmd", "\tx", "\rx"] {
            assert_eq!(formula_guard(bad), format!("'{bad}"));
        }
        for ok in ["", "plain", "1-2", "a=b", "'quoted"] {
            assert_eq!(formula_guard(ok), ok);
        }
    }

    #[test]
    fn csv_record_has_the_spec_columns_in_order() {
        let e = json!({"id": "i", "seq": 7, "timestamp": "t", "action": "=HYPERLINK()",
            "status": "success", "principalId": "dr", "organizationId": "o",
            "targetResourceType": "Patient", "targetResourceId": "p", "dataClassification": "PHI",
            "outcomeDescription": "-ok", "sessionContext": {"ipAddress": "10.0.0.1"}, "hash": "h"});
        assert_eq!(
            csv_record(&e),
            vec![
                "i",
                "7",
                "t",
                "'=HYPERLINK()",
                "success",
                "dr",
                "o",
                "Patient",
                "p",
                "PHI",
                "'-ok",
                "10.0.0.1",
                "h"
            ]
        );
        assert_eq!(csv_record(&json!({})).len(), CSV_COLUMNS.len());
    }

    #[test]
    fn actions_map_to_crude_codes() {
        for (action, code) in [
            ("fhir.patient.read", "R"),
            ("fhir.observation.create", "C"),
            ("admin.user.update", "U"),
            ("records.delete", "D"),
            ("auth.login.failure", "E"),
            ("report.export", "E"),
            ("weird", "E"),
            ("patient.search.results", "R"),
        ] {
            assert_eq!(fhir_action(action), code, "{action}");
        }
    }

    #[test]
    fn outcomes_follow_status_and_severity() {
        assert_eq!(fhir_outcome("success", None), Some("0"));
        assert_eq!(fhir_outcome("warning", None), Some("4"));
        assert_eq!(fhir_outcome("failure", Some("high")), Some("8"));
        assert_eq!(fhir_outcome("failure", Some("critical")), Some("12"));
        assert_eq!(fhir_outcome("attempt", None), None);
    }

    #[test]
    fn audit_event_carries_agent_source_and_entities() {
        let e = json!({"id": "01a2084c-6178-774c-b5a3-fc3a1ac01ebf", "action": "fhir.patient.read",
            "status": "success", "timestamp": "2026-11-23T10:00:00.000000Z",
            "principalId": "dr-7", "principalType": "professional", "organizationId": "org-1",
            "targetResourceType": "Observation", "targetResourceId": "obs 1",
            "healthcareContext": {"patientId": "p-42"},
            "sessionContext": {"sessionId": "s-1", "ipAddress": "10.0.0.5"}, "hash": "ab"});
        let r = fhir_audit_event(
            &e,
            &FhirObserver {
                display: "Vellum test".into(),
            },
        );
        assert_eq!(r["resourceType"], "AuditEvent");
        assert_eq!(r["action"], "R");
        assert_eq!(r["outcome"], "0");
        assert_eq!(r["type"]["code"], "110110");
        assert_eq!(r["agent"][0]["requestor"], true);
        assert_eq!(r["agent"][0]["who"]["identifier"]["value"], "dr-7");
        assert_eq!(r["agent"][0]["network"]["address"], "10.0.0.5");
        assert_eq!(r["source"]["observer"]["display"], "Vellum test");
        // "obs 1" is not a FHIR id: carried as an identifier, not a broken reference.
        assert_eq!(r["entity"][0]["what"]["identifier"]["value"], "obs 1");
        assert_eq!(r["entity"][1]["what"]["reference"], "Patient/p-42");
        assert_eq!(r["entity"][1]["role"]["code"], "1");
    }
}
