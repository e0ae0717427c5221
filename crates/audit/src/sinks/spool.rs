//! A bounded, append-only disk spool between the audit writer and a shipping sink.
//!
//! The writer thread appends each batch of sealed lines to the active segment file
//! (`<20-digit number>.jsonl`) with one write(2) and returns; the sink's own thread reads
//! from a cursor, ships, and only then advances the cursor (`cursor`: `<segment>
//! <offset>`, replaced atomically) and deletes segments it has fully shipped. So a
//! network outage, or a pgward restart, loses nothing: whatever was not acknowledged is
//! still on disk and is sent again from the cursor. The spool is bounded: an append that
//! would pass `max_bytes` fails (the sink reports it; the authoritative file still has
//! the records).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

const CURSOR: &str = "cursor";
const SEGMENT_EXT: &str = ".jsonl";

struct Active {
    no: u64,
    file: File,
    len: u64,
}

struct WriteState {
    active: Option<Active>,
    /// Number of the next segment to create (all existing ones are below it).
    next_no: u64,
    /// Bytes of all segment files on disk.
    bytes: u64,
    /// Of those, bytes already shipped (the reader's offset in its current segment).
    consumed: u64,
    /// Where an append joins its lines: reused, so no allocation per batch.
    buf: Vec<u8>,
}

/// An append buffer larger than this is not kept (one huge batch must not pin it).
const BUF_KEEP: usize = 64 * 1024;

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<WriteState>,
    /// Signalled after every append.
    appended: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        // A panic while holding the lock leaves plain numbers behind: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn segment_path(&self, no: u64) -> PathBuf {
        self.dir.join(format!("{no:020}{SEGMENT_EXT}"))
    }
}

/// The writer's end: appends batches.
#[derive(Clone)]
pub(crate) struct Spool {
    inner: Arc<Inner>,
}

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpoolError {
    #[error("spool {dir} is full ({bytes} of {max} bytes): the destination has been unreachable for too long")]
    Full { dir: String, bytes: u64, max: u64 },
    #[error("spool {dir}: {op}: {source}")]
    Io {
        dir: String,
        op: &'static str,
        source: io::Error,
    },
}

/// A run of complete lines read from one segment.
pub(crate) struct Batch {
    seg: u64,
    end: u64,
    /// The segment is finished (no longer written to) and this batch reaches its end.
    finishes_segment: bool,
    buf: Vec<u8>,
    lines: Vec<(usize, usize)>,
}

impl Batch {
    pub(crate) fn lines(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.lines.iter().map(|&(s, e)| &self.buf[s..e])
    }

    pub(crate) fn len(&self) -> usize {
        self.lines.len()
    }

    /// Keeps only the first `n` lines (the rest are read again next time).
    pub(crate) fn truncate(&mut self, n: usize) {
        if n < self.lines.len() {
            // The next line starts right after this one's newline.
            let next_start = self.lines[n].0;
            let dropped = (self.buf.len() - next_start) as u64;
            self.end -= dropped;
            self.buf.truncate(next_start);
            self.lines.truncate(n);
            self.finishes_segment = false;
        }
    }
}

/// The shipping thread's end: reads from the cursor, acknowledges what was delivered.
pub(crate) struct Reader {
    inner: Arc<Inner>,
    seg: u64,
    offset: u64,
    file: Option<(u64, File)>,
}

fn io_err<'a>(dir: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        dir: dir.display().to_string(),
        op,
        source,
    }
}

/// Segment numbers present in `dir`, ascending.
fn segments(dir: &Path) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(num) = name.strip_suffix(SEGMENT_EXT) else {
            continue;
        };
        if num.len() != 20 {
            continue;
        }
        if let Ok(no) = num.parse::<u64>() {
            out.push((no, e.metadata()?.len()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
pub(crate) fn segment_count(dir: &Path) -> usize {
    segments(dir).map(|s| s.len()).unwrap_or(0)
}

fn read_cursor(dir: &Path) -> Option<(u64, u64)> {
    let text = fs::read_to_string(dir.join(CURSOR)).ok()?;
    let mut it = text.split_whitespace();
    let seg = it.next()?.parse().ok()?;
    let off = it.next()?.parse().ok()?;
    Some((seg, off))
}

/// Opens (or creates) the spool in `dir`: the writer's end and the reader's end, the
/// reader positioned at the saved cursor.
pub(crate) fn open(
    dir: &Path,
    max_bytes: u64,
    segment_bytes: u64,
) -> Result<(Spool, Reader), SpoolError> {
    fs::create_dir_all(dir).map_err(io_err(dir, "create directory"))?;
    let mut segs = segments(dir).map_err(io_err(dir, "list"))?;
    let cursor = read_cursor(dir);
    // Segments before the cursor's were shipped; a crash came between the cursor
    // update and their deletion.
    if let Some((cseg, _)) = cursor {
        for &(no, _) in segs.iter().filter(|(no, _)| *no < cseg) {
            let p = dir.join(format!("{no:020}{SEGMENT_EXT}"));
            fs::remove_file(&p).map_err(io_err(dir, "remove shipped segment"))?;
        }
        segs.retain(|(no, _)| *no >= cseg);
    }
    let next_no = segs.last().map_or(1, |(no, _)| no + 1);
    let (seg, offset) = match (cursor, segs.first()) {
        (Some((cseg, off)), Some(&(first, _))) if cseg == first => (cseg, off),
        (_, Some(&(first, _))) => (first, 0),
        (_, None) => (next_no, 0),
    };
    let inner = Arc::new(Inner {
        dir: dir.to_path_buf(),
        max_bytes,
        segment_bytes: segment_bytes.max(1),
        state: Mutex::new(WriteState {
            active: None,
            next_no,
            bytes: segs.iter().map(|(_, len)| len).sum(),
            consumed: offset,
            buf: Vec::new(),
        }),
        appended: Condvar::new(),
    });
    Ok((
        Spool {
            inner: inner.clone(),
        },
        Reader {
            inner,
            seg,
            offset,
            file: None,
        },
    ))
}

impl Spool {
    /// Appends the lines (each without its newline) with one write. Never blocks on
    /// anything but the local disk.
    pub(crate) fn append<'a>(
        &self,
        lines: impl Iterator<Item = &'a [u8]> + Clone,
    ) -> Result<(), SpoolError> {
        let size: u64 = lines.clone().map(|l| l.len() as u64 + 1).sum();
        let inner = &*self.inner;
        let dir = inner.dir.as_path();
        let mut guard = inner.lock();
        let st = &mut *guard;
        if st.bytes + size > inner.max_bytes {
            return Err(SpoolError::Full {
                dir: dir.display().to_string(),
                bytes: st.bytes,
                max: inner.max_bytes,
            });
        }
        if st
            .active
            .as_ref()
            .is_none_or(|a| a.len >= inner.segment_bytes)
        {
            let no = st.next_no;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(inner.segment_path(no))
                .map_err(io_err(dir, "create segment"))?;
            st.next_no += 1;
            st.active = Some(Active { no, file, len: 0 });
        }
        let buf = &mut st.buf;
        buf.clear();
        for l in lines {
            buf.extend_from_slice(l);
            buf.push(b'\n');
        }
        let Some(a) = st.active.as_mut() else {
            return Ok(());
        };
        let written = a.file.write_all(buf);
        if buf.capacity() > BUF_KEEP {
            *buf = Vec::new();
        }
        if let Err(e) = written {
            // Cut a partial write back; if even that fails, leave the segment (the reader
            // skips a torn last line) and start a new one.
            if a.file.set_len(a.len).is_err() {
                st.active = None;
            }
            return Err(SpoolError::Io {
                dir: dir.display().to_string(),
                op: "write",
                source: e,
            });
        }
        a.len += size;
        st.bytes += size;
        drop(guard);
        inner.appended.notify_all();
        Ok(())
    }

    /// Bytes spooled and not yet shipped.
    pub(crate) fn backlog_bytes(&self) -> u64 {
        let st = self.inner.lock();
        st.bytes.saturating_sub(st.consumed)
    }

    /// Wakes a reader waiting in [`Reader::wait`] (at shutdown).
    pub(crate) fn wake(&self) {
        self.inner.appended.notify_all();
    }
}

impl Reader {
    /// Waits up to `timeout` for an append.
    pub(crate) fn wait(&self, timeout: Duration) {
        let st = self.inner.lock();
        let _ = self.inner.appended.wait_timeout(st, timeout);
    }

    /// Reads up to `max_records` complete lines (at most `max_bytes` of them, but always
    /// at least one) from the cursor; `None` when there is nothing new.
    pub(crate) fn read(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, SpoolError> {
        let inner = self.inner.clone();
        let dir = inner.dir.as_path();
        loop {
            // Decide whether the segment is finished *before* reading it: once it is
            // not the active one, nothing more is ever written to it.
            let (active_no, next_no) = {
                let st = inner.lock();
                (st.active.as_ref().map(|a| a.no), st.next_no)
            };
            if self.seg >= next_no {
                return Ok(None);
            }
            let finished = active_no != Some(self.seg);
            if self.file.as_ref().is_none_or(|(no, _)| *no != self.seg) {
                match File::open(inner.segment_path(self.seg)) {
                    Ok(f) => self.file = Some((self.seg, f)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // Removed, or never created (a failed create): go to the next.
                        self.file = None;
                        self.seg += 1;
                        self.offset = 0;
                        continue;
                    }
                    Err(e) => return Err(io_err(dir, "open segment")(e)),
                }
            }
            let Some((_, f)) = self.file.as_mut() else {
                continue;
            };
            let len = f.metadata().map_err(io_err(dir, "stat segment"))?.len();
            let mut buf = Vec::new();
            if self.offset < len {
                f.seek(SeekFrom::Start(self.offset))
                    .map_err(io_err(dir, "seek"))?;
                let want = (len - self.offset).min(max_bytes as u64 + 1);
                Read::by_ref(f)
                    .take(want)
                    .read_to_end(&mut buf)
                    .map_err(io_err(dir, "read"))?;
                // A line longer than max_bytes: read on to its end (a batch of one).
                if !buf.contains(&b'\n') && self.offset + (buf.len() as u64) < len {
                    Read::by_ref(f)
                        .take(len - self.offset - buf.len() as u64)
                        .read_to_end(&mut buf)
                        .map_err(io_err(dir, "read"))?;
                }
            }
            let mut lines = Vec::new();
            let mut pos = 0;
            let mut bytes = 0;
            while lines.len() < max_records {
                let Some(nl) = buf[pos..].iter().position(|&c| c == b'\n') else {
                    break;
                };
                let line_len = nl;
                if !lines.is_empty() && bytes + line_len > max_bytes {
                    break;
                }
                lines.push((pos, pos + nl));
                bytes += line_len;
                pos += nl + 1;
            }
            let end = self.offset + pos as u64;
            if lines.is_empty() {
                if !finished {
                    return Ok(None);
                }
                if end < len {
                    tracing::warn!(
                        spool = %dir.display(),
                        segment = self.seg,
                        bytes = len - end,
                        "audit spool segment ends with a torn line (written during a crash); skipped: the audit file has the record"
                    );
                }
                // A finished segment read to its end: remove it and go on.
                self.finish_segment(len)?;
                continue;
            }
            buf.truncate(pos);
            return Ok(Some(Batch {
                seg: self.seg,
                end,
                finishes_segment: finished && end == len,
                buf,
                lines,
            }));
        }
    }

    /// Records that `batch` was delivered: advances the cursor durably enough that a
    /// restart does not send it again (barring a power loss).
    pub(crate) fn ack(&mut self, batch: &Batch) -> Result<(), SpoolError> {
        if batch.seg != self.seg {
            return Ok(());
        }
        self.offset = batch.end;
        if batch.finishes_segment {
            let len = batch.end;
            self.finish_segment(len)
        } else {
            self.inner.lock().consumed = self.offset;
            self.save_cursor()
        }
    }

    /// At a clean shutdown (the writer has stopped appending): removes the active
    /// segment if everything in it was shipped, so an idle spool is empty on disk.
    pub(crate) fn retire_shipped(&mut self) -> Result<(), SpoolError> {
        let len = {
            let mut st = self.inner.lock();
            match &st.active {
                Some(a) if a.no == self.seg && a.len == self.offset => {
                    let len = a.len;
                    st.active = None;
                    len
                }
                _ => return Ok(()),
            }
        };
        self.finish_segment(len)
    }

    fn finish_segment(&mut self, len: u64) -> Result<(), SpoolError> {
        let inner = self.inner.clone();
        let dir = inner.dir.as_path();
        self.file = None;
        let path = inner.segment_path(self.seg);
        // Cursor first: a crash between the two leaves a shipped segment before the
        // cursor, which `open` removes.
        self.seg += 1;
        self.offset = 0;
        self.save_cursor()?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(dir, "remove shipped segment")(e)),
        }
        let mut st = inner.lock();
        st.bytes = st.bytes.saturating_sub(len);
        st.consumed = 0;
        Ok(())
    }

    fn save_cursor(&self) -> Result<(), SpoolError> {
        let dir = self.inner.dir.as_path();
        let tmp = dir.join("cursor.tmp");
        fs::write(&tmp, format!("{} {}\n", self.seg, self.offset))
            .map_err(io_err(dir, "write cursor"))?;
        fs::rename(&tmp, dir.join(CURSOR)).map_err(io_err(dir, "replace cursor"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(b: &Batch) -> Vec<String> {
        b.lines()
            .map(|l| String::from_utf8(l.to_vec()).unwrap())
            .collect()
    }

    fn put(s: &Spool, items: &[&str]) {
        s.append(items.iter().map(|x| x.as_bytes())).unwrap();
    }

    #[test]
    fn reads_in_order_and_resumes_from_the_cursor_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (s, mut r) = open(dir.path(), 1 << 20, 1 << 20).unwrap();
        put(&s, &["a1", "a2", "a3"]);
        let b = r.read(2, 1000).unwrap().unwrap();
        assert_eq!(lines(&b), ["a1", "a2"]);
        r.ack(&b).unwrap();
        // Not acknowledged: read again after a "restart".
        let b = r.read(10, 1000).unwrap().unwrap();
        assert_eq!(lines(&b), ["a3"]);
        drop((s, r));
        let (s, mut r) = open(dir.path(), 1 << 20, 1 << 20).unwrap();
        let b = r.read(10, 1000).unwrap().unwrap();
        assert_eq!(lines(&b), ["a3"], "unacknowledged lines come back");
        r.ack(&b).unwrap();
        assert!(r.read(10, 1000).unwrap().is_none());
        // New appends after a restart go to a new segment, read after the old one.
        put(&s, &["b1"]);
        let b = r.read(10, 1000).unwrap().unwrap();
        assert_eq!(lines(&b), ["b1"]);
        r.ack(&b).unwrap();
        drop((s, r));
        let (_s, mut r) = open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert!(r.read(10, 1000).unwrap().is_none(), "nothing is sent twice");
    }

    #[test]
    fn shipped_segments_are_removed_and_the_bound_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 7 bytes: every append of one record starts a new one.
        let (s, mut r) = open(dir.path(), 40, 7).unwrap();
        for i in 0..5 {
            put(&s, &[&format!("rec{i:03}")]);
        }
        assert_eq!(s.backlog_bytes(), 35);
        let err = s.append(["xxxxxx".as_bytes()].into_iter()).unwrap_err();
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        let mut got = Vec::new();
        while let Some(b) = r.read(100, 1000).unwrap() {
            got.extend(lines(&b));
            r.ack(&b).unwrap();
        }
        assert_eq!(got, ["rec000", "rec001", "rec002", "rec003", "rec004"]);
        // All but the active segment are gone, and the room is back.
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        assert_eq!(s.backlog_bytes(), 0);
        put(&s, &["again"]);
        assert_eq!(lines(&r.read(10, 100).unwrap().unwrap()), ["again"]);
    }

    #[test]
    fn byte_limit_splits_batches_but_an_oversized_line_goes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (s, mut r) = open(dir.path(), 1 << 20, 1 << 20).unwrap();
        let big = "x".repeat(50);
        put(&s, &["aaaa", "bbbb", &big, "cccc"]);
        let mut sizes = Vec::new();
        while let Some(b) = r.read(100, 10).unwrap() {
            sizes.push(b.len());
            r.ack(&b).unwrap();
        }
        assert_eq!(sizes, [2, 1, 1]);
    }

    #[test]
    fn truncate_keeps_the_rest_for_the_next_read() {
        let dir = tempfile::tempdir().unwrap();
        let (s, mut r) = open(dir.path(), 1 << 20, 1 << 20).unwrap();
        put(&s, &["l1", "l2", "l3"]);
        let mut b = r.read(10, 1000).unwrap().unwrap();
        b.truncate(1);
        r.ack(&b).unwrap();
        assert_eq!(lines(&r.read(10, 1000).unwrap().unwrap()), ["l2", "l3"]);
    }

    #[test]
    fn a_torn_line_in_a_finished_segment_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _r) = open(dir.path(), 1 << 20, 1 << 20).unwrap();
            put(&s, &["ok1"]);
        }
        // A crash mid-write left half a line behind.
        let seg = dir.path().join(format!("{:020}{SEGMENT_EXT}", 1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"half").unwrap();
        let (s, mut r) = open(dir.path(), 1 << 20, 1 << 20).unwrap();
        put(&s, &["ok2"]);
        let mut got = Vec::new();
        while let Some(b) = r.read(100, 1000).unwrap() {
            got.extend(lines(&b));
            r.ack(&b).unwrap();
        }
        assert_eq!(got, ["ok1", "ok2"]);
        assert!(!seg.exists());
    }
}
