//! Runs tests/corpus.toml against tests/policy.toml, directly and through the decision cache.
// Test helpers read fixed files: a panic is the right failure.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use pgward_policy::{DecisionCache, Policy, RoleSet, ServerCatalog, SessionState, Verdict};
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
    /// `"pg15"`: decided only with the catalog of a PostgreSQL 15 server
    /// (tests/fixtures/pg15_catalog.tsv here; the proxy's end-to-end test replays these
    /// against a real PostgreSQL 15 holding the same objects); `"fixture"`: only with the
    /// fixture (it names OIDs of that database); `"offline"`: only without a server catalog;
    /// `"any-but-e2e"`: both ways here, not end to end (OIDs differ there). Cases without it
    /// must give the same decision both ways, and run end to end.
    catalog: Option<String>,
}

/// The catalog of a real PostgreSQL 15.18 database (ServerCatalog::QUERY's answer, from
/// `psql -At -F '<tab>'`) holding the objects the catalog cases name: public.array_shuffle,
/// public.leak(orders), public.report(), the operator public.=== over public.eq_any, a cast
/// to public.mytext through public.to_mytext, the views public.settings_v and settings_v2
/// over pg_settings, pg_catalog.sneaky, information_schema.sneaky_v, and the sequences
/// hr.payroll_seq (OID 16405) and public.orders_seq (OID 16406).
fn pg15_catalog() -> Arc<ServerCatalog> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{dir}/tests/fixtures/pg15_catalog.tsv")).unwrap();
    Arc::new(ServerCatalog::from_tsv(&text).unwrap())
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

fn session_for(
    policy: &Policy,
    roles: &RoleSet,
    setup: &[String],
    catalog: Option<&Arc<ServerCatalog>>,
) -> SessionState {
    let mut session = SessionState::new(policy);
    if let Some(c) = catalog {
        session.set_catalog(Arc::clone(c));
    }
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
    let pg15 = pg15_catalog();
    for (i, c) in corpus.case.iter().enumerate() {
        let roles = roles(&policy, &c.role);
        let catalogs: Vec<Option<&Arc<ServerCatalog>>> = match c.catalog.as_deref() {
            None | Some("any-but-e2e") => vec![None, Some(&pg15)],
            Some("pg15" | "fixture") => vec![Some(&pg15)],
            Some("offline") => vec![None],
            Some(other) => panic!("case {i}: unknown catalog {other:?}"),
        };
        for catalog in catalogs {
            let session = session_for(&policy, &roles, &c.setup, catalog);
            let q = policy.decide_query(&roles, &c.sql, &session);
            let want = if c.verdict == "allow" {
                Verdict::Allow
            } else {
                Verdict::Deny
            };
            let rule_ok = c.rule.as_deref().is_none_or(|r| r == q.decision.rule);
            if q.decision.verdict != want || !rule_ok {
                failures.push(format!(
                    "case {i} [{}] {:?} ({}), {}: want {} {:?}, got {} {:?}\n{}",
                    c.role,
                    c.sql,
                    c.why,
                    if catalog.is_some() {
                        "with the PostgreSQL 15 catalog"
                    } else {
                        "without a catalog"
                    },
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
        }
        if c.verdict == "allow" {
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
