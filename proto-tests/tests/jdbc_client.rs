//! The PostgreSQL JDBC driver (pgjdbc, Debian's libpostgresql-jdbc-java) through pgward over
//! TLS, under a policy role that may only read `public.orders`: the driver connects with its
//! own startup parameters, runs the DatabaseMetaData / ResultSetMetaData introspection tools
//! do, a parameterised query past prepareThreshold (a named server-side prepared statement),
//! transactions, and gets 42501 for a write and for a read of another table while the
//! connection stays usable. The Java side is proto-tests/java/JdbcCheck.java, compiled here
//! with `javac` (no build tool); scripts/test installs the JDK and the driver.
//!
//! In development mode (no [entra]) pgward takes the client's user name as the principal's
//! UPN, so the JDBC user `dana@contoso.com` holds `orders_reader`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgward_proto_tests::*;

const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";
const USER: &str = "dana@contoso.com";

const POLICY: &str = r#"
mode = "enforce"
search_path = ["public"]

[[roles]]
name = "orders_reader"
members = { users = ["dana@contoso.com"] }
allow = [ { name = "orders_only", actions = ["select"], objects = ["public.orders"] } ]
"#;

/// The harness made public.orders (id serial, item, qty) with 100 rows; add a numeric and a
/// timestamptz column with known values, and a second table the role may not read.
const SCHEMA: &str = r#"
ALTER TABLE orders ADD total numeric(10,2), ADD placed_at timestamptz;
UPDATE orders SET total = id * 1.25,
  placed_at = timestamptz '2024-05-06 07:08:09+00' + id * interval '1 hour';
CREATE TABLE salaries (id int PRIMARY KEY, amount numeric);
INSERT INTO salaries VALUES (1, 250000);
GRANT ALL ON salaries TO pgward_proxy;
"#;

/// `javac`/`java` and the driver jar, or a panic naming the Debian packages that provide them.
fn java_toolchain() -> (PathBuf, PathBuf) {
    let find = |name: &str| -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    let javac = find("javac");
    let java = find("java");
    let jar = Path::new(JDBC_JAR).is_file();
    match (javac, java, jar) {
        (Some(javac), Some(java), true) => (javac, java),
        (javac, java, jar) => panic!(
            "the JDBC test needs a JDK and the PostgreSQL JDBC driver: javac {}, java {}, {JDBC_JAR} {} \
             (apt-get install -y default-jdk-headless libpostgresql-jdbc-java; scripts/test installs them)",
            if javac.is_some() { "found" } else { "missing" },
            if java.is_some() { "found" } else { "missing" },
            if jar { "found" } else { "missing" },
        ),
    }
}

/// Runs `cmd` with its output in `dir`, killing it after `timeout`; (success, stdout, stderr).
fn run_with_timeout(
    mut cmd: Command,
    dir: &Path,
    name: &str,
    timeout: Duration,
) -> (bool, String, String) {
    let out_path = dir.join(format!("{name}.out"));
    let err_path = dir.join(format!("{name}.err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let mut stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if status.is_none() {
        stderr.push_str(&format!("\n(killed after {timeout:?})"));
    }
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

#[test]
fn jdbc_under_a_one_table_role() {
    let (javac, java) = java_toolchain();
    let started = Instant::now();
    let db = Database::start_with(PgOptions {
        log_statements: true,
        ..Default::default()
    });
    db.sql("app", SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("one-table.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            policy: Some(policy),
            ..Default::default()
        },
    );

    let classes = dir.path().join("classes");
    std::fs::create_dir(&classes).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("java/JdbcCheck.java");
    let mut compile = Command::new(javac);
    compile
        .args(["-Xlint:all", "-Werror", "-d"])
        .arg(&classes)
        .args(["-cp", JDBC_JAR])
        .arg(&source);
    let (ok, out, err) = run_with_timeout(compile, dir.path(), "javac", Duration::from_secs(120));
    assert!(ok, "javac {}:\n{out}\n{err}", source.display());

    // TLS, verifying pgward's certificate and host name against the harness's CA.
    let ca = pgward.ca.as_ref().expect("pgward serves TLS");
    let url = format!(
        "jdbc:postgresql://127.0.0.1:{}/app?sslmode=verify-full&sslrootcert={}&connectTimeout=10&socketTimeout=60",
        pgward.port,
        ca.display()
    );
    let mut run = Command::new(java);
    run.arg("-cp")
        .arg(format!("{}:{JDBC_JAR}", classes.display()))
        .args(["JdbcCheck", &url, USER]);
    let (ok, out, err) = run_with_timeout(run, dir.path(), "java", Duration::from_secs(180));
    assert!(
        ok,
        "JdbcCheck failed:\nstdout:\n{out}\nstderr:\n{err}\npgward log (tail):\n{}",
        tail(&pgward.log(), 60)
    );
    for line in [
        "ok connect",
        "ok metadata.getTables",
        "ok metadata.getColumns",
        "ok metadata.getPrimaryKeys",
        "ok metadata.getIndexInfo",
        "ok metadata.getTypeInfo",
        "ok metadata.getSchemas",
        "ok statement select + ResultSetMetaData",
        "ok prepared select x8 (server-side prepare)",
        "ok value types (numeric, timestamptz, text)",
        "ok transaction (setAutoCommit(false), isolation, savepoint, commit)",
        "ok read-only transaction",
        "ok denied: INSERT into orders (Statement)",
        "ok denied: INSERT into orders (PreparedStatement)",
        "ok denied: SELECT from salaries (Statement)",
        "ok denied: SELECT from salaries (PreparedStatement)",
        "ok denied: batch INSERT into orders",
        "ok usable after denied batch",
        "ok denial inside a transaction aborts it (25P02), rollback recovers",
        "all jdbc checks passed",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(line)),
            "missing `{line}` in:\n{out}"
        );
    }
    assert!(!out.contains("FAIL"), "{out}");
    eprintln!("{out}");

    // The server saw the parameterised query as a named prepared statement (the driver's
    // S_n, after prepareThreshold), and none of the refused statements.
    std::thread::sleep(Duration::from_millis(300));
    let log = db.pg.log();
    assert!(
        log.lines()
            .any(|l| l.contains("execute S_") && l.contains("jdbc-prepared")),
        "no named prepared statement in the server log:\n{}",
        tail(&log, 40)
    );
    assert!(
        !log.contains("jdbc-denied-"),
        "a denied statement reached the server:\n{}",
        log.lines()
            .filter(|l| l.contains("jdbc-denied-"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        db.sql(
            "app",
            "SELECT count(*) FROM orders WHERE item = 'jdbc-write'"
        ),
        "0"
    );
    eprintln!("jdbc test took {:?}", started.elapsed());
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
