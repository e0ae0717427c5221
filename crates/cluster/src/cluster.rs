//! The shared store as the proxy sees it: every call bounded, timed and counted, the
//! instance name claimed at start, heartbeats, and slots given back when dropped.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::{Backend, ClusterConfig, OnStoreError};
use crate::metrics::ClusterMetrics;
use crate::store::{
    cancel_message, random_hex, CancelSink, Lease, Scope, SlotId, Store, StoreError,
};
use crate::{pg, redis};

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
        let mut pending = self
            .cluster
            .releases
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending.extend(ids);
        drop(pending);
        self.cluster.release_due.notify_one();
    }
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
    /// Slots of ended sessions, given back together by `releases` (so a new session's
    /// acquire rarely waits behind a release on the store connection).
    releases: Mutex<Vec<SlotId>>,
    release_due: tokio::sync::Notify,
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
            releases: Mutex::new(Vec::new()),
            release_due: tokio::sync::Notify::new(),
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
                // A slow or briefly lost store at start is waited for like a stale claim.
                Err(e) if Instant::now() < deadline => {
                    warn!(error = %e, "cannot claim the instance name yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
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
        tokio::spawn(releases(cluster.clone()));
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

    /// A store call, bounded by `timeout_ms`, timed and counted.
    async fn call<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.call_within(op, self.config.timeout(), f).await
    }

    async fn call_within<T>(
        &self,
        op: &'static str,
        bound: Duration,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let r = if self.store.is_up() {
            let t = Instant::now();
            match tokio::time::timeout(bound, f).await {
                Ok(r) => {
                    self.metrics.latency(op, t.elapsed());
                    r
                }
                Err(_) => {
                    self.store.reset();
                    Err(StoreError::Timeout(bound.as_millis() as u64))
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
        if ids.is_empty() {
            return;
        }
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

/// How long ended sessions' slots wait to be given back together: a new connection arriving
/// meanwhile takes its slot first. Caps stay exact: a slot counts until it is given back.
const RELEASE_DELAY: Duration = Duration::from_millis(10);

/// Gives back ended sessions' slots, a batch at a time, for as long as the process runs.
async fn releases(cluster: Arc<Cluster>) {
    loop {
        cluster.release_due.notified().await;
        tokio::time::sleep(RELEASE_DELAY).await;
        let ids = std::mem::take(&mut *cluster.releases.lock().unwrap_or_else(|p| p.into_inner()));
        cluster.release(ids).await;
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
        // No client waits for a heartbeat: it may take up to its period (a saturated machine
        // can delay it past `timeout_ms` without the store being slow for anyone).
        let bound = every.max(c.config.timeout());
        if let Ok(n) = c.call_within("heartbeat", bound, c.store.heartbeat()).await {
            c.replicas.store(n.max(1), Ordering::Relaxed);
            c.metrics.replicas.set(i64::from(n));
        }
        c.metrics.store_up.set(i64::from(c.store.is_up()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
