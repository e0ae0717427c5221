//! The authoritative file sink. One `Writer` ([`commit`]) owns the chain state and the
//! active file, behind a mutex; callers serialise their event on their own task (in
//! parallel across connections) and hand the body over. Two ways, chosen at open:
//!
//! - inline (`fsync = "none"`, every extra sink [`crate::Sink::inline_ok`]): the appending
//!   task locks the writer, frames the record with `v, instance` and `seq, ts`, chains it and
//!   write(2)s it itself. No thread hop, no wake-up, no channel: a hand-off to a thread
//!   cost two futex wake-ups and a reschedule per record, more than the write itself
//!   (docs/performance.md). Statement records ([`SessionLog::statement_done`]) are
//!   group-committed on the runtime thread: the record is sealed (numbered, timestamped,
//!   chained, hashed) at once, the task yields once so the other sessions that runtime
//!   thread has ready seal theirs, and the first of them to resume writes every sealed
//!   record with one write(2). Each append still resolves only after its record's write
//!   returned; other appends write at once, after anything sealed before them.
//! - writer thread (`fsync = "batch"`, or a sink that may block): the thread takes
//!   everything queued (a batch), writes it with one write(2), fdatasyncs once (group
//!   commit) and only then completes the callers' futures. While one batch is being
//!   synced, the next accumulates. An fsync never blocks a runtime worker.
//!
//! Either way the record is written before the append resolves, and the thread also
//! does time rotation of an idle log and the final `audit_stop`.
//!
//! The files, by job, lowest first (each imports only those above it):
//!
//! - [`commit`]: the `Writer` itself — framing, chaining, writing and syncing records,
//!   group-commit bookkeeping, rotation, and the final `audit_stop`.
//! - [`recover`]: where the chain stands at open (the last complete record of the files).
//! - [`lock`]: the `<file>.lock` that keeps a second process off the chain.
//! - [`thread`]: the writer thread and the messages it takes.
//! - [`shared`]: the state every handle of one log shares.
//! - [`append`]: [`Append`], the future an append returns.
//! - [`log`]: [`AuditLog`], the handle, and its three append paths (inline, deferred,
//!   thread).
//! - [`session`]: [`SessionLog`], the per-connection recorder, and [`StatementHead`].
//! - [`open`]: [`AuditLogBuilder`] and [`AuditLog::open`]: recovery, `audit_start`, threads.
//!
//! File names (`<stem>.<UTC time>.<ext>`) are shared with the readers: [`crate::files`].

mod append;
mod commit;
mod lock;
mod log;
mod open;
mod recover;
mod session;
mod shared;
mod thread;

pub use append::Append;
pub use commit::Receipt;
pub use log::AuditLog;
pub use open::AuditLogBuilder;
pub use session::{DecidedHead, DecisionJson, InFlight, SessionLog, StatementHead};
