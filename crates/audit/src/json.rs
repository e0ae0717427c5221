//! JSON written by hand where serde's and core::fmt's generic machinery cost more than
//! the rest of the work: the frame of every record (`seq`), the members of a statement
//! record, strings (escaped and scrubbed as serde_json escapes them), and witness
//! checkpoints. A leaf module, so the schema ([`crate::event`]), the writer and
//! the witness can all use it without depending on each other.

/// The two decimal digits of 0..100.
static DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut t = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// Appends `n` in decimal (two digits per division: `seq`, durations and row counts are
/// on every record's path).
// `inline`: every record's frame calls it from another module (`Writer::seal`), where it
// used to be inlined while both were in one file; measured with examples/append_cost.
#[inline]
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n >= 100 {
        i -= 2;
        digits[i..i + 2].copy_from_slice(&DIGIT_PAIRS[(n % 100) as usize]);
        n /= 100;
    }
    if n >= 10 {
        i -= 2;
        digits[i..i + 2].copy_from_slice(&DIGIT_PAIRS[n as usize]);
    } else {
        i -= 1;
        digits[i] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[i..]);
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `w` is zero (the classic SWAR test: exact, no false positives).
/// With [`has_control`], the reference the combined [`word_needs_escape`] is tested against.
#[cfg(test)]
fn has_zero(w: u64) -> bool {
    w.wrapping_sub(LO) & !w & HI != 0
}

/// Whether any byte of `w` is below 0x20.
#[cfg(test)]
fn has_control(w: u64) -> bool {
    // Exact for thresholds up to 0x80: a byte b < 0x20 borrows into its high bit, and a
    // byte with its high bit set is masked out by `!w`.
    w.wrapping_sub(LO * 0x20) & !w & HI != 0
}

/// Whether JSON must escape some byte of `w`: `"`, `\` or a control character (the three
/// tests of [`has_control`] and [`has_zero`] at once, without branches).
#[inline]
fn word_needs_escape(w: u64) -> bool {
    let zeros = |v: u64| v.wrapping_sub(LO) & !v;
    let control = w.wrapping_sub(LO * 0x20) & !w;
    (control | zeros(w ^ (LO * u64::from(b'"'))) | zeros(w ^ (LO * u64::from(b'\\')))) & HI != 0
}

/// The eight bytes of `b` from `i` as a word, padded with `_` (which nothing looks for).
#[inline]
fn word_at(b: &[u8], i: usize) -> u64 {
    match b.get(i..i + 8) {
        Some(w) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            u64::from_le_bytes(a)
        }
        None => {
            let mut a = [b'_'; 8];
            a[..b.len() - i].copy_from_slice(&b[i..]);
            u64::from_le_bytes(a)
        }
    }
}

/// Whether JSON must escape some byte of `s`: `"`, `\` or a control character.
fn needs_escape(b: &[u8]) -> bool {
    (0..b.len())
        .step_by(8)
        .any(|i| word_needs_escape(word_at(b, i)))
}

/// Appends `s` as a JSON string, byte for byte what serde_json writes: `"` and `\`
/// escaped, `\b \t \n \f \r` for those controls and `\u00xx` (lowercase hex) for the other
/// ones below 0x20; everything else, DEL and non-ASCII included, as it is. The common
/// case (nothing to escape) is one scan eight bytes at a time and one copy.
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    push_escaped(out, s.as_bytes(), needs_escape(s.as_bytes()));
}

/// [`push_str`] of text already scanned: `escape` says whether anything needs escaping.
fn push_escaped(out: &mut Vec<u8>, b: &[u8], escape: bool) {
    out.reserve(b.len() + 2);
    out.push(b'"');
    if !escape {
        out.extend_from_slice(b);
        out.push(b'"');
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        start = i + 1;
        if short == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 15)]);
        } else {
            out.push(b'\\');
            out.push(short);
        }
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Appends `s` as a JSON string after scrubbing secrets from it: exactly
/// `push_str(out, &scrub(s))`, with the usual text (nothing to scrub) scanned once, eight
/// bytes at a time, for both what to scrub and what to escape.
pub(crate) fn push_scrubbed(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let mut escape = false;
    let mut i = 0;
    while i < b.len() {
        let w = word_at(b, i);
        escape |= word_needs_escape(w);
        let mut marks = crate::scrub::candidates(w);
        while marks != 0 {
            let j = i + (marks.trailing_zeros() / 8) as usize;
            marks &= marks - 1;
            if crate::scrub::suspect_at(b, j) != (false, false) {
                push_str(out, &crate::scrub::scrub(s));
                return;
            }
        }
        i += 8;
    }
    push_escaped(out, b, escape);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value, in every position of an eight-byte word, and the strings the
    /// audit records carry: escaped exactly as serde_json escapes them.
    #[test]
    fn strings_are_escaped_as_serde_escapes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;".into(),
            "say \"hi\" \\ bye".into(),
            "tab\there\nnew line\r\u{8}\u{c}\u{0}\u{1f}\u{7f}".into(),
            "naïve café 日本語 🙂 \u{2028}\u{2029}".into(),
            "\\\\\"\"".into(),
            "x".repeat(100),
        ];
        for c in 0u8..=0x7f {
            for pos in 0..9 {
                let mut s = "abcdefgh".to_string();
                s.insert(pos, char::from(c));
                cases.push(s);
            }
        }
        for s in &cases {
            let mut ours = b"[".to_vec();
            push_str(&mut ours, s);
            let mut theirs = b"[".to_vec();
            serde_json::to_writer(&mut theirs, s).unwrap();
            assert_eq!(ours, theirs, "{s:?}");
        }
    }

    /// Scrubbing and escaping in one pass writes what scrubbing then escaping writes, for
    /// secrets at every offset from the eight-byte steps and text that needs escaping.
    #[test]
    fn scrubbed_strings_are_what_serde_writes_for_the_scrubbed_text() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let mut cases = Vec::new();
        for pad in 0..10 {
            let p = " ".repeat(pad);
            cases.push(format!("{p}{jwt}"));
            cases.push(format!("{p}select '{jwt}' as \"t\"\n"));
            cases.push(format!("{p}ALTER ROLE a PASSWORD 'sécret\\' -- \t"));
            cases.push(format!("{p}alter role a password"));
            cases.push(format!("{p}passwor eyJ ey e p P é \u{1}"));
            cases.push(format!("{p}select password_hash, \"eyJx\" from t"));
        }
        for s in &cases {
            let mut ours = Vec::new();
            push_scrubbed(&mut ours, s);
            let theirs = serde_json::to_vec(&crate::scrub::scrub(s)).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
            assert!(!String::from_utf8_lossy(&ours).contains(jwt), "{s}");
            assert!(!String::from_utf8_lossy(&ours).contains("sécret"), "{s}");
        }
    }

    #[test]
    fn decimals() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            12345,
            4_294_967_296,
            u64::MAX,
        ] {
            let mut v = Vec::new();
            push_decimal(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
        }
    }

    #[test]
    fn the_word_tests_are_exact() {
        for b in 0u8..=255 {
            for pos in 0..8 {
                let mut bytes = [b'a'; 8];
                bytes[pos] = b;
                let w = u64::from_le_bytes(bytes);
                assert_eq!(has_control(w), b < 0x20, "{b}");
                assert_eq!(has_zero(w ^ (LO * u64::from(b'"'))), b == b'"', "{b}");
                let escape = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(word_needs_escape(w), escape, "{b} at {pos}");
            }
        }
    }
}
