//! Human-readable explanations for `pgward policy explain`.

use std::fmt::Write as _;

use crate::analyze::SettingChange;
use crate::decide::{QueryDecision, RoleSet, SessionState};
use crate::policy::{Mode, Policy};

impl Policy {
    /// Explains the decision for `sql`: per statement the actions and objects, functions and
    /// settings found, then the verdict and the deciding rule.
    pub fn explain(&self, roles: &RoleSet, sql: &str, session: &SessionState) -> String {
        let q = self.decide_query(roles, sql, session);
        explain_decision(self, roles, session, &q)
    }
}

/// Formats an already computed decision (see [`Policy::explain`]).
pub fn explain_decision(
    policy: &Policy,
    roles: &RoleSet,
    session: &SessionState,
    q: &QueryDecision,
) -> String {
    let mut s = String::new();
    let names = if roles.is_empty() {
        "(none: baseline only)".to_owned()
    } else {
        roles.names().join(", ")
    };
    let _ = writeln!(s, "roles: {names}");
    let _ = writeln!(s, "search_path: {}", session.search_path().join(", "));
    match session.catalog() {
        Some(c) => {
            let _ = writeln!(
                s,
                "server catalog: version {}, {} function names",
                c.version_num(),
                c.function_count()
            );
        }
        None => {
            let _ = writeln!(
                s,
                "server catalog: none (built-in lists of PostgreSQL 17 stand in)"
            );
        }
    }
    if policy.mode() == Mode::Observe {
        let _ = writeln!(s, "mode: observe (denials are recorded, not enforced)");
    }
    if let Some(e) = &q.error {
        let _ = writeln!(s, "could not analyse: {e}");
    }
    for (i, st) in q.statements.iter().enumerate() {
        let a = &st.analysis;
        let _ = writeln!(s, "statement {} ({}): {}", i + 1, a.kind, one_line(&a.sql));
        for acc in &a.accesses {
            let _ = writeln!(s, "  {:<9} {}", acc.action.as_str(), acc.object);
        }
        for f in &a.functions {
            let _ = writeln!(s, "  calls     {f}()");
        }
        for f in session.implicit_functions(a) {
            let _ = writeln!(
                s,
                "  may call  {f}() (attribute notation, an operator or a cast)"
            );
        }
        for c in &a.settings {
            let what = match c {
                SettingChange::Set {
                    name,
                    value: Some(v),
                } => format!("{name} = {}", v.join(", ")),
                SettingChange::Set { name, value: None } => format!("{name} (value not known)"),
                SettingChange::Reset { name } => format!("RESET {name}"),
                SettingChange::ResetAll => "RESET ALL".to_owned(),
            };
            let _ = writeln!(s, "  sets      {what}");
        }
        if let Some(e) = &a.executes {
            let _ = writeln!(s, "  executes  prepared statement {e}");
        }
        for n in &a.not_understood {
            let _ = writeln!(s, "  not understood: {n}");
        }
        if let Some(plan) = &st.masks {
            for (i, o) in plan.outputs.iter().enumerate() {
                match o {
                    crate::mask::OutputMask::Clear => {}
                    crate::mask::OutputMask::Column(m) => {
                        let _ = writeln!(
                            s,
                            "  masks     output column {}: {} as {} (mask {})",
                            i + 1,
                            m.column,
                            m.kind,
                            m.rule
                        );
                    }
                    crate::mask::OutputMask::Derived(cols) => {
                        let _ = writeln!(
                            s,
                            "  masks     output column {}: NULL, computed from {}",
                            i + 1,
                            cols.join(", ")
                        );
                    }
                }
            }
            if !plan.columns.is_empty() {
                let _ = writeln!(s, "  reads masked columns: {}", plan.columns.join(", "));
            }
            if !plan.outputs.iter().any(crate::mask::OutputMask::is_masked) {
                let _ = writeln!(
                    s,
                    "  masks     no output column; the server's error texts are withheld"
                );
            }
        } else if policy.has_masks(roles) && !st.decision.blocks() {
            let _ = writeln!(s, "  masks     none reachable (results pass untouched)");
        }
        let _ = writeln!(
            s,
            "  -> {} by {}: {}",
            st.decision.verdict, st.decision.rule, st.decision.reason
        );
    }
    let d = &q.decision;
    let _ = writeln!(s, "decision: {} (rule {}): {}", d.verdict, d.rule, d.reason);
    s
}

fn one_line(sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 120 {
        let cut: String = flat.chars().take(117).collect();
        format!("{cut}...")
    } else {
        flat
    }
}
