//! Defence in depth against secrets in free text. The proxy never passes a token or a
//! password to the audit log, but SQL text, error messages and parameter values come from
//! clients and servers, and a client can paste its own access token into a query or run
//! `ALTER ROLE ... PASSWORD '...'`. These are replaced before a record is serialised.

use std::borrow::Cow;

/// What a JWT-looking string is replaced with.
pub const JWT_REDACTED: &str = "[REDACTED JWT]";
/// What the literal after `PASSWORD` is replaced with.
pub const PASSWORD_REDACTED: &str = "'[REDACTED]'";

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// Replaces JWTs (three base64url segments, the first starting `eyJ`, i.e. a JSON header)
/// and SQL `PASSWORD '...'` literals. Borrows when there is nothing to replace, which is
/// nearly always, so the common case costs one scan, eight bytes at a time.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let (jwt, pw) = suspects(text.as_bytes());
    if !jwt && !pw {
        return Cow::Borrowed(text);
    }
    let mut s = if jwt {
        scrub_jwts(text)
    } else {
        text.to_string()
    };
    if pw {
        s = scrub_passwords(&s);
    }
    Cow::Owned(s)
}

/// What may need scrubbing at `b[j]`: (a JWT starts there: `eyJ`, the keyword
/// `password` in any case starts there).
#[inline]
pub(crate) fn suspect_at(b: &[u8], j: usize) -> (bool, bool) {
    match b.get(j) {
        Some(b'e') => (b.get(j + 1..j + 3) == Some(b"yJ"), false),
        Some(b'p' | b'P') => (
            false,
            b.get(j..j + 8)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"password")),
        ),
        _ => (false, false),
    }
}

/// The byte positions of `word` (eight bytes, little-endian) that may start a secret:
/// a bit set at 0x80 of each byte that is `e`, `p` or `P` (and, rarely, of a byte just
/// above one: the word tests may mark a neighbour, never miss one).
#[inline]
pub(crate) fn candidates(word: u64) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zeros = |w: u64| w.wrapping_sub(LO) & !w & HI;
    // `| 0x20` folds `P` onto `p` (and nothing else onto it).
    zeros(word ^ (LO * u64::from(b'e'))) | zeros((word | (LO * 0x20)) ^ (LO * u64::from(b'p')))
}

/// (`text` contains `eyJ`, `text` contains `password` in any case), in one pass: eight
/// bytes at a time, looking closer only where an `e`, `p` or `P` is.
fn suspects(b: &[u8]) -> (bool, bool) {
    let (mut jwt, mut pw) = (false, false);
    let mut i = 0;
    while i < b.len() {
        let mut word = [b'_'; 8];
        let n = (b.len() - i).min(8);
        word[..n].copy_from_slice(&b[i..i + n]);
        let mut marks = candidates(u64::from_le_bytes(word));
        while marks != 0 {
            let j = i + (marks.trailing_zeros() / 8) as usize;
            marks &= marks - 1;
            let (a, p) = suspect_at(b, j);
            jwt |= a;
            pw |= p;
        }
        if jwt && pw {
            break;
        }
        i += 8;
    }
    (jwt, pw)
}

/// Length of a JWT starting at `b[i]` (which starts with `eyJ`), if it is one.
fn jwt_len(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    for seg in 0..3 {
        let start = j;
        while j < b.len() && is_b64url(b[j]) {
            j += 1;
        }
        // Header and payload must be non-empty; an unsigned token has an empty signature.
        if seg < 2 && j - start < 2 {
            return None;
        }
        if seg < 2 {
            if b.get(j) != Some(&b'.') {
                return None;
            }
            j += 1;
        }
    }
    Some(j - i)
}

fn scrub_jwts(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while let Some(off) = text[i..].find("eyJ") {
        let at = i + off;
        // Must start a token, not sit inside a longer base64 run.
        let boundary = at == 0 || !is_b64url(b[at - 1]);
        match jwt_len(b, at).filter(|_| boundary) {
            Some(n) => {
                out.push_str(&text[copied..at]);
                out.push_str(JWT_REDACTED);
                copied = at + n;
                i = copied;
            }
            None => i = at + 3,
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Replaces the string literal that follows the keyword PASSWORD (optionally ENCRYPTED
/// before it) in `CREATE/ALTER ROLE|USER`. Handles `''` escapes and E'' strings; the
/// keyword inside another word (e.g. a column `password_hash`) is left alone.
fn scrub_passwords(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i + 8 <= b.len() {
        let is_kw = b[i..i + 8].eq_ignore_ascii_case(b"password")
            && (i == 0 || !is_ident(b[i - 1]))
            && b.get(i + 8).is_none_or(|c| !is_ident(*c));
        if !is_kw {
            i += 1;
            continue;
        }
        let mut j = i + 8;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let lit_start = j;
        if j < b.len() && (b[j] == b'E' || b[j] == b'e') && b.get(j + 1) == Some(&b'\'') {
            j += 1;
        }
        if b.get(j) != Some(&b'\'') {
            i += 8;
            continue;
        }
        // Find the closing quote; '' is an escaped quote. An unterminated literal is
        // redacted to the end of the text.
        let mut k = j + 1;
        loop {
            match b.get(k) {
                None => break,
                Some(b'\'') if b.get(k + 1) == Some(&b'\'') => k += 2,
                Some(b'\'') => {
                    k += 1;
                    break;
                }
                Some(_) => k += 1,
            }
        }
        out.push_str(&text[copied..lit_start]);
        out.push_str(PASSWORD_REDACTED);
        copied = k;
        i = k;
    }
    out.push_str(&text[copied..]);
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// `serialize_with` helper: scrub a string field.
pub(crate) fn ser_str<S: serde::Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&scrub(v))
}

/// `serialize_with` helper: scrub an optional string field.
pub(crate) fn ser_opt<S: serde::Serializer, T: AsRef<str>>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&scrub(v.as_ref())),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJvaWQiOiIxMjMifQ.c2lnbmF0dXJl_-x";

    #[test]
    fn jwts_are_replaced() {
        let sql = format!("select '{TOKEN}' as t, 1");
        assert_eq!(scrub(&sql), "select '[REDACTED JWT]' as t, 1");
        assert_eq!(scrub(TOKEN), JWT_REDACTED);
        let two = format!("{TOKEN} and {TOKEN}.");
        assert_eq!(scrub(&two), "[REDACTED JWT] and [REDACTED JWT].");
        // An unsigned token (empty third segment) is still a token.
        assert_eq!(
            scrub("x eyJhbGciOiJub25lIn0.eyJhIjoxfQ. y"),
            "x [REDACTED JWT] y"
        );
    }

    #[test]
    fn lookalikes_are_kept() {
        for s in [
            "select 1",
            "eyJ alone",
            "eyJabc.only-two",
            "xeyJhbGciOiJub25lIn0.eyJhIjoxfQ.sig", // inside a longer run
            "select password_hash from users",
            "select * from t where passwords = 1",
        ] {
            assert!(matches!(scrub(s), Cow::Borrowed(_)) || scrub(s) == s, "{s}");
            assert_eq!(scrub(s), s);
        }
    }

    /// The one-pass scan finds exactly what the two substring searches found, wherever
    /// the words fall relative to its eight-byte steps.
    #[test]
    fn the_scan_finds_what_substring_search_finds() {
        let words = [
            "eyJ",
            "ey",
            "e",
            "yJ",
            "password",
            "PassWord",
            "passwor",
            "PASSWORD",
            "p",
            "P",
            "x",
            "é",
            " ",
            "eeyJ",
            "ppassword",
        ];
        let mut texts = Vec::new();
        for a in words {
            for b in words {
                for pad in 0..9 {
                    texts.push(format!("{}{a}{}{b}", "-".repeat(pad), "_".repeat(pad % 3)));
                }
            }
        }
        for t in &texts {
            let want = (
                t.contains("eyJ"),
                t.as_bytes()
                    .windows(8)
                    .any(|w| w.eq_ignore_ascii_case(b"password")),
            );
            assert_eq!(suspects(t.as_bytes()), want, "{t:?}");
        }
    }

    #[test]
    fn password_literals_are_replaced() {
        assert_eq!(
            scrub("ALTER ROLE bob WITH PASSWORD 'it''s secret' VALID UNTIL 'x'"),
            "ALTER ROLE bob WITH PASSWORD '[REDACTED]' VALID UNTIL 'x'"
        );
        assert_eq!(
            scrub("create user a encrypted password E'SCRAM-SHA-256$4096:abc'"),
            "create user a encrypted password '[REDACTED]'"
        );
        assert_eq!(
            scrub("alter user a password 'unterminated"),
            "alter user a password '[REDACTED]'"
        );
        assert_eq!(
            scrub("alter user a password null"),
            "alter user a password null"
        );
    }
}
