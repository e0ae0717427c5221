//! The authoritative file sink. One `Writer` owns the chain state and the active file,
//! behind a mutex; callers serialise their event on their own task (in parallel across
//! connections) and hand the body over. Two ways, chosen at open:
//!
//! - inline (`fsync = "none"`, every extra sink [`Sink::inline_ok`]): the appending task
//!   locks the writer, frames the record with `v, seq, ts, instance`, chains it and
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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::oneshot;

use crate::chain::{self, Hasher, GENESIS};
use crate::config::{AuditConfig, FailureMode, Fsync};
use crate::event::{self, EventKind, LogEvent, Outcome, Predecessor, Redaction, SessionInfo};
use crate::sink::{LineSink, SealedRecord, Sink};
use crate::time::Timestamp;
use crate::AuditError;

/// Most records in one batch; bounds latency and memory under a burst.
const MAX_BATCH: usize = 4096;
/// Room for the framing around a body (`v`, `seq`, `ts`, `instance`, hashes).
const FRAME_OVERHEAD: u64 = 256;
/// After a failed time rotation, wait this long before trying again.
const ROTATE_RETRY: Duration = Duration::from_secs(1);
/// Scratch buffers larger than this are not kept between records (one huge statement
/// must not pin its memory on every runtime thread).
const SCRATCH_KEEP: usize = 64 * 1024;

thread_local! {
    /// Where an inline append serialises its body: reused, so no allocation per record.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Proof that a record was written (and synced, in batch mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The record's `seq` (0 when not recorded).
    pub seq: u64,
    /// False only under `failure_mode = "log"` when the write failed.
    pub recorded: bool,
}

type Reply = oneshot::Sender<Result<Receipt, AuditError>>;

struct Pending {
    body: Vec<u8>,
    reply: Reply,
}

enum Msg {
    Append(Pending),
    Close { reason: String, reply: Reply },
}

/// Builds an [`AuditLog`] (for the proxy, [`AuditLog::open`] from `[audit]` is enough).
pub struct AuditLogBuilder {
    instance: String,
    file: Option<PathBuf>,
    rotate_bytes: Option<u64>,
    rotate_after: Option<Duration>,
    fsync: Fsync,
    key: Option<Vec<u8>>,
    redaction: Redaction,
    failure_mode: FailureMode,
    sinks: Vec<(Box<dyn Sink>, bool)>,
    monitors: Vec<crate::sinks::SinkMonitor>,
    /// Witness file, its key, and the checkpoint interval (crate::witness).
    witness: Option<(PathBuf, Vec<u8>, Duration)>,
}

impl AuditLogBuilder {
    /// A log for this pgward instance (host or pod name; written in every record).
    pub fn new(instance: impl Into<String>) -> Self {
        AuditLogBuilder {
            instance: instance.into(),
            file: None,
            rotate_bytes: None,
            rotate_after: None,
            fsync: Fsync::None,
            key: None,
            redaction: Redaction::Types,
            failure_mode: FailureMode::Refuse,
            sinks: Vec::new(),
            monitors: Vec::new(),
            witness: None,
        }
    }

    /// Checkpoints of the chain head every `every` (and at close) in `path`, authenticated
    /// with `key` (see crate::witness and docs/audit.md).
    pub fn witness(mut self, path: impl Into<PathBuf>, key: Vec<u8>, every: Duration) -> Self {
        self.witness = Some((path.into(), key, every));
        self
    }

    /// The active file (without one, records only go to the sinks).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Size rotation.
    pub fn rotate_bytes(mut self, bytes: u64) -> Self {
        self.rotate_bytes = (bytes > 0).then_some(bytes);
        self
    }

    /// Time rotation.
    pub fn rotate_after(mut self, age: Duration) -> Self {
        self.rotate_after = (!age.is_zero()).then_some(age);
        self
    }

    /// Durability mode.
    pub fn fsync(mut self, fsync: Fsync) -> Self {
        self.fsync = fsync;
        self
    }

    /// Keyed chaining (HMAC-SHA-256).
    pub fn hmac_key(mut self, key: Vec<u8>) -> Self {
        self.key = Some(key);
        self
    }

    /// Parameter redaction (recorded in `audit_start`; applied by [`crate::Params::capture`]).
    pub fn redaction(mut self, redaction: Redaction) -> Self {
        self.redaction = redaction;
        self
    }

    /// What a failed write means for the caller.
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// Adds a sink. An authoritative sink's failure fails the append like a file failure.
    pub fn sink(mut self, sink: Box<dyn Sink>, authoritative: bool) -> Self {
        self.sinks.push((sink, authoritative));
        self
    }

    /// Adds a shipping sink (PostgreSQL, Azure Monitor), whose state
    /// [`AuditLog::sink_status`] reports.
    pub fn shipping_sink(mut self, sink: crate::sinks::ShippingSink) -> Self {
        self.monitors.push(sink.monitor());
        let authoritative = sink.authoritative();
        self.sink(Box::new(sink), authoritative)
    }

    /// Opens (or continues) the log: recovers the chain from the existing files, writes
    /// `audit_start`, and starts the writer thread. Blocking I/O: call it at startup.
    pub fn open(self) -> Result<AuditLog, AuditError> {
        let hasher = Hasher::new(self.key.as_deref());
        let instance_json = serde_json::to_string(&self.instance)
            .map_err(|e| AuditError::Config(format!("instance name: {e}")))?;
        let failing = Arc::new(Health::default());
        let lock = self.file.as_deref().map(lock_log).transpose()?;
        let mut w = Writer {
            _lock: lock,
            path: self.file,
            file: None,
            rotate_bytes: self.rotate_bytes,
            rotate_after: self.rotate_after,
            fsync: self.fsync,
            hasher,
            instance_json,
            redaction: self.redaction,
            seq: 0,
            last_hash: GENESIS.to_string(),
            last_ts: Timestamp(0),
            header: None,
            stopped: None,
            sinks: self.sinks,
            failing: failing.clone(),
            buf: Vec::with_capacity(1 << 16),
            marks: Vec::new(),
            rotate_not_before: None,
            closed: false,
            deferred: Deferred::default(),
            progress: Arc::default(),
        };
        w.recover()?;
        let witness = match &self.witness {
            Some((path, key, _)) => {
                let log = w.path.clone().unwrap_or_default();
                let ww = crate::witness::WitnessWriter::open(path, key, &self.instance, &log)?;
                // The log ends before what the witness saw: its tail was cut off while pgward
                // was down. Said in the log's own audit_start and the server log; the records
                // are gone, so carrying on is all there is to do.
                if let Ok(seen) = crate::witness::read_witness(path, key) {
                    if let Some(head) = seen.head().filter(|h| h.seq > w.seq) {
                        let note = format!(
                            "; the log ends at seq {} but the witness recorded seq {} at {}: records {}..={} were cut off",
                            w.seq, head.seq, head.ts, w.seq + 1, head.seq
                        );
                        tracing::error!(
                            log_seq = w.seq,
                            witness_seq = head.seq,
                            "the audit log is shorter than its witness says: its tail was cut off"
                        );
                        if let Some(h) = w.header.as_mut() {
                            h.reason.push_str(&note);
                        }
                    }
                }
                Some(ww)
            }
            None => None,
        };
        // The first audit_start must be on disk before the proxy accepts clients: an
        // unwritable log is a startup error, not a surprise at the first statement.
        match w.ensure_header() {
            // Under failure_mode = "log" an extra sink that is down at startup is only
            // logged; the file itself must work.
            Err(e @ AuditError::Sink { .. }) if self.failure_mode == FailureMode::Log => {
                tracing::warn!(error = %e, "audit sink failed at startup");
            }
            r => r?,
        }
        let inline = w.fsync == Fsync::None && w.sinks.iter().all(|(s, _)| s.inline_ok());
        let progress = w.progress.clone();
        let writer = Arc::new(Mutex::new(w));
        let (tx, rx) = mpsc::channel();
        let shared = writer.clone();
        let thread = std::thread::Builder::new()
            .name("pgward-audit".to_string())
            .spawn(move || run(&shared, rx))
            .map_err(|e| AuditError::Config(format!("cannot start the audit writer: {e}")))?;
        let witness = match (witness, &self.witness) {
            (Some(ww), Some((_, _, every))) => {
                let shared = writer.clone();
                // The head is what was written: `seq`/`last_hash` advance only after a write.
                let head: crate::witness::Head = Box::new(move || {
                    let w = lock_writer(&shared);
                    (w.seq, w.last_hash.clone())
                });
                let (stop, thread) = crate::witness::spawn(ww, head, *every)?;
                Some(crate::witness::Running::new(stop, thread))
            }
            _ => None,
        };
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx,
                writer,
                inline,
                progress,
                in_flight: AtomicUsize::new(0),
                monitors: self.monitors,
                failing,
                redaction: self.redaction,
                failure_mode: self.failure_mode,
                thread: Mutex::new(Some(thread)),
                witness,
            }),
        })
    }
}

/// Whether the last write failed, and with what, for [`AuditLog::ready`].
#[derive(Default)]
struct Health {
    failing: AtomicBool,
    last_error: Mutex<Option<AuditError>>,
}

impl Health {
    fn set(&self, e: Option<&AuditError>) {
        // The flag is what the hot path reads; the error is only for the message.
        if let Ok(mut g) = self.last_error.lock() {
            *g = e.cloned();
        }
        self.failing.store(e.is_some(), Ordering::Release);
    }
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    writer: Arc<Mutex<Writer>>,
    /// Appends write on the caller's thread (see the module docs).
    inline: bool,
    /// What became of deferred appends, readable without the lock.
    progress: Arc<Progress>,
    /// Statements sent upstream and not yet recorded, over all sessions ([`InFlight`]).
    in_flight: AtomicUsize,
    monitors: Vec<crate::sinks::SinkMonitor>,
    failing: Arc<Health>,
    redaction: Redaction,
    failure_mode: FailureMode,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The witness checkpoint thread, if `[audit] witness_file` is set.
    witness: Option<Arc<crate::witness::Running>>,
}

/// The audit log handle. Cheap to clone; share it between sessions.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl AuditLog {
    /// Opens the log described by `[audit]` (paths already resolved), for `instance`.
    pub fn open(cfg: &AuditConfig, instance: &str) -> Result<AuditLog, AuditError> {
        Self::open_with_tokens(cfg, instance, None)
    }

    /// [`AuditLog::open`], with pgward's Azure credential (tokens for its `scope`) for
    /// `[audit.azure_monitor]`.
    pub fn open_with_tokens(
        cfg: &AuditConfig,
        instance: &str,
        tokens: Option<Arc<dyn crate::sinks::AccessTokens>>,
    ) -> Result<AuditLog, AuditError> {
        let mut b = AuditLogBuilder::new(instance)
            .file(cfg.file.clone())
            .rotate_bytes(cfg.rotate_bytes)
            .rotate_after(Duration::from_secs(cfg.rotate_secs))
            .fsync(cfg.fsync)
            .redaction(cfg.redaction)
            .failure_mode(cfg.failure_mode);
        if let Some(key) = cfg.hmac_key()? {
            b = b.hmac_key(key);
        }
        if cfg.stdout {
            b = b.sink(Box::new(LineSink::stdout()), false);
        }
        for s in crate::sinks::from_config(cfg, tokens)? {
            b = b.shipping_sink(s);
        }
        if let Some((path, key)) = cfg.witness()? {
            b = b.witness(path, key, Duration::from_secs(cfg.witness_interval_secs));
        }
        b.open()
    }

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

    /// Starts recording a client connection: serialises its context once so each later
    /// record of the session only serialises its own fields.
    pub fn session(&self, info: &SessionInfo) -> SessionLog {
        SessionLog {
            log: self.clone(),
            ctx: Arc::from(event::session_fragment(info)),
        }
    }

    /// Serialises and appends one event: inline, or queued for the writer thread.
    fn append<T: serde::Serialize>(&self, kind: EventKind, ctx: &str, detail: &T) -> Append {
        self.append_with(|v| event::body_into(v, kind, ctx, detail))
    }

    /// Appends the body `fill` writes into an empty buffer.
    fn append_with(&self, fill: impl Fn(&mut Vec<u8>)) -> Append {
        let fresh = || {
            let mut v = Vec::with_capacity(1024);
            fill(&mut v);
            v
        };
        if !self.inner.inline {
            return self.submit(fresh());
        }
        let res = with_scratch(fill, |body| self.write_inline(body));
        Append {
            state: State::Done(Some(res)),
            failure_mode: self.inner.failure_mode,
        }
    }

    /// Seals a statement record now; it is written by the first of the appends sealed
    /// meanwhile to be polled again (see the module docs).
    fn append_deferred(&self, fill: impl Fn(&mut Vec<u8>)) -> Append {
        let sealed = with_scratch(fill, |body| self.seal_deferred(body));
        let state = match sealed {
            Ok((ticket, seq)) => State::Sealed {
                log: self.clone(),
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

    fn seal_deferred(&self, body: &[u8]) -> Result<(u64, u64), AuditError> {
        let mut w = lock_writer(&self.inner.writer);
        if w.closed {
            return Err(AuditError::Closed);
        }
        w.seal_deferred(body)
    }

    /// Makes sure the record sealed as `ticket` is written; its result.
    fn flush_through(&self, ticket: u64, seq: u64) -> Result<Receipt, AuditError> {
        let receipt = Receipt {
            seq,
            recorded: true,
        };
        // Written by someone else already, and no failed write is unaccounted for: no lock.
        // (A failure is registered before `written_ticket` passes its tickets.)
        if self.inner.progress.written.load(Ordering::Acquire) >= ticket
            && self.inner.progress.unclaimed.load(Ordering::Acquire) == 0
        {
            return Ok(receipt);
        }
        let mut w = lock_writer(&self.inner.writer);
        if w.deferred.written < ticket {
            w.flush_pending();
        }
        let w = &mut *w;
        w.deferred.claim(ticket, &w.progress).map(|()| receipt)
    }

    fn write_inline(&self, body: &[u8]) -> Result<Receipt, AuditError> {
        let mut w = lock_writer(&self.inner.writer);
        if w.closed {
            return Err(AuditError::Closed);
        }
        let mut out = Err(AuditError::Closed);
        w.process(std::iter::once((body, ())), |(), r| out = r);
        out
    }

    fn submit(&self, body: Vec<u8>) -> Append {
        let (reply, rx) = oneshot::channel();
        let state = match self.inner.tx.send(Msg::Append(Pending { body, reply })) {
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
fn with_scratch<R>(fill: impl Fn(&mut Vec<u8>), then: impl FnOnce(&[u8]) -> R) -> R {
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

/// A statement's record up to its outcome, from [`SessionLog::statement_head`]. Cheap to
/// clone; belongs to the session that made it.
#[derive(Clone)]
pub struct StatementHead(Arc<[u8]>);

impl std::fmt::Debug for StatementHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The SQL may be sensitive: its length is enough for a Debug dump.
        f.debug_struct("StatementHead")
            .field("bytes", &self.0.len())
            .finish()
    }
}

/// The per-connection recorder, from [`AuditLog::session`].
#[derive(Clone)]
pub struct SessionLog {
    log: AuditLog,
    ctx: Arc<str>,
}

impl SessionLog {
    /// Records a successful sign-in.
    pub fn connect(&self, c: &event::Connect<'_>) -> Append {
        self.log.append(EventKind::Connect, &self.ctx, c)
    }

    /// Records a refused sign-in with its exact reason.
    pub fn auth_failed(&self, reason: &str) -> Append {
        let detail = event::AuthFailed { reason };
        self.log.append(EventKind::AuthFailed, &self.ctx, &detail)
    }

    /// Records a statement. Await the result before relaying the statement's result to
    /// the client; on `Err`, answer SQLSTATE 58030 instead.
    pub fn statement(&self, s: &event::Statement<'_>) -> Append {
        // The same two writers as `statement_head` + `statement_done`, in one pass.
        let head = event::StatementHead::of(s);
        self.log.append_with(|v| {
            event::body_into(v, EventKind::Statement, &self.ctx, &head);
            event::statement_tail_into(v, &s.outcome, s.duration_us);
        })
    }

    /// Serialises the members of a statement's record that are known before it runs
    /// (text, parameters, protocol, objects, decision, rule), so that work is done while
    /// the statement runs upstream, and only once for a prepared statement executed again
    /// with the same recorded parameters. `outcome` and `duration_us` of `s` are ignored:
    /// [`SessionLog::statement_done`] supplies them. The record is byte for byte what
    /// [`SessionLog::statement`] writes.
    pub fn statement_head(&self, s: &event::Statement<'_>) -> StatementHead {
        let mut v = Vec::with_capacity(512 + self.ctx.len());
        event::body_into(
            &mut v,
            EventKind::Statement,
            &self.ctx,
            &event::StatementHead::of(s),
        );
        StatementHead(Arc::from(v))
    }

    /// Records a statement from its head and result. Await it before relaying the result.
    pub fn statement_done(
        &self,
        head: &StatementHead,
        outcome: Outcome<'_>,
        duration_us: u64,
    ) -> Append {
        // Group commit only pays when other statements may complete meanwhile: a lone
        // session writes at once (a yield would wake an idle runtime thread for nothing).
        // The caller's own statement is still counted here.
        let fill = |v: &mut Vec<u8>| {
            v.extend_from_slice(&head.0);
            event::statement_tail_into(v, &outcome, duration_us);
        };
        if self.log.inner.inline && self.log.inner.in_flight.load(Ordering::Relaxed) > 1 {
            self.log.append_deferred(fill)
        } else {
            self.log.append_with(fill)
        }
    }

    /// Counts a statement as running until the returned guard is dropped: drop it after
    /// [`SessionLog::statement_done`] for it. Statement records are group-committed only
    /// while several statements are running.
    pub fn in_flight(&self) -> InFlight {
        self.log.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.log.clone())
    }

    /// Records the end of the session.
    pub fn disconnect(&self, d: &event::Disconnect<'_>) -> Append {
        self.log.append(EventKind::Disconnect, &self.ctx, d)
    }

    /// The log this session writes to.
    pub fn log(&self) -> &AuditLog {
        &self.log
    }
}

/// A statement sent upstream and not yet recorded (see [`SessionLog::in_flight`]).
pub struct InFlight(AuditLog);

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

enum State {
    Sealed {
        log: AuditLog,
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
    state: State,
    failure_mode: FailureMode,
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
                log, ticket, seq, ..
            } => log.flush_through(ticket, seq),
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
                log,
                ticket,
                seq,
                yielded,
            } => {
                if !*yielded && log.inner.progress.written.load(Ordering::Acquire) < *ticket {
                    // Go to the back of this runtime thread's queue once: the sessions
                    // ahead seal their records meanwhile, and one write covers them all.
                    *yielded = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let r = log.flush_through(*ticket, *seq);
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
            log, ticket, seq, ..
        } = &self.state
        {
            let _ = log.flush_through(*ticket, *seq);
        }
    }
}

/// The first record a file (or a process) must write before any other.
#[derive(Clone)]
struct Header {
    kind: EventKind,
    reason: String,
    predecessor: Option<Predecessor>,
}

struct ActiveFile {
    file: File,
    len: u64,
    records: u64,
    opened: Instant,
}

struct Writer {
    path: Option<PathBuf>,
    /// Held until the log is closed: the exclusive lock on `<file>.lock`.
    _lock: Option<File>,
    file: Option<ActiveFile>,
    rotate_bytes: Option<u64>,
    rotate_after: Option<Duration>,
    fsync: Fsync,
    hasher: Hasher,
    instance_json: String,
    redaction: Redaction,
    /// Chain state: the last record written.
    seq: u64,
    last_hash: String,
    last_ts: Timestamp,
    /// A header still to be written before any other record.
    header: Option<Header>,
    /// Set after a failure that leaves durability unknown.
    stopped: Option<String>,
    sinks: Vec<(Box<dyn Sink>, bool)>,
    failing: Arc<Health>,
    buf: Vec<u8>,
    /// (seq, start, end) of each record in `buf`.
    marks: Vec<(u64, usize, usize)>,
    rotate_not_before: Option<Instant>,
    /// `audit_stop` is written: every later append fails with [`AuditError::Closed`].
    closed: bool,
    /// Statement records sealed and not yet written (they are in `buf`), and failed
    /// group writes not yet reported to all their appends.
    deferred: Deferred,
    progress: Arc<Progress>,
}

/// Mirrors of [`Deferred`] for the lock-free check of an append that was written by
/// another task.
#[derive(Default)]
struct Progress {
    /// Every ticket up to this one was written or failed.
    written: AtomicU64,
    /// Tickets of failed group writes not yet claimed by their appends.
    unclaimed: AtomicU64,
}

/// Deferred (group-committed) appends, numbered by ticket in sealing order. A ticket is
/// not a `seq`: after a failed write the chain continues from the last written record,
/// so a `seq` can be sealed twice, while a ticket is never reused.
#[derive(Default)]
struct Deferred {
    /// The last ticket sealed.
    sealed: u64,
    /// Every ticket up to this one was written or failed.
    written: u64,
    /// Failed group writes: (first ticket, last ticket, tickets not yet claimed, error).
    /// Each append claims its result exactly once (when polled, waited for or dropped),
    /// so an entry lives only until every append of that write has seen the error.
    failed: VecDeque<(u64, u64, u64, AuditError)>,
}

impl Deferred {
    /// The result of the append sealed as `ticket` (at most once per ticket).
    fn claim(&mut self, ticket: u64, progress: &Progress) -> Result<(), AuditError> {
        let Some(i) = self
            .failed
            .iter()
            .position(|&(first, last, _, _)| first <= ticket && ticket <= last)
        else {
            return Ok(());
        };
        let entry = &mut self.failed[i];
        entry.2 -= 1;
        let e = entry.3.clone();
        if entry.2 == 0 {
            self.failed.remove(i);
        }
        progress.unclaimed.fetch_sub(1, Ordering::AcqRel);
        Err(e)
    }
}

/// Appends `n` in decimal.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Where the hash is in a sealed record ending at `end` (before its `"}`).
fn hash_hex(end: usize) -> std::ops::Range<usize> {
    end - 2 - 64..end - 2
}

/// Hands sealed records to every sink; an authoritative sink's failure is the result.
fn feed_sinks(
    sinks: &mut [(Box<dyn Sink>, bool)],
    batch: &[SealedRecord<'_>],
) -> Result<(), AuditError> {
    let mut result = Ok(());
    for (sink, authoritative) in sinks {
        if let Err(e) = sink.write_batch(batch) {
            if *authoritative {
                result = Err(AuditError::Sink {
                    sink: sink.name().to_string(),
                    message: e.to_string(),
                });
            } else {
                tracing::warn!(sink = sink.name(), error = %e, "audit sink failed (best effort)");
            }
        }
    }
    result
}

#[derive(Deserialize)]
struct ChainPoint {
    seq: u64,
    hash: String,
}

impl Writer {
    fn path_str(&self) -> String {
        self.path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    fn io_err(&self, what: &str, e: &io::Error) -> AuditError {
        AuditError::Io {
            path: self.path_str(),
            kind: e.kind(),
            message: format!("{what}: {e}"),
        }
    }

    /// Finds where the chain stands and what the first record must be.
    fn recover(&mut self) -> Result<(), AuditError> {
        let version = format!("pgward {}", env!("CARGO_PKG_VERSION"));
        let Some(path) = self.path.clone() else {
            self.header = Some(Header {
                kind: EventKind::AuditStart,
                reason: version,
                predecessor: None,
            });
            return Ok(());
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, "create directory", &e))?;
        }
        let archived = archived_files(&path).map_err(|e| AuditError::io(&path, "list", &e))?;
        let active_len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(AuditError::io(&path, "stat", &e)),
        };
        let mut predecessor = None;
        let mut reason = "start".to_string();
        if active_len > 0 {
            let tail = last_complete_line(&path).map_err(|e| AuditError::io(&path, "read", &e))?;
            let point = match &tail.line {
                Some(l) => Some(parse_point(&path, l)?),
                None => None,
            };
            if tail.torn {
                // Never append after a torn line (that would bury the tear mid-file):
                // move the file aside and continue in a new one that names it.
                let point = match point {
                    Some(p) => Some(p),
                    None => newest_point(&archived)?,
                };
                let to = rotated_name(&path, Timestamp::now());
                fs::rename(&path, &to)
                    .map_err(|e| AuditError::io(&path, "rename torn file", &e))?;
                if let Some(p) = &point {
                    self.seq = p.seq;
                    self.last_hash = p.hash.clone();
                }
                predecessor = Some(Predecessor {
                    file: file_name(&to),
                    last_seq: self.seq,
                    last_hash: self.last_hash.clone(),
                });
                reason = "start after a crash: the previous file ends with a torn line".to_string();
            } else if let Some(p) = point {
                self.seq = p.seq;
                self.last_hash = p.hash;
            }
        } else if let Some(newest) = archived.last() {
            // Crash between rotation's rename and the new file's first record, or the
            // active file was moved away: continue from the newest rotated file.
            if let Some(p) = newest_point(&archived)? {
                self.seq = p.seq;
                self.last_hash = p.hash;
            }
            predecessor = Some(Predecessor {
                file: file_name(newest),
                last_seq: self.seq,
                last_hash: self.last_hash.clone(),
            });
        }
        self.header = Some(Header {
            kind: EventKind::AuditStart,
            reason: format!("{reason} ({version})"),
            predecessor,
        });
        Ok(())
    }

    fn open_active(&mut self) -> Result<(), AuditError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| AuditError::io(path, "open", &e))?;
        let len = file
            .metadata()
            .map_err(|e| AuditError::io(path, "stat", &e))?
            .len();
        self.file = Some(ActiveFile {
            file,
            len,
            records: 0,
            opened: Instant::now(),
        });
        if self.fsync == Fsync::Batch {
            sync_dir(path).map_err(|e| AuditError::io(path, "sync directory", &e))?;
        }
        Ok(())
    }

    /// Writes the pending header (`audit_start` or `rotate`), if any.
    fn ensure_header(&mut self) -> Result<(), AuditError> {
        if let Some(s) = &self.stopped {
            return Err(AuditError::Stopped(s.clone()));
        }
        let Some(h) = self.header.clone() else {
            return Ok(());
        };
        if self.file.is_none() && self.path.is_some() {
            self.open_active()?;
        }
        let detail = LogEvent {
            reason: Some(&h.reason),
            predecessor: h.predecessor.as_ref(),
            alg: Some(self.hasher.alg()),
            key_id: self.hasher.key_id(),
            version: (h.kind == EventKind::AuditStart).then_some(env!("CARGO_PKG_VERSION")),
            redaction: (h.kind == EventKind::AuditStart).then_some(self.redaction),
        };
        let body = event::body(h.kind, "\"session\":null", &detail);
        let seq = self.seq + 1;
        let res = self.write_one(&body).map(drop);
        // Written to the file even if an extra sink then failed: do not write it twice.
        if self.seq == seq {
            self.header = None;
        }
        res
    }

    /// Seals `body` after any records sealed and not yet written, to be written by
    /// [`Writer::flush_pending`]; returns (ticket, seq). A due header or rotation first
    /// writes what is pending, so records never cross a file boundary out of order.
    fn seal_deferred(&mut self, body: &[u8]) -> Result<(u64, u64), AuditError> {
        let prepared = self
            .ensure_header()
            .and_then(|()| self.rotate_if_due(body.len() as u64));
        if let Err(e) = prepared {
            self.failing.set(Some(&e));
            return Err(e);
        }
        let seq = self.marks.last().map_or(self.seq, |m| m.0) + 1;
        self.seal(body, seq);
        self.deferred.sealed += 1;
        Ok((self.deferred.sealed, seq))
    }

    /// Writes every sealed record not yet written, with one write. On failure nothing
    /// of them stays in the file or the chain (see `commit`), and each of their appends
    /// gets the error.
    fn flush_pending(&mut self) {
        // Between calls `buf` holds only records sealed here and not yet written.
        let Some(&(last, _, _)) = self.marks.last() else {
            return;
        };
        match self.commit(last) {
            Ok(()) => {
                if self.failing.failing.load(Ordering::Relaxed) {
                    self.failing.set(None);
                }
            }
            Err(e) => {
                self.failing.set(Some(&e));
                let d = &mut self.deferred;
                let n = d.sealed - d.written;
                d.failed.push_back((d.written + 1, d.sealed, n, e));
                self.progress.unclaimed.fetch_add(n, Ordering::AcqRel);
            }
        }
        self.deferred.written = self.deferred.sealed;
        self.progress
            .written
            .store(self.deferred.written, Ordering::Release);
        self.buf.clear();
        self.marks.clear();
    }

    /// Seals and commits one record on its own; returns its seq.
    fn write_one(&mut self, body: &[u8]) -> Result<u64, AuditError> {
        self.flush_pending();
        let seq = self.seq + 1;
        self.seal(body, seq);
        let res = self.commit(seq).map(|()| seq);
        self.buf.clear();
        self.marks.clear();
        res
    }

    /// Appends one framed record to `buf`, chained to the last record in `buf` (or, for
    /// the first, to the chain's last record).
    fn seal(&mut self, body: &[u8], seq: u64) {
        let now = Timestamp::now();
        // Keep ts non-decreasing along the chain even if the clock steps back.
        let ts = if now < self.last_ts {
            self.last_ts
        } else {
            now
        };
        self.last_ts = ts;
        let start = self.buf.len();
        let b = &mut self.buf;
        // Written by hand rather than with `write!`: core::fmt was most of the frame's cost.
        b.extend_from_slice(b"{\"v\":");
        push_decimal(b, u64::from(event::SCHEMA_VERSION));
        b.extend_from_slice(b",\"seq\":");
        push_decimal(b, seq);
        b.extend_from_slice(b",\"ts\":\"");
        ts.push_rfc3339(b);
        b.extend_from_slice(b"\",\"instance\":");
        b.extend_from_slice(self.instance_json.as_bytes());
        b.push(b',');
        b.extend_from_slice(body);
        b.extend_from_slice(b",\"prev_hash\":\"");
        match self.marks.last() {
            // The previous record's hash, as it was just written.
            Some(&(_, _, end)) => b.extend_from_within(hash_hex(end)),
            None => b.extend_from_slice(self.last_hash.as_bytes()),
        }
        b.push(b'"');
        let digest = self.hasher.hash(&b[start..]);
        b.extend_from_slice(b",\"hash\":\"");
        chain::push_hex_bytes(b, &digest);
        b.extend_from_slice(b"\"}");
        let end = b.len();
        b.push(b'\n');
        self.marks.push((seq, start, end));
    }

    /// Writes `buf` (records ending at chain point `seq`), syncs per mode, feeds the
    /// sinks, and advances the chain. On a file failure nothing advances and the file is
    /// cut back to where it was, so no partial line stays behind.
    fn commit(&mut self, seq: u64) -> Result<(), AuditError> {
        let n = self.marks.len() as u64;
        if let Some(f) = self.file.as_mut() {
            let before = f.len;
            if let Err(e) = f.file.write_all(&self.buf) {
                let err = self.io_err("write", &e);
                let cut = self
                    .file
                    .as_mut()
                    .map(|f| f.file.set_len(before))
                    .unwrap_or(Ok(()));
                if let Err(e2) = cut {
                    self.stopped = Some(format!(
                        "a failed write ({e}) could not be rolled back ({e2})"
                    ));
                }
                return Err(err);
            }
            if self.fsync == Fsync::Batch {
                if let Err(e) = f.file.sync_data() {
                    // After a failed fsync the kernel may have dropped the dirty pages; the
                    // file's content is unknown, so stop rather than pretend.
                    self.stopped = Some(format!("fsync failed: {e}"));
                    return Err(self.io_err("fsync", &e));
                }
            }
            f.len += self.buf.len() as u64;
            f.records += n;
        }
        self.seq = seq;
        if let Some(&(_, _, end)) = self.marks.last() {
            // The hex digits the seal just wrote: always ASCII.
            if let Ok(hex) = std::str::from_utf8(&self.buf[hash_hex(end)]) {
                self.last_hash.clear();
                self.last_hash.push_str(hex);
            }
        }
        if self.sinks.is_empty() {
            return Ok(());
        }
        let record = |&(seq, s, e): &(u64, usize, usize)| SealedRecord {
            seq,
            line: &self.buf[s..e],
        };
        // A single record (every inline append) needs no Vec.
        match self.marks[..] {
            [one] => feed_sinks(&mut self.sinks, &[record(&one)]),
            _ => feed_sinks(
                &mut self.sinks,
                &self.marks.iter().map(record).collect::<Vec<_>>(),
            ),
        }
    }

    fn time_until_rotation(&self) -> Option<Duration> {
        let age = self.rotate_after?;
        let f = self.file.as_ref()?;
        let mut due = f.opened + age;
        if let Some(nb) = self.rotate_not_before {
            due = due.max(nb);
        }
        Some(due.saturating_duration_since(Instant::now()))
    }

    /// Rotates when the next record (of `next_len` bytes) would overflow the file, or the
    /// file is old enough. A file holding only its header is not rotated (an idle proxy
    /// would otherwise make one empty file per interval).
    fn rotate_if_due(&mut self, next_len: u64) -> Result<(), AuditError> {
        let Some(f) = &self.file else {
            return Ok(());
        };
        // Records sealed and not yet written belong to this file too.
        if f.records + self.marks.len() as u64 <= 1 {
            return Ok(());
        }
        let by_size = self
            .rotate_bytes
            .is_some_and(|max| f.len + self.buf.len() as u64 + next_len + FRAME_OVERHEAD > max);
        let by_time = self
            .rotate_after
            .is_some_and(|age| f.opened.elapsed() >= age)
            && self.rotate_not_before.is_none_or(|t| Instant::now() >= t);
        if !by_size && !by_time {
            return Ok(());
        }
        // They belong to this file, before its successor's header.
        self.flush_pending();
        let res = self.rotate(if by_size { "size" } else { "time" });
        self.rotate_not_before = res.is_err().then(|| Instant::now() + ROTATE_RETRY);
        res
    }

    fn rotate(&mut self, reason: &str) -> Result<(), AuditError> {
        let (Some(path), Some(f)) = (self.path.clone(), self.file.as_ref()) else {
            return Ok(());
        };
        if self.fsync == Fsync::Batch {
            if let Err(e) = f.file.sync_all() {
                self.stopped = Some(format!("fsync failed: {e}"));
                return Err(self.io_err("fsync before rotation", &e));
            }
        }
        let to = rotated_name(&path, self.last_ts.max(Timestamp::now()));
        fs::rename(&path, &to).map_err(|e| self.io_err("rotate (rename)", &e))?;
        self.file = None;
        self.header = Some(Header {
            kind: EventKind::Rotate,
            reason: reason.to_string(),
            predecessor: Some(Predecessor {
                file: file_name(&to),
                last_seq: self.seq,
                last_hash: self.last_hash.clone(),
            }),
        });
        self.ensure_header()
    }

    /// Seals and commits `items` in order (in several writes only when a size rotation
    /// falls inside them) and reports each item's result to `done`.
    fn process<B: AsRef<[u8]>, R>(
        &mut self,
        items: impl IntoIterator<Item = (B, R)>,
        mut done: impl FnMut(R, Result<Receipt, AuditError>),
    ) {
        self.flush_pending();
        let mut pending = items.into_iter().peekable();
        // Zero-sized for inline appends, so no allocation there.
        let mut taken: Vec<R> = Vec::new();
        while let Some(first_len) = pending.peek().map(|(b, _)| b.as_ref().len() as u64) {
            let prepared = self
                .ensure_header()
                .and_then(|()| self.rotate_if_due(first_len));
            if let Err(e) = prepared {
                self.failing.set(Some(&e));
                for (_, r) in pending.by_ref() {
                    done(r, Err(e.clone()));
                }
                break;
            }
            // Seal as many as fit in the current file (at least one).
            let mut seq = self.seq;
            let base = self.file.as_ref().map_or(0, |f| f.len);
            while let Some((b, r)) = pending.next_if(|(b, _)| {
                taken.is_empty()
                    || self.rotate_bytes.is_none_or(|max| {
                        base + (self.buf.len() + b.as_ref().len()) as u64 + FRAME_OVERHEAD <= max
                    })
            }) {
                seq += 1;
                self.seal(b.as_ref(), seq);
                taken.push(r);
            }
            match self.commit(seq) {
                Ok(()) => {
                    if self.failing.failing.load(Ordering::Relaxed) {
                        self.failing.set(None);
                    }
                    for (r, &(seq, _, _)) in taken.drain(..).zip(&self.marks) {
                        done(
                            r,
                            Ok(Receipt {
                                seq,
                                recorded: true,
                            }),
                        );
                    }
                }
                Err(e) => {
                    self.failing.set(Some(&e));
                    for r in taken.drain(..) {
                        done(r, Err(e.clone()));
                    }
                }
            }
            self.buf.clear();
            self.marks.clear();
        }
    }

    fn stop(&mut self, reason: &str, reply: Option<Reply>) {
        let res = self.ensure_header().and_then(|()| {
            let detail = LogEvent {
                reason: Some(reason),
                ..LogEvent::default()
            };
            let body = event::body(EventKind::AuditStop, "\"session\":null", &detail);
            let seq = self.write_one(&body)?;
            if let Some(f) = &self.file {
                // A clean stop is always made durable, whatever the mode.
                f.file.sync_all().map_err(|e| self.io_err("fsync", &e))?;
            }
            Ok(Receipt {
                seq,
                recorded: true,
            })
        });
        // The handles may outlive the log (they share this state): release the file and
        // its lock now, so another process (or a reopen) can take over.
        self.closed = true;
        self.file = None;
        self._lock = None;
        for (sink, _) in &mut self.sinks {
            if let Err(e) = sink.close() {
                tracing::warn!(sink = sink.name(), error = %e, "closing audit sink failed");
            }
        }
        if let Err(e) = &res {
            tracing::error!(error = %e, "audit_stop not written");
        }
        if let Some(r) = reply {
            let _ = r.send(res);
        }
    }
}

/// Locks the writer. A panic while it was held leaves the chain state unknown, so the
/// log stops (fail-closed) instead of carrying on.
fn lock_writer(m: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    m.lock().unwrap_or_else(|p| {
        let mut w = p.into_inner();
        if w.stopped.is_none() {
            w.stopped = Some("the audit writer panicked".to_string());
        }
        w
    })
}

/// The writer thread: batches of queued appends (thread mode), time rotation of an idle
/// log, and the final `audit_stop` (both modes).
fn run(shared: &Mutex<Writer>, rx: mpsc::Receiver<Msg>) {
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
                if let Err(e) = lock_writer(shared).rotate_if_due(0) {
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
        w.process(batch.drain(..).map(|p| (p.body, p.reply)), |reply, r| {
            let _ = reply.send(r);
        });
        if let Some((reason, reply)) = close {
            w.stop(&reason, Some(reply));
            return;
        }
    }
}

fn parse_point(path: &Path, line: &[u8]) -> Result<ChainPoint, AuditError> {
    serde_json::from_slice::<ChainPoint>(line).map_err(|e| {
        AuditError::Config(format!(
            "the last complete record of {} is unreadable ({e}); run `pgward audit verify` on it, \
             then move it aside to start a new chain",
            path.display()
        ))
    })
}

fn newest_point(archived: &[PathBuf]) -> Result<Option<ChainPoint>, AuditError> {
    for p in archived.iter().rev() {
        let tail = last_complete_line(p).map_err(|e| AuditError::io(p, "read", &e))?;
        if let Some(l) = tail.line {
            return parse_point(p, &l).map(Some);
        }
    }
    Ok(None)
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `(stem, ext)` of the active file: `pgward.jsonl` → (`pgward`, `.jsonl`).
fn stem_ext(active: &Path) -> (String, String) {
    let stem = active
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = active
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (stem, ext)
}

/// A free name for a rotated file: `<stem>.<YYYYMMDDTHHMMSS.ffffffZ><ext>`.
fn rotated_name(active: &Path, ts: Timestamp) -> PathBuf {
    let (stem, ext) = stem_ext(active);
    let dir = active.parent().unwrap_or(Path::new(""));
    let mut t = ts;
    loop {
        let p = dir.join(format!("{stem}.{}{ext}", t.compact()));
        // Later names must sort later; on a clash, move forward a microsecond.
        if !p.exists() {
            return p;
        }
        t = Timestamp(t.0 + 1);
    }
}

/// Rotated files of the log whose active file is `active`, oldest first.
pub fn archived_files(active: &Path) -> io::Result<Vec<PathBuf>> {
    let (stem, ext) = stem_ext(active);
    let dir = match active.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!("{stem}.");
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(mid) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(ext.as_str()))
        else {
            continue;
        };
        // `20261122T174541.123456Z`
        let b = mid.as_bytes();
        if b.len() == 23 && b[8] == b'T' && b[15] == b'.' && b[22] == b'Z' {
            out.push(active.with_file_name(&name));
        }
    }
    out.sort();
    Ok(out)
}

/// All files of a log in chain order: the rotated ones, then the active one.
pub fn log_files(active: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v = archived_files(active)?;
    if active.exists() {
        v.push(active.to_path_buf());
    }
    Ok(v)
}

pub(crate) struct Tail {
    /// The last newline-terminated line (without its newline).
    pub line: Option<Vec<u8>>,
    /// The file does not end with a newline.
    pub torn: bool,
}

/// Reads backwards in growing windows to find the last complete line without reading the
/// whole (possibly 100 MiB) file at startup.
pub(crate) fn last_complete_line(path: &Path) -> io::Result<Tail> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(Tail {
            line: None,
            torn: false,
        });
    }
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        Read::take(&mut f, len - start).read_to_end(&mut buf)?;
        let torn = buf.last() != Some(&b'\n');
        let Some(end) = buf.iter().rposition(|&c| c == b'\n') else {
            if start == 0 {
                return Ok(Tail { line: None, torn });
            }
            window *= 2;
            continue;
        };
        match buf[..end].iter().rposition(|&c| c == b'\n') {
            Some(s) => {
                return Ok(Tail {
                    line: Some(buf[s + 1..end].to_vec()),
                    torn,
                })
            }
            None if start == 0 => {
                return Ok(Tail {
                    line: Some(buf[..end].to_vec()),
                    torn,
                })
            }
            None => window *= 2,
        }
    }
}

/// Takes an exclusive, non-blocking flock(2) on `<file>.lock` (released when the writer
/// ends or the process dies), so a second pgward pointed at the same file fails at start
/// instead of forking the chain.
fn lock_log(file: &Path) -> Result<File, AuditError> {
    use std::os::fd::AsRawFd;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, "create directory", &e))?;
    }
    let mut name = file.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AuditError::io(&path, "open lock file", &e))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            AuditError::Config(format!(
                "audit log {} is in use by another process (lock {})",
                file.display(),
                path.display()
            ))
        } else {
            AuditError::io(&path, "lock", &e)
        });
    }
    Ok(f)
}

fn sync_dir(file: &Path) -> io::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ObjectAction, Param, Params, Protocol, Statement};

    /// `statement_head` + `statement_done` write exactly what `statement` writes.
    #[test]
    fn a_head_and_its_outcome_make_the_same_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let log = AuditLogBuilder::new("t").file(&path).open().unwrap();
        let s = log.session(&SessionInfo {
            session: "7".into(),
            ..SessionInfo::default()
        });
        let params = Params(vec![Param {
            ty: "int4".into(),
            format: None,
            value: Some(Some("42".into())),
        }]);
        let objects = [ObjectAction {
            object: "public.t",
            action: "select",
        }];
        let st = Statement {
            sql: "SELECT \"x\" FROM t WHERE a = $1 -- eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
            params: Some(&params),
            protocol: Protocol::Extended,
            objects: &objects,
            rule: Some("r"),
            outcome: Outcome {
                command_tag: Some("SELECT 1"),
                rows: Some(1),
                ..Outcome::default()
            },
            duration_us: 12,
            ..Statement::default()
        };
        s.statement(&st).wait().unwrap();
        let head = s.statement_head(&st);
        s.statement_done(&head, st.outcome, st.duration_us)
            .wait()
            .unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let bodies: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"event\":\"statement\""))
            .map(|l| &l[l.find("\"event\"").unwrap()..l.find(",\"prev_hash\"").unwrap()])
            .collect();
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[0], bodies[1]);
        assert!(bodies[0].contains("[REDACTED JWT]"));
        assert!(bodies[0]
            .ends_with("\"outcome\":{\"command_tag\":\"SELECT 1\",\"rows\":1},\"duration_us\":12"));
    }
}
