//! [`ObservedEvent`]: the facts about one committed event that the rules need, read from the
//! stored event JSON once so that the rules never walk JSON themselves.

use crate::error::escape_pointer_token;
use crate::sanitize::SignalKind;
use serde_json::{Map, Value};

/// Most free-text strings taken from one event (the rest are not scanned by the DLP rule): an
/// event with thousands of strings must not make detection slow.
pub const MAX_FREE_TEXT_STRINGS: usize = 64;

/// Longest free-text string kept, in bytes (longer ones are cut at a character boundary).
pub const MAX_FREE_TEXT_BYTES: usize = 4 * 1024;

/// Deepest nesting walked for free text (validation allows 5 levels by default; this only
/// guards against a store holding something deeper).
const MAX_FREE_TEXT_DEPTH: usize = 32;

/// Facts about one committed event that the rules need.
///
/// Built by the caller from the stored event with [`ObservedEvent::from_stored`]; tests and
/// other callers may also fill it in directly (it derives `Default`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedEvent {
    /// The event's id (UUIDv7), quoted in alerts.
    pub id: String,
    /// The log it was committed to; with `seq`, what makes replay idempotent.
    pub log_id: String,
    /// Its position in that log.
    pub seq: u64,
    /// Dotted verb, wire spelling (`auth.login.failure`).
    pub action: String,
    /// Outcome, wire spelling.
    pub status: String,
    /// Who acted.
    pub principal_id: Option<String>,
    /// The tenant.
    pub organization_id: Option<String>,
    /// `dataClassification` (`PHI`, …).
    pub classification: Option<String>,
    /// When it happened (`timestamp`), Unix microseconds; `receivedAt` when it has none.
    pub occurred_micros: i64,
    /// When the server accepted it (`receivedAt`), Unix microseconds.
    pub received_micros: i64,
    /// `sessionContext.ipAddress`.
    pub ip_address: Option<String>,
    /// `sessionContext.geolocation`: the text itself, or the `country` (else `countryCode`)
    /// member when it is an object.
    pub country: Option<String>,
    /// `healthcareContext.emergencyAccess == true` (break-glass).
    pub emergency_access: bool,
    /// `healthcareContext.clinicalJustification`.
    pub clinical_justification: Option<String>,
    /// `details.recordCount` when it is a non-negative integer, else 1.
    pub record_count: u64,
    /// The stored `redactions` pointers.
    pub redactions: Vec<String>,
    /// `(JSON pointer, text)` of the free-text strings: `/outcomeDescription`,
    /// `/healthcareContext/clinicalJustification`, then every string under `/details` and
    /// `/changes` in document order; at most [`MAX_FREE_TEXT_STRINGS`], each cut to
    /// [`MAX_FREE_TEXT_BYTES`].
    pub free_text: Vec<(String, String)>,
    /// Kinds of injection signals found in the event (`script`, `sql`), each once.
    pub injection: Vec<String>,
}

impl ObservedEvent {
    /// Reads the facts from a stored event (the JSON the store returns). `None` when the event
    /// lacks `id`, `logId`, `seq`, `action` or `status` (a tombstone, say): there is nothing to
    /// observe.
    ///
    /// Injection signals: sanitization ([`crate::sanitize::sanitize`]) is what detects
    /// injection-looking values, and it exposes no separate detector, so it is run on every
    /// string value and object key of the event's client members (server-assigned members,
    /// which no client wrote, are left out), one at a time through a reused buffer. The stored
    /// text is already sanitized, so this finds exactly the kinds raised at ingest.
    pub fn from_stored(event: &Value) -> Option<Self> {
        let map = event.as_object()?;
        let text = |key: &str| map.get(key).and_then(Value::as_str);
        let id = text("id")?.to_owned();
        let log_id = text("logId")?.to_owned();
        let seq = map.get("seq").and_then(Value::as_u64)?;
        let action = text("action")?.to_owned();
        let status = text("status")?.to_owned();
        let received = text("receivedAt").and_then(parse_micros);
        let occurred = text("timestamp").and_then(parse_micros).or(received);
        let session = map.get("sessionContext").and_then(Value::as_object);
        let healthcare = map.get("healthcareContext").and_then(Value::as_object);
        let ip_address = session
            .and_then(|s| s.get("ipAddress"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let country = session
            .and_then(|s| s.get("geolocation"))
            .and_then(location)
            .map(str::to_owned);
        let emergency_access = healthcare
            .and_then(|h| h.get("emergencyAccess"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let clinical_justification = healthcare
            .and_then(|h| h.get("clinicalJustification"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let record_count = map
            .get("details")
            .and_then(|d| d.get("recordCount"))
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let redactions = map
            .get("redactions")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            id,
            log_id,
            seq,
            principal_id: text("principalId").map(str::to_owned),
            organization_id: text("organizationId").map(str::to_owned),
            classification: text("dataClassification").map(str::to_owned),
            occurred_micros: occurred.unwrap_or(0),
            received_micros: received.or(occurred).unwrap_or(0),
            ip_address,
            country,
            emergency_access,
            clinical_justification,
            record_count,
            redactions,
            free_text: free_text(map),
            injection: injection_kinds(map),
            action,
            status,
        })
    }

    /// Whether the event carries protected health information.
    pub fn is_phi(&self) -> bool {
        self.classification.as_deref() == Some("PHI")
    }
}

/// The location label of a `geolocation` value.
fn location(value: &Value) -> Option<&str> {
    let text = match value {
        Value::String(s) => Some(s.as_str()),
        Value::Object(o) => o
            .get("country")
            .and_then(Value::as_str)
            .or_else(|| o.get("countryCode").and_then(Value::as_str)),
        _ => None,
    };
    text.filter(|s| !s.trim().is_empty())
}

/// The free-text strings of an event, bounded.
fn free_text(map: &Map<String, Value>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(text) = map.get("outcomeDescription").and_then(Value::as_str) {
        out.push(("/outcomeDescription".to_owned(), bounded(text)));
    }
    if let Some(text) = map
        .get("healthcareContext")
        .and_then(|h| h.get("clinicalJustification"))
        .and_then(Value::as_str)
    {
        out.push((
            "/healthcareContext/clinicalJustification".to_owned(),
            bounded(text),
        ));
    }
    for key in ["details", "changes"] {
        if let Some(value) = map.get(key) {
            let mut pointer = format!("/{key}");
            walk_strings(value, &mut pointer, 0, &mut out);
        }
    }
    out
}

fn walk_strings(
    value: &Value,
    pointer: &mut String,
    depth: usize,
    out: &mut Vec<(String, String)>,
) {
    if out.len() >= MAX_FREE_TEXT_STRINGS || depth > MAX_FREE_TEXT_DEPTH {
        return;
    }
    match value {
        Value::String(s) => out.push((pointer.clone(), bounded(s))),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(itoa::Buffer::new().format(i));
                walk_strings(item, pointer, depth + 1, out);
                pointer.truncate(len);
                if out.len() >= MAX_FREE_TEXT_STRINGS {
                    return;
                }
            }
        }
        Value::Object(members) => {
            for (key, item) in members {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&escape_pointer_token(key));
                walk_strings(item, pointer, depth + 1, out);
                pointer.truncate(len);
                if out.len() >= MAX_FREE_TEXT_STRINGS {
                    return;
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `text` cut to at most [`MAX_FREE_TEXT_BYTES`] at a character boundary.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_FREE_TEXT_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_FREE_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Kinds of the injection signals sanitization raises on the client members of the event.
///
/// Sanitization checks every string value and every object key with the same detector; the
/// stored text is already clean, so running that detector ([`crate::sanitize::signal_kinds`])
/// on each of them in place finds the same kinds as sanitizing a copy of the event, without
/// the copy.
fn injection_kinds(map: &Map<String, Value>) -> Vec<String> {
    let mut probe = Probe { kinds: Vec::new() };
    for (key, value) in map {
        if crate::model::is_server_field(key) || key == "timestamp" {
            continue;
        }
        probe.check(key);
        probe.walk(value, 0);
    }
    probe.kinds
}

/// Runs sanitization's detector on one string at a time.
struct Probe {
    kinds: Vec<String>,
}

impl Probe {
    fn walk(&mut self, value: &Value, depth: usize) {
        if depth > MAX_FREE_TEXT_DEPTH {
            return;
        }
        match value {
            Value::String(s) => self.check(s),
            Value::Array(items) => items.iter().for_each(|item| self.walk(item, depth + 1)),
            Value::Object(members) => {
                for (key, item) in members {
                    self.check(key);
                    self.walk(item, depth + 1);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn check(&mut self, text: &str) {
        for kind in crate::sanitize::signal_kinds(text) {
            let kind = match kind {
                SignalKind::Script => "script",
                SignalKind::Sql => "sql",
            };
            if !self.kinds.iter().any(|k| k == kind) {
                self.kinds.push(kind.to_owned());
            }
        }
    }
}

/// Unix microseconds of an RFC 3339 timestamp. The server's own form
/// (`2026-11-23T09:01:02.123456Z`, and any `…Z` form with 0–9 fraction digits) is read
/// directly; anything else goes through [`crate::time_fmt::parse_rfc3339`].
pub(super) fn parse_micros(text: &str) -> Option<i64> {
    parse_utc_fast(text).or_else(|| {
        crate::time_fmt::parse_rfc3339(text)
            .ok()
            .map(crate::time_fmt::unix_micros)
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, fully validated; `None` for any other form (which the
/// general parser then decides on).
fn parse_utc_fast(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return None;
    }
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        b[range].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let year = digits(0..4)?;
    let month = digits(5..7)?;
    let day = digits(8..10)?;
    let hour = digits(11..13)?;
    let minute = digits(14..16)?;
    let second = digits(17..19)?;
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut micros = 0i64;
    let rest = &b[19..b.len() - 1];
    if !rest.is_empty() {
        let frac = rest.strip_prefix(b".")?;
        if frac.is_empty() || frac.len() > 9 || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        for i in 0..6 {
            let d = frac.get(i).map_or(0, |c| i64::from(c - b'0'));
            micros = micros * 10 + d;
        }
    }
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3_600 + minute * 60 + second) * 1_000_000 + micros)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
