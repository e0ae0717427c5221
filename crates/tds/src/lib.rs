//! pgward's TDS side: sessions to Azure SQL Database (`kind = "azure-sql"` upstreams).
//!
//! `TdsSession` connects with tiberius (TDS 8.0 strict TLS via rustls with the aws-lc-rs
//! provider), signs in with an Entra access token (FEDAUTH), pins the caller's identity
//! with `sp_set_session_context ... @read_only = 1`, runs T-SQL batches and writes their
//! results as PostgreSQL messages (`types` has the type mapping, `errors` the SQLSTATEs).
//! Not yet run against a real Azure SQL server: tests use the stand-in in proto-tests.

pub mod client;
pub mod errors;
pub mod pg;
pub mod types;

pub use client::{
    impersonation_statement, AccessToken, BatchOutcome, Expect, SessionIdentity, StatementOutcome,
    TdsConnectError, TdsOptions, TdsSession, TdsTls,
};
