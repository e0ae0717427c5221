//! TokenSource against the local identity stand-in (crates/devkit): every credential
//! type that talks HTTP, with rotation, outages and the bounded wait. Every request goes
//! to 127.0.0.1 (the configs always set the endpoint / authority overrides).

// Test code: a failed step should panic with its message.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pgward_credentials::{CredentialConfig, TokenSource, POSTGRES_SCOPE};
use pgward_devkit::azure_identity::{Endpoint, Expect, IdentityStandIn, Outage};

/// A token living 303 s is refreshed about 5 s after it is fetched (5 min before expiry).
const SHORT: Duration = Duration::from_secs(303);
const HOUR: Duration = Duration::from_secs(3600);

fn cfg(text: &str) -> CredentialConfig {
    toml::from_str(text).unwrap()
}

fn imds(s: &IdentityStandIn) -> CredentialConfig {
    cfg(&format!(
        "type = \"managed-identity\"\nuser = \"pgward\"\nclient_id = \"11111111-2222-3333-4444-555555555555\"\nendpoint = \"{}\"",
        s.imds_url()
    ))
}

async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_style_token_is_cached_and_rotated() {
    let s = IdentityStandIn::start(Expect::default(), "token-one", SHORT).unwrap();
    let src = TokenSource::new("main", &imds(&s), POSTGRES_SCOPE).unwrap();
    src.start();
    assert_eq!(src.current().await.unwrap().expose(), "token-one");
    // The user-assigned id went along.
    let q = s.last_query();
    assert!(
        q.iter()
            .any(|(k, v)| k == "client_id" && v == "11111111-2222-3333-4444-555555555555"),
        "{q:?}"
    );
    // Cached: many callers, no more requests.
    let before = s.requests(Endpoint::Imds);
    for _ in 0..50 {
        src.current().await.unwrap();
    }
    assert_eq!(s.requests(Endpoint::Imds), before);
    // Rotation is picked up in the background.
    s.set_token("token-two", HOUR);
    let start = Instant::now();
    loop {
        if src.current().await.unwrap().expose() == "token-two" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "rotation not followed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = src.health();
    assert!(h.ready && h.last_error.is_none());
    assert!(h.refreshes_ok >= 2, "{h:?}");
    assert!(h.seconds_until_expiry().unwrap() > 3000.0);
    assert!(!format!("{src:?} {h:?}").contains("token-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_while_valid_keeps_serving_the_cached_token() {
    let s = IdentityStandIn::start(Expect::default(), "still-good", SHORT).unwrap();
    let src = TokenSource::new("main", &imds(&s), POSTGRES_SCOPE).unwrap();
    assert!(src.wait_ready(Duration::from_secs(5)).await);
    s.set_outage(Outage::Error500);
    // The refresh (about 5 s in) fails and is retried; callers never notice or wait.
    wait_for("a failed refresh", Duration::from_secs(60), || {
        src.health().refreshes_failed > 0
    })
    .await;
    let t = Instant::now();
    assert_eq!(src.current().await.unwrap().expose(), "still-good");
    assert!(t.elapsed() < Duration::from_millis(50));
    let h = src.health();
    assert!(h.ready, "{h:?}");
    assert!(h.last_error.as_deref().unwrap_or_default().contains("500") || h.last_error.is_some());
    // Back up: the next retry succeeds and clears the error.
    s.set_outage(Outage::None);
    s.set_token("after-outage", HOUR);
    wait_for("recovery", Duration::from_secs(60), || {
        src.health().last_error.is_none()
    })
    .await;
    assert_eq!(src.current().await.unwrap().expose(), "after-outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_fails_fast() {
    let s = IdentityStandIn::start(Expect::default(), "never", HOUR).unwrap();
    s.set_outage(Outage::Refuse);
    let src = TokenSource::new("main", &imds(&s), POSTGRES_SCOPE)
        .unwrap()
        .with_first_wait(Duration::from_secs(2));
    let t = Instant::now();
    let e = src.current().await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(!src.health().ready);
    // Once an attempt has failed, later callers get the error at once.
    wait_for("a failed attempt", Duration::from_secs(40), || {
        src.health().refreshes_failed > 0
    })
    .await;
    let t = Instant::now();
    let e2 = src.current().await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    eprintln!("first: {e}\nlater: {e2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_service_style_sends_the_identity_header() {
    let s = IdentityStandIn::start(Expect::default(), "app-service-token", HOUR).unwrap();
    let good = cfg(&format!(
        "type = \"managed-identity\"\nuser = \"pgward\"\nendpoint = \"{}\"\nheader = \"{}\"",
        s.app_service_url(),
        s.expect().identity_header
    ));
    let src = TokenSource::new("main", &good, POSTGRES_SCOPE).unwrap();
    assert_eq!(src.current().await.unwrap().expose(), "app-service-token");
    assert_eq!(s.issued(Endpoint::AppService), 1);
    let bad = cfg(&format!(
        "type = \"managed-identity\"\nuser = \"pgward\"\nendpoint = \"{}\"\nheader = \"wrong-header\"",
        s.app_service_url()
    ));
    let src = TokenSource::new("main", &bad, POSTGRES_SCOPE).unwrap();
    let e = src.current().await.unwrap_err().to_string();
    assert!(!e.contains("wrong-header"), "{e}");
    assert!(s
        .rejections()
        .iter()
        .any(|r| r.contains("X-IDENTITY-HEADER")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_and_workload_identity_at_a_local_authority() {
    let s = IdentityStandIn::start(Expect::default(), "entra-token", HOUR).unwrap();
    let e = s.expect().clone();
    let cs = cfg(&format!(
        "type = \"client-secret\"\nuser = \"pgward\"\ntenant_id = \"{}\"\nclient_id = \"{}\"\nsecret = \"{}\"\nauthority_host = \"{}\"",
        e.tenant_id, e.client_id, e.client_secret, s.authority()
    ));
    let src = TokenSource::new("main", &cs, POSTGRES_SCOPE).unwrap();
    assert_eq!(src.current().await.unwrap().expose(), "entra-token");

    let dir = tempfile_dir();
    let token_file = dir.join("azure-identity-token");
    std::fs::write(&token_file, &e.federated_token).unwrap();
    let wi = cfg(&format!(
        "type = \"workload-identity\"\nuser = \"pgward\"\ntenant_id = \"{}\"\nclient_id = \"{}\"\ntoken_file = \"{}\"\nauthority_host = \"{}\"",
        e.tenant_id,
        e.client_id,
        token_file.display(),
        s.authority()
    ));
    let src = TokenSource::new("main", &wi, POSTGRES_SCOPE).unwrap();
    assert_eq!(src.current().await.unwrap().expose(), "entra-token");
    assert_eq!(s.issued(Endpoint::Entra), 2, "{:?}", s.rejections());

    // A wrong secret is refused by the endpoint and never shows in the error.
    let bad = cfg(&format!(
        "type = \"client-secret\"\nuser = \"pgward\"\ntenant_id = \"{}\"\nclient_id = \"{}\"\nsecret = \"not-the-secret\"\nauthority_host = \"{}\"",
        e.tenant_id, e.client_id, s.authority()
    ));
    let src = TokenSource::new("main", &bad, POSTGRES_SCOPE).unwrap();
    let err = src.current().await.unwrap_err().to_string();
    assert!(!err.contains("not-the-secret"), "{err}");
    assert!(src.health().last_error.is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "pgward-credentials-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
