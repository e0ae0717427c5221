//! The pgward proxy.
//!
//! The life of a connection, one module per stage:
//! `server` accepts (connection limit, shutdown, drain) → `handshake` runs the startup
//! phase (TLS, protocol version, startup parameters) → `session` signs the client in
//! (`auth`: Entra token as the password), routes it and opens the upstream session →
//! `relay` moves whole messages both ways until either side ends, asking `enforce` (the
//! policy) about every statement and feeding `trail` (the audit records). `cancel` maps
//! pgward's cancel keys to upstream ones; `admin` serves /healthz, /readyz and /metrics.

pub mod admin;
pub mod analysis_pool;
pub mod auth;
pub mod caller_identity;
pub mod cancel;
pub mod catalogs;
pub mod client_encoding;
pub mod config;
mod deadline;
pub mod enforce;
pub mod grants;
pub mod handshake;
pub mod limits;
pub mod masking;
pub mod metrics;
pub mod relay;
pub mod server;
pub mod session;
pub mod shared;
mod sides;
pub mod stream;
pub mod tls;
pub mod trail;
mod workers;

pub use config::Config;
pub use server::Server;
