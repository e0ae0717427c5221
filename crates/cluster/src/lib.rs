//! State pgward replicas share (`[cluster]`, docs/operations.md "Scaling out"), kept in
//! a store operators already run: a PostgreSQL control database (pg.rs) or Redis (redis.rs).
//!
//! What is shared, and how little the hot path pays for it:
//! - instance names: each replica claims its name at start and refuses a duplicate;
//! - connection slots: one per session under a per-identity or per-role cap, taken at sign-in
//!   (one store round trip, only when a cap applies) and given back when the session ends; a
//!   dead replica's slots come back when its store connection closes (PostgreSQL) or its
//!   leases expire (Redis);
//! - statement rates: a token bucket per identity in the store, from which each replica
//!   leases a tenth of a second's worth at a time, so statements never wait for the store;
//! - failed sign-ins per client address;
//! - cancel keys: a CancelRequest no local session matches is broadcast, and the replica
//!   holding the session checks the key and forwards it.
//!
//! Every call is bounded by `timeout_ms`; a failed call marks the store down until the
//! background reconnect succeeds, and callers follow `on_store_error`.

mod cluster;
mod config;
mod metrics;
mod pg;
mod redis;
mod store;

pub use cluster::{Acquired, Cluster, Slots};
pub use config::{Backend, ClusterConfig, OnStoreError, PostgresStore, RedisStore};
pub use metrics::ClusterMetrics;
pub use pgward_upstream::{CredentialConfig, TlsMode};
pub use store::{CancelSink, Lease, Scope, SlotId, StoreError};
