//! A session's setup, up to an open upstream: sign-in, routing, the policy Gate, startup
//! parameters, limits and the login it runs as. Every way setup can fail is a
//! [`SetupError`], and [`Setup::refuse`] is the one place that answers it: a FATAL to the
//! client, a log line, a metric and (where there is a connection attempt to record) an
//! audit record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgward_upstream::Upstream;
use pgward_wire::build::{self, Severity};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::auth::{self, AuthFailure, ClientAuth};
use crate::enforce::{Denial, Gate};
use crate::handshake::ClientStartup;
use crate::limits::{Permit, Refusal};
use crate::shared::Shared;

/// Why a session could not be set up.
pub enum SetupError {
    /// The client left during sign-in: nobody to answer.
    ClientGone,
    SignIn(AuthFailure),
    UnknownDatabase(String),
    /// A route names an upstream that does not exist (`check` refuses such configs).
    UnknownUpstream(String),
    StartupParameter {
        name: String,
        denial: Denial,
    },
    Limit(Refusal),
    /// `require_role_login` and the caller's roles name no upstream_role with a login.
    NoRoleLogin(String),
    /// The upstream catalog the policy decides against cannot be read.
    Catalog(String),
    /// pgward's own upstream credential has no token.
    UpstreamCredential {
        upstream: String,
        detail: String,
    },
    /// The upstream refused or could not be reached: SQLSTATE and client message from the
    /// upstream kind's own error, the detail for logs and audit.
    Upstream {
        sqlstate: String,
        client_message: String,
        detail: String,
    },
    /// The caller could not be recorded in `pgward.callers` (`identity_table`).
    CallerIdentity(String),
    /// The connect record could not be written (fail closed).
    Audit(String),
}

impl SetupError {
    pub fn sqlstate(&self) -> &str {
        match self {
            Self::ClientGone => "08006",
            Self::SignIn(f) => f.sqlstate(),
            Self::UnknownDatabase(_) => "3D000",
            Self::StartupParameter { .. } | Self::NoRoleLogin(_) => "42501",
            Self::Limit(_) => "53300",
            Self::UpstreamCredential { .. } => "08001",
            Self::Upstream { sqlstate, .. } => sqlstate,
            Self::UnknownUpstream(_) | Self::Catalog(_) | Self::CallerIdentity(_) => "08006",
            Self::Audit(_) => "58030",
        }
    }

    /// What the client is told (never pgward's credentials or internal detail).
    pub fn client_message(&self, user: &str) -> String {
        match self {
            Self::ClientGone => String::new(),
            Self::SignIn(f) => f.client_message(user),
            Self::UnknownDatabase(db) => format!("database \"{db}\" does not exist"),
            Self::UnknownUpstream(_) => "route names an unknown upstream".into(),
            Self::StartupParameter { denial, .. } => denial.message(),
            Self::Limit(r) => r.message(),
            Self::NoRoleLogin(m) => m.clone(),
            Self::Catalog(_) => {
                "pgward cannot read the upstream database's catalog, which its policy needs".into()
            }
            Self::UpstreamCredential { upstream, .. } => {
                format!("pgward could not obtain its credential for upstream \"{upstream}\"")
            }
            Self::Upstream { client_message, .. } => client_message.clone(),
            Self::CallerIdentity(_) => {
                "pgward cannot record your identity on the upstream database".into()
            }
            Self::Audit(_) => "pgward cannot write its audit log".into(),
        }
    }

    /// The `pgward_errors_total{kind}` label (sign-in failures count in `pgward_auth_total`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::ClientGone => "client_gone",
            Self::SignIn(f) => f.label(),
            Self::UnknownDatabase(_) => "unknown_database",
            Self::UnknownUpstream(_) => "unknown_upstream",
            Self::StartupParameter { .. } => "policy_startup_parameter",
            Self::Limit(r) => r.label(),
            Self::NoRoleLogin(_) => "no_role_login",
            Self::Catalog(_) => "upstream_catalog",
            Self::UpstreamCredential { .. } => "upstream_credential",
            Self::Upstream { .. } => "upstream_connect",
            Self::CallerIdentity(_) => "caller_identity",
            Self::Audit(_) => "audit_failed",
        }
    }

    /// The exact reason, for the server log and the audit record.
    pub fn reason(&self) -> String {
        match self {
            Self::ClientGone => "client left during sign-in".into(),
            Self::SignIn(f) => f.to_string(),
            Self::UnknownDatabase(db) => format!("no route for database \"{db}\""),
            Self::UnknownUpstream(u) => format!("route names unknown upstream \"{u}\""),
            Self::StartupParameter { name, denial } => {
                format!("startup parameter {name} denied by rule {}", denial.rule)
            }
            Self::Limit(r) => r.message(),
            Self::NoRoleLogin(m) => m.clone(),
            Self::Catalog(e) | Self::CallerIdentity(e) => e.clone(),
            Self::UpstreamCredential { upstream, detail } => {
                format!("upstream {upstream} credential unavailable: {detail}")
            }
            Self::Upstream { detail, .. } => detail.clone(),
            Self::Audit(e) => format!("audit: cannot record the connection: {e}"),
        }
    }
}

/// A session being set up: the client's connection and what is known of it so far.
pub struct Setup<'a> {
    pub shared: &'a Shared,
    /// The client's connection and what its StartupMessage asked for.
    pub client: ClientStartup,
    pub peer: SocketAddr,
    /// The audit context: identity filled in once known.
    pub info: pgward_audit::SessionInfo,
}

/// A signed-in, routed, admitted caller.
pub struct Admitted {
    pub identity: Option<pgward_entra::Identity>,
    pub principal: pgward_policy::Principal,
    pub gate: Option<Gate>,
    pub upstream: Arc<Upstream>,
    /// The database on the upstream server.
    pub upstream_database: String,
    /// The session's connection slot and statement-rate bucket, held until it ends.
    pub permit: Option<Permit>,
    /// The held role's upstream_role, if any.
    pub upstream_role: Option<String>,
    /// The upstream_role that signs in as itself (`role_logins`), if any.
    pub role_login: Option<String>,
    /// When the client's token (plus grace) runs out.
    pub expires_at: Option<tokio::time::Instant>,
}

impl Admitted {
    /// The policy roles the caller holds.
    pub fn role_names(&self) -> &[String] {
        self.gate.as_ref().map(Gate::role_names).unwrap_or_default()
    }
}

impl<'a> Setup<'a> {
    pub fn new(
        startup: ClientStartup,
        peer: SocketAddr,
        session: String,
        shared: &'a Shared,
    ) -> Self {
        let info = pgward_audit::SessionInfo {
            session,
            client: pgward_audit::Client {
                addr: peer.to_string(),
                user: Some(startup.user.clone()),
                application_name: startup.application_name.clone(),
                tls: startup.stream.is_tls(),
                tls_version: None,
            },
            identity: None,
            database: Some(startup.database.clone()),
        };
        Self {
            shared,
            client: startup,
            peer,
            info,
        }
    }

    /// Sign-in, routing, the Gate and its decisions on startup parameters, limits and the
    /// login the session will run as.
    pub async fn admit(&mut self) -> Result<Admitted, SetupError> {
        let shared = self.shared;
        let identity = match &shared.auth {
            ClientAuth::Unauthenticated => None,
            ClientAuth::Entra(validator) => {
                let ip = self.peer.ip();
                let wait = shared.throttle.delay(ip);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                match auth::sign_in(
                    validator,
                    &mut self.client.stream,
                    &mut self.client.buf,
                    &self.client.user,
                )
                .await
                {
                    Ok(identity) => {
                        shared.throttle.succeeded(ip);
                        shared.metrics.auth("ok");
                        Some(identity)
                    }
                    Err(AuthFailure::ClientGone) => return Err(SetupError::ClientGone),
                    Err(e) => {
                        shared.throttle.failed(ip);
                        return Err(SetupError::SignIn(e));
                    }
                }
            }
        };
        // Routing comes after sign-in, as in PostgreSQL: an unauthenticated client can't
        // probe which database names exist.
        let route = shared
            .config
            .route(&self.client.database)
            .ok_or_else(|| SetupError::UnknownDatabase(self.client.database.clone()))?;
        let upstream = shared
            .upstreams
            .get(&route.upstream)
            .cloned()
            .ok_or_else(|| SetupError::UnknownUpstream(route.upstream.clone()))?;

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
                oid: self.client.user.clone(),
                upn: self.client.user.clone(),
                groups: Vec::new(),
                app_roles: Vec::new(),
            },
        };
        let mut gate = shared.policy.as_ref().map(|store| {
            Gate::new(store.clone(), principal.clone()).with_metrics(shared.metrics.clone())
        });
        if let Some(g) = gate.as_mut() {
            // Startup parameters are settings too: the policy decides them like SET.
            for (name, value) in &self.client.forwarded {
                if let Err(denial) = g.check_startup_setting(name, value) {
                    return Err(SetupError::StartupParameter {
                        name: name.clone(),
                        denial,
                    });
                }
            }
            info!(roles = ?g.role_names(), "policy roles");
        }
        // The audit context, now that the identity is known.
        self.info.identity = identity.as_ref().map(|id| pgward_audit::Identity {
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
            .map_or(self.client.user.as_str(), |id| id.oid.as_str());
        let permit = shared
            .limiter
            .admit_shared(
                limit_key,
                gate.as_ref().map(Gate::role_names).unwrap_or_default(),
            )
            .await
            .map_err(SetupError::Limit)?;
        let upstream_role = gate.as_ref().and_then(Gate::upstream_role);
        // The second wall: a role with a login of its own signs in as it (no role to SET
        // ROLE back to); otherwise pgward's login runs SET ROLE to it, or runs as itself.
        let role_login = upstream_role
            .as_deref()
            .filter(|r| upstream.has_role_login(r))
            .map(str::to_owned);
        if upstream.config().require_role_login && role_login.is_none() {
            return Err(SetupError::NoRoleLogin(match &upstream_role {
                Some(r) => format!("upstream {:?} requires a login of its own for upstream_role {r:?}, and none is configured (require_role_login)", upstream.name()),
                None => format!("upstream {:?} requires every session to run as its policy role's own login, and none of your roles names an upstream_role (require_role_login)", upstream.name()),
            }));
        }
        Ok(Admitted {
            identity,
            principal,
            gate,
            upstream_database: route.upstream_database().to_owned(),
            upstream,
            permit: Some(permit),
            upstream_role,
            role_login,
            expires_at,
        })
    }

    /// Answers a setup failure: metric, log line, audit record of the attempt, FATAL.
    pub async fn refuse(mut self, e: SetupError) {
        let shared = self.shared;
        match &e {
            SetupError::ClientGone => {
                shared.metrics.auth(AuthFailure::ClientGone.label());
                debug!("client left during sign-in");
                return;
            }
            SetupError::SignIn(f) => {
                shared.metrics.auth(f.label());
                warn!(reason = %f, "sign-in refused");
            }
            SetupError::Catalog(_)
            | SetupError::Upstream { .. }
            | SetupError::UpstreamCredential { .. }
            | SetupError::CallerIdentity(_)
            | SetupError::Audit(_) => {
                shared.metrics.error(e.metric_label());
                warn!(kind = e.metric_label(), reason = %e.reason(), "session refused");
            }
            _ => {
                shared.metrics.error(e.metric_label());
                info!(kind = e.metric_label(), reason = %e.reason(), "session refused");
            }
        }
        // The attempt is recorded with its exact reason; a connect record that could not be
        // written has nowhere to go.
        if !matches!(e, SetupError::Audit(_)) {
            if let Some(log) = &shared.audit {
                if let Err(err) = log.session(&self.info).auth_failed(&e.reason()).await {
                    warn!(error = %err, "audit: could not record a failed connection");
                }
            }
        }
        let mut out = BytesMut::new();
        build::error_response(
            &mut out,
            Severity::Fatal,
            e.sqlstate(),
            &e.client_message(&self.client.user),
        );
        let _ = self.client.stream.write_all(&out).await;
        let _ = self.client.stream.flush().await;
        let _ = self.client.stream.shutdown().await;
    }
}
