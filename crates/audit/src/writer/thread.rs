//! The writer thread. In thread mode (`fsync = "batch"`, or a sink that may block) it
//! takes every append queued meanwhile as one batch: one write(2), one fdatasync, then the
//! callers' futures complete. In both modes it rotates an idle log by time and writes the
//! final `audit_stop`, so neither waits for the next append.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;

use super::commit::{lock_writer, Reply, Writer};
use crate::chain::HashState;

/// Most records in one batch; bounds latency and memory under a burst.
const MAX_BATCH: usize = 4096;

pub(super) struct Pending {
    pub(super) body: Vec<u8>,
    /// The log's prefix and `body`, hashed (by the appending task).
    pub(super) state: HashState,
    pub(super) reply: Reply,
}

pub(super) enum Msg {
    Append(Pending),
    Close { reason: String, reply: Reply },
}

/// The writer thread: batches of queued appends (thread mode), time rotation of an idle
/// log, and the final `audit_stop` (both modes).
pub(super) fn run(shared: &Mutex<Writer>, rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    loop {
        let wait = lock_writer(shared).time_until_rotation();
        let first = match wait {
            Some(t) => rx.recv_timeout(t),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let mut close = None;
        match first {
            Ok(Msg::Append(p)) => batch.push(p),
            Ok(Msg::Close { reason, reply }) => close = Some((reason, reply)),
            Err(RecvTimeoutError::Timeout) => {
                // Idle time rotation. A failure is retried later and reported to the
                // next appends if it persists.
                if let Err(e) = lock_writer(shared).rotate_if_due(0, None) {
                    tracing::warn!(error = %e, "audit time rotation failed");
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                lock_writer(shared).stop("all handles dropped", None);
                return;
            }
        }
        while close.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Append(p)) => batch.push(p),
                Ok(Msg::Close { reason, reply }) => close = Some((reason, reply)),
                Err(_) => break,
            }
        }
        let mut w = lock_writer(shared);
        w.process(
            batch.drain(..).map(|p| (p.body, p.state, p.reply)),
            |reply, r| {
                let _ = reply.send(r);
            },
        );
        if let Some((reason, reply)) = close {
            w.stop(&reason, Some(reply));
            return;
        }
    }
}
