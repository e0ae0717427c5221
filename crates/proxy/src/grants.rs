//! The second wall's privileges on PostgreSQL upstreams: read what the database holds,
//! compute the plan from the policy (crates/policy/src/pg_grants.rs), run it, and check the
//! database converged. Used by `pgward policy grants [--apply]` and, with
//! `[policy] apply_grants`, at start and after every policy reload.

use pgward_policy::{GrantPlan, GrantsQuery, Policy};
use pgward_upstream::{Row, Upstream, UpstreamKind, UpstreamSession};

use crate::caller_identity::{identity_schema_sql, IDENTITY_SCHEMA_MARK};
use crate::config::Config;

/// What one database needs: the privilege plan, and the identity schema when the upstream
/// records callers and the database does not have the current one.
pub async fn plan(
    upstream: &Upstream,
    database: &str,
    policy: &Policy,
    keep_public: bool,
) -> Result<GrantPlan, String> {
    let mut conn = Own::open(upstream, database).await?;
    let plan = conn.plan(policy, keep_public).await;
    conn.close().await;
    plan
}

/// The outcome of applying one database's plan.
#[derive(Debug)]
pub struct Applied {
    /// Statements run.
    pub ran: usize,
    /// What is still to change after the run (notes name why); empty when converged.
    pub remaining: GrantPlan,
}

/// Runs the plan in one transaction, then reads the database again; all on one connection
/// of pgward's own.
pub async fn apply(
    upstream: &Upstream,
    database: &str,
    policy: &Policy,
    keep_public: bool,
) -> Result<Applied, String> {
    let mut conn = Own::open(upstream, database).await?;
    let result = async {
        let first = conn.plan(policy, keep_public).await?;
        let ran = first.statements.len();
        if ran == 0 {
            // Nothing to run: what was just read is what remains (the usual case on a
            // catalog refresh).
            return Ok(Applied {
                ran,
                remaining: first,
            });
        }
        let mut sql = String::from("BEGIN;\n");
        for s in &first.statements {
            sql.push_str(s);
            sql.push_str(";\n");
        }
        sql.push_str("COMMIT;");
        conn.run(&sql)
            .await
            .map_err(|e| format!("applying grants: {e}"))?;
        let remaining = conn.plan(policy, keep_public).await?;
        Ok(Applied { ran, remaining })
    }
    .await;
    conn.close().await;
    result
}

/// A connection of pgward's own to one database, for the grants.
struct Own<'a> {
    upstream: &'a Upstream,
    database: &'a str,
    session: UpstreamSession,
}

impl<'a> Own<'a> {
    async fn open(upstream: &'a Upstream, database: &'a str) -> Result<Own<'a>, String> {
        let session = upstream
            .own_session(database, "pgward (grants)")
            .await
            .map_err(|e| format!("upstream {} database {database}: {e}", upstream.name()))?;
        Ok(Own {
            upstream,
            database,
            session,
        })
    }

    async fn run(&mut self, sql: &str) -> Result<Vec<Row>, String> {
        self.upstream
            .query_on(&mut self.session, sql)
            .await
            .map_err(|e| {
                format!(
                    "upstream {} database {}: {e}",
                    self.upstream.name(),
                    self.database
                )
            })
    }

    async fn plan(&mut self, policy: &Policy, keep_public: bool) -> Result<GrantPlan, String> {
        let rows = self.run(GrantsQuery::SQL).await?;
        let mut plan = policy.pg_grants(&rows, keep_public).map_err(|e| {
            format!(
                "upstream {} database {}: {e}",
                self.upstream.name(),
                self.database
            )
        })?;
        if self.upstream.config().identity_table {
            let mark = self
                .run("SELECT pg_catalog.obj_description(pg_catalog.to_regclass('pgward.callers'), 'pg_class')")
                .await?;
            let current = matches!(mark.first().and_then(|r| r.first()), Some(Some(m)) if m == IDENTITY_SCHEMA_MARK);
            if !current {
                plan.statements.insert(0, identity_schema_sql());
            }
        }
        Ok(plan)
    }

    async fn close(mut self) {
        self.upstream.close_session(&mut self.session).await;
    }
}

/// Every (upstream, database) that PostgreSQL routes reach.
pub fn postgres_targets(config: &Config) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for r in &config.routes {
        let postgres = config
            .upstreams
            .iter()
            .any(|u| u.name == r.upstream && u.kind == UpstreamKind::Postgres);
        let t = (r.upstream.clone(), r.upstream_database().to_owned());
        if postgres && !out.contains(&t) {
            out.push(t);
        }
    }
    out
}
