//! Timestamps as the audit log writes them: RFC 3339, UTC, exactly six fractional digits
//! (`2026-11-22T17:45:41.123456Z`). A fixed width means string order is time order, and
//! formatting by hand keeps the writer thread free of a calendar library on the hot path.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time with microsecond precision (microseconds since the Unix epoch, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The system clock now.
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            // A clock before 1970 is a broken clock; record it as the epoch rather than panic.
            Err(_) => Timestamp(0),
        }
    }

    /// `20261122T174541.123456Z`: the compact form used in rotated file names (no `:` so
    /// the names are valid on every file system, and still sortable).
    pub(crate) fn compact(self) -> String {
        let (y, mo, d, h, mi, s, us) = self.parts();
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}.{us:06}Z")
    }

    fn parts(self) -> (i64, u32, u32, u32, u32, u32, u32) {
        let secs = self.0.div_euclid(1_000_000);
        let us = self.0.rem_euclid(1_000_000) as u32;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        let (y, mo, d) = civil_from_days(days);
        (y, mo, d, sod / 3600, (sod / 60) % 60, sod % 60, us)
    }
}

impl Timestamp {
    /// The RFC 3339 form, 27 bytes. Digits are written by hand: this is on every record's
    /// path, and `core::fmt` cost several times the rest of the frame.
    fn rfc3339(self) -> [u8; 27] {
        let (y, mo, d, h, mi, s, us) = self.parts();
        // Years outside 0..=9999 cannot be written in four digits; RFC 3339 has no form
        // for them, so clamp rather than write a malformed record.
        let y = y.clamp(0, 9999) as u32;
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        put_digits(&mut b[0..4], y);
        put_digits(&mut b[5..7], mo);
        put_digits(&mut b[8..10], d);
        put_digits(&mut b[11..13], h);
        put_digits(&mut b[14..16], mi);
        put_digits(&mut b[17..19], s);
        put_digits(&mut b[20..26], us);
        b
    }

    /// Appends the RFC 3339 form to `out`.
    pub(crate) fn push_rfc3339(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.rfc3339());
    }
}

/// Formats a stream of record timestamps, almost all within the same second as the one
/// before: the `YYYY-MM-DDTHH:MM:SS.` part is computed once per second and only the
/// microseconds per record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TsFormatter {
    second: i64,
    head: [u8; 20],
}

impl Default for TsFormatter {
    fn default() -> Self {
        // i64::MIN is never a real second (Timestamp(i64::MIN) would be year -292277).
        TsFormatter {
            second: i64::MIN,
            head: [0; 20],
        }
    }
}

impl TsFormatter {
    /// Appends the RFC 3339 form of `ts` to `out`: the same bytes as
    /// [`Timestamp::push_rfc3339`].
    #[inline]
    pub(crate) fn push(&mut self, ts: Timestamp, out: &mut Vec<u8>) {
        let second = ts.0.div_euclid(1_000_000);
        if second != self.second {
            let full = ts.rfc3339();
            self.head.copy_from_slice(&full[..20]);
            self.second = second;
        }
        let mut tail = *b"000000Z";
        put_digits(&mut tail[..6], ts.0.rem_euclid(1_000_000) as u32);
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&tail);
    }
}

/// Writes `n` as decimal digits right-aligned into `slot`, zero-padded (`slot` is
/// pre-filled with `0`; digits beyond its width are dropped).
fn put_digits(slot: &mut [u8], mut n: u32) {
    for c in slot.iter_mut().rev() {
        *c = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only ASCII digits and separators are written.
        f.write_str(std::str::from_utf8(&self.rfc3339()).map_err(|_| fmt::Error)?)
    }
}

/// Error for a time that is not RFC 3339 (or a bare `YYYY-MM-DD`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid time {0:?}: expected RFC 3339 like 2026-11-22T17:45:41Z or a date like 2026-11-22"
)]
pub struct TimeParseError(String);

impl FromStr for Timestamp {
    type Err = TimeParseError;

    /// Accepts `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS[.fraction]]` followed by `Z` or `±HH:MM`
    /// (a date alone means midnight UTC; a space may replace the `T`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s.trim()).ok_or_else(|| TimeParseError(s.to_string()))
    }
}

fn num(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0i64, |acc, c| {
        acc.checked_mul(10)?.checked_add(i64::from(c - b'0'))
    })
}

fn parse(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    let mut micros = days_from_civil(y, mo as u32, d as u32) * 86_400_000_000;
    let rest = &b[10..];
    if rest.is_empty() {
        return Some(Timestamp(micros));
    }
    if rest[0] != b'T' && rest[0] != b't' && rest[0] != b' ' {
        return None;
    }
    let rest = &rest[1..];
    if rest.len() < 5 || rest[2] != b':' {
        return None;
    }
    let (h, mi) = (num(&rest[0..2])?, num(&rest[3..5])?);
    let mut i = 5;
    let mut sec = 0;
    let mut frac_us = 0;
    if rest.get(i) == Some(&b':') {
        sec = num(rest.get(i + 1..i + 3)?)?;
        i += 3;
        if rest.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while rest.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let digits = &rest[start..i];
            if digits.is_empty() {
                return None;
            }
            // Keep microseconds; finer digits are dropped (truncation, like PostgreSQL).
            let mut us = 0i64;
            for k in 0..6 {
                us = us * 10 + digits.get(k).map_or(0, |c| i64::from(c - b'0'));
            }
            frac_us = us;
        }
    }
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    micros += ((h * 60 + mi) * 60 + sec) * 1_000_000 + frac_us;
    let tz = &rest[i..];
    let offset_min = match tz {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), hh1, hh2, b':', mm1, mm2] => {
            let v = num(&[*hh1, *hh2])? * 60 + num(&[*mm1, *mm2])?;
            if *sign == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return None,
    };
    Some(Timestamp(micros - offset_min * 60_000_000))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days (public domain algorithms).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let t: Timestamp = "2026-11-22T17:45:41.123456Z".parse().unwrap();
        assert_eq!(t.to_string(), "2026-11-22T17:45:41.123456Z");
        for text in [
            "1970-01-01T00:00:00.000000Z",
            "2000-02-29T23:59:59.999999Z",
            "9999-12-31T23:59:59.000001Z",
        ] {
            let t: Timestamp = text.parse().unwrap();
            assert_eq!(t.to_string(), text);
        }
        assert_eq!(t.compact(), "20261122T174541.123456Z");
        let t2: Timestamp = "2026-11-22T18:45:41.123456789+01:00".parse().unwrap();
        assert_eq!(t, t2);
        let d: Timestamp = "2024-02-29".parse().unwrap();
        assert_eq!(d.to_string(), "2024-02-29T00:00:00.000000Z");
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000000Z");
        assert!("2023-02-29".parse::<Timestamp>().is_err());
        assert!("yesterday".parse::<Timestamp>().is_err());
        assert!("2026-11-22T17:45".parse::<Timestamp>().is_err()); // no zone
        let n = Timestamp::now();
        assert_eq!(n.to_string().parse::<Timestamp>().unwrap(), n);
    }

    /// The per-second cache writes what the full formatting writes, across second, day
    /// and year boundaries and back again (the clock may step back).
    #[test]
    fn the_cached_form_is_the_full_form() {
        let mut f = TsFormatter::default();
        let base: Timestamp = "2026-12-31T23:59:58.999998Z".parse().unwrap();
        let mut steps: Vec<i64> = (0..5_000_000).step_by(99_991).collect();
        steps.extend([0, 1, 2, 1_000_000, -1, -3_000_000_000, 86_400_000_000]);
        for d in steps {
            let t = Timestamp(base.0 + d);
            let mut v = Vec::new();
            f.push(t, &mut v);
            let mut w = Vec::new();
            t.push_rfc3339(&mut w);
            assert_eq!(v, w, "{t}");
        }
    }
}
