//! What one parsed T-SQL statement does, with names resolved as SQL Server resolves them.
//!
//! - Identifiers compare case-insensitively and without trailing spaces (`[Salaries ]` is
//!   `salaries`); names with non-ASCII characters are refused, because how they compare
//!   depends on the database's collation, which pgward does not know.
//! - Unqualified names are in `dbo`; `#temp` names in the pseudo-schema `tempdb`; three-part
//!   names must name the route's database; four-part names are refused.
//! - A CTE name hides a table only after its definition (T-SQL CTEs cannot refer forward)
//!   and only for one-part names.
//! - The target of `UPDATE x ... FROM` / `DELETE x FROM` is what `x` stands for in the FROM
//!   clause: an alias's table, or the tables under a derived table.
//! - Every object written is an access: `OUTPUT ... INTO`, `SELECT ... INTO`, MERGE
//!   targets, `REFERENCES` (alter on the referenced table), the table of `DROP INDEX`.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AlterTableOperation, ColumnDef, ColumnOption, Expr, FromTable, FunctionArg, FunctionArgExpr,
    GrantObjects, Ident, MergeAction, ObjectName, ObjectNamePart, ObjectType, OutputClause, Query,
    RaisErrorOption, SchemaName, Select, SelectInto, Set, SetSessionParamKind, Statement,
    TableConstraint, TableFactor, TableObject, TableWithJoins, Visit, Visitor,
};

use super::baseline::{self, SetOption};
use crate::analyze::{Access, Action, FunctionRef, ObjectRef, SettingChange, StatementAnalysis};

/// The schema unqualified names resolve to.
pub const DEFAULT_SCHEMA: &str = "dbo";

/// Table hints accepted in the old form without WITH (`FROM t (NOLOCK)`), which sqlparser
/// reads as arguments of a table-valued function.
const TABLE_HINTS: &[&str] = &[
    "holdlock",
    "nolock",
    "nowait",
    "paglock",
    "readcommitted",
    "readcommittedlock",
    "readpast",
    "readuncommitted",
    "repeatableread",
    "rowlock",
    "serializable",
    "snapshot",
    "tablock",
    "tablockx",
    "updlock",
    "xlock",
    "noexpand",
    "forceseek",
    "forcescan",
];

/// T-SQL reserved keywords ("Reserved keywords (Transact-SQL)", learn.microsoft.com). If
/// sqlparser read one of these, unquoted, as a name, SQL Server would not: it is a keyword
/// to the server, so the two readings of the statement differ.
const RESERVED: &[&str] = &[
    "add",
    "all",
    "alter",
    "and",
    "any",
    "as",
    "asc",
    "authorization",
    "backup",
    "begin",
    "between",
    "break",
    "browse",
    "bulk",
    "by",
    "cascade",
    "case",
    "check",
    "checkpoint",
    "close",
    "clustered",
    "collate",
    "column",
    "commit",
    "compute",
    "constraint",
    "continue",
    "create",
    "cross",
    "current",
    "cursor",
    "database",
    "dbcc",
    "deallocate",
    "declare",
    "default",
    "delete",
    "deny",
    "desc",
    "disk",
    "distinct",
    "distributed",
    "double",
    "drop",
    "dump",
    "else",
    "end",
    "errlvl",
    "escape",
    "except",
    "exec",
    "execute",
    "exists",
    "exit",
    "external",
    "fetch",
    "file",
    "fillfactor",
    "for",
    "foreign",
    "freetexttable",
    "from",
    "full",
    "function",
    "goto",
    "grant",
    "group",
    "having",
    "identity_insert",
    "identitycol",
    "if",
    "in",
    "index",
    "inner",
    "insert",
    "intersect",
    "into",
    "is",
    "join",
    "key",
    "kill",
    "like",
    "lineno",
    "load",
    "merge",
    "national",
    "nocheck",
    "nonclustered",
    "not",
    "null",
    "of",
    "off",
    "offsets",
    "on",
    "open",
    "opendatasource",
    "openquery",
    "openrowset",
    "openxml",
    "option",
    "or",
    "order",
    "outer",
    "over",
    "percent",
    "pivot",
    "plan",
    "precision",
    "primary",
    "print",
    "proc",
    "procedure",
    "raiserror",
    "read",
    "readtext",
    "reconfigure",
    "references",
    "replication",
    "restore",
    "restrict",
    "return",
    "revert",
    "revoke",
    "rowguidcol",
    "rule",
    "save",
    "schema",
    "securityaudit",
    "select",
    "semantickeyphrasetable",
    "semanticsimilaritydetailstable",
    "semanticsimilaritytable",
    "set",
    "setuser",
    "shutdown",
    "some",
    "statistics",
    "table",
    "tablesample",
    "then",
    "to",
    "top",
    "tran",
    "transaction",
    "trigger",
    "truncate",
    "tsequal",
    "union",
    "unique",
    "unpivot",
    "update",
    "updatetext",
    "use",
    "values",
    "varying",
    "view",
    "waitfor",
    "when",
    "where",
    "while",
    "with",
    "writetext",
];

/// Reserved words that are also the names of built-in functions or options, which
/// sqlparser keeps as names (`LEFT(...)`, `COALESCE(...)`, `WITH (HOLDLOCK)`).
const RESERVED_AS_NAMES: &[&str] = &[
    "coalesce",
    "convert",
    "current_date",
    "current_time",
    "current_timestamp",
    "current_user",
    // `VALUES (DEFAULT)`, `SET a = DEFAULT`: sqlparser keeps the keyword as a name.
    "default",
    "file",
    "holdlock",
    "identity",
    "left",
    "nullif",
    "public",
    "right",
    "rowcount",
    "session_user",
    "system_user",
    "textsize",
    "try_convert",
    "user",
];

/// Rowset functions whose first argument is a table they read.
const FULL_TEXT_ROWSETS: &[&str] = &[
    "containstable",
    "freetexttable",
    "semantickeyphrasetable",
    "semanticsimilaritydetailstable",
    "semanticsimilaritytable",
];

/// A query's CTEs and how many of them are in scope so far.
#[derive(Clone, Default)]
struct Frame {
    /// (address of the CTE's query, name).
    ctes: Vec<(usize, String)>,
    /// CTEs `..visible` are in scope: while CTE `i` is defined, `0..=i` (a CTE may refer
    /// to itself, recursively); in the query's body, all.
    visible: usize,
}

/// Collects what one statement (and the statements nested in it) does.
pub(crate) struct Walk<'a> {
    database: Option<&'a str>,
    pub(crate) out: StatementAnalysis,
    frames: Vec<Frame>,
    /// Table factors that are DML targets resolved by the statement itself.
    skip_factors: Vec<usize>,
    /// Identifiers that are EXEC parameter names (`@x = 1`).
    param_names: Vec<usize>,
    /// Whether a CTE was referred to (a change through a derived table over one is refused).
    cte_refs: bool,
    /// Index hints (`WITH (INDEX(ix))`), which sqlparser reads as calls of a function INDEX:
    /// the calls and the names `INDEX` in them.
    hint_calls: Vec<usize>,
    hint_names: Vec<usize>,
}

fn addr<T>(x: &T) -> usize {
    x as *const T as usize
}

/// An identifier as SQL Server compares it: lower case, trailing spaces ignored.
/// `None` when it has non-ASCII characters (the collation decides how those compare).
fn norm(i: &Ident) -> Option<String> {
    let v = i.value.trim_end_matches(' ');
    v.is_ascii().then(|| v.to_ascii_lowercase())
}

fn single_name(name: &ObjectName) -> Option<&Ident> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(i)] => Some(i),
        _ => None,
    }
}

/// The table factors of FROM items, joins and nested joins included.
fn factors<'t>(from: &[&'t TableWithJoins], out: &mut Vec<&'t TableFactor>) {
    for t in from {
        for f in std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)) {
            out.push(f);
            if let TableFactor::NestedJoin {
                table_with_joins, ..
            } = f
            {
                factors(&[table_with_joins], out);
            }
        }
    }
}

/// `FROM t (NOLOCK)`: sqlparser's function arguments that are really table hints.
fn hint_args(args: &[FunctionArg]) -> bool {
    !args.is_empty()
        && args.iter().all(|a| {
            matches!(a, FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(i)))
                if i.quote_style.is_none() && TABLE_HINTS.contains(&i.value.to_ascii_lowercase().as_str()))
        })
}

/// An `INTO` target written as an expression.
fn expr_name(e: &Expr) -> Option<ObjectName> {
    match e {
        Expr::Identifier(i) => Some(ObjectName::from(i.clone())),
        Expr::CompoundIdentifier(v) => Some(ObjectName::from(v.clone())),
        _ => None,
    }
}

impl<'a> Walk<'a> {
    pub(crate) fn new(database: Option<&'a str>) -> Self {
        Walk {
            database,
            out: StatementAnalysis::default(),
            frames: Vec::new(),
            skip_factors: Vec::new(),
            param_names: Vec::new(),
            cte_refs: false,
            hint_calls: Vec::new(),
            hint_names: Vec::new(),
        }
    }

    fn deny(&mut self, why: impl Into<String>) {
        self.out.not_understood.push(why.into());
    }

    /// `(schema, name)` of an object name, or `None` (recorded as not understood).
    fn qualify(&mut self, name: &ObjectName) -> Option<(String, String)> {
        let mut parts = Vec::with_capacity(name.0.len());
        for p in &name.0 {
            match p {
                ObjectNamePart::Identifier(i) => match norm(i) {
                    Some(n) => parts.push(n),
                    None => {
                        self.deny(format!(
                            "name with non-ASCII characters {name} (how it compares depends on the database's collation)"
                        ));
                        return None;
                    }
                },
                ObjectNamePart::Function(_) => {
                    self.deny(format!("name with a function part: {name}"));
                    return None;
                }
            }
        }
        let (schema, object) = match parts.as_slice() {
            [n] => (None, n.clone()),
            [s, n] => (Some(s.clone()), n.clone()),
            [db, s, n] => {
                let same = self.database.is_some_and(|d| d.eq_ignore_ascii_case(db));
                if !same {
                    self.deny(format!("cross-database name {name}"));
                    return None;
                }
                (Some(s.clone()), n.clone())
            }
            _ => {
                self.deny(format!("linked-server or malformed name {name}"));
                return None;
            }
        };
        if object.is_empty() {
            self.deny(format!("empty name {name}"));
            return None;
        }
        // Temporary tables live in tempdb whatever schema is written before them.
        let schema = match schema.filter(|s| !s.is_empty()) {
            _ if object.starts_with('#') => "tempdb".to_owned(),
            Some(s) => s,
            None => DEFAULT_SCHEMA.to_owned(),
        };
        Some((schema, object))
    }

    fn relation(schema: String, name: String) -> ObjectRef {
        ObjectRef::Relation {
            schema: Some(schema),
            name,
        }
    }

    fn access(&mut self, action: Action, name: &ObjectName) {
        if let Some((schema, name)) = self.qualify(name) {
            self.out.accesses.push(Access {
                action,
                object: Self::relation(schema, name),
            });
        }
    }

    /// Whether a one-part name is a CTE in scope here.
    fn is_cte(&self, name: &ObjectName) -> bool {
        let Some(n) = single_name(name).and_then(norm) else {
            return false;
        };
        self.frames.iter().any(|f| {
            f.ctes[..f.visible.min(f.ctes.len())]
                .iter()
                .any(|(_, c)| *c == n)
        })
    }

    /// The objects a DML target names: `name` resolved against the statement's FROM
    /// clause as SQL Server does (an alias first, then a table exposed under that name),
    /// else the table itself. Refused through a CTE.
    fn target_objects(&mut self, name: &ObjectName, from: &[&TableWithJoins]) -> Vec<ObjectRef> {
        let mut all = Vec::new();
        factors(from, &mut all);
        if let Some(key) = single_name(name).and_then(norm) {
            // An alias in FROM.
            for f in &all {
                let alias = match f {
                    TableFactor::Table { alias, .. }
                    | TableFactor::Derived { alias, .. }
                    | TableFactor::Function { alias, .. }
                    | TableFactor::NestedJoin { alias, .. } => alias.as_ref(),
                    _ => None,
                };
                if alias.and_then(|a| norm(&a.name)).as_deref() != Some(key.as_str()) {
                    continue;
                }
                return match f {
                    TableFactor::Table {
                        name: real, args, ..
                    } if args.as_ref().is_none_or(|a| hint_args(&a.args)) => {
                        let real = real.clone();
                        self.table_target(&real)
                    }
                    TableFactor::Derived { subquery, .. } => self.derived_tables(subquery),
                    other => {
                        self.deny(format!("a DML target that is {other}"));
                        Vec::new()
                    }
                };
            }
            // A table exposed under its own name (no alias).
            for f in &all {
                if let TableFactor::Table {
                    name: real,
                    alias: None,
                    args,
                    ..
                } = f
                {
                    let last = match real.0.last() {
                        Some(ObjectNamePart::Identifier(i)) => norm(i),
                        _ => None,
                    };
                    if last.as_deref() == Some(key.as_str())
                        && args.as_ref().is_none_or(|a| hint_args(&a.args))
                    {
                        let real = real.clone();
                        return self.table_target(&real);
                    }
                }
            }
        }
        self.table_target(name)
    }

    fn table_target(&mut self, name: &ObjectName) -> Vec<ObjectRef> {
        if self.is_cte(name) {
            self.deny(format!(
                "a change through the common table expression {name}"
            ));
            return Vec::new();
        }
        match self.qualify(name) {
            Some((s, n)) => vec![Self::relation(s, n)],
            None => Vec::new(),
        }
    }

    /// The tables a derived table reads: what an UPDATE or DELETE of it changes.
    fn derived_tables(&mut self, q: &Query) -> Vec<ObjectRef> {
        let mut w = Walk::new(self.database);
        w.frames = self.frames.clone();
        let _ = q.visit(&mut w);
        self.out.not_understood.append(&mut w.out.not_understood);
        // Which base table a change through a CTE or a function lands in is not visible here.
        if w.cte_refs || !w.out.functions.is_empty() {
            self.deny("a change through a derived table over a CTE or a function");
            return Vec::new();
        }
        let tables: Vec<ObjectRef> = w
            .out
            .accesses
            .into_iter()
            .filter(|a| a.action == Action::Select)
            .map(|a| a.object)
            .collect();
        if tables.is_empty() {
            self.deny("a change through a derived table with no table under it");
        }
        tables
    }

    fn write(&mut self, actions: &[Action], objects: &[ObjectRef]) {
        for o in objects {
            for a in actions {
                self.out.accesses.push(Access {
                    action: *a,
                    object: o.clone(),
                });
            }
        }
    }

    /// `OUTPUT ... INTO t` inserts into `t`.
    fn output(&mut self, o: Option<&OutputClause>) {
        if let Some(OutputClause::Output {
            into_table: Some(into),
            ..
        }) = o
        {
            self.write_into(into, &[Action::Insert]);
        }
        if let Some(OutputClause::Returning { .. }) = o {
            self.deny("RETURNING is not T-SQL");
        }
    }

    fn write_into(&mut self, into: &SelectInto, actions: &[Action]) {
        if into.targets.is_empty() {
            self.deny("INTO without a target");
        }
        for t in &into.targets {
            match expr_name(t) {
                Some(name) => {
                    let objects = self.table_target(&name);
                    self.write(actions, &objects);
                }
                None => self.deny(format!("INTO {t}")),
            }
        }
    }

    fn function(&mut self, name: &ObjectName) {
        let Some((schema, fname)) = self.qualify(name) else {
            return;
        };
        let unqualified = name.0.len() == 1;
        if ["sp_", "xp_", "fn_"].iter().any(|p| fname.starts_with(p)) {
            self.deny(format!("system routine {fname}"));
            return;
        }
        // Full-text rowset functions read the table named in their first argument.
        if unqualified && FULL_TEXT_ROWSETS.contains(&fname.as_str()) {
            self.deny(format!("{fname} reads a table named in its arguments"));
            return;
        }
        if unqualified && baseline::FUNCTIONS.contains(&fname.as_str()) {
            return;
        }
        if unqualified && fname.starts_with("open") {
            self.deny(format!("{fname} reads external data"));
            return;
        }
        self.out.functions.push(FunctionRef {
            schema: Some(schema),
            name: fname,
        });
    }

    /// `REFERENCES t` puts a constraint on `t`: alter on it.
    fn references_in_column(&mut self, c: &ColumnDef) {
        for o in &c.options {
            if let ColumnOption::ForeignKey(fk) = &o.option {
                let t = fk.foreign_table.clone();
                self.access(Action::Alter, &t);
            }
        }
    }

    fn references_in_constraint(&mut self, c: &TableConstraint) {
        if let TableConstraint::ForeignKey(fk) = c {
            let t = fk.foreign_table.clone();
            self.access(Action::Alter, &t);
        }
    }

    /// `INDEX(ix)`, `INDEX = ix`, `FORCESEEK(ix(col))` in a table's hints name indexes,
    /// not functions.
    fn index_hints(&mut self, hints: &[Expr]) {
        let is_index_word = |i: &Ident| {
            i.quote_style.is_none()
                && ["index", "forceseek"].contains(&i.value.to_ascii_lowercase().as_str())
        };
        for h in hints {
            match h {
                Expr::Function(f) => {
                    if let Some(i) = single_name(&f.name).filter(|i| is_index_word(i)) {
                        self.hint_calls.push(addr(h));
                        self.hint_names.push(addr(i));
                    }
                }
                Expr::BinaryOp { left, .. } => {
                    if let Expr::Identifier(i) = left.as_ref() {
                        if is_index_word(i) {
                            self.hint_names.push(addr(i));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn statement(&mut self, stmt: &Statement) {
        match stmt {
            Statement::Query(_) => {}
            Statement::Insert(i) => {
                match &i.table {
                    TableObject::TableName(n) => {
                        let objects = self.table_target(n);
                        self.write(&[Action::Insert], &objects);
                    }
                    other => self.deny(format!("INSERT into {other}")),
                }
                if i.on.is_some() || i.returning.is_some() || i.multi_table_insert_type.is_some() {
                    self.deny("INSERT with a clause that is not T-SQL");
                }
                self.output(i.output.as_ref());
            }
            Statement::Update(u) => {
                let mut from: Vec<&TableWithJoins> = Vec::new();
                if let Some(
                    sqlparser::ast::UpdateTableFromKind::BeforeSet(v)
                    | sqlparser::ast::UpdateTableFromKind::AfterSet(v),
                ) = &u.from
                {
                    from.extend(v);
                }
                match &u.table.relation {
                    f @ TableFactor::Table { name, args, .. }
                        if args.as_ref().is_none_or(|a| hint_args(&a.args)) =>
                    {
                        self.skip_factors.push(addr(f));
                        let objects = self.target_objects(name, &from);
                        self.write(&[Action::Select, Action::Update], &objects);
                    }
                    other => self.deny(format!("UPDATE of {other}")),
                }
                if !u.table.joins.is_empty() {
                    self.deny("UPDATE of a join");
                }
                if u.returning.is_some() || u.limit.is_some() || !u.order_by.is_empty() {
                    self.deny("UPDATE with a clause that is not T-SQL");
                }
                self.output(u.output.as_ref());
            }
            Statement::Delete(d) => {
                let list = match &d.from {
                    FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => v,
                };
                let mut from: Vec<&TableWithJoins> = list.iter().collect();
                if let Some(u) = &d.using {
                    from.extend(u);
                }
                if d.tables.is_empty() {
                    // DELETE [FROM] t: the one table named is the target.
                    match list.as_slice() {
                        [t] if t.joins.is_empty() => match &t.relation {
                            f @ TableFactor::Table { name, args, .. }
                                if args.as_ref().is_none_or(|a| hint_args(&a.args)) =>
                            {
                                self.skip_factors.push(addr(f));
                                let objects = self.table_target(name);
                                self.write(&[Action::Select, Action::Delete], &objects);
                            }
                            other => self.deny(format!("DELETE from {other}")),
                        },
                        _ => self.deny("DELETE from several tables"),
                    }
                } else {
                    for n in &d.tables {
                        let objects = self.target_objects(n, &from);
                        self.write(&[Action::Select, Action::Delete], &objects);
                    }
                }
                if d.returning.is_some() || d.limit.is_some() || !d.order_by.is_empty() {
                    self.deny("DELETE with a clause that is not T-SQL");
                }
                self.output(d.output.as_ref());
            }
            Statement::Merge(m) => {
                let TableFactor::Table {
                    name, args: None, ..
                } = &m.table
                else {
                    self.deny("MERGE into something other than a table");
                    return;
                };
                let objects = self.table_target(name);
                for c in &m.clauses {
                    let action = match &c.action {
                        MergeAction::Insert(_) => Action::Insert,
                        MergeAction::Update { .. } => Action::Update,
                        MergeAction::Delete { .. } => Action::Delete,
                        MergeAction::DoNothing { .. } => continue,
                    };
                    self.write(&[action], &objects);
                }
                if m.clauses.is_empty() {
                    self.deny("MERGE without clauses");
                }
                self.output(m.output.as_ref());
            }
            Statement::CreateTable(c) => {
                self.access(Action::Create, &c.name);
                for col in &c.columns {
                    self.references_in_column(col);
                }
                for con in &c.constraints {
                    self.references_in_constraint(con);
                }
            }
            Statement::CreateView(v) => {
                self.access(Action::Create, &v.name);
                // CREATE OR ALTER changes the view when it exists.
                if v.or_alter || v.or_replace {
                    self.access(Action::Alter, &v.name);
                }
            }
            Statement::AlterView { name, .. } => self.access(Action::Alter, name),
            Statement::CreateIndex(i) => self.access(Action::Alter, &i.table_name),
            Statement::CreateSchema { schema_name, .. } => match schema_name {
                SchemaName::Simple(n) | SchemaName::NamedAuthorization(n, _) => {
                    match n.0.as_slice() {
                        [ObjectNamePart::Identifier(i)] => match norm(i) {
                            Some(s) => self.out.accesses.push(Access {
                                action: Action::Create,
                                object: ObjectRef::Schema(s),
                            }),
                            None => self.deny(format!("schema name {n}")),
                        },
                        _ => self.deny(format!("schema name {n}")),
                    }
                }
                SchemaName::UnnamedAuthorization(_) => self.deny("CREATE SCHEMA AUTHORIZATION"),
            },
            Statement::AlterTable(a) => {
                self.access(Action::Alter, &a.name);
                for op in &a.operations {
                    match op {
                        AlterTableOperation::AddConstraint { constraint, .. } => {
                            self.references_in_constraint(constraint)
                        }
                        AlterTableOperation::AddColumn { column_def, .. } => {
                            self.references_in_column(column_def)
                        }
                        _ => {}
                    }
                }
            }
            Statement::Drop {
                object_type,
                names,
                table,
                ..
            } => match object_type {
                ObjectType::Table | ObjectType::View | ObjectType::Sequence => {
                    for n in names {
                        self.access(Action::Drop, n);
                    }
                }
                // An index belongs to its table: `DROP INDEX ix ON t`, or the older
                // `DROP INDEX t.ix` / `DROP INDEX s.t.ix`.
                ObjectType::Index => {
                    for n in names {
                        let t = match (table, n.0.len()) {
                            (Some(t), 1) => t.clone(),
                            (None, 2 | 3) => ObjectName(n.0[..n.0.len() - 1].to_vec()),
                            _ => {
                                self.deny(format!("DROP INDEX {n}"));
                                continue;
                            }
                        };
                        self.access(Action::Alter, &t);
                        self.access(Action::Drop, &t);
                    }
                }
                ObjectType::Schema => {
                    for n in names {
                        match single_name(n).and_then(norm) {
                            Some(s) => self.out.accesses.push(Access {
                                action: Action::Drop,
                                object: ObjectRef::Schema(s),
                            }),
                            None => self.deny(format!("schema name {n}")),
                        }
                    }
                }
                other => self.deny(format!("DROP {other}")),
            },
            Statement::Truncate(t) => {
                for n in &t.table_names {
                    self.access(Action::Truncate, &n.name);
                }
            }
            Statement::Grant(g) => self.grant(g.objects.as_ref()),
            Statement::Revoke(r) => self.grant(r.objects.as_ref()),
            Statement::Deny(d) => self.grant(Some(&d.objects)),
            // BEGIN ... END around statements (visited on their own); transaction
            // statements are the relay's business.
            Statement::StartTransaction { exception, .. } => {
                if exception.is_some() {
                    self.deny("BEGIN ... EXCEPTION is not T-SQL");
                }
            }
            Statement::Commit { .. } | Statement::Rollback { .. } | Statement::Savepoint { .. } => {
            }
            Statement::Set(s) => self.set(s),
            Statement::Print(_) | Statement::Throw(_) => {}
            Statement::RaisError { options, .. } => {
                if options.contains(&RaisErrorOption::Log) {
                    self.deny("RAISERROR WITH LOG writes the server's error log");
                }
            }
            Statement::Execute {
                name,
                parameters,
                immediate,
                into,
                using,
                output,
                ..
            } => match name {
                Some(n) if !*immediate && into.is_empty() && using.is_empty() && !*output => {
                    for p in parameters {
                        if let Expr::BinaryOp { left, .. } = p {
                            if let Expr::Identifier(i) = left.as_ref() {
                                self.param_names.push(addr(i));
                            }
                        }
                    }
                    let n = n.clone();
                    if let Some((schema, pname)) = self.qualify(&n) {
                        if ["sp_", "xp_", "@"].iter().any(|p| pname.starts_with(p)) {
                            self.deny(format!("system or dynamic procedure {pname}"));
                        } else {
                            self.out.accesses.push(Access {
                                action: Action::Execute,
                                object: Self::relation(schema, pname),
                            });
                        }
                    }
                }
                _ => self.deny("EXECUTE other than of a named procedure"),
            },
            other => {
                let text = other.to_string();
                let word = text.split_whitespace().next().unwrap_or("").to_uppercase();
                self.deny(format!(
                    "{word} statements are not supported through pgward"
                ));
            }
        }
    }

    fn grant(&mut self, objects: Option<&GrantObjects>) {
        match objects {
            Some(GrantObjects::Tables(names)) => {
                for n in names {
                    self.access(Action::Grant, n);
                }
            }
            _ => self.out.accesses.push(Access {
                action: Action::Grant,
                object: ObjectRef::All,
            }),
        }
    }

    fn set_option(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        match baseline::set_option(&name, value) {
            SetOption::Baseline => {}
            SetOption::Refused(why) => self.deny(format!("SET {name}: {why}")),
            SetOption::Rule => self.out.settings.push(SettingChange::Set {
                name,
                value: Some(vec![value.to_ascii_lowercase()]),
            }),
        }
    }

    fn set(&mut self, s: &Set) {
        match s {
            Set::SetSessionParam(SetSessionParamKind::Generic(g)) => {
                for n in &g.names {
                    self.set_option(n, &g.value);
                }
            }
            Set::SetSessionParam(SetSessionParamKind::IdentityInsert(i)) => {
                let obj = i.obj.clone();
                self.access(Action::Alter, &obj);
            }
            Set::SetSessionParam(SetSessionParamKind::Statistics(_)) => {
                self.set_option("statistics", "on")
            }
            Set::SetSessionParam(other) => self.deny(format!("SET {other}")),
            Set::SetTransaction { session: false, .. } => {
                self.set_option("transaction_isolation", "")
            }
            other => self.deny(format!("{other}")),
        }
    }
}

impl Visitor for Walk<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        self.statement(stmt);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        let me = addr(q);
        if let Some(top) = self.frames.last_mut() {
            if let Some(i) = top.ctes.iter().position(|(p, _)| *p == me) {
                top.visible = i + 1;
            }
        }
        let mut frame = Frame::default();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                match norm(&cte.alias.name) {
                    Some(n) => frame.ctes.push((addr(cte.query.as_ref()), n)),
                    None => self.deny(format!("CTE name {}", cte.alias.name)),
                }
            }
        }
        self.frames.push(frame);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        self.frames.pop();
        let me = addr(q);
        if let Some(top) = self.frames.last_mut() {
            if let Some(i) = top.ctes.iter().position(|(p, _)| *p == me) {
                top.visible = i + 1;
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        // SELECT ... INTO creates and fills a table.
        if let Some(into) = &s.into {
            self.write_into(into, &[Action::Create, Action::Insert]);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table { with_hints, .. } = f {
            self.index_hints(with_hints);
        }
        if self.skip_factors.contains(&addr(f)) {
            return ControlFlow::Continue(());
        }
        match f {
            TableFactor::Table { name, args, .. } => match args {
                Some(a) if !hint_args(&a.args) => {
                    // A table-valued function call.
                    let name = name.clone();
                    self.function(&name);
                }
                _ if self.is_cte(name) => self.cte_refs = true,
                _ => {
                    let name = name.clone();
                    self.access(Action::Select, &name);
                }
            },
            TableFactor::Function { name, .. } => {
                let name = name.clone();
                self.function(&name);
            }
            TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. }
            | TableFactor::TableFunction { .. }
            | TableFactor::OpenJsonTable { .. }
            | TableFactor::Pivot { .. }
            | TableFactor::Unpivot { .. } => {}
            other => self.deny(format!("table source {other}")),
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.hint_calls.contains(&addr(e)) {
            return ControlFlow::Continue(());
        }
        if let Expr::Function(f) = e {
            let name = f.name.clone();
            self.function(&name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_ident(&mut self, i: &Ident) -> ControlFlow<()> {
        if i.quote_style.is_some() {
            return ControlFlow::Continue(());
        }
        let v = i.value.to_ascii_lowercase();
        if self.hint_names.contains(&addr(i)) {
            return ControlFlow::Continue(());
        }
        if v.starts_with('@') && !v.starts_with("@@") && !self.param_names.contains(&addr(i)) {
            // Nothing declares variables in a batch pgward forwards.
            self.deny(format!("variable {}", i.value));
        } else if RESERVED.contains(&v.as_str()) && !RESERVED_AS_NAMES.contains(&v.as_str()) {
            self.deny(format!(
                "the reserved word {} read as a name (SQL Server reads it as a keyword)",
                i.value
            ));
        }
        ControlFlow::Continue(())
    }
}
