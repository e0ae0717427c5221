//! Cancel keys. Each client gets pgward's own BackendKeyData (random pid and secret);
//! a CancelRequest that matches one is forwarded to the upstream session behind it with
//! the upstream's real key, which clients never see. Anything else is ignored, as
//! PostgreSQL does, so a forged or stale key learns nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pgward_upstream::{BackendKey, Upstream};
use subtle::ConstantTimeEq;

struct Entry {
    secret: [u8; 4],
    upstream: Arc<Upstream>,
    key: BackendKey,
}

#[derive(Default)]
pub struct CancelRegistry {
    entries: Mutex<HashMap<u32, Entry>>,
}

/// A session's registered key; dropping it retires the key.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub pid: u32,
    pub secret: [u8; 4],
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.pid);
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS RNG failing is not recoverable in a security proxy.
    getrandom::fill(&mut b).expect("OS random number generator unavailable");
    b
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(self: &Arc<Self>, upstream: Arc<Upstream>, key: BackendKey) -> Registration {
        let secret = random::<4>();
        let mut entries = self.lock();
        let pid = loop {
            // Random pids: a client can't guess its neighbours' keys from its own.
            let pid = u32::from_be_bytes(random::<4>()) & 0x7fff_ffff;
            if pid != 0 && !entries.contains_key(&pid) {
                break pid;
            }
        };
        entries.insert(
            pid,
            Entry {
                secret,
                upstream,
                key,
            },
        );
        Registration {
            registry: self.clone(),
            pid,
            secret,
        }
    }

    /// The upstream and its key for a client's cancel, if pid and secret match.
    pub fn lookup(&self, pid: u32, secret: &[u8]) -> Option<(Arc<Upstream>, BackendKey)> {
        let entries = self.lock();
        let e = entries.get(&pid)?;
        if secret.len() == e.secret.len() && bool::from(e.secret.ct_eq(secret)) {
            Some((e.upstream.clone(), e.key.clone()))
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
