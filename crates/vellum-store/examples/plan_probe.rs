//! Times the pieces of a full-text + principal search on an existing data directory, to see
//! where a slow plan spends its time (BENCHMARKS.md, "Search index v5"):
//!
//! ```text
//! cargo run --release -p vellum-store --example plan_probe -- DIR WORD PRINCIPAL
//! ```
//!
//! Opens `index.db` and `vellum.db` read-only; each piece runs twice (cold, then warm).
#![allow(missing_docs)]

use rusqlite::{Connection, OpenFlags, ToSql};
use std::error::Error;
use std::time::Instant;

/// The plan-choice estimates, the three ways to join full text and a principal, and the full
/// search query as the store runs it for the probe plan.
const PIECES: &[(&str, &str)] = &[
    (
        "matches estimate (newest 20,001, DESC)",
        "SELECT count(*), min(k) FROM (SELECT rowid AS k FROM fts WHERE fts MATCH ?1 \
         ORDER BY rowid DESC LIMIT 20001)",
    ),
    (
        "principal estimate (newest 20,001)",
        "SELECT count(*), min(k) FROM (SELECT k FROM ev WHERE principal_id = ?2 \
         ORDER BY k DESC LIMIT 20001)",
    ),
    (
        "min(k), max(k) in one query (scans the table)",
        "SELECT min(k), max(k) FROM ev",
    ),
    (
        "min(k), max(k) as two subqueries",
        "SELECT (SELECT min(k) FROM ev), (SELECT max(k) FROM ev)",
    ),
    (
        "probe plan, 51 rows",
        "SELECT i.k FROM ev i WHERE i.principal_id = ?2 AND EXISTS \
         (SELECT 1 FROM fts WHERE fts MATCH ?1 AND fts.rowid = i.k) ORDER BY i.k DESC LIMIT 51",
    ),
    (
        "walk plan, 51 rows",
        "SELECT i.k FROM fts CROSS JOIN ev i ON i.k = fts.rowid WHERE fts MATCH ?1 \
         AND i.principal_id = ?2 ORDER BY fts.rowid DESC LIMIT 51",
    ),
    (
        "materialize plan, 51 rows",
        "SELECT i.k FROM ev i WHERE i.principal_id = ?2 AND i.k IN \
         (SELECT rowid FROM fts WHERE fts MATCH ?1) ORDER BY i.k DESC LIMIT 51",
    ),
    (
        "full probe query with the log join",
        "SELECT i.k, e.body FROM ev i JOIN log.events e ON e.pos = i.pos WHERE \
         i.principal_id = ?2 AND EXISTS (SELECT 1 FROM fts WHERE fts MATCH ?1 \
         AND fts.rowid = i.k) ORDER BY i.k DESC LIMIT 51",
    ),
];

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, word, principal] = args.as_slice() else {
        return Err("usage: plan_probe DIR WORD PRINCIPAL".into());
    };
    let dir = std::path::Path::new(dir);
    let conn = Connection::open_with_flags(
        dir.join("index.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.execute(
        "ATTACH DATABASE ?1 AS log",
        [format!("file:{}?mode=ro", dir.join("vellum.db").display())],
    )?;
    let expression = format!("text : \"{}\"", word.replace('"', "\"\""));
    for round in ["cold", "warm"] {
        for (name, sql) in PIECES {
            let mut stmt = conn.prepare(sql)?;
            let wanted: Vec<&dyn ToSql> = (1..=stmt.parameter_count())
                .map(|i| {
                    if i == 1 {
                        &expression as &dyn ToSql
                    } else {
                        principal as &dyn ToSql
                    }
                })
                .collect();
            let started = Instant::now();
            let rows = stmt.query_map(wanted.as_slice(), |_| Ok(()))?.count();
            println!(
                "{round}: {name}: {rows} rows in {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}
