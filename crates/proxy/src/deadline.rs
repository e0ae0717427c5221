//! A session's token expiry, kept on the main runtime's timer wheel.
//!
//! A session worker's runtime looks at its timer wheel each time it parks, that is at
//! every wake-up of every session on it, and a wheel that holds a timer costs more to look
//! at than an empty one: about 300 instructions per transaction under callgrind for a
//! deadline that fires once, an hour away. The main runtime holds these timers instead;
//! the session waits on a one-shot channel that a task there completes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Completes at `Instant`; dropping it cancels its timer.
pub(crate) struct Deadline {
    fired: oneshot::Receiver<()>,
    timer: AbortHandle,
}

impl Deadline {
    /// A deadline at `at`, timed by the runtime `timers` belongs to.
    pub(crate) fn at(timers: &Handle, at: Instant) -> Deadline {
        let (tx, fired) = oneshot::channel();
        let timer = timers
            .spawn(async move {
                tokio::time::sleep_until(at).await;
                let _ = tx.send(());
            })
            .abort_handle();
        Deadline { fired, timer }
    }
}

impl Future for Deadline {
    type Output = ();

    /// Also complete when the timer task is gone without firing (its runtime is shutting
    /// down): a deadline nothing keeps any more ends the session rather than never firing.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.fired).poll(cx).map(|_| ())
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.timer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Stands for pgward's main runtime: it has the timers.
    fn main_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("main runtime")
    }

    /// Stands for a session worker: no timers of its own.
    fn worker_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("worker runtime")
    }

    /// The timer runs on another runtime (the main one); the waiting runtime has no timers.
    #[test]
    fn fires_at_its_instant_from_a_runtime_without_timers() {
        let main = main_runtime();
        let worker = worker_runtime();
        let at = main.block_on(async { Instant::now() + Duration::from_millis(150) });
        let d = Deadline::at(main.handle(), at);
        let start = std::time::Instant::now();
        worker.block_on(d);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(100),
            "fired early: {waited:?}"
        );
        assert!(waited < Duration::from_secs(5), "fired late: {waited:?}");
    }

    /// Dropping a deadline cancels its timer task.
    #[test]
    fn a_dropped_deadline_leaves_no_timer() {
        let main = main_runtime();
        let at = main.block_on(async { Instant::now() + Duration::from_secs(3600) });
        let d = Deadline::at(main.handle(), at);
        let timer = d.timer.clone();
        drop(d);
        for _ in 0..200 {
            if timer.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(timer.is_finished(), "the timer task outlived its deadline");
        assert_eq!(main.metrics().num_alive_tasks(), 0);
    }

    /// A timer whose runtime is gone completes the deadline: the session ends rather than
    /// outliving its token.
    #[test]
    fn a_deadline_without_its_runtime_fires() {
        let main = main_runtime();
        let at = main.block_on(async { Instant::now() + Duration::from_secs(3600) });
        let d = Deadline::at(main.handle(), at);
        main.shutdown_background();
        let worker = worker_runtime();
        worker.block_on(d);
    }
}
