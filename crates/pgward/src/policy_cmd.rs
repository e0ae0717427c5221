//! `pgward policy explain`: shows how the policy decides a statement for an identity, without a
//! database or a running proxy. `pgward policy grants`: the T-SQL for azure-sql routes'
//! second wall (database users and permissions generated from the policy).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};
use pgward_policy::{Policy, Principal, RoleSet, SessionState, Verdict};
use pgward_proxy::Config;

/// Exit status for a denied statement (allow is 0), so scripts can test a policy change.
const EXIT_DENY: u8 = 1;
/// Exit status for bad arguments or an unloadable config or policy; clap uses 2 for usage
/// errors too, so every "could not decide" case shares one status distinct from deny.
const EXIT_ERROR: u8 = 2;

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Show the decision for SQL: the objects and actions found, functions and settings, the
    /// verdict per statement and the rule that decided. Exits 0 on allow, 1 on deny, 2 when
    /// the config or policy cannot be loaded.
    Explain(Box<ExplainArgs>),
    /// Print the query pgward runs on an upstream database to read its catalog (names are
    /// resolved against it); its tab-separated answer is what `explain --catalog` reads.
    CatalogQuery,
    /// The second wall: database privileges compiled from the policy. For PostgreSQL routes
    /// (a --config with PostgreSQL upstreams): reads each routed database with pgward's own
    /// login and prints what must change so each upstream_role holds exactly what its policy
    /// roles allow (docs/security.md); --apply runs it and checks the database converged.
    /// Otherwise the T-SQL for Azure SQL (docs/azure-sql.md). Exits 0 when done or nothing
    /// is to change, 1 when --apply left differences, 2 on errors.
    Grants(GrantsArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["config", "policy"])))]
pub struct GrantsArgs {
    /// pgward configuration whose `[policy] file` is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// A policy file to use directly.
    #[arg(long, conflicts_with = "config")]
    policy: Option<PathBuf>,
    /// The database user of pgward's own identity (it gets IMPERSONATE on each user).
    #[arg(long, value_name = "NAME", default_value = "pgward-identity")]
    pgward_user: String,
    /// Which server's SQL: `postgres` (needs --config; connects to each routed database) or
    /// `tsql`. Default: postgres when the config routes to a PostgreSQL upstream.
    #[arg(long, value_parser = ["postgres", "tsql"])]
    dialect: Option<String>,
    /// PostgreSQL: run the changes (in one transaction per database), then read the
    /// database again and report anything still different.
    #[arg(long)]
    apply: bool,
    /// PostgreSQL: only this routed database (the name clients use).
    #[arg(long, value_name = "NAME")]
    database: Option<String>,
    /// PostgreSQL: leave PUBLIC's privileges alone (default: the config's [policy] keep_public).
    #[arg(long)]
    keep_public: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["config", "policy"])))]
pub struct ExplainArgs {
    /// pgward configuration whose `[policy] file` is explained.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// A policy file to explain directly (instead of the one the config names).
    #[arg(long, conflicts_with = "config")]
    policy: Option<PathBuf>,
    /// The user principal name (and object id unless --oid is given) to find roles for.
    #[arg(long)]
    user: Option<String>,
    /// The object id, when it differs from --user.
    #[arg(long)]
    oid: Option<String>,
    /// A group object id the identity belongs to (repeatable).
    #[arg(long = "group", value_name = "GROUP_ID")]
    groups: Vec<String>,
    /// An app role value in the identity's token (repeatable).
    #[arg(long = "app-role", value_name = "VALUE")]
    app_roles: Vec<String>,
    /// Explain for these policy roles directly instead of finding them from an identity
    /// (repeatable).
    #[arg(long = "role", value_name = "NAME", conflicts_with_all = ["oid", "groups", "app_roles"])]
    roles: Vec<String>,
    /// The session's search path (comma-separated), instead of the policy's default.
    #[arg(long, value_name = "SCHEMAS")]
    search_path: Option<String>,
    /// Decide against a server's catalog, as the proxy does: the tab-separated answer of the
    /// queries `pgward policy catalog-query` prints (`psql -qAt -F $'\t' -f query.sql`).
    /// Without it, PostgreSQL 17's built-in lists stand in.
    #[arg(long, value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// The SQL to decide (several statements allowed); `-` reads it from standard input.
    sql: String,
}

pub fn run(args: PolicyArgs) -> ExitCode {
    match args.command {
        PolicyCommand::Explain(a) => explain(&a),
        PolicyCommand::CatalogQuery => {
            // The columns and views part is what masks are planned against; run the whole
            // output with `psql -qAt -F $'\t' -f query.sql` (-q keeps SET's tag out).
            println!(
                "{};\nSET search_path = pg_catalog;\n{};",
                pgward_policy::ServerCatalog::QUERY.trim(),
                pgward_policy::ServerCatalog::COLUMNS_QUERY.trim()
            );
            ExitCode::SUCCESS
        }
        PolicyCommand::Grants(a) => grants(&a),
    }
}

fn grants(a: &GrantsArgs) -> ExitCode {
    let path = match policy_path(a.config.as_deref(), a.policy.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pgward: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let policy = match load(&path) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let config = match &a.config {
        Some(c) => match Config::load(c) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("pgward: {e}");
                return ExitCode::from(EXIT_ERROR);
            }
        },
        None => None,
    };
    let postgres = match (a.dialect.as_deref(), &config) {
        (Some("tsql"), _) => false,
        (Some(_), None) => {
            eprintln!("pgward: --dialect postgres reads the databases a --config routes to");
            return ExitCode::from(EXIT_ERROR);
        }
        (Some(_), Some(_)) => true,
        (None, Some(c)) => !pgward_proxy::grants::postgres_targets(c).is_empty(),
        (None, None) => false,
    };
    if !postgres {
        if a.apply {
            eprintln!("pgward: --apply is for PostgreSQL; run the printed T-SQL as the database's Entra admin");
            return ExitCode::from(EXIT_ERROR);
        }
        print!("{}", policy.tsql_grants(&a.pgward_user));
        return ExitCode::SUCCESS;
    }
    let Some(config) = config else {
        return ExitCode::from(EXIT_ERROR);
    };
    match pg_grants(a, &config, &policy) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgward: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Prints (or applies) the plan for each routed PostgreSQL database.
fn pg_grants(a: &GrantsArgs, config: &Config, policy: &Policy) -> Result<ExitCode, String> {
    let keep_public = a.keep_public || config.policy.as_ref().is_some_and(|p| p.keep_public);
    let mut targets = pgward_proxy::grants::postgres_targets(config);
    if let Some(db) = &a.database {
        let route = config
            .route(db)
            .ok_or_else(|| format!("no route for database {db:?}"))?;
        targets.retain(|(u, d)| *u == route.upstream && d == route.upstream_database());
    }
    let rt = crate::process::runtime(1).map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut converged = true;
        for (name, database) in &targets {
            let cfg = config
                .upstreams
                .iter()
                .find(|u| &u.name == name)
                .ok_or_else(|| format!("unknown upstream {name:?}"))?;
            let upstream = pgward_upstream::Upstream::new(cfg.clone())?;
            upstream.start_credential();
            println!("-- upstream {name}, database {database}");
            if a.apply {
                let done =
                    pgward_proxy::grants::apply(&upstream, database, policy, keep_public).await?;
                println!("-- applied {} statement(s)", done.ran);
                print!("{}", done.remaining.script(policy.version()));
                converged &= done.remaining.statements.is_empty();
            } else {
                let plan =
                    pgward_proxy::grants::plan(&upstream, database, policy, keep_public).await?;
                print!("{}", plan.script(policy.version()));
            }
        }
        Ok(if converged {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_DENY)
        })
    })
}

/// Reads and compiles a policy file; every problem goes to standard error.
fn load(path: &std::path::Path) -> Result<Policy, ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        eprintln!("pgward: {}: cannot read: {e}", path.display());
        ExitCode::from(EXIT_ERROR)
    })?;
    Policy::from_toml(&text).map_err(|e| {
        for p in &e.problems {
            eprintln!("{}: line {}: {}", path.display(), p.line, p.message);
        }
        eprintln!("{} problem(s)", e.problems.len());
        ExitCode::from(EXIT_ERROR)
    })
}

/// Identity claims from the flags. Without --oid the user name doubles as the object id,
/// so a policy listing a user by either form matches.
fn principal(a: &ExplainArgs) -> Principal {
    let upn = a.user.clone().unwrap_or_default();
    Principal {
        oid: a.oid.clone().unwrap_or_else(|| upn.clone()),
        upn,
        groups: a.groups.clone(),
        app_roles: a.app_roles.clone(),
    }
}

fn roles(policy: &Policy, a: &ExplainArgs) -> Result<RoleSet, String> {
    if a.roles.is_empty() {
        Ok(policy.roles_for(&principal(a)))
    } else {
        let names: Vec<&str> = a.roles.iter().map(String::as_str).collect();
        policy.roles_named(&names)
    }
}

fn explain(a: &ExplainArgs) -> ExitCode {
    let error = |msg: String| {
        eprintln!("pgward: {msg}");
        ExitCode::from(EXIT_ERROR)
    };
    let path = match policy_path(a.config.as_deref(), a.policy.as_deref()) {
        Ok(p) => p,
        Err(e) => return error(e),
    };
    let policy = match load(&path) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let roles = match roles(&policy, a) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let sql = match read_sql(&a.sql) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    let mut session = SessionState::new(&policy);
    if let Some(sp) = &a.search_path {
        // The same entry point the proxy uses for a startup `search_path`, so the list is
        // split and folded exactly as for a real session.
        session.apply_startup_setting("search_path", sp);
    }
    if let Some(path) = &a.catalog {
        match read_catalog(path) {
            Ok(c) => session.set_catalog(std::sync::Arc::new(c)),
            Err(e) => return error(e),
        }
    }
    let q = policy.decide_query(&roles, &sql, &session);
    print!(
        "{}",
        pgward_policy::explain_decision(&policy, &roles, &session, &q)
    );
    match q.decision.verdict {
        Verdict::Allow => ExitCode::SUCCESS,
        // Observe mode still reports deny: the question is what the policy says.
        Verdict::Deny => ExitCode::from(EXIT_DENY),
    }
}

/// A catalog dump: one row per line, values separated by tabs, an empty value for NULL.
fn read_catalog(path: &std::path::Path) -> Result<pgward_policy::ServerCatalog, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    pgward_policy::ServerCatalog::from_tsv(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_sql(arg: &str) -> Result<String, String> {
    if arg != "-" {
        return Ok(arg.to_owned());
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| format!("cannot read SQL from standard input: {e}"))?;
    Ok(s)
}

fn policy_path(
    config: Option<&std::path::Path>,
    policy: Option<&std::path::Path>,
) -> Result<PathBuf, String> {
    if let Some(p) = policy {
        return Ok(p.to_owned());
    }
    let Some(config) = config else {
        return Err("give --config or --policy".to_owned());
    };
    // The proxy's own loader, so explain reads the same file `serve` would (relative to the
    // config file) and rejects a config `serve` would reject.
    let loaded = Config::load(config).map_err(|e| e.to_string())?;
    match loaded.policy {
        Some(p) => Ok(p.file),
        None => Err(format!(
            "{}: no [policy] file configured; give --policy FILE",
            config.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::Path;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        Policy(PolicyArgs),
    }

    fn parse(args: &[&str]) -> Result<ExplainArgs, clap::Error> {
        let argv = ["pgward", "policy", "explain"].iter().chain(args);
        let Top::Policy(p) = Cli::try_parse_from(argv)?.cmd;
        match p.command {
            PolicyCommand::Explain(e) => Ok(*e),
            other => panic!("parsed {other:?} for explain"),
        }
    }

    const POLICY: &str = r#"
        [[roles]]
        name = "reader"
        members = { groups = ["G1"], users = ["alice@contoso.com"] }
        allow = [ { name = "read", actions = ["select"], objects = ["public.orders"] } ]
        [[roles]]
        name = "writer"
        members = { app_roles = ["Data.Write"], users = ["0000-oid"] }
        allow = [ { actions = ["insert"], objects = ["public.orders"] } ]
    "#;

    #[test]
    fn identity_flags_map_to_principal() {
        let a = parse(&[
            "--config",
            "c.toml",
            "--user",
            "alice@contoso.com",
            "--group",
            "G1",
            "--group",
            "G2",
            "--app-role",
            "Data.Write",
            "SELECT 1",
        ])
        .unwrap();
        assert_eq!(
            principal(&a),
            Principal {
                oid: "alice@contoso.com".into(),
                upn: "alice@contoso.com".into(),
                groups: vec!["G1".into(), "G2".into()],
                app_roles: vec!["Data.Write".into()],
            }
        );
        assert_eq!(a.sql, "SELECT 1");
        assert_eq!(a.config.as_deref(), Some(Path::new("c.toml")));

        let a = parse(&[
            "--policy", "p.toml", "--user", "u", "--oid", "0000-oid", "x",
        ])
        .unwrap();
        assert_eq!(principal(&a).oid, "0000-oid");
        assert_eq!(principal(&a).upn, "u");
    }

    #[test]
    fn roles_from_principal_or_names() {
        let policy = Policy::from_toml(POLICY).unwrap();
        let a = parse(&["--policy", "p", "--user", "0000-oid", "--group", "g1", "x"]).unwrap();
        assert_eq!(roles(&policy, &a).unwrap().names(), ["reader", "writer"]);

        let a = parse(&["--policy", "p", "--role", "writer", "x"]).unwrap();
        assert_eq!(roles(&policy, &a).unwrap().names(), ["writer"]);

        let a = parse(&["--policy", "p", "--role", "nobody", "x"]).unwrap();
        assert!(roles(&policy, &a).unwrap_err().contains("nobody"));
    }

    #[test]
    fn bad_flag_combinations_are_usage_errors() {
        // Neither a config nor a policy.
        assert!(parse(&["--user", "u", "x"]).is_err());
        // Both.
        assert!(parse(&["--config", "c", "--policy", "p", "x"]).is_err());
        // Named roles and identity claims would disagree about which roles apply.
        assert!(parse(&["--policy", "p", "--role", "r", "--group", "g", "x"]).is_err());
        // No SQL.
        assert!(parse(&["--policy", "p"]).is_err());
    }

    /// The least the proxy's config loader accepts.
    const PROXY: &str = "upstreams = []\nroutes = []\n[listen]\naddr = \"127.0.0.1:6432\"\n";

    #[test]
    fn config_policy_path_is_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("pgward.toml");
        std::fs::write(&cfg, format!("{PROXY}[policy]\nfile = \"p/policy.toml\"\n")).unwrap();
        let a = parse(&["--config", cfg.to_str().unwrap(), "x"]).unwrap();
        assert_eq!(
            policy_path(a.config.as_deref(), a.policy.as_deref()).unwrap(),
            dir.path().join("p/policy.toml")
        );

        std::fs::write(&cfg, PROXY).unwrap();
        assert!(policy_path(a.config.as_deref(), a.policy.as_deref())
            .unwrap_err()
            .contains("no [policy]"));

        std::fs::write(&cfg, "upstreams = []\nroutes = []\n[listen]\naddr = \n").unwrap();
        assert!(policy_path(a.config.as_deref(), a.policy.as_deref())
            .unwrap_err()
            .contains("line 4"));
    }
}
