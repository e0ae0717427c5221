//! The `[entra]` configuration section and its validation.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

/// The audience Azure Database for PostgreSQL tokens carry
/// (`az account get-access-token --resource-type oss-rdbms`).
pub const DEFAULT_AUDIENCE: &str = "https://ossrdbms-aad.database.windows.net";
/// The public-cloud Entra authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The public-cloud Microsoft Graph endpoint.
pub const DEFAULT_GRAPH_ENDPOINT: &str = "https://graph.microsoft.com";

/// What to do when a token reports a groups overage (`_claim_names` names `groups`
/// instead of carrying the `groups` claim, which Entra does past 200 groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GroupsOverage {
    /// Refuse the sign-in with [`crate::AuthError::GroupsOverage`] (the default: pgward
    /// never guesses group membership).
    #[default]
    Refuse,
    /// Resolve the membership through Microsoft Graph `getMemberObjects`, using the
    /// [`crate::GraphTokenSource`] the caller supplies.
    Graph,
}

/// `[entra] graph_credential`: kept as the table it was written as. Its Debug shows only
/// the `type` (the table may hold a client secret).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct GraphCredential(pub serde_json::Map<String, serde_json::Value>);

impl std::fmt::Debug for GraphCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphCredential")
            .field("type", &self.0.get("type"))
            .finish_non_exhaustive()
    }
}

/// The `[entra]` section. Keys of the product contract: `tenant_id`, `authority`,
/// `audiences`, `clock_skew_secs`; the others are documented additions (docs/entra.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// The home tenant (a GUID); discovery is done for this tenant.
    pub tenant_id: String,
    /// Base URL of the token issuer, e.g. `https://login.microsoftonline.com`.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Accepted `aud` values (each also accepted with a trailing slash).
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
    /// Tolerated clock difference for `exp` and `nbf`, in seconds.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_secs: u64,
    /// Tenants whose tokens are accepted (`tid`); defaults to `[tenant_id]`.
    #[serde(default)]
    pub allowed_tenants: Option<Vec<String>>,
    /// Extra user names a client may sign in with: alias -> object id (`oid`).
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// How long a session may outlive its token's `exp`, in seconds.
    #[serde(default)]
    pub expiry_grace_secs: u64,
    /// `refuse` (default) or `graph`.
    #[serde(default)]
    pub groups_overage: GroupsOverage,
    /// Microsoft Graph base URL used when `groups_overage = "graph"`.
    #[serde(default = "default_graph_endpoint")]
    pub graph_endpoint: String,
    /// pgward's own Azure credential for Microsoft Graph when `groups_overage = "graph"`:
    /// the keys of `[upstreams.credential]` without `user` (the proxy builds the token
    /// source; this crate only takes a [`crate::GraphTokenSource`]).
    #[serde(default)]
    pub graph_credential: Option<GraphCredential>,
    /// Background JWKS refresh interval, in seconds.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_secs: u64,
    /// Minimum time between JWKS re-fetches caused by tokens naming an unknown `kid`.
    #[serde(default = "default_unknown_kid_interval")]
    pub unknown_kid_min_interval_secs: u64,
    /// Override of the v1 issuer, with `{tenantid}` standing for the token's tenant.
    /// Default: the `issuer` of the authority's v1 discovery document
    /// (`{authority}/{tenant_id}/.well-known/openid-configuration`), which Azure answers with
    /// `https://sts.windows.net/{tenant}/` in the public cloud and its own host in sovereign
    /// clouds, whatever the authority's host. With the override that document is not read.
    #[serde(default)]
    pub v1_issuer: Option<String>,
}

fn default_authority() -> String {
    DEFAULT_AUTHORITY.to_string()
}
fn default_audiences() -> Vec<String> {
    vec![DEFAULT_AUDIENCE.to_string()]
}
fn default_clock_skew() -> u64 {
    60
}
fn default_graph_endpoint() -> String {
    DEFAULT_GRAPH_ENDPOINT.to_string()
}
fn default_jwks_refresh() -> u64 {
    3600
}
fn default_unknown_kid_interval() -> u64 {
    300
}

/// A configuration problem; each names the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A key holds an unusable value.
    #[error("entra.{key}: {reason}")]
    Invalid {
        /// The offending key, e.g. `authority`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// True for a tenant or object id in GUID form (8-4-4-4-12 hex digits), as the validator
/// and `[entra]` checks read them.
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    parts.len() == lens.len()
        && parts
            .iter()
            .zip(lens)
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Checks that `raw` is an https URL, or an http URL on a loopback host (local stand-ins).
pub(crate) fn check_endpoint_url(key: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|e| invalid(key, format!("not a URL ({e})")))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(key, "must not carry a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(key, "must not carry credentials"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| invalid(key, "has no host"))?
        .to_string();
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(&host) => Ok(url),
        "http" => Err(invalid(
            key,
            format!("plain http is allowed only for loopback hosts, not {host}"),
        )),
        other => Err(invalid(key, format!("unsupported scheme {other:?}"))),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let trimmed = host.trim_start_matches('[').trim_end_matches(']');
    if trimmed.eq_ignore_ascii_case("localhost") {
        return true;
    }
    trimmed.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl EntraConfig {
    /// A configuration with every default, for `tenant_id` and `authority`.
    pub fn new(tenant_id: impl Into<String>, authority: impl Into<String>) -> Self {
        EntraConfig {
            tenant_id: tenant_id.into(),
            authority: authority.into(),
            audiences: default_audiences(),
            clock_skew_secs: default_clock_skew(),
            allowed_tenants: None,
            aliases: BTreeMap::new(),
            expiry_grace_secs: 0,
            groups_overage: GroupsOverage::Refuse,
            graph_endpoint: default_graph_endpoint(),
            graph_credential: None,
            jwks_refresh_secs: default_jwks_refresh(),
            unknown_kid_min_interval_secs: default_unknown_kid_interval(),
            v1_issuer: None,
        }
    }

    /// Every problem in the section (empty when it is usable). `pgward check` prints these.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if !is_guid(&self.tenant_id) {
            out.push(invalid("tenant_id", "must be a tenant GUID"));
        }
        if let Err(e) = check_endpoint_url("authority", &self.authority) {
            out.push(e);
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.trim().is_empty()) {
            out.push(invalid(
                "audiences",
                "must list at least one non-empty audience",
            ));
        }
        if self.clock_skew_secs > 600 {
            out.push(invalid(
                "clock_skew_secs",
                "more than 600 s defeats expiry checks",
            ));
        }
        if let Some(t) = &self.allowed_tenants {
            if t.is_empty() {
                out.push(invalid("allowed_tenants", "must not be empty"));
            }
            for tid in t.iter().filter(|t| !is_guid(t)) {
                out.push(invalid(
                    "allowed_tenants",
                    format!("{tid:?} is not a tenant GUID"),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (alias, oid) in &self.aliases {
            // Aliases match case-insensitively, so two spellings of one alias are ambiguous.
            if !seen.insert(alias.to_lowercase()) {
                out.push(invalid(
                    "aliases",
                    format!("alias {alias:?} is given twice (aliases ignore case)"),
                ));
            }
            if alias.trim().is_empty() {
                out.push(invalid("aliases", "an alias is empty"));
            }
            if !is_guid(oid) {
                out.push(invalid(
                    "aliases",
                    format!("alias {alias:?} must map to an object id GUID, not {oid:?}"),
                ));
            }
        }
        if self.groups_overage == GroupsOverage::Graph {
            if let Err(e) = check_endpoint_url("graph_endpoint", &self.graph_endpoint) {
                out.push(e);
            }
        }
        if self.jwks_refresh_secs < 60 {
            out.push(invalid("jwks_refresh_secs", "must be at least 60"));
        }
        if let Some(v1) = &self.v1_issuer {
            if !v1.contains("{tenantid}") {
                out.push(invalid("v1_issuer", "must contain {tenantid}"));
            }
        }
        out
    }

    /// The first problem, if any (see [`EntraConfig::problems`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The tenants whose tokens are accepted.
    pub fn tenants(&self) -> Vec<String> {
        match &self.allowed_tenants {
            Some(t) => t.iter().map(|s| s.to_ascii_lowercase()).collect(),
            None => vec![self.tenant_id.to_ascii_lowercase()],
        }
    }

    /// `authority` without a trailing slash.
    pub(crate) fn authority_base(&self) -> &str {
        self.authority.trim_end_matches('/')
    }

    /// The OIDC (v2) discovery document URL for the home tenant: its `issuer` is the issuer
    /// v2 access tokens carry, its `jwks_uri` the signing keys.
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            self.authority_base(),
            self.tenant_id
        )
    }

    /// The OIDC v1 discovery document URL for the home tenant: its `issuer` is the issuer v1
    /// access tokens carry.
    pub fn v1_discovery_url(&self) -> String {
        format!(
            "{}/{}/.well-known/openid-configuration",
            self.authority_base(),
            self.tenant_id
        )
    }

    /// The grace after `exp` before a session is ended.
    pub fn expiry_grace(&self) -> Duration {
        Duration::from_secs(self.expiry_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "11111111-2222-3333-4444-555555555555";

    #[test]
    fn defaults_from_toml_minimum() {
        let cfg: EntraConfig =
            serde_json::from_value(serde_json::json!({ "tenant_id": T })).unwrap();
        assert_eq!(cfg.authority, DEFAULT_AUTHORITY);
        assert_eq!(cfg.audiences, vec![DEFAULT_AUDIENCE.to_string()]);
        assert_eq!(cfg.clock_skew_secs, 60);
        assert_eq!(cfg.tenants(), vec![T.to_string()]);
        assert_eq!(cfg.jwks_refresh_secs, 3600);
        assert_eq!(cfg.unknown_kid_min_interval_secs, 300);
        assert_eq!(cfg.groups_overage, GroupsOverage::Refuse);
        assert!(cfg.problems().is_empty());
        assert_eq!(
            cfg.v1_discovery_url(),
            format!("https://login.microsoftonline.com/{T}/.well-known/openid-configuration")
        );
    }

    #[test]
    fn parses_the_contract_section_from_toml() {
        #[derive(Deserialize)]
        struct File {
            entra: EntraConfig,
        }
        let f: File = toml::from_str(
            r#"
            [entra]
            tenant_id = "11111111-2222-3333-4444-555555555555"
            authority = "https://login.microsoftonline.com"
            audiences = ["https://ossrdbms-aad.database.windows.net"]
            clock_skew_secs = 60
            groups_overage = "graph"
            aliases = { reporting = "11111111-2222-3333-4444-666666666666" }
            "#,
        )
        .unwrap();
        assert_eq!(f.entra.groups_overage, GroupsOverage::Graph);
        assert_eq!(f.entra.graph_endpoint, DEFAULT_GRAPH_ENDPOINT);
        assert!(f.entra.problems().is_empty());
        let bad = toml::from_str::<File>("[entra]\ntenant_id = \"x\"\nclock_skew = 5\n");
        assert!(bad.is_err(), "unknown keys are refused");
    }

    #[test]
    fn duplicate_aliases_ignoring_case() {
        let mut cfg = EntraConfig::new(T, DEFAULT_AUTHORITY);
        cfg.aliases.insert("Bob".into(), T.into());
        cfg.aliases.insert("bob".into(), T.into());
        assert_eq!(cfg.problems().len(), 1);
    }

    #[test]
    fn authority_rules() {
        let ok = |a: &str| EntraConfig::new(T, a).validate().is_ok();
        assert!(ok("https://login.microsoftonline.com"));
        assert!(ok("http://127.0.0.1:8080"));
        assert!(ok("http://localhost:1"));
        assert!(ok("http://[::1]:9"));
        assert!(!ok("http://login.microsoftonline.com"));
        assert!(!ok("http://10.0.0.1"));
        assert!(!ok("ftp://127.0.0.1"));
        assert!(!ok("not a url"));
        assert!(!ok("https://user:pw@example.com"));
    }

    #[test]
    fn reports_every_problem() {
        let mut cfg = EntraConfig::new("contoso.com", "http://example.com");
        cfg.aliases.insert("bob".into(), "nope".into());
        cfg.audiences.clear();
        let p = cfg.problems();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].to_string().starts_with("entra.tenant_id"));
    }

    #[test]
    fn discovery_urls_follow_the_authority() {
        let cfg = EntraConfig::new(T, "http://127.0.0.1:5555/");
        assert_eq!(
            cfg.v1_discovery_url(),
            format!("http://127.0.0.1:5555/{T}/.well-known/openid-configuration")
        );
        assert_eq!(
            cfg.discovery_url(),
            format!("http://127.0.0.1:5555/{T}/v2.0/.well-known/openid-configuration")
        );
    }
}
