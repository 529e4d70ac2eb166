//! Whole-store verification (SPEC §4), shared by `vellum verify` (reading the data directory
//! directly) and `POST /v1/verify` (on a running server).
//!
//! For each log: every stored checkpoint's signature is checked against the published keys;
//! every event is re-hashed, its HMAC and chain link checked, and the Merkle tree of the stored
//! hashes is rebuilt and compared with every signed checkpoint root (a modified, inserted,
//! deleted or reordered event changes the root; a checkpoint larger than the log is a truncated
//! tail); the stored tiles that serve proofs are compared with the rebuilt tree; and the
//! consistency proof between every two successive checkpoints is generated from the stored
//! tiles and verified, which is what a third party holding both checkpoints would check.
//!
//! Cost: one sequential read of the log plus n/256 tile reads; the events are hashed once
//! (SHA-256 of the text) and the tree costs about two more compressions per event.

use serde::{Deserialize, Serialize};
use vellum_core::checkpoint::{CheckpointBody, CheckpointKey};
use vellum_core::integrity::HmacKeyring;
use vellum_core::merkle::{consistency_proof, verify_consistency};
use vellum_core::tiles::{TILE_HEIGHT, TILE_WIDTH, TileSource};
use vellum_core::verify::{ChainVerifier, Failure, LogReport, RowFacts, row_facts};
use vellum_store::StoredEvent;
use vellum_store::{AuditStore, StoreError};

/// Rows read per store call.
const CHUNK: usize = 20_000;

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only this log (default: every log).
    pub log_id: Option<String>,
    /// Fail unsigned events (the store was written with signatures on).
    pub require_signatures: bool,
    /// Only events with `seq >= from_seq` are reported on; earlier ones are still read, since
    /// the Merkle tree and chain need them.
    pub from_seq: u64,
}

/// The report of a whole verification.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// True when nothing failed.
    pub ok: bool,
    /// Whether HMAC signatures were checked.
    pub signatures_checked: bool,
    /// Per-log results with every failure by `seq`.
    #[schema(value_type = Vec<Object>)]
    pub logs: Vec<LogReport>,
    /// Events checked in all logs.
    pub events: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints_verified: u64,
    /// Wall time.
    pub elapsed_seconds: f64,
}

/// The checkpoint public keys the store publishes, plus `extra` (e.g. the running signer's key
/// or a key pinned on the command line).
pub fn known_keys(
    store: &dyn AuditStore,
    extra: &[CheckpointKey],
) -> Result<Vec<CheckpointKey>, StoreError> {
    let mut keys: Vec<CheckpointKey> = extra.to_vec();
    for record in store.checkpoint_keys()? {
        let key = CheckpointKey {
            name: record.name,
            public_key: record.public_key,
        };
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Verifies the store; `progress` is called with the number of events just checked.
pub fn verify_store(
    store: &dyn AuditStore,
    keyring: Option<&HmacKeyring>,
    keys: &[CheckpointKey],
    options: &VerifyOptions,
    mut progress: impl FnMut(u64),
) -> Result<VerifyReport, StoreError> {
    let started = std::time::Instant::now();
    let mut log_ids = store.log_ids()?;
    if let Some(only) = &options.log_id {
        log_ids.retain(|id| id == only);
    }
    let mut logs = Vec::new();
    let mut checkpoints_verified = 0;
    for log_id in &log_ids {
        let (report, verified) = verify_log(store, log_id, keyring, keys, options, &mut progress)?;
        checkpoints_verified += verified;
        logs.push(report);
    }
    Ok(VerifyReport {
        ok: logs.iter().all(LogReport::ok),
        signatures_checked: keyring.is_some(),
        events: logs.iter().map(|l| l.events).sum(),
        checkpoints_verified,
        logs,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

fn verify_log(
    store: &dyn AuditStore,
    log_id: &str,
    keyring: Option<&HmacKeyring>,
    keys: &[CheckpointKey],
    options: &VerifyOptions,
    progress: &mut impl FnMut(u64),
) -> Result<(LogReport, u64), StoreError> {
    // 1. Checkpoints: signatures first; only verified ones bind the events.
    let mut problems: Vec<Failure> = Vec::new();
    let mut signed: Vec<CheckpointBody> = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_checkpoints(log_id, after, 10_000)?;
        let Some(last) = page.last() else { break };
        after = Some(last.tree_size);
        for cp in &page {
            match cp.verify(keys) {
                Ok(body) if body.log_id == log_id => signed.push(body),
                Ok(body) => problems.push(Failure::CheckpointInvalid {
                    tree_size: cp.tree_size,
                    reason: format!(
                        "stored under log {log_id} but signed for log {}",
                        body.log_id
                    ),
                }),
                Err(e) => problems.push(Failure::CheckpointInvalid {
                    tree_size: cp.tree_size,
                    reason: e.to_string(),
                }),
            }
        }
    }
    let verified = signed.len() as u64;

    // 2. Consistency between successive signed checkpoints, from the stored tiles.
    for pair in signed.windows(2) {
        let [a, b] = pair else { continue };
        let mut src = TileSource::new(|k| store.merkle_tile(log_id, k));
        let outcome = match consistency_proof(&mut src, a.tree_size, b.tree_size) {
            Ok(proof) => {
                verify_consistency(a.tree_size, b.tree_size, &a.root_hash, &b.root_hash, &proof)
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("cannot build the proof from stored tiles: {e}")),
        };
        if let Err(reason) = outcome {
            problems.push(Failure::Inconsistent {
                from_size: a.tree_size,
                to_size: b.tree_size,
                reason,
            });
        }
    }

    // 3. The events, the tree they make, and the stored tiles.
    let mut verifier = ChainVerifier::new(log_id, keyring)
        .require_signatures(options.require_signatures)
        .with_checkpoints(signed);
    // A reader thread fetches the next chunk from SQLite while this one is hashed (on every
    // core) and checked in order: reading is ~15% of the work and would otherwise stall the
    // hashing.
    let mut tiles_ok = true;
    std::thread::scope(|scope| -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<StoredEvent>, StoreError>>(1);
        scope.spawn(move || {
            let mut from = 0u64;
            loop {
                let rows = store.scan_log(log_id, from, CHUNK);
                let done = match &rows {
                    Ok(r) => {
                        from = r.last().map_or(from, |l| l.seq + 1);
                        r.len() < CHUNK
                    }
                    Err(_) => true,
                };
                if tx.send(rows).is_err() || done {
                    return;
                }
            }
        });
        for rows in rx {
            let rows = rows?;
            for (row, facts) in rows.iter().zip(parallel_facts(log_id, keyring, &rows)) {
                verifier.check_filed_facts(row.seq, &row.hash, row.id_column.as_ref(), facts);
            }
            compare_tiles(store, log_id, &mut verifier, &mut tiles_ok)?;
            progress(rows.len() as u64);
        }
        Ok(())
    })?;
    compare_tiles(store, log_id, &mut verifier, &mut tiles_ok)?;
    for failure in problems {
        verifier.report(failure);
    }
    let mut report = verifier.finish();
    if options.from_seq > 0 {
        report.failures.retain(|f| f.seq() >= options.from_seq);
    }
    report.failures.sort_by_key(Failure::seq);
    Ok((report, verified))
}

/// Compares the tiles the rebuilt tree changed with the stored ones. Only the first mismatch is
/// reported: after a deleted or inserted event every later tile differs, and the event-level
/// failures already say where.
fn compare_tiles(
    store: &dyn AuditStore,
    log_id: &str,
    verifier: &mut ChainVerifier<'_>,
    tiles_ok: &mut bool,
) -> Result<(), StoreError> {
    let tiles = verifier.take_tiles();
    if !*tiles_ok {
        return Ok(());
    }
    for tile in tiles {
        let stored = store.merkle_tile(log_id, tile.key)?.unwrap_or_default();
        // The first hash that differs, or the first one missing from a too-narrow tile. (The
        // stored tile may be wider: tiles only grow.)
        let differs = tile
            .hashes
            .iter()
            .zip(&stored)
            .position(|(rebuilt, stored)| rebuilt != stored)
            .or((stored.len() < tile.hashes.len()).then_some(stored.len()));
        if let Some(position) = differs {
            // Hash `position` of tile (level, index) is node `index * 256 + position` of tree
            // level `8 * level`, whose first leaf is that node number shifted by its level.
            // Naming that leaf points at the altered event, not at the start of the tile.
            let node = tile
                .key
                .index
                .saturating_mul(TILE_WIDTH as u64)
                .saturating_add(position as u64);
            verifier.report(Failure::TileMismatch {
                seq: node
                    .checked_shl(u32::from(tile.key.level) * TILE_HEIGHT)
                    .unwrap_or(u64::MAX),
                level: tile.key.level,
                index: tile.key.index,
            });
            *tiles_ok = false;
            break;
        }
    }
    Ok(())
}

/// Computes [`RowFacts`] for a chunk of rows on every core: hashing, HMAC and parsing are
/// independent per row and are almost all of verification's CPU; only the cheap chain, tree and
/// checkpoint bookkeeping then runs in order.
fn parallel_facts(
    log_id: &str,
    keyring: Option<&HmacKeyring>,
    rows: &[StoredEvent],
) -> Vec<RowFacts> {
    let facts = |part: &[StoredEvent]| -> Vec<RowFacts> {
        part.iter()
            .map(|r| {
                row_facts(
                    log_id,
                    keyring,
                    &r.canonical,
                    &r.hash,
                    r.signature.as_deref(),
                )
            })
            .collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 || rows.len() < 256 {
        return facts(rows);
    }
    let per = rows.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = rows.chunks(per);
        let first = parts.next().unwrap_or_default();
        let handles: Vec<_> = parts.map(|part| scope.spawn(move || facts(part))).collect();
        let mut out = facts(first);
        for handle in handles {
            match handle.join() {
                Ok(mut more) => out.append(&mut more),
                // A panic in a worker is a bug; fall back to computing that part here so the
                // report is still complete and in order.
                Err(_) => return facts(rows),
            }
        }
        out
    })
}
