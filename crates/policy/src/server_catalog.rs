//! What the upstream server really has, read from its own catalog: which functions and
//! relations are built in *in its version*, which names anyone created, which operators and
//! casts run code that is neither built in nor from an extension, which views write settings,
//! and which sequence or function an OID names.
//!
//! pgward's parser is PostgreSQL 17's, but the upstream may be 11–17 and holds objects
//! created after initdb. Deciding by a list compiled for another version resolves names
//! differently from the server (`array_shuffle` is built in on 17 and a caller's own
//! `public.array_shuffle` on 15), so the proxy fetches this at start, refreshes it, and
//! every decision resolves against it. Without one (`policy explain` offline) the static
//! lists in `catalog.rs` stand in.
//!
//! "Built in" means created by initdb: an OID below 16384 (PostgreSQL's
//! `FirstNormalObjectId`). Anything created later in `pg_catalog` or `information_schema`
//! (by a superuser, an extension or a provider) is not built in, whatever its schema.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::analyze::FunctionRef;

/// Distinguishes catalogs in decision-cache keys: every catalog built gets a new number.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// One function name in one schema, over all its overloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FnFlags {
    /// Every overload was created by initdb.
    builtin: bool,
    /// Some overload is not executable by PUBLIC (initdb revokes it from functions that read
    /// server files, configuration or other sessions' state).
    privileged: bool,
}

/// The upstream server's catalog as far as decisions need it. Cheap to share (`Arc`).
#[derive(Debug, Clone)]
pub struct ServerCatalog {
    version_num: u32,
    generation: u64,
    /// schema → function name → flags.
    functions: HashMap<String, HashMap<String, FnFlags>>,
    /// Every function, aggregate and procedure name in any schema: what `(x).f` may call.
    function_names: HashSet<String>,
    /// Relations in pg_catalog (any origin): unqualified names PostgreSQL finds there first.
    catalog_relations: HashSet<String>,
    /// initdb's relations in pg_catalog and information_schema, as (schema, name).
    builtin_relations: HashSet<(String, String)>,
    /// Views that read pg_settings, directly or through other views (an UPDATE of one runs
    /// set_config through pg_settings' rule).
    settings_views: HashSet<(String, String)>,
    /// Operator name → (operator's schema, the function it calls), for operators created
    /// outside initdb and outside extensions.
    operators: HashMap<String, Vec<(String, FunctionRef)>>,
    /// Target type name → cast functions created outside initdb and outside extensions.
    casts: HashMap<String, Vec<FunctionRef>>,
    /// Sequence OID → (schema, name), for `nextval(16415)` and `nextval('16415')`.
    sequences: HashMap<u32, (String, String)>,
    /// Function OID → (schema, name): the FunctionCall protocol message names its function
    /// only by OID (drivers' large-object APIs), and is decided as a call of that name.
    function_oids: HashMap<u32, (Arc<str>, Arc<str>)>,
    /// Relations outside the system schemas with their columns and (views) definitions,
    /// read only when a policy has masks ([`ServerCatalog::COLUMNS_QUERY`]).
    relations: HashMap<(String, String), Arc<Relation>>,
    /// Temporary relations by name.
    temp: HashMap<String, Vec<Arc<Relation>>>,
    /// Whether `relations` was read.
    has_columns: bool,
}

/// A relation outside the system schemas, as masks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// `pg_class.oid`: RowDescription names result columns by it.
    pub oid: u32,
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its columns in order (`attnum`), dropped ones left out.
    pub columns: Vec<RelColumn>,
    /// A view's or materialized view's query (`pg_get_viewdef`, names qualified).
    pub definition: Option<String>,
    /// Every table it inherits from or is a partition of, at any depth, as (schema,
    /// name): masks of a parent's columns apply to its children's.
    pub ancestors: Vec<(String, String)>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelColumn {
    /// `pg_attribute.attnum`.
    pub attnum: i16,
    /// Its name.
    pub name: String,
    /// Its type (the base type of a domain).
    pub type_oid: u32,
    /// That type's `pg_type.typcategory` (`S` for strings).
    pub category: char,
}

/// Why catalog rows could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError(pub String);

impl std::fmt::Display for CatalogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream catalog: {}", self.0)
    }
}

impl std::error::Error for CatalogError {}

impl ServerCatalog {
    /// The query the proxy runs on the upstream (PostgreSQL 11 and later) with pgward's own
    /// login; its rows go to [`ServerCatalog::from_rows`]. Every row is
    /// `(kind, a, b, c, d)` as text.
    pub const QUERY: &'static str = r#"
SELECT 'v', pg_catalog.current_setting('server_version_num'), NULL, NULL, NULL
UNION ALL
SELECT 'f', n.nspname, p.proname,
       CASE WHEN bool_and(p.oid < 16384) THEN 'b' ELSE '' END
       || CASE WHEN bool_or(p.proacl IS NOT NULL AND NOT EXISTS (
              SELECT 1 FROM pg_catalog.aclexplode(p.proacl) a
              WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')) THEN 'p' ELSE '' END,
       NULL
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 GROUP BY n.nspname, p.proname
UNION ALL
SELECT 'i', p.oid::pg_catalog.text, n.nspname, p.proname, NULL
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
UNION ALL
SELECT 'r', n.nspname, c.relname, CASE WHEN c.oid < 16384 THEN 'b' ELSE '' END, NULL
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('pg_catalog', 'information_schema') AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
UNION ALL
SELECT 's', c.oid::pg_catalog.text, n.nspname, c.relname, NULL
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'S'
UNION ALL
SELECT 'o', o.oprname, n.nspname, fn.nspname, f.proname
  FROM pg_catalog.pg_operator o
  JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
  JOIN pg_catalog.pg_proc f ON f.oid = o.oprcode
  JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace
 WHERE o.oid >= 16384 AND NOT EXISTS (
       SELECT 1 FROM pg_catalog.pg_depend d
        WHERE d.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass
          AND d.objid = o.oid AND d.deptype = 'e')
UNION ALL
SELECT 'c', t.typname, fn.nspname, f.proname, NULL
  FROM pg_catalog.pg_cast c
  JOIN pg_catalog.pg_type t ON t.oid = c.casttarget
  JOIN pg_catalog.pg_proc f ON f.oid = c.castfunc
  JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace
 WHERE c.oid >= 16384 AND NOT EXISTS (
       SELECT 1 FROM pg_catalog.pg_depend d
        WHERE d.classid = 'pg_catalog.pg_cast'::pg_catalog.regclass
          AND d.objid = c.oid AND d.deptype = 'e')
UNION ALL
SELECT 'w', n.nspname, c.relname, NULL, NULL
  FROM (WITH RECURSIVE dep(oid) AS (
          SELECT 'pg_catalog.pg_settings'::pg_catalog.regclass::pg_catalog.oid
          UNION
          SELECT r.ev_class
            FROM pg_catalog.pg_rewrite r
            JOIN pg_catalog.pg_depend d
              ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
             AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
            JOIN dep ON d.refobjid = dep.oid
           WHERE r.ev_class <> dep.oid)
        SELECT oid FROM dep) v
  JOIN pg_catalog.pg_class c ON c.oid = v.oid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
"#;

    /// Relations outside the system schemas: every column (`a`) and every view's query
    /// (`d`). Run after `SET search_path = pg_catalog`, so the definitions name every
    /// relation and function with its schema; line breaks and tabs in a definition become
    /// spaces (one row a line in the tab-separated form). Read only when a policy has masks.
    pub const COLUMNS_QUERY: &'static str = r#"
SELECT 'a', c.oid::pg_catalog.text, n.nspname, c.relname, a.attnum::pg_catalog.text, a.attname,
       (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END)::pg_catalog.text,
       COALESCE(bt.typcategory, t.typcategory)::pg_catalog.text
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_catalog.pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
 WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
UNION ALL
SELECT 'd', c.oid::pg_catalog.text, n.nspname, c.relname,
       pg_catalog.translate(pg_catalog.pg_get_viewdef(c.oid),
                            pg_catalog.chr(10) || pg_catalog.chr(13) || pg_catalog.chr(9), '   '),
       NULL, NULL, NULL
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('v', 'm')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
UNION ALL
SELECT 'h', h.child::pg_catalog.text, pn.nspname, p.relname, NULL, NULL, NULL, NULL
  FROM (WITH RECURSIVE anc(child, parent) AS (
          SELECT i.inhrelid, i.inhparent FROM pg_catalog.pg_inherits i
          UNION
          SELECT a.child, i.inhparent
            FROM anc a JOIN pg_catalog.pg_inherits i ON i.inhrelid = a.parent)
        SELECT child, parent FROM anc) h
  JOIN pg_catalog.pg_class p ON p.oid = h.parent
  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
"#;

    /// Builds the catalog from [`ServerCatalog::QUERY`]'s rows (text values, `None` for
    /// NULL).
    pub fn from_rows<R>(rows: R) -> Result<ServerCatalog, CatalogError>
    where
        R: IntoIterator<Item = Vec<Option<String>>>,
    {
        let mut c = ServerCatalog::empty();
        let mut building: HashMap<u32, Relation> = HashMap::new();
        let mut parents: HashMap<u32, Vec<(String, String)>> = HashMap::new();
        let mut saw_version = false;
        let mut schemas: HashMap<String, Arc<str>> = HashMap::new();
        for row in rows {
            let col = |i: usize| row.get(i).and_then(|v| v.as_deref()).unwrap_or("");
            match col(0) {
                "v" => {
                    c.version_num = col(1).parse().map_err(|_| {
                        CatalogError(format!("server_version_num {:?} is not a number", col(1)))
                    })?;
                    saw_version = true;
                }
                "f" => {
                    let flags = FnFlags {
                        builtin: col(3).contains('b'),
                        privileged: col(3).contains('p'),
                    };
                    c.add_function(col(1), col(2), flags);
                }
                "i" => {
                    let oid = col(1).parse().map_err(|_| {
                        CatalogError(format!("function OID {:?} is not a number", col(1)))
                    })?;
                    // Schema names repeat thousands of times: one allocation per schema.
                    let schema = match schemas.get(col(2)) {
                        Some(s) => Arc::clone(s),
                        None => {
                            let s: Arc<str> = Arc::from(col(2));
                            schemas.insert(col(2).to_owned(), Arc::clone(&s));
                            s
                        }
                    };
                    c.function_oids.insert(oid, (schema, Arc::from(col(3))));
                }
                "r" => {
                    if col(1) == "pg_catalog" {
                        c.catalog_relations.insert(col(2).to_owned());
                    }
                    if col(3).contains('b') {
                        c.builtin_relations
                            .insert((col(1).to_owned(), col(2).to_owned()));
                    }
                }
                "s" => {
                    let oid = col(1).parse().map_err(|_| {
                        CatalogError(format!("sequence OID {:?} is not a number", col(1)))
                    })?;
                    c.sequences
                        .insert(oid, (col(2).to_owned(), col(3).to_owned()));
                }
                "o" => c.operators.entry(col(1).to_owned()).or_default().push((
                    col(2).to_owned(),
                    FunctionRef {
                        schema: Some(col(3).to_owned()),
                        name: col(4).to_owned(),
                    },
                )),
                "c" => c
                    .casts
                    .entry(col(1).to_owned())
                    .or_default()
                    .push(FunctionRef {
                        schema: Some(col(2).to_owned()),
                        name: col(3).to_owned(),
                    }),
                "a" => {
                    c.has_columns = true;
                    let oid = number(col(1), "relation OID")?;
                    let rel = relation_entry(&mut building, oid, col(2), col(3));
                    if let Some(attnum) = row.get(4).and_then(|v| v.as_deref()) {
                        rel.columns.push(RelColumn {
                            attnum: number(attnum, "column number")?,
                            name: col(5).to_owned(),
                            type_oid: number(col(6), "type OID")?,
                            category: col(7).chars().next().unwrap_or('X'),
                        });
                    }
                }
                "h" => {
                    let oid: u32 = number(col(1), "relation OID")?;
                    parents
                        .entry(oid)
                        .or_default()
                        .push((col(2).to_owned(), col(3).to_owned()));
                }
                "d" => {
                    c.has_columns = true;
                    let oid = number(col(1), "relation OID")?;
                    relation_entry(&mut building, oid, col(2), col(3)).definition =
                        Some(col(4).to_owned());
                }
                "w" => {
                    if !(col(1) == "pg_catalog" && col(2) == "pg_settings") {
                        c.settings_views
                            .insert((col(1).to_owned(), col(2).to_owned()));
                    }
                }
                other => return Err(CatalogError(format!("unexpected row kind {other:?}"))),
            }
        }
        if !saw_version {
            return Err(CatalogError("no server version in the answer".into()));
        }
        for rel in building.into_values() {
            let mut rel = rel;
            rel.columns.sort_by_key(|c| c.attnum);
            rel.ancestors = parents.remove(&rel.oid).unwrap_or_default();
            let rel = Arc::new(rel);
            if rel.schema.starts_with("pg_temp_") {
                c.temp
                    .entry(rel.name.clone())
                    .or_default()
                    .push(Arc::clone(&rel));
            }
            c.relations
                .insert((rel.schema.clone(), rel.name.clone()), rel);
        }
        if c.functions.get("pg_catalog").is_none_or(HashMap::is_empty) {
            return Err(CatalogError(
                "no pg_catalog functions in the answer (is pgward's login able to read pg_proc?)"
                    .into(),
            ));
        }
        Ok(c)
    }

    /// Builds the catalog from [`ServerCatalog::QUERY`]'s answer as tab-separated text, one
    /// row a line, an empty value for NULL (`psql -At -F $'\t'`): for `policy explain
    /// --catalog` and test fixtures.
    pub fn from_tsv(text: &str) -> Result<ServerCatalog, CatalogError> {
        ServerCatalog::from_rows(text.lines().filter(|l| !l.is_empty()).map(|l| {
            l.split('\t')
                .map(|v| (!v.is_empty()).then(|| v.to_owned()))
                .collect::<Vec<_>>()
        }))
    }

    fn empty() -> ServerCatalog {
        ServerCatalog {
            version_num: 0,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            functions: HashMap::new(),
            function_names: HashSet::new(),
            catalog_relations: HashSet::new(),
            builtin_relations: HashSet::new(),
            settings_views: HashSet::new(),
            operators: HashMap::new(),
            casts: HashMap::new(),
            sequences: HashMap::new(),
            function_oids: HashMap::new(),
            relations: HashMap::new(),
            temp: HashMap::new(),
            has_columns: false,
        }
    }

    /// Whether relations' columns and views' definitions were read (masks need them).
    pub fn has_columns(&self) -> bool {
        self.has_columns
    }

    /// A relation outside the system schemas.
    pub fn relation(&self, schema: &str, name: &str) -> Option<Arc<Relation>> {
        self.relations
            .get(&(schema.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Temporary relations of that name (any session's): an unqualified name may reach
    /// one, since PostgreSQL searches the session's temporary schema first.
    pub fn temp_relations(&self, name: &str) -> Vec<Arc<Relation>> {
        self.temp.get(name).cloned().unwrap_or_default()
    }

    fn add_function(&mut self, schema: &str, name: &str, flags: FnFlags) {
        let entry = self
            .functions
            .entry(schema.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_insert(FnFlags {
                builtin: true,
                privileged: false,
            });
        entry.builtin &= flags.builtin;
        entry.privileged |= flags.privileged;
        self.function_names.insert(name.to_owned());
    }

    /// A copy that also knows functions created through pgward since the fetch (decided and
    /// forwarded, not yet seen in a refresh), as (schema, name): they are never built in, and
    /// `(x).name` may call them. Returns `None` when nothing is new.
    pub fn with_created(&self, created: &[(String, String)]) -> Option<Self> {
        let new: Vec<&(String, String)> = created
            .iter()
            .filter(|(s, n)| self.flags(s, n).is_none_or(|f| f.builtin))
            .collect();
        if new.is_empty() {
            return None;
        }
        let mut c = self.clone();
        c.generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        for (s, n) in new {
            c.add_function(s, n, FnFlags::default());
        }
        Some(c)
    }

    /// The server's `server_version_num` (e.g. 150018).
    pub fn version_num(&self) -> u32 {
        self.version_num
    }

    /// A number unique to this catalog (for cache keys).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of function names known in all schemas.
    pub fn function_count(&self) -> usize {
        self.function_names.len()
    }

    fn flags(&self, schema: &str, name: &str) -> Option<FnFlags> {
        self.functions
            .get(schema)
            .and_then(|m| m.get(name))
            .copied()
    }

    /// Whether `schema.name` is a function (any overload) on the server.
    pub fn has_function(&self, schema: &str, name: &str) -> bool {
        self.flags(schema, name).is_some()
    }

    /// Whether any schema has a function, aggregate or procedure called `name`.
    pub fn any_function_named(&self, name: &str) -> bool {
        self.function_names.contains(name)
    }

    /// Whether every overload of `schema.name` was created by initdb.
    pub fn is_builtin_function(&self, schema: &str, name: &str) -> bool {
        self.flags(schema, name).is_some_and(|f| f.builtin)
    }

    /// Whether an overload of `pg_catalog.name` is not executable by PUBLIC.
    pub fn is_privileged_function(&self, name: &str) -> bool {
        self.flags("pg_catalog", name).is_some_and(|f| f.privileged)
    }

    /// Whether pg_catalog holds a relation called `name` (searched before the path).
    pub fn is_catalog_relation(&self, name: &str) -> bool {
        self.catalog_relations.contains(name)
    }

    /// Whether `schema.name` is a relation initdb created (pg_catalog, information_schema).
    pub fn is_builtin_relation(&self, schema: &str, name: &str) -> bool {
        self.builtin_relations
            .contains(&(schema.to_owned(), name.to_owned()))
    }

    /// Whether `schema.name` is a view reading pg_settings (writing it changes settings).
    pub fn is_settings_view(&self, schema: &str, name: &str) -> bool {
        self.settings_views
            .contains(&(schema.to_owned(), name.to_owned()))
    }

    /// The functions operators called `name` (in `schema`, or any schema) run, for operators
    /// created outside initdb and extensions.
    pub fn operator_functions<'a>(
        &'a self,
        schema: Option<&'a str>,
        name: &str,
    ) -> impl Iterator<Item = &'a FunctionRef> + 'a {
        self.operators
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |(s, _)| schema.is_none_or(|want| want == s))
            .map(|(_, f)| f)
    }

    /// Cast functions to a type called `type_name`, created outside initdb and extensions.
    pub fn cast_functions(&self, type_name: &str) -> &[FunctionRef] {
        self.casts.get(type_name).map_or(&[], Vec::as_slice)
    }

    /// The function an OID names, as (schema, name).
    pub fn function_by_oid(&self, oid: u32) -> Option<(&str, &str)> {
        self.function_oids.get(&oid).map(|(s, n)| (&**s, &**n))
    }

    /// The sequence an OID names.
    pub fn sequence(&self, oid: u32) -> Option<(&str, &str)> {
        self.sequences
            .get(&oid)
            .map(|(s, n)| (s.as_str(), n.as_str()))
    }
}

fn number<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, CatalogError> {
    s.parse()
        .map_err(|_| CatalogError(format!("{what} {s:?} is not a number")))
}

fn relation_entry<'m>(
    building: &'m mut HashMap<u32, Relation>,
    oid: u32,
    schema: &str,
    name: &str,
) -> &'m mut Relation {
    building.entry(oid).or_insert_with(|| Relation {
        oid,
        schema: schema.to_owned(),
        name: name.to_owned(),
        columns: Vec::new(),
        definition: None,
        ancestors: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[&str]) -> Vec<Option<String>> {
        v.iter()
            .map(|s| (!s.is_empty()).then(|| (*s).to_owned()))
            .collect()
    }

    #[test]
    fn rows_build_a_catalog() {
        let c = ServerCatalog::from_rows(vec![
            row(&["v", "150018"]),
            row(&["f", "pg_catalog", "lower", "b"]),
            row(&["f", "pg_catalog", "pg_read_file", "bp"]),
            row(&["f", "pg_catalog", "evil", ""]),
            row(&["f", "public", "array_shuffle", ""]),
            row(&["r", "pg_catalog", "pg_class", "b"]),
            row(&["r", "information_schema", "fake", ""]),
            row(&["s", "16415", "hr", "payroll_seq"]),
            row(&["i", "952", "pg_catalog", "lo_open"]),
            row(&["i", "16500", "public", "report"]),
            row(&["o", "===", "public", "public", "leak"]),
            row(&["c", "mytype", "public", "to_mytype"]),
            row(&["w", "public", "v"]),
            row(&["w", "pg_catalog", "pg_settings"]),
        ])
        .unwrap();
        assert_eq!(c.version_num(), 150018);
        assert!(c.is_builtin_function("pg_catalog", "lower"));
        assert!(!c.is_builtin_function("pg_catalog", "evil"));
        assert!(!c.is_builtin_function("pg_catalog", "array_shuffle"));
        assert!(c.is_privileged_function("pg_read_file"));
        assert!(c.any_function_named("array_shuffle"));
        assert!(c.is_catalog_relation("pg_class"));
        assert!(c.is_builtin_relation("pg_catalog", "pg_class"));
        assert!(!c.is_builtin_relation("information_schema", "fake"));
        assert_eq!(c.sequence(16415), Some(("hr", "payroll_seq")));
        assert_eq!(c.function_by_oid(952), Some(("pg_catalog", "lo_open")));
        assert_eq!(c.function_by_oid(16500), Some(("public", "report")));
        assert_eq!(c.function_by_oid(1), None);
        assert_eq!(c.operator_functions(None, "===").count(), 1);
        assert_eq!(c.operator_functions(Some("other"), "===").count(), 0);
        assert_eq!(c.cast_functions("mytype").len(), 1);
        assert!(c.is_settings_view("public", "v"));
        assert!(!c.is_settings_view("pg_catalog", "pg_settings"));
        let created = c.with_created(&[("public".into(), "leak".into())]).unwrap();
        assert!(created.has_function("public", "leak"));
        assert!(created.generation() != c.generation());
        assert!(c.with_created(&[]).is_none());
    }

    #[test]
    fn bad_answers_are_errors() {
        assert!(ServerCatalog::from_rows(vec![row(&["f", "pg_catalog", "x", "b"])]).is_err());
        assert!(ServerCatalog::from_rows(vec![row(&["v", "x"])]).is_err());
        assert!(ServerCatalog::from_rows(vec![row(&["v", "150000"])]).is_err());
        assert!(ServerCatalog::from_rows(vec![row(&["v", "150000"]), row(&["?"])]).is_err());
        assert!(ServerCatalog::from_rows(vec![
            row(&["v", "150000"]),
            row(&["f", "pg_catalog", "x", "b"]),
            row(&["i", "x", "pg_catalog", "x"]),
        ])
        .is_err());
    }
}
