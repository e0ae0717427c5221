//! Which columns a role masks: the policy file's `mask` and `unmask` entries, compiled,
//! and the masks in force for one caller (see docs/masking.md).

use serde::Deserialize;
use toml::Spanned;

use crate::mask::{ColumnMask, MaskKind};
use crate::pattern::{split_pattern, Part};

/// A column pattern `schema.table.column`, each part a literal or a glob.
#[derive(Debug, Clone)]
pub(crate) struct ColumnPattern {
    /// As written in the policy (kept for debugging output).
    #[allow(dead_code)]
    pub text: String,
    schema: Part,
    table: Part,
    column: Part,
}

impl ColumnPattern {
    fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        // A glob never reaches into the system schemas: `*.*.name` must not mask the
        // catalogs psql and drivers read.
        let system = matches!(schema, "pg_catalog" | "information_schema");
        if system && !matches!(self.schema, Part::Literal(_)) {
            return false;
        }
        self.schema.matches(schema) && self.table.matches(table) && self.column.matches(column)
    }

    fn may_match_table(&self, schema: &str, table: &str) -> bool {
        let system = matches!(schema, "pg_catalog" | "information_schema");
        (!system || matches!(self.schema, Part::Literal(_)))
            && self.schema.matches(schema)
            && self.table.matches(table)
    }
}

/// One compiled `mask = [...]` entry of a role.
#[derive(Debug, Clone)]
pub(crate) struct MaskRule {
    pub name: String,
    pub columns: Vec<ColumnPattern>,
    pub kind: MaskKind,
    /// `filter = "equality"`: `col = literal/parameter` and `col IN (...)` are allowed.
    pub equality: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMask {
    name: Option<Spanned<String>>,
    columns: Vec<Spanned<String>>,
    with: Spanned<String>,
    filter: Option<Spanned<String>>,
    // Other names people reach for are accepted too (documented in docs/masking.md).
    #[serde(alias = "replacement")]
    value: Option<String>,
    #[serde(alias = "keep_first", alias = "show_first", alias = "prefix")]
    first: Option<u32>,
    #[serde(alias = "keep_last", alias = "show_last", alias = "suffix")]
    last: Option<u32>,
    #[serde(alias = "mask_with")]
    padding: Option<String>,
}

/// Parses `schema.table.column` into three parts (globs allowed; `exact` refuses them).
fn parse_column_pattern(text: &str, exact: bool) -> Result<ColumnPattern, String> {
    let parts = split_pattern(text)?;
    let [schema, table, column] = <[Part; 3]>::try_from(parts).map_err(|_| {
        format!("column {text:?} must be schema.table.column (for example public.customers.email, *.*.ssn)")
    })?;
    if exact
        && [&schema, &table, &column]
            .iter()
            .any(|p| matches!(p, Part::Glob(_)))
    {
        return Err(format!(
            "unmask column {text:?} must name one column exactly (no '*'): an unmask never opens more than it names"
        ));
    }
    Ok(ColumnPattern {
        text: text.to_owned(),
        schema,
        table,
        column,
    })
}

/// Compiles a role's `mask` entries; problems are reported through `problem(span, message)`.
pub(crate) fn compile_masks(
    role: &str,
    raw: &[Spanned<RawMask>],
    problem: &mut dyn FnMut(std::ops::Range<usize>, String),
) -> Vec<MaskRule> {
    let mut out = Vec::new();
    for (i, m) in raw.iter().enumerate() {
        let r = m.get_ref();
        let name = r
            .name
            .as_ref()
            .map_or_else(|| format!("{role}.mask[{i}]"), |n| n.get_ref().clone());
        let mut columns = Vec::new();
        if r.columns.is_empty() {
            problem(m.span(), format!("mask {name}: columns is empty"));
        }
        for c in &r.columns {
            match parse_column_pattern(c.get_ref(), false) {
                Ok(p) => columns.push(p),
                Err(e) => problem(c.span(), format!("mask {name}: {e}")),
            }
        }
        let with = r.with.get_ref().as_str();
        let kind = match with {
            "redact" => MaskKind::Redact {
                value: r.value.clone(),
            },
            "null" => MaskKind::Null,
            "hash" => MaskKind::Hash,
            "partial" => MaskKind::Partial {
                first: r.first.unwrap_or(0),
                last: r.last.unwrap_or(0),
                padding: r.padding.clone().unwrap_or_else(|| "****".to_owned()),
            },
            "email" => MaskKind::Email,
            other => {
                problem(
                    r.with.span(),
                    format!("mask {name}: with = {other:?} is not a mask (redact, null, hash, partial, email)"),
                );
                MaskKind::Null
            }
        };
        if r.value.is_some() && with != "redact" {
            problem(
                m.span(),
                format!("mask {name}: value applies only to redact"),
            );
        }
        if (r.first.is_some() || r.last.is_some() || r.padding.is_some()) && with != "partial" {
            problem(
                m.span(),
                format!("mask {name}: first, last and padding apply only to partial"),
            );
        }
        if with == "partial" && r.first.unwrap_or(0) == 0 && r.last.unwrap_or(0) == 0 {
            problem(
                m.span(),
                format!("mask {name}: partial keeps nothing (set first or last, or use redact)"),
            );
        }
        let equality = match &r.filter {
            None => false,
            Some(f) if f.get_ref() == "equality" => true,
            Some(f) if f.get_ref() == "none" => false,
            Some(f) => {
                problem(
                    f.span(),
                    format!(
                        "mask {name}: filter = {:?} is not known (\"equality\" or \"none\")",
                        f.get_ref()
                    ),
                );
                false
            }
        };
        out.push(MaskRule {
            name,
            columns,
            kind,
            equality,
        });
    }
    out
}

/// Compiles a role's `unmask` list (exact column names).
pub(crate) fn compile_unmask(
    role: &str,
    raw: &[Spanned<String>],
    problem: &mut dyn FnMut(std::ops::Range<usize>, String),
) -> Vec<ColumnPattern> {
    raw.iter()
        .filter_map(|c| match parse_column_pattern(c.get_ref(), true) {
            Ok(p) => Some(p),
            Err(e) => {
                problem(c.span(), format!("role {role}: {e}"));
                None
            }
        })
        .collect()
}

/// The masks in force for one caller: every mask of every role they hold, and the columns
/// one of their roles unmasks.
#[derive(Debug, Clone, Default)]
pub struct MaskSet {
    pub(crate) rules: Vec<MaskRule>,
    pub(crate) unmask: Vec<ColumnPattern>,
}

impl MaskSet {
    /// Whether the caller has any mask at all (nothing is planned otherwise).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The mask of one column for this caller, if any: the strictest of the masks naming
    /// it, unless one of the caller's roles unmasks it by its exact name.
    pub fn column_mask(&self, schema: &str, table: &str, column: &str) -> Option<ColumnMask> {
        let mut found: Option<ColumnMask> = None;
        for r in &self.rules {
            if !r.columns.iter().any(|p| p.matches(schema, table, column)) {
                continue;
            }
            found = Some(match found {
                None => ColumnMask {
                    column: column_name(schema, table, column),
                    kind: r.kind.clone(),
                    rule: r.name.clone(),
                    equality: r.equality,
                    type_oid: 0,
                    category: 'X',
                },
                Some(mut m) => {
                    if m.kind != r.kind {
                        // Several masks: the one that reveals least; two that reveal
                        // different parts (partial and email) become a redaction.
                        m.kind = match m.kind.reveals().cmp(&r.kind.reveals()) {
                            std::cmp::Ordering::Less => m.kind,
                            std::cmp::Ordering::Greater => r.kind.clone(),
                            std::cmp::Ordering::Equal => MaskKind::Redact { value: None },
                        };
                    }
                    m.equality &= r.equality;
                    m.rule = format!("{}, {}", m.rule, r.name);
                    m
                }
            });
        }
        if found.is_some() && self.unmask.iter().any(|p| p.matches(schema, table, column)) {
            return None;
        }
        found
    }

    /// Whether a mask may name a column of this table (for upstreams where masks cannot be
    /// planned).
    pub(crate) fn may_mask_table(&self, schema: &str, table: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.columns.iter().any(|p| p.may_match_table(schema, table)))
    }
}

fn column_name(schema: &str, table: &str, column: &str) -> String {
    use crate::analyze::quote;
    format!("{}.{}.{}", quote(schema), quote(table), quote(column))
}
