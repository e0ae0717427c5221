//! `TokenSource`: one credential for one scope, its token cached and refreshed in the
//! background so that a caller never waits on the identity endpoint while a valid
//! token exists.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::config::{
    authority_host_or_env, load_secret, parse_endpoint, AuthorityHost, CredentialConfig,
};
use crate::secret::Secret;
use crate::transport::{Route, Transport};

/// Azure Database for PostgreSQL (flexible server).
pub const POSTGRES_SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";
/// Azure SQL Database.
pub const AZURE_SQL_SCOPE: &str = "https://database.windows.net/.default";
/// Azure Monitor ingestion.
pub const MONITOR_SCOPE: &str = "https://monitor.azure.com/.default";

/// Refresh at most this long before expiry (or at half-life, whichever comes first).
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// A token this close to expiry is not handed out: the sign-in it is used for must
/// finish before it expires.
const MIN_REMAINING: Duration = Duration::from_secs(10);
/// One attempt may take this long (IMDS retries internally for up to ~72 s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How soon a caller without a token may trigger another attempt.
const MIN_NUDGE_GAP: Duration = Duration::from_secs(1);
/// How long `current` waits for the first token when none was fetched yet.
pub const DEFAULT_FIRST_WAIT: Duration = Duration::from_secs(3);

/// Why no token could be handed out. The message names the cause, never a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error("no token yet: the first fetch did not finish within {0:?}")]
    FirstFetchPending(Duration),
    #[error("no valid token: {0}")]
    Unavailable(String),
}

/// Where a credential stands, for /readyz and logs.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The credential kind (`managed-identity`, ...).
    pub kind: &'static str,
    /// A usable token (or a static password) is available now.
    pub ready: bool,
    pub expires_at: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
    pub refreshes_ok: u64,
    pub refreshes_failed: u64,
}

impl Health {
    /// Seconds until the cached token expires (negative once expired); None for a
    /// static password or before the first token.
    pub fn seconds_until_expiry(&self) -> Option<f64> {
        let at = self.expires_at?;
        Some(match at.duration_since(SystemTime::now()) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        })
    }
}

struct Token {
    value: Secret,
    expires_at: SystemTime,
}

#[derive(Default)]
struct State {
    token: Option<Token>,
    last_success: Option<SystemTime>,
    last_error: Option<String>,
    /// Attempts finished (success or failure).
    attempts: u64,
}

struct Inner {
    name: String,
    kind: &'static str,
    scope: String,
    credential: Arc<dyn TokenCredential>,
    state: Mutex<State>,
    /// Bumped after each finished attempt; `current` waits on it.
    finished: watch::Sender<u64>,
    /// Wakes the refresher early when a caller found no valid token.
    nudge: Arc<Notify>,
    started: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
}

enum Source {
    Static(Secret),
    Azure(Arc<Inner>),
}

/// pgward's credential for one upstream (or service) and one scope. Cheap to clone.
#[derive(Clone)]
pub struct TokenSource {
    user: String,
    source: Arc<Source>,
    first_wait: Duration,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("user", &self.user)
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Builds the credential without contacting anything (usable by `pgward check`).
    /// `name` labels logs (the upstream's name). Call [`TokenSource::start`] to begin
    /// fetching; `current` also starts it on first use.
    pub fn new(name: &str, cfg: &CredentialConfig, scope: &str) -> Result<Self, String> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(format!(
                "credential type \"{}\": {}",
                cfg.type_name(),
                problems.join("; ")
            ));
        }
        let source = match cfg {
            CredentialConfig::Password {
                password,
                password_file,
                password_env,
                ..
            } => Source::Static(load_secret(
                "password",
                password.as_ref(),
                password_file.as_deref(),
                password_env.as_deref(),
            )?),
            _ => Source::Azure(Arc::new(Inner {
                name: name.to_owned(),
                kind: cfg.type_name(),
                scope: scope.to_owned(),
                credential: azure_credential(cfg)?,
                state: Mutex::new(State::default()),
                finished: watch::channel(0).0,
                nudge: Arc::new(Notify::new()),
                started: AtomicBool::new(false),
                ok: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            })),
        };
        Ok(Self {
            user: cfg.user().to_owned(),
            source: Arc::new(source),
            first_wait: DEFAULT_FIRST_WAIT,
        })
    }

    /// How long `current` waits for the first token (default 3 s).
    pub fn with_first_wait(mut self, wait: Duration) -> Self {
        self.first_wait = wait;
        self
    }

    /// The login role.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn kind(&self) -> &'static str {
        match &*self.source {
            Source::Static(_) => "password",
            Source::Azure(i) => i.kind,
        }
    }

    /// Starts the background refresh (idempotent; needs a Tokio runtime). It stops
    /// when the last clone of this source is dropped.
    pub fn start(&self) {
        let Source::Azure(inner) = &*self.source else {
            return;
        };
        if inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(inner);
        let nudge = inner.nudge.clone();
        tokio::spawn(refresh_loop(weak, nudge));
    }

    /// The secret to present now: the cached token while it is valid (never waiting on
    /// the endpoint), the static password, or an error. Without any token yet it waits
    /// up to the first-fetch bound; after a failed fetch it answers at once.
    pub async fn current(&self) -> Result<Secret, CredentialError> {
        let inner = match &*self.source {
            Source::Static(s) => return Ok(s.clone()),
            Source::Azure(inner) => inner,
        };
        if let Some(t) = inner.valid_token() {
            return Ok(t);
        }
        self.start();
        let mut rx = inner.finished.subscribe();
        let deadline = tokio::time::Instant::now() + self.first_wait;
        loop {
            let (attempts, last_error) = {
                let st = inner.lock();
                (st.attempts, st.last_error.clone())
            };
            if let Some(t) = inner.valid_token() {
                return Ok(t);
            }
            if attempts > 0 {
                // A fetch already failed (or produced a token that has since expired):
                // ask for a prompt retry and answer now rather than hang the client.
                inner.nudge.notify_one();
                return Err(CredentialError::Unavailable(
                    last_error.unwrap_or_else(|| "the token expired and was not renewed".into()),
                ));
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(CredentialError::FirstFetchPending(self.first_wait));
            }
        }
    }

    /// Waits until a token is available or `timeout` passes; true when ready. For a
    /// bounded wait at startup.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let inner = match &*self.source {
            Source::Static(_) => return true,
            Source::Azure(inner) => inner,
        };
        self.start();
        let mut rx = inner.finished.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if inner.valid_token().is_some() {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    pub fn health(&self) -> Health {
        match &*self.source {
            Source::Static(_) => Health {
                kind: "password",
                ready: true,
                ..Health::default()
            },
            Source::Azure(inner) => {
                let st = inner.lock();
                Health {
                    kind: inner.kind,
                    ready: st.token.as_ref().is_some_and(|t| usable(t.expires_at)),
                    expires_at: st.token.as_ref().map(|t| t.expires_at),
                    last_success: st.last_success,
                    last_error: st.last_error.clone(),
                    refreshes_ok: inner.ok.load(Ordering::Relaxed),
                    refreshes_failed: inner.failed.load(Ordering::Relaxed),
                }
            }
        }
    }
}

fn usable(expires_at: SystemTime) -> bool {
    expires_at
        .duration_since(SystemTime::now())
        .is_ok_and(|left| left > MIN_REMAINING)
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State inconsistent (plain field
        // writes), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn valid_token(&self) -> Option<Secret> {
        let st = self.lock();
        st.token
            .as_ref()
            .filter(|t| usable(t.expires_at))
            .map(|t| t.value.clone())
    }

    /// One fetch; returns when to try next.
    async fn attempt(&self, failures: &mut u32) -> Duration {
        let scopes = [self.scope.as_str()];
        let result =
            tokio::time::timeout(ATTEMPT_TIMEOUT, self.credential.get_token(&scopes, None)).await;
        let now = SystemTime::now();
        let outcome = match result {
            Ok(Ok(t)) => {
                let ts = t.expires_on.unix_timestamp();
                let expires_at = SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64);
                if usable(expires_at) {
                    Ok((Secret::new(t.token.secret()), expires_at))
                } else {
                    Err("the identity endpoint returned a token that is already expired or about to".to_owned())
                }
            }
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err(format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())),
        };
        let next = match outcome {
            Ok((value, expires_at)) => {
                let lifetime = expires_at.duration_since(now).unwrap_or_default();
                let mut st = self.lock();
                let renewed = st.token.as_ref().map(|t| t.value != value).unwrap_or(true);
                st.token = Some(Token { value, expires_at });
                st.last_success = Some(now);
                st.last_error = None;
                st.attempts += 1;
                drop(st);
                self.ok.fetch_add(1, Ordering::Relaxed);
                *failures = 0;
                if renewed {
                    info!(upstream = %self.name, credential = self.kind, expires_in_secs = lifetime.as_secs(), "obtained a new upstream access token");
                }
                refresh_delay(lifetime)
            }
            Err(why) => {
                let mut st = self.lock();
                st.last_error = Some(why.clone());
                st.attempts += 1;
                let have_valid = st.token.as_ref().is_some_and(|t| usable(t.expires_at));
                drop(st);
                self.failed.fetch_add(1, Ordering::Relaxed);
                *failures = failures.saturating_add(1);
                let delay = backoff(*failures);
                warn!(upstream = %self.name, credential = self.kind, error = %why, still_have_valid_token = have_valid, retry_in_ms = delay.as_millis() as u64, "could not obtain the upstream access token");
                delay
            }
        };
        self.finished.send_modify(|n| *n += 1);
        next
    }
}

async fn refresh_loop(weak: Weak<Inner>, nudge: Arc<Notify>) {
    let mut failures = 0u32;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let delay = inner.attempt(&mut failures).await;
        drop(inner);
        let started = tokio::time::Instant::now();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = nudge.notified() => {
                // A caller found no valid token: retry soon, but not in a tight loop.
                tokio::time::sleep_until(started + MIN_NUDGE_GAP.min(delay)).await;
            }
        }
    }
}

/// Next refresh: at half-life or 5 minutes before expiry, whichever comes first, and
/// not sooner than 2 s (a very short-lived token is not fetched in a tight loop).
/// The SDK keeps its own cache and only asks the endpoint again within 5 minutes of
/// expiry; the 2 s margin makes sure a refresh "5 minutes before" lands inside that.
fn refresh_delay(lifetime: Duration) -> Duration {
    let half = lifetime / 2;
    let before = lifetime.saturating_sub(REFRESH_BEFORE_EXPIRY);
    let d = if before.is_zero() {
        half
    } else {
        half.min(before + REFRESH_MARGIN)
    };
    d.max(Duration::from_secs(2))
}

const REFRESH_MARGIN: Duration = Duration::from_secs(2);

/// Exponential backoff from 1 s to 60 s with ±25 % jitter, so that many pgward
/// instances don't retry in step.
fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let base = exp.min(BACKOFF_MAX);
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() {
        u16::from_le_bytes(b) as f64 / u16::MAX as f64
    } else {
        0.5
    };
    base.mul_f64(0.75 + r * 0.5)
}

fn error_chain(e: &azure_core::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    // SDK messages end with a troubleshooting link on its own lines: keep the log one line.
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn client_options(route: Route) -> Result<ClientOptions, String> {
    let transport = Transport::new(route)?;
    Ok(ClientOptions {
        transport: Some(azure_core::http::Transport::new(Arc::new(transport))),
        // TokenSource retries with its own backoff; the SDK answering fast keeps
        // /readyz and the logs current.
        retry: RetryOptions::none(),
        ..ClientOptions::default()
    })
}

/// `cloud` for a configured authority host, and the transport route it needs.
fn authority(
    host: Option<&str>,
) -> Result<(Option<Arc<azure_core::cloud::CloudConfiguration>>, Route), String> {
    let Some(h) = host else {
        return Ok((None, Route::AsIs));
    };
    let a = AuthorityHost::parse(h)?;
    let mut custom = azure_core::cloud::CustomConfiguration::default();
    custom.authority_host = a.https.clone();
    let cloud = azure_core::cloud::CloudConfiguration::Custom(custom);
    let route = match a.plaintext {
        Some((host, port)) => Route::PlaintextAuthority { host, port },
        None => Route::AsIs,
    };
    Ok((Some(Arc::new(cloud)), route))
}

/// Client options for an Entra credential that signs in at `host` (the public cloud's
/// authority when `None`).
fn authority_options(host: Option<&str>) -> Result<ClientOptions, String> {
    let (cloud, route) = authority(host)?;
    let mut options = client_options(route)?;
    options.cloud = cloud;
    Ok(options)
}

fn azure_credential(cfg: &CredentialConfig) -> Result<Arc<dyn TokenCredential>, String> {
    let sdk = |e: azure_core::Error| error_chain(&e);
    Ok(match cfg {
        CredentialConfig::ManagedIdentity {
            client_id,
            object_id,
            resource_id,
            endpoint,
            header,
            header_env,
            ..
        } => {
            let user_assigned_id = match (client_id, object_id, resource_id) {
                (Some(c), _, _) => Some(UserAssignedId::ClientId(c.clone())),
                (_, Some(o), _) => Some(UserAssignedId::ObjectId(o.clone())),
                (_, _, Some(r)) => Some(UserAssignedId::ResourceId(r.clone())),
                _ => None,
            };
            let route = match endpoint {
                Some(e) => {
                    let header = match (header, header_env) {
                        (Some(h), _) => Some(h.clone()),
                        (None, Some(var)) => {
                            Some(Secret::new(std::env::var(var).map_err(|_| {
                                format!("environment variable {var} (header_env) is not set")
                            })?))
                        }
                        (None, None) => None,
                    };
                    Route::Identity {
                        endpoint: parse_endpoint(e)?,
                        header,
                    }
                }
                None => Route::AsIs,
            };
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id,
                client_options: client_options(route)?,
            }))
            .map_err(sdk)?
        }
        CredentialConfig::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
            authority_host,
            ..
        } => {
            let host = authority_host_or_env(authority_host.as_deref());
            let client_options = authority_options(host.as_deref())?;
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions { client_options },
                client_id: client_id.clone(),
                tenant_id: tenant_id.clone(),
                token_file_path: token_file.clone(),
            }))
            .map_err(sdk)?
        }
        CredentialConfig::ClientSecret {
            tenant_id,
            client_id,
            secret,
            secret_file,
            secret_env,
            authority_host,
            ..
        } => {
            let value = load_secret(
                "secret",
                secret.as_ref(),
                secret_file.as_deref(),
                secret_env.as_deref(),
            )?;
            let client_options = authority_options(authority_host.as_deref())?;
            ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                azure_core::credentials::Secret::new(value.expose().to_owned()),
                Some(ClientSecretCredentialOptions { client_options }),
            )
            .map_err(sdk)?
        }
        CredentialConfig::AzureCli {
            tenant_id,
            subscription,
            ..
        } => AzureCliCredential::new(Some(AzureCliCredentialOptions {
            tenant_id: tenant_id.clone(),
            subscription: subscription.clone(),
            ..Default::default()
        }))
        .map_err(sdk)?,
        CredentialConfig::Password { .. } => {
            return Err("a password is not an Azure credential".into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_schedule() {
        // An hour-long token: at half-life.
        assert_eq!(
            refresh_delay(Duration::from_secs(3600)),
            Duration::from_secs(1800)
        );
        // Eight minutes: five minutes before expiry comes first.
        assert_eq!(
            refresh_delay(Duration::from_secs(480)),
            Duration::from_secs(182)
        );
        // Shorter than five minutes: half-life, never below 2 s.
        assert_eq!(
            refresh_delay(Duration::from_secs(200)),
            Duration::from_secs(100)
        );
        assert_eq!(
            refresh_delay(Duration::from_secs(1)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for n in 1..40 {
            let b = backoff(n);
            let base = BACKOFF_FIRST
                .saturating_mul(1 << (n - 1).min(16))
                .min(BACKOFF_MAX);
            assert!(
                b >= base.mul_f64(0.74) && b <= base.mul_f64(1.26),
                "{n}: {b:?}"
            );
        }
    }

    #[tokio::test]
    async fn password_is_static() {
        let cfg: CredentialConfig =
            toml::from_str("type = \"password\"\nuser = \"u\"\npassword = \"pw\"").unwrap();
        let s = TokenSource::new("main", &cfg, POSTGRES_SCOPE).unwrap();
        assert_eq!(s.current().await.unwrap().expose(), "pw");
        assert!(s.health().ready);
        assert_eq!(s.user(), "u");
    }

    #[test]
    fn invalid_config_is_refused_with_every_problem() {
        let cfg: CredentialConfig = toml::from_str(
            "type = \"client-secret\"\nuser = \"u\"\ntenant_id = \"\"\nclient_id = \"c\"",
        )
        .unwrap();
        let e = TokenSource::new("main", &cfg, POSTGRES_SCOPE).unwrap_err();
        assert!(
            e.contains("tenant_id") && e.contains("exactly one of secret"),
            "{e}"
        );
    }
}
