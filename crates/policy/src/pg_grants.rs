//! The second wall for PostgreSQL: the policy compiled into database privileges
//! (`pgward policy grants`, `[policy] apply_grants`).
//!
//! Each policy `upstream_role` is a database role (a login of its own, see docs/security.md)
//! that should hold exactly what its policy roles allow: SELECT/INSERT/UPDATE/DELETE/TRUNCATE on
//! tables and views, SELECT/UPDATE on sequences (plus USAGE on the sequences behind the
//! defaults of tables it may write), EXECUTE on functions outside pg_catalog (and on the
//! dangerous built-ins a rule names), USAGE and CREATE on schemas, CREATE on the database.
//!
//! The plan is a diff against what the server holds now ([`GrantsQuery::SQL`]'s answer):
//! grants that are missing, revocations of grants the policy does not name (a grant added by
//! hand), and for PUBLIC (which every role holds) revocation of anything not every walled
//! role may do, unless `keep_public`. pgward's own login is given what PUBLIC loses, so
//! sessions that still run as it behave as before. Nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::analyze::Action;
use crate::decide::{function_matches, object_matches, Resolved};
use crate::policy::{Part, Pattern, Policy, Role};

/// The query whose rows [`Policy::pg_grants`] reads: the server's objects, their owners and
/// privileges, role attributes and memberships, as eight text columns.
pub struct GrantsQuery;

impl GrantsQuery {
    /// Run by pgward's own login in the database the grants are for (PostgreSQL 11+).
    pub const SQL: &'static str = r#"
WITH excluded AS (SELECT n.oid FROM pg_catalog.pg_namespace n
                  WHERE n.nspname IN ('information_schema', 'pg_toast', 'pgward')
                     OR n.nspname ~ '^pg_(toast_)?temp_')
SELECT 'rel', n.nspname, c.relname, '', c.relkind::text, pg_catalog.pg_get_userbyid(c.relowner),
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
       a.privilege_type
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL pg_catalog.aclexplode(COALESCE(c.relacl, pg_catalog.acldefault(
    CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a ON true
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND n.nspname <> 'pg_catalog'
  AND n.oid NOT IN (SELECT oid FROM excluded)
UNION ALL
SELECT 'fn', n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid),
       p.prokind::text, pg_catalog.pg_get_userbyid(p.proowner),
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
       a.privilege_type
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
LEFT JOIN LATERAL pg_catalog.aclexplode(COALESCE(p.proacl,
    pg_catalog.acldefault('f', p.proowner))) a ON true
WHERE n.oid NOT IN (SELECT oid FROM excluded)
UNION ALL
SELECT 'schema', n.nspname, '', '', '', pg_catalog.pg_get_userbyid(n.nspowner),
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
       a.privilege_type
FROM pg_catalog.pg_namespace n
LEFT JOIN LATERAL pg_catalog.aclexplode(COALESCE(n.nspacl,
    pg_catalog.acldefault('n', n.nspowner))) a ON true
WHERE n.nspname <> 'pg_catalog' AND n.oid NOT IN (SELECT oid FROM excluded)
UNION ALL
SELECT 'seqdep', tn.nspname, t.relname, sn.nspname, s.relname, '', '', ''
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i')
UNION ALL
SELECT 'seqdep', tn.nspname, t.relname, sn.nspname, s.relname, '', '', ''
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_attrdef ad ON ad.oid = d.objid
JOIN pg_catalog.pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
JOIN pg_catalog.pg_class t ON t.oid = ad.adrelid
JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
WHERE d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
UNION ALL
SELECT 'member', '', pg_catalog.pg_get_userbyid(m.roleid), '', '', '',
       pg_catalog.pg_get_userbyid(m.member), ''
FROM pg_catalog.pg_auth_members m
UNION ALL
SELECT 'role', '', r.rolname, '', pg_catalog.concat_ws(',',
       CASE WHEN r.rolsuper THEN 'SUPERUSER' END, CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END,
       CASE WHEN r.rolcreatedb THEN 'CREATEDB' END, CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END,
       CASE WHEN r.rolreplication THEN 'REPLICATION' END), '', '', ''
FROM pg_catalog.pg_roles r
UNION ALL
SELECT 'db', '', d.datname, '', '', pg_catalog.pg_get_userbyid(d.datdba),
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
       a.privilege_type
FROM pg_catalog.pg_database d
LEFT JOIN LATERAL pg_catalog.aclexplode(COALESCE(d.datacl,
    pg_catalog.acldefault('d', d.datdba))) a ON true
WHERE d.datname = pg_catalog.current_database()
UNION ALL
SELECT 'me', '', current_user::text, '', '', '', '', ''
"#;
}

/// What kind of object a privilege is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Database,
    Schema,
    Table,
    Sequence,
    Function,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    class: Class,
    schema: String,
    name: String,
    /// A function's identity arguments.
    args: String,
}

#[derive(Debug, Default)]
struct Object {
    owner: String,
    /// `prokind` for functions (`f`, `p`, `a`, `w`).
    sub: String,
    /// (grantee, privilege) as the server holds them; grantee `PUBLIC` for everyone.
    held: BTreeSet<(String, String)>,
}

/// The server's side, read from [`GrantsQuery::SQL`]'s rows.
#[derive(Debug, Default)]
struct Server {
    objects: BTreeMap<Key, Object>,
    /// Table → sequences its columns own or its defaults call.
    seq_deps: BTreeMap<(String, String), BTreeSet<(String, String)>>,
    /// role → roles it is a direct member of.
    member_of: BTreeMap<String, BTreeSet<String>>,
    /// Every role, with its attributes that matter here.
    roles: BTreeMap<String, BTreeSet<String>>,
    me: String,
}

impl Server {
    fn from_rows(rows: &[Vec<Option<String>>]) -> Result<Server, String> {
        let mut s = Server::default();
        for (i, row) in rows.iter().enumerate() {
            if row.len() != 8 {
                return Err(format!(
                    "grants query row {i}: {} columns, not 8",
                    row.len()
                ));
            }
            let col = |j: usize| row[j].as_deref().unwrap_or("");
            let grant = || match (&row[6], &row[7]) {
                (Some(g), Some(p)) if !g.is_empty() && !p.is_empty() => {
                    Some((g.clone(), p.clone()))
                }
                _ => None,
            };
            let mut object = |class: Class, args: &str| {
                let key = Key {
                    class,
                    schema: col(1).to_owned(),
                    name: col(2).to_owned(),
                    args: args.to_owned(),
                };
                let o = s.objects.entry(key).or_default();
                o.owner = col(5).to_owned();
                o.sub = col(4).to_owned();
                if let Some(g) = grant() {
                    o.held.insert(g);
                }
            };
            match col(0) {
                "rel" => {
                    let class = if col(4) == "S" {
                        Class::Sequence
                    } else {
                        Class::Table
                    };
                    object(class, "");
                }
                "fn" => object(Class::Function, col(3)),
                "schema" => object(Class::Schema, ""),
                "db" => object(Class::Database, ""),
                "seqdep" => {
                    s.seq_deps
                        .entry((col(1).to_owned(), col(2).to_owned()))
                        .or_default()
                        .insert((col(3).to_owned(), col(4).to_owned()));
                }
                "member" => {
                    s.member_of
                        .entry(col(6).to_owned())
                        .or_default()
                        .insert(col(2).to_owned());
                }
                "role" => {
                    let attrs = col(4)
                        .split(',')
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned)
                        .collect();
                    s.roles.insert(col(2).to_owned(), attrs);
                }
                "me" => s.me = col(2).to_owned(),
                other => return Err(format!("grants query row {i}: unknown kind {other:?}")),
            }
        }
        if s.me.is_empty() {
            return Err("grants query: no row naming the current user".into());
        }
        Ok(s)
    }

    fn is_superuser(&self, role: &str) -> bool {
        self.roles
            .get(role)
            .is_some_and(|a| a.contains("SUPERUSER"))
    }

    /// Whether `role` is `target` or a member of it, directly or not.
    fn has_role(&self, role: &str, target: &str) -> bool {
        let mut seen = BTreeSet::new();
        let mut todo = vec![role.to_owned()];
        while let Some(r) = todo.pop() {
            if r == target {
                return true;
            }
            if seen.insert(r.clone()) {
                if let Some(parents) = self.member_of.get(&r) {
                    todo.extend(parents.iter().cloned());
                }
            }
        }
        false
    }
}

/// What `pgward policy grants` prints and `--apply` runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantPlan {
    /// The statements that bring the database to the policy, in order.
    pub statements: Vec<String>,
    /// What the plan cannot do and why (each also a comment in [`GrantPlan::script`]).
    pub notes: Vec<String>,
    /// The login the plan was computed for (the one that runs it).
    pub applier: String,
}

impl GrantPlan {
    /// The plan as a SQL script: notes as comments, statements in one transaction.
    pub fn script(&self, policy_version: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "-- pgward policy grants: policy version {policy_version:016x}, to be run as {}",
            crate::analyze::quote(&self.applier)
        );
        for n in &self.notes {
            let _ = writeln!(out, "-- note: {}", n.replace('\n', " "));
        }
        if self.statements.is_empty() {
            let _ = writeln!(
                out,
                "-- nothing to change: the database holds what the policy grants"
            );
            return out;
        }
        let _ = writeln!(out, "BEGIN;");
        for s in &self.statements {
            let _ = writeln!(out, "{s};");
        }
        let _ = writeln!(out, "COMMIT;");
        out
    }
}

/// `"name"` with `"` doubled.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn grantee(name: &str) -> String {
    if name == "PUBLIC" {
        "PUBLIC".to_owned()
    } else {
        ident(name)
    }
}

fn target(key: &Key) -> String {
    match key.class {
        Class::Database => format!("DATABASE {}", ident(&key.name)),
        Class::Schema => format!("SCHEMA {}", ident(&key.schema)),
        Class::Table => format!("TABLE {}.{}", ident(&key.schema), ident(&key.name)),
        Class::Sequence => format!("SEQUENCE {}.{}", ident(&key.schema), ident(&key.name)),
        // ROUTINE covers functions, procedures and aggregates (PostgreSQL 11+).
        Class::Function => format!(
            "ROUTINE {}.{}({})",
            ident(&key.schema),
            ident(&key.name),
            key.args
        ),
    }
}

fn describe(key: &Key) -> String {
    match key.class {
        Class::Database => format!("database {}", key.name),
        Class::Schema => format!("schema {}", key.schema),
        Class::Function => format!("function {}.{}({})", key.schema, key.name, key.args),
        _ => format!("{}.{}", key.schema, key.name),
    }
}

/// The privileges pgward manages on each class (others, such as REFERENCES, TRIGGER,
/// TEMPORARY and CONNECT, are left as they are).
fn managed(class: Class) -> &'static [&'static str] {
    match class {
        Class::Database => &["CREATE"],
        Class::Schema => &["USAGE", "CREATE"],
        Class::Table => &["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"],
        Class::Sequence => &["SELECT", "UPDATE", "USAGE"],
        Class::Function => &["EXECUTE"],
    }
}

/// Privileges PUBLIC keeps whatever the roles may do: schema USAGE alone reads no data.
fn public_untouched(class: Class, privilege: &str) -> bool {
    matches!(class, Class::Database) || (class == Class::Schema && privilege == "USAGE")
}

impl Policy {
    /// The upstream roles the policy names, each with the policy roles that run as it.
    fn walled_roles(&self) -> BTreeMap<&str, Vec<&Role>> {
        let mut out: BTreeMap<&str, Vec<&Role>> = BTreeMap::new();
        for r in &self.roles {
            if let Some(u) = r.upstream_role.as_deref() {
                out.entry(u).or_default().push(r);
            }
        }
        out
    }

    /// The plan that gives each `upstream_role` exactly the privileges its policy roles
    /// allow, from the server's answer to [`GrantsQuery::SQL`]. `keep_public`: leave PUBLIC's
    /// privileges alone (the wall then also holds whatever PUBLIC may do).
    pub fn pg_grants(
        &self,
        rows: &[Vec<Option<String>>],
        keep_public: bool,
    ) -> Result<GrantPlan, String> {
        let server = Server::from_rows(rows)?;
        let walled = self.walled_roles();
        let mut plan = GrantPlan {
            applier: server.me.clone(),
            ..GrantPlan::default()
        };
        let me_super = server.is_superuser(&server.me);
        if walled.is_empty() {
            plan.notes.push(
                "no policy role names an upstream_role: every session runs as pgward's own login"
                    .into(),
            );
            return Ok(plan);
        }

        // The roles themselves: they must exist, hold no attribute that outranks privileges,
        // and be members of nothing (a member may SET ROLE to what it is a member of).
        for login in walled.keys() {
            match server.roles.get(*login) {
                None => {
                    plan.statements
                        .push(format!("CREATE ROLE {} NOLOGIN", ident(login)));
                    plan.notes.push(format!(
                        "role {login} does not exist and is created without a login; give it one (on Azure: pgaadauth_create_principal_with_oid, see docs/azure.md) and name its credential in [upstreams.role_logins]"
                    ));
                }
                Some(attrs) if !attrs.is_empty() => {
                    let no: Vec<String> = attrs.iter().map(|a| format!("NO{a}")).collect();
                    plan.statements
                        .push(format!("ALTER ROLE {} {}", ident(login), no.join(" ")));
                }
                Some(_) => {}
            }
            if let Some(parents) = server.member_of.get(*login) {
                for p in parents {
                    plan.statements
                        .push(format!("REVOKE {} FROM {}", ident(p), ident(login)));
                }
            }
        }

        // What each walled role should hold, object by object.
        let mut desired: BTreeMap<&Key, BTreeMap<&str, BTreeSet<&'static str>>> = BTreeMap::new();
        for key in server.objects.keys() {
            for (login, roles) in &walled {
                let privs = self.privileges_for(roles, key, &server);
                if !privs.is_empty() {
                    desired.entry(key).or_default().insert(login, privs);
                }
            }
        }
        // USAGE on every schema a role holds something in.
        let mut schema_usage: BTreeSet<(&str, String)> = BTreeSet::new();
        for (key, per_login) in &desired {
            if matches!(key.class, Class::Table | Class::Sequence | Class::Function) {
                for login in per_login.keys() {
                    schema_usage.insert((login, key.schema.clone()));
                }
            }
        }
        for (key, _) in server
            .objects
            .iter()
            .filter(|(k, _)| k.class == Class::Schema)
        {
            for login in walled.keys() {
                if schema_usage.contains(&(*login, key.schema.clone())) {
                    desired
                        .entry(key)
                        .or_default()
                        .entry(login)
                        .or_default()
                        .insert("USAGE");
                }
            }
        }

        for (key, obj) in &server.objects {
            // Built-in functions: only the dangerous ones are the wall's business.
            if key.class == Class::Function
                && key.schema == "pg_catalog"
                && !self
                    .dangerous
                    .iter()
                    .any(|p| function_matches(p, &[(key.schema.clone(), key.name.clone())]))
            {
                continue;
            }
            let can_change = me_super || server.has_role(&server.me, &obj.owner);
            let mut changes: Vec<String> = Vec::new();
            let empty = BTreeMap::new();
            let want = desired.get(key).unwrap_or(&empty);
            for login in walled.keys() {
                if *login == obj.owner {
                    plan.notes.push(format!(
                        "{login} owns {}, so it holds every privilege on it whatever the policy says",
                        describe(key)
                    ));
                    continue;
                }
                let none = BTreeSet::new();
                let w = want.get(login).unwrap_or(&none);
                for p in managed(key.class) {
                    let has = obj.held.contains(&((*login).to_owned(), (*p).to_owned()));
                    if w.contains(p) && !has {
                        changes.push(format!("GRANT {p} ON {} TO {}", target(key), ident(login)));
                    } else if !w.contains(p) && has {
                        changes.push(format!(
                            "REVOKE {p} ON {} FROM {}",
                            target(key),
                            ident(login)
                        ));
                    }
                }
            }
            if !keep_public {
                for p in managed(key.class) {
                    if public_untouched(key.class, p)
                        || !obj.held.contains(&("PUBLIC".to_owned(), (*p).to_owned()))
                    {
                        continue;
                    }
                    let everyone = walled
                        .keys()
                        .all(|l| *l == obj.owner || want.get(l).is_some_and(|w| w.contains(p)));
                    if everyone {
                        continue;
                    }
                    changes.push(format!("REVOKE {p} ON {} FROM PUBLIC", target(key)));
                    // pgward's own login keeps what it had through PUBLIC.
                    let own = server.me.as_str();
                    if !me_super
                        && own != obj.owner
                        && !obj.held.contains(&(own.to_owned(), (*p).to_owned()))
                    {
                        changes.push(format!("GRANT {p} ON {} TO {}", target(key), grantee(own)));
                    }
                }
            }
            if changes.is_empty() {
                continue;
            }
            if can_change {
                plan.statements.extend(changes);
            } else {
                plan.notes.push(format!(
                    "{} cannot change privileges on {} (owned by {}): {} change(s) left out",
                    server.me,
                    describe(key),
                    obj.owner,
                    changes.len()
                ));
            }
        }
        Ok(plan)
    }

    /// The managed privileges `roles` (all running as `login`) should hold on one object.
    fn privileges_for(
        &self,
        roles: &[&Role],
        key: &Key,
        server: &Server,
    ) -> BTreeSet<&'static str> {
        let mut out = BTreeSet::new();
        let rel = Resolved::Rel(key.schema.clone(), key.name.clone());
        match key.class {
            Class::Table => {
                for (action, p) in [
                    (Action::Select, "SELECT"),
                    (Action::Insert, "INSERT"),
                    (Action::Update, "UPDATE"),
                    (Action::Delete, "DELETE"),
                    (Action::Truncate, "TRUNCATE"),
                ] {
                    if allows(roles, action, &rel) {
                        out.insert(p);
                    }
                }
            }
            Class::Sequence => {
                if allows(roles, Action::Select, &rel) {
                    out.insert("SELECT");
                }
                if allows(roles, Action::Update, &rel) {
                    out.insert("UPDATE");
                }
                // A table's defaults call nextval() on it: writing the table needs USAGE.
                let feeds_writable = server.seq_deps.iter().any(|((ts, tn), seqs)| {
                    seqs.contains(&(key.schema.clone(), key.name.clone()))
                        && [Action::Insert, Action::Update]
                            .iter()
                            .any(|a| allows(roles, *a, &Resolved::Rel(ts.clone(), tn.clone())))
                });
                if feeds_writable {
                    out.insert("USAGE");
                }
            }
            Class::Function => {
                if self.function_allowed(roles, &key.schema, &key.name) {
                    out.insert("EXECUTE");
                }
            }
            Class::Schema => {
                if create_in_schema(roles, &key.schema) {
                    out.insert("CREATE");
                    out.insert("USAGE");
                }
            }
            Class::Database => {
                let schema_exists = |s: &str| {
                    server
                        .objects
                        .keys()
                        .any(|k| k.class == Class::Schema && k.schema == s)
                };
                if create_schemas(roles, &schema_exists) {
                    out.insert("CREATE");
                }
            }
        }
        out
    }

    /// Whether a function may be called by these roles, as the first wall decides it for a
    /// call that names it: dangerous ones only by a rule naming them.
    fn function_allowed(&self, roles: &[&Role], schema: &str, name: &str) -> bool {
        let cands = [(schema.to_owned(), name.to_owned())];
        let obj = Resolved::Rel(schema.to_owned(), name.to_owned());
        let dangerous = self.dangerous.iter().any(|p| function_matches(p, &cands));
        roles.iter().any(|r| {
            let denied = r.deny.iter().any(|rule| {
                rule.functions.iter().any(|p| function_matches(p, &cands))
                    || (rule.has(Action::Execute)
                        && rule
                            .objects
                            .iter()
                            .any(|p| object_matches(p, &obj, true, false)))
            });
            if denied {
                return false;
            }
            r.allow.iter().any(|rule| {
                let named = rule.functions.iter().any(|p| {
                    (!dangerous || !matches!(&p.parts, Some((_, n)) if n.is_star()))
                        && function_matches(p, &cands)
                });
                named
                    || (!dangerous
                        && rule.has(Action::Execute)
                        && rule
                            .objects
                            .iter()
                            .any(|p| object_matches(p, &obj, false, false)))
            })
        })
    }
}

/// Whether one of `roles` allows `action` on `object` without denying it itself.
fn allows(roles: &[&Role], action: Action, object: &Resolved) -> bool {
    roles.iter().any(|r| {
        let denied = r.deny.iter().any(|rule| {
            rule.has(action)
                && rule
                    .objects
                    .iter()
                    .any(|p| object_matches(p, object, true, false))
        });
        !denied
            && r.allow.iter().any(|rule| {
                rule.has(action)
                    && rule
                        .objects
                        .iter()
                        .any(|p| object_matches(p, object, false, false))
            })
    })
}

/// Whether some name in `schema` may be created (CREATE on the schema; pgward's own check
/// still decides which names).
fn create_in_schema(roles: &[&Role], schema: &str) -> bool {
    let covers = |p: &Pattern, deny: bool| match &p.parts {
        None => true,
        Some((Some(s), n)) => s.matches(schema) && (!deny || n.is_star()),
        Some((None, _)) => false,
    };
    roles.iter().any(|r| {
        let denied = r
            .deny
            .iter()
            .any(|rule| rule.has(Action::Create) && rule.objects.iter().any(|p| covers(p, true)));
        !denied
            && r.allow.iter().any(|rule| {
                rule.has(Action::Create) && rule.objects.iter().any(|p| covers(p, false))
            })
    })
}

/// Whether a new schema may be created (CREATE on the database): a create rule on
/// `name.*` for a schema that does not exist yet, or on any schema.
fn create_schemas(roles: &[&Role], schema_exists: &dyn Fn(&str) -> bool) -> bool {
    roles.iter().any(|r| {
        r.allow.iter().any(|rule| {
            rule.has(Action::Create)
                && rule.objects.iter().any(|p| match &p.parts {
                    None => true,
                    Some((Some(Part::Literal(s)), n)) => n.is_star() && !schema_exists(s),
                    Some((Some(Part::Glob(_)), n)) => n.is_star(),
                    Some((None, _)) => false,
                })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of the grants query, one per line, columns separated by `|` (empty = NULL).
    fn rows(text: &str) -> Vec<Vec<Option<String>>> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split('|')
                    .map(|c| (!c.is_empty()).then(|| c.to_owned()))
                    .collect()
            })
            .collect()
    }

    fn policy() -> Policy {
        Policy::from_toml(
            r#"
            [[roles]]
            name = "analyst"
            members = { users = ["alice@contoso.com"] }
            upstream_role = "pgw_analyst"
            allow = [ { actions = ["select"], objects = ["public.*"] },
                      { functions = ["public.report"] } ]
            deny = [ { objects = ["public.salaries"] } ]

            [[roles]]
            name = "writer"
            members = { users = ["dave@contoso.com"] }
            upstream_role = "pgw_writer"
            allow = [ { actions = ["select", "insert", "update", "delete"], objects = ["public.orders"] } ]
            "#,
        )
        .unwrap()
    }

    const SERVER: &str = "
        me||pgward|||||
        role||pgward||SUPERUSER|||
        role||pgw_analyst|||||
        role||pgw_writer||CREATEDB|||
        member||pg_read_all_data||||pgw_analyst|
        schema|public||||pg_database_owner|PUBLIC|USAGE
        rel|public|orders||r|pgward|pgward|SELECT
        rel|public|orders||r|pgward|pgw_analyst|DELETE
        rel|public|salaries||r|pgward||
        rel|public|orders_id_seq||S|pgward||
        seqdep|public|orders|public|orders_id_seq|||
        fn|public|report||f|pgward|PUBLIC|EXECUTE
        fn|public|other|x integer|f|pgward|PUBLIC|EXECUTE
        fn|pg_catalog|set_config|text, text, boolean|f|postgres|PUBLIC|EXECUTE
        fn|pg_catalog|lower|text|f|postgres|PUBLIC|EXECUTE";

    fn server() -> Vec<Vec<Option<String>>> {
        rows(SERVER)
    }

    #[test]
    fn plan_grants_what_the_policy_allows_and_revokes_the_rest() {
        let plan = policy().pg_grants(&server(), false).unwrap();
        let s = plan.statements.join("\n");
        for want in [
            r#"ALTER ROLE "pgw_writer" NOCREATEDB"#,
            r#"REVOKE "pg_read_all_data" FROM "pgw_analyst""#,
            r#"GRANT SELECT ON TABLE "public"."orders" TO "pgw_analyst""#,
            r#"REVOKE DELETE ON TABLE "public"."orders" FROM "pgw_analyst""#,
            r#"GRANT INSERT ON TABLE "public"."orders" TO "pgw_writer""#,
            r#"GRANT USAGE ON SEQUENCE "public"."orders_id_seq" TO "pgw_writer""#,
            r#"GRANT SELECT ON SEQUENCE "public"."orders_id_seq" TO "pgw_analyst""#,
            r#"GRANT USAGE ON SCHEMA "public" TO "pgw_analyst""#,
            r#"REVOKE EXECUTE ON ROUTINE "public"."report"() FROM PUBLIC"#,
            r#"GRANT EXECUTE ON ROUTINE "public"."report"() TO "pgw_analyst""#,
            r#"REVOKE EXECUTE ON ROUTINE "public"."other"(x integer) FROM PUBLIC"#,
            r#"REVOKE EXECUTE ON ROUTINE "pg_catalog"."set_config"(text, text, boolean) FROM PUBLIC"#,
        ] {
            assert!(s.contains(want), "missing {want} in\n{s}");
        }
        // The denied table and an ordinary built-in are left alone.
        assert!(!s.contains("salaries\" TO"), "{s}");
        assert!(!s.contains("lower"), "{s}");
        // Schema USAGE stays with PUBLIC.
        assert!(
            !s.contains(r#"USAGE ON SCHEMA "public" FROM PUBLIC"#),
            "{s}"
        );
        let script = plan.script(7);
        assert!(script.starts_with("-- pgward policy grants"), "{script}");
        assert!(
            script.contains("BEGIN;\n") && script.ends_with("COMMIT;\n"),
            "{script}"
        );
    }

    #[test]
    fn a_converged_database_needs_nothing() {
        let rows = rows(
            "me||pgward|||||
             role||pgward||SUPERUSER|||
             role||pgw_analyst|||||
             role||pgw_writer|||||
             rel|public|orders||r|pgward|pgw_analyst|SELECT
             rel|public|orders||r|pgward|pgw_writer|SELECT
             rel|public|orders||r|pgward|pgw_writer|INSERT
             rel|public|orders||r|pgward|pgw_writer|UPDATE
             rel|public|orders||r|pgward|pgw_writer|DELETE
             schema|public||||pgward|pgw_analyst|USAGE
             schema|public||||pgward|pgw_writer|USAGE",
        );
        let plan = policy().pg_grants(&rows, false).unwrap();
        assert!(plan.statements.is_empty(), "{:?}", plan.statements);
        assert!(plan.script(1).contains("nothing to change"));
    }

    #[test]
    fn objects_the_applier_cannot_change_are_reported_not_planned() {
        let rows = rows(&SERVER.replace("role||pgward||SUPERUSER", "role||pgward||CREATEROLE"));
        let plan = policy().pg_grants(&rows, false).unwrap();
        let s = plan.statements.join("\n");
        assert!(!s.contains("set_config"), "{s}");
        assert!(
            plan.notes
                .iter()
                .any(|n| n.contains("set_config") && n.contains("postgres")),
            "{:?}",
            plan.notes
        );
        // pgward's own login owns public.other, so revoking PUBLIC leaves it its rights.
        assert!(
            s.contains(r#"REVOKE EXECUTE ON ROUTINE "public"."other"(x integer) FROM PUBLIC"#),
            "{s}"
        );
        assert!(!s.contains(r#"TO "pgward""#), "{s}");
    }

    #[test]
    fn keep_public_leaves_public_alone() {
        let plan = policy().pg_grants(&server(), true).unwrap();
        assert!(!plan.statements.iter().any(|s| s.contains("FROM PUBLIC")));
    }

    #[test]
    fn missing_roles_are_created_without_login_and_noted() {
        let rows: Vec<_> = server()
            .into_iter()
            .filter(|r| r[2].as_deref() != Some("pgw_writer"))
            .collect();
        let plan = policy().pg_grants(&rows, false).unwrap();
        assert!(plan
            .statements
            .contains(&r#"CREATE ROLE "pgw_writer" NOLOGIN"#.to_owned()));
        assert!(plan.notes.iter().any(|n| n.contains("pgw_writer")));
    }

    #[test]
    fn malformed_answers_are_errors() {
        assert!(policy().pg_grants(&[vec![None; 3]], false).is_err());
        assert!(policy().pg_grants(&[], false).is_err());
    }
}
