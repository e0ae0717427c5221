//! One client connection from accept to close: startup phase, routing, sign-in,
//! upstream session, greeting, relay, cleanup.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgward_upstream::Upstream;
use pgward_wire::build::{self, Severity};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::auth::{self, ClientAuth, FailureThrottle};
use crate::cancel::{CancelRegistry, Lookup, Target};
use crate::config::Config;
use crate::enforce::{Gate, PolicyStore};
use crate::handshake::{self, ClientStartup, Handshake, HandshakeConfig};
use crate::metrics::Metrics;
use crate::relay::{self, RelayEnd};
use crate::stream::ClientStream;

/// Everything sessions share, built once by the server.
pub struct Shared {
    pub config: Config,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub handshake: HandshakeConfig,
    pub cancels: Arc<CancelRegistry>,
    pub metrics: Arc<Metrics>,
    pub auth: ClientAuth,
    pub throttle: FailureThrottle,
    pub policy: Option<Arc<PolicyStore>>,
    /// The upstream databases' own catalogs, which the policy resolves names against.
    pub catalogs: Arc<crate::catalogs::ServerCatalogs>,
    /// pgward's own connections that record callers (`[[upstreams]] identity_table`).
    pub callers: crate::caller_identity::CallerIdentities,
    pub audit: Option<pgward_audit::AuditLog>,
    /// Numbers sessions for the audit log.
    pub next_session: std::sync::atomic::AtomicU64,
    /// Fired when the drain deadline passes: sessions still open are ended.
    pub hard_stop: CancellationToken,
    /// Per-identity and per-role limits.
    pub limiter: Arc<crate::limits::Limiter>,
}

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
    let span = tracing::info_span!(
        "session",
        %peer,
        user = %startup.user,
        database = %startup.database,
        tls = startup.stream.is_tls(),
        oid = tracing::field::Empty,
    );
    run_session(startup, peer, accepted, &shared)
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

async fn refuse(stream: &mut ClientStream, code: &str, message: &str) {
    let mut out = BytesMut::new();
    build::error_response(&mut out, Severity::Fatal, code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// The upstream StartupMessage parameters: the client's vetted ones, plus the caller's
/// identity. Startup parameters are the session's defaults, so RESET, RESET ALL and DISCARD
/// ALL (which the policy may allow) return to them; SET of any of them is refused by the
/// policy. `pgward.*` are set only for a verified identity; with a policy, the session's
/// search_path is the policy's.
fn upstream_startup_params(
    forwarded: &[(String, String)],
    principal: &pgward_policy::Principal,
    client_application_name: Option<&str>,
    identity: Option<&pgward_entra::Identity>,
    proxy_roles: &[String],
    upstream_role: Option<&str>,
    policy_search_path: Option<String>,
) -> Vec<(String, String)> {
    // Startup packet strings are NUL-terminated; a claim can't be allowed to cut one short.
    let clean = |v: &str| v.replace('\0', "");
    let mut params: Vec<(String, String)> = forwarded
        .iter()
        .filter(|(k, _)| {
            let replaced = k.eq_ignore_ascii_case("application_name")
                || (upstream_role.is_some() && k.eq_ignore_ascii_case("role"));
            !replaced
        })
        .cloned()
        .collect();
    // PostgreSQL keeps 63 bytes of application_name; the caller goes first so it survives.
    let app =
        pgward_policy::caller_application_name(principal.caller_name(), client_application_name);
    params.push(("application_name".to_owned(), clean(&app)));
    if let Some(id) = identity {
        params.push(("pgward.oid".to_owned(), clean(&id.oid)));
        params.push(("pgward.tid".to_owned(), clean(&id.tid)));
        params.push(("pgward.upn".to_owned(), clean(&principal.upn)));
        params.push(("pgward.roles".to_owned(), clean(&proxy_roles.join(","))));
        params.push((
            "pgward.appid".to_owned(),
            clean(id.appid.as_deref().unwrap_or("")),
        ));
    }
    // The role's upstream_role becomes the session's default role, so RESET ROLE returns to it.
    if let Some(r) = upstream_role {
        params.push(("role".to_owned(), clean(r)));
    }
    // The path pgward resolves names with, unless the client set one (which the policy
    // allowed and tracks).
    if let Some(path) = policy_search_path {
        if !params
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("search_path"))
        {
            params.push(("search_path".to_owned(), clean(&path)));
        }
    }
    params
}

async fn run_session(startup: ClientStartup, peer: SocketAddr, accepted: Instant, shared: &Shared) {
    let ClientStartup {
        mut stream,
        mut buf,
        user,
        database,
        application_name,
        forwarded,
        direct_tls,
    } = startup;

    let session_id = shared
        .next_session
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .to_string();
    let mut info = pgward_audit::SessionInfo {
        session: session_id,
        client: pgward_audit::Client {
            addr: peer.to_string(),
            user: Some(user.clone()),
            application_name: application_name.clone(),
            tls: stream.is_tls(),
            tls_version: None,
        },
        identity: None,
        database: Some(database.clone()),
    };
    // Connection attempts that fail are recorded with their exact reason.
    let record_failure = |info: &pgward_audit::SessionInfo, reason: String| {
        let append = shared
            .audit
            .as_ref()
            .map(|log| log.session(info).auth_failed(&reason));
        async move {
            if let Some(a) = append {
                if let Err(e) = a.await {
                    warn!(error = %e, "audit: could not record a failed connection");
                }
            }
        }
    };

    let identity = match &shared.auth {
        ClientAuth::Unauthenticated => None,
        ClientAuth::Entra(validator) => {
            let ip = peer.ip();
            let wait = shared.throttle.delay(ip);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            match auth::sign_in(validator, &mut stream, &mut buf, &user).await {
                Ok(identity) => {
                    shared.throttle.succeeded(ip);
                    shared.metrics.auth("ok");
                    Some(identity)
                }
                Err(e) => {
                    shared.metrics.auth(e.label());
                    if matches!(e, auth::AuthFailure::ClientGone) {
                        debug!("client left during sign-in");
                        return;
                    }
                    shared.throttle.failed(ip);
                    warn!(reason = %e, "sign-in refused");
                    record_failure(&info, e.to_string()).await;
                    refuse(&mut stream, e.sqlstate(), &e.client_message(&user)).await;
                    return;
                }
            }
        }
    };
    // Routing comes after sign-in, as in PostgreSQL: an unauthenticated client can't
    // probe which database names exist.
    let Some(route) = shared.config.route(&database) else {
        shared.metrics.error("unknown_database");
        info!("refused: no route for database");
        record_failure(&info, format!("no route for database \"{database}\"")).await;
        refuse(
            &mut stream,
            "3D000",
            &format!("database \"{database}\" does not exist"),
        )
        .await;
        return;
    };
    let Some(upstream) = shared.upstreams.get(&route.upstream).cloned() else {
        // `check` rejects such configs; keep the session safe anyway.
        refuse(&mut stream, "08006", "route names an unknown upstream").await;
        return;
    };

    let expires_at = identity.as_ref().map(|id| {
        let grace = match &shared.auth {
            ClientAuth::Entra(v) => v.config().expiry_grace(),
            ClientAuth::Unauthenticated => Duration::ZERO,
        };
        tokio::time::Instant::now() + id.session_remaining(std::time::SystemTime::now(), grace)
    });
    if let Some(id) = &identity {
        tracing::Span::current().record("oid", id.oid.as_str());
    }

    // Without sign-in (development mode) the user name stands in for the identity.
    let principal = match &identity {
        Some(id) => pgward_policy::Principal {
            oid: id.oid.clone(),
            // A managed identity has no UPN; its name (what it signs in as) stands in.
            upn: id
                .upn
                .clone()
                .or_else(|| id.mi_name.clone())
                .unwrap_or_default(),
            groups: id.groups.clone(),
            app_roles: id.roles.clone(),
        },
        None => pgward_policy::Principal {
            oid: user.clone(),
            upn: user.clone(),
            groups: Vec::new(),
            app_roles: Vec::new(),
        },
    };
    let mut gate = shared.policy.as_ref().map(|store| {
        Gate::new(store.clone(), principal.clone()).with_metrics(shared.metrics.clone())
    });
    if let Some(g) = gate.as_mut() {
        // Startup parameters are settings too: the policy decides them like SET.
        for (name, value) in &forwarded {
            if let Err(denial) = g.check_startup_setting(name, value) {
                shared.metrics.error("policy_startup_parameter");
                info!(parameter = %name, rule = %denial.rule, "startup parameter denied by policy");
                record_failure(
                    &info,
                    format!("startup parameter {name} denied by rule {}", denial.rule),
                )
                .await;
                refuse(&mut stream, "42501", &denial.message()).await;
                return;
            }
        }
        info!(roles = ?g.role_names(), "policy roles");
    }

    // The session's audit context, now that the identity is known. Its connect record is
    // written before the client can send anything (fail-closed).
    info.identity = identity.as_ref().map(|id| pgward_audit::Identity {
        oid: Some(id.oid.clone()),
        tid: Some(id.tid.clone()),
        upn: id.upn.clone(),
        appid: id.appid.clone(),
        roles: gate
            .as_ref()
            .map(|g| g.role_names().to_vec())
            .unwrap_or_default(),
    });
    // Per-identity and per-role limits, before anything is opened upstream.
    let limit_key = identity
        .as_ref()
        .map_or(user.as_str(), |id| id.oid.as_str());
    let permit = match shared.limiter.admit(
        limit_key,
        gate.as_ref().map(Gate::role_names).unwrap_or_default(),
    ) {
        Ok(p) => p,
        Err(refusal) => {
            shared.metrics.error(refusal.label());
            info!(limit = refusal.label(), "refused: connection limit");
            record_failure(&info, refusal.message()).await;
            refuse(&mut stream, "53300", &refusal.message()).await;
            return;
        }
    };
    let upstream_role = gate.as_ref().and_then(Gate::upstream_role);
    // The second wall: a role with a login of its own signs in as it (no role to SET ROLE
    // back to); otherwise pgward's login runs SET ROLE to it, or runs as itself.
    let role_login = upstream_role
        .as_deref()
        .filter(|r| upstream.has_role_login(r))
        .map(str::to_owned);
    if upstream.config().require_role_login && role_login.is_none() {
        shared.metrics.error("no_role_login");
        let message = match &upstream_role {
            Some(r) => format!("upstream {:?} requires a login of its own for upstream_role {r:?}, and none is configured (require_role_login)", upstream.name()),
            None => format!("upstream {:?} requires every session to run as its policy role's own login, and none of your roles names an upstream_role (require_role_login)", upstream.name()),
        };
        info!("refused: {message}");
        record_failure(&info, message.clone()).await;
        refuse(&mut stream, "42501", &message).await;
        return;
    }
    let upstream_params = upstream_startup_params(
        &forwarded,
        &principal,
        application_name.as_deref(),
        identity.as_ref(),
        gate.as_ref().map(Gate::role_names).unwrap_or_default(),
        upstream_role.as_deref().filter(|_| role_login.is_none()),
        gate.as_ref().map(Gate::search_path_setting),
    );
    if upstream.config().kind == pgward_upstream::UpstreamKind::AzureSql {
        let start = crate::tds_session::Start {
            stream,
            buf,
            accepted,
            upstream: upstream.clone(),
            database: route.upstream_database().to_owned(),
            gate,
            identity: identity.as_ref(),
            user: &user,
            application_name: application_name.as_deref(),
            info: &info,
            expires_at,
        };
        crate::tds_session::run(start, shared).await;
        return;
    }
    // The policy resolves names against this database's own catalog; without it nothing
    // can be decided, so the session is refused (fail closed).
    if let Some(g) = gate.take() {
        match shared
            .catalogs
            .handle(&upstream, route.upstream_database())
            .await
        {
            Ok(h) => gate = Some(g.with_catalog(h)),
            Err(e) => {
                shared.metrics.error("upstream_catalog");
                warn!(error = %e, "cannot read the upstream catalog; refusing the session");
                record_failure(&info, e.clone()).await;
                refuse(
                    &mut stream,
                    "08006",
                    "pgward cannot read the upstream database's catalog, which its policy needs",
                )
                .await;
                return;
            }
        }
    }
    let session = match upstream
        .connect_as(
            route.upstream_database(),
            &upstream_params,
            role_login.as_deref(),
        )
        .await
    {
        Ok(s) => s,
        Err(e) => {
            shared.metrics.error("upstream_connect");
            warn!(error = %e, "upstream connect failed");
            record_failure(&info, e.to_string()).await;
            refuse(&mut stream, e.sqlstate(), &e.client_message()).await;
            return;
        }
    };
    // The caller, where no statement of the session can rewrite it, before its first one.
    if upstream.config().identity_table {
        let recorded = match (&session.key, &identity) {
            (Some(key), Some(id)) => {
                let login = role_login
                    .as_deref()
                    .unwrap_or_else(|| upstream.credential().user());
                let caller = crate::caller_identity::Caller {
                    oid: &id.oid,
                    tid: &id.tid,
                    upn: &principal.upn,
                    appid: id.appid.as_deref().unwrap_or(""),
                    roles: gate.as_ref().map(Gate::role_names).unwrap_or_default(),
                };
                shared
                    .callers
                    .record(
                        &upstream,
                        route.upstream_database(),
                        key.pid,
                        login,
                        &caller,
                    )
                    .await
            }
            (None, _) => {
                Err("the upstream sent no backend key, so its backend cannot be named".into())
            }
            (_, None) => Err("no verified identity to record".into()),
        };
        if let Err(e) = recorded {
            shared.metrics.error("caller_identity");
            warn!(error = %e, "cannot record the caller on the upstream; refusing the session");
            record_failure(&info, e).await;
            refuse(
                &mut stream,
                "08006",
                "pgward cannot record your identity on the upstream database",
            )
            .await;
            return;
        }
    }

    let audit = shared.audit.as_ref().map(|log| log.session(&info));
    if let Some(a) = &audit {
        let connect = pgward_audit::Connect {
            upstream: Some(upstream.name()),
            upstream_role: upstream_role.as_deref(),
        };
        if let Err(e) = a.connect(&connect).await {
            warn!(error = %e, "audit: cannot record the connection; refusing it");
            refuse(&mut stream, "58030", "pgward cannot write its audit log").await;
            return;
        }
    }

    let registration = session
        .key
        .clone()
        .map(|key| shared.cancels.register(upstream.clone(), key));
    let mut greeting = BytesMut::with_capacity(512);
    build::authentication_ok(&mut greeting);
    for (k, v) in &session.parameters {
        build::parameter_status(&mut greeting, k, v);
    }
    if let Some(r) = &registration {
        build::backend_key_data(&mut greeting, r.pid, &r.secret);
    }
    build::ready_for_query(&mut greeting, session.tx_status);
    if let Err(e) = stream.write_all(&greeting).await {
        debug!(error = %e, "client left before the greeting");
        return;
    }
    let _ = stream.flush().await;
    shared
        .metrics
        .handshake_seconds
        .observe(accepted.elapsed().as_secs_f64());
    info!(
        application_name = application_name.as_deref().unwrap_or(""),
        direct_tls,
        upstream = upstream.name(),
        "session started"
    );

    shared.metrics.sessions_active.inc();
    let started = Instant::now();
    let upstream_key = session.key.clone();
    let trail = audit.as_ref().map(|a| crate::trail::Trail::new(a.clone()));
    let params = relay::RelayParams {
        tx: session.tx_status,
        expires_at,
        max_message_bytes: shared.config.listen.max_message_bytes,
        gate,
        trail,
        nonce: random_nonce(),
        permit: Some(permit),
        // What the server reported at startup (the client's startup parameter, or the
        // database's default): the encoding of the first statement.
        client_encoding: session
            .parameters
            .iter()
            .find(|(k, _)| k == "client_encoding")
            .map_or_else(|| "UTF8".to_owned(), |(_, v)| v.clone()),
    };
    let outcome = relay::run(
        stream,
        session.stream,
        buf,
        params,
        &shared.metrics,
        &shared.hard_stop,
    )
    .await;
    shared.metrics.sessions_active.dec();
    drop(registration);

    if outcome.upstream_busy {
        // The client is gone but its statement may still run upstream: cancel it so the
        // backend is not left working for nobody.
        if let Some(key) = upstream_key {
            if let Err(e) = upstream.cancel(&key).await {
                warn!(error = %e, "could not cancel the orphaned upstream query");
            }
        }
    }
    if let Some(a) = &audit {
        let t = outcome.totals;
        let reason = end_reason(&outcome.end);
        let d = pgward_audit::Disconnect {
            duration_us: started.elapsed().as_micros() as u64,
            statements: outcome.recorded,
            bytes_in: t.bytes_to_upstream,
            bytes_out: t.bytes_to_client,
            reason: Some(&reason),
        };
        if let Err(e) = a.disconnect(&d).await {
            warn!(error = %e, "audit: could not record the disconnect");
        }
    }
    if let Some(kind) = outcome.end.error_kind() {
        shared.metrics.error(kind);
    }
    let t = outcome.totals;
    let reason = end_reason(&outcome.end);
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
