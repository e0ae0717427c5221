//! Connections from pgward to the databases it protects.
//!
//! `Upstream` is built once per configured `[[upstreams]]` entry. It opens sessions
//! (TCP, optional TLS, startup, sign-in with pgward's own credential, never the
//! client's) and forwards cancel requests. The proxy relays bytes over the returned
//! `UpstreamSession::stream`.

mod config;
mod connect;
mod credential;
mod query;
mod stream;
mod tls;

pub use config::{CredentialConfig, TlsMode, UpstreamConfig, UpstreamKind};
pub use connect::{BackendKey, ConnectError, Upstream, UpstreamSession};
pub use credential::{role_token_sources, token_source, Health, Secret, TokenSource};
pub use query::{quote_ident, quote_literal, Row};
pub use stream::UpstreamStream;
