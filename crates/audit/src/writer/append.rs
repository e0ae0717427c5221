//! [`Append`], the future every append returns. It resolves once its record is written
//! (and synced in batch mode): at once for inline appends, when the writer thread replies
//! in thread mode, and for a deferred statement record after one yield, by the first of
//! the appends sealed meanwhile to be polled again, which writes them all with one
//! write(2). Hand-written rather than an `async fn`: it is a named type a caller can keep,
//! it offers [`Append::wait`] to synchronous callers (tools, examples), and dropping a
//! sealed one unpolled still writes its record and claims its result.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::commit::{lock_writer, Receipt};
use super::shared::Inner;
use crate::config::FailureMode;
use crate::AuditError;

pub(super) enum State {
    Sealed {
        inner: Arc<Inner>,
        ticket: u64,
        seq: u64,
        yielded: bool,
    },
    Waiting(oneshot::Receiver<Result<Receipt, AuditError>>),
    Done(Option<Result<Receipt, AuditError>>),
}

/// A pending append: resolves once the record is written (and synced in batch mode).
/// The event was already serialised when this was created, so it borrows nothing.
#[must_use = "the record is only known to be written once this resolves"]
pub struct Append {
    pub(super) state: State,
    pub(super) failure_mode: FailureMode,
}

impl Append {
    fn finish(
        failure_mode: FailureMode,
        r: Result<Receipt, AuditError>,
    ) -> Result<Receipt, AuditError> {
        match r {
            Err(e) if failure_mode == FailureMode::Log => {
                tracing::warn!(error = %e, "audit record not written (failure_mode = log)");
                Ok(Receipt {
                    seq: 0,
                    recorded: false,
                })
            }
            r => r,
        }
    }

    /// Blocks the current thread until written (for synchronous callers; never call it
    /// from inside an async task).
    pub fn wait(mut self) -> Result<Receipt, AuditError> {
        let r = match std::mem::replace(&mut self.state, State::Done(None)) {
            State::Waiting(rx) => rx.blocking_recv().unwrap_or(Err(AuditError::Closed)),
            State::Done(r) => r.unwrap_or(Err(AuditError::Closed)),
            State::Sealed {
                inner, ticket, seq, ..
            } => flush_through(&inner, ticket, seq),
        };
        Self::finish(self.failure_mode, r)
    }
}

impl Future for Append {
    type Output = Result<Receipt, AuditError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let r = match &mut self.state {
            State::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r.unwrap_or(Err(AuditError::Closed)),
            },
            State::Done(r) => r.take().unwrap_or(Err(AuditError::Closed)),
            State::Sealed {
                inner,
                ticket,
                seq,
                yielded,
            } => {
                if !*yielded && inner.progress.written.load(Ordering::Acquire) < *ticket {
                    // Go to the back of this runtime thread's queue once: the sessions
                    // ahead seal their records meanwhile, and one write covers them all.
                    *yielded = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let r = flush_through(inner, *ticket, *seq);
                self.state = State::Done(None);
                r
            }
        };
        Poll::Ready(Self::finish(self.failure_mode, r))
    }
}

impl Drop for Append {
    /// An append dropped unpolled (its session ended) still gets its record written now
    /// rather than whenever the next one is, and its result claimed.
    fn drop(&mut self) {
        if let State::Sealed {
            inner, ticket, seq, ..
        } = &self.state
        {
            let _ = flush_through(inner, *ticket, *seq);
        }
    }
}

/// Makes sure the record sealed as `ticket` is written; its result.
fn flush_through(inner: &Inner, ticket: u64, seq: u64) -> Result<Receipt, AuditError> {
    let receipt = Receipt {
        seq,
        recorded: true,
    };
    // Written by someone else already, and no failed write is unaccounted for: no lock.
    // (A failure is registered before `written_ticket` passes its tickets.)
    if inner.progress.written.load(Ordering::Acquire) >= ticket
        && inner.progress.unclaimed.load(Ordering::Acquire) == 0
    {
        return Ok(receipt);
    }
    let mut w = lock_writer(&inner.writer);
    if w.deferred.written < ticket {
        w.flush_pending();
    }
    let w = &mut *w;
    w.deferred.claim(ticket, &w.progress).map(|()| receipt)
}
