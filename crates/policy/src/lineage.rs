//! How one statement's results are masked for a caller, or why it is denied: decided
//! from PostgreSQL's own parse tree and the upstream server's catalog (columns, view
//! definitions), never from column names in the result: names and aliases are the
//! caller's to choose. The planner understands a fixed set of forms and denies anything
//! else that reaches a masked column (see docs/masking.md):
//! - a masked column returned as itself (through aliases, subqueries, CTEs, views, set
//!   operations, `RETURNING`, cursors) keeps its mask;
//! - a value computed from one by a function that cannot fail or branch on it (string
//!   concatenation, `lower`, `coalesce`, casts to a string type, ...) is returned as NULL;
//! - any other use (filters, joins, ordering, grouping, function arguments, casts that can
//!   fail, copying into a table) is denied, except equality filters a mask opts into and
//!   equality between two `hash`-masked values, which the hash reveals anyway.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use pg_query::protobuf as pb;
use pg_query::protobuf::node::Node as N;
use pg_query::NodeRef;

use crate::analyze::{FunctionRef, StatementAnalysis};
use crate::mask::{ColumnMask, MaskDenial, MaskKind, MaskPlan, OutputMask};
use crate::mask_rules::MaskSet;
use crate::server_catalog::{Relation, ServerCatalog};

/// What the planner needs to know of the session: names resolve as the server will
/// resolve them for it.
pub(crate) trait SessionView {
    /// The upstream server's catalog.
    fn server_catalog(&self) -> Option<&ServerCatalog>;
    /// The (schema, name) pairs an unqualified relation name may resolve to, in order.
    fn relation_candidates(&self, name: &str) -> Vec<(String, String)>;
    /// Whether a call certainly reaches a function initdb created.
    fn calls_builtin(&self, f: &FunctionRef) -> bool;
    /// The text of a statement prepared under `name` (SQL PREPARE).
    fn prepared_sql(&self, name: &str) -> Option<String>;
}

/// The derivation of one value: which masked columns it carries and how.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lin {
    Clear,
    Plain(Arc<ColumnMask>),
    Derived(BTreeSet<String>),
}

impl Lin {
    fn is_clear(&self) -> bool {
        matches!(self, Lin::Clear)
    }

    fn names(&self) -> BTreeSet<String> {
        match self {
            Lin::Clear => BTreeSet::new(),
            Lin::Plain(m) => BTreeSet::from([m.column.clone()]),
            Lin::Derived(s) => s.clone(),
        }
    }

    /// The value computed from `self` and `other` (never plain).
    fn derive(self, other: Lin) -> Lin {
        let mut s = self.names();
        s.extend(other.names());
        if s.is_empty() {
            Lin::Clear
        } else {
            Lin::Derived(s)
        }
    }

    /// Both inputs of a set operation: the same plain column stays plain.
    fn merge(self, other: Lin) -> Lin {
        match (self, other) {
            (Lin::Clear, Lin::Clear) => Lin::Clear,
            (Lin::Plain(a), Lin::Clear) | (Lin::Clear, Lin::Plain(a)) => Lin::Plain(a),
            (Lin::Plain(a), Lin::Plain(b)) if a.kind == b.kind => Lin::Plain(a),
            (a, b) => a.derive(b),
        }
    }

    fn first_name(&self) -> String {
        self.names().into_iter().next().unwrap_or_default()
    }
}

/// A column visible in a FROM scope.
#[derive(Debug, Clone)]
struct Col {
    name: String,
    lin: Lin,
}

/// A FROM item visible by name.
#[derive(Debug, Clone)]
struct Item {
    /// The name it is referred to by (alias, or the relation's own name).
    name: String,
    /// The schema, for `schema.table.column` references (relations without an alias).
    schema: Option<String>,
    /// `None`: columns pgward does not know (a system relation or a function's result),
    /// none of them masked.
    cols: Option<Vec<Col>>,
}

type Deny = MaskDenial;

fn deny(column: &Lin, what: impl fmt::Display) -> Deny {
    let rule = match column {
        Lin::Plain(m) => m.rule.clone(),
        _ => "builtin.mask".to_owned(),
    };
    MaskDenial {
        rule,
        reason: format!(
            "{} is masked for you, so it may be returned only as itself: {what}",
            column.first_name()
        ),
    }
}

fn unsupported(what: impl fmt::Display) -> Deny {
    MaskDenial {
        rule: "builtin.mask".to_owned(),
        reason: what.to_string(),
    }
}

const MAX_DEPTH: usize = 64;
const MAX_VIEW_DEPTH: usize = 16;

/// Functions that cannot fail or branch on a string argument: a masked value may go
/// through them, and the result is returned as NULL.
const SAFE_FUNCTIONS: &[&str] = &[
    "concat",
    "concat_ws",
    "lower",
    "upper",
    "btrim",
    "ltrim",
    "rtrim",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "md5",
    "count",
    "min",
    "max",
    "string_agg",
    "array_agg",
];

/// String types a masked value may be cast to (such a cast cannot fail).
const STRING_TYPES: &[&str] = &["text", "varchar", "bpchar", "name"];

/// Relations whose rows are statistics of other tables' values (most common values,
/// histogram bounds): a caller with masks may not read them.
const STATISTICS_RELATIONS: &[&str] = &[
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
];

struct Planner<'a> {
    catalog: &'a ServerCatalog,
    session: &'a dyn SessionView,
    masks: &'a MaskSet,
    /// FROM scopes, innermost last (outer ones for correlated references).
    scopes: Vec<Vec<Item>>,
    /// CTEs in scope, innermost last.
    ctes: Vec<Vec<(String, Vec<Col>)>>,
    depth: usize,
    views: Vec<u32>,
    /// Masked columns read anywhere.
    read: BTreeSet<String>,
    origins: Vec<(u32, i16, Arc<ColumnMask>)>,
    /// Whether any relation with a masked column (or a view over one) was read.
    touched: bool,
}

/// Plans one statement (its own text) for a caller with masks. `Ok(None)`: no masked
/// column is reachable, the statement's results pass untouched.
pub(crate) fn plan_statement(
    sql: &str,
    session: &dyn SessionView,
    masks: &MaskSet,
) -> Result<Option<MaskPlan>, MaskDenial> {
    let Some(catalog) = session.server_catalog().filter(|c| c.has_columns()) else {
        return Err(unsupported(
            "masks apply to you, and pgward has not read the upstream server's columns and views to decide them",
        ));
    };
    let parsed = crate::parser::parse(sql).map_err(|_| {
        unsupported(
            "masks apply to you, and pgward could not read this statement again to decide them",
        )
    })?;
    let mut p = Planner {
        catalog,
        session,
        masks,
        scopes: Vec::new(),
        ctes: Vec::new(),
        depth: 0,
        views: Vec::new(),
        read: BTreeSet::new(),
        origins: Vec::new(),
        touched: false,
    };
    let mut outputs = Vec::new();
    for raw in &parsed.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        outputs = p.statement(node)?;
    }
    if !p.touched {
        return Ok(None);
    }
    for c in &outputs {
        if let Lin::Plain(m) = &c.lin {
            if !m.kind.fits(m.type_oid, m.category) {
                return Err(MaskDenial {
                    rule: m.rule.clone(),
                    reason: format!(
                        "mask {} of {} does not fit its type (use null or redact)",
                        m.kind.name(),
                        m.column
                    ),
                });
            }
        }
    }
    let outputs = outputs
        .into_iter()
        .map(|c| match c.lin {
            Lin::Clear => OutputMask::Clear,
            Lin::Plain(m) => OutputMask::Column(m),
            Lin::Derived(s) => OutputMask::Derived(s.into_iter().collect()),
        })
        .collect();
    Ok(Some(MaskPlan {
        outputs,
        columns: p.read.into_iter().collect(),
        origins: p.origins,
    }))
}

/// Whether a statement needs planning at all: it names a relation outside the system
/// schemas (or a statistics view), or calls a function that is not built in.
pub(crate) fn may_touch(stmt: &StatementAnalysis) -> bool {
    use crate::analyze::ObjectRef;
    stmt.accesses.iter().any(|a| match &a.object {
        ObjectRef::Relation { schema, name } => {
            !matches!(schema.as_deref(), Some("pg_catalog" | "information_schema"))
                || STATISTICS_RELATIONS.contains(&name.as_str())
        }
        ObjectRef::RelationOid(_) | ObjectRef::All | ObjectRef::Schema(_) => true,
        ObjectRef::Pseudo { .. } => false,
    }) || stmt.executes.is_some()
        || stmt.fetches.is_some()
}

fn str_node(n: &pb::Node) -> Option<&str> {
    match &n.node {
        Some(N::String(s)) => Some(&s.sval),
        _ => None,
    }
}

fn names(list: &[pb::Node]) -> Vec<String> {
    list.iter()
        .filter_map(str_node)
        .map(str::to_owned)
        .collect()
}

fn is_const_or_param(n: &pb::Node) -> bool {
    match &n.node {
        Some(N::AConst(_)) | Some(N::ParamRef(_)) => true,
        Some(N::TypeCast(tc)) => tc.arg.as_deref().is_some_and(is_const_or_param),
        _ => false,
    }
}

impl Planner<'_> {
    fn enter(&mut self) -> Result<(), Deny> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(unsupported(
                "masks apply to you, and this statement nests too deeply to decide them",
            ));
        }
        Ok(())
    }

    /// A top-level statement: its output columns.
    fn statement(&mut self, node: &N) -> Result<Vec<Col>, Deny> {
        self.enter()?;
        let r = match node {
            N::SelectStmt(s) => self.select(s),
            N::InsertStmt(s) => self.insert(s),
            N::UpdateStmt(s) => self.update(s),
            N::DeleteStmt(s) => self.delete(s),
            N::DeclareCursorStmt(d) => match d.query.as_deref().and_then(|q| q.node.as_ref()) {
                Some(q) => self.statement(q),
                None => Ok(Vec::new()),
            },
            N::ExplainStmt(e) => {
                // EXPLAIN ANALYZE runs the statement and reports row counts: decided as
                // the statement; its own output is plan text.
                if let Some(q) = e.query.as_deref().and_then(|q| q.node.as_ref()) {
                    self.statement(q)?;
                }
                Ok(Vec::new())
            }
            N::CopyStmt(c) => self.copy(c),
            N::CreateTableAsStmt(c) => {
                if let Some(q) = c.query.as_deref().and_then(|q| q.node.as_ref()) {
                    let cols = self.statement(q)?;
                    if let Some(c) = cols.iter().find(|c| !c.lin.is_clear()) {
                        return Err(deny(
                            &c.lin,
                            "CREATE TABLE AS / SELECT INTO would copy it into a table",
                        ));
                    }
                }
                Ok(Vec::new())
            }
            N::MergeStmt(m) => {
                let mut touches = false;
                if let Some(rv) = &m.relation {
                    touches |= self.relation_may_mask(rv);
                }
                if touches || self.mentions_any(NodeRef::MergeStmt(m))? {
                    return Err(unsupported(
                        "MERGE on data with masked columns is not decided by pgward's masks; use INSERT, UPDATE or DELETE",
                    ));
                }
                Ok(Vec::new())
            }
            N::ViewStmt(_) => {
                // Creating a view moves no data; reading it later is decided through its
                // definition.
                Ok(Vec::new())
            }
            // Planned as its statement; an EXECUTE plans the PREPARE's text again.
            N::PrepareStmt(p) => match p.query.as_deref().and_then(|q| q.node.as_ref()) {
                Some(q) => self.statement(q),
                None => Ok(Vec::new()),
            },
            N::ExecuteStmt(e) => match self.session.prepared_sql(&e.name) {
                Some(sql) => {
                    let parsed = crate::parser::parse(&sql).map_err(|_| {
                        unsupported("masks apply to you, and pgward could not read the prepared statement again")
                    })?;
                    let mut out = Vec::new();
                    for raw in &parsed.stmts {
                        if let Some(n) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
                            out = self.statement(n)?;
                        }
                    }
                    Ok(out)
                }
                None => Err(unsupported(format!(
                    "masks apply to you, and pgward did not see {:?} prepared",
                    e.name
                ))),
            },
            // Statements that read no values: their ordinary rules decide them.
            N::TruncateStmt(_) | N::LockStmt(_) | N::VacuumStmt(_) => Ok(Vec::new()),
            N::FetchStmt(_) => {
                // Decided as the cursor's query (the proxy keeps its plan).
                Ok(Vec::new())
            }
            other => {
                if self.mentions_any(other.to_ref())? {
                    return Err(unsupported(
                        "masks apply to you, and this kind of statement reads a relation with masked columns",
                    ));
                }
                Ok(Vec::new())
            }
        };
        self.depth -= 1;
        r
    }

    /// Whether any relation a subtree names may have masked columns, or any column it
    /// names carries a masked value in the current scopes (for statement kinds the
    /// planner does not follow in detail).
    fn mentions_any(&mut self, node: NodeRef<'_>) -> Result<bool, Deny> {
        let mut stack = vec![node];
        let mut kids = Vec::new();
        while let Some(n) = stack.pop() {
            match n {
                NodeRef::RangeVar(rv) if self.relation_may_mask(rv) => return Ok(true),
                NodeRef::ColumnRef(cr) if !self.column_ref_lenient(cr).is_clear() => {
                    return Ok(true)
                }
                _ => {}
            }
            kids.clear();
            crate::walk_gen::children(n, &mut kids);
            stack.append(&mut kids);
        }
        Ok(false)
    }

    /// Whether a named relation is (or may resolve to) one with masked columns or a view.
    fn relation_may_mask(&mut self, rv: &pb::RangeVar) -> bool {
        match self.resolve(rv) {
            Ok(Some(rels)) => rels.iter().any(|r| {
                r.definition.is_some()
                    || r.columns.iter().any(|c| {
                        self.masks
                            .column_mask(&r.schema, &r.name, &c.name)
                            .is_some()
                            || r.ancestors
                                .iter()
                                .any(|(s, t)| self.masks.column_mask(s, t, &c.name).is_some())
                    })
            }),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// The relations an unqualified or qualified name may resolve to (`None`: a system
    /// relation, no masks). Unknown names are denied: a relation created since the
    /// catalog was read could be a view over masked columns.
    fn resolve(&self, rv: &pb::RangeVar) -> Result<Option<Vec<Arc<Relation>>>, Deny> {
        let name = &rv.relname;
        if STATISTICS_RELATIONS.contains(&name.as_str())
            && (rv.schemaname.is_empty() || rv.schemaname == "pg_catalog")
        {
            return Err(unsupported(format!(
                "masks apply to you, and {name} shows values of columns (most common values, histograms)"
            )));
        }
        if !rv.schemaname.is_empty() {
            if let Some(r) = self.catalog.relation(&rv.schemaname, name) {
                return Ok(Some(vec![r]));
            }
            if matches!(rv.schemaname.as_str(), "pg_catalog" | "information_schema") {
                return Ok(None);
            }
            return Err(unknown_relation(&format!("{}.{}", rv.schemaname, name)));
        }
        let mut found: Vec<Arc<Relation>> = self.catalog.temp_relations(name);
        let mut system = false;
        for (s, n) in self.session.relation_candidates(name) {
            if s == "pg_catalog" {
                system = true;
                continue;
            }
            if let Some(r) = self.catalog.relation(&s, &n) {
                found.push(r);
            }
        }
        if found.is_empty() {
            if system {
                return Ok(None);
            }
            return Err(unknown_relation(name));
        }
        if system {
            // pg_catalog is searched first unless a path moved it: the user relation may
            // still be the one read.
            return Ok(Some(found));
        }
        Ok(Some(found))
    }

    /// The columns of a relation as a FROM item, with their masks.
    fn relation_item(&mut self, rv: &pb::RangeVar) -> Result<Item, Deny> {
        if rv.schemaname.is_empty() {
            if let Some(cols) = self.cte(&rv.relname) {
                let name = rv
                    .alias
                    .as_ref()
                    .map_or_else(|| rv.relname.clone(), |a| a.aliasname.clone());
                let cols = rename(cols, rv.alias.as_ref());
                return Ok(Item {
                    name,
                    schema: None,
                    cols: Some(cols),
                });
            }
        }
        let name = rv
            .alias
            .as_ref()
            .map_or_else(|| rv.relname.clone(), |a| a.aliasname.clone());
        let schema = rv
            .alias
            .is_none()
            .then(|| rv.schemaname.clone())
            .filter(|s| !s.is_empty());
        let Some(rels) = self.resolve(rv)? else {
            return Ok(Item {
                name,
                schema,
                cols: None,
            });
        };
        // Several relations the name may resolve to: the columns of each, merged; they
        // must line up, or which output is masked cannot be told.
        let mut cols: Option<Vec<Col>> = None;
        for r in &rels {
            let these = self.relation_columns(r)?;
            cols = Some(match cols {
                None => these,
                Some(prev) => {
                    let same_shape = prev.len() == these.len()
                        && prev.iter().zip(&these).all(|(a, b)| a.name == b.name);
                    let any_masked = prev.iter().chain(&these).any(|c| !c.lin.is_clear());
                    if !same_shape && any_masked {
                        return Err(unsupported(format!(
                            "masks apply to you, and {:?} may name different relations in this session (search_path): qualify it with its schema",
                            rv.relname
                        )));
                    }
                    prev.into_iter()
                        .zip(these)
                        .map(|(a, b)| Col {
                            name: a.name,
                            lin: a.lin.merge(b.lin),
                        })
                        .collect()
                }
            });
        }
        let cols = cols.map(|c| rename(c, rv.alias.as_ref()));
        Ok(Item { name, schema, cols })
    }

    /// A relation's columns with the caller's masks; a view's from its definition.
    fn relation_columns(&mut self, r: &Arc<Relation>) -> Result<Vec<Col>, Deny> {
        if let Some(def) = &r.definition {
            if self.views.contains(&r.oid) || self.views.len() >= MAX_VIEW_DEPTH {
                return Err(unsupported(format!(
                    "masks apply to you, and view {}.{} nests views too deeply to decide them",
                    r.schema, r.name
                )));
            }
            let parsed = crate::parser::parse(def).map_err(|_| {
                unsupported(format!(
                    "masks apply to you, and pgward could not read the definition of view {}.{}",
                    r.schema, r.name
                ))
            })?;
            let Some(N::SelectStmt(s)) = parsed
                .stmts
                .first()
                .and_then(|raw| raw.stmt.as_ref())
                .and_then(|s| s.node.as_ref())
            else {
                return Err(unsupported(format!(
                    "masks apply to you, and the definition of view {}.{} is not a query pgward reads",
                    r.schema, r.name
                )));
            };
            // A view's query sees only its own names: no outer scopes, no CTEs.
            self.views.push(r.oid);
            let scopes = std::mem::take(&mut self.scopes);
            let ctes = std::mem::take(&mut self.ctes);
            let out = self.select(s);
            self.scopes = scopes;
            self.ctes = ctes;
            self.views.pop();
            let out = out?;
            let mut cols = Vec::with_capacity(r.columns.len());
            for (i, c) in r.columns.iter().enumerate() {
                let mut lin = out.get(i).map_or(Lin::Clear, |o| o.lin.clone());
                // A mask may name the view's own column too: the stricter one applies
                // (a computed value stays NULL whatever the view's mask says).
                if let Some(mut m) = self.masks.column_mask(&r.schema, &r.name, &c.name) {
                    m.type_oid = c.type_oid;
                    m.category = c.category;
                    lin = match lin {
                        Lin::Plain(under) if under.kind.reveals() <= m.kind.reveals() => {
                            Lin::Plain(under)
                        }
                        Lin::Derived(d) => Lin::Derived(d),
                        _ => Lin::Plain(Arc::new(m)),
                    };
                }
                if let Lin::Plain(m) = &lin {
                    self.origins.push((r.oid, c.attnum, Arc::clone(m)));
                }
                cols.push(Col {
                    name: c.name.clone(),
                    lin,
                });
            }
            return Ok(cols);
        }
        let mut cols = Vec::with_capacity(r.columns.len());
        for c in &r.columns {
            // A partition or inheritance child carries its parents' masks.
            let mask = self
                .masks
                .column_mask(&r.schema, &r.name, &c.name)
                .or_else(|| {
                    r.ancestors
                        .iter()
                        .find_map(|(s, t)| self.masks.column_mask(s, t, &c.name))
                });
            let lin = match mask {
                Some(mut m) => {
                    m.type_oid = c.type_oid;
                    m.category = c.category;
                    let m = Arc::new(m);
                    self.origins.push((r.oid, c.attnum, Arc::clone(&m)));
                    Lin::Plain(m)
                }
                None => Lin::Clear,
            };
            cols.push(Col {
                name: c.name.clone(),
                lin,
            });
        }
        Ok(cols)
    }

    /// A table written to: a failed write's error may quote its whole row (`Failing row
    /// contains ...`), so the statement's errors are withheld when it has masked columns.
    fn note_target(&mut self, target: &Item) {
        if target.cols.iter().flatten().any(|c| !c.lin.is_clear()) {
            self.touched = true;
        }
    }

    fn cte(&self, name: &str) -> Option<Vec<Col>> {
        self.ctes
            .iter()
            .rev()
            .flat_map(|level| level.iter())
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
    }

    fn with_clause(&mut self, w: &pb::WithClause) -> Result<(), Deny> {
        self.ctes.push(Vec::new());
        for cte in &w.ctes {
            let Some(N::CommonTableExpr(c)) = &cte.node else {
                continue;
            };
            let Some(q) = c.ctequery.as_deref().and_then(|q| q.node.as_ref()) else {
                continue;
            };
            let cols = if w.recursive {
                // A recursive CTE is read only when nothing in it reaches a masked column.
                if self.mentions_any(q.to_ref())? {
                    return Err(unsupported(
                        "masks apply to you, and a recursive CTE that reads masked columns is not decided",
                    ));
                }
                // Its columns are clear; their number is known from the column list only.
                let names = names(&c.aliascolnames);
                names
                    .into_iter()
                    .map(|name| Col {
                        name,
                        lin: Lin::Clear,
                    })
                    .collect()
            } else {
                let out = self.statement(q)?;
                rename_to(out, &names(&c.aliascolnames))
            };
            if let Some(level) = self.ctes.last_mut() {
                level.push((c.ctename.clone(), cols));
            }
        }
        Ok(())
    }

    fn select(&mut self, s: &pb::SelectStmt) -> Result<Vec<Col>, Deny> {
        self.enter()?;
        let pushed_with = s.with_clause.is_some();
        if let Some(w) = &s.with_clause {
            self.with_clause(w)?;
        }
        let r = self.select_body(s);
        if pushed_with {
            self.ctes.pop();
        }
        self.depth -= 1;
        r
    }

    fn select_body(&mut self, s: &pb::SelectStmt) -> Result<Vec<Col>, Deny> {
        let op = s.op;
        if op != pb::SetOperation::SetopNone as i32 && op != pb::SetOperation::Undefined as i32 {
            let l = match &s.larg {
                Some(l) => self.select(l)?,
                None => Vec::new(),
            };
            let r = match &s.rarg {
                Some(r) => self.select(r)?,
                None => Vec::new(),
            };
            let dedupe = !s.all || op != pb::SetOperation::SetopUnion as i32;
            let mut out = Vec::with_capacity(l.len());
            for (i, a) in l.into_iter().enumerate() {
                let b = r.get(i).map_or(Lin::Clear, |c| c.lin.clone());
                if dedupe {
                    // UNION, INTERSECT and EXCEPT compare values.
                    for lin in [&a.lin, &b] {
                        equality_use(lin, "UNION, INTERSECT or EXCEPT compares it")?;
                    }
                }
                out.push(Col {
                    name: a.name,
                    lin: a.lin.merge(b),
                });
            }
            self.order_limit(s, &out)?;
            return Ok(out);
        }
        if !s.values_lists.is_empty() {
            let mut out: Vec<Col> = Vec::new();
            for row in &s.values_lists {
                let Some(N::List(l)) = &row.node else {
                    continue;
                };
                for (i, v) in l.items.iter().enumerate() {
                    let lin = self.value(v)?;
                    match out.get_mut(i) {
                        Some(c) => c.lin = c.lin.clone().merge(lin),
                        None => out.push(Col {
                            name: format!("column{}", i + 1),
                            lin,
                        }),
                    }
                }
            }
            self.order_limit(s, &out)?;
            return Ok(out);
        }
        self.scopes.push(Vec::new());
        let r = self.simple_select(s);
        self.scopes.pop();
        r
    }

    fn simple_select(&mut self, s: &pb::SelectStmt) -> Result<Vec<Col>, Deny> {
        for f in &s.from_clause {
            let item = self.scope_item(f)?;
            if let Some(level) = self.scopes.last_mut() {
                level.extend(item);
            }
        }
        if let Some(w) = &s.where_clause {
            self.filter(w, "WHERE")?;
        }
        let out = self.target_list(&s.target_list)?;
        for g in &s.group_clause {
            self.grouping(g, &out)?;
        }
        if let Some(h) = &s.having_clause {
            self.filter(h, "HAVING")?;
        }
        for w in &s.window_clause {
            if let Some(N::WindowDef(wd)) = &w.node {
                self.window(wd)?;
            }
        }
        // DISTINCT compares every output value; DISTINCT ON its expressions.
        if !s.distinct_clause.is_empty() {
            if s.distinct_clause.iter().all(|d| d.node.is_none()) {
                for c in &out {
                    equality_use(&c.lin, "DISTINCT compares it")?;
                }
            } else {
                for d in &s.distinct_clause {
                    let lin = self.output_or_value(d, &out)?;
                    equality_use(&lin, "DISTINCT ON compares it")?;
                }
            }
        }
        if s.into_clause.is_some() {
            if let Some(c) = out.iter().find(|c| !c.lin.is_clear()) {
                return Err(deny(&c.lin, "SELECT INTO would copy it into a table"));
            }
        }
        self.order_limit(s, &out)?;
        Ok(out)
    }

    fn order_limit(&mut self, s: &pb::SelectStmt, out: &[Col]) -> Result<(), Deny> {
        for o in &s.sort_clause {
            if let Some(N::SortBy(sb)) = &o.node {
                if let Some(n) = sb.node.as_deref() {
                    let lin = self.output_or_value(n, out)?;
                    if !lin.is_clear() {
                        return Err(deny(&lin, "ORDER BY would reveal its order"));
                    }
                }
            }
        }
        for l in [&s.limit_count, &s.limit_offset].into_iter().flatten() {
            let lin = self.value(l)?;
            if !lin.is_clear() {
                return Err(deny(&lin, "LIMIT/OFFSET would depend on it"));
            }
        }
        Ok(())
    }

    /// An ORDER BY / GROUP BY / DISTINCT ON item: an output column by number or name, or
    /// an expression over the FROM scope.
    fn output_or_value(&mut self, n: &pb::Node, out: &[Col]) -> Result<Lin, Deny> {
        match &n.node {
            Some(N::AConst(c)) => {
                if let Some(pb::a_const::Val::Ival(i)) = &c.val {
                    let idx = usize::try_from(i.ival).unwrap_or(0);
                    return Ok(idx
                        .checked_sub(1)
                        .and_then(|i| out.get(i))
                        .map_or(Lin::Clear, |c| c.lin.clone()));
                }
                Ok(Lin::Clear)
            }
            Some(N::ColumnRef(cr)) if cr.fields.len() == 1 => {
                let name = cr.fields.first().and_then(str_node).unwrap_or_default();
                let from_scope = self.column_ref(cr);
                // PostgreSQL prefers the output name in ORDER BY and GROUP BY: check both.
                let by_name = out
                    .iter()
                    .filter(|c| c.name == name)
                    .fold(Lin::Clear, |acc, c| acc.merge(c.lin.clone()));
                Ok(match from_scope {
                    Ok(l) => l.merge(by_name),
                    Err(_) => by_name,
                })
            }
            _ => self.value(n),
        }
    }

    fn grouping(&mut self, g: &pb::Node, out: &[Col]) -> Result<(), Deny> {
        match &g.node {
            Some(N::GroupingSet(gs)) => {
                for c in &gs.content {
                    self.grouping(c, out)?;
                }
                Ok(())
            }
            Some(N::List(l)) => {
                for c in &l.items {
                    self.grouping(c, out)?;
                }
                Ok(())
            }
            _ => {
                let lin = self.output_or_value(g, out)?;
                equality_use(&lin, "GROUP BY compares it")
            }
        }
    }

    fn window(&mut self, wd: &pb::WindowDef) -> Result<(), Deny> {
        for p in wd.partition_clause.iter().chain(&wd.order_clause) {
            let n = match &p.node {
                Some(N::SortBy(sb)) => match sb.node.as_deref() {
                    Some(n) => n,
                    None => continue,
                },
                _ => p,
            };
            let lin = self.value(n)?;
            if !lin.is_clear() {
                return Err(deny(
                    &lin,
                    "a window's PARTITION BY or ORDER BY would depend on it",
                ));
            }
        }
        for o in [&wd.start_offset, &wd.end_offset].into_iter().flatten() {
            let lin = self.value(o)?;
            if !lin.is_clear() {
                return Err(deny(&lin, "a window frame would depend on it"));
            }
        }
        Ok(())
    }

    /// A FROM item: the names it makes visible.
    fn scope_item(&mut self, f: &pb::Node) -> Result<Vec<Item>, Deny> {
        match &f.node {
            Some(N::RangeVar(rv)) => Ok(vec![self.relation_item(rv)?]),
            Some(N::RangeSubselect(rs)) => {
                let Some(q) = rs.subquery.as_deref().and_then(|q| q.node.as_ref()) else {
                    return Ok(Vec::new());
                };
                let cols = self.statement(q)?;
                let name = rs
                    .alias
                    .as_ref()
                    .map(|a| a.aliasname.clone())
                    .unwrap_or_default();
                Ok(vec![Item {
                    name,
                    schema: None,
                    cols: Some(rename(cols, rs.alias.as_ref())),
                }])
            }
            Some(N::JoinExpr(j)) => {
                let base = self.scopes.last().map_or(0, Vec::len);
                let mut items = Vec::new();
                for side in [&j.larg, &j.rarg].into_iter().flatten() {
                    let these = self.scope_item(side)?;
                    // The right side (LATERAL) and the join condition see the left side.
                    if let Some(level) = self.scopes.last_mut() {
                        level.extend(these.iter().cloned());
                    }
                    items.extend(these);
                }
                let using: Vec<String> = names(&j.using_clause);
                let natural: Vec<String> = if j.is_natural {
                    common_columns(&items)
                } else {
                    Vec::new()
                };
                for name in using.iter().chain(&natural) {
                    let lins: Vec<Lin> = items
                        .iter()
                        .filter_map(|it| it.cols.iter().flatten().find(|c| &c.name == name))
                        .map(|c| c.lin.clone())
                        .collect();
                    check_join_equality(&lins)?;
                }
                let quals = j.quals.as_deref().map(|q| self.filter(q, "JOIN ... ON"));
                if let Some(level) = self.scopes.last_mut() {
                    level.truncate(base);
                }
                if let Some(r) = quals {
                    r?;
                }
                if let Some(a) = &j.alias {
                    let cols: Vec<Col> = items
                        .iter()
                        .flat_map(|i| i.cols.clone().unwrap_or_default())
                        .collect();
                    return Ok(vec![Item {
                        name: a.aliasname.clone(),
                        schema: None,
                        cols: Some(rename(cols, Some(a))),
                    }]);
                }
                Ok(items)
            }
            Some(N::RangeFunction(rf)) => {
                for f in &rf.functions {
                    let Some(N::List(l)) = &f.node else { continue };
                    if let Some(call) = l.items.first() {
                        let lin = self.function_source(call)?;
                        if !lin.is_clear() {
                            return Err(deny(&lin, "a function in FROM would compute on it"));
                        }
                    }
                }
                let name = rf
                    .alias
                    .as_ref()
                    .map(|a| a.aliasname.clone())
                    .unwrap_or_default();
                Ok(vec![Item {
                    name,
                    schema: None,
                    cols: None,
                }])
            }
            Some(other) => {
                if self.mentions_any(other.to_ref())? {
                    return Err(unsupported(
                        "masks apply to you, and this FROM item (table sample, XMLTABLE, JSON_TABLE) reaches masked columns",
                    ));
                }
                Ok(vec![Item {
                    name: String::new(),
                    schema: None,
                    cols: None,
                }])
            }
            None => Ok(Vec::new()),
        }
    }

    /// A function call in FROM: the lineage of its arguments.
    fn function_source(&mut self, call: &pb::Node) -> Result<Lin, Deny> {
        match &call.node {
            Some(N::FuncCall(fc)) => {
                let mut lin = Lin::Clear;
                for a in &fc.args {
                    lin = lin.derive(self.value(a)?);
                }
                Ok(lin)
            }
            _ => self.value(call),
        }
    }

    fn target_list(&mut self, list: &[pb::Node]) -> Result<Vec<Col>, Deny> {
        let mut out = Vec::new();
        for t in list {
            let Some(N::ResTarget(rt)) = &t.node else {
                continue;
            };
            let Some(val) = rt.val.as_deref() else {
                continue;
            };
            // `*` and `t.*`: every column, in order.
            if let Some(N::ColumnRef(cr)) = &val.node {
                if matches!(
                    cr.fields.last().and_then(|f| f.node.as_ref()),
                    Some(N::AStar(_))
                ) {
                    out.extend(self.star(cr)?);
                    continue;
                }
            }
            let lin = self.value(val)?;
            let name = if rt.name.is_empty() {
                default_name(val)
            } else {
                rt.name.clone()
            };
            out.push(Col { name, lin });
        }
        Ok(out)
    }

    fn star(&mut self, cr: &pb::ColumnRef) -> Result<Vec<Col>, Deny> {
        let quals: Vec<&str> = cr.fields.iter().filter_map(str_node).collect();
        let level = self.scopes.last().cloned().unwrap_or_default();
        let items: Vec<&Item> = match quals.as_slice() {
            [] => level.iter().collect(),
            [.., t] => level.iter().filter(|i| i.name == *t).collect(),
        };
        let mut out = Vec::new();
        for i in items {
            match &i.cols {
                Some(c) => out.extend(c.iter().cloned()),
                None => {
                    // Columns pgward does not know, none masked: their number is unknown,
                    // so a masked column after them could not be placed.
                    out.push(Col {
                        name: "?unknown".to_owned(),
                        lin: Lin::Clear,
                    });
                }
            }
        }
        for c in &out {
            self.note(&c.lin);
        }
        let unknown = out.iter().position(|c| c.name == "?unknown");
        if let Some(u) = unknown {
            if out.iter().skip(u).any(|c| !c.lin.is_clear()) {
                return Err(unsupported(
                    "masks apply to you, and `*` here expands a relation whose columns pgward does not know before a masked column: name the columns",
                ));
            }
        }
        Ok(out)
    }

    /// Resolves a column reference, failing on names pgward cannot place.
    fn column_ref(&mut self, cr: &pb::ColumnRef) -> Result<Lin, Deny> {
        let lin = self.column_ref_inner(cr)?;
        self.note(&lin);
        Ok(lin)
    }

    /// Records a masked value the statement reads.
    fn note(&mut self, lin: &Lin) {
        match lin {
            Lin::Clear => {}
            Lin::Plain(m) => {
                self.touched = true;
                self.read
                    .insert(format!("{} ({})", m.column, m.kind.name()));
            }
            Lin::Derived(names) => {
                self.touched = true;
                for n in names {
                    if !self.read.iter().any(|r| r.starts_with(n.as_str())) {
                        self.read.insert(n.clone());
                    }
                }
            }
        }
    }

    fn column_ref_inner(&mut self, cr: &pb::ColumnRef) -> Result<Lin, Deny> {
        let parts: Vec<&str> = cr.fields.iter().filter_map(str_node).collect();
        if parts.len() != cr.fields.len() {
            // `t.*` in an expression: the whole row.
            let t = parts.last().copied().unwrap_or_default();
            return Ok(self.whole_row(t));
        }
        for level in (0..self.scopes.len()).rev() {
            if let Some(l) = self.lookup(level, &parts) {
                return Ok(l);
            }
        }
        // Not a column pgward can place: the first part may be a relation (whole row, or
        // `t.f` as f(t)), or a column of an unknown relation, which is never masked.
        if let Some(first) = parts.first() {
            let row = self.whole_row(first);
            if !row.is_clear() {
                return Ok(row);
            }
            let is_item = self.scopes.iter().flatten().any(|i| i.name == *first);
            let system_column = matches!(
                *first,
                "ctid" | "xmin" | "xmax" | "cmin" | "cmax" | "tableoid"
            );
            // A name no relation in scope has, next to a relation with masked columns: the
            // catalog may be older than the table (a column renamed since), so it is not
            // taken to be clear. PostgreSQL would refuse an unknown column anyway.
            if parts.len() == 1 && !is_item && !system_column {
                if let Some(m) = self.masked_in_scope() {
                    return Err(unsupported(format!(
                        "masks apply to you, and pgward does not know a column {first:?} next to {m} (renamed since it read the catalog?)"
                    )));
                }
            }
        }
        Ok(Lin::Clear)
    }

    /// A masked column of a relation in scope, if any.
    fn masked_in_scope(&self) -> Option<String> {
        self.scopes
            .iter()
            .flatten()
            .flat_map(|i| i.cols.iter().flatten())
            .find(|c| !c.lin.is_clear())
            .map(|c| c.lin.first_name())
    }

    /// Like `column_ref`, for subtrees the planner does not follow: a name that matches a
    /// masked column anywhere in scope counts as masked.
    fn column_ref_lenient(&mut self, cr: &pb::ColumnRef) -> Lin {
        let lin = self.column_ref(cr).unwrap_or(Lin::Clear);
        if !lin.is_clear() {
            return lin;
        }
        let Some(last) = cr.fields.iter().rev().find_map(str_node) else {
            return Lin::Clear;
        };
        for level in &self.scopes {
            for it in level {
                for c in it.cols.iter().flatten() {
                    if c.name == last && !c.lin.is_clear() {
                        return c.lin.clone();
                    }
                }
            }
        }
        Lin::Clear
    }

    fn whole_row(&self, name: &str) -> Lin {
        let mut lin = Lin::Clear;
        for level in self.scopes.iter().rev() {
            for it in level.iter().filter(|i| i.name == name) {
                for c in it.cols.iter().flatten() {
                    lin = lin.derive(c.lin.clone());
                }
            }
        }
        lin
    }

    fn lookup(&self, level: usize, parts: &[&str]) -> Option<Lin> {
        let items = self.scopes.get(level)?;
        match parts {
            [col] => {
                let mut found: Option<Lin> = None;
                let mut unknown = false;
                for it in items {
                    match &it.cols {
                        Some(cols) => {
                            for c in cols.iter().filter(|c| c.name == *col) {
                                found = Some(match found {
                                    None => c.lin.clone(),
                                    Some(f) => f.merge(c.lin.clone()),
                                });
                            }
                        }
                        None => unknown = true,
                    }
                }
                // A relation with unknown columns may hold it: then it is that one's (never
                // masked) unless a known one has it too (PostgreSQL: ambiguous).
                match found {
                    Some(f) => Some(f),
                    None if unknown => Some(Lin::Clear),
                    None => None,
                }
            }
            [.., table, col] => {
                let schema = (parts.len() >= 3).then(|| parts[parts.len() - 3]);
                let it = items.iter().find(|i| {
                    i.name == *table && schema.is_none_or(|s| i.schema.as_deref() == Some(s))
                })?;
                match &it.cols {
                    Some(cols) => match cols.iter().find(|c| c.name == *col) {
                        Some(c) => Some(c.lin.clone()),
                        // `t.f` where t has no column f: f(t), over the whole row.
                        None => {
                            let mut lin = Lin::Clear;
                            for c in cols {
                                lin = lin.derive(c.lin.clone());
                            }
                            Some(lin)
                        }
                    },
                    None => Some(Lin::Clear),
                }
            }
            [] => None,
        }
    }

    /// The lineage of a value that is returned (or compared): masked values may pass
    /// only through forms that cannot fail or branch on them.
    fn value(&mut self, n: &pb::Node) -> Result<Lin, Deny> {
        self.enter()?;
        let r = self.value_inner(n);
        self.depth -= 1;
        r
    }

    fn value_inner(&mut self, n: &pb::Node) -> Result<Lin, Deny> {
        let Some(node) = &n.node else {
            return Ok(Lin::Clear);
        };
        match node {
            N::ColumnRef(cr) => self.column_ref(cr),
            N::AConst(_) | N::ParamRef(_) | N::SqlvalueFunction(_) => Ok(Lin::Clear),
            N::TypeCast(tc) => {
                let lin = match tc.arg.as_deref() {
                    Some(a) => self.value(a)?,
                    None => Lin::Clear,
                };
                if lin.is_clear() {
                    return Ok(lin);
                }
                let ty = tc
                    .type_name
                    .as_ref()
                    .map(|t| names(&t.names))
                    .unwrap_or_default();
                let to_string = match ty.as_slice() {
                    [t] => STRING_TYPES.contains(&t.as_str()),
                    [s, t] => s == "pg_catalog" && STRING_TYPES.contains(&t.as_str()),
                    _ => false,
                } && tc
                    .type_name
                    .as_ref()
                    .is_some_and(|t| t.array_bounds.is_empty());
                if !to_string {
                    return Err(deny(&lin, "a cast to a non-string type could fail on its value, and the error would reveal it"));
                }
                Ok(Lin::Clear.derive(lin))
            }
            N::AExpr(e) => {
                let op = names(&e.name);
                let l = match e.lexpr.as_deref() {
                    Some(x) => self.value(x)?,
                    None => Lin::Clear,
                };
                let r = match e.rexpr.as_deref() {
                    Some(x) => self.value(x)?,
                    None => Lin::Clear,
                };
                if l.is_clear() && r.is_clear() {
                    return Ok(Lin::Clear);
                }
                let concat = e.kind == pb::AExprKind::AexprOp as i32
                    && matches!(op.as_slice(), [o] if o == "||")
                    || matches!(op.as_slice(), [s, o] if s == "pg_catalog" && o == "||");
                if concat {
                    return Ok(l.derive(r));
                }
                let masked = if l.is_clear() { r } else { l };
                Err(deny(
                    &masked,
                    format!("operator {} would compute on it", op.join(".")),
                ))
            }
            N::FuncCall(fc) => self.func_call(fc),
            N::CoalesceExpr(c) => {
                let mut lin = Lin::Clear;
                for a in &c.args {
                    lin = lin.derive(self.value(a)?);
                }
                Ok(lin)
            }
            N::SubLink(sl) => self.sublink(sl),
            N::BoolExpr(_) | N::NullTest(_) | N::BooleanTest(_) | N::CaseExpr(_) => {
                // Conditions in the output: a masked value may not decide them.
                self.filter(n, "a condition in the output")?;
                let mut lin = Lin::Clear;
                if let N::CaseExpr(c) = node {
                    for w in &c.args {
                        if let Some(N::CaseWhen(cw)) = &w.node {
                            if let Some(r) = cw.result.as_deref() {
                                lin = lin.derive(self.value(r)?);
                            }
                        }
                    }
                    if let Some(d) = c.defresult.as_deref() {
                        lin = lin.derive(self.value(d)?);
                    }
                }
                Ok(lin)
            }
            N::RowExpr(r) => {
                let mut lin = Lin::Clear;
                for a in &r.args {
                    lin = lin.derive(self.value(a)?);
                }
                Ok(lin)
            }
            N::AArrayExpr(a) => {
                let mut lin = Lin::Clear;
                for e in &a.elements {
                    lin = lin.derive(self.value(e)?);
                }
                Ok(lin)
            }
            N::CollateClause(c) => match c.arg.as_deref() {
                Some(a) => {
                    let lin = self.value(a)?;
                    Ok(Lin::Clear.derive(lin))
                }
                None => Ok(Lin::Clear),
            },
            other => {
                // Anything else (subscripts, field selection, JSON and XML expressions,
                // ...) may not touch a masked value.
                let mut stack = vec![other.to_ref()];
                let mut kids = Vec::new();
                while let Some(x) = stack.pop() {
                    kids.clear();
                    crate::walk_gen::children(x, &mut kids);
                    for k in kids.drain(..) {
                        let lin = match k {
                            NodeRef::ColumnRef(cr) => self.column_ref_lenient(cr),
                            NodeRef::SelectStmt(s) => {
                                let cols = self.select(s)?;
                                cols.into_iter().fold(Lin::Clear, |a, c| a.derive(c.lin))
                            }
                            other => {
                                stack.push(other);
                                Lin::Clear
                            }
                        };
                        if !lin.is_clear() {
                            return Err(deny(&lin, "this expression would compute on it"));
                        }
                    }
                }
                Ok(Lin::Clear)
            }
        }
    }

    fn func_call(&mut self, fc: &pb::FuncCall) -> Result<Lin, Deny> {
        let mut lin = Lin::Clear;
        for a in &fc.args {
            lin = lin.derive(self.value(a)?);
        }
        if let Some(f) = fc.agg_filter.as_deref() {
            self.filter(f, "an aggregate's FILTER")?;
        }
        for o in &fc.agg_order {
            let n = match &o.node {
                Some(N::SortBy(sb)) => sb.node.as_deref(),
                _ => Some(o),
            };
            if let Some(n) = n {
                let l = self.value(n)?;
                if !l.is_clear() {
                    return Err(deny(&l, "an aggregate's ORDER BY would depend on it"));
                }
            }
        }
        if let Some(w) = fc.over.as_deref() {
            self.window(w)?;
        }
        if lin.is_clear() {
            return Ok(lin);
        }
        let name = names(&fc.funcname);
        let safe = match name.as_slice() {
            [f] => SAFE_FUNCTIONS.contains(&f.as_str()) && self.builtin(None, f),
            [s, f] => s == "pg_catalog" && SAFE_FUNCTIONS.contains(&f.as_str()),
            _ => false,
        };
        if !safe || fc.agg_distinct || fc.over.is_some() {
            return Err(deny(
                &lin,
                format!("function {} would compute on it", name.join(".")),
            ));
        }
        Ok(Lin::Clear.derive(lin))
    }

    fn builtin(&self, schema: Option<&str>, name: &str) -> bool {
        self.session.calls_builtin(&FunctionRef {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    fn sublink(&mut self, sl: &pb::SubLink) -> Result<Lin, Deny> {
        let cols = match sl.subselect.as_deref().and_then(|q| q.node.as_ref()) {
            Some(q) => self.statement(q)?,
            None => Vec::new(),
        };
        let ty = sl.sub_link_type;
        if ty == pb::SubLinkType::ExprSublink as i32 {
            // A scalar subquery returns its one column as it is.
            return Ok(cols.into_iter().next().map_or(Lin::Clear, |c| c.lin));
        }
        if ty == pb::SubLinkType::ArraySublink as i32 {
            return Ok(cols.into_iter().fold(Lin::Clear, |a, c| a.derive(c.lin)));
        }
        if ty == pb::SubLinkType::ExistsSublink as i32 {
            return Ok(Lin::Clear);
        }
        // IN / ANY / ALL / row comparison: compares values.
        let test = match sl.testexpr.as_deref() {
            Some(t) => self.value(t)?,
            None => Lin::Clear,
        };
        let inner = cols.into_iter().fold(Lin::Clear, |a, c| a.merge(c.lin));
        if test.is_clear() && inner.is_clear() {
            return Ok(Lin::Clear);
        }
        let masked = if test.is_clear() { inner } else { test };
        Err(deny(
            &masked,
            "a subquery comparison (IN, ANY, ALL) would test it",
        ))
    }

    /// A condition (WHERE, ON, HAVING, FILTER, CASE WHEN): masked values may not decide
    /// it, except `col = literal` under `filter = "equality"` and equality between two
    /// hashed values.
    fn filter(&mut self, n: &pb::Node, clause: &str) -> Result<(), Deny> {
        self.enter()?;
        let r = self.filter_inner(n, clause);
        self.depth -= 1;
        r
    }

    fn filter_inner(&mut self, n: &pb::Node, clause: &str) -> Result<(), Deny> {
        match &n.node {
            Some(N::BoolExpr(b)) => {
                for a in &b.args {
                    self.filter(a, clause)?;
                }
                Ok(())
            }
            Some(N::AExpr(e)) => {
                let op = names(&e.name);
                let is_eq = matches!(op.as_slice(), [o] if o == "=")
                    || matches!(op.as_slice(), [s, o] if s == "pg_catalog" && o == "=");
                let (Some(l), Some(r)) = (e.lexpr.as_deref(), e.rexpr.as_deref()) else {
                    return self.condition_value(n, clause);
                };
                if e.kind == pb::AExprKind::AexprOp as i32 && is_eq {
                    let ll = self.value(l)?;
                    let rl = self.value(r)?;
                    return check_equality(&ll, l, &rl, r, clause);
                }
                if e.kind == pb::AExprKind::AexprIn as i32 && is_eq {
                    let ll = self.value(l)?;
                    let items: Vec<&pb::Node> = match &r.node {
                        Some(N::List(list)) => list.items.iter().collect(),
                        _ => vec![r],
                    };
                    let all_literals = items.iter().all(|i| is_const_or_param(i));
                    for i in &items {
                        let il = self.value(i)?;
                        if !il.is_clear() {
                            return Err(deny(&il, format!("{clause} would test it")));
                        }
                    }
                    return match &ll {
                        Lin::Clear => Ok(()),
                        Lin::Plain(m) if m.equality && all_literals => Ok(()),
                        _ => Err(deny(&ll, format!("{clause} would test it (a mask may allow `col IN (literals)` with filter = \"equality\")"))),
                    };
                }
                self.condition_value(n, clause)
            }
            Some(N::SubLink(sl)) if sl.sub_link_type == pb::SubLinkType::ExistsSublink as i32 => {
                self.sublink(sl).map(|_| ())
            }
            _ => self.condition_value(n, clause),
        }
    }

    fn condition_value(&mut self, n: &pb::Node, clause: &str) -> Result<(), Deny> {
        let lin = match &n.node {
            // Evaluated without the "condition" recursion of `value`.
            Some(N::NullTest(t)) => match t.arg.as_deref() {
                Some(a) => self.value(a)?,
                None => Lin::Clear,
            },
            Some(N::BooleanTest(t)) => match t.arg.as_deref() {
                Some(a) => self.value(a)?,
                None => Lin::Clear,
            },
            Some(N::CaseExpr(c)) => {
                let mut lin = Lin::Clear;
                if let Some(a) = c.arg.as_deref() {
                    lin = either(lin, self.value(a)?);
                }
                for w in &c.args {
                    if let Some(N::CaseWhen(cw)) = &w.node {
                        if let Some(e) = cw.expr.as_deref() {
                            self.filter(e, clause)?;
                        }
                    }
                }
                lin
            }
            Some(N::AExpr(e)) => {
                let mut lin = Lin::Clear;
                for x in [&e.lexpr, &e.rexpr].into_iter().flatten() {
                    let x: &pb::Node = x;
                    match &x.node {
                        Some(N::List(list)) => {
                            for i in &list.items {
                                lin = either(lin, self.value(i)?);
                            }
                        }
                        _ => lin = either(lin, self.value(x)?),
                    }
                }
                lin
            }
            _ => self.value(n)?,
        };
        if lin.is_clear() {
            Ok(())
        } else {
            Err(deny(&lin, format!("{clause} would test it")))
        }
    }

    fn insert(&mut self, s: &pb::InsertStmt) -> Result<Vec<Col>, Deny> {
        let pushed = s.with_clause.is_some();
        if let Some(w) = &s.with_clause {
            self.with_clause(w)?;
        }
        let r = (|| {
            if let Some(q) = s.select_stmt.as_deref().and_then(|q| q.node.as_ref()) {
                let cols = self.statement(q)?;
                if let Some(c) = cols.iter().find(|c| !c.lin.is_clear()) {
                    return Err(deny(&c.lin, "INSERT would copy it into a table"));
                }
            }
            let Some(rv) = &s.relation else {
                return Ok(Vec::new());
            };
            let target = self.relation_item(rv)?;
            self.note_target(&target);
            self.scopes.push(vec![target.clone()]);
            let r = (|| {
                if let Some(oc) = &s.on_conflict_clause {
                    // `excluded.*` holds the caller's own values.
                    if let Some(level) = self.scopes.last_mut() {
                        level.push(Item {
                            name: "excluded".to_owned(),
                            schema: None,
                            cols: None,
                        });
                    }
                    if let Some(w) = oc.where_clause.as_deref() {
                        self.filter(w, "ON CONFLICT ... WHERE")?;
                    }
                    for t in &oc.target_list {
                        if let Some(N::ResTarget(rt)) = &t.node {
                            if let Some(v) = rt.val.as_deref() {
                                let lin = self.value(v)?;
                                if !lin.is_clear() {
                                    return Err(deny(&lin, "ON CONFLICT DO UPDATE would copy it"));
                                }
                            }
                        }
                    }
                    if let Some(level) = self.scopes.last_mut() {
                        level.pop();
                    }
                }
                self.target_list(&s.returning_list)
            })();
            self.scopes.pop();
            r
        })();
        if pushed {
            self.ctes.pop();
        }
        r
    }

    fn update(&mut self, s: &pb::UpdateStmt) -> Result<Vec<Col>, Deny> {
        self.write(Write {
            with: s.with_clause.as_ref(),
            relation: s.relation.as_ref(),
            from: &s.from_clause,
            where_clause: s.where_clause.as_deref(),
            set: &s.target_list,
            returning: &s.returning_list,
        })
    }

    fn delete(&mut self, s: &pb::DeleteStmt) -> Result<Vec<Col>, Deny> {
        self.write(Write {
            with: s.with_clause.as_ref(),
            relation: s.relation.as_ref(),
            from: &s.using_clause,
            where_clause: s.where_clause.as_deref(),
            set: &[],
            returning: &s.returning_list,
        })
    }

    /// UPDATE and DELETE: the target and the other FROM (USING) items in one scope, the
    /// WHERE as a filter, SET values may not carry a masked value, RETURNING is the output.
    fn write(&mut self, w: Write<'_>) -> Result<Vec<Col>, Deny> {
        if let Some(with) = w.with {
            self.with_clause(with)?;
        }
        self.scopes.push(Vec::new());
        let r = (|| {
            if let Some(rv) = w.relation {
                let t = self.relation_item(rv)?;
                self.note_target(&t);
                if let Some(level) = self.scopes.last_mut() {
                    level.push(t);
                }
            }
            for f in w.from {
                let items = self.scope_item(f)?;
                if let Some(level) = self.scopes.last_mut() {
                    level.extend(items);
                }
            }
            if let Some(c) = w.where_clause {
                self.filter(c, "WHERE")?;
            }
            for t in w.set {
                if let Some(N::ResTarget(rt)) = &t.node {
                    if let Some(v) = rt.val.as_deref() {
                        let lin = self.value(v)?;
                        if !lin.is_clear() {
                            return Err(deny(&lin, "UPDATE ... SET would copy or compute it"));
                        }
                    }
                }
            }
            self.target_list(w.returning)
        })();
        self.scopes.pop();
        if w.with.is_some() {
            self.ctes.pop();
        }
        r
    }

    fn copy(&mut self, c: &pb::CopyStmt) -> Result<Vec<Col>, Deny> {
        if let Some(q) = c.query.as_deref().and_then(|q| q.node.as_ref()) {
            let cols = self.statement(q)?;
            if let Some(col) = cols.iter().find(|c| !c.lin.is_clear()) {
                return Err(deny(
                    &col.lin,
                    "COPY ... TO sends it unmasked: SELECT it instead, or leave it out of the COPY",
                ));
            }
            return Ok(Vec::new());
        }
        let Some(rv) = &c.relation else {
            return Ok(Vec::new());
        };
        let item = self.relation_item(rv)?;
        if c.is_from {
            // Writes follow the role's ordinary rules.
            return Ok(Vec::new());
        }
        let wanted = names(&c.attlist);
        for col in item.cols.iter().flatten() {
            if (wanted.is_empty() || wanted.contains(&col.name)) && !col.lin.is_clear() {
                return Err(deny(
                    &col.lin,
                    "COPY ... TO sends it unmasked: SELECT it instead, or leave it out of the COPY",
                ));
            }
        }
        Ok(Vec::new())
    }
}

/// The parts of an UPDATE or DELETE the planner reads.
struct Write<'s> {
    with: Option<&'s pb::WithClause>,
    relation: Option<&'s pb::RangeVar>,
    from: &'s [pb::Node],
    where_clause: Option<&'s pb::Node>,
    set: &'s [pb::Node],
    returning: &'s [pb::Node],
}

/// The lineage a denial names: a plain masked column (its rule) before a derived value.
fn either(a: Lin, b: Lin) -> Lin {
    match (&a, &b) {
        (Lin::Plain(_), _) => a,
        (_, Lin::Plain(_)) => b,
        (Lin::Clear, _) => b,
        _ => a,
    }
}

fn unknown_relation(name: &str) -> Deny {
    unsupported(format!(
        "masks apply to you, and pgward does not know relation {name:?} yet (created since it read the catalog?): it cannot tell whether it shows masked columns"
    ))
}

fn rename(cols: Vec<Col>, alias: Option<&pb::Alias>) -> Vec<Col> {
    match alias {
        Some(a) => rename_to(cols, &names(&a.colnames)),
        None => cols,
    }
}

/// Columns renamed by a column list (`AS t(a, b)`, `WITH x(a, b)`); the rest keep theirs.
fn rename_to(cols: Vec<Col>, new: &[String]) -> Vec<Col> {
    cols.into_iter()
        .enumerate()
        .map(|(i, c)| Col {
            name: new.get(i).cloned().unwrap_or(c.name),
            lin: c.lin,
        })
        .collect()
}

fn common_columns(items: &[Item]) -> Vec<String> {
    let mut seen: Vec<&str> = Vec::new();
    let mut common = Vec::new();
    for it in items {
        for c in it.cols.iter().flatten() {
            if seen.contains(&c.name.as_str()) {
                common.push(c.name.clone());
            } else {
                seen.push(&c.name);
            }
        }
    }
    common
}

fn default_name(n: &pb::Node) -> String {
    match &n.node {
        Some(N::ColumnRef(cr)) => cr
            .fields
            .iter()
            .rev()
            .find_map(str_node)
            .unwrap_or("?column?")
            .to_owned(),
        Some(N::FuncCall(fc)) => names(&fc.funcname).pop().unwrap_or_default(),
        Some(N::TypeCast(tc)) => tc.arg.as_deref().map(default_name).unwrap_or_default(),
        _ => "?column?".to_owned(),
    }
}

/// A use that compares values for equality (GROUP BY, DISTINCT, UNION): allowed for
/// hashed values, which reveal equality anyway.
fn equality_use(lin: &Lin, what: &str) -> Result<(), Deny> {
    match lin {
        Lin::Clear => Ok(()),
        Lin::Plain(m) if m.kind == MaskKind::Hash => Ok(()),
        other => Err(deny(other, what)),
    }
}

fn check_join_equality(lins: &[Lin]) -> Result<(), Deny> {
    if lins.iter().all(Lin::is_clear) {
        return Ok(());
    }
    if lins
        .iter()
        .all(|l| matches!(l, Lin::Plain(m) if m.kind == MaskKind::Hash))
    {
        return Ok(());
    }
    let masked = lins
        .iter()
        .find(|l| !l.is_clear())
        .cloned()
        .unwrap_or(Lin::Clear);
    Err(deny(
        &masked,
        "a join on it would compare it (joins are allowed between hash-masked columns)",
    ))
}

fn check_equality(
    ll: &Lin,
    l: &pb::Node,
    rl: &Lin,
    r: &pb::Node,
    clause: &str,
) -> Result<(), Deny> {
    match (ll, rl) {
        (Lin::Clear, Lin::Clear) => Ok(()),
        (Lin::Plain(a), Lin::Plain(b)) if a.kind == MaskKind::Hash && b.kind == MaskKind::Hash => {
            Ok(())
        }
        (Lin::Plain(m), Lin::Clear) if m.equality && is_const_or_param(r) => Ok(()),
        (Lin::Clear, Lin::Plain(m)) if m.equality && is_const_or_param(l) => Ok(()),
        _ => {
            let masked = if ll.is_clear() { rl } else { ll };
            Err(deny(
                masked,
                format!("{clause} would test it (a mask may allow `col = literal` with filter = \"equality\"; hash-masked columns may be joined with each other)"),
            ))
        }
    }
}
