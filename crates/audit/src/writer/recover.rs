//! Where the chain stands when a log is opened: the `seq` and `hash` of the last complete
//! record of the files, and the `audit_start` that must come first — naming the file it
//! continues when the active file was torn by a crash (moved aside, never appended to) or
//! is missing after a rotation.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::commit::{Header, Writer};
use crate::event::{EventKind, Predecessor};
use crate::files::{archived_files, file_name, rotated_name};
use crate::time::Timestamp;
use crate::AuditError;

#[derive(Deserialize)]
struct ChainPoint {
    seq: u64,
    hash: String,
}

impl Writer {
    /// Finds where the chain stands and what the first record must be.
    pub(super) fn recover(&mut self) -> Result<(), AuditError> {
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
                    self.last_hash = p.hash.clone().into_bytes();
                }
                predecessor = Some(Predecessor {
                    file: file_name(&to),
                    last_seq: self.seq,
                    last_hash: self.last_hash_hex(),
                });
                reason = "start after a crash: the previous file ends with a torn line".to_string();
            } else if let Some(p) = point {
                self.seq = p.seq;
                self.last_hash = p.hash.into_bytes();
            }
        } else if let Some(newest) = archived.last() {
            // Crash between rotation's rename and the new file's first record, or the
            // active file was moved away: continue from the newest rotated file.
            if let Some(p) = newest_point(&archived)? {
                self.seq = p.seq;
                self.last_hash = p.hash.into_bytes();
            }
            predecessor = Some(Predecessor {
                file: file_name(newest),
                last_seq: self.seq,
                last_hash: self.last_hash_hex(),
            });
        }
        self.header = Some(Header {
            kind: EventKind::AuditStart,
            reason: format!("{reason} ({version})"),
            predecessor,
        });
        Ok(())
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
