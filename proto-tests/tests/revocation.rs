//! Revocation is total: after a policy reload that removes a grant, nothing prepared or
//! opened under the old policy runs unless the new one allows it — SQL PREPARE/EXECUTE,
//! protocol Bind of statements prepared either way, cursors (also WITH HOLD across
//! transactions) by FETCH and MOVE, protocol portals by Execute (with a row limit) and by
//! SQL FETCH. What the new policy still allows keeps working. `log_statement = all`
//! shows that no refused statement reached the server.

use std::time::{Duration, Instant};

use pgward_proto_tests::wire::{self, Reply, Wire};
use pgward_proto_tests::*;

const CALLER: &str = "dana@contoso.com";

const BEFORE: &str = r#"
mode = "enforce"
search_path = ["public"]

[[roles]]
name = "payroll_reader"
members = { users = ["dana@contoso.com"] }
allow = [ { name = "reads", actions = ["select"], objects = ["public.orders", "public.salaries"] } ]
"#;

fn denied(r: &Reply, what: &str) {
    let e = r
        .errors
        .first()
        .unwrap_or_else(|| panic!("{what}: expected a policy denial, got {r:?}"));
    assert_eq!(e.code, "42501", "{what}: {r:?}");
    assert!(
        e.message.starts_with("pgward policy denied"),
        "{what}: {}",
        e.message
    );
}

/// Tries `f` inside a savepoint (a refusal aborts the transaction), expecting a denial.
fn in_savepoint(w: &mut Wire, what: &str, f: impl Fn(&mut Wire) -> Reply) {
    assert!(w.query("SAVEPOINT a").ok());
    denied(&f(w), what);
    let r = w.query("ROLLBACK TO SAVEPOINT a");
    assert!(r.ok() && r.status == b'T', "{r:?}");
}

fn extended(w: &mut Wire, msgs: &[Vec<u8>]) -> Reply {
    let mut b: Vec<u8> = msgs.concat();
    b.extend(wire::sync());
    w.send(&b);
    w.read_reply()
}

#[test]
fn nothing_opened_before_a_reload_outlives_it() {
    let db = Database::start_with(PgOptions {
        log_statements: true,
        ..Default::default()
    });
    db.sql(
        "app",
        "CREATE TABLE salaries (id int, amount numeric);
         INSERT INTO salaries SELECT g, g * 1000 FROM generate_series(1, 20) g;
         GRANT ALL ON salaries TO pgward_proxy;",
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, BEFORE).unwrap();
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            tls: false,
            policy: Some(policy.clone()),
            log_level: "info",
            ..Default::default()
        },
    );

    // Session 1, outside transactions: statements prepared both ways, WITH HOLD cursors.
    let mut w1 = Wire::connect(pgward.port, CALLER);
    assert!(w1
        .query("PREPARE sqlprep AS SELECT * FROM salaries /* rev-sqlprep */")
        .ok());
    assert!(extended(
        &mut w1,
        &[wire::parse(
            "protoprep",
            "SELECT * FROM salaries /* rev-parse */"
        )]
    )
    .ok());
    let r = w1.query(
        "BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT * FROM salaries /* rev-hold */; \
         DECLARE kept CURSOR WITH HOLD FOR SELECT * FROM orders; COMMIT",
    );
    assert!(r.ok(), "{r:?}");
    let r = w1.query("FETCH 1 FROM held");
    assert!(r.ok() && r.rows == 1, "{r:?}");
    let r = extended(
        &mut w1,
        &[wire::bind("", "protoprep"), wire::execute("", 0)],
    );
    assert!(r.ok() && r.rows == 20, "{r:?}");

    // Session 2, inside a transaction: a cursor, and a protocol portal suspended after
    // one row.
    let mut w2 = Wire::connect(pgward.port, CALLER);
    let r = w2.query("BEGIN; DECLARE open_c CURSOR FOR SELECT * FROM salaries /* rev-cursor */");
    assert!(r.ok(), "{r:?}");
    let r = extended(
        &mut w2,
        &[
            wire::parse("", "SELECT * FROM salaries /* rev-portal */"),
            wire::bind("portal_q", ""),
            wire::execute("portal_q", 1),
        ],
    );
    assert!(r.ok() && r.rows == 1 && r.suspended == 1, "{r:?}");
    assert_eq!(r.status, b'T');

    // The reload: salaries is no longer granted.
    std::fs::write(&policy, BEFORE.replace(", \"public.salaries\"", "")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut probe = Wire::connect(pgward.port, CALLER);
    while probe.query("SELECT count(*) FROM salaries").ok() {
        assert!(
            Instant::now() < deadline,
            "the new policy was not picked up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log_before = db.pg.log().len();

    // Session 1.
    denied(&w1.query("EXECUTE sqlprep"), "SQL EXECUTE of a SQL PREPARE");
    denied(
        &w1.query("EXECUTE protoprep"),
        "SQL EXECUTE of a protocol Parse",
    );
    denied(
        &extended(&mut w1, &[wire::bind("", "sqlprep"), wire::execute("", 0)]),
        "protocol Bind of a SQL PREPARE",
    );
    denied(
        &extended(
            &mut w1,
            &[wire::bind("", "protoprep"), wire::execute("", 0)],
        ),
        "protocol Bind of a protocol Parse",
    );
    denied(
        &w1.query("FETCH 1 FROM held"),
        "FETCH of a WITH HOLD cursor",
    );
    denied(&w1.query("MOVE 1 IN held"), "MOVE of a WITH HOLD cursor");
    denied(
        &extended(
            &mut w1,
            &[
                wire::parse("", "FETCH 1 FROM held"),
                wire::bind("", ""),
                wire::execute("", 0),
            ],
        ),
        "FETCH of a WITH HOLD cursor through the extended protocol",
    );
    denied(
        &extended(&mut w1, &[wire::execute("held", 1)]),
        "protocol Execute of a WITH HOLD cursor",
    );
    // What the new policy allows still runs.
    let r = w1.query("FETCH 1 FROM kept");
    assert!(r.ok() && r.rows == 1, "FETCH of a cursor on orders: {r:?}");
    let r = w1.query("CLOSE held");
    assert!(r.ok(), "{r:?}");

    // Session 2: each refusal aborts the transaction, so each is tried in a savepoint.
    in_savepoint(&mut w2, "protocol Execute of a suspended portal", |w| {
        extended(w, &[wire::execute("portal_q", 1)])
    });
    in_savepoint(&mut w2, "SQL FETCH of a protocol portal", |w| {
        w.query("FETCH 1 FROM portal_q")
    });
    in_savepoint(&mut w2, "FETCH of a cursor", |w| {
        w.query("FETCH 1 FROM open_c")
    });
    in_savepoint(&mut w2, "MOVE of a cursor", |w| w.query("MOVE 1 IN open_c"));
    assert!(w2.query("CLOSE open_c").ok());
    // A name pgward never saw opened, after a reload: refused (it cannot tell what it reads).
    let r = w2.query("FETCH 1 FROM open_c");
    denied(&r, "FETCH of an unknown cursor");
    assert!(
        r.errors[0].message.contains("builtin.unknown_portal"),
        "{r:?}"
    );
    assert!(w2.query("ROLLBACK").ok());

    std::thread::sleep(Duration::from_millis(300));
    let log = db.pg.log();
    let after = &log[log_before.min(log.len())..];
    for needle in [
        "salaries",
        "FETCH 1 FROM held",
        "MOVE 1 IN held",
        "FETCH 1 FROM portal_q",
        "FETCH 1 FROM open_c",
        "MOVE 1 IN open_c",
        "EXECUTE sqlprep",
        "EXECUTE protoprep",
    ] {
        assert!(
            !after.contains(needle),
            "{needle:?} reached the server after the reload:\n{after}"
        );
    }
    assert!(after.contains("FETCH 1 FROM kept"), "{after}");
}
