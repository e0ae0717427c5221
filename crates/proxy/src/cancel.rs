//! Cancel keys. Each client gets BackendKeyData with the upstream backend's real pid (so
//! `pg_backend_pid()`, the pid of its own notifications and `pg_stat_activity` agree with what
//! its driver reports) and a secret pgward draws itself; a CancelRequest that matches both is
//! forwarded to the upstream session behind it with the upstream's real key, which clients
//! never see. Azure SQL sessions have no upstream pid: they get one pgward chooses.
//!
//! Keys are looked up by (pid, secret), never by pid alone: two sessions on different
//! upstreams can have the same backend pid, and the pid is no secret (anyone can read
//! `pg_stat_activity`), so the secret is what makes a key unguessable — 32 random bits, as
//! in PostgreSQL's own protocol 3.0 keys. Anything that does not match is ignored, as
//! PostgreSQL does, so a forged or stale key learns nothing; and a client address that keeps
//! sending keys that match nothing is not listened to for a while, so guessing the secret of
//! a pid someone can see takes years instead of days.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgward_upstream::{BackendKey, Upstream};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

/// Unmatched CancelRequests one client address may send per window before pgward stops
/// looking its requests up until the window ends.
pub const MAX_UNMATCHED_PER_WINDOW: u32 = 60;
/// The window for `MAX_UNMATCHED_PER_WINDOW`.
pub const UNMATCHED_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses remembered at most; past it, expired windows are dropped first, then all.
const MAX_TRACKED_ADDRESSES: usize = 4096;

/// Where a matched cancel goes.
#[derive(Clone)]
pub enum Target {
    /// A PostgreSQL upstream session: a CancelRequest with its real key.
    Postgres {
        upstream: Arc<Upstream>,
        key: BackendKey,
    },
    /// An Azure SQL session: its running batch gets a TDS attention.
    Signal(Arc<Notify>),
}

struct Entry {
    secret: [u8; 4],
    target: Target,
}

/// What a CancelRequest found.
pub enum Lookup {
    Found(Target),
    /// No session has this (pid, secret).
    Unknown,
    /// Not looked up: this address sent too many keys that matched nothing.
    Throttled,
}

#[derive(Default)]
pub struct CancelRegistry {
    /// pid → the sessions with that pid (more than one only when upstreams share pids).
    entries: Mutex<HashMap<u32, Vec<Entry>>>,
    /// Client address → (window start, unmatched requests in it).
    unmatched: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// A session's registered key; dropping it retires the key.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub pid: u32,
    pub secret: [u8; 4],
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut entries = self.registry.lock();
        if let Some(list) = entries.get_mut(&self.pid) {
            list.retain(|e| e.secret != self.secret);
            if list.is_empty() {
                entries.remove(&self.pid);
            }
        }
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS RNG failing is not recoverable in a security proxy.
    getrandom::fill(&mut b).expect("OS random number generator unavailable");
    b
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Vec<Entry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a PostgreSQL session: the client will see the upstream's pid with a secret
    /// of pgward's.
    pub fn register(self: &Arc<Self>, upstream: Arc<Upstream>, key: BackendKey) -> Registration {
        // A pid PostgreSQL would never send (0, or above i32::MAX, which drivers read as
        // negative) is replaced by one of pgward's.
        let pid = Some(key.pid).filter(|p| *p != 0 && *p <= 0x7fff_ffff);
        self.insert(pid, Target::Postgres { upstream, key })
    }

    /// Registers an Azure SQL session (no upstream pid: pgward chooses one).
    pub fn register_signal(self: &Arc<Self>, signal: Arc<Notify>) -> Registration {
        self.insert(None, Target::Signal(signal))
    }

    fn insert(self: &Arc<Self>, pid: Option<u32>, target: Target) -> Registration {
        let mut entries = self.lock();
        let (pid, secret) = loop {
            let pid = pid.unwrap_or_else(|| {
                // Random: a client can't guess its neighbours' pids from its own.
                let p = u32::from_be_bytes(random::<4>()) & 0x7fff_ffff;
                p.max(1)
            });
            let secret = random::<4>();
            // (pid, secret) must name one session only; on a collision draw again.
            let taken = entries
                .get(&pid)
                .is_some_and(|l| l.iter().any(|e| e.secret == secret));
            if !taken {
                break (pid, secret);
            }
        };
        entries
            .entry(pid)
            .or_default()
            .push(Entry { secret, target });
        Registration {
            registry: self.clone(),
            pid,
            secret,
        }
    }

    /// The session a client's cancel names, if pid and secret both match one. Every entry of
    /// the pid is compared in constant time, so the time taken says nothing about the secret.
    pub fn lookup(&self, pid: u32, secret: &[u8]) -> Option<Target> {
        if secret.len() != 4 {
            return None;
        }
        let entries = self.lock();
        let mut found = None;
        for e in entries.get(&pid).into_iter().flatten() {
            if bool::from(e.secret.ct_eq(secret)) {
                found = Some(e.target.clone());
            }
        }
        found
    }

    /// `lookup` for a CancelRequest from `from`, which stops being answered for the rest of
    /// the window once `from` sent `MAX_UNMATCHED_PER_WINDOW` keys that matched nothing.
    pub fn lookup_from(&self, from: IpAddr, pid: u32, secret: &[u8]) -> Lookup {
        let now = Instant::now();
        {
            let unmatched = self.unmatched.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((start, n)) = unmatched.get(&from) {
                if now.duration_since(*start) < UNMATCHED_WINDOW && *n >= MAX_UNMATCHED_PER_WINDOW {
                    return Lookup::Throttled;
                }
            }
        }
        if let Some(t) = self.lookup(pid, secret) {
            return Lookup::Found(t);
        }
        let mut unmatched = self.unmatched.lock().unwrap_or_else(|p| p.into_inner());
        if unmatched.len() >= MAX_TRACKED_ADDRESSES && !unmatched.contains_key(&from) {
            unmatched.retain(|_, (start, _)| now.duration_since(*start) < UNMATCHED_WINDOW);
            if unmatched.len() >= MAX_TRACKED_ADDRESSES {
                // Bounded memory wins over throttling under a flood from many addresses.
                unmatched.clear();
            }
        }
        let slot = unmatched.entry(from).or_insert((now, 0));
        if now.duration_since(slot.0) >= UNMATCHED_WINDOW {
            *slot = (now, 0);
        }
        slot.1 += 1;
        Lookup::Unknown
    }

    /// Registered keys.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal() -> Arc<Notify> {
        Arc::new(Notify::new())
    }

    fn is(t: Option<Target>, want: &Arc<Notify>) -> bool {
        matches!(t, Some(Target::Signal(s)) if Arc::ptr_eq(&s, want))
    }

    #[test]
    fn sessions_sharing_a_pid_are_told_apart_by_their_secrets() {
        let reg = Arc::new(CancelRegistry::default());
        let (a, b) = (signal(), signal());
        // Two upstreams' backends that happen to have the same pid.
        let ra = reg.insert(Some(4242), Target::Signal(a.clone()));
        let rb = reg.insert(Some(4242), Target::Signal(b.clone()));
        assert_eq!((ra.pid, rb.pid), (4242, 4242));
        assert_ne!(ra.secret, rb.secret);
        assert!(is(reg.lookup(4242, &ra.secret), &a));
        assert!(is(reg.lookup(4242, &rb.secret), &b));
        // A forged secret, a secret of another pid, a short secret: nothing.
        let mut forged = ra.secret;
        forged[3] ^= 1;
        assert!(reg.lookup(4242, &forged).is_none());
        assert!(reg.lookup(4243, &ra.secret).is_none());
        assert!(reg.lookup(4242, &ra.secret[..3]).is_none());
        // A key retires with its session; the other one stays.
        let stale = ra.secret;
        drop(ra);
        assert!(reg.lookup(4242, &stale).is_none());
        assert!(is(reg.lookup(4242, &rb.secret), &b));
        drop(rb);
        assert!(reg.is_empty());
    }

    #[test]
    fn pgward_chooses_pids_only_when_there_is_none() {
        let reg = Arc::new(CancelRegistry::default());
        let r = reg.register_signal(signal());
        assert!(r.pid != 0 && r.pid <= 0x7fff_ffff);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn an_address_that_keeps_guessing_is_not_listened_to() {
        let reg = Arc::new(CancelRegistry::default());
        let s = signal();
        let r = reg.insert(Some(77), Target::Signal(s.clone()));
        let guesser: IpAddr = "203.0.113.9".parse().unwrap();
        let other: IpAddr = "198.51.100.4".parse().unwrap();
        for i in 0..MAX_UNMATCHED_PER_WINDOW {
            let wrong = (i + 1).to_be_bytes();
            assert!(matches!(
                reg.lookup_from(guesser, 77, &wrong),
                Lookup::Unknown
            ));
        }
        // Even the right secret is not looked up from that address now...
        assert!(matches!(
            reg.lookup_from(guesser, 77, &r.secret),
            Lookup::Throttled
        ));
        // ...while other clients' cancels work.
        assert!(matches!(
            reg.lookup_from(other, 77, &r.secret),
            Lookup::Found(Target::Signal(_))
        ));
    }
}
