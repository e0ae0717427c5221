//! Client encodings: which ones pgward accepts, and reading a client's bytes as the server
//! reads them.
//!
//! PostgreSQL converts a client's text from `client_encoding` to the server's encoding
//! before its parser sees it. pgward parses the same text, so it converts the same way (to
//! UTF-8, the server encoding pgward assumes): for every encoding accepted here, every byte
//! sequence the server accepts decodes to the characters the server's own conversion
//! produces (`proto-tests/tests/client_encodings.rs` compares every single-byte character
//! and every two- and three-byte EUC character with a real server). Encodings in which a
//! byte below 0x80 can be the second byte of a character (SJIS, BIG5, GBK, UHC, GB18030,
//! JOHAB, SHIFT_JIS_2004) are refused: there a quote or backslash can hide inside a
//! character, and a reader that is off by one byte reads a different statement.

use std::borrow::Cow;

use encoding_rs::Encoding;

/// How a client encoding's bytes become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    /// UTF8, and SQL_ASCII (no conversion; a UTF-8 server checks the bytes are UTF-8).
    Utf8,
    /// ISO 8859-1: each byte is the code point of the same number.
    Latin1,
    /// ISO 8859-9: windows-1254 except that 0x80–0x9F are the C1 controls.
    Latin5,
    /// A single-byte encoding of the Encoding Standard, with the bytes where PostgreSQL's
    /// table differs from it (`(byte, PostgreSQL's character or None if it has none)`).
    Single(&'static Encoding, &'static [(u8, Option<char>)]),
    /// EUC_JP, EUC_KR, EUC_CN: PostgreSQL's byte structure is checked first, so every byte
    /// of a multibyte character is 0x8E, 0x8F or in 0xA1–0xFE.
    Euc(Euc, &'static Encoding, &'static [EucFix]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Euc {
    /// Two bytes A1–FE; 8E + A1–DF (half-width katakana); 8F + two bytes A1–FE.
    Jp,
    /// Two bytes A1–FE only.
    TwoByte,
}

/// A client encoding pgward accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientEncoding {
    name: &'static str,
    decoder: Decoder,
}

/// Why a client_encoding value is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodingRefusal {
    /// PostgreSQL knows no such encoding (the server would refuse it too).
    Unknown,
    /// A byte below 0x80 can be part of a multibyte character (the name is PostgreSQL's).
    Unsafe(&'static str),
    /// Safe, but pgward has no conversion it has checked against the server's.
    Unsupported(&'static str),
}

impl std::fmt::Display for EncodingRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown => f.write_str("PostgreSQL knows no such client_encoding"),
            Self::Unsafe(n) => write!(
                f,
                "client_encoding {n} is refused by pgward: in {n} a quote or backslash can be \
                 the second byte of a character; use UTF8 (or a single-byte or EUC encoding)"
            ),
            Self::Unsupported(n) => write!(
                f,
                "client_encoding {n} is not supported by pgward; use UTF8"
            ),
        }
    }
}

/// PostgreSQL's names and aliases (`pg_encname_tbl` in src/common/encnames.c), compared
/// after `clean_encoding_name`: ASCII letters and digits only, lower case.
const NAMES: &[(&str, &str)] = &[
    ("abc", "WIN1258"),
    ("alt", "WIN866"),
    ("big5", "BIG5"),
    ("euccn", "EUC_CN"),
    ("eucjis2004", "EUC_JIS_2004"),
    ("eucjp", "EUC_JP"),
    ("euckr", "EUC_KR"),
    ("euctw", "EUC_TW"),
    ("gb18030", "GB18030"),
    ("gbk", "GBK"),
    ("iso88591", "LATIN1"),
    ("iso885910", "LATIN6"),
    ("iso885913", "LATIN7"),
    ("iso885914", "LATIN8"),
    ("iso885915", "LATIN9"),
    ("iso885916", "LATIN10"),
    ("iso88592", "LATIN2"),
    ("iso88593", "LATIN3"),
    ("iso88594", "LATIN4"),
    ("iso88595", "ISO_8859_5"),
    ("iso88596", "ISO_8859_6"),
    ("iso88597", "ISO_8859_7"),
    ("iso88598", "ISO_8859_8"),
    ("iso88599", "LATIN5"),
    ("johab", "JOHAB"),
    ("koi8", "KOI8R"),
    ("koi8r", "KOI8R"),
    ("koi8u", "KOI8U"),
    ("latin1", "LATIN1"),
    ("latin10", "LATIN10"),
    ("latin2", "LATIN2"),
    ("latin3", "LATIN3"),
    ("latin4", "LATIN4"),
    ("latin5", "LATIN5"),
    ("latin6", "LATIN6"),
    ("latin7", "LATIN7"),
    ("latin8", "LATIN8"),
    ("latin9", "LATIN9"),
    ("mskanji", "SJIS"),
    ("muleinternal", "MULE_INTERNAL"),
    ("shiftjis", "SJIS"),
    ("shiftjis2004", "SHIFT_JIS_2004"),
    ("sjis", "SJIS"),
    ("sqlascii", "SQL_ASCII"),
    ("tcvn", "WIN1258"),
    ("tcvn5712", "WIN1258"),
    ("uhc", "UHC"),
    ("unicode", "UTF8"),
    ("utf8", "UTF8"),
    ("vscii", "WIN1258"),
    ("win", "WIN1251"),
    ("win1250", "WIN1250"),
    ("win1251", "WIN1251"),
    ("win1252", "WIN1252"),
    ("win1253", "WIN1253"),
    ("win1254", "WIN1254"),
    ("win1255", "WIN1255"),
    ("win1256", "WIN1256"),
    ("win1257", "WIN1257"),
    ("win1258", "WIN1258"),
    ("win866", "WIN866"),
    ("win874", "WIN874"),
    ("win932", "SJIS"),
    ("win936", "GBK"),
    ("win949", "UHC"),
    ("win950", "BIG5"),
    ("windows1250", "WIN1250"),
    ("windows1251", "WIN1251"),
    ("windows1252", "WIN1252"),
    ("windows1253", "WIN1253"),
    ("windows1254", "WIN1254"),
    ("windows1255", "WIN1255"),
    ("windows1256", "WIN1256"),
    ("windows1257", "WIN1257"),
    ("windows1258", "WIN1258"),
    ("windows866", "WIN866"),
    ("windows874", "WIN874"),
    ("windows932", "SJIS"),
    ("windows936", "GBK"),
    ("windows949", "UHC"),
    ("windows950", "BIG5"),
];

// Where PostgreSQL's conversion tables (src/backend/utils/mb/Unicode) differ from the
// Encoding Standard's, found by proto-tests/tests/client_encodings.rs against a real server:
// bytes the windows code pages leave undefined (the Encoding Standard reads them as C1
// controls, PostgreSQL refuses them), and KOI8-U's two box-drawing characters (the Encoding
// Standard's KOI8-U is KOI8-RU there).
const WIN874_FIXES: &[(u8, Option<char>)] = &[
    (0x81, None),
    (0x82, None),
    (0x83, None),
    (0x84, None),
    (0x86, None),
    (0x87, None),
    (0x88, None),
    (0x89, None),
    (0x8A, None),
    (0x8B, None),
    (0x8C, None),
    (0x8D, None),
    (0x8E, None),
    (0x8F, None),
    (0x90, None),
    (0x98, None),
    (0x99, None),
    (0x9A, None),
    (0x9B, None),
    (0x9C, None),
    (0x9D, None),
    (0x9E, None),
    (0x9F, None),
];
const WIN1250_FIXES: &[(u8, Option<char>)] = &[
    (0x81, None),
    (0x83, None),
    (0x88, None),
    (0x90, None),
    (0x98, None),
];
const WIN1251_FIXES: &[(u8, Option<char>)] = &[(0x98, None)];
const WIN1252_FIXES: &[(u8, Option<char>)] = &[
    (0x81, None),
    (0x8D, None),
    (0x8F, None),
    (0x90, None),
    (0x9D, None),
];
const WIN1253_FIXES: &[(u8, Option<char>)] = &[
    (0x81, None),
    (0x88, None),
    (0x8A, None),
    (0x8C, None),
    (0x8D, None),
    (0x8E, None),
    (0x8F, None),
    (0x90, None),
    (0x98, None),
    (0x9A, None),
    (0x9C, None),
    (0x9D, None),
    (0x9E, None),
    (0x9F, None),
];
const WIN1254_FIXES: &[(u8, Option<char>)] = &[
    (0x81, None),
    (0x8D, None),
    (0x8E, None),
    (0x8F, None),
    (0x90, None),
    (0x9D, None),
    (0x9E, None),
];
const WIN1255_FIXES: &[(u8, Option<char>)] = &[
    (0x81, None),
    (0x8A, None),
    (0x8C, None),
    (0x8D, None),
    (0x8E, None),
    (0x8F, None),
    (0x90, None),
    (0x9A, None),
    (0x9C, None),
    (0x9D, None),
    (0x9E, None),
    (0x9F, None),
    (0xCA, None),
];
const WIN1257_FIXES: &[(u8, Option<char>)] = &[
    (0x81, None),
    (0x83, None),
    (0x88, None),
    (0x8A, None),
    (0x8C, None),
    (0x90, None),
    (0x98, None),
    (0x9A, None),
    (0x9C, None),
    (0x9F, None),
];
const WIN1258_FIXES: &[(u8, Option<char>)] = &[
    (0x81, None),
    (0x8A, None),
    (0x8D, None),
    (0x8E, None),
    (0x8F, None),
    (0x90, None),
    (0x9A, None),
    (0x9D, None),
    (0x9E, None),
];
const KOI8U_FIXES: &[(u8, Option<char>)] = &[(0xAE, Some('╝')), (0xBE, Some('╬'))];

/// A difference of an EUC table: the characters `prefix` + `lo..=hi` are PostgreSQL's `to`
/// (None: PostgreSQL has no such character and refuses the text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EucFix {
    prefix: &'static [u8],
    lo: u8,
    hi: u8,
    to: Option<char>,
}

const fn fix(prefix: &'static [u8], lo: u8, hi: u8, to: Option<char>) -> EucFix {
    EucFix { prefix, lo, hi, to }
}

/// EUC_JP: rows 0xF9–0xFC (IBM extensions in the Encoding Standard's table) and two JIS X
/// 0212 characters.
const EUC_JP_FIXES: &[EucFix] = &[
    fix(&[0x8F, 0xA2], 0xC3, 0xC3, Some('\u{FFE4}')),
    fix(&[0xF9], 0xA1, 0xFE, None),
    fix(&[0xFA], 0xA1, 0xFE, None),
    fix(&[0xFB], 0xA1, 0xFE, None),
    fix(&[0xFC], 0xA1, 0xEE, None),
    fix(&[0xFC], 0xF1, 0xFE, None),
    fix(&[0x8F, 0xA2], 0xB7, 0xB7, None),
];

/// EUC_CN: GB 2312 only (the Encoding Standard's GBK adds user-defined rows and
/// extensions), and two punctuation marks GBK maps elsewhere.
const EUC_CN_FIXES: &[EucFix] = &[
    fix(&[0xA1], 0xA4, 0xA4, Some('\u{30FB}')),
    fix(&[0xA1], 0xAA, 0xAA, Some('\u{2015}')),
    fix(&[0xA2], 0xA1, 0xB0, None),
    fix(&[0xA2], 0xE3, 0xE4, None),
    fix(&[0xA2], 0xEF, 0xF0, None),
    fix(&[0xA2], 0xFD, 0xFE, None),
    fix(&[0xA4], 0xF4, 0xFE, None),
    fix(&[0xA5], 0xF7, 0xFE, None),
    fix(&[0xA6], 0xB9, 0xC0, None),
    fix(&[0xA6], 0xD9, 0xFE, None),
    fix(&[0xA7], 0xC2, 0xD0, None),
    fix(&[0xA7], 0xF2, 0xFE, None),
    fix(&[0xA8], 0xBB, 0xC4, None),
    fix(&[0xA8], 0xEA, 0xFE, None),
    fix(&[0xA9], 0xA1, 0xA3, None),
    fix(&[0xA9], 0xF0, 0xFE, None),
    fix(&[0xAA], 0xA1, 0xFE, None),
    fix(&[0xAB], 0xA1, 0xFE, None),
    fix(&[0xAC], 0xA1, 0xFE, None),
    fix(&[0xAD], 0xA1, 0xFE, None),
    fix(&[0xAE], 0xA1, 0xFE, None),
    fix(&[0xAF], 0xA1, 0xFE, None),
    fix(&[0xD7], 0xFA, 0xFE, None),
    fix(&[0xF8], 0xA1, 0xFE, None),
    fix(&[0xF9], 0xA1, 0xFE, None),
    fix(&[0xFA], 0xA1, 0xFE, None),
    fix(&[0xFB], 0xA1, 0xFE, None),
    fix(&[0xFC], 0xA1, 0xFE, None),
    fix(&[0xFD], 0xA1, 0xFE, None),
    fix(&[0xFE], 0xA1, 0xFE, None),
];

/// PostgreSQL's canonical name for a client_encoding value, as `pg_char_to_encoding`
/// reads it (`'latin-1'`, `'ISO_8859_1'` and `'Latin1'` are all LATIN1).
pub fn canonical_name(value: &str) -> Option<&'static str> {
    let clean: String = value
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    NAMES
        .iter()
        .find(|(alias, _)| *alias == clean)
        .map(|(_, name)| *name)
}

/// The encoding a client_encoding value names, if pgward accepts it.
pub fn client_encoding(value: &str) -> Result<ClientEncoding, EncodingRefusal> {
    let name = canonical_name(value).ok_or(EncodingRefusal::Unknown)?;
    let single = |e: &'static Encoding, fix: &'static [(u8, Option<char>)]| Decoder::Single(e, fix);
    let decoder = match name {
        "UTF8" | "SQL_ASCII" => Decoder::Utf8,
        "LATIN1" => Decoder::Latin1,
        "LATIN2" => single(encoding_rs::ISO_8859_2, &[]),
        "LATIN3" => single(encoding_rs::ISO_8859_3, &[]),
        "LATIN4" => single(encoding_rs::ISO_8859_4, &[]),
        "LATIN5" => Decoder::Latin5,
        "LATIN6" => single(encoding_rs::ISO_8859_10, &[]),
        "LATIN7" => single(encoding_rs::ISO_8859_13, &[]),
        "LATIN8" => single(encoding_rs::ISO_8859_14, &[]),
        "LATIN9" => single(encoding_rs::ISO_8859_15, &[]),
        "LATIN10" => single(encoding_rs::ISO_8859_16, &[]),
        "ISO_8859_5" => single(encoding_rs::ISO_8859_5, &[]),
        "ISO_8859_6" => single(encoding_rs::ISO_8859_6, &[]),
        "ISO_8859_7" => single(encoding_rs::ISO_8859_7, &[]),
        "ISO_8859_8" => single(encoding_rs::ISO_8859_8, &[]),
        "WIN866" => single(encoding_rs::IBM866, &[]),
        "WIN874" => single(encoding_rs::WINDOWS_874, WIN874_FIXES),
        "WIN1250" => single(encoding_rs::WINDOWS_1250, WIN1250_FIXES),
        "WIN1251" => single(encoding_rs::WINDOWS_1251, WIN1251_FIXES),
        "WIN1252" => single(encoding_rs::WINDOWS_1252, WIN1252_FIXES),
        "WIN1253" => single(encoding_rs::WINDOWS_1253, WIN1253_FIXES),
        "WIN1254" => single(encoding_rs::WINDOWS_1254, WIN1254_FIXES),
        "WIN1255" => single(encoding_rs::WINDOWS_1255, WIN1255_FIXES),
        "WIN1256" => single(encoding_rs::WINDOWS_1256, &[]),
        "WIN1257" => single(encoding_rs::WINDOWS_1257, WIN1257_FIXES),
        "WIN1258" => single(encoding_rs::WINDOWS_1258, WIN1258_FIXES),
        "KOI8R" => single(encoding_rs::KOI8_R, &[]),
        "KOI8U" => single(encoding_rs::KOI8_U, KOI8U_FIXES),
        "EUC_JP" => Decoder::Euc(Euc::Jp, encoding_rs::EUC_JP, EUC_JP_FIXES),
        "EUC_KR" => Decoder::Euc(Euc::TwoByte, encoding_rs::EUC_KR, &[]),
        // EUC-CN is GB 2312 in EUC form: the two-byte part of GBK that EUC allows.
        "EUC_CN" => Decoder::Euc(Euc::TwoByte, encoding_rs::GBK, EUC_CN_FIXES),
        "SJIS" | "BIG5" | "GBK" | "UHC" | "GB18030" | "JOHAB" | "SHIFT_JIS_2004" => {
            return Err(EncodingRefusal::Unsafe(name))
        }
        _ => return Err(EncodingRefusal::Unsupported(name)),
    };
    Ok(ClientEncoding { name, decoder })
}

/// Why a client's bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndecodableText {
    /// PostgreSQL's name of the encoding.
    pub encoding: &'static str,
}

impl std::fmt::Display for UndecodableText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the text is not valid {} (or holds a character PostgreSQL cannot convert)",
            self.encoding
        )
    }
}

impl ClientEncoding {
    /// UTF8, what a session starts with unless told otherwise.
    pub const UTF8: ClientEncoding = ClientEncoding {
        name: "UTF8",
        decoder: Decoder::Utf8,
    };

    /// PostgreSQL's name of the encoding.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether text in this encoding is UTF-8 as it stands (UTF8, SQL_ASCII).
    pub fn is_utf8(&self) -> bool {
        self.decoder == Decoder::Utf8
    }

    /// The client's bytes as the server reads them, as UTF-8. ASCII (bytes below 0x80) is
    /// the same in every accepted encoding and is borrowed.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Cow<'a, str>, UndecodableText> {
        let bad = || UndecodableText {
            encoding: self.name,
        };
        if bytes.is_ascii() {
            return std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|_| bad());
        }
        let text = match self.decoder {
            Decoder::Utf8 => {
                return std::str::from_utf8(bytes)
                    .map(Cow::Borrowed)
                    .map_err(|_| bad());
            }
            Decoder::Latin1 => bytes.iter().map(|&b| char::from(b)).collect(),
            Decoder::Latin5 => {
                let mut out = String::with_capacity(bytes.len() + bytes.len() / 2);
                for &b in bytes {
                    if (0x80..0xA0).contains(&b) {
                        out.push(char::from(b));
                    } else {
                        let one = [b];
                        let (s, malformed) =
                            encoding_rs::WINDOWS_1254.decode_without_bom_handling(&one);
                        if malformed {
                            return Err(bad());
                        }
                        out.push_str(&s);
                    }
                }
                out
            }
            Decoder::Single(e, fixes) => {
                let mut out = String::with_capacity(bytes.len() + bytes.len() / 2);
                for &b in bytes {
                    if let Some((_, fixed)) = fixes.iter().find(|(f, _)| *f == b) {
                        out.push(fixed.ok_or_else(bad)?);
                        continue;
                    }
                    let one = [b];
                    let (s, malformed) = e.decode_without_bom_handling(&one);
                    if malformed {
                        return Err(bad());
                    }
                    out.push_str(&s);
                }
                out
            }
            Decoder::Euc(kind, e, fixes) => {
                let mut out = String::with_capacity(bytes.len());
                let mut i = 0;
                while i < bytes.len() {
                    let len = euc_char_len(kind, &bytes[i..]).ok_or_else(bad)?;
                    let ch = &bytes[i..i + len];
                    let fixed = ch.split_last().and_then(|(last, prefix)| {
                        fixes
                            .iter()
                            .find(|f| f.prefix == prefix && (f.lo..=f.hi).contains(last))
                    });
                    if let Some(f) = fixed {
                        out.push(f.to.ok_or_else(bad)?);
                    } else {
                        let (s, malformed) = e.decode_without_bom_handling(ch);
                        if malformed {
                            return Err(bad());
                        }
                        out.push_str(&s);
                    }
                    i += len;
                }
                out
            }
        };
        Ok(Cow::Owned(text))
    }

    /// `text` in this encoding, for a statement pgward rewrites; `None` if a character has
    /// no equivalent in it.
    pub fn encode<'a>(&self, text: &'a str) -> Option<Cow<'a, [u8]>> {
        if self.decoder == Decoder::Utf8 || text.is_ascii() {
            return Some(Cow::Borrowed(text.as_bytes()));
        }
        // Encode character by character and check that each reads back as itself, so a
        // rewritten statement never says something other than what was decided.
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            let mut buf = [0u8; 4];
            let s = c.encode_utf8(&mut buf);
            let bytes: Vec<u8> = match self.decoder {
                Decoder::Latin1 => vec![u8::try_from(u32::from(c)).ok()?],
                Decoder::Latin5 if (0x80..0xA0).contains(&u32::from(c)) => {
                    vec![u8::try_from(u32::from(c)).ok()?]
                }
                Decoder::Latin5 => encode_with(encoding_rs::WINDOWS_1254, s)?,
                Decoder::Single(e, _) | Decoder::Euc(_, e, _) => encode_with(e, s)?,
                Decoder::Utf8 => s.as_bytes().to_vec(),
            };
            if self.decode(&bytes).ok()?.as_ref() != s {
                return None;
            }
            out.extend_from_slice(&bytes);
        }
        Some(Cow::Owned(out))
    }
}

fn encode_with(e: &'static Encoding, s: &str) -> Option<Vec<u8>> {
    let (bytes, _, unmappable) = e.encode(s);
    (!unmappable).then(|| bytes.into_owned())
}

/// The length of the EUC character at the start of `b` (at least one byte), checked as
/// PostgreSQL's verifier checks it (`pg_eucjp_verifychar`, `pg_euckr_verifychar`); `None`
/// if it is not well formed.
fn euc_char_len(kind: Euc, b: &[u8]) -> Option<usize> {
    let valid = |x: Option<&u8>| x.is_some_and(|&c| (0xA1..=0xFE).contains(&c));
    let first = *b.first()?;
    if first < 0x80 {
        return Some(1);
    }
    match (kind, first) {
        (Euc::Jp, 0x8E) => b
            .get(1)
            .is_some_and(|&c| (0xA1..=0xDF).contains(&c))
            .then_some(2),
        (Euc::Jp, 0x8F) => (valid(b.get(1)) && valid(b.get(2))).then_some(3),
        _ => (valid(Some(&first)) && valid(b.get(1))).then_some(2),
    }
}

/// Whether a client_encoding value is one pgward accepts (see [`client_encoding`]).
pub fn safe_client_encoding(value: &str) -> bool {
    client_encoding(value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_postgresql_reads_them() {
        for v in [
            "latin-1",
            "Latin1",
            "ISO88591",
            "iso_8859_1",
            "ISO-8859-1",
            "LATIN1",
        ] {
            assert_eq!(client_encoding(v).map(|e| e.name()), Ok("LATIN1"), "{v}");
        }
        assert_eq!(canonical_name("Windows-1252"), Some("WIN1252"));
        assert_eq!(canonical_name("unicode"), Some("UTF8"));
        assert_eq!(canonical_name("koi8"), Some("KOI8R"));
        assert_eq!(canonical_name("latin11"), None);
        for v in [
            "SJIS",
            "shift-jis",
            "mskanji",
            "win932",
            "BIG5",
            "GBK",
            "cp936",
            "UHC",
            "GB18030",
            "JOHAB",
        ] {
            assert!(!safe_client_encoding(v), "{v}");
        }
        assert!(matches!(
            client_encoding("sjis"),
            Err(EncodingRefusal::Unsafe("SJIS"))
        ));
        assert!(matches!(
            client_encoding("euc_tw"),
            Err(EncodingRefusal::Unsupported("EUC_TW"))
        ));
        assert_eq!(client_encoding("nonsense"), Err(EncodingRefusal::Unknown));
    }

    #[test]
    fn decoding_follows_the_server() {
        let latin1 = client_encoding("LATIN1").unwrap();
        assert_eq!(latin1.decode(b"caf\xe9 \x80").unwrap(), "café \u{80}");
        assert_eq!(latin1.encode("café").unwrap().as_ref(), b"caf\xe9");
        assert!(latin1.encode("€").is_none());
        let latin5 = client_encoding("LATIN5").unwrap();
        assert_eq!(latin5.decode(b"\x80\xdd").unwrap(), "\u{80}İ");
        let euc = client_encoding("EUC_JP").unwrap();
        assert_eq!(euc.decode(b"\xa4\xa2'").unwrap(), "あ'");
        // A quote can never be the second byte of an EUC character.
        assert!(euc.decode(b"\xa4'").is_err());
        assert!(euc.decode(b"\x8e\xe0").is_err());
        let utf8 = ClientEncoding::UTF8;
        assert!(utf8.decode(b"\xe9").is_err());
        assert!(matches!(utf8.decode(b"abc").unwrap(), Cow::Borrowed(_)));
    }
}
