//! The second wall (docs/security.md): each policy role's sessions sign in as the role's own
//! upstream login, holding exactly the privileges `pgward policy grants` compiles from the
//! policy, and the caller is recorded where no statement can rewrite it (`pgward.callers`,
//! read by `pgward.caller_oid()`).
//!
//! A debug-build-only switch (`PGWARD_TEST_BYPASS_MARKER`) lets marked statements past
//! pgward's own decision, so each wall is shown to hold on its own: what pgward refuses is
//! refused again by PostgreSQL.

use std::process::Command;
use std::time::{Duration, Instant};

use pgward_devkit::entra_issuer::{DevIssuer, TokenSpec};
use pgward_proto_tests::*;
use tokio_postgres::{Client, SimpleQueryMessage};

const TENANT: &str = "5f1c2a7e-3b4d-4e8f-9a01-6c2d8e4b1f37";
const ALICE_OID: &str = "0a11ce00-0000-4000-8000-00000000a11c";
const BOB_OID: &str = "0b0b0000-0000-4000-8000-000000000b0b";
const DAVE_OID: &str = "0da7e000-0000-4000-8000-000000000da7";
const MARKER: &str = "/*bypass-7f3a91*/ ";
const ADMIN: &str = "pgward_admin";
const PASSWORD: &str = "wall-secret-Q7v2";

const POLICY: &str = r#"
[[roles]]
name = "readers"
members = { users = ["alice@contoso.com", "bob@contoso.com"] }
upstream_role = "pgw_reader"
allow = [ { actions = ["select"], objects = ["public.orders", "public.docs"] } ]

[[roles]]
name = "writers"
members = { users = ["dave@contoso.com"] }
upstream_role = "pgw_writer"
allow = [ { actions = ["select", "insert", "update", "delete"], objects = ["public.orders"] } ]
"#;

struct Env {
    pgward: Pgward,
    dir: tempfile::TempDir,
    db: Database,
    issuer: DevIssuer,
    rt: tokio::runtime::Runtime,
}

fn env() -> Env {
    let (rt, issuer) = start_issuer(TENANT, 2);
    let db = Database::start();
    // pgward's own login may change privileges on everything (a superuser here; on Azure
    // the admin, with what it cannot change reported). The role logins hold nothing yet.
    for role in [ADMIN, "pgw_reader", "pgw_writer"] {
        db.pg.create_login(role, PASSWORD, "scram-sha-256").unwrap();
    }
    db.sql(
        "app",
        &format!(
            "ALTER ROLE {ADMIN} SUPERUSER;
             CREATE TABLE salaries (who text, amount int);
             INSERT INTO salaries VALUES ('alice', 1000);
             CREATE TABLE docs (owner_oid text NOT NULL, body text NOT NULL);
             INSERT INTO docs VALUES ('{ALICE_OID}', 'alice-1'), ('{ALICE_OID}', 'alice-2'),
                                     ('{BOB_OID}', 'bob-1'), ('nobody', 'orphan');
             ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
             -- The unforgeable identity: pgward.caller_oid(), not current_setting('pgward.oid').
             -- pgward creates the schema before this policy is first used, so it is written
             -- with a check at run time.
             CREATE POLICY own_rows ON docs USING (owner_oid = (SELECT current_setting('pgward.wall_test_unused', true)));"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let credential = format!(
        "type = \"password\"\nuser = \"{ADMIN}\"\npassword = \"{PASSWORD}\"\n\
         [upstreams.role_logins.pgw_reader]\ntype = \"password\"\nuser = \"pgw_reader\"\npassword = \"{PASSWORD}\"\n\
         [upstreams.role_logins.pgw_writer]\ntype = \"password\"\nuser = \"pgw_writer\"\npassword = \"{PASSWORD}\"\n"
    );
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            entra: Some(entra_section(TENANT, &issuer)),
            policy: Some(policy),
            policy_extra: vec!["apply_grants = true".into()],
            credential: Some(credential),
            upstream_extra: vec![
                "identity_table = true".into(),
                "require_role_login = true".into(),
            ],
            env: vec![("PGWARD_TEST_BYPASS_MARKER".into(), MARKER.trim().into())],
            ..PgwardOptions::default()
        },
    );
    // The grants are applied in the background at start, to both routed databases.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pgward
        .log()
        .matches("database privileges match the policy")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "grants not applied:\n{}",
            pgward.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Now that pgward.caller_oid() exists, key the row policy on it.
    db.sql(
        "app",
        "DROP POLICY own_rows ON docs;
         CREATE POLICY own_rows ON docs USING (owner_oid = (SELECT pgward.caller_oid()));",
    );
    Env {
        pgward,
        dir,
        db,
        issuer,
        rt,
    }
}

/// Waits until `sql` (a boolean) is true as seen by the superuser.
fn wait_for(db: &Database, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if db.sql("app", sql).trim() == "t" {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {sql}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn person(upn: &str, oid: &str) -> TokenSpec {
    let mut spec = TokenSpec::user(upn);
    spec.oid = Some(oid.to_owned());
    spec
}

impl Env {
    async fn connect(&self, upn: &str, oid: &str) -> Client {
        let token = self.issuer.mint(&person(upn, oid)).unwrap();
        let tls = pgtls::trusting(self.pgward.ca.as_ref().unwrap());
        let conn = format!(
            "host=127.0.0.1 port={} dbname=app user={upn} password={token} sslmode=require",
            self.pgward.port
        );
        let (client, connection) = tokio_postgres::connect(&conn, tls)
            .await
            .unwrap_or_else(|e| panic!("{upn}: {e}\n{}", self.pgward.log()));
        tokio::spawn(connection);
        client
    }

    /// `pgward policy grants` against this pgward's config.
    fn grants(&self, extra: &[&str]) -> (i32, String) {
        let out = Command::new(pgward_bin())
            .args(["policy", "grants", "--config"])
            .arg(&self.pgward.config_path)
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.code() != Some(2),
            "policy grants failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), stdout)
    }
}

async fn rows(c: &Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e} {:?}", e.as_db_error().map(|d| d.message())))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .collect()
}

/// The error `sql` gets: (SQLSTATE, message).
async fn refused(c: &Client, sql: &str) -> (String, String) {
    let e = c
        .simple_query(sql)
        .await
        .err()
        .unwrap_or_else(|| panic!("{sql}: not refused"));
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

#[test]
fn each_wall_holds_on_its_own() {
    let env = env();
    env.rt.block_on(async {
        let alice = env.connect("alice@contoso.com", ALICE_OID).await;
        // The session signs in as the role's own login: no SET ROLE, nothing to return to.
        assert_eq!(
            rows(&alice, "SELECT current_user || ' ' || session_user").await,
            ["pgw_reader pgw_reader"]
        );
        assert_eq!(rows(&alice, "SELECT count(*) FROM orders").await, ["100"]);

        // Each statement: refused by pgward as it is, and by PostgreSQL when let through.
        let attacks = [
            ("DELETE FROM orders", "permission denied for table orders"),
            (
                "SELECT * FROM salaries",
                "permission denied for table salaries",
            ),
            (
                "SELECT pg_read_file('/etc/passwd')",
                "permission denied for function pg_read_file",
            ),
            (
                "SELECT set_config('pgward.oid', '0b0b0000-0000-4000-8000-000000000b0b', false)",
                "permission denied for function set_config",
            ),
            ("SET ROLE pgw_writer", "permission denied to set role"),
            (
                "SET SESSION AUTHORIZATION pgward_admin",
                "permission denied to set session authorization",
            ),
            (
                "UPDATE pgward.callers SET caller_oid = '0b0b0000-0000-4000-8000-000000000b0b'",
                "permission denied for table callers",
            ),
            (
                "INSERT INTO orders (item, qty) VALUES ('x', 1)",
                "permission denied for table orders",
            ),
            (
                "CREATE TABLE public.mine (a int)",
                "permission denied for schema public",
            ),
        ];
        for (sql, db_message) in attacks {
            let (code, message) = refused(&alice, sql).await;
            assert_eq!(code, "42501", "{sql}: {message}");
            assert!(
                !message.contains("permission denied for"),
                "pgward's own refusal expected for {sql}: {message}"
            );
            let marked = format!("{MARKER}{sql}");
            let (code, message) = refused(&alice, &marked).await;
            assert_eq!(code, "42501", "{marked}: {message}");
            assert!(message.contains(db_message), "{marked}: {message}");
        }
        // The extended protocol is the same wall: a prepared DELETE let past pgward meets
        // the database's privileges at Execute.
        let e = alice
            .execute("DELETE FROM orders WHERE id = $1", &[&1i32])
            .await
            .unwrap_err();
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.code().code() == "42501"
                    && !d.message().contains("permission denied for")),
            "{e}"
        );
        let e = alice
            .execute(
                &format!("{MARKER}DELETE FROM orders WHERE id = $1"),
                &[&1i32],
            )
            .await
            .unwrap_err();
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "42501", "{}", db.message());
        assert!(
            db.message().contains("permission denied for table orders"),
            "{}",
            db.message()
        );
        // Stepping back from the role is no way out: the login is the role.
        for sql in ["RESET ROLE", "SET ROLE NONE", "RESET SESSION AUTHORIZATION"] {
            alice
                .batch_execute(&format!("{MARKER}{sql}"))
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(
                rows(&alice, "SELECT current_user || ' ' || session_user").await,
                ["pgw_reader pgw_reader"],
                "after {sql}"
            );
        }
        // The session still works, and is still the same caller.
        assert_eq!(
            rows(&alice, "SELECT pgward.caller_upn()").await,
            ["alice@contoso.com"]
        );

        // A writer's session holds what writers may do, sequences behind defaults included.
        let dave = env.connect("dave@contoso.com", DAVE_OID).await;
        dave.batch_execute("INSERT INTO orders (item, qty) VALUES ('dave', 1)")
            .await
            .unwrap();
        let (code, message) = refused(&dave, &format!("{MARKER}SELECT * FROM docs")).await;
        assert_eq!(code, "42501", "{message}");
    });
}

#[test]
fn row_security_on_the_recorded_caller_cannot_be_talked_round() {
    let env = env();
    env.rt.block_on(async {
        let alice = env.connect("alice@contoso.com", ALICE_OID).await;
        let bob = env.connect("bob@contoso.com", BOB_OID).await;
        let sel = "SELECT body FROM docs ORDER BY body";
        assert_eq!(rows(&alice, sel).await, ["alice-1", "alice-2"]);
        assert_eq!(rows(&bob, sel).await, ["bob-1"]);
        assert_eq!(rows(&bob, "SELECT pgward.caller_oid()").await, [BOB_OID]);
        assert_eq!(
            rows(&bob, "SELECT array_to_string(pgward.caller_roles(), ',')").await,
            ["readers"]
        );
        // Bob rewrites the settings past pgward (a plain SET of a placeholder setting is
        // something PostgreSQL lets any session do): the recorded caller does not change.
        for sql in [
            format!("{MARKER}SET pgward.oid = '{ALICE_OID}'"),
            format!("{MARKER}SET pgward.upn = 'alice@contoso.com'"),
        ] {
            bob.batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        assert_eq!(
            rows(&bob, "SELECT current_setting('pgward.oid')").await,
            [ALICE_OID]
        );
        assert_eq!(rows(&bob, sel).await, ["bob-1"]);
        assert_eq!(rows(&bob, "SELECT pgward.caller_oid()").await, [BOB_OID]);
        // The table itself is pgward's alone.
        let (code, message) = refused(&bob, &format!("{MARKER}SELECT * FROM pgward.callers")).await;
        assert_eq!(code, "42501", "{message}");
        // Functions of one's own named like pgward's change nothing: pgward's are called
        // qualified, and pg_temp is never searched for functions.
        bob.batch_execute(&format!(
            "{MARKER}CREATE FUNCTION pg_temp.caller_oid() RETURNS text LANGUAGE sql AS $$ SELECT '{ALICE_OID}' $$"
        ))
        .await
        .unwrap();
        assert_eq!(rows(&bob, "SELECT pgward.caller_oid()").await, [BOB_OID]);
        assert_eq!(rows(&bob, sel).await, ["bob-1"]);
        // Creating a schema to shadow pgward's is refused by the database.
        let (code, _) = refused(&bob, &format!("{MARKER}CREATE SCHEMA shadow")).await;
        assert_eq!(code, "42501");

        // A search path that puts the session's own temporary schema first changes nothing
        // (last: pgward then reads unqualified names as possibly temporary ones):
        // pgward.caller() pins its own and spells every operator out.
        bob.batch_execute(&format!("{MARKER}SET search_path = pg_temp, public"))
            .await
            .unwrap();
        assert_eq!(rows(&bob, "SELECT pgward.caller_oid()").await, [BOB_OID]);
        // A session that did not come through pgward (the same login, connected directly)
        // has no recorded caller, so it sees nothing.
        let direct = format!(
            "host=127.0.0.1 port={} dbname=app user=pgw_reader password={PASSWORD} sslmode=disable",
            env.db.pg.port
        );
        let (client, connection) = tokio_postgres::connect(&direct, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        assert_eq!(rows(&client, "SELECT coalesce(pgward.caller_oid(), 'none')").await, ["none"]);
        assert!(rows(&client, sel).await.is_empty());
        // Nor can it write itself in.
        let e = client
            .simple_query(&format!(
                "INSERT INTO pgward.callers VALUES (pg_backend_pid(), now(), '{ALICE_OID}', '', '', '', '{{}}', 'x')"
            ))
            .await
            .unwrap_err();
        assert_eq!(e.as_db_error().unwrap().code().code(), "42501");
    });
}

#[test]
fn grants_converge_and_follow_reloads() {
    let env = env();
    // Converged at start: printing twice gives the same, empty plan.
    let (code, first) = env.grants(&[]);
    assert_eq!(code, 0, "{first}");
    assert!(first.contains("nothing to change"), "{first}");
    assert_eq!(env.grants(&[]).1, first);

    // Drift by hand: an extra grant, a missing one, a membership that would open SET ROLE.
    env.db.sql(
        "app",
        "GRANT DELETE ON orders TO pgw_reader; REVOKE SELECT ON orders FROM pgw_writer;
         GRANT pgw_writer TO pgw_reader;",
    );
    let (_, plan) = env.grants(&[]);
    for want in [
        r#"REVOKE DELETE ON TABLE "public"."orders" FROM "pgw_reader";"#,
        r#"GRANT SELECT ON TABLE "public"."orders" TO "pgw_writer";"#,
        r#"REVOKE "pgw_writer" FROM "pgw_reader";"#,
    ] {
        assert!(plan.contains(want), "missing {want} in\n{plan}");
    }
    assert_eq!(env.grants(&[]).1, plan, "printing is idempotent");
    let (code, applied) = env.grants(&["--apply"]);
    assert_eq!(code, 0, "{applied}");
    assert!(applied.contains("nothing to change"), "{applied}");
    assert_eq!(
        env.db
            .sql(
                "app",
                "SELECT has_table_privilege('pgw_reader', 'orders', 'DELETE')::text
                        || has_table_privilege('pgw_writer', 'orders', 'SELECT')::text
                        || pg_has_role('pgw_reader', 'pgw_writer', 'MEMBER')::text"
            )
            .trim(),
        "falsetruefalse"
    );

    // A reload re-applies: readers may now read salaries.
    let policy = env.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        POLICY.replace(
            r#"objects = ["public.orders", "public.docs"]"#,
            r#"objects = ["public.orders", "public.docs", "public.salaries"]"#,
        ),
    )
    .unwrap();
    wait_for(
        &env.db,
        "SELECT has_table_privilege('pgw_reader', 'public.salaries', 'SELECT')",
    );
    env.rt.block_on(async {
        let alice = env.connect("alice@contoso.com", ALICE_OID).await;
        assert_eq!(rows(&alice, "SELECT who FROM salaries").await, ["alice"]);
    });
}

#[test]
fn a_role_without_a_login_of_its_own_is_refused() {
    let env = env();
    env.rt.block_on(async {
        let token = env
            .issuer
            .mint(&person("eve@contoso.com", "0e7e0000-0000-4000-8000-000000000e7e"))
            .unwrap();
        let tls = pgtls::trusting(env.pgward.ca.as_ref().unwrap());
        let conn = format!(
            "host=127.0.0.1 port={} dbname=app user=eve@contoso.com password={token} sslmode=require",
            env.pgward.port
        );
        let e = match tokio_postgres::connect(&conn, tls).await {
            Ok(_) => panic!("eve holds no role and must not get a session as pgward's own login"),
            Err(e) => e,
        };
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "42501", "{}", db.message());
        assert!(db.message().contains("require_role_login"), "{}", db.message());
    });
}
