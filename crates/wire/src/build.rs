//! Builders for the messages pgward writes itself, to clients (backend messages) and
//! to upstream servers (frontend messages during startup and cancel).

use bytes::{BufMut, BytesMut};

use crate::startup::{CANCEL_REQUEST_CODE, PROTOCOL_3_0, SSL_REQUEST_CODE};
use crate::TxStatus;

/// Writes `tag`, a length placeholder, the body from `f`, then patches the length.
fn framed(buf: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    f(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    put_cstr_bytes(buf, s.as_bytes());
}

fn put_cstr_bytes(buf: &mut BytesMut, s: &[u8]) {
    // A NUL inside would end the field early and shift every field after it.
    buf.extend(s.iter().copied().filter(|&b| b != 0));
    buf.put_u8(0);
}

/// One column of a RowDescription for rows pgward builds itself (text format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextColumn {
    pub name: String,
    pub type_oid: u32,
    /// pg_type.typlen (-1 for variable length).
    pub type_len: i16,
}

/// RowDescription (`T`), every column in text format.
pub fn row_description(buf: &mut BytesMut, cols: &[TextColumn]) {
    framed(buf, b'T', |b| {
        b.put_u16(u16::try_from(cols.len()).unwrap_or(u16::MAX));
        for c in cols {
            put_cstr(b, &c.name);
            b.put_u32(0); // table oid
            b.put_u16(0); // column number
            b.put_u32(c.type_oid);
            b.put_i16(c.type_len);
            b.put_i32(-1); // type modifier
            b.put_u16(0); // text format
        }
    });
}

/// DataRow (`D`) whose values `write` puts straight into `buf`, so no value needs a buffer
/// of its own; `write` returns `None` (having written nothing) for SQL NULL.
pub fn data_row<T>(
    buf: &mut BytesMut,
    cells: impl IntoIterator<Item = T>,
    mut write: impl FnMut(&mut BytesMut, T) -> Option<()>,
) {
    framed(buf, b'D', |b| {
        let count_at = b.len();
        b.put_u16(0);
        let mut count: usize = 0;
        for cell in cells {
            count += 1;
            let len_at = b.len();
            b.put_i32(0);
            let len = match write(b, cell) {
                None => -1,
                Some(()) => i32::try_from(b.len() - len_at - 4).unwrap_or(i32::MAX),
            };
            b[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        }
        let count = u16::try_from(count).unwrap_or(u16::MAX);
        b[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
    });
}

/// CommandComplete (`C`).
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    framed(buf, b'C', |b| put_cstr(b, tag));
}

/// EmptyQueryResponse (`I`).
pub fn empty_query(buf: &mut BytesMut) {
    framed(buf, b'I', |_| {});
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }
}

pub fn error_response(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    error_response_with(buf, severity, code, message, None);
}

pub fn error_response_with(
    buf: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    detail: Option<&str>,
) {
    framed(buf, b'E', |b| {
        error_head(b, severity, code, message.as_bytes());
        if let Some(d) = detail {
            b.put_u8(b'D');
            put_cstr(b, d);
        }
        b.put_u8(0);
    });
}

/// The fields every ErrorResponse pgward writes starts with: severity (localized and not),
/// SQLSTATE and message.
fn error_head(b: &mut BytesMut, severity: Severity, code: &str, message: &[u8]) {
    b.put_u8(b'S');
    put_cstr(b, severity.as_str());
    b.put_u8(b'V');
    put_cstr(b, severity.as_str());
    b.put_u8(b'C');
    put_cstr(b, code);
    b.put_u8(b'M');
    put_cstr_bytes(b, message);
}

/// An ErrorResponse that points at a character of the statement (field `P`, 1-based, as
/// PostgreSQL reports syntax errors); `position` 0 leaves the field out. The message is
/// given in the client's encoding.
pub fn error_response_at(
    buf: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &[u8],
    position: u32,
) {
    framed(buf, b'E', |b| {
        error_head(b, severity, code, message);
        if position > 0 {
            b.put_u8(b'P');
            put_cstr(b, &position.to_string());
        }
        b.put_u8(0);
    });
}

/// An ErrorResponse or NoticeResponse (`tag`) with the severity the server gave
/// (`ERROR`, `FATAL`, `WARNING`, `NOTICE`, ...), a SQLSTATE and a message, and nothing
/// else (a server's message stripped of its fields).
pub fn error_or_notice(buf: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str) {
    framed(buf, tag, |b| {
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', message),
        ] {
            if !value.is_empty() {
                b.put_u8(field);
                put_cstr(b, value);
            }
        }
        b.put_u8(0);
    });
}

pub fn notice(buf: &mut BytesMut, code: &str, message: &str) {
    framed(buf, b'N', |b| {
        b.put_u8(b'S');
        put_cstr(b, "WARNING");
        b.put_u8(b'V');
        put_cstr(b, "WARNING");
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, message);
        b.put_u8(0);
    });
}

pub fn authentication_ok(buf: &mut BytesMut) {
    framed(buf, b'R', |b| b.put_u32(0));
}

pub fn authentication_cleartext(buf: &mut BytesMut) {
    framed(buf, b'R', |b| b.put_u32(3));
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    framed(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn backend_key_data(buf: &mut BytesMut, pid: u32, secret: &[u8]) {
    framed(buf, b'K', |b| {
        b.put_u32(pid);
        b.put_slice(secret);
    });
}

pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    framed(buf, b'Z', |b| b.put_u8(status.as_byte()));
}

/// Tells a client that asked for a newer minor version or `_pq_` options what this
/// server supports; the session then continues on 3.0.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: u16, unsupported: &[String]) {
    framed(buf, b'v', |b| {
        b.put_u32(PROTOCOL_3_0 | u32::from(minor));
        b.put_u32(unsupported.len() as u32);
        for o in unsupported {
            put_cstr(b, o);
        }
    });
}

// ---- frontend messages pgward sends upstream ----

pub fn ssl_request(buf: &mut BytesMut) {
    buf.put_i32(8);
    buf.put_u32(SSL_REQUEST_CODE);
}

pub fn cancel_request(buf: &mut BytesMut, pid: u32, secret: &[u8]) {
    buf.put_i32(12 + secret.len() as i32);
    buf.put_u32(CANCEL_REQUEST_CODE);
    buf.put_u32(pid);
    buf.put_slice(secret);
}

pub fn startup_message<'a>(
    buf: &mut BytesMut,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    let at = buf.len();
    buf.put_i32(0);
    buf.put_u32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(buf, k);
        put_cstr(buf, v);
    }
    buf.put_u8(0);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// PasswordMessage with raw bytes (cleartext or MD5 response, NUL-terminated by the caller's data).
pub fn password_message(buf: &mut BytesMut, password: &[u8]) {
    framed(buf, b'p', |b| {
        b.put_slice(password);
        b.put_u8(0);
    });
}

pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    framed(buf, b'p', |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    framed(buf, b'p', |b| b.put_slice(data));
}

/// Parse with no declared parameter types.
pub fn parse(buf: &mut BytesMut, statement: &str, sql: &str) {
    framed(buf, b'P', |b| {
        put_cstr(b, statement);
        put_cstr(b, sql);
        b.put_u16(0);
    });
}

/// Parse with declared parameter types (0 = unspecified).
pub fn parse_with_types(buf: &mut BytesMut, statement: &str, sql: &str, param_types: &[u32]) {
    framed(buf, b'P', |b| {
        put_cstr(b, statement);
        put_cstr(b, sql);
        // A Parse holds at most u16::MAX types (the framer enforces it on the way in).
        b.put_u16(u16::try_from(param_types.len()).unwrap_or(u16::MAX));
        for t in param_types.iter().take(usize::from(u16::MAX)) {
            b.put_u32(*t);
        }
    });
}

/// Bind with no parameters and default result formats.
pub fn bind_without_params(buf: &mut BytesMut, portal: &str, statement: &str) {
    framed(buf, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_u16(0);
        b.put_u16(0);
        b.put_u16(0);
    });
}

/// Execute of a portal; `max_rows` 0 means all rows.
pub fn execute(buf: &mut BytesMut, portal: &str, max_rows: u32) {
    framed(buf, b'E', |b| {
        put_cstr(b, portal);
        b.put_u32(max_rows);
    });
}

pub fn terminate(buf: &mut BytesMut) {
    framed(buf, b'X', |_| {});
}

pub fn query(buf: &mut BytesMut, sql: &str) {
    query_bytes(buf, sql.as_bytes());
}

/// A Query whose text is already in the client's encoding.
pub fn query_bytes(buf: &mut BytesMut, sql: &[u8]) {
    framed(buf, b'Q', |b| put_cstr_bytes(b, sql));
}

/// Parse with declared parameter types, its text already in the client's encoding.
pub fn parse_bytes_with_types(
    buf: &mut BytesMut,
    statement: &str,
    sql: &[u8],
    param_types: &[u32],
) {
    framed(buf, b'P', |b| {
        put_cstr(b, statement);
        put_cstr_bytes(b, sql);
        b.put_u16(u16::try_from(param_types.len()).unwrap_or(u16::MAX));
        for t in param_types.iter().take(usize::from(u16::MAX)) {
            b.put_u32(*t);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::startup::{decode, StartupPacket};

    #[test]
    fn lengths_are_patched() {
        let mut b = BytesMut::new();
        ready_for_query(&mut b, TxStatus::InTransaction);
        assert_eq!(&b[..], &[b'Z', 0, 0, 0, 5, b'T']);
        let mut b = BytesMut::new();
        cancel_request(&mut b, 5, &[1, 2, 3, 4]);
        assert_eq!(
            decode(&mut b).unwrap(),
            Some(StartupPacket::Cancel {
                pid: 5,
                secret: vec![1, 2, 3, 4]
            })
        );
    }

    #[test]
    fn startup_round_trips_and_strips_nul() {
        let mut b = BytesMut::new();
        startup_message(&mut b, [("user", "a\0b"), ("database", "app")]);
        let Some(StartupPacket::Startup(m)) = decode(&mut b).unwrap() else {
            panic!()
        };
        assert_eq!(m.param("user"), Some("ab"));
        assert_eq!(m.param("database"), Some("app"));
    }
}
