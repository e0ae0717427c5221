//! State pgward replicas share (`[cluster]`, docs/operations.md "Several replicas"), kept in
//! a store operators already run: a PostgreSQL control database (pg.rs) or Redis (redis.rs).
//!
//! What is shared, and how little the hot path pays for it:
//! - instance names: each replica claims its name at start and refuses a duplicate;
//! - connection slots: one per session under a per-identity or per-role cap, taken at sign-in
//!   (one store round trip, only when a cap applies) and given back when the session ends; a
//!   dead replica's slots come back when its store connection closes (PostgreSQL) or its
//!   leases expire (Redis);
//! - statement rates: a token bucket per identity in the store, from which each replica
//!   leases a tenth of a second's worth at a time, so statements never wait for the store;
//! - failed sign-ins per client address;
//! - cancel keys: a CancelRequest no local session matches is broadcast, and the replica
//!   holding the session checks the key and forwards it.
//!
//! Every call is bounded by `timeout_ms`; a failed call marks the store down until the
//! background reconnect succeeds, and callers follow `on_store_error`.

mod metrics;
mod pg;
mod redis;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::{info, warn};

pub use metrics::ClusterMetrics;
pub use pgward_upstream::{CredentialConfig, TlsMode};

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `postgres` or `redis`; the matching table below must be present.
    pub backend: Backend,
    /// What a replica does while the store cannot be reached: `local` (each replica enforces
    /// its share of every limit; cancels stay local) or `refuse` (53300 / 53400).
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Bound on each store call; past it the call counts as failed.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a replica's claims outlive it when it vanishes without closing its store
    /// connection (heartbeats run at a third of it). Default 15.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// The fewest replicas you run. While the store is unreachable (`on_store_error =
    /// "local"`), each replica enforces limits divided by the larger of this and the
    /// replicas alive at the last heartbeat. Default 1.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    pub postgres: Option<PostgresStore>,
    pub redis: Option<RedisStore>,
}

fn default_timeout_ms() -> u64 {
    500
}
fn default_lease_secs() -> u64 {
    15
}
fn default_replicas() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Postgres,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnStoreError {
    #[default]
    Local,
    Refuse,
}

/// `[cluster.postgres]`: the control database, reached like an upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresStore {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// The database holding the `pgward_cluster` schema (created at start).
    pub database: String,
    #[serde(default)]
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    pub credential: CredentialConfig,
}

fn default_pg_port() -> u16 {
    5432
}
fn default_connect_timeout() -> u64 {
    5
}

/// `[cluster.redis]`: Redis 6+ or Azure Managed Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStore {
    pub host: String,
    #[serde(default = "default_redis_port")]
    pub port: u16,
    /// TLS with the host name verified (Azure Managed Redis requires it). Default true.
    #[serde(default = "default_true")]
    pub tls: bool,
    /// PEM bundle of CAs trusted; without it, the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key pgward writes (several pgward deployments can share a Redis).
    /// Keep a `{hash tag}` in it on a clustered Redis: pgward's scripts use several keys.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// How pgward signs in: an Entra identity (`user` = the identity's object id, as Azure
    /// Managed Redis expects; the token is sent again before it expires) or a password.
    /// Absent: no AUTH.
    pub credential: Option<CredentialConfig>,
}

fn default_redis_port() -> u16 {
    6380
}
fn default_true() -> bool {
    true
}
fn default_prefix() -> String {
    // A hash tag: every key in one slot of a clustered Redis, as multi-key scripts need.
    "{pgward}:".to_owned()
}

impl ClusterConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match (self.backend, &self.postgres, &self.redis) {
            (Backend::Postgres, None, _) => {
                p.push("[cluster] backend = \"postgres\" needs a [cluster.postgres] table".into())
            }
            (Backend::Redis, _, None) => {
                p.push("[cluster] backend = \"redis\" needs a [cluster.redis] table".into())
            }
            _ => {}
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            p.push("[cluster] timeout_ms must be between 1 and 60000".into());
        }
        if !(3..=3600).contains(&self.lease_secs) {
            p.push("[cluster] lease_secs must be between 3 and 3600".into());
        }
        if self.replicas == 0 {
            p.push("[cluster] replicas must be at least 1".into());
        }
        if let Some(pg) = &self.postgres {
            p.extend(
                pg.credential
                    .problems()
                    .into_iter()
                    .map(|e| format!("[cluster.postgres.credential] {e}")),
            );
        }
        if let Some(r) = &self.redis {
            if let Some(c) = &r.credential {
                p.extend(
                    c.problems()
                        .into_iter()
                        .map(|e| format!("[cluster.redis.credential] {e}")),
                );
            }
        }
        p
    }

    /// Makes relative paths relative to the configuration file's directory.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        };
        if let Some(pg) = &mut self.postgres {
            fix(&mut pg.ca_file);
            pg.credential.resolve_paths(base);
        }
        if let Some(r) = &mut self.redis {
            fix(&mut r.ca_file);
            if let Some(c) = &mut r.credential {
                c.resolve_paths(base);
            }
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
}

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unreachable (reconnecting in the background)")]
    Down,
    #[error("the store did not answer within {0} ms")]
    Timeout(u64),
    #[error("{0}")]
    Failed(String),
}

impl StoreError {
    fn label(&self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Timeout(_) => "timeout",
            Self::Failed(_) => "failed",
        }
    }
}

/// A capped count: every session of `key` takes one of `limit` slots.
#[derive(Debug, Clone)]
pub struct Scope {
    pub key: String,
    pub limit: u32,
}

/// One slot held in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotId {
    pub scope: String,
    pub n: u64,
}

/// What `acquire` found.
#[derive(Debug)]
pub enum Acquired {
    /// A slot of every scope; released when dropped.
    Held(Slots),
    /// The scope at this index is full; nothing is held.
    Full(usize),
}

/// Slots held for one session; dropping them gives them back (in the background).
#[derive(Debug)]
pub struct Slots {
    cluster: Arc<Cluster>,
    ids: Vec<SlotId>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut self.ids);
        if ids.is_empty() {
            return;
        }
        let cluster = self.cluster.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { cluster.release(ids).await });
            }
            // No runtime (process exit): the store connection closing frees them.
            Err(_) => cluster.store.forget(&ids),
        }
    }
}

/// A statement-rate lease: tokens taken from the shared bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease {
    pub granted: f64,
    /// When the bucket was short: how long until it holds a whole token again.
    pub wait: Duration,
}

/// Takes a cancel passed on by another replica: the (pid, secret) its client sent. True when
/// a session of this replica matched both (and was cancelled).
pub type CancelSink = Arc<dyn Fn(u32, [u8; 4]) -> bool + Send + Sync>;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend stores. Every method is bounded by the caller (`Cluster::call`).
pub(crate) trait Store: Send + Sync {
    /// Whether the store connection is up (calls fail fast with `Down` otherwise).
    fn is_up(&self) -> bool;
    /// Drops the connection after a call was abandoned mid-way; it is opened again in the
    /// background.
    fn reset(&self);
    /// Claims the instance name; false when a live replica holds it.
    fn claim(&self) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Renews the claim and leases; returns the replicas alive.
    fn heartbeat(&self) -> BoxFuture<'_, Result<u32, StoreError>>;
    fn acquire<'a>(
        &'a self,
        scopes: &'a [Scope],
    ) -> BoxFuture<'a, Result<Result<Vec<SlotId>, usize>, StoreError>>;
    fn release(&self, ids: Vec<SlotId>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Forgets slots without a store call (no runtime left).
    fn forget(&self, ids: &[SlotId]);
    fn lease<'a>(
        &'a self,
        key: &'a str,
        rate: f64,
        burst: f64,
        want: f64,
    ) -> BoxFuture<'a, Result<Lease, StoreError>>;
    /// Counts a failed sign-in from `addr`; returns the failures in the current window.
    fn auth_failed<'a>(
        &'a self,
        addr: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<u32, StoreError>>;
    fn auth_cleared<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    fn send_cancel<'a>(&'a self, message: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Cancels one replica may pass to the store per second (and at once), whatever their
/// sources: a flood from many addresses can't turn the store into its amplifier.
const REMOTE_CANCELS_PER_SECOND: f64 = 100.0;

/// The shared store, as the proxy sees it.
pub struct Cluster {
    store: Box<dyn Store>,
    config: ClusterConfig,
    instance: String,
    pub metrics: ClusterMetrics,
    /// Replicas alive at the last heartbeat (at least 1).
    replicas: AtomicU32,
    /// Whether the last call failed (for the logged transitions).
    failing: AtomicBool,
    remote_cancels: PerSecond,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("backend", &self.config.backend)
            .field("instance", &self.instance)
            .finish()
    }
}

impl Cluster {
    /// Connects to the store, creates what it needs there and claims `instance`. Fails when
    /// the store can't be reached at start or a live replica holds the name (a claim left by
    /// a replica that vanished is waited for, up to `lease_secs`). `on_cancel` receives the
    /// cancels other replicas pass on.
    pub async fn start(
        config: ClusterConfig,
        instance: &str,
        on_cancel: CancelSink,
    ) -> Result<Arc<Self>, String> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let metrics = ClusterMetrics::default();
        let boot = random_hex::<8>();
        let store: Box<dyn Store> = match config.backend {
            Backend::Postgres => Box::new(
                pg::PgStore::connect(&config, instance, &boot, on_cancel, metrics.clone()).await?,
            ),
            Backend::Redis => Box::new(
                redis::RedisStore::connect(&config, instance, &boot, on_cancel, metrics.clone())
                    .await?,
            ),
        };
        let cluster = Arc::new(Self {
            store,
            replicas: AtomicU32::new(config.replicas.max(1)),
            config,
            instance: instance.to_owned(),
            metrics,
            failing: AtomicBool::new(false),
            remote_cancels: PerSecond::new(REMOTE_CANCELS_PER_SECOND),
        });
        let deadline = Instant::now() + cluster.config.lease() + Duration::from_secs(1);
        loop {
            match cluster.store.claim().await {
                Ok(true) => break,
                Ok(false) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(false) => {
                    return Err(format!(
                        "instance name {instance:?} is already claimed by a running replica; give each replica its own name (PGWARD_INSTANCE)"
                    ))
                }
                Err(e) => return Err(format!("cannot claim instance name {instance:?}: {e}")),
            }
        }
        cluster.metrics.store_up.set(1);
        if let Ok(n) = cluster.store.heartbeat().await {
            cluster.replicas.store(n.max(1), Ordering::Relaxed);
            cluster.metrics.replicas.set(i64::from(n));
        }
        tokio::spawn(heartbeats(Arc::downgrade(&cluster)));
        info!(backend = ?cluster.config.backend, instance, "cluster store connected; instance name claimed");
        Ok(cluster)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn on_store_error(&self) -> OnStoreError {
        self.config.on_store_error
    }

    /// Whether calls may be tried now (the store connection is up).
    pub fn is_up(&self) -> bool {
        self.store.is_up()
    }

    /// What local shares divide by: the replicas alive at the last heartbeat, or
    /// `[cluster] replicas` if that is more (a stricter share never admits too many).
    pub fn replicas(&self) -> u32 {
        self.replicas
            .load(Ordering::Relaxed)
            .max(self.config.replicas)
            .max(1)
    }

    /// A store call, bounded, timed and counted.
    async fn call<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let r = if self.store.is_up() {
            let t = Instant::now();
            match tokio::time::timeout(self.config.timeout(), f).await {
                Ok(r) => {
                    self.metrics.latency(op, t.elapsed());
                    r
                }
                Err(_) => {
                    self.store.reset();
                    Err(StoreError::Timeout(self.config.timeout_ms))
                }
            }
        } else {
            Err(StoreError::Down)
        };
        match &r {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!("cluster store answering again");
                }
            }
            Err(e) => {
                self.metrics.error(op, e.label());
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!(op, error = %e, mode = ?self.config.on_store_error, "cluster store call failed; following on_store_error until it answers");
                }
            }
        }
        r
    }

    /// Takes a slot of every scope, or none.
    pub async fn acquire(self: &Arc<Self>, scopes: &[Scope]) -> Result<Acquired, StoreError> {
        match self.call("acquire", self.store.acquire(scopes)).await? {
            Ok(ids) => Ok(Acquired::Held(Slots {
                cluster: self.clone(),
                ids,
            })),
            Err(i) => Ok(Acquired::Full(i)),
        }
    }

    async fn release(&self, ids: Vec<SlotId>) {
        // A failed release is not retried: the store connection is reset, which frees
        // everything it held, and the slots still in use are taken again on reconnect.
        let _ = self.call("release", self.store.release(ids)).await;
    }

    /// Leases up to `want` statements from `key`'s shared bucket.
    pub async fn lease(
        &self,
        key: &str,
        rate: f64,
        burst: f64,
        want: f64,
    ) -> Result<Lease, StoreError> {
        let r = self
            .call("lease", self.store.lease(key, rate, burst, want))
            .await;
        self.metrics.lease(match &r {
            Ok(l) if l.granted > 0.0 => "granted",
            Ok(_) => "empty",
            Err(_) => "error",
        });
        r
    }

    /// Counts a failed sign-in from `addr` across replicas; the failures in its window.
    pub async fn auth_failed(&self, addr: &str, window: Duration) -> Result<u32, StoreError> {
        self.call("auth_failed", self.store.auth_failed(addr, window))
            .await
    }

    pub async fn auth_cleared(&self, addr: &str) -> Result<(), StoreError> {
        self.call("auth_cleared", self.store.auth_cleared(addr))
            .await
    }

    /// Whether one more cancel may be passed to the store now (`REMOTE_CANCELS_PER_SECOND`).
    pub fn allow_remote_cancel(&self) -> bool {
        self.remote_cancels.allow(Instant::now())
    }

    /// Passes a cancel no local session matched to every replica; the one holding the
    /// session checks the secret and forwards it.
    pub async fn send_cancel(&self, pid: u32, secret: &[u8; 4]) -> Result<(), StoreError> {
        let message = cancel_message(pid, secret, &self.instance);
        let r = self
            .call("send_cancel", self.store.send_cancel(&message))
            .await;
        self.metrics
            .remote_cancel(if r.is_ok() { "sent" } else { "send_failed" });
        r
    }
}

/// A token bucket of `rate` per second holding at most one second's worth.
struct PerSecond {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl PerSecond {
    fn new(rate: f64) -> Self {
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    fn allow(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        let tokens = (s.0 + elapsed * self.rate).min(self.rate);
        let ok = tokens >= 1.0;
        *s = (if ok { tokens - 1.0 } else { tokens }, now);
        ok
    }
}

/// Renews the claim and counts live replicas every third of `lease_secs`, while the
/// cluster is in use.
async fn heartbeats(cluster: std::sync::Weak<Cluster>) {
    let every = match cluster.upgrade() {
        Some(c) => c.config.lease() / 3,
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(c) = cluster.upgrade() else { return };
        if let Ok(n) = c.call("heartbeat", c.store.heartbeat()).await {
            c.replicas.store(n.max(1), Ordering::Relaxed);
            c.metrics.replicas.set(i64::from(n));
        }
        c.metrics.store_up.set(i64::from(c.store.is_up()));
    }
}

/// `pid secret-hex sender`: what a cancel broadcast carries.
fn cancel_message(pid: u32, secret: &[u8; 4], sender: &str) -> String {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    format!("{pid} {hex} {sender}")
}

/// The (pid, secret) of a cancel broadcast, unless this replica sent it.
pub(crate) fn parse_cancel(message: &str, me: &str) -> Option<(u32, [u8; 4])> {
    let mut parts = message.splitn(3, ' ');
    let pid = parts.next()?.parse().ok()?;
    let hex = parts.next()?;
    let sender = parts.next()?;
    if sender == me || hex.len() != 8 {
        return None;
    }
    let mut secret = [0u8; 4];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((pid, secret))
}

pub(crate) fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    // The OS RNG failing is not recoverable in a security proxy.
    getrandom::fill(&mut b).expect("OS random number generator unavailable");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Backoff between reconnects: 250 ms doubling to 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    (Duration::from_millis(250) * 2u32.pow(attempt.min(5))).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_messages_round_trip_and_skip_their_sender() {
        let m = cancel_message(4242, &[0xde, 0xad, 0x00, 0x01], "pgward-a");
        assert_eq!(m, "4242 dead0001 pgward-a");
        assert_eq!(
            parse_cancel(&m, "pgward-b"),
            Some((4242, [0xde, 0xad, 0, 1]))
        );
        assert_eq!(parse_cancel(&m, "pgward-a"), None);
        assert_eq!(parse_cancel("1 dead00 x", "y"), None);
        assert_eq!(parse_cancel("x dead0001 x", "y"), None);
        assert_eq!(parse_cancel("1 zzzz0001 x", "y"), None);
    }

    #[test]
    fn config_problems_are_reported() {
        let c: ClusterConfig =
            toml::from_str("backend = \"postgres\"\ntimeout_ms = 0\nlease_secs = 1\nreplicas = 0")
                .unwrap();
        let p = c.problems().join("\n");
        assert!(p.contains("[cluster.postgres]"), "{p}");
        assert!(p.contains("timeout_ms"), "{p}");
        assert!(p.contains("lease_secs"), "{p}");
        assert!(p.contains("replicas"), "{p}");
        let ok: ClusterConfig = toml::from_str(
            "backend = \"redis\"\non_store_error = \"refuse\"\n[redis]\nhost = \"r\"\n",
        )
        .unwrap();
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        assert_eq!(ok.on_store_error, OnStoreError::Refuse);
        assert!(ok.redis.unwrap().tls);
    }

    #[test]
    fn remote_cancels_are_bounded_per_replica() {
        let gate = PerSecond::new(REMOTE_CANCELS_PER_SECOND);
        let t0 = Instant::now();
        let at_once = (0..1000).filter(|_| gate.allow(t0)).count();
        assert_eq!(at_once, 100);
        assert!(!gate.allow(t0 + Duration::from_millis(5)));
        assert!(
            gate.allow(t0 + Duration::from_millis(20)),
            "refills at the rate"
        );
    }
}
