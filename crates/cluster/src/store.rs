//! What every store backend provides (pg.rs, redis.rs), and the small types the calls carry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unreachable (reconnecting in the background)")]
    Down,
    #[error("the store did not answer within {0} ms")]
    Timeout(u64),
    #[error("{0}")]
    Failed(String),
}

impl StoreError {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Timeout(_) => "timeout",
            Self::Failed(_) => "failed",
        }
    }
}

/// A capped count: every session of `key` takes one of `limit` slots.
#[derive(Debug, Clone)]
pub struct Scope {
    pub key: String,
    pub limit: u32,
}

/// One slot held in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotId {
    pub scope: String,
    pub n: u64,
}

/// A statement-rate lease: tokens taken from the shared bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease {
    pub granted: f64,
    /// When the bucket was short: how long until it holds a whole token again.
    pub wait: Duration,
}

/// Takes a cancel passed on by another replica: the (pid, secret) its client sent. True when
/// a session of this replica matched both (and was cancelled).
pub type CancelSink = Arc<dyn Fn(u32, [u8; 4]) -> bool + Send + Sync>;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend stores. Every method is bounded by the caller (`Cluster::call`).
pub(crate) trait Store: Send + Sync {
    /// Whether the store connection is up (calls fail fast with `Down` otherwise).
    fn is_up(&self) -> bool;
    /// Drops the connection after a call was abandoned mid-way; it is opened again in the
    /// background.
    fn reset(&self);
    /// Claims the instance name; false when a live replica holds it.
    fn claim(&self) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Renews the claim and leases; returns the replicas alive.
    fn heartbeat(&self) -> BoxFuture<'_, Result<u32, StoreError>>;
    fn acquire<'a>(
        &'a self,
        scopes: &'a [Scope],
    ) -> BoxFuture<'a, Result<Result<Vec<SlotId>, usize>, StoreError>>;
    fn release(&self, ids: Vec<SlotId>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Forgets slots locally, without a store call.
    fn forget(&self, ids: &[SlotId]);
    fn lease<'a>(
        &'a self,
        key: &'a str,
        rate: f64,
        burst: f64,
        want: f64,
    ) -> BoxFuture<'a, Result<Lease, StoreError>>;
    /// Counts a failed sign-in from `addr`; returns the failures in the current window.
    fn auth_failed<'a>(
        &'a self,
        addr: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<u32, StoreError>>;
    fn auth_cleared<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    fn send_cancel<'a>(&'a self, message: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// `pid secret-hex sender`: what a cancel broadcast carries.
pub(crate) fn cancel_message(pid: u32, secret: &[u8; 4], sender: &str) -> String {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    format!("{pid} {hex} {sender}")
}

/// The (pid, secret) of a cancel broadcast, unless this replica sent it.
pub(crate) fn parse_cancel(message: &str, me: &str) -> Option<(u32, [u8; 4])> {
    let mut parts = message.splitn(3, ' ');
    let pid = parts.next()?.parse().ok()?;
    let hex = parts.next()?;
    let sender = parts.next()?;
    if sender == me || hex.len() != 8 {
        return None;
    }
    let mut secret = [0u8; 4];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((pid, secret))
}

pub(crate) fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    // The OS RNG failing is not recoverable in a security proxy.
    getrandom::fill(&mut b).expect("OS random number generator unavailable");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Backoff between reconnects: 250 ms doubling to 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    (Duration::from_millis(250) * 2u32.pow(attempt.min(5))).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_messages_round_trip_and_skip_their_sender() {
        let m = cancel_message(4242, &[0xde, 0xad, 0x00, 0x01], "pgward-a");
        assert_eq!(m, "4242 dead0001 pgward-a");
        assert_eq!(
            parse_cancel(&m, "pgward-b"),
            Some((4242, [0xde, 0xad, 0, 1]))
        );
        assert_eq!(parse_cancel(&m, "pgward-a"), None);
        assert_eq!(parse_cancel("1 dead00 x", "y"), None);
        assert_eq!(parse_cancel("x dead0001 x", "y"), None);
        assert_eq!(parse_cancel("1 zzzz0001 x", "y"), None);
    }
}
