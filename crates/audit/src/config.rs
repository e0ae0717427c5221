//! The `[audit]` section of pgward's configuration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::event::Redaction;

/// When records are flushed to stable storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// Records reach the OS (write(2)) before `append` returns: they survive a crash or
    /// kill of pgward, not a power loss or kernel crash. The default: costs nothing per
    /// statement.
    #[default]
    None,
    /// Group commit: each batch of concurrently appended records is written and
    /// fdatasync'ed once before any of their `append`s return.
    Batch,
}

/// What happens to a statement when its record cannot be written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// `append` fails; the proxy refuses the statement with SQLSTATE 58030 (fail-closed).
    #[default]
    Refuse,
    /// The failure is logged (server log, rate-limited) and `append` succeeds with
    /// `Receipt::recorded == false`, so the statement proceeds unrecorded.
    Log,
}

/// `[audit]`. Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The active JSON Lines file; rotated files sit beside it as
    /// `<stem>.<UTC time>.<ext>`. Relative paths are relative to the config file
    /// (see [`AuditConfig::resolve_paths`]).
    pub file: PathBuf,
    /// Rotate when the file would grow past this many bytes (0 = never). Default 100 MiB.
    pub rotate_bytes: u64,
    /// Rotate when the file is this many seconds old (0 = never). Default 86400.
    pub rotate_secs: u64,
    /// `none` (default) or `batch`.
    pub fsync: Fsync,
    /// A file holding the HMAC key (at least 32 bytes; surrounding whitespace is ignored).
    /// When set, the chain is keyed: without the key nobody can recompute valid hashes.
    pub hmac_key_file: Option<PathBuf>,
    /// What is recorded of bind parameters: `none`, `types` (default), `full`.
    pub redaction: Redaction,
    /// `refuse` (default) or `log`.
    pub failure_mode: FailureMode,
    /// Also write every record to standard output (best effort: its failure never refuses
    /// a statement).
    pub stdout: bool,
    /// `[audit.postgres]`: a copy of every record in a table of a separate database.
    pub postgres: Option<crate::sinks::PostgresSinkConfig>,
    /// `[audit.azure_monitor]`: every record to Azure Monitor Logs (Logs Ingestion API).
    pub azure_monitor: Option<crate::sinks::AzureMonitorConfig>,
    /// A file of signed checkpoints of the chain head, kept where the log's storage cannot
    /// rewrite it (docs/audit.md, "The witness"); `pgward audit verify --witness` reads it.
    pub witness_file: Option<PathBuf>,
    /// The witness's HMAC key (at least 32 bytes); required with `witness_file`.
    pub witness_key_file: Option<PathBuf>,
    /// Seconds between checkpoints (default 10): records younger than the newest
    /// checkpoint can be cut off undetected, so this is the window.
    pub witness_interval_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            file: PathBuf::from("audit/pgward.jsonl"),
            rotate_bytes: 100 * 1024 * 1024,
            rotate_secs: 86_400,
            fsync: Fsync::None,
            hmac_key_file: None,
            redaction: Redaction::Types,
            failure_mode: FailureMode::Refuse,
            stdout: false,
            postgres: None,
            azure_monitor: None,
            witness_file: None,
            witness_key_file: None,
            witness_interval_secs: 10,
        }
    }
}

/// Smallest accepted `rotate_bytes` (other than 0): below it every batch would rotate.
pub const MIN_ROTATE_BYTES: u64 = 4096;
/// Smallest accepted HMAC key.
pub const MIN_KEY_BYTES: usize = 32;

impl AuditConfig {
    /// Makes relative paths relative to `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        if self.file.is_relative() {
            self.file = base.join(&self.file);
        }
        for p in [
            &mut self.hmac_key_file,
            &mut self.witness_file,
            &mut self.witness_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(pg) = &mut self.postgres {
            pg.resolve_paths(base);
        }
        if let Some(az) = &mut self.azure_monitor {
            az.resolve_paths(base);
        }
    }

    /// Every problem with this section, for `pgward check` (empty when fine).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.file.as_os_str().is_empty() || self.file.file_name().is_none() {
            p.push(format!("audit.file {:?} is not a file path", self.file));
        }
        if self.rotate_bytes != 0 && self.rotate_bytes < MIN_ROTATE_BYTES {
            p.push(format!(
                "audit.rotate_bytes = {} is below the minimum {MIN_ROTATE_BYTES} (0 disables size rotation)",
                self.rotate_bytes
            ));
        }
        if self.hmac_key_file.is_some() {
            if let Err(e) = self.hmac_key() {
                p.push(e.to_string());
            }
        }
        match (&self.witness_file, &self.witness_key_file) {
            (Some(w), Some(_)) => {
                if let Err(e) = self.witness() {
                    p.push(e.to_string());
                }
                if *w == self.file {
                    p.push("audit.witness_file must not be the audit file itself".to_string());
                }
                if self.witness_interval_secs == 0 {
                    p.push("audit.witness_interval_secs must be at least 1".to_string());
                }
            }
            (Some(_), None) => p.push(
                "audit.witness_file needs audit.witness_key_file (checkpoints are authenticated)"
                    .to_string(),
            ),
            (None, Some(_)) => {
                p.push("audit.witness_key_file is set but audit.witness_file is not".to_string())
            }
            (None, None) => {}
        }
        if let Some(pg) = &self.postgres {
            p.extend(pg.problems());
        }
        if let Some(az) = &self.azure_monitor {
            p.extend(az.problems());
        }
        p
    }

    /// Reads the HMAC key, if configured.
    pub fn hmac_key(&self) -> Result<Option<Vec<u8>>, crate::AuditError> {
        let Some(path) = &self.hmac_key_file else {
            return Ok(None);
        };
        read_key_file(path).map(Some)
    }
}

impl AuditConfig {
    /// The witness file and its key, if configured.
    pub fn witness(&self) -> Result<Option<(PathBuf, Vec<u8>)>, crate::AuditError> {
        match (&self.witness_file, &self.witness_key_file) {
            (Some(w), Some(k)) => Ok(Some((
                w.clone(),
                read_key_file(k).map_err(|e| {
                    crate::AuditError::Config(
                        e.to_string().replace("hmac_key_file", "witness_key_file"),
                    )
                })?,
            ))),
            (None, None) => Ok(None),
            _ => Err(crate::AuditError::Config(
                "audit.witness_file and audit.witness_key_file go together".to_string(),
            )),
        }
    }
}

/// Reads an HMAC key file (for the writer and for `pgward audit verify --key-file`).
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, crate::AuditError> {
    let raw = std::fs::read(path).map_err(|e| {
        crate::AuditError::Config(format!("audit.hmac_key_file {}: {e}", path.display()))
    })?;
    let key = raw.trim_ascii().to_vec();
    if key.len() < MIN_KEY_BYTES {
        return Err(crate::AuditError::Config(format!(
            "audit.hmac_key_file {}: key is {} bytes, at least {MIN_KEY_BYTES} are required",
            path.display(),
            key.len()
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_section() {
        let c: AuditConfig = toml::from_str(
            r#"
            file = "audit/pgward.jsonl"
            rotate_bytes = 1048576
            rotate_secs = 3600
            fsync = "batch"
            redaction = "full"
            failure_mode = "log"
            stdout = true
            "#,
        )
        .unwrap();
        assert_eq!(c.fsync, Fsync::Batch);
        assert_eq!(c.redaction, Redaction::Full);
        assert_eq!(c.failure_mode, FailureMode::Log);
        assert!(c.stdout);
        assert!(c.problems().is_empty());
        let d: AuditConfig = toml::from_str("").unwrap();
        assert_eq!(d, AuditConfig::default());
        assert!(toml::from_str::<AuditConfig>("fsync = \"always\"").is_err());
        assert!(toml::from_str::<AuditConfig>("rotate_size = 1").is_err());
        let small: AuditConfig = toml::from_str("rotate_bytes = 10").unwrap();
        assert_eq!(small.problems().len(), 1);
    }

    #[test]
    fn key_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let c = AuditConfig {
            hmac_key_file: Some(short),
            ..AuditConfig::default()
        };
        assert_eq!(c.problems().len(), 1);
        let good = dir.path().join("good");
        std::fs::write(&good, format!("{}\n", "k".repeat(40))).unwrap();
        assert_eq!(read_key_file(&good).unwrap().len(), 40);
    }

    #[test]
    fn witness_rules() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("wkey");
        std::fs::write(&key, "w".repeat(40)).unwrap();
        let mut c: AuditConfig = toml::from_str(
            "witness_file = \"w/witness.jsonl\"\nwitness_key_file = \"wkey\"\nwitness_interval_secs = 5\n",
        )
        .unwrap();
        c.resolve_paths(dir.path());
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(c.witness().unwrap().unwrap().1.len(), 40);
        assert_eq!(AuditConfig::default().witness_interval_secs, 10);
        let no_key = AuditConfig {
            witness_file: Some(dir.path().join("w")),
            ..AuditConfig::default()
        };
        assert_eq!(no_key.problems().len(), 1);
        let itself = AuditConfig {
            witness_file: Some(c.file.clone()),
            witness_interval_secs: 0,
            ..c.clone()
        };
        assert_eq!(itself.problems().len(), 2, "{:?}", itself.problems());
    }
}
