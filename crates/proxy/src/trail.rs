//! The audit trail of one session's statements.
//!
//! The client side registers a unit for every statement it forwards, in protocol
//! order: a Query is one batch (one unit per statement the policy found, or one for the
//! whole string without a policy); Parse remembers the text, Bind the parameters, and
//! Execute adds a unit; Sync closes an extended-protocol batch. The server side
//! resolves units in the same order: CommandComplete, EmptyQueryResponse,
//! PortalSuspended or ErrorResponse completes the next unit of the batch being
//! answered, and ReadyForQuery closes the batch (units the server skipped after an
//! error are recorded as not executed). Each resolution produces the `statement`
//! record, which the relay writes before the reply reaches the client.
//!
//! Everything of a record but its outcome is serialised when the unit is registered
//! (`StatementHead`), i.e. while the statement runs upstream, and reused when a prepared
//! statement is executed again with the same recorded parameters; only the outcome is
//! serialised between the server's reply and its relay to the client.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use pgward_audit::{
    Append, Decision, InFlight, ObjectAction, Outcome, ParamIn, Params, Protocol, Redaction,
    SessionLog, Statement, StatementHead,
};
use pgward_policy::{QueryDecision, Verdict};
use pgward_wire::tag::target;

/// What the policy said about one statement, as the audit records it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Audited {
    pub decision: Decision,
    pub rule: Option<String>,
    /// (object, action) pairs.
    pub objects: Vec<(String, String)>,
}

impl Audited {
    fn from_policy(d: &pgward_policy::Decision, accesses: &[pgward_policy::Access]) -> Self {
        let decision = match (d.verdict, d.enforced) {
            (Verdict::Allow, _) => Decision::Allow,
            (Verdict::Deny, true) => Decision::Deny,
            (Verdict::Deny, false) => Decision::ObserveDeny,
        };
        Self {
            decision,
            rule: Some(d.rule.clone()),
            objects: accesses
                .iter()
                .map(|a| (a.object.to_string(), a.action.as_str().to_owned()))
                .collect(),
        }
    }

    /// Denied by pgward itself but not enforced (observe mode).
    pub fn observed(d: &pgward_policy::Decision) -> Self {
        Self::from_policy(d, &[])
    }

    /// Refused by pgward itself (not the policy), e.g. the audit log cannot write.
    pub fn refused(rule: &str) -> Self {
        Self {
            decision: Decision::Deny,
            rule: Some(rule.to_owned()),
            objects: Vec::new(),
        }
    }
}

/// One statement waiting for its outcome: its record up to the outcome.
struct Unit {
    head: StatementHead,
    started: Instant,
    /// Counts it as running for the log's group commit.
    _in_flight: InFlight,
}

/// A statement prepared with Parse.
struct Prepared {
    sql: Arc<str>,
    param_types: Vec<u32>,
    audited: Arc<Audited>,
    /// The policy's (cached) decision `audited` was made from: the same decision for the
    /// same text again means the same `audited`, without building it to compare.
    decided_by: Option<Arc<QueryDecision>>,
}

/// A bound portal and its record's head.
struct Portal {
    prepared: Arc<Prepared>,
    params: Option<Params>,
    head: StatementHead,
}

/// An extended-protocol batch being built by the client (before its Sync).
#[derive(Default)]
struct OpenBatch {
    units: VecDeque<Unit>,
    /// A statement in this batch was denied: the server skips the rest up to Sync.
    failed: bool,
}

pub struct Trail {
    log: SessionLog,
    redaction: Redaction,
    /// Batches sent and not yet closed by ReadyForQuery; the front one is being answered.
    batches: VecDeque<VecDeque<Unit>>,
    open: OpenBatch,
    statements: HashMap<String, Arc<Prepared>>,
    portals: HashMap<String, Portal>,
    /// Statement records written so far.
    pub recorded: u64,
}

impl std::fmt::Debug for Trail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trail")
            .field("batches", &self.batches.len())
            .field("recorded", &self.recorded)
            .finish_non_exhaustive()
    }
}

impl Trail {
    pub fn new(log: SessionLog) -> Self {
        let redaction = log.log().redaction();
        Self {
            log,
            redaction,
            batches: VecDeque::new(),
            open: OpenBatch::default(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            recorded: 0,
        }
    }

    /// Whether statements may be forwarded now (fail-closed when the log can't write).
    pub fn ready(&self) -> bool {
        self.log.log().ready().is_ok()
    }

    /// A Query: one batch of its own (after any extended messages not yet synced,
    /// which the server answers first).
    pub fn on_query(
        &mut self,
        sql: &str,
        decision: Option<&QueryDecision>,
        refused: Option<Audited>,
    ) {
        let mut batch = std::mem::take(&mut self.open).units;
        let now = Instant::now();
        match (refused, decision) {
            (Some(a), _) => batch.push_back(self.unit(sql, Protocol::Simple, &a, None, now)),
            (None, Some(d)) if d.statements.len() > 1 && !d.decision.blocks() => {
                for s in &d.statements {
                    let a = Audited::from_policy(&s.decision, &s.analysis.accesses);
                    batch.push_back(self.unit(&s.analysis.sql, Protocol::Simple, &a, None, now));
                }
            }
            (None, Some(d)) => {
                let accesses: Vec<_> = d
                    .statements
                    .iter()
                    .flat_map(|s| s.analysis.accesses.iter().cloned())
                    .collect();
                let a = Audited::from_policy(&d.decision, &accesses);
                batch.push_back(self.unit(sql, Protocol::Simple, &a, None, now));
            }
            (None, None) => {
                let a = Audited::default();
                batch.push_back(self.unit(sql, Protocol::Simple, &a, None, now))
            }
        }
        self.batches.push_back(batch);
    }

    /// A Parse. A denied one is recorded at once (it will never be executed).
    pub fn on_parse(
        &mut self,
        name: &str,
        sql: &str,
        param_types: Vec<u32>,
        decision: Option<&Arc<QueryDecision>>,
        refused: Option<Audited>,
    ) {
        let denied = refused.is_some() || decision.is_some_and(|d| d.decision.blocks());
        // Drivers re-parse the unnamed statement for every query: the same text with the
        // same cached decision keeps the prepared statement as it is.
        let unchanged = refused.is_none()
            && decision.is_some_and(|d| {
                self.statements.get(name).is_some_and(|p| {
                    p.decided_by.as_ref().is_some_and(|by| Arc::ptr_eq(by, d))
                        && *p.sql == *sql
                        && p.param_types == param_types
                })
            });
        if unchanged && !denied {
            return;
        }
        let decided_by = decision.filter(|_| refused.is_none()).cloned();
        let audited = audited_of(refused, decision.map(|d| &**d));
        // The same text parsed again under the same name with the same decision (drivers
        // re-parse the unnamed statement for every query) keeps the prepared statement,
        // so its portals' serialised heads stay valid and are reused.
        let same = self
            .statements
            .get(name)
            .filter(|p| *p.sql == *sql && p.param_types == param_types && *p.audited == audited);
        let kept = same.is_some();
        let prepared = match same {
            Some(p) => p.clone(),
            None => Arc::new(Prepared {
                sql: Arc::from(sql),
                param_types,
                audited: Arc::new(audited),
                decided_by,
            }),
        };
        if denied && !self.open.failed {
            self.open.failed = true;
            let u = self.unit(
                &prepared.sql,
                Protocol::Extended,
                &prepared.audited,
                None,
                Instant::now(),
            );
            self.open.units.push_back(u);
        }
        if !kept {
            self.statements.insert(name.to_owned(), prepared);
        }
    }

    pub fn on_bind(&mut self, portal: &str, statement: &str, params: &[(Option<&[u8]>, bool)]) {
        let Some(prepared) = self.statements.get(statement).cloned() else {
            // Prepared by SQL PREPARE: its text is in the record of that PREPARE.
            let p = Arc::new(Prepared {
                sql: Arc::from(format!("EXECUTE {statement} (protocol-level Bind)")),
                param_types: Vec::new(),
                audited: Arc::new(Audited::default()),
                decided_by: None,
            });
            let head = self.head(&p.sql, Protocol::Extended, &p.audited, None);
            self.portals.insert(
                portal.to_owned(),
                Portal {
                    prepared: p,
                    params: None,
                    head,
                },
            );
            return;
        };
        let captured = Params::capture(
            self.redaction,
            params
                .iter()
                .enumerate()
                .map(|(i, (value, binary))| ParamIn {
                    type_oid: prepared.param_types.get(i).copied().unwrap_or(0),
                    value: *value,
                    binary: *binary,
                }),
        );
        // The same statement bound again with the same recorded parameters (a prepared
        // statement run in a loop; with redaction "types" the values are not recorded)
        // keeps the portal and the head already serialised.
        if let Some(old) = self.portals.get(portal) {
            if Arc::ptr_eq(&old.prepared, &prepared) && old.params == captured {
                return;
            }
        }
        let head = self.head(
            &prepared.sql,
            Protocol::Extended,
            &prepared.audited,
            captured.as_ref(),
        );
        if let Some(old) = self.portals.get_mut(portal) {
            *old = Portal {
                prepared,
                params: captured,
                head,
            };
            return;
        }
        self.portals.insert(
            portal.to_owned(),
            Portal {
                prepared,
                params: captured,
                head,
            },
        );
    }

    pub fn on_execute(&mut self, portal: &str) {
        if self.open.failed {
            return;
        }
        if let Some(p) = self.portals.get(portal) {
            self.open.units.push_back(Unit {
                head: p.head.clone(),
                started: Instant::now(),
                _in_flight: self.log.in_flight(),
            });
        }
    }

    pub fn on_close(&mut self, kind: u8, name: &str) {
        match kind {
            target::STATEMENT => {
                self.statements.remove(name);
            }
            _ => {
                self.portals.remove(name);
            }
        }
    }

    /// Sync (or a FunctionCall, answered with its own ReadyForQuery) closes the batch.
    pub fn on_sync(&mut self) {
        let open = std::mem::take(&mut self.open);
        self.batches.push_back(open.units);
    }

    /// A FunctionCall: a batch of one unit (the server answers it with its own
    /// ReadyForQuery), recorded as the call of the function its OID names (`sql`), with its
    /// arguments as parameters per the redaction setting (their types are not in the
    /// message: recorded as unknown).
    pub fn on_function_call(
        &mut self,
        sql: &str,
        decision: Option<&QueryDecision>,
        refused: Option<Audited>,
        args: &[(Option<&[u8]>, bool)],
    ) {
        let audited = audited_of(refused, decision);
        let params = Params::capture(
            self.redaction,
            args.iter().map(|(value, binary)| ParamIn {
                type_oid: 0,
                value: *value,
                binary: *binary,
            }),
        );
        let mut batch = std::mem::take(&mut self.open).units;
        batch.push_back(self.unit(
            sql,
            Protocol::FunctionCall,
            &audited,
            params.as_ref(),
            Instant::now(),
        ));
        self.batches.push_back(batch);
    }

    /// The units of the batch the server is answering now.
    fn current(&mut self) -> Option<&mut VecDeque<Unit>> {
        if self.batches.is_empty() {
            Some(&mut self.open.units)
        } else {
            self.batches.front_mut()
        }
    }

    /// A server reply that completes a statement: `tag` for CommandComplete, `error`
    /// (SQLSTATE, message) for ErrorResponse, neither for EmptyQuery/PortalSuspended.
    pub fn on_result(&mut self, tag: Option<&str>, error: Option<(&str, &str)>) -> Option<Append> {
        let unit = self.current()?.pop_front()?;
        let rows = tag.and_then(rows_of);
        let outcome = Outcome {
            command_tag: tag,
            rows,
            sqlstate: error.map(|e| e.0),
            message: error.map(|e| e.1),
        };
        Some(self.record(unit, outcome))
    }

    /// ReadyForQuery: the front batch is over; what the server skipped is recorded so.
    pub fn on_ready(&mut self) -> Vec<Append> {
        let Some(rest) = self.batches.pop_front() else {
            return Vec::new();
        };
        rest.into_iter()
            .map(|u| {
                let outcome = Outcome {
                    message: Some("not executed: an earlier error ended the batch"),
                    ..Outcome::default()
                };
                self.record(u, outcome)
            })
            .collect()
    }

    fn record(&mut self, u: Unit, outcome: Outcome<'_>) -> Append {
        self.recorded += 1;
        let duration_us = u64::try_from(u.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.log.statement_done(&u.head, outcome, duration_us)
    }

    fn unit(
        &self,
        sql: &str,
        protocol: Protocol,
        audited: &Audited,
        params: Option<&Params>,
        started: Instant,
    ) -> Unit {
        Unit {
            head: self.head(sql, protocol, audited, params),
            started,
            _in_flight: self.log.in_flight(),
        }
    }

    /// Serialises everything of the record but its outcome.
    fn head(
        &self,
        sql: &str,
        protocol: Protocol,
        audited: &Audited,
        params: Option<&Params>,
    ) -> StatementHead {
        let objects: Vec<ObjectAction<'_>> = audited
            .objects
            .iter()
            .map(|(o, a)| ObjectAction {
                object: o,
                action: a,
            })
            .collect();
        self.log.statement_head(&Statement {
            sql,
            params,
            protocol,
            objects: &objects,
            decision: audited.decision,
            rule: audited.rule.as_deref(),
            ..Statement::default()
        })
    }
}

/// Rows from a command tag: the last number of `SELECT 3`, `INSERT 0 5`, `UPDATE 2`, ...
fn rows_of(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    let first = words.next()?;
    let last = tag.rsplit(' ').next()?;
    match first {
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE" => {
            last.parse().ok()
        }
        _ => None,
    }
}

/// What a unit's record says about its decision: the refusal pgward answered itself, else
/// the policy's decision and the accesses it saw, else nothing (no policy).
fn audited_of(refused: Option<Audited>, decision: Option<&QueryDecision>) -> Audited {
    match (refused, decision) {
        (Some(a), _) => a,
        (None, Some(d)) => {
            let accesses: Vec<_> = d
                .statements
                .iter()
                .flat_map(|s| s.analysis.accesses.iter().cloned())
                .collect();
            Audited::from_policy(&d.decision, &accesses)
        }
        (None, None) => Audited::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::rows_of;

    #[test]
    fn rows_from_command_tags() {
        assert_eq!(rows_of("SELECT 3"), Some(3));
        assert_eq!(rows_of("INSERT 0 5"), Some(5));
        assert_eq!(rows_of("COPY 100000"), Some(100000));
        assert_eq!(rows_of("CREATE TABLE"), None);
        assert_eq!(rows_of("BEGIN"), None);
    }
}
