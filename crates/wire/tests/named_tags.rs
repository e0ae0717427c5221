//! The crates that speak the protocol name every message tag (`pgward_wire::tag`): a raw
//! `b'C'` cannot say whether it is Close or CommandComplete.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `b'X'` where X is a letter or digit: the shape of a message tag.
fn raw_tags(line: &str) -> bool {
    let b = line.as_bytes();
    b.windows(4)
        .any(|w| w[0] == b'b' && w[1] == b'\'' && w[2].is_ascii_alphanumeric() && w[3] == b'\'')
}

#[test]
fn no_raw_message_tags_outside_the_wire_crate() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for name in ["proxy", "upstream", "tds"] {
        rust_files(&crates.join(name).join("src"), &mut files);
    }
    assert!(
        files.len() > 10,
        "sources not found under {}",
        crates.display()
    );
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if raw_tags(code) {
                found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "raw message tags; use pgward_wire::tag:\n{}",
        found.join("\n")
    );
}
