//! The PostgreSQL control database as the cluster store.
//!
//! What PostgreSQL gives, used as it is:
//! - session-level advisory locks, held by each replica's one "holder" connection, for the
//!   instance name and for connection slots (slot n of a scope is a lock on a 64-bit hash of
//!   `pgward slot <scope> <n>`). PostgreSQL drops them the moment that connection ends, so a
//!   replica killed outright gives back everything at once, and one whose host vanishes
//!   within the TCP keepalive time set below (10 s + 3 × 5 s);
//! - LISTEN/NOTIFY on `pgward_cancel` for cancels, on a second connection that only listens;
//! - small tables with timestamps for what outlives a connection: the statement-rate buckets
//!   (leased from by `pgward_cluster.lease()`, one round trip), failed sign-ins per address,
//!   and the instances with their last heartbeat (how many replicas are alive).
//!
//! The schema is created at start (idempotent, under a transaction-level advisory lock so
//! replicas starting together don't race).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pgward_upstream::{
    quote_literal, ConnectError, Row, Upstream, UpstreamConfig, UpstreamSession,
};
use pgward_wire::tag::backend as be;
use tokio::sync::{Mutex, MutexGuard, Notify};
use tracing::{error, info, warn};

use crate::config::ClusterConfig;
use crate::metrics::ClusterMetrics;
use crate::store::{
    backoff, parse_cancel, BoxFuture, CancelSink, Lease, Scope, SlotId, Store, StoreError,
};

const CHANNEL: &str = "pgward_cancel";

const SCHEMA: &str = r#"
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('pgward cluster schema', 0));
CREATE SCHEMA IF NOT EXISTS pgward_cluster;
CREATE TABLE IF NOT EXISTS pgward_cluster.instances (
    name text PRIMARY KEY,
    boot text NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS pgward_cluster.buckets (
    key text PRIMARY KEY,
    tokens float8 NOT NULL,
    at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS pgward_cluster.auth_failures (
    addr text PRIMARY KEY,
    n integer NOT NULL,
    last_at timestamptz NOT NULL);
CREATE OR REPLACE FUNCTION pgward_cluster.lease(k text, rate float8, burst float8, want float8,
        OUT granted float8, OUT wait_secs float8)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    now_ts timestamptz := clock_timestamp();
    t float8;
BEGIN
    INSERT INTO pgward_cluster.buckets AS b (key, tokens, at) VALUES (k, burst, now_ts)
    ON CONFLICT (key) DO UPDATE
        SET tokens = least(burst, b.tokens + rate * extract(epoch FROM now_ts - b.at)),
            at = now_ts
    RETURNING b.tokens INTO t;
    granted := CASE WHEN t >= 1 THEN least(want, t) ELSE 0 END;
    UPDATE pgward_cluster.buckets SET tokens = t - granted WHERE key = k;
    wait_secs := CASE WHEN t - granted >= 1 THEN 0 ELSE (1 - (t - granted)) / rate END;
END $$;
"#;

pub(crate) struct PgStore(Arc<Inner>);

struct Inner {
    upstream: Upstream,
    database: String,
    instance: String,
    boot: String,
    lease_secs: u64,
    conn: Mutex<Conn>,
    up: AtomicBool,
    /// Rung when the holder connection is lost.
    lost: Notify,
    metrics: ClusterMetrics,
}

#[derive(Default)]
struct Conn {
    session: Option<UpstreamSession>,
    /// A call started and did not finish (abandoned at its timeout): the session's state is
    /// unknown, so it is dropped before the next call.
    dirty: bool,
    /// The slots this replica holds, by scope: the search skips them (a session's advisory
    /// locks are re-entrant, so its own would look free), and a reconnect takes them again.
    held: HashMap<String, BTreeSet<u64>>,
    /// The holder session's backend (pid, start), last opened. An abandoned session's backend
    /// keeps its locks until it notices the connection is gone; a reconnect ends it first.
    backend: Option<(i32, String)>,
}

fn slot_key(scope: &str, n: u64) -> String {
    format!("pgward slot {scope} {n}")
}

fn lock_expr(key_sql: &str) -> String {
    format!("pg_catalog.hashtextextended({key_sql}, 0)")
}

impl PgStore {
    pub(crate) async fn connect(
        config: &ClusterConfig,
        instance: &str,
        boot: &str,
        on_cancel: CancelSink,
        metrics: ClusterMetrics,
    ) -> Result<Self, String> {
        let Some(pg) = &config.postgres else {
            return Err("[cluster] backend = \"postgres\" needs [cluster.postgres]".into());
        };
        let upstream = Upstream::new(UpstreamConfig {
            name: "cluster".to_owned(),
            kind: pgward_upstream::UpstreamKind::Postgres,
            host: pg.host.clone(),
            port: pg.port,
            tls: pg.tls,
            ca_file: pg.ca_file.clone(),
            connect_timeout_secs: pg.connect_timeout_secs,
            credential: pg.credential.clone(),
            role_logins: Default::default(),
            require_role_login: false,
            identity_table: false,
        })
        .map_err(|e| format!("[cluster.postgres] {e}"))?;
        upstream.start_credential();
        let inner = Arc::new(Inner {
            upstream,
            database: pg.database.clone(),
            instance: instance.to_owned(),
            boot: boot.to_owned(),
            lease_secs: config.lease_secs,
            conn: Mutex::new(Conn::default()),
            up: AtomicBool::new(false),
            lost: Notify::new(),
            metrics,
        });
        let mut session = inner
            .open("holder")
            .await
            .map_err(|e| format!("[cluster] cannot reach the control database: {e}"))?;
        inner
            .upstream
            .query_on(&mut session, SCHEMA)
            .await
            .map_err(|e| format!("[cluster] cannot create the pgward_cluster schema: {e}"))?;
        {
            let mut c = inner.conn.lock().await;
            c.session = Some(session);
            c.backend = inner
                .backend_of(&mut c)
                .await
                .map_err(|e| format!("[cluster] control database: {e}"))?;
        }
        inner.up.store(true, Ordering::Release);
        tokio::spawn(reconnects(Arc::downgrade(&inner)));
        tokio::spawn(listen(Arc::downgrade(&inner), on_cancel));
        Ok(Self(inner))
    }
}

impl Inner {
    async fn open(&self, role: &str) -> Result<UpstreamSession, ConnectError> {
        let params = [
            (
                "application_name".to_owned(),
                format!("pgward cluster {role} ({})", self.instance),
            ),
            ("client_encoding".to_owned(), "UTF8".to_owned()),
            ("standard_conforming_strings".to_owned(), "on".to_owned()),
            // A replica whose host vanishes loses its locks within 10 + 3 × 5 s.
            ("tcp_keepalives_idle".to_owned(), "10".to_owned()),
            ("tcp_keepalives_interval".to_owned(), "5".to_owned()),
            ("tcp_keepalives_count".to_owned(), "3".to_owned()),
        ];
        self.upstream.connect(&self.database, &params).await
    }

    fn lose(&self) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.store_up.set(0);
            warn!("cluster store connection lost; reconnecting");
        }
        self.lost.notify_one();
    }

    /// The holder connection, dropping it first if a call was abandoned on it.
    async fn conn(&self) -> MutexGuard<'_, Conn> {
        let mut c = self.conn.lock().await;
        if c.dirty {
            c.dirty = false;
            c.session = None;
            self.lose();
        }
        c
    }

    /// Runs `sql` on the holder connection. A failure other than the server's own error
    /// drops the connection (and with it every lock it held, taken again on reconnect).
    async fn run(&self, c: &mut Conn, sql: &str) -> Result<Vec<Row>, StoreError> {
        let Some(session) = c.session.as_mut() else {
            return Err(StoreError::Down);
        };
        c.dirty = true;
        let r = self.upstream.query_on(session, sql).await;
        c.dirty = false;
        match r {
            Ok(rows) => Ok(rows),
            Err(e @ ConnectError::Server { .. }) => Err(StoreError::Failed(e.to_string())),
            Err(e) => {
                c.session = None;
                self.lose();
                Err(StoreError::Failed(e.to_string()))
            }
        }
    }

    async fn claim(&self, c: &mut Conn) -> Result<bool, StoreError> {
        let key = quote_literal(&format!("pgward instance {}", self.instance));
        let rows = self
            .run(
                c,
                &format!(
                    "SELECT pg_catalog.pg_try_advisory_lock({})",
                    lock_expr(&key)
                ),
            )
            .await?;
        if first(&rows) != Some("t") {
            return Ok(false);
        }
        self.run(
            c,
            &format!(
                "INSERT INTO pgward_cluster.instances (name, boot, started_at, seen_at) \
                 VALUES ({n}, {b}, clock_timestamp(), clock_timestamp()) \
                 ON CONFLICT (name) DO UPDATE SET boot = EXCLUDED.boot, \
                 started_at = EXCLUDED.started_at, seen_at = EXCLUDED.seen_at",
                n = quote_literal(&self.instance),
                b = quote_literal(&self.boot),
            ),
        )
        .await?;
        Ok(true)
    }

    /// The holder session's backend: (pid, start).
    async fn backend_of(&self, c: &mut Conn) -> Result<Option<(i32, String)>, StoreError> {
        let rows = self
            .run(
                c,
                "SELECT pid, backend_start::text FROM pg_catalog.pg_stat_activity \
                 WHERE pid = pg_catalog.pg_backend_pid()",
            )
            .await?;
        Ok(rows.into_iter().next().and_then(|r| {
            let pid = r.first()?.as_deref()?.parse().ok()?;
            Some((pid, r.get(1)?.clone()?))
        }))
    }

    /// Ends an abandoned holder backend (same pid *and* start, so never a later backend that
    /// reused the pid) and waits up to 5 s for it to be gone, with the locks it held.
    async fn end_backend(
        &self,
        c: &mut Conn,
        (pid, start): &(i32, String),
    ) -> Result<(), StoreError> {
        let which = format!(
            "pid = {pid} AND backend_start = {}::timestamptz",
            quote_literal(start)
        );
        self.run(
            c,
            &format!("SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE {which}"),
        )
        .await?;
        for _ in 0..50 {
            let rows = self
                .run(
                    c,
                    &format!("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE {which}"),
                )
                .await?;
            if first(&rows) == Some("0") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(StoreError::Failed(format!(
            "the previous store session (backend {pid}) does not end"
        )))
    }

    /// After a reconnect: the instance name and every slot still in use, taken again.
    async fn reclaim(&self, c: &mut Conn) -> Result<(), StoreError> {
        if !self.claim(c).await? {
            error!(instance = %self.instance, "while the cluster store was unreachable another replica claimed this instance name");
        }
        let keys: Vec<String> = c
            .held
            .iter()
            .flat_map(|(scope, ns)| ns.iter().map(|n| quote_literal(&slot_key(scope, *n))))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let rows = self
            .run(
                c,
                &format!(
                    "SELECT count(*) FILTER (WHERE NOT pg_catalog.pg_try_advisory_lock({})) \
                     FROM unnest(ARRAY[{}]::text[]) k",
                    lock_expr("k"),
                    keys.join(",")
                ),
            )
            .await?;
        let lost = first(&rows)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if lost > 0 {
            warn!(slots = lost, "connection slots taken by other replicas while the store was unreachable; caps may be exceeded until those sessions end");
        }
        Ok(())
    }
}

fn first(rows: &[Row]) -> Option<&str> {
    rows.first()?.first()?.as_deref()
}

/// Opens the holder connection again whenever it is lost, with backoff.
async fn reconnects(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.up.load(Ordering::Acquire) {
            i.lost.notified().await;
            continue;
        }
        let mut attempt = 0;
        loop {
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            let session = match i.open("holder").await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cluster store still unreachable");
                    continue;
                }
            };
            let mut c = i.conn.lock().await;
            c.dirty = false;
            c.session = Some(session);
            let restored = async {
                let new = i.backend_of(&mut c).await?;
                // The old session's backend may still hold this replica's locks (it was
                // abandoned mid-call, and has not noticed yet): end it before reclaiming.
                if let Some(old) = c.backend.clone() {
                    i.end_backend(&mut c, &old).await?;
                }
                c.backend = new;
                i.reclaim(&mut c).await
            };
            match restored.await {
                Ok(()) => {
                    i.up.store(true, Ordering::Release);
                    i.metrics.store_up.set(1);
                    info!("cluster store connection restored");
                    break;
                }
                Err(e) => {
                    c.session = None;
                    warn!(error = %e, "cluster store reconnect failed");
                }
            }
        }
    }
}

/// The listening connection: cancels other replicas pass on, checked against this replica's
/// sessions by `on_cancel`. Reopened with backoff when lost.
async fn listen(inner: std::sync::Weak<Inner>, on_cancel: CancelSink) {
    let mut attempt = 0;
    loop {
        let Some(i) = inner.upgrade() else { return };
        let me = i.instance.clone();
        let mut session = match i.open("listener").await {
            Ok(s) => s,
            Err(e) => {
                drop(i);
                warn!(error = %e, "cluster cancel listener cannot connect; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue;
            }
        };
        if let Err(e) = i
            .upstream
            .query_on(&mut session, &format!("LISTEN {CHANNEL}"))
            .await
        {
            drop(i);
            warn!(error = %e, "cluster cancel listener cannot LISTEN; retrying");
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            continue;
        }
        let metrics = i.metrics.clone();
        drop(i);
        attempt = 0;
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            match session.next_message(&mut buf).await {
                Ok((be::NOTIFICATION_RESPONSE, body)) => {
                    let Some(payload) = notification_payload(&body) else {
                        continue;
                    };
                    if let Some((pid, secret)) = parse_cancel(&payload, &me) {
                        metrics.remote_cancel("received");
                        metrics.remote_cancel(if on_cancel(pid, secret) {
                            "matched"
                        } else {
                            "unmatched"
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "cluster cancel listener lost its connection; reconnecting");
                    break;
                }
            }
            if inner.strong_count() == 0 {
                return;
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

/// A NotificationResponse's payload: pid (int32), channel and payload (C strings).
fn notification_payload(body: &[u8]) -> Option<String> {
    let mut b = body;
    if b.remaining() < 4 {
        return None;
    }
    b.advance(4);
    let channel_end = b.iter().position(|&x| x == 0)?;
    let rest = &b[channel_end + 1..];
    let payload_end = rest.iter().position(|&x| x == 0)?;
    Some(String::from_utf8_lossy(&rest[..payload_end]).into_owned())
}

impl Store for PgStore {
    fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Acquire)
    }

    fn reset(&self) {
        // The abandoned call left `dirty` set; the next call drops the session.
        self.0.lose();
    }

    fn claim(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut c = self.0.conn().await;
            self.0.claim(&mut c).await
        })
    }

    fn heartbeat(&self) -> BoxFuture<'_, Result<u32, StoreError>> {
        Box::pin(async move {
            let i = &self.0;
            let mut c = i.conn().await;
            let rows = i
                .run(
                    &mut c,
                    &format!(
                        "UPDATE pgward_cluster.instances SET seen_at = clock_timestamp() \
                         WHERE name = {n} AND boot = {b}; \
                         DELETE FROM pgward_cluster.buckets WHERE at < clock_timestamp() - interval '10 minutes'; \
                         DELETE FROM pgward_cluster.auth_failures WHERE last_at < clock_timestamp() - interval '10 minutes'; \
                         SELECT count(*) FROM pgward_cluster.instances \
                         WHERE seen_at > clock_timestamp() - make_interval(secs => {l})",
                        n = quote_literal(&i.instance),
                        b = quote_literal(&i.boot),
                        l = i.lease_secs,
                    ),
                )
                .await?;
            Ok(first(&rows).and_then(|v| v.parse().ok()).unwrap_or(1))
        })
    }

    fn acquire<'a>(
        &'a self,
        scopes: &'a [Scope],
    ) -> BoxFuture<'a, Result<Result<Vec<SlotId>, usize>, StoreError>> {
        Box::pin(async move {
            let i = &self.0;
            let mut c = i.conn().await;
            let columns: Vec<String> = scopes
                .iter()
                .map(|s| {
                    let held: Vec<String> = c
                        .held
                        .get(&s.key)
                        .into_iter()
                        .flatten()
                        .map(u64::to_string)
                        .collect();
                    // The lowest free slot: locks are tried in order and the first taken
                    // ends the scan (LIMIT 1; the series in the select list is produced
                    // one row at a time, where in FROM it would be built whole first). CASE, not AND: the planner may reorder AND's
                    // operands, and a re-entrant lock taken on a slot of our own would
                    // stack and never be released.
                    format!(
                        "(SELECT n FROM (SELECT generate_series(0, {last}) AS n) s \
                         WHERE CASE WHEN n = ANY('{{{held}}}'::int8[]) THEN false \
                         ELSE pg_catalog.pg_try_advisory_lock({lock}) END LIMIT 1)",
                        last = i64::from(s.limit) - 1,
                        held = held.join(","),
                        lock = lock_expr(&format!(
                            "{} || ' ' || n",
                            quote_literal(&format!("pgward slot {}", s.key))
                        )),
                    )
                })
                .collect();
            let rows = i
                .run(&mut c, &format!("SELECT {}", columns.join(", ")))
                .await?;
            let row = rows.into_iter().next().unwrap_or_default();
            let mut got = Vec::new();
            let mut full = None;
            for (idx, s) in scopes.iter().enumerate() {
                match row
                    .get(idx)
                    .cloned()
                    .flatten()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    Some(n) => got.push(SlotId {
                        scope: s.key.clone(),
                        n,
                    }),
                    None => {
                        full.get_or_insert(idx);
                    }
                }
            }
            if let Some(idx) = full {
                if !got.is_empty() {
                    i.run(&mut c, &unlock_sql(&got)).await?;
                }
                return Ok(Err(idx));
            }
            for s in &got {
                c.held.entry(s.scope.clone()).or_default().insert(s.n);
            }
            Ok(Ok(got))
        })
    }

    fn release(&self, ids: Vec<SlotId>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let i = &self.0;
            let mut c = i.conn().await;
            forget_held(&mut c, &ids);
            i.run(&mut c, &unlock_sql(&ids)).await?;
            Ok(())
        })
    }

    fn forget(&self, ids: &[SlotId]) {
        if let Ok(mut c) = self.0.conn.try_lock() {
            forget_held(&mut c, ids);
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
            let mut c = i.conn().await;
            let rows = i
                .run(
                    &mut c,
                    &format!(
                        "SELECT granted, wait_secs FROM pgward_cluster.lease({}, {rate}::float8, {burst}::float8, {want}::float8)",
                        quote_literal(key)
                    ),
                )
                .await?;
            let row = rows.into_iter().next().unwrap_or_default();
            let num = |idx: usize| {
                row.get(idx)
                    .cloned()
                    .flatten()
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|v| v.is_finite() && *v >= 0.0)
            };
            Ok(Lease {
                granted: num(0).unwrap_or(0.0),
                wait: Duration::from_secs_f64(num(1).unwrap_or(0.0).min(60.0)),
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
            let mut c = i.conn().await;
            let rows = i
                .run(
                    &mut c,
                    &format!(
                        "INSERT INTO pgward_cluster.auth_failures AS f (addr, n, last_at) \
                         VALUES ({a}, 1, clock_timestamp()) ON CONFLICT (addr) DO UPDATE SET \
                         n = CASE WHEN f.last_at < clock_timestamp() - make_interval(secs => {w}) \
                             THEN 1 ELSE f.n + 1 END, last_at = clock_timestamp() RETURNING n",
                        a = quote_literal(addr),
                        w = window.as_secs(),
                    ),
                )
                .await?;
            Ok(first(&rows).and_then(|v| v.parse().ok()).unwrap_or(1))
        })
    }

    fn auth_cleared<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let i = &self.0;
            let mut c = i.conn().await;
            i.run(
                &mut c,
                &format!(
                    "DELETE FROM pgward_cluster.auth_failures WHERE addr = {}",
                    quote_literal(addr)
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn send_cancel<'a>(&'a self, message: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let i = &self.0;
            let mut c = i.conn().await;
            i.run(
                &mut c,
                &format!(
                    "SELECT pg_catalog.pg_notify('{CHANNEL}', {})",
                    quote_literal(message)
                ),
            )
            .await?;
            Ok(())
        })
    }
}

fn forget_held(c: &mut Conn, ids: &[SlotId]) {
    for s in ids {
        if let Some(set) = c.held.get_mut(&s.scope) {
            set.remove(&s.n);
            if set.is_empty() {
                c.held.remove(&s.scope);
            }
        }
    }
}

/// The statement that gives back these slots' advisory locks.
fn unlock_sql(ids: &[SlotId]) -> String {
    let keys: Vec<String> = ids
        .iter()
        .map(|s| quote_literal(&slot_key(&s.scope, s.n)))
        .collect();
    format!(
        "SELECT pg_catalog.pg_advisory_unlock({}) FROM unnest(ARRAY[{}]::text[]) k",
        lock_expr("k"),
        keys.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_payloads_are_read() {
        let body = [
            &42i32.to_be_bytes()[..],
            b"pgward_cancel\0",
            b"1 00000001 a\0",
        ]
        .concat();
        assert_eq!(notification_payload(&body).as_deref(), Some("1 00000001 a"));
        assert_eq!(notification_payload(b"\0\0\0\x01chan"), None);
        assert_eq!(notification_payload(b"\0\0"), None);
    }
}
