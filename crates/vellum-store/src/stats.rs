//! `GET /v1/stats` on the search index: counts over any filter set, grouped by the columns the
//! index keeps. Every query is an aggregate over the filtered rows of `ev`, so its cost grows
//! with the number of matching events (an unfiltered stats call reads the whole index once per
//! breakdown); narrow filters use the same indexes as search.

use crate::StoreError;
use crate::index::{Sql, push_filters};
use crate::model::{Stats, StatsQuery, TimeBucket};
use rusqlite::{Connection, ToSql};

fn count(
    conn: &Connection,
    filters: &str,
    args: &[Box<dyn ToSql>],
    extra: &str,
) -> Result<u64, StoreError> {
    let sql = format!("SELECT count(*) FROM ev i WHERE 1 = 1{filters}{extra}");
    let refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
    let n: i64 = conn
        .prepare_cached(&sql)?
        .query_row(refs.as_slice(), |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn group(
    conn: &Connection,
    filters: &str,
    args: &[Box<dyn ToSql>],
    column: &str,
    top: usize,
) -> Result<Vec<(String, u64)>, StoreError> {
    let sql = format!(
        "SELECT {column}, count(*) AS n FROM ev i WHERE 1 = 1{filters} AND {column} IS NOT NULL
         GROUP BY {column} ORDER BY n DESC, {column} LIMIT {top}"
    );
    let refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(refs.as_slice(), |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (k, n) = row?;
        out.push((k, u64::try_from(n).unwrap_or(0)));
    }
    Ok(out)
}

/// Computes the statistics of `query` on a reader connection (index main, log attached).
pub(crate) fn stats(conn: &Connection, query: &StatsQuery) -> Result<Stats, StoreError> {
    let mut filter = query.filter.clone();
    filter.cursor = None;
    // Aggregates read every match anyway: materializing them once is the cheaper plan.
    let mut sql = Sql::default();
    push_filters(&filter, &mut sql);
    let Sql {
        text: filters,
        args,
    } = sql;
    let top = query.top.clamp(1, 1000);
    let bucket_micros: i64 = match query.bucket {
        TimeBucket::Hour => 3_600_000_000,
        TimeBucket::Day => 86_400_000_000,
    };
    let by_time = {
        // Buckets are aligned to UTC hours/days since the epoch.
        let sql = format!(
            "SELECT (i.ts / {bucket_micros}) * {bucket_micros} AS b, count(*) FROM ev i
             WHERE 1 = 1{filters} GROUP BY b ORDER BY b"
        );
        let refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(refs.as_slice(), |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (b, n) = row?;
            out.push((b, u64::try_from(n).unwrap_or(0)));
        }
        out
    };
    Ok(Stats {
        total: count(conn, &filters, &args, "")?,
        by_action: group(conn, &filters, &args, "i.action", top)?,
        by_status: group(conn, &filters, &args, "i.status", top)?,
        by_classification: group(conn, &filters, &args, "i.classification", top)?,
        by_principal: group(conn, &filters, &args, "i.principal_id", top)?,
        by_organization: group(conn, &filters, &args, "i.organization_id", top)?,
        by_time,
        // Failures of authentication and security actions (SPEC §5 "security violations").
        security_violations: count(
            conn,
            &filters,
            &args,
            " AND i.status = 'failure' AND ((i.action >= 'auth.' AND i.action < 'auth/')
               OR (i.action >= 'security.' AND i.action < 'security/'))",
        )?,
        phi_accesses: count(conn, &filters, &args, " AND i.classification = 'PHI'")?,
        emergency_accesses: count(conn, &filters, &args, " AND i.emergency = 1")?,
        index_lag: 0,
    })
}
