//! `search` filters and output formats; `tail -f` across rotation.
// Test helpers outside #[test] functions may unwrap too (clippy.toml only covers the tests).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pgward_audit::*;

async fn workload(dir: &Path) -> Vec<PathBuf> {
    let path = dir.join("pgward.jsonl");
    let log = AuditLogBuilder::new("pgward-0").file(&path).open().unwrap();
    let alice = log.session(&session_info(1));
    alice
        .connect(&Connect {
            upstream: Some("main"),
            upstream_role: None,
        })
        .await
        .unwrap();
    alice
        .statement(&Statement {
            sql: "select * from public.orders",
            objects: &[ObjectAction {
                object: "public.orders",
                action: "select",
            }],
            rule: Some("analyst"),
            ..stmt("")
        })
        .await
        .unwrap();
    alice
        .statement(&Statement {
            sql: "delete from hr.salaries where note = 'a, \"quoted\"\nline'",
            objects: &[ObjectAction {
                object: "hr.salaries",
                action: "delete",
            }],
            decision: Decision::Deny,
            rule: Some("analyst/deny"),
            outcome: Outcome {
                sqlstate: Some("42501"),
                message: Some("permission denied"),
                ..Outcome::default()
            },
            ..Statement::default()
        })
        .await
        .unwrap();
    let mut bob_info = session_info(2);
    let id = bob_info.identity.as_mut().unwrap();
    id.upn = Some("bob@contoso.com".into());
    id.oid = Some("22222222-2222-4222-8222-222222222222".into());
    bob_info.database = Some("reporting".into());
    bob_info.client.user = Some("bob@contoso.com".into());
    let bob = log.session(&bob_info);
    bob.statement(&Statement {
        sql: "select 1/0",
        outcome: Outcome {
            sqlstate: Some("22012"),
            message: Some("division by zero"),
            ..Outcome::default()
        },
        ..Statement::default()
    })
    .await
    .unwrap();
    let mut eve = session_info(3);
    eve.identity = None;
    eve.client.user = Some("eve@evil.example".into());
    log.session(&eve)
        .auth_failed("wrong audience https://example.org")
        .await
        .unwrap();
    log.close("done").await.unwrap();
    log_files(&path).unwrap()
}

fn search(files: &[PathBuf], filter: Filter, format: OutputFormat) -> (String, SearchSummary) {
    let mut out = Vec::new();
    let sum = run_search(
        &SearchArgs {
            files: files.to_vec(),
            filter,
            format,
            limit: None,
        },
        &mut out,
    )
    .unwrap();
    (String::from_utf8(out).unwrap(), sum)
}

fn count(files: &[PathBuf], filter: Filter) -> u64 {
    search(files, filter, OutputFormat::Json).1.matched
}

#[tokio::test]
async fn filters() {
    let dir = tempfile::tempdir().unwrap();
    let files = workload(dir.path()).await;
    let all = count(&files, Filter::default());
    assert_eq!(all, 7);
    let f = |g: fn(&mut Filter)| {
        let mut x = Filter::default();
        g(&mut x);
        count(&files, x)
    };
    assert_eq!(f(|x| x.user = Some("ALICE@contoso.com".into())), 3);
    assert_eq!(
        f(|x| x.user = Some("22222222-2222-4222-8222-222222222222".into())),
        1
    );
    assert_eq!(
        f(|x| x.user = Some("eve@evil.example".into())),
        1,
        "presented user name of a failed sign-in"
    );
    assert_eq!(f(|x| x.database = Some("reporting".into())), 1);
    assert_eq!(f(|x| x.object = Some("*.salaries".into())), 1);
    assert_eq!(f(|x| x.object = Some("public.*".into())), 1);
    assert_eq!(f(|x| x.action = Some("delete".into())), 1);
    assert_eq!(f(|x| x.decision = Some("deny".into())), 1);
    assert_eq!(f(|x| x.decision = Some("allow".into())), 2);
    assert_eq!(f(|x| x.sqlstate = Some("42501".into())), 1);
    assert_eq!(f(|x| x.sqlstate = Some("22".into())), 1, "class match");
    assert_eq!(
        f(|x| x.text = Some("DIVISION".into())),
        1,
        "matches the error message"
    );
    assert_eq!(f(|x| x.text = Some("from public".into())), 1);
    assert_eq!(
        f(|x| x.text = Some("audience".into())),
        1,
        "matches the reason"
    );
    assert_eq!(f(|x| x.event = Some("auth_failed".into())), 1);
    assert_eq!(f(|x| x.session = Some("s1".into())), 3);
    // Time range: everything is "now"; an old window finds nothing, an open one all.
    assert_eq!(f(|x| x.until = Some("2020-01-01".parse().unwrap())), 0);
    assert_eq!(
        f(|x| x.since = Some("2020-01-01T00:00:00Z".parse().unwrap())),
        7
    );
    let recs = records(&files);
    let mid: Timestamp = recs[3].ts.parse().unwrap();
    let n = count(
        &files,
        Filter {
            since: Some(mid),
            ..Filter::default()
        },
    );
    assert!((1..7).contains(&n), "{n}");
    // Combined filters are ANDed.
    assert_eq!(
        f(|x| {
            x.user = Some("alice@contoso.com".into());
            x.decision = Some("deny".into());
        }),
        1
    );
    // Limit.
    let mut out = Vec::new();
    let s = run_search(
        &SearchArgs {
            files: files.clone(),
            limit: Some(2),
            ..SearchArgs::default()
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(s.matched, 2);
}

#[tokio::test]
async fn output_formats() {
    let dir = tempfile::tempdir().unwrap();
    let files = workload(dir.path()).await;
    let stored = lines(&files[0]);

    // JSON: the records exactly as stored, so they can be re-verified or shipped.
    let (json, _) = search(
        &files,
        Filter {
            decision: Some("deny".into()),
            ..Filter::default()
        },
        OutputFormat::Json,
    );
    assert_eq!(json.lines().collect::<Vec<_>>(), vec![stored[3].as_str()]);

    // CSV: header, RFC 4180 quoting of commas, quotes and newlines.
    let (csv, _) = search(
        &files,
        Filter {
            decision: Some("deny".into()),
            ..Filter::default()
        },
        OutputFormat::Csv,
    );
    let header = csv.lines().next().unwrap();
    assert!(
        header.starts_with("seq,ts,instance,event,session,client_addr"),
        "{header}"
    );
    assert!(
        csv.contains("\"delete from hr.salaries where note = 'a, \"\"quoted\"\"\nline'\""),
        "{csv}"
    );
    assert!(csv.contains(",deny,analyst/deny,"), "{csv}");
    assert!(csv.contains("delete:hr.salaries"), "{csv}");

    // Table: a header and one line per record, newlines flattened.
    let (table, sum) = search(&files, Filter::default(), OutputFormat::Table);
    assert_eq!(sum.matched, 7);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 8, "{table}");
    assert!(rows[0].starts_with("TS") && rows[0].contains("DECISION"));
    assert!(
        table.contains("42501") && table.contains("bob@contoso.com") && table.contains("28000"),
        "{table}"
    );
    assert!("csv".parse::<OutputFormat>().is_ok() && "xml".parse::<OutputFormat>().is_err());
}

#[tokio::test]
async fn search_skips_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_log(dir.path(), 3, None).await;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map(|mut f| {
            use std::io::Write;
            f.write_all(b"{\"v\":1,\"se").unwrap();
        })
        .unwrap();
    let (_, sum) = search(&[path], Filter::default(), OutputFormat::Json);
    assert_eq!((sum.matched, sum.skipped), (5, 1));
}

/// A `Write` shared with the test thread.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_across_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.jsonl");
    let log = AuditLogBuilder::new("t")
        .file(&path)
        .rotate_bytes(4096)
        .open()
        .unwrap();
    let s = log.session(&session_info(1));
    for i in 0..3 {
        s.statement(&stmt(&format!("select 'before {i}'")))
            .await
            .unwrap();
    }
    let out = Shared::default();
    let stop = Arc::new(AtomicBool::new(false));
    let args = TailArgs {
        file: path.clone(),
        lines: 2,
        follow: true,
        filter: Filter {
            event: Some("statement".into()),
            ..Filter::default()
        },
        format: OutputFormat::Json,
        poll: Duration::from_millis(20),
    };
    let (o, st) = (out.clone(), stop.clone());
    let tail = std::thread::spawn(move || {
        let mut o = o;
        run_tail(&args, &mut o, &st)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..100 {
        s.statement(&stmt(&format!("select 'after {i}'")))
            .await
            .unwrap();
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    log.close("done").await.unwrap();
    assert!(
        log_files(&path).unwrap().len() >= 4,
        "the test needs rotations"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    tail.join().unwrap().unwrap();
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let sqls: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["sql"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut expected = vec![
        "select 'before 1'".to_string(),
        "select 'before 2'".to_string(),
    ];
    expected.extend((0..100).map(|i| format!("select 'after {i}'")));
    assert_eq!(
        sqls, expected,
        "every record once, in order, across rotations"
    );
}

#[tokio::test]
async fn tail_without_follow_prints_the_last_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_log(dir.path(), 5, None).await;
    let mut out = Vec::new();
    let args = TailArgs {
        file: path,
        lines: 3,
        format: OutputFormat::Table,
        ..TailArgs::default()
    };
    run_tail(&args, &mut out, &AtomicBool::new(false)).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains("select 4") && text.contains("audit_stop"));
}
