//! What every handle of one log shares: the `Writer` behind its mutex, the queue to the
//! writer thread, and the counters the hot path reads without the lock. Apart from
//! [`super::log::AuditLog`] so that a pending [`super::append::Append`] can hold it
//! without the future and the handle depending on each other.

use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc, Mutex};

use super::commit::{Health, Progress, Writer};
use super::thread::Msg;
use crate::chain::HashState;
use crate::config::FailureMode;
use crate::event::Redaction;

pub(super) struct Inner {
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) writer: Arc<Mutex<Writer>>,
    /// Appends write on the caller's thread (see the module docs).
    pub(super) inline: bool,
    /// What became of deferred appends, readable without the lock.
    pub(super) progress: Arc<Progress>,
    /// Statements sent upstream and not yet recorded, over all sessions ([`crate::InFlight`]).
    pub(super) in_flight: AtomicUsize,
    pub(super) monitors: Vec<crate::sinks::SinkMonitor>,
    pub(super) failing: Arc<Health>,
    pub(super) redaction: Redaction,
    pub(super) failure_mode: FailureMode,
    pub(super) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The hash state after the bytes every record starts with (`{"v":2,"instance":…,`),
    /// which each append continues with its body before handing it to the writer.
    pub(super) prefix_state: HashState,
    /// The witness checkpoint thread, if `[audit] witness_file` is set.
    pub(super) witness: Option<Arc<crate::witness::Running>>,
}
