//! `[audit.azure_monitor]`: every record to Azure Monitor Logs through the Logs Ingestion
//! API (a data collection rule's stream), for Log Analytics and Microsoft Sentinel.
//!
//! `POST {endpoint}/dataCollectionRules/{dcr_immutable_id}/streams/{stream}?api-version=2023-01-01`
//! with a JSON array of records exactly as in the file, `Authorization: Bearer <token for
//! https://monitor.azure.com/.default>`. At most 1 MB per call (the API's limit); 429
//! honours `Retry-After`; 5xx, network errors and auth errors back off and retry; records
//! stay in the disk spool until a 2xx.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::shipping::{Delivered, Destination, Failure, ShipOptions, ShippingSink};
use crate::AuditError;

/// The Logs Ingestion API version pgward speaks.
pub const API_VERSION: &str = "2023-01-01";
/// The token scope of the Logs Ingestion API (public cloud).
pub const DEFAULT_SCOPE: &str = "https://monitor.azure.com/.default";
/// The API's limit on one call's body.
const API_MAX_BYTES: usize = 1_000_000;

/// Bearer tokens for the Logs Ingestion API.
///
/// pgward's own Azure credential implements this for the configured scope; tokens are
/// cached and refreshed by the implementation. Implementations must never put a token
/// in an error message.
pub trait AccessTokens: Send + Sync {
    /// A currently valid access token (without the `Bearer ` prefix).
    fn bearer(&self) -> Result<String, String>;
}

/// Tokens read from a file kept current by something else (a sidecar, or a test),
/// re-read at every call.
pub struct TokenFile(pub PathBuf);

impl AccessTokens for TokenFile {
    fn bearer(&self) -> Result<String, String> {
        let raw = std::fs::read_to_string(&self.0)
            .map_err(|e| format!("token file {}: {e}", self.0.display()))?;
        let t = raw.trim();
        if t.is_empty() {
            return Err(format!("token file {} is empty", self.0.display()));
        }
        Ok(t.to_string())
    }
}

/// `[audit.azure_monitor]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureMonitorConfig {
    /// The data collection endpoint (or DCR logs ingestion endpoint), e.g.
    /// `https://my-dce-a1b2.westeurope-1.ingest.monitor.azure.com`.
    pub endpoint: String,
    /// The DCR's immutable id, `dcr-` and 32 hex digits.
    pub dcr_immutable_id: String,
    /// The DCR stream, e.g. `Custom-PgwardAudit_CL`.
    pub stream: String,
    /// Token scope (change only for sovereign clouds).
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Most records per call (calls are also kept under 1 MB).
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// How long a partial batch waits to fill up before it is sent.
    #[serde(default = "default_batch_interval_ms")]
    pub batch_interval_ms: u64,
    /// Default: `<audit dir>/<stem>.spool/azure-monitor`.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    #[serde(default = "super::postgres::default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// When true, a record that cannot be spooled refuses the statement.
    #[serde(default)]
    pub authoritative: bool,
    /// Per-call timeout.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// A file holding a current access token for `scope`, re-read at every call, for
    /// when something else (a sidecar) acquires tokens. Without it, pgward's own Azure
    /// credential is used.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// pgward's Azure credential for `scope`: the same table as
    /// `[upstreams.credential]` (`type = "managed-identity" | "workload-identity" |
    /// "client-secret" | "azure-cli"`, …), `user` not needed. Kept as a table here and
    /// read with [`pgward_credentials::CredentialConfig`].
    #[serde(default)]
    pub credential: Option<serde_json::Map<String, serde_json::Value>>,
}

// The credential table may hold a client secret: print only its type.
impl std::fmt::Debug for AzureMonitorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureMonitorConfig")
            .field("endpoint", &self.endpoint)
            .field("dcr_immutable_id", &self.dcr_immutable_id)
            .field("stream", &self.stream)
            .field("scope", &self.scope)
            .field("batch_records", &self.batch_records)
            .field("batch_interval_ms", &self.batch_interval_ms)
            .field("spool_dir", &self.spool_dir)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("authoritative", &self.authoritative)
            .field("timeout_secs", &self.timeout_secs)
            .field("token_file", &self.token_file)
            .field(
                "credential",
                &self
                    .credential
                    .as_ref()
                    .map(|c| c.get("type").cloned().unwrap_or_default()),
            )
            .finish()
    }
}

fn default_scope() -> String {
    DEFAULT_SCOPE.to_string()
}
fn default_batch_records() -> usize {
    1000
}
fn default_batch_interval_ms() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    30
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `http://` is accepted only for a loopback host (a local stand-in).
fn endpoint_problem(endpoint: &str) -> Option<String> {
    let Ok(url) = reqwest::Url::parse(endpoint) else {
        return Some(format!(
            "audit.azure_monitor.endpoint {endpoint:?} is not a URL"
        ));
    };
    let loopback = matches!(
        url.host_str(),
        Some("127.0.0.1") | Some("localhost") | Some("[::1]")
    );
    match url.scheme() {
        "https" => None,
        "http" if loopback => None,
        _ => Some(format!(
            "audit.azure_monitor.endpoint {endpoint:?} must be https:// (http only for a loopback stand-in)"
        )),
    }
}

impl AzureMonitorConfig {
    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(table) = &mut self.credential {
            pgward_credentials::CredentialConfig::resolve_table_paths(table, base);
        }
        super::shipping::resolve_relative(
            base,
            [&mut self.spool_dir, &mut self.token_file]
                .into_iter()
                .flatten(),
        );
    }

    /// Every problem with the section, for `pgward check`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        p.extend(endpoint_problem(&self.endpoint));
        if !is_name(&self.dcr_immutable_id) {
            p.push(format!(
                "audit.azure_monitor.dcr_immutable_id {:?} is not an immutable id (dcr-…)",
                self.dcr_immutable_id
            ));
        }
        if !is_name(&self.stream) {
            p.push(format!(
                "audit.azure_monitor.stream {:?} is not a stream name (e.g. Custom-PgwardAudit_CL)",
                self.stream
            ));
        }
        if self.batch_records == 0 {
            p.push("audit.azure_monitor.batch_records must be at least 1".to_string());
        }
        if self.token_file.is_some() && self.credential.is_some() {
            p.push("audit.azure_monitor: set token_file or credential, not both".to_string());
        }
        match self.credential_config() {
            Some(Ok(c)) => p.extend(
                c.problems()
                    .into_iter()
                    .map(|e| format!("audit.azure_monitor.credential: {e}")),
            ),
            Some(Err(e)) => p.push(e),
            None => {}
        }
        p
    }

    /// The `credential` table as pgward's credential configuration.
    pub fn credential_config(
        &self,
    ) -> Option<Result<pgward_credentials::CredentialConfig, String>> {
        let table = self.credential.as_ref()?;
        Some(pgward_credentials::CredentialConfig::for_service(
            table,
            "audit.azure_monitor.credential",
        ))
    }

    /// The ingestion URL.
    pub fn url(&self) -> String {
        format!(
            "{}/dataCollectionRules/{}/streams/{}?api-version={API_VERSION}",
            self.endpoint.trim_end_matches('/'),
            self.dcr_immutable_id,
            self.stream
        )
    }
}

/// Starts the sink. `tokens` is pgward's credential for `scope`; without it,
/// `token_file` must be set.
pub(crate) fn start(
    cfg: &AzureMonitorConfig,
    audit_file: &Path,
    tokens: Option<Arc<dyn AccessTokens>>,
) -> Result<ShippingSink, AuditError> {
    super::shipping::check(cfg.problems())?;
    let tokens = match (&cfg.token_file, cfg.credential_config(), tokens) {
        (Some(f), _, _) => Tokens::Given(Arc::new(TokenFile(f.clone()))),
        (None, Some(c), _) => {
            let c = c.map_err(AuditError::Config)?;
            let source =
                pgward_credentials::TokenSource::new("audit.azure_monitor", &c, &cfg.scope)
                    .map_err(|e| AuditError::Config(format!("audit.azure_monitor: {e}")))?;
            Tokens::Credential(source)
        }
        (None, None, Some(t)) => Tokens::Given(t),
        (None, None, None) => {
            return Err(AuditError::Config(
                "audit.azure_monitor needs a credential for the Logs Ingestion API (credential = { type = ... }, or token_file)".to_string(),
            ))
        }
    };
    let mut http = reqwest::Client::builder()
        .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pgward/", env!("CARGO_PKG_VERSION")));
    if cfg.endpoint.starts_with("http://") {
        // A loopback stand-in: never through a proxy.
        http = http.no_proxy();
    }
    let http = http
        .build()
        .map_err(|e| AuditError::Config(format!("audit.azure_monitor: HTTP client: {e}")))?;
    let dest = AzureDestination {
        url: cfg.url(),
        http,
        tokens,
        batch_records: cfg.batch_records,
    };
    let opts = ShipOptions::new(
        "azure-monitor",
        cfg.spool_dir.as_ref(),
        audit_file,
        cfg.spool_max_bytes,
        cfg.batch_interval_ms,
        cfg.authoritative,
    );
    ShippingSink::start(opts, dest)
}

/// Where bearer tokens come from.
enum Tokens {
    Given(Arc<dyn AccessTokens>),
    /// pgward's credential: cached, refreshed in the background on the sink's runtime.
    Credential(pgward_credentials::TokenSource),
}

struct AzureDestination {
    url: String,
    http: reqwest::Client,
    tokens: Tokens,
    batch_records: usize,
}

/// `Retry-After` in seconds (the API sends seconds; an HTTP date is not expected).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl AzureDestination {
    async fn post(&self, body: Vec<u8>, token: &str) -> Result<(), Failure> {
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            // reqwest's message names the URL, never the headers.
            .map_err(|e| Failure::retry(format!("azure monitor: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let wait = retry_after(resp.headers());
        // The service's error JSON says what is wrong (stream, DCR, role assignment).
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        Err(Failure::Retry {
            message: format!("azure monitor: HTTP {status}: {text}"),
            retry_after: if status.as_u16() == 429 { wait } else { None },
        })
    }
}

impl Destination for AzureDestination {
    fn limits(&self) -> (usize, usize) {
        // Brackets and commas of the array come on top of the records.
        let n = self.batch_records.max(1);
        (n, API_MAX_BYTES.saturating_sub(n + 2))
    }

    fn deliver(
        &mut self,
        rt: &tokio::runtime::Runtime,
        lines: &[&[u8]],
    ) -> Result<Delivered, Failure> {
        if let [one] = lines {
            if one.len() + 2 > API_MAX_BYTES {
                tracing::error!(record = %super::postgres::record_id(one), bytes = one.len(), "audit record over the Logs Ingestion API's 1 MB limit; not shipped (it is in the audit file)");
                return Ok(Delivered {
                    handled: 1,
                    rejected: 1,
                });
            }
        }
        let token = match &self.tokens {
            Tokens::Given(t) => t.bearer(),
            Tokens::Credential(source) => rt
                .block_on(source.current())
                .map(|s| s.expose().to_string())
                .map_err(|e| e.to_string()),
        }
        .map_err(|e| Failure::retry(format!("azure monitor: no access token: {e}")))?;
        rt.block_on(self.post(super::shipping::json_array(lines), &token))?;
        Ok(Delivered {
            handled: lines.len(),
            rejected: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_the_section() {
        let c: AzureMonitorConfig = toml::from_str(
            r#"
            endpoint = "https://pgward-dce-x1.westeurope-1.ingest.monitor.azure.com/"
            dcr_immutable_id = "dcr-0123456789abcdef0123456789abcdef"
            stream = "Custom-PgwardAudit_CL"
            "#,
        )
        .unwrap();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(
            c.url(),
            "https://pgward-dce-x1.westeurope-1.ingest.monitor.azure.com/dataCollectionRules/dcr-0123456789abcdef0123456789abcdef/streams/Custom-PgwardAudit_CL?api-version=2023-01-01"
        );
        assert_eq!(c.scope, DEFAULT_SCOPE);
        let plain = AzureMonitorConfig {
            endpoint: "http://dce.example.com".into(),
            stream: "a/b".into(),
            ..c.clone()
        };
        assert_eq!(plain.problems().len(), 2, "{:?}", plain.problems());
        let local = AzureMonitorConfig {
            endpoint: "http://127.0.0.1:8080".into(),
            ..c
        };
        assert!(local.problems().is_empty());
    }

    #[test]
    fn a_credential_table_is_read_with_pgward_credentials() {
        let base = r#"
            endpoint = "https://dce.example.com"
            dcr_immutable_id = "dcr-0123456789abcdef0123456789abcdef"
            stream = "Custom-PgwardAudit_CL"
        "#;
        let c: AzureMonitorConfig = toml::from_str(&format!(
            "{base}credential = {{ type = \"client-secret\", tenant_id = \"t\", client_id = \"c\", secret = \"hunter2-secret\" }}"
        ))
        .unwrap();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert!(matches!(
            c.credential_config(),
            Some(Ok(
                pgward_credentials::CredentialConfig::ClientSecret { .. }
            ))
        ));
        assert!(!format!("{c:?}").contains("hunter2"));
        let wrong: AzureMonitorConfig = toml::from_str(&format!(
            "{base}credential = {{ type = \"client-secret\", tenant_id = \"t\", client_id = 7, secret = \"hunter2-secret\" }}"
        ))
        .unwrap();
        let p = wrong.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(!p[0].contains("hunter2"), "{p:?}");
        let unknown: AzureMonitorConfig = toml::from_str(&format!(
            "{base}credential = {{ type = \"carrier-pigeon\" }}"
        ))
        .unwrap();
        assert_eq!(unknown.problems().len(), 1);
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None, "a date falls back to the backoff");
    }

    #[test]
    fn a_token_file_is_read_and_its_errors_name_only_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "eyJ.secret.token\n").unwrap();
        assert_eq!(TokenFile(f.clone()).bearer().unwrap(), "eyJ.secret.token");
        std::fs::write(&f, "  \n").unwrap();
        let e = TokenFile(f).bearer().unwrap_err();
        assert!(e.contains("is empty"), "{e}");
    }
}
