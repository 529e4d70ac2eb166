//! [`AuditConfig`]: presets, levels and route rules, and their compiled form.

use super::mapping::{RouteInfo, sanitize_prefix};
use crate::DataClassification;
use std::time::Duration;
use vellum_core::config::{RedactionConfig, RedactionPreset};
use vellum_core::redact::Redactor;

/// How much of a request goes into its audit event. Each level adds to the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum AuditLevel {
    /// Who did what to which record: `action`, `status`, `timestamp`, the principal,
    /// `organizationId`, the target, `dataClassification`, `healthcareContext.patientId`.
    /// Enough for an accounting of disclosures and nothing that identifies the client device.
    Minimal,
    /// Adds `sessionContext` (IP address, user agent, session id), `technicalContext`
    /// (endpoint without the query, method, status code, duration, request id),
    /// `correlationId` (`x-correlation-id`, else the request id) and an
    /// `outcomeDescription` such as `GET /patients/p-1 -> 200`. The default: what an
    /// investigation needs to tie an event to a request in the application's own logs.
    #[default]
    Standard,
    /// Adds the redacted query parameters (`details.query`) and, when the preset allows it,
    /// the redacted JSON request body (`details.requestBody`): what was asked for, not just
    /// where.
    Comprehensive,
    /// Adds `details.requestHeaders` from a fixed allowlist (content-type, content-length,
    /// accept, accept-language, origin, referer, x-forwarded-for, x-request-id). Never
    /// `authorization`, `cookie` or any other header: they carry credentials.
    Detailed,
}

/// The rule sets of SPEC §9.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preset {
    Healthcare,
    Financial,
    Auth,
}

impl Preset {
    /// Whether request bodies may be captured (at [`AuditLevel::Comprehensive`] and above).
    pub(crate) fn captures_bodies(self) -> bool {
        matches!(self, Preset::Healthcare | Preset::Financial)
    }

    fn redaction(self) -> RedactionPreset {
        match self {
            Preset::Healthcare => RedactionPreset::Healthcare,
            Preset::Financial => RedactionPreset::Financial,
            Preset::Auth => RedactionPreset::Auth,
        }
    }

    fn default_classification(self, route: &RouteInfo) -> DataClassification {
        match self {
            Preset::Healthcare if route.clinical => DataClassification::Phi,
            Preset::Healthcare | Preset::Auth => DataClassification::Internal,
            Preset::Financial => DataClassification::Confidential,
        }
    }
}

/// What the layer records and how: a preset ([`healthcare`](AuditConfig::healthcare),
/// [`financial`](AuditConfig::financial), [`auth`](AuditConfig::auth)) refined with builder
/// methods.
///
/// Route prefixes match whole path segments: `/patients` matches `/patients` and
/// `/patients/7`, not `/patientsx`; `/` matches everything. Fail-closed and classification
/// prefixes compare ASCII case-insensitively (when in doubt, a request is protected);
/// exclusions compare exactly and never apply to a path with a `.` or `..` segment (when in
/// doubt, a request is audited).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub(crate) preset: Preset,
    pub(crate) level: AuditLevel,
    pub(crate) action_prefix: String,
    pub(crate) fail_closed: Vec<String>,
    pub(crate) exclude: Vec<String>,
    pub(crate) classify: Vec<(String, DataClassification)>,
    pub(crate) organization: Option<String>,
    pub(crate) max_body_bytes: usize,
    pub(crate) trust_forwarded_for: bool,
    pub(crate) record_timeout: Duration,
    pub(crate) max_in_flight: usize,
}

/// Routes that are probes, not accesses.
const DEFAULT_EXCLUSIONS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/favicon.ico"];

impl Default for AuditConfig {
    /// The healthcare preset, Vellum's default (as for server-side redaction).
    fn default() -> Self {
        Self::healthcare()
    }
}

impl AuditConfig {
    fn preset(preset: Preset, action_prefix: &str) -> Self {
        Self {
            preset,
            level: AuditLevel::Standard,
            action_prefix: action_prefix.to_owned(),
            fail_closed: Vec::new(),
            exclude: DEFAULT_EXCLUSIONS
                .iter()
                .map(|p| normalize_prefix(p))
                .collect(),
            classify: Vec::new(),
            organization: None,
            max_body_bytes: 64 * 1024,
            trust_forwarded_for: false,
            record_timeout: Duration::from_secs(5),
            max_in_flight: 10_000,
        }
    }

    /// For clinical APIs: request bodies at [`AuditLevel::Comprehensive`] and above, redacted
    /// with the healthcare rules (credentials, SSN/CPF and other identity numbers, diagnosis,
    /// medication, birth dates, card numbers); never response bodies. Paths with a clinical
    /// segment are `PHI`, the others `INTERNAL`; the patient id comes from a
    /// `patients/{id}` (or `Patient/{id}`) pair in the path.
    pub fn healthcare() -> Self {
        Self::preset(Preset::Healthcare, "api")
    }

    /// For payment APIs: request bodies at [`AuditLevel::Comprehensive`] and above, redacted
    /// with the financial rules (credentials, card numbers, CVV, IBAN, account numbers);
    /// events are `CONFIDENTIAL`.
    pub fn financial() -> Self {
        Self::preset(Preset::Financial, "api")
    }

    /// For authentication endpoints: never a body (it holds the credentials), credential
    /// redaction on query parameters, `INTERNAL`, and actions named
    /// `auth.<operation>.<success|failure>` (`POST /login` answered 401 →
    /// `auth.login.failure`).
    pub fn auth() -> Self {
        Self::preset(Preset::Auth, "auth")
    }

    /// How much of each request to record (default [`AuditLevel::Standard`]).
    pub fn level(mut self, level: AuditLevel) -> Self {
        self.level = level;
        self
    }

    /// First word(s) of every action (default `api`; `auth` for the auth preset). Characters
    /// the server does not accept in an action (anything but ASCII letters, digits, `_`, `-`
    /// and single dots) are removed.
    pub fn action_prefix(mut self, prefix: &str) -> Self {
        self.action_prefix = prefix.to_owned();
        self
    }

    /// Makes the routes under `route_prefix` fail-closed: refused with 503 when their audit
    /// event cannot be recorded (see the module docs for the contract). Repeatable.
    pub fn fail_closed(mut self, route_prefix: &str) -> Self {
        self.fail_closed.push(normalize_prefix(route_prefix));
        self
    }

    /// Records nothing for the routes under `route_prefix` (defaults: `/healthz`, `/readyz`,
    /// `/metrics`, `/favicon.ico`). Repeatable.
    pub fn exclude(mut self, route_prefix: &str) -> Self {
        self.exclude.push(normalize_prefix(route_prefix));
        self
    }

    /// Removes the default exclusions (for an application whose `/metrics` is a business
    /// route); exclusions added later still apply.
    pub fn without_default_exclusions(mut self) -> Self {
        self.exclude
            .retain(|p| !DEFAULT_EXCLUSIONS.iter().any(|d| d == p));
        self
    }

    /// Classifies the routes under `route_prefix`, overriding the preset's rule. When several
    /// prefixes match, the longest wins.
    pub fn classify(mut self, route_prefix: &str, classification: DataClassification) -> Self {
        self.classify
            .push((normalize_prefix(route_prefix), classification));
        self
    }

    /// `organizationId` of events whose principal names none (a single-tenant application).
    pub fn organization(mut self, organization_id: &str) -> Self {
        self.organization = Some(organization_id.to_owned());
        self
    }

    /// Largest request body read for the event (default 64 KiB). Larger bodies, and bodies
    /// without a `content-length`, stream to the handler unread.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Takes the client IP from the first `x-forwarded-for` entry (default off). Turn it on
    /// only behind a proxy that sets the header, or any client can choose the IP recorded.
    pub fn trust_forwarded_for(mut self, trust: bool) -> Self {
        self.trust_forwarded_for = trust;
        self
    }

    /// How long a fail-closed route waits for its record before answering 503 (default 5 s).
    pub fn record_timeout(mut self, timeout: Duration) -> Self {
        self.record_timeout = timeout;
        self
    }

    /// How many fail-open records may be in progress at once (default 10 000; at least 1).
    /// Beyond that, events are dropped and counted rather than piling up in memory behind a
    /// slow recorder.
    pub fn max_in_flight(mut self, records: usize) -> Self {
        self.max_in_flight = records;
        self
    }
}

/// A route prefix with a leading `/` and no trailing `/` (`/` itself for the root).
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_end_matches('/');
    if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// Whether `path` is `prefix` or below it, by whole segments.
fn prefix_matches(prefix: &str, path: &str, ignore_case: bool) -> bool {
    if prefix == "/" {
        return true;
    }
    let Some(head) = path.as_bytes().get(..prefix.len()) else {
        return false;
    };
    let same = if ignore_case {
        head.eq_ignore_ascii_case(prefix.as_bytes())
    } else {
        head == prefix.as_bytes()
    };
    same && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

/// A `.` or `..` segment, literal or percent-encoded: some component between the client and
/// the application might resolve it into another route.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let lower = segment.to_ascii_lowercase();
        let decoded = lower.replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// The configuration as the service uses it.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) preset: Preset,
    pub(crate) level: AuditLevel,
    pub(crate) action_prefix: String,
    fail_closed: Vec<String>,
    exclude: Vec<String>,
    classify: Vec<(String, DataClassification)>,
    pub(crate) organization: Option<String>,
    pub(crate) max_body_bytes: usize,
    pub(crate) trust_forwarded_for: bool,
    pub(crate) record_timeout: Duration,
    pub(crate) max_in_flight: usize,
    /// `None` only if the preset's rules fail to compile (they do not); bodies, query strings
    /// and headers are then not captured at all rather than captured unredacted.
    pub(crate) redactor: Option<Redactor>,
}

impl Compiled {
    pub(crate) fn new(config: AuditConfig) -> Self {
        let redactor = Redactor::masking(&RedactionConfig {
            preset: config.preset.redaction(),
            ..Default::default()
        });
        let redactor = match redactor {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "audit layer: redaction rules do not compile; request bodies, queries \
                     and headers will not be recorded"
                );
                None
            }
        };
        Self {
            preset: config.preset,
            level: config.level,
            action_prefix: sanitize_prefix(&config.action_prefix),
            fail_closed: config.fail_closed,
            exclude: config.exclude,
            classify: config.classify,
            organization: config.organization,
            max_body_bytes: config.max_body_bytes,
            trust_forwarded_for: config.trust_forwarded_for,
            record_timeout: config.record_timeout,
            max_in_flight: config
                .max_in_flight
                .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            redactor,
        }
    }

    /// Whether no event is recorded for `path`.
    pub(crate) fn is_excluded(&self, path: &str) -> bool {
        !has_dot_segment(path) && self.exclude.iter().any(|p| prefix_matches(p, path, false))
    }

    /// Whether `path` is fail-closed.
    pub(crate) fn is_fail_closed(&self, path: &str) -> bool {
        self.fail_closed
            .iter()
            .any(|p| prefix_matches(p, path, true))
    }

    /// The classification of a request: the longest matching rule, else the preset's.
    pub(crate) fn classification(&self, path: &str, route: &RouteInfo) -> DataClassification {
        self.classify
            .iter()
            .filter(|(p, _)| prefix_matches(p, path, true))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, c)| *c)
            .unwrap_or_else(|| self.preset.default_classification(route))
    }

    /// Whether request bodies are captured.
    pub(crate) fn captures_bodies(&self) -> bool {
        self.level >= AuditLevel::Comprehensive
            && self.preset.captures_bodies()
            && self.redactor.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::super::mapping::analyze_path;
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/patients", "/patients", false));
        assert!(prefix_matches("/patients", "/patients/7", false));
        assert!(prefix_matches("/patients", "/patients/", false));
        assert!(!prefix_matches("/patients", "/patientsx", false));
        assert!(!prefix_matches("/patients", "/pat", false));
        assert!(!prefix_matches("/patients", "/Patients/7", false));
        assert!(prefix_matches("/patients", "/Patients/7", true));
        assert!(prefix_matches("/", "/anything", false));
        assert!(prefix_matches("/", "", false));
        // A multi-byte character at the cut does not panic.
        assert!(!prefix_matches("/ab", "/é", true));
        assert_eq!(normalize_prefix("patients/"), "/patients");
        assert_eq!(normalize_prefix("/"), "/");
        assert_eq!(normalize_prefix(""), "/");
    }

    #[test]
    fn exclusions_are_exact_and_never_hide_dot_segments() {
        let c = Compiled::new(AuditConfig::healthcare().exclude("/internal"));
        assert!(c.is_excluded("/healthz"));
        assert!(c.is_excluded("/metrics"));
        assert!(c.is_excluded("/internal/x"));
        assert!(!c.is_excluded("/HEALTHZ"));
        assert!(!c.is_excluded("/healthz/../patients/1"));
        assert!(!c.is_excluded("/healthz/%2E%2e/patients/1"));
        assert!(!c.is_excluded("/patients"));
        let c = Compiled::new(AuditConfig::healthcare().without_default_exclusions());
        assert!(!c.is_excluded("/metrics"));
    }

    #[test]
    fn fail_closed_matching_ignores_case() {
        let c = Compiled::new(
            AuditConfig::healthcare()
                .fail_closed("/patients")
                .fail_closed("/fhir/"),
        );
        assert!(c.is_fail_closed("/patients/1"));
        assert!(c.is_fail_closed("/PATIENTS/1"));
        assert!(c.is_fail_closed("/fhir/Patient/1"));
        assert!(!c.is_fail_closed("/users/1"));
    }

    #[test]
    fn classification_rules() {
        let c = Compiled::new(
            AuditConfig::healthcare()
                .classify("/patients", DataClassification::Confidential)
                .classify("/patients/public", DataClassification::Public)
                .classify("/", DataClassification::Internal),
        );
        let class = |path: &str| c.classification(path, &analyze_path(path, None));
        assert_eq!(class("/patients/public/x"), DataClassification::Public);
        assert_eq!(class("/patients/7"), DataClassification::Confidential);
        assert_eq!(class("/observations/7"), DataClassification::Internal);

        let c = Compiled::new(AuditConfig::healthcare());
        let class = |path: &str| c.classification(path, &analyze_path(path, None));
        assert_eq!(class("/api/observations/7"), DataClassification::Phi);
        assert_eq!(class("/users/7"), DataClassification::Internal);

        let c = Compiled::new(AuditConfig::financial());
        assert_eq!(
            c.classification("/patients", &analyze_path("/patients", None)),
            DataClassification::Confidential
        );
        let c = Compiled::new(AuditConfig::auth());
        assert_eq!(
            c.classification("/patients", &analyze_path("/patients", None)),
            DataClassification::Internal
        );
    }

    #[test]
    fn presets_and_defaults() {
        let c = Compiled::new(AuditConfig::healthcare());
        assert_eq!(c.action_prefix, "api");
        assert_eq!(c.level, AuditLevel::Standard);
        assert_eq!(c.max_body_bytes, 64 * 1024);
        assert_eq!(c.record_timeout, Duration::from_secs(5));
        assert_eq!(c.max_in_flight, 10_000);
        assert!(!c.trust_forwarded_for);
        assert!(!c.captures_bodies(), "bodies only from Comprehensive");
        assert!(
            Compiled::new(AuditConfig::healthcare().level(AuditLevel::Comprehensive))
                .captures_bodies()
        );
        assert!(
            Compiled::new(AuditConfig::financial().level(AuditLevel::Detailed)).captures_bodies()
        );
        let auth = Compiled::new(AuditConfig::auth().level(AuditLevel::Detailed));
        assert!(!auth.captures_bodies());
        assert_eq!(auth.action_prefix, "auth");
        assert_eq!(
            Compiled::new(AuditConfig::healthcare().max_in_flight(0)).max_in_flight,
            1
        );
        assert_eq!(
            Compiled::new(AuditConfig::healthcare().max_in_flight(usize::MAX)).max_in_flight,
            tokio::sync::Semaphore::MAX_PERMITS
        );
        assert_eq!(
            Compiled::new(AuditConfig::healthcare().action_prefix("my app")).action_prefix,
            "myapp"
        );
        assert!(AuditLevel::Minimal < AuditLevel::Standard);
        assert!(AuditLevel::Comprehensive < AuditLevel::Detailed);
        assert_eq!(AuditLevel::default(), AuditLevel::Standard);
    }
}
