//! What every shipping sink shares: [`ShippingSink`] spools each sealed batch on the
//! writer thread (one write(2), no network) and a thread of its own ships it to a
//! [`Destination`] with retry and backoff, advancing the spool's cursor only after the
//! destination acknowledged; [`SinkMonitor`] reports how that goes. A destination (the
//! PostgreSQL table, Azure Monitor) only says how to deliver one batch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::spool;
use crate::sink::{SealedRecord, Sink, SinkError};
use crate::time::Timestamp;

/// First retry delay after a failed delivery; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long closing the log waits for a sink to ship what is spooled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A failing sink logs at most this often (the state is also in [`SinkStatus`]).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A snapshot of one shipping sink's state, for metrics and readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkStatus {
    /// `postgres` or `azure-monitor`.
    pub name: String,
    /// Whether its failure refuses statements.
    pub authoritative: bool,
    /// Records delivered (acknowledged by the destination) since start.
    pub shipped: u64,
    /// Records the spool refused (full or unwritable) since start: not shipped, but in
    /// the audit file.
    pub dropped: u64,
    /// Records the destination rejected as invalid (e.g. over the size limit of one
    /// call) and that were skipped; in the audit file.
    pub rejected: u64,
    /// Bytes waiting in the spool.
    pub backlog_bytes: u64,
    /// The last delivery failed (retrying with backoff).
    pub failing: bool,
    /// The last error (no secrets), until a delivery succeeds.
    pub last_error: Option<String>,
    /// When the last delivery succeeded.
    pub last_success: Option<Timestamp>,
}

#[derive(Default)]
struct Stats {
    shipped: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
    last_success: Mutex<Option<Timestamp>>,
}

impl Stats {
    fn set_error(&self, e: Option<String>) {
        self.failing.store(e.is_some(), Ordering::Release);
        if let Ok(mut g) = self.last_error.lock() {
            *g = e;
        }
    }
}

/// Reads a shipping sink's state (cheap; shareable).
#[derive(Clone)]
pub struct SinkMonitor {
    name: &'static str,
    authoritative: bool,
    stats: Arc<Stats>,
    spool: spool::Spool,
}

impl SinkMonitor {
    /// The current state.
    pub fn status(&self) -> SinkStatus {
        let s = &self.stats;
        SinkStatus {
            name: self.name.to_string(),
            authoritative: self.authoritative,
            shipped: s.shipped.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            backlog_bytes: self.spool.backlog_bytes(),
            failing: s.failing.load(Ordering::Acquire),
            last_error: s.last_error.lock().ok().and_then(|g| g.clone()),
            last_success: s.last_success.lock().ok().and_then(|g| *g),
        }
    }
}

/// Why a delivery did not happen.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Try again later (after `retry_after` if the destination said so).
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
}

impl Failure {
    pub(crate) fn retry(message: impl Into<String>) -> Self {
        Failure::Retry {
            message: message.into(),
            retry_after: None,
        }
    }
}

/// What a destination did with a batch.
pub(crate) struct Delivered {
    /// How many of the batch's first records were handled (delivered or rejected); the
    /// rest are offered again. Must be at least 1 unless the whole call failed.
    pub handled: usize,
    /// How many of those were rejected as invalid (skipped).
    pub rejected: usize,
}

/// Where a shipping sink sends records. Called on the sink's own thread.
pub(crate) trait Destination: Send + 'static {
    /// Largest batch (records, and bytes of records) the destination takes in one call.
    fn limits(&self) -> (usize, usize);
    /// Delivers the records (complete JSON lines, in chain order).
    fn deliver(
        &mut self,
        rt: &tokio::runtime::Runtime,
        lines: &[&[u8]],
    ) -> Result<Delivered, Failure>;
}

/// Settings common to the shipping sinks.
pub(crate) struct ShipOptions {
    pub name: &'static str,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub segment_bytes: u64,
    pub batch_interval: Duration,
    pub authoritative: bool,
}

/// Spool segment size: small enough that shipped data is freed soon.
const SEGMENT_BYTES: u64 = 8 << 20;

impl ShipOptions {
    /// The options of sink `name`; without a configured `spool_dir`, the spool is
    /// beside the audit file ([`default_spool_dir`]).
    pub(crate) fn new(
        name: &'static str,
        spool_dir: Option<&PathBuf>,
        audit_file: &Path,
        spool_max_bytes: u64,
        batch_interval_ms: u64,
        authoritative: bool,
    ) -> Self {
        ShipOptions {
            name,
            spool_dir: spool_dir
                .cloned()
                .unwrap_or_else(|| default_spool_dir(audit_file, name)),
            spool_max_bytes,
            segment_bytes: SEGMENT_BYTES,
            batch_interval: Duration::from_millis(batch_interval_ms),
            authoritative,
        }
    }
}

/// A sink section's problems as one start-up error.
pub(crate) fn check(problems: Vec<String>) -> Result<(), crate::AuditError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(crate::AuditError::Config(problems.join("; ")))
    }
}

/// Makes each relative path relative to `base`.
pub(crate) fn resolve_relative<'a>(base: &Path, paths: impl IntoIterator<Item = &'a mut PathBuf>) {
    for p in paths {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
}

/// The records as one JSON array (`[line,line,...]`).
pub(crate) fn json_array(lines: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(l);
    }
    body.push(b']');
    body
}

struct Shared {
    closing: AtomicBool,
    /// Set by the thread when it stops after `closing`: whether it shipped everything.
    done: Mutex<Option<bool>>,
    done_cv: std::sync::Condvar,
}

/// A [`Sink`] that spools each batch and ships it from its own thread.
pub struct ShippingSink {
    name: &'static str,
    spool: spool::Spool,
    stats: Arc<Stats>,
    shared: Arc<Shared>,
    monitor: SinkMonitor,
    authoritative: bool,
    last_drop_warn: Mutex<Option<Instant>>,
}

impl ShippingSink {
    pub(crate) fn start(
        opts: ShipOptions,
        dest: impl Destination,
    ) -> Result<ShippingSink, crate::AuditError> {
        let (spool, reader) =
            spool::open(&opts.spool_dir, opts.spool_max_bytes, opts.segment_bytes)
                .map_err(|e| crate::AuditError::Config(format!("audit sink {}: {e}", opts.name)))?;
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            closing: AtomicBool::new(false),
            done: Mutex::new(None),
            done_cv: std::sync::Condvar::new(),
        });
        // One worker of its own: the database connection and the credential's token
        // refresh progress in the background, between the sink thread's calls.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("pgward-audit-{}-io", opts.name))
            .enable_all()
            .build()
            .map_err(|e| {
                crate::AuditError::Config(format!("audit sink {}: runtime: {e}", opts.name))
            })?;
        let mut worker = Worker {
            name: opts.name,
            reader,
            stats: stats.clone(),
            shared: shared.clone(),
            interval: opts.batch_interval,
            rt,
            dest,
            last_warn: None,
        };
        std::thread::Builder::new()
            .name(format!("pgward-audit-{}", opts.name))
            .spawn(move || worker.run())
            .map_err(|e| {
                crate::AuditError::Config(format!("audit sink {}: cannot start: {e}", opts.name))
            })?;
        let monitor = SinkMonitor {
            name: opts.name,
            authoritative: opts.authoritative,
            stats: stats.clone(),
            spool: spool.clone(),
        };
        Ok(ShippingSink {
            name: opts.name,
            spool,
            stats,
            shared,
            monitor,
            authoritative: opts.authoritative,
            last_drop_warn: Mutex::new(None),
        })
    }

    /// A handle that reads this sink's state.
    pub fn monitor(&self) -> SinkMonitor {
        self.monitor.clone()
    }

    /// Whether its failure (a full or unwritable spool) refuses statements.
    pub fn authoritative(&self) -> bool {
        self.authoritative
    }
}

impl Sink for ShippingSink {
    fn name(&self) -> &str {
        self.name
    }

    // A local append to the spool file; the network is on the sink's own thread.
    fn inline_ok(&self) -> bool {
        true
    }

    fn write_batch(&mut self, batch: &[SealedRecord<'_>]) -> Result<(), SinkError> {
        match self.spool.append(batch.iter().map(|r| r.line)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.stats.set_error(Some(e.to_string()));
                if self.authoritative {
                    return Err(Box::new(e));
                }
                // Best effort: the file has the records. Say so at most once a minute
                // rather than once per statement while the spool stays full.
                let mut last = self
                    .last_drop_warn
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    *last = Some(Instant::now());
                    tracing::warn!(sink = self.name, error = %e, dropped_total = self.stats.dropped.load(Ordering::Relaxed), "audit records not copied to this sink (they are in the audit file)");
                }
                Ok(())
            }
        }
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.shared.closing.store(true, Ordering::Release);
        self.spool.wake();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut done = self.shared.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if *done == Some(true) {
                return Ok(());
            }
            if done.is_some() || left.is_zero() {
                return Err(format!(
                    "{}: {} bytes not shipped at shutdown ({}); they stay spooled for the next start",
                    self.name,
                    self.spool.backlog_bytes(),
                    self.stats
                        .last_error
                        .lock()
                        .ok()
                        .and_then(|g| g.clone())
                        .unwrap_or_else(|| "timed out".to_string())
                )
                .into());
            }
            done = self
                .shared
                .done_cv
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

struct Worker<D: Destination> {
    name: &'static str,
    reader: spool::Reader,
    stats: Arc<Stats>,
    shared: Arc<Shared>,
    interval: Duration,
    rt: tokio::runtime::Runtime,
    dest: D,
    last_warn: Option<Instant>,
}

impl<D: Destination> Worker<D> {
    fn closing(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    fn finish(&self, drained: bool) {
        let mut done = self.shared.done.lock().unwrap_or_else(|p| p.into_inner());
        *done = Some(drained);
        self.shared.done_cv.notify_all();
    }

    /// Sleeps up to `d`, waking early at shutdown.
    fn pause(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.closing() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    fn fail(&mut self, message: String) {
        let changed = !self.stats.failing.load(Ordering::Acquire);
        if changed || self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(sink = self.name, error = %message, "audit sink delivery failed; retrying (records stay spooled)");
            self.last_warn = Some(Instant::now());
        }
        self.stats.set_error(Some(message));
    }

    fn run(&mut self) {
        let (max_records, max_bytes) = self.dest.limits();
        let mut backoff = FIRST_BACKOFF;
        let mut lingered = false;
        let drained = loop {
            let batch = match self.reader.read(max_records, max_bytes) {
                Ok(b) => b,
                Err(e) => {
                    self.fail(e.to_string());
                    if self.closing() {
                        break false;
                    }
                    self.pause(Duration::from_secs(1));
                    continue;
                }
            };
            let Some(mut batch) = batch else {
                if self.closing() {
                    if let Err(e) = self.reader.retire_shipped() {
                        tracing::warn!(sink = self.name, error = %e, "audit spool cleanup failed");
                    }
                    break true;
                }
                self.reader.wait(Duration::from_secs(1));
                continue;
            };
            // Let a small batch fill up for one interval (fewer, larger calls).
            if batch.len() < max_records && !lingered && !self.closing() {
                lingered = true;
                self.pause(self.interval);
                continue;
            }
            lingered = false;
            let lines: Vec<&[u8]> = batch.lines().collect();
            match self.dest.deliver(&self.rt, &lines) {
                Ok(d) => {
                    let handled = d.handled.clamp(1, batch.len());
                    drop(lines);
                    batch.truncate(handled);
                    if let Err(e) = self.reader.ack(&batch) {
                        // Delivered but not recorded as such: it would be sent again.
                        self.fail(e.to_string());
                        self.pause(Duration::from_secs(1));
                        continue;
                    }
                    let s = &self.stats;
                    s.shipped
                        .fetch_add((handled - d.rejected) as u64, Ordering::Relaxed);
                    s.rejected.fetch_add(d.rejected as u64, Ordering::Relaxed);
                    if let Ok(mut g) = s.last_success.lock() {
                        *g = Some(Timestamp::now());
                    }
                    if s.failing.load(Ordering::Acquire) {
                        tracing::info!(sink = self.name, "audit sink delivering again");
                        s.set_error(None);
                    }
                    backoff = FIRST_BACKOFF;
                }
                Err(Failure::Retry {
                    message,
                    retry_after,
                }) => {
                    self.fail(message);
                    // At shutdown a failing destination is not waited for: the records
                    // stay spooled for the next start.
                    if self.closing() {
                        break false;
                    }
                    let wait = retry_after.unwrap_or(backoff).min(MAX_BACKOFF * 4);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    self.pause(wait);
                }
            }
        };
        self.finish(drained);
    }
}

/// The spool directory of sink `name` when none is configured: beside the audit file,
/// `<dir>/<stem>.spool/<name>`.
pub(crate) fn default_spool_dir(audit_file: &Path, name: &str) -> PathBuf {
    let stem = audit_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pgward".to_string());
    let dir = audit_file.parent().unwrap_or(Path::new(""));
    dir.join(format!("{stem}.spool")).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A destination that fails its first `fail` calls, then takes at most `take` per call.
    struct Flaky {
        fail: Arc<AtomicUsize>,
        take: usize,
        got: Arc<Mutex<Vec<String>>>,
        calls: Arc<AtomicUsize>,
    }

    impl Destination for Flaky {
        fn limits(&self) -> (usize, usize) {
            (4, 1 << 20)
        }
        fn deliver(
            &mut self,
            _rt: &tokio::runtime::Runtime,
            lines: &[&[u8]],
        ) -> Result<Delivered, Failure> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(Failure::Retry {
                    message: "down".into(),
                    retry_after: Some(Duration::from_millis(20)),
                });
            }
            let n = lines.len().min(self.take);
            let mut g = self.got.lock().unwrap();
            for l in &lines[..n] {
                g.push(String::from_utf8(l.to_vec()).unwrap());
            }
            Ok(Delivered {
                handled: n,
                rejected: 0,
            })
        }
    }

    fn sealed(lines: &[String]) -> Vec<SealedRecord<'_>> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| SealedRecord {
                seq: i as u64 + 1,
                line: l.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn retries_after_failures_and_delivers_everything_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(AtomicUsize::new(3));
        let calls = Arc::new(AtomicUsize::new(0));
        let dest = Flaky {
            fail: fail.clone(),
            take: 3,
            got: got.clone(),
            calls: calls.clone(),
        };
        let opts = ShipOptions {
            name: "test",
            spool_dir: dir.path().join("spool"),
            spool_max_bytes: 1 << 20,
            segment_bytes: 64,
            batch_interval: Duration::from_millis(5),
            authoritative: false,
        };
        let mut sink = ShippingSink::start(opts, dest).unwrap();
        let mon = sink.monitor();
        let lines: Vec<String> = (1..=25).map(|i| format!("{{\"seq\":{i}}}")).collect();
        for chunk in lines.chunks(5) {
            sink.write_batch(&sealed(chunk)).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while mon.status().shipped < 25 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        sink.close().unwrap();
        assert_eq!(*got.lock().unwrap(), lines);
        // A clean close with everything shipped leaves no segment behind.
        assert_eq!(spool::segment_count(&dir.path().join("spool")), 0);
        let st = mon.status();
        assert_eq!((st.shipped, st.dropped, st.failing), (25, 0, false));
        assert!(calls.load(Ordering::SeqCst) >= 3 + 25 / 3);
        assert_eq!(st.last_error, None);
    }

    #[test]
    fn a_full_spool_is_reported_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let dest = Flaky {
            fail: Arc::new(AtomicUsize::new(usize::MAX)),
            take: 10,
            got: Arc::new(Mutex::new(Vec::new())),
            calls: Arc::new(AtomicUsize::new(0)),
        };
        let opts = ShipOptions {
            name: "test",
            spool_dir: dir.path().join("spool"),
            spool_max_bytes: 30,
            segment_bytes: 1 << 20,
            batch_interval: Duration::from_millis(5),
            authoritative: true,
        };
        let mut sink = ShippingSink::start(opts, dest).unwrap();
        let lines: Vec<String> = (1..=6).map(|i| format!("record-{i:02}")).collect();
        sink.write_batch(&sealed(&lines[..2])).unwrap();
        // Authoritative: the error reaches the writer (and refuses the statements).
        let e = sink.write_batch(&sealed(&lines[2..4])).unwrap_err();
        assert!(e.to_string().contains("is full"), "{e}");
        // Best effort: counted and reported in the status, not an error.
        sink.authoritative = false;
        sink.write_batch(&sealed(&lines[4..])).unwrap();
        let st = sink.monitor().status();
        assert_eq!(st.dropped, 4);
        assert_eq!(st.backlog_bytes, 20);
        // Closing does not wait for a failing destination and says what stays spooled.
        let e = sink.close().unwrap_err();
        assert!(e.to_string().contains("20 bytes not shipped"), "{e}");
    }
}
