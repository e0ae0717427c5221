//! `verify` names the record that breaks the chain and how.
// Test helpers outside #[test] functions may unwrap too (clippy.toml only covers the tests).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use pgward_audit::*;

fn only_problem(files: &[PathBuf], key: Option<&[u8]>) -> Finding {
    let report = verify(files, key).unwrap();
    let problems: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.kind.is_problem())
        .cloned()
        .collect();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    problems[0].clone()
}

/// Writes a log of `n` statements and rewrites its lines with `edit`.
async fn edited_log(dir: &Path, n: usize, edit: impl FnOnce(&mut Vec<String>)) -> PathBuf {
    let path = small_log(dir, n, None).await;
    let mut l = lines(&path);
    edit(&mut l);
    write_lines(&path, &l);
    path
}

/// `run_verify` on one file; returns the report and what it printed.
fn run_verify_on(path: PathBuf, key_file: Option<PathBuf>) -> (VerifyReport, String) {
    let mut out = Vec::new();
    let report = run_verify(
        &VerifyArgs {
            files: vec![path],
            key_file,
            ..VerifyArgs::default()
        },
        &mut out,
    )
    .unwrap();
    (report, String::from_utf8(out).unwrap())
}

/// Line of the statement `select {i}` (seq i + 2: audit_start is seq 1).
fn line_of(i: usize) -> usize {
    i + 1
}

#[tokio::test]
async fn an_intact_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_log(dir.path(), 10, None).await;
    let (report, text) = run_verify_on(path, None);
    assert!(report.is_ok());
    assert_eq!(report.records, 12);
    assert!(
        text.starts_with("OK: 12 records in 1 files, seq 1..=12"),
        "{text}"
    );
}

#[tokio::test]
async fn an_edited_record_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_log(dir.path(), 10, |l| {
        l[line_of(4)] = l[line_of(4)].replace("select 4", "select 5");
    })
    .await;
    let f = only_problem(std::slice::from_ref(&path), None);
    assert_eq!(f.kind, FindingKind::Changed);
    assert_eq!((f.line, f.seq), (Some(6), Some(6)));
    let (report, text) = run_verify_on(path, None);
    assert!(!report.is_ok());
    assert!(
        text.contains("CHANGED:")
            && text.contains(":6 (seq 6)")
            && text.contains("FAILED: 1 problems"),
        "{text}"
    );
}

#[tokio::test]
async fn an_edited_and_rehashed_record_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_log(dir.path(), 10, |l| {
        l[line_of(4)] = rehash(&l[line_of(4)].replace("select 4", "select 5"), None);
    })
    .await;
    let f = only_problem(&[path], None);
    assert_eq!(f.kind, FindingKind::Changed);
    assert_eq!(f.seq, Some(6), "{f}");
    assert!(f.message.contains("re-hashed"), "{f}");
}

#[tokio::test]
async fn a_removed_record_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_log(dir.path(), 10, |l| {
        l.remove(line_of(4));
    })
    .await;
    let f = only_problem(&[path], None);
    assert_eq!(f.kind, FindingKind::Missing);
    assert_eq!(f.seq, Some(7));
    assert!(f.message.contains("seq 6 is missing"), "{f}");
}

#[tokio::test]
async fn swapped_records_are_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_log(dir.path(), 10, |l| {
        l.swap(line_of(3), line_of(4));
    })
    .await;
    let f = only_problem(&[path], None);
    assert_eq!(f.kind, FindingKind::Reordered);
    assert_eq!(f.seq, Some(5));
    assert!(f.message.contains("after seq 6"), "{f}");
}

#[tokio::test]
async fn a_duplicated_record_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_log(dir.path(), 5, |l| {
        let dup = l[line_of(2)].clone();
        l.insert(line_of(2) + 1, dup);
    })
    .await;
    let report = verify(&[path], None).unwrap();
    assert!(
        report.of_kind(FindingKind::Duplicate).count() == 1,
        "{:#?}",
        report.findings
    );
}

/// Three files from size rotation.
async fn rotated_log(dir: &Path) -> Vec<PathBuf> {
    let path = dir.join("pgward.jsonl");
    let log = AuditLogBuilder::new("t")
        .file(&path)
        .rotate_bytes(4096)
        .open()
        .unwrap();
    let s = log.session(&session_info(1));
    for i in 0..30 {
        s.statement(&stmt(&format!("select {i}"))).await.unwrap();
    }
    log.close("done").await.unwrap();
    let files = log_files(&path).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    let report = verify(&files, None).unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    files
}

#[tokio::test]
async fn a_truncated_file_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let files = rotated_log(dir.path()).await;
    let mut l = lines(&files[0]);
    let last_seq_before = records(&files[..1]).last().unwrap().seq;
    l.truncate(l.len() - 2);
    write_lines(&files[0], &l);
    let f = only_problem(&files, None);
    assert_eq!(f.kind, FindingKind::Truncated, "{f}");
    assert_eq!(f.file, files[0]);
    assert!(
        f.message
            .contains(&format!("{}..={}", last_seq_before - 1, last_seq_before)),
        "{f}"
    );
}

#[tokio::test]
async fn a_deleted_middle_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = rotated_log(dir.path()).await;
    let gone = files.remove(1);
    let f = only_problem(&files, None);
    assert_eq!(f.kind, FindingKind::Missing, "{f}");
    assert_eq!(f.file, files[1]);
    assert!(
        f.message
            .contains(gone.file_name().unwrap().to_str().unwrap()),
        "{f}"
    );
}

#[tokio::test]
async fn verifying_only_recent_files_is_a_note_not_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let files = rotated_log(dir.path()).await;
    let report = verify(&files[1..], None).unwrap();
    assert!(report.is_ok(), "{:#?}", report.findings);
    assert_eq!(report.of_kind(FindingKind::Note).count(), 1);
}

#[tokio::test]
async fn files_given_out_of_order_are_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = rotated_log(dir.path()).await;
    files.swap(0, 1);
    let report = verify(&files, None).unwrap();
    assert!(!report.is_ok());
    assert!(
        report.of_kind(FindingKind::Reordered).count() >= 1,
        "{:#?}",
        report.findings
    );
}

#[tokio::test]
async fn a_garbage_line_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_log(dir.path(), 3, |l| {
        l.insert(2, "not json".to_string());
    })
    .await;
    let f = only_problem(&[path], None);
    assert_eq!((f.kind, f.line), (FindingKind::Malformed, Some(3)));
}

#[tokio::test]
async fn hmac_chain_needs_the_key_and_rejects_a_chain_recomputed_without_it() {
    let key = b"0123456789abcdef0123456789abcdef-test-key".to_vec();
    let dir = tempfile::tempdir().unwrap();
    let path = small_log(dir.path(), 6, Some(key.clone())).await;
    let report = verify(std::slice::from_ref(&path), Some(&key)).unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(
        records(std::slice::from_ref(&path))[0].alg.as_deref(),
        Some("hmac-sha256")
    );

    // Without the key: links and order are checked, but the result is not OK.
    let report = verify(std::slice::from_ref(&path), None).unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.of_kind(FindingKind::Key).count(), 1);
    assert_eq!(report.of_kind(FindingKind::Changed).count(), 0);

    // A wrong key: every hash mismatches, and the key id says why.
    let report = verify(
        std::slice::from_ref(&path),
        Some(b"another key another key another key!"),
    )
    .unwrap();
    assert!(report.of_kind(FindingKind::Key).count() >= 1);

    // The forger edits a record and recomputes the whole chain as plain SHA-256,
    // even claiming `alg: sha256`: the key holder sees every record changed.
    let mut l = lines(&path);
    l[3] = l[3].replace("select 2", "select 200");
    let mut prev = GENESIS.to_string();
    for line in l.iter_mut() {
        let forged = set_prev(&line.replace("hmac-sha256", "sha256"), &prev);
        *line = rehash(&forged, None);
        prev = hash_of(line);
    }
    write_lines(&path, &l);
    assert!(
        verify(std::slice::from_ref(&path), None).unwrap().is_ok(),
        "without the key the forgery is consistent"
    );
    let report = verify(std::slice::from_ref(&path), Some(&key)).unwrap();
    assert!(!report.is_ok());
    assert_eq!(
        report.of_kind(FindingKind::Changed).count(),
        l.len(),
        "{:#?}",
        report.findings
    );
}

#[tokio::test]
async fn verify_reads_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = b"0123456789abcdef0123456789abcdef-test-key".to_vec();
    let path = small_log(dir.path(), 2, Some(key.clone())).await;
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, [key.as_slice(), b"\n"].concat()).unwrap();
    let (r, text) = run_verify_on(path, Some(key_file));
    assert!(r.is_ok(), "{text}");
}

/// The fixtures: a v1 chain as pgward 0.1.0 wrote it (the samples of docs/audit.md before
/// schema version 2), and the same records chained with HMAC-SHA-256 under
/// `v1-hmac.key`, in a temporary directory.
fn v1_fixture(dir: &Path, keyed: bool) -> (PathBuf, Option<Vec<u8>>) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let name = if keyed {
        "v1-hmac.jsonl"
    } else {
        "v1-sha256.jsonl"
    };
    let path = dir.join("pgward.jsonl");
    std::fs::copy(data.join(name), &path).unwrap();
    let key = keyed.then(|| std::fs::read(data.join("v1-hmac.key")).unwrap());
    (path, key)
}

/// Files written before schema version 2 (`seq` and `ts` after `v`) verify as they did.
#[test]
fn version_1_files_still_verify() {
    for keyed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (path, key) = v1_fixture(dir.path(), keyed);
        let report = verify(std::slice::from_ref(&path), key.as_deref()).unwrap();
        assert!(report.is_ok(), "keyed {keyed}: {:#?}", report.findings);
        assert_eq!(report.records, 7);
        assert!(lines(&path)
            .iter()
            .all(|l| l.starts_with("{\"v\":1,\"seq\":")));
        if keyed {
            // The wrong key is still told apart from an edit.
            let report = verify(std::slice::from_ref(&path), Some(&[7u8; 40])).unwrap();
            assert!(report.findings.iter().any(|f| f.kind == FindingKind::Key));
        }
    }
}

/// An upgraded pgward continues a version 1 file in place: its records are version 2,
/// chained to the last version 1 record, and the whole file verifies — with the
/// verifier, and with the documented recipe (SHA-256 or HMAC of the line without its
/// `hash` member), computed here independently of the writer.
#[tokio::test]
async fn a_version_1_log_continued_in_version_2_verifies() {
    for keyed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (path, key) = v1_fixture(dir.path(), keyed);
        let v1_last = hash_of(lines(&path).last().unwrap());
        let mut b = AuditLogBuilder::new("pgward-0").file(&path);
        if let Some(k) = &key {
            b = b.hmac_key(k.clone());
        }
        let log = b.open().unwrap();
        let s = log.session(&session_info(1));
        s.statement(&stmt("select \"a\\b\" -- naïve \u{1}"))
            .await
            .unwrap();
        let head = s.statement_head(&stmt("select 2"));
        s.statement_done(&head, Outcome::default(), 5)
            .await
            .unwrap();
        s.statement_done(&head, Outcome::default(), 6)
            .await
            .unwrap();
        log.close("test done").await.unwrap();

        let report = verify(std::slice::from_ref(&path), key.as_deref()).unwrap();
        assert!(report.is_ok(), "keyed {keyed}: {:#?}", report.findings);
        assert_eq!(report.records, 7 + 5);
        let l = lines(&path);
        assert!(l[7].contains(&format!("\"prev_hash\":\"{v1_last}\"")));
        for (i, line) in l.iter().enumerate() {
            assert_eq!(rehash(line, key.as_deref()), *line, "line {}", i + 1);
            let v2 = line.starts_with("{\"v\":2,\"instance\":\"pgward-0\",\"event\":\"");
            assert_eq!(v2, i >= 7, "{line}");
        }
        // Version 2 moves `seq` and `ts` next to `prev_hash` and keeps every member.
        let recs = records(std::slice::from_ref(&path));
        assert!(recs
            .iter()
            .skip(7)
            .all(|r| r.v == 2 && r.instance == "pgward-0"));
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=12).collect::<Vec<_>>()
        );
        let stmt_line = &l[8];
        assert!(
            stmt_line.contains(",\"duration_us\":120,\"seq\":9,\"ts\":\""),
            "{stmt_line}"
        );
        assert!(recs[8].ts.ends_with('Z') && recs[8].ts.len() == 27);
        assert_eq!(
            recs[8].sql.as_deref(),
            Some("select \"a\\b\" -- naïve \u{1}")
        );
    }
}
