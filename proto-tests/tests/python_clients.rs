//! Python clients (psycopg 3 and asyncpg, from pip) through pgward over verify-full TLS.

use pgward_proto_tests::*;

#[test]
fn psycopg_and_asyncpg() {
    let db = Database::start();
    let pgward = Pgward::start(&db, PgwardOptions::default());
    let ca = pgward.ca.clone().unwrap().display().to_string();
    let out = run_python(
        "clients.py",
        &[
            ("PGWARD_DSN", pgward.conn("app", "verify-full")),
            ("PGWARD_HOST", "127.0.0.1".into()),
            ("PGWARD_PORT", pgward.port.to_string()),
            ("PGWARD_CA", ca),
        ],
    );
    assert!(out.contains("all python checks passed"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        12,
        "{out}"
    );
}
