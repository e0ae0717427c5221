//! The admin endpoint: /healthz (the process is up), /readyz (it should get traffic),
//! /metrics (Prometheus text). Plain HTTP on a separate address, meant for loopback or
//! a cluster-internal port, never the client listener.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::Metrics;

/// Readiness: the listener is up and not draining, the token keys are loaded, every
/// upstream credential has a valid token, and the audit log can write (fail-closed: while
/// it can't, statements are refused, so traffic belongs on another replica).
#[derive(Default)]
pub struct Readiness {
    serving: AtomicBool,
    validator: Option<pgward_entra::Validator>,
    /// (upstream name, pgward's credential for it).
    credentials: Vec<(String, pgward_upstream::TokenSource)>,
    audit: Option<pgward_audit::AuditLog>,
}

impl Readiness {
    pub fn new(validator: Option<pgward_entra::Validator>) -> Self {
        Self {
            serving: AtomicBool::new(false),
            validator,
            credentials: Vec::new(),
            audit: None,
        }
    }

    /// Adds the audit log's health to what readiness depends on.
    pub fn with_audit(mut self, audit: Option<pgward_audit::AuditLog>) -> Self {
        self.audit = audit;
        self
    }

    /// Adds pgward's upstream credentials to what readiness depends on.
    pub fn with_credentials(mut self, c: Vec<(String, pgward_upstream::TokenSource)>) -> Self {
        self.credentials = c;
        self
    }

    pub fn set_serving(&self, v: bool) {
        self.serving.store(v, Ordering::Release);
    }
    /// Reasons the proxy is not ready; empty when ready.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.serving.load(Ordering::Acquire) {
            p.push("not accepting connections (starting or draining)".to_owned());
        }
        if let Some(v) = &self.validator {
            if !v.is_ready() {
                let why = v.last_error().unwrap_or_else(|| "not fetched yet".into());
                p.push(format!(
                    "Entra discovery documents and signing keys not loaded: {why}"
                ));
            }
        }
        for (name, source) in &self.credentials {
            let h = source.health();
            if !h.ready {
                let why = h.last_error.unwrap_or_else(|| "not fetched yet".into());
                p.push(format!(
                    "upstream {name:?}: no valid {} token: {why}",
                    h.kind
                ));
            }
        }
        if let Some(Err(e)) = self.audit.as_ref().map(pgward_audit::AuditLog::ready) {
            p.push(format!(
                "the audit log cannot write (statements are refused): {e}"
            ));
        }
        p
    }
}

pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                let readiness = readiness.clone();
                async move { Ok::<_, Infallible>(route(&req, &metrics, &readiness)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

fn route(
    req: &Request<Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let problems = readiness.problems();
            if problems.is_empty() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {}\n", problems.join("; ")),
                )
            }
        }
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on [admin] addr {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("admin listener: {e}"))?;
    Ok((listener, local))
}
