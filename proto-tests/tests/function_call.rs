//! The FunctionCall protocol message, which drivers' large-object APIs send (psycopg2's
//! `lobject` through libpq's lo_* functions, psql's `\lo_import`, pgjdbc's
//! LargeObjectManager): decided as a call of the function its OID names on the upstream, so a
//! role allowed the large-object functions by name can use these APIs, a role that is not gets
//! 42501, and a call of the server-side lo_import, of another dangerous function, of a
//! user-defined function no rule allows, or of an OID the server's catalog doesn't list stays
//! refused. Each call is audited with the function's name and arguments.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgward_proto_tests::raw::{self, read_until_ready, sqlstate};
use pgward_proto_tests::*;
use serde_json::Value;

const POLICY: &str = r#"
search_path = ["public"]

[[roles]]
name = "lo_user"
members = { users = ["alice@contoso.com"] }
allow = [
  # What drivers' large-object APIs call (docs/policy.md); not the server-side lo_import/lo_export.
  { name = "large_objects", functions = ["lo_creat", "lo_create", "lo_open", "lo_close", "loread", "lowrite", "lo_lseek", "lo_lseek64", "lo_tell", "lo_tell64", "lo_truncate", "lo_truncate64", "lo_unlink"] },
  { name = "read_orders", actions = ["select"], objects = ["public.orders"] },
]

[[roles]]
name = "reader"
members = { users = ["bob@contoso.com"] }
allow = [ { name = "read_orders", actions = ["select"], objects = ["public.orders"] } ]
"#;

struct Setup {
    db: Database,
    pgward: Pgward,
    dir: tempfile::TempDir,
}

fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let db = Database::start();
    // A function of the caller's own, which no rule allows.
    db.sql(
        "app",
        "CREATE FUNCTION public.report(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 2';",
    );
    let audit = format!(
        "[audit]\nfile = \"{}\"\nredaction = \"full\"\n",
        dir.path().join("audit/pgward.jsonl").display()
    );
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            policy: Some(policy),
            extra_toml: audit,
            ..Default::default()
        },
    );
    Setup { db, pgward, dir }
}

fn records(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("audit/pgward.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn function_calls(recs: &[Value]) -> Vec<&Value> {
    recs.iter()
        .filter(|r| r["event"] == "statement" && r["protocol"] == "function_call")
        .collect()
}

fn dsn(pgward: &Pgward, user: &str) -> String {
    pgward
        .conn("app", "require")
        .replace("user=alice", &format!("user={user}"))
}

/// A FunctionCall message: text-format arguments, text result.
fn function_call(oid: u32, args: &[Option<&[u8]>]) -> Vec<u8> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&(args.len() as u16).to_be_bytes());
    for a in args {
        match a {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    raw::message(b'F', &body)
}

fn session(port: u16, user: &str) -> std::net::TcpStream {
    let mut s = raw::connect(port);
    s.write_all(&raw::startup_packet(
        0,
        &[("user", user), ("database", "app")],
    ))
    .unwrap();
    let msgs = read_until_ready(&mut s);
    assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'), "{msgs:?}");
    s
}

fn tags(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter().map(|m| m.0 as char).collect()
}

fn errors(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter()
        .filter(|m| m.0 == b'E')
        .map(|m| format!("{} {}", sqlstate(&m.1), String::from_utf8_lossy(&m.1)))
        .collect()
}

fn oid_of(db: &Database, regprocedure: &str) -> u32 {
    db.sql(
        "app",
        &format!("SELECT '{regprocedure}'::pg_catalog.regprocedure::pg_catalog.oid"),
    )
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn psycopg2_lobject_and_psql_large_objects_by_function_name() {
    let s = start();
    let out = run_python(
        "large_objects.py",
        &[
            ("PGWARD_DSN_ALLOWED", dsn(&s.pgward, "alice@contoso.com")),
            ("PGWARD_DSN_DENIED", dsn(&s.pgward, "bob@contoso.com")),
        ],
    );
    eprintln!("{out}");
    for line in [
        "ok lobject write",
        "ok lobject read back",
        "ok lobject truncate",
        "ok object unlinked",
        "ok lobject refused",
        "ok session usable after refusal",
    ] {
        assert!(out.lines().any(|l| l == line), "missing `{line}`:\n{out}");
    }

    // psql's \lo_import and \lo_export are client-side: lo_creat, lo_open, lowrite, loread
    // and lo_close by FunctionCall.
    let src = s.dir.path().join("in.bin");
    let back = s.dir.path().join("out.bin");
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(&src, &bytes).unwrap();
    let alice = dsn(&s.pgward, "alice@contoso.com");
    let imported = psql_ok(&alice, &["-c", &format!("\\lo_import {}", src.display())]);
    let oid: u32 = imported
        .trim()
        .strip_prefix("lo_import ")
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("{imported}"));
    psql_ok(
        &alice,
        &["-c", &format!("\\lo_export {oid} {}", back.display())],
    );
    assert_eq!(std::fs::read(&back).unwrap(), bytes, "exported bytes");
    let bob = dsn(&s.pgward, "bob@contoso.com");
    let out = psql(
        &bob,
        &["-c", &format!("\\lo_export {oid} {}", back.display())],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("builtin.dangerous_function"), "{err}");

    // Each call is audited as the call of its function, with its arguments.
    std::thread::sleep(Duration::from_millis(200));
    let recs = records(s.dir.path());
    let calls = function_calls(&recs);
    let open = calls
        .iter()
        .find(|r| {
            r["sql"] == "SELECT \"pg_catalog\".\"lo_open\"($1, $2)" && r["decision"] == "allow"
        })
        .unwrap_or_else(|| panic!("no lo_open record among {calls:#?}"));
    assert_eq!(open["outcome"]["command_tag"], "FUNCTION CALL", "{open}");
    assert_eq!(open["params"].as_array().map(Vec::len), Some(2), "{open}");
    assert_eq!(open["client"]["user"], "alice@contoso.com", "{open}");
    assert!(
        calls
            .iter()
            .any(|r| r["sql"].as_str().is_some_and(|s| s.contains("\"lowrite\""))),
        "no lowrite record"
    );
    let refused: Vec<_> = calls
        .iter()
        .filter(|r| r["client"]["user"] == "bob@contoso.com")
        .collect();
    assert!(!refused.is_empty(), "bob's calls not audited");
    for r in refused {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["rule"], "builtin.dangerous_function", "{r}");
        assert_eq!(r["outcome"]["sqlstate"], "42501", "{r}");
    }
    let _ = &s.db;
}

#[test]
fn function_calls_pgward_cannot_allow_are_refused() {
    let s = start();
    let read_file = oid_of(&s.db, "pg_catalog.pg_read_file(text)");
    let report = oid_of(&s.db, "public.report(int)");
    let lo_creat = oid_of(&s.db, "pg_catalog.lo_creat(int)");
    let server_import = oid_of(&s.db, "pg_catalog.lo_import(text)");
    let mut c = session(s.pgward.port, "alice@contoso.com");
    // A dangerous function the role does not name (it names only lo_*).
    c.write_all(&function_call(read_file, &[Some(b"postgresql.conf")]))
        .unwrap();
    let msgs = read_until_ready(&mut c);
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert!(
        errors(&msgs).starts_with("42501") && errors(&msgs).contains("builtin.dangerous_function"),
        "{}",
        errors(&msgs)
    );
    // The server-side lo_import (it reads the server's files), which the rule does not name.
    c.write_all(&function_call(server_import, &[Some(b"/etc/hostname")]))
        .unwrap();
    let msgs = read_until_ready(&mut c);
    assert!(
        errors(&msgs).starts_with("42501") && errors(&msgs).contains("builtin.dangerous_function"),
        "{}",
        errors(&msgs)
    );
    // A function of the caller's own that no rule allows.
    c.write_all(&function_call(report, &[Some(b"21")])).unwrap();
    let msgs = read_until_ready(&mut c);
    assert!(errors(&msgs).starts_with("42501"), "{}", errors(&msgs));
    // An OID the server's catalog does not list: fail closed.
    c.write_all(&function_call(4_000_000_000, &[])).unwrap();
    let msgs = read_until_ready(&mut c);
    assert!(
        errors(&msgs).starts_with("42501") && errors(&msgs).contains("builtin.function_call"),
        "{}",
        errors(&msgs)
    );
    // What the role may call goes through, answered by the server (FunctionCallResponse).
    c.write_all(&function_call(lo_creat, &[Some(b"-1")]))
        .unwrap();
    let msgs = read_until_ready(&mut c);
    assert_eq!(tags(&msgs), "VZ", "{}", errors(&msgs));
    // A FunctionCall cut short is a protocol error, not a panic.
    let mut short = function_call(lo_creat, &[Some(b"-1")]);
    let n = short.len();
    short.truncate(n - 2);
    short[1..5].copy_from_slice(&((n - 3) as u32).to_be_bytes());
    c.write_all(&short).unwrap();
    let msgs = read_until_ready(&mut c);
    assert!(errors(&msgs).starts_with("08P01"), "{msgs:?}");
    // Nothing refused ran: pg_read_file would have failed anyway for the proxy's login, but
    // report() would have run; the audit shows the refusals as such.
    std::thread::sleep(Duration::from_millis(200));
    let recs = records(s.dir.path());
    let calls = function_calls(&recs);
    let report_rec = calls
        .iter()
        .find(|r| r["sql"] == "SELECT \"public\".\"report\"($1)")
        .unwrap_or_else(|| panic!("{calls:#?}"));
    assert_eq!(report_rec["decision"], "deny", "{report_rec}");
    assert_eq!(report_rec["params"][0]["value"], "21", "{report_rec}");
    assert!(
        calls
            .iter()
            .any(|r| r["sql"] == "FunctionCall of function OID 4000000000"
                && r["rule"] == "builtin.function_call"),
        "{calls:#?}"
    );
}

const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs `cmd` to completion within `timeout`; (success, stdout, stderr).
fn run_for(mut cmd: Command, dir: &Path, name: &str, timeout: Duration) -> (bool, String, String) {
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
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

#[test]
fn pgjdbc_large_object_manager() {
    let (Some(javac), Some(java), true) = (
        find_in_path("javac"),
        find_in_path("java"),
        Path::new(JDBC_JAR).is_file(),
    ) else {
        panic!(
            "this test needs a JDK and {JDBC_JAR} (apt-get install -y default-jdk-headless \
             libpostgresql-jdbc-java; scripts/test installs them)"
        );
    };
    let s = start();
    let classes = s.dir.path().join("classes");
    std::fs::create_dir(&classes).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("java/LargeObjects.java");
    let mut compile = Command::new(javac);
    compile
        .args(["-Xlint:all", "-Werror", "-d"])
        .arg(&classes)
        .args(["-cp", JDBC_JAR])
        .arg(&source);
    let (ok, out, err) = run_for(compile, s.dir.path(), "javac", Duration::from_secs(120));
    assert!(ok, "javac {}:\n{out}\n{err}", source.display());
    let ca = s.pgward.ca.as_ref().expect("pgward serves TLS");
    let url = format!(
        "jdbc:postgresql://127.0.0.1:{}/app?sslmode=verify-full&sslrootcert={}&connectTimeout=10&socketTimeout=60",
        s.pgward.port,
        ca.display()
    );
    let mut run = Command::new(java);
    run.arg("-cp")
        .arg(format!("{}:{JDBC_JAR}", classes.display()))
        .args(["LargeObjects", &url, "alice@contoso.com", "bob@contoso.com"]);
    let (ok, out, err) = run_for(run, s.dir.path(), "java", Duration::from_secs(180));
    assert!(ok, "LargeObjects failed:\n{out}\n{err}\n{}", s.pgward.log());
    for line in [
        "ok createLO + write",
        "ok seek + tell",
        "ok read back",
        "ok delete",
        "ok createLO refused",
        "ok usable after refusal",
        "all large object checks passed",
    ] {
        assert!(out.lines().any(|l| l == line), "missing `{line}`:\n{out}");
    }
    let recs = records(s.dir.path());
    assert!(
        function_calls(&recs).iter().any(|r| r["sql"]
            .as_str()
            .is_some_and(|s| s.contains("\"loread\""))
            && r["decision"] == "allow"),
        "no loread record"
    );
}
