//! `pgward demo`, as a new user meets it: start it, paste the printed commands, reach a
//! denied statement, find it in the audit log, and Ctrl-C leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use pgward_proto_tests::*;

/// The two lines after `heading` in the demo's instructions, joined into one shell command.
fn command_after(text: &str, heading: &str) -> String {
    let mut lines = text.lines().skip_while(|l| !l.contains(heading)).skip(1);
    let first = lines
        .next()
        .unwrap_or_default()
        .trim()
        .trim_end_matches('\\')
        .to_owned();
    let second = lines.next().unwrap_or_default().trim().to_owned();
    format!("{first} {second}")
}

#[test]
fn the_demo_reaches_a_denied_statement_in_the_audit_log() {
    let port = pgward_devkit::free_port().unwrap();
    let mut demo = Command::new(pgward_bin())
        .args(["demo", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut text = String::new();
    let mut out = BufReader::new(demo.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        text.push_str(&line);
        if line.contains("Press Ctrl-C") {
            break;
        }
        line.clear();
    }
    assert!(text.contains("pgward demo is running"), "{text}");

    let alice = command_after(&text, "as alice (role analyst");
    assert!(
        text.contains("SELECT name, email FROM customers;"),
        "{text}"
    );
    let run = |cmd: &str, sql: &str| {
        Command::new("bash")
            .arg("-c")
            .arg(format!("{cmd} -X -At -c \"{sql}\""))
            .output()
            .unwrap()
    };
    let ok = run(&alice, "SELECT count(*) FROM orders");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "30");
    // The masked column the instructions show.
    let masked = run(&alice, "SELECT name, email FROM customers ORDER BY id");
    let rows = String::from_utf8_lossy(&masked.stdout);
    assert!(
        masked.status.success()
            && rows.contains("Contoso|****@contoso.com")
            && !rows.contains("purchasing"),
        "{rows}{}",
        String::from_utf8_lossy(&masked.stderr)
    );
    let denied = run(&alice, "SELECT name FROM customers WHERE email LIKE 'p%'");
    assert!(!denied.status.success(), "a filter on a masked column ran");
    let denied = run(&alice, "SELECT * FROM salaries");
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && err.contains("pgward policy denied this statement"),
        "{err}"
    );

    let search = text
        .lines()
        .find(|l| l.contains("audit search --file"))
        .expect("audit instructions")
        .trim()
        .to_owned();
    let found = Command::new("bash")
        .arg("-c")
        .arg(&search)
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&found.stdout);
    assert!(
        found.contains("SELECT * FROM salaries") && found.contains("42501"),
        "{found}"
    );

    let dir = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("configuration"))
        .map(|p| {
            std::path::PathBuf::from(p.trim())
                .parent()
                .unwrap()
                .to_path_buf()
        })
        .expect("configuration path");
    assert!(dir.exists());
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(demo.id() as i32, libc::SIGINT);
    }
    let status = (0..300)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            demo.try_wait().unwrap()
        })
        .expect("demo stopped after Ctrl-C");
    assert!(status.success());
    assert!(!dir.exists(), "the demo left {} behind", dir.display());
}
