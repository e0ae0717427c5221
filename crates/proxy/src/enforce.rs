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
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use pgward_policy::{DecisionCache, Policy, Principal, QueryDecision, RoleSet, SessionState};
use pgward_wire::build::{self, Severity};

use crate::catalogs::CatalogHandle;
use tracing::{error, info, warn};

/// The current policy and the decision cache, shared by all sessions.
pub struct PolicyStore {
    path: PathBuf,
    current: RwLock<Arc<Policy>>,
    modified: RwLock<Option<SystemTime>>,
    cache: DecisionCache,
}

/// Reads and validates a policy file; the error lists every problem with its line.
pub fn load_policy(path: &Path) -> Result<Policy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read policy file {}: {e}", path.display()))?;
    Policy::from_toml(&text).map_err(|e| format!("policy file {}: {e}", path.display()))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl PolicyStore {
    pub fn open(path: &Path, cache_entries: usize) -> Result<Self, String> {
        let policy = load_policy(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(policy)),
            modified: RwLock::new(modified(path)),
            cache: DecisionCache::new(cache_entries),
        })
    }

    pub fn current(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-reads the file. An invalid file keeps the old policy (logged).
    pub fn reload(&self) {
        match load_policy(&self.path) {
            Ok(policy) => {
                let mode = policy.mode();
                match self.current.write() {
                    Ok(mut g) => *g = Arc::new(policy),
                    Err(p) => *p.into_inner() = Arc::new(policy),
                }
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

/// A refusal waiting for the server's marked error, to be rewritten for the client.
#[derive(Debug, Clone)]
pub struct Denial {
    pub rule: String,
    pub reason: String,
    /// 42501 for the policy, 58030 when the audit log cannot record, 53400 over a rate limit.
    pub code: &'static str,
}

impl Denial {
    pub fn policy(rule: String, reason: String) -> Self {
        Self {
            rule,
            reason,
            code: "42501",
        }
    }

    /// Fail-closed: the audit log cannot write, so nothing may run unrecorded.
    pub fn audit_unavailable() -> Self {
        Self {
            rule: "audit.unavailable".into(),
            reason: "the audit log cannot record statements".into(),
            code: "58030",
        }
    }

    /// Over the identity's statement rate (`[limits]`).
    pub fn rate_limited(per_second: f64) -> Self {
        Self {
            rule: "limits.statement_rate".into(),
            reason: format!(
                "statement rate limit for this identity exceeded ({per_second}/s); retry shortly"
            ),
            code: "53400",
        }
    }

    pub fn message(&self) -> String {
        match self.code {
            "42501" => format!(
                "pgward policy denied this statement (rule {}): {}",
                self.rule, self.reason
            ),
            _ => format!("pgward refused this statement: {}", self.reason),
        }
    }
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

    /// If `error_body` is the server's answer to a replaced statement, the 42501
    /// ErrorResponse to send instead.
    pub fn rewrite(&mut self, error_body: &[u8]) -> Option<BytesMut> {
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
        let mut out = BytesMut::new();
        build::error_response(&mut out, Severity::Error, denial.code, &denial.message());
        Some(out)
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

/// One session's policy enforcement.
pub struct Gate {
    store: Arc<PolicyStore>,
    policy: Arc<Policy>,
    principal: Principal,
    roles: RoleSet,
    session: SessionState,
    /// Named statements' text and the policy version that allowed them, so a Bind after
    /// a reload is decided by the policy in force.
    parsed: HashMap<String, (Arc<str>, u64)>,
    /// Where decisions are counted (`pgward_policy_decisions_total`).
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The upstream database's own catalog, which names resolve against.
    catalog: Option<CatalogHandle>,
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
            policy,
            principal,
            roles,
            session,
            parsed: HashMap::new(),
            metrics: None,
            catalog: None,
        }
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
        let current = self.store.current();
        if current.version() != self.policy.version() {
            self.roles = current.roles_for(&self.principal);
            self.policy = current;
            // A reload also has the catalog read again (objects may have changed with it).
            if let Some(h) = &self.catalog {
                h.policy_changed(self.policy.version());
            }
        }
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
            // Statements that can change what the catalog says about functions, operators,
            // casts, sequences, schemas or views.
            changed |= matches!(
                a.kind,
                "CreateFunctionStmt"
                    | "AlterFunctionStmt"
                    | "DefineStmt"
                    | "CreateSeqStmt"
                    | "AlterSeqStmt"
                    | "ViewStmt"
                    | "RenameStmt"
                    | "AlterObjectSchemaStmt"
                    | "DropStmt"
                    | "CreateSchemaStmt"
                    | "CreateExtensionStmt"
                    | "AlterExtensionStmt"
                    | "AlterExtensionContentsStmt"
                    | "CreateStmt"
                    | "CreateTableAsStmt"
            );
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

    /// Decides `sql`; on allow, pgward's session model takes the statements' effects
    /// (search_path, PREPARE, ...) as they are forwarded.
    pub fn decide(&mut self, sql: &str) -> Arc<QueryDecision> {
        self.refresh();
        let qd = self
            .store
            .cache
            .decide(&self.policy, &self.roles, &self.session, sql);
        if let Some(m) = &self.metrics {
            let allowed = qd.decision.verdict == pgward_policy::Verdict::Allow;
            m.decision(
                allowed,
                !allowed && !qd.decision.blocks(),
                &qd.decision.rule,
            );
        }
        if qd.decision.blocks() {
            return qd;
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
        }
        self.note_ddl(&qd);
        qd
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
    /// PREPARE, so `EXECUTE name` must be decided as this statement.
    pub fn parsed(&mut self, name: &str, sql: &str, qd: &QueryDecision) {
        if name.is_empty() {
            return;
        }
        match (qd.decision.blocks(), qd.statements.as_slice()) {
            (false, [one]) => {
                self.session.remember_prepared(name, one.analysis.clone());
                self.parsed
                    .insert(name.to_owned(), (Arc::from(sql), self.policy.version()));
            }
            _ => {
                self.session.forget_prepared(name);
                self.parsed.remove(name);
            }
        }
    }

    /// A Bind of a named statement allowed under an earlier policy is decided again.
    pub fn on_bind(&mut self, statement: &str) -> Option<Denial> {
        self.refresh();
        let version = self.policy.version();
        let (sql, decided_under) = self.parsed.get(statement)?.clone();
        if decided_under == version {
            return None;
        }
        let qd = self
            .store
            .cache
            .decide(&self.policy, &self.roles, &self.session, &sql);
        if qd.decision.blocks() {
            self.parsed.remove(statement);
            self.session.forget_prepared(statement);
            return Some(denial_of(&qd));
        }
        self.parsed.insert(statement.to_owned(), (sql, version));
        None
    }

    /// Close of a prepared statement.
    pub fn on_close_statement(&mut self, name: &str) {
        self.session.forget_prepared(name);
        self.parsed.remove(name);
    }

    /// Whether a FunctionCall message is refused. It names its function only by OID, so
    /// pgward cannot tell `lower()` from `pg_read_file()`: refused whenever a policy
    /// enforces.
    pub fn refuses_function_call(&self) -> Option<Denial> {
        let denial = Denial::policy(
            "builtin.function_call".into(),
            "the FunctionCall protocol message names functions only by OID; call the function in SQL instead".into(),
        );
        if self.policy.mode() == pgward_policy::Mode::Observe {
            warn!(rule = %denial.rule, "policy would deny a FunctionCall (observe mode)");
            return None;
        }
        Some(denial)
    }
}

/// The refusal for a blocking decision.
pub fn denial_of(qd: &QueryDecision) -> Denial {
    Denial::policy(qd.decision.rule.clone(), qd.decision.reason.clone())
}
