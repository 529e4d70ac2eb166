//! The audit event as an application builds it (SPEC §2), and the delivery options.
//!
//! [`Event`] keeps its fields in a JSON object in wire order and form (camelCase), so what the
//! builder sets is exactly what the server receives, custom fields included. The typed setters
//! exist so that a misspelt field name or an unknown status is a compile error in the
//! application instead of a 422 at three in the morning.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
/// `status`, `dataClassification` and `severity` are the server's own types, so the client
/// can never spell a value the server does not know.
pub use vellum_core::model::{DataClassification, Severity, Status};

/// Who acted (`principalType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalType {
    /// A person with an account.
    User,
    /// Another service.
    Service,
    /// The system itself (schedulers, maintenance).
    System,
    /// A patient acting on their own record.
    Patient,
    /// A healthcare professional.
    Professional,
    /// An administrator.
    Admin,
    /// An AI agent acting on someone's behalf.
    AiAgent,
}

impl PrincipalType {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalType::User => "user",
            PrincipalType::Service => "service",
            PrincipalType::System => "system",
            PrincipalType::Patient => "patient",
            PrincipalType::Professional => "professional",
            PrincipalType::Admin => "admin",
            PrincipalType::AiAgent => "ai_agent",
        }
    }
}

/// Delivery lane of a guaranteed-delivery event. High-priority events leave the spool first
/// and take the server's high lane (`?priority=high`) in scale-out mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Security-relevant events (break-glass access, failed logins, admin changes).
    High,
    /// Everything else.
    Normal,
}

impl Priority {
    /// Both lanes, in delivery order.
    pub const ALL: [Priority; 2] = [Priority::High, Priority::Normal];

    /// The wire value (also the spool's lane directory name).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
        }
    }
}

/// Options of [`crate::Client::log_with_guaranteed_delivery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Lane: high-priority events are delivered before normal ones.
    pub priority: Priority,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            priority: Priority::Normal,
        }
    }
}

impl Delivery {
    /// High-priority delivery.
    pub fn high() -> Self {
        Self {
            priority: Priority::High,
        }
    }
}

/// `sessionContext`: where the action came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionContext {
    /// Application session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Client IP address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Client user agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Free-form location (e.g. a country code).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geolocation: Option<String>,
    /// Device id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

/// `gdprContext`: the data subject and the lawful basis of the processing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GdprContext {
    /// Whose personal data was processed; erasure (`/v1/subjects/{id}/erase`) is by this id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_subject_id: Option<String>,
    /// GDPR art. 6 basis, e.g. `consent`, `contract`, `legal_obligation`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<String>,
    /// Why the data was processed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processing_purpose: Option<String>,
    /// Categories of personal data.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub data_categories: Vec<String>,
}

/// `healthcareContext`: the patient and the clinical setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthcareContext {
    /// The patient whose record was touched (accounting of disclosures is by this id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    /// Clinic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clinic_id: Option<String>,
    /// Department.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department_id: Option<String>,
    /// Procedure code (e.g. CPT, TUSS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub procedure_code: Option<String>,
    /// Diagnosis code (e.g. ICD-10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnosis_code: Option<String>,
    /// Break-glass access.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emergency_access: Option<bool>,
    /// Why a professional accessed the record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clinical_justification: Option<String>,
}

/// `technicalContext`: the request that carried the action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TechnicalContext {
    /// Route or URL path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// HTTP method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    /// HTTP status of the response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// How long the request took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Request id (e.g. `x-request-id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `changes`: what an update changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Changes {
    /// Names of the changed fields.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub changed_fields: Vec<String>,
    /// Values before.
    #[serde(skip_serializing_if = "Map::is_empty", default)]
    pub old_values: Map<String, Value>,
    /// Values after.
    #[serde(skip_serializing_if = "Map::is_empty", default)]
    pub new_values: Map<String, Value>,
}

/// One audit event, built by the application.
///
/// ```
/// use vellum_client::{DataClassification, Event, PrincipalType, Status};
/// let event = Event::new("fhir.patient.read", Status::Success)
///     .principal("dr-ana", PrincipalType::Professional)
///     .organization("clinic-7")
///     .target("Patient", "p-123")
///     .classification(DataClassification::Phi)
///     .patient("p-123");
/// assert_eq!(event.get("targetResourceId").and_then(|v| v.as_str()), Some("p-123"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Event {
    fields: Map<String, Value>,
}

impl Event {
    /// An event with its two required fields.
    pub fn new(action: impl Into<String>, status: Status) -> Self {
        let mut fields = Map::new();
        fields.insert("action".into(), Value::String(action.into()));
        fields.insert("status".into(), Value::String(status.as_str().into()));
        Self { fields }
    }

    /// An event from a JSON object as the application already has it. The server validates
    /// it; the client only requires an object.
    pub fn from_json(value: Value) -> Result<Self, crate::ClientError> {
        match value {
            Value::Object(fields) => Ok(Self { fields }),
            _ => Err(crate::ClientError::InvalidEvent(
                "an audit event must be a JSON object".into(),
            )),
        }
    }

    /// The fields as sent.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// The fields, to change them.
    pub fn as_map_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.fields
    }

    /// One field.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// The event as a JSON value.
    pub fn into_json(self) -> Value {
        Value::Object(self.fields)
    }

    fn set(mut self, name: &str, value: Value) -> Self {
        self.fields.insert(name.to_owned(), value);
        self
    }

    fn set_str(self, name: &str, value: impl Into<String>) -> Self {
        self.set(name, Value::String(value.into()))
    }

    fn set_object<T: Serialize>(self, name: &str, value: &T) -> Self {
        match serde_json::to_value(value) {
            Ok(Value::Object(map)) if map.is_empty() => self,
            Ok(v) => self.set(name, v),
            // The context types serialize infallibly to objects; keep the event as it is.
            Err(_) => self,
        }
    }

    /// `timestamp` (RFC 3339); the server fills it when absent.
    pub fn timestamp(self, when: time::OffsetDateTime) -> Self {
        match when.format(&time::format_description::well_known::Rfc3339) {
            Ok(text) => self.set_str("timestamp", text),
            Err(_) => self,
        }
    }

    /// `principalId` and `principalType`.
    pub fn principal(self, id: impl Into<String>, kind: PrincipalType) -> Self {
        self.set_str("principalId", id)
            .set_str("principalType", kind.as_str())
    }

    /// `principalId` alone.
    pub fn principal_id(self, id: impl Into<String>) -> Self {
        self.set_str("principalId", id)
    }

    /// `organizationId`: the tenant; reads are scoped by it.
    pub fn organization(self, id: impl Into<String>) -> Self {
        self.set_str("organizationId", id)
    }

    /// `targetResourceType` and `targetResourceId`.
    pub fn target(self, kind: impl Into<String>, id: impl Into<String>) -> Self {
        self.set_str("targetResourceType", kind)
            .set_str("targetResourceId", id)
    }

    /// `targetResourceType` alone (a collection, or a create before the id exists).
    pub fn target_type(self, kind: impl Into<String>) -> Self {
        self.set_str("targetResourceType", kind)
    }

    /// `outcomeDescription`.
    pub fn outcome(self, description: impl Into<String>) -> Self {
        self.set_str("outcomeDescription", description)
    }

    /// `dataClassification`.
    pub fn classification(self, classification: DataClassification) -> Self {
        self.set_str("dataClassification", classification.as_str())
    }

    /// `retentionPolicy` by name (e.g. `hipaa-6-years`).
    pub fn retention_policy(self, name: impl Into<String>) -> Self {
        self.set_str("retentionPolicy", name)
    }

    /// `severity`.
    pub fn severity(self, severity: Severity) -> Self {
        self.set_str("severity", severity.as_str())
    }

    /// `correlationId`.
    pub fn correlation(self, id: impl Into<String>) -> Self {
        self.set_str("correlationId", id)
    }

    /// `sessionContext`.
    pub fn session(self, context: SessionContext) -> Self {
        self.set_object("sessionContext", &context)
    }

    /// `gdprContext`.
    pub fn gdpr(self, context: GdprContext) -> Self {
        self.set_object("gdprContext", &context)
    }

    /// `healthcareContext`.
    pub fn healthcare(self, context: HealthcareContext) -> Self {
        self.set_object("healthcareContext", &context)
    }

    /// `healthcareContext.patientId`, keeping the rest of the healthcare context.
    pub fn patient(mut self, patient_id: impl Into<String>) -> Self {
        let context = self
            .fields
            .entry("healthcareContext")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = context {
            map.insert("patientId".into(), Value::String(patient_id.into()));
        }
        self
    }

    /// `technicalContext`.
    pub fn technical(self, context: TechnicalContext) -> Self {
        self.set_object("technicalContext", &context)
    }

    /// `changes`.
    pub fn changes(self, changes: Changes) -> Self {
        self.set_object("changes", &changes)
    }

    /// One member of `details` (free-form).
    pub fn detail(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let details = self
            .fields
            .entry("details")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = details {
            map.insert(name.into(), value.into());
        }
        self
    }

    /// A custom top-level field (kept by the server as a custom field).
    pub fn custom(self, name: &str, value: impl Into<Value>) -> Self {
        self.set(name, value.into())
    }

    /// The event's `idempotencyKey`, when one is set.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.fields.get("idempotencyKey").and_then(Value::as_str)
    }

    /// Sets `idempotencyKey`: a retry of this event with the same key returns the first
    /// receipt instead of writing a second event (honoured by the server for 24 h). The client
    /// sets a fresh UUIDv7 on every event that has none.
    pub fn with_idempotency_key(self, key: impl Into<String>) -> Self {
        self.set_str("idempotencyKey", key)
    }

    /// Sets a fresh key when the event has none, and returns the key.
    pub(crate) fn ensure_idempotency_key(&mut self) -> String {
        if let Some(key) = self.idempotency_key() {
            return key.to_owned();
        }
        let key = uuid::Uuid::now_v7().to_string();
        self.fields
            .insert("idempotencyKey".into(), Value::String(key.clone()));
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builder_writes_the_wire_names() {
        let event = Event::new("fhir.observation.update", Status::Failure)
            .principal("svc-lab", PrincipalType::AiAgent)
            .organization("org-1")
            .target("Observation", "obs-9")
            .classification(DataClassification::Phi)
            .severity(Severity::High)
            .correlation("c-1")
            .session(SessionContext {
                ip_address: Some("10.0.0.1".into()),
                ..Default::default()
            })
            .healthcare(HealthcareContext {
                emergency_access: Some(true),
                ..Default::default()
            })
            .patient("p-1")
            .technical(TechnicalContext::default())
            .detail("reason", "lab rerun")
            .custom("ward", "B2");
        assert_eq!(
            event.into_json(),
            json!({
                "action": "fhir.observation.update",
                "status": "failure",
                "principalId": "svc-lab",
                "principalType": "ai_agent",
                "organizationId": "org-1",
                "targetResourceType": "Observation",
                "targetResourceId": "obs-9",
                "dataClassification": "PHI",
                "severity": "high",
                "correlationId": "c-1",
                "sessionContext": {"ipAddress": "10.0.0.1"},
                "healthcareContext": {"emergencyAccess": true, "patientId": "p-1"},
                "details": {"reason": "lab rerun"},
                "ward": "B2"
            })
        );
    }

    #[test]
    fn idempotency_key_is_kept_when_set_and_created_when_not() {
        let mut with_key = Event::new("a.b", Status::Success).with_idempotency_key("k-1");
        assert_eq!(with_key.ensure_idempotency_key(), "k-1");
        let mut without = Event::new("a.b", Status::Success);
        let key = without.ensure_idempotency_key();
        assert_eq!(without.idempotency_key(), Some(key.as_str()));
        assert_eq!(without.ensure_idempotency_key(), key);
    }

    #[test]
    fn from_json_requires_an_object() {
        assert!(Event::from_json(json!([1])).is_err());
        assert!(Event::from_json(json!({"action": "x"})).is_ok());
    }
}
