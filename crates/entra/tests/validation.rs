//! The token matrix against a real DevIssuer (pgward_devkit::entra_issuer) over loopback HTTP.

// Test helpers outside #[test] fns are not covered by clippy.toml's allow-unwrap-in-tests;
// the workspace policy (tests may unwrap) applies to this whole file.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pgward_devkit::entra_issuer::{mint_remote, DevError, DevIssuer, Forgery, TokenSpec};
use pgward_entra::{
    AuthError, EntraConfig, GroupsOverage, IdentityKind, StartError, StaticGraphToken, Validator,
};

const TENANT: &str = "aaaaaaaa-1111-4222-8333-444444444444";
const OTHER_TENANT: &str = "bbbbbbbb-1111-4222-8333-444444444444";
const ALICE: &str = "alice@contoso.com";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn issuer() -> DevIssuer {
    DevIssuer::start(loopback(), TENANT).await.unwrap()
}

async fn validator_with(iss: &DevIssuer, edit: impl FnOnce(&mut EntraConfig)) -> Validator {
    let mut cfg = iss.config();
    edit(&mut cfg);
    let v = Validator::start(cfg, client()).await.unwrap();
    assert!(v.is_ready(), "not ready: {:?}", v.last_error());
    v
}

async fn setup() -> (DevIssuer, Validator) {
    let iss = issuer().await;
    let v = validator_with(&iss, |_| {}).await;
    (iss, v)
}

fn assert_no_token_in(err: &AuthError, token: &str) {
    let text = err.to_string();
    // (Tokens of a few characters trivially occur in any English sentence.)
    if token.len() >= 8 {
        assert!(!text.contains(token), "{text}");
    }
    if let Some((_, sig)) = token.rsplit_once('.') {
        if sig.len() >= 8 {
            assert!(!text.contains(sig), "signature in {text}");
            assert!(!text.contains(&sig[..8]), "signature prefix in {text}");
        }
    }
    let dbg = format!("{err:?}");
    assert!(token.len() < 8 || !dbg.contains(token), "{dbg}");
}

async fn refused(v: &Validator, token: &str, user: &str) -> AuthError {
    let err = v
        .validate(token, user)
        .await
        .expect_err("token must be refused");
    assert_no_token_in(&err, token);
    err
}

#[tokio::test]
async fn valid_user_tokens_v1_and_v2() {
    let (iss, v) = setup().await;
    for version in [1u8, 2] {
        let mut spec = TokenSpec::user(ALICE);
        spec.version = version;
        spec.groups = vec!["g1".into(), "g2".into()];
        spec.roles = vec!["Data.Read".into()];
        let tok = iss.mint(&spec).unwrap();
        let id = v.validate(&tok, ALICE).await.unwrap();
        assert_eq!(id.kind, IdentityKind::Person);
        assert_eq!(id.token_version, version);
        assert_eq!(id.upn.as_deref(), Some(ALICE));
        assert_eq!(id.oid, spec.effective_oid());
        assert_eq!(id.tid, TENANT);
        assert_eq!(id.groups, vec!["g1", "g2"]);
        assert_eq!(id.roles, vec!["Data.Read"]);
        assert!(id.appid.is_some());
        let left = id.session_remaining(SystemTime::now(), Duration::ZERO);
        assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));
    }
}

#[tokio::test]
async fn valid_service_principal_tokens_bind_by_oid() {
    let (iss, v) = setup().await;
    for version in [1u8, 2] {
        let mut spec = TokenSpec::service_principal("11111111-aaaa-4bbb-8ccc-000000000001");
        spec.version = version;
        spec.roles = vec!["Data.Write".into()];
        let tok = iss.mint(&spec).unwrap();
        let oid = spec.effective_oid();
        let id = v.validate(&tok, &oid.to_uppercase()).await.unwrap();
        assert_eq!(id.kind, IdentityKind::ServicePrincipal, "v{version}");
        assert_eq!(
            id.appid.as_deref(),
            Some("11111111-aaaa-4bbb-8ccc-000000000001")
        );
        assert_eq!(id.token_version, version);
        assert_eq!(id.roles, vec!["Data.Write"]);
        assert!(id.upn.is_none());
        // The app id is not one of the bindings.
        let err = refused(&v, &tok, "11111111-aaaa-4bbb-8ccc-000000000001").await;
        assert!(matches!(err, AuthError::UserNameNotBound { .. }), "{err}");
    }
}

#[tokio::test]
async fn valid_managed_identity_tokens_bind_by_name() {
    let (iss, v) = setup().await;
    for version in [1u8, 2] {
        let mut spec = TokenSpec::managed_identity("etl-runner");
        spec.version = version;
        let tok = iss.mint(&spec).unwrap();
        let id = v.validate(&tok, "etl-runner").await.unwrap();
        assert_eq!(id.kind, IdentityKind::ManagedIdentity);
        assert_eq!(id.mi_name.as_deref(), Some("etl-runner"));
        assert_eq!(id.token_version, version);
        v.validate(&tok, &spec.effective_oid()).await.unwrap();
        let err = refused(&v, &tok, "other-mi").await;
        assert!(matches!(err, AuthError::UserNameNotBound { .. }));
    }
}

#[tokio::test]
async fn expiry_and_not_before_with_clock_skew() {
    let (iss, v) = setup().await;
    let mint = |lifetime: i64, nbf: i64| {
        let mut s = TokenSpec::user(ALICE);
        s.lifetime_secs = lifetime;
        s.not_before_secs = nbf;
        iss.mint(&s).unwrap()
    };
    // Expired an hour ago.
    let err = refused(&v, &mint(-3600, -7200), ALICE).await;
    assert!(matches!(err, AuthError::Expired { .. }), "{err}");
    // Expired 30 s ago: inside the 60 s skew.
    v.validate(&mint(-30, -600), ALICE).await.unwrap();
    // Expired 90 s ago: outside it.
    let err = refused(&v, &mint(-90, -600), ALICE).await;
    assert!(matches!(err, AuthError::Expired { skew: 60, .. }), "{err}");
    // Not valid for another hour.
    let err = refused(&v, &mint(7200, 3600), ALICE).await;
    assert!(matches!(err, AuthError::NotYetValid { .. }), "{err}");
    // nbf 30 s ahead: inside the skew; 90 s ahead: outside.
    v.validate(&mint(3600, 30), ALICE).await.unwrap();
    let err = refused(&v, &mint(3600, 90), ALICE).await;
    assert!(matches!(err, AuthError::NotYetValid { .. }), "{err}");
    // A zero skew makes the 30 s cases fail too.
    let strict = validator_with(&iss, |c| c.clock_skew_secs = 0).await;
    assert!(matches!(
        strict.validate(&mint(-30, -600), ALICE).await,
        Err(AuthError::Expired { .. })
    ));
    // exp is mandatory.
    let mut s = TokenSpec::user(ALICE);
    s.extra.insert("exp".into(), serde_json::Value::Null);
    let err = refused(&v, &iss.mint(&s).unwrap(), ALICE).await;
    assert!(matches!(err, AuthError::InvalidClaim("exp")), "{err}");
}

#[tokio::test]
async fn audience_rules() {
    let (iss, v) = setup().await;
    let with_aud = |aud: &str| {
        let mut s = TokenSpec::user(ALICE);
        s.aud = Some(aud.into());
        iss.mint(&s).unwrap()
    };
    v.validate(
        &with_aud("https://ossrdbms-aad.database.windows.net"),
        ALICE,
    )
    .await
    .unwrap();
    v.validate(
        &with_aud("https://ossrdbms-aad.database.windows.net/"),
        ALICE,
    )
    .await
    .unwrap();
    let err = refused(&v, &with_aud("https://management.azure.com/"), ALICE).await;
    assert!(matches!(err, AuthError::WrongAudience(_)), "{err}");
    assert!(err.to_string().contains("management.azure.com"));
    let err = refused(
        &v,
        &with_aud("https://ossrdbms-aad.database.windows.net.evil"),
        ALICE,
    )
    .await;
    assert!(matches!(err, AuthError::WrongAudience(_)), "{err}");
    // Configured audiences replace the default.
    let custom = validator_with(&iss, |c| c.audiences = vec!["api://pgward/".into()]).await;
    custom
        .validate(&with_aud("api://pgward"), ALICE)
        .await
        .unwrap();
    assert!(matches!(
        custom
            .validate(
                &with_aud("https://ossrdbms-aad.database.windows.net"),
                ALICE
            )
            .await,
        Err(AuthError::WrongAudience(_))
    ));
}

#[tokio::test]
async fn issuer_rules() {
    let (iss, v) = setup().await;
    let with_iss = |i: String| {
        let mut s = TokenSpec::user(ALICE);
        s.iss = Some(i);
        iss.mint(&s).unwrap()
    };
    // Both accepted forms.
    v.validate(&with_iss(iss.issuer_v2(TENANT)), ALICE)
        .await
        .unwrap();
    v.validate(&with_iss(iss.issuer_v1(TENANT)), ALICE)
        .await
        .unwrap();
    for bad in [
        format!("https://sts.windows.net/{TENANT}/"),
        format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
        format!("{}/{TENANT}/v2.0/", iss.authority()),
        format!("{}/{TENANT}", iss.authority()),
        iss.issuer_v2(OTHER_TENANT),
        iss.issuer_v2(&TENANT.to_uppercase()),
        iss.issuer_v2(TENANT).replace("v2.0", "V2.0"),
        "https://evil.example/".to_string(),
    ] {
        let err = refused(&v, &with_iss(bad.clone()), ALICE).await;
        assert!(matches!(err, AuthError::WrongIssuer(_)), "{bad}: {err}");
    }
}

#[tokio::test]
async fn tenant_rules() {
    let (iss, v) = setup().await;
    let mut s = TokenSpec::user(ALICE);
    s.tid = Some(OTHER_TENANT.into());
    let foreign = iss.mint(&s).unwrap();
    let err = refused(&v, &foreign, ALICE).await;
    assert!(matches!(err, AuthError::WrongTenant(_)), "{err}");
    // A guest tenant allowed by config; its issuer follows its tid.
    let multi = validator_with(&iss, |c| {
        c.allowed_tenants = Some(vec![TENANT.into(), OTHER_TENANT.into()])
    })
    .await;
    let id = multi.validate(&foreign, ALICE).await.unwrap();
    assert_eq!(id.tid, OTHER_TENANT);
    // But not with the home tenant's issuer.
    s.iss = Some(iss.issuer_v2(TENANT));
    let err = refused(&multi, &iss.mint(&s).unwrap(), ALICE).await;
    assert!(matches!(err, AuthError::WrongIssuer(_)), "{err}");
    // A token without tid.
    let mut s = TokenSpec::user(ALICE);
    s.extra.insert("tid".into(), serde_json::Value::Null);
    let err = refused(&v, &iss.mint(&s).unwrap(), ALICE).await;
    assert!(matches!(err, AuthError::MissingClaim("tid")), "{err}");
}

#[tokio::test]
async fn unknown_kid_then_same_kid_once_published() {
    let iss = issuer().await;
    let v = validator_with(&iss, |c| c.unknown_kid_min_interval_secs = 0).await;
    let (tok, kid) = iss
        .mint_with_unpublished_kid(&TokenSpec::user(ALICE))
        .unwrap();
    let err = refused(&v, &tok, ALICE).await;
    assert_eq!(err, AuthError::UnknownKid(pgward_entra::Shown::new(&kid)));
    iss.publish_pending();
    let id = v.validate(&tok, ALICE).await.unwrap();
    assert_eq!(id.upn.as_deref(), Some(ALICE));
}

#[tokio::test]
async fn unknown_kid_refetch_is_rate_limited() {
    let iss = issuer().await;
    let v = validator_with(&iss, |c| c.unknown_kid_min_interval_secs = 300).await;
    assert_eq!(iss.jwks_fetch_count(), 1);
    let (tok1, _) = iss
        .mint_with_unpublished_kid(&TokenSpec::user(ALICE))
        .unwrap();
    assert!(matches!(
        refused(&v, &tok1, ALICE).await,
        AuthError::UnknownKid(_)
    ));
    assert_eq!(
        iss.jwks_fetch_count(),
        2,
        "first unknown kid re-fetches at once"
    );
    // A second, different unknown kid within the interval: no fetch.
    iss.publish_pending();
    let (tok2, _) = iss
        .mint_with_unpublished_kid(&TokenSpec::user(ALICE))
        .unwrap();
    assert!(matches!(
        refused(&v, &tok2, ALICE).await,
        AuthError::UnknownKid(_)
    ));
    assert!(matches!(
        refused(&v, &tok1, ALICE).await,
        AuthError::UnknownKid(_)
    ));
    assert_eq!(iss.jwks_fetch_count(), 2, "rate limited");
    assert_eq!(v.jwks_fetch_count(), 2);
    // Known kids are unaffected, and a scheduled refresh picks the new key up.
    v.validate(&iss.mint(&TokenSpec::user(ALICE)).unwrap(), ALICE)
        .await
        .unwrap();
    assert!(v.refresh_now().await);
    v.validate(&tok1, ALICE).await.unwrap();
}

#[tokio::test]
async fn rotation_is_picked_up_without_restart() {
    let (iss, v) = setup().await;
    let old = iss.mint(&TokenSpec::user(ALICE)).unwrap();
    v.validate(&old, ALICE).await.unwrap();
    let new_kid = iss.rotate(false).unwrap();
    assert_eq!(iss.published_kids(), vec![new_kid.clone()]);
    let new = iss.mint(&TokenSpec::user(ALICE)).unwrap();
    // The unknown kid triggers a re-fetch that finds the rotated key.
    v.validate(&new, ALICE).await.unwrap();
    // The retired key is gone from the cache.
    assert!(matches!(
        refused(&v, &old, ALICE).await,
        AuthError::UnknownKid(_)
    ));
    // Rotation that keeps the old key published (the usual Entra overlap).
    let kid3 = iss.rotate(true).unwrap();
    assert!(v.refresh_now().await);
    assert_eq!(iss.published_kids(), vec![new_kid, kid3]);
    v.validate(&new, ALICE).await.unwrap();
    v.validate(&iss.mint(&TokenSpec::user(ALICE)).unwrap(), ALICE)
        .await
        .unwrap();
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let (iss, v) = setup().await;
    let spec = TokenSpec::user(ALICE);
    let cases = [
        (Forgery::AlgNone, "unsupported_alg"),
        (Forgery::Hs256WithPublicKeyPem, "unsupported_alg"),
        (Forgery::Hs256WithPublicKeyDer, "unsupported_alg"),
        (Forgery::PayloadEdited, "bad_signature"),
        (Forgery::SignatureAltered, "bad_signature"),
        (Forgery::ForeignKeySameKid, "bad_signature"),
        (Forgery::EmbeddedJwk, "bad_signature"),
    ];
    for (how, label) in cases {
        let tok = iss.forge(&spec, how).unwrap();
        let err = refused(&v, &tok, ALICE).await;
        assert_eq!(err.label(), label, "{how:?}: {err}");
    }
    let none = refused(&v, &iss.forge(&spec, Forgery::AlgNone).unwrap(), ALICE).await;
    assert_eq!(
        none.to_string(),
        "unsupported token algorithm \"none\" (only RS256 is accepted)"
    );
    // Other algorithm spellings never reach a key lookup either (no fetch happens).
    let before = iss.jwks_fetch_count();
    for alg in ["HS256", "RS384", "PS256", "ES256", "rs256", "None", "EdDSA"] {
        let h = base64_url(&format!(r#"{{"alg":"{alg}","kid":"nope"}}"#));
        let tok = format!("{h}.e30.c2lnbmF0dXJl");
        assert!(
            matches!(refused(&v, &tok, ALICE).await, AuthError::UnsupportedAlg(_)),
            "{alg}"
        );
    }
    assert_eq!(iss.jwks_fetch_count(), before);
}

fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn truncated_and_garbage_tokens() {
    let (iss, v) = setup().await;
    let tok = iss.mint(&TokenSpec::user(ALICE)).unwrap();
    // Signature cut short.
    let err = refused(&v, &tok[..tok.len() - 6], ALICE).await;
    assert!(matches!(err, AuthError::BadSignature(_)), "{err}");
    // Cut in the middle (no signature part left, or a broken payload).
    for cut in [tok.len() / 2, tok.find('.').unwrap() + 3, 10, 1] {
        let err = refused(&v, &tok[..cut], ALICE).await;
        assert!(matches!(err, AuthError::Malformed(_)), "cut {cut}: {err}");
    }
    // Signature part dropped entirely.
    let (input, _) = tok.rsplit_once('.').unwrap();
    let err = refused(&v, &format!("{input}."), ALICE).await;
    assert!(matches!(err, AuthError::Malformed(_)), "{err}");
    // 64 KiB of garbage: at the limit it is parsed (and refused as malformed), past it refused unread.
    let garbage: String = (0..65536)
        .map(|i| (b'!' + (i * 7 % 90) as u8) as char)
        .collect();
    let err = refused(&v, &garbage, ALICE).await;
    assert!(matches!(err, AuthError::Malformed(_)), "{err}");
    let dotted: String = garbage
        .chars()
        .enumerate()
        .map(|(i, c)| if i % 20000 == 7 { '.' } else { c })
        .collect();
    assert!(matches!(
        refused(&v, &dotted, ALICE).await,
        AuthError::Malformed(_)
    ));
    let big = "A".repeat(65537);
    assert_eq!(refused(&v, &big, ALICE).await, AuthError::TooLarge(65537));
    assert_eq!(refused(&v, "", ALICE).await, AuthError::Missing);
    // A JWE (five parts) and a JSON payload that is not an object.
    assert!(matches!(
        refused(&v, "a.b.c.d.e", ALICE).await,
        AuthError::Malformed(_)
    ));
    let h = base64_url(&format!(
        r#"{{"alg":"RS256","kid":"{}"}}"#,
        iss.current_kid()
    ));
    let p = base64_url("[1,2]");
    assert!(matches!(
        refused(&v, &format!("{h}.{p}.c2ln"), ALICE).await,
        AuthError::BadSignature(_)
    ));
    // Non-ASCII input.
    assert!(matches!(
        refused(&v, "ä.ö.ü", ALICE).await,
        AuthError::Malformed(_)
    ));
}

#[tokio::test]
async fn user_name_binding() {
    let iss = issuer().await;
    let alice = TokenSpec::user(ALICE);
    let bob_oid = TokenSpec::user("bob@contoso.com").effective_oid();
    let mut aliases = BTreeMap::new();
    aliases.insert("alice_ro".to_string(), alice.effective_oid().to_uppercase());
    aliases.insert("bob".to_string(), bob_oid.clone());
    let v = validator_with(&iss, |c| c.aliases = aliases).await;
    let tok = iss.mint(&alice).unwrap();
    // UPN, case-insensitively.
    v.validate(&tok, ALICE).await.unwrap();
    v.validate(&tok, "ALICE@Contoso.COM").await.unwrap();
    // The object id.
    v.validate(&tok, &alice.effective_oid()).await.unwrap();
    // An alias bound to her oid.
    v.validate(&tok, "alice_ro").await.unwrap();
    v.validate(&tok, "Alice_RO").await.unwrap();
    // Anything else is refused: another user, another user's alias, another oid, empty.
    for user in [
        "bob@contoso.com",
        "bob",
        bob_oid.as_str(),
        "",
        "alice",
        "alice@contoso.com.evil",
    ] {
        let err = refused(&v, &tok, user).await;
        assert!(
            matches!(err, AuthError::UserNameNotBound { .. }),
            "{user:?}: {err}"
        );
    }
    let err = refused(&v, &tok, "mallory").await;
    assert_eq!(
        err.to_string(),
        format!(
            "user name \"mallory\" is not bound to the token (oid {})",
            alice.effective_oid()
        )
    );
}

#[tokio::test]
async fn groups_overage_refused_by_default() {
    let (iss, v) = setup().await;
    let mut s = TokenSpec::user(ALICE);
    s.groups_overage = true;
    let err = refused(&v, &iss.mint(&s).unwrap(), ALICE).await;
    assert_eq!(err, AuthError::GroupsOverage);
    assert!(err.to_string().contains("groups overage"));
    // An explicit (possibly empty) groups claim is not an overage.
    s.groups_overage = false;
    v.validate(&iss.mint(&s).unwrap(), ALICE).await.unwrap();
}

/// A Microsoft Graph stand-in: answers getMemberObjects for one oid and bearer token.
async fn graph_stand_in(oid: String, hits: Arc<AtomicUsize>) -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (oid, hits) = (oid.clone(), hits.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (oid, hits) = (oid.clone(), hits.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let path_ok = req.uri().path()
                                == format!("/v1.0/directoryObjects/{oid}/getMemberObjects");
                            let auth_ok = req
                                .headers()
                                .get("authorization")
                                .and_then(|h| h.to_str().ok())
                                == Some("Bearer graph-test-token");
                            let post = req.method() == hyper::Method::POST;
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let json: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            let body_ok = json == serde_json::json!({"securityEnabledOnly": false});
                            let (status, answer) = if path_ok && auth_ok && post && body_ok {
                                (200, r#"{"@odata.context":"x","value":["G-ONE","g-two"]}"#)
                            } else {
                                (403, r#"{"error":{"code":"Authorization_RequestDenied"}}"#)
                            };
                            let mut r = hyper::Response::new(Full::new(Bytes::from(answer)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn groups_overage_resolved_through_graph() {
    let iss = issuer().await;
    let mut s = TokenSpec::user(ALICE);
    s.groups_overage = true;
    let hits = Arc::new(AtomicUsize::new(0));
    let graph = graph_stand_in(s.effective_oid(), hits.clone()).await;
    let mut cfg = iss.config();
    cfg.groups_overage = GroupsOverage::Graph;
    cfg.graph_endpoint = format!("http://{graph}/");
    // Graph mode without a credential is a start error.
    assert!(matches!(
        Validator::start(cfg.clone(), client()).await,
        Err(StartError::NoGraphCredential)
    ));
    let v = Validator::start_with_graph(
        cfg.clone(),
        client(),
        Some(Arc::new(StaticGraphToken("graph-test-token".into()))),
    )
    .await
    .unwrap();
    let id = v.validate(&iss.mint(&s).unwrap(), ALICE).await.unwrap();
    assert_eq!(id.groups, vec!["g-one", "g-two"]);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Tokens that carry groups never call Graph.
    s.groups_overage = false;
    s.groups = vec!["inline".into()];
    let id = v.validate(&iss.mint(&s).unwrap(), ALICE).await.unwrap();
    assert_eq!(id.groups, vec!["inline"]);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Graph refusing (wrong credential) is a refusal with the reason.
    let v_bad = Validator::start_with_graph(
        cfg,
        client(),
        Some(Arc::new(StaticGraphToken("wrong".into()))),
    )
    .await
    .unwrap();
    s.groups_overage = true;
    let err = refused(&v_bad, &iss.mint(&s).unwrap(), ALICE).await;
    assert!(
        matches!(&err, AuthError::GraphFailed(m) if m.contains("403")),
        "{err}"
    );
    assert!(
        !err.to_string().contains("wrong"),
        "no Graph token in the reason: {err}"
    );
}

#[tokio::test]
async fn jwks_down_after_start_keeps_last_good_keys() {
    let (iss, v) = setup().await;
    iss.set_jwks_available(false);
    assert!(!v.refresh_now().await);
    assert!(v.is_ready());
    assert!(
        v.last_error().unwrap().contains("503"),
        "{:?}",
        v.last_error()
    );
    v.validate(&iss.mint(&TokenSpec::user(ALICE)).unwrap(), ALICE)
        .await
        .unwrap();
    // An unknown kid while the JWKS is down is still just an unknown kid.
    let (tok, _) = iss
        .mint_with_unpublished_kid(&TokenSpec::user(ALICE))
        .unwrap();
    assert!(matches!(
        refused(&v, &tok, ALICE).await,
        AuthError::UnknownKid(_)
    ));
    iss.set_jwks_available(true);
    assert!(v.refresh_now().await);
    assert!(v.last_error().is_none());
}

#[tokio::test]
async fn not_ready_until_keys_load() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = EntraConfig::new(TENANT, format!("http://127.0.0.1:{port}"));
    let v = Validator::start(cfg, client()).await.unwrap();
    assert!(!v.is_ready());
    assert!(!v.wait_ready(Duration::from_millis(50)).await);
    let err = v
        .validate("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.e30.c2ln", ALICE)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::KeysUnavailable(_)), "{err}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_kid_lookups_share_one_fetch() {
    let iss = issuer().await;
    let v = validator_with(&iss, |c| c.unknown_kid_min_interval_secs = 300).await;
    iss.rotate(true).unwrap();
    iss.set_jwks_delay(Duration::from_millis(300));
    let tok = iss.mint(&TokenSpec::user(ALICE)).unwrap();
    let before = iss.jwks_fetch_count();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (v, tok) = (v.clone(), tok.clone());
        set.spawn(async move { v.validate(&tok, ALICE).await });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
        ok += 1;
    }
    assert_eq!(ok, 16);
    assert_eq!(iss.jwks_fetch_count(), before + 1);
}

#[tokio::test]
async fn config_errors_stop_start() {
    let cfg = EntraConfig::new(TENANT, "http://login.microsoftonline.com");
    let err = Validator::start(cfg, client()).await.unwrap_err();
    assert!(err.to_string().contains("entra.authority"), "{err}");
}

#[tokio::test]
async fn mint_endpoint_and_remote_client() {
    let (iss, v) = setup().await;
    let mut spec = TokenSpec::user("carol@contoso.com").v1();
    spec.roles = vec!["Data.Read".into()];
    let tok = mint_remote(&iss.authority(), &spec).await.unwrap();
    let id = v.validate(&tok, "carol@contoso.com").await.unwrap();
    assert_eq!(id.token_version, 1);
    assert_eq!(id.roles, vec!["Data.Read"]);
    // The spec travels as JSON with defaults.
    let spec: TokenSpec =
        serde_json::from_str(r#"{"kind":"managed_identity","mi_name":"job"}"#).unwrap();
    let tok = mint_remote(&iss.authority(), &spec).await.unwrap();
    assert_eq!(
        v.validate(&tok, "job").await.unwrap().kind,
        IdentityKind::ManagedIdentity
    );
    assert!(matches!(
        mint_remote("http://10.1.2.3:1", &spec).await,
        Err(DevError::NotLoopback(_))
    ));
}

#[tokio::test]
async fn dev_issuer_is_loopback_only() {
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    assert!(matches!(
        DevIssuer::start(any, TENANT).await,
        Err(DevError::NotLoopback(_))
    ));
    assert!(matches!(
        DevIssuer::start(loopback(), "contoso").await,
        Err(DevError::BadTenant(_))
    ));
}

#[tokio::test]
async fn becomes_ready_when_the_issuer_comes_up_later() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = EntraConfig::new(TENANT, format!("http://{addr}"));
    let v = Validator::start(cfg, client()).await.unwrap();
    assert!(!v.is_ready());
    // The background task retries 5 s after the failed first load.
    let iss = DevIssuer::start(addr, TENANT).await.unwrap();
    assert!(
        v.wait_ready(Duration::from_secs(20)).await,
        "{:?}",
        v.last_error()
    );
    v.validate(&iss.mint(&TokenSpec::user(ALICE)).unwrap(), ALICE)
        .await
        .unwrap();
}

/// The cost of one validation with the JWKS cached (run with `--ignored --nocapture`;
/// numbers from a debug build of this crate are pessimistic).
#[tokio::test]
#[ignore]
async fn validate_cost() {
    let (iss, v) = setup().await;
    let tok = iss.mint(&TokenSpec::user(ALICE)).unwrap();
    let n = 2000u32;
    let start = std::time::Instant::now();
    for _ in 0..n {
        v.validate(&tok, ALICE).await.unwrap();
    }
    println!("validate: {:?} per token", start.elapsed() / n);
}

/// Azure's v1 tokens carry the issuer of the authority's v1 discovery document, which is on
/// another host than the authority (`https://sts.windows.net/{tid}/`, a sovereign cloud's own):
/// accepted from discovery, whatever the authority's host; nothing else is.
#[tokio::test]
async fn v1_issuer_comes_from_discovery_on_another_host() {
    let iss = issuer().await;
    iss.set_v1_issuer(Some("https://sts.chinacloudapi.cn/{tenantid}/"));
    let v = validator_with(&iss, |_| {}).await;
    let tok = iss.mint(&TokenSpec::user(ALICE).v1()).unwrap();
    let id = v.validate(&tok, ALICE).await.unwrap();
    assert_eq!(id.token_version, 1);
    assert_eq!(
        iss.v1_jwks_fetch_count(),
        1,
        "the v1 document's JWKS was read"
    );
    let with_iss = |i: String, tid: &str| {
        let mut s = TokenSpec::user(ALICE).v1();
        s.iss = Some(i);
        s.tid = Some(tid.into());
        iss.mint(&s).unwrap()
    };
    for bad in [
        // The authority's own host (what pgward derived before), the public cloud's v1
        // issuer, another tenant's issuers under the home tid, a case variant.
        format!("{}/{TENANT}/", iss.authority()),
        format!("https://sts.windows.net/{TENANT}/"),
        format!("https://sts.chinacloudapi.cn/{OTHER_TENANT}/"),
        iss.issuer_v2(OTHER_TENANT),
        format!("https://STS.chinacloudapi.cn/{TENANT}/"),
        format!("https://sts.chinacloudapi.cn/{TENANT}"),
    ] {
        let err = refused(&v, &with_iss(bad.clone(), TENANT), ALICE).await;
        assert!(matches!(err, AuthError::WrongIssuer(_)), "{bad}: {err}");
    }
    // A guest tenant allowed by config: its v1 issuer follows its tid, not the home one's.
    let multi = validator_with(&iss, |c| {
        c.allowed_tenants = Some(vec![TENANT.into(), OTHER_TENANT.into()])
    })
    .await;
    let guest = format!("https://sts.chinacloudapi.cn/{OTHER_TENANT}/");
    multi
        .validate(&with_iss(guest.clone(), OTHER_TENANT), ALICE)
        .await
        .unwrap();
    let err = refused(&multi, &with_iss(guest, TENANT), ALICE).await;
    assert!(matches!(err, AuthError::WrongIssuer(_)), "{err}");
}

/// `v1_issuer` in the configuration wins over discovery (and the v1 document is not read).
#[tokio::test]
async fn v1_issuer_override_wins_over_discovery() {
    let iss = issuer().await;
    iss.set_v1_issuer(Some("https://sts.chinacloudapi.cn/{tenantid}/"));
    let v = validator_with(&iss, |c| {
        c.v1_issuer = Some("https://sts.example.net/{tenantid}/".into())
    })
    .await;
    let discovered = iss.mint(&TokenSpec::user(ALICE).v1()).unwrap();
    let err = refused(&v, &discovered, ALICE).await;
    assert!(matches!(err, AuthError::WrongIssuer(_)), "{err}");
    let mut s = TokenSpec::user(ALICE).v1();
    s.iss = Some(format!("https://sts.example.net/{TENANT}/"));
    assert_eq!(
        v.validate(&iss.mint(&s).unwrap(), ALICE)
            .await
            .unwrap()
            .token_version,
        1
    );
    assert_eq!(iss.v1_jwks_fetch_count(), 0);
}

/// Without its discovery documents pgward signs nobody in (and says why); once they answer
/// it does; a later outage keeps the documents and keys already read, like the JWKS.
#[tokio::test]
async fn discovery_unreachable_fails_closed() {
    let iss = issuer().await;
    iss.set_discovery_available(false);
    let v = Validator::start(iss.config(), client()).await.unwrap();
    assert!(!v.is_ready());
    let why = v.last_error().unwrap();
    assert!(
        why.contains("openid-configuration") && why.contains("503"),
        "{why}"
    );
    let tok = iss.mint(&TokenSpec::user(ALICE)).unwrap();
    let err = refused(&v, &tok, ALICE).await;
    assert!(matches!(err, AuthError::KeysUnavailable(_)), "{err}");
    assert_eq!(iss.jwks_fetch_count(), 0, "no keys without discovery");

    iss.set_discovery_available(true);
    assert!(v.refresh_now().await);
    assert!(v.is_ready());
    v.validate(&tok, ALICE).await.unwrap();

    iss.set_discovery_available(false);
    assert!(!v.refresh_now().await);
    v.validate(&tok, ALICE).await.unwrap();
    v.validate(&iss.mint(&TokenSpec::user(ALICE).v1()).unwrap(), ALICE)
        .await
        .unwrap();
    assert!(v.last_error().is_some());
}

/// A discovery document whose issuer does not name the tenant would accept that issuer for
/// every tenant's tokens: refused.
#[tokio::test]
async fn a_discovery_issuer_not_naming_the_tenant_is_refused() {
    let iss = issuer().await;
    iss.set_v1_issuer(Some("https://sts.example.net/shared/"));
    let v = Validator::start(iss.config(), client()).await.unwrap();
    assert!(!v.is_ready());
    let why = v.last_error().unwrap();
    assert!(why.contains("is not a URL naming tenant"), "{why}");
}
