//! Runs tests/corpus.toml against tests/policy.toml, directly and through the decision cache.
// Test helpers read fixed files: a panic is the right failure.
#![allow(clippy::unwrap_used)]

use pgward_policy::{DecisionCache, Policy, RoleSet, SessionState, Verdict};
use serde::Deserialize;

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
    setup: Vec<String>,
}

fn load() -> (Policy, Corpus) {
    let dir = env!("CARGO_MANIFEST_DIR");
    let policy =
        Policy::from_toml(&std::fs::read_to_string(format!("{dir}/tests/policy.toml")).unwrap())
            .unwrap();
    let corpus: Corpus =
        toml::from_str(&std::fs::read_to_string(format!("{dir}/tests/corpus.toml")).unwrap())
            .unwrap();
    (policy, corpus)
}

fn roles(policy: &Policy, role: &str) -> RoleSet {
    if role == "none" {
        policy.roles_named(&[]).unwrap()
    } else {
        policy.roles_named(&[role]).unwrap()
    }
}

fn session_for(policy: &Policy, roles: &RoleSet, setup: &[String]) -> SessionState {
    let mut session = SessionState::new(policy);
    for s in setup {
        let q = policy.decide_query(roles, s, &session);
        for st in &q.statements {
            session.apply(&st.analysis);
        }
    }
    session
}

#[test]
fn corpus() {
    let (policy, corpus) = load();
    let cache = DecisionCache::new(64);
    let mut failures = Vec::new();
    let (mut allows, mut denies) = (0, 0);
    for (i, c) in corpus.case.iter().enumerate() {
        let roles = roles(&policy, &c.role);
        let session = session_for(&policy, &roles, &c.setup);
        let q = policy.decide_query(&roles, &c.sql, &session);
        let want = if c.verdict == "allow" {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let rule_ok = c.rule.as_deref().is_none_or(|r| r == q.decision.rule);
        if q.decision.verdict != want || !rule_ok {
            failures.push(format!(
                "case {i} [{}] {:?} ({}): want {} {:?}, got {} {:?}\n{}",
                c.role,
                c.sql,
                c.why,
                c.verdict,
                c.rule,
                q.decision.verdict,
                q.decision.rule,
                policy.explain(&roles, &c.sql, &session)
            ));
        }
        // The cache must agree with the direct decision, both on a miss and on a hit.
        for _ in 0..2 {
            let cached = cache.decide(&policy, &roles, &session, &c.sql);
            assert_eq!(
                cached.decision, q.decision,
                "cache disagrees on case {i}: {}",
                c.sql
            );
        }
        if want == Verdict::Allow {
            allows += 1;
        } else {
            denies += 1;
        }
    }
    println!(
        "corpus: {} cases ({allows} allow, {denies} deny)",
        corpus.case.len()
    );
    assert!(
        failures.is_empty(),
        "{} corpus failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(corpus.case.len() >= 150);
}

/// Every prefix of every corpus statement (cut at each character) is decided without a panic:
/// hostile input arrives truncated, unterminated and half-quoted.
#[test]
fn truncated_statements_never_panic() {
    let (policy, corpus) = load();
    let roles = policy.roles_named(&["operator"]).unwrap();
    let session = SessionState::new(&policy);
    let mut n = 0;
    for c in &corpus.case {
        for (i, _) in c.sql.char_indices().step_by(3) {
            let q = policy.decide_query(&roles, &c.sql[..i], &session);
            let _ = policy.explain(&roles, &c.sql[i..], &session);
            n += 1 + q.statements.len();
        }
    }
    assert!(n > 1000);
}
