//! Redaction (SPEC §2), applied before hashing so the stored hash covers the redacted form.
//!
//! Three kinds of rule, compiled once by [`Redactor::new`]:
//! - **field-name rules** replace the whole value of a member whose name matches (compared
//!   case-insensitively, ignoring `_` and `-`, so `api_key`, `apiKey` and `API-KEY` are one
//!   name) anywhere inside `details`, `changes` and custom top-level fields. The typed fields of
//!   SPEC §2 are never touched by name: they carry what the audit itself needs.
//! - **pattern rules** find values in free text (`outcomeDescription`,
//!   `healthcareContext.clinicalJustification`, every string under `details`, `changes` and
//!   custom fields) and replace only the matched substring. Identifier fields (`principalId`,
//!   `targetResourceId`, `organizationId`, `correlationId`, the ids in the contexts) are never
//!   scanned.
//! - **pointer rules** replace the value at one exact JSON pointer, typed fields included.
//!
//! A rule either masks (`[REDACTED]`) or tokenizes (`tok:` + the first 16 hex digits of
//! HMAC-SHA256 under the redaction key, so equal values give equal tokens and remain searchable
//! without being readable). Redaction is idempotent: an existing mask or token is recognised and
//! left alone, and pattern scanning repeats on a string until nothing more matches, so
//! redacting a redacted event changes nothing.
//!
//! The hot path (every event, most strings with nothing to redact) does a byte scan per string
//! and allocates nothing unless something is replaced.

use crate::config::{PatternKind, RedactionConfig, RedactionMode, RedactionPreset};
use crate::model::{is_server_field, is_typed_field};
use crate::validate::{Path, Seg};
use hmac::{Hmac, KeyInit, Mac};
use regex::Regex;
use serde_json::{Map, Value};
use sha2::Sha256;
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;

type HmacSha256 = Hmac<Sha256>;

/// What a masked value becomes.
pub const MASK: &str = "[REDACTED]";

/// Prefix of a tokenized value; `tok:` + 16 lowercase hex digits.
pub const TOKEN_PREFIX: &str = "tok:";

/// Hex digits of HMAC-SHA256 kept in a token (64 bits: collisions are negligible for
/// searching, and the value cannot be recovered without the key).
const TOKEN_HEX_DIGITS: usize = 16;

/// Longest field name a rule may have, in bytes after normalization; lets a lookup normalize
/// a key into a stack buffer instead of allocating.
const MAX_FIELD_NAME_BYTES: usize = 128;

/// Pattern scanning of one string repeats until nothing matches; this bounds the repeats in
/// case of adversarial text (each pass removes at least one match, so real text converges in
/// one or two).
const MAX_SCAN_PASSES: usize = 32;

/// Credential fields, masked in every preset but `none`: a token of a password is still a
/// password-equivalent for anyone with the key, and nobody needs to search by one.
const CREDENTIAL_FIELDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "newPassword",
    "oldPassword",
    "currentPassword",
    "confirmPassword",
    "secret",
    "clientSecret",
    "apiSecret",
    "token",
    "accessToken",
    "refreshToken",
    "idToken",
    "sessionToken",
    "apiKey",
    "xApiKey",
    "authorization",
    "proxyAuthorization",
    "cookie",
    "setCookie",
    "privateKey",
    "otp",
    "pin",
];

/// Healthcare identity numbers: tokenized, so "every event about this SSN" stays answerable.
const HEALTHCARE_TOKENIZED_FIELDS: &[&str] = &[
    "ssn",
    "socialSecurityNumber",
    "cpf",
    "rg",
    "cns",
    "mrn",
    "medicalRecordNumber",
    "insuranceNumber",
    "nationalId",
    "passportNumber",
    "creditCard",
    "cardNumber",
    "iban",
];

/// Healthcare clinical and birth data: masked (free text or tiny domains where a token adds
/// nothing but risk).
const HEALTHCARE_MASKED_FIELDS: &[&str] = &[
    "diagnosis",
    "medication",
    "dateOfBirth",
    "dob",
    "birthDate",
    "cvv",
];

/// Payment identifiers: tokenized.
const FINANCIAL_TOKENIZED_FIELDS: &[&str] = &[
    "creditCard",
    "cardNumber",
    "iban",
    "accountNumber",
    "routingNumber",
    "pan",
];

/// Card verification codes: masked (they must never be stored, PCI DSS 3.2).
const FINANCIAL_MASKED_FIELDS: &[&str] = &["cvv", "cvc"];

/// Error in a redaction configuration (e.g. a malformed pointer).
#[derive(Debug, thiserror::Error)]
#[error("invalid redaction configuration: {0}")]
pub struct RedactionConfigError(pub String);

/// A pointer rule, pre-split into unescaped reference tokens.
struct PointerTarget {
    pointer: String,
    tokens: Vec<String>,
    mode: RedactionMode,
}

/// The pattern rules in effect, each with its mode, and the regexes they need.
#[derive(Default)]
struct Patterns {
    ssn: Option<RedactionMode>,
    card: Option<RedactionMode>,
    cpf: Option<RedactionMode>,
    email: Option<(RedactionMode, Regex)>,
    phone: Option<(RedactionMode, Regex)>,
    mrn: Option<(RedactionMode, Regex)>,
    iban: Option<(RedactionMode, Regex)>,
}

impl Patterns {
    /// The fewest ASCII digits a text must hold for some enabled pattern other than `email`
    /// to match in it (`usize::MAX` when none is enabled): SSN 9, card 13, CPF 11, phone 8
    /// (its digit-count check), MRN 1 (the id must hold a digit), IBAN 2 (its check digits).
    /// Lets most short strings skip pattern scanning after one counting pass.
    fn min_digits(&self) -> usize {
        [
            (self.ssn.is_some(), 9),
            (self.card.is_some(), 13),
            (self.cpf.is_some(), 11),
            (self.phone.is_some(), 8),
            (self.mrn.is_some(), 1),
            (self.iban.is_some(), 2),
        ]
        .into_iter()
        .filter_map(|(enabled, digits)| enabled.then_some(digits))
        .min()
        .unwrap_or(usize::MAX)
    }

    fn any(&self) -> bool {
        self.ssn.is_some()
            || self.card.is_some()
            || self.cpf.is_some()
            || self.email.is_some()
            || self.phone.is_some()
            || self.mrn.is_some()
            || self.iban.is_some()
    }
}

/// A replaced range of a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    mode: RedactionMode,
}

/// A compiled redaction rule set. Built once at startup from configuration; [`Redactor::redact`]
/// then runs on every event.
pub struct Redactor {
    /// Normalized field name → mode.
    fields: HashMap<String, RedactionMode>,
    /// Longest normalized field name, in bytes.
    max_field_len: usize,
    /// [`Patterns::min_digits`], computed once.
    min_digits: usize,
    pointers: Vec<PointerTarget>,
    patterns: Patterns,
    /// HMAC keyed with the token key; cloned per token so the key schedule runs once.
    mac: HmacSha256,
}

impl std::fmt::Debug for Redactor {
    // The key must not end up in logs, so only the rule counts are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("fields", &self.fields.len())
            .field("pointers", &self.pointers.len())
            .field("patterns", &self.patterns.any())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// Compiles `config` (its preset plus its explicit rules; an explicit rule for a name or
    /// pattern the preset already has overrides the preset's mode); `token_key` is the HMAC
    /// key for `tokenize` and must not be empty when any rule tokenizes.
    ///
    /// Fails on a pointer that is not a valid RFC 6901 pointer to a member (it must start with
    /// `/`), and on an empty or overlong field name.
    pub fn new(config: &RedactionConfig, token_key: &[u8]) -> Result<Self, RedactionConfigError> {
        Self::build(config, token_key, false)
    }

    /// Compiles `config` with every rule turned into `mask`, so no token key is needed.
    ///
    /// For redaction outside the server (the client SDK sanitizing request bodies before they
    /// reach its spool on disk): the server's token key must not leave the server, and a token
    /// under any other key would look searchable while matching nothing the server makes.
    pub fn masking(config: &RedactionConfig) -> Result<Self, RedactionConfigError> {
        Self::build(config, &[], true)
    }

    fn build(
        config: &RedactionConfig,
        token_key: &[u8],
        mask_only: bool,
    ) -> Result<Self, RedactionConfigError> {
        let effective = |mode: RedactionMode| {
            if mask_only { RedactionMode::Mask } else { mode }
        };
        let mut fields: HashMap<String, RedactionMode> = HashMap::new();
        let mut pattern_modes: Vec<(PatternKind, RedactionMode)> = Vec::new();
        let (preset_fields, preset_patterns) = preset_rules(config.preset);
        let user_fields = config
            .extra_fields
            .iter()
            .map(|r| (r.name.as_str(), r.mode));
        for (name, mode) in preset_fields.into_iter().chain(user_fields) {
            let normalized = normalize_field_name(name);
            if normalized.is_empty() {
                return Err(RedactionConfigError(format!(
                    "field rule {name:?} has no letters or digits"
                )));
            }
            if normalized.len() > MAX_FIELD_NAME_BYTES {
                return Err(RedactionConfigError(format!(
                    "field rule {name:?} is longer than {MAX_FIELD_NAME_BYTES} bytes"
                )));
            }
            fields.insert(normalized, effective(mode));
        }
        let user_patterns = config.extra_patterns.iter().map(|r| (r.kind, r.mode));
        for (kind, mode) in preset_patterns.into_iter().chain(user_patterns) {
            pattern_modes.retain(|(k, _)| *k != kind);
            pattern_modes.push((kind, effective(mode)));
        }

        let mut pointers = Vec::with_capacity(config.pointers.len());
        for rule in &config.pointers {
            let tokens = parse_pointer(&rule.pointer)?;
            pointers.push(PointerTarget {
                pointer: rule.pointer.clone(),
                tokens,
                mode: effective(rule.mode),
            });
        }

        let mut patterns = Patterns::default();
        for (kind, mode) in pattern_modes {
            match kind {
                PatternKind::Ssn => patterns.ssn = Some(mode),
                PatternKind::CardNumber => patterns.card = Some(mode),
                PatternKind::Cpf => patterns.cpf = Some(mode),
                PatternKind::Email => patterns.email = Some((mode, compile(EMAIL_RE)?)),
                PatternKind::Phone => patterns.phone = Some((mode, compile(PHONE_RE)?)),
                PatternKind::Mrn => patterns.mrn = Some((mode, compile(MRN_RE)?)),
                PatternKind::Iban => patterns.iban = Some((mode, compile(IBAN_RE)?)),
            }
        }

        let tokenizes = fields.values().any(|m| *m == RedactionMode::Tokenize)
            || pointers.iter().any(|p| p.mode == RedactionMode::Tokenize)
            || [
                patterns.ssn,
                patterns.card,
                patterns.cpf,
                patterns.email.as_ref().map(|p| p.0),
                patterns.phone.as_ref().map(|p| p.0),
                patterns.mrn.as_ref().map(|p| p.0),
                patterns.iban.as_ref().map(|p| p.0),
            ]
            .contains(&Some(RedactionMode::Tokenize));
        if tokenizes && token_key.is_empty() {
            return Err(RedactionConfigError(
                "tokenize rules need a non-empty token key (anyone could recompute tokens \
                 under an empty key)"
                    .into(),
            ));
        }
        // With no token rule the key is never used; HMAC accepts an empty key.
        let mac = HmacSha256::new_from_slice(token_key)
            .map_err(|e| RedactionConfigError(format!("unusable token key: {e}")))?;

        let max_field_len = fields.keys().map(String::len).max().unwrap_or(0);
        Ok(Self {
            fields,
            max_field_len,
            min_digits: patterns.min_digits(),
            pointers,
            patterns,
            mac,
        })
    }

    /// Whether a pointer rule reaches into (or is) the top-level member `name`. The pipeline
    /// asks before adding a server default without going through the event's map: such a
    /// default must be in the map when [`Redactor::redact`] runs.
    pub(crate) fn targets_member(&self, name: &str) -> bool {
        self.pointers
            .iter()
            .any(|p| p.tokens.first().is_some_and(|t| t == name))
    }

    /// Redacts `event` in place and returns the sorted, deduplicated JSON pointers of the
    /// values it changed (stored in the event as `redactions`, so a reader knows which values
    /// are not as sent).
    pub fn redact(&self, event: &mut Map<String, Value>) -> Vec<String> {
        let mut changed = Vec::new();
        for target in &self.pointers {
            if let Some(value) = resolve_mut(event, &target.tokens)
                && self.replace_whole(value, target.mode)
            {
                changed.push(target.pointer.clone());
            }
        }
        for (key, value) in event.iter_mut() {
            let node = Path::root(key);
            if self.is_pointer_target(&node) {
                continue;
            }
            match key.as_str() {
                "details" | "changes" => self.walk_scoped(value, &node, &mut changed),
                "outcomeDescription" => self.scan_value(value, &node, &mut changed),
                "healthcareContext" => {
                    if let Value::Object(ctx) = value
                        && let Some(text) = ctx.get_mut("clinicalJustification")
                    {
                        let child = node.key("clinicalJustification");
                        if !self.is_pointer_target(&child) {
                            self.scan_value(text, &child, &mut changed);
                        }
                    }
                }
                k if is_typed_field(k) || is_server_field(k) => {}
                _ => match self.field_mode(key) {
                    Some(mode) => {
                        if self.replace_whole(value, mode) {
                            changed.push(node.to_pointer());
                        }
                    }
                    None => self.walk_scoped(value, &node, &mut changed),
                },
            }
        }
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// Applies field-name and pattern rules to a value inside `details`, `changes` or a custom
    /// field.
    fn walk_scoped(&self, value: &mut Value, path: &Path<'_>, changed: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    let node = path.key(key);
                    if self.is_pointer_target(&node) {
                        continue;
                    }
                    match self.field_mode(key) {
                        Some(mode) => {
                            if self.replace_whole(child, mode) {
                                changed.push(node.to_pointer());
                            }
                        }
                        None => self.walk_scoped(child, &node, changed),
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let node = path.index(i);
                    if !self.is_pointer_target(&node) {
                        self.walk_scoped(item, &node, changed);
                    }
                }
            }
            Value::String(_) => self.scan_value(value, path, changed),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Applies the pattern rules to a string value.
    fn scan_value(&self, value: &mut Value, path: &Path<'_>, changed: &mut Vec<String>) {
        if let Value::String(text) = value
            && self.redact_text(text)
        {
            changed.push(path.to_pointer());
        }
    }

    /// Whether `path` is named by a pointer rule (those values were handled first and are
    /// not touched again).
    fn is_pointer_target(&self, path: &Path<'_>) -> bool {
        !self.pointers.is_empty() && self.pointers.iter().any(|p| path_is(path, &p.tokens))
    }

    /// The mode of the field rule matching `key`, normalizing it into a stack buffer.
    fn field_mode(&self, key: &str) -> Option<RedactionMode> {
        if self.fields.is_empty() {
            return None;
        }
        let mut buf = [0u8; MAX_FIELD_NAME_BYTES];
        let mut len = 0;
        for c in key.chars() {
            if c == '_' || c == '-' {
                continue;
            }
            if c.is_ascii() {
                if len >= self.max_field_len {
                    return None;
                }
                buf[len] = c.to_ascii_lowercase() as u8;
                len += 1;
            } else {
                for lower in c.to_lowercase() {
                    let width = lower.len_utf8();
                    if len + width > self.max_field_len {
                        return None;
                    }
                    lower.encode_utf8(&mut buf[len..len + width]);
                    len += width;
                }
            }
        }
        let name = std::str::from_utf8(&buf[..len]).ok()?;
        self.fields.get(name).copied()
    }

    /// Replaces a whole value; returns whether it changed. An existing mask (for either mode)
    /// or token (for `tokenize`) is kept, which makes redaction idempotent; a value a client
    /// already masked stays a mask instead of becoming the token of the word `[REDACTED]`.
    fn replace_whole(&self, value: &mut Value, mode: RedactionMode) -> bool {
        let replacement = match (mode, &*value) {
            (_, Value::String(s)) if s == MASK => return false,
            (RedactionMode::Mask, _) => MASK.to_owned(),
            (RedactionMode::Tokenize, Value::String(s)) if is_token(s) => return false,
            (RedactionMode::Tokenize, Value::String(s)) => self.token(s),
            (RedactionMode::Tokenize, other) => {
                let canonical = serde_json_canonicalizer::to_string(other)
                    .unwrap_or_else(|_| other.to_string());
                self.token(&canonical)
            }
        };
        *value = Value::String(replacement);
        true
    }

    /// `tok:` + the first 16 hex digits of HMAC-SHA256(token key, text).
    fn token(&self, text: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(text.as_bytes());
        let digest = mac.finalize().into_bytes();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(TOKEN_PREFIX.len() + TOKEN_HEX_DIGITS);
        out.push_str(TOKEN_PREFIX);
        for &byte in &digest[..TOKEN_HEX_DIGITS / 2] {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0F)]));
        }
        out
    }

    fn replacement(&self, mode: RedactionMode, matched: &str) -> String {
        match mode {
            RedactionMode::Mask => MASK.to_owned(),
            RedactionMode::Tokenize => self.token(matched),
        }
    }

    /// Replaces every pattern match in `text`; returns whether anything changed. Repeats until
    /// no pattern matches, so the result is a fixed point.
    fn redact_text(&self, text: &mut String) -> bool {
        if !self.patterns.any() {
            return false;
        }
        // One branch-free counting pass (digits, and whether there is an `@` for emails)
        // decides whether any pattern could match at all.
        let (digits, has_at) = text.bytes().fold((0usize, false), |(digits, at), b| {
            (digits + usize::from(b.is_ascii_digit()), at | (b == b'@'))
        });
        let candidate = digits >= self.min_digits || (has_at && self.patterns.email.is_some());
        if !candidate {
            return false;
        }
        let mut changed = false;
        for _ in 0..MAX_SCAN_PASSES {
            let spans = self.find_spans(text);
            if spans.is_empty() {
                break;
            }
            let mut out = String::with_capacity(text.len());
            let mut last = 0;
            for span in &spans {
                out.push_str(text.get(last..span.start).unwrap_or_default());
                let matched = text.get(span.start..span.end).unwrap_or_default();
                out.push_str(&self.replacement(span.mode, matched));
                last = span.end;
            }
            out.push_str(text.get(last..).unwrap_or_default());
            *text = out;
            changed = true;
        }
        changed
    }

    /// Non-overlapping matches of every enabled pattern, in order. Existing tokens are hidden
    /// first so their hex digits never count as digits of a number.
    fn find_spans(&self, text: &str) -> Vec<Span> {
        let hay = hide_tokens(text);
        let hay: &str = &hay;
        let bytes = hay.as_bytes();
        let mut spans = Vec::new();
        if let Some(mode) = self.patterns.ssn {
            scan_ssn(bytes, mode, &mut spans);
        }
        if let Some(mode) = self.patterns.card {
            scan_cards(bytes, mode, &mut spans);
        }
        if let Some(mode) = self.patterns.cpf {
            scan_cpf(bytes, mode, &mut spans);
        }
        if let Some((mode, re)) = &self.patterns.email {
            for m in re.find_iter(hay) {
                spans.push(Span {
                    start: m.start(),
                    end: m.end(),
                    mode: *mode,
                });
            }
        }
        if let Some((mode, re)) = &self.patterns.phone {
            for m in re.find_iter(hay) {
                let digits = m.as_str().bytes().filter(u8::is_ascii_digit).count();
                let bounded = !bytes
                    .get(m.start().wrapping_sub(1))
                    .is_some_and(u8::is_ascii_alphanumeric)
                    && !bytes.get(m.end()).is_some_and(u8::is_ascii_alphanumeric);
                if (8..=15).contains(&digits) && bounded {
                    spans.push(Span {
                        start: m.start(),
                        end: m.end(),
                        mode: *mode,
                    });
                }
            }
        }
        if let Some((mode, re)) = &self.patterns.mrn {
            for caps in re.captures_iter(hay) {
                if let Some(id) = caps.get(1)
                    && id.as_str().bytes().any(|b| b.is_ascii_digit())
                    && !bytes.get(id.end()).is_some_and(u8::is_ascii_alphanumeric)
                {
                    spans.push(Span {
                        start: id.start(),
                        end: id.end(),
                        mode: *mode,
                    });
                }
            }
        }
        if let Some((mode, re)) = &self.patterns.iban {
            for m in re.find_iter(hay) {
                if let Some(end) = iban_end(bytes, m.start(), m.end()) {
                    spans.push(Span {
                        start: m.start(),
                        end,
                        mode: *mode,
                    });
                }
            }
        }
        if spans.len() > 1 {
            spans.sort_unstable_by_key(|s| (s.start, Reverse(s.end)));
            let mut kept: Vec<Span> = Vec::with_capacity(spans.len());
            for span in spans {
                if kept.last().is_none_or(|k| span.start >= k.end) {
                    kept.push(span);
                }
            }
            spans = kept;
        }
        spans
    }
}

fn compile(pattern: &str) -> Result<Regex, RedactionConfigError> {
    Regex::new(pattern).map_err(|e| RedactionConfigError(format!("built-in pattern: {e}")))
}

/// E-mail addresses.
const EMAIL_RE: &str = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}";

/// International numbers (`+55 11 98765-4321`), area code in parentheses
/// (`(555) 123-4567`, `(11) 98765-4321`) and North American `555-123-4567` / `555.123.4567`.
const PHONE_RE: &str =
    r"\+[1-9][0-9 ().-]{6,22}[0-9]|\(\d{2,3}\)\s?\d{3,5}[.-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}";

/// `MRN` (any case) followed by an id; only the id is replaced.
const MRN_RE: &str = r"(?i)(?-u:\b)MRN(?-u:\b)[\s:#.-]*([A-Z0-9][A-Z0-9-]{3,29})";

/// IBAN candidates, compact or in groups of four; mod-97 decides.
const IBAN_RE: &str = r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}";

/// Field rules and pattern rules of a preset.
type PresetRules = (
    Vec<(&'static str, RedactionMode)>,
    Vec<(PatternKind, RedactionMode)>,
);

/// The rules of a preset: field rules and pattern rules.
fn preset_rules(preset: RedactionPreset) -> PresetRules {
    use RedactionMode::{Mask, Tokenize};
    fn with(
        names: &'static [&'static str],
        mode: RedactionMode,
    ) -> impl Iterator<Item = (&'static str, RedactionMode)> {
        names.iter().map(move |n| (*n, mode))
    }
    match preset {
        RedactionPreset::Healthcare => (
            with(CREDENTIAL_FIELDS, Mask)
                .chain(with(HEALTHCARE_TOKENIZED_FIELDS, Tokenize))
                .chain(with(HEALTHCARE_MASKED_FIELDS, Mask))
                .collect(),
            vec![
                (PatternKind::Ssn, Tokenize),
                (PatternKind::CardNumber, Tokenize),
                (PatternKind::Cpf, Tokenize),
            ],
        ),
        RedactionPreset::Financial => (
            with(CREDENTIAL_FIELDS, Mask)
                .chain(with(FINANCIAL_TOKENIZED_FIELDS, Tokenize))
                .chain(with(FINANCIAL_MASKED_FIELDS, Mask))
                .collect(),
            vec![
                (PatternKind::CardNumber, Tokenize),
                (PatternKind::Iban, Tokenize),
                (PatternKind::Ssn, Tokenize),
            ],
        ),
        RedactionPreset::Auth => (with(CREDENTIAL_FIELDS, Mask).collect(), Vec::new()),
        RedactionPreset::None => (Vec::new(), Vec::new()),
    }
}

/// Lowercase, without `_` and `-`: the form field names are compared in.
fn normalize_field_name(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Splits an RFC 6901 pointer into unescaped tokens. The empty pointer (the whole event) is
/// refused: redacting the event itself is never meant.
fn parse_pointer(pointer: &str) -> Result<Vec<String>, RedactionConfigError> {
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(RedactionConfigError(format!(
            "pointer {pointer:?} must start with '/'"
        )));
    };
    rest.split('/')
        .map(|raw| {
            let mut out = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(RedactionConfigError(format!(
                                "pointer {pointer:?} has '~' not followed by 0 or 1"
                            )));
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .collect()
}

/// An RFC 6901 array index: `0` or digits without a leading zero.
fn parse_index(token: &str) -> Option<usize> {
    if token.is_empty()
        || !token.bytes().all(|b| b.is_ascii_digit())
        || (token.len() > 1 && token.starts_with('0'))
    {
        return None;
    }
    token.parse().ok()
}

fn resolve_mut<'a>(map: &'a mut Map<String, Value>, tokens: &[String]) -> Option<&'a mut Value> {
    let (first, rest) = tokens.split_first()?;
    let mut current = map.get_mut(first)?;
    for token in rest {
        current = match current {
            Value::Object(m) => m.get_mut(token)?,
            Value::Array(items) => items.get_mut(parse_index(token)?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Whether `path` is exactly the pointer made of `tokens`.
fn path_is(path: &Path<'_>, tokens: &[String]) -> bool {
    let mut node = Some(path);
    let mut remaining = tokens.len();
    while let Some(n) = node {
        if remaining == 0 {
            return false;
        }
        remaining -= 1;
        let token = &tokens[remaining];
        let same = match n.seg() {
            Seg::Key(k) => k == token,
            Seg::Index(i) => parse_index(token) == Some(i),
        };
        if !same {
            return false;
        }
        node = n.parent();
    }
    remaining == 0
}

/// Whether `s` is exactly a token this module produces.
fn is_token(s: &str) -> bool {
    s.len() == TOKEN_PREFIX.len() + TOKEN_HEX_DIGITS
        && s.starts_with(TOKEN_PREFIX)
        && s.bytes()
            .skip(TOKEN_PREFIX.len())
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `text` with every embedded token (`tok:` + 16 lowercase hex) overwritten by U+0001, which
/// no pattern matches, keeping byte offsets. Borrows when there is no token.
fn hide_tokens(text: &str) -> Cow<'_, str> {
    if !text.contains(TOKEN_PREFIX) {
        return Cow::Borrowed(text);
    }
    let mut bytes = text.as_bytes().to_vec();
    let width = TOKEN_PREFIX.len() + TOKEN_HEX_DIGITS;
    let mut from = 0;
    while let Some(found) = text.get(from..).and_then(|t| t.find(TOKEN_PREFIX)) {
        let start = from + found;
        let candidate = text.get(start..start + width);
        if candidate.is_some_and(is_token) {
            bytes[start..start + width].fill(0x01);
            from = start + width;
        } else {
            from = start + TOKEN_PREFIX.len();
        }
    }
    // Only ASCII bytes were overwritten with ASCII, so this cannot fail; fall back to the
    // original text rather than panic.
    match String::from_utf8(bytes) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(text),
    }
}

fn is_digit(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(u8::is_ascii_digit)
}

/// Whether `b[start..end]` is all ASCII digits.
fn all_digits(b: &[u8], start: usize, end: usize) -> bool {
    b.get(start..end)
        .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
}

/// The end of the maximal run of digits starting at `i`.
fn digit_run_end(b: &[u8], mut i: usize) -> usize {
    while is_digit(b, i) {
        i += 1;
    }
    i
}

/// Calls `f` with the start of every maximal digit run.
fn for_each_digit_run(b: &[u8], mut f: impl FnMut(usize)) {
    let mut i = 0;
    while i < b.len() {
        if is_digit(b, i) {
            f(i);
            i = digit_run_end(b, i);
        } else {
            i += 1;
        }
    }
}

/// US SSNs, `ddd-dd-dddd`, not adjacent to another digit, with an area, group and serial the
/// SSA issues (area not 000, 666 or 9xx; group not 00; serial not 0000).
fn scan_ssn(b: &[u8], mode: RedactionMode, out: &mut Vec<Span>) {
    for_each_digit_run(b, |i| {
        if ssn_at(b, i) {
            out.push(Span {
                start: i,
                end: i + 11,
                mode,
            });
        }
    });
}

/// Whether an SSN starts at `i` (which must not follow a digit).
fn ssn_at(b: &[u8], i: usize) -> bool {
    let shaped = all_digits(b, i, i + 3)
        && b.get(i + 3) == Some(&b'-')
        && all_digits(b, i + 4, i + 6)
        && b.get(i + 6) == Some(&b'-')
        && all_digits(b, i + 7, i + 11)
        && !is_digit(b, i + 11);
    shaped && ssn_valid(&b[i..i + 3], &b[i + 4..i + 6], &b[i + 7..i + 11])
}

fn ssn_valid(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    area != b"000"
        && area != b"666"
        && area.first() != Some(&b'9')
        && group != b"00"
        && serial != b"0000"
}

/// Brazilian CPFs, `ddd.ddd.ddd-dd` or 11 bare digits, not adjacent to another digit, with
/// valid check digits (so a generic 11-digit number is redacted only 1 time in 100, and never
/// a repeated digit such as `111.111.111-11`).
fn scan_cpf(b: &[u8], mode: RedactionMode, out: &mut Vec<Span>) {
    for_each_digit_run(b, |i| {
        let run_end = digit_run_end(b, i);
        let mut digits = [0u8; 11];
        let end = if run_end - i == 11 {
            digits.copy_from_slice(&b[i..run_end]);
            run_end
        } else if run_end - i == 3
            && b.get(i + 3) == Some(&b'.')
            && all_digits(b, i + 4, i + 7)
            && b.get(i + 7) == Some(&b'.')
            && all_digits(b, i + 8, i + 11)
            && b.get(i + 11) == Some(&b'-')
            && all_digits(b, i + 12, i + 14)
            && !is_digit(b, i + 14)
        {
            for (slot, &d) in digits
                .iter_mut()
                .zip(b[i..i + 14].iter().filter(|c| c.is_ascii_digit()))
            {
                *slot = d;
            }
            i + 14
        } else {
            return;
        };
        if cpf_valid(&digits) {
            out.push(Span {
                start: i,
                end,
                mode,
            });
        }
    });
}

/// CPF check digits (mod 11, weights 10..2 then 11..2); a repeated digit is invalid.
fn cpf_valid(digits: &[u8; 11]) -> bool {
    if digits.iter().any(|d| !d.is_ascii_digit()) || digits.iter().all(|d| *d == digits[0]) {
        return false;
    }
    let value = |i: usize| u32::from(digits[i] - b'0');
    let check = |len: usize| {
        let sum: u32 = (0..len)
            .map(|i| value(i) * (len as u32 + 1 - i as u32))
            .sum();
        let rest = sum % 11;
        if rest < 2 { 0 } else { 11 - rest }
    };
    check(9) == value(9) && check(10) == value(10)
}

/// Card numbers: 13–19 digits, optionally grouped by single spaces or dashes, not adjacent to
/// another digit or to a letter, passing Luhn. A digit group that touches a letter is part of
/// an identifier (the hex groups of a UUID, `v2`, `abc123`), not of a card number, so it breaks
/// a run. Within a longer run of groups (a card followed by a year, say) every group-aligned
/// window is tried, leftmost first, longest first.
fn scan_cards(b: &[u8], mode: RedactionMode, out: &mut Vec<Span>) {
    let letter = |i: usize| b.get(i).is_some_and(u8::is_ascii_alphabetic);
    let touches_letter = |start: usize, end: usize| (start > 0 && letter(start - 1)) || letter(end);
    let mut i = 0;
    while i < b.len() {
        if !is_digit(b, i) {
            i += 1;
            continue;
        }
        let first_end = digit_run_end(b, i);
        if touches_letter(i, first_end) {
            i = first_end;
            continue;
        }
        // Measure the run of clean digit groups joined by single separators.
        let mut end = first_end;
        let mut digits = first_end - i;
        while matches!(b.get(end), Some(b' ' | b'-')) && is_digit(b, end + 1) {
            let group_end = digit_run_end(b, end + 1);
            if touches_letter(end + 1, group_end) {
                break;
            }
            digits += group_end - (end + 1);
            end = group_end;
        }
        if digits >= 13 {
            scan_card_run(b, i, end, mode, out);
        }
        i = end;
    }
}

fn scan_card_run(b: &[u8], start: usize, end: usize, mode: RedactionMode, out: &mut Vec<Span>) {
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut g = start;
    while g < end {
        let group_end = digit_run_end(b, g);
        groups.push((g, group_end));
        g = group_end + 1;
    }
    let mut first = 0;
    while first < groups.len() {
        let mut digits = 0;
        let mut best = None;
        for (last, &(gs, ge)) in groups.iter().enumerate().skip(first) {
            digits += ge - gs;
            if digits > 19 {
                break;
            }
            if digits >= 13 && luhn_valid(&b[groups[first].0..ge]) {
                best = Some(last);
            }
        }
        match best {
            Some(last) => {
                out.push(Span {
                    start: groups[first].0,
                    end: groups[last].1,
                    mode,
                });
                first = last + 1;
            }
            None => first += 1,
        }
    }
}

/// The Luhn check over the ASCII digits of `text` (other bytes are skipped).
fn luhn_valid(text: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut count = 0usize;
    for &c in text.iter().rev().filter(|c| c.is_ascii_digit()) {
        let mut d = u32::from(c - b'0');
        if count % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        count += 1;
    }
    count > 0 && sum.is_multiple_of(10)
}

/// The end of a valid IBAN starting at `start`, trying the whole regex match and then
/// shorter prefixes ending at a group boundary (the regex may swallow a following word).
fn iban_end(b: &[u8], start: usize, end: usize) -> Option<usize> {
    if start > 0 && b.get(start - 1).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    let mut candidate_end = end;
    loop {
        let compact: Vec<u8> = b[start..candidate_end]
            .iter()
            .copied()
            .filter(|c| *c != b' ')
            .collect();
        let bounded = !b.get(candidate_end).is_some_and(u8::is_ascii_alphanumeric);
        if bounded && (15..=34).contains(&compact.len()) && iban_valid(&compact) {
            return Some(candidate_end);
        }
        // Cut back to the previous space.
        candidate_end = start + b[start..candidate_end].iter().rposition(|c| *c == b' ')?;
    }
}

/// ISO 13616 check: move the first four characters to the end, letters become 10..35, the
/// number mod 97 must be 1.
fn iban_valid(compact: &[u8]) -> bool {
    if compact.len() < 5 || !compact.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let mut rest = 0u32;
    for &c in compact[4..].iter().chain(&compact[..4]) {
        let c = c.to_ascii_uppercase();
        if c.is_ascii_digit() {
            rest = (rest * 10 + u32::from(c - b'0')) % 97;
        } else {
            rest = (rest * 100 + u32::from(c - b'A') + 10) % 97;
        }
    }
    rest == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FieldRule, PatternRule, PointerRule};
    use proptest::prelude::*;
    use serde_json::json;

    const KEY: &[u8] = b"test-token-key";

    fn redactor(config: &RedactionConfig) -> Redactor {
        match Redactor::new(config, KEY) {
            Ok(r) => r,
            Err(e) => panic!("config should compile: {e}"),
        }
    }

    fn preset(preset: RedactionPreset) -> Redactor {
        redactor(&RedactionConfig {
            preset,
            ..RedactionConfig::default()
        })
    }

    fn run(r: &Redactor, event: Value) -> (Value, Vec<String>) {
        let Value::Object(mut map) = event else {
            panic!("test events are objects")
        };
        let changed = r.redact(&mut map);
        (Value::Object(map), changed)
    }

    /// Compiled once: regex compilation is slow in debug builds and the properties run
    /// hundreds of cases.
    static HEALTHCARE: std::sync::LazyLock<Redactor> =
        std::sync::LazyLock::new(|| preset(RedactionPreset::Healthcare));
    static ALL_PATTERNS: std::sync::LazyLock<Redactor> = std::sync::LazyLock::new(all_patterns);

    fn tok(text: &str) -> String {
        HEALTHCARE.token(text)
    }

    #[test]
    fn masking_turns_every_rule_into_a_mask_and_needs_no_key() {
        let Ok(masking) = Redactor::masking(&RedactionConfig::default()) else {
            panic!("the healthcare preset compiles without a key when masking")
        };
        let (out, changed) = run(
            &masking,
            json!({"action": "a", "details": {"ssn": "123-45-6789", "note": "card 4111111111111111",
                   "password": "hunter2", "diagnosis": "flu"}}),
        );
        assert_eq!(
            out["details"],
            json!({"ssn": MASK, "note": format!("card {MASK}"), "password": MASK, "diagnosis": MASK})
        );
        assert_eq!(changed.len(), 4);
        // The same preset with a key tokenizes the identity numbers instead.
        let (tokenized, _) = run(&HEALTHCARE, json!({"details": {"ssn": "123-45-6789"}}));
        assert!(tokenized["details"]["ssn"].as_str().is_some_and(is_token));
        // A value the client already masked stays masked under the server's tokenize rule.
        let (kept, changed) = run(&HEALTHCARE, out);
        assert_eq!(kept["details"]["ssn"], MASK);
        assert!(changed.is_empty());
    }

    // ---- check-digit algorithms -------------------------------------------------------------

    #[test]
    fn luhn() {
        for valid in [
            "4111111111111111",
            "79927398713",
            "5555 5555 5555 4444",
            "378282246310005",
        ] {
            assert!(luhn_valid(valid.as_bytes()), "{valid}");
        }
        for invalid in ["4111111111111112", "79927398710", "1234567812345678", ""] {
            assert!(!luhn_valid(invalid.as_bytes()), "{invalid}");
        }
    }

    #[test]
    fn cpf_check_digits() {
        let cpf = |s: &str| {
            let mut d = [0u8; 11];
            d.copy_from_slice(s.as_bytes());
            cpf_valid(&d)
        };
        assert!(cpf("52998224725"));
        assert!(cpf("11144477735"));
        assert!(cpf("12345678909"));
        assert!(!cpf("12345678900"));
        assert!(!cpf("52998224726"));
        assert!(
            !cpf("11111111111"),
            "repeated digits pass the arithmetic but are invalid"
        );
        assert!(!cpf("00000000000"));
    }

    #[test]
    fn iban_mod_97() {
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(iban_valid(b"DE89370400440532013000"));
        assert!(iban_valid(b"BR1800360305000010009795493C1"));
        assert!(!iban_valid(b"GB82WEST12345698765433"));
        assert!(!iban_valid(b"GB82 WEST"));
        assert!(!iban_valid(b"GB8"));
    }

    #[test]
    fn ssn_validity_rules() {
        let ssn = |s: &str| ssn_at(s.as_bytes(), 0);
        assert!(ssn("123-45-6789"));
        assert!(ssn("899-01-0001"));
        for invalid in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(!ssn(invalid), "{invalid}");
        }
        assert!(!ssn("123-45-67890"), "followed by a digit");
        assert!(!ssn("123-456-789"));
    }

    #[test]
    fn token_is_hmac_sha256_prefix() {
        // RFC 4231 test case 1: key 0x0b × 20, data "Hi There".
        let r = match Redactor::new(&RedactionConfig::default(), &[0x0b; 20]) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(r.token("Hi There"), "tok:b0344c61d8db3853");
        assert!(is_token(&r.token("x")));
        assert!(!is_token("tok:B0344C61D8DB3853"));
        assert!(!is_token("tok:b0344c61d8db385"));
    }

    // ---- field-name rules ---------------------------------------------------------------------

    #[test]
    fn healthcare_fields_mask_credentials_and_tokenize_identity_numbers() {
        let r = preset(RedactionPreset::Healthcare);
        let (event, changed) = run(
            &r,
            json!({
                "action": "a.b",
                "details": {
                    "password": "hunter2", "API_KEY": "k", "access-token": "t",
                    "ssn": "123-45-6789", "CPF": "529.982.247-25", "diagnosis": "flu",
                    "dateOfBirth": "1990-01-01", "note": "fine"
                }
            }),
        );
        let d = &event["details"];
        assert_eq!(d["password"], MASK);
        assert_eq!(d["API_KEY"], MASK);
        assert_eq!(d["access-token"], MASK);
        assert_eq!(d["diagnosis"], MASK);
        assert_eq!(d["dateOfBirth"], MASK);
        assert_eq!(d["ssn"], tok("123-45-6789"));
        assert_eq!(d["CPF"], tok("529.982.247-25"));
        assert_eq!(d["note"], "fine");
        assert_eq!(
            changed,
            vec![
                "/details/API_KEY",
                "/details/CPF",
                "/details/access-token",
                "/details/dateOfBirth",
                "/details/diagnosis",
                "/details/password",
                "/details/ssn",
            ]
        );
    }

    #[test]
    fn field_rules_reach_changes_nested_arrays_and_custom_fields() {
        let r = preset(RedactionPreset::Auth);
        let (event, changed) = run(
            &r,
            json!({
                "action": "a.b",
                "changes": {
                    "changedFields": ["password"],
                    "oldValues": {"password": "old"},
                    "newValues": {"password": "new"}
                },
                "details": {"users": [{"name": "a"}, {"secret": "s", "inner": [[{"otp": 1}]]}]},
                "password": "top-level custom",
                "custom": {"token": "t"}
            }),
        );
        assert_eq!(event["changes"]["changedFields"], json!(["password"]));
        assert_eq!(event["changes"]["oldValues"]["password"], MASK);
        assert_eq!(event["details"]["users"][1]["secret"], MASK);
        assert_eq!(event["details"]["users"][1]["inner"][0][0]["otp"], MASK);
        assert_eq!(event["password"], MASK);
        assert_eq!(
            changed,
            vec![
                "/changes/newValues/password",
                "/changes/oldValues/password",
                "/custom/token",
                "/details/users/1/inner/0/0/otp",
                "/details/users/1/secret",
                "/password",
            ]
        );
    }

    #[test]
    fn field_rules_do_not_touch_typed_fields() {
        let r = preset(RedactionPreset::Healthcare);
        let event = json!({
            "action": "a.b",
            "principalId": "123-45-6789",
            "healthcareContext": {"diagnosisCode": "J45", "diagnosis": "asthma"},
            "sessionContext": {"token": "abc"},
            "token": "custom"
        });
        let (out, changed) = run(&r, event.clone());
        assert_eq!(out["healthcareContext"], event["healthcareContext"]);
        assert_eq!(out["sessionContext"], event["sessionContext"]);
        assert_eq!(out["principalId"], event["principalId"]);
        assert_eq!(changed, vec!["/token"]);
    }

    #[test]
    fn non_string_values_are_replaced_whole() {
        let r = redactor(&RedactionConfig {
            preset: RedactionPreset::Auth,
            extra_fields: vec![FieldRule {
                name: "cardData".into(),
                mode: RedactionMode::Tokenize,
            }],
            ..RedactionConfig::default()
        });
        let (event, changed) = run(
            &r,
            json!({"details": {
                "password": 1234, "secret": {"a": [1, 2]}, "token": null, "pin": false,
                "cardData": {"b": 1, "a": "x"}, "card_data": [1.5, "y"]
            }}),
        );
        let d = &event["details"];
        for name in ["password", "secret", "token", "pin"] {
            assert_eq!(d[name], MASK, "{name}");
        }
        // Tokens of non-strings are tokens of their RFC 8785 text (member order normalized).
        assert_eq!(d["cardData"], tok(r#"{"a":"x","b":1}"#));
        assert_eq!(d["card_data"], tok(r#"[1.5,"y"]"#));
        assert_eq!(changed.len(), 6);
    }

    #[test]
    fn pointers_escape_slash_and_tilde_in_keys() {
        let r = preset(RedactionPreset::Auth);
        let (_, changed) = run(
            &r,
            json!({"details": {"a/b": {"password": "x"}, "m~n": [{"token": "y"}]}}),
        );
        assert_eq!(
            changed,
            vec!["/details/a~1b/password", "/details/m~0n/0/token"]
        );
    }

    #[test]
    fn extra_field_rules_override_the_preset_mode() {
        let r = redactor(&RedactionConfig {
            preset: RedactionPreset::Healthcare,
            extra_fields: vec![
                FieldRule {
                    name: "ssn".into(),
                    mode: RedactionMode::Mask,
                },
                FieldRule {
                    name: "insurance_plan".into(),
                    mode: RedactionMode::Tokenize,
                },
            ],
            ..RedactionConfig::default()
        });
        let (event, _) = run(
            &r,
            json!({"details": {"ssn": "123-45-6789", "insurancePlan": "gold"}}),
        );
        assert_eq!(event["details"]["ssn"], MASK);
        assert_eq!(event["details"]["insurancePlan"], tok("gold"));
    }

    #[test]
    fn presets_differ() {
        let event = json!({"details": {
            "password": "p", "ssn": "s", "cvc": "123", "accountNumber": "42",
            "text": "card 4111 1111 1111 1111, ssn 123-45-6789, iban DE89 3704 0044 0532 0130 00, cpf 529.982.247-25"
        }});
        let text_of = |r: &Redactor| run(r, event.clone()).0["details"].clone();

        let h = text_of(&preset(RedactionPreset::Healthcare));
        assert_eq!(h["password"], MASK);
        assert_eq!(h["ssn"], tok("s"));
        assert_eq!(h["cvc"], "123");
        assert_eq!(h["accountNumber"], "42");
        assert_eq!(
            h["text"],
            format!(
                "card {}, ssn {}, iban DE89 3704 0044 0532 0130 00, cpf {}",
                tok("4111 1111 1111 1111"),
                tok("123-45-6789"),
                tok("529.982.247-25")
            )
        );

        let f = text_of(&preset(RedactionPreset::Financial));
        assert_eq!(f["password"], MASK);
        assert_eq!(f["ssn"], "s");
        assert_eq!(f["cvc"], MASK);
        assert_eq!(f["accountNumber"], tok("42"));
        assert_eq!(
            f["text"],
            format!(
                "card {}, ssn {}, iban {}, cpf 529.982.247-25",
                tok("4111 1111 1111 1111"),
                tok("123-45-6789"),
                tok("DE89 3704 0044 0532 0130 00")
            )
        );

        let a = text_of(&preset(RedactionPreset::Auth));
        assert_eq!(a["password"], MASK);
        assert_eq!(a["ssn"], "s");
        assert_eq!(a["text"], event["details"]["text"]);

        let (none, changed) = run(&preset(RedactionPreset::None), event.clone());
        assert_eq!(none, event);
        assert!(changed.is_empty());
    }

    // ---- pattern rules --------------------------------------------------------------------------

    #[test]
    fn patterns_scan_free_text_fields_only() {
        let r = preset(RedactionPreset::Healthcare);
        let ssn = "123-45-6789";
        let (event, changed) = run(
            &r,
            json!({
                "outcomeDescription": format!("looked up {ssn}"),
                "healthcareContext": {"clinicalJustification": format!("SSN {ssn}"),
                                      "patientId": ssn, "procedureCode": ssn},
                "principalId": ssn, "targetResourceId": ssn, "organizationId": ssn,
                "correlationId": ssn,
                "sessionContext": {"sessionId": ssn, "deviceId": ssn, "userAgent": ssn},
                "gdprContext": {"dataSubjectId": ssn},
                "technicalContext": {"requestId": ssn, "endpoint": ssn},
                "details": {"n": [format!("x{ssn}y")], "num": 123_456_789},
                "extra": ssn
            }),
        );
        let t = tok(ssn);
        assert_eq!(event["outcomeDescription"], format!("looked up {t}"));
        assert_eq!(
            event["healthcareContext"]["clinicalJustification"],
            format!("SSN {t}")
        );
        assert_eq!(event["details"]["n"][0], format!("x{t}y"));
        assert_eq!(event["extra"], t);
        for p in [
            "/healthcareContext/patientId",
            "/healthcareContext/procedureCode",
            "/principalId",
            "/targetResourceId",
            "/organizationId",
            "/correlationId",
            "/sessionContext/sessionId",
            "/sessionContext/deviceId",
            "/sessionContext/userAgent",
            "/gdprContext/dataSubjectId",
            "/technicalContext/requestId",
            "/technicalContext/endpoint",
        ] {
            assert_eq!(event.pointer(p), Some(&json!(ssn)), "{p}");
        }
        assert_eq!(event["details"]["num"], 123_456_789);
        assert_eq!(
            changed,
            vec![
                "/details/n/0",
                "/extra",
                "/healthcareContext/clinicalJustification",
                "/outcomeDescription"
            ]
        );
    }

    #[test]
    fn cpf_is_redacted_only_with_valid_check_digits() {
        let r = preset(RedactionPreset::Healthcare);
        let cases = [
            ("cpf 529.982.247-25.", Some("529.982.247-25")),
            ("cpf 52998224725", Some("52998224725")),
            ("n 12345678900", None),     // wrong check digits
            ("n 111.111.111-11", None),  // repeated digit
            ("n 529.982.247-250", None), // longer number
            ("n 152998224725", None),    // 12 digits
            ("n 529.982.24725", None),   // half formatted
        ];
        for (text, hit) in cases {
            let (event, _) = run(&r, json!({"details": {"t": text}}));
            let expected = match hit {
                Some(cpf) => text.replace(cpf, &tok(cpf)),
                None => text.to_owned(),
            };
            assert_eq!(event["details"]["t"], expected, "{text}");
        }
    }

    #[test]
    fn cards_need_luhn_and_whole_numbers() {
        let r = preset(RedactionPreset::Healthcare);
        let cases = [
            ("4111111111111111", Some("4111111111111111")),
            ("pay 4111-1111-1111-1111 now", Some("4111-1111-1111-1111")),
            ("amex 3782 822463 10005", Some("3782 822463 10005")),
            ("card 4111 1111 1111 1111 2030", Some("4111 1111 1111 1111")),
            ("4111111111111112", None),
            ("order 41111111111111110", None), // 17 digits, not Luhn-valid
            ("ts 1732352462000 x", None),      // 13 digits, not Luhn-valid
            ("4111  1111 1111 1111", None),    // double space splits it
            // Digit groups touching letters belong to identifiers: this UUID's
            // `6-5489-7659-8416-6` run is 14 Luhn-valid digits, and not a card.
            ("id 01a205b6-5489-7659-8416-6bb406c83d25", None),
            ("v4111111111111111", None),
            ("4111111111111111x", None),
            ("ref a1-4111-1111-1111-1111-b2", Some("4111-1111-1111-1111")),
        ];
        for (text, hit) in cases {
            let (event, _) = run(&r, json!({"details": {"t": text}}));
            let expected = match hit {
                Some(card) => text.replacen(card, &tok(card), 1),
                None => text.to_owned(),
            };
            assert_eq!(event["details"]["t"], expected, "{text}");
        }
    }

    #[test]
    fn two_cards_in_one_run_are_both_found() {
        let r = preset(RedactionPreset::Healthcare);
        let text = "4111 1111 1111 1111 5555 5555 5555 4444";
        let (event, _) = run(&r, json!({"details": {"t": text}}));
        assert_eq!(
            event["details"]["t"],
            format!(
                "{} {}",
                tok("4111 1111 1111 1111"),
                tok("5555 5555 5555 4444")
            )
        );
    }

    #[test]
    fn masked_pattern_rules_and_extra_patterns() {
        let r = redactor(&RedactionConfig {
            preset: RedactionPreset::None,
            extra_patterns: vec![
                PatternRule {
                    kind: PatternKind::Email,
                    mode: RedactionMode::Mask,
                },
                PatternRule {
                    kind: PatternKind::Phone,
                    mode: RedactionMode::Mask,
                },
                PatternRule {
                    kind: PatternKind::Mrn,
                    mode: RedactionMode::Tokenize,
                },
                PatternRule {
                    kind: PatternKind::Iban,
                    mode: RedactionMode::Mask,
                },
            ],
            ..RedactionConfig::default()
        });
        let cases = [
            (
                "mail ana.silva+x@example.com.br ok",
                "mail [REDACTED] ok".to_owned(),
            ),
            ("call +55 11 98765-4321.", "call [REDACTED].".to_owned()),
            (
                "call (555) 123-4567 or 555.123.4567",
                "call [REDACTED] or [REDACTED]".to_owned(),
            ),
            (
                "chart MRN: 00123456 seen",
                format!("chart MRN: {} seen", tok("00123456")),
            ),
            ("mrn#A-99812", format!("mrn#{}", tok("A-99812"))),
            ("MRN number unknown", "MRN number unknown".to_owned()),
            ("iban GB82WEST12345698765432", "iban [REDACTED]".to_owned()),
            (
                "GB82 WEST 1234 5698 7654 32 PAID",
                "[REDACTED] PAID".to_owned(),
            ),
            (
                "GB82WEST12345698765433",
                "GB82WEST12345698765433".to_owned(),
            ),
            (
                "no at sign here and no digits",
                "no at sign here and no digits".to_owned(),
            ),
            ("ip 192.168.100.200", "ip 192.168.100.200".to_owned()),
        ];
        for (text, expected) in cases {
            let (event, _) = run(&r, json!({"details": {"t": text}}));
            assert_eq!(event["details"]["t"], expected, "{text}");
        }
    }

    #[test]
    fn none_preset_changes_nothing() {
        let r = preset(RedactionPreset::None);
        let event = json!({"details": {"password": "x", "t": "123-45-6789"}});
        let (out, changed) = run(&r, event.clone());
        assert_eq!(out, event);
        assert!(changed.is_empty());
    }

    // ---- pointer rules and configuration ----------------------------------------------------

    #[test]
    fn pointer_rules_reach_typed_fields() {
        let r = redactor(&RedactionConfig {
            preset: RedactionPreset::Healthcare,
            pointers: vec![
                PointerRule {
                    pointer: "/healthcareContext/diagnosisCode".into(),
                    mode: RedactionMode::Mask,
                },
                PointerRule {
                    pointer: "/principalId".into(),
                    mode: RedactionMode::Tokenize,
                },
                PointerRule {
                    pointer: "/details/a~1b/1".into(),
                    mode: RedactionMode::Mask,
                },
                PointerRule {
                    pointer: "/details/missing".into(),
                    mode: RedactionMode::Mask,
                },
                PointerRule {
                    pointer: "/details/password".into(),
                    mode: RedactionMode::Tokenize,
                },
            ],
            ..RedactionConfig::default()
        });
        let (event, changed) = run(
            &r,
            json!({
                "principalId": "dr-1",
                "healthcareContext": {"diagnosisCode": "J45"},
                "details": {"a/b": ["keep", "hide"], "password": "pw"}
            }),
        );
        assert_eq!(event["healthcareContext"]["diagnosisCode"], MASK);
        assert_eq!(event["principalId"], tok("dr-1"));
        assert_eq!(event["details"]["a/b"], json!(["keep", MASK]));
        // The pointer rule wins over the field rule for the same value.
        assert_eq!(event["details"]["password"], tok("pw"));
        assert_eq!(
            changed,
            vec![
                "/details/a~1b/1",
                "/details/password",
                "/healthcareContext/diagnosisCode",
                "/principalId"
            ]
        );
        let (again, changed_again) = run(&r, event.clone());
        assert_eq!(again, event);
        assert!(changed_again.is_empty());
    }

    #[test]
    fn bad_configuration_is_rejected() {
        let with_pointer = |pointer: &str| RedactionConfig {
            pointers: vec![PointerRule {
                pointer: pointer.into(),
                mode: RedactionMode::Mask,
            }],
            ..RedactionConfig::default()
        };
        for bad in ["", "details/password", "/a~2b", "/a~"] {
            assert!(Redactor::new(&with_pointer(bad), KEY).is_err(), "{bad:?}");
        }
        assert!(Redactor::new(&with_pointer("/a~0~1/0"), KEY).is_ok());

        let with_field = |name: String| RedactionConfig {
            extra_fields: vec![FieldRule {
                name,
                mode: RedactionMode::Mask,
            }],
            ..RedactionConfig::default()
        };
        assert!(Redactor::new(&with_field("_-".into()), KEY).is_err());
        assert!(Redactor::new(&with_field("x".repeat(200)), KEY).is_err());

        // Tokenizing under an empty key is refused; masking-only configs need no key.
        assert!(Redactor::new(&RedactionConfig::default(), b"").is_err());
        let auth = RedactionConfig {
            preset: RedactionPreset::Auth,
            ..RedactionConfig::default()
        };
        assert!(Redactor::new(&auth, b"").is_ok());
    }

    #[test]
    fn debug_output_hides_the_key() {
        let text = format!("{:?}", preset(RedactionPreset::Healthcare));
        assert!(text.starts_with("Redactor"));
        assert!(!text.contains("test-token-key"));
    }

    #[test]
    fn long_and_unicode_keys_are_matched_without_panicking() {
        let r = redactor(&RedactionConfig {
            preset: RedactionPreset::Auth,
            extra_fields: vec![FieldRule {
                name: "Größe".into(),
                mode: RedactionMode::Mask,
            }],
            ..RedactionConfig::default()
        });
        let long = "p".repeat(10_000);
        let (event, changed) = run(
            &r,
            json!({"details": {"GRÖSSE": 1, "größe": 2, "İ": 3, long.clone(): "v",
                               "PASS_WORD": "x"}}),
        );
        assert_eq!(event["details"]["größe"], MASK);
        assert_eq!(event["details"][long.as_str()], "v");
        assert_eq!(changed, vec!["/details/PASS_WORD", "/details/größe"]);
    }

    // ---- idempotence ----------------------------------------------------------------------------

    #[test]
    fn redacting_twice_equals_redacting_once() {
        let r = redactor(&RedactionConfig {
            preset: RedactionPreset::Healthcare,
            extra_patterns: vec![PatternRule {
                kind: PatternKind::Email,
                mode: RedactionMode::Tokenize,
            }],
            ..RedactionConfig::default()
        });
        let event = json!({
            "outcomeDescription": "ssn 123-45-6789 card 4111111111111111 a@b.co",
            "details": {"ssn": "123-45-6789", "password": 5, "list": ["52998224725"]}
        });
        let (once, first) = run(&r, event);
        assert!(!first.is_empty());
        let (twice, second) = run(&r, once.clone());
        assert_eq!(twice, once);
        assert!(second.is_empty(), "{second:?}");
    }

    #[test]
    fn token_digits_never_feed_a_pattern() {
        let r = preset(RedactionPreset::Healthcare);
        // A token whose hex happens to be all (Luhn-valid) digits is still a token, not a card
        // number, and its digits do not join the number after it; a real SSN right after a
        // token is still found.
        let text = "tok:4111111111111111 and tok:0000000000000412-45-6789, tok:55555555555544440";
        let (event, changed) = run(&r, json!({"details": {"t": text}}));
        assert_eq!(event["details"]["t"], text);
        assert!(changed.is_empty());
        let text = "tok:1234567890123456-123-45-6789";
        let (event, _) = run(&r, json!({"details": {"t": text}}));
        assert_eq!(
            event["details"]["t"],
            format!("tok:1234567890123456-{}", tok("123-45-6789"))
        );
    }

    // ---- properties -----------------------------------------------------------------------------

    /// Independent checker: the Luhn check via the doubling table.
    fn reference_luhn(digits: &[u8]) -> bool {
        const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
        let sum: u32 = digits
            .iter()
            .rev()
            .enumerate()
            .map(|(i, d)| {
                let d = u32::from(*d);
                if i % 2 == 1 { DOUBLED[d as usize] } else { d }
            })
            .sum();
        !digits.is_empty() && sum.is_multiple_of(10)
    }

    /// Independent checker: CPF check digits via (sum × 10 mod 11) mod 10.
    fn reference_cpf(d: &[u8]) -> bool {
        if d.len() != 11 || d.iter().all(|x| *x == d[0]) {
            return false;
        }
        let dv = |n: usize| {
            let s: u32 = (0..n)
                .map(|i| u32::from(d[i]) * (n as u32 + 1 - i as u32))
                .sum();
            (s * 10 % 11) % 10
        };
        dv(9) == u32::from(d[9]) && dv(10) == u32::from(d[10])
    }

    /// Every sensitive number left in `text` (outside tokens), found by brute force over all
    /// substrings that start and end with a digit and are not adjacent to another digit.
    fn leaked(text: &str) -> Vec<String> {
        let hidden = hide_tokens(text);
        let b = hidden.as_bytes();
        let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
        let mut found = Vec::new();
        let mut digits: Vec<u8> = Vec::new();
        for start in 0..b.len() {
            if !digit(start) || (start > 0 && digit(start - 1)) {
                continue;
            }
            digits.clear();
            let mut card_shaped = true;
            let mut previous_was_separator = false;
            for end in start + 1..=b.len().min(start + 40) {
                let c = b[end - 1];
                if c.is_ascii_digit() {
                    digits.push(c - b'0');
                    previous_was_separator = false;
                } else {
                    card_shaped &= (c == b' ' || c == b'-') && !previous_was_separator;
                    previous_was_separator = true;
                }
                if !card_shaped && end - start > 14 {
                    break;
                }
                if digit(end) || !c.is_ascii_digit() {
                    continue;
                }
                let s = &b[start..end];
                let show = || String::from_utf8_lossy(s).into_owned();
                let letter = |i: usize| b.get(i).is_some_and(u8::is_ascii_alphabetic);
                let in_identifier = (start > 0 && letter(start - 1)) || letter(end);
                if card_shaped
                    && !in_identifier
                    && (13..=19).contains(&digits.len())
                    && reference_luhn(&digits)
                {
                    found.push(format!("card {}", show()));
                }
                let ssn_shaped = s.len() == 11
                    && s.iter().enumerate().all(|(i, c)| {
                        if i == 3 || i == 6 {
                            *c == b'-'
                        } else {
                            c.is_ascii_digit()
                        }
                    });
                if ssn_shaped
                    && &s[..3] != b"000"
                    && &s[..3] != b"666"
                    && s[0] != b'9'
                    && &s[4..6] != b"00"
                    && &s[7..] != b"0000"
                {
                    found.push(format!("ssn {}", show()));
                }
                let cpf_shaped = (s.len() == 11 && s.iter().all(u8::is_ascii_digit))
                    || (s.len() == 14
                        && s.iter().enumerate().all(|(i, c)| match i {
                            3 | 7 => *c == b'.',
                            11 => *c == b'-',
                            _ => c.is_ascii_digit(),
                        }));
                if cpf_shaped && reference_cpf(&digits) {
                    found.push(format!("cpf {}", show()));
                }
            }
        }
        found
    }

    fn digits_with_luhn(body: Vec<u8>) -> Vec<u8> {
        // Append the check digit that makes `body` Luhn-valid.
        (0..10)
            .map(|d| {
                let mut all = body.clone();
                all.push(d);
                all
            })
            .find(|all| reference_luhn(all))
            .unwrap_or(body)
    }

    fn card() -> impl Strategy<Value = String> {
        (proptest::collection::vec(0u8..10, 12..=18), 0usize..3).prop_map(|(body, style)| {
            let digits = digits_with_luhn(body);
            let mut out = String::new();
            for (i, d) in digits.iter().enumerate() {
                if i > 0 && i % 4 == 0 {
                    match style {
                        1 => out.push(' '),
                        2 => out.push('-'),
                        _ => {}
                    }
                }
                out.push(char::from(b'0' + d));
            }
            out
        })
    }

    fn ssn() -> impl Strategy<Value = String> {
        (1u32..900, 1u32..100, 1u32..10_000)
            .prop_filter("666 is never issued", |(a, _, _)| *a != 666)
            .prop_map(|(a, g, s)| format!("{a:03}-{g:02}-{s:04}"))
    }

    fn cpf() -> impl Strategy<Value = String> {
        (proptest::collection::vec(0u8..10, 9), any::<bool>()).prop_filter_map(
            "repeated digits",
            |(mut d, formatted)| {
                for _ in 0..2 {
                    let n = d.len();
                    let s: u32 = (0..n)
                        .map(|i| u32::from(d[i]) * (n as u32 + 1 - i as u32))
                        .sum();
                    d.push(((s * 10 % 11) % 10) as u8);
                }
                if !reference_cpf(&d) {
                    return None;
                }
                let t: String = d.iter().map(|x| char::from(b'0' + x)).collect();
                Some(if formatted {
                    format!("{}.{}.{}-{}", &t[..3], &t[3..6], &t[6..9], &t[9..])
                } else {
                    t
                })
            },
        )
    }

    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-zA-Z]{1,6}",
            2 => "[0-9]{1,20}",
            2 => card(),
            2 => ssn(),
            2 => cpf(),
            3 => prop_oneof![Just(" "), Just("-"), Just("."), Just(""), Just(", "), Just("/")]
                .prop_map(str::to_owned),
            1 => "[a-z]{1,3}@[a-z]{1,5}\\.com",
            1 => Just("tok:".to_owned()),
        ]
    }

    fn free_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(fragment(), 0..8).prop_map(|parts| parts.concat())
    }

    fn event() -> impl Strategy<Value = Value> {
        (
            proptest::collection::vec(free_text(), 12),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("note"),
                        Just("password"),
                        Just("ssn"),
                        Just("cpf"),
                        Just("comment")
                    ],
                    free_text(),
                ),
                0..4,
            ),
        )
            .prop_map(|(t, members)| {
                let details: Map<String, Value> = members
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), Value::String(v)))
                    .collect();
                json!({
                    "action": "fhir.patient.read",
                    "principalId": t[0],
                    "targetResourceId": t[1],
                    "organizationId": t[2],
                    "correlationId": t[3],
                    "outcomeDescription": t[4],
                    "sessionContext": {"sessionId": t[5], "deviceId": t[6]},
                    "healthcareContext": {"patientId": t[7], "clinicalJustification": t[8]},
                    "gdprContext": {"dataSubjectId": t[9]},
                    "technicalContext": {"requestId": t[10]},
                    "details": {"free": details, "list": [t[11], [t[4]]]},
                    "changes": {"oldValues": {"text": t[8]}, "newValues": {"text": t[5]}},
                    "customNote": t[9]
                })
            })
    }

    const IDENTIFIER_POINTERS: &[&str] = &[
        "/principalId",
        "/targetResourceId",
        "/organizationId",
        "/correlationId",
        "/sessionContext/sessionId",
        "/sessionContext/deviceId",
        "/healthcareContext/patientId",
        "/gdprContext/dataSubjectId",
        "/technicalContext/requestId",
    ];

    fn scanned_strings(event: &Value) -> Vec<String> {
        fn collect(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::String(s) => out.push(s.clone()),
                Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
                Value::Object(m) => m.values().for_each(|i| collect(i, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        for p in [
            "/outcomeDescription",
            "/healthcareContext/clinicalJustification",
            "/details",
            "/changes",
            "/customNote",
        ] {
            if let Some(v) = event.pointer(p) {
                collect(v, &mut out);
            }
        }
        out
    }

    fn all_patterns() -> Redactor {
        let pattern = |kind, mode| PatternRule { kind, mode };
        redactor(&RedactionConfig {
            preset: RedactionPreset::Healthcare,
            extra_patterns: vec![
                pattern(PatternKind::Email, RedactionMode::Tokenize),
                pattern(PatternKind::Phone, RedactionMode::Mask),
                pattern(PatternKind::Mrn, RedactionMode::Tokenize),
                pattern(PatternKind::Iban, RedactionMode::Tokenize),
                pattern(PatternKind::Cpf, RedactionMode::Mask),
            ],
            pointers: vec![PointerRule {
                pointer: "/details/list/0".into(),
                mode: RedactionMode::Tokenize,
            }],
            ..RedactionConfig::default()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn redaction_is_idempotent(event in event()) {
            for r in [&*HEALTHCARE, &*ALL_PATTERNS] {
                let (once, _) = run(r, event.clone());
                let (twice, second) = run(r, once.clone());
                prop_assert_eq!(&twice, &once);
                prop_assert!(second.is_empty(), "second pass changed {:?}", second);
            }
        }

        #[test]
        fn identifier_fields_are_never_changed(event in event()) {
            for r in [&*HEALTHCARE, &*ALL_PATTERNS] {
                let (out, changed) = run(r, event.clone());
                for p in IDENTIFIER_POINTERS {
                    prop_assert_eq!(out.pointer(p), event.pointer(p), "{}", p);
                    prop_assert!(!changed.iter().any(|c| c == p));
                }
            }
        }

        #[test]
        fn healthcare_leaves_no_card_ssn_or_cpf_in_free_text(event in event()) {
            let (out, changed) = run(&HEALTHCARE, event);
            for text in scanned_strings(&out) {
                let leaks = leaked(&text);
                prop_assert!(leaks.is_empty(), "{:?} left in {:?}", leaks, text);
            }
            let mut sorted = changed.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted, changed);
        }

        #[test]
        fn generated_fragments_are_detected(text in prop_oneof![card(), ssn(), cpf()]) {
            // Guards the generators and the checker: each fragment alone is a leak before
            // redaction and is gone after it.
            prop_assert!(!leaked(&text).is_empty());
            let (out, _) = run(&HEALTHCARE, json!({"details": {"t": text}}));
            let after = out["details"]["t"].as_str().unwrap_or_default().to_owned();
            prop_assert!(is_token(&after), "{}", after);
        }
    }
}
