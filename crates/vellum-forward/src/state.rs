//! What a sink keeps in the store's metadata: its cursor and its dead letters.
//!
//! | key | value |
//! | --- | --- |
//! | `forward.<name>.cursor` | JSON object `{"<logId>": <next seq to forward>, …}` |
//! | `forward.<name>.dead` | JSON array of [`DeadLetter`], oldest first, at most [`MAX_DEAD_LETTERS`] |
//! | `forward.<name>.dead.dropped` | how many dead letters were dropped to keep that cap (decimal) |
//!
//! Both stores (SQLite and PostgreSQL) keep metadata durably, so a restart, or another node
//! taking over in the PostgreSQL shapes, resumes from the same place.

use crate::error::ForwardError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vellum_store::AuditStore;

/// Most dead letters kept per sink; older ones are dropped (and counted).
pub const MAX_DEAD_LETTERS: usize = 10_000;

/// Longest refusal reason kept in a dead letter, in bytes.
pub const MAX_REASON_BYTES: usize = 512;

/// An event a sink refused permanently, parked instead of delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The event's log.
    pub log_id: String,
    /// Its position in the log (fetch it again with the log and seq).
    pub seq: u64,
    /// Its id, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Why the sink refused it (status and the start of the answer).
    pub reason: String,
    /// When it was parked (RFC 3339, UTC).
    pub at: String,
}

pub(crate) fn cursor_key(sink: &str) -> String {
    format!("forward.{sink}.cursor")
}

fn dead_key(sink: &str) -> String {
    format!("forward.{sink}.dead")
}

fn dropped_key(sink: &str) -> String {
    format!("forward.{sink}.dead.dropped")
}

/// Per-log next `seq` to forward.
pub(crate) type Cursor = BTreeMap<String, u64>;

/// The stored cursor, `None` when the sink never stored one.
pub(crate) fn load_cursor(
    store: &dyn AuditStore,
    sink: &str,
) -> Result<Option<Cursor>, ForwardError> {
    let key = cursor_key(sink);
    match store.meta_get(&key)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ForwardError::State {
                key,
                message: e.to_string(),
            }),
    }
}

pub(crate) fn save_cursor(
    store: &dyn AuditStore,
    sink: &str,
    cursor: &Cursor,
) -> Result<(), ForwardError> {
    let text = serde_json::to_string(cursor).map_err(|e| ForwardError::State {
        key: cursor_key(sink),
        message: e.to_string(),
    })?;
    store.meta_set(&cursor_key(sink), &text)?;
    Ok(())
}

/// Every dead letter of a sink, oldest first.
pub fn dead_letters(store: &dyn AuditStore, sink: &str) -> Result<Vec<DeadLetter>, ForwardError> {
    let key = dead_key(sink);
    match store.meta_get(&key)? {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(&text).map_err(|e| ForwardError::State {
            key,
            message: e.to_string(),
        }),
    }
}

/// How many of a sink's dead letters were dropped because the store held
/// [`MAX_DEAD_LETTERS`] already.
pub fn dead_letters_dropped(store: &dyn AuditStore, sink: &str) -> Result<u64, ForwardError> {
    Ok(store
        .meta_get(&dropped_key(sink))?
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0))
}

/// Adds dead letters. One for a `(logId, seq)` already parked replaces it (a batch resent
/// after a crash refuses the same event again; it is one dead letter, not two). Returns how
/// many were new.
pub(crate) fn push_dead_letters(
    store: &dyn AuditStore,
    sink: &str,
    letters: Vec<DeadLetter>,
) -> Result<usize, ForwardError> {
    let mut all = dead_letters(store, sink)?;
    let (added, excess) = merge_dead_letters(&mut all, letters, MAX_DEAD_LETTERS);
    if excess > 0 {
        let dropped = dead_letters_dropped(store, sink)?.saturating_add(excess as u64);
        store.meta_set(&dropped_key(sink), &dropped.to_string())?;
        tracing::warn!(
            sink,
            dropped,
            "dead-letter store full; dropped the oldest entries"
        );
    }
    let text = serde_json::to_string(&all).map_err(|e| ForwardError::State {
        key: dead_key(sink),
        message: e.to_string(),
    })?;
    store.meta_set(&dead_key(sink), &text)?;
    Ok(added)
}

/// Merges `letters` into `all` (replacing same `(logId, seq)`), keeps the newest `cap`;
/// returns (new entries, entries dropped).
fn merge_dead_letters(
    all: &mut Vec<DeadLetter>,
    letters: Vec<DeadLetter>,
    cap: usize,
) -> (usize, usize) {
    let mut added = 0;
    for mut letter in letters {
        truncate_utf8(&mut letter.reason, MAX_REASON_BYTES);
        match all
            .iter_mut()
            .find(|d| d.log_id == letter.log_id && d.seq == letter.seq)
        {
            Some(existing) => *existing = letter,
            None => {
                all.push(letter);
                added += 1;
            }
        }
    }
    let excess = all.len().saturating_sub(cap);
    all.drain(..excess);
    (added, excess)
}

/// Cuts `text` to at most `max` bytes at a character boundary, marking the cut.
pub(crate) fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(seq: u64, reason: &str) -> DeadLetter {
        DeadLetter {
            log_id: "default".into(),
            seq,
            event_id: None,
            reason: reason.into(),
            at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn dead_letters_are_capped_oldest_first_and_deduplicated() {
        let mut all = Vec::new();
        let (added, dropped) =
            merge_dead_letters(&mut all, (0..5).map(|s| letter(s, "x")).collect(), 3);
        assert_eq!((added, dropped), (5, 2));
        assert_eq!(all.iter().map(|d| d.seq).collect::<Vec<_>>(), [2, 3, 4]);
        let (added, dropped) = merge_dead_letters(&mut all, vec![letter(3, "again")], 3);
        assert_eq!((added, dropped), (0, 0));
        assert_eq!(all[1].reason, "again");
        let (_, _) = merge_dead_letters(&mut all, vec![letter(9, &"r".repeat(10_000))], 3);
        assert!(all[2].reason.len() <= MAX_REASON_BYTES + 3);
    }

    #[test]
    fn truncation_keeps_utf8() {
        let mut s = "é".repeat(10);
        truncate_utf8(&mut s, 7);
        assert!(s.len() <= 7 + '…'.len_utf8());
        assert!(s.ends_with('…'));
        let mut short = "abc".to_owned();
        truncate_utf8(&mut short, 7);
        assert_eq!(short, "abc");
    }
}
