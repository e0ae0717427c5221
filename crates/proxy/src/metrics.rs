//! Prometheus metrics. Hot-path counters are fetched once and kept as handles, and
//! sessions add per read batch, not per message, to keep atomics off the fast path.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    connections: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    cancels: Family<Labels, Counter>,
    auth: Family<Labels, Counter>,
    pub sessions_active: Gauge,
    pub bytes_to_upstream: Counter,
    pub bytes_to_client: Counter,
    pub messages_to_upstream: Counter,
    pub messages_to_client: Counter,
    /// Accept to first ReadyForQuery, including TLS, sign-in and the upstream connect.
    pub handshake_seconds: Histogram,
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_owned(), v.to_owned())]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pgward");
        let connections = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let cancels = Family::<Labels, Counter>::default();
        let auth = Family::<Labels, Counter>::default();
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
            "Cancel requests by result (forwarded, unknown_key, failed)",
            cancels.clone(),
        );
        registry.register(
            "auth",
            "Client sign-in attempts by result (ok, or the failure reason's label)",
            auth.clone(),
        );
        registry.register(
            "handshake_seconds",
            "Time from accept to the first ReadyForQuery",
            handshake_seconds.clone(),
        );
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
            sessions_active,
            handshake_seconds,
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

    pub fn auth(&self, result: &str) {
        self.auth.get_or_create(&label("result", result)).inc();
    }

    pub fn cancel(&self, result: &str) {
        self.cancels.get_or_create(&label("result", result)).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
