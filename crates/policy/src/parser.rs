//! PostgreSQL's parser (libpg_query), with the cursor position of its errors.
//!
//! The `pg_query` crate's `parse` keeps only the message of a syntax error and drops the
//! cursor position, which a client needs to be told exactly what the server would say
//! (SQLSTATE 42601 with field `P`). The position is read from the same C functions the
//! crate calls (`pg_query_parse_protobuf`, `pg_query_scan`: linked into every binary by the
//! `pg_query` crate, the exact version pinned in Cargo.toml), without a fork of the crate.
//! The declarations below mirror `pg_query.h` of libpg_query 17-6.x.

use std::ffi::{c_char, c_int, CString};

// Fields mirror the C layout; only the error is read.
#[allow(dead_code)]
#[repr(C)]
struct PgQueryError {
    message: *mut c_char,
    funcname: *mut c_char,
    filename: *mut c_char,
    lineno: c_int,
    cursorpos: c_int,
    context: *mut c_char,
}

// Fields mirror the C layout; only the error is read.
#[allow(dead_code)]
#[repr(C)]
struct PgQueryProtobuf {
    len: usize,
    data: *mut c_char,
}

// Fields mirror the C layout; only the error is read.
#[allow(dead_code)]
#[repr(C)]
struct PgQueryProtobufParseResult {
    parse_tree: PgQueryProtobuf,
    stderr_buffer: *mut c_char,
    error: *mut PgQueryError,
}

// Fields mirror the C layout; only the error is read.
#[allow(dead_code)]
#[repr(C)]
struct PgQueryScanResult {
    pbuf: PgQueryProtobuf,
    stderr_buffer: *mut c_char,
    error: *mut PgQueryError,
}

extern "C" {
    fn pg_query_parse_protobuf(input: *const c_char) -> PgQueryProtobufParseResult;
    fn pg_query_free_protobuf_parse_result(result: PgQueryProtobufParseResult);
    fn pg_query_scan(input: *const c_char) -> PgQueryScanResult;
    fn pg_query_free_scan_result(result: PgQueryScanResult);
}

/// Where PostgreSQL's scanner stops on `sql` (an unterminated literal or comment, say): the
/// byte offset of the character its error points at. `None` if it scans cleanly or names
/// no position.
pub(crate) fn scan_error_offset(sql: &str) -> Option<usize> {
    let input = CString::new(sql).ok()?;
    // SAFETY: as in `parse`; only the error's position is read before the result is freed.
    let result = unsafe { pg_query_scan(input.as_ptr()) };
    let position = if result.error.is_null() {
        0
    } else {
        // SAFETY: a non-null error points at a valid PgQueryError until freed.
        unsafe { (*result.error).cursorpos }
    };
    // SAFETY: frees exactly the result returned above, once.
    unsafe { pg_query_free_scan_result(result) };
    let chars_before = usize::try_from(position).ok()?.checked_sub(1)?;
    sql.char_indices().nth(chars_before).map(|(i, _)| i)
}

/// Why the parser gave no tree.
#[derive(Debug)]
pub(crate) enum ParseFailure {
    /// PostgreSQL's parser rejected the text: its message, and the 1-based character
    /// position it points at (0 when it names none), as the server reports them.
    Syntax { message: String, position: u32 },
    /// The text holds a NUL byte (no PostgreSQL message can carry one).
    Nul,
    /// The tree could not be decoded (protobuf nesting over prost's limit of 100 messages).
    Decode,
}

/// Parses `sql` into PostgreSQL's raw parse tree. The tree comes from `pg_query::parse`
/// (whose protobuf decoding is compiled optimised with the crate, so deep trees fit any
/// thread's stack in every build); only when it fails is the parser asked again, through
/// the C interface, for the position the crate drops. A failing parse stops where the
/// error is, and the strings that reach it passed `check_complexity`, so this costs at
/// most one more bounded parse, and only for refused text.
pub(crate) fn parse(sql: &str) -> Result<pg_query::protobuf::ParseResult, ParseFailure> {
    match pg_query::parse(sql) {
        Ok(parsed) => Ok(parsed.protobuf),
        Err(pg_query::Error::Parse(message)) => Err(ParseFailure::Syntax {
            position: syntax_error_position(sql).unwrap_or(0),
            message,
        }),
        Err(pg_query::Error::Conversion(_)) => Err(ParseFailure::Nul),
        Err(pg_query::Error::Decode(_)) => Err(ParseFailure::Decode),
        Err(other) => Err(ParseFailure::Syntax {
            message: other.to_string(),
            position: 0,
        }),
    }
}

/// The cursor position of the parser's error on `sql` (1-based, in characters), if it
/// fails and names one.
fn syntax_error_position(sql: &str) -> Option<u32> {
    let input = CString::new(sql).ok()?;
    // SAFETY: `input` is a valid NUL-terminated string that outlives the call;
    // libpg_query copies what it needs and returns memory the result owns.
    let result = unsafe { pg_query_parse_protobuf(input.as_ptr()) };
    let position = if result.error.is_null() {
        0
    } else {
        // SAFETY: a non-null error points at a valid PgQueryError until freed below.
        unsafe { (*result.error).cursorpos }
    };
    // SAFETY: frees exactly the result returned above, once; nothing borrowed from it
    // survives.
    unsafe { pg_query_free_protobuf_parse_result(result) };
    u32::try_from(position).ok().filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_carry_the_servers_message_and_position() {
        let Err(ParseFailure::Syntax { message, position }) = parse("SELEC 1") else {
            panic!("SELEC 1 parsed");
        };
        assert_eq!(message, "syntax error at or near \"SELEC\"");
        assert_eq!(position, 1);
        // Positions count characters of the whole string, not bytes.
        let Err(ParseFailure::Syntax { message, position }) =
            parse("SELECT 'é'; SELECT 1 FROM WHERE")
        else {
            panic!("parsed");
        };
        assert_eq!(message, "syntax error at or near \"WHERE\"");
        assert_eq!(position, 27);
        assert!(matches!(parse("SELECT 1\0"), Err(ParseFailure::Nul)));
        assert_eq!(scan_error_offset("SELECT 'é', 'open"), Some(13));
        assert_eq!(scan_error_offset("SELECT 1"), None);
        assert!(parse("").is_ok_and(|p| p.stmts.is_empty()));
        assert!(parse("SELECT 1; SELECT 2").is_ok_and(|p| p.stmts.len() == 2));
    }
}
