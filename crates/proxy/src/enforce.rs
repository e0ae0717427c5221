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
use pgward_policy::{DecisionCache, Policy, Principal, RoleSet, SessionState};
use pgward_wire::build::{self, Severity};
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

/// A denial waiting for the server's marked error, to be rewritten into 42501.
#[derive(Debug, Clone)]
pub struct Denial {
    pub rule: String,
    pub reason: String,
}

impl Denial {
    pub fn message(&self) -> String {
        format!(
            "pgward policy denied this statement (rule {}): {}",
            self.rule, self.reason
        )
    }
}

/// Denials in flight for one session, keyed by the id in their marker.
#[derive(Debug, Default)]
pub struct Denials {
    marker_prefix: String,
    pending: HashMap<u64, Denial>,
}

impl Denials {
    pub fn new(nonce: &str) -> Self {
        Self {
            marker_prefix: format!("pgward-denied-{nonce}-"),
            pending: HashMap::new(),
        }
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
        build::error_response(&mut out, Severity::Error, "42501", &denial.message());
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
    /// Replace the message with these bytes (a statement the server will fail).
    Replace(BytesMut),
}

/// One session's policy enforcement.
pub struct Gate {
    store: Arc<PolicyStore>,
    policy: Arc<Policy>,
    principal: Principal,
    roles: RoleSet,
    session: SessionState,
    nonce: String,
    next_id: u64,
}

impl Gate {
    pub fn new(store: Arc<PolicyStore>, principal: Principal, nonce: String) -> Self {
        let policy = store.current();
        let roles = policy.roles_for(&principal);
        let session = SessionState::new(&policy);
        Self {
            store,
            policy,
            principal,
            roles,
            session,
            nonce,
            next_id: 0,
        }
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    pub fn role_names(&self) -> &[String] {
        self.roles.names()
    }

    /// Picks up a reloaded policy: roles are recomputed for it.
    fn refresh(&mut self) {
        let current = self.store.current();
        if current.version() != self.policy.version() {
            self.roles = current.roles_for(&self.principal);
            self.policy = current;
        }
    }

    /// Checks a startup parameter before the session exists upstream.
    pub fn check_startup_setting(&mut self, name: &str, value: &str) -> Result<(), Denial> {
        self.refresh();
        let d = self
            .policy
            .decide_setting(&self.roles, name, value, &self.session);
        if d.blocks() {
            return Err(Denial {
                rule: d.rule,
                reason: d.reason,
            });
        }
        self.session.apply_startup_setting(name, value);
        Ok(())
    }

    /// Decides `sql`; on allow, pgward's session model takes the statements' effects
    /// (search_path, PREPARE, ...) as they are forwarded.
    fn decide(&mut self, sql: &str) -> Result<Option<pgward_policy::StatementAnalysis>, Denial> {
        self.refresh();
        let qd = self
            .store
            .cache
            .decide(&self.policy, &self.roles, &self.session, sql);
        if qd.decision.blocks() {
            return Err(Denial {
                rule: qd.decision.rule.clone(),
                reason: qd.decision.reason.clone(),
            });
        }
        if qd.decision.verdict == pgward_policy::Verdict::Deny {
            // Observe mode: recorded, not enforced.
            warn!(
                rule = %qd.decision.rule,
                reason = %qd.decision.reason,
                "policy would deny this statement (observe mode)"
            );
        }
        for s in &qd.statements {
            self.session.apply(&s.analysis);
        }
        Ok(if qd.statements.len() == 1 {
            Some(qd.statements[0].analysis.clone())
        } else {
            None
        })
    }

    fn marker(&mut self, denial: Denial, denials: &mut Denials) -> String {
        let id = self.next_id;
        self.next_id += 1;
        info!(rule = %denial.rule, reason = %denial.reason, "statement denied");
        denials.pending.insert(id, denial);
        format!(
            "SELECT 'pgward-denied-{}-{id}'::pg_catalog.int4",
            self.nonce
        )
    }

    /// A simple-protocol Query.
    pub fn on_query(&mut self, sql: &str, denials: &mut Denials) -> Verdict {
        match self.decide(sql) {
            Ok(_) => Verdict::Forward,
            Err(denial) => {
                let marker = self.marker(denial, denials);
                let mut out = BytesMut::new();
                build::query(&mut out, &marker);
                Verdict::Replace(out)
            }
        }
    }

    /// An extended-protocol Parse: decided here, so a denied statement never exists
    /// upstream to be bound or executed.
    pub fn on_parse(&mut self, name: &str, sql: &str, denials: &mut Denials) -> Verdict {
        match self.decide(sql) {
            Ok(analysis) => {
                if !name.is_empty() {
                    // Protocol-level statements share a namespace with SQL PREPARE, so
                    // `EXECUTE name` must be decided as this statement.
                    match analysis {
                        Some(a) => self.session.remember_prepared(name, a),
                        None => self.session.forget_prepared(name),
                    }
                }
                Verdict::Forward
            }
            Err(denial) => {
                if !name.is_empty() {
                    self.session.forget_prepared(name);
                }
                let marker = self.marker(denial, denials);
                let mut out = BytesMut::new();
                build::parse(&mut out, name, &marker);
                Verdict::Replace(out)
            }
        }
    }

    /// Close of a prepared statement.
    pub fn on_close_statement(&mut self, name: &str) {
        self.session.forget_prepared(name);
    }

    /// A FunctionCall names its function only by OID, so pgward cannot tell
    /// `lower()` from `pg_read_file()`: refused whenever a policy is in force.
    pub fn on_function_call(&mut self, denials: &mut Denials) -> Verdict {
        let denial = Denial {
            rule: "builtin.function_call".into(),
            reason: "the FunctionCall protocol message names functions only by OID; call the function in SQL instead".into(),
        };
        if self.policy.mode() == pgward_policy::Mode::Observe {
            warn!(rule = %denial.rule, "policy would deny a FunctionCall (observe mode)");
            return Verdict::Forward;
        }
        let marker = self.marker(denial, denials);
        let mut out = BytesMut::new();
        build::query(&mut out, &marker);
        Verdict::Replace(out)
    }
}
