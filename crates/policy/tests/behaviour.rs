//! Decision behaviour beyond the corpus: sessions, cache, modes, baseline narrowing, limits.
// Fixtures are constants: a panic is the right failure.
#![allow(clippy::unwrap_used)]

use pgward_policy::{
    analyze, catalog, Action, DecisionCache, ObjectRef, Policy, Principal, RoleSet, SessionState,
    SettingChange, Verdict,
};

const POLICY: &str = r#"
[[roles]]
name = "reader"
members = { users = ["alice@contoso.com"] }
allow = [ { actions = ["select"], objects = ["public.orders"] } ]

[[roles]]
name = "admin"
members = { users = ["root@contoso.com"] }
allow = [
  { objects = ["*"] },
  { name = "admin_settings", actions = ["set"], objects = ["setting.search_path", "setting.standard_conforming_strings", "setting.backslash_quote"], functions = ["set_config"] },
  { name = "star_functions", functions = ["*"] },
  { name = "lo_functions", functions = ["lo_*"] },
]
deny = [ { name = "no_pg_sleep", functions = ["pg_sleep"] } ]
"#;

fn setup() -> (Policy, RoleSet, RoleSet) {
    policy_with(POLICY)
}

/// A policy from `toml` (which defines the `reader` and `admin` roles) and those two roles.
fn policy_with(toml: &str) -> (Policy, RoleSet, RoleSet) {
    let p = Policy::from_toml(toml).unwrap();
    let reader = p.roles_named(&["reader"]).unwrap();
    let admin = p.roles_named(&["admin"]).unwrap();
    (p, reader, admin)
}

/// Remembers `sql`, as if prepared over the extended protocol, under `name`.
fn remember_prepared(s: &mut SessionState, name: &str, sql: &str) {
    s.remember_prepared(name, analyze(sql).unwrap().statements.remove(0));
}

fn verdict(p: &Policy, roles: &RoleSet, session: &SessionState, sql: &str) -> (Verdict, String) {
    let q = p.decide_query(roles, sql, session);
    (q.decision.verdict, q.decision.rule)
}

fn run(p: &Policy, roles: &RoleSet, session: &mut SessionState, sql: &str) {
    for st in p.decide_query(roles, sql, session).statements {
        assert!(!st.decision.blocks(), "{sql}: {:?}", st.decision);
        session.apply(&st.analysis);
    }
}

#[test]
fn prepare_then_execute_across_calls() {
    let (p, reader, _) = setup();
    let mut s = SessionState::new(&p);
    run(
        &p,
        &reader,
        &mut s,
        "PREPARE q(int) AS SELECT * FROM orders WHERE id = $1",
    );
    assert_eq!(verdict(&p, &reader, &s, "EXECUTE q(1)").0, Verdict::Allow);
    run(&p, &reader, &mut s, "DEALLOCATE q");
    assert_eq!(
        verdict(&p, &reader, &s, "EXECUTE q(1)").1,
        "builtin.unknown_prepared"
    );
    // A statement prepared over the extended protocol, then run with SQL EXECUTE.
    remember_prepared(&mut s, "stmt1", "SELECT * FROM salaries");
    assert_eq!(verdict(&p, &reader, &s, "EXECUTE stmt1").1, "default_deny");
    s.forget_prepared("stmt1");
    assert_eq!(
        verdict(&p, &reader, &s, "EXECUTE stmt1").1,
        "builtin.unknown_prepared"
    );
    // Parameters of EXECUTE are decided too.
    remember_prepared(&mut s, "ok", "SELECT * FROM orders WHERE id = $1");
    assert_eq!(verdict(&p, &reader, &s, "EXECUTE ok(1)").0, Verdict::Allow);
    assert_eq!(
        verdict(
            &p,
            &reader,
            &s,
            "EXECUTE ok((SELECT count(*) FROM salaries))"
        )
        .1,
        "default_deny"
    );
}

#[test]
fn search_path_tracking_and_reset() {
    let (p, _, admin) = setup();
    let mut s = SessionState::new(&p);
    assert_eq!(s.search_path(), ["public"]);
    run(&p, &admin, &mut s, "SET search_path = hr, \"Mixed\"");
    assert_eq!(s.search_path(), ["hr", "Mixed"]);
    run(&p, &admin, &mut s, "RESET search_path");
    assert_eq!(s.search_path(), ["public"]);
    // Every schema ever on the path stays a candidate for unqualified names.
    assert_eq!(s.seen_schemas(), ["public", "hr", "Mixed"]);
    run(
        &p,
        &admin,
        &mut s,
        "SELECT set_config('search_path', 'a, \"B\"', false)",
    );
    assert_eq!(s.search_path(), ["a", "B"]);
}

#[test]
fn unreadable_session_denies_until_restored() {
    let (p, _, admin) = setup();
    let mut s = SessionState::new(&p);
    run(&p, &admin, &mut s, "SET standard_conforming_strings = off");
    assert_eq!(
        verdict(&p, &admin, &s, "SELECT 1").1,
        "builtin.not_understood"
    );
    assert_eq!(
        verdict(&p, &admin, &s, "SET standard_conforming_strings = on").0,
        Verdict::Allow
    );
    run(&p, &admin, &mut s, "SET standard_conforming_strings = on");
    assert_eq!(verdict(&p, &admin, &s, "SELECT 1").0, Verdict::Allow);
}

#[test]
fn dangerous_functions_need_a_name_not_a_star() {
    let (p, _, admin) = setup();
    let s = SessionState::new(&p);
    assert_eq!(
        verdict(&p, &admin, &s, "SELECT pg_read_file('x')").1,
        "builtin.dangerous_function"
    );
    assert_eq!(
        verdict(&p, &admin, &s, "SELECT lo_import('x')"),
        (Verdict::Allow, "lo_functions".into())
    );
    assert_eq!(
        verdict(&p, &admin, &s, "SELECT pg_sleep(1)").1,
        "no_pg_sleep"
    );
    assert_eq!(
        verdict(&p, &admin, &s, "SELECT pg_catalog.pg_sleep(1)").1,
        "no_pg_sleep"
    );
}

#[test]
fn every_dangerous_function_is_denied_by_default() {
    let (p, reader, _) = setup();
    let s = SessionState::new(&p);
    for f in catalog::DANGEROUS_FUNCTIONS {
        let name = f.replace('*', "x");
        let sql = if name == "do" {
            "DO $$ BEGIN END $$".to_owned()
        } else {
            format!("SELECT {name}()")
        };
        let q = p.decide_query(&reader, &sql, &s);
        assert_eq!(q.decision.rule, "builtin.dangerous_function", "{sql}");
    }
}

#[test]
fn startup_parameters_are_decided() {
    let (p, reader, admin) = setup();
    let s = SessionState::new(&p);
    assert_eq!(
        p.decide_setting(&reader, "application_name", "psql", &s)
            .verdict,
        Verdict::Allow
    );
    assert_eq!(
        p.decide_setting(&reader, "search_path", "hr", &s).rule,
        "builtin.protected_setting"
    );
    assert_eq!(
        p.decide_setting(&reader, "PGWARD.upn", "x", &s).rule,
        "builtin.pgward_settings"
    );
    assert_eq!(
        p.decide_setting(&admin, "search_path", "hr, public", &s)
            .verdict,
        Verdict::Allow
    );
    assert_eq!(
        p.decide_setting(&admin, "work_mem", "1GB", &s).verdict,
        Verdict::Deny
    );
}

#[test]
fn observe_mode_reports_but_does_not_block() {
    let (p, reader, _) = policy_with(&format!("mode = \"observe\"\n{POLICY}"));
    let s = SessionState::new(&p);
    let q = p.decide_query(&reader, "DELETE FROM orders", &s);
    assert_eq!(q.decision.verdict, Verdict::Deny);
    assert!(!q.decision.blocks());
    let q = p.decide_query(&reader, "SELEC", &s);
    assert_eq!(q.decision.rule, "builtin.parse_error");
    assert!(!q.decision.blocks());
}

#[test]
fn baseline_can_be_narrowed() {
    let narrowed = format!(
        "[baseline]\ncatalog_reads = false\nsettings = [\"timezone\"]\nreset_all = true\n{POLICY}"
    );
    let (p, reader, _) = policy_with(&narrowed);
    let s = SessionState::new(&p);
    assert_eq!(
        verdict(&p, &reader, &s, "SELECT * FROM pg_catalog.pg_class").1,
        "default_deny"
    );
    assert_eq!(
        verdict(&p, &reader, &s, "SET DateStyle = 'ISO'").1,
        "default_deny"
    );
    assert_eq!(
        verdict(&p, &reader, &s, "SET TimeZone = 'UTC'").0,
        Verdict::Allow
    );
    assert_eq!(verdict(&p, &reader, &s, "RESET ALL").0, Verdict::Allow);
    assert_eq!(verdict(&p, &reader, &s, "DISCARD ALL").0, Verdict::Allow);
}

/// Connection pools reset with RESET ALL / DISCARD ALL: allowed to everyone by default,
/// `reset_all = false` takes it away again (the three settings they reset are protected).
#[test]
fn reset_all_is_baseline_unless_narrowed() {
    let (p, reader, _) = policy_with(POLICY);
    let s = SessionState::new(&p);
    for sql in ["RESET ALL", "DISCARD ALL", "reset all; discard all"] {
        assert_eq!(
            verdict(&p, &reader, &s, sql),
            (Verdict::Allow, "baseline".into()),
            "{sql}"
        );
    }
    let (p, reader, _) = policy_with(&format!("[baseline]\nreset_all = false\n{POLICY}"));
    let s = SessionState::new(&p);
    for sql in ["RESET ALL", "DISCARD ALL"] {
        assert_eq!(
            verdict(&p, &reader, &s, sql),
            (Verdict::Deny, "builtin.protected_setting".into()),
            "{sql}"
        );
    }
    // A single protected setting is still a protected setting.
    let (p, reader, _) = policy_with(POLICY);
    let s = SessionState::new(&p);
    assert_eq!(
        verdict(&p, &reader, &s, "RESET search_path").1,
        "builtin.protected_setting"
    );
}

#[test]
fn cache_key_covers_roles_path_and_policy() {
    let (p, reader, admin) = setup();
    let cache = DecisionCache::new(1000);
    let mut s = SessionState::new(&p);
    let sql = "SELECT * FROM orders";
    assert_eq!(
        cache
            .decide(&p, &admin, &s, "DELETE FROM orders")
            .decision
            .verdict,
        Verdict::Allow
    );
    assert_eq!(
        cache
            .decide(&p, &reader, &s, "DELETE FROM orders")
            .decision
            .verdict,
        Verdict::Deny
    );
    assert_eq!(
        cache.decide(&p, &reader, &s, sql).decision.verdict,
        Verdict::Allow
    );
    // Same text, the session's path changed: orders may now be hr.orders.
    run(&p, &admin, &mut s, "SET search_path = hr");
    assert_eq!(
        cache.decide(&p, &reader, &s, sql).decision.verdict,
        Verdict::Deny
    );
    // Same text and roles, another policy: a new decision.
    let (p2, reader2, _) = policy_with(&POLICY.replace("public.orders", "public.customers"));
    let s2 = SessionState::new(&p2);
    assert_eq!(
        cache.decide(&p2, &reader2, &s2, sql).decision.verdict,
        Verdict::Deny
    );
    // Strings with EXECUTE depend on prepared statements and are not cached.
    let before = cache.len();
    let _ = cache.decide(&p, &reader, &s2, "EXECUTE x");
    assert_eq!(cache.len(), before);
}

#[test]
fn cache_is_bounded() {
    let (p, reader, _) = setup();
    let cache = DecisionCache::new(64);
    let s = SessionState::new(&p);
    for i in 0..2000 {
        let _ = cache.decide(&p, &reader, &s, &format!("SELECT {i}"));
    }
    assert!(cache.len() <= 2 * 64 + 16, "{}", cache.len());
    cache.clear();
    assert!(cache.is_empty());
}

#[test]
fn deep_nesting_is_refused_not_a_crash() {
    let (p, reader, _) = setup();
    let s = SessionState::new(&p);
    for depth in [100, 1000, 10_000, 100_000] {
        // Parentheses leave no trace in the tree; operator chains and subqueries nest.
        let sql = format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth));
        let t = std::time::Instant::now();
        let _ = p.decide_query(&reader, &sql, &s);
        println!("parens {depth}: {:?}", t.elapsed());
        let sql = format!("SELECT 1{}", "+1".repeat(depth));
        let t = std::time::Instant::now();
        let q = p.decide_query(&reader, &sql, &s);
        println!("plus {depth}: {:?}", t.elapsed());
        if depth >= 1000 {
            assert_eq!(q.decision.verdict, Verdict::Deny, "depth {depth}");
        }
        let n = depth / 10;
        let sql = format!(
            "SELECT * FROM orders WHERE id IN {}(1){}",
            "(SELECT id FROM orders WHERE id IN ".repeat(n),
            ")".repeat(n)
        );
        let t = std::time::Instant::now();
        let q = p.decide_query(&reader, &sql, &s);
        println!("subqueries {n}: {:?}", t.elapsed());
        if n >= 1000 {
            assert_eq!(q.decision.verdict, Verdict::Deny, "depth {n}");
        }
    }
}

#[test]
fn analysis_shapes() {
    let a = analyze("WITH w AS (UPDATE hr.t SET x = 1 WHERE y = 2 RETURNING *) SELECT * FROM w, \"Pub\".\"T\" FOR SHARE").unwrap();
    let st = &a.statements[0];
    let acc: Vec<String> = st
        .accesses
        .iter()
        .map(|a| format!("{} {}", a.action, a.object))
        .collect();
    assert_eq!(
        acc,
        [
            "select \"Pub\".\"T\"",
            "select hr.t",
            "update \"Pub\".\"T\"",
            "update hr.t"
        ]
    );
    let a = analyze(
        "SET LOCAL search_path TO a, b; RESET ALL; SELECT set_config(current_user, 'x', true)",
    )
    .unwrap();
    assert_eq!(
        a.statements[0].settings,
        [SettingChange::Set {
            name: "search_path".into(),
            value: Some(vec!["a".into(), "b".into()])
        }]
    );
    assert_eq!(a.statements[1].settings, [SettingChange::ResetAll]);
    assert_eq!(
        a.statements[2].settings,
        [SettingChange::Set {
            name: "*".into(),
            value: Some(vec!["x".into()])
        }]
    );
    let a = analyze("COPY t (a) FROM PROGRAM 'x'").unwrap();
    let acts: Vec<Action> = a.statements[0].accesses.iter().map(|a| a.action).collect();
    assert_eq!(acts, [Action::Insert, Action::CopyFile]);
    let a = analyze("NOTIFY \"Jobs\"").unwrap();
    assert_eq!(
        a.statements[0].accesses[0].object,
        ObjectRef::Pseudo {
            kind: "channel",
            name: "Jobs".into()
        }
    );
    // ALTER SYSTEM writes a server file and changes the setting for every later session.
    let a = analyze("ALTER SYSTEM SET x = 1").unwrap();
    let acts: Vec<Action> = a.statements[0].accesses.iter().map(|a| a.action).collect();
    assert_eq!(acts, [Action::CopyFile]);
    assert_eq!(a.statements[0].accesses[0].object, ObjectRef::All);
    assert_eq!(
        a.statements[0].settings,
        [SettingChange::Set {
            name: "x".into(),
            value: Some(vec!["1".into()])
        }]
    );
    assert!(a.statements[0].not_understood.is_empty());
    assert!(analyze("SELEC 1").is_err());
    // A NUL byte cannot reach libpg_query (C strings): refused, never truncated.
    assert!(analyze("SELECT * FROM orders WHERE id = 1\0; DELETE FROM salaries").is_err());
    assert_eq!(
        analyze("SELECT 1; SELECT 2").unwrap().statements[1].sql,
        "SELECT 2"
    );
}

#[test]
fn explain_mentions_everything() {
    let (p, reader, _) = setup();
    let s = SessionState::new(&p);
    let text = p.explain(
        &reader,
        "SELECT pg_read_file('x') FROM orders; SET work_mem = '1MB'",
        &s,
    );
    for want in [
        "roles: reader",
        "select    orders",
        "calls     pg_read_file()",
        "sets      work_mem = 1MB",
        "decision: deny",
        "builtin.dangerous_function",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

/// Not a timed assertion: prints how long decisions take (run with --nocapture).
#[test]
fn timings() {
    let (p, reader, _) = setup();
    let s = SessionState::new(&p);
    let cache = DecisionCache::new(10_000);
    let sql = "SELECT id, total FROM orders WHERE customer_id = $1 ORDER BY id LIMIT 10";
    let n = 2000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(p.decide_query(&reader, sql, &s));
    }
    let uncached = t.elapsed().as_nanos() / n;
    let _ = cache.decide(&p, &reader, &s, sql);
    let m = 200_000;
    let t = std::time::Instant::now();
    for _ in 0..m {
        std::hint::black_box(cache.decide(&p, &reader, &s, sql));
    }
    let cached = t.elapsed().as_nanos() / m;
    let big = "SELECT o.id, c.name, (SELECT count(*) FROM orders x WHERE x.customer_id = c.id) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.total > 10 AND EXISTS (SELECT 1 FROM orders y WHERE y.id = o.id) ORDER BY 1";
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(p.decide_query(&reader, big, &s));
    }
    let complex = t.elapsed().as_nanos() / n;
    println!("timing (this build; optimised only with CARGO_PROFILE_DEV_OPT_LEVEL=3): uncached simple SELECT {uncached} ns, complex SELECT {complex} ns, cached {cached} ns");
}

#[test]
fn everyone_membership_holds_for_any_signed_in_identity() {
    let p = Policy::from_toml(
        r#"
[[roles]]
name = "all_readers"
members = { everyone = true }
allow = [ { actions = ["select"], objects = ["public.*"] } ]

[[roles]]
name = "named"
members = { users = ["bob@contoso.com"] }
allow = [ { actions = ["insert"], objects = ["public.orders"] } ]
"#,
    )
    .unwrap();
    let stranger = Principal {
        oid: "9d0f0e8e-0000-4000-8000-000000000001".into(),
        upn: "someone@fabrikam.com".into(),
        groups: vec![],
        app_roles: vec![],
    };
    let roles = p.roles_for(&stranger);
    assert_eq!(roles.names(), ["all_readers"]);
    let s = SessionState::new(&p);
    assert_eq!(
        verdict(&p, &roles, &s, "SELECT * FROM orders").0,
        Verdict::Allow
    );
    assert_eq!(
        verdict(&p, &roles, &s, "INSERT INTO orders VALUES (1)").0,
        Verdict::Deny
    );
    // Still protected for everyone: pgward's own settings and the caller's name.
    assert_eq!(
        verdict(&p, &roles, &s, "SET pgward.oid = 'x'").1,
        "builtin.pgward_settings"
    );
    assert_eq!(
        verdict(&p, &roles, &s, "SET application_name = 'ceo'").1,
        "builtin.pgward_settings"
    );
    let bob = Principal {
        upn: "bob@contoso.com".into(),
        ..stranger
    };
    assert_eq!(p.roles_for(&bob).names(), ["all_readers", "named"]);
    // A role must still say who holds it.
    let err =
        Policy::from_toml("[[roles]]\nname = \"x\"\nmembers = { everyone = false }\n").unwrap_err();
    assert!(err.to_string().contains("has no members"), "{err}");
}
