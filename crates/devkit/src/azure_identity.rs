//! A local stand-in for the Azure identity endpoints pgward's credentials talk to, for
//! tests and the demo only. One HTTP/1.1 server on 127.0.0.1 serves:
//!
//! - IMDS style: `GET /metadata/identity/oauth2/token?api-version=..&resource=..`
//!   with `Metadata: true`;
//! - App Service / Container Apps style: `GET /msi/token?api-version=2019-08-01&resource=..`
//!   with `X-IDENTITY-HEADER` (the IDENTITY_HEADER value);
//! - the Entra token endpoint: `POST /{tenant}/oauth2/v2.0/token` for client credentials
//!   with a client secret, or with a client assertion (workload identity: the federated
//!   token file's contents).
//!
//! Each request is checked against what the stand-in was told to expect; a mismatch is
//! answered like the real service would (400/401) and recorded in `rejections`. The
//! token issued is whatever the test set (so the test can make it an upstream role's
//! password), with the expiry the test set; `set_outage` makes it fail.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The path the App Service style endpoint answers on.
pub const APP_SERVICE_PATH: &str = "/msi/token";
/// The IMDS token path.
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What the stand-in accepts.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The resource (IMDS / App Service) or scope (Entra) asked for.
    pub resource: String,
    /// App Service style: the X-IDENTITY-HEADER value.
    pub identity_header: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    /// Workload identity: the client assertion (the federated token file's contents).
    pub federated_token: String,
}

impl Default for Expect {
    fn default() -> Self {
        Self {
            resource: "https://ossrdbms-aad.database.windows.net".into(),
            identity_header: "standin-identity-header".into(),
            tenant_id: "00000000-0000-0000-0000-0000000000aa".into(),
            client_id: "00000000-0000-0000-0000-0000000000cc".into(),
            client_secret: "standin-client-secret".into(),
            federated_token: "standin.federated.token".into(),
        }
    }
}

/// How the stand-in fails when asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Answer normally.
    None,
    /// Answer 500 Internal Server Error.
    Error500,
    /// Accept the connection and close it without answering.
    Refuse,
}

/// Which endpoint a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Imds,
    AppService,
    Entra,
    Other,
}

struct State {
    token: String,
    expires_in: Duration,
    outage: Outage,
    /// Requests by endpoint (including failed and rejected ones).
    requests: HashMap<Endpoint, u64>,
    /// Tokens issued by endpoint.
    issued: HashMap<Endpoint, u64>,
    rejections: Vec<String>,
    /// Query parameters of the last managed-identity request.
    last_query: Vec<(String, String)>,
}

/// The running stand-in; stops when dropped.
pub struct IdentityStandIn {
    addr: SocketAddr,
    expect: Expect,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl IdentityStandIn {
    /// Starts on a free loopback port, issuing `token` valid for `expires_in`.
    pub fn start(expect: Expect, token: &str, expires_in: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let state = Arc::new(Mutex::new(State {
            token: token.to_owned(),
            expires_in,
            outage: Outage::None,
            requests: HashMap::new(),
            issued: HashMap::new(),
            rejections: Vec::new(),
            last_query: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop, expect) = (state.clone(), stop.clone(), expect.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            let (state, expect) = (state.clone(), expect.clone());
                            std::thread::spawn(move || {
                                let _ = serve(tcp, &state, &expect);
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Ok(Self {
            addr,
            expect,
            state,
            stop,
            thread: Some(thread),
        })
    }

    pub fn expect(&self) -> &Expect {
        &self.expect
    }

    /// `http://127.0.0.1:PORT`: the authority host for Entra requests.
    pub fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The IMDS-style token URL.
    pub fn imds_url(&self) -> String {
        format!("http://{}{IMDS_PATH}", self.addr)
    }

    /// The App Service-style token URL (what IDENTITY_ENDPOINT would hold).
    pub fn app_service_url(&self) -> String {
        format!("http://{}{APP_SERVICE_PATH}", self.addr)
    }

    /// Issue `token` from now on, valid for `expires_in` from each request.
    pub fn set_token(&self, token: &str, expires_in: Duration) {
        let mut st = lock(&self.state);
        st.token = token.to_owned();
        st.expires_in = expires_in;
    }

    pub fn set_outage(&self, outage: Outage) {
        lock(&self.state).outage = outage;
    }

    /// Requests received for `endpoint`, whatever the answer.
    pub fn requests(&self, endpoint: Endpoint) -> u64 {
        lock(&self.state)
            .requests
            .get(&endpoint)
            .copied()
            .unwrap_or(0)
    }

    /// Tokens issued by `endpoint`.
    pub fn issued(&self, endpoint: Endpoint) -> u64 {
        lock(&self.state)
            .issued
            .get(&endpoint)
            .copied()
            .unwrap_or(0)
    }

    /// Why requests were refused (wrong header, secret, assertion, ...).
    pub fn rejections(&self) -> Vec<String> {
        lock(&self.state).rejections.clone()
    }

    /// The query parameters of the last managed-identity request.
    pub fn last_query(&self) -> Vec<(String, String)> {
        lock(&self.state).last_query.clone()
    }
}

impl Drop for IdentityStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct HttpRequest {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(tcp: &TcpStream) -> std::io::Result<HttpRequest> {
    let mut r = BufReader::new(tcp);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(1 << 20);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    Ok(HttpRequest {
        method,
        path: path.to_owned(),
        query: form_decode(q),
        headers,
        body,
    })
}

fn serve(mut tcp: TcpStream, state: &Mutex<State>, expect: &Expect) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let req = read_request(&tcp)?;
    let endpoint = if req.method == "GET" && req.path == IMDS_PATH {
        Endpoint::Imds
    } else if req.method == "GET" && req.path == APP_SERVICE_PATH {
        Endpoint::AppService
    } else if req.method == "POST" && req.path.ends_with("/oauth2/v2.0/token") {
        Endpoint::Entra
    } else {
        Endpoint::Other
    };
    let (outage, token, expires_in) = {
        let mut st = lock(state);
        *st.requests.entry(endpoint).or_default() += 1;
        if matches!(endpoint, Endpoint::Imds | Endpoint::AppService) {
            st.last_query = req.query.clone();
        }
        (st.outage, st.token.clone(), st.expires_in)
    };
    match outage {
        Outage::Refuse => return Ok(()),
        Outage::Error500 => {
            return respond(&mut tcp, 500, r#"{"error":"temporarily_unavailable"}"#);
        }
        Outage::None => {}
    }
    let verdict = match endpoint {
        Endpoint::Imds | Endpoint::AppService => check_managed(&req, endpoint, expect),
        Endpoint::Entra => check_entra(&req, expect),
        Endpoint::Other => Err((
            404,
            format!("no such endpoint: {} {}", req.method, req.path),
        )),
    };
    if let Err((status, why)) = verdict {
        lock(state).rejections.push(format!("{endpoint:?}: {why}"));
        let body = format!(
            r#"{{"error":"invalid_request","error_description":{}}}"#,
            json_str(&why)
        );
        return respond(&mut tcp, status, &body);
    }
    *lock(state).issued.entry(endpoint).or_default() += 1;
    let secs = expires_in.as_secs();
    let body = if endpoint == Endpoint::Entra {
        format!(
            r#"{{"token_type":"Bearer","expires_in":{secs},"ext_expires_in":{secs},"access_token":{}}}"#,
            json_str(&token)
        )
    } else {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        format!(
            r#"{{"access_token":{},"expires_on":"{}","expires_in":"{secs}","resource":{},"token_type":"Bearer"}}"#,
            json_str(&token),
            now + secs,
            json_str(&expect.resource)
        )
    };
    respond(&mut tcp, 200, &body)
}

fn query<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn check_managed(req: &HttpRequest, endpoint: Endpoint, e: &Expect) -> Result<(), (u16, String)> {
    if query(&req.query, "api-version").is_none() {
        return Err((400, "api-version is missing".into()));
    }
    if query(&req.query, "resource") != Some(e.resource.as_str()) {
        return Err((
            400,
            format!("unexpected resource {:?}", query(&req.query, "resource")),
        ));
    }
    match endpoint {
        Endpoint::Imds => {
            if req.headers.get("metadata").map(String::as_str) != Some("true") {
                return Err((400, "the Metadata: true header is missing".into()));
            }
        }
        _ => {
            if query(&req.query, "api-version") != Some("2019-08-01") {
                return Err((
                    400,
                    "App Service endpoints need api-version=2019-08-01".into(),
                ));
            }
            if req.headers.get("x-identity-header") != Some(&e.identity_header) {
                return Err((401, "X-IDENTITY-HEADER is missing or wrong".into()));
            }
        }
    }
    Ok(())
}

fn check_entra(req: &HttpRequest, e: &Expect) -> Result<(), (u16, String)> {
    let tenant = req
        .path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    if tenant != e.tenant_id {
        return Err((400, format!("unknown tenant {tenant:?}")));
    }
    let form = form_decode(&String::from_utf8_lossy(&req.body));
    let get = |k: &str| query(&form, k);
    if get("grant_type") != Some("client_credentials") {
        return Err((400, "grant_type must be client_credentials".into()));
    }
    if get("client_id") != Some(e.client_id.as_str()) {
        return Err((400, format!("unknown client_id {:?}", get("client_id"))));
    }
    let want_scope = format!("{}/.default", e.resource);
    if get("scope") != Some(want_scope.as_str()) {
        return Err((400, format!("unexpected scope {:?}", get("scope"))));
    }
    match (get("client_secret"), get("client_assertion")) {
        (Some(s), None) if s == e.client_secret => Ok(()),
        (None, Some(a)) if a == e.federated_token => {
            if get("client_assertion_type") == Some(ASSERTION_TYPE) {
                Ok(())
            } else {
                Err((400, "client_assertion_type is wrong".into()))
            }
        }
        (Some(_), None) => Err((401, "invalid client secret".into())),
        (None, Some(_)) => Err((
            401,
            "client assertion does not match the federated token".into(),
        )),
        _ => Err((
            400,
            "give exactly one of client_secret, client_assertion".into(),
        )),
    }
}

fn respond(tcp: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes())?;
    tcp.write_all(body.as_bytes())?;
    tcp.flush()
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// application/x-www-form-urlencoded (also query strings).
fn form_decode(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        let f = form_decode("a=b%2Fc&scope=https%3A%2F%2Fx%2F.default&s=a+b&t=%zz");
        assert_eq!(query(&f, "a"), Some("b/c"));
        assert_eq!(query(&f, "scope"), Some("https://x/.default"));
        assert_eq!(query(&f, "s"), Some("a b"));
        assert_eq!(query(&f, "t"), Some("%zz"));
    }

    fn get(addr: &str, path: &str, headers: &str) -> String {
        let mut tcp = TcpStream::connect(addr).unwrap();
        write!(tcp, "GET {path} HTTP/1.1\r\nhost: x\r\n{headers}\r\n").unwrap();
        let mut s = String::new();
        tcp.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn imds_requires_metadata_header_and_counts() {
        let s =
            IdentityStandIn::start(Expect::default(), "tok-1", Duration::from_secs(600)).unwrap();
        let addr = s.addr.to_string();
        let q = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fossrdbms-aad.database.windows.net";
        assert!(get(&addr, q, "").starts_with("HTTP/1.1 400"));
        let ok = get(&addr, q, "metadata: true\r\n");
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.contains("\"tok-1\""),
            "{ok}"
        );
        s.set_outage(Outage::Error500);
        assert!(get(&addr, q, "metadata: true\r\n").starts_with("HTTP/1.1 500"));
        assert_eq!(s.requests(Endpoint::Imds), 3);
        assert_eq!(s.issued(Endpoint::Imds), 1);
        assert_eq!(s.rejections().len(), 1);
    }
}
