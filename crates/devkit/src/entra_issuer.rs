//! A local development token issuer: an Entra stand-in for `pgward demo`, `pgward token`,
//! `pgward issuer` and the tests. It lives with the other stand-ins, not in
//! `pgward-entra`, so the validating crate carries no minting or forging code and a
//! production build (which has no devkit in its tree) cannot serve or mint dev tokens.
//!
//! It generates an RSA-2048 key at start and serves, on loopback only, what Entra serves:
//! OIDC discovery for v2 at `/{tenant}/v2.0/.well-known/openid-configuration` (issuer
//! `{authority}/{tenant}/v2.0`, JWKS at `/{tenant}/discovery/v2.0/keys`) and for v1 at
//! `/{tenant}/.well-known/openid-configuration` (issuer `{authority}/{tenant}/` unless
//! [`DevIssuer::set_v1_issuer`] names another host, as Azure's `https://sts.windows.net/{tenant}/`
//! and sovereign clouds' do; JWKS at `/{tenant}/discovery/keys`); for `common` and
//! `organizations` the issuers say `{tenantid}`, as Azure's do. And a mint endpoint
//! `POST /pgward-dev/token` (body: a JSON [`TokenSpec`], answer `{"access_token": ...}`). Its tokens are trusted only by a
//! validator whose `entra.authority` is this issuer's [`DevIssuer::authority`]: nothing
//! about it is built into the validator.
//!
//! Besides well-formed v1 and v2 tokens for people, service principals and managed
//! identities, it rotates keys, mints with a not-yet-published key id, forges the usual
//! attack tokens ([`Forgery`]), and can make its JWKS endpoint fail or slow down.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use pgward_entra::{is_guid, EntraConfig, IdentityKind, DEFAULT_AUDIENCE};

/// The path of the mint endpoint.
pub const MINT_PATH: &str = "/pgward-dev/token";
/// Largest mint answer [`mint_remote`] reads.
const MAX_MINT_ANSWER: u64 = 64 * 1024;
/// The tenant `pgward demo` uses when none is given.
pub const DEMO_TENANT: &str = "00000000-0000-4000-8000-00000000d3e0";

/// A dev issuer failure.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The issuer only ever listens on, and mints for, loopback addresses.
    #[error("the development issuer is loopback-only; {0} is not a loopback address")]
    NotLoopback(String),
    /// Binding the listener failed.
    #[error("binding the development issuer to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The tenant is not a GUID.
    #[error("tenant id {0:?} is not a GUID")]
    BadTenant(String),
    /// aws-lc-rs could not generate or use a key.
    #[error("RSA key operation failed: {0}")]
    Crypto(&'static str),
    /// Talking to a running issuer's mint endpoint failed.
    #[error("minting from {url}: {reason}")]
    Remote {
        /// The issuer URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// What token to mint. Every field has a default; start from [`TokenSpec::user`],
/// [`TokenSpec::service_principal`] or [`TokenSpec::managed_identity`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSpec {
    /// Person, service principal or managed identity.
    pub kind: IdentityKind,
    /// 1 (sts-style issuer, `upn`/`unique_name`, `appid`) or 2 (`/v2.0` issuer,
    /// `preferred_username`, `azp`).
    pub version: u8,
    /// A person's UPN.
    pub upn: Option<String>,
    /// A service principal's or managed identity's application id; default derived.
    pub app_id: Option<String>,
    /// A managed identity's name (the last segment of `xms_mirid`).
    pub mi_name: Option<String>,
    /// Object id; default derived from the name, so the same user keeps one oid.
    pub oid: Option<String>,
    /// Tenant; default the issuer's.
    pub tid: Option<String>,
    /// Audience; default the Azure Database for PostgreSQL audience (v1: with a trailing slash).
    pub aud: Option<String>,
    /// Issuer; default this issuer's v1 or v2 issuer for `tid`.
    pub iss: Option<String>,
    /// Group object ids (`groups` claim).
    pub groups: Vec<String>,
    /// Emit a groups overage (`_claim_names`) instead of `groups`.
    pub groups_overage: bool,
    /// App roles (`roles` claim).
    pub roles: Vec<String>,
    /// Seconds from now to `exp` (may be negative).
    pub lifetime_secs: i64,
    /// Seconds from now to `nbf` (positive: not yet valid).
    pub not_before_secs: i64,
    /// Extra claims, set last (they override the ones above).
    pub extra: Map<String, Value>,
}

impl Default for TokenSpec {
    fn default() -> Self {
        TokenSpec {
            kind: IdentityKind::Person,
            version: 2,
            upn: None,
            app_id: None,
            mi_name: None,
            oid: None,
            tid: None,
            aud: None,
            iss: None,
            groups: Vec::new(),
            groups_overage: false,
            roles: Vec::new(),
            lifetime_secs: 3600,
            not_before_secs: 0,
            extra: Map::new(),
        }
    }
}

impl TokenSpec {
    /// A person's delegated token.
    pub fn user(upn: &str) -> Self {
        TokenSpec {
            upn: Some(upn.to_string()),
            ..TokenSpec::default()
        }
    }

    /// A service principal's app-only token.
    pub fn service_principal(app_id: &str) -> Self {
        TokenSpec {
            kind: IdentityKind::ServicePrincipal,
            app_id: Some(app_id.to_string()),
            ..TokenSpec::default()
        }
    }

    /// A managed identity's token.
    pub fn managed_identity(name: &str) -> Self {
        TokenSpec {
            kind: IdentityKind::ManagedIdentity,
            mi_name: Some(name.to_string()),
            ..TokenSpec::default()
        }
    }

    /// The same spec as a v1 token.
    pub fn v1(mut self) -> Self {
        self.version = 1;
        self
    }

    /// The object id this spec's token will carry (`oid`, else derived from the name).
    pub fn effective_oid(&self) -> String {
        self.oid
            .clone()
            .unwrap_or_else(|| derived_guid("oid", &self.name()))
    }

    fn name(&self) -> String {
        let n = match self.kind {
            IdentityKind::Person => self.upn.as_deref().unwrap_or("user").to_lowercase(),
            IdentityKind::ServicePrincipal => {
                self.app_id.as_deref().unwrap_or("app").to_lowercase()
            }
            IdentityKind::ManagedIdentity => self.mi_name.as_deref().unwrap_or("mi").to_lowercase(),
        };
        format!("{:?}:{n}", self.kind)
    }
}

/// Ways to forge a token for negative tests. Each is built from a spec that would
/// otherwise produce a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// `alg: none`, empty signature.
    AlgNone,
    /// HS256 with the issuer's RSA public key (SubjectPublicKeyInfo PEM text) as the MAC key.
    Hs256WithPublicKeyPem,
    /// HS256 with the issuer's RSA public key (SubjectPublicKeyInfo DER) as the MAC key.
    Hs256WithPublicKeyDer,
    /// A valid token whose payload was edited (role `Admin` added); signature kept.
    PayloadEdited,
    /// A valid token with one signature byte changed.
    SignatureAltered,
    /// Signed by a different RSA key, naming the issuer's current kid.
    ForeignKeySameKid,
    /// Signed by a different RSA key that the header embeds (`jwk`, `jku`, `x5u`).
    EmbeddedJwk,
}

struct DevKey {
    kid: String,
    pair: Arc<KeyPair>,
    published: bool,
}

struct DevState {
    keys: Vec<DevKey>,
    /// Index of the key [`DevIssuer::mint`] signs with.
    signing: usize,
    /// Index of the key minted by `mint_with_unpublished_kid`, until published.
    pending: Option<usize>,
    next_kid: u32,
    jwks_fetches: u64,
    v1_jwks_fetches: u64,
    jwks_available: bool,
    jwks_delay: Duration,
    /// Both discovery documents answer (false: 503).
    discovery_available: bool,
    /// The v1 issuer with `{tenantid}`; `None`: `{authority}/{tenantid}/`.
    v1_issuer: Option<String>,
}

/// What the server task and the [`DevIssuer`] handle share.
#[derive(Clone)]
struct Core {
    authority: String,
    tenant_id: String,
    state: Arc<Mutex<DevState>>,
}

/// A running development issuer. Dropping it stops the listener.
pub struct DevIssuer {
    addr: SocketAddr,
    core: Core,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("addr", &self.addr)
            .field("tenant_id", &self.core.tenant_id)
            .finish()
    }
}

impl Drop for DevIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn generate_key() -> Result<KeyPair, DevError> {
    KeyPair::generate(KeySize::Rsa2048).map_err(|_| DevError::Crypto("RSA-2048 key generation"))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A stable GUID-shaped id from SHA-256 of `scope:name` (the demo's users keep their oid
/// across restarts, so policies naming them keep working).
fn derived_guid(scope: &str, name: &str) -> String {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("pgward-dev-{scope}:{name}").as_bytes(),
    );
    let h: String = d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn sign_rs256(pair: &KeyPair, input: &[u8]) -> Result<Vec<u8>, DevError> {
    let mut sig = vec![0u8; pair.public_modulus_len()];
    pair.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input,
        &mut sig,
    )
    .map_err(|_| DevError::Crypto("RS256 signing"))?;
    Ok(sig)
}

fn jwk_of(kid: &str, pair: &KeyPair) -> Value {
    let pk = pair.public_key();
    json!({
        "kty": "RSA",
        "use": "sig",
        "kid": kid,
        "n": b64(pk.modulus().big_endian_without_leading_zero()),
        "e": b64(pk.exponent().big_endian_without_leading_zero()),
    })
}

fn spki_der(pair: &KeyPair) -> Result<Vec<u8>, DevError> {
    let der = pair
        .public_key()
        .as_der()
        .map_err(|_| DevError::Crypto("public key DER encoding"))?;
    Ok(der.as_ref().to_vec())
}

fn pem_of(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

fn compact(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

impl DevIssuer {
    /// Starts the issuer on `bind` (a loopback address; port 0 picks a free one) for
    /// `tenant_id`, with a freshly generated RSA-2048 key.
    pub async fn start(bind: SocketAddr, tenant_id: &str) -> Result<DevIssuer, DevError> {
        if !bind.ip().is_loopback() {
            return Err(DevError::NotLoopback(bind.to_string()));
        }
        if !is_guid(tenant_id) {
            return Err(DevError::BadTenant(tenant_id.to_string()));
        }
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|source| DevError::Bind { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| DevError::Bind { addr: bind, source })?;
        let first = generate_key()?;
        let state = Arc::new(Mutex::new(DevState {
            keys: vec![DevKey {
                kid: "pgward-dev-1".to_string(),
                pair: Arc::new(first),
                published: true,
            }],
            signing: 0,
            pending: None,
            next_kid: 2,
            jwks_fetches: 0,
            v1_jwks_fetches: 0,
            jwks_available: true,
            jwks_delay: Duration::ZERO,
            discovery_available: true,
            v1_issuer: None,
        }));
        let core = Core {
            authority: format!("http://{addr}"),
            tenant_id: tenant_id.to_ascii_lowercase(),
            state,
        };
        let server = tokio::spawn(serve(listener, core.clone()));
        Ok(DevIssuer { addr, core, server })
    }

    fn lock(&self) -> MutexGuard<'_, DevState> {
        lock_state(&self.core.state)
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to put in `entra.authority`, e.g. `http://127.0.0.1:41234`.
    pub fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The tenant it issues for by default.
    pub fn tenant_id(&self) -> &str {
        &self.core.tenant_id
    }

    /// An `[entra]` configuration that trusts this issuer (and nothing else).
    pub fn config(&self) -> EntraConfig {
        EntraConfig::new(self.core.tenant_id.clone(), self.authority())
    }

    /// The v2 issuer for `tid`: `{authority}/{tid}/v2.0`.
    pub fn issuer_v2(&self, tid: &str) -> String {
        self.core.issuer_v2(tid)
    }

    /// The v1 issuer for `tid`: `{authority}/{tid}/`, or what [`DevIssuer::set_v1_issuer`] set.
    pub fn issuer_v1(&self, tid: &str) -> String {
        self.core.issuer_v1(tid)
    }

    /// The key id [`DevIssuer::mint`] signs with.
    pub fn current_kid(&self) -> String {
        let st = self.lock();
        st.keys[st.signing].kid.clone()
    }

    /// The key ids the JWKS currently publishes.
    pub fn published_kids(&self) -> Vec<String> {
        self.lock()
            .keys
            .iter()
            .filter(|k| k.published)
            .map(|k| k.kid.clone())
            .collect()
    }

    /// The current signing key's public key as SubjectPublicKeyInfo PEM.
    pub fn public_key_pem(&self) -> Result<String, DevError> {
        let pair = self.signing_pair();
        Ok(pem_of(&spki_der(&pair)?))
    }

    fn signing_pair(&self) -> Arc<KeyPair> {
        let st = self.lock();
        st.keys[st.signing].pair.clone()
    }

    /// Mints a token for `spec`, signed with the current key.
    pub fn mint(&self, spec: &TokenSpec) -> Result<String, DevError> {
        self.core.mint(spec)
    }

    /// Generates a new signing key and publishes it; the old key stays published when
    /// `keep_old_published`, else disappears from the JWKS. Returns the new kid.
    pub fn rotate(&self, keep_old_published: bool) -> Result<String, DevError> {
        let pair = Arc::new(generate_key()?);
        let mut st = self.lock();
        let old = st.signing;
        if !keep_old_published {
            st.keys[old].published = false;
        }
        let kid = format!("pgward-dev-{}", st.next_kid);
        st.next_kid += 1;
        st.keys.push(DevKey {
            kid: kid.clone(),
            pair,
            published: true,
        });
        st.signing = st.keys.len() - 1;
        Ok(kid)
    }

    /// Mints with a key the JWKS does not publish yet (creating it on first use, reusing
    /// it until [`DevIssuer::publish_pending`]). Returns the token and its kid.
    pub fn mint_with_unpublished_kid(
        &self,
        spec: &TokenSpec,
    ) -> Result<(String, String), DevError> {
        let existing = {
            let st = self.lock();
            st.pending
                .map(|i| (st.keys[i].kid.clone(), st.keys[i].pair.clone()))
        };
        let (kid, pair) = match existing {
            Some(k) => k,
            None => {
                let pair = Arc::new(generate_key()?);
                let mut st = self.lock();
                let kid = format!("pgward-dev-{}", st.next_kid);
                st.next_kid += 1;
                st.keys.push(DevKey {
                    kid: kid.clone(),
                    pair: pair.clone(),
                    published: false,
                });
                st.pending = Some(st.keys.len() - 1);
                (kid, pair)
            }
        };
        let token = sign(&kid, &pair, &self.core.claims(spec))?;
        Ok((token, kid))
    }

    /// Publishes the key created by [`DevIssuer::mint_with_unpublished_kid`].
    pub fn publish_pending(&self) {
        let mut st = self.lock();
        if let Some(i) = st.pending.take() {
            st.keys[i].published = true;
        }
    }

    /// How many times the (v2) JWKS was requested.
    pub fn jwks_fetch_count(&self) -> u64 {
        self.lock().jwks_fetches
    }

    /// How many times the v1 JWKS (`/{tenant}/discovery/keys`) was requested.
    pub fn v1_jwks_fetch_count(&self) -> u64 {
        self.lock().v1_jwks_fetches
    }

    /// The v1 issuer its v1 discovery document names and its v1 tokens carry, with
    /// `{tenantid}` for the tenant: e.g. `https://sts.chinacloudapi.cn/{tenantid}/`, a host
    /// other than the authority's, as Azure's clouds do. `None` restores `{authority}/{tenantid}/`.
    pub fn set_v1_issuer(&self, template: Option<&str>) {
        self.lock().v1_issuer = template.map(str::to_owned);
    }

    /// Makes both discovery documents answer 503 (false) or work again (true).
    pub fn set_discovery_available(&self, available: bool) {
        self.lock().discovery_available = available;
    }

    /// Makes the JWKS endpoint answer 503 (false) or work again (true).
    pub fn set_jwks_available(&self, available: bool) {
        self.lock().jwks_available = available;
    }

    /// Delays every JWKS answer (to make concurrent fetches overlap in tests).
    pub fn set_jwks_delay(&self, delay: Duration) {
        self.lock().jwks_delay = delay;
    }

    /// A forged token (see [`Forgery`]) built from `spec`.
    pub fn forge(&self, spec: &TokenSpec, how: Forgery) -> Result<String, DevError> {
        let kid = self.current_kid();
        let claims = self.core.claims(spec);
        let hs256 = |key: &[u8]| {
            let input = compact(&json!({"alg": "HS256", "typ": "JWT", "kid": kid}), &claims);
            let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
            let tag = aws_lc_rs::hmac::sign(&k, input.as_bytes());
            format!("{input}.{}", b64(tag.as_ref()))
        };
        match how {
            Forgery::AlgNone => Ok(format!(
                "{}.",
                compact(&json!({"alg": "none", "typ": "JWT", "kid": kid}), &claims)
            )),
            Forgery::Hs256WithPublicKeyPem => Ok(hs256(self.public_key_pem()?.as_bytes())),
            Forgery::Hs256WithPublicKeyDer => Ok(hs256(&spki_der(&self.signing_pair())?)),
            Forgery::PayloadEdited => {
                let token = self.mint(spec)?;
                let mut edited = claims.clone();
                if let Some(obj) = edited.as_object_mut() {
                    obj.insert("roles".into(), json!(["Admin"]));
                }
                let mut parts = token.splitn(3, '.');
                let (h, _, s) = (parts.next(), parts.next(), parts.next());
                Ok(format!(
                    "{}.{}.{}",
                    h.unwrap_or_default(),
                    b64(edited.to_string().as_bytes()),
                    s.unwrap_or_default()
                ))
            }
            Forgery::SignatureAltered => {
                let token = self.mint(spec)?;
                let (input, sig) = token.rsplit_once('.').unwrap_or((&token, ""));
                let mut raw = URL_SAFE_NO_PAD
                    .decode(sig)
                    .map_err(|_| DevError::Crypto("decoding our own signature"))?;
                if let Some(b) = raw.get_mut(10) {
                    *b ^= 0x01;
                }
                Ok(format!("{input}.{}", b64(&raw)))
            }
            Forgery::ForeignKeySameKid => {
                let foreign = generate_key()?;
                sign(&kid, &foreign, &claims)
            }
            Forgery::EmbeddedJwk => {
                let foreign = generate_key()?;
                let header = json!({
                    "alg": "RS256",
                    "typ": "JWT",
                    "kid": kid,
                    "jwk": jwk_of(&kid, &foreign),
                    "jku": format!("{}/attacker/keys", self.authority()),
                    "x5u": format!("{}/attacker/cert", self.authority()),
                });
                let input = compact(&header, &claims);
                let sig = sign_rs256(&foreign, input.as_bytes())?;
                Ok(format!("{input}.{}", b64(&sig)))
            }
        }
    }
}

fn sign(kid: &str, pair: &KeyPair, claims: &Value) -> Result<String, DevError> {
    let input = compact(&json!({"alg": "RS256", "typ": "JWT", "kid": kid}), claims);
    let sig = sign_rs256(pair, input.as_bytes())?;
    Ok(format!("{input}.{}", b64(&sig)))
}

impl Core {
    fn issuer_v2(&self, tid: &str) -> String {
        format!("{}/{tid}/v2.0", self.authority)
    }

    fn issuer_v1(&self, tid: &str) -> String {
        match &lock_state(&self.state).v1_issuer {
            Some(t) => t.replace("{tenantid}", tid),
            None => format!("{}/{tid}/", self.authority),
        }
    }

    fn mint(&self, spec: &TokenSpec) -> Result<String, DevError> {
        let (kid, pair) = {
            let st = lock_state(&self.state);
            let k = &st.keys[st.signing];
            (k.kid.clone(), k.pair.clone())
        };
        sign(&kid, &pair, &self.claims(spec))
    }

    /// The claims Entra would put in such a token.
    fn claims(&self, spec: &TokenSpec) -> Value {
        let now = now_secs();
        let tid = spec.tid.clone().unwrap_or_else(|| self.tenant_id.clone());
        let v1 = spec.version == 1;
        let iss = spec.iss.clone().unwrap_or_else(|| {
            if v1 {
                self.issuer_v1(&tid)
            } else {
                self.issuer_v2(&tid)
            }
        });
        // Real v1 tokens for a resource named by URI may carry it with a trailing slash.
        let aud = spec.aud.clone().unwrap_or_else(|| {
            if v1 {
                format!("{DEFAULT_AUDIENCE}/")
            } else {
                DEFAULT_AUDIENCE.to_string()
            }
        });
        let oid = spec.effective_oid();
        let mut c = Map::new();
        c.insert("aud".into(), json!(aud));
        c.insert("iss".into(), json!(iss));
        c.insert("iat".into(), json!(now));
        c.insert("nbf".into(), json!(now + spec.not_before_secs));
        c.insert("exp".into(), json!(now + spec.lifetime_secs));
        c.insert("tid".into(), json!(tid));
        c.insert("oid".into(), json!(oid));
        c.insert("ver".into(), json!(if v1 { "1.0" } else { "2.0" }));
        c.insert(
            "uti".into(),
            json!(derived_guid("uti", &format!("{now}:{oid}"))),
        );
        let app_claim = if v1 { "appid" } else { "azp" };
        match spec.kind {
            IdentityKind::Person => {
                let upn = spec.upn.clone().unwrap_or_else(|| "user@pgward.dev".into());
                c.insert("sub".into(), json!(derived_guid("sub", &oid)));
                c.insert("scp".into(), json!("user_impersonation"));
                c.insert("name".into(), json!(upn.split('@').next().unwrap_or(&upn)));
                // The Azure CLI's public client id, which real tokens from `az` carry.
                c.insert(
                    app_claim.into(),
                    json!("04b07795-8ddb-461a-bbee-02f9e1bf7b46"),
                );
                if v1 {
                    c.insert("upn".into(), json!(upn));
                    c.insert("unique_name".into(), json!(upn));
                } else {
                    c.insert("preferred_username".into(), json!(upn));
                }
            }
            IdentityKind::ServicePrincipal | IdentityKind::ManagedIdentity => {
                let app_id = spec
                    .app_id
                    .clone()
                    .unwrap_or_else(|| derived_guid("appid", &spec.name()));
                c.insert("sub".into(), json!(oid));
                c.insert(app_claim.into(), json!(app_id));
                c.insert(if v1 { "appidacr" } else { "azpacr" }.into(), json!("2"));
                // Entra adds idtyp only as an optional claim: emit it on v1 and leave it
                // out on v2, so both ways of classifying are exercised.
                if v1 {
                    c.insert("idtyp".into(), json!("app"));
                }
                if spec.kind == IdentityKind::ManagedIdentity {
                    let name = spec.mi_name.clone().unwrap_or_else(|| "mi".into());
                    c.insert(
                        "xms_mirid".into(),
                        json!(format!(
                            "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/pgward-dev/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
                        )),
                    );
                }
            }
        }
        if spec.groups_overage {
            c.insert("_claim_names".into(), json!({"groups": "src1"}));
            c.insert(
                "_claim_sources".into(),
                json!({"src1": {"endpoint": format!("https://graph.windows.net/{tid}/users/{oid}/getMemberObjects")}}),
            );
        } else if !spec.groups.is_empty() {
            c.insert("groups".into(), json!(spec.groups));
        }
        if !spec.roles.is_empty() {
            c.insert("roles".into(), json!(spec.roles));
        }
        for (k, v) in &spec.extra {
            c.insert(k.clone(), v.clone());
        }
        Value::Object(c)
    }
}

fn lock_state(state: &Mutex<DevState>) -> MutexGuard<'_, DevState> {
    // Test scaffolding state; a panic elsewhere must not wedge the issuer.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Mints a token from a running issuer's mint endpoint (what `pgward token` does).
/// `issuer` is the issuer's authority URL; it must be a loopback http(s) URL.
pub async fn mint_remote(issuer: &str, spec: &TokenSpec) -> Result<String, DevError> {
    let remote = |reason: String| DevError::Remote {
        url: issuer.to_string(),
        reason,
    };
    let url = reqwest::Url::parse(issuer).map_err(|e| remote(e.to_string()))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(DevError::NotLoopback(issuer.to_string()));
    }
    // Never through a proxy: the issuer is on this machine.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| remote(e.to_string()))?;
    let body = serde_json::to_string(spec).map_err(|e| remote(e.to_string()))?;
    let resp = client
        .post(format!("{}{MINT_PATH}", issuer.trim_end_matches('/')))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| remote(error_chain(&e)))?;
    let status = resp.status();
    // The mint endpoint's answers are a few hundred bytes; anything much larger is not it.
    if resp.content_length().is_some_and(|n| n > MAX_MINT_ANSWER) {
        return Err(remote(format!(
            "answer larger than {MAX_MINT_ANSWER} bytes"
        )));
    }
    let text = resp.text().await.map_err(|e| remote(error_chain(&e)))?;
    if !status.is_success() {
        return Err(remote(format!("HTTP {status}: {text}")));
    }
    let answer: Value =
        serde_json::from_str(&text).map_err(|e| remote(format!("not JSON ({e})")))?;
    answer
        .get("access_token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| remote("answer has no access_token".into()))
}

/// `e: cause: cause`: reqwest's own message ("error sending request") hides the part
/// worth reading (connection refused, timeout).
fn error_chain(e: &reqwest::Error) -> String {
    std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn serve(listener: tokio::net::TcpListener, core: Core) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "dev issuer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !peer.ip().is_loopback() {
            // Unreachable while bound to loopback; kept as a second fence.
            continue;
        }
        let core = core.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(core.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "dev issuer connection ended");
            }
        });
    }
}

async fn handle(core: Core, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let tenant_ok = |t: &str| is_guid(t) || t == "common" || t == "organizations";
    let resp = match (req.method(), segs.as_slice()) {
        (&Method::GET, [tenant, "v2.0", ".well-known", "openid-configuration"])
            if tenant_ok(tenant) =>
        {
            discovery(&core, tenant, false)
        }
        (&Method::GET, [tenant, ".well-known", "openid-configuration"]) if tenant_ok(tenant) => {
            discovery(&core, tenant, true)
        }
        (&Method::GET, [tenant, "discovery", "v2.0", "keys"]) if tenant_ok(tenant) => {
            jwks(&core, false).await
        }
        (&Method::GET, [tenant, "discovery", "keys"]) if tenant_ok(tenant) => {
            jwks(&core, true).await
        }
        (&Method::POST, ["pgward-dev", "token"]) => mint_endpoint(&core, req).await,
        _ => respond(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    };
    Ok(resp)
}

/// The v1 or v2 OIDC discovery document Entra serves for `tenant` (a GUID, `common` or
/// `organizations`).
fn discovery(core: &Core, tenant: &str, v1: bool) -> Response<Body> {
    if !lock_state(&core.state).discovery_available {
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "discovery disabled by test"}),
        );
    }
    // Azure names the tenant in a tenant's document, `{tenantid}` in common's.
    let tid = if is_guid(tenant) {
        tenant
    } else {
        "{tenantid}"
    };
    let base = format!("{}/{tenant}", core.authority);
    let (issuer, version, response_types) = if v1 {
        let types = json!([
            "code",
            "id_token",
            "code id_token",
            "token id_token",
            "token"
        ]);
        (core.issuer_v1(tid), "", types)
    } else {
        let types = json!(["code", "id_token", "token"]);
        (core.issuer_v2(tid), "/v2.0", types)
    };
    respond(
        StatusCode::OK,
        &json!({
            "issuer": issuer,
            "jwks_uri": format!("{base}/discovery{version}/keys"),
            "token_endpoint": format!("{base}/oauth2{version}/token"),
            "authorization_endpoint": format!("{base}/oauth2{version}/authorize"),
            "response_types_supported": response_types,
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }),
    )
}

/// The JWKS (the same keys for v1 and v2, as Entra publishes them), counted per version.
async fn jwks(core: &Core, v1: bool) -> Response<Body> {
    let (available, delay, keys) = {
        let mut st = lock_state(&core.state);
        if v1 {
            st.v1_jwks_fetches += 1;
        } else {
            st.jwks_fetches += 1;
        }
        let keys: Vec<Value> = st
            .keys
            .iter()
            .filter(|k| k.published)
            .map(|k| jwk_of(&k.kid, &k.pair))
            .collect();
        (st.jwks_available, st.jwks_delay, keys)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if available {
        respond(StatusCode::OK, &json!({ "keys": keys }))
    } else {
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "jwks disabled by test"}),
        )
    }
}

async fn mint_endpoint(core: &Core, req: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return respond(
                StatusCode::BAD_REQUEST,
                &json!({"error": format!("reading body: {e}")}),
            )
        }
    };
    let spec: TokenSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return respond(
                StatusCode::BAD_REQUEST,
                &json!({"error": format!("bad TokenSpec: {e}")}),
            )
        }
    };
    match core.mint(&spec) {
        Ok(token) => respond(
            StatusCode::OK,
            &json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_on": now_secs() + spec.lifetime_secs,
            }),
        ),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": e.to_string()}),
        ),
    }
}
