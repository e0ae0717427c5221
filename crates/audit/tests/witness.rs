//! The witness: signed checkpoints of the chain head in a file of their own, so a log cut
//! at a line boundary (which otherwise verifies, like a crashed writer's) is caught as
//! TRUNCATED with its first missing seq, and a rewritten chain as CHANGED.
// Test helpers outside #[test] functions may unwrap too (clippy.toml only covers the tests).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use pgward_audit::*;

const WKEY: &[u8] = b"witness key: 32 bytes or more, random in real life";

/// A closed log of `n` statements with a witness checkpointing every 20 ms; statements are
/// spread over time so the witness sees intermediate heads too.
async fn witnessed_log(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let path = dir.join("log/audit.jsonl");
    let witness = dir.join("elsewhere/witness.jsonl");
    let log = AuditLogBuilder::new("test-0")
        .file(&path)
        .witness(&witness, WKEY.to_vec(), Duration::from_millis(20))
        .open()
        .unwrap();
    let s = log.session(&session_info(1));
    for i in 0..n {
        s.statement(&stmt(&format!("select {i}"))).await.unwrap();
        if i % 5 == 4 {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    log.close("test done").await.unwrap();
    (path, witness)
}

fn problems(r: &VerifyReport) -> Vec<&Finding> {
    r.findings.iter().filter(|f| f.kind.is_problem()).collect()
}

fn check(files: &[PathBuf], witness: &Path) -> VerifyReport {
    let w = read_witness(witness, WKEY).unwrap();
    verify_with_witness(files, None, &w).unwrap()
}

#[tokio::test]
async fn an_intact_log_passes_and_its_last_checkpoint_is_audit_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (log, witness) = witnessed_log(dir.path(), 20).await;
    let w = read_witness(&witness, WKEY).unwrap();
    assert!(w.checkpoints.len() >= 3, "{:?}", w.checkpoints);
    let recs = records(std::slice::from_ref(&log));
    let stop = recs.last().unwrap();
    assert_eq!(stop.event, "audit_stop");
    assert_eq!(w.head().unwrap().seq, stop.seq, "the close is checkpointed");
    let report = check(&[log], &witness);
    assert!(report.is_ok(), "{:#?}", report.findings);
}

#[tokio::test]
async fn a_tail_cut_at_a_line_boundary_is_truncated_with_the_first_missing_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (log, witness) = witnessed_log(dir.path(), 20).await;
    let mut l = lines(&log);
    let kept = l.len() - 4;
    l.truncate(kept);
    write_lines(&log, &l);
    // Without the witness the cut looks like a crash: OK with a note.
    assert!(verify(std::slice::from_ref(&log), None).unwrap().is_ok());
    let report = check(std::slice::from_ref(&log), &witness);
    let p = problems(&report);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].kind, FindingKind::Truncated);
    let first_missing = kept as u64 + 1;
    assert_eq!(p[0].seq, Some(first_missing));
    assert!(
        p[0].message
            .contains(&format!("first missing seq {first_missing}")),
        "{}",
        p[0].message
    );
    // And so says run_verify, as the CLI prints it.
    let mut out = Vec::new();
    let report = run_verify(
        &VerifyArgs {
            files: vec![log.clone()],
            witness: Some(witness.clone()),
            witness_key_file: Some(key_file(dir.path())),
            ..VerifyArgs::default()
        },
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!report.is_ok());
    assert!(text.contains("TRUNCATED"), "{text}");
    assert!(text.lines().last().unwrap().starts_with("FAILED"), "{text}");
}

fn key_file(dir: &Path) -> PathBuf {
    let p = dir.join("witness.key");
    std::fs::write(&p, WKEY).unwrap();
    p
}

#[tokio::test]
async fn a_rewritten_chain_contradicts_the_witness() {
    let dir = tempfile::tempdir().unwrap();
    let (log, witness) = witnessed_log(dir.path(), 20).await;
    // Without a chain key anyone can re-hash: drop statement 10 and re-chain everything
    // after it, renumbered, so the chain alone verifies — but it is shorter than the
    // witness saw, and the records the witness names have other hashes now.
    let mut l = lines(&log);
    l.remove(11);
    let mut prev = hash_of(&l[10]);
    for (i, line) in l.iter_mut().enumerate().skip(11) {
        let seq = i as u64 + 1;
        let renumbered = line.replacen(
            &format!("\"seq\":{}", seq + 1),
            &format!("\"seq\":{seq}"),
            1,
        );
        *line = rehash(&set_prev(&renumbered, &prev), None);
        prev = hash_of(line);
    }
    write_lines(&log, &l);
    assert!(verify(std::slice::from_ref(&log), None).unwrap().is_ok());
    let report = check(std::slice::from_ref(&log), &witness);
    let kinds: Vec<FindingKind> = problems(&report).iter().map(|f| f.kind).collect();
    assert!(kinds.contains(&FindingKind::Truncated), "{kinds:?}");
    assert!(kinds.contains(&FindingKind::Changed), "{kinds:?}");
}

#[tokio::test]
async fn an_edited_or_missing_witness_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (log, witness) = witnessed_log(dir.path(), 20).await;
    let mut l = lines(&log);
    l.truncate(l.len() - 3);
    write_lines(&log, &l);
    // Lowering the witness's head to match the cut breaks its MAC: that checkpoint no
    // longer counts (an earlier one still catches the cut if it is late enough), and the
    // edit itself is a problem.
    let w = lines(&witness);
    let last = w.len() - 1;
    let head_seq: u64 = read_witness(&witness, WKEY).unwrap().head().unwrap().seq;
    let mut edited = w.clone();
    edited[last] = edited[last].replace(
        &format!("\"seq\":{head_seq}"),
        &format!("\"seq\":{}", l.len()),
    );
    write_lines(&witness, &edited);
    let report = check(std::slice::from_ref(&log), &witness);
    assert!(
        report.of_kind(FindingKind::Witness).count() == 1,
        "{:#?}",
        report.findings
    );
    assert!(!report.is_ok());
    // A witness signed with another key proves nothing: every line is a problem.
    let other = read_witness(&witness, b"some other key of at least thirty-two bytes").unwrap();
    assert!(other.checkpoints.is_empty());
    let report = verify_with_witness(std::slice::from_ref(&log), None, &other).unwrap();
    assert!(!report.is_ok());
    // A deleted witness is an error, not a pass.
    std::fs::remove_file(&witness).unwrap();
    assert!(read_witness(&witness, WKEY).is_err());
    let mut out = Vec::new();
    assert!(run_verify(
        &VerifyArgs {
            files: vec![log],
            witness: Some(witness),
            witness_key_file: Some(key_file(dir.path())),
            ..VerifyArgs::default()
        },
        &mut out,
    )
    .is_err());
}

#[tokio::test]
async fn a_log_cut_while_pgward_was_down_says_so_when_it_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (log, witness) = witnessed_log(dir.path(), 10).await;
    let mut l = lines(&log);
    l.truncate(l.len() - 3);
    let ends_at = l.len() as u64;
    write_lines(&log, &l);
    let reopened = AuditLogBuilder::new("test-0")
        .file(&log)
        .witness(&witness, WKEY.to_vec(), Duration::from_secs(60))
        .open()
        .unwrap();
    reopened.close("done").await.unwrap();
    let recs = records(std::slice::from_ref(&log));
    let start = recs
        .iter()
        .find(|r| r.event == "audit_start" && r.seq == ends_at + 1)
        .unwrap();
    let reason = start.reason.as_deref().unwrap_or("");
    assert!(reason.contains("were cut off"), "{reason}");
    // The restarted log reuses the cut seqs: the witness still sees the difference.
    let report = check(std::slice::from_ref(&log), &witness);
    assert!(
        report.of_kind(FindingKind::Changed).count() >= 1,
        "{:#?}",
        report.findings
    );
}
