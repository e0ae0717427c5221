//! Session workers: one single-threaded runtime per thread, sessions handed out round-robin.
//!
//! A session is a ping-pong of small reads and writes between two sockets; on tokio's
//! work-stealing runtime every wake-up also pays for the scheduler's bookkeeping (the poll-time
//! average, idle and unpark accounting, stealing), which callgrind showed to be about a fifth
//! of what relaying a transaction costs. A session never needs another thread: it stays
//! on the worker it was given, as a PgBouncer process keeps its clients, and each worker
//! only has the short timers of its own sessions (token expiries, an hour away, are kept on
//! the main runtime: deadline.rs). Background work (the admin endpoint, token and
//! catalog refreshes started at start-up, the accept loop) stays on the main runtime.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

pub(crate) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// `count` workers (0 = one per CPU).
    pub(crate) fn start(count: usize) -> io::Result<Workers> {
        let count = if count == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            count
        };
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            // Only I/O and timers: signals and child processes are the main runtime's.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pgward-session-{i}"))
                    .spawn(move || {
                        rt.block_on(stop.cancelled());
                        // Sessions still here were given up by the drain (hard stop):
                        // dropping the runtime drops them.
                        drop(rt);
                    })?,
            );
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            stop,
            threads,
        })
    }

    /// Runs `session` on the next worker. `tcp` is moved to that worker's reactor first
    /// (a socket is registered with the runtime that polls it).
    pub(crate) fn spawn_session<F, Fut>(&self, tcp: tokio::net::TcpStream, session: F)
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        let handle = &self.handles[i];
        match tcp.into_std() {
            Ok(std_tcp) => {
                handle.spawn(async move {
                    match tokio::net::TcpStream::from_std(std_tcp) {
                        Ok(tcp) => session(tcp).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot hand a client to a session worker")
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot hand a client to a session worker"),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
