//! pgward signs in upstream with its own Azure identity (issue 5, credential half):
//! managed identity (IMDS style and App Service / Container Apps style), AKS workload
//! identity and a client secret, each against the local identity stand-in
//! (crates/devkit azure_identity) whose token is the upstream login role's password.
//! Every configuration points the credential at 127.0.0.1; nothing contacts IMDS.
//!
//! For each type: sign-in through pgward with psql; a rotation (new token issued, the
//! role's password changed) followed without a restart; an endpoint outage while the
//! token is valid fails no login; the tokens and secrets never reach pgward's log.

use std::io::Write;
use std::time::{Duration, Instant};

use pgward_devkit::azure_identity::{Endpoint, Expect, IdentityStandIn, Outage};
use pgward_proto_tests::{psql, psql_ok, raw, wait_until, Database, Pgward, PgwardOptions};

/// The upstream login role pgward's identity maps to.
const ROLE: &str = "pgward_identity";
/// 303 s: pgward refreshes about 5 s after each fetch (5 minutes before expiry).
const SHORT: Duration = Duration::from_secs(303);

/// A token shaped like an Entra access token (what goes into PGPASSWORD upstream).
fn token(tag: &str) -> String {
    format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJ0YWciOiJ{tag}{pid}In0.c2lnbmF0dXJlLXt{tag}Zm9yLXRlc3Rz",
        pid = std::process::id()
    )
}

fn database(first_token: &str) -> Database {
    let db = Database::start();
    db.sql(
        "postgres",
        &format!("SET password_encryption = 'scram-sha-256'; CREATE ROLE {ROLE} LOGIN PASSWORD '{first_token}'"),
    );
    db.sql(
        "app",
        &format!("GRANT SELECT ON orders TO {ROLE}; GRANT CONNECT ON DATABASE app TO {ROLE}"),
    );
    db
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Imds,
    AppService,
    Workload,
    ClientSecret,
}

/// The `[upstreams.credential]` body and extra environment for `kind`.
fn credential(
    kind: Kind,
    s: &IdentityStandIn,
    dir: &std::path::Path,
) -> (String, Vec<(String, String)>) {
    let e = s.expect();
    match kind {
        Kind::Imds => (
            format!(
                "type = \"managed-identity\"\nuser = \"{ROLE}\"\nobject_id = \"0b1f2c3d-0000-4000-8000-00000000000f\"\nendpoint = \"{}\"",
                s.imds_url()
            ),
            vec![],
        ),
        // What Container Apps / App Service inject; header_env names the variable and
        // endpoint repeats IDENTITY_ENDPOINT so that the request can go nowhere else.
        Kind::AppService => (
            format!(
                "type = \"managed-identity\"\nuser = \"{ROLE}\"\nendpoint = \"{}\"\nheader_env = \"IDENTITY_HEADER\"",
                s.app_service_url()
            ),
            vec![
                ("IDENTITY_ENDPOINT".into(), s.app_service_url()),
                ("IDENTITY_HEADER".into(), e.identity_header.clone()),
            ],
        ),
        // AKS: the webhook's variables, nothing but `user` (and the test authority) in the file.
        Kind::Workload => {
            let file = dir.join("azure-identity-token");
            std::fs::File::create(&file)
                .unwrap()
                .write_all(e.federated_token.as_bytes())
                .unwrap();
            (
                format!("type = \"workload-identity\"\nuser = \"{ROLE}\""),
                vec![
                    ("AZURE_TENANT_ID".into(), e.tenant_id.clone()),
                    ("AZURE_CLIENT_ID".into(), e.client_id.clone()),
                    ("AZURE_FEDERATED_TOKEN_FILE".into(), file.display().to_string()),
                    ("AZURE_AUTHORITY_HOST".into(), s.authority()),
                ],
            )
        }
        Kind::ClientSecret => (
            format!(
                "type = \"client-secret\"\nuser = \"{ROLE}\"\ntenant_id = \"{}\"\nclient_id = \"{}\"\nsecret_env = \"PGWARD_TEST_CLIENT_SECRET\"\nauthority_host = \"{}\"",
                e.tenant_id,
                e.client_id,
                s.authority()
            ),
            vec![("PGWARD_TEST_CLIENT_SECRET".into(), e.client_secret.clone())],
        ),
    }
}

fn endpoint(kind: Kind) -> Endpoint {
    match kind {
        Kind::Imds => Endpoint::Imds,
        Kind::AppService => Endpoint::AppService,
        Kind::Workload | Kind::ClientSecret => Endpoint::Entra,
    }
}

fn select(pgward: &Pgward) -> Result<String, String> {
    let out = psql(
        &pgward.conn("app", "require"),
        &["-At", "-c", "SELECT current_user, count(*) FROM orders"],
        None,
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn scenario(kind: Kind) {
    let first = token("first");
    let second = token("second");
    let standin = IdentityStandIn::start(Expect::default(), &first, SHORT).unwrap();
    let db = database(&first);
    let dir = tempfile::tempdir().unwrap();
    let (cred, env) = credential(kind, &standin, dir.path());
    let pgward = start_pgward(&db, cred, env.clone(), true);
    let pid = pgward.pid();

    // Sign-in with the identity's token.
    assert_eq!(select(&pgward).unwrap(), format!("{ROLE}|100"));
    assert!(
        standin.issued(endpoint(kind)) >= 1,
        "{:?}",
        standin.rejections()
    );
    assert!(
        standin.rejections().is_empty(),
        "{:?}",
        standin.rejections()
    );
    if let Kind::Imds = kind {
        let q = standin.last_query();
        assert!(
            q.iter()
                .any(|(k, v)| k == "object_id" && v == "0b1f2c3d-0000-4000-8000-00000000000f"),
            "{q:?}"
        );
    }
    assert!(pgward.metric("pgward_upstream_token_expiry_seconds") > 200.0);

    // Rotation: the identity platform issues a new token and the server accepts only it.
    let ok_before = pgward.metric("pgward_upstream_token_refreshes_total");
    standin.set_token(&second, SHORT);
    db.sql(
        "postgres",
        &format!("ALTER ROLE {ROLE} PASSWORD '{second}'"),
    );
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || select(&pgward).is_ok()),
        "rotation not followed:\n{}",
        pgward.log()
    );
    eprintln!(
        "{kind:?}: rotation followed {:?} after the password change",
        started.elapsed()
    );
    assert_eq!(pgward.pid(), pid, "pgward was not restarted");
    assert!(pgward.metric("pgward_upstream_token_refreshes_total") > ok_before);

    // Outage while the token is valid: refreshes fail, logins don't, /readyz stays 200.
    standin.set_outage(Outage::Error500);
    let seen = standin.requests(endpoint(kind));
    assert!(
        wait_until(Duration::from_secs(30), || standin.requests(endpoint(kind))
            > seen),
        "no refresh attempted during the outage"
    );
    // Every fetch now fails, so a login that needed one would fail: success proves the
    // cached token is used. The time bound is loose for loaded CI machines (logins take
    // about 0.1 s on an idle one).
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(select(&pgward).unwrap(), format!("{ROLE}|100"));
        eprintln!("{kind:?}: login during the outage took {:?}", t.elapsed());
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a login waited on the endpoint: {:?}",
            t.elapsed()
        );
    }
    assert_eq!(pgward.admin_get("/readyz").map(|r| r.0), Some(200));
    if !matches!(kind, Kind::Imds | Kind::AppService) {
        // (Managed identity retries inside one attempt for up to 30 s; Entra answers fail at once.)
        assert!(
            wait_until(Duration::from_secs(20), || {
                metric_with(
                    &pgward,
                    "pgward_upstream_token_refreshes_total",
                    "result=\"failed\"",
                ) > 0.0
            }),
            "failed refreshes not counted"
        );
    }
    standin.set_outage(Outage::None);

    // No token, secret or header in the log.
    let log = pgward.log();
    let e = standin.expect();
    for secret in [
        &first,
        &second,
        &e.client_secret,
        &e.federated_token,
        &e.identity_header,
    ] {
        assert!(
            !log.contains(secret.as_str()),
            "{kind:?}: a secret is in the log:\n{log}"
        );
    }
    assert!(
        log.contains("obtained a new upstream access token"),
        "{log}"
    );
    drop(pgward);
    drop(env);
}

/// pgward with `credential` as its upstream credential and `env` in its environment;
/// `wait_ready: false` waits for /healthz only.
fn start_pgward(
    db: &Database,
    credential: String,
    env: Vec<(String, String)>,
    wait_ready: bool,
) -> Pgward {
    Pgward::start(
        db,
        PgwardOptions {
            credential: Some(credential),
            env,
            wait_ready,
            ..Default::default()
        },
    )
}

/// Starts a session as alice and expects it refused with 08001: how long that took (to
/// ReadyForQuery) and the ErrorResponse's body.
fn refused_startup(pgward: &Pgward) -> (Duration, Vec<u8>) {
    let t = Instant::now();
    let mut s = raw::connect(pgward.port);
    s.write_all(&raw::startup_packet(
        0,
        &[("user", "alice"), ("database", "app")],
    ))
    .unwrap();
    let msgs = raw::read_until_ready(&mut s);
    let elapsed = t.elapsed();
    let (_, err) = msgs
        .into_iter()
        .find(|m| m.0 == b'E')
        .expect("an ErrorResponse");
    assert_eq!(raw::sqlstate(&err), "08001");
    (elapsed, err)
}

fn metric_with(p: &Pgward, name: &str, label: &str) -> f64 {
    let (_, body) = p.admin_get("/metrics").expect("metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn managed_identity_imds_style() {
    scenario(Kind::Imds);
}

#[test]
fn managed_identity_app_service_style() {
    scenario(Kind::AppService);
}

#[test]
fn workload_identity() {
    scenario(Kind::Workload);
}

#[test]
fn client_secret() {
    scenario(Kind::ClientSecret);
}

/// No token can be had: clients get 08001 with a clear message, quickly, and /readyz
/// says why; once the endpoint answers, sign-in works without a restart.
#[test]
fn no_valid_token_is_08001_quickly() {
    let good = token("late");
    let standin = IdentityStandIn::start(Expect::default(), &good, SHORT).unwrap();
    standin.set_outage(Outage::Refuse);
    let db = database(&good);
    let dir = tempfile::tempdir().unwrap();
    let (cred, env) = credential(Kind::Imds, &standin, dir.path());
    let pgward = start_pgward(&db, cred, env, false);
    let (status, body) = pgward.admin_get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("upstream \"main\": no valid managed-identity token"),
        "{body}"
    );

    let mut worst = Duration::ZERO;
    for _ in 0..3 {
        let (elapsed, err) = refused_startup(&pgward);
        worst = worst.max(elapsed);
        let text = String::from_utf8_lossy(&err);
        assert!(
            text.contains("pgward could not obtain its credential for upstream \"main\""),
            "{text}"
        );
        // The 3 s first-fetch bound plus slack for a loaded machine.
        assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    }
    let t = Instant::now();
    let out = psql(&pgward.conn("app", "require"), &["-c", "SELECT 1"], None);
    assert!(!out.status.success());
    eprintln!(
        "08001 after at most {worst:?} (raw), psql failed after {:?}: {}",
        t.elapsed(),
        String::from_utf8_lossy(&out.stderr).trim()
    );

    // The endpoint comes back: pgward picks up a token and serves, no restart.
    standin.set_outage(Outage::None);
    assert!(
        wait_until(Duration::from_secs(90), || matches!(
            pgward.admin_get("/readyz"),
            Some((200, _))
        )),
        "never became ready:\n{}",
        pgward.log()
    );
    assert_eq!(
        psql_ok(
            &pgward.conn("app", "require"),
            &["-At", "-c", "SELECT current_user"]
        )
        .trim(),
        ROLE
    );
    assert!(!pgward.log().contains(&good));
}

/// azure-cli on a developer's laptop: pgward runs `az account get-access-token`; a fake
/// `az` on pgward's PATH answers like Azure CLI 2.54+.
#[test]
fn azure_cli_signs_in_through_pgward() {
    use std::os::unix::fs::PermissionsExt;
    let cli_token = token("cli");
    let db = database(&cli_token);
    let dir = tempfile::tempdir().unwrap();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let calls = dir.path().join("calls");
    let az = dir.path().join("az");
    std::fs::write(
        &az,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nprintf '%s' '{{\"accessToken\": \"{cli_token}\", \"expiresOn\": \"2030-01-01 00:00:00.000000\", \"expires_on\": {expires}, \"subscription\": \"s\", \"tenant\": \"t\", \"tokenType\": \"Bearer\"}}'\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap()
    );
    let pgward = start_pgward(
        &db,
        format!("type = \"azure-cli\"\nuser = \"{ROLE}\""),
        vec![("PATH".into(), path)],
        true,
    );
    assert_eq!(select(&pgward).unwrap(), format!("{ROLE}|100"));
    let args = std::fs::read_to_string(&calls).unwrap();
    assert!(
        args.contains("account get-access-token -o json --scope https://ossrdbms-aad.database.windows.net/.default"),
        "{args}"
    );
    assert!(!pgward.log().contains(&cli_token));
}

/// Once a fetch has failed and no token is cached, sessions are refused at once (no
/// first-fetch wait): here the Entra endpoint drops every connection.
#[test]
fn failed_fetch_without_token_is_08001_at_once() {
    let standin = IdentityStandIn::start(Expect::default(), &token("never"), SHORT).unwrap();
    standin.set_outage(Outage::Refuse);
    let db = database("not-a-token");
    let dir = tempfile::tempdir().unwrap();
    let (cred, env) = credential(Kind::ClientSecret, &standin, dir.path());
    let pgward = start_pgward(&db, cred, env, false);
    assert!(wait_until(Duration::from_secs(20), || {
        metric_with(
            &pgward,
            "pgward_upstream_token_refreshes_total",
            "result=\"failed\"",
        ) > 0.0
    }));
    let (status, body) = pgward.admin_get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no valid client-secret token"), "{body}");
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        worst = worst.max(refused_startup(&pgward).0);
    }
    eprintln!("08001 after a failed fetch: at most {worst:?}");
    assert!(worst < Duration::from_secs(2), "{worst:?}");
    let log = pgward.log();
    assert!(
        log.contains("could not obtain the upstream access token"),
        "{log}"
    );
    assert!(!log.contains(&standin.expect().client_secret));
}
