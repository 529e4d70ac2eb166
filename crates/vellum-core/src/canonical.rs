//! RFC 8785 (JSON Canonicalization Scheme) serialization: the exact bytes Vellum hashes, signs
//! and stores.
//!
//! Written by hand rather than through a generic serde serializer because it runs for every
//! event on the ingest path and because the pipeline canonicalizes an event's top-level members
//! ahead of sequencing ([`CanonicalMembers`]) and splices the server fields in afterwards. The
//! `serde_json_canonicalizer` crate serves as the test oracle.
//!
//! Rules (RFC 8785 §3.2): no insignificant whitespace; object members sorted by the UTF-16 code
//! units of their names; strings escaped as ECMAScript `JSON.stringify` does (only `"`, `\` and
//! C0 controls, with `\b \t \n \f \r` short forms and lowercase `\u00xx` otherwise); numbers
//! printed as ECMAScript `Number.prototype.toString` does for IEEE-754 doubles.

use serde_json::{Map, Value};
use std::cmp::Ordering;

/// Largest integer magnitude that an IEEE-754 double holds exactly (2^53). Integers beyond it
/// cannot pass through RFC 8785 unchanged, so validation refuses them.
pub const MAX_SAFE_INTEGER: u64 = 1 << 53;

/// Compares two member names in RFC 8785 order: by UTF-16 code units.
///
/// Computed on the UTF-8 bytes without re-encoding: UTF-8 byte order is code point order, and
/// code point order differs from UTF-16 order only between a supplementary character (4-byte
/// UTF-8, a surrogate pair `D800..DFFF` in UTF-16) and a character in `U+E000..U+FFFF` (3-byte
/// UTF-8 led by `EE` or `EF`), where UTF-16 puts the surrogate first. Equal prefixes end on the
/// same character boundary in both strings, so the first differing bytes are either two lead
/// bytes (where that exception is checked) or two continuation bytes of characters of the same
/// length (where byte order is right). Member names are compared on every event (to order the
/// members and to splice the server fields in), so this avoids scanning each name for ASCII
/// first.
pub fn cmp_member_names(a: &str, b: &str) -> Ordering {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    match x.iter().zip(y).position(|(p, q)| p != q) {
        None => x.len().cmp(&y.len()),
        Some(i) => {
            let (p, q) = (x[i], y[i]);
            let supplementary = |b: u8| b >= 0xF0;
            let high_bmp = |b: u8| b == 0xEE || b == 0xEF;
            if supplementary(p) && high_bmp(q) {
                Ordering::Less
            } else if high_bmp(p) && supplementary(q) {
                Ordering::Greater
            } else {
                p.cmp(&q)
            }
        }
    }
}

/// Serializes `value` in canonical form.
pub fn to_canonical_string(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value);
    out
}

/// Appends the canonical form of `value` to `out`.
pub fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    // serde_json's default map is a BTreeMap ordered by bytes, which is already RFC 8785 order
    // for ASCII names; sort only when the order is not already right (non-ASCII names, or a
    // map that preserves insertion order because some crate enabled `preserve_order`). The
    // check walks the keys in place, so the common case collects nothing.
    let sorted = map
        .keys()
        .zip(map.keys().skip(1))
        .all(|(a, b)| cmp_member_names(a, b) != Ordering::Greater);
    out.push('{');
    if sorted {
        write_members(out, map.iter());
    } else {
        let mut members: Vec<(&String, &Value)> = map.iter().collect();
        members.sort_by(|a, b| cmp_member_names(a.0, b.0));
        write_members(out, members.into_iter());
    }
    out.push('}');
}

fn write_members<'a>(out: &mut String, members: impl Iterator<Item = (&'a String, &'a Value)>) {
    for (i, (key, value)) in members.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value);
    }
}

/// Whether a byte must be escaped inside a JSON string (`"`, `\\`, C0 controls).
#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any byte of `bytes` must be escaped. Checks 16 bytes at a time without an early exit
/// inside a block, which the compiler turns into SIMD compares; a byte-at-a-time `any` is a
/// branch per byte and was the single largest cost of canonicalizing an event.
#[inline]
fn any_needs_escape(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        if block.iter().fold(false, |acc, &b| acc | needs_escape(b)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&b| needs_escape(b))
}

/// Appends a string literal escaped as RFC 8785 §3.2.2.2 requires.
pub fn write_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    // Fast path: most audit strings need no escaping at all.
    if !any_needs_escape(bytes) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            0x08 => Some("\\b"),
            0x09 => Some("\\t"),
            0x0A => Some("\\n"),
            0x0C => Some("\\f"),
            0x0D => Some("\\r"),
            _ => None,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(text) => out.push_str(text),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0F)]));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn write_number(out: &mut String, n: &serde_json::Number) {
    if let Some(u) = n.as_u64() {
        if u <= MAX_SAFE_INTEGER {
            out.push_str(itoa::Buffer::new().format(u));
            return;
        }
    } else if let Some(i) = n.as_i64()
        && i.unsigned_abs() <= MAX_SAFE_INTEGER
    {
        out.push_str(itoa::Buffer::new().format(i));
        return;
    }
    // Everything else is formatted as the double it denotes (ECMAScript Number::toString).
    // serde_json never holds a non-finite number, so `as_f64` of a Number is finite.
    let f = n.as_f64().unwrap_or(0.0);
    if f == 0.0 {
        out.push('0'); // both +0 and -0 print as "0"
    } else {
        out.push_str(ryu_js::Buffer::new().format_finite(f));
    }
}

/// An event's top-level members, each already in canonical `"name":value` form and ordered
/// by name as RFC 8785 requires.
///
/// The ingest pipeline builds this before an event is sequenced (in parallel across request
/// tasks), then the single writer adds the server fields (`id`, `seq`, `prevHash`, …) with
/// [`CanonicalMembers::join_with`] at the cost of a memory copy, keeping the serial part of
/// ingest short.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanonicalMembers {
    /// Every member's `"name":value` text, back to back (one allocation for the event).
    text: String,
    /// Every member's unescaped name, back to back (one allocation rather than one per
    /// member: names are only needed to order the members and to look them up).
    names: String,
    /// Each member's name range in `names` and text range in `text`, in RFC 8785 order.
    members: Vec<MemberRanges>,
}

/// Where one member's name and canonical text live inside a [`CanonicalMembers`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct MemberRanges {
    name: std::ops::Range<usize>,
    text: std::ops::Range<usize>,
}

/// Builds a [`CanonicalMembers`] member by member; [`MembersBuilder::finish`] puts them in
/// RFC 8785 order. Lets the pipeline add members it computes itself (server defaults,
/// `redactions`) as canonical text directly, without first inserting them into the event's
/// map as `serde_json` values.
#[derive(Debug)]
pub(crate) struct MembersBuilder {
    members: CanonicalMembers,
    /// Whether the members pushed so far are already in RFC 8785 order.
    sorted: bool,
}

impl MembersBuilder {
    /// An empty builder with room for `members` members of about `text` bytes in all.
    pub(crate) fn with_capacity(text: usize, members: usize) -> Self {
        Self {
            members: CanonicalMembers {
                text: String::with_capacity(text),
                names: String::with_capacity(members * 16),
                members: Vec::with_capacity(members),
            },
            sorted: true,
        }
    }

    /// Adds every member of `map`. The names must not have been pushed already.
    pub(crate) fn push_map(&mut self, map: &Map<String, Value>) {
        for (k, v) in map {
            self.push_with(k, |text| write_value(text, v));
        }
    }

    /// Adds a member whose value is the string `value`. `name` must not have been pushed.
    pub(crate) fn push_str_value(&mut self, name: &str, value: &str) {
        self.push_with(name, |text| write_string(text, value));
    }

    /// Adds a member whose value is an array of strings. `name` must not have been pushed.
    pub(crate) fn push_str_array(&mut self, name: &str, values: &[String]) {
        self.push_with(name, |text| {
            text.push('[');
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                write_string(text, value);
            }
            text.push(']');
        });
    }

    /// Adds member `name`, whose canonical value `write_value` appends to the text.
    fn push_with(&mut self, name: &str, write_value: impl FnOnce(&mut String)) {
        let m = &mut self.members;
        let start = m.text.len();
        write_string(&mut m.text, name);
        m.text.push(':');
        write_value(&mut m.text);
        let name_start = m.names.len();
        m.names.push_str(name);
        if let Some(last) = m.members.last()
            && cmp_member_names(&m.names[last.name.clone()], name) != Ordering::Less
        {
            self.sorted = false;
        }
        m.members.push(MemberRanges {
            name: name_start..m.names.len(),
            text: start..m.text.len(),
        });
    }

    /// The members in RFC 8785 order.
    pub(crate) fn finish(self) -> CanonicalMembers {
        let mut members = self.members;
        if !self.sorted {
            let names = &members.names;
            members
                .members
                .sort_by(|a, b| cmp_member_names(&names[a.name.clone()], &names[b.name.clone()]));
        }
        members
    }
}

/// The top-level object of [`CanonicalMembers::from_canonical_object`]: each member's value
/// re-canonicalized straight into the members' text.
struct TopLevel;

impl<'de> serde::de::Visitor<'de> for TopLevel {
    type Value = CanonicalMembers;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut builder = MembersBuilder::with_capacity(1024, 32);
        while let Some(name) = map.next_key_seed(MemberName)? {
            let m = &mut builder.members;
            if let Some(last) = m.members.last()
                && cmp_member_names(&m.names[last.name.clone()], &name) != Ordering::Less
            {
                return Err(serde::de::Error::custom(format!(
                    "member {name:?} is out of RFC 8785 order or repeated"
                )));
            }
            let start = m.text.len();
            write_string(&mut m.text, &name);
            m.text.push(':');
            map.next_value_seed(Rewrite { out: &mut m.text })?;
            let name_start = m.names.len();
            m.names.push_str(&name);
            m.members.push(MemberRanges {
                name: name_start..m.names.len(),
                text: start..m.text.len(),
            });
        }
        Ok(builder.finish())
    }
}

/// A member name, borrowed from the text when it has no escapes (also the detection
/// tree's, `detect::event::Node`).
pub(crate) struct MemberName;

impl<'de> serde::de::DeserializeSeed<'de> for MemberName {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for MemberName {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }
}

/// Writes the canonical form of the JSON value being read to `out`, as [`write_value`] would
/// write the `Value` serde_json makes of it (same number and string writers), except that an
/// object's members must already be in RFC 8785 order.
struct Rewrite<'a> {
    out: &'a mut String,
}

impl<'de> serde::de::DeserializeSeed<'de> for Rewrite<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Rewrite<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.push_str("null");
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }

    // Numbers go through `serde_json::Number`, exactly as `Value` holds them.
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        write_number(self.out, &serde_json::Number::from(v));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        write_number(self.out, &serde_json::Number::from(v));
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        match serde_json::Number::from_f64(v) {
            Some(n) => write_number(self.out, &n),
            None => self.out.push_str("null"),
        }
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        write_string(self.out, v);
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push('[');
        let mut first = true;
        loop {
            let mark = self.out.len();
            if !first {
                self.out.push(',');
            }
            if seq
                .next_element_seed(Rewrite {
                    out: &mut *self.out,
                })?
                .is_none()
            {
                self.out.truncate(mark);
                break;
            }
            first = false;
        }
        self.out.push(']');
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.out.push('{');
        let mut last: Option<std::borrow::Cow<'de, str>> = None;
        while let Some(name) = map.next_key_seed(MemberName)? {
            if let Some(last) = &last {
                if cmp_member_names(last, &name) != Ordering::Less {
                    return Err(serde::de::Error::custom(format!(
                        "member {name:?} is out of RFC 8785 order or repeated"
                    )));
                }
                self.out.push(',');
            }
            write_string(self.out, &name);
            self.out.push(':');
            map.next_value_seed(Rewrite {
                out: &mut *self.out,
            })?;
            last = Some(name);
        }
        self.out.push('}');
        Ok(())
    }
}

/// Why text handed to [`CanonicalMembers::from_canonical_object`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a canonical JSON object: {0}")]
pub struct NotCanonical(pub String);

impl CanonicalMembers {
    /// The members as one canonical JSON object (RFC 8785 text): how a prepared event
    /// crosses the scale-out queue from the API node that validated it to the worker that
    /// sequences it.
    pub fn to_canonical_object(&self) -> String {
        self.join_with_str(&mut [])
    }

    /// Rebuilds members from [`CanonicalMembers::to_canonical_object`] text. The text must
    /// already be canonical (re-canonicalizing it must give the same bytes): a worker hashes
    /// exactly what the API node prepared, or refuses the message.
    ///
    /// The text is re-canonicalized as serde_json reads it ([`Rewrite`]), with the same
    /// writers as [`write_value`] and no `Value` tree in between: building the tree was
    /// most of the worker's cost per event after hashing. Members must come strictly in
    /// RFC 8785 order; a `Value` would have sorted them (or kept the last of two equal names)
    /// and so changed the text, which is refused all the same.
    pub fn from_canonical_object(text: &str) -> Result<Self, NotCanonical> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let members = serde::Deserializer::deserialize_any(&mut deserializer, TopLevel)
            .and_then(|members| deserializer.end().map(|()| members))
            .map_err(|e| {
                if e.is_data() {
                    NotCanonical(e.to_string())
                } else {
                    NotCanonical(format!("malformed JSON: {e}"))
                }
            })?;
        if members.to_canonical_object() != text {
            return Err(NotCanonical(
                "re-canonicalizing changed the text (whitespace, escapes or number forms)".into(),
            ));
        }
        Ok(members)
    }

    /// Canonicalizes every member of `map`.
    pub fn from_map(map: &Map<String, Value>) -> Self {
        let mut builder = MembersBuilder::with_capacity(1024, map.len());
        builder.push_map(map);
        builder.finish()
    }

    /// The unescaped name of a member.
    fn name(&self, member: &MemberRanges) -> &str {
        &self.names[member.name.clone()]
    }

    /// Total length of the members' text (without braces and commas).
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Whether a member with this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.members
            .binary_search_by(|m| cmp_member_names(self.name(m), name))
            .is_ok()
    }

    /// The canonical object made of these members plus `extra` members (`(name, canonical
    /// value text)`). `extra` names must not already be present; they need not be sorted.
    pub fn join_with(&self, extra: &mut [(&str, String)]) -> String {
        let mut borrowed: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.join_with_str(&mut borrowed)
    }

    /// [`CanonicalMembers::join_with`] for borrowed value texts, so the writer can build all
    /// of an event's server fields in one buffer.
    pub(crate) fn join_with_str(&self, extra: &mut [(&str, &str)]) -> String {
        if !extra.is_sorted_by(|a, b| cmp_member_names(a.0, b.0) != Ordering::Greater) {
            extra.sort_by(|a, b| cmp_member_names(a.0, b.0));
        }
        let extra_len: usize = extra.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        let mut out = String::with_capacity(self.text_len() + self.members.len() + extra_len + 2);
        out.push('{');
        let mut first = true;
        let mut push = |out: &mut String, text: &str| {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(text);
        };
        let mut extra_iter = extra.iter().peekable();
        for member in &self.members {
            let name = self.name(member);
            let text = &self.text[member.text.clone()];
            while let Some((extra_name, extra_value)) = extra_iter.peek() {
                if cmp_member_names(extra_name, name) == Ordering::Less {
                    push(&mut out, "");
                    write_string(&mut out, extra_name);
                    out.push(':');
                    out.push_str(extra_value);
                    extra_iter.next();
                } else {
                    break;
                }
            }
            push(&mut out, text);
        }
        for (extra_name, extra_value) in extra_iter {
            push(&mut out, "");
            write_string(&mut out, extra_name);
            out.push(':');
            out.push_str(extra_value);
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_object_round_trips_and_refuses_non_canonical_text() {
        let map = match serde_json::json!({"b": [1.5, "x\u{1}"], "a": {"z": 1, "y": 1e21}, "\u{e9}": null})
        {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let members = CanonicalMembers::from_map(&map);
        let text = members.to_canonical_object();
        let back = CanonicalMembers::from_canonical_object(&text).expect("canonical");
        assert_eq!(back, members);
        assert!(CanonicalMembers::from_canonical_object(r#"{"b":1,"a":2}"#).is_err());
        assert!(CanonicalMembers::from_canonical_object(r#"{"a":1,"a":2}"#).is_err());
        assert!(CanonicalMembers::from_canonical_object(r#"{"a":1.0}"#).is_err());
        assert!(CanonicalMembers::from_canonical_object("[1]").is_err());
        assert!(CanonicalMembers::from_canonical_object("{").is_err());
    }

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn canon(text: &str) -> String {
        let value: Value = serde_json::from_str(text).expect("test JSON parses");
        to_canonical_string(&value)
    }

    /// RFC 8785 §3.2.2.3, the "sorting of object properties" example.
    #[test]
    fn rfc8785_sorting_example() {
        let input = r#"{
            "\u20ac": "Euro Sign",
            "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\ud83d\ude00": "Emoji: Grinning Face",
            "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canon(input), expected);
    }

    /// RFC 8785 §3.2.2 main example (numbers, literals, string escapes).
    #[test]
    fn rfc8785_main_example() {
        let input = r#"{
            "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        let expected = r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#;
        assert_eq!(canon(input), expected);
    }

    /// RFC 8785 Appendix B number samples (IEEE-754 → ECMAScript text).
    #[test]
    fn rfc8785_number_samples() {
        let samples: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (f64::from_bits(0x0000_0000_0000_0001), "5e-324"),
            (f64::from_bits(0x8000_0000_0000_0001), "-5e-324"),
            (
                f64::from_bits(0x7fef_ffff_ffff_ffff),
                "1.7976931348623157e+308",
            ),
            (
                f64::from_bits(0xffef_ffff_ffff_ffff),
                "-1.7976931348623157e+308",
            ),
            (f64::from_bits(0x4340_0000_0000_0000), "9007199254740992"),
            (f64::from_bits(0xc340_0000_0000_0000), "-9007199254740992"),
            (
                f64::from_bits(0x4430_0000_0000_0000),
                "295147905179352830000",
            ),
            (
                f64::from_bits(0x44b5_2d02_c7e1_4af5),
                "9.999999999999997e+22",
            ),
            (f64::from_bits(0x44b5_2d02_c7e1_4af6), "1e+23"),
            (
                f64::from_bits(0x44b5_2d02_c7e1_4af7),
                "1.0000000000000001e+23",
            ),
            (
                f64::from_bits(0x444b_1ae4_d6e2_ef4e),
                "999999999999999700000",
            ),
            (
                f64::from_bits(0x444b_1ae4_d6e2_ef4f),
                "999999999999999900000",
            ),
            (f64::from_bits(0x444b_1ae4_d6e2_ef50), "1e+21"),
            (
                f64::from_bits(0x3eb0_c6f7_a0b5_ed8c),
                "9.999999999999997e-7",
            ),
            (f64::from_bits(0x3eb0_c6f7_a0b5_ed8d), "0.000001"),
            (f64::from_bits(0x41b3_de43_5555_5553), "333333333.3333332"),
            (f64::from_bits(0x41b3_de43_5555_5554), "333333333.33333325"),
            (f64::from_bits(0x41b3_de43_5555_5555), "333333333.3333333"),
            (f64::from_bits(0x41b3_de43_5555_5556), "333333333.3333334"),
            (f64::from_bits(0x41b3_de43_5555_5557), "333333333.33333343"),
            (
                f64::from_bits(0xbecb_f647_612f_3696),
                "-0.0000033333333333333333",
            ),
            (f64::from_bits(0x4314_3ff3_c1cb_0959), "1424953923781206.2"),
        ];
        for (value, expected) in samples {
            let number = serde_json::Number::from_f64(*value).expect("finite");
            assert_eq!(
                to_canonical_string(&Value::Number(number)),
                *expected,
                "bits {:#x}",
                value.to_bits()
            );
        }
    }

    #[test]
    fn integers_beyond_2_pow_53_are_printed_as_doubles() {
        assert_eq!(canon("9007199254740993"), "9007199254740992");
        assert_eq!(canon("-12"), "-12");
        assert_eq!(canon("1.0"), "1");
    }

    #[test]
    fn members_join_with_server_fields_in_order() {
        let map = json!({"status": "success", "action": "a.b", "zeta": 1, "äh": true});
        let Value::Object(map) = map else {
            unreachable!()
        };
        let members = CanonicalMembers::from_map(&map);
        assert!(members.contains("zeta"));
        assert!(!members.contains("seq"));
        let mut extra = vec![
            ("seq", "7".to_owned()),
            ("id", "\"x\"".to_owned()),
            ("~", "0".to_owned()),
        ];
        let joined = members.join_with(&mut extra);
        let mut full = map.clone();
        full.insert("seq".into(), json!(7));
        full.insert("id".into(), json!("x"));
        full.insert("~".into(), json!(0));
        assert_eq!(joined, to_canonical_string(&Value::Object(full)));
    }

    /// What `from_canonical_object` did before it streamed: a `Value`, re-canonicalized.
    fn value_round_trip(text: &str) -> Result<CanonicalMembers, ()> {
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
            return Err(());
        };
        let members = CanonicalMembers::from_map(&map);
        if members.to_canonical_object() == text {
            Ok(members)
        } else {
            Err(())
        }
    }

    /// `value` as JSON text with every object's members in reverse order (text, because a
    /// `Value` map would sort them again).
    fn reversed_text(value: &Value) -> String {
        match value {
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(reversed_text).collect();
                format!("[{}]", items.join(","))
            }
            Value::Object(map) => {
                let members: Vec<String> = map
                    .iter()
                    .rev()
                    .map(|(k, v)| {
                        format!(
                            "{}:{}",
                            serde_json::to_string(k).expect("name"),
                            reversed_text(v)
                        )
                    })
                    .collect();
                format!("{{{}}}", members.join(","))
            }
            other => to_canonical_string(other),
        }
    }

    #[test]
    fn out_of_order_and_repeated_members_are_refused_at_any_depth() {
        for text in [
            r#"{"a":{"b":1,"a":2}}"#,
            r#"{"a":[{"x":1,"x":1}]}"#,
            r#"{"\u00e9":1,"z":2}"#,
            r#"{"a":1 }"#,
            r#"{"a":"\u001F"}"#,
            r#"{"a":1e21}"#,
            r#"{"a":-0}"#,
            r#"{"a":1}x"#,
        ] {
            assert!(
                CanonicalMembers::from_canonical_object(text).is_err(),
                "{text}"
            );
            assert!(value_round_trip(text).is_err(), "{text}");
        }
        let nested = r#"{"a":{"a":[1,{"b":null,"c":true}],"b":"\u001f\n"},"é":-1.5e-7}"#;
        let streamed = CanonicalMembers::from_canonical_object(nested).expect("canonical");
        assert_eq!(streamed.to_canonical_object(), nested);
        assert!(streamed.contains("é") && streamed.contains("a"));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(1i64 << 53)..(1i64 << 53)).prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Characters around every boundary the byte-level comparison cares about.
    fn name_char() -> impl Strategy<Value = char> {
        prop_oneof![
            proptest::char::range('a', 'c'),
            proptest::char::range('\u{7e}', '\u{81}'),
            proptest::char::range('\u{7fe}', '\u{801}'),
            proptest::char::range('\u{d7fe}', '\u{d7ff}'),
            proptest::char::range('\u{e000}', '\u{e001}'),
            proptest::char::range('\u{fffe}', '\u{ffff}'),
            proptest::char::range('\u{10000}', '\u{10001}'),
            proptest::char::range('\u{10fffe}', '\u{10ffff}'),
            any::<char>(),
        ]
    }

    #[test]
    fn member_names_compare_by_utf16_code_units() {
        let cases = [
            ("", "", Ordering::Equal),
            ("a", "", Ordering::Greater),
            ("a", "ab", Ordering::Less),
            ("\u{ffff}", "\u{10000}", Ordering::Greater),
            ("\u{e000}", "\u{1f600}", Ordering::Greater),
            ("\u{d7ff}", "\u{10000}", Ordering::Less),
            ("x\u{fb33}", "x\u{1f600}", Ordering::Greater),
            ("\u{1f600}", "\u{1f601}", Ordering::Less),
        ];
        for (a, b, expected) in cases {
            assert_eq!(cmp_member_names(a, b), expected, "{a:?} {b:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The byte-level comparison agrees with comparing UTF-16 code units.
        #[test]
        fn member_name_order_is_utf16_order(
            a in proptest::collection::vec(name_char(), 0..4),
            b in proptest::collection::vec(name_char(), 0..4),
        ) {
            let a: String = a.into_iter().collect();
            let b: String = b.into_iter().collect();
            prop_assert_eq!(cmp_member_names(&a, &b), a.encode_utf16().cmp(b.encode_utf16()));
            prop_assert_eq!(cmp_member_names(&a, &a), Ordering::Equal);
        }

        /// Our writer agrees with an independent RFC 8785 implementation.
        #[test]
        fn agrees_with_reference_implementation(value in arb_json()) {
            let ours = to_canonical_string(&value);
            let reference = serde_json_canonicalizer::to_string(&value).expect("reference serializes");
            prop_assert_eq!(ours, reference);
        }

        /// Canonical text parses back to the same value and is a fixed point.
        #[test]
        fn canonical_form_is_a_fixed_point(value in arb_json()) {
            let once = to_canonical_string(&value);
            let reparsed: Value = serde_json::from_str(&once).expect("canonical output is JSON");
            prop_assert_eq!(to_canonical_string(&reparsed), once);
        }

        /// The streaming check accepts exactly the texts that the `Value` round trip it
        /// replaced accepted, and rebuilds the same members: on canonical text, on
        /// serde_json's own (non-canonical number and escape forms), on pretty-printed
        /// text, and with the members of every object reversed.
        #[test]
        fn streaming_canonical_check_agrees_with_the_value_round_trip(
            map in prop::collection::btree_map(any::<String>(), arb_json(), 0..8),
        ) {
            let value = Value::Object(map.into_iter().collect());
            let texts = [
                to_canonical_string(&value),
                serde_json::to_string(&value).expect("serializes"),
                serde_json::to_string_pretty(&value).expect("serializes"),
                reversed_text(&value),
                to_canonical_string(&value).replacen(':', ": ", 1),
            ];
            for text in texts {
                let streamed = CanonicalMembers::from_canonical_object(&text);
                let reference = value_round_trip(&text);
                prop_assert_eq!(streamed.is_ok(), reference.is_ok(), "{:?}", text);
                if let (Ok(streamed), Ok(reference)) = (streamed, reference) {
                    // The same members (the text may hold them in another order: only
                    // their ranges are sorted).
                    prop_assert_eq!(streamed.to_canonical_object(), reference.to_canonical_object());
                    let names = |m: &CanonicalMembers| -> Vec<String> {
                        m.members.iter().map(|r| m.name(r).to_owned()).collect()
                    };
                    prop_assert_eq!(names(&streamed), names(&reference));
                }
            }
        }

        /// Splicing members gives the same text as canonicalizing the whole object.
        #[test]
        fn spliced_members_equal_whole_object(
            map in prop::collection::btree_map("[a-zA-Z\u{e9}\u{1F600}]{1,6}", arb_json(), 0..8),
            seq in 0u64..1_000_000,
        ) {
            let map: Map<String, Value> = map.into_iter().filter(|(k, _)| k != "seq" && k != "logId").collect();
            let members = CanonicalMembers::from_map(&map);
            let mut extra = vec![("seq", seq.to_string()), ("logId", "\"default\"".to_owned())];
            let joined = members.join_with(&mut extra);
            let mut full = map.clone();
            full.insert("seq".into(), json!(seq));
            full.insert("logId".into(), json!("default"));
            prop_assert_eq!(joined, to_canonical_string(&Value::Object(full)));
        }
    }
}
