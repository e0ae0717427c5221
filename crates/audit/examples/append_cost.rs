//! Per-record cost of the audit append path, single-threaded, in a tight loop:
//! `cargo run --release -p pgward-audit --example append_cost [records] [dir]`.
//! Prints ns per record for a statement record (head reused, as a prepared statement
//! run in a loop) with and without the file, so the write path's share is visible.

use std::time::Instant;

use pgward_audit::{
    AuditLogBuilder, Client, Identity, ObjectAction, Outcome, Protocol, SessionInfo, Statement,
};

fn run(label: &str, builder: AuditLogBuilder, n: u64) {
    let log = builder.open().expect("open the audit log");
    let session = log.session(&SessionInfo {
        session: "1234".into(),
        client: Client {
            addr: "127.0.0.1:50432".into(),
            user: Some("alice@contoso.com".into()),
            application_name: Some("pgbench".into()),
            tls: false,
            tls_version: None,
        },
        identity: Some(Identity {
            oid: Some("00000000-0000-0000-0000-000000000001".into()),
            upn: Some("alice@contoso.com".into()),
            ..Default::default()
        }),
        database: Some("bench".into()),
    });
    let objects = [ObjectAction {
        object: "public.pgbench_accounts",
        action: "select",
    }];
    let head = session.statement_head(&Statement {
        sql: "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
        protocol: Protocol::Extended,
        objects: &objects,
        rule: Some("bench/read"),
        ..Statement::default()
    });
    let start = Instant::now();
    for _ in 0..n {
        let outcome = Outcome {
            command_tag: Some("SELECT 1"),
            rows: Some(1),
            ..Outcome::default()
        };
        session
            .statement_done(&head, outcome, 87)
            .wait()
            .expect("append");
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{label}: {ns:.0} ns/record over {n} records");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("pgward-append-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the work directory");
    let line = vec![b'x'; 660];
    let start = Instant::now();
    let mut acc = 0u8;
    for _ in 0..n {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &line);
        acc ^= d.as_ref()[0];
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("SHA-256 of a 660-byte line: {ns:.0} ns ({acc})");
    run(
        "no file (seal + hash only)",
        AuditLogBuilder::new("bench-0"),
        n,
    );
    run(
        "file (fsync none)",
        AuditLogBuilder::new("bench-0")
            .file(dir.join("a.jsonl"))
            .rotate_bytes(1 << 30),
        n,
    );
    let _ = std::fs::remove_dir_all(&dir);
}
