//! Redis (6+, or Azure Managed Redis) as the cluster store, through redis-rs on tokio with
//! rustls (aws-lc-rs, the one crypto provider pgward uses).
//!
//! One RESP3 connection per replica carries every call and, as push messages, the cancels
//! published on `<prefix>cancel`. What outlives a replica is a lease: the instance name is a
//! key with an expiry, and each connection slot is a member of its scope's sorted set scored
//! by its expiry; the heartbeat (every third of `lease_secs`) renews them, so a replica that
//! vanishes gives everything back within `lease_secs`. Each step is a Lua script reading
//! the server's clock (TIME), so replicas' clocks never matter. Every key carries the
//! prefix, `{pgward}:` by default: one hash slot, as scripts over several keys need on a
//! clustered Redis.
//!
//! With an Entra identity, the token is the AUTH password (user: the identity's object id);
//! a newer token is sent with AUTH on the live connection before the old one expires, and a
//! reconnect signs in with the current one.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgward_upstream::TokenSource;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ProtocolVersion, PushInfo,
    PushKind, RedisConnectionInfo, Script, Value,
};
use tokio::sync::{mpsc, Notify, RwLock};
use tracing::{error, info, warn};

use crate::config::{ClusterConfig, RedisStore as RedisConfig};
use crate::metrics::ClusterMetrics;
use crate::store::{
    backoff, parse_cancel, BoxFuture, CancelSink, Lease, Scope, SlotId, Store, StoreError,
};

/// The Entra scope of Azure Managed Redis tokens.
const REDIS_SCOPE: &str = "https://redis.azure.com/.default";

/// KEYS[1] the instance key, KEYS[2] the instances set; ARGV boot, lease ms, name.
const CLAIM: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
return 1
"#;

/// KEYS[1] the instance key, KEYS[2] the instances set, KEYS[3..] slot scopes;
/// ARGV boot, lease ms, name, then one member per slot scope. Returns the replicas alive,
/// or -1 when the name is no longer this replica's.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local lease = tonumber(ARGV[2])
local mine = 1
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], lease)
else
  mine = 0
end
redis.call('ZADD', KEYS[2], now + lease, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('PEXPIRE', KEYS[2], lease * 4)
for i = 3, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], lease)
end
if mine == 0 then return -1 end
return redis.call('ZCARD', KEYS[2])
"#;

/// KEYS scope sets; ARGV lease ms, member, then each scope's limit. 0 when a slot of every
/// scope was taken, else the (1-based) scope that is full.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for i, k in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  if redis.call('ZCARD', k) >= tonumber(ARGV[i + 2]) then return i end
end
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, now + tonumber(ARGV[1]), ARGV[2])
  redis.call('PEXPIRE', k, ARGV[1])
end
return 0
"#;

/// KEYS scope sets; ARGV one member per scope.
const RELEASE: &str = r#"
for i, k in ipairs(KEYS) do redis.call('ZREM', k, ARGV[i]) end
return 0
"#;

/// KEYS[1] the bucket; ARGV rate, burst, want. Returns {granted, wait seconds} as text.
const LEASE: &str = r#"
local t = redis.call('TIME')
local now = t[1] + t[2] / 1000000
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]), tonumber(b[2])
if tokens == nil or at == nil then tokens = burst; at = now end
tokens = math.min(burst, tokens + rate * math.max(0, now - at))
local granted = 0
if tokens >= 1 then granted = math.min(want, tokens) end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], 600000)
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
return {tostring(granted), tostring(wait)}
"#;

/// KEYS[1] the address's counter; ARGV window ms. The failures within the window.
const AUTH_FAILED: &str = r#"
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
"#;

pub(crate) struct RedisStore(Arc<Inner>);

struct Inner {
    cfg: RedisConfig,
    credential: Option<TokenSource>,
    instance: String,
    boot: String,
    lease_ms: u64,
    timeout: Duration,
    conn: RwLock<Option<MultiplexedConnection>>,
    up: AtomicBool,
    lost: Notify,
    /// The slots this replica holds, by scope key (renewed by the heartbeat, taken again
    /// after a reconnect).
    held: Mutex<HashMap<String, BTreeSet<u64>>>,
    next_slot: AtomicU64,
    /// The AUTH secret the live connection signed in with (to notice a newer token).
    signed_in_with: Mutex<Option<String>>,
    metrics: ClusterMetrics,
    scripts: Scripts,
}

struct Scripts {
    claim: Script,
    heartbeat: Script,
    acquire: Script,
    release: Script,
    lease: Script,
    auth_failed: Script,
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(e.to_string())
}

impl RedisStore {
    pub(crate) async fn connect(
        config: &ClusterConfig,
        instance: &str,
        boot: &str,
        on_cancel: CancelSink,
        metrics: ClusterMetrics,
    ) -> Result<Self, String> {
        let Some(cfg) = config.redis.clone() else {
            return Err("[cluster] backend = \"redis\" needs [cluster.redis]".into());
        };
        let credential = match &cfg.credential {
            Some(c) => Some(
                TokenSource::new("cluster-redis", c, REDIS_SCOPE)
                    .map_err(|e| format!("[cluster.redis.credential] {e}"))?,
            ),
            None => None,
        };
        if let Some(c) = &credential {
            c.start();
        }
        let inner = Arc::new(Inner {
            cfg,
            credential,
            instance: instance.to_owned(),
            boot: boot.to_owned(),
            lease_ms: config.lease_secs * 1000,
            timeout: config.timeout(),
            conn: RwLock::new(None),
            up: AtomicBool::new(false),
            lost: Notify::new(),
            held: Mutex::new(HashMap::new()),
            next_slot: AtomicU64::new(1),
            signed_in_with: Mutex::new(None),
            metrics,
            scripts: Scripts {
                claim: Script::new(CLAIM),
                heartbeat: Script::new(HEARTBEAT),
                acquire: Script::new(ACQUIRE),
                release: Script::new(RELEASE),
                lease: Script::new(LEASE),
                auth_failed: Script::new(AUTH_FAILED),
            },
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = inner
            .open(tx.clone())
            .await
            .map_err(|e| format!("[cluster] cannot reach Redis: {e}"))?;
        *inner.conn.write().await = Some(conn);
        inner.up.store(true, Ordering::Release);
        tokio::spawn(pushes(Arc::downgrade(&inner), rx, on_cancel));
        tokio::spawn(reconnects(Arc::downgrade(&inner), tx));
        if inner
            .credential
            .as_ref()
            .is_some_and(|c| c.kind() != "password")
        {
            tokio::spawn(reauth(Arc::downgrade(&inner)));
        }
        Ok(Self(inner))
    }
}

impl Inner {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.cfg.key_prefix)
    }

    fn member(&self, n: u64) -> String {
        format!("{}/{}/{n}", self.instance, self.boot)
    }

    /// A new connection, signed in with the current secret and subscribed to cancels.
    async fn open(
        &self,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> Result<MultiplexedConnection, String> {
        let (username, password) = match &self.credential {
            Some(c) => {
                let secret = c.current().await.map_err(|e| e.to_string())?;
                (Some(c.user().to_owned()), Some(secret.expose().to_owned()))
            }
            None => (None, None),
        };
        let addr = if self.cfg.tls {
            ConnectionAddr::TcpTls {
                host: self.cfg.host.clone(),
                port: self.cfg.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(self.cfg.host.clone(), self.cfg.port)
        };
        let info = ConnectionInfo {
            addr,
            redis: RedisConnectionInfo {
                db: 0,
                username,
                password: password.clone(),
                protocol: ProtocolVersion::RESP3,
            },
        };
        let client = match (&self.cfg.ca_file, self.cfg.tls) {
            (Some(ca), true) => {
                let pem =
                    std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
                Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            _ => Client::open(info),
        }
        .map_err(|e| e.to_string())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(self.cfg.connect_timeout_secs))
            .set_response_timeout(self.timeout)
            .set_push_sender(pushes);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        conn.subscribe(self.key("cancel"))
            .await
            .map_err(|e| e.to_string())?;
        *self
            .signed_in_with
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = password;
        Ok(conn)
    }

    async fn conn(&self) -> Result<MultiplexedConnection, StoreError> {
        self.conn.read().await.clone().ok_or(StoreError::Down)
    }

    fn lose(&self) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.store_up.set(0);
            warn!("cluster store (Redis) connection lost; reconnecting");
        }
        self.lost.notify_one();
    }

    /// A call's result; an error other than the server's own (a script error) means the
    /// connection is gone.
    fn check<T>(&self, r: redis::RedisResult<T>) -> Result<T, StoreError> {
        r.map_err(|e| {
            if e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error()
            {
                self.lose();
            }
            failed(e)
        })
    }

    async fn claim(&self) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let r: redis::RedisResult<i64> = self
            .scripts
            .claim
            .key(self.key(&format!("instance:{}", self.instance)))
            .key(self.key("instances"))
            .arg(&self.boot)
            .arg(self.lease_ms)
            .arg(&self.instance)
            .invoke_async(&mut c)
            .await;
        Ok(self.check(r)? == 1)
    }

    fn held_slots(&self) -> Vec<(String, u64)> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.iter()
            .flat_map(|(k, ns)| ns.iter().map(move |n| (k.clone(), *n)))
            .collect()
    }

    /// After a reconnect: the name and the slots still in use, claimed again (a member
    /// that expired meanwhile is added back: its session still runs).
    async fn reclaim(&self) -> Result<(), StoreError> {
        if !self.claim().await? {
            error!(instance = %self.instance, "while the cluster store was unreachable another replica claimed this instance name");
        }
        let slots = self.held_slots();
        if slots.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let mut pipe = redis::pipe();
        for (scope, n) in &slots {
            // Lease from this replica's clock is fine here: the next heartbeat rescores it
            // from the server's.
            pipe.cmd("ZADD")
                .arg(self.key(&format!("slots:{scope}")))
                .arg(now_ms_hint() + self.lease_ms)
                .arg(self.member(*n))
                .ignore();
        }
        let r: redis::RedisResult<()> = pipe.query_async(&mut c).await;
        self.check(r)
    }
}

/// This machine's clock in ms, only to score slots put back after a reconnect until the
/// next heartbeat rescores them with Redis's own.
fn now_ms_hint() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Cancels published by other replicas, and the library's notice of a lost connection.
async fn pushes(
    inner: std::sync::Weak<Inner>,
    mut rx: mpsc::UnboundedReceiver<PushInfo>,
    on_cancel: CancelSink,
) {
    while let Some(push) = rx.recv().await {
        let Some(i) = inner.upgrade() else { return };
        match push.kind {
            PushKind::Message => {
                let payload = match push.data.get(1) {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(Value::SimpleString(s)) => s.clone(),
                    _ => continue,
                };
                if let Some((pid, secret)) = parse_cancel(&payload, &i.instance) {
                    i.metrics.remote_cancel("received");
                    i.metrics.remote_cancel(if on_cancel(pid, secret) {
                        "matched"
                    } else {
                        "unmatched"
                    });
                }
            }
            PushKind::Disconnection => i.lose(),
            _ => {}
        }
    }
}

/// Opens a new connection whenever the live one is lost, with backoff.
async fn reconnects(inner: std::sync::Weak<Inner>, pushes: mpsc::UnboundedSender<PushInfo>) {
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.up.load(Ordering::Acquire) {
            i.lost.notified().await;
            continue;
        }
        *i.conn.write().await = None;
        let mut attempt = 0;
        loop {
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            match i.open(pushes.clone()).await {
                Ok(c) => *i.conn.write().await = Some(c),
                Err(e) => {
                    warn!(error = %e, "cluster store (Redis) still unreachable");
                    continue;
                }
            }
            match i.reclaim().await {
                Ok(()) => {
                    i.up.store(true, Ordering::Release);
                    i.metrics.store_up.set(1);
                    info!("cluster store (Redis) connection restored");
                    break;
                }
                Err(e) => warn!(error = %e, "cluster store (Redis) reconnect failed"),
            }
        }
    }
}

/// Entra tokens expire: whenever the credential holds a newer token than the live
/// connection signed in with, AUTH again with it (checked every 30 s; the credential
/// refreshes well before expiry).
async fn reauth(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let Some(i) = inner.upgrade() else { return };
        let Some(cred) = &i.credential else { return };
        let Ok(secret) = cred.current().await else {
            continue;
        };
        let newer = {
            let last = i.signed_in_with.lock().unwrap_or_else(|p| p.into_inner());
            last.as_deref() != Some(secret.expose())
        };
        if !newer {
            continue;
        }
        let Ok(mut c) = i.conn().await else { continue };
        let r: redis::RedisResult<()> = redis::cmd("AUTH")
            .arg(cred.user())
            .arg(secret.expose())
            .query_async(&mut c)
            .await;
        match r {
            Ok(()) => {
                *i.signed_in_with.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(secret.expose().to_owned());
                info!("cluster store (Redis): signed in again with a fresh token");
            }
            Err(e) => warn!(error = %e, "cluster store (Redis): AUTH with a fresh token failed"),
        }
    }
}

impl Store for RedisStore {
    fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Acquire)
    }

    fn reset(&self) {
        self.0.lose();
    }

    fn claim(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.0.claim())
    }

    fn heartbeat(&self) -> BoxFuture<'_, Result<u32, StoreError>> {
        Box::pin(async move {
            let i = &self.0;
            let mut c = i.conn().await?;
            let slots = i.held_slots();
            let mut inv = i.scripts.heartbeat.prepare_invoke();
            inv.key(i.key(&format!("instance:{}", i.instance)))
                .key(i.key("instances"))
                .arg(&i.boot)
                .arg(i.lease_ms)
                .arg(&i.instance);
            for (scope, n) in &slots {
                inv.key(i.key(&format!("slots:{scope}"))).arg(i.member(*n));
            }
            let r: redis::RedisResult<i64> = inv.invoke_async(&mut c).await;
            let n = i.check(r)?;
            if n < 0 {
                error!(instance = %i.instance, "this instance name's claim in the cluster store is held by another replica");
                return Ok(1);
            }
            Ok(u32::try_from(n).unwrap_or(1))
        })
    }

    fn acquire<'a>(
        &'a self,
        scopes: &'a [Scope],
    ) -> BoxFuture<'a, Result<Result<Vec<SlotId>, usize>, StoreError>> {
        Box::pin(async move {
            let i = &self.0;
            let mut c = i.conn().await?;
            let n = i.next_slot.fetch_add(1, Ordering::Relaxed);
            let mut inv = i.scripts.acquire.prepare_invoke();
            inv.arg(i.lease_ms).arg(i.member(n));
            for s in scopes {
                inv.key(i.key(&format!("slots:{}", s.key))).arg(s.limit);
            }
            let r: redis::RedisResult<i64> = inv.invoke_async(&mut c).await;
            let full = i.check(r)?;
            if full > 0 {
                return Ok(Err(usize::try_from(full - 1).unwrap_or(0)));
            }
            let ids: Vec<SlotId> = scopes
                .iter()
                .map(|s| SlotId {
                    scope: s.key.clone(),
                    n,
                })
                .collect();
            let mut held = i.held.lock().unwrap_or_else(|p| p.into_inner());
            for s in &ids {
                held.entry(s.scope.clone()).or_default().insert(s.n);
            }
            Ok(Ok(ids))
        })
    }

    fn release(&self, ids: Vec<SlotId>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let i = &self.0;
            self.forget(&ids);
            let mut c = i.conn().await?;
            let mut inv = i.scripts.release.prepare_invoke();
            for s in &ids {
                inv.key(i.key(&format!("slots:{}", s.scope)))
                    .arg(i.member(s.n));
            }
            let r: redis::RedisResult<i64> = inv.invoke_async(&mut c).await;
            i.check(r).map(|_| ())
        })
    }

    fn forget(&self, ids: &[SlotId]) {
        let mut held = self.0.held.lock().unwrap_or_else(|p| p.into_inner());
        for s in ids {
            if let Some(set) = held.get_mut(&s.scope) {
                set.remove(&s.n);
                if set.is_empty() {
                    held.remove(&s.scope);
                }
            }
        }
    }

    fn lease<'a>(
        &'a self,
        key: &'a str,
        rate: f64,
        burst: f64,
        want: f64,
    ) -> BoxFuture<'a, Result<Lease, StoreError>> {
        Box::pin(async move {
            let i = &self.0;
            let mut c = i.conn().await?;
            let r: redis::RedisResult<(String, String)> = i
                .scripts
                .lease
                .key(i.key(&format!("bucket:{key}")))
                .arg(rate)
                .arg(burst)
                .arg(want)
                .invoke_async(&mut c)
                .await;
            let (granted, wait) = i.check(r)?;
            let num = |v: &str| {
                v.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .unwrap_or(0.0)
            };
            Ok(Lease {
                granted: num(&granted),
                wait: Duration::from_secs_f64(num(&wait).min(60.0)),
            })
        })
    }

    fn auth_failed<'a>(
        &'a self,
        addr: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<u32, StoreError>> {
        Box::pin(async move {
            let i = &self.0;
            let mut c = i.conn().await?;
            let r: redis::RedisResult<i64> = i
                .scripts
                .auth_failed
                .key(i.key(&format!("auth_failures:{addr}")))
                .arg(window.as_millis() as u64)
                .invoke_async(&mut c)
                .await;
            Ok(u32::try_from(i.check(r)?).unwrap_or(u32::MAX))
        })
    }

    fn auth_cleared<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let i = &self.0;
            let mut c = i.conn().await?;
            let r: redis::RedisResult<i64> = redis::cmd("DEL")
                .arg(i.key(&format!("auth_failures:{addr}")))
                .query_async(&mut c)
                .await;
            i.check(r).map(|_| ())
        })
    }

    fn send_cancel<'a>(&'a self, message: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let i = &self.0;
            let mut c = i.conn().await?;
            let r: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(i.key("cancel"))
                .arg(message)
                .query_async(&mut c)
                .await;
            i.check(r).map(|_| ())
        })
    }
}
