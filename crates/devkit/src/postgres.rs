//! A throwaway PostgreSQL server: initdb into a temporary directory, a free loopback
//! port, started as the unprivileged `postgres` system user when running as root
//! (PostgreSQL refuses to run as root). Stopped and removed on drop.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Login roles the generated pg_hba.conf signs in with MD5 and cleartext passwords, so
/// each upstream authentication method can be exercised; every other role uses SCRAM.
pub const MD5_ROLE: &str = "pgward_md5";
pub const CLEARTEXT_ROLE: &str = "pgward_cleartext";

#[derive(Debug, Default, Clone)]
pub struct PgOptions {
    /// Serve TLS with a generated certificate (see `EphemeralPostgres::ca_file`).
    pub ssl: bool,
    /// `log_statement = all`, to prove what reached the server.
    pub log_statements: bool,
    /// Extra `name = value` lines for postgresql.conf.
    pub extra_conf: Vec<String>,
    /// The port to try first (default: one found free). A port another process holds
    /// when the server binds is replaced by a fresh one.
    pub port: Option<u16>,
}

pub struct EphemeralPostgres {
    dir: TempDir,
    pub port: u16,
    bindir: PathBuf,
    child: Option<Child>,
    ca_file: Option<PathBuf>,
}

fn run_as_postgres(cmd: &mut Command) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let (uid, gid) = postgres_user()?;
    cmd.uid(uid).gid(gid);
    Ok(())
}

fn postgres_user() -> Result<(u32, u32), String> {
    let name = std::ffi::CString::new("postgres").map_err(|e| e.to_string())?;
    // SAFETY: getpwnam returns NULL or a pointer to a static passwd record, read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err("running as root, but there is no `postgres` system user to run PostgreSQL as (apt-get install -y postgresql creates it)".into());
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Directory holding initdb and postgres: $PGWARD_PG_BINDIR, Debian's PostgreSQL 15
/// (then newer), then PATH.
pub fn find_bindir() -> Result<PathBuf, String> {
    if let Ok(d) = std::env::var("PGWARD_PG_BINDIR") {
        return Ok(PathBuf::from(d));
    }
    for v in ["15", "16", "17", "18"] {
        let d = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if d.join("initdb").exists() && d.join("postgres").exists() {
            return Ok(d);
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("initdb").exists() && d.join("postgres").exists() {
                return Ok(d);
            }
        }
    }
    Err("PostgreSQL server binaries (initdb, postgres) not found: install them with `apt-get install -y postgresql` or set PGWARD_PG_BINDIR".into())
}

impl EphemeralPostgres {
    pub fn start(opts: PgOptions) -> Result<Self, String> {
        let bindir = find_bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("pgward-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let root = dir.path();
        let data = root.join("data");
        let sock = root.join("sock");
        fs::create_dir(&sock).map_err(|e| format!("socket dir: {e}"))?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let (uid, gid) = postgres_user()?;
            for p in [root, sock.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", p.display()))?;
            }
        }
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod: {e}"))?;

        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        run_as_postgres(&mut initdb)?;
        let out = initdb.output().map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }

        let hba = format!(
            "local all all trust\n\
             host all {MD5_ROLE} 127.0.0.1/32 md5\n\
             host all {CLEARTEXT_ROLE} 127.0.0.1/32 password\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host all all ::1/128 scram-sha-256\n"
        );
        fs::write(data.join("pg_hba.conf"), hba).map_err(|e| format!("pg_hba.conf: {e}"))?;

        let port = match opts.port {
            Some(p) => p,
            None => crate::free_port().map_err(|e| format!("free port: {e}"))?,
        };
        let mut conf = vec![
            format!("port = {port}"),
            "listen_addresses = '127.0.0.1'".into(),
            format!("unix_socket_directories = '{}'", sock.display()),
            "max_connections = 200".into(),
            "fsync = off".into(),
            "full_page_writes = off".into(),
            "synchronous_commit = off".into(),
            "logging_collector = off".into(),
            "log_min_messages = warning".into(),
        ];
        let mut ca_file = None;
        if opts.ssl {
            let files = crate::certs::generate(root, "upstream", &["127.0.0.1", "localhost"])?;
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                let (uid, gid) = postgres_user()?;
                for p in [&files.cert, &files.key] {
                    std::os::unix::fs::chown(p, Some(uid), Some(gid))
                        .map_err(|e| format!("chown: {e}"))?;
                }
            }
            fs::set_permissions(&files.key, fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("chmod key: {e}"))?;
            conf.push("ssl = on".into());
            conf.push(format!("ssl_cert_file = '{}'", files.cert.display()));
            conf.push(format!("ssl_key_file = '{}'", files.key.display()));
            ca_file = Some(files.ca);
        }
        if opts.log_statements {
            conf.push("log_statement = 'all'".into());
        }
        conf.extend(opts.extra_conf.iter().cloned());
        let mut auto = fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(|e| format!("postgresql.conf: {e}"))?;
        use std::io::Write;
        writeln!(auto, "\n# pgward test settings\n{}", conf.join("\n"))
            .map_err(|e| format!("postgresql.conf: {e}"))?;

        let mut pg = Self {
            dir,
            port,
            bindir,
            child: None,
            ca_file,
        };
        let mut retries = 0;
        loop {
            pg.spawn()?;
            match pg.wait_ready() {
                Ok(()) => return Ok(pg),
                // Another process took the port between free_port and the server's bind:
                // tests run in parallel, and every outgoing connection takes an ephemeral
                // port. A fresh port, the same cluster otherwise.
                Err(e) if e.contains("Address already in use") && retries < 5 => {
                    retries += 1;
                    if let Some(mut child) = pg.child.take() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    let old = pg.port;
                    pg.port = crate::free_port().map_err(|e| format!("free port: {e}"))?;
                    let conf_path = data.join("postgresql.conf");
                    let conf = fs::read_to_string(&conf_path)
                        .map_err(|e| format!("postgresql.conf: {e}"))?
                        .replace(
                            &format!("\nport = {old}\n"),
                            &format!("\nport = {}\n", pg.port),
                        );
                    fs::write(&conf_path, conf).map_err(|e| format!("postgresql.conf: {e}"))?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts the server process on the cluster (as the `postgres` user when root).
    fn spawn(&mut self) -> Result<(), String> {
        let root = self.dir.path();
        let log = fs::File::create(root.join("postgres.log")).map_err(|e| format!("log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let mut postgres = Command::new(self.bindir.join("postgres"));
        postgres
            .arg("-D")
            .arg(root.join("data"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        run_as_postgres(&mut postgres)?;
        self.child = Some(postgres.spawn().map_err(|e| format!("postgres: {e}"))?);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "postgres exited during startup ({status}): {}",
                        self.log()
                    ));
                }
            }
            if self.psql("postgres", "select 1").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("postgres did not start in 60s: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// CA that signed the server certificate, when started with `ssl`.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server log (includes statements when `log_statements` is on).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Runs SQL as the superuser over the Unix socket; returns unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bindir.join("psql"))
            .env_remove("PGPASSWORD")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Creates a login role with a password stored as `encryption` ("scram-sha-256" or "md5").
    pub fn create_login(&self, role: &str, password: &str, encryption: &str) -> Result<(), String> {
        let pw = password.replace('\'', "''");
        self.psql(
            "postgres",
            &format!(
                "SET password_encryption = '{encryption}'; CREATE ROLE \"{role}\" LOGIN PASSWORD '{pw}';"
            ),
        )
        .map(|_| ())
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Stops the server (fast shutdown), keeping its data, to simulate an outage.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child);
        }
    }

    /// Starts the server again on the same port and data after [`Self::stop`].
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let log = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .map_err(|e| format!("log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let mut postgres = Command::new(self.bindir.join("postgres"));
        postgres
            .arg("-D")
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        run_as_postgres(&mut postgres)?;
        self.child = Some(postgres.spawn().map_err(|e| format!("postgres: {e}"))?);
        self.wait_ready()
    }
}

/// SIGINT (PostgreSQL's "fast" shutdown: backends are ended, nothing is orphaned), then
/// SIGKILL if it takes over 15 s.
fn stop_child(mut child: Child) {
    // SAFETY: kill on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for EphemeralPostgres {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGINT is PostgreSQL's "fast" shutdown: backends are ended, nothing is orphaned.
        // SAFETY: kill on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
