//! Times the pieces of a full-text + column-filter search on an existing `index.db`, to see
//! where a slow plan spends its time: `plan_probe DIR WORD PRINCIPAL`.
#![allow(clippy::unwrap_used, missing_docs)]

use rusqlite::{Connection, OpenFlags, params};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(&args[1]);
    let word = format!("text : \"{}\"", args[2]);
    let principal = &args[3];
    let conn = Connection::open_with_flags(dir.join("index.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let time = |name: &str, sql: &str, p: &[&dyn rusqlite::ToSql]| {
        let t = Instant::now();
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.query_map(p, |_| Ok(())).unwrap().count();
        println!(
            "{name}: {n} rows in {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    };
    conn.execute_batch(&format!(
        "ATTACH DATABASE 'file:{}?mode=ro' AS log",
        dir.join("vellum.db").display()
    ))
    .unwrap();
    let full = "SELECT i.k, e.pos, e.log_id, e.seq, e.body, e.hash, e.signature FROM ev i JOIN log.events e ON e.pos = i.pos WHERE 1 = 1 AND i.principal_id = ?2 AND EXISTS (SELECT 1 FROM fts WHERE fts MATCH ?1 AND fts.rowid = i.k) ORDER BY i.k DESC LIMIT 51";
    let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {full}")).unwrap();
    let rows: Vec<String> = plan
        .query_map(params![word, principal], |r| r.get::<_, String>(3))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    println!("plan: {rows:?}");
    let full_param = "SELECT i.k, e.pos, e.log_id, e.seq, e.body, e.hash, e.signature FROM ev i JOIN log.events e ON e.pos = i.pos WHERE 1 = 1 AND i.principal_id = ?1 AND EXISTS (SELECT 1 FROM fts WHERE fts MATCH ?2 AND fts.rowid = i.k) ORDER BY i.k DESC LIMIT ?3";
    let mut plan = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {full_param}"))
        .unwrap();
    let rows: Vec<String> = plan
        .query_map(params![principal, word, 51], |r| r.get::<_, String>(3))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    println!("plan with LIMIT ?3: {rows:?}");
    for _ in 0..2 {
        time(
            "estimate with rowid bounds",
            "SELECT count(*), min(k) FROM (SELECT rowid AS k FROM fts WHERE fts MATCH ?1 AND rowid >= ?2 AND rowid < ?3 ORDER BY rowid DESC LIMIT ?4)",
            &[&word, &i64::MIN, &i64::MAX, &20001],
        );
        time(
            "filtered estimate",
            "SELECT count(*), min(k) FROM (SELECT i.k AS k FROM ev i WHERE 1 = 1 AND i.principal_id = ?1 ORDER BY i.k DESC LIMIT ?2)",
            &[principal, &20001],
        );
        time("minmax", "SELECT min(k), max(k) FROM ev", &[]);
        time(
            "minmax as subqueries",
            "SELECT (SELECT min(k) FROM ev), (SELECT max(k) FROM ev)",
            &[],
        );
        time("maxpos", "SELECT coalesce(max(pos), 0) FROM ev", &[]);
        time(
            "FULL probe query, LIMIT ?3",
            full_param,
            &[principal, &word, &51],
        );
        time("FULL probe query", full, &[&word, principal]);
        time(
            "fts count newest 20001 (DESC)",
            "SELECT rowid FROM fts WHERE fts MATCH ?1 ORDER BY rowid DESC LIMIT 20001",
            &[&word],
        );
        time(
            "fts count 20001 (ASC)",
            "SELECT rowid FROM fts WHERE fts MATCH ?1 LIMIT 20001",
            &[&word],
        );
        time(
            "principal newest 20001",
            "SELECT k FROM ev WHERE principal_id = ?1 ORDER BY k DESC LIMIT 20001",
            &[principal],
        );
        time(
            "probe plan 51",
            "SELECT i.k FROM ev i WHERE i.principal_id = ?2 AND EXISTS (SELECT 1 FROM fts WHERE fts MATCH ?1 AND fts.rowid = i.k) ORDER BY i.k DESC LIMIT 51",
            &[&word, principal],
        );
        time(
            "walk plan 51",
            "SELECT i.k FROM fts CROSS JOIN ev i ON i.k = fts.rowid WHERE fts MATCH ?1 AND i.principal_id = ?2 ORDER BY fts.rowid DESC LIMIT 51",
            &[&word, principal],
        );
        time(
            "materialize",
            "SELECT i.k FROM ev i WHERE i.principal_id = ?2 AND i.k IN (SELECT rowid FROM fts WHERE fts MATCH ?1) ORDER BY i.k DESC LIMIT 51",
            &[&word, principal],
        );
    }
    let (first, last): (i64, i64) = conn
        .query_row("SELECT min(k), max(k) FROM ev", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let (n, oldest): (i64, i64) = conn.query_row("SELECT count(*), min(k) FROM (SELECT rowid AS k FROM fts WHERE fts MATCH ?1 AND rowid >= ?2 AND rowid < ?3 ORDER BY rowid DESC LIMIT 20001)", params![word, i64::MIN, i64::MAX], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    println!(
        "ev k range {first}..{last} (ms {}..{}); newest 20001 matches: n={n} oldest k {oldest} (ms {}); estimate {:.0}",
        first >> 20,
        last >> 20,
        oldest >> 20,
        n as f64 * ((last + 1 - first) as f64 / (last + 1 - oldest) as f64)
    );
    let segments: i64 = conn
        .query_row("SELECT count(*) FROM fts_data", [], |r| r.get(0))
        .unwrap_or(-1);
    println!("fts_data rows: {segments}");
    let _ = params![];
}
