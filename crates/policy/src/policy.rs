//! Policy file loading and validation.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::analyze::{split_list, Action};
use crate::catalog::{DANGEROUS_FUNCTIONS, HARMLESS_SETTINGS};
use crate::pattern::split_pattern;
pub(crate) use crate::pattern::Part;

/// Whether denials block (`enforce`) or are only reported (`observe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Denied statements are refused with 42501.
    Enforce,
    /// Denied statements run; the decision says what would have been denied.
    Observe,
}

/// One problem found while loading a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// 1-based line in the policy text (0 when unknown).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in a policy; loading fails if there is at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The problems, in file order.
    pub problems: Vec<PolicyProblem>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "line {}: {}", p.line, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// A parsed object or function pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    /// As written in the policy.
    pub text: String,
    /// `None`: the pattern is `"*"` (every object). Otherwise (schema, name); schema is `None`
    /// for bare function patterns.
    pub parts: Option<(Option<Part>, Part)>,
}

/// Parses an object pattern: `"*"`, `schema.name` (either part may glob).
pub(crate) fn parse_object_pattern(text: &str) -> Result<Pattern, String> {
    let mut parts = split_pattern(text)?;
    if parts.len() == 1 && parts[0].is_star() {
        return Ok(Pattern {
            text: text.to_owned(),
            parts: None,
        });
    }
    if parts.len() != 2 {
        return Err(format!(
            "object {text:?} must be \"*\" or schema.name (for example public.orders, reporting.*)"
        ));
    }
    let name = parts.pop().ok_or("empty pattern")?;
    let schema = parts.pop();
    Ok(Pattern {
        text: text.to_owned(),
        parts: Some((schema, name)),
    })
}

/// Parses a function pattern: `name` (any schema) or `schema.name`.
pub(crate) fn parse_function_pattern(text: &str) -> Result<Pattern, String> {
    let mut parts = split_pattern(text)?;
    if parts.is_empty() || parts.len() > 2 {
        return Err(format!("function {text:?} must be name or schema.name"));
    }
    let name = parts.pop().ok_or("empty pattern")?;
    let schema = parts.pop();
    Ok(Pattern {
        text: text.to_owned(),
        parts: Some((schema, name)),
    })
}

/// A compiled allow or deny rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub name: String,
    /// Bit set of [`Action::bit`].
    pub actions: u16,
    pub objects: Vec<Pattern>,
    pub functions: Vec<Pattern>,
}

impl Rule {
    pub(crate) fn has(&self, a: Action) -> bool {
        self.actions & a.bit() != 0
    }
}

/// Who holds a role.
#[derive(Debug, Clone, Default)]
pub(crate) struct Members {
    /// Lower-cased group object ids.
    pub groups: Vec<String>,
    /// App role values (case-sensitive, as Entra issues them).
    pub app_roles: Vec<String>,
    /// Lower-cased UPNs or object ids.
    pub users: Vec<String>,
    /// `everyone = true`: every identity pgward signed in holds the role.
    pub everyone: bool,
}

/// A compiled role.
#[derive(Debug, Clone)]
pub(crate) struct Role {
    pub name: String,
    pub members: Members,
    pub upstream_role: Option<String>,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    /// Column masks (see mask.rs).
    pub masks: Vec<crate::mask_rules::MaskRule>,
    /// Columns this role unmasks, by exact name.
    pub unmask: Vec<crate::mask_rules::ColumnPattern>,
}

/// The baseline as narrowed by `[baseline]`.
#[derive(Debug, Clone)]
pub(crate) struct Baseline {
    pub catalog_reads: bool,
    pub settings: Vec<String>,
    pub reset_all: bool,
}

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) mode: Mode,
    pub(crate) roles: Vec<Role>,
    pub(crate) search_path: Vec<String>,
    pub(crate) baseline: Baseline,
    pub(crate) dangerous: Vec<Pattern>,
    pub(crate) version: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    mode: Option<Spanned<String>>,
    search_path: Option<Spanned<Vec<Spanned<String>>>>,
    baseline: Option<RawBaseline>,
    #[serde(default)]
    roles: Vec<Spanned<RawRole>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBaseline {
    catalog_reads: Option<bool>,
    settings: Option<Vec<Spanned<String>>>,
    reset_all: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    name: Spanned<String>,
    members: Option<RawMembers>,
    upstream_role: Option<String>,
    #[serde(default)]
    allow: Vec<Spanned<RawRule>>,
    #[serde(default)]
    deny: Vec<Spanned<RawRule>>,
    #[serde(default)]
    mask: Vec<Spanned<crate::mask_rules::RawMask>>,
    #[serde(default)]
    unmask: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMembers {
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    app_roles: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    everyone: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    actions: Option<Vec<Spanned<String>>>,
    objects: Option<Vec<Spanned<String>>>,
    functions: Option<Vec<Spanned<String>>>,
}

/// Collects problems with their lines.
struct Problems<'a> {
    text: &'a str,
    list: Vec<PolicyProblem>,
}

impl Problems<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let line = line_of(self.text, span.start);
        self.list.push(PolicyProblem {
            line,
            message: message.into(),
        });
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

/// Names must be usable in audit records and error messages.
fn valid_rule_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c))
}

impl Policy {
    /// Parses and validates a policy (the contents of the policy file). Every problem found is
    /// reported with its line; the policy loads only if there is none.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError {
            problems: vec![PolicyProblem {
                line: e.span().map_or(0, |s| line_of(text, s.start)),
                message: e.message().trim().to_owned(),
            }],
        })?;
        let mut p = Problems {
            text,
            list: Vec::new(),
        };

        let mode = match raw.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("enforce", _)) => Mode::Enforce,
            Some(("observe", _)) => Mode::Observe,
            Some((other, span)) => {
                p.at(
                    span,
                    format!("mode must be \"enforce\" or \"observe\", not {other:?}"),
                );
                Mode::Enforce
            }
        };

        let search_path = match &raw.search_path {
            None => vec!["public".to_owned()],
            Some(sp) => {
                let mut out = Vec::new();
                for s in sp.get_ref() {
                    let v = s.get_ref();
                    if v.is_empty() || v.starts_with('$') {
                        // "$user" depends on the upstream login role pgward uses, which would
                        // make name resolution depend on deployment details.
                        p.at(
                            s.span(),
                            format!(
                                "search_path entry {v:?} is not allowed; name schemas explicitly"
                            ),
                        );
                    } else {
                        out.extend(split_list(v));
                    }
                }
                if out.is_empty() {
                    p.at(sp.span(), "search_path must name at least one schema");
                }
                out
            }
        };

        let mut baseline = Baseline {
            catalog_reads: true,
            settings: HARMLESS_SETTINGS.iter().map(|s| (*s).to_owned()).collect(),
            // RESET ALL / DISCARD ALL return the upstream session to the startup parameters
            // pgward gave it (its search path, identity settings and role), so they cannot
            // widen anything; connection pools send them on every release.
            reset_all: true,
        };
        if let Some(b) = &raw.baseline {
            baseline.catalog_reads = b.catalog_reads.unwrap_or(true);
            baseline.reset_all = b.reset_all.unwrap_or(true);
            if let Some(list) = &b.settings {
                baseline.settings.clear();
                for s in list {
                    let name = s.get_ref().to_ascii_lowercase();
                    if HARMLESS_SETTINGS.contains(&name.as_str()) {
                        baseline.settings.push(name);
                    } else {
                        p.at(
                            s.span(),
                            format!("baseline setting {:?} is not in the built-in list; [baseline] can only narrow it (grant other settings with action \"set\" on setting.<name>)", s.get_ref()),
                        );
                    }
                }
            }
        }

        let mut roles: Vec<Role> = Vec::new();
        for r in &raw.roles {
            let role = compile_role(r, &mut p);
            if roles.iter().any(|x| x.name == role.name) {
                p.at(
                    r.get_ref().name.span(),
                    format!("role {:?} is defined twice", role.name),
                );
            }
            roles.push(role);
        }

        if !p.list.is_empty() {
            return Err(PolicyError { problems: p.list });
        }
        let dangerous = DANGEROUS_FUNCTIONS
            .iter()
            .filter_map(|d| parse_function_pattern(d).ok())
            .collect();
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        Ok(Policy {
            mode,
            roles,
            search_path,
            baseline,
            dangerous,
            version: h.finish(),
        })
    }

    /// Enforce or observe.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Identifies this policy's content; part of every cache key.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The search path sessions start with (after the implicit pg_catalog).
    pub fn default_search_path(&self) -> &[String] {
        &self.search_path
    }

    /// Names of all roles, in file order.
    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().map(|r| r.name.as_str())
    }
}

fn compile_role(r: &Spanned<RawRole>, p: &mut Problems<'_>) -> Role {
    let raw = r.get_ref();
    let name = raw.name.get_ref().clone();
    if !valid_rule_name(&name) {
        p.at(
            raw.name.span(),
            format!("role name {name:?} must be letters, digits, '_', '-' or '.'"),
        );
    }
    let m = raw.members.as_ref();
    let members = Members {
        groups: m
            .map(|m| m.groups.iter().map(|g| g.to_lowercase()).collect())
            .unwrap_or_default(),
        app_roles: m.map(|m| m.app_roles.clone()).unwrap_or_default(),
        users: m
            .map(|m| m.users.iter().map(|u| u.to_lowercase()).collect())
            .unwrap_or_default(),
        everyone: m.is_some_and(|m| m.everyone),
    };
    let mut all_members = members
        .groups
        .iter()
        .chain(&members.app_roles)
        .chain(&members.users);
    if all_members.any(|m| m.trim().is_empty()) {
        p.at(
            raw.name.span(),
            format!("role {name:?} lists an empty member"),
        );
    }
    if !members.everyone
        && members.groups.is_empty()
        && members.app_roles.is_empty()
        && members.users.is_empty()
    {
        p.at(
            raw.name.span(),
            format!(
                "role {name:?} has no members (members = {{ groups, app_roles, users }} or {{ everyone = true }})"
            ),
        );
    }
    let mut allow = Vec::new();
    for (i, rule) in raw.allow.iter().enumerate() {
        allow.push(compile_rule(rule, &format!("{name}.allow[{i}]"), true, p));
    }
    let mut deny = Vec::new();
    for (i, rule) in raw.deny.iter().enumerate() {
        deny.push(compile_rule(rule, &format!("{name}.deny[{i}]"), false, p));
    }
    let masks = crate::mask_rules::compile_masks(&name, &raw.mask, &mut |span, m| p.at(span, m));
    let unmask =
        crate::mask_rules::compile_unmask(&name, &raw.unmask, &mut |span, m| p.at(span, m));
    Role {
        name,
        members,
        upstream_role: raw.upstream_role.clone(),
        allow,
        deny,
        masks,
        unmask,
    }
}

fn compile_rule(
    r: &Spanned<RawRule>,
    default_name: &str,
    is_allow: bool,
    p: &mut Problems<'_>,
) -> Rule {
    let raw = r.get_ref();
    let name = match &raw.name {
        Some(n) => {
            if !valid_rule_name(n.get_ref()) {
                p.at(
                    n.span(),
                    format!(
                        "rule name {:?} must be letters, digits, '_', '-', '.', '[' or ']'",
                        n.get_ref()
                    ),
                );
            }
            n.get_ref().clone()
        }
        None => default_name.to_owned(),
    };
    // `*` (or no list) in an allow rule is every action except copy_file: reading or writing
    // server files and running programs is allowed only where a rule names it. In a deny rule
    // it is every action, copy_file included.
    let every = if is_allow {
        !Action::CopyFile.bit()
    } else {
        u16::MAX
    };
    let mut actions = 0u16;
    match &raw.actions {
        None => actions = every,
        Some(list) => {
            if list.is_empty() {
                p.at(
                    r.span(),
                    format!("rule {name}: actions is empty (omit it to mean all actions)"),
                );
            }
            for a in list {
                if a.get_ref() == "*" {
                    actions |= every;
                } else if let Some(act) = Action::parse(a.get_ref()) {
                    actions |= act.bit();
                } else {
                    let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                    p.at(
                        a.span(),
                        format!(
                            "unknown action {:?} (known: {})",
                            a.get_ref(),
                            known.join(" ")
                        ),
                    );
                }
            }
        }
    }
    let mut objects = Vec::new();
    for o in raw.objects.iter().flatten() {
        match parse_object_pattern(o.get_ref()) {
            Ok(pat) => objects.push(pat),
            Err(e) => p.at(o.span(), e),
        }
    }
    let mut functions = Vec::new();
    for f in raw.functions.iter().flatten() {
        match parse_function_pattern(f.get_ref()) {
            Ok(pat) => functions.push(pat),
            Err(e) => p.at(f.span(), e),
        }
    }
    if raw.objects.as_ref().is_some_and(Vec::is_empty) && raw.functions.is_none() {
        p.at(r.span(), format!("rule {name}: objects is empty"));
    }
    if raw.objects.is_none() && raw.functions.is_none() {
        if is_allow {
            p.at(
                r.span(),
                format!("allow rule {name} needs objects or functions"),
            );
        } else {
            // A deny rule without objects or functions covers every object.
            objects.push(Pattern {
                text: "*".to_owned(),
                parts: None,
            });
        }
    }
    Rule {
        name,
        actions,
        objects,
        functions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_fold_like_postgres() {
        let p = parse_object_pattern("Public.Orders").unwrap();
        assert_eq!(
            p.parts,
            Some((
                Some(Part::Literal("public".into())),
                Part::Literal("orders".into())
            ))
        );
        let p = parse_object_pattern("public.\"Mixed.Case\"").unwrap();
        assert_eq!(
            p.parts,
            Some((
                Some(Part::Literal("public".into())),
                Part::Literal("Mixed.Case".into())
            ))
        );
        let p = parse_object_pattern("\"*\".x").unwrap();
        assert_eq!(
            p.parts,
            Some((Some(Part::Literal("*".into())), Part::Literal("x".into())))
        );
        assert_eq!(parse_object_pattern("*").unwrap().parts, None);
        assert!(parse_object_pattern("orders").is_err());
        assert!(parse_object_pattern("a.b.c").is_err());
        assert!(parse_object_pattern("a..b").is_err());
        assert!(parse_object_pattern("a. b").is_err());
        assert!(parse_function_pattern("dblink*").is_ok());
        assert!(parse_function_pattern("a.b.c").is_err());
    }
}
