//! The client recipes in docs/clients.md, run as written: each test reads its recipe from
//! the doc (the block after `<!-- recipe: NAME -->`), points `pgward.example.com:6432` at a
//! local pgward that trusts the development issuer, and runs it with the real client —
//! psql, psycopg / psycopg_pool, SQLAlchemy, FastAPI, node-postgres, pgjdbc, Airflow's
//! PostgresHook. Only the Azure token source is replaced: `az`, `azure.identity`,
//! `@azure/identity` and azure-identity for Java are stand-ins (proto-tests/recipes/) that
//! mint from the issuer through `pgward token` and log a hash of every token they hand
//! out. Each test checks rows, a 42501 denial, and that every new connection fetched its
//! own token: the stand-ins' count equals pgward's successful sign-ins, and no token was
//! handed out twice.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pgward_devkit::entra_issuer::DevIssuer;
use pgward_proto_tests::*;

const TENANT: &str = "7a3c1f0e-5b2d-4c8e-9f61-2d4b8e0c1a97";
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// The recipes' principals may read public.orders and nothing else.
const POLICY: &str = r#"
mode = "enforce"
search_path = ["public"]

[[roles]]
name = "orders_reader"
members = { users = ["alice@contoso.com", "orders-app", "airflow-prod", "airbyte-sync"] }
allow = [ { name = "orders_read", actions = ["select"], objects = ["public.orders"] } ]
"#;

fn recipes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")
}

/// The fenced block after `<!-- recipe: NAME -->` in docs/clients.md.
fn recipe(name: &str) -> String {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/clients.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let marker = format!("<!-- recipe: {name} -->\n");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("no `{}` in docs/clients.md", marker.trim()));
    let rest = &doc[start + marker.len()..];
    assert!(
        rest.starts_with("```"),
        "recipe {name}: no code block after the marker"
    );
    let body = &rest[rest.find('\n').unwrap() + 1..];
    let end = body
        .find("\n```")
        .unwrap_or_else(|| panic!("recipe {name}: unterminated block"));
    body[..end + 1].to_owned()
}

struct Env {
    // Field order is drop order: pgward before the issuer and runtime it talks to.
    pgward: Pgward,
    _db: Database,
    issuer: DevIssuer,
    _rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    runs: std::cell::Cell<u32>,
}

impl Env {
    fn start() -> Self {
        let (rt, issuer) = start_issuer(TENANT, 1);
        let dir = tempfile::Builder::new()
            .prefix("pgward-recipes-")
            .tempdir()
            .unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        let db = Database::start();
        let pgward = Pgward::start(
            &db,
            PgwardOptions {
                entra: Some(entra_section(TENANT, &issuer)),
                policy: Some(policy),
                log_level: "info",
                ..Default::default()
            },
        );
        Env {
            pgward,
            _db: db,
            issuer,
            _rt: rt,
            dir,
            runs: std::cell::Cell::new(0),
        }
    }

    fn ca(&self) -> &Path {
        self.pgward.ca.as_deref().expect("pgward serves TLS")
    }

    /// The recipe with `pgward.example.com:6432` pointed at this pgward.
    fn localize(&self, code: &str) -> String {
        code.replace("pgward.example.com", "localhost")
            .replace("6432", &self.pgward.port.to_string())
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A command with the stand-ins' environment; returns it and its mint log.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>, identity: &str) -> (Command, PathBuf) {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let log = self.dir.path().join(format!("mints-{n}.log"));
        std::fs::write(&log, "").unwrap();
        let mut cmd = Command::new(program);
        cmd.env("PGWARD_BIN", pgward_bin())
            .env("PGWARD_RECIPE_ISSUER", self.issuer.authority())
            .env("PGWARD_RECIPE_MINT_LOG", &log)
            .env("PGWARD_RECIPE_MINT_SEQ", self.dir.path().join("mint-seq"))
            .env("PGWARD_RECIPE_IDENTITY", identity)
            .env("PGSSLROOTCERT", self.ca())
            .env_remove("PGPASSWORD")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .stdin(Stdio::null());
        (cmd, log)
    }

    fn ok_sign_ins(&self) -> f64 {
        let (_, body) = self.pgward.admin_get("/metrics").unwrap();
        body.lines()
            .find(|l| l.starts_with("pgward_auth_total{result=\"ok\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Every token the stand-ins handed out was distinct, and pgward saw exactly that
    /// many successful sign-ins since `before`.
    fn assert_one_token_per_connection(&self, logs: &[PathBuf], before: f64) -> usize {
        let lines: Vec<String> = logs
            .iter()
            .flat_map(|l| {
                std::fs::read_to_string(l)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        let hashes: HashSet<&str> = lines
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(hashes.len(), lines.len(), "a token was reused: {lines:?}");
        let sign_ins = self.ok_sign_ins() - before;
        assert_eq!(
            sign_ins as usize,
            lines.len(),
            "pgward saw {sign_ins} sign-ins, the stand-ins minted {} tokens",
            lines.len()
        );
        assert!(
            !self.pgward.log().contains("eyJ"),
            "a token reached pgward's log"
        );
        lines.len()
    }
}

fn run(mut cmd: Command, what: &str) -> String {
    let out: Output = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && !stdout.contains("FAIL"),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
    stdout
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[test]
fn psql_recipe_fetches_a_token_per_session() {
    let env = Env::start();
    let before = env.ok_sign_ins();
    let func = env.localize(&recipe("psql"));
    let script = format!(
        "set -euo pipefail\n{func}\n\
         pgward_psql -X -At -c 'SELECT count(*) FROM orders'\n\
         pgward_psql -X -At -c 'SELECT max(id) FROM orders'\n\
         if pgward_psql -X -v VERBOSITY=verbose -c \"INSERT INTO orders (item, qty) VALUES ('recipe-denied', 1)\" 2>denied.err; then\n\
           echo 'FAIL denied statement succeeded'; exit 1\n\
         fi\n\
         cat denied.err\n"
    );
    let path = env.write("psql-recipe.sh", &script);
    let (mut cmd, log) = env.command("bash", "--user alice@contoso.com");
    let bin = recipes_dir().join("bin");
    cmd.arg(&path).current_dir(env.dir.path()).env(
        "PATH",
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let out = run(cmd, "psql recipe");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["100", "100"], "{out}");
    assert!(
        out.contains("ERROR:  42501"),
        "no 42501 for the denied INSERT:\n{out}"
    );
    assert_eq!(env.assert_one_token_per_connection(&[log], before), 3);
}

fn python_recipe(env: &Env, kind: &str, blocks: &[&str], identity: &str) -> PathBuf {
    let files: Vec<PathBuf> = blocks
        .iter()
        .map(|b| env.write(&format!("{b}.py"), &env.localize(&recipe(b))))
        .collect();
    let (mut cmd, log) = env.command(python(), identity);
    cmd.arg(recipes_dir().join("python/run_recipe.py"))
        .arg(kind)
        .args(&files)
        .env("PYTHONPATH", recipes_dir().join("python"));
    let out = run(cmd, &format!("{kind} recipe"));
    assert!(out.contains(&format!("ok {kind}")), "{out}");
    log
}

#[test]
fn psycopg_recipe_connect_and_pool() {
    let env = Env::start();
    let before = env.ok_sign_ins();
    let log = python_recipe(
        &env,
        "psycopg",
        &["psycopg"],
        "--managed-identity orders-app",
    );
    // The pool opens a closed connection's replacement in the background, so 4 or more.
    assert!(env.assert_one_token_per_connection(&[log], before) >= 4);
}

#[test]
fn sqlalchemy_and_fastapi_recipes() {
    let env = Env::start();
    let before = env.ok_sign_ins();
    let a = python_recipe(
        &env,
        "sqlalchemy",
        &["sqlalchemy"],
        "--managed-identity orders-app",
    );
    let b = python_recipe(
        &env,
        "fastapi",
        &["sqlalchemy", "fastapi"],
        "--managed-identity orders-app",
    );
    assert_eq!(env.assert_one_token_per_connection(&[a, b], before), 4);
}

/// Where scripts/lib/deps.sh keeps installs that outlive a clone: $XDG_CACHE_HOME or ~/.cache.
fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache")
        })
}

/// npm's pg, installed by scripts/test in a cache directory outside the clone.
fn node_modules() -> PathBuf {
    let dir = std::env::var_os("PGWARD_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("pgward-node-recipes/node_modules"));
    assert!(
        dir.join("pg/package.json").is_file() && find_program("node").is_some(),
        "the Node recipe needs node and pg from npm in {} (scripts/test installs them: npm install --prefix ~/.cache/pgward-node-recipes pg@8), or set PGWARD_NODE_MODULES",
        dir.display()
    );
    dir
}

#[test]
fn node_pg_recipe_password_function() {
    let modules = node_modules();
    let env = Env::start();
    let before = env.ok_sign_ins();
    let module = env.write("node/recipe.js", &env.localize(&recipe("node")));
    let (mut cmd, log) = env.command("node", "--managed-identity orders-app");
    cmd.arg(recipes_dir().join("node/run_recipe.js"))
        .arg(&module)
        .env(
            "NODE_PATH",
            format!(
                "{}:{}",
                modules.display(),
                recipes_dir().join("node").display()
            ),
        )
        .env("NODE_EXTRA_CA_CERTS", env.ca());
    let out = run(cmd, "node recipe");
    assert!(out.contains("ok node pg"), "{out}");
    assert_eq!(env.assert_one_token_per_connection(&[log], before), 3);
}

#[test]
fn jdbc_plugin_recipe_and_airbyte_fields() {
    let (javac, java) = match (find_program("javac"), find_program("java")) {
        (Some(c), Some(j)) if Path::new(JDBC_JAR).is_file() => (c, j),
        _ => panic!(
            "the JDBC recipe needs a JDK and {JDBC_JAR} (apt-get install -y default-jdk-headless libpostgresql-jdbc-java; scripts/test installs them)"
        ),
    };
    let env = Env::start();
    let before = env.ok_sign_ins();
    let plugin = env.write(
        "java-src/com/example/pgward/EntraTokenPlugin.java",
        &recipe("jdbc"),
    );
    let classes = env.dir.path().join("classes");
    let mut sources = vec![plugin, recipes_dir().join("java/RecipeJdbc.java")];
    for f in [
        "com/azure/core/credential/AccessToken.java",
        "com/azure/core/credential/TokenRequestContext.java",
        "com/azure/core/credential/TokenCredential.java",
        "com/azure/identity/DefaultAzureCredentialBuilder.java",
        "com/azure/identity/DefaultAzureCredential.java",
    ] {
        sources.push(recipes_dir().join("java").join(f));
    }
    let mut compile = Command::new(javac);
    compile
        .args(["-Xlint:all", "-Werror", "-d"])
        .arg(&classes)
        .args(["-cp", JDBC_JAR])
        .args(&sources);
    run(compile, "javac");

    // pgjdbc's default sslrootcert is ~/.postgresql/root.crt: give the JVM a home with our CA.
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(home.join(".postgresql")).unwrap();
    std::fs::copy(env.ca(), home.join(".postgresql/root.crt")).unwrap();

    let docs_url = env.localize(recipe("jdbc-url").trim());
    // Airbyte's form: host, port and database fields, then its "JDBC URL Parameters" field.
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/clients.md"))
            .unwrap();
    let params = doc
        .lines()
        .find(|l| l.starts_with("| JDBC URL Parameters"))
        .and_then(|l| l.split('`').nth(1))
        .expect("Airbyte's JDBC URL Parameters row in docs/clients.md");
    let airbyte_url = format!(
        "jdbc:postgresql://localhost:{}/app?sslmode=verify-full&{params}",
        env.pgward.port
    );
    let mut logs = Vec::new();
    for (url, user, label) in [
        (docs_url.as_str(), "orders-app", "jdbc"),
        (airbyte_url.as_str(), "airbyte-sync", "airbyte-url"),
    ] {
        let identity = format!("--managed-identity {user}");
        let (mut cmd, log) = env.command(&java, &identity);
        cmd.arg(format!("-Duser.home={}", home.display()))
            .arg(format!(
                "-Dpgward.recipe.mint={}",
                recipes_dir().join("bin/mint").display()
            ))
            .arg("-cp")
            .arg(format!("{}:{JDBC_JAR}", classes.display()))
            .args(["RecipeJdbc", url, user, label, "2"]);
        let out = run(cmd, label);
        assert!(out.contains(&format!("ok {label}: 2 connections")), "{out}");
        logs.push(log);
    }
    assert_eq!(env.assert_one_token_per_connection(&logs, before), 4);
}

/// Airflow and the Postgres provider live in their own venv in a cache directory outside
/// the clone (scripts/test makes it; one to three minutes the first time).
fn airflow_python() -> PathBuf {
    let p = std::env::var_os("PGWARD_AIRFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("pgward-airflow-venv/bin/python"));
    assert!(
        p.is_file(),
        "the Airflow recipe needs apache-airflow-providers-postgres in {} (scripts/test creates it), or set PGWARD_AIRFLOW_PYTHON",
        p.display()
    );
    p
}

#[test]
fn airflow_postgres_connection_recipe() {
    let py = airflow_python();
    let env = Env::start();
    let before = env.ok_sign_ins();
    let exports = env.localize(&recipe("airflow"));
    let script = format!(
        "set -euo pipefail\n{exports}\nexec \"$AIRFLOW_RECIPE_PYTHON\" \"$AIRFLOW_RECIPE_DRIVER\"\n"
    );
    let path = env.write("airflow-recipe.sh", &script);
    let (mut cmd, log) = env.command("bash", "--managed-identity airflow-prod");
    let airflow_home = env.dir.path().join("airflow");
    std::fs::create_dir_all(&airflow_home).unwrap();
    cmd.arg(&path)
        .env("AIRFLOW_RECIPE_PYTHON", &py)
        .env(
            "AIRFLOW_RECIPE_DRIVER",
            recipes_dir().join("python/airflow_recipe.py"),
        )
        .env("PGWARD_RECIPE_FAKE_AZURE", recipes_dir().join("python"))
        .env("AIRFLOW_HOME", &airflow_home)
        .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        .env("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
        .current_dir(env.dir.path());
    let out = run(cmd, "airflow recipe");
    assert!(out.contains("ok airflow PostgresHook"), "{out}");
    assert_eq!(env.assert_one_token_per_connection(&[log], before), 3);
}
