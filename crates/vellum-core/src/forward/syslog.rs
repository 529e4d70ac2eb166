//! Syslog, RFC 5424 messages with RFC 6587 §3.4.1 octet-counting framing.
//!
//! One event becomes one message:
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [vellum@PEN id="…" …] BOM{canonical JSON of the event}
//! ```
//!
//! | part | value | why |
//! | --- | --- | --- |
//! | PRI | `facility * 8 + severity` (table below) | facility 13 "log audit" by default: these are audit records |
//! | VERSION | `1` | the only version RFC 5424 defines |
//! | TIMESTAMP | the event's `receivedAt`, UTC with six fractional digits and `Z`; NILVALUE `-` when absent or unparseable | server time of acceptance: a client cannot backdate it, and RFC 5424 allows at most six fractional digits |
//! | HOSTNAME | the configured host name (the caller passes the machine's), ≤ 255 | §6.2.4 |
//! | APP-NAME | the configured application name (`vellum`), ≤ 48 | §6.2.5 |
//! | PROCID | `-` | a message is about an event, not about the forwarding process |
//! | MSGID | the event's `action`, ≤ 32 | lets receivers route on the action without parsing SD or MSG |
//! | STRUCTURED-DATA | one element `vellum@<PEN>` with the parameters below, only those present | indexable key fields; the SD-ID is a private one (`name@<private enterprise number>`, §7.2.2), PEN 32473 by default (the IANA example number, RFC 5612) until an installation configures its own |
//! | MSG | UTF-8 BOM, then the canonical JSON (RFC 8785) of the whole event | the receiver gets the complete event and can recompute its hash |
//!
//! Severity, from the event's `severity` (then `status`):
//!
//! | event | syslog severity |
//! | --- | --- |
//! | `severity: critical` | 2 (crit) |
//! | `severity: high` | 3 (err) |
//! | `severity: medium` | 4 (warning) |
//! | `severity: low`, absent or unknown, `status: failure` | 5 (notice) |
//! | `severity: low`, absent or unknown, any other status | 6 (info) |
//!
//! Structured-data parameters (PARAM-NAME ← event field): `id`, `logId`, `seq`, `hash`,
//! `action`, `status`, `principalId`, `organizationId`, `classification` ← `dataClassification`,
//! `target` ← `targetResourceType/targetResourceId` (just the one that is present when only one
//! is).
//!
//! ## Neutralizing text
//!
//! Header fields (HOSTNAME, APP-NAME, MSGID) are PRINTUSASCII (`%d33-126`) by grammar: every
//! other character (space, control, any non-ASCII character) becomes `_`, then the field is cut
//! to its length limit (counted in characters, which are single bytes by then); an empty field is
//! NILVALUE. PARAM-VALUEs are UTF-8 with `"`, `\` and `]` escaped by a backslash (§6.3.3);
//! control characters (Unicode `Cc`: C0, DEL, C1) become `_` so that no receiver that splits on
//! line ends sees half a message. The exact values always remain in MSG.
//!
//! [`parse_5424`] is a strict parser of the same grammar, for tests and for checking what a real
//! syslog daemon received.

use super::scalar;
use crate::canonical::to_canonical_string;
use serde_json::Value;
use std::fmt::Write as _;

/// RFC 5424 NILVALUE.
pub const NILVALUE: &str = "-";

/// The UTF-8 byte order mark that starts an RFC 5424 MSG in UTF-8 (§6.4).
pub const BOM: char = '\u{FEFF}';

/// Facility 13, "log audit" (RFC 5424 §6.2.1, table 1).
pub const FACILITY_LOG_AUDIT: u8 = 13;

/// The default private enterprise number of the SD-ID: 32473, the number IANA reserves for
/// documentation examples (RFC 5612).
pub const DEFAULT_ENTERPRISE_ID: u32 = 32473;

/// The name part of the SD-ID (`vellum@<PEN>`).
pub const SD_NAME: &str = "vellum";

const MAX_HOSTNAME: usize = 255;
const MAX_APP_NAME: usize = 48;
const MAX_PROCID: usize = 128;
const MAX_MSGID: usize = 32;
const MAX_SD_NAME: usize = 32;

/// SD-IDs without `@` that IANA has registered (RFC 5424 §7).
const REGISTERED_SD_IDS: [&str; 3] = ["timeQuality", "origin", "meta"];

/// Settings of a syslog sink that shape its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// APP-NAME, normally `vellum`.
    pub app_name: String,
    /// HOSTNAME: the caller passes the machine's name (vellum-core reads nothing itself).
    pub hostname: String,
    /// Syslog facility, 0..=23; 13 ("log audit") by default. [`format_5424`] uses 13 when the
    /// value is out of range; [`SyslogConfig::validate`] reports it.
    pub facility: u8,
    /// Private enterprise number of the SD-ID `vellum@<PEN>`; 32473 (the example PEN) by default.
    pub enterprise_id: u32,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        Self {
            app_name: "vellum".to_owned(),
            hostname: NILVALUE.to_owned(),
            facility: FACILITY_LOG_AUDIT,
            enterprise_id: DEFAULT_ENTERPRISE_ID,
        }
    }
}

impl SyslogConfig {
    /// The defaults with the given host name.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            ..Self::default()
        }
    }

    /// Checks the settings: facility 0..=23, a private enterprise number other than 0 (which
    /// IANA reserves), and a host and application name that RFC 5424 can carry unchanged
    /// (PRINTUSASCII, 1–255 and 1–48 characters). [`format_5424`] copes with invalid values
    /// anyway; this is for configuration loading, so that they are refused up front.
    pub fn validate(&self) -> Result<(), String> {
        if self.facility > 23 {
            return Err(format!(
                "syslog facility must be 0..=23, not {}",
                self.facility
            ));
        }
        if self.enterprise_id == 0 {
            return Err("syslog enterprise id (PEN) must not be 0".to_owned());
        }
        check_header_field("hostname", &self.hostname, MAX_HOSTNAME)?;
        check_header_field("app name", &self.app_name, MAX_APP_NAME)
    }

    /// The SD-ID of the Vellum element: `vellum@<PEN>`.
    pub fn sd_id(&self) -> String {
        format!("{SD_NAME}@{}", self.enterprise_id)
    }

    fn effective_facility(&self) -> u8 {
        if self.facility <= 23 {
            self.facility
        } else {
            FACILITY_LOG_AUDIT
        }
    }
}

fn check_header_field(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max {
        return Err(format!("syslog {what} must be 1..={max} characters"));
    }
    if !value.bytes().all(is_print_us_ascii) {
        return Err(format!(
            "syslog {what} must be printable US-ASCII without spaces"
        ));
    }
    Ok(())
}

fn is_print_us_ascii(b: u8) -> bool {
    (33..=126).contains(&b)
}

/// The syslog severity (0–7) of an event; see the table in the module docs.
pub fn severity(event: &Value) -> u8 {
    match event.get("severity").and_then(Value::as_str) {
        Some("critical") => 2,
        Some("high") => 3,
        Some("medium") => 4,
        _ if event.get("status").and_then(Value::as_str) == Some("failure") => 5,
        _ => 6,
    }
}

/// The PRI value (`facility * 8 + severity`, 0..=191) of an event under `config`.
pub fn pri(event: &Value, config: &SyslogConfig) -> u8 {
    config.effective_facility() * 8 + severity(event)
}

/// A header field: PRINTUSASCII only (others become `_`), at most `max` characters, NILVALUE
/// when empty.
fn header_field(value: &str, max: usize) -> String {
    let out: String = value
        .chars()
        .take(max)
        .map(|c| {
            if c.is_ascii() && is_print_us_ascii(c as u8) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        NILVALUE.to_owned()
    } else {
        out
    }
}

/// TIMESTAMP from `receivedAt`: UTC, six fractional digits, `Z`; NILVALUE when absent,
/// unparseable or outside the four-digit years RFC 3339 can write.
fn header_timestamp(event: &Value) -> String {
    // `checked_to_offset`: the UTC reading of a date at the edge of the range (year 9999 with a
    // negative offset) is not representable, and `to_offset` would panic on it.
    match super::time_at(event, "/receivedAt")
        .and_then(|at| at.checked_to_offset(time::UtcOffset::UTC))
    {
        Some(utc) if (0..=9999).contains(&utc.year()) => crate::time_fmt::format_server_time(utc),
        _ => NILVALUE.to_owned(),
    }
}

/// Appends a PARAM-VALUE: `"`, `\` and `]` escaped (RFC 5424 §6.3.3), control characters as `_`.
fn push_param_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('_'),
            c => out.push(c),
        }
    }
}

/// The STRUCTURED-DATA element of an event: `[vellum@PEN name="value" …]`, present fields only.
fn structured_data(event: &Value, config: &SyslogConfig) -> String {
    const PARAMS: [(&str, &str); 9] = [
        ("id", "/id"),
        ("logId", "/logId"),
        ("seq", "/seq"),
        ("hash", "/hash"),
        ("action", "/action"),
        ("status", "/status"),
        ("principalId", "/principalId"),
        ("organizationId", "/organizationId"),
        ("classification", "/dataClassification"),
    ];
    let mut out = String::with_capacity(256);
    out.push('[');
    out.push_str(&config.sd_id());
    let param = |out: &mut String, name: &str, value: &str| {
        out.push(' ');
        out.push_str(name);
        out.push_str("=\"");
        push_param_value(out, value);
        out.push('"');
    };
    for (name, pointer) in PARAMS {
        if let Some(value) = scalar(event, pointer) {
            param(&mut out, name, &value);
        }
    }
    let target = match (
        scalar(event, "/targetResourceType"),
        scalar(event, "/targetResourceId"),
    ) {
        (Some(t), Some(i)) => Some(format!("{t}/{i}")),
        (Some(one), None) | (None, Some(one)) => Some(one.into_owned()),
        (None, None) => None,
    };
    if let Some(target) = target {
        param(&mut out, "target", &target);
    }
    out.push(']');
    out
}

/// Formats one event as an RFC 5424 message, without framing or a trailing newline.
pub fn format_5424(event: &Value, config: &SyslogConfig) -> String {
    let action = event.get("action").and_then(Value::as_str).unwrap_or("");
    let json = to_canonical_string(event);
    let mut out = String::with_capacity(json.len() + 512);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "<{}>1 {} {} {} {} {} {} {BOM}",
        pri(event, config),
        header_timestamp(event),
        header_field(&config.hostname, MAX_HOSTNAME),
        header_field(&config.app_name, MAX_APP_NAME),
        NILVALUE,
        header_field(action, MAX_MSGID),
        structured_data(event, config),
    );
    out.push_str(&json);
    out
}

/// Frames a message for a stream transport, RFC 6587 §3.4.1 octet counting:
/// `MSG-LEN SP SYSLOG-MSG`, where MSG-LEN is the length in bytes (not characters).
pub fn frame_octet_counting(message: &str) -> Vec<u8> {
    let len = message.len().to_string();
    let mut out = Vec::with_capacity(len.len() + 1 + message.len());
    out.extend_from_slice(len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(message.as_bytes());
    out
}

/// One SD-ELEMENT of a parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdElement {
    /// The SD-ID, e.g. `vellum@32473`.
    pub id: String,
    /// PARAM-NAME and unescaped PARAM-VALUE pairs, in message order.
    pub params: Vec<(String, String)>,
}

/// An RFC 5424 message taken apart by [`parse_5424`]. NILVALUE fields are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed5424 {
    /// PRI value, 0..=191.
    pub pri: u8,
    /// VERSION.
    pub version: u16,
    /// TIMESTAMP as written.
    pub timestamp: Option<String>,
    /// HOSTNAME.
    pub hostname: Option<String>,
    /// APP-NAME.
    pub app_name: Option<String>,
    /// PROCID.
    pub procid: Option<String>,
    /// MSGID.
    pub msgid: Option<String>,
    /// The SD-ELEMENTs, in order (empty for a NILVALUE STRUCTURED-DATA).
    pub structured_data: Vec<SdElement>,
    /// MSG without its BOM; `None` when the message has no MSG part.
    pub msg: Option<String>,
    /// Whether MSG started with a BOM (i.e. declares itself UTF-8).
    pub msg_bom: bool,
}

impl Parsed5424 {
    /// Facility (PRI / 8).
    pub fn facility(&self) -> u8 {
        self.pri / 8
    }

    /// Severity (PRI % 8).
    pub fn severity(&self) -> u8 {
        self.pri % 8
    }

    /// Every SD parameter of every element, unescaped, in message order.
    pub fn sd_params(&self) -> Vec<(String, String)> {
        self.structured_data
            .iter()
            .flat_map(|e| e.params.iter().cloned())
            .collect()
    }

    /// The first SD parameter called `name`, in any element.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.structured_data
            .iter()
            .flat_map(|e| e.params.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {what} at byte {}", self.pos))
        }
    }

    /// The longest run of ASCII bytes satisfying `keep` (never splits a character, since
    /// `keep` only accepts ASCII).
    fn take_ascii(&mut self, keep: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii() && keep(b) {
                self.pos += 1;
            } else {
                break;
            }
        }
        self.text.get(start..self.pos).unwrap_or("")
    }

    fn rest(&self) -> &'a str {
        self.text.get(self.pos..).unwrap_or("")
    }
}

/// A header field: 1..=`max` PRINTUSASCII characters or NILVALUE, then SP.
fn parse_header_field(
    c: &mut Cursor<'_>,
    what: &str,
    max: usize,
) -> Result<Option<String>, String> {
    let token = c.take_ascii(is_print_us_ascii);
    if token.is_empty() {
        return Err(format!("{what} missing or not printable US-ASCII"));
    }
    if token.len() > max {
        return Err(format!("{what} longer than {max} characters"));
    }
    c.expect(b' ', &format!("SP after {what}"))?;
    Ok((token != NILVALUE).then(|| token.to_owned()))
}

/// Checks an RFC 5424 TIMESTAMP (§6.2.3): RFC 3339 with upper-case `T` and `Z`, at most six
/// fractional digits, no leap second, and a real calendar date.
fn check_timestamp(ts: &str) -> Result<(), String> {
    let b = ts.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    let layout_ok = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !layout_ok {
        return Err(format!(
            "TIMESTAMP {ts:?} is not RFC 3339 with upper-case T"
        ));
    }
    if b[17] > b'5' {
        return Err("TIMESTAMP has a leap second, which RFC 5424 forbids".to_owned());
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start || i - start > 6 {
            return Err("TIMESTAMP must have 1 to 6 fractional digits".to_owned());
        }
    }
    let offset = &b[i..];
    let offset_ok = offset == b"Z"
        || (offset.len() == 6
            && (offset[0] == b'+' || offset[0] == b'-')
            && offset[1..3].iter().all(u8::is_ascii_digit)
            && offset[3] == b':'
            && offset[4..6].iter().all(u8::is_ascii_digit));
    if !offset_ok {
        return Err("TIMESTAMP offset must be Z or +hh:mm / -hh:mm".to_owned());
    }
    crate::time_fmt::parse_rfc3339(ts)
        .map(|_| ())
        .map_err(|e| format!("TIMESTAMP {ts:?} is not a valid date-time: {e}"))
}

fn is_sd_name_byte(b: u8) -> bool {
    is_print_us_ascii(b) && !matches!(b, b'=' | b']' | b'"')
}

fn parse_sd_name(c: &mut Cursor<'_>, what: &str) -> Result<String, String> {
    let name = c.take_ascii(is_sd_name_byte);
    if name.is_empty() || name.len() > MAX_SD_NAME {
        return Err(format!(
            "{what} must be 1..={MAX_SD_NAME} printable characters other than '=', ']', '\"' and space (byte {})",
            c.pos
        ));
    }
    Ok(name.to_owned())
}

/// Checks an SD-ID: a registered name, or `name@<private enterprise number>` (§7.2.2).
fn check_sd_id(id: &str) -> Result<(), String> {
    match id.split_once('@') {
        None if REGISTERED_SD_IDS.contains(&id) => Ok(()),
        None => Err(format!(
            "SD-ID {id:?} is neither IANA-registered nor of the form name@<enterprise number>"
        )),
        Some((name, pen)) => {
            let pen_ok = !pen.is_empty()
                && pen
                    .split('.')
                    .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
            if name.is_empty() || !pen_ok {
                Err(format!("SD-ID {id:?} is not name@<enterprise number>"))
            } else {
                Ok(())
            }
        }
    }
}

/// A PARAM-VALUE after its opening quote, up to and including the closing quote, unescaped.
fn parse_param_value(c: &mut Cursor<'_>) -> Result<String, String> {
    let rest = c.rest();
    let mut value = String::new();
    let mut chars = rest.char_indices().peekable();
    while let Some((i, ch)) = chars.next() {
        match ch {
            '"' => {
                c.pos += i + 1;
                return Ok(value);
            }
            ']' => {
                return Err(format!(
                    "unescaped ']' in PARAM-VALUE at byte {}",
                    c.pos + i
                ));
            }
            '\\' => match chars.peek() {
                Some(&(_, next @ ('"' | '\\' | ']'))) => {
                    value.push(next);
                    chars.next();
                }
                // §6.3.3: a backslash before any other character is kept as is.
                _ => value.push('\\'),
            },
            other => value.push(other),
        }
    }
    Err("PARAM-VALUE not terminated".to_owned())
}

fn parse_sd_element(c: &mut Cursor<'_>) -> Result<SdElement, String> {
    c.expect(b'[', "'['")?;
    let id = parse_sd_name(c, "SD-ID")?;
    check_sd_id(&id)?;
    let mut params = Vec::new();
    while c.peek() == Some(b' ') {
        c.pos += 1;
        let name = parse_sd_name(c, "PARAM-NAME")?;
        c.expect(b'=', "'=' after PARAM-NAME")?;
        c.expect(b'"', "'\"' opening PARAM-VALUE")?;
        let value = parse_param_value(c)?;
        params.push((name, value));
    }
    c.expect(b']', "']' closing SD-ELEMENT")?;
    Ok(SdElement { id, params })
}

/// Parses one RFC 5424 message (without framing or line terminator), strictly: every rule of
/// the §6 ABNF and its field limits is checked, PARAM-VALUEs are unescaped, and MSG is returned
/// without its BOM. Errors say what is wrong and where.
pub fn parse_5424(line: &str) -> Result<Parsed5424, String> {
    let mut c = Cursor { text: line, pos: 0 };

    c.expect(b'<', "'<' starting PRI")?;
    let digits = c.take_ascii(|b| b.is_ascii_digit());
    if digits.is_empty() || digits.len() > 3 || (digits.len() > 1 && digits.starts_with('0')) {
        return Err("PRI must be 1 to 3 digits without leading zeros".to_owned());
    }
    let pri = digits
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 191)
        .ok_or("PRI must be 0..=191")?;
    c.expect(b'>', "'>' ending PRI")?;

    let version = c.take_ascii(|b| b.is_ascii_digit());
    if version.is_empty() || version.len() > 3 || version.starts_with('0') {
        return Err("VERSION must be 1 to 3 digits, not starting with 0".to_owned());
    }
    let version = version
        .parse::<u16>()
        .map_err(|_| "VERSION is not a number")?;
    c.expect(b' ', "SP after VERSION")?;

    let timestamp = c.take_ascii(is_print_us_ascii);
    if timestamp.is_empty() {
        return Err("TIMESTAMP missing".to_owned());
    }
    let timestamp = if timestamp == NILVALUE {
        None
    } else {
        check_timestamp(timestamp)?;
        Some(timestamp.to_owned())
    };
    c.expect(b' ', "SP after TIMESTAMP")?;

    let hostname = parse_header_field(&mut c, "HOSTNAME", MAX_HOSTNAME)?;
    let app_name = parse_header_field(&mut c, "APP-NAME", MAX_APP_NAME)?;
    let procid = parse_header_field(&mut c, "PROCID", MAX_PROCID)?;
    let msgid = parse_header_field(&mut c, "MSGID", MAX_MSGID)?;

    let mut structured_data: Vec<SdElement> = Vec::new();
    match c.peek() {
        Some(b'-') => c.pos += 1,
        Some(b'[') => {
            while c.peek() == Some(b'[') {
                let element = parse_sd_element(&mut c)?;
                if structured_data.iter().any(|e| e.id == element.id) {
                    return Err(format!("SD-ID {:?} appears twice", element.id));
                }
                structured_data.push(element);
            }
        }
        _ => return Err("STRUCTURED-DATA must be '-' or SD-ELEMENTs".to_owned()),
    }

    let (msg, msg_bom) = if c.peek().is_none() {
        (None, false)
    } else {
        c.expect(b' ', "SP before MSG")?;
        let rest = c.rest();
        match rest.strip_prefix(BOM) {
            Some(body) => (Some(body.to_owned()), true),
            None => (Some(rest.to_owned()), false),
        }
    };

    Ok(Parsed5424 {
        pri,
        version,
        timestamp,
        hostname,
        app_name,
        procid,
        msgid,
        structured_data,
        msg,
        msg_bom,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> SyslogConfig {
        SyslogConfig::new("audit-host.example")
    }

    fn stored_event() -> Value {
        json!({
            "id": "0190a5e2-7c3b-7000-8000-000000000001",
            "logId": "default",
            "seq": 41,
            "receivedAt": "2026-11-23T09:01:02.123456Z",
            "timestamp": "2026-11-23T09:01:01Z",
            "action": "fhir.patient.read",
            "status": "success",
            "principalId": "dr-smith",
            "organizationId": "org-1",
            "dataClassification": "PHI",
            "targetResourceType": "Patient",
            "targetResourceId": "p-7",
            "severity": "low",
            "prevHash": "00",
            "hash": "ab12",
            "keyId": "default",
            "signature": "cd34"
        })
    }

    #[test]
    fn golden_message() {
        let event = stored_event();
        let msg = format_5424(&event, &config());
        let expected = format!(
            "<110>1 2026-11-23T09:01:02.123456Z audit-host.example vellum - fhir.patient.read \
             [vellum@32473 id=\"0190a5e2-7c3b-7000-8000-000000000001\" logId=\"default\" seq=\"41\" \
             hash=\"ab12\" action=\"fhir.patient.read\" status=\"success\" principalId=\"dr-smith\" \
             organizationId=\"org-1\" classification=\"PHI\" target=\"Patient/p-7\"] \u{FEFF}{}",
            to_canonical_string(&event)
        );
        assert_eq!(msg, expected);
    }

    #[test]
    fn golden_escaping_and_non_ascii_action() {
        let event = json!({
            "action": "dossiê.ver\u{00e7}ão ]x",
            "status": "failure",
            "principalId": "a\"b\\c]d",
            "organizationId": "line\nbreak",
            "receivedAt": "2026-01-02T03:04:05.000001+01:00"
        });
        let cfg = SyslogConfig {
            app_name: "vellum app".to_owned(),
            hostname: "höst".to_owned(),
            facility: 13,
            enterprise_id: 99999,
        };
        let msg = format_5424(&event, &cfg);
        let expected = format!(
            "<109>1 2026-01-02T02:04:05.000001Z h_st vellum_app - dossi_.ver__o_]x \
             [vellum@99999 action=\"dossiê.verção \\]x\" status=\"failure\" \
             principalId=\"a\\\"b\\\\c\\]d\" organizationId=\"line_break\"] \u{FEFF}{}",
            to_canonical_string(&event)
        );
        assert_eq!(msg, expected);
        let parsed = parse_5424(&msg).expect("our own output parses");
        assert_eq!(parsed.param("principalId"), Some("a\"b\\c]d"));
        assert_eq!(parsed.param("action"), Some("dossiê.verção ]x"));
        assert_eq!(parsed.msgid.as_deref(), Some("dossi_.ver__o_]x"));
    }

    #[test]
    fn severity_table() {
        let cases = [
            (json!({"severity": "critical", "status": "success"}), 2),
            (json!({"severity": "high"}), 3),
            (json!({"severity": "medium", "status": "failure"}), 4),
            (json!({"severity": "low", "status": "failure"}), 5),
            (json!({"status": "failure"}), 5),
            (json!({"severity": "low", "status": "success"}), 6),
            (json!({"severity": "bogus", "status": "warning"}), 6),
            (json!({}), 6),
        ];
        for (event, want) in cases {
            assert_eq!(severity(&event), want, "{event}");
            assert_eq!(pri(&event, &config()), 13 * 8 + want);
        }
        let bad = SyslogConfig {
            facility: 40,
            ..config()
        };
        assert!(bad.validate().is_err());
        assert_eq!(pri(&json!({}), &bad), 13 * 8 + 6, "falls back to log audit");
        let local7 = SyslogConfig {
            facility: 23,
            ..config()
        };
        assert_eq!(pri(&json!({"severity": "critical"}), &local7), 186);
    }

    #[test]
    fn config_validation() {
        assert!(config().validate().is_ok());
        assert!(
            SyslogConfig::default().validate().is_ok(),
            "'-' is a valid hostname field"
        );
        for bad in [
            SyslogConfig::new(""),
            SyslogConfig::new("has space"),
            SyslogConfig::new("x".repeat(256)),
            SyslogConfig {
                app_name: "a".repeat(49),
                ..config()
            },
            SyslogConfig {
                enterprise_id: 0,
                ..config()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_event_is_still_valid() {
        for event in [json!({}), json!(null), json!([1, 2]), json!("text")] {
            let msg = format_5424(&event, &config());
            let parsed = parse_5424(&msg).expect("valid");
            assert_eq!(parsed.timestamp, None);
            assert_eq!(parsed.msgid, None);
            assert_eq!(parsed.procid, None);
            assert_eq!(parsed.structured_data.len(), 1);
            assert!(parsed.structured_data[0].params.is_empty());
            assert_eq!(
                parsed.msg.as_deref(),
                Some(to_canonical_string(&event).as_str())
            );
        }
    }

    #[test]
    fn field_limits() {
        let long_action = "a".repeat(40);
        let event = json!({"action": long_action, "receivedAt": "not a time"});
        let cfg = SyslogConfig {
            hostname: "h".repeat(300),
            app_name: "n".repeat(60),
            ..config()
        };
        let parsed = parse_5424(&format_5424(&event, &cfg)).expect("valid");
        assert_eq!(parsed.msgid.as_deref(), Some("a".repeat(32).as_str()));
        assert_eq!(parsed.hostname.as_ref().map(String::len), Some(255));
        assert_eq!(parsed.app_name.as_ref().map(String::len), Some(48));
        assert_eq!(parsed.timestamp, None, "unparseable receivedAt is NILVALUE");
        assert_eq!(
            parsed.param("action"),
            Some(long_action.as_str()),
            "SD keeps it whole"
        );
    }

    #[test]
    fn timestamp_at_the_edge_of_the_range() {
        // Found by the property test: UTC of this instant is in year 10000.
        let event = json!({"receivedAt": "9999-12-31T23:59:59.999999-23:59"});
        assert_eq!(
            parse_5424(&format_5424(&event, &config()))
                .expect("valid")
                .timestamp,
            None
        );
        let event = json!({"receivedAt": "0000-01-01T00:30:00+01:00"});
        assert_eq!(
            parse_5424(&format_5424(&event, &config()))
                .expect("valid")
                .timestamp,
            None
        );
    }

    #[test]
    fn octet_counting_counts_bytes() {
        let msg = "<110>1 - - - - - - \u{FEFF}{\"a\":\"ção😀\"}";
        let framed = frame_octet_counting(msg);
        let text = String::from_utf8(framed).expect("utf-8");
        let (len, rest) = text.split_once(' ').expect("space");
        assert_eq!(rest, msg);
        assert_eq!(len.parse::<usize>().expect("number"), msg.len());
        assert_ne!(msg.len(), msg.chars().count(), "the test text is multibyte");
        assert_eq!(frame_octet_counting(""), b"0 ".to_vec());
    }

    #[test]
    fn parse_round_trip() {
        let event = stored_event();
        let msg = format_5424(&event, &config());
        let parsed = parse_5424(&msg).expect("valid");
        assert_eq!(parsed.pri, 110);
        assert_eq!((parsed.facility(), parsed.severity()), (13, 6));
        assert_eq!(parsed.version, 1);
        assert_eq!(
            parsed.timestamp.as_deref(),
            Some("2026-11-23T09:01:02.123456Z")
        );
        assert_eq!(parsed.hostname.as_deref(), Some("audit-host.example"));
        assert_eq!(parsed.app_name.as_deref(), Some("vellum"));
        assert_eq!(parsed.procid, None);
        assert_eq!(parsed.msgid.as_deref(), Some("fhir.patient.read"));
        assert_eq!(parsed.structured_data[0].id, "vellum@32473");
        let params = parsed.sd_params();
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "logId",
                "seq",
                "hash",
                "action",
                "status",
                "principalId",
                "organizationId",
                "classification",
                "target"
            ]
        );
        assert_eq!(parsed.param("seq"), Some("41"));
        assert!(parsed.msg_bom);
        let body = parsed.msg.expect("msg");
        let back: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(back, event);
        assert_eq!(body, to_canonical_string(&event));
    }

    #[test]
    fn parser_accepts_other_valid_messages() {
        let p = parse_5424("<0>1 - - - - - -").expect("minimal");
        assert_eq!((p.pri, p.msg), (0, None));
        let p = parse_5424(
            "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 \
             [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"]\
             [examplePriority@32473 class=\"high\"] plain text",
        )
        .expect("RFC 5424 example 4");
        assert_eq!(p.structured_data.len(), 2);
        assert_eq!(p.param("class"), Some("high"));
        assert_eq!(p.msg.as_deref(), Some("plain text"));
        assert!(!p.msg_bom);
        let p = parse_5424("<34>1 2003-10-11T22:14:15.003-07:00 h a 1 - [origin x=\"a\\nb\"] ")
            .expect("offset time, registered SD-ID, literal backslash, empty MSG");
        assert_eq!(p.param("x"), Some("a\\nb"));
        assert_eq!(p.msg.as_deref(), Some(""));
    }

    #[test]
    fn parser_is_strict() {
        let bad = [
            "",
            "<192>1 - - - - - -",
            "<01>1 - - - - - -",
            "<1>0 - - - - - -",
            "<1>1  - - - - -",
            "<1>1 2003-10-11t22:14:15Z - - - - -",
            "<1>1 2003-10-11T22:14:15.1234567Z - - - - -",
            "<1>1 2003-10-11T22:14:60Z - - - - -",
            "<1>1 2003-02-30T22:14:15Z - - - - -",
            "<1>1 2003-10-11T22:14:15 - - - - -",
            "<1>1 - h\u{e9}st - - - -",
            "<1>1 - - - - - x",
            "<1>1 - - - - - [a@1 k=\"v]\"]",
            "<1>1 - - - - - [a@1 k=\"v\"",
            "<1>1 - - - - - [a@1 k=v]",
            "<1>1 - - - - - [unregistered k=\"v\"]",
            "<1>1 - - - - - [a@x k=\"v\"]",
            "<1>1 - - - - - [a@1][a@1]",
            "<1>1 - - - - - [a@1 k=\"v\"]x",
            "<1>1 - - - - -\n",
        ];
        for line in bad {
            assert!(parse_5424(line).is_err(), "accepted {line:?}");
        }
        let long_msgid = format!("<1>1 - - - - {} -", "m".repeat(33));
        assert!(parse_5424(&long_msgid).is_err());
    }
}
