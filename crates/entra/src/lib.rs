//! Microsoft Entra ID access-token validation for pgward.
//!
//! Clients sign in with user name = their principal name and password = an Entra access
//! token. The proxy reads the cleartext password (over TLS only) and calls
//! [`Validator::validate`], which verifies the token (compact JWS, RS256 against the
//! tenant's published keys, exp/nbf, audience, issuer, tenant) and that the user name is
//! bound to the token's identity. Refusals carry an exact [`AuthError`] for the log; the
//! client only ever gets a generic 28000.
//!
//! This crate only validates. The local stand-in for Entra that `pgward demo`, `pgward
//! token` and the tests use (OIDC discovery, JWKS, minting, forged attack tokens) is
//! `pgward_devkit::entra_issuer`, outside any production build. See docs/entra.md.
//!
//! ```no_run
//! # async fn run(cfg: pgward_entra::EntraConfig, token: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::{Duration, SystemTime};
//! use pgward_entra::{default_http_client, Validator};
//!
//! let validator = Validator::start(cfg, default_http_client()?).await?;
//! validator.wait_ready(Duration::from_secs(10)).await; // /readyz: validator.is_ready()
//! match validator.validate(token, "alice@contoso.com").await {
//!     Ok(identity) => {
//!         let grace = validator.config().expiry_grace();
//!         let _ends_in = identity.session_remaining(SystemTime::now(), grace);
//!     }
//!     // Log `e` (exact reason, never the token); tell the client only 28000.
//!     Err(e) => tracing::warn!(reason = %e, label = e.label(), "authentication failed"),
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod config;
mod error;
mod graph;
mod http;
mod identity;
mod validator;

pub use config::{
    is_guid, ConfigError, EntraConfig, GraphCredential, GroupsOverage, DEFAULT_AUDIENCE,
    DEFAULT_AUTHORITY, DEFAULT_GRAPH_ENDPOINT,
};
pub use error::{AuthError, Shown};
pub use graph::{BoxFuture, GraphTokenError, GraphTokenSource, StaticGraphToken};
pub use http::default_http_client;
pub use identity::{Identity, IdentityKind};
pub use validator::{StartError, Validator, MAX_TOKEN_LEN};
