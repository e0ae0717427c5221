//! The startup phase: the untagged packets a client sends before the first
//! tagged message (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage).

use bytes::{Buf, BytesMut};

use crate::{WireError, MAX_STARTUP_BYTES};

pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Protocol 3.0, the only version pgward speaks on either leg.
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// First byte of a TLS record carrying a handshake: a PostgreSQL 17 client using
/// `sslnegotiation=direct` starts with a ClientHello instead of an SSLRequest.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    /// `secret` is 4 bytes in protocol 3.0; 3.2 allows up to 256.
    Cancel {
        pid: u32,
        secret: Vec<u8>,
    },
    Startup(StartupMessage),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Minor version the client asked for (major is always 3).
    pub minor: u16,
    /// Parameters in the order sent, excluding `_pq_.` protocol options.
    pub params: Vec<(String, String)>,
    /// `_pq_.*` protocol extension options the client asked for; pgward supports none.
    pub protocol_options: Vec<String>,
}

impl StartupMessage {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes one startup packet if a whole one is buffered; `Ok(None)` asks for more bytes.
pub fn decode(buf: &mut BytesMut) -> Result<Option<StartupPacket>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(WireError::BadLength {
            what: "startup packet",
            len: len.into(),
        });
    }
    let len = len as usize;
    if len > MAX_STARTUP_BYTES {
        return Err(WireError::TooLarge {
            what: "startup packet",
            len,
            max: MAX_STARTUP_BYTES,
        });
    }
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    let code = packet.get_u32();
    let decoded = match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            if !packet.is_empty() {
                return Err(WireError::malformed("encryption request", "trailing bytes"));
            }
            if code == SSL_REQUEST_CODE {
                StartupPacket::SslRequest
            } else {
                StartupPacket::GssEncRequest
            }
        }
        CANCEL_REQUEST_CODE => {
            if packet.len() < 8 || packet.len() > 4 + 256 {
                return Err(WireError::malformed("cancel request", "bad key length"));
            }
            let pid = packet.get_u32();
            StartupPacket::Cancel {
                pid,
                secret: packet.to_vec(),
            }
        }
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            if major != 3 {
                return Err(WireError::UnsupportedProtocol { major, minor });
            }
            StartupPacket::Startup(decode_params(&packet, minor)?)
        }
    };
    Ok(Some(decoded))
}

fn decode_params(body: &[u8], minor: u16) -> Result<StartupMessage, WireError> {
    const WHAT: &str = "startup message";
    let mut params: Vec<(String, String)> = Vec::new();
    let mut protocol_options = Vec::new();
    let mut rest = body;
    loop {
        let name = take_cstr(&mut rest).ok_or(WireError::malformed(WHAT, "unterminated name"))?;
        if name.is_empty() {
            break;
        }
        let value = take_cstr(&mut rest).ok_or(WireError::malformed(WHAT, "unterminated value"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| WireError::malformed(WHAT, "parameter name is not UTF-8"))?;
        let value = std::str::from_utf8(value)
            .map_err(|_| WireError::malformed(WHAT, "parameter value is not UTF-8"))?;
        if name.starts_with("_pq_.") {
            protocol_options.push(name.to_owned());
            continue;
        }
        // A repeated name could be read one way here and another way upstream.
        if params.iter().any(|(k, _)| k == name) {
            return Err(WireError::malformed(WHAT, "parameter sent twice"));
        }
        params.push((name.to_owned(), value.to_owned()));
    }
    if !rest.is_empty() {
        return Err(WireError::malformed(WHAT, "bytes after the terminator"));
    }
    Ok(StartupMessage {
        minor,
        params,
        protocol_options,
    })
}

/// Splits off a NUL-terminated string (without the NUL); `None` when there is no NUL.
pub(crate) fn take_cstr<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    // memchr: SQL text is the long field here, and a byte loop was a visible share of
    // relaying a statement.
    let end = memchr::memchr(0, rest)?;
    let s = &rest[..end];
    *rest = &rest[end + 1..];
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn packet(code: u32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32((8 + body.len()) as i32);
        b.put_u32(code);
        b.put_slice(body);
        b
    }

    #[test]
    fn decodes_startup_with_params_and_protocol_options() {
        let mut b = packet(
            PROTOCOL_3_0 | 2,
            b"user\0alice\0database\0app\0_pq_.compression\0on\0\0",
        );
        let Some(StartupPacket::Startup(m)) = decode(&mut b).unwrap() else {
            panic!("not a startup message")
        };
        assert_eq!(m.minor, 2);
        assert_eq!(m.param("user"), Some("alice"));
        assert_eq!(m.param("database"), Some("app"));
        assert_eq!(m.protocol_options, vec!["_pq_.compression".to_string()]);
        assert!(b.is_empty());
    }

    #[test]
    fn waits_for_whole_packet() {
        let full = packet(PROTOCOL_3_0, b"user\0a\0\0");
        let mut b = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(decode(&mut b).unwrap(), None);
        b.extend_from_slice(&full[full.len() - 1..]);
        assert!(decode(&mut b).unwrap().is_some());
    }

    #[test]
    fn rejects_bad_lengths_and_shapes() {
        let mut tiny = BytesMut::from(&[0u8, 0, 0, 4, 0, 0, 0, 0][..]);
        assert!(decode(&mut tiny).is_err());
        let mut huge = BytesMut::from(&[0x7fu8, 0, 0, 0][..]);
        assert!(matches!(decode(&mut huge), Err(WireError::TooLarge { .. })));
        let mut neg = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(decode(&mut neg).is_err());
        let mut dup = packet(PROTOCOL_3_0, b"user\0a\0user\0b\0\0");
        assert!(decode(&mut dup).is_err());
        let mut unterminated = packet(PROTOCOL_3_0, b"user\0a");
        assert!(decode(&mut unterminated).is_err());
        let mut v2 = packet(2 << 16, b"\0");
        assert!(matches!(
            decode(&mut v2),
            Err(WireError::UnsupportedProtocol { major: 2, .. })
        ));
        let mut ssl_trailing = packet(SSL_REQUEST_CODE, b"x");
        assert!(decode(&mut ssl_trailing).is_err());
    }

    #[test]
    fn decodes_requests_and_cancel() {
        assert_eq!(
            decode(&mut packet(SSL_REQUEST_CODE, b"")).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(
            decode(&mut packet(GSSENC_REQUEST_CODE, b"")).unwrap(),
            Some(StartupPacket::GssEncRequest)
        );
        assert_eq!(
            decode(&mut packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 1, 2, 3, 4])).unwrap(),
            Some(StartupPacket::Cancel {
                pid: 7,
                secret: vec![1, 2, 3, 4]
            })
        );
    }
}
