//! Column masks: the types a mask plan is made of. Which columns a role masks is in
//! mask_rules.rs; how a statement's results are masked (or why it is denied) in
//! lineage.rs; the proxy applies plans on the stream (crates/proxy/src/masking.rs).

use std::fmt;
use std::sync::Arc;

/// How a masked value is replaced.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MaskKind {
    /// A fixed value of the column's type family (`value` for string columns).
    Redact {
        /// The string returned for string columns (default `****`).
        value: Option<String>,
    },
    /// SQL NULL.
    Null,
    /// A keyed HMAC-SHA-256 of the value, as hex: equal values give equal hashes, so joins
    /// on the masked value still work, and nobody without the key can build a dictionary.
    Hash,
    /// The first `first` and last `last` characters, with `padding` between.
    Partial {
        /// Characters kept at the start.
        first: u32,
        /// Characters kept at the end.
        last: u32,
        /// What replaces the rest.
        padding: String,
    },
    /// An e-mail address with its local part replaced (`****@contoso.com`).
    Email,
}

impl MaskKind {
    /// The name used in the policy file.
    pub fn name(&self) -> &'static str {
        match self {
            MaskKind::Redact { .. } => "redact",
            MaskKind::Null => "null",
            MaskKind::Hash => "hash",
            MaskKind::Partial { .. } => "partial",
            MaskKind::Email => "email",
        }
    }

    /// How much a mask reveals, for choosing the strictest of several.
    pub(crate) fn reveals(&self) -> u8 {
        match self {
            MaskKind::Null => 0,
            MaskKind::Redact { .. } => 1,
            MaskKind::Hash => 2,
            MaskKind::Partial { .. } | MaskKind::Email => 3,
        }
    }

    /// Whether this mask can be applied to a column of this type (base type OID and
    /// `pg_type.typcategory`).
    pub fn fits(&self, type_oid: u32, category: char) -> bool {
        match self {
            MaskKind::Null => true,
            MaskKind::Hash | MaskKind::Partial { .. } | MaskKind::Email => category == 'S',
            MaskKind::Redact { .. } => category == 'S' || redact_types::supported(type_oid),
        }
    }
}

impl fmt::Display for MaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskKind::Partial {
                first,
                last,
                padding,
            } => write!(
                f,
                "partial(first {first}, last {last}, padding {padding:?})"
            ),
            MaskKind::Redact { value: Some(v) } => write!(f, "redact({v:?})"),
            other => f.write_str(other.name()),
        }
    }
}

/// The non-string types `redact` has a fixed value for (see docs/masking.md).
pub mod redact_types {
    pub use pgward_wire::type_oid::{
        BOOL, BYTEA, DATE, FLOAT4, FLOAT8, INT2, INT4, INT8, JSON, JSONB, NUMERIC, OID, TIME,
        TIMESTAMP, TIMESTAMPTZ, UUID,
    };

    /// Whether `redact` has a value for this (non-string) type.
    pub fn supported(oid: u32) -> bool {
        matches!(
            oid,
            BOOL | BYTEA
                | INT8
                | INT2
                | INT4
                | OID
                | JSON
                | FLOAT4
                | FLOAT8
                | DATE
                | TIME
                | TIMESTAMP
                | TIMESTAMPTZ
                | NUMERIC
                | UUID
                | JSONB
        )
    }
}

/// One masked column as a caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMask {
    /// `schema.table.column`.
    pub column: String,
    /// The mask applied.
    pub kind: MaskKind,
    /// The mask rule(s) that apply, by name.
    pub rule: String,
    /// Whether equality filters on it are allowed.
    pub equality: bool,
    /// The column's type (its base type for a domain).
    pub type_oid: u32,
    /// `pg_type.typcategory` of that type.
    pub category: char,
}

/// What happens to one output column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputMask {
    /// Returned as the server sends it.
    Clear,
    /// A masked column returned as itself: its mask applies.
    Column(Arc<ColumnMask>),
    /// A value computed from the named masked columns: returned as NULL.
    Derived(Vec<String>),
}

impl OutputMask {
    /// Whether the value is rewritten.
    pub fn is_masked(&self) -> bool {
        !matches!(self, OutputMask::Clear)
    }
}

/// How one statement's results are masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskPlan {
    /// Per output column, in order (empty for a statement that returns no rows).
    pub outputs: Vec<OutputMask>,
    /// Masked columns (with their masks) the statement reads, for the audit record.
    pub columns: Vec<String>,
    /// Masked columns by the (relation OID, column number) a RowDescription names them
    /// with, views included: a second check on the stream.
    pub origins: Vec<(u32, i16, Arc<ColumnMask>)>,
}

impl MaskPlan {
    /// Whether any output column is rewritten.
    pub fn masks_output(&self) -> bool {
        self.outputs.iter().any(OutputMask::is_masked) || !self.origins.is_empty()
    }
}

/// Why masks deny a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskDenial {
    /// The rule's name (the mask's, or `builtin.mask`).
    pub rule: String,
    /// What was denied and why.
    pub reason: String,
}
