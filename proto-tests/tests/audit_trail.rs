//! The audit log, end to end: every connection and statement recorded exactly once with
//! its identity, decision and outcome; the chain verifies and catches an edit; a log
//! that can't be written makes pgward refuse instead of running statements unrecorded.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use pgward_proto_tests::raw::{self, read_until_ready, sqlstate};
use pgward_proto_tests::*;
use serde_json::Value;

const POLICY: &str = r#"
[[roles]]
name = "reader"
members = { users = ["alice@contoso.com"] }
allow = [ { name = "read_orders", actions = ["select"], objects = ["public.orders"] } ]

[[roles]]
name = "writer"
members = { users = ["bob@contoso.com"] }
allow = [ { name = "write_orders", objects = ["public.orders"] } ]
"#;

fn start(dir: &Path, limit: Option<u64>) -> (Database, Pgward) {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let db = Database::start_with(PgOptions {
        log_statements: true,
        ..Default::default()
    });
    let audit = format!(
        "[audit]\nfile = \"{}\"\nredaction = \"full\"\n",
        dir.join("audit/pgward.jsonl").display()
    );
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            policy: Some(policy),
            extra_toml: audit,
            log_level: "info",
            file_size_limit: limit,
            ..Default::default()
        },
    );
    (db, pgward)
}

fn records(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("audit/pgward.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn statements_with<'a>(recs: &'a [Value], marker: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["event"] == "statement" && r["sql"].as_str().unwrap_or("").contains(marker))
        .collect()
}

#[test]
fn a_mixed_workload_is_recorded_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, mut pgward) = start(dir.path(), None);
    let alice = pgward
        .conn("app", "require")
        .replace("user=alice", "user=alice@contoso.com");
    let bob = pgward
        .conn("app", "require")
        .replace("user=alice", "user=bob@contoso.com");

    // Simple protocol: allowed, denied, failing, COPY out, and a transaction.
    let out = psql(
        &alice,
        &["-c", "SELECT count(*) FROM orders /* m-allowed */"],
        None,
    );
    assert!(out.status.success());
    let out = psql(&alice, &["-c", "DELETE FROM orders /* m-denied */"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("read_orders") || !out.status.success());
    let out = psql(
        &bob,
        &["-c", "SELECT 1/0 FROM orders /* m-failing */"],
        None,
    );
    assert!(!out.status.success());
    let copy = dir.path().join("orders.tsv");
    psql_ok(
        &bob,
        &[
            "-c",
            &format!(
                "\\copy (SELECT * FROM orders /* m-copy */) TO '{}'",
                copy.display()
            ),
        ],
    );
    psql_ok(
        &bob,
        &[
            "-c",
            "BEGIN; UPDATE orders SET qty = qty + 1 WHERE id = 1 /* m-tx */; COMMIT;",
        ],
    );

    // Extended protocol with a parameter, through tokio-postgres.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn = format!(
        "host=127.0.0.1 port={} dbname=app user=bob@contoso.com sslmode=disable",
        pgward.port
    );
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let n: i32 = client
            .query_one(
                "SELECT qty FROM orders WHERE id = $1 /* m-extended */",
                &[&7i32],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 7);
    });

    // Concurrent sessions, each statement marked.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let port = pgward.port;
            std::thread::spawn(move || {
                let mut s = raw::connect(port);
                s.write_all(&raw::startup_packet(
                    0,
                    &[("user", "bob@contoso.com"), ("database", "app")],
                ))
                .unwrap();
                read_until_ready(&mut s);
                for i in 0..25 {
                    s.write_all(&raw::query(&format!(
                        "SELECT id FROM orders WHERE id = {} /* m-c{t}-{i} */",
                        i + 1
                    )))
                    .unwrap();
                    assert!(read_until_ready(&mut s).iter().any(|m| m.0 == b'D'));
                }
                s.write_all(&raw::message(b'X', b"")).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    // A failed sign-in attempt (development mode has none), so refuse by database.
    let out = psql(&pgward.conn("nope", "require"), &["-c", "SELECT 1"], None);
    assert!(!out.status.success());

    pgward.signal(libc::SIGTERM);
    assert!(pgward.wait_exit(Duration::from_secs(20)).is_some());
    let recs = records(dir.path());

    let one = |marker: &str| {
        let v = statements_with(&recs, marker);
        assert_eq!(v.len(), 1, "{marker}: {v:#?}");
        v[0].clone()
    };
    let r = one("m-allowed");
    assert_eq!(r["decision"], "allow");
    assert_eq!(r["rule"], "read_orders");
    assert_eq!(r["outcome"]["command_tag"], "SELECT 1");
    assert_eq!(r["client"]["user"], "alice@contoso.com");
    assert_eq!(
        r["identity"],
        Value::Null,
        "development mode has no token identity"
    );
    assert_eq!(r["protocol"], "simple");
    // Objects are recorded as the statement names them.
    assert_eq!(r["objects"][0]["object"], "orders");
    assert_eq!(r["objects"][0]["action"], "select");

    let r = one("m-denied");
    assert_eq!(r["decision"], "deny");
    assert_eq!(r["outcome"]["sqlstate"], "42501");

    let r = one("m-failing");
    assert_eq!(r["decision"], "allow");
    assert_eq!(r["outcome"]["sqlstate"], "22012");

    let r = one("m-copy");
    assert_eq!(r["outcome"]["command_tag"], "COPY 100");
    assert_eq!(r["outcome"]["rows"], 100);

    let r = one("m-tx");
    assert_eq!(r["outcome"]["command_tag"], "UPDATE 1");

    let r = one("m-extended");
    assert_eq!(r["protocol"], "extended");
    // tokio-postgres sends the int4 value in binary: recorded exactly, as base64.
    // Its Parse leaves the type unspecified (it asks the server with Describe).
    assert_eq!(r["params"][0]["type"], "unknown");
    assert_eq!(r["params"][0]["format"], "binary");
    assert_eq!(r["params"][0]["value"], "AAAABw==");
    assert_eq!(r["outcome"]["rows"], 1);

    for t in 0..4 {
        for i in 0..25 {
            let r = one(&format!("m-c{t}-{i} "));
            assert_eq!(r["outcome"]["command_tag"], "SELECT 1");
        }
    }
    assert!(recs.iter().any(|r| r["event"] == "auth_failed"
        && r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no route for database")));
    let connects = recs.iter().filter(|r| r["event"] == "connect").count();
    let disconnects = recs.iter().filter(|r| r["event"] == "disconnect").count();
    assert_eq!(connects, disconnects, "every session has its disconnect");
    assert!(connects >= 10);
    assert_eq!(recs.first().unwrap()["event"], "audit_start");
    assert_eq!(recs.last().unwrap()["event"], "audit_stop");

    // The chain verifies, and an edited record is caught.
    let file = dir.path().join("audit/pgward.jsonl");
    let verify = |f: &Path| {
        std::process::Command::new(pgward_bin())
            .args(["audit", "verify"])
            .arg(f)
            .output()
            .unwrap()
    };
    let ok = verify(&file);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let edited = dir.path().join("edited.jsonl");
    std::fs::write(&edited, text.replacen("m-denied", "m-harmless", 1)).unwrap();
    let bad = verify(&edited);
    assert!(!bad.status.success());
}

#[test]
fn a_log_that_cannot_be_written_refuses_statements() {
    let dir = tempfile::tempdir().unwrap();
    // 24 KiB of audit file: a few dozen records, then every write fails (EFBIG).
    let (db, pgward) = start(dir.path(), Some(24 * 1024));
    let mut s = raw::connect(pgward.port);
    s.write_all(&raw::startup_packet(
        0,
        &[("user", "bob@contoso.com"), ("database", "app")],
    ))
    .unwrap();
    let greeting = read_until_ready(&mut s);
    assert_eq!(
        greeting.last().map(|m| m.0),
        Some(b'Z'),
        "{greeting:?}\n{}",
        pgward.log()
    );
    let mut refused_at = None;
    for i in 0..200 {
        if s.write_all(&raw::query(&format!(
            "INSERT INTO orders (item, qty) VALUES ('fill-{i}', 1)"
        )))
        .is_err()
        {
            break;
        }
        let msgs = read_until_ready(&mut s);
        if let Some(e) = msgs.iter().find(|m| m.0 == b'E') {
            assert_eq!(sqlstate(&e.1), "58030", "{}", String::from_utf8_lossy(&e.1));
            refused_at = Some(i);
            break;
        }
        assert!(
            msgs.iter().any(|m| m.0 == b'C'),
            "{msgs:?}\n{}\nAUDIT:\n{}",
            pgward.log(),
            std::fs::read_to_string(dir.path().join("audit/pgward.jsonl")).unwrap_or_default()
        );
    }
    let refused_at = refused_at.expect("statements kept running after the audit log filled up");
    // Every row whose INSERT a client saw succeed has its record; at most the one
    // statement that hit the limit ran without a record, and its result was withheld.
    let recs = records(dir.path());
    for i in 0..refused_at {
        assert_eq!(
            statements_with(&recs, &format!("'fill-{i}'")).len(),
            1,
            "fill-{i} unrecorded"
        );
    }
    let rows: usize = db
        .sql(
            "app",
            "SELECT count(*) FROM orders WHERE item LIKE 'fill-%'",
        )
        .parse()
        .unwrap();
    assert!(
        rows <= refused_at + 1,
        "{rows} rows for {refused_at} recorded statements"
    );
    // New sessions are refused while the log can't write.
    let out = psql(&pgward.conn("app", "require"), &["-c", "SELECT 1"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("audit"), "{err}");
    // Readiness says so, so a load balancer sends clients to another replica.
    let (status, body) = pgward.admin_get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("audit log cannot write"), "{body}");
    // The file still verifies up to where writing stopped.
    let ok = std::process::Command::new(pgward_bin())
        .args(["audit", "verify"])
        .arg(dir.path().join("audit/pgward.jsonl"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&ok.stdout);
    assert!(
        !report.contains("CHANGED") && !report.contains("MISSING"),
        "{report}"
    );
}
