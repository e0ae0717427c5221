//! psql and pgbench through pgward, compared with a direct connection.

use pgward_proto_tests::*;

/// A psql session touching most of the protocol: DDL, DML, transactions, errors,
/// notices, \copy both ways, large objects (FunctionCall), LISTEN/NOTIFY, \d.
const SCRIPT: &str = r#"
\set ON_ERROR_STOP 0
CREATE TABLE t (id int PRIMARY KEY, note text);
INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, NULL);
SELECT * FROM t ORDER BY id;
BEGIN;
UPDATE t SET note = 'uno' WHERE id = 1;
SELECT 1/0;
SELECT 'after error';
ROLLBACK;
SELECT note FROM t WHERE id = 1;
DO $$ BEGIN RAISE NOTICE 'hello from a notice'; END $$;
\copy t TO 'COPY_OUT'
TRUNCATE t;
\copy t FROM 'COPY_OUT'
SELECT count(*) FROM t;
\d t
\dt
SELECT repeat('x', 100000) = repeat('x', 100000) AS wide;
LISTEN ch;
NOTIFY ch, 'payload';
SELECT 1 AS after_notify;
\lo_import 'COPY_OUT'
SELECT count(*) FROM pg_largeobject_metadata;
SELECT lo_unlink(oid) FROM pg_largeobject_metadata;
DROP TABLE t;
"#;

fn run_script(conn: &str, dir: &std::path::Path) -> String {
    let copy = dir.join("copy.tsv");
    let script = SCRIPT.replace("COPY_OUT", &copy.display().to_string());
    let out = psql(conn, &["-a"], Some(&script));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    // Asynchronous notification lines name the server process id; mask it.
    text.lines()
        .map(|l| match l.find("from server process with PID") {
            Some(i) => l[..i].to_owned(),
            None => l.to_owned(),
        })
        .map(|l| {
            // \lo_import prints the new large object's oid.
            if l.starts_with("lo_import ") {
                "lo_import N".to_owned()
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn psql_session_through_pgward_matches_direct() {
    let db = Database::start();
    let pgward = Pgward::start(&db, PgwardOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let direct = run_script(&db.direct_conn("app"), tmp.path());
    let proxied = run_script(&pgward.conn("app", "verify-full"), tmp.path());
    assert!(direct.contains("hello from a notice"), "{direct}");
    assert!(direct.contains("division by zero"), "{direct}");
    assert!(direct.contains("Asynchronous notification \"ch\" with payload \"payload\""));
    assert!(direct.contains("lo_import N"), "{direct}");
    assert_eq!(proxied, direct);
    // Metrics saw the traffic.
    assert!(pgward.metric("pgward_messages_total") > 50.0);
    assert!(pgward.metric("pgward_handshake_seconds_count") >= 1.0);
}

#[test]
fn large_copy_in_and_out_through_pgward() {
    let db = Database::start();
    let pgward = Pgward::start(&db, PgwardOptions::default());
    let conn = pgward.conn("app", "require");
    psql_ok(&conn, &["-c", "CREATE TABLE big (id int, payload text)"]);
    // ~128 MiB through COPY FROM STDIN and back out through COPY TO STDOUT.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("in.tsv");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let payload = "p".repeat(1000);
        for i in 0..130_000 {
            writeln!(f, "{i}\t{payload}").unwrap();
        }
    }
    let size_in = std::fs::metadata(&file).unwrap().len();
    psql_ok(
        &conn,
        &["-c", &format!("\\copy big FROM '{}'", file.display())],
    );
    let out = tmp.path().join("out.tsv");
    psql_ok(
        &conn,
        &[
            "-c",
            &format!(
                "\\copy (SELECT * FROM big ORDER BY id) TO '{}'",
                out.display()
            ),
        ],
    );
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size_in);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&file).unwrap(),
        "COPY round trip changed the data"
    );
    let sum = psql_ok(
        &conn,
        &[
            "-At",
            "-c",
            "SELECT count(*), sum(length(payload)) FROM big",
        ],
    );
    assert_eq!(sum.trim(), "130000|130000000");
}

#[test]
fn pgbench_in_every_protocol_mode() {
    let db = Database::start();
    let pgward = Pgward::start(&db, PgwardOptions::default());
    let conn = pgward.conn("app", "require");
    let init = std::process::Command::new("pgbench")
        .args(["-i", "-s", "1", "-q", &conn])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for mode in ["simple", "extended", "prepared"] {
        for script in [&["-S"][..], &["-N"][..]] {
            let out = std::process::Command::new("pgbench")
                .args(["-n", "-c", "4", "-j", "2", "-t", "200", "-M", mode])
                .args(script)
                .arg(&conn)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "pgbench -M {mode} {script:?}: {}\n{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains("number of transactions actually processed: 800/800"),
                "{text}"
            );
            assert!(text.contains("number of failed transactions: 0"), "{text}");
        }
    }
}
