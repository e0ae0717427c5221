//! Groups overage resolved through Microsoft Graph with pgward's own Azure credential:
//! a token too big to carry its groups (`_claim_names`) still gets the roles its groups
//! grant, because pgward asks Graph (`getMemberObjects`) with a token from
//! `[entra.graph_credential]` (client secret against the local Entra stand-in). Graph
//! itself is a small stand-in here that checks the bearer token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgward_devkit::azure_identity::{Expect, IdentityStandIn};
use pgward_devkit::entra_issuer::TokenSpec;
use pgward_proto_tests::*;

const TENANT: &str = "6b1f2e3d-4c5b-4a69-8778-9a0b1c2d3e4f";
const ALICE_OID: &str = "a11ce000-0000-4000-8000-0000000000a1";
const BOB_OID: &str = "b0b00000-0000-4000-8000-0000000000b0";
const GRAPH_TOKEN: &str = "graph-token-from-the-identity-stand-in";
const FINANCE_GROUP: &str = "f1a4ce00-0000-4000-8000-00000000f1a4";

const POLICY: &str = r#"
[[roles]]
name = "finance"
members = { groups = ["f1a4ce00-0000-4000-8000-00000000f1a4"] }
allow = [ { actions = ["select"], objects = ["public.orders"] } ]
"#;

/// A Microsoft Graph stand-in: `POST /v1.0/directoryObjects/{oid}/getMemberObjects`
/// with the expected bearer token answers alice's groups (bob has none); anything else is
/// 403. Counts the calls it answered.
fn graph_stand_in(calls: Arc<AtomicUsize>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut auth = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap_or((&line, ""));
                match name.to_ascii_lowercase().as_str() {
                    "authorization" => auth = value.trim().to_owned(),
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let path_for =
                |oid: &str| format!("POST /v1.0/directoryObjects/{oid}/getMemberObjects ");
            let authorized = auth == format!("Bearer {GRAPH_TOKEN}");
            let (status, answer) = if !authorized {
                (
                    "403 Forbidden",
                    r#"{"error":{"code":"Authorization_RequestDenied"}}"#.to_owned(),
                )
            } else if request_line.starts_with(&path_for(ALICE_OID)) {
                calls.fetch_add(1, Ordering::SeqCst);
                ("200 OK", format!(r#"{{"value":["{FINANCE_GROUP}"]}}"#))
            } else if request_line.starts_with(&path_for(BOB_OID)) {
                calls.fetch_add(1, Ordering::SeqCst);
                ("200 OK", r#"{"value":[]}"#.to_owned())
            } else {
                ("404 Not Found", "{}".to_owned())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    port
}

#[test]
fn overage_groups_come_from_graph_with_pgwards_own_credential() {
    let (_rt, issuer) = start_issuer(TENANT, 1);
    let calls = Arc::new(AtomicUsize::new(0));
    let graph_port = graph_stand_in(calls.clone());
    let graph_endpoint = format!("http://127.0.0.1:{graph_port}");
    let expect = Expect {
        resource: graph_endpoint.clone(),
        ..Expect::default()
    };
    let identity =
        IdentityStandIn::start(expect.clone(), GRAPH_TOKEN, Duration::from_secs(3600)).unwrap();
    let db = Database::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let entra = format!(
        r#"[entra]
tenant_id = "{TENANT}"
authority = "{authority}"
groups_overage = "graph"
graph_endpoint = "{graph_endpoint}"
[entra.graph_credential]
type = "client-secret"
tenant_id = "{tenant}"
client_id = "{client}"
secret_env = "PGWARD_TEST_GRAPH_SECRET"
authority_host = "{host}"
"#,
        authority = issuer.authority(),
        tenant = expect.tenant_id,
        client = expect.client_id,
        host = identity.authority(),
    );
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            entra: Some(entra),
            policy: Some(policy),
            env: vec![(
                "PGWARD_TEST_GRAPH_SECRET".into(),
                expect.client_secret.clone(),
            )],
            ..PgwardOptions::default()
        },
    );
    let run = |upn: &str, oid: &str| {
        let mut spec = TokenSpec::user(upn);
        spec.oid = Some(oid.to_owned());
        spec.groups_overage = true;
        let token = issuer.mint(&spec).unwrap();
        let out = std::process::Command::new("psql")
            .arg(
                pgward
                    .conn("app", "require")
                    .replace("user=alice", &format!("user={upn}")),
            )
            .args(["-X", "-At", "-c", "SELECT count(*) FROM orders"])
            .env("PGPASSWORD", &token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Alice's token names no groups; Graph says she is in finance, which may read orders.
    let (ok, stdout, stderr) = run("alice@contoso.com", ALICE_OID);
    assert!(ok, "{stderr}\n{}", pgward.log());
    assert_eq!(stdout, "100");
    // Bob signs in too, but Graph lists no groups for him: no role, default deny.
    let (ok, _, stderr) = run("bob@contoso.com", BOB_OID);
    assert!(!ok);
    assert!(stderr.contains("pgward policy denied"), "{stderr}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // pgward's Graph token came from its own credential; no secret reached the log.
    assert!(identity.issued(pgward_devkit::azure_identity::Endpoint::Entra) >= 1);
    let log = pgward.log();
    assert!(!log.contains(GRAPH_TOKEN) && !log.contains(&expect.client_secret));
}
