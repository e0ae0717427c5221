//! PostgreSQL wire protocol (version 3.0) for pgward.
//!
//! Framing only as much as the proxy needs: the startup phase (`startup`), whole
//! frontend messages (`frontend`), a streaming scanner over backend traffic that
//! finds message boundaries without buffering wide rows (`backend`), and builders
//! for the few messages pgward writes itself (`build`). Every length read from the
//! network is checked against a bound before anything is allocated.

pub mod backend;
pub mod build;
pub mod frontend;
pub mod startup;
pub mod tag;
pub mod type_oid;

mod error;
pub use error::WireError;

/// PostgreSQL's own limit for a single message (MaxAllocSize), the default bound.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Bound for startup packets and password messages. Entra access tokens reach 8 KiB
/// and more with many group claims; 64 KiB leaves room without inviting abuse.
pub const MAX_STARTUP_BYTES: usize = 64 * 1024;

/// Transaction status reported by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}
