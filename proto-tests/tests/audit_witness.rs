//! The audit witness end to end, with the real binary: pgward checkpoints its chain head into
//! a signed witness file every `witness_interval_secs`; `pgward audit verify` passes the
//! intact log, reports a log whose tail was cut at a line boundary TRUNCATED with the first
//! missing seq (which the chain alone cannot tell from a crash), and never blames a log that
//! a kill -9 cut short (the witness only names records already written).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgward_proto_tests::*;

struct Setup {
    _db: Database,
    pgward: Pgward,
    log: PathBuf,
    witness: PathBuf,
    key: PathBuf,
}

fn start(dir: &Path) -> Setup {
    let log = dir.join("audit/pgward.jsonl");
    // Elsewhere than the log, as docs/audit.md advises.
    let witness = dir.join("witness/pgward-witness.jsonl");
    let key = dir.join("witness.key");
    std::fs::write(
        &key,
        "a witness key of at least thirty-two bytes, for tests\n",
    )
    .unwrap();
    let db = Database::start();
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            tls: false,
            extra_toml: format!(
                "[audit]\nfile = \"{}\"\nwitness_file = \"{}\"\nwitness_key_file = \"{}\"\nwitness_interval_secs = 1\n",
                log.display(),
                witness.display(),
                key.display()
            ),
            log_level: "info",
            ..Default::default()
        },
    );
    Setup {
        _db: db,
        pgward,
        log,
        witness,
        key,
    }
}

fn audit_verify(args: &[&str]) -> (bool, String) {
    let out = Command::new(pgward_bin())
        .args(["audit", "verify"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn run_statements(s: &Setup, n: usize) {
    let conn = s.pgward.conn("app", "disable");
    for i in 0..n {
        psql_ok(&conn, &["-c", &format!("SELECT {i} AS witnessed")]);
    }
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_cut_tail_is_truncated_and_an_intact_log_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path());
    run_statements(&s, 5);
    // At least one interval passes with these records written.
    std::thread::sleep(Duration::from_millis(1500));
    run_statements(&s, 5);
    s.pgward.signal(libc::SIGTERM);
    assert!(s.pgward.wait_exit(Duration::from_secs(20)).is_some());
    let config = s.pgward.config_path.to_str().unwrap().to_owned();

    // Intact: the config names the witness, so `--config` checks it.
    let (ok, out) = audit_verify(&["--config", &config]);
    assert!(ok, "{out}");
    assert!(out.contains("witness: "), "{out}");
    assert!(out.lines().last().unwrap().starts_with("OK"), "{out}");

    // Cut the newest six records (audit_stop among them) at a line boundary.
    let mut l = lines(&s.log);
    let kept = l.len() - 6;
    l.truncate(kept);
    std::fs::write(&s.log, format!("{}\n", l.join("\n"))).unwrap();
    let first_missing = kept + 1;

    // The chain alone cannot tell this from a crash...
    let (ok, out) = audit_verify(&["--file", s.log.to_str().unwrap()]);
    assert!(ok, "{out}");
    // ...the witness can, with --config and with explicit flags.
    for args in [
        vec!["--config", config.as_str()],
        vec![
            "--file",
            s.log.to_str().unwrap(),
            "--witness",
            s.witness.to_str().unwrap(),
            "--witness-key-file",
            s.key.to_str().unwrap(),
        ],
    ] {
        let (ok, out) = audit_verify(&args);
        assert!(!ok, "{out}");
        assert!(
            out.lines().any(|l| l.starts_with("TRUNCATED")
                && l.contains(&format!("first missing seq {first_missing}"))),
            "{out}"
        );
        assert!(out.lines().last().unwrap().starts_with("FAILED"), "{out}");
    }

    // A wrong witness key proves nothing and fails; so does a deleted witness.
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, "another key, also at least thirty-two bytes long").unwrap();
    let (ok, out) = audit_verify(&[
        "--file",
        s.log.to_str().unwrap(),
        "--witness",
        s.witness.to_str().unwrap(),
        "--witness-key-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("WITNESS"), "{out}");
    std::fs::remove_file(&s.witness).unwrap();
    let (ok, out) = audit_verify(&["--config", &config]);
    assert!(!ok, "{out}");
}

#[test]
fn a_crash_is_not_mistaken_for_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path());
    let conn = s.pgward.conn("app", "disable");
    // Statements keep coming while checkpoints are taken, then SIGKILL mid-stream.
    let load = std::thread::spawn(move || {
        for i in 0..400 {
            let out = psql(&conn, &["-c", &format!("SELECT {i} AS crashing")], None);
            if !out.status.success() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(2500));
    s.pgward.signal(libc::SIGKILL);
    assert!(s.pgward.wait_exit(Duration::from_secs(10)).is_some());
    load.join().unwrap();
    let config = s.pgward.config_path.to_str().unwrap().to_owned();
    let (ok, out) = audit_verify(&["--config", &config]);
    assert!(ok, "{out}");
    assert!(out.contains("witness: "), "{out}");
    assert!(
        lines(&s.witness).len() >= 2,
        "the witness took checkpoints while the load ran"
    );
}
