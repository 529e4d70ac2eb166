//! Full text for PostgreSQL the way the SQLite index tokenizes it.
//!
//! The SQLite index uses FTS5's default `unicode61` tokenizer: a token is a run of letters,
//! numbers and private-use characters (Unicode categories `L*`, `N*`, `Co`), folded to lower
//! case, with simple diacritics removed (`é` → `e`, but `ǖ`, which carries two, stays). A query
//! term is a phrase of the tokens of that term. PostgreSQL's text-search parsers split
//! differently (`fhir.patient.read` is one "host" token there, `dr-1` a hyphenated word), so
//! the store does not let PostgreSQL parse: it tokenizes here, writes the `tsvector` as a
//! literal of those lexemes with their positions, and writes a `tsquery` literal in which each
//! term is a `<->` phrase of its tokens and the terms are joined by `&`. The result is the same
//! match set as FTS5 for the same text, with two PostgreSQL limits (see [`MAX_LEXEME_BYTES`] and
//! [`MAX_POSITION`]). Categories come from Rust's Unicode tables rather than SQLite's own, so a
//! few characters are classified differently: FTS5 treats code points missing from its (older)
//! Unicode table as token characters, so symbols assigned later — most emoji, e.g. U+1F642 —
//! are words there and separators here. The unit tests compare both tokenizers on Latin,
//! Greek, Cyrillic, CJK, digits, punctuation, symbols and diacritics.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// PostgreSQL refuses lexemes longer than 2,047 bytes; longer tokens are left out of the
/// `tsvector` (and a query term containing one matches nothing).
pub(crate) const MAX_LEXEME_BYTES: usize = 2047;

/// PostgreSQL keeps word positions up to 16,383 (later words share that position), so a phrase
/// beyond the 16,383rd word of an event may match where FTS5 would not.
pub(crate) const MAX_POSITION: usize = 16_383;

fn is_private_use(c: char) -> bool {
    matches!(c as u32, 0xE000..=0xF8FF | 0xF_0000..=0xF_FFFD | 0x10_0000..=0x10_FFFD)
}

/// Whether `c` starts or continues a token (FTS5 `unicode61`, categories `L* N* Co`).
fn is_token_char(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric()
    } else {
        (c.is_alphanumeric() && !is_combining_mark(c)) || is_private_use(c)
    }
}

/// The combining diacritics FTS5 lets continue a token (and then drops): the same bit masks
/// as SQLite's `sqlite3Fts5UnicodeIsdiacritic` over U+0300..U+0331.
fn is_diacritic(c: char) -> bool {
    let c = c as u32;
    if !(768..=817).contains(&c) {
        return false;
    }
    if c < 800 {
        0x0802_9FDF_u32 & (1 << (c - 768)) != 0
    } else {
        0x0003_61F8_u32 & (1 << (c - 800)) != 0
    }
}

/// Lower case, then (like `remove_diacritics=1`) a Latin letter with one diacritic becomes its
/// base letter. `None` for a character that folds to nothing (a diacritic on its own).
fn fold(c: char) -> Option<char> {
    if c.is_ascii() {
        return Some(c.to_ascii_lowercase());
    }
    if is_diacritic(c) {
        return None;
    }
    let mut lower = c.to_lowercase();
    let folded = match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    };
    let mut parts = std::iter::once(folded).nfd();
    if let (Some(base), Some(mark), None) = (parts.next(), parts.next(), parts.next())
        && base.is_ascii_alphabetic()
        && is_combining_mark(mark)
    {
        return Some(base);
    }
    Some(folded)
}

/// Calls `each` with every token of `text`, in order, as FTS5 `unicode61` produces them,
/// folding into one reused buffer (an event has dozens of tokens; this runs for each event
/// the store appends).
fn for_each_token(text: &str, mut each: impl FnMut(&str)) {
    let bytes = text.as_bytes();
    let mut token = String::new();
    let mut in_token = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // ASCII (nearly all of an audit event) without decoding: a letter or digit continues
        // or starts a token, anything else ends it.
        let (is_token, folded) = if b.is_ascii() {
            i += 1;
            (
                b.is_ascii_alphanumeric(),
                Some(char::from(b.to_ascii_lowercase())),
            )
        } else {
            let Some(c) = text[i..].chars().next() else {
                break;
            };
            i += c.len_utf8();
            (is_token_char(c) || (in_token && is_diacritic(c)), fold(c))
        };
        if is_token {
            token.extend(folded);
            in_token = true;
        } else if in_token {
            each(&token);
            token.clear();
            in_token = false;
        }
    }
    if in_token {
        each(&token);
    }
}

/// The tokens of `text`, in order, as FTS5 `unicode61` produces them.
pub(crate) fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_token(text, |t| out.push(t.to_owned()));
    out
}

/// Quotes a lexeme for `tsquery` input.
fn quote(lexeme: &str, out: &mut String) {
    out.push('\'');
    for c in lexeme.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// PostgreSQL keeps at most this many positions per lexeme (`MAXNUMPOS`); its text input
/// drops the rest, its binary input refuses them.
const MAX_POSITIONS_PER_LEXEME: usize = 256;

/// An event's free text as a `tsvector` in PostgreSQL's binary form: every token with its
/// positions (1-based, capped at [`MAX_POSITION`]), lexemes sorted and merged.
///
/// Sent in binary rather than as a literal that the server parses: the literal cost the
/// database a lexer pass and a sort per event, about a fifth of its CPU per appended event in
/// the scale-out benchmark. The value is the one `tsvector` input makes of the literal
/// `'tok':1 'tok':2 …` (test `binary_tsvector_equals_the_literal_input` compares them on a
/// real server): lexemes in byte order, each with its positions ascending and distinct, at most
/// 256 of them, lexemes over [`MAX_LEXEME_BYTES`] left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TsVector {
    /// `tsvectorrecv`'s input: entry count, then per lexeme its bytes, a NUL, the position
    /// count and the positions (big-endian, weight bits zero).
    encoded: Vec<u8>,
}

impl TsVector {
    /// The `tsvector` of `text`.
    pub(crate) fn of(text: &str) -> Self {
        // Every token, in one buffer: (start, end, position).
        let mut buffer = String::with_capacity(text.len());
        let mut spans: Vec<(u32, u32, u16)> = Vec::new();
        let mut index = 0usize;
        for_each_token(text, |token| {
            index += 1;
            if token.is_empty() || token.len() > MAX_LEXEME_BYTES {
                return;
            }
            let (Ok(start), Ok(end)) = (
                u32::try_from(buffer.len()),
                u32::try_from(buffer.len() + token.len()),
            ) else {
                return;
            };
            buffer.push_str(token);
            let position = u16::try_from(index.min(MAX_POSITION)).unwrap_or(u16::MAX);
            spans.push((start, end, position));
        });
        // Byte order is `tsvector`'s lexeme order; positions ascending within a lexeme. Each
        // word leads with its first 8 bytes as a big-endian integer (zero-padded), which
        // orders like the bytes themselves, so most comparisons of the sort are one integer
        // comparison; equal prefixes fall through to the whole words. (The sort took 40% of
        // this function as slice comparisons.)
        let mut words: Vec<(u64, &[u8], u16)> = spans
            .iter()
            .map(|&(start, end, position)| {
                let (prefix, word) =
                    byte_order_key(&buffer.as_bytes()[start as usize..end as usize]);
                (prefix, word, position)
            })
            .collect();
        words.sort_unstable();

        let mut encoded = Vec::with_capacity(4 + buffer.len() + words.len() * 5);
        encoded.extend_from_slice(&[0; 4]);
        let mut entries: u32 = 0;
        let mut i = 0;
        while i < words.len() {
            let word = words[i].1;
            encoded.extend_from_slice(word);
            encoded.push(0);
            let count_at = encoded.len();
            encoded.extend_from_slice(&[0; 2]);
            let mut count: u16 = 0;
            let mut last: Option<u16> = None;
            while i < words.len() && words[i].1 == word {
                let position = words[i].2;
                if last != Some(position) && usize::from(count) < MAX_POSITIONS_PER_LEXEME {
                    encoded.extend_from_slice(&position.to_be_bytes());
                    count += 1;
                    last = Some(position);
                }
                i += 1;
            }
            encoded[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
            entries += 1;
        }
        encoded[..4].copy_from_slice(&entries.to_be_bytes());
        TsVector { encoded }
    }
}

impl TsVector {
    /// The lexemes of `vectors` together, each once and without positions: the `tsvector` of a
    /// text block (`text_blocks`), which only has to say which words occur somewhere in its
    /// events. Equal to `array_to_tsvector` of the distinct lexemes (checked on a real server
    /// by `binary_tsvector_equals_the_literal_input`).
    pub(crate) fn union<'a>(vectors: impl IntoIterator<Item = &'a TsVector>) -> TsVector {
        // Each vector's lexemes are sorted and distinct: merge them pairwise (n log k
        // comparisons for k vectors, against n log n for sorting them all).
        let mut lists: Vec<Vec<(u64, &[u8])>> = vectors
            .into_iter()
            .map(|v| v.lexemes().map(byte_order_key).collect())
            .collect();
        while lists.len() > 1 {
            let mut merged = Vec::with_capacity(lists.len().div_ceil(2));
            let mut pairs = lists.into_iter();
            while let Some(a) = pairs.next() {
                match pairs.next() {
                    Some(b) => merged.push(merge_distinct(&a, &b)),
                    None => merged.push(a),
                }
            }
            lists = merged;
        }
        let words = lists.pop().unwrap_or_default();
        let mut encoded =
            Vec::with_capacity(4 + words.iter().map(|w| w.1.len() + 3).sum::<usize>());
        let count = u32::try_from(words.len()).unwrap_or(u32::MAX);
        encoded.extend_from_slice(&count.to_be_bytes());
        for (_, word) in words {
            encoded.extend_from_slice(word);
            encoded.extend_from_slice(&[0, 0, 0]);
        }
        TsVector { encoded }
    }

    /// The lexemes of this vector, in its (byte) order.
    fn lexemes(&self) -> impl Iterator<Item = &[u8]> {
        let count = self
            .encoded
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_be_bytes);
        let mut rest = self.encoded.get(4..).unwrap_or_default();
        (0..count).map_while(move |_| {
            let nul = rest.iter().position(|&b| b == 0)?;
            let word = &rest[..nul];
            let positions = usize::from(u16::from_be_bytes([
                *rest.get(nul + 1)?,
                *rest.get(nul + 2)?,
            ]));
            rest = rest.get(nul + 3 + 2 * positions..)?;
            Some(word)
        })
    }
}

/// A word with its first 8 bytes as a big-endian integer (zero-padded): ordering the pairs
/// orders the words bytewise, `tsvector`'s lexeme order, with most comparisons one integer
/// comparison.
fn byte_order_key(word: &[u8]) -> (u64, &[u8]) {
    let mut prefix = [0u8; 8];
    let n = word.len().min(8);
    prefix[..n].copy_from_slice(&word[..n]);
    (u64::from_be_bytes(prefix), word)
}

/// The union of two sorted lists of distinct words, sorted and distinct.
fn merge_distinct<'a>(a: &[(u64, &'a [u8])], b: &[(u64, &'a [u8])]) -> Vec<(u64, &'a [u8])> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

impl tokio_postgres::types::ToSql for TsVector {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.encoded);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::TS_VECTOR
    }

    tokio_postgres::types::to_sql_checked!();
}

/// What a search's `q` means for PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TextQuery {
    /// No full-text condition (`q` absent or only whitespace and control characters).
    None,
    /// A term has no token (`q=---`): FTS5 matches nothing for an empty phrase.
    Nothing,
    /// The query, in two forms.
    Query {
        /// The `tsquery` literal an event's `tsvector` must match: every term, each a phrase.
        exact: String,
        /// Every token of every term joined by `&`, without phrases: what a text block
        /// (`text_blocks`, lexemes without positions) holding a matching event must contain.
        words: String,
    },
}

/// Builds the `tsquery` of a search text the way `index::fts_query` builds the FTS5 query: C0
/// control characters other than tab and newline are dropped, each whitespace-separated term
/// is a phrase of its tokens, every term must match.
pub(crate) fn tsquery_literal(q: &str) -> TextQuery {
    let cleaned: String = q
        .chars()
        .filter(|&c| c > '\u{1f}' || c == '\t' || c == '\n')
        .collect();
    let mut out = String::new();
    let mut words: Vec<String> = Vec::new();
    let mut any = false;
    for term in cleaned.split_whitespace() {
        any = true;
        let tokens = tokens(term);
        if tokens.is_empty() || tokens.iter().any(|t| t.len() > MAX_LEXEME_BYTES) {
            return TextQuery::Nothing;
        }
        words.extend(tokens.iter().cloned());
        if !out.is_empty() {
            out.push_str(" & ");
        }
        let phrase = tokens.len() > 1;
        if phrase {
            out.push('(');
        }
        for (i, token) in tokens.iter().enumerate() {
            if i > 0 {
                out.push_str(" <-> ");
            }
            quote(token, &mut out);
        }
        if phrase {
            out.push(')');
        }
    }
    if any {
        words.sort_unstable();
        words.dedup();
        let mut all = String::new();
        for word in &words {
            if !all.is_empty() {
                all.push_str(" & ");
            }
            quote(word, &mut all);
        }
        TextQuery::Query {
            exact: out,
            words: all,
        }
    } else {
        TextQuery::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// The `tsvector` literal of `text` (what the store sent before [`TsVector`]): the
    /// reference the binary form must equal once PostgreSQL has read it.
    fn tsvector_literal(text: &str) -> String {
        let mut out = String::new();
        for (index, token) in tokens(text).iter().enumerate() {
            if token.is_empty() || token.len() > MAX_LEXEME_BYTES {
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            quote(token, &mut out);
            out.push(':');
            out.push_str(&(index + 1).min(MAX_POSITION).to_string());
        }
        out
    }

    /// FTS5's own tokens of `text`, through an `fts5vocab` table.
    fn fts5_tokens(conn: &Connection, text: &str) -> Vec<String> {
        conn.execute("DELETE FROM t", []).expect("clear");
        conn.execute("INSERT INTO t (rowid, x) VALUES (1, ?1)", [text])
            .expect("insert");
        let mut stmt = conn
            .prepare("SELECT term FROM v ORDER BY \"offset\"")
            .expect("vocab");
        stmt.query_map([], |r| r.get::<_, String>(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("terms")
    }

    #[test]
    fn tokens_match_fts5_unicode61() {
        let conn = Connection::open_in_memory().expect("memory");
        conn.execute_batch(
            "CREATE VIRTUAL TABLE t USING fts5(x);
             CREATE VIRTUAL TABLE v USING fts5vocab(t, instance);",
        )
        .expect("fts5");
        for sample in SAMPLES {
            assert_eq!(tokens(sample), fts5_tokens(&conn, sample), "{sample:?}");
        }
    }

    /// Texts the tokenizer tests run on: scripts, diacritics, separators, symbols.
    const SAMPLES: [&str; 10] = [
        "fhir.patient.read by dr-1 at 10.0.0.1",
        "Record number 17 viewed in the Ward; PASSWORD=x",
        "Ünïcödé café naïve résumé Ångström ǖ Œuvre straße",
        "Ελληνικά ΚΕΦΑΛΑΙΑ и кириллица ЙОД",
        "漢字かなカナ 한국어 mixed123abc ١٢٣",
        "tab\tnew\nline, e\u{301}cole (decomposed) ‐dash– “quotes” ½ ² x²",
        "symbols ☃ ★ and private \u{E000}use",
        "under_score hy-phen a/b c:d e@f.g #tag $5.00 50%",
        "",
        "   ",
    ];

    /// Words that share their first 8 bytes (the sort's integer prefix) or are prefixes of
    /// one another, in ASCII and in multi-byte UTF-8.
    const SHARED_PREFIXES: &str = "configuration configure configurations config configuratio \
        configuration 12345678 123456789 1234567 12345678a ünïcödéx ünïcödé ünïcödéa ünï";

    /// The lexemes of an encoded `tsvector`, in their encoded order, with their positions.
    fn decode(encoded: &[u8]) -> Vec<(Vec<u8>, Vec<u16>)> {
        let count = u32::from_be_bytes(encoded[..4].try_into().expect("count"));
        let mut rest = &encoded[4..];
        let mut out = Vec::new();
        for _ in 0..count {
            let nul = rest.iter().position(|&b| b == 0).expect("terminated");
            let word = rest[..nul].to_vec();
            let n = usize::from(u16::from_be_bytes([rest[nul + 1], rest[nul + 2]]));
            let positions = (0..n)
                .map(|i| u16::from_be_bytes([rest[nul + 3 + 2 * i], rest[nul + 4 + 2 * i]]))
                .collect();
            rest = &rest[nul + 3 + 2 * n..];
            out.push((word, positions));
        }
        assert!(rest.is_empty(), "nothing after the last lexeme");
        out
    }

    #[test]
    fn lexemes_are_in_byte_order_with_their_positions() {
        for sample in SAMPLES.iter().chain([&SHARED_PREFIXES]) {
            // The reference: every token with its 1-based position, grouped by bytes.
            let mut expected: std::collections::BTreeMap<Vec<u8>, Vec<u16>> = Default::default();
            for (index, token) in tokens(sample).iter().enumerate() {
                if !token.is_empty() && token.len() <= MAX_LEXEME_BYTES {
                    let position = u16::try_from(index + 1).expect("small");
                    expected
                        .entry(token.as_bytes().to_vec())
                        .or_default()
                        .push(position);
                }
            }
            let expected: Vec<(Vec<u8>, Vec<u16>)> = expected.into_iter().collect();
            assert_eq!(
                decode(&TsVector::of(sample).encoded),
                expected,
                "{sample:?}"
            );
        }
    }

    /// Every distinct lexeme of `samples`, in byte order.
    fn distinct_lexemes(samples: &[&str]) -> Vec<Vec<u8>> {
        let mut words: Vec<Vec<u8>> = samples
            .iter()
            .flat_map(|s| tokens(s))
            .filter(|t| !t.is_empty() && t.len() <= MAX_LEXEME_BYTES)
            .map(String::into_bytes)
            .collect();
        words.sort_unstable();
        words.dedup();
        words
    }

    #[test]
    fn a_block_holds_every_lexeme_once_without_positions() {
        let samples: Vec<&str> = SAMPLES.iter().copied().chain([SHARED_PREFIXES]).collect();
        let vectors: Vec<TsVector> = samples.iter().map(|s| TsVector::of(s)).collect();
        let expected: Vec<(Vec<u8>, Vec<u16>)> = distinct_lexemes(&samples)
            .into_iter()
            .map(|w| (w, Vec::new()))
            .collect();
        assert!(expected.len() > 50, "the samples have many words");
        assert_eq!(decode(&TsVector::union(&vectors).encoded), expected);
        // The lexemes of each vector read back in order.
        for (sample, vector) in samples.iter().zip(&vectors) {
            let read: Vec<Vec<u8>> = vector.lexemes().map(<[u8]>::to_vec).collect();
            assert_eq!(read, distinct_lexemes(&[sample]), "{sample:?}");
        }
        assert!(decode(&TsVector::union([]).encoded).is_empty());
    }

    #[test]
    fn binary_tsvector_equals_the_literal_input() {
        let Some(url) = crate::postgres::test_pg_url() else {
            return;
        };
        let long_lexeme = format!("before {} after", "x".repeat(MAX_LEXEME_BYTES + 1));
        let many_positions = "again and ".repeat(300);
        let past_last_position = format!("{}tail end tail", "w ".repeat(MAX_POSITION + 50));
        let extra = [
            "a a a b A",
            "O'Neil back\\slash 'quoted'",
            "zeta alpha alphabet alp beta alpha",
            SHARED_PREFIXES,
            &long_lexeme,
            &many_positions,
            &past_last_position,
        ];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            for sample in SAMPLES.iter().chain(extra.iter()) {
                let row = client
                    .query_one(
                        "SELECT $1::tsvector = $2::text::tsvector, length($1::tsvector), \
                         left($1::tsvector::text, 200), left($2::text::tsvector::text, 200)",
                        &[&TsVector::of(sample), &tsvector_literal(sample)],
                    )
                    .await
                    .expect("compare");
                let (same, lexemes): (bool, i32) = (row.get(0), row.get(1));
                assert!(
                    same,
                    "{:?}: binary {} vs literal {}",
                    &sample[..sample.len().min(60)],
                    row.get::<_, String>(2),
                    row.get::<_, String>(3)
                );
                if !sample.trim().is_empty() {
                    assert!(lexemes > 0, "{sample:?} has lexemes");
                }
            }
            // A block's union is what `array_to_tsvector` makes of the distinct lexemes.
            let all: Vec<&str> = SAMPLES.iter().chain(extra.iter()).copied().collect();
            let vectors: Vec<TsVector> = all.iter().map(|s| TsVector::of(s)).collect();
            let words: Vec<String> = distinct_lexemes(&all)
                .into_iter()
                .map(|w| String::from_utf8(w).expect("utf-8"))
                .collect();
            let row = client
                .query_one(
                    "SELECT $1::tsvector = array_to_tsvector($2::text[]), length($1::tsvector)",
                    &[&TsVector::union(&vectors), &words],
                )
                .await
                .expect("compare the union");
            assert!(row.get::<_, bool>(0), "union equals array_to_tsvector");
            assert_eq!(
                usize::try_from(row.get::<_, i32>(1)).expect("length"),
                words.len()
            );
        });
    }

    #[test]
    fn queries_are_phrases_joined_by_and() {
        assert_eq!(tsquery_literal("  \u{1}  "), TextQuery::None);
        assert_eq!(tsquery_literal("alice ---"), TextQuery::Nothing);
        assert_eq!(
            tsquery_literal("Alice dr-1 o'neil dr"),
            TextQuery::Query {
                exact: "'alice' & ('dr' <-> '1') & ('o' <-> 'neil') & 'dr'".into(),
                words: "'1' & 'alice' & 'dr' & 'neil' & 'o'".into(),
            }
        );
        assert_eq!(tsvector_literal("A b, a"), "'a':1 'b':2 'a':3");
    }
}
