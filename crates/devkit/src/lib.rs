//! Local stand-ins used only by `pgward demo` and the tests: a throwaway PostgreSQL
//! server (`postgres`) and generated TLS certificates (`certs`). Nothing here is used
//! when pgward serves real traffic.

pub mod azure_identity;
pub mod azure_monitor;
pub mod certs;
pub mod postgres;

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests and the demo).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
