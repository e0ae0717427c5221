//! Reading audit files line by line, telling complete records, unreadable lines and a torn
//! last line (a write cut short by a crash) apart.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use crate::event::Record;

/// One line of an audit file.
#[derive(Debug)]
pub enum ReadItem {
    /// A complete line that parses as a record.
    Record {
        /// 1-based line number.
        line: u64,
        /// The line's bytes (no newline), exactly as stored.
        raw: Vec<u8>,
        /// The parsed record.
        record: Box<Record>,
    },
    /// A complete line that is not a record.
    Malformed {
        /// 1-based line number.
        line: u64,
        /// The line's bytes.
        raw: Vec<u8>,
        /// Why it did not parse.
        error: String,
    },
    /// The file's last line has no newline: a write interrupted by a crash.
    TornTail {
        /// 1-based line number.
        line: u64,
        /// How many bytes the torn line has.
        bytes: usize,
    },
}

/// Iterates over the lines of `r`.
pub(crate) struct Lines<R> {
    r: R,
    line: u64,
    done: bool,
}

/// A raw line: (line number, bytes, complete).
pub(crate) type RawLine = (u64, Vec<u8>, bool);

impl<R: BufRead> Lines<R> {
    pub(crate) fn new(r: R) -> Self {
        Lines {
            r,
            line: 0,
            done: false,
        }
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = io::Result<RawLine>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        match self.r.read_until(b'\n', &mut buf) {
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) => {
                self.line += 1;
                let complete = buf.last() == Some(&b'\n');
                if complete {
                    buf.pop();
                } else {
                    self.done = true;
                }
                Some(Ok((self.line, buf, complete)))
            }
        }
    }
}

pub(crate) fn classify(line: u64, raw: Vec<u8>, complete: bool) -> ReadItem {
    if !complete {
        return ReadItem::TornTail {
            line,
            bytes: raw.len(),
        };
    }
    match serde_json::from_slice::<Record>(&raw) {
        Ok(record) => ReadItem::Record {
            line,
            raw,
            record: Box::new(record),
        },
        Err(e) => ReadItem::Malformed {
            line,
            raw,
            error: e.to_string(),
        },
    }
}

/// Reads every line of one audit file.
pub fn read_records(path: &Path) -> io::Result<impl Iterator<Item = io::Result<ReadItem>>> {
    let f = File::open(path)?;
    Ok(Lines::new(BufReader::with_capacity(1 << 16, f))
        .map(|r| r.map(|(line, raw, complete)| classify(line, raw, complete))))
}
