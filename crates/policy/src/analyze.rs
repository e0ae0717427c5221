//! SQL analysis: what every statement does to which objects.
//!
//! The walk visits every node of PostgreSQL's parse tree (the child lists come from
//! `walk_gen.rs`, generated from pg_query's protobuf definitions, so no field can be
//! forgotten). Statement nodes get a handler that knows which relation is the target and what
//! is done to it; every other relation reference anywhere in the tree is a read. Statement kinds
//! without a handler are "not understood" and therefore denied.

use std::fmt;

use pg_query::protobuf as pb;
use pg_query::NodeRef;

use crate::walk_gen::{children, stmt_name};

/// `CURSOR_OPT_HOLD` of PostgreSQL's parsenodes.h: DECLARE ... WITH HOLD.
const CURSOR_OPT_HOLD: i32 = 0x0020;

/// Deeper trees than this are refused rather than walked, so hostile input cannot exhaust the
/// stack of the proxy's worker threads.
const MAX_DEPTH: usize = 400;

/// Query strings longer than this are refused without parsing by [`analyze`] (4 MiB: a
/// 1 MiB bulk INSERT from an ORM must pass). The proxy passes its configured
/// `[policy] max_statement_bytes` to [`analyze_limited`] instead.
pub const MAX_SQL_LEN: usize = 4 << 20;

/// What a statement does to an object. The names are the policy file's action names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Read rows (SELECT, COPY TO client, RETURNING, reads in WHERE of UPDATE/DELETE).
    Select,
    /// Add rows.
    Insert,
    /// Change rows; also row locks (FOR UPDATE/SHARE), as in PostgreSQL.
    Update,
    /// Remove rows.
    Delete,
    /// TRUNCATE.
    Truncate,
    /// CREATE of any object.
    Create,
    /// ALTER, RENAME, COMMENT, OWNER TO, SET SCHEMA and CREATE INDEX/TRIGGER/POLICY/RULE on a table.
    Alter,
    /// DROP.
    Drop,
    /// GRANT / REVOKE / ALTER DEFAULT PRIVILEGES.
    Grant,
    /// CALL of a procedure, DO blocks and procedural code (see docs/policy.md).
    Execute,
    /// COPY to or from a server file or program.
    CopyFile,
    /// LISTEN on a channel.
    Listen,
    /// NOTIFY / pg_notify() on a channel.
    Notify,
    /// Change a setting (SET, RESET, set_config()).
    Set,
    /// VACUUM, ANALYZE, CLUSTER, REINDEX, LOCK, REFRESH MATERIALIZED VIEW, CHECKPOINT, LOAD.
    Utility,
}

impl Action {
    /// Every action, in documentation order.
    pub const ALL: [Action; 15] = [
        Action::Select,
        Action::Insert,
        Action::Update,
        Action::Delete,
        Action::Truncate,
        Action::Create,
        Action::Alter,
        Action::Drop,
        Action::Grant,
        Action::Execute,
        Action::CopyFile,
        Action::Listen,
        Action::Notify,
        Action::Set,
        Action::Utility,
    ];

    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Select => "select",
            Action::Insert => "insert",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Truncate => "truncate",
            Action::Create => "create",
            Action::Alter => "alter",
            Action::Drop => "drop",
            Action::Grant => "grant",
            Action::Execute => "execute",
            Action::CopyFile => "copy_file",
            Action::Listen => "listen",
            Action::Notify => "notify",
            Action::Set => "set",
            Action::Utility => "utility",
        }
    }

    /// Parses a policy-file action name.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.as_str() == s)
    }

    pub(crate) fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kinds of objects that live outside schemas. In policy files they are written
/// `kind.name` (for example `setting.search_path`, `channel.jobs`, `role.alice`); a `*` in the
/// schema position never matches them, so a role allowed `"*"` still cannot change settings,
/// roles or channels unless it names the kind.
pub const PSEUDO_KINDS: [&str; 12] = [
    "setting",
    "channel",
    "role",
    "database",
    "extension",
    "language",
    "library",
    "server",
    "tablespace",
    "fdw",
    "publication",
    "subscription",
];

/// An object a statement touches, as written (unqualified names are resolved at decision time
/// against the session's search path).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectRef {
    /// A relation, view, sequence, function, procedure, type or other schema-scoped object.
    /// `schema` is `None` when the statement did not qualify the name.
    Relation {
        /// The schema as written, if any.
        schema: Option<String>,
        /// The object name (already case-folded by the parser).
        name: String,
    },
    /// A whole schema (CREATE/DROP SCHEMA, GRANT ... ALL TABLES IN SCHEMA, REINDEX SCHEMA).
    Schema(String),
    /// The whole database (VACUUM with no table, REINDEX DATABASE, CHECKPOINT, ...).
    All,
    /// A relation named by its OID (`nextval(16415)`, `currval('16415')`): resolved against
    /// the server's catalog at decision time; one it does not know counts as the whole
    /// database.
    RelationOid(u32),
    /// An object outside schemas: `kind` is one of [`PSEUDO_KINDS`].
    Pseudo {
        /// One of [`PSEUDO_KINDS`].
        kind: &'static str,
        /// Its name.
        name: String,
    },
}

impl ObjectRef {
    fn rel(schema: Option<&str>, name: &str) -> ObjectRef {
        ObjectRef::Relation {
            schema: schema.filter(|s| !s.is_empty()).map(str::to_owned),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectRef::Relation {
                schema: Some(s),
                name,
            } => write!(f, "{}.{}", quote(s), quote(name)),
            ObjectRef::Relation { schema: None, name } => write!(f, "{}", quote(name)),
            ObjectRef::Schema(s) => write!(f, "{}.*", quote(s)),
            ObjectRef::All => f.write_str("*"),
            ObjectRef::RelationOid(oid) => write!(f, "relation with OID {oid}"),
            ObjectRef::Pseudo { kind, name } => write!(f, "{kind}.{}", quote(name)),
        }
    }
}

/// Quotes an identifier when it would not read back the same unquoted.
pub(crate) fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !s.starts_with(|c: char| c.is_ascii_digit() || c == '$');
    if plain {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// One (action, object) pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Access {
    /// What is done.
    pub action: Action,
    /// To what.
    pub object: ObjectRef,
}

/// A function called (or a pseudo-function such as `do`, see docs/policy.md).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionRef {
    /// The schema as written, if any.
    pub schema: Option<String>,
    /// The function name (case-folded by the parser).
    pub name: String,
}

impl fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{}.{}", quote(s), quote(&self.name)),
            None => f.write_str(&quote(&self.name)),
        }
    }
}

/// A change to a run-time setting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SettingChange {
    /// SET name = value / set_config(name, value, ...). `value` is the textual value when it
    /// was a literal (`None` for DEFAULT or a non-literal value).
    Set {
        /// Lower-cased setting name (`*` when set_config() was given a non-literal name).
        name: String,
        /// Elements of the value, when literal (a list for search_path).
        value: Option<Vec<String>>,
    },
    /// RESET name (also SET name TO DEFAULT).
    Reset {
        /// Lower-cased setting name.
        name: String,
    },
    /// RESET ALL or DISCARD ALL.
    ResetAll,
}

impl SettingChange {
    /// The setting's name (`all` for RESET ALL).
    pub fn name(&self) -> &str {
        match self {
            SettingChange::Set { name, .. } | SettingChange::Reset { name } => name,
            SettingChange::ResetAll => "all",
        }
    }
}

/// What a statement changes in pgward's view of the session (see [`crate::SessionState`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    /// Stores a prepared statement under a name (SQL PREPARE).
    Prepare(String, Box<StatementAnalysis>),
    /// Forgets a prepared statement (`None`: all of them).
    Deallocate(Option<String>),
    /// DISCARD ALL: forgets prepared statements, closes cursors and resets settings.
    DiscardAll,
    /// DECLARE of a cursor, with the analysis of its query: a later FETCH or MOVE reads it,
    /// so after a policy reload the query is decided again (see docs/policy.md).
    DeclareCursor {
        /// The cursor's (portal's) name.
        name: String,
        /// WITH HOLD: the cursor outlives its transaction.
        hold: bool,
        /// What the cursor reads.
        query: Box<StatementAnalysis>,
    },
    /// CLOSE of a cursor (`None`: CLOSE ALL).
    CloseCursor(Option<String>),
}

/// The analysis of one SQL statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatementAnalysis {
    /// The statement's kind, e.g. `SelectStmt`, `CopyStmt`.
    pub kind: &'static str,
    /// The statement's text.
    pub sql: String,
    /// Every (action, object) pair, sorted and without duplicates.
    pub accesses: Vec<Access>,
    /// Every function called, sorted and without duplicates.
    pub functions: Vec<FunctionRef>,
    /// Names used in attribute position (`(x).name`, `t.name`, `t.c.name`): PostgreSQL calls
    /// the function `name(x)` there when `name` is not a column or field, so each is decided
    /// as a call of any function of that name the server has (sorted, without duplicates).
    pub attributes: Vec<String>,
    /// Operators used, as written (`schema` when given as `OPERATOR(schema.op)`): an
    /// operator runs its function, decided against the server's operators.
    pub operators: Vec<FunctionRef>,
    /// Type names values are cast to (`x::t`, `CAST(x AS t)`): a cast may run a function.
    pub casts: Vec<String>,
    /// Syntax PostgreSQL 17's grammar reads as a built-in form but an older server reads as
    /// a plain call of a function found on the search path (`json_scalar(1)` before 16):
    /// the name and the `server_version_num` from which it is syntax.
    pub syntax_calls: Vec<(String, u32)>,
    /// Functions (and aggregates, procedures) this statement creates or gives a new name or
    /// schema: the server's catalog learns them at once, since `(x).name` may call them.
    pub defines_functions: Vec<FunctionRef>,
    /// Settings changed.
    pub settings: Vec<SettingChange>,
    /// Why parts of the statement were not understood; non-empty means the statement is denied.
    pub not_understood: Vec<String>,
    /// The prepared statement an EXECUTE runs (decided as what was prepared).
    pub executes: Option<String>,
    /// The cursor (or protocol portal) a FETCH or MOVE reads.
    pub fetches: Option<String>,
    /// Changes to pgward's session state.
    pub effects: Vec<SessionEffect>,
}

/// The analysis of a whole query string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Analysis {
    /// One entry per statement, in order.
    pub statements: Vec<StatementAnalysis>,
}

/// Why a query string could not be analysed at all; the query is denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnalysisError {
    /// PostgreSQL's parser rejected it: the parser's own message and the 1-based character
    /// position it points at in the whole string (0: none), which a client gets as the
    /// server would send them (SQLSTATE 42601).
    Syntax {
        /// The parser's message, e.g. `syntax error at or near "SELEC"`.
        message: String,
        /// The cursor position (ErrorResponse field `P`), 0 when there is none.
        position: u32,
    },
    /// The string could not be parsed for another reason (a T-SQL parse failure, a NUL
    /// byte, pgward's own parser thread failing).
    Parse(String),
    /// Longer than pgward accepts (`[policy] max_statement_bytes`).
    TooLong {
        /// The string's length in bytes.
        len: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// Nested too deeply, or too many chained operators, to be parsed at a bounded cost.
    TooComplex,
    /// Analysis took longer than its time budget (`[policy] analysis_timeout_ms`).
    TimedOut {
        /// The budget, in milliseconds.
        limit_ms: u64,
    },
}

impl AnalysisError {
    /// Whether the string was refused for what analysing it would cost (length, nesting,
    /// time), not for what it says: SQLSTATE 54000 (program limit exceeded) in the proxy.
    pub fn is_over_budget(&self) -> bool {
        !matches!(self, AnalysisError::Parse(_) | AnalysisError::Syntax { .. })
    }
}

impl fmt::Display for AnalysisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnalysisError::Syntax { message, position } if *position > 0 => {
                write!(f, "{message} (at character {position})")
            }
            AnalysisError::Syntax { message, .. } => f.write_str(message),
            AnalysisError::Parse(e) => write!(f, "syntax error: {e}"),
            AnalysisError::TooLong { len, limit } => write!(
                f,
                "statement is {len} bytes, over [policy] max_statement_bytes = {limit}"
            ),
            AnalysisError::TooComplex => f.write_str(
                "statement nests too deeply or chains too many operators for pgward to analyse (see docs/policy.md, Limits)",
            ),
            AnalysisError::TimedOut { limit_ms } => write!(
                f,
                "analysis took longer than [policy] analysis_timeout_ms = {limit_ms}"
            ),
        }
    }
}

impl std::error::Error for AnalysisError {}

/// Longer SQL is parsed on a thread with a large stack: libpg_query's conversion of the parse
/// tree recurses once per nesting level, and `SELECT 1+1+1...` nests once per two bytes, which
/// could overflow a 2 MiB async worker stack. Shorter SQL cannot nest deeply enough to matter.
const BIG_SQL: usize = 4 * 1024;

/// Stack for parsing big SQL (address space reserved, not memory used, unless the SQL nests).
const BIG_STACK: usize = 256 << 20;

/// Longest chain of expression-building tokens (operators, `::` casts, COLLATE, IS, NOT,
/// AT, LIKE, subscripts...) one operand may carry at one nesting level in a statement
/// longer than [`BIG_SQL`]. Each link nests the parse tree one level deeper, and parsing
/// costs grow with the square of that depth (`'1'::text::text...`: 1 MiB took 17 s), so
/// such input is refused after a linear scan instead of being parsed. pg_query's decoder
/// refuses trees nested more than about 45 expression levels anyway, so no chain this long
/// could be analysed.
const MAX_CHAIN: usize = 64;

/// Most JOIN, UNION/INTERSECT/EXCEPT and BETWEEN at one nesting level of a statement: each
/// nests the tree too (left-deep joins and set operations), and commas do not end them.
const MAX_CLAUSE_CHAIN: usize = 200;

/// Deepest nesting of parentheses, brackets and CASE accepted in a statement longer than
/// [`BIG_SQL`].
const MAX_PARENS: usize = 1000;

/// Maps pg_query's errors (of its scanner). Its protobuf decoder stops at 100 nested
/// messages (about 45 levels of expression nesting); such a statement is reported as too
/// complex, not as a syntax error.
fn parse_error(e: pg_query::Error) -> AnalysisError {
    match e {
        pg_query::Error::Decode(_) => AnalysisError::TooComplex,
        pg_query::Error::Parse(m) | pg_query::Error::Scan(m) => AnalysisError::Parse(m),
        other => AnalysisError::Parse(other.to_string()),
    }
}

/// Maps the parser's failures (see [`crate::parser`]).
fn parse_failure(e: crate::parser::ParseFailure) -> AnalysisError {
    use crate::parser::ParseFailure as F;
    match e {
        F::Syntax { message, position } => AnalysisError::Syntax { message, position },
        F::Decode => AnalysisError::TooComplex,
        F::Nul => AnalysisError::Parse("the statement contains a NUL byte".to_owned()),
    }
}

/// Parses with PostgreSQL's parser. A scan error in [`check_complexity`] (an unterminated
/// literal, say) is left to the parser, which reports it with its position as the server
/// does.
fn parse_sql(sql: &str) -> Result<pb::ParseResult, AnalysisError> {
    crate::parser::parse(sql).map_err(parse_failure)
}

/// Refuses, after a linear scan, input whose parse would cost more than linear time:
/// long chains of tokens that each nest the tree one level deeper (see [`MAX_CHAIN`]),
/// and deep nesting. Chains are counted per operand: a comma, AND/OR, WHEN/THEN/ELSE or a
/// clause keyword ends one (those build flat lists), a parenthesis starts a new count
/// inside and resumes the outer one after it.
fn check_complexity(sql: &str) -> Result<(), AnalysisError> {
    use pb::Token as T;
    let scan = match pg_query::scan(sql) {
        Ok(scan) => scan,
        Err(e) => {
            // The parser will stop where the scanner stops (or earlier), and the client is
            // owed its message and position: check what it would read before that point.
            // A prefix that still fails to scan is refused rather than parsed unchecked.
            return match crate::parser::scan_error_offset(sql) {
                Some(end) if end < sql.len() => match sql.get(..end).map(check_complexity) {
                    Some(Ok(())) => Err(parse_error(e)),
                    Some(Err(AnalysisError::Parse(_))) | None => Err(AnalysisError::TooComplex),
                    Some(Err(other)) => Err(other),
                },
                _ => Err(AnalysisError::TooComplex),
            };
        }
    };
    // Per open nesting level: (expression chain, clause chain).
    let mut outer: Vec<(usize, usize)> = Vec::new();
    let (mut chain, mut clauses) = (0usize, 0usize);
    for t in &scan.tokens {
        let Ok(token) = T::try_from(t.token) else {
            continue;
        };
        match token {
            T::Ascii40 | T::Ascii91 | T::Case => {
                // `x[1][1]...` chains as well as nests.
                if token == T::Ascii91 {
                    chain += 1;
                }
                outer.push((chain, clauses));
                (chain, clauses) = (0, 0);
                if outer.len() > MAX_PARENS {
                    return Err(AnalysisError::TooComplex);
                }
            }
            T::Ascii41 | T::Ascii93 | T::EndP => {
                (chain, clauses) = outer.pop().unwrap_or((0, 0));
                if token == T::EndP {
                    // A CASE is an operand that may be chained on.
                    chain += 1;
                }
            }
            // Ends an operand: the next one starts its own chain.
            T::Ascii44
            | T::And
            | T::Or
            | T::When
            | T::Then
            | T::Else
            | T::On
            | T::Select
            | T::From
            | T::Where
            | T::GroupP
            | T::Having
            | T::Order
            | T::Limit
            | T::Offset
            | T::Values
            | T::Set
            | T::Returning
            | T::Using => chain = 0,
            T::Ascii59 => (chain, clauses) = (0, 0),
            T::Join | T::Union | T::Intersect | T::Except | T::Between => clauses += 1,
            T::Ascii37
            | T::Ascii42
            | T::Ascii43
            | T::Ascii45
            | T::Ascii47
            | T::Ascii60
            | T::Ascii61
            | T::Ascii62
            | T::Ascii94
            | T::Op
            | T::Typecast
            | T::LessEquals
            | T::GreaterEquals
            | T::NotEquals
            | T::Collate
            | T::At
            | T::Is
            | T::Isnull
            | T::Notnull
            | T::Not
            | T::Like
            | T::Ilike
            | T::Similar
            | T::InP
            | T::Operator => chain += 1,
            _ => {}
        }
        if chain > MAX_CHAIN || clauses > MAX_CLAUSE_CHAIN {
            return Err(AnalysisError::TooComplex);
        }
    }
    Ok(())
}

fn parse_on_big_stack(sql: &str) -> Result<pb::ParseResult, AnalysisError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("pgward-parse".to_owned())
            .stack_size(BIG_STACK)
            .spawn_scoped(scope, || parse_sql(sql))
            .map_err(|e| AnalysisError::Parse(format!("cannot start parser thread: {e}")))?
            .join()
            .map_err(|_| AnalysisError::Parse("parser failed".to_owned()))?
    })
}

/// Analyses a query string (one or more statements) with PostgreSQL's parser.
pub fn analyze(sql: &str) -> Result<Analysis, AnalysisError> {
    analyze_limited(sql, MAX_SQL_LEN)
}

/// [`analyze`] with another length limit (the proxy's `[policy] max_statement_bytes`).
pub fn analyze_limited(sql: &str, max_len: usize) -> Result<Analysis, AnalysisError> {
    if sql.len() > max_len {
        return Err(AnalysisError::TooLong {
            len: sql.len(),
            limit: max_len,
        });
    }
    let parsed = if sql.len() > BIG_SQL {
        match check_complexity(sql) {
            // The scanner's own errors are syntax errors the parser reports with their
            // position; only the cost checks refuse here.
            Err(AnalysisError::Parse(_)) | Ok(()) => {}
            Err(e) => return Err(e),
        }
        parse_on_big_stack(sql)?
    } else {
        parse_sql(sql)?
    };
    let mut statements = Vec::with_capacity(parsed.stmts.len());
    for raw in &parsed.stmts {
        let text = statement_text(sql, raw);
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        statements.push(analyze_node(node.to_ref(), text));
    }
    Ok(Analysis { statements })
}

/// The statement's own text. Locations are byte offsets into `sql`; `get` keeps a bad offset
/// from panicking (it then falls back to the whole string, which is only used for display).
fn statement_text(sql: &str, raw: &pb::RawStmt) -> String {
    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
    let text = if raw.stmt_len == 0 {
        sql.get(start..)
    } else {
        usize::try_from(raw.stmt_len)
            .ok()
            .and_then(|len| sql.get(start..start.saturating_add(len)))
    };
    text.unwrap_or(sql).trim().to_owned()
}

fn analyze_node(node: NodeRef<'_>, sql: String) -> StatementAnalysis {
    let mut w = Walker::default();
    w.out.kind = stmt_name(node).unwrap_or("Unknown");
    // Set before the walk: a PREPARE keeps its own text for its statement.
    w.out.sql = sql;
    w.visit(node);
    let mut out = w.out;
    out.accesses.sort();
    out.accesses.dedup();
    out.functions.sort();
    out.functions.dedup();
    out.attributes.sort();
    out.attributes.dedup();
    out.operators.sort();
    out.operators.dedup();
    out.casts.sort();
    out.casts.dedup();
    out.syntax_calls.sort();
    out.syntax_calls.dedup();
    out
}

#[derive(Default)]
struct Walker {
    out: StatementAnalysis,
    /// Addresses of RangeVar nodes a statement handler already accounted for (targets of
    /// INSERT/UPDATE/..., DDL names), so the generic walk does not also count them as reads.
    claimed: Vec<usize>,
    /// CTE names visible at the current point of the walk, innermost last.
    ctes: Vec<String>,
    /// The schema a CREATE SCHEMA statement being walked creates.
    schema_override: Option<String>,
    depth: usize,
}

fn addr(rv: &pb::RangeVar) -> usize {
    rv as *const pb::RangeVar as usize
}

fn node_ref(n: &pb::Node) -> Option<NodeRef<'_>> {
    n.node.as_ref().map(|n| n.to_ref())
}

fn opt_ref(n: &Option<Box<pb::Node>>) -> Option<NodeRef<'_>> {
    n.as_ref().and_then(|n| node_ref(n))
}

/// The string value of a `String` node.
fn str_of(n: &pb::Node) -> Option<&str> {
    match &n.node {
        Some(pb::node::Node::String(s)) => Some(&s.sval),
        _ => None,
    }
}

/// The name parts of a qualified name given as a list of `String` nodes.
fn name_parts(list: &[pb::Node]) -> Vec<&str> {
    list.iter().filter_map(str_of).collect()
}

/// Schema and name from name parts (`[catalog.]schema.name`).
fn split_parts<'s>(parts: &[&'s str]) -> Option<(Option<&'s str>, &'s str)> {
    let (last, rest) = parts.split_last()?;
    Some((rest.last().copied(), last))
}

impl Walker {
    fn not_understood(&mut self, why: impl Into<String>) {
        self.out.not_understood.push(why.into());
    }

    fn access(&mut self, action: Action, object: ObjectRef) {
        if action != Action::Select {
            if let ObjectRef::Relation { schema, name } = &object {
                if name == "pg_settings" && schema.as_deref().is_none_or(|s| s == "pg_catalog") {
                    // UPDATE pg_settings runs set_config() for the rows it changes: which
                    // settings is only known at run time.
                    self.out.settings.push(SettingChange::Set {
                        name: "*".to_owned(),
                        value: None,
                    });
                }
            }
        }
        self.out.accesses.push(Access { action, object });
    }

    /// Records `action` on the relation a RangeVar names. Inside CREATE SCHEMA, PostgreSQL
    /// puts the new schema first on the search path, so an unqualified name counts for both.
    fn rv_access(&mut self, action: Action, rv: &pb::RangeVar) {
        self.access(action, ObjectRef::rel(Some(&rv.schemaname), &rv.relname));
        if rv.schemaname.is_empty() {
            if let Some(s) = self.schema_override.clone() {
                self.access(action, ObjectRef::rel(Some(&s), &rv.relname));
            }
        }
    }

    /// Records `actions` on a relation named by a RangeVar and marks it as accounted for.
    fn claim(&mut self, rv: &pb::RangeVar, actions: &[Action]) {
        self.claimed.push(addr(rv));
        for &a in actions {
            self.rv_access(a, rv);
        }
    }

    fn claim_node(&mut self, n: &pb::Node, actions: &[Action]) {
        match &n.node {
            Some(pb::node::Node::RangeVar(rv)) => self.claim(rv, actions),
            _ => self.not_understood("expected a relation name"),
        }
    }

    fn visit(&mut self, node: NodeRef<'_>) {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            if self.depth == MAX_DEPTH + 1 {
                self.not_understood("statement nested too deeply");
            }
        } else if stmt_name(node).is_some() {
            self.statement(node);
        } else {
            match node {
                NodeRef::RangeVar(rv) => self.range_var(rv),
                NodeRef::FuncCall(fc) => self.func_call(fc),
                NodeRef::ColumnRef(cr) => {
                    // `a.b` and `a.b.c`: every part after the first may be a function called
                    // with what precedes it (`t.f` is `f(t)` when t has no column f).
                    for f in cr.fields.iter().skip(1) {
                        self.attribute(f);
                    }
                }
                NodeRef::AIndirection(ai) => {
                    // `(x).f` is `f(x)` unless x has a field f.
                    for f in &ai.indirection {
                        self.attribute(f);
                    }
                    self.visit_children(node);
                }
                NodeRef::AExpr(e) => {
                    self.operator(&e.name);
                    self.visit_children(node);
                }
                NodeRef::SubLink(l) => {
                    self.operator(&l.oper_name);
                    self.visit_children(node);
                }
                NodeRef::SortBy(b) => {
                    self.operator(&b.use_op);
                    self.visit_children(node);
                }
                NodeRef::TypeCast(tc) => {
                    if let Some(t) = &tc.type_name {
                        if let Some(last) = name_parts(&t.names).last() {
                            self.out.casts.push((*last).to_owned());
                        }
                    }
                    self.visit_children(node);
                }
                // SQL/JSON forms (16, 17) and MERGE_ACTION() (17) are plain function calls to
                // an older server's grammar.
                NodeRef::JsonScalarExpr(_) => self.syntax_call(node, "json_scalar", 160000),
                NodeRef::JsonSerializeExpr(_) => self.syntax_call(node, "json_serialize", 160000),
                NodeRef::JsonParseExpr(_) => self.syntax_call(node, "json", 160000),
                NodeRef::JsonObjectConstructor(_) => self.syntax_call(node, "json_object", 160000),
                NodeRef::JsonArrayConstructor(_) | NodeRef::JsonArrayQueryConstructor(_) => {
                    self.syntax_call(node, "json_array", 160000)
                }
                NodeRef::JsonObjectAgg(_) => self.syntax_call(node, "json_objectagg", 160000),
                NodeRef::JsonArrayAgg(_) => self.syntax_call(node, "json_arrayagg", 160000),
                NodeRef::JsonFuncExpr(f) => {
                    let name = match pb::JsonExprOp::try_from(f.op) {
                        Ok(pb::JsonExprOp::JsonExistsOp) => "json_exists",
                        Ok(pb::JsonExprOp::JsonQueryOp) => "json_query",
                        _ => "json_value",
                    };
                    self.syntax_call(node, name, 170000)
                }
                NodeRef::JsonTable(_) => self.syntax_call(node, "json_table", 170000),
                NodeRef::MergeSupportFunc(_) => self.syntax_call(node, "merge_action", 170000),
                NodeRef::RangeTableSample(ts) => {
                    // The sampling method is a function (returning tsm_handler).
                    let parts = name_parts(&ts.method);
                    match split_parts(&parts) {
                        Some((schema, name)) => self.out.functions.push(FunctionRef {
                            schema: schema.map(str::to_owned),
                            name: name.to_owned(),
                        }),
                        None => self.not_understood("TABLESAMPLE method without a name"),
                    }
                    self.visit_children(node);
                }
                _ => self.visit_children(node),
            }
        }
        self.depth -= 1;
    }

    fn visit_children(&mut self, node: NodeRef<'_>) {
        let mut kids = Vec::new();
        children(node, &mut kids);
        for k in kids {
            self.visit(k);
        }
    }

    /// Walks all children except the WITH clause (already walked with its own scoping rules).
    fn visit_children_but_with(&mut self, node: NodeRef<'_>) {
        let mut kids = Vec::new();
        children(node, &mut kids);
        for k in kids {
            if !matches!(k, NodeRef::WithClause(_)) {
                self.visit(k);
            }
        }
    }

    fn visit_opt(&mut self, n: &Option<Box<pb::Node>>) {
        if let Some(n) = opt_ref(n) {
            self.visit(n);
        }
    }

    fn range_var(&mut self, rv: &pb::RangeVar) {
        if self.claimed.contains(&addr(rv)) {
            return;
        }
        // An unqualified name that matches a CTE in scope is that CTE, not a table.
        if rv.schemaname.is_empty() && rv.catalogname.is_empty() && self.ctes.contains(&rv.relname)
        {
            return;
        }
        self.rv_access(Action::Select, rv);
        // Column statistics, large objects and other sessions' SQL text hold values from
        // every table: reading them reads the whole database (any deny rule covers them).
        if crate::catalog::DATA_CATALOGS.contains(&rv.relname.as_str())
            && (rv.schemaname.is_empty() || rv.schemaname == "pg_catalog")
        {
            self.access(Action::Select, ObjectRef::All);
        }
    }

    /// Walks a WITH clause and leaves its names in scope; returns how many were pushed.
    /// Non-recursive CTEs see only the CTEs before them; recursive ones see all of them,
    /// exactly as in PostgreSQL. Getting this wrong in the other direction would hide a table
    /// behind a CTE of the same name, so scopes are never wider than PostgreSQL's.
    fn with_clause(&mut self, w: Option<&pb::WithClause>) -> usize {
        let Some(w) = w else { return 0 };
        let ctes: Vec<&pb::CommonTableExpr> = w
            .ctes
            .iter()
            .filter_map(|n| match &n.node {
                Some(pb::node::Node::CommonTableExpr(c)) => Some(c.as_ref()),
                _ => None,
            })
            .collect();
        if ctes.len() != w.ctes.len() {
            self.not_understood("unexpected WITH element");
        }
        if w.recursive {
            for c in &ctes {
                self.ctes.push(c.ctename.clone());
            }
            for c in &ctes {
                self.visit_children(NodeRef::CommonTableExpr(c));
            }
        } else {
            for c in &ctes {
                self.visit_children(NodeRef::CommonTableExpr(c));
                self.ctes.push(c.ctename.clone());
            }
        }
        ctes.len()
    }

    fn pop_ctes(&mut self, n: usize) {
        let keep = self.ctes.len().saturating_sub(n);
        self.ctes.truncate(keep);
    }

    fn syntax_call(&mut self, node: NodeRef<'_>, name: &str, since: u32) {
        self.out.syntax_calls.push((name.to_owned(), since));
        self.visit_children(node);
    }

    fn attribute(&mut self, field: &pb::Node) {
        let Some(name) = str_of(field) else { return };
        // Sequence functions called as `(x).nextval` act on a sequence pgward cannot name.
        match name {
            "nextval" | "setval" => self.access(Action::Update, ObjectRef::All),
            "currval" | "pg_sequence_last_value" => self.access(Action::Select, ObjectRef::All),
            _ => {}
        }
        self.out.attributes.push(name.to_owned());
    }

    /// An operator name (`=`, `OPERATOR(schema.op)`); empty lists (no operator) are skipped.
    fn operator(&mut self, name: &[pb::Node]) {
        if name.is_empty() {
            return;
        }
        let parts = name_parts(name);
        match split_parts(&parts) {
            Some((schema, op)) if parts.len() == name.len() => {
                self.out.operators.push(FunctionRef {
                    schema: schema.map(str::to_owned),
                    name: op.to_owned(),
                })
            }
            _ => self.not_understood("operator with an unreadable name"),
        }
    }

    fn func_call(&mut self, fc: &pb::FuncCall) {
        let parts = name_parts(&fc.funcname);
        // NORMALIZE(x) is syntax for pg_catalog.normalize from 13 on; 12 reads normalize(x).
        if parts == ["pg_catalog", "normalize"]
            && fc.funcformat == pb::CoercionForm::CoerceSqlSyntax as i32
        {
            self.out.syntax_calls.push(("normalize".to_owned(), 130000));
        }
        if let Some((schema, name)) = split_parts(&parts) {
            self.function(schema, name, &fc.args);
        } else {
            self.not_understood("function with an unreadable name");
        }
        self.visit_children(NodeRef::FuncCall(fc));
    }

    /// Records a function call; some built-ins act on objects named by a string argument and
    /// are turned into the accesses they really make.
    fn function(&mut self, schema: Option<&str>, name: &str, args: &[pb::Node]) {
        let first = args.first().and_then(const_str);
        let in_catalog = schema.is_none_or(|s| s == "pg_catalog");
        // set_config() with a literal setting name is decided as that setting change (so
        // asyncpg's `set_config('jit', 'off', false)` is a harmless SET); with any other
        // name it stays a call of the dangerous function.
        if !(in_catalog && name == "set_config" && first.is_some()) {
            self.out.functions.push(FunctionRef {
                schema: schema.map(str::to_owned),
                name: name.to_owned(),
            });
        }
        if !in_catalog {
            return;
        }
        match name {
            "set_config" => {
                let setting = first.map_or_else(|| "*".to_owned(), |s| s.to_ascii_lowercase());
                let value = args.get(1).and_then(const_str).map(|v| split_list(&v));
                self.out.settings.push(SettingChange::Set {
                    name: setting,
                    value,
                });
            }
            "pg_notify" => {
                let object = first.map_or(ObjectRef::All, |c| ObjectRef::Pseudo {
                    kind: "channel",
                    name: c,
                });
                self.access(Action::Notify, object);
            }
            // Sequence functions take the sequence as regclass: a name given as text
            // (`nextval(' hr . payroll_seq ')`) or an OID (`setval(16415, 1)`), read as
            // regclass input reads it. Anything else could be any sequence.
            "nextval" | "setval" | "currval" | "pg_sequence_last_value" => {
                let action = if matches!(name, "nextval" | "setval") {
                    Action::Update
                } else {
                    Action::Select
                };
                let object = args.first().and_then(regclass_constant);
                self.access(action, object.unwrap_or(ObjectRef::All));
            }
            _ => {}
        }
    }

    fn statement(&mut self, node: NodeRef<'_>) {
        use Action as A;
        match node {
            NodeRef::SelectStmt(s) => self.select(s),
            NodeRef::InsertStmt(s) => {
                let n = self.with_clause(s.with_clause.as_ref());
                if let Some(rv) = &s.relation {
                    let mut actions = vec![A::Insert];
                    if let Some(oc) = &s.on_conflict_clause {
                        // DO UPDATE changes existing rows and reads them (its WHERE and SET see them).
                        if oc.action == pb::OnConflictAction::OnconflictUpdate as i32 {
                            actions.extend([A::Update, A::Select]);
                        }
                    }
                    if !s.returning_list.is_empty() {
                        actions.push(A::Select);
                    }
                    self.claim(rv, &actions);
                }
                self.visit_children_but_with(node);
                self.pop_ctes(n);
            }
            NodeRef::UpdateStmt(s) => {
                let n = self.with_clause(s.with_clause.as_ref());
                if let Some(rv) = &s.relation {
                    // Any WHERE, FROM or RETURNING reads the target's rows (row counts alone leak
                    // data), and PostgreSQL requires SELECT for them too.
                    let reads = s.where_clause.is_some()
                        || !s.from_clause.is_empty()
                        || !s.returning_list.is_empty();
                    let reads = reads || s.target_list.iter().any(references_columns);
                    let actions: &[A] = if reads {
                        &[A::Update, A::Select]
                    } else {
                        &[A::Update]
                    };
                    self.claim(rv, actions);
                }
                self.visit_children_but_with(node);
                self.pop_ctes(n);
            }
            NodeRef::DeleteStmt(s) => {
                let n = self.with_clause(s.with_clause.as_ref());
                if let Some(rv) = &s.relation {
                    let reads = s.where_clause.is_some()
                        || !s.using_clause.is_empty()
                        || !s.returning_list.is_empty();
                    let actions: &[A] = if reads {
                        &[A::Delete, A::Select]
                    } else {
                        &[A::Delete]
                    };
                    self.claim(rv, actions);
                }
                self.visit_children_but_with(node);
                self.pop_ctes(n);
            }
            NodeRef::MergeStmt(s) => {
                let n = self.with_clause(s.with_clause.as_ref());
                if let Some(rv) = &s.relation {
                    // The join condition always reads the target.
                    let mut actions = vec![A::Select];
                    for w in &s.merge_when_clauses {
                        if let Some(pb::node::Node::MergeWhenClause(w)) = &w.node {
                            match pb::CmdType::try_from(w.command_type) {
                                Ok(pb::CmdType::CmdUpdate) => actions.push(A::Update),
                                Ok(pb::CmdType::CmdDelete) => actions.push(A::Delete),
                                Ok(pb::CmdType::CmdInsert) => actions.push(A::Insert),
                                Ok(pb::CmdType::CmdNothing) => {}
                                _ => self.not_understood("unknown MERGE action"),
                            }
                        }
                    }
                    self.claim(rv, &actions);
                }
                self.visit_children_but_with(node);
                self.pop_ctes(n);
            }
            NodeRef::TruncateStmt(s) => {
                for r in &s.relations {
                    self.claim_node(r, &[A::Truncate]);
                }
                self.cascade(A::Truncate, s.behavior);
            }
            NodeRef::CopyStmt(s) => self.copy(s),
            // EXPLAIN (with or without ANALYZE) is decided as the statement it explains: plain
            // EXPLAIN needs the same privileges in PostgreSQL and reveals row estimates.
            NodeRef::ExplainStmt(_) | NodeRef::ReturnStmt(_) | NodeRef::SetOperationStmt(_) => {
                self.visit_children(node)
            }
            NodeRef::DeclareCursorStmt(s) => {
                // Decided as its query now, and again at FETCH/MOVE after a policy reload.
                if let Some(q) = opt_ref(&s.query) {
                    // The PREPARE's own text: masks plan an EXECUTE from it.
                    let inner = analyze_node(q, self.out.sql.clone());
                    self.merge(&inner);
                    self.out.effects.push(SessionEffect::DeclareCursor {
                        name: s.portalname.clone(),
                        hold: s.options & CURSOR_OPT_HOLD != 0,
                        query: Box::new(inner),
                    });
                } else {
                    self.not_understood("DECLARE without a query");
                }
            }
            NodeRef::FetchStmt(s) => self.out.fetches = Some(s.portalname.clone()),
            NodeRef::ClosePortalStmt(s) => {
                // An empty name is CLOSE ALL.
                let name = Some(s.portalname.clone()).filter(|n| !n.is_empty());
                self.out.effects.push(SessionEffect::CloseCursor(name));
            }
            NodeRef::PrepareStmt(s) => {
                // PREPARE is decided as its statement now, and EXECUTE as it again later.
                if let Some(q) = opt_ref(&s.query) {
                    // The PREPARE's own text: masks plan an EXECUTE from it.
                    let inner = analyze_node(q, self.out.sql.clone());
                    self.merge(&inner);
                    self.out
                        .effects
                        .push(SessionEffect::Prepare(s.name.clone(), Box::new(inner)));
                } else {
                    self.not_understood("PREPARE without a statement");
                }
            }
            NodeRef::ExecuteStmt(s) => {
                self.out.executes = Some(s.name.clone());
                self.visit_children(node);
            }
            NodeRef::DeallocateStmt(s) => {
                let name = if s.isall { None } else { Some(s.name.clone()) };
                self.out.effects.push(SessionEffect::Deallocate(name));
            }
            NodeRef::CreateTableAsStmt(s) => {
                if let Some(rv) = s.into.as_ref().and_then(|i| i.rel.as_ref()) {
                    self.claim(rv, &[A::Create]);
                }
                self.visit_children(node);
            }
            NodeRef::ViewStmt(s) => {
                if let Some(rv) = &s.view {
                    let actions: &[A] = if s.replace {
                        &[A::Create, A::Alter]
                    } else {
                        &[A::Create]
                    };
                    self.claim(rv, actions);
                }
                let start = self.out.accesses.len();
                self.visit_children(node);
                // A view over pg_settings is updatable, and an UPDATE of it runs set_config()
                // through pg_settings' rule for whatever rows it matches: creating one is a
                // change of settings pgward cannot name.
                let reads_settings = self.out.accesses[start..].iter().any(|a| {
                    matches!(&a.object, ObjectRef::Relation { schema, name }
                        if name == "pg_settings"
                            && schema.as_deref().is_none_or(|s| s == "pg_catalog"))
                });
                if reads_settings {
                    self.out.settings.push(SettingChange::Set {
                        name: "*".to_owned(),
                        value: None,
                    });
                }
            }
            NodeRef::RuleStmt(s) => {
                if let Some(rv) = &s.relation {
                    self.claim(rv, &[A::Alter]);
                }
                // Rule actions see the pseudo-relations NEW and OLD.
                self.ctes.extend(["new".to_owned(), "old".to_owned()]);
                self.visit_children(node);
                self.pop_ctes(2);
            }
            NodeRef::CreateFunctionStmt(s) => self.create_function(s),
            NodeRef::DoStmt(_) => {
                // Procedural code pgward cannot read: the pseudo-function `do` must be allowed.
                self.out.functions.push(FunctionRef {
                    schema: None,
                    name: "do".to_owned(),
                });
            }
            NodeRef::CallStmt(s) => {
                if let Some(fc) = &s.funccall {
                    let parts = name_parts(&fc.funcname);
                    if let Some((schema, name)) = split_parts(&parts) {
                        self.access(A::Execute, ObjectRef::rel(schema, name));
                    }
                    self.func_call(fc);
                } else {
                    self.not_understood("CALL without a procedure");
                }
            }
            NodeRef::VariableSetStmt(s) => self.set(s),
            NodeRef::VariableShowStmt(_)
            | NodeRef::TransactionStmt(_)
            | NodeRef::UnlistenStmt(_)
            | NodeRef::ConstraintsSetStmt(_) => self.transaction_or_harmless(node),
            NodeRef::DiscardStmt(s) => {
                if s.target == pb::DiscardMode::DiscardAll as i32 {
                    self.out.settings.push(SettingChange::ResetAll);
                    self.out.effects.push(SessionEffect::DiscardAll);
                }
            }
            NodeRef::ListenStmt(s) => {
                self.access(
                    A::Listen,
                    ObjectRef::Pseudo {
                        kind: "channel",
                        name: s.conditionname.clone(),
                    },
                );
            }
            NodeRef::NotifyStmt(s) => {
                self.access(
                    A::Notify,
                    ObjectRef::Pseudo {
                        kind: "channel",
                        name: s.conditionname.clone(),
                    },
                );
            }
            NodeRef::VacuumStmt(s) => {
                if s.rels.is_empty() {
                    self.access(A::Utility, ObjectRef::All);
                }
                for r in &s.rels {
                    if let Some(pb::node::Node::VacuumRelation(vr)) = &r.node {
                        if let Some(rv) = &vr.relation {
                            self.claim(rv, &[A::Utility]);
                        }
                    }
                }
                self.visit_children(node);
            }
            NodeRef::ClusterStmt(s) => {
                match &s.relation {
                    Some(rv) => self.claim(rv, &[A::Utility]),
                    None => self.access(A::Utility, ObjectRef::All),
                }
                self.visit_children(node);
            }
            NodeRef::ReindexStmt(s) => {
                match pb::ReindexObjectType::try_from(s.kind) {
                    Ok(
                        pb::ReindexObjectType::ReindexObjectTable
                        | pb::ReindexObjectType::ReindexObjectIndex,
                    ) => {
                        if let Some(rv) = &s.relation {
                            self.claim(rv, &[A::Utility]);
                        }
                    }
                    Ok(pb::ReindexObjectType::ReindexObjectSchema) => {
                        self.access(A::Utility, ObjectRef::Schema(s.name.clone()));
                    }
                    _ => self.access(A::Utility, ObjectRef::All),
                }
                self.visit_children(node);
            }
            NodeRef::LockStmt(s) => {
                for r in &s.relations {
                    self.claim_node(r, &[A::Utility]);
                }
            }
            NodeRef::RefreshMatViewStmt(s) => {
                if let Some(rv) = &s.relation {
                    self.claim(rv, &[A::Utility]);
                }
            }
            NodeRef::CheckPointStmt(_) => self.access(A::Utility, ObjectRef::All),
            NodeRef::LoadStmt(s) => {
                self.access(
                    A::Utility,
                    ObjectRef::Pseudo {
                        kind: "library",
                        name: s.filename.clone(),
                    },
                );
            }
            NodeRef::GrantStmt(s) => self.grant(s, A::Grant),
            NodeRef::GrantRoleStmt(s) => {
                for r in &s.granted_roles {
                    if let Some(pb::node::Node::AccessPriv(p)) = &r.node {
                        self.access(
                            A::Grant,
                            ObjectRef::Pseudo {
                                kind: "role",
                                name: p.priv_name.clone(),
                            },
                        );
                    }
                }
            }
            NodeRef::AlterDefaultPrivilegesStmt(s) => {
                let schemas: Vec<String> = s
                    .options
                    .iter()
                    .filter_map(|o| match &o.node {
                        Some(pb::node::Node::DefElem(d)) if d.defname == "schemas" => Some(d),
                        _ => None,
                    })
                    .flat_map(|d| list_strings(d.arg.as_deref()))
                    .collect();
                if schemas.is_empty() {
                    self.access(A::Grant, ObjectRef::All);
                }
                for sc in schemas {
                    self.access(A::Grant, ObjectRef::Schema(sc));
                }
            }
            NodeRef::CreateStmt(s) => {
                if let Some(rv) = &s.relation {
                    self.claim(rv, &[A::Create]);
                }
                // INHERITS / PARTITION OF attach the new table to a parent: its rows then show up
                // in the parent, so that changes the parent.
                for p in &s.inh_relations {
                    self.claim_node(p, &[A::Alter]);
                }
                self.visit_children(node);
            }
            NodeRef::CreateForeignTableStmt(s) => {
                if let Some(rv) = s.base_stmt.as_ref().and_then(|b| b.relation.as_ref()) {
                    self.claim(rv, &[A::Create]);
                }
                self.access(
                    A::Execute,
                    ObjectRef::Pseudo {
                        kind: "server",
                        name: s.servername.clone(),
                    },
                );
                self.visit_children(node);
            }
            NodeRef::IndexStmt(s) => {
                // An index is decided as `create` on the table it indexes.
                if let Some(rv) = &s.relation {
                    self.claim(rv, &[A::Create]);
                }
                self.visit_children(node);
            }
            NodeRef::CreateSchemaStmt(s) => {
                self.access(A::Create, ObjectRef::Schema(s.schemaname.clone()));
                let outer = self.schema_override.replace(s.schemaname.clone());
                self.visit_children(node);
                self.schema_override = outer;
            }
            NodeRef::CreateSeqStmt(s) => {
                if let Some(rv) = &s.sequence {
                    self.claim(rv, &[A::Create]);
                }
                self.visit_children(node);
            }
            NodeRef::AlterSeqStmt(s) => {
                if let Some(rv) = &s.sequence {
                    self.claim(rv, &[A::Alter]);
                }
                self.visit_children(node);
            }
            NodeRef::AlterTableStmt(s) => {
                if let Some(rv) = &s.relation {
                    self.claim(rv, &[A::Alter]);
                }
                for c in &s.cmds {
                    if let Some(pb::node::Node::AlterTableCmd(c)) = &c.node {
                        self.cascade(A::Drop, c.behavior);
                    }
                }
                self.visit_children(node);
            }
            NodeRef::AlterFunctionStmt(s) => {
                if let Some(f) = &s.func {
                    self.object_name(A::Alter, pb::ObjectType::ObjectFunction as i32, &f.objname);
                }
                // Its actions are options (volatility, SECURITY DEFINER, SET ...), no code,
                // except a planner support function.
                for a in &s.actions {
                    if let Some(pb::node::Node::DefElem(d)) = &a.node {
                        match d.defname.as_str() {
                            "set" => self.function_set_option(d),
                            "support" => self.named_function(d),
                            _ => {}
                        }
                    }
                }
            }
            NodeRef::CreateTrigStmt(s) => {
                if let Some(rv) = &s.relation {
                    self.claim(rv, &[A::Alter]);
                }
                if let Some(rv) = &s.constrrel {
                    self.claim(rv, &[A::Select]);
                }
                let parts = name_parts(&s.funcname);
                if let Some((schema, name)) = split_parts(&parts) {
                    self.out.functions.push(FunctionRef {
                        schema: schema.map(str::to_owned),
                        name: name.to_owned(),
                    });
                }
                self.visit_children(node);
            }
            NodeRef::CreatePolicyStmt(s) => {
                if let Some(rv) = &s.table {
                    self.claim(rv, &[A::Alter]);
                }
                self.visit_children(node);
            }
            NodeRef::AlterPolicyStmt(s) => {
                if let Some(rv) = &s.table {
                    self.claim(rv, &[A::Alter]);
                }
                self.visit_children(node);
            }
            NodeRef::RenameStmt(s) if s.relation.is_none() && s.object.is_none() => {
                self.rename_by_name(s.rename_type, &s.subname, &s.newname);
            }
            NodeRef::RenameStmt(s) => {
                self.object_stmt(A::Alter, s.rename_type, s.relation.as_ref(), &s.object);
                self.redefines(s.rename_type, &s.object, None, Some(&s.newname));
            }
            NodeRef::AlterObjectSchemaStmt(s) => {
                self.object_stmt(A::Alter, s.object_type, s.relation.as_ref(), &s.object);
                self.redefines(s.object_type, &s.object, Some(&s.newschema), None);
                self.access(A::Create, ObjectRef::Schema(s.newschema.clone()));
            }
            NodeRef::AlterOwnerStmt(s) => {
                self.object_stmt(A::Alter, s.object_type, s.relation.as_ref(), &s.object)
            }
            NodeRef::CommentStmt(s) => self.object_stmt(A::Alter, s.objtype, None, &s.object),
            NodeRef::DropStmt(s) => {
                for o in &s.objects {
                    self.object_node(A::Drop, s.remove_type, o);
                }
                self.cascade(A::Drop, s.behavior);
            }
            NodeRef::CreateExtensionStmt(s) => {
                self.access(
                    A::Create,
                    ObjectRef::Pseudo {
                        kind: "extension",
                        name: s.extname.clone(),
                    },
                );
            }
            NodeRef::CreateRoleStmt(s) => {
                self.access(
                    A::Create,
                    ObjectRef::Pseudo {
                        kind: "role",
                        name: s.role.clone(),
                    },
                );
            }
            NodeRef::AlterRoleStmt(s) => {
                let name = s.role.as_ref().map_or_else(String::new, role_name);
                self.access(A::Alter, ObjectRef::Pseudo { kind: "role", name });
            }
            NodeRef::DropRoleStmt(s) => {
                for r in &s.roles {
                    if let Some(pb::node::Node::RoleSpec(rs)) = &r.node {
                        self.access(
                            A::Drop,
                            ObjectRef::Pseudo {
                                kind: "role",
                                name: role_name(rs),
                            },
                        );
                    }
                }
            }
            NodeRef::CreatedbStmt(s) => {
                self.access(
                    A::Create,
                    ObjectRef::Pseudo {
                        kind: "database",
                        name: s.dbname.clone(),
                    },
                );
            }
            NodeRef::DropdbStmt(s) => {
                self.access(
                    A::Drop,
                    ObjectRef::Pseudo {
                        kind: "database",
                        name: s.dbname.clone(),
                    },
                );
            }
            NodeRef::CreateDomainStmt(s) => {
                self.object_name(
                    A::Create,
                    pb::ObjectType::ObjectDomain as i32,
                    &s.domainname,
                );
                self.visit_children(node);
            }
            NodeRef::CreateEnumStmt(s) => {
                self.object_name(A::Create, pb::ObjectType::ObjectType as i32, &s.type_name);
            }
            NodeRef::CompositeTypeStmt(s) => {
                if let Some(rv) = &s.typevar {
                    self.claim(rv, &[A::Create]);
                }
                self.visit_children(node);
            }
            NodeRef::DefineStmt(s) => {
                // CREATE AGGREGATE / TYPE / COLLATION / TEXT SEARCH ...; operators are not mapped.
                if self.object_name(A::Create, s.kind, &s.defnames) {
                    self.definition_functions(s);
                }
                if s.kind == pb::ObjectType::ObjectAggregate as i32 {
                    let parts = name_parts(&s.defnames);
                    if let Some((schema, name)) = split_parts(&parts) {
                        self.defines(schema, name);
                    }
                }
                self.visit_children(node);
            }
            NodeRef::CreateStatsStmt(s) => {
                for r in &s.relations {
                    self.claim_node(r, &[A::Alter]);
                }
                self.visit_children(node);
            }
            // ---- Every other statement kind of PostgreSQL 17's grammar (docs/policy.md,
            // "How statements map"). Functions a definition names run later, whenever the
            // object is used, so each is decided as a call now, as for CREATE AGGREGATE.
            NodeRef::CreateRangeStmt(s) => self.create_range(s),
            NodeRef::AlterEnumStmt(s) => {
                self.object_name(A::Alter, pb::ObjectType::ObjectType as i32, &s.type_name);
            }
            NodeRef::AlterTypeStmt(s) => {
                // ALTER TYPE t SET (receive = f, ...) swaps the functions the type runs.
                self.object_name(A::Alter, pb::ObjectType::ObjectType as i32, &s.type_name);
                self.option_functions(
                    &s.options,
                    &[
                        "receive",
                        "send",
                        "typmod_in",
                        "typmod_out",
                        "analyze",
                        "subscript",
                    ],
                    &["storage"],
                );
            }
            NodeRef::AlterDomainStmt(s) => {
                self.object_name(A::Alter, pb::ObjectType::ObjectDomain as i32, &s.type_name);
                self.cascade(A::Drop, s.behavior);
                // A new CHECK constraint or default: its expression is decided.
                self.visit_children(node);
            }
            NodeRef::AlterCollationStmt(s) => {
                self.object_name(
                    A::Alter,
                    pb::ObjectType::ObjectCollation as i32,
                    &s.collname,
                );
            }
            NodeRef::AlterStatsStmt(s) => {
                self.object_name(
                    A::Alter,
                    pb::ObjectType::ObjectStatisticExt as i32,
                    &s.defnames,
                );
            }
            NodeRef::AlterTsdictionaryStmt(s) => {
                self.object_name(
                    A::Alter,
                    pb::ObjectType::ObjectTsdictionary as i32,
                    &s.dictname,
                );
            }
            NodeRef::AlterTsconfigurationStmt(s) => {
                self.object_name(
                    A::Alter,
                    pb::ObjectType::ObjectTsconfiguration as i32,
                    &s.cfgname,
                );
            }
            NodeRef::AlterOperatorStmt(s) => {
                if let Some(o) = &s.opername {
                    self.object_name(A::Alter, pb::ObjectType::ObjectOperator as i32, &o.objname);
                }
                self.option_functions(
                    &s.options,
                    &["restrict", "join"],
                    &["commutator", "negator", "hashes", "merges"],
                );
            }
            NodeRef::CreateOpClassStmt(s) => {
                self.object_name(
                    A::Create,
                    pb::ObjectType::ObjectOpclass as i32,
                    &s.opclassname,
                );
                if !s.opfamilyname.is_empty() {
                    self.object_name(
                        A::Alter,
                        pb::ObjectType::ObjectOpfamily as i32,
                        &s.opfamilyname,
                    );
                }
                self.opclass_items(&s.items);
            }
            NodeRef::CreateOpFamilyStmt(s) => {
                self.object_name(
                    A::Create,
                    pb::ObjectType::ObjectOpfamily as i32,
                    &s.opfamilyname,
                );
            }
            NodeRef::AlterOpFamilyStmt(s) => {
                self.object_name(
                    A::Alter,
                    pb::ObjectType::ObjectOpfamily as i32,
                    &s.opfamilyname,
                );
                if !s.is_drop {
                    self.opclass_items(&s.items);
                }
            }
            NodeRef::CreateCastStmt(s) => {
                // A cast applies wherever the two types meet, in every session and schema:
                // a change to the whole database. Its function is decided as a call.
                self.access(A::Create, ObjectRef::All);
                if let Some(f) = &s.func {
                    self.function_parts(&name_parts(&f.objname));
                }
            }
            NodeRef::CreateConversionStmt(s) => {
                if s.def {
                    // A default conversion is what the server then uses to read client bytes
                    // in that encoding; pgward reads them with the standard one.
                    self.not_understood(
                        "CREATE DEFAULT CONVERSION would change how the server reads client bytes",
                    );
                }
                self.object_name(
                    A::Create,
                    pb::ObjectType::ObjectConversion as i32,
                    &s.conversion_name,
                );
                self.function_parts(&name_parts(&s.func_name));
            }
            NodeRef::CreateTransformStmt(s) => {
                // Runs in every function of that language that asks for the transform.
                self.pseudo(A::Create, "language", &s.lang);
                for f in [&s.fromsql, &s.tosql].into_iter().flatten() {
                    self.function_parts(&name_parts(&f.objname));
                }
            }
            NodeRef::CreatePlangStmt(s) => {
                let action = if s.replace { A::Alter } else { A::Create };
                self.pseudo(action, "language", &s.plname);
                for f in [&s.plhandler, &s.plinline, &s.plvalidator] {
                    if !f.is_empty() {
                        self.function_parts(&name_parts(f));
                    }
                }
            }
            NodeRef::CreateAmStmt(s) => {
                // An access method serves every table or index created with it.
                self.access(A::Create, ObjectRef::All);
                self.function_parts(&name_parts(&s.handler_name));
            }
            NodeRef::CreateEventTrigStmt(s) => {
                // Runs its function for every DDL statement of every session.
                self.access(A::Create, ObjectRef::All);
                self.function_parts(&name_parts(&s.funcname));
            }
            NodeRef::AlterEventTrigStmt(_) => self.access(A::Alter, ObjectRef::All),
            NodeRef::CreateFdwStmt(s) => {
                self.pseudo(A::Create, "fdw", &s.fdwname);
                self.fdw_functions(&s.func_options);
            }
            NodeRef::AlterFdwStmt(s) => {
                self.pseudo(A::Alter, "fdw", &s.fdwname);
                self.fdw_functions(&s.func_options);
            }
            NodeRef::CreateForeignServerStmt(s) => {
                self.pseudo(A::Create, "server", &s.servername);
                self.pseudo(A::Execute, "fdw", &s.fdwname);
            }
            NodeRef::AlterForeignServerStmt(s) => self.pseudo(A::Alter, "server", &s.servername),
            // A user mapping holds the credentials the server uses on a foreign server.
            NodeRef::CreateUserMappingStmt(s) => self.pseudo(A::Alter, "server", &s.servername),
            NodeRef::AlterUserMappingStmt(s) => self.pseudo(A::Alter, "server", &s.servername),
            NodeRef::DropUserMappingStmt(s) => self.pseudo(A::Alter, "server", &s.servername),
            NodeRef::ImportForeignSchemaStmt(s) => {
                // Creates foreign tables, named by the remote server, in the local schema.
                self.access(A::Create, ObjectRef::Schema(s.local_schema.clone()));
                self.pseudo(A::Execute, "server", &s.server_name);
            }
            NodeRef::CreatePublicationStmt(s) => {
                self.pseudo(A::Create, "publication", &s.pubname);
                self.publication_objects(&s.pubobjects, s.for_all_tables);
            }
            NodeRef::AlterPublicationStmt(s) => {
                self.pseudo(A::Alter, "publication", &s.pubname);
                // DROP only takes tables out; ADD and SET publish (read) them.
                if s.action != pb::AlterPublicationAction::ApDropObjects as i32 {
                    self.publication_objects(&s.pubobjects, s.for_all_tables);
                }
            }
            NodeRef::CreateSubscriptionStmt(s) => {
                // Connects out to another server and writes what it publishes into local
                // tables of the same names: any table.
                self.pseudo(A::Create, "subscription", &s.subname);
                self.subscription_writes();
            }
            NodeRef::AlterSubscriptionStmt(s) => {
                self.pseudo(A::Alter, "subscription", &s.subname);
                self.subscription_writes();
            }
            NodeRef::DropSubscriptionStmt(s) => {
                self.pseudo(A::Drop, "subscription", &s.subname);
                self.cascade(A::Drop, s.behavior);
            }
            NodeRef::CreateTableSpaceStmt(s) => {
                // The server creates and writes a directory the statement names.
                self.pseudo(A::Create, "tablespace", &s.tablespacename);
                self.access(A::CopyFile, ObjectRef::All);
            }
            NodeRef::DropTableSpaceStmt(s) => {
                self.pseudo(A::Drop, "tablespace", &s.tablespacename);
            }
            NodeRef::AlterTableSpaceOptionsStmt(s) => {
                self.pseudo(A::Alter, "tablespace", &s.tablespacename);
            }
            NodeRef::AlterTableMoveAllStmt(s) => {
                // Moves every table (of some owners) in one tablespace to another.
                self.access(A::Alter, ObjectRef::All);
                self.pseudo(A::Alter, "tablespace", &s.orig_tablespacename);
                self.pseudo(A::Alter, "tablespace", &s.new_tablespacename);
            }
            NodeRef::AlterDatabaseStmt(s) => self.pseudo(A::Alter, "database", &s.dbname),
            NodeRef::AlterDatabaseRefreshCollStmt(s) => {
                self.pseudo(A::Alter, "database", &s.dbname)
            }
            NodeRef::AlterDatabaseSetStmt(s) => {
                // A default for every later session of the database (pgward's own upstream
                // sessions included): decided like SET of that setting, and never applied
                // to this session (`SessionState::apply` skips these kinds).
                self.pseudo(A::Alter, "database", &s.dbname);
                if let Some(v) = &s.setstmt {
                    self.set(v);
                }
            }
            NodeRef::AlterRoleSetStmt(s) => {
                match &s.role {
                    Some(r) => self.pseudo(A::Alter, "role", &role_name(r)),
                    // ALTER ROLE ALL SET: every role.
                    None => self.access(A::Alter, ObjectRef::All),
                }
                if !s.database.is_empty() {
                    self.pseudo(A::Alter, "database", &s.database);
                }
                if let Some(v) = &s.setstmt {
                    self.set(v);
                }
            }
            NodeRef::AlterSystemStmt(s) => {
                // Writes the server's configuration file (postgresql.auto.conf) for every
                // session: a server file, and a change of that setting.
                self.access(A::CopyFile, ObjectRef::All);
                if let Some(v) = &s.setstmt {
                    self.set(v);
                }
            }
            NodeRef::DropOwnedStmt(s) => {
                // Drops and revokes whatever those roles own or were granted, anywhere.
                for r in &s.roles {
                    if let Some(pb::node::Node::RoleSpec(r)) = &r.node {
                        self.pseudo(A::Alter, "role", &role_name(r));
                    }
                }
                self.access(A::Drop, ObjectRef::All);
                self.access(A::Grant, ObjectRef::All);
            }
            NodeRef::ReassignOwnedStmt(s) => {
                for r in s.roles.iter().filter_map(|r| match &r.node {
                    Some(pb::node::Node::RoleSpec(r)) => Some(r),
                    _ => None,
                }) {
                    self.pseudo(A::Alter, "role", &role_name(r));
                }
                if let Some(r) = &s.newrole {
                    self.pseudo(A::Alter, "role", &role_name(r));
                }
                self.access(A::Alter, ObjectRef::All);
            }
            NodeRef::AlterObjectDependsStmt(s) => {
                // DROP EXTENSION then drops the object too.
                self.object_stmt(A::Alter, s.object_type, s.relation.as_ref(), &s.object);
                if let Some(e) = &s.extname {
                    self.pseudo(A::Alter, "extension", &e.sval);
                }
            }
            NodeRef::AlterExtensionStmt(s) => {
                // ALTER EXTENSION ... UPDATE runs the extension's update scripts.
                self.pseudo(A::Alter, "extension", &s.extname);
            }
            NodeRef::AlterExtensionContentsStmt(s) => {
                self.pseudo(A::Alter, "extension", &s.extname);
                self.object_stmt(A::Alter, s.objtype, None, &s.object);
            }
            NodeRef::SecLabelStmt(s) => self.object_stmt(A::Alter, s.objtype, None, &s.object),
            // Only inside ALTER TABLE, which is decided as alter on the table.
            NodeRef::ReplicaIdentityStmt(_) => {}
            // Produced only by PL/pgSQL's parser, never for a client's SQL.
            NodeRef::PlassignStmt(_) | NodeRef::RawStmt(_) => {
                self.not_understood("procedural assignment outside a function");
            }
            other => {
                let name = stmt_name(other).unwrap_or("unknown");
                self.not_understood(format!("statement kind {name} is not supported by pgward"));
            }
        }
    }

    /// CASCADE reaches objects the statement does not name (TRUNCATE ... CASCADE empties
    /// every table referencing the named one; DROP ... CASCADE drops dependent views and
    /// constraints anywhere), so it counts as acting on the whole database.
    fn cascade(&mut self, action: Action, behavior: i32) {
        if behavior == pb::DropBehavior::DropCascade as i32 {
            self.access(action, ObjectRef::All);
        }
    }

    fn transaction_or_harmless(&mut self, node: NodeRef<'_>) {
        if let NodeRef::TransactionStmt(t) = node {
            // Two-phase commit outlives the session and the transaction-abort rules pgward relies on.
            let two_phase = matches!(
                pb::TransactionStmtKind::try_from(t.kind),
                Ok(pb::TransactionStmtKind::TransStmtPrepare
                    | pb::TransactionStmtKind::TransStmtCommitPrepared
                    | pb::TransactionStmtKind::TransStmtRollbackPrepared)
            );
            if two_phase {
                self.access(Action::Utility, ObjectRef::All);
            }
        }
    }

    fn select(&mut self, s: &pb::SelectStmt) {
        let n = self.with_clause(s.with_clause.as_ref());
        let start = self.out.accesses.len();
        if let Some(rv) = s.into_clause.as_ref().and_then(|i| i.rel.as_ref()) {
            // SELECT ... INTO creates a table.
            self.claim(rv, &[Action::Create]);
        }
        for lc in &s.locking_clause {
            if let Some(pb::node::Node::LockingClause(lc)) = &lc.node {
                // FOR UPDATE OF x names FROM items (often aliases), which are read anyway;
                // the update requirement is added for all of them below.
                for r in &lc.locked_rels {
                    if let Some(pb::node::Node::RangeVar(rv)) = &r.node {
                        self.claimed.push(addr(rv));
                    }
                }
            }
        }
        self.visit_children_but_with(NodeRef::SelectStmt(s));
        if !s.locking_clause.is_empty() {
            // FOR UPDATE/SHARE needs UPDATE in PostgreSQL. Applied to every relation read in this
            // SELECT (a named list can only narrow it, so this is never less strict).
            let locked: Vec<ObjectRef> = self.out.accesses[start..]
                .iter()
                .filter(|a| a.action == Action::Select)
                .map(|a| a.object.clone())
                .collect();
            for o in locked {
                self.access(Action::Update, o);
            }
        }
        self.pop_ctes(n);
    }

    fn copy(&mut self, s: &pb::CopyStmt) {
        let start = self.out.accesses.len();
        if let Some(rv) = &s.relation {
            let action = if s.is_from {
                Action::Insert
            } else {
                Action::Select
            };
            self.claim(rv, &[action]);
        }
        self.visit_children(NodeRef::CopyStmt(s));
        if s.is_program || !s.filename.is_empty() {
            let objects: Vec<ObjectRef> = self.out.accesses[start..]
                .iter()
                .map(|a| a.object.clone())
                .collect();
            if objects.is_empty() {
                // COPY (SELECT 1) TO PROGRAM '...' touches no table but still runs a program.
                self.access(Action::CopyFile, ObjectRef::All);
            }
            for o in objects {
                self.access(Action::CopyFile, o);
            }
        }
    }

    fn set(&mut self, s: &pb::VariableSetStmt) {
        let name = s.name.to_ascii_lowercase();
        let change = match pb::VariableSetKind::try_from(s.kind) {
            Ok(pb::VariableSetKind::VarSetValue) => {
                let mut value = Vec::new();
                for a in &s.args {
                    match const_str(a) {
                        Some(v) => value.push(v),
                        None => value.push(String::new()),
                    }
                }
                SettingChange::Set {
                    name,
                    value: Some(value),
                }
            }
            Ok(pb::VariableSetKind::VarSetDefault | pb::VariableSetKind::VarReset) => {
                SettingChange::Reset { name }
            }
            Ok(pb::VariableSetKind::VarSetCurrent) => SettingChange::Set { name, value: None },
            Ok(pb::VariableSetKind::VarResetAll) => SettingChange::ResetAll,
            // SET TRANSACTION / SET SESSION CHARACTERISTICS: transaction modes, no setting.
            Ok(pb::VariableSetKind::VarSetMulti)
                if name.starts_with("transaction") || name.starts_with("session") =>
            {
                return;
            }
            _ => {
                self.not_understood("unknown SET form");
                return;
            }
        };
        self.out.settings.push(change);
    }

    fn grant(&mut self, s: &pb::GrantStmt, action: Action) {
        if s.targtype == pb::GrantTargetType::AclTargetAllInSchema as i32 {
            for o in &s.objects {
                if let Some(name) = str_of(o) {
                    self.access(action, ObjectRef::Schema(name.to_owned()));
                }
            }
            return;
        }
        for o in &s.objects {
            self.object_node(action, s.objtype, o);
        }
    }

    fn defines(&mut self, schema: Option<&str>, name: &str) {
        self.out.defines_functions.push(FunctionRef {
            schema: schema.filter(|s| !s.is_empty()).map(str::to_owned),
            name: name.to_owned(),
        });
    }

    /// RENAME and SET SCHEMA of a function-like object define it under a new name.
    fn redefines(
        &mut self,
        objtype: i32,
        object: &Option<Box<pb::Node>>,
        new_schema: Option<&str>,
        new_name: Option<&str>,
    ) {
        use pb::ObjectType as T;
        if !matches!(
            T::try_from(objtype),
            Ok(T::ObjectFunction | T::ObjectProcedure | T::ObjectRoutine | T::ObjectAggregate)
        ) {
            return;
        }
        let parts = match object.as_deref().and_then(|o| o.node.as_ref()) {
            Some(pb::node::Node::ObjectWithArgs(o)) => name_parts(&o.objname),
            _ => Vec::new(),
        };
        if let Some((schema, name)) = split_parts(&parts) {
            let schema = new_schema.or(schema).map(str::to_owned);
            let name = new_name.unwrap_or(name).to_owned();
            self.defines(schema.as_deref(), &name);
        }
    }

    fn create_function(&mut self, s: &pb::CreateFunctionStmt) {
        let parts = name_parts(&s.funcname);
        if let Some((schema, name)) = split_parts(&parts) {
            self.defines(schema, name);
        }
        self.object_name(
            Action::Create,
            pb::ObjectType::ObjectFunction as i32,
            &s.funcname,
        );
        if s.replace {
            // OR REPLACE may change an existing function's code.
            self.object_name(
                Action::Alter,
                pb::ObjectType::ObjectFunction as i32,
                &s.funcname,
            );
        }
        let mut language = None;
        let mut body = Vec::new();
        for o in &s.options {
            if let Some(pb::node::Node::DefElem(d)) = &o.node {
                match d.defname.as_str() {
                    "language" => {
                        language = d
                            .arg
                            .as_deref()
                            .and_then(str_of)
                            .map(str::to_ascii_lowercase)
                    }
                    "as" => body = list_strings(d.arg.as_deref()),
                    "set" => self.function_set_option(d),
                    // A planner support function runs whenever calls are planned.
                    "support" => self.named_function(d),
                    _ => {}
                }
            }
        }
        if s.sql_body.is_some() {
            // SQL-standard body (BEGIN ATOMIC ... END / RETURN ...): already parsed.
            self.visit_opt(&s.sql_body);
        } else if language.as_deref().unwrap_or("sql") == "sql" {
            // An SQL-language body is plain SQL we can read: decide what it does now.
            for text in &body {
                match analyze(text) {
                    Ok(inner) => {
                        for st in &inner.statements {
                            self.merge(st);
                        }
                    }
                    Err(e) => self.not_understood(format!("function body: {e}")),
                }
            }
        } else {
            // Procedural code (plpgsql, plpython, C...) cannot be analysed: it needs the
            // explicit `execute` allowance on `language.<name>`.
            let lang = language.unwrap_or_default();
            self.access(
                Action::Execute,
                ObjectRef::Pseudo {
                    kind: "language",
                    name: lang,
                },
            );
        }
        // Parameter defaults and types may contain expressions.
        for p in &s.parameters {
            if let Some(n) = node_ref(p) {
                self.visit(n);
            }
        }
    }

    /// Functions a CREATE AGGREGATE or CREATE TYPE names in its definition run later,
    /// whenever the aggregate or type is used, so each is decided as a call now. Options are
    /// read by name: one that names a function is recorded, a known one that doesn't is
    /// skipped, and any other option is not understood.
    fn definition_functions(&mut self, s: &pb::DefineStmt) {
        use pb::ObjectType as T;
        let (calls, plain): (&[&str], &[&str]) = match T::try_from(s.kind) {
            Ok(T::ObjectAggregate) => (
                &[
                    "sfunc",
                    "sfunc1",
                    "finalfunc",
                    "combinefunc",
                    "serialfunc",
                    "deserialfunc",
                    "msfunc",
                    "minvfunc",
                    "mfinalfunc",
                ],
                &[
                    "basetype",
                    "stype",
                    "stype1",
                    "sspace",
                    "finalfunc_extra",
                    "finalfunc_modify",
                    "initcond",
                    "initcond1",
                    "mstype",
                    "msspace",
                    "mfinalfunc_extra",
                    "mfinalfunc_modify",
                    "minitcond",
                    "sortop",
                    "parallel",
                    "hypothetical",
                ],
            ),
            Ok(T::ObjectType) => (
                &[
                    "input",
                    "output",
                    "receive",
                    "send",
                    "typmod_in",
                    "typmod_out",
                    "analyze",
                    "subscript",
                ],
                &[
                    "internallength",
                    "passedbyvalue",
                    "alignment",
                    "storage",
                    "like",
                    "category",
                    "preferred",
                    "default",
                    "element",
                    "delimiter",
                    "collatable",
                ],
            ),
            Ok(T::ObjectOperator) => (
                &["function", "procedure", "restrict", "join"],
                &[
                    "leftarg",
                    "rightarg",
                    "commutator",
                    "negator",
                    "hashes",
                    "merges",
                ],
            ),
            Ok(T::ObjectTsparser) => (&["start", "gettoken", "end", "lextypes", "headline"], &[]),
            Ok(T::ObjectTstemplate) => (&["init", "lexize"], &[]),
            // Collations and text search dictionaries and configurations name no function
            // (a dictionary's template, whose functions run, can only be created by a
            // superuser and is not mapped).
            Ok(T::ObjectCollation | T::ObjectTsdictionary | T::ObjectTsconfiguration) => return,
            _ => {
                if !s.definition.is_empty() {
                    self.not_understood("definition options of this object type");
                }
                return;
            }
        };
        for d in &s.definition {
            let Some(pb::node::Node::DefElem(d)) = &d.node else {
                self.not_understood("unexpected definition element");
                continue;
            };
            let option = d.defname.to_ascii_lowercase();
            if calls.contains(&option.as_str()) {
                self.named_function(d);
            } else if !plain.contains(&option.as_str()) {
                self.not_understood(format!("definition option {option:?}"));
            }
        }
    }

    /// `action` on an object outside schemas (`kind.name`).
    fn pseudo(&mut self, action: Action, kind: &'static str, name: &str) {
        self.access(
            action,
            ObjectRef::Pseudo {
                kind,
                name: name.to_owned(),
            },
        );
    }

    /// A function named by its name parts, recorded as a call (it runs later).
    fn function_parts(&mut self, parts: &[&str]) {
        match split_parts(parts) {
            Some((schema, name)) => self.out.functions.push(FunctionRef {
                schema: schema.map(str::to_owned),
                name: name.to_owned(),
            }),
            None => self.not_understood("a definition names no function"),
        }
    }

    /// Options given as `name = value` (DefElem) of which `calls` name functions; the
    /// `plain` ones name none; any other option is not understood. `NONE` (no value)
    /// removes a function and calls nothing.
    fn option_functions(&mut self, options: &[pb::Node], calls: &[&str], plain: &[&str]) {
        for o in options {
            let Some(pb::node::Node::DefElem(d)) = &o.node else {
                self.not_understood("unexpected option element");
                continue;
            };
            let option = d.defname.to_ascii_lowercase();
            if calls.contains(&option.as_str()) {
                if d.arg.is_some() {
                    self.named_function(d);
                }
            } else if !plain.contains(&option.as_str()) {
                self.not_understood(format!("option {option:?}"));
            }
        }
    }

    /// CREATE TYPE ... AS RANGE: creates the range type, its multirange type and their
    /// constructor functions; `canonical` and `subtype_diff` run whenever values of the type
    /// are built or indexed, so they are decided as calls.
    fn create_range(&mut self, s: &pb::CreateRangeStmt) {
        let parts = name_parts(&s.type_name);
        if !self.object_name(
            Action::Create,
            pb::ObjectType::ObjectType as i32,
            &s.type_name,
        ) {
            return;
        }
        let Some((schema, name)) = split_parts(&parts) else {
            return;
        };
        let mut multirange = None;
        for p in &s.params {
            let Some(pb::node::Node::DefElem(d)) = &p.node else {
                self.not_understood("unexpected range option element");
                continue;
            };
            match d.defname.to_ascii_lowercase().as_str() {
                "canonical" | "subtype_diff" => self.named_function(d),
                "subtype" | "subtype_opclass" | "collation" => {}
                "multirange_type_name" => {
                    let parts: Vec<&str> = match d.arg.as_deref().and_then(|a| a.node.as_ref()) {
                        Some(pb::node::Node::TypeName(t)) => name_parts(&t.names),
                        Some(pb::node::Node::List(l)) => name_parts(&l.items),
                        Some(pb::node::Node::String(s)) => vec![s.sval.as_str()],
                        _ => Vec::new(),
                    };
                    match split_parts(&parts) {
                        Some((s2, n2)) => {
                            multirange = Some((s2.or(schema).map(str::to_owned), n2.to_owned()))
                        }
                        None => self.not_understood("multirange_type_name without a name"),
                    }
                }
                other => self.not_understood(format!("range option {other:?}")),
            }
        }
        // PostgreSQL's default multirange name (makeMultirangeTypeName): the first "range"
        // in the name becomes "multirange", else "_multirange" is appended.
        let (mschema, mname) = multirange.unwrap_or_else(|| {
            let n = match name.find("range") {
                Some(i) => format!("{}multirange{}", &name[..i], &name[i + 5..]),
                None => format!("{name}_multirange"),
            };
            (schema.map(str::to_owned), n)
        });
        self.access(Action::Create, ObjectRef::rel(mschema.as_deref(), &mname));
        self.defines(schema, name);
        self.defines(mschema.as_deref(), &mname);
    }

    /// The functions of CREATE OPERATOR CLASS / ALTER OPERATOR FAMILY ... ADD: support
    /// functions run inside index scans and sorts. Operators named there already exist
    /// (their functions were decided when they were created).
    fn opclass_items(&mut self, items: &[pb::Node]) {
        const OPCLASS_ITEM_FUNCTION: i32 = 2;
        for i in items {
            let Some(pb::node::Node::CreateOpClassItem(item)) = &i.node else {
                self.not_understood("unexpected operator class item");
                continue;
            };
            if item.itemtype == OPCLASS_ITEM_FUNCTION {
                match &item.name {
                    Some(f) => self.function_parts(&name_parts(&f.objname)),
                    None => self.not_understood("operator class function without a name"),
                }
            }
        }
    }

    /// HANDLER and VALIDATOR of a foreign-data wrapper (`NO HANDLER` names none).
    fn fdw_functions(&mut self, options: &[pb::Node]) {
        self.option_functions(options, &["handler", "validator"], &[]);
    }

    /// What a publication publishes is read by every subscriber: `select` on each table
    /// (row filters decided as expressions), on a whole schema, or on the whole database.
    fn publication_objects(&mut self, objects: &[pb::Node], all_tables: bool) {
        use pb::PublicationObjSpecType as P;
        if all_tables {
            self.access(Action::Select, ObjectRef::All);
        }
        for o in objects {
            let Some(pb::node::Node::PublicationObjSpec(spec)) = &o.node else {
                self.not_understood("unexpected publication object");
                continue;
            };
            match P::try_from(spec.pubobjtype) {
                Ok(P::PublicationobjTable) => {
                    let Some(t) = &spec.pubtable else {
                        self.not_understood("publication table without a name");
                        continue;
                    };
                    if let Some(rv) = &t.relation {
                        self.claim(rv, &[Action::Select]);
                    }
                    if let Some(w) = opt_ref(&t.where_clause) {
                        self.visit(w);
                    }
                }
                Ok(P::PublicationobjTablesInSchema) => {
                    self.access(Action::Select, ObjectRef::Schema(spec.name.clone()));
                }
                // CURRENT_SCHEMA: whichever schema is first on the path at run time.
                _ => self.access(Action::Select, ObjectRef::All),
            }
        }
    }

    /// A subscription writes the rows another server publishes into local tables of the
    /// same names, whichever they are.
    fn subscription_writes(&mut self) {
        for a in [
            Action::Insert,
            Action::Update,
            Action::Delete,
            Action::Truncate,
        ] {
            self.access(a, ObjectRef::All);
        }
    }

    /// A function named as an option's value (`sfunc = pg_catalog.set_config`,
    /// `SUPPORT my_support`), recorded as a call.
    fn named_function(&mut self, d: &pb::DefElem) {
        let parts: Vec<&str> = match d.arg.as_deref().and_then(|a| a.node.as_ref()) {
            Some(pb::node::Node::TypeName(t)) => name_parts(&t.names),
            Some(pb::node::Node::List(l)) => name_parts(&l.items),
            Some(pb::node::Node::String(s)) => vec![s.sval.as_str()],
            Some(pb::node::Node::ObjectWithArgs(o)) => name_parts(&o.objname),
            _ => Vec::new(),
        };
        match split_parts(&parts) {
            Some((schema, name)) => self.out.functions.push(FunctionRef {
                schema: schema.map(str::to_owned),
                name: name.to_owned(),
            }),
            None => self.not_understood(format!("option {} names no function", d.defname)),
        }
    }

    /// `CREATE/ALTER FUNCTION ... SET name = value` changes the setting whenever the function
    /// runs (a pgward.* or search_path change inside it would fool row-level security or name
    /// resolution), so it is decided like a SET. [`crate::SessionState::apply`] ignores it.
    fn function_set_option(&mut self, d: &pb::DefElem) {
        match d.arg.as_deref().and_then(|a| a.node.as_ref()) {
            Some(pb::node::Node::VariableSetStmt(v)) => self.set(v),
            _ => self.not_understood("function SET option"),
        }
    }

    /// Folds another statement's analysis into this one (PREPARE, function bodies).
    fn merge(&mut self, inner: &StatementAnalysis) {
        self.out.accesses.extend(inner.accesses.iter().cloned());
        self.out.functions.extend(inner.functions.iter().cloned());
        self.out.attributes.extend(inner.attributes.iter().cloned());
        self.out.operators.extend(inner.operators.iter().cloned());
        self.out.casts.extend(inner.casts.iter().cloned());
        self.out
            .syntax_calls
            .extend(inner.syntax_calls.iter().cloned());
        self.out.settings.extend(inner.settings.iter().cloned());
        self.out
            .not_understood
            .extend(inner.not_understood.iter().cloned());
        if let Some(e) = &inner.executes {
            // EXECUTE inside PREPARE or a function body cannot be followed.
            self.not_understood(format!("nested EXECUTE {e}"));
        }
    }

    /// ALTER/RENAME/COMMENT/OWNER on an object given either as a RangeVar or as an object node.
    fn object_stmt(
        &mut self,
        action: Action,
        objtype: i32,
        rel: Option<&pb::RangeVar>,
        object: &Option<Box<pb::Node>>,
    ) {
        if let Some(rv) = rel {
            self.claim(rv, &[action]);
        } else if let Some(o) = object {
            self.object_node(action, objtype, o);
        } else {
            self.not_understood("statement without an object");
        }
    }

    /// ALTER SCHEMA/ROLE/DATABASE ... RENAME names the object only by its old name.
    fn rename_by_name(&mut self, objtype: i32, old: &str, new: &str) {
        use pb::ObjectType as T;
        let object = match T::try_from(objtype) {
            Ok(T::ObjectSchema) => ObjectRef::Schema(old.to_owned()),
            Ok(T::ObjectRole) => ObjectRef::Pseudo {
                kind: "role",
                name: old.to_owned(),
            },
            Ok(T::ObjectDatabase) => ObjectRef::Pseudo {
                kind: "database",
                name: old.to_owned(),
            },
            Ok(T::ObjectTablespace) => ObjectRef::Pseudo {
                kind: "tablespace",
                name: old.to_owned(),
            },
            _ => {
                self.not_understood("RENAME of an object pgward does not map");
                return;
            }
        };
        // A renamed schema is a new namespace: decided like creating it (its name may be
        // one nothing may be created under, such as pgward's own).
        if let ObjectRef::Schema(_) = &object {
            self.access(Action::Create, ObjectRef::Schema(new.to_owned()));
        }
        self.access(Action::Alter, object);
    }

    /// An object named by a node of a DROP/GRANT/COMMENT/... object list.
    fn object_node(&mut self, action: Action, objtype: i32, o: &pb::Node) {
        match &o.node {
            // DROP/COMMENT/ALTER OPERATOR CLASS|FAMILY name USING am: the access method
            // comes first in the list.
            Some(pb::node::Node::List(l))
                if objtype == pb::ObjectType::ObjectOpclass as i32
                    || objtype == pb::ObjectType::ObjectOpfamily as i32 =>
            {
                self.object_name(action, objtype, l.items.get(1..).unwrap_or(&[]));
            }
            Some(pb::node::Node::List(l)) => {
                self.object_name(action, objtype, &l.items);
            }
            Some(pb::node::Node::String(_)) => {
                self.object_name(action, objtype, std::slice::from_ref(o));
            }
            Some(pb::node::Node::ObjectWithArgs(f)) => {
                self.object_name(action, objtype, &f.objname);
            }
            Some(pb::node::Node::TypeName(t)) => {
                self.object_name(action, objtype, &t.names);
            }
            Some(pb::node::Node::RangeVar(rv)) => self.claim(rv, &[action]),
            Some(pb::node::Node::RoleSpec(r)) => {
                self.access(
                    action,
                    ObjectRef::Pseudo {
                        kind: "role",
                        name: role_name(r),
                    },
                );
            }
            Some(pb::node::Node::Integer(_))
                if objtype == pb::ObjectType::ObjectLargeobject as i32 =>
            {
                self.access(action, ObjectRef::All);
            }
            _ => self.not_understood("unrecognised object name"),
        }
    }

    /// Records `action` on an object given as name parts, interpreted by its object type.
    /// Returns false (after recording why) when the type is not one pgward maps.
    fn object_name(&mut self, action: Action, objtype: i32, items: &[pb::Node]) -> bool {
        use pb::ObjectType as T;
        let parts = name_parts(items);
        let Ok(t) = T::try_from(objtype) else {
            self.not_understood("unknown object type");
            return false;
        };
        let pseudo = |kind: &'static str| {
            parts.last().map(|n| ObjectRef::Pseudo {
                kind,
                name: (*n).to_owned(),
            })
        };
        let object = match t {
            T::ObjectTable
            | T::ObjectView
            | T::ObjectMatview
            | T::ObjectSequence
            | T::ObjectIndex
            | T::ObjectForeignTable
            | T::ObjectFunction
            | T::ObjectProcedure
            | T::ObjectRoutine
            | T::ObjectAggregate
            | T::ObjectType
            | T::ObjectDomain
            | T::ObjectCollation
            | T::ObjectConversion
            | T::ObjectStatisticExt
            | T::ObjectTsconfiguration
            | T::ObjectTsdictionary
            | T::ObjectTsparser
            | T::ObjectTstemplate
            | T::ObjectOperator
            | T::ObjectOpclass
            | T::ObjectOpfamily
            | T::ObjectColumn => {
                // A column is `[schema.]table.column`: the table is the object.
                let p: &[&str] = if t == T::ObjectColumn {
                    parts.split_last().map_or(&[], |(_, r)| r)
                } else {
                    &parts
                };
                split_parts(p).map(|(s, n)| ObjectRef::rel(s, n))
            }
            // Objects that hang off a table: `[schema.]table.name`.
            T::ObjectTrigger | T::ObjectPolicy | T::ObjectRule | T::ObjectTabconstraint => {
                let p = parts.split_last().map_or(&[][..], |(_, r)| r);
                split_parts(p).map(|(s, n)| ObjectRef::rel(s, n))
            }
            T::ObjectSchema => parts.last().map(|s| ObjectRef::Schema((*s).to_owned())),
            T::ObjectDatabase => pseudo("database"),
            T::ObjectRole => pseudo("role"),
            T::ObjectExtension => pseudo("extension"),
            T::ObjectLanguage => pseudo("language"),
            T::ObjectForeignServer => pseudo("server"),
            T::ObjectFdw => pseudo("fdw"),
            T::ObjectPublication => pseudo("publication"),
            T::ObjectSubscription => pseudo("subscription"),
            // Objects that act in every session and schema (see CREATE CAST, CREATE ACCESS
            // METHOD, CREATE EVENT TRIGGER): the whole database.
            T::ObjectCast | T::ObjectAccessMethod | T::ObjectEventTrigger | T::ObjectTransform => {
                Some(ObjectRef::All)
            }
            T::ObjectTablespace => pseudo("tablespace"),
            _ => {
                self.not_understood(format!(
                    "object type {} is not supported by pgward",
                    t.as_str_name()
                ));
                return false;
            }
        };
        match object {
            Some(o) => {
                self.access(action, o);
                true
            }
            None => {
                self.not_understood("object without a name");
                false
            }
        }
    }
}

/// Whether an UPDATE's SET item reads columns (`SET a = a + 1`), which needs SELECT.
fn references_columns(n: &pb::Node) -> bool {
    let Some(r) = node_ref(n) else { return false };
    let mut stack = vec![r];
    while let Some(n) = stack.pop() {
        if matches!(n, NodeRef::ColumnRef(_) | NodeRef::SubLink(_)) {
            return true;
        }
        children(n, &mut stack);
    }
    false
}

/// The string constant an expression is (looking through casts), if it is one.
fn const_str(n: &pb::Node) -> Option<String> {
    match &n.node {
        Some(pb::node::Node::AConst(c)) => match &c.val {
            Some(pb::a_const::Val::Sval(s)) => Some(s.sval.clone()),
            Some(pb::a_const::Val::Ival(i)) => Some(i.ival.to_string()),
            Some(pb::a_const::Val::Fval(f)) => Some(f.fval.clone()),
            Some(pb::a_const::Val::Boolval(b)) => {
                Some(if b.boolval { "on" } else { "off" }.to_owned())
            }
            _ => None,
        },
        Some(pb::node::Node::TypeCast(tc)) => tc.arg.as_deref().and_then(const_str),
        Some(pb::node::Node::String(s)) => Some(s.sval.clone()),
        _ => None,
    }
}

/// Strings of a `List` of `String` nodes (or a single `String`).
fn list_strings(n: Option<&pb::Node>) -> Vec<String> {
    match n.and_then(|n| n.node.as_ref()) {
        Some(pb::node::Node::List(l)) => l
            .items
            .iter()
            .filter_map(str_of)
            .map(str::to_owned)
            .collect(),
        Some(pb::node::Node::String(s)) => vec![s.sval.clone()],
        _ => Vec::new(),
    }
}

fn role_name(r: &pb::RoleSpec) -> String {
    match pb::RoleSpecType::try_from(r.roletype) {
        Ok(pb::RoleSpecType::RolespecCstring) => r.rolename.clone(),
        Ok(pb::RoleSpecType::RolespecPublic) => "public".to_owned(),
        _ => "current_user".to_owned(),
    }
}

/// PostgreSQL's `scanner_isspace`: the only characters it skips between identifiers.
fn scanner_isspace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// An identifier as PostgreSQL stores it: unquoted ones lose ASCII upper case only
/// (`downcase_identifier` leaves other letters alone in UTF-8), and all are cut to 63 bytes
/// (NAMEDATALEN - 1) at a character boundary.
fn fold_identifier(s: &str, quoted: bool) -> String {
    let mut out = if quoted {
        s.to_owned()
    } else {
        s.to_ascii_lowercase()
    };
    if out.len() > 63 {
        let mut cut = 63;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// PostgreSQL's `SplitIdentifierString`, which reads search_path lists and regclass input
/// (`nextval(' hr . "Seq" ')`): whitespace around each name is skipped, a quoted name keeps
/// its case and `""` is a quote, an unquoted one ends at the separator or whitespace and is
/// folded. `None` where PostgreSQL reports a syntax error.
fn split_identifier_string(s: &str, sep: char) -> Option<Vec<String>> {
    let mut it = s.chars().peekable();
    let mut out = Vec::new();
    while it.next_if(|c| scanner_isspace(*c)).is_some() {}
    if it.peek().is_none() {
        return Some(out);
    }
    loop {
        if it.next_if_eq(&'"').is_some() {
            let mut name = String::new();
            loop {
                match it.next()? {
                    '"' if it.next_if_eq(&'"').is_some() => name.push('"'),
                    '"' => break,
                    c => name.push(c),
                }
            }
            if name.is_empty() {
                return None;
            }
            out.push(fold_identifier(&name, true));
        } else {
            let mut name = String::new();
            while let Some(c) = it.next_if(|c| *c != sep && !scanner_isspace(*c)) {
                name.push(c);
            }
            if name.is_empty() {
                return None;
            }
            out.push(fold_identifier(&name, false));
        }
        while it.next_if(|c| scanner_isspace(*c)).is_some() {}
        match it.next() {
            None => return Some(out),
            Some(c) if c == sep => while it.next_if(|c| scanner_isspace(*c)).is_some() {},
            Some(_) => return None,
        }
    }
}

/// Splits a setting value given as one string (`'a, "B"'`) into identifiers, folding like
/// PostgreSQL does for search_path. An empty (or all-space) value is an empty list. A value
/// PostgreSQL would reject is split loosely at the separators (the SET then fails upstream;
/// pgward's model is only wider for it).
pub(crate) fn split_list(v: &str) -> Vec<String> {
    split_identifier_string(v, ',').unwrap_or_else(|| {
        v.split(',')
            .map(|p| fold_identifier(p.trim().trim_matches('"'), p.contains('"')))
            .collect()
    })
}

/// What a regclass argument given as a constant names, as regclass input reads it: a string
/// of digits (or an integer) is an OID, anything else a possibly qualified name
/// (`[catalog.]schema.name`). `None` when PostgreSQL would not read it as one relation.
fn regclass_constant(n: &pb::Node) -> Option<ObjectRef> {
    match &n.node {
        Some(pb::node::Node::AConst(c)) => match &c.val {
            Some(pb::a_const::Val::Ival(i)) => {
                u32::try_from(i.ival).ok().map(ObjectRef::RelationOid)
            }
            Some(pb::a_const::Val::Sval(s)) => regclass_text(&s.sval),
            _ => None,
        },
        Some(pb::node::Node::TypeCast(tc)) => tc.arg.as_deref().and_then(regclass_constant),
        _ => None,
    }
}

fn regclass_text(s: &str) -> Option<ObjectRef> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok().map(ObjectRef::RelationOid);
    }
    let (schema, name) = parse_qualified(s)?;
    Some(ObjectRef::rel(schema.as_deref(), &name))
}

/// Parses a possibly qualified name given as text (`'Public."Seq"'`), as regclass input does.
fn parse_qualified(s: &str) -> Option<(Option<String>, String)> {
    let mut parts = split_identifier_string(s, '.')?;
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let name = parts.pop()?;
    Some((parts.pop(), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_lists_fold_like_postgres() {
        assert_eq!(split_list("a, \"B\" ,c"), ["a", "B", "c"]);
        assert_eq!(split_list("\"x,y\", Z"), ["x,y", "z"]);
        assert_eq!(split_list("\"a\"\"b\""), ["a\"b"]);
        assert_eq!(split_list(""), Vec::<String>::new());
        assert_eq!(split_list("  "), Vec::<String>::new());
        assert_eq!(split_list("\"\""), [""]);
        assert_eq!(split_list("a,"), ["a", ""]);
        assert_eq!(
            parse_qualified(" Public.\"Seq\" "),
            Some((Some("public".to_owned()), "Seq".to_owned()))
        );
        assert_eq!(
            parse_qualified("db.s.t"),
            Some((Some("s".to_owned()), "t".to_owned()))
        );
        assert_eq!(parse_qualified("\"open"), None);
    }

    #[test]
    fn qualified_names_in_text() {
        assert_eq!(
            parse_qualified("Public.\"Seq\""),
            Some((Some("public".into()), "Seq".into()))
        );
        assert_eq!(parse_qualified("seq"), Some((None, "seq".into())));
        assert_eq!(parse_qualified("\"unterminated"), None);
        // As SplitIdentifierString reads them: spaces around parts, quotes only whole.
        assert_eq!(
            parse_qualified(" hr . payroll_seq "),
            Some((Some("hr".into()), "payroll_seq".into()))
        );
        assert_eq!(parse_qualified("hr.pay roll"), None);
        assert_eq!(parse_qualified("a.b.c.d"), None);
        assert_eq!(parse_qualified("hr.\"\""), None);
        assert_eq!(
            parse_qualified("HR.ÄSeq"),
            Some((Some("hr".into()), "Äseq".into()))
        );
        assert_eq!(
            parse_qualified(&"x".repeat(80)).map(|p| p.1.len()),
            Some(63)
        );
        assert_eq!(regclass_text("16415"), Some(ObjectRef::RelationOid(16415)));
        assert_eq!(
            regclass_text(" 16415"),
            Some(ObjectRef::rel(None, "16415")),
            "only a string of digits alone is an OID"
        );
        assert_eq!(regclass_text("99999999999"), None);
    }

    #[test]
    fn quoting_for_display() {
        assert_eq!(quote("orders"), "orders");
        assert_eq!(quote("Orders"), "\"Orders\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote("1x"), "\"1x\"");
    }
}
