//! One chain, one writer process: an exclusive flock(2) on `<file>.lock`, held for the
//! life of the log.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::AuditError;

/// Takes an exclusive, non-blocking flock(2) on `<file>.lock` (released when the writer
/// ends or the process dies), so a second pgward pointed at the same file fails at start
/// instead of forking the chain.
pub(super) fn lock_log(file: &Path) -> Result<File, AuditError> {
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
