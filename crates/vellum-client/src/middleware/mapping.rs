//! The pure rules: request path → resource, target, patient and clinical flag; method → verb;
//! query string, headers and client address → event fields; and fitting values within the
//! server's validation limits. Nothing here does I/O, and nothing panics on any input.

use http::{HeaderMap, HeaderName, Method};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

/// Longest string the layer puts in an event when it has no tighter bound (the server's
/// default `maxStringLength` is 10 000 characters).
pub(crate) const MAX_TEXT_CHARS: usize = 4096;

/// Longest id (target, patient, request and correlation ids).
pub(crate) const MAX_ID_CHARS: usize = 256;

/// Longest resource or operation name in an action (the server allows 256 characters for the
/// whole action).
const MAX_ACTION_WORD_CHARS: usize = 64;

/// Query parameters recorded at most.
const MAX_QUERY_PARAMS: usize = 64;

/// Longest query parameter name.
const MAX_QUERY_NAME_CHARS: usize = 128;

/// Longest recorded header or query value.
const MAX_VALUE_CHARS: usize = 1024;

/// The server's default `maxCustomFieldDepth`: `details` is level 1.
const MAX_DETAIL_DEPTH: usize = 5;

/// Integers beyond ±2^53 are refused by the server (they do not survive canonicalization).
const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// Headers recorded at [`super::AuditLevel::Detailed`]. Nothing else, ever: `authorization`,
/// `cookie` and custom headers carry credentials.
pub(crate) const HEADER_ALLOWLIST: [&str; 8] = [
    "content-type",
    "content-length",
    "accept",
    "accept-language",
    "origin",
    "referer",
    "x-forwarded-for",
    "x-request-id",
];

/// Clinical collection names, singular, lowercase, without separators: a path with one of
/// these segments is PHI under the healthcare preset.
const CLINICAL: &[&str] = &[
    "patient",
    "observation",
    "encounter",
    "condition",
    "medication",
    "medicationrequest",
    "allergy",
    "allergyintolerance",
    "procedure",
    "diagnosticreport",
    "immunization",
    "careplan",
    "document",
    "documentreference",
    "appointment",
    "prescription",
    "labresult",
    "record",
];

/// FHIR resource type names, so that a segment written without separators
/// (`medicationrequests`) still maps to the FHIR spelling (`MedicationRequest`).
const FHIR_TYPES: &[&str] = &[
    "Account",
    "AllergyIntolerance",
    "Appointment",
    "AuditEvent",
    "Binary",
    "Bundle",
    "CarePlan",
    "CareTeam",
    "Claim",
    "ClaimResponse",
    "Communication",
    "Composition",
    "Condition",
    "Consent",
    "Coverage",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "EpisodeOfCare",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Goal",
    "Group",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "Location",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "Organization",
    "Patient",
    "Person",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "Schedule",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "Task",
];

/// Plural → singular for words the suffix rules get wrong.
const IRREGULAR: &[(&str, &str)] = &[
    ("people", "person"),
    ("children", "child"),
    ("men", "man"),
    ("women", "woman"),
    ("data", "data"),
    ("media", "media"),
    ("criteria", "criterion"),
    ("series", "series"),
    ("species", "species"),
    ("news", "news"),
    ("analyses", "analysis"),
    ("diagnoses", "diagnosis"),
    ("prognoses", "prognosis"),
    ("statuses", "status"),
    ("aliases", "alias"),
    ("indices", "index"),
    ("matrices", "matrix"),
    ("caches", "cache"),
    ("cookies", "cookie"),
    ("movies", "movie"),
];

/// What the path says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteInfo {
    /// The resource word of the action (`observation`; `root` when the path has none).
    pub(crate) resource: String,
    /// The operation word of an `auth` action (`login`, `password_reset`; `root`).
    pub(crate) operation: String,
    /// `targetResourceType`, when the path names a resource.
    pub(crate) target_type: Option<String>,
    /// `targetResourceId`: the id segment right after the resource.
    pub(crate) target_id: Option<String>,
    /// The id after a `patients`/`Patient` segment.
    pub(crate) patient_id: Option<String>,
    /// Whether a segment names clinical data.
    pub(crate) clinical: bool,
}

/// Analyzes a request path (without its query). `template` is the route the framework
/// matched (axum's `MatchedPath`, e.g. `/patients/{id}`); when it lines up with the path, its
/// `{param}` segments are the ids, else [`looks_like_id`] decides.
pub(crate) fn analyze_path(path: &str, template: Option<&str>) -> RouteInfo {
    let raw: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let segments: Vec<String> = raw.iter().map(|s| percent_decode(s, false)).collect();
    let ids = template
        .and_then(|t| template_ids(t, raw.len()))
        .unwrap_or_else(|| segments.iter().map(|s| looks_like_id(s)).collect());
    let is_id = |i: usize| ids.get(i).copied().unwrap_or(false);

    let resource_at = (0..segments.len())
        .rev()
        .find(|&i| !is_id(i) && !is_operation(&segments[i]));
    let id_after = |i: usize| {
        segments
            .get(i + 1)
            .filter(|_| is_id(i + 1))
            .map(|id| clip(id, MAX_ID_CHARS))
    };

    let (resource, operation, target_type, target_id) = match resource_at {
        Some(i) => {
            let segment = &segments[i];
            let word = singularize(&action_word(segment));
            let resource = if word.is_empty() {
                "resource".to_owned()
            } else {
                clip(&word, MAX_ACTION_WORD_CHARS)
            };
            let operation = operation_word(segment);
            (resource, operation, type_name(segment), id_after(i))
        }
        None => ("root".to_owned(), "root".to_owned(), None, None),
    };

    let patient_id = (0..segments.len())
        .find(|&i| {
            !is_id(i)
                && (segments[i].eq_ignore_ascii_case("patients")
                    || segments[i].eq_ignore_ascii_case("patient"))
                && is_id(i + 1)
        })
        .and_then(id_after);

    let clinical = segments.iter().any(|s| {
        let word = singularize(&action_word(s));
        CLINICAL.contains(&word.as_str())
    });

    RouteInfo {
        resource,
        operation,
        target_type,
        target_id,
        patient_id,
        clinical,
    }
}

/// Which segments of a path with `count` segments are ids according to a route template, or
/// `None` when the template does not line up with the path.
fn template_ids(template: &str, count: usize) -> Option<Vec<bool>> {
    let mut ids = Vec::with_capacity(count);
    for segment in template.split('/').filter(|s| !s.is_empty()) {
        if segment.starts_with("{*") || segment.starts_with('*') {
            // A catch-all matches every remaining segment (at least one).
            if ids.len() >= count {
                return None;
            }
            ids.resize(count, true);
            return Some(ids);
        }
        ids.push(segment.contains('{') || segment.starts_with(':'));
    }
    (ids.len() == count).then_some(ids)
}

/// The heuristic for paths without a route template: a UUID, all digits, or a segment with a
/// digit that is not a version marker.
pub(crate) fn looks_like_id(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    if uuid::Uuid::try_parse(segment).is_ok() || segment.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    segment.bytes().any(|b| b.is_ascii_digit()) && !is_version_marker(segment)
}

/// `v1`, `v2.1`, `v1beta2`, `v2alpha`, `r4`, `R4B`, `stu3`, `dstu2`: API and FHIR versions,
/// which name a namespace, not a record.
fn is_version_marker(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    let Some(rest) = ["dstu", "stu", "v", "r"]
        .iter()
        .find_map(|p| lower.strip_prefix(p))
    else {
        return false;
    };
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(digits_end);
    let number_ok = number.starts_with(|c: char| c.is_ascii_digit())
        && !number.ends_with('.')
        && !number.contains("..");
    let suffix_ok = suffix.is_empty()
        || suffix == "b"
        || ["alpha", "beta"].iter().any(|tag| {
            suffix
                .strip_prefix(tag)
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        });
    number_ok && suffix_ok
}

/// FHIR operations (`$everything`) and system paths (`_history`, `_search`): neither a
/// resource nor an id.
fn is_operation(segment: &str) -> bool {
    segment.starts_with('$') || segment.starts_with('_')
}

/// A segment lowercased, with everything but ASCII letters and digits removed.
fn action_word(segment: &str) -> String {
    segment
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The `auth` preset's operation: the segment lowercased, `-` turned into `_`, everything but
/// ASCII letters, digits and `_` removed.
fn operation_word(segment: &str) -> String {
    let word: String = segment
        .chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let word = word.trim_matches('_');
    if word.is_empty() {
        "operation".to_owned()
    } else {
        clip(word, MAX_ACTION_WORD_CHARS)
    }
}

/// Singular of a lowercase English collection name (see the module docs for the rules).
pub(crate) fn singularize(word: &str) -> String {
    if let Some((_, singular)) = IRREGULAR.iter().find(|(plural, _)| *plural == word) {
        return (*singular).to_owned();
    }
    if word.len() > 4
        && let Some(stem) = word.strip_suffix("ies")
    {
        return format!("{stem}y");
    }
    for suffix in ["sses", "shes", "ches", "xes", "zzes"] {
        if word.ends_with(suffix) {
            return word[..word.len() - 2].to_owned();
        }
    }
    if ["ss", "us", "is"].iter().any(|s| word.ends_with(s)) {
        return word.to_owned();
    }
    match word.strip_suffix('s') {
        Some(stem) if !stem.is_empty() => stem.to_owned(),
        _ => word.to_owned(),
    }
}

/// The FHIR-style type name of a collection segment: `medication-requests` →
/// `MedicationRequest`, `Patient` → `Patient`, `lab_results` → `LabResult`.
pub(crate) fn type_name(segment: &str) -> Option<String> {
    let singular = singularize(&action_word(segment));
    if singular.is_empty() {
        return None;
    }
    if let Some(known) = FHIR_TYPES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(&singular))
    {
        return Some((*known).to_owned());
    }
    let words = split_words(segment);
    let last = words.len().saturating_sub(1);
    let mut name = String::new();
    for (i, word) in words.iter().enumerate() {
        let lower = word.to_ascii_lowercase();
        let word = if i == last {
            singularize(&lower)
        } else {
            lower
        };
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.push(first.to_ascii_uppercase());
            name.extend(chars);
        }
    }
    (!name.is_empty()).then(|| clip(&name, MAX_ACTION_WORD_CHARS))
}

/// Words of a segment: split at `-`, `_`, `.`, spaces and lower→upper case changes; only
/// ASCII letters and digits are kept.
fn split_words(segment: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut prev_lower = false;
    for c in segment.chars() {
        if !c.is_ascii_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// The action verb of a method: `read`, `create`, `update`, `delete`, or the method's name
/// lowercased (letters and digits only).
pub(crate) fn verb(method: &Method) -> Cow<'static, str> {
    match *method {
        Method::GET | Method::HEAD => Cow::Borrowed("read"),
        Method::POST => Cow::Borrowed("create"),
        Method::PUT | Method::PATCH => Cow::Borrowed("update"),
        Method::DELETE => Cow::Borrowed("delete"),
        _ => {
            let word = action_word(method.as_str());
            if word.is_empty() {
                Cow::Borrowed("other")
            } else {
                Cow::Owned(clip(&word, MAX_ACTION_WORD_CHARS))
            }
        }
    }
}

/// An action prefix made valid for the server: dot-separated words of ASCII letters, digits,
/// `_` and `-`, no empty word; `api` when nothing is left.
pub(crate) fn sanitize_prefix(prefix: &str) -> String {
    let words: Vec<String> = prefix
        .split('.')
        .map(|w| {
            w.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        "api".to_owned()
    } else {
        clip(&words.join("."), MAX_ACTION_WORD_CHARS * 2)
    }
}

/// Decodes `%XX` escapes (and `+` as a space in query strings); invalid escapes are kept as
/// they are and invalid UTF-8 becomes U+FFFD.
pub(crate) fn percent_decode(input: &str, plus_as_space: bool) -> String {
    if !(input.contains('%') || plus_as_space && input.contains('+')) {
        return input.to_owned();
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let Some(hi) = bytes.get(i + 1).and_then(|c| hex_value(*c))
            && let Some(lo) = bytes.get(i + 2).and_then(|c| hex_value(*c))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(if plus_as_space && b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The query string as an object: name → value, a repeated name → array of values. At most
/// [`MAX_QUERY_PARAMS`] parameters; names and values are clipped.
pub(crate) fn query_object(query: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for pair in query
        .split('&')
        .filter(|p| !p.is_empty())
        .take(MAX_QUERY_PARAMS)
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = clip(&percent_decode(name, true), MAX_QUERY_NAME_CHARS);
        if name.is_empty() {
            continue;
        }
        let value = Value::String(clip(&percent_decode(value, true), MAX_VALUE_CHARS));
        match out.get_mut(&name) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => {
                let first = first.take();
                out.insert(name, Value::Array(vec![first, value]));
            }
            None => {
                out.insert(name, value);
            }
        }
    }
    out
}

/// The allowlisted request headers ([`HEADER_ALLOWLIST`]); repeated headers are joined with
/// `, `, `origin` and `referer` lose their query and fragment (they can carry tokens).
pub(crate) fn allowed_headers(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in HEADER_ALLOWLIST {
        let mut values = headers.get_all(name).iter().map(|v| {
            let text = String::from_utf8_lossy(v.as_bytes());
            if name == "referer" || name == "origin" {
                let end = text.find(['?', '#']).unwrap_or(text.len());
                text[..end].to_owned()
            } else {
                text.into_owned()
            }
        });
        let Some(first) = values.next() else { continue };
        let joined = values.fold(first, |acc, v| acc + ", " + &v);
        out.insert(
            name.to_owned(),
            Value::String(clip(&joined, MAX_VALUE_CHARS)),
        );
    }
    out
}

/// A header's value as text (lossy), trimmed and clipped; `None` when absent or empty.
pub(crate) fn header_text(headers: &HeaderMap, name: &HeaderName, max: usize) -> Option<String> {
    let value = headers.get(name)?;
    let text = String::from_utf8_lossy(value.as_bytes());
    let text = text.trim();
    (!text.is_empty()).then(|| clip(text, max))
}

/// The client address of `x-forwarded-for`: its first entry, when it is an IP address
/// (with or without a port).
pub(crate) fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get("x-forwarded-for")?.to_str().ok()?;
    parse_ip(value.split(',').next()?.trim())
}

/// `10.0.0.1`, `10.0.0.1:443`, `::1`, `[::1]:443`, in canonical form (an IPv4-mapped IPv6
/// address becomes IPv4).
pub(crate) fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<IpAddr>().ok())
        })?;
    Some(ip.to_canonical())
}

/// `text` cut to at most `max` characters (at a character boundary).
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// Makes a value inside `details` acceptable to the server: containers deeper than the
/// server's nesting limit become their JSON text, strings and keys are clipped, integers
/// beyond ±2^53 become strings. `depth` is the nesting level of `value` (`details` is 1).
pub(crate) fn fit(value: &mut Value, depth: usize) {
    match value {
        Value::Object(map) if depth > MAX_DETAIL_DEPTH => {
            let text = Value::Object(std::mem::take(map)).to_string();
            *value = Value::String(clip(&text, MAX_TEXT_CHARS));
        }
        Value::Array(items) if depth > MAX_DETAIL_DEPTH => {
            let text = Value::Array(std::mem::take(items)).to_string();
            *value = Value::String(clip(&text, MAX_TEXT_CHARS));
        }
        Value::Object(map) => {
            if map.keys().any(|k| k.len() > MAX_QUERY_NAME_CHARS * 4) {
                let old = std::mem::take(map);
                for (k, v) in old {
                    map.insert(clip(&k, MAX_QUERY_NAME_CHARS * 4), v);
                }
            }
            for child in map.values_mut() {
                fit(child, depth + 1);
            }
        }
        Value::Array(items) => {
            for child in items {
                fit(child, depth + 1);
            }
        }
        Value::String(s) => {
            if s.len() > MAX_TEXT_CHARS {
                *s = clip(s, MAX_TEXT_CHARS);
            }
        }
        Value::Number(n) => {
            let exact = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u <= MAX_EXACT_INTEGER,
                (None, Some(i)) => i.unsigned_abs() <= MAX_EXACT_INTEGER,
                (None, None) => true,
            };
            if !exact {
                *value = Value::String(n.to_string());
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(path: &str) -> RouteInfo {
        analyze_path(path, None)
    }

    #[test]
    fn resource_is_the_last_non_id_segment() {
        let r = route("/patients/p-1/observations");
        assert_eq!(r.resource, "observation");
        assert_eq!(r.target_type.as_deref(), Some("Observation"));
        assert_eq!(r.target_id, None);
        assert_eq!(r.patient_id.as_deref(), Some("p-1"));
        assert!(r.clinical);

        let r = route("/patients/p-1/observations/obs-7");
        assert_eq!(r.resource, "observation");
        assert_eq!(r.target_id.as_deref(), Some("obs-7"));

        let r = route("/v1/medication-requests/42");
        assert_eq!(r.resource, "medicationrequest");
        assert_eq!(r.target_type.as_deref(), Some("MedicationRequest"));
        assert_eq!(r.target_id.as_deref(), Some("42"));
        assert_eq!(r.patient_id, None);
    }

    #[test]
    fn root_and_id_only_paths_have_no_target() {
        for path in ["/", "", "//", "/123", "/v2/"] {
            let r = route(path);
            if path == "/v2/" {
                assert_eq!(r.resource, "v2");
                continue;
            }
            assert_eq!(r.resource, "root", "{path}");
            assert_eq!(r.target_type, None, "{path}");
            assert_eq!(r.target_id, None, "{path}");
        }
    }

    #[test]
    fn fhir_paths_skip_versions_and_operations() {
        let id = "0b7c1b4e-5d3a-4f4e-9a7e-2f1c3d4e5f60";
        let r = route(&format!("/fhir/R4/Observation/{id}"));
        assert_eq!(r.resource, "observation");
        assert_eq!(r.target_type.as_deref(), Some("Observation"));
        assert_eq!(r.target_id.as_deref(), Some(id));

        let r = route("/fhir/Patient/123/$everything");
        assert_eq!(r.resource, "patient");
        assert_eq!(r.target_id.as_deref(), Some("123"));
        assert_eq!(r.patient_id.as_deref(), Some("123"));

        let r = route("/Patient/123/_history/2");
        assert_eq!(r.target_type.as_deref(), Some("Patient"));
        assert_eq!(r.target_id.as_deref(), Some("123"));
    }

    #[test]
    fn weird_paths_do_not_panic() {
        let long = "a/".repeat(20_000);
        for path in [
            "%",
            "/%",
            "/%zz/%e9",
            "/%ff%fe/1",
            "/\u{1F600}/ü",
            "/../..",
            "/$",
            "/_",
            "/-",
            long.as_str(),
        ] {
            let r = route(path);
            assert!(!r.resource.is_empty());
            assert!(r.resource.len() <= MAX_ACTION_WORD_CHARS);
        }
        assert_eq!(route("/患者").resource, "resource");
        assert_eq!(route("/患者").target_type, None);
        assert_eq!(
            route("/pat%69ents/7").target_type.as_deref(),
            Some("Patient")
        );
        assert_eq!(route("/patients/a%2Fb7").target_id.as_deref(), Some("a/b7"));
    }

    #[test]
    fn id_heuristic() {
        for id in [
            "123",
            "p-1",
            "0b7c1b4e-5d3a-4f4e-9a7e-2f1c3d4e5f60",
            "0B7C1B4E5D3A4F4E9A7E2F1C3D4E5F60",
            "obs7",
            "v1x",
            "r2d2",
            "x509",
        ] {
            assert!(looks_like_id(id), "{id}");
        }
        for word in [
            "",
            "patients",
            "v1",
            "V2",
            "v2.1",
            "v1beta1",
            "v2alpha",
            "r4",
            "R4B",
            "stu3",
            "DSTU2",
            "v",
            "login",
            "$everything",
        ] {
            assert!(!looks_like_id(word), "{word}");
        }
    }

    #[test]
    fn template_decides_ids_when_it_lines_up() {
        // A literal segment with digits is not an id when the route says so.
        let r = analyze_path("/icd10/abc", Some("/icd10/{code}"));
        assert_eq!(r.resource, "icd10");
        assert_eq!(r.target_type.as_deref(), Some("Icd10"));
        assert_eq!(r.target_id.as_deref(), Some("abc"));
        // …and a parameter without digits is one.
        let r = analyze_path("/patients/john-doe", Some("/patients/{id}"));
        assert_eq!(r.patient_id.as_deref(), Some("john-doe"));
        assert_eq!(r.target_id.as_deref(), Some("john-doe"));
        // A catch-all covers the rest.
        let r = analyze_path("/files/a/b/c", Some("/files/{*path}"));
        assert_eq!(r.resource, "file");
        assert_eq!(r.target_id.as_deref(), Some("a"));
        // A template that does not line up falls back to the heuristic.
        let r = analyze_path("/patients/john-doe", Some("/other"));
        assert_eq!(r.patient_id, None);
        assert_eq!(r.resource, "johndoe");
        assert_eq!(template_ids("/{*rest}", 0), None);
    }

    #[test]
    fn singular_forms() {
        for (plural, singular) in [
            ("patients", "patient"),
            ("observations", "observation"),
            ("medicationrequests", "medicationrequest"),
            ("allergies", "allergy"),
            ("policies", "policy"),
            ("addresses", "address"),
            ("batches", "batch"),
            ("boxes", "box"),
            ("status", "status"),
            ("diagnosis", "diagnosis"),
            ("diagnoses", "diagnosis"),
            ("access", "access"),
            ("people", "person"),
            ("series", "series"),
            ("services", "service"),
            ("patient", "patient"),
            ("s", "s"),
            ("ies", "ie"),
            ("", ""),
        ] {
            assert_eq!(singularize(plural), singular, "{plural}");
        }
    }

    #[test]
    fn type_names() {
        for (segment, name) in [
            ("patients", "Patient"),
            ("Patient", "Patient"),
            ("medication-requests", "MedicationRequest"),
            ("medicationrequests", "MedicationRequest"),
            ("MedicationRequest", "MedicationRequest"),
            ("diagnostic-reports", "DiagnosticReport"),
            ("allergy-intolerances", "AllergyIntolerance"),
            ("lab_results", "LabResult"),
            ("care-plans", "CarePlan"),
            ("invoiceLines", "InvoiceLine"),
            ("users", "User"),
        ] {
            assert_eq!(type_name(segment).as_deref(), Some(name), "{segment}");
        }
        assert_eq!(type_name("---"), None);
    }

    #[test]
    fn clinical_segments_singular_or_plural() {
        for path in [
            "/patients",
            "/api/Observation/1",
            "/medication-requests",
            "/MedicationRequests",
            "/allergies",
            "/records/9",
            "/x/LAB-RESULTS",
            "/appointments",
        ] {
            assert!(route(path).clinical, "{path}");
        }
        for path in ["/", "/users/1", "/billing", "/metrics"] {
            assert!(!route(path).clinical, "{path}");
        }
    }

    #[test]
    fn verbs_and_operations() {
        assert_eq!(verb(&Method::GET), "read");
        assert_eq!(verb(&Method::HEAD), "read");
        assert_eq!(verb(&Method::POST), "create");
        assert_eq!(verb(&Method::PUT), "update");
        assert_eq!(verb(&Method::PATCH), "update");
        assert_eq!(verb(&Method::DELETE), "delete");
        assert_eq!(verb(&Method::OPTIONS), "options");
        let custom = Method::from_bytes(b"PURGE.X").unwrap();
        assert_eq!(verb(&custom), "purgex");
        let odd = Method::from_bytes(b"!#$").unwrap();
        assert_eq!(verb(&odd), "other");
        assert_eq!(route("/password-reset").operation, "password_reset");
        assert_eq!(route("/oauth/Token").operation, "token");
        assert_eq!(route("/").operation, "root");
        assert_eq!(route("/-").operation, "operation");
    }

    #[test]
    fn prefixes_are_made_valid() {
        assert_eq!(sanitize_prefix("api"), "api");
        assert_eq!(sanitize_prefix("fhir.r4"), "fhir.r4");
        assert_eq!(sanitize_prefix("my app..x"), "myapp.x");
        assert_eq!(sanitize_prefix(" . "), "api");
    }

    #[test]
    fn query_parameters() {
        let q = query_object("name=Ana+Maria&tag=a&tag=b&tag=c&empty&=x&e=%C3%A9%zz&&bad=%ff");
        assert_eq!(
            Value::Object(q),
            json!({
                "name": "Ana Maria",
                "tag": ["a", "b", "c"],
                "empty": "",
                "e": "é%zz",
                "bad": "\u{FFFD}"
            })
        );
        let many: String = (0..500).map(|i| format!("p{i}=1&")).collect();
        assert_eq!(query_object(&many).len(), MAX_QUERY_PARAMS);
        let long = format!("k={}", "x".repeat(10_000));
        assert_eq!(
            query_object(&long)["k"].as_str().map(str::len),
            Some(MAX_VALUE_CHARS)
        );
    }

    #[test]
    fn header_allowlist_never_takes_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer secret".parse().unwrap());
        headers.insert("cookie", "sid=secret".parse().unwrap());
        headers.insert("x-api-key", "secret".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert(
            "referer",
            "https://app.example/p?token=secret#frag".parse().unwrap(),
        );
        headers.append("x-forwarded-for", "10.0.0.1".parse().unwrap());
        headers.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
        headers.insert(
            "accept-language",
            http::HeaderValue::from_bytes(b"pt-BR\xff").unwrap(),
        );
        let map = allowed_headers(&headers);
        assert_eq!(
            Value::Object(map.clone()),
            json!({
                "content-type": "application/json",
                "accept-language": "pt-BR\u{FFFD}",
                "referer": "https://app.example/p",
                "x-forwarded-for": "10.0.0.1, 10.0.0.2",
            })
        );
        assert!(!Value::Object(map).to_string().contains("secret"));
    }

    #[test]
    fn client_addresses() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.1".parse().unwrap());
        assert_eq!(forwarded_for(&headers), "203.0.113.7".parse().ok());
        headers.insert("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(forwarded_for(&headers), "2001:db8::1".parse().ok());
        headers.insert("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(forwarded_for(&headers), None);
        assert_eq!(parse_ip("10.0.0.1:80"), "10.0.0.1".parse().ok());
        assert_eq!(parse_ip("::ffff:10.0.0.1"), "10.0.0.1".parse().ok());
        assert_eq!(parse_ip("[::1]"), "::1".parse().ok());
        assert_eq!(parse_ip(""), None);
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "hé");
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(clip("", 0), "");
    }

    #[test]
    fn fit_keeps_details_within_server_limits() {
        let mut details = json!({
            // details (1) → requestBody (2) → a (3) → b (4) → c (5): the server's limit.
            "requestBody": {"a": {"b": {"c": {"d": {"e": 1}}}}, "arr": [[[[1]]]]},
            "big": 9_007_199_254_740_993u64,
            "neg": -9_007_199_254_740_993i64,
            "ok": 9_007_199_254_740_992u64,
            "text": "x".repeat(20_000),
            "f": 1.5,
        });
        fit(&mut details, 1);
        assert_eq!(
            details["requestBody"]["a"]["b"]["c"]["d"],
            json!("{\"e\":1}")
        );
        assert_eq!(details["requestBody"]["arr"][0][0][0], json!("[1]"));
        assert_eq!(details["big"], json!("9007199254740993"));
        assert_eq!(details["neg"], json!("-9007199254740993"));
        assert_eq!(details["ok"], json!(9_007_199_254_740_992u64));
        assert_eq!(
            details["text"].as_str().map(|s| s.chars().count()),
            Some(MAX_TEXT_CHARS)
        );
        assert_eq!(details["f"], json!(1.5));
    }
}
