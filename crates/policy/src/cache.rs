//! A cache of query decisions, bounded in bytes and in entries.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use foldhash::fast::FoldHasher;

use crate::analyze::{
    analyze, Access, Analysis, AnalysisError, FunctionRef, ObjectRef, SessionEffect, SettingChange,
    StatementAnalysis,
};
use crate::decide::{QueryDecision, RoleSet, SessionState, StatementDecision};
use crate::keyed::{keyed_state, KeyedState};
use crate::policy::Policy;
use crate::shape::{fast_shape_into, fast_shape_verified, is_fast, scanner_shape};

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
///
/// Keys are hashed with foldhash under seeds drawn from the operating system's randomness
/// ([`keyed_state`], docs/dependencies.md): a caller cannot predict which texts collide, and
/// since entries are compared on the full key a collision costs only time.
pub struct DecisionCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    /// Bytes one generation of one shard may hold (half the shard's budget).
    generation_bytes: usize,
    max_entry_bytes: usize,
    hasher: KeyedState,
}

/// The shards' maps are keyed by the key's hash, already keyed and well mixed: they use it
/// as it is rather than hashing it again.
type ByHash = HashMap<u64, Vec<Arc<Entry>>, BuildHasherDefault<PassThrough>>;

#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; kept total for any other use.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Default)]
struct Shard {
    young: ByHash,
    young_len: usize,
    young_bytes: usize,
    old: ByHash,
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
    fn is(&self, key: &Key<'_>, sql: &str) -> bool {
        self.version == key.version
            && self.roles == key.roles.idx
            && self.session == key.session
            && self.sql == sql
    }
}

/// Everything of a cache key but the SQL text, with its hash state: hashed once per
/// decision, then finished for each text looked up (the exact text, its shape).
struct Key<'a> {
    version: u64,
    roles: &'a RoleSet,
    session: &'a str,
    hasher: FoldHasher<'static>,
}

impl Key<'_> {
    fn hash(&self, sql: &str) -> u64 {
        let mut h = self.hasher.clone();
        h.write(sql.as_bytes());
        h.finish()
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
            hasher: keyed_state(),
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

    fn key<'a>(&'a self, version: u64, roles: &'a RoleSet, session: &'a str) -> Key<'a> {
        let mut hasher = self.hasher.build_hasher();
        version.hash(&mut hasher);
        roles.idx.hash(&mut hasher);
        session.hash(&mut hasher);
        Key {
            version,
            roles,
            session,
            hasher,
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
        let key = self.key(version, roles, session.cache_key());
        self.lookup(&key, key.hash(sql), sql).is_some()
            || with_shape_buffer(|s| {
                shape_into(sql, s) && self.lookup(&key, key.hash(s), s).is_some()
            })
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
        let key = self.key(version, roles, session.cache_key());
        let hash = key.hash(sql);
        if let Some(d) = self.lookup(&key, hash, sql) {
            return Some(d);
        }
        with_shape_buffer(|shape| {
            // Statements that differ only in numeric constants (`WHERE aid = 42`) share one
            // decision, found under their shape; see shape.rs and `shape_safe`.
            let shaped = shape_into(sql, shape).then(|| key.hash(shape));
            if let Some(h) = shaped {
                if let Some(d) = self.lookup(&key, h, shape) {
                    return Some(d);
                }
            }
            // Decide outside the locks: parsing is the slow part.
            let decision = Arc::new(policy.decide_analysis(roles, analyse(sql)?, session));
            let denied_text = decision.decision.verdict == crate::Verdict::Deny
                && sql.len() > MAX_CACHED_DENIAL_BYTES;
            if decision.cacheable && !denied_text {
                self.store(&key, hash, sql, &decision);
                if let Some(h) = shaped {
                    // A fast shape is stored only when PostgreSQL's own scanner finds the
                    // same constants (a hit's soundness rests on it: shape.rs, `fast_shape_into`).
                    if shape_safe(&decision) && (!is_fast(shape) || fast_shape_verified(sql, shape))
                    {
                        self.store(&key, h, shape, &decision);
                    }
                }
            }
            Some(decision)
        })
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        // Bits the shards' maps use little (they index by the low bits and tag by the top
        // seven), so each shard's map still sees well-spread hashes.
        &self.shards[((hash >> 32) as usize) % SHARDS]
    }

    fn lookup(&self, key: &Key<'_>, hash: u64, sql: &str) -> Option<Arc<QueryDecision>> {
        let mut s = self.shard(hash).lock().ok()?;
        if let Some(e) = s
            .young
            .get(&hash)
            .and_then(|v| v.iter().find(|e| e.is(key, sql)))
        {
            return Some(Arc::clone(&e.decision));
        }
        let promoted = s
            .old
            .get(&hash)
            .and_then(|v| v.iter().find(|e| e.is(key, sql)))
            .cloned()?;
        let d = Arc::clone(&promoted.decision);
        s.insert(hash, promoted, self.per_shard, self.generation_bytes);
        Some(d)
    }

    fn store(&self, key: &Key<'_>, hash: u64, sql: &str, d: &Arc<QueryDecision>) {
        let bytes = size_of::<Entry>()
            + ENTRY_OVERHEAD
            + sql.len()
            + key.session.len()
            + key.roles.idx.len() * size_of::<u16>()
            + decision_bytes(d);
        if bytes > self.max_entry_bytes {
            return;
        }
        let e = Arc::new(Entry {
            version: key.version,
            roles: key.roles.idx.clone(),
            session: key.session.to_owned(),
            sql: sql.to_owned(),
            decision: Arc::clone(d),
            bytes,
        });
        if let Ok(mut s) = self.shard(hash).lock() {
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

/// The key statements differing only in numeric constants share, into `out`: the fast
/// scanner's shape, or, for a text it declines, PostgreSQL's scanner's (in a key space of
/// its own). False (and `out` empty) when there is none.
fn shape_into(sql: &str, out: &mut String) -> bool {
    if fast_shape_into(sql, out) {
        return true;
    }
    match scanner_shape(sql) {
        Some(s) => {
            *out = s;
            true
        }
        None => false,
    }
}

thread_local! {
    /// The buffer shapes are built in: one per thread, reused, so a shape hit allocates
    /// nothing.
    static SHAPE_BUFFER: Cell<String> = const { Cell::new(String::new()) };
}

/// Runs `f` with this thread's shape buffer (a fresh one if it is in use further up).
fn with_shape_buffer<R>(f: impl FnOnce(&mut String) -> R) -> R {
    let mut buffer = SHAPE_BUFFER.take();
    let r = f(&mut buffer);
    if buffer.capacity() <= 2 * crate::shape::MAX_SHAPED_BYTES {
        buffer.clear();
        SHAPE_BUFFER.set(buffer);
    }
    r
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
    use super::*;
    use crate::Principal;

    fn setup() -> (Policy, RoleSet, SessionState) {
        let policy = Policy::from_toml(
            r#"
            [[roles]]
            name = "analyst"
            members = { users = ["alice@contoso.com"] }
            allow = [ { actions = ["select"], objects = ["public.orders"] } ]
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let roles = policy.roles_for(&Principal {
            upn: "alice@contoso.com".into(),
            ..Default::default()
        });
        let session = SessionState::new(&policy);
        (policy, roles, session)
    }

    #[test]
    fn statements_differing_in_numbers_share_a_decision() {
        let (policy, roles, session) = setup();
        let cache = DecisionCache::new(100);
        let first = "SELECT * FROM orders WHERE id = 1 LIMIT 10";
        assert!(!cache
            .decide(&policy, &roles, &session, first)
            .decision
            .blocks());
        // The exact text and its fast shape.
        assert_eq!(cache.len(), 2);
        let other = "SELECT * FROM orders WHERE id = 73 LIMIT 5";
        assert!(cache.contains(&policy, &roles, &session, other));
        let d = cache.decide_with(&policy, &roles, &session, other, |_| None);
        assert!(d.is_some_and(|d| !d.decision.blocks()));
        // Another class of constant is another shape.
        let float = "SELECT * FROM orders WHERE id = 1.5 LIMIT 10";
        assert!(!cache.contains(&policy, &roles, &session, float));
        let big = "SELECT * FROM orders WHERE id = 4294967296 LIMIT 10";
        assert!(!cache.contains(&policy, &roles, &session, big));
        // Denials are shared the same way.
        let denied = "SELECT * FROM salaries WHERE id = 1";
        assert!(cache
            .decide(&policy, &roles, &session, denied)
            .decision
            .blocks());
        let d = cache.decide_with(
            &policy,
            &roles,
            &session,
            "SELECT * FROM salaries WHERE id = 2",
            |_| None,
        );
        assert!(d.is_some_and(|d| d.decision.blocks()));
    }

    #[test]
    fn texts_the_fast_scanner_declines_share_by_postgres_scanner() {
        let (policy, roles, session) = setup();
        let cache = DecisionCache::new(100);
        let first = "SELECT E'x' FROM orders WHERE id = 1";
        assert!(!cache
            .decide(&policy, &roles, &session, first)
            .decision
            .blocks());
        assert!(cache.contains(
            &policy,
            &roles,
            &session,
            "SELECT E'x' FROM orders WHERE id = 2"
        ));
        // A text PostgreSQL 16+ reads as a number and older versions as `0 AS x1F` gets a
        // scanner shape only: a text the fast scanner reads never finds it.
        let hex = "SELECT 0x1F FROM orders";
        cache.decide(&policy, &roles, &session, hex);
        assert!(cache.contains(&policy, &roles, &session, "SELECT 0x2F FROM orders"));
        assert!(!cache.contains(&policy, &roles, &session, "SELECT 5 FROM orders"));
    }

    #[test]
    fn shape_unsafe_decisions_are_cached_by_exact_text_only() {
        let (policy, roles, session) = setup();
        let cache = DecisionCache::new(100);
        let sql = "SELECT nextval(16405) FROM orders";
        cache.decide(&policy, &roles, &session, sql);
        assert!(cache.contains(&policy, &roles, &session, sql));
        assert!(!cache.contains(
            &policy,
            &roles,
            &session,
            "SELECT nextval(16406) FROM orders"
        ));
    }
}
