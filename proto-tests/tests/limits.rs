//! `[limits]` end to end: per-identity and per-role connection caps (53300 at sign-in),
//! per-identity statement rates (53400 for that statement, session still usable), both
//! protocols, SIGHUP reload without dropping sessions, and the metrics that show them.

use std::time::Duration;

use pgward_devkit::entra_issuer::{DevIssuer, TokenSpec};
use pgward_proto_tests::*;
use tokio_postgres::Client;

const TENANT: &str = "3e2d1c0b-4a59-4687-9a8b-7c6d5e4f3a21";

const POLICY: &str = r#"
[[roles]]
name = "readers"
members = { everyone = true }
allow = [ { actions = ["select"], objects = ["public.orders"] } ]

[[roles]]
name = "writers"
members = { users = ["bob@contoso.com"] }
allow = [ { actions = ["insert"], objects = ["public.orders"] } ]
"#;

const LIMITS: &str = r#"
[limits]
connections_per_identity = 2
statements_per_second = 2
statement_burst = 4

[[limits.roles]]
role = "writers"
connections = 1
"#;

struct Env {
    pgward: Pgward,
    _db: Database,
    _dir: tempfile::TempDir,
    issuer: DevIssuer,
    rt: tokio::runtime::Runtime,
}

fn env() -> Env {
    env_with(LIMITS)
}

fn env_with(limits: &str) -> Env {
    let (rt, issuer) = start_issuer(TENANT, 2);
    let db = Database::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            entra: Some(entra_section(TENANT, &issuer)),
            policy: Some(policy),
            extra_toml: limits.to_owned(),
            ..PgwardOptions::default()
        },
    );
    Env {
        pgward,
        _db: db,
        _dir: dir,
        issuer,
        rt,
    }
}

impl Env {
    async fn connect(&self, upn: &str) -> Result<Client, tokio_postgres::Error> {
        let token = self.issuer.mint(&TokenSpec::user(upn)).unwrap();
        let tls = pgtls::trusting(self.pgward.ca.as_ref().unwrap());
        let conn = format!(
            "host=127.0.0.1 port={} dbname=app user={upn} password={token} sslmode=require",
            self.pgward.port
        );
        let (client, connection) = tokio_postgres::connect(&conn, tls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    fn metric_line(&self, prefix: &str) -> f64 {
        let (_, body) = self.pgward.admin_get("/metrics").unwrap();
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

#[test]
fn a_connection_cap_holds_for_the_whole_session_without_a_statement_rate() {
    // The slot is the session's until it ends, whether or not statements are rate-limited.
    let env = env_with("[limits]\nconnections_per_identity = 1\n");
    env.rt.block_on(async {
        let first = env.connect("carol@contoso.com").await.unwrap();
        first.simple_query("SELECT 1").await.unwrap();
        let Err(err) = env.connect("carol@contoso.com").await else {
            panic!("a connection beyond the cap was let in while the first one is open");
        };
        assert_eq!(code(&err), Some("53300"), "{err}");
        first.simple_query("SELECT 1").await.unwrap();
        drop(first);
        // The slot comes back when the session ends.
        let mut back = false;
        for _ in 0..50 {
            if env.connect("carol@contoso.com").await.is_ok() {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back, "the slot did not come back after the session ended");
    });
}

#[test]
fn connection_caps_per_identity_and_role() {
    let env = env();
    env.rt.block_on(async {
        let a1 = env.connect("alice@contoso.com").await.unwrap();
        let _a2 = env.connect("alice@contoso.com").await.unwrap();
        let Err(err) = env.connect("alice@contoso.com").await else {
            panic!("third session admitted");
        };
        assert_eq!(code(&err), Some("53300"), "{err}");
        let db_err = err.as_db_error().unwrap();
        assert!(
            db_err
                .message()
                .contains("too many connections for this identity (limit 2)"),
            "{db_err:?}"
        );
        // Others are not affected; bob's role caps its members together at 1.
        let b1 = env.connect("bob@contoso.com").await.unwrap();
        let err = env.connect("bob@contoso.com").await.err().unwrap();
        assert_eq!(code(&err), Some("53300"));
        assert!(
            err.as_db_error()
                .unwrap()
                .message()
                .contains("members of role writers (limit 1)"),
            "{err}"
        );
        // Ending a session frees its place.
        drop(a1);
        drop(b1);
        assert!(
            wait_until_async(|| async { env.connect("alice@contoso.com").await.is_ok() }).await
        );
        assert!(env.connect("bob@contoso.com").await.is_ok());
    });
    assert!(env.metric_line("pgward_errors_total{kind=\"identity_connections\"}") >= 1.0);
    assert!(env.metric_line("pgward_errors_total{kind=\"role_connections\"}") >= 1.0);
}

async fn wait_until_async<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..50 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[test]
fn statement_rate_is_per_identity_in_both_protocols_and_reloads_live() {
    let env = env();
    env.rt.block_on(async {
        let s1 = env.connect("alice@contoso.com").await.unwrap();
        let s2 = env.connect("alice@contoso.com").await.unwrap();
        // A burst of 4 shared by alice's two sessions, then 53400.
        let mut ok = 0;
        let mut limited = None;
        for i in 0..8 {
            let c = if i % 2 == 0 { &s1 } else { &s2 };
            let r = if i % 3 == 0 {
                c.simple_query("SELECT count(*) FROM orders")
                    .await
                    .map(|_| ())
            } else {
                c.query("SELECT count(*) FROM orders WHERE qty > $1", &[&i])
                    .await
                    .map(|_| ())
            };
            match r {
                Ok(()) => ok += 1,
                Err(e) => {
                    limited = Some(e);
                    break;
                }
            }
        }
        let e = limited.expect("no statement was rate-limited");
        assert_eq!(code(&e), Some("53400"), "{e}");
        assert!((3..=5).contains(&ok), "{ok} statements before the limit");
        let message = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert!(message.contains("statement rate limit"), "{message}");
        // Bob has his own bucket.
        let bob = env.connect("bob@contoso.com").await.unwrap();
        bob.simple_query("SELECT 1").await.unwrap();
        // The session stays usable once the bucket refills (2/s).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        s1.simple_query("SELECT 1").await.unwrap();
        // A rate-limited statement inside a transaction aborts it, like any error.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        s1.batch_execute("BEGIN").await.unwrap();
        let mut hit = false;
        for _ in 0..8 {
            if let Err(e) = s1.simple_query("SELECT 1").await {
                assert!(matches!(code(&e), Some("53400")), "{e}");
                hit = true;
                break;
            }
        }
        assert!(hit);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let err = s1.simple_query("SELECT 1").await.unwrap_err();
        assert_eq!(code(&err), Some("25P02"), "{err}");
        tokio::time::sleep(Duration::from_millis(600)).await;
        s1.batch_execute("ROLLBACK").await.unwrap();
    });
    assert!(env.metric_line("pgward_policy_decisions_total{verdict=\"allow\"}") >= 4.0);

    // SIGHUP: new limits apply without dropping sessions.
    env.rt.block_on(async {
        let kept = env.connect("carol@contoso.com").await.unwrap();
        let config = env.pgward.dir().join("pgward.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace(
                "connections_per_identity = 2",
                "connections_per_identity = 3",
            )
            .replace("statements_per_second = 2", "statements_per_second = 1000")
            .replace("statement_burst = 4", "statement_burst = 1000"),
        )
        .unwrap();
        env.pgward.signal(SIGHUP);
        assert!(wait_until_async(|| async { env.pgward.log().contains("limits reloaded") }).await);
        let _c2 = env.connect("carol@contoso.com").await.unwrap();
        let _c3 = env.connect("carol@contoso.com").await.unwrap();
        assert_eq!(
            code(&env.connect("carol@contoso.com").await.err().unwrap()),
            Some("53300")
        );
        for _ in 0..50 {
            kept.simple_query("SELECT 1").await.unwrap();
        }
    });
    // A bad [limits] on reload is refused and the old limits stay.
    let config = env.pgward.dir().join("pgward.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("statements_per_second = 1000", "statements_per_second = -5"),
    )
    .unwrap();
    env.pgward.signal(SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || env
        .pgward
        .log()
        .contains("not reloaded; keeping the previous limits")));
}

const SIGHUP: i32 = 1;
