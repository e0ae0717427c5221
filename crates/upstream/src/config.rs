//! The `[[upstreams]]` configuration section.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    #[serde(default)]
    pub kind: UpstreamKind,
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM bundle of CAs trusted for `verify-full`; without it, the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    pub credential: CredentialConfig,
}

fn default_port() -> u16 {
    5432
}

fn default_connect_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamKind {
    #[default]
    Postgres,
    /// Azure SQL Database over TDS (crates/tds, docs/azure-sql.md).
    AzureSql,
}

/// Like libpq's sslmode: `require` encrypts without checking who answers;
/// `verify-full` checks the chain and the host name. Default: verify-full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    Require,
    #[default]
    VerifyFull,
}

/// How pgward signs in upstream (crates/credentials): an Azure identity or a password.
pub use pgward_credentials::CredentialConfig;

impl UpstreamKind {
    /// The Entra scope of the access token pgward presents to this kind of server.
    pub fn token_scope(&self) -> &'static str {
        match self {
            Self::Postgres => pgward_credentials::POSTGRES_SCOPE,
            Self::AzureSql => pgward_credentials::AZURE_SQL_SCOPE,
        }
    }
}
