//! The names of a log's files: the active file, and the rotated ones beside it as
//! `<stem>.<UTC time>.<ext>`, whose names sort in chain order. The writer makes them;
//! verify, search and the witness read them, so they live apart from all three.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::time::Timestamp;

/// The last component of `p`, as text (how records and findings name a file).
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
pub(crate) fn rotated_name(active: &Path, ts: Timestamp) -> PathBuf {
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
