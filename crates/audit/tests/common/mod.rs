//! Helpers shared by the integration tests (included with `mod common;`).
// Test helpers outside #[test] functions may unwrap too (clippy.toml only covers the tests).
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use aws_lc_rs::{digest, hmac};
use pgward_audit::*;

pub fn session_info(n: u32) -> SessionInfo {
    SessionInfo {
        session: format!("s{n}"),
        client: Client {
            addr: format!("10.0.0.{n}:5{n:04}"),
            user: Some("alice@contoso.com".into()),
            application_name: Some("psql".into()),
            tls: true,
            tls_version: Some("TLSv1.3".into()),
        },
        identity: Some(Identity {
            oid: Some("11111111-1111-4111-8111-111111111111".into()),
            tid: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
            upn: Some("alice@contoso.com".into()),
            appid: Some("04b07795-8ddb-461a-bbee-02f9e1bf7b46".into()),
            roles: vec!["analyst".into()],
        }),
        database: Some("app".into()),
    }
}

pub fn stmt(sql: &str) -> Statement<'_> {
    Statement {
        sql,
        protocol: Protocol::Simple,
        decision: Decision::Allow,
        outcome: Outcome {
            command_tag: Some("SELECT 1"),
            rows: Some(1),
            ..Outcome::default()
        },
        duration_us: 120,
        ..Statement::default()
    }
}

/// Every record of every file, in order.
pub fn records(files: &[PathBuf]) -> Vec<Record> {
    let mut v = Vec::new();
    for f in files {
        for item in read_records(f).unwrap() {
            if let ReadItem::Record { record, .. } = item.unwrap() {
                v.push(*record);
            }
        }
    }
    v
}

pub fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn write_lines(p: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(p, s).unwrap();
}

/// What a forger does: recompute a line's hash (without a key, or with one).
pub fn rehash(line: &str, key: Option<&[u8]>) -> String {
    let cut = line.rfind(",\"hash\":\"").unwrap();
    let body = format!("{}}}", &line[..cut]);
    let h: Vec<u8> = match key {
        None => digest::digest(&digest::SHA256, body.as_bytes())
            .as_ref()
            .to_vec(),
        Some(k) => hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k), body.as_bytes())
            .as_ref()
            .to_vec(),
    };
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("{},\"hash\":\"{hex}\"}}", &line[..cut])
}

/// Sets a line's prev_hash.
pub fn set_prev(line: &str, prev: &str) -> String {
    let start = line.find("\"prev_hash\":\"").unwrap() + 13;
    format!("{}{}{}", &line[..start], prev, &line[start + 64..])
}

pub fn hash_of(line: &str) -> String {
    let start = line.rfind("\"hash\":\"").unwrap() + 8;
    line[start..start + 64].to_string()
}

/// A closed log of `n` statements in one file.
pub async fn small_log(dir: &Path, n: usize, key: Option<Vec<u8>>) -> PathBuf {
    let path = dir.join("audit.jsonl");
    let mut b = AuditLogBuilder::new("test-0").file(&path);
    if let Some(k) = key {
        b = b.hmac_key(k);
    }
    let log = b.open().unwrap();
    let s = log.session(&session_info(1));
    for i in 0..n {
        s.statement(&stmt(&format!("select {i}"))).await.unwrap();
    }
    log.close("test done").await.unwrap();
    path
}
