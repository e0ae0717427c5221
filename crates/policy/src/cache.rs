//! A cache of query decisions, bounded in bytes and in entries.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use std::collections::hash_map::RandomState;

use crate::analyze::{
    analyze, Access, Analysis, AnalysisError, FunctionRef, ObjectRef, SessionEffect, SettingChange,
    StatementAnalysis,
};
use crate::decide::{QueryDecision, RoleSet, SessionState, StatementDecision};
use crate::policy::Policy;

const SHARDS: usize = 16;

/// Denials of strings longer than this are not cached: a hit would only save re-parsing a
/// string that was refused anyway, and keeping its text would let one caller fill the
/// cache (and pgward's memory) with refused statements.
pub const MAX_CACHED_DENIAL_BYTES: usize = 4096;

/// Default byte budget ([`DecisionCache::new`]).
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Caches [`Policy::decide_query`] results so repeated and prepared statements skip parsing.
///
/// The key is everything a decision depends on: the exact SQL text, the policy version, the
/// role set, and the session's search-path state (current path, every schema seen, whether
/// catalog names may be shadowed, standard_conforming_strings). Entries are compared on the
/// full key, never on the hash alone, so a cached allow can only be returned for the very
/// inputs it was computed for. Strings containing EXECUTE (which depend on the session's
/// prepared statements) are never cached, nor denials of strings over
/// [`MAX_CACHED_DENIAL_BYTES`].
///
/// Size is bounded in bytes (each entry counts its SQL text, key and the decision's
/// analyses) and in entries: each shard keeps two generations and drops the older one when
/// the newer holds half the shard's bytes or its entries. No entry bigger than 1/128 of the
/// byte budget is stored.
pub struct DecisionCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    /// Bytes one generation of one shard may hold (half the shard's budget).
    generation_bytes: usize,
    max_entry_bytes: usize,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    young: HashMap<u64, Vec<Arc<Entry>>>,
    young_len: usize,
    young_bytes: usize,
    old: HashMap<u64, Vec<Arc<Entry>>>,
    old_len: usize,
    old_bytes: usize,
}

struct Entry {
    version: u64,
    roles: Vec<u16>,
    session: String,
    sql: String,
    decision: Arc<QueryDecision>,
    /// What this entry accounts for in its shard.
    bytes: usize,
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
    /// A cache holding about `capacity` decisions (at most twice that briefly) within the
    /// default byte budget ([`DEFAULT_CACHE_BYTES`]).
    pub fn new(capacity: usize) -> DecisionCache {
        DecisionCache::with_limits(capacity, DEFAULT_CACHE_BYTES)
    }

    /// A cache holding at most `max_bytes` (as accounted: text, keys and analyses) and
    /// about `capacity` decisions.
    pub fn with_limits(capacity: usize, max_bytes: usize) -> DecisionCache {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        let shard_bytes = max_bytes / SHARDS;
        DecisionCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            generation_bytes: shard_bytes / 2,
            max_entry_bytes: shard_bytes / 8,
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
        match self.decide_with(policy, roles, session, sql, |sql| Some(analyze(sql))) {
            Some(d) => d,
            // `analyse` above always answers; kept total without a panic path.
            None => Arc::new(policy.decide_query(roles, sql, session)),
        }
    }

    /// Whether a decision for `sql` in this session is cached (exactly or by its shape),
    /// so the caller need not analyse it ahead of [`DecisionCache::decide_with`].
    pub fn contains(
        &self,
        policy: &Policy,
        roles: &RoleSet,
        session: &SessionState,
        sql: &str,
    ) -> bool {
        let version = policy.version();
        if roles.version() != version {
            return false;
        }
        let skey = session.cache_key();
        self.lookup(version, roles, skey, sql).is_some()
            || constant_shape(sql).is_some_and(|s| self.lookup(version, roles, skey, &s).is_some())
    }

    /// The decision for `sql`, from the cache or decided from `analyse(sql)` (and then
    /// cached). `None` when it is not cached and `analyse` has no analysis to offer (the
    /// proxy analyses big strings off its runtime threads and comes back).
    pub fn decide_with(
        &self,
        policy: &Policy,
        roles: &RoleSet,
        session: &SessionState,
        sql: &str,
        analyse: impl FnOnce(&str) -> Option<Result<Analysis, AnalysisError>>,
    ) -> Option<Arc<QueryDecision>> {
        let version = policy.version();
        if roles.version() != version {
            // A role set from another policy grants nothing here; never share its entries.
            return Some(Arc::new(policy.decide_analysis(
                roles,
                analyse(sql)?,
                session,
            )));
        }
        let skey = session.cache_key();
        if let Some(d) = self.lookup(version, roles, skey, sql) {
            return Some(d);
        }
        // Statements that differ only in numeric constants (`WHERE aid = 42`) share one
        // decision, found under their shape; see `constant_shape` and `shape_safe`.
        let shape = constant_shape(sql);
        if let Some(shape) = &shape {
            if let Some(d) = self.lookup(version, roles, skey, shape) {
                return Some(d);
            }
        }
        // Decide outside the locks: parsing is the slow part.
        let decision = Arc::new(policy.decide_analysis(roles, analyse(sql)?, session));
        let denied_text = decision.decision.verdict == crate::Verdict::Deny
            && sql.len() > MAX_CACHED_DENIAL_BYTES;
        if decision.cacheable && !denied_text {
            self.store(version, roles, skey, sql, &decision);
            if let Some(shape) = &shape {
                if shape_safe(&decision) {
                    self.store(version, roles, skey, shape, &decision);
                }
            }
        }
        Some(decision)
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
        s.insert(hash, promoted, self.per_shard, self.generation_bytes);
        Some(d)
    }

    fn store(&self, version: u64, roles: &RoleSet, skey: &str, sql: &str, d: &Arc<QueryDecision>) {
        let bytes = size_of::<Entry>()
            + ENTRY_OVERHEAD
            + sql.len()
            + skey.len()
            + roles.idx.len() * size_of::<u16>()
            + decision_bytes(d);
        if bytes > self.max_entry_bytes {
            return;
        }
        let hash = self.key_hash(version, roles, skey, sql);
        let e = Arc::new(Entry {
            version,
            roles: roles.idx.clone(),
            session: skey.to_owned(),
            sql: sql.to_owned(),
            decision: Arc::clone(d),
            bytes,
        });
        if let Ok(mut s) = self.shards[(hash as usize) % SHARDS].lock() {
            s.insert(hash, e, self.per_shard, self.generation_bytes);
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
            .map(|s| s.young_len + s.old_len)
            .sum()
    }

    /// Bytes the cached decisions account for (an entry found in both generations
    /// counts twice, so this never undercounts).
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok())
            .map(|s| s.young_bytes + s.old_bytes)
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    fn insert(&mut self, hash: u64, e: Arc<Entry>, cap: usize, cap_bytes: usize) {
        if self.young_len >= cap || self.young_bytes + e.bytes > cap_bytes {
            self.old = std::mem::take(&mut self.young);
            self.old_len = self.young_len;
            self.old_bytes = self.young_bytes;
            self.young_len = 0;
            self.young_bytes = 0;
        }
        let list = self.young.entry(hash).or_default();
        if !list.iter().any(|x| Arc::ptr_eq(x, &e)) {
            self.young_len += 1;
            self.young_bytes += e.bytes;
            list.push(e);
        }
    }
}

/// Per entry beyond its own struct: the map slot, the `Vec` and the `Arc` header.
const ENTRY_OVERHEAD: usize = 96;

/// Heap bytes a decision holds, counted generously (strings by length, vectors by element
/// size): what keeping it in the cache costs.
fn decision_bytes(d: &QueryDecision) -> usize {
    size_of::<QueryDecision>()
        + d.decision.rule.len()
        + d.decision.reason.len()
        + d.statements
            .iter()
            .map(|s: &StatementDecision| {
                size_of::<StatementDecision>()
                    + s.decision.rule.len()
                    + s.decision.reason.len()
                    + analysis_bytes(&s.analysis)
            })
            .sum::<usize>()
}

fn analysis_bytes(a: &StatementAnalysis) -> usize {
    let object = |o: &ObjectRef| match o {
        ObjectRef::Relation { schema, name } => schema.as_ref().map_or(0, String::len) + name.len(),
        ObjectRef::Schema(s) => s.len(),
        ObjectRef::All | ObjectRef::RelationOid(_) => 0,
        ObjectRef::Pseudo { name, .. } => name.len(),
    };
    let function = |f: &FunctionRef| {
        size_of::<FunctionRef>() + f.schema.as_ref().map_or(0, String::len) + f.name.len()
    };
    let setting = |s: &SettingChange| match s {
        SettingChange::Set { name, value } => {
            name.len()
                + value
                    .as_ref()
                    .map_or(0, |v| v.iter().map(|x| x.len() + size_of::<String>()).sum())
        }
        SettingChange::Reset { name } => name.len(),
        SettingChange::ResetAll => 0,
    };
    let effect = |e: &SessionEffect| match e {
        SessionEffect::Prepare(name, inner) => name.len() + analysis_bytes(inner),
        SessionEffect::DeclareCursor { name, query, .. } => name.len() + analysis_bytes(query),
        SessionEffect::Deallocate(name) | SessionEffect::CloseCursor(name) => {
            name.as_ref().map_or(0, String::len)
        }
        SessionEffect::DiscardAll => 0,
    };
    size_of::<StatementAnalysis>()
        + a.sql.len()
        + a.accesses
            .iter()
            .map(|x: &Access| size_of::<Access>() + object(&x.object))
            .sum::<usize>()
        + a.functions
            .iter()
            .chain(&a.operators)
            .chain(&a.defines_functions)
            .map(function)
            .sum::<usize>()
        + a.attributes
            .iter()
            .chain(&a.casts)
            .map(|s| size_of::<String>() + s.len())
            .sum::<usize>()
        + a.syntax_calls
            .iter()
            .map(|(s, _)| size_of::<(String, u32)>() + s.len())
            .sum::<usize>()
        + a.settings
            .iter()
            .map(|s| size_of::<SettingChange>() + setting(s))
            .sum::<usize>()
        + a.not_understood
            .iter()
            .map(|s| size_of::<String>() + s.len())
            .sum::<usize>()
        + a.executes.as_ref().map_or(0, String::len)
        + a.fetches.as_ref().map_or(0, String::len)
        + a.effects
            .iter()
            .map(|e| size_of::<SessionEffect>() + effect(e))
            .sum::<usize>()
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
    const NAME_READING: &[&str] = &[
        "set_config",
        "pg_notify",
        "nextval",
        "setval",
        "currval",
        "pg_sequence_last_value",
    ];
    match d.statements.as_slice() {
        [one] => {
            let a = &one.analysis;
            a.settings.is_empty()
                && a.effects.is_empty()
                && a.executes.is_none()
                && a.fetches.is_none()
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
