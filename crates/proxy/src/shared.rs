//! What every session shares, built once by the server (server.rs) and handed to each
//! connection (session/).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pgward_upstream::Upstream;
use tokio_util::sync::CancellationToken;

use crate::auth::{ClientAuth, FailureThrottle};
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::enforce::PolicyStore;
use crate::handshake::HandshakeConfig;
use crate::metrics::Metrics;

/// Everything sessions share.
pub struct Shared {
    pub config: Config,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub handshake: HandshakeConfig,
    pub cancels: Arc<CancelRegistry>,
    pub metrics: Arc<Metrics>,
    pub auth: ClientAuth,
    pub throttle: FailureThrottle,
    pub policy: Option<Arc<PolicyStore>>,
    /// The upstream databases' own catalogs, which the policy resolves names against.
    pub catalogs: Arc<crate::catalogs::ServerCatalogs>,
    /// pgward's own connections that record callers (`[[upstreams]] identity_table`).
    pub callers: crate::caller_identity::CallerIdentities,
    pub audit: Option<pgward_audit::AuditLog>,
    /// Names sessions in logs and audit records.
    pub session_ids: SessionIds,
    /// Fired when the drain deadline passes: sessions still open are ended.
    pub hard_stop: CancellationToken,
    /// Per-identity and per-role limits.
    pub limiter: Arc<crate::limits::Limiter>,
    /// The store shared with other replicas (`[cluster]`).
    pub cluster: Option<Arc<pgward_cluster::Cluster>>,
    /// The main runtime: sessions' token expiries are timed there, off the session
    /// workers' timer wheels (deadline.rs).
    pub timers: tokio::runtime::Handle,
}

/// Session ids unique across processes, restarts and replicas: a random boot id drawn
/// at start (64 bits) and a counter, `3f9c0a17b2e4d581-42`.
pub struct SessionIds {
    boot: String,
    next: AtomicU64,
}

impl SessionIds {
    pub fn new() -> Self {
        let mut b = [0u8; 8];
        // The OS RNG failing is not recoverable in a security proxy.
        getrandom::fill(&mut b).expect("OS random number generator unavailable");
        Self {
            boot: b.iter().map(|x| format!("{x:02x}")).collect(),
            next: AtomicU64::new(1),
        }
    }

    /// The next session's id.
    pub fn next(&self) -> String {
        format!(
            "{}-{}",
            self.boot,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Default for SessionIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::SessionIds;

    #[test]
    fn ids_differ_across_processes_and_count_within_one() {
        let (a, b) = (SessionIds::new(), SessionIds::new());
        let (a1, a2, b1) = (a.next(), a.next(), b.next());
        assert_ne!(a1, a2);
        assert_ne!(a1, b1, "two boots must not give the same ids");
        assert!(a1.ends_with("-1") && a2.ends_with("-2"), "{a1} {a2}");
        assert_eq!(a1.len(), 16 + 2);
    }
}
