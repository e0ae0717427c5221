//! The cluster store's metrics, registered by the proxy next to its own
//! (`pgward_cluster_*`, docs/operations.md).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn store_latency_histogram() -> Histogram {
    // 100 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

#[derive(Clone)]
pub struct ClusterMetrics {
    latency: HistogramFamily,
    errors: Family<Labels, Counter>,
    remote_cancels: Family<Labels, Counter>,
    lease_refills: Family<Labels, Counter>,
    fallbacks: Family<Labels, Counter>,
    pub store_up: Gauge,
    pub replicas: Gauge,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        Self {
            latency: Family::new_with_constructor(store_latency_histogram),
            errors: Family::default(),
            remote_cancels: Family::default(),
            lease_refills: Family::default(),
            fallbacks: Family::default(),
            store_up: Gauge::default(),
            replicas: Gauge::default(),
        }
    }
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_owned(), v.to_owned())]
}

impl ClusterMetrics {
    /// Adds these metrics to the proxy's registry (prefix `pgward`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cluster_store_seconds",
            "Latency of cluster store calls that answered, by operation",
            self.latency.clone(),
        );
        registry.register(
            "cluster_store_errors",
            "Cluster store calls that failed, by operation and kind (down, timeout, failed)",
            self.errors.clone(),
        );
        registry.register(
            "cluster_remote_cancels",
            "Cancels passed between replicas through the store, by result (sent, send_failed, received, matched, unmatched)",
            self.remote_cancels.clone(),
        );
        registry.register(
            "cluster_lease_refills",
            "Statement-rate lease refills from the shared bucket, by result (granted, empty, error)",
            self.lease_refills.clone(),
        );
        registry.register(
            "cluster_fallbacks",
            "Decisions taken without the store, by what and on_store_error (connection_local, connection_refused, rate_local, rate_refused, cancel_local)",
            self.fallbacks.clone(),
        );
        registry.register(
            "cluster_store_up",
            "1 while the cluster store connection is up",
            self.store_up.clone(),
        );
        registry.register(
            "cluster_replicas",
            "Replicas alive at the last heartbeat (local shares divide limits by it)",
            self.replicas.clone(),
        );
    }

    pub(crate) fn latency(&self, op: &str, d: Duration) {
        self.latency
            .get_or_create(&label("op", op))
            .observe(d.as_secs_f64());
    }

    pub(crate) fn error(&self, op: &str, kind: &str) {
        self.errors
            .get_or_create(&vec![
                ("op".to_owned(), op.to_owned()),
                ("kind".to_owned(), kind.to_owned()),
            ])
            .inc();
    }

    pub fn remote_cancel(&self, result: &str) {
        self.remote_cancels
            .get_or_create(&label("result", result))
            .inc();
    }

    pub(crate) fn lease(&self, result: &str) {
        self.lease_refills
            .get_or_create(&label("result", result))
            .inc();
    }

    /// A decision taken without the store (`on_store_error`).
    pub fn fallback(&self, what: &str) {
        self.fallbacks.get_or_create(&label("what", what)).inc();
    }
}
