//! `pgward audit verify`: checks that files form one unbroken chain and says exactly which
//! record breaks it and how.
//!
//! Each record is checked on its own (its hash over its own bytes: *changed*), then the
//! records are checked together by `seq`: each `prev_hash` must be the hash of the record
//! with the previous `seq` (else that record was changed and re-hashed), `seq` must grow
//! along the files (*reordered*, *duplicate*), and every `seq` between the first and last
//! must be present (*missing*; *truncated* when the gap is the end of a file that the next
//! file's `predecessor` says was longer). A line without a newline at the end of a file is
//! a *torn tail* left by a crash: reported, but not a problem, because the writer never
//! acknowledged it and the next file continues from the last complete record.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::chain::{self, Hasher, GENESIS};
use crate::event::Predecessor;
use crate::finding::{Finding, FindingKind};
use crate::read::{read_records, ReadItem};
use crate::witness::{read_witness, Witness};
use crate::AuditError;

/// The result of [`verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Files checked, in order.
    pub files: Vec<PathBuf>,
    /// Records read.
    pub records: u64,
    /// Lowest and highest `seq` seen.
    pub seq_range: Option<(u64, u64)>,
    /// Every finding, in file order then by kind.
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    /// True when no finding is a problem (torn tails and notes are allowed).
    pub fn is_ok(&self) -> bool {
        !self.findings.iter().any(|f| f.kind.is_problem())
    }

    /// Findings of one kind.
    pub fn of_kind(&self, kind: FindingKind) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.kind == kind)
    }
}

#[derive(Deserialize)]
struct ChainFields {
    seq: u64,
    event: String,
    prev_hash: String,
    hash: String,
    #[serde(default)]
    predecessor: Option<Predecessor>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    key_id: Option<String>,
}

struct Entry {
    file: usize,
    line: u64,
    seq: u64,
    event: String,
    prev_hash: String,
    hash: String,
    predecessor: Option<Predecessor>,
}

/// Verifies `files` (oldest first) as one chain; `key` for HMAC-keyed logs.
pub fn verify(files: &[PathBuf], key: Option<&[u8]>) -> io::Result<VerifyReport> {
    verify_entries(files, key).map(|(report, _)| report)
}

/// [`verify`], then holds the files against a witness ([`crate::read_witness`]): TRUNCATED
/// when they end before its newest checkpoint (with the first missing `seq`), CHANGED when a
/// checkpointed record differs.
pub fn verify_with_witness(
    files: &[PathBuf],
    key: Option<&[u8]>,
    witness: &Witness,
) -> io::Result<VerifyReport> {
    let (mut report, entries) = verify_entries(files, key)?;
    check_witness(files, &entries, witness, &mut report);
    Ok(report)
}

fn verify_entries(files: &[PathBuf], key: Option<&[u8]>) -> io::Result<(VerifyReport, Vec<Entry>)> {
    let keyed = key.map(|k| Hasher::new(Some(k)));
    let plain = Hasher::Sha256;
    let mut report = VerifyReport {
        files: files.to_vec(),
        ..VerifyReport::default()
    };
    let mut entries: Vec<Entry> = Vec::new();
    // The algorithm announced by the latest header; records in between follow it.
    let mut alg = String::from("sha256");
    let mut key_required_reported = false;
    for (fi, path) in files.iter().enumerate() {
        let mut push = |kind, line, seq, message: String| {
            report.findings.push(Finding {
                kind,
                file: path.clone(),
                line,
                seq,
                message,
            })
        };
        for item in read_records(path)? {
            match item? {
                ReadItem::TornTail { line, bytes } => push(
                    FindingKind::TornTail,
                    Some(line),
                    None,
                    format!(
                        "the file ends with a partial line of {bytes} bytes (a write cut short by a crash); \
                         it was never acknowledged and is not part of the chain"
                    ),
                ),
                ReadItem::Malformed { line, error, .. } => push(
                    FindingKind::Malformed,
                    Some(line),
                    None,
                    format!("not a valid record: {error}"),
                ),
                ReadItem::Record { line, raw, .. } => {
                    let c: ChainFields = match serde_json::from_slice(&raw) {
                        Ok(c) => c,
                        Err(e) => {
                            push(FindingKind::Malformed, Some(line), None, e.to_string());
                            continue;
                        }
                    };
                    let Some((body, stored)) = chain::split_line(&raw) else {
                        push(
                            FindingKind::Malformed,
                            Some(line),
                            Some(c.seq),
                            "the line does not end with its hash member".to_string(),
                        );
                        continue;
                    };
                    if let Some(a) = &c.alg {
                        alg.clone_from(a);
                    }
                    let hasher = match (&keyed, alg.as_str()) {
                        (Some(k), _) => {
                            if c.alg.is_some() && c.key_id.as_deref() != k.key_id() {
                                push(
                                    FindingKind::Key,
                                    Some(line),
                                    Some(c.seq),
                                    format!(
                                        "this file announces key id {} but the given key's id is {} \
                                         (another key, or the chain was rewritten without a key)",
                                        c.key_id.as_deref().unwrap_or("none"),
                                        k.key_id().unwrap_or("")
                                    ),
                                );
                            }
                            Some(k)
                        }
                        (None, "sha256") => Some(&plain),
                        (None, other) => {
                            if !key_required_reported {
                                key_required_reported = true;
                                push(
                                    FindingKind::Key,
                                    Some(line),
                                    Some(c.seq),
                                    format!(
                                        "the chain is keyed ({other}); give the HMAC key to check record hashes \
                                         (links, order and completeness were still checked)"
                                    ),
                                );
                            }
                            None
                        }
                    };
                    if let Some(h) = hasher {
                        let mut computed = String::with_capacity(64);
                        chain::push_hex(&mut computed, &h.hash(body));
                        if computed != stored {
                            push(
                                FindingKind::Changed,
                                Some(line),
                                Some(c.seq),
                                "the record does not match its hash: its content was altered after it was written"
                                    .to_string(),
                            );
                        }
                    }
                    report.records += 1;
                    entries.push(Entry {
                        file: fi,
                        line,
                        seq: c.seq,
                        event: c.event,
                        prev_hash: c.prev_hash,
                        hash: c.hash,
                        predecessor: c.predecessor,
                    });
                }
            }
        }
    }
    check_chain(files, &entries, &mut report);
    Ok((report, entries))
}

fn check_chain(files: &[PathBuf], entries: &[Entry], report: &mut VerifyReport) {
    let mut out = Vec::new();
    let at = |e: &Entry| format!("{}:{}", files[e.file].display(), e.line);
    let mut by_seq: HashMap<u64, usize> = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if let Some(&j) = by_seq.get(&e.seq) {
            let same = entries[j].hash == e.hash;
            out.push(finding(
                files,
                FindingKind::Duplicate,
                e,
                if same {
                    format!(
                        "the same record appears again (first at {})",
                        at(&entries[j])
                    )
                } else {
                    format!("a different record with this seq is at {}", at(&entries[j]))
                },
            ));
        } else {
            by_seq.insert(e.seq, i);
        }
    }
    // Order along the files.
    for w in entries.windows(2) {
        if w[1].seq < w[0].seq {
            out.push(finding(
                files,
                FindingKind::Reordered,
                &w[1],
                format!(
                    "appears after seq {} ({}): records were moved",
                    w[0].seq,
                    at(&w[0])
                ),
            ));
        }
    }
    // Links.
    let min = entries.iter().map(|e| e.seq).min();
    for e in entries {
        match e.seq.checked_sub(1).and_then(|p| by_seq.get(&p)) {
            Some(&p) => {
                let prev = &entries[p];
                if e.prev_hash != prev.hash {
                    out.push(finding(
                        files,
                        FindingKind::Changed,
                        prev,
                        format!(
                            "the next record ({}) names prev_hash {} but this record's hash is {}: \
                             it was altered and re-hashed (or replaced)",
                            at(e),
                            short(&e.prev_hash),
                            short(&prev.hash)
                        ),
                    ));
                }
            }
            None if Some(e.seq) == min => {
                if e.prev_hash == GENESIS {
                    if e.seq != 1 {
                        out.push(finding(
                            files,
                            FindingKind::Changed,
                            e,
                            "only seq 1 may start a chain (prev_hash all zeros)".to_string(),
                        ));
                    }
                } else {
                    let from = e
                        .predecessor
                        .as_ref()
                        .map(|p| format!(" it continues {}", p.file))
                        .unwrap_or_default();
                    out.push(finding(
                        files,
                        FindingKind::Note,
                        e,
                        format!(
                            "the files given start mid-chain;{from} (earlier files not checked)"
                        ),
                    ));
                }
            }
            None => {} // a gap: reported below
        }
    }
    // Gaps.
    let mut seqs: Vec<u64> = by_seq.keys().copied().collect();
    seqs.sort_unstable();
    for w in seqs.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b == a + 1 {
            continue;
        }
        let ea = &entries[by_seq[&a]];
        let eb = &entries[by_seq[&b]];
        let is_last_of_file = entries
            .get(by_seq[&a] + 1)
            .is_none_or(|n| n.file != ea.file);
        match &eb.predecessor {
            Some(p) if p.file != file_name(&files[ea.file]) && !files.iter().any(|f| file_name(f) == p.file) => {
                out.push(finding(
                    files,
                    FindingKind::Missing,
                    eb,
                    format!(
                        "file {} (records {}..={}) is missing: this file names it as its predecessor",
                        p.file,
                        a + 1,
                        b - 1
                    ),
                ));
            }
            Some(p) if is_last_of_file && p.last_seq > a => out.push(Finding {
                kind: FindingKind::Truncated,
                file: files[ea.file].clone(),
                line: Some(ea.line),
                seq: Some(a),
                message: format!(
                    "the file ends at seq {a}, but {} says it ended at seq {}: records {}..={} were cut off its end",
                    at(eb),
                    p.last_seq,
                    a + 1,
                    p.last_seq
                ),
            }),
            _ => out.push(finding(
                files,
                FindingKind::Missing,
                eb,
                if b - a == 2 {
                    format!("record seq {} is missing (between {} and this record)", a + 1, at(ea))
                } else {
                    format!(
                        "records seq {}..={} are missing (between {} and this record)",
                        a + 1,
                        b - 1,
                        at(ea)
                    )
                },
            )),
        }
    }
    if let (Some(first), Some(last)) = (seqs.first(), seqs.last()) {
        report.seq_range = Some((*first, *last));
    }
    if let Some(last) = entries.last() {
        if last.event != "audit_stop" {
            out.push(finding(
                files,
                FindingKind::Note,
                last,
                "the last record is not audit_stop: the writer is still running, stopped without closing, \
                 or the end of the last file was cut off (only a later file or an external copy can tell)"
                    .to_string(),
            ));
        }
    }
    report.findings.extend(out);
}

/// Holds the files' records against the witness: TRUNCATED when they end before its
/// newest checkpoint, CHANGED when a checkpointed record differs.
fn check_witness(
    files: &[PathBuf],
    entries: &[Entry],
    witness: &Witness,
    report: &mut VerifyReport,
) {
    report.findings.extend(witness.findings.iter().cloned());
    let Some(head) = witness.head() else {
        report.findings.push(Finding {
            kind: FindingKind::Witness,
            file: witness.path.clone(),
            line: None,
            seq: None,
            message: "the witness holds no valid checkpoint".to_string(),
        });
        return;
    };
    let by_seq: std::collections::HashMap<u64, &Entry> =
        entries.iter().map(|e| (e.seq, e)).collect();
    let last = entries.iter().map(|e| e.seq).max();
    let first = entries.iter().map(|e| e.seq).min();
    let at = |e: &Entry| format!("{}:{}", files[e.file].display(), e.line);
    match last {
        Some(last) if head.seq > last => {
            let e = entries.iter().max_by_key(|e| e.seq);
            report.findings.push(Finding {
                kind: FindingKind::Truncated,
                file: e.map_or_else(|| witness.path.clone(), |e| files[e.file].clone()),
                line: e.map(|e| e.line),
                seq: Some(last + 1),
                message: format!(
                    "the files end at seq {last}, but the witness {} recorded seq {} at {}: records {}..={} \
                     were cut off the end (first missing seq {})",
                    witness.path.display(),
                    head.seq,
                    head.ts,
                    last + 1,
                    head.seq,
                    last + 1
                ),
            });
        }
        None => report.findings.push(Finding {
            kind: FindingKind::Truncated,
            file: witness.path.clone(),
            line: None,
            seq: Some(1),
            message: format!(
                "the files hold no records, but the witness recorded seq {} at {}",
                head.seq, head.ts
            ),
        }),
        _ => {}
    }
    // Every checkpoint the files cover must name the record they hold.
    for c in &witness.checkpoints {
        if let Some(e) = by_seq.get(&c.seq) {
            if e.hash != c.hash {
                report.findings.push(Finding {
                    kind: FindingKind::Changed,
                    file: files[e.file].clone(),
                    line: Some(e.line),
                    seq: Some(c.seq),
                    message: format!(
                        "the witness recorded seq {} with hash {} at {}, but {} holds hash {}: \
                         the chain was rewritten from this record or earlier",
                        c.seq,
                        c.hash.get(..12).unwrap_or(&c.hash),
                        c.ts,
                        at(e),
                        e.hash.get(..12).unwrap_or(&e.hash)
                    ),
                });
            }
        }
    }
    let covered = first.is_some_and(|f| head.seq >= f);
    report.findings.push(Finding {
        kind: FindingKind::Note,
        file: witness.path.clone(),
        line: None,
        seq: Some(head.seq),
        message: format!(
            "witness: {} checkpoints, the newest at seq {} ({}){}",
            witness.checkpoints.len(),
            head.seq,
            head.ts,
            if covered {
                ""
            } else {
                "; it is older than the files given, so it says nothing about them"
            }
        ),
    });
}

fn finding(files: &[PathBuf], kind: FindingKind, e: &Entry, message: String) -> Finding {
    Finding {
        kind,
        file: files[e.file].clone(),
        line: Some(e.line),
        seq: Some(e.seq),
        message,
    }
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

fn file_name(p: &Path) -> String {
    crate::files::file_name(p)
}

/// Arguments of `pgward audit verify`.
#[derive(Debug, Clone, Default)]
pub struct VerifyArgs {
    /// Files in chain order (e.g. from [`crate::log_files`]).
    pub files: Vec<PathBuf>,
    /// HMAC key file for keyed logs.
    pub key_file: Option<PathBuf>,
    /// A witness file (`[audit] witness_file`) to hold the files against.
    pub witness: Option<PathBuf>,
    /// The witness's key file (`[audit] witness_key_file`); required with `witness`.
    pub witness_key_file: Option<PathBuf>,
}

/// Runs `pgward audit verify`: prints every finding and a summary line. The CLI exits
/// non-zero unless `report.is_ok()`.
pub fn run_verify(args: &VerifyArgs, out: &mut impl Write) -> Result<VerifyReport, AuditError> {
    let key = args
        .key_file
        .as_deref()
        .map(crate::config::read_key_file)
        .transpose()?;
    if args.files.is_empty() {
        return Err(AuditError::Config("no audit files to verify".to_string()));
    }
    let witness = match (&args.witness, &args.witness_key_file) {
        (Some(w), Some(k)) => Some(read_witness(w, &crate::config::read_key_file(k)?)?),
        (Some(_), None) => {
            return Err(AuditError::Config(
                "--witness needs the witness key (--witness-key-file)".to_string(),
            ))
        }
        (None, _) => None,
    };
    let report = match &witness {
        Some(w) => verify_with_witness(&args.files, key.as_deref(), w),
        None => verify(&args.files, key.as_deref()),
    }
    .map_err(|e| AuditError::io(Path::new("(audit files)"), "read", &e))?;
    let w = |out: &mut dyn Write, s: String| {
        writeln!(out, "{s}").map_err(|e| AuditError::io(Path::new("(output)"), "write", &e))
    };
    for f in &report.findings {
        w(out, f.to_string())?;
    }
    let problems = report
        .findings
        .iter()
        .filter(|f| f.kind.is_problem())
        .count();
    let range = report
        .seq_range
        .map(|(a, b)| format!(", seq {a}..={b}"))
        .unwrap_or_default();
    w(
        out,
        if problems == 0 {
            format!(
                "OK: {} records in {} files{range}: the chain is intact",
                report.records,
                report.files.len()
            )
        } else {
            format!(
                "FAILED: {problems} problems in {} records in {} files{range}",
                report.records,
                report.files.len()
            )
        },
    )?;
    Ok(report)
}
