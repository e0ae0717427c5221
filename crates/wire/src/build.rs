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
    // A NUL inside would end the field early and shift every field after it.
    buf.extend(s.bytes().filter(|&b| b != 0));
    buf.put_u8(0);
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
        b.put_u8(b'S');
        put_cstr(b, severity.as_str());
        b.put_u8(b'V');
        put_cstr(b, severity.as_str());
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, message);
        if let Some(d) = detail {
            b.put_u8(b'D');
            put_cstr(b, d);
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

pub fn terminate(buf: &mut BytesMut) {
    framed(buf, b'X', |_| {});
}

pub fn query(buf: &mut BytesMut, sql: &str) {
    framed(buf, b'Q', |b| put_cstr(b, sql));
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
