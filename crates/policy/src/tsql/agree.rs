//! Does sqlparser read the batch as SQL Server does?
//!
//! pgward decides what sqlparser parsed, and forwards the client's text, which SQL Server
//! reads with its own lexer. The two readings must be the same, token for token: the
//! stream from [`super::lexer`] (SQL Server's grammar) and sqlparser's own tokens are
//! compared, ignoring white space and comments; any difference (a comment one side ends
//! sooner, a number one side reads longer, a string one side never opens) refuses the
//! batch. Then no word, name, literal or statement boundary can mean one thing to pgward
//! and another to SQL Server.

use sqlparser::tokenizer::Token as SpToken;

use super::lexer::{Kind, Token};

/// A token with only what both readings must agree on.
#[derive(Debug, PartialEq, Eq)]
enum Norm<'a> {
    /// Unquoted word or variable, as written.
    Word(&'a str),
    Quoted(char, &'a str),
    Str(&'a str),
    NStr(&'a str),
    Number(&'a str),
    Binary(String),
    Money(&'a str),
    Pseudo(&'a str),
    Punct(char),
    /// Something only one side has a notion of (a dollar-quoted string, `1L`, ...).
    Other(String),
}

fn ours(t: &Token) -> Norm<'_> {
    let v = t.value.as_str();
    match t.kind {
        Kind::Word | Kind::Variable => Norm::Word(v),
        Kind::Quoted(q) => Norm::Quoted(q, v),
        Kind::String => Norm::Str(v),
        Kind::NString => Norm::NStr(v),
        Kind::Number => Norm::Number(v),
        // sqlparser only knows the lower-case prefix.
        Kind::Binary => match v.strip_prefix("0x") {
            Some(hex) => Norm::Binary(hex.to_owned()),
            None => Norm::Other(v.to_owned()),
        },
        Kind::Money => Norm::Money(v),
        Kind::PseudoColumn => Norm::Pseudo(v),
        Kind::Punct => match v.chars().next() {
            Some(c) => Norm::Punct(c),
            None => Norm::Other(String::new()),
        },
    }
}

/// Operator characters, as in the lexer; an sqlparser token made only of these is compared
/// character by character (`<>` against `<` `>`).
const PUNCT: &str = "!%&()*+,-./:;<=>^|~";

fn theirs<'a>(t: &'a SpToken, out: &mut Vec<Norm<'a>>) {
    match t {
        SpToken::Whitespace(_) | SpToken::EOF => {}
        SpToken::Word(w) => match w.quote_style {
            None => out.push(Norm::Word(&w.value)),
            Some(q) => out.push(Norm::Quoted(q, &w.value)),
        },
        SpToken::Number(n, false) => out.push(Norm::Number(n)),
        SpToken::SingleQuotedString(s) => out.push(Norm::Str(s)),
        SpToken::NationalStringLiteral(s) => out.push(Norm::NStr(s)),
        SpToken::HexStringLiteral(h) => out.push(Norm::Binary(h.clone())),
        SpToken::Placeholder(p) => {
            let second = p.chars().nth(1);
            if p.starts_with('$') && second.is_some_and(|c| c.is_ascii_digit()) {
                out.push(Norm::Money(p));
            } else if p.starts_with('$') && p.len() > 1 {
                out.push(Norm::Pseudo(p));
            } else {
                out.push(Norm::Other(p.clone()));
            }
        }
        other => {
            let text = other.to_string();
            if !text.is_empty() && text.chars().all(|c| PUNCT.contains(c)) {
                out.extend(text.chars().map(Norm::Punct));
            } else {
                out.push(Norm::Other(format!("{other:?}")));
            }
        }
    }
}

/// `Err` describes the first place where sqlparser's tokens differ from SQL Server's.
pub(crate) fn same_reading(sql: &str, server: &[Token], parser: &[SpToken]) -> Result<(), String> {
    let mut p = Vec::with_capacity(server.len());
    for t in parser {
        theirs(t, &mut p);
    }
    let s: Vec<Norm> = server.iter().map(ours).collect();
    let differ = s.iter().zip(&p).position(|(a, b)| a != b);
    let at = match differ {
        Some(i) => i,
        None if s.len() == p.len() => return Ok(()),
        None => s.len().min(p.len()),
    };
    let offset = server.get(at).map_or(sql.len(), |t| t.start);
    let near: String = sql
        .get(offset..)
        .unwrap_or_default()
        .chars()
        .take(30)
        .collect();
    Err(format!(
        "SQL Server would read this batch differently from pgward's parser near {near:?} (byte {offset})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::MsSqlDialect;
    use sqlparser::tokenizer::Tokenizer;

    fn agree(sql: &str) -> bool {
        let server = match super::super::lexer::lex(sql) {
            Ok(t) => t,
            Err(_) => return false,
        };
        let parser = match Tokenizer::new(&MsSqlDialect {}, sql).tokenize() {
            Ok(t) => t,
            Err(_) => return false,
        };
        same_reading(sql, &server, &parser).is_ok()
    }

    #[test]
    fn the_issue_examples_disagree() {
        assert!(!agree("--\rDROP TABLE dbo.salaries"));
        assert!(!agree(
            "SELECT $1z$ FROM dbo.orders; DROP TABLE dbo.orders; SELECT $1z$"
        ));
        assert!(!agree("SELECT 1eDELETE FROM dbo.orders"));
    }

    #[test]
    fn ordinary_batches_agree() {
        for sql in [
            "SELECT * FROM [dbo].[orders] WHERE a <> 1 AND b >= 2; -- done\n",
            "SELECT N'x''y', 'a', 0x1f, 1.5e3, .5, @@ROWCOUNT /* c /* d */ */ FROM #t",
            "UPDATE t SET a += 1 WHERE \"b\" = $1.50",
            "MERGE dbo.t AS x USING dbo.s AS y ON x.id = y.id WHEN MATCHED THEN DELETE OUTPUT $action;",
            "SELECT a$b FROM t\r\nWHERE x = 1",
        ] {
            assert!(agree(sql), "{sql}");
        }
    }
}
