//! T-SQL analysis for `kind = "azure-sql"` upstreams.
//!
//! Batches are parsed with sqlparser's `MsSqlDialect` into the same model the PostgreSQL
//! analyser produces ([`StatementAnalysis`]: actions on objects, functions called, settings),
//! so one [`Policy`] decides both kinds of upstream. Name rules (docs/azure-sql.md):
//! - every name is lower-cased (bracketed and quoted ones too): SQL Server's default
//!   collation compares identifiers case-insensitively, so `[Salaries]` is `salaries`;
//! - unqualified names resolve to `dbo` (the default schema of an Entra-mapped user);
//!   `#temp` tables to the pseudo-schema `tempdb`;
//! - three-part names are accepted only when they name the route's own database;
//!   four-part (linked server) names are never.
//!
//! Fail closed: anything the walk does not recognise is "not understood" and denied —
//! dynamic SQL (`EXEC('...')`, `EXEC @var`, `sp_executesql`), system procedures (`sp_*`,
//! `xp_*`), `OPENROWSET`/`OPENQUERY`/`OPENDATASOURCE`, `BULK INSERT`, `DBCC`, procedural
//! batches (variables, IF/WHILE, CREATE PROCEDURE/FUNCTION/TRIGGER), `USE`, `GO` and text
//! the parser rejects. A token scan runs before the parse, so these words are refused even
//! where the parser would have accepted them in some other shape.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    FromTable, GrantObjects, MergeAction, ObjectName, ObjectNamePart, ObjectType, Query,
    SchemaName, Set, SetExpr, SetSessionParamKind, Statement, TableFactor, TableObject,
    TableWithJoins, Visit, Visitor,
};
use sqlparser::dialect::MsSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::analyze::{
    Access, Action, Analysis, AnalysisError, FunctionRef, ObjectRef, SettingChange,
    StatementAnalysis,
};
use crate::decide::{QueryDecision, RoleSet, SessionState, StatementDecision};
use crate::policy::Policy;

/// Statements longer than this are refused without parsing (same limit as PostgreSQL SQL).
const MAX_TSQL_LEN: usize = 1 << 20;

/// Deepest parenthesis nesting accepted (sqlparser recurses once per level).
const MAX_PARENS: usize = 200;

/// The schema unqualified names resolve to.
pub const DEFAULT_SCHEMA: &str = "dbo";

/// Words that end the analysis wherever they appear outside strings and comments.
const FORBIDDEN_WORDS: &[(&str, &str)] = &[
    ("openrowset", "OPENROWSET reads external data"),
    ("opendatasource", "OPENDATASOURCE reads external data"),
    ("openquery", "OPENQUERY runs SQL on a linked server"),
    ("openxml", "OPENXML needs sp_xml_preparedocument"),
    ("bulk", "BULK operations read server files"),
    ("dbcc", "DBCC commands"),
    ("go", "GO is a client-tool batch separator, not T-SQL"),
    ("sp_executesql", "dynamic SQL (sp_executesql)"),
    ("reconfigure", "RECONFIGURE"),
    ("shutdown", "SHUTDOWN"),
    ("kill", "KILL"),
    ("waitfor", "WAITFOR"),
    ("use", "USE changes the database"),
    ("declare", "procedural batches (DECLARE)"),
];

/// T-SQL built-in functions pgward treats as harmless (no rule needed), lower case.
/// Anything else called is a user function: it needs `execute` on it (or its name in a
/// rule's `functions`).
const BUILTIN_FUNCTIONS: &[&str] = &[
    "abs",
    "acos",
    "approx_count_distinct",
    "ascii",
    "asin",
    "atan",
    "atn2",
    "avg",
    "ceiling",
    "char",
    "charindex",
    "checksum",
    "choose",
    "coalesce",
    "concat",
    "concat_ws",
    "cos",
    "cot",
    "count",
    "count_big",
    "cume_dist",
    "current_timestamp",
    "current_user",
    "datalength",
    "dateadd",
    "datediff",
    "datediff_big",
    "datefromparts",
    "datename",
    "datepart",
    "datetime2fromparts",
    "datetimefromparts",
    "datetrunc",
    "day",
    "db_name",
    "degrees",
    "dense_rank",
    "difference",
    "eomonth",
    "exp",
    "first_value",
    "floor",
    "format",
    "getdate",
    "getutcdate",
    "greatest",
    "grouping",
    "grouping_id",
    "hashbytes",
    "iif",
    "isdate",
    "isjson",
    "isnull",
    "isnumeric",
    "json_array",
    "json_modify",
    "json_object",
    "json_query",
    "json_value",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "len",
    "log",
    "log10",
    "lower",
    "ltrim",
    "max",
    "min",
    "month",
    "nchar",
    "newid",
    "newsequentialid",
    "ntile",
    "nullif",
    "openjson",
    "original_login",
    "patindex",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pi",
    "power",
    "quotename",
    "radians",
    "rand",
    "rank",
    "replace",
    "replicate",
    "reverse",
    "right",
    "round",
    "row_number",
    "rtrim",
    "schema_name",
    "session_context",
    "session_user",
    "sign",
    "sin",
    "soundex",
    "space",
    "sqrt",
    "square",
    "stdev",
    "stdevp",
    "str",
    "string_agg",
    "string_escape",
    "string_split",
    "stuff",
    "substring",
    "sum",
    "suser_name",
    "suser_sname",
    "switchoffset",
    "sysdatetime",
    "sysdatetimeoffset",
    "system_user",
    "sysutcdatetime",
    "tan",
    "todatetimeoffset",
    "translate",
    "trim",
    "try_cast",
    "try_convert",
    "try_parse",
    "unicode",
    "upper",
    "user_name",
    "var",
    "varp",
    "year",
];

impl Policy {
    /// Analyses a T-SQL batch and decides it, as [`Policy::decide_query`] does for
    /// PostgreSQL SQL. `database` is the upstream database (three-part names must name it).
    /// Not cached: T-SQL decisions never share the PostgreSQL decision cache.
    pub fn decide_tsql(
        &self,
        roles: &RoleSet,
        sql: &str,
        session: &SessionState,
        database: Option<&str>,
    ) -> QueryDecision {
        let analysis = match analyze_tsql(sql, database) {
            Ok(a) => a,
            Err(e) => return self.not_analysed(e, false),
        };
        let mut statements = Vec::with_capacity(analysis.statements.len());
        for st in analysis.statements {
            let decision = self.decide(roles, &st, session);
            statements.push(StatementDecision {
                analysis: st,
                decision,
            });
        }
        let decision = crate::decide::overall_decision(&statements, "batch", "empty batch");
        QueryDecision {
            statements,
            decision,
            error: None,
            cacheable: false,
        }
    }
}

/// Analyses a T-SQL batch (one or more statements). `database` is the upstream database:
/// three-part names must name it.
pub fn analyze_tsql(sql: &str, database: Option<&str>) -> Result<Analysis, AnalysisError> {
    if sql.len() > MAX_TSQL_LEN {
        return Err(AnalysisError::TooLong {
            len: sql.len(),
            limit: MAX_TSQL_LEN,
        });
    }
    let dialect = MsSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize()
        .map_err(|e| AnalysisError::Parse(e.to_string()))?;
    let forbidden = scan_tokens(&tokens)?;
    let parsed = Parser::new(&dialect)
        .with_recursion_limit(MAX_PARENS)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| AnalysisError::Parse(e.to_string()))?;
    let single = parsed.len() == 1;
    let mut statements = Vec::with_capacity(parsed.len());
    for stmt in &parsed {
        let mut w = Walk::new(database);
        let _ = stmt.visit(&mut w);
        let mut out = w.out;
        out.kind = kind_of(stmt);
        // One statement: the client's own text; several: each re-rendered by the parser.
        out.sql = if single {
            sql.trim().to_owned()
        } else {
            stmt.to_string()
        };
        if let Some(why) = &forbidden {
            out.not_understood.push(why.clone());
        }
        out.accesses.sort();
        out.accesses.dedup();
        out.functions.sort();
        out.functions.dedup();
        statements.push(out);
    }
    if statements.is_empty() {
        if let Some(why) = forbidden {
            // Nothing parsed but a forbidden word was there: deny rather than run nothing.
            return Err(AnalysisError::Parse(why));
        }
    }
    Ok(Analysis { statements })
}

/// Looks at every word outside strings and comments; returns why the batch is refused.
fn scan_tokens(tokens: &[Token]) -> Result<Option<String>, AnalysisError> {
    let mut depth = 0usize;
    let words = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_)));
    let mut prev_exec = false;
    for t in words {
        match t {
            Token::LParen => {
                depth += 1;
                if depth > MAX_PARENS {
                    return Err(AnalysisError::TooComplex);
                }
            }
            Token::RParen => depth = depth.saturating_sub(1),
            _ => {}
        }
        if prev_exec {
            // EXEC ('...'), EXEC @sql, EXEC 'text': dynamic SQL.
            let dynamic = match t {
                Token::LParen | Token::SingleQuotedString(_) | Token::NationalStringLiteral(_) => {
                    true
                }
                Token::Word(w) => w.quote_style.is_none() && w.value.starts_with('@'),
                Token::Placeholder(_) => true,
                _ => false,
            };
            if dynamic {
                return Ok(Some("dynamic SQL (EXEC of a string or variable)".into()));
            }
        }
        prev_exec = false;
        if let Token::Word(w) = t {
            let v = w.value.to_ascii_lowercase();
            if w.quote_style.is_none() && (v == "exec" || v == "execute") {
                prev_exec = true;
            }
            if let Some((_, why)) = FORBIDDEN_WORDS.iter().find(|(word, _)| *word == v) {
                // `GO` and friends only as bare words; quoted identifiers are names.
                if w.quote_style.is_none() || v == "sp_executesql" {
                    return Ok(Some((*why).to_owned()));
                }
            }
            // Local variables only exist in procedural batches (`@@name` system values are
            // harmless reads).
            if w.quote_style.is_none() && v.starts_with('@') && !v.starts_with("@@") {
                return Ok(Some("procedural batches (variables)".into()));
            }
            if v.starts_with("xp_") {
                return Ok(Some(format!("extended stored procedure {v}")));
            }
        }
        if let Token::Placeholder(p) = t {
            if p.starts_with('@') && !p.starts_with("@@") {
                return Ok(Some("procedural batches (variables)".into()));
            }
        }
    }
    Ok(None)
}

fn kind_of(stmt: &Statement) -> &'static str {
    match stmt {
        Statement::Query(_) => "TSqlSelect",
        Statement::Insert(_) => "TSqlInsert",
        Statement::Update(_) => "TSqlUpdate",
        Statement::Delete(_) => "TSqlDelete",
        Statement::Merge(_) => "TSqlMerge",
        Statement::CreateTable(_) => "TSqlCreateTable",
        Statement::CreateView(_) => "TSqlCreateView",
        Statement::CreateIndex(_) => "TSqlCreateIndex",
        Statement::CreateSchema { .. } => "TSqlCreateSchema",
        Statement::AlterTable(_) => "TSqlAlterTable",
        Statement::Drop { .. } => "TSqlDrop",
        Statement::Truncate(_) => "TSqlTruncate",
        Statement::Grant(_) | Statement::Revoke(_) | Statement::Deny(_) => "TSqlGrant",
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. } => "TSqlTransaction",
        Statement::Set(_) => "TSqlSet",
        Statement::Execute { .. } => "TSqlExecute",
        _ => "TSqlOther",
    }
}

/// Collects what one statement (and the statements nested in it) does.
struct Walk<'a> {
    database: Option<&'a str>,
    out: StatementAnalysis,
    /// CTE names: a reference to one is not a table.
    ctes: HashSet<String>,
    /// DML targets written as an alias (`UPDATE o ... FROM dbo.orders o`): the target's
    /// own table factor names the alias, not a table.
    alias_targets: Vec<String>,
}

impl<'a> Walk<'a> {
    fn new(database: Option<&'a str>) -> Self {
        Walk {
            database,
            out: StatementAnalysis::default(),
            ctes: HashSet::new(),
            alias_targets: Vec::new(),
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
                ObjectNamePart::Identifier(i) => parts.push(i.value.to_lowercase()),
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
        let schema = match schema.filter(|s| !s.is_empty()) {
            Some(s) => s,
            None if object.starts_with('#') => "tempdb".to_owned(),
            None => DEFAULT_SCHEMA.to_owned(),
        };
        Some((schema, object))
    }

    fn is_cte(&self, name: &ObjectName) -> bool {
        match name.0.as_slice() {
            [ObjectNamePart::Identifier(i)] => self.ctes.contains(&i.value.to_lowercase()),
            _ => false,
        }
    }

    fn access(&mut self, action: Action, name: &ObjectName) {
        if let Some((schema, name)) = self.qualify(name) {
            self.out.accesses.push(Access {
                action,
                object: ObjectRef::Relation {
                    schema: Some(schema),
                    name,
                },
            });
        }
    }

    /// A DML target: a table, an alias of one in `from`, never a CTE.
    fn target(&mut self, action: Action, name: &ObjectName, from: &[&TableWithJoins]) {
        if self.is_cte(name) {
            self.deny(format!(
                "{action} through the common table expression {name}"
            ));
            return;
        }
        if let [ObjectNamePart::Identifier(alias)] = name.0.as_slice() {
            let alias = alias.value.to_lowercase();
            for f in from.iter().flat_map(|t| factors(t)) {
                if let TableFactor::Table {
                    name: real,
                    alias: Some(a),
                    ..
                } = f
                {
                    if a.name.value.to_lowercase() == alias {
                        let real = real.clone();
                        self.alias_targets.push(alias);
                        return self.target(action, &real, &[]);
                    }
                }
            }
        }
        self.access(action, name);
    }

    fn function(&mut self, name: &ObjectName) {
        let Some((schema, fname)) = self.qualify(name) else {
            return;
        };
        let unqualified = name.0.len() == 1;
        if fname.starts_with("sp_") || fname.starts_with("xp_") || fname.starts_with("fn_") {
            self.deny(format!("system routine {fname}"));
            return;
        }
        if unqualified && BUILTIN_FUNCTIONS.contains(&fname.as_str()) {
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

    fn statement(&mut self, stmt: &Statement) {
        match stmt {
            Statement::Query(_) => {}
            Statement::Insert(i) => {
                match &i.table {
                    TableObject::TableName(n) => {
                        let n = n.clone();
                        self.target(Action::Insert, &n, &[]);
                        if i.output.is_some() || i.returning.is_some() {
                            self.access(Action::Select, &n);
                        }
                    }
                    other => self.deny(format!("INSERT into {other}")),
                }
                if i.on.is_some() || !i.multi_table_into_clauses.is_empty() {
                    self.deny("INSERT with ON clause or into several tables");
                }
            }
            Statement::Update(u) => {
                let mut from: Vec<&TableWithJoins> = vec![&u.table];
                if let Some(f) = &u.from {
                    match f {
                        sqlparser::ast::UpdateTableFromKind::BeforeSet(v)
                        | sqlparser::ast::UpdateTableFromKind::AfterSet(v) => from.extend(v),
                    }
                }
                match &u.table.relation {
                    TableFactor::Table { name, .. } => {
                        let name = name.clone();
                        self.target(Action::Update, &name, &from);
                    }
                    other => self.deny(format!("UPDATE of {other}")),
                }
                if !u.table.joins.is_empty() {
                    self.deny("UPDATE of a join");
                }
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
                    for t in list {
                        match &t.relation {
                            TableFactor::Table { name, .. } => {
                                let name = name.clone();
                                self.target(Action::Delete, &name, &[]);
                            }
                            other => self.deny(format!("DELETE from {other}")),
                        }
                    }
                } else {
                    for n in &d.tables {
                        self.target(Action::Delete, n, &from);
                    }
                }
            }
            Statement::Merge(m) => {
                let TableFactor::Table { name, .. } = &m.table else {
                    self.deny("MERGE into something other than a table");
                    return;
                };
                let name = name.clone();
                for c in &m.clauses {
                    let action = match &c.action {
                        MergeAction::Insert(_) => Action::Insert,
                        MergeAction::Update { .. } => Action::Update,
                        MergeAction::Delete { .. } => Action::Delete,
                        MergeAction::DoNothing { .. } => continue,
                    };
                    self.target(action, &name, &[]);
                }
                if m.clauses.is_empty() {
                    self.deny("MERGE without clauses");
                }
            }
            Statement::CreateTable(c) => self.access(Action::Create, &c.name),
            Statement::CreateView(v) => self.access(Action::Create, &v.name),
            Statement::CreateIndex(i) => self.access(Action::Alter, &i.table_name),
            Statement::CreateSchema { schema_name, .. } => match schema_name {
                SchemaName::Simple(n) | SchemaName::NamedAuthorization(n, _) => {
                    let s = n.to_string().to_lowercase();
                    self.out.accesses.push(Access {
                        action: Action::Create,
                        object: ObjectRef::Schema(s.trim_matches(['[', ']', '"']).to_owned()),
                    });
                }
                SchemaName::UnnamedAuthorization(_) => self.deny("CREATE SCHEMA AUTHORIZATION"),
            },
            Statement::AlterTable(a) => self.access(Action::Alter, &a.name),
            Statement::Drop {
                object_type, names, ..
            } => match object_type {
                ObjectType::Table | ObjectType::View | ObjectType::Index | ObjectType::Sequence => {
                    for n in names {
                        self.access(Action::Drop, n);
                    }
                }
                ObjectType::Schema => {
                    for n in names {
                        if let Some((_, s)) = self.qualify(n) {
                            self.out.accesses.push(Access {
                                action: Action::Drop,
                                object: ObjectRef::Schema(s),
                            });
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
            Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. } => {}
            Statement::Set(s) => self.set(s),
            Statement::Execute {
                name,
                immediate,
                into,
                using,
                ..
            } => match name {
                Some(n) if !*immediate && into.is_empty() && using.is_empty() => {
                    let n = n.clone();
                    if let Some((schema, pname)) = self.qualify(&n) {
                        if pname.starts_with("sp_")
                            || pname.starts_with("xp_")
                            || pname.starts_with('@')
                        {
                            self.deny(format!("system or dynamic procedure {pname}"));
                        } else {
                            self.out.accesses.push(Access {
                                action: Action::Execute,
                                object: ObjectRef::Relation {
                                    schema: Some(schema),
                                    name: pname,
                                },
                            });
                        }
                    }
                }
                _ => self.deny("dynamic SQL (EXEC without a procedure name)"),
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

    fn set(&mut self, s: &Set) {
        match s {
            Set::SetSessionParam(SetSessionParamKind::Generic(g)) => {
                for n in &g.names {
                    self.out.settings.push(SettingChange::Set {
                        name: n.to_lowercase(),
                        value: Some(vec![g.value.to_lowercase()]),
                    });
                }
            }
            Set::SetSessionParam(SetSessionParamKind::IdentityInsert(i)) => {
                let obj = i.obj.clone();
                self.access(Action::Alter, &obj);
            }
            Set::SetSessionParam(_) => self.out.settings.push(SettingChange::Set {
                name: "statistics".into(),
                value: None,
            }),
            Set::SetTransaction { .. } => self.out.settings.push(SettingChange::Set {
                name: "transaction_isolation".into(),
                value: None,
            }),
            other => self.deny(format!("{other}")),
        }
    }
}

fn single_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(i)] => Some(i.value.to_lowercase()),
        _ => None,
    }
}

/// The table factors of a FROM item: the relation and every join's.
fn factors(t: &TableWithJoins) -> impl Iterator<Item = &TableFactor> {
    std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation))
}

impl Visitor for Walk<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        self.statement(stmt);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            if with.recursive {
                // Fine in T-SQL; names still scoped below.
            }
            for cte in &with.cte_tables {
                self.ctes.insert(cte.alias.name.value.to_lowercase());
            }
        }
        self.set_expr(&q.body);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
        match f {
            TableFactor::Table { name, args, .. } => {
                if args.is_some() {
                    // A table-valued function call.
                    let name = name.clone();
                    self.function(&name);
                } else if let Some(i) =
                    single_name(name).and_then(|n| self.alias_targets.iter().position(|a| *a == n))
                {
                    self.alias_targets.remove(i);
                } else if !self.is_cte(name) {
                    let name = name.clone();
                    self.access(Action::Select, &name);
                }
            }
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

    fn pre_visit_expr(&mut self, e: &sqlparser::ast::Expr) -> ControlFlow<()> {
        if let sqlparser::ast::Expr::Function(f) = e {
            let name = f.name.clone();
            self.function(&name);
        }
        ControlFlow::Continue(())
    }
}

impl Walk<'_> {
    /// SELECT INTO creates and fills a table.
    fn set_expr(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Select(s) => {
                if let Some(into) = &s.into {
                    for t in &into.targets {
                        let name = match t {
                            sqlparser::ast::Expr::Identifier(i) => ObjectName::from(i.clone()),
                            sqlparser::ast::Expr::CompoundIdentifier(v) => {
                                ObjectName::from(v.clone())
                            }
                            other => {
                                self.deny(format!("SELECT INTO {other}"));
                                continue;
                            }
                        };
                        self.access(Action::Create, &name);
                        self.access(Action::Insert, &name);
                    }
                    if into.targets.is_empty() {
                        self.deny("SELECT INTO without a target");
                    }
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            // Nested queries and DML statements are visited on their own.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(sql: &str) -> Vec<String> {
        let a = analyze_tsql(sql, Some("app")).unwrap();
        let mut out = Vec::new();
        for s in &a.statements {
            for n in &s.not_understood {
                out.push(format!("!{n}"));
            }
            for x in &s.accesses {
                out.push(format!("{} {}", x.action, x.object));
            }
            for f in &s.functions {
                out.push(format!("fn {f}"));
            }
        }
        out
    }

    fn denied(sql: &str) -> bool {
        match analyze_tsql(sql, Some("app")) {
            Err(_) => true,
            Ok(a) => a.statements.iter().any(|s| !s.not_understood.is_empty()),
        }
    }

    #[test]
    fn names_resolve_to_dbo_and_fold_case() {
        assert_eq!(acc("SELECT * FROM Orders"), ["select dbo.orders"]);
        assert_eq!(
            acc("SELECT * FROM [Sales].[Orders]"),
            ["select sales.orders"]
        );
        assert_eq!(
            acc("SELECT * FROM \"Sales\".Orders"),
            ["select sales.orders"]
        );
        assert_eq!(
            acc("SELECT * FROM app.sales.orders"),
            ["select sales.orders"]
        );
        assert_eq!(acc("SELECT * FROM #work"), ["select tempdb.\"#work\""]);
    }

    #[test]
    fn dml_targets() {
        assert_eq!(acc("INSERT INTO t (a) VALUES (1)"), ["insert dbo.t"]);
        assert_eq!(
            acc("INSERT INTO t SELECT * FROM s.u"),
            ["select s.u", "insert dbo.t"]
        );
        assert_eq!(
            acc("UPDATE o SET a = 1 FROM dbo.orders o JOIN dbo.c c ON c.id = o.c"),
            ["select dbo.c", "select dbo.orders", "update dbo.orders"]
        );
        assert_eq!(
            acc("DELETE FROM t WHERE id IN (SELECT id FROM u)"),
            ["select dbo.t", "select dbo.u", "delete dbo.t"]
        );
        assert_eq!(
            acc("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id);"),
            ["select dbo.s", "select dbo.t", "insert dbo.t", "update dbo.t"]
        );
        assert_eq!(
            acc("SELECT * INTO dbo.copy FROM dbo.orders"),
            ["select dbo.orders", "insert dbo.copy", "create dbo.copy"]
        );
    }

    #[test]
    fn ctes() {
        assert_eq!(
            acc("WITH x AS (SELECT * FROM dbo.orders) SELECT * FROM x"),
            ["select dbo.orders"]
        );
        assert!(denied("WITH x AS (SELECT * FROM dbo.orders) DELETE FROM x"));
    }

    #[test]
    fn ddl_and_functions() {
        assert_eq!(acc("DROP TABLE dbo.t"), ["drop dbo.t"]);
        assert_eq!(acc("TRUNCATE TABLE t"), ["truncate dbo.t"]);
        assert_eq!(acc("CREATE TABLE t (a INT)"), ["create dbo.t"]);
        assert_eq!(
            acc("SELECT dbo.f(a), UPPER(b), COUNT(*) FROM t"),
            ["select dbo.t", "fn dbo.f"]
        );
        assert_eq!(acc("EXEC dbo.report 1"), ["execute dbo.report"]);
        assert_eq!(acc("SELECT SESSION_CONTEXT(N'oid')"), Vec::<String>::new());
    }

    #[test]
    fn attacker_corpus_is_denied() {
        for sql in [
            "EXEC('DROP TABLE dbo.t')",
            "EXECUTE ('SELECT 1')",
            "EXEC sp_executesql N'DROP TABLE t'",
            "EXEC @sql",
            "exec xp_cmdshell 'dir'",
            "EXEC master..xp_cmdshell 'dir'",
            "EXEC sp_set_session_context @key = N'oid', @value = N'x'",
            "EXEC sp_set_session_context N'oid', N'x'",
            "SELECT * FROM OPENROWSET('SQLNCLI', 'Server=x', 'SELECT 1')",
            "SELECT * FROM OPENQUERY(srv, 'SELECT 1')",
            "SELECT * FROM OPENDATASOURCE('x', 'y').db.dbo.t",
            "BULK INSERT dbo.t FROM 'c:\\x.csv'",
            "DECLARE @x INT = 1; SELECT @x",
            "IF 1 = 1 DROP TABLE dbo.t",
            "WHILE 1 = 1 SELECT 1",
            "SELECT 1\nGO\nDROP TABLE t",
            "USE master",
            "SELECT * FROM srv.db.dbo.t",
            "SELECT * FROM otherdb.dbo.t",
            "DBCC CHECKDB",
            "CREATE PROCEDURE p AS DROP TABLE t",
            "SELECT 1; /* */ EXEC('x')",
            "WAITFOR DELAY '00:00:10'",
            "SELECT * FROM t WHERE",
            "SHUTDOWN",
        ] {
            assert!(denied(sql), "not denied: {sql}");
        }
    }

    #[test]
    fn the_policy_decides_tsql() {
        use crate::decide::Principal;
        let policy = Policy::from_toml(
            r#"
[[roles]]
name = "analyst"
members = { users = ["alice@contoso.com"] }
allow = [ { actions = ["select"], objects = ["dbo.orders", "hr.*"] } ]
deny = [ { name = "no_salaries", objects = ["*.salaries"] } ]
"#,
        )
        .unwrap();
        let roles = policy.roles_for(&Principal {
            upn: "alice@contoso.com".into(),
            ..Default::default()
        });
        let s = SessionState::new(&policy);
        let d = |sql: &str| policy.decide_tsql(&roles, sql, &s, Some("app")).decision;
        assert!(!d("SELECT * FROM [Orders] WITH (NOLOCK)").blocks());
        assert!(!d("SELECT TOP 5 id FROM dbo.orders ORDER BY id").blocks());
        assert_eq!(d("DELETE FROM orders").rule, "default_deny");
        assert_eq!(d("SELECT * FROM [HR].[Salaries]").rule, "no_salaries");
        assert_eq!(d("EXEC('SELECT 1')").rule, "builtin.not_understood");
        assert!(d("SELECT * FROM orders; DROP TABLE orders").blocks());
        assert!(d("SELECT dbo.secret_fn(id) FROM orders").blocks());
        assert!(d("SELECT * FROM dbo.customers").blocks());
        assert!(d("SELECT * FROM app.dbo.orders").rule == "analyst.allow[0]");
    }

    /// Attacker corpus against a policy that allows only reads of dbo.orders.
    #[test]
    fn attacker_corpus_against_a_read_only_policy() {
        use crate::decide::Principal;
        let policy = Policy::from_toml(
            r#"
[[roles]]
name = "reader"
members = { users = ["eve@contoso.com"] }
allow = [ { actions = ["select"], objects = ["dbo.orders"] } ]
"#,
        )
        .unwrap();
        let roles = policy.roles_for(&Principal {
            upn: "eve@contoso.com".into(),
            ..Default::default()
        });
        let s = SessionState::new(&policy);
        let blocks = |sql: &str| {
            policy
                .decide_tsql(&roles, sql, &s, Some("app"))
                .decision
                .blocks()
        };
        for sql in [
            "SELECT * FROM dbo.orders UNION SELECT * FROM hr.salaries",
            "SELECT * FROM dbo.orders DELETE FROM dbo.orders",
            "SELECT * FROM dbo.orders -- x\n; DROP TABLE dbo.orders",
            "/* ; */ DELETE FROM dbo.orders",
            "INSERT INTO dbo.orders EXEC dbo.p",
            "WITH x AS (SELECT 1 AS a) INSERT INTO dbo.orders SELECT * FROM x",
            "WITH x AS (SELECT * FROM dbo.orders) UPDATE x SET id = 1",
            "SELECT * INTO #t FROM dbo.orders",
            "SELECT * INTO dbo.copy FROM dbo.orders",
            "UPDATE [dbo].[Orders] SET id = 1",
            "MERGE dbo.orders AS t USING dbo.orders AS s ON t.id = s.id WHEN MATCHED THEN DELETE;",
            "SELECT * FROM OPENJSON(@j)",
            "EXEC ('SEL' + 'ECT 1')",
            "EXEC sys.sp_executesql N'SELECT 1'",
            "SELECT * FROM [app].[dbo].[orders]; TRUNCATE TABLE dbo.orders",
            "SELECT * FROM other.dbo.orders",
            "SELECT * FROM srv.app.dbo.orders",
            "SELECT * FROM dbo.orders\nGO\nDROP TABLE dbo.orders",
            "SELECT dbo.leak(id) FROM dbo.orders",
            "SELECT * FROM dbo.orders; SET IDENTITY_INSERT dbo.orders ON",
            "GRANT SELECT ON dbo.orders TO eve",
            "CREATE VIEW dbo.v AS SELECT * FROM dbo.orders",
        ] {
            assert!(blocks(sql), "not blocked: {sql}");
        }
        for sql in [
            "SELECT * FROM dbo.orders",
            "SELECT * FROM [dbo].[Orders] WITH (NOLOCK) WHERE id = 1",
            "select o.id from Orders AS o",
            "SELECT 'a''; DROP TABLE t; --' AS x FROM dbo.orders",
            "SELECT id FROM dbo.orders FOR JSON PATH",
            "SELECT TOP (10) * FROM app.dbo.orders ORDER BY id DESC",
            "WITH x AS (SELECT * FROM dbo.orders) SELECT * FROM x",
        ] {
            assert!(!blocks(sql), "blocked: {sql}");
        }
    }

    #[test]
    fn batches_and_comments() {
        assert_eq!(
            acc("SELECT * FROM a; DELETE FROM b"),
            ["select dbo.a", "select dbo.b", "delete dbo.b"]
        );
        assert_eq!(
            acc("SELECT 1 -- DROP TABLE x\n/* DELETE FROM y */ FROM t"),
            ["select dbo.t"]
        );
        // Words inside strings are data, not statements.
        assert_eq!(
            acc("SELECT 'EXEC(x) GO openrowset' FROM t"),
            ["select dbo.t"]
        );
    }
}
