//! What `pgward audit verify` reports: one [`Finding`] per break or notice, located as
//! precisely as possible. Its own module because two checks produce findings: the chain
//! (`verify.rs`) and the witness file as it is read (`witness.rs`).

use std::fmt;
use std::path::PathBuf;

/// What kind of break (or notice) a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FindingKind {
    /// A record's content does not match its hash, or a record was altered and re-hashed
    /// (the next record's `prev_hash` no longer matches).
    Changed,
    /// Records are absent (a `seq` gap), including a deleted file.
    Missing,
    /// A record appears after a record with a higher `seq`.
    Reordered,
    /// The same `seq` appears twice.
    Duplicate,
    /// A file ends before the record the next file names as its predecessor's last.
    Truncated,
    /// A complete line that is not a valid record.
    Malformed,
    /// The chain is keyed (HMAC) and no key was given, or records name another key.
    Key,
    /// A file ends with a partial line (crash during a write). Not a problem.
    TornTail,
    /// A line of the witness file is not a checkpoint authenticated by the witness key
    /// (edited, forged, another key), or the witness holds none.
    Witness,
    /// Something an auditor should know that is not a break (the files start mid-chain,
    /// the last file has no `audit_stop`).
    Note,
}

impl FindingKind {
    /// Whether this finding means the files are not a complete, unaltered log.
    pub fn is_problem(self) -> bool {
        !matches!(self, FindingKind::TornTail | FindingKind::Note)
    }

    fn label(self) -> &'static str {
        match self {
            FindingKind::Changed => "CHANGED",
            FindingKind::Missing => "MISSING",
            FindingKind::Reordered => "REORDERED",
            FindingKind::Duplicate => "DUPLICATE",
            FindingKind::Truncated => "TRUNCATED",
            FindingKind::Malformed => "MALFORMED",
            FindingKind::Key => "KEY",
            FindingKind::TornTail => "TORN TAIL",
            FindingKind::Witness => "WITNESS",
            FindingKind::Note => "NOTE",
        }
    }
}

/// One finding, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Kind.
    pub kind: FindingKind,
    /// File.
    pub file: PathBuf,
    /// 1-based line in `file`.
    pub line: Option<u64>,
    /// `seq` of the record concerned.
    pub seq: Option<u64>,
    /// What exactly is wrong.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.label(), self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(s) = self.seq {
            write!(f, " (seq {s})")?;
        }
        write!(f, ": {}", self.message)
    }
}
