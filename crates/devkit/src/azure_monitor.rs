//! A local stand-in for the Azure Monitor Logs Ingestion API, for tests: HTTP on
//! 127.0.0.1 that checks what the real service checks first (path with the DCR immutable
//! id and stream, `api-version`, bearer token, content type, the 1 MB limit, a JSON
//! array body), stores the records it accepted, and can be put into an outage (503,
//! 429 with `Retry-After`, or connection refused) and back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The API version the stand-in accepts.
pub const API_VERSION: &str = "2023-01-01";
/// The API's limit on one call's body.
pub const MAX_BODY: usize = 1_000_000;

/// How the stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Accepts valid calls (204).
    Up,
    /// 503 Service Unavailable to every call.
    Unavailable,
    /// 429 Too Many Requests with `Retry-After: <secs>`.
    Throttled { retry_after_secs: u32 },
    /// Not listening: connections are refused (open ones are closed).
    Refused,
}

/// What the stand-in has seen.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Calls answered 2xx.
    pub accepted: u64,
    /// Calls refused by the outage mode (503 / 429).
    pub outage: u64,
    /// Calls refused as invalid (bad path, version, token, content type, body).
    pub invalid: u64,
    /// The reason of the last invalid call.
    pub last_invalid: Option<String>,
    /// The largest body accepted, in bytes.
    pub max_body: usize,
}

struct State {
    mode: Mode,
    records: Vec<serde_json::Value>,
    counts: Counts,
}

struct Shared {
    path: String,
    token: String,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running stand-in. Dropping it stops it.
pub struct LogsIngestion {
    addr: SocketAddr,
    shared: Arc<Shared>,
    rt: tokio::runtime::Runtime,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl LogsIngestion {
    /// Starts on a free loopback port, for DCR `dcr_immutable_id`, stream `stream`,
    /// accepting only `Bearer <token>`.
    pub fn start(dcr_immutable_id: &str, stream: &str, token: &str) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            path: format!("/dataCollectionRules/{dcr_immutable_id}/streams/{stream}"),
            token: token.to_string(),
            state: Mutex::new(State {
                mode: Mode::Up,
                records: Vec::new(),
                counts: Counts::default(),
            }),
        });
        let server = rt.spawn(serve(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            rt,
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:<port>`: the `endpoint` to configure.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the answer mode. `Refused` closes the listener and every open
    /// connection; leaving it listens again on the same port.
    pub fn set_mode(&mut self, mode: Mode) -> std::io::Result<()> {
        let was = std::mem::replace(&mut self.shared.lock().mode, mode);
        if mode == Mode::Refused && was != Mode::Refused {
            if let Some(s) = self.server.take() {
                s.abort();
                // Wait until the listener and the connections are really gone.
                let _ = self.rt.block_on(s);
            }
        } else if was == Mode::Refused && mode != Mode::Refused {
            let listener = self.rt.block_on(TcpListener::bind(self.addr))?;
            self.server = Some(self.rt.spawn(serve(listener, self.shared.clone())));
        }
        Ok(())
    }

    /// Every record accepted so far, in arrival order.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.shared.lock().records.clone()
    }

    /// Request counters.
    pub fn counts(&self) -> Counts {
        self.shared.lock().counts.clone()
    }
}

impl Drop for LogsIngestion {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Owning the connections here means aborting this task closes them all.
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let shared = shared.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, shared.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    answer(status, &body.to_string())
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mode = shared.lock().mode;
    match mode {
        Mode::Unavailable => {
            shared.lock().counts.outage += 1;
            return Ok(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "stand-in outage",
            ));
        }
        Mode::Throttled { retry_after_secs } => {
            shared.lock().counts.outage += 1;
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "stand-in throttling",
            );
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(retry_after_secs),
            );
            return Ok(r);
        }
        Mode::Up | Mode::Refused => {}
    }
    let invalid = |status: StatusCode, code: &str, why: String| {
        let mut st = shared.lock();
        st.counts.invalid += 1;
        st.counts.last_invalid = Some(why.clone());
        Ok(error(status, code, &why))
    };
    if req.method() != hyper::Method::POST {
        return invalid(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("method {}", req.method()),
        );
    }
    if req.uri().path() != shared.path {
        return invalid(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("unknown DCR or stream: {}", req.uri().path()),
        );
    }
    let version_ok = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == format!("api-version={API_VERSION}"))
    });
    if !version_ok {
        return invalid(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersion",
            format!("query {:?}", req.uri().query()),
        );
    }
    let auth_ok = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", shared.token));
    if !auth_ok {
        // Never echo what was sent.
        return invalid(
            StatusCode::UNAUTHORIZED,
            "InvalidToken",
            "missing or wrong bearer token".to_string(),
        );
    }
    let json = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return invalid(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "content type must be application/json".to_string(),
        );
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return invalid(
                StatusCode::BAD_REQUEST,
                "BadBody",
                format!("reading body: {e}"),
            )
        }
    };
    if body.len() > MAX_BODY {
        return invalid(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ContentLengthLimitExceeded",
            format!("body of {} bytes", body.len()),
        );
    }
    let records = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Array(a)) => a,
        _ => {
            return invalid(
                StatusCode::BAD_REQUEST,
                "InvalidPayload",
                "body is not a JSON array".to_string(),
            )
        }
    };
    let mut st = shared.lock();
    st.counts.accepted += 1;
    st.counts.max_body = st.counts.max_body.max(body.len());
    st.records.extend(records);
    Ok(answer(StatusCode::NO_CONTENT, ""))
}
