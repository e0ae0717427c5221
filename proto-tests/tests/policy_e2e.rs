//! Policy enforcement end to end: the policy corpus (crates/policy/tests/corpus.toml) replayed
//! through the real pgward binary against a real PostgreSQL with `log_statement = all`, real
//! clients under a one-table role, transaction semantics of a denial, the extended protocol,
//! control of settings, and the FunctionCall message.
//!
//! Identities: in development mode (no [entra]) pgward takes the client's user name as the
//! principal's UPN, so `alice@contoso.com` holds `reader`, `bob@contoso.com` `operator` and
//! `carol@contoso.com` `pathsetter` of crates/policy/tests/policy.toml. Roles reachable only
//! through app roles or groups (`automation`) can't be reached in this mode.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgward_proto_tests::raw::{self, read_message};
use pgward_proto_tests::*;
use tokio_postgres::NoTls;

const READER: &str = "alice@contoso.com";
const OPERATOR: &str = "bob@contoso.com";
const PATHSETTER: &str = "carol@contoso.com";
const WRITER: &str = "dave@contoso.com";
/// Holds no role at all: only the baseline applies.
const NOBODY: &str = "nobody@contoso.com";

fn policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/policy/tests")
}

fn corpus_policy() -> PathBuf {
    policy_dir().join("policy.toml")
}

fn database() -> Database {
    let db = Database::start_with(PgOptions {
        log_statements: true,
        // Also logs each extended-protocol step (parse, bind, execute) with its text, so
        // the log proves that a refused Parse never arrived either.
        extra_conf: vec!["log_min_duration_statement = 0".into()],
        ..Default::default()
    });
    db.sql("app", SCHEMA);
    db
}

fn pgward(db: &Database, policy: &Path) -> Pgward {
    Pgward::start(
        db,
        PgwardOptions {
            tls: false,
            policy: Some(policy.to_path_buf()),
            ..Default::default()
        },
    )
}

/// libpq connection string through pgward for `user`.
fn conn_as(pgward: &Pgward, user: &str) -> String {
    pgward
        .conn("app", "disable")
        .replace("user=alice", &format!("user={user}"))
}

/// The objects the corpus names, owned by the upstream login role (so the operator's allowed
/// DDL and GRANTs work), plus `reader_ro`, the reader's upstream role, which may only read the
/// reader's two tables. The harness already made public.orders (id, item, qty) with 100 rows.
const SCHEMA: &str = r#"
CREATE ROLE reader_ro NOLOGIN;
CREATE ROLE reporting NOLOGIN;
CREATE ROLE hr_admin NOLOGIN;
GRANT reader_ro TO pgward_proxy;
CREATE FUNCTION pg_catalog.sneaky(text) RETURNS text LANGUAGE sql AS 'SELECT $1';
CREATE VIEW information_schema.sneaky_v AS SELECT 1 AS x;
GRANT SELECT ON information_schema.sneaky_v TO PUBLIC;
ALTER TABLE orders OWNER TO pgward_proxy;
SET ROLE pgward_proxy;
CREATE TYPE order_status AS ENUM ('new', 'shipped', 'cancelled');
ALTER TABLE orders ALTER item DROP NOT NULL, ALTER qty DROP NOT NULL,
  ADD customer_id int, ADD total numeric(10,2), ADD note text,
  ADD placed_at timestamptz, ADD status order_status;
UPDATE orders SET customer_id = id % 10 + 1, total = id * 1.25, note = 'note ' || id,
  placed_at = timestamptz '2024-05-06 07:08:09+00' + id * interval '1 hour',
  status = CASE WHEN id % 2 = 0 THEN 'shipped'::order_status ELSE 'new' END;
CREATE TABLE customers (id int PRIMARY KEY, name text);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 10) g;
CREATE TABLE salaries (id int PRIMARY KEY, amount numeric, body text, x xml);
INSERT INTO salaries VALUES (1, 250000, 'the ceo salary', '<a>1</a>');
CREATE TABLE "Salaries" (id int, amount numeric);
CREATE TABLE archive AS SELECT * FROM orders WITH NO DATA;
CREATE VIEW salary_view AS SELECT * FROM salaries;
CREATE VIEW hr_view AS SELECT 1 AS one;
CREATE FUNCTION report(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
CREATE FUNCTION is_vip(int) RETURNS boolean LANGUAGE sql AS 'SELECT $1 > 5';
CREATE FUNCTION leak_salaries() RETURNS SETOF salaries LANGUAGE sql AS 'SELECT * FROM salaries';
CREATE PROCEDURE do_payroll() LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION array_shuffle(anyarray) RETURNS anyarray LANGUAGE sql AS 'SELECT $1';
CREATE FUNCTION leak(orders) RETURNS text LANGUAGE sql AS 'SELECT ''leaked''';
CREATE FUNCTION eq_any(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT $1 = $2';
CREATE OPERATOR === (function = eq_any, leftarg = text, rightarg = text);
CREATE TYPE mytext AS (t text);
CREATE FUNCTION to_mytext(text) RETURNS mytext LANGUAGE sql AS 'SELECT row($1)::mytext';
CREATE CAST (text AS mytext) WITH FUNCTION to_mytext(text);
CREATE VIEW settings_v AS SELECT name, setting FROM pg_settings;
CREATE VIEW settings_v2 AS SELECT * FROM settings_v;
CREATE SEQUENCE orders_seq;
CREATE SCHEMA hr;
CREATE TABLE hr.employees (id int, name text);
CREATE TABLE hr."Employees" (id int);
CREATE SEQUENCE hr.emp_seq;
CREATE SEQUENCE hr.payroll_seq;
CREATE FUNCTION hr.bonus(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
CREATE PROCEDURE hr.give_raise(int) LANGUAGE sql AS 'SELECT 1';
CREATE MATERIALIZED VIEW hr.summary AS SELECT count(*) FROM hr.employees;
CREATE TABLE hr.aliases (t tsquery, s tsquery);
CREATE SCHEMA hrx;
CREATE TABLE hrx.salaries_archive (id int);
CREATE SCHEMA scratch;
CREATE SCHEMA sales;
CREATE TABLE sales.leads (id int, name text);
INSERT INTO sales.leads VALUES (1, 'lead one');
CREATE TABLE sales.orders (id int, item text);
INSERT INTO sales.orders VALUES (1, 'sales-schema-order');
CREATE SCHEMA etl;
CREATE TABLE etl.raw (id int);
CREATE TABLE etl.staging (id int);
RESET ROLE;
GRANT USAGE ON SCHEMA public TO reader_ro;
GRANT SELECT ON orders, customers TO reader_ro;
"#;

// ---------------------------------------------------------------------------------------
// A small wire client: one session, simple and extended queries, full error fields.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct PgError {
    code: String,
    message: String,
}

impl PgError {
    fn parse(body: &[u8]) -> Self {
        let mut e = PgError {
            code: String::new(),
            message: String::new(),
        };
        for f in body.split(|b| *b == 0) {
            match f.first() {
                Some(b'C') => e.code = String::from_utf8_lossy(&f[1..]).into_owned(),
                Some(b'M') => e.message = String::from_utf8_lossy(&f[1..]).into_owned(),
                _ => {}
            }
        }
        e
    }

    /// A refusal by pgward's policy (not PostgreSQL's own "permission denied").
    fn is_policy_denial(&self) -> bool {
        self.code == "42501" && self.message.starts_with("pgward policy denied")
    }

    /// The rule named in `pgward policy denied this statement (rule <rule>): <reason>`.
    fn rule(&self) -> Option<&str> {
        let rest = self.message.split_once("(rule ")?.1;
        Some(rest.split_once(')')?.0)
    }
}

#[derive(Debug, Default)]
struct Reply {
    errors: Vec<PgError>,
    rows: Vec<Vec<Option<String>>>,
    tags: Vec<String>,
    /// The ReadyForQuery transaction status: b'I', b'T' or b'E'.
    status: u8,
    /// Every message tag received, in order.
    tags_seen: Vec<u8>,
}

impl Reply {
    fn denial(&self) -> Option<&PgError> {
        self.errors.iter().find(|e| e.is_policy_denial())
    }

    /// pgward's refusal of a corpus case: for text PostgreSQL's parser rejects
    /// (`builtin.parse_error`) that is the parser's own 42601, answered as the server would
    /// (the statement logs prove it was never forwarded), otherwise the 42501 naming a rule.
    fn refusal(&self, case: &Case) -> Option<PgError> {
        if case.rule.as_deref() == Some("builtin.parse_error") {
            return self
                .errors
                .iter()
                .find(|e| e.code == "42601")
                .map(|e| PgError {
                    code: "42501".into(),
                    message: format!(
                        "pgward policy denied this statement (rule builtin.parse_error): {}",
                        e.message
                    ),
                });
        }
        self.denial().cloned()
    }

    fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    fn single(&self) -> Option<&str> {
        self.rows.first()?.first()?.as_deref()
    }
}

struct Wire {
    s: TcpStream,
}

impl Wire {
    fn connect(port: u16, user: &str) -> Result<Wire, PgError> {
        Self::connect_with(port, &[("user", user), ("database", "app")])
    }

    fn connect_with(port: u16, params: &[(&str, &str)]) -> Result<Wire, PgError> {
        let mut s = raw::connect(port);
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&raw::startup_packet(0, params)).unwrap();
        let mut w = Wire { s };
        let r = w.read_reply_or_eof();
        match r.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(w),
        }
    }

    fn query(&mut self, sql: &str) -> Reply {
        self.s.write_all(&raw::query(sql)).unwrap();
        self.read_reply()
    }

    /// Parse (unnamed) + Bind + Execute + Sync in one write.
    fn extended(&mut self, sql: &str) -> Reply {
        let mut b = parse_msg("", sql);
        b.extend(bind_msg("", ""));
        b.extend(execute_msg(""));
        b.extend(raw::message(b'S', &[]));
        self.s.write_all(&b).unwrap();
        self.read_reply()
    }

    /// Parse (unnamed) + Sync only: what pgward decides at Parse, without executing.
    fn parse_only(&mut self, sql: &str) -> Reply {
        let mut b = parse_msg("", sql);
        b.extend(raw::message(b'S', &[]));
        self.s.write_all(&b).unwrap();
        self.read_reply()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads up to and including ReadyForQuery. Answers CopyInResponse with CopyDone.
    fn read_reply(&mut self) -> Reply {
        let r = self.read_reply_or_eof();
        assert_ne!(
            r.status, 0,
            "connection closed or timed out before ReadyForQuery: {r:?}"
        );
        r
    }

    /// Like `read_reply`, but an end of the connection ends the reply (status 0).
    fn read_reply_or_eof(&mut self) -> Reply {
        let mut r = Reply::default();
        loop {
            let Some((tag, body)) = read_message(&mut self.s) else {
                return r;
            };
            r.tags_seen.push(tag);
            match tag {
                b'E' => r.errors.push(PgError::parse(&body)),
                b'C' => r.tags.push(
                    String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned(),
                ),
                b'D' => r.rows.push(data_row(&body)),
                b'G' => self.send(&raw::message(b'c', &[])),
                b'Z' => {
                    r.status = body[0];
                    return r;
                }
                _ => {}
            }
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        let _ = self.s.write_all(&raw::message(b'X', &[]));
    }
}

fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let len = len as usize;
            out.push(Some(
                String::from_utf8_lossy(&body[at..at + len]).into_owned(),
            ));
            at += len;
        }
    }
    out
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn parse_msg(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cstr(name);
    b.extend(cstr(sql));
    b.extend(0u16.to_be_bytes());
    raw::message(b'P', &b)
}

fn bind_msg(portal: &str, stmt: &str) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(cstr(stmt));
    b.extend(0u16.to_be_bytes()); // parameter formats
    b.extend(0u16.to_be_bytes()); // parameters
    b.extend(0u16.to_be_bytes()); // result formats
    raw::message(b'B', &b)
}

fn execute_msg(portal: &str) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(0u32.to_be_bytes());
    raw::message(b'E', &b)
}

async fn tokio_connect(conn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn assert_tokio_denied(r: Result<impl std::fmt::Debug, tokio_postgres::Error>, what: &str) {
    let e = r.expect_err(&format!("{what}: expected a policy denial"));
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not a database error: {e:?}"));
    assert_eq!(db.code().code(), "42501", "{what}: {db:?}");
    assert!(
        db.message().starts_with("pgward policy denied"),
        "{what}: {}",
        db.message()
    );
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits a moment for the server's log to catch up, then returns it.
fn server_log(db: &Database) -> String {
    std::thread::sleep(Duration::from_millis(300));
    db.pg.log()
}

// ---------------------------------------------------------------------------------------
// The corpus, read with a small parser for the subset of TOML the file uses (the test crate
// has no TOML dependency): `[[case]]` tables of strings and one array of strings.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Case {
    index: usize,
    role: String,
    sql: String,
    verdict: String,
    rule: Option<String>,
    why: String,
    setup: Vec<String>,
    /// Which server catalog the case is decided with (see crates/policy/tests/corpus.rs):
    /// this server is PostgreSQL 15 with the same objects, so `pg15` cases run here too.
    catalog: Option<String>,
}

fn load_corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(policy_dir().join("corpus.toml")).unwrap();
    parse_corpus(&text)
}

fn parse_corpus(text: &str) -> Vec<Case> {
    let b: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut cases: Vec<Case> = Vec::new();
    loop {
        skip_blank(&b, &mut i);
        if i >= b.len() {
            break;
        }
        if starts(&b, i, "[[case]]") {
            cases.push(Case {
                index: cases.len(),
                ..Default::default()
            });
            i += 8;
            continue;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_') {
            i += 1;
        }
        let key: String = b[start..i].iter().collect();
        assert!(!key.is_empty(), "corpus.toml: unexpected {:?} at {i}", b[i]);
        skip_spaces(&b, &mut i);
        assert_eq!(b[i], '=', "corpus.toml: expected = after {key}");
        i += 1;
        skip_spaces(&b, &mut i);
        let case = cases.last_mut().expect("corpus.toml: key before [[case]]");
        if key == "setup" {
            assert_eq!(b[i], '[');
            i += 1;
            loop {
                skip_blank(&b, &mut i);
                if b[i] == ']' {
                    i += 1;
                    break;
                }
                case.setup.push(toml_string(&b, &mut i));
                skip_blank(&b, &mut i);
                if b[i] == ',' {
                    i += 1;
                }
            }
        } else {
            let v = toml_string(&b, &mut i);
            match key.as_str() {
                "role" => case.role = v,
                "sql" => case.sql = v,
                "verdict" => case.verdict = v,
                "rule" => case.rule = Some(v),
                "why" => case.why = v,
                "catalog" => case.catalog = Some(v),
                k => panic!("corpus.toml: unknown key {k}"),
            }
        }
    }
    cases
}

fn starts(b: &[char], i: usize, s: &str) -> bool {
    s.chars().enumerate().all(|(k, c)| b.get(i + k) == Some(&c))
}

fn skip_spaces(b: &[char], i: &mut usize) {
    while *i < b.len() && (b[*i] == ' ' || b[*i] == '\t') {
        *i += 1;
    }
}

fn skip_blank(b: &[char], i: &mut usize) {
    while *i < b.len() {
        if b[*i].is_whitespace() {
            *i += 1;
        } else if b[*i] == '#' {
            while *i < b.len() && b[*i] != '\n' {
                *i += 1;
            }
        } else {
            break;
        }
    }
}

fn toml_string(b: &[char], i: &mut usize) -> String {
    let mut out = String::new();
    if starts(b, *i, "'''") {
        *i += 3;
        if starts(b, *i, "\r\n") {
            *i += 2;
        } else if b[*i] == '\n' {
            *i += 1;
        }
        while !starts(b, *i, "'''") {
            out.push(b[*i]);
            *i += 1;
        }
        *i += 3;
        // Up to two quotes may end the content itself.
        while *i < b.len() && b[*i] == '\'' && !out.ends_with("''") {
            out.push('\'');
            *i += 1;
        }
        return out;
    }
    if b[*i] == '\'' {
        *i += 1;
        while b[*i] != '\'' {
            out.push(b[*i]);
            *i += 1;
        }
        *i += 1;
        return out;
    }
    assert!(
        !starts(b, *i, "\"\"\""),
        "corpus.toml: multi-line basic strings are not supported by this reader"
    );
    assert_eq!(b[*i], '"', "corpus.toml: expected a string at {}", *i);
    *i += 1;
    loop {
        let c = b[*i];
        *i += 1;
        match c {
            '"' => return out,
            '\\' => {
                let e = b[*i];
                *i += 1;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'e' => out.push('\u{1b}'),
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    'u' | 'U' => {
                        let n = if e == 'u' { 4 } else { 8 };
                        let hex: String = b[*i..*i + n].iter().collect();
                        *i += n;
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                    }
                    other => panic!("corpus.toml: unknown escape \\{other}"),
                }
            }
            c => out.push(c),
        }
    }
}

fn user_for(role: &str) -> Option<&'static str> {
    match role {
        "reader" => Some(READER),
        "operator" => Some(OPERATOR),
        "pathsetter" => Some(PATHSETTER),
        "writer" => Some(WRITER),
        "none" => Some(NOBODY),
        _ => None,
    }
}

/// The marker appended (on its own line, as a block comment) to each corpus statement, so
/// the server log can be searched for exactly that case. On its own line it is a comment in
/// every case: after a `--` comment it starts a new line, and inside an unterminated string
/// (a parse-error case) it stays part of the broken string.
fn marker(index: usize) -> String {
    format!("pgward-e2e-case-{index} */")
}

/// The marker of the same case sent as an extended-protocol Parse.
fn parse_marker(index: usize) -> String {
    format!("pgward-e2e-parse-{index} */")
}

#[test]
fn corpus_reader_is_faithful() {
    let cases = load_corpus();
    assert_eq!(cases.len(), 594, "corpus size changed: update this test");
    let denies = cases.iter().filter(|c| c.verdict == "deny").count();
    let allows = cases.iter().filter(|c| c.verdict == "allow").count();
    assert_eq!(denies + allows, cases.len());
    for c in &cases {
        assert!(
            !c.role.is_empty() && !c.sql.is_empty() && !c.why.is_empty(),
            "{c:?}"
        );
    }
    // Spot checks of each string form the file uses.
    assert_eq!(cases[46].sql, "-- just a comment\nSELECT 1");
    assert_eq!(cases[71].sql, r#"SELECT * FROM U&"\0073alaries""#);
    assert_eq!(
        cases[320].sql,
        r#"SELECT E'\'' AS q, $x$ ' $x$ AS d FROM orders"#
    );
    assert_eq!(
        cases[321].sql,
        r#"SELECT * FROM orders WHERE note = E'\''; DELETE FROM orders; --'"#
    );
    assert_eq!(
        cases[39].setup,
        ["PREPARE q AS SELECT * FROM orders WHERE id = $1"]
    );
    assert_eq!(cases[274].rule, None);
}

/// Every corpus case whose role can be reached in development mode, through pgward, in a
/// fresh session per case (setup statements first): denied cases are refused with 42501
/// naming the rule and never reach the server; allowed ones are not refused and do reach it.
#[test]
fn corpus_end_to_end() {
    let started = Instant::now();
    let db = database();
    let pgward = pgward(&db, &corpus_policy());
    let cases = load_corpus();

    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let mut skipped = Vec::new();
    let mut relaxed = Vec::new();
    let mut ran = Vec::new();
    for c in &cases {
        let runs_here = c.catalog.as_deref().is_none_or(|k| k == "pg15");
        let Some(user) = user_for(&c.role).filter(|_| runs_here) else {
            skipped.push(c.index);
            continue;
        };
        let mut w = match Wire::connect(pgward.port, user) {
            Ok(w) => w,
            Err(e) => {
                failures.push(format!(
                    "case {} [{}]: connection as {user} refused: {e:?}",
                    c.index, c.role
                ));
                continue;
            }
        };
        let mut setup_refused = false;
        for s in &c.setup {
            let r = w.query(s);
            if let Some(e) = r.denial() {
                setup_refused = true;
                notes.push(format!(
                    "case {} setup {s:?} refused: {} (so the case is decided without it)",
                    c.index, e.message
                ));
            }
            if r.status != b'I' {
                w.query("ROLLBACK");
            }
        }
        // First as an extended-protocol Parse (decided there, executed never: no Bind).
        let parsed = w.parse_only(&format!("{}\n/* {}", c.sql, parse_marker(c.index)));
        match (c.verdict.as_str(), parsed.refusal(c).as_ref()) {
            ("deny", None) => failures.push(format!(
                "case {} [{}] {:?}: Parse not refused: {parsed:?}",
                c.index, c.role, c.sql
            )),
            ("deny", Some(e))
                if c.rule.is_some() && e.rule() != c.rule.as_deref() && !setup_refused =>
            {
                failures.push(format!(
                    "case {} [{}] {:?}: Parse denied by rule {:?}, corpus says {:?}",
                    c.index,
                    c.role,
                    c.sql,
                    e.rule(),
                    c.rule
                ))
            }
            ("allow", Some(e)) => failures.push(format!(
                "case {} [{}] {:?}: Parse refused by policy: {}",
                c.index, c.role, c.sql, e.message
            )),
            _ => {}
        }
        if parsed.status != b'I' {
            w.query("ROLLBACK");
        }
        let sql = format!("{}\n/* {}", c.sql, marker(c.index));
        let r = w.query(&sql);
        ran.push(c.index);
        let denial = r.refusal(c);
        match (c.verdict.as_str(), denial) {
            ("deny", None) => failures.push(format!(
                "case {} [{}] {:?} ({}): expected a denial, got {:?}",
                c.index, c.role, c.sql, c.why, r
            )),
            ("deny", Some(e)) => {
                if let Some(want) = &c.rule {
                    if e.rule() != Some(want.as_str()) {
                        if setup_refused {
                            relaxed.push(format!(
                                "case {} {:?}: rule {:?} instead of {want} (its setup was refused)",
                                c.index,
                                c.sql,
                                e.rule()
                            ));
                        } else {
                            failures.push(format!(
                                "case {} [{}] {:?}: denied by rule {:?}, corpus says {want}: {}",
                                c.index,
                                c.role,
                                c.sql,
                                e.rule(),
                                e.message
                            ));
                        }
                    }
                }
                // Nothing of a denied query string ran, and the answer is one error.
                if !r.tags.is_empty() || !r.rows.is_empty() || r.errors.len() != 1 {
                    failures.push(format!(
                        "case {} {:?}: a denied query string also produced {:?}",
                        c.index, c.sql, r
                    ));
                }
                // The session stays usable.
                let after = w.query("SELECT 'usable'");
                if after.single() != Some("usable") {
                    failures.push(format!(
                        "case {} {:?}: session not usable after the denial: {after:?}",
                        c.index, c.sql
                    ));
                }
            }
            ("allow", Some(e)) => failures.push(format!(
                "case {} [{}] {:?} ({}): refused by policy: {}",
                c.index, c.role, c.sql, c.why, e.message
            )),
            ("allow", None) => {
                for e in &r.errors {
                    notes.push(format!(
                        "case {} [{}] {:?}: allowed, failed upstream: {} {}",
                        c.index, c.role, c.sql, e.code, e.message
                    ));
                }
            }
            (v, _) => panic!("case {}: unknown verdict {v}", c.index),
        }
    }

    // The server's statement log: no denied case's text arrived; every allowed one did.
    let log = server_log(&db);
    let mut leaked = Vec::new();
    let mut missing = Vec::new();
    for &i in &ran {
        let c = &cases[i];
        for (how, m) in [("Query", marker(i)), ("Parse", parse_marker(i))] {
            let arrived = log.contains(&m);
            if c.verdict == "deny" && arrived {
                leaked.push(format!("case {i} [{}] {how} {:?}", c.role, c.sql));
            }
            if c.verdict == "allow" && !arrived {
                missing.push(format!("case {i} [{}] {how} {:?}", c.role, c.sql));
            }
        }
    }
    let elapsed = started.elapsed();
    let ran_deny = ran.iter().filter(|i| cases[**i].verdict == "deny").count();
    println!(
        "corpus end to end: {} cases ran ({} deny, {} allow), {} skipped (roles reachable only \
         through app roles or groups: {:?}), {:.1}s",
        ran.len(),
        ran_deny,
        ran.len() - ran_deny,
        skipped.len(),
        skipped
            .iter()
            .map(|i| cases[*i].role.as_str())
            .collect::<std::collections::BTreeSet<_>>(),
        elapsed.as_secs_f64()
    );
    for n in &notes {
        println!("note: {n}");
    }
    for n in &relaxed {
        println!("relaxed: {n}");
    }
    for m in &missing {
        println!("allowed but not in the server log: {m}");
    }
    assert!(
        leaked.is_empty(),
        "denied statements reached the server:\n{}",
        leaked.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} corpus failures end to end:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        missing.is_empty(),
        "allowed statements never reached the server:\n{}",
        missing.join("\n")
    );
    assert!(ran.len() >= 340, "only {} cases ran", ran.len());
    assert!(
        elapsed < Duration::from_secs(120),
        "corpus took {elapsed:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Real clients under a role that may only read public.orders.
// ---------------------------------------------------------------------------------------

const ONE_TABLE_USER: &str = "dana@contoso.com";

const ONE_TABLE_POLICY: &str = r#"
mode = "enforce"
search_path = ["public"]

[[roles]]
name = "orders_reader"
members = { users = ["dana@contoso.com"] }
allow = [ { name = "orders_only", actions = ["select"], objects = ["public.orders"] } ]
"#;

fn one_table_setup() -> (Database, Pgward, tempfile::TempDir) {
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("one-table.toml");
    std::fs::write(&policy, ONE_TABLE_POLICY).unwrap();
    let pgward = pgward(&db, &policy);
    (db, pgward, dir)
}

#[test]
fn psql_under_a_one_table_role() {
    let (db, pgward, _dir) = one_table_setup();
    let conn = conn_as(&pgward, ONE_TABLE_USER);
    let d = psql_ok(&conn, &["-c", r"\d"]);
    assert!(d.contains("orders"), "{d}");
    let dt = psql_ok(&conn, &["-c", r"\dt"]);
    assert!(dt.contains("orders") && dt.contains("customers"), "{dt}");
    let l = psql_ok(&conn, &["-c", r"\l"]);
    assert!(l.contains("app") && l.contains("postgres"), "{l}");
    let dn = psql_ok(&conn, &["-c", r"\dn"]);
    assert!(dn.contains("public") && dn.contains("sales"), "{dn}");
    let d_orders = psql_ok(&conn, &["-c", r"\d orders"]);
    assert!(
        d_orders.contains("placed_at") && d_orders.contains("orders_pkey"),
        "{d_orders}"
    );
    let d_plus = psql_ok(&conn, &["-c", r"\d+ orders"]);
    assert!(d_plus.contains("status"), "{d_plus}");
    let sel = psql_ok(
        &conn,
        &[
            "-At",
            "-c",
            "SELECT id, total, placed_at, status FROM orders WHERE id = 2",
        ],
    );
    assert_eq!(sel.trim(), "2|2.50|2024-05-06 09:08:09+00|shipped", "{sel}");

    // A write, and a read of another table, are refused with 42501 naming the rule.
    for (i, sql) in [
        "INSERT INTO orders (item, qty) VALUES ('psql-write', 1)",
        "UPDATE orders SET qty = 0",
        "SELECT * FROM customers",
        "SELECT * FROM salaries",
    ]
    .iter()
    .enumerate()
    {
        let sql = format!("{sql} /* psql-denied-{i} */");
        let out = psql(&conn, &["-v", "VERBOSITY=verbose", "-c", &sql], None);
        assert!(!out.status.success(), "{sql}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains("ERROR:  42501: pgward policy denied this statement (rule default_deny)"),
            "{sql}: {err}"
        );
    }
    let log = server_log(&db);
    assert!(
        !log.contains("psql-denied-"),
        "a denied statement reached the server"
    );
    assert_eq!(
        db.sql(
            "app",
            "SELECT count(*) FROM orders WHERE item = 'psql-write' OR qty = 0"
        ),
        "0"
    );
}

#[test]
fn pgbench_under_a_one_table_role() {
    let (db, pgward, dir) = one_table_setup();
    let conn = conn_as(&pgward, ONE_TABLE_USER);
    let script = dir.path().join("select.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 100)\nSELECT id, total, placed_at FROM orders WHERE id = :id;\n",
    )
    .unwrap();
    for mode in ["simple", "extended", "prepared"] {
        let out = std::process::Command::new("pgbench")
            .args(["-n", "-c", "2", "-j", "1", "-t", "50", "-M", mode, "-f"])
            .arg(&script)
            .arg(&conn)
            .output()
            .unwrap();
        let text = stdout(&out);
        assert!(
            out.status.success(),
            "pgbench -M {mode}: {text}\n{}",
            stderr(&out)
        );
        assert!(
            text.contains("number of transactions actually processed: 100/100"),
            "{text}"
        );
    }
    // A script touching another table fails with the policy's error in every mode.
    let bad = dir.path().join("bad.sql");
    std::fs::write(
        &bad,
        "SELECT count(*) FROM customers /* pgbench-denied */;\n",
    )
    .unwrap();
    for mode in ["simple", "extended", "prepared"] {
        let out = std::process::Command::new("pgbench")
            .args(["-n", "-c", "1", "-t", "3", "-M", mode, "-f"])
            .arg(&bad)
            .arg(&conn)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(
            err.contains("pgward policy denied"),
            "pgbench -M {mode} with a denied script: {}\n{err}",
            stdout(&out)
        );
    }
    assert!(!server_log(&db).contains("pgbench-denied"));
}

#[test]
fn python_clients_under_a_one_table_role() {
    let (db, pgward, _dir) = one_table_setup();
    let out = run_python(
        "policy_clients.py",
        &[
            ("PGWARD_DSN", conn_as(&pgward, ONE_TABLE_USER)),
            ("PGWARD_HOST", "127.0.0.1".into()),
            ("PGWARD_PORT", pgward.port.to_string()),
            ("PGWARD_USER", ONE_TABLE_USER.into()),
        ],
    );
    assert!(out.contains("all python policy checks passed"), "{out}");
    assert!(!server_log(&db).contains("py-denied-"));
    assert_eq!(
        db.sql("app", "SELECT count(*) FROM orders WHERE item LIKE 'py-%'"),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_under_a_one_table_role() {
    let (db, pgward, _dir) = one_table_setup();
    let client = tokio_connect(&conn_as(&pgward, ONE_TABLE_USER)).await;
    let stmt = client
        .prepare("SELECT id, total::text, placed_at::text, status::text FROM orders WHERE id = $1")
        .await
        .unwrap();
    for id in [3i32, 4] {
        let row = client.query_one(&stmt, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), id);
        assert_eq!(
            row.get::<_, String>(1),
            format!("{:.2}", f64::from(id) * 1.25)
        );
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    assert_tokio_denied(
        client
            .prepare("SELECT * FROM customers /* tp-denied-1 */")
            .await,
        "prepare of another table",
    );
    assert_tokio_denied(
        client
            .execute("UPDATE orders SET qty = 0 /* tp-denied-2 */", &[])
            .await,
        "extended-protocol write",
    );
    assert_tokio_denied(
        client
            .simple_query("DELETE FROM orders /* tp-denied-3 */")
            .await,
        "simple-protocol write",
    );
    // Still usable, with the earlier prepared statement too.
    let row = client.query_one(&stmt, &[&5i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 5);
    assert!(!server_log(&db).contains("tp-denied-"));
    assert_eq!(db.sql("app", "SELECT count(*) FROM orders"), "100");
}

// ---------------------------------------------------------------------------------------
// Transactions.
// ---------------------------------------------------------------------------------------

/// Sends a pipelined BEGIN; ok; denied; ok; COMMIT batch and checks its five replies: the
/// denial aborts the transaction, the next statement fails with 25P02 and COMMIT rolls back.
fn assert_pipelined_tx_rolled_back(w: &mut Wire, batch: &[u8]) {
    w.send(batch);
    let replies: Vec<Reply> = (0..5).map(|_| w.read_reply()).collect();
    assert!(replies[0].ok() && replies[1].ok(), "{replies:?}");
    assert!(replies[2].denial().is_some(), "{replies:?}");
    assert_eq!(
        replies[3].errors.first().map(|e| e.code.as_str()),
        Some("25P02")
    );
    assert_eq!(replies[4].tags, ["ROLLBACK"], "{replies:?}");
}

#[test]
fn denial_aborts_the_transaction() {
    let db = database();
    let pgward = pgward(&db, &corpus_policy());

    // Raw wire, so the exact codes and transaction states are visible.
    let mut w = Wire::connect(pgward.port, OPERATOR).unwrap();
    let r = w.query("BEGIN");
    assert!(r.ok() && r.status == b'T', "{r:?}");
    let r = w.query("INSERT INTO orders (item, qty) VALUES ('tx-probe-1', 1)");
    assert!(r.ok() && r.status == b'T', "{r:?}");
    let r = w.query("SELECT * FROM salaries /* tx-denied-1 */");
    let e = r.denial().unwrap_or_else(|| panic!("not denied: {r:?}"));
    assert_eq!(e.rule(), Some("no_salaries"), "{}", e.message);
    assert_eq!(r.status, b'E', "transaction not aborted: {r:?}");
    let r = w.query("SELECT 1");
    assert_eq!(
        r.errors.first().map(|e| e.code.as_str()),
        Some("25P02"),
        "{r:?}"
    );
    assert_eq!(r.status, b'E');
    let r = w.query("COMMIT");
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.tags, ["ROLLBACK"], "COMMIT of an aborted transaction");
    assert_eq!(r.status, b'I');
    assert_eq!(
        db.sql(
            "app",
            "SELECT count(*) FROM orders WHERE item = 'tx-probe-1'"
        ),
        "0",
        "a write of the aborted transaction committed"
    );
    // The session works normally afterwards, and a clean transaction commits.
    for sql in [
        "BEGIN",
        "INSERT INTO orders (item, qty) VALUES ('tx-probe-2', 1)",
        "COMMIT",
    ] {
        let r = w.query(sql);
        assert!(r.ok(), "{sql}: {r:?}");
    }
    assert_eq!(
        db.sql(
            "app",
            "SELECT count(*) FROM orders WHERE item = 'tx-probe-2'"
        ),
        "1"
    );

    // A denial at Parse (extended protocol) inside a transaction aborts it as well.
    let r = w.query("BEGIN");
    assert!(r.ok());
    let r = w.extended("INSERT INTO orders (item, qty) VALUES ('tx-probe-3', 1)");
    assert!(r.ok() && r.status == b'T', "{r:?}");
    let r = w.extended("DELETE FROM salaries /* tx-denied-2 */");
    assert!(r.denial().is_some(), "{r:?}");
    assert_eq!(r.status, b'E', "{r:?}");
    let r = w.extended("SELECT 1");
    assert_eq!(
        r.errors.first().map(|e| e.code.as_str()),
        Some("25P02"),
        "{r:?}"
    );
    let r = w.query("COMMIT");
    assert_eq!(r.tags, ["ROLLBACK"], "{r:?}");
    assert_eq!(
        db.sql(
            "app",
            "SELECT count(*) FROM orders WHERE item = 'tx-probe-3'"
        ),
        "0"
    );

    // As in PostgreSQL, ROLLBACK TO SAVEPOINT recovers from the error.
    for sql in [
        "BEGIN",
        "INSERT INTO orders (item, qty) VALUES ('tx-probe-4', 1)",
        "SAVEPOINT a",
    ] {
        let r = w.query(sql);
        assert!(r.ok(), "{sql}: {r:?}");
    }
    let r = w.query("TRUNCATE salaries /* tx-denied-3 */");
    assert!(r.denial().is_some() && r.status == b'E', "{r:?}");
    let r = w.query("ROLLBACK TO SAVEPOINT a");
    assert!(
        r.ok() && r.status == b'T',
        "ROLLBACK TO SAVEPOINT after a denial: {r:?}"
    );
    let r = w.query("INSERT INTO orders (item, qty) VALUES ('tx-probe-5', 1)");
    assert!(r.ok(), "{r:?}");
    let r = w.query("COMMIT");
    assert_eq!(r.tags, ["COMMIT"], "{r:?}");
    assert_eq!(
        db.sql(
            "app",
            "SELECT count(*) FROM orders WHERE item IN ('tx-probe-4', 'tx-probe-5')"
        ),
        "2"
    );

    // A denied statement in a multi-statement query string: nothing of the string runs.
    let r = w.query(
        "INSERT INTO orders (item, qty) VALUES ('tx-probe-6', 1); SELECT * FROM salaries /* tx-denied-4 */",
    );
    assert!(r.denial().is_some() && r.tags.is_empty(), "{r:?}");
    assert_eq!(r.status, b'I');
    assert_eq!(
        db.sql(
            "app",
            "SELECT count(*) FROM orders WHERE item = 'tx-probe-6'"
        ),
        "0"
    );
    drop(w);

    // All of it pipelined in one write: simple Queries, then extended-protocol batches.
    let mut w = Wire::connect(pgward.port, OPERATOR).unwrap();
    let mut batch = raw::query("BEGIN");
    batch.extend(raw::query(
        "INSERT INTO orders (item, qty) VALUES ('tx-probe-7', 1)",
    ));
    batch.extend(raw::query("SELECT * FROM salaries /* tx-denied-5 */"));
    batch.extend(raw::query(
        "INSERT INTO orders (item, qty) VALUES ('tx-probe-8', 1)",
    ));
    batch.extend(raw::query("COMMIT"));
    assert_pipelined_tx_rolled_back(&mut w, &batch);
    let mut batch = raw::query("BEGIN");
    for sql in [
        "INSERT INTO orders (item, qty) VALUES ('tx-probe-9', 1)",
        "UPDATE salaries SET amount = 0 /* tx-denied-6 */",
        "INSERT INTO orders (item, qty) VALUES ('tx-probe-10', 1)",
    ] {
        batch.extend(parse_msg("", sql));
        batch.extend(bind_msg("", ""));
        batch.extend(execute_msg(""));
        batch.extend(raw::message(b'S', &[]));
    }
    batch.extend(raw::query("COMMIT"));
    assert_pipelined_tx_rolled_back(&mut w, &batch);
    assert_eq!(
        db.sql(
            "app",
            "SELECT count(*) FROM orders WHERE item LIKE 'tx-probe-_' OR item LIKE 'tx-probe-1_'"
        ),
        "3",
        "only tx-probe-2, -4 and -5 were committed"
    );
    assert_eq!(db.sql("app", "SELECT amount FROM salaries"), "250000");
    drop(w);

    // The same story through psql, which prints ROLLBACK for the COMMIT.
    let script = "BEGIN;\n\
                  INSERT INTO orders (item, qty) VALUES ('tx-probe-psql', 1);\n\
                  SELECT amount FROM salaries /* tx-denied-psql */;\n\
                  SELECT 'after denial';\n\
                  COMMIT;\n\
                  SELECT 'session still ' || 'usable';\n";
    let out = psql(
        &conn_as(&pgward, OPERATOR),
        &["-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=verbose"],
        Some(script),
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(
        se.contains("ERROR:  42501: pgward policy denied this statement (rule no_salaries)"),
        "{se}"
    );
    assert!(se.contains("ERROR:  25P02"), "{se}");
    assert!(
        so.contains("ROLLBACK"),
        "COMMIT should answer ROLLBACK:\n{so}"
    );
    assert!(!so.contains("after denial"), "{so}");
    assert!(so.contains("session still usable"), "{so}");
    assert_eq!(
        db.sql(
            "app",
            "SELECT count(*) FROM orders WHERE item = 'tx-probe-psql'"
        ),
        "0"
    );
    assert!(!server_log(&db).contains("tx-denied-"));
}

// ---------------------------------------------------------------------------------------
// Extended protocol.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_is_decided_at_parse() {
    let db = database();
    let pgward = pgward(&db, &corpus_policy());
    let client = tokio_connect(&conn_as(&pgward, READER)).await;

    // prepare() sends Parse/Describe/Sync: the denial arrives there.
    assert_tokio_denied(
        client
            .prepare("SELECT amount FROM salaries /* ext-denied-1 */")
            .await,
        "prepare",
    );
    assert_tokio_denied(
        client
            .query("SELECT * FROM orders FOR UPDATE /* ext-denied-2 */", &[])
            .await,
        "query",
    );
    let n: i64 = client
        .query_one("SELECT count(*) FROM orders WHERE id <= $1", &[&10i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10, "connection unusable after a denial");

    // Pipelined: allowed, denied, allowed.
    let (a, b, c) = tokio::join!(
        client.query("SELECT id FROM orders WHERE id = $1", &[&7i32]),
        client.query("SELECT amount FROM salaries /* ext-denied-3 */", &[]),
        client.query("SELECT count(*) FROM customers", &[]),
    );
    assert_eq!(a.unwrap()[0].get::<_, i32>(0), 7);
    assert_tokio_denied(b, "pipelined denial");
    assert_eq!(c.unwrap()[0].get::<_, i64>(0), 10);

    // Many pipelined at once, alternating.
    let futs = (0..40).map(|i| {
        let client = &client;
        async move {
            if i % 2 == 0 {
                let r = client.query_one("SELECT $1::int + 1", &[&i]).await.unwrap();
                assert_eq!(r.get::<_, i32>(0), i + 1);
            } else {
                let sql = format!("SELECT * FROM salaries WHERE id = {i} /* ext-denied-many */");
                assert_tokio_denied(client.query(&sql, &[]).await, "pipelined many");
            }
        }
    });
    futures_util::future::join_all(futs).await;

    // Raw: a denied named Parse with its Bind/Execute in one batch gets one error and the
    // rest is skipped until Sync; the statement name never exists upstream.
    let mut w = Wire::connect(pgward.port, READER).unwrap();
    let mut batch = parse_msg("good", "SELECT id FROM orders WHERE id = 1");
    batch.extend(bind_msg("", "good"));
    batch.extend(execute_msg(""));
    batch.extend(raw::message(b'S', &[]));
    batch.extend(parse_msg(
        "bad",
        "SELECT amount FROM salaries /* ext-denied-raw */",
    ));
    batch.extend(bind_msg("", "bad"));
    batch.extend(execute_msg(""));
    batch.extend(raw::message(b'S', &[]));
    batch.extend(parse_msg("", "SELECT 42"));
    batch.extend(bind_msg("", ""));
    batch.extend(execute_msg(""));
    batch.extend(raw::message(b'S', &[]));
    w.send(&batch);
    let first = w.read_reply();
    assert!(first.ok() && first.single() == Some("1"), "{first:?}");
    let second = w.read_reply();
    assert_eq!(second.errors.len(), 1, "{second:?}");
    assert!(second.denial().is_some(), "{second:?}");
    assert_eq!(second.tags_seen, [b'E', b'Z'], "{second:?}");
    let third = w.read_reply();
    assert!(third.ok() && third.single() == Some("42"), "{third:?}");
    // Binding the refused name later fails (it was never prepared), and runs nothing.
    let mut b = bind_msg("", "bad");
    b.extend(execute_msg(""));
    b.extend(raw::message(b'S', &[]));
    w.send(&b);
    let r = w.read_reply();
    assert!(!r.ok() && r.rows.is_empty(), "{r:?}");
    // The allowed named statement is still there.
    let mut b = bind_msg("", "good");
    b.extend(execute_msg(""));
    b.extend(raw::message(b'S', &[]));
    w.send(&b);
    let r = w.read_reply();
    assert!(r.ok() && r.single() == Some("1"), "{r:?}");

    // Parse + Flush (no Sync yet): the error comes at once, as PostgreSQL would send it; the
    // Bind/Execute that follow are skipped until Sync.
    let mut b = parse_msg("", "SELECT amount FROM salaries /* ext-denied-flush */");
    b.extend(raw::message(b'H', &[]));
    w.send(&b);
    w.s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let flushed = read_message(&mut w.s);
    w.s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (tag, body) = flushed.expect("no answer to Parse + Flush within 3s");
    assert_eq!(tag, b'E');
    assert!(PgError::parse(&body).is_policy_denial());
    let mut b = bind_msg("", "");
    b.extend(execute_msg(""));
    b.extend(raw::message(b'S', &[]));
    w.send(&b);
    let r = w.read_reply();
    assert_eq!(
        r.tags_seen,
        [b'Z'],
        "after the error everything until Sync is skipped: {r:?}"
    );
    assert_eq!(w.query("SELECT 'usable'").single(), Some("usable"));

    assert!(!server_log(&db).contains("ext-denied-"));
}

// ---------------------------------------------------------------------------------------
// Settings that change how SQL is read or who the session is.
// ---------------------------------------------------------------------------------------

const CONTROLLED: &[(&str, &str)] = &[
    ("SET search_path = hr", "builtin.protected_setting"),
    ("SET search_path TO DEFAULT", "builtin.protected_setting"),
    ("RESET search_path", "builtin.protected_setting"),
    // set_config() with a literal name is decided as that setting.
    (
        "SELECT set_config('search_path', 'hr', false)",
        "builtin.protected_setting",
    ),
    (
        "SELECT pg_catalog.set_config('search_path', 'hr', true)",
        "builtin.protected_setting",
    ),
    // With a computed name it stays a dangerous function.
    (
        "SELECT set_config(lower('SEARCH_PATH'), 'hr', false)",
        "builtin.dangerous_function",
    ),
    ("SET ROLE postgres", "builtin.protected_setting"),
    ("RESET ROLE", "builtin.protected_setting"),
    (
        "SET SESSION AUTHORIZATION postgres",
        "builtin.protected_setting",
    ),
    (
        "SET standard_conforming_strings = off",
        "builtin.protected_setting",
    ),
    ("SET backslash_quote = on", "builtin.protected_setting"),
    (
        "SET pgward.upn = 'ceo@contoso.com'",
        "builtin.pgward_settings",
    ),
    // Spellings: quoted and mixed-case names, SESSION, TO DEFAULT.
    ("SET \"Search_Path\" = hr", "builtin.protected_setting"),
    ("SET SESSION search_path = hr", "builtin.protected_setting"),
    ("SET \"ROLE\" = 'postgres'", "builtin.protected_setting"),
    ("SET role TO DEFAULT", "builtin.protected_setting"),
    (
        "SET Standard_Conforming_Strings TO off",
        "builtin.protected_setting",
    ),
    (
        "SET SESSION AUTHORIZATION DEFAULT",
        "builtin.protected_setting",
    ),
];

fn assert_settings_unchanged(w: &mut Wire, who: &str) {
    let sp = w.query("SHOW search_path");
    let sp = sp.single().unwrap_or_default().to_owned();
    assert!(!sp.contains("hr"), "{who}: search_path is now {sp}");
    let scs = w.query("SHOW standard_conforming_strings");
    assert_eq!(scs.single(), Some("on"), "{who}");
    let users = w.query("SELECT current_user, session_user");
    let row = &users.rows[0];
    assert_ne!(row[0].as_deref(), Some("postgres"), "{who}: {row:?}");
    assert_eq!(row[1].as_deref(), Some(PROXY_ROLE), "{who}: {row:?}");
}

#[test]
fn settings_are_controlled() {
    let db = database();
    let pgward = pgward(&db, &corpus_policy());

    for user in [READER, OPERATOR] {
        let mut w = Wire::connect(pgward.port, user).unwrap();
        for (sql, rule) in CONTROLLED {
            for (proto, r) in [("simple", w.query(sql)), ("extended", w.extended(sql))] {
                let e = r
                    .denial()
                    .unwrap_or_else(|| panic!("{user} {proto} {sql:?} not denied: {r:?}"));
                assert_eq!(
                    e.rule(),
                    Some(*rule),
                    "{user} {proto} {sql:?}: {}",
                    e.message
                );
                assert_eq!(r.status, b'I');
            }
        }
        // Inside a transaction block, SET LOCAL too.
        assert!(w.query("BEGIN").ok());
        let r = w.query("SET LOCAL search_path = hr");
        assert!(r.denial().is_some(), "{user}: {r:?}");
        assert!(w.query("ROLLBACK").ok());
        // Harmless settings are fine.
        let r = w.query("SET application_name = 'policy-e2e'");
        assert!(r.ok(), "{user}: {r:?}");
        assert_settings_unchanged(&mut w, user);
    }

    // Startup parameters: refused at sign-in or not applied.
    for params in [
        &[("user", READER), ("database", "app"), ("search_path", "hr")][..],
        &[
            ("user", READER),
            ("database", "app"),
            ("options", "-c search_path=hr"),
        ][..],
        &[
            ("user", READER),
            ("database", "app"),
            ("options", "-c standard_conforming_strings=off"),
        ][..],
        &[
            ("user", READER),
            ("database", "app"),
            ("pgward.upn", "ceo@contoso.com"),
        ][..],
        &[
            ("user", READER),
            ("database", "app"),
            ("replication", "database"),
        ][..],
        &[("user", READER), ("database", "app"), ("role", "postgres")][..],
    ] {
        match Wire::connect_with(pgward.port, params) {
            Err(e) => println!("startup {params:?} refused: {} {}", e.code, e.message),
            Ok(mut w) => {
                println!("startup {params:?} accepted");
                assert_settings_unchanged(&mut w, &format!("startup {params:?}"));
                let upn = w.query("SELECT current_setting('pgward.upn', true)");
                assert_ne!(upn.single(), Some("ceo@contoso.com"), "{params:?}");
            }
        }
    }

    // carol may change her search path; pgward follows it, and so does the server.
    let mut w = Wire::connect(pgward.port, PATHSETTER).unwrap();
    let r = w.query("SELECT item FROM orders WHERE id = 1");
    assert_eq!(r.single(), Some("item1"), "{r:?}");
    let r = w.query("SET search_path = sales");
    assert!(r.ok(), "carol SET search_path: {r:?}");
    assert_eq!(w.query("SHOW search_path").single(), Some("sales"));
    // `orders` now names sales.orders (both candidates are allowed to carol).
    let r = w.query("SELECT item FROM orders WHERE id = 1");
    assert_eq!(r.single(), Some("sales-schema-order"), "{r:?}");
    // `leads` could be public.leads (public was on the path): refused, but qualified works.
    let r = w.query("SELECT * FROM leads");
    assert_eq!(
        r.denial().and_then(|e| e.rule()),
        Some("default_deny"),
        "{r:?}"
    );
    let r = w.query("SELECT name FROM sales.leads");
    assert_eq!(r.single(), Some("lead one"), "{r:?}");
    // set_config of search_path is the same as SET for her; a computed name is not, and
    // standard_conforming_strings and role stay out of reach.
    for (sql, rule) in [
        (
            "SELECT set_config(lower('SEARCH_PATH'), 'hr', false)",
            "builtin.dangerous_function",
        ),
        (
            "SET standard_conforming_strings = off",
            "builtin.protected_setting",
        ),
        ("SET ROLE postgres", "builtin.protected_setting"),
    ] {
        let r = w.query(sql);
        assert_eq!(
            r.denial().and_then(|e| e.rule()),
            Some(rule),
            "carol {sql}: {r:?}"
        );
    }
    // Moving to hr is allowed as a setting, after which hr's tables are candidates too.
    let r = w.query("SET search_path = hr; SELECT * FROM orders");
    assert_eq!(
        r.denial().and_then(|e| e.rule()),
        Some("default_deny"),
        "{r:?}"
    );
    assert_eq!(
        w.query("SHOW search_path").single(),
        Some("sales"),
        "denied string ran"
    );
}

/// `upstream_role`: the reader's upstream session runs `SET ROLE reader_ro`; the operator,
/// without one, runs as the login role.
#[test]
fn upstream_role_is_applied() {
    let db = database();
    let pgward = pgward(&db, &corpus_policy());
    for (user, want) in [(READER, "reader_ro"), (OPERATOR, PROXY_ROLE)] {
        let mut w = Wire::connect(pgward.port, user).unwrap();
        let r = w.query("SELECT current_user, session_user");
        assert_eq!(
            r.rows.first().cloned().unwrap_or_default(),
            [Some(want.to_owned()), Some(PROXY_ROLE.to_owned())],
            "{user}: {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// FunctionCall.
// ---------------------------------------------------------------------------------------

/// Sends a FunctionCall message with `body` and expects it refused (42501).
fn function_call_refused(w: &mut Wire, body: &[u8]) -> Reply {
    w.send(&raw::message(b'F', body));
    let r = w.read_reply();
    assert_eq!(
        r.errors.first().map(|e| e.code.as_str()),
        Some("42501"),
        "{r:?}"
    );
    r
}

/// FunctionCall is decided as the call of the function its OID names: lo_* (dangerous, and
/// named by no rule of the corpus policy) are refused, a harmless built-in runs.
#[test]
fn function_call_is_decided_as_its_function() {
    let db = database();
    let pgward = pgward(&db, &corpus_policy());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.txt");
    std::fs::write(&file, "large object payload\n").unwrap();

    // psql's \lo_import goes through libpq's lo_import (FunctionCall messages).
    for user in [READER, OPERATOR] {
        let script = format!(
            "\\lo_import '{}'\nSELECT 'still ' || 'alive';\n",
            file.display()
        );
        let out = psql(
            &conn_as(&pgward, user),
            &["-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=verbose"],
            Some(&script),
        );
        let (so, se) = (stdout(&out), stderr(&out));
        assert!(se.contains("42501"), "{user} \\lo_import: {se}\n{so}");
        assert!(so.contains("still alive"), "{user}: {so}\n{se}");
    }
    assert_eq!(
        db.sql("app", "SELECT count(*) FROM pg_largeobject_metadata"),
        "0"
    );

    // A raw FunctionCall: lo_creat(mode) by oid, text format.
    let oid: u32 = db
        .sql("app", "SELECT 'pg_catalog.lo_creat'::regproc::oid")
        .parse()
        .unwrap();
    let mut w = Wire::connect(pgward.port, OPERATOR).unwrap();
    let mut body = oid.to_be_bytes().to_vec();
    body.extend(0u16.to_be_bytes()); // argument formats: all text
    body.extend(1u16.to_be_bytes()); // one argument
    body.extend(6i32.to_be_bytes());
    body.extend(b"131072");
    body.extend(0u16.to_be_bytes()); // result format
    let r = function_call_refused(&mut w, &body);
    assert_eq!(r.status, b'I');
    assert_eq!(w.query("SELECT 'usable'").single(), Some("usable"));
    // A harmless built-in function by oid runs: the message is decided as the call of the
    // function it names (`SELECT "pg_catalog"."now"()`), not refused as such.
    let now: u32 = db
        .sql("app", "SELECT 'pg_catalog.now'::regproc::oid")
        .parse()
        .unwrap();
    let mut harmless = now.to_be_bytes().to_vec();
    harmless.extend(0u16.to_be_bytes());
    harmless.extend(0u16.to_be_bytes());
    harmless.extend(0u16.to_be_bytes());
    w.send(&raw::message(b'F', &harmless));
    let r = w.read_reply();
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(r.tags_seen, [b'V', b'Z'], "{r:?}");
    // Inside a transaction block a refusal aborts it, like any error.
    assert!(w.query("BEGIN").ok());
    let r = function_call_refused(&mut w, &body);
    assert_eq!(r.status, b'E', "{r:?}");
    assert_eq!(w.query("COMMIT").tags, ["ROLLBACK"]);
    assert_eq!(
        db.sql("app", "SELECT count(*) FROM pg_largeobject_metadata"),
        "0"
    );
}

// ---------------------------------------------------------------------------------------
// Client encodings: pgward must read a statement's text exactly as the server will.
// ---------------------------------------------------------------------------------------

/// In Shift-JIS, 0x95 0x5C is one character (表) whose second byte is a backslash in ASCII;
/// in BIG5 and GBK, 0xA1 0x5C is. Both can end valid UTF-8: "Õ" is C3 95 (SJIS reads C3 as
/// one half-width katakana, then 95 5C), U+3861 is E3 A1 A1 (BIG5/GBK read E3 A1, then A1 5C).
/// Read as UTF-8, `SELECT E'Õ\' AS x, amount FROM salaries --'` selects one string literal;
/// the server, converting from the client encoding first, sees the literal end after 表 and
/// reads salaries. Invalid UTF-8 (the raw 0x95 0x5C) is tried too.
#[test]
fn client_encoding_cannot_smuggle_statements() {
    let db = database();
    let pgward = pgward(&db, &corpus_policy());
    let payload = |lead: &[u8], tag: &str| -> Vec<u8> {
        let mut q = b"SELECT E'".to_vec();
        q.extend(lead);
        q.extend(b"\\' AS x, amount FROM salaries /* ");
        q.extend(tag.as_bytes());
        q.extend(b" */ --'");
        q.push(0);
        q
    };
    let mut outcomes = Vec::new();
    let mut smuggled = Vec::new();
    for (how, encoding, lead) in [
        ("SET", "SJIS", "Õ".as_bytes()),
        ("SET", "SJIS", &b"\x95"[..]),
        ("SET NAMES", "BIG5", "\u{3861}".as_bytes()),
        ("SET", "GBK", "\u{3861}".as_bytes()),
        ("SET", "GB18030", "\u{3861}".as_bytes()),
        ("startup", "SJIS", "Õ".as_bytes()),
        ("startup", "BIG5", "\u{3861}".as_bytes()),
    ] {
        let tag = format!(
            "smuggle-{}-{encoding}-{:02x}",
            how.replace(' ', "_"),
            lead[0]
        );
        let mut w = if how == "startup" {
            match Wire::connect_with(
                pgward.port,
                &[
                    ("user", OPERATOR),
                    ("database", "app"),
                    ("client_encoding", encoding),
                ],
            ) {
                Ok(w) => w,
                Err(e) => {
                    outcomes.push(format!("{tag}: sign-in refused: {}", e.message));
                    continue;
                }
            }
        } else {
            let mut w = Wire::connect(pgward.port, OPERATOR).unwrap();
            let set = if how == "SET" {
                format!("SET client_encoding = '{encoding}'")
            } else {
                format!("SET NAMES '{encoding}'")
            };
            let r = w.query(&set);
            if !r.ok() {
                outcomes.push(format!("{tag}: SET refused: {:?}", r.errors));
                continue;
            }
            w
        };
        for (proto, msg) in [
            (
                "Query",
                raw::message(b'Q', &payload(lead, &format!("{tag}-q"))),
            ),
            ("Parse", {
                let mut body = vec![0u8]; // unnamed statement
                body.extend(payload(lead, &format!("{tag}-p")));
                body.extend(0u16.to_be_bytes());
                let mut m = raw::message(b'P', &body);
                m.extend(bind_msg("", ""));
                m.extend(execute_msg(""));
                m.extend(raw::message(b'S', &[]));
                m
            }),
        ] {
            w.send(&msg);
            let r = w.read_reply_or_eof();
            outcomes.push(format!(
                "{tag} {proto}: errors {:?} tags {:?} rows {:?}{}",
                r.errors,
                r.tags,
                r.rows,
                if r.status == 0 {
                    " (connection closed)"
                } else {
                    ""
                }
            ));
            if r.rows
                .iter()
                .flatten()
                .any(|v| v.as_deref().is_some_and(|v| v.contains("250000")))
            {
                smuggled.push(format!("{tag} {proto}: {r:?}"));
            }
            if r.status == 0 {
                break;
            }
        }
    }
    for o in &outcomes {
        println!("{o}");
    }
    let log = server_log(&db);
    let arrived: Vec<&str> = log.lines().filter(|l| l.contains("smuggle-")).collect();
    assert!(
        smuggled.is_empty() && arrived.is_empty(),
        "statements smuggled past the policy through the client encoding:\n{}\nserver log:\n{}",
        smuggled.join("\n"),
        arrived.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// A policy change while a session holds prepared statements.
// ---------------------------------------------------------------------------------------

/// Connects as the one-table user and prepares a count of orders, checking it reads all 100.
async fn connect_and_prepare_orders_count(
    pgward: &Pgward,
) -> (tokio_postgres::Client, tokio_postgres::Statement) {
    let client = tokio_connect(&conn_as(pgward, ONE_TABLE_USER)).await;
    let stmt = client
        .prepare("SELECT count(*) FROM orders /* reload-bind */")
        .await
        .unwrap();
    assert_eq!(
        client.query_one(&stmt, &[]).await.unwrap().get::<_, i64>(0),
        100
    );
    (client, stmt)
}

/// Rewrites the policy file to move the role from orders to customers, and waits (15s at
/// most) until `client`'s session reads customers under the new policy.
async fn move_policy_to_customers(policy: &Path, client: &tokio_postgres::Client) {
    std::fs::write(
        policy,
        ONE_TABLE_POLICY.replace("public.orders", "public.customers"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while client
        .query("SELECT count(*) FROM customers", &[])
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the new policy was not picked up in 15s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After the policy file changes (pgward watches it), a statement the new policy denies
/// must not run any more in an existing session: neither anew nor by SQL EXECUTE of an
/// earlier PREPARE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_applies_to_existing_sessions() {
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("reload.toml");
    std::fs::write(&policy, ONE_TABLE_POLICY).unwrap();
    let pgward = pgward(&db, &policy);
    let (client, _stmt) = connect_and_prepare_orders_count(&pgward).await;
    client
        .batch_execute("PREPARE sqlq AS SELECT count(*) FROM orders /* reload-execute */")
        .await
        .unwrap();

    // The new policy moves the role from orders to customers.
    move_policy_to_customers(&policy, &client).await;
    assert_tokio_denied(
        client.query("SELECT count(*) FROM orders", &[]).await,
        "a new statement on orders after the reload",
    );
    assert_tokio_denied(
        client.simple_query("EXECUTE sqlq").await,
        "SQL EXECUTE of a statement prepared before the reload",
    );
}

/// The same change, for a statement parsed (extended protocol) before it: Bind/Execute of
/// it must not read a table the new policy denies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_applies_to_statements_parsed_before() {
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("reload.toml");
    std::fs::write(&policy, ONE_TABLE_POLICY).unwrap();
    let pgward = pgward(&db, &policy);
    let (client, stmt) = connect_and_prepare_orders_count(&pgward).await;
    move_policy_to_customers(&policy, &client).await;
    assert_tokio_denied(
        client.query_one(&stmt, &[]).await,
        "Bind/Execute of a statement parsed before the reload",
    );
}

// ---------------------------------------------------------------------------------------
// COPY sub-protocol: a Query after COPY data is still decided.
// ---------------------------------------------------------------------------------------

#[test]
fn queries_after_copy_are_still_decided() {
    let db = database();
    let pgward = pgward(&db, &corpus_policy());
    let mut w = Wire::connect(pgward.port, OPERATOR).unwrap();
    let copy_data = |text: &str| raw::message(b'd', text.as_bytes());
    for (i, copy) in [
        "COPY orders (item) FROM STDIN",
        // Allowed by the policy, fails upstream: no COPY mode at all.
        "COPY no_such_table FROM STDIN",
        "COPY orders (no_such_column) FROM STDIN",
    ]
    .iter()
    .enumerate()
    {
        // All in one write: the COPY, its data and end, then a denied query.
        let mut batch = raw::query(copy);
        batch.extend(copy_data("copy-row\n"));
        batch.extend(raw::message(b'c', &[]));
        batch.extend(raw::query(&format!(
            "SELECT amount FROM salaries /* copy-smuggle-{i} */"
        )));
        w.send(&batch);
        let first = w.read_reply();
        let second = w.read_reply();
        assert!(
            second.denial().is_some() && second.rows.is_empty(),
            "{copy}: the query after the COPY was not refused: {first:?} / {second:?}"
        );
        // With a CopyFail instead.
        let mut batch = raw::query(copy);
        batch.extend(raw::message(b'f', b"client gave up\0"));
        batch.extend(raw::query(&format!(
            "SELECT amount FROM salaries /* copy-smuggle-fail-{i} */"
        )));
        w.send(&batch);
        let _ = w.read_reply();
        let r = w.read_reply();
        assert!(
            r.denial().is_some() && r.rows.is_empty(),
            "{copy} + CopyFail: {r:?}"
        );
        assert_eq!(
            w.query("SELECT 'usable'").single(),
            Some("usable"),
            "{copy}"
        );
    }
    let log = server_log(&db);
    let arrived: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("copy-smuggle-"))
        .collect();
    assert!(
        arrived.is_empty(),
        "denied statements reached the server:\n{}",
        arrived.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Observe mode.
// ---------------------------------------------------------------------------------------

/// `mode = "observe"`: what would be denied runs, and pgward says what it would have denied.
#[test]
fn observe_mode_does_not_block() {
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("observe.toml");
    std::fs::write(
        &policy,
        ONE_TABLE_POLICY.replace("mode = \"enforce\"", "mode = \"observe\""),
    )
    .unwrap();
    let pgward = pgward(&db, &policy);
    let mut w = Wire::connect(pgward.port, ONE_TABLE_USER).unwrap();
    let r = w.query("SELECT name FROM customers WHERE id = 1 /* observed-1 */");
    assert_eq!(r.single(), Some("customer 1"), "{r:?}");
    let r = w.extended("SELECT amount FROM salaries /* observed-2 */");
    assert_eq!(r.single(), Some("250000"), "{r:?}");
    assert!(server_log(&db).contains("observed-2"));
    assert!(
        wait_until(Duration::from_secs(5), || pgward
            .log()
            .contains("policy would deny")),
        "no observe-mode record in pgward's log:\n{}",
        pgward.log()
    );
}

/// Names resolve against the server's own catalog: a function created through pgward is a
/// call in attribute notation from the next statement on (for every caller), one created
/// outside pgward is learned at the next refresh (here: a policy reload), and sequences
/// named by OID are the sequences the server means. Nothing denied reaches the server.
#[test]
fn names_resolve_against_the_server_catalog() {
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let text = std::fs::read_to_string(corpus_policy()).unwrap();
    std::fs::write(&policy, &text).unwrap();
    let pgward = pgward(&db, &policy);
    assert!(
        pgward.log().contains("upstream catalog read") || {
            // The first session reads it.
            let _ = Wire::connect(pgward.port, READER);
            wait_until(Duration::from_secs(5), || {
                pgward.log().contains("upstream catalog read")
            })
        },
        "{}",
        pgward.log()
    );

    // Created through pgward by the operator: known at once, for the reader too.
    let mut op = Wire::connect(pgward.port, OPERATOR).unwrap();
    let r = op.query(
        "CREATE FUNCTION public.peek(orders) RETURNS text LANGUAGE sql AS 'SELECT ''peeked'''",
    );
    assert!(r.ok(), "{r:?}");
    let mut reader = Wire::connect(pgward.port, READER).unwrap();
    for (i, sql) in [
        "SELECT o.peek FROM orders o LIMIT 1",
        "SELECT (o).peek FROM orders o LIMIT 1",
        "SELECT x.peek FROM (SELECT o FROM orders o) x(o) LIMIT 1",
    ]
    .iter()
    .enumerate()
    {
        let r = reader.query(&format!("{sql} /* catalog-created-{i} */"));
        let e = r.denial().unwrap_or_else(|| panic!("{sql}: {r:?}"));
        assert_eq!(e.rule(), Some("default_deny"), "{sql}: {}", e.message);
        assert!(e.message.contains("peek"), "{}", e.message);
    }
    // The same string that creates and calls a function decides the call knowing it.
    let r = reader.query("SELECT c.name FROM customers c WHERE c.id = 1");
    assert_eq!(r.single(), Some("customer 1"), "{r:?}");

    // Created outside pgward: learned when the catalog is read again (a reload here).
    db.sql(
        "app",
        "CREATE FUNCTION public.peek_outside(orders) RETURNS text LANGUAGE sql AS 'SELECT ''x'''",
    );
    std::fs::write(&policy, format!("{text}\n# reloaded\n")).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            reader
                .parse_only("SELECT o.peek_outside FROM orders o /* catalog-outside */")
                .denial()
                .is_some()
        }),
        "a function created outside pgward was never learned:\n{}",
        pgward.log()
    );
    // (Until then pgward took peek_outside for a column: Parse only, nothing executed.)
    let r = reader.query("SELECT o.peek_outside FROM orders o /* catalog-outside-learned */");
    assert_eq!(
        r.denial().and_then(PgError::rule),
        Some("default_deny"),
        "{r:?}"
    );

    // Sequences by OID: regclass input reads digits as an OID.
    let payroll = db
        .sql("app", "SELECT 'hr.payroll_seq'::regclass::oid")
        .trim()
        .to_owned();
    let allowed = db
        .sql("app", "SELECT 'public.orders_seq'::regclass::oid")
        .trim()
        .to_owned();
    for sql in [
        format!("SELECT nextval('{payroll}')"),
        format!("SELECT setval({payroll}, 5)"),
        format!("SELECT currval({payroll}::regclass)"),
        format!("SELECT pg_sequence_last_value({payroll})"),
        "SELECT nextval(' hr . payroll_seq ')".to_owned(),
    ] {
        let r = op.query(&format!("{sql} /* catalog-oid */"));
        let e = r.denial().unwrap_or_else(|| panic!("{sql}: {r:?}"));
        assert_eq!(e.rule(), Some("no_salaries"), "{sql}: {}", e.message);
    }
    let r = op.query(&format!("SELECT nextval('{allowed}')"));
    assert_eq!(r.single(), Some("1"), "{r:?}");

    let log = server_log(&db);
    for m in ["catalog-created-", "catalog-outside-learned", "catalog-oid"] {
        assert!(
            !log.contains(m),
            "a denied statement ({m}) reached the server"
        );
    }
}
