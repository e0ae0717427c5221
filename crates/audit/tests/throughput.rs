//! Throughput of the file sink, printed by an ignored test:
//! `cargo test -p pgward-audit --test throughput -- --ignored --nocapture`
//! (add `--config 'profile.dev.package.pgward-audit.opt-level=3'` for optimised numbers
//! without a release build).

// Test helpers outside #[test] functions may unwrap too (clippy.toml only covers the tests).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::*;
use pgward_audit::*;

async fn run(fsync: Fsync, tasks: usize, per_task: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.jsonl");
    let log = AuditLogBuilder::new("bench-0")
        .file(&path)
        .fsync(fsync)
        .rotate_bytes(64 * 1024 * 1024)
        .open()
        .unwrap();
    let start = Instant::now();
    let mut hs = Vec::new();
    for t in 0..tasks {
        let s = log.session(&session_info(t as u32));
        hs.push(tokio::spawn(async move {
            let objects = [ObjectAction {
                object: "public.pgbench_accounts",
                action: "select",
            }];
            for i in 0..per_task {
                let sql = format!(
                    "SELECT abalance FROM pgbench_accounts WHERE aid = {}",
                    i * 7919 % 100_000
                );
                s.statement(&Statement {
                    sql: &sql,
                    objects: &objects,
                    rule: Some("analyst/allow[0]"),
                    ..stmt("")
                })
                .await
                .unwrap();
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    log.close("bench").await.unwrap();
    let n = (tasks * per_task) as f64;
    let files = log_files(&path).unwrap();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let rate = n / secs;
    println!(
        "fsync={fsync:?} tasks={tasks}: {n} records in {secs:.3}s = {rate:.0} records/s ({:.0} bytes/record)",
        bytes as f64 / n
    );
    assert!(verify(&files, None).unwrap().is_ok());
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn throughput() {
    run(Fsync::None, 64, 5_000).await;
    run(Fsync::None, 1, 50_000).await;
    run(Fsync::Batch, 64, 500).await;
    run(Fsync::Batch, 1, 500).await;
}
