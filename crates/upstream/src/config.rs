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

/// How pgward signs in upstream. Only `password` exists so far; the Azure identity
/// types (managed-identity, workload-identity, client-secret, azure-cli) follow.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CredentialConfig {
    Password {
        /// The upstream login role.
        user: String,
        /// Inline password (discouraged outside development).
        password: Option<String>,
        /// File holding the password (trailing newline ignored), e.g. a mounted secret.
        password_file: Option<PathBuf>,
        /// Name of an environment variable holding the password.
        password_env: Option<String>,
    },
}

impl CredentialConfig {
    pub fn user(&self) -> &str {
        match self {
            Self::Password { user, .. } => user,
        }
    }
}
