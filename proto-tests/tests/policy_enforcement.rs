//! How a denial looks on the wire: the exact replies for simple and extended protocol,
//! transactions, FunctionCall, observe mode, hot reload, and a client trying to forge
//! the error pgward rewrites.

use std::io::Write;
use std::time::Duration;

use pgward_proto_tests::raw::{self, read_until_ready, sqlstate};
use pgward_proto_tests::*;

const POLICY: &str = r#"
mode = "enforce"
[[roles]]
name = "reader"
members = { users = ["alice@contoso.com"] }
allow = [ { name = "read_orders", actions = ["select"], objects = ["public.orders"] } ]
"#;

fn start(policy: &str) -> (Database, Pgward, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let db = Database::start();
    db.sql(
        "app",
        "CREATE TABLE salaries (who text, amount int); INSERT INTO salaries VALUES ('x', 1);",
    );
    db.sql("app", &format!("GRANT ALL ON salaries TO {PROXY_ROLE}"));
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            policy: Some(path),
            ..Default::default()
        },
    );
    (db, pgward, dir)
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

fn error_text(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter()
        .filter(|m| m.0 == b'E')
        .map(|m| format!("{} {}", sqlstate(&m.1), String::from_utf8_lossy(&m.1)))
        .collect()
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    raw::message(b'P', &b)
}

fn bind_execute_sync(name: &str) -> Vec<u8> {
    let mut bind = vec![0];
    bind.extend_from_slice(name.as_bytes());
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    let mut out = raw::message(b'B', &bind);
    out.extend(raw::message(b'E', &[0, 0, 0, 0, 0]));
    out.extend(raw::message(b'S', &[]));
    out
}

#[test]
fn simple_protocol_denial_is_an_ordinary_error() {
    let (db, pgward, _dir) = start(POLICY);
    let mut s = session(pgward.port, "alice@contoso.com");
    // Pipelined: allowed, denied, allowed — each answered in order.
    let mut batch = raw::query("SELECT count(*) FROM orders");
    batch.extend(raw::query("SELECT * FROM salaries"));
    batch.extend(raw::query("SELECT 1 FROM orders LIMIT 1"));
    s.write_all(&batch).unwrap();
    let first = read_until_ready(&mut s);
    assert_eq!(tags(&first), "TDCZ");
    let denied = read_until_ready(&mut s);
    assert_eq!(tags(&denied), "EZ", "{denied:?}");
    let text = error_text(&denied);
    assert!(text.starts_with("42501"), "{text}");
    assert!(
        text.contains("pgward policy denied this statement (rule default_deny)"),
        "{text}"
    );
    assert!(!text.contains("pgward-denied"), "marker leaked: {text}");
    assert_eq!(tags(&read_until_ready(&mut s)), "TDCZ");
    assert_eq!(db.sql("app", "SELECT count(*) FROM salaries"), "1");
}

#[test]
fn denial_in_a_transaction_aborts_it() {
    let (db, pgward, _dir) = start(POLICY);
    let mut s = session(pgward.port, "alice@contoso.com");
    for (sql, expect) in [
        ("BEGIN", "CZ"),
        ("SELECT count(*) FROM orders", "TDCZ"),
        ("DELETE FROM orders", "EZ"),
        ("SELECT count(*) FROM orders", "EZ"),
        ("COMMIT", "CZ"),
    ] {
        s.write_all(&raw::query(sql)).unwrap();
        let msgs = read_until_ready(&mut s);
        assert_eq!(tags(&msgs), expect, "{sql}: {msgs:?}");
        if sql.starts_with("SELECT") && expect == "EZ" {
            assert!(
                error_text(&msgs).starts_with("25P02"),
                "{}",
                error_text(&msgs)
            );
        }
        if sql == "COMMIT" {
            assert!(
                msgs[0].1.starts_with(b"ROLLBACK"),
                "COMMIT must answer ROLLBACK"
            );
        }
        let status = msgs.last().unwrap().1[0];
        let expected_status = match sql {
            "BEGIN" => b'T',
            "COMMIT" => b'I',
            "DELETE FROM orders" | "SELECT count(*) FROM orders" if expect == "EZ" => b'E',
            _ => b'T',
        };
        assert_eq!(status as char, expected_status as char, "{sql}");
    }
    assert_eq!(db.sql("app", "SELECT count(*) FROM orders"), "100");
}

#[test]
fn extended_protocol_is_decided_at_parse() {
    let (db, pgward, _dir) = start(POLICY);
    let mut s = session(pgward.port, "alice@contoso.com");
    // Denied Parse: the client gets the error for Parse, Bind/Execute are skipped, Sync
    // answers ReadyForQuery — exactly as for a statement the server itself rejects.
    let mut batch = parse("s1", "UPDATE orders SET qty = 0");
    batch.extend(bind_execute_sync("s1"));
    s.write_all(&batch).unwrap();
    let msgs = read_until_ready(&mut s);
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert!(error_text(&msgs).starts_with("42501"));
    // The statement does not exist upstream, so it can't be bound later either.
    s.write_all(&bind_execute_sync("s1")).unwrap();
    let msgs = read_until_ready(&mut s);
    assert!(
        error_text(&msgs).starts_with("26000"),
        "{}",
        error_text(&msgs)
    );
    // An allowed statement in the same session works, named and reused.
    let mut batch = parse("s2", "SELECT qty FROM orders WHERE id = 1");
    batch.extend(bind_execute_sync("s2"));
    batch.extend(bind_execute_sync("s2"));
    s.write_all(&batch).unwrap();
    assert_eq!(tags(&read_until_ready(&mut s)), "12DCZ");
    assert_eq!(tags(&read_until_ready(&mut s)), "2DCZ");
    // SQL EXECUTE of a protocol-level statement is decided as what was prepared.
    s.write_all(&raw::query("EXECUTE s2")).unwrap();
    assert_eq!(tags(&read_until_ready(&mut s)), "TDCZ");
    assert_eq!(db.sql("app", "SELECT min(qty) FROM orders"), "1");
}

#[test]
fn function_call_messages_are_refused() {
    let (_db, pgward, _dir) = start(POLICY);
    let mut s = session(pgward.port, "alice@contoso.com");
    // FunctionCall for oid 2624 (pg_read_file): decided as a call of pg_catalog.pg_read_file,
    // a dangerous function no rule names, and refused without reaching the server
    // (tests/function_call.rs has the rest).
    let mut body = 2624u32.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 10]);
    body.extend_from_slice(b"postgresql");
    body.extend_from_slice(&[0, 0]);
    s.write_all(&raw::message(b'F', &body)).unwrap();
    let msgs = read_until_ready(&mut s);
    assert_eq!(tags(&msgs), "EZ");
    assert!(
        error_text(&msgs).contains("builtin.dangerous_function"),
        "{}",
        error_text(&msgs)
    );
    s.write_all(&raw::query("SELECT 1")).unwrap();
    assert_eq!(tags(&read_until_ready(&mut s)), "TDCZ");
}

#[test]
fn a_client_cannot_forge_the_marker() {
    let (_db, pgward, _dir) = start(POLICY);
    let mut s = session(pgward.port, "alice@contoso.com");
    // The client raises an error that looks like pgward's marker; without the session's
    // secret nonce it stays the server's own error.
    s.write_all(&raw::query(
        "SELECT 'pgward-denied-0000000000000000-0'::int4",
    ))
    .unwrap();
    let msgs = read_until_ready(&mut s);
    assert!(
        error_text(&msgs).starts_with("22P02"),
        "{}",
        error_text(&msgs)
    );
}

#[test]
fn observe_mode_and_hot_reload() {
    let (_db, pgward, dir) = start(&POLICY.replace("\"enforce\"", "\"observe\""));
    let mut s = session(pgward.port, "alice@contoso.com");
    s.write_all(&raw::query("SELECT count(*) FROM salaries"))
        .unwrap();
    assert_eq!(
        tags(&read_until_ready(&mut s)),
        "TDCZ",
        "observe mode must not block"
    );
    assert!(pgward
        .log()
        .contains("policy would deny this statement (observe mode)"));

    // Switch to enforce by editing the file: the watch picks it up, open sessions included.
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    assert!(wait_until(Duration::from_secs(10), || pgward
        .log()
        .contains("policy reloaded")));
    s.write_all(&raw::query("SELECT count(*) FROM salaries"))
        .unwrap();
    assert!(error_text(&read_until_ready(&mut s)).starts_with("42501"));

    // A broken edit keeps the last good policy.
    std::fs::write(dir.path().join("policy.toml"), "[[roles]]\nname = 1\n").unwrap();
    assert!(wait_until(Duration::from_secs(10), || pgward
        .log()
        .contains("policy reload failed")));
    s.write_all(&raw::query("SELECT count(*) FROM salaries"))
        .unwrap();
    assert!(error_text(&read_until_ready(&mut s)).starts_with("42501"));
    s.write_all(&raw::query("SELECT count(*) FROM orders"))
        .unwrap();
    assert_eq!(tags(&read_until_ready(&mut s)), "TDCZ");
}

#[test]
fn startup_parameters_are_decided_by_the_policy() {
    let (_db, pgward, _dir) = start(POLICY);
    // application_name is harmless; the policy's baseline allows it.
    let _ok = session(pgward.port, "alice@contoso.com");
    let mut s = raw::connect(pgward.port);
    s.write_all(&raw::startup_packet(
        0,
        &[
            ("user", "alice@contoso.com"),
            ("database", "app"),
            ("application_name", "x"),
        ],
    ))
    .unwrap();
    assert_eq!(read_until_ready(&mut s).last().unwrap().0, b'Z');
}
