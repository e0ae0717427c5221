//! Why the audit log could not record.

use std::io;

/// SQLSTATE the proxy answers when the audit log cannot record a statement
/// (`failure_mode = "refuse"`): 58030, io_error.
pub const SQLSTATE_AUDIT_FAILED: &str = "58030";

/// An audit failure. `Clone` because one failed batch fails every record in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Reading or writing an audit file failed (disk full, file too large, permission...).
    #[error("audit file {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error kind (e.g. `StorageFull`, `FileTooLarge`, `PermissionDenied`).
        kind: io::ErrorKind,
        /// The OS error text and what was being done.
        message: String,
    },
    /// An authoritative extra sink failed.
    #[error("audit sink {sink}: {message}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// Its error.
        message: String,
    },
    /// A durability guarantee was lost (fsync failed, or a failed write could not be rolled
    /// back): the writer refuses everything until pgward restarts and recovers the file.
    #[error("audit log stopped: {0}; restart pgward after fixing the cause")]
    Stopped(String),
    /// The log was closed.
    #[error("audit log is closed")]
    Closed,
    /// Invalid `[audit]` configuration or an unusable existing log.
    #[error("audit: {0}")]
    Config(String),
}

impl AuditError {
    /// The SQLSTATE for the client when this refuses a statement.
    pub fn sqlstate(&self) -> &'static str {
        SQLSTATE_AUDIT_FAILED
    }

    pub(crate) fn io(path: &std::path::Path, what: &str, e: &io::Error) -> Self {
        AuditError::Io {
            path: path.display().to_string(),
            kind: e.kind(),
            message: format!("{what}: {e}"),
        }
    }
}
