//! The listener: accepts clients within the connection limit, runs a session task for
//! each, reloads TLS on request, and on shutdown stops accepting, drains sessions up
//! to the configured deadline, then ends those still open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgward_upstream::Upstream;
use pgward_wire::build::{self, Severity};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, Readiness};
use crate::auth::{ClientAuth, FailureThrottle};
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::enforce::PolicyStore;
use crate::handshake::HandshakeConfig;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::session;
use crate::shared::{SessionIds, Shared};
use crate::tls::TlsSettings;
use crate::workers::Workers;

/// Controls for a running server, used by the binary's signal handlers and by tests.
#[derive(Clone)]
pub struct ServerHandle {
    drain: CancellationToken,
    tls: Arc<TlsSettings>,
    policy: Option<Arc<PolicyStore>>,
    limiter: Arc<Limiter>,
    /// The configuration file, re-read on reload for the sections that apply live.
    config_path: Option<std::path::PathBuf>,
}

impl ServerHandle {
    /// Stop accepting and drain (SIGTERM / SIGINT).
    pub fn shutdown(&self) {
        self.drain.cancel();
    }

    /// Reloads re-read `path` for the sections that apply without a restart.
    pub fn reloading_from(mut self, path: &std::path::Path) -> Self {
        self.config_path = Some(path.to_owned());
        self
    }

    /// Re-read the TLS certificate and key, the policy and (with `reloading_from`) the
    /// configuration's `[limits]` (SIGHUP). Sessions stay open. What fails to load is logged
    /// and the previous version stays in use.
    pub fn reload(&self) {
        if let Some(p) = &self.policy {
            p.reload();
        }
        if let Some(path) = &self.config_path {
            match Config::load(path) {
                Ok(c) => {
                    let problems = c.limits.problems();
                    if problems.is_empty() {
                        self.limiter.replace(c.limits);
                        info!("limits reloaded");
                    } else {
                        error!(problems = %problems.join("; "), "[limits] not reloaded; keeping the previous limits");
                    }
                }
                Err(e) => {
                    error!(error = %e, "configuration not reloaded; keeping the previous one")
                }
            }
        }
        match self.tls.reload() {
            Ok(true) => info!("TLS certificate reloaded"),
            Ok(false) => {}
            Err(e) => error!(error = %e, "TLS reload failed; keeping the previous certificate"),
        }
    }
}

pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    local_addr: SocketAddr,
    admin: Option<(TcpListener, SocketAddr)>,
    readiness: Arc<Readiness>,
    handle: ServerHandle,
    workers: Workers,
}

impl Server {
    /// Validates the configuration, binds the listeners and prepares upstreams. Nothing
    /// is accepted until `run`.
    pub async fn bind(config: Config) -> Result<Self, String> {
        let worker_count = config.listen.worker_threads;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(format!(
                "invalid configuration:\n  {}",
                problems.join("\n  ")
            ));
        }
        if config.listen.allow_plaintext {
            warn!("allow_plaintext = true: clients may connect without TLS (development only)");
        }
        if config.listen.allow_unauthenticated {
            warn!("allow_unauthenticated = true: clients are not signed in (development only)");
        }
        let tls = Arc::new(TlsSettings::new(
            config.listen.tls_cert.as_deref(),
            config.listen.tls_key.as_deref(),
        )?);
        let mut upstreams = HashMap::new();
        for u in &config.upstreams {
            upstreams.insert(u.name.clone(), Arc::new(Upstream::new(u.clone())?));
        }
        let credentials = start_credentials(&upstreams).await;
        let addr = config.listen_addr()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| format!("listener address: {e}"))?;
        let admin = match &config.admin {
            Some(a) => Some(admin::bind(&a.addr).await?),
            None => None,
        };
        let handshake = HandshakeConfig::new(
            tls.clone(),
            config.listen.allow_plaintext,
            &config.listen.allowed_startup_parameters,
        );
        let (auth, validator) = match &config.entra {
            Some(entra) => {
                let http = pgward_entra::default_http_client()
                    .map_err(|e| format!("[entra] HTTP client: {e}"))?;
                let v = pgward_entra::Validator::start_with_graph(
                    entra.clone(),
                    http,
                    graph_tokens(entra)?,
                )
                .await
                .map_err(|e| format!("[entra] {e}"))?;
                (ClientAuth::Entra(v.clone()), Some(v))
            }
            None => (ClientAuth::Unauthenticated, None),
        };
        let throttle = FailureThrottle::new(config.listen.auth_failures_before_delay);
        let instance = instance_name();
        let cancels = Arc::new(CancelRegistry::default());
        // Claimed before the audit log opens: a duplicate name never writes a record.
        let cluster = match &config.cluster {
            Some(c) => Some(
                pgward_cluster::Cluster::start(c.clone(), &instance, remote_cancels(&cancels))
                    .await
                    .map_err(|e| format!("[cluster] {e}"))?,
            ),
            None => None,
        };
        if let Some(c) = &cluster {
            throttle.share_with(c.clone());
        }
        let policy = match &config.policy {
            Some(p) => Some(Arc::new(PolicyStore::open(&p.file, p)?)),
            None => None,
        };
        let audit = match &config.audit {
            Some(a) => Some(
                pgward_audit::AuditLog::open(a, &instance)
                    .map_err(|e| format!("[audit] cannot open the audit log: {e}"))?,
            ),
            None => None,
        };
        let limiter = Limiter::new(config.limits.clone());
        if let Some(c) = &cluster {
            limiter.share_with(c.clone());
        }
        let catalogs = crate::catalogs::ServerCatalogs::new(Duration::from_secs(
            config
                .policy
                .as_ref()
                .map_or(60, |p| p.catalog_refresh_secs.max(1)),
        ));
        if let Some(p) = &policy {
            catalogs.want_columns(p.current().has_any_masks());
        }
        let audit_for_metrics = audit.clone();
        let audit_for_readiness = audit.clone();
        let shared = Arc::new(Shared {
            limiter: limiter.clone(),
            audit,
            session_ids: SessionIds::new(),
            config,
            auth,
            throttle,
            policy: policy.clone(),
            catalogs,
            callers: Default::default(),
            upstreams,
            handshake,
            cancels,
            metrics: {
                let mut m = Metrics::new();
                if let Some(c) = &cluster {
                    m.register_cluster(&c.metrics);
                }
                m.watch_credentials(credentials.clone());
                m.watch_audit(audit_for_metrics);
                m.watch_policy_cache(policy.clone().map(|store| {
                    Box::new(move || store.cache_bytes()) as crate::metrics::CacheSize
                }));
                Arc::new(m)
            },
            hard_stop: CancellationToken::new(),
            cluster,
            timers: tokio::runtime::Handle::current(),
        });
        let workers = Workers::start(worker_count)
            .map_err(|e| format!("cannot start the session workers: {e}"))?;
        Ok(Self {
            workers,
            shared,
            listener,
            local_addr,
            admin,
            readiness: Arc::new(
                Readiness::new(validator)
                    .with_credentials(credentials)
                    .with_audit(audit_for_readiness),
            ),
            handle: ServerHandle {
                drain: CancellationToken::new(),
                tls,
                policy,
                limiter,
                config_path: None,
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, a)| *a)
    }

    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Serves until `ServerHandle::shutdown`, then drains.
    pub async fn run(self) {
        let Server {
            shared,
            listener,
            local_addr,
            admin,
            readiness,
            handle,
            workers,
        } = self;
        let admin_stop = CancellationToken::new();
        if let Some((l, a)) = admin {
            info!(addr = %a, "admin endpoint listening");
            tokio::spawn(admin::serve(
                l,
                shared.metrics.clone(),
                readiness.clone(),
                admin_stop.clone(),
            ));
        }
        if let (Some(store), Some(cfg)) = (&shared.policy, &shared.config.policy) {
            if cfg.watch_secs > 0 {
                tokio::spawn(store.clone().watch(Duration::from_secs(cfg.watch_secs)));
            }
            // Read each routed database's catalog now, so the first session need not wait;
            // one that cannot be read yet is read by the first session (or refuses it).
            for route in &shared.config.routes {
                let Some(upstream) = shared.upstreams.get(&route.upstream).cloned() else {
                    continue;
                };
                if upstream.config().kind != pgward_upstream::UpstreamKind::Postgres {
                    continue;
                }
                let catalogs = shared.catalogs.clone();
                let database = route.upstream_database().to_owned();
                tokio::spawn(async move {
                    if let Err(e) = catalogs.handle(&upstream, &database).await {
                        warn!(error = %e, "upstream catalog not read at start; the first session will try again");
                    }
                });
            }
        }
        if shared
            .config
            .policy
            .as_ref()
            .is_some_and(|p| p.apply_grants)
        {
            tokio::spawn(keep_grants_applied(shared.clone()));
        }
        let limit = Arc::new(Semaphore::new(shared.config.listen.max_connections));
        let tracker = TaskTracker::new();
        readiness.set_serving(true);
        info!(addr = %local_addr, "pgward listening");

        loop {
            let (tcp, peer) = tokio::select! {
                () = handle.drain.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            match limit.clone().try_acquire_owned() {
                Ok(permit) => {
                    shared.metrics.connection("accepted");
                    let shared = shared.clone();
                    // Counted by the tracker from now on, though it starts on the worker.
                    let tracked = tracker.token();
                    workers.spawn_session(tcp, move |tcp| async move {
                        session::handle(tcp, peer, shared).await;
                        drop(permit);
                        drop(tracked);
                    });
                }
                Err(_) => {
                    shared.metrics.connection("refused_limit");
                    tokio::spawn(refuse_over_limit(tcp));
                }
            }
        }

        // Draining: refuse new clients, let sessions finish until the deadline.
        readiness.set_serving(false);
        drop(listener);
        tracker.close();
        let deadline = Duration::from_secs(shared.config.listen.drain_timeout_secs);
        info!(
            sessions = tracker.len(),
            deadline_secs = deadline.as_secs(),
            "draining"
        );
        if tokio::time::timeout(deadline, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                sessions = tracker.len(),
                "drain deadline passed; ending remaining sessions"
            );
            shared.hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
        }
        admin_stop.cancel();
        if let Some(a) = &shared.audit {
            if let Err(e) = a.close("shutdown").await {
                error!(error = %e, "audit: could not record audit_stop");
            }
        }
        info!("pgward stopped");
    }
}

/// How long startup waits for the upstream credentials' first tokens. Serving starts
/// either way: sessions then get 08001 until a token arrives, and /readyz says why.
const CREDENTIAL_STARTUP_WAIT: Duration = Duration::from_secs(5);

/// pgward's own credential for Microsoft Graph, when `groups_overage = "graph"`: the token
/// source refreshes in the background like the upstream ones.
fn graph_tokens(
    entra: &pgward_entra::EntraConfig,
) -> Result<Option<Arc<dyn pgward_entra::GraphTokenSource>>, String> {
    let (pgward_entra::GroupsOverage::Graph, Some(table)) =
        (&entra.groups_overage, &entra.graph_credential)
    else {
        return Ok(None);
    };
    let cfg = pgward_upstream::CredentialConfig::for_service(&table.0, "[entra] graph_credential")?;
    let scope = format!("{}/.default", entra.graph_endpoint.trim_end_matches('/'));
    let source = pgward_upstream::TokenSource::new("graph", &cfg, &scope)?;
    source.start();
    Ok(Some(Arc::new(GraphTokens(source))))
}

struct GraphTokens(pgward_upstream::TokenSource);

impl pgward_entra::GraphTokenSource for GraphTokens {
    fn graph_token(
        &self,
    ) -> pgward_entra::BoxFuture<'_, Result<String, pgward_entra::GraphTokenError>> {
        Box::pin(async move {
            match self.0.current().await {
                Ok(token) => Ok(token.expose().to_owned()),
                Err(e) => Err(Box::new(e) as pgward_entra::GraphTokenError),
            }
        })
    }
}

/// Starts every upstream credential's background refresh and waits (bounded, all at
/// once) for their first tokens.
async fn start_credentials(
    upstreams: &HashMap<String, Arc<Upstream>>,
) -> Vec<(String, pgward_upstream::TokenSource)> {
    // pgward's own credential per upstream, and each role login's (`name/role`).
    let list: Vec<_> = upstreams
        .iter()
        .flat_map(|(name, u)| {
            std::iter::once((name.clone(), u.credential().clone())).chain(
                u.role_credentials()
                    .map(move |(role, c)| (format!("{name}/{role}"), c.clone())),
            )
        })
        .collect();
    let mut waits = tokio::task::JoinSet::new();
    for (name, source) in &list {
        source.start();
        let (name, source) = (name.clone(), source.clone());
        waits.spawn(async move {
            if !source.wait_ready(CREDENTIAL_STARTUP_WAIT).await {
                let why = source
                    .health()
                    .last_error
                    .unwrap_or_else(|| "no answer yet".into());
                warn!(upstream = %name, credential = source.kind(), error = %why, "serving without an upstream token yet; sessions to this upstream get 08001 until one arrives");
            }
        });
    }
    while waits.join_next().await.is_some() {}
    list
}

/// Where cancels passed on by other replicas (`[cluster]`) go: the session whose pid and
/// secret both match, if it is this replica's.
fn remote_cancels(cancels: &Arc<CancelRegistry>) -> pgward_cluster::CancelSink {
    let cancels = cancels.clone();
    Arc::new(move |pid, secret| match cancels.lookup(pid, &secret) {
        Some(crate::cancel::Target::Postgres { upstream, key }) => {
            tokio::spawn(async move {
                if let Err(e) = upstream.cancel(&key).await {
                    warn!(pid, error = %e, "cancel from another replica could not be forwarded");
                }
            });
            true
        }
        Some(crate::cancel::Target::Signal(signal)) => {
            signal.notify_waiters();
            true
        }
        None => false,
    })
}

/// This instance's name in audit records: $PGWARD_INSTANCE, else the host name.
fn instance_name() -> String {
    std::env::var("PGWARD_INSTANCE")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pgward".to_owned())
}

/// Over the connection limit: answer like PostgreSQL (53300) without reading anything.
async fn refuse_over_limit(mut tcp: TcpStream) {
    let mut out = BytesMut::new();
    build::error_response(
        &mut out,
        Severity::Fatal,
        "53300",
        "sorry, too many clients already",
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = tcp.write_all(&out).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// `[policy] apply_grants`: brings every PostgreSQL route's database to the policy's
/// privileges now, after every reload, and each time a catalog is read again (both are
/// checked each second), which also undoes grants changed by hand. A failure is
/// logged and counted, and tried again after a minute or at the next reload; pgward's own
/// check keeps deciding meanwhile.
async fn keep_grants_applied(shared: Arc<Shared>) {
    let (Some(store), Some(cfg)) = (shared.policy.clone(), shared.config.policy.clone()) else {
        return;
    };
    let targets = crate::grants::postgres_targets(&shared.config);
    // The catalogs' generations: objects created since the last run (a table a role made
    // through pgward) get their grants when the catalog is next read, within a second of
    // DDL through pgward and at least every catalog_refresh_secs.
    let mut handles = Vec::new();
    let mut applied_catalogs: Vec<u64> = Vec::new();
    let mut applied_version: Option<u64> = None;
    // After a failure: when to try the same version again.
    let mut retry: Option<(u64, std::time::Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let policy = store.current();
        let version = policy.version();
        if handles.len() < targets.len() {
            handles.clear();
            for (u, d) in &targets {
                if let Some(upstream) = shared.upstreams.get(u) {
                    if let Ok(h) = shared.catalogs.handle(upstream, d).await {
                        handles.push(h);
                    }
                }
            }
        }
        let catalogs: Vec<u64> = handles.iter().map(|h| h.generation()).collect();
        if applied_version == Some(version) && applied_catalogs == catalogs {
            continue;
        }
        if matches!(retry, Some((v, at)) if v == version && std::time::Instant::now() < at) {
            continue;
        }
        let mut ok = true;
        for (upstream_name, database) in &targets {
            let Some(upstream) = shared.upstreams.get(upstream_name) else {
                continue;
            };
            match crate::grants::apply(upstream, database, &policy, cfg.keep_public).await {
                Ok(a) if a.remaining.statements.is_empty() => {
                    shared.metrics.grants("applied");
                    info!(upstream = %upstream_name, database = %database, statements = a.ran, "database privileges match the policy");
                    for n in &a.remaining.notes {
                        info!(upstream = %upstream_name, database = %database, "grants: {n}");
                    }
                }
                Ok(a) => {
                    ok = false;
                    shared.metrics.grants("not_converged");
                    warn!(upstream = %upstream_name, database = %database, left = a.remaining.statements.len(), "database privileges do not match the policy after applying");
                }
                Err(e) => {
                    ok = false;
                    shared.metrics.grants("failed");
                    warn!(upstream = %upstream_name, database = %database, error = %e, "cannot apply the policy's privileges");
                }
            }
        }
        if ok {
            applied_version = Some(version);
            applied_catalogs = catalogs;
            retry = None;
        } else {
            retry = Some((version, std::time::Instant::now() + Duration::from_secs(60)));
        }
    }
}
