//! Sinks besides the authoritative file: standard output now; a PostgreSQL table and
//! Azure Monitor Logs Ingestion later. Every sink receives the same sealed records (with
//! `seq` and `hash`) in chain order, so a copy shipped elsewhere can be cross-checked
//! against the file.

use std::io::Write;

/// One sealed record: its line exactly as in the file (JSON, no trailing newline).
#[derive(Debug, Clone, Copy)]
pub struct SealedRecord<'a> {
    /// Chain position.
    pub seq: u64,
    /// The JSON object (UTF-8), ending in the `hash` member.
    pub line: &'a [u8],
}

/// A sink error.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// A destination for sealed records.
///
/// `write_batch` runs with the log's writer state locked (so never concurrently with
/// itself), in `seq` order, after the file write, and before the `append`s of the batch
/// return. It runs on the audit writer thread, unless every sink of the log says
/// [`Sink::inline_ok`] and `fsync = "none"`: then the log writes on the appending task's
/// thread (a tokio worker in the proxy) and batches are usually one record long. A sink registered as authoritative must
/// return only once it holds the batch durably enough to answer for it (its error refuses
/// the statements); a best-effort one's error is only logged. Sinks that talk to a network
/// (PostgreSQL, Azure Monitor) must not block here on the network: they should hand the
/// batch to their own task (spooling it to disk first if they promise not to lose it) and
/// return.
pub trait Sink: Send + 'static {
    /// A short name for errors and logs (`stdout`, `postgres`, `azure-monitor`).
    fn name(&self) -> &str;
    /// Takes a batch of records.
    fn write_batch(&mut self, batch: &[SealedRecord<'_>]) -> Result<(), SinkError>;
    /// Whether `write_batch` is cheap and never blocks for long (a buffered local write,
    /// a hand-off to a channel), so it may run on the appending task's thread. The default
    /// is `false`: the log then keeps writing on its own thread.
    fn inline_ok(&self) -> bool {
        false
    }
    /// Called once when the log closes (after `audit_stop`).
    fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Writes each record as a line to any `Write` (standard output by default).
pub struct LineSink<W: Write + Send + 'static> {
    name: String,
    out: W,
}

impl LineSink<std::io::Stdout> {
    /// JSON Lines on standard output (for container log collection).
    pub fn stdout() -> Self {
        LineSink {
            name: "stdout".to_string(),
            out: std::io::stdout(),
        }
    }
}

impl<W: Write + Send + 'static> LineSink<W> {
    /// JSON Lines to `out`.
    pub fn new(name: impl Into<String>, out: W) -> Self {
        LineSink {
            name: name.into(),
            out,
        }
    }
}

impl<W: Write + Send + 'static> Sink for LineSink<W> {
    fn name(&self) -> &str {
        &self.name
    }

    // A local write, like the log lines tracing itself writes from any thread.
    fn inline_ok(&self) -> bool {
        true
    }

    fn write_batch(&mut self, batch: &[SealedRecord<'_>]) -> Result<(), SinkError> {
        // One buffered write per batch so concurrent log lines interleave less.
        let mut buf = Vec::with_capacity(batch.iter().map(|r| r.line.len() + 1).sum());
        for r in batch {
            buf.extend_from_slice(r.line);
            buf.push(b'\n');
        }
        self.out.write_all(&buf)?;
        self.out.flush()?;
        Ok(())
    }
}
