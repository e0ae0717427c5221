//! Prometheus metrics. Hot-path counters are fetched once and kept as handles, and
//! sessions add per read batch, not per message, to keep atomics off the fast path.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    connections: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    cancels: Family<Labels, Counter>,
    auth: Family<Labels, Counter>,
    grants: Family<Labels, Counter>,
    pub sessions_active: Gauge,
    pub bytes_to_upstream: Counter,
    pub bytes_to_client: Counter,
    pub messages_to_upstream: Counter,
    pub messages_to_client: Counter,
    /// Accept to first ReadyForQuery, including TLS, sign-in and the upstream connect.
    pub handshake_seconds: Histogram,
    token_refreshes: Family<Labels, Counter>,
    token_expiry: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Policy decisions by verdict (allow, deny, observe_deny), one per statement decided.
    decisions: Family<Labels, Counter>,
    decisions_allowed: Counter,
    /// Denials by the rule that decided.
    denials: Family<Labels, Counter>,
    /// Values replaced by column masks on the stream.
    pub masked_values: Counter,
    /// Statements denied by column masks, by rule.
    mask_denials: Family<Labels, Counter>,
    /// Upstream credentials whose counters are copied in at each scrape.
    credentials: Mutex<Vec<(String, pgward_upstream::TokenSource)>>,
    /// Audit shipping sinks (PostgreSQL table, Azure Monitor), copied in at each scrape.
    audit_sink_records: Family<Labels, Counter>,
    audit_sink_backlog: Family<Labels, Gauge>,
    audit_sink_failing: Family<Labels, Gauge>,
    audit: Mutex<Option<pgward_audit::AuditLog>>,
    /// Bytes the policy decision cache accounts for, copied in at each scrape.
    policy_cache_bytes: Gauge,
    /// Where the policy decision cache's size is read from (set by the server).
    policy_cache: Mutex<Option<CacheSize>>,
}

/// Reads a size in bytes (the policy decision cache's), so metrics need not know its owner.
pub type CacheSize = Box<dyn Fn() -> usize + Send + Sync>;

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_owned(), v.to_owned())]
}

/// Brings a counter up to a total counted elsewhere (credentials, sinks count on their own;
/// they are copied in at each scrape).
fn catch_up(family: &Family<Labels, Counter>, labels: &Labels, total: u64) {
    let c = family.get_or_create(labels);
    let seen = c.get();
    if total > seen {
        c.inc_by(total - seen);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Adds the cluster store's metrics (`[cluster]`) to what /metrics serves.
    pub fn register_cluster(&mut self, m: &pgward_cluster::ClusterMetrics) {
        m.register(&mut self.registry);
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pgward");
        let connections = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let cancels = Family::<Labels, Counter>::default();
        let auth = Family::<Labels, Counter>::default();
        let grants = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        let messages = Family::<Labels, Counter>::default();
        let sessions_active = Gauge::default();
        let handshake_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "connections",
            "Client connections by result (accepted, refused_limit, refused_shutdown)",
            connections.clone(),
        );
        registry.register(
            "sessions_active",
            "Client sessions currently relaying",
            sessions_active.clone(),
        );
        registry.register("bytes", "Bytes relayed, by direction", bytes.clone());
        registry.register(
            "messages",
            "Protocol messages relayed, by direction",
            messages.clone(),
        );
        registry.register(
            "errors",
            "Connections ended by an error, by kind",
            errors.clone(),
        );
        registry.register(
            "cancel_requests",
            "Cancel requests by result (forwarded, unknown_key, throttled, failed)",
            cancels.clone(),
        );
        registry.register(
            "auth",
            "Client sign-in attempts by result (ok, or the failure reason's label)",
            auth.clone(),
        );
        registry.register(
            "grants_apply",
            "Runs of [policy] apply_grants by result (applied, not_converged, failed)",
            grants.clone(),
        );
        registry.register(
            "handshake_seconds",
            "Time from accept to the first ReadyForQuery",
            handshake_seconds.clone(),
        );
        let token_refreshes = Family::<Labels, Counter>::default();
        let token_expiry = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "upstream_token_refreshes",
            "Fetches of pgward's upstream access token, by upstream and result (ok, failed)",
            token_refreshes.clone(),
        );
        registry.register(
            "upstream_token_expiry_seconds",
            "Seconds until pgward's cached upstream access token expires (negative: expired)",
            token_expiry.clone(),
        );
        let decisions = Family::<Labels, Counter>::default();
        let denials = Family::<Labels, Counter>::default();
        registry.register(
            "policy_decisions",
            "Statements decided by the policy (at Query and Parse), by verdict (allow, deny, observe_deny)",
            decisions.clone(),
        );
        registry.register(
            "policy_denials",
            "Statements denied (or, in observe mode, that would be), by the deciding rule",
            denials.clone(),
        );
        let masked_values = Counter::default();
        registry.register(
            "masked_values",
            "Values replaced by column masks in results sent to clients",
            masked_values.clone(),
        );
        let mask_denials = Family::<Labels, Counter>::default();
        registry.register(
            "mask_denials",
            "Statements denied because a masked value would decide or leave in their result, by rule",
            mask_denials.clone(),
        );
        let policy_cache_bytes = Gauge::default();
        registry.register(
            "policy_cache_bytes",
            "Bytes the policy decision cache holds, as it accounts them (bounded by [policy] cache_bytes)",
            policy_cache_bytes.clone(),
        );
        let audit_sink_records = Family::<Labels, Counter>::default();
        let audit_sink_backlog = Family::<Labels, Gauge>::default();
        let audit_sink_failing = Family::<Labels, Gauge>::default();
        registry.register(
            "audit_sink_records",
            "Audit records per shipping sink: shipped (acknowledged), dropped (spool full), rejected (invalid for the destination)",
            audit_sink_records.clone(),
        );
        registry.register(
            "audit_sink_backlog_bytes",
            "Bytes of audit records spooled and not yet shipped, per sink",
            audit_sink_backlog.clone(),
        );
        registry.register(
            "audit_sink_failing",
            "1 while a shipping sink's deliveries fail (retrying; records stay spooled)",
            audit_sink_failing.clone(),
        );
        let decisions_allowed = decisions.get_or_create(&label("verdict", "allow")).clone();
        let get =
            |f: &Family<Labels, Counter>, d: &str| f.get_or_create(&label("direction", d)).clone();
        Self {
            bytes_to_upstream: get(&bytes, "to_upstream"),
            bytes_to_client: get(&bytes, "to_client"),
            messages_to_upstream: get(&messages, "to_upstream"),
            messages_to_client: get(&messages, "to_client"),
            registry,
            connections,
            errors,
            cancels,
            auth,
            grants,
            sessions_active,
            handshake_seconds,
            token_refreshes,
            token_expiry,
            decisions_allowed,
            decisions,
            denials,
            masked_values,
            mask_denials,
            credentials: Mutex::new(Vec::new()),
            audit_sink_records,
            audit_sink_backlog,
            audit_sink_failing,
            audit: Mutex::new(None),
            policy_cache_bytes,
            policy_cache: Mutex::new(None),
        }
    }

    /// Reports the policy decision cache's size, read from `size` at each scrape.
    pub fn watch_policy_cache(&self, size: Option<CacheSize>) {
        *self.policy_cache.lock().unwrap_or_else(|p| p.into_inner()) = size;
    }

    fn sync_policy(&self) {
        let size = self.policy_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(size) = size.as_ref() {
            let bytes = i64::try_from(size()).unwrap_or(i64::MAX);
            self.policy_cache_bytes.set(bytes);
        }
    }

    /// Reports the audit log's shipping sinks.
    pub fn watch_audit(&self, log: Option<pgward_audit::AuditLog>) {
        *self.audit.lock().unwrap_or_else(|p| p.into_inner()) = log;
    }

    /// Copies the audit sinks' counters into the registry (they count on their own).
    fn sync_audit(&self) {
        let log = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let Some(log) = log.as_ref() else {
            return;
        };
        for st in log.sink_status() {
            for (result, total) in [
                ("shipped", st.shipped),
                ("dropped", st.dropped),
                ("rejected", st.rejected),
            ] {
                let labels = vec![
                    ("sink".to_owned(), st.name.clone()),
                    ("result".to_owned(), result.to_owned()),
                ];
                catch_up(&self.audit_sink_records, &labels, total);
            }
            let sink = label("sink", &st.name);
            self.audit_sink_backlog
                .get_or_create(&sink)
                .set(i64::try_from(st.backlog_bytes).unwrap_or(i64::MAX));
            self.audit_sink_failing
                .get_or_create(&sink)
                .set(i64::from(st.failing));
        }
    }

    /// Reports these upstream credentials' refresh counters and token expiry.
    pub fn watch_credentials(&self, c: Vec<(String, pgward_upstream::TokenSource)>) {
        *self.credentials.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }

    /// Copies the credentials' counters into the registry (they count on their own).
    fn sync_credentials(&self) {
        let sources = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
        for (name, source) in sources.iter() {
            let h = source.health();
            if h.kind == "password" {
                continue;
            }
            for (result, total) in [("ok", h.refreshes_ok), ("failed", h.refreshes_failed)] {
                let labels = vec![
                    ("upstream".to_owned(), name.clone()),
                    ("result".to_owned(), result.to_owned()),
                ];
                catch_up(&self.token_refreshes, &labels, total);
            }
            if let Some(secs) = h.seconds_until_expiry() {
                self.token_expiry
                    .get_or_create(&label("upstream", name))
                    .set(secs);
            }
        }
    }

    pub fn connection(&self, result: &str) {
        self.connections
            .get_or_create(&label("result", result))
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&label("kind", kind)).inc();
    }

    /// Counts a run of `[policy] apply_grants` by result (applied, not_converged, failed).
    pub fn grants(&self, result: &str) {
        self.grants.get_or_create(&label("result", result)).inc();
    }

    pub fn auth(&self, result: &str) {
        self.auth.get_or_create(&label("result", result)).inc();
    }

    /// Counts a policy decision; denials also by rule. Allows take a kept handle (hot path).
    pub fn decision(&self, allowed: bool, observe_only: bool, rule: &str) {
        if allowed && !observe_only {
            self.decisions_allowed.inc();
            return;
        }
        let verdict = if observe_only { "observe_deny" } else { "deny" };
        self.decisions
            .get_or_create(&label("verdict", verdict))
            .inc();
        self.denials.get_or_create(&label("rule", rule)).inc();
    }

    /// Counts a statement denied by column masks.
    pub fn mask_denial(&self, rule: &str) {
        self.mask_denials.get_or_create(&label("rule", rule)).inc();
    }

    pub fn cancel(&self, result: &str) {
        self.cancels.get_or_create(&label("result", result)).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.sync_credentials();
        self.sync_policy();
        self.sync_audit();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
