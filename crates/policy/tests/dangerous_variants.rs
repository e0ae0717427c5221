//! Property test: known-dangerous calls in every notation PostgreSQL accepts (plain, qualified,
//! quoted, attribute notation on a value, a column or a whole row, table functions), wrapped
//! in casts, operators, subqueries, CTEs, DML, and objects that run code later (views,
//! defaults, generated columns, domains, SQL functions, policies, rules, indexes, prepared
//! statements, cursors), are denied — with and without the server's catalog. The same shapes
//! around a harmless built-in are allowed, so the denials are not blanket ones.
// Test helpers read fixed files: a panic is the right failure.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use pgward_policy::{Policy, ServerCatalog, SessionState, Verdict};
use proptest::prelude::*;

/// (function, an argument of a type it takes) — each takes one argument, so attribute
/// notation reaches it.
const DANGEROUS: &[(&str, &str)] = &[
    ("pg_read_file", "'/etc/passwd'::text"),
    ("pg_read_binary_file", "'/etc/passwd'::text"),
    ("pg_ls_dir", "'/'::text"),
    ("pg_stat_file", "'/etc/passwd'::text"),
    (
        "ts_stat",
        "'select amount::text::tsvector from salaries'::text",
    ),
    ("pg_terminate_backend", "1"),
    ("pg_cancel_backend", "1"),
    ("lo_unlink", "1::oid"),
    ("lo_get", "1::oid"),
    ("pg_stat_get_activity", "NULL::int"),
    ("pg_stat_get_backend_activity", "1"),
    ("pg_current_logfile", "'stderr'::text"),
    ("pg_log_backend_memory_contexts", "1"),
];

/// Ways to call `f` with `a` as an expression.
fn call(notation: usize, f: &str, a: &str) -> String {
    match notation % 9 {
        0 => format!("{f}({a})"),
        1 => format!("pg_catalog.{f}({a})"),
        2 => format!("\"{f}\"({a})"),
        3 => format!("PG_CATALOG.{}({a})", f.to_ascii_uppercase()),
        4 => format!("({a}).{f}"),
        5 => format!("(({a})).{f}"),
        6 => format!("({a}).\"{f}\""),
        7 => format!("(SELECT ({a}) AS x).{f}"),
        _ => format!("(ROW({a})).f1.{f}"),
    }
}

/// Ways to embed an expression `e` in a statement (`{e}`), and to embed a FROM item.
const CONTEXTS: &[&str] = &[
    "SELECT {e}",
    "SELECT 1 WHERE {e} IS NOT NULL",
    "SELECT ({e})::text",
    "SELECT CAST({e} AS text)",
    "SELECT {e} || 'x'",
    "SELECT 'x' = ANY (ARRAY[{e}::text])",
    "SELECT coalesce({e}::text, 'x')",
    "SELECT CASE WHEN true THEN {e} END",
    "SELECT ARRAY[{e}]",
    "SELECT (SELECT {e})",
    "SELECT 1 FROM orders WHERE EXISTS (SELECT {e})",
    "SELECT o.id FROM orders o ORDER BY {e}",
    "SELECT count(*) FILTER (WHERE {e} IS NULL) FROM orders",
    "WITH c AS (SELECT {e} AS v) SELECT * FROM c",
    "SELECT * FROM (SELECT {e}) s",
    "SELECT * FROM orders o, LATERAL (SELECT {e}) l",
    "VALUES ({e})",
    "INSERT INTO orders (note) VALUES ({e}::text)",
    "INSERT INTO orders (note) SELECT {e}::text",
    "UPDATE orders SET note = {e}::text WHERE id = 1",
    "DELETE FROM orders WHERE note = {e}::text",
    "CREATE VIEW v AS SELECT {e}",
    "CREATE MATERIALIZED VIEW mv AS SELECT {e}",
    "CREATE TABLE t AS SELECT {e}",
    "SELECT {e} INTO t2",
    "CREATE TABLE t (x text DEFAULT {e}::text)",
    "CREATE TABLE t (x text, y text GENERATED ALWAYS AS ({e}::text) STORED)",
    "CREATE DOMAIN d AS text CHECK ({e} IS NOT NULL)",
    "CREATE DOMAIN d AS text DEFAULT {e}::text",
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $body$ SELECT {e}::text $body$",
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql RETURN {e}::text",
    "CREATE FUNCTION f(x text DEFAULT {e}::text) RETURNS text LANGUAGE sql AS 'select x'",
    "CREATE POLICY p ON orders USING ({e} IS NULL)",
    "CREATE RULE r AS ON INSERT TO orders DO ALSO SELECT {e}",
    "ALTER TABLE orders ADD CHECK ({e} IS NULL)",
    "ALTER TABLE orders ALTER note SET DEFAULT {e}::text",
    "CREATE INDEX ON orders (({e}::text))",
    "CREATE STATISTICS s ON ({e}::text) FROM orders",
    "PREPARE p AS SELECT {e}",
    "EXPLAIN SELECT {e}",
    "DECLARE c CURSOR FOR SELECT {e}",
    "COPY (SELECT {e}) TO STDOUT",
    "CREATE SCHEMA s2 CREATE VIEW v AS SELECT {e}",
    "SELECT 1; SELECT {e}",
    "CALL do_payroll() ; SELECT {e}",
];

const POLICY: &str = r#"
[[roles]]
name = "operator"
members = { users = ["bob@contoso.com"] }
allow = [ { name = "everything", objects = ["*"] } ]
deny = [ { name = "no_salaries", objects = ["public.salaries", "hr.*"] } ]

[[roles]]
name = "reader"
members = { users = ["alice@contoso.com"] }
allow = [ { name = "reader_tables", actions = ["select"], objects = ["public.orders"] } ]
"#;

fn pg15() -> Arc<ServerCatalog> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{dir}/tests/fixtures/pg15_catalog.tsv")).unwrap();
    Arc::new(ServerCatalog::from_tsv(&text).unwrap())
}

fn sessions(policy: &Policy) -> [SessionState; 2] {
    let mut with = SessionState::new(policy);
    with.set_catalog(pg15());
    [SessionState::new(policy), with]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn dangerous_calls_are_denied_in_every_notation(
        f in 0..DANGEROUS.len(),
        notation in 0usize..9,
        context in 0..CONTEXTS.len(),
        role in prop_oneof![Just("operator"), Just("reader")],
    ) {
        let policy = Policy::from_toml(POLICY).unwrap();
        let roles = policy.roles_named(&[role]).unwrap();
        let (name, arg) = DANGEROUS[f];
        let sql = CONTEXTS[context].replace("{e}", &call(notation, name, arg));
        for session in sessions(&policy) {
            let q = policy.decide_query(&roles, &sql, &session);
            prop_assert_eq!(
                q.decision.verdict, Verdict::Deny,
                "allowed: {}\n{}", sql, policy.explain(&roles, &sql, &session)
            );
        }
    }

    #[test]
    fn the_same_shapes_around_a_harmless_call_are_allowed(
        notation in 0usize..9,
        context in 0..CONTEXTS.len(),
    ) {
        let policy = Policy::from_toml(POLICY).unwrap();
        let roles = policy.roles_named(&["operator"]).unwrap();
        let sql = CONTEXTS[context].replace("{e}", &call(notation, "lower", "'X'::text"));
        for session in sessions(&policy) {
            let q = policy.decide_query(&roles, &sql, &session);
            prop_assert_eq!(
                q.decision.verdict, Verdict::Allow,
                "denied: {}\n{}", sql, policy.explain(&roles, &sql, &session)
            );
        }
    }
}

/// User objects of the fixture database reached implicitly: a function through attribute
/// notation on a whole row, an operator and a cast over user functions, in the same contexts.
#[test]
fn user_code_reached_implicitly_needs_execute() {
    let policy = Policy::from_toml(POLICY).unwrap();
    let roles = policy.roles_named(&["reader"]).unwrap();
    let mut session = SessionState::new(&policy);
    session.set_catalog(pg15());
    let exprs = [
        "(SELECT o FROM orders o LIMIT 1).leak",
        "'a' === 'b'",
        "'a' OPERATOR(public.===) 'b'",
        "'x'::mytext",
        "CAST('x' AS public.mytext)",
        "array_shuffle(ARRAY[1])",
    ];
    let mut n = 0;
    for e in exprs {
        for ctx in CONTEXTS
            .iter()
            .filter(|c| c.starts_with("SELECT") || c.starts_with("WITH"))
        {
            let sql = ctx.replace("{e}", e);
            let q = policy.decide_query(&roles, &sql, &session);
            assert_eq!(
                q.decision.verdict,
                Verdict::Deny,
                "allowed: {sql}\n{}",
                policy.explain(&roles, &sql, &session)
            );
            n += 1;
        }
    }
    assert!(n > 60);
}
