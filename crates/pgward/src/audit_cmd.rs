//! `pgward audit search | verify | tail`: the auditor's view of the audit files. The reading,
//! filtering and verifying live in pgward-audit; this maps flags onto its argument structs.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use clap::{Args, Subcommand};
use pgward_audit::{
    log_files, run_search, run_tail, run_verify, AuditConfig, AuditError, Filter, OutputFormat,
    SearchArgs, TailArgs, Timestamp, VerifyArgs,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Exit status when the chain does not verify.
const EXIT_BROKEN: u8 = 1;
/// Exit status when the command could not run (bad arguments, unreadable files); the same
/// as clap's usage errors, and distinct from "verified and found broken".
const EXIT_ERROR: u8 = 2;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print the records that match every given filter, from all files of the log in order.
    Search(SearchCmd),
    /// Check that the files form one complete, unaltered hash chain; print every finding.
    /// Exits 0 when intact, 1 when not, 2 when the files cannot be read.
    Verify(VerifyCmd),
    /// Print the last records of the active file; with -f keep printing new ones, across
    /// rotations, until Ctrl-C.
    Tail(TailCmd),
}

/// Where the log is. Positional files win; else `--file` names the active file and its
/// rotated predecessors are found beside it; else `--config`'s `[audit] file`.
#[derive(Debug, Args)]
struct Source {
    /// The active audit file (`[audit] file`); rotated files beside it are included.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    file: Option<PathBuf>,
    /// pgward configuration whose `[audit] file` to read.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct FilterArgs {
    /// Records at or after this time (RFC 3339, or a date meaning midnight UTC).
    #[arg(long, visible_alias = "from", value_name = "TIME")]
    since: Option<Timestamp>,
    /// Records before this time.
    #[arg(long, visible_alias = "to", value_name = "TIME")]
    until: Option<Timestamp>,
    /// UPN, object id or application id, or the user name a client presented.
    #[arg(long)]
    user: Option<String>,
    /// Database name.
    #[arg(long)]
    database: Option<String>,
    /// An object the statement touched; `*` matches within one name part (`*.salaries`).
    #[arg(long, value_name = "GLOB")]
    object: Option<String>,
    /// An action the statement performed (select, insert, delete, ...).
    #[arg(long)]
    action: Option<String>,
    /// The policy decision.
    #[arg(long, value_parser = ["allow", "deny", "observe-deny"], ignore_case = true)]
    decision: Option<String>,
    /// SQLSTATE; two characters match a class (42 = every 42xxx).
    #[arg(long)]
    sqlstate: Option<String>,
    /// Case-insensitive substring of the SQL text, error message or reason.
    #[arg(long)]
    text: Option<String>,
    /// Event kind (connect, statement, auth_failed, disconnect, ...).
    #[arg(long)]
    event: Option<String>,
    /// Session id.
    #[arg(long)]
    session: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            since: self.since,
            until: self.until,
            user: self.user.clone(),
            database: self.database.clone(),
            object: self.object.clone(),
            action: self.action.clone(),
            // clap accepted any case; the canonical spelling is what the records hold.
            decision: self.decision.as_ref().map(|d| d.to_ascii_lowercase()),
            sqlstate: self.sqlstate.clone(),
            text: self.text.clone(),
            event: self.event.clone(),
            session: self.session.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct SearchCmd {
    /// Files to read, oldest first (default: every file of the log, see --file / --config).
    #[arg(value_name = "FILES", conflicts_with_all = ["file", "config"])]
    files: Vec<PathBuf>,
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    filter: FilterArgs,
    /// Output: table, json (records exactly as stored) or csv.
    #[arg(long, default_value = "table")]
    format: OutputFormat,
    /// Stop after this many matching records.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

#[derive(Debug, Args)]
struct VerifyCmd {
    /// Files to verify, oldest first (default: every file of the log).
    #[arg(value_name = "FILES", conflicts_with_all = ["file", "config"])]
    files: Vec<PathBuf>,
    #[command(flatten)]
    source: Source,
    /// HMAC key file of a keyed chain (default with --config: its `[audit] hmac_key_file`).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// A witness file of signed chain-head checkpoints (`[audit] witness_file`): the files
    /// must reach its newest checkpoint (else TRUNCATED, with the first missing seq) and hold
    /// the records it names (default with --config: its witness, if any).
    #[arg(long, value_name = "FILE")]
    witness: Option<PathBuf>,
    /// The witness's key file (default with --config: its `[audit] witness_key_file`).
    #[arg(long, value_name = "FILE", requires = "witness")]
    witness_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TailCmd {
    #[command(flatten)]
    source: Source,
    /// How many matching records of the active file to show first.
    #[arg(short = 'n', long = "lines", default_value_t = 10, value_name = "N")]
    lines: usize,
    /// Keep printing new records until Ctrl-C.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    filter: FilterArgs,
    /// Output: table, json or csv.
    #[arg(long, default_value = "table")]
    format: OutputFormat,
}

pub fn run(args: AuditArgs) -> ExitCode {
    let result = match args.command {
        AuditCommand::Search(c) => search(&c),
        AuditCommand::Verify(c) => verify(&c),
        AuditCommand::Tail(c) => tail(&c),
    };
    match result {
        Ok(code) => code,
        // A reader that went away (`| head`) is not an error worth a message.
        Err(Failure::Audit(AuditError::Io {
            kind: io::ErrorKind::BrokenPipe,
            ..
        })) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgward: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

#[derive(Debug)]
enum Failure {
    Usage(String),
    Audit(AuditError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(s) => f.write_str(s),
            Failure::Audit(e) => e.fmt(f),
        }
    }
}

impl From<AuditError> for Failure {
    fn from(e: AuditError) -> Self {
        Failure::Audit(e)
    }
}

/// Reads the part of a pgward configuration file that `T` describes, and returns the
/// directory relative paths in it are relative to (as `pgward serve` resolves them).
fn config_section<T: DeserializeOwned>(path: &Path) -> Result<(T, PathBuf), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let section = toml::from_str::<T>(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!("line {}: ", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        format!("{}: {line}{}", path.display(), e.message().trim())
    })?;
    let base = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((section, base))
}

/// The part of a pgward configuration these commands need. `AuditConfig` is the proxy's own
/// `[audit]` schema, so its defaults and the key file come out the same as for `serve`.
/// Other sections are ignored, and the proxy's `Config::load` is not used: it has no
/// `[audit]` key yet (it would reject the section), and an auditor reading a copied log
/// should not need the rest of the deployment's config to be valid.
#[derive(Deserialize)]
struct AuditSection {
    #[serde(default)]
    audit: Option<AuditConfig>,
}

fn audit_config(config: &Path) -> Result<AuditConfig, Failure> {
    let (section, base): (AuditSection, PathBuf) =
        config_section(config).map_err(Failure::Usage)?;
    let mut audit = section.audit.ok_or_else(|| {
        Failure::Usage(format!(
            "{}: no [audit] section; give --file or the files",
            config.display()
        ))
    })?;
    audit.resolve_paths(&base);
    Ok(audit)
}

impl Source {
    /// The active file, from --file or the config.
    fn active(&self) -> Result<PathBuf, Failure> {
        match (&self.file, &self.config) {
            (Some(f), _) => Ok(f.clone()),
            (None, Some(c)) => Ok(audit_config(c)?.file),
            (None, None) => Err(Failure::Usage(
                "say which log: give files, --file or --config".to_owned(),
            )),
        }
    }

    /// Explicit files, else every file of the log in chain order.
    fn files(&self, explicit: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
        if !explicit.is_empty() {
            return Ok(explicit.to_vec());
        }
        let active = self.active()?;
        let files = log_files(&active)
            .map_err(|e| Failure::Usage(format!("{}: cannot list: {e}", active.display())))?;
        if files.is_empty() {
            // An empty result from a mistyped path would look like "nothing happened".
            return Err(Failure::Usage(format!(
                "no audit files at {} (nor rotated ones beside it)",
                active.display()
            )));
        }
        Ok(files)
    }
}

fn search_args(c: &SearchCmd) -> Result<SearchArgs, Failure> {
    Ok(SearchArgs {
        files: c.source.files(&c.files)?,
        filter: c.filter.filter(),
        format: c.format,
        limit: c.limit,
    })
}

fn search(c: &SearchCmd) -> Result<ExitCode, Failure> {
    let args = search_args(c)?;
    let summary = run_search(&args, &mut io::stdout().lock())?;
    if summary.skipped > 0 {
        // On stderr so JSON/CSV output stays clean.
        eprintln!(
            "pgward: {} line(s) were not readable records and were skipped; `pgward audit verify` explains them",
            summary.skipped
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn verify_args(c: &VerifyCmd) -> Result<VerifyArgs, Failure> {
    let files = c.source.files(&c.files)?;
    let key_file = match (&c.key_file, &c.source.config) {
        (Some(k), _) => Some(k.clone()),
        // Without the key a keyed chain's hashes cannot be checked; the config knows it.
        (None, Some(cfg)) if c.files.is_empty() => audit_config(cfg)?.hmac_key_file,
        _ => None,
    };
    // With --config the log's own witness is checked unless another is named.
    let configured = match &c.source.config {
        Some(cfg) => {
            let a = audit_config(cfg)?;
            (a.witness_file, a.witness_key_file)
        }
        None => (None, None),
    };
    let witness = c.witness.clone().or(configured.0);
    let witness_key_file = c.witness_key_file.clone().or(configured.1);
    if witness.is_some() && witness_key_file.is_none() {
        return Err(Failure::Usage(
            "--witness needs --witness-key-file (the key its checkpoints are signed with)".into(),
        ));
    }
    Ok(VerifyArgs {
        files,
        key_file,
        witness,
        witness_key_file,
    })
}

fn verify(c: &VerifyCmd) -> Result<ExitCode, Failure> {
    let args = verify_args(c)?;
    let report = run_verify(&args, &mut io::stdout().lock())?;
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BROKEN)
    })
}

fn tail_args(c: &TailCmd) -> Result<TailArgs, Failure> {
    Ok(TailArgs {
        file: c.source.active()?,
        lines: c.lines,
        follow: c.follow,
        filter: c.filter.filter(),
        format: c.format,
        ..TailArgs::default()
    })
}

fn tail(c: &TailCmd) -> Result<ExitCode, Failure> {
    let args = tail_args(c)?;
    let stop = Arc::new(AtomicBool::new(false));
    if args.follow {
        stop_on_signal(Arc::clone(&stop))?;
    }
    let mut out = io::stdout().lock();
    run_tail(&args, &mut out, &stop)?;
    // Interrupted output may end mid-record otherwise; ignore a closed pipe here as well.
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

/// Sets `stop` on SIGINT or SIGTERM, so `tail -f` ends after flushing what it read instead
/// of dying mid-line. The handlers are installed before this returns: a Ctrl-C right after
/// the first output must not fall back to the default (kill) action.
fn stop_on_signal(stop: Arc<AtomicBool>) -> Result<(), Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the signal runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let (mut int, mut term) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(format!("cannot handle signals: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                stop.store(true, Ordering::Relaxed);
            });
        })
        .map_err(|e| Failure::Usage(format!("cannot start the signal thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::Usage(e)),
        Err(_) => Err(Failure::Usage("the signal thread ended early".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        Audit(AuditArgs),
    }

    fn parse(args: &[&str]) -> Result<AuditCommand, clap::Error> {
        let argv = ["pgward", "audit"].iter().chain(args);
        let Top::Audit(a) = Cli::try_parse_from(argv)?.cmd;
        Ok(a.command)
    }

    fn search_cmd(args: &[&str]) -> SearchCmd {
        let mut v = vec!["search"];
        v.extend_from_slice(args);
        match parse(&v).unwrap() {
            AuditCommand::Search(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn search_flags_map_to_search_args() {
        let c = search_cmd(&[
            "a.jsonl",
            "b.jsonl",
            "--from",
            "2026-11-22",
            "--until",
            "2026-11-23T00:00:00Z",
            "--user",
            "alice@contoso.com",
            "--database",
            "app",
            "--object",
            "*.salaries",
            "--action",
            "select",
            "--decision",
            "DENY",
            "--sqlstate",
            "42",
            "--text",
            "drop",
            "--event",
            "statement",
            "--session",
            "s1",
            "--format",
            "csv",
            "--limit",
            "5",
        ]);
        let a = search_args(&c).unwrap();
        assert_eq!(
            a.files,
            [PathBuf::from("a.jsonl"), PathBuf::from("b.jsonl")]
        );
        assert_eq!(a.format, OutputFormat::Csv);
        assert_eq!(a.limit, Some(5));
        let f = a.filter;
        assert_eq!(f.since, Some("2026-11-22T00:00:00Z".parse().unwrap()));
        assert_eq!(f.until, Some("2026-11-23".parse().unwrap()));
        assert_eq!(f.user.as_deref(), Some("alice@contoso.com"));
        assert_eq!(f.database.as_deref(), Some("app"));
        assert_eq!(f.object.as_deref(), Some("*.salaries"));
        assert_eq!(f.action.as_deref(), Some("select"));
        assert_eq!(f.decision.as_deref(), Some("deny"));
        assert_eq!(f.sqlstate.as_deref(), Some("42"));
        assert_eq!(f.text.as_deref(), Some("drop"));
        assert_eq!(f.event.as_deref(), Some("statement"));
        assert_eq!(f.session.as_deref(), Some("s1"));

        let a = search_args(&search_cmd(&["x.jsonl"])).unwrap();
        assert_eq!(a.format, OutputFormat::Table);
        assert_eq!(a.limit, None);
        assert!(a.filter.user.is_none() && a.filter.since.is_none());
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(parse(&["search", "f", "--since", "yesterday"]).is_err());
        assert!(parse(&["search", "f", "--decision", "maybe"]).is_err());
        assert!(parse(&["search", "f", "--format", "xml"]).is_err());
        assert!(parse(&["search", "f", "--file", "g"]).is_err());
        assert!(parse(&["search", "--file", "f", "--config", "c"]).is_err());
        // No files and no way to find them.
        let c = search_cmd(&[]);
        assert!(matches!(search_args(&c), Err(Failure::Usage(_))));
    }

    #[test]
    fn files_come_from_the_config_or_the_active_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("audit")).unwrap();
        let rotated = d.join("audit/pgward.20261122T174541.123456Z.jsonl");
        let active = d.join("audit/pgward.jsonl");
        std::fs::write(&rotated, "").unwrap();
        std::fs::write(&active, "").unwrap();
        std::fs::write(d.join("audit.key"), "k".repeat(40)).unwrap();
        let cfg = d.join("pgward.toml");
        std::fs::write(
            &cfg,
            "[listen]\naddr = \"x\"\n[policy]\nfile = \"p\"\n[audit]\nfile = \"audit/pgward.jsonl\"\nhmac_key_file = \"audit.key\"\n",
        )
        .unwrap();
        let cfg_s = cfg.to_str().unwrap();

        let a = search_args(&search_cmd(&["--config", cfg_s])).unwrap();
        assert_eq!(a.files, [rotated.clone(), active.clone()]);
        let a = search_args(&search_cmd(&["--file", active.to_str().unwrap()])).unwrap();
        assert_eq!(a.files, [rotated.clone(), active.clone()]);

        let AuditCommand::Verify(v) = parse(&["verify", "--config", cfg_s]).unwrap() else {
            panic!()
        };
        let v = verify_args(&v).unwrap();
        assert_eq!(v.files, [rotated.clone(), active.clone()]);
        assert_eq!(v.key_file, Some(d.join("audit.key")));
        let AuditCommand::Verify(v) = parse(&["verify", "x", "--key-file", "k"]).unwrap() else {
            panic!()
        };
        let v = verify_args(&v).unwrap();
        assert_eq!(v.files, [PathBuf::from("x")]);
        assert_eq!(v.key_file, Some(PathBuf::from("k")));
        assert_eq!(v.witness, None);
        let AuditCommand::Verify(v) = parse(&[
            "verify",
            "x",
            "--witness",
            "w.jsonl",
            "--witness-key-file",
            "wk",
        ])
        .unwrap() else {
            panic!()
        };
        let v = verify_args(&v).unwrap();
        assert_eq!(v.witness, Some(PathBuf::from("w.jsonl")));
        assert_eq!(v.witness_key_file, Some(PathBuf::from("wk")));
        let AuditCommand::Verify(v) = parse(&["verify", "x", "--witness", "w.jsonl"]).unwrap()
        else {
            panic!()
        };
        assert!(
            matches!(verify_args(&v), Err(Failure::Usage(m)) if m.contains("--witness-key-file"))
        );

        let AuditCommand::Tail(t) = parse(&[
            "tail", "--config", cfg_s, "-n", "3", "-f", "--user", "bob", "--format", "json",
        ])
        .unwrap() else {
            panic!()
        };
        let t = tail_args(&t).unwrap();
        assert_eq!(t.file, active);
        assert_eq!(t.lines, 3);
        assert!(t.follow);
        assert_eq!(t.filter.user.as_deref(), Some("bob"));
        assert_eq!(t.format, OutputFormat::Json);

        std::fs::write(&cfg, "[listen]\naddr = \"x\"\n").unwrap();
        assert!(matches!(
            search_args(&search_cmd(&["--config", cfg_s])),
            Err(Failure::Usage(m)) if m.contains("no [audit]")
        ));
        let missing = d.join("nowhere/pgward.jsonl");
        assert!(matches!(
            search_args(&search_cmd(&["--file", missing.to_str().unwrap()])),
            Err(Failure::Usage(m)) if m.contains("no audit files")
        ));
    }
}
