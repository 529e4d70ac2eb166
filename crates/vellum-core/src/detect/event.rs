//! [`ObservedEvent`]: the facts about one committed event that the rules need, read from the
//! stored event JSON once so that the rules never walk JSON themselves.

use crate::error::escape_pointer_token;
use crate::sanitize::SignalKind;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;

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
        Self::from_view(event)
    }

    /// [`ObservedEvent::from_stored`] straight from the stored text, as the detection thread
    /// gets it: read into a tree that borrows its strings from the text instead of a `Value`
    /// that copies every one of them into its own allocation (the `Value` was half of
    /// detection's cost per event). Members are visited in the order the text gives them,
    /// which for a stored (RFC 8785) event is UTF-16 order of the names; a `Value` walks
    /// them in byte order. The two differ only between names holding characters above
    /// U+FFFF and names holding U+E000..U+FFFF, and then only in the order of the free-text
    /// strings (which of them the 64-string bound keeps).
    pub fn from_stored_text(text: &str) -> Option<Self> {
        let node = serde_json::from_str::<Node<'_>>(text).ok()?;
        Self::from_view(&node)
    }

    fn from_view<'v, V: JsonView<'v>>(event: &'v V) -> Option<Self> {
        let text = |key: &str| event.get(key).and_then(V::as_str);
        let id = text("id")?.to_owned();
        let log_id = text("logId")?.to_owned();
        let seq = event.get("seq").and_then(V::as_u64)?;
        let action = text("action")?.to_owned();
        let status = text("status")?.to_owned();
        let received = text("receivedAt").and_then(parse_micros);
        let occurred = text("timestamp").and_then(parse_micros).or(received);
        let session = event.get("sessionContext").filter(|v| v.is_object());
        let healthcare = event.get("healthcareContext").filter(|v| v.is_object());
        let ip_address = session
            .and_then(|s| s.get("ipAddress"))
            .and_then(V::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let country = session
            .and_then(|s| s.get("geolocation"))
            .and_then(location)
            .map(str::to_owned);
        let emergency_access = healthcare
            .and_then(|h| h.get("emergencyAccess"))
            .and_then(V::as_bool)
            .unwrap_or(false);
        let clinical_justification = healthcare
            .and_then(|h| h.get("clinicalJustification"))
            .and_then(V::as_str)
            .map(str::to_owned);
        let record_count = event
            .get("details")
            .and_then(|d| d.get("recordCount"))
            .and_then(V::as_u64)
            .unwrap_or(1);
        let mut redactions = Vec::new();
        if let Some(items) = event.get("redactions") {
            items.for_each_item(|item| {
                if let Some(pointer) = item.as_str() {
                    redactions.push(pointer.to_owned());
                }
            });
        }
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
            free_text: free_text(event),
            injection: injection_kinds(event),
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
fn location<'v, V: JsonView<'v>>(value: &'v V) -> Option<&'v str> {
    let text = match value.as_str() {
        Some(s) => Some(s),
        None if value.is_object() => value
            .get("country")
            .and_then(V::as_str)
            .or_else(|| value.get("countryCode").and_then(V::as_str)),
        None => None,
    };
    text.filter(|s| !s.trim().is_empty())
}

/// The free-text strings of an event, bounded.
fn free_text<'v, V: JsonView<'v>>(event: &'v V) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(text) = event.get("outcomeDescription").and_then(V::as_str) {
        out.push(("/outcomeDescription".to_owned(), bounded(text)));
    }
    if let Some(text) = event
        .get("healthcareContext")
        .and_then(|h| h.get("clinicalJustification"))
        .and_then(V::as_str)
    {
        out.push((
            "/healthcareContext/clinicalJustification".to_owned(),
            bounded(text),
        ));
    }
    for key in ["details", "changes"] {
        if let Some(value) = event.get(key) {
            let mut pointer = format!("/{key}");
            walk_strings(value, &mut pointer, 0, &mut out);
        }
    }
    out
}

fn walk_strings<'v, V: JsonView<'v>>(
    value: &'v V,
    pointer: &mut String,
    depth: usize,
    out: &mut Vec<(String, String)>,
) {
    if out.len() >= MAX_FREE_TEXT_STRINGS || depth > MAX_FREE_TEXT_DEPTH {
        return;
    }
    if let Some(s) = value.as_str() {
        out.push((pointer.clone(), bounded(s)));
        return;
    }
    let mut index = 0usize;
    value.for_each_item(|item| {
        if out.len() >= MAX_FREE_TEXT_STRINGS {
            return;
        }
        let len = pointer.len();
        pointer.push('/');
        pointer.push_str(itoa::Buffer::new().format(index));
        index += 1;
        walk_strings(item, pointer, depth + 1, out);
        pointer.truncate(len);
    });
    value.for_each_member(|key, item| {
        if out.len() >= MAX_FREE_TEXT_STRINGS {
            return;
        }
        let len = pointer.len();
        pointer.push('/');
        pointer.push_str(&escape_pointer_token(key));
        walk_strings(item, pointer, depth + 1, out);
        pointer.truncate(len);
    });
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
fn injection_kinds<'v, V: JsonView<'v>>(event: &'v V) -> Vec<String> {
    let mut probe = Probe { kinds: Vec::new() };
    event.for_each_member(|key, value| {
        if crate::model::is_server_field(key) || key == "timestamp" {
            return;
        }
        probe.check(key);
        probe.walk(value, 0);
    });
    probe.kinds
}

/// Runs sanitization's detector on one string at a time.
struct Probe {
    kinds: Vec<String>,
}

impl Probe {
    fn walk<'v, V: JsonView<'v>>(&mut self, value: &'v V, depth: usize) {
        if depth > MAX_FREE_TEXT_DEPTH {
            return;
        }
        if let Some(s) = value.as_str() {
            self.check(s);
            return;
        }
        value.for_each_item(|item| self.walk(item, depth + 1));
        value.for_each_member(|key, item| {
            self.check(key);
            self.walk(item, depth + 1);
        });
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

/// What [`ObservedEvent::from_view`] reads of a JSON tree, so that one reading serves a
/// `serde_json::Value` ([`ObservedEvent::from_stored`]) and a [`Node`] borrowed from the
/// stored text ([`ObservedEvent::from_stored_text`]).
trait JsonView<'v>: Sized + 'v {
    /// The member `key` of an object (the last one, should a name repeat).
    fn get(&'v self, key: &str) -> Option<&'v Self>;
    /// The text of a string.
    fn as_str(&'v self) -> Option<&'v str>;
    /// A non-negative integer.
    fn as_u64(&'v self) -> Option<u64>;
    /// A boolean.
    fn as_bool(&'v self) -> Option<bool>;
    /// Whether it is an object.
    fn is_object(&'v self) -> bool;
    /// Each item of an array, in order (nothing for anything else).
    fn for_each_item(&'v self, f: impl FnMut(&'v Self));
    /// Each member of an object, in the tree's order (nothing for anything else).
    fn for_each_member(&'v self, f: impl FnMut(&'v str, &'v Self));
}

impl<'v> JsonView<'v> for Value {
    fn get(&'v self, key: &str) -> Option<&'v Self> {
        self.as_object()?.get(key)
    }
    fn as_str(&'v self) -> Option<&'v str> {
        Value::as_str(self)
    }
    fn as_u64(&'v self) -> Option<u64> {
        Value::as_u64(self)
    }
    fn as_bool(&'v self) -> Option<bool> {
        Value::as_bool(self)
    }
    fn is_object(&'v self) -> bool {
        Value::is_object(self)
    }
    fn for_each_item(&'v self, f: impl FnMut(&'v Self)) {
        if let Value::Array(items) = self {
            items.iter().for_each(f);
        }
    }
    fn for_each_member(&'v self, mut f: impl FnMut(&'v str, &'v Self)) {
        if let Value::Object(members) = self {
            for (key, value) in members {
                f(key, value);
            }
        }
    }
}

/// A JSON value whose strings and names borrow from the text when they hold no escape.
/// Numbers keep only what the rules read (a non-negative integer).
#[derive(Debug)]
enum Node<'a> {
    /// `null`, or a number that is not a non-negative integer.
    Other,
    Bool(bool),
    Uint(u64),
    Str(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'v, 'a: 'v> JsonView<'v> for Node<'a> {
    fn get(&'v self, key: &str) -> Option<&'v Self> {
        match self {
            Node::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn as_str(&'v self) -> Option<&'v str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_u64(&'v self) -> Option<u64> {
        match self {
            Node::Uint(n) => Some(*n),
            _ => None,
        }
    }
    fn as_bool(&'v self) -> Option<bool> {
        match self {
            Node::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn is_object(&'v self) -> bool {
        matches!(self, Node::Object(_))
    }
    fn for_each_item(&'v self, f: impl FnMut(&'v Self)) {
        if let Node::Array(items) = self {
            items.iter().for_each(f);
        }
    }
    fn for_each_member(&'v self, mut f: impl FnMut(&'v str, &'v Self)) {
        if let Node::Object(members) = self {
            for (key, value) in members {
                f(key, value);
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Other)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node<'de>, E> {
        Ok(Node::Uint(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node<'de>, E> {
        // `Value::as_u64` reads a non-negative i64 too.
        Ok(u64::try_from(v).map_or(Node::Other, Node::Uint))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node<'de>, E> {
        Ok(Node::Other)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element::<Node<'de>>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(key) = map.next_key_seed(crate::canonical::MemberName)? {
            members.push((key, map.next_value::<Node<'de>>()?));
        }
        Ok(Node::Object(members))
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
