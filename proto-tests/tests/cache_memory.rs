//! pgward's memory while one caller sends many distinct megabyte statements (allowed and
//! denied) and distinct 200 KB allowed ones that fill the decision cache: its resident
//! size must stay under the configured `[policy] cache_bytes` plus a small constant, and
//! not grow with the number of statements. A measurement more than a test (minutes): run
//! by bench/cache_memory.sh, or `cargo test -p pgward-proto-tests --test cache_memory --
//! --ignored --nocapture` with PGWARD_BENCH_STATEMENTS (default 2000).

use std::time::Instant;

use pgward_proto_tests::wire::Wire;
use pgward_proto_tests::*;

const CALLER: &str = "dana@contoso.com";
const CACHE_BYTES: usize = 64 << 20;

const POLICY: &str = r#"
mode = "enforce"
search_path = ["public"]

[[roles]]
name = "orders_reader"
members = { users = ["dana@contoso.com"] }
allow = [ { actions = ["select"], objects = ["public.orders"] } ]
"#;

/// Resident set size of a process, in bytes (Linux).
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn mib(b: usize) -> f64 {
    b as f64 / (1 << 20) as f64
}

#[test]
#[ignore = "a measurement of minutes; run by bench/cache_memory.sh"]
fn memory_stays_within_the_cache_budget() {
    let n: usize = std::env::var("PGWARD_BENCH_STATEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let db = Database::start();
    db.sql("app", "CREATE TABLE salaries (id int, amount numeric)");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            tls: false,
            policy: Some(policy),
            policy_extra: vec![format!("cache_bytes = {CACHE_BYTES}")],
            log_level: "warn",
            ..Default::default()
        },
    );
    let pid = pgward.pid();
    let mut w = Wire::connect(pgward.port, CALLER);
    assert!(w.query("SELECT 1").ok());
    let start_rss = rss(pid);
    println!(
        "pgward RSS at start: {:.1} MiB; cache budget {:.0} MiB; {n} distinct 1 MB statements",
        mib(start_rss),
        mib(CACHE_BYTES)
    );
    let pad_big = "x".repeat(1 << 20);
    let pad_small = "y".repeat(200 << 10);
    let started = Instant::now();
    let mut peak = start_rss;
    for i in 0..n {
        // Distinct megabyte statements, half denied (salaries), half allowed; each
        // followed by a distinct 200 KB allowed one, which the cache keeps.
        let table = if i % 2 == 0 { "salaries" } else { "orders" };
        let big = format!("SELECT length('{i} {pad_big}') FROM {table} LIMIT 1");
        let r = w.query(&big);
        assert_ne!(r.status, 0, "{r:?}");
        let small = format!("SELECT length('{i} {pad_small}') FROM orders LIMIT 1");
        assert!(w.query(&small).ok());
        if (i + 1) % 250 == 0 || i + 1 == n {
            let now = rss(pid);
            peak = peak.max(now);
            println!(
                "after {:>6} statements ({:>5.0} s): RSS {:>7.1} MiB (+{:.1} MiB)",
                i + 1,
                started.elapsed().as_secs_f64(),
                mib(now),
                mib(now.saturating_sub(start_rss))
            );
        }
    }
    drop(w);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let after = rss(pid);
    println!(
        "peak RSS {:.1} MiB (+{:.1} MiB over start); after the caller left {:.1} MiB; cache accounts {:.0} MiB at most",
        mib(peak),
        mib(peak.saturating_sub(start_rss)),
        mib(after),
        mib(CACHE_BYTES)
    );
    // Budget plus a constant for buffers in flight and allocator slack.
    let allowed = start_rss + CACHE_BYTES + (64 << 20);
    assert!(
        peak <= allowed,
        "peak RSS {:.1} MiB over {:.1} MiB",
        mib(peak),
        mib(allowed)
    );
}
