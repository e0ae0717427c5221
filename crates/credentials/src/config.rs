//! `[upstreams.credential]`: how pgward signs in upstream as itself.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use azure_core::http::Url;
use serde::Deserialize;

use crate::secret::Secret;

/// The Entra token endpoint base in the public cloud.
pub const PUBLIC_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// How pgward signs in upstream. Every type names the upstream login role in `user`;
/// the Azure types present a Microsoft Entra access token as that role's password.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CredentialConfig {
    /// The managed identity of the VM, App Service, Container App or Function pgward
    /// runs on. System-assigned unless one of client_id / object_id / resource_id
    /// names a user-assigned identity.
    ManagedIdentity {
        user: String,
        client_id: Option<String>,
        object_id: Option<String>,
        resource_id: Option<String>,
        /// The identity endpoint's token URL, replacing IMDS
        /// (http://169.254.169.254/metadata/identity/oauth2/token) or the platform's
        /// IDENTITY_ENDPOINT. Normally unset: the platform's own endpoint is used.
        endpoint: Option<String>,
        /// X-IDENTITY-HEADER value for an App Service / Container Apps style endpoint.
        header: Option<Secret>,
        /// Name of an environment variable holding that header value.
        header_env: Option<String>,
    },
    /// AKS workload identity: a federated service-account token exchanged at Entra.
    /// Each field defaults to the variable the workload-identity webhook injects.
    WorkloadIdentity {
        user: String,
        /// Default: $AZURE_TENANT_ID.
        tenant_id: Option<String>,
        /// Default: $AZURE_CLIENT_ID.
        client_id: Option<String>,
        /// Default: $AZURE_FEDERATED_TOKEN_FILE.
        token_file: Option<PathBuf>,
        /// Entra token endpoint base. Default: $AZURE_AUTHORITY_HOST, else the public cloud.
        authority_host: Option<String>,
    },
    /// An app registration's client secret.
    ClientSecret {
        user: String,
        tenant_id: String,
        client_id: String,
        secret: Option<Secret>,
        secret_file: Option<PathBuf>,
        secret_env: Option<String>,
        /// Entra token endpoint base. Default: the public cloud.
        authority_host: Option<String>,
    },
    /// The signed-in Azure CLI (`az account get-access-token`): a developer's laptop.
    AzureCli {
        user: String,
        tenant_id: Option<String>,
        subscription: Option<String>,
    },
    /// A fixed password (local development, or servers without Entra sign-in).
    Password {
        user: String,
        /// Inline password (discouraged outside development).
        password: Option<Secret>,
        /// File holding the password (trailing newline ignored), e.g. a mounted secret.
        password_file: Option<PathBuf>,
        /// Name of an environment variable holding the password.
        password_env: Option<String>,
    },
}

impl CredentialConfig {
    /// A credential for a service other than a database (Azure Monitor, Microsoft Graph),
    /// from a table with the same keys as `[upstreams.credential]` but no `user` (there is
    /// no login role). `key` names the table in errors, which never quote a value.
    pub fn for_service(
        table: &serde_json::Map<String, serde_json::Value>,
        key: &str,
    ) -> Result<Self, String> {
        let mut table = table.clone();
        table
            .entry("user")
            .or_insert_with(|| serde_json::Value::String(key.to_owned()));
        serde_json::from_value(serde_json::Value::Object(table))
            .map_err(|e| format!("{key}: {}", without_values(&e.to_string())))
    }

    /// Makes the relative file paths of a service-credential table (see
    /// [`CredentialConfig::for_service`]) relative to `base`, the configuration's directory.
    pub fn resolve_table_paths(
        table: &mut serde_json::Map<String, serde_json::Value>,
        base: &Path,
    ) {
        for key in ["password_file", "secret_file", "token_file"] {
            if let Some(serde_json::Value::String(p)) = table.get_mut(key) {
                if Path::new(p.as_str()).is_relative() {
                    *p = base.join(p.as_str()).to_string_lossy().into_owned();
                }
            }
        }
    }

    /// The upstream login role.
    pub fn user(&self) -> &str {
        match self {
            Self::ManagedIdentity { user, .. }
            | Self::WorkloadIdentity { user, .. }
            | Self::ClientSecret { user, .. }
            | Self::AzureCli { user, .. }
            | Self::Password { user, .. } => user,
        }
    }

    /// The `type` as written in the configuration.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::ManagedIdentity { .. } => "managed-identity",
            Self::WorkloadIdentity { .. } => "workload-identity",
            Self::ClientSecret { .. } => "client-secret",
            Self::AzureCli { .. } => "azure-cli",
            Self::Password { .. } => "password",
        }
    }

    /// Whether the credential is a token that expires and is refreshed.
    pub fn is_token(&self) -> bool {
        !matches!(self, Self::Password { .. })
    }

    /// Makes relative file paths relative to `base` (the configuration's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let path = match self {
            Self::Password { password_file, .. } => password_file.as_mut(),
            Self::ClientSecret { secret_file, .. } => secret_file.as_mut(),
            Self::WorkloadIdentity { token_file, .. } => token_file.as_mut(),
            _ => None,
        };
        if let Some(p) = path {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Every problem found without contacting anything, each a full sentence that names
    /// the key (never a secret's value). Empty means usable.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.user().is_empty() {
            p.push("user must not be empty".to_owned());
        }
        match self {
            Self::Password {
                password,
                password_file,
                password_env,
                ..
            } => {
                if let Err(e) = load_secret(
                    "password",
                    password.as_ref(),
                    password_file.as_deref(),
                    password_env.as_deref(),
                ) {
                    p.push(e);
                }
            }
            Self::ClientSecret {
                tenant_id,
                client_id,
                secret,
                secret_file,
                secret_env,
                authority_host,
                ..
            } => {
                if tenant_id.is_empty() {
                    p.push("tenant_id must not be empty".into());
                }
                if client_id.is_empty() {
                    p.push("client_id must not be empty".into());
                }
                if let Err(e) = load_secret(
                    "secret",
                    secret.as_ref(),
                    secret_file.as_deref(),
                    secret_env.as_deref(),
                ) {
                    p.push(e);
                }
                if let Some(a) = authority_host {
                    if let Err(e) = AuthorityHost::parse(a) {
                        p.push(e);
                    }
                }
            }
            Self::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
                authority_host,
                ..
            } => {
                if tenant_id.is_none() && std::env::var_os("AZURE_TENANT_ID").is_none() {
                    p.push("tenant_id is not set and neither is $AZURE_TENANT_ID".into());
                }
                if client_id.is_none() && std::env::var_os("AZURE_CLIENT_ID").is_none() {
                    p.push("client_id is not set and neither is $AZURE_CLIENT_ID".into());
                }
                match token_file
                    .clone()
                    .or_else(|| std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from))
                {
                    None => p.push(
                        "token_file is not set and neither is $AZURE_FEDERATED_TOKEN_FILE".into(),
                    ),
                    Some(f) => {
                        if let Err(e) = std::fs::metadata(&f) {
                            p.push(format!("cannot read token_file {}: {e}", f.display()));
                        }
                    }
                }
                if let Some(a) = authority_host_or_env(authority_host.as_deref()) {
                    if let Err(e) = AuthorityHost::parse(&a) {
                        p.push(e);
                    }
                }
            }
            Self::ManagedIdentity {
                client_id,
                object_id,
                resource_id,
                endpoint,
                header,
                header_env,
                ..
            } => {
                let ids = [client_id, object_id, resource_id]
                    .iter()
                    .filter(|x| x.is_some())
                    .count();
                if ids > 1 {
                    p.push(
                        "give at most one of client_id, object_id, resource_id (the user-assigned identity)"
                            .into(),
                    );
                }
                if header.is_some() && header_env.is_some() {
                    p.push("give header or header_env, not both".into());
                }
                if let Some(var) = header_env {
                    if std::env::var_os(var).is_none() {
                        p.push(format!(
                            "environment variable {var} (header_env) is not set"
                        ));
                    }
                }
                match endpoint {
                    Some(e) => {
                        if let Err(e) = parse_endpoint(e) {
                            p.push(e);
                        }
                    }
                    None if header.is_some() || header_env.is_some() => {
                        p.push("header / header_env need endpoint".into())
                    }
                    None => {}
                }
            }
            Self::AzureCli { .. } => {}
        }
        p
    }
}

/// A workload identity's authority host: as configured, else $AZURE_AUTHORITY_HOST.
pub(crate) fn authority_host_or_env(configured: Option<&str>) -> Option<String> {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var("AZURE_AUTHORITY_HOST").ok())
}

/// Resolves a secret given inline, in a file or in an environment variable (exactly
/// one). Errors name the source, never the value.
pub(crate) fn load_secret(
    key: &str,
    inline: Option<&Secret>,
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Secret, String> {
    let sources = [inline.is_some(), file.is_some(), env.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if sources != 1 {
        return Err(format!("needs exactly one of {key}, {key}_file, {key}_env"));
    }
    if let Some(s) = inline {
        return Ok(s.clone());
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {key}_file {}: {e}", path.display()))?;
        return Ok(Secret::new(text.trim_end_matches(['\n', '\r'])));
    }
    let var = env.unwrap_or_default();
    std::env::var(var)
        .map(Secret::new)
        .map_err(|_| format!("environment variable {var} ({key}_env) is not set"))
}

/// A managed-identity endpoint override: http(s) URL.
pub(crate) fn parse_endpoint(s: &str) -> Result<Url, String> {
    let u = Url::parse(s).map_err(|e| format!("endpoint {s:?} is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!("endpoint {s:?} must be an http or https URL"));
    }
    Ok(u)
}

/// An Entra authority host. The SDK insists on https; plain http is accepted only for
/// a loopback address (a local stand-in), and the transport then speaks http to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthorityHost {
    /// What the SDK is given (always https).
    pub https: String,
    /// Set when requests to this host:port must go out as plain http.
    pub plaintext: Option<(String, u16)>,
}

impl AuthorityHost {
    pub fn parse(s: &str) -> Result<Self, String> {
        let u = Url::parse(s).map_err(|e| format!("authority_host {s:?} is not a URL: {e}"))?;
        let host = u
            .host_str()
            .ok_or_else(|| format!("authority_host {s:?} has no host"))?
            .to_owned();
        match u.scheme() {
            "https" => Ok(Self {
                https: s.trim_end_matches('/').to_owned(),
                plaintext: None,
            }),
            "http" if is_loopback(&host) => {
                let port = u.port_or_known_default().unwrap_or(80);
                Ok(Self {
                    https: format!("https://{}:{port}", u.host_str().unwrap_or(&host)),
                    plaintext: Some((host, port)),
                })
            }
            _ => Err(format!(
                "authority_host {s:?} must use https (plain http only for a loopback address)"
            )),
        }
    }
}

pub(crate) fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// An error message with every quoted part replaced, so a mistyped secret never shows.
fn without_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut quoted = false;
    for c in msg.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
            continue;
        }
        if !quoted {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> CredentialConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn service_tables_take_no_user_hide_values_and_resolve_paths() {
        let mut table: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"type": "client-secret", "tenant_id": "t", "client_id": "c", "secret_file": "graph.secret"}"#,
        )
        .unwrap();
        CredentialConfig::resolve_table_paths(&mut table, Path::new("/etc/pgward"));
        assert_eq!(table["secret_file"], "/etc/pgward/graph.secret");
        let c = CredentialConfig::for_service(&table, "[entra] graph_credential").unwrap();
        assert_eq!(c.type_name(), "client-secret");
        // The only problem is the (absent) file, at its resolved place.
        assert_eq!(
            c.problems(),
            ["cannot read secret_file /etc/pgward/graph.secret: No such file or directory (os error 2)"]
        );
        // A mistyped key is named; a value in the table never shows in the error.
        let bad: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"type": "client-secret", "secrett": "hunter2-value"}"#)
                .unwrap();
        let e = CredentialConfig::for_service(&bad, "[entra] graph_credential").unwrap_err();
        assert!(e.starts_with("[entra] graph_credential: "), "{e}");
        assert!(!e.contains("hunter2-value"), "{e}");
    }

    #[test]
    fn every_type_parses() {
        let mi = parse("type = \"managed-identity\"\nuser = \"pgward\"\nclient_id = \"c\"");
        assert_eq!(mi.type_name(), "managed-identity");
        assert!(mi.problems().is_empty(), "{:?}", mi.problems());
        let cs = parse(
            "type = \"client-secret\"\nuser = \"u\"\ntenant_id = \"t\"\nclient_id = \"c\"\nsecret = \"s3cr3t\"",
        );
        assert!(cs.problems().is_empty(), "{:?}", cs.problems());
        assert!(!format!("{cs:?}").contains("s3cr3t"));
        let cli = parse("type = \"azure-cli\"\nuser = \"me@contoso.com\"");
        assert_eq!(cli.user(), "me@contoso.com");
        let pw = parse("type = \"password\"\nuser = \"u\"\npassword = \"hunter2\"");
        assert!(!pw.is_token());
        assert!(!format!("{pw:?}").contains("hunter2"));
        let wi = parse(
            "type = \"workload-identity\"\nuser = \"u\"\ntenant_id = \"t\"\nclient_id = \"c\"\ntoken_file = \"/nonexistent/token\"",
        );
        assert!(wi.problems().join(" ").contains("cannot read token_file"));
    }

    #[test]
    fn unknown_keys_refused() {
        let e = toml::from_str::<CredentialConfig>(
            "type = \"managed-identity\"\nuser = \"u\"\nclientid = \"c\"",
        )
        .unwrap_err();
        assert!(e.to_string().contains("clientid"), "{e}");
    }

    #[test]
    fn finds_every_problem() {
        let mi = parse(
            "type = \"managed-identity\"\nuser = \"\"\nclient_id = \"c\"\nobject_id = \"o\"\nheader = \"h\"",
        );
        let p = mi.problems().join("\n");
        assert!(p.contains("user must not be empty"), "{p}");
        assert!(p.contains("at most one of client_id"), "{p}");
        assert!(p.contains("need endpoint"), "{p}");
        let cs = parse(
            "type = \"client-secret\"\nuser = \"u\"\ntenant_id = \"t\"\nclient_id = \"c\"\nauthority_host = \"http://login.example.com\"",
        );
        let p = cs.problems().join("\n");
        assert!(
            p.contains("exactly one of secret, secret_file, secret_env"),
            "{p}"
        );
        assert!(p.contains("must use https"), "{p}");
    }

    #[test]
    fn secret_sources() {
        let e = load_secret("password", None, None, Some("PGWARD_TEST_SURELY_UNSET")).unwrap_err();
        assert!(e.contains("PGWARD_TEST_SURELY_UNSET"));
        let dir = std::env::temp_dir().join(format!("pgward-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        assert_eq!(
            load_secret("password", None, Some(&f), None)
                .unwrap()
                .expose(),
            "from-file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn authority_host_http_only_on_loopback() {
        let a = AuthorityHost::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(a.https, "https://127.0.0.1:8080");
        assert_eq!(a.plaintext, Some(("127.0.0.1".into(), 8080)));
        assert!(AuthorityHost::parse("https://login.microsoftonline.us/")
            .unwrap()
            .plaintext
            .is_none());
        assert!(AuthorityHost::parse("http://10.0.0.1").is_err());
    }
}
