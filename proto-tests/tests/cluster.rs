//! Replicas that act as one (`[cluster]`): three pgward processes behind a round-robin TCP
//! balancer (so a cancel connection lands on another replica than its session), sharing a
//! store — a PostgreSQL control database or a Redis server — and each story runs against
//! both: cancels from psql, tokio-postgres and psycopg (and of an Azure SQL session) reach
//! the right session; forged keys do nothing; a cap of 5 per identity admits exactly 5
//! across replicas and a killed replica's slots come back; a statement rate holds across
//! replicas; a stopped store is survived in both `on_store_error` modes; an instance name is
//! claimed once; failed sign-ins are counted across replicas.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgward_devkit::azure_identity::{Expect as IdentityExpect, IdentityStandIn};
use pgward_devkit::entra_issuer::{DevIssuer, TokenSpec};
use pgward_proto_tests::tds_standin::TdsStandIn;
use pgward_proto_tests::*;

const TENANT: &str = "6b1c2d3e-4f50-4a61-9b72-8c9d0e1f2a3b";
const SQL_TOKEN: &str = "sql-token-for-the-cluster-test";
const STORE_PASSWORD: &str = "cluster-secret-Qw71";

const POLICY: &str = r#"
[[roles]]
name = "everyone"
members = { everyone = true }
allow = [ { objects = ["*"] } ]
"#;

// ---------------------------------------------------------------------------------------
// The store: a PostgreSQL control database or a redis-server, each stoppable.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Postgres,
    Redis,
}

enum Store {
    Postgres(pgward_devkit::postgres::EphemeralPostgres),
    Redis(RedisServer),
}

impl Store {
    fn start(kind: Kind) -> Self {
        match kind {
            Kind::Postgres => {
                let pg = pgward_devkit::postgres::EphemeralPostgres::start(PgOptions::default())
                    .unwrap_or_else(|e| panic!("{e}"));
                pg.create_login("pgward_cluster", STORE_PASSWORD, "scram-sha-256")
                    .unwrap();
                pg.psql(
                    "postgres",
                    "CREATE DATABASE pgward_control OWNER pgward_cluster",
                )
                .unwrap();
                Store::Postgres(pg)
            }
            Kind::Redis => Store::Redis(RedisServer::start()),
        }
    }

    /// The `[cluster]` section for a replica.
    fn section(&self, on_store_error: &str) -> String {
        let common = format!(
            "[cluster]\non_store_error = \"{on_store_error}\"\ntimeout_ms = 2000\nlease_secs = 3\nreplicas = 3\n"
        );
        match self {
            Store::Postgres(pg) => format!(
                "{common}backend = \"postgres\"\n[cluster.postgres]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"pgward_control\"\ntls = \"disable\"\n[cluster.postgres.credential]\ntype = \"password\"\nuser = \"pgward_cluster\"\npassword_env = \"PGWARD_TEST_STORE_PASSWORD\"\n",
                pg.port
            ),
            Store::Redis(r) => format!(
                "{common}backend = \"redis\"\n[cluster.redis]\nhost = \"127.0.0.1\"\nport = {}\ntls = true\nca_file = \"{}\"\n[cluster.redis.credential]\ntype = \"password\"\nuser = \"default\"\npassword_env = \"PGWARD_TEST_STORE_PASSWORD\"\n",
                r.port,
                r.certs.ca.display()
            ),
        }
    }

    fn stop(&mut self) {
        match self {
            Store::Postgres(pg) => pg.stop(),
            Store::Redis(r) => r.stop(),
        }
    }

    fn start_again(&mut self) {
        match self {
            Store::Postgres(pg) => pg.restart().unwrap(),
            Store::Redis(r) => r.spawn(),
        }
    }
}

/// redis-server from Debian, unprivileged, on a free loopback port with a temporary
/// directory, over TLS only (as Azure Managed Redis), requiring a password.
struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    certs: pgward_devkit::certs::CertFiles,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs =
            pgward_devkit::certs::generate(dir.path(), "redis", &["127.0.0.1", "localhost"])
                .unwrap();
        let mut r = RedisServer {
            port: pgward_devkit::free_port().unwrap(),
            dir,
            certs,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let bin = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("redis-server (apt-get install redis-server; scripts/lib/deps.sh)");
        let child = Command::new(bin)
            .args([
                "--port",
                "0",
                "--tls-port",
                &self.port.to_string(),
                "--tls-auth-clients",
                "no",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                STORE_PASSWORD,
                "--dir",
            ])
            .arg(self.dir.path())
            .arg("--tls-cert-file")
            .arg(&self.certs.cert)
            .arg("--tls-key-file")
            .arg(&self.certs.key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                self.port
            ))
            .is_ok()),
            "redis-server did not start"
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// The balancer: round robin over the replicas that accept a connection.

struct Balancer {
    port: u16,
    /// The replica index each accepted connection went to, in order.
    routed: Arc<Mutex<Vec<usize>>>,
}

impl Balancer {
    fn start(backends: Vec<u16>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let routed = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let r = routed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                // The next replica in turn; one that refuses (killed) is skipped.
                let mut chosen = None;
                for _ in 0..backends.len() {
                    let i = next.fetch_add(1, Ordering::SeqCst) % backends.len();
                    if let Ok(s) = TcpStream::connect(("127.0.0.1", backends[i])) {
                        chosen = Some((i, s));
                        break;
                    }
                }
                let Some((i, server)) = chosen else { continue };
                r.lock().unwrap().push(i);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Balancer { port, routed }
    }

    fn last(&self) -> usize {
        *self
            .routed
            .lock()
            .unwrap()
            .last()
            .expect("a routed connection")
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

// ---------------------------------------------------------------------------------------
// Three replicas, an upstream PostgreSQL, an Azure SQL stand-in, the store, the balancer.

struct Env {
    replicas: Vec<Pgward>,
    balancer: Balancer,
    store: Store,
    db: Database,
    issuer: DevIssuer,
    rt: tokio::runtime::Runtime,
    ca: PathBuf,
    _standin: TdsStandIn,
    _identity: IdentityStandIn,
    _dir: tempfile::TempDir,
}

/// `modes[i]` is replica i's `on_store_error`; `limits` its `[limits]`.
fn env(kind: Kind, limits: &str, modes: [&str; 3]) -> Env {
    let (rt, issuer) = start_issuer(TENANT, 2);
    let store = Store::start(kind);
    let db = Database::start();
    let standin = TdsStandIn::start();
    standin.accept_only(SQL_TOKEN);
    let identity = IdentityStandIn::start(
        IdentityExpect {
            resource: "https://database.windows.net".into(),
            ..Default::default()
        },
        SQL_TOKEN,
        Duration::from_secs(3600),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One certificate for every replica, as behind a real load balancer's name.
    let certs =
        pgward_devkit::certs::generate(dir.path(), "cluster", &["127.0.0.1", "localhost"]).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let replicas: Vec<Pgward> = modes
        .iter()
        .enumerate()
        .map(|(i, mode)| {
            let extra = format!(
                r#"
{limits}

[[upstreams]]
name = "sql"
kind = "azure-sql"
host = "127.0.0.1"
port = {port}
tls = "verify-full"
ca_file = "{ca}"
[upstreams.credential]
type = "managed-identity"
user = "pgward-identity"
endpoint = "{imds}"

[[routes]]
database = "sqlapp"
upstream = "sql"
upstream_database = "appdb"

{cluster}
"#,
                port = standin.port,
                ca = standin.ca.display(),
                imds = identity.imds_url(),
                cluster = store.section(mode),
            );
            Pgward::start(
                &db,
                PgwardOptions {
                    tls: false,
                    listen_extra: vec![
                        format!("tls_cert = \"{}\"", certs.cert.display()),
                        format!("tls_key = \"{}\"", certs.key.display()),
                    ],
                    entra: Some(entra_section(TENANT, &issuer)),
                    policy: Some(policy.clone()),
                    extra_toml: extra,
                    log_level: "info",
                    env: vec![
                        ("PGWARD_INSTANCE".into(), format!("replica-{i}")),
                        ("PGWARD_TEST_STORE_PASSWORD".into(), STORE_PASSWORD.into()),
                    ],
                    ..PgwardOptions::default()
                },
            )
        })
        .collect();
    let balancer = Balancer::start(replicas.iter().map(|r| r.port).collect());
    Env {
        replicas,
        balancer,
        store,
        db,
        issuer,
        rt,
        ca: certs.ca,
        _standin: standin,
        _identity: identity,
        _dir: dir,
    }
}

impl Env {
    fn token(&self, upn: &str) -> String {
        self.issuer.mint(&TokenSpec::user(upn)).unwrap()
    }

    /// libpq keywords for `upn` through `port` (the balancer unless said otherwise).
    fn conn_at(&self, port: u16, upn: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={port} dbname={db} user={upn} password={} sslmode=verify-full sslrootcert={} connect_timeout=10",
            self.token(upn),
            self.ca.display()
        )
    }

    fn conn(&self, upn: &str) -> String {
        self.conn_at(self.balancer.port, upn, "app")
    }

    /// tokio-postgres through `port` (its TLS connector checks the chain and the name).
    async fn connect_at(
        &self,
        port: u16,
        upn: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let tls = pgtls::trusting(&self.ca);
        let conn = format!(
            "host=127.0.0.1 port={port} dbname=app user={upn} password={} sslmode=require connect_timeout=10",
            self.token(upn)
        );
        let (client, connection) = tokio_postgres::connect(&conn, tls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    async fn connect(&self, upn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.connect_at(self.balancer.port, upn).await
    }

    /// A metric summed over every replica still running.
    fn metric(&self, name: &str) -> f64 {
        self.replicas
            .iter()
            .filter_map(|r| r.admin_get("/metrics").map(|_| r.metric(name)))
            .sum()
    }

    fn active(&self, sql: &str) -> bool {
        self.db.sql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE query = '{sql}' AND state = 'active'"
            ),
        ) == "1"
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

// ---------------------------------------------------------------------------------------
// Cancel from anywhere.

fn cancels(kind: Kind) {
    let env = env(kind, "", ["local", "local", "local"]);
    let remote = || env.metric("pgward_cluster_remote_cancels_total");

    // psql: a statement_timeout-free query cancelled by SIGINT, as a person's Ctrl-C.
    let before = remote();
    let mut psql = Command::new("psql")
        .args(["-X", "-c", "SELECT pg_sleep(20)"])
        .arg(env.conn("alice@contoso.com"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || env
        .active("SELECT pg_sleep(20)")));
    let t = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(psql.id() as i32, libc::SIGINT) };
    let out = loop {
        if let Some(_s) = psql.try_wait().unwrap() {
            break psql.wait_with_output().unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "psql's cancel did nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(
        remote() > before,
        "psql's cancel did not go through the store"
    );

    env.rt.block_on(async {
        // tokio-postgres: the session on one replica, the cancel through the balancer to the
        // next one.
        let client = env.connect("bob@contoso.com").await.unwrap();
        let session_on = env.balancer.last();
        let token = client.cancel_token();
        let sleeper = tokio::spawn(async move {
            client
                .simple_query("SELECT pg_sleep(19)")
                .await
                .map(|_| client)
        });
        let db_active = || env.active("SELECT pg_sleep(19)");
        let t0 = Instant::now();
        while !db_active() {
            assert!(t0.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = Instant::now();
        token.cancel_query(pgtls::trusting(&env.ca)).await.unwrap();
        assert_ne!(
            env.balancer.last(),
            session_on,
            "the cancel must land on another replica"
        );
        let e = sleeper.await.unwrap().expect_err("cancelled");
        assert_eq!(sqlstate(&e), "57014", "{e}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

        // Forged keys: the right pid with wrong secrets, through every replica, do nothing.
        let victim = env.connect("carol@contoso.com").await.unwrap();
        let pid: i32 = victim
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let run = tokio::spawn(async move {
            victim
                .simple_query("SELECT pg_sleep(1.5)")
                .await
                .map(|_| ())
        });
        while !env.active("SELECT pg_sleep(1.5)") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let matched = env.metric("pgward_cluster_remote_cancels_total{result=\"matched\"}");
        for guess in [
            [0u8; 4],
            [1, 2, 3, 4],
            [0xff; 4],
            [0x12, 0x34, 0x56, 0x78],
            [9, 9, 9, 9],
            [7; 4],
        ] {
            raw_cancel(env.balancer.port, pid as u32, guess);
        }
        assert!(
            run.await.unwrap().is_ok(),
            "a forged key cancelled the query"
        );
        assert_eq!(
            env.metric("pgward_cluster_remote_cancels_total{result=\"matched\"}"),
            matched,
            "a forged key matched a session"
        );
        assert!(env.metric("pgward_cluster_remote_cancels_total{result=\"unmatched\"}") >= 6.0);
    });

    // psycopg: a PostgreSQL session and an Azure SQL (stand-in) session.
    let out = run_python(
        "cluster_cancel.py",
        &[
            ("CONN", env.conn("dave@contoso.com")),
            (
                "SQL_CONN",
                env.conn_at(env.balancer.port, "dave@contoso.com", "sqlapp"),
            ),
        ],
    );
    assert!(out.contains("postgres 57014 True"), "{out}");
    assert!(out.contains("postgres usable 42"), "{out}");
    assert!(out.contains("azure-sql 57014 True"), "{out}");
    assert!(out.contains("azure-sql usable [(1, 'widget', 3)]"), "{out}");
}

fn raw_cancel(port: u16, pid: u32, secret: [u8; 4]) {
    let mut c = raw::connect(port);
    let mut p = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    p.extend_from_slice(&pid.to_be_bytes());
    p.extend_from_slice(&secret);
    c.write_all(&p).unwrap();
    assert!(raw::closed(&mut c));
}

#[test]
fn cancels_reach_the_right_session_through_any_replica_postgres_store() {
    cancels(Kind::Postgres);
}

#[test]
fn cancels_reach_the_right_session_through_any_replica_redis_store() {
    cancels(Kind::Redis);
}

// ---------------------------------------------------------------------------------------
// Connection caps across replicas.

fn caps(kind: Kind) {
    let mut env = env(
        kind,
        "[limits]\nconnections_per_identity = 5",
        ["local", "local", "local"],
    );
    // The clients' own runtime: the test kills a replica (needs `env` mutably) meanwhile.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut held = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..15 {
            match env.connect("erin@contoso.com").await {
                Ok(c) => held.push((c, env.balancer.last())),
                Err(e) => refused.push(e),
            }
        }
        assert_eq!(held.len(), 5, "exactly 5 of 15 across the replicas");
        for e in &refused {
            assert_eq!(sqlstate(e), "53300", "{e}");
            assert!(message(e).contains("limit 5"), "{}", message(e));
        }
        let on: std::collections::HashSet<usize> = held.iter().map(|h| h.1).collect();
        assert_eq!(
            on.len(),
            3,
            "sessions on every replica: {held:?}",
            held = held.iter().map(|h| h.1).collect::<Vec<_>>()
        );

        // Closing 2 admits 2, and no more.
        held.truncate(3);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut admitted = 0;
        for _ in 0..6 {
            if let Ok(c) = env.connect("erin@contoso.com").await {
                held.push((c, env.balancer.last()));
                admitted += 1;
            }
        }
        assert_eq!(admitted, 2);
        assert_eq!(held.len(), 5);

        // kill -9 of a replica: its slots come back (PostgreSQL: when its store connection
        // closes; Redis: when its leases expire, lease_secs = 3).
        let victim = held[0].1;
        let freed = held.iter().filter(|h| h.1 == victim).count();
        assert!(freed >= 1);
        env.replicas[victim].signal(libc::SIGKILL);
        env.replicas[victim]
            .wait_exit(Duration::from_secs(5))
            .expect("killed");
        held.retain(|h| h.1 != victim);
        let t = Instant::now();
        let mut back = 0;
        while back < freed {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "a dead replica's slots did not come back ({back} of {freed})"
            );
            match env.connect("erin@contoso.com").await {
                Ok(c) => {
                    assert_ne!(env.balancer.last(), victim);
                    held.push((c, env.balancer.last()));
                    back += 1;
                }
                Err(e) => {
                    assert_eq!(sqlstate(&e), "53300", "{e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        eprintln!(
            "{kind:?}: {freed} slots of a killed replica back after {:?}",
            t.elapsed()
        );
        let e = env
            .connect("erin@contoso.com")
            .await
            .expect_err("still capped at 5");
        assert_eq!(sqlstate(&e), "53300");
    });
}

#[test]
fn connection_caps_hold_across_replicas_postgres_store() {
    caps(Kind::Postgres);
}

#[test]
fn connection_caps_hold_across_replicas_redis_store() {
    caps(Kind::Redis);
}

// ---------------------------------------------------------------------------------------
// Statement rates across replicas.

const RATE: f64 = 40.0;

/// Runs `clients` sessions of `upn` (spread by the balancer) for `secs`, each running
/// statements as fast as it is let; returns the statements that ran.
async fn hammer(env: &Env, upn: &str, clients: usize, secs: f64) -> (usize, Vec<usize>) {
    let mut sessions = Vec::new();
    for _ in 0..clients {
        sessions.push(env.connect(upn).await.unwrap());
    }
    let routed: Vec<usize> = env
        .balancer
        .routed
        .lock()
        .unwrap()
        .iter()
        .rev()
        .take(clients)
        .copied()
        .collect();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in sessions {
        tasks.push(tokio::spawn(async move {
            let mut ok = 0usize;
            while Instant::now() < until {
                match c.simple_query("SELECT 1").await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        assert_eq!(e.code().map(|c| c.code()), Some("53400"), "{e}");
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    (total, routed)
}

fn rates(kind: Kind) {
    let env = env(
        kind,
        &format!("[limits]\nstatements_per_second = {RATE}\nstatement_burst = 4"),
        ["local", "local", "local"],
    );
    env.rt.block_on(async {
        let secs = 5.0;
        let (ran, routed) = hammer(&env, "frank@contoso.com", 6, secs).await;
        let on: std::collections::HashSet<usize> = routed.iter().copied().collect();
        assert_eq!(on.len(), 3, "6 clients over 3 replicas: {routed:?}");
        let expected = RATE * secs + 4.0;
        let ratio = ran as f64 / expected;
        eprintln!("{kind:?}: 6 clients over 3 replicas ran {ran} statements in {secs} s (expected {expected}, ratio {ratio:.3})");
        assert!((0.9..=1.1).contains(&ratio), "{ran} statements, expected {expected} ± 10%");
        assert!(env.metric("pgward_cluster_lease_refills_total") > 0.0);

        // One client alone still gets the whole rate, not a third of it.
        let secs = 3.0;
        let (ran, _) = hammer(&env, "grace@contoso.com", 1, secs).await;
        let expected = RATE * secs + 4.0;
        let ratio = ran as f64 / expected;
        eprintln!("{kind:?}: one client ran {ran} statements in {secs} s (expected {expected}, ratio {ratio:.3})");
        assert!((0.9..=1.1).contains(&ratio), "{ran} statements, expected {expected} ± 10%");
    });
}

#[test]
fn statement_rates_hold_across_replicas_postgres_store() {
    rates(Kind::Postgres);
}

#[test]
fn statement_rates_hold_across_replicas_redis_store() {
    rates(Kind::Redis);
}

// ---------------------------------------------------------------------------------------
// The store stopped: replicas 0 and 1 with on_store_error = "local", replica 2 "refuse".

fn outage(kind: Kind) {
    let mut env = env(
        kind,
        "[limits]\nconnections_per_identity = 6\nstatements_per_second = 1000\nstatement_burst = 1000",
        ["local", "local", "refuse"],
    );
    let ports: Vec<u16> = env.replicas.iter().map(|r| r.port).collect();
    let early = env.rt.block_on(async {
        // A session on the refusing replica, opened while the store is up.
        let early = env.connect_at(ports[2], "heidi@contoso.com").await.unwrap();
        early.simple_query("SELECT 1").await.unwrap();
        early
    });
    env.store.stop();
    let up = |env: &Env| env.metric("pgward_cluster_store_up");
    env.rt.block_on(async {
        // Readiness never depends on the store.
        for r in &env.replicas {
            assert_eq!(r.admin_get("/readyz").unwrap().0, 200);
        }
        // "local": each replica enforces its share, ceil(6 / 3) = 2.
        let mut local = Vec::new();
        let mut refusal = None;
        for _ in 0..4 {
            match env.connect_at(ports[0], "ivan@contoso.com").await {
                Ok(c) => local.push(c),
                Err(e) => refusal = Some(e),
            }
        }
        assert_eq!(
            local.len(),
            2,
            "the local share of 6 over 3 replicas; replicas seen {}:\n{}",
            env.replicas[0].metric("pgward_cluster_replicas"),
            env.replicas[0].log()
        );
        let e = refusal.expect("over the share");
        assert_eq!(sqlstate(&e), "53300", "{e}");
        // Cancels stay local: a session cancelled through its own replica.
        let c = &local[0];
        let token = c.cancel_token();
        let query = c.simple_query("SELECT pg_sleep(18)");
        let cancel = async {
            while !env.active("SELECT pg_sleep(18)") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            token.cancel_query(pgtls::trusting(&env.ca)).await.unwrap();
        };
        let (r, ()) = tokio::join!(query, cancel);
        assert_eq!(sqlstate(&r.expect_err("cancelled locally")), "57014");
        // Statements go on under the local share of the rate.
        for _ in 0..50 {
            local[1].simple_query("SELECT 1").await.unwrap();
        }

        // "refuse", statements: what the replica leased before the outage runs (a tenth of
        // a second of the rate: 100), then 53400 naming the store; the session stays usable.
        let mut ran = 0;
        let refused = loop {
            match early.simple_query("SELECT 1").await {
                Ok(_) => ran += 1,
                Err(e) => break e,
            }
            assert!(ran <= 200, "statements ran on without the store");
        };
        assert_eq!(sqlstate(&refused), "53400", "{refused}");
        assert!(message(&refused).contains("store"), "{}", message(&refused));
        assert!(ran >= 50, "only {ran} statements before the refusal");

        // "refuse": 53300 naming the store.
        let e = env
            .connect_at(ports[2], "judy@contoso.com")
            .await
            .expect_err("refused");
        assert_eq!(sqlstate(&e), "53300", "{e}");
        assert!(message(&e).contains("store"), "{}", message(&e));
        assert!(env.replicas[2].metric("pgward_cluster_fallbacks_total") >= 1.0);
        assert!(env.replicas[0].metric("pgward_cluster_fallbacks_total") >= 1.0);
        assert!(env.metric("pgward_cluster_store_errors_total") >= 1.0);
        drop(local);
    });
    assert!(
        wait_until(Duration::from_secs(5), || up(&env) == 0.0),
        "store_up must show the outage"
    );
    assert!(
        env.replicas[2].log().contains("cluster store"),
        "the outage is logged"
    );

    // The store comes back: every replica reconnects on its own.
    env.store.start_again();
    assert!(
        wait_until(Duration::from_secs(20), || up(&env) == 3.0),
        "replicas did not reconnect: store_up {}",
        up(&env)
    );
    env.rt.block_on(async {
        let c = env
            .connect_at(ports[2], "judy@contoso.com")
            .await
            .expect("admitted again");
        c.simple_query("SELECT 1").await.unwrap();
        // The refused session's statements run again once a lease can be had.
        let mut back = false;
        for _ in 0..100 {
            if early.simple_query("SELECT 1").await.is_ok() {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(back, "statements on the refusing replica did not recover");
        let mut n = 0;
        let mut held = Vec::new();
        for _ in 0..8 {
            if let Ok(c) = env.connect("kim@contoso.com").await {
                held.push(c);
                n += 1;
            }
        }
        assert_eq!(n, 6, "the shared cap is back");
    });
}

#[test]
fn a_stopped_store_is_survived_in_both_modes_postgres_store() {
    outage(Kind::Postgres);
}

#[test]
fn a_stopped_store_is_survived_in_both_modes_redis_store() {
    outage(Kind::Redis);
}

// ---------------------------------------------------------------------------------------
// Instance names and failed sign-ins.

fn identity_and_throttle(kind: Kind) {
    let env = env(kind, "", ["local", "local", "local"]);
    // A fourth process claiming replica-0's name is refused at start.
    let config = std::fs::read_to_string(&env.replicas[0].config_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pgward.toml");
    let config = config
        .replace(
            &format!("127.0.0.1:{}\"", env.replicas[0].port),
            &format!("127.0.0.1:{}\"", pgward_devkit::free_port().unwrap()),
        )
        .replace(
            &format!("127.0.0.1:{}\"", env.replicas[0].admin_port),
            &format!("127.0.0.1:{}\"", pgward_devkit::free_port().unwrap()),
        );
    std::fs::write(&copy, config).unwrap();
    let t = Instant::now();
    let out = Command::new(pgward_bin())
        .args(["serve", "--config"])
        .arg(&copy)
        .env("PGWARD_INSTANCE", "replica-0")
        .env("PGWARD_TEST_STORE_PASSWORD", STORE_PASSWORD)
        .env("PGWARD_TEST_UPSTREAM_PASSWORD", PROXY_PASSWORD)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "a duplicate instance name started:\n{log}"
    );
    assert!(log.contains("\"replica-0\" is already claimed"), "{log}");
    // lease_secs (3) + 1 of waiting for the claim to lapse, and a start on a busy machine.
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());

    // Failed sign-ins spread over the replicas are counted together: after 6 (2 per
    // replica, under the 3 each allows alone), the next attempts wait as after the 4th, 5th
    // and 6th failure (250 ms, 500 ms, 1 s). Alone, each replica would not delay at all.
    // Only lower bounds are checked: a busy machine can make any attempt slower.
    env.rt.block_on(async {
        let ca = &env.ca;
        let bad = |port| {
            let c = format!(
                "host=127.0.0.1 port={port} dbname=app user=mallory@contoso.com password=not-a-token sslmode=require"
            );
            async move {
                let t = Instant::now();
                let r = tokio_postgres::connect(&c, pgtls::trusting(ca)).await;
                assert_eq!(sqlstate(&r.err().expect("refused")), "28000");
                t.elapsed()
            }
        };
        for _ in 0..6 {
            bad(env.balancer.port).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for at_least in [240, 490, 990] {
            let took = bad(env.balancer.port).await;
            assert!(
                took >= Duration::from_millis(at_least),
                "the shared count did not slow this attempt: {took:?} < {at_least} ms"
            );
        }
    });
}

#[test]
fn instance_names_and_failed_sign_ins_are_shared_postgres_store() {
    identity_and_throttle(Kind::Postgres);
}

#[test]
fn instance_names_and_failed_sign_ins_are_shared_redis_store() {
    identity_and_throttle(Kind::Redis);
}
