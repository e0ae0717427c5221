//! Shipping sinks: copies of the log in a PostgreSQL table ([`postgres`]) and in Azure
//! Monitor Logs ([`azure_monitor`]).
//!
//! Both work the same way: the writer thread appends each sealed batch to the sink's disk
//! [`spool`] (one write(2), no network) and returns; the sink's own thread reads the
//! spool, ships batches with retry and backoff, and advances the spool's cursor only
//! after the destination acknowledged them. An outage or a restart therefore loses
//! nothing (up to the spool's size bound); the PostgreSQL table also makes duplicates
//! impossible (`on conflict do nothing`).

pub mod azure_monitor;
pub mod postgres;
mod shipping;
pub(crate) mod spool;

pub use azure_monitor::{AccessTokens, AzureMonitorConfig, TokenFile};
pub use postgres::{PgTls, PostgresSinkConfig};
pub use shipping::{ShippingSink, SinkMonitor, SinkStatus};
