#![warn(missing_docs)]
//! pgward's policy engine: load a role policy, analyse SQL with PostgreSQL's own parser, and
//! decide every statement.
//!
//! Pure and synchronous: no I/O besides parsing the policy text the caller read.
//!
//! ```
//! use pgward_policy::{DecisionCache, Policy, Principal, SessionState};
//! let policy = Policy::from_toml(r#"
//!     [[roles]]
//!     name = "analyst"
//!     members = { users = ["alice@contoso.com"] }
//!     allow = [ { actions = ["select"], objects = ["public.orders"] } ]
//! "#).unwrap();
//! let roles = policy.roles_for(&Principal { upn: "alice@contoso.com".into(), ..Default::default() });
//! let session = SessionState::new(&policy);
//! let cache = DecisionCache::new(10_000);
//! assert!(!cache.decide(&policy, &roles, &session, "SELECT * FROM orders").decision.blocks());
//! assert!(cache.decide(&policy, &roles, &session, "DELETE FROM orders").decision.blocks());
//! ```
//!
//! See docs/policy.md for the policy file format and the exact semantics.

mod analyze;
#[rustfmt::skip]
mod builtin_functions;
mod cache;
mod caller_name;
pub mod catalog;
mod decide;
pub mod encoding;
mod explain;
mod keyed;
mod lineage;
mod mask;
mod mask_rules;
mod parser;
mod pattern;
mod pg_grants;
mod policy;
mod server_catalog;
mod shape;
pub mod tsql;
#[rustfmt::skip]
mod walk_gen;
pub use walk_gen::STATEMENT_KINDS;

pub use analyze::{
    analyze, analyze_limited, Access, Action, Analysis, AnalysisError, FunctionRef, ObjectRef,
    SessionEffect, SettingChange, StatementAnalysis, MAX_SQL_LEN, PSEUDO_KINDS,
};
pub use cache::DecisionCache;
pub use caller_name::{caller_application_name, rewrite_set_application_name};
pub use decide::{
    Decision, Principal, QueryDecision, RoleSet, SessionState, StatementDecision, Verdict,
};
pub use explain::explain_decision;
pub use keyed::{keyed_state, KeyedState};
pub use mask::{redact_types, ColumnMask, MaskDenial, MaskKind, MaskPlan, OutputMask};
pub use mask_rules::MaskSet;
pub use pg_grants::{GrantPlan, GrantsQuery};
pub use policy::{Mode, Policy, PolicyError, PolicyProblem};
pub use server_catalog::{CatalogError, RelColumn, Relation, ServerCatalog};
