//! Column masks on the stream: every DataRow of a result the policy planned masks for is
//! rewritten before it reaches the client (see crates/policy/src/mask.rs for the plan and
//! docs/masking.md for the semantics).
//!
//! Results are matched to statements in the order the server answers them: each Query's
//! statements and each Execute push an expectation; CommandComplete, EmptyQueryResponse
//! and PortalSuspended end one, an ErrorResponse ends every one up to the next Sync (the
//! server skips them), ReadyForQuery ends the batch. A RowDescription (simple protocol)
//! is checked against the plan by table OID and column number as well: a column the
//! catalog names masked is masked wherever it appears, and a result whose shape does not
//! match its plan is returned with every planned column NULL. Errors of statements that
//! read masked columns are returned without their text, which may quote the value
//! (`invalid input syntax for type integer: "123-45-6789"`, `Failing row contains ...`).
//!
//! A caller without masks has no `MaskStream`: nothing here runs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use aws_lc_rs::hmac;
use bytes::{BufMut, BytesMut};
use pgward_policy::{redact_types as ty, ColumnMask, MaskKind, MaskPlan, OutputMask};
use pgward_wire::tag::backend as be;

/// The key of `hash` masks (`[policy] mask_key_file`).
#[derive(Clone)]
pub struct MaskKey(hmac::Key);

impl MaskKey {
    /// Shortest key accepted.
    pub const MIN_BYTES: usize = 32;

    /// Reads the key file: its bytes are the key (at least 32).
    pub fn load(path: &std::path::Path) -> Result<MaskKey, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read mask_key_file {}: {e}", path.display()))?;
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < Self::MIN_BYTES {
            return Err(format!(
                "mask_key_file {} holds {} bytes; hash masks need a key of at least {} (e.g. `head -c 48 /dev/urandom | base64 > {}`)",
                path.display(),
                trimmed.len(),
                Self::MIN_BYTES,
                path.display()
            ));
        }
        Ok(MaskKey(hmac::Key::new(hmac::HMAC_SHA256, trimmed)))
    }

    fn hash_hex(&self, value: &[u8]) -> [u8; 32] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let tag = hmac::sign(&self.0, value);
        // 128 bits: collisions are out of reach, and the value fits common varchar widths.
        let mut out = [0u8; 32];
        for (i, b) in tag.as_ref().iter().take(16).enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        out
    }
}

/// What happens to one field of a result.
#[derive(Debug, Clone)]
enum Field {
    Clear,
    Null,
    Mask { mask: Arc<ColumnMask>, binary: bool },
}

/// Result format codes of a Bind (0 text, 1 binary): none means all text, one applies to
/// every column.
#[derive(Debug, Clone, Default)]
pub struct Formats(Vec<i16>);

impl Formats {
    fn binary(&self, i: usize) -> bool {
        match self.0.as_slice() {
            [] => false,
            [one] => *one == 1,
            many => many.get(i).is_some_and(|f| *f == 1),
        }
    }

    /// The result formats a Bind asks for (`None` if the message is malformed, which the
    /// framer has already refused).
    pub fn of_bind(body: &[u8]) -> Option<Formats> {
        let mut r = Reader(body);
        r.cstr()?;
        r.cstr()?;
        let n = usize::try_from(r.i16()?).ok()?;
        for _ in 0..n {
            r.i16()?;
        }
        let params = usize::try_from(r.i16()?).ok()?;
        for _ in 0..params {
            let len = r.i32()?;
            if len > 0 {
                r.take(usize::try_from(len).ok()?)?;
            }
        }
        let n = usize::try_from(r.i16()?).ok()?;
        let mut codes = Vec::with_capacity(n);
        for _ in 0..n {
            codes.push(r.i16()?);
        }
        Some(Formats(codes))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let s = self.take(end)?;
        self.take(1)?;
        Some(s)
    }
}

/// A result the server will send, in order.
enum Expect {
    /// A statement or Execute without a plan: forwarded as it is (no payload, so the
    /// common case moves nothing but a tag through the queue).
    Plain,
    /// A statement of a simple Query with a plan: its RowDescription says which fields
    /// are which, and in which format.
    Statement(Arc<MaskPlan>),
    /// An Execute of a portal with a plan, in the formats its Bind asked for.
    Execute(Box<(Arc<MaskPlan>, Formats)>),
    /// A Sync, the end of a Query, or a FunctionCall: ReadyForQuery answers it.
    Boundary,
}

impl Expect {
    /// Answered by CommandComplete, EmptyQueryResponse, PortalSuspended or an error.
    fn is_result(&self) -> bool {
        !matches!(self, Expect::Boundary)
    }
}

/// One session's masking state (only for callers with masks).
pub struct MaskStream {
    key: Option<MaskKey>,
    expect: VecDeque<Expect>,
    /// How the fields of the result now streaming are masked (`None`: not yet known, or
    /// nothing masked).
    active: Option<Vec<Field>>,
    /// Whether `active` was set for the current expectation.
    described: bool,
    /// Protocol portals by name: their plan and result formats. Only portals with a plan
    /// are kept (a portal without one is forwarded as it is); the unnamed portal, which
    /// most drivers use for every statement, is a field: the hot path allocates nothing.
    portals: HashMap<String, (Arc<MaskPlan>, Formats)>,
    unnamed: Option<(Arc<MaskPlan>, Formats)>,
    /// SQL cursors (DECLARE) by name.
    cursors: HashMap<String, Option<Arc<MaskPlan>>>,
    /// Values masked since the last `take_masked`.
    masked: u64,
}

impl std::fmt::Debug for MaskStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("MaskStream")
            .field("expected", &self.expect.len())
            .field("portals", &self.portals.len())
            .field("cursors", &self.cursors.len())
            .finish()
    }
}

impl MaskStream {
    pub fn new(key: Option<MaskKey>) -> Self {
        MaskStream {
            key,
            expect: VecDeque::new(),
            active: None,
            described: false,
            portals: HashMap::new(),
            unnamed: None,
            cursors: HashMap::new(),
            masked: 0,
        }
    }

    /// One statement of a simple Query, in order (the Query's end is `on_sync`).
    pub fn on_statement(&mut self, plan: Option<Arc<MaskPlan>>) {
        self.expect
            .push_back(plan.map_or(Expect::Plain, Expect::Statement));
    }

    /// A DECLARE forwarded: FETCH reads the cursor with its plan.
    pub fn on_declare(&mut self, name: &str, plan: Option<Arc<MaskPlan>>) {
        self.cursors.insert(name.to_owned(), plan);
    }

    /// The plan of a cursor a FETCH reads: a SQL cursor, or a protocol portal (one
    /// namespace in PostgreSQL).
    pub fn cursor(&self, name: &str) -> Option<Arc<MaskPlan>> {
        match self.cursors.get(name) {
            Some(p) => p.clone(),
            None => self.portal(name).map(|(p, _)| Arc::clone(p)),
        }
    }

    fn portal(&self, name: &str) -> Option<&(Arc<MaskPlan>, Formats)> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.portals.get(name)
        }
    }

    /// A Bind of a statement with this plan; the result formats are read from the Bind
    /// only when there is one.
    pub fn on_bind(&mut self, portal: &str, plan: Option<Arc<MaskPlan>>, bind: &[u8]) {
        let entry = plan.map(|p| (p, Formats::of_bind(bind).unwrap_or_default()));
        match (portal.is_empty(), entry) {
            (true, e) => self.unnamed = e,
            (false, Some(e)) => {
                self.portals.insert(portal.to_owned(), e);
            }
            (false, None) => {
                if !self.portals.is_empty() {
                    self.portals.remove(portal);
                }
            }
        }
    }

    pub fn on_execute(&mut self, portal: &str) {
        let planned = match self.portal(portal) {
            Some((p, f)) => Some((Arc::clone(p), f.clone())),
            // A portal opened by DECLARE and run by Execute: in text (binary only where a
            // Bind asked for it).
            None if !self.cursors.is_empty() => self
                .cursors
                .get(portal)
                .cloned()
                .flatten()
                .map(|p| (p, Formats::default())),
            None => None,
        };
        self.expect
            .push_back(planned.map_or(Expect::Plain, |p| Expect::Execute(Box::new(p))));
    }

    pub fn on_close_portal(&mut self, name: &str) {
        if name.is_empty() {
            self.unnamed = None;
        }
        self.portals.remove(name);
        self.cursors.remove(name);
    }

    pub fn on_sync(&mut self) {
        self.expect.push_back(Expect::Boundary);
    }

    /// Values masked since the last call (for the metric).
    pub fn take_masked(&mut self) -> u64 {
        std::mem::take(&mut self.masked)
    }

    fn front_plan(&self) -> Option<&Arc<MaskPlan>> {
        match self.expect.front()? {
            Expect::Statement(p) => Some(p),
            Expect::Execute(e) => Some(&e.0),
            Expect::Plain | Expect::Boundary => None,
        }
    }

    /// Whether errors now arriving belong to a statement that read masked columns.
    pub fn withholds_errors(&self) -> bool {
        self.front_plan().is_some()
    }

    /// Follows a server message other than DataRow.
    pub fn on_server(&mut self, tag: u8, body: &[u8]) {
        match tag {
            be::ROW_DESCRIPTION => {
                if let Some(Expect::Statement(_)) = self.expect.front() {
                    self.active = self.describe(body);
                    self.described = true;
                }
                return;
            }
            be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED => {
                if self.expect.front().is_some_and(Expect::is_result) {
                    self.expect.pop_front();
                }
            }
            be::ERROR_RESPONSE => {
                // The server skips the rest of the Query or everything up to Sync.
                while self.expect.front().is_some_and(Expect::is_result) {
                    self.expect.pop_front();
                }
            }
            be::READY_FOR_QUERY => {
                while let Some(e) = self.expect.pop_front() {
                    if matches!(e, Expect::Boundary) {
                        break;
                    }
                }
            }
            _ => return,
        }
        if self.described {
            self.active = None;
            self.described = false;
        }
    }

    /// Whether any portal or cursor has a plan (else an Execute needs no name read).
    pub fn has_planned_portals(&self) -> bool {
        self.unnamed.is_some() || !self.portals.is_empty() || !self.cursors.is_empty()
    }

    /// An Execute of a portal known to have no plan.
    pub fn on_plain_execute(&mut self) {
        self.expect.push_back(Expect::Plain);
    }

    /// The fields of a simple-protocol result, from its plan and its RowDescription.
    fn describe(&self, body: &[u8]) -> Option<Vec<Field>> {
        let plan = self.front_plan()?;
        let mut r = Reader(body);
        let n = usize::try_from(r.i16()?).ok()?;
        let mut fields = Vec::with_capacity(n);
        let shape_ok = n == plan.outputs.len();
        for i in 0..n {
            r.cstr()?;
            let table = r.u32()?;
            let column = r.i16()?;
            r.u32()?; // type
            r.i16()?; // size
            r.i32()?; // modifier
            let binary = r.i16()? == 1;
            let by_origin = plan
                .origins
                .iter()
                .find(|(t, c, _)| *t == table && *c == column && table != 0)
                .map(|(_, _, m)| Arc::clone(m));
            let planned = if shape_ok {
                plan.outputs.get(i).cloned().unwrap_or(OutputMask::Clear)
            } else if plan.outputs.iter().any(OutputMask::is_masked) {
                // The result does not have the shape planned (a column dropped since the
                // catalog was read?): which field is which cannot be told.
                OutputMask::Derived(Vec::new())
            } else {
                OutputMask::Clear
            };
            fields.push(match (planned, by_origin) {
                (OutputMask::Derived(_), _) => Field::Null,
                (OutputMask::Column(m), _) | (OutputMask::Clear, Some(m)) => {
                    Field::Mask { mask: m, binary }
                }
                (OutputMask::Clear, None) => Field::Clear,
            });
        }
        fields
            .iter()
            .any(|f| !matches!(f, Field::Clear))
            .then_some(fields)
    }

    /// The fields of an Execute's result, from its plan and the Bind's formats.
    fn planned_fields(&self, columns: usize) -> Option<Vec<Field>> {
        let Some(Expect::Execute(e)) = self.expect.front() else {
            return None;
        };
        let (plan, formats) = &**e;
        if !plan.outputs.iter().any(OutputMask::is_masked) {
            return None;
        }
        let shape_ok = columns == plan.outputs.len();
        Some(
            (0..columns)
                .map(|i| match plan.outputs.get(i).filter(|_| shape_ok) {
                    Some(OutputMask::Clear) => Field::Clear,
                    Some(OutputMask::Column(m)) => Field::Mask {
                        mask: Arc::clone(m),
                        binary: formats.binary(i),
                    },
                    Some(OutputMask::Derived(_)) | None => Field::Null,
                })
                .collect(),
        )
    }

    /// Writes the DataRow rewritten (a whole message) to `out` and returns true, or
    /// returns false (nothing written) to forward it as it is.
    pub fn rewrite_row(&mut self, body: &[u8], out: &mut BytesMut) -> bool {
        let start = out.len();
        match self.rewrite_into(body, out) {
            Some(()) => true,
            None => {
                out.truncate(start);
                false
            }
        }
    }

    fn rewrite_into(&mut self, body: &[u8], out: &mut BytesMut) -> Option<()> {
        // Nothing planned for this result: forwarded as it is.
        self.front_plan()?;
        let columns = usize::try_from(Reader(body).i16()?).ok()?;
        if !self.described {
            if let Some(Expect::Execute(..)) = self.expect.front() {
                self.active = self.planned_fields(columns);
                self.described = true;
            }
        }
        let fields = self.active.as_ref()?;
        let mut r = Reader(body);
        r.i16()?;
        let start = out.len();
        out.reserve(body.len() + 64);
        out.put_u8(be::DATA_ROW);
        out.put_u32(0);
        out.put_i16(i16::try_from(columns).ok()?);
        let mut masked = 0u64;
        for i in 0..columns {
            let len = r.i32()?;
            let value = if len < 0 {
                None
            } else {
                Some(r.take(usize::try_from(len).ok()?)?)
            };
            let field = fields.get(i).unwrap_or(&Field::Null);
            match (field, value) {
                (_, None) => out.put_i32(-1),
                (Field::Clear, Some(v)) => {
                    out.put_i32(i32::try_from(v.len()).ok()?);
                    out.put_slice(v);
                }
                (Field::Null, Some(_)) => {
                    masked += 1;
                    out.put_i32(-1);
                }
                (Field::Mask { mask, binary }, Some(v)) => {
                    masked += 1;
                    match mask_value(mask, *binary, v, self.key.as_ref()) {
                        Masked::Null => out.put_i32(-1),
                        Masked::Fixed(b) => {
                            out.put_i32(i32::try_from(b.len()).ok()?);
                            out.put_slice(b);
                        }
                        Masked::Hash(h) => {
                            out.put_i32(32);
                            out.put_slice(&h);
                        }
                        Masked::Built(b) => {
                            out.put_i32(i32::try_from(b.len()).ok()?);
                            out.put_slice(&b);
                        }
                    }
                }
            }
        }
        self.masked += masked;
        let len = u32::try_from(out.len() - start - 1).ok()?;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        Some(())
    }
}

/// A masked value, without allocating where the value is fixed.
enum Masked<'a> {
    Null,
    Fixed(&'a [u8]),
    Hash([u8; 32]),
    Built(Vec<u8>),
}

/// One value under its mask. A mask that does not fit the column (only reachable
/// through the RowDescription check) gives NULL.
fn mask_value<'a>(
    mask: &'a ColumnMask,
    binary: bool,
    value: &[u8],
    key: Option<&MaskKey>,
) -> Masked<'a> {
    if !mask.kind.fits(mask.type_oid, mask.category) {
        return Masked::Null;
    }
    let string = mask.category == 'S';
    match &mask.kind {
        MaskKind::Null => Masked::Null,
        MaskKind::Redact { value: text } if string => {
            Masked::Fixed(text.as_deref().unwrap_or("****").as_bytes())
        }
        MaskKind::Redact { .. } => match redacted(mask.type_oid, binary) {
            Some(b) => Masked::Fixed(b),
            None => Masked::Null,
        },
        // Without a key nothing can be hashed: NULL, never the value.
        MaskKind::Hash => match key {
            Some(k) => Masked::Hash(k.hash_hex(value)),
            None => Masked::Null,
        },
        MaskKind::Partial {
            first,
            last,
            padding,
        } => {
            let s = String::from_utf8_lossy(value);
            let chars: Vec<char> = s.chars().collect();
            let (first, last) = (*first as usize, *last as usize);
            let mut out = String::new();
            if chars.len() > first + last {
                out.extend(&chars[..first]);
                out.push_str(padding);
                out.extend(&chars[chars.len() - last..]);
            } else {
                out.push_str(padding);
            }
            Masked::Built(out.into_bytes())
        }
        MaskKind::Email => {
            let s = String::from_utf8_lossy(value);
            Masked::Built(match s.rfind('@') {
                Some(at) => format!("****{}", &s[at..]).into_bytes(),
                None => b"****".to_vec(),
            })
        }
    }
}

/// The fixed value `redact` returns for a non-string type, in the result's format.
fn redacted(oid: u32, binary: bool) -> Option<&'static [u8]> {
    // 1970-01-01 in days and microseconds from 2000-01-01, big-endian.
    const EPOCH_DAYS: [u8; 4] = (-10_957i32).to_be_bytes();
    const EPOCH_MICROS: [u8; 8] = (-946_684_800_000_000i64).to_be_bytes();
    const ZEROS: [u8; 16] = [0; 16];
    Some(if binary {
        match oid {
            ty::BOOL => &ZEROS[..1],
            ty::BYTEA => &[],
            ty::INT2 => &ZEROS[..2],
            ty::INT4 | ty::OID | ty::FLOAT4 => &ZEROS[..4],
            ty::INT8 | ty::FLOAT8 | ty::TIME => &ZEROS[..8],
            // ndigits 0, weight 0, sign positive, dscale 0.
            ty::NUMERIC => &ZEROS[..8],
            ty::DATE => &EPOCH_DAYS,
            ty::TIMESTAMP | ty::TIMESTAMPTZ => &EPOCH_MICROS,
            ty::UUID => &ZEROS,
            ty::JSON => b"null",
            ty::JSONB => b"\x01null",
            _ => return None,
        }
    } else {
        let text: &'static str = match oid {
            ty::BOOL => "f",
            ty::BYTEA => "\\x",
            ty::INT2 | ty::INT4 | ty::INT8 | ty::OID | ty::FLOAT4 | ty::FLOAT8 | ty::NUMERIC => "0",
            ty::DATE => "1970-01-01",
            ty::TIME => "00:00:00",
            ty::TIMESTAMP => "1970-01-01 00:00:00",
            ty::TIMESTAMPTZ => "1970-01-01 00:00:00+00",
            ty::UUID => "00000000-0000-0000-0000-000000000000",
            ty::JSON | ty::JSONB => "null",
            _ => return None,
        };
        text.as_bytes()
    })
}

/// An ErrorResponse or NoticeResponse without the fields that may quote values: severity,
/// SQLSTATE and a fixed message remain.
pub fn withheld_error(tag: u8, body: &[u8]) -> BytesMut {
    let e = pgward_wire::backend::error_fields(body);
    let message = format!(
        "{} (pgward withheld the server's text: the statement reads masked columns)",
        generic_message(&e.code)
    );
    let mut out = BytesMut::new();
    pgward_wire::build::error_or_notice(&mut out, tag, &e.severity, &e.code, &message);
    out
}

fn generic_message(code: &str) -> &'static str {
    match code.get(..2) {
        Some("22") => "data exception",
        Some("23") => "integrity constraint violation",
        Some("42") => "syntax error or access rule violation",
        Some("40") => "transaction rollback",
        Some("57") => "operator intervention",
        Some("53") => "insufficient resources",
        Some("XX") => "internal error",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(kind: MaskKind, type_oid: u32, category: char) -> Arc<ColumnMask> {
        Arc::new(ColumnMask {
            column: "public.t.c".into(),
            kind,
            rule: "r".into(),
            equality: false,
            type_oid,
            category,
        })
    }

    fn val(m: Masked<'_>) -> Option<Vec<u8>> {
        match m {
            Masked::Null => None,
            Masked::Fixed(b) => Some(b.to_vec()),
            Masked::Hash(h) => Some(h.to_vec()),
            Masked::Built(b) => Some(b),
        }
    }

    fn key() -> MaskKey {
        MaskKey(hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]))
    }

    fn text(kind: MaskKind, value: &str) -> Option<String> {
        val(mask_value(
            &mask(kind, 25, 'S'),
            false,
            value.as_bytes(),
            Some(&key()),
        ))
        .map(|v| String::from_utf8(v).unwrap_or_default())
    }

    #[test]
    fn every_mask_kind_on_strings() {
        assert_eq!(text(MaskKind::Null, "x"), None);
        assert_eq!(
            text(MaskKind::Redact { value: None }, "secret"),
            Some("****".into())
        );
        assert_eq!(
            text(
                MaskKind::Redact {
                    value: Some("[hidden]".into())
                },
                "secret"
            ),
            Some("[hidden]".into())
        );
        assert_eq!(
            text(MaskKind::Email, "alice@contoso.com"),
            Some("****@contoso.com".into())
        );
        assert_eq!(text(MaskKind::Email, "no-at-sign"), Some("****".into()));
        let partial = MaskKind::Partial {
            first: 2,
            last: 2,
            padding: "**".into(),
        };
        assert_eq!(text(partial.clone(), "123-45-6789"), Some("12**89".into()));
        // Too short to keep anything without showing it all.
        assert_eq!(text(partial.clone(), "1234"), Some("**".into()));
        assert_eq!(text(partial, "ÄÖÜßéè"), Some("ÄÖ**éè".into()));
        let a = text(MaskKind::Hash, "alice@contoso.com").unwrap_or_default();
        let b = text(MaskKind::Hash, "alice@contoso.com").unwrap_or_default();
        let c = text(MaskKind::Hash, "bob@contoso.com").unwrap_or_default();
        assert_eq!(a.len(), 32);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(!a.contains("alice"));
        // No key: NULL, never the value.
        assert_eq!(
            val(mask_value(
                &mask(MaskKind::Hash, 25, 'S'),
                false,
                b"x",
                None
            )),
            None
        );
    }

    #[test]
    fn redact_has_a_value_per_type_and_format() {
        let m = |oid| mask(MaskKind::Redact { value: None }, oid, 'N');
        assert_eq!(
            val(mask_value(&m(ty::INT4), false, b"42", None)),
            Some(b"0".to_vec())
        );
        assert_eq!(
            val(mask_value(&m(ty::INT4), true, &[0, 0, 0, 42], None)),
            Some(vec![0; 4])
        );
        assert_eq!(
            val(mask_value(&m(ty::NUMERIC), true, &[0; 10], None)),
            Some(vec![0; 8])
        );
        assert_eq!(
            val(mask_value(&m(ty::DATE), true, &[0; 4], None)),
            Some((-10_957i32).to_be_bytes().to_vec())
        );
        assert_eq!(
            val(mask_value(&m(ty::UUID), false, b"x", None)).map(|v| v.len()),
            Some(36)
        );
        // A type redact has no value for: NULL.
        assert_eq!(val(mask_value(&m(600), false, b"(1,2)", None)), None);
        // A string mask on a non-string column (the RowDescription check): NULL.
        assert_eq!(
            val(mask_value(
                &mask(MaskKind::Email, ty::INT4, 'N'),
                false,
                b"1",
                None
            )),
            None
        );
    }

    fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&i16::try_from(values.len()).unwrap_or(0).to_be_bytes());
        for v in values {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&i32::try_from(v.len()).unwrap_or(0).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b
    }

    fn plan(outputs: Vec<OutputMask>) -> Arc<MaskPlan> {
        Arc::new(MaskPlan {
            outputs,
            columns: Vec::new(),
            origins: Vec::new(),
        })
    }

    #[test]
    fn execute_results_follow_their_plan_and_formats_until_the_batch_ends() {
        let mut s = MaskStream::new(Some(key()));
        let email = mask(MaskKind::Email, 25, 'S');
        let mut bind = Vec::new();
        bind.extend_from_slice(b"\0\0");
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes());
        s.on_bind(
            "",
            Some(plan(vec![OutputMask::Clear, OutputMask::Column(email)])),
            &bind,
        );
        s.on_execute("");
        s.on_sync();
        let row = data_row(&[Some(b"\0\0\0\x01"), Some(b"alice@contoso.com")]);
        let mut out = BytesMut::new();
        assert!(s.rewrite_row(&row, &mut out), "rewritten");
        let expected = data_row(&[Some(b"\0\0\0\x01"), Some(b"****@contoso.com")]);
        assert_eq!(&out[5..], &expected[..]);
        assert_eq!(s.take_masked(), 1);
        // A result with another shape: every planned column NULL... here, two columns
        // expected and three came: all NULL rather than guess.
        s.on_server(be::COMMAND_COMPLETE, b"SELECT 1\0");
        s.on_server(be::READY_FOR_QUERY, b"I");
        assert!(
            !s.rewrite_row(&row, &mut BytesMut::new()),
            "nothing expected: forwarded"
        );
        s.on_statement(None);
        s.on_statement(Some(plan(vec![OutputMask::Derived(vec!["x".into()])])));
        s.on_sync();
        assert!(
            !s.rewrite_row(&row, &mut BytesMut::new()),
            "first statement has no plan"
        );
        s.on_server(be::COMMAND_COMPLETE, b"SELECT 1\0");
        let mut rd = Vec::new();
        rd.extend_from_slice(&1i16.to_be_bytes());
        rd.extend_from_slice(b"lower\0");
        rd.extend_from_slice(&[0; 4 + 2 + 4 + 2 + 4 + 2]);
        s.on_server(be::ROW_DESCRIPTION, &rd);
        let one = data_row(&[Some(b"alice")]);
        let mut out = BytesMut::new();
        assert!(s.rewrite_row(&one, &mut out), "rewritten");
        assert_eq!(&out[5..], &data_row(&[None])[..]);
        assert!(s.withholds_errors());
        s.on_server(be::ERROR_RESPONSE, b"");
        assert!(!s.withholds_errors());
    }

    #[test]
    fn bind_formats_are_read() {
        let mut b = Vec::new();
        b.extend_from_slice(b"p\0s\0");
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&3i32.to_be_bytes());
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        let f = Formats::of_bind(&b).expect("parsed");
        assert!(!f.binary(0));
        assert!(f.binary(1));
    }

    #[test]
    fn withheld_errors_keep_only_severity_and_code() {
        let mut msg = BytesMut::new();
        pgward_wire::build::error_response_with(
            &mut msg,
            pgward_wire::build::Severity::Error,
            "22P02",
            "invalid input syntax for type integer: \"123-45-6789\"",
            Some("Failing row contains (123-45-6789)"),
        );
        let body = msg[5..].to_vec();
        let out = withheld_error(be::ERROR_RESPONSE, &body);
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("6789"));
        let e = pgward_wire::backend::error_fields(&out[5..]);
        assert_eq!(e.code, "22P02");
        assert!(e.message.contains("withheld"));
    }
}
