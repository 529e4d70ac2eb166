//! The group-commit writer thread.
//!
//! It owns the active segment file of each lane. Each round it takes every request queued
//! since the previous round (up to [`MAX_BATCH`]), refuses those that would exceed the size
//! bound, writes the rest lane by lane with one positional write per segment, fdatasyncs each
//! touched segment once, publishes the new lengths (readers never look past a published
//! length), and only then answers. A failed round is rolled back (new segments removed, the
//! active one truncated to its length before the round) so that an error answer never leaves
//! a record behind that a later round would append after.
//!
//! The thread holds no [`super::Spool`] handle: it ends when the last handle drops the
//! request channel's sender, and the handle's drop joins it before releasing the lock.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use super::fsutil;
use super::{Position, Shared, SpoolError, lane_index};
use crate::event::Priority;

/// Most requests written in one round (bounds the latency of the first one).
const MAX_BATCH: usize = 4096;

/// Where to send the outcome of an append.
pub(super) enum Reply {
    /// [`super::Spool::append`].
    Async(tokio::sync::oneshot::Sender<Result<Position, SpoolError>>),
    /// [`super::Spool::append_blocking`].
    Blocking(mpsc::SyncSender<Result<Position, SpoolError>>),
}

impl Reply {
    fn send(self, result: Result<Position, SpoolError>) {
        // A caller that stopped waiting (a dropped future) does not undo the append: the record
        // is durable and will be delivered, which is what "at least once" promises.
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// One append.
pub(super) struct Request {
    /// Lane.
    pub(super) lane: Priority,
    /// The encoded frame (header + payload), checked against the size limits already.
    pub(super) frame: Vec<u8>,
    /// Where the answer goes.
    pub(super) reply: Reply,
}

/// What to undo after a failed round.
struct Rollback {
    segment: u64,
    len: u64,
    created: Vec<u64>,
}

/// The active segment of one lane.
pub(super) struct LaneWriter {
    dir: PathBuf,
    file: File,
    segment: u64,
    len: u64,
    rollback: Option<Rollback>,
}

type WriteError = (PathBuf, io::Error);

/// Each frame's position, and the (segment, durable length) pairs to publish.
type Written = (Vec<Position>, Vec<(u64, u64)>);

impl LaneWriter {
    /// The writer of `dir`'s active segment `segment`, whose intact content ends at `len`.
    pub(super) fn open(dir: PathBuf, segment: u64, len: u64) -> Result<Self, SpoolError> {
        let file = fsutil::open_rw(&fsutil::segment_path(&dir, segment))?;
        Ok(Self {
            dir,
            file,
            segment,
            len,
            rollback: None,
        })
    }

    fn path(&self, segment: u64) -> PathBuf {
        fsutil::segment_path(&self.dir, segment)
    }

    /// Writes `frames` in order and makes them durable. Returns each frame's position and the
    /// (segment, durable length) pairs to publish.
    fn write_frames(
        &mut self,
        frames: &[&[u8]],
        segment_bytes: u64,
        shared: &Shared,
    ) -> Result<Written, WriteError> {
        self.repair()?;
        self.rollback = Some(Rollback {
            segment: self.segment,
            len: self.len,
            created: Vec::new(),
        });
        match self.try_write(frames, segment_bytes, shared) {
            Ok(done) => {
                self.rollback = None;
                Ok(done)
            }
            Err(e) => {
                if let Err((path, undo)) = self.repair() {
                    tracing::error!(
                        path = %path.display(),
                        error = %undo,
                        "cannot roll back a failed spool write; will retry before the next one"
                    );
                }
                Err(e)
            }
        }
    }

    fn try_write(
        &mut self,
        frames: &[&[u8]],
        segment_bytes: u64,
        shared: &Shared,
    ) -> Result<Written, WriteError> {
        let mut positions = Vec::with_capacity(frames.len());
        let mut published = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut base = self.len;
        for frame in frames {
            let end = base + buf.len() as u64;
            if end > 0 && end.saturating_add(frame.len() as u64) > segment_bytes {
                // Seal the current segment before the next one exists, so that only the last
                // segment of a lane can ever have a torn tail.
                self.flush(&buf, base, shared)?;
                self.len = end;
                published.push((self.segment, end));
                let next = self.segment + 1;
                let path = self.path(next);
                let file = fsutil::create_segment_file(&path).map_err(|e| (path.clone(), e))?;
                if let Some(rollback) = &mut self.rollback {
                    rollback.created.push(next);
                }
                self.file = file;
                self.segment = next;
                self.len = 0;
                fsutil::sync_dir(&self.dir).map_err(split)?;
                base = 0;
                buf.clear();
            }
            positions.push(Position {
                segment: self.segment,
                offset: base + buf.len() as u64,
            });
            buf.extend_from_slice(frame);
        }
        self.flush(&buf, base, shared)?;
        self.len = base + buf.len() as u64;
        published.push((self.segment, self.len));
        Ok((positions, published))
    }

    fn flush(&self, buf: &[u8], base: u64, shared: &Shared) -> Result<(), WriteError> {
        let with_path = |e| (self.path(self.segment), e);
        self.file.write_all_at(buf, base).map_err(with_path)?;
        self.file.sync_data().map_err(with_path)?;
        shared.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Undoes the last failed round, if any (kept for a retry when undoing fails too).
    fn repair(&mut self) -> Result<(), WriteError> {
        let Some(rollback) = self.rollback.take() else {
            return Ok(());
        };
        match self.undo(&rollback) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.rollback = Some(rollback);
                Err(e)
            }
        }
    }

    fn undo(&mut self, rollback: &Rollback) -> Result<(), WriteError> {
        for &segment in &rollback.created {
            fsutil::remove_if_exists(&self.path(segment)).map_err(split)?;
        }
        if !rollback.created.is_empty() {
            fsutil::sync_dir(&self.dir).map_err(split)?;
        }
        if self.segment != rollback.segment {
            self.file = fsutil::open_rw(&self.path(rollback.segment)).map_err(split)?;
            self.segment = rollback.segment;
        }
        let path = self.path(rollback.segment);
        self.file
            .set_len(rollback.len)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| (path, e))?;
        self.len = rollback.len;
        Ok(())
    }
}

/// A [`SpoolError::Io`] as a path and an error.
fn split(e: SpoolError) -> WriteError {
    match e {
        SpoolError::Io { path, source } => (path, source),
        other => (PathBuf::new(), io::Error::other(other.to_string())),
    }
}

/// The thread's body: one round per wake-up until every sender is gone.
pub(super) fn run(shared: &Shared, rx: &mpsc::Receiver<Request>, lanes: &mut [LaneWriter; 2]) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        round(shared, lanes, batch);
    }
}

fn round(shared: &Shared, lanes: &mut [LaneWriter; 2], batch: Vec<Request>) {
    let max = shared.max_bytes;
    let mut used = shared.state.lock().used_bytes();
    let mut groups: [Vec<Request>; 2] = [Vec::new(), Vec::new()];
    for request in batch {
        let len = request.frame.len() as u64;
        if used.saturating_add(len) > max {
            request.reply.send(Err(SpoolError::Full {
                max_bytes: max,
                used_bytes: used,
            }));
            continue;
        }
        used += len;
        groups[lane_index(request.lane)].push(request);
    }
    for (index, group) in groups.into_iter().enumerate() {
        if group.is_empty() {
            continue;
        }
        let writer = &mut lanes[index];
        let frames: Vec<&[u8]> = group.iter().map(|r| r.frame.as_slice()).collect();
        match writer.write_frames(&frames, shared.segment_bytes, shared) {
            Ok((positions, published)) => {
                {
                    let mut state = shared.state.lock();
                    let lane = &mut state.lanes[index];
                    for (segment, len) in published {
                        lane.segments.insert(segment, len);
                    }
                    lane.pending_records += group.len() as u64;
                }
                shared.notify.notify_waiters();
                for (request, position) in group.into_iter().zip(positions) {
                    request.reply.send(Ok(position));
                }
            }
            Err((path, error)) => {
                tracing::error!(
                    path = %path.display(),
                    error = %error,
                    records = group.len(),
                    "writing to the audit spool failed"
                );
                for request in group {
                    request.reply.send(Err(SpoolError::Io {
                        path: path.clone(),
                        source: io::Error::new(error.kind(), error.to_string()),
                    }));
                }
            }
        }
    }
}

/// Directory of a lane.
pub(super) fn lane_dir(root: &Path, lane: Priority) -> PathBuf {
    root.join(lane.as_str())
}
