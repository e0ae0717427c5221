//! Policy enforcement: which statements may reach the upstream.
//!
//! `PolicyStore` holds the current policy (reloaded on SIGHUP and when the file
//! changes; an invalid new file keeps the old policy) and the shared decision cache.
//! `Gate` is one session's view: the caller's roles, pgward's model of the session
//! (search path, prepared statements), and the decision for every Query, Parse and
//! FunctionCall the client sends, taken before anything is forwarded.
//!
//! A denied message is not dropped: it is replaced by a statement that makes the
//! *server* fail at the same point of the protocol (`SELECT '<marker>'::int4` fails in
//! parse analysis, so also at Parse). The server then keeps the order of replies,
//! skips the rest of an extended-protocol batch up to Sync, and aborts an open
//! transaction exactly as it would for any error; the relay rewrites the marked error
//! into the client's 42501 naming the rule (`Denials`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use pgward_policy::{
    keyed_state, Analysis, AnalysisError, Decision, DecisionCache, KeyedState, Policy, Principal,
    QueryDecision, RoleSet, SessionEffect, SessionState, StatementAnalysis,
};
use pgward_wire::build::{self, Severity};

use crate::catalogs::CatalogHandle;
use tracing::{error, info, warn};

use crate::analysis_pool::{AnalysisPool, Pending};
use crate::config::{load_policy, PolicyConfig};

/// Strings up to this size are analysed inline on the runtime thread (microseconds);
/// longer ones on the analysis pool.
pub const INLINE_ANALYSIS_BYTES: usize = 4096;

/// PostgreSQL's FUNC_MAX_ARGS: a FunctionCall with more arguments fails on the server.
const MAX_FUNCTION_ARGS: usize = 100;

/// The current policy and the decision cache, shared by all sessions.
pub struct PolicyStore {
    path: PathBuf,
    current: RwLock<Arc<Policy>>,
    modified: RwLock<Option<SystemTime>>,
    cache: DecisionCache,
    pool: AnalysisPool,
    /// `[policy] max_statement_bytes`.
    max_statement_bytes: usize,
    /// The current policy's version, readable without the lock.
    version: AtomicU64,
    /// The key of `hash` masks (`[policy] mask_key_file`).
    mask_key: Option<crate::masking::MaskKey>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl PolicyStore {
    pub fn open(path: &Path, config: &PolicyConfig) -> Result<Self, String> {
        let policy = load_policy(path)?;
        let mask_key = match &config.mask_key_file {
            Some(f) => Some(crate::masking::MaskKey::load(f)?),
            None => None,
        };
        if mask_key.is_none() && policy.has_hash_masks() {
            return Err(
                "the policy has hash masks: set [policy] mask_key_file to a file holding their key (at least 32 bytes)".to_owned(),
            );
        }
        Ok(Self {
            mask_key,
            path: path.to_path_buf(),
            version: AtomicU64::new(policy.version()),
            current: RwLock::new(Arc::new(policy)),
            modified: RwLock::new(modified(path)),
            cache: DecisionCache::with_limits(config.cache_entries, config.cache_bytes),
            pool: AnalysisPool::start(
                config.analysis_threads,
                Duration::from_millis(config.analysis_timeout_ms),
            )?,
            max_statement_bytes: config.max_statement_bytes,
        })
    }

    /// Bytes the decision cache accounts for (`pgward_policy_cache_bytes`).
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    pub fn current(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-reads the file. An invalid file keeps the old policy (logged).
    pub fn reload(&self) {
        let loaded = load_policy(&self.path).and_then(|p| {
            if p.has_hash_masks() && self.mask_key.is_none() {
                Err("the policy has hash masks and [policy] mask_key_file is not set".to_owned())
            } else {
                Ok(p)
            }
        });
        match loaded {
            Ok(policy) => {
                let mode = policy.mode();
                let version = policy.version();
                match self.current.write() {
                    Ok(mut g) => *g = Arc::new(policy),
                    Err(p) => *p.into_inner() = Arc::new(policy),
                }
                self.version.store(version, Ordering::Release);
                self.cache.clear();
                info!(file = %self.path.display(), ?mode, "policy reloaded");
            }
            Err(e) => error!(error = %e, "policy reload failed; keeping the previous policy"),
        }
        if let Ok(mut m) = self.modified.write() {
            *m = modified(&self.path);
        }
    }

    /// Polls the file's modification time and reloads when it changes. Polling, not
    /// inotify: it also sees ConfigMap updates that swap a symlink.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = modified(&self.path);
            let before = self.modified.read().map(|m| *m).unwrap_or(None);
            if now.is_some() && now != before {
                self.reload();
            }
        }
    }
}

/// Tests of the second wall (docs/security.md) need statements that pgward's own decision
/// would refuse to reach the database. Debug builds only: release builds contain none of
/// this, whatever the environment says.
#[cfg(debug_assertions)]
mod test_bypass {
    use std::sync::{Arc, OnceLock};

    use pgward_policy::{Decision, QueryDecision, Verdict};

    /// `PGWARD_TEST_BYPASS_MARKER`: a query string that begins with this text is allowed
    /// whatever the policy says (and logged as such).
    fn marker() -> Option<&'static str> {
        static MARKER: OnceLock<Option<String>> = OnceLock::new();
        MARKER
            .get_or_init(|| {
                std::env::var("PGWARD_TEST_BYPASS_MARKER")
                    .ok()
                    .filter(|m| m.len() >= 8)
            })
            .as_deref()
    }

    pub(super) fn apply(sql: &str, qd: Arc<QueryDecision>) -> Arc<QueryDecision> {
        match marker() {
            Some(m) if sql.starts_with(m) && qd.decision.verdict == Verdict::Deny => {
                tracing::warn!(
                    "test build: a denied statement is let through (PGWARD_TEST_BYPASS_MARKER)"
                );
                let mut qd = (*qd).clone();
                qd.decision = Decision {
                    verdict: Verdict::Allow,
                    rule: "test.bypass".into(),
                    reason: format!(
                        "let through by the test-only bypass, instead of: {}",
                        qd.decision.reason
                    ),
                    enforced: true,
                };
                Arc::new(qd)
            }
            _ => qd,
        }
    }
}

/// A refusal waiting for the server's marked error, to be rewritten for the client.
#[derive(Debug, Clone)]
pub struct Denial {
    pub rule: String,
    pub reason: String,
    /// 42501 for the policy, 42601 for a statement PostgreSQL's parser rejects, 54000 over
    /// an analysis budget, 58030 when the audit log cannot record, 53400 over a rate limit.
    pub code: &'static str,
    /// For 42601: the character the parser's error points at (field `P`), 0 for none.
    pub position: u32,
}

impl Denial {
    pub fn policy(rule: String, reason: String) -> Self {
        Self {
            rule,
            reason,
            code: "42501",
            position: 0,
        }
    }

    /// Fail-closed: the audit log cannot write, so nothing may run unrecorded.
    pub fn audit_unavailable() -> Self {
        Self {
            rule: "audit.unavailable".into(),
            reason: "the audit log cannot record statements".into(),
            code: "58030",
            position: 0,
        }
    }

    /// Over the identity's statement rate (`[limits]`).
    pub fn rate_limited(refusal: crate::limits::RateRefusal) -> Self {
        Self {
            rule: "limits.statement_rate".into(),
            reason: match refusal {
                crate::limits::RateRefusal::OverRate(per_second) => format!(
                    "statement rate limit for this identity exceeded ({per_second}/s); retry shortly"
                ),
                crate::limits::RateRefusal::StoreUnavailable => "statement rate limit cannot be checked: the store pgward's replicas share is unreachable; retry shortly".to_owned(),
            },
            code: "53400",
            position: 0,
        }
    }

    pub fn message(&self) -> String {
        match self.code {
            // Exactly what the server would have said: drivers match on it.
            "42601" => self.reason.clone(),
            "42501" => format!(
                "pgward policy denied this statement (rule {}): {}",
                self.rule, self.reason
            ),
            _ => format!("pgward refused this statement: {}", self.reason),
        }
    }
}

/// A refusal's ErrorResponse, replacing the server's marked error.
#[derive(Debug)]
pub struct Rewritten {
    pub bytes: BytesMut,
    pub code: &'static str,
    /// The message, as UTF-8 (for the audit record).
    pub message: String,
}

/// Refusals in flight for one session, keyed by the id in their marker. The nonce is a
/// per-session secret, so a client can't forge an error pgward would rewrite.
#[derive(Debug, Default)]
pub struct Denials {
    marker_prefix: String,
    pending: HashMap<u64, Denial>,
    next_id: u64,
}

impl Denials {
    pub fn new(nonce: &str) -> Self {
        Self {
            marker_prefix: format!("pgward-denied-{nonce}-"),
            pending: HashMap::new(),
            next_id: 0,
        }
    }

    /// A fresh marker token, remembered with its refusal.
    fn marker(&mut self, denial: Denial) -> String {
        let id = self.next_id;
        self.next_id += 1;
        info!(rule = %denial.rule, reason = %denial.reason, code = denial.code, "statement refused");
        self.pending.insert(id, denial);
        format!("{}{id}", self.marker_prefix)
    }

    /// A Bind replaced by one naming a statement that cannot exist, so the server fails
    /// it (26000, message naming the marker) and skips to Sync.
    pub fn replace_bind(&mut self, portal: &str, denial: Denial) -> Verdict {
        let name = self.marker(denial);
        let mut out = BytesMut::new();
        build::bind_without_params(&mut out, portal, &name);
        Verdict::Replace(out)
    }

    /// An Execute replaced by one naming a portal that cannot exist, so the server fails it
    /// (34000, message naming the marker) and skips to Sync.
    pub fn replace_execute(&mut self, denial: Denial) -> Verdict {
        let name = self.marker(denial);
        let mut out = BytesMut::new();
        build::execute(&mut out, &name, 0);
        Verdict::Replace(out)
    }

    /// A Query (or FunctionCall) replaced by one the server will fail.
    pub fn replace_query(&mut self, denial: Denial) -> Verdict {
        let sql = format!("SELECT '{}'::pg_catalog.int4", self.marker(denial));
        let mut out = BytesMut::new();
        build::query(&mut out, &sql);
        Verdict::Replace(out)
    }

    /// A Parse replaced by one the server will fail at Parse.
    pub fn replace_parse(&mut self, statement: &str, denial: Denial) -> Verdict {
        let sql = format!("SELECT '{}'::pg_catalog.int4", self.marker(denial));
        let mut out = BytesMut::new();
        build::parse(&mut out, statement, &sql);
        Verdict::Replace(out)
    }

    /// If `error_body` is the server's answer to a replaced statement, the ErrorResponse to
    /// send instead (its message written by `encode` in the client's encoding, as the
    /// server writes its own), with its SQLSTATE and message for the audit.
    pub fn rewrite(
        &mut self,
        error_body: &[u8],
        encode: impl Fn(&str) -> Vec<u8>,
    ) -> Option<Rewritten> {
        if self.pending.is_empty() {
            return None;
        }
        let fields = pgward_wire::backend::error_fields(error_body);
        let at = fields.message.find(&self.marker_prefix)?;
        let rest = &fields.message[at + self.marker_prefix.len()..];
        let id: u64 = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let denial = self.pending.remove(&id)?;
        let message = denial.message();
        let mut bytes = BytesMut::new();
        build::error_response_at(
            &mut bytes,
            Severity::Error,
            denial.code,
            &encode(&message),
            denial.position,
        );
        Some(Rewritten {
            bytes,
            code: denial.code,
            message,
        })
    }

    /// Whether an ErrorResponse answers one of pgward's own replaced statements.
    pub fn is_marked(&self, error_body: &[u8]) -> bool {
        !self.pending.is_empty()
            && pgward_wire::backend::error_fields(error_body)
                .message
                .contains(&self.marker_prefix)
    }

    /// Forgets denials whose statement the server skipped (an earlier error in the same
    /// batch, or an aborted transaction answered 25P02). Called at ReadyForQuery when
    /// nothing else is outstanding.
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

/// What to do with one client message.
pub enum Verdict {
    Forward,
    /// Replace the message with these bytes (a statement the server will fail, or a
    /// rewritten one).
    Replace(BytesMut),
}

/// A prepared statement or an open portal (cursor), with the analysis of what it runs
/// and the policy version that last allowed it.
#[derive(Debug, Clone)]
struct Allowed {
    analysis: Runs,
    version: u64,
    /// A WITH HOLD cursor outlives its transaction; other portals end with it.
    hold: bool,
}

/// What a prepared statement or portal runs: the (cached, shared) decision of the Parse
/// that prepared it, so the hot Parse/Bind path copies nothing, or an analysis of its own.
#[derive(Debug, Clone)]
enum Runs {
    /// The single statement of a parsed string.
    Parsed(Arc<QueryDecision>),
    Analysis(Arc<StatementAnalysis>),
}

impl Runs {
    fn analysis(&self) -> Option<&StatementAnalysis> {
        match self {
            Runs::Parsed(qd) => qd.statements.first().map(|s| &s.analysis),
            Runs::Analysis(a) => Some(a),
        }
    }
}

/// Prepared statements or portals by name. The unnamed one, which most drivers use for
/// every statement, is a field rather than a map entry: the hot path hashes nothing. Named
/// ones (pgbench -M prepared, pgjdbc after five executions) are hashed with the policy
/// crate's keyed foldhash: SipHash cost ~150 instructions per Bind.
#[derive(Debug)]
struct Names {
    unnamed: Option<Allowed>,
    named: HashMap<String, Allowed, KeyedState>,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            unnamed: None,
            named: HashMap::with_hasher(keyed_state()),
        }
    }
}

impl Names {
    fn get(&self, name: &str) -> Option<&Allowed> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Allowed> {
        if name.is_empty() {
            self.unnamed.as_mut()
        } else {
            self.named.get_mut(name)
        }
    }

    fn insert(&mut self, name: &str, allowed: Allowed) {
        if name.is_empty() {
            self.unnamed = Some(allowed);
        } else if let Some(slot) = self.named.get_mut(name) {
            *slot = allowed;
        } else {
            self.named.insert(name.to_owned(), allowed);
        }
    }

    fn remove(&mut self, name: &str) {
        if name.is_empty() {
            self.unnamed = None;
        } else {
            self.named.remove(name);
        }
    }

    fn is_empty(&self) -> bool {
        self.unnamed.is_none() && self.named.is_empty()
    }

    /// Keeps the entries (the unnamed one included) for which `keep` holds.
    fn retain(&mut self, keep: impl Fn(&Allowed) -> bool) {
        if self.unnamed.as_ref().is_some_and(|a| !keep(a)) {
            self.unnamed = None;
        }
        self.named.retain(|_, a| keep(a));
    }
}

/// Statement kinds that can change what the catalog says about functions, operators,
/// casts, sequences, schemas or views.
const CATALOG_CHANGING: &[&str] = &[
    "CreateFunctionStmt",
    "AlterFunctionStmt",
    "DefineStmt",
    "CreateSeqStmt",
    "AlterSeqStmt",
    "ViewStmt",
    "RenameStmt",
    "AlterObjectSchemaStmt",
    "DropStmt",
    "CreateSchemaStmt",
    "CreateExtensionStmt",
    "AlterExtensionStmt",
    "AlterExtensionContentsStmt",
    "CreateStmt",
    "CreateTableAsStmt",
    // Columns added, dropped or retyped: masks are planned against them.
    "AlterTableStmt",
];

/// Whether a statement of this kind is in [`CATALOG_CHANGING`]. Runs after every allowed
/// statement: the first letter rules out SELECT, INSERT, UPDATE, transaction control and
/// most others without comparing strings (every listed kind starts with A, C, D, R or V;
/// a test checks it).
fn changes_catalog(kind: &str) -> bool {
    kind.starts_with(['A', 'C', 'D', 'R', 'V']) && CATALOG_CHANGING.contains(&kind)
}

/// One session's policy enforcement.
pub struct Gate {
    store: Arc<PolicyStore>,
    policy: Arc<Policy>,
    principal: Principal,
    roles: RoleSet,
    session: SessionState,
    /// The policy changed during the session. Until it does, names pgward never saw
    /// prepared or opened are passed through (nothing can have opened them under another
    /// policy); after it, they are refused (see docs/policy.md, "Reload"). A flag, not a
    /// version: a policy reverted to the first one still had another in force meanwhile.
    reloaded: bool,
    /// Prepared statements (protocol Parse, the unnamed one included, and SQL PREPARE),
    /// so a Bind after a reload is decided by the policy in force.
    statements: Names,
    /// Portals: protocol Bind and SQL DECLARE share PostgreSQL's one namespace, and both
    /// Execute and SQL FETCH/MOVE read either.
    portals: Names,
    /// Analyses of big strings done ahead on the analysis pool, by exact text; taken by
    /// `decide`.
    ahead: HashMap<Arc<str>, Result<Analysis, AnalysisError>>,
    /// A job that overran its budget and still holds an analysis thread: the session's
    /// next job waits for it, so one session occupies at most one thread.
    straggler: Option<Pending>,
    /// Where decisions are counted (`pgward_policy_decisions_total`).
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The upstream database's own catalog, which names resolve against.
    catalog: Option<CatalogHandle>,
    /// The caller's roles mask columns (see masking.rs).
    has_masks: bool,
    /// A statement with a mask plan was prepared in this session (never reset: a Bind
    /// need not look its statement up until one was).
    any_planned: bool,
}

impl Gate {
    pub fn new(store: Arc<PolicyStore>, principal: Principal) -> Self {
        let policy = store.current();
        let roles = policy.roles_for(&principal);
        let mut session = SessionState::new(&policy);
        // The name application_name must lead with (as in the upstream startup parameters).
        session.set_caller(principal.caller_name());
        Self {
            store,
            reloaded: false,
            policy,
            principal,
            roles,
            session,
            statements: Names::default(),
            portals: Names::default(),
            ahead: HashMap::new(),
            straggler: None,
            metrics: None,
            catalog: None,
            has_masks: false,
            any_planned: false,
        }
        .masks_known()
    }

    fn masks_known(mut self) -> Self {
        self.has_masks = self.policy.has_masks(&self.roles);
        self
    }

    /// Whether the caller's roles mask columns.
    pub fn has_masks(&self) -> bool {
        self.has_masks
    }

    /// Whether a Bind may need a plan: a statement with one was prepared here, or the
    /// policy changed (statements are planned again under it).
    pub fn binds_may_plan(&self) -> bool {
        self.has_masks && (self.any_planned || self.reloaded)
    }

    /// The key of `hash` masks.
    pub fn mask_key(&self) -> Option<crate::masking::MaskKey> {
        self.store.mask_key.clone()
    }

    /// The masks of what a prepared statement returns, for a Bind of it: the plan made
    /// when it was parsed, or, after a reload, one made under the policy in force.
    pub fn bind_plan(
        &mut self,
        statement: &str,
    ) -> Result<Option<Arc<pgward_policy::MaskPlan>>, Denial> {
        self.refresh();
        if !self.has_masks {
            return Ok(None);
        }
        let Some(a) = self.statements.get(statement) else {
            return Ok(None);
        };
        if let (Runs::Parsed(qd), false) = (&a.analysis, self.reloaded) {
            return Ok(qd.statements.first().and_then(|s| s.masks.clone()));
        }
        let Some(analysis) = a.analysis.analysis() else {
            return Ok(None);
        };
        let analysis = analysis.clone();
        self.policy
            .mask_plan(&self.roles, &analysis, &self.session)
            .map_err(|d| Denial::policy(d.rule, d.reason))
    }

    /// Resolves names against the upstream database's own catalog (see catalogs.rs).
    pub fn with_catalog(mut self, catalog: CatalogHandle) -> Self {
        if let Some(c) = catalog.newer_than(None) {
            self.session.set_catalog(c);
        }
        self.catalog = Some(catalog);
        self
    }

    /// A client's plain `SET application_name = 'x'` as pgward runs it:
    /// `SET application_name = '<caller> (x)'` (pgjdbc sends one on every connect).
    pub fn rewrite(&self, sql: &str) -> Option<String> {
        pgward_policy::rewrite_set_application_name(sql, self.principal.caller_name())
    }

    /// Counts this session's decisions in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn role_names(&self) -> &[String] {
        self.roles.names()
    }

    /// The policy's search path as a `search_path` setting value (each schema quoted), for
    /// the upstream session: the server must resolve unqualified names as pgward does, whatever
    /// the login role's or database's own default (`"$user"` would differ per role).
    pub fn search_path_setting(&self) -> String {
        self.policy
            .default_search_path()
            .iter()
            .map(|s| format!("\"{}\"", s.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The upstream role the caller's roles name (`upstream_role`), if any.
    pub fn upstream_role(&self) -> Option<String> {
        self.policy.upstream_role(&self.roles).map(str::to_owned)
    }

    /// Picks up a reloaded policy: roles are recomputed for it.
    fn refresh(&mut self) {
        // Checked on every statement, Bind and Execute: one atomic load, no lock, unless
        // the policy changed.
        if self.store.version.load(Ordering::Acquire) == self.policy.version() {
            return;
        }
        let current = self.store.current();
        if current.version() != self.policy.version() {
            self.reloaded = true;
            self.roles = current.roles_for(&self.principal);
            self.policy = current;
            self.has_masks = self.policy.has_masks(&self.roles);
            // A reload also has the catalog read again (objects may have changed with it).
            if let Some(h) = &self.catalog {
                h.want_columns(self.policy.has_any_masks());
                h.policy_changed(self.policy.version());
            }
        }
        self.refresh_catalog();
    }

    /// Picks up a newer catalog (functions created through pgward by any session, a
    /// refresh). Only decisions need it, not Bind or Execute: one read lock per decision.
    fn refresh_catalog(&mut self) {
        if let Some(h) = &self.catalog {
            let have = self.session.catalog().map(|c| c.generation());
            if let Some(c) = h.newer_than(have) {
                self.session.set_catalog(c);
            }
        }
    }

    /// After allowed statements are forwarded: functions they create are known at once, and
    /// DDL has the catalog read again.
    fn note_ddl(&mut self, qd: &QueryDecision) {
        let Some(h) = &self.catalog else { return };
        let mut changed = false;
        for s in &qd.statements {
            let a = &s.analysis;
            if !a.defines_functions.is_empty() {
                if let Some(c) = h.created(&self.session.defined_functions(a)) {
                    self.session.set_catalog(c);
                }
            }
            changed |= changes_catalog(a.kind);
        }
        if changed {
            h.changed();
        }
    }

    /// Checks a startup parameter before the session exists upstream.
    pub fn check_startup_setting(&mut self, name: &str, value: &str) -> Result<(), Denial> {
        self.refresh();
        let d = self
            .policy
            .decide_setting(&self.roles, name, value, &self.session);
        if d.blocks() {
            return Err(Denial::policy(d.rule, d.reason));
        }
        self.session.apply_startup_setting(name, value);
        Ok(())
    }

    /// Whether `sql` must be analysed on the pool (`analyse_ahead`) before `decide` can
    /// answer: it is long, not analysed yet, and no decision for it is cached. `force`
    /// ignores the cache (used after `decide` came back without an answer, so a cache
    /// entry that vanished in between cannot loop).
    /// `[policy] max_statement_bytes`: longer strings are refused unread.
    pub fn max_statement_bytes(&self) -> usize {
        self.store.max_statement_bytes
    }

    pub fn needs_analysis(&mut self, sql: &str, force: bool) -> bool {
        if sql.len() <= INLINE_ANALYSIS_BYTES
            || sql.len() > self.store.max_statement_bytes
            || self.ahead.contains_key(sql)
        {
            return false;
        }
        self.refresh();
        self.refresh_catalog();
        force
            || !self
                .store
                .cache
                .contains(&self.policy, &self.roles, &self.session, sql)
    }

    /// Analyses `sql` on the analysis pool within the time budget; `decide` takes the
    /// result. The runtime thread is free while it runs.
    pub async fn analyse_ahead(&mut self, sql: &str) {
        if let Some(previous) = self.straggler.take() {
            // Our last job overran and still runs: wait for its thread to come free.
            let _ = previous.await;
        }
        let sql: Arc<str> = Arc::from(sql);
        let budget = self.store.pool.timeout();
        let mut job = self
            .store
            .pool
            .submit(Arc::clone(&sql), self.store.max_statement_bytes);
        let outcome = match tokio::time::timeout(budget, &mut job).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(AnalysisError::Parse("pgward's analysis pool failed".into())),
            Err(_) => {
                self.straggler = Some(job);
                Err(AnalysisError::TimedOut {
                    limit_ms: u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
                })
            }
        };
        self.ahead.insert(sql, outcome);
    }

    /// Forgets analyses done ahead that no message took (their message was not decided
    /// after all, e.g. a framing error; the next pass analyses again if needed).
    pub fn forget_ahead(&mut self) {
        self.ahead.clear();
    }

    /// The decision for `sql` (the session as it stands), without taking its effects:
    /// `None` when `sql` is long and neither analysed ahead nor cached, so it must go
    /// through `analyse_ahead` first. Pass the decision to `commit` when the statement is
    /// forwarded.
    pub fn judge(&mut self, sql: &str) -> Option<Arc<QueryDecision>> {
        self.refresh();
        self.refresh_catalog();
        let max = self.store.max_statement_bytes;
        if sql.len() > max {
            // Refused unread: not even hashed for the cache.
            let too_long = AnalysisError::TooLong {
                len: sql.len(),
                limit: max,
            };
            let qd = self
                .policy
                .decide_analysis(&self.roles, Err(too_long), &self.session);
            return Some(Arc::new(qd));
        }
        let ahead = &mut self.ahead;
        let qd =
            self.store
                .cache
                .decide_with(&self.policy, &self.roles, &self.session, sql, |sql| {
                    if let Some(done) = ahead.remove(sql) {
                        return Some(done);
                    }
                    // Short strings cost microseconds: analysed right here.
                    (sql.len() <= INLINE_ANALYSIS_BYTES)
                        .then(|| pgward_policy::analyze_limited(sql, max))
                })?;
        if !qd.decision.blocks() {
            if let Some(denied) = self.check_portal_reads(&qd) {
                return Some(denied);
            }
        }
        #[cfg(debug_assertions)]
        let qd = test_bypass::apply(sql, qd);
        Some(qd)
    }

    /// A judged statement is forwarded: counted, and on allow pgward's session model
    /// takes its effects (search_path, PREPARE, DECLARE, ...).
    pub fn commit(&mut self, qd: &QueryDecision) {
        if let Some(m) = &self.metrics {
            let allowed = qd.decision.verdict == pgward_policy::Verdict::Allow;
            m.decision(
                allowed,
                !allowed && !qd.decision.blocks(),
                &qd.decision.rule,
            );
            for s in qd.statements.iter().filter(|s| s.mask_denied) {
                m.mask_denial(&s.decision.rule);
            }
        }
        if qd.decision.blocks() {
            return;
        }
        if qd.decision.verdict == pgward_policy::Verdict::Deny {
            warn!(
                rule = %qd.decision.rule,
                reason = %qd.decision.reason,
                "policy would deny this statement (observe mode)"
            );
        }
        for s in &qd.statements {
            self.session.apply(&s.analysis);
            self.track_effects(&s.analysis);
        }
        self.note_ddl(qd);
    }

    /// A FETCH or MOVE of a cursor opened under an earlier policy is decided as the
    /// cursor's query under the current one (cursors declared earlier in the same string
    /// are current). Returns the denying decision, if any.
    fn check_portal_reads(&mut self, qd: &QueryDecision) -> Option<Arc<QueryDecision>> {
        if !self.reloaded {
            // Every cursor was opened under the policy in force.
            return None;
        }
        let mut declared_here: Vec<&str> = Vec::new();
        for (i, st) in qd.statements.iter().enumerate() {
            if let Some(name) = &st.analysis.fetches {
                if !declared_here.contains(&name.as_str()) {
                    if let Some(d) = self.decide_portal(name, "FETCH/MOVE") {
                        let mut denied = qd.clone();
                        denied.decision = d.clone();
                        if let Some(s) = denied.statements.get_mut(i) {
                            s.decision = d;
                        }
                        return Some(Arc::new(denied));
                    }
                }
            }
            for e in &st.analysis.effects {
                if let SessionEffect::DeclareCursor { name, .. } = e {
                    declared_here.push(name);
                }
            }
        }
        None
    }

    /// Whether reading portal `name` may go on under the current policy: `None` when it
    /// may, else the blocking decision (denials in observe mode are only logged).
    fn decide_portal(&mut self, name: &str, how: &str) -> Option<Decision> {
        let version = self.policy.version();
        let Some(portal) = self.portals.get(name) else {
            return self.unknown(
                "builtin.unknown_portal",
                format!("{how} of portal or cursor {name:?}, which pgward did not see opened in this session, after a policy reload"),
            );
        };
        if portal.version == version {
            return None;
        }
        let (runs, before) = (portal.analysis.clone(), portal.version);
        // Marked current while deciding, so a portal that reads itself (`FETCH p` bound
        // as portal p) cannot recurse; put back if the decision denies.
        self.set_portal_version(name, version);
        let what = format!("{how} of {name:?} opened under an earlier policy");
        let denied = self.redecide(&runs, &what);
        if denied.is_some() {
            self.set_portal_version(name, before);
        }
        denied
    }

    fn set_portal_version(&mut self, name: &str, version: u64) {
        if let Some(p) = self.portals.get_mut(name) {
            p.version = version;
        }
    }

    /// Names pgward never saw are passed through until the policy first changes in the
    /// session (nothing could have opened them under another), and refused after that
    /// (pgward cannot tell what they run).
    fn unknown(&self, rule: &str, reason: String) -> Option<Decision> {
        if !self.reloaded {
            return None;
        }
        let d = Decision {
            verdict: pgward_policy::Verdict::Deny,
            rule: rule.to_owned(),
            reason,
            enforced: self.policy.mode() == pgward_policy::Mode::Enforce,
        };
        self.blocking(d)
    }

    /// Decides an analysis prepared or opened under an earlier policy (a FETCH inside
    /// it is checked against its cursor too). `None` when the current policy allows it.
    fn redecide(&mut self, runs: &Runs, what: &str) -> Option<Decision> {
        let Some(analysis) = runs.analysis() else {
            // An empty string runs nothing.
            return None;
        };
        let mut d = self.policy.decide(&self.roles, analysis, &self.session);
        if d.verdict == pgward_policy::Verdict::Allow {
            if let Some(cursor) = &analysis.fetches {
                return self.decide_portal(cursor, "FETCH/MOVE");
            }
        }
        d.reason = format!("{what}: {}", d.reason);
        self.blocking(d)
    }

    fn blocking(&self, d: Decision) -> Option<Decision> {
        if d.blocks() {
            return Some(d);
        }
        if d.verdict == pgward_policy::Verdict::Deny {
            warn!(rule = %d.rule, reason = %d.reason, "policy would deny this statement (observe mode)");
        }
        None
    }

    /// Keeps the statements and cursors an allowed statement prepares, declares or drops.
    fn track_effects(&mut self, stmt: &StatementAnalysis) {
        let version = self.policy.version();
        for e in &stmt.effects {
            match e {
                SessionEffect::Prepare(name, _) => {
                    if let Some(a) = self.session.prepared(name) {
                        let allowed = Allowed {
                            analysis: Runs::Analysis(Arc::clone(a)),
                            version,
                            hold: true,
                        };
                        self.statements.insert(name, allowed);
                    }
                }
                SessionEffect::Deallocate(Some(name)) => {
                    self.statements.remove(name);
                }
                // DEALLOCATE ALL leaves the unnamed statement (it is not in the server's
                // table of prepared statements).
                SessionEffect::Deallocate(None) => self.statements.named.clear(),
                SessionEffect::DiscardAll => {
                    self.statements.named.clear();
                    self.portals = Names::default();
                }
                SessionEffect::DeclareCursor { name, hold, query } => {
                    let allowed = Allowed {
                        analysis: Runs::Analysis(Arc::new((**query).clone())),
                        version,
                        hold: *hold,
                    };
                    self.portals.insert(name, allowed);
                }
                SessionEffect::CloseCursor(Some(name)) => {
                    self.portals.remove(name);
                }
                // CLOSE ALL closes protocol portals too (one namespace).
                SessionEffect::CloseCursor(None) => self.portals = Names::default(),
            }
        }
    }

    /// The server reported it is idle outside a transaction: every portal but WITH HOLD
    /// cursors has ended.
    pub fn transaction_ended(&mut self) {
        if !self.portals.is_empty() {
            self.portals.retain(|p| p.hold);
        }
    }

    /// Decides a T-SQL batch for an azure-sql upstream (crates/policy/src/tsql.rs), with the
    /// same roles and rules as PostgreSQL SQL. Not cached.
    pub fn decide_tsql(&mut self, sql: &str, database: Option<&str>) -> QueryDecision {
        self.refresh();
        let qd = self
            .policy
            .decide_tsql(&self.roles, sql, &self.session, database);
        if qd.decision.verdict == pgward_policy::Verdict::Deny && !qd.decision.blocks() {
            warn!(
                rule = %qd.decision.rule,
                reason = %qd.decision.reason,
                "policy would deny this T-SQL batch (observe mode)"
            );
        }
        qd
    }

    /// After a Parse was decided: protocol-level statements share a namespace with SQL
    /// PREPARE, so `EXECUTE name` must be decided as this statement, and a Bind of it
    /// after a reload is decided again.
    pub fn parsed(&mut self, name: &str, qd: &Arc<QueryDecision>) {
        // An empty string prepares a statement that runs nothing.
        match (qd.decision.blocks(), qd.statements.as_slice()) {
            (false, [] | [_]) => {
                if let (false, [one]) = (name.is_empty(), qd.statements.as_slice()) {
                    // (The unnamed statement cannot be EXECUTEd by name.)
                    self.session.remember_prepared(name, one.analysis.clone());
                }
                self.any_planned |= qd.statements.iter().any(|s| s.masks.is_some());
                let allowed = Allowed {
                    analysis: Runs::Parsed(Arc::clone(qd)),
                    version: self.policy.version(),
                    hold: true,
                };
                self.statements.insert(name, allowed);
            }
            _ => {
                self.session.forget_prepared(name);
                self.statements.remove(name);
            }
        }
    }

    /// A Bind: a statement allowed under an earlier policy is decided again; the portal
    /// it creates remembers what it runs.
    pub fn on_bind(&mut self, portal: &str, statement: &str) -> Option<Denial> {
        self.refresh();
        let version = self.policy.version();
        let Some(stmt) = self.statements.get(statement).cloned() else {
            self.portals.remove(portal);
            return self
                .unknown(
                    "builtin.unknown_prepared",
                    format!("Bind of statement {statement:?}, which pgward did not see prepared in this session, after a policy reload"),
                )
                .map(Denial::from);
        };
        if stmt.version != version {
            let what = format!("Bind of statement {statement:?} prepared under an earlier policy");
            if let Some(d) = self.redecide(&stmt.analysis, &what) {
                self.portals.remove(portal);
                return Some(Denial::from(d));
            }
            if let Some(s) = self.statements.get_mut(statement) {
                s.version = version;
            }
        }
        if self.reloaded && self.has_masks {
            if let Err(d) = self.bind_plan(statement) {
                self.portals.remove(portal);
                return Some(d);
            }
        }
        let allowed = Allowed {
            analysis: stmt.analysis,
            version,
            hold: false,
        };
        self.portals.insert(portal, allowed);
        None
    }

    /// An Execute: a portal bound (or a cursor declared) under an earlier policy is
    /// decided again.
    pub fn on_execute(&mut self, portal: &str) -> Option<Denial> {
        self.refresh();
        if !self.reloaded {
            // Every portal was opened under the policy in force: nothing to decide again.
            return None;
        }
        self.decide_portal(portal, "Execute").map(Denial::from)
    }

    /// Close of a prepared statement.
    pub fn on_close_statement(&mut self, name: &str) {
        self.session.forget_prepared(name);
        self.statements.remove(name);
    }

    /// Close of a portal.
    pub fn on_close_portal(&mut self, name: &str) {
        self.portals.remove(name);
    }

    /// Decides a FunctionCall message as the SQL call of the function its OID names on the
    /// upstream (`SELECT "schema"."name"($1, …)`, resolved through the server's catalog), so
    /// every rule about calling that function applies: dangerous ones need an allow rule
    /// naming them, deny rules on the name or its schema win. Returns the text the audit
    /// records and the policy's decision (pass it to `commit` when forwarded), or pgward's own
    /// denial when the OID names nothing the catalog lists: a FunctionCall pgward cannot
    /// attribute never runs (unless the policy only observes).
    pub fn judge_function_call(
        &mut self,
        oid: u32,
        nargs: usize,
    ) -> (String, Result<Arc<QueryDecision>, Decision>) {
        self.refresh();
        self.refresh_catalog();
        let named = self
            .session
            .catalog()
            .and_then(|c| c.function_by_oid(oid))
            .map(|(schema, name)| (schema.to_owned(), name.to_owned()));
        let Some((schema, name)) = named else {
            // Perhaps created since the catalog was read: read it again, so a retry after
            // the refresh is decided by name.
            if let Some(h) = &self.catalog {
                h.changed();
            }
            let text = format!("FunctionCall of function OID {oid}");
            let reason = format!(
                "the FunctionCall message names function OID {oid}, which the upstream catalog does not list"
            );
            return (text, self.function_call_refusal(reason));
        };
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let args: Vec<String> = (1..=nargs).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {}.{}({})",
            quote(&schema),
            quote(&name),
            args.join(", ")
        );
        if nargs > MAX_FUNCTION_ARGS {
            // PostgreSQL refuses more (FUNC_MAX_ARGS); the text would not be judged inline.
            let reason = format!(
                "a FunctionCall with {nargs} arguments (PostgreSQL allows {MAX_FUNCTION_ARGS})"
            );
            return (sql, self.function_call_refusal(reason));
        }
        match self.judge(&sql) {
            Some(qd) => (sql, Ok(qd)),
            None => {
                let reason = "the FunctionCall could not be decided".to_owned();
                let refusal = self.function_call_refusal(reason);
                (sql, refusal)
            }
        }
    }

    /// pgward's own denial of a FunctionCall it cannot attribute (rule
    /// `builtin.function_call`); it blocks unless the policy only observes.
    fn function_call_refusal(&self, reason: String) -> Result<Arc<QueryDecision>, Decision> {
        let d = Decision {
            verdict: pgward_policy::Verdict::Deny,
            rule: "builtin.function_call".to_owned(),
            reason,
            enforced: self.policy.mode() == pgward_policy::Mode::Enforce,
        };
        if let Some(m) = &self.metrics {
            m.decision(false, !d.blocks(), &d.rule);
        }
        if !d.blocks() {
            warn!(rule = %d.rule, reason = %d.reason, "policy would deny a FunctionCall (observe mode)");
        }
        Err(d)
    }
}

impl From<Decision> for Denial {
    fn from(d: Decision) -> Self {
        Denial::policy(d.rule, d.reason)
    }
}

/// The refusal for a blocking decision: 42601 with the parser's message and position when
/// PostgreSQL's parser rejected the string (what the server itself would answer; the audit
/// record keeps the rule `builtin.parse_error`), 54000 when the string was over an analysis
/// budget (length, nesting, time), 42501 otherwise.
pub fn denial_of(qd: &QueryDecision) -> Denial {
    let mut d = Denial::policy(qd.decision.rule.clone(), qd.decision.reason.clone());
    match &qd.error {
        Some(AnalysisError::Syntax { message, position }) => {
            d.code = "42601";
            d.reason = message.clone();
            d.position = *position;
        }
        Some(e) if e.is_over_budget() => d.code = "54000",
        _ => {}
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn catalog_changing_kinds_pass_the_first_letter_test() {
        for kind in CATALOG_CHANGING {
            assert!(changes_catalog(kind), "{kind}");
        }
        for kind in [
            "SelectStmt",
            "InsertStmt",
            "DeleteStmt",
            "TransactionStmt",
            "Create",
        ] {
            assert!(!changes_catalog(kind), "{kind}");
        }
        // Every kind pgward's analysis reports: only the listed ones change the catalog.
        for kind in pgward_policy::STATEMENT_KINDS {
            assert_eq!(
                changes_catalog(kind),
                CATALOG_CHANGING.contains(kind),
                "{kind}"
            );
        }
    }

    const BEFORE: &str = r#"
[[roles]]
name = "reader"
members = { everyone = true }
allow = [ { actions = ["select"], objects = ["public.orders", "public.salaries"] } ]
"#;

    fn store(text: &str) -> (Arc<PolicyStore>, PathBuf) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "pgward-enforce-test-{}-{n}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).expect("write policy");
        let config = PolicyConfig {
            file: path.clone(),
            cache_entries: 100,
            cache_bytes: 64 << 20,
            max_statement_bytes: 1 << 20,
            analysis_timeout_ms: 2000,
            analysis_threads: 1,
            watch_secs: 0,
            catalog_refresh_secs: 60,
            apply_grants: false,
            keep_public: false,
            mask_key_file: None,
        };
        let store = PolicyStore::open(&path, &config).expect("store");
        (Arc::new(store), path)
    }

    fn gate(store: &Arc<PolicyStore>) -> Gate {
        let who = Principal {
            upn: "dana@contoso.com".into(),
            ..Default::default()
        };
        Gate::new(Arc::clone(store), who)
    }

    /// Judges and, as the relay does when it forwards, commits.
    fn run(g: &mut Gate, sql: &str) -> Arc<QueryDecision> {
        let qd = g.judge(sql).expect("short strings are judged inline");
        g.commit(&qd);
        qd
    }

    fn blocks(g: &mut Gate, sql: &str) -> bool {
        g.judge(sql).expect("judged").decision.blocks()
    }

    #[test]
    fn a_reload_reaches_everything_opened_before_it() {
        let (store, path) = store(BEFORE);
        let mut g = gate(&store);
        assert!(!run(&mut g, "PREPARE p AS SELECT * FROM salaries")
            .decision
            .blocks());
        let qd = run(&mut g, "SELECT * FROM salaries");
        g.parsed("s", &qd);
        run(
            &mut g,
            "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM salaries",
        );
        run(
            &mut g,
            "DECLARE k CURSOR WITH HOLD FOR SELECT * FROM orders",
        );
        assert!(g.on_bind("q", "s").is_none());
        assert!(g.on_execute("q").is_none());
        assert!(!blocks(&mut g, "FETCH 1 FROM c"));

        std::fs::write(&path, BEFORE.replace(", \"public.salaries\"", "")).expect("write");
        store.reload();
        assert!(blocks(&mut g, "FETCH 1 FROM c"), "FETCH of a cursor");
        assert!(blocks(&mut g, "MOVE LAST IN c"), "MOVE of a cursor");
        assert!(blocks(&mut g, "FETCH 1 FROM q"), "SQL FETCH of a portal");
        assert!(blocks(&mut g, "EXECUTE p"), "EXECUTE of a SQL PREPARE");
        assert!(g.on_bind("", "p").is_some(), "Bind of a SQL PREPARE");
        assert!(g.on_bind("", "s").is_some(), "Bind of a protocol Parse");
        assert!(g.on_execute("q").is_some(), "Execute of a portal");
        assert!(g.on_execute("c").is_some(), "Execute of a cursor");
        // What the new policy allows goes on.
        assert!(!blocks(&mut g, "FETCH 1 FROM k"));
        assert!(g.on_execute("k").is_none());
        // A cursor declared in the same string is current.
        assert!(!blocks(
            &mut g,
            "DECLARE n CURSOR FOR SELECT * FROM orders; FETCH n"
        ));
        // Names never seen, after a reload: refused.
        let rule = |d: Option<Denial>| d.map(|d| d.rule);
        assert_eq!(
            rule(g.on_execute("never")).as_deref(),
            Some("builtin.unknown_portal")
        );
        assert_eq!(
            rule(g.on_bind("", "never")).as_deref(),
            Some("builtin.unknown_prepared")
        );
        run(&mut g, "CLOSE k");
        assert!(blocks(&mut g, "FETCH k"), "a closed cursor is unknown");
        // Non-hold portals end with the transaction; hold cursors stay (and stay stale).
        g.transaction_ended();
        assert!(g.on_execute("q").is_some());
        assert!(g.on_execute("c").is_some());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn unknown_names_pass_while_the_first_policy_holds() {
        let (store, path) = store(BEFORE);
        let mut g = gate(&store);
        assert!(g.on_execute("opened_by_a_function").is_none());
        assert!(g.on_bind("", "not_seen").is_none());
        assert!(!blocks(&mut g, "FETCH 1 FROM opened_by_a_function"));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn syntax_errors_are_42601_with_the_parsers_message_and_position() {
        let (store, path) = store(BEFORE);
        let mut g = gate(&store);
        let qd = g.judge("SELECT 1; SELEC 2").expect("short: decided inline");
        assert_eq!(qd.decision.rule, "builtin.parse_error");
        let d = denial_of(&qd);
        assert_eq!(
            (d.code, d.message().as_str(), d.position),
            ("42601", "syntax error at or near \"SELEC\"", 11)
        );
        // What the audit keeps: the rule and the parser's words with the position.
        assert_eq!(
            qd.decision.reason,
            "syntax error at or near \"SELEC\" (at character 11)"
        );
        let mut denials = Denials::new("n0nce");
        let Verdict::Replace(_) = denials.replace_query(d) else {
            panic!("not replaced");
        };
        let mut server = BytesMut::new();
        build::error_response(
            &mut server,
            Severity::Error,
            "22P02",
            "invalid input syntax for type integer: \"pgward-denied-n0nce-0\"",
        );
        let out = denials
            .rewrite(&server[5..], |m| m.as_bytes().to_vec())
            .expect("rewritten")
            .bytes;
        let e = pgward_wire::backend::error_fields(&out[5..]);
        assert_eq!(e.code, "42601");
        assert_eq!(e.message, "syntax error at or near \"SELEC\"");
        assert!(out.windows(4).any(|w| w == b"P11\0"), "{out:?}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn over_budget_is_54000_and_long_strings_wait_for_the_pool() {
        let (store, path) = store(BEFORE);
        let mut g = gate(&store);
        let long = format!("SELECT 1 /* {} */", "x".repeat(2 << 20));
        let qd = g.judge(&long).expect("refused unread");
        assert_eq!(qd.decision.rule, "builtin.analysis_budget");
        assert_eq!(denial_of(&qd).code, "54000");
        assert!(denial_of(&qd)
            .message()
            .starts_with("pgward refused this statement: statement is"));
        // Over 4 KiB: not analysed on the runtime thread.
        let big = format!("SELECT * FROM orders /* {} */", "y".repeat(8192));
        assert!(g.needs_analysis(&big, false));
        assert!(g.judge(&big).is_none());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(g.analyse_ahead(&big));
        assert!(!g.needs_analysis(&big, false));
        let qd = g.judge(&big).expect("analysed ahead");
        assert!(!qd.decision.blocks(), "{:?}", qd.decision);
        g.commit(&qd);
        // Cached now: no second analysis needed.
        assert!(!g.needs_analysis(&big, false));
        let _ = std::fs::remove_file(&path);
    }
}
