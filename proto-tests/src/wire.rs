//! A small blocking PostgreSQL wire client for end-to-end tests that drive the protocol
//! step by step (named statements, portals with row limits, pipelined messages): what
//! tokio-postgres and psql do not let a test control. Plaintext, no password (pgward's
//! development mode takes the user name as the caller).

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::raw;

/// An ErrorResponse's SQLSTATE and message.
#[derive(Debug, Clone)]
pub struct PgError {
    pub code: String,
    pub message: String,
}

impl PgError {
    pub fn parse(body: &[u8]) -> Self {
        let mut e = PgError {
            code: String::new(),
            message: String::new(),
        };
        for f in body.split(|b| *b == 0) {
            match f.first() {
                Some(b'C') => e.code = String::from_utf8_lossy(&f[1..]).into_owned(),
                Some(b'M') => e.message = String::from_utf8_lossy(&f[1..]).into_owned(),
                _ => {}
            }
        }
        e
    }
}

/// Everything the server said up to ReadyForQuery.
#[derive(Debug, Default)]
pub struct Reply {
    pub errors: Vec<PgError>,
    /// DataRow messages.
    pub rows: usize,
    /// CommandComplete tags.
    pub tags: Vec<String>,
    /// PortalSuspended messages (an Execute with a row limit that left rows).
    pub suspended: usize,
    /// ReadyForQuery status: b'I', b'T', b'E'; 0 if the connection ended first.
    pub status: u8,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.status != 0
    }

    /// The first error's SQLSTATE ("" when none).
    pub fn code(&self) -> &str {
        self.errors.first().map_or("", |e| e.code.as_str())
    }
}

pub struct Wire {
    pub s: TcpStream,
}

impl Wire {
    /// Signs in as `user` to database `app`; panics on failure.
    pub fn connect(port: u16, user: &str) -> Wire {
        let mut s = raw::connect(port);
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(&raw::startup_packet(
            0,
            &[("user", user), ("database", "app")],
        ))
        .unwrap();
        let mut w = Wire { s };
        let r = w.read_reply();
        assert!(r.ok(), "sign-in as {user} failed: {r:?}");
        w
    }

    pub fn query(&mut self, sql: &str) -> Reply {
        self.send(&raw::query(sql));
        self.read_reply()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads up to and including ReadyForQuery (or the end of the connection).
    pub fn read_reply(&mut self) -> Reply {
        let mut r = Reply::default();
        while let Some((tag, body)) = raw::read_message(&mut self.s) {
            match tag {
                b'E' => r.errors.push(PgError::parse(&body)),
                b'C' => r.tags.push(
                    String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned(),
                ),
                b'D' => r.rows += 1,
                b's' => r.suspended += 1,
                b'Z' => {
                    r.status = body[0];
                    break;
                }
                _ => {}
            }
        }
        r
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        let _ = self.s.write_all(&raw::message(b'X', &[]));
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Parse of `sql` as statement `name`, no parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cstr(name);
    b.extend(cstr(sql));
    b.extend(0u16.to_be_bytes());
    raw::message(b'P', &b)
}

/// Bind of statement `stmt` to `portal`, no parameters.
pub fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(cstr(stmt));
    b.extend(0u16.to_be_bytes());
    b.extend(0u16.to_be_bytes());
    b.extend(0u16.to_be_bytes());
    raw::message(b'B', &b)
}

/// Execute of `portal`, at most `max_rows` rows (0: all).
pub fn execute(portal: &str, max_rows: u32) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(max_rows.to_be_bytes());
    raw::message(b'E', &b)
}

pub fn sync() -> Vec<u8> {
    raw::message(b'S', &[])
}
