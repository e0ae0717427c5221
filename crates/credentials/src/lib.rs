//! pgward's own credentials: how pgward signs in to the databases (and Azure services)
//! it talks to as itself. Azure identities (managed identity, AKS workload identity,
//! client secret, Azure CLI) through azure_identity, or a static password.
//!
//! ```no_run
//! # async fn f(cfg: pgward_credentials::CredentialConfig) -> Result<(), String> {
//! use pgward_credentials::{TokenSource, POSTGRES_SCOPE};
//! let source = TokenSource::new("main", &cfg, POSTGRES_SCOPE)?;
//! source.start(); // background refresh
//! let password = source.current().await.map_err(|e| e.to_string())?;
//! # let _ = password; Ok(()) }
//! ```

mod config;
mod secret;
mod source;
mod transport;

pub use config::{CredentialConfig, PUBLIC_AUTHORITY_HOST};
pub use secret::Secret;
pub use source::{
    CredentialError, Health, TokenSource, AZURE_SQL_SCOPE, DEFAULT_FIRST_WAIT, MONITOR_SCOPE,
    POSTGRES_SCOPE,
};
