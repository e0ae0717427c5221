//! pgward reads a client's bytes as the server reads them: for every client_encoding pgward
//! accepts, every character the real PostgreSQL 15 server converts (every byte 0x80–0xFF of
//! the single-byte encodings, every two-byte and three-byte EUC character) decodes in pgward
//! to the same character, and whatever the server cannot convert pgward refuses too.

use pgward_policy::encoding::client_encoding;
use pgward_proto_tests::*;

const SINGLE_BYTE: &[&str] = &[
    "LATIN1",
    "LATIN2",
    "LATIN3",
    "LATIN4",
    "LATIN5",
    "LATIN6",
    "LATIN7",
    "LATIN8",
    "LATIN9",
    "LATIN10",
    "ISO_8859_5",
    "ISO_8859_6",
    "ISO_8859_7",
    "ISO_8859_8",
    "WIN866",
    "WIN874",
    "WIN1250",
    "WIN1251",
    "WIN1252",
    "WIN1253",
    "WIN1254",
    "WIN1255",
    "WIN1256",
    "WIN1257",
    "WIN1258",
    "KOI8R",
    "KOI8U",
];

/// `(bytes as hex, the server's code points or None)` for each byte string the query
/// yields in `hex` (a column of hex strings).
fn server_conversions(
    db: &Database,
    encoding: &str,
    hex_sql: &str,
) -> Vec<(Vec<u8>, Option<String>)> {
    let out = db.sql(
        "app",
        &format!(
            "SELECT h || ':' || coalesce(pgward_try_conv(decode(h, 'hex'), '{encoding}'), '-') \
             FROM ({hex_sql}) s(h)"
        ),
    );
    out.lines()
        .map(|l| {
            let (h, cps) = l.split_once(':').expect("hex:codepoints");
            let bytes = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect();
            (bytes, (cps != "-").then(|| cps.to_owned()))
        })
        .collect()
}

fn code_points(s: &str) -> String {
    s.chars()
        .map(|c| format!("{:X}", u32::from(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn conversions_match_the_server() {
    let db = Database::start();
    db.sql(
        "app",
        "CREATE FUNCTION pgward_try_conv(b bytea, enc name) RETURNS text LANGUAGE plpgsql AS $$
         DECLARE t text;
         BEGIN
           t := convert_from(b, enc);
           RETURN (SELECT string_agg(to_hex(ascii(c)), ' ' ORDER BY n)
                   FROM regexp_split_to_table(t, '') WITH ORDINALITY AS x(c, n));
         EXCEPTION WHEN others THEN RETURN NULL;
         END $$",
    );
    let mut mismatches = Vec::new();
    let mut compared = 0usize;
    let mut check = |encoding: &str, hex_sql: &str| {
        let enc = client_encoding(encoding).unwrap_or_else(|e| panic!("{encoding}: {e}"));
        for (bytes, server) in server_conversions(&db, encoding, hex_sql) {
            compared += 1;
            let ours = enc.decode(&bytes).ok().map(|s| code_points(&s));
            let server = server.map(|s| s.to_uppercase());
            // pgward may refuse more than the server (it fails closed), never read
            // something else.
            let differs = match (&ours, &server) {
                (Some(o), Some(s)) => o != s,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if differs {
                mismatches.push(format!(
                    "{encoding} {bytes:02X?}: server {server:?}, pgward {ours:?}"
                ));
            }
        }
    };
    for e in SINGLE_BYTE {
        check(
            e,
            "SELECT lpad(to_hex(g), 2, '0') FROM generate_series(128, 255) g",
        );
    }
    let pairs = "SELECT to_hex(a) || to_hex(b) FROM generate_series(161, 254) a, generate_series(161, 254) b";
    for e in ["EUC_JP", "EUC_KR", "EUC_CN"] {
        check(e, pairs);
    }
    check(
        "EUC_JP",
        "SELECT '8e' || to_hex(b) FROM generate_series(161, 223) b",
    );
    check(
        "EUC_JP",
        "SELECT '8f' || to_hex(a) || to_hex(b) FROM generate_series(161, 254) a, generate_series(161, 254) b",
    );
    println!(
        "compared {compared} characters, {} differ",
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} characters read differently from the server:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
