//! `pgward policy explain`, `pgward audit ...` and the development tools run as a user
//! would: the built binary, its output and its exit status.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgward_audit::{
    AuditConfig, AuditLog, Client, Decision, Identity, ObjectAction, Outcome, Protocol,
    SessionInfo, Statement,
};

fn pgward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgward"))
        .args(args)
        .output()
        .expect("run pgward")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The policy the policy crate's corpus is decided against.
fn corpus_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/policy.toml")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Checks the exit code (showing both streams if it is wrong) and returns stdout.
fn stdout_of(o: &Output, code: i32) -> String {
    let out = stdout(o);
    assert_eq!(o.status.code(), Some(code), "{out}{}", stderr(o));
    out
}

/// `pgward policy explain --policy POLICY REST...`.
fn explain(policy: &Path, rest: &[&str]) -> Output {
    let mut args = vec!["policy", "explain", "--policy", p(policy)];
    args.extend_from_slice(rest);
    pgward(&args)
}

/// Writes `text` as the policy, explains `SELECT 1` for user `a` against it and expects a
/// load error (exit 2); returns stderr.
fn explain_load_error(policy: &Path, text: &str) -> String {
    std::fs::write(policy, text).expect("write policy");
    let o = explain(policy, &["--user", "a", "SELECT 1"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    err
}

/// Closes an audit log on a throwaway runtime.
fn close_log(log: &AuditLog) {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(log.close("test done"))
        .expect("close");
}

#[test]
fn explain_allows_with_the_deciding_rule() {
    let o = explain(
        &corpus_policy(),
        &[
            "--user",
            "alice@contoso.com",
            "SELECT o.id FROM orders o WHERE o.customer_id IN (SELECT id FROM customers)",
        ],
    );
    let out = stdout_of(&o, 0);
    assert!(out.contains("roles: reader"), "{out}");
    assert!(out.contains("select    orders"), "{out}");
    assert!(out.contains("select    customers"), "{out}");
    assert!(
        out.contains("decision: allow (rule reader_tables)"),
        "{out}"
    );
}

/// With `--catalog`, names resolve against that server's catalog (a PostgreSQL 15 one here):
/// `array_shuffle` is not built in there, and an operator runs a user function.
#[test]
fn explain_with_a_server_catalog() {
    let catalog =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/fixtures/pg15_catalog.tsv");
    let sql = "SELECT array_shuffle(ARRAY[1]), 'a' === 'b'";
    let o = explain(&corpus_policy(), &["--role", "reader", sql]);
    let out = stdout_of(&o, 0);
    assert!(out.contains("server catalog: none"), "{out}");
    let o = explain(
        &corpus_policy(),
        &["--role", "reader", "--catalog", p(&catalog), sql],
    );
    let out = stdout_of(&o, 1);
    assert!(out.contains("server catalog: version 150018"), "{out}");
    assert!(out.contains("may call  public.eq_any()"), "{out}");
    assert!(
        out.contains("execute on function public.array_shuffle"),
        "{out}"
    );

    let q = stdout_of(&pgward(&["policy", "catalog-query"]), 0);
    assert!(
        q.contains("pg_catalog.pg_proc") && q.contains("server_version_num"),
        "{q}"
    );
    let bad = std::env::temp_dir().join(format!("pgward-bad-catalog-{}", std::process::id()));
    std::fs::write(&bad, "x\ty\n").expect("write");
    let o = explain(
        &corpus_policy(),
        &["--role", "reader", "--catalog", p(&bad), "SELECT 1"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let _ = std::fs::remove_file(&bad);
}

#[test]
fn explain_denies_and_names_the_rule() {
    let policy = corpus_policy();
    // A deny-list role's explicit deny.
    let o = explain(
        &policy,
        &["--user", "bob@contoso.com", "SELECT * FROM SALARIES"],
    );
    let out = stdout_of(&o, 1);
    assert!(out.contains("decision: deny (rule no_salaries)"), "{out}");

    // Roles given by name; an allow-list role falls through to the default deny.
    let o = explain(
        &policy,
        &[
            "--role",
            "reader",
            "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
        ],
    );
    let out = stdout_of(&o, 1);
    assert!(out.contains("delete    orders"), "{out}");
    assert!(out.contains("decision: deny (rule default_deny)"), "{out}");

    // Roles from a group claim, and a search path that moves an unqualified name.
    let o = explain(
        &policy,
        &[
            "--user",
            "someone@contoso.com",
            "--group",
            "11111111-1111-1111-1111-111111111111",
            "--search-path",
            "sales",
            "SELECT * FROM orders",
        ],
    );
    let out = stdout(&o);
    assert!(out.contains("roles: reader"), "{out}");
    assert!(out.contains("search_path: sales"), "{out}");
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));

    // An unknown role name is a usage error, not a deny.
    let o = explain(&policy, &["--role", "nobody", "SELECT 1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nobody"), "{}", stderr(&o));
}

#[test]
fn explain_finds_the_policy_through_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(corpus_policy(), dir.path().join("policy.toml")).expect("copy policy");
    let cfg = dir.path().join("pgward.toml");
    // A relative policy path is relative to the config file, not the working directory.
    std::fs::write(
        &cfg,
        "upstreams = []\nroutes = []\n[listen]\naddr = \"127.0.0.1:6432\"\n\n[policy]\nfile = \"policy.toml\"\n",
    )
    .expect("write config");
    let o = pgward(&[
        "policy",
        "explain",
        "--config",
        p(&cfg),
        "--user",
        "alice@contoso.com",
        "SELECT * FROM orders",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn explain_reports_every_policy_problem_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    let err = explain_load_error(
        &policy,
        "[[roles]]\nname = \"r\"\nmembers = { users = [\"a\"] }\nallow = [ { actions = [\"select\"], objects = [\"x\" } ]\n",
    );
    assert!(err.contains("policy.toml: line 4:"), "{err}");

    // Semantic problems: each one reported, each with its own line.
    let err = explain_load_error(
        &policy,
        "[[roles]]\nname = \"r\"\nmembers = { users = [\"a\"] }\nallow = [ { actions = [\"slect\"], objects = [\"x.y\"] } ]\n\n[[roles]]\nname = \"s\"\nmembers = { users = [\"b\"] }\nallow = [ { actions = [\"frobnicate\"], objects = [\"x.y\"] } ]\n",
    );
    assert!(err.contains("line 4:") && err.contains("slect"), "{err}");
    assert!(
        err.contains("line 9:") && err.contains("frobnicate"),
        "{err}"
    );

    // A missing file and a config without [policy] are load errors too.
    let o = explain(&dir.path().join("none.toml"), &["SELECT 1"]);
    assert_eq!(o.status.code(), Some(2));
    let cfg = dir.path().join("pgward.toml");
    std::fs::write(
        &cfg,
        "upstreams = []\nroutes = []\n[listen]\naddr = \"x\"\n",
    )
    .expect("write config");
    let o = pgward(&["policy", "explain", "--config", p(&cfg), "SELECT 1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("[policy]"), "{}", stderr(&o));
}

fn session(n: u32, upn: &str, roles: &[&str]) -> SessionInfo {
    SessionInfo {
        session: format!("s{n}"),
        client: Client {
            addr: format!("10.0.0.{n}:50000"),
            user: Some(upn.to_owned()),
            application_name: Some("psql".to_owned()),
            tls: true,
            tls_version: Some("TLSv1.3".to_owned()),
        },
        identity: Some(Identity {
            oid: Some(format!("0000000{n}-0000-4000-8000-000000000000")),
            upn: Some(upn.to_owned()),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..Identity::default()
        }),
        database: Some("app".to_owned()),
    }
}

/// Writes a small log through the audit crate, as the proxy does: alice reads orders twice,
/// bob is denied salaries (the SQL has a comma and quotes, for CSV quoting) and then reads
/// orders. Returns the active file.
fn write_log(dir: &Path) -> PathBuf {
    let cfg = AuditConfig {
        file: dir.join("audit/pgward.jsonl"),
        ..AuditConfig::default()
    };
    let log = AuditLog::open(&cfg, "pgward-test").expect("open audit log");
    let ok = |sql| Statement {
        sql,
        protocol: Protocol::Simple,
        objects: &[ObjectAction {
            object: "public.orders",
            action: "select",
        }],
        decision: Decision::Allow,
        rule: Some("reader_tables"),
        outcome: Outcome {
            command_tag: Some("SELECT 1"),
            rows: Some(1),
            ..Outcome::default()
        },
        duration_us: 100,
        ..Statement::default()
    };
    let alice = log.session(&session(1, "alice@contoso.com", &["reader"]));
    alice.connect(&Default::default()).wait().expect("connect");
    alice
        .statement(&ok("SELECT * FROM orders"))
        .wait()
        .expect("stmt");
    alice
        .statement(&ok("SELECT id FROM orders"))
        .wait()
        .expect("stmt");
    let bob = log.session(&session(2, "bob@contoso.com", &["operator"]));
    bob.connect(&Default::default()).wait().expect("connect");
    bob.statement(&Statement {
        sql: "SELECT name, \"Pay\" FROM salaries",
        objects: &[ObjectAction {
            object: "public.salaries",
            action: "select",
        }],
        decision: Decision::Deny,
        rule: Some("no_salaries"),
        outcome: Outcome {
            sqlstate: Some("42501"),
            message: Some("permission denied by pgward policy rule no_salaries"),
            ..Outcome::default()
        },
        ..Statement::default()
    })
    .wait()
    .expect("stmt");
    bob.statement(&ok("SELECT count(*) FROM orders"))
        .wait()
        .expect("stmt");
    close_log(&log);
    cfg.file
}

#[test]
fn verify_passes_then_names_the_edited_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = write_log(dir.path());

    let o = pgward(&["audit", "verify", p(&active)]);
    let out = stdout_of(&o, 0);
    assert!(
        out.contains("OK:") && out.contains("chain is intact"),
        "{out}"
    );

    // Through the config's [audit] file as well (relative to the config).
    let cfg = dir.path().join("pgward.toml");
    std::fs::write(
        &cfg,
        "[listen]\naddr = \"x\"\n[audit]\nfile = \"audit/pgward.jsonl\"\n",
    )
    .expect("write config");
    let o = pgward(&["audit", "verify", "--config", p(&cfg)]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    // An auditor-hostile edit: make alice's second statement look harmless.
    let text = std::fs::read_to_string(&active).expect("read log");
    let (line_no, _) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("SELECT id FROM orders"))
        .expect("record present");
    let edited = text.replace("SELECT id FROM orders", "SELECT 1 FROM orders");
    std::fs::write(&active, edited).expect("write log");
    let o = pgward(&["audit", "verify", "--file", p(&active)]);
    let out = stdout_of(&o, 1);
    let expected = format!("CHANGED: {}:{}", active.display(), line_no + 1);
    assert!(out.contains(&expected), "want {expected:?} in:\n{out}");
    assert!(out.contains("FAILED:"), "{out}");

    // No files at all is an error, not a pass.
    let o = pgward(&[
        "audit",
        "verify",
        "--file",
        p(&dir.path().join("none/pgward.jsonl")),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn search_filters_in_json_and_csv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = write_log(dir.path());

    // JSON: the matching records exactly as stored.
    let o = pgward(&[
        "audit",
        "search",
        "--file",
        p(&active),
        "--user",
        "BOB@contoso.com",
        "--event",
        "statement",
        "--format",
        "json",
    ]);
    let out = stdout_of(&o, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let stored = std::fs::read_to_string(&active).expect("read log");
    for l in &lines {
        assert!(stored.lines().any(|s| s == *l), "not a stored line: {l}");
        assert!(l.contains("\"upn\":\"bob@contoso.com\""), "{l}");
    }

    // CSV: header, then one row for the denial, quoted as RFC 4180 says.
    let o = pgward(&[
        "audit",
        "search",
        p(&active),
        "--decision",
        "deny",
        "--object",
        "*.salaries",
        "--format",
        "csv",
    ]);
    let out = stdout_of(&o, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("seq,ts,instance,event,"), "{out}");
    assert!(
        lines[1].contains(",\"SELECT name, \"\"Pay\"\" FROM salaries\","),
        "{out}"
    );
    assert!(lines[1].contains(",deny,no_salaries,"), "{out}");
    assert!(lines[1].contains(",42501,"), "{out}");

    // Time range and limit: everything was written today, nothing before 2000.
    let o = pgward(&[
        "audit",
        "search",
        p(&active),
        "--to",
        "2000-01-01",
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "");
    let o = pgward(&[
        "audit",
        "search",
        p(&active),
        "--since",
        "2000-01-01",
        "--action",
        "select",
        "--limit",
        "2",
        "--format",
        "json",
    ]);
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));

    // Table output has a header and a row per match.
    let o = pgward(&["audit", "search", p(&active), "--text", "count(*)"]);
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("bob@contoso.com"), "{out}");

    // A bad time is a usage error.
    let o = pgward(&["audit", "search", p(&active), "--since", "last tuesday"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn tail_prints_the_last_records_and_follows_until_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = write_log(dir.path());

    let o = pgward(&[
        "audit",
        "tail",
        "--file",
        p(&active),
        "-n",
        "2",
        "--event",
        "statement",
        "--format",
        "json",
    ]);
    let out = stdout_of(&o, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("salaries") && lines[1].contains("count(*)"),
        "{out}"
    );

    // -f: new records appear, and SIGINT ends it cleanly (exit 0, output flushed).
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgward"))
        .args([
            "audit",
            "tail",
            "--file",
            p(&active),
            "-n",
            "1",
            "-f",
            "--format",
            "json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn tail -f");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("backlog line");
    assert!(first.contains("audit_stop"), "{first}");

    // The writer reopens the log and continues the chain.
    let cfg = AuditConfig {
        file: active.clone(),
        ..AuditConfig::default()
    };
    let log = AuditLog::open(&cfg, "pgward-test").expect("reopen");
    let s = log.session(&session(3, "carol@contoso.com", &[]));
    s.statement(&Statement {
        sql: "SELECT 'followed'",
        ..Statement::default()
    })
    .wait()
    .expect("stmt");

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while !seen.contains("followed") {
        assert!(Instant::now() < deadline, "tail -f did not show: {seen}");
        let mut l = String::new();
        if reader.read_line(&mut l).expect("read") == 0 {
            panic!("tail -f ended early: {seen}");
        }
        seen.push_str(&l);
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tail -f did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    close_log(&log);
}

/// The subcommands listed by `pgward --help`.
fn listed_commands() -> Vec<String> {
    let help = stdout_of(&pgward(&["--help"]), 0);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// `demo`, `token` and `issuer` exist only in a build with the `dev-tools` feature (the
/// README's scripts/demo, scripts/test's proto-test binary, bench/run.sh). A production
/// build (plain `cargo build -p pgward`, as deploy/Dockerfile does) does not list them and
/// answers each, whatever its arguments, with a sentence saying why, never by running it.
/// scripts/test runs this test in both builds.
#[test]
fn dev_tools_only_in_the_feature_build() {
    let commands = listed_commands();
    let dev = ["demo", "token", "issuer"];
    if cfg!(feature = "dev-tools") {
        for name in dev {
            assert!(
                commands.iter().any(|c| c == name),
                "{name} not in {commands:?}"
            );
        }
        for (name, option) in [
            ("demo", "--port"),
            ("token", "--issuer"),
            ("issuer", "--listen"),
        ] {
            let help = stdout_of(&pgward(&[name, "--help"]), 0);
            assert!(help.contains(option), "`pgward {name} --help`:\n{help}");
        }
    } else {
        for name in dev {
            assert!(
                !commands.iter().any(|c| c == name),
                "{name} in {commands:?}"
            );
        }
        let help = stdout_of(&pgward(&["--help"]), 0);
        assert!(help.contains("production build"), "{help}");
        for args in [
            &["demo", "--port", "6432"][..],
            &["demo", "--help"],
            &[
                "token",
                "--issuer",
                "http://127.0.0.1:1",
                "--user",
                "alice@contoso.com",
            ],
            &["issuer"],
        ] {
            let o = pgward(args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert_eq!(stdout(&o), "", "{args:?}");
            assert!(
                err.contains(&format!(
                    "`pgward {}` is one of the development tools",
                    args[0]
                )) && err.contains("production build")
                    && err.contains("--features dev-tools"),
                "{args:?}: {err}"
            );
        }
    }
}

/// With masks, `explain` shows which output columns are masked and why, against a catalog
/// that has the server's columns (`pgward policy catalog-query` reads them).
#[test]
fn explain_shows_masked_columns() {
    let dir = std::env::temp_dir().join(format!("pgward-cli-masks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        r#"
[[roles]]
name = "analyst"
members = { users = ["alice@contoso.com"] }
allow = [ { actions = ["select"], objects = ["public.*"] } ]
mask = [ { name = "emails", columns = ["public.customers.email"], with = "email" } ]
"#,
    )
    .expect("write policy");
    let catalog = dir.join("catalog.tsv");
    std::fs::write(
        &catalog,
        "v\t150018\nf\tpg_catalog\tlower\tb\na\t16400\tpublic\tcustomers\t1\tid\t23\tN\na\t16400\tpublic\tcustomers\t2\temail\t25\tS\n",
    )
    .expect("write catalog");
    let args = ["--user", "alice@contoso.com", "--catalog", p(&catalog)];
    let mut with_sql = args.to_vec();
    with_sql.push("SELECT id, email, lower(email) FROM customers");
    let out = stdout_of(&explain(&policy, &with_sql), 0);
    assert!(
        out.contains("masks     output column 2: public.customers.email as email (mask emails)"),
        "{out}"
    );
    assert!(
        out.contains("output column 3: NULL, computed from public.customers.email"),
        "{out}"
    );
    let mut filter = args.to_vec();
    filter.push("SELECT id FROM customers WHERE email LIKE 'a%'");
    let out = stdout_of(&explain(&policy, &filter), 1);
    assert!(out.contains("-> deny by emails"), "{out}");
    let q = stdout_of(&pgward(&["policy", "catalog-query"]), 0);
    assert!(
        q.contains("pg_get_viewdef") && q.contains("pg_attribute"),
        "{q}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
