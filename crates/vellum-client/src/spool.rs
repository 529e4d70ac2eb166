//! The guaranteed-delivery spool: a crash-safe, size-bounded, on-disk queue of audit events.
//!
//! [`crate::Client::log_with_guaranteed_delivery`] appends the event here and returns once it
//! is fsynced; a background task reads the spool in priority order ([`Spool::next_batch`]),
//! sends the records, and acknowledges them ([`Spool::ack`]) after the server's receipt, or
//! moves a permanently refused record to the dead-letter file ([`Spool::dead_letter`]).
//! Delivery is *at least once*: a crash between the server's receipt and the acknowledgement
//! sends those records again, and their idempotency keys make the repeat harmless.
//!
//! # Layout
//!
//! ```text
//! <dir>/                          0700
//!   LOCK                          flock(LOCK_EX|LOCK_NB) held by the owning Spool
//!   high/  normal/                one lane per priority, 0700
//!     00000000000000000000.seg    segment files, 0600, numbered from 0, never reused
//!     00000000000000000001.seg
//!     cursor                      the lane's first undelivered position, 0600
//!   dead-letter.ndjson            permanent rejections, one JSON line each, 0600
//!   quarantine/                   damaged bytes found by recovery, 0700 / 0600
//!     <lane>-<segment>-<offset>.bin
//! ```
//!
//! ## Records
//!
//! A segment is a sequence of frames, nothing else (no file header):
//!
//! ```text
//! +---------+------------------+-------------------+----------------------------+
//! | "VSR1"  | payload len u32LE| CRC-32 of payload | payload: SpooledEvent JSON |
//! +---------+------------------+-------------------+----------------------------+
//!   4 bytes      4 bytes             4 bytes            len bytes
//! ```
//!
//! A record's [`Position`] is its segment number and the byte offset of its frame. A lane
//! appends to its last segment only; when a frame would take that segment past
//! [`SpoolConfig::segment_bytes`], the segment is fdatasynced ("sealed") and the next one is
//! created (and the directory fsynced). A frame larger than `segment_bytes` or than
//! `max_bytes` is refused with [`SpoolError::TooLarge`]. Because a segment is sealed before its
//! successor exists, only the last segment of a lane can end in a torn frame.
//!
//! ## Cursor
//!
//! `cursor` is 24 bytes: `"VSC1"`, segment u64 LE, offset u64 LE, CRC-32 of those 20 bytes.
//! It is replaced atomically (write `cursor.tmp`, fsync, rename, fsync the lane directory).
//!
//! # Appending (group commit)
//!
//! One writer thread owns the active segment of each lane. It takes every append queued
//! since its last round, refuses those that would exceed the size bound
//! ([`SpoolError::Full`], nothing written), writes the others lane by lane, fdatasyncs each
//! touched segment once, publishes the new lengths and then answers every caller; concurrent
//! appends therefore share fsyncs. Readers never read past a published length, so they never
//! see a record that is not durable. A failed round is undone (truncated) before the error is
//! returned.
//!
//! # Acknowledging
//!
//! * [`Spool::next_batch`] reads from disk, from the lane cursor on, without consuming.
//! * [`Spool::ack`]`(lane, p)` moves the cursor to the end of the record at `p` (or to the
//!   start of the next segment when that is the end of a sealed segment), persists it, and then
//!   deletes every segment before the cursor's. Acknowledging a position before the cursor is
//!   a no-op; a position that is not a pending record is an error. A crash between the cursor
//!   write and the deletions is repaired on open.
//! * [`Spool::dead_letter`] appends the record and the server's reason to the dead-letter file
//!   (fsynced) and then acknowledges *through* that record, like `ack`: settle records in lane
//!   order. A torn last line of that file (a crash mid-append) is dropped on open; its record
//!   was not acknowledged yet and is delivered (and dead-lettered) again.
//!
//! # Size bound
//!
//! `used_bytes` is the size of the lanes' segment files minus the delivered prefix of each
//! lane's cursor segment, i.e. the undelivered bytes (plus any segment whose deletion failed).
//! Appends beyond [`SpoolConfig::max_bytes`] fail with [`SpoolError::Full`]; acknowledgements
//! lower it. It is recomputed on open. Dead letters and quarantined bytes do not count.
//!
//! # Recovery (on open)
//!
//! Every step is safe to interrupt by another crash; all of them are idempotent.
//!
//! 1. Missing directories are created (0700); a stale `cursor.tmp` is removed.
//! 2. An unreadable cursor (bad checksum) is moved to `quarantine/` and logged; the lane is then
//!    delivered from its first record (duplicates are harmless, losses are not).
//! 3. Segments before the cursor's segment are deleted (an interrupted acknowledgement). A cursor
//!    naming a missing segment is clamped to the lane's first record. A lane without segments
//!    gets an empty one.
//! 4. Every remaining segment is scanned; each frame's magic, length, CRC and payload shape are
//!    checked. At the first damaged frame:
//!    * in the last segment, if no intact frame follows it, it is a **torn tail** (a crash in
//!      the middle of an append that was never acknowledged): the segment is truncated there,
//!      with a warning;
//!    * otherwise it is **damage** (bit rot, an edit): the bytes from there to the end of the
//!      segment are copied to `quarantine/<lane>-<segment>-<offset>.bin` (fsynced), logged with
//!      `tracing::error`, counted in [`SpoolStats::quarantined_bytes`], and the segment is
//!      truncated at that offset (in every segment, so that a later open finds it clean and does
//!      not quarantine the same bytes twice). Recovery continues with the next segment.
//! 5. The cursor is placed on a record boundary: a cursor past the end of its segment is
//!    clamped to the lane's first record; one inside quarantined bytes moves to their start
//!    (the end of the segment's intact records); a changed cursor is persisted.
//! 6. Pending records are counted; the writer resumes at the end of each lane's last segment.
//!
//! A record that goes bad *after* open is reported by [`Spool::next_batch`] as
//! [`SpoolError::Corrupt`]; reopening the spool quarantines it.
//!
//! # Concurrency
//!
//! `Spool` is a cheap handle (`Arc`); clones share one writer thread. `next_batch`, `ack` and
//! `dead_letter` are meant for one delivery task and are serialized among themselves. The
//! directory lock is released when the last clone is dropped (after the writer thread, which
//! holds no handle, has finished its round and exited). [`inspect`] reads a spool without the
//! lock, for `vellum spool status` while the application runs.

mod format;
mod fsutil;
mod recovery;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::error::ServerRejection;
use crate::event::Priority;
use format::FrameReader;
use fsutil::io_err;
use writer::{LaneWriter, Reply, Request, lane_dir};

const LOCK_FILE: &str = "LOCK";
const CURSOR_FILE: &str = "cursor";
const CURSOR_TMP_FILE: &str = "cursor.tmp";
const DEAD_LETTER_FILE: &str = "dead-letter.ndjson";
const DEAD_LETTER_TMP_FILE: &str = "dead-letter.ndjson.tmp";
const QUARANTINE_DIR: &str = "quarantine";

/// Settings of a [`Spool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Directory of the spool, created (0700) if missing; an existing one that others can read
    /// is restricted to 0700. One process at a time may use it.
    pub dir: PathBuf,
    /// Bound on undelivered bytes on disk, so that a long server outage cannot fill the disk:
    /// appends beyond it fail with [`SpoolError::Full`]. Default 1 GiB.
    pub max_bytes: u64,
    /// Size at which a lane starts a new segment file. Space comes back a whole delivered
    /// segment at a time, and no record may be larger. Default 8 MiB.
    pub segment_bytes: u64,
}

impl SpoolConfig {
    /// Settings for a spool in `dir` with the default bounds (1 GiB, 8 MiB segments).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 1 << 30,
            segment_bytes: 8 << 20,
        }
    }
}

/// One spooled event, as stored (JSON payload of a record) and as handed to the deliverer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpooledEvent {
    /// The event's idempotency key, so that a redelivery after a crash is not a second event.
    pub idempotency_key: String,
    /// Lane of the event.
    pub priority: Priority,
    /// When the event was spooled (unix time, microseconds), to tell how far delivery lags.
    pub spooled_at_micros: i64,
    /// The event object exactly as it will be sent.
    pub event: serde_json::Value,
}

/// Where a record is within its lane: what [`Spool::ack`] takes to mark delivery progress.
/// Positions of a lane increase in append order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Segment number.
    pub segment: u64,
    /// Byte offset of the record's frame in the segment.
    pub offset: u64,
}

/// An undelivered record returned by [`Spool::next_batch`].
#[derive(Debug, Clone)]
pub struct PendingRecord {
    /// Its position, to acknowledge it (and everything before it) with [`Spool::ack`].
    pub position: Position,
    /// The record.
    pub record: SpooledEvent,
    /// Its size on disk (frame header plus JSON), which acknowledging it frees.
    pub bytes: u64,
}

/// A record the server refused for good, kept with the reason in `dead-letter.ndjson` so that
/// an operator can fix and replay it (`vellum spool replay`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// When it was dead-lettered (unix time, microseconds).
    pub dead_lettered_at_micros: i64,
    /// The server's reason.
    pub rejection: ServerRejection,
    /// The record.
    pub record: SpooledEvent,
}

/// Counts of one lane, to tell how far delivery lags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LaneStats {
    /// Records not delivered yet.
    pub pending_records: u64,
    /// Their bytes on disk.
    pub pending_bytes: u64,
    /// `spooledAtMicros` of the first undelivered record (the next one delivery sends).
    pub oldest_spooled_at_micros: Option<i64>,
}

/// Counts of a spool, for metrics, health checks and `vellum spool status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpoolStats {
    /// The high-priority lane.
    pub high: LaneStats,
    /// The normal lane.
    pub normal: LaneStats,
    /// Bytes counted against the bound (see the module docs, "Size bound").
    pub used_bytes: u64,
    /// The bound; 0 from [`inspect`], which cannot know the owner's configuration.
    pub max_bytes: u64,
    /// Lines in the dead-letter file.
    pub dead_letters: u64,
    /// Bytes in `quarantine/`: damaged data recovery set aside, for an operator to look at.
    pub quarantined_bytes: u64,
}

/// What can go wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another process (or another `Spool` in this one) owns the directory.
    #[error(
        "spool {} is in use by another process (lock held on {})",
        .dir.display(),
        .dir.join(LOCK_FILE).display()
    )]
    Locked {
        /// The spool directory.
        dir: PathBuf,
    },
    /// The size bound is reached; nothing was written.
    #[error(
        "spool is full ({used_bytes} of {max_bytes} bytes used): delivery must catch up or \
         max_bytes be raised"
    )]
    Full {
        /// The bound.
        max_bytes: u64,
        /// Bytes in use.
        used_bytes: u64,
    },
    /// One record is larger than a segment or than the whole bound, so it can never be spooled.
    #[error("spooled record of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its encoded size.
        bytes: u64,
        /// The limit (the smaller of `segment_bytes` and `max_bytes`).
        max: u64,
    },
    /// A file operation failed.
    #[error("spool I/O error on {}: {source}", .path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A file has content the spool cannot read.
    #[error("spool file {} is corrupt: {detail}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        detail: String,
    },
    /// The record cannot be encoded as JSON.
    #[error("cannot encode the spooled record: {0}")]
    Encode(#[source] serde_json::Error),
    /// The writer thread is gone.
    #[error("the spool is closed (its writer thread has stopped)")]
    Closed,
}

/// Per-lane in-memory state (shared by the handle and the writer thread).
#[derive(Debug, Clone)]
struct LaneState {
    /// First undelivered position (as persisted).
    cursor: Position,
    /// Segment number -> published (durable, intact) length.
    segments: BTreeMap<u64, u64>,
    /// Records from the cursor on.
    pending_records: u64,
}

impl LaneState {
    fn used_bytes(&self) -> u64 {
        let total: u64 = self.segments.values().sum();
        let delivered = if self.segments.contains_key(&self.cursor.segment) {
            self.cursor.offset
        } else {
            0
        };
        total.saturating_sub(delivered)
    }

    fn pending_bytes(&self) -> u64 {
        let total: u64 = self
            .segments
            .range(self.cursor.segment..)
            .map(|(_, len)| len)
            .sum();
        total.saturating_sub(self.cursor.offset)
    }

    /// (segment, published length) from the cursor's segment on.
    fn segments_from_cursor(&self) -> Vec<(u64, u64)> {
        self.segments
            .range(self.cursor.segment..)
            .map(|(&segment, &len)| (segment, len))
            .collect()
    }
}

#[derive(Debug)]
struct State {
    lanes: [LaneState; 2],
    dead_letters: u64,
    quarantined_bytes: u64,
}

impl State {
    fn used_bytes(&self) -> u64 {
        self.lanes.iter().map(LaneState::used_bytes).sum()
    }
}

/// What the handle and the writer thread share. Holds no request sender, so the thread does
/// not keep itself alive.
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Serializes `next_batch`, `ack` and segment deletion.
    reader: Mutex<()>,
    /// Serializes dead-letter file access; holds the length `dead_letters()` last read.
    dead_letter_file: Mutex<Option<u64>>,
    /// Woken after every published append.
    notify: Notify,
    /// `spooledAtMicros` of the first record after a cursor, per lane (records after a given
    /// cursor never change, so this is valid as long as the cursor is).
    oldest: Mutex<[Option<(Position, i64)>; 2]>,
    /// fdatasyncs of segment files by the writer (to observe group commit).
    syncs: AtomicU64,
    /// The largest frame asked to be appended since open: the headroom [`Spool::is_full`]
    /// wants, so "not full" means the next such record fits.
    largest_frame: AtomicU64,
}

impl Shared {
    fn lane_dir(&self, lane: Priority) -> PathBuf {
        lane_dir(&self.dir, lane)
    }

    fn has_pending(&self) -> bool {
        self.state
            .lock()
            .lanes
            .iter()
            .any(|lane| lane.pending_records > 0)
    }
}

/// Owner of the lock and the writer thread; dropped with the last [`Spool`] clone.
struct Handle {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    _lock: Flock<File>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing the channel ends the writer after its current round; join it so that the lock
        // (dropped after this) is only released once nothing writes any more.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the spool writer thread panicked");
        }
    }
}

/// The guaranteed-delivery spool (see the module docs). A cheap handle: clones share the
/// directory lock and the writer thread; the lock is released when the last clone is dropped.
#[derive(Clone)]
pub struct Spool {
    handle: Arc<Handle>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.handle.shared.dir)
            .field("max_bytes", &self.handle.shared.max_bytes)
            .field("segment_bytes", &self.handle.shared.segment_bytes)
            .finish()
    }
}

fn lane_index(lane: Priority) -> usize {
    match lane {
        Priority::High => 0,
        Priority::Normal => 1,
    }
}

fn now_micros() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

fn take_lock(dir: &Path) -> Result<Flock<File>, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(fsutil::FILE_MODE)
        .open(&path)
        .map_err(io_err(&path))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, Errno::EWOULDBLOCK)) => Err(SpoolError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err((_, errno)) => Err(SpoolError::Io {
            path,
            source: io::Error::from(errno),
        }),
    }
}

impl Spool {
    /// Opens (creating it if needed, 0700) the spool in `config.dir`: takes the directory's
    /// lock (another holder, in this process or another, is [`SpoolError::Locked`]), recovers
    /// each lane after a crash (see the module docs, "Recovery"), and starts the writer thread.
    pub fn open(config: SpoolConfig) -> Result<Spool, SpoolError> {
        let dir = config.dir;
        fsutil::create_private_dir(&dir)?;
        let lock = take_lock(&dir)?;
        fsutil::remove_if_exists(&dir.join(DEAD_LETTER_TMP_FILE))?;
        let high = recovery::recover_lane(&dir, Priority::High)?;
        let normal = recovery::recover_lane(&dir, Priority::Normal)?;
        fsutil::sync_dir(&dir)?;
        let dead_letters = recovery::recover_dead_letters(&dir)?;
        let quarantined_bytes = fsutil::dir_size(&dir.join(QUARANTINE_DIR))?;
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            max_bytes: config.max_bytes,
            segment_bytes: config.segment_bytes,
            state: Mutex::new(State {
                lanes: [high.state, normal.state],
                dead_letters,
                quarantined_bytes,
            }),
            reader: Mutex::new(()),
            dead_letter_file: Mutex::new(None),
            notify: Notify::new(),
            oldest: Mutex::new([None, None]),
            syncs: AtomicU64::new(0),
            largest_frame: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel::<Request>();
        let mut lanes: [LaneWriter; 2] = [high.writer, normal.writer];
        let thread_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("vellum-spool-writer".into())
            .spawn(move || writer::run(&thread_shared, &rx, &mut lanes))
            .map_err(io_err(&dir))?;
        Ok(Spool {
            handle: Arc::new(Handle {
                shared,
                tx: Some(tx),
                writer: Some(writer),
                _lock: lock,
            }),
        })
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.handle.shared.dir
    }

    /// Encodes a record and checks it against the size limits.
    fn request(&self, record: &SpooledEvent, reply: Reply) -> Result<Request, SpoolError> {
        let frame = format::encode_frame(record)?;
        let shared = &self.handle.shared;
        let max = shared.segment_bytes.min(shared.max_bytes);
        let bytes = frame.len() as u64;
        if bytes > max {
            return Err(SpoolError::TooLarge { bytes, max });
        }
        shared.largest_frame.fetch_max(bytes, Ordering::Relaxed);
        Ok(Request {
            lane: record.priority,
            frame,
            reply,
        })
    }

    fn send(&self, request: Request) -> Result<(), SpoolError> {
        let tx = self.handle.tx.as_ref().ok_or(SpoolError::Closed)?;
        tx.send(request).map_err(|_| SpoolError::Closed)
    }

    /// Appends `record` to its priority's lane and returns once it is on disk (fdatasync), so
    /// that it survives a crash from then on. Concurrent appends share fsyncs (group commit).
    /// A full spool is [`SpoolError::Full`] and writes nothing. If the future is dropped
    /// before it resolves, the record may still be spooled (and delivered).
    pub async fn append(&self, record: SpooledEvent) -> Result<Position, SpoolError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = self.request(&record, Reply::Async(tx))?;
        drop(record);
        self.send(request)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// [`Spool::append`] for code without an async runtime (and the CLI). It blocks the calling
    /// thread until the fsync: inside a tokio runtime use `append` (or `block_in_place`).
    pub fn append_blocking(&self, record: SpooledEvent) -> Result<Position, SpoolError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let request = self.request(&record, Reply::Blocking(tx))?;
        self.send(request)?;
        rx.recv().map_err(|_| SpoolError::Closed)?
    }

    /// The oldest undelivered records of the highest-priority lane that has any, in append
    /// order: at most `max_records`, and stopping before `max_bytes` would be exceeded (but
    /// always at least one record if any is pending). Does not consume: without an
    /// [`Spool::ack`] the same records come back. Reads from disk.
    pub fn next_batch(
        &self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Option<(Priority, Vec<PendingRecord>)>, SpoolError> {
        let shared = &self.handle.shared;
        let _reader = shared.reader.lock();
        for lane in Priority::ALL {
            let (cursor, segments) = {
                let state = shared.state.lock();
                let lane_state = &state.lanes[lane_index(lane)];
                if lane_state.pending_records == 0 {
                    continue;
                }
                (lane_state.cursor, lane_state.segments_from_cursor())
            };
            let records = read_records(
                &shared.lane_dir(lane),
                cursor,
                &segments,
                max_records.max(1),
                max_bytes,
            )?;
            if !records.is_empty() {
                return Ok(Some((lane, records)));
            }
        }
        Ok(None)
    }

    /// Marks every record of `priority`'s lane up to and including the one at `through` as
    /// delivered: persists the lane cursor atomically, deletes the segment files that are
    /// entirely delivered, and frees their bytes. Acknowledging a position before the cursor
    /// is a no-op; a position that is not a pending record is an error (nothing changes).
    pub fn ack(&self, priority: Priority, through: Position) -> Result<(), SpoolError> {
        let shared = &self.handle.shared;
        let _reader = shared.reader.lock();
        let index = lane_index(priority);
        let dir = shared.lane_dir(priority);
        let (cursor, segments) = {
            let state = shared.state.lock();
            let lane = &state.lanes[index];
            (lane.cursor, lane.segments_from_cursor())
        };
        if through < cursor {
            return Ok(());
        }
        let (count, end) = count_through(&dir, priority, cursor, &segments, through)?;
        let new_cursor = {
            let state = shared.state.lock();
            let lane = &state.lanes[index];
            match (
                lane.segments.get(&end.segment),
                lane.segments.range(end.segment + 1..).next(),
            ) {
                (Some(&len), Some((&next, _))) if end.offset >= len => Position {
                    segment: next,
                    offset: 0,
                },
                _ => end,
            }
        };
        recovery::write_cursor(&dir, new_cursor)?;
        let delivered: Vec<u64> = {
            let mut state = shared.state.lock();
            let lane = &mut state.lanes[index];
            lane.cursor = new_cursor;
            lane.pending_records = lane.pending_records.saturating_sub(count);
            lane.segments
                .range(..new_cursor.segment)
                .map(|(&segment, _)| segment)
                .collect()
        };
        let mut removed = Vec::new();
        for segment in delivered {
            let path = fsutil::segment_path(&dir, segment);
            match fsutil::remove_if_exists(&path) {
                Ok(()) => removed.push(segment),
                // Still counted in used_bytes; retried by the next ack and by recovery.
                Err(e) => tracing::warn!(error = %e, "cannot delete a delivered spool segment"),
            }
        }
        if !removed.is_empty() {
            if let Err(e) = fsutil::sync_dir(&dir) {
                // The cursor is durable; recovery deletes segments before it again if needed.
                tracing::warn!(error = %e, "cannot fsync the spool lane directory");
            }
            let mut state = shared.state.lock();
            let lane = &mut state.lanes[index];
            for segment in removed {
                lane.segments.remove(&segment);
            }
        }
        Ok(())
    }

    /// Appends `record` with the server's reason to `<dir>/dead-letter.ndjson` (fsynced) and
    /// acknowledges it, so that a permanent rejection never blocks its lane. Like
    /// [`Spool::ack`], this acknowledges everything before the record too: settle records in
    /// lane order.
    pub fn dead_letter(
        &self,
        record: &PendingRecord,
        rejection: &ServerRejection,
    ) -> Result<(), SpoolError> {
        let shared = &self.handle.shared;
        let letter = DeadLetter {
            dead_lettered_at_micros: now_micros(),
            rejection: rejection.clone(),
            record: record.record.clone(),
        };
        let mut line = serde_json::to_vec(&letter).map_err(SpoolError::Encode)?;
        line.push(b'\n');
        {
            let _file = shared.dead_letter_file.lock();
            append_line(&shared.dir, &line)?;
            shared.state.lock().dead_letters += 1;
        }
        self.ack(record.record.priority, record.position)
    }

    /// Resolves as soon as some lane has an undelivered record (at once if one has already).
    pub async fn wait_for_records(&self) {
        let shared = &self.handle.shared;
        loop {
            let notified = shared.notify.notified();
            tokio::pin!(notified);
            // Register before looking, so that an append in between is not missed.
            notified.as_mut().enable();
            if shared.has_pending() {
                return;
            }
            notified.await;
        }
    }

    /// Whether the spool is too full for another record as large as the largest appended
    /// since it was opened (at least 4 KiB), so that appends would fail with
    /// [`SpoolError::Full`] until delivery frees space. In memory only: cheap enough for
    /// every request of a fail-closed route.
    pub fn is_full(&self) -> bool {
        let shared = &self.handle.shared;
        let headroom = shared.largest_frame.load(Ordering::Relaxed).max(4096);
        shared.state.lock().used_bytes().saturating_add(headroom) > shared.max_bytes
    }

    /// Current counts (in memory, plus one small read per lane for the oldest record when the
    /// cursor has moved since the last call).
    pub fn stats(&self) -> SpoolStats {
        let shared = &self.handle.shared;
        let (lanes, used_bytes, dead_letters, quarantined_bytes) = {
            let state = shared.state.lock();
            let lanes = Priority::ALL.map(|lane| {
                let l = &state.lanes[lane_index(lane)];
                (
                    lane,
                    l.pending_records,
                    l.pending_bytes(),
                    l.cursor,
                    l.segments_from_cursor(),
                )
            });
            (
                lanes,
                state.used_bytes(),
                state.dead_letters,
                state.quarantined_bytes,
            )
        };
        let [high, normal] = lanes.map(
            |(lane, pending_records, pending_bytes, cursor, segments)| LaneStats {
                pending_records,
                pending_bytes,
                oldest_spooled_at_micros: if pending_records == 0 {
                    None
                } else {
                    self.oldest(lane, cursor, &segments)
                },
            },
        );
        SpoolStats {
            high,
            normal,
            used_bytes,
            max_bytes: shared.max_bytes,
            dead_letters,
            quarantined_bytes,
        }
    }

    fn oldest(&self, lane: Priority, cursor: Position, segments: &[(u64, u64)]) -> Option<i64> {
        let shared = &self.handle.shared;
        let index = lane_index(lane);
        if let Some((at, spooled_at)) = shared.oldest.lock()[index]
            && at == cursor
        {
            return Some(spooled_at);
        }
        match first_spooled_at(&shared.lane_dir(lane), cursor, segments) {
            Ok(Some(spooled_at)) => {
                shared.oldest.lock()[index] = Some((cursor, spooled_at));
                Some(spooled_at)
            }
            Ok(None) => None,
            Err(e) => {
                // E.g. the segment was just deleted by an ack: the next call looks again.
                tracing::debug!(error = %e, "cannot read the oldest spooled record");
                None
            }
        }
    }

    /// The dead letters in the file, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, SpoolError> {
        let shared = &self.handle.shared;
        let mut seen = shared.dead_letter_file.lock();
        let (letters, len) = read_dead_letters(&shared.dir)?;
        *seen = Some(len);
        Ok(letters)
    }

    /// Atomically replaces the dead-letter file's content with `keep` (`vellum spool replay`
    /// removes the ones the server accepted on resending). Dead letters written since this
    /// handle's last [`Spool::dead_letters`] call are kept too, after `keep`, so a rejection
    /// arriving during a replay is not lost.
    pub fn replace_dead_letters(&self, keep: &[DeadLetter]) -> Result<(), SpoolError> {
        let shared = &self.handle.shared;
        let mut seen = shared.dead_letter_file.lock();
        let path = shared.dir.join(DEAD_LETTER_FILE);
        let current = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let complete = current
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let newer: &[u8] = match *seen {
            Some(len) if (len as usize) < complete => &current[len as usize..complete],
            _ => &[],
        };
        let mut content = Vec::new();
        for letter in keep {
            serde_json::to_writer(&mut content, letter).map_err(SpoolError::Encode)?;
            content.push(b'\n');
        }
        content.extend_from_slice(newer);
        fsutil::write_atomically(&path, &shared.dir.join(DEAD_LETTER_TMP_FILE), &content)?;
        *seen = None;
        shared.state.lock().dead_letters = keep.len() as u64 + recovery::count_lines(newer);
        Ok(())
    }
}

/// Appends one line to the dead-letter file durably; a failed write is cut off again so that
/// the next line does not start in the middle of this one.
fn append_line(dir: &Path, line: &[u8]) -> Result<(), SpoolError> {
    let path = dir.join(DEAD_LETTER_FILE);
    let created = !path.exists();
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(fsutil::FILE_MODE)
        .open(&path)
        .map_err(io_err(&path))?;
    let before = file.metadata().map_err(io_err(&path))?.len();
    if let Err(e) = file.write_all(line).and_then(|()| file.sync_data()) {
        if let Err(undo) = file.set_len(before) {
            tracing::error!(error = %undo, "cannot cut off a failed dead-letter write");
        }
        return Err(io_err(&path)(e));
    }
    if created {
        fsutil::sync_dir(dir)?;
    }
    Ok(())
}

/// Parses the dead-letter file's complete lines (an incomplete last line, an append in
/// progress or cut by a crash, is skipped); returns them and the length they span.
fn read_dead_letters(dir: &Path) -> Result<(Vec<DeadLetter>, u64), SpoolError> {
    let path = dir.join(DEAD_LETTER_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut letters = Vec::new();
    for (number, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let letter = serde_json::from_slice(line).map_err(|e| SpoolError::Corrupt {
            path: path.clone(),
            detail: format!("line {}: {e}", number + 1),
        })?;
        letters.push(letter);
    }
    Ok((letters, complete as u64))
}

/// Reads up to `max_records` / about `max_bytes` records from `cursor` on.
fn read_records(
    dir: &Path,
    cursor: Position,
    segments: &[(u64, u64)],
    max_records: usize,
    max_bytes: u64,
) -> Result<Vec<PendingRecord>, SpoolError> {
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut payload = Vec::new();
    for &(segment, len) in segments {
        let start = if segment == cursor.segment {
            cursor.offset
        } else {
            0
        };
        if start >= len {
            continue;
        }
        let path = fsutil::segment_path(dir, segment);
        let file = File::open(&path).map_err(io_err(&path))?;
        let mut reader = FrameReader::new(&file, start, len);
        while let Some(frame) = reader
            .next_frame(Some(&mut payload))
            .map_err(io_err(&path))?
        {
            let info = frame.map_err(|(offset, damage)| corrupt(&path, offset, &damage))?;
            if !out.is_empty() && total.saturating_add(info.len) > max_bytes {
                return Ok(out);
            }
            let record = format::decode_payload(&payload).map_err(|e| {
                corrupt(
                    &path,
                    info.offset,
                    &format::Damage::BadPayload(e.to_string()),
                )
            })?;
            total = total.saturating_add(info.len);
            out.push(PendingRecord {
                position: Position {
                    segment,
                    offset: info.offset,
                },
                record,
                bytes: info.len,
            });
            if out.len() >= max_records || total >= max_bytes {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

fn corrupt(path: &Path, offset: u64, damage: &format::Damage) -> SpoolError {
    SpoolError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("record at offset {offset}: {damage} (reopen the spool to quarantine it)"),
    }
}

/// Counts the records from `cursor` through the one at `through`; returns the count and the
/// position just after that record.
fn count_through(
    dir: &Path,
    lane: Priority,
    cursor: Position,
    segments: &[(u64, u64)],
    through: Position,
) -> Result<(u64, Position), SpoolError> {
    let not_pending = |path: &Path| SpoolError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot acknowledge position {}:{} of the {} lane: not a pending record",
                through.segment,
                through.offset,
                lane.as_str()
            ),
        ),
    };
    let mut count = 0u64;
    for &(segment, len) in segments {
        if segment > through.segment {
            break;
        }
        let path = fsutil::segment_path(dir, segment);
        let start = if segment == cursor.segment {
            cursor.offset
        } else {
            0
        };
        if segment == through.segment && through.offset >= len {
            return Err(not_pending(&path));
        }
        if start >= len {
            continue;
        }
        let file = File::open(&path).map_err(io_err(&path))?;
        let mut reader = FrameReader::new(&file, start, len);
        while let Some(frame) = reader.next_frame(None).map_err(io_err(&path))? {
            let info = frame.map_err(|(offset, damage)| corrupt(&path, offset, &damage))?;
            count += 1;
            if segment == through.segment {
                if info.offset == through.offset {
                    let end = Position {
                        segment,
                        offset: info.offset + info.len,
                    };
                    return Ok((count, end));
                }
                if info.offset > through.offset {
                    return Err(not_pending(&path));
                }
            }
        }
    }
    Err(not_pending(&fsutil::segment_path(dir, through.segment)))
}

/// `spooledAtMicros` of the first record at or after `cursor`.
fn first_spooled_at(
    dir: &Path,
    cursor: Position,
    segments: &[(u64, u64)],
) -> Result<Option<i64>, SpoolError> {
    Ok(read_records(dir, cursor, segments, 1, u64::MAX)?
        .first()
        .map(|r| r.record.spooled_at_micros))
}

/// A read-only look at the spool in `dir`, without its lock: works while the owning process
/// runs (`vellum spool inspect`). A record being appended at that instant may be missing, and
/// a damaged record ends the count of its segment; neither is an error. `max_bytes` is 0
/// (the owner's configuration is not on disk).
pub fn inspect(dir: &Path) -> Result<(SpoolStats, Vec<DeadLetter>), SpoolError> {
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(SpoolError::Io {
            path: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let high = recovery::inspect_lane(dir, Priority::High)?;
    let normal = recovery::inspect_lane(dir, Priority::Normal)?;
    let (letters, _) = read_dead_letters(dir)?;
    let stats = SpoolStats {
        used_bytes: high.pending_bytes + normal.pending_bytes,
        high,
        normal,
        max_bytes: 0,
        dead_letters: letters.len() as u64,
        quarantined_bytes: fsutil::dir_size(&dir.join(QUARANTINE_DIR))?,
    };
    Ok((stats, letters))
}
