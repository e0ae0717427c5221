//! A bounded cache of query decisions.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use std::collections::hash_map::RandomState;

use crate::decide::{QueryDecision, RoleSet, SessionState};
use crate::policy::Policy;

const SHARDS: usize = 16;

/// Caches [`Policy::decide_query`] results so repeated and prepared statements skip parsing.
///
/// The key is everything a decision depends on: the exact SQL text, the policy version, the
/// role set, and the session's search-path state (current path, every schema seen, whether
/// catalog names may be shadowed, standard_conforming_strings). Entries are compared on the
/// full key, never on the hash alone, so a cached allow can only be returned for the very
/// inputs it was computed for. Strings containing EXECUTE (which depend on the session's
/// prepared statements) are never cached. Size is bounded: each shard keeps two generations
/// and drops the older one when the newer fills up.
pub struct DecisionCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    young: HashMap<u64, Vec<Arc<Entry>>>,
    young_len: usize,
    old: HashMap<u64, Vec<Arc<Entry>>>,
}

struct Entry {
    version: u64,
    roles: Vec<u16>,
    session: String,
    sql: String,
    decision: Arc<QueryDecision>,
}

impl Entry {
    fn is(&self, version: u64, roles: &RoleSet, session: &str, sql: &str) -> bool {
        self.version == version
            && self.roles == roles.idx
            && self.session == session
            && self.sql == sql
    }
}

impl DecisionCache {
    /// A cache holding about `capacity` decisions (at most twice that briefly).
    pub fn new(capacity: usize) -> DecisionCache {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        DecisionCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            hasher: RandomState::new(),
        }
    }

    /// The decision for `sql`, from the cache or computed (and then cached).
    pub fn decide(
        &self,
        policy: &Policy,
        roles: &RoleSet,
        session: &SessionState,
        sql: &str,
    ) -> Arc<QueryDecision> {
        let version = policy.version();
        if roles.version() != version {
            // A role set from another policy grants nothing here; never share its entries.
            return Arc::new(policy.decide_query(roles, sql, session));
        }
        let skey = session.cache_key();
        let mut h = self.hasher.build_hasher();
        version.hash(&mut h);
        roles.idx.hash(&mut h);
        skey.hash(&mut h);
        sql.hash(&mut h);
        let hash = h.finish();
        // The low bits pick the shard; HashMap rehashes the full value anyway.
        let shard = &self.shards[(hash as usize) % SHARDS];
        if let Ok(mut s) = shard.lock() {
            if let Some(e) = s
                .young
                .get(&hash)
                .and_then(|v| v.iter().find(|e| e.is(version, roles, skey, sql)))
            {
                return Arc::clone(&e.decision);
            }
            let promoted = s
                .old
                .get(&hash)
                .and_then(|v| v.iter().find(|e| e.is(version, roles, skey, sql)))
                .cloned();
            if let Some(e) = promoted {
                let d = Arc::clone(&e.decision);
                s.insert(hash, e, self.per_shard);
                return d;
            }
        }
        // Decide outside the lock: parsing is the slow part.
        let decision = Arc::new(policy.decide_query(roles, sql, session));
        if decision.cacheable {
            let e = Arc::new(Entry {
                version,
                roles: roles.idx.clone(),
                session: skey.to_owned(),
                sql: sql.to_owned(),
                decision: Arc::clone(&decision),
            });
            if let Ok(mut s) = shard.lock() {
                s.insert(hash, e, self.per_shard);
            }
        }
        decision
    }

    /// Drops every entry (for example after a policy reload, although the version in the key
    /// already keeps old decisions from being used).
    pub fn clear(&self) {
        for s in &self.shards {
            if let Ok(mut s) = s.lock() {
                *s = Shard::default();
            }
        }
    }

    /// Number of cached decisions.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok())
            .map(|s| s.young_len + s.old.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    fn insert(&mut self, hash: u64, e: Arc<Entry>, cap: usize) {
        if self.young_len >= cap {
            self.old = std::mem::take(&mut self.young);
            self.young_len = 0;
        }
        let list = self.young.entry(hash).or_default();
        if !list.iter().any(|x| Arc::ptr_eq(x, &e)) {
            list.push(e);
            self.young_len += 1;
        }
    }
}
