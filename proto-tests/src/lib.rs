//! Harness for pgward's end-to-end tests: a throwaway PostgreSQL 15, the real `pgward`
//! binary with a generated configuration, and helpers to run real clients (psql,
//! pgbench, Python) against either. Tests read like the user's story: start a
//! database, start pgward, connect, try this, expect that.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub use pgward_devkit::postgres::{EphemeralPostgres, PgOptions, CLEARTEXT_ROLE, MD5_ROLE};

/// The upstream login role pgward signs in as, and its password.
pub const PROXY_ROLE: &str = "pgward_proxy";
pub const PROXY_PASSWORD: &str = "proxy-secret-Zx81";

/// A PostgreSQL server with database `app`, sample tables, and pgward's login roles
/// (SCRAM `pgward_proxy`, MD5 `pgward_md5`, cleartext `pgward_cleartext`).
pub struct Database {
    pub pg: EphemeralPostgres,
}

impl Database {
    pub fn start() -> Self {
        Self::start_with(PgOptions::default())
    }

    pub fn start_with(opts: PgOptions) -> Self {
        let pg = EphemeralPostgres::start(opts).unwrap_or_else(|e| panic!("{e}"));
        pg.psql("postgres", "CREATE DATABASE app").unwrap();
        pg.create_login(PROXY_ROLE, PROXY_PASSWORD, "scram-sha-256")
            .unwrap();
        pg.create_login(MD5_ROLE, PROXY_PASSWORD, "md5").unwrap();
        pg.create_login(CLEARTEXT_ROLE, PROXY_PASSWORD, "scram-sha-256")
            .unwrap();
        pg.psql(
            "app",
            &format!(
                "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL);
                 INSERT INTO orders (item, qty) SELECT 'item' || g, g FROM generate_series(1, 100) g;
                 GRANT ALL ON SCHEMA public TO {PROXY_ROLE}, {MD5_ROLE}, {CLEARTEXT_ROLE};
                 GRANT ALL ON ALL TABLES IN SCHEMA public TO {PROXY_ROLE}, {MD5_ROLE}, {CLEARTEXT_ROLE};
                 GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {PROXY_ROLE}, {MD5_ROLE}, {CLEARTEXT_ROLE};
                 ALTER DATABASE app OWNER TO {PROXY_ROLE};"
            ),
        )
        .unwrap();
        Self { pg }
    }

    /// libpq connection string for a direct connection as pgward's role.
    pub fn direct_conn(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={db} user={PROXY_ROLE} password={PROXY_PASSWORD} sslmode=disable",
            self.pg.port
        )
    }

    /// Runs SQL as the superuser (not through pgward).
    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.pg
            .psql(db, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// How a test wants pgward configured.
#[derive(Clone)]
pub struct PgwardOptions {
    /// Serve TLS on the client leg (certificate from a generated CA).
    pub tls: bool,
    pub allow_plaintext: bool,
    /// `tls` key of the upstream ("disable", "require", "verify-full").
    pub upstream_tls: &'static str,
    /// Upstream login role (selects SCRAM, MD5 or cleartext auth in the test pg_hba).
    pub upstream_role: &'static str,
    /// Extra lines appended to [listen].
    pub listen_extra: Vec<String>,
    /// Point the upstream at another port (e.g. one where nothing listens).
    pub upstream_port: Option<u16>,
    /// Trust this CA for the upstream instead of the one that signed its certificate.
    pub upstream_ca: Option<PathBuf>,
    /// An `[entra]` section (client sign-in with tokens); `None` lets clients in
    /// unauthenticated (development mode).
    pub entra: Option<String>,
    /// A policy file for `[policy] file`; `None` runs without statement policy.
    pub policy: Option<PathBuf>,
    /// Extra lines for the `[policy]` section (e.g. `analysis_timeout_ms = 200`).
    pub policy_extra: Vec<String>,
    /// Extra top-level TOML (e.g. an `[audit]` section).
    pub extra_toml: String,
    /// pgward's log filter (default "debug").
    pub log_level: &'static str,
    /// RLIMIT_FSIZE for the pgward process (simulates a full disk).
    pub file_size_limit: Option<u64>,
    /// The body of `[upstreams.credential]` (TOML lines); `None`: the password of
    /// `upstream_role` from an environment variable.
    pub credential: Option<String>,
    /// Extra environment variables for the pgward process.
    pub env: Vec<(String, String)>,
    /// Startup waits for /readyz (default); false waits for /healthz only (for tests
    /// where pgward is expected to start not ready).
    pub wait_ready: bool,
    /// Extra keys of the `[[upstreams]]` entry (e.g. `identity_table = true`).
    pub upstream_extra: Vec<String>,
    /// The client port to try first (default: one found free). A port another process
    /// holds when pgward binds is replaced by a fresh one.
    pub listen_port: Option<u16>,
}

impl Default for PgwardOptions {
    fn default() -> Self {
        Self {
            tls: true,
            allow_plaintext: true,
            upstream_tls: "disable",
            upstream_role: PROXY_ROLE,
            listen_extra: Vec::new(),
            upstream_port: None,
            upstream_ca: None,
            entra: None,
            policy: None,
            policy_extra: Vec::new(),
            extra_toml: String::new(),
            log_level: "debug",
            file_size_limit: None,
            credential: None,
            env: Vec::new(),
            wait_ready: true,
            upstream_extra: Vec::new(),
            listen_port: None,
        }
    }
}

/// A running pgward binary.
pub struct Pgward {
    child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub ca: Option<PathBuf>,
    env: Vec<(String, String)>,
    wait_for_readyz: bool,
}

/// The pgward binary under test: $PGWARD_BIN, else target/<profile>/pgward next to the
/// test executable (scripts/test builds it first, with the `dev-tools` feature that
/// `pgward demo` and `pgward token` need).
pub fn pgward_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PGWARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps layout");
    let bin = profile_dir.join("pgward");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p pgward --features dev-tools`, as scripts/test does) or set PGWARD_BIN",
        bin.display()
    );
    bin
}

impl Pgward {
    pub fn start(db: &Database, opts: PgwardOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pgward-test-")
            .tempdir()
            .unwrap();
        let port = opts
            .listen_port
            .unwrap_or_else(|| pgward_devkit::free_port().unwrap());
        let admin_port = pgward_devkit::free_port().unwrap();
        let mut listen = vec![
            format!("addr = \"127.0.0.1:{port}\""),
            format!("allow_plaintext = {}", opts.allow_plaintext),
        ];
        if opts.entra.is_none() {
            listen.push("allow_unauthenticated = true".to_owned());
        }
        let mut ca = None;
        if opts.tls {
            let files =
                pgward_devkit::certs::generate(dir.path(), "client", &["127.0.0.1", "localhost"])
                    .unwrap();
            listen.push(format!("tls_cert = \"{}\"", files.cert.display()));
            listen.push(format!("tls_key = \"{}\"", files.key.display()));
            ca = Some(files.ca);
        }
        listen.extend(opts.listen_extra.iter().cloned());
        let upstream_ca = opts.upstream_ca.as_deref().or(db.pg.ca_file());
        let ca_line = match upstream_ca {
            Some(p) if opts.upstream_tls == "verify-full" => {
                format!("ca_file = \"{}\"", p.display())
            }
            _ => String::new(),
        };
        // pgward refuses Entra sign-in without a policy; tests that are not about policy
        // get one that allows everything (pgward's own settings stay protected).
        let open_policy = if opts.entra.is_some() && opts.policy.is_none() {
            let path = dir.path().join("open-policy.toml");
            std::fs::write(
                &path,
                "[[roles]]\nname = \"everyone\"\nmembers = { everyone = true }\nallow = [ { objects = [\"*\"] } ]\n",
            )
            .unwrap();
            Some(path)
        } else {
            None
        };
        let config = format!(
            r#"
[listen]
{listen}

[admin]
addr = "127.0.0.1:{admin_port}"

[log]
level = "{log_level}"

[[upstreams]]
name = "main"
host = "127.0.0.1"
port = {pg_port}
tls = "{upstream_tls}"
{ca_line}
{upstream_extra}
[upstreams.credential]
{credential}

[[routes]]
database = "app"
upstream = "main"

[[routes]]
database = "postgres"
upstream = "main"

{entra}

{policy}

{extra_toml}
"#,
            log_level = opts.log_level,
            upstream_extra = opts.upstream_extra.join("\n"),
            extra_toml = opts.extra_toml,
            entra = opts.entra.as_deref().unwrap_or(""),
            policy = opts
                .policy
                .as_ref()
                .or(open_policy.as_ref())
                .map(|p| format!(
                    "[policy]\nfile = \"{}\"\nwatch_secs = 1\n{}",
                    p.display(),
                    opts.policy_extra.join("\n")
                ))
                .unwrap_or_default(),
            listen = listen.join("\n"),
            pg_port = opts.upstream_port.unwrap_or(db.pg.port),
            upstream_tls = opts.upstream_tls,
            credential = opts.credential.clone().unwrap_or_else(|| format!(
                "type = \"password\"\nuser = \"{}\"\npassword_env = \"PGWARD_TEST_UPSTREAM_PASSWORD\"",
                opts.upstream_role
            )),
        );
        let config_path = dir.path().join("pgward.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut p = Self {
            child: None,
            port,
            admin_port,
            dir,
            config_path,
            ca,
            env: opts.env.clone(),
            wait_for_readyz: opts.wait_ready,
        };
        let mut retries = 0;
        loop {
            match p.try_spawn(opts.file_size_limit) {
                Ok(()) => return p,
                // Another process took a port between free_port and pgward's bind: tests
                // run in parallel, and every outgoing connection takes an ephemeral port.
                // Fresh ports, same configuration otherwise.
                Err(log) if log.contains("Address already in use") && retries < 5 => {
                    retries += 1;
                    let (old, old_admin) = (p.port, p.admin_port);
                    p.port = pgward_devkit::free_port().unwrap();
                    p.admin_port = pgward_devkit::free_port().unwrap();
                    let text = std::fs::read_to_string(&p.config_path)
                        .unwrap()
                        .replace(
                            &format!("\"127.0.0.1:{old}\""),
                            &format!("\"127.0.0.1:{}\"", p.port),
                        )
                        .replace(
                            &format!("\"127.0.0.1:{old_admin}\""),
                            &format!("\"127.0.0.1:{}\"", p.admin_port),
                        );
                    std::fs::write(&p.config_path, text).unwrap();
                }
                Err(log) => panic!("pgward exited during startup {log}"),
            }
        }
    }

    fn spawn(&mut self, file_size_limit: Option<u64>) {
        if let Err(log) = self.try_spawn(file_size_limit) {
            panic!("pgward exited during startup {log}");
        }
    }

    /// Starts the binary and waits until it answers; `Err` with its exit status and log
    /// when it exits first.
    fn try_spawn(&mut self, file_size_limit: Option<u64>) -> Result<(), String> {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let mut cmd = Command::new(pgward_bin());
        if let Some(limit) = file_size_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; runs in the child before exec.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("PGWARD_TEST_UPSTREAM_PASSWORD", PROXY_PASSWORD)
            .env_remove("PGWARD_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pgward");
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("({status}):\n{}", self.log()));
            }
            let probe = if self.wait_for_readyz {
                "/readyz"
            } else {
                "/healthz"
            };
            if matches!(self.admin_get(probe), Some((200, _))) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "pgward not ready in 30s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Starts the binary again with the same configuration (killing it first if it
    /// still runs), as after a crash or a redeploy.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn(None);
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("pgward.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// GET on the admin endpoint: (status, body), `None` if it can't be reached.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    }

    /// A metric's value summed over all its label sets (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").expect("metrics");
        body.lines()
            .filter(|l| {
                l.starts_with(name)
                    && matches!(l.as_bytes().get(name.len()), Some(b' ') | Some(b'{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// libpq connection string through pgward.
    pub fn conn(&self, db: &str, sslmode: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} dbname={db} user=alice sslmode={sslmode} connect_timeout=10",
            self.port
        );
        if let Some(ca) = &self.ca {
            s.push_str(&format!(" sslrootcert={}", ca.display()));
        }
        s
    }
}

impl Drop for Pgward {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs psql with `-X -v ON_ERROR_STOP=1` and the given extra arguments.
pub fn psql(conn: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("psql");
    cmd.arg(conn)
        .args(["-X", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env_remove("PGPASSWORD")
        .env_remove("PGOPTIONS")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("psql (apt-get install -y postgresql-client)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// psql that must succeed; returns stdout.
pub fn psql_ok(conn: &str, args: &[&str]) -> String {
    let out = psql(conn, args, None);
    assert!(
        out.status.success(),
        "psql {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Python interpreter with psycopg and asyncpg: $PGWARD_PYTHON, else the venv
/// scripts/test creates at target/pyenv.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("PGWARD_PYTHON") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(
        root.exists(),
        "Python clients missing: run scripts/test (it creates target/pyenv with psycopg and asyncpg) or set PGWARD_PYTHON"
    );
    root
}

/// Runs one of proto-tests/python/*.py with the given environment; panics with its
/// output on failure.
pub fn run_python(script: &str, env: &[(&str, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let mut cmd = Command::new(python());
    cmd.arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A minimal blocking PostgreSQL wire client for tests that must send bytes no real
/// client would.
pub mod tds_standin;

pub mod wire;

pub mod raw {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    pub fn connect(port: u16) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    pub fn startup_packet(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&((3u32 << 16) | u32::from(minor)).to_be_bytes());
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        p.extend(body);
        p
    }

    pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    pub fn query(sql: &str) -> Vec<u8> {
        let mut b = sql.as_bytes().to_vec();
        b.push(0);
        message(b'Q', &b)
    }

    /// Reads one backend message; `None` on EOF or timeout.
    pub fn read_message(s: &mut impl Read) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.checked_sub(4)?];
        s.read_exact(&mut body).ok()?;
        Some((head[0], body))
    }

    /// Reads messages until ReadyForQuery or an ErrorResponse; returns all of them.
    pub fn read_until_ready(s: &mut impl Read) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((tag, body)) = read_message(s) {
            let done = tag == b'Z';
            out.push((tag, body));
            if done {
                break;
            }
        }
        out
    }

    /// The SQLSTATE of an ErrorResponse body.
    pub fn sqlstate(body: &[u8]) -> String {
        let mut fields = body.split(|b| *b == 0);
        fields
            .find_map(|f| f.strip_prefix(b"C"))
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .unwrap_or_default()
    }

    /// Signs in over plaintext (pgward test configs allow it) and waits for ReadyForQuery.
    pub fn session(port: u16, db: &str) -> TcpStream {
        let mut s = connect(port);
        s.write_all(&startup_packet(0, &[("user", "alice"), ("database", db)]))
            .unwrap();
        let msgs = read_until_ready(&mut s);
        assert_eq!(
            msgs.last().map(|m| m.0),
            Some(b'Z'),
            "no ReadyForQuery: {msgs:?}"
        );
        s
    }

    /// True once the peer has closed the connection (EOF) within the read timeout.
    pub fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    )
                }
            }
        }
    }
}

/// TLS for tokio-postgres over rustls (aws-lc-rs), verifying pgward's certificate
/// against a CA file, so Rust clients can sign in with tokens (which pgward only takes
/// over TLS).
/// The local Entra stand-in (pgward_devkit::entra_issuer::DevIssuer) for `tenant`, serving on a
/// runtime of its own (keep the runtime alive as long as the issuer is used).
pub fn start_issuer(
    tenant: &str,
    worker_threads: usize,
) -> (
    tokio::runtime::Runtime,
    pgward_devkit::entra_issuer::DevIssuer,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .unwrap();
    let issuer = rt
        .block_on(pgward_devkit::entra_issuer::DevIssuer::start(
            "127.0.0.1:0".parse().unwrap(),
            tenant,
        ))
        .unwrap();
    (rt, issuer)
}

/// An `[entra]` section trusting `issuer` for `tenant`.
pub fn entra_section(tenant: &str, issuer: &pgward_devkit::entra_issuer::DevIssuer) -> String {
    format!(
        "[entra]\ntenant_id = \"{tenant}\"\nauthority = \"{}\"\n",
        issuer.authority()
    )
}

pub mod pgtls {
    use std::path::Path;
    use std::sync::Arc;

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    /// tokio-postgres over rustls (the audit sink's adapter), trusting `ca` only.
    pub use pgward_audit::sinks::postgres::MakeRustls;

    /// A tokio-postgres TLS connector that trusts only the CA in `ca` (PEM).
    pub fn trusting(ca: &Path) -> MakeRustls {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        MakeRustls::new(Arc::new(cfg))
    }
}
