//! One client connection from accept to close, for every upstream kind. The life of a
//! connection, stage by stage (docs/architecture.md):
//!
//! 1. startup phase: TLS, SSLRequest/GSSENCRequest, StartupMessage or CancelRequest
//!    (handshake.rs; a CancelRequest goes to the registry, cancel.rs);
//! 2. setup: sign-in, routing, the policy Gate, startup parameters, limits, the login to run
//!    as (session/setup.rs), every failure answered in one place ([`setup::SetupError`]);
//! 3. the upstream session, by kind: PostgreSQL (session/postgres.rs) or Azure SQL
//!    (session/azure_sql.rs);
//! 4. the audit connect record (fail closed), the cancel registration and the greeting
//!    (here);
//! 5. the relay, by kind (relay.rs, session/azure_sql.rs), which ends with a
//!    [`RelayEnd`];
//! 6. the disconnect record, the end-of-session metrics and log line (here).

mod azure_sql;
mod postgres;
mod setup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgward_upstream::UpstreamKind;
use pgward_wire::build;
use pgward_wire::TxStatus;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, info, warn, Instrument};

use crate::cancel::{Lookup, Target};
use crate::handshake::{self, ClientStartup, Handshake};
use crate::relay::{self, RelayEnd, RelayOutcome};
pub use crate::shared::Shared;
use setup::{Setup, SetupError};

pub async fn handle(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let accepted = Instant::now();
    let timeout = Duration::from_secs(shared.config.listen.startup_timeout_secs);
    let startup = match tokio::time::timeout(timeout, handshake::run(tcp, &shared.handshake)).await
    {
        Err(_) => {
            shared.metrics.error("startup_timeout");
            debug!(%peer, "startup timed out");
            return;
        }
        Ok(Err(e)) => {
            shared.metrics.error(e.kind());
            match &e {
                handshake::HandshakeError::Io(_) => debug!(%peer, error = %e, "startup ended"),
                _ => info!(%peer, error = %e, "startup refused"),
            }
            return;
        }
        Ok(Ok(Handshake::Cancel { pid, secret })) => {
            forward_cancel(pid, &secret, peer, &shared).await;
            return;
        }
        Ok(Ok(Handshake::Session(s))) => *s,
    };
    let id = shared.session_ids.next();
    let span = tracing::info_span!(
        "session",
        session = %id,
        %peer,
        user = %startup.user,
        database = %startup.database,
        tls = startup.stream.is_tls(),
        oid = tracing::field::Empty,
    );
    run_session(startup, peer, accepted, id, &shared)
        .instrument(span)
        .await;
}

async fn forward_cancel(pid: u32, secret: &[u8], peer: SocketAddr, shared: &Shared) {
    match shared.cancels.lookup_from(peer.ip(), pid, secret) {
        Lookup::Found(Target::Postgres { upstream, key }) => match upstream.cancel(&key).await {
            Ok(()) => {
                shared.metrics.cancel("forwarded");
                debug!(pid, upstream = upstream.name(), "cancel forwarded");
            }
            Err(e) => {
                shared.metrics.cancel("failed");
                warn!(pid, error = %e, "cancel could not be forwarded");
            }
        },
        Lookup::Found(Target::Signal(signal)) => {
            // Wakes only a batch that is running: a cancel between batches is a no-op.
            signal.notify_waiters();
            shared.metrics.cancel("forwarded");
            debug!(pid, "cancel signalled to an azure-sql session");
        }
        Lookup::Unknown => {
            if let (Some(cluster), Ok(secret)) = (&shared.cluster, <[u8; 4]>::try_from(secret)) {
                // Maybe another replica's session: passed on through the store, where the
                // replica holding the pid checks the secret. This address's unmatched keys
                // were counted above (`lookup_from`), so a guesser is cut off before the
                // store as before; and each replica passes on at most so many per second.
                if !cluster.is_up() {
                    cluster.metrics.fallback("cancel_local");
                    shared.metrics.cancel("unknown_key");
                    debug!(
                        pid,
                        "cancel with unknown key not passed on: cluster store unreachable"
                    );
                } else if !cluster.allow_remote_cancel() {
                    shared.metrics.cancel("throttled");
                    debug!(
                        pid,
                        "cancel not passed on: too many cancels for other replicas"
                    );
                } else if cluster.send_cancel(pid, &secret).await.is_ok() {
                    shared.metrics.cancel("passed_on");
                    debug!(pid, "cancel passed on to the other replicas");
                } else {
                    shared.metrics.cancel("failed");
                }
                return;
            }
            // Like PostgreSQL: no answer, so a guesser learns nothing.
            shared.metrics.cancel("unknown_key");
            debug!(pid, "cancel with unknown key ignored");
        }
        Lookup::Throttled => {
            shared.metrics.cancel("throttled");
            debug!(%peer, "cancel ignored: too many unknown keys from this address");
        }
    }
}

/// The upstream session of either kind, once open.
enum Opened {
    Postgres(pgward_upstream::UpstreamSession),
    // Boxed: a TDS session is over a kilobyte, a PostgreSQL one a hundred bytes.
    AzureSql(Box<pgward_tds::TdsSession>),
}

async fn run_session(
    startup: ClientStartup,
    peer: SocketAddr,
    accepted: Instant,
    id: String,
    shared: &Shared,
) {
    let mut s = Setup::new(startup, peer, id, shared);
    let mut a = match s.admit().await {
        Ok(a) => a,
        Err(e) => return s.refuse(e).await,
    };
    let opened = match a.upstream.config().kind {
        UpstreamKind::Postgres => postgres::open(
            &mut a,
            &s.client.forwarded,
            s.client.application_name.as_deref(),
            shared,
        )
        .await
        .map(Opened::Postgres),
        UpstreamKind::AzureSql => {
            azure_sql::open(&a, &s.client.user, s.client.application_name.as_deref())
                .await
                .map(|t| Opened::AzureSql(Box::new(t)))
        }
    };
    let opened = match opened {
        Ok(o) => o,
        Err(e) => return s.refuse(e).await,
    };

    // The connect record is written before the client can send anything (fail closed).
    let audit = shared.audit.as_ref().map(|log| log.session(&s.info));
    if let Some(log) = &audit {
        let connect = pgward_audit::Connect {
            upstream: Some(a.upstream.name()),
            upstream_role: a.upstream_role.as_deref(),
        };
        if let Err(e) = log.connect(&connect).await {
            if let Opened::AzureSql(tds) = opened {
                tds.close().await;
            }
            return s.refuse(SetupError::Audit(e.to_string())).await;
        }
    }

    // One cancel registry for every kind: a PostgreSQL key is forwarded upstream, an Azure
    // SQL session is woken to send an attention.
    let signal = matches!(opened, Opened::AzureSql(_)).then(|| Arc::new(Notify::new()));
    let (registration, parameters, tx) = match &opened {
        Opened::Postgres(session) => (
            session
                .key
                .clone()
                .map(|key| shared.cancels.register(a.upstream.clone(), key)),
            session.parameters.clone(),
            session.tx_status,
        ),
        Opened::AzureSql(_) => (
            signal.clone().map(|n| shared.cancels.register_signal(n)),
            azure_sql::greeting_parameters(s.client.application_name.as_deref())
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            TxStatus::Idle,
        ),
    };
    let mut greeting = BytesMut::with_capacity(512);
    build::authentication_ok(&mut greeting);
    for (k, v) in &parameters {
        build::parameter_status(&mut greeting, k, v);
    }
    if let Some(r) = &registration {
        build::backend_key_data(&mut greeting, r.pid, &r.secret);
    }
    build::ready_for_query(&mut greeting, tx);
    if let Err(e) = s.client.stream.write_all(&greeting).await {
        shared.metrics.error("client_gone");
        debug!(error = %e, "client left before the greeting");
        if let Opened::AzureSql(tds) = opened {
            tds.close().await;
        }
        return;
    }
    let _ = s.client.stream.flush().await;
    shared
        .metrics
        .handshake_seconds
        .observe(accepted.elapsed().as_secs_f64());
    info!(
        application_name = s.client.application_name.as_deref().unwrap_or(""),
        direct_tls = s.client.direct_tls,
        upstream = a.upstream.name(),
        kind = ?a.upstream.config().kind,
        "session started"
    );

    shared.metrics.sessions_active.inc();
    let started = Instant::now();
    let trail = audit
        .as_ref()
        .map(|log| crate::trail::Trail::new(log.clone()));
    let ClientStartup { stream, buf, .. } = s.client;
    let outcome: RelayOutcome = match opened {
        Opened::Postgres(session) => {
            let params = relay::RelayParams {
                tx,
                expires_at: a.expires_at.map(|t| (t, shared.timers.clone())),
                max_message_bytes: shared.config.listen.max_message_bytes,
                gate: a.gate.take(),
                trail,
                nonce: random_nonce(),
                permit: a.permit.take(),
                client_encoding: String::new(),
            };
            postgres::relay(stream, buf, session, params, &a, shared).await
        }
        Opened::AzureSql(tds) => {
            let params = azure_sql::RelayParams {
                gate: a.gate.take(),
                trail,
                permit: a.permit.take(),
                database: a.upstream_database.clone(),
                signal: signal.unwrap_or_default(),
                expires_at: a.expires_at,
            };
            azure_sql::relay(stream, buf, *tds, params, shared).await
        }
    };
    shared.metrics.sessions_active.dec();
    drop(registration);

    let t = outcome.totals;
    let reason = end_reason(&outcome.end);
    if let Some(log) = &audit {
        let d = pgward_audit::Disconnect {
            duration_us: started.elapsed().as_micros() as u64,
            statements: outcome.recorded,
            bytes_in: t.bytes_to_upstream,
            bytes_out: t.bytes_to_client,
            reason: Some(&reason),
        };
        if let Err(e) = log.disconnect(&d).await {
            warn!(error = %e, "audit: could not record the disconnect");
        }
    }
    if let Some(kind) = outcome.end.error_kind() {
        shared.metrics.error(kind);
    }
    info!(
        reason,
        duration_ms = started.elapsed().as_millis() as u64,
        bytes_to_upstream = t.bytes_to_upstream,
        bytes_to_client = t.bytes_to_client,
        messages_to_upstream = t.messages_to_upstream,
        messages_to_client = t.messages_to_client,
        "session ended"
    );
}

fn end_reason(end: &RelayEnd) -> String {
    match end {
        RelayEnd::ClientTerminated => "client terminated".to_owned(),
        RelayEnd::ClientGone(e) => format!("client gone{}", fmt_err(e)),
        RelayEnd::ClientProtocol(e) => format!("client protocol violation: {e}"),
        RelayEnd::UpstreamGone(e) => format!("upstream gone{}", fmt_err(e)),
        RelayEnd::UpstreamProtocol(e) => format!("upstream protocol violation: {e}"),
        RelayEnd::Shutdown => "shutdown".to_owned(),
        RelayEnd::TokenExpired => "token expired".to_owned(),
        RelayEnd::AuditFailed(e) => format!("audit record could not be written: {e}"),
    }
}

/// Per-session secret in the marker of replaced statements, so a client can't forge
/// the error that pgward rewrites into a denial.
fn random_nonce() -> String {
    let mut b = [0u8; 8];
    // The OS RNG failing is not recoverable in a security proxy.
    getrandom::fill(&mut b).expect("OS random number generator unavailable");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn fmt_err(e: &Option<std::io::Error>) -> String {
    e.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
}
