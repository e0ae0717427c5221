//! Column masks end to end: a real PostgreSQL, the real pgward binary, psql, tokio-postgres
//! (binary results), psycopg (binary and text) and asyncpg. Every way the caller tries to
//! read a masked value is masked or denied; nothing masked arrives unmasked and nothing
//! denied reaches the server (its statement log is read back).

use std::path::{Path, PathBuf};

use pgward_proto_tests::*;

const ANALYST: &str = "alice@contoso.com";
const AUDITOR: &str = "carol@contoso.com";

/// Values that must never reach the analyst.
const SECRETS: &[&str] = &[
    "123-45-6789",
    "987-65-4321",
    "alice.secret",
    "bob.secret",
    "98765",
    "55555",
    "1971-02-03",
    "1980-01-01",
];

const SCHEMA: &str = r#"
SET ROLE pgward_proxy;
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn varchar(11),
  salary numeric(10,2), birth date);
INSERT INTO customers VALUES
  (1, 'Alice', 'alice.secret@contoso.com', '123-45-6789', 98765.43, '1971-02-03'),
  (2, 'Bob', 'bob.secret@fabrikam.com', '987-65-4321', 55555.55, '1980-01-01'),
  (3, 'Carol', 'carol@contoso.com', '555-55-5555', 12345.00, '1990-05-05');
CREATE VIEW customer_emails AS SELECT id, email FROM customers;
CREATE VIEW rich AS SELECT id FROM customers WHERE salary > 50000;
CREATE SCHEMA hr;
CREATE TABLE hr.people (pid int, ssn text, email text);
INSERT INTO hr.people VALUES (1, '123-45-6789', 'alice.secret@contoso.com'),
  (2, '987-65-4321', 'bob.secret@fabrikam.com');
CREATE TABLE wide (id int, payload text, secret text);
INSERT INTO wide SELECT g, repeat('x', 2000), 'secret-' || g FROM generate_series(1, 20000) g;
"#;

const POLICY: &str = r#"
[[roles]]
name = "analyst"
members = { users = ["alice@contoso.com"] }
allow = [ { actions = ["select"], objects = ["public.*", "hr.*"] } ]
mask = [
  { name = "emails", columns = ["public.customers.email"], with = "email" },
  { name = "ssn", columns = ["*.*.ssn"], with = "hash" },
  { name = "salary", columns = ["public.customers.salary"], with = "redact" },
  { name = "names", columns = ["public.customers.name"], with = "partial", first = 1 },
  { name = "birth", columns = ["public.customers.birth"], with = "null" },
  { name = "people_email", columns = ["hr.people.email"], with = "hash", filter = "equality" },
  { name = "wide_secret", columns = ["public.wide.secret"], with = "redact", value = "[hidden]" },
]

[[roles]]
name = "auditor"
members = { users = ["carol@contoso.com"] }
allow = [ { actions = ["select"], objects = ["public.*", "hr.*"] } ]
"#;

struct Stand {
    db: Database,
    pgward: Pgward,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

fn stand() -> Stand {
    let db = Database::start_with(PgOptions {
        log_statements: true,
        ..Default::default()
    });
    db.sql("app", SCHEMA);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap_or_else(|e| panic!("write policy: {e}"));
    let key = dir.path().join("mask.key");
    std::fs::write(&key, "an-example-mask-key-of-enough-length-0123456789")
        .unwrap_or_else(|e| panic!("write key: {e}"));
    let audit = dir.path().join("audit.jsonl");
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            tls: false,
            policy: Some(policy),
            policy_extra: vec![format!("mask_key_file = \"{}\"", key.display())],
            extra_toml: format!("[audit]\nfile = \"{}\"\n", audit.display()),
            ..Default::default()
        },
    );
    Stand {
        db,
        pgward,
        audit,
        _dir: dir,
    }
}

fn conn_as(pgward: &Pgward, user: &str) -> String {
    pgward
        .conn("app", "disable")
        .replace("user=alice", &format!("user={user}"))
}

#[track_caller]
fn assert_clean(what: &str, out: &str) {
    for s in SECRETS {
        assert!(!out.contains(s), "{what}: secret {s:?} leaked:\n{out}");
    }
}

/// psql's output (stdout and stderr) for `sql` as the analyst.
fn analyst(s: &Stand, sql: &str) -> (bool, String) {
    let o = psql(&conn_as(&s.pgward, ANALYST), &["-At", "-c", sql], None);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_clean(sql, &text);
    (o.status.success(), text)
}

#[track_caller]
fn masked(s: &Stand, sql: &str, expect: &str) {
    let (ok, out) = analyst(s, sql);
    assert!(ok, "{sql}: {out}");
    assert!(out.contains(expect), "{sql}: expected {expect:?} in\n{out}");
}

#[track_caller]
fn denied(s: &Stand, sql: &str) {
    let (ok, out) = analyst(s, sql);
    assert!(
        !ok && out.contains("denied"),
        "{sql}: expected a denial, got\n{out}"
    );
    assert!(
        !s.db.pg.log().contains(sql),
        "{sql}: a denied statement reached the server"
    );
}

#[test]
fn masks_hold_for_every_client_and_every_way_around_them() {
    let s = stand();

    // Plain columns, every mask kind, the simple protocol.
    masked(
        &s,
        "SELECT id, name, email, salary, birth FROM customers WHERE id = 1",
        "1|A****|****@contoso.com|0|\n",
    );
    masked(
        &s,
        "SELECT * FROM customers ORDER BY id",
        "****@fabrikam.com",
    );
    masked(
        &s,
        "SELECT m FROM (SELECT email AS m FROM customers) s",
        "****@contoso.com",
    );
    masked(
        &s,
        "WITH x AS (SELECT email FROM customers) SELECT * FROM x",
        "****@contoso.com",
    );
    masked(&s, "SELECT * FROM customer_emails", "****@contoso.com");
    masked(
        &s,
        "SELECT email FROM customers UNION ALL SELECT 'x'",
        "****@contoso.com",
    );
    masked(
        &s,
        "SELECT (SELECT email FROM customers WHERE id = 2)",
        "****@fabrikam.com",
    );
    // Computed from a masked column: NULL as a whole.
    let (ok, out) = analyst(
        &s,
        "SELECT 'v=' || lower(email) || '.' FROM customers WHERE id = 1",
    );
    assert!(ok && out.trim().is_empty(), "{out}");
    let (ok, out) = analyst(
        &s,
        "SELECT concat(ssn), ssn::text FROM customers WHERE id = 1",
    );
    assert!(ok && out.trim() == "|", "{out}");
    // Hash: equal values give equal hashes in both tables; joins on it work.
    let (_, a) = analyst(&s, "SELECT ssn FROM customers WHERE id = 1");
    let (_, b) = analyst(&s, "SELECT ssn FROM hr.people WHERE pid = 1");
    assert_eq!(a.trim().len(), 32, "{a}");
    assert_eq!(a, b);
    masked(
        &s,
        "SELECT count(*) FROM customers c JOIN hr.people p ON p.ssn = c.ssn",
        "2",
    );
    // Equality lookups where the mask opts in.
    masked(
        &s,
        "SELECT pid FROM hr.people WHERE email = 'bob.secret@fabrikam.com'",
        "2",
    );
    // A cursor.
    masked(
        &s,
        "BEGIN; DECLARE c CURSOR FOR SELECT email FROM customers ORDER BY id; FETCH 2 FROM c; COMMIT",
        "****@fabrikam.com",
    );
    // SQL PREPARE and EXECUTE.
    masked(
        &s,
        "PREPARE p AS SELECT email FROM customers WHERE id = 3; EXECUTE p",
        "****@contoso.com",
    );
    // The server's error text may quote a value: withheld, SQLSTATE kept.
    let (ok, out) = analyst(&s, "SELECT email, 1 / (id - 1) FROM customers");
    assert!(!ok && out.contains("withheld"), "{out}");

    // Every way around the masks is denied before it reaches the server.
    for sql in [
        "SELECT id FROM customers WHERE salary > 90000",
        "SELECT id FROM customers WHERE email LIKE 'alice%'",
        "SELECT id FROM customers WHERE email = 'alice.secret@contoso.com'",
        "SELECT id FROM customers ORDER BY salary",
        "SELECT email, count(*) FROM customers GROUP BY email",
        "SELECT DISTINCT salary FROM customers",
        "SELECT ssn::int FROM customers",
        "SELECT substr(ssn, 1, 3) FROM customers",
        "SELECT row_to_json(c) FROM customers c",
        "SELECT CASE WHEN salary > 90000 THEN 1 END FROM customers",
        "SELECT id FROM customers WHERE id IN (SELECT id FROM customers WHERE salary > 1)",
        "SELECT * FROM rich",
        "COPY customers TO STDOUT",
        "COPY (SELECT email FROM customers) TO STDOUT",
        "SELECT most_common_vals FROM pg_stats WHERE tablename = 'customers'",
        "SELECT id, row_number() OVER (ORDER BY salary) FROM customers",
        "SELECT id FROM customers LIMIT (SELECT length(email) FROM customers LIMIT 1)",
    ] {
        denied(&s, sql);
    }
    // Columns that are not masked stay readable; COPY of them works.
    masked(&s, "COPY customers (id) TO STDOUT", "3");
    // An identity without masks sees everything.
    let o = psql_ok(
        &conn_as(&s.pgward, AUDITOR),
        &["-At", "-c", "SELECT email FROM customers WHERE id = 1"],
    );
    assert!(o.contains("alice.secret@contoso.com"), "{o}");

    // Wide rows and a large result: 20,000 rows of 2 kB, the masked column rewritten in
    // every one of them, the rest byte for byte.
    let (ok, out) = analyst(
        &s,
        "SELECT count(*), count(DISTINCT length(payload)) FROM wide",
    );
    assert!(ok && out.trim() == "20000|1", "{out}");
    let o = psql(
        &conn_as(&s.pgward, ANALYST),
        &[
            "-At",
            "-c",
            "SELECT id, payload, secret FROM wide ORDER BY id",
        ],
        None,
    );
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 20000);
    assert!(
        !text.contains("secret-"),
        "an unmasked value in the large result"
    );
    let payload = "x".repeat(2000);
    assert!(lines
        .iter()
        .enumerate()
        .all(|(i, l)| *l == format!("{}|{payload}|[hidden]", i + 1)));

    // tokio-postgres: extended protocol, binary results.
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let (client, conn) =
            tokio_postgres::connect(&conn_as(&s.pgward, ANALYST), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
        tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT email, name, ssn FROM customers WHERE id = $1",
                &[&2i32],
            )
            .await
            .unwrap_or_else(|e| panic!("query: {e}"));
        let email: String = row.get(0);
        let name: String = row.get(1);
        let ssn: String = row.get(2);
        assert_eq!(email, "****@fabrikam.com");
        assert_eq!(name, "B****");
        assert_eq!(ssn.len(), 32);
        // A named statement run many times, as drivers do after a few executions.
        let stmt = client
            .prepare("SELECT email FROM customer_emails WHERE id = $1")
            .await
            .unwrap_or_else(|e| panic!("prepare: {e}"));
        for id in 1..=3i32 {
            let v: String = client
                .query_one(&stmt, &[&id])
                .await
                .unwrap_or_else(|e| panic!("execute: {e}"))
                .get(0);
            assert!(v.starts_with("****@"), "{v}");
        }
        let e = client
            .query("SELECT id FROM customers WHERE email = $1", &[&"x"])
            .await
            .err()
            .and_then(|e| e.code().cloned());
        assert_eq!(
            e,
            Some(tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        );
    });

    // psycopg (binary and text) and asyncpg.
    let out = run_python(
        "masking.py",
        &[
            ("CONN", conn_as(&s.pgward, ANALYST)),
            (
                "URL",
                format!(
                    "postgresql://alice%40contoso.com@127.0.0.1:{}/app?sslmode=disable",
                    s.pgward.port
                ),
            ),
        ],
    );
    assert!(out.contains("all masking checks passed"), "{out}");
    assert_clean("python clients", &out);

    // Metrics and audit: masked values counted, denials counted by rule, statement
    // records list the masked columns read.
    assert!(s.pgward.metric("pgward_masked_values_total") >= 20000.0);
    let metrics = s
        .pgward
        .admin_get("/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(
        metrics.contains("pgward_mask_denials_total{rule=\"salary\"}"),
        "{metrics}"
    );
    let audit = std::fs::read_to_string(s.audit.clone()).unwrap_or_default();
    assert!(
        audit.contains("\"object\":\"public.customers.email (email)\",\"action\":\"mask\""),
        "no masked column in the audit records"
    );
    assert_clean(
        "audit",
        &audit
            .replace("alice.secret@contoso.com", "")
            .replace("bob.secret@fabrikam.com", ""),
    );
}

/// pgjdbc: plain and server-side prepared statements (binary transfer) under masks.
#[test]
fn jdbc_sees_masked_values() {
    const JAR: &str = "/usr/share/java/postgresql.jar";
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    let (Some(javac), Some(java)) = (find("javac"), find("java")) else {
        panic!("the JDBC test needs a JDK (apt-get install -y default-jdk-headless libpostgresql-jdbc-java; scripts/test installs it)");
    };
    assert!(
        Path::new(JAR).is_file(),
        "{JAR} missing (libpostgresql-jdbc-java)"
    );
    let s = stand();
    let classes = s._dir.path().join("classes");
    std::fs::create_dir_all(&classes).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("java/MaskCheck.java");
    let out = std::process::Command::new(javac)
        .args(["-Xlint:all", "-Werror", "-d"])
        .arg(&classes)
        .args(["-cp", JAR])
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("javac: {e}"));
    assert!(
        out.status.success(),
        "javac: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = format!(
        "jdbc:postgresql://127.0.0.1:{}/app?sslmode=disable&connectTimeout=10&socketTimeout=60",
        s.pgward.port
    );
    let out = std::process::Command::new(java)
        .arg("-cp")
        .arg(format!("{}:{JAR}", classes.display()))
        .args(["MaskCheck", &url, ANALYST])
        .output()
        .unwrap_or_else(|e| panic!("java: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all jdbc mask checks passed"),
        "MaskCheck:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean("jdbc", &stdout);
}

/// A reload that gives a connected caller masks: that session's statements are refused
/// until it reconnects (nothing would rewrite its rows), and a new session sees them masked.
#[test]
fn a_reload_that_adds_masks_holds_for_open_sessions() {
    let db = Database::start();
    db.sql("app", SCHEMA);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let policy = dir.path().join("policy.toml");
    let unmasked = r#"
[[roles]]
name = "analyst"
members = { users = ["alice@contoso.com"] }
allow = [ { actions = ["select"], objects = ["public.*"] } ]
"#;
    std::fs::write(&policy, unmasked).unwrap_or_else(|e| panic!("write policy: {e}"));
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            tls: false,
            policy: Some(policy.clone()),
            ..Default::default()
        },
    );
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let (client, conn) =
            tokio_postgres::connect(&conn_as(&pgward, ANALYST), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
        tokio::spawn(conn);
        let before: String = client
            .query_one("SELECT email FROM customers WHERE id = 1", &[])
            .await
            .unwrap_or_else(|e| panic!("query: {e}"))
            .get(0);
        assert_eq!(before, "alice.secret@contoso.com");
        let masked = format!(
            "{unmasked}mask = [ {{ columns = [\"public.customers.email\"], with = \"email\" }} ]\n"
        );
        std::fs::write(&policy, masked).unwrap_or_else(|e| panic!("write policy: {e}"));
        // The policy file is watched every second.
        let mut refused = None;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            match client
                .simple_query("SELECT email FROM customers WHERE id = 1")
                .await
            {
                Ok(rows) => {
                    let text = format!("{rows:?}");
                    assert!(
                        text.contains("alice.secret"),
                        "masked rows before the refusal? {text}"
                    );
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let e = refused.unwrap_or_else(|| panic!("the open session was never refused"));
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        );
        assert!(format!("{e:?}").contains("reconnect"), "{e:?}");
        // A new session has the masks.
        let (fresh, conn) =
            tokio_postgres::connect(&conn_as(&pgward, ANALYST), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
        tokio::spawn(conn);
        // Until the catalog is read again with the columns masks need (it was read
        // without them: the policy had no masks), the statement is refused, never
        // answered unmasked.
        let mut after = None;
        for _ in 0..50 {
            match fresh
                .query_one("SELECT email FROM customers WHERE id = 1", &[])
                .await
            {
                Ok(row) => {
                    after = Some(row.get::<_, String>(0));
                    break;
                }
                Err(e) => {
                    assert_eq!(
                        e.code(),
                        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                        "{e:?}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
        assert_eq!(after.as_deref(), Some("****@contoso.com"));
    });
}
