//! pgward's own queries on an upstream (the server catalog it decides against): one simple
//! Query on a connection of pgward's own, rows as text.

use bytes::{Buf, BytesMut};
use pgward_wire::{backend, build};
use tokio::io::AsyncWriteExt;

use crate::connect::{read_backend_message, ConnectError, Upstream};

/// Largest single row message accepted (catalog rows are a few hundred bytes).
const MAX_ROW: usize = 1 << 20;

/// Most rows one query may return: a bound on memory whatever the server sends.
const MAX_ROWS: usize = 2_000_000;

impl Upstream {
    /// Runs `sql` (one statement, simple protocol) on a new connection to `database` signed in
    /// with pgward's own credential, and returns every row's values as text (`None` for
    /// NULL). The connection is closed afterwards. Bounded by the upstream's connect timeout.
    pub async fn query_rows(
        &self,
        database: &str,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ConnectError> {
        let params = [("application_name".to_owned(), "pgward (catalog)".to_owned())];
        let mut session = self.connect(database, &params).await?;
        tokio::time::timeout(self.timeout(), async {
            let mut out = BytesMut::new();
            build::query(&mut out, sql);
            session
                .stream
                .write_all(&out)
                .await
                .map_err(|e| self.protocol_err(format!("write failed: {e}")))?;
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut rows = Vec::new();
            let mut failed = None;
            loop {
                let (tag, body) = read_backend_message(&mut session.stream, &mut buf, MAX_ROW)
                    .await
                    .map_err(|e| self.protocol_err(e))?;
                match tag {
                    b'D' => {
                        if rows.len() >= MAX_ROWS {
                            return Err(self.protocol_err(format!(
                                "more than {MAX_ROWS} rows in pgward's own query"
                            )));
                        }
                        rows.push(data_row(&body).map_err(|e| self.protocol_err(e))?);
                    }
                    b'E' => failed = Some(backend::error_fields(&body)),
                    b'Z' => break,
                    // RowDescription, CommandComplete, notices, parameter changes.
                    _ => {}
                }
            }
            let mut bye = BytesMut::new();
            build::terminate(&mut bye);
            let _ = session.stream.write_all(&bye).await;
            match failed {
                Some(fields) => Err(ConnectError::Server {
                    upstream: self.name().to_owned(),
                    fields,
                }),
                None => Ok(rows),
            }
        })
        .await
        .map_err(|_| self.timeout_err())?
    }
}

/// A DataRow's values as text.
fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, String> {
    let mut b = body;
    if b.remaining() < 2 {
        return Err("short DataRow".into());
    }
    let n = b.get_i16();
    let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        if b.remaining() < 4 {
            return Err("short DataRow".into());
        }
        let len = b.get_i32();
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = len as usize;
        if b.remaining() < len {
            return Err("short DataRow".into());
        }
        out.push(Some(String::from_utf8_lossy(&b[..len]).into_owned()));
        b.advance(len);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::data_row;

    #[test]
    fn data_rows_decode() {
        let mut body = vec![0, 2, 0, 0, 0, 2, b'h', b'i', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(data_row(&body).unwrap(), vec![Some("hi".to_owned()), None]);
        body.truncate(7);
        assert!(data_row(&body).is_err());
        assert!(data_row(&[0]).is_err());
    }
}
