//! SQL Server types as PostgreSQL types (text format). The table is in docs/azure-sql.md:
//!
//! | SQL Server | PostgreSQL |
//! |---|---|
//! | tinyint, smallint | int2 (tinyint widens: PostgreSQL has no 1-byte integer) |
//! | int | int4 |
//! | bigint | int8 |
//! | bit | bool |
//! | decimal, numeric, money, smallmoney | numeric |
//! | real | float4 |
//! | float | float8 |
//! | char, varchar, nchar, nvarchar | varchar |
//! | text, ntext, xml, sql_variant and anything else | text |
//! | date | date |
//! | time | time |
//! | datetime, smalldatetime, datetime2 | timestamp |
//! | datetimeoffset | timestamptz (shown in UTC) |
//! | uniqueidentifier | uuid |
//! | binary, varbinary, image | bytea (hex text, `\x...`) |

use std::fmt::Write;

use tiberius::numeric::Numeric;
use tiberius::time::{Date, DateTime2, Time};
use tiberius::{ColumnData, ColumnType};

use crate::pg::PgColumn;

pub use pgward_wire::type_oid::{
    BOOL, BYTEA, DATE, FLOAT4, FLOAT8, INT2, INT4, INT8, NUMERIC, TEXT, TIME, TIMESTAMP,
    TIMESTAMPTZ, UUID, VARCHAR,
};

/// The PostgreSQL type (oid, typlen) for a SQL Server column type.
pub fn pg_type(t: ColumnType) -> (u32, i16) {
    match t {
        ColumnType::Bit | ColumnType::Bitn => (BOOL, 1),
        ColumnType::Int1 | ColumnType::Int2 => (INT2, 2),
        ColumnType::Int4 => (INT4, 4),
        // Intn of unknown width: the widest.
        ColumnType::Int8 | ColumnType::Intn => (INT8, 8),
        ColumnType::Float4 => (FLOAT4, 4),
        ColumnType::Float8 | ColumnType::Floatn => (FLOAT8, 8),
        ColumnType::Money | ColumnType::Money4 | ColumnType::Decimaln | ColumnType::Numericn => {
            (NUMERIC, -1)
        }
        ColumnType::BigVarChar | ColumnType::BigChar | ColumnType::NVarchar | ColumnType::NChar => {
            (VARCHAR, -1)
        }
        ColumnType::Guid => (UUID, 16),
        ColumnType::BigVarBin | ColumnType::BigBinary | ColumnType::Image => (BYTEA, -1),
        ColumnType::Daten => (DATE, 4),
        ColumnType::Timen => (TIME, 8),
        ColumnType::Datetime
        | ColumnType::Datetime4
        | ColumnType::Datetimen
        | ColumnType::Datetime2 => (TIMESTAMP, 8),
        ColumnType::DatetimeOffsetn => (TIMESTAMPTZ, 8),
        _ => (TEXT, -1),
    }
}

/// RowDescription columns for a result set's metadata.
pub fn columns(cols: &[tiberius::Column]) -> Vec<PgColumn> {
    cols.iter()
        .map(|c| {
            let (type_oid, type_len) = pg_type(c.column_type());
            PgColumn {
                name: c.name().to_owned(),
                type_oid,
                type_len,
            }
        })
        .collect()
}

/// A value in PostgreSQL's text format; `None` is NULL.
pub fn text(v: &ColumnData<'_>) -> Option<String> {
    let mut s = String::new();
    write_text(&mut s, v)?;
    Some(s)
}

/// Writes a value in PostgreSQL's text format to `out` (a DataRow being built, so the
/// common types need no String of their own); `None` is NULL, and then nothing is written.
pub fn write_text(out: &mut impl Write, v: &ColumnData<'_>) -> Option<()> {
    // Writing to a String or BytesMut cannot fail.
    let _ = match v {
        ColumnData::U8(x) => write!(out, "{}", (*x)?),
        ColumnData::I16(x) => write!(out, "{}", (*x)?),
        ColumnData::I32(x) => write!(out, "{}", (*x)?),
        ColumnData::I64(x) => write!(out, "{}", (*x)?),
        ColumnData::F32(x) => write_float(out, f64::from((*x)?), true),
        ColumnData::F64(x) => write_float(out, (*x)?, false),
        ColumnData::Bit(x) => out.write_str(if (*x)? { "t" } else { "f" }),
        ColumnData::String(x) => out.write_str(x.as_deref()?),
        ColumnData::Guid(x) => write!(out, "{}", x.as_ref()?),
        ColumnData::Binary(x) => {
            let b = x.as_deref()?;
            let _ = out.write_str("\\x");
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
            Ok(())
        }
        ColumnData::Numeric(x) => out.write_str(&numeric((*x)?)),
        ColumnData::Xml(x) => write!(out, "{}", x.as_ref()?),
        ColumnData::DateTime(x) => {
            let d = (*x)?;
            // Days since 1900-01-01; 1/300 s ticks since midnight.
            let days = i64::from(d.days()) + DAYS_0001_TO_1900;
            let nanos = u64::from(d.seconds_fragments()) * 1_000_000_000 / 300;
            write!(out, "{} {}", ymd(days), hms(nanos, 3))
        }
        ColumnData::SmallDateTime(x) => {
            let d = (*x)?;
            let days = i64::from(d.days()) + DAYS_0001_TO_1900;
            let nanos = u64::from(d.seconds_fragments()) * 60 * 1_000_000_000;
            write!(out, "{} {}", ymd(days), hms(nanos, 0))
        }
        ColumnData::Date(x) => out.write_str(&ymd(date_days((*x)?))),
        ColumnData::Time(x) => out.write_str(&time((*x)?)),
        ColumnData::DateTime2(x) => out.write_str(&datetime2((*x)?)),
        ColumnData::DateTimeOffset(x) => {
            // The wire value is UTC; the offset only says where it was written.
            let d = (*x)?;
            write!(out, "{}+00", datetime2(d.datetime2()))
        }
    };
    Some(())
}

/// Days from 0001-01-01 to 1900-01-01.
const DAYS_0001_TO_1900: i64 = 693_595;

fn date_days(d: Date) -> i64 {
    i64::from(d.days())
}

fn datetime2(d: DateTime2) -> String {
    format!("{} {}", ymd(date_days(d.date())), time(d.time()))
}

fn time(t: Time) -> String {
    let scale = u32::from(t.scale()).min(7);
    // increments of 10^-scale seconds.
    let nanos = u128::from(t.increments()) * 10u128.pow(9 - scale.min(9));
    let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
    hms(nanos, 6)
}

/// `HH:MM:SS[.ffffff]` with trailing zeros of the fraction dropped, as PostgreSQL prints.
fn hms(nanos: u64, max_digits: usize) -> String {
    let secs = nanos / 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = format!("{h:02}:{m:02}:{s:02}");
    let micros = (nanos % 1_000_000_000) / 1000;
    if micros > 0 && max_digits > 0 {
        let frac = format!("{micros:06}");
        let frac = frac.trim_end_matches('0');
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// The proleptic Gregorian date `days` after 0001-01-01.
fn ymd(days: i64) -> String {
    // Howard Hinnant's civil_from_days, shifted from the 1970 epoch.
    let z = days - 719_162 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

fn numeric(n: Numeric) -> String {
    let scale = u32::from(n.scale());
    let v = n.value();
    let neg = v < 0;
    let digits = v.unsigned_abs().to_string();
    let s = if scale == 0 {
        digits
    } else {
        let scale = scale as usize;
        let padded = if digits.len() <= scale {
            format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
        } else {
            digits
        };
        let (int, frac) = padded.split_at(padded.len() - scale);
        format!("{int}.{frac}")
    };
    if neg {
        format!("-{s}")
    } else {
        s
    }
}

/// Floats as PostgreSQL prints them (shortest round-trip form; Infinity/NaN spelled its way).
fn write_float(out: &mut impl Write, f: f64, single: bool) -> std::fmt::Result {
    if f.is_nan() {
        return out.write_str("NaN");
    }
    if f.is_infinite() {
        return out.write_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    }
    if single {
        #[allow(clippy::cast_possible_truncation)]
        let s = f as f32;
        write!(out, "{s}")
    } else {
        write!(out, "{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiberius::time::{DateTime, DateTimeOffset, SmallDateTime};

    #[test]
    fn dates() {
        assert_eq!(ymd(0), "0001-01-01");
        assert_eq!(ymd(DAYS_0001_TO_1900), "1900-01-01");
        assert_eq!(ymd(738_885), "2024-01-01");
        assert_eq!(ymd(738_945), "2024-03-01");
        let d = Date::new(738_945);
        assert_eq!(text(&ColumnData::Date(Some(d))).unwrap(), "2024-03-01");
    }

    #[test]
    fn times_and_timestamps() {
        let t = Time::new(12 * 3600 * 10_000_000 + 345 * 10_000, 7);
        assert_eq!(time(t), "12:00:00.345");
        let dt = DateTime::new(45_000, 300 * 61);
        assert_eq!(
            text(&ColumnData::DateTime(Some(dt))).unwrap(),
            "2023-03-17 00:01:01"
        );
        let sdt = SmallDateTime::new(45_000, 90);
        assert_eq!(
            text(&ColumnData::SmallDateTime(Some(sdt))).unwrap(),
            "2023-03-17 01:30:00"
        );
        let dto = DateTimeOffset::new(DateTime2::new(Date::new(738_885), Time::new(0, 0)), 120);
        assert_eq!(
            text(&ColumnData::DateTimeOffset(Some(dto))).unwrap(),
            "2024-01-01 00:00:00+00"
        );
    }

    #[test]
    fn numbers_binary_nulls() {
        assert_eq!(numeric(Numeric::new_with_scale(-12345, 2)), "-123.45");
        assert_eq!(numeric(Numeric::new_with_scale(5, 3)), "0.005");
        assert_eq!(numeric(Numeric::new_with_scale(42, 0)), "42");
        assert_eq!(
            text(&ColumnData::Binary(Some(vec![0xde, 0xad].into()))).unwrap(),
            "\\xdead"
        );
        assert_eq!(text(&ColumnData::Bit(Some(true))).unwrap(), "t");
        assert_eq!(text(&ColumnData::F32(Some(1.5))).unwrap(), "1.5");
        assert_eq!(text(&ColumnData::I32(None)), None);
        assert_eq!(text(&ColumnData::String(None)), None);
    }
}
