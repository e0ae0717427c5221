//! pgward's own connection upstream: each authentication method the server may ask for,
//! each TLS mode, and clean failures when the upstream is unreachable or refuses.

use pgward_proto_tests::*;

fn query_through(pgward: &Pgward) -> String {
    psql_ok(
        &pgward.conn("app", "require"),
        &[
            "-At",
            "-c",
            "SELECT current_user, count(*) FROM orders GROUP BY 1",
        ],
    )
}

#[test]
fn signs_in_with_scram_md5_and_cleartext() {
    let db = Database::start();
    for role in [PROXY_ROLE, MD5_ROLE, CLEARTEXT_ROLE] {
        let pgward = Pgward::start(
            &db,
            PgwardOptions {
                upstream_role: role,
                ..Default::default()
            },
        );
        assert_eq!(query_through(&pgward).trim(), format!("{role}|100"));
        assert!(!pgward.log().contains(PROXY_PASSWORD));
    }
    let auth = db.sql("postgres", "SELECT 1");
    assert_eq!(auth, "1");
}

#[test]
fn upstream_tls_require_and_verify_full() {
    let db = Database::start_with(PgOptions {
        ssl: true,
        ..Default::default()
    });
    for mode in ["require", "verify-full"] {
        let pgward = Pgward::start(
            &db,
            PgwardOptions {
                upstream_tls: mode,
                ..Default::default()
            },
        );
        assert_eq!(query_through(&pgward).trim(), format!("{PROXY_ROLE}|100"));
        let ssl = psql_ok(
            &pgward.conn("app", "require"),
            &[
                "-At",
                "-c",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ],
        );
        assert_eq!(ssl.trim(), "t", "upstream leg not encrypted in mode {mode}");
    }
}

#[test]
fn upstream_failures_are_clean_errors() {
    let db = Database::start_with(PgOptions {
        ssl: true,
        ..Default::default()
    });
    let scratch = tempfile::tempdir().unwrap();

    // verify-full against a certificate the configured CA did not sign.
    let wrong = pgward_devkit::certs::generate(scratch.path(), "other", &["127.0.0.1"]).unwrap();
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            upstream_tls: "verify-full",
            upstream_ca: Some(wrong.ca),
            ..Default::default()
        },
    );
    let out = psql(&pgward.conn("app", "require"), &["-c", "SELECT 1"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("08006") || err.contains("pgward could not connect to upstream \"main\""),
        "{err}"
    );
    assert!(
        pgward.log().contains("TLS with upstream main failed"),
        "{}",
        pgward.log()
    );

    // TLS required but the server has none.
    let plain = Database::start();
    let pgward = Pgward::start(
        &plain,
        PgwardOptions {
            upstream_tls: "require",
            ..Default::default()
        },
    );
    let out = psql(&pgward.conn("app", "require"), &["-c", "SELECT 1"], None);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("pgward could not connect to upstream \"main\""));
    assert!(
        pgward.log().contains("does not accept TLS"),
        "{}",
        pgward.log()
    );

    // Nothing listening upstream: a prompt, clear refusal.
    let dead_port = pgward_devkit::free_port().unwrap();
    let pgward = Pgward::start(
        &plain,
        PgwardOptions {
            upstream_port: Some(dead_port),
            ..Default::default()
        },
    );
    let started = std::time::Instant::now();
    let out = psql(&pgward.conn("app", "require"), &["-c", "SELECT 1"], None);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("pgward could not connect to upstream \"main\""));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(pgward.log().contains("cannot reach upstream main"));

    // pgward's upstream password no longer valid: 08001, no secret in the log.
    let pgward = Pgward::start(&plain, PgwardOptions::default());
    plain.sql(
        "postgres",
        &format!("ALTER ROLE {PROXY_ROLE} PASSWORD 'changed-elsewhere'"),
    );
    let out = psql(&pgward.conn("app", "require"), &["-c", "SELECT 1"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pgward could not sign in to upstream \"main\""),
        "{err}"
    );
    let log = pgward.log();
    assert!(log.contains("rejected pgward's sign-in"), "{log}");
    assert!(!log.contains(PROXY_PASSWORD) && !log.contains("changed-elsewhere"));
}
