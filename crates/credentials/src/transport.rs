//! The HTTP transport the Azure SDK uses for pgward's credentials: the workspace's
//! reqwest (rustls on aws-lc-rs, so no second crypto provider), plus the endpoint
//! overrides that let a deployment or a test point every identity request elsewhere.

use std::time::Duration;

use async_trait::async_trait;
use azure_core::error::{Error, ErrorKind};
use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
use azure_core::http::request::{Body, Request};
use azure_core::http::{AsyncRawResponse, HttpClient, Method, Url};

use crate::secret::Secret;

/// Token responses are a few KiB; anything larger is not a token endpoint.
const MAX_RESPONSE: usize = 1 << 20;

#[derive(Debug, Clone, Default)]
pub(crate) enum Route {
    /// Requests go where the SDK sends them.
    #[default]
    AsIs,
    /// Every request goes to this URL (the SDK's query string kept), with an
    /// X-IDENTITY-HEADER when given: a managed-identity endpoint override.
    Identity {
        endpoint: Url,
        header: Option<Secret>,
    },
    /// Requests to this loopback host:port go out as plain http (a local Entra stand-in;
    /// the SDK itself only accepts https authorities).
    PlaintextAuthority { host: String, port: u16 },
}

#[derive(Debug)]
pub(crate) struct Transport {
    client: reqwest::Client,
    route: Route,
}

impl Transport {
    pub fn new(route: Route) -> Result<Self, String> {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pgward/", env!("CARGO_PKG_VERSION")));
        if !matches!(route, Route::AsIs) {
            // Identity endpoints are local to the host (or a test stand-in): never via
            // an HTTP proxy from the environment.
            b = b.no_proxy();
        }
        let client = b
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self { client, route })
    }

    /// The URL and extra header a request is actually sent with.
    fn target(&self, url: &Url) -> Result<(Url, Option<&Secret>), Error> {
        let mut out = url.clone();
        let mut header = None;
        match &self.route {
            Route::AsIs => {}
            Route::Identity {
                endpoint,
                header: h,
            } => {
                let mut u = endpoint.clone();
                u.set_query(url.query());
                out = u;
                header = h.as_ref();
            }
            Route::PlaintextAuthority { host, port } => {
                if url.host_str() == Some(host.as_str())
                    && url.port_or_known_default() == Some(*port)
                {
                    // Url refuses scheme changes between special schemes only in odd
                    // cases; rebuild instead to be certain.
                    let rebuilt = format!(
                        "http://{}:{}{}{}",
                        url.host_str().unwrap_or_default(),
                        port,
                        url.path(),
                        url.query().map(|q| format!("?{q}")).unwrap_or_default()
                    );
                    out = Url::parse(&rebuilt)
                        .map_err(|e| Error::with_error(ErrorKind::Other, e, "rewriting URL"))?;
                }
            }
        }
        refuse_in_tests(&out)?;
        Ok((out, header))
    }
}

/// Unit tests must never leave the machine (in particular, never reach IMDS at
/// 169.254.169.254): every request they make has to go to a loopback address.
#[cfg(test)]
fn refuse_in_tests(url: &Url) -> Result<(), Error> {
    if crate::config::is_loopback(url.host_str().unwrap_or_default()) {
        Ok(())
    } else {
        Err(Error::with_message(
            ErrorKind::Other,
            format!(
                "test build refuses non-loopback request to {}",
                url.host_str().unwrap_or_default()
            ),
        ))
    }
}

#[cfg(not(test))]
fn refuse_in_tests(_: &Url) -> Result<(), Error> {
    Ok(())
}

fn method(m: Method) -> Result<reqwest::Method, Error> {
    Ok(match m {
        Method::Delete => reqwest::Method::DELETE,
        Method::Get => reqwest::Method::GET,
        Method::Head => reqwest::Method::HEAD,
        Method::Patch => reqwest::Method::PATCH,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        other => {
            return Err(Error::with_message(
                ErrorKind::Other,
                format!("HTTP method {other:?} is not used by credentials"),
            ))
        }
    })
}

#[async_trait]
impl HttpClient for Transport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let (url, identity_header) = self.target(request.url())?;
        let mut req = self.client.request(method(request.method())?, url.clone());
        for (name, value) in request.headers().iter() {
            req = req.header(name.as_str(), value.as_str());
        }
        if let Some(h) = identity_header {
            req = req.header("x-identity-header", h.expose());
        }
        let req = match request.body() {
            Body::Bytes(b) => req.body(b.clone()),
            Body::SeekableStream(_) => {
                return Err(Error::with_message(
                    ErrorKind::Other,
                    "streaming request bodies are not used by credentials",
                ))
            }
        };
        // Errors name the host only: query strings can carry identity ids, bodies secrets.
        let host = url.host_str().unwrap_or_default().to_owned();
        let mut rsp = req.send().await.map_err(|e| {
            let kind = if e.is_connect() {
                ErrorKind::Connection
            } else {
                ErrorKind::Io
            };
            Error::with_message(kind, format!("request to {host} failed: {}", chain(&e)))
        })?;
        let status = rsp.status().as_u16();
        let mut headers = Headers::new();
        for (k, v) in rsp.headers() {
            if let Ok(v) = v.to_str() {
                headers.insert(
                    HeaderName::from(k.as_str().to_owned()),
                    HeaderValue::from(v.to_owned()),
                );
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = rsp.chunk().await.map_err(|e| {
            Error::with_message(
                ErrorKind::Io,
                format!("reading answer from {host}: {}", chain(&e)),
            )
        })? {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(Error::with_message(
                    ErrorKind::Io,
                    format!("answer from {host} is larger than {MAX_RESPONSE} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(AsyncRawResponse::from_bytes(status.into(), headers, body))
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_route_keeps_query_and_adds_header() {
        let t = Transport::new(Route::Identity {
            endpoint: Url::parse("http://127.0.0.1:9/msi/token").unwrap(),
            header: Some(Secret::new("h")),
        })
        .unwrap();
        let (u, h) = t
            .target(&Url::parse("http://169.254.169.254/metadata/identity/oauth2/token?api-version=2019-08-01&resource=x").unwrap())
            .unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9/msi/token?api-version=2019-08-01&resource=x"
        );
        assert_eq!(h.unwrap().expose(), "h");
    }

    #[test]
    fn plaintext_authority_only_for_its_host() {
        let t = Transport::new(Route::PlaintextAuthority {
            host: "127.0.0.1".into(),
            port: 8443,
        })
        .unwrap();
        let (u, _) = t
            .target(&Url::parse("https://127.0.0.1:8443/t/oauth2/v2.0/token").unwrap())
            .unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:8443/t/oauth2/v2.0/token");
        let (u, _) = t
            .target(&Url::parse("https://127.0.0.1:9443/x").unwrap())
            .unwrap();
        assert_eq!(u.scheme(), "https");
    }

    #[test]
    fn tests_never_reach_imds() {
        let t = Transport::new(Route::AsIs).unwrap();
        let e = t
            .target(&Url::parse("http://169.254.169.254/metadata/identity/oauth2/token").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("refuses"), "{e}");
    }
}
