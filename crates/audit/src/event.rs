//! The audit event schema (version [`SCHEMA_VERSION`]).
//!
//! Write side: the proxy fills [`SessionInfo`] once per connection and a small borrowed
//! struct per event ([`Connect`], [`AuthFailed`], [`Statement`], [`Disconnect`]); the
//! event is serialised on the caller's task (in parallel across connections) and the
//! writer only adds `v, instance` before it and `seq, ts` and the chain after it. The
//! members of statement records are written by hand (byte for byte what the serde derives
//! write; the tests compare them). Read side: [`Record`] holds any line of any version
//! leniently (unknown members are ignored, string enums are kept as strings) so old
//! readers still search newer logs.
//!
//! No field is meant to hold a token or a password; free-text fields (SQL, messages,
//! reasons, parameter values, application_name) are also scrubbed of JWTs and
//! `PASSWORD '...'` literals by [`crate::scrub`] as they are serialised.

use std::borrow::Cow;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{json, scrub};

/// The `v` written in every record. Bump on an incompatible change; additions of members
/// or of enum values keep the version. `2`: the members of `1` with the same names and
/// meaning, in another order — `seq` and `ts` moved from after `v` to before `prev_hash`,
/// so every record starts with bytes its session always writes (docs/audit.md).
pub const SCHEMA_VERSION: u32 = 2;

/// The event kinds (`event` member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client signed in and its session started.
    Connect,
    /// A sign-in was refused (the exact reason is in `reason`).
    AuthFailed,
    /// One statement: its text, the policy decision and the upstream's outcome.
    Statement,
    /// A session ended.
    Disconnect,
    /// The audit log was opened by a pgward process.
    AuditStart,
    /// The audit log was closed cleanly.
    AuditStop,
    /// The first record of a file that continues the previous file after rotation.
    Rotate,
}

impl EventKind {
    /// The name as written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::AuthFailed => "auth_failed",
            EventKind::Statement => "statement",
            EventKind::Disconnect => "disconnect",
            EventKind::AuditStart => "audit_start",
            EventKind::AuditStop => "audit_stop",
            EventKind::Rotate => "rotate",
        }
    }
}

/// Where the client connected from. Filled from the socket and the startup packet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// Peer address `ip:port`.
    pub addr: String,
    /// The user name the client presented in its startup packet (before validation).
    #[serde(default, serialize_with = "scrub::ser_opt")]
    pub user: Option<String>,
    /// `application_name` from the startup packet, as the client sent it.
    #[serde(default, serialize_with = "scrub::ser_opt")]
    pub application_name: Option<String>,
    /// Whether the client connection is TLS.
    #[serde(default)]
    pub tls: bool,
    /// Negotiated TLS version (`TLSv1.3`), when TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
}

/// Who the client is, from its validated token. Never the token itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Entra object id of the user or service principal (`oid`).
    #[serde(default)]
    pub oid: Option<String>,
    /// Tenant id (`tid`).
    #[serde(default)]
    pub tid: Option<String>,
    /// User principal name (`upn` / `preferred_username`); absent for applications.
    #[serde(default)]
    pub upn: Option<String>,
    /// Client application id (`appid` / `azp`).
    #[serde(default)]
    pub appid: Option<String>,
    /// The proxy policy roles this identity matched.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The context shared by every record of one client connection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionInfo {
    /// Session id, unique per instance (the proxy's connection id).
    pub session: String,
    /// The client.
    pub client: Client,
    /// The identity; `None` until signed in (and on most `auth_failed`).
    pub identity: Option<Identity>,
    /// The database name the client asked for.
    pub database: Option<String>,
}

/// Query protocol of a statement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Query message.
    #[default]
    Simple,
    /// Parse/Bind/Execute (recorded at Execute).
    Extended,
    /// A FunctionCall message (drivers' large-object APIs): `sql` renders the call of the
    /// function its OID names, `params` are its arguments.
    FunctionCall,
}

impl Protocol {
    /// The name as written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
            Protocol::FunctionCall => "function_call",
        }
    }
}

/// The policy decision for a statement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Allowed and relayed.
    #[default]
    Allow,
    /// Denied (SQLSTATE 42501) and not relayed.
    Deny,
    /// Would have been denied, relayed because the policy is in observe mode.
    ObserveDeny,
}

impl Decision {
    /// The name as written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::ObserveDeny => "observe-deny",
        }
    }
}

/// One (object, action) pair the policy found in a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ObjectAction<'a> {
    /// `schema.name` (or a function name for `execute`).
    pub object: &'a str,
    /// `select`, `insert`, ... (the policy's action names).
    pub action: &'a str,
}

/// What the upstream (or the proxy, for a denial) answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Outcome<'a> {
    /// CommandComplete tag, e.g. `SELECT 3`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_tag: Option<&'a str>,
    /// Rows returned or affected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// SQLSTATE of an ErrorResponse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<&'a str>,
    /// Error message (primary text).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "scrub::ser_opt"
    )]
    pub message: Option<&'a str>,
}

/// What is recorded of a statement's bind parameters (`[audit] redaction`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Redaction {
    /// Parameters are not recorded at all.
    None,
    /// Only each parameter's type.
    #[default]
    Types,
    /// Types and values (values are scrubbed of JWTs; binary values in base64).
    Full,
}

/// One bind parameter as the proxy saw it, for [`Params::capture`].
#[derive(Debug, Clone, Copy)]
pub struct ParamIn<'a> {
    /// Type OID from Parse (0 = unspecified).
    pub type_oid: u32,
    /// Value bytes; `None` for SQL NULL.
    pub value: Option<&'a [u8]>,
    /// Binary format code (1) rather than text (0).
    pub binary: bool,
}

/// A recorded parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    /// Type name for built-in types (`int4`, `text`), else the OID as a string;
    /// `unknown` when the client left it unspecified.
    #[serde(rename = "type")]
    pub ty: String,
    /// `binary` when `value` is base64 of a binary-format value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The value (with `redaction = "full"` only); `null` for SQL NULL.
    #[serde(
        default,
        skip_serializing_if = "is_absent",
        serialize_with = "ser_value",
        deserialize_with = "de_value"
    )]
    pub value: Option<Option<String>>,
}

fn is_absent(v: &Option<Option<String>>) -> bool {
    v.is_none()
}

fn ser_value<S: serde::Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(Some(t)) => s.serialize_str(&scrub::scrub(t)),
        _ => s.serialize_none(),
    }
}

fn de_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    // Present-and-null is SQL NULL; absence is handled by `default`.
    Ok(Some(Option::<String>::deserialize(d)?))
}

/// The recorded parameters of one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Params(pub Vec<Param>);

impl Params {
    /// Applies the redaction setting to the parameters of a Bind. Returns `None` (no
    /// `params` member) for [`Redaction::None`].
    pub fn capture<'a>(
        redaction: Redaction,
        params: impl IntoIterator<Item = ParamIn<'a>>,
    ) -> Option<Params> {
        if redaction == Redaction::None {
            return None;
        }
        let full = redaction == Redaction::Full;
        let v = params
            .into_iter()
            .map(|p| {
                let ty = type_name(p.type_oid);
                let (format, value) = match (full, p.value) {
                    (false, _) => (None, None),
                    (true, None) => (None, Some(None)),
                    (true, Some(bytes)) => match (p.binary, std::str::from_utf8(bytes)) {
                        (false, Ok(s)) => (None, Some(Some(s.to_string()))),
                        // Binary format, or text that is not UTF-8: keep it exactly, in base64.
                        _ => (
                            Some("binary".to_string()),
                            Some(Some(
                                base64::engine::general_purpose::STANDARD.encode(bytes),
                            )),
                        ),
                    },
                };
                Param { ty, format, value }
            })
            .collect();
        Some(Params(v))
    }
}

fn type_name(oid: u32) -> String {
    let known = match oid {
        0 => "unknown",
        16 => "bool",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "float4",
        701 => "float8",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1266 => "timetz",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        1000 => "bool[]",
        1005 => "int2[]",
        1007 => "int4[]",
        1009 => "text[]",
        1016 => "int8[]",
        _ => return oid.to_string(),
    };
    known.to_string()
}

/// Fields of a `connect` event.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Connect<'a> {
    /// The `[[upstreams]]` name the session was routed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    /// The upstream role the session runs as (`SET ROLE`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_role: Option<&'a str>,
}

/// Fields of an `auth_failed` event.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AuthFailed<'a> {
    /// The exact reason (e.g. `token expired at ...`); never the token.
    #[serde(serialize_with = "scrub::ser_str")]
    pub reason: &'a str,
}

/// Fields of a `statement` event. Fill it after the upstream's reply (for the outcome) and
/// await the append before relaying that reply to the client. Written as
/// [`StatementHead`] then [`statement_tail_into`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Statement<'a> {
    /// SQL text (from Query, or from Parse for the extended protocol).
    pub sql: &'a str,
    /// Parameters, from [`Params::capture`]; `None` for the simple protocol or redaction none.
    pub params: Option<&'a Params>,
    /// Simple or extended.
    pub protocol: Protocol,
    /// Objects and actions the policy found.
    pub objects: &'a [ObjectAction<'a>],
    /// The decision.
    pub decision: Decision,
    /// The rule that decided (role/rule name, or the baseline).
    pub rule: Option<&'a str>,
    /// The result.
    pub outcome: Outcome<'a>,
    /// Time from receiving the statement to its result, in microseconds.
    pub duration_us: u64,
}

/// The members of a `statement` record known before the statement runs (everything but
/// `outcome` and `duration_us`), as serde would write them: the reference the hand-written
/// [`statement_head_into`] is tested against.
#[cfg(test)]
#[derive(Serialize)]
pub(crate) struct StatementHead<'a> {
    pub protocol: Protocol,
    pub objects: &'a [ObjectAction<'a>],
    pub decision: Decision,
    pub rule: Option<&'a str>,
    #[serde(serialize_with = "scrub::ser_str")]
    pub sql: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<&'a Params>,
}

#[cfg(test)]
impl<'a> StatementHead<'a> {
    pub(crate) fn of(s: &Statement<'a>) -> Self {
        StatementHead {
            sql: s.sql,
            params: s.params,
            protocol: s.protocol,
            objects: s.objects,
            decision: s.decision,
            rule: s.rule,
        }
    }
}

/// Appends `,"<name>":`.
fn key(v: &mut Vec<u8>, name: &[u8]) {
    v.extend_from_slice(b",\"");
    v.extend_from_slice(name);
    v.extend_from_slice(b"\":");
}

/// Appends `,"sql":…[,"params":[…]]`: the members of a `statement` record after its
/// decision, byte for byte what serde writes for them, by hand (a Query's record is
/// serialised per statement, so this is on the path of every simple-protocol statement).
pub(crate) fn statement_text_into(v: &mut Vec<u8>, sql: &str, params: Option<&Params>) {
    key(v, b"sql");
    json::push_scrubbed(v, sql);
    if let Some(params) = params {
        key(v, b"params");
        params_into(v, params);
    }
}

/// Appends `,"protocol":"…"`.
pub(crate) fn protocol_into(v: &mut Vec<u8>, protocol: Protocol) {
    v.extend_from_slice(b",\"protocol\":\"");
    v.extend_from_slice(protocol.as_str().as_bytes());
    v.push(b'"');
}

/// Appends `,"objects":[…],"decision":"…","rule":…`: the members of a `statement` record
/// that come from the policy's decision, the same for every statement it decides alike.
pub(crate) fn decision_members_into(
    v: &mut Vec<u8>,
    objects: &[ObjectAction<'_>],
    decision: Decision,
    rule: Option<&str>,
) {
    v.extend_from_slice(b",\"objects\":[");
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            v.push(b',');
        }
        v.extend_from_slice(b"{\"object\":");
        json::push_str(v, o.object);
        v.extend_from_slice(b",\"action\":");
        json::push_str(v, o.action);
        v.push(b'}');
    }
    v.extend_from_slice(b"],\"decision\":\"");
    v.extend_from_slice(decision.as_str().as_bytes());
    v.extend_from_slice(b"\",\"rule\":");
    match rule {
        Some(r) => json::push_str(v, r),
        None => v.extend_from_slice(b"null"),
    }
}

/// Appends the members of a `statement` record before its outcome (what serde writes for
/// [`StatementHead`]): `protocol`, `objects`, `decision`, `rule` — the same for every
/// statement of a session that the policy decides alike, so their hash state is kept —
/// then `sql` and `params`.
pub(crate) fn statement_head_into(v: &mut Vec<u8>, s: &Statement<'_>) {
    protocol_into(v, s.protocol);
    decision_members_into(v, s.objects, s.decision, s.rule);
    statement_text_into(v, s.sql, s.params);
}

/// `params` as serde writes [`Params`].
fn params_into(v: &mut Vec<u8>, params: &Params) {
    v.push(b'[');
    for (i, p) in params.0.iter().enumerate() {
        if i > 0 {
            v.push(b',');
        }
        v.extend_from_slice(b"{\"type\":");
        json::push_str(v, &p.ty);
        if let Some(f) = &p.format {
            key(v, b"format");
            json::push_str(v, f);
        }
        match &p.value {
            None => {}
            Some(None) => v.extend_from_slice(b",\"value\":null"),
            Some(Some(t)) => {
                key(v, b"value");
                json::push_scrubbed(v, t);
            }
        }
        v.push(b'}');
    }
    v.push(b']');
}

/// The members of a `statement` record known once it has run (written by
/// [`statement_tail_into`]; the derive is the reference it is tested against).
#[cfg(test)]
#[derive(Serialize)]
pub(crate) struct StatementTail<'a> {
    pub outcome: Outcome<'a>,
    pub duration_us: u64,
}

/// Fields of a `disconnect` event.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Disconnect<'a> {
    /// Session length in microseconds.
    pub duration_us: u64,
    /// Statements recorded in the session.
    pub statements: u64,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    /// Why it ended (`client terminated`, `token expired`, `upstream gone`, ...).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "scrub::ser_opt"
    )]
    pub reason: Option<&'a str>,
}

/// `predecessor` of a file's first record: the file this one continues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Predecessor {
    /// File name (no directory) of the previous file.
    pub file: String,
    /// `seq` of its last record.
    pub last_seq: u64,
    /// `hash` of its last record.
    pub last_hash: String,
}

/// Fields of the log's own records (`audit_start`, `rotate`, `audit_stop`).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct LogEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predecessor: Option<&'a Predecessor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redaction: Option<Redaction>,
}

/// `"event":"<kind>",<ctx>,<fields of detail>` — the body the writer frames.
/// `ctx` is the pre-serialised session fragment (or `"session":null`).
pub(crate) fn body<T: Serialize>(kind: EventKind, ctx: &str, detail: &T) -> Vec<u8> {
    let mut v = Vec::with_capacity(256 + ctx.len());
    body_into(&mut v, kind, ctx, detail);
    v
}

/// Appends the body to `v` (a reused buffer on the hot path: no allocation per record).
pub(crate) fn body_into<T: Serialize>(v: &mut Vec<u8>, kind: EventKind, ctx: &str, detail: &T) {
    v.extend_from_slice(b"\"event\":\"");
    v.extend_from_slice(kind.as_str().as_bytes());
    v.extend_from_slice(b"\",");
    v.extend_from_slice(ctx.as_bytes());
    members_into(v, detail);
}

/// Appends `,<members of detail>` (nothing if it has none).
pub(crate) fn members_into<T: Serialize>(v: &mut Vec<u8>, detail: &T) {
    let mark = v.len();
    // Serialising our own structs to a Vec cannot fail (no maps with non-string keys, no
    // I/O); if it somehow did, the record still carries its kind and context.
    if serde_json::to_writer(&mut *v, detail).is_ok() && v.len() > mark + 2 {
        // Turn `{...}` into `,...`: drop the closing brace and replace the opening one.
        v.pop();
        v[mark] = b',';
    } else {
        v.truncate(mark);
    }
}

/// Appends `,"outcome":{...},"duration_us":N`, byte for byte what serde writes for
/// [`StatementTail`], by hand: it runs between the server's reply and its relay to the
/// client, where serde's generic machinery cost more than the rest of the tail.
pub(crate) fn statement_tail_into(v: &mut Vec<u8>, outcome: &Outcome<'_>, duration_us: u64) {
    let json_str = json::push_str;
    v.extend_from_slice(b",\"outcome\":{");
    let mut first = true;
    let mut key = |v: &mut Vec<u8>, name: &[u8]| {
        if !std::mem::take(&mut first) {
            v.push(b',');
        }
        v.push(b'"');
        v.extend_from_slice(name);
        v.extend_from_slice(b"\":");
    };
    if let Some(tag) = outcome.command_tag {
        key(v, b"command_tag");
        json_str(v, tag);
    }
    if let Some(rows) = outcome.rows {
        key(v, b"rows");
        crate::json::push_decimal(v, rows);
    }
    if let Some(state) = outcome.sqlstate {
        key(v, b"sqlstate");
        json_str(v, state);
    }
    if let Some(message) = outcome.message {
        key(v, b"message");
        json::push_scrubbed(v, message);
    }
    v.extend_from_slice(b"},\"duration_us\":");
    crate::json::push_decimal(v, duration_us);
}

/// The pre-serialised `"session":...,"client":...,"identity":...,"database":...`.
pub(crate) fn session_fragment(info: &SessionInfo) -> String {
    let s = serde_json::to_string(info).unwrap_or_else(|_| "{}".to_string());
    s.strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or("")
        .to_string()
}

/// A recorded object/action (read side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordObject {
    /// `schema.name`.
    pub object: String,
    /// Action name.
    pub action: String,
}

/// A recorded outcome (read side).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordOutcome {
    /// CommandComplete tag.
    #[serde(default)]
    pub command_tag: Option<String>,
    /// Rows.
    #[serde(default)]
    pub rows: Option<u64>,
    /// SQLSTATE.
    #[serde(default)]
    pub sqlstate: Option<String>,
    /// Error message.
    #[serde(default)]
    pub message: Option<String>,
}

/// One audit record as read back from a file (any event kind; absent members are `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Record {
    /// Schema version.
    pub v: u32,
    /// Position in the chain (1-based, continuous across files and restarts).
    pub seq: u64,
    /// RFC 3339 UTC with microseconds.
    pub ts: String,
    /// The pgward instance that wrote it.
    pub instance: String,
    /// Event kind name.
    pub event: String,
    /// Session id (`null` for the log's own records).
    #[serde(default)]
    pub session: Option<String>,
    /// The client.
    #[serde(default)]
    pub client: Option<Client>,
    /// The identity.
    #[serde(default)]
    pub identity: Option<Identity>,
    /// Database name.
    #[serde(default)]
    pub database: Option<String>,
    /// `connect`: upstream name.
    #[serde(default)]
    pub upstream: Option<String>,
    /// `connect`: upstream role.
    #[serde(default)]
    pub upstream_role: Option<String>,
    /// `auth_failed`, `disconnect`, `audit_start`, `rotate`, `audit_stop`: why.
    #[serde(default)]
    pub reason: Option<String>,
    /// `statement`: SQL text.
    #[serde(default)]
    pub sql: Option<String>,
    /// `statement`: parameters.
    #[serde(default)]
    pub params: Option<Params>,
    /// `statement`: `simple` or `extended`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// `statement`: objects and actions.
    #[serde(default)]
    pub objects: Vec<RecordObject>,
    /// `statement`: `allow`, `deny`, `observe-deny`.
    #[serde(default)]
    pub decision: Option<String>,
    /// `statement`: deciding rule.
    #[serde(default)]
    pub rule: Option<String>,
    /// `statement`: outcome.
    #[serde(default)]
    pub outcome: Option<RecordOutcome>,
    /// `statement`, `disconnect`: duration in microseconds.
    #[serde(default)]
    pub duration_us: Option<u64>,
    /// `disconnect`: statement count.
    #[serde(default)]
    pub statements: Option<u64>,
    /// `disconnect`: bytes from the client.
    #[serde(default)]
    pub bytes_in: Option<u64>,
    /// `disconnect`: bytes to the client.
    #[serde(default)]
    pub bytes_out: Option<u64>,
    /// `audit_start`, `rotate`: the file this one continues.
    #[serde(default)]
    pub predecessor: Option<Predecessor>,
    /// `audit_start`, `rotate`: `sha256` or `hmac-sha256`.
    #[serde(default)]
    pub alg: Option<String>,
    /// `audit_start`, `rotate`: id of the HMAC key.
    #[serde(default)]
    pub key_id: Option<String>,
    /// `audit_start`: pgward version.
    #[serde(default)]
    pub version: Option<String>,
    /// `audit_start`: parameter redaction in force.
    #[serde(default)]
    pub redaction: Option<String>,
    /// Hash of the previous record.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

impl Record {
    /// The user to show: UPN, else object id, else the presented user name.
    pub fn user(&self) -> Option<&str> {
        let id = self.identity.as_ref();
        id.and_then(|i| i.upn.as_deref())
            .or_else(|| id.and_then(|i| i.oid.as_deref()))
            .or_else(|| self.client.as_ref().and_then(|c| c.user.as_deref()))
    }

    /// SQLSTATE of the outcome, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        self.outcome.as_ref().and_then(|o| o.sqlstate.as_deref())
    }
}

/// Cow helper used by output code.
pub(crate) fn opt(s: &Option<String>) -> Cow<'_, str> {
    Cow::Borrowed(s.as_deref().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_statement_tail_is_what_serde_writes() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        let message = format!("bad \"token\" {jwt}\n\t\u{1}é");
        let outcomes = [
            Outcome::default(),
            Outcome {
                command_tag: Some("SELECT 1"),
                rows: Some(1),
                ..Outcome::default()
            },
            Outcome {
                command_tag: Some("INSERT 0 18446744073709551615"),
                rows: Some(u64::MAX),
                ..Outcome::default()
            },
            Outcome {
                sqlstate: Some("42501"),
                message: Some(&message),
                ..Outcome::default()
            },
            Outcome {
                rows: Some(0),
                message: Some("not executed: an earlier error ended the batch"),
                ..Outcome::default()
            },
        ];
        for (i, outcome) in outcomes.into_iter().enumerate() {
            for duration_us in [0, 87, u64::MAX] {
                let mut by_serde = b"{\"x\":1".to_vec();
                members_into(
                    &mut by_serde,
                    &StatementTail {
                        outcome,
                        duration_us,
                    },
                );
                let mut by_hand = b"{\"x\":1".to_vec();
                statement_tail_into(&mut by_hand, &outcome, duration_us);
                assert_eq!(
                    String::from_utf8_lossy(&by_hand),
                    String::from_utf8_lossy(&by_serde),
                    "outcome {i}"
                );
            }
        }
        let mut v = Vec::new();
        statement_tail_into(
            &mut v,
            &Outcome {
                message: Some(&message),
                ..Outcome::default()
            },
            1,
        );
        assert!(
            !String::from_utf8_lossy(&v).contains(jwt),
            "the JWT is scrubbed"
        );
    }

    /// The hand-written head is what serde writes for it, for text that needs escaping,
    /// secrets that must be scrubbed (in the SQL and in parameter values), every
    /// parameter shape, every protocol and decision, and objects and rules with quotes.
    #[test]
    fn hand_written_statement_head_is_what_serde_writes() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        let sqls = [
            String::new(),
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;".to_string(),
            "SELECT \"Col\" FROM t WHERE a = 'x\\y' -- \t tab\nnew line\r".to_string(),
            "select '\u{0}\u{1}\u{8}\u{c}\u{1f}\u{7f}' as ctl".to_string(),
            "SELECT 'naïve café 日本語 🙂 \u{2028}' AS ü".to_string(),
            format!("select '{jwt}' as token, \"{jwt}\""),
            "ALTER ROLE bob WITH PASSWORD 'it''s \"secret\"\n' VALID UNTIL 'x'".to_string(),
            format!("alter user \"a\" password E'{jwt}'; select '{jwt}'"),
        ];
        let full = Params(vec![
            Param {
                ty: "int4".into(),
                format: None,
                value: Some(Some("42".into())),
            },
            Param {
                ty: "text".into(),
                format: None,
                value: Some(Some(format!("bearer {jwt} \"q\" \\ \u{1} é"))),
            },
            Param {
                ty: "bytea".into(),
                format: Some("binary".into()),
                value: Some(Some("3q2+7w==".into())),
            },
            Param {
                ty: "unknown".into(),
                format: None,
                value: Some(None),
            },
            Param {
                ty: "16415".into(),
                format: None,
                value: None,
            },
        ]);
        let empty = Params(Vec::new());
        let objects = [
            ObjectAction {
                object: "public.orders",
                action: "select",
            },
            ObjectAction {
                object: "\"Weird \"\"Name\"\".t\\x",
                action: "delete",
            },
        ];
        for sql in &sqls {
            for params in [None, Some(&empty), Some(&full)] {
                for protocol in [Protocol::Simple, Protocol::Extended, Protocol::FunctionCall] {
                    for decision in [Decision::Allow, Decision::Deny, Decision::ObserveDeny] {
                        for (objects, rule) in [
                            (&objects[..0], None),
                            (&objects[..1], Some("analyst")),
                            (&objects[..], Some("analyst: deny \"*.salaries\" \u{1}")),
                        ] {
                            let st = Statement {
                                sql,
                                params,
                                protocol,
                                objects,
                                decision,
                                rule,
                                ..Statement::default()
                            };
                            let mut by_serde = b"{\"x\":1".to_vec();
                            members_into(&mut by_serde, &StatementHead::of(&st));
                            let mut by_hand = b"{\"x\":1".to_vec();
                            statement_head_into(&mut by_hand, &st);
                            assert_eq!(
                                String::from_utf8_lossy(&by_hand),
                                String::from_utf8_lossy(&by_serde)
                            );
                            let text = String::from_utf8_lossy(&by_hand);
                            assert!(!text.contains(jwt), "the JWT is scrubbed: {text}");
                            assert!(!text.contains("secret"), "the password is scrubbed");
                        }
                    }
                }
            }
        }
    }
}
