//! Sanitization (SPEC §2): control characters removed, NFC normalization, injection signals.
//!
//! Every string value and every object key is cleaned the same way: C0 control characters
//! (U+0000–U+001F) other than tab and newline are removed, then the text is NFC-normalized so
//! that equal-looking text is stored, hashed and searched as equal bytes. Nothing else is
//! rewritten: the stored event is evidence, so HTML or SQL in it is kept as sent and neutralized
//! where it is output. Text that looks like an injection attempt raises a [`SecuritySignal`]
//! for the detection rules (SPEC §8).
//!
//! This runs on every event, so the common case (ASCII text without control characters, which
//! is already NFC) is checked with one byte scan and costs no allocation.

use crate::validate::Path;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::LazyLock;
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// What kind of suspicious content a string held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SignalKind {
    /// HTML/JavaScript injection (`<script`, `javascript:`, event-handler attributes).
    Script,
    /// SQL meta patterns (`' OR 1=1`, `UNION SELECT`, `; DROP TABLE`).
    Sql,
}

/// A suspicious value found while sanitizing; raised to the detection rules (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecuritySignal {
    /// JSON pointer of the string (of the member, when the suspicious text is an object key).
    pub pointer: String,
    /// What it looked like.
    pub kind: SignalKind,
}

/// Removes C0 control characters (except tab and newline) and NFC-normalizes every string and
/// object key in `event`, in place; returns the injection signals found (in the cleaned text,
/// so control characters cannot hide a pattern).
///
/// When two keys of one object become equal after cleaning, the first (in the object's order)
/// is kept and the other member dropped.
pub fn sanitize(event: &mut Value) -> Vec<SecuritySignal> {
    let mut signals = Vec::new();
    match event {
        Value::String(s) => sanitize_string(s, None, &mut signals),
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let node = Path::index_root(i);
                sanitize_value(item, &node, &mut signals);
            }
        }
        Value::Object(map) => sanitize_members(map, None, &mut signals),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    signals
}

fn sanitize_value(value: &mut Value, path: &Path<'_>, signals: &mut Vec<SecuritySignal>) {
    match value {
        Value::String(s) => sanitize_string(s, Some(path), signals),
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let node = path.index(i);
                sanitize_value(item, &node, signals);
            }
        }
        Value::Object(map) => sanitize_members(map, Some(path), signals),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn sanitize_members(
    map: &mut Map<String, Value>,
    path: Option<&Path<'_>>,
    signals: &mut Vec<SecuritySignal>,
) {
    if map.keys().any(|k| classify(k) & NOT_PLAIN != 0) {
        let old = std::mem::take(map);
        for (key, value) in old {
            let key = cleaned(&key).unwrap_or(key);
            // First one wins on a collision.
            map.entry(key).or_insert(value);
        }
    }
    for (key, value) in map.iter_mut() {
        let node = match path {
            Some(p) => p.key(key),
            None => Path::root(key),
        };
        let flags = classify(key);
        if flags & HINTS != 0 {
            detect(key, flags, Some(&node), signals);
        }
        sanitize_value(value, &node, signals);
    }
}

/// The injection signal kinds sanitization raises on `text`, for text that is already clean
/// (a stored event's strings: sanitization ran at ingest). No copy, no normalization: one
/// byte scan, then a regex only where the bytes say its pattern could be there. The detection
/// rules use it to find the kinds again without re-sanitizing the event.
pub fn signal_kinds(text: &str) -> impl Iterator<Item = SignalKind> {
    let flags = classify(text);
    let mut signals = Vec::new();
    if flags & HINTS != 0 {
        detect(text, flags, None, &mut signals);
    }
    signals.into_iter().map(|signal| signal.kind)
}

/// Cleans one string value in place and raises its signals. One byte scan decides both
/// whether anything needs cleaning and whether a detector could match.
fn sanitize_string(s: &mut String, path: Option<&Path<'_>>, signals: &mut Vec<SecuritySignal>) {
    let mut flags = classify(s);
    if flags & NOT_PLAIN != 0 {
        if let Some(clean) = cleaned(s) {
            *s = clean;
        }
        flags = classify(s);
    }
    if flags & HINTS != 0 {
        detect(s, flags, path, signals);
    }
}

/// Byte classes, one bit each, so a single pass over a string answers every cheap question.
/// A byte that is not printable ASCII, tab or newline (so the text may need cleaning).
const NOT_PLAIN: u8 = 1;
/// `<`: tags.
const LT: u8 = 1 << 1;
/// `:`: `javascript:` URLs.
const COLON: u8 = 1 << 2;
/// `=`: event-handler attributes.
const EQ: u8 = 1 << 3;
/// `'`: quote-based SQL tautologies and comments.
const QUOTE: u8 = 1 << 4;
/// `;`: stacked `DROP`.
const SEMI: u8 = 1 << 5;
/// `u`/`U`: `UNION SELECT`.
const U: u8 = 1 << 6;
/// `_`: `xp_cmdshell`.
const UNDERSCORE: u8 = 1 << 7;
/// Any byte a detector needs.
const HINTS: u8 = !NOT_PLAIN;

static BYTE_CLASS: [u8; 256] = byte_classes();

const fn byte_classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = match b {
            b'\t' | b'\n' => 0,
            0..=0x1f | 0x80..=0xff => NOT_PLAIN,
            b'<' => LT,
            b':' => COLON,
            b'=' => EQ,
            b'\'' => QUOTE,
            b';' => SEMI,
            b'u' | b'U' => U,
            b'_' => UNDERSCORE,
            _ => 0,
        };
        i += 1;
    }
    table
}

/// The union of the byte classes of `s`.
fn classify(s: &str) -> u8 {
    s.bytes().fold(0, |acc, b| acc | BYTE_CLASS[usize::from(b)])
}

/// A C0 control character that sanitization removes.
fn is_removed_control(c: char) -> bool {
    c <= '\u{1f}' && c != '\t' && c != '\n'
}

/// The cleaned form of `s`, or `None` when `s` is already clean (the common case allocates
/// nothing).
fn cleaned(s: &str) -> Option<String> {
    if classify(s) & NOT_PLAIN == 0 {
        // Printable ASCII, tab and newline: nothing to remove and already NFC.
        return None;
    }
    // C0 characters are single bytes in UTF-8 and never occur inside a multi-byte sequence.
    let stripped: Cow<'_, str> = if s.bytes().any(|b| b < 0x20 && b != b'\t' && b != b'\n') {
        Cow::Owned(s.chars().filter(|c| !is_removed_control(*c)).collect())
    } else {
        Cow::Borrowed(s)
    };
    let normalized = match is_nfc_quick(stripped.chars()) {
        IsNormalized::Yes => None,
        IsNormalized::No | IsNormalized::Maybe => {
            let n: String = stripped.nfc().collect();
            (n != *stripped).then_some(n)
        }
    };
    match (normalized, stripped) {
        (Some(n), _) => Some(n),
        (None, Cow::Owned(o)) => Some(o),
        (None, Cow::Borrowed(_)) => None,
    }
}

/// Script injection: tags that run code, `javascript:` URLs, event-handler attributes.
static SCRIPT_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)<\s*(?:script|iframe|object|embed)(?-u:\b)|(?:java|vb)script\s*:|(?-u:\b)on(?:error|load|unload|click|dblclick|mouse[a-z]*|focus[a-z]*|blur|change|submit|key[a-z]+|input|toggle|animation[a-z]*|pointer[a-z]*|begin|wheel|drag[a-z]*|drop|paste|copy|cut)\s*=",
    )
    .ok()
});

/// SQL meta patterns: tautologies after a quote, UNION SELECT, stacked DROP, comment after a
/// quote, `xp_cmdshell`.
static SQL_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)'\s*(?:or|and)\s+(?:\d+\s*=\s*\d+|'[^']*'\s*=\s*')|(?-u:\b)union\s+(?:all\s+)?select(?-u:\b)|;\s*(?:drop|truncate)\s+(?:table|database)(?-u:\b)|'\s*(?:;\s*)?--|xp_cmdshell",
    )
    .ok()
});

/// Raises signals for `text`, whose byte classes are `flags`. A regex runs only when the
/// bytes and a cheap substring check say its pattern could be there.
fn detect(text: &str, flags: u8, path: Option<&Path<'_>>, signals: &mut Vec<SecuritySignal>) {
    let b = text.as_bytes();
    let has = |class: u8| flags & class != 0;
    let script_hint = has(LT)
        || (has(COLON) && contains_ignore_ascii_case(b, b"script"))
        || (has(EQ) && contains_ignore_ascii_case(b, b"on"));
    let sql_hint = has(QUOTE)
        || (has(SEMI)
            && (contains_ignore_ascii_case(b, b"drop")
                || contains_ignore_ascii_case(b, b"truncate")))
        || (has(U) && contains_ignore_ascii_case(b, b"union"))
        || (has(UNDERSCORE) && contains_ignore_ascii_case(b, b"xp_cmdshell"));
    let mut raise = |kind: SignalKind| {
        let pointer = path.map(Path::to_pointer).unwrap_or_default();
        let duplicate = signals
            .last()
            .is_some_and(|s| s.kind == kind && s.pointer == pointer);
        if !duplicate {
            signals.push(SecuritySignal { pointer, kind });
        }
    };
    if script_hint && SCRIPT_RE.as_ref().is_some_and(|re| re.is_match(text)) {
        raise(SignalKind::Script);
    }
    if sql_hint && SQL_RE.as_ref().is_some_and(|re| re.is_match(text)) {
        raise(SignalKind::Sql);
    }
}

/// Whether `haystack` contains `needle` (ASCII, starting with a lowercase letter) ignoring
/// ASCII case. Runs on many strings of every event (`u` alone hints at `UNION`), so it looks
/// for the first needle byte with a cheap OR-with-0x20 test and compares the rest only there.
fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if haystack.len() < needle.len() {
        return false;
    }
    // For a lowercase letter `first`, `b | 0x20 == first` holds exactly for `first` and its
    // uppercase form (the bytes that differ from it only in bit 0x20).
    debug_assert!(first.is_ascii_lowercase());
    let last_start = haystack.len() - needle.len();
    haystack[..=last_start]
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b | 0x20 == first)
        .any(|(i, _)| haystack[i + 1..i + needle.len()].eq_ignore_ascii_case(rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use unicode_normalization::is_nfc;

    fn kinds(signals: &[SecuritySignal]) -> Vec<(&str, SignalKind)> {
        signals
            .iter()
            .map(|s| (s.pointer.as_str(), s.kind))
            .collect()
    }

    #[test]
    fn patterns_compile() {
        assert!(SCRIPT_RE.is_some());
        assert!(SQL_RE.is_some());
    }

    #[test]
    fn removes_c0_controls_but_keeps_tab_and_newline() {
        let mut event = json!({"a": "x\u{0}y\u{1}\u{1f}z\t\n\r", "b": ["\u{7}bell"]});
        sanitize(&mut event);
        assert_eq!(event, json!({"a": "xyz\t\n", "b": ["bell"]}));
    }

    #[test]
    fn keeps_del_and_c1_and_markup() {
        // Only C0 is removed; text is otherwise kept as sent (evidence is not rewritten).
        let text = "\u{7f}\u{85}<b>bold</b> & \"q\"";
        let mut event = json!({"a": text});
        sanitize(&mut event);
        assert_eq!(event["a"], text);
    }

    #[test]
    fn nfc_normalizes_values_and_keys() {
        let mut event = json!({"cafe\u{301}": "e\u{301}", "ok": "\u{212b}"});
        sanitize(&mut event);
        assert_eq!(event, json!({"café": "é", "ok": "\u{c5}"}));
    }

    #[test]
    fn removing_a_control_can_enable_composition() {
        let mut event = json!("e\u{0}\u{301}");
        sanitize(&mut event);
        assert_eq!(event, json!("é"));
    }

    #[test]
    fn colliding_keys_keep_the_first_member() {
        // Both keys clean to "ab"; the map's order puts "a\u{0}b" first.
        let mut event = json!({"a\u{0}b": 1, "a\u{1}b": 2, "ab\u{2}": 3, "c": 4});
        sanitize(&mut event);
        assert_eq!(event, json!({"ab": 1, "c": 4}));
    }

    #[test]
    fn clean_text_is_untouched_and_not_reallocated() {
        assert_eq!(cleaned("plain ascii\twith tab\n"), None);
        assert_eq!(cleaned("já normalizado"), None);
        assert_eq!(cleaned("한국어"), None);
        assert_eq!(cleaned("a\u{0}"), Some("a".into()));
    }

    #[test]
    fn sanitizes_nested_values_and_top_level_scalars() {
        let mut event = json!({"d": {"x": [{"y\u{3}": ["\u{4}z"]}]}});
        sanitize(&mut event);
        assert_eq!(event, json!({"d": {"x": [{"y": ["z"]}]}}));
        let mut s = json!("\u{0}");
        sanitize(&mut s);
        assert_eq!(s, json!(""));
        let mut n = json!(5);
        assert!(sanitize(&mut n).is_empty());
    }

    #[test]
    fn detects_script_injection() {
        for text in [
            "<script>alert(1)</script>",
            "< SCRIPT src=x>",
            "<img src=x onerror=alert(1)>",
            "<body onLoad = 'x'>",
            "javascript:alert(1)",
            "JavaScript :void(0)",
            "<iframe src=//evil>",
            "<svg onmouseover=x>",
        ] {
            let mut event = json!({"details": {"v": text}});
            let signals = sanitize(&mut event);
            assert_eq!(
                kinds(&signals),
                vec![("/details/v", SignalKind::Script)],
                "{text}"
            );
        }
    }

    #[test]
    fn detects_sql_meta_patterns() {
        for text in [
            "' or 1=1 --",
            "admin' OR '1'='1",
            "x' or 'a'='a",
            "1 UNION SELECT password FROM users",
            "1 union all select 1",
            "a; DROP TABLE patients",
            "admin'--",
            "exec xp_cmdshell 'dir'",
        ] {
            let mut event = json!({"outcomeDescription": text});
            let signals = sanitize(&mut event);
            assert!(
                kinds(&signals).contains(&("/outcomeDescription", SignalKind::Sql)),
                "{text}: {signals:?}"
            );
        }
    }

    #[test]
    fn benign_text_raises_nothing() {
        for text in [
            "O'Brien or Smith",
            "the union selected a delegate",
            "a < b and c > d",
            "time: 09:01:02",
            "once=true",
            "x_y = 1; ok",
            "button onclick handler discussed",
            "my_script.js",
            "Patient's record -- reviewed",
        ] {
            let mut event = json!({"v": text});
            assert_eq!(sanitize(&mut event), vec![], "{text}");
        }
    }

    #[test]
    fn controls_cannot_hide_a_pattern() {
        let mut event = json!({"v": "<scr\u{0}ipt>"});
        assert_eq!(
            kinds(&sanitize(&mut event)),
            vec![("/v", SignalKind::Script)]
        );
    }

    #[test]
    fn signals_carry_escaped_pointers_and_cover_keys() {
        let mut event = json!({
            "details": {"a/b": [{"m~n": "<script>"}]},
            "<script>": "x",
            "both": "' or 1=1 <iframe>"
        });
        let signals = sanitize(&mut event);
        assert_eq!(
            kinds(&signals),
            vec![
                ("/<script>", SignalKind::Script),
                ("/both", SignalKind::Script),
                ("/both", SignalKind::Sql),
                ("/details/a~1b/0/m~0n", SignalKind::Script),
            ]
        );
    }

    #[test]
    fn key_and_value_signal_once() {
        let mut event = json!({"<script>": "<script>"});
        assert_eq!(
            kinds(&sanitize(&mut event)),
            vec![("/<script>", SignalKind::Script)]
        );
    }

    /// Characters that exercise every branch: ASCII, C0 controls, combining marks, characters
    /// with singleton decompositions, Hangul jamo, and anything else.
    fn text() -> impl Strategy<Value = String> {
        let ch = prop_oneof![
            4 => proptest::char::range(' ', '~'),
            2 => proptest::char::range('\u{0}', '\u{1f}'),
            2 => proptest::char::range('\u{300}', '\u{36f}'),
            1 => Just('\u{212b}'),
            1 => Just('\u{1e0a}'),
            1 => proptest::char::range('\u{1100}', '\u{1175}'),
            1 => any::<char>(),
        ];
        proptest::collection::vec(ch, 0..24).prop_map(|cs| cs.into_iter().collect())
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec((text(), inner), 0..5)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    fn assert_clean(value: &Value) {
        let check = |s: &str| {
            assert!(!s.chars().any(is_removed_control), "control left in {s:?}");
            assert!(is_nfc(s), "not NFC: {s:?}");
        };
        match value {
            Value::String(s) => check(s),
            Value::Array(items) => items.iter().for_each(assert_clean),
            Value::Object(map) => {
                for (k, v) in map {
                    check(k);
                    assert_clean(v);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Text built from pieces of the injection patterns, so the detectors match often.
    fn suspicious_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("<"),
            Just("script"),
            Just("SCRIPT"),
            Just("iframe"),
            Just(":"),
            Just("java"),
            Just("on"),
            Just("error"),
            Just("Load"),
            Just("="),
            Just("'"),
            Just(" or "),
            Just("1=1"),
            Just("union"),
            Just(" select"),
            Just(";"),
            Just(" DROP table"),
            Just("--"),
            Just("xp_cmdshell"),
            Just(" "),
            Just("a"),
            Just("é"),
        ];
        proptest::collection::vec(piece, 0..10).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn byte_prefilter_never_hides_a_match(text in suspicious_text()) {
            let mut got = Vec::new();
            detect(&text, classify(&text), None, &mut got);
            let got: Vec<SignalKind> = got.into_iter().map(|s| s.kind).collect();
            let mut expected = Vec::new();
            if SCRIPT_RE.as_ref().is_some_and(|re| re.is_match(&text)) {
                expected.push(SignalKind::Script);
            }
            if SQL_RE.as_ref().is_some_and(|re| re.is_match(&text)) {
                expected.push(SignalKind::Sql);
            }
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn signal_kinds_of_clean_text_match_sanitization(text in suspicious_text()) {
            let mut value = Value::String(text);
            let raised: Vec<SignalKind> = sanitize(&mut value).into_iter().map(|s| s.kind).collect();
            let clean = value.as_str().unwrap_or_default();
            prop_assert_eq!(signal_kinds(clean).collect::<Vec<_>>(), raised);
        }

        #[test]
        fn sanitize_is_idempotent_and_leaves_clean_nfc_text(mut value in json_value()) {
            sanitize(&mut value);
            assert_clean(&value);
            let once = value.clone();
            sanitize(&mut value);
            prop_assert_eq!(value, once);
        }

        #[test]
        fn cleaned_strings_match_a_reference(s in text()) {
            let reference: String = s
                .chars()
                .filter(|c| !is_removed_control(*c))
                .collect::<String>()
                .nfc()
                .collect();
            let got = cleaned(&s).unwrap_or_else(|| s.clone());
            prop_assert_eq!(got, reference);
        }
    }
}
