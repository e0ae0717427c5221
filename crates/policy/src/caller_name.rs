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
    // Cheap test first: this runs on every statement of a session with a policy.
    if sql.len() > 4096 || !contains_ignore_ascii_case(sql, "application_name") {
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

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    let needle = needle.as_bytes();
    let Some(&first) = needle.first() else {
        return true;
    };
    // Compare whole windows only where the first byte matches: this runs on every
    // statement, and most windows of most statements fail on their first byte.
    let first = first.to_ascii_lowercase();
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w[0].to_ascii_lowercase() == first && w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_ignores_ascii_case() {
        assert!(contains_ignore_ascii_case(
            "SET Application_Name = 'x'",
            "application_name"
        ));
        assert!(contains_ignore_ascii_case(
            "application_name",
            "application_name"
        ));
        assert!(!contains_ignore_ascii_case(
            "SET applicationname = 'x'",
            "application_name"
        ));
        assert!(!contains_ignore_ascii_case("app", "application_name"));
        assert!(contains_ignore_ascii_case("x", ""));
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
