//! The PostgreSQL backend messages a TDS result turns into (text format only).

use bytes::{BufMut, BytesMut};

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgColumn {
    pub name: String,
    pub type_oid: u32,
    /// pg_type.typlen (-1 for variable length).
    pub type_len: i16,
}

fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    at
}

fn finish(buf: &mut BytesMut, at: usize) {
    let len = u32::try_from(buf.len() - at).unwrap_or(u32::MAX);
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside a name would end the string early on the client: drop it.
    buf.extend(s.bytes().filter(|b| *b != 0));
    buf.put_u8(0);
}

/// RowDescription (`T`), every column in text format.
pub fn row_description(buf: &mut BytesMut, cols: &[PgColumn]) {
    let at = begin(buf, b'T');
    buf.put_u16(u16::try_from(cols.len()).unwrap_or(u16::MAX));
    for c in cols {
        cstr(buf, &c.name);
        buf.put_u32(0); // table oid
        buf.put_u16(0); // column number
        buf.put_u32(c.type_oid);
        buf.put_i16(c.type_len);
        buf.put_i32(-1); // type modifier
        buf.put_u16(0); // text format
    }
    finish(buf, at);
}

/// DataRow (`D`) whose values `write` puts straight into `buf`, so no value needs a buffer
/// of its own; `write` returns `None` (having written nothing) for SQL NULL.
pub fn data_row<T>(
    buf: &mut BytesMut,
    cells: impl IntoIterator<Item = T>,
    mut write: impl FnMut(&mut BytesMut, T) -> Option<()>,
) {
    let at = begin(buf, b'D');
    let count_at = buf.len();
    buf.put_u16(0);
    let mut count: usize = 0;
    for cell in cells {
        count += 1;
        let len_at = buf.len();
        buf.put_i32(0);
        let len = match write(buf, cell) {
            None => -1,
            Some(()) => i32::try_from(buf.len() - len_at - 4).unwrap_or(i32::MAX),
        };
        buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    }
    let count = u16::try_from(count).unwrap_or(u16::MAX);
    buf[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
    finish(buf, at);
}

/// CommandComplete (`C`).
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let at = begin(buf, b'C');
    cstr(buf, tag);
    finish(buf, at);
}

/// EmptyQueryResponse (`I`).
pub fn empty_query(buf: &mut BytesMut) {
    let at = begin(buf, b'I');
    finish(buf, at);
}
