//! PostgreSQL upstreams: the upstream session's startup parameters (the caller's identity,
//! the policy's search path, the role), opening it with the right login, recording the
//! caller (`identity_table`), and relaying (relay.rs).

use pgward_upstream::UpstreamSession;
use tracing::warn;

use super::setup::{Admitted, SetupError};
use crate::enforce::Gate;
use crate::relay::{self, RelayOutcome};
use crate::shared::Shared;
use crate::stream::ClientStream;

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

/// Opens the upstream session: the policy's catalog first (a session is refused if it
/// cannot be read), then the session under the role's own login or pgward's, then the
/// caller's row in `pgward.callers` before the client can send anything.
pub async fn open(
    a: &mut Admitted,
    forwarded: &[(String, String)],
    application_name: Option<&str>,
    shared: &Shared,
) -> Result<UpstreamSession, SetupError> {
    if let Some(g) = a.gate.take() {
        match shared
            .catalogs
            .handle(&a.upstream, &a.upstream_database)
            .await
        {
            Ok(h) => a.gate = Some(g.with_catalog(h)),
            Err(e) => return Err(SetupError::Catalog(e)),
        }
    }
    let params = upstream_startup_params(
        forwarded,
        &a.principal,
        application_name,
        a.identity.as_ref(),
        a.role_names(),
        a.upstream_role
            .as_deref()
            .filter(|_| a.role_login.is_none()),
        a.gate.as_ref().map(Gate::search_path_setting),
    );
    let session = a
        .upstream
        .connect_as(&a.upstream_database, &params, a.role_login.as_deref())
        .await
        .map_err(|e| SetupError::Upstream {
            sqlstate: e.sqlstate().to_owned(),
            client_message: e.client_message(),
            detail: e.to_string(),
        })?;
    if a.upstream.config().identity_table {
        let Some(key) = &session.key else {
            return Err(SetupError::CallerIdentity(
                "the upstream sent no backend key, so its backend cannot be named".into(),
            ));
        };
        let Some(id) = &a.identity else {
            return Err(SetupError::CallerIdentity(
                "no verified identity to record".into(),
            ));
        };
        let login = a
            .role_login
            .as_deref()
            .unwrap_or_else(|| a.upstream.credential().user());
        let caller = crate::caller_identity::Caller {
            oid: &id.oid,
            tid: &id.tid,
            upn: &a.principal.upn,
            appid: id.appid.as_deref().unwrap_or(""),
            roles: a.role_names(),
        };
        shared
            .callers
            .record(&a.upstream, &a.upstream_database, key.pid, login, &caller)
            .await
            .map_err(SetupError::CallerIdentity)?;
    }
    Ok(session)
}

/// Relays until the session ends; a statement left running by a vanished client is
/// cancelled upstream.
pub async fn relay(
    stream: ClientStream,
    buf: bytes::BytesMut,
    session: UpstreamSession,
    mut params: relay::RelayParams,
    a: &Admitted,
    shared: &Shared,
) -> RelayOutcome {
    // What the server reported at startup (the client's startup parameter, or the
    // database's default): the encoding of the first statement.
    params.client_encoding = session
        .parameters
        .iter()
        .find(|(k, _)| k == "client_encoding")
        .map_or_else(|| "UTF8".to_owned(), |(_, v)| v.clone());
    params.tx = session.tx_status;
    let key = session.key.clone();
    let outcome = relay::run(
        stream,
        session.stream,
        buf,
        params,
        &shared.metrics,
        &shared.hard_stop,
    )
    .await;
    if outcome.upstream_busy {
        // The client is gone but its statement may still run upstream: cancel it so the
        // backend is not left working for nobody.
        if let Some(key) = key {
            if let Err(e) = a.upstream.cancel(&key).await {
                warn!(error = %e, "could not cancel the orphaned upstream query");
            }
        }
    }
    outcome
}
