//! One TDS session to an Azure SQL database: connect with TLS, sign in with an Entra access
//! token (FEDAUTH), pin the caller's identity in SESSION_CONTEXT, run batches and turn
//! their results into PostgreSQL messages.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::TryStreamExt;
use pgward_wire::build::{self, Severity};
use thiserror::Error;
use tiberius::{AuthMethod, Client, Command, CommandItem, Config, EncryptionLevel};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use tracing::debug;

use crate::errors;
use crate::pg;
use crate::types;

/// How the TDS connection is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TdsTls {
    /// TDS 8.0 strict encryption (TLS before any TDS byte), server certificate and host name
    /// verified against the system roots plus `ca_file`.
    VerifyFull { ca_file: Option<PathBuf> },
    /// TDS 8.0 strict encryption without verifying who answers (development only).
    Require,
    /// No TLS at all. Only accepted for loopback hosts (tests).
    Disable,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct TdsOptions {
    /// Upstream name, for messages.
    pub upstream: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub tls: TdsTls,
    pub connect_timeout: Duration,
    pub application_name: String,
}

/// The caller's identity, pinned read-only in SESSION_CONTEXT.
#[derive(Debug, Clone, Default)]
pub struct SessionIdentity {
    pub oid: String,
    pub tid: String,
    pub upn: String,
    /// pgward policy roles, comma-separated in the session context.
    pub roles: Vec<String>,
    /// The database user the session runs as (`EXECUTE AS USER ... WITH NO REVERT`, before
    /// anything else): the held role's `upstream_role`. `None` runs as pgward's identity.
    pub database_user: Option<String>,
}

/// `EXECUTE AS USER = N'user' WITH NO REVERT`: the session cannot return to pgward's own
/// identity afterwards, so the user's database privileges bound everything it runs.
pub fn impersonation_statement(user: &str) -> String {
    format!(
        "EXECUTE AS USER = N'{}' WITH NO REVERT",
        user.replace('\'', "''")
    )
}

/// An Entra access token for https://database.windows.net/.default. Never printed.
#[derive(Clone)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

#[derive(Debug, Error)]
pub enum TdsConnectError {
    #[error("cannot reach azure-sql upstream {upstream} at {addr}: {source}")]
    Unreachable {
        upstream: String,
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out after {secs}s connecting to azure-sql upstream {upstream}")]
    Timeout { upstream: String, secs: u64 },
    #[error("tls = \"disable\" is only allowed for loopback hosts (upstream {upstream})")]
    PlaintextRefused { upstream: String },
    #[error("azure-sql upstream {upstream} rejected pgward's sign-in: {message}")]
    SignIn { upstream: String, message: String },
    #[error("azure-sql upstream {upstream}: {detail}")]
    Other { upstream: String, detail: String },
}

impl TdsConnectError {
    /// SQLSTATE for the client (PRODUCT.md: upstream unreachable 08006, credential 08001).
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::SignIn { .. } => "08001",
            _ => "08006",
        }
    }

    /// What the client is told: nothing about pgward's credential.
    pub fn client_message(&self) -> String {
        let upstream = match self {
            Self::Unreachable { upstream, .. }
            | Self::Timeout { upstream, .. }
            | Self::PlaintextRefused { upstream }
            | Self::SignIn { upstream, .. }
            | Self::Other { upstream, .. } => upstream,
        };
        match self {
            Self::SignIn { .. } => format!("pgward could not sign in to upstream \"{upstream}\""),
            _ => format!("pgward could not connect to upstream \"{upstream}\""),
        }
    }
}

/// What one statement of a batch came to, for the audit record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementOutcome {
    pub tag: Option<String>,
    /// (SQLSTATE, message)
    pub error: Option<(String, String)>,
}

/// What the statements of a batch are, so row counts become the right command tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Returns rows (SELECT): `SELECT n`.
    Rows,
    Insert,
    Update,
    Delete,
    Merge,
    /// Anything else: this tag, whatever the count.
    Tag(String),
}

impl Expect {
    fn tag(&self, rows: u64) -> String {
        match self {
            Expect::Rows => format!("SELECT {rows}"),
            Expect::Insert => format!("INSERT 0 {rows}"),
            Expect::Update => format!("UPDATE {rows}"),
            Expect::Delete => format!("DELETE {rows}"),
            Expect::Merge => format!("MERGE {rows}"),
            Expect::Tag(t) => t.clone(),
        }
    }
}

/// How a batch ended.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// One entry per statement answered, in order.
    pub statements: Vec<StatementOutcome>,
    /// The batch failed (error or cancel); the first error is in `statements`.
    pub failed: bool,
    /// The client's cancel interrupted it (attention sent and acknowledged).
    pub cancelled: bool,
    /// Bytes written to the client.
    pub bytes_out: u64,
}

/// Writes to the client in chunks of about this size while rows stream.
const FLUSH_AT: usize = 64 * 1024;

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A signed-in TDS session.
pub struct TdsSession {
    client: Client<Compat<TcpStream>>,
}

impl fmt::Debug for TdsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TdsSession")
    }
}

impl TdsSession {
    /// Connects, signs in with `token`, sets XACT_ABORT ON (so an error ends the batch and
    /// its transaction, as in PostgreSQL) and pins `identity` in SESSION_CONTEXT read-only.
    pub async fn connect(
        opts: &TdsOptions,
        token: &AccessToken,
        identity: &SessionIdentity,
    ) -> Result<Self, TdsConnectError> {
        let secs = opts.connect_timeout.as_secs();
        let fut = Self::connect_inner(opts, token, identity);
        match tokio::time::timeout(opts.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(TdsConnectError::Timeout {
                upstream: opts.upstream.clone(),
                secs,
            }),
        }
    }

    async fn connect_inner(
        opts: &TdsOptions,
        token: &AccessToken,
        identity: &SessionIdentity,
    ) -> Result<Self, TdsConnectError> {
        let upstream = opts.upstream.clone();
        if opts.tls == TdsTls::Disable && !is_loopback(&opts.host) {
            return Err(TdsConnectError::PlaintextRefused { upstream });
        }
        let mut host = opts.host.clone();
        let mut port = opts.port;
        // Azure SQL's redirect connection policy answers the first login with a routing
        // ENVCHANGE; follow it once.
        for _ in 0..2 {
            let config = config_for(opts, &host, port, token);
            let addr = format!("{host}:{port}");
            let tcp =
                TcpStream::connect(&addr)
                    .await
                    .map_err(|source| TdsConnectError::Unreachable {
                        upstream: upstream.clone(),
                        addr: addr.clone(),
                        source,
                    })?;
            let _ = tcp.set_nodelay(true);
            match Client::connect(config, tcp.compat_write()).await {
                Ok(client) => {
                    let mut s = Self { client };
                    s.prepare(identity)
                        .await
                        .map_err(|e| TdsConnectError::Other {
                            upstream: upstream.clone(),
                            detail: format!("setting up the session failed: {}", e.1),
                        })?;
                    return Ok(s);
                }
                Err(tiberius::error::Error::Routing { host: h, port: p }) => {
                    debug!(host = %h, port = p, "azure-sql redirect");
                    host = h;
                    port = p;
                }
                Err(tiberius::error::Error::Server(t)) => {
                    return Err(TdsConnectError::SignIn {
                        upstream,
                        message: errors::server_message(&t),
                    })
                }
                Err(tiberius::error::Error::Tls(detail)) => {
                    return Err(TdsConnectError::Other {
                        upstream,
                        detail: format!("TLS failed: {detail}"),
                    })
                }
                Err(e) => {
                    return Err(TdsConnectError::Other {
                        upstream,
                        detail: e.to_string(),
                    })
                }
            }
        }
        Err(TdsConnectError::Other {
            upstream,
            detail: "redirected more than once".into(),
        })
    }

    async fn prepare(&mut self, identity: &SessionIdentity) -> Result<(), (String, String)> {
        // First, so nothing runs as pgward's identity; a failure refuses the session.
        if let Some(user) = &identity.database_user {
            self.control(&impersonation_statement(user))
                .await
                .map_err(|(code, m)| (code, format!("EXECUTE AS USER {user:?} failed: {m}")))?;
        }
        self.control("SET XACT_ABORT ON").await?;
        let roles = identity.roles.join(",");
        for (key, value) in [
            ("oid", identity.oid.as_str()),
            ("tid", identity.tid.as_str()),
            ("upn", identity.upn.as_str()),
            ("roles", roles.as_str()),
        ] {
            // Parameters, not text: a claim value can't change the statement.
            let mut cmd = Command::new("sp_set_session_context");
            cmd.bind_param("@key", key.to_owned());
            cmd.bind_param("@value", value.to_owned());
            cmd.bind_param("@read_only", true);
            cmd.exec(&mut self.client)
                .await
                .map_err(|e| errors::from_tiberius(&e))?
                .into_command_result()
                .await
                .map_err(|e| errors::from_tiberius(&e))?;
        }
        Ok(())
    }

    /// Runs a batch (sent as `sp_executesql @stmt`, so every statement reports its row
    /// count) and writes RowDescription / DataRow / CommandComplete / ErrorResponse for it
    /// to `out` (not ReadyForQuery). `expect` lists the statements in order. When `cancel`
    /// is notified mid-batch, a TDS attention is sent and the client gets 57014.
    pub async fn run<W: AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        expect: &[Expect],
        out: &mut W,
        cancel: &Notify,
    ) -> std::io::Result<BatchOutcome> {
        let mut result = BatchOutcome::default();
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let notified = cancel.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let mut cmd = Command::new("sp_executesql");
        cmd.bind_param("@stmt", sql.to_owned());
        let mut open: Option<u64> = None;
        let mut idx = 0usize;
        let mut cancelled = false;
        let mut error: Option<(String, String)> = None;
        // A statement's tag is held until the next item: errors only surface when the
        // response ends, and the failing statement's own DONE must not read as success.
        let mut pending: Option<String> = None;
        {
            let stream = tokio::select! {
                biased;
                _ = notified.as_mut() => { cancelled = true; None }
                s = cmd.exec(&mut self.client) => match s {
                    Ok(s) => Some(s),
                    Err(e) => { error = Some(errors::from_tiberius(&e)); None }
                },
            };
            if let Some(mut stream) = stream {
                loop {
                    let item = tokio::select! {
                        biased;
                        _ = notified.as_mut() => { cancelled = true; break; }
                        item = stream.try_next() => item,
                    };
                    match item {
                        Ok(None) => break,
                        Err(e) => {
                            error = Some(errors::from_tiberius(&e));
                            break;
                        }
                        Ok(Some(CommandItem::Metadata(meta))) => {
                            flush_tag(&mut pending, &mut buf, &mut result);
                            if let Some(rows) = open.take() {
                                pg::command_complete(&mut buf, &Expect::Rows.tag(rows));
                            }
                            pg::row_description(&mut buf, &types::columns(meta.columns()));
                            open = Some(0);
                        }
                        Ok(Some(CommandItem::Row(row))) => {
                            flush_tag(&mut pending, &mut buf, &mut result);
                            pg::data_row(&mut buf, row.cells(), |b, (_, v)| {
                                types::write_text(b, v)
                            });
                            if let Some(n) = open.as_mut() {
                                *n += 1;
                            }
                        }
                        Ok(Some(CommandItem::RowsAffected(n))) => {
                            flush_tag(&mut pending, &mut buf, &mut result);
                            let tag = match open.take() {
                                Some(rows) => Some(Expect::Rows.tag(rows)),
                                None => expect.get(idx).map(|e| e.tag(n)),
                            };
                            if let Some(tag) = tag {
                                pending = Some(tag);
                                idx += 1;
                            }
                            continue;
                        }
                        Ok(Some(_)) => {}
                    }
                    if buf.len() >= FLUSH_AT {
                        result.bytes_out += buf.len() as u64;
                        out.write_all(&buf).await?;
                        buf.clear();
                    }
                }
            }
        }
        if cancelled {
            // The stream is dropped; the attention's acknowledgement drains what is left.
            if let Err(e) = self.client.cancel_query().await {
                debug!(error = %e, "attention was not acknowledged cleanly");
            }
            error = Some((
                "57014".to_owned(),
                "canceling statement due to user request".to_owned(),
            ));
            result.cancelled = true;
        }
        match error {
            Some((code, message)) => {
                build::error_response(&mut buf, Severity::Error, &code, &message);
                result.statements.push(StatementOutcome {
                    tag: None,
                    error: Some((code, message)),
                });
                result.failed = true;
            }
            None => {
                flush_tag(&mut pending, &mut buf, &mut result);
                if let Some(rows) = open.take() {
                    complete(Expect::Rows.tag(rows), &mut buf, &mut result);
                    idx += 1;
                }
                // Statements the server reported no count for (none expected, or NOCOUNT).
                for e in expect.iter().skip(idx) {
                    complete(e.tag(0), &mut buf, &mut result);
                }
                if expect.is_empty() && result.statements.is_empty() {
                    pg::empty_query(&mut buf);
                }
            }
        }
        result.bytes_out += buf.len() as u64;
        out.write_all(&buf).await?;
        Ok(result)
    }

    /// Runs a statement of pgward's own (transaction control), outside sp_executesql so
    /// its effect lasts beyond the call. Returns the error, if any, as (SQLSTATE, message).
    pub async fn control(&mut self, sql: &str) -> Result<(), (String, String)> {
        self.client
            .simple_query(sql)
            .await
            .map_err(|e| errors::from_tiberius(&e))?
            .into_results()
            .await
            .map_err(|e| errors::from_tiberius(&e))?;
        Ok(())
    }

    /// Ends the session.
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

fn flush_tag(pending: &mut Option<String>, buf: &mut BytesMut, result: &mut BatchOutcome) {
    if let Some(tag) = pending.take() {
        complete(tag, buf, result);
    }
}

/// CommandComplete for a statement that succeeded, and its outcome.
fn complete(tag: String, buf: &mut BytesMut, result: &mut BatchOutcome) {
    pg::command_complete(buf, &tag);
    result.statements.push(StatementOutcome {
        tag: Some(tag),
        error: None,
    });
}

fn config_for(opts: &TdsOptions, host: &str, port: u16, token: &AccessToken) -> Config {
    let mut config = Config::new();
    config.host(host);
    config.port(port);
    config.database(&opts.database);
    config.application_name(&opts.application_name);
    config.authentication(AuthMethod::aad_token(&token.0));
    config.handshake_timeout(Some(opts.connect_timeout));
    match &opts.tls {
        TdsTls::VerifyFull { ca_file } => {
            config.encryption(EncryptionLevel::Strict);
            if let Some(ca) = ca_file {
                config.trust_cert_ca(ca.display());
            }
        }
        TdsTls::Require => {
            config.encryption(EncryptionLevel::Strict);
            config.trust_cert();
        }
        TdsTls::Disable => config.encryption(EncryptionLevel::NotSupported),
    }
    config
}
