//! The search index (`index.db`): derived from the log, maintained just behind it.
//!
//! Layout: `ev` holds one row per event (`pos` = the log's row id) with the filterable fields
//! and `ts` (event `timestamp` in Unix µs). `fts` is a contentless FTS5 table keyed by the same
//! `pos`, with two columns: `text` (the event's free text, for `q`) and `tags` (one exact-match
//! token per high-cardinality filter value, see [`tag_token`]). `state.indexed_pos` is the last
//! log position indexed, updated in the same transaction as the rows, so a crash never leaves
//! the index claiming rows it lacks.
//!
//! Which filter uses which structure (measured, BENCHMARKS.md "Ingest (issue 2)"):
//! - `ts`, `action`, `status`, `dataClassification`, `organizationId`, `targetResourceType`,
//!   `principalId` have a B-tree on `(field, ts)`, so a filtered, newest-first page is an index
//!   range scan. These fields have few distinct values, so new rows land at the right edge of
//!   a few groups and the pages an index transaction touches stay in the page cache.
//! - `targetResourceId`, `sessionId`, `ipAddress`, `patientId`, `dataSubjectId`,
//!   `correlationId` are (nearly) unique per event. A B-tree on each of them made every new row
//!   touch a random leaf page per index: once the index outgrew the page cache, each index
//!   transaction rewrote one page per row per index (WAL and checkpoint), and the indexer fell
//!   from 16k to under 7k rows/s at 1M events — far behind a 50k events/s log. They are
//!   indexed instead as tokens in the FTS5 `tags` column: FTS5 buffers a transaction's tokens
//!   and writes them as one sorted segment (merged later, sequentially), so its cost does not
//!   grow with the index. A query on such a field finds the candidate rows through the tag and
//!   still compares the stored value exactly (`ev` keeps every field), so a hash collision can
//!   never return a wrong event; matches of such a value are few by nature, so sorting them by
//!   `ts` is cheap.

use crate::StoreError;
use crate::model::{SearchPage, SearchQuery, StoredEvent};
use base64::Engine;
use rusqlite::{Connection, ToSql, params};
use serde_json::Value;

/// The fields of one event that the index stores.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct IndexRow {
    pub(crate) ts: i64,
    pub(crate) log_id: String,
    pub(crate) action: String,
    pub(crate) status: String,
    pub(crate) classification: Option<String>,
    pub(crate) principal_id: Option<String>,
    pub(crate) organization_id: Option<String>,
    pub(crate) target_type: Option<String>,
    pub(crate) target_id: Option<String>,
    pub(crate) session_id: Option<String>,
    pub(crate) ip: Option<String>,
    pub(crate) patient_id: Option<String>,
    pub(crate) subject_id: Option<String>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) emergency: bool,
    pub(crate) text: String,
}

/// Top-level fields whose strings are not free text (ids, hashes, server bookkeeping).
const NOT_TEXT: &[&str] = &[
    "id",
    "logId",
    "seq",
    "prevHash",
    "keyId",
    "receivedAt",
    "timestamp",
    "eventVersion",
    "redactions",
    "idempotencyKey",
    "sealed",
];

fn collect_text(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(s);
        }
        Value::Array(items) => items.iter().for_each(|v| collect_text(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_text(v, out)),
        _ => {}
    }
}

/// The exact-match token of a high-cardinality filter value in the FTS `tags` column: a
/// one-letter field prefix and 64 bits of SHA-256 of the value in hex. Lowercase letters and
/// digits only, so FTS5's tokenizer keeps it whole; stable across versions (the index
/// persists). A collision only adds a candidate that the exact column comparison then drops.
pub(crate) fn tag_token(field: char, value: &str) -> String {
    let digest = vellum_core::integrity::sha256(value.as_bytes());
    let mut token = String::with_capacity(17);
    token.push(field);
    token.push_str(&hex::encode(&digest[..8]));
    token
}

/// The high-cardinality filters indexed as FTS tags: (column of `ev`, tag prefix).
pub(crate) const TAG_COLUMNS: [(&str, char); 6] = [
    ("target_id", 't'),
    ("session_id", 's'),
    ("ip", 'i'),
    ("patient_id", 'p'),
    ("subject_id", 'd'),
    ("correlation_id", 'c'),
];

impl IndexRow {
    /// The `tags` column text: one token per present high-cardinality field.
    fn tags(&self) -> String {
        let values = [
            &self.target_id,
            &self.session_id,
            &self.ip,
            &self.patient_id,
            &self.subject_id,
            &self.correlation_id,
        ];
        let mut tags = String::new();
        for ((_, prefix), value) in TAG_COLUMNS.iter().zip(values) {
            if let Some(value) = value {
                if !tags.is_empty() {
                    tags.push(' ');
                }
                tags.push_str(&tag_token(*prefix, value));
            }
        }
        tags
    }
}

fn string_at(event: &Value, pointer: &str) -> Option<String> {
    event
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Extracts the index row of a stored event's canonical text.
pub(crate) fn extract(canonical: &str) -> Result<IndexRow, StoreError> {
    let event: Value = serde_json::from_str(canonical)
        .map_err(|e| StoreError::Corrupt(format!("stored event is not JSON: {e}")))?;
    let ts = string_at(&event, "/timestamp")
        .or_else(|| string_at(&event, "/receivedAt"))
        .and_then(|t| vellum_core::time_fmt::parse_rfc3339(&t).ok())
        .map(vellum_core::time_fmt::unix_micros)
        .unwrap_or(0);
    let mut text = String::new();
    if let Value::Object(map) = &event {
        for (key, value) in map {
            if !NOT_TEXT.contains(&key.as_str()) {
                collect_text(value, &mut text);
            }
        }
    }
    Ok(IndexRow {
        ts,
        log_id: string_at(&event, "/logId").unwrap_or_default(),
        action: string_at(&event, "/action").unwrap_or_default(),
        status: string_at(&event, "/status").unwrap_or_default(),
        classification: string_at(&event, "/dataClassification"),
        principal_id: string_at(&event, "/principalId"),
        organization_id: string_at(&event, "/organizationId"),
        target_type: string_at(&event, "/targetResourceType"),
        target_id: string_at(&event, "/targetResourceId"),
        session_id: string_at(&event, "/sessionContext/sessionId"),
        ip: string_at(&event, "/sessionContext/ipAddress"),
        patient_id: string_at(&event, "/healthcareContext/patientId"),
        subject_id: string_at(&event, "/gdprContext/dataSubjectId"),
        correlation_id: string_at(&event, "/correlationId"),
        emergency: event.pointer("/healthcareContext/emergencyAccess") == Some(&Value::Bool(true)),
        text,
    })
}

/// Indexes log rows after `indexed_pos`, at most `max_rows`. Returns the new indexed position.
///
/// The rows are read from the log in a short read transaction of their own, *then* indexed in
/// a write transaction on `index.db`: a read transaction held on the log for the whole
/// indexing pins the log's WAL (it cannot restart while a reader uses it), and a WAL that
/// never restarts grows without bound and slows every commit.
pub(crate) fn index_more(
    conn: &mut Connection,
    indexed_pos: i64,
    max_rows: usize,
) -> Result<i64, StoreError> {
    let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
    let rows: Vec<(i64, String)> = {
        let mut read = conn.prepare_cached(
            "SELECT pos, body FROM log.events WHERE pos > ?1 ORDER BY pos LIMIT ?2",
        )?;
        let rows = read.query_map(params![indexed_pos, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let Some(&(last, _)) = rows.last() else {
        return Ok(indexed_pos);
    };
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO ev (pos, ts, log_id, action, status, classification,
                principal_id, organization_id, target_type, target_id, session_id, ip,
                patient_id, subject_id, correlation_id, emergency)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?;
        let mut insert_text =
            tx.prepare_cached("INSERT INTO fts (rowid, text, tags) VALUES (?1, ?2, ?3)")?;
        for (pos, body) in &rows {
            // A row that does not parse is indexed as empty rather than stopping the index;
            // `vellum verify` reports it.
            let fields = extract(body).unwrap_or_default();
            insert.execute(params![
                pos,
                fields.ts,
                fields.log_id,
                fields.action,
                fields.status,
                fields.classification,
                fields.principal_id,
                fields.organization_id,
                fields.target_type,
                fields.target_id,
                fields.session_id,
                fields.ip,
                fields.patient_id,
                fields.subject_id,
                fields.correlation_id,
                fields.emergency,
            ])?;
            let tags = fields.tags();
            if !fields.text.is_empty() || !tags.is_empty() {
                insert_text.execute(params![pos, fields.text, tags])?;
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO state (key, value) VALUES ('indexed_pos', ?1)",
            params![last],
        )?;
    }
    tx.commit()?;
    Ok(last)
}

/// Reads the indexed position recorded in `index.db`.
pub(crate) fn indexed_pos(conn: &Connection) -> Result<i64, StoreError> {
    let value: Option<i64> = conn
        .query_row(
            "SELECT value FROM state WHERE key = 'indexed_pos'",
            [],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })?;
    Ok(value.unwrap_or(0))
}

/// Turns free text into a safe FTS5 query over the `text` column: each whitespace-separated
/// term becomes a quoted phrase (so FTS5 operators in user input are literal), all terms must
/// match. (The column filter keeps `q` off the `tags` column.)
///
/// C0 control characters other than tab and newline are dropped first, as sanitization drops
/// them from stored text (so the query means what it would mean against the stored form);
/// a NUL in particular would end FTS5's query text early and turn the query into a syntax
/// error.
pub(crate) fn fts_query(q: &str) -> Option<String> {
    let cleaned: std::borrow::Cow<'_, str> =
        if q.chars().any(|c| c <= '\u{1f}' && c != '\t' && c != '\n') {
            q.chars()
                .filter(|&c| c > '\u{1f}' || c == '\t' || c == '\n')
                .collect::<String>()
                .into()
        } else {
            q.into()
        };
    let terms: Vec<String> = cleaned
        .split_whitespace()
        .map(|t| format!("text : \"{}\"", t.replace('"', "\"\"")))
        .collect();
    if terms.is_empty() {
        None
    } else {
        Some(terms.join(" AND "))
    }
}

fn encode_cursor(ts: i64, pos: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{ts}:{pos}"))
}

fn decode_cursor(cursor: &str) -> Result<(i64, i64), StoreError> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    let text = String::from_utf8(raw).map_err(|_| StoreError::BadCursor)?;
    let (ts, pos) = text.split_once(':').ok_or(StoreError::BadCursor)?;
    Ok((
        ts.parse().map_err(|_| StoreError::BadCursor)?,
        pos.parse().map_err(|_| StoreError::BadCursor)?,
    ))
}

/// Upper bound for a prefix range scan: any string that starts with the prefix sorts below
/// `prefix || U+10FFFF` in SQLite's binary collation.
fn prefix_upper(prefix: &str) -> String {
    let mut upper = String::with_capacity(prefix.len() + 4);
    upper.push_str(prefix);
    upper.push('\u{10FFFF}');
    upper
}

/// How a full-text (or tag) condition joins the rest of the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FtsPlan {
    /// `pos IN (SELECT rowid FROM fts WHERE MATCH …)`: materialize the matches, then filter and
    /// sort them. Right when the match set is small (a patient, a session, a rare word).
    Materialize,
    /// `EXISTS (… MATCH … AND rowid = i.pos)`: walk `ev` newest first (or along another
    /// filter's index) and probe FTS for each row, stopping at the page size. Right when the
    /// match set is large (a common word matching millions: materializing and sorting them took
    /// ~4 s on 10M events).
    Probe,
}

/// Bounds of the match count beyond which [`FtsPlan::Probe`] is used (see [`choose_fts_plan`]).
const FTS_MATERIALIZE_MIN: i64 = 2_000;
const FTS_MATERIALIZE_MAX: i64 = 200_000;

/// The FTS5 expression of `query`'s tag filters and `q`, if any.
fn fts_expression(query: &SearchQuery) -> Option<String> {
    let mut terms: Vec<String> = Vec::new();
    for ((_, prefix), value) in TAG_COLUMNS.iter().zip([
        &query.target_resource_id,
        &query.session_id,
        &query.ip_address,
        &query.patient_id,
        &query.data_subject_id,
        &query.correlation_id,
    ]) {
        if let Some(value) = value {
            terms.push(format!("tags : {}", tag_token(*prefix, value)));
        }
    }
    if let Some(q) = query.q.as_deref().and_then(fts_query) {
        terms.push(q);
    }
    (!terms.is_empty()).then(|| terms.join(" AND "))
}

/// Chooses the full-text plan. Materializing M matches costs about M × 40 µs (measured on 10M
/// events: row lookups and the sort); probing costs about `limit × rows / M` probes of ~100 µs
/// (the walk meets a match every `rows / M` rows). They cross near `M = sqrt(2.5 × limit ×
/// rows)`, so matches are counted up to that bound (FTS5 stops there) and the cheaper plan is
/// taken. Near the crossover both cost the same, ~1.4 s on 10M events: a page of a
/// mid-frequency word with no other filter is the slowest search there is (BENCHMARKS.md). The
/// lasting fix is an FTS rowid in timestamp order, so FTS5 itself returns newest first.
pub(crate) fn choose_fts_plan(
    conn: &Connection,
    query: &SearchQuery,
) -> Result<FtsPlan, StoreError> {
    let Some(expr) = fts_expression(query) else {
        return Ok(FtsPlan::Materialize);
    };
    let rows: i64 = conn
        .prepare_cached("SELECT coalesce(max(pos), 0) FROM ev")?
        .query_row([], |r| r.get(0))?;
    let limit = i64::try_from(query.limit.clamp(1, 1000)).unwrap_or(1000);
    let crossover = ((2.5 * limit as f64 * rows as f64).sqrt()) as i64;
    let bound = crossover.clamp(FTS_MATERIALIZE_MIN, FTS_MATERIALIZE_MAX);
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM (SELECT rowid FROM fts WHERE fts MATCH ?1 LIMIT ?2)")?
        .query_row(params![expr, bound + 1], |r| r.get(0))?;
    Ok(if n > bound {
        FtsPlan::Probe
    } else {
        FtsPlan::Materialize
    })
}

/// Appends the SQL conditions (on `ev i`) of every filter of `query` except the cursor.
pub(crate) fn push_filters(
    query: &SearchQuery,
    plan: FtsPlan,
    sql: &mut String,
    args: &mut Vec<Box<dyn ToSql>>,
) {
    let eq = |sql: &mut String, args: &mut Vec<Box<dyn ToSql>>, col: &str, v: &Option<String>| {
        if let Some(v) = v {
            args.push(Box::new(v.clone()));
            sql.push_str(&format!(" AND i.{col} = ?{}", args.len()));
        }
    };
    eq(sql, args, "principal_id", &query.principal_id);
    eq(sql, args, "organization_id", &query.organization_id);
    eq(sql, args, "status", &query.status);
    eq(sql, args, "classification", &query.data_classification);
    eq(sql, args, "target_type", &query.target_resource_type);
    // High-cardinality filters: candidates through their FTS tag, then the exact value.
    let mut fts_terms: Vec<String> = Vec::new();
    for ((column, prefix), value) in TAG_COLUMNS.iter().zip([
        &query.target_resource_id,
        &query.session_id,
        &query.ip_address,
        &query.patient_id,
        &query.data_subject_id,
        &query.correlation_id,
    ]) {
        if let Some(value) = value {
            fts_terms.push(format!("tags : {}", tag_token(*prefix, value)));
            eq(sql, args, column, &Some(value.clone()));
        }
    }
    if let Some(action) = &query.action {
        if let Some(prefix) = action.strip_suffix('*') {
            args.push(Box::new(prefix.to_owned()));
            sql.push_str(&format!(" AND i.action >= ?{}", args.len()));
            args.push(Box::new(prefix_upper(prefix)));
            sql.push_str(&format!(" AND i.action < ?{}", args.len()));
        } else {
            args.push(Box::new(action.clone()));
            sql.push_str(&format!(" AND i.action = ?{}", args.len()));
        }
    }
    if let Some(from) = query.from_micros {
        args.push(Box::new(from));
        sql.push_str(&format!(" AND i.ts >= ?{}", args.len()));
    }
    if let Some(to) = query.to_micros {
        args.push(Box::new(to));
        sql.push_str(&format!(" AND i.ts < ?{}", args.len()));
    }
    if let Some(q) = query.q.as_deref().and_then(fts_query) {
        fts_terms.push(q);
    }
    if !fts_terms.is_empty() {
        args.push(Box::new(fts_terms.join(" AND ")));
        match plan {
            FtsPlan::Materialize => sql.push_str(&format!(
                " AND i.pos IN (SELECT rowid FROM fts WHERE fts MATCH ?{})",
                args.len()
            )),
            FtsPlan::Probe => sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM fts WHERE fts MATCH ?{} AND fts.rowid = i.pos)",
                args.len()
            )),
        }
    }
}

/// Runs a search on a reader connection (index main, log attached).
pub(crate) fn search(conn: &Connection, query: &SearchQuery) -> Result<SearchPage, StoreError> {
    let limit = query.limit.clamp(1, 1000);
    let mut sql = String::from(
        "SELECT i.ts, e.pos, e.log_id, e.seq, e.body, e.hash, e.signature
         FROM ev i JOIN log.events e ON e.pos = i.pos WHERE 1 = 1",
    );
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    let plan = choose_fts_plan(conn, query)?;
    push_filters(query, plan, &mut sql, &mut args);
    if let Some(cursor) = &query.cursor {
        let (ts, pos) = decode_cursor(cursor)?;
        args.push(Box::new(ts));
        let ts_arg = args.len();
        args.push(Box::new(pos));
        sql.push_str(&format!(
            " AND (i.ts < ?{ts_arg} OR (i.ts = ?{ts_arg} AND i.pos < ?{}))",
            args.len()
        ));
    }
    args.push(Box::new(i64::try_from(limit + 1).unwrap_or(1001)));
    sql.push_str(&format!(
        " ORDER BY i.ts DESC, i.pos DESC LIMIT ?{}",
        args.len()
    ));

    let mut stmt = conn.prepare_cached(&sql)?;
    let arg_refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
    let mut rows = stmt.query(arg_refs.as_slice())?;
    let mut events = Vec::with_capacity(limit.min(64));
    let mut last_key = None;
    let mut more = false;
    while let Some(row) = rows.next()? {
        if events.len() == limit {
            more = true;
            break;
        }
        let ts: i64 = row.get(0)?;
        let event = StoredEvent {
            pos: row.get(1)?,
            log_id: row.get(2)?,
            seq: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
            canonical: row.get(4)?,
            hash: row.get(5)?,
            signature: row.get(6)?,
        };
        last_key = Some((ts, event.pos));
        events.push(event);
    }
    let next_cursor = if more {
        last_key.map(|(ts, pos)| encode_cursor(ts, pos))
    } else {
        None
    };
    Ok(SearchPage {
        events,
        next_cursor,
        index_lag: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts_query_quotes_terms() {
        assert_eq!(fts_query("  "), None);
        assert_eq!(
            fts_query("alice OR \"x"),
            Some("text : \"alice\" AND text : \"OR\" AND text : \"\"\"x\"".to_owned())
        );
    }

    #[test]
    fn fts_query_drops_control_characters() {
        assert_eq!(fts_query("ze\u{0}bra"), Some("text : \"zebra\"".to_owned()));
        assert_eq!(fts_query("\u{0}\u{1}"), None);
        assert_eq!(
            fts_query("a\tb\nc"),
            Some("text : \"a\" AND text : \"b\" AND text : \"c\"".to_owned())
        );
    }

    #[test]
    fn cursor_round_trip_and_garbage() {
        let c = encode_cursor(-5, 42);
        assert_eq!(decode_cursor(&c).expect("valid"), (-5, 42));
        assert!(matches!(decode_cursor("!!"), Err(StoreError::BadCursor)));
        assert!(matches!(decode_cursor("eHl6"), Err(StoreError::BadCursor)));
    }

    #[test]
    fn extract_reads_fields_and_text() {
        let row = extract(
            r#"{"action":"fhir.patient.read","status":"success","timestamp":"2026-01-01T00:00:00Z",
                "principalId":"dr-1","sessionContext":{"ipAddress":"10.0.0.1","sessionId":"s1"},
                "healthcareContext":{"patientId":"p-9"},"outcomeDescription":"chart opened",
                "prevHash":"00","logId":"default"}"#,
        )
        .expect("json");
        assert_eq!(row.ts, 1_767_225_600_000_000);
        assert_eq!(row.principal_id.as_deref(), Some("dr-1"));
        assert_eq!(row.ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(row.patient_id.as_deref(), Some("p-9"));
        assert!(row.text.contains("chart opened"));
        assert!(!row.text.contains("default"));
    }
}
