//! Token validation and the JWKS cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use tokio::sync::{watch, Mutex};

use crate::config::{check_endpoint_url, is_guid, ConfigError, EntraConfig, GroupsOverage};
use crate::error::{AuthError, Shown};
use crate::graph::{member_objects, GraphTokenSource};
use crate::http::send_json;
use crate::identity::{Identity, IdentityKind};

/// Longest token accepted (the password message may carry up to this).
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Retry delays after a failed scheduled refresh (doubling up to the cap).
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_CAP: Duration = Duration::from_secs(300);

/// Validates Entra access tokens presented as passwords. Cheap to clone; clones share
/// one JWKS cache. The background refresh stops once every clone is dropped.
#[derive(Clone)]
pub struct Validator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("authority", &self.inner.cfg.authority)
            .field("ready", &self.is_ready())
            .finish()
    }
}

/// A failure to start the validator (only configuration problems: an unreachable
/// issuer is not an error at start, it keeps the validator not ready).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The `[entra]` section is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `groups_overage = "graph"` needs a [`GraphTokenSource`].
    #[error("entra.groups_overage = \"graph\" needs a Graph credential, and none was supplied")]
    NoGraphCredential,
}

struct Inner {
    cfg: EntraConfig,
    http: reqwest::Client,
    graph: Option<Arc<dyn GraphTokenSource>>,
    tenants: Vec<String>,
    audiences: Vec<String>,
    /// alias (lower case) -> oid (lower case)
    aliases: HashMap<String, String>,
    /// `v1_issuer` from the configuration; without it the v1 discovery document decides.
    v1_override: Option<String>,
    keys: RwLock<KeyState>,
    /// Serialises fetches: one discovery+JWKS fetch in flight at a time.
    fetch: Mutex<FetchState>,
    /// Bumped after every completed fetch, so callers who waited on someone else's
    /// fetch know to look again instead of fetching themselves.
    generation: AtomicU64,
    ready: watch::Sender<bool>,
    jwks_fetches: AtomicU64,
}

#[derive(Default)]
struct KeyState {
    keys: Option<Arc<HashMap<String, DecodingKey>>>,
    /// The v2 discovery `issuer` with the tenant replaced by `{tenantid}`.
    v2_issuer: Option<String>,
    /// The v1 discovery `issuer` likewise (`None` with the `v1_issuer` override).
    v1_issuer: Option<String>,
    last_error: Option<String>,
}

/// What one discovery + JWKS round loaded.
struct Loaded {
    v2_issuer: String,
    v1_issuer: Option<String>,
    keys: HashMap<String, DecodingKey>,
}

#[derive(Default)]
struct FetchState {
    last_unknown_kid_fetch: Option<Instant>,
}

impl Validator {
    /// Validates `cfg`, loads the signing keys once (a failure is logged and retried in
    /// the background; [`Validator::is_ready`] stays false until keys are loaded) and
    /// starts the background refresh. Must be called inside a Tokio runtime.
    pub async fn start(cfg: EntraConfig, http: reqwest::Client) -> Result<Validator, StartError> {
        Self::start_with_graph(cfg, http, None).await
    }

    /// Like [`Validator::start`], with the credential used for Graph groups-overage lookups.
    pub async fn start_with_graph(
        cfg: EntraConfig,
        http: reqwest::Client,
        graph: Option<Arc<dyn GraphTokenSource>>,
    ) -> Result<Validator, StartError> {
        cfg.validate()?;
        if cfg.groups_overage == GroupsOverage::Graph && graph.is_none() {
            return Err(StartError::NoGraphCredential);
        }
        // Explicit, so a second jsonwebtoken backend enabled elsewhere in the build can't
        // make its automatic choice ambiguous. Err only means one is already installed.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();

        let mut audiences = Vec::new();
        for a in &cfg.audiences {
            let base = a.trim_end_matches('/').to_string();
            audiences.push(format!("{base}/"));
            audiences.push(base);
        }
        let inner = Arc::new(Inner {
            tenants: cfg.tenants(),
            audiences,
            aliases: cfg
                .aliases
                .iter()
                .map(|(a, o)| (a.to_lowercase(), o.to_ascii_lowercase()))
                .collect(),
            v1_override: cfg.v1_issuer.clone(),
            cfg,
            http,
            graph,
            keys: RwLock::new(KeyState::default()),
            fetch: Mutex::new(FetchState::default()),
            generation: AtomicU64::new(0),
            ready: watch::channel(false).0,
            jwks_fetches: AtomicU64::new(0),
        });
        let ok = inner.refresh("start").await;
        tokio::spawn(refresh_loop(Arc::downgrade(&inner), ok));
        Ok(Validator { inner })
    }

    /// True once a key set has been loaded (it stays loaded: failed refreshes keep it).
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Waits up to `timeout` for [`Validator::is_ready`]; returns whether it became ready.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.ready.subscribe();
        let ready = tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await;
        matches!(ready, Ok(Ok(_)))
    }

    /// Why keys are not loaded or the last refresh failed, for /readyz and the log.
    pub fn last_error(&self) -> Option<String> {
        self.inner.read_keys().last_error.clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &EntraConfig {
        &self.inner.cfg
    }

    /// How many discovery + JWKS rounds were attempted since start (for metrics and tests).
    pub fn jwks_fetch_count(&self) -> u64 {
        self.inner.jwks_fetches.load(Ordering::Relaxed)
    }

    /// Fetches the discovery documents and JWKS now (what the background task does hourly).
    /// Returns whether it succeeded; on failure the previous keys are kept.
    pub async fn refresh_now(&self) -> bool {
        self.inner.refresh("requested").await
    }

    /// Verifies `token` and that `user_name` (the client's startup user) is bound to it.
    /// Every refusal carries its exact reason; see [`AuthError`].
    pub async fn validate(&self, token: &str, user_name: &str) -> Result<Identity, AuthError> {
        self.validate_at(token, user_name, SystemTime::now()).await
    }

    /// [`Validator::validate`] with an explicit clock.
    pub async fn validate_at(
        &self,
        token: &str,
        user_name: &str,
        now: SystemTime,
    ) -> Result<Identity, AuthError> {
        let inner = &self.inner;
        let jws = parse_compact(token)?;
        let key = inner.key_for(&jws.kid).await?;
        // RS256 was established by parse_compact before any key was looked up.
        let verified = jsonwebtoken::crypto::verify(
            jws.signature,
            jws.signing_input.as_bytes(),
            &key,
            Algorithm::RS256,
        )
        .unwrap_or(false);
        if !verified {
            return Err(AuthError::BadSignature(Shown::new(&jws.kid)));
        }
        let claims = decode_json_part(jws.payload)?;
        let mut identity = inner.check_claims(&claims, now)?;
        inner.check_binding(&identity, user_name)?;
        if identity.groups.is_empty() && has_groups_overage(&claims) {
            identity.groups = inner.resolve_overage(&identity.oid).await?;
        }
        Ok(identity)
    }
}

/// The parts of a compact JWS after the header checks.
struct Jws<'a> {
    kid: String,
    payload: &'a str,
    signature: &'a str,
    signing_input: &'a str,
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_json_part(part: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed("a part is not base64url"))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(AuthError::Malformed("a part is not a JSON object")),
        Err(_) => Err(AuthError::Malformed("a part is not JSON")),
    }
}

/// Splits and checks the header: three base64url parts, `alg` exactly RS256, no `crit`,
/// a `kid`. `jku`, `x5u`, `jwk`, `x5c` are ignored: keys come only from the tenant's JWKS.
fn parse_compact(token: &str) -> Result<Jws<'_>, AuthError> {
    let token = token.trim_matches(|c: char| c.is_ascii_whitespace());
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLarge(token.len()));
    }
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => return Err(AuthError::Malformed("an encrypted token (JWE), not a JWS")),
        _ => return Err(AuthError::Malformed("not three dot-separated parts")),
    }
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    if h.is_empty() || p.is_empty() || !is_b64url(h) || !is_b64url(p) || !is_b64url(s) {
        return Err(AuthError::Malformed("a part is empty or not base64url"));
    }
    let header = decode_json_part(h)?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a,
        Some(_) => return Err(AuthError::Malformed("alg is not a string")),
        None => return Err(AuthError::Malformed("header has no alg")),
    };
    if alg != "RS256" {
        return Err(AuthError::UnsupportedAlg(Shown::new(alg)));
    }
    if s.is_empty() {
        return Err(AuthError::Malformed("signature is empty"));
    }
    if header.contains_key("crit") {
        // RFC 7515 4.1.11: unknown critical extensions must be refused; Entra sends none.
        return Err(AuthError::Malformed(
            "crit header parameters are not supported",
        ));
    }
    let kid = match header.get("kid") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(Value::String(_)) | None => return Err(AuthError::MissingKid),
        Some(_) => return Err(AuthError::Malformed("kid is not a string")),
    };
    let signing_input = &token[..h.len() + 1 + p.len()];
    Ok(Jws {
        kid,
        payload: p,
        signature: s,
        signing_input,
    })
}

fn has_groups_overage(claims: &Map<String, Value>) -> bool {
    if claims.contains_key("groups") {
        return false;
    }
    let named = claims
        .get("_claim_names")
        .and_then(Value::as_object)
        .is_some_and(|m| m.contains_key("groups"));
    // v1 implicit-flow tokens signal the same with hasgroups = true.
    named || claims.get("hasgroups") == Some(&Value::Bool(true))
}

fn str_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(AuthError::InvalidClaim(name)),
    }
}

fn required_str<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, AuthError> {
    str_claim(claims, name)?.ok_or(AuthError::MissingClaim(name))
}

fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            // Fractional NumericDate is allowed by RFC 7519; truncation is harmless here.
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(AuthError::InvalidClaim(name)),
        Some(_) => Err(AuthError::InvalidClaim(name)),
    }
}

fn string_list(claims: &Map<String, Value>, name: &'static str) -> Result<Vec<String>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or(AuthError::InvalidClaim(name))
            })
            .collect(),
        Some(_) => Err(AuthError::InvalidClaim(name)),
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

impl Inner {
    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, KeyState> {
        // A poisoned lock only means a panic elsewhere mid-update of plain data; the
        // data itself is always a consistent snapshot (we swap whole Arcs).
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn current_keys(&self) -> Option<Arc<HashMap<String, DecodingKey>>> {
        self.read_keys().keys.clone()
    }

    /// The key for `kid`, re-fetching the JWKS once if it is unknown (rate limited,
    /// single flight).
    async fn key_for(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        if let Some(k) = self.current_keys().and_then(|m| m.get(kid).cloned()) {
            return Ok(k);
        }
        let seen = self.generation.load(Ordering::Acquire);
        let mut st = self.fetch.lock().await;
        // Someone else's fetch finished while we waited for the lock: use its result.
        if self.generation.load(Ordering::Acquire) == seen {
            let min = Duration::from_secs(self.cfg.unknown_kid_min_interval_secs);
            let allowed = st.last_unknown_kid_fetch.is_none_or(|t| t.elapsed() >= min);
            if allowed {
                st.last_unknown_kid_fetch = Some(Instant::now());
                tracing::info!(kid = %Shown::new(kid), "token names an unknown key id; re-fetching the JWKS");
                self.refresh_locked("unknown kid").await;
            } else {
                tracing::debug!(kid = %Shown::new(kid), "unknown key id; JWKS re-fetch rate limited");
            }
        }
        drop(st);
        match self.current_keys() {
            None => Err(AuthError::KeysUnavailable(
                self.read_keys()
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "no key set loaded yet".to_string()),
            )),
            Some(m) => m
                .get(kid)
                .cloned()
                .ok_or_else(|| AuthError::UnknownKid(Shown::new(kid))),
        }
    }

    async fn refresh(&self, why: &str) -> bool {
        let _guard = self.fetch.lock().await;
        self.refresh_locked(why).await
    }

    /// Discovery then JWKS; the caller holds the fetch lock. Failures keep the old keys.
    async fn refresh_locked(&self, why: &str) -> bool {
        let result = self.fetch_keys().await;
        let ok = result.is_ok();
        {
            let mut ks = self.keys.write().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(loaded) => {
                    tracing::info!(
                        why,
                        keys = loaded.keys.len(),
                        v2_issuer = %loaded.v2_issuer,
                        v1_issuer = loaded.v1_issuer.as_deref().or(self.v1_override.as_deref()).unwrap_or(""),
                        "loaded Entra discovery documents and signing keys"
                    );
                    ks.keys = Some(Arc::new(loaded.keys));
                    ks.v2_issuer = Some(loaded.v2_issuer);
                    ks.v1_issuer = loaded.v1_issuer;
                    ks.last_error = None;
                }
                Err(e) => {
                    tracing::warn!(why, error = %e, kept_previous = ks.keys.is_some(), "Entra key refresh failed");
                    ks.last_error = Some(e);
                }
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
        if ok {
            self.ready.send_replace(true);
        }
        ok
    }

    /// One discovery document: its issuer as a template (`{tenantid}` for the tenant) and
    /// its JWKS URL.
    async fn discover(&self, url: &str) -> Result<(String, String), String> {
        let doc = send_json(self.http.get(url)).await?;
        let issuer = doc
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{url}: no issuer"))?;
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{url}: no jwks_uri"))?;
        check_endpoint_url("jwks_uri", jwks_uri).map_err(|e| format!("{url}: {e}"))?;
        let template = issuer_template(issuer, &self.cfg.tenant_id);
        // The issuer is compared with the token's tid substituted: one that doesn't name the
        // tenant would bind tokens of every tenant to it. Entra's always names it.
        let parsed = reqwest::Url::parse(issuer).ok();
        let is_url = parsed
            .as_ref()
            .is_some_and(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some());
        if !is_url || !template.contains("{tenantid}") {
            return Err(format!(
                "{url}: issuer {issuer:?} is not a URL naming tenant {}",
                self.cfg.tenant_id
            ));
        }
        Ok((template, jwks_uri.to_owned()))
    }

    /// The v2 and (unless overridden) v1 discovery documents, then the signing keys both
    /// name. Any failure fails the whole round: the previous state stays in force.
    async fn fetch_keys(&self) -> Result<Loaded, String> {
        let (v2_issuer, v2_jwks) = self.discover(&self.cfg.discovery_url()).await?;
        let v1 = match self.v1_override {
            Some(_) => None,
            None => Some(self.discover(&self.cfg.v1_discovery_url()).await?),
        };

        self.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        let jwks = send_json(self.http.get(&v2_jwks)).await?;
        let mut keys = parse_jwks(&jwks).map_err(|e| format!("{v2_jwks}: {e}"))?;
        if let Some((_, v1_jwks)) = v1.as_ref().filter(|(_, u)| *u != v2_jwks) {
            // Entra publishes the same keys under both; a key only one set names still
            // verifies only tokens that pass every other check.
            let jwks = send_json(self.http.get(v1_jwks)).await?;
            for (kid, key) in parse_jwks(&jwks).map_err(|e| format!("{v1_jwks}: {e}"))? {
                keys.entry(kid).or_insert(key);
            }
        }
        Ok(Loaded {
            v2_issuer,
            v1_issuer: v1.map(|(issuer, _)| issuer),
            keys,
        })
    }

    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Identity, AuthError> {
        let now_s = unix_secs(now);
        let skew = self.cfg.clock_skew_secs;
        let skew_i = i64::try_from(skew).unwrap_or(i64::MAX);

        let exp = time_claim(claims, "exp")?.ok_or(AuthError::MissingClaim("exp"))?;
        if now_s > exp.saturating_add(skew_i) {
            return Err(AuthError::Expired {
                exp,
                now: now_s,
                skew,
            });
        }
        if let Some(nbf) = time_claim(claims, "nbf")? {
            if now_s.saturating_add(skew_i) < nbf {
                return Err(AuthError::NotYetValid {
                    nbf,
                    now: now_s,
                    skew,
                });
            }
        }

        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => self.audiences.iter().any(|x| x == a),
            Some(Value::Array(list)) => list.iter().any(|v| {
                v.as_str()
                    .is_some_and(|a| self.audiences.iter().any(|x| x == a))
            }),
            None => return Err(AuthError::MissingClaim("aud")),
            Some(_) => return Err(AuthError::InvalidClaim("aud")),
        };
        if !aud_ok {
            let shown = match claims.get("aud") {
                Some(Value::String(a)) => a.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            return Err(AuthError::WrongAudience(Shown::new(&shown)));
        }

        let tid_raw = required_str(claims, "tid")?;
        let tid = tid_raw.to_ascii_lowercase();
        if !self.tenants.contains(&tid) {
            return Err(AuthError::WrongTenant(Shown::new(tid_raw)));
        }

        let iss = required_str(claims, "iss")?;
        // Exact comparison; the tenant is substituted as the token spells it in tid.
        let matches = |template: &str| template.replace("{tenantid}", tid_raw) == iss;
        let (v2_template, v1_template) = {
            let ks = self.read_keys();
            let v1 = self.v1_override.clone().or_else(|| ks.v1_issuer.clone());
            (ks.v2_issuer.clone(), v1)
        };
        let token_version = if v2_template.as_deref().is_some_and(matches) {
            2
        } else if v1_template.as_deref().is_some_and(matches) {
            1
        } else {
            return Err(AuthError::WrongIssuer(Shown::new(iss)));
        };

        let oid = required_str(claims, "oid")?;
        if !is_guid(oid) {
            return Err(AuthError::InvalidClaim("oid"));
        }
        let upn = str_claim(claims, "upn")?
            .or(str_claim(claims, "preferred_username")?)
            .or(str_claim(claims, "unique_name")?)
            .map(str::to_string);
        let appid = str_claim(claims, "appid")?
            .or(str_claim(claims, "azp")?)
            .map(str::to_string);
        let mi_name = str_claim(claims, "xms_mirid")?
            .and_then(|m| m.trim_end_matches('/').rsplit('/').next())
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let kind = if mi_name.is_some() {
            IdentityKind::ManagedIdentity
        } else {
            match str_claim(claims, "idtyp")? {
                Some("app") => IdentityKind::ServicePrincipal,
                Some("user") => IdentityKind::Person,
                // Without idtyp: delegated tokens carry scp or a user name; app-only ones neither.
                _ if claims.contains_key("scp") || upn.is_some() => IdentityKind::Person,
                _ => IdentityKind::ServicePrincipal,
            }
        };
        let expires_at = if exp >= 0 {
            UNIX_EPOCH + Duration::from_secs(exp.unsigned_abs())
        } else {
            UNIX_EPOCH
        };
        Ok(Identity {
            oid: oid.to_ascii_lowercase(),
            tid,
            kind,
            upn,
            appid,
            mi_name,
            groups: string_list(claims, "groups")?,
            roles: string_list(claims, "roles")?,
            expires_at,
            token_version,
        })
    }

    fn check_binding(&self, id: &Identity, user_name: &str) -> Result<(), AuthError> {
        let user = user_name.trim();
        let lower = user.to_lowercase();
        let bound = (!user.is_empty())
            && ((id.kind == IdentityKind::Person
                && id.upn.as_ref().is_some_and(|u| u.to_lowercase() == lower))
                || (id.kind == IdentityKind::ManagedIdentity
                    && id
                        .mi_name
                        .as_ref()
                        .is_some_and(|m| m.to_lowercase() == lower))
                || lower == id.oid
                || self.aliases.get(&lower).is_some_and(|oid| *oid == id.oid));
        if bound {
            Ok(())
        } else {
            Err(AuthError::UserNameNotBound {
                user: Shown::new(user_name),
                oid: id.oid.clone(),
            })
        }
    }

    async fn resolve_overage(&self, oid: &str) -> Result<Vec<String>, AuthError> {
        match (&self.cfg.groups_overage, &self.graph) {
            (GroupsOverage::Graph, Some(src)) => {
                member_objects(&self.http, &self.cfg.graph_endpoint, oid, src.as_ref())
                    .await
                    .map_err(AuthError::GraphFailed)
            }
            _ => Err(AuthError::GroupsOverage),
        }
    }
}

/// The discovery issuer as a template: Entra's tenant-specific document names the tenant,
/// the multi-tenant ones say `{tenantid}`; either way the token's `tid` is substituted.
fn issuer_template(issuer: &str, tenant_id: &str) -> String {
    let lower = issuer.to_ascii_lowercase();
    match lower.find(&tenant_id.to_ascii_lowercase()) {
        Some(i) => format!(
            "{}{{tenantid}}{}",
            &issuer[..i],
            &issuer[i + tenant_id.len()..]
        ),
        None => issuer.to_string(),
    }
}

/// The usable keys of a JWKS: RSA signing keys with a kid. Others are skipped.
fn parse_jwks(jwks: &Value) -> Result<HashMap<String, DecodingKey>, String> {
    let list = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let mut out = HashMap::new();
    for k in list {
        let field = |n: &str| k.get(n).and_then(Value::as_str);
        if field("kty") != Some("RSA") {
            continue;
        }
        if field("use").is_some_and(|u| u != "sig") || field("alg").is_some_and(|a| a != "RS256") {
            continue;
        }
        let (Some(kid), Some(n), Some(e)) = (field("kid"), field("n"), field("e")) else {
            continue;
        };
        match DecodingKey::from_rsa_components(n, e) {
            Ok(key) => {
                out.insert(kid.to_string(), key);
            }
            Err(err) => tracing::warn!(kid, error = %err, "skipping unusable JWKS key"),
        }
    }
    if out.is_empty() {
        return Err("no usable RSA signing key".into());
    }
    Ok(out)
}

async fn refresh_loop(inner: Weak<Inner>, mut last_ok: bool) {
    let mut retry = RETRY_FIRST;
    loop {
        let delay = match inner.upgrade() {
            None => return,
            Some(i) if last_ok => Duration::from_secs(i.cfg.jwks_refresh_secs),
            Some(i) => retry.min(Duration::from_secs(i.cfg.jwks_refresh_secs)),
        };
        tokio::time::sleep(delay).await;
        let Some(i) = inner.upgrade() else { return };
        last_ok = i.refresh("scheduled").await;
        retry = if last_ok {
            RETRY_FIRST
        } else {
            (retry * 2).min(RETRY_CAP)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_templates() {
        let t = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        assert_eq!(
            issuer_template(&format!("https://login.microsoftonline.com/{t}/v2.0"), t),
            "https://login.microsoftonline.com/{tenantid}/v2.0"
        );
        assert_eq!(
            issuer_template("https://login.microsoftonline.com/{tenantid}/v2.0", t),
            "https://login.microsoftonline.com/{tenantid}/v2.0"
        );
        // v1, from a sovereign cloud's discovery: another host than the authority's.
        assert_eq!(
            issuer_template(&format!("https://sts.chinacloudapi.cn/{t}/"), t),
            "https://sts.chinacloudapi.cn/{tenantid}/"
        );
        assert_eq!(
            issuer_template("https://sts.example/", t),
            "https://sts.example/"
        );
    }

    #[test]
    fn compact_checks() {
        assert_eq!(parse_compact("").err(), Some(AuthError::Missing));
        assert!(matches!(
            parse_compact("a.b").err(),
            Some(AuthError::Malformed(_))
        ));
        assert!(matches!(
            parse_compact("a.b.c.d.e").err(),
            Some(AuthError::Malformed(_))
        ));
        assert!(matches!(
            parse_compact("a+.b.c").err(),
            Some(AuthError::Malformed(_))
        ));
        let big = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            parse_compact(&big).err(),
            Some(AuthError::TooLarge(MAX_TOKEN_LEN + 1))
        );
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k","crit":["x"]}"#);
        assert!(matches!(
            parse_compact(&format!("{h}.e30.c2ln")).err(),
            Some(AuthError::Malformed(_))
        ));
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
        assert_eq!(
            parse_compact(&format!("{h}.e30.c2ln")).err(),
            Some(AuthError::MissingKid)
        );
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k"}"#);
        assert!(matches!(
            parse_compact(&format!("{h}.e30.c2ln")).err(),
            Some(AuthError::UnsupportedAlg(_))
        ));
    }

    #[test]
    fn overage_detection() {
        let m = |v: Value| v.as_object().cloned().unwrap();
        assert!(has_groups_overage(&m(
            serde_json::json!({"_claim_names": {"groups": "src1"}})
        )));
        assert!(has_groups_overage(&m(
            serde_json::json!({"hasgroups": true})
        )));
        assert!(!has_groups_overage(&m(
            serde_json::json!({"groups": [], "_claim_names": {"groups": "src1"}})
        )));
        assert!(!has_groups_overage(&m(serde_json::json!({}))));
    }
}
