//! Azure SQL upstreams (`kind = "azure-sql"`): PostgreSQL clients in, TDS out.
//!
//! The session lifecycle (session/mod.rs) signs the client in, admits it and calls [`open`],
//! which opens the TDS session under pgward's own Entra token (scope
//! https://database.windows.net/.default) with the caller's identity pinned read-only in
//! SESSION_CONTEXT, running as the held role's database user when it names one. [`relay`]
//! then answers the client itself: each simple Query is T-SQL, decided by the same Gate as
//! PostgreSQL SQL, counted against the same statement rate, run with `sp_executesql` and
//! translated back (crates/tds). Transaction control (BEGIN / COMMIT / ROLLBACK) is
//! translated; the extended protocol, COPY and PostgreSQL catalog queries (psql's
//! meta-commands) get a clear 0A000. Audit records, metrics, cancels (one registry) and the
//! end of the session are the lifecycle's, as for PostgreSQL. docs/azure-sql.md describes
//! the limits.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgward_tds::{AccessToken, Expect, SessionIdentity, TdsOptions, TdsSession, TdsTls};
use pgward_upstream::{TlsMode, Upstream};
use pgward_wire::build::{self, Severity};
use pgward_wire::frontend::{self, Framer};
use pgward_wire::tag::frontend as fe;
use pgward_wire::{TxStatus, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::setup::{Admitted, SetupError};
use crate::enforce::{denial_of, Denial, Gate};
use crate::limits::Permit;
use crate::relay::{RelayEnd, RelayOutcome, Totals};
use crate::shared::Shared;
use crate::stream::ClientStream;
use crate::trail::{Audited, Trail};

const UNSUPPORTED_EXTENDED: &str = "extended protocol is not supported for azure-sql upstreams; use the simple query protocol (e.g. psycopg's ClientCursor, JDBC preferQueryMode=simple)";
const UNSUPPORTED_COPY: &str = "COPY is not supported for azure-sql upstreams";
const UNSUPPORTED_CATALOG: &str = "PostgreSQL catalog queries (pg_catalog, psql's \\d meta-commands) do not translate to azure-sql upstreams; query INFORMATION_SCHEMA or sys views in T-SQL instead";
const UNSUPPORTED_TX_IN_BATCH: &str = "send transaction control (BEGIN, COMMIT, ROLLBACK) as a statement of its own on azure-sql upstreams";

fn tds_options(upstream: &Upstream, database: &str, application_name: String) -> TdsOptions {
    let cfg = upstream.config();
    TdsOptions {
        upstream: cfg.name.clone(),
        host: cfg.host.clone(),
        port: cfg.port,
        database: database.to_owned(),
        tls: match cfg.tls {
            TlsMode::VerifyFull => TdsTls::VerifyFull {
                ca_file: cfg.ca_file.clone(),
            },
            TlsMode::Require => TdsTls::Require,
            TlsMode::Disable => TdsTls::Disable,
        },
        connect_timeout: Duration::from_secs(cfg.connect_timeout_secs),
        application_name,
    }
}

/// Opens the TDS session for an admitted caller.
pub async fn open(
    a: &Admitted,
    user: &str,
    application_name: Option<&str>,
) -> Result<TdsSession, SetupError> {
    let token = match a.upstream.credential().current().await {
        Ok(t) => AccessToken::new(t.expose().to_owned()),
        Err(e) => {
            return Err(SetupError::UpstreamCredential {
                upstream: a.upstream.name().to_owned(),
                detail: e.to_string(),
            })
        }
    };
    let identity = a.identity.as_ref();
    let caller = identity
        .and_then(|id| id.upn.clone().or_else(|| id.mi_name.clone()))
        .unwrap_or_else(|| user.to_owned());
    let app = match application_name.filter(|a| !a.is_empty()) {
        Some(n) => format!("{caller} ({n})"),
        None => caller.clone(),
    };
    let who = SessionIdentity {
        oid: identity.map(|i| i.oid.clone()).unwrap_or_default(),
        tid: identity.map(|i| i.tid.clone()).unwrap_or_default(),
        upn: caller,
        roles: a.role_names().to_vec(),
        // The second wall: the session runs as the held role's database user.
        database_user: a.upstream_role.clone(),
    };
    let opts = tds_options(&a.upstream, &a.upstream_database, app);
    TdsSession::connect(&opts, &token, &who)
        .await
        .map_err(|e| SetupError::Upstream {
            sqlstate: e.sqlstate().to_owned(),
            client_message: e.client_message(),
            detail: e.to_string(),
        })
}

/// The ParameterStatus values an azure-sql session greets its client with.
pub fn greeting_parameters(application_name: Option<&str>) -> Vec<(&'static str, String)> {
    [
        ("server_version", "16.0 (pgward azure-sql)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("IntervalStyle", "postgres"),
        ("is_superuser", "off"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .chain(std::iter::once((
        "application_name",
        application_name.unwrap_or("").to_owned(),
    )))
    .collect()
}

/// What an azure-sql relay needs from the lifecycle.
pub struct RelayParams {
    pub gate: Option<Gate>,
    pub trail: Option<Trail>,
    /// The session's connection slot and statement-rate bucket.
    pub permit: Option<Permit>,
    pub database: String,
    /// A CancelRequest for this session wakes it (registered by the lifecycle).
    pub signal: Arc<Notify>,
    pub expires_at: Option<tokio::time::Instant>,
}

/// Serves the client until the session ends.
pub async fn relay(
    mut stream: ClientStream,
    mut buf: BytesMut,
    tds: TdsSession,
    p: RelayParams,
    shared: &Shared,
) -> RelayOutcome {
    let mut relay = Relay {
        tds,
        gate: p.gate,
        trail: p.trail,
        rate: p.permit,
        tx: TxStatus::Idle,
        skip_to_sync: false,
        database: p.database,
        signal: p.signal,
        totals: Totals::default(),
    };
    let framer = Framer::new(shared.config.listen.max_message_bytes);
    let end = relay
        .serve(&mut stream, &mut buf, framer, shared, p.expires_at)
        .await;
    let Relay {
        tds, trail, totals, ..
    } = relay;
    tds.close().await;
    shared
        .metrics
        .bytes_to_upstream
        .inc_by(totals.bytes_to_upstream);
    shared
        .metrics
        .bytes_to_client
        .inc_by(totals.bytes_to_client);
    RelayOutcome {
        end,
        recorded: trail.as_ref().map(|t| t.recorded).unwrap_or(0),
        totals,
        upstream_busy: false,
    }
}

struct Relay {
    tds: TdsSession,
    gate: Option<Gate>,
    trail: Option<Trail>,
    /// The session's connection slot and statement-rate bucket (held to the end).
    rate: Option<Permit>,
    tx: TxStatus,
    /// After an error in an extended-protocol batch: skip to Sync, as PostgreSQL does.
    skip_to_sync: bool,
    database: String,
    signal: Arc<Notify>,
    /// Client bytes and messages in, bytes and batches answered out.
    totals: Totals,
}

/// Transaction control pgward translates: (T-SQL to run, PostgreSQL tag).
enum TxControl {
    Begin,
    Commit,
    Rollback,
}

fn tx_control(sql: &str) -> Option<TxControl> {
    let norm: String = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    match norm.as_str() {
        "begin" | "begin transaction" | "begin tran" | "begin work" | "start transaction" => {
            Some(TxControl::Begin)
        }
        "commit" | "commit transaction" | "commit tran" | "commit work" | "end"
        | "end transaction" => Some(TxControl::Commit),
        "rollback" | "rollback transaction" | "rollback tran" | "rollback work" | "abort" => {
            Some(TxControl::Rollback)
        }
        _ => None,
    }
}

/// The command tag each analysed statement answers with.
fn expect_of(kind: &str) -> Expect {
    match kind {
        "TSqlSelect" => Expect::Rows,
        "TSqlInsert" => Expect::Insert,
        "TSqlUpdate" => Expect::Update,
        "TSqlDelete" => Expect::Delete,
        "TSqlMerge" => Expect::Merge,
        "TSqlCreateTable" => Expect::Tag("CREATE TABLE".into()),
        "TSqlCreateView" => Expect::Tag("CREATE VIEW".into()),
        "TSqlCreateIndex" => Expect::Tag("CREATE INDEX".into()),
        "TSqlCreateSchema" => Expect::Tag("CREATE SCHEMA".into()),
        "TSqlAlterTable" => Expect::Tag("ALTER TABLE".into()),
        "TSqlDrop" => Expect::Tag("DROP".into()),
        "TSqlTruncate" => Expect::Tag("TRUNCATE TABLE".into()),
        "TSqlGrant" => Expect::Tag("GRANT".into()),
        "TSqlSet" => Expect::Tag("SET".into()),
        "TSqlExecute" => Expect::Tag("CALL".into()),
        _ => Expect::Tag("OK".into()),
    }
}

impl Relay {
    async fn serve(
        &mut self,
        stream: &mut ClientStream,
        buf: &mut BytesMut,
        framer: Framer,
        shared: &Shared,
        expires_at: Option<tokio::time::Instant>,
    ) -> RelayEnd {
        let expired = || expires_at.is_some_and(|t| tokio::time::Instant::now() >= t);
        // One timer for the session, on the main runtime as for PostgreSQL routes
        // (deadline.rs), not one per read on the worker's wheel.
        let mut token_expiry = std::pin::pin!(async {
            match expires_at {
                Some(t) => crate::deadline::Deadline::at(&shared.timers, t).await,
                None => std::future::pending().await,
            }
        });
        loop {
            let msg = match framer.next(buf) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    let read = tokio::select! {
                        r = stream.read_buf(buf) => r,
                        _ = &mut token_expiry => {
                            fatal(stream, "28000", "token expired").await;
                            return RelayEnd::TokenExpired;
                        }
                        _ = shared.hard_stop.cancelled() => {
                            fatal(stream, "57P01", "terminating connection because pgward is shutting down").await;
                            return RelayEnd::Shutdown;
                        }
                    };
                    match read {
                        Ok(0) => return RelayEnd::ClientGone(None),
                        Ok(n) => {
                            self.totals.bytes_to_upstream += n as u64;
                            continue;
                        }
                        Err(e) => return RelayEnd::ClientGone(Some(e)),
                    }
                }
                Err(e) => {
                    fatal(stream, "08P01", &format!("invalid message: {e}")).await;
                    return RelayEnd::ClientProtocol(e);
                }
            };
            self.totals.messages_to_upstream += 1;
            if expired() {
                fatal(stream, "28000", "token expired").await;
                return RelayEnd::TokenExpired;
            }
            let mut out = BytesMut::new();
            match msg.tag() {
                fe::TERMINATE => return RelayEnd::ClientTerminated,
                fe::QUERY => {
                    let sql = match frontend::query_text(msg.body()) {
                        Ok(s) => s.to_owned(),
                        Err(e) => {
                            fatal(stream, "08P01", &format!("invalid message: {e}")).await;
                            return RelayEnd::ClientProtocol(e);
                        }
                    };
                    if let Err(end) = self.query(&sql, stream).await {
                        return end;
                    }
                    continue;
                }
                fe::PARSE
                | fe::BIND
                | fe::DESCRIBE
                | fe::EXECUTE
                | fe::CLOSE
                | fe::FUNCTION_CALL => {
                    if !self.skip_to_sync {
                        let sql = if msg.tag() == fe::PARSE {
                            frontend::parse_message(msg.body())
                                .map(|p| p.query.to_owned())
                                .unwrap_or_default()
                        } else {
                            "(extended-protocol message)".to_owned()
                        };
                        if let Err(end) = self
                            .refuse_statement(
                                &sql,
                                "azure_sql.unsupported",
                                "0A000",
                                UNSUPPORTED_EXTENDED,
                                &mut out,
                            )
                            .await
                        {
                            fatal(
                                stream,
                                "58030",
                                "pgward could not record this statement in the audit log",
                            )
                            .await;
                            return end;
                        }
                        self.skip_to_sync = msg.tag() != fe::FUNCTION_CALL;
                    }
                    if msg.tag() == fe::FUNCTION_CALL {
                        build::ready_for_query(&mut out, self.tx);
                    }
                }
                fe::SYNC => {
                    self.skip_to_sync = false;
                    build::ready_for_query(&mut out, self.tx);
                }
                fe::FLUSH => {}
                // CopyData/CopyDone/CopyFail outside COPY: PostgreSQL ignores them too.
                fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => {}
                other => {
                    fatal(
                        stream,
                        "08P01",
                        &format!("invalid message: unexpected message type 0x{other:02x}"),
                    )
                    .await;
                    return RelayEnd::ClientProtocol(WireError::malformed(
                        "frontend message",
                        "unexpected message type",
                    ));
                }
            }
            if !out.is_empty() {
                self.totals.bytes_to_client += out.len() as u64;
                self.totals.messages_to_client += 1;
                if let Err(e) = stream.write_all(&out).await {
                    return RelayEnd::ClientGone(Some(e));
                }
            }
        }
    }

    /// A statement refused before reaching the server: error to `out`, audit record first.
    async fn refuse_statement(
        &mut self,
        sql: &str,
        rule: &str,
        code: &str,
        message: &str,
        out: &mut BytesMut,
    ) -> Result<(), RelayEnd> {
        info!(rule, code, "azure-sql statement refused");
        if let Some(t) = self.trail.as_mut() {
            t.on_query(sql, None, Some(Audited::refused(rule)));
            record_results(t, [(None, Some((code, message)))]).await?;
        }
        build::error_response(out, Severity::Error, code, message);
        Ok(())
    }

    /// One simple Query. `Err` ends the session with its reason.
    async fn query(&mut self, sql: &str, stream: &mut ClientStream) -> Result<(), RelayEnd> {
        let mut out = BytesMut::new();
        let result = self.query_inner(sql, stream, &mut out).await;
        if let Err(end) = &result {
            if matches!(end, RelayEnd::AuditFailed(_)) {
                let _ = stream.write_all(&out).await;
                fatal(
                    stream,
                    "58030",
                    "pgward could not record this statement in the audit log",
                )
                .await;
                return result;
            }
        }
        build::ready_for_query(&mut out, self.tx);
        self.totals.bytes_to_client += out.len() as u64;
        self.totals.messages_to_client += 1;
        stream
            .write_all(&out)
            .await
            .map_err(|e| RelayEnd::ClientGone(Some(e)))?;
        result
    }

    async fn query_inner(
        &mut self,
        sql: &str,
        stream: &mut ClientStream,
        out: &mut BytesMut,
    ) -> Result<(), RelayEnd> {
        if sql.trim().trim_matches(';').trim().is_empty() {
            pgward_tds::pg::empty_query(out);
            return Ok(());
        }
        // Over the identity's statement rate: refused (53400) and recorded, as for PostgreSQL.
        if let Some(rate) = self.rate.as_ref().and_then(|p| p.take_statement().err()) {
            let d = Denial::rate_limited(rate);
            return self
                .refuse_statement(sql, &d.rule, d.code, &d.message(), out)
                .await;
        }
        let control = tx_control(sql);
        if self.tx == TxStatus::Failed
            && !matches!(control, Some(TxControl::Rollback | TxControl::Commit))
        {
            return self
                .refuse_statement(
                    sql,
                    "azure_sql.aborted_transaction",
                    "25P02",
                    "current transaction is aborted, commands ignored until end of transaction block",
                    out,
                )
                .await;
        }
        if let Some(c) = control {
            return self.transaction(sql, c, out).await;
        }
        if sql.to_ascii_lowercase().contains("pg_catalog") {
            return self
                .refuse_statement(
                    sql,
                    "azure_sql.pg_catalog",
                    "0A000",
                    UNSUPPORTED_CATALOG,
                    out,
                )
                .await;
        }
        if sql
            .trim_start()
            .get(..4)
            .is_some_and(|w| w.eq_ignore_ascii_case("copy"))
        {
            return self
                .refuse_statement(sql, "azure_sql.unsupported", "0A000", UNSUPPORTED_COPY, out)
                .await;
        }
        let database = Some(self.database.as_str());
        let qd = self.gate.as_mut().map(|g| g.decide_tsql(sql, database));
        if let Some(qd) = qd.as_ref().filter(|qd| qd.decision.blocks()) {
            let denial = denial_of(qd);
            if let Some(t) = self.trail.as_mut() {
                t.on_query(sql, Some(qd), None);
                record_results(t, [(None, Some((denial.code, denial.message().as_str())))]).await?;
            }
            self.fail_transaction().await;
            build::error_response(out, Severity::Error, denial.code, &denial.message());
            return Ok(());
        }
        // Without a policy (development mode) the batch is still analysed, for its tags.
        let kinds: Vec<&'static str> = match &qd {
            Some(qd) => qd.statements.iter().map(|s| s.analysis.kind).collect(),
            None => pgward_policy::tsql::analyze_tsql(sql, database)
                .map(|a| a.statements.iter().map(|s| s.kind).collect())
                .unwrap_or_default(),
        };
        if kinds.contains(&"TSqlTransaction") {
            return self
                .refuse_statement(
                    sql,
                    "azure_sql.unsupported",
                    "0A000",
                    UNSUPPORTED_TX_IN_BATCH,
                    out,
                )
                .await;
        }
        if let Some(t) = self.trail.as_ref() {
            if !t.ready() {
                let d = Denial::audit_unavailable();
                build::error_response(out, Severity::Error, d.code, &d.message());
                return Ok(());
            }
        }
        let expect: Vec<Expect> = kinds.iter().map(|k| expect_of(k)).collect();
        if let Some(t) = self.trail.as_mut() {
            t.on_query(sql, qd.as_ref(), None);
        }
        let outcome = self
            .tds
            .run(sql, &expect, stream, &self.signal)
            .await
            .map_err(|e| RelayEnd::ClientGone(Some(e)))?;
        self.totals.bytes_to_client += outcome.bytes_out;
        if let Some(t) = self.trail.as_mut() {
            let results = outcome.statements.iter().map(|s| {
                let err = s.error.as_ref().map(|(c, m)| (c.as_str(), m.as_str()));
                (s.tag.as_deref(), err)
            });
            record_results(t, results).await?;
        }
        if outcome.failed {
            self.fail_transaction().await;
        }
        debug!(
            statements = outcome.statements.len(),
            cancelled = outcome.cancelled,
            "azure-sql batch done"
        );
        Ok(())
    }

    /// An error inside BEGIN ... COMMIT aborts the transaction, as in PostgreSQL.
    async fn fail_transaction(&mut self) {
        if self.tx == TxStatus::InTransaction {
            if let Err((code, m)) = self
                .tds
                .control("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION")
                .await
            {
                warn!(code, message = %m, "rolling back the failed transaction failed");
            }
            self.tx = TxStatus::Failed;
        }
    }

    async fn transaction(
        &mut self,
        sql: &str,
        c: TxControl,
        out: &mut BytesMut,
    ) -> Result<(), RelayEnd> {
        let (tsql, tag, next) = match (c, self.tx) {
            (TxControl::Begin, TxStatus::Idle) => {
                (Some("BEGIN TRANSACTION"), "BEGIN", TxStatus::InTransaction)
            }
            (TxControl::Begin, tx) => {
                build::notice(out, "25001", "there is already a transaction in progress");
                (None, "BEGIN", tx)
            }
            (TxControl::Commit, TxStatus::InTransaction) => {
                (Some("COMMIT TRANSACTION"), "COMMIT", TxStatus::Idle)
            }
            (TxControl::Commit, TxStatus::Failed) => (
                Some("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION"),
                "ROLLBACK",
                TxStatus::Idle,
            ),
            (TxControl::Commit, TxStatus::Idle) => {
                build::notice(out, "25P01", "there is no transaction in progress");
                (None, "COMMIT", TxStatus::Idle)
            }
            (TxControl::Rollback, TxStatus::Idle) => {
                build::notice(out, "25P01", "there is no transaction in progress");
                (None, "ROLLBACK", TxStatus::Idle)
            }
            (TxControl::Rollback, _) => (
                Some("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION"),
                "ROLLBACK",
                TxStatus::Idle,
            ),
        };
        let result = match tsql {
            Some(t) => self.tds.control(t).await,
            None => Ok(()),
        };
        if let Some(trail) = self.trail.as_mut() {
            let audited = Audited {
                decision: pgward_audit::Decision::Allow,
                rule: Some("baseline".into()),
                objects: Vec::new(),
            };
            trail.on_query(sql, None, Some(audited));
            let outcome = match &result {
                Ok(()) => (Some(tag), None),
                Err((c, m)) => (None, Some((c.as_str(), m.as_str()))),
            };
            record_results(trail, [outcome]).await?;
        }
        match result {
            Ok(()) => {
                pgward_tds::pg::command_complete(out, tag);
                self.tx = next;
            }
            Err((code, message)) => {
                build::error_response(out, Severity::Error, &code, &message);
                if self.tx == TxStatus::InTransaction {
                    self.tx = TxStatus::Failed;
                }
            }
        }
        Ok(())
    }
}

/// Records the results of what was just run and the ready point, then waits until every
/// record is written. `Err` is the reason the session ends.
async fn record_results<'a>(
    t: &mut Trail,
    results: impl IntoIterator<Item = (Option<&'a str>, Option<(&'a str, &'a str)>)>,
) -> Result<(), RelayEnd> {
    let mut appends = Vec::new();
    for (tag, error) in results {
        appends.extend(t.on_result(tag, error));
    }
    appends.extend(t.on_ready());
    for a in appends {
        a.await.map_err(|e| RelayEnd::AuditFailed(e.to_string()))?;
    }
    Ok(())
}

async fn fatal(stream: &mut ClientStream, code: &str, message: &str) {
    let mut out = BytesMut::new();
    build::error_response(&mut out, Severity::Fatal, code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}
