//! The client's startup phase, up to a vetted StartupMessage.
//!
//! Order of events, as PostgreSQL clients expect them:
//! - a TLS ClientHello as the very first byte (PostgreSQL 17 `sslnegotiation=direct`,
//!   ALPN "postgresql" required) → TLS;
//! - SSLRequest → 'S' and TLS (or 'N' when no certificate is configured); bytes
//!   pipelined after the SSLRequest, before TLS, are refused (CVE-2021-23222 class);
//! - GSSENCRequest → 'N';
//! - CancelRequest → handed back to the caller;
//! - StartupMessage → plaintext refused unless allowed, protocol 3.x negotiated down
//!   to 3.0, parameters checked against the allow-list.

use std::collections::HashSet;
use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use pgward_wire::build::{self, Severity};
use pgward_wire::startup::{self, StartupMessage, StartupPacket, TLS_HANDSHAKE_RECORD};
use pgward_wire::WireError;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use pgward_policy::encoding::{client_encoding, EncodingRefusal};

use crate::stream::ClientStream;
use crate::tls::{TlsSettings, ALPN_POSTGRESQL};

/// Parameters any client may send; they only change how results are formatted.
const HARMLESS_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "intervalstyle",
    "bytea_output",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

/// Never forwarded, whatever the configuration says: pgward sets `pgward.*` itself
/// (the caller's identity) and replication connections speak another protocol.
pub fn always_refused_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("pgward.") || name == "replication" || name == "user" || name == "database"
}

pub struct HandshakeConfig {
    pub tls: Arc<TlsSettings>,
    pub allow_plaintext: bool,
    /// Lower-cased names of extra parameters the configuration allows.
    pub allowed_parameters: HashSet<String>,
}

impl HandshakeConfig {
    pub fn new(tls: Arc<TlsSettings>, allow_plaintext: bool, allowed: &[String]) -> Self {
        Self {
            tls,
            allow_plaintext,
            allowed_parameters: allowed.iter().map(|p| p.to_ascii_lowercase()).collect(),
        }
    }
}

/// A client that completed the startup phase.
pub struct ClientStartup {
    pub stream: ClientStream,
    /// Bytes the client sent after the StartupMessage (kept for the next phase).
    pub buf: BytesMut,
    pub user: String,
    pub database: String,
    pub application_name: Option<String>,
    /// Vetted parameters to pass upstream (names as the client sent them).
    pub forwarded: Vec<(String, String)>,
    pub direct_tls: bool,
}

pub enum Handshake {
    Session(Box<ClientStartup>),
    Cancel { pid: u32, secret: Vec<u8> },
}

#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("client went away during startup: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation during startup: {0}")]
    Protocol(#[from] WireError),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("refused: {message}")]
    Refused { code: &'static str, message: String },
}

impl HandshakeError {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io(_) => "client_gone",
            Self::Protocol(_) => "protocol",
            Self::Tls(_) => "tls",
            Self::Refused { .. } => "refused",
        }
    }
}

fn refused(code: &'static str, message: impl Into<String>) -> HandshakeError {
    HandshakeError::Refused {
        code,
        message: message.into(),
    }
}

/// Runs the startup phase. On a refusal or protocol error the client has already been
/// sent a FATAL ErrorResponse (when the stream was still usable).
pub async fn run(tcp: TcpStream, cfg: &HandshakeConfig) -> Result<Handshake, HandshakeError> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    if n == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    let mut direct_tls = false;
    let stream = if first[0] == TLS_HANDSHAKE_RECORD {
        direct_tls = true;
        accept_tls(tcp, cfg, true).await?
    } else {
        ClientStream::Plain(tcp)
    };
    let mut buf = BytesMut::with_capacity(1024);
    match startup_loop(stream, &mut buf, cfg).await {
        Ok((Phase::Cancel { pid, secret }, _)) => Ok(Handshake::Cancel { pid, secret }),
        Ok((Phase::Startup(msg), stream)) => finish(stream, buf, msg, cfg, direct_tls).await,
        Err((e, stream)) => {
            if let Some(mut s) = stream {
                report(&mut s, &e).await;
            }
            Err(e)
        }
    }
}

enum Phase {
    Cancel { pid: u32, secret: Vec<u8> },
    Startup(StartupMessage),
}

/// The error, and the stream when it is still usable for an ErrorResponse.
type LoopError = (HandshakeError, Option<ClientStream>);

/// Reads startup packets until a StartupMessage or CancelRequest, upgrading to TLS on
/// the way. Owns the stream because TLS replaces it.
async fn startup_loop(
    mut stream: ClientStream,
    buf: &mut BytesMut,
    cfg: &HandshakeConfig,
) -> Result<(Phase, ClientStream), LoopError> {
    let mut gss_refused = false;
    loop {
        let packet = match read_packet(&mut stream, buf).await {
            Ok(p) => p,
            Err(e) => return Err((e, Some(stream))),
        };
        match packet {
            StartupPacket::SslRequest => {
                if stream.is_tls() {
                    let e = WireError::malformed("SSLRequest", "sent inside TLS");
                    return Err((e.into(), Some(stream)));
                }
                if !buf.is_empty() {
                    let e =
                        WireError::malformed("SSLRequest", "data sent before the TLS handshake");
                    return Err((e.into(), Some(stream)));
                }
                let answer: &[u8] = if cfg.tls.current().is_some() {
                    b"S"
                } else {
                    b"N"
                };
                if let Err(e) = stream.write_all(answer).await {
                    return Err((e.into(), None));
                }
                if answer == b"N" {
                    continue;
                }
                let ClientStream::Plain(tcp) = stream else {
                    unreachable!("checked is_tls above");
                };
                stream = accept_tls(tcp, cfg, false).await.map_err(|e| (e, None))?;
            }
            StartupPacket::GssEncRequest => {
                if gss_refused || stream.is_tls() {
                    let e = WireError::malformed("GSSENCRequest", "unexpected");
                    return Err((e.into(), Some(stream)));
                }
                gss_refused = true;
                if let Err(e) = stream.write_all(b"N").await {
                    return Err((e.into(), None));
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                return Ok((Phase::Cancel { pid, secret }, stream))
            }
            StartupPacket::Startup(msg) => return Ok((Phase::Startup(msg), stream)),
        }
    }
}

async fn accept_tls(
    tcp: TcpStream,
    cfg: &HandshakeConfig,
    direct: bool,
) -> Result<ClientStream, HandshakeError> {
    let Some(config) = cfg.tls.current() else {
        // A direct-TLS client when no certificate is configured: nothing sensible to say.
        return Err(HandshakeError::Tls("TLS is not configured".into()));
    };
    let tls = TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(|e| HandshakeError::Tls(e.to_string()))?;
    if direct && tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        // PostgreSQL requires ALPN for direct TLS so a TLS connection meant for another
        // protocol can't be replayed against the database.
        return Err(HandshakeError::Tls(
            "direct TLS without ALPN \"postgresql\"".into(),
        ));
    }
    Ok(ClientStream::Tls(Box::new(tls)))
}

async fn read_packet(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<StartupPacket, HandshakeError> {
    loop {
        if let Some(p) = startup::decode(buf)? {
            return Ok(p);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
    }
}

async fn finish(
    mut stream: ClientStream,
    buf: BytesMut,
    msg: StartupMessage,
    cfg: &HandshakeConfig,
    direct_tls: bool,
) -> Result<Handshake, HandshakeError> {
    match vet(&msg, stream.is_tls(), cfg) {
        Ok((user, database, forwarded)) => {
            if msg.minor > 0 || !msg.protocol_options.is_empty() {
                let mut out = BytesMut::new();
                build::negotiate_protocol_version(&mut out, 0, &msg.protocol_options);
                stream.write_all(&out).await?;
            }
            let application_name = msg.param("application_name").map(str::to_owned);
            Ok(Handshake::Session(Box::new(ClientStartup {
                stream,
                buf,
                user,
                database,
                application_name,
                forwarded,
                direct_tls,
            })))
        }
        Err(e) => {
            report(&mut stream, &e).await;
            Err(e)
        }
    }
}

type Vetted = (String, String, Vec<(String, String)>);

/// Checks the StartupMessage: TLS, user, and every parameter against the allow-list.
fn vet(msg: &StartupMessage, tls: bool, cfg: &HandshakeConfig) -> Result<Vetted, HandshakeError> {
    if !tls && !cfg.allow_plaintext {
        return Err(refused(
            "28000",
            "pgward requires an encrypted connection (use sslmode=require or stronger)",
        ));
    }
    let user = msg
        .param("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| refused("28000", "no user name specified in the startup packet"))?
        .to_owned();
    let database = msg
        .param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();
    let mut forwarded = Vec::new();
    for (name, value) in &msg.params {
        let lower = name.to_ascii_lowercase();
        if lower == "user" || lower == "database" {
            continue;
        }
        if lower == "replication" {
            if matches!(
                value.to_ascii_lowercase().as_str(),
                "false" | "off" | "0" | "no"
            ) {
                continue;
            }
            return Err(refused(
                "42501",
                "replication connections are not allowed through pgward",
            ));
        }
        if always_refused_parameter(&lower) {
            return Err(refused(
                "42501",
                format!("startup parameter \"{name}\" is not allowed by pgward"),
            ));
        }
        if lower == "client_encoding" {
            match client_encoding(value) {
                Ok(_) => {}
                Err(why @ EncodingRefusal::Unknown) => {
                    return Err(refused(
                        "22023",
                        format!("client_encoding \"{value}\": {why}"),
                    ));
                }
                // Names the encoding (PostgreSQL's name for the client's spelling).
                Err(why) => return Err(refused("22023", why.to_string())),
            }
        }
        if !HARMLESS_PARAMETERS.contains(&lower.as_str())
            && !cfg.allowed_parameters.contains(&lower)
        {
            return Err(refused(
                "42501",
                format!(
                    "startup parameter \"{name}\" is not allowed by pgward (it could change how statements are read or who runs them)"
                ),
            ));
        }
        forwarded.push((name.clone(), value.clone()));
    }
    Ok((user, database, forwarded))
}

/// Sends a FATAL ErrorResponse for `e` when there is something useful to say.
async fn report(stream: &mut ClientStream, e: &HandshakeError) {
    let (code, message) = match e {
        HandshakeError::Refused { code, message } => (*code, message.clone()),
        HandshakeError::Protocol(w) => ("08P01", format!("invalid startup packet: {w}")),
        HandshakeError::Io(_) | HandshakeError::Tls(_) => return,
    };
    let mut out = BytesMut::new();
    build::error_response(&mut out, Severity::Fatal, code, &message);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(allowed: &[&str]) -> HandshakeConfig {
        HandshakeConfig::new(
            Arc::new(TlsSettings::new(None, None).unwrap()),
            true,
            &allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    fn msg(params: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            minor: 0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            protocol_options: vec![],
        }
    }

    fn refused_code(r: Result<Vetted, HandshakeError>) -> &'static str {
        match r {
            Err(HandshakeError::Refused { code, .. }) => code,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn harmless_parameters_pass_and_database_defaults_to_user() {
        let (user, db, fwd) = vet(
            &msg(&[
                ("user", "alice"),
                ("application_name", "psql"),
                ("client_encoding", "UTF8"),
            ]),
            false,
            &cfg(&[]),
        )
        .unwrap();
        assert_eq!((user.as_str(), db.as_str()), ("alice", "alice"));
        assert_eq!(fwd.len(), 2);
    }

    #[test]
    fn parameters_that_change_how_sql_is_read_are_refused_in_any_case() {
        for p in [
            "options",
            "search_path",
            "SEARCH_PATH",
            "standard_conforming_strings",
            "backslash_quote",
            "role",
            "session_authorization",
            "pgward.oid",
            "PGWARD.upn",
            "something_unknown",
        ] {
            let code = refused_code(vet(&msg(&[("user", "a"), (p, "x")]), false, &cfg(&[])));
            assert_eq!(code, "42501", "{p}");
        }
        assert_eq!(
            refused_code(vet(
                &msg(&[("user", "a"), ("replication", "database")]),
                false,
                &cfg(&[])
            )),
            "42501"
        );
        assert_eq!(
            refused_code(vet(
                &msg(&[("user", "a"), ("client_encoding", "SJIS")]),
                false,
                &cfg(&[])
            )),
            "22023"
        );
        for bad in ["BIG5", "gbk", "Shift-JIS", "EUC_TW", "nonsense"] {
            assert_eq!(
                refused_code(vet(
                    &msg(&[("user", "a"), ("client_encoding", bad)]),
                    false,
                    &cfg(&[])
                )),
                "22023",
                "{bad}"
            );
        }
        for ok in [
            "UTF8",
            "'utf-8'",
            "Unicode",
            "SQL_ASCII",
            "LATIN1",
            "latin-1",
            "EUC_JP",
            "WIN1252",
        ] {
            assert!(
                vet(
                    &msg(&[("user", "a"), ("client_encoding", ok)]),
                    false,
                    &cfg(&[])
                )
                .is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn config_can_allow_some_but_never_pgward_settings() {
        let c = cfg(&["search_path", "pgward.oid"]);
        assert!(vet(&msg(&[("user", "a"), ("search_path", "x")]), false, &c).is_ok());
        assert_eq!(
            refused_code(vet(&msg(&[("user", "a"), ("pgward.oid", "x")]), false, &c)),
            "42501"
        );
    }

    #[test]
    fn plaintext_refused_unless_allowed() {
        let mut c = cfg(&[]);
        c.allow_plaintext = false;
        assert_eq!(
            refused_code(vet(&msg(&[("user", "a")]), false, &c)),
            "28000"
        );
        assert!(vet(&msg(&[("user", "a")]), true, &c).is_ok());
    }
}
