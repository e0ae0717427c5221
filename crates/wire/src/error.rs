use thiserror::Error;

/// A protocol violation by the peer. Each maps to SQLSTATE 08P01 and closes the connection.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("invalid length {len} in {what}")]
    BadLength { what: &'static str, len: i64 },
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("malformed {what}: {detail}")]
    Malformed {
        what: &'static str,
        detail: &'static str,
    },
}

impl WireError {
    pub fn malformed(what: &'static str, detail: &'static str) -> Self {
        Self::Malformed { what, detail }
    }
}
