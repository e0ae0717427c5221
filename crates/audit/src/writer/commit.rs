//! The `Writer`: the chain state and the active file, behind the log's mutex. Every
//! record goes through here: sealed (framed with `v, instance` before its body and `seq,
//! ts, prev_hash` after it, chained, hashed) into a buffer, committed (one write(2), an fdatasync in batch mode, the extra sinks),
//! and only then counted in the chain, so a failed write leaves neither a partial line nor
//! a gap. Rotation, the header each file starts with, the group-commit bookkeeping of
//! deferred statement records, and the final `audit_stop` live here too, because each of
//! them must happen between two records under the same lock.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::chain::{self, HashState, Hasher};
use crate::config::Fsync;
use crate::event::{self, EventKind, LogEvent, Predecessor, Redaction};
use crate::files::{file_name, rotated_name};
use crate::json::push_decimal;
use crate::sink::{SealedRecord, Sink};
use crate::time::{Timestamp, TsFormatter};
use crate::AuditError;

/// Room for the framing around a body (`v`, `seq`, `ts`, `instance`, hashes).
const FRAME_OVERHEAD: u64 = 256;
/// After a failed time rotation, wait this long before trying again.
const ROTATE_RETRY: Duration = Duration::from_secs(1);

/// Proof that a record was written (and synced, in batch mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The record's `seq` (0 when not recorded).
    pub seq: u64,
    /// False only under `failure_mode = "log"` when the write failed.
    pub recorded: bool,
}

pub(super) type Reply = oneshot::Sender<Result<Receipt, AuditError>>;

/// Whether the last write failed, and with what, for [`crate::AuditLog::ready`].
#[derive(Default)]
pub(super) struct Health {
    pub(super) failing: AtomicBool,
    pub(super) last_error: Mutex<Option<AuditError>>,
}

impl Health {
    pub(super) fn set(&self, e: Option<&AuditError>) {
        // The flag is what the hot path reads; the error is only for the message.
        if let Ok(mut g) = self.last_error.lock() {
            *g = e.cloned();
        }
        self.failing.store(e.is_some(), Ordering::Release);
    }
}

/// The first record a file (or a process) must write before any other.
#[derive(Clone)]
pub(super) struct Header {
    pub(super) kind: EventKind,
    pub(super) reason: String,
    pub(super) predecessor: Option<Predecessor>,
}

pub(super) struct ActiveFile {
    file: File,
    len: u64,
    records: u64,
    opened: Instant,
    /// `opened` by the wall clock: an append checks time rotation against the timestamp
    /// it reads anyway (the writer thread's timer uses `opened`).
    opened_ts: Timestamp,
}

/// A record's body as an append hands it over: the concatenation of `hashed`, then what
/// `rest` writes. `state` is the hash state after the log's prefix and `hashed`, computed
/// by the appending task outside the lock (and mostly once per session or statement, see
/// `writer::session`); the writer hashes only `rest` and the frame.
pub(super) struct Body<'a> {
    pub(super) hashed: &'a [&'a [u8]],
    pub(super) state: HashState,
    pub(super) rest: Option<WriteRest<'a>>,
}

/// Writes the part of a body its appending task did not hash.
pub(super) type WriteRest<'a> = &'a dyn Fn(&mut Vec<u8>);

impl Body<'_> {
    /// Roughly how long it is (`rest` is a statement's outcome: short).
    fn len_hint(&self) -> u64 {
        let rest = if self.rest.is_some() { 128 } else { 0 };
        self.hashed.iter().map(|p| p.len() as u64).sum::<u64>() + rest
    }
}

pub(super) struct Writer {
    pub(super) path: Option<PathBuf>,
    /// Held until the log is closed: the exclusive lock on `<file>.lock`.
    pub(super) _lock: Option<File>,
    pub(super) file: Option<ActiveFile>,
    pub(super) rotate_bytes: Option<u64>,
    pub(super) rotate_after: Option<Duration>,
    pub(super) fsync: Fsync,
    pub(super) hasher: Hasher,
    /// `{"v":2,"instance":…,`: the bytes every record starts with.
    pub(super) prefix: Vec<u8>,
    /// The hash state after `prefix`.
    pub(super) prefix_state: HashState,
    pub(super) ts_format: TsFormatter,
    pub(super) redaction: Redaction,
    /// Chain state: the last record written.
    pub(super) seq: u64,
    /// Its hash, in hex (bytes: what the seal copies into the next record).
    pub(super) last_hash: Vec<u8>,
    pub(super) last_ts: Timestamp,
    /// A header still to be written before any other record.
    pub(super) header: Option<Header>,
    /// Set after a failure that leaves durability unknown.
    pub(super) stopped: Option<String>,
    pub(super) sinks: Vec<(Box<dyn Sink>, bool)>,
    pub(super) failing: Arc<Health>,
    pub(super) buf: Vec<u8>,
    /// (seq, start, end) of each record in `buf`.
    pub(super) marks: Vec<(u64, usize, usize)>,
    pub(super) rotate_not_before: Option<Instant>,
    /// `audit_stop` is written: every later append fails with [`AuditError::Closed`].
    pub(super) closed: bool,
    /// Statement records sealed and not yet written (they are in `buf`), and failed
    /// group writes not yet reported to all their appends.
    pub(super) deferred: Deferred,
    pub(super) progress: Arc<Progress>,
}

/// Mirrors of [`Deferred`] for the lock-free check of an append that was written by
/// another task.
#[derive(Default)]
pub(super) struct Progress {
    /// Every ticket up to this one was written or failed.
    pub(super) written: AtomicU64,
    /// Tickets of failed group writes not yet claimed by their appends.
    pub(super) unclaimed: AtomicU64,
}

/// Deferred (group-committed) appends, numbered by ticket in sealing order. A ticket is
/// not a `seq`: after a failed write the chain continues from the last written record,
/// so a `seq` can be sealed twice, while a ticket is never reused.
#[derive(Default)]
pub(super) struct Deferred {
    /// The last ticket sealed.
    pub(super) sealed: u64,
    /// Every ticket up to this one was written or failed.
    pub(super) written: u64,
    /// Failed group writes: (first ticket, last ticket, tickets not yet claimed, error).
    /// Each append claims its result exactly once (when polled, waited for or dropped),
    /// so an entry lives only until every append of that write has seen the error.
    pub(super) failed: VecDeque<(u64, u64, u64, AuditError)>,
}

impl Deferred {
    /// The result of the append sealed as `ticket` (at most once per ticket).
    pub(super) fn claim(&mut self, ticket: u64, progress: &Progress) -> Result<(), AuditError> {
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

impl Writer {
    /// The chain's last hash, as text.
    pub(super) fn last_hash_hex(&self) -> String {
        String::from_utf8_lossy(&self.last_hash).into_owned()
    }

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
            opened_ts: Timestamp::now(),
        });
        if self.fsync == Fsync::Batch {
            sync_dir(path).map_err(|e| AuditError::io(path, "sync directory", &e))?;
        }
        Ok(())
    }

    /// Writes the pending header (`audit_start` or `rotate`), if any.
    pub(super) fn ensure_header(&mut self) -> Result<(), AuditError> {
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

    /// Writes a due header and rotates a due file before `body` is sealed; a failure is
    /// remembered (`failing`) and returned.
    fn prepare_for(&mut self, body: &Body<'_>, now: Timestamp) -> Result<(), AuditError> {
        let prepared = self
            .ensure_header()
            .and_then(|()| self.rotate_if_due(body.len_hint(), Some(now)));
        if let Err(e) = &prepared {
            self.failing.set(Some(e));
        }
        prepared
    }

    /// Seals `body` after any records sealed and not yet written, to be written by
    /// [`Writer::flush_pending`]; returns (ticket, seq). A due header or rotation first
    /// writes what is pending, so records never cross a file boundary out of order.
    pub(super) fn seal_deferred(&mut self, body: &Body<'_>) -> Result<(u64, u64), AuditError> {
        let now = Timestamp::now();
        self.prepare_for(body, now)?;
        let seq = self.marks.last().map_or(self.seq, |m| m.0) + 1;
        self.seal(body, seq, now);
        self.deferred.sealed += 1;
        Ok((self.deferred.sealed, seq))
    }

    /// Writes every sealed record not yet written, with one write. On failure nothing
    /// of them stays in the file or the chain (see `commit`), and each of their appends
    /// gets the error.
    pub(super) fn flush_pending(&mut self) {
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

    /// Seals and commits one record of the log's own on its own; returns its seq.
    fn write_one(&mut self, body: &[u8]) -> Result<u64, AuditError> {
        self.flush_pending();
        let seq = self.seq + 1;
        let mut state = self.prefix_state;
        state.update(body);
        let body = Body {
            hashed: &[body],
            state,
            rest: None,
        };
        self.seal(&body, seq, Timestamp::now());
        let res = self.commit(seq).map(|()| seq);
        self.buf.clear();
        self.marks.clear();
        res
    }

    /// Writes one record now (an inline append): after the pending header, a due
    /// rotation and any records sealed before it.
    pub(super) fn write_now(&mut self, body: &Body<'_>) -> Result<Receipt, AuditError> {
        let now = Timestamp::now();
        self.flush_pending();
        self.prepare_for(body, now)?;
        let seq = self.seq + 1;
        self.seal(body, seq, now);
        let res = self.commit(seq);
        self.buf.clear();
        self.marks.clear();
        match res {
            Ok(()) => {
                if self.failing.failing.load(Ordering::Relaxed) {
                    self.failing.set(None);
                }
                Ok(Receipt {
                    seq,
                    recorded: true,
                })
            }
            Err(e) => {
                self.failing.set(Some(&e));
                Err(e)
            }
        }
    }

    /// Appends one framed record to `buf`, chained to the last record in `buf` (or, for
    /// the first, to the chain's last record): `prefix`, the body, then
    /// `,"seq":N,"ts":"…","prev_hash":"…"` and the hash. Only what `body.state` has not
    /// hashed yet (the body's `rest` and the frame) is hashed here, in one call. `now` is
    /// the clock as the append read it.
    fn seal(&mut self, body: &Body<'_>, seq: u64, now: Timestamp) {
        // Keep ts non-decreasing along the chain even if the clock steps back.
        let ts = if now < self.last_ts {
            self.last_ts
        } else {
            now
        };
        self.last_ts = ts;
        let start = self.buf.len();
        let b = &mut self.buf;
        b.reserve(self.prefix.len() + body.len_hint() as usize + 256);
        b.extend_from_slice(&self.prefix);
        for part in body.hashed {
            b.extend_from_slice(part);
        }
        let unhashed = b.len();
        if let Some(rest) = body.rest {
            rest(b);
        }
        // Written by hand rather than with `write!`: core::fmt was most of the frame's cost.
        b.extend_from_slice(b",\"seq\":");
        push_decimal(b, seq);
        b.extend_from_slice(b",\"ts\":\"");
        self.ts_format.push(ts, b);
        b.extend_from_slice(b"\",\"prev_hash\":\"");
        match self.marks.last() {
            // The previous record's hash, as it was just written.
            Some(&(_, _, end)) => b.extend_from_within(hash_hex(end)),
            None => b.extend_from_slice(&self.last_hash),
        }
        // The hashed line ends with the `}` the hash member is cut before.
        b.extend_from_slice(b"\"}");
        let mut state = body.state;
        state.update(&b[unhashed..]);
        b.pop();
        let digest = self.hasher.finish(state);
        // A state that was not the prefix and body's would break the chain: the tests
        // check every record against the whole-line hash.
        debug_assert_eq!(
            digest,
            self.hasher.hash(&b[start..]),
            "hash state of another body"
        );
        b.extend_from_slice(b",\"hash\":\"");
        b.extend_from_slice(&chain::hex_digest(&digest));
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
            self.last_hash.clear();
            self.last_hash.extend_from_slice(&self.buf[hash_hex(end)]);
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

    pub(super) fn time_until_rotation(&self) -> Option<Duration> {
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
    /// `now` is the clock an append read (`None`: the writer thread's timer, which
    /// measures the age with the monotonic clock).
    pub(super) fn rotate_if_due(
        &mut self,
        next_len: u64,
        now: Option<Timestamp>,
    ) -> Result<(), AuditError> {
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
        let by_time = self.rotate_after.is_some_and(|age| match now {
            Some(ts) => {
                let age_us = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
                ts.0.saturating_sub(f.opened_ts.0) >= age_us
            }
            None => f.opened.elapsed() >= age,
        }) && self.rotate_not_before.is_none_or(|t| Instant::now() >= t);
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
                last_hash: self.last_hash_hex(),
            }),
        });
        self.ensure_header()
    }

    /// Seals and commits `items` in order (in several writes only when a size rotation
    /// falls inside them) and reports each item's result to `done`.
    pub(super) fn process<B: AsRef<[u8]>, R>(
        &mut self,
        items: impl IntoIterator<Item = (B, HashState, R)>,
        mut done: impl FnMut(R, Result<Receipt, AuditError>),
    ) {
        self.flush_pending();
        let mut pending = items.into_iter().peekable();
        // Zero-sized for inline appends, so no allocation there.
        let mut taken: Vec<R> = Vec::new();
        while let Some(first_len) = pending.peek().map(|(b, _, _)| b.as_ref().len() as u64) {
            let prepared = self
                .ensure_header()
                .and_then(|()| self.rotate_if_due(first_len, None));
            if let Err(e) = prepared {
                self.failing.set(Some(&e));
                for (_, _, r) in pending.by_ref() {
                    done(r, Err(e.clone()));
                }
                break;
            }
            // Seal as many as fit in the current file (at least one).
            let mut seq = self.seq;
            let base = self.file.as_ref().map_or(0, |f| f.len);
            while let Some((b, state, r)) = pending.next_if(|(b, _, _)| {
                taken.is_empty()
                    || self.rotate_bytes.is_none_or(|max| {
                        base + (self.buf.len() + b.as_ref().len()) as u64 + FRAME_OVERHEAD <= max
                    })
            }) {
                seq += 1;
                let body = Body {
                    hashed: &[b.as_ref()],
                    state,
                    rest: None,
                };
                self.seal(&body, seq, Timestamp::now());
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

    pub(super) fn stop(&mut self, reason: &str, reply: Option<Reply>) {
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
pub(super) fn lock_writer(m: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    m.lock().unwrap_or_else(|p| {
        let mut w = p.into_inner();
        if w.stopped.is_none() {
            w.stopped = Some("the audit writer panicked".to_string());
        }
        w
    })
}

fn sync_dir(file: &Path) -> io::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
