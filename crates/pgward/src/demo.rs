//! `pgward demo`: a throwaway PostgreSQL with sample data, TLS with a generated
//! certificate, and pgward in front on 127.0.0.1. Everything lives in one temporary
//! directory that Ctrl-C removes.

use std::fmt::Write as _;

use anyhow::{anyhow, Context};
use pgward_devkit::postgres::{EphemeralPostgres, PgOptions};
use pgward_proxy::config::{LogConfig, LogFormat};
use pgward_proxy::{Config, Server};

const SAMPLE_SCHEMA: &str = r#"
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, country text NOT NULL,
                        email text NOT NULL);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers(id),
                     amount numeric(10,2) NOT NULL, placed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE salaries (employee text PRIMARY KEY, amount numeric(10,2) NOT NULL);
INSERT INTO customers (name, country, email) VALUES ('Contoso', 'US', 'purchasing@contoso.com'),
  ('Fabrikam', 'DE', 'einkauf@fabrikam.de'), ('Northwind', 'FR', 'achats@northwind.fr');
INSERT INTO orders (customer_id, amount)
  SELECT 1 + (g % 3), round((random() * 500)::numeric, 2) FROM generate_series(1, 30) g;
INSERT INTO salaries VALUES ('alice', 98000), ('bob', 87000), ('carol', 123000);
"#;

/// Three roles: an analyst who reads two tables (customers' e-mail addresses masked), an
/// application that writes them, and an admin who may do anything but touch server files.
const DEMO_POLICY: &str = r#"# Written by `pgward demo`. Edit it while the demo runs: pgward reloads it.
mode = "enforce"

[[roles]]
name = "analyst"
members = { users = ["alice@contoso.com"] }
allow = [ { name = "analyst_reads", actions = ["select"], objects = ["public.orders", "public.customers"] } ]
# The analyst sees customers' e-mail domains only, and may not filter or sort by them.
mask = [ { name = "analyst_no_emails", columns = ["public.customers.email"], with = "email" } ]

[[roles]]
name = "app"
members = { users = ["orders-app"] }
allow = [ { name = "app_writes", actions = ["select", "insert", "update", "delete"], objects = ["public.orders", "public.customers"] } ]

[[roles]]
name = "admin"
members = { users = ["carol@contoso.com"] }
allow = [ { name = "admin_all", objects = ["*"] } ]
deny = [ { name = "admin_no_server_files", actions = ["copy_file"] } ]
"#;

fn random_password() -> anyhow::Result<String> {
    let mut b = [0u8; 18];
    getrandom::fill(&mut b).map_err(|e| anyhow!("random: {e}"))?;
    Ok(b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    }))
}

pub fn run(port: u16) -> anyhow::Result<()> {
    crate::logging::init(&LogConfig {
        format: LogFormat::Text,
        level: "warn,pgward_proxy=info".into(),
    })?;
    let dir = tempfile::Builder::new()
        .prefix("pgward-demo-")
        .tempdir()
        .context("cannot create the demo directory")?;
    println!("Starting a throwaway PostgreSQL server...");
    let pg = EphemeralPostgres::start(PgOptions::default()).map_err(|e| anyhow!(e))?;
    let password = random_password()?;
    pg.psql("postgres", "CREATE DATABASE app")
        .map_err(|e| anyhow!("create database: {e}"))?;
    pg.psql("app", SAMPLE_SCHEMA)
        .map_err(|e| anyhow!("sample data: {e}"))?;
    pg.create_login("pgward_proxy", &password, "scram-sha-256")
        .map_err(|e| anyhow!(e))?;
    pg.psql(
        "app",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO pgward_proxy;
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO pgward_proxy;",
    )
    .map_err(|e| anyhow!("grants: {e}"))?;

    let certs = pgward_devkit::certs::generate(dir.path(), "demo", &["127.0.0.1", "localhost"])
        .map_err(|e| anyhow!(e))?;
    let password_file = dir.path().join("upstream-password");
    std::fs::write(&password_file, &password).context("writing the password file")?;
    let rt = crate::process::runtime(0)?;
    // The development issuer: OIDC discovery and JWKS on loopback, key generated now.
    let issuer = rt
        .block_on(pgward_devkit::entra_issuer::DevIssuer::start(
            ([127, 0, 0, 1], 0).into(),
            pgward_devkit::entra_issuer::DEMO_TENANT,
        ))
        .map_err(|e| anyhow!("development issuer: {e}"))?;
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, DEMO_POLICY).context("writing the demo policy")?;
    let audit_path = dir.path().join("audit").join("pgward.jsonl");
    let config_path = dir.path().join("pgward.toml");
    let config_text = format!(
        r#"# Written by `pgward demo`.
[listen]
addr = "127.0.0.1:{port}"
tls_cert = "{cert}"
tls_key = "{key}"
drain_timeout_secs = 2

# Clients sign in with access tokens from the demo's development issuer
# (mint one with `pgward token`). Point authority at login.microsoftonline.com
# and tenant_id at your tenant for real Entra ID.
[entra]
tenant_id = "{tenant}"
authority = "{authority}"

[policy]
file = "{policy}"

[audit]
file = "{audit}"
redaction = "full"

[[upstreams]]
name = "demo"
kind = "postgres"
host = "127.0.0.1"
port = {pg_port}
tls = "disable"
[upstreams.credential]
type = "password"
user = "pgward_proxy"
password_file = "{password_file}"

[[routes]]
database = "app"
upstream = "demo"
upstream_database = "app"
"#,
        cert = certs.cert.display(),
        key = certs.key.display(),
        pg_port = pg.port,
        password_file = password_file.display(),
        tenant = issuer.tenant_id(),
        authority = issuer.authority(),
        policy = policy_path.display(),
        audit = audit_path.display(),
    );
    std::fs::write(&config_path, config_text).context("writing the demo config")?;
    let config = Config::load(&config_path)?;

    let exe = std::env::current_exe().context("locating the pgward binary")?;
    let exe = exe.display();
    let authority = issuer.authority();
    rt.block_on(async {
        let server = Server::bind(config).await.map_err(anyhow::Error::msg)?;
        crate::process::spawn_signal_handlers(server.handle())?;
        let ca = certs.ca.display();
        println!(
            r#"
pgward demo is running.
  pgward          127.0.0.1:{port} (TLS; certificate from a demo CA: {ca})
  PostgreSQL      127.0.0.1:{pg_port} (throwaway; tables customers, orders, salaries in database "app")
  configuration   {config}

  token issuer    {authority} (development stand-in for Entra ID, tenant {tenant})

Connect through pgward with a fresh access token as the password:

  as alice (role analyst: reads orders and customers, e-mail addresses masked)
  PGPASSWORD="$({exe} token --issuer {authority} --user alice@contoso.com)" \
    psql "host=127.0.0.1 port={port} dbname=app user=alice@contoso.com sslmode=verify-full sslrootcert={ca}"

  as the orders-app managed identity (role app: writes orders and customers)
  PGPASSWORD="$({exe} token --issuer {authority} --managed-identity orders-app)" \
    psql "host=127.0.0.1 port={port} dbname=app user=orders-app sslmode=verify-full sslrootcert={ca}"

  as carol (role admin: anything but server files)
  PGPASSWORD="$({exe} token --issuer {authority} --user carol@contoso.com)" \
    psql "host=127.0.0.1 port={port} dbname=app user=carol@contoso.com sslmode=verify-full sslrootcert={ca}"

As alice, try:
  SELECT c.name, count(*), sum(o.amount) FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY 1;
  SELECT * FROM salaries;        -- denied: ERROR 42501, naming the rule
  SELECT name, email FROM customers;                  -- masked: ****@contoso.com
  SELECT name FROM customers WHERE email LIKE 'p%';   -- denied: a filter on a masked column

A token for someone else is refused (28000; the exact reason is in pgward's log):
  PGPASSWORD="$({exe} token --issuer {authority} --user mallory@contoso.com)" \
    psql "host=127.0.0.1 port={port} dbname=app user=alice@contoso.com sslmode=verify-full sslrootcert={ca}"

Every connection and statement is in the audit log ({audit}):
  {exe} audit search --file {audit} --decision deny
  {exe} audit tail --file {audit} -f
  {exe} audit verify --file {audit}
What a role may do: {policy} (edit it; pgward reloads it), or ask:
  {exe} policy explain --config {config} --user alice@contoso.com "SELECT * FROM salaries"

Press Ctrl-C to stop; everything the demo made is removed."#,
            pg_port = pg.port,
            config = config_path.display(),
            tenant = pgward_devkit::entra_issuer::DEMO_TENANT,
            audit = audit_path.display(),
            policy = policy_path.display(),
        );
        server.run().await;
        anyhow::Ok(())
    })?;
    drop(issuer);
    drop(rt);
    drop(pg);
    println!("pgward demo stopped and cleaned up.");
    Ok(())
}
