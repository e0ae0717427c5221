//! The HTTP client side: discovery, JWKS and Graph requests.

use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};

/// Largest discovery, JWKS or Graph response we read; Entra's are a few KiB, and a
/// misbehaving endpoint must not make the proxy buffer without bound.
pub(crate) const MAX_RESPONSE: usize = 1024 * 1024;

/// A client fit for [`crate::Validator::start`]: rustls on aws-lc-rs with the platform's
/// trust roots, 10 s timeout, no redirects (discovery, JWKS and Graph never need them,
/// and following one could leave the configured host).
pub fn default_http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pgward/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sends `req` and returns the body as JSON, refusing non-2xx answers and bodies
/// over [`MAX_RESPONSE`]. Errors are one-line strings naming the URL, for the log.
pub(crate) async fn send_json(req: reqwest::RequestBuilder) -> Result<serde_json::Value, String> {
    let req = req
        .header(ACCEPT, HeaderValue::from_static("application/json"))
        .build_split();
    let (client, req) = req;
    let req = req.map_err(|e| format!("building request: {e}"))?;
    let url = redact_url(req.url());
    let mut resp = client
        .execute(req)
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}"));
    }
    if let Some(len) = resp.content_length() {
        if len > MAX_RESPONSE as u64 {
            return Err(format!(
                "{url}: response of {len} bytes exceeds {MAX_RESPONSE}"
            ));
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("{url}: reading body: {}", error_chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(format!("{url}: response exceeds {MAX_RESPONSE} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON ({e})"))
}

/// A JSON POST body.
pub(crate) fn json_body(
    req: reqwest::RequestBuilder,
    body: &serde_json::Value,
) -> reqwest::RequestBuilder {
    req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body.to_string())
}

/// The URL without query or credentials, for log lines.
fn redact_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// `e: cause: cause` — reqwest's top-level message alone ("error sending request") hides
/// the useful part (connection refused, certificate, timeout).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
