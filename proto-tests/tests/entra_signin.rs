//! Signing in with Entra access tokens, end to end: the local Entra stand-in
//! (pgward_devkit::entra_issuer::DevIssuer) mints real RS256 tokens, pgward validates them, and
//! psql, psycopg and tokio-postgres present them as the password. Every refusal is
//! 28000 with a generic message; the exact reason is in pgward's log and metrics.

use std::time::Duration;

use pgward_devkit::entra_issuer::{DevIssuer, Forgery, TokenSpec};
use pgward_proto_tests::*;

const TENANT: &str = "7a3c1f0e-5b2d-4c8e-9f61-2d4b8e0c1a97";
const OTHER_TENANT: &str = "11111111-2222-4333-8444-555555555555";

struct Env {
    // Field order is drop order: pgward before the issuer and runtime it talks to.
    pgward: Pgward,
    _db: Database,
    issuer: DevIssuer,
    _rt: tokio::runtime::Runtime,
}

fn env(opts: PgwardOptions, entra_extra: &str) -> Env {
    env_with(opts, entra_extra, |_| {})
}

/// `env`, with the issuer set up by `prepare` before pgward first reads it.
fn env_with(opts: PgwardOptions, entra_extra: &str, prepare: impl FnOnce(&DevIssuer)) -> Env {
    let (rt, issuer) = start_issuer(TENANT, 1);
    prepare(&issuer);
    let entra = format!(
        "{}unknown_kid_min_interval_secs = 1\n{entra_extra}",
        entra_section(TENANT, &issuer)
    );
    let db = Database::start();
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            entra: Some(entra),
            ..opts
        },
    );
    Env {
        pgward,
        _db: db,
        issuer,
        _rt: rt,
    }
}

impl Env {
    fn conn(&self, user: &str, sslmode: &str) -> String {
        self.pgward
            .conn("app", sslmode)
            .replace("user=alice", &format!("user={user}"))
    }

    /// psql with `token` as the password; Ok(stdout) or Err(stderr).
    fn psql_as(&self, user: &str, token: &str, sslmode: &str) -> Result<String, String> {
        let out = std::process::Command::new("psql")
            .arg(self.conn(user, sslmode))
            .args(["-X", "-At", "-c", "SELECT current_user"])
            .env("PGPASSWORD", token)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn mint(&self, spec: &TokenSpec) -> String {
        self.issuer.mint(spec).unwrap()
    }

    /// Asserts a generic 28000 refusal whose exact reason (`label`) reached the metrics
    /// and whose log line names `reason`, and that the token never reached the log.
    fn refused(&self, user: &str, token: &str, label: &str, reason: &str) {
        let before = self.auth_metric(label);
        let err = self
            .psql_as(user, token, "verify-full")
            .expect_err("token was accepted");
        assert!(
            err.contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{label}: {err}"
        );
        assert!(
            wait_until(Duration::from_secs(5), || self.auth_metric(label) > before),
            "{label} not counted:\n{}",
            self.pgward.admin_get("/metrics").unwrap().1
        );
        let log = self.pgward.log();
        assert!(
            log.contains(reason),
            "{label}: reason {reason:?} not logged:\n{log}"
        );
        if token.len() > 20 {
            assert!(!log.contains(token), "token leaked into the log");
            let signature = token.rsplit('.').next().unwrap_or(token);
            if signature.len() > 20 {
                assert!(!log.contains(signature), "signature leaked into the log");
            }
        }
    }

    fn auth_metric(&self, label: &str) -> f64 {
        let (_, body) = self.pgward.admin_get("/metrics").unwrap();
        let key = format!("pgward_auth_total{{result=\"{label}\"}}");
        body.lines()
            .find(|l| l.starts_with(&key))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

#[test]
fn valid_tokens_for_people_service_principals_and_managed_identities() {
    let env = env(PgwardOptions::default(), "");
    let alice = TokenSpec::user("alice@contoso.com");
    assert_eq!(
        env.psql_as("alice@contoso.com", &env.mint(&alice), "verify-full")
            .unwrap(),
        PROXY_ROLE
    );
    // UPNs compare case-insensitively; v1 tokens (sts-style issuer, aud with a slash) work.
    assert!(env
        .psql_as(
            "Alice@Contoso.com",
            &env.mint(&alice.clone().v1()),
            "verify-full"
        )
        .is_ok());
    // The object id is always a valid user name.
    assert!(env
        .psql_as(&alice.effective_oid(), &env.mint(&alice), "verify-full")
        .is_ok());
    let mi = TokenSpec::managed_identity("airflow-prod");
    assert!(env
        .psql_as("airflow-prod", &env.mint(&mi), "verify-full")
        .is_ok());
    let sp = TokenSpec::service_principal("3f1c2e4d-0000-4000-8000-00000000a11c");
    assert!(env
        .psql_as(&sp.effective_oid(), &env.mint(&sp), "verify-full")
        .is_ok());
    assert!(env.auth_metric("ok") >= 5.0);
}

#[test]
fn every_bad_token_is_refused_with_28000_and_its_exact_reason_logged() {
    // Many failures from one address in a row: lift the throttle for this test (the
    // throttle has its own test below).
    let env = env(
        PgwardOptions {
            listen_extra: vec!["auth_failures_before_delay = 1000".into()],
            ..Default::default()
        },
        "",
    );
    let user = "alice@contoso.com";
    let spec = TokenSpec::user(user);

    let mut expired = spec.clone();
    expired.lifetime_secs = -600;
    env.refused(user, &env.mint(&expired), "expired", "token expired at");

    let mut early = spec.clone();
    early.not_before_secs = 600;
    early.lifetime_secs = 3600;
    env.refused(
        user,
        &env.mint(&early),
        "not_yet_valid",
        "token not valid before",
    );

    let mut aud = spec.clone();
    aud.aud = Some("https://management.azure.com".into());
    env.refused(user, &env.mint(&aud), "wrong_audience", "wrong audience");

    let mut iss = spec.clone();
    iss.iss = Some("https://evil.example/issuer/v2.0".into());
    env.refused(user, &env.mint(&iss), "wrong_issuer", "wrong issuer");

    let mut tid = spec.clone();
    tid.tid = Some(OTHER_TENANT.into());
    env.refused(user, &env.mint(&tid), "wrong_tenant", "wrong tenant");

    env.refused(
        user,
        &env.issuer.forge(&spec, Forgery::PayloadEdited).unwrap(),
        "bad_signature",
        "bad signature",
    );
    env.refused(
        user,
        &env.issuer.forge(&spec, Forgery::SignatureAltered).unwrap(),
        "bad_signature",
        "bad signature",
    );
    env.refused(
        user,
        &env.issuer.forge(&spec, Forgery::AlgNone).unwrap(),
        "unsupported_alg",
        "only RS256",
    );
    env.refused(
        user,
        &env.issuer
            .forge(&spec, Forgery::Hs256WithPublicKeyPem)
            .unwrap(),
        "unsupported_alg",
        "only RS256",
    );
    let good = env.mint(&spec);
    env.refused(
        user,
        &good[..good.len() / 2],
        "malformed",
        "malformed token",
    );
    let garbage: String = (0..64 * 1024 - 64)
        .map(|i| (b'A' + (i % 26) as u8) as char)
        .collect();
    env.refused(user, &garbage, "malformed", "malformed token");
    // Someone else's valid token under alice's name.
    env.refused(
        user,
        &env.mint(&TokenSpec::user("mallory@contoso.com")),
        "user_name_not_bound",
        "is not bound to the token",
    );

    // Database names can't be probed without signing in: an unknown database with a
    // bad token is a sign-in failure, not 3D000.
    let out = std::process::Command::new("psql")
        .arg(
            env.conn(user, "verify-full")
                .replace("dbname=app", "dbname=secret_db"),
        )
        .args(["-X", "-c", "SELECT 1"])
        .env(
            "PGPASSWORD",
            env.mint(&TokenSpec::user("mallory@contoso.com")),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("password authentication failed") && !err.contains("does not exist"),
        "{err}"
    );

    // A password packet over the 64 KiB bound is a protocol violation, not a token.
    let huge = "x".repeat(70 * 1024);
    let err = env.psql_as(user, &huge, "verify-full").unwrap_err();
    assert!(err.contains("invalid password packet"), "{err}");
}

#[test]
fn unknown_signing_key_is_accepted_once_the_issuer_publishes_it() {
    let env = env(PgwardOptions::default(), "");
    let user = "alice@contoso.com";
    let (token, kid) = env
        .issuer
        .mint_with_unpublished_kid(&TokenSpec::user(user))
        .unwrap();
    env.refused(user, &token, "unknown_kid", &kid);
    env.issuer.publish_pending();
    // unknown_kid_min_interval_secs = 1 in this config: the next unknown kid refetches.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        env.psql_as(user, &token, "verify-full").is_ok(),
        "{}",
        env.pgward.log()
    );
    // Rotation: a token signed by the new key is accepted without a restart.
    env.issuer.rotate(false).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert!(env
        .psql_as(user, &env.mint(&TokenSpec::user(user)), "verify-full")
        .is_ok());
}

#[test]
fn tokens_are_never_taken_over_plaintext() {
    let env = env(
        PgwardOptions {
            allow_plaintext: true,
            ..Default::default()
        },
        "",
    );
    let token = env.mint(&TokenSpec::user("alice@contoso.com"));
    let err = env
        .psql_as("alice@contoso.com", &token, "disable")
        .unwrap_err();
    assert!(err.contains("only over an encrypted connection"), "{err}");
    assert!(env.auth_metric("not_encrypted") >= 1.0);
    assert!(env.psql_as("alice@contoso.com", &token, "require").is_ok());
}

#[test]
fn repeated_failures_from_one_address_are_slowed_down() {
    let env = env(PgwardOptions::default(), "");
    let user = "alice@contoso.com";
    let bad = env.mint(&TokenSpec::user("mallory@contoso.com"));
    let mut timings = Vec::new();
    for _ in 0..6 {
        let started = std::time::Instant::now();
        assert!(env.psql_as(user, &bad, "require").is_err());
        timings.push(started.elapsed());
    }
    assert!(timings[5] >= Duration::from_millis(400), "{timings:?}");
    assert!(timings[5] > timings[0], "{timings:?}");
    // A success clears the slate.
    assert!(env
        .psql_as(user, &env.mint(&TokenSpec::user(user)), "require")
        .is_ok());
}

#[test]
fn a_session_ends_with_its_token() {
    let env = env(PgwardOptions::default(), "");
    let user = "alice@contoso.com";
    let mut short = TokenSpec::user(user);
    short.lifetime_secs = 3;
    // psycopg over TLS: the idle session is closed at expiry with FATAL 28000, and a
    // busy one finishes its statement, then ends.
    let out = run_python(
        "token_expiry.py",
        &[
            ("PGWARD_DSN", env.conn(user, "verify-full")),
            ("PGWARD_TOKEN_IDLE", env.mint(&short)),
            ("PGWARD_TOKEN_BUSY", env.mint(&short)),
            ("PGWARD_TOKEN_LONG", env.mint(&TokenSpec::user(user))),
        ],
    );
    assert!(out.contains("all expiry checks passed"), "{out}");
    assert!(env.pgward.log().contains("token expired"));
}

#[test]
fn tokio_postgres_signs_in_with_a_token_over_tls() {
    let env = env(PgwardOptions::default(), "");
    let user = "svc-reporting";
    let tls = pgtls::trusting(env.pgward.ca.as_ref().unwrap());
    let good = env.mint(&TokenSpec::managed_identity(user));
    let mut expired = TokenSpec::managed_identity(user);
    expired.lifetime_secs = -3600;
    let expired = env.mint(&expired);
    let conn = |token: &str| {
        format!(
            "host=127.0.0.1 port={} dbname=app user={user} password={token} sslmode=require",
            env.pgward.port
        )
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&conn(&good), tls.clone())
            .await
            .unwrap();
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT $1::text", &[&"hello"])
            .await
            .unwrap();
        assert_eq!(row.get::<_, &str>(0), "hello");
        let err = tokio_postgres::connect(&conn(&expired), tls.clone())
            .await
            .err()
            .expect("expired token accepted");
        assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");
    });
}

/// A token exactly as Azure issues it: a v1 token's `iss` is the v1 discovery document's
/// issuer, on another host than the authority (here a sovereign cloud's
/// `https://sts.chinacloudapi.cn/{tid}/` behind an authority on 127.0.0.1). psql signs in
/// with it; the same token claiming the authority's own host, or the public cloud's
/// sts.windows.net, is refused.
#[test]
fn azure_shaped_v1_tokens_with_the_issuer_from_discovery() {
    let opts = PgwardOptions {
        listen_extra: vec!["auth_failures_before_delay = 1000".into()],
        ..Default::default()
    };
    let env = env_with(opts, "", |iss| {
        iss.set_v1_issuer(Some("https://sts.chinacloudapi.cn/{tenantid}/"))
    });
    let alice = TokenSpec::user("alice@contoso.com").v1();
    // (The stand-in's v1 tokens carry its v1 issuer, as Azure's do.)
    assert_eq!(
        env.issuer.issuer_v1(TENANT),
        format!("https://sts.chinacloudapi.cn/{TENANT}/")
    );
    let token = env.mint(&alice);
    assert_eq!(
        env.psql_as("alice@contoso.com", &token, "verify-full")
            .unwrap(),
        PROXY_ROLE
    );
    for iss in [
        format!("{}/{TENANT}/", env.issuer.authority()),
        format!("https://sts.windows.net/{TENANT}/"),
        format!("https://sts.chinacloudapi.cn/{OTHER_TENANT}/"),
    ] {
        let mut spec = alice.clone();
        spec.iss = Some(iss);
        env.refused(
            "alice@contoso.com",
            &env.mint(&spec),
            "wrong_issuer",
            "wrong issuer",
        );
    }
}

/// Discovery unreachable from the start: /readyz says why, and every sign-in is refused
/// with 28000, the reason in the audit record; once discovery answers, sign-in works.
#[test]
fn discovery_unreachable_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let env = env_with(
        PgwardOptions {
            wait_ready: false,
            extra_toml: format!("[audit]\nfile = \"{}\"\n", audit_path.display()),
            ..Default::default()
        },
        "",
        |iss| iss.set_discovery_available(false),
    );
    let (status, body) = env.pgward.admin_get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("openid-configuration"), "{body}");
    let token = env.mint(&TokenSpec::user("alice@contoso.com"));
    env.refused(
        "alice@contoso.com",
        &token,
        "keys_unavailable",
        "signing keys unavailable",
    );
    let text = std::fs::read_to_string(&audit_path).unwrap();
    let failed: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["event"] == "auth_failed")
        .collect();
    assert!(
        failed.iter().any(|r| r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("openid-configuration"))),
        "{failed:?}"
    );
    assert!(!text.contains(&token), "token in the audit log");

    // The issuer comes back: the background retry (5 s after the failed start) loads it.
    env.issuer.set_discovery_available(true);
    assert!(wait_until(Duration::from_secs(20), || env
        .pgward
        .admin_get("/readyz")
        .is_some_and(|(s, _)| s == 200)));
    assert!(env
        .psql_as("alice@contoso.com", &token, "verify-full")
        .is_ok());
}
