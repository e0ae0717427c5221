//! Analysis no caller can turn against others: one caller sends megabyte statements built
//! to be expensive to parse while another measures `SELECT 1` and new sign-ins; strings
//! over `[policy] max_statement_bytes` or `analysis_timeout_ms` are refused with 54000
//! and the session stays usable; nothing refused reaches the server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgward_proto_tests::wire::Wire;
use pgward_proto_tests::*;

const CALLER: &str = "dana@contoso.com";

const POLICY: &str = r#"
mode = "enforce"
search_path = ["public"]

[[roles]]
name = "orders_reader"
members = { users = ["dana@contoso.com"] }
allow = [ { actions = ["select"], objects = ["public.orders"] } ]
"#;

fn setup(policy_extra: &[&str]) -> (Database, Pgward, tempfile::TempDir) {
    let db = Database::start_with(PgOptions {
        log_statements: true,
        ..Default::default()
    });
    db.sql("app", "CREATE TABLE salaries (id int, amount numeric)");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            tls: false,
            policy: Some(policy),
            policy_extra: policy_extra.iter().map(|s| s.to_string()).collect(),
            log_level: "info",
            ..Default::default()
        },
    );
    (db, pgward, dir)
}

fn fill(head: &str, unit: &str, size: usize) -> String {
    format!("{head}{}", unit.repeat((size - head.len()) / unit.len()))
}

/// Megabyte statements that cost the most to analyse: chains the complexity scan refuses,
/// and flat ones (a long AND list, 40-operator chains) that must be parsed in full.
fn hostile(i: usize) -> String {
    let size = 1 << 20;
    match i % 4 {
        0 => fill("SELECT '1'", "::text", size),
        1 => fill(
            &format!("SELECT * FROM salaries WHERE id = {i}"),
            " AND amount = 1",
            size,
        ),
        2 => {
            let mut s = fill("SELECT ", &format!("1{},", "+1".repeat(40)), size);
            s.pop();
            s
        }
        _ => fill(
            &format!("SELECT {i} FROM orders"),
            " JOIN orders ON true",
            size,
        ),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Two callers send megabyte hostile statements back to back (pgward runs two runtime
/// threads here, one per CPU: before analysis moved off them, two such callers stalled
/// everything). Another session's `SELECT 1` and new sign-ins stay fast.
#[test]
fn hostile_statements_do_not_delay_other_sessions() {
    let (db, pgward, _dir) = setup(&[]);
    let port = pgward.port;

    // A megabyte statement that is allowed passes whole, within the default budget.
    let ids: Vec<String> = (100_000..280_000).map(|i| i.to_string()).collect();
    let big = format!(
        "SELECT count(*) FROM orders WHERE id IN ({})",
        ids.join(",")
    );
    assert!(big.len() > 1 << 20);
    let r = Wire::connect(port, CALLER).query(&big);
    assert!(r.ok() && r.rows == 1, "{r:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attackers: Vec<_> = (0..2)
        .map(|a| {
            let stop = Arc::clone(&stop);
            let sent = Arc::clone(&sent);
            std::thread::spawn(move || {
                let mut w = Wire::connect(port, CALLER);
                let mut codes = Vec::new();
                let mut i = a;
                while !stop.load(Ordering::Relaxed) {
                    let r = w.query(&hostile(i));
                    assert_ne!(r.status, 0, "the attacker's session ended: {r:?}");
                    codes.push(r.code().to_owned());
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 2;
                }
                codes
            })
        })
        .collect();

    // Let the attack get going, then measure.
    std::thread::sleep(Duration::from_millis(500));
    let mut w = Wire::connect(port, CALLER);
    let mut latencies = Vec::new();
    let mut sign_ins = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let t = Instant::now();
        let r = w.query("SELECT 1");
        latencies.push(t.elapsed());
        assert!(r.ok() && r.rows == 1, "{r:?}");
        if latencies.len() % 50 == 0 {
            let t = Instant::now();
            let mut fresh = Wire::connect(port, CALLER);
            assert!(fresh.query("SELECT 1").ok());
            sign_ins.push(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let mut codes: Vec<String> = Vec::new();
    for a in attackers {
        codes.extend(a.join().unwrap());
    }
    latencies.sort();
    sign_ins.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    println!(
        "SELECT 1 under attack: {} queries, p50 {p50:?}, p99 {p99:?}, max {max:?}; sign-in + SELECT 1: {} tries, p50 {:?}, max {:?}; hostile statements answered: {} (codes {:?})",
        latencies.len(),
        sign_ins.len(),
        percentile(&sign_ins, 0.5),
        sign_ins[sign_ins.len() - 1],
        sent.load(Ordering::Relaxed),
        {
            let mut c = codes.clone();
            c.sort();
            c.dedup();
            c
        }
    );
    assert!(
        codes.len() >= 4,
        "the attackers should have been answered: {codes:?}"
    );
    // Every hostile statement is refused: over the complexity limits (54000) or by the
    // policy (salaries, 42501).
    assert!(
        codes.iter().all(|c| c == "54000" || c == "42501"),
        "{codes:?}"
    );
    // Generous bounds, so a loaded CI machine does not fail the test: without the pool one
    // hostile statement held a runtime thread for seconds, so every other session on it
    // waited that long. The measured figures are printed above and kept in
    // docs/performance.md; this asserts the difference in kind.
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    assert!(
        sign_ins[sign_ins.len() - 1] < Duration::from_secs(5),
        "{sign_ins:?}"
    );
    // Nothing refused reached the server.
    let log = db.pg.log();
    assert!(
        !log.contains("::text::text") && !log.contains("AND amount = 1"),
        "a refused statement reached the server"
    );
}

/// Over the length limit or the time budget: 54000 with a message naming the setting; the
/// session stays usable and the refused string never reaches the server.
#[test]
fn over_budget_is_refused_with_54000() {
    let (db, pgward, _dir) = setup(&["max_statement_bytes = 2097152", "analysis_timeout_ms = 50"]);
    let mut w = Wire::connect(pgward.port, CALLER);

    let long = format!("SELECT 1 /* {} */", "x".repeat(3 << 20));
    let r = w.query(&long);
    assert_eq!(r.code(), "54000", "{r:?}");
    assert!(
        r.errors[0]
            .message
            .contains("over [policy] max_statement_bytes = 2097152"),
        "{r:?}"
    );
    assert!(w.query("SELECT 1").ok());

    // A flat megabyte (parsed in full, hundreds of milliseconds) over a 50 ms budget.
    let slow = fill("SELECT * FROM orders WHERE id = 1", " AND qty = 7", 1 << 20);
    let r = w.query(&slow);
    assert_eq!(r.code(), "54000", "{r:?}");
    assert_eq!(
        r.errors[0].message,
        "pgward refused this statement: analysis took longer than [policy] analysis_timeout_ms = 50"
    );
    // The same through the extended protocol (Parse).
    let mut b = wire::parse("", &slow);
    b.extend(wire::bind("", ""));
    b.extend(wire::execute("", 0));
    b.extend(wire::sync());
    w.send(&b);
    let r = w.read_reply();
    assert_eq!(r.code(), "54000", "{r:?}");
    // The session is usable at once (its overrunning job finishes on its own).
    let r = w.query("SELECT count(*) FROM orders");
    assert!(r.ok() && r.rows == 1, "{r:?}");

    let log = db.pg.log();
    assert!(
        !log.contains("xxxxxxxxxx"),
        "the long string reached the server"
    );
    assert!(
        !log.contains("AND qty = 7"),
        "the slow string reached the server"
    );
}
