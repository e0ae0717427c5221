//! Backend (server → client) traffic.
//!
//! After startup the proxy copies server replies through, reading on the side only what
//! it needs (ReadyForQuery, CommandComplete, ErrorResponse, ParameterStatus, copy
//! responses). `Scanner` walks message boundaries over a byte stream: messages the
//! proxy inspects are handed over whole, all others (DataRow above all) stream through
//! without being buffered, so a 1 GiB row costs no more memory than a small one.

use bytes::BytesMut;

use crate::startup::take_cstr;
use crate::{TxStatus, WireError};

/// Tags whose body the proxy reads; the scanner waits for these to be complete.
fn is_inspected(tag: u8) -> bool {
    matches!(
        tag,
        b'Z' | b'C' | b'E' | b'S' | b'G' | b'H' | b'W' | b'K' | b'R' | b'v' | b'I'
    )
}

/// What `Scanner::scan` found in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes from the front of the buffer that may be forwarded now.
    pub ready: usize,
}

/// Streaming boundary tracker for backend messages.
#[derive(Debug)]
pub struct Scanner {
    /// Bytes still to come of a pass-through message whose header was already seen.
    pass_through: usize,
    max_len: usize,
    /// Also hand over whole DataRow, RowDescription and NoticeResponse messages (column
    /// masks rewrite them); otherwise they stream through.
    rows: bool,
}

impl Scanner {
    pub fn new(max_len: usize) -> Self {
        Self {
            pass_through: 0,
            max_len,
            rows: false,
        }
    }

    /// A scanner that also hands over whole rows, row descriptions and notices.
    pub fn inspecting_rows(max_len: usize) -> Self {
        Self {
            rows: true,
            ..Self::new(max_len)
        }
    }

    /// True when the next byte of the stream starts a new message, which is the only
    /// place pgward may inject a message of its own.
    pub fn at_boundary(&self) -> bool {
        self.pass_through == 0
    }

    /// Scans `buf` from its start. Calls `on_message(offset, tag, body)` for every
    /// complete inspected message, in order (`offset` is where the message starts in
    /// `buf`; it occupies `5 + body.len()` bytes), and `on_message(offset, tag, &[])` for
    /// the header of every other message. Returns how many leading bytes can be forwarded; the caller keeps
    /// the rest (an incomplete header or inspected message) and calls again after reading.
    pub fn scan<E>(
        &mut self,
        buf: &BytesMut,
        mut on_message: impl FnMut(usize, u8, &[u8]) -> Result<(), E>,
    ) -> Result<Scanned, E>
    where
        E: From<WireError>,
    {
        let mut pos = 0;
        if self.pass_through > 0 {
            let n = self.pass_through.min(buf.len());
            self.pass_through -= n;
            pos = n;
        }
        while self.pass_through == 0 && buf.len() - pos >= 5 {
            let tag = buf[pos];
            let len = i32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]]);
            if len < 4 {
                return Err(WireError::BadLength {
                    what: "backend message",
                    len: len.into(),
                }
                .into());
            }
            let len = len as usize;
            if len > self.max_len {
                return Err(WireError::TooLarge {
                    what: "backend message",
                    len,
                    max: self.max_len,
                }
                .into());
            }
            let total = len + 1;
            let available = buf.len() - pos;
            if is_inspected(tag) || (self.rows && matches!(tag, b'D' | b'T' | b'N')) {
                if available < total {
                    break;
                }
                on_message(pos, tag, &buf[pos + 5..pos + total])?;
                pos += total;
            } else {
                on_message(pos, tag, &[])?;
                if available < total {
                    self.pass_through = total - available;
                    pos = buf.len();
                } else {
                    pos += total;
                }
            }
        }
        Ok(Scanned { ready: pos })
    }
}

/// Reads the transaction status out of a ReadyForQuery body.
pub fn ready_for_query(body: &[u8]) -> Result<TxStatus, WireError> {
    match body {
        [b] => {
            TxStatus::from_byte(*b).ok_or(WireError::malformed("ReadyForQuery", "unknown status"))
        }
        _ => Err(WireError::malformed("ReadyForQuery", "bad length")),
    }
}

/// Authentication request ('R') from a server during startup.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<&'a str> },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    Other(u32),
}

pub fn auth_request(body: &[u8]) -> Result<AuthRequest<'_>, WireError> {
    const WHAT: &str = "authentication request";
    if body.len() < 4 {
        return Err(WireError::malformed(WHAT, "short"));
    }
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let salt: [u8; 4] = rest
                .try_into()
                .map_err(|_| WireError::malformed(WHAT, "bad MD5 salt"))?;
            AuthRequest::Md5 { salt }
        }
        10 => {
            let mut mechanisms = Vec::new();
            let mut rest = rest;
            loop {
                let m = take_cstr(&mut rest).ok_or(WireError::malformed(WHAT, "bad SASL list"))?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(
                    std::str::from_utf8(m)
                        .map_err(|_| WireError::malformed(WHAT, "bad SASL name"))?,
                );
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(rest),
        12 => AuthRequest::SaslFinal(rest),
        other => AuthRequest::Other(other),
    })
}

/// Name and value of a ParameterStatus ('S') message.
pub fn parameter_status(body: &[u8]) -> Result<(&str, &str), WireError> {
    const WHAT: &str = "ParameterStatus";
    let mut rest = body;
    let name = take_cstr(&mut rest).ok_or(WireError::malformed(WHAT, "unterminated"))?;
    let value = take_cstr(&mut rest).ok_or(WireError::malformed(WHAT, "unterminated"))?;
    let s = |b| std::str::from_utf8(b).map_err(|_| WireError::malformed(WHAT, "not UTF-8"));
    Ok((s(name)?, s(value)?))
}

/// Process id and secret of a BackendKeyData ('K') message.
pub fn backend_key_data(body: &[u8]) -> Result<(u32, Vec<u8>), WireError> {
    if body.len() < 8 || body.len() > 4 + 256 {
        return Err(WireError::malformed("BackendKeyData", "bad length"));
    }
    let pid = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    Ok((pid, body[4..].to_vec()))
}

/// The fields of an ErrorResponse or NoticeResponse, by field code.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub fn error_fields(body: &[u8]) -> ErrorFields {
    let mut fields = ErrorFields::default();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        rest = tail;
        let Some(value) = take_cstr(&mut rest) else {
            break;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match code {
            b'V' => fields.severity = value,
            b'S' if fields.severity.is_empty() => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {}
        }
    }
    fields
}

/// Command tag of a CommandComplete ('C') body, without the terminator.
pub fn command_tag(body: &[u8]) -> &[u8] {
    body.strip_suffix(&[0]).unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn scan_all(chunks: &[&[u8]]) -> (Vec<(u8, Vec<u8>)>, Vec<u8>) {
        let mut scanner = Scanner::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        let mut forwarded = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            let s = scanner
                .scan::<WireError>(&buf, |_, t, b| {
                    seen.push((t, b.to_vec()));
                    Ok(())
                })
                .unwrap();
            forwarded.extend_from_slice(&buf.split_to(s.ready));
        }
        (seen, forwarded)
    }

    #[test]
    fn streams_wide_rows_and_waits_for_inspected_messages() {
        let row = msg(b'D', &vec![7u8; 1000]);
        let done = msg(b'C', b"SELECT 1\0");
        let ready = msg(b'Z', b"I");
        let mut stream = row.clone();
        stream.extend(&done);
        stream.extend(&ready);
        // Split the stream at every position: forwarded bytes must equal the input and
        // the inspected messages must be seen whole exactly once.
        for cut in 1..stream.len() {
            let (seen, fwd) = scan_all(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(fwd, stream, "cut at {cut}");
            let tags: Vec<u8> = seen.iter().map(|(t, _)| *t).collect();
            assert_eq!(tags, vec![b'D', b'C', b'Z']);
            assert_eq!(seen[1].1, b"SELECT 1\0");
            assert_eq!(ready_for_query(&seen[2].1).unwrap(), TxStatus::Idle);
        }
    }

    #[test]
    fn rejects_bad_backend_lengths() {
        let mut scanner = Scanner::new(100);
        let buf = BytesMut::from(&[b'D', 0, 0, 0, 2][..]);
        assert!(scanner.scan::<WireError>(&buf, |_, _, _| Ok(())).is_err());
        let buf = BytesMut::from(&[b'D', 0, 0, 1, 0][..]);
        assert!(scanner.scan::<WireError>(&buf, |_, _, _| Ok(())).is_err());
    }

    #[test]
    fn decodes_handshake_messages() {
        assert_eq!(auth_request(&[0, 0, 0, 0]).unwrap(), AuthRequest::Ok);
        assert_eq!(
            auth_request(&[0, 0, 0, 5, 1, 2, 3, 4]).unwrap(),
            AuthRequest::Md5 { salt: [1, 2, 3, 4] }
        );
        assert_eq!(
            auth_request(b"\0\0\0\x0aSCRAM-SHA-256\0\0").unwrap(),
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256"]
            }
        );
        assert_eq!(
            parameter_status(b"TimeZone\0UTC\0").unwrap(),
            ("TimeZone", "UTC")
        );
        assert_eq!(
            backend_key_data(&[0, 0, 0, 9, 1, 2, 3, 4]).unwrap(),
            (9, vec![1, 2, 3, 4])
        );
        let mut e = BytesMut::new();
        build::error_response(&mut e, build::Severity::Error, "42501", "denied");
        let f = error_fields(&e[5..]);
        assert_eq!((f.severity.as_str(), f.code.as_str()), ("ERROR", "42501"));
        assert_eq!(f.message, "denied");
        assert_eq!(command_tag(b"INSERT 0 1\0"), b"INSERT 0 1");
    }
}
