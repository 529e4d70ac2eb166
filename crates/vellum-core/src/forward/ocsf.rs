//! OCSF (Open Cybersecurity Schema Framework) events, schema version 1.1.0.
//!
//! Each Vellum event maps to one of three OCSF classes, chosen from its `action`:
//!
//! | action | class | `class_uid` | `category_uid` |
//! | --- | --- | --- | --- |
//! | starts with `auth.` (login, logout, token, MFA, password) | Authentication | 3002 | 3 Identity & Access Management |
//! | starts with `admin.`, `keys.`, `user.`, `account.` or `config.`, or has an `apikey` segment (`org.apikey.create`) | Entity Management | 3004 | 3 Identity & Access Management |
//! | anything else (`fhir.patient.read`, `audit.export`, `security.alert.*`, …) | API Activity | 6003 | 6 Application Activity |
//!
//! Class names are matched case-insensitively. `type_uid` is `class_uid * 100 + activity_id`.
//!
//! ## Field mapping
//!
//! | OCSF attribute | from the Vellum event | notes |
//! | --- | --- | --- |
//! | `activity_id`, `activity_name` | the verb of `action` | Authentication: a `login`/`logon` segment → 1 Logon, `logout`/`logoff` → 2 Logoff, else 99 Other. Entity Management and API Activity: the FHIR CRUDE verb table of [`crate::export::fhir_action`] (the same one the FHIR export uses, SPEC §11): C → 1 Create, R → 2 Read (`read`, `view`, `search`, `get`, `list`, …), U → 3 Update (`update`, `change`, `edit`, …), D → 4 Delete (`delete`, `remove`, …), E → 99 Other. For 99, `activity_name` is the action itself, as OCSF asks ("a data source specific value") |
//! | `severity_id`, `severity` | `severity` | low 2, medium 3, high 4, critical 5; absent or unknown 1 Informational |
//! | `status_id`, `status` | `status` | success 1, failure 2, attempt/warning/other 99 (with `status` = the Vellum text), absent 0 Unknown |
//! | `status_code` | `technicalContext.statusCode` | as text (e.g. `"403"`) |
//! | `time` | `timestamp`, else `receivedAt` | epoch milliseconds (integer); 0 if neither parses (a stored event always has both) |
//! | `timezone_offset` | the offset of `timestamp` | minutes |
//! | `message` | `outcomeDescription` | |
//! | `metadata.version` | `"1.1.0"` | |
//! | `metadata.product` | `{name: "Vellum", vendor_name: "Vellum", version: <crate version>}` | |
//! | `metadata.log_provider` | `"Vellum"` | |
//! | `metadata.uid` | `id` | |
//! | `metadata.correlation_uid` | `correlationId` | |
//! | `metadata.original_time` | `receivedAt` (text) | |
//! | `metadata.logged_time` | `receivedAt` | epoch milliseconds |
//! | `metadata.log_name` | `logId` | |
//! | `metadata.sequence` | `seq` | integer |
//! | `actor.user`, and `user` for Authentication | `principalId` → `uid`, `principalType` → `type_id`/`type`, `organizationId` → `org.uid` | user/professional/patient → 1 User, admin → 2 Admin, system → 3 System, service/ai_agent → 99 Other (with `type` = the Vellum value), absent → 0 Unknown. Without a principal the user is `{name: "unknown"}`, because the class needs a user object and OCSF users carry a name or uid |
//! | `actor.session.uid` | `sessionContext.sessionId` | |
//! | `src_endpoint` (Authentication, API Activity) | `sessionContext.ipAddress` → `ip` (only if it parses as an IP address), `sessionContext.deviceId` → `uid` | always present for API Activity, where it is required, even when empty |
//! | `http_request` (Authentication, API Activity) | `sessionContext.userAgent` → `user_agent`, `technicalContext.httpMethod` → `http_method`, `technicalContext.endpoint` → `url.path` | |
//! | `service.name` (Authentication) | `technicalContext.endpoint`, else `"unknown"` | the 1.1.0 class definition requires `service` or `dst_endpoint` |
//! | `entity` (Entity Management) | `targetResourceId` → `uid`; `targetResourceType` (else the action without its verb, e.g. `admin.apikey`) → `type`; `Type/Id` → `name` | `name` is always set (the managed-entity object needs a name or uid) |
//! | `api` (API Activity) | `action` → `operation`, `technicalContext.requestId` → `request.uid`, `technicalContext.statusCode` → `response.code` | |
//! | `resources` (API Activity) | `[{type: targetResourceType, uid: targetResourceId}]` | |
//! | `unmapped` | `hash`, `prevHash`, `keyId`, `signature`, `dataClassification`, `organizationId`, `principalType`, `healthcareContext.patientId` → `patientId`, `healthcareContext.emergencyAccess` → `emergencyAccess`; for Entity Management also `ipAddress` and `userAgent` (the 1.1.0 class has no `src_endpoint`/`http_request`); an IP that does not parse goes here as `ipAddress` too | nothing Vellum knows is lost |
//! | `raw_data` | the whole event, canonical JSON (RFC 8785) | a consumer can re-verify the event's `hash` |
//!
//! Entity Management and Authentication in 1.1.0 have no `resources` attribute, and Entity
//! Management has no `src_endpoint` or `http_request` (OCSF added them to every IAM class in
//! 1.2.0), so those are not emitted for those classes: strict validators reject attributes a class
//! does not define.
//!
//! ## Required attributes ([`missing_required`])
//!
//! | scope | attribute (JSON type) | source |
//! | --- | --- | --- |
//! | every class (base event) | `activity_id` (integer), `category_uid` (integer), `class_uid` (integer), `metadata` (object), `severity_id` (integer), `time` (integer), `type_uid` (integer) | base event, requirement `required` (see the sources below) |
//! | every class (metadata object) | `metadata.product` (object), `metadata.version` (string, must be `"1.1.0"`) | `objects/metadata.json`: `product` and `version` are `required` |
//! | every class (product object) | `metadata.product.vendor_name` (string) | `vendor_name` `required` until 1.4.0 relaxed it (changelog #1300) |
//! | every class (Vellum profile) | `metadata.product.name`, `metadata.product.version` (strings) | `recommended` in OCSF; required here because Vellum always sends them and a SIEM needs them to tell producers apart |
//! | Authentication 3002 | `user` (object); at least one of `service`, `dst_endpoint` (reported as `service\|dst_endpoint`) | `events/iam/authentication.json` at 1.1.0: `user` `required`, constraint `at_least_one: [service, dst_endpoint]`; activity ids 0–5, 99 (Preauth 6 came in 1.2.0, changelog #1018) |
//! | Entity Management 3004 | `entity` (object) with `name` or `uid` (reported as `entity.name\|entity.uid`) | `events/iam/entity_management.json`: `entity` `required`; `objects/managed_entity.json`: constraint `at_least_one: [name, uid]`; activity ids 0–4, 99 (Enroll … Resume came in 1.3.0, changelog #1095) |
//! | API Activity 6003 | `actor` (object), `api` (object), `api.operation` (string), `src_endpoint` (object) | `events/application/api_activity.json`: `actor`, `api`, `src_endpoint` `required`; `objects/api.json`: `operation` `required`; activity ids 0–4, 99 |
//!
//! Sources, per fact (what was read, not recalled):
//! - Class definitions in the OCSF schema repository (github.com/ocsf/ocsf-schema):
//!   `events/iam/authentication.json` in the revision whose activity enum is 1–5 (after
//!   "Service Ticket Renew", v1.1.0 #765; before "Preauth", v1.2.0 #1018), which gives `user`
//!   required and the `service`/`dst_endpoint` constraint; `events/iam/entity_management.json`
//!   (`entity` required); `events/application/api_activity.json` (`actor`, `api`,
//!   `src_endpoint` required); `objects/api.json` (`operation` required);
//!   `objects/metadata.json` (`product`, `version` required).
//! - The repository's CHANGELOG, v1.1.0 through v1.4.0, for what changed after 1.1.0 (Preauth
//!   #1018, IAM `src_endpoint`/`http_request` #976, recommended primaries #974, Entity Management
//!   activities #1095, `product.vendor_name` relaxed #1300).
//! - The 1.1.0 attribute sets per class, from protobuf definitions generated from
//!   `schema.ocsf.io/1.1.0` (github.com/valllabh/ocsf-schema-golang,
//!   `proto/ocsf/v1_1_0/events/iam/iam.proto`): Entity Management there has no `src_endpoint` or
//!   `http_request`.
//! - The 1.2.0 reference pages at docs.tenzir.com (`api_activity`, `managed_entity` with
//!   "at least one of: name, uid"); the changelog shows no requirement change for these between
//!   1.1.0 and 1.2.0.
//! - Base-event requirements (`activity_id`, `category_uid`, `class_uid`, `metadata`,
//!   `severity_id`, `time`, `type_uid`) match the 1.x requirement tables above and the OCSF
//!   documentation; the repository revision of `events/base_event.json` that could be read was a
//!   pre-1.0 draft, so that list is not from a 1.1.0 file.
//!
//! Besides absence and JSON type, the validator also checks the values it can derive:
//! `class_uid` one of the three classes, `category_uid` matching it, `activity_id` in the class's enum, `type_uid` =
//! `class_uid * 100 + activity_id`, `severity_id` in 0–6 or 99, `status_id` (when present) in
//! 0, 1, 2, 99. A value error is reported under the attribute's name too.
//!
//! Not checked: object constraints below the first level other than the two above (for example
//! the `network_endpoint` "at least one of ip, uid, name, …" constraint of later versions, which
//! an empty `src_endpoint` would fail), string formats (`ip_t`, `email_t`), and attributes a
//! class does not define.

use super::{epoch_millis, scalar, text, time_at};
use crate::canonical::to_canonical_string;
use crate::export::fhir_action;
use serde_json::{Map, Value, json};

/// The OCSF schema version written into `metadata.version`.
pub const OCSF_VERSION: &str = "1.1.0";

/// `metadata.product.name` and `metadata.product.vendor_name`.
pub const PRODUCT_NAME: &str = "Vellum";

/// `metadata.product.version`: this crate's version.
pub const PRODUCT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The OCSF event class a Vellum event maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OcsfClass {
    /// Authentication, 3002 (Identity & Access Management).
    Authentication,
    /// Entity Management, 3004 (Identity & Access Management).
    EntityManagement,
    /// API Activity, 6003 (Application Activity).
    ApiActivity,
}

/// Expected JSON type of a required attribute.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Integer,
    Text,
    Object,
}

const BASE_REQUIRED: &[(&str, Kind)] = &[
    ("activity_id", Kind::Integer),
    ("category_uid", Kind::Integer),
    ("class_uid", Kind::Integer),
    ("metadata", Kind::Object),
    ("metadata.product", Kind::Object),
    ("metadata.product.name", Kind::Text),
    ("metadata.product.vendor_name", Kind::Text),
    ("metadata.product.version", Kind::Text),
    ("metadata.version", Kind::Text),
    ("severity_id", Kind::Integer),
    ("time", Kind::Integer),
    ("type_uid", Kind::Integer),
];

const AUTHENTICATION_REQUIRED: &[(&str, Kind)] = &[("user", Kind::Object)];
const ENTITY_MANAGEMENT_REQUIRED: &[(&str, Kind)] = &[("entity", Kind::Object)];
const API_ACTIVITY_REQUIRED: &[(&str, Kind)] = &[
    ("actor", Kind::Object),
    ("api", Kind::Object),
    ("api.operation", Kind::Text),
    ("src_endpoint", Kind::Object),
];

impl OcsfClass {
    /// The three classes.
    pub const ALL: [Self; 3] = [
        Self::Authentication,
        Self::EntityManagement,
        Self::ApiActivity,
    ];

    /// `class_uid`.
    pub fn class_uid(self) -> i64 {
        match self {
            Self::Authentication => 3002,
            Self::EntityManagement => 3004,
            Self::ApiActivity => 6003,
        }
    }

    /// `category_uid`: the thousands of `class_uid`.
    pub fn category_uid(self) -> i64 {
        self.class_uid() / 1000
    }

    /// `class_name`.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Authentication => "Authentication",
            Self::EntityManagement => "Entity Management",
            Self::ApiActivity => "API Activity",
        }
    }

    /// `category_name`.
    pub fn category_name(self) -> &'static str {
        match self {
            Self::Authentication | Self::EntityManagement => "Identity & Access Management",
            Self::ApiActivity => "Application Activity",
        }
    }

    /// The class with this `class_uid`, if it is one of the three.
    pub fn from_class_uid(uid: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.class_uid() == uid)
    }

    /// The `activity_id` values the class defines in OCSF 1.1.0, with their captions.
    pub fn activities(self) -> &'static [(i64, &'static str)] {
        match self {
            Self::Authentication => &[
                (0, "Unknown"),
                (1, "Logon"),
                (2, "Logoff"),
                (3, "Authentication Ticket"),
                (4, "Service Ticket Request"),
                (5, "Service Ticket Renew"),
                (99, "Other"),
            ],
            Self::EntityManagement | Self::ApiActivity => &[
                (0, "Unknown"),
                (1, "Create"),
                (2, "Read"),
                (3, "Update"),
                (4, "Delete"),
                (99, "Other"),
            ],
        }
    }

    /// `type_uid` = `class_uid * 100 + activity_id` (saturating, so any `activity_id` read from
    /// untrusted input gives an answer rather than an overflow).
    pub fn type_uid(self, activity_id: i64) -> i64 {
        (self.class_uid() * 100).saturating_add(activity_id)
    }

    fn required(self) -> &'static [(&'static str, Kind)] {
        match self {
            Self::Authentication => AUTHENTICATION_REQUIRED,
            Self::EntityManagement => ENTITY_MANAGEMENT_REQUIRED,
            Self::ApiActivity => API_ACTIVITY_REQUIRED,
        }
    }

    /// Constraints "at least one of these attributes": (paths, name reported when violated).
    fn at_least_one(self) -> &'static [(&'static [&'static str], &'static str)] {
        match self {
            Self::Authentication => &[(&["service", "dst_endpoint"], "service|dst_endpoint")],
            Self::EntityManagement => &[(&["entity.name", "entity.uid"], "entity.name|entity.uid")],
            Self::ApiActivity => &[],
        }
    }
}

fn action_of(event: &Value) -> &str {
    event.get("action").and_then(Value::as_str).unwrap_or("")
}

fn segments(action: &str) -> impl Iterator<Item = String> + '_ {
    action
        .split(['.', ':', '/', '_', '-'])
        .map(str::to_ascii_lowercase)
}

/// The OCSF class of a Vellum event, from its `action` (table in the module docs).
pub fn ocsf_class(event: &Value) -> OcsfClass {
    let action = action_of(event).to_ascii_lowercase();
    // The first segment, only when another segment follows (`auth.` is a prefix, `auth` is not).
    let prefix = action.split_once('.').map(|(first, _)| first);
    if prefix == Some("auth") {
        OcsfClass::Authentication
    } else if matches!(
        prefix,
        Some("admin" | "keys" | "user" | "account" | "config")
    ) || action
        .split('.')
        .any(|s| matches!(s, "apikey" | "apikeys" | "api_key" | "api-key"))
    {
        OcsfClass::EntityManagement
    } else {
        OcsfClass::ApiActivity
    }
}

/// `activity_id` and `activity_name` of an action within a class (table in the module docs).
pub fn activity(class: OcsfClass, action: &str) -> (i64, String) {
    let other = || {
        let name = if action.is_empty() { "Other" } else { action };
        (99, name.to_owned())
    };
    match class {
        OcsfClass::Authentication => {
            let found = segments(action).find_map(|segment| match segment.as_str() {
                "login" | "logon" => Some((1, "Logon")),
                "logout" | "logoff" => Some((2, "Logoff")),
                _ => None,
            });
            found.map_or_else(other, |(id, name)| (id, name.to_owned()))
        }
        OcsfClass::EntityManagement | OcsfClass::ApiActivity => match fhir_action(action) {
            "C" => (1, "Create".to_owned()),
            "R" => (2, "Read".to_owned()),
            "U" => (3, "Update".to_owned()),
            "D" => (4, "Delete".to_owned()),
            _ => other(),
        },
    }
}

fn severity(event: &Value) -> (i64, &'static str) {
    match event.get("severity").and_then(Value::as_str) {
        Some("low") => (2, "Low"),
        Some("medium") => (3, "Medium"),
        Some("high") => (4, "High"),
        Some("critical") => (5, "Critical"),
        _ => (1, "Informational"),
    }
}

fn status(event: &Value) -> (i64, String) {
    match event.get("status").and_then(Value::as_str) {
        Some("success") => (1, "Success".to_owned()),
        Some("failure") => (2, "Failure".to_owned()),
        Some(other) if !other.is_empty() => (99, other.to_owned()),
        _ => (0, "Unknown".to_owned()),
    }
}

fn user(event: &Value) -> Value {
    let mut user = Map::new();
    match text(event, "/principalId") {
        Some(id) => user.insert("uid".into(), json!(id)),
        None => user.insert("name".into(), json!("unknown")),
    };
    let (type_id, type_name) = match text(event, "/principalType") {
        Some("user" | "professional" | "patient") => (1, "User"),
        Some("admin") => (2, "Admin"),
        Some("system") => (3, "System"),
        Some(other) => (99, other),
        None => (0, "Unknown"),
    };
    user.insert("type_id".into(), json!(type_id));
    user.insert("type".into(), json!(type_name));
    if let Some(org) = text(event, "/organizationId") {
        user.insert("org".into(), json!({ "uid": org }));
    }
    Value::Object(user)
}

fn actor(event: &Value) -> Value {
    let mut actor = Map::new();
    actor.insert("user".into(), user(event));
    if let Some(session) = text(event, "/sessionContext/sessionId") {
        actor.insert("session".into(), json!({ "uid": session }));
    }
    Value::Object(actor)
}

/// The client IP, if it is one (`ip_t`); otherwise it is recorded in `unmapped`.
fn client_ip<'a>(event: &'a Value, unmapped: &mut Map<String, Value>) -> Option<&'a str> {
    let ip = text(event, "/sessionContext/ipAddress")?;
    if ip.parse::<std::net::IpAddr>().is_ok() {
        Some(ip)
    } else {
        unmapped.insert("ipAddress".into(), json!(ip));
        None
    }
}

fn src_endpoint(event: &Value, unmapped: &mut Map<String, Value>) -> Value {
    let mut endpoint = Map::new();
    if let Some(ip) = client_ip(event, unmapped) {
        endpoint.insert("ip".into(), json!(ip));
    }
    if let Some(device) = text(event, "/sessionContext/deviceId") {
        endpoint.insert("uid".into(), json!(device));
    }
    Value::Object(endpoint)
}

fn http_request(event: &Value) -> Option<Value> {
    let mut request = Map::new();
    if let Some(agent) = text(event, "/sessionContext/userAgent") {
        request.insert("user_agent".into(), json!(agent));
    }
    if let Some(method) = text(event, "/technicalContext/httpMethod") {
        request.insert("http_method".into(), json!(method));
    }
    if let Some(path) = text(event, "/technicalContext/endpoint") {
        request.insert("url".into(), json!({ "path": path }));
    }
    (!request.is_empty()).then_some(Value::Object(request))
}

/// The action without its last segment (`admin.apikey.create` → `admin.apikey`), or the action
/// itself when it has one segment.
fn subject_of(action: &str) -> &str {
    match action.rsplit_once('.') {
        Some((head, _)) if !head.is_empty() => head,
        _ => action,
    }
}

fn entity(event: &Value) -> Value {
    let action = action_of(event);
    let subject = if action.is_empty() {
        "unknown"
    } else {
        subject_of(action)
    };
    let kind = text(event, "/targetResourceType");
    let id = text(event, "/targetResourceId");
    let mut entity = Map::new();
    let name = match (kind, id) {
        (Some(k), Some(i)) => format!("{k}/{i}"),
        (Some(one), None) | (None, Some(one)) => one.to_owned(),
        (None, None) => subject.to_owned(),
    };
    entity.insert("name".into(), json!(name));
    if let Some(id) = id {
        entity.insert("uid".into(), json!(id));
    }
    entity.insert("type".into(), json!(kind.unwrap_or(subject)));
    Value::Object(entity)
}

fn api(event: &Value) -> Value {
    let action = action_of(event);
    let mut api = Map::new();
    api.insert(
        "operation".into(),
        json!(if action.is_empty() { "unknown" } else { action }),
    );
    if let Some(request_id) = text(event, "/technicalContext/requestId") {
        api.insert("request".into(), json!({ "uid": request_id }));
    }
    if let Some(code) = event
        .pointer("/technicalContext/statusCode")
        .and_then(Value::as_i64)
    {
        api.insert("response".into(), json!({ "code": code }));
    }
    Value::Object(api)
}

fn resources(event: &Value) -> Option<Value> {
    let kind = text(event, "/targetResourceType");
    let id = text(event, "/targetResourceId");
    if kind.is_none() && id.is_none() {
        return None;
    }
    let mut resource = Map::new();
    if let Some(kind) = kind {
        resource.insert("type".into(), json!(kind));
    }
    match id {
        Some(id) => resource.insert("uid".into(), json!(id)),
        None => resource.insert("name".into(), json!(kind)),
    };
    Some(json!([resource]))
}

fn metadata(event: &Value) -> Value {
    let mut metadata = Map::new();
    metadata.insert("version".into(), json!(OCSF_VERSION));
    metadata.insert(
        "product".into(),
        json!({"name": PRODUCT_NAME, "vendor_name": PRODUCT_NAME, "version": PRODUCT_VERSION}),
    );
    metadata.insert("log_provider".into(), json!(PRODUCT_NAME));
    for (name, pointer) in [
        ("uid", "/id"),
        ("correlation_uid", "/correlationId"),
        ("original_time", "/receivedAt"),
        ("log_name", "/logId"),
    ] {
        if let Some(value) = text(event, pointer) {
            metadata.insert(name.into(), json!(value));
        }
    }
    if let Some(received) = time_at(event, "/receivedAt") {
        metadata.insert("logged_time".into(), json!(epoch_millis(received)));
    }
    if let Some(seq) = event.get("seq").and_then(Value::as_i64) {
        metadata.insert("sequence".into(), json!(seq));
    }
    Value::Object(metadata)
}

fn base_unmapped(event: &Value) -> Map<String, Value> {
    let mut unmapped = Map::new();
    for (name, pointer) in [
        ("hash", "/hash"),
        ("prevHash", "/prevHash"),
        ("keyId", "/keyId"),
        ("signature", "/signature"),
        ("dataClassification", "/dataClassification"),
        ("organizationId", "/organizationId"),
        ("principalType", "/principalType"),
        ("patientId", "/healthcareContext/patientId"),
    ] {
        if let Some(value) = scalar(event, pointer) {
            unmapped.insert(name.into(), json!(value));
        }
    }
    if let Some(emergency) = event
        .pointer("/healthcareContext/emergencyAccess")
        .and_then(Value::as_bool)
    {
        unmapped.insert("emergencyAccess".into(), json!(emergency));
    }
    unmapped
}

/// Maps one stored Vellum event to an OCSF 1.1.0 event (mapping in the module docs). Never
/// panics; for any input the result passes [`missing_required`].
pub fn to_ocsf(event: &Value) -> Value {
    let class = ocsf_class(event);
    let action = action_of(event);
    let (activity_id, activity_name) = activity(class, action);
    let (severity_id, severity_name) = severity(event);
    let (status_id, status_name) = status(event);
    let occurred = time_at(event, "/timestamp");
    let time = occurred
        .or_else(|| time_at(event, "/receivedAt"))
        .map_or(0, epoch_millis);
    let mut unmapped = base_unmapped(event);

    let mut out = Map::new();
    out.insert("activity_id".into(), json!(activity_id));
    out.insert(
        "type_name".into(),
        json!(format!("{}: {activity_name}", class.class_name())),
    );
    out.insert("activity_name".into(), json!(activity_name));
    out.insert("category_uid".into(), json!(class.category_uid()));
    out.insert("category_name".into(), json!(class.category_name()));
    out.insert("class_uid".into(), json!(class.class_uid()));
    out.insert("class_name".into(), json!(class.class_name()));
    out.insert("type_uid".into(), json!(class.type_uid(activity_id)));
    out.insert("severity_id".into(), json!(severity_id));
    out.insert("severity".into(), json!(severity_name));
    out.insert("status_id".into(), json!(status_id));
    out.insert("status".into(), json!(status_name));
    if let Some(code) = scalar(event, "/technicalContext/statusCode") {
        out.insert("status_code".into(), json!(code));
    }
    out.insert("time".into(), json!(time));
    if let Some(at) = occurred {
        out.insert(
            "timezone_offset".into(),
            json!(i64::from(at.offset().whole_minutes())),
        );
    }
    if let Some(message) = text(event, "/outcomeDescription") {
        out.insert("message".into(), json!(message));
    }
    out.insert("metadata".into(), metadata(event));
    out.insert("actor".into(), actor(event));

    match class {
        OcsfClass::Authentication => {
            out.insert("user".into(), user(event));
            out.insert("src_endpoint".into(), src_endpoint(event, &mut unmapped));
            if let Some(request) = http_request(event) {
                out.insert("http_request".into(), request);
            }
            let service = text(event, "/technicalContext/endpoint").unwrap_or("unknown");
            out.insert("service".into(), json!({ "name": service }));
        }
        OcsfClass::EntityManagement => {
            out.insert("entity".into(), entity(event));
            if let Some(ip) = client_ip(event, &mut unmapped) {
                unmapped.insert("ipAddress".into(), json!(ip));
            }
            if let Some(agent) = text(event, "/sessionContext/userAgent") {
                unmapped.insert("userAgent".into(), json!(agent));
            }
        }
        OcsfClass::ApiActivity => {
            out.insert("api".into(), api(event));
            out.insert("src_endpoint".into(), src_endpoint(event, &mut unmapped));
            if let Some(request) = http_request(event) {
                out.insert("http_request".into(), request);
            }
            if let Some(resources) = resources(event) {
                out.insert("resources".into(), resources);
            }
        }
    }

    if !unmapped.is_empty() {
        out.insert("unmapped".into(), Value::Object(unmapped));
    }
    out.insert("raw_data".into(), json!(to_canonical_string(event)));
    Value::Object(out)
}

/// The value at a dotted attribute path (`metadata.product.name`).
fn at_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |current, key| current.get(key))
}

fn has_kind(value: &Value, kind: Kind) -> bool {
    match kind {
        Kind::Integer => value.as_i64().is_some(),
        Kind::Text => value.is_string(),
        Kind::Object => value.is_object(),
    }
}

fn check_required(ocsf: &Value, list: &[(&str, Kind)], missing: &mut Vec<String>) {
    for (path, kind) in list {
        if !at_path(ocsf, path).is_some_and(|v| has_kind(v, *kind)) {
            missing.push((*path).to_owned());
        }
    }
}

fn int_at(ocsf: &Value, name: &str) -> Option<i64> {
    ocsf.get(name).and_then(Value::as_i64)
}

/// The required attributes (per class, OCSF 1.1.0; table in the module docs) that `ocsf` lacks
/// or carries with the wrong JSON type or an impossible value, by dotted path; empty when it is
/// valid. "At least one of" constraints are reported as `a|b`.
pub fn missing_required(ocsf: &Value) -> Vec<String> {
    let mut missing = Vec::new();
    check_required(ocsf, BASE_REQUIRED, &mut missing);
    if at_path(ocsf, "metadata.version")
        .and_then(Value::as_str)
        .is_some_and(|v| v != OCSF_VERSION)
    {
        missing.push("metadata.version".to_owned());
    }
    if let Some(severity_id) = int_at(ocsf, "severity_id")
        && !matches!(severity_id, 0..=6 | 99)
    {
        missing.push("severity_id".to_owned());
    }
    if let Some(status_id) = ocsf.get("status_id")
        && !status_id
            .as_i64()
            .is_some_and(|s| matches!(s, 0 | 1 | 2 | 99))
    {
        missing.push("status_id".to_owned());
    }
    let class_uid = int_at(ocsf, "class_uid");
    match class_uid.and_then(OcsfClass::from_class_uid) {
        None => {
            if class_uid.is_some() {
                missing.push("class_uid".to_owned());
            }
        }
        Some(class) => {
            check_required(ocsf, class.required(), &mut missing);
            for (paths, name) in class.at_least_one() {
                if !paths.iter().any(|p| at_path(ocsf, p).is_some()) {
                    missing.push((*name).to_owned());
                }
            }
            if int_at(ocsf, "category_uid").is_some_and(|c| c != class.category_uid()) {
                missing.push("category_uid".to_owned());
            }
            if let Some(activity_id) = int_at(ocsf, "activity_id") {
                if !class.activities().iter().any(|(id, _)| *id == activity_id) {
                    missing.push("activity_id".to_owned());
                }
                if int_at(ocsf, "type_uid").is_some_and(|t| t != class.type_uid(activity_id)) {
                    missing.push("type_uid".to_owned());
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    missing.retain(|name| seen.insert(name.clone()));
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login_failure() -> Value {
        json!({
            "id": "0190a5e2-7c3b-7000-8000-000000000010",
            "logId": "default",
            "seq": 7,
            "receivedAt": "2026-11-23T09:01:02.123456Z",
            "timestamp": "2026-11-23T10:01:02.5+01:00",
            "action": "auth.login.failure",
            "status": "failure",
            "severity": "high",
            "principalId": "nurse-1",
            "principalType": "professional",
            "organizationId": "clinic-a",
            "outcomeDescription": "wrong password",
            "correlationId": "corr-1",
            "sessionContext": {"sessionId": "s-1", "ipAddress": "203.0.113.9", "userAgent": "Mozilla/5.0"},
            "technicalContext": {"endpoint": "/login", "httpMethod": "POST", "statusCode": 401, "requestId": "r-1"},
            "prevHash": "0".repeat(64),
            "hash": "a".repeat(64),
            "keyId": "default",
            "signature": "b".repeat(64)
        })
    }

    fn apikey_create() -> Value {
        json!({
            "id": "e2",
            "logId": "org-1",
            "seq": 0,
            "receivedAt": "2026-11-23T09:00:00.000000Z",
            "timestamp": "2026-11-23T09:00:00Z",
            "action": "admin.apikey.create",
            "status": "success",
            "principalId": "root",
            "principalType": "admin",
            "organizationId": "org-1",
            "targetResourceType": "ApiKey",
            "targetResourceId": "k-9",
            "sessionContext": {"ipAddress": "2001:db8::1", "userAgent": "curl/8"},
            "hash": "c".repeat(64)
        })
    }

    fn patient_read() -> Value {
        json!({
            "id": "e3",
            "logId": "default",
            "seq": 12,
            "receivedAt": "2026-11-23T09:01:02.000001Z",
            "timestamp": "2026-11-23T09:01:01.999Z",
            "action": "fhir.patient.read",
            "status": "success",
            "principalId": "dr-smith",
            "principalType": "user",
            "organizationId": "org-1",
            "dataClassification": "PHI",
            "targetResourceType": "Patient",
            "targetResourceId": "p-7",
            "healthcareContext": {"patientId": "p-7", "emergencyAccess": true},
            "sessionContext": {"ipAddress": "198.51.100.4", "deviceId": "ws-12"},
            "technicalContext": {"requestId": "req-5", "statusCode": 200},
            "hash": "d".repeat(64),
            "prevHash": "e".repeat(64)
        })
    }

    fn remove_path(value: &mut Value, path: &str) {
        let (parent, last) = match path.rsplit_once('.') {
            Some((parent, last)) => (at_path_mut(value, parent), last),
            None => (Some(value), path),
        };
        if let Some(Value::Object(map)) = parent {
            map.remove(last);
        }
    }

    fn at_path_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
        path.split('.')
            .try_fold(value, |current, key| current.get_mut(key))
    }

    #[test]
    fn class_choice() {
        let cases = [
            ("auth.login.success", OcsfClass::Authentication),
            ("auth.logout", OcsfClass::Authentication),
            ("auth.token.refresh", OcsfClass::Authentication),
            ("auth.mfa.challenge", OcsfClass::Authentication),
            ("AUTH.password.change", OcsfClass::Authentication),
            ("admin.config.change", OcsfClass::EntityManagement),
            ("org.apikey.revoke", OcsfClass::EntityManagement),
            ("keys.rotate", OcsfClass::EntityManagement),
            ("user.create", OcsfClass::EntityManagement),
            ("account.delete", OcsfClass::EntityManagement),
            ("config.update", OcsfClass::EntityManagement),
            ("fhir.patient.read", OcsfClass::ApiActivity),
            ("security.alert.brute_force", OcsfClass::ApiActivity),
            ("authorization.check", OcsfClass::ApiActivity),
            ("auth", OcsfClass::ApiActivity),
            ("users.list", OcsfClass::ApiActivity),
            ("", OcsfClass::ApiActivity),
        ];
        for (action, want) in cases {
            assert_eq!(ocsf_class(&json!({ "action": action })), want, "{action}");
        }
        assert_eq!(ocsf_class(&json!({})), OcsfClass::ApiActivity);
        assert_eq!(ocsf_class(&json!({"action": 5})), OcsfClass::ApiActivity);
    }

    #[test]
    fn activity_mapping() {
        use OcsfClass::*;
        let cases = [
            (Authentication, "auth.login.failure", 1, "Logon"),
            (Authentication, "auth.logout", 2, "Logoff"),
            (
                Authentication,
                "auth.token.refresh",
                99,
                "auth.token.refresh",
            ),
            (EntityManagement, "admin.apikey.create", 1, "Create"),
            (EntityManagement, "admin.user.view", 2, "Read"),
            (EntityManagement, "admin.config.update", 3, "Update"),
            (EntityManagement, "admin.config.change", 3, "Update"),
            (EntityManagement, "user.delete", 4, "Delete"),
            (EntityManagement, "keys.rotate", 99, "keys.rotate"),
            (ApiActivity, "fhir.observation.search", 2, "Read"),
            (ApiActivity, "fhir.patient.read", 2, "Read"),
            (ApiActivity, "audit.export", 99, "audit.export"),
            (ApiActivity, "", 99, "Other"),
        ];
        for (class, action, id, name) in cases {
            assert_eq!(activity(class, action), (id, name.to_owned()), "{action}");
            assert!(class.activities().iter().any(|(a, _)| *a == id));
        }
    }

    #[test]
    fn type_uid_arithmetic() {
        assert_eq!(OcsfClass::Authentication.type_uid(1), 300_201);
        assert_eq!(OcsfClass::EntityManagement.type_uid(99), 300_499);
        assert_eq!(OcsfClass::ApiActivity.type_uid(2), 600_302);
        for class in OcsfClass::ALL {
            assert_eq!(OcsfClass::from_class_uid(class.class_uid()), Some(class));
            assert_eq!(class.category_uid(), class.class_uid() / 1000);
        }
        assert_eq!(OcsfClass::from_class_uid(4001), None);
        assert_eq!(
            OcsfClass::ApiActivity.type_uid(i64::MAX),
            i64::MAX,
            "saturates"
        );
        let mut o = to_ocsf(&patient_read());
        o["activity_id"] = json!(i64::MAX);
        assert_eq!(missing_required(&o), ["activity_id", "type_uid"]);
    }

    #[test]
    fn authentication_event() {
        let o = to_ocsf(&login_failure());
        assert_eq!(missing_required(&o), Vec::<String>::new());
        assert_eq!(o["class_uid"], 3002);
        assert_eq!(o["category_uid"], 3);
        assert_eq!(o["activity_id"], 1);
        assert_eq!(o["type_uid"], 300_201);
        assert_eq!(o["type_name"], "Authentication: Logon");
        assert_eq!(o["severity_id"], 4);
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["status"], "Failure");
        assert_eq!(o["status_code"], "401");
        assert_eq!(o["message"], "wrong password");
        assert_eq!(o["user"]["uid"], "nurse-1");
        assert_eq!(o["user"]["type_id"], 1);
        assert_eq!(o["user"]["org"]["uid"], "clinic-a");
        assert_eq!(o["actor"]["user"], o["user"]);
        assert_eq!(o["actor"]["session"]["uid"], "s-1");
        assert_eq!(o["src_endpoint"]["ip"], "203.0.113.9");
        assert_eq!(o["http_request"]["user_agent"], "Mozilla/5.0");
        assert_eq!(o["http_request"]["http_method"], "POST");
        assert_eq!(o["service"]["name"], "/login");
        assert_eq!(o["metadata"]["correlation_uid"], "corr-1");
        assert!(o.get("resources").is_none());
        assert!(o.get("api").is_none());
    }

    #[test]
    fn entity_management_event() {
        let o = to_ocsf(&apikey_create());
        assert_eq!(missing_required(&o), Vec::<String>::new());
        assert_eq!(o["class_uid"], 3004);
        assert_eq!(o["category_uid"], 3);
        assert_eq!(
            (o["activity_id"].clone(), o["type_uid"].clone()),
            (json!(1), json!(300_401))
        );
        assert_eq!(
            o["entity"],
            json!({"name": "ApiKey/k-9", "uid": "k-9", "type": "ApiKey"})
        );
        assert_eq!(o["actor"]["user"]["type_id"], 2);
        assert_eq!(o["severity_id"], 1, "no severity: informational");
        assert_eq!(o["unmapped"]["ipAddress"], "2001:db8::1");
        assert_eq!(o["unmapped"]["userAgent"], "curl/8");
        for absent in ["src_endpoint", "http_request", "resources", "user", "api"] {
            assert!(o.get(absent).is_none(), "{absent}");
        }
        let no_target = to_ocsf(&json!({"action": "admin.config.change", "status": "success"}));
        assert_eq!(missing_required(&no_target), Vec::<String>::new());
        assert_eq!(
            no_target["entity"],
            json!({"name": "admin.config", "type": "admin.config"})
        );
        assert_eq!(no_target["activity_id"], 3);
    }

    #[test]
    fn api_activity_event() {
        let event = patient_read();
        let o = to_ocsf(&event);
        assert_eq!(missing_required(&o), Vec::<String>::new());
        assert_eq!(o["class_uid"], 6003);
        assert_eq!(o["category_uid"], 6);
        assert_eq!(o["activity_id"], 2);
        assert_eq!(o["type_uid"], 600_302);
        assert_eq!(
            o["api"],
            json!({"operation": "fhir.patient.read", "request": {"uid": "req-5"}, "response": {"code": 200}})
        );
        assert_eq!(
            o["src_endpoint"],
            json!({"ip": "198.51.100.4", "uid": "ws-12"})
        );
        assert_eq!(o["resources"], json!([{"type": "Patient", "uid": "p-7"}]));
        assert_eq!(o["metadata"]["uid"], "e3");
        assert_eq!(o["metadata"]["log_name"], "default");
        assert_eq!(o["metadata"]["sequence"], 12);
        assert_eq!(
            o["metadata"]["original_time"],
            "2026-11-23T09:01:02.000001Z"
        );
        assert_eq!(o["metadata"]["version"], "1.1.0");
        assert_eq!(o["metadata"]["product"]["vendor_name"], "Vellum");
        assert_eq!(
            o["unmapped"],
            json!({
                "hash": "d".repeat(64),
                "prevHash": "e".repeat(64),
                "dataClassification": "PHI",
                "organizationId": "org-1",
                "principalType": "user",
                "patientId": "p-7",
                "emergencyAccess": true
            })
        );
        assert_eq!(o["raw_data"], json!(to_canonical_string(&event)));
    }

    #[test]
    fn time_conversion() {
        let o = to_ocsf(&login_failure());
        // 2026-11-23T10:01:02.5+01:00 = 09:01:02.500Z
        assert_eq!(o["time"], 1_795_424_462_500_i64);
        assert_eq!(o["timezone_offset"], 60);
        assert_eq!(o["metadata"]["logged_time"], 1_795_424_462_123_i64);
        let o = to_ocsf(&json!({"action": "x.read", "receivedAt": "2026-11-23T09:01:02.999999Z"}));
        assert_eq!(
            o["time"], 1_795_424_462_999_i64,
            "falls back to receivedAt, truncates to ms"
        );
        assert!(o.get("timezone_offset").is_none());
        let o = to_ocsf(&json!({"action": "x.read", "timestamp": "yesterday"}));
        assert_eq!(o["time"], 0);
        assert_eq!(missing_required(&o), Vec::<String>::new());
    }

    #[test]
    fn degenerate_events_still_valid() {
        for event in [
            json!({}),
            json!(null),
            json!([1, 2, 3]),
            json!({"action": "auth.login", "status": 3, "severity": ["x"], "seq": "nine",
                   "sessionContext": {"ipAddress": "not-an-ip"}}),
            json!({"action": "admin.user.delete"}),
        ] {
            let o = to_ocsf(&event);
            assert_eq!(missing_required(&o), Vec::<String>::new(), "{event}");
        }
        let o =
            to_ocsf(&json!({"action": "auth.login", "sessionContext": {"ipAddress": "not-an-ip"}}));
        assert_eq!(o["user"]["name"], "unknown");
        assert_eq!(o["user"]["type_id"], 0);
        assert_eq!(o["src_endpoint"], json!({}));
        assert_eq!(o["unmapped"]["ipAddress"], "not-an-ip");
        assert_eq!(o["service"]["name"], "unknown");
        assert_eq!(o["status_id"], 0);
    }

    #[test]
    fn removing_a_required_attribute_is_caught() {
        for (event, class) in [
            (login_failure(), OcsfClass::Authentication),
            (apikey_create(), OcsfClass::EntityManagement),
            (patient_read(), OcsfClass::ApiActivity),
        ] {
            let full = to_ocsf(&event);
            let paths = BASE_REQUIRED
                .iter()
                .chain(class.required())
                .map(|(p, _)| *p);
            for path in paths {
                let mut broken = full.clone();
                remove_path(&mut broken, path);
                let missing = missing_required(&broken);
                assert!(
                    missing.iter().any(|m| m == path),
                    "{class:?} without {path}: {missing:?}"
                );
            }
        }
        let mut no_service = to_ocsf(&login_failure());
        remove_path(&mut no_service, "service");
        assert_eq!(missing_required(&no_service), ["service|dst_endpoint"]);
        let mut nameless = to_ocsf(&apikey_create());
        remove_path(&mut nameless, "entity.name");
        assert_eq!(
            missing_required(&nameless),
            Vec::<String>::new(),
            "uid suffices"
        );
        remove_path(&mut nameless, "entity.uid");
        assert_eq!(missing_required(&nameless), ["entity.name|entity.uid"]);
    }

    #[test]
    fn wrong_types_and_values_are_caught() {
        let full = to_ocsf(&patient_read());
        let cases = [
            ("time", json!("2026-11-23T09:01:02Z"), "time"),
            ("time", json!(1.5), "time"),
            ("metadata", json!("meta"), "metadata"),
            ("src_endpoint", json!("198.51.100.4"), "src_endpoint"),
            ("type_uid", json!(600_303), "type_uid"),
            ("category_uid", json!(3), "category_uid"),
            ("activity_id", json!(7), "activity_id"),
            ("severity_id", json!(42), "severity_id"),
            ("status_id", json!("1"), "status_id"),
            ("class_uid", json!(9999), "class_uid"),
        ];
        for (field, value, want) in cases {
            let mut broken = full.clone();
            broken[field] = value;
            let missing = missing_required(&broken);
            assert!(missing.iter().any(|m| m == want), "{field}: {missing:?}");
        }
        let mut old = full.clone();
        old["metadata"]["version"] = json!("1.0.0");
        assert_eq!(missing_required(&old), ["metadata.version"]);
        let mut operation = full;
        operation["api"]["operation"] = json!(12);
        assert_eq!(missing_required(&operation), ["api.operation"]);
        assert!(missing_required(&json!("not an object")).contains(&"class_uid".to_owned()));
    }
}
