//! The witness: periodic, signed checkpoints of the chain head, kept apart from the log.
//!
//! A log cut at a line boundary looks like a log whose writer crashed: every remaining record
//! still verifies, and only the missing `audit_stop` hints at it. The witness settles it. Every
//! `witness_interval_secs` (and when the log closes) pgward appends one line to
//! `witness_file` naming the last record written to the log — its `seq` and `hash` — with the
//! time, authenticated by HMAC-SHA-256 under `witness_key_file`:
//!
//! ```text
//! {"v":1,"event":"checkpoint","seq":42,"hash":"<64 hex>","ts":"…","instance":"pgward-0","log":"pgward.jsonl","key_id":"…","mac":"<64 hex>"}
//! ```
//!
//! `mac` is computed as the chain's `hash` is: over the line up to `,"mac":"` plus `}`.
//! `pgward audit verify --witness` then reports the log TRUNCATED (with the first missing
//! `seq`) when the files end before the newest checkpoint, and CHANGED when a checkpointed
//! record's hash differs from the one in the files (the chain was rewritten from an earlier
//! point).
//!
//! What it guarantees, and what not (docs/audit.md): records older than the newest checkpoint
//! cannot be cut off the log without detection by someone who cannot also cut the witness
//! file — so the witness belongs where the log's own storage cannot reach it (another volume
//! or host, another owner, an append-only file) — and checkpoints cannot be forged or edited
//! without the key. Records written after the newest checkpoint (at most one interval) are
//! not covered: that is the window.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::chain::{self, Hasher};
use crate::finding::{Finding, FindingKind};
use crate::time::Timestamp;
use crate::AuditError;

/// Longest witness line read back (a checkpoint is about 300 bytes).
const MAX_LINE: usize = 4096;

/// Appends checkpoints to the witness file.
pub(crate) struct WitnessWriter {
    path: PathBuf,
    file: File,
    hasher: Hasher,
    instance_json: String,
    log_json: String,
    /// The last checkpoint written (nothing new: nothing is written).
    last_seq: Option<u64>,
}

impl WitnessWriter {
    /// Opens (or creates) the witness file for appending.
    pub(crate) fn open(
        path: &Path,
        key: &[u8],
        instance: &str,
        log: &Path,
    ) -> Result<WitnessWriter, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, "create", &e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| AuditError::io(path, "open", &e))?;
        let json = |s: &str| {
            serde_json::to_string(s).map_err(|e| AuditError::Config(format!("witness: {e}")))
        };
        Ok(WitnessWriter {
            path: path.to_path_buf(),
            file,
            hasher: Hasher::new(Some(key)),
            instance_json: json(instance)?,
            log_json: json(&crate::files::file_name(log))?,
            last_seq: None,
        })
    }

    /// The line for a checkpoint of (`seq`, `hash`) at `ts`, with its newline.
    fn line(&self, seq: u64, hash: &str, ts: Timestamp) -> Vec<u8> {
        let mut b = Vec::with_capacity(320);
        b.extend_from_slice(b"{\"v\":1,\"event\":\"checkpoint\",\"seq\":");
        crate::json::push_decimal(&mut b, seq);
        b.extend_from_slice(b",\"hash\":\"");
        b.extend_from_slice(hash.as_bytes());
        b.extend_from_slice(b"\",\"ts\":\"");
        ts.push_rfc3339(&mut b);
        b.extend_from_slice(b"\",\"instance\":");
        b.extend_from_slice(self.instance_json.as_bytes());
        b.extend_from_slice(b",\"log\":");
        b.extend_from_slice(self.log_json.as_bytes());
        b.extend_from_slice(b",\"key_id\":\"");
        b.extend_from_slice(self.hasher.key_id().unwrap_or("").as_bytes());
        b.push(b'"');
        let mac = self.hasher.hash(&b);
        b.extend_from_slice(b",\"mac\":\"");
        b.extend_from_slice(&chain::hex_digest(&mac));
        b.extend_from_slice(b"\"}\n");
        b
    }

    /// Records the head (`seq`, `hash`) unless it was the last one recorded. Made durable
    /// (fsync) before returning: a checkpoint is rare and must outlive a crash.
    pub(crate) fn checkpoint(&mut self, seq: u64, hash: &str) -> Result<bool, AuditError> {
        if seq == 0 || self.last_seq == Some(seq) {
            return Ok(false);
        }
        let line = self.line(seq, hash, Timestamp::now());
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| AuditError::io(&self.path, "write", &e))?;
        self.last_seq = Some(seq);
        Ok(true)
    }
}

/// The chain head: the last record written to the log, as (seq, hash).
pub(crate) type Head = Box<dyn Fn() -> (u64, String) + Send>;

/// The checkpoint thread: a checkpoint every `every`, and a last one when `stop` fires or
/// every sender is gone (the log closed or was dropped).
pub(crate) fn spawn(
    mut writer: WitnessWriter,
    head: Head,
    every: Duration,
) -> Result<(mpsc::Sender<()>, std::thread::JoinHandle<()>), AuditError> {
    let (tx, rx) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("pgward-witness".to_string())
        .spawn(move || {
            // Failures are logged once per change of error, not every interval.
            let mut failing: Option<String> = None;
            let mut record = |writer: &mut WitnessWriter| {
                let (seq, hash) = head();
                match writer.checkpoint(seq, &hash) {
                    Ok(_) => {
                        if failing.take().is_some() {
                            tracing::info!(file = %writer.path.display(), "audit witness writes again");
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        if failing.as_deref() != Some(msg.as_str()) {
                            tracing::error!(error = %msg, "audit witness checkpoint failed: truncation of the log's tail is not witnessed while this lasts");
                            failing = Some(msg);
                        }
                    }
                }
            };
            // The head at start (audit_start), so even a short-lived log is witnessed.
            record(&mut writer);
            loop {
                match rx.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => record(&mut writer),
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                        record(&mut writer);
                        return;
                    }
                }
            }
        })
        .map_err(|e| AuditError::Config(format!("cannot start the audit witness: {e}")))?;
    Ok((tx, handle))
}

/// The running checkpoint thread, owned by the log.
pub(crate) struct Running {
    stop: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Running {
    pub(crate) fn new(stop: mpsc::Sender<()>, thread: std::thread::JoinHandle<()>) -> Arc<Self> {
        Arc::new(Running {
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Writes the last checkpoint (after `audit_stop`) and stops the thread.
    pub(crate) fn finish(&self) {
        if let Some(tx) = self.stop.lock().ok().and_then(|mut s| s.take()) {
            let _ = tx.send(());
        }
        if let Some(h) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = h.join();
        }
    }
}

/// One checkpoint read back.
#[derive(Debug, Clone, Deserialize)]
pub struct Checkpoint {
    /// `seq` of the last record the log held.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// When the checkpoint was taken.
    pub ts: String,
    /// pgward instance.
    #[serde(default)]
    pub instance: Option<String>,
    /// The log's active file name.
    #[serde(default)]
    pub log: Option<String>,
}

/// A witness file read back: its valid checkpoints and the problems found in it.
#[derive(Debug, Default)]
pub struct Witness {
    /// The file.
    pub path: PathBuf,
    /// Checkpoints whose MAC verifies, in file order.
    pub checkpoints: Vec<Checkpoint>,
    /// Lines that are not valid checkpoints (edited, forged, another key), as findings.
    pub findings: Vec<Finding>,
}

impl Witness {
    /// The newest checkpoint (highest `seq`).
    pub fn head(&self) -> Option<&Checkpoint> {
        self.checkpoints.iter().max_by_key(|c| c.seq)
    }
}

/// Reads and authenticates a witness file with `key`. A missing or unreadable file is an
/// error: an auditor who expects a witness must not get a silent pass without one.
pub fn read_witness(path: &Path, key: &[u8]) -> Result<Witness, AuditError> {
    let hasher = Hasher::new(Some(key));
    let file = File::open(path).map_err(|e| AuditError::io(path, "open", &e))?;
    let mut w = Witness {
        path: path.to_path_buf(),
        ..Witness::default()
    };
    let mut push = |kind, line: u64, seq, message: String| {
        w.findings.push(Finding {
            kind,
            file: path.to_path_buf(),
            line: Some(line),
            seq,
            message,
        })
    };
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut n = 0u64;
    let mut highest: Option<u64> = None;
    loop {
        buf.clear();
        let read = Read::by_ref(&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| AuditError::io(path, "read", &e))?;
        if read == 0 {
            break;
        }
        n += 1;
        let complete = buf.last() == Some(&b'\n');
        if !complete {
            if read > MAX_LINE {
                push(
                    FindingKind::Witness,
                    n,
                    None,
                    format!("a line longer than {MAX_LINE} bytes is not a checkpoint"),
                );
                // Skip the rest of that line.
                let mut sink = Vec::new();
                reader
                    .read_until(b'\n', &mut sink)
                    .map_err(|e| AuditError::io(path, "read", &e))?;
                continue;
            }
            // A checkpoint cut short by a crash was never complete: not a checkpoint.
            break;
        }
        let line = &buf[..buf.len() - 1];
        let Some(body) = split_mac(line).and_then(|(body, mac)| {
            let mut computed = String::with_capacity(64);
            chain::push_hex(&mut computed, &hasher.hash(body));
            (computed == mac).then_some(body)
        }) else {
            push(
                FindingKind::Witness,
                n,
                None,
                "not a checkpoint authenticated by the given witness key (edited, forged, or another key)"
                    .to_string(),
            );
            continue;
        };
        let mut full = body.to_vec();
        full.push(b'}');
        match serde_json::from_slice::<Checkpoint>(&full) {
            Ok(c) => {
                if highest.is_some_and(|h| c.seq < h) {
                    push(
                        FindingKind::Witness,
                        n,
                        Some(c.seq),
                        format!(
                            "checkpoint seq {} follows one of seq {}: the witness was rearranged",
                            c.seq,
                            highest.unwrap_or(0)
                        ),
                    );
                }
                highest = Some(highest.map_or(c.seq, |h| h.max(c.seq)));
                w.checkpoints.push(c);
            }
            Err(e) => push(
                FindingKind::Witness,
                n,
                None,
                format!("not a checkpoint: {e}"),
            ),
        }
    }
    Ok(w)
}

/// Splits a witness line into the authenticated part and its hex MAC.
fn split_mac(line: &[u8]) -> Option<(&[u8], &str)> {
    const SUFFIX: usize = 8 + 64 + 2; // ,"mac":" + hex + "}
    if line.len() < SUFFIX + 2 {
        return None;
    }
    let (body, suffix) = line.split_at(line.len() - SUFFIX);
    let hex = suffix.strip_prefix(b",\"mac\":\"")?.strip_suffix(b"\"}")?;
    if !hex
        .iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    {
        return None;
    }
    Some((body, std::str::from_utf8(hex).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-witness";

    #[test]
    fn checkpoints_round_trip_and_edits_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w/witness.jsonl");
        let mut w =
            WitnessWriter::open(&path, KEY, "pgward-0", Path::new("/x/pgward.jsonl")).unwrap();
        let h1 = "a".repeat(64);
        let h2 = "b".repeat(64);
        assert!(w.checkpoint(5, &h1).unwrap());
        assert!(
            !w.checkpoint(5, &h1).unwrap(),
            "nothing new, nothing written"
        );
        assert!(!w.checkpoint(0, &h1).unwrap(), "an empty log has no head");
        assert!(w.checkpoint(9, &h2).unwrap());
        let read = read_witness(&path, KEY).unwrap();
        assert!(read.findings.is_empty(), "{:?}", read.findings);
        assert_eq!(read.checkpoints.len(), 2);
        let head = read.head().unwrap();
        assert_eq!((head.seq, head.hash.as_str()), (9, h2.as_str()));
        assert_eq!(head.log.as_deref(), Some("pgward.jsonl"));

        // Another key: nothing authenticates.
        let other = read_witness(&path, b"another key, long enough to be accepted!").unwrap();
        assert!(other.checkpoints.is_empty());
        assert_eq!(other.findings.len(), 2);

        // An edited seq (lowering the head to hide a truncation) breaks its MAC.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"seq\":9", "\"seq\":6")).unwrap();
        let edited = read_witness(&path, KEY).unwrap();
        assert_eq!(edited.checkpoints.len(), 1);
        assert_eq!(edited.findings.len(), 1);
        assert_eq!(edited.findings[0].line, Some(2));

        // A partial last line (a crash mid-write) is not a checkpoint and not a problem.
        std::fs::write(&path, format!("{}{{\"v\":1,\"seq\":", text)).unwrap();
        let torn = read_witness(&path, KEY).unwrap();
        assert!(torn.findings.is_empty());
        assert_eq!(torn.checkpoints.len(), 2);

        assert!(read_witness(&dir.path().join("absent"), KEY).is_err());
    }
}
