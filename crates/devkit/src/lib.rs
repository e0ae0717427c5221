//! Local stand-ins used only by `pgward demo`, `pgward token`, `pgward issuer` and the
//! tests: a throwaway PostgreSQL server (`postgres`), generated TLS certificates
//! (`certs`), Azure's managed-identity and Entra token endpoints (`azure_identity`),
//! Azure Monitor Logs Ingestion (`azure_monitor`) and a development Entra token issuer
//! with forged attack tokens (`entra_issuer`). Nothing here is used when pgward serves
//! real traffic: the `pgward` binary links this crate only with its `dev-tools` feature,
//! which production builds leave off.

pub mod azure_identity;
pub mod azure_monitor;
pub mod certs;
pub mod entra_issuer;
pub mod postgres;

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests and the demo).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
