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
    /// Per policy `upstream_role`, the login its sessions sign in with instead of pgward's own
    /// (the second wall: a session then holds only that role's privileges, with no role to
    /// `SET ROLE` to). The credential's `user` must be the role's name. docs/security.md.
    #[serde(default)]
    pub role_logins: std::collections::BTreeMap<String, CredentialConfig>,
    /// Refuse a session whose policy role has no login in `role_logins` (instead of running it
    /// as pgward's own login, with `SET ROLE` to its upstream_role if it names one).
    #[serde(default)]
    pub require_role_login: bool,
    /// Record each session's caller in `pgward.callers` over pgward's own connection before
    /// the client's first statement, for `pgward.caller_oid()` and friends (docs/azure.md).
    /// A session is refused (08006) when the record cannot be written.
    #[serde(default)]
    pub identity_table: bool,
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
