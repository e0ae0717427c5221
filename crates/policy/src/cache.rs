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
        if let Some(d) = self.lookup(version, roles, skey, sql) {
            return d;
        }
        // Statements that differ only in numeric constants (`WHERE aid = 42`) share one
        // decision, found under their shape; see `constant_shape` and `shape_safe`.
        let shape = constant_shape(sql);
        if let Some(shape) = &shape {
            if let Some(d) = self.lookup(version, roles, skey, shape) {
                return d;
            }
        }
        // Decide outside the locks: parsing is the slow part.
        let decision = Arc::new(policy.decide_query(roles, sql, session));
        if decision.cacheable {
            self.store(version, roles, skey, sql, &decision);
            if let Some(shape) = &shape {
                if shape_safe(&decision) {
                    self.store(version, roles, skey, shape, &decision);
                }
            }
        }
        decision
    }

    fn key_hash(&self, version: u64, roles: &RoleSet, skey: &str, sql: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        version.hash(&mut h);
        roles.idx.hash(&mut h);
        skey.hash(&mut h);
        sql.hash(&mut h);
        h.finish()
    }

    fn lookup(
        &self,
        version: u64,
        roles: &RoleSet,
        skey: &str,
        sql: &str,
    ) -> Option<Arc<QueryDecision>> {
        let hash = self.key_hash(version, roles, skey, sql);
        // The low bits pick the shard; HashMap rehashes the full value anyway.
        let shard = &self.shards[(hash as usize) % SHARDS];
        let mut s = shard.lock().ok()?;
        if let Some(e) = s
            .young
            .get(&hash)
            .and_then(|v| v.iter().find(|e| e.is(version, roles, skey, sql)))
        {
            return Some(Arc::clone(&e.decision));
        }
        let promoted = s
            .old
            .get(&hash)
            .and_then(|v| v.iter().find(|e| e.is(version, roles, skey, sql)))
            .cloned()?;
        let d = Arc::clone(&promoted.decision);
        s.insert(hash, promoted, self.per_shard);
        Some(d)
    }

    fn store(&self, version: u64, roles: &RoleSet, skey: &str, sql: &str, d: &Arc<QueryDecision>) {
        let hash = self.key_hash(version, roles, skey, sql);
        let e = Arc::new(Entry {
            version,
            roles: roles.idx.clone(),
            session: skey.to_owned(),
            sql: sql.to_owned(),
            decision: Arc::clone(d),
        });
        if let Ok(mut s) = self.shards[(hash as usize) % SHARDS].lock() {
            s.insert(hash, e, self.per_shard);
        }
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

/// `sql` with every numeric constant replaced by `0`, found with PostgreSQL's own scanner
/// (so string literals, quoted identifiers, comments and dollar quoting are never
/// touched), prefixed with a NUL so it can never equal a real statement text (protocol
/// strings cannot contain NUL). `None` when there is no numeric constant, the text is
/// long, or it does not scan.
fn constant_shape(sql: &str) -> Option<String> {
    const ICONST: i32 = pg_query::protobuf::Token::Iconst as i32;
    const FCONST: i32 = pg_query::protobuf::Token::Fconst as i32;
    if sql.len() > 4096 || !sql.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    let scanned = pg_query::scan(sql).ok()?;
    let mut out = String::with_capacity(sql.len() + 1);
    out.push('\0');
    let mut copied = 0;
    let mut replaced = false;
    for t in &scanned.tokens {
        if t.token != ICONST && t.token != FCONST {
            continue;
        }
        let (start, end) = (usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?);
        if start < copied
            || end > sql.len()
            || !sql.is_char_boundary(start)
            || !sql.is_char_boundary(end)
        {
            return None;
        }
        out.push_str(&sql[copied..start]);
        out.push('0');
        copied = end;
        replaced = true;
    }
    if !replaced {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

/// Whether a decision holds for every statement of the same shape: one statement that
/// changes no setting or session state, runs no prepared statement, and calls none of
/// the functions whose constant arguments the analysis reads as names (set_config,
/// pg_notify, the sequence functions). Everywhere else numeric constants are values,
/// never names, so they cannot change what the statement touches.
fn shape_safe(d: &QueryDecision) -> bool {
    const NAME_READING: &[&str] = &["set_config", "pg_notify", "nextval", "setval", "currval"];
    match d.statements.as_slice() {
        [one] => {
            let a = &one.analysis;
            a.settings.is_empty()
                && a.effects.is_empty()
                && a.executes.is_none()
                && !a
                    .functions
                    .iter()
                    .any(|f| NAME_READING.contains(&f.name.as_str()))
        }
        _ => false,
    }
}

#[cfg(test)]
mod shape_tests {
    use super::constant_shape;

    #[test]
    fn only_numeric_constants_are_replaced() {
        assert_eq!(
            constant_shape("SELECT abalance FROM pgbench_accounts WHERE aid = 4217;").as_deref(),
            Some("\0SELECT abalance FROM pgbench_accounts WHERE aid = 0;")
        );
        assert_eq!(
            constant_shape("SELECT 1.5e3, '42', \"t1\", $1, x2 -- 7\n/* 8 */ FROM t LIMIT 10")
                .as_deref(),
            Some("\0SELECT 0, '42', \"t1\", $1, x2 -- 7\n/* 8 */ FROM t LIMIT 0")
        );
        assert_eq!(constant_shape("SELECT $$ 1 $$, E'\\x31'"), None);
        assert_eq!(constant_shape("SELECT * FROM t"), None);
    }
}
