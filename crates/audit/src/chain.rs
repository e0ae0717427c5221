//! The hash chain. A record's `hash` is SHA-256 — or HMAC-SHA-256 under the configured key —
//! over the record's own line as written, with the final `,"hash":"…"` member removed (so
//! the input ends `..."prev_hash":"<64 hex>"}`). Hashing the exact bytes rather than a
//! re-serialisation means any byte changed anywhere in a record is detected, and any
//! verifier can recompute it with a line of code in any language:
//! `line[:line.rindex(',"hash":"')] + "}"`. `hash` is always the last member: the writer
//! puts it there and string values cannot contain a bare `,"hash":"` because JSON escapes
//! their quotes.

use aws_lc_rs::digest;
use aws_lc_sys::{SHA256_Final, SHA256_Init, SHA256_Update, SHA256_CTX};

/// `prev_hash` of the very first record of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Length of the suffix `,"hash":"<64 hex>"}`.
const SUFFIX_LEN: usize = 9 + 64 + 2;

/// SHA-256's block size: the HMAC key pads are one block.
const BLOCK: usize = 64;

/// A SHA-256 computation in progress (aws-lc's `SHA256_CTX`: the chaining value and the
/// bytes of a partial block, plain data). Copying it forks the computation, which is how
/// the bytes every record of a session starts with are hashed once per session rather than
/// once per record: the writer continues a copy of the state after them (see
/// `writer::session`). Updates go through aws-lc's `SHA256_Update`, the same compression
/// functions (SHA-NI, AVX, …) as the `digest` API.
#[derive(Clone, Copy)]
pub(crate) struct HashState(SHA256_CTX);

impl HashState {
    fn new() -> Self {
        let mut ctx = std::mem::MaybeUninit::<SHA256_CTX>::uninit();
        // SAFETY: SHA256_Init initialises every field of the context it is given and
        // cannot fail (it always returns 1).
        let ctx = unsafe {
            SHA256_Init(ctx.as_mut_ptr());
            ctx.assume_init()
        };
        HashState(ctx)
    }

    /// Hashes `data` next.
    #[inline]
    pub(crate) fn update(&mut self, data: &[u8]) {
        // SAFETY: the context is initialised (every HashState is made by `new`) and `data`
        // is a valid slice; SHA256_Update reads exactly `len` bytes and cannot fail below
        // 2^61 bytes in total.
        unsafe {
            SHA256_Update(&mut self.0, data.as_ptr().cast(), data.len());
        }
    }

    fn finish(mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // SAFETY: `out` has room for the 32-byte digest; the context is initialised.
        unsafe {
            SHA256_Final(out.as_mut_ptr(), &mut self.0);
        }
        out
    }
}

/// How records are hashed: `alg` in `audit_start` and `rotate` records names it.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha256,
    /// HMAC-SHA-256 (RFC 2104) over the same states: `inner` has absorbed the key XOR
    /// ipad and `outer` the key XOR opad, so a keyed record costs two compressions more
    /// than a plain one and can be forked like one.
    Hmac {
        /// (`inner`, `outer`); boxed, the plain variant being empty.
        pads: Box<(HashState, HashState)>,
        id: String,
    },
}

impl Hasher {
    pub(crate) fn new(key: Option<&[u8]>) -> Self {
        let Some(k) = key else {
            return Hasher::Sha256;
        };
        // A key longer than a block is replaced by its digest; a shorter one is padded
        // with zeros (RFC 2104, as aws-lc's HMAC does).
        let mut padded = [0u8; BLOCK];
        if k.len() > BLOCK {
            let mut st = HashState::new();
            st.update(k);
            padded[..32].copy_from_slice(&st.finish());
        } else {
            padded[..k.len()].copy_from_slice(k);
        }
        let pad = |byte: u8| {
            let mut block = padded;
            for b in &mut block {
                *b ^= byte;
            }
            let mut st = HashState::new();
            st.update(&block);
            st
        };
        Hasher::Hmac {
            pads: Box::new((pad(0x36), pad(0x5c))),
            id: key_id(k),
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

    /// A computation with nothing hashed yet (for HMAC: the key's inner pad only).
    pub(crate) fn start(&self) -> HashState {
        match self {
            Hasher::Sha256 => HashState::new(),
            Hasher::Hmac { pads, .. } => pads.0,
        }
    }

    /// The hash (or HMAC) of everything `st` was given.
    pub(crate) fn finish(&self, st: HashState) -> [u8; 32] {
        let digest = st.finish();
        match self {
            Hasher::Sha256 => digest,
            Hasher::Hmac { pads, .. } => {
                let mut o = pads.1;
                o.update(&digest);
                o.finish()
            }
        }
    }

    /// Hash of `body` followed by a closing `}` (the record without its hash member).
    pub(crate) fn hash(&self, body: &[u8]) -> [u8; 32] {
        let mut st = self.start();
        st.update(body);
        st.update(b"}");
        self.finish(st)
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

/// The two lowercase hex digits of every byte value.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

/// The 64 lowercase hex digits of a digest (one table look-up per byte: this is on every
/// record's path).
pub(crate) fn hex_digest(digest: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (pair, &b) in out.chunks_exact_mut(2).zip(digest) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
    out
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
        assert_eq!(hex_digest(&Hasher::Sha256.hash(body)), h.as_bytes());
    }

    /// The forkable states compute exactly aws-lc's SHA-256 and HMAC-SHA-256, for keys
    /// shorter than, as long as and longer than a block, and any split of the input.
    #[test]
    fn states_match_aws_lc() {
        use aws_lc_rs::hmac;
        let msg: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 55, 56, 63, 64, 65, 128, 299] {
            let m = &msg[..len];
            let mut want = digest::Context::new(&digest::SHA256);
            want.update(m);
            want.update(b"}");
            assert_eq!(Hasher::Sha256.hash(m)[..], *want.finish().as_ref(), "{len}");
            for klen in [0, 1, 32, 63, 64, 65, 200] {
                let key: Vec<u8> = (0..klen).map(|i| (i * 13 + 1) as u8).collect();
                let h = Hasher::new(Some(&key));
                let k = hmac::Key::new(hmac::HMAC_SHA256, &key);
                let mut c = hmac::Context::with_key(&k);
                c.update(m);
                c.update(b"}");
                assert_eq!(h.hash(m)[..], *c.sign().as_ref(), "key {klen}, {len}");
                // Forked at every split point: the same result.
                for cut in [0, len / 3, len] {
                    let mut st = h.start();
                    st.update(&m[..cut]);
                    let fork = st;
                    let mut a = fork;
                    a.update(&m[cut..]);
                    a.update(b"}");
                    assert_eq!(h.finish(a), h.hash(m));
                }
            }
        }
    }
}
