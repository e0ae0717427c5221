//! pgward's configuration file (TOML). Keys follow ../shared/PRODUCT.md; additions are
//! documented in docs/configuration.md. Relative paths are resolved against the
//! directory of the configuration file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pgward_upstream::{TlsMode, UpstreamConfig};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub log: LogConfig,
    /// Client sign-in with Entra ID access tokens (docs/entra.md).
    pub entra: Option<pgward_entra::EntraConfig>,
    /// Role-based allow/deny on every statement (docs/policy.md).
    pub policy: Option<PolicyConfig>,
    /// The audit log (docs/audit.md).
    pub audit: Option<pgward_audit::AuditConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// Per-identity and per-role connection and statement-rate limits (docs/operations.md).
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
    /// State shared with the other replicas through a store (docs/operations.md "Several
    /// replicas"). Off by default: one replica keeps everything in memory.
    pub cluster: Option<pgward_cluster::ClusterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub addr: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Accept clients that don't ask for TLS. Development only; logged as a warning.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Let clients in without signing them in (no [entra] section). Development only:
    /// every client then acts with pgward's upstream credential. Refused unless set.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout_secs: u64,
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Startup parameters clients may send beyond the harmless built-in set.
    #[serde(default)]
    pub allowed_startup_parameters: Vec<String>,
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_secs: u64,
    /// Runtime worker threads; 0 = one per CPU.
    #[serde(default)]
    pub worker_threads: usize,
    /// Sign-in failures an address may have within a minute before its attempts are slowed.
    #[serde(default = "default_auth_failures")]
    pub auth_failures_before_delay: u32,
}

fn default_auth_failures() -> u32 {
    crate::auth::FREE_FAILURES
}

fn default_max_connections() -> usize {
    1000
}
fn default_startup_timeout() -> u64 {
    15
}
fn default_max_message_bytes() -> usize {
    pgward_wire::DEFAULT_MAX_MESSAGE_BYTES
}
fn default_drain_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy file (TOML), reloaded on SIGHUP and when it changes.
    pub file: PathBuf,
    /// Decisions kept in the cache (repeated and prepared statements skip parsing); a
    /// bound in addition to `cache_bytes`.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Bytes the decision cache may hold (SQL text, keys and analyses).
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: usize,
    /// Longest query string (Query or Parse) pgward analyses; longer ones are refused
    /// (54000) without parsing.
    #[serde(default = "default_max_statement_bytes")]
    pub max_statement_bytes: usize,
    /// Time budget of one string's analysis on the analysis threads; over it: refused
    /// (54000).
    #[serde(default = "default_analysis_timeout_ms")]
    pub analysis_timeout_ms: u64,
    /// Threads that analyse long strings off the runtime threads.
    #[serde(default = "default_analysis_threads")]
    pub analysis_threads: usize,
    /// How often the file is checked for changes; 0 turns the watch off.
    #[serde(default = "default_watch_secs")]
    pub watch_secs: u64,
    /// How old the upstream's catalog (which names are resolved against) may get before it
    /// is read again in the background; DDL through pgward and reloads also refresh it.
    #[serde(default = "default_catalog_refresh_secs")]
    pub catalog_refresh_secs: u64,
    /// Bring every PostgreSQL route's database to the privileges the policy grants (the
    /// second wall, docs/security.md) at start and after each reload, with pgward's own login.
    #[serde(default)]
    pub apply_grants: bool,
    /// With the grants: leave PUBLIC's privileges as they are (by default, what not every
    /// upstream_role may do is revoked from PUBLIC, which every role holds).
    #[serde(default)]
    pub keep_public: bool,
    /// The key of `hash` column masks (HMAC-SHA-256): a file of at least 32 bytes,
    /// required when the policy has hash masks (docs/masking.md).
    #[serde(default)]
    pub mask_key_file: Option<PathBuf>,
}

fn default_catalog_refresh_secs() -> u64 {
    60
}

impl PolicyConfig {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.analysis_threads == 0 || self.analysis_threads > 64 {
            p.push("[policy] analysis_threads must be between 1 and 64".into());
        }
        if self.analysis_timeout_ms == 0 {
            p.push("[policy] analysis_timeout_ms must be above 0".into());
        }
        if self.max_statement_bytes < 8192 {
            p.push("[policy] max_statement_bytes must be at least 8192".into());
        }
        if self.cache_bytes < (1 << 20) {
            p.push("[policy] cache_bytes must be at least 1048576 (1 MiB)".into());
        }
        p
    }
}

fn default_cache_entries() -> usize {
    10_000
}

fn default_cache_bytes() -> usize {
    64 << 20
}

fn default_max_statement_bytes() -> usize {
    pgward_policy::MAX_SQL_LEN
}

fn default_analysis_timeout_ms() -> u64 {
    2000
}

fn default_analysis_threads() -> usize {
    2
}

fn default_watch_secs() -> u64 {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub addr: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as "info" or "pgward_proxy=debug,info".
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The dbname a client asks for.
    pub database: String,
    pub upstream: String,
    /// Database on the upstream server; defaults to `database`.
    pub upstream_database: Option<String>,
}

impl RouteConfig {
    pub fn upstream_database(&self) -> &str {
        self.upstream_database.as_deref().unwrap_or(&self.database)
    }
}

/// A configuration file that could not be read or parsed; the message names the line.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let mut config = Self::parse(&text).map_err(err)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses TOML text; errors carry the line and column.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            format!("{at}{}", e.message())
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = self.listen.tls_cert.as_mut() {
            fix(p);
        }
        if let Some(p) = self.listen.tls_key.as_mut() {
            fix(p);
        }
        if let Some(policy) = self.policy.as_mut() {
            fix(&mut policy.file);
        }
        if let Some(audit) = self.audit.as_mut() {
            audit.resolve_paths(base);
        }
        if let Some(g) = self
            .entra
            .as_mut()
            .and_then(|e| e.graph_credential.as_mut())
        {
            pgward_upstream::CredentialConfig::resolve_table_paths(&mut g.0, base);
        }
        if let Some(c) = self.cluster.as_mut() {
            c.resolve_paths(base);
        }
        for u in &mut self.upstreams {
            if let Some(p) = u.ca_file.as_mut() {
                fix(p);
            }
            u.credential.resolve_paths(base);
            for c in u.role_logins.values_mut() {
                c.resolve_paths(base);
            }
        }
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen
            .addr
            .parse()
            .map_err(|e| format!("[listen] addr {:?}: {e}", self.listen.addr))
    }

    pub fn route(&self, database: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.database == database)
    }

    /// Every problem `pgward check` can find without serving, each a full sentence.
    /// Empty means the configuration is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = self.listen_addr() {
            p.push(e);
        }
        if let Some(admin) = &self.admin {
            if let Err(e) = admin.addr.parse::<SocketAddr>() {
                p.push(format!("[admin] addr {:?}: {e}", admin.addr));
            }
        }
        match (&self.listen.tls_cert, &self.listen.tls_key) {
            (Some(cert), Some(key)) => {
                if let Err(e) = crate::tls::load_server_config(cert, key) {
                    p.push(e);
                }
            }
            (None, None) if !self.listen.allow_plaintext => p.push(
                "[listen] has no tls_cert/tls_key and allow_plaintext is false: no client could connect"
                    .into(),
            ),
            (None, None) => {}
            _ => p.push("[listen] tls_cert and tls_key must be given together".into()),
        }
        match (&self.entra, self.listen.allow_unauthenticated) {
            (None, false) => p.push(
                "no client sign-in is configured: add an [entra] section, or set [listen] allow_unauthenticated = true for local development"
                    .into(),
            ),
            (Some(_), true) => p.push(
                "[entra] and [listen] allow_unauthenticated = true contradict each other: remove allow_unauthenticated"
                    .into(),
            ),
            (Some(entra), false) => {
                p.extend(entra.problems().iter().map(|e| format!("[entra] {e}")));
                if self.policy.is_none() {
                    // Without a policy pgward reads no statement, so a caller could SET
                    // pgward.oid and pose as someone else to row-level security.
                    p.push(
                        "[entra] needs a [policy]: pgward must read every statement to keep callers from changing their identity settings (pgward.oid, pgward.upn, ...); a policy can be as open as one role with members = { everyone = true } and allow = [ { objects = [\"*\"] } ]"
                            .into(),
                    );
                }
                if entra.groups_overage == pgward_entra::GroupsOverage::Graph {
                    match &entra.graph_credential {
                        None => p.push(
                            "[entra] groups_overage = \"graph\" needs [entra.graph_credential]: pgward's own Azure credential for Microsoft Graph (GroupMember.Read.All), with the keys of [upstreams.credential] without user"
                                .into(),
                        ),
                        Some(table) => match pgward_upstream::CredentialConfig::for_service(
                            &table.0,
                            "[entra] graph_credential",
                        ) {
                            Err(e) => p.push(e),
                            Ok(c) if !c.is_token() => p.push(
                                "[entra] graph_credential: Microsoft Graph needs an Azure credential type (managed-identity, workload-identity, client-secret, azure-cli), not \"password\""
                                    .into(),
                            ),
                            Ok(c) => p.extend(
                                c.problems()
                                    .into_iter()
                                    .map(|e| format!("[entra] graph_credential: {e}")),
                            ),
                        },
                    }
                }
            }
            (None, true) => {}
        }
        p.extend(self.limits.problems());
        if let Some(c) = &self.cluster {
            p.extend(c.problems());
        }
        if let Some(policy) = &self.policy {
            match load_policy(&policy.file) {
                Err(e) => p.push(e),
                Ok(loaded) => {
                    for r in &self.limits.roles {
                        if loaded.roles_named(&[r.role.as_str()]).is_err() {
                            p.push(format!(
                                "[[limits.roles]] role {:?} is not a role of the policy",
                                r.role
                            ));
                        }
                    }
                }
            }
        } else if !self.limits.roles.is_empty() {
            p.push("[[limits.roles]] needs a [policy] (roles come from it)".into());
        }
        if let Some(audit) = &self.audit {
            p.extend(audit.problems().into_iter().map(|e| format!("[audit] {e}")));
        }
        if self.listen.max_connections == 0 {
            p.push("[listen] max_connections must be at least 1".into());
        }
        if let Some(policy) = &self.policy {
            p.extend(policy.problems());
        }
        if self.listen.max_message_bytes < 8192 || self.listen.max_message_bytes > (1 << 30) {
            p.push("[listen] max_message_bytes must be between 8192 and 1073741824".into());
        }
        for name in &self.listen.allowed_startup_parameters {
            if crate::handshake::always_refused_parameter(name) {
                p.push(format!(
                    "[listen] allowed_startup_parameters: {name:?} can never be allowed"
                ));
            }
        }
        if self.upstreams.is_empty() {
            p.push("no [[upstreams]] configured".into());
        }
        let mut names = HashSet::new();
        for u in &self.upstreams {
            if !names.insert(u.name.as_str()) {
                p.push(format!("[[upstreams]] name {:?} is used twice", u.name));
            }
            if u.tls == TlsMode::Disable && !is_loopback_host(&u.host) {
                p.push(format!(
                    "upstream {:?}: tls = \"disable\" sends data unencrypted to {}; use require or verify-full",
                    u.name, u.host
                ));
            }
            if u.kind == pgward_upstream::UpstreamKind::AzureSql
                && u.credential.type_name() == "password"
            {
                // Azure SQL signs pgward in with an Entra token (FEDAUTH); a password would be
                // sent as if it were one.
                p.push(format!(
                    "upstream {:?}: kind = \"azure-sql\" needs an Azure credential type (managed-identity, workload-identity, client-secret, azure-cli), not \"password\"",
                    u.name
                ));
            }
            if u.kind == pgward_upstream::UpstreamKind::AzureSql
                && (!u.role_logins.is_empty() || u.identity_table)
            {
                p.push(format!(
                    "upstream {:?}: role_logins and identity_table are for PostgreSQL upstreams; azure-sql sessions run as their role's database user (EXECUTE AS USER, docs/azure-sql.md)",
                    u.name
                ));
            }
            if u.identity_table && u.role_logins.is_empty() {
                p.push(format!(
                    "upstream {:?}: identity_table needs role_logins: a session that runs as pgward's own login owns pgward.callers and could rewrite it",
                    u.name
                ));
            }
            let credential_problems = u.credential.problems();
            for e in &credential_problems {
                p.push(format!(
                    "upstream {:?}: credential type \"{}\": {e}",
                    u.name,
                    u.credential.type_name()
                ));
            }
            if !credential_problems.is_empty() {
                continue;
            }
            if let Err(e) = pgward_upstream::Upstream::new(u.clone()) {
                if !p.iter().any(|x| x == &e) {
                    p.push(e);
                }
            }
        }
        if self.routes.is_empty() {
            p.push("no [[routes]] configured: every database would be refused".into());
        }
        let mut dbs = HashSet::new();
        for r in &self.routes {
            if !dbs.insert(r.database.as_str()) {
                p.push(format!(
                    "[[routes]] database {:?} is routed twice",
                    r.database
                ));
            }
            if !names.contains(r.upstream.as_str()) {
                p.push(format!(
                    "route for database {:?} names unknown upstream {:?}",
                    r.database, r.upstream
                ));
            }
        }
        p.dedup();
        p
    }
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Reads and validates a policy file; the error lists every problem with its line.
pub fn load_policy(path: &Path) -> Result<pgward_policy::Policy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read policy file {}: {e}", path.display()))?;
    pgward_policy::Policy::from_toml(&text)
        .map_err(|e| format!("policy file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[listen]
addr = "127.0.0.1:6432"
allow_plaintext = true
allow_unauthenticated = true

[[upstreams]]
name = "main"
host = "127.0.0.1"
port = 5432
tls = "disable"
[upstreams.credential]
type = "password"
user = "pgward"
password = "x"

[[routes]]
database = "app"
upstream = "main"
"#;

    #[test]
    fn minimal_config_has_no_problems() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.problems(), Vec::<String>::new());
        assert_eq!(c.route("app").unwrap().upstream_database(), "app");
        assert!(c.route("other").is_none());
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let text = MINIMAL.replace(
            "allow_plaintext = true",
            "allow_plaintext = true\nbogus = 1",
        );
        let e = Config::parse(&text).unwrap_err();
        assert!(e.contains("line 5"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn finds_every_problem() {
        let text = MINIMAL
            .replace("upstream = \"main\"", "upstream = \"nope\"")
            .replace("allow_unauthenticated = true", "")
            .replace("127.0.0.1\"\nport", "db.example.com\"\nport")
            .replace("password = \"x\"", "");
        let c = Config::parse(&text).unwrap();
        let problems = c.problems().join("\n");
        assert!(problems.contains("unknown upstream \"nope\""), "{problems}");
        assert!(problems.contains("no client sign-in"), "{problems}");
        assert!(problems.contains("unencrypted"), "{problems}");
        assert!(problems.contains("exactly one of password"), "{problems}");
    }

    #[test]
    fn credential_problems_are_all_reported() {
        let text = MINIMAL.replace(
            "type = \"password\"\nuser = \"pgward\"\npassword = \"x\"",
            "type = \"managed-identity\"\nuser = \"pgward\"\nclient_id = \"c\"\nobject_id = \"o\"\nheader = \"h\"",
        );
        let c = Config::parse(&text).unwrap();
        let problems = c.problems().join("\n");
        assert!(
            problems.contains("upstream \"main\": credential type \"managed-identity\": give at most one of client_id"),
            "{problems}"
        );
        assert!(
            problems.contains("header / header_env need endpoint"),
            "{problems}"
        );
    }

    #[test]
    fn sign_in_without_a_policy_is_refused() {
        let text = MINIMAL.replace(
            "allow_unauthenticated = true",
            "[entra]\ntenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"",
        );
        let c = Config::parse(&text).unwrap();
        let problems = c.problems().join("\n");
        assert!(problems.contains("[entra] needs a [policy]"), "{problems}");
    }
}
