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
//! serialised between the server's reply and its relay to the client. The members that
//! come from the policy's decision (`protocol`, `objects`, `decision`, `rule`, which come
//! before the text in a record) are serialised and hashed once per decision
//! ([`DecidedHead`]): kept with each prepared statement, and for Queries reused while the
//! policy decides the next one alike (its cache hands back the same decision for
//! statements that differ only in their constants), so a Query's head only serialises
//! and hashes its text.
//!
//! Nothing here allocates per statement in the steady state: one queue holds the units of
//! every batch, the unnamed statement and portal (what drivers use most) have slots of
//! their own, and a Bind of the statement its portal was last bound to, with parameters
//! recorded the same way, keeps the portal as it is without looking the statement up.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use pgward_audit::{
    Append, DecidedHead, Decision, DecisionJson, InFlight, ObjectAction, Outcome, ParamIn, Params,
    Protocol, Redaction, SessionLog, StatementHead,
};
use pgward_policy::{Access, QueryDecision, Verdict};
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
    fn from_policy(
        d: &pgward_policy::Decision,
        accesses: &[pgward_policy::Access],
        masked: &[String],
    ) -> Self {
        let decision = match (d.verdict, d.enforced) {
            (Verdict::Allow, _) => Decision::Allow,
            (Verdict::Deny, true) => Decision::Deny,
            (Verdict::Deny, false) => Decision::ObserveDeny,
        };
        Self {
            decision,
            rule: Some(d.rule.clone()),
            // Masked columns the statement reads: action `mask`, the mask in parentheses.
            objects: accesses
                .iter()
                .map(|a| (a.object.to_string(), a.action.as_str().to_owned()))
                .chain(masked.iter().map(|m| (m.clone(), "mask".to_owned())))
                .collect(),
        }
    }

    /// Denied by pgward itself but not enforced (observe mode).
    pub fn observed(d: &pgward_policy::Decision) -> Self {
        Self::from_policy(d, &[], &[])
    }

    /// Refused by pgward itself (not the policy), e.g. the audit log cannot write.
    pub fn refused(rule: &str) -> Self {
        Self {
            decision: Decision::Deny,
            rule: Some(rule.to_owned()),
            objects: Vec::new(),
        }
    }

    /// The record members it makes.
    fn json(&self) -> DecisionJson {
        let objects: Vec<ObjectAction<'_>> = self
            .objects
            .iter()
            .map(|(o, a)| ObjectAction {
                object: o,
                action: a,
            })
            .collect();
        DecisionJson::new(&objects, self.decision, self.rule.as_deref())
    }
}

/// The masked columns a decision's statements read (one statement's, or all of them).
fn masked_of(d: &QueryDecision, one: Option<&pgward_policy::StatementDecision>) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |s: &pgward_policy::StatementDecision| {
        if let Some(p) = &s.masks {
            for c in &p.columns {
                if !out.contains(c) {
                    out.push(c.clone());
                }
            }
        }
    };
    match one {
        Some(s) => add(s),
        None => d.statements.iter().for_each(add),
    }
    out
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
    decision: DecisionJson,
    /// `decision` for the extended protocol, serialised and hashed.
    decided: DecidedHead,
    /// The policy's (cached) decision `decision` was made from: the same decision for the
    /// same text again means the same members, without serialising them to compare.
    decided_by: Option<Arc<QueryDecision>>,
}

/// A bound portal and its record's head.
struct Portal {
    /// The statement it was bound to, by name, and the [`Trail::generation`] of the
    /// statements then: while both are the same, so is `prepared`.
    statement: String,
    generation: u64,
    prepared: Arc<Prepared>,
    params: Option<Params>,
    /// How many parameters the Bind had.
    bound: usize,
    head: StatementHead,
}

/// Prepared statements or portals by name, the unnamed one (drivers' usual) in a slot of
/// its own rather than hashed.
struct Named<T> {
    unnamed: Option<T>,
    named: HashMap<String, T>,
}

impl<T> Default for Named<T> {
    fn default() -> Self {
        Named {
            unnamed: None,
            named: HashMap::new(),
        }
    }
}

impl<T> Named<T> {
    fn get(&self, name: &str) -> Option<&T> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut T> {
        if name.is_empty() {
            self.unnamed.as_mut()
        } else {
            self.named.get_mut(name)
        }
    }

    fn insert(&mut self, name: &str, value: T) {
        if name.is_empty() {
            self.unnamed = Some(value);
        } else {
            self.named.insert(name.to_owned(), value);
        }
    }

    fn remove(&mut self, name: &str) {
        if name.is_empty() {
            self.unnamed = None;
        } else {
            self.named.remove(name);
        }
    }
}

/// The decision members last serialised for a policy decision, and what they were made
/// from (compared by value: the trail gets the decision by reference, so its identity
/// proves nothing once it may have been freed).
struct LastDecision {
    verdict: Verdict,
    enforced: bool,
    rule: String,
    accesses: Vec<Access>,
    masked: Vec<String>,
    json: DecisionJson,
    /// `json` for the simple protocol (a Query's), serialised and hashed.
    simple: DecidedHead,
}

pub struct Trail {
    log: SessionLog,
    redaction: Redaction,
    /// The units of every batch sent and not yet closed by ReadyForQuery (the front one
    /// is being answered), then those of the batch the client is still building (before
    /// its Sync).
    units: VecDeque<Unit>,
    /// How many units of `units` each closed batch still has, front first.
    closed: VecDeque<usize>,
    /// How many units at the back of `units` the open batch has.
    open_units: usize,
    /// A statement in the open batch was denied: the server skips the rest up to Sync.
    open_failed: bool,
    statements: Named<Arc<Prepared>>,
    /// Bumped whenever `statements` changes, so a portal can tell its statement is
    /// still the one of that name.
    generation: u64,
    portals: Named<Portal>,
    last_decision: Option<LastDecision>,
    /// The members of a statement no policy decided, and those of such a Query.
    undecided: DecisionJson,
    undecided_simple: DecidedHead,
    /// The head of the last statement recorded, whose memory the next Query's reuses.
    spare: Option<StatementHead>,
    /// Statement records written so far.
    pub recorded: u64,
}

impl std::fmt::Debug for Trail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trail")
            .field("batches", &self.closed.len())
            .field("recorded", &self.recorded)
            .finish_non_exhaustive()
    }
}

impl Trail {
    pub fn new(log: SessionLog) -> Self {
        let redaction = log.log().redaction();
        let undecided = Audited::default().json();
        let undecided_simple = log.decided(Protocol::Simple, &undecided);
        Self {
            log,
            redaction,
            units: VecDeque::new(),
            closed: VecDeque::new(),
            open_units: 0,
            open_failed: false,
            statements: Named::default(),
            generation: 0,
            portals: Named::default(),
            last_decision: None,
            undecided,
            undecided_simple,
            spare: None,
            recorded: 0,
        }
    }

    /// Whether statements may be forwarded now (fail-closed when the log can't write).
    pub fn ready(&self) -> bool {
        self.log.log().ready().is_ok()
    }

    /// Adds a unit to the open batch.
    fn push(&mut self, unit: Unit) {
        self.units.push_back(unit);
        self.open_units += 1;
    }

    /// The open batch is sent (Sync, a Query or a FunctionCall ends it).
    fn close_open(&mut self) {
        self.closed.push_back(self.open_units);
        self.open_units = 0;
        self.open_failed = false;
    }

    /// A Query: one batch of its own (after any extended messages not yet synced,
    /// which the server answers first).
    pub fn on_query(
        &mut self,
        sql: &str,
        decision: Option<&QueryDecision>,
        refused: Option<Audited>,
    ) {
        let now = Instant::now();
        match (refused, decision) {
            (Some(a), _) => {
                let decided = self.log.decided(Protocol::Simple, &a.json());
                let u = self.unit(sql, &decided, None, now);
                self.push(u);
            }
            (None, Some(d)) if d.statements.len() > 1 && !d.decision.blocks() => {
                for s in &d.statements {
                    let (_, decided) = self.decided(
                        &s.decision,
                        s.analysis.accesses.iter(),
                        masked_of(d, Some(s)),
                    );
                    let u = self.unit(&s.analysis.sql, &decided, None, now);
                    self.push(u);
                }
            }
            (None, Some(d)) => {
                let accesses = d.statements.iter().flat_map(|s| s.analysis.accesses.iter());
                let (_, decided) = self.decided(&d.decision, accesses, masked_of(d, None));
                let u = self.unit(sql, &decided, None, now);
                self.push(u);
            }
            (None, None) => {
                let decided = self.undecided_simple.clone();
                let u = self.unit(sql, &decided, None, now);
                self.push(u);
            }
        }
        self.close_open();
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
        let dj = self.decision_of(refused, decision.map(|d| &**d));
        // The same text parsed again under the same name with the same decision (drivers
        // re-parse the unnamed statement for every query) keeps the prepared statement,
        // so its portals' serialised heads stay valid and are reused.
        let same = self
            .statements
            .get(name)
            .filter(|p| *p.sql == *sql && p.param_types == param_types && p.decision == dj);
        let kept = same.is_some();
        let prepared = match same {
            Some(p) => p.clone(),
            None => Arc::new(Prepared {
                sql: Arc::from(sql),
                param_types,
                decided: self.log.decided(Protocol::Extended, &dj),
                decision: dj,
                decided_by,
            }),
        };
        if denied && !self.open_failed {
            self.open_failed = true;
            let u = self.unit(&prepared.sql, &prepared.decided, None, Instant::now());
            self.push(u);
        }
        if !kept {
            self.statements.insert(name, prepared);
            self.generation += 1;
        }
    }

    pub fn on_bind(&mut self, portal: &str, statement: &str, params: &[(Option<&[u8]>, bool)]) {
        // Bound again to the same statement (a prepared statement run in a loop): with
        // redaction "types" or "none" the recorded parameters depend only on the statement
        // and their number, so the portal and its head stay as they are.
        if let Some(old) = self.portals.get(portal) {
            if old.generation == self.generation
                && old.statement == statement
                && self.redaction != Redaction::Full
                && old.bound == params.len()
            {
                return;
            }
        }
        let generation = self.generation;
        let Some(prepared) = self.statements.get(statement).cloned() else {
            // Prepared by SQL PREPARE: its text is in the record of that PREPARE.
            let p = Arc::new(Prepared {
                sql: Arc::from(format!("EXECUTE {statement} (protocol-level Bind)")),
                param_types: Vec::new(),
                decision: self.undecided.clone(),
                decided: self.log.decided(Protocol::Extended, &self.undecided),
                decided_by: None,
            });
            let head = self.head(&p.sql, &p.decided, None);
            self.portals.insert(
                portal,
                Portal {
                    statement: statement.to_owned(),
                    generation,
                    prepared: p,
                    params: None,
                    bound: params.len(),
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
        // The same statement bound again with the same recorded parameters keeps the
        // portal and the head already serialised.
        if let Some(old) = self.portals.get_mut(portal) {
            if Arc::ptr_eq(&old.prepared, &prepared) && old.params == captured {
                old.statement.clear();
                old.statement.push_str(statement);
                old.generation = generation;
                old.bound = params.len();
                return;
            }
        }
        let head = self.head(&prepared.sql, &prepared.decided, captured.as_ref());
        if let Some(old) = self.portals.get_mut(portal) {
            old.statement.clear();
            old.statement.push_str(statement);
            old.generation = generation;
            old.prepared = prepared;
            old.params = captured;
            old.bound = params.len();
            old.head = head;
            return;
        }
        self.portals.insert(
            portal,
            Portal {
                statement: statement.to_owned(),
                generation,
                prepared,
                params: captured,
                bound: params.len(),
                head,
            },
        );
    }

    pub fn on_execute(&mut self, portal: &str) {
        if self.open_failed {
            return;
        }
        if let Some(p) = self.portals.get(portal) {
            let u = Unit {
                head: p.head.clone(),
                started: Instant::now(),
                _in_flight: self.log.in_flight(),
            };
            self.push(u);
        }
    }

    pub fn on_close(&mut self, kind: u8, name: &str) {
        match kind {
            target::STATEMENT => {
                self.statements.remove(name);
                self.generation += 1;
            }
            _ => {
                self.portals.remove(name);
            }
        }
    }

    /// Sync (or a FunctionCall, answered with its own ReadyForQuery) closes the batch.
    pub fn on_sync(&mut self) {
        self.close_open();
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
        let dj = self.decision_of(refused, decision);
        let params = Params::capture(
            self.redaction,
            args.iter().map(|(value, binary)| ParamIn {
                type_oid: 0,
                value: *value,
                binary: *binary,
            }),
        );
        let decided = self.log.decided(Protocol::FunctionCall, &dj);
        let u = self.unit(sql, &decided, params.as_ref(), Instant::now());
        self.push(u);
        self.close_open();
    }

    /// A server reply that completes a statement: `tag` for CommandComplete, `error`
    /// (SQLSTATE, message) for ErrorResponse, neither for EmptyQuery/PortalSuspended.
    pub fn on_result(&mut self, tag: Option<&str>, error: Option<(&str, &str)>) -> Option<Append> {
        // The batch being answered: the front closed one, else the open one (the server
        // answers an error before the client's Sync).
        let left = match self.closed.front_mut() {
            Some(n) => n,
            None => &mut self.open_units,
        };
        if *left == 0 {
            return None;
        }
        *left -= 1;
        let unit = self.units.pop_front()?;
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
        let Some(rest) = self.closed.pop_front() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for _ in 0..rest {
            let Some(u) = self.units.pop_front() else {
                break;
            };
            let outcome = Outcome {
                message: Some("not executed: an earlier error ended the batch"),
                ..Outcome::default()
            };
            out.push(self.record(u, outcome));
        }
        out
    }

    fn record(&mut self, u: Unit, outcome: Outcome<'_>) -> Append {
        self.recorded += 1;
        let duration_us = u64::try_from(u.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let append = self.log.statement_done(&u.head, outcome, duration_us);
        // Its memory serves the next head (after the record: the guard counts the
        // statement as running until then).
        let Unit {
            head, _in_flight, ..
        } = u;
        drop(_in_flight);
        self.spare = Some(head);
        append
    }

    fn unit(
        &mut self,
        sql: &str,
        decided: &DecidedHead,
        params: Option<&Params>,
        started: Instant,
    ) -> Unit {
        Unit {
            head: self.head(sql, decided, params),
            started,
            _in_flight: self.log.in_flight(),
        }
    }

    /// Serialises everything of the record but its outcome.
    fn head(&mut self, sql: &str, decided: &DecidedHead, params: Option<&Params>) -> StatementHead {
        let spare = self.spare.take();
        self.log.statement_head_reusing(spare, decided, sql, params)
    }

    /// The decision members of a policy decision over `accesses`: those of the last
    /// decision when it is the same (the usual case: the policy's cache hands back one
    /// decision for statements that differ only in their constants).
    fn decided<'a>(
        &mut self,
        d: &pgward_policy::Decision,
        accesses: impl Iterator<Item = &'a Access> + Clone,
        masked: Vec<String>,
    ) -> (DecisionJson, DecidedHead) {
        if let Some(last) = &self.last_decision {
            if last.verdict == d.verdict
                && last.enforced == d.enforced
                && last.rule == d.rule
                && last.masked == masked
                && accesses.clone().eq(last.accesses.iter())
            {
                return (last.json.clone(), last.simple.clone());
            }
        }
        let accesses: Vec<Access> = accesses.cloned().collect();
        let json = Audited::from_policy(d, &accesses, &masked).json();
        let simple = self.log.decided(Protocol::Simple, &json);
        self.last_decision = Some(LastDecision {
            verdict: d.verdict,
            enforced: d.enforced,
            rule: d.rule.clone(),
            accesses,
            masked,
            json: json.clone(),
            simple: simple.clone(),
        });
        (json, simple)
    }

    /// What a unit's record says about its decision: the refusal pgward answered itself,
    /// else the policy's decision and the accesses it saw, else nothing (no policy).
    fn decision_of(
        &mut self,
        refused: Option<Audited>,
        decision: Option<&QueryDecision>,
    ) -> DecisionJson {
        match (refused, decision) {
            (Some(a), _) => a.json(),
            (None, Some(d)) => {
                let accesses = d.statements.iter().flat_map(|s| s.analysis.accesses.iter());
                self.decided(&d.decision, accesses, masked_of(d, None)).0
            }
            (None, None) => self.undecided.clone(),
        }
    }
}

/// Rows from a command tag: the last number of `SELECT 3`, `INSERT 0 5`, `UPDATE 2`, ...
fn rows_of(tag: &str) -> Option<u64> {
    let b = tag.as_bytes();
    let first = b.iter().position(|&c| c == b' ').map_or(b, |i| &b[..i]);
    match first {
        b"SELECT" | b"INSERT" | b"UPDATE" | b"DELETE" | b"MERGE" | b"COPY" | b"FETCH" | b"MOVE" => {
            let last = b.iter().rposition(|&c| c == b' ').map_or(0, |i| i + 1);
            let digits = &b[last..];
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            digits.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?
                    .checked_add(u64::from(char::from(d).to_digit(10)?))
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use pgward_audit::{read_records, AuditLogBuilder, ReadItem, Record, SessionInfo};

    use super::*;

    /// A trail on a log of its own; the log's file.
    fn trail(name: &str, redaction: Redaction) -> (Trail, PathBuf) {
        let dir = std::env::temp_dir().join(format!("pgward-trail-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("a.jsonl");
        let log = AuditLogBuilder::new("t")
            .file(&path)
            .redaction(redaction)
            .open()
            .unwrap();
        (Trail::new(log.session(&SessionInfo::default())), path)
    }

    fn statements(path: &Path) -> Vec<Record> {
        read_records(path)
            .unwrap()
            .filter_map(|i| match i.unwrap() {
                ReadItem::Record { record, .. } if record.event == "statement" => Some(*record),
                _ => None,
            })
            .collect()
    }

    fn done(a: Option<Append>) {
        a.unwrap().wait().unwrap();
    }

    /// Parse/Bind/Execute bookkeeping: a portal bound again keeps its head only while its
    /// statement and recorded parameters are the same; a statement parsed again or closed
    /// under the same name is what the next Bind records; an error ends the batch and
    /// the rest is recorded as not executed at ReadyForQuery.
    #[test]
    fn extended_statements_are_recorded_with_their_current_text_and_parameters() {
        let (mut t, path) = trail("ext", Redaction::Full);
        t.on_parse("s", "select $1", vec![23], None, None);
        for v in [b"1", b"1", b"2"] {
            t.on_bind("", "s", &[(Some(v), false)]);
            t.on_execute("");
        }
        t.on_sync();
        for _ in 0..3 {
            done(t.on_result(Some("SELECT 1"), None));
        }
        assert!(t.on_ready().is_empty());
        // Parsed again under the same name with another text, then bound to the portal.
        t.on_parse("s", "select $1 + 1", vec![23], None, None);
        t.on_bind("", "s", &[(Some(b"2"), false)]);
        t.on_execute("");
        // Closed: a Bind to it names it (prepared by SQL PREPARE, as far as pgward knows).
        t.on_close(target::STATEMENT, "s");
        t.on_bind("", "s", &[]);
        t.on_execute("");
        t.on_sync();
        done(t.on_result(None, Some(("22012", "division by zero"))));
        let skipped = t.on_ready();
        assert_eq!(skipped.len(), 1);
        for a in skipped {
            a.wait().unwrap();
        }
        // A Query after it, in its own batch.
        t.on_query("select 3", None, None);
        done(t.on_result(Some("SELECT 1"), None));
        assert!(t.on_ready().is_empty());
        assert_eq!(t.recorded, 6);

        let recs = statements(&path);
        let sql: Vec<&str> = recs.iter().map(|r| r.sql.as_deref().unwrap()).collect();
        assert_eq!(
            sql,
            [
                "select $1",
                "select $1",
                "select $1",
                "select $1 + 1",
                "EXECUTE s (protocol-level Bind)",
                "select 3"
            ]
        );
        let values: Vec<Option<String>> = recs
            .iter()
            .map(|r| {
                r.params
                    .as_ref()
                    .and_then(|p| p.0.first())
                    .and_then(|p| p.value.clone().flatten())
            })
            .collect();
        let v = |s: &str| Some(s.to_string());
        assert_eq!(values, [v("1"), v("1"), v("2"), v("2"), None, None]);
        assert_eq!(recs[3].sqlstate(), Some("22012"));
        assert_eq!(
            recs[4].outcome.as_ref().and_then(|o| o.message.as_deref()),
            Some("not executed: an earlier error ended the batch")
        );
        assert_eq!(recs[5].protocol.as_deref(), Some("simple"));
        assert_eq!(recs[5].outcome.as_ref().and_then(|o| o.rows), Some(1));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// With parameter types only, a portal bound again to the same statement keeps its
    /// head without looking at the parameters, until the statement changes or the number
    /// of parameters does.
    #[test]
    fn a_prepared_statement_bound_again_keeps_its_head_until_it_changes() {
        let (mut t, path) = trail("types", Redaction::Types);
        t.on_parse("p1", "select $1", vec![23], None, None);
        let bind = |t: &mut Trail, n: usize| {
            let params: Vec<(Option<&[u8]>, bool)> = vec![(Some(&b"7"[..]), false); n];
            t.on_bind("", "p1", &params);
            t.on_execute("");
        };
        bind(&mut t, 1);
        bind(&mut t, 1);
        bind(&mut t, 2);
        t.on_parse("p1", "select $1::text", vec![25], None, None);
        bind(&mut t, 1);
        t.on_sync();
        for _ in 0..4 {
            done(t.on_result(Some("SELECT 1"), None));
        }
        assert!(t.on_ready().is_empty());
        let recs = statements(&path);
        let got: Vec<(String, Vec<String>)> = recs
            .iter()
            .map(|r| {
                let types = r
                    .params
                    .as_ref()
                    .map(|p| p.0.iter().map(|p| p.ty.clone()).collect());
                (r.sql.clone().unwrap(), types.unwrap_or_default())
            })
            .collect();
        let want = |sql: &str, types: &[&str]| {
            (
                sql.to_string(),
                types.iter().map(|t| t.to_string()).collect(),
            )
        };
        assert_eq!(
            got,
            [
                want("select $1", &["int4"]),
                want("select $1", &["int4"]),
                want("select $1", &["int4", "unknown"]),
                want("select $1::text", &["text"]),
            ]
        );
        assert!(recs.iter().all(|r| r
            .params
            .as_ref()
            .unwrap()
            .0
            .iter()
            .all(|p| p.value.is_none())));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn rows_from_command_tags() {
        assert_eq!(rows_of("SELECT 3"), Some(3));
        assert_eq!(rows_of("INSERT 0 5"), Some(5));
        assert_eq!(rows_of("COPY 100000"), Some(100000));
        assert_eq!(rows_of("CREATE TABLE"), None);
        assert_eq!(rows_of("BEGIN"), None);
        assert_eq!(rows_of("SELECT"), None);
        assert_eq!(rows_of("SELECT +3"), None);
        assert_eq!(rows_of("UPDATE 18446744073709551615"), Some(u64::MAX));
        assert_eq!(rows_of("UPDATE 18446744073709551616"), None);
    }
}
