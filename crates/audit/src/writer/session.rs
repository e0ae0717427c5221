//! [`SessionLog`], what a connection records through: its context (session id, client,
//! identity, database) is serialised once when it starts, and each record then serialises
//! only its own members. [`StatementHead`] lets a statement's record be serialised while
//! the statement runs, leaving only the outcome for after the server's reply.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::append::Append;
use super::log::AuditLog;
use crate::event::{self, EventKind, Outcome, SessionInfo};

impl AuditLog {
    /// Starts recording a client connection: serialises its context once so each later
    /// record of the session only serialises its own fields.
    pub fn session(&self, info: &SessionInfo) -> SessionLog {
        SessionLog {
            log: self.clone(),
            ctx: Arc::from(event::session_fragment(info)),
        }
    }
}

/// A statement's record up to its outcome, from [`SessionLog::statement_head`]. Cheap to
/// clone; belongs to the session that made it.
#[derive(Clone)]
pub struct StatementHead(Arc<[u8]>);

impl std::fmt::Debug for StatementHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The SQL may be sensitive: its length is enough for a Debug dump.
        f.debug_struct("StatementHead")
            .field("bytes", &self.0.len())
            .finish()
    }
}

/// The per-connection recorder, from [`AuditLog::session`].
#[derive(Clone)]
pub struct SessionLog {
    log: AuditLog,
    ctx: Arc<str>,
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
        let head = event::StatementHead::of(s);
        self.log.append_with(|v| {
            event::body_into(v, EventKind::Statement, &self.ctx, &head);
            event::statement_tail_into(v, &s.outcome, s.duration_us);
        })
    }

    /// Serialises the members of a statement's record that are known before it runs
    /// (text, parameters, protocol, objects, decision, rule), so that work is done while
    /// the statement runs upstream, and only once for a prepared statement executed again
    /// with the same recorded parameters. `outcome` and `duration_us` of `s` are ignored:
    /// [`SessionLog::statement_done`] supplies them. The record is byte for byte what
    /// [`SessionLog::statement`] writes.
    pub fn statement_head(&self, s: &event::Statement<'_>) -> StatementHead {
        let mut v = Vec::with_capacity(512 + self.ctx.len());
        event::body_into(
            &mut v,
            EventKind::Statement,
            &self.ctx,
            &event::StatementHead::of(s),
        );
        StatementHead(Arc::from(v))
    }

    /// Records a statement from its head and result. Await it before relaying the result.
    pub fn statement_done(
        &self,
        head: &StatementHead,
        outcome: Outcome<'_>,
        duration_us: u64,
    ) -> Append {
        // Group commit only pays when other statements may complete meanwhile: a lone
        // session writes at once (a yield would wake an idle runtime thread for nothing).
        // The caller's own statement is still counted here.
        let fill = |v: &mut Vec<u8>| {
            v.extend_from_slice(&head.0);
            event::statement_tail_into(v, &outcome, duration_us);
        };
        if self.log.inner.inline && self.log.inner.in_flight.load(Ordering::Relaxed) > 1 {
            self.log.append_deferred(fill)
        } else {
            self.log.append_with(fill)
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
        let text = fs::read_to_string(&path).unwrap();
        let bodies: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"event\":\"statement\""))
            .map(|l| &l[l.find("\"event\"").unwrap()..l.find(",\"prev_hash\"").unwrap()])
            .collect();
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[0], bodies[1]);
        assert!(bodies[0].contains("[REDACTED JWT]"));
        assert!(bodies[0]
            .ends_with("\"outcome\":{\"command_tag\":\"SELECT 1\",\"rows\":1},\"duration_us\":12"));
    }
}
