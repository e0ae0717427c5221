//! Whole frontend (client → server) messages after startup.
//!
//! The proxy decides on Query, Parse, Bind and Execute, so these are always framed
//! whole: `Framer::next` returns a message only once all of its bytes are buffered,
//! and keeps the raw bytes so forwarding is a zero-copy slice.

use bytes::{Bytes, BytesMut};

use crate::startup::take_cstr;
use crate::WireError;

/// Tags a PostgreSQL 15+ server accepts from a client after startup. Anything else is
/// refused here rather than relayed: a tag pgward doesn't know can't be inspected.
pub fn is_known_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'B' | b'C'
            | b'd'
            | b'c'
            | b'f'
            | b'D'
            | b'E'
            | b'H'
            | b'F'
            | b'p'
            | b'P'
            | b'Q'
            | b'S'
            | b'X'
    )
}

/// One complete frontend message: tag, 4-byte length, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    raw: Bytes,
}

impl Message {
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
    /// The message exactly as received, for forwarding.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
    pub fn into_raw(self) -> Bytes {
        self.raw
    }
}

/// A whole frontend message borrowed from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRef<'a> {
    pub tag: u8,
    pub body: &'a [u8],
    /// Bytes the message occupies in the stream (tag + length word + body).
    pub total_len: usize,
}

/// Splits a byte stream into whole messages, bounded by `max_len` (including the length word).
#[derive(Debug, Clone, Copy)]
pub struct Framer {
    max_len: usize,
}

impl Framer {
    pub fn new(max_len: usize) -> Self {
        Self { max_len }
    }

    /// Looks at the whole message at the front of `buf` without consuming it. `Ok(None)`
    /// means more bytes are needed.
    pub fn peek<'a>(&self, buf: &'a [u8]) -> Result<Option<MessageRef<'a>>, WireError> {
        let Some(total) = self.whole_len(buf)? else {
            return Ok(None);
        };
        Ok(Some(MessageRef {
            tag: buf[0],
            body: &buf[5..total],
            total_len: total,
        }))
    }

    /// Length of the whole message at the front of `buf`, once it is all there.
    fn whole_len(&self, buf: &[u8]) -> Result<Option<usize>, WireError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let tag = buf[0];
        if !is_known_tag(tag) {
            return Err(WireError::malformed(
                "frontend message",
                "unknown message type",
            ));
        }
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len < 4 {
            return Err(WireError::BadLength {
                what: "frontend message",
                len: len.into(),
            });
        }
        let len = len as usize;
        if len > self.max_len {
            return Err(WireError::TooLarge {
                what: "frontend message",
                len,
                max: self.max_len,
            });
        }
        let total = len + 1;
        Ok((buf.len() >= total).then_some(total))
    }

    /// Takes the next whole message off the front of `buf`. `Ok(None)` means more bytes are
    /// needed; the buffer is grown to the announced size so the next read can fill it.
    pub fn next(&self, buf: &mut BytesMut) -> Result<Option<Message>, WireError> {
        match self.whole_len(buf)? {
            Some(total) => Ok(Some(Message {
                raw: buf.split_to(total).freeze(),
            })),
            None => {
                reserve_for_next(buf);
                Ok(None)
            }
        }
    }
}

/// Grows `buf` so the rest of the partial message at its front fits, once the header
/// (already checked against the bound by `peek`/`next`) is there.
pub fn reserve_for_next(buf: &mut BytesMut) {
    if buf.len() >= 5 {
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]).max(4) as usize;
        let total = len + 1;
        if total > buf.len() {
            buf.reserve(total - buf.len());
        }
    }
}

/// The SQL text of a Query ('Q') message.
pub fn query_text(body: &[u8]) -> Result<&str, WireError> {
    std::str::from_utf8(query_bytes(body)?)
        .map_err(|_| WireError::malformed("Query", "text is not UTF-8"))
}

/// The SQL of a Query ('Q') message as the client's bytes (in its client_encoding).
pub fn query_bytes(body: &[u8]) -> Result<&[u8], WireError> {
    let mut rest = body;
    let sql = take_cstr(&mut rest).ok_or(WireError::malformed("Query", "unterminated"))?;
    if !rest.is_empty() {
        return Err(WireError::malformed("Query", "bytes after the terminator"));
    }
    Ok(sql)
}

/// A Parse ('P') message: statement name, SQL text and declared parameter type oids.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    pub statement: &'a str,
    pub query: &'a str,
    pub param_types: Vec<u32>,
}

pub fn parse_message(body: &[u8]) -> Result<Parse<'_>, WireError> {
    let p = parse_message_bytes(body)?;
    Ok(Parse {
        statement: p.statement,
        query: utf8(p.query, "Parse")?,
        param_types: p.param_types,
    })
}

/// A Parse ('P') message whose SQL is left as the client's bytes (in its client_encoding).
#[derive(Debug, PartialEq, Eq)]
pub struct ParseBytes<'a> {
    pub statement: &'a str,
    pub query: &'a [u8],
    pub param_types: Vec<u32>,
}

pub fn parse_message_bytes(body: &[u8]) -> Result<ParseBytes<'_>, WireError> {
    const WHAT: &str = "Parse";
    let mut rest = body;
    let statement = utf8(
        take_cstr(&mut rest).ok_or(WireError::malformed(WHAT, "unterminated name"))?,
        WHAT,
    )?;
    let query = take_cstr(&mut rest).ok_or(WireError::malformed(WHAT, "unterminated query"))?;
    if rest.len() < 2 {
        return Err(WireError::malformed(WHAT, "missing parameter count"));
    }
    let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    rest = &rest[2..];
    if rest.len() != n * 4 {
        return Err(WireError::malformed(
            WHAT,
            "parameter types do not match count",
        ));
    }
    let param_types = rest
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(ParseBytes {
        statement,
        query,
        param_types,
    })
}

/// The portal and statement names of a Bind ('B') message (the rest stays opaque).
pub fn bind_names(body: &[u8]) -> Result<(&str, &str), WireError> {
    const WHAT: &str = "Bind";
    let mut rest = body;
    let portal = utf8(
        take_cstr(&mut rest).ok_or(WireError::malformed(WHAT, "unterminated portal"))?,
        WHAT,
    )?;
    let statement = utf8(
        take_cstr(&mut rest).ok_or(WireError::malformed(WHAT, "unterminated statement"))?,
        WHAT,
    )?;
    Ok((portal, statement))
}

/// A Bind message's parameters: value (`None` = SQL NULL) and whether it is binary.
pub type BindParams<'a> = Vec<(Option<&'a [u8]>, bool)>;

/// Portal, statement and parameter values of a Bind ('B') message.
pub fn bind_params(body: &[u8]) -> Result<(&str, &str, BindParams<'_>), WireError> {
    const WHAT: &str = "Bind";
    let bad = |d| WireError::malformed(WHAT, d);
    let mut rest = body;
    let portal = utf8(
        take_cstr(&mut rest).ok_or(bad("unterminated portal"))?,
        WHAT,
    )?;
    let statement = utf8(
        take_cstr(&mut rest).ok_or(bad("unterminated statement"))?,
        WHAT,
    )?;
    let params = take_params(&mut rest, WHAT)?;
    Ok((portal, statement, params))
}

fn take_u16(r: &mut &[u8], what: &'static str) -> Result<usize, WireError> {
    if r.len() < 2 {
        return Err(WireError::malformed(what, "short"));
    }
    let v = u16::from_be_bytes([r[0], r[1]]) as usize;
    *r = &r[2..];
    Ok(v)
}

/// Format codes then parameter values, as Bind and FunctionCall carry them (the same
/// layout): consumed from `rest`.
fn take_params<'a>(rest: &mut &'a [u8], what: &'static str) -> Result<BindParams<'a>, WireError> {
    let bad = |d| WireError::malformed(what, d);
    let nformats = take_u16(rest, what)?;
    if rest.len() < nformats * 2 {
        return Err(bad("short format codes"));
    }
    let formats: Vec<bool> = rest[..nformats * 2]
        .chunks_exact(2)
        .map(|c| c == [0, 1])
        .collect();
    *rest = &rest[nformats * 2..];
    let nparams = take_u16(rest, what)?;
    if nformats > 1 && nformats != nparams {
        return Err(bad("format codes do not match parameters"));
    }
    let mut params = Vec::with_capacity(nparams);
    for i in 0..nparams {
        if rest.len() < 4 {
            return Err(bad("short parameter"));
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        *rest = &rest[4..];
        let binary = match nformats {
            0 => false,
            1 => formats[0],
            _ => formats[i],
        };
        if len < 0 {
            params.push((None, binary));
            continue;
        }
        let len = len as usize;
        if rest.len() < len {
            return Err(bad("parameter longer than the message"));
        }
        params.push((Some(&rest[..len]), binary));
        *rest = &rest[len..];
    }
    Ok(params)
}

/// A FunctionCall ('F') message: the function's OID and its arguments (value, binary?).
/// The result format code that ends the message is checked, not returned.
#[derive(Debug, PartialEq, Eq)]
pub struct FunctionCall<'a> {
    pub oid: u32,
    pub args: BindParams<'a>,
}

pub fn function_call(body: &[u8]) -> Result<FunctionCall<'_>, WireError> {
    const WHAT: &str = "FunctionCall";
    if body.len() < 4 {
        return Err(WireError::malformed(WHAT, "short"));
    }
    let oid = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let mut rest = &body[4..];
    let args = take_params(&mut rest, WHAT)?;
    take_u16(&mut rest, WHAT)?;
    if !rest.is_empty() {
        return Err(WireError::malformed(WHAT, "bytes after the result format"));
    }
    Ok(FunctionCall { oid, args })
}

/// The portal name of an Execute ('E') message.
pub fn execute_portal(body: &[u8]) -> Result<&str, WireError> {
    let mut rest = body;
    let portal = take_cstr(&mut rest).ok_or(WireError::malformed("Execute", "unterminated"))?;
    if rest.len() != 4 {
        return Err(WireError::malformed("Execute", "bad row limit"));
    }
    utf8(portal, "Execute")
}

/// Describe ('D') or Close ('C'): kind byte ('S' statement or 'P' portal) and name.
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a str), WireError> {
    let (&kind, mut rest) = body
        .split_first()
        .ok_or(WireError::malformed(what, "empty"))?;
    if kind != b'S' && kind != b'P' {
        return Err(WireError::malformed(what, "bad target kind"));
    }
    let name = take_cstr(&mut rest).ok_or(WireError::malformed(what, "unterminated"))?;
    Ok((kind, utf8(name, what)?))
}

fn utf8<'a>(b: &'a [u8], what: &'static str) -> Result<&'a str, WireError> {
    std::str::from_utf8(b).map_err(|_| WireError::malformed(what, "text is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.put_i32(4 + body.len() as i32);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn function_call_arguments_and_truncations() {
        // lo_open(16400, 262144): oid 952, one format code (binary), two int4 arguments,
        // one NULL-free text result.
        let mut body = 952u32.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 1, 0, 1, 0, 2]);
        body.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0x40, 0x10]);
        body.extend_from_slice(&[0, 0, 0, 4, 0, 4, 0, 0]);
        body.extend_from_slice(&[0, 1]);
        let f = function_call(&body).unwrap();
        assert_eq!(f.oid, 952);
        assert_eq!(f.args.len(), 2);
        assert!(f.args.iter().all(|(v, binary)| *binary && v.is_some()));
        // Every truncation is an error, never a panic; so is a trailing byte.
        for n in 0..body.len() {
            assert!(function_call(&body[..n]).is_err(), "truncated at {n}");
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(function_call(&longer).is_err());
        // A NULL argument.
        let mut null = 2624u32.to_be_bytes().to_vec();
        null.extend_from_slice(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 0]);
        assert_eq!(function_call(&null).unwrap().args, vec![(None, false)]);
    }

    #[test]
    fn frames_back_to_back_messages_in_pieces() {
        let mut stream = msg(b'Q', b"select 1\0");
        stream.extend(msg(b'S', b""));
        let framer = Framer::new(1024);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in stream {
            buf.put_u8(byte);
            while let Some(m) = framer.next(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].tag(), b'Q');
        assert_eq!(query_text(out[0].body()).unwrap(), "select 1");
        assert_eq!(out[1].tag(), b'S');
        assert!(out[1].body().is_empty());
    }

    #[test]
    fn refuses_unknown_tags_bad_and_oversized_lengths() {
        let framer = Framer::new(100);
        assert!(framer
            .next(&mut BytesMut::from(&msg(b'z', b"")[..]))
            .is_err());
        let mut short = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(framer.next(&mut short).is_err());
        let mut big = BytesMut::from(&[b'Q', 0, 0, 1, 0][..]);
        assert!(matches!(
            framer.next(&mut big),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn decodes_extended_protocol_messages() {
        let mut body = b"s1\0select $1\0".to_vec();
        body.put_u16(1);
        body.put_u32(23);
        let p = parse_message(&body).unwrap();
        assert_eq!(p.statement, "s1");
        assert_eq!(p.query, "select $1");
        assert_eq!(p.param_types, vec![23]);
        assert!(parse_message(b"s1\0select\0\0\x01").is_err());
        assert_eq!(bind_names(b"p\0s1\0rest").unwrap(), ("p", "s1"));
        // One text parameter "42" and one NULL, result formats omitted.
        let bind = b"p\0s1\0\0\0\0\x02\0\0\0\x0242\xff\xff\xff\xff\0\0";
        let (portal, stmt, params) = bind_params(bind).unwrap();
        assert_eq!((portal, stmt), ("p", "s1"));
        assert_eq!(params, vec![(Some(&b"42"[..]), false), (None, false)]);
        assert!(bind_params(b"p\0s1\0\0\0\0\x01\0\0\0\x09x").is_err());
        assert_eq!(execute_portal(b"p\0\0\0\0\0").unwrap(), "p");
        assert_eq!(target(b"Ss1\0", "Describe").unwrap(), (b'S', "s1"));
        assert!(target(b"Xs1\0", "Describe").is_err());
        assert!(query_text(b"select 1").is_err());
        assert!(query_text(b"select 1\0junk").is_err());
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary client bytes never panic the decoders, and framing never claims
        /// more bytes than it was given (the fuzz target checks the same, longer).
        #[test]
        fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            let _ = crate::startup::decode(&mut buf);
            let framer = Framer::new(256);
            let mut offset = 0;
            while let Ok(Some(m)) = framer.peek(&buf[offset..]) {
                prop_assert!(m.total_len <= buf.len() - offset);
                let _ = query_text(m.body);
                let _ = parse_message(m.body);
                let _ = bind_names(m.body);
                let _ = execute_portal(m.body);
                let _ = target(m.body, "t");
                offset += m.total_len;
            }
        }
    }
}
