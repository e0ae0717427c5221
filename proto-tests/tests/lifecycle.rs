//! Operating pgward: TLS (direct and reloaded), connection limits, draining on SIGTERM,
//! the admin endpoint and `pgward check`.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use pgward_proto_tests::raw::{self, read_message, read_until_ready, sqlstate};
use pgward_proto_tests::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

fn tls_client(ca: &std::path::Path, alpn: Option<&[u8]>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if let Some(p) = alpn {
        cfg.alpn_protocols = vec![p.to_vec()];
    }
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn postgres17_direct_tls_needs_alpn() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = Database::start();
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            allow_plaintext: false,
            ..Default::default()
        },
    );
    let ca = pgward.ca.clone().unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();

    // ClientHello as the first bytes, ALPN "postgresql": a normal session inside TLS.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", pgward.port))
        .await
        .unwrap();
    let mut tls = tls_client(&ca, Some(b"postgresql"))
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    tls.write_all(&raw::startup_packet(
        0,
        &[("user", "a"), ("database", "app")],
    ))
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before ReadyForQuery");
        got.extend_from_slice(&buf[..n]);
    }

    // Without ALPN the direct-TLS connection is refused.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", pgward.port))
        .await
        .unwrap();
    let refused = match tls_client(&ca, None).connect(name, tcp).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s
                .write_all(&raw::startup_packet(
                    0,
                    &[("user", "a"), ("database", "app")],
                ))
                .await;
            matches!(s.read(&mut buf).await, Ok(0) | Err(_))
        }
    };
    assert!(refused, "direct TLS without ALPN was served");

    // Plaintext is refused when allow_plaintext is off, with a clear message.
    let out = psql(&pgward.conn("app", "disable"), &["-c", "SELECT 1"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires an encrypted connection"));
    psql_ok(&pgward.conn("app", "verify-full"), &["-c", "SELECT 1"]);
}

#[test]
fn sighup_reloads_the_tls_certificate() {
    let db = Database::start();
    let pgward = Pgward::start(&db, PgwardOptions::default());
    let old_ca = pgward.dir().join("old-ca.crt");
    std::fs::copy(pgward.ca.as_ref().unwrap(), &old_ca).unwrap();
    // A new CA and certificate written over the configured files.
    pgward_devkit::certs::generate(pgward.dir(), "client", &["127.0.0.1"]).unwrap();
    pgward.signal(libc::SIGHUP);
    let new_conn = pgward.conn("app", "verify-full");
    assert!(
        wait_until(Duration::from_secs(10), || {
            psql(&new_conn, &["-c", "SELECT 1"], None).status.success()
        }),
        "new certificate not served after SIGHUP:\n{}",
        pgward.log()
    );
    let old_conn = new_conn.replace(
        &pgward.ca.as_ref().unwrap().display().to_string(),
        &old_ca.display().to_string(),
    );
    assert!(!psql(&old_conn, &["-c", "SELECT 1"], None).status.success());

    // A broken certificate file keeps the previous one in service.
    std::fs::write(pgward.dir().join("client-server.crt"), "not a certificate").unwrap();
    pgward.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || pgward
        .log()
        .contains("TLS reload failed")));
    psql_ok(&new_conn, &["-c", "SELECT 1"]);
}

#[test]
fn connection_limit_answers_53300() {
    let db = Database::start();
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            listen_extra: vec!["max_connections = 2".into()],
            ..Default::default()
        },
    );
    let _a = raw::session(pgward.port, "app");
    let mut b = raw::session(pgward.port, "app");
    let mut c = raw::connect(pgward.port);
    let (tag, body) = read_message(&mut c).expect("refusal");
    assert_eq!((tag, sqlstate(&body).as_str()), (b'E', "53300"));
    drop(_a);
    // Once a slot frees up, new clients get in again.
    assert!(wait_until(Duration::from_secs(10), || {
        psql(&pgward.conn("app", "require"), &["-c", "SELECT 1"], None)
            .status
            .success()
    }));
    b.write_all(&raw::query("SELECT 1")).unwrap();
    assert!(read_until_ready(&mut b).iter().any(|m| m.0 == b'D'));
}

#[test]
fn sigterm_drains_then_exits() {
    let db = Database::start();
    let mut pgward = Pgward::start(&db, PgwardOptions::default());
    let mut session = raw::session(pgward.port, "app");
    pgward.signal(libc::SIGTERM);
    // Not ready any more, no new clients, but the open session still works.
    assert!(wait_until(Duration::from_secs(10), || {
        matches!(pgward.admin_get("/readyz"), Some((503, _)))
    }));
    assert!(std::net::TcpStream::connect(("127.0.0.1", pgward.port)).is_err());
    session
        .write_all(&raw::query("SELECT 'still here'"))
        .unwrap();
    assert!(read_until_ready(&mut session).iter().any(|m| m.0 == b'D'));
    session.write_all(&raw::message(b'X', b"")).unwrap();
    let status = pgward
        .wait_exit(Duration::from_secs(10))
        .expect("exited after drain");
    assert!(status.success(), "{status}");
}

#[test]
fn drain_deadline_ends_remaining_sessions() {
    let db = Database::start();
    let mut pgward = Pgward::start(
        &db,
        PgwardOptions {
            listen_extra: vec!["drain_timeout_secs = 1".into()],
            ..Default::default()
        },
    );
    let mut idle = raw::session(pgward.port, "app");
    pgward.signal(libc::SIGTERM);
    let (tag, body) = read_message(&mut idle).expect("FATAL at the deadline");
    assert_eq!((tag, sqlstate(&body).as_str()), (b'E', "57P01"));
    assert!(pgward.wait_exit(Duration::from_secs(15)).is_some());
    let sessions = format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{PROXY_ROLE}'");
    assert!(wait_until(Duration::from_secs(10), || db
        .sql("postgres", &sessions)
        == "0"));
}

#[test]
fn admin_endpoints() {
    let db = Database::start();
    let pgward = Pgward::start(&db, PgwardOptions::default());
    assert_eq!(pgward.admin_get("/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(pgward.admin_get("/readyz").unwrap().0, 200);
    assert_eq!(pgward.admin_get("/nope").unwrap().0, 404);
    psql_ok(&pgward.conn("app", "require"), &["-c", "SELECT 1"]);
    let (_, metrics) = pgward.admin_get("/metrics").unwrap();
    for name in [
        "pgward_connections_total{result=\"accepted\"}",
        "pgward_sessions_active",
        "pgward_bytes_total{direction=\"to_client\"}",
        "pgward_messages_total{direction=\"to_upstream\"}",
        "pgward_handshake_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    // The log never carries the upstream password.
    assert!(!pgward.log().contains(PROXY_PASSWORD));
}

#[test]
fn check_reports_every_problem() {
    let db = Database::start();
    let pgward = Pgward::start(&db, PgwardOptions::default());
    let ok = std::process::Command::new(pgward_bin())
        .args(["check", "--config"])
        .arg(&pgward.config_path)
        .env("PGWARD_TEST_UPSTREAM_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = pgward.dir().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[listen]
addr = "not an address"
tls_cert = "missing.crt"
tls_key = "missing.key"
[[upstreams]]
name = "main"
host = "db.example.com"
tls = "disable"
[upstreams.credential]
type = "password"
user = "u"
[[routes]]
database = "app"
upstream = "other"
"#,
    )
    .unwrap();
    let out = std::process::Command::new(pgward_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "[listen] addr",
        "missing.crt",
        "no client sign-in",
        "unencrypted",
        "exactly one of password",
        "unknown upstream \"other\"",
    ] {
        assert!(text.contains(needle), "{needle} not reported:\n{text}");
    }
    let typo = pgward.dir().join("typo.toml");
    std::fs::write(
        &typo,
        "[listen]\naddr = \"127.0.0.1:1\"\nalow_plaintext = true\n",
    )
    .unwrap();
    let out = std::process::Command::new(pgward_bin())
        .args(["check", "--config"])
        .arg(&typo)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("line 3") && text.contains("alow_plaintext"),
        "{text}"
    );
}
