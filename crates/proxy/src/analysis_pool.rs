//! Analysis of big statements off the runtime threads.
//!
//! Parsing is the one part of a decision whose cost grows with what a client sends: a
//! hostile megabyte can take a parser far longer than a runtime thread may be held
//! without stalling every other session on it. Strings above a small size are therefore
//! analysed on a fixed set of dedicated OS threads (`[policy] analysis_threads`; not
//! tokio's blocking pool, which grows without bound) and awaited with a time budget
//! (`[policy] analysis_timeout_ms`). A job that overruns keeps its thread until it is
//! done; `check_complexity` in the policy crate keeps that short.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgward_policy::{Analysis, AnalysisError};
use tokio::sync::oneshot;
use tracing::warn;

/// What an analysis job answers.
pub type Outcome = Result<Analysis, AnalysisError>;

struct Job {
    sql: Arc<str>,
    max_len: usize,
    reply: oneshot::Sender<Outcome>,
}

/// A fixed set of analysis threads and the queue that feeds them.
pub struct AnalysisPool {
    queue: Mutex<mpsc::Sender<Job>>,
    timeout: Duration,
}

/// A job handed to the pool: its answer, still to come.
pub type Pending = oneshot::Receiver<Outcome>;

impl AnalysisPool {
    /// Starts `threads` analysis threads (at least one). They end when the pool is dropped.
    pub fn start(threads: usize, timeout: Duration) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("pgward-analyse-{i}"))
                .spawn(move || work(&rx))
                .map_err(|e| format!("cannot start analysis thread: {e}"))?;
        }
        Ok(Self {
            queue: Mutex::new(tx),
            timeout,
        })
    }

    /// The time budget of one statement's analysis.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Queues `sql` for analysis.
    pub fn submit(&self, sql: Arc<str>, max_len: usize) -> Pending {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .queue
            .lock()
            .map(|q| {
                q.send(Job {
                    sql,
                    max_len,
                    reply,
                })
                .is_ok()
            })
            .unwrap_or(false);
        if !sent {
            // Only when every thread has died (a panic in the parser): the receiver then
            // reports a closed channel, which the caller treats as a refusal.
            warn!("analysis pool is not running");
        }
        rx
    }
}

fn work(rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // Hold the lock only to take a job, never while analysing.
        let job = match rx.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        if job.reply.is_closed() {
            // Its session ended before the job started: nothing is waiting for it.
            continue;
        }
        // A panic in the parser refuses that one string and keeps the thread serving.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pgward_policy::analyze_limited(&job.sql, job.max_len)
        }))
        .unwrap_or_else(|_| Err(AnalysisError::Parse("pgward's analysis failed".into())));
        let _ = job.reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn analyses_off_the_runtime_and_answers() {
        let pool = AnalysisPool::start(1, Duration::from_secs(5)).expect("pool");
        let a = pool
            .submit(Arc::from("SELECT 1; SELECT 2"), 1 << 20)
            .await
            .expect("answer");
        assert_eq!(a.expect("analysis").statements.len(), 2);
        let e = pool.submit(Arc::from("SELECT 1"), 4).await.expect("answer");
        assert!(matches!(
            e,
            Err(AnalysisError::TooLong { len: 8, limit: 4 })
        ));
    }
}
