//! pgward's own queries on an upstream (the server catalog it decides against, the caller
//! identity table, grants): simple Query on a connection of pgward's own, rows as text.

use bytes::{Buf, BytesMut};
use pgward_wire::tag::backend as be;
use pgward_wire::{backend, build};
use tokio::io::AsyncWriteExt;

use crate::connect::{read_backend_message, ConnectError, Upstream, UpstreamSession};

/// Largest single row message accepted (catalog rows are a few hundred bytes).
const MAX_ROW: usize = 1 << 20;

/// Most rows one query may return: a bound on memory whatever the server sends.
const MAX_ROWS: usize = 2_000_000;

/// A row of text values (`None` for NULL).
pub type Row = Vec<Option<String>>;

impl Upstream {
    /// Runs `sql` (one statement, simple protocol) on a new connection to `database` signed in
    /// with pgward's own credential, and returns every row's values as text (`None` for
    /// NULL). The connection is closed afterwards. Bounded by the upstream's connect timeout.
    pub async fn query_rows(&self, database: &str, sql: &str) -> Result<Vec<Row>, ConnectError> {
        let mut session = self.own_session(database, "pgward (catalog)").await?;
        let rows = self.query_on(&mut session, sql).await;
        self.close_session(&mut session).await;
        rows
    }

    /// Ends a session of pgward's own politely (Terminate); errors are moot by then.
    pub async fn close_session(&self, session: &mut UpstreamSession) {
        let mut bye = BytesMut::new();
        build::terminate(&mut bye);
        let _ = session.stream.write_all(&bye).await;
    }

    /// A connection of pgward's own to `database` (its own credential), for its own
    /// queries: UTF-8 and standard-conforming strings, whatever the server's defaults, so
    /// the literals pgward writes are read as written.
    pub async fn own_session(
        &self,
        database: &str,
        application_name: &str,
    ) -> Result<UpstreamSession, ConnectError> {
        let params = [
            ("application_name".to_owned(), application_name.to_owned()),
            ("client_encoding".to_owned(), "UTF8".to_owned()),
            ("standard_conforming_strings".to_owned(), "on".to_owned()),
        ];
        self.connect(database, &params).await
    }

    /// Runs `sql` (simple protocol; several statements run as one implicit transaction) on
    /// a session of pgward's own and returns the rows. Bounded by the connect timeout; on
    /// any error other than the server's the session must be dropped.
    pub async fn query_on(
        &self,
        session: &mut UpstreamSession,
        sql: &str,
    ) -> Result<Vec<Row>, ConnectError> {
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
                    be::DATA_ROW => {
                        if rows.len() >= MAX_ROWS {
                            return Err(self.protocol_err(format!(
                                "more than {MAX_ROWS} rows in pgward's own query"
                            )));
                        }
                        rows.push(data_row(&body).map_err(|e| self.protocol_err(e))?);
                    }
                    be::ERROR_RESPONSE => failed = Some(backend::error_fields(&body)),
                    be::READY_FOR_QUERY => break,
                    // RowDescription, CommandComplete, notices, parameter changes.
                    _ => {}
                }
            }
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

impl UpstreamSession {
    /// Waits for the server's next message on a session of pgward's own (a notification
    /// on a session that ran LISTEN, say): its tag and body. Not bounded in time; the caller
    /// bounds it. Messages over 1 MiB end the session.
    pub async fn next_message(&mut self, buf: &mut BytesMut) -> Result<(u8, bytes::Bytes), String> {
        read_backend_message(&mut self.stream, buf, MAX_ROW).await
    }
}

/// `text` as a SQL string literal for pgward's own sessions (standard_conforming_strings
/// on, UTF-8): quotes doubled, NUL (which no text value can hold) removed.
pub fn quote_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\0' => {}
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `name` as a quoted SQL identifier: `"` doubled, NUL removed.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' => out.push_str("\"\""),
            '\0' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
    use super::{data_row, quote_ident, quote_literal};

    #[test]
    fn quoting_keeps_text_whole() {
        assert_eq!(quote_literal("o'brien\\x\0y"), "'o''brien\\xy'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn data_rows_decode() {
        let mut body = [&[0, 2, 0, 0, 0, 2][..], b"hi", &[0xff; 4]].concat();
        assert_eq!(data_row(&body).unwrap(), vec![Some("hi".to_owned()), None]);
        body.truncate(7);
        assert!(data_row(&body).is_err());
        assert!(data_row(&[0]).is_err());
    }
}
