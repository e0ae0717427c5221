//! Column masks: an attacker's corpus. Every way to read a masked value is either masked
//! in the plan (the proxy rewrites it on the stream) or denied before it reaches the
//! server; statements that touch no masked column get no plan.
// Fixtures are constants: a panic is the right failure.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use pgward_policy::{OutputMask, Policy, RoleSet, ServerCatalog, SessionState, Verdict};

const POLICY: &str = r#"
[[roles]]
name = "analyst"
members = { users = ["alice@contoso.com"] }
allow = [
  { actions = ["select", "insert", "update", "delete", "truncate", "utility"], objects = ["public.*", "hr.*"] },
  { name = "trusted", functions = ["public.trusted_report"] },
]
mask = [
  { name = "emails", columns = ["public.customers.email"], with = "email" },
  { name = "ssn", columns = ["*.*.ssn"], with = "hash" },
  { name = "salary", columns = ["public.customers.salary"], with = "redact" },
  { name = "names", columns = ["public.customers.name"], with = "partial", first = 1 },
  { name = "birth", columns = ["public.customers.birth"], with = "null" },
  { name = "people_email", columns = ["hr.people.email"], with = "redact", filter = "equality" },
  { name = "bad_fit", columns = ["public.orders.total"], with = "partial", last = 2 },
  { name = "view_col", columns = ["public.customer_emails.id"], with = "null" },
]

[[roles]]
name = "support"
members = { users = ["bob@contoso.com"] }
allow = [ { actions = ["select"], objects = ["public.*"] } ]
mask = [ { columns = ["public.customers.*"], with = "redact" } ]
unmask = ["public.customers.email"]

[[roles]]
name = "auditor"
members = { users = ["carol@contoso.com"] }
allow = [ { actions = ["select"], objects = ["public.*"] } ]
"#;

/// The server's catalog: a few built-ins, two tables in public, one in hr, views.
fn catalog() -> ServerCatalog {
    let mut rows: Vec<Vec<Option<String>>> = Vec::new();
    let mut row = |v: &[&str]| {
        rows.push(
            v.iter()
                .map(|s| (!s.is_empty()).then(|| (*s).to_owned()))
                .collect(),
        )
    };
    row(&["v", "150018"]);
    for f in [
        "lower",
        "upper",
        "concat",
        "count",
        "max",
        "min",
        "string_agg",
        "md5",
        "length",
        "row_to_json",
        "json_agg",
        "pg_sleep",
        "to_tsvector",
        "row_number",
        "substr",
        "now",
    ] {
        row(&["f", "pg_catalog", f, "b"]);
    }
    row(&["f", "public", "leak", ""]);
    row(&["f", "public", "trusted_report", ""]);
    for r in ["pg_class", "pg_stats", "pg_namespace"] {
        row(&["r", "pg_catalog", r, "b"]);
    }
    let customers: &[(&str, &str, &str)] = &[
        ("id", "23", "N"),
        ("name", "25", "S"),
        ("email", "25", "S"),
        ("ssn", "1043", "S"),
        ("salary", "1700", "N"),
        ("birth", "1082", "D"),
    ];
    for (i, (n, t, c)) in customers.iter().enumerate() {
        let attnum = (i + 1).to_string();
        row(&["a", "16400", "public", "customers", &attnum, n, t, c]);
    }
    let orders: &[(&str, &str, &str)] = &[
        ("id", "23", "N"),
        ("customer_id", "23", "N"),
        ("total", "1700", "N"),
        ("note", "25", "S"),
    ];
    for (i, (n, t, c)) in orders.iter().enumerate() {
        let attnum = (i + 1).to_string();
        row(&["a", "16410", "public", "orders", &attnum, n, t, c]);
    }
    let people: &[(&str, &str, &str)] =
        &[("pid", "23", "N"), ("ssn", "25", "S"), ("email", "25", "S")];
    for (i, (n, t, c)) in people.iter().enumerate() {
        let attnum = (i + 1).to_string();
        row(&["a", "16430", "hr", "people", &attnum, n, t, c]);
    }
    row(&[
        "a",
        "16420",
        "public",
        "customer_emails",
        "1",
        "id",
        "23",
        "N",
    ]);
    row(&[
        "a",
        "16420",
        "public",
        "customer_emails",
        "2",
        "email",
        "25",
        "S",
    ]);
    row(&[
        "d",
        "16420",
        "public",
        "customer_emails",
        " SELECT customers.id,\n    customers.email\n   FROM public.customers;",
    ]);
    row(&["a", "16421", "public", "filtered", "1", "id", "23", "N"]);
    row(&[
        "d",
        "16421",
        "public",
        "filtered",
        " SELECT customers.id\n   FROM public.customers\n  WHERE customers.ssn::text ~~ '1%'::text;",
    ]);
    row(&["a", "16422", "public", "shouting", "1", "loud", "25", "S"]);
    row(&[
        "d",
        "16422",
        "public",
        "shouting",
        " SELECT upper(customers.email) AS loud\n   FROM public.customers;",
    ]);
    // A partition of customers (its own name, the parent's masks).
    for (i, (n, t, c)) in customers.iter().enumerate() {
        let attnum = (i + 1).to_string();
        row(&["a", "16440", "public", "customers_2024", &attnum, n, t, c]);
    }
    row(&["h", "16440", "public", "customers"]);
    row(&["a", "16423", "public", "nested", "1", "e", "25", "S"]);
    row(&[
        "d",
        "16423",
        "public",
        "nested",
        " SELECT customer_emails.email AS e\n   FROM public.customer_emails;",
    ]);
    ServerCatalog::from_rows(rows).unwrap()
}

struct Fixture {
    policy: Policy,
    session: SessionState,
}

fn fixture() -> Fixture {
    let policy = Policy::from_toml(POLICY).unwrap();
    let mut session = SessionState::new(&policy);
    session.set_catalog(Arc::new(catalog()));
    Fixture { policy, session }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Denied; the text holds the reason.
    Denied(String),
    /// Allowed without a plan: nothing is masked.
    Untouched,
    /// Allowed with a plan: per output column, "clear", the mask's kind, or "null" for a
    /// derived value.
    Plan(Vec<String>),
}

fn run(f: &Fixture, roles: &RoleSet, sql: &str) -> Outcome {
    let qd = f.policy.decide_query(roles, sql, &f.session);
    if qd.decision.verdict == Verdict::Deny {
        return Outcome::Denied(format!("{} {}", qd.decision.rule, qd.decision.reason));
    }
    let last = qd.statements.last().unwrap();
    match &last.masks {
        None => Outcome::Untouched,
        Some(p) => Outcome::Plan(
            p.outputs
                .iter()
                .map(|o| match o {
                    OutputMask::Clear => "clear".to_owned(),
                    OutputMask::Column(m) => m.kind.name().to_owned(),
                    OutputMask::Derived(_) => "null".to_owned(),
                })
                .collect(),
        ),
    }
}

fn analyst(f: &Fixture) -> RoleSet {
    f.policy.roles_named(&["analyst"]).unwrap()
}

fn plan(cols: &[&str]) -> Outcome {
    Outcome::Plan(cols.iter().map(|s| (*s).to_owned()).collect())
}

#[track_caller]
fn denied(f: &Fixture, sql: &str) {
    let roles = analyst(f);
    match run(f, &roles, sql) {
        Outcome::Denied(_) => {}
        other => panic!("{sql}: expected a denial, got {other:?}"),
    }
}

#[track_caller]
fn planned(f: &Fixture, sql: &str, cols: &[&str]) {
    let roles = analyst(f);
    assert_eq!(run(f, &roles, sql), plan(cols), "{sql}");
}

#[test]
fn masked_columns_returned_as_themselves_keep_their_mask() {
    let f = fixture();
    planned(&f, "SELECT email FROM customers", &["email"]);
    planned(
        &f,
        "SELECT email AS e, id FROM customers c",
        &["email", "clear"],
    );
    planned(
        &f,
        "SELECT * FROM customers",
        &["clear", "partial", "email", "hash", "redact", "null"],
    );
    planned(
        &f,
        "TABLE customers",
        &["clear", "partial", "email", "hash", "redact", "null"],
    );
    planned(
        &f,
        "SELECT customers.email FROM public.customers",
        &["email"],
    );
    planned(
        &f,
        "SELECT public.customers.email FROM public.customers",
        &["email"],
    );
    planned(&f, "SELECT email FROM customers FOR UPDATE", &["email"]);
    planned(&f, "SELECT email FROM ONLY customers", &["email"]);
    // A partition (or inheritance child) read by its own name keeps its parent's masks.
    planned(
        &f,
        "SELECT email, ssn FROM customers_2024",
        &["email", "hash"],
    );
    denied(&f, "SELECT id FROM customers_2024 WHERE salary > 1");
    // The same column through both sides of a self-join, unqualified.
    planned(
        &f,
        "SELECT c1.email, c2.ssn FROM customers c1, customers c2",
        &["email", "hash"],
    );
}

#[test]
fn masks_follow_values_through_subqueries_ctes_views_and_set_operations() {
    let f = fixture();
    planned(
        &f,
        "SELECT m FROM (SELECT email AS m FROM customers) s",
        &["email"],
    );
    planned(
        &f,
        "SELECT x FROM (SELECT email FROM customers) s(x)",
        &["email"],
    );
    planned(
        &f,
        "WITH x AS (SELECT email AS m FROM customers) SELECT m FROM x",
        &["email"],
    );
    planned(
        &f,
        "WITH x(m) AS (SELECT email FROM customers) SELECT * FROM x",
        &["email"],
    );
    planned(
        &f,
        "SELECT (SELECT email FROM customers LIMIT 1)",
        &["email"],
    );
    // The view's id column is masked by a mask naming the view itself.
    planned(&f, "SELECT * FROM customer_emails", &["null", "email"]);
    planned(&f, "SELECT id FROM customer_emails", &["null"]);
    planned(&f, "SELECT e FROM nested", &["email"]);
    planned(
        &f,
        "SELECT email FROM customers UNION ALL SELECT 'x'",
        &["email"],
    );
    planned(
        &f,
        "SELECT 'x' UNION ALL SELECT email FROM customers",
        &["email"],
    );
    planned(
        &f,
        "VALUES ((SELECT email FROM customers LIMIT 1))",
        &["email"],
    );
    planned(
        &f,
        "SELECT c.id, x.e2 FROM customers c, LATERAL (SELECT c.email AS e2) x",
        &["clear", "email"],
    );
    planned(
        &f,
        "DECLARE cur CURSOR FOR SELECT email FROM customers",
        &["email"],
    );
    planned(
        &f,
        "UPDATE customers SET email = 'new@x.org' WHERE id = 1 RETURNING email, id",
        &["email", "clear"],
    );
    planned(
        &f,
        "DELETE FROM customers WHERE id = 7 RETURNING *",
        &["clear", "partial", "email", "hash", "redact", "null"],
    );
    planned(
        &f,
        "INSERT INTO customers (id, email) VALUES (9, 'a@b.c') RETURNING email",
        &["email"],
    );
    planned(
        &f,
        "PREPARE p AS SELECT email FROM customers; EXECUTE p",
        &["email"],
    );
    planned(
        &f,
        "WITH d AS (DELETE FROM customers WHERE id = 1 RETURNING email) SELECT * FROM d",
        &["email"],
    );
    denied(&f, "SELECT \"EMAIL\" FROM customers");
}

#[test]
fn computed_values_are_masked_whole_or_denied() {
    let f = fixture();
    planned(&f, "SELECT lower(email) FROM customers", &["null"]);
    planned(&f, "SELECT concat(ssn) FROM customers", &["null"]);
    planned(&f, "SELECT email || '' FROM customers", &["null"]);
    planned(&f, "SELECT ssn::text FROM customers", &["null"]);
    planned(
        &f,
        "SELECT CAST(email AS varchar(3)) FROM customers",
        &["null"],
    );
    planned(&f, "SELECT md5(ssn) FROM customers", &["null"]);
    planned(
        &f,
        "SELECT coalesce(email, 'none') FROM customers",
        &["null"],
    );
    planned(
        &f,
        "SELECT string_agg(email, ',') FROM customers",
        &["null"],
    );
    planned(&f, "SELECT max(salary) FROM customers", &["null"]);
    planned(&f, "SELECT email COLLATE \"C\" FROM customers", &["null"]);
    planned(&f, "SELECT c FROM customers c", &["null"]);
    planned(&f, "SELECT ROW(email, id) FROM customers", &["null"]);
    planned(&f, "SELECT ARRAY[email] FROM customers", &["null"]);
    planned(&f, "SELECT ARRAY(SELECT email FROM customers)", &["null"]);
    assert_eq!(
        run(
            &f,
            &analyst(&f),
            "SELECT count(*), count(id) FROM customers"
        ),
        Outcome::Untouched
    );
    // A view that computes on a masked column.
    planned(&f, "SELECT loud FROM shouting", &["null"]);
    // Casts that can fail, and functions outside the short list, are denied: their
    // errors and side effects would reveal the value.
    denied(&f, "SELECT ssn::int FROM customers");
    denied(&f, "SELECT CAST(salary AS int) FROM customers");
    denied(&f, "SELECT email::json FROM customers");
    denied(&f, "SELECT row_to_json(c) FROM customers c");
    denied(&f, "SELECT json_agg(email) FROM customers");
    denied(&f, "SELECT substr(ssn, 1, 1) FROM customers");
    denied(&f, "SELECT pg_sleep(length(ssn)) FROM customers");
    denied(&f, "SELECT salary + 0 FROM customers");
    denied(&f, "SELECT -salary FROM customers");
    denied(&f, "SELECT count(DISTINCT email) FROM customers");
    denied(&f, "SELECT (c).email FROM customers c");
    denied(&f, "SELECT email[1] FROM customers");
    denied(
        &f,
        "SELECT CASE WHEN salary > 1000 THEN 1 ELSE 0 END FROM customers",
    );
    denied(&f, "SELECT salary > 1000 FROM customers");
    denied(&f, "SELECT email IS NULL FROM customers");
    denied(&f, "SELECT lag(email) OVER () FROM customers");
    denied(&f, "SELECT max(email) OVER () FROM customers");
}

#[test]
fn masked_values_may_not_decide_what_comes_back() {
    let f = fixture();
    denied(&f, "SELECT id FROM customers WHERE salary > 2000");
    denied(&f, "SELECT id FROM customers WHERE salary BETWEEN 1 AND 2");
    denied(&f, "SELECT id FROM customers WHERE email = 'a@b.c'");
    denied(&f, "SELECT id FROM customers WHERE email LIKE 'a%'");
    denied(&f, "SELECT id FROM customers WHERE email IS NULL");
    denied(&f, "SELECT id FROM customers WHERE NOT (salary < 5)");
    denied(&f, "SELECT id FROM customers WHERE id = 1 OR salary < 5");
    denied(&f, "SELECT id FROM customers WHERE name = 'x'");
    denied(&f, "SELECT id FROM customers WHERE salary IN (1, 2)");
    denied(&f, "SELECT id FROM customers WHERE lower(email) = 'x'");
    denied(
        &f,
        "SELECT id FROM customers WHERE to_tsvector(email) @@ 'x'",
    );
    denied(&f, "SELECT id FROM customers WHERE ssn = 'x'");
    denied(&f, "SELECT id FROM customers WHERE email = $1");
    denied(&f, "SELECT id FROM customers ORDER BY email");
    denied(&f, "SELECT id, email FROM customers ORDER BY 2");
    denied(&f, "SELECT email AS e FROM customers ORDER BY e");
    denied(&f, "SELECT ssn FROM customers ORDER BY ssn");
    denied(&f, "SELECT email, count(*) FROM customers GROUP BY email");
    denied(&f, "SELECT count(*) FROM customers GROUP BY salary");
    denied(
        &f,
        "SELECT count(*) FROM customers GROUP BY ROLLUP (salary)",
    );
    denied(
        &f,
        "SELECT id FROM customers GROUP BY id HAVING max(salary) > 1",
    );
    denied(&f, "SELECT DISTINCT email FROM customers");
    denied(&f, "SELECT DISTINCT ON (email) id FROM customers");
    denied(&f, "SELECT email FROM customers UNION SELECT 'x'");
    denied(&f, "SELECT email FROM customers INTERSECT SELECT 'a@b.c'");
    denied(&f, "SELECT email FROM customers EXCEPT SELECT 'a@b.c'");
    denied(
        &f,
        "SELECT id, row_number() OVER (ORDER BY salary) FROM customers",
    );
    denied(
        &f,
        "SELECT id, count(*) OVER (PARTITION BY email) FROM customers",
    );
    denied(
        &f,
        "SELECT count(*) FILTER (WHERE salary > 5) FROM customers",
    );
    denied(
        &f,
        "SELECT string_agg(id::text, ',' ORDER BY salary) FROM customers",
    );
    denied(
        &f,
        "SELECT id FROM customers LIMIT (SELECT length(email) FROM customers LIMIT 1)",
    );
    denied(
        &f,
        "SELECT id FROM customers OFFSET (SELECT salary FROM customers LIMIT 1)",
    );
    denied(
        &f,
        "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE salary > 100)",
    );
    denied(
        &f,
        "SELECT id FROM orders WHERE note IN (SELECT email FROM customers)",
    );
    denied(
        &f,
        "SELECT id FROM orders WHERE note = ANY (SELECT email FROM customers)",
    );
    denied(&f, "SELECT id FROM customers c WHERE EXISTS (SELECT 1 FROM hr.people p WHERE p.email = c.email)");
    denied(
        &f,
        "SELECT c.id FROM customers c JOIN hr.people p ON p.email = c.email",
    );
    denied(
        &f,
        "SELECT c.id FROM customers c JOIN orders o ON o.total = c.salary",
    );
    denied(&f, "SELECT id FROM customers JOIN hr.people USING (email)");
    denied(&f, "SELECT 1 FROM customers c NATURAL JOIN hr.people p");
    denied(&f, "SELECT id FROM customers WHERE email = email");
    denied(&f, "SELECT * FROM filtered");
    denied(
        &f,
        "EXPLAIN ANALYZE SELECT id FROM customers WHERE salary > 5",
    );
    denied(&f, "SELECT id FROM customers c WHERE (SELECT c.salary) > 1");
    denied(&f, "SELECT CASE salary WHEN 1 THEN 'a' END FROM customers");
    denied(&f, "SELECT id FROM customers WHERE (email, id) = ('x', 1)");
    denied(
        &f,
        "SELECT id FROM customers WHERE email IS DISTINCT FROM 'x'",
    );
    denied(
        &f,
        "SELECT id FROM customers WHERE email = ANY (ARRAY['a', 'b'])",
    );
    denied(&f, "SELECT id FROM customers WHERE email ~ '^a'");
    denied(&f, "SELECT id FROM customers c WHERE c IS NOT NULL");
    denied(&f, "SELECT id FROM customers ORDER BY email COLLATE \"C\"");
    denied(
        &f,
        "SELECT * FROM customers NATURAL JOIN (SELECT 'x' AS email) s",
    );
    denied(&f, "SELECT id FROM customers WHERE id = 1 AND pg_sleep(CASE WHEN salary > 5 THEN 1 ELSE 0 END) IS NOT NULL");
    denied(&f, "EXPLAIN SELECT id FROM customers WHERE email = 'x'");
    denied(
        &f,
        "SELECT * FROM unnest(ARRAY(SELECT email FROM customers))",
    );
    denied(&f, "SELECT unnest(ARRAY[email]) FROM customers");
    denied(&f, "SELECT format('%s', email) FROM customers");
    denied(&f, "SELECT email::bytea FROM customers");
    denied(&f, "SELECT json_build_object('e', email) FROM customers");
    denied(
        &f,
        "SELECT email FROM customers UNION SELECT email FROM customers",
    );
    denied(&f, "SELECT count(*) FROM customers WHERE email IS NOT NULL");
    denied(&f, "SELECT id FROM customers c1 WHERE EXISTS (SELECT FROM customers c2 WHERE c2.id = c1.id AND c2.salary > 5)");
}

#[test]
fn equality_filters_and_hash_joins_are_allowed_where_the_mask_says() {
    let f = fixture();
    planned(
        &f,
        "SELECT pid FROM hr.people WHERE email = 'a@b.c'",
        &["clear"],
    );
    planned(
        &f,
        "SELECT pid FROM hr.people WHERE 'a@b.c' = email",
        &["clear"],
    );
    planned(&f, "SELECT pid FROM hr.people WHERE email = $1", &["clear"]);
    planned(
        &f,
        "SELECT pid FROM hr.people WHERE email IN ('a@b.c', $1)",
        &["clear"],
    );
    planned(
        &f,
        "SELECT pid FROM hr.people WHERE email = 'a'::text",
        &["clear"],
    );
    denied(&f, "SELECT pid FROM hr.people WHERE email LIKE 'a%'");
    denied(&f, "SELECT pid FROM hr.people WHERE email > 'a'");
    denied(
        &f,
        "SELECT pid FROM hr.people WHERE email = lower('A') || pid",
    );
    denied(
        &f,
        "SELECT pid FROM hr.people WHERE email IN (SELECT note FROM orders)",
    );
    // Hashed values reveal equality already: joins, grouping and DISTINCT on them work.
    planned(
        &f,
        "SELECT c.id, p.pid FROM customers c JOIN hr.people p ON p.ssn = c.ssn",
        &["clear", "clear"],
    );
    planned(
        &f,
        "SELECT ssn, count(*) FROM customers GROUP BY ssn",
        &["hash", "clear"],
    );
    planned(&f, "SELECT ssn FROM customers GROUP BY 1", &["hash"]);
    planned(&f, "SELECT DISTINCT ssn FROM customers", &["hash"]);
    planned(
        &f,
        "SELECT ssn FROM customers UNION SELECT ssn FROM hr.people",
        &["hash"],
    );
    assert_eq!(
        run(
            &f,
            &analyst(&f),
            "SELECT id FROM customers JOIN hr.people USING (ssn)"
        ),
        Outcome::Untouched
    );
}

#[test]
fn masked_values_may_not_be_copied_out() {
    let f = fixture();
    denied(&f, "COPY customers TO STDOUT");
    denied(&f, "COPY customers (id, email) TO STDOUT");
    denied(&f, "COPY (SELECT email FROM customers) TO STDOUT");
    denied(&f, "COPY (SELECT * FROM customer_emails) TO STDOUT");
    denied(
        &f,
        "INSERT INTO orders (id, note) SELECT id, email FROM customers",
    );
    denied(
        &f,
        "UPDATE orders SET note = (SELECT email FROM customers LIMIT 1)",
    );
    denied(&f, "UPDATE customers SET name = email");
    denied(&f, "UPDATE customers SET email = upper(email)");
    denied(
        &f,
        "UPDATE orders o SET note = c.email FROM customers c WHERE c.id = o.customer_id",
    );
    denied(&f, "CREATE TABLE stolen AS SELECT email FROM customers");
    denied(&f, "SELECT email INTO stolen FROM customers");
    denied(&f, "DELETE FROM customers WHERE salary > 100");
    denied(
        &f,
        "WITH x AS (SELECT email FROM customers) INSERT INTO orders (note) SELECT * FROM x",
    );
    denied(&f, "MERGE INTO orders o USING customers c ON o.id = c.id WHEN MATCHED THEN UPDATE SET note = c.email");
    // Statements that read no values.
    assert_eq!(
        run(&f, &analyst(&f), "TRUNCATE customers"),
        Outcome::Untouched
    );
    assert_eq!(
        run(&f, &analyst(&f), "LOCK TABLE customers"),
        Outcome::Untouched
    );
    // Copying columns that are not masked is fine.
    assert_eq!(
        run(&f, &analyst(&f), "COPY customers (id) TO STDOUT"),
        Outcome::Untouched
    );
    assert_eq!(
        run(&f, &analyst(&f), "COPY orders FROM STDIN"),
        Outcome::Untouched
    );
}

#[test]
fn what_pgward_cannot_see_into_is_denied() {
    let f = fixture();
    // Statistics views hold columns' values.
    denied(&f, "SELECT most_common_vals FROM pg_stats");
    denied(
        &f,
        "SELECT * FROM pg_catalog.pg_stats WHERE tablename = 'orders'",
    );
    // A relation created since the catalog was read could be a view over masked columns.
    denied(&f, "SELECT * FROM brand_new_view");
    // A function that is not built in could return masked values from inside.
    denied(&f, "SELECT public.leak()");
    denied(&f, "SELECT * FROM leak()");
    // ...unless an allow rule trusts it by name.
    assert_eq!(
        run(&f, &analyst(&f), "SELECT public.trusted_report()"),
        Outcome::Untouched
    );
    // A recursive CTE over masked columns.
    denied(&f, "WITH RECURSIVE r(e) AS (SELECT email FROM customers UNION ALL SELECT e FROM r) SELECT * FROM r");
    denied(&f, "SELECT * FROM customers TABLESAMPLE SYSTEM (10)");
    // A column the catalog does not know next to masked ones (renamed since it was read).
    denied(&f, "SELECT renamed_email FROM customers");
    // System columns are known.
    assert_eq!(
        run(&f, &analyst(&f), "SELECT ctid, id FROM customers"),
        Outcome::Untouched
    );
    // A mask that does not fit the column's type denies the statement.
    denied(&f, "SELECT total FROM orders");
    denied(&f, "SELECT * FROM orders");
}

#[test]
fn statements_that_touch_no_masked_column_pay_nothing() {
    let f = fixture();
    let a = analyst(&f);
    assert_eq!(run(&f, &a, "SELECT 1"), Outcome::Untouched);
    assert_eq!(
        run(&f, &a, "SELECT relname FROM pg_class"),
        Outcome::Untouched
    );
    assert_eq!(run(&f, &a, "SELECT pid FROM hr.people"), Outcome::Untouched);
    // Writing to a table with masked columns: errors may quote the row, so it is planned.
    assert_eq!(
        run(&f, &a, "UPDATE customers SET id = 2 WHERE id = 1"),
        Outcome::Plan(Vec::new())
    );
    assert_eq!(
        run(&f, &a, "SELECT id, note FROM orders WHERE id = 1"),
        Outcome::Untouched
    );
    assert_eq!(run(&f, &a, "SELECT now()"), Outcome::Untouched);
    // A caller without masks gets no plan at all.
    let auditor = f.policy.roles_named(&["auditor"]).unwrap();
    assert_eq!(
        run(&f, &auditor, "SELECT email FROM customers"),
        Outcome::Untouched
    );
}

#[test]
fn unmask_by_exact_name_and_multi_statement_strings() {
    let f = fixture();
    let support = f.policy.roles_named(&["support"]).unwrap();
    assert_eq!(
        run(&f, &support, "SELECT id, email, ssn FROM customers"),
        plan(&["redact", "clear", "redact"])
    );
    // Several roles: the unmask of one lifts the other's mask on that column only.
    let both = f.policy.roles_named(&["support", "analyst"]).unwrap();
    assert_eq!(
        run(&f, &both, "SELECT email, ssn, birth FROM customers"),
        plan(&["clear", "redact", "null"])
    );
    let qd = f.policy.decide_query(
        &analyst(&f),
        "SELECT 1; SELECT email FROM customers",
        &f.session,
    );
    assert!(qd.statements[0].masks.is_none());
    assert!(qd.statements[1].masks.is_some());
}

#[test]
fn partial_masks_take_the_usual_names() {
    let text = r##"
[[roles]]
name = "r"
members = { users = ["a@b.c"] }
mask = [ { columns = ["public.t.c"], with = "partial", keep_first = 2, keep_last = 1, mask_with = "#" } ]
"##;
    assert!(Policy::from_toml(text).is_ok());
}

#[test]
fn policies_with_bad_masks_do_not_load() {
    for bad in [
        r#"mask = [ { columns = ["customers.email"], with = "redact" } ]"#,
        r#"mask = [ { columns = ["public.customers.email"], with = "scramble" } ]"#,
        r#"mask = [ { columns = ["public.customers.email"], with = "partial" } ]"#,
        r#"mask = [ { columns = ["public.customers.email"], with = "null", value = "x" } ]"#,
        r#"mask = [ { columns = ["public.customers.email"], with = "hash", filter = "range" } ]"#,
        r#"mask = [ { columns = [], with = "null" } ]"#,
        r#"unmask = ["public.customers.*"]"#,
    ] {
        let text = format!("[[roles]]\nname = \"r\"\nmembers = {{ users = [\"a@b.c\"] }}\n{bad}\n");
        assert!(Policy::from_toml(&text).is_err(), "loaded: {bad}");
    }
}

#[test]
fn without_the_servers_columns_masks_deny() {
    let policy = Policy::from_toml(POLICY).unwrap();
    let session = SessionState::new(&policy);
    let roles = policy.roles_named(&["analyst"]).unwrap();
    let qd = policy.decide_query(&roles, "SELECT email FROM customers", &session);
    assert_eq!(qd.decision.verdict, Verdict::Deny);
    // Statements that name no user relation do not need them.
    let qd = policy.decide_query(&roles, "SELECT 1", &session);
    assert_eq!(qd.decision.verdict, Verdict::Allow);
}
