//! Issue 17: what a role allowed everything meets through real clients, compared with the
//! server itself where the server has an answer. Connection pools reset (asyncpg, psycopg2,
//! psql); syntax errors answered as PostgreSQL 15 answers them (psql, psycopg, both
//! protocols) and still audited as refusals; a 1 MiB bulk INSERT passes and an over-limit
//! one is refused naming the setting; client encodings other than UTF-8 (SET, set_config,
//! the startup parameter, COPY both ways; non-ASCII names read as the server reads them,
//! a pipelined encoding switch, SJIS refused).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use pgward_proto_tests::wire::Wire;
use pgward_proto_tests::*;
use serde_json::Value;

const CALLER: &str = "alice";

const POLICY: &str = r#"
mode = "enforce"
search_path = ["public"]

[[roles]]
name = "everything"
members = { everyone = true }
allow = [ { objects = ["*"], functions = ["set_config"] } ]
deny = [ { name = "no_payroll", objects = ["public.gehälter", "public.給料"] } ]
"#;

fn setup(dir: &Path, policy: &str) -> (Database, Pgward) {
    let db = Database::start_with(PgOptions {
        log_statements: true,
        ..Default::default()
    });
    db.sql(
        "app",
        &format!(
            "CREATE TABLE words (id int, w text);
             CREATE TABLE big (id int, customer int, total numeric, note text);
             CREATE TABLE \"gehälter\" (id int, betrag int);
             CREATE TABLE \"給料\" (id int);
             GRANT ALL ON ALL TABLES IN SCHEMA public TO {PROXY_ROLE};"
        ),
    );
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let audit = format!(
        "[audit]\nfile = \"{}\"\nredaction = \"full\"\n",
        dir.join("audit/pgward.jsonl").display()
    );
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            tls: false,
            policy: Some(path),
            extra_toml: audit,
            log_level: "info",
            ..Default::default()
        },
    );
    (db, pgward)
}

fn audit_records(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit/pgward.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// psql with the given client encoding, reading `script` (raw bytes, in that encoding).
fn psql_bytes(conn: &str, encoding: &str, script: &[u8]) -> (bool, Vec<u8>, String) {
    let mut child = Command::new("psql")
        .arg(conn)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .env("PGCLIENTENCODING", encoding)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    child.stdin.take().unwrap().write_all(script).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn python_clients_meet_what_the_server_would_say() {
    let dir = tempfile::tempdir().unwrap();
    let (db, pgward) = setup(dir.path(), POLICY);
    let out = run_python(
        "transparency.py",
        &[
            ("PGWARD_DSN", pgward.conn("app", "disable")),
            ("DIRECT_DSN", db.direct_conn("app")),
            ("PGWARD_HOST", "127.0.0.1".into()),
            ("PGWARD_PORT", pgward.port.to_string()),
            ("PGWARD_USER", CALLER.into()),
        ],
    );
    for l in out.lines().filter(|l| l.starts_with("timing")) {
        println!("{l}");
    }
    assert!(out.contains("all transparency checks passed"), "{out}");
    assert!(
        out.lines().filter(|l| l.starts_with("ok ")).count() >= 40,
        "{out}"
    );
    // The refused syntax errors are audited as refusals, answered 42601, and none reached
    // the server.
    let recs = audit_records(dir.path());
    let parse_errors: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "statement" && r["rule"] == "builtin.parse_error")
        .collect();
    assert!(parse_errors.len() >= 8, "{parse_errors:?}");
    for r in &parse_errors {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["outcome"]["sqlstate"], "42601", "{r}");
    }
    assert!(recs
        .iter()
        .any(|r| r["sql"].as_str().is_some_and(|s| s.contains("SELEC 1"))
            && r["rule"] == "builtin.parse_error"));
    drop(pgward);
    drop(db);
}

#[test]
fn psql_syntax_errors_match_a_direct_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (db, pgward) = setup(dir.path(), POLICY);
    let script = "\\set ON_ERROR_STOP 0\n\\set VERBOSITY default\nSELEC 1;\nSELECT 'ü', 1 +;\nSELECT 1;\nSELECT *\n  FROM\n  WHERE x;\n\\echo :LAST_ERROR_SQLSTATE\n";
    let run = |conn: &str| {
        let out = psql(conn, &["-a"], Some(script));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let direct = run(&db.direct_conn("app"));
    let through = run(&pgward.conn("app", "disable"));
    assert!(direct.contains("LINE 1: SELEC 1;"), "{direct}");
    assert!(direct.contains("42601"), "{direct}");
    assert_eq!(through, direct);
    // Refused, never forwarded: the server saw none of pgward's syntax errors.
    let marker = "pgward-never-forwarded-marker";
    let mut w = Wire::connect(pgward.port, CALLER);
    let r = w.query(&format!("SELEC '{marker}'"));
    assert_eq!(r.code(), "42601", "{r:?}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!db.pg.log().contains(marker));
}

#[test]
fn psql_pool_reset_and_narrowing() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, pgward) = setup(dir.path(), POLICY);
    let conn = pgward.conn("app", "disable");
    let out = psql_ok(
        &conn,
        &[
            "-qAt",
            "-c",
            "SET statement_timeout = '3s'",
            "-c",
            "RESET ALL",
            "-c",
            "SHOW statement_timeout",
            "-c",
            "DISCARD ALL",
            "-c",
            "SELECT current_setting('application_name')",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], "0", "{out}");
    // application_name names the caller (pgward's startup value): the reset keeps it.
    assert!(lines[1].starts_with(CALLER), "{out}");
    // `[baseline] reset_all = false` takes them away again.
    std::fs::write(
        dir.path().join("policy.toml"),
        POLICY.replace("[[roles]]", "[baseline]\nreset_all = false\n\n[[roles]]"),
    )
    .unwrap();
    let refused = wait_until(std::time::Duration::from_secs(10), || {
        let o = psql(&conn, &["-c", "RESET ALL"], None);
        String::from_utf8_lossy(&o.stderr).contains("builtin.protected_setting")
    });
    assert!(refused, "RESET ALL still allowed after narrowing");
    let o = psql(&conn, &["-c", "DISCARD ALL"], None);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("builtin.protected_setting"),
        "{o:?}"
    );
}

#[test]
fn psql_latin1_session_copy_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (db, pgward) = setup(dir.path(), POLICY);
    let copy = dir.path().join("latin1.tsv");
    // A LATIN1 file for \copy FROM, and a script whose literals are LATIN1 bytes.
    std::fs::write(&copy, b"20\tgar\xe7on\n21\t\xfcber\n").unwrap();
    let mut script: Vec<u8> = Vec::new();
    script.extend_from_slice(b"INSERT INTO words VALUES (10, '\xe9t\xe9');\n");
    script.extend_from_slice(format!("\\copy words FROM '{}'\n", copy.display()).as_bytes());
    script.extend_from_slice(
        b"SELECT w FROM words WHERE w IN ('\xe9t\xe9', 'gar\xe7on', '\xfcber') ORDER BY id;\n",
    );
    script.extend_from_slice(b"\\copy (SELECT w FROM words WHERE id = 21) TO STDOUT\n");
    let (ok, stdout, stderr) = psql_bytes(&pgward.conn("app", "disable"), "LATIN1", &script);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        b"\xe9t\xe9\ngar\xe7on\n\xfcber\n\xfcber\n",
        "{}",
        String::from_utf8_lossy(&stdout)
    );
    // Stored as the client meant it.
    assert_eq!(
        db.sql("app", "SELECT string_agg(w, ',' ORDER BY id) FROM words"),
        "été,garçon,über"
    );
    // A LATIN1 name of a denied table: pgward reads 0xE4 as ä, as the server does.
    let (ok, _, stderr) = psql_bytes(
        &pgward.conn("app", "disable"),
        "LATIN1",
        b"SELECT * FROM \"geh\xe4lter\";\n",
    );
    assert!(!ok && stderr.contains("rule no_payroll"), "{stderr}");
    // SJIS at startup is refused with a clear message.
    let (ok, _, stderr) = psql_bytes(&pgward.conn("app", "disable"), "SJIS", b"SELECT 1;\n");
    assert!(
        !ok && stderr.contains("SJIS is refused by pgward"),
        "{stderr}"
    );
}

/// A client that switches to LATIN1 and sends LATIN1 text before the switch has been
/// answered: the server may read it in either encoding, so pgward refuses it (ASCII passes).
#[test]
fn pipelined_encoding_switch_is_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, pgward) = setup(dir.path(), POLICY);
    let mut w = Wire::connect(pgward.port, CALLER);
    let mut batch = raw::query("SET client_encoding = 'LATIN1'");
    // In LATIN1 "Ã¤" is two characters; read as UTF-8 the same bytes are "ä".
    let mut q = b"Q".to_vec();
    let body = b"SELECT * FROM \"geh\xc3\xa4lter\"\0";
    q.extend(((body.len() + 4) as u32).to_be_bytes());
    q.extend_from_slice(body);
    batch.extend(q);
    batch.extend(raw::query("SELECT 'ascii is fine'"));
    w.send(&batch);
    let first = w.read_reply();
    assert!(first.ok(), "{first:?}");
    let second = w.read_reply();
    assert_eq!(second.code(), "42501", "{second:?}");
    assert!(
        second.errors[0]
            .message
            .contains("client_encoding is changing"),
        "{second:?}"
    );
    let third = w.read_reply();
    assert!(third.ok(), "{third:?}");
    // Settled: the same bytes now read as LATIN1 (a table that does not exist).
    let mut q = b"Q".to_vec();
    q.extend(((body.len() + 4) as u32).to_be_bytes());
    q.extend_from_slice(body);
    w.send(&q);
    let r = w.read_reply();
    assert_eq!(r.code(), "42P01", "{r:?}");
}
