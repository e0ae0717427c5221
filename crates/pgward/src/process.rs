//! What every long-running subcommand needs from the process: the async runtime and the
//! signal handlers (kept apart from main.rs so the subcommands need not import the root).

use anyhow::Context;

pub(crate) fn runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        b.worker_threads(worker_threads);
    }
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// SIGTERM / SIGINT drain and stop; SIGHUP reloads.
pub(crate) fn spawn_signal_handlers(
    handle: pgward_proxy::server::ServerHandle,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: draining"); handle.shutdown(); }
                _ = int.recv() => { tracing::info!("SIGINT: draining"); handle.shutdown(); }
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading"); handle.reload(); }
            }
        }
    });
    Ok(())
}
