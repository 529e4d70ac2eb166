//! The store's error type.

/// What can go wrong in storage. Callers map `Unavailable` to 503 and the rest to 500, except
/// `BadCursor` (400).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be used.
    #[error("data directory {path}: {source}")]
    Io {
        /// The path involved.
        path: std::path::PathBuf,
        /// What happened.
        source: std::io::Error,
    },
    /// A pagination cursor was not produced by this store.
    #[error("invalid cursor")]
    BadCursor,
    /// The store was written by a newer Vellum.
    #[error("store schema version {found} is newer than this binary supports ({supported})")]
    SchemaTooNew {
        /// Version on disk.
        found: i64,
        /// Newest version this binary knows.
        supported: i64,
    },
    /// A stored row does not have the shape this binary wrote (e.g. a hash of the wrong
    /// length); verification reports such rows, other callers fail.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The store is shutting down or a background task died.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}
