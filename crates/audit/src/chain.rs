//! The hash chain. A record's `hash` is SHA-256 — or HMAC-SHA-256 under the configured key —
//! over the record's own line as written, with the final `,"hash":"…"` member removed (so
//! the input ends `..."prev_hash":"<64 hex>"}`). Hashing the exact bytes rather than a
//! re-serialisation means any byte changed anywhere in a record is detected, and any
//! verifier can recompute it with a line of code in any language:
//! `line[:line.rindex(',"hash":"')] + "}"`. `hash` is always the last member: the writer
//! puts it there and string values cannot contain a bare `,"hash":"` because JSON escapes
//! their quotes.

use aws_lc_rs::{digest, hmac};

/// `prev_hash` of the very first record of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Length of the suffix `,"hash":"<64 hex>"}`.
const SUFFIX_LEN: usize = 9 + 64 + 2;

/// How records are hashed: `alg` in `audit_start` and `rotate` records names it.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha256,
    // Boxed: the key schedule is over 1 KiB and the plain variant is empty.
    Hmac { key: Box<hmac::Key>, id: String },
}

impl Hasher {
    pub(crate) fn new(key: Option<&[u8]>) -> Self {
        match key {
            None => Hasher::Sha256,
            Some(k) => Hasher::Hmac {
                key: Box::new(hmac::Key::new(hmac::HMAC_SHA256, k)),
                id: key_id(k),
            },
        }
    }

    pub(crate) fn alg(&self) -> &'static str {
        match self {
            Hasher::Sha256 => "sha256",
            Hasher::Hmac { .. } => "hmac-sha256",
        }
    }

    pub(crate) fn key_id(&self) -> Option<&str> {
        match self {
            Hasher::Sha256 => None,
            Hasher::Hmac { id, .. } => Some(id),
        }
    }

    /// Hash of `body` followed by a closing `}` (the record without its hash member).
    pub(crate) fn hash(&self, body: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        match self {
            Hasher::Sha256 => {
                let mut c = digest::Context::new(&digest::SHA256);
                c.update(body);
                c.update(b"}");
                out.copy_from_slice(c.finish().as_ref());
            }
            Hasher::Hmac { key, .. } => {
                let mut c = hmac::Context::with_key(key);
                c.update(body);
                c.update(b"}");
                out.copy_from_slice(c.sign().as_ref());
            }
        }
        out
    }
}

/// A short public name for a key, so `verify` can say "written with another key" instead
/// of flagging every record. A hash of a high-entropy key reveals nothing usable.
pub(crate) fn key_id(key: &[u8]) -> String {
    let mut c = digest::Context::new(&digest::SHA256);
    c.update(b"pgward-audit-key-id\0");
    c.update(key);
    hex(&c.finish().as_ref()[..8])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

pub(crate) fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
}

pub(crate) fn push_hex_bytes(v: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        v.push(HEX[usize::from(b >> 4)]);
        v.push(HEX[usize::from(b & 15)]);
    }
}

/// Splits a line (without its newline) into the hashed part (everything before
/// `,"hash":"`) and the stored hex hash. `None` if the line does not end in a hash member.
pub(crate) fn split_line(line: &[u8]) -> Option<(&[u8], &str)> {
    if line.len() < SUFFIX_LEN + 2 {
        return None;
    }
    let cut = line.len() - SUFFIX_LEN;
    let (body, suffix) = line.split_at(cut);
    let hex = suffix.strip_prefix(b",\"hash\":\"")?.strip_suffix(b"\"}")?;
    if !hex
        .iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    {
        return None;
    }
    Some((body, std::str::from_utf8(hex).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_hash() {
        let body = br#"{"v":1,"seq":1,"prev_hash":"00"#;
        let h = hex(&Hasher::Sha256.hash(body));
        let line = format!("{},\"hash\":\"{h}\"}}", std::str::from_utf8(body).unwrap());
        let (b, got) = split_line(line.as_bytes()).unwrap();
        assert_eq!(b, body);
        assert_eq!(got, h);
        assert!(split_line(b"{}").is_none());
        // HMAC differs from plain SHA-256 and depends on the key.
        let k1 = Hasher::new(Some(b"k1"));
        assert_ne!(k1.hash(body), Hasher::Sha256.hash(body));
        assert_ne!(k1.hash(body), Hasher::new(Some(b"k2")).hash(body));
        assert_eq!(key_id(b"k1").len(), 16);
    }
}
