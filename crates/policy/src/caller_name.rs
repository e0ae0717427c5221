//! `application_name` on the upstream session names the caller: pgward sets it to
//! `<caller> (<client's name>)` at connect, and a client's own `SET application_name = 'x'`
//! (pgjdbc sends one on every connect) is rewritten to `SET application_name = '<caller> (x)'`
//! instead of being refused. The policy allows SET application_name only with that prefix
//! (see `SessionState::set_caller`), so the caller's name can't be dropped or replaced.

use pg_query::protobuf as pb;

/// The application_name pgward gives a caller's upstream session.
pub fn caller_application_name(caller: &str, client: Option<&str>) -> String {
    match client.filter(|c| !c.is_empty()) {
        Some(c) => format!("{caller} ({c})"),
        None => caller.to_owned(),
    }
}

/// Whether `value` is an application_name pgward would give this caller.
pub(crate) fn names_caller(value: &str, caller: &str) -> bool {
    value == caller
        || value
            .strip_prefix(caller)
            .and_then(|rest| rest.strip_prefix(" ("))
            .is_some_and(|rest| rest.ends_with(')'))
}

/// If `sql` is exactly one `SET [SESSION] application_name {=|TO} '<literal>'`, the same SET
/// with the caller's name put first; otherwise `None` (the statement is decided as written).
pub fn rewrite_set_application_name(sql: &str, caller: &str) -> Option<String> {
    // Cheap tests first: this runs on every statement of a session with a policy.
    if sql.len() > 4096 || !may_start_with_set(sql) || !mentions_application_name(sql) {
        return None;
    }
    let parsed = pg_query::parse(sql).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let Some(pb::node::Node::VariableSetStmt(set)) = raw.stmt.as_ref()?.node.as_ref() else {
        return None;
    };
    if set.is_local
        || !set.name.eq_ignore_ascii_case("application_name")
        || pb::VariableSetKind::try_from(set.kind) != Ok(pb::VariableSetKind::VarSetValue)
    {
        return None;
    }
    let [arg] = set.args.as_slice() else {
        return None;
    };
    let Some(pb::node::Node::AConst(c)) = arg.node.as_ref() else {
        return None;
    };
    let Some(pb::a_const::Val::Sval(s)) = c.val.as_ref() else {
        return None;
    };
    if names_caller(&s.sval, caller) {
        // Already in pgward's form (e.g. a pool restoring the name it read back).
        return None;
    }
    let value = caller_application_name(caller, Some(&s.sval));
    Some(format!(
        "SET application_name = '{}'",
        value.replace('\'', "''")
    ))
}

/// Whether `sql` may be a SET statement: it starts (after whitespace) with the keyword SET,
/// or with a comment or an empty statement (`;`), after which it might. A single
/// VariableSetStmt is parsed only from a text whose first token is SET: keywords are ASCII
/// in any case, never quoted. Most statements fail on their first bytes (`SELECT`).
fn may_start_with_set(sql: &str) -> bool {
    let b = sql.as_bytes();
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        .unwrap_or(b.len());
    match b.get(start..) {
        Some([b'/' | b'-' | b';', ..]) => true,
        Some([s, e, t, rest @ ..]) => {
            [*s, *e, *t].eq_ignore_ascii_case(b"set")
                && !rest.first().is_some_and(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$') || !c.is_ascii()
                })
        }
        _ => false,
    }
}

/// Whether `sql` contains `application_name` in any ASCII case. Every occurrence has its
/// `_` 11 bytes in, and `_` is rare in SQL: only the windows around each `_` (found a word
/// at a time by `str::match_indices`) are compared. This runs on every statement.
fn mentions_application_name(sql: &str) -> bool {
    const NEEDLE: &[u8] = b"application_name";
    const UNDERSCORE: usize = 11;
    let bytes = sql.as_bytes();
    sql.match_indices('_').any(|(i, _)| {
        i.checked_sub(UNDERSCORE)
            .and_then(|start| bytes.get(start..start + NEEDLE.len()))
            .is_some_and(|w| w.eq_ignore_ascii_case(NEEDLE))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_texts_that_may_start_with_set_are_parsed() {
        for sql in [
            "SET application_name = 'x'",
            "  \t\n\x0bset application_name = 'x'",
            "Set",
            "SET\"application_name\" = 'x'",
            "SET/**/application_name = 'x'",
            "/* c */ SET application_name = 'x'",
            "-- c\nSET application_name = 'x'",
            ";SET application_name = 'x'",
        ] {
            assert!(may_start_with_set(sql), "{sql:?}");
        }
        for sql in [
            "SELECT 'application_name'",
            "SETTINGS",
            "SET_x",
            "SETé",
            "SE",
            "",
            "RESET application_name",
            "(SET application_name = 'x')",
        ] {
            assert!(!may_start_with_set(sql), "{sql:?}");
        }
        let c = "alice@contoso.com";
        for sql in [
            "/* c */ SET application_name = 'x'",
            "-- c\nSET application_name = 'x'",
            ";SET application_name = 'x'",
            "\x0bSET application_name = 'x'",
        ] {
            assert_eq!(
                rewrite_set_application_name(sql, c).as_deref(),
                Some("SET application_name = 'alice@contoso.com (x)'"),
                "{sql:?}"
            );
        }
    }

    #[test]
    fn finds_application_name_in_any_case() {
        for sql in [
            "SET Application_Name = 'x'",
            "application_name",
            "SET \"APPLICATION_NAME\" = 'x'",
            "x_y application_name",
            "_application_name_",
            "SET é_application_name_é",
        ] {
            assert!(mentions_application_name(sql), "{sql}");
        }
        for sql in [
            "SET applicationname = 'x'",
            "app",
            "",
            "_",
            "application_nam",
            "pplication_name",
            "application-name",
            "SELECT aid FROM pgbench_accounts",
            "éééééééééééé_name",
        ] {
            assert!(!mentions_application_name(sql), "{sql}");
        }
    }

    #[test]
    fn rewrites_a_plain_set() {
        let c = "alice@contoso.com";
        assert_eq!(
            rewrite_set_application_name("SET application_name = 'PostgreSQL JDBC Driver'", c)
                .as_deref(),
            Some("SET application_name = 'alice@contoso.com (PostgreSQL JDBC Driver)'")
        );
        assert_eq!(
            rewrite_set_application_name("set SESSION Application_Name to 'it''s'", c).as_deref(),
            Some("SET application_name = 'alice@contoso.com (it''s)'")
        );
        assert_eq!(
            rewrite_set_application_name("SET application_name = E'a\\'b'", c).as_deref(),
            Some("SET application_name = 'alice@contoso.com (a''b)'")
        );
    }

    #[test]
    fn leaves_everything_else_to_the_policy() {
        let c = "alice@contoso.com";
        for sql in [
            "SELECT 1",
            "SET LOCAL application_name = 'x'",
            "SET application_name = 'x'; SET pgward.oid = 'y'",
            "SET application_name TO DEFAULT",
            "RESET application_name",
            "SELECT set_config('application_name', 'x', false)",
            "SET application_name = 'alice@contoso.com (psql)'",
            "SET application_name = 'alice@contoso.com'",
            "SET application_name = 1",
        ] {
            assert_eq!(rewrite_set_application_name(sql, c), None, "{sql}");
        }
    }

    #[test]
    fn recognises_the_callers_form() {
        assert!(names_caller("bob (x)", "bob"));
        assert!(names_caller("bob", "bob"));
        assert!(!names_caller("bobby (x)", "bob"));
        assert!(!names_caller("bob (x", "bob"));
        assert!(!names_caller("alice (bob)", "bob"));
    }
}
