//! Opening a lane after a crash (and the read-only counterpart used by [`super::inspect`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::format::{self, Damage, Scan};
use super::fsutil::{self, io_err};
use super::writer::{LaneWriter, lane_dir};
use super::{
    CURSOR_FILE, CURSOR_TMP_FILE, DEAD_LETTER_FILE, LaneState, LaneStats, Position, QUARANTINE_DIR,
    SpoolError, now_micros,
};
use crate::event::Priority;

/// A recovered lane: its in-memory state and the writer of its last segment.
pub(super) struct RecoveredLane {
    pub(super) state: LaneState,
    pub(super) writer: LaneWriter,
}

/// Segment numbers present in a lane directory, ascending.
pub(super) fn list_segments(lane_dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut ids = Vec::new();
    let entries = match fs::read_dir(lane_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(io_err(lane_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(lane_dir))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(format::parse_segment_file_name)
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The cursor file: `Ok(None)` if missing, `Ok(Some(Err(detail)))` if unreadable.
pub(super) fn read_cursor(path: &Path) -> Result<Option<Result<Position, String>>, SpoolError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(format::decode_cursor(&bytes))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Persists a lane cursor atomically.
pub(super) fn write_cursor(lane_dir: &Path, position: Position) -> Result<(), SpoolError> {
    fsutil::write_atomically(
        &lane_dir.join(CURSOR_FILE),
        &lane_dir.join(CURSOR_TMP_FILE),
        &format::encode_cursor(position),
    )
}

/// Copies `[from, to)` of a segment to a new quarantine file, durably; returns its path.
fn quarantine(
    root: &Path,
    lane: Priority,
    segment: u64,
    file: &File,
    from: u64,
    to: u64,
) -> Result<std::path::PathBuf, SpoolError> {
    let dir = root.join(QUARANTINE_DIR);
    fsutil::create_private_dir(&dir)?;
    let stem = format!("{}-{segment}-{from}", lane.as_str());
    let (mut out, path) = fsutil::create_unique(&dir, &stem)?;
    format::copy_range(file, from, to, &mut out)
        .and_then(|_| out.flush())
        .and_then(|()| out.sync_all())
        .map_err(io_err(&path))?;
    fsutil::sync_dir(&dir)?;
    Ok(path)
}

/// Recovers one lane (see the module docs of [`super`], "Recovery").
pub(super) fn recover_lane(root: &Path, lane: Priority) -> Result<RecoveredLane, SpoolError> {
    let dir = lane_dir(root, lane);
    fsutil::create_private_dir(&dir)?;
    fsutil::remove_if_exists(&dir.join(CURSOR_TMP_FILE))?;
    let cursor_path = dir.join(CURSOR_FILE);
    let stored = match read_cursor(&cursor_path)? {
        None => None,
        Some(Ok(position)) => Some(position),
        Some(Err(detail)) => {
            // rename() makes a torn cursor impossible, so this is damage. Redelivering the
            // lane from its first record is safe (idempotency keys), losing records is not.
            let qdir = root.join(QUARANTINE_DIR);
            fsutil::create_private_dir(&qdir)?;
            let target = qdir.join(format!("{}-cursor-{}.bin", lane.as_str(), now_micros()));
            fs::rename(&cursor_path, &target).map_err(io_err(&cursor_path))?;
            fsutil::sync_dir(&qdir)?;
            fsutil::sync_dir(&dir)?;
            tracing::error!(
                lane = lane.as_str(),
                path = %cursor_path.display(),
                moved_to = %target.display(),
                detail = %detail,
                "spool cursor is unreadable; the lane is delivered again from its first record"
            );
            None
        }
    };

    let mut ids = list_segments(&dir)?;
    // A cursor names an existing segment; every segment before it was delivered (its deletion
    // was interrupted). A cursor naming no existing segment is clamped to the first record.
    let mut cursor = match stored {
        Some(c) if ids.contains(&c.segment) => {
            let (delivered, kept): (Vec<u64>, Vec<u64>) =
                ids.iter().partition(|&&id| id < c.segment);
            for id in &delivered {
                fsutil::remove_if_exists(&fsutil::segment_path(&dir, *id))?;
            }
            if !delivered.is_empty() {
                fsutil::sync_dir(&dir)?;
            }
            ids = kept;
            Some(c)
        }
        Some(c) => {
            if !ids.is_empty() {
                tracing::warn!(
                    lane = lane.as_str(),
                    segment = c.segment,
                    offset = c.offset,
                    "spool cursor names a missing segment; delivering from the first record"
                );
            }
            None
        }
        None => None,
    };
    if ids.is_empty() {
        let id = match stored {
            Some(c) if c.offset == 0 => c.segment,
            Some(c) => c.segment.saturating_add(1),
            None => 0,
        };
        let path = fsutil::segment_path(&dir, id);
        fsutil::create_segment_file(&path).map_err(io_err(&path))?;
        fsutil::sync_dir(&dir)?;
        ids.push(id);
        cursor = None;
    }
    let first = ids[0];
    let mut cursor = cursor.unwrap_or(Position {
        segment: first,
        offset: 0,
    });

    let mut segments = BTreeMap::new();
    let mut records = 0u64;
    let mut records_before_cursor = 0u64;
    let last = ids.len() - 1;
    for (index, &id) in ids.iter().enumerate() {
        let path = fsutil::segment_path(&dir, id);
        let file = fsutil::open_rw(&path)?;
        let file_len = file.metadata().map_err(io_err(&path))?.len();
        let probe = if id == cursor.segment {
            cursor.offset
        } else {
            0
        };
        let scan = format::scan_segment(&file, file_len, probe).map_err(io_err(&path))?;
        let mut quarantined = false;
        if let Some((offset, damage)) = &scan.damage {
            quarantined = repair_segment(
                root,
                lane,
                id,
                &file,
                file_len,
                *offset,
                damage,
                index == last,
            )?;
            file.set_len(*offset)
                .and_then(|()| file.sync_all())
                .map_err(io_err(&path))?;
        }
        if id == cursor.segment {
            (cursor, records_before_cursor) =
                resolve_cursor(lane, cursor, first, &scan, file_len, quarantined);
        }
        records += scan.records;
        segments.insert(id, scan.valid_len);
    }
    if stored != Some(cursor) {
        write_cursor(&dir, cursor)?;
    }
    let state = LaneState {
        cursor,
        segments,
        pending_records: records.saturating_sub(records_before_cursor),
    };
    let (&active, &active_len) =
        state
            .segments
            .last_key_value()
            .ok_or_else(|| SpoolError::Corrupt {
                path: dir.clone(),
                detail: "lane has no segment after recovery".into(),
            })?;
    let writer = LaneWriter::open(dir, active, active_len)?;
    Ok(RecoveredLane { state, writer })
}

/// Deals with a damaged frame at `offset`: a torn tail of the last segment is only logged,
/// anything else is copied to quarantine first. The caller truncates the segment at `offset`.
/// Returns whether bytes were quarantined.
#[allow(clippy::too_many_arguments)]
fn repair_segment(
    root: &Path,
    lane: Priority,
    segment: u64,
    file: &File,
    file_len: u64,
    offset: u64,
    damage: &Damage,
    is_last: bool,
) -> Result<bool, SpoolError> {
    let path = fsutil::segment_path(&lane_dir(root, lane), segment);
    let torn = is_last
        && !matches!(damage, Damage::BadPayload(_))
        && !format::intact_frame_after(file, offset, file_len).map_err(io_err(&path))?;
    if torn {
        // A crash in the middle of an append: that record was never acknowledged.
        tracing::warn!(
            lane = lane.as_str(),
            path = %path.display(),
            offset,
            bytes = file_len - offset,
            damage = %damage,
            "truncating the torn tail of the spool (an append interrupted by a crash)"
        );
        return Ok(false);
    }
    let target = quarantine(root, lane, segment, file, offset, file_len)?;
    tracing::error!(
        lane = lane.as_str(),
        path = %path.display(),
        offset,
        bytes = file_len - offset,
        damage = %damage,
        quarantine = %target.display(),
        "spool segment is damaged; the unreadable bytes were moved to quarantine and the \
         records after them in this segment will not be delivered"
    );
    Ok(true)
}

/// Places the cursor on a record boundary of its (scanned) segment; returns it and the
/// number of records of that segment before it.
fn resolve_cursor(
    lane: Priority,
    cursor: Position,
    first: u64,
    scan: &Scan,
    file_len: u64,
    quarantined: bool,
) -> (Position, u64) {
    let within = cursor.offset <= scan.valid_len || (quarantined && cursor.offset <= file_len);
    if within {
        // Past the intact records but within quarantined bytes: resume after them, quietly
        // (the quarantine was logged).
        if scan.boundary_before_probe != cursor.offset && cursor.offset <= scan.valid_len {
            tracing::warn!(
                lane = lane.as_str(),
                segment = cursor.segment,
                offset = cursor.offset,
                "spool cursor is not on a record boundary; moving it back to one"
            );
        }
        let resolved = Position {
            segment: cursor.segment,
            offset: scan.boundary_before_probe,
        };
        return (resolved, scan.records_before_probe);
    }
    tracing::warn!(
        lane = lane.as_str(),
        segment = cursor.segment,
        offset = cursor.offset,
        "spool cursor points past the end of its segment; delivering from the first record"
    );
    (
        Position {
            segment: first,
            offset: 0,
        },
        0,
    )
}

/// Truncates an incomplete last line of the dead-letter file (an append cut by a crash; its
/// record is still in its lane) and returns the number of dead letters.
pub(super) fn recover_dead_letters(root: &Path) -> Result<u64, SpoolError> {
    let path = root.join(DEAD_LETTER_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            bytes = bytes.len() - complete,
            "truncating an incomplete last line of the dead-letter file"
        );
        let file = fsutil::open_rw(&path)?;
        file.set_len(complete as u64)
            .and_then(|()| file.sync_all())
            .map_err(io_err(&path))?;
    }
    Ok(count_lines(&bytes[..complete]))
}

/// Non-empty lines of complete dead-letter content.
pub(super) fn count_lines(bytes: &[u8]) -> u64 {
    bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .count() as u64
}

/// Counts a lane without changing anything (see [`super::inspect`]).
pub(super) fn inspect_lane(root: &Path, lane: Priority) -> Result<LaneStats, SpoolError> {
    let dir = lane_dir(root, lane);
    // Cursor before listing: racing an acknowledgement then over-counts a little instead of
    // missing segments deleted in between.
    let stored = read_cursor(&dir.join(CURSOR_FILE))?;
    let ids = list_segments(&dir)?;
    let Some(&first) = ids.first() else {
        return Ok(LaneStats::default());
    };
    let cursor = match stored {
        Some(Ok(c)) if ids.contains(&c.segment) => c,
        _ => Position {
            segment: first,
            offset: 0,
        },
    };
    let mut stats = LaneStats::default();
    for id in ids.into_iter().filter(|&id| id >= cursor.segment) {
        let path = fsutil::segment_path(&dir, id);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Deleted by an acknowledgement since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        let probe = if id == cursor.segment {
            cursor.offset
        } else {
            0
        };
        // Damage (or a record being appended right now) ends the count of this segment.
        let scan = format::scan_segment(&file, len, probe).map_err(io_err(&path))?;
        stats.pending_records += scan.records - scan.records_before_probe;
        stats.pending_bytes += scan.valid_len.saturating_sub(scan.boundary_before_probe);
        if stats.oldest_spooled_at_micros.is_none() {
            stats.oldest_spooled_at_micros = scan.first_spooled_at_after_probe;
        }
    }
    Ok(stats)
}
