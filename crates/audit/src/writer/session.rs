//! [`SessionLog`], what a connection records through: its context (session id, client,
//! identity, database) is serialised once when it starts, and each record then serialises
//! only its own members. [`StatementHead`] lets a statement's record be serialised while
//! the statement runs, leaving only the outcome for after the server's reply.
//!
//! The hash chain is computed the same way: a record's hash covers its whole line, which
//! starts (since schema version 2) with bytes every statement record of the session
//! shares — `{"v":2,"instance":…,"event":"statement","session":…,"client":…,
//! "identity":…,"database":…` — so the SHA-256 state after them is computed once per
//! session, a head's members are hashed once per head (a prepared statement executed again
//! reuses its head), and a record only hashes its outcome and the frame (`seq`, `ts`,
//! `prev_hash`): a third of the line rather than all of it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::append::Append;
use super::commit::Body;
use super::log::{with_scratch, AuditLog};
use crate::chain::HashState;
use crate::event::{
    self, Decision, EventKind, ObjectAction, Outcome, Params, Protocol, SessionInfo,
};

impl AuditLog {
    /// Starts recording a client connection: serialises its context once so each later
    /// record of the session only serialises its own fields.
    pub fn session(&self, info: &SessionInfo) -> SessionLog {
        let ctx = event::session_fragment(info);
        let mut stmt_ctx = Vec::with_capacity(24 + ctx.len());
        stmt_ctx.extend_from_slice(b"\"event\":\"");
        stmt_ctx.extend_from_slice(EventKind::Statement.as_str().as_bytes());
        stmt_ctx.extend_from_slice(b"\",");
        stmt_ctx.extend_from_slice(ctx.as_bytes());
        let mut stmt_state = self.inner.prefix_state;
        stmt_state.update(&stmt_ctx);
        SessionLog {
            log: self.clone(),
            ctx: Arc::from(ctx),
            stmt_ctx: Arc::from(stmt_ctx),
            stmt_state,
        }
    }
}

/// A statement's record up to its outcome, from [`SessionLog::statement_head`]: its bytes
/// and the hash state after them. Cheap to clone; belongs to the session that made it.
#[derive(Clone)]
pub struct StatementHead {
    /// The session's `"event":"statement",<context>`.
    ctx: Arc<[u8]>,
    /// `,"protocol":…,"rule":…`, when shared with other heads ([`DecidedHead`]).
    decided: Arc<[u8]>,
    /// The other members up to the outcome (a `Vec` so that a head nothing else holds
    /// any more can be refilled in place: [`SessionLog::statement_head_reusing`]).
    members: Arc<Vec<u8>>,
    /// The log's prefix, `ctx`, `decided` and `members`, hashed.
    state: HashState,
}

impl std::fmt::Debug for StatementHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The SQL may be sensitive: its length is enough for a Debug dump.
        f.debug_struct("StatementHead")
            .field(
                "bytes",
                &(self.ctx.len() + self.decided.len() + self.members.len()),
            )
            .finish()
    }
}

/// The members of statement records that come from the policy's decision — `objects`,
/// `decision` and `rule` — serialised once and reused for every statement decided alike
/// (the proxy keeps one per prepared statement and per cached policy decision).
#[derive(Clone)]
pub struct DecisionJson(Arc<[u8]>);

impl DecisionJson {
    /// Serialises the decision members.
    pub fn new(objects: &[ObjectAction<'_>], decision: Decision, rule: Option<&str>) -> Self {
        let mut v = Vec::with_capacity(96);
        event::decision_members_into(&mut v, objects, decision, rule);
        DecisionJson(Arc::from(v))
    }
}

impl std::fmt::Debug for DecisionJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl PartialEq for DecisionJson {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for DecisionJson {}

/// The start of a session's statement records for one protocol and decision — up to and
/// including `rule` — with its hash state: a session's Queries that the policy decides
/// alike share it, so only their text is hashed per statement. From
/// [`SessionLog::decided`].
#[derive(Clone)]
pub struct DecidedHead {
    /// `,"protocol":"…"` and the [`DecisionJson`].
    bytes: Arc<[u8]>,
    /// The log's prefix, the session's statement context and `bytes`, hashed.
    state: HashState,
}

impl std::fmt::Debug for DecidedHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.bytes))
    }
}

/// The per-connection recorder, from [`AuditLog::session`].
#[derive(Clone)]
pub struct SessionLog {
    log: AuditLog,
    ctx: Arc<str>,
    /// `"event":"statement",<ctx>`: how every statement record's body starts.
    stmt_ctx: Arc<[u8]>,
    /// The log's prefix and `stmt_ctx`, hashed.
    stmt_state: HashState,
}

impl SessionLog {
    /// Records a successful sign-in.
    pub fn connect(&self, c: &event::Connect<'_>) -> Append {
        self.log.append(EventKind::Connect, &self.ctx, c)
    }

    /// Records a refused sign-in with its exact reason.
    pub fn auth_failed(&self, reason: &str) -> Append {
        let detail = event::AuthFailed { reason };
        self.log.append(EventKind::AuthFailed, &self.ctx, &detail)
    }

    /// Records a statement. Await the result before relaying the statement's result to
    /// the client; on `Err`, answer SQLSTATE 58030 instead.
    pub fn statement(&self, s: &event::Statement<'_>) -> Append {
        // The same two writers as `statement_head` + `statement_done`, in one pass.
        let fill = |v: &mut Vec<u8>| {
            event::statement_head_into(v, s);
            event::statement_tail_into(v, &s.outcome, s.duration_us);
        };
        with_scratch(fill, |members| {
            let mut state = self.stmt_state;
            state.update(members);
            self.log.append_body(&Body {
                hashed: &[&self.stmt_ctx, members],
                state,
                rest: None,
            })
        })
    }

    /// Serialises the members of a statement's record that are known before it runs
    /// (text, parameters, protocol, objects, decision, rule), so that work is done while
    /// the statement runs upstream, and only once for a prepared statement executed again
    /// with the same recorded parameters. `outcome` and `duration_us` of `s` are ignored:
    /// [`SessionLog::statement_done`] supplies them. The record is byte for byte what
    /// [`SessionLog::statement`] writes.
    pub fn statement_head(&self, s: &event::Statement<'_>) -> StatementHead {
        self.head_of(None, Arc::from(&[][..]), self.stmt_state, |v| {
            event::statement_head_into(v, s)
        })
    }

    /// The members of this session's statement records from `protocol` to `rule`, and
    /// their hash state: serialise a decision once per session and protocol, then
    /// [`SessionLog::statement_head_reusing`] for each statement it decides.
    pub fn decided(&self, protocol: Protocol, decision: &DecisionJson) -> DecidedHead {
        let mut bytes = Vec::with_capacity(24 + decision.0.len());
        event::protocol_into(&mut bytes, protocol);
        bytes.extend_from_slice(&decision.0);
        let mut state = self.stmt_state;
        state.update(&bytes);
        DecidedHead {
            bytes: Arc::from(bytes),
            state,
        }
    }

    /// [`SessionLog::statement_head`] of a statement decided as `decided` says (from this
    /// session), into the memory of `spare` — a head no longer needed (its statement
    /// recorded) — when nothing else holds it: only the text and parameters are
    /// serialised and hashed, and a session recording one Query after another allocates
    /// nothing for their heads.
    pub fn statement_head_reusing(
        &self,
        spare: Option<StatementHead>,
        decided: &DecidedHead,
        sql: &str,
        params: Option<&Params>,
    ) -> StatementHead {
        self.head_of(spare, decided.bytes.clone(), decided.state, |v| {
            event::statement_text_into(v, sql, params)
        })
    }

    fn head_of(
        &self,
        spare: Option<StatementHead>,
        decided: Arc<[u8]>,
        state: HashState,
        fill: impl Fn(&mut Vec<u8>),
    ) -> StatementHead {
        /// A buffer larger than this (one huge statement) is not kept for the next one.
        const KEEP: usize = 16 * 1024;
        let mut members = spare
            .map(|h| h.members)
            .filter(|m| m.capacity() <= KEEP)
            .unwrap_or_default();
        let v = match Arc::get_mut(&mut members) {
            Some(v) => v,
            None => {
                members = Arc::new(Vec::with_capacity(256));
                Arc::make_mut(&mut members)
            }
        };
        v.clear();
        fill(v);
        let mut state = state;
        state.update(v);
        StatementHead {
            ctx: self.stmt_ctx.clone(),
            decided,
            members,
            state,
        }
    }

    /// Records a statement from its head and result. Await it before relaying the result.
    pub fn statement_done(
        &self,
        head: &StatementHead,
        outcome: Outcome<'_>,
        duration_us: u64,
    ) -> Append {
        // The outcome is serialised straight into the record, and hashed with the frame.
        let tail = |v: &mut Vec<u8>| event::statement_tail_into(v, &outcome, duration_us);
        let body = Body {
            hashed: &[&head.ctx, &head.decided, &head.members],
            state: head.state,
            rest: Some(&tail),
        };
        // Group commit only pays when other statements may complete meanwhile: a lone
        // session writes at once (a yield would wake an idle runtime thread for nothing).
        // The caller's own statement is still counted here.
        if self.log.inner.inline && self.log.inner.in_flight.load(Ordering::Relaxed) > 1 {
            self.log.append_deferred(&body)
        } else {
            self.log.append_body(&body)
        }
    }

    /// Counts a statement as running until the returned guard is dropped: drop it after
    /// [`SessionLog::statement_done`] for it. Statement records are group-committed only
    /// while several statements are running.
    pub fn in_flight(&self) -> InFlight {
        self.log.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.log.clone())
    }

    /// Records the end of the session.
    pub fn disconnect(&self, d: &event::Disconnect<'_>) -> Append {
        self.log.append(EventKind::Disconnect, &self.ctx, d)
    }

    /// The log this session writes to.
    pub fn log(&self) -> &AuditLog {
        &self.log
    }
}

/// A statement sent upstream and not yet recorded (see [`SessionLog::in_flight`]).
pub struct InFlight(AuditLog);

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::event::{ObjectAction, Param, Params, Protocol, Statement};
    use crate::AuditLogBuilder;

    /// `statement_head` + `statement_done` write exactly what `statement` writes.
    #[test]
    fn a_head_and_its_outcome_make_the_same_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let log = AuditLogBuilder::new("t").file(&path).open().unwrap();
        let s = log.session(&SessionInfo {
            session: "7".into(),
            ..SessionInfo::default()
        });
        let params = Params(vec![Param {
            ty: "int4".into(),
            format: None,
            value: Some(Some("42".into())),
        }]);
        let objects = [ObjectAction {
            object: "public.t",
            action: "select",
        }];
        let st = Statement {
            sql: "SELECT \"x\" FROM t WHERE a = $1 -- eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
            params: Some(&params),
            protocol: Protocol::Extended,
            objects: &objects,
            rule: Some("r"),
            outcome: Outcome {
                command_tag: Some("SELECT 1"),
                rows: Some(1),
                ..Outcome::default()
            },
            duration_us: 12,
            ..Statement::default()
        };
        s.statement(&st).wait().unwrap();
        let head = s.statement_head(&st);
        s.statement_done(&head, st.outcome, st.duration_us)
            .wait()
            .unwrap();
        let decided = s.decided(
            st.protocol,
            &DecisionJson::new(st.objects, st.decision, st.rule),
        );
        let head = s.statement_head_reusing(None, &decided, st.sql, st.params);
        s.statement_done(&head, st.outcome, st.duration_us)
            .wait()
            .unwrap();
        // Every line hashes as the verifier computes it (the writer hashed most of it
        // ahead, from per-session and per-head states).
        let report = crate::verify(std::slice::from_ref(&path), None).unwrap();
        assert!(report.is_ok(), "{:?}", report.findings);
        assert_eq!(report.records, 4);
        let text = fs::read_to_string(&path).unwrap();
        let bodies: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"event\":\"statement\""))
            .map(|l| &l[l.find("\"event\"").unwrap()..l.find(",\"seq\"").unwrap()])
            .collect();
        assert_eq!(bodies.len(), 3);
        assert_eq!(bodies[1], bodies[2]);
        assert_eq!(bodies[0], bodies[1]);
        assert!(bodies[0].contains("[REDACTED JWT]"));
        assert!(bodies[0]
            .ends_with("\"outcome\":{\"command_tag\":\"SELECT 1\",\"rows\":1},\"duration_us\":12"));
    }
}
