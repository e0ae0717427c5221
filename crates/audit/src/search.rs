//! `pgward audit search` and `pgward audit tail`: filters over records and three output
//! formats. The argument structs do not depend on any CLI library; the binary maps its
//! flags onto them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::event::{opt, Record};
use crate::read::{classify, read_records, Lines, ReadItem};
use crate::time::Timestamp;
use crate::AuditError;

/// Which records to show. Every set field must match; text comparisons ignore case.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `ts >= since`.
    pub since: Option<Timestamp>,
    /// `ts < until`.
    pub until: Option<Timestamp>,
    /// UPN, object id, application id or presented user name.
    pub user: Option<String>,
    /// Database name.
    pub database: Option<String>,
    /// An object the statement touched; `*` matches within one name part
    /// (`public.*`, `*.salaries`).
    pub object: Option<String>,
    /// An action the statement performed (`select`, `delete`, ...).
    pub action: Option<String>,
    /// `allow`, `deny` or `observe-deny`.
    pub decision: Option<String>,
    /// SQLSTATE; two characters match a class (`42` → 42xxx).
    pub sqlstate: Option<String>,
    /// Substring of the SQL text, error message or reason.
    pub text: Option<String>,
    /// Event kind (`statement`, `auth_failed`, ...).
    pub event: Option<String>,
    /// Session id.
    pub session: Option<String>,
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Glob with `*` matching any run of characters except `.`; case-insensitive.
fn glob(pattern: &str, name: &str) -> bool {
    fn rec(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => {
                let mut i = 0;
                loop {
                    if rec(rest, &n[i..]) {
                        return true;
                    }
                    if i == n.len() || n[i] == b'.' {
                        return false;
                    }
                    i += 1;
                }
            }
            Some((c, rest)) => n
                .split_first()
                .is_some_and(|(d, nrest)| c.eq_ignore_ascii_case(d) && rec(rest, nrest)),
        }
    }
    pattern == "*" || rec(pattern.as_bytes(), name.as_bytes())
}

fn contains_ci(hay: &str, needle_lower: &str) -> bool {
    hay.to_lowercase().contains(needle_lower)
}

impl Filter {
    /// Whether `r` passes.
    pub fn matches(&self, r: &Record) -> bool {
        if self.since.is_some() || self.until.is_some() {
            let Ok(ts) = r.ts.parse::<Timestamp>() else {
                return false;
            };
            if self.since.is_some_and(|s| ts < s) || self.until.is_some_and(|u| ts >= u) {
                return false;
            }
        }
        if let Some(u) = &self.user {
            let id = r.identity.as_ref();
            let cands = [
                id.and_then(|i| i.upn.as_deref()),
                id.and_then(|i| i.oid.as_deref()),
                id.and_then(|i| i.appid.as_deref()),
                r.client.as_ref().and_then(|c| c.user.as_deref()),
            ];
            if !cands.iter().flatten().any(|c| eq(c, u)) {
                return false;
            }
        }
        if let Some(d) = &self.database {
            if r.database.as_deref() != Some(d.as_str()) {
                return false;
            }
        }
        if let Some(o) = &self.object {
            if !r.objects.iter().any(|x| glob(o, &x.object)) {
                return false;
            }
        }
        if let Some(a) = &self.action {
            if !r.objects.iter().any(|x| eq(&x.action, a)) {
                return false;
            }
        }
        if let Some(d) = &self.decision {
            if !r.decision.as_deref().is_some_and(|x| eq(x, d)) {
                return false;
            }
        }
        if let Some(s) = &self.sqlstate {
            let ok = r.sqlstate().is_some_and(|x| {
                if s.len() == 2 {
                    x.get(..2).is_some_and(|c| eq(c, s))
                } else {
                    eq(x, s)
                }
            });
            if !ok {
                return false;
            }
        }
        if let Some(t) = &self.text {
            let t = t.to_lowercase();
            let msg = r.outcome.as_ref().and_then(|o| o.message.as_deref());
            let hit = [r.sql.as_deref(), msg, r.reason.as_deref()]
                .iter()
                .flatten()
                .any(|h| contains_ci(h, &t));
            if !hit {
                return false;
            }
        }
        if let Some(e) = &self.event {
            if !eq(&r.event, e) {
                return false;
            }
        }
        if let Some(s) = &self.session {
            if r.session.as_deref() != Some(s.as_str()) {
                return false;
            }
        }
        true
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// The matching records exactly as stored (JSON Lines), hashes included.
    Json,
    /// One row per record with flattened columns (RFC 4180).
    Csv,
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(OutputFormat::Table),
            "json" | "jsonl" => Ok(OutputFormat::Json),
            "csv" => Ok(OutputFormat::Csv),
            _ => Err(format!("unknown format {s:?}: table, json or csv")),
        }
    }
}

/// Arguments of `pgward audit search`.
#[derive(Debug, Clone, Default)]
pub struct SearchArgs {
    /// Files to read, in order (e.g. [`crate::log_files`]).
    pub files: Vec<PathBuf>,
    /// Which records.
    pub filter: Filter,
    /// How to print them.
    pub format: OutputFormat,
    /// Stop after this many matches.
    pub limit: Option<usize>,
}

/// What a search read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchSummary {
    /// Records read.
    pub scanned: u64,
    /// Records printed.
    pub matched: u64,
    /// Lines that were not records (malformed, or a torn last line); `verify` explains them.
    pub skipped: u64,
}

const CSV_COLUMNS: &[&str] = &[
    "seq",
    "ts",
    "instance",
    "event",
    "session",
    "client_addr",
    "client_user",
    "application_name",
    "tls",
    "upn",
    "oid",
    "tid",
    "appid",
    "roles",
    "database",
    "protocol",
    "sql",
    "objects",
    "decision",
    "rule",
    "command_tag",
    "rows",
    "sqlstate",
    "message",
    "duration_us",
    "reason",
    "statements",
    "bytes_in",
    "bytes_out",
    "hash",
];

struct Printer {
    format: OutputFormat,
    header_done: bool,
}

fn csv_field(out: &mut String, v: &str) {
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let mut t: String = flat.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        flat
    }
}

fn pad(s: &str, w: usize) -> String {
    let s = one_line(s, w);
    let n = s.chars().count();
    format!("{s}{}", " ".repeat(w.saturating_sub(n)))
}

impl Printer {
    fn new(format: OutputFormat) -> Self {
        Printer {
            format,
            header_done: false,
        }
    }

    fn print(&mut self, out: &mut dyn Write, r: &Record, raw: &[u8]) -> io::Result<()> {
        match self.format {
            OutputFormat::Json => {
                out.write_all(raw)?;
                out.write_all(b"\n")
            }
            OutputFormat::Csv => {
                if !self.header_done {
                    self.header_done = true;
                    writeln!(out, "{}", CSV_COLUMNS.join(","))?;
                }
                writeln!(out, "{}", csv_row(r))
            }
            OutputFormat::Table => {
                if !self.header_done {
                    self.header_done = true;
                    writeln!(
                        out,
                        "{} {} {} {} {} {} DETAIL",
                        pad("TS", 27),
                        pad("EVENT", 11),
                        pad("USER", 26),
                        pad("DATABASE", 12),
                        pad("DECISION", 12),
                        pad("RESULT", 14)
                    )?;
                }
                writeln!(
                    out,
                    "{} {} {} {} {} {} {}",
                    pad(&r.ts, 27),
                    pad(&r.event, 11),
                    pad(r.user().unwrap_or("-"), 26),
                    pad(r.database.as_deref().unwrap_or("-"), 12),
                    pad(r.decision.as_deref().unwrap_or("-"), 12),
                    pad(&result(r), 14),
                    one_line(&detail(r), 100)
                )
            }
        }
    }
}

fn result(r: &Record) -> String {
    match (&r.outcome, r.event.as_str()) {
        (Some(o), _) => o
            .sqlstate
            .clone()
            .or_else(|| o.command_tag.clone())
            .unwrap_or_default(),
        (None, "auth_failed") => "28000".to_string(),
        _ => String::new(),
    }
}

fn detail(r: &Record) -> String {
    match r.event.as_str() {
        "statement" => {
            let msg = r
                .outcome
                .as_ref()
                .and_then(|o| o.message.as_deref())
                .map(|m| format!(" [{m}]"))
                .unwrap_or_default();
            format!("{}{msg}", r.sql.as_deref().unwrap_or(""))
        }
        "connect" => {
            let c = r.client.as_ref();
            format!(
                "from {} app={} tls={}",
                c.map_or("", |c| c.addr.as_str()),
                c.and_then(|c| c.application_name.as_deref()).unwrap_or(""),
                c.is_some_and(|c| c.tls)
            )
        }
        "disconnect" => format!(
            "{} statements, {} bytes in, {} out, {:.3}s{}",
            r.statements.unwrap_or(0),
            r.bytes_in.unwrap_or(0),
            r.bytes_out.unwrap_or(0),
            r.duration_us.unwrap_or(0) as f64 / 1e6,
            r.reason
                .as_deref()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default()
        ),
        _ => r.reason.clone().unwrap_or_default(),
    }
}

fn csv_row(r: &Record) -> String {
    let id = r.identity.clone().unwrap_or_default();
    let c = r.client.clone().unwrap_or_default();
    let o = r.outcome.clone().unwrap_or_default();
    let n = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
    let objects = r
        .objects
        .iter()
        .map(|x| format!("{}:{}", x.action, x.object))
        .collect::<Vec<_>>()
        .join(";");
    let cols: Vec<String> = vec![
        r.seq.to_string(),
        r.ts.clone(),
        r.instance.clone(),
        r.event.clone(),
        opt(&r.session).into_owned(),
        c.addr.clone(),
        opt(&c.user).into_owned(),
        opt(&c.application_name).into_owned(),
        c.tls.to_string(),
        opt(&id.upn).into_owned(),
        opt(&id.oid).into_owned(),
        opt(&id.tid).into_owned(),
        opt(&id.appid).into_owned(),
        id.roles.join(";"),
        opt(&r.database).into_owned(),
        opt(&r.protocol).into_owned(),
        opt(&r.sql).into_owned(),
        objects,
        opt(&r.decision).into_owned(),
        opt(&r.rule).into_owned(),
        opt(&o.command_tag).into_owned(),
        n(o.rows),
        opt(&o.sqlstate).into_owned(),
        opt(&o.message).into_owned(),
        n(r.duration_us),
        opt(&r.reason).into_owned(),
        n(r.statements),
        n(r.bytes_in),
        n(r.bytes_out),
        r.hash.clone(),
    ];
    let mut line = String::new();
    for (i, v) in cols.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        csv_field(&mut line, v);
    }
    line
}

fn out_err(e: &io::Error) -> AuditError {
    AuditError::io(Path::new("(output)"), "write", e)
}

/// Runs `pgward audit search` over `args.files`, printing matches to `out`.
pub fn run_search(args: &SearchArgs, out: &mut impl Write) -> Result<SearchSummary, AuditError> {
    let mut sum = SearchSummary::default();
    let mut printer = Printer::new(args.format);
    'files: for path in &args.files {
        let items = read_records(path).map_err(|e| AuditError::io(path, "open", &e))?;
        for item in items {
            match item.map_err(|e| AuditError::io(path, "read", &e))? {
                ReadItem::Record { raw, record, .. } => {
                    sum.scanned += 1;
                    if args.filter.matches(&record) {
                        if args.limit.is_some_and(|l| sum.matched >= l as u64) {
                            break 'files;
                        }
                        printer.print(out, &record, &raw).map_err(|e| out_err(&e))?;
                        sum.matched += 1;
                    }
                }
                ReadItem::Malformed { .. } | ReadItem::TornTail { .. } => sum.skipped += 1,
            }
        }
    }
    out.flush().map_err(|e| out_err(&e))?;
    Ok(sum)
}

/// Arguments of `pgward audit tail`.
#[derive(Debug, Clone)]
pub struct TailArgs {
    /// The active audit file (`[audit] file`).
    pub file: PathBuf,
    /// How many matching records of the active file to show first.
    pub lines: usize,
    /// Keep printing new records, across rotations, until `stop` is set.
    pub follow: bool,
    /// Which records.
    pub filter: Filter,
    /// How to print them.
    pub format: OutputFormat,
    /// How often to look for new records.
    pub poll: Duration,
}

impl Default for TailArgs {
    fn default() -> Self {
        TailArgs {
            file: PathBuf::new(),
            lines: 10,
            follow: false,
            filter: Filter::default(),
            format: OutputFormat::Table,
            poll: Duration::from_millis(200),
        }
    }
}

/// A file being followed: only whole lines are consumed; a partial one waits in `carry`.
struct Followed {
    file: File,
    ino: u64,
    carry: Vec<u8>,
}

impl Followed {
    fn open(path: &Path) -> io::Result<Option<Followed>> {
        match File::open(path) {
            Ok(file) => {
                let ino = file.metadata()?.ino();
                Ok(Some(Followed {
                    file,
                    ino,
                    carry: Vec::new(),
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads what was appended since the last call; returns the complete new lines.
    fn read_new(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        self.carry.extend_from_slice(&buf);
        let mut lines = Vec::new();
        while let Some(nl) = self.carry.iter().position(|&c| c == b'\n') {
            let rest = self.carry.split_off(nl + 1);
            let mut line = std::mem::replace(&mut self.carry, rest);
            line.pop();
            lines.push(line);
        }
        Ok(lines)
    }
}

/// The file after the one with inode `ino` in the chain of `active`.
fn next_file(active: &Path, ino: u64) -> io::Result<Option<Followed>> {
    let position = |list: &[PathBuf]| {
        list.iter()
            .position(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == ino))
    };
    loop {
        let list = crate::files::archived_files(active)?;
        let at = position(&list);
        if let Some(next) = at.and_then(|i| list.get(i + 1)) {
            return Followed::open(next);
        }
        let opened = Followed::open(active)?;
        // If the active file was rotated again between listing and opening, the file
        // after ours is now a rotated one: start over rather than skip it.
        let again = crate::files::archived_files(active)?;
        match (position(&again).and_then(|i| again.get(i + 1)), &opened) {
            (Some(p), Some(f)) if std::fs::metadata(p).is_ok_and(|m| m.ino() != f.ino) => continue,
            _ => return Ok(opened),
        }
    }
}

/// Runs `pgward audit tail [-f]`: prints the last `lines` matching records of the active
/// file, then (with `follow`) new ones as they are written, switching to the new active
/// file after a rotation without losing the end of the old one. Returns when `stop` is set.
pub fn run_tail(
    args: &TailArgs,
    out: &mut impl Write,
    stop: &AtomicBool,
) -> Result<(), AuditError> {
    let path = &args.file;
    let io_err = |e: io::Error| AuditError::io(path, "read", &e);
    let mut printer = Printer::new(args.format);
    let emit =
        |out: &mut dyn Write, raw: Vec<u8>, printer: &mut Printer| -> Result<(), AuditError> {
            if let ReadItem::Record { raw, record, .. } = classify(0, raw, true) {
                if args.filter.matches(&record) {
                    printer.print(out, &record, &raw).map_err(|e| out_err(&e))?;
                }
            }
            Ok(())
        };
    let mut cur = Followed::open(path).map_err(io_err)?;
    if let Some(f) = cur.as_mut() {
        // Initial backlog: the last N matching complete lines.
        let mut last: VecDeque<(Vec<u8>, Box<Record>)> = VecDeque::new();
        f.file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let mut consumed = 0u64;
        for l in Lines::new(BufReader::new(&mut f.file)) {
            let (_, raw, complete) = l.map_err(io_err)?;
            if !complete {
                break;
            }
            consumed += raw.len() as u64 + 1;
            if let ReadItem::Record { raw, record, .. } = classify(0, raw, true) {
                if args.filter.matches(&record) {
                    if last.len() == args.lines {
                        last.pop_front();
                    }
                    if args.lines > 0 {
                        last.push_back((raw, record));
                    }
                }
            }
        }
        for (raw, rec) in last {
            printer.print(out, &rec, &raw).map_err(|e| out_err(&e))?;
        }
        f.file.seek(SeekFrom::Start(consumed)).map_err(io_err)?;
    }
    out.flush().map_err(|e| out_err(&e))?;
    if !args.follow {
        return Ok(());
    }
    while !stop.load(Ordering::Relaxed) {
        if let Some(f) = cur.as_mut() {
            for raw in f.read_new().map_err(io_err)? {
                emit(out, raw, &mut printer)?;
            }
        }
        // Rotated? The path now names another file (or none yet). The old file was
        // complete before its rename and was drained just above; move on to the file that
        // follows it in the chain (another rotated file if several rotations happened
        // since the last poll, else the new active file).
        let now_ino = std::fs::metadata(path).ok().map(|m| m.ino());
        let rotated = match (&cur, now_ino) {
            (Some(f), Some(ino)) => f.ino != ino,
            (None, Some(_)) => true,
            _ => false,
        };
        if rotated {
            cur = match &cur {
                Some(f) => next_file(path, f.ino).map_err(io_err)?,
                None => Followed::open(path).map_err(io_err)?,
            };
            continue;
        }
        out.flush().map_err(|e| out_err(&e))?;
        std::thread::sleep(args.poll);
    }
    out.flush().map_err(|e| out_err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("public.*", "public.orders"));
        assert!(glob("*.salaries", "hr.salaries"));
        assert!(!glob("*.salaries", "hr.salaries_old"));
        assert!(!glob("public.*", "public.a.b"));
        assert!(glob("PUBLIC.Orders", "public.orders"));
        assert!(glob("*", "anything.at.all"));
    }

    #[test]
    fn csv_quoting() {
        let mut s = String::new();
        csv_field(&mut s, "a,\"b\"\nc");
        assert_eq!(s, "\"a,\"\"b\"\"\nc\"");
    }
}
