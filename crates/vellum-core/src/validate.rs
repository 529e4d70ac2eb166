//! Validation of a client event against SPEC §2 and a [`ValidationConfig`].
//!
//! Validation runs after sanitization and before defaults are applied, and reports every problem
//! at once (a client fixing one field at a time through 422 round trips is a poor experience),
//! each with the RFC 6901 JSON pointer of the offending value.
//!
//! The checks:
//! - the event is a JSON object no larger than `maxEventBytes`;
//! - no server-owned field ([`SERVER_FIELDS`](crate::model::SERVER_FIELDS)) is present;
//! - required fields (global, per classification, per action prefix) are present and non-null;
//! - every typed field of SPEC §2 has its documented type and value set (a `null` typed field is
//!   a type error: "absent" and "null" must not mean two things downstream);
//! - every string and object key is at most `maxStringLength` characters;
//! - `details`, `changes` and custom top-level fields nest at most `maxCustomFieldDepth` levels;
//! - every number survives RFC 8785 canonicalization unchanged (integers within ±2^53).

use crate::FieldError;
use crate::config::ValidationConfig;
use crate::error::{child_pointer, escape_pointer_token};
use crate::model::{
    DataClassification, PRINCIPAL_TYPES, Severity, Status, is_server_field, is_typed_field,
};
use serde_json::{Map, Value};
use std::net::IpAddr;

/// Largest integer magnitude an IEEE-754 double holds exactly (2^53); RFC 8785 prints numbers
/// as doubles, so a larger integer would silently change between what the client sent and what
/// is hashed.
const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// Longest accepted `action`, in characters.
const MAX_ACTION_CHARS: usize = 256;

/// Longest accepted `idempotencyKey`, in characters.
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// Typed top-level fields that are plain strings with no further constraint.
const PLAIN_STRING_FIELDS: &[&str] = &[
    "principalId",
    "organizationId",
    "targetResourceType",
    "targetResourceId",
    "outcomeDescription",
    "retentionPolicy",
    "correlationId",
];

/// Checks a client event (after sanitization, before defaults are applied) and reports every
/// problem at once, each naming the JSON pointer of the bad value. `encoded_len` is the size in
/// bytes of the JSON the client sent for this event.
pub fn validate(
    event: &Value,
    encoded_len: usize,
    config: &ValidationConfig,
) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    if encoded_len > config.max_event_bytes {
        errors.push(FieldError::new(
            "",
            format!(
                "event is {encoded_len} bytes, larger than the limit of {} bytes",
                config.max_event_bytes
            ),
        ));
    }
    let Value::Object(map) = event else {
        errors.push(FieldError::new("", "event must be a JSON object"));
        return Err(errors);
    };

    let missing = check_required(map, config, &mut errors);
    check_typed_fields(map, config, &missing, &mut errors);

    // Generic checks over the whole tree: string and key lengths, numbers, nesting depth.
    let mut walker = Walker {
        config,
        errors: &mut errors,
        depth_reported: false,
    };
    for (key, value) in map {
        let node = Path::root(key);
        walker.check_key(key, &node);
        let depth_limited = key == "details" || key == "changes" || is_custom_field(key);
        walker.depth_reported = false;
        walker.walk(value, &node, if depth_limited { Some(1) } else { None });
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A top-level key that is neither a typed field nor a server field.
fn is_custom_field(key: &str) -> bool {
    !is_typed_field(key) && !is_server_field(key)
}

/// Checks global, per-classification and per-action required fields. Returns the pointers
/// reported as missing or null, so the type checks do not report them a second time.
fn check_required(
    map: &Map<String, Value>,
    config: &ValidationConfig,
    errors: &mut Vec<FieldError>,
) -> Vec<String> {
    let classification = match map.get("dataClassification") {
        Some(Value::String(c)) => c.as_str(),
        _ => DataClassification::Internal.as_str(),
    };
    let action = map.get("action").and_then(Value::as_str);

    let by_classification = config
        .classification_rules
        .iter()
        .filter(|rule| rule.classification == classification)
        .flat_map(|rule| &rule.required_fields);
    let by_action = config
        .action_rules
        .iter()
        .filter(|rule| action.is_some_and(|a| a.starts_with(rule.action_prefix.as_str())))
        .flat_map(|rule| &rule.required_fields);
    let required = config
        .required_fields
        .iter()
        .chain(by_classification)
        .chain(by_action);

    let mut missing = Vec::new();
    for dotted in required {
        if lookup_dotted(map, dotted).is_some_and(|v| !v.is_null()) {
            continue;
        }
        let pointer = dotted_to_pointer(dotted);
        if !missing.contains(&pointer) {
            errors.push(FieldError::new(pointer.clone(), "is required"));
            missing.push(pointer);
        }
    }
    missing
}

/// `sessionContext.ipAddress` → `/sessionContext/ipAddress`, each segment escaped.
fn dotted_to_pointer(dotted: &str) -> String {
    dotted
        .split('.')
        .fold(String::new(), |acc, seg| child_pointer(&acc, seg))
}

/// Follows a dotted path through objects (and arrays, for numeric segments).
fn lookup_dotted<'a>(map: &'a Map<String, Value>, dotted: &str) -> Option<&'a Value> {
    let mut segments = dotted.split('.');
    let mut current = map.get(segments.next()?)?;
    for seg in segments {
        current = match current {
            Value::Object(m) => m.get(seg)?,
            Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// The pointer of a typed field or of one subfield of a typed context, rendered only when an
/// error needs it (the names are fixed and need no escaping).
#[derive(Debug, Clone, Copy)]
struct Ptr {
    field: &'static str,
    sub: Option<&'static str>,
}

impl Ptr {
    fn top(field: &'static str) -> Self {
        Self { field, sub: None }
    }

    fn sub(self, sub: &'static str) -> Self {
        Self {
            field: self.field,
            sub: Some(sub),
        }
    }

    fn render(self) -> String {
        match self.sub {
            None => format!("/{}", self.field),
            Some(sub) => format!("/{}/{sub}", self.field),
        }
    }

    /// Compares with a rendered pointer without rendering this one.
    fn is(self, pointer: &str) -> bool {
        let rest = pointer
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(self.field));
        match (rest, self.sub) {
            (Some(rest), None) => rest.is_empty(),
            (Some(rest), Some(sub)) => rest.strip_prefix('/') == Some(sub),
            (None, _) => false,
        }
    }
}

/// Collects errors for typed fields, skipping pointers already reported as missing.
struct TypeChecker<'a> {
    errors: &'a mut Vec<FieldError>,
    missing: &'a [String],
}

impl TypeChecker<'_> {
    fn error(&mut self, ptr: Ptr, message: impl Into<String>) {
        self.errors.push(FieldError::new(ptr.render(), message));
    }

    /// Whether a value should be skipped: a null that was already reported as a missing
    /// required field is not reported again.
    fn skip(&self, ptr: Ptr, value: &Value) -> bool {
        value.is_null() && self.missing.iter().any(|m| ptr.is(m))
    }

    fn string<'v>(&mut self, ptr: Ptr, value: &'v Value) -> Option<&'v str> {
        if self.skip(ptr, value) {
            return None;
        }
        match value {
            Value::String(s) => Some(s),
            _ => {
                self.error(ptr, "must be a string");
                None
            }
        }
    }

    fn one_of(&mut self, ptr: Ptr, value: &Value, allowed: &[&str]) {
        if self.skip(ptr, value) {
            return;
        }
        let ok = value.as_str().is_some_and(|s| allowed.contains(&s));
        if !ok {
            self.error(ptr, format!("must be one of {}", allowed.join(", ")));
        }
    }

    fn object<'v>(&mut self, ptr: Ptr, value: &'v Value) -> Option<&'v Map<String, Value>> {
        if self.skip(ptr, value) {
            return None;
        }
        match value {
            Value::Object(m) => Some(m),
            _ => {
                self.error(ptr, "must be an object");
                None
            }
        }
    }

    /// Reports `message` unless the value is fine or was already reported missing.
    fn require(&mut self, ptr: Ptr, value: &Value, ok: bool, message: &str) {
        if !ok && !self.skip(ptr, value) {
            self.error(ptr, message);
        }
    }

    fn string_array(&mut self, ptr: Ptr, value: &Value) {
        if self.skip(ptr, value) {
            return;
        }
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_string() {
                        self.errors.push(FieldError::new(
                            format!("{}/{i}", ptr.render()),
                            "must be a string",
                        ));
                    }
                }
            }
            _ => self.error(ptr, "must be an array of strings"),
        }
    }

    /// Checks the listed string subfields of a context object.
    fn string_subfields(&mut self, parent: Ptr, map: &Map<String, Value>, names: &[&'static str]) {
        for name in names {
            if let Some(v) = map.get(*name) {
                self.string(parent.sub(name), v);
            }
        }
    }
}

fn check_typed_fields(
    map: &Map<String, Value>,
    config: &ValidationConfig,
    missing: &[String],
    errors: &mut Vec<FieldError>,
) {
    let mut tc = TypeChecker { errors, missing };
    for (key, v) in map {
        let key = key.as_str();
        match key {
            "action" => {
                if let Some(action) = tc.string(Ptr::top("action"), v) {
                    check_action(&mut tc, action);
                }
            }
            "status" => tc.one_of(Ptr::top("status"), v, Status::ALL),
            "timestamp" => {
                if let Some(ts) = tc.string(Ptr::top("timestamp"), v)
                    && crate::time_fmt::parse_rfc3339(ts).is_err()
                {
                    tc.error(
                        Ptr::top("timestamp"),
                        "must be an RFC 3339 timestamp, e.g. 2026-11-23T09:01:02Z",
                    );
                }
            }
            "principalType" => tc.one_of(Ptr::top("principalType"), v, PRINCIPAL_TYPES),
            "dataClassification" => check_classification(&mut tc, v, config),
            "severity" => tc.one_of(Ptr::top("severity"), v, Severity::ALL),
            "eventVersion" => {
                let ptr = Ptr::top("eventVersion");
                let ok = v
                    .as_str()
                    .is_some_and(|s| config.allowed_event_versions.iter().any(|a| a == s));
                if !ok && !tc.skip(ptr, v) {
                    let allowed = config.allowed_event_versions.join(", ");
                    tc.error(ptr, format!("must be one of {allowed}"));
                }
            }
            "idempotencyKey" => {
                if let Some(k) = tc.string(Ptr::top("idempotencyKey"), v) {
                    let chars = k.chars().count();
                    if !(1..=MAX_IDEMPOTENCY_KEY_CHARS).contains(&chars) {
                        tc.error(
                            Ptr::top("idempotencyKey"),
                            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters long"),
                        );
                    }
                }
            }
            "principalId" | "organizationId" | "targetResourceType" | "targetResourceId"
            | "outcomeDescription" | "retentionPolicy" | "correlationId" => {
                if let Some(name) = PLAIN_STRING_FIELDS.iter().find(|n| **n == key) {
                    tc.string(Ptr::top(name), v);
                }
            }
            "sessionContext" => check_session_context(&mut tc, v),
            "gdprContext" => {
                let p = Ptr::top("gdprContext");
                if let Some(ctx) = tc.object(p, v) {
                    tc.string_subfields(
                        p,
                        ctx,
                        &["dataSubjectId", "legalBasis", "processingPurpose"],
                    );
                    if let Some(cats) = ctx.get("dataCategories") {
                        tc.string_array(p.sub("dataCategories"), cats);
                    }
                }
            }
            "healthcareContext" => {
                let p = Ptr::top("healthcareContext");
                if let Some(ctx) = tc.object(p, v) {
                    tc.string_subfields(
                        p,
                        ctx,
                        &[
                            "patientId",
                            "clinicId",
                            "departmentId",
                            "procedureCode",
                            "diagnosisCode",
                            "clinicalJustification",
                        ],
                    );
                    if let Some(e) = ctx.get("emergencyAccess") {
                        let ok = e.is_boolean();
                        tc.require(p.sub("emergencyAccess"), e, ok, "must be true or false");
                    }
                }
            }
            "technicalContext" => check_technical_context(&mut tc, v),
            "changes" => {
                let p = Ptr::top("changes");
                if let Some(changes) = tc.object(p, v) {
                    if let Some(fields) = changes.get("changedFields") {
                        tc.string_array(p.sub("changedFields"), fields);
                    }
                    for name in ["oldValues", "newValues"] {
                        if let Some(values) = changes.get(name) {
                            tc.object(p.sub(name), values);
                        }
                    }
                }
            }
            "details" => {
                tc.object(Ptr::top("details"), v);
            }
            _ => {
                if is_server_field(key) {
                    tc.errors.push(FieldError::new(
                        child_pointer("", key),
                        "is set by the server and must not be sent",
                    ));
                }
            }
        }
    }
}

fn check_classification(tc: &mut TypeChecker<'_>, v: &Value, config: &ValidationConfig) {
    let ptr = Ptr::top("dataClassification");
    match v.as_str() {
        Some(c) if DataClassification::ALL.contains(&c) => {
            if !config.allowed_data_classifications.iter().any(|a| a == c) {
                tc.error(
                    ptr,
                    format!(
                        "is not accepted by this server; allowed: {}",
                        config.allowed_data_classifications.join(", ")
                    ),
                );
            }
        }
        _ => tc.one_of(ptr, v, DataClassification::ALL),
    }
}

fn check_session_context(tc: &mut TypeChecker<'_>, v: &Value) {
    let p = Ptr::top("sessionContext");
    let Some(ctx) = tc.object(p, v) else { return };
    tc.string_subfields(p, ctx, &["sessionId", "userAgent", "deviceId"]);
    if let Some(ip) = ctx.get("ipAddress")
        && let Some(text) = tc.string(p.sub("ipAddress"), ip)
        && text.parse::<IpAddr>().is_err()
    {
        tc.error(p.sub("ipAddress"), "must be an IPv4 or IPv6 address");
    }
    if let Some(geo) = ctx.get("geolocation") {
        let ok = geo.is_string() || geo.is_object();
        tc.require(
            p.sub("geolocation"),
            geo,
            ok,
            "must be a string or an object",
        );
    }
}

fn check_technical_context(tc: &mut TypeChecker<'_>, v: &Value) {
    let p = Ptr::top("technicalContext");
    let Some(ctx) = tc.object(p, v) else { return };
    tc.string_subfields(p, ctx, &["endpoint", "httpMethod", "requestId"]);
    if let Some(code) = ctx.get("statusCode") {
        let ok = code.as_u64().is_some_and(|c| (100..=599).contains(&c));
        tc.require(
            p.sub("statusCode"),
            code,
            ok,
            "must be an integer from 100 to 599",
        );
    }
    if let Some(d) = ctx.get("durationMs") {
        let ok = d.as_f64().is_some_and(|ms| ms >= 0.0);
        tc.require(p.sub("durationMs"), d, ok, "must be a non-negative number");
    }
}

/// `action`: a dotted verb such as `fhir.patient.read`.
fn check_action(tc: &mut TypeChecker<'_>, action: &str) {
    let pointer = || Ptr::top("action");
    if action.is_empty() {
        tc.error(pointer(), "must not be empty");
        return;
    }
    if action.chars().any(char::is_whitespace) {
        tc.error(pointer(), "must not contain whitespace");
        return;
    }
    if action.chars().count() > MAX_ACTION_CHARS {
        tc.error(
            pointer(),
            format!("must be at most {MAX_ACTION_CHARS} characters long"),
        );
        return;
    }
    let charset_ok = action
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    let segments_ok = action.split('.').all(|seg| !seg.is_empty());
    if !charset_ok || !segments_ok {
        tc.error(
            pointer(),
            "must be a dotted verb of letters, digits, '_' and '-' separated by single dots, \
             e.g. fhir.patient.read",
        );
    }
}

/// Generic checks applied to every value of the event.
struct Walker<'a> {
    config: &'a ValidationConfig,
    errors: &'a mut Vec<FieldError>,
    /// Only the first too-deep value of each top-level field is reported.
    depth_reported: bool,
}

impl Walker<'_> {
    /// `depth` is the nesting level of `value` when it sits inside a depth-limited field
    /// (`details`, `changes`, custom fields), `None` elsewhere.
    fn walk(&mut self, value: &Value, path: &Path<'_>, depth: Option<usize>) {
        match value {
            Value::String(s) => self.check_string(s, path),
            Value::Number(n) => self.check_number(n, path),
            Value::Array(items) => {
                self.note_depth(depth, path);
                for (i, item) in items.iter().enumerate() {
                    let node = path.index(i);
                    self.walk(item, &node, depth.map(|d| d + 1));
                }
            }
            Value::Object(map) => {
                self.note_depth(depth, path);
                for (key, item) in map {
                    let node = path.key(key);
                    self.check_key(key, &node);
                    self.walk(item, &node, depth.map(|d| d + 1));
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }

    /// Reports (once per top-level field) a container nested deeper than allowed. The
    /// container's contents are still checked for the other rules.
    fn note_depth(&mut self, depth: Option<usize>, path: &Path<'_>) {
        let Some(depth) = depth else { return };
        if depth <= self.config.max_custom_field_depth || self.depth_reported {
            return;
        }
        self.depth_reported = true;
        self.errors.push(FieldError::new(
            path.to_pointer(),
            format!(
                "nests deeper than {} levels, the limit for details, changes and custom fields",
                self.config.max_custom_field_depth
            ),
        ));
    }

    fn check_string(&mut self, s: &str, path: &Path<'_>) {
        if let Some(chars) = too_long(s, self.config.max_string_length) {
            self.errors.push(FieldError::new(
                path.to_pointer(),
                format!(
                    "is {chars} characters long; the limit is {}",
                    self.config.max_string_length
                ),
            ));
        }
    }

    fn check_key(&mut self, key: &str, path: &Path<'_>) {
        if let Some(chars) = too_long(key, self.config.max_string_length) {
            self.errors.push(FieldError::new(
                path.to_pointer(),
                format!(
                    "has a field name {chars} characters long; the limit is {}",
                    self.config.max_string_length
                ),
            ));
        }
    }

    fn check_number(&mut self, n: &serde_json::Number, path: &Path<'_>) {
        let exact = if let Some(u) = n.as_u64() {
            u <= MAX_EXACT_INTEGER
        } else if let Some(i) = n.as_i64() {
            i.unsigned_abs() <= MAX_EXACT_INTEGER
        } else {
            // Parsed as a double already, so canonicalization prints the same value.
            true
        };
        if !exact {
            self.errors.push(FieldError::new(
                path.to_pointer(),
                format!(
                    "integer {n} is outside ±2^53 and cannot be stored exactly \
                     (RFC 7493 I-JSON); send it as a string"
                ),
            ));
        }
    }
}

/// The length of `s` in characters if it exceeds `max`; cheap when it does not (the byte
/// length bounds the character count).
fn too_long(s: &str, max: usize) -> Option<usize> {
    if s.len() <= max {
        return None;
    }
    let chars = s.chars().count();
    (chars > max).then_some(chars)
}

/// One reference token of a JSON pointer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg<'a> {
    /// An object member name (unescaped).
    Key(&'a str),
    /// An array index.
    Index(usize),
}

/// A JSON pointer kept as a linked list of tokens on the stack, so a tree walk builds no
/// strings until it has something to report (validation, sanitization and redaction touch
/// every value of every event; only a few values ever need their pointer).
#[derive(Debug)]
pub(crate) struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    seg: Seg<'a>,
}

impl<'a> Path<'a> {
    /// The pointer of a top-level member.
    pub(crate) fn root(key: &'a str) -> Self {
        Self {
            parent: None,
            seg: Seg::Key(key),
        }
    }

    /// The pointer of an element of a top-level array (only a non-object "event" has one).
    pub(crate) fn index_root(index: usize) -> Self {
        Self {
            parent: None,
            seg: Seg::Index(index),
        }
    }

    /// The pointer of member `key` of this value.
    pub(crate) fn key<'b>(&'b self, key: &'b str) -> Path<'b> {
        Path {
            parent: Some(self),
            seg: Seg::Key(key),
        }
    }

    /// The pointer of element `index` of this value.
    pub(crate) fn index(&self, index: usize) -> Path<'_> {
        Path {
            parent: Some(self),
            seg: Seg::Index(index),
        }
    }

    /// The last token.
    pub(crate) fn seg(&self) -> Seg<'a> {
        self.seg
    }

    /// The enclosing value's path, if any.
    pub(crate) fn parent(&self) -> Option<&'a Path<'a>> {
        self.parent
    }

    /// Renders the RFC 6901 pointer, escaping `~` and `/` in member names.
    pub(crate) fn to_pointer(&self) -> String {
        let mut segs = Vec::with_capacity(8);
        let mut node = Some(self);
        while let Some(n) = node {
            segs.push(n.seg);
            node = n.parent;
        }
        // One buffer for the whole pointer (no intermediate string per segment).
        let len: usize = segs
            .iter()
            .map(|seg| match seg {
                Seg::Key(k) => k.len() + 1,
                Seg::Index(_) => 8,
            })
            .sum();
        let mut out = String::with_capacity(len);
        for seg in segs.iter().rev() {
            out.push('/');
            match seg {
                Seg::Key(k) => out.push_str(&escape_pointer_token(k)),
                Seg::Index(i) => out.push_str(itoa::Buffer::new().format(*i)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ActionRule, ClassificationRule};
    use crate::model::SERVER_FIELDS;
    use serde_json::json;

    fn check(event: &Value) -> Vec<FieldError> {
        check_with(event, &ValidationConfig::default())
    }

    fn check_with(event: &Value, config: &ValidationConfig) -> Vec<FieldError> {
        let len = serde_json::to_string(event).map(|s| s.len()).unwrap_or(0);
        match validate(event, len, config) {
            Ok(()) => Vec::new(),
            Err(errors) => {
                assert!(!errors.is_empty(), "Err must carry at least one error");
                errors
            }
        }
    }

    fn paths(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.path.as_str()).collect()
    }

    fn has(errors: &[FieldError], path: &str, fragment: &str) -> bool {
        errors
            .iter()
            .any(|e| e.path == path && e.message.contains(fragment))
    }

    fn full_event() -> Value {
        json!({
            "action": "fhir.patient.read",
            "status": "success",
            "timestamp": "2026-11-23T10:01:02.5+01:00",
            "principalId": "dr-42",
            "principalType": "professional",
            "organizationId": "org-1",
            "targetResourceType": "Patient",
            "targetResourceId": "pat-7",
            "outcomeDescription": "Read the chart",
            "dataClassification": "PHI",
            "retentionPolicy": "hipaa-6-years",
            "severity": "low",
            "correlationId": "c-1",
            "eventVersion": "1.0",
            "idempotencyKey": "k-1",
            "sessionContext": {
                "sessionId": "s", "ipAddress": "2001:db8::1", "userAgent": "ua",
                "geolocation": {"lat": 1.5, "lon": -3}, "deviceId": "d"
            },
            "gdprContext": {
                "dataSubjectId": "ds", "legalBasis": "consent", "processingPurpose": "care",
                "dataCategories": ["health", "contact"]
            },
            "healthcareContext": {
                "patientId": "p", "clinicId": "c", "departmentId": "d", "procedureCode": "x",
                "diagnosisCode": "J45", "emergencyAccess": true, "clinicalJustification": "why"
            },
            "technicalContext": {
                "endpoint": "/fhir/Patient/7", "httpMethod": "GET", "statusCode": 200,
                "durationMs": 12.5, "requestId": "r"
            },
            "changes": {"changedFields": ["a"], "oldValues": {"a": 1}, "newValues": {"a": 2}},
            "details": {"free": {"form": [1, "two", null, true]}},
            "customField": {"x": 1}
        })
    }

    #[test]
    fn accepts_a_complete_valid_event() {
        assert_eq!(check(&full_event()), vec![]);
    }

    #[test]
    fn accepts_a_minimal_event() {
        assert_eq!(
            check(&json!({"action": "auth.login", "status": "failure"})),
            vec![]
        );
        // A single-segment verb is allowed (legacy clients send e.g. USER_LOGIN).
        assert_eq!(
            check(&json!({"action": "USER_LOGIN", "status": "attempt"})),
            vec![]
        );
    }

    #[test]
    fn rejects_non_objects() {
        for event in [json!([1]), json!("x"), json!(null), json!(3)] {
            let errors = check(&event);
            assert_eq!(paths(&errors), vec![""]);
            assert!(errors[0].message.contains("object"));
        }
    }

    #[test]
    fn rejects_oversized_events_and_names_the_limit() {
        let event = json!({"action": "a.b", "status": "success"});
        let config = ValidationConfig {
            max_event_bytes: 10,
            ..ValidationConfig::default()
        };
        let errors = validate(&event, 11, &config).err().unwrap_or_default();
        assert_eq!(paths(&errors), vec![""]);
        assert!(
            errors[0].message.contains("10 bytes"),
            "{}",
            errors[0].message
        );
        assert!(validate(&event, 10, &config).is_ok());
    }

    #[test]
    fn rejects_every_server_field() {
        let mut event = json!({"action": "a.b", "status": "success"});
        for field in SERVER_FIELDS {
            event[*field] = json!("x");
        }
        let errors = check(&event);
        for field in SERVER_FIELDS {
            assert!(
                has(&errors, &format!("/{field}"), "is set by the server"),
                "{field}: {errors:?}"
            );
        }
    }

    #[test]
    fn reports_missing_and_null_required_fields_once() {
        let errors = check(&json!({"status": null}));
        assert_eq!(paths(&errors), vec!["/action", "/status"]);
        assert!(errors.iter().all(|e| e.message == "is required"));
    }

    #[test]
    fn nested_required_fields_use_pointers() {
        let config = ValidationConfig {
            required_fields: vec!["action".into(), "sessionContext.ipAddress".into()],
            ..ValidationConfig::default()
        };
        let errors = check_with(&json!({"action": "a.b", "sessionContext": {}}), &config);
        assert_eq!(paths(&errors), vec!["/sessionContext/ipAddress"]);
        let ok = json!({"action": "a.b", "sessionContext": {"ipAddress": "10.0.0.1"}});
        assert_eq!(check_with(&ok, &config), vec![]);
        // A null required subfield is reported once, as missing, not also as a type error.
        let null = json!({"action": "a.b", "sessionContext": {"ipAddress": null}});
        let errors = check_with(&null, &config);
        assert_eq!(paths(&errors), vec!["/sessionContext/ipAddress"]);
        assert_eq!(errors[0].message, "is required");
    }

    #[test]
    fn classification_rules_use_the_effective_classification() {
        let phi = json!({"action": "a.b", "status": "success", "dataClassification": "PHI"});
        assert!(has(&check(&phi), "/principalId", "is required"));

        let config = ValidationConfig {
            classification_rules: vec![ClassificationRule {
                classification: "INTERNAL".into(),
                required_fields: vec!["correlationId".into()],
            }],
            ..ValidationConfig::default()
        };
        // No classification sent: INTERNAL applies.
        let event = json!({"action": "a.b", "status": "success"});
        assert_eq!(paths(&check_with(&event, &config)), vec!["/correlationId"]);
        let public = json!({"action": "a.b", "status": "success", "dataClassification": "PUBLIC"});
        assert_eq!(check_with(&public, &config), vec![]);
    }

    #[test]
    fn action_rules_match_by_prefix() {
        let admin = json!({"action": "admin.config.change", "status": "success"});
        assert_eq!(paths(&check(&admin)), vec!["/organizationId"]);
        let not_admin = json!({"action": "administrator.login", "status": "success"});
        assert_eq!(check(&not_admin), vec![]);

        let config = ValidationConfig {
            action_rules: vec![ActionRule {
                action_prefix: "fhir.".into(),
                required_fields: vec!["healthcareContext.patientId".into()],
            }],
            ..ValidationConfig::default()
        };
        let fhir = json!({"action": "fhir.patient.read", "status": "success"});
        assert_eq!(
            paths(&check_with(&fhir, &config)),
            vec!["/healthcareContext/patientId"]
        );
    }

    #[test]
    fn action_shape() {
        let cases = [
            (json!(""), "must not be empty"),
            (json!("fhir patient"), "whitespace"),
            (json!("fhir..read"), "dotted verb"),
            (json!(".read"), "dotted verb"),
            (json!("read."), "dotted verb"),
            (json!("fhir/patient"), "dotted verb"),
            (json!("fhir.pätient"), "dotted verb"),
            (json!(42), "must be a string"),
            (json!(null), "is required"),
            (json!("a".repeat(257)), "at most 256"),
        ];
        for (action, fragment) in cases {
            let errors = check(&json!({"action": action, "status": "success"}));
            assert!(has(&errors, "/action", fragment), "{action}: {errors:?}");
        }
        let ok = json!({"action": format!("{}.x-y_z.9", "a".repeat(240)), "status": "success"});
        assert_eq!(check(&ok), vec![]);
    }

    #[test]
    fn enumerations() {
        let event = json!({
            "action": "a.b", "status": "done", "principalType": "robot",
            "dataClassification": "SECRET", "severity": "urgent", "eventVersion": "2.0"
        });
        let errors = check(&event);
        assert!(has(
            &errors,
            "/status",
            "attempt, success, failure, warning"
        ));
        assert!(has(&errors, "/principalType", "ai_agent"));
        assert!(has(
            &errors,
            "/dataClassification",
            "PUBLIC, INTERNAL, CONFIDENTIAL, PHI"
        ));
        assert!(has(&errors, "/severity", "low, medium, high, critical"));
        assert!(has(&errors, "/eventVersion", "1.0"));
        assert_eq!(errors.len(), 5, "{errors:?}");
    }

    #[test]
    fn classification_must_be_allowed_by_config() {
        let config = ValidationConfig {
            allowed_data_classifications: vec!["INTERNAL".into()],
            ..ValidationConfig::default()
        };
        let event = json!({"action": "a.b", "status": "success", "dataClassification": "PHI",
                           "principalId": "p"});
        let errors = check_with(&event, &config);
        assert_eq!(paths(&errors), vec!["/dataClassification"]);
        assert!(errors[0].message.contains("not accepted"));
    }

    #[test]
    fn timestamp_must_be_rfc3339() {
        for bad in [
            json!("2026-11-23"),
            json!("yesterday"),
            json!(1_700_000_000),
        ] {
            let errors = check(&json!({"action": "a.b", "status": "success", "timestamp": bad}));
            assert_eq!(paths(&errors), vec!["/timestamp"], "{bad}");
        }
    }

    #[test]
    fn plain_string_fields_must_be_strings() {
        let mut event = json!({"action": "a.b", "status": "success"});
        for name in PLAIN_STRING_FIELDS {
            event[*name] = json!(1);
        }
        let errors = check(&event);
        for name in PLAIN_STRING_FIELDS {
            assert!(
                has(&errors, &format!("/{name}"), "must be a string"),
                "{name}"
            );
        }
        assert_eq!(errors.len(), PLAIN_STRING_FIELDS.len());
    }

    #[test]
    fn idempotency_key_length() {
        for bad in [json!(""), json!("k".repeat(256)), json!(7)] {
            let errors =
                check(&json!({"action": "a.b", "status": "success", "idempotencyKey": bad}));
            assert_eq!(paths(&errors), vec!["/idempotencyKey"]);
        }
        let ok = json!({"action": "a.b", "status": "success", "idempotencyKey": "é".repeat(255)});
        assert_eq!(check(&ok), vec![]);
    }

    #[test]
    fn context_objects_and_subfields() {
        let event = json!({
            "action": "a.b", "status": "success",
            "sessionContext": {"ipAddress": "999.1.1.1", "geolocation": 5, "sessionId": 1},
            "gdprContext": {"dataCategories": ["ok", 2], "legalBasis": false},
            "healthcareContext": {"emergencyAccess": "yes", "patientId": []},
            "technicalContext": {"statusCode": 99, "durationMs": -1},
            "changes": {"changedFields": "a", "oldValues": [], "newValues": "x"},
            "details": "text"
        });
        let errors = check(&event);
        let expected = [
            ("/sessionContext/ipAddress", "IPv4 or IPv6"),
            ("/sessionContext/geolocation", "string or an object"),
            ("/sessionContext/sessionId", "must be a string"),
            ("/gdprContext/dataCategories/1", "must be a string"),
            ("/gdprContext/legalBasis", "must be a string"),
            ("/healthcareContext/emergencyAccess", "true or false"),
            ("/healthcareContext/patientId", "must be a string"),
            ("/technicalContext/statusCode", "100 to 599"),
            ("/technicalContext/durationMs", "non-negative"),
            ("/changes/changedFields", "array of strings"),
            ("/changes/oldValues", "must be an object"),
            ("/changes/newValues", "must be an object"),
            ("/details", "must be an object"),
        ];
        for (path, fragment) in expected {
            assert!(has(&errors, path, fragment), "{path}: {errors:?}");
        }
        assert_eq!(errors.len(), expected.len(), "{errors:?}");
    }

    #[test]
    fn contexts_must_be_objects() {
        let mut event = json!({"action": "a.b", "status": "success"});
        let contexts = [
            "sessionContext",
            "gdprContext",
            "healthcareContext",
            "technicalContext",
        ];
        for name in contexts {
            event[name] = json!("text");
        }
        let errors = check(&event);
        for name in contexts {
            assert!(has(&errors, &format!("/{name}"), "must be an object"));
        }
    }

    #[test]
    fn status_code_must_be_an_integer() {
        for bad in [json!(200.5), json!(600), json!("200"), json!(-200)] {
            let event = json!({"action": "a.b", "status": "success",
                               "technicalContext": {"statusCode": bad}});
            assert_eq!(paths(&check(&event)), vec!["/technicalContext/statusCode"]);
        }
        let ok = json!({"action": "a.b", "status": "success",
                        "technicalContext": {"statusCode": 599, "durationMs": 0}});
        assert_eq!(check(&ok), vec![]);
    }

    #[test]
    fn ip_addresses() {
        for ip in ["127.0.0.1", "::1", "fe80::1"] {
            let event = json!({"action": "a.b", "status": "success",
                               "sessionContext": {"ipAddress": ip}});
            assert_eq!(check(&event), vec![], "{ip}");
        }
        for ip in ["localhost", "10.0.0", "10.0.0.1:80", ""] {
            let event = json!({"action": "a.b", "status": "success",
                               "sessionContext": {"ipAddress": ip}});
            assert_eq!(
                paths(&check(&event)),
                vec!["/sessionContext/ipAddress"],
                "{ip}"
            );
        }
    }

    #[test]
    fn string_length_counts_characters_and_escapes_pointers() {
        let config = ValidationConfig {
            max_string_length: 4,
            ..ValidationConfig::default()
        };
        let event = json!({
            "action": "a.b", "status": "success",
            "details": {"a/b~c": "12345", "ok": "ééé", "list": ["x", "toolong"],
                        "longname": 1}
        });
        let errors = check_with(&event, &config);
        assert!(
            has(&errors, "/details/a~1b~0c", "5 characters"),
            "{errors:?}"
        );
        assert!(has(&errors, "/details/list/1", "7 characters"));
        assert!(has(&errors, "/details/longname", "field name 8 characters"));
        // `ééé` is 6 bytes but 3 characters; `status` and `success` are too long too.
        assert!(!errors.iter().any(|e| e.path == "/details/ok"));
        assert!(has(&errors, "/status", "7 characters"));
    }

    #[test]
    fn nesting_depth_is_limited_in_details_changes_and_custom_fields() {
        let config = ValidationConfig {
            max_custom_field_depth: 3,
            ..ValidationConfig::default()
        };
        // details (1) → a (2) → b (3) is fine; c would be level 4.
        let ok = json!({"action": "a.b", "status": "success",
                        "details": {"a": {"b": {"leaf": 1}}}});
        assert_eq!(check_with(&ok, &config), vec![]);
        let deep = json!({
            "action": "a.b", "status": "success",
            "details": {"a": {"b": {"c": {"d": {}}}, "b2": {"c2": [[1]]}}},
            "changes": {"newValues": {"x": [[]]}},
            "custom": [[[[1]]]],
            "sessionContext": {"geolocation": {"a": {"b": {"c": {"d": {}}}}}}
        });
        let errors = check_with(&deep, &config);
        assert_eq!(
            paths(&errors),
            vec!["/changes/newValues/x/0", "/custom/0/0/0", "/details/a/b/c"],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("deeper than 3"));
    }

    #[test]
    fn integers_beyond_two_to_the_53_are_refused() {
        let event = json!({
            "action": "a.b", "status": "success",
            "details": {"ok": 9_007_199_254_740_992_u64, "big": 9_007_199_254_740_993_u64,
                        "neg": -9_007_199_254_740_993_i64, "okneg": -9_007_199_254_740_992_i64,
                        "float": 1.0e300},
            "technicalContext": {"durationMs": 18_446_744_073_709_551_615_u64}
        });
        let errors = check(&event);
        assert_eq!(
            paths(&errors),
            vec![
                "/details/big",
                "/details/neg",
                "/technicalContext/durationMs"
            ]
        );
        assert!(errors.iter().all(|e| e.message.contains("RFC 7493")));
    }

    #[test]
    fn collects_multiple_errors_at_once() {
        let event = json!({
            "status": "nope", "hash": "x", "timestamp": "then",
            "details": {"n": 18_446_744_073_709_551_615_u64}
        });
        let errors = validate(&event, 100_000, &ValidationConfig::default())
            .err()
            .unwrap_or_default();
        let mut got = paths(&errors);
        got.sort_unstable();
        assert_eq!(
            got,
            vec![
                "",
                "/action",
                "/details/n",
                "/hash",
                "/status",
                "/timestamp"
            ]
        );
    }

    #[test]
    fn path_renders_escaped_pointers() {
        let root = Path::root("details");
        let a = root.key("a/b");
        let i = a.index(3);
        let t = i.key("~x");
        assert_eq!(t.to_pointer(), "/details/a~1b/3/~0x");
        assert_eq!(root.to_pointer(), "/details");
    }

    #[test]
    fn dotted_paths_become_pointers() {
        assert_eq!(dotted_to_pointer("a.b/c"), "/a/b~1c");
        assert_eq!(dotted_to_pointer("action"), "/action");
    }
}
