//! The caller identity no statement can forge (`[[upstreams]] identity_table`).
//!
//! `pgward.oid` and the other settings are the session's own: any SQL that can run
//! `set_config` can change them. So, before a session's first statement, pgward writes the
//! caller into `pgward.callers` over a connection of its own (pgward's login owns the table
//! and nobody else may touch it), keyed by the backend's pid *and* start time, so a row never
//! outlives its backend: a later backend with the same pid has another start time and sees
//! nothing. `pgward.caller_oid()` and
//! friends read it; docs/azure.md shows RLS policies on them.
//!
//! One connection per upstream database, kept open; a write is one round trip. A session
//! is refused (08006) when its row cannot be written (fail closed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pgward_upstream::{quote_ident, quote_literal, Upstream, UpstreamSession};
use tracing::warn;

/// Version mark (the table's comment) of the schema below: `policy grants` installs it when
/// the mark differs.
pub const IDENTITY_SCHEMA_MARK: &str = "pgward caller identity v1";

/// The identity schema: a table only pgward's own login reads or writes, and functions for
/// RLS policies. `pgward.caller()` runs as pgward's login (SECURITY DEFINER, its search_path
/// pinned, every name qualified) and returns the one row of the backend that calls it: pid
/// and backend start time, as the server itself reports them for that backend. Nothing a
/// session can run changes either, so its answer cannot be forged. pgward's login needs
/// pg_read_all_stats (or superuser) to read other backends' start times.
pub fn identity_schema_sql() -> String {
    format!(
        r#"CREATE SCHEMA IF NOT EXISTS pgward;
REVOKE CREATE ON SCHEMA pgward FROM PUBLIC;
GRANT USAGE ON SCHEMA pgward TO PUBLIC;
CREATE TABLE IF NOT EXISTS pgward.callers (
    pid integer PRIMARY KEY,
    backend_start timestamptz NOT NULL,
    caller_oid text NOT NULL,
    caller_tid text NOT NULL,
    caller_upn text NOT NULL,
    caller_appid text NOT NULL,
    caller_roles text[] NOT NULL,
    login text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT pg_catalog.now());
REVOKE ALL ON pgward.callers FROM PUBLIC;
ALTER TABLE pgward.callers ENABLE ROW LEVEL SECURITY;
CREATE OR REPLACE FUNCTION pgward.caller() RETURNS pgward.callers
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.* FROM pgward.callers c
    WHERE c.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()
      AND c.backend_start OPERATOR(pg_catalog.=) (SELECT a.backend_start
          FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a) $$;
CREATE OR REPLACE FUNCTION pgward.caller_oid() RETURNS text
    LANGUAGE sql STABLE AS $$ SELECT (pgward.caller()).caller_oid $$;
CREATE OR REPLACE FUNCTION pgward.caller_tid() RETURNS text
    LANGUAGE sql STABLE AS $$ SELECT (pgward.caller()).caller_tid $$;
CREATE OR REPLACE FUNCTION pgward.caller_upn() RETURNS text
    LANGUAGE sql STABLE AS $$ SELECT (pgward.caller()).caller_upn $$;
CREATE OR REPLACE FUNCTION pgward.caller_appid() RETURNS text
    LANGUAGE sql STABLE AS $$ SELECT (pgward.caller()).caller_appid $$;
CREATE OR REPLACE FUNCTION pgward.caller_roles() RETURNS text[]
    LANGUAGE sql STABLE AS $$ SELECT (pgward.caller()).caller_roles $$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgward TO PUBLIC;
COMMENT ON TABLE pgward.callers IS {mark}"#,
        mark = quote_literal(IDENTITY_SCHEMA_MARK)
    )
}

/// The caller, as pgward verified it.
pub struct Caller<'a> {
    pub oid: &'a str,
    pub tid: &'a str,
    pub upn: &'a str,
    pub appid: &'a str,
    pub roles: &'a [String],
}

type Key = (String, String);
type Slot = Arc<tokio::sync::Mutex<Option<UpstreamSession>>>;

/// pgward's own connections that write `pgward.callers`, one per upstream database.
#[derive(Default)]
pub struct CallerIdentities {
    conns: Mutex<HashMap<Key, Slot>>,
}

impl CallerIdentities {
    /// Writes `caller` as the identity of backend `pid` (which must be signed in as
    /// `login`) of `database`. Its start time is read by the server in the same statement,
    /// so the row is this backend's and no other's.
    pub async fn record(
        &self,
        upstream: &Upstream,
        database: &str,
        pid: u32,
        login: &str,
        caller: &Caller<'_>,
    ) -> Result<(), String> {
        let roles = caller
            .roles
            .iter()
            .map(|r| quote_literal(r))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "INSERT INTO pgward.callers AS c (pid, backend_start, caller_oid, caller_tid, caller_upn, caller_appid, caller_roles, login) \
             SELECT a.pid, a.backend_start, {oid}, {tid}, {upn}, {appid}, ARRAY[{roles}]::text[], {login} \
             FROM pg_catalog.pg_stat_get_activity({pid}) a \
             WHERE a.backend_start IS NOT NULL AND a.usesysid = {login}::regrole \
             ON CONFLICT (pid) DO UPDATE SET backend_start = EXCLUDED.backend_start, \
             caller_oid = EXCLUDED.caller_oid, caller_tid = EXCLUDED.caller_tid, \
             caller_upn = EXCLUDED.caller_upn, caller_appid = EXCLUDED.caller_appid, \
             caller_roles = EXCLUDED.caller_roles, login = EXCLUDED.login, written_at = pg_catalog.now() \
             RETURNING c.pid",
            oid = quote_literal(caller.oid),
            tid = quote_literal(caller.tid),
            upn = quote_literal(caller.upn),
            appid = quote_literal(caller.appid),
            login = quote_literal(&quote_ident(login)),
        );
        let slot = {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(
                conns
                    .entry((upstream.name().to_owned(), database.to_owned()))
                    .or_default(),
            )
        };
        let mut conn = slot.lock().await;
        // A kept connection may have died since; one retry on a fresh one.
        for attempt in 0..2 {
            if conn.is_none() {
                *conn = Some(
                    upstream
                        .own_session(database, "pgward (caller identity)")
                        .await
                        .map_err(|e| format!("cannot connect to record the caller: {e}"))?,
                );
            }
            let Some(session) = conn.as_mut() else {
                continue;
            };
            match upstream.query_on(session, &sql).await {
                Ok(rows) if rows.len() == 1 => return Ok(()),
                Ok(_) => {
                    return Err(format!(
                        "pgward's login cannot see backend {pid} of {login} in pg_stat_activity; grant it pg_read_all_stats (docs/azure.md)"
                    ))
                }
                Err(e @ pgward_upstream::ConnectError::Server { .. }) => {
                    return Err(format!("cannot record the caller in pgward.callers: {e}"))
                }
                Err(e) => {
                    *conn = None;
                    if attempt == 1 {
                        return Err(format!("cannot record the caller: {e}"));
                    }
                    warn!(error = %e, "caller identity connection lost; reconnecting");
                }
            }
        }
        Err("cannot record the caller".into())
    }
}
