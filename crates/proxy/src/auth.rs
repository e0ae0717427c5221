//! Client sign-in: the password a client sends is its Entra access token.
//!
//! pgward asks for a cleartext password (only ever over TLS), validates the token with
//! `pgward_entra::Validator`, and binds the client's user name to it. Every refusal is
//! `FATAL 28000` with PostgreSQL's generic wording; the exact reason goes to the log.
//! Repeated failures from one address are slowed down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgward_entra::{Identity, Validator};
use pgward_wire::build;
use pgward_wire::frontend::Framer;
use pgward_wire::tag::frontend as fe;
use pgward_wire::{WireError, MAX_STARTUP_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stream::ClientStream;

/// How clients are signed in.
pub enum ClientAuth {
    /// Development only (`allow_unauthenticated = true`): no sign-in at all.
    Unauthenticated,
    Entra(Validator),
}

/// Why a sign-in failed. `Display` is the exact reason for the log; never the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    #[error("token offered over an unencrypted connection")]
    NotEncrypted,
    #[error("client went away during sign-in")]
    ClientGone,
    #[error("protocol violation during sign-in: {0}")]
    Protocol(#[from] WireError),
    #[error("expected a password message, got {0:?}")]
    UnexpectedMessage(char),
    #[error("{0}")]
    Token(#[from] pgward_entra::AuthError),
}

impl AuthFailure {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotEncrypted => "not_encrypted",
            Self::ClientGone => "client_gone",
            Self::Protocol(_) => "protocol",
            Self::UnexpectedMessage(_) => "protocol",
            Self::Token(e) => e.label(),
        }
    }

    /// What the client is told: generic, as PostgreSQL does, so a prober learns nothing
    /// about which check failed.
    pub fn client_message(&self, user: &str) -> String {
        match self {
            Self::NotEncrypted => {
                "pgward accepts access tokens only over an encrypted connection (use sslmode=require or stronger)".into()
            }
            Self::Protocol(e) => format!("invalid password packet: {e}"),
            _ => format!("password authentication failed for user \"{user}\""),
        }
    }

    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Protocol(_) | Self::UnexpectedMessage(_) => "08P01",
            _ => "28000",
        }
    }
}

/// Asks for the token and validates it. `buf` holds bytes the client already sent.
pub async fn sign_in(
    validator: &Validator,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    user: &str,
) -> Result<Identity, AuthFailure> {
    if !stream.is_tls() {
        return Err(AuthFailure::NotEncrypted);
    }
    let mut out = BytesMut::new();
    build::authentication_cleartext(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|_| AuthFailure::ClientGone)?;
    stream.flush().await.map_err(|_| AuthFailure::ClientGone)?;

    // The password message is bounded like a startup packet (tokens reach 8 KiB+).
    let framer = Framer::new(MAX_STARTUP_BYTES);
    let msg = loop {
        if let Some(m) = framer.next(buf)? {
            break m;
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(AuthFailure::ClientGone),
            Ok(_) => {}
        }
    };
    if msg.tag() != fe::PASSWORD {
        return Err(AuthFailure::UnexpectedMessage(msg.tag() as char));
    }
    let body = msg.body();
    let token = body.strip_suffix(&[0]).unwrap_or(body);
    // Not UTF-8 cannot be a JWS; the validator reports it as malformed.
    let token = String::from_utf8_lossy(token);
    Ok(validator.validate(&token, user).await?)
}

/// Slows down repeated sign-in failures from one address: after `free_failures` within
/// a minute, each further attempt from it waits before it is even looked at (doubling
/// from 250 ms, capped at 5 s), so parallel attempts are slowed too.
///
/// With `[cluster]`, each failure is also counted in the store, and the count there (all
/// replicas' failures from that address) becomes this replica's: an address spreading its
/// guesses over replicas is slowed as if they were one. The sign-in itself never waits for
/// the store; a replica learns the shared count when a failure reaches it.
pub struct FailureThrottle {
    recent: Arc<Mutex<HashMap<IpAddr, (u32, Instant)>>>,
    free_failures: u32,
    cluster: OnceLock<Arc<pgward_cluster::Cluster>>,
}

/// Default for `[listen] auth_failures_before_delay`.
pub const FREE_FAILURES: u32 = 3;
const WINDOW: Duration = Duration::from_secs(60);
const BASE_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Bound on tracked addresses, so a spray of sources can't grow memory without limit.
const MAX_TRACKED: usize = 100_000;

impl Default for FailureThrottle {
    fn default() -> Self {
        Self::new(FREE_FAILURES)
    }
}

type Recent = HashMap<IpAddr, (u32, Instant)>;

fn lock(m: &Mutex<Recent>) -> std::sync::MutexGuard<'_, Recent> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FailureThrottle {
    pub fn new(free_failures: u32) -> Self {
        Self {
            recent: Arc::new(Mutex::new(HashMap::new())),
            free_failures,
            cluster: OnceLock::new(),
        }
    }

    /// Shares the failure counts with other replicas through `cluster` from now on.
    pub fn share_with(&self, cluster: Arc<pgward_cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// How long an attempt from `ip` must wait now.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        let map = lock(&self.recent);
        match map.get(&ip) {
            Some((n, at)) if at.elapsed() < WINDOW && *n > self.free_failures => {
                let exp = (*n - self.free_failures - 1).min(5);
                (BASE_DELAY * 2u32.pow(exp)).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    pub fn failed(&self, ip: IpAddr) {
        {
            let mut map = lock(&self.recent);
            if map.len() >= MAX_TRACKED {
                map.retain(|_, (_, at)| at.elapsed() < WINDOW);
            }
            let entry = map.entry(ip).or_insert((0, Instant::now()));
            if entry.1.elapsed() >= WINDOW {
                *entry = (0, Instant::now());
            }
            entry.0 += 1;
            entry.1 = Instant::now();
        }
        if let Some(cluster) = self.cluster.get().cloned() {
            let recent = self.recent.clone();
            tokio::spawn(async move {
                if let Ok(n) = cluster.auth_failed(&ip.to_string(), WINDOW).await {
                    let mut map = lock(&recent);
                    if let Some(entry) = map.get_mut(&ip) {
                        entry.0 = entry.0.max(n);
                    }
                }
            });
        }
    }

    pub fn succeeded(&self, ip: IpAddr) {
        let had = lock(&self.recent).remove(&ip).is_some();
        // Only an address that failed here is cleared in the store: a successful sign-in
        // costs no store call.
        if let (true, Some(cluster)) = (had, self.cluster.get().cloned()) {
            tokio::spawn(async move {
                let _ = cluster.auth_cleared(&ip.to_string()).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_grows_after_free_failures_and_resets_on_success() {
        let t = FailureThrottle::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            t.failed(ip);
            assert_eq!(t.delay(ip), Duration::ZERO);
        }
        t.failed(ip);
        assert_eq!(t.delay(ip), BASE_DELAY);
        t.failed(ip);
        assert_eq!(t.delay(ip), BASE_DELAY * 2);
        for _ in 0..20 {
            t.failed(ip);
        }
        assert_eq!(t.delay(ip), MAX_DELAY);
        t.succeeded(ip);
        assert_eq!(t.delay(ip), Duration::ZERO);
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(t.delay(other), Duration::ZERO);
    }
}
