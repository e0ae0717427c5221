//! SQL Server's lexical grammar: a T-SQL batch read into tokens as the server reads it.
//!
//! The reference is the lexer of Microsoft's own T-SQL parser (microsoft/SqlScriptDOM,
//! `SqlScriptDom/Parser/TSql/TSql160.g`, class `TSql160LexerInternal`):
//! - `--` comments end at CR or LF (a bare CR too); `/* */` comments nest;
//! - `'...'` and `N'...'` strings, `''` inside is one quote; strings may span lines;
//! - `[...]` identifiers with `]]` for `]`, `"..."` identifiers with `""` for `"`
//!   (QUOTED_IDENTIFIER is ON for pgward's sessions: tiberius signs in as an ODBC client);
//! - numbers: `1`, `1.`, `1.5`, `.5`, and reals whose exponent may have no digits
//!   (`1e`, `1e+`: so `1eDELETE` is the real `1e` then the word `DELETE`); `0x...` binary;
//!   money: `$` then spaces, a sign and digits (`$1`, `$ -1.5`, `$1e3`);
//! - `@name` / `@@name` variables; words start with a letter, `_` or `#` and go on with
//!   letters, digits, `_`, `#`, `@` and `$` (`#temp`, `##global`, `a$b`);
//!   `$name` is a pseudo-column (`$action`).
//!
//! Where that grammar and the engine may part, or a construct changes how the rest of the
//! batch is read, this lexer refuses instead of guessing: ODBC escapes (`{fn ...}`,
//! `--(*`), sqlcmd variables (`$(x)`), labels (`name:`), `\` line continuations in binary
//! literals, currency signs other than `$`, control characters, Unicode line and paragraph
//! separators, non-ASCII white space, and any character outside the grammar.

use std::fmt;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular identifier or keyword, as written (`SELECT`, `orders`, `#temp`).
    Word,
    /// A delimited identifier, `[...]` or `"..."` (the opening character).
    Quoted(char),
    /// `@name` or `@@name`.
    Variable,
    /// `'...'`.
    String,
    /// `N'...'`.
    NString,
    /// An integer, decimal or real literal.
    Number,
    /// A money literal (`$1.5`).
    Money,
    /// A binary literal (`0x1F`).
    Binary,
    /// `$action`, `$identity`, ...
    PseudoColumn,
    /// One character of punctuation or of an operator (`(`, `;`, `.`, `<`, ...).
    Punct,
}

/// One token of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// What it is.
    pub kind: Kind,
    /// Byte offset of its first character in the batch.
    pub start: usize,
    /// Byte offset just past it.
    pub end: usize,
    /// Strings and delimited identifiers: the content with quotes removed and doubled
    /// quotes undone. Everything else: the text as written.
    pub value: String,
}

impl Token {
    /// Whether this is the unquoted word `w` (ASCII case-insensitive).
    pub fn is_word(&self, w: &str) -> bool {
        self.kind == Kind::Word && self.value.eq_ignore_ascii_case(w)
    }

    /// Whether this is the punctuation character `c`.
    pub fn is_punct(&self, c: char) -> bool {
        self.kind == Kind::Punct && self.value.len() == 1 && self.value.starts_with(c)
    }
}

/// Why a batch could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    /// Byte offset where reading stopped.
    pub offset: usize,
    /// What was there.
    pub message: String,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.offset)
    }
}

impl std::error::Error for LexError {}

/// Punctuation and operator characters of the grammar (`{` and `}` are left out: they
/// open ODBC escapes, which pgward does not read).
const PUNCT: &str = "!%&()*+,-./:;<=>^|~";

/// Reads a batch into tokens (comments and white space dropped).
pub fn lex(sql: &str) -> Result<Vec<Token>, LexError> {
    Lexer {
        s: sql,
        b: sql.as_bytes(),
        i: 0,
        out: Vec::new(),
    }
    .run()
}

struct Lexer<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    out: Vec<Token>,
}

fn err<T>(offset: usize, message: impl Into<String>) -> Result<T, LexError> {
    Err(LexError {
        offset,
        message: message.into(),
    })
}

/// Characters refused even inside comments and delimited identifiers: NUL, and line
/// breaks other than CR and LF, which a reader might end a `--` comment at.
fn refused_anywhere(c: char) -> bool {
    matches!(c, '\0' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// ASCII letters, `_`, `#`, and non-ASCII letters (the engine takes Unicode letters; other
/// non-ASCII characters are refused rather than guessed at).
fn word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '#' || (!c.is_ascii() && c.is_alphabetic())
}

fn word_part(c: char) -> bool {
    word_start(c) || c.is_ascii_digit() || c == '@' || c == '$'
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> u8 {
        self.b.get(self.i + ahead).copied().unwrap_or(0)
    }

    fn char_at(&self, i: usize) -> Option<char> {
        self.s.get(i..).and_then(|r| r.chars().next())
    }

    fn push(&mut self, kind: Kind, start: usize, value: String) {
        self.out.push(Token {
            kind,
            start,
            end: self.i,
            value,
        });
    }

    fn text(&self, start: usize) -> String {
        self.s.get(start..self.i).unwrap_or_default().to_owned()
    }

    fn run(mut self) -> Result<Vec<Token>, LexError> {
        while self.i < self.b.len() {
            let start = self.i;
            let c = self.b[self.i];
            match c {
                b' ' | b'\t' | b'\n' | b'\r' => self.i += 1,
                b'-' if self.peek(1) == b'-' => self.line_comment()?,
                b'/' if self.peek(1) == b'*' => self.block_comment()?,
                b'\'' => {
                    let v = self.delimited(b'\'', "string")?;
                    self.push(Kind::String, start, v);
                }
                b'N' | b'n' if self.peek(1) == b'\'' => {
                    self.i += 1;
                    let v = self.delimited(b'\'', "string")?;
                    self.push(Kind::NString, start, v);
                }
                b'[' => {
                    let v = self.delimited(b']', "bracketed identifier")?;
                    if v.is_empty() {
                        return err(start, "empty bracketed identifier");
                    }
                    self.push(Kind::Quoted('['), start, v);
                }
                b'"' => {
                    let v = self.delimited(b'"', "quoted identifier")?;
                    if v.is_empty() {
                        return err(start, "empty quoted identifier");
                    }
                    self.push(Kind::Quoted('"'), start, v);
                }
                b'0' if matches!(self.peek(1), b'x' | b'X') => {
                    self.i += 2;
                    while self.peek(0).is_ascii_hexdigit() {
                        self.i += 1;
                    }
                    if self.peek(0) == b'\\' {
                        return err(self.i, "line continuation in a binary literal");
                    }
                    let t = self.text(start);
                    self.push(Kind::Binary, start, t);
                }
                b'0'..=b'9' => self.number(start),
                b'.' if self.peek(1).is_ascii_digit() => self.number(start),
                b'@' => {
                    self.i += 1;
                    self.word_rest();
                    let t = self.text(start);
                    self.push(Kind::Variable, start, t);
                }
                b'$' => self.dollar(start)?,
                b'{' | b'}' => return err(start, "ODBC escape sequences are not supported"),
                _ if c.is_ascii() && PUNCT.as_bytes().contains(&c) => {
                    self.i += 1;
                    self.push(Kind::Punct, start, char::from(c).to_string());
                }
                _ => {
                    let Some(ch) = self.char_at(start) else {
                        return err(start, "not valid text");
                    };
                    if !word_start(ch) {
                        return err(start, format!("unexpected character {ch:?}"));
                    }
                    self.i += ch.len_utf8();
                    self.word_rest();
                    // `name:` is a label (GOTO target); `::` is a scope qualifier.
                    if self.peek(0) == b':' && self.peek(1) != b':' {
                        return err(start, "labels are not supported");
                    }
                    let t = self.text(start);
                    self.push(Kind::Word, start, t);
                }
            }
        }
        Ok(self.out)
    }

    fn word_rest(&mut self) {
        while let Some(ch) = self.char_at(self.i) {
            if !word_part(ch) {
                break;
            }
            self.i += ch.len_utf8();
        }
    }

    /// Checks the characters of a comment (or other skipped text) between `from` and `to`.
    fn check_skipped(&self, from: usize, to: usize) -> Result<(), LexError> {
        let text = self.s.get(from..to).unwrap_or_default();
        if let Some((at, ch)) = text.char_indices().find(|(_, c)| refused_anywhere(*c)) {
            return err(from + at, format!("character {ch:?} is not accepted"));
        }
        Ok(())
    }

    fn line_comment(&mut self) -> Result<(), LexError> {
        let start = self.i;
        // `--(*` opens an ODBC escape in SQL Server's grammar, not a comment.
        if self.peek(2) == b'(' && self.peek(3) == b'*' {
            return err(start, "ODBC escape sequences are not supported");
        }
        self.i += 2;
        while self.i < self.b.len() && !matches!(self.b[self.i], b'\r' | b'\n') {
            self.i += 1;
        }
        self.check_skipped(start, self.i)
    }

    fn block_comment(&mut self) -> Result<(), LexError> {
        let start = self.i;
        let mut depth = 0usize;
        while self.i < self.b.len() {
            if self.peek(0) == b'/' && self.peek(1) == b'*' {
                depth += 1;
                self.i += 2;
            } else if self.peek(0) == b'*' && self.peek(1) == b'/' {
                depth -= 1;
                self.i += 2;
                if depth == 0 {
                    return self.check_skipped(start, self.i);
                }
            } else {
                self.i += 1;
            }
        }
        err(start, "unterminated /* comment")
    }

    /// Reads `q ... q` from the opening quote (at `self.i` for `'`; `[` opens `]`), with a
    /// doubled closing quote standing for one. Returns the content.
    fn delimited(&mut self, close: u8, what: &str) -> Result<String, LexError> {
        let start = self.i;
        self.i += 1;
        let mut value = String::new();
        let mut from = self.i;
        loop {
            let Some(pos) = self.b[self.i..].iter().position(|&x| x == close) else {
                return err(start, format!("unterminated {what}"));
            };
            let at = self.i + pos;
            value.push_str(self.s.get(from..at).unwrap_or_default());
            if self.b.get(at + 1) == Some(&close) {
                value.push(char::from(close));
                self.i = at + 2;
                from = self.i;
            } else {
                self.i = at + 1;
                break;
            }
        }
        if let Some(ch) = value.chars().find(|c| *c == '\0') {
            return err(start, format!("character {ch:?} is not accepted"));
        }
        if close != b'\'' {
            // Identifiers: line breaks a reader could take for something else.
            self.check_skipped(start, self.i)?;
        }
        Ok(value)
    }

    fn digits(&mut self) {
        while self.peek(0).is_ascii_digit() {
            self.i += 1;
        }
    }

    /// `e`, an optional sign, and digits, which may be none (SQL Server reads `1e` as 1.0).
    fn exponent(&mut self) {
        if matches!(self.peek(0), b'e' | b'E') {
            self.i += 1;
            if matches!(self.peek(0), b'+' | b'-') {
                self.i += 1;
            }
            self.digits();
        }
    }

    fn number(&mut self, start: usize) {
        self.digits();
        if self.peek(0) == b'.' {
            self.i += 1;
            self.digits();
        }
        self.exponent();
        let t = self.text(start);
        self.push(Kind::Number, start, t);
    }

    fn dollar(&mut self, start: usize) -> Result<(), LexError> {
        let next = self.char_at(start + 1);
        if next == Some('(') {
            return err(start, "sqlcmd variables $(...) are not supported");
        }
        if next.is_some_and(|c| c == '@' || word_start(c)) {
            self.i += 1;
            self.word_rest();
            let t = self.text(start);
            self.push(Kind::PseudoColumn, start, t);
            return Ok(());
        }
        self.i += 1;
        while self.peek(0) == b' ' {
            self.i += 1;
        }
        if matches!(self.peek(0), b'+' | b'-') {
            self.i += 1;
        }
        if !self.peek(0).is_ascii_digit() {
            return err(start, "a money literal needs digits after $");
        }
        self.digits();
        if self.peek(0) == b'.' {
            self.i += 1;
            self.digits();
        }
        self.exponent();
        let t = self.text(start);
        self.push(Kind::Money, start, t);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Kind, String)> {
        lex(sql)
            .unwrap_or_else(|e| panic!("{sql:?}: {e}"))
            .into_iter()
            .map(|t| (t.kind, t.value))
            .collect()
    }

    fn words(sql: &str) -> Vec<String> {
        kinds(sql).into_iter().map(|(_, v)| v).collect()
    }

    #[test]
    fn comments_end_where_sql_server_ends_them() {
        assert_eq!(words("--\rDROP TABLE t"), ["DROP", "TABLE", "t"]);
        assert_eq!(words("-- x\nSELECT"), ["SELECT"]);
        assert_eq!(words("/* a /* b */ DROP */ SELECT"), ["SELECT"]);
        assert_eq!(words("/* a */ DROP"), ["DROP"]);
        assert!(lex("/* /* */ DROP").is_err());
        assert!(lex("--(* x *)--").is_err());
        assert!(lex("-- a\u{2028}DROP").is_err());
    }

    #[test]
    fn strings_and_identifiers() {
        assert_eq!(
            kinds("'a''b' N'c' [x]]y] \"q\"\"r\""),
            [
                (Kind::String, "a'b".to_owned()),
                (Kind::NString, "c".to_owned()),
                (Kind::Quoted('['), "x]y".to_owned()),
                (Kind::Quoted('"'), "q\"r".to_owned()),
            ]
        );
        assert_eq!(kinds("[salaries ]")[0].1, "salaries ");
        assert!(lex("'open").is_err());
        assert!(lex("[]").is_err());
        assert_eq!(
            kinds("#t ##g a$b @x @@rowcount $action"),
            [
                (Kind::Word, "#t".to_owned()),
                (Kind::Word, "##g".to_owned()),
                (Kind::Word, "a$b".to_owned()),
                (Kind::Variable, "@x".to_owned()),
                (Kind::Variable, "@@rowcount".to_owned()),
                (Kind::PseudoColumn, "$action".to_owned()),
            ]
        );
    }

    #[test]
    fn numbers_as_sql_server_reads_them() {
        assert_eq!(words("1eDELETE"), ["1e", "DELETE"]);
        assert_eq!(words("1e+x"), ["1e+", "x"]);
        assert_eq!(words("1.5e3 .5 1. 2abc"), ["1.5e3", ".5", "1.", "2", "abc"]);
        assert_eq!(
            kinds("$1z$"),
            [
                (Kind::Money, "$1".to_owned()),
                (Kind::Word, "z$".to_owned())
            ]
        );
        assert_eq!(kinds("$ -1.5")[0], (Kind::Money, "$ -1.5".to_owned()));
        assert_eq!(words("0x1Fg"), ["0x1F", "g"]);
        assert!(lex("$(var)").is_err());
        assert!(lex("$x").is_ok());
        assert!(lex("$").is_err());
        assert!(lex("£1").is_err());
    }

    #[test]
    fn refusals() {
        for sql in [
            "SELECT {fn user()}",
            "lbl: SELECT 1",
            "SELECT ?",
            "SELECT\u{a0}1",
            "SELECT 1\u{0b}",
            "SELECT '\0'",
            "SELECT 0x12\\\n34",
        ] {
            assert!(lex(sql).is_err(), "{sql:?}");
        }
        assert!(lex("GRANT SELECT ON SCHEMA::dbo TO x").is_ok());
    }
}
