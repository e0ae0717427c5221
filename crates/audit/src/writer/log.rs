//! [`AuditLog`], the handle, and the three ways an append reaches the file: inline (the
//! appending task writes its own record), deferred (a statement record is sealed now and
//! written by a group commit on the runtime thread), or queued for the writer thread.
//! Which one is decided at open (see the [module docs](super)).

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::append::{Append, State};
use super::commit::{lock_writer, Body, Receipt};
use super::shared::Inner;
use super::thread::{Msg, Pending};
use crate::config::FailureMode;
use crate::event::{self, EventKind, Redaction};
use crate::AuditError;

/// Scratch buffers larger than this are not kept between records (one huge statement
/// must not pin its memory on every runtime thread).
const SCRATCH_KEEP: usize = 64 * 1024;

thread_local! {
    /// Where an inline append serialises its body: reused, so no allocation per record.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The audit log handle. Cheap to clone; share it between sessions.
#[derive(Clone)]
pub struct AuditLog {
    pub(super) inner: Arc<Inner>,
}

impl AuditLog {
    /// The state of each shipping sink (records shipped, spool backlog, last error).
    pub fn sink_status(&self) -> Vec<crate::sinks::SinkStatus> {
        self.inner.monitors.iter().map(|m| m.status()).collect()
    }

    /// The redaction setting, for [`crate::Params::capture`].
    pub fn redaction(&self) -> Redaction {
        self.inner.redaction
    }

    /// `Err` while the last write failed. Under `failure_mode = "refuse"` the proxy should
    /// check this before relaying a statement upstream, refuse it with 58030 if it fails,
    /// and still append that refusal's record: the first append that succeeds again
    /// clears the state.
    pub fn ready(&self) -> Result<(), AuditError> {
        let h = &self.inner.failing;
        if h.failing.load(Ordering::Acquire) && self.inner.failure_mode == FailureMode::Refuse {
            let last = h.last_error.lock().ok().and_then(|g| g.clone());
            return Err(last.unwrap_or(AuditError::Stopped(
                "the last audit write failed".to_string(),
            )));
        }
        Ok(())
    }

    /// Serialises and appends one event: inline, or queued for the writer thread.
    pub(super) fn append<T: serde::Serialize>(
        &self,
        kind: EventKind,
        ctx: &str,
        detail: &T,
    ) -> Append {
        self.append_with(|v| event::body_into(v, kind, ctx, detail))
    }

    /// Appends the body `fill` writes into an empty buffer.
    pub(super) fn append_with(&self, fill: impl Fn(&mut Vec<u8>)) -> Append {
        with_scratch(fill, |body| {
            let mut state = self.inner.prefix_state;
            state.update(body);
            self.append_body(&Body {
                hashed: &[body],
                state,
                rest: None,
            })
        })
    }

    /// Appends a record now (inline) or through the writer thread.
    pub(super) fn append_body(&self, body: &Body<'_>) -> Append {
        if !self.inner.inline {
            return self.submit(body);
        }
        let res = self.write_inline(body);
        Append {
            state: State::Done(Some(res)),
            failure_mode: self.inner.failure_mode,
        }
    }

    /// Seals a statement record now; it is written by the first of the appends sealed
    /// meanwhile to be polled again (see the module docs).
    pub(super) fn append_deferred(&self, body: &Body<'_>) -> Append {
        let sealed = self.seal_deferred(body);
        let state = match sealed {
            Ok((ticket, seq)) => State::Sealed {
                inner: self.inner.clone(),
                ticket,
                seq,
                yielded: false,
            },
            Err(e) => State::Done(Some(Err(e))),
        };
        Append {
            state,
            failure_mode: self.inner.failure_mode,
        }
    }

    fn seal_deferred(&self, body: &Body<'_>) -> Result<(u64, u64), AuditError> {
        let mut w = lock_writer(&self.inner.writer);
        if w.closed {
            return Err(AuditError::Closed);
        }
        w.seal_deferred(body)
    }

    fn write_inline(&self, body: &Body<'_>) -> Result<Receipt, AuditError> {
        let mut w = lock_writer(&self.inner.writer);
        if w.closed {
            return Err(AuditError::Closed);
        }
        w.write_now(body)
    }

    /// Queues the record for the writer thread, whole and hashed.
    fn submit(&self, body: &Body<'_>) -> Append {
        let mut bytes = body.hashed.concat();
        let mut hashed = body.state;
        if let Some(rest) = body.rest {
            let mark = bytes.len();
            rest(&mut bytes);
            hashed.update(&bytes[mark..]);
        }
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            body: bytes,
            state: hashed,
            reply,
        };
        let state = match self.inner.tx.send(Msg::Append(pending)) {
            Ok(()) => State::Waiting(rx),
            Err(_) => State::Done(Some(Err(AuditError::Closed))),
        };
        Append {
            state,
            failure_mode: self.inner.failure_mode,
        }
    }

    /// Writes `audit_stop`, flushes, and stops the writer. Appends after this fail with
    /// [`AuditError::Closed`].
    pub async fn close(&self, reason: &str) -> Result<(), AuditError> {
        let (reply, rx) = oneshot::channel();
        let sent = self.inner.tx.send(Msg::Close {
            reason: reason.to_string(),
            reply,
        });
        if sent.is_err() {
            return Err(AuditError::Closed);
        }
        let res = rx.await.unwrap_or(Err(AuditError::Closed)).map(|_| ());
        // The thread has replied and is returning; joining is immediate. Take the handle
        // out first so the lock is not held while joining.
        let handle = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        // The last checkpoint names audit_stop.
        if let Some(w) = &self.inner.witness {
            w.finish();
        }
        res
    }
}

/// Serialises a body with `fill` into this thread's scratch buffer and hands it to `then`.
pub(super) fn with_scratch<R>(fill: impl Fn(&mut Vec<u8>), then: impl FnOnce(&[u8]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            fill(&mut buf);
            let res = then(&buf);
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
            res
        }
        // Only if serialising re-entered an append; never in practice.
        Err(_) => {
            let mut v = Vec::with_capacity(1024);
            fill(&mut v);
            then(&v)
        }
    })
}
