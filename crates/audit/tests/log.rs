//! The writer: round trip, chain across rotation with concurrent writers, restarts and
//! crashes, sinks, failure handling.
// Test helpers outside #[test] functions may unwrap too (clippy.toml only covers the tests).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use common::*;
use pgward_audit::*;

#[tokio::test]
async fn round_trip_of_every_event_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit").join("pgward.jsonl");
    let log = AuditLogBuilder::new("pgward-0")
        .file(&path)
        .redaction(Redaction::Full)
        .open()
        .unwrap();
    let s = log.session(&session_info(7));
    s.connect(&Connect {
        upstream: Some("main"),
        upstream_role: Some("analyst_ro"),
    })
    .await
    .unwrap();
    let params = Params::capture(
        log.redaction(),
        [
            ParamIn {
                type_oid: 23,
                value: Some(b"42"),
                binary: false,
            },
            ParamIn {
                type_oid: 17,
                value: Some(&[0, 159, 146]),
                binary: true,
            },
            ParamIn {
                type_oid: 25,
                value: None,
                binary: false,
            },
        ],
    )
    .unwrap();
    let objects = [
        ObjectAction {
            object: "public.orders",
            action: "select",
        },
        ObjectAction {
            object: "public.customers",
            action: "select",
        },
    ];
    let r = s
        .statement(&Statement {
            sql: "select * from orders o join customers c using (id) where o.id = $1",
            params: Some(&params),
            protocol: Protocol::Extended,
            objects: &objects,
            decision: Decision::Allow,
            rule: Some("analyst/allow[0]"),
            outcome: Outcome {
                command_tag: Some("SELECT 3"),
                rows: Some(3),
                ..Outcome::default()
            },
            duration_us: 1234,
        })
        .await
        .unwrap();
    assert!(r.recorded);
    s.statement(&Statement {
        sql: "delete from hr.salaries",
        objects: &[ObjectAction {
            object: "hr.salaries",
            action: "delete",
        }],
        decision: Decision::Deny,
        rule: Some("analyst/deny[0]"),
        outcome: Outcome {
            sqlstate: Some("42501"),
            message: Some("permission denied by pgward rule analyst/deny[0]"),
            ..Outcome::default()
        },
        ..Statement::default()
    })
    .await
    .unwrap();
    s.disconnect(&Disconnect {
        duration_us: 5_000_000,
        statements: 2,
        bytes_in: 300,
        bytes_out: 4000,
        reason: Some("client terminated"),
    })
    .await
    .unwrap();
    let mut bad = session_info(8);
    bad.identity = None;
    log.session(&bad)
        .auth_failed("token expired at 1700000000 (now 1700000100, clock skew 60s)")
        .await
        .unwrap();
    log.close("shutdown").await.unwrap();
    assert!(matches!(
        s.statement(&stmt("select 1")).await,
        Err(AuditError::Closed)
    ));

    let files = log_files(&path).unwrap();
    assert_eq!(files, vec![path.clone()]);
    let recs = records(&files);
    let kinds: Vec<&str> = recs.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "audit_start",
            "connect",
            "statement",
            "statement",
            "disconnect",
            "auth_failed",
            "audit_stop"
        ]
    );
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.v, SCHEMA_VERSION);
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.instance, "pgward-0");
        assert_eq!(r.ts.len(), 27, "{}", r.ts);
        assert!(r.ts.ends_with('Z'));
        r.ts.parse::<Timestamp>().unwrap();
        if i > 0 {
            assert_eq!(r.prev_hash, recs[i - 1].hash);
            assert!(r.ts >= recs[i - 1].ts);
        }
    }
    assert_eq!(recs[0].prev_hash, GENESIS);
    assert_eq!(recs[0].alg.as_deref(), Some("sha256"));
    assert_eq!(recs[0].redaction.as_deref(), Some("full"));
    assert_eq!(recs[0].session, None);
    let c = &recs[1];
    assert_eq!(c.session.as_deref(), Some("s7"));
    assert_eq!(c.client, Some(session_info(7).client));
    assert_eq!(c.identity, session_info(7).identity);
    assert_eq!(c.database.as_deref(), Some("app"));
    assert_eq!(c.upstream.as_deref(), Some("main"));
    let st = &recs[2];
    assert_eq!(st.protocol.as_deref(), Some("extended"));
    assert_eq!(st.decision.as_deref(), Some("allow"));
    assert_eq!(st.rule.as_deref(), Some("analyst/allow[0]"));
    assert_eq!(st.objects.len(), 2);
    assert_eq!(st.objects[0].object, "public.orders");
    assert_eq!(st.duration_us, Some(1234));
    let o = st.outcome.as_ref().unwrap();
    assert_eq!(
        (o.command_tag.as_deref(), o.rows),
        (Some("SELECT 3"), Some(3))
    );
    let p = &st.params.as_ref().unwrap().0;
    assert_eq!(
        p[0],
        Param {
            ty: "int4".into(),
            format: None,
            value: Some(Some("42".into()))
        }
    );
    assert_eq!(p[1].format.as_deref(), Some("binary"));
    assert_eq!(p[1].value, Some(Some("AJ+S".into())));
    assert_eq!(p[2].value, Some(None)); // SQL NULL
    assert_eq!(recs[3].decision.as_deref(), Some("deny"));
    assert_eq!(recs[3].sqlstate(), Some("42501"));
    assert_eq!(recs[4].statements, Some(2));
    assert_eq!(
        (recs[4].bytes_in, recs[4].bytes_out),
        (Some(300), Some(4000))
    );
    assert_eq!(recs[5].identity, None);
    assert!(recs[5]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("token expired"));
    assert_eq!(recs[6].reason.as_deref(), Some("shutdown"));
    let report = verify(&files, None).unwrap();
    assert!(report.is_ok(), "{:?}", report.findings);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[tokio::test]
async fn redaction_modes_and_secret_scrubbing() {
    let types = Params::capture(
        Redaction::Types,
        [ParamIn {
            type_oid: 1043,
            value: Some(b"secret"),
            binary: false,
        }],
    )
    .unwrap();
    assert_eq!(
        types.0[0],
        Param {
            ty: "varchar".into(),
            format: None,
            value: None
        }
    );
    assert!(Params::capture(
        Redaction::None,
        [ParamIn {
            type_oid: 23,
            value: None,
            binary: false
        }]
    )
    .is_none());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = AuditLogBuilder::new("t").file(&path).open().unwrap();
    let jwt =
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJvaWQiOiIxMjMiLCJleHAiOjF9.c2lnbmF0dXJlX2J5dGVz";
    let mut info = session_info(1);
    info.client.application_name = Some(format!("app {jwt}"));
    let s = log.session(&info);
    let sql = format!("select '{jwt}'; alter role bob password 'hunter2'");
    let msg = format!("invalid input: {jwt}");
    let full = Params::capture(
        Redaction::Full,
        [ParamIn {
            type_oid: 25,
            value: Some(jwt.as_bytes()),
            binary: false,
        }],
    )
    .unwrap();
    s.statement(&Statement {
        sql: &sql,
        params: Some(&full),
        outcome: Outcome {
            sqlstate: Some("22P02"),
            message: Some(&msg),
            ..Outcome::default()
        },
        ..Statement::default()
    })
    .await
    .unwrap();
    s.auth_failed(&format!("bad signature on {jwt}"))
        .await
        .unwrap();
    log.close("done").await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("eyJ"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    // application_name twice (two records), sql, parameter, message, reason.
    assert_eq!(text.matches("[REDACTED JWT]").count(), 6, "{text}");
    assert!(text.contains("password '[REDACTED]'"));
    assert!(verify(&[path], None).unwrap().is_ok());
}

/// How a test appends its statement records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `SessionLog::statement`: written at once.
    Statement,
    /// `statement_head` + `statement_done`, as the proxy does: group-committed in inline
    /// mode while several statements are running.
    HeadAndDone,
}

/// Appends one statement record `via` the given path.
async fn append(s: &SessionLog, sql: &str, via: Via) -> Result<Receipt, AuditError> {
    match via {
        Via::Statement => s.statement(&stmt(sql)).await,
        Via::HeadAndDone => {
            let st = stmt(sql);
            let head = s.statement_head(&st);
            // As in the proxy: the statement counts as running from before it is sent
            // upstream (here: a yield stands in for the round trip) until it is recorded.
            let running = s.in_flight();
            tokio::task::yield_now().await;
            let r = s.statement_done(&head, st.outcome, st.duration_us).await;
            drop(running);
            r
        }
    }
}

/// Many writers, size rotation every few records: every record exactly once, seq
/// continuous across files, each file naming its predecessor, and verify clean.
async fn concurrent_rotation(
    builder: AuditLogBuilder,
    path: std::path::PathBuf,
    tasks: usize,
    per: usize,
    pause: Option<Duration>,
    via: Via,
) {
    let log = builder.open().unwrap();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let s = log.session(&session_info(t as u32));
        handles.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..per {
                let sql = format!("select 'task {t} stmt {i}'");
                let r = append(&s, &sql, via).await.unwrap();
                seqs.push(r.seq);
                if let Some(p) = pause {
                    tokio::time::sleep(p).await;
                }
            }
            seqs
        }));
    }
    let mut acked = HashSet::new();
    for h in handles {
        for s in h.await.unwrap() {
            assert!(acked.insert(s), "seq {s} acknowledged twice");
        }
    }
    log.close("done").await.unwrap();

    let files = log_files(&path).unwrap();
    assert!(files.len() >= 3, "expected rotations, got {files:?}");
    let recs = records(&files);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "seq must be continuous across files");
    }
    let mut seen = HashSet::new();
    for r in recs.iter().filter(|r| r.event == "statement") {
        assert!(seen.insert(r.sql.clone().unwrap()), "duplicate {:?}", r.sql);
        assert!(acked.contains(&r.seq));
    }
    assert_eq!(seen.len(), tasks * per, "lost records");
    assert_eq!(acked.len(), tasks * per);
    // Each file after the first begins with a record naming its predecessor.
    for w in files.windows(2) {
        let prev = records(&w[..1]);
        let first = &records(&w[1..])[0];
        assert!(
            first.event == "rotate" || first.event == "audit_start",
            "{}",
            first.event
        );
        let p = first.predecessor.as_ref().unwrap();
        assert_eq!(p.file, w[0].file_name().unwrap().to_str().unwrap());
        assert_eq!(p.last_seq, prev.last().unwrap().seq);
        assert_eq!(p.last_hash, prev.last().unwrap().hash);
        assert_eq!(first.prev_hash, p.last_hash);
    }
    let report = verify(&files, None).unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
}

/// Size rotation every few records under 16 concurrent writers.
async fn size_rotation(via: Via) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.jsonl");
    let b = AuditLogBuilder::new("t").file(&path).rotate_bytes(8192);
    concurrent_rotation(b, path.clone(), 16, 200, None, via).await;
    // Files never grow much past the limit (one record at most).
    for f in log_files(&path).unwrap() {
        let len = std::fs::metadata(&f).unwrap().len();
        assert!(len <= 8192 + 1024, "{f:?} is {len} bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_rotation_with_concurrent_writers_loses_nothing() {
    size_rotation(Via::Statement).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_committed_statements_rotate_by_size_and_lose_nothing() {
    size_rotation(Via::HeadAndDone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_committed_statements_rotate_by_time_and_lose_nothing() {
    time_rotation(8, Duration::from_millis(5), Via::HeadAndDone).await;
}

/// Sessions on one runtime thread that have their replies at the same time share a
/// write: the records of all of them are written once the first resumes, every append
/// resolves with its own seq, and a mix with immediate appends keeps the chain in order.
#[tokio::test(flavor = "current_thread")]
async fn statements_sealed_together_are_written_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.jsonl");
    let batches = Arc::new(Mutex::new(Vec::new()));
    let log = AuditLogBuilder::new("t")
        .file(&path)
        .sink(
            Box::new(BatchSizes {
                sizes: batches.clone(),
            }),
            false,
        )
        .open()
        .unwrap();
    let mut hs = Vec::new();
    for t in 0..8u32 {
        let s = log.session(&session_info(t));
        hs.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                let via = if i % 7 == 3 {
                    Via::Statement
                } else {
                    Via::HeadAndDone
                };
                seqs.push(
                    append(&s, &format!("select {t}, {i}"), via)
                        .await
                        .unwrap()
                        .seq,
                );
            }
            seqs
        }));
    }
    let mut acked = HashSet::new();
    for h in hs {
        for seq in h.await.unwrap() {
            assert!(acked.insert(seq), "seq {seq} acknowledged twice");
        }
    }
    // A sealed append that is dropped unpolled is still written.
    let s = log.session(&session_info(99));
    let st = stmt("select 'dropped'");
    let head = s.statement_head(&st);
    let (a, b) = (s.in_flight(), s.in_flight());
    drop(s.statement_done(&head, st.outcome, st.duration_us));
    drop((a, b));
    log.close("done").await.unwrap();
    let files = log_files(&path).unwrap();
    let recs = records(&files);
    let statements: Vec<_> = recs.iter().filter(|r| r.event == "statement").collect();
    assert_eq!(statements.len(), 8 * 50 + 1);
    for r in &statements[..statements.len() - 1] {
        assert!(
            acked.contains(&r.seq),
            "seq {} written but never acknowledged",
            r.seq
        );
    }
    assert_eq!(
        statements.last().unwrap().sql.as_deref(),
        Some("select 'dropped'")
    );
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
    }
    assert!(verify(&files, None).unwrap().findings.is_empty());
    // Each commit hands the sinks what it wrote with its one write(2).
    let sizes = batches.lock().unwrap();
    let most = sizes.iter().copied().max().unwrap_or(0);
    assert!(
        most >= 4,
        "no group commit: largest write {most} records ({sizes:?})"
    );
    assert!(
        sizes.len() < 8 * 50 / 2,
        "{} writes for {} records",
        sizes.len(),
        8 * 50 + 1
    );
}

/// An extra sink that notes how many records each commit hands it.
struct BatchSizes {
    sizes: Arc<Mutex<Vec<usize>>>,
}

impl Sink for BatchSizes {
    fn name(&self) -> &str {
        "batch-sizes"
    }
    fn inline_ok(&self) -> bool {
        true
    }
    fn write_batch(&mut self, batch: &[SealedRecord<'_>]) -> Result<(), SinkError> {
        self.sizes.lock().unwrap().push(batch.len());
        Ok(())
    }
}

/// Time rotation every 100 ms under `tasks` concurrent writers pausing `pause` between
/// statements.
async fn time_rotation(tasks: usize, pause: Duration, via: Via) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.jsonl");
    let b = AuditLogBuilder::new("t")
        .file(&path)
        .rotate_after(Duration::from_millis(100));
    concurrent_rotation(b, path, tasks, 60, Some(pause), via).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_rotation_with_concurrent_writers_loses_nothing() {
    time_rotation(4, Duration::from_millis(10), Via::Statement).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_with_fsync_and_both_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.jsonl");
    let b = AuditLogBuilder::new("t")
        .file(&path)
        .fsync(Fsync::Batch)
        .rotate_bytes(16384)
        .rotate_after(Duration::from_millis(150));
    concurrent_rotation(b, path, 32, 40, None, Via::Statement).await;
}

/// The writer thread (fsync = "batch") takes statement records whose outcome its caller
/// hashed on top of the head's state: they chain and verify like the others, keyed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_with_fsync_of_heads_and_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.jsonl");
    let b = AuditLogBuilder::new("t")
        .file(&path)
        .fsync(Fsync::Batch)
        .rotate_bytes(16384);
    concurrent_rotation(b, path, 8, 40, None, Via::HeadAndDone).await;

    let keyed = dir.path().join("keyed.jsonl");
    let key = vec![0x5a; 48];
    let log = AuditLogBuilder::new("t")
        .file(&keyed)
        .fsync(Fsync::Batch)
        .hmac_key(key.clone())
        .open()
        .unwrap();
    let s = log.session(&session_info(1));
    for i in 0..20 {
        append(&s, &format!("select {i}"), Via::HeadAndDone)
            .await
            .unwrap();
    }
    log.close("done").await.unwrap();
    let report = verify(std::slice::from_ref(&keyed), Some(&key)).unwrap();
    assert!(report.is_ok(), "{:#?}", report.findings);
    assert_eq!(report.records, 22);
}

#[tokio::test]
async fn idle_log_rotates_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.jsonl");
    let log = AuditLogBuilder::new("t")
        .file(&path)
        .rotate_after(Duration::from_millis(100))
        .open()
        .unwrap();
    log.session(&session_info(1))
        .statement(&stmt("select 1"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Rotated once while idle; the new file holds only its `rotate` header and is not
    // rotated again while nothing is written.
    let files = log_files(&path).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    let recs = records(&files[1..]);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].event, "rotate");
    assert_eq!(recs[0].reason.as_deref(), Some("time"));
    log.close("done").await.unwrap();
    assert!(verify(&log_files(&path).unwrap(), None)
        .unwrap()
        .findings
        .is_empty());
}

#[tokio::test]
async fn restart_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_log(dir.path(), 3, None).await;
    let log = AuditLogBuilder::new("test-0").file(&path).open().unwrap();
    log.session(&session_info(2))
        .statement(&stmt("select 'again'"))
        .await
        .unwrap();
    log.close("done").await.unwrap();
    let files = log_files(&path).unwrap();
    assert_eq!(files.len(), 1);
    let recs = records(&files);
    let starts = recs.iter().filter(|r| r.event == "audit_start").count();
    assert_eq!(starts, 2);
    let report = verify(&files, None).unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.seq_range, Some((1, recs.len() as u64)));
}

#[tokio::test]
async fn crash_with_torn_tail_is_explained_not_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_log(dir.path(), 5, None).await;
    // A crash in the middle of a write leaves a partial last line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(br#"{"v":1,"seq":8,"ts":"2026-11-22T17:00:00.0000"#)
        .unwrap();
    drop(f);
    let report = verify(std::slice::from_ref(&path), None).unwrap();
    assert!(report.is_ok(), "{:#?}", report.findings);
    assert_eq!(report.of_kind(FindingKind::TornTail).count(), 1);
    // The next start moves the torn file aside and continues the chain in a new file.
    let log = AuditLogBuilder::new("test-0").file(&path).open().unwrap();
    log.session(&session_info(1))
        .statement(&stmt("select 'after'"))
        .await
        .unwrap();
    log.close("done").await.unwrap();
    let files = log_files(&path).unwrap();
    assert_eq!(files.len(), 2);
    let first = &records(&files[1..])[0];
    assert_eq!(first.event, "audit_start");
    assert!(first.reason.as_deref().unwrap().contains("torn"));
    assert_eq!(first.predecessor.as_ref().unwrap().last_seq, 7);
    let report = verify(&files, None).unwrap();
    assert!(report.is_ok(), "{:#?}", report.findings);
    let torn: Vec<_> = report.of_kind(FindingKind::TornTail).collect();
    assert_eq!(torn.len(), 1);
    assert_eq!(torn[0].file, files[0]);
    assert_eq!(torn[0].line, Some(8));
}

#[tokio::test]
async fn crash_between_rotation_steps_recovers() {
    // Rotation renamed the file, then pgward died before the new file's first record.
    let dir = tempfile::tempdir().unwrap();
    let path = small_log(dir.path(), 2, None).await;
    let moved = dir.path().join("audit.20261122T170000.000000Z.jsonl");
    std::fs::rename(&path, &moved).unwrap();
    let log = AuditLogBuilder::new("test-0").file(&path).open().unwrap();
    log.close("done").await.unwrap();
    let files = log_files(&path).unwrap();
    assert_eq!(files, vec![moved, path.clone()]);
    let report = verify(&files, None).unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
}

/// A sink that records lines or fails on demand.
struct TestSink {
    lines: Arc<Mutex<Vec<String>>>,
    fail: Arc<Mutex<bool>>,
}

impl Sink for TestSink {
    fn name(&self) -> &str {
        "test"
    }
    fn write_batch(&mut self, batch: &[SealedRecord<'_>]) -> Result<(), SinkError> {
        if *self.fail.lock().unwrap() {
            return Err("sink is down".into());
        }
        let mut l = self.lines.lock().unwrap();
        for r in batch {
            l.push(String::from_utf8(r.line.to_vec())?);
        }
        Ok(())
    }
}

#[tokio::test]
async fn fan_out_to_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let copy = Arc::new(Mutex::new(Vec::new()));
    let best_fail = Arc::new(Mutex::new(true));
    let auth_fail = Arc::new(Mutex::new(false));
    let log = AuditLogBuilder::new("t")
        .file(&path)
        .sink(
            Box::new(TestSink {
                lines: copy.clone(),
                fail: auth_fail.clone(),
            }),
            true,
        )
        .sink(
            Box::new(TestSink {
                lines: Arc::new(Mutex::new(Vec::new())),
                fail: best_fail,
            }),
            false,
        )
        .open()
        .unwrap();
    let s = log.session(&session_info(1));
    // A failing best-effort sink does not fail the append.
    s.statement(&stmt("select 1")).await.unwrap();
    assert!(log.ready().is_ok());
    // A failing authoritative sink does, and the proxy is told to refuse (58030).
    *auth_fail.lock().unwrap() = true;
    let e = s.statement(&stmt("select 2")).await.unwrap_err();
    assert!(matches!(e, AuditError::Sink { .. }), "{e}");
    assert_eq!(e.sqlstate(), "58030");
    assert_eq!(log.ready(), Err(e), "ready() reports the last failure");
    *auth_fail.lock().unwrap() = false;
    s.statement(&stmt("select 3")).await.unwrap();
    assert!(
        log.ready().is_ok(),
        "a successful append clears the failed state"
    );
    log.close("done").await.unwrap();
    // The authoritative copy has exactly the file's lines except the one batch it failed.
    let file = lines(&path);
    let got = copy.lock().unwrap().clone();
    let expected: Vec<String> = file
        .iter()
        .filter(|l| !l.contains("select 2"))
        .cloned()
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn failure_mode_log_lets_statements_through() {
    let fail = Arc::new(Mutex::new(true));
    let log = AuditLogBuilder::new("t")
        .failure_mode(FailureMode::Log)
        .sink(
            Box::new(TestSink {
                lines: Arc::new(Mutex::new(Vec::new())),
                fail,
            }),
            true,
        )
        .open()
        .unwrap();
    let r = log
        .session(&session_info(1))
        .statement(&stmt("select 1"))
        .await
        .unwrap();
    assert!(!r.recorded);
    assert!(log.ready().is_ok());
}

#[test]
fn synchronous_callers_can_wait() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = AuditLogBuilder::new("t").file(&path).open().unwrap();
    let r = log
        .session(&session_info(1))
        .statement(&stmt("select 1"))
        .wait()
        .unwrap();
    assert_eq!(r.seq, 2);
    drop(log);
    // Dropping every handle stops the writer with audit_stop.
    for _ in 0..100 {
        if records(std::slice::from_ref(&path))
            .last()
            .is_some_and(|r| r.event == "audit_stop")
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no audit_stop after drop");
}

#[tokio::test]
async fn a_second_writer_on_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = AuditLogBuilder::new("t").file(&path).open().unwrap();
    let second = AuditLogBuilder::new("u").file(&path).open();
    assert!(matches!(&second, Err(AuditError::Config(m)) if m.contains("in use")));
    log.close("done").await.unwrap();
    // Released once the first writer stops.
    let again = AuditLogBuilder::new("u").file(&path).open().unwrap();
    again.close("done").await.unwrap();
    assert!(verify(&log_files(&path).unwrap(), None)
        .unwrap()
        .findings
        .is_empty());
}

#[test]
fn unwritable_location_fails_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let e = AuditLogBuilder::new("t")
        .file(blocker.join("audit.jsonl"))
        .open();
    assert!(e.is_err());
}

const CHILD_ENV: &str = "PGWARD_AUDIT_FSIZE_CHILD";
/// "deferred" makes the child append through `statement_done` from concurrent tasks.
const CHILD_VIA_ENV: &str = "PGWARD_AUDIT_FSIZE_VIA";
const LIMIT: u64 = 16 * 1024;

/// Runs only inside the child process started by `full_disk_refuses_instead_of_hanging`,
/// with a file-size limit (RLIMIT_FSIZE) standing in for a full disk.
#[test]
fn fsize_limited_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    // SAFETY: plain libc calls in a single-purpose child; SIGXFSZ would otherwise kill
    // the process instead of letting write(2) fail with EFBIG, as pgward's main does too.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: LIMIT,
            rlim_max: LIMIT,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let path = std::path::Path::new(&dir).join("pgward.jsonl");
        let log = AuditLogBuilder::new("t").file(&path).open().unwrap();
        if std::env::var(CHILD_VIA_ENV).as_deref() == Ok("deferred") {
            group_committed_on_a_full_disk(&log, &path).await;
            return;
        }
        let s = log.session(&session_info(1));
        let mut ok = 0;
        let mut err = None;
        for i in 0..10_000 {
            let sql = format!("select {i}, '{}'", "x".repeat(100));
            let r = tokio::time::timeout(Duration::from_secs(10), s.statement(&stmt(&sql)))
                .await
                .expect("append hung on a full disk");
            match r {
                Ok(_) => ok += 1,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let e = err.expect("the size limit was never hit");
        assert!(matches!(e, AuditError::Io { .. }), "{e:?}");
        assert!(log.ready().is_err());
        // Later appends keep failing promptly; concurrent ones too.
        let mut hs = Vec::new();
        for _ in 0..8 {
            let s = s.clone();
            hs.push(tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(10), s.statement(&stmt("select 'late'")))
                    .await
            }));
        }
        for h in hs {
            assert!(h.await.unwrap().expect("hung").is_err());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), log.close("done"))
            .await
            .expect("close hung");
        println!("CHILD-RESULT ok={ok} error={e}");
    });
}

/// In the child: 8 concurrent sessions append through `statement_done` until the limit
/// refuses them. Every acknowledged record is in the file; the failed group writes left
/// nothing behind; every append resolved.
async fn group_committed_on_a_full_disk(log: &AuditLog, path: &std::path::Path) {
    let mut hs = Vec::new();
    for t in 0..8u32 {
        let s = log.session(&session_info(t));
        hs.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..10_000 {
                let sql = format!("select {t}, {i}, '{}'", "x".repeat(100));
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    append(&s, &sql, Via::HeadAndDone),
                )
                .await
                .expect("append hung on a full disk");
                match r {
                    Ok(_) => acked.push(sql),
                    Err(e) => return (acked, e),
                }
            }
            panic!("the size limit was never hit");
        }));
    }
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for h in hs {
        let (a, e) = h.await.unwrap();
        acked.extend(a);
        errors.push(e);
    }
    for e in &errors {
        assert!(matches!(e, AuditError::Io { .. }), "{e:?}");
    }
    assert!(log.ready().is_err());
    let _ = tokio::time::timeout(Duration::from_secs(10), log.close("done"))
        .await
        .expect("close hung");
    let written: HashSet<String> = records(&[path.to_path_buf()])
        .into_iter()
        .filter_map(|r| r.sql)
        .collect();
    for sql in &acked {
        assert!(
            written.contains(sql),
            "acknowledged but not in the file: {sql}"
        );
    }
    println!("CHILD-RESULT ok={} error={}", acked.len(), errors[0]);
}

#[test]
fn full_disk_refuses_instead_of_hanging() {
    full_disk_child(None);
}

#[test]
fn full_disk_refuses_group_committed_statements() {
    full_disk_child(Some("deferred"));
}

fn full_disk_child(via: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fsize_limited_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .env(CHILD_VIA_ENV, via.unwrap_or("statement"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CHILD-RESULT"), "{stdout}");
    let line = stdout.lines().find(|l| l.contains("CHILD-RESULT")).unwrap();
    assert!(
        line.contains("too large") || line.contains("EFBIG") || line.contains("File too large"),
        "{line}"
    );
    // The file stayed within the limit, ends with a whole line, and verifies: the failed
    // batch was cut back, so no half-written record is left behind.
    let path = dir.path().join("pgward.jsonl");
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() as u64 <= LIMIT);
    assert_eq!(bytes.last(), Some(&b'\n'));
    let report = verify(&[path], None).unwrap();
    assert!(report.is_ok(), "{:#?}", report.findings);
    assert_eq!(report.of_kind(FindingKind::TornTail).count(), 0);
}

/// A lone running statement is written at once (its append is ready on the first poll);
/// with others running it waits one turn for them, then writes.
#[test]
fn group_commit_only_while_several_statements_run() {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Waker};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.jsonl");
    let log = AuditLogBuilder::new("t").file(&path).open().unwrap();
    let s = log.session(&session_info(1));
    let st = stmt("select 'alone'");
    let head = s.statement_head(&st);
    let mut cx = Context::from_waker(Waker::noop());

    let running = s.in_flight();
    let mut alone = s.statement_done(&head, st.outcome, st.duration_us);
    assert!(Pin::new(&mut alone).poll(&mut cx).is_ready());
    drop(running);

    let (first, second) = (s.in_flight(), s.in_flight());
    let mut a = s.statement_done(&head, st.outcome, st.duration_us);
    let mut b = s.statement_done(&head, st.outcome, st.duration_us);
    assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
    assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
    let Poll::Ready(ra) = Pin::new(&mut a).poll(&mut cx) else {
        panic!("not written after its turn");
    };
    // `a` wrote both: `b` is ready without yielding again.
    let Poll::Ready(rb) = Pin::new(&mut b).poll(&mut cx) else {
        panic!("not written with the other");
    };
    assert_eq!(rb.unwrap().seq, ra.unwrap().seq + 1);
    drop((first, second));
    let lines = std::fs::read_to_string(&path).unwrap();
    assert_eq!(lines.matches("\"event\":\"statement\"").count(), 3);
}
