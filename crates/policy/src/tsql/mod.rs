//! T-SQL analysis for `kind = "azure-sql"` upstreams.
//!
//! A batch is decided only when pgward reads it as SQL Server will (docs/azure-sql.md,
//! "How pgward reads T-SQL"):
//! 1. [`lexer`] reads it with SQL Server's lexical grammar; what that grammar does not
//!    cover, or pgward does not accept, is refused;
//! 2. sqlparser's `MsSqlDialect` tokenizer must produce the same tokens ([`agree`]),
//!    otherwise the batch is refused: no comment, string, number or identifier can end in
//!    a different place for pgward than for SQL Server;
//! 3. words that are never allowed (dynamic SQL, impersonation, `GO`, ...) are refused
//!    wherever they appear outside strings and comments;
//! 4. sqlparser parses it; statements may follow each other without `;` only when the next
//!    one starts with a statement keyword, as in T-SQL;
//! 5. each statement is walked ([`walk`]) into the same model the PostgreSQL analyser
//!    produces ([`StatementAnalysis`]), with names resolved as SQL Server resolves them, so
//!    one [`Policy`] decides both kinds of upstream. Reading a `sys.` catalog view (outside
//!    an exclusion list) or calling a built-in function needs no rule ([`baseline`]).
//!
//! The text forwarded is the client's own, unchanged: what was decided is what runs.
//! Anything refused on the way is denied with rule `builtin.not_understood`.

mod agree;
pub(crate) mod baseline;
mod grants;
pub mod lexer;
mod walk;

use sqlparser::dialect::MsSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserOptions};
use sqlparser::tokenizer::{Token as SpToken, Tokenizer};

use crate::analyze::{Access, Action, Analysis, AnalysisError, ObjectRef, StatementAnalysis};
use crate::decide::{Decision, QueryDecision, RoleSet, SessionState, StatementDecision, Verdict};
use crate::policy::Policy;
use lexer::{Kind, Token};
pub use walk::DEFAULT_SCHEMA;

/// Batches longer than this are refused without parsing (same limit as PostgreSQL SQL).
const MAX_TSQL_LEN: usize = 1 << 20;

/// Deepest parenthesis nesting accepted (sqlparser recurses once per level).
const MAX_PARENS: usize = 200;

/// Most operators (and JOIN / UNION / APPLY / CASE words) a batch may have. sqlparser
/// builds a left-deep tree for `1+1+1...`, and parsing, walking and dropping it recurse once
/// per operator; beyond this the batch is refused as too complex.
const MAX_OPERATORS: usize = 4000;

/// Batches with more operators and nesting than this are analysed on a thread with a big
/// stack ([`BIG_STACK`]), not on the caller's (an async worker's 2 MiB).
const SMALL_STACK_OPERATORS: usize = 64;

/// Stack for analysing complex batches (address space reserved, not memory used).
const BIG_STACK: usize = 256 << 20;

/// Operator words that nest the parse tree one level each.
const OPERATOR_WORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "join",
    "apply",
    "union",
    "except",
    "intersect",
    "case",
    "when",
];

/// Unquoted words that end the analysis wherever they appear outside strings and comments.
const FORBIDDEN_WORDS: &[(&str, &str)] = &[
    ("openrowset", "OPENROWSET reads external data"),
    ("opendatasource", "OPENDATASOURCE reads external data"),
    ("openquery", "OPENQUERY runs SQL on a linked server"),
    ("openxml", "OPENXML needs sp_xml_preparedocument"),
    ("bulk", "BULK operations read server files"),
    ("dbcc", "DBCC commands"),
    ("go", "GO is a client-tool batch separator, not T-SQL"),
    ("reconfigure", "RECONFIGURE"),
    ("shutdown", "SHUTDOWN"),
    ("kill", "KILL"),
    ("waitfor", "WAITFOR"),
    ("use", "USE changes the database"),
    ("declare", "procedural batches (DECLARE)"),
    ("goto", "procedural batches (GOTO)"),
    ("revert", "REVERT changes the session's identity"),
    ("setuser", "SETUSER changes the session's identity"),
    ("backup", "BACKUP"),
    ("restore", "RESTORE"),
    ("checkpoint", "CHECKPOINT"),
    ("readtext", "READTEXT"),
    ("writetext", "WRITETEXT"),
    ("updatetext", "UPDATETEXT"),
];

/// Pseudo-columns that only name rows of the statement itself.
const PSEUDO_COLUMNS: &[&str] = &["$action", "$identity", "$rowguid"];

/// Words a statement may start with when the one before it did not end with `;`: T-SQL
/// statement keywords that never continue a statement.
const STATEMENT_STARTS: &[Keyword] = &[
    Keyword::SELECT,
    Keyword::INSERT,
    Keyword::UPDATE,
    Keyword::DELETE,
    Keyword::MERGE,
    Keyword::EXEC,
    Keyword::EXECUTE,
    Keyword::SET,
    Keyword::PRINT,
    Keyword::THROW,
    Keyword::RAISERROR,
    Keyword::CREATE,
    Keyword::ALTER,
    Keyword::DROP,
    Keyword::TRUNCATE,
    Keyword::GRANT,
    Keyword::REVOKE,
    Keyword::DENY,
    Keyword::BEGIN,
    Keyword::END,
];

/// Lock hints on a MERGE target (`MERGE t WITH (HOLDLOCK)`), which sqlparser does not
/// parse; they change locking only.
const MERGE_HINTS: &[&str] = &[
    "holdlock",
    "serializable",
    "rowlock",
    "paglock",
    "tablock",
    "tablockx",
    "updlock",
    "xlock",
    "readcommitted",
    "readcommittedlock",
    "repeatableread",
    "nowait",
];

impl Policy {
    /// Masks are decided from PostgreSQL's parse tree and rewritten in PostgreSQL's
    /// protocol; on Azure SQL a caller with masks may not touch a table a mask names.
    fn tsql_mask_denial(&self, roles: &RoleSet, st: &crate::StatementAnalysis) -> Option<Decision> {
        let set = self.masks_for(roles);
        for a in &st.accesses {
            let crate::ObjectRef::Relation { schema, name } = &a.object else {
                continue;
            };
            let schema = schema.as_deref().unwrap_or("dbo");
            if set.may_mask_table(schema, name) {
                let mut d = Decision::deny(
                    "builtin.mask",
                    format!("masks name columns of {schema}.{name}, and pgward enforces masks on PostgreSQL upstreams only: Azure SQL statements may not touch it"),
                );
                d.enforced = self.mode == crate::Mode::Enforce;
                return Some(d);
            }
        }
        None
    }

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
            let mut decision = self.decide_tsql_statement(roles, &st, session);
            let mut mask_denied = false;
            if decision.verdict == crate::Verdict::Allow && self.has_masks(roles) {
                if let Some(d) = self.tsql_mask_denial(roles, &st) {
                    decision = d;
                    mask_denied = true;
                }
            }
            statements.push(StatementDecision {
                analysis: st,
                decision,
                masks: None,
                mask_denied,
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

    /// Reads of baseline catalog views need no allow rule (`[baseline] catalog_reads`), but
    /// deny rules still apply to them: they are decided apart, and only the default denial
    /// is waived.
    fn decide_tsql_statement(
        &self,
        roles: &RoleSet,
        st: &StatementAnalysis,
        session: &SessionState,
    ) -> Decision {
        let is_catalog = |a: &Access| {
            a.action == Action::Select
                && matches!(&a.object, ObjectRef::Relation { schema: Some(s), name }
                    if baseline::catalog_view_is_baseline(s, name))
        };
        if !self.baseline.catalog_reads || !st.accesses.iter().any(is_catalog) {
            return self.decide(roles, st, session);
        }
        let catalog = StatementAnalysis {
            kind: st.kind,
            sql: st.sql.clone(),
            accesses: st
                .accesses
                .iter()
                .filter(|a| is_catalog(a))
                .cloned()
                .collect(),
            not_understood: st.not_understood.clone(),
            ..StatementAnalysis::default()
        };
        let d = self.decide(roles, &catalog, session);
        if d.verdict == Verdict::Deny && d.rule != "default_deny" {
            return d;
        }
        let mut rest = st.clone();
        rest.accesses.retain(|a| !is_catalog(a));
        self.decide(roles, &rest, session)
    }
}

/// Why a batch is not analysed.
enum Refusal {
    /// Denied as not understood.
    NotUnderstood(String),
    /// sqlparser rejected it.
    Parse(String),
    TooComplex,
}

/// Analyses a T-SQL batch (one or more statements). `database` is the upstream database:
/// three-part names must name it. A batch pgward cannot read as SQL Server does comes
/// back as one statement that is not understood (so it is denied with rule
/// `builtin.not_understood`); one sqlparser rejects is a parse error.
pub fn analyze_tsql(sql: &str, database: Option<&str>) -> Result<Analysis, AnalysisError> {
    if sql.len() > MAX_TSQL_LEN {
        return Err(AnalysisError::TooLong {
            len: sql.len(),
            limit: MAX_TSQL_LEN,
        });
    }
    match read(sql, database) {
        Ok(a) => Ok(a),
        Err(Refusal::Parse(e)) => Err(AnalysisError::Parse(e)),
        Err(Refusal::TooComplex) => Err(AnalysisError::TooComplex),
        Err(Refusal::NotUnderstood(why)) => Ok(Analysis {
            statements: vec![StatementAnalysis {
                kind: "TSqlOther",
                sql: sql.trim().to_owned(),
                not_understood: vec![why],
                ..StatementAnalysis::default()
            }],
        }),
    }
}

fn read(sql: &str, database: Option<&str>) -> Result<Analysis, Refusal> {
    let tokens = lexer::lex(sql).map_err(|e| {
        Refusal::NotUnderstood(format!(
            "SQL Server's lexical grammar, as pgward reads it: {e}"
        ))
    })?;
    let (mut depth, mut max_depth, mut ops) = (0usize, 0usize, 0usize);
    for t in &tokens {
        if t.is_punct('(') {
            depth += 1;
            max_depth = max_depth.max(depth);
        } else if t.is_punct(')') {
            depth = depth.saturating_sub(1);
        } else if is_operator(t) {
            ops += 1;
        }
    }
    if max_depth > MAX_PARENS || ops > MAX_OPERATORS {
        return Err(Refusal::TooComplex);
    }
    if ops + max_depth <= SMALL_STACK_OPERATORS {
        return read_tokens(sql, &tokens, database);
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("pgward-tsql".to_owned())
            .stack_size(BIG_STACK)
            .spawn_scoped(scope, || read_tokens(sql, &tokens, database))
            .map_err(|e| Refusal::Parse(format!("cannot start the parser thread: {e}")))?
            .join()
            .map_err(|_| Refusal::Parse("the parser failed".to_owned()))?
    })
}

/// Whether a token nests the parse tree one level (an operator, or a word like AND, JOIN).
fn is_operator(t: &Token) -> bool {
    match t.kind {
        Kind::Punct => "+-*/%&|^~=<>!".contains(t.value.as_str()),
        Kind::Word => OPERATOR_WORDS
            .iter()
            .any(|w| t.value.eq_ignore_ascii_case(w)),
        _ => false,
    }
}

/// Checks, parses and walks a lexed batch.
fn read_tokens(sql: &str, tokens: &[Token], database: Option<&str>) -> Result<Analysis, Refusal> {
    let dialect = MsSqlDialect {};
    let theirs = Tokenizer::new(&dialect, sql).tokenize().map_err(|e| {
        Refusal::NotUnderstood(format!(
            "pgward's parser cannot read what SQL Server would: {e}"
        ))
    })?;
    agree::same_reading(sql, tokens, &theirs).map_err(Refusal::NotUnderstood)?;
    if let Some(why) = forbidden(tokens) {
        return Err(Refusal::NotUnderstood(why));
    }
    let parse_text = blank_unparsed_clauses(sql, tokens);
    let parsed = parse(&parse_text)?;
    let single = parsed.len() == 1;
    let mut statements = Vec::with_capacity(parsed.len());
    for stmt in &parsed {
        let Some(kind) = kind_of(stmt) else { continue };
        let mut w = walk::Walk::new(database);
        let _ = sqlparser::ast::Visit::visit(stmt, &mut w);
        let mut out = w.out;
        out.kind = kind;
        // One statement: the client's own text; several: each re-rendered by the parser.
        out.sql = if single {
            sql.trim().to_owned()
        } else {
            stmt.to_string()
        };
        out.accesses.sort();
        out.accesses.dedup();
        out.functions.sort();
        out.functions.dedup();
        statements.push(out);
    }
    Ok(Analysis { statements })
}

/// Parses the batch. Statements are separated by `;` or, as T-SQL allows, by nothing when
/// the next one starts with a statement keyword that never continues a statement.
fn parse(text: &str) -> Result<Vec<sqlparser::ast::Statement>, Refusal> {
    let dialect = MsSqlDialect {};
    let options = ParserOptions {
        require_semicolon_stmt_delimiter: false,
        ..ParserOptions::default()
    };
    let mut p = Parser::new(&dialect)
        .with_recursion_limit(MAX_PARENS)
        .with_options(options)
        .try_with_sql(text)
        .map_err(|e| Refusal::Parse(e.to_string()))?;
    let mut out = Vec::new();
    loop {
        let mut separated = out.is_empty();
        while p.consume_token(&SpToken::SemiColon) {
            separated = true;
        }
        let next = &p.peek_token_ref().token;
        if *next == SpToken::EOF {
            break;
        }
        if !separated {
            let starts = matches!(next, SpToken::Word(w)
                if w.quote_style.is_none() && STATEMENT_STARTS.contains(&w.keyword));
            if !starts {
                return Err(Refusal::Parse(format!(
                    "expected the end of the statement, found {next}"
                )));
            }
        }
        out.push(
            p.parse_statement()
                .map_err(|e| Refusal::Parse(e.to_string()))?,
        );
    }
    Ok(out)
}

/// The kind recorded for a statement; `None` for the markers of a TRY ... CATCH block,
/// which do nothing themselves (the statements between them are analysed one by one).
fn kind_of(stmt: &sqlparser::ast::Statement) -> Option<&'static str> {
    use sqlparser::ast::{Statement, TransactionModifier};
    let try_catch = |m: &Option<TransactionModifier>| {
        matches!(
            m,
            Some(TransactionModifier::Try | TransactionModifier::Catch)
        )
    };
    Some(match stmt {
        Statement::StartTransaction { modifier, .. } if try_catch(modifier) => return None,
        Statement::Commit {
            end: true,
            modifier,
            ..
        } if try_catch(modifier) => return None,
        Statement::StartTransaction {
            has_end_keyword: true,
            ..
        } => "TSqlBlock",
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
        Statement::Print(_) => "TSqlPrint",
        Statement::Throw(_) | Statement::RaisError { .. } => "TSqlThrow",
        _ => "TSqlOther",
    })
}

/// Looks at every token as SQL Server reads it; returns why the batch is refused.
fn forbidden(tokens: &[Token]) -> Option<String> {
    for (i, t) in tokens.iter().enumerate() {
        let v = t.value.to_ascii_lowercase();
        let next = tokens.get(i + 1);
        match t.kind {
            Kind::Word => {
                if let Some((_, why)) = FORBIDDEN_WORDS.iter().find(|(w, _)| *w == v) {
                    return Some((*why).to_owned());
                }
                if v == "exec" || v == "execute" {
                    match next {
                        Some(n) if n.is_word("as") => {
                            return Some("EXECUTE AS changes the session's identity".into())
                        }
                        Some(n)
                            if n.is_punct('(')
                                || matches!(
                                    n.kind,
                                    Kind::String | Kind::NString | Kind::Variable
                                ) =>
                        {
                            return Some("dynamic SQL (EXEC of a string or variable)".into())
                        }
                        _ => {}
                    }
                }
            }
            // Only EXEC's named parameters (`@p = 1`); nothing declares variables.
            Kind::Variable if !v.starts_with("@@") && !next.is_some_and(|n| n.is_punct('=')) => {
                return Some(format!("procedural batches (variable {})", t.value));
            }
            Kind::PseudoColumn if !PSEUDO_COLUMNS.contains(&v.as_str()) => {
                return Some(format!("pseudo-column {}", t.value));
            }
            _ => {}
        }
        // System procedures, however they are named or quoted.
        if matches!(t.kind, Kind::Word | Kind::Quoted(_)) {
            let name = v.trim_end_matches(' ');
            if name == "sp_executesql" {
                return Some("dynamic SQL (sp_executesql)".into());
            }
            if name.starts_with("xp_") || name.starts_with("sp_") {
                return Some(format!("system procedure {name}"));
            }
        }
    }
    None
}

/// The text given to sqlparser: the batch with clauses it does not parse, and that only
/// limit or lock, replaced by spaces (same length, so positions hold). The text SQL Server
/// gets is the client's, clauses included.
/// - `TOP (n) [PERCENT]` right after DELETE / UPDATE / INSERT / MERGE;
/// - lock hints on a MERGE target: `MERGE [INTO] t WITH (HOLDLOCK)`;
/// - query hints made of words and numbers: `OPTION (RECOMPILE, MAXDOP 1)`.
fn blank_unparsed_clauses(sql: &str, tokens: &[Token]) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let dml = ["delete", "update", "insert", "merge"]
            .iter()
            .any(|w| t.is_word(w));
        if !dml {
            continue;
        }
        let at = |k: usize| tokens.get(i + k);
        let top = at(1).is_some_and(|x| x.is_word("top"))
            && at(2).is_some_and(|x| x.is_punct('('))
            && at(3).is_some_and(|x| x.kind == Kind::Number)
            && at(4).is_some_and(|x| x.is_punct(')'));
        if let (true, Some(first), Some(last)) = (top, at(1), at(4)) {
            let end = match at(5) {
                Some(p) if p.is_word("percent") => p.end,
                _ => last.end,
            };
            ranges.push((first.start, end));
        }
        if t.is_word("merge") {
            // MERGE [INTO] name(.name)* WITH ( hint [, hint]* )
            let mut k = i + 1;
            if tokens.get(k).is_some_and(|x| x.is_word("into")) {
                k += 1;
            }
            loop {
                match tokens.get(k) {
                    Some(x)
                        if matches!(x.kind, Kind::Word | Kind::Quoted(_)) && !x.is_word("with") =>
                    {
                        k += 1
                    }
                    _ => break,
                }
                if tokens.get(k).is_some_and(|x| x.is_punct('.')) {
                    k += 1;
                } else {
                    break;
                }
            }
            let with = k;
            if !(tokens.get(with).is_some_and(|x| x.is_word("with"))
                && tokens.get(with + 1).is_some_and(|x| x.is_punct('(')))
            {
                continue;
            }
            let mut j = with + 2;
            let mut ok = false;
            while let Some(x) = tokens.get(j) {
                let hint = x.kind == Kind::Word
                    && MERGE_HINTS.contains(&x.value.to_ascii_lowercase().as_str());
                if !hint {
                    break;
                }
                match tokens.get(j + 1) {
                    Some(s) if s.is_punct(',') => j += 2,
                    Some(s) if s.is_punct(')') => {
                        ok = true;
                        j += 1;
                        break;
                    }
                    _ => break,
                }
            }
            if let (true, Some(first), Some(last)) = (ok, tokens.get(with), tokens.get(j)) {
                ranges.push((first.start, last.end));
            }
        }
    }
    // OPTION (RECOMPILE, MAXDOP 1, ...): query hints of words and numbers, at the level of
    // the statement (not inside parentheses).
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        if t.is_punct('(') {
            depth += 1;
        } else if t.is_punct(')') {
            depth = depth.saturating_sub(1);
        }
        if depth != 0 || !t.is_word("option") || !tokens.get(i + 1).is_some_and(|x| x.is_punct('('))
        {
            continue;
        }
        let mut j = i + 2;
        while tokens
            .get(j)
            .is_some_and(|x| matches!(x.kind, Kind::Word | Kind::Number) || x.is_punct(','))
        {
            j += 1;
        }
        if let Some(close) = tokens.get(j).filter(|x| x.is_punct(')') && j > i + 2) {
            ranges.push((t.start, close.end));
        }
    }
    if ranges.is_empty() {
        return sql.to_owned();
    }
    let mut bytes = sql.as_bytes().to_vec();
    for (from, to) in ranges {
        for b in bytes.iter_mut().take(to).skip(from) {
            *b = b' ';
        }
    }
    // Whole characters were replaced by ASCII spaces, so the text is still UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|_| sql.to_owned())
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

#[cfg(test)]
mod stack_tests {
    use crate::analyze::AnalysisError;

    fn on_small_stack(sql: String) -> Result<usize, AnalysisError> {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || super::analyze_tsql(&sql, None).map(|a| a.statements.len()))
            .unwrap()
            .join()
            .unwrap()
    }

    /// Long operator chains neither overflow a 2 MiB async worker's stack nor get parsed
    /// beyond the limit.
    #[test]
    fn long_chains_on_a_small_stack() {
        // Parsed on the big stack.
        assert_eq!(
            on_small_stack(format!("SELECT 1{}", "+1".repeat(3_990))),
            Ok(1)
        );
        // Parsed or refused (sqlparser's recursion limit), never a crash.
        for sql in [
            format!("SELECT 1 WHERE 1=1{}", " AND 1=1".repeat(1_900)),
            format!("SELECT {}1", "~".repeat(3_990)),
            format!("SELECT * FROM t{}", " JOIN t ON 1=1".repeat(1_900)),
            format!("SELECT 1{}", " UNION SELECT 1".repeat(3_990)),
            format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200)),
        ] {
            let _ = on_small_stack(sql);
        }
        for sql in [
            format!("SELECT 1{}", "+1".repeat(200_000)),
            format!("SELECT {}1", "~".repeat(100_000)),
            format!("SELECT {}1{}", "(".repeat(201), ")".repeat(201)),
        ] {
            assert_eq!(on_small_stack(sql), Err(AnalysisError::TooComplex));
        }
    }
}
