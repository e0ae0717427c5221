//! Attacks on the wire: garbage, oversized, truncated and slow input, protocol tricks.
//! Each must end only the offending connection, with a clean error where one can be
//! sent, while other sessions keep working.

use std::io::Write;
use std::time::{Duration, Instant};

use pgward_proto_tests::raw::{self, read_message, read_until_ready, sqlstate};
use pgward_proto_tests::*;

fn start() -> (Database, Pgward) {
    let db = Database::start();
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            listen_extra: vec![
                "startup_timeout_secs = 1".into(),
                "max_message_bytes = 1048576".into(),
            ],
            ..Default::default()
        },
    );
    (db, pgward)
}

/// The session opened before an attack still answers, and a new one can be opened.
fn others_still_work(pgward: &Pgward, survivor: &mut std::net::TcpStream) {
    survivor.write_all(&raw::query("SELECT 41 + 1")).unwrap();
    let msgs = read_until_ready(survivor);
    assert!(
        msgs.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"42")),
        "{msgs:?}"
    );
    assert_eq!(
        psql_ok(
            &pgward.conn("app", "require"),
            &["-At", "-c", "SELECT 'fine'"]
        )
        .trim(),
        "fine"
    );
}

fn expect_fatal(s: &mut std::net::TcpStream, code: &str) {
    let (tag, body) = read_message(s).expect("an ErrorResponse before close");
    assert_eq!(tag, b'E', "expected ErrorResponse");
    assert_eq!(sqlstate(&body), code, "{}", String::from_utf8_lossy(&body));
    assert!(raw::closed(s), "connection not closed after FATAL");
}

#[test]
fn garbage_and_malformed_startup_packets() {
    let (_db, pgward) = start();
    let mut survivor = raw::session(pgward.port, "app");

    // HTTP sent to the database port: 'GET ' read as a length is far over the bound.
    let mut s = raw::connect(pgward.port);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    expect_fatal(&mut s, "08P01");

    // A startup packet announcing 64 KiB + 1.
    let mut s = raw::connect(pgward.port);
    s.write_all(&(64 * 1024 + 1u32).to_be_bytes()).unwrap();
    expect_fatal(&mut s, "08P01");

    // Length below the minimum.
    let mut s = raw::connect(pgward.port);
    s.write_all(&[0, 0, 0, 3, 0, 0, 0, 0]).unwrap();
    expect_fatal(&mut s, "08P01");

    // Protocol 2.0.
    let mut s = raw::connect(pgward.port);
    s.write_all(&[0, 0, 0, 8, 0, 2, 0, 0]).unwrap();
    expect_fatal(&mut s, "08P01");

    // The same parameter twice (one reading here, another upstream).
    let mut s = raw::connect(pgward.port);
    s.write_all(&raw::startup_packet(
        0,
        &[("user", "a"), ("database", "app"), ("database", "postgres")],
    ))
    .unwrap();
    expect_fatal(&mut s, "08P01");

    // Truncated packet, then the client vanishes.
    let mut s = raw::connect(pgward.port);
    s.write_all(&[0, 0, 1, 0, 0, 3]).unwrap();
    drop(s);

    // 64 KiB of random-looking bytes.
    let mut s = raw::connect(pgward.port);
    let junk: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = s.write_all(&junk);
    assert!(raw::closed(&mut s));

    others_still_work(&pgward, &mut survivor);
    assert!(pgward.metric("pgward_errors_total") >= 5.0);
}

#[test]
fn slow_client_is_dropped_at_the_startup_timeout() {
    let (_db, pgward) = start();
    let mut survivor = raw::session(pgward.port, "app");
    let started = Instant::now();
    let mut silent = raw::connect(pgward.port);
    assert!(raw::closed(&mut silent));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // Half a startup packet, then silence.
    let mut slow = raw::connect(pgward.port);
    slow.write_all(&raw::startup_packet(0, &[("user", "a")])[..6])
        .unwrap();
    assert!(raw::closed(&mut slow));
    others_still_work(&pgward, &mut survivor);
}

#[test]
fn bad_messages_after_startup_end_only_that_session() {
    let (_db, pgward) = start();
    let mut survivor = raw::session(pgward.port, "app");

    // Unknown message type.
    let mut s = raw::session(pgward.port, "app");
    s.write_all(&raw::message(b'z', b"")).unwrap();
    expect_fatal(&mut s, "08P01");

    // A message over max_message_bytes: refused from its header, before the body.
    let mut s = raw::session(pgward.port, "app");
    s.write_all(&[b'Q', 0, 0x20, 0, 0]).unwrap();
    expect_fatal(&mut s, "08P01");

    // Negative length.
    let mut s = raw::session(pgward.port, "app");
    s.write_all(&[b'Q', 0xff, 0xff, 0xff, 0xff]).unwrap();
    expect_fatal(&mut s, "08P01");

    // Query text that is not UTF-8 / lacks its terminator.
    let mut s = raw::session(pgward.port, "app");
    s.write_all(&raw::message(b'Q', b"SELECT 1")).unwrap();
    expect_fatal(&mut s, "08P01");

    // A truncated message, then the client vanishes mid-message.
    let mut s = raw::session(pgward.port, "app");
    s.write_all(&[b'Q', 0, 0, 0, 100, b'S', b'E']).unwrap();
    drop(s);

    others_still_work(&pgward, &mut survivor);
}

#[test]
fn protocol_negotiation_gss_and_tls_ordering() {
    let (_db, pgward) = start();

    // A client asking for 3.2 with an unknown protocol option is told 3.0 and continues.
    let mut s = raw::connect(pgward.port);
    s.write_all(&raw::startup_packet(
        2,
        &[
            ("user", "a"),
            ("database", "app"),
            ("_pq_.compression", "on"),
        ],
    ))
    .unwrap();
    let msgs = read_until_ready(&mut s);
    let (tag, body) = &msgs[0];
    assert_eq!(*tag, b'v', "{msgs:?}");
    assert_eq!(&body[..4], &(3u32 << 16).to_be_bytes());
    assert_eq!(&body[4..8], &1u32.to_be_bytes());
    assert!(body.ends_with(b"_pq_.compression\0"));
    assert_eq!(msgs.last().unwrap().0, b'Z');
    s.write_all(&raw::query("SELECT 1")).unwrap();
    assert!(read_until_ready(&mut s).iter().any(|m| m.0 == b'D'));

    // GSSENCRequest is declined with 'N' and the client may go on.
    let mut s = raw::connect(pgward.port);
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).unwrap();
    let mut n = [0u8; 1];
    std::io::Read::read_exact(&mut s, &mut n).unwrap();
    assert_eq!(&n, b"N");
    s.write_all(&raw::startup_packet(
        0,
        &[("user", "a"), ("database", "app")],
    ))
    .unwrap();
    assert_eq!(read_until_ready(&mut s).last().unwrap().0, b'Z');

    // Bytes pipelined after SSLRequest, before the TLS handshake, are refused.
    let mut s = raw::connect(pgward.port);
    let mut req = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    req.extend(raw::startup_packet(0, &[("user", "a")]));
    s.write_all(&req).unwrap();
    expect_fatal(&mut s, "08P01");

    // Unknown database: 3D000, like PostgreSQL.
    let mut s = raw::connect(pgward.port);
    s.write_all(&raw::startup_packet(
        0,
        &[("user", "a"), ("database", "nope")],
    ))
    .unwrap();
    expect_fatal(&mut s, "3D000");
}

#[test]
fn startup_parameters_that_change_how_sql_is_read_are_refused() {
    let (_db, pgward) = start();
    let conn = pgward.conn("app", "require");
    let attempt = |extra: &str, pgoptions: Option<&str>| {
        let mut cmd = std::process::Command::new("psql");
        cmd.arg(format!("{conn} {extra}"))
            .args(["-X", "-At", "-c", "SHOW search_path"]);
        if let Some(o) = pgoptions {
            cmd.env("PGOPTIONS", o);
        }
        cmd.output().unwrap()
    };
    for (extra, opts, needle) in [
        (
            "",
            Some("-c search_path=evil"),
            "\"options\" is not allowed",
        ),
        (
            "options='-csearch_path=evil'",
            None,
            "\"options\" is not allowed",
        ),
        (
            "client_encoding=SJIS",
            None,
            "client_encoding SJIS is refused by pgward",
        ),
        (
            "replication=database",
            None,
            "replication connections are not allowed",
        ),
    ] {
        let out = attempt(extra, opts);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra} {opts:?} was accepted");
        assert!(err.contains(needle), "{extra} {opts:?}: {err}");
    }
    // Raw startup parameters, any letter case.
    for (name, value) in [
        ("search_path", "evil"),
        ("SEARCH_PATH", "evil"),
        ("standard_conforming_strings", "off"),
        ("backslash_quote", "on"),
        ("role", "postgres"),
        ("session_authorization", "postgres"),
        ("pgward.oid", "00000000-0000-0000-0000-000000000000"),
        ("default_transaction_read_only", "off"),
    ] {
        let mut s = raw::connect(pgward.port);
        s.write_all(&raw::startup_packet(
            0,
            &[("user", "a"), ("database", "app"), (name, value)],
        ))
        .unwrap();
        expect_fatal(&mut s, "42501");
    }
    // Harmless parameters pass and reach the server.
    let out = attempt("application_name=report-job", None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "\"$user\", public"
    );
}

#[test]
fn vanished_client_leaves_no_work_running_upstream() {
    let (db, pgward) = start();
    let mut s = raw::session(pgward.port, "app");
    s.write_all(&raw::query("SELECT pg_sleep(60)")).unwrap();
    let running = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'";
    assert!(wait_until(Duration::from_secs(10), || db
        .sql("postgres", running)
        == "1"));
    drop(s);
    assert!(
        wait_until(Duration::from_secs(10), || db.sql("postgres", running)
            == "0"),
        "the upstream query kept running after its client vanished"
    );
    let sessions = format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{PROXY_ROLE}'");
    assert!(wait_until(Duration::from_secs(10), || db
        .sql("postgres", &sessions)
        == "0"));
}

#[test]
fn vanished_upstream_ends_only_its_client() {
    let (db, pgward) = start();
    let mut survivor = raw::session(pgward.port, "app");
    let mut victim = raw::session(pgward.port, "app");
    victim
        .write_all(&raw::query("SELECT pg_backend_pid()"))
        .unwrap();
    let msgs = read_until_ready(&mut victim);
    let pid_row = msgs.iter().find(|m| m.0 == b'D').expect("pid row");
    let pid = String::from_utf8_lossy(&pid_row.1[6..]).into_owned();
    db.sql("postgres", &format!("SELECT pg_terminate_backend({pid})"));
    // The client hears a FATAL (PostgreSQL's own 57P01) and the connection closes.
    let (tag, body) = read_message(&mut victim).expect("FATAL");
    assert_eq!(tag, b'E');
    assert_eq!(sqlstate(&body), "57P01");
    assert!(raw::closed(&mut victim));
    others_still_work(&pgward, &mut survivor);
}

#[test]
fn forged_cancel_keys_do_nothing() {
    let (db, pgward) = start();
    let mut s = raw::connect(pgward.port);
    s.write_all(&raw::startup_packet(
        0,
        &[("user", "a"), ("database", "app")],
    ))
    .unwrap();
    let msgs = read_until_ready(&mut s);
    let key = msgs
        .iter()
        .find(|m| m.0 == b'K')
        .expect("BackendKeyData")
        .1
        .clone();
    // The pid is the upstream backend's; the secret is pgward's (tests/backend_pid.rs).
    let upstream_pid = db.sql(
        "postgres",
        &format!("SELECT pid FROM pg_stat_activity WHERE usename = '{PROXY_ROLE}'"),
    );
    let shown_pid = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    assert_eq!(shown_pid.to_string(), upstream_pid);

    s.write_all(&raw::query("SELECT pg_sleep(1.5)")).unwrap();
    let cancel = |pid: u32, secret: [u8; 4]| {
        let mut c = raw::connect(pgward.port);
        let mut p = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
        p.extend_from_slice(&pid.to_be_bytes());
        p.extend_from_slice(&secret);
        c.write_all(&p).unwrap();
        assert!(raw::closed(&mut c));
    };
    let mut wrong = [key[4], key[5], key[6], key[7]];
    wrong[0] ^= 0xff;
    cancel(shown_pid, wrong);
    cancel(shown_pid ^ 1, [key[4], key[5], key[6], key[7]]);
    cancel(shown_pid, [0; 4]);
    let msgs = read_until_ready(&mut s);
    assert!(
        !msgs.iter().any(|m| m.0 == b'E'),
        "a forged key cancelled the query: {msgs:?}"
    );
    assert!(pgward.metric("pgward_cancel_requests_total") >= 3.0);
}
