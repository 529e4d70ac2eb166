//! File-system helpers: private (0700/0600) creation, directory fsyncs, atomic replacement.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::SpoolError;
use super::format::segment_file_name;

/// Mode of every directory the spool creates: events can contain PHI.
pub(super) const DIR_MODE: u32 = 0o700;
/// Mode of every file the spool creates.
pub(super) const FILE_MODE: u32 = 0o600;

/// Wraps an I/O error with the path it concerns.
pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `path` (and missing parents) with mode 0700, and tightens an existing directory
/// that others can read to 0700 (a warning if that is not allowed).
pub(super) fn create_private_dir(path: &Path) -> Result<(), SpoolError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(io_err(path))?;
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_dir() {
        return Err(SpoolError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    if meta.permissions().mode() & 0o077 != 0
        && let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
    {
        tracing::warn!(
            path = %path.display(),
            error = %e,
            "cannot restrict the spool directory to its owner (mode 0700)"
        );
    }
    Ok(())
}

/// fsyncs a directory, making the creations, renames and deletions in it durable.
pub(super) fn sync_dir(path: &Path) -> Result<(), SpoolError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(io_err(path))
}

/// Path of a segment file.
pub(super) fn segment_path(lane_dir: &Path, segment: u64) -> PathBuf {
    lane_dir.join(segment_file_name(segment))
}

/// Creates a new, empty segment file (0600). The caller fsyncs the directory.
pub(super) fn create_segment_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Opens an existing file for reading and writing.
pub(super) fn open_rw(path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))
}

/// Replaces `path` with `bytes` atomically: write `tmp`, fsync, rename, fsync the directory.
/// A crash leaves either the old or the new content, never a mix.
pub(super) fn write_atomically(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(tmp)
        .map_err(io_err(tmp))?;
    file.write_all(bytes).map_err(io_err(tmp))?;
    file.sync_all().map_err(io_err(tmp))?;
    drop(file);
    fs::rename(tmp, path).map_err(io_err(path))?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    sync_dir(dir)
}

/// Removes a file; a missing file is fine.
pub(super) fn remove_if_exists(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Total size of the regular files directly in `dir` (0 if it does not exist).
pub(super) fn dir_size(dir: &Path) -> Result<u64, SpoolError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut total = 0u64;
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        match entry.metadata() {
            Ok(meta) if meta.is_file() => total = total.saturating_add(meta.len()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&entry.path())(e)),
        }
    }
    Ok(total)
}

/// Creates a new private file in `dir` named `<stem>.bin` (or `<stem>-N.bin` if taken), so
/// that an earlier quarantine is never overwritten.
pub(super) fn create_unique(dir: &Path, stem: &str) -> Result<(File, PathBuf), SpoolError> {
    for n in 0u32.. {
        let name = if n == 0 {
            format!("{stem}.bin")
        } else {
            format!("{stem}-{n}.bin")
        };
        let path = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Err(SpoolError::Io {
        path: dir.join(stem),
        source: io::Error::new(io::ErrorKind::AlreadyExists, "no free quarantine file name"),
    })
}
