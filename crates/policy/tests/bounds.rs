//! What a caller's input may cost pgward: analysis of hostile shapes stays cheap, the
//! decision cache stays within its byte budget and keeps no big denied text, strings over
//! a budget are refused with their own rule; and what revocation needs from analysis
//! (cursors declared, fetched and closed).
// Fixtures are constants: a panic is the right failure.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pgward_policy::{
    analyze, analyze_limited, Action, AnalysisError, DecisionCache, ObjectRef, Policy, RoleSet,
    SessionEffect, SessionState, Verdict,
};

const POLICY: &str = r#"
[[roles]]
name = "reader"
members = { users = ["alice@contoso.com"] }
allow = [ { actions = ["select", "insert"], objects = ["public.orders"] } ]
"#;

fn setup() -> (Policy, RoleSet, SessionState) {
    let p = Policy::from_toml(POLICY).unwrap();
    let reader = p.roles_named(&["reader"]).unwrap();
    let s = SessionState::new(&p);
    (p, reader, s)
}

fn fill(head: &str, unit: &str, size: usize) -> String {
    format!("{head}{}", unit.repeat((size - head.len()) / unit.len()))
}

#[test]
fn hostile_shapes_are_refused_after_a_linear_scan() {
    // Each of these nests the parse tree once per few bytes; parsed, 1 MiB of the first
    // took 17 s. The scan refuses them before parsing.
    for (name, sql) in [
        ("casts", fill("SELECT '1'", "::text", 1 << 20)),
        ("operators", fill("SELECT 1", "+1", 1 << 20)),
        ("collate", fill("SELECT 'a'", " COLLATE \"C\"", 1 << 20)),
        (
            "joins",
            fill("SELECT 1 FROM orders", " JOIN orders ON true", 1 << 20),
        ),
        ("unions", fill("SELECT 1", " UNION SELECT 1", 1 << 20)),
        ("subscripts", fill("SELECT (ARRAY[1])", "[1]", 1 << 20)),
        ("nots", fill("SELECT ", "NOT ", 1 << 20)),
    ] {
        let t = Instant::now();
        let r = analyze(&sql);
        let took = t.elapsed();
        assert_eq!(r, Err(AnalysisError::TooComplex), "{name}");
        // Generous for a debug build on a shared machine; typically 30-200 ms.
        assert!(took < Duration::from_secs(3), "{name} took {took:?}");
    }
}

#[test]
fn a_megabyte_bulk_insert_passes() {
    // Negative numbers and casts in every row: many operators, none chained.
    let row = "(4217, 'a fairly ordinary item name', -17, '2024-05-06'::date, NULL, true),";
    let mut sql = fill("INSERT INTO orders VALUES ", row, 1 << 20);
    sql.pop();
    let a = analyze(&sql).unwrap();
    assert_eq!(a.statements.len(), 1);
    assert!(a.statements[0].not_understood.is_empty());
}

#[test]
fn over_budget_strings_have_their_own_rule_and_are_not_cached() {
    let (p, reader, s) = setup();
    let e = analyze_limited("SELECT 1", 4).unwrap_err();
    assert_eq!(e, AnalysisError::TooLong { len: 8, limit: 4 });
    assert!(
        e.to_string().contains("[policy] max_statement_bytes = 4"),
        "{e}"
    );
    let cache = DecisionCache::new(100);
    for e in [e, AnalysisError::TimedOut { limit_ms: 2000 }] {
        let q = cache
            .decide_with(&p, &reader, &s, "SELECT 1", |_| Some(Err(e.clone())))
            .unwrap();
        assert_eq!(q.decision.rule, "builtin.analysis_budget");
        assert!(q.decision.blocks());
        assert!(q.error.as_ref().unwrap().is_over_budget());
    }
    assert!(cache.is_empty(), "a budget refusal must not be cached");
    let t = AnalysisError::TimedOut { limit_ms: 2000 };
    assert_eq!(
        t.to_string(),
        "analysis took longer than [policy] analysis_timeout_ms = 2000"
    );
    // Analysing ahead and deciding is the same as deciding the text.
    let sql = "SELECT * FROM orders; DELETE FROM orders";
    let ahead = p.decide_analysis(&reader, analyze(sql), &s);
    let direct = p.decide_query(&reader, sql, &s);
    assert_eq!(ahead.decision, direct.decision);
    // No answer from `analyse`: no decision (the proxy analyses first and comes back).
    assert!(cache
        .decide_with(&p, &reader, &s, "SELECT 2", |_| None)
        .is_none());
}

#[test]
fn cache_stays_within_its_byte_budget() {
    let (p, reader, s) = setup();
    let budget = 8 << 20;
    let cache = DecisionCache::with_limits(1_000_000, budget);
    let template = analyze("SELECT * FROM orders WHERE id = 1").unwrap();
    let padding = "x".repeat(16 * 1024);
    let mut peak = 0;
    for i in 0..10_000 {
        // 16 KiB statements, all allowed and distinct; analysed once, reused with each
        // text (what is cached is text plus analysis, whatever the parse cost).
        let sql = format!("SELECT * FROM orders WHERE id = {i} /* {padding} */");
        let mut a = template.clone();
        a.statements[0].sql = sql.clone();
        let q = cache
            .decide_with(&p, &reader, &s, &sql, |_| Some(Ok(a)))
            .unwrap();
        assert_eq!(q.decision.verdict, Verdict::Allow);
        peak = peak.max(cache.bytes());
        assert!(cache.bytes() <= budget, "{} > {budget}", cache.bytes());
    }
    assert!(peak > budget / 4, "the cache should be used: {peak}");
    // A recent statement is still a hit.
    let last = format!("SELECT * FROM orders WHERE id = 9999 /* {padding} */");
    assert!(cache.contains(&p, &reader, &s, &last));

    // Entries bigger than 1/128 of the budget are not kept.
    let big = format!("SELECT 1 /* {} */", "y".repeat(budget / 64));
    let _ = cache.decide(&p, &reader, &s, &big);
    assert!(!cache.contains(&p, &reader, &s, &big));

    // Denials of long strings are never kept (their text would only cost memory).
    cache.clear();
    for i in 0..1000 {
        let sql = format!("DELETE FROM orders WHERE id = {i} /* {padding} */");
        assert!(cache.decide(&p, &reader, &s, &sql).decision.blocks());
    }
    assert!(cache.is_empty(), "{} denials cached", cache.len());
    // Short denials still are (cheap, and a hit is exact on the full text).
    let _ = cache.decide(&p, &reader, &s, "DELETE FROM orders");
    assert_eq!(cache.len(), 1);
}

#[test]
fn cursors_are_declared_fetched_and_closed() {
    let a = analyze(
        "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM salaries; FETCH 10 FROM c; MOVE LAST IN c; CLOSE c; CLOSE ALL",
    )
    .unwrap();
    let [declare, fetch, mv, close, close_all] = a.statements.as_slice() else {
        panic!("{a:?}")
    };
    // DECLARE is still decided as its query.
    assert!(declare.accesses.iter().any(|x| x.action == Action::Select
        && matches!(&x.object, ObjectRef::Relation { name, .. } if name == "salaries")));
    match declare.effects.as_slice() {
        [SessionEffect::DeclareCursor { name, hold, query }] => {
            assert_eq!(name, "c");
            assert!(*hold);
            assert_eq!(query.accesses, declare.accesses);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fetch.fetches.as_deref(), Some("c"));
    assert_eq!(mv.fetches.as_deref(), Some("c"));
    assert_eq!(
        close.effects,
        [SessionEffect::CloseCursor(Some("c".into()))]
    );
    assert_eq!(close_all.effects, [SessionEffect::CloseCursor(None)]);
    let plain = analyze("DECLARE d CURSOR FOR SELECT 1").unwrap();
    assert!(matches!(
        plain.statements[0].effects.as_slice(),
        [SessionEffect::DeclareCursor { hold: false, .. }]
    ));
}
