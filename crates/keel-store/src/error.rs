//! The one error type every keel-store operation returns.
//!
//! Variants carry the context a caller needs to act on them (which record,
//! which operation), and their messages say how to fix the cause. Database
//! driver errors are wrapped with the operation that failed so a log line
//! reads as "what keel was doing" before "what the driver said".

use std::path::PathBuf;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL names a scheme keel cannot open.
    #[error(
        "unsupported store url scheme {scheme:?}: use sqlite://PATH, sqlite::memory: or \
         postgres://USER@HOST/DATABASE"
    )]
    UnsupportedUrl {
        /// The scheme found before the first `:` (never the whole URL, which
        /// may hold a password).
        scheme: String,
    },

    /// The URL has a known scheme but could not be parsed.
    #[error("invalid {backend} store url: {reason}; check the store.url setting")]
    InvalidUrl {
        /// Which backend the URL was meant for.
        backend: &'static str,
        /// What the parser refused.
        reason: String,
    },

    /// The directory for a SQLite file could not be created.
    #[error("cannot create the store directory {path:?}: {source}; check its permissions")]
    CreateDir {
        /// The directory keel tried to create.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// The database could not be reached or opened.
    #[error(
        "cannot open the {backend} store: {source}; check store.url and that the database \
         is running"
    )]
    Connect {
        /// Which backend was being opened.
        backend: &'static str,
        /// The driver error.
        source: sqlx::Error,
    },

    /// A schema migration failed; nothing of it was applied.
    #[error("migration {version} ({name}) failed: {source}; fix the database and restart")]
    Migration {
        /// The migration's version number.
        version: i64,
        /// The migration's name.
        name: &'static str,
        /// The driver error.
        source: sqlx::Error,
    },

    /// A record with this id already exists.
    #[error("{what} {id:?} already exists: choose another id")]
    Conflict {
        /// The kind of record (`tenant`, `user`, `key`).
        what: &'static str,
        /// The id that is taken.
        id: String,
    },

    /// A record the operation depends on does not exist.
    #[error("{what} {id:?} not found: create it first or check the id")]
    NotFound {
        /// The kind of record (`tenant`, `user`).
        what: &'static str,
        /// The id that was looked up.
        id: String,
    },

    /// An imported key secret is already stored for another tenant.
    #[error(
        "this key secret is already stored as key {key_id:?} of tenant {tenant:?}: give \
         each tenant its own secret"
    )]
    KeyTenantMismatch {
        /// The id of the stored key with the same secret.
        key_id: String,
        /// The tenant that stored key belongs to.
        tenant: String,
    },

    /// An imported key secret was empty.
    #[error("api key secret is empty: set a non-empty secret")]
    EmptySecret,

    /// A name given for a closed set of choices (a trend bucket or
    /// grouping) is not one of them.
    #[error("unknown {what} {given:?}: use one of {accepted}")]
    UnknownChoice {
        /// What was being named (`bucket`, `group`).
        what: &'static str,
        /// The name given.
        given: String,
        /// The accepted names, comma-separated.
        accepted: &'static str,
    },

    /// A usage trend would have more rows than one answer may hold.
    #[error(
        "the usage trend has more than {max_rows} rows: narrow the time range, use a wider \
         bucket or filter to fewer groups"
    )]
    TrendTooLarge {
        /// The most rows a trend may have.
        max_rows: usize,
    },

    /// A signal was sent to a step that cannot take one now.
    #[error("step {step:?} of run {run_id:?} cannot take a signal: {reason}")]
    NotWaiting {
        /// The run.
        run_id: String,
        /// The step's key.
        step: String,
        /// Why not.
        reason: &'static str,
    },

    /// The database refused or failed an operation.
    #[error("database error while trying to {op}: {source}")]
    Database {
        /// What keel was doing (`create tenant`, `insert usage`).
        op: &'static str,
        /// The driver error.
        source: sqlx::Error,
    },
}

impl StoreError {
    /// Wraps a driver error with the operation that failed, for `map_err`.
    pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Database { op, source }
    }
}

/// Whether a driver error is a foreign-key violation (a missing parent row).
pub(crate) fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_foreign_key_violation())
}

/// Whether a driver error is a unique or primary-key violation.
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}
