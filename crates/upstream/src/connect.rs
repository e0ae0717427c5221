//! Opening an upstream session: TCP, TLS per `tls`, StartupMessage, sign-in with
//! pgward's credential (SCRAM-SHA-256, MD5 or cleartext, as the server asks), and the
//! server's ParameterStatus / BackendKeyData up to the first ReadyForQuery.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pgward_wire::backend::{self, AuthRequest, ErrorFields};
use pgward_wire::tag::{backend as be, ssl};
use pgward_wire::{build, TxStatus, WireError};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::UpstreamConfig;
use crate::credential::{role_token_sources, token_source, Secret, TokenSource};
use crate::stream::UpstreamStream;
use crate::tls;

/// Startup-phase messages from a server are small; anything bigger is a broken peer.
const MAX_STARTUP_REPLY: usize = 1 << 20;

/// An upstream server's cancel key. Never shown to clients.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendKey {
    pub pid: u32,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackendKey {{ pid: {}, secret: [redacted] }}", self.pid)
    }
}

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("cannot reach upstream {upstream} at {addr}: {source}")]
    Unreachable {
        upstream: String,
        addr: String,
        source: io::Error,
    },
    #[error("timed out after {secs}s connecting to upstream {upstream}")]
    Timeout { upstream: String, secs: u64 },
    #[error("upstream {upstream} does not accept TLS, and tls = {mode:?} requires it")]
    TlsRefused { upstream: String, mode: String },
    #[error("TLS with upstream {upstream} failed: {detail}")]
    Tls { upstream: String, detail: String },
    #[error("upstream {upstream} rejected pgward's sign-in as {user}: {message}")]
    AuthRejected {
        upstream: String,
        user: String,
        message: String,
    },
    #[error(
        "upstream {upstream} asked for an authentication method pgward does not support ({method})"
    )]
    UnsupportedAuth { upstream: String, method: String },
    #[error("upstream {upstream} refused the session: {} {}", fields.code, fields.message)]
    Server {
        upstream: String,
        fields: ErrorFields,
    },
    #[error("upstream {upstream} broke the protocol during startup: {detail}")]
    Protocol { upstream: String, detail: String },
    /// pgward's own credential (e.g. its managed identity's token) is unavailable.
    #[error("pgward could not obtain its {kind} credential for upstream {upstream}: {detail}")]
    Credential {
        upstream: String,
        kind: String,
        detail: String,
    },
}

impl ConnectError {
    /// SQLSTATE for the client. Server-side refusals keep the server's code when it is
    /// about the client's request (e.g. 3D000, 53300); anything about pgward's own
    /// connection or credential is 08006/08001.
    pub fn sqlstate(&self) -> &str {
        match self {
            Self::Server { fields, .. } if !fields.code.starts_with("28") => &fields.code,
            Self::AuthRejected { .. } | Self::UnsupportedAuth { .. } | Self::Credential { .. } => {
                "08001"
            }
            _ => "08006",
        }
    }

    /// What the client is told: enough to act on, nothing about pgward's credential.
    pub fn client_message(&self) -> String {
        match self {
            Self::Server { fields, .. } if !fields.code.starts_with("28") => fields.message.clone(),
            Self::AuthRejected { upstream, .. } | Self::UnsupportedAuth { upstream, .. } => {
                format!("pgward could not sign in to upstream \"{upstream}\"")
            }
            Self::Credential { upstream, .. } => {
                format!("pgward could not obtain its credential for upstream \"{upstream}\"")
            }
            Self::Timeout { upstream, .. }
            | Self::Unreachable { upstream, .. }
            | Self::TlsRefused { upstream, .. }
            | Self::Tls { upstream, .. }
            | Self::Protocol { upstream, .. }
            | Self::Server { upstream, .. } => {
                format!("pgward could not connect to upstream \"{upstream}\"")
            }
        }
    }
}

/// A signed-in upstream session, ready for queries.
pub struct UpstreamSession {
    pub stream: UpstreamStream,
    /// ParameterStatus values the server reported during startup, in order.
    pub parameters: Vec<(String, String)>,
    pub key: Option<BackendKey>,
    pub tx_status: TxStatus,
}

/// One configured upstream server.
pub struct Upstream {
    cfg: UpstreamConfig,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    credential: TokenSource,
    /// `role_logins`: the credential of each policy upstream_role that signs in as itself.
    role_credentials: HashMap<String, TokenSource>,
}

impl Upstream {
    pub fn new(cfg: UpstreamConfig) -> Result<Self, String> {
        // Builds the credential only; fetching starts with `start_credential` (or the
        // first connect), so `pgward check` can construct upstreams offline.
        let credential = token_source(&cfg)?;
        let role_credentials = role_token_sources(&cfg)?;
        let tls =
            match tls::client_config(&cfg).map_err(|e| format!("upstream {}: {e}", cfg.name))? {
                Some(config) => Some((
                    TlsConnector::from(config as Arc<ClientConfig>),
                    tls::server_name(&cfg.host)?,
                )),
                None => None,
            };
        Ok(Self {
            cfg,
            tls,
            credential,
            role_credentials,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// pgward's credential for this upstream (health and counters for /readyz, metrics).
    pub fn credential(&self) -> &TokenSource {
        &self.credential
    }

    /// Starts fetching and refreshing the credential's token in the background (needs
    /// a Tokio runtime; a no-op for a password).
    pub fn start_credential(&self) {
        self.credential.start();
        for c in self.role_credentials.values() {
            c.start();
        }
    }

    /// Whether sessions of `role` sign in as that role (`role_logins`).
    pub fn has_role_login(&self, role: &str) -> bool {
        self.role_credentials.contains_key(role)
    }

    /// The role logins' credentials, by role (health and metrics).
    pub fn role_credentials(&self) -> impl Iterator<Item = (&str, &TokenSource)> {
        self.role_credentials.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.connect_timeout_secs)
    }

    /// Opens and signs in a session to `database`, passing `params` (already vetted by
    /// the proxy) in the StartupMessage.
    pub async fn connect(
        &self,
        database: &str,
        params: &[(String, String)],
    ) -> Result<UpstreamSession, ConnectError> {
        self.connect_as(database, params, None).await
    }

    /// Like [`Upstream::connect`], signed in as `role`'s own login (`role_logins`) when
    /// given; an unknown role is an error, never a fallback to pgward's own login.
    pub async fn connect_as(
        &self,
        database: &str,
        params: &[(String, String)],
        role: Option<&str>,
    ) -> Result<UpstreamSession, ConnectError> {
        let credential = match role {
            None => &self.credential,
            Some(r) => self
                .role_credentials
                .get(r)
                .ok_or_else(|| ConnectError::Credential {
                    upstream: self.cfg.name.clone(),
                    kind: "role login".to_owned(),
                    detail: format!("no role_logins entry for {r:?}"),
                })?,
        };
        tokio::time::timeout(
            self.timeout(),
            self.connect_inner(database, params, credential),
        )
        .await
        .map_err(|_| self.timeout_err())?
    }

    async fn open_stream(&self) -> Result<UpstreamStream, ConnectError> {
        let addr = format!("{}:{}", self.cfg.host, self.cfg.port);
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| ConnectError::Unreachable {
                upstream: self.cfg.name.clone(),
                addr: addr.clone(),
                source,
            })?;
        // Small request/response messages: Nagle would add 40 ms stalls.
        let _ = tcp.set_nodelay(true);
        let Some((connector, server_name)) = &self.tls else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        let mut tcp = tcp;
        let mut req = BytesMut::new();
        build::ssl_request(&mut req);
        tcp.write_all(&req).await.map_err(|e| self.tls_err(e))?;
        let answer = tcp.read_u8().await.map_err(|e| self.tls_err(e))?;
        if answer != ssl::ACCEPTED {
            return Err(ConnectError::TlsRefused {
                upstream: self.cfg.name.clone(),
                mode: format!("{:?}", self.cfg.tls),
            });
        }
        let tls = connector
            .connect(server_name.clone(), tcp)
            .await
            .map_err(|e| self.tls_err(e))?;
        Ok(UpstreamStream::Tls(Box::new(tls)))
    }

    pub(crate) fn timeout_err(&self) -> ConnectError {
        ConnectError::Timeout {
            upstream: self.cfg.name.clone(),
            secs: self.cfg.connect_timeout_secs,
        }
    }

    fn tls_err(&self, e: impl std::fmt::Display) -> ConnectError {
        ConnectError::Tls {
            upstream: self.cfg.name.clone(),
            detail: e.to_string(),
        }
    }

    pub(crate) fn protocol_err(&self, detail: impl std::fmt::Display) -> ConnectError {
        ConnectError::Protocol {
            upstream: self.cfg.name.clone(),
            detail: detail.to_string(),
        }
    }

    async fn connect_inner(
        &self,
        database: &str,
        params: &[(String, String)],
        credential: &TokenSource,
    ) -> Result<UpstreamSession, ConnectError> {
        // The cached token (never a wait on the identity endpoint while one is valid);
        // without one, fail at once with 08001 rather than connect for nothing.
        let password = credential
            .current()
            .await
            .map_err(|e| ConnectError::Credential {
                upstream: self.cfg.name.clone(),
                kind: credential.kind().to_owned(),
                detail: e.to_string(),
            })?;
        let mut stream = self.open_stream().await?;
        let mut out = BytesMut::new();
        let user = credential.user();
        let mut startup: Vec<(&str, &str)> = vec![("user", user), ("database", database)];
        startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        build::startup_message(&mut out, startup);
        self.send(&mut stream, &mut out).await?;

        let mut buf = BytesMut::with_capacity(4096);
        let mut scram: Option<ScramSha256> = None;
        let mut parameters = Vec::new();
        let mut key = None;
        loop {
            let (tag, body) = self.read_message(&mut stream, &mut buf).await?;
            match tag {
                be::AUTHENTICATION => {
                    let req = backend::auth_request(&body).map_err(|e| self.protocol_err(e))?;
                    self.answer_auth(req, user, &password, &mut scram, &mut out)?;
                    if !out.is_empty() {
                        self.send(&mut stream, &mut out).await?;
                    }
                }
                be::PARAMETER_STATUS => {
                    let (k, v) =
                        backend::parameter_status(&body).map_err(|e| self.protocol_err(e))?;
                    parameters.push((k.to_owned(), v.to_owned()));
                }
                be::BACKEND_KEY_DATA => {
                    let (pid, secret) =
                        backend::backend_key_data(&body).map_err(|e| self.protocol_err(e))?;
                    key = Some(BackendKey { pid, secret });
                }
                be::NOTICE_RESPONSE | be::NEGOTIATE_PROTOCOL_VERSION => {}
                be::ERROR_RESPONSE => {
                    let fields = backend::error_fields(&body);
                    if fields.code.starts_with("28") {
                        return Err(self.rejected(user, fields.message));
                    }
                    return Err(ConnectError::Server {
                        upstream: self.cfg.name.clone(),
                        fields,
                    });
                }
                be::READY_FOR_QUERY => {
                    let tx_status =
                        backend::ready_for_query(&body).map_err(|e| self.protocol_err(e))?;
                    if !buf.is_empty() {
                        return Err(self.protocol_err("data after ReadyForQuery"));
                    }
                    return Ok(UpstreamSession {
                        stream,
                        parameters,
                        key,
                        tx_status,
                    });
                }
                other => {
                    return Err(self.protocol_err(format!(
                        "unexpected message {:?} during startup",
                        other as char
                    )))
                }
            }
        }
    }

    fn answer_auth(
        &self,
        req: AuthRequest<'_>,
        user: &str,
        password: &Secret,
        scram: &mut Option<ScramSha256>,
        out: &mut BytesMut,
    ) -> Result<(), ConnectError> {
        let password = password.expose().as_bytes();
        match req {
            AuthRequest::Ok => {}
            AuthRequest::Cleartext => build::password_message(out, password),
            AuthRequest::Md5 { salt } => {
                let hash = md5_hash(user.as_bytes(), password, salt);
                build::password_message(out, hash.as_bytes());
            }
            AuthRequest::Sasl { mechanisms } => {
                if !mechanisms.contains(&SCRAM_SHA_256) {
                    return Err(ConnectError::UnsupportedAuth {
                        upstream: self.cfg.name.clone(),
                        method: mechanisms.join(", "),
                    });
                }
                // Channel binding stays off ('n'): pgward picks plain SCRAM-SHA-256 even when
                // -PLUS is offered, which servers accept; TLS already authenticates the server
                // in verify-full mode.
                let s = ScramSha256::new(password, ChannelBinding::unsupported());
                build::sasl_initial_response(out, SCRAM_SHA_256, s.message());
                *scram = Some(s);
            }
            AuthRequest::SaslContinue(data) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| self.protocol_err("SASL continue before SASL start"))?;
                s.update(data).map_err(|e| self.auth_err(user, e))?;
                build::sasl_response(out, s.message());
            }
            AuthRequest::SaslFinal(data) => {
                let mut s = scram
                    .take()
                    .ok_or_else(|| self.protocol_err("SASL final before SASL start"))?;
                // Verifies the server signature: a server that doesn't know the password
                // can't impersonate the upstream.
                s.finish(data).map_err(|e| self.auth_err(user, e))?;
            }
            AuthRequest::Other(code) => {
                return Err(ConnectError::UnsupportedAuth {
                    upstream: self.cfg.name.clone(),
                    method: format!("authentication request {code}"),
                })
            }
        }
        Ok(())
    }

    fn auth_err(&self, user: &str, e: impl std::fmt::Display) -> ConnectError {
        self.rejected(user, format!("SCRAM exchange failed: {e}"))
    }

    fn rejected(&self, user: &str, message: String) -> ConnectError {
        ConnectError::AuthRejected {
            upstream: self.cfg.name.clone(),
            user: user.to_owned(),
            message,
        }
    }

    async fn send(
        &self,
        stream: &mut UpstreamStream,
        out: &mut BytesMut,
    ) -> Result<(), ConnectError> {
        stream
            .write_all(out)
            .await
            .map_err(|e| self.protocol_err(format!("write failed: {e}")))?;
        stream
            .flush()
            .await
            .map_err(|e| self.protocol_err(format!("write failed: {e}")))?;
        out.clear();
        Ok(())
    }

    async fn read_message(
        &self,
        stream: &mut UpstreamStream,
        buf: &mut BytesMut,
    ) -> Result<(u8, Bytes), ConnectError> {
        read_backend_message(stream, buf, MAX_STARTUP_REPLY)
            .await
            .map_err(|e| self.protocol_err(e))
    }

    /// Forwards a client's cancel to the upstream session holding `key` (over TLS when
    /// the upstream uses TLS). Like PostgreSQL, success is silent.
    pub async fn cancel(&self, key: &BackendKey) -> Result<(), ConnectError> {
        tokio::time::timeout(self.timeout(), async {
            let mut stream = self.open_stream().await?;
            let mut out = BytesMut::new();
            build::cancel_request(&mut out, key.pid, &key.secret);
            self.send(&mut stream, &mut out).await?;
            // The server closes once it has read the request; wait for that so the
            // cancel is delivered before we report success.
            let mut sink = [0u8; 64];
            while stream.read(&mut sink).await.unwrap_or(0) > 0 {}
            Ok(())
        })
        .await
        .map_err(|_| self.timeout_err())?
    }
}

/// Reads one whole backend message, bounded by `max`.
pub(crate) async fn read_backend_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(u8, Bytes), String> {
    loop {
        if buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if len < 4 || len as usize > max {
                return Err(WireError::BadLength {
                    what: "backend message",
                    len: len.into(),
                }
                .to_string());
            }
            let total = len as usize + 1;
            if buf.len() >= total {
                let msg = buf.split_to(total).freeze();
                return Ok((msg[0], msg.slice(5..)));
            }
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err("connection closed by upstream".into());
        }
    }
}
