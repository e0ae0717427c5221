//! `[audit.postgres]`: a copy of every record in a table of a separate audit database.
//!
//! The schema and table are created at start (`create ... if not exists`). Batches are
//! sent as one JSON array parameter and split server-side (`json_array_elements`), so a
//! batch of hundreds of records is one round trip; `on conflict do nothing` on
//! `(instance, seq, hash)` makes re-sending after an outage or a crash harmless.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::shipping::{Delivered, Destination, Failure, ShipOptions, ShippingSink};
use crate::AuditError;

/// TLS to the audit database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgTls {
    /// Plain TCP (only for a database on the same host or a private test network).
    Disable,
    /// TLS, checking the certificate chain (against `ca_file`, else the Mozilla roots)
    /// and the host name. The default.
    #[default]
    VerifyFull,
}

/// `[audit.postgres]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// A libpq-style `key=value` connection string; the keys below override it. Keep the
    /// password out of it (use `password_file` / `password_env`).
    #[serde(default)]
    pub conninfo: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub dbname: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the password (surrounding whitespace ignored); re-read at every
    /// connection, so a rotated secret is picked up.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub tls: PgTls,
    /// PEM CA bundle for `tls = "verify-full"` (default: the Mozilla roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_schema")]
    pub schema: String,
    #[serde(default = "default_table")]
    pub table: String,
    /// Most records per INSERT.
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// How long a partial batch waits to fill up before it is sent.
    #[serde(default = "default_batch_interval_ms")]
    pub batch_interval_ms: u64,
    /// Default: `<audit dir>/<stem>.spool/postgres`.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Bound on the spool; past it new records are not copied (they stay in the file).
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// When true, a record that cannot be spooled (spool full or unwritable) refuses the
    /// statement like a file failure does. The database being down never refuses
    /// statements while the spool has room.
    #[serde(default)]
    pub authoritative: bool,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

// The connection string may hold a password: never print it.
impl std::fmt::Debug for PostgresSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSinkConfig")
            .field("conninfo", &self.conninfo.as_ref().map(|_| "[REDACTED]"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("batch_records", &self.batch_records)
            .field("batch_interval_ms", &self.batch_interval_ms)
            .field("spool_dir", &self.spool_dir)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("authoritative", &self.authoritative)
            .finish()
    }
}

fn default_schema() -> String {
    "pgward".to_string()
}
fn default_table() -> String {
    "audit_log".to_string()
}
fn default_batch_records() -> usize {
    500
}
fn default_batch_interval_ms() -> u64 {
    200
}
pub(crate) fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_connect_timeout() -> u64 {
    10
}

/// Largest batch in bytes (one bind parameter).
const MAX_BATCH_BYTES: usize = 16 << 20;

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        && s.len() <= 63
}

impl PostgresSinkConfig {
    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        super::shipping::resolve_relative(
            base,
            [
                &mut self.password_file,
                &mut self.ca_file,
                &mut self.spool_dir,
            ]
            .into_iter()
            .flatten(),
        );
    }

    /// Every problem with the section, for `pgward check`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = self.pg_config() {
            p.push(e);
        }
        for (k, v) in [("schema", &self.schema), ("table", &self.table)] {
            if !is_identifier(v) {
                p.push(format!(
                    "audit.postgres.{k} {v:?} must be a plain identifier (letters, digits, _)"
                ));
            }
        }
        if self.batch_records == 0 {
            p.push("audit.postgres.batch_records must be at least 1".to_string());
        }
        if self.tls == PgTls::VerifyFull {
            if let Err(e) = tls_config(self.ca_file.as_deref()) {
                p.push(e);
            }
        }
        p
    }

    fn password(&self) -> Result<Option<String>, String> {
        if let Some(f) = &self.password_file {
            let raw = std::fs::read_to_string(f)
                .map_err(|e| format!("audit.postgres.password_file {}: {e}", f.display()))?;
            return Ok(Some(raw.trim().to_string()));
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map(Some)
                .map_err(|_| format!("audit.postgres.password_env: ${var} is not set"));
        }
        Ok(None)
    }

    fn pg_config(&self) -> Result<tokio_postgres::Config, String> {
        let mut c = match &self.conninfo {
            // The parser's error may quote the string: do not pass it on.
            Some(s) => s.parse::<tokio_postgres::Config>().map_err(|_| {
                "audit.postgres.conninfo is not a valid connection string".to_string()
            })?,
            None => tokio_postgres::Config::new(),
        };
        if let Some(h) = &self.host {
            c.host(h);
        }
        if let Some(p) = self.port {
            c.port(p);
        }
        if let Some(d) = &self.dbname {
            c.dbname(d);
        }
        if let Some(u) = &self.user {
            c.user(u);
        }
        if c.get_hosts().is_empty() {
            return Err("audit.postgres: no host (set host or conninfo)".to_string());
        }
        if c.get_user().is_none() {
            return Err("audit.postgres: no user (set user or conninfo)".to_string());
        }
        if let Some(pw) = self.password()? {
            c.password(pw);
        }
        c.application_name("pgward-audit");
        c.connect_timeout(Duration::from_secs(self.connect_timeout_secs.max(1)));
        c.ssl_mode(match self.tls {
            PgTls::Disable => tokio_postgres::config::SslMode::Disable,
            PgTls::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        Ok(c)
    }

    fn table_name(&self) -> String {
        format!("\"{}\".\"{}\"", self.schema, self.table)
    }

    /// The DDL run at start (also in docs/audit.md).
    pub fn create_sql(&self) -> String {
        let t = self.table_name();
        format!(
            "create schema if not exists \"{schema}\";
create table if not exists {t} (
    instance    text        not null,
    seq         bigint      not null,
    ts          timestamptz not null,
    event       text        not null,
    session     text,
    upn         text,
    oid         text,
    database    text,
    decision    text,
    sqlstate    text,
    prev_hash   text        not null,
    hash        text        not null,
    record      jsonb       not null,
    line        text        not null,
    received_at timestamptz not null default now(),
    primary key (instance, seq, hash)
);
create index if not exists \"{table}_ts_idx\" on {t} (ts);
create index if not exists \"{table}_oid_ts_idx\" on {t} (oid, ts);",
            schema = self.schema,
            table = self.table,
        )
    }

    fn insert_sql(&self) -> String {
        format!(
            "insert into {t} (instance, seq, ts, event, session, upn, oid, database, decision, sqlstate, prev_hash, hash, record, line)
select r->>'instance', (r->>'seq')::bigint, (r->>'ts')::timestamptz, r->>'event', r->>'session',
       r->'identity'->>'upn', r->'identity'->>'oid', r->>'database', r->>'decision',
       r->'outcome'->>'sqlstate', r->>'prev_hash', r->>'hash', r, e::text
from json_array_elements($1::text::json) as e, lateral (select e::jsonb as r) as x
on conflict (instance, seq, hash) do nothing",
            t = self.table_name()
        )
    }
}

/// Starts the sink (spool opened, thread running; it connects on its first batch).
pub(crate) fn start(
    cfg: &PostgresSinkConfig,
    audit_file: &Path,
) -> Result<ShippingSink, AuditError> {
    super::shipping::check(cfg.problems())?;
    let tls = match cfg.tls {
        PgTls::Disable => None,
        PgTls::VerifyFull => Some(tls_config(cfg.ca_file.as_deref()).map_err(AuditError::Config)?),
    };
    let dest = PgDestination {
        cfg: cfg.clone(),
        tls,
        client: None,
        insert: cfg.insert_sql(),
    };
    let opts = ShipOptions::new(
        "postgres",
        cfg.spool_dir.as_ref(),
        audit_file,
        cfg.spool_max_bytes,
        cfg.batch_interval_ms,
        cfg.authoritative,
    );
    ShippingSink::start(opts, dest)
}

struct PgDestination {
    cfg: PostgresSinkConfig,
    tls: Option<MakeRustls>,
    client: Option<tokio_postgres::Client>,
    insert: String,
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

/// Connects and drives the connection in the background.
async fn open<T>(
    c: &tokio_postgres::Config,
    tls: T,
) -> Result<tokio_postgres::Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, conn) = c.connect(tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl PgDestination {
    async fn connect(&mut self) -> Result<(), String> {
        let c = self.cfg.pg_config()?;
        let target = format!(
            "audit database {}:{}/{}",
            self.cfg.host.as_deref().unwrap_or("(conninfo)"),
            c.get_ports().first().copied().unwrap_or(5432),
            c.get_dbname().unwrap_or("")
        );
        let client = match &self.tls {
            Some(tls) => open(&c, tls.clone()).await,
            None => open(&c, tokio_postgres::NoTls).await,
        }
        .map_err(|e| format!("{target}: connect: {}", describe(&e)))?;
        client
            .batch_execute(&self.cfg.create_sql())
            .await
            .map_err(|e| {
                format!(
                    "{target}: creating {}: {}",
                    self.cfg.table_name(),
                    describe(&e)
                )
            })?;
        self.client = Some(client);
        Ok(())
    }

    async fn insert(&mut self, lines: &[&[u8]]) -> Result<Delivered, Failure> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            self.connect().await.map_err(Failure::retry)?;
        }
        let Some(client) = self.client.as_ref() else {
            return Err(Failure::retry("audit database: not connected"));
        };
        match client.execute(&self.insert, &[&json_array(lines)]).await {
            Ok(_) => Ok(Delivered {
                handled: lines.len(),
                rejected: 0,
            }),
            // Class 22 (data exception): some record the database will never take (say
            // a \u0000 that jsonb refuses). Find it rather than retry forever.
            Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
                let mut rejected = 0;
                for l in lines {
                    if let Err(e) = client.execute(&self.insert, &[&json_array(&[l])]).await {
                        if e.code().is_some_and(|c| c.code().starts_with("22")) {
                            rejected += 1;
                            tracing::error!(error = %describe(&e), record = %record_id(l), "audit record rejected by the audit database; it is only in the audit file");
                        } else {
                            self.client = None;
                            return Err(Failure::retry(describe(&e)));
                        }
                    }
                }
                Ok(Delivered {
                    handled: lines.len(),
                    rejected,
                })
            }
            Err(e) => {
                // Reconnect next time: the session may be gone or in a bad state.
                self.client = None;
                Err(Failure::retry(format!(
                    "audit database: insert into {}: {}",
                    self.cfg.table_name(),
                    describe(&e)
                )))
            }
        }
    }
}

/// `seq` of a record for log messages (never its content).
pub(crate) fn record_id(line: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Id {
        seq: u64,
    }
    serde_json::from_slice::<Id>(line)
        .map(|i| format!("seq {}", i.seq))
        .unwrap_or_else(|_| "an unreadable record".to_string())
}

/// The records as one JSON array, as text (the parameter is bound as `text`).
fn json_array(lines: &[&[u8]]) -> String {
    String::from_utf8(super::shipping::json_array(lines))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl Destination for PgDestination {
    fn limits(&self) -> (usize, usize) {
        (self.cfg.batch_records.max(1), MAX_BATCH_BYTES)
    }

    fn deliver(
        &mut self,
        rt: &tokio::runtime::Runtime,
        lines: &[&[u8]],
    ) -> Result<Delivered, Failure> {
        let limit = Duration::from_secs(self.cfg.connect_timeout_secs.max(1) + 30);
        rt.block_on(async {
            match tokio::time::timeout(limit, self.insert(lines)).await {
                Ok(r) => r,
                Err(_) => {
                    self.client = None;
                    Err(Failure::retry(format!(
                        "audit database: no answer within {}s",
                        limit.as_secs()
                    )))
                }
            }
        })
    }
}

fn tls_config(ca_file: Option<&Path>) -> Result<MakeRustls, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("audit.postgres.ca_file {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    format!(
                        "audit.postgres.ca_file {}: bad certificate: {e}",
                        path.display()
                    )
                })?;
                roots
                    .add(cert)
                    .map_err(|e| format!("audit.postgres.ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "audit.postgres.ca_file {} holds no certificate",
                    path.display()
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("audit.postgres TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustls(Arc::new(cfg)))
}

/// tokio-postgres TLS on rustls (aws-lc-rs), verifying chain and host name with the
/// given client configuration. Public so the end-to-end tests' tokio-postgres clients use
/// the same adapter.
#[derive(Clone)]
pub struct MakeRustls(Arc<rustls::ClientConfig>);

impl MakeRustls {
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        Self(config)
    }
}

pub struct Connector(Arc<rustls::ClientConfig>, ServerName<'static>);

/// Generic over the socket: tokio-postgres hands over its own `Socket` type.
pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connector;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connector> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connector(self.0.clone(), name))
    }
}

impl<S> TlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.0)
                .connect(self.1, stream)
                .await?;
            Ok(TlsStream(tls))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_the_section() {
        let c: PostgresSinkConfig = toml::from_str(
            r#"
            host = "audit-db.example.net"
            dbname = "audit"
            user = "pgward_audit"
            password_env = "PGWARD_TEST_NOT_SET_ANYWHERE"
            tls = "disable"
            "#,
        )
        .unwrap();
        assert_eq!(c.schema, "pgward");
        assert_eq!(c.table, "audit_log");
        // The password variable is missing: reported.
        assert_eq!(c.problems().len(), 1, "{:?}", c.problems());
        let bad: PostgresSinkConfig = toml::from_str(
            "conninfo = \"host=x user=y password=hunter2\"\ntable = \"a;drop\"\ntls = \"disable\"",
        )
        .unwrap();
        let p = bad.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(!format!("{bad:?}").contains("hunter2"));
        assert!(toml::from_str::<PostgresSinkConfig>("hostname = \"x\"").is_err());
    }

    #[test]
    fn json_array_joins_lines() {
        assert_eq!(
            json_array(&[b"{\"a\":1}", b"{\"b\":2}"]),
            "[{\"a\":1},{\"b\":2}]"
        );
        assert_eq!(record_id(b"{\"seq\":42,\"x\":1}"), "seq 42");
    }
}
