//! The caller's identity on the upstream session: pgward.oid / tid / upn / roles / appid
//! and application_name are set from the verified token, row-level security keyed on
//! pgward.oid shows each caller only their rows, and no client trick changes them
//! (SET, SET LOCAL, RESET, set_config, SET ROLE, extended protocol, startup options),
//! while RESET ALL and DISCARD ALL put pgward's values back.

use pgward_devkit::entra_issuer::{DevIssuer, TokenSpec};
use pgward_proto_tests::*;
use tokio_postgres::{Client, SimpleQueryMessage};

const TENANT: &str = "5f1c2a7e-3b4d-4e8f-9a01-6c2d8e4b1f37";
const ALICE_OID: &str = "0a11ce00-0000-4000-8000-00000000a11c";
const BOB_OID: &str = "0b0b0000-0000-4000-8000-000000000b0b";

const POLICY: &str = r#"
[baseline]
reset_all = true

[[roles]]
name = "readers"
members = { everyone = true }
upstream_role = "doc_reader"
allow = [ { actions = ["select"], objects = ["public.docs"] } ]

[[roles]]
name = "writers"
members = { users = ["bob@contoso.com"] }
allow = [ { actions = ["insert"], objects = ["public.docs"] } ]
"#;

struct Env {
    // Field order is drop order: pgward before what it reads and talks to.
    pgward: Pgward,
    _dir: tempfile::TempDir,
    db: Database,
    issuer: DevIssuer,
    rt: tokio::runtime::Runtime,
}

fn env() -> Env {
    let (rt, issuer) = start_issuer(TENANT, 2);
    let db = Database::start();
    // The table owner (the superuser) is not the session's role, and doc_reader is no
    // superuser: row-level security applies to every session pgward opens.
    db.sql(
        "app",
        &format!(
            "CREATE ROLE doc_reader NOLOGIN;
             GRANT doc_reader TO {PROXY_ROLE};
             CREATE TABLE docs (owner_oid text NOT NULL DEFAULT current_setting('pgward.oid'),
                                body text NOT NULL);
             GRANT SELECT, INSERT ON docs TO doc_reader;
             ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own_rows ON docs
                 USING (owner_oid = current_setting('pgward.oid', true))
                 WITH CHECK (owner_oid = current_setting('pgward.oid', true));
             INSERT INTO docs VALUES ('{ALICE_OID}', 'alice-1'), ('{ALICE_OID}', 'alice-2'),
                                     ('{BOB_OID}', 'bob-1'), ('nobody', 'orphan');
             -- With PostgreSQL's default search path (\"$user\", public) this table would
             -- shadow public.docs for doc_reader; pgward gives the session the policy's path.
             CREATE SCHEMA doc_reader AUTHORIZATION doc_reader;
             CREATE TABLE doc_reader.docs (owner_oid text, body text);
             INSERT INTO doc_reader.docs VALUES ('{ALICE_OID}', 'shadowed');
             GRANT ALL ON doc_reader.docs TO doc_reader;"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let entra = entra_section(TENANT, &issuer);
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            entra: Some(entra),
            policy: Some(policy),
            ..PgwardOptions::default()
        },
    );
    Env {
        pgward,
        _dir: dir,
        db,
        issuer,
        rt,
    }
}

fn person(upn: &str, oid: &str) -> TokenSpec {
    let mut spec = TokenSpec::user(upn);
    spec.oid = Some(oid.to_owned());
    spec
}

impl Env {
    async fn connect(&self, user: &str, token: &str, app: &str) -> Client {
        let tls = pgtls::trusting(self.pgward.ca.as_ref().unwrap());
        let mut conn = format!(
            "host=127.0.0.1 port={} dbname=app user={user} password={token} sslmode=require",
            self.pgward.port
        );
        if !app.is_empty() {
            conn.push_str(&format!(" application_name={app}"));
        }
        let (client, connection) = tokio_postgres::connect(&conn, tls).await.unwrap();
        tokio::spawn(connection);
        client
    }
}

async fn one(c: &Client, sql: &str) -> String {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

async fn rows(c: &Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .collect()
}

/// What the upstream session believes about its caller.
async fn identity(c: &Client) -> String {
    one(
        c,
        "SELECT concat_ws('|', current_setting('pgward.oid'), current_setting('pgward.tid'),
                current_setting('pgward.upn'), current_setting('pgward.roles'),
                current_setting('application_name'), current_user)",
    )
    .await
}

#[test]
fn each_caller_sees_only_their_rows_and_cannot_pose_as_another() {
    let env = env();
    let alice_token = env
        .issuer
        .mint(&person("alice@contoso.com", ALICE_OID))
        .unwrap();
    let bob_token = env
        .issuer
        .mint(&person("bob@contoso.com", BOB_OID))
        .unwrap();
    env.rt.block_on(async {
        let alice = env.connect("alice@contoso.com", &alice_token, "report").await;
        let bob = env.connect("bob@contoso.com", &bob_token, "etl").await;
        let alice_id =
            format!("{ALICE_OID}|{TENANT}|alice@contoso.com|readers|alice@contoso.com (report)|doc_reader");
        let bob_id =
            format!("{BOB_OID}|{TENANT}|bob@contoso.com|readers,writers|bob@contoso.com (etl)|doc_reader");
        assert_eq!(identity(&alice).await, alice_id);
        assert_eq!(identity(&bob).await, bob_id);
        // The upstream sees who is connected (pg_stat_activity, pgAudit, log_line_prefix).
        let seen = env.db.sql(
            "app",
            "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_activity
             WHERE application_name LIKE '%@contoso.com%'",
        );
        assert_eq!(
            seen.trim(),
            "alice@contoso.com (report),bob@contoso.com (etl)"
        );

        assert_eq!(one(&alice, "SELECT current_schemas(false)::text").await, "{public}");
        // Row-level security on pgward.oid, through pgward.
        let sel = "SELECT body FROM docs ORDER BY body";
        assert_eq!(rows(&alice, sel).await, ["alice-1", "alice-2"]);
        assert_eq!(rows(&bob, sel).await, ["bob-1"]);
        // Bob writes a row; it is his (the default and WITH CHECK use pgward.oid).
        bob.batch_execute("INSERT INTO docs (body) VALUES ('bob-2')")
            .await
            .unwrap();
        assert_eq!(rows(&bob, sel).await, ["bob-1", "bob-2"]);
        assert_eq!(rows(&alice, sel).await, ["alice-1", "alice-2"]);

        // Every way of changing the identity settings is refused, in both protocols.
        let attacks = [
            format!("SET pgward.oid = '{BOB_OID}'"),
            format!("SET SESSION pgward.oid TO '{BOB_OID}'"),
            "SET pgward.upn = 'bob@contoso.com'".to_owned(),
            "SET pgward.roles = 'admin'".to_owned(),
            "RESET pgward.oid".to_owned(),
            format!("SELECT set_config('pgward.oid', '{BOB_OID}', false)"),
            format!("SELECT set_config('PGWARD.OID', '{BOB_OID}', false)"),
            "SELECT set_config('application_name', 'bob', false)".to_owned(),
            "SET ROLE NONE".to_owned(),
            format!("SET ROLE {PROXY_ROLE}"),
            "SET SESSION AUTHORIZATION DEFAULT".to_owned(),
            "RESET ROLE".to_owned(),
            format!("SELECT 1; SET pgward.oid = '{BOB_OID}'"),
            format!("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET pgward.oid = '{BOB_OID}' AS 'SELECT 1'"),
        ];
        for sql in &attacks {
            let err = alice
                .batch_execute(sql)
                .await
                .expect_err(&format!("allowed: {sql}"));
            assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{sql}: {err}");
            let err = alice
                .execute(sql.as_str(), &[])
                .await
                .expect_err(&format!("allowed (extended): {sql}"));
            assert!(
                matches!(err.code().map(|c| c.code()), Some("42501" | "42601")),
                "{sql}: {err}"
            );
            assert_eq!(identity(&alice).await, alice_id, "after {sql}");
        }
        // SET LOCAL inside a transaction: refused, and the transaction is aborted.
        alice.batch_execute("BEGIN").await.unwrap();
        let err = alice
            .batch_execute(&format!("SET LOCAL pgward.oid = '{BOB_OID}'"))
            .await
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42501"));
        alice.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(rows(&alice, sel).await, ["alice-1", "alice-2"]);

        // A client's own SET application_name (pgjdbc sends one on connect) is kept, but
        // behind the caller's name, in both protocols.
        alice
            .batch_execute("SET application_name = 'bob@contoso.com'")
            .await
            .unwrap();
        assert_eq!(
            one(&alice, "SHOW application_name").await,
            "alice@contoso.com (bob@contoso.com)"
        );
        alice
            .execute("SET application_name = 'nightly'", &[])
            .await
            .unwrap();
        assert_eq!(
            one(&alice, "SHOW application_name").await,
            "alice@contoso.com (nightly)"
        );
        // Legitimate resets put pgward's values back (they are the session defaults).
        alice.batch_execute("RESET ALL").await.unwrap();
        assert_eq!(identity(&alice).await, alice_id);
        alice.batch_execute("DISCARD ALL").await.unwrap();
        assert_eq!(identity(&alice).await, alice_id);
        alice.batch_execute("RESET application_name").await.unwrap();
        assert_eq!(identity(&alice).await, alice_id);
        assert_eq!(rows(&alice, sel).await, ["alice-1", "alice-2"]);
    });

    // Startup options can't set them either: refused before any upstream session opens.
    let out = std::process::Command::new("psql")
        .arg(
            env.pgward
                .conn("app", "require")
                .replace("user=alice", "user=alice@contoso.com"),
        )
        .args(["-X", "-At", "-c", "SELECT current_setting('pgward.oid')"])
        .env("PGPASSWORD", &alice_token)
        .env("PGOPTIONS", format!("-c pgward.oid={BOB_OID}"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "startup option accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not allowed by pgward") && !stderr.contains(&alice_token),
        "{stderr}"
    );

    // Tokens never reach the log.
    let log = env.pgward.log();
    assert!(!log.contains(&alice_token) && !log.contains(&bob_token));
}

#[test]
fn a_managed_identity_caller_is_named_by_its_identity() {
    let env = env();
    let mut spec = TokenSpec::managed_identity("orders-app");
    spec.oid = Some("5e5e5e5e-0000-4000-8000-000000000005".to_owned());
    let token = env.issuer.mint(&spec).unwrap();
    env.rt.block_on(async {
        let c = env.connect("orders-app", &token, "").await;
        let id = identity(&c).await;
        assert!(
            id.starts_with(&format!(
                "5e5e5e5e-0000-4000-8000-000000000005|{TENANT}|orders-app|readers|orders-app|"
            )),
            "{id}"
        );
        // No rows carry its oid, so row-level security shows it nothing.
        assert!(rows(&c, "SELECT body FROM docs").await.is_empty());
        assert!(!one(&c, "SELECT current_setting('pgward.appid')")
            .await
            .is_empty());
    });
}
