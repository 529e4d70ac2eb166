//! The search index (`index.db`): derived from the log, maintained just behind it.
//!
//! Layout: `ev` holds one row per event, keyed by its **sort key** `k` (see [`sort_key`]:
//! the event `timestamp` in ms, shifted left 20 bits, plus a slot), with the log's row id
//! `pos`, the exact timestamp `ts` (Unix µs) and the filterable fields. `fts` is a contentless
//! FTS5 table whose rowid is the same `k`, with two columns: `text` (the event's free text, for
//! `q`) and `tags` (one exact-match token per high-cardinality filter value, see
//! [`tag_token`]). `state.indexed_pos` is the last log position indexed, updated in the same
//! transaction as the rows, so a crash never leaves the index claiming rows it lacks.
//!
//! Why one time-ordered key everywhere: every search returns newest first and pages with a
//! keyset cursor. With the key as `ev`'s rowid, every B-tree entry ends with it, so an
//! equality on an indexed column is already in result order, a time range is a range of
//! `k`, and FTS5 (which iterates in rowid order, both ways) returns full-text matches newest
//! first and stops at the page size. Before (v3, rowid = log position) a full-text page had to
//! either sort all matches or probe FTS row by row along the time index: a word matching ~60k of
//! 10M events took ~1.1 s.
//!
//! Which filter uses which structure (measured, BENCHMARKS.md "Ingest (issue 2)"):
//! - `action`, `status`, `dataClassification`, `organizationId`, `targetResourceType`,
//!   `principalId` have a B-tree (entries `(field, k)`), so a filtered page is an index
//!   range scan. These fields have few distinct values, so new rows land at the right edge of
//!   a few groups and the pages an index transaction touches stay in the page cache. An
//!   `action` prefix matching several actions is answered as a merge of one walk per action
//!   (each already in order) instead of sorting every match.
//! - `targetResourceId`, `sessionId`, `ipAddress`, `patientId`, `dataSubjectId`,
//!   `correlationId` are (nearly) unique per event. A B-tree on each of them made every new
//!   row touch a random leaf page per index: once the index outgrew the page cache, each index
//!   transaction rewrote one page per row per index (WAL and checkpoint), and the indexer fell
//!   from 16k to under 7k rows/s at 1M events — far behind a 50k events/s log. They are
//!   indexed instead as tokens in the FTS5 `tags` column: FTS5 buffers a transaction's tokens
//!   and writes them as one sorted segment (merged later, sequentially), so its cost does not
//!   grow with the index. A query on such a field finds the candidate rows through the tag and
//!   still compares the stored value exactly (`ev` keeps every field), so a hash collision can
//!   never return a wrong event.
//!
//! Insert cost assumes events arrive roughly in timestamp order (they do: a timestamp is when
//! the action happened, sent within moments, or hours later from a client's spool): `ev` rows
//! then append at the right edge of its B-tree. A late event costs one page write in the middle.

use crate::StoreError;
use crate::model::{SearchPage, SearchQuery, StoredEvent};
use base64::Engine;
use rusqlite::{Connection, ToSql, params};

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

pub(crate) use crate::extract::extract;

/// Bits of the sort key below the millisecond: the slot that orders and separates events of
/// the same millisecond.
const SLOT_BITS: u32 = 20;
const SLOT_MASK: i64 = (1 << SLOT_BITS) - 1;
/// Milliseconds are clamped to ±2^42 (±139 years around 1970) so the key fits an `i64`;
/// validation keeps real timestamps far inside.
const MAX_MS: i64 = (1 << 42) - 1;

/// The millisecond of a timestamp in Unix µs, clamped to the sort key's range.
fn key_ms(ts_micros: i64) -> i64 {
    ts_micros.div_euclid(1000).clamp(-MAX_MS, MAX_MS)
}

/// The preferred sort key of the event at log position `pos` with timestamp `ts_micros`:
/// `ms << 20 | (pos mod 2^20)`. Ordering by it is ordering by timestamp at millisecond
/// precision, then (within a millisecond) by slot, which follows log order unless the log
/// position wraps 2^20 inside that millisecond or the slot was taken (see [`index_more`]). It
/// is unique, so it is `ev`'s rowid, the FTS5 rowid and the keyset cursor at once.
pub(crate) fn sort_key(ts_micros: i64, pos: i64) -> i64 {
    (key_ms(ts_micros) << SLOT_BITS) | (pos & SLOT_MASK)
}

/// The lowest sort key of events with `timestamp >= from_micros`.
fn key_from(from_micros: i64) -> i64 {
    key_ms(from_micros) << SLOT_BITS
}

/// A sort key above every event with `timestamp < to_micros`.
fn key_to(to_micros: i64) -> i64 {
    (key_ms(to_micros.saturating_sub(1)) + 1) << SLOT_BITS
}

/// Indexes log rows after `indexed_pos`, at most `max_rows`. Returns the new indexed position.
///
/// The rows are read from the log in a short read transaction of their own, *then* indexed in
/// a write transaction on `index.db`: a read transaction held on the log for the whole
/// indexing pins the log's WAL (it cannot restart while a reader uses it), and a WAL that
/// never restarts grows without bound and slows every commit.
///
/// Each row takes the sort key [`sort_key`] proposes; if another event of the same
/// millisecond already holds that slot (an event whose log position is a multiple of 2^20
/// away, with the very same millisecond), the next free slot of that millisecond is taken.
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
            "INSERT OR IGNORE INTO ev (k, pos, ts, log_id, action, status, classification,
                principal_id, organization_id, target_type, target_id, session_id, ip,
                patient_id, subject_id, correlation_id, emergency)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )?;
        let mut pos_taken = tx.prepare_cached("SELECT 1 FROM ev WHERE pos = ?1")?;
        let mut insert_text =
            tx.prepare_cached("INSERT INTO fts (rowid, text, tags) VALUES (?1, ?2, ?3)")?;
        for (pos, body) in &rows {
            // A purged event (tombstone) is not searchable.
            if vellum_core::retention::Tombstone::from_body(body).is_some() {
                continue;
            }
            // A row that does not parse is indexed as empty rather than stopping the index;
            // `vellum verify` reports it.
            let fields = extract(body).unwrap_or_default();
            let preferred = sort_key(fields.ts, *pos);
            let mut key = None;
            for step in 0..=SLOT_MASK {
                let candidate = (preferred & !SLOT_MASK) | ((preferred + step) & SLOT_MASK);
                let inserted = insert.execute(params![
                    candidate,
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
                if inserted == 1 {
                    key = Some(candidate);
                    break;
                }
                if pos_taken.exists(params![pos])? {
                    // Already indexed (cannot happen while `indexed_pos` is kept with the
                    // rows; harmless if it does).
                    break;
                }
            }
            let Some(key) = key else {
                if !pos_taken.exists(params![pos])? {
                    tracing::warn!(
                        pos,
                        "2^20 events share this millisecond; event not searchable"
                    );
                }
                continue;
            };
            let tags = fields.tags();
            if !fields.text.is_empty() || !tags.is_empty() {
                insert_text.execute(params![key, fields.text, tags])?;
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

fn encode_cursor(key: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("k{key}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, StoreError> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    let text = String::from_utf8(raw).map_err(|_| StoreError::BadCursor)?;
    text.strip_prefix('k')
        .and_then(|k| k.parse().ok())
        .ok_or(StoreError::BadCursor)
}

/// Upper bound for a prefix range scan: any string that starts with the prefix sorts below
/// `prefix || U+10FFFF` in SQLite's binary collation.
fn prefix_upper(prefix: &str) -> String {
    let mut upper = String::with_capacity(prefix.len() + 4);
    upper.push_str(prefix);
    upper.push('\u{10FFFF}');
    upper
}

/// SQL text with its positional arguments, built up condition by condition.
#[derive(Default)]
pub(crate) struct Sql {
    pub(crate) text: String,
    pub(crate) args: Vec<Box<dyn ToSql>>,
}

impl Sql {
    /// Adds an argument and returns its `?N` placeholder.
    fn arg(&mut self, value: impl ToSql + 'static) -> String {
        self.args.push(Box::new(value));
        format!("?{}", self.args.len())
    }

    fn arg_refs(&self) -> Vec<&dyn ToSql> {
        self.args.iter().map(|a| a.as_ref()).collect()
    }
}

/// How a full-text (or tag) condition joins the rest of the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FtsPlan {
    /// No FTS condition in the query.
    None,
    /// Drive the query from FTS5, newest match first (`ORDER BY rowid DESC`), looking up each
    /// match's `ev` row and stopping at the page size. Visits at most every match, and only
    /// until the page is full.
    Walk,
    /// Drive the query from an `ev` index newest first and probe FTS per row (`EXISTS (…
    /// MATCH … AND rowid = k)`). Right when the other filters are selective and the words
    /// common (a principal's events mentioning "exported"): walking the word's matches would
    /// meet that principal rarely.
    Probe,
    /// `k IN (SELECT rowid FROM fts WHERE MATCH …)`: the whole match set, for aggregates.
    Materialize,
}

/// How the `action` filter is written.
#[derive(Debug, Clone, Copy)]
enum ActionSql<'a> {
    /// As the query says: equality, or a range for a prefix.
    AsQueried,
    /// One action of a prefix's expansion (one arm of a merge).
    Exactly(&'a str),
}

/// The FTS5 expression of `query`'s tag filters and `q`, if any.
fn fts_expression(query: &SearchQuery) -> Option<String> {
    let mut terms: Vec<String> = Vec::new();
    for ((_, prefix), value) in TAG_COLUMNS.iter().zip(query.tag_filters()) {
        if let Some(value) = value {
            terms.push(format!("tags : {}", tag_token(*prefix, value)));
        }
    }
    if let Some(q) = query.q.as_deref().and_then(fts_query) {
        terms.push(q);
    }
    (!terms.is_empty()).then(|| terms.join(" AND "))
}

/// Whether `query` filters on an `ev` column with its own B-tree (everything but time, tags and
/// `q`).
fn has_column_filters(query: &SearchQuery) -> bool {
    query.principal_id.is_some()
        || query.organization_id.is_some()
        || query.action.is_some()
        || query.status.is_some()
        || query.data_classification.is_some()
        || query.target_resource_type.is_some()
}

/// Candidates are counted up to this many rows when choosing a plan; beyond, the count is
/// extrapolated from how much of the key range those rows covered.
const PLAN_COUNT_CAP: i64 = 20_000;
/// A probe (an FTS5 query set up for one rowid) costs about this many walk steps (FTS5's next
/// match plus an `ev` lookup by key): ~100 µs against ~1.5 µs on 10M events (BENCHMARKS.md).
const PROBE_COST_IN_WALK_STEPS: i64 = 50;

/// Estimates how many rows a candidate set has from its newest `PLAN_COUNT_CAP + 1` keys:
/// exact when there are fewer, else extrapolated over the key range (events are spread over
/// time about evenly at this scale; the estimate only picks a plan, never a result).
fn estimate_rows(
    conn: &Connection,
    newest_keys_sql: &str,
    args: &[&dyn ToSql],
    key_range: Option<(i64, i64)>,
) -> Result<i64, StoreError> {
    let sql = format!("SELECT count(*), min(k) FROM ({newest_keys_sql})");
    let (count, oldest): (i64, Option<i64>) = conn
        .prepare_cached(&sql)?
        .query_row(args, |r| Ok((r.get(0)?, r.get(1)?)))?;
    let Some((low, high)) = key_range.filter(|_| count > PLAN_COUNT_CAP) else {
        return Ok(count);
    };
    let covered = (high - oldest.unwrap_or(low)).max(1) as f64;
    let total = (high - low).max(1) as f64;
    Ok(((count as f64) * (total / covered)).min(i64::MAX as f64) as i64)
}

/// Chooses how the FTS condition of a search joins the rest.
///
/// With no column filter the answer is [`FtsPlan::Walk`]: matches come newest first and each
/// one is a result. With column filters, both plans stop when the page is full, after about
/// `limit × rows / F` walk steps (F = rows the column filters keep) or `limit × rows / M` probes
/// (M = FTS matches), and neither visits more than its whole candidate set; F and M are
/// estimated by [`estimate_rows`] and the cheaper expected cost wins (filters assumed
/// independent).
fn choose_fts_plan(conn: &Connection, query: &SearchQuery) -> Result<FtsPlan, StoreError> {
    let Some(expr) = fts_expression(query) else {
        return Ok(FtsPlan::None);
    };
    if !has_column_filters(query) {
        return Ok(FtsPlan::Walk);
    }
    let (first_key, last_key): (Option<i64>, Option<i64>) = conn
        // Two subqueries: SQLite answers a lone min() or max() from the B-tree edge, but
        // `SELECT min(k), max(k)` scans the whole table (1.2 s on 10M rows).
        .prepare_cached("SELECT (SELECT min(k) FROM ev), (SELECT max(k) FROM ev)")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(first_key), Some(last_key)) = (first_key, last_key) else {
        return Ok(FtsPlan::Walk);
    };
    let rows: i64 = conn
        .prepare_cached("SELECT coalesce(max(pos), 0) FROM ev")?
        .query_row([], |r| r.get(0))?;
    let limit = i64::try_from(query.limit.clamp(1, 1000)).unwrap_or(1000);
    let (lo, hi) = key_bounds(query);
    let key_range = (lo.max(first_key), hi.min(last_key.saturating_add(1)));
    let matches = estimate_rows(
        conn,
        "SELECT rowid AS k FROM fts WHERE fts MATCH ?1 AND rowid >= ?2 AND rowid < ?3
         ORDER BY rowid DESC LIMIT ?4",
        &[&expr, &lo, &hi, &(PLAN_COUNT_CAP + 1)],
        Some(key_range),
    )?;
    let mut column_filters = query.clone();
    column_filters.q = None;
    for field in [
        &mut column_filters.target_resource_id,
        &mut column_filters.session_id,
        &mut column_filters.ip_address,
        &mut column_filters.patient_id,
        &mut column_filters.data_subject_id,
        &mut column_filters.correlation_id,
    ] {
        *field = None;
    }
    let mut keys_sql = Sql::default();
    keys_sql
        .text
        .push_str("SELECT i.k AS k FROM ev i WHERE 1 = 1");
    push_conditions(
        &column_filters,
        "i.k",
        FtsPlan::None,
        ActionSql::AsQueried,
        &mut keys_sql,
    );
    let cap = keys_sql.arg(PLAN_COUNT_CAP + 1);
    // Newest first along the filter's index, except for an action prefix (its rows are not
    // in key order, and ordering them would sort them all): then a capped count is taken as
    // it is, an underestimate that only makes the walk look cheaper.
    let prefix = query.action.as_deref().is_some_and(|a| a.ends_with('*'));
    if prefix {
        keys_sql.text.push_str(&format!(" LIMIT {cap}"));
    } else {
        keys_sql
            .text
            .push_str(&format!(" ORDER BY i.k DESC LIMIT {cap}"));
    }
    let filtered = estimate_rows(
        conn,
        &keys_sql.text,
        keys_sql.arg_refs().as_slice(),
        (!prefix).then_some(key_range),
    )?;
    let expected = |candidates: i64, other: i64| {
        let until_full = limit.saturating_mul(rows) / other.max(1);
        until_full.min(candidates)
    };
    let walk = expected(matches, filtered);
    let probe = expected(filtered, matches).saturating_mul(PROBE_COST_IN_WALK_STEPS);
    tracing::debug!(matches, filtered, walk, probe, "full-text plan");
    Ok(if walk <= probe {
        FtsPlan::Walk
    } else {
        FtsPlan::Probe
    })
}

/// The range of sort keys `query`'s time filters allow: `[lo, hi)`.
fn key_bounds(query: &SearchQuery) -> (i64, i64) {
    (
        query.from_micros.map_or(i64::MIN, key_from),
        query.to_micros.map_or(i64::MAX, key_to),
    )
}

/// Appends the conditions (on `ev i`) of every filter of `query` except the cursor and, for
/// [`FtsPlan::Walk`], the MATCH itself (the caller drives the query from FTS then). `key` is
/// the column expression of the sort key the query is driven by (`i.k`, or `fts.rowid` when
/// walking FTS, so FTS5 sees the range itself).
fn push_conditions(
    query: &SearchQuery,
    key: &str,
    plan: FtsPlan,
    action: ActionSql<'_>,
    sql: &mut Sql,
) {
    let eq = |sql: &mut Sql, col: &str, v: &Option<String>| {
        if let Some(v) = v {
            let p = sql.arg(v.clone());
            sql.text.push_str(&format!(" AND i.{col} = {p}"));
        }
    };
    eq(sql, "principal_id", &query.principal_id);
    eq(sql, "organization_id", &query.organization_id);
    eq(sql, "status", &query.status);
    eq(sql, "classification", &query.data_classification);
    eq(sql, "target_type", &query.target_resource_type);
    // High-cardinality filters: candidates through their FTS tag, then the exact value.
    for ((column, _), value) in TAG_COLUMNS.iter().zip(query.tag_filters()) {
        eq(sql, column, value);
    }
    match (action, &query.action) {
        (ActionSql::Exactly(one), _) => {
            let p = sql.arg(one.to_owned());
            sql.text.push_str(&format!(" AND i.action = {p}"));
        }
        (ActionSql::AsQueried, Some(action)) => {
            if let Some(prefix) = action.strip_suffix('*') {
                let lo = sql.arg(prefix.to_owned());
                let hi = sql.arg(prefix_upper(prefix));
                sql.text
                    .push_str(&format!(" AND i.action >= {lo} AND i.action < {hi}"));
            } else {
                let p = sql.arg(action.clone());
                sql.text.push_str(&format!(" AND i.action = {p}"));
            }
        }
        (ActionSql::AsQueried, None) => {}
    }
    // Time: a range of the sort key (millisecond precision, served by every index), then the
    // exact bound on the stored µs timestamp.
    if let Some(from) = query.from_micros {
        let k = sql.arg(key_from(from));
        let t = sql.arg(from);
        sql.text
            .push_str(&format!(" AND {key} >= {k} AND i.ts >= {t}"));
    }
    if let Some(to) = query.to_micros {
        let k = sql.arg(key_to(to));
        let t = sql.arg(to);
        sql.text
            .push_str(&format!(" AND {key} < {k} AND i.ts < {t}"));
    }
    if let Some(expr) = fts_expression(query) {
        match plan {
            FtsPlan::None | FtsPlan::Walk => {}
            FtsPlan::Materialize => {
                let p = sql.arg(expr);
                sql.text.push_str(&format!(
                    " AND i.k IN (SELECT rowid FROM fts WHERE fts MATCH {p})"
                ));
            }
            FtsPlan::Probe => {
                let p = sql.arg(expr);
                sql.text.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM fts WHERE fts MATCH {p} AND fts.rowid = i.k)"
                ));
            }
        }
    }
}

/// Appends the conditions of every filter of `query` (for aggregates: the FTS matches are
/// materialized, an action prefix is a range).
pub(crate) fn push_filters(query: &SearchQuery, sql: &mut Sql) {
    push_conditions(
        query,
        "i.k",
        FtsPlan::Materialize,
        ActionSql::AsQueried,
        sql,
    );
}

/// An action prefix matching at most this many distinct actions is answered as a merge of one
/// ordered walk per action; broader prefixes walk the sort key and filter.
const MAX_MERGED_ACTIONS: usize = 64;

/// How an `action=prefix*` filter is served.
#[derive(Debug, Clone)]
enum ActionPlan {
    /// Exact action, no action filter, or a prefix SQLite serves well enough as a range.
    AsQueried,
    /// The prefix matches no action at all.
    Nothing,
    /// Merge one walk per action (each already newest first) instead of sorting all matches.
    Merge(Vec<String>),
}

/// Expands an action prefix into the distinct actions it matches, by skipping along
/// `ev_action` (one index seek per distinct action, however many events each has).
fn plan_action(conn: &Connection, query: &SearchQuery) -> Result<ActionPlan, StoreError> {
    let Some(prefix) = query.action.as_deref().and_then(|a| a.strip_suffix('*')) else {
        return Ok(ActionPlan::AsQueried);
    };
    let mut stmt = conn.prepare_cached(
        "WITH RECURSIVE a(x) AS (
             SELECT min(action) FROM ev WHERE action >= ?1 AND action < ?2
             UNION ALL
             SELECT (SELECT min(action) FROM ev WHERE action > a.x AND action < ?2)
             FROM a WHERE a.x IS NOT NULL
         )
         SELECT x FROM a WHERE x IS NOT NULL LIMIT ?3",
    )?;
    let limit = i64::try_from(MAX_MERGED_ACTIONS + 1).unwrap_or(65);
    let actions: Vec<String> = stmt
        .query_map(params![prefix, prefix_upper(prefix), limit], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(match actions.len() {
        0 => ActionPlan::Nothing,
        n if n > MAX_MERGED_ACTIONS => ActionPlan::AsQueried,
        _ => ActionPlan::Merge(actions),
    })
}

/// Runs a search on a reader connection (index main, log attached).
pub(crate) fn search(conn: &Connection, query: &SearchQuery) -> Result<SearchPage, StoreError> {
    let plan = choose_fts_plan(conn, query)?;
    let action_plan = if plan == FtsPlan::Walk {
        // Walking FTS matches: the action is a filter on each match.
        ActionPlan::AsQueried
    } else {
        plan_action(conn, query)?
    };
    search_planned(conn, query, plan, &action_plan)
}

/// Runs a search with the given plans (every plan returns the same page; tests check that).
fn search_planned(
    conn: &Connection,
    query: &SearchQuery,
    plan: FtsPlan,
    action_plan: &ActionPlan,
) -> Result<SearchPage, StoreError> {
    let limit = query.limit.clamp(1, 1000);
    let cursor = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut sql = Sql::default();
    let page_size = |sql: &mut Sql| sql.arg(i64::try_from(limit + 1).unwrap_or(1001));
    match (action_plan, plan) {
        (ActionPlan::Nothing, _) => {
            return Ok(SearchPage {
                events: Vec::new(),
                next_cursor: None,
                index_lag: 0,
            });
        }
        (_, FtsPlan::Walk) => {
            let expr = sql.arg(fts_expression(query).unwrap_or_default());
            sql.text.push_str(&format!(
                "SELECT i.k, e.pos, e.log_id, e.seq, e.body, e.hash, e.signature
                 FROM fts CROSS JOIN ev i ON i.k = fts.rowid
                 JOIN log.events e ON e.pos = i.pos
                 WHERE fts MATCH {expr}"
            ));
            push_conditions(query, "fts.rowid", plan, ActionSql::AsQueried, &mut sql);
            if let Some(k) = cursor {
                let p = sql.arg(k);
                sql.text.push_str(&format!(" AND fts.rowid < {p}"));
            }
            let n = page_size(&mut sql);
            sql.text
                .push_str(&format!(" ORDER BY fts.rowid DESC LIMIT {n}"));
        }
        (ActionPlan::Merge(actions), _) => {
            // One arm per action, each walking `(action, k)` newest first; SQLite merges the
            // arms (MERGE (UNION ALL)) and stops at the page size.
            let mut arms = Vec::with_capacity(actions.len());
            for action in actions {
                let mut arm = std::mem::take(&mut sql);
                let start = arm.text.len();
                arm.text
                    .push_str("SELECT i.k AS k, i.pos AS pos FROM ev i WHERE 1 = 1");
                push_conditions(query, "i.k", plan, ActionSql::Exactly(action), &mut arm);
                if let Some(k) = cursor {
                    let p = arm.arg(k);
                    arm.text.push_str(&format!(" AND i.k < {p}"));
                }
                arms.push(arm.text.split_off(start));
                sql = arm;
            }
            let n = page_size(&mut sql);
            let merged = arms.join(" UNION ALL ");
            sql.text = format!(
                "SELECT m.k, e.pos, e.log_id, e.seq, e.body, e.hash, e.signature
                 FROM ({merged} ORDER BY k DESC LIMIT {n}) m
                 JOIN log.events e ON e.pos = m.pos ORDER BY m.k DESC"
            );
        }
        (ActionPlan::AsQueried, _) => {
            sql.text.push_str(
                "SELECT i.k, e.pos, e.log_id, e.seq, e.body, e.hash, e.signature
                 FROM ev i JOIN log.events e ON e.pos = i.pos WHERE 1 = 1",
            );
            push_conditions(query, "i.k", plan, ActionSql::AsQueried, &mut sql);
            if let Some(k) = cursor {
                let p = sql.arg(k);
                sql.text.push_str(&format!(" AND i.k < {p}"));
            }
            let n = page_size(&mut sql);
            sql.text.push_str(&format!(" ORDER BY i.k DESC LIMIT {n}"));
        }
    }

    tracing::trace!(sql = %sql.text, ?plan, "search");
    let mut stmt = conn.prepare_cached(&sql.text)?;
    let arg_refs = sql.arg_refs();
    let mut rows = stmt.query(arg_refs.as_slice())?;
    let mut events = Vec::with_capacity(limit.min(64));
    let mut last_key = None;
    let mut more = false;
    while let Some(row) = rows.next()? {
        if events.len() == limit {
            more = true;
            break;
        }
        let key: i64 = row.get(0)?;
        let body: String = row.get(4)?;
        // Purged after it was indexed and before the index row was dropped (a crash between
        // the two): not a result.
        if vellum_core::retention::Tombstone::from_body(&body).is_some() {
            continue;
        }
        let event = StoredEvent {
            pos: row.get(1)?,
            log_id: row.get(2)?,
            seq: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
            canonical: body,
            hash: row.get(5)?,
            signature: row.get(6)?,
            id_column: None,
        };
        last_key = Some(key);
        events.push(event);
    }
    let next_cursor = if more {
        last_key.map(encode_cursor)
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
        let c = encode_cursor(-5);
        assert_eq!(decode_cursor(&c).expect("valid"), -5);
        // A cursor of the v3 index (`ts:pos`) is refused, not misread.
        let old = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("17:42");
        assert!(matches!(decode_cursor(&old), Err(StoreError::BadCursor)));
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

    /// A small log and its index in memory: `log.events` holds what the index reads.
    fn indexed(bodies: &[String]) -> Connection {
        let mut conn = Connection::open_in_memory().expect("memory db");
        conn.execute_batch(crate::schema::INDEX_SCHEMA)
            .expect("index schema");
        conn.execute_batch(
            "ATTACH DATABASE ':memory:' AS log;
             CREATE TABLE log.events (pos INTEGER PRIMARY KEY, log_id TEXT, seq INTEGER,
                 body TEXT, hash BLOB, signature BLOB);",
        )
        .expect("log");
        for (i, body) in bodies.iter().enumerate() {
            let pos = i64::try_from(i).expect("small") + 1;
            conn.execute(
                "INSERT INTO log.events VALUES (?1, 'default', ?1, ?2, x'00', NULL)",
                params![pos, body],
            )
            .expect("insert");
        }
        let mut at = 0;
        while at < i64::try_from(bodies.len()).expect("small") {
            at = index_more(&mut conn, at, 97).expect("index");
        }
        conn
    }

    /// Events whose timestamps mostly follow the log, with late arrivals, many events per
    /// millisecond (a batch with one timestamp) and sub-millisecond differences.
    fn sample_log() -> Vec<String> {
        let actions = [
            "fhir.patient.read",
            "fhir.patient.update",
            "fhir.observation.read",
            "auth.login",
            "fhir.p",
        ];
        let words = ["viewed", "amended", "exported", "printed"];
        (0..700u64)
            .map(|k| {
                let mut ms = 1_767_225_630_000 + k * 37;
                if k % 10 == 3 {
                    ms -= (k * 7_919) % 20_000; // late by up to 20 s
                }
                if (200..260).contains(&k) {
                    ms = 1_767_225_640_000; // one batch, one timestamp
                }
                let micros = (k * 13) % 1000;
                let secs = ms / 1000;
                let ts = format!(
                    "2026-01-01T00:{:02}:{:02}.{:03}{:03}Z",
                    (secs - 1_767_225_600) / 60,
                    (secs - 1_767_225_600) % 60,
                    ms % 1000,
                    micros
                );
                serde_json::json!({
                    "action": actions[(k % 5) as usize],
                    "status": if k % 7 == 0 { "failure" } else { "success" },
                    "timestamp": ts,
                    "principalId": format!("dr-{}", k % 3),
                    "healthcareContext": {"patientId": format!("p-{}", k % 11)},
                    "outcomeDescription": format!("{} {} ward {}", words[(k % 4) as usize],
                        if k % 9 == 0 { "rare" } else { "chart" }, k % 6),
                })
                .to_string()
            })
            .collect()
    }

    /// Follows the cursor to the end, returning every event's log position in page order.
    fn all_pages(
        conn: &Connection,
        query: &SearchQuery,
        plan: FtsPlan,
        action_plan: &ActionPlan,
    ) -> Vec<i64> {
        let mut query = query.clone();
        query.limit = 7;
        let mut out = Vec::new();
        loop {
            let page = search_planned(conn, &query, plan, action_plan).expect("search");
            out.extend(page.events.iter().map(|e| e.pos));
            match page.next_cursor {
                Some(c) => query.cursor = Some(c),
                None => return out,
            }
        }
    }

    /// Every plan (walk FTS, probe FTS, materialize; merge per action or a range) returns
    /// exactly the matching events, newest timestamp first at millisecond precision, each once,
    /// the same sequence whichever plan runs, page after page.
    #[test]
    fn every_plan_returns_the_same_pages_in_time_order() {
        let bodies = sample_log();
        let conn = indexed(&bodies);
        let parsed: Vec<IndexRow> = bodies.iter().map(|b| extract(b).expect("json")).collect();
        let from = micros("2026-01-01T00:00:35Z");
        let to = micros("2026-01-01T00:00:40.0005Z");
        let queries: Vec<SearchQuery> = vec![
            SearchQuery {
                q: Some("exported".into()),
                ..Default::default()
            },
            SearchQuery {
                q: Some("rare ward".into()),
                ..Default::default()
            },
            SearchQuery {
                q: Some("amended".into()),
                principal_id: Some("dr-1".into()),
                ..Default::default()
            },
            SearchQuery {
                action: Some("fhir.p*".into()),
                ..Default::default()
            },
            SearchQuery {
                action: Some("fhir.*".into()),
                q: Some("viewed".into()),
                ..Default::default()
            },
            SearchQuery {
                action: Some("fhir.patient.*".into()),
                status: Some("failure".into()),
                ..Default::default()
            },
            SearchQuery {
                patient_id: Some("p-4".into()),
                from_micros: Some(from),
                to_micros: Some(to),
                ..Default::default()
            },
            SearchQuery {
                q: Some("ward".into()),
                from_micros: Some(from),
                to_micros: Some(to),
                ..Default::default()
            },
            SearchQuery {
                principal_id: Some("dr-2".into()),
                from_micros: Some(from),
                ..Default::default()
            },
            SearchQuery {
                action: Some("nothing.*".into()),
                ..Default::default()
            },
            SearchQuery::default(),
        ];
        for query in &queries {
            let expected: std::collections::BTreeSet<i64> = parsed
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    let words = |q: &str| {
                        q.split_whitespace()
                            .all(|w| r.text.split_whitespace().any(|t| t == w))
                    };
                    query.q.as_deref().is_none_or(words)
                        && query
                            .principal_id
                            .as_ref()
                            .is_none_or(|p| r.principal_id.as_ref() == Some(p))
                        && query
                            .patient_id
                            .as_ref()
                            .is_none_or(|p| r.patient_id.as_ref() == Some(p))
                        && query.status.as_ref().is_none_or(|p| &r.status == p)
                        && query
                            .action
                            .as_deref()
                            .is_none_or(|a| match a.strip_suffix('*') {
                                Some(prefix) => r.action.starts_with(prefix),
                                None => r.action == a,
                            })
                        && query.from_micros.is_none_or(|f| r.ts >= f)
                        && query.to_micros.is_none_or(|t| r.ts < t)
                })
                .map(|(i, _)| i64::try_from(i).expect("small") + 1)
                .collect();
            assert!(
                expected.len() > 3 || query.action.as_deref() == Some("nothing.*"),
                "{query:?} should match something"
            );
            let has_text = fts_expression(query).is_some();
            let fts_plans: &[FtsPlan] = if has_text {
                &[FtsPlan::Walk, FtsPlan::Probe, FtsPlan::Materialize]
            } else {
                &[FtsPlan::None]
            };
            let merge = plan_action(&conn, query).expect("expand");
            let mut reference: Option<Vec<i64>> = None;
            for &plan in fts_plans {
                for action_plan in [ActionPlan::AsQueried, merge.clone()] {
                    if matches!(action_plan, ActionPlan::Nothing) {
                        assert!(expected.is_empty(), "{query:?}");
                        continue;
                    }
                    let got = all_pages(&conn, query, plan, &action_plan);
                    let got_set: std::collections::BTreeSet<i64> = got.iter().copied().collect();
                    assert_eq!(got_set.len(), got.len(), "duplicates: {query:?} {plan:?}");
                    assert_eq!(got_set, expected, "{query:?} {plan:?} {action_plan:?}");
                    // Newest first at millisecond precision.
                    for pair in got.windows(2) {
                        let ms = |pos: i64| {
                            parsed[usize::try_from(pos - 1).expect("pos")]
                                .ts
                                .div_euclid(1000)
                        };
                        assert!(ms(pair[0]) >= ms(pair[1]), "{query:?} {plan:?}: order");
                    }
                    match &reference {
                        None => reference = Some(got),
                        Some(r) => assert_eq!(r, &got, "{query:?} {plan:?} {action_plan:?}"),
                    }
                }
            }
        }
        // The automatic choice agrees too.
        let chosen = search(
            &conn,
            &SearchQuery {
                q: Some("exported".into()),
                limit: 1000,
                ..Default::default()
            },
        )
        .expect("search");
        assert_eq!(chosen.events.len(), 175);
    }

    /// Events of one millisecond whose preferred slot is taken still get a key of that
    /// millisecond, and are found.
    #[test]
    fn a_taken_slot_moves_to_the_next_free_one() {
        let body = serde_json::json!({"action": "a", "status": "success",
            "timestamp": "2026-01-01T00:00:00.123Z", "outcomeDescription": "unique"})
        .to_string();
        let mut conn = indexed(&[]);
        conn.execute(
            "INSERT INTO log.events VALUES (1, 'default', 1, ?1, x'00', NULL)",
            params![body],
        )
        .expect("insert");
        let ts = micros("2026-01-01T00:00:00.123Z");
        // Another event (log position 1 + 2^20) already holds the preferred key.
        conn.execute(
            "INSERT INTO ev (k, pos, ts, log_id, action, status) VALUES (?1, ?2, ?3, 'default', 'b', 'success')",
            params![sort_key(ts, 1), 1 + (1 << SLOT_BITS), ts],
        )
        .expect("squatter");
        index_more(&mut conn, 0, 10).expect("index");
        let key: i64 = conn
            .query_row("SELECT k FROM ev WHERE pos = 1", [], |r| r.get(0))
            .expect("indexed");
        assert_eq!(key, sort_key(ts, 1) + 1);
        assert_eq!(key >> SLOT_BITS, key_ms(ts));
        let found = search(
            &conn,
            &SearchQuery {
                q: Some("unique".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .expect("search");
        assert_eq!(found.events.len(), 1);
        assert_eq!(found.events[0].pos, 1);
    }

    fn micros(t: &str) -> i64 {
        vellum_core::time_fmt::unix_micros(vellum_core::time_fmt::parse_rfc3339(t).expect("ts"))
    }

    #[test]
    fn sort_key_orders_by_millisecond_and_bounds_are_exact() {
        let t = micros("2026-01-01T00:00:00.123456Z");
        assert_eq!(sort_key(t, 5) >> SLOT_BITS, key_ms(t));
        assert!(sort_key(t, 5) < sort_key(t + 1000, 4));
        assert!(sort_key(-1, 0) < sort_key(0, 0), "before 1970 sorts first");
        assert!(key_from(t) <= sort_key(t, 0) && sort_key(t, 0) < key_to(t + 1));
        assert!(sort_key(t - 1000, 9) < key_from(t));
        assert!(sort_key(t + 1000, 0) >= key_to(t + 1));
        // Far-off timestamps are clamped, not overflowed.
        assert!(sort_key(i64::MAX, SLOT_MASK) > sort_key(t, 0));
        assert!(sort_key(i64::MIN, 0) < sort_key(0, 0));
        assert_eq!(key_to(i64::MIN), (-MAX_MS + 1) << SLOT_BITS);
    }
}
