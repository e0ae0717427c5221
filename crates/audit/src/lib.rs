//! pgward's audit log.
//!
//! Every connection attempt and statement becomes one JSON object on one line of a
//! hash-chained file ([`AuditLog`]); [`verify`] proves a set of files complete and
//! unaltered (or says exactly where not), and [`run_search`] / [`run_tail`] read them for
//! auditors. The schema is documented in docs/audit.md.
//!
//! The proxy's part:
//! ```no_run
//! # async fn demo(cfg: pgward_audit::AuditConfig) -> Result<(), pgward_audit::AuditError> {
//! use pgward_audit::*;
//! let log = AuditLog::open(&cfg, "pgward-0")?;
//! let session = log.session(&SessionInfo { session: "42".into(), ..Default::default() });
//! session.connect(&Connect::default()).await?;
//! // ... run the statement upstream, read its reply, then, before relaying it:
//! session.statement(&Statement { sql: "select 1", ..Default::default() }).await?;
//! log.close("shutdown").await?;
//! # Ok(()) }
//! ```

mod chain;
mod config;
mod error;
mod event;
mod files;
mod finding;
mod json;
mod read;
pub mod scrub;
mod search;
mod sink;
pub mod sinks;
mod time;
mod verify;
mod witness;
mod writer;

pub use chain::GENESIS;
pub use config::{read_key_file, AuditConfig, FailureMode, Fsync, MIN_KEY_BYTES, MIN_ROTATE_BYTES};
pub use error::{AuditError, SQLSTATE_AUDIT_FAILED};
pub use event::{
    AuthFailed, Client, Connect, Decision, Disconnect, EventKind, Identity, ObjectAction, Outcome,
    Param, ParamIn, Params, Predecessor, Protocol, Record, RecordObject, RecordOutcome, Redaction,
    SessionInfo, Statement, SCHEMA_VERSION,
};
pub use files::{archived_files, log_files};
pub use finding::{Finding, FindingKind};
pub use read::{read_records, ReadItem};
pub use search::{run_search, run_tail, Filter, OutputFormat, SearchArgs, SearchSummary, TailArgs};
pub use sink::{LineSink, SealedRecord, Sink, SinkError};
pub use sinks::{
    AccessTokens, AzureMonitorConfig, PostgresSinkConfig, ShippingSink, SinkMonitor, SinkStatus,
};
pub use time::{TimeParseError, Timestamp};
pub use verify::{run_verify, verify, verify_with_witness, VerifyArgs, VerifyReport};
pub use witness::{read_witness, Checkpoint, Witness};
pub use writer::{
    Append, AuditLog, AuditLogBuilder, DecidedHead, DecisionJson, InFlight, Receipt, SessionLog,
    StatementHead,
};
