//! Identities to roles, session state, and the decision itself.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::analyze::{
    analyze, split_list, Access, Action, Analysis, AnalysisError, FunctionRef, ObjectRef,
    SessionEffect, SettingChange, StatementAnalysis,
};
use crate::catalog::{
    is_builtin_function, is_catalog_relation, CATALOG_EXCLUDED, INFORMATION_SCHEMA_EXCLUDED,
    INFORMATION_SCHEMA_FUNCTIONS, PGWARD_IDENTITY_FUNCTIONS, PGWARD_SCHEMA, PROTECTED_SETTINGS,
    RESET_ALL_SETTINGS, SYSTEM_SCHEMAS,
};
use crate::policy::{Mode, Part, Pattern, Policy, Rule};
use crate::server_catalog::ServerCatalog;

/// The identity a session authenticated as (from the validated token).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// Object id (`oid` claim).
    pub oid: String,
    /// User principal name (`upn` / `preferred_username`).
    pub upn: String,
    /// Group object ids (`groups` claim).
    pub groups: Vec<String>,
    /// App role values (`roles` claim).
    pub app_roles: Vec<String>,
}

impl Principal {
    /// The name the caller goes by on the upstream session (application_name, logs): the
    /// UPN (or a managed identity's name), else the object id.
    pub fn caller_name(&self) -> &str {
        if self.upn.is_empty() {
            &self.oid
        } else {
            &self.upn
        }
    }
}

/// The policy roles an identity holds (indices into one policy; use it only with that policy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RoleSet {
    pub(crate) idx: Vec<u16>,
    names: Vec<String>,
    version: u64,
}

impl RoleSet {
    /// Role names, in policy file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether the identity holds no role (then only the baseline applies).
    pub fn is_empty(&self) -> bool {
        self.idx.is_empty()
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The statement may run.
    Allow,
    /// The statement must not run (unless the policy is in observe mode).
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// The deciding rule: a policy rule name (`analyst.allow[0]` or the rule's own `name`), or a
    /// built-in one (`default_deny`, `baseline.catalog`, `builtin.dangerous_function`, ...).
    pub rule: String,
    /// A one-line explanation naming the action and object, function or setting concerned.
    pub reason: String,
    /// False in observe mode: a deny is to be recorded, not enforced.
    pub enforced: bool,
}

impl Decision {
    /// Whether the proxy must refuse the statement (a deny in enforce mode).
    pub fn blocks(&self) -> bool {
        self.verdict == Verdict::Deny && self.enforced
    }

    fn allow(rule: impl Into<String>, reason: impl Into<String>) -> Decision {
        Decision {
            verdict: Verdict::Allow,
            rule: rule.into(),
            reason: reason.into(),
            enforced: true,
        }
    }

    pub(crate) fn deny(rule: impl Into<String>, reason: impl Into<String>) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            rule: rule.into(),
            reason: reason.into(),
            enforced: true,
        }
    }
}

/// What pgward knows about one client session: its search path (and every path it ever had),
/// prepared statements, and whether strings are still read with standard_conforming_strings.
#[derive(Debug, Clone)]
pub struct SessionState {
    search_path: Vec<String>,
    default_path: Vec<String>,
    /// Every schema that has been on the search path in this session. Unqualified names are
    /// checked against all of them: a SET inside a transaction that was rolled back (or SET
    /// LOCAL) leaves pgward unsure which path is in force, so it assumes any of them.
    seen_schemas: Vec<String>,
    /// Some path put pg_catalog after another schema, so catalog names may be shadowed.
    catalog_shadowable: bool,
    /// Some path put pg_catalog first explicitly, so unqualified CREATEs may land there.
    system_first: bool,
    /// standard_conforming_strings was turned off: pgward's parse may differ from the server's.
    unreadable: bool,
    /// The upstream server's catalog: names resolve against it (see server_catalog.rs).
    catalog: Option<Arc<ServerCatalog>>,
    prepared: HashMap<String, Arc<StatementAnalysis>>,
    /// The caller's name that must lead application_name (see caller_name.rs).
    caller: Option<String>,
    key: String,
}

impl SessionState {
    /// A new session with the policy's default search path.
    pub fn new(policy: &Policy) -> SessionState {
        let path = policy.default_search_path().to_vec();
        let mut s = SessionState {
            search_path: Vec::new(),
            default_path: path.clone(),
            seen_schemas: Vec::new(),
            catalog_shadowable: false,
            system_first: false,
            unreadable: false,
            catalog: None,
            prepared: HashMap::new(),
            caller: None,
            key: String::new(),
        };
        s.set_path(path);
        s
    }

    /// The caller's name the session's application_name must begin with: `SET
    /// application_name` is allowed only in that form (see [`crate::rewrite_set_application_name`]);
    /// without it, it is refused.
    pub fn set_caller(&mut self, caller: &str) {
        self.caller = Some(caller.to_owned());
        self.rekey();
    }

    /// Resolves names against the upstream server's own catalog from now on: its version's
    /// built-ins, the functions anyone created, its operators, casts and sequences.
    pub fn set_catalog(&mut self, catalog: Arc<ServerCatalog>) {
        let same = self
            .catalog
            .as_ref()
            .is_some_and(|c| c.generation() == catalog.generation());
        if !same {
            self.catalog = Some(catalog);
            self.rekey();
        }
    }

    /// The catalog names resolve against, if the proxy gave one.
    pub fn catalog(&self) -> Option<&Arc<ServerCatalog>> {
        self.catalog.as_ref()
    }

    /// Where an unqualified CREATE may put its object: the first schema of whichever path is
    /// in force, so any schema seen on a path, and pg_catalog once a path put it first.
    fn creation_schemas(&self) -> impl Iterator<Item = &str> {
        self.seen_schemas
            .iter()
            .map(String::as_str)
            .chain(self.system_first.then_some("pg_catalog"))
    }

    /// The functions a statement defines, as (schema, name), unqualified ones in every
    /// schema an unqualified CREATE could use.
    pub fn defined_functions(&self, stmt: &StatementAnalysis) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for f in &stmt.defines_functions {
            match &f.schema {
                Some(s) => out.push((s.clone(), f.name.clone())),
                None => {
                    for s in self.creation_schemas() {
                        out.push((s.to_owned(), f.name.clone()));
                    }
                }
            }
        }
        out
    }

    /// The search path pgward believes is in force.
    pub fn search_path(&self) -> &[String] {
        &self.search_path
    }

    /// Every schema that has been on the search path in this session.
    pub fn seen_schemas(&self) -> &[String] {
        &self.seen_schemas
    }

    /// Remembers a statement prepared through the extended protocol (Parse with a name) so a
    /// later SQL EXECUTE of that name is decided as it.
    pub fn remember_prepared(&mut self, name: &str, analysis: StatementAnalysis) {
        self.prepared.insert(name.to_owned(), Arc::new(analysis));
    }

    /// The statement prepared under `name` (by SQL PREPARE or a protocol Parse), as pgward
    /// analysed it.
    pub fn prepared(&self, name: &str) -> Option<&Arc<StatementAnalysis>> {
        self.prepared.get(name)
    }

    /// Forgets a statement prepared through the extended protocol (Close of a statement).
    pub fn forget_prepared(&mut self, name: &str) {
        self.prepared.remove(name);
    }

    /// Updates the state after a startup parameter (`options=-c name=value`) that
    /// [`Policy::decide_setting`] allowed was passed upstream.
    pub fn apply_startup_setting(&mut self, name: &str, value: &str) {
        self.apply(&startup_analysis(name, value));
    }

    /// Updates the state after a statement was allowed and sent: search_path changes,
    /// PREPARE / DEALLOCATE / DISCARD ALL and standard_conforming_strings.
    pub fn apply(&mut self, stmt: &StatementAnalysis) {
        // A function's SET clause applies while the function runs, not to the session; ALTER
        // DATABASE/ROLE/SYSTEM ... SET to later sessions.
        let session_settings = !matches!(
            stmt.kind,
            "CreateFunctionStmt"
                | "AlterFunctionStmt"
                | "AlterDatabaseSetStmt"
                | "AlterRoleSetStmt"
                | "AlterSystemStmt"
        );
        for s in stmt.settings.iter().filter(|_| session_settings) {
            match s {
                SettingChange::Set {
                    name,
                    value: Some(v),
                } if name == "search_path" => self.set_path(v.clone()),
                SettingChange::Set { name, value } if name == "standard_conforming_strings" => {
                    let on = value
                        .as_ref()
                        .and_then(|v| v.first())
                        .is_some_and(|v| is_on(v));
                    self.unreadable = !on;
                    self.rekey();
                }
                SettingChange::Reset { name } if name == "search_path" => {
                    self.set_path(self.default_path.clone())
                }
                SettingChange::Reset { name } if name == "standard_conforming_strings" => {
                    self.unreadable = false;
                    self.rekey();
                }
                SettingChange::ResetAll => {
                    self.unreadable = false;
                    self.set_path(self.default_path.clone());
                }
                _ => {}
            }
        }
        for e in &stmt.effects {
            match e {
                SessionEffect::Prepare(name, a) => {
                    self.prepared.insert(name.clone(), Arc::new((**a).clone()));
                }
                SessionEffect::Deallocate(Some(name)) => {
                    self.prepared.remove(name);
                }
                SessionEffect::Deallocate(None) | SessionEffect::DiscardAll => {
                    self.prepared.clear()
                }
                // Cursors are tracked by the proxy, which knows policy versions.
                SessionEffect::DeclareCursor { .. } | SessionEffect::CloseCursor(_) => {}
            }
        }
    }

    fn set_path(&mut self, path: Vec<String>) {
        if path.iter().skip(1).any(|s| s == "pg_catalog") {
            self.catalog_shadowable = true;
        }
        if path.first().is_some_and(|s| s == "pg_catalog") {
            self.system_first = true;
        }
        for s in &path {
            if s != "pg_catalog" && !self.seen_schemas.contains(s) {
                self.seen_schemas.push(s.clone());
            }
        }
        self.search_path = path;
        self.rekey();
    }

    /// Everything about the session a cached decision depends on, as one string.
    fn rekey(&mut self) {
        self.key.clear();
        for s in &self.search_path {
            self.key.push_str(s);
            self.key.push('\u{1}');
        }
        self.key.push('\u{2}');
        for s in &self.seen_schemas {
            self.key.push_str(s);
            self.key.push('\u{1}');
        }
        self.key
            .push(if self.catalog_shadowable { 'S' } else { '-' });
        self.key.push(if self.system_first { 'P' } else { '-' });
        if let Some(c) = &self.catalog {
            self.key.push_str(&c.generation().to_string());
        }
        self.key.push(if self.unreadable { 'U' } else { '-' });
        // SET application_name is decided by the caller's name.
        if let Some(c) = &self.caller {
            self.key.push('\u{3}');
            self.key.push_str(c);
        }
    }

    pub(crate) fn cache_key(&self) -> &str {
        &self.key
    }

    /// The schemas an unqualified relation name may resolve to.
    pub(crate) fn relation_candidates(&self, name: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let in_catalog = match &self.catalog {
            Some(c) => c.is_catalog_relation(name),
            None => is_catalog_relation(name),
        };
        if in_catalog {
            out.push(("pg_catalog".to_owned(), name.to_owned()));
            if !self.catalog_shadowable {
                return out;
            }
        }
        for s in &self.seen_schemas {
            out.push((s.clone(), name.to_owned()));
        }
        if out.is_empty() {
            // No schema on the path: PostgreSQL would fail; an empty schema matches no allow rule.
            out.push((String::new(), name.to_owned()));
        }
        out
    }

    /// Whether a call certainly reaches a function initdb created. With the server's
    /// catalog: its version's built-ins, and an unqualified name only when no schema on the
    /// path has a function of that name (PostgreSQL would pick the best match among all).
    pub(crate) fn is_builtin(&self, f: &FunctionRef) -> bool {
        let Some(c) = &self.catalog else {
            return match f.schema.as_deref() {
                Some("pg_catalog") => is_builtin_function(&f.name),
                Some("information_schema") => {
                    INFORMATION_SCHEMA_FUNCTIONS.contains(&f.name.as_str())
                }
                Some(_) => false,
                None => !self.catalog_shadowable && is_builtin_function(&f.name),
            };
        };
        match f.schema.as_deref() {
            Some(s @ ("pg_catalog" | "information_schema")) => c.is_builtin_function(s, &f.name),
            Some(_) => false,
            None => {
                !self.catalog_shadowable
                    && c.is_builtin_function("pg_catalog", &f.name)
                    && !self.seen_schemas.iter().any(|s| c.has_function(s, &f.name))
            }
        }
    }

    /// Whether a call may reach a built-in the server does not let PUBLIC execute.
    fn is_privileged(&self, f: &FunctionRef) -> bool {
        let Some(c) = &self.catalog else { return false };
        f.schema.as_deref().is_none_or(|s| s == "pg_catalog") && c.is_privileged_function(&f.name)
    }

    /// Functions a statement runs without naming them as calls: `(x).f` attribute notation
    /// (any function of that name the server has, or a built-in name without a catalog),
    /// operators and casts the server maps to code created outside initdb and extensions.
    pub(crate) fn implicit_functions(&self, stmt: &StatementAnalysis) -> Vec<FunctionRef> {
        let mut out = Vec::new();
        for name in &stmt.attributes {
            let known = match &self.catalog {
                Some(c) => c.any_function_named(name),
                None => is_builtin_function(name),
            };
            if known {
                out.push(FunctionRef {
                    schema: None,
                    name: name.clone(),
                });
            }
        }
        for op in &stmt.operators {
            match &self.catalog {
                Some(c) => out.extend(
                    c.operator_functions(op.schema.as_deref(), &op.name)
                        .cloned(),
                ),
                // Without a catalog only pg_catalog's operators are known to be built in.
                None if op.schema.as_deref().is_some_and(|s| s != "pg_catalog") => {
                    out.push(op.clone())
                }
                None => {}
            }
        }
        if let Some(c) = &self.catalog {
            for t in &stmt.casts {
                out.extend(c.cast_functions(t).iter().cloned());
            }
            // An older server reads newer syntax as a call resolved on the search path.
            for (name, since) in &stmt.syntax_calls {
                if c.version_num() < *since {
                    out.push(FunctionRef {
                        schema: None,
                        name: name.clone(),
                    });
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The (schema, name) pairs an unqualified function call may resolve to.
    pub(crate) fn function_candidates(&self, f: &FunctionRef) -> Vec<(String, String)> {
        match &f.schema {
            Some(s) => vec![(s.clone(), f.name.clone())],
            None => {
                let mut out = vec![("pg_catalog".to_owned(), f.name.clone())];
                for s in &self.seen_schemas {
                    out.push((s.clone(), f.name.clone()));
                }
                out
            }
        }
    }
}

fn is_on(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1" | "t" | "y"
    )
}

impl crate::lineage::SessionView for SessionState {
    fn server_catalog(&self) -> Option<&ServerCatalog> {
        self.catalog.as_deref()
    }

    fn relation_candidates(&self, name: &str) -> Vec<(String, String)> {
        SessionState::relation_candidates(self, name)
    }

    fn calls_builtin(&self, f: &FunctionRef) -> bool {
        self.is_builtin(f)
    }

    fn prepared_sql(&self, name: &str) -> Option<String> {
        self.prepared.get(name).map(|a| a.sql.clone())
    }
}

/// An object after name resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    Rel(String, String),
    Schema(String),
    All,
    Pseudo(&'static str, String),
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::analyze::quote;
        match self {
            Resolved::Rel(s, n) => write!(f, "{}.{}", quote(s), quote(n)),
            Resolved::Schema(s) => write!(f, "schema {}", quote(s)),
            Resolved::All => f.write_str("the whole database"),
            Resolved::Pseudo(k, n) => write!(f, "{k}.{}", quote(n)),
        }
    }
}

fn resolve(o: &ObjectRef, session: &SessionState) -> Vec<Resolved> {
    match o {
        ObjectRef::RelationOid(oid) => {
            match session.catalog.as_ref().and_then(|c| c.sequence(*oid)) {
                Some((s, n)) => vec![Resolved::Rel(s.to_owned(), n.to_owned())],
                None => vec![Resolved::All],
            }
        }
        ObjectRef::Relation {
            schema: Some(s),
            name,
        } => vec![Resolved::Rel(s.clone(), name.clone())],
        ObjectRef::Relation { schema: None, name } => session
            .relation_candidates(name)
            .into_iter()
            .map(|(s, n)| Resolved::Rel(s, n))
            .collect(),
        ObjectRef::Schema(s) => vec![Resolved::Schema(s.clone())],
        ObjectRef::All => vec![Resolved::All],
        ObjectRef::Pseudo { kind, name } => vec![Resolved::Pseudo(kind, name.clone())],
    }
}

/// Whether an object pattern covers an object. Deny patterns are read broadly (a schema-wide
/// or database-wide operation touches whatever the pattern names); allow patterns narrowly
/// (only `schema.*` allows a schema-wide operation, only `"*"` a database-wide one, and a pseudo
/// kind such as `setting` must be named literally).
pub(crate) fn object_matches(p: &Pattern, o: &Resolved, deny: bool, exact_name: bool) -> bool {
    let Some((schema, name)) = &p.parts else {
        return deny || !matches!(o, Resolved::Pseudo(..));
    };
    let Some(schema) = schema else { return false };
    match o {
        Resolved::Rel(s, n) => schema.matches(s) && name.matches(n),
        Resolved::Schema(s) => schema.matches(s) && (deny || name.is_star()),
        Resolved::All => deny || (schema.is_star() && name.is_star()),
        Resolved::Pseudo(kind, n) => {
            let kind_ok = match schema {
                Part::Literal(l) => l == kind,
                Part::Glob(_) => deny && schema.matches(kind),
            };
            let name_ok = if exact_name {
                matches!(name, Part::Literal(l) if l == n)
            } else {
                name.matches(n)
            };
            kind_ok && (name_ok || (deny && name.matches(n)))
        }
    }
}

pub(crate) fn function_matches(p: &Pattern, candidates: &[(String, String)]) -> bool {
    let Some((schema, name)) = &p.parts else {
        return false;
    };
    candidates
        .iter()
        .any(|(s, n)| name.matches(n) && schema.as_ref().is_none_or(|sp| sp.matches(s)))
}

/// Whether the baseline's catalog reads cover an object: a relation initdb created in
/// pg_catalog or information_schema (per the server's catalog when there is one), except the
/// excluded ones.
fn baseline_catalog(o: &Resolved, session: &SessionState) -> bool {
    let Resolved::Rel(s, n) = o else { return false };
    let listed = match s.as_str() {
        "pg_catalog" => !CATALOG_EXCLUDED.contains(&n.as_str()),
        "information_schema" => !INFORMATION_SCHEMA_EXCLUDED.contains(&n.as_str()),
        _ => false,
    };
    listed
        && session
            .catalog
            .as_ref()
            .is_none_or(|c| c.is_builtin_relation(s, n))
}

/// Whether an action changes something (rather than reading or running it).
fn writes(action: Action) -> bool {
    matches!(
        action,
        Action::Insert
            | Action::Update
            | Action::Delete
            | Action::Truncate
            | Action::Create
            | Action::Alter
            | Action::Drop
            | Action::Grant
    )
}

/// The decision for one query string: every statement's analysis and decision.
#[derive(Debug, Clone)]
pub struct QueryDecision {
    /// Per statement, in order (empty when the string did not parse).
    pub statements: Vec<StatementDecision>,
    /// The overall decision: the first denial, or an allow.
    pub decision: Decision,
    /// Set when the string could not be analysed (then `decision` is a deny).
    pub error: Option<AnalysisError>,
    /// Whether the decision depends only on what the cache key covers.
    pub(crate) cacheable: bool,
}

/// One statement of a query string with its decision.
#[derive(Debug, Clone)]
pub struct StatementDecision {
    /// What the statement does.
    pub analysis: StatementAnalysis,
    /// Whether it may.
    pub decision: Decision,
    /// How its results are masked for this caller (`None`: they pass untouched).
    pub masks: Option<Arc<crate::mask::MaskPlan>>,
    /// Column masks denied it.
    pub mask_denied: bool,
}

impl Policy {
    /// The roles an identity holds: every role whose members list one of its groups, app roles,
    /// UPN or object id (UPNs, object ids and group ids compare case-insensitively), and every
    /// role with `everyone = true`.
    pub fn roles_for(&self, p: &Principal) -> RoleSet {
        let upn = p.upn.to_lowercase();
        let oid = p.oid.to_lowercase();
        let groups: Vec<String> = p.groups.iter().map(|g| g.to_lowercase()).collect();
        let mut idx = Vec::new();
        for (i, r) in self.roles.iter().enumerate() {
            let m = &r.members;
            let held = m.everyone
                || m.users
                    .iter()
                    .any(|u| (!upn.is_empty() && *u == upn) || (!oid.is_empty() && *u == oid))
                || m.groups.iter().any(|g| groups.contains(g))
                || m.app_roles.iter().any(|a| p.app_roles.contains(a));
            if held {
                idx.push(i);
            }
        }
        self.role_set(idx)
    }

    /// A role set given by role names (for `pgward policy explain --role`).
    pub fn roles_named(&self, names: &[&str]) -> Result<RoleSet, String> {
        let mut idx = Vec::new();
        for n in names {
            match self.roles.iter().position(|r| r.name == *n) {
                Some(i) => idx.push(i),
                None => return Err(format!("no role named {n:?} in the policy")),
            }
        }
        idx.sort_unstable();
        idx.dedup();
        Ok(self.role_set(idx))
    }

    fn role_set(&self, idx: Vec<usize>) -> RoleSet {
        let names = idx
            .iter()
            .filter_map(|&i| self.roles.get(i))
            .map(|r| r.name.clone())
            .collect();
        // A policy with more than 65535 roles is not a realistic input; indices beyond that are
        // dropped (fewer roles can only mean fewer permissions).
        let idx = idx
            .into_iter()
            .filter_map(|i| u16::try_from(i).ok())
            .collect();
        RoleSet {
            idx,
            names,
            version: self.version,
        }
    }

    /// The upstream role the session should SET ROLE to: that of the first held role (in
    /// policy order) that names one.
    pub fn upstream_role<'a>(&'a self, roles: &'a RoleSet) -> Option<&'a str> {
        self.held(roles).find_map(|r| r.upstream_role.as_deref())
    }

    fn held<'a>(
        &'a self,
        roles: &'a RoleSet,
    ) -> impl Iterator<Item = &'a crate::policy::Role> + 'a {
        // A role set from another policy version must not grant anything here.
        let ok = roles.version == self.version;
        roles
            .idx
            .iter()
            .filter(move |_| ok)
            .filter_map(|&i| self.roles.get(usize::from(i)))
    }

    fn deny_rules<'a>(&'a self, roles: &'a RoleSet) -> impl Iterator<Item = &'a Rule> + 'a {
        self.held(roles).flat_map(|r| r.deny.iter())
    }

    fn allow_rules<'a>(&'a self, roles: &'a RoleSet) -> impl Iterator<Item = &'a Rule> + 'a {
        self.held(roles).flat_map(|r| r.allow.iter())
    }

    /// Decides one analysed statement for an identity holding `roles` in `session`.
    /// An EXECUTE is decided as the statement prepared under that name.
    pub fn decide(
        &self,
        roles: &RoleSet,
        stmt: &StatementAnalysis,
        session: &SessionState,
    ) -> Decision {
        let mut d = self.decide_inner(roles, stmt, session);
        if d.verdict == Verdict::Allow {
            if let Some(name) = &stmt.executes {
                d = match session.prepared.get(name) {
                    Some(inner) => {
                        let mut d = self.decide_inner(roles, inner, session);
                        d.reason = format!("EXECUTE {name}: {}", d.reason);
                        d
                    }
                    None => Decision::deny(
                        "builtin.unknown_prepared",
                        format!("EXECUTE of {name:?}, which pgward did not see prepared in this session"),
                    ),
                };
            }
        }
        if d.verdict == Verdict::Deny && self.mode == Mode::Observe {
            d.enforced = false;
        }
        d
    }

    fn decide_inner(
        &self,
        roles: &RoleSet,
        stmt: &StatementAnalysis,
        session: &SessionState,
    ) -> Decision {
        if let Some(why) = stmt.not_understood.first() {
            return Decision::deny("builtin.not_understood", format!("not understood: {why}"));
        }
        if session.unreadable && !only_restores_scs(stmt) {
            return Decision::deny(
                "builtin.not_understood",
                "standard_conforming_strings is off in this session, so pgward cannot read SQL as the server does",
            );
        }
        let resolved: Vec<(Action, Vec<Resolved>)> = stmt
            .accesses
            .iter()
            .map(|Access { action, object }| {
                let mut cands = resolve(object, session);
                // An unqualified write may land in any schema an unqualified CREATE could use
                // (pg_catalog too, once a path put it first).
                if let (true, ObjectRef::Relation { schema: None, name }) =
                    (writes(*action), object)
                {
                    for s in session.creation_schemas() {
                        let c = Resolved::Rel(s.to_owned(), name.clone());
                        if !cands.contains(&c) {
                            cands.push(c);
                        }
                    }
                }
                (*action, cands)
            })
            .collect();
        // Built-ins are whatever sits in these schemas, so nothing may change there, and a
        // write through a view over pg_settings changes settings pgward cannot name.
        for (action, cands) in resolved.iter().filter(|(a, _)| writes(*a)) {
            for c in cands {
                let system = match c {
                    // Writing pg_settings is a change of settings, decided as such below.
                    Resolved::Rel(s, n) if s == "pg_catalog" && n == "pg_settings" => false,
                    Resolved::Rel(s, _) | Resolved::Schema(s) => {
                        SYSTEM_SCHEMAS.contains(&s.as_str()) || s == PGWARD_SCHEMA
                    }
                    _ => false,
                };
                if system {
                    return Decision::deny(
                        "builtin.system_schema",
                        format!("{action} on {c}: objects in the server's system schemas and in pgward's own schema cannot be created, changed or dropped through pgward"),
                    );
                }
                if let (Resolved::Rel(s, n), Some(cat)) = (c, &session.catalog) {
                    if cat.is_settings_view(s, n) {
                        return Decision::deny(
                            "builtin.protected_setting",
                            format!("{action} on {c}, a view over pg_settings, would change settings pgward cannot name"),
                        );
                    }
                }
            }
        }
        let implicit = session.implicit_functions(stmt);
        let functions: Vec<(&FunctionRef, Vec<(String, String)>)> = stmt
            .functions
            .iter()
            .chain(implicit.iter())
            .map(|f| (f, session.function_candidates(f)))
            .collect();
        let settings: Vec<(&str, bool)> = setting_names(stmt);

        // Pass 1: deny rules win over everything.
        for rule in self.deny_rules(roles) {
            for (action, cands) in &resolved {
                if rule.has(*action) {
                    if let Some(c) = cands.iter().find(|c| {
                        rule.objects
                            .iter()
                            .any(|p| object_matches(p, c, true, false))
                    }) {
                        return Decision::deny(
                            &rule.name,
                            format!("{action} on {c} is denied by rule {}", rule.name),
                        );
                    }
                }
            }
            for (f, cands) in &functions {
                let by_name = rule.functions.iter().any(|p| function_matches(p, cands));
                let by_object = rule.has(Action::Execute)
                    && cands.iter().any(|(s, n)| {
                        let o = Resolved::Rel(s.clone(), n.clone());
                        rule.objects
                            .iter()
                            .any(|p| object_matches(p, &o, true, false))
                    });
                if by_name || by_object {
                    return Decision::deny(
                        &rule.name,
                        format!("calling {f} is denied by rule {}", rule.name),
                    );
                }
            }
            if rule.has(Action::Set) {
                for (name, _) in &settings {
                    let o = Resolved::Pseudo("setting", (*name).to_owned());
                    if rule
                        .objects
                        .iter()
                        .any(|p| object_matches(p, &o, true, false))
                    {
                        return Decision::deny(
                            &rule.name,
                            format!("setting {name} is denied by rule {}", rule.name),
                        );
                    }
                }
            }
        }

        // Pass 2: everything must be allowed.
        let mut deciding: Option<&str> = None;
        let mut baseline_used = false;
        for (action, cands) in &resolved {
            for c in cands {
                if *action == Action::Select
                    && self.baseline.catalog_reads
                    && baseline_catalog(c, session)
                {
                    baseline_used = true;
                    continue;
                }
                let protected = matches!(c, Resolved::Pseudo("setting", n) if PROTECTED_SETTINGS.contains(&n.as_str()));
                match self.allow_rules(roles).find(|r| {
                    r.has(*action)
                        && r.objects
                            .iter()
                            .any(|p| object_matches(p, c, false, protected))
                }) {
                    Some(r) => {
                        deciding.get_or_insert(&r.name);
                    }
                    None => {
                        let hint = if *action == Action::CopyFile {
                            " (reading or writing server files and running programs needs copy_file named in a rule; \"*\" never includes it)"
                        } else {
                            ""
                        };
                        return Decision::deny(
                            "default_deny",
                            format!("no rule allows {action} on {c}{hint}"),
                        );
                    }
                }
            }
        }
        for (f, cands) in &functions {
            match self.allow_function(roles, stmt, session, f, cands) {
                Ok(Some(rule)) => {
                    deciding.get_or_insert(rule);
                }
                Ok(None) => {}
                Err(denied) => return denied,
            }
        }
        for change in &stmt.settings {
            if let SettingChange::Set { name, value } = change {
                // application_name names the caller on the upstream session (set by pgward at
                // connect); RESET returns to pgward's value, so only SET is refused.
                if name == "application_name" {
                    let callers = match (value.as_deref(), session.caller.as_deref()) {
                        (Some([v]), Some(c)) => crate::caller_name::names_caller(v, c),
                        _ => false,
                    };
                    if !callers {
                        return Decision::deny(
                            "builtin.pgward_settings",
                            "application_name names the caller and must begin with the caller's \
                             name (pgward rewrites a plain SET application_name to that form)",
                        );
                    }
                }
                // Not a matter of permission: an unsafe encoding would make the server read
                // later statements differently from pgward.
                if name == "client_encoding" {
                    let refusal = match value.as_deref() {
                        Some([v]) => crate::encoding::client_encoding(v).err(),
                        // A computed or missing value: pgward could not tell how the server
                        // reads what follows.
                        _ => Some(crate::encoding::EncodingRefusal::Unknown),
                    };
                    if let Some(r) = refusal {
                        return Decision::deny("builtin.client_encoding", r.to_string());
                    }
                }
            }
        }
        for (name, reset_all) in &settings {
            if name.starts_with("pgward.") {
                return Decision::deny(
                    "builtin.pgward_settings",
                    format!("setting {name} is pgward's and cannot be changed"),
                );
            }
            if *name == "*" {
                return Decision::deny(
                    "builtin.protected_setting",
                    "a change of settings pgward cannot name: set_config() with a name that is not a literal, or an UPDATE of pg_settings or of a view over it",
                );
            }
            if *reset_all && self.baseline.reset_all {
                baseline_used = true;
                continue;
            }
            if !reset_all && self.baseline.settings.iter().any(|s| s == name) {
                baseline_used = true;
                continue;
            }
            let protected = PROTECTED_SETTINGS.contains(name);
            let o = Resolved::Pseudo("setting", (*name).to_owned());
            match self.allow_rules(roles).find(|r| {
                r.has(Action::Set)
                    && r.objects
                        .iter()
                        .any(|p| object_matches(p, &o, false, protected))
            }) {
                Some(r) => {
                    deciding.get_or_insert(&r.name);
                }
                None => {
                    let (rule, what) = if protected {
                        ("builtin.protected_setting", "protected setting")
                    } else {
                        ("default_deny", "setting")
                    };
                    let via = if *reset_all {
                        " (via RESET ALL / DISCARD ALL)"
                    } else {
                        ""
                    };
                    return Decision::deny(
                        rule,
                        format!("no rule allows set on {what} {name}{via}"),
                    );
                }
            }
        }
        match deciding {
            Some(r) => Decision::allow(r, format!("allowed by rule {r}")),
            None if baseline_used => {
                Decision::allow("baseline", "allowed by the built-in baseline")
            }
            None => Decision::allow(
                "baseline",
                "touches no object, function or setting that needs a rule",
            ),
        }
    }

    /// Decides a setting given outside SQL: a startup parameter (`options=-c name=value` or a
    /// StartupMessage field). `value` is the raw text as PostgreSQL would read it.
    pub fn decide_setting(
        &self,
        roles: &RoleSet,
        name: &str,
        value: &str,
        session: &SessionState,
    ) -> Decision {
        // The client's application_name at connect is kept (beside the caller's name, which
        // pgward puts first); only changing it later is refused.
        if name.eq_ignore_ascii_case("application_name") {
            return Decision::allow("baseline", "allowed by the built-in baseline");
        }
        self.decide(roles, &startup_analysis(name, value), session)
    }

    /// Whether a function call is allowed (deny rules were checked already): `Ok(None)` by the
    /// baseline, `Ok(Some(rule))` by an allow rule, `Err` with the denial otherwise.
    fn allow_function<'a>(
        &'a self,
        roles: &'a RoleSet,
        stmt: &StatementAnalysis,
        session: &SessionState,
        f: &FunctionRef,
        cands: &[(String, String)],
    ) -> Result<Option<&'a str>, Decision> {
        if self.dangerous.iter().any(|p| function_matches(p, cands)) || session.is_privileged(f) {
            // Only a pattern that names the function counts, not a bare `*`.
            let named = |p: &Pattern| !matches!(&p.parts, Some((_, n)) if n.is_star());
            return self
                .allow_rules(roles)
                .find(|r| {
                    r.functions
                        .iter()
                        .any(|p| named(p) && function_matches(p, cands))
                })
                .map(|r| Some(r.name.as_str()))
                .ok_or_else(|| {
                    Decision::deny(
                        "builtin.dangerous_function",
                        format!("{f} is a dangerous function and no rule allows it by name"),
                    )
                });
        }
        if stmt.kind == "DoStmt" || session.is_builtin(f) {
            // Built-in functions that are not dangerous are part of the baseline.
            return Ok(None);
        }
        // pgward's caller identity functions (docs/azure.md): they read the caller's own row.
        // Nothing but pgward's login can create in its schema, through pgward or not.
        if !cands.is_empty()
            && cands
                .iter()
                .all(|(s, n)| s == PGWARD_SCHEMA && PGWARD_IDENTITY_FUNCTIONS.contains(&n.as_str()))
        {
            return Ok(None);
        }
        // Any other function (user-defined, from an extension) runs code pgward does not see:
        // it must be named in an allow rule's functions, or `execute` allowed on it.
        if let Some(r) = self
            .allow_rules(roles)
            .find(|r| r.functions.iter().any(|p| function_matches(p, cands)))
        {
            return Ok(Some(&r.name));
        }
        let mut rule = None;
        // An unqualified name that is not built-in is not in pg_catalog.
        for (s, n) in cands
            .iter()
            .filter(|(s, _)| f.schema.is_some() || s != "pg_catalog")
        {
            let o = Resolved::Rel(s.clone(), n.clone());
            let allowing = self.allow_rules(roles).find(|r| {
                r.has(Action::Execute)
                    && r.objects
                        .iter()
                        .any(|p| object_matches(p, &o, false, false))
            });
            match allowing {
                Some(r) => {
                    rule.get_or_insert(r.name.as_str());
                }
                None => {
                    return Err(Decision::deny(
                        "default_deny",
                        format!("no rule allows execute on function {o} (called as {f})"),
                    ))
                }
            }
        }
        Ok(rule)
    }

    /// Whether any of the caller's roles masks columns.
    pub fn has_masks(&self, roles: &RoleSet) -> bool {
        roles.idx.iter().any(|&i| {
            self.roles
                .get(usize::from(i))
                .is_some_and(|r| !r.masks.is_empty())
        })
    }

    /// Whether any role of the policy masks columns (the proxy then reads the upstream's
    /// columns and views).
    pub fn has_any_masks(&self) -> bool {
        self.roles.iter().any(|r| !r.masks.is_empty())
    }

    /// Whether any role uses a `hash` mask (which needs `[policy] mask_key_file`).
    pub fn has_hash_masks(&self) -> bool {
        self.roles
            .iter()
            .flat_map(|r| &r.masks)
            .any(|m| m.kind == crate::mask::MaskKind::Hash)
    }

    /// The mask plan of one statement for a caller holding `roles` (`Ok(None)`: nothing
    /// masked), as decisions make it: for a statement prepared under an earlier policy.
    pub fn mask_plan(
        &self,
        roles: &RoleSet,
        st: &StatementAnalysis,
        session: &SessionState,
    ) -> Result<Option<Arc<crate::mask::MaskPlan>>, crate::mask::MaskDenial> {
        if !self.has_masks(roles) {
            return Ok(None);
        }
        self.plan_masks(roles, st, session)
    }

    /// The masks in force for a caller holding `roles`.
    pub fn masks_for(&self, roles: &RoleSet) -> crate::mask_rules::MaskSet {
        let mut set = crate::mask_rules::MaskSet::default();
        for r in roles
            .idx
            .iter()
            .filter_map(|&i| self.roles.get(usize::from(i)))
        {
            set.rules.extend(r.masks.iter().cloned());
            set.unmask.extend(r.unmask.iter().cloned());
        }
        set
    }

    /// Masks for one allowed statement of a caller with masks: the plan for its results,
    /// or the denial. A function that is not built in may read masked columns where pgward
    /// cannot see, so it must be named in an allow rule's `functions` (trusted by name).
    fn plan_masks(
        &self,
        roles: &RoleSet,
        st: &StatementAnalysis,
        session: &SessionState,
    ) -> Result<Option<Arc<crate::mask::MaskPlan>>, crate::mask::MaskDenial> {
        let mut calls: Vec<FunctionRef> = st.functions.clone();
        calls.extend(session.implicit_functions(st));
        for f in &calls {
            if session.is_builtin(f) {
                continue;
            }
            let cands = session.function_candidates(f);
            let named = self
                .allow_rules(roles)
                .any(|r| r.functions.iter().any(|p| function_matches(p, &cands)));
            if !named {
                return Err(crate::mask::MaskDenial {
                    rule: "builtin.mask".to_owned(),
                    reason: format!(
                        "masks apply to you, and function {f} is not built in: it could return masked values pgward cannot see (name it in an allow rule's functions to trust it)"
                    ),
                });
            }
        }
        if !crate::lineage::may_touch(st) {
            return Ok(None);
        }
        let set = self.masks_for(roles);
        crate::lineage::plan_statement(&st.sql, session, &set).map(|p| p.map(Arc::new))
    }

    /// Analyses and decides a whole query string. Statements are decided in order, each with
    /// the session as the earlier statements of the string leave it (a `SET search_path` or
    /// `PREPARE` affects the statements after it); the session passed in is not changed. Any
    /// denied statement denies the whole string.
    pub fn decide_query(
        &self,
        roles: &RoleSet,
        sql: &str,
        session: &SessionState,
    ) -> QueryDecision {
        self.decide_analysis(roles, analyze(sql), session)
    }

    /// Decides a query string already analysed (see [`Policy::decide_query`]). Analysis
    /// is the expensive, session-independent part, so the proxy runs it off its runtime
    /// threads and hands the result here; deciding is cheap.
    pub fn decide_analysis(
        &self,
        roles: &RoleSet,
        analysis: Result<Analysis, AnalysisError>,
        session: &SessionState,
    ) -> QueryDecision {
        let analysis = match analysis {
            Ok(a) => a,
            // Parse errors and nesting are properties of the text and may be cached; a
            // time-out is not (the next try may be faster) and neither is a length over a
            // limit that a config change can raise.
            Err(e) => {
                let cacheable = matches!(
                    e,
                    AnalysisError::Parse(_)
                        | AnalysisError::Syntax { .. }
                        | AnalysisError::TooComplex
                );
                return self.not_analysed(e, cacheable);
            }
        };
        let mut local: Option<SessionState> = None;
        let mut statements = Vec::with_capacity(analysis.statements.len());
        let mut cacheable = true;
        for st in analysis.statements {
            let current = local.as_ref().unwrap_or(session);
            if st.executes.is_some() {
                // Depends on the session's prepared statements, which the cache key omits.
                cacheable = false;
            }
            let mut decision = self.decide(roles, &st, current);
            let mut masks = None;
            let mut mask_denied = false;
            if decision.verdict == Verdict::Allow && self.has_masks(roles) {
                match self.plan_masks(roles, &st, current) {
                    Ok(plan) => masks = plan,
                    Err(d) => {
                        mask_denied = true;
                        decision = Decision::deny(&d.rule, d.reason);
                        decision.enforced = self.mode == Mode::Enforce;
                    }
                }
            }
            if !st.effects.is_empty() || !st.settings.is_empty() {
                local.get_or_insert_with(|| session.clone()).apply(&st);
            }
            // A function created earlier in the string may be called by a later statement
            // (`(x).new_function`): the rest of the string is decided knowing it.
            if !st.defines_functions.is_empty() {
                let s = local.get_or_insert_with(|| session.clone());
                let defined = s.defined_functions(&st);
                if let Some(c) = s.catalog().and_then(|c| c.with_created(&defined)) {
                    s.set_catalog(Arc::new(c));
                }
            }
            statements.push(StatementDecision {
                analysis: st,
                decision,
                masks,
                mask_denied,
            });
        }
        let decision = overall_decision(&statements, "query string", "empty query");
        QueryDecision {
            statements,
            decision,
            error: None,
            cacheable,
        }
    }
}

impl Policy {
    /// The denial of a string pgward could not analyse (parse failure, too long, too
    /// complex): fail closed, or only reported in observe mode.
    pub(crate) fn not_analysed(&self, e: AnalysisError, cacheable: bool) -> QueryDecision {
        let rule = match e {
            AnalysisError::Parse(_) | AnalysisError::Syntax { .. } => "builtin.parse_error",
            AnalysisError::TooComplex => "builtin.not_understood",
            AnalysisError::TooLong { .. } | AnalysisError::TimedOut { .. } => {
                "builtin.analysis_budget"
            }
        };
        let mut decision = Decision::deny(rule, e.to_string());
        decision.enforced = self.mode == Mode::Enforce;
        QueryDecision {
            statements: Vec::new(),
            decision,
            error: Some(e),
            cacheable,
        }
    }
}

/// The decision of a whole `unit` (query string, T-SQL batch) from its statements': the
/// first denial denies it all; otherwise an allow naming the rules that mattered. `empty`
/// is the reason when there is no statement at all.
pub(crate) fn overall_decision(
    statements: &[StatementDecision],
    unit: &str,
    empty: &str,
) -> Decision {
    if let Some(s) = statements
        .iter()
        .find(|s| s.decision.verdict == Verdict::Deny)
    {
        let mut d = s.decision.clone();
        if statements.len() > 1 {
            d.reason = format!(
                "{} (one denied statement denies the whole {unit})",
                d.reason
            );
        }
        return d;
    }
    let mut rules: Vec<&str> = Vec::new();
    for s in statements {
        // Name the rules that mattered; the baseline only when nothing else did.
        if s.decision.rule != "baseline" && !rules.contains(&s.decision.rule.as_str()) {
            rules.push(&s.decision.rule);
        }
    }
    match statements {
        [] => Decision::allow("baseline", empty),
        [one] => one.decision.clone(),
        _ if rules.is_empty() => Decision::allow(
            "baseline",
            "every statement is allowed by the built-in baseline",
        ),
        _ => Decision::allow(rules.join(","), "every statement is allowed"),
    }
}

/// A startup parameter as the SET it amounts to. List-valued settings (search_path) are
/// split the way PostgreSQL reads a list given as one string.
fn startup_analysis(name: &str, value: &str) -> StatementAnalysis {
    let name = name.to_ascii_lowercase();
    let value = if name == "search_path" {
        split_list(value)
    } else {
        vec![value.to_owned()]
    };
    StatementAnalysis {
        kind: "VariableSetStmt",
        sql: format!("startup parameter {name}"),
        settings: vec![SettingChange::Set {
            name,
            value: Some(value),
        }],
        ..StatementAnalysis::default()
    }
}

/// Settings a statement changes, as (name, via RESET ALL).
fn setting_names(stmt: &StatementAnalysis) -> Vec<(&str, bool)> {
    let mut out = Vec::new();
    for s in &stmt.settings {
        match s {
            SettingChange::ResetAll => out.extend(RESET_ALL_SETTINGS.iter().map(|n| (*n, true))),
            other => out.push((other.name(), false)),
        }
    }
    out
}

/// The only statement allowed while pgward cannot read the session's SQL: turning
/// standard_conforming_strings back on.
fn only_restores_scs(stmt: &StatementAnalysis) -> bool {
    stmt.accesses.is_empty()
        && stmt.functions.is_empty()
        && !stmt.settings.is_empty()
        && stmt.settings.iter().all(|s| match s {
            SettingChange::Set {
                name,
                value: Some(v),
            } => name == "standard_conforming_strings" && v.first().is_some_and(|v| is_on(v)),
            SettingChange::Reset { name } => name == "standard_conforming_strings",
            _ => false,
        })
}
