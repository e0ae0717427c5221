//! kill -9 under load: every statement whose result a client received has its record in
//! the audit file, and `pgward audit verify` explains the files (at most a torn tail,
//! never a broken chain), also after pgward starts again on the same log.
//!
//! Several clients insert rows concurrently, each statement returning a fresh id, in all
//! three ways a client can send one: simple protocol (`Query`), extended protocol with a
//! new text each time, and one prepared statement executed with parameters. Every result
//! a client gets back is noted; then pgward is killed with SIGKILL in the middle of it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgward_proto_tests::*;
use serde_json::Value;

/// Concurrent clients; client `c` uses protocol `c % 3` (simple, extended, prepared).
const CLIENTS: u32 = 6;

fn audit_toml(dir: &Path) -> String {
    // Small files, so rotations happen under load too; full redaction so a prepared
    // statement's record carries its parameter values (which tell the inserts apart).
    format!(
        "[audit]\nfile = \"{}\"\nredaction = \"full\"\nrotate_bytes = 262144\n",
        dir.join("audit/pgward.jsonl").display()
    )
}

fn start_pgward(db: &Database, dir: &Path) -> Pgward {
    Pgward::start(
        db,
        PgwardOptions {
            tls: false,
            extra_toml: audit_toml(dir),
            log_level: "warn",
            ..Default::default()
        },
    )
}

/// Every file of the log, oldest first: rotated files sort by their timestamp, then the
/// active file.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("pgward.") && name.ends_with(".jsonl") && name != "pgward.jsonl"
        })
        .collect();
    rotated.sort();
    let active = dir.join("audit/pgward.jsonl");
    if active.exists() {
        rotated.push(active);
    }
    rotated
}

/// All complete records of the log (a torn last line, if any, is left to verify).
fn records(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for f in log_files(dir) {
        let text = std::fs::read_to_string(&f).unwrap();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for line in complete.lines() {
            out.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: unreadable line ({e}): {line}", f.display())),
            );
        }
    }
    out
}

fn verify(dir: &Path) -> (bool, String) {
    let out = std::process::Command::new(pgward_bin())
        .args(["audit", "verify", "--file"])
        .arg(dir.join("audit/pgward.jsonl"))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Standard base64 of an int4 in network byte order: how a binary parameter is recorded.
fn b64_int4(v: i32) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = v.to_be_bytes();
    let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
    let m = u32::from(b[3]) << 16;
    [
        A[(n >> 18) as usize & 63],
        A[(n >> 12) as usize & 63],
        A[(n >> 6) as usize & 63],
        A[n as usize & 63],
        A[(m >> 18) as usize & 63],
        A[(m >> 12) as usize & 63],
        b'=',
        b'=',
    ]
    .iter()
    .map(|&c| c as char)
    .collect()
}

/// One client: inserts until its connection fails, noting (client, n, id) for every
/// result it actually received.
async fn client_loop(port: u16, c: i32, received: Arc<Mutex<Vec<(i32, i32, i64)>>>) {
    let conn = format!(
        "host=127.0.0.1 port={port} dbname=app user=client{c} sslmode=disable connect_timeout=10"
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let prepared = client
        .prepare("INSERT INTO crash_ids (client, n) VALUES ($1, $2) RETURNING id")
        .await
        .unwrap();
    for n in 0.. {
        let id: Result<i64, _> = match c % 3 {
            0 => client
                .simple_query(&format!(
                    "INSERT INTO crash_ids (client, n) VALUES ({c}, {n}) RETURNING id /* crash-{c}-{n} */"
                ))
                .await
                .map(|msgs| {
                    msgs.iter()
                        .find_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => {
                                r.get(0).map(|s| s.parse::<i64>().unwrap())
                            }
                            _ => None,
                        })
                        .expect("a row with the new id")
                }),
            1 => client
                .query_one(
                    &format!(
                        "INSERT INTO crash_ids (client, n) VALUES ($1, $2) RETURNING id /* crash-{c}-{n} */"
                    ),
                    &[&c, &n],
                )
                .await
                .map(|r| r.get(0)),
            _ => client
                .query_one(&prepared, &[&c, &n])
                .await
                .map(|r| r.get(0)),
        };
        match id {
            Ok(id) => received.lock().unwrap().push((c, n, id)),
            // pgward is gone: this statement's result never reached the client.
            Err(_) => return,
        }
    }
}

#[test]
fn kill_9_under_load_leaves_no_result_without_its_record() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = Database::start();
    db.sql(
        "app",
        "CREATE TABLE crash_ids (id bigserial PRIMARY KEY, client int NOT NULL, n int NOT NULL);
         GRANT ALL ON crash_ids, crash_ids_id_seq TO pgward_proxy;",
    );
    let mut pgward = start_pgward(&db, dir.path());

    let received = Arc::new(Mutex::new(Vec::new()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..CLIENTS as i32)
        .map(|c| rt.spawn(client_loop(pgward.port, c, received.clone())))
        .collect();
    // Let the load run (long enough for a few rotations), then kill mid-flight.
    let loaded = wait_until(Duration::from_secs(15), || {
        received.lock().unwrap().len() >= 3000
    });
    assert!(
        loaded,
        "only {} results in 15 s\n{}",
        received.lock().unwrap().len(),
        pgward.log()
    );
    pgward.signal(libc::SIGKILL);
    assert!(pgward.wait_exit(Duration::from_secs(10)).is_some());
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("clients notice the proxy is gone")
                .unwrap();
        }
    });
    let received = received.lock().unwrap().clone();

    // Every result a client received has its statement record.
    let recs = records(dir.path());
    let mut by_marker = HashSet::new();
    let mut by_params = HashSet::new();
    for r in recs.iter().filter(|r| r["event"] == "statement") {
        if r["outcome"]["command_tag"] != "INSERT 0 1" {
            continue;
        }
        assert_eq!(r["outcome"]["rows"], 1, "{r}");
        let sql = r["sql"].as_str().unwrap();
        if let Some(i) = sql.find("/* crash-") {
            assert!(
                by_marker.insert(sql[i..].to_owned()),
                "recorded twice: {sql}"
            );
        } else if r["protocol"] == "extended" {
            let p = &r["params"];
            let key = (
                p[0]["value"].as_str().unwrap().to_owned(),
                p[1]["value"].as_str().unwrap().to_owned(),
            );
            assert!(by_params.insert(key), "recorded twice: {r}");
        }
    }
    let mut ids = HashSet::new();
    for &(c, n, id) in &received {
        assert!(ids.insert(id), "id {id} returned twice");
        let recorded = match c % 3 {
            0 | 1 => by_marker.contains(&format!("/* crash-{c}-{n} */")),
            _ => by_params.contains(&(b64_int4(c), b64_int4(n))),
        };
        assert!(
            recorded,
            "client {c} received id {id} for insert {n}, but the audit log has no record of it"
        );
    }
    // The rows the clients saw are really there (the ids are what the database assigned).
    let rows: usize = db
        .sql("app", "SELECT count(*) FROM crash_ids")
        .parse()
        .unwrap();
    assert!(
        rows >= received.len(),
        "{rows} rows, {} results",
        received.len()
    );
    for c in 0..CLIENTS as i32 {
        assert!(
            received.iter().any(|r| r.0 == c),
            "client {c} never got a result"
        );
    }

    // The files verify: a crash is at most a torn tail, never a broken chain.
    let files = log_files(dir.path());
    assert!(files.len() >= 3, "expected rotations under load: {files:?}");
    let (ok, report) = verify(dir.path());
    assert!(ok, "verify after kill -9:\n{report}");
    assert!(
        !recs.iter().any(|r| r["event"] == "audit_stop"),
        "a killed process writes no audit_stop"
    );

    // pgward starts again on the same log and continues the chain.
    let mut again = start_pgward(&db, dir.path());
    let out = psql_ok(
        &again
            .conn("app", "disable")
            .replace("user=alice", "user=after-crash"),
        &["-c", "SELECT count(*) FROM crash_ids /* crash-after */"],
    );
    assert!(
        out.lines().any(|l| l.trim() == rows.to_string()),
        "no more rows after the kill: {out}"
    );
    again.signal(libc::SIGTERM);
    assert!(again.wait_exit(Duration::from_secs(20)).is_some());
    let (ok, report) = verify(dir.path());
    assert!(ok, "verify after the restart:\n{report}");
    let recs = records(dir.path());
    let restart = recs
        .iter()
        .rfind(|r| r["event"] == "audit_start")
        .expect("the restart's audit_start");
    assert!(restart["seq"].as_u64().unwrap() > 1);
    assert!(recs
        .iter()
        .any(|r| r["event"] == "statement" && r["sql"].as_str().unwrap().contains("crash-after")));
    assert_eq!(recs.last().unwrap()["event"], "audit_stop");
    eprintln!(
        "{} results received before the kill, {} statement records, {} files, {:.1} s",
        received.len(),
        recs.iter().filter(|r| r["event"] == "statement").count(),
        log_files(dir.path()).len(),
        started.elapsed().as_secs_f64()
    );
}
