//! Opening a log: [`AuditLogBuilder`] (and [`AuditLog::open`], which fills one from
//! `[audit]`) recovers the chain from the existing files, writes `audit_start` before the
//! proxy accepts a client, then starts the writer thread, the witness and the shipping
//! sinks. Blocking I/O, at startup only.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::commit::{lock_writer, Deferred, Health, Writer};
use super::lock::lock_log;
use super::log::AuditLog;
use super::shared::Inner;
use super::thread::run;
use crate::chain::{Hasher, GENESIS};
use crate::config::{AuditConfig, FailureMode, Fsync};
use crate::event::Redaction;
use crate::sink::{LineSink, Sink};
use crate::sinks::{azure_monitor, postgres, AccessTokens, ShippingSink, SinkMonitor};
use crate::time::{Timestamp, TsFormatter};
use crate::AuditError;

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
    monitors: Vec<SinkMonitor>,
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
    pub fn shipping_sink(mut self, sink: ShippingSink) -> Self {
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
        let prefix = format!(
            "{{\"v\":{},\"instance\":{instance_json},",
            crate::event::SCHEMA_VERSION
        )
        .into_bytes();
        let mut prefix_state = hasher.start();
        prefix_state.update(&prefix);
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
            prefix,
            prefix_state,
            ts_format: TsFormatter::default(),
            redaction: self.redaction,
            seq: 0,
            last_hash: GENESIS.as_bytes().to_vec(),
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
                    (w.seq, w.last_hash_hex())
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
                prefix_state,
                thread: Mutex::new(Some(thread)),
                witness,
            }),
        })
    }
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
        tokens: Option<Arc<dyn AccessTokens>>,
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
        for s in shipping_sinks(cfg, tokens)? {
            b = b.shipping_sink(s);
        }
        if let Some((path, key)) = cfg.witness()? {
            b = b.witness(path, key, Duration::from_secs(cfg.witness_interval_secs));
        }
        b.open()
    }
}

/// Starts the shipping sinks `[audit]` configures.
fn shipping_sinks(
    cfg: &AuditConfig,
    tokens: Option<Arc<dyn AccessTokens>>,
) -> Result<Vec<ShippingSink>, AuditError> {
    let mut out = Vec::new();
    if let Some(pg) = &cfg.postgres {
        out.push(postgres::start(pg, &cfg.file)?);
    }
    if let Some(az) = &cfg.azure_monitor {
        out.push(azure_monitor::start(az, &cfg.file, tokens)?);
    }
    Ok(out)
}
