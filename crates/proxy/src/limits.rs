//! Per-identity and per-role limits (`[limits]`): concurrent sessions and statement rates,
//! the throttling an API gateway gives, at the database door. Limits are reloaded with the
//! configuration (SIGHUP) and apply to sessions from then on; counts carry over.
//!
//! Over a connection limit the client gets 53300 (too_many_connections) at sign-in; over a
//! statement rate, 53400 (configuration_limit_exceeded) for that statement only, and the
//! session stays usable.
//!
//! With `[cluster]`, the limits hold across replicas: a session under a cap takes a slot of
//! each cap in the store at sign-in, and statements are taken from a local bucket filled by
//! leases from the identity's shared bucket (a tenth of a second's worth at a time, fetched
//! in the background before the local one runs dry), so no statement waits for the store.
//! While the store can't be reached, `on_store_error` decides: `local` enforces this
//! replica's share (the limit divided by the replicas alive at the last heartbeat), `refuse`
//! refuses what needs the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use pgward_cluster::{Acquired, Cluster, OnStoreError, Scope, Slots};
use serde::Deserialize;

/// `[limits]`. Every key is optional; nothing is limited by default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent sessions one identity may hold (all roles together).
    pub connections_per_identity: Option<u32>,
    /// Statements per second one identity may run (all its sessions together); a token
    /// bucket that refills at this rate.
    pub statements_per_second: Option<f64>,
    /// Statements an identity may run at once after being idle (the bucket's size).
    /// Default: one second's worth, at least 1.
    pub statement_burst: Option<u32>,
    /// Overrides for callers holding a policy role, and caps on a role's members together.
    #[serde(default)]
    pub roles: Vec<RoleLimits>,
}

/// `[[limits.roles]]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleLimits {
    /// A policy role name.
    pub role: String,
    /// Concurrent sessions of all the role's members together.
    pub connections: Option<u32>,
    /// Per-identity overrides for the role's members. An identity holding several roles
    /// gets the most generous override among them (roles add permissions).
    pub connections_per_identity: Option<u32>,
    pub statements_per_second: Option<f64>,
    pub statement_burst: Option<u32>,
}

impl LimitsConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let rate_ok = |r: Option<f64>| r.is_none_or(|r| r.is_finite() && r > 0.0);
        if !rate_ok(self.statements_per_second) {
            p.push("[limits] statements_per_second must be a positive number".to_owned());
        }
        if self.connections_per_identity == Some(0) || self.statement_burst == Some(0) {
            p.push(
                "[limits] connections_per_identity and statement_burst must be at least 1"
                    .to_owned(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.roles {
            if !seen.insert(r.role.as_str()) {
                p.push(format!(
                    "[[limits.roles]] role {:?} is listed twice",
                    r.role
                ));
            }
            if !rate_ok(r.statements_per_second) {
                p.push(format!(
                    "[[limits.roles]] {:?}: statements_per_second must be a positive number",
                    r.role
                ));
            }
            if r.connections == Some(0)
                || r.connections_per_identity == Some(0)
                || r.statement_burst == Some(0)
            {
                p.push(format!(
                    "[[limits.roles]] {:?}: connections, connections_per_identity and statement_burst must be at least 1",
                    r.role
                ));
            }
        }
        p
    }

    /// The per-identity limits for a caller holding `roles`.
    fn for_identity(&self, roles: &[String]) -> IdentityLimits {
        let held: Vec<&RoleLimits> = self
            .roles
            .iter()
            .filter(|r| roles.contains(&r.role))
            .collect();
        // The most generous value among the held roles' overrides, else the global one.
        fn most<T: PartialOrd>(values: impl Iterator<Item = T>, global: Option<T>) -> Option<T> {
            values.reduce(|a, b| if b > a { b } else { a }).or(global)
        }
        let connections = most(
            held.iter().filter_map(|r| r.connections_per_identity),
            self.connections_per_identity,
        );
        let rate = most(
            held.iter().filter_map(|r| r.statements_per_second),
            self.statements_per_second,
        );
        let burst = most(
            held.iter().filter_map(|r| r.statement_burst),
            self.statement_burst,
        )
        .map(f64::from);
        IdentityLimits {
            connections,
            rate: rate.map(|r| (r, burst.unwrap_or(r.ceil()).max(1.0))),
        }
    }
}

struct IdentityLimits {
    connections: Option<u32>,
    /// (per second, burst)
    rate: Option<(f64, f64)>,
}

/// Why a session was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Identity {
        limit: u32,
    },
    Role {
        role: String,
        limit: u32,
    },
    /// `[cluster] on_store_error = "refuse"` and the store can't be reached.
    StoreUnavailable,
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::Identity { limit } => format!(
                "too many connections for this identity (limit {limit}); close one and retry"
            ),
            Refusal::Role { role, limit } => format!(
                "too many connections for members of role {role} (limit {limit}); retry later"
            ),
            Refusal::StoreUnavailable => "pgward cannot count this connection against its limits: the store its replicas share is unreachable; retry shortly".to_owned(),
        }
    }
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Identity { .. } => "identity_connections",
            Refusal::Role { .. } => "role_connections",
            Refusal::StoreUnavailable => "cluster_store_unavailable",
        }
    }
}

#[derive(Default)]
struct Counts {
    per_identity: HashMap<String, u32>,
    per_role: HashMap<String, u32>,
    buckets: HashMap<String, Arc<Mutex<Bucket>>>,
}

/// Why a statement was refused by the rate limit (53400).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateRefusal {
    /// Over the identity's rate (statements per second).
    OverRate(f64),
    /// `[cluster] on_store_error = "refuse"`: no lease can be had from the unreachable store.
    StoreUnavailable,
}

/// Statements leased from the shared bucket at a time, in seconds of the rate (at least 1).
const LEASE_SECONDS: f64 = 0.1;

/// Shared buckets outlive their identity's last session on this replica (a reconnect needs no
/// lease first); past this many buckets, those idle for `KEPT_BUCKET_IDLE` are dropped.
const KEPT_BUCKETS: usize = 1024;
const KEPT_BUCKET_IDLE: Duration = Duration::from_secs(60);

/// The limits in force and the live counts. One per server.
pub struct Limiter {
    config: RwLock<Arc<LimitsConfig>>,
    counts: Mutex<Counts>,
    /// The store shared with other replicas (`[cluster]`), set once at start.
    cluster: OnceLock<Arc<Cluster>>,
}

impl Limiter {
    pub fn new(config: LimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            config: RwLock::new(Arc::new(config)),
            counts: Mutex::new(Counts::default()),
            cluster: OnceLock::new(),
        })
    }

    /// Counts sessions and statements across replicas through `cluster` from now on.
    pub fn share_with(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Takes new limits (SIGHUP). Sessions already in count against the new caps.
    pub fn replace(&self, config: LimitsConfig) {
        if let Ok(mut c) = self.config.write() {
            *c = Arc::new(config);
        }
    }

    fn config(&self) -> Arc<LimitsConfig> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic while holding the lock can't leave the counts half-updated in a way that
        // matters more than refusing everyone would.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a session of `identity` (its object id, or the user name without sign-in)
    /// holding policy `roles`, or says which limit it hits. The returned permit releases the
    /// counts when dropped and carries the identity's statement-rate bucket. Counts this
    /// replica only; see `admit_shared`.
    pub fn admit(self: &Arc<Self>, identity: &str, roles: &[String]) -> Result<Permit, Refusal> {
        self.admit_with(identity, roles, 1, None).map(|(p, _)| p)
    }

    /// `admit`, across replicas when `[cluster]` is on: a slot of each cap that applies is
    /// taken in the store (one round trip, none when no cap applies), and a new statement
    /// bucket gets its first lease before the session starts.
    pub async fn admit_shared(
        self: &Arc<Self>,
        identity: &str,
        roles: &[String],
    ) -> Result<Permit, Refusal> {
        let Some(cluster) = self.cluster.get().cloned() else {
            return self.admit(identity, roles);
        };
        let cfg = self.config();
        let limits = cfg.for_identity(roles);
        let mut scopes = Vec::new();
        let mut refusals = Vec::new();
        if let Some(limit) = limits.connections {
            scopes.push(Scope {
                key: format!("identity {identity}"),
                limit,
            });
            refusals.push(Refusal::Identity { limit });
        }
        for r in cfg.roles.iter().filter(|r| roles.contains(&r.role)) {
            if let Some(limit) = r.connections {
                scopes.push(Scope {
                    key: format!("role {}", r.role),
                    limit,
                });
                refusals.push(Refusal::Role {
                    role: r.role.clone(),
                    limit,
                });
            }
        }
        let mut divisor = 1;
        let mut slots = None;
        if !scopes.is_empty() {
            match cluster.acquire(&scopes).await {
                Ok(Acquired::Held(s)) => slots = Some(s),
                Ok(Acquired::Full(i)) => {
                    return Err(refusals.swap_remove(i));
                }
                Err(_) => match cluster.on_store_error() {
                    OnStoreError::Refuse => {
                        cluster.metrics.fallback("connection_refused");
                        return Err(Refusal::StoreUnavailable);
                    }
                    OnStoreError::Local => {
                        cluster.metrics.fallback("connection_local");
                        divisor = cluster.replicas();
                    }
                },
            }
        }
        let (mut permit, fresh) = self.admit_with(identity, roles, divisor, Some(&cluster))?;
        permit.slots = slots;
        // A new session's first statement must not wait for a lease: one is fetched now if
        // the identity's bucket here is new or empty.
        if let Some(b) = &permit.bucket {
            let empty = fresh || b.lock().map(|g| g.tokens < 1.0).unwrap_or(true);
            if empty {
                refill(b.clone()).await;
            }
        }
        Ok(permit)
    }

    /// The local count, with caps divided by `divisor` (this replica's share while the store
    /// is unreachable). Also says whether the identity's rate bucket was created now.
    fn admit_with(
        self: &Arc<Self>,
        identity: &str,
        roles: &[String],
        divisor: u32,
        cluster: Option<&Arc<Cluster>>,
    ) -> Result<(Permit, bool), Refusal> {
        let cfg = self.config();
        let limits = cfg.for_identity(roles);
        let share = |limit: u32| limit.div_ceil(divisor.max(1));
        let capped_roles: Vec<(&str, u32)> = cfg
            .roles
            .iter()
            .filter(|r| roles.contains(&r.role))
            .filter_map(|r| r.connections.map(|c| (r.role.as_str(), share(c))))
            .collect();
        let mut counts = self.counts();
        let mine = counts.per_identity.get(identity).copied().unwrap_or(0);
        if let Some(limit) = limits.connections.map(share) {
            if mine >= limit {
                return Err(Refusal::Identity { limit });
            }
        }
        for (role, limit) in &capped_roles {
            if counts.per_role.get(*role).copied().unwrap_or(0) >= *limit {
                return Err(Refusal::Role {
                    role: (*role).to_owned(),
                    limit: *limit,
                });
            }
        }
        *counts.per_identity.entry(identity.to_owned()).or_default() += 1;
        let roles_counted: Vec<String> = roles.to_vec();
        for r in &roles_counted {
            *counts.per_role.entry(r.clone()).or_default() += 1;
        }
        if counts.buckets.len() > KEPT_BUCKETS {
            // Shared buckets of identities without sessions, idle for a while, go.
            let Counts {
                buckets,
                per_identity,
                ..
            } = &mut *counts;
            buckets.retain(|id, b| {
                per_identity.contains_key(id)
                    || b.lock()
                        .map(|g| g.at.elapsed() < KEPT_BUCKET_IDLE)
                        .unwrap_or(false)
            });
        }
        let mut fresh = false;
        let bucket = limits.rate.map(|(rate, burst)| {
            let b = counts
                .buckets
                .entry(identity.to_owned())
                .or_insert_with(|| {
                    fresh = true;
                    let mut b = Bucket::new(rate, burst);
                    if let Some(c) = cluster {
                        b.shared = Some(SharedRate::new(c.clone(), identity));
                        // Statements come from leases only.
                        b.tokens = 0.0;
                    }
                    Arc::new(Mutex::new(b))
                })
                .clone();
            // A reload may have changed the rate; keep the tokens, take the new shape.
            if let Ok(mut g) = b.lock() {
                g.reshape(rate, burst);
            }
            b
        });
        Ok((
            Permit {
                limiter: self.clone(),
                identity: identity.to_owned(),
                roles: roles_counted,
                bucket,
                slots: None,
            },
            fresh,
        ))
    }

    /// Sessions currently counted for an identity (for tests and the admin view).
    pub fn sessions_of(&self, identity: &str) -> u32 {
        self.counts()
            .per_identity
            .get(identity)
            .copied()
            .unwrap_or(0)
    }
}

/// A session's place in the counts; released on drop.
pub struct Permit {
    limiter: Arc<Limiter>,
    identity: String,
    roles: Vec<String>,
    bucket: Option<Arc<Mutex<Bucket>>>,
    /// The session's slots in the store (`[cluster]`); given back when dropped.
    slots: Option<Slots>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("identity", &self.identity)
            .field("roles", &self.roles)
            .field("rate_limited", &self.bucket.is_some())
            .finish()
    }
}

impl Permit {
    /// Takes one statement from the identity's rate bucket; refused when it is empty. A
    /// shared bucket running low asks the store for its next lease in the background.
    pub fn take_statement(&self) -> Result<(), RateRefusal> {
        let Some(b) = &self.bucket else {
            return Ok(());
        };
        let now = Instant::now();
        let mut g = b.lock().unwrap_or_else(|p| p.into_inner());
        let r = g.take(now);
        if g.wants_lease(now) {
            if let Some(s) = g.shared.as_mut() {
                s.refilling = true;
            }
            drop(g);
            tokio::spawn(refill(b.clone()));
        }
        r
    }

    /// Whether statements are rate-limited at all (lets the relay skip the check).
    pub fn limits_statements(&self) -> bool {
        self.bucket.is_some()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts();
        let last = match counts.per_identity.get_mut(&self.identity) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => true,
        };
        if last {
            counts.per_identity.remove(&self.identity);
            // The bucket goes with the identity's last session: a reconnect starts full,
            // which is at most one burst more — the same as waiting a moment. A shared bucket
            // (`[cluster]`) stays a while: it holds statements leased from the store, and a
            // reconnect then needs no lease before its first statement (pruned in `admit`).
            let shared = counts
                .buckets
                .get(&self.identity)
                .is_some_and(|b| b.lock().map(|g| g.shared.is_some()).unwrap_or(false));
            if !shared {
                counts.buckets.remove(&self.identity);
            }
        }
        for r in &self.roles {
            if let Some(n) = counts.per_role.get_mut(r) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.per_role.remove(r);
                }
            }
        }
    }
}

/// A token bucket.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    /// Filled from the identity's bucket in the store (`[cluster]`) instead of by the clock.
    shared: Option<SharedRate>,
}

struct SharedRate {
    cluster: Arc<Cluster>,
    key: String,
    /// A lease is being fetched.
    refilling: bool,
    /// The store's bucket was empty: when it will hold a token again.
    retry_at: Instant,
}

impl SharedRate {
    fn new(cluster: Arc<Cluster>, identity: &str) -> Self {
        Self {
            cluster,
            key: format!("rate {identity}"),
            refilling: false,
            retry_at: Instant::now(),
        }
    }
}

/// Fetches a lease for a shared bucket and adds it. Without the store: `local` fills the
/// bucket with this replica's share if it is empty, `refuse` leaves it as it is.
async fn refill(b: Arc<Mutex<Bucket>>) {
    fn lock(b: &Mutex<Bucket>) -> std::sync::MutexGuard<'_, Bucket> {
        b.lock().unwrap_or_else(|p| p.into_inner())
    }
    let (cluster, key, rate, burst, want) = {
        let mut g = lock(&b);
        let want = g.lease_size();
        let (rate, burst) = (g.rate, g.burst);
        let Some(s) = g.shared.as_mut() else { return };
        s.refilling = true;
        (s.cluster.clone(), s.key.clone(), rate, burst, want)
    };
    let lease = cluster.lease(&key, rate, burst, want).await;
    let mut g = lock(&b);
    let now = Instant::now();
    match lease {
        Ok(l) => {
            g.tokens += l.granted;
            if let Some(s) = g.shared.as_mut() {
                s.refilling = false;
                s.retry_at = if l.granted >= 1.0 {
                    now
                } else {
                    now + l
                        .wait
                        .clamp(Duration::from_millis(5), Duration::from_secs(1))
                };
            }
        }
        Err(_) => {
            let divisor = f64::from(cluster.replicas());
            if cluster.on_store_error() == OnStoreError::Local && g.tokens < 1.0 {
                g.tokens = (g.burst / divisor).max(1.0);
                g.at = now;
            }
            if let Some(s) = g.shared.as_mut() {
                s.refilling = false;
                s.retry_at = now + Duration::from_millis(100);
            }
        }
    }
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
            shared: None,
        }
    }

    /// Statements one lease asks for.
    fn lease_size(&self) -> f64 {
        (self.rate * LEASE_SECONDS)
            .max(1.0)
            .min(self.burst.max(1.0))
    }

    /// Whether a shared bucket should ask for its next lease now: running low, none in
    /// flight, the store's bucket not known to be empty, and the store up.
    fn wants_lease(&self, now: Instant) -> bool {
        let low = self.tokens < (self.lease_size() / 2.0).max(1.0);
        self.shared
            .as_ref()
            .is_some_and(|s| low && !s.refilling && now >= s.retry_at && s.cluster.is_up())
    }

    fn reshape(&mut self, rate: f64, burst: f64) {
        if rate > self.rate || burst > self.burst {
            // Raised limits apply at once: a session is not held to what the old, lower
            // limit left in its bucket. At most one burst more, as a reconnect would get.
            self.tokens = burst;
        } else {
            self.tokens = self.tokens.min(burst);
        }
        self.rate = rate;
        self.burst = burst;
    }

    fn take(&mut self, now: Instant) -> Result<(), RateRefusal> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        let mut refusal = RateRefusal::OverRate(self.rate);
        match &self.shared {
            None => self.tokens = (self.tokens + elapsed * self.rate).min(self.burst),
            // Leases fill it while the store is up.
            Some(s) if s.cluster.is_up() => {}
            Some(s) => match s.cluster.on_store_error() {
                OnStoreError::Local => {
                    // This replica's share of the rate, by the clock.
                    let n = f64::from(s.cluster.replicas());
                    let cap = (self.burst / n).max(1.0).max(self.tokens);
                    self.tokens = (self.tokens + elapsed * self.rate / n).min(cap);
                    if self.tokens < 1.0 {
                        s.cluster.metrics.fallback("rate_local");
                    }
                }
                OnStoreError::Refuse => {
                    refusal = RateRefusal::StoreUnavailable;
                    if self.tokens < 1.0 {
                        s.cluster.metrics.fallback("rate_refused");
                    }
                }
            },
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(refusal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn raised_limits_apply_at_once_and_lowered_ones_cap_what_is_left() {
        let now = Instant::now();
        let mut b = Bucket::new(2.0, 4.0);
        for _ in 0..4 {
            assert!(b.take(now).is_ok());
        }
        assert!(b.take(now).is_err(), "drained");
        b.reshape(1000.0, 1000.0);
        for _ in 0..100 {
            assert!(
                b.take(now).is_ok(),
                "a raised limit must not keep the old drain"
            );
        }
        b.reshape(1.0, 2.0);
        assert!(b.tokens <= 2.0);
    }

    fn cfg(text: &str) -> LimitsConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn identity_connections_are_capped_and_released() {
        let l = Limiter::new(cfg("connections_per_identity = 2"));
        let a = l.admit("alice", &[]).unwrap();
        let _b = l.admit("alice", &[]).unwrap();
        assert_eq!(
            l.admit("alice", &[]).err(),
            Some(Refusal::Identity { limit: 2 })
        );
        let _c = l.admit("bob", &[]).unwrap();
        drop(a);
        assert!(l.admit("alice", &[]).is_ok());
        assert_eq!(l.sessions_of("alice"), 1);
    }

    #[test]
    fn role_caps_count_all_members_and_overrides_take_the_most_generous() {
        let l = Limiter::new(cfg(r#"
connections_per_identity = 1
[[roles]]
role = "etl"
connections = 3
connections_per_identity = 2
[[roles]]
role = "bulk"
connections_per_identity = 5
"#));
        let etl = vec!["etl".to_owned()];
        let both = vec!["etl".to_owned(), "bulk".to_owned()];
        let _a1 = l.admit("a", &etl).unwrap();
        let _a2 = l.admit("a", &etl).unwrap();
        assert_eq!(
            l.admit("a", &etl).err(),
            Some(Refusal::Identity { limit: 2 })
        );
        let _b1 = l.admit("b", &both).unwrap();
        assert_eq!(
            l.admit("b", &both).err(),
            Some(Refusal::Role {
                role: "etl".into(),
                limit: 3
            })
        );
        // Without the role, the global per-identity limit.
        let _c = l.admit("c", &[]).unwrap();
        assert!(l.admit("c", &[]).is_err());
    }

    #[test]
    fn statements_are_rate_limited_per_identity_across_sessions() {
        let l = Limiter::new(cfg("statements_per_second = 10\nstatement_burst = 3"));
        let s1 = l.admit("alice", &[]).unwrap();
        let s2 = l.admit("alice", &[]).unwrap();
        assert!(s1.take_statement().is_ok());
        assert!(s2.take_statement().is_ok());
        assert!(s1.take_statement().is_ok());
        assert_eq!(s2.take_statement(), Err(RateRefusal::OverRate(10.0)));
        let other = l.admit("bob", &[]).unwrap();
        assert!(other.take_statement().is_ok());
        std::thread::sleep(Duration::from_millis(150));
        assert!(s2.take_statement().is_ok());
    }

    #[test]
    fn bucket_refills_at_the_rate() {
        let mut b = Bucket::new(100.0, 1.0);
        let t0 = Instant::now();
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_err());
        assert!(b.take(t0 + Duration::from_millis(11)).is_ok());
    }

    #[test]
    fn a_replicas_share_divides_every_cap_rounding_up() {
        // What `on_store_error = "local"` enforces while the store is unreachable.
        let l = Limiter::new(cfg(r#"
connections_per_identity = 5
[[roles]]
role = "etl"
connections = 4
"#));
        let etl = vec!["etl".to_owned()];
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(l.admit_with("a", &[], 3, None).unwrap().0);
        }
        assert_eq!(
            l.admit_with("a", &[], 3, None).err(),
            Some(Refusal::Identity { limit: 2 }),
            "ceil(5 / 3)"
        );
        held.push(l.admit_with("b", &etl, 3, None).unwrap().0);
        held.push(l.admit_with("c", &etl, 3, None).unwrap().0);
        assert_eq!(
            l.admit_with("d", &etl, 3, None).err(),
            Some(Refusal::Role {
                role: "etl".into(),
                limit: 2
            })
        );
        // Undivided, the same counts are under the caps.
        assert!(l.admit_with("a", &[], 1, None).is_ok());
    }

    #[test]
    fn reload_applies_to_new_sessions() {
        let l = Limiter::new(cfg("connections_per_identity = 1"));
        let _a = l.admit("a", &[]).unwrap();
        assert!(l.admit("a", &[]).is_err());
        l.replace(cfg("connections_per_identity = 2"));
        assert!(l.admit("a", &[]).is_ok());
    }

    #[test]
    fn problems_are_reported() {
        let c = cfg(
            "statements_per_second = -1\nconnections_per_identity = 0\n[[roles]]\nrole = \"x\"\n[[roles]]\nrole = \"x\"\nconnections = 0",
        );
        let p = c.problems().join("\n");
        assert!(p.contains("positive"), "{p}");
        assert!(p.contains("at least 1"), "{p}");
        assert!(p.contains("listed twice"), "{p}");
    }
}
