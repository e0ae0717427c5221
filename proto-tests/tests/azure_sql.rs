//! Azure SQL Database upstreams (`kind = "azure-sql"`): PostgreSQL clients in, TDS out.
//! No SQL Server can run here, so the upstream is the TDS stand-in in
//! `pgward_proto_tests::tds_standin`; nothing here has run against a real Azure SQL server.

use std::sync::Arc;
use std::time::Duration;

use pgward_proto_tests::tds_standin::TdsStandIn;
use pgward_tds::{AccessToken, Expect, SessionIdentity, TdsOptions, TdsSession, TdsTls};

/// PostgreSQL backend messages in `bytes`: (tag, body).
fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        out.push((bytes[0], bytes[5..1 + len].to_vec()));
        bytes = &bytes[1 + len..];
    }
    out
}

/// DataRow values as text (None for NULL).
fn row_values(body: &[u8]) -> Vec<Option<String>> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut i = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(body[i..i + 4].try_into().unwrap());
        i += 4;
        if len < 0 {
            out.push(None);
        } else {
            let l = len as usize;
            out.push(Some(String::from_utf8(body[i..i + l].to_vec()).unwrap()));
            i += l;
        }
    }
    out
}

/// RowDescription: (name, type oid).
fn columns(body: &[u8]) -> Vec<(String, u32)> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut i = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        let end = i + body[i..].iter().position(|b| *b == 0).unwrap();
        let name = String::from_utf8(body[i..end].to_vec()).unwrap();
        i = end + 1;
        let oid = u32::from_be_bytes(body[i + 6..i + 10].try_into().unwrap());
        out.push((name, oid));
        i += 18;
    }
    out
}

fn tds_options(standin: &TdsStandIn) -> TdsOptions {
    TdsOptions {
        upstream: "sql".into(),
        host: "127.0.0.1".into(),
        port: standin.port,
        database: "appdb".into(),
        tls: TdsTls::VerifyFull {
            ca_file: Some(standin.ca.clone()),
        },
        connect_timeout: Duration::from_secs(10),
        application_name: "pgward".into(),
    }
}

/// The TDS client alone against the stand-in: sign-in, session context, every type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tds_client_maps_every_type() {
    let standin = TdsStandIn::start();
    let identity = SessionIdentity {
        oid: "11111111-2222-3333-4444-555555555555".into(),
        tid: "tenant-1".into(),
        upn: "alice@contoso.com".into(),
        roles: vec!["analyst".into(), "o'brien".into()],
        database_user: None,
    };
    let mut s = TdsSession::connect(
        &tds_options(&standin),
        &AccessToken::new("tok-abc".into()),
        &identity,
    )
    .await
    .unwrap();
    let rec = standin.recorded();
    assert_eq!(rec.tokens, ["tok-abc"]);
    assert_eq!(rec.alpn, [Some("tds/8.0".to_owned())]);
    assert_eq!(rec.batches, ["SET XACT_ABORT ON"]);
    assert_eq!(
        rec.session_context,
        [
            ("oid".to_owned(), identity.oid.clone(), true),
            ("tid".to_owned(), "tenant-1".to_owned(), true),
            ("upn".to_owned(), "alice@contoso.com".to_owned(), true),
            ("roles".to_owned(), "analyst,o'brien".to_owned(), true),
        ]
    );

    let cancel = tokio::sync::Notify::new();
    let mut out = Vec::new();
    let r = s
        .run(
            "SELECT * FROM dbo.types",
            &[Expect::Rows],
            &mut out,
            &cancel,
        )
        .await
        .unwrap();
    assert!(!r.failed, "{r:?}");
    let msgs = messages(&out);
    let tags: Vec<u8> = msgs.iter().map(|m| m.0).collect();
    assert_eq!(tags, b"TDDC");
    let cols = columns(&msgs[0].1);
    let values = row_values(&msgs[1].1);
    let expected: &[(&str, u32, &str)] = &[
        ("c_tinyint", 21, "255"),
        ("c_smallint", 21, "-32768"),
        ("c_int", 23, "2147483647"),
        ("c_bigint", 20, "-9007199254740993"),
        ("c_bit", 16, "t"),
        ("c_decimal", 1700, "12345.67"),
        ("c_numeric", 1700, "-0.5000"),
        ("c_money", 1700, "42.5"),
        ("c_real", 700, "1.5"),
        ("c_float", 701, "2.25"),
        ("c_char", 1043, "abc       "),
        ("c_varchar", 1043, "hello"),
        ("c_nchar", 1043, "ñandú     "),
        ("c_nvarchar", 1043, "Grüße, 世界"),
        ("c_date", 1082, "2024-03-01"),
        ("c_time", 1083, "12:34:56.789"),
        ("c_datetime", 1114, "2024-03-01 12:34:56.79"),
        ("c_smalldatetime", 1114, "2024-03-01 12:35:00"),
        ("c_datetime2", 1114, "2024-03-01 12:34:56.789"),
        ("c_datetimeoffset", 1184, "2024-03-01 10:34:56.789+00"),
        (
            "c_uniqueidentifier",
            2950,
            "6f9619ff-8b86-d011-b42d-00c04fc964ff",
        ),
        ("c_binary", 17, "\\xdeadbeef"),
        ("c_varbinary", 17, "\\x0001ff"),
    ];
    assert_eq!(cols.len(), expected.len());
    for (i, (name, oid, text)) in expected.iter().enumerate() {
        assert_eq!(cols[i], ((*name).to_owned(), *oid), "column {i}");
        assert_eq!(values[i].as_deref(), Some(*text), "value of {name}");
    }
    assert!(row_values(&msgs[2].1).iter().all(Option::is_none));
    assert_eq!(msgs[3].1, b"SELECT 2\0");

    // Row counts become PostgreSQL command tags; errors keep the server's message.
    let mut out = Vec::new();
    let r = s
        .run(
            "INSERT INTO dbo.orders (id, item, qty) VALUES (10, N'x', 1), (11, N'y', 2); UPDATE dbo.orders SET qty = 9 WHERE id = 10; DELETE FROM dbo.orders WHERE id = 11",
            &[Expect::Insert, Expect::Update, Expect::Delete],
            &mut out,
            &cancel,
        )
        .await
        .unwrap();
    let tags: Vec<String> = r.statements.iter().filter_map(|s| s.tag.clone()).collect();
    assert_eq!(tags, ["INSERT 0 2", "UPDATE 1", "DELETE 1"]);
    let mut out = Vec::new();
    let r = s
        .run("SELECT * FROM dbo.nope", &[Expect::Rows], &mut out, &cancel)
        .await
        .unwrap();
    assert!(r.failed);
    let err = r.statements.last().unwrap().error.clone().unwrap();
    assert_eq!(err.0, "42P01");
    assert!(err.1.contains("Invalid object name 'nope'"), "{}", err.1);

    // Cancel: the attention reaches the server and the client gets 57014.
    let cancel = Arc::new(tokio::sync::Notify::new());
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.notify_waiters();
    });
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    let r = s
        .run("SELECT * FROM dbo.slow", &[Expect::Rows], &mut out, &cancel)
        .await
        .unwrap();
    assert!(r.cancelled, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(standin.recorded().attentions, 1);
    // The session is still usable after the attention.
    let mut out = Vec::new();
    let r = s
        .run(
            "SELECT * FROM dbo.orders WHERE id = 10",
            &[Expect::Rows],
            &mut out,
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(r.statements[0].tag.as_deref(), Some("SELECT 1"));
    s.close().await;
}

// ---------------------------------------------------------------------------------------
// Through pgward: psql and psycopg in, the TDS stand-in out, pgward's token from the
// managed-identity stand-in.

use pgward_devkit::azure_identity::{Endpoint, Expect as IdentityExpect, IdentityStandIn};
use pgward_devkit::entra_issuer::{DevIssuer, TokenSpec};
use pgward_proto_tests::{psql, run_python, Database, Pgward, PgwardOptions};

const TENANT: &str = "5f1c2a7e-3b4d-4e8f-9a01-6c2d8e4b1f37";
const ALICE_OID: &str = "0a11ce00-0000-4000-8000-00000000a11c";
/// The token the managed-identity stand-in issues to pgward for Azure SQL.
const SQL_TOKEN: &str = "eyJ0eXAiOiJKV1QifQ.standin-azure-sql-token.sig";

const POLICY: &str = r#"
[[roles]]
name = "analyst"
members = { users = ["alice@contoso.com"] }
allow = [
  { actions = ["select"], objects = ["dbo.orders", "dbo.types", "dbo.slow"] },
  { actions = ["insert", "update", "delete"], objects = ["dbo.orders"] },
]
deny = [ { name = "no_salaries", objects = ["*.salaries"] } ]
"#;

struct Env {
    pgward: Pgward,
    standin: TdsStandIn,
    identity: IdentityStandIn,
    audit: std::path::PathBuf,
    issuer: DevIssuer,
    _db: Database,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn env() -> Env {
    env_with(POLICY, "appdb")
}

/// pgward in front of the stand-in with `policy`, the route `sqlapp` going to the upstream
/// database `upstream_database`.
fn env_with(policy_text: &str, upstream_database: &str) -> Env {
    let (rt, issuer) = pgward_proto_tests::start_issuer(TENANT, 1);
    let identity = IdentityStandIn::start(
        IdentityExpect {
            resource: "https://database.windows.net".into(),
            ..Default::default()
        },
        SQL_TOKEN,
        Duration::from_secs(3600),
    )
    .unwrap();
    let standin = TdsStandIn::start();
    standin.accept_only(SQL_TOKEN);
    let db = Database::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text).unwrap();
    let audit = dir.path().join("audit/pgward.jsonl");
    let extra = format!(
        r#"
[audit]
file = "{audit}"

[[upstreams]]
name = "sql"
kind = "azure-sql"
host = "127.0.0.1"
port = {port}
tls = "verify-full"
ca_file = "{ca}"
[upstreams.credential]
type = "managed-identity"
user = "pgward-identity"
endpoint = "{imds}"

[[routes]]
database = "sqlapp"
upstream = "sql"
upstream_database = "{upstream_database}"
"#,
        audit = audit.display(),
        port = standin.port,
        ca = standin.ca.display(),
        imds = identity.imds_url(),
    );
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            entra: Some(pgward_proto_tests::entra_section(TENANT, &issuer)),
            policy: Some(policy),
            extra_toml: extra,
            ..PgwardOptions::default()
        },
    );
    Env {
        pgward,
        standin,
        identity,
        audit,
        issuer,
        _db: db,
        _dir: dir,
        _rt: rt,
    }
}

impl Env {
    fn token(&self) -> String {
        let mut spec = TokenSpec::user("alice@contoso.com");
        spec.oid = Some(ALICE_OID.to_owned());
        self.issuer.mint(&spec).unwrap()
    }

    fn conn(&self) -> String {
        self.conn_with(&self.token())
    }

    fn conn_with(&self, token: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=sqlapp user=alice@contoso.com password={token} sslmode=verify-full sslrootcert={} connect_timeout=10",
            self.pgward.port,
            self.pgward.ca.as_ref().unwrap().display()
        )
    }

    fn psql(&self, sql: &str) -> (bool, String, String) {
        let out = psql(&self.conn(), &["-A", "-t", "-c", sql], None);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[test]
fn psql_through_pgward_to_azure_sql() {
    let env = env();

    // Sign-in: pgward's token came from the managed-identity stand-in and reached the
    // TDS server in LOGIN7's FEDAUTH extension; the caller's identity is pinned read-only.
    let (ok, out, err) = env.psql("SELECT * FROM dbo.orders WHERE id = 2");
    assert!(ok, "{err}\n{}", env.pgward.log());
    assert_eq!(out.trim(), "2|gadget|5");
    let rec = env.standin.recorded();
    assert_eq!(rec.tokens, [SQL_TOKEN]);
    assert!(
        env.identity.issued(Endpoint::Imds) >= 1,
        "{:?}",
        env.identity.rejections()
    );
    assert_eq!(rec.logins[0].0, "appdb");
    assert!(
        rec.logins[0].1.starts_with("alice@contoso.com"),
        "{:?}",
        rec.logins
    );
    let ctx: Vec<(String, String, bool)> = rec.session_context.clone();
    assert!(
        ctx.contains(&("oid".into(), ALICE_OID.into(), true)),
        "{ctx:?}"
    );
    assert!(
        ctx.contains(&("tid".into(), TENANT.into(), true)),
        "{ctx:?}"
    );
    assert!(
        ctx.contains(&("upn".into(), "alice@contoso.com".into(), true)),
        "{ctx:?}"
    );
    assert!(
        ctx.contains(&("roles".into(), "analyst".into(), true)),
        "{ctx:?}"
    );
    assert_eq!(rec.statements, ["SELECT * FROM dbo.orders WHERE id = 2"]);

    // Row counts as psql's command tags.
    let (ok, out, err) =
        env.psql("INSERT INTO dbo.orders (id, item, qty) VALUES (20, N'bolt', 1), (21, N'nut', 2)");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "INSERT 0 2");
    let (ok, out, _) = env.psql("UPDATE dbo.orders SET qty = 4 WHERE id = 20");
    assert!(ok);
    assert_eq!(out.trim(), "UPDATE 1");
    let (ok, out, _) = env.psql("DELETE FROM dbo.orders WHERE id = 21");
    assert!(ok);
    assert_eq!(out.trim(), "DELETE 1");

    // Denials: 42501 from pgward, and the statement never reaches the server.
    let before = env.standin.recorded().statements.len();
    for sql in [
        "SELECT * FROM hr.salaries",
        "DELETE FROM dbo.customers",
        "EXEC('DROP TABLE dbo.orders')",
        "SELECT * FROM dbo.orders; DROP TABLE dbo.orders",
        "EXEC sp_set_session_context @key = N'oid', @value = N'someone-else'",
    ] {
        let (ok, _, err) = env.psql(sql);
        assert!(!ok, "{sql} ran");
        assert!(err.contains("pgward policy denied"), "{sql}: {err}");
    }
    assert_eq!(env.standin.recorded().statements.len(), before);

    // Server errors keep their message, with a mapped SQLSTATE.
    let out = psql(
        &env.conn(),
        &[
            "-A",
            "-t",
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "SELECT * FROM dbo.orders; SELECT 1/0",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("22012") && err.contains("Divide by zero"),
        "{err}"
    );
    let out = psql(
        &env.conn(),
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "INSERT INTO dbo.orders (id, item, qty) VALUES (1, N'dup', 1)",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("23505") && err.contains("PRIMARY KEY"),
        "{err}"
    );

    // What does not translate says so.
    let (ok, _, err) = env.psql("\\d");
    assert!(!ok);
    assert!(err.contains("do not translate to azure-sql"), "{err}");
    let (ok, _, err) = env.psql("COPY orders TO STDOUT");
    assert!(!ok);
    assert!(err.contains("COPY is not supported"), "{err}");

    // Every listed type, as psql prints PostgreSQL's text format.
    let (ok, out, err) = env.psql("SELECT * FROM dbo.types");
    assert!(ok, "{err}");
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap(),
        "255|-32768|2147483647|-9007199254740993|t|12345.67|-0.5000|42.5|1.5|2.25|abc       |hello|ñandú     |Grüße, 世界|2024-03-01|12:34:56.789|2024-03-01 12:34:56.79|2024-03-01 12:35:00|2024-03-01 12:34:56.789|2024-03-01 10:34:56.789+00|6f9619ff-8b86-d011-b42d-00c04fc964ff|\\xdeadbeef|\\x0001ff"
    );
    assert_eq!(lines.next().unwrap(), "|".repeat(22));

    // Transactions: a denial inside one aborts it, as in PostgreSQL.
    let script = "BEGIN;\nINSERT INTO dbo.orders (id, item, qty) VALUES (30, N'x', 1);\nDELETE FROM dbo.customers;\nCOMMIT;\n";
    let out = psql(&env.conn(), &["-A", "-t"], Some(script));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("pgward policy denied"), "{err}");
    let (_, out, _) = env.psql("SELECT * FROM dbo.orders WHERE id = 30");
    assert_eq!(out.trim(), "", "the aborted transaction's insert survived");
    let b = env.standin.recorded().batches;
    assert!(b.iter().any(|s| s == "BEGIN TRANSACTION"), "{b:?}");
    assert!(
        b.iter()
            .any(|s| s == "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION"),
        "{b:?}"
    );

    // Audit: the same records as PostgreSQL sessions.
    let recs = env.audit_records();
    let stmts: Vec<&serde_json::Value> =
        recs.iter().filter(|r| r["event"] == "statement").collect();
    let find = |sql: &str| {
        stmts
            .iter()
            .find(|r| r.to_string().contains(sql))
            .unwrap_or_else(|| panic!("no statement record for {sql}: {recs:?}"))
    };
    let sel = find("SELECT * FROM dbo.orders WHERE id = 2");
    assert_eq!(sel["decision"], "allow", "{sel}");
    assert!(sel.to_string().contains("SELECT 1"), "{sel}");
    let denied = find("hr.salaries");
    assert_eq!(denied["decision"], "deny", "{denied}");
    assert!(denied.to_string().contains("no_salaries"), "{denied}");
    assert!(recs.iter().any(|r| r["event"] == "connect"));
    assert!(recs.iter().any(|r| r["event"] == "disconnect"));
    assert!(!std::fs::read_to_string(&env.audit)
        .unwrap()
        .contains(SQL_TOKEN));
    assert!(!env.pgward.log().contains(SQL_TOKEN));
}

#[test]
fn psycopg_and_cancel_through_pgward() {
    let env = env();
    let out = run_python("azure_sql.py", &[("CONN", env.conn())]);
    assert!(out.contains("row [(3, 'sprocket', 7)]"), "{out}");
    assert!(
        out.contains("types [21, 21, 23, 20, 16, 1700, 1700, 1700, 700, 701, 1043, 1043, 1043, 1043, 1082, 1083, 1114, 1114, 1114, 1184, 2950, 17, 17]"),
        "{out}"
    );
    assert!(out.contains("Decimal('12345.67')"), "{out}");
    assert!(
        out.contains("UUID('6f9619ff-8b86-d011-b42d-00c04fc964ff')"),
        "{out}"
    );
    assert!(out.contains("denied 42501"), "{out}");
    assert!(out.contains("extended 0A000"), "{out}");
    assert!(out.contains("cancel 57014 True"), "{out}");
    assert!(out.contains("after [(1, 'widget', 3)]"), "{out}");
    assert_eq!(env.standin.recorded().attentions, 1);
}

/// Azure SQL refusing pgward's own token: the client gets 08001 without the detail, the
/// audit log gets the reason, and the token appears in neither.
#[test]
fn azure_sql_refusing_pgwards_token_is_08001() {
    let env = env();
    env.standin.accept_only("some-other-token");
    let out = psql(
        &env.conn(),
        &["-v", "VERBOSITY=verbose", "-c", "SELECT * FROM dbo.orders"],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("could not sign in to upstream \"sql\""),
        "{err}"
    );
    // The SQLSTATE, through a driver that exposes it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = pgward_proto_tests::pgtls::trusting(env.pgward.ca.as_ref().unwrap());
    let conn = format!(
        "host=127.0.0.1 port={} dbname=sqlapp user=alice@contoso.com password={} sslmode=require",
        env.pgward.port,
        env.token()
    );
    let e = match rt.block_on(tokio_postgres::connect(&conn, tls)) {
        Ok(_) => panic!("connected although Azure SQL refused pgward"),
        Err(e) => e,
    };
    assert_eq!(e.code().map(|c| c.code()), Some("08001"), "{e}");
    assert!(!err.contains("Login failed"), "{err}");
    assert!(env.standin.recorded().statements.is_empty());
    let recs = env.audit_records();
    let failed = recs
        .iter()
        .find(|r| r["event"] == "auth_failed")
        .unwrap_or_else(|| panic!("no auth_failed record: {recs:?}"));
    assert!(failed.to_string().contains("Login failed"), "{failed}");
    assert!(!std::fs::read_to_string(&env.audit)
        .unwrap()
        .contains(SQL_TOKEN));
    assert!(!env.pgward.log().contains(SQL_TOKEN));
}

// ---------------------------------------------------------------------------------------
// The T-SQL corpus end to end.

#[derive(serde::Deserialize)]
struct TsqlCorpus {
    case: Vec<TsqlCase>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct TsqlCase {
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

fn policy_test_file(name: &str) -> String {
    let path = format!(
        "{}/../crates/policy/tests/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Statement keywords and the actions pgward must have decided when SQL Server reads one.
fn actions_for_word(word: &str) -> Option<&'static [&'static str]> {
    Some(match word {
        "drop" => &["drop"],
        "delete" => &["delete"],
        "update" => &["update"],
        "insert" => &["insert"],
        "truncate" => &["truncate"],
        "exec" | "execute" => &["execute"],
        "create" => &["create"],
        "alter" => &["alter"],
        "grant" | "revoke" | "deny" => &["grant"],
        "merge" => &["insert", "update", "delete"],
        _ => return None,
    })
}

/// Every case of crates/policy/tests/tsql_corpus.toml sent through pgward by its role's
/// user: a denied batch never reaches the TDS stand-in (SQLSTATE 42501), an allowed one
/// reaches it unchanged, and every statement keyword the stand-in read with SQL Server's
/// lexing (a DROP after a CR-ended comment, a DELETE after `1e`) is one pgward decided.
#[test]
fn tsql_corpus_through_pgward() {
    let env = env_with(&policy_test_file("tsql_policy.toml"), "app");
    let corpus: TsqlCorpus = toml::from_str(&policy_test_file("tsql_corpus.toml")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = pgward_proto_tests::pgtls::trusting(env.pgward.ca.as_ref().unwrap());
    let mut clients: std::collections::HashMap<String, tokio_postgres::Client> =
        std::collections::HashMap::new();
    let (mut denied, mut allowed) = (0, 0);
    for c in &corpus.case {
        // The PostgreSQL protocol cannot carry NUL inside a query string.
        if c.sql.contains('\0') {
            continue;
        }
        let client = clients.entry(c.role.clone()).or_insert_with(|| {
            let user = if c.role == "none" {
                "nobody@contoso.com".to_owned()
            } else {
                format!("{}@contoso.com", c.role)
            };
            let token = env.issuer.mint(&TokenSpec::user(&user)).unwrap();
            let conn = format!(
                "host=127.0.0.1 port={} dbname=sqlapp user={user} password={token} sslmode=require",
                env.pgward.port
            );
            let (client, connection) = rt
                .block_on(tokio_postgres::connect(&conn, tls.clone()))
                .unwrap_or_else(|e| panic!("{user}: {e}\n{}", env.pgward.log()));
            rt.spawn(connection);
            client
        });
        let before = env.standin.recorded().statements.len();
        let result = rt.block_on(client.simple_query(&c.sql));
        let rec = env.standin.recorded();
        if c.verdict == "deny" {
            denied += 1;
            let e = match result {
                Ok(_) => panic!("denied case ran: {:?} ({})", c.sql, c.why),
                Err(e) => e,
            };
            // A batch over the analysis budget (too long, too complex) is 54000, as in
            // PostgreSQL sessions; every other denial 42501.
            let code = e.code().map(|s| s.code());
            assert!(
                matches!(code, Some("42501" | "54000")),
                "{:?} ({}): {e}",
                c.sql,
                c.why
            );
            assert_eq!(
                rec.statements.len(),
                before,
                "a denied batch reached the server: {:?} ({})",
                c.sql,
                c.why
            );
            continue;
        }
        allowed += 1;
        // Allowed: forwarded as the client wrote it (the stand-in may still fail it).
        assert_eq!(
            rec.statements.len(),
            before + 1,
            "{:?} ({}) did not reach the server: {result:?}",
            c.sql,
            c.why
        );
        assert_eq!(rec.statements[before], c.sql);
        let decided = pgward_policy::tsql::analyze_tsql(&c.sql, Some("app")).unwrap();
        let actions: Vec<String> = decided
            .statements
            .iter()
            .flat_map(|s| s.accesses.iter().map(|a| a.action.to_string()))
            .collect();
        for w in &rec.words[before] {
            if let Some(want) = actions_for_word(w) {
                assert!(
                    want.iter().any(|a| actions.iter().any(|x| x == a)),
                    "SQL Server read {w} in {:?} but pgward decided only {actions:?}",
                    c.sql
                );
            }
        }
    }
    println!("tsql corpus through pgward: {allowed} allowed, {denied} denied");
    assert!(allowed + denied >= 150);
}

/// The stand-in reads batches as SQL Server does: a bare CR ends a comment, `1e` is a
/// number, and a `;` inside a string does not split statements.
#[test]
fn the_standin_lexes_as_sql_server() {
    let standin = TdsStandIn::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let identity = SessionIdentity {
        oid: "o".into(),
        tid: "t".into(),
        upn: "u@contoso.com".into(),
        roles: vec![],
        database_user: None,
    };
    rt.block_on(async {
        let mut s = TdsSession::connect(
            &tds_options(&standin),
            &AccessToken::new("tok".into()),
            &identity,
        )
        .await
        .unwrap();
        let cancel = tokio::sync::Notify::new();
        for sql in [
            "--\rDROP TABLE dbo.salaries",
            "SELECT 1eDELETE FROM dbo.orders",
            "SELECT * FROM dbo.orders WHERE id = 2 -- ; DROP TABLE x",
        ] {
            let mut out = Vec::new();
            let _ = s.run(sql, &[Expect::Rows], &mut out, &cancel).await;
        }
        s.close().await;
    });
    let rec = standin.recorded();
    assert_eq!(rec.words[0], ["drop", "table", "dbo", "salaries"]);
    assert_eq!(rec.words[1], ["select", "delete", "from", "dbo", "orders"]);
    assert!(!rec.words[2].contains(&"drop".to_owned()));
}

// ---------------------------------------------------------------------------------------
// The second wall: sessions run as the role's database user, generated from the policy.

const WALL_POLICY: &str = r#"
[[roles]]
name = "analyst"
upstream_role = "pgward_analyst"
members = { users = ["alice@contoso.com"] }
allow = [ { actions = ["select"], objects = ["dbo.orders"] } ]
deny = [ { name = "no_salaries", objects = ["hr.*"] } ]
"#;

/// Every session of a role with an upstream_role runs `EXECUTE AS USER ... WITH NO REVERT`
/// before anything else; if SQL Server refuses it, so is the session; `pgward policy
/// grants` writes the user and its permissions.
#[test]
fn sessions_run_as_the_roles_database_user() {
    let env = env_with(WALL_POLICY, "appdb");
    let (ok, out, err) = env.psql("SELECT * FROM dbo.orders WHERE id = 2");
    assert!(ok, "{err}\n{}", env.pgward.log());
    assert_eq!(out.trim(), "2|gadget|5");
    let rec = env.standin.recorded();
    assert_eq!(
        rec.batches.first().map(String::as_str),
        Some("EXECUTE AS USER = N'pgward_analyst' WITH NO REVERT"),
        "{:?}",
        rec.batches
    );
    assert_eq!(rec.impersonations, ["pgward_analyst"]);

    // The user does not exist (or pgward may not impersonate it): no session at all.
    env.standin.database_users(&["someone_else"]);
    let before = env.standin.recorded().statements.len();
    let (ok, _, err) = env.psql("SELECT * FROM dbo.orders WHERE id = 2");
    assert!(!ok, "the session ran without its database user");
    assert!(err.contains("could not connect to upstream"), "{err}");
    let rec = env.standin.recorded();
    assert_eq!(rec.impersonations, ["pgward_analyst", "pgward_analyst"]);
    assert_eq!(rec.statements.len(), before);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, WALL_POLICY).unwrap();
    let out = std::process::Command::new(pgward_proto_tests::pgward_bin())
        .args(["policy", "grants", "--policy"])
        .arg(&file)
        .args(["--pgward-user", "pgward-identity"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for line in [
        "IF DATABASE_PRINCIPAL_ID(N'pgward_analyst') IS NULL CREATE USER [pgward_analyst] WITHOUT LOGIN;",
        "GRANT IMPERSONATE ON USER::[pgward_analyst] TO [pgward-identity];",
        "GRANT SELECT ON OBJECT::[dbo].[orders] TO [pgward_analyst];",
        "DENY SELECT, INSERT, UPDATE, DELETE, ALTER, EXECUTE ON SCHEMA::[hr] TO [pgward_analyst];",
    ] {
        assert!(script.lines().any(|l| l == line), "{line}\n{script}");
    }
}

/// Azure SQL sessions end with their token too; the timer lives on pgward's main runtime
/// (deadline.rs), one per session. A session idle across its token's expiry is closed
/// and its next statement never runs. A session with a valid token idles as long and
/// goes on.
#[test]
fn azure_sql_sessions_end_with_their_token() {
    let env = env();
    let mut short = TokenSpec::user("alice@contoso.com");
    short.oid = Some(ALICE_OID.to_owned());
    short.lifetime_secs = 3;
    let script = "SELECT * FROM dbo.orders WHERE id = 2;\n\\! sleep 5\nSELECT * FROM dbo.orders WHERE id = 2;\n";
    let args = ["-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"];

    let expiring = psql(
        &env.conn_with(&env.issuer.mint(&short).unwrap()),
        &args,
        Some(script),
    );
    let out = String::from_utf8_lossy(&expiring.stdout);
    assert_eq!(out.matches("gadget").count(), 1, "{out}");
    assert!(!expiring.status.success());
    assert!(
        env.pgward.log().contains("token expired"),
        "{}",
        env.pgward.log()
    );

    let valid = psql(&env.conn(), &args, Some(script));
    let out = String::from_utf8_lossy(&valid.stdout);
    assert!(
        valid.status.success() && out.matches("gadget").count() == 2,
        "{out}\n{}",
        String::from_utf8_lossy(&valid.stderr)
    );
}
