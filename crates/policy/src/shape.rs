//! The *shape* of a statement: its text with every numeric constant replaced by a
//! placeholder, the key under which statements that differ only in numeric constants
//! (`WHERE aid = 42`, `WHERE aid = 43`) share one cached decision (see `cache.rs` and
//! `shape_safe` there for which decisions may be shared).
//!
//! Two ways to find the constants:
//!
//! * [`fast_shape_into`], a hand-written one-pass scanner for the common case (plain ASCII SQL
//!   with standard strings, quoted identifiers, comments and parameters). It models the
//!   parts of PostgreSQL's lexer (src/backend/parser/scan.l) that decide where code, strings,
//!   quoted identifiers and comments begin and end, and returns `None` on anything it does
//!   not model exactly.
//! * [`scanner_shape`], PostgreSQL's own scanner through pg_query: slower (it allocates,
//!   scans every keyword and round-trips the tokens through protobuf), used for texts the
//!   fast scanner declines and to check the fast scanner whenever a shape entry is stored.
//!
//! The two key spaces are kept apart by a tag after the leading NUL (`F` / `S`), so a lookup
//! by a fast shape can only find an entry stored for a statement whose fast shape was
//! checked against PostgreSQL's scanner (see [`fast_shape_into`] for why that makes a hit sound).
//!
//! # Encoding
//!
//! A shape is `NUL tag body`, where the body is the statement's text with each numeric
//! constant replaced by `NUL i` (an integer PostgreSQL reads as ICONST) or `NUL f` (FCONST:
//! a decimal, an exponent, or an integer beyond int4). Protocol strings cannot contain NUL
//! and both scanners refuse a text that does, so a shape can never equal a statement's text,
//! and it is injective: splitting the body at its NULs gives back the exact text between
//! the constants, and each constant's class.

/// Texts longer than this have no shape (neither scanner runs): the hot path is short
/// statements, and a shape entry of a long text is unlikely to be hit again.
pub(crate) const MAX_SHAPED_BYTES: usize = 4096;

/// Tag of shapes from [`fast_shape_into`].
const FAST: u8 = b'F';
/// Tag of shapes from [`scanner_shape`].
const SCANNER: u8 = b'S';

/// Bytes of a shape before its body.
const HEADER: usize = 2;

// Byte classes of the scanner's dispatch (`CLASS`).
/// Anything the scanner does not model: it declines the text.
const OTHER: u8 = 0;
const SPACE: u8 = 1;
/// Operator and punctuation characters but `.`, `-`, `/` (scan.l's `self` and `op_chars`).
const PUNCT: u8 = 2;
const IDENT: u8 = 3;
const DIGIT: u8 = 4;
const DOT: u8 = 5;
const DASH: u8 = 6;
const SLASH: u8 = 7;
const QUOTE: u8 = 8;
const DOLLAR: u8 = 9;

const fn class_table() -> [u8; 256] {
    let mut t = [OTHER; 256];
    let mut b = 0;
    while b < 128 {
        t[b] = match b as u8 {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => SPACE,
            b',' | b'(' | b')' | b'[' | b']' | b';' | b':' | b'+' | b'*' | b'%' | b'^' | b'<'
            | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'&' | b'|' | b'`' | b'?' => PUNCT,
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => IDENT,
            b'0'..=b'9' => DIGIT,
            b'.' => DOT,
            b'-' => DASH,
            b'/' => SLASH,
            b'\'' | b'"' => QUOTE,
            b'$' => DOLLAR,
            _ => OTHER,
        };
        b += 1;
    }
    t
}

static CLASS: [u8; 256] = class_table();

/// Whether a byte may stand next to a number: whitespace, and the operator and punctuation
/// characters other than `.`. Each ends every token PostgreSQL's lexer could be reading
/// when it is followed by a digit or `.`, and none can continue a numeric literal in any
/// version (PostgreSQL 16 added `_`, `0x`, `0o` and `0b`; older versions read a letter after
/// digits as a new token, newer ones as an error).
fn number_neighbour(b: u8) -> bool {
    matches!(CLASS[usize::from(b)], SPACE | PUNCT | DASH | SLASH)
}

fn ident_cont(b: u8) -> bool {
    IDENT_CONT[usize::from(b)]
}

static IDENT_CONT: [bool; 256] = {
    let class = class_table();
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = matches!(class[b], IDENT | DIGIT | DOLLAR);
        b += 1;
    }
    t
};

/// Whether a bare run of decimal digits is an int4 (PostgreSQL reads it as ICONST, else as
/// FCONST; every version from 11 to 17 decides this the same way for plain digits).
fn fits_int4(digits: &[u8]) -> bool {
    let first = digits
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(digits.len());
    let digits = &digits[first..];
    digits.len() < 10 || (digits.len() == 10 && digits <= b"2147483647".as_slice())
}

/// A byte inside a string, quoted identifier or comment: any ASCII byte but NUL (control
/// characters are plain content there) and backslash (an escape in `E''` strings and with
/// standard_conforming_strings off); no non-ASCII byte.
fn plain_byte(b: u8) -> bool {
    b != 0 && b != b'\\' && b.is_ascii()
}

/// Calls `number(start, end, is_int)` for each numeric constant of `sql`, in order, or
/// returns `None` (having perhaps called it for some) when the text holds anything this
/// scanner does not model exactly as PostgreSQL 11–17 all lex it:
///
/// * any byte outside printable ASCII and `\t \n \r \f` (non-ASCII, NUL, `\v`, which only
///   PostgreSQL 16+ reads as a space), and any backslash (it escapes in `E''` strings and,
///   with standard_conforming_strings off, in plain ones);
/// * `$` other than a parameter `$n`: dollar quotes;
/// * an identifier directly followed by `'` (`E''`, `B''`, `X''`, `N''` strings, and
///   `typename'literal'`), or `U`/`u` directly followed by `&` (`U&''`, `U&""`);
/// * an unterminated string, quoted identifier or comment, and an empty quoted identifier;
/// * a number that is not `digits [. digits] [e [+-] digits]` or `. digits [e [+-] digits]`,
///   or that is preceded or followed by anything but whitespace or an operator or
///   punctuation character other than `.` (so `x1`, `$1.5`, `1.5.`, `1..2`, `0x1F`, `1_000`,
///   `123abc`, `1e`, `1'a'` all decline).
///
/// Block comments nest as in scan.l (`/*` inside one opens another, `*/` closes one).
fn scan_numbers(sql: &[u8], mut number: impl FnMut(usize, usize, bool)) -> Option<()> {
    let n = sql.len();
    // The byte at `i`, NUL past the end (a real NUL declines wherever it is met).
    let at = |i: usize| sql.get(i).copied().unwrap_or(0);
    let mut i = 0;
    while i < n {
        let b = sql[i];
        match CLASS[usize::from(b)] {
            SPACE | PUNCT => i += 1,
            IDENT => {
                let start = i;
                i += 1;
                i += sql[i..].iter().take_while(|&&c| ident_cont(c)).count();
                match at(i) {
                    b'\'' => return None,
                    b'&' if i == start + 1 && (b == b'u' || b == b'U') => return None,
                    _ => {}
                }
            }
            DIGIT => i = scan_number(sql, i, &mut number)?,
            DOT if at(i + 1).is_ascii_digit() => i = scan_number(sql, i, &mut number)?,
            DASH if at(i + 1) == b'-' => {
                // `--` comment, to the end of the line.
                i += 2;
                while i < n {
                    match sql[i] {
                        b'\n' | b'\r' => break,
                        c if plain_byte(c) => i += 1,
                        _ => return None,
                    }
                }
            }
            SLASH if at(i + 1) == b'*' => {
                i += 2;
                let mut depth = 0usize;
                loop {
                    match at(i) {
                        b'/' if at(i + 1) == b'*' => {
                            depth += 1;
                            i += 2;
                        }
                        b'*' if at(i + 1) == b'/' => {
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                            depth -= 1;
                        }
                        c if plain_byte(c) => i += 1,
                        _ => return None, // unterminated, or a byte it declines
                    }
                }
            }
            DOT | DASH | SLASH => i += 1,
            QUOTE => {
                // A standard string or a quoted identifier; a doubled quote is one quote.
                let start = i;
                i += 1;
                loop {
                    match at(i) {
                        c if c == b => {
                            if at(i + 1) != b {
                                i += 1;
                                break;
                            }
                            i += 2;
                        }
                        c if plain_byte(c) => i += 1,
                        _ => return None, // unterminated, or a byte it declines
                    }
                }
                if b == b'"' && i == start + 2 {
                    return None; // zero-length delimited identifier: an error
                }
            }
            DOLLAR => {
                // A parameter `$n`; anything else here is a dollar quote (or an error).
                i += 1;
                let digits = i;
                while at(i).is_ascii_digit() {
                    i += 1;
                }
                if i == digits || ident_cont(at(i)) {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(())
}

/// Reads the number starting at `start` (a digit, or `.` before a digit), reports it, and
/// returns where it ends; `None` when it is not in the strict grammar or has a neighbour
/// other than whitespace or an operator or punctuation character.
fn scan_number(
    sql: &[u8],
    start: usize,
    number: &mut impl FnMut(usize, usize, bool),
) -> Option<usize> {
    if start > 0 && !number_neighbour(sql[start - 1]) {
        return None;
    }
    let at = |i: usize| sql.get(i).copied().unwrap_or(0);
    let digits = |mut i: usize| {
        while at(i).is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = digits(start);
    let mut int = true;
    if at(i) == b'.' {
        int = false;
        i = digits(i + 1);
    }
    if at(i) == b'e' || at(i) == b'E' {
        let sign = usize::from(at(i + 1) == b'+' || at(i + 1) == b'-');
        if !at(i + 1 + sign).is_ascii_digit() {
            return None; // `1e`, `1e+`: a letter after the number
        }
        int = false;
        i = digits(i + 1 + sign);
    }
    if i < sql.len() && !number_neighbour(sql[i]) {
        return None;
    }
    number(start, i, int && fits_int4(&sql[start..i]));
    Some(i)
}

/// Appends `sql` to `out` with each `(start, end, is_int)` span replaced by its placeholder.
fn push_replaced(out: &mut String, sql: &str, copied: &mut usize, (start, end, int): Span) {
    out.push_str(&sql[*copied..start]);
    out.push_str(if int { "\0i" } else { "\0f" });
    *copied = end;
}

type Span = (usize, usize, bool);

/// [`fast_shape_into`] into a new string.
#[cfg(test)]
pub(crate) fn fast_shape(sql: &str) -> Option<String> {
    let mut out = String::new();
    fast_shape_into(sql, &mut out).then_some(out)
}

/// Writes the shape of `sql` by the fast scanner into `out` (cleared first, so the hot path
/// reuses one buffer) and returns true; false (and `out` empty) when it has no numeric
/// constant, is longer than [`MAX_SHAPED_BYTES`], or holds anything the scanner declines
/// (see `scan_numbers`).
///
/// # Why a hit by another text is sound
///
/// An entry is stored under a fast shape `S` only for a statement `T1` whose fast shape and
/// PostgreSQL's scanner's shape ([`scanner_shape`]'s body) are both `S` (`cache.rs` checks
/// this on every insertion). Let `T2` be another text with fast shape `S`. As the encoding
/// is injective, `T2` is `T1` with each numeric span `N_k` replaced by a span `M_k` at the
/// same place between identical text, of the same class (ICONST/FCONST), and both are in the
/// strict grammar above with the same neighbours. PostgreSQL's lexer reads left to right, its
/// state at any point depending only on the text before it and the longest match there:
///
/// * Up to the first span the texts are identical. In `T1` a numeric token starts at the
///   span (the scanner said so), so the lexer is in its initial state there and the token
///   before it ended there. That token ends in a neighbour character (whitespace, an
///   operator or punctuation character, not `.`), and no rule of scan.l lets a token whose
///   last character is one of these continue with a digit or `.` (operators hold only
///   operator characters; a `--` comment that reached the span would have gone on through
///   the digits in `T1` too). So in `T2` as well, a new token starts at the span, in the
///   initial state.
/// * From the initial state, `M_k` followed by a neighbour character is read as exactly one
///   numeric token in every version: it is a plain integer, decimal or exponent form, and
///   the character after it can extend no numeric rule (nor trigger the `1..`, `1e`,
///   trailing-junk, underscore or `0x` rules, which all need a `.`, letter, `_` or digit
///   next). The token's class follows from its form alone (`fits_int4`), as in `T1`.
/// * After the span both lexers are in the initial state before identical text, up to the
///   next span, where the same holds again.
///
/// So the server lexes `T2` as `T1`'s token sequence with only the values (not the classes)
/// of numeric constants changed, and the grammar builds the same tree with other constant
/// values; `shape_safe` (cache.rs) admits only decisions that do not read constant values.
/// (A few values make the grammar itself refuse the statement, `float(0)` for one: such a
/// text gets its shape's decision, and the server then refuses it at parse, so nothing runs.
/// The scanner-shape path had the same property.)
pub(crate) fn fast_shape_into(sql: &str, out: &mut String) -> bool {
    out.clear();
    if sql.len() > MAX_SHAPED_BYTES {
        return false;
    }
    let mut copied = 0;
    let scanned = scan_numbers(sql.as_bytes(), |start, end, int| {
        if out.is_empty() {
            out.reserve(sql.len() + 16);
            out.push('\0');
            out.push(char::from(FAST));
        }
        push_replaced(out, sql, &mut copied, (start, end, int));
    });
    if scanned.is_none() || out.is_empty() {
        out.clear();
        return false;
    }
    out.push_str(&sql[copied..]);
    true
}

/// The shape of `sql` by PostgreSQL's own scanner (pg_query), tagged apart from fast
/// shapes: `None` when it has no numeric constant, is longer than [`MAX_SHAPED_BYTES`],
/// contains NUL, or does not scan.
pub(crate) fn scanner_shape(sql: &str) -> Option<String> {
    scanner_shape_tagged(sql, SCANNER)
}

/// Whether `fast` (a shape from [`fast_shape_into`] for `sql`) is what PostgreSQL's scanner finds
/// in `sql`: the same constants at the same places, of the same classes.
pub(crate) fn fast_shape_verified(sql: &str, fast: &str) -> bool {
    scanner_shape_tagged(sql, FAST).is_some_and(|s| s == fast)
}

/// Whether `shape` came from [`fast_shape_into`] (and so must be verified before it is stored).
pub(crate) fn is_fast(shape: &str) -> bool {
    shape.as_bytes().get(1) == Some(&FAST)
}

fn scanner_shape_tagged(sql: &str, tag: u8) -> Option<String> {
    const ICONST: i32 = pg_query::protobuf::Token::Iconst as i32;
    const FCONST: i32 = pg_query::protobuf::Token::Fconst as i32;
    if sql.len() > MAX_SHAPED_BYTES
        || sql.contains('\0')
        || !sql.bytes().any(|b| b.is_ascii_digit())
    {
        return None;
    }
    let scanned = pg_query::scan(sql).ok()?;
    let mut out = String::with_capacity(sql.len() + HEADER + 8);
    out.push('\0');
    out.push(char::from(tag));
    let mut copied = 0;
    for t in &scanned.tokens {
        if t.token != ICONST && t.token != FCONST {
            continue;
        }
        let (start, end) = (usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?);
        if start < copied
            || end > sql.len()
            || !sql.is_char_boundary(start)
            || !sql.is_char_boundary(end)
        {
            return None;
        }
        push_replaced(&mut out, sql, &mut copied, (start, end, t.token == ICONST));
    }
    if out.len() == HEADER {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast shape's body, with placeholders shown as `#i` / `#f`.
    fn fast(sql: &str) -> Option<String> {
        let s = fast_shape(sql)?;
        assert!(is_fast(&s));
        Some(s[HEADER..].replace("\0i", "#i").replace("\0f", "#f"))
    }

    /// PostgreSQL's scanner's shape body, shown the same way.
    fn scanner(sql: &str) -> Option<String> {
        let s = scanner_shape(sql)?;
        assert!(!is_fast(&s));
        Some(s[HEADER..].replace("\0i", "#i").replace("\0f", "#f"))
    }

    /// The fast scanner either declines or agrees with PostgreSQL's.
    fn agrees(sql: &str) {
        if let Some(f) = fast_shape(sql) {
            assert!(
                fast_shape_verified(sql, &f),
                "fast shape of {sql:?} is {f:?}"
            );
        }
    }

    #[test]
    fn numbers_in_code_are_replaced_with_their_class() {
        for (sql, want) in [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 4217;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = #i;",
            ),
            ("SELECT 1", "SELECT #i"),
            (
                "SELECT 1.5, .5, 1., 1e5, 1E-5, 1.5e+3",
                "SELECT #f, #f, #f, #f, #f, #f",
            ),
            ("SELECT 2147483647, 2147483648", "SELECT #i, #f"),
            ("SELECT 0002147483647, 00000000000", "SELECT #i, #i"),
            ("SELECT 99999999999999999999", "SELECT #f"),
            (
                "SELECT -1, +2, 3-4, 5::int, (6), a[7], a[8:9]",
                "SELECT -#i, +#i, #i-#i, #i::int, (#i), a[#i], a[#i:#i]",
            ),
            ("SELECT 1 --x\n", "SELECT #i --x\n"),
            ("SELECT 1--x", "SELECT #i--x"),
            ("SELECT 1/*x*/", "SELECT #i/*x*/"),
            ("SELECT/**/1", "SELECT/**/#i"),
            ("SELECT x -- 1\n + 2", "SELECT x -- 1\n + #i"),
            (
                "SELECT '42', \"t1\", $1, x2, 3",
                "SELECT '42', \"t1\", $1, x2, #i",
            ),
            (
                "SELECT 'it''s 1', \"a\"\"1\", 2",
                "SELECT 'it''s 1', \"a\"\"1\", #i",
            ),
            ("SELECT /* /* 1 */ 2 */ 3", "SELECT /* /* 1 */ 2 */ #i"),
            (
                "SELECT /* **/ 1 /*/ 2 */ */ 3",
                "SELECT /* **/ #i /*/ 2 */ */ #i",
            ),
            ("SELECT 'a'\n'1' , 2", "SELECT 'a'\n'1' , #i"),
            ("SELECT x$1 + 2", "SELECT x$1 + #i"),
            (
                "SELECT 1<>2, 3>=4, 5!=6, 7||8, 9#10",
                "SELECT #i<>#i, #i>=#i, #i!=#i, #i||#i, #i##i",
            ),
            ("SELECT t.a .. 1", "SELECT t.a .. #i"),
            ("\tSELECT\r\n1\x0c", "\tSELECT\r\n#i\x0c"),
        ] {
            assert_eq!(fast(sql).as_deref(), Some(want), "{sql:?}");
            assert_eq!(scanner(sql).as_deref(), Some(want), "{sql:?}");
            agrees(sql);
        }
    }

    #[test]
    fn texts_without_numbers_have_no_shape() {
        for sql in [
            "SELECT * FROM t",
            "SELECT '1', \"2\", x3, $4",
            "SELECT -- 1\n x",
            "SELECT /* 1 */ x",
            "SELECT /* /* 1 */ 2 */ x",
            "",
        ] {
            assert_eq!(fast(sql), None, "{sql:?}");
            assert_eq!(scanner(sql), None, "{sql:?}");
        }
    }

    #[test]
    fn what_is_not_modelled_is_declined() {
        for sql in [
            // Prefixed and escaped strings, dollar quotes, backslashes.
            "SELECT E'\\'' , 1",
            "SELECT E'\\' 1'",
            "SELECT e'x', 1",
            "SELECT B'101', 1",
            "SELECT X'1F', 1",
            "SELECT N'x', 1",
            "SELECT U&'\\0031', 1",
            "SELECT U&\"x\", 1",
            "SELECT u&'x', 1",
            "SELECT date'2020-01-01', 1",
            "SELECT $$ 1 $$, 2",
            "SELECT $a$ 1 $a$, 2",
            "SELECT $, 1",
            "SELECT '\\', 1",
            "SELECT 1 -- \\\n",
            "SELECT \\x 1",
            // Numbers PostgreSQL versions read differently, or as errors.
            "SELECT 0x1F",
            "SELECT 0o17",
            "SELECT 0b101",
            "SELECT 1_000",
            "SELECT 123abc",
            "SELECT 1e",
            "SELECT 1e+",
            "SELECT 1ea",
            "SELECT 1.5e",
            "SELECT 1..2",
            "SELECT 1.5.5",
            "SELECT 1.a",
            "SELECT 1$",
            "SELECT 1'a'",
            "SELECT 1\"a\"",
            // Numbers after an identifier character, a parameter or a dot.
            "SELECT t.1",
            "SELECT $1.5",
            "SELECT $1a, 2",
            "SELECT 'a'1",
            "SELECT \"a\"1",
            // Non-ASCII, NUL, \v, other control characters and odd bytes.
            "SELECT 'é', 1",
            "SELECT é, 1",
            "SELECT 1 -- é\n",
            "SELECT 1\0",
            "SELECT\x0b1",
            "SELECT\x011",
            "SELECT {1}",
            "SELECT 1\x7f",
            // Unterminated or empty.
            "SELECT 'x, 1",
            "SELECT \"x, 1",
            "SELECT 1 /* x",
            "SELECT 1 /* /* x */",
            "SELECT \"\", 1",
        ] {
            assert_eq!(fast(sql), None, "{sql:?}");
        }
    }

    #[test]
    fn shapes_never_collide_with_texts_or_each_other() {
        // The scanner's shape of a text it can read is in its own key space.
        let sql = "SELECT 1, E'x'";
        assert_eq!(fast_shape(sql), None);
        let s = scanner_shape(sql).unwrap_or_default();
        assert_eq!(s, "\0SSELECT \0i, E'x'");
        // Integer and float constants have different shapes.
        assert_ne!(fast_shape("SELECT 1"), fast_shape("SELECT 1.0"));
        assert_ne!(fast_shape("SELECT 1"), fast_shape("SELECT 9999999999"));
        assert_eq!(fast_shape("SELECT 1"), fast_shape("SELECT 2147483647"));
        // Verification compares places and classes.
        assert!(fast_shape_verified("SELECT 1", "\0FSELECT \0i"));
        assert!(!fast_shape_verified("SELECT 1", "\0FSELECT \0f"));
        assert!(!fast_shape_verified("SELECT 1", "\0SSELECT \0i"));
        assert!(!fast_shape_verified("SELECT 1 ", "\0FSELECT \0i"));
        // A `0` in the text is not a placeholder.
        assert_ne!(fast_shape("SELECT 5, '0'"), fast_shape("SELECT 5, 0"));
    }

    #[test]
    fn long_texts_have_no_shape() {
        let long = format!("SELECT 1 {}", " ".repeat(MAX_SHAPED_BYTES));
        assert_eq!(fast_shape(&long), None);
        assert_eq!(scanner_shape(&long), None);
    }

    #[test]
    fn every_prefix_of_tricky_texts_declines_or_agrees() {
        let texts = [
            "SELECT /* /* 1 */ 2 */ 3, '4''5', \"6\"\"7\", $8, x9 -- 10\n, 11.5e-3, .5, 1., 2147483648",
            "SELECT 1..2, 1.5.5, 0x1F, 1_000, 123abc, 1e, t.1, $1.5",
            "SELECT 1 */ 2 /* 3 */ 4 /*/ 5 */ 6 **/ 7 */ 8",
            "SELECT a-1, a--1\n, a/1, a/*1*/2, a+-1, a*-1.5, a<=-.5, a::int[2]",
            "SELECT E'\\'' 1, U&'x' 2, $$ 3 $$ 4, $a$ 5 $a$ 6, 'é' 7",
        ];
        for t in texts {
            for end in 0..=t.len() {
                if let Some(prefix) = t.get(..end) {
                    agrees(prefix);
                }
            }
        }
    }

    /// The numeric spans the fast scanner finds, or `None` where it declines.
    fn spans(sql: &str) -> Option<Vec<Span>> {
        let mut out = Vec::new();
        scan_numbers(sql.as_bytes(), |a, b, int| out.push((a, b, int)))?;
        Some(out)
    }

    /// `sql` with each numeric span replaced by the next of `with` (cycled), of its class.
    fn renumbered(sql: &str, spans: &[Span], ints: &[&str], floats: &[&str], k: usize) -> String {
        let mut out = String::new();
        let mut copied = 0;
        for (j, &(a, b, int)) in spans.iter().enumerate() {
            let pool = if int { ints } else { floats };
            out.push_str(&sql[copied..a]);
            out.push_str(pool[(j + k) % pool.len()]);
            copied = b;
        }
        out.push_str(&sql[copied..]);
        out
    }

    /// `sql` agrees with PostgreSQL's scanner, and where the fast scanner reads it, the same
    /// text with other constants of the same classes keeps its shape (and verifies).
    fn renumbering_keeps_the_shape(sql: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        agrees(sql);
        if let (Some(shape), Some(sp)) = (fast_shape(sql), spans(sql)) {
            for k in 0..2 {
                let other = renumbered(sql, &sp, &["3", "0012"], &["4.5", "6e7", ".8"], k);
                proptest::prop_assert_eq!(fast_shape(&other), Some(shape.clone()));
                proptest::prop_assert!(fast_shape_verified(&other, &shape), "{:?}", other);
            }
        }
        Ok(())
    }

    /// Every statement of the policy corpora (tests/corpus.toml, the attack corpus the
    /// policy is tested with, and the T-SQL one), their setups, and every prefix of them:
    /// the fast shape is `None` or exactly PostgreSQL's scanner's.
    #[test]
    fn the_corpus_agrees_with_postgres_scanner() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let mut statements = Vec::new();
        for file in ["tests/corpus.toml", "tests/tsql_corpus.toml"] {
            let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap_or_default();
            let table: toml::Table = toml::from_str(&text).unwrap_or_default();
            let cases = table.get("case").and_then(|c| c.as_array()).cloned();
            for case in cases.unwrap_or_default() {
                let texts = case.get("sql").into_iter().chain(
                    case.get("setup")
                        .and_then(|s| s.as_array())
                        .into_iter()
                        .flatten(),
                );
                statements.extend(texts.filter_map(|v| v.as_str()).map(str::to_owned));
            }
        }
        assert!(statements.len() > 900, "{} statements", statements.len());
        let (mut fast_count, mut numbered) = (0, 0);
        for sql in &statements {
            for end in (0..=sql.len()).filter(|&e| sql.is_char_boundary(e)) {
                agrees(&sql[..end]);
            }
            numbered += usize::from(scanner_shape(sql).is_some());
            fast_count += usize::from(fast_shape(sql).is_some());
        }
        // Most statements with numbers are in the fast scanner's reach.
        assert!(fast_count * 2 > numbered, "{fast_count} of {numbered}");
    }

    /// Texts with the same fast shape have the same scanner shape: replacing the constants
    /// of a text the fast scanner reads by other constants of the same class changes
    /// neither shape (the argument in `fast_shape_into`, tried on the corpus).
    #[test]
    fn renumbering_keeps_both_shapes() {
        let ints = ["0", "7", "42", "000", "2147483647", "1000000"];
        let floats = [
            "1.5",
            ".5",
            "1.",
            "1e5",
            "2E-3",
            "9.e+1",
            "2147483648",
            "0.0",
        ];
        let dir = env!("CARGO_MANIFEST_DIR");
        let text = std::fs::read_to_string(format!("{dir}/tests/corpus.toml")).unwrap_or_default();
        let table: toml::Table = toml::from_str(&text).unwrap_or_default();
        let cases = table.get("case").and_then(|c| c.as_array()).cloned();
        let mut tried = 0;
        for sql in cases
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c.get("sql").and_then(|s| s.as_str()))
        {
            let (Some(shape), Some(sp)) = (fast_shape(sql), spans(sql)) else {
                continue;
            };
            for k in 0..3 {
                let other = renumbered(sql, &sp, &ints, &floats, k);
                assert_eq!(fast_shape(&other).as_ref(), Some(&shape), "{other:?}");
                assert!(fast_shape_verified(&other, &shape), "{other:?}");
                tried += 1;
            }
        }
        assert!(tried > 100, "{tried}");
    }

    /// Pieces the fast scanner reads on their own (it may still decline what they form
    /// together: `a` then `1` is an identifier, `1` then `a` is declined).
    const PIECES: &[&str] = &[
        "1",
        "42",
        "1.5",
        ".5",
        "1.",
        "1e5",
        "1E-5",
        "9999999999",
        "e",
        "x",
        "u",
        "U",
        "&",
        "$1",
        "'a'",
        "''",
        "'1 /*'",
        "\"b\"",
        "\"2--\"",
        "--c\n",
        "--3\r",
        "/*4*/",
        "/* /* 5 */ */",
        "/**/",
        "/",
        "*",
        " ",
        "-",
        "+",
        "(",
        ")",
        ",",
        ".",
        "..",
        ":",
        "::",
        "_",
        "a",
        "ab1",
        "<",
        "=",
        "!",
        "#",
        "|",
        "`",
        "?",
        "%",
        "^",
        "[",
        "]",
        ";",
        "\t",
        "\n",
        "\r",
    ];

    /// Pieces that are incomplete, or that it declines.
    const ODD_PIECES: &[&str] = &[
        "$", "'", "\"", "--", "/*", "*/", "0x1F", "1_0", "E'", "$$", "\\", "é", "\u{b}",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 16384,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Texts made of pieces of tokens that matter to the lexer around numbers: the
        /// fast scanner declines or agrees with PostgreSQL's scanner, and renumbering a
        /// text it reads keeps both shapes.
        #[test]
        fn random_token_soups_decline_or_agree(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    12 => proptest::sample::select(PIECES),
                    1 => proptest::sample::select(ODD_PIECES),
                ],
                0..16,
            )
        ) {
            let sql = pieces.concat();
            renumbering_keeps_the_shape(&sql)?;
        }

        /// Texts made of the characters that matter to the lexer around numbers: the fast
        /// scanner declines or agrees with PostgreSQL's scanner, and renumbering a text it
        /// reads keeps both shapes.
        #[test]
        fn random_texts_decline_or_agree(
            sql in "[0-9.eExXbBoO_$'\"\\-/* \n+a-d&uUN;:()\\\\]{0,24}"
        ) {
            renumbering_keeps_the_shape(&sql)?;
        }
    }
}
