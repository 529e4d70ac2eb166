//! Search and statistics on `event_index`, with the semantics of the SQLite index
//! (`index.rs`, `stats.rs`): the same filters, the same order (timestamp millisecond newest
//! first, then log position), full text through the same tokenizer.

use super::pg_err;
use super::schema::INDEXED_CHARS;
use super::tokenize::{TextQuery, TsVector, tsquery_literal};
use crate::StoreError;
use crate::index::IndexRow;
use crate::model::{SearchPage, SearchQuery, Stats, StatsQuery, StoredEvent, TimeBucket};
use base64::Engine;
use tokio_postgres::types::{ToSql, Type};

/// Milliseconds are clamped like the SQLite sort key (`index::key_ms`), so both stores order
/// far-off timestamps the same way.
const MAX_MS: i64 = (1 << 42) - 1;

/// The sort millisecond of a timestamp in Unix µs.
pub(crate) fn key_ms(ts_micros: i64) -> i64 {
    ts_micros.div_euclid(1000).clamp(-MAX_MS, MAX_MS)
}

/// The tag of a nearly-unique filter value: 64 bits of SHA-256 over the field letter and the
/// value. A collision only adds a candidate; the full value is always compared too.
pub(crate) fn tag(field: char, value: &str) -> i64 {
    let mut input = String::with_capacity(value.len() + 2);
    input.push(field);
    input.push(':');
    input.push_str(value);
    let digest = vellum_core::integrity::sha256(input.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The tags of an index row (field letters as in `index::TAG_COLUMNS`).
fn row_tags(row: &IndexRow) -> Vec<i64> {
    [
        ('t', &row.target_id),
        ('s', &row.session_id),
        ('i', &row.ip),
        ('p', &row.patient_id),
        ('d', &row.subject_id),
        ('c', &row.correlation_id),
    ]
    .into_iter()
    .filter_map(|(field, value)| value.as_deref().map(|v| tag(field, v)))
    .collect()
}

/// PostgreSQL text cannot hold NUL; sanitization removes control characters from events, so
/// this only matters for rows not written by the pipeline.
fn no_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s
    }
}

/// Columns of `event_index` for a batch of rows, as arrays for one `unnest` insert.
#[derive(Default)]
pub(crate) struct IndexColumns {
    pub(crate) log_id: Vec<String>,
    pub(crate) seq: Vec<i64>,
    pub(crate) ms: Vec<i64>,
    pub(crate) ts: Vec<i64>,
    pub(crate) action: Vec<String>,
    pub(crate) status: Vec<String>,
    pub(crate) classification: Vec<Option<String>>,
    pub(crate) principal_id: Vec<Option<String>>,
    pub(crate) organization_id: Vec<Option<String>>,
    pub(crate) target_type: Vec<Option<String>>,
    pub(crate) target_id: Vec<Option<String>>,
    pub(crate) session_id: Vec<Option<String>>,
    pub(crate) ip: Vec<Option<String>>,
    pub(crate) patient_id: Vec<Option<String>>,
    pub(crate) subject_id: Vec<Option<String>>,
    pub(crate) correlation_id: Vec<Option<String>>,
    pub(crate) emergency: Vec<bool>,
    /// `bigint[]` literals (`{1,-2}`): `unnest` cannot produce one array per row from a
    /// two-dimensional array.
    pub(crate) tags: Vec<String>,
    /// The free text, as `tsvector`s in binary form.
    pub(crate) tsv: Vec<TsVector>,
    /// The lexemes of each complete text block (rows `b * BLOCK_ROWS ..`), computed as rows
    /// arrive (see [`IndexColumns::complete_blocks`]).
    blocks: Vec<TsVector>,
}

/// Rows per text block (`text_blocks`). A block's GIN entries are its distinct lexemes, so a
/// word shared by the events of a block costs one entry instead of one per event (74 lexemes
/// per event → about 15 per event in the scale-out benchmark's events); a search rechecks the
/// rows of every block that holds all its words, so a rare word costs up to this many row
/// checks per match.
pub(crate) const BLOCK_ROWS: usize = 32;

impl IndexColumns {
    /// Adds the row of the event `(log_id, seq)`.
    pub(crate) fn push(&mut self, log_id: &str, seq: i64, row: IndexRow) {
        let opt = |v: Option<String>| v.map(no_nul);
        let tags = row_tags(&row);
        let mut tags_literal = String::from("{");
        for (i, t) in tags.iter().enumerate() {
            if i > 0 {
                tags_literal.push(',');
            }
            tags_literal.push_str(&t.to_string());
        }
        tags_literal.push('}');
        self.log_id.push(log_id.to_owned());
        self.seq.push(seq);
        self.ms.push(key_ms(row.ts));
        self.ts.push(row.ts);
        self.tsv.push(TsVector::of(&no_nul(row.text)));
        self.action.push(no_nul(row.action));
        self.status.push(no_nul(row.status));
        self.classification.push(opt(row.classification));
        self.principal_id.push(opt(row.principal_id));
        self.organization_id.push(opt(row.organization_id));
        self.target_type.push(opt(row.target_type));
        self.target_id.push(opt(row.target_id));
        self.session_id.push(opt(row.session_id));
        self.ip.push(opt(row.ip));
        self.patient_id.push(opt(row.patient_id));
        self.subject_id.push(opt(row.subject_id));
        self.correlation_id.push(opt(row.correlation_id));
        self.emergency.push(row.emergency);
        self.tags.push(tags_literal);
    }

    /// Computes the lexemes of the blocks that are complete (so that the writer's `prepare`
    /// does that work while the previous group commits).
    pub(crate) fn complete_blocks(&mut self) {
        while (self.blocks.len() + 1) * BLOCK_ROWS <= self.tsv.len() {
            let start = self.blocks.len() * BLOCK_ROWS;
            let block = TsVector::union(&self.tsv[start..start + BLOCK_ROWS]);
            self.blocks.push(block);
        }
    }

    /// The block of each row (0-based, in row order).
    pub(crate) fn block_of_rows(&self) -> Vec<i32> {
        (0..self.tsv.len())
            .map(|row| i32::try_from(row / BLOCK_ROWS).unwrap_or(i32::MAX))
            .collect()
    }

    /// The lexemes of each block, in block order: the complete ones computed ahead, then the
    /// partial last one (`tail`, from [`IndexColumns::tail_block`]).
    pub(crate) fn block_lexemes<'a>(&'a self, tail: Option<&'a TsVector>) -> Vec<&'a TsVector> {
        self.blocks.iter().chain(tail).collect()
    }

    /// The lexemes of the rows after the last complete block, if any.
    pub(crate) fn tail_block(&self) -> Option<TsVector> {
        let complete = self.blocks.len() * BLOCK_ROWS;
        (complete < self.tsv.len()).then(|| TsVector::union(&self.tsv[complete..]))
    }
}

type Param = (Box<dyn ToSql + Sync + Send>, Type);

/// SQL text with its numbered, typed parameters.
#[derive(Default)]
pub(crate) struct Sql {
    pub(crate) text: String,
    params: Vec<Param>,
}

impl Sql {
    /// Adds a parameter and returns its `$N` placeholder.
    pub(crate) fn arg(&mut self, value: impl ToSql + Sync + Send + 'static, ty: Type) -> String {
        self.params.push((Box::new(value), ty));
        format!("${}", self.params.len())
    }

    /// The parameters as `query_typed` takes them.
    pub(crate) fn params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.params
            .iter()
            .map(|(v, t)| (v.as_ref() as &(dyn ToSql + Sync), t.clone()))
            .collect()
    }
}

/// Upper bound for an action prefix, as in `index::prefix_upper` (bytewise order).
fn prefix_upper(prefix: &str) -> String {
    let mut upper = String::with_capacity(prefix.len() + 4);
    upper.push_str(prefix);
    upper.push('\u{10FFFF}');
    upper
}

/// Appends the conditions (on `event_index i`) of every filter of `query` except the cursor.
/// Returns `false` when the query can match nothing (a full-text term without any token, or a
/// value PostgreSQL cannot hold), in which case the caller answers empty.
pub(crate) fn push_filters(query: &SearchQuery, sql: &mut Sql) -> bool {
    let values = [
        &query.principal_id,
        &query.organization_id,
        &query.action,
        &query.status,
        &query.data_classification,
        &query.target_resource_type,
        &query.target_resource_id,
        &query.session_id,
        &query.ip_address,
        &query.patient_id,
        &query.data_subject_id,
        &query.correlation_id,
    ];
    if values
        .iter()
        .any(|v| v.as_deref().is_some_and(|v| v.contains('\0')))
    {
        // No stored value holds NUL (sanitization removes it): nothing matches, as in SQLite.
        return false;
    }
    // Columns with a B-tree on their first INDEXED_CHARS characters: the index condition, then
    // the exact one.
    let indexed_eq = |sql: &mut Sql, column: &str, value: &Option<String>| {
        if let Some(value) = value {
            let p = sql.arg(value.clone(), Type::TEXT);
            sql.text.push_str(&format!(
                " AND left(i.{column}, {INDEXED_CHARS}) = left({p}, {INDEXED_CHARS}) AND i.{column} = {p}"
            ));
        }
    };
    indexed_eq(sql, "principal_id", &query.principal_id);
    indexed_eq(sql, "organization_id", &query.organization_id);
    indexed_eq(sql, "status", &query.status);
    indexed_eq(sql, "classification", &query.data_classification);
    indexed_eq(sql, "target_type", &query.target_resource_type);
    if let Some(action) = &query.action {
        if let Some(prefix) = action.strip_suffix('*') {
            // `left` is monotone, so the truncated bounds hold whatever the prefix length.
            let lo = sql.arg(prefix.to_owned(), Type::TEXT);
            let hi = sql.arg(prefix_upper(prefix), Type::TEXT);
            sql.text.push_str(&format!(
                " AND left(i.action, {INDEXED_CHARS}) >= left({lo}, {INDEXED_CHARS})
                  AND left(i.action, {INDEXED_CHARS}) <= left({hi}, {INDEXED_CHARS})
                  AND i.action >= {lo} AND i.action < {hi}"
            ));
        } else {
            indexed_eq(sql, "action", &query.action);
        }
    }
    // Nearly-unique fields: candidates through their tags (GIN), then the exact value.
    let mut tags = Vec::new();
    for ((column, field), value) in [
        ("target_id", 't'),
        ("session_id", 's'),
        ("ip", 'i'),
        ("patient_id", 'p'),
        ("subject_id", 'd'),
        ("correlation_id", 'c'),
    ]
    .into_iter()
    .zip(query.tag_filters())
    {
        if let Some(value) = value {
            tags.push(tag(field, value));
            let p = sql.arg(value.clone(), Type::TEXT);
            sql.text.push_str(&format!(" AND i.{column} = {p}"));
        }
    }
    if !tags.is_empty() {
        let p = sql.arg(tags, Type::INT8_ARRAY);
        sql.text.push_str(&format!(" AND i.tags @> {p}"));
    }
    // Time: the millisecond range (partition pruning and index ranges), then the exact µs.
    if let Some(from) = query.from_micros {
        let m = sql.arg(key_ms(from), Type::INT8);
        let t = sql.arg(from, Type::INT8);
        sql.text
            .push_str(&format!(" AND i.ms >= {m} AND i.ts >= {t}"));
    }
    if let Some(to) = query.to_micros {
        let m = sql.arg(key_ms(to.saturating_sub(1)), Type::INT8);
        let t = sql.arg(to, Type::INT8);
        sql.text
            .push_str(&format!(" AND i.ms <= {m} AND i.ts < {t}"));
    }
    match query.q.as_deref().map(tsquery_literal) {
        None | Some(TextQuery::None) => {}
        Some(TextQuery::Nothing) => return false,
        Some(TextQuery::Query { exact, words }) => {
            // Candidates: the rows of the text blocks holding every word (GIN on
            // `text_blocks`); then each row's own `tsvector` decides, phrases included.
            let p = sql.arg(exact, Type::TEXT);
            let w = sql.arg(words, Type::TEXT);
            sql.text.push_str(&format!(
                " AND i.tsv @@ {p}::tsquery AND i.blk IN
                   (SELECT b.blk FROM text_blocks b WHERE b.lexemes @@ {w}::tsquery)"
            ));
        }
    }
    true
}

fn encode_cursor(ms: i64, pos: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("p{ms}:{pos}"))
}

fn decode_cursor(cursor: &str) -> Result<(i64, i64), StoreError> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    let text = String::from_utf8(raw).map_err(|_| StoreError::BadCursor)?;
    let (ms, pos) = text
        .strip_prefix('p')
        .and_then(|t| t.split_once(':'))
        .ok_or(StoreError::BadCursor)?;
    Ok((
        ms.parse().map_err(|_| StoreError::BadCursor)?,
        pos.parse().map_err(|_| StoreError::BadCursor)?,
    ))
}

/// One page of `query`, newest first: by timestamp millisecond, then by log position (the
/// SQLite index orders by millisecond, then by a slot that follows log order). Keyset paging
/// on `(ms, pos)`.
pub(crate) async fn search(
    client: &tokio_postgres::Client,
    query: &SearchQuery,
) -> Result<SearchPage, StoreError> {
    let limit = query.limit.clamp(1, 1000);
    let cursor = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut sql = Sql::default();
    sql.text.push_str(
        "SELECT i.ms, e.pos, e.log_id, e.seq, e.canonical, e.hash, e.signature
         FROM event_index i JOIN events e ON e.pos = i.pos WHERE TRUE",
    );
    if !push_filters(query, &mut sql) {
        return Ok(SearchPage::default());
    }
    if let Some((ms, pos)) = cursor {
        let m = sql.arg(ms, Type::INT8);
        let p = sql.arg(pos, Type::INT8);
        // The lone `i.ms <=` lets PostgreSQL prune newer partitions; the row comparison is
        // the exact keyset condition.
        sql.text
            .push_str(&format!(" AND i.ms <= {m} AND (i.ms, i.pos) < ({m}, {p})"));
    }
    let n = sql.arg(i64::try_from(limit + 1).unwrap_or(1001), Type::INT8);
    sql.text
        .push_str(&format!(" ORDER BY i.ms DESC, i.pos DESC LIMIT {n}"));
    tracing::trace!(sql = %sql.text, "search");
    let rows = client
        .query_typed(&sql.text, &sql.params())
        .await
        .map_err(pg_err)?;
    let mut events = Vec::with_capacity(rows.len().min(limit));
    let mut last_key = None;
    let mut more = false;
    for row in rows {
        if events.len() == limit {
            more = true;
            break;
        }
        let ms: i64 = row.try_get(0).map_err(pg_err)?;
        let canonical: String = row.try_get(4).map_err(pg_err)?;
        // Purged (its index row goes in the same transaction, so this is only a safeguard).
        if vellum_core::retention::Tombstone::from_body(&canonical).is_some() {
            continue;
        }
        let pos: i64 = row.try_get(1).map_err(pg_err)?;
        let seq: i64 = row.try_get(3).map_err(pg_err)?;
        events.push(StoredEvent {
            pos,
            log_id: row.try_get(2).map_err(pg_err)?,
            seq: u64::try_from(seq).unwrap_or(0),
            canonical,
            hash: row.try_get(5).map_err(pg_err)?,
            signature: row.try_get(6).map_err(pg_err)?,
            id_column: None,
        });
        last_key = Some((ms, pos));
    }
    let next_cursor = if more {
        last_key.map(|(ms, pos)| encode_cursor(ms, pos))
    } else {
        None
    };
    Ok(SearchPage {
        events,
        next_cursor,
        index_lag: 0,
    })
}

/// `GET /v1/stats` over the filtered rows: the same counts as `stats::stats`, computed in one
/// statement that reads the matching rows once (a materialized CTE) and aggregates it per
/// breakdown.
pub(crate) async fn stats(
    client: &tokio_postgres::Client,
    query: &StatsQuery,
) -> Result<Stats, StoreError> {
    let mut filter = query.filter.clone();
    filter.cursor = None;
    let mut sql = Sql::default();
    sql.text.push_str(
        "WITH m AS MATERIALIZED (
             SELECT i.ts, i.action, i.status, i.classification, i.principal_id,
                    i.organization_id, i.emergency
             FROM event_index i WHERE TRUE",
    );
    if !push_filters(&filter, &mut sql) {
        return Ok(Stats::default());
    }
    let top = query.top.clamp(1, 1000);
    let bucket: i64 = match query.bucket {
        TimeBucket::Hour => 3_600_000_000,
        TimeBucket::Day => 86_400_000_000,
    };
    let group = |kind: i32, column: &str| {
        format!(
            " UNION ALL (SELECT {kind}, {column}, NULL::bigint, count(*) AS n FROM m
               WHERE {column} IS NOT NULL GROUP BY {column} ORDER BY n DESC, {column} LIMIT {top})"
        )
    };
    sql.text.push_str(
        ")
         (SELECT 0 AS kind, NULL::text AS key, NULL::bigint AS bucket, count(*) AS n FROM m)
         UNION ALL (SELECT 1, NULL, NULL, count(*) FROM m WHERE status = 'failure'
             AND ((action >= 'auth.' AND action < 'auth/')
               OR (action >= 'security.' AND action < 'security/')))
         UNION ALL (SELECT 2, NULL, NULL, count(*) FROM m WHERE classification = 'PHI')
         UNION ALL (SELECT 3, NULL, NULL, count(*) FROM m WHERE emergency)",
    );
    for (kind, column) in [
        (4, "action"),
        (5, "status"),
        (6, "classification"),
        (7, "principal_id"),
        (8, "organization_id"),
    ] {
        sql.text.push_str(&group(kind, column));
    }
    // Integer division truncates toward zero, as in SQLite.
    sql.text.push_str(&format!(
        " UNION ALL (SELECT 9, NULL, (ts / {bucket}) * {bucket} AS b, count(*) FROM m GROUP BY b)"
    ));
    let rows = client
        .query_typed(&sql.text, &sql.params())
        .await
        .map_err(pg_err)?;
    let mut stats = Stats::default();
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    for row in rows {
        let kind: i32 = row.try_get(0).map_err(pg_err)?;
        let key: Option<String> = row.try_get(1).map_err(pg_err)?;
        let bucket: Option<i64> = row.try_get(2).map_err(pg_err)?;
        let n = count(row.try_get(3).map_err(pg_err)?);
        let key = key.unwrap_or_default();
        match kind {
            0 => stats.total = n,
            1 => stats.security_violations = n,
            2 => stats.phi_accesses = n,
            3 => stats.emergency_accesses = n,
            4 => stats.by_action.push((key, n)),
            5 => stats.by_status.push((key, n)),
            6 => stats.by_classification.push((key, n)),
            7 => stats.by_principal.push((key, n)),
            8 => stats.by_organization.push((key, n)),
            _ => stats.by_time.push((bucket.unwrap_or(0), n)),
        }
    }
    // UNION ALL does not promise an order: sort like SQLite's ORDER BY (count, then bytes).
    for list in [
        &mut stats.by_action,
        &mut stats.by_status,
        &mut stats.by_classification,
        &mut stats.by_principal,
        &mut stats.by_organization,
    ] {
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    }
    stats.by_time.sort_unstable();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_garbage() {
        let c = encode_cursor(-5, 42);
        assert_eq!(decode_cursor(&c).expect("valid"), (-5, 42));
        // A SQLite cursor (`k…`) is refused, not misread.
        let sqlite = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("k17");
        assert!(matches!(decode_cursor(&sqlite), Err(StoreError::BadCursor)));
        assert!(matches!(decode_cursor("!!"), Err(StoreError::BadCursor)));
    }

    #[test]
    fn key_ms_matches_the_sqlite_sort_key() {
        assert_eq!(key_ms(1_500), 1);
        assert_eq!(key_ms(-1), -1);
        assert_eq!(key_ms(i64::MAX), MAX_MS);
    }
}
