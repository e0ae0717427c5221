//! Which client_encoding the server will read each statement in, so pgward reads the same
//! characters (see `pgward_policy::encoding`).
//!
//! The server converts a Query or Parse from the encoding in force when it *receives* the
//! message: a `SET client_encoding` earlier in the same string does not apply to the rest
//! of it, but one in an earlier message does. pgward decides messages as they arrive,
//! possibly before the server has run the ones before them (pipelining), and a SET may yet
//! fail or be rolled back (`SET LOCAL`, an aborted transaction). So pgward keeps every
//! encoding that may be in force:
//!
//! - the one the server last reported (ParameterStatus, at startup and after each change),
//! - each one a statement it forwarded may have set (SET, RESET, `set_config`, RESET ALL,
//!   DISCARD ALL), until the server has answered everything sent so far,
//! - inside a transaction block, each one in force earlier in it (ROLLBACK, ROLLBACK TO
//!   SAVEPOINT and the end of `SET LOCAL` go back to them), until the session is idle
//!   outside a transaction again.
//!
//! ASCII reads the same in every accepted encoding. Text with other bytes is read only when
//! every encoding that may be in force reads it as the same characters; otherwise it is
//! refused. A change the server reports that pgward did not see coming (procedural code
//! can set client_encoding where pgward cannot see it) ends the session when a policy is
//! enforced: statements already decided may have been read in the wrong encoding.

use std::borrow::Cow;

use pgward_policy::encoding::{client_encoding, ClientEncoding};
use pgward_policy::{QueryDecision, SettingChange};
use pgward_wire::tag::frontend as fe;

/// An encoding that may be in force: one pgward reads, or the name of one it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Candidate {
    Readable(ClientEncoding),
    Unreadable(String),
}

impl Candidate {
    fn named(name: &str) -> Self {
        match client_encoding(name) {
            Ok(e) => Candidate::Readable(e),
            Err(_) => Candidate::Unreadable(name.to_owned()),
        }
    }

    fn name(&self) -> &str {
        match self {
            Candidate::Readable(e) => e.name(),
            Candidate::Unreadable(n) => n,
        }
    }
}

/// Why a statement's text could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// Not valid in the encoding in force (the server would refuse it too: 22021).
    Invalid(String),
    /// Several encodings may be in force and they read the text differently, or one of
    /// them is not one pgward reads.
    Ambiguous(String),
}

impl Unreadable {
    pub fn reason(&self) -> &str {
        match self {
            Unreadable::Invalid(r) | Unreadable::Ambiguous(r) => r,
        }
    }
}

#[derive(Debug)]
pub struct EncodingTrack {
    /// The session's default: what RESET returns to.
    initial: Candidate,
    /// The encoding the server last reported.
    current: Candidate,
    /// Encodings forwarded statements may have set, not yet settled by the server.
    pending: Vec<Candidate>,
    /// Encodings in force earlier in the current transaction block.
    history: Vec<Candidate>,
    /// Every encoding a statement allowed in this session may set when it runs: a
    /// prepared statement (protocol Parse or SQL PREPARE) runs again at each Bind/Execute
    /// or EXECUTE, so those count as setting any of them.
    armed: Vec<Candidate>,
    /// An extended-protocol message went out after the last Sync: a ReadyForQuery then
    /// does not mean the server has run everything sent.
    unsynced: bool,
    /// A policy is enforced: an unforeseen change ends the session.
    strict: bool,
}

impl EncodingTrack {
    /// `initial` is the client_encoding the server reported at startup.
    pub fn new(initial: &str, strict: bool) -> Self {
        let c = Candidate::named(initial);
        Self {
            initial: c.clone(),
            current: c,
            pending: Vec::new(),
            history: Vec::new(),
            armed: Vec::new(),
            unsynced: false,
            strict,
        }
    }

    fn candidates(&self) -> impl Iterator<Item = &Candidate> {
        std::iter::once(&self.current)
            .chain(self.pending.iter())
            .chain(self.history.iter())
    }

    /// The client's bytes as the server will read them.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Cow<'a, str>, Unreadable> {
        if bytes.is_ascii() {
            // Every accepted encoding, and every one pgward refuses to read, is ASCII below
            // 0x80; unreadable ones only matter for other bytes.
            return std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|_| Unreadable::Invalid("text is not ASCII".into()));
        }
        let mut read: Option<Cow<'a, str>> = None;
        for c in self.candidates() {
            let text = match c {
                Candidate::Readable(e) => e
                    .decode(bytes)
                    .map_err(|e| Unreadable::Invalid(e.to_string()))?,
                Candidate::Unreadable(n) => {
                    return Err(Unreadable::Ambiguous(format!(
                        "pgward cannot read non-ASCII text in client_encoding {n}"
                    )))
                }
            };
            match &read {
                Some(r) if *r != text => {
                    return Err(Unreadable::Ambiguous(format!(
                        "client_encoding is changing (from {} to {}) and the two read this text \
                         differently; send it after the change has completed",
                        self.current.name(),
                        c.name()
                    )))
                }
                Some(_) => {}
                None => read = Some(text),
            }
        }
        read.ok_or_else(|| Unreadable::Invalid("no client_encoding".into()))
    }

    /// `text` in the client's encoding, for a statement pgward rewrites; `None` when it
    /// cannot be written in every encoding that may be in force the same way.
    pub fn encode<'a>(&self, text: &'a str) -> Option<Cow<'a, [u8]>> {
        if text.is_ascii() {
            return Some(Cow::Borrowed(text.as_bytes()));
        }
        let mut out: Option<Cow<'a, [u8]>> = None;
        for c in self.candidates() {
            let Candidate::Readable(e) = c else {
                return None;
            };
            let bytes = e.encode(text)?;
            match &out {
                Some(o) if *o != bytes => return None,
                Some(_) => {}
                None => out = Some(bytes),
            }
        }
        out
    }

    /// A message pgward writes to the client (a refusal), in the client's encoding as the
    /// server writes its own; characters it cannot hold become `?`.
    pub fn message_bytes(&self, text: &str) -> Vec<u8> {
        if let Some(b) = self.encode(text) {
            return b.into_owned();
        }
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            let mut buf = [0u8; 4];
            match self.encode(c.encode_utf8(&mut buf)) {
                Some(b) => out.extend_from_slice(&b),
                None => out.push(b'?'),
            }
        }
        out
    }

    /// A Query or Parse that pgward forwards: the encodings its statements may set.
    pub fn forwarded(&mut self, qd: &QueryDecision) {
        for st in &qd.statements {
            // A function's or role's SET clause does not change this session.
            if matches!(
                st.analysis.kind,
                "CreateFunctionStmt"
                    | "AlterFunctionStmt"
                    | "AlterDatabaseSetStmt"
                    | "AlterRoleSetStmt"
                    | "AlterSystemStmt"
            ) {
                continue;
            }
            if st.analysis.executes.is_some() {
                self.rearm();
            }
            for s in &st.analysis.settings {
                let next = match s {
                    SettingChange::Set { name, value } if name == "client_encoding" => {
                        match value.as_deref() {
                            Some([v]) => Candidate::named(v),
                            _ => Candidate::Unreadable("(computed)".into()),
                        }
                    }
                    SettingChange::Reset { name } if name == "client_encoding" => {
                        self.initial.clone()
                    }
                    SettingChange::ResetAll => self.initial.clone(),
                    _ => continue,
                };
                if !self.armed.contains(&next) {
                    self.armed.push(next.clone());
                }
                if !self.pending.contains(&next) && next != self.current {
                    self.pending.push(next);
                }
            }
        }
    }

    /// A client message went out (Sync settles extended-protocol work).
    pub fn on_client_message(&mut self, tag: u8) {
        match tag {
            fe::SYNC | fe::QUERY => self.unsynced = false,
            fe::BIND | fe::EXECUTE => {
                self.unsynced = true;
                self.rearm();
            }
            _ => {}
        }
    }

    /// A prepared statement may run: any encoding one of them sets may come into force.
    fn rearm(&mut self) {
        for c in &self.armed {
            if !self.pending.contains(c) && *c != self.current {
                self.pending.push(c.clone());
            }
        }
    }

    /// A ParameterStatus from the server. `Err` when client_encoding changed to something
    /// pgward did not foresee and a policy is enforced.
    pub fn on_parameter_status(&mut self, body: &[u8]) -> Result<(), String> {
        let mut parts = body.split(|&b| b == 0);
        if parts.next() != Some(b"client_encoding".as_slice()) {
            return Ok(());
        }
        let value = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let reported = Candidate::named(&value);
        let foreseen = self.candidates().any(|c| c.name() == reported.name());
        if !foreseen && self.strict {
            return Err(format!(
                "the server's client_encoding became {value} by a statement pgward could not see \
                 change it"
            ));
        }
        if reported != self.current {
            let old = std::mem::replace(&mut self.current, reported);
            if !self.history.contains(&old) {
                self.history.push(old);
            }
        }
        Ok(())
    }

    /// A ReadyForQuery: `idle` when nothing sent is still outstanding, `in_transaction`
    /// unless the server is idle outside a transaction block.
    pub fn on_ready(&mut self, idle: bool, in_transaction: bool) {
        if idle && !self.unsynced {
            // The server has run everything sent, and reported any change before this.
            self.pending.clear();
            if !in_transaction {
                self.history.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgward_policy::{Policy, SessionState};

    fn forwarded(t: &mut EncodingTrack, sql: &str) {
        let p = Policy::from_toml(
            "[[roles]]\nname = \"all\"\nmembers = { everyone = true }\nallow = [ { objects = [\"*\"], functions = [\"set_config\"] } ]\n",
        )
        .expect("policy");
        let roles = p.roles_named(&["all"]).expect("role");
        let qd = p.decide_query(&roles, sql, &SessionState::new(&p));
        assert!(!qd.decision.blocks(), "{sql}: {:?}", qd.decision);
        t.forwarded(&qd);
    }

    #[test]
    fn text_is_read_in_every_encoding_that_may_be_in_force() {
        let mut t = EncodingTrack::new("UTF8", true);
        assert_eq!(t.decode("café".as_bytes()).unwrap(), "café");
        assert!(matches!(t.decode(b"caf\xe9"), Err(Unreadable::Invalid(_))));
        forwarded(&mut t, "SET client_encoding = 'latin-1'");
        // Not settled yet: UTF-8 and LATIN1 read é differently.
        assert!(matches!(
            t.decode("café".as_bytes()),
            Err(Unreadable::Ambiguous(_))
        ));
        assert_eq!(t.decode(b"SELECT 1").unwrap(), "SELECT 1");
        t.on_parameter_status(b"client_encoding\0LATIN1\0").unwrap();
        t.on_ready(true, false);
        assert_eq!(t.decode(b"caf\xe9").unwrap(), "café");
        assert_eq!(t.encode("café").unwrap().as_ref(), b"caf\xe9");
        // pgward's own messages reach the client in its encoding, as the server's do.
        assert_eq!(t.message_bytes("rule x: café €"), b"rule x: caf\xe9 ?");
        // RESET ALL returns to the startup encoding.
        forwarded(&mut t, "RESET ALL");
        assert!(t.decode(b"caf\xe9").is_err());
        t.on_parameter_status(b"client_encoding\0UTF8\0").unwrap();
        t.on_ready(true, false);
        assert_eq!(t.decode("café".as_bytes()).unwrap(), "café");
        // set_config is a change like SET.
        forwarded(
            &mut t,
            "SELECT set_config('client_encoding', 'WIN1252', false)",
        );
        t.on_parameter_status(b"client_encoding\0WIN1252\0")
            .unwrap();
        t.on_ready(true, false);
        assert_eq!(t.decode(b"\x80").unwrap(), "€");
    }

    #[test]
    fn a_prepared_change_may_run_at_every_bind_and_execute() {
        let mut t = EncodingTrack::new("UTF8", true);
        // Parse of a named statement that sets LATIN1, then Sync: nothing ran yet.
        forwarded(
            &mut t,
            "SELECT set_config('client_encoding', 'LATIN1', false)",
        );
        t.on_client_message(fe::SYNC);
        t.on_ready(true, false);
        assert_eq!(t.decode("café".as_bytes()).unwrap(), "café");
        // Bind/Execute of it, pipelined with text: either encoding may read the text.
        t.on_client_message(fe::BIND);
        t.on_client_message(fe::EXECUTE);
        assert!(t.decode("café".as_bytes()).is_err());
        t.on_client_message(fe::SYNC);
        t.on_parameter_status(b"client_encoding\0LATIN1\0").unwrap();
        t.on_ready(true, false);
        assert_eq!(t.decode(b"caf\xe9").unwrap(), "café");
        // SQL EXECUTE of a prepared statement counts as well.
        let p = Policy::from_toml(
            "[[roles]]\nname = \"all\"\nmembers = { everyone = true }\nallow = [ { objects = [\"*\"], functions = [\"set_config\"] } ]\n",
        )
        .expect("policy");
        let roles = p.roles_named(&["all"]).expect("role");
        let mut session = SessionState::new(&p);
        let mut t = EncodingTrack::new("UTF8", true);
        let prepare = p.decide_query(
            &roles,
            "PREPARE q AS SELECT set_config('client_encoding', 'LATIN1', false)",
            &session,
        );
        assert!(!prepare.decision.blocks(), "{:?}", prepare.decision);
        session.apply(&prepare.statements[0].analysis);
        t.forwarded(&prepare);
        t.on_ready(true, false);
        assert_eq!(t.decode("café".as_bytes()).unwrap(), "café");
        let execute = p.decide_query(&roles, "EXECUTE q", &session);
        assert!(!execute.decision.blocks(), "{:?}", execute.decision);
        t.forwarded(&execute);
        assert!(t.decode("café".as_bytes()).is_err());
    }

    #[test]
    fn a_rollback_may_go_back_to_any_encoding_of_the_transaction() {
        let mut t = EncodingTrack::new("UTF8", true);
        forwarded(&mut t, "BEGIN; SET client_encoding = 'LATIN1'");
        t.on_parameter_status(b"client_encoding\0LATIN1\0").unwrap();
        t.on_ready(true, true);
        // Inside the block: a ROLLBACK (or an error) brings UTF8 back.
        assert!(t.decode(b"caf\xe9").is_err());
        forwarded(&mut t, "ROLLBACK");
        t.on_parameter_status(b"client_encoding\0UTF8\0").unwrap();
        t.on_ready(true, false);
        assert_eq!(t.decode("café".as_bytes()).unwrap(), "café");
    }

    #[test]
    fn an_unforeseen_change_ends_an_enforced_session() {
        let mut t = EncodingTrack::new("UTF8", true);
        assert!(t.on_parameter_status(b"client_encoding\0LATIN1\0").is_err());
        let mut open = EncodingTrack::new("UTF8", false);
        assert!(open
            .on_parameter_status(b"client_encoding\0LATIN1\0")
            .is_ok());
        open.on_ready(true, false);
        assert_eq!(open.decode(b"\xe9").unwrap(), "é");
        // Other parameters, whatever their bytes, are not looked at.
        assert!(t.on_parameter_status(b"application_name\0\xe9\0").is_ok());
    }

    #[test]
    fn a_change_pipelined_behind_a_sync_is_not_settled_early() {
        let mut t = EncodingTrack::new("UTF8", true);
        t.on_client_message(fe::SYNC);
        forwarded(&mut t, "SET client_encoding = 'LATIN1'");
        t.on_client_message(fe::BIND);
        t.on_client_message(fe::EXECUTE);
        // The ReadyForQuery of the earlier Sync: the Execute may not have run yet.
        t.on_ready(true, false);
        assert!(t.decode(b"caf\xe9").is_err());
        t.on_client_message(fe::SYNC);
        t.on_parameter_status(b"client_encoding\0LATIN1\0").unwrap();
        t.on_ready(true, false);
        assert_eq!(t.decode(b"caf\xe9").unwrap(), "café");
    }
}
