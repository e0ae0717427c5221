//! Runs tests/tsql_corpus.toml against tests/tsql_policy.toml (T-SQL for azure-sql routes).
// Test helpers read fixed files: a panic is the right failure.
#![allow(clippy::unwrap_used)]

use pgward_policy::{Policy, RoleSet, SessionState, Verdict};
use serde::Deserialize;

/// The upstream database of the route the corpus is decided for.
const DATABASE: &str = "app";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    role: String,
    sql: String,
    verdict: String,
    rule: Option<String>,
    why: String,
    #[serde(default)]
    includes: Vec<String>,
    #[serde(default)]
    excludes: Vec<String>,
}

fn load() -> (Policy, Corpus) {
    let dir = env!("CARGO_MANIFEST_DIR");
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/tests/{f}")).unwrap();
    let policy = Policy::from_toml(&read("tsql_policy.toml")).unwrap();
    let corpus: Corpus = toml::from_str(&read("tsql_corpus.toml")).unwrap();
    (policy, corpus)
}

fn roles(policy: &Policy, role: &str) -> RoleSet {
    if role == "none" {
        policy.roles_named(&[]).unwrap()
    } else {
        policy.roles_named(&[role]).unwrap()
    }
}

#[test]
fn tsql_corpus() {
    let (policy, corpus) = load();
    let session = SessionState::new(&policy);
    let mut failures = Vec::new();
    let (mut allows, mut denies) = (0, 0);
    for (i, c) in corpus.case.iter().enumerate() {
        let roles = roles(&policy, &c.role);
        let q = policy.decide_tsql(&roles, &c.sql, &session, Some(DATABASE));
        let want = if c.verdict == "allow" {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let accesses: Vec<String> = q
            .statements
            .iter()
            .flat_map(|s| s.analysis.accesses.iter())
            .map(|a| format!("{} {}", a.action, a.object))
            .collect();
        let rule_ok = c.rule.as_deref().is_none_or(|r| r == q.decision.rule);
        let missing: Vec<&String> = c
            .includes
            .iter()
            .filter(|a| !accesses.contains(a))
            .collect();
        let present: Vec<&String> = c.excludes.iter().filter(|a| accesses.contains(a)).collect();
        if q.decision.verdict != want || !rule_ok || !missing.is_empty() || !present.is_empty() {
            failures.push(format!(
                "case {i} [{}] {:?} ({}): want {} {:?}, got {} {:?} ({}); accesses {accesses:?}, missing {missing:?}, unexpected {present:?}",
                c.role,
                c.sql,
                c.why,
                c.verdict,
                c.rule,
                q.decision.verdict,
                q.decision.rule,
                q.decision.reason,
            ));
        }
        if want == Verdict::Allow {
            allows += 1;
        } else {
            denies += 1;
        }
    }
    println!(
        "tsql corpus: {} cases ({allows} allow, {denies} deny)",
        corpus.case.len()
    );
    assert!(
        failures.is_empty(),
        "{} T-SQL corpus failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(corpus.case.len() >= 150);
}

/// Every prefix and suffix of every corpus batch is decided without a panic: hostile input
/// arrives truncated, unterminated and half-quoted.
#[test]
fn truncated_batches_never_panic() {
    let (policy, corpus) = load();
    let roles = policy.roles_named(&["writer"]).unwrap();
    let session = SessionState::new(&policy);
    let mut n = 0;
    for c in &corpus.case {
        // Every cut of short batches; about 300 cuts of long ones.
        let step = (c.sql.len() / 300).max(1);
        for (i, _) in c.sql.char_indices().step_by(step) {
            for part in [&c.sql[..i], &c.sql[i..]] {
                let q = policy.decide_tsql(&roles, part, &session, Some(DATABASE));
                n += 1 + q.statements.len();
            }
        }
    }
    assert!(n > 1000);
}
