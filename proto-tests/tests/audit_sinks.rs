//! The audit sinks beside the file, end to end through the real pgward binary: a
//! PostgreSQL table in a second, real PostgreSQL (over verify-full TLS) and the Azure
//! Monitor Logs Ingestion stand-in each end up with every record of the file exactly
//! once, with the same hash, across destination outages and pgward restarts; and
//! `pgward audit verify` names the exact record and kind of every tampering of a real
//! rotated log (edited, removed, reordered, truncated), and a torn last line as a torn
//! tail, not tampering.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgward_devkit::azure_monitor::{LogsIngestion, Mode};
use pgward_proto_tests::*;
use serde_json::Value;

const AUDIT_ROLE: &str = "pgward_audit";
const AUDIT_PASSWORD: &str = "audit-db-Secret-77";
const DCR: &str = "dcr-0123456789abcdef0123456789abcdef";
const STREAM: &str = "Custom-PgwardAudit_CL";

/// Every line of the (single, unrotated) audit file: (seq, hash, line).
fn file_lines(path: &Path) -> Vec<(u64, String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["seq"].as_u64().unwrap(),
                v["hash"].as_str().unwrap().to_owned(),
                l.to_owned(),
            )
        })
        .collect()
}

/// pgward in front of `db` with `extra` in its config, logging at info.
fn start_pgward(db: &Database, extra: String) -> Pgward {
    Pgward::start(
        db,
        PgwardOptions {
            extra_toml: extra,
            log_level: "info",
            ..Default::default()
        },
    )
}

fn pgbench(conn: &str, args: &[&str]) {
    let out = Command::new("pgbench")
        .args(args)
        .arg(conn)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgbench {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A little of everything: simple and extended protocol, a write, an error, and
/// concurrent pgbench sessions.
fn workload(pgward: &Pgward, tag: &str) {
    let conn = pgward.conn("app", "require");
    psql_ok(
        &conn,
        &[
            "-c",
            &format!("SELECT count(*) FROM orders /* {tag} */"),
            "-c",
            &format!("INSERT INTO orders (item, qty) VALUES ('{tag}', 1)"),
        ],
    );
    let failing = psql(&conn, &["-c", "SELECT * FROM no_such_table"], None);
    assert!(!failing.status.success());
    pgbench(
        &conn,
        &[
            "-n", "-S", "-c", "2", "-j", "2", "-t", "25", "-M", "extended",
        ],
    );
}

fn stop(pgward: &mut Pgward) {
    pgward.signal(libc::SIGTERM);
    assert!(
        pgward.wait_exit(Duration::from_secs(20)).is_some(),
        "pgward did not stop:\n{}",
        pgward.log()
    );
}

fn spool_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// (seq, hash, line) of every row of the audit table, by seq.
fn table_rows(pg: &EphemeralPostgres) -> Vec<(u64, String, String)> {
    let json = pg
        .psql(
            "audit",
            "SELECT coalesce(json_agg(json_build_array(seq, hash, line) ORDER BY seq), '[]') FROM pgward.audit_log",
        )
        .unwrap();
    let rows: Vec<(u64, String, String)> = serde_json::from_str(&json).unwrap();
    rows
}

#[test]
fn postgres_table_gets_every_record_once_across_an_outage_and_a_restart() {
    let db = Database::start();
    let mut audit_pg = EphemeralPostgres::start(PgOptions {
        ssl: true,
        ..Default::default()
    })
    .unwrap();
    audit_pg
        .create_login(AUDIT_ROLE, AUDIT_PASSWORD, "scram-sha-256")
        .unwrap();
    audit_pg
        .psql(
            "postgres",
            &format!("CREATE DATABASE audit OWNER {AUDIT_ROLE}"),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("audit-db-password");
    std::fs::write(&pw, format!("{AUDIT_PASSWORD}\n")).unwrap();
    let file = dir.path().join("audit/pgward.jsonl");
    let spool = dir.path().join("audit/pgward.spool/postgres");
    let extra = format!(
        r#"
[audit]
file = "{file}"

[audit.postgres]
host = "127.0.0.1"
port = {port}
dbname = "audit"
user = "{AUDIT_ROLE}"
password_file = "{pw}"
tls = "verify-full"
ca_file = "{ca}"
batch_records = 100
batch_interval_ms = 20
"#,
        file = file.display(),
        port = audit_pg.port,
        pw = pw.display(),
        ca = audit_pg.ca_file().unwrap().display(),
    );
    let mut pgward = start_pgward(&db, extra);
    let conn = pgward.conn("app", "require");
    pgbench(&conn, &["-i", "-s", "1", "-q"]);
    workload(&pgward, "pg-before");
    let written = file_lines(&file).len();
    assert!(
        wait_until(Duration::from_secs(20), || table_rows(&audit_pg).len()
            >= written),
        "the table did not catch up:\n{}",
        pgward.log()
    );

    // The audit database goes away: statements keep running, records pile up in the spool.
    audit_pg.stop();
    workload(&pgward, "pg-outage");
    assert!(
        wait_until(Duration::from_secs(5), || spool_bytes(&spool) > 0),
        "nothing spooled"
    );
    // /metrics shows the sink failing with a backlog.
    assert!(
        wait_until(Duration::from_secs(10), || {
            pgward.metric("pgward_audit_sink_failing") == 1.0
                && pgward.metric("pgward_audit_sink_backlog_bytes") > 0.0
        }),
        "{}",
        pgward.admin_get("/metrics").unwrap().1
    );
    // pgward restarts while the database is still down: the spool survives it.
    stop(&mut pgward);
    pgward.restart();
    workload(&pgward, "pg-after-restart");
    let log = pgward.log();
    assert!(log.contains("audit sink delivery failed"), "{log}");
    assert!(
        !log.contains(AUDIT_PASSWORD),
        "the password leaked into the log"
    );

    audit_pg.restart().unwrap();
    workload(&pgward, "pg-recovered");
    // Caught up: nothing waiting, not failing, and the shipped count is there.
    assert!(
        wait_until(Duration::from_secs(40), || {
            pgward.metric("pgward_audit_sink_backlog_bytes") == 0.0
                && pgward.metric("pgward_audit_sink_failing") == 0.0
        }),
        "{}",
        pgward.admin_get("/metrics").unwrap().1
    );
    assert!(pgward.metric("pgward_audit_sink_records_total") > 0.0);
    stop(&mut pgward);

    // Every record of the file is in the table exactly once, byte for byte.
    let lines = file_lines(&file);
    let rows = table_rows(&audit_pg);
    assert_eq!(
        rows.len(),
        lines.len(),
        "table and file differ in size:\n{}",
        pgward.log()
    );
    for (row, line) in rows.iter().zip(&lines) {
        assert_eq!(row, line);
    }
    // One restart and one clean stop: seq is continuous, each record once.
    let seqs: Vec<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(seqs, (1..=lines.len() as u64).collect::<Vec<_>>());
    for tag in ["pg-before", "pg-outage", "pg-after-restart", "pg-recovered"] {
        let n = audit_pg
            .psql(
                "audit",
                &format!(
                    "SELECT count(*) FROM pgward.audit_log WHERE event = 'statement' AND record->>'sql' LIKE '%{tag}%'"
                ),
            )
            .unwrap();
        assert_eq!(n, "2", "statements tagged {tag}");
    }
    let stops = audit_pg
        .psql(
            "audit",
            "SELECT count(*) FROM pgward.audit_log WHERE event = 'audit_stop'",
        )
        .unwrap();
    assert_eq!(stops, "2");
    assert_eq!(spool_bytes(&spool), 0, "everything shipped was removed");
    eprintln!(
        "postgres sink: {} records in the file and the table",
        rows.len()
    );
}

#[test]
fn azure_monitor_gets_every_record_once_across_outages_and_a_crash() {
    let db = Database::start();
    let token = format!("stand-in-token-{}", std::process::id());
    let mut ingest = LogsIngestion::start(DCR, STREAM, &token).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("monitor-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let file = dir.path().join("audit/pgward.jsonl");
    let extra = format!(
        r#"
[audit]
file = "{file}"

[audit.azure_monitor]
endpoint = "{endpoint}"
dcr_immutable_id = "{DCR}"
stream = "{STREAM}"
token_file = "{token_file}"
batch_records = 500
batch_interval_ms = 20
"#,
        file = file.display(),
        endpoint = ingest.endpoint(),
        token_file = token_file.display(),
    );
    let mut pgward = start_pgward(&db, extra);
    pgbench(&pgward.conn("app", "require"), &["-i", "-s", "1", "-q"]);
    workload(&pgward, "az-before");
    let written = file_lines(&file).len();
    assert!(
        wait_until(Duration::from_secs(20), || ingest.records().len()
            >= written),
        "the stand-in did not catch up: {:?}\n{}",
        ingest.counts(),
        pgward.log()
    );

    // 503s, then throttling with Retry-After: nothing is lost or sent twice.
    ingest.set_mode(Mode::Unavailable).unwrap();
    workload(&pgward, "az-503");
    assert!(wait_until(Duration::from_secs(5), || ingest
        .counts()
        .outage
        >= 2));
    ingest
        .set_mode(Mode::Throttled {
            retry_after_secs: 1,
        })
        .unwrap();
    let outage_before = ingest.counts().outage;
    // The next retry may be a few seconds of backoff away.
    assert!(wait_until(Duration::from_secs(15), || ingest
        .counts()
        .outage
        > outage_before));
    // Connection refused, with statements big enough that shipping them later needs
    // several calls under the 1 MB limit; pgward is killed (-9) meanwhile.
    ingest.set_mode(Mode::Refused).unwrap();
    let padding = "x".repeat(30_000);
    let big: String = (0..60)
        .map(|i| format!("SELECT {i} /* az-big {padding} */;\n"))
        .collect();
    let script = dir.path().join("big.sql");
    std::fs::write(&script, big).unwrap();
    psql_ok(
        &pgward.conn("app", "require"),
        &["-q", "-f", script.to_str().unwrap()],
    );
    pgward.signal(libc::SIGKILL);
    assert!(pgward.wait_exit(Duration::from_secs(10)).is_some());
    pgward.restart();
    workload(&pgward, "az-after-crash");
    ingest.set_mode(Mode::Up).unwrap();
    workload(&pgward, "az-recovered");
    stop(&mut pgward);

    let lines = file_lines(&file);
    let mut got: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for r in ingest.records() {
        got.entry(r["seq"].as_u64().unwrap()).or_default().push(r);
    }
    let twice: Vec<u64> = got
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(
        got.len(),
        lines.len(),
        "{:?}\n{}",
        ingest.counts(),
        pgward.log()
    );
    for (seq, hash, line) in &lines {
        let r = &got[seq][0];
        assert_eq!(r["hash"].as_str(), Some(hash.as_str()), "seq {seq}");
        let original: Value = serde_json::from_str(line).unwrap();
        assert_eq!(r, &original, "seq {seq} arrived altered");
    }
    let c = ingest.counts();
    assert_eq!(
        c.invalid, 0,
        "the stand-in refused a call: {:?}",
        c.last_invalid
    );
    assert!(
        c.max_body <= 1_000_000 && c.max_body > 500_000,
        "calls are filled up to, never over, 1 MB: {c:?}"
    );
    assert!(
        !pgward.log().contains(&token),
        "the token leaked into the log"
    );
    eprintln!(
        "azure monitor sink: {} records, {} accepted calls (largest {} bytes), {} refused by the outage",
        lines.len(),
        c.accepted,
        c.max_body,
        c.outage
    );
}

/// Runs `pgward audit verify` on `files`: (exit code, the lines that are findings).
fn verify(files: &[PathBuf]) -> (i32, Vec<String>) {
    let out = Command::new(pgward_bin())
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let findings = text
        .lines()
        .filter(|l| !l.starts_with("OK:") && !l.starts_with("FAILED:"))
        .map(str::to_owned)
        .collect();
    (out.status.code().unwrap_or(-1), findings)
}

/// Copies the log's files into a fresh directory, lets `tamper` change one of them
/// (by index), and returns the copies in chain order.
fn tampered(
    files: &[PathBuf],
    into: &Path,
    which: usize,
    mut tamper: impl FnMut(&mut Vec<String>),
) -> Vec<PathBuf> {
    std::fs::create_dir_all(into).unwrap();
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let to = into.join(f.file_name().unwrap());
            let text = std::fs::read_to_string(f).unwrap();
            if i == which {
                let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
                tamper(&mut lines);
                let mut out = lines.join("\n");
                out.push('\n');
                std::fs::write(&to, out).unwrap();
            } else {
                std::fs::write(&to, text).unwrap();
            }
            to
        })
        .collect()
}

/// Verifies `files` and expects exactly one problem (exit 1); returns it.
fn only_problem(files: &[PathBuf]) -> String {
    let (code, findings) = verify(files);
    let p = problems(&findings);
    assert_eq!((code, p.len()), (1, 1), "{findings:?}");
    p[0].clone()
}

fn seq_of(line: &str) -> u64 {
    serde_json::from_str::<Value>(line).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

fn problems(findings: &[String]) -> Vec<&String> {
    findings
        .iter()
        .filter(|f| !f.starts_with("NOTE") && !f.starts_with("TORN TAIL"))
        .collect()
}

#[test]
fn verify_names_each_tampering_of_a_real_rotated_log() {
    let db = Database::start();
    let dir = tempfile::tempdir().unwrap();
    let audit_dir = dir.path().join("audit");
    let extra = format!(
        "[audit]\nfile = \"{}\"\nrotate_bytes = 8192\n",
        audit_dir.join("pgward.jsonl").display()
    );
    let mut pgward = start_pgward(&db, extra);
    let conn = pgward.conn("app", "require");
    let script: String = (0..80)
        .map(|i| format!("SELECT id FROM orders WHERE id = {i} /* tamper-{i} */;\n"))
        .collect();
    let sql = dir.path().join("w.sql");
    std::fs::write(&sql, script).unwrap();
    psql_ok(&conn, &["-q", "-f", sql.to_str().unwrap()]);
    stop(&mut pgward);

    // The files in chain order: rotated ones (names sort by time), then the active one.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&audit_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("pgward.2") && n.ends_with(".jsonl")
        })
        .collect();
    files.sort();
    files.push(audit_dir.join("pgward.jsonl"));
    assert!(files.len() >= 3, "expected rotation: {files:?}");
    let (code, findings) = verify(&files);
    assert_eq!((code, problems(&findings).len()), (0, 0), "{findings:?}");

    // A middle file, and a record well inside it.
    let mid = 1;
    let mid_lines: Vec<String> = std::fs::read_to_string(&files[mid])
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(mid_lines.len() >= 8);
    let k = 4; // 0-based index; line k + 1 in the file
    let seq_k = seq_of(&mid_lines[k]);
    let name = |i: usize| files[i].file_name().unwrap().to_string_lossy().into_owned();

    // Edited: the record's own hash no longer matches.
    let f = tampered(&files, &dir.path().join("edited"), mid, |l| {
        assert!(l[k].contains("tamper-"), "{}", l[k]);
        l[k] = l[k].replacen("tamper-", "harmless-", 1);
    });
    let p = only_problem(&f);
    assert!(
        p.starts_with("CHANGED: ") && p.contains(&format!("{}:{} (seq {seq_k})", name(mid), k + 1)),
        "{p:?}"
    );

    // Removed: the gap is named, at the record after it.
    let f = tampered(&files, &dir.path().join("removed"), mid, |l| {
        l.remove(k);
    });
    let p = only_problem(&f);
    assert!(
        p.starts_with("MISSING: ")
            && p.contains(&format!("{}:{} (seq {})", name(mid), k + 1, seq_k + 1))
            && p.contains(&format!("record seq {seq_k} is missing")),
        "{p:?}"
    );

    // Two records swapped: the one that came too late is named.
    let f = tampered(&files, &dir.path().join("reordered"), mid, |l| {
        l.swap(k, k + 1);
    });
    let p = only_problem(&f);
    assert!(
        p.starts_with("REORDERED: ")
            && p.contains(&format!("{}:{} (seq {seq_k})", name(mid), k + 2))
            && p.contains(&format!("appears after seq {}", seq_k + 1)),
        "{p:?}"
    );

    // A file cut short at a line boundary: the next file's predecessor gives it away.
    let last_seq = seq_of(mid_lines.last().unwrap());
    let keep = mid_lines.len() - 3;
    let f = tampered(&files, &dir.path().join("truncated"), mid, |l| {
        l.truncate(keep);
    });
    let p = only_problem(&f);
    let kept_last = seq_of(&mid_lines[keep - 1]);
    assert!(
        p.starts_with("TRUNCATED: ")
            && p.contains(&format!("{}:{keep} (seq {kept_last})", name(mid)))
            && p.contains(&format!(
                "records {}..={last_seq} were cut off",
                kept_last + 1
            )),
        "{p:?}"
    );

    // A torn last line (a crash mid-write) is a torn tail, not tampering.
    let last = files.len() - 1;
    let torn_dir = dir.path().join("torn");
    let f = tampered(&files, &torn_dir, usize::MAX, |_| {});
    let text = std::fs::read_to_string(&f[last]).unwrap();
    let cut = text.trim_end_matches('\n').len() - 20;
    std::fs::write(&f[last], &text[..cut]).unwrap();
    let (code, findings) = verify(&f);
    assert_eq!(code, 0, "{findings:?}");
    assert!(problems(&findings).is_empty(), "{findings:?}");
    let torn: Vec<_> = findings
        .iter()
        .filter(|l| l.starts_with("TORN TAIL: "))
        .collect();
    assert_eq!(torn.len(), 1, "{findings:?}");
    assert!(torn[0].contains(&name(last)), "{torn:?}");

    // And pgward itself continues such a log: it moves the torn file aside and the
    // result verifies.
    let live = audit_dir.join("pgward.jsonl");
    let text = std::fs::read_to_string(&live).unwrap();
    std::fs::write(&live, &text[..text.trim_end_matches('\n').len() - 20]).unwrap();
    pgward.restart();
    psql_ok(&conn, &["-c", "SELECT 1 /* after-torn */"]);
    stop(&mut pgward);
    let out = Command::new(pgward_bin())
        .args(["audit", "verify", "--file"])
        .arg(&live)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("TORN TAIL"), "{text}");
}

#[test]
fn azure_monitor_uses_pgwards_own_azure_credential() {
    use pgward_devkit::azure_identity::{Endpoint, Expect, IdentityStandIn};
    let db = Database::start();
    let token = format!("monitor-token-from-entra-{}", std::process::id());
    let ingest = LogsIngestion::start(DCR, STREAM, &token).unwrap();
    let expect = Expect {
        // The stand-in expects `<resource>/.default` as the scope.
        resource: "https://monitor.azure.com".into(),
        ..Expect::default()
    };
    let entra = IdentityStandIn::start(expect.clone(), &token, Duration::from_secs(3600)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit/pgward.jsonl");
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, &expect.client_secret).unwrap();
    let extra = format!(
        r#"
[audit]
file = "{file}"

[audit.azure_monitor]
endpoint = "{endpoint}"
dcr_immutable_id = "{DCR}"
stream = "{STREAM}"
batch_interval_ms = 20
credential = {{ type = "client-secret", tenant_id = "{tenant}", client_id = "{client}", secret_file = "{secret_file}", authority_host = "{authority}" }}
"#,
        file = file.display(),
        endpoint = ingest.endpoint(),
        tenant = expect.tenant_id,
        client = expect.client_id,
        authority = entra.authority(),
        secret_file = secret_file.display(),
    );
    let mut pgward = start_pgward(&db, extra);
    psql_ok(
        &pgward.conn("app", "require"),
        &["-c", "SELECT 1 /* az-credential */"],
    );
    stop(&mut pgward);
    let lines = file_lines(&file);
    let got = ingest.records();
    assert_eq!(
        got.len(),
        lines.len(),
        "{:?} {:?}\n{}",
        ingest.counts(),
        entra.rejections(),
        pgward.log()
    );
    assert!(entra.issued(Endpoint::Entra) >= 1);
    assert!(entra.rejections().is_empty(), "{:?}", entra.rejections());
    let log = pgward.log();
    assert!(!log.contains(&token) && !log.contains(&expect.client_secret));
}
