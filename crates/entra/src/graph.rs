//! Groups-overage resolution through Microsoft Graph.

use std::future::Future;
use std::pin::Pin;

use crate::http::{json_body, send_json};

/// A boxed future, so [`GraphTokenSource`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The error a [`GraphTokenSource`] may return.
pub type GraphTokenError = Box<dyn std::error::Error + Send + Sync>;

/// Supplies a bearer token for Microsoft Graph (audience `https://graph.microsoft.com`)
/// with `GroupMember.Read.All` or `Directory.Read.All`. pgward's own credential
/// (managed identity and the like) implements this; tests use a fixed string.
pub trait GraphTokenSource: Send + Sync {
    /// A currently valid access token (the implementation caches and renews it).
    fn graph_token(&self) -> BoxFuture<'_, Result<String, GraphTokenError>>;
}

/// A fixed token, for tests and local stand-ins.
#[derive(Clone)]
pub struct StaticGraphToken(pub String);

impl std::fmt::Debug for StaticGraphToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.write_str("StaticGraphToken(..)")
    }
}

impl GraphTokenSource for StaticGraphToken {
    fn graph_token(&self) -> BoxFuture<'_, Result<String, GraphTokenError>> {
        let t = self.0.clone();
        Box::pin(async move { Ok(t) })
    }
}

/// Most object ids one answer may carry; Graph caps getMemberObjects well below this.
const MAX_MEMBER_OBJECTS: usize = 20_000;

/// `POST {endpoint}/v1.0/directoryObjects/{oid}/getMemberObjects` with
/// `securityEnabledOnly: false`: every group and directory role `oid` belongs to,
/// transitively. `oid` must already be checked to be a GUID (it goes into the path).
pub(crate) async fn member_objects(
    http: &reqwest::Client,
    endpoint: &str,
    oid: &str,
    source: &dyn GraphTokenSource,
) -> Result<Vec<String>, String> {
    let token = source
        .graph_token()
        .await
        .map_err(|e| format!("no Graph token: {}", crate::http::error_chain(e.as_ref())))?;
    let url = format!(
        "{}/v1.0/directoryObjects/{oid}/getMemberObjects",
        endpoint.trim_end_matches('/')
    );
    let req = json_body(
        http.post(&url).bearer_auth(token),
        &serde_json::json!({ "securityEnabledOnly": false }),
    );
    let body = send_json(req).await?;
    let values = body
        .get("value")
        .and_then(|v| v.as_array())
        .ok_or_else(|| format!("{url}: answer has no \"value\" array"))?;
    if values.len() > MAX_MEMBER_OBJECTS {
        return Err(format!(
            "{url}: {} objects is more than we accept",
            values.len()
        ));
    }
    values
        .iter()
        .map(|v| {
            v.as_str()
                .map(|s| s.to_ascii_lowercase())
                .ok_or_else(|| format!("{url}: a member object id is not a string"))
        })
        .collect()
}
