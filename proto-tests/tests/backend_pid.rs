//! Clients see the upstream backend's own pid in BackendKeyData, with a secret of pgward's:
//! drivers' backend pid equals `pg_backend_pid()`, a session's own notifications carry it,
//! `pg_stat_activity` finds it, and cancelling through psycopg, psycopg2 and asyncpg works —
//! while a CancelRequest with the real pid and any other secret (the upstream's own, a
//! neighbour's, a guess) does nothing.

use std::io::Write;
use std::time::{Duration, Instant};

use pgward_proto_tests::raw::{self, read_until_ready, sqlstate};
use pgward_proto_tests::*;

fn start() -> (Database, Pgward) {
    let db = Database::start();
    let pgward = Pgward::start(&db, PgwardOptions::default());
    (db, pgward)
}

#[test]
fn drivers_see_the_backend_pid_and_cancel_through_it() {
    let (_db, pgward) = start();
    let out = run_python(
        "backend_pid.py",
        &[
            (
                "PGWARD_DSN",
                format!(
                    "{} application_name=psycopg-pid",
                    pgward.conn("app", "require")
                ),
            ),
            ("PGWARD_HOST", "127.0.0.1".into()),
            ("PGWARD_PORT", pgward.port.to_string()),
            ("PGWARD_USER", "alice".into()),
        ],
    );
    eprintln!("{out}");
    for line in [
        "ok psycopg backend_pid",
        "ok pg_stat_activity finds the session",
        "ok own notification carries the backend pid",
        "ok another session's notification carries its pid",
        "ok psycopg cancel",
        "ok psycopg cancel_safe",
        "ok usable after cancel",
        "ok psycopg2 get_backend_pid",
        "ok psycopg2 own notification pid",
        "ok psycopg2 cancel",
        "ok asyncpg get_server_pid",
        "ok asyncpg own notification pid",
        "ok asyncpg timeout cancel",
    ] {
        assert!(out.lines().any(|l| l == line), "missing `{line}`:\n{out}");
    }
    assert!(!out.contains("FAIL"), "{out}");
    assert!(pgward.metric("pgward_cancel_requests_total") >= 4.0);
}

/// A raw session and its BackendKeyData (pid, secret).
fn session_with_key(port: u16) -> (std::net::TcpStream, u32, [u8; 4]) {
    let mut s = raw::connect(port);
    s.write_all(&raw::startup_packet(
        0,
        &[("user", "a"), ("database", "app")],
    ))
    .unwrap();
    let msgs = read_until_ready(&mut s);
    let key = &msgs.iter().find(|m| m.0 == b'K').expect("BackendKeyData").1;
    let pid = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    (s, pid, [key[4], key[5], key[6], key[7]])
}

fn cancel(port: u16, pid: u32, secret: [u8; 4]) {
    let mut c = raw::connect(port);
    let mut p = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    p.extend_from_slice(&pid.to_be_bytes());
    p.extend_from_slice(&secret);
    c.write_all(&p).unwrap();
    // Like PostgreSQL: the connection just closes, whatever the key.
    assert!(raw::closed(&mut c));
}

fn backend_pid(s: &mut std::net::TcpStream) -> u32 {
    s.write_all(&raw::query("SELECT pg_backend_pid()")).unwrap();
    let msgs = read_until_ready(s);
    let row = msgs.iter().find(|m| m.0 == b'D').expect("a row");
    String::from_utf8_lossy(&row.1[6..]).parse().unwrap()
}

#[test]
fn only_the_whole_key_cancels() {
    let (db, pgward) = start();
    let (mut victim, pid, secret) = session_with_key(pgward.port);
    let (mut neighbour, npid, nsecret) = session_with_key(pgward.port);
    assert_eq!(
        pid,
        backend_pid(&mut victim),
        "the key carries the backend's pid"
    );
    assert_eq!(npid, backend_pid(&mut neighbour));

    victim
        .write_all(&raw::query("SELECT pg_sleep(1.5)"))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        db.sql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND query = 'SELECT pg_sleep(1.5)' AND state = 'active'")
    ) == "1"
    }));
    // The right pid with a wrong secret, with the neighbour's secret, with zeros; the
    // neighbour's pid with the victim's secret. None cancels anything.
    let mut wrong = secret;
    wrong[0] ^= 0x80;
    for (p, s) in [(pid, wrong), (pid, nsecret), (pid, [0; 4]), (npid, secret)] {
        cancel(pgward.port, p, s);
    }
    let msgs = read_until_ready(&mut victim);
    assert!(
        !msgs.iter().any(|m| m.0 == b'E'),
        "a forged key cancelled the query: {msgs:?}"
    );

    // The whole key cancels.
    victim
        .write_all(&raw::query("SELECT pg_sleep(30)"))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        db.sql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND query = 'SELECT pg_sleep(30)' AND state = 'active'")
    ) == "1"
    }));
    let started = Instant::now();
    cancel(pgward.port, pid, secret);
    let msgs = read_until_ready(&mut victim);
    let codes: Vec<String> = msgs
        .iter()
        .filter(|m| m.0 == b'E')
        .map(|m| sqlstate(&m.1))
        .collect();
    assert_eq!(codes, ["57014"], "{msgs:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A stale key (its session ended) does nothing: the neighbour's query runs on.
    drop(victim);
    neighbour
        .write_all(&raw::query("SELECT pg_sleep(1)"))
        .unwrap();
    cancel(pgward.port, pid, secret);
    let msgs = read_until_ready(&mut neighbour);
    assert!(!msgs.iter().any(|m| m.0 == b'E'), "{msgs:?}");
    assert!(pgward.metric("pgward_cancel_requests_total") >= 6.0);
}

#[test]
fn an_address_that_keeps_guessing_is_not_listened_to() {
    let (db, pgward) = start();
    let (mut victim, pid, secret) = session_with_key(pgward.port);
    // 60 guesses of the secret of a pid anyone can see in pg_stat_activity...
    for i in 0..60u32 {
        let guess = (i.wrapping_mul(2_654_435_761)).to_be_bytes();
        if guess != secret {
            cancel(pgward.port, pid, guess);
        }
    }
    // ...and even the right key from that address is not looked up for the rest of the minute.
    victim.write_all(&raw::query("SELECT pg_sleep(1)")).unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        db.sql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND query = 'SELECT pg_sleep(1)' AND state = 'active'")
    ) == "1"
    }));
    cancel(pgward.port, pid, secret);
    let msgs = read_until_ready(&mut victim);
    assert!(!msgs.iter().any(|m| m.0 == b'E'), "{msgs:?}");
    assert!(wait_until(Duration::from_secs(5), || pgward
        .metric("pgward_cancel_requests_total{result=\"throttled\"}")
        >= 1.0));
}
