//! Name patterns of the policy file: parts folded like PostgreSQL identifiers, `*` globs.

/// One part of a name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// Exactly this (folded) name.
    Literal(String),
    /// An unquoted part containing `*`, matching any run of characters.
    Glob(String),
}

impl Part {
    pub(crate) fn matches(&self, s: &str) -> bool {
        match self {
            Part::Literal(l) => l == s,
            Part::Glob(g) => glob(g, s),
        }
    }

    /// `*` alone.
    pub(crate) fn is_star(&self) -> bool {
        matches!(self, Part::Glob(g) if g == "*")
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, s: &str) -> bool {
    let mut pieces = pattern.split('*');
    let Some(first) = pieces.next() else {
        return s.is_empty();
    };
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for m in middle {
        match rest.find(m) {
            Some(i) => rest = &rest[i + m.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Splits a pattern into parts, folding unquoted parts to lower case like PostgreSQL.
pub(crate) fn split_pattern(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted_part = false;
    let mut chars = text.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => {
                in_quotes = !in_quotes;
                quoted_part = true;
            }
            '.' if !in_quotes => {
                parts.push(make_part(&cur, quoted_part)?);
                cur.clear();
                quoted_part = false;
            }
            c if !in_quotes && c.is_whitespace() => {
                return Err(format!("unexpected space in name pattern {text:?}"))
            }
            c => cur.push(c),
        }
    }
    if in_quotes {
        return Err(format!("unterminated quote in name pattern {text:?}"));
    }
    parts.push(make_part(&cur, quoted_part)?);
    Ok(parts)
}

fn make_part(s: &str, quoted: bool) -> Result<Part, String> {
    if s.is_empty() {
        return Err("empty name part".to_owned());
    }
    if quoted {
        Ok(Part::Literal(s.to_owned()))
    } else if s.contains('*') {
        Ok(Part::Glob(s.to_lowercase()))
    } else {
        Ok(Part::Literal(s.to_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("*", "abc"));
        assert!(glob("lo_*", "lo_import"));
        assert!(!glob("lo_*", "xlo_import"));
        assert!(glob(
            "pg_create_*_replication_slot",
            "pg_create_logical_replication_slot"
        ));
        assert!(!glob(
            "pg_create_*_replication_slot",
            "pg_create_restore_point"
        ));
        assert!(glob("a*b*c", "abc"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }
}
