//! The relay: whole messages both ways between a signed-in client and its upstream
//! session, until either side ends.
//!
//! Two directions run concurrently in one task, so neither can block the other (a
//! client pipelining thousands of statements while the server streams results back
//! must not deadlock the proxy):
//! - client → upstream: every message is framed whole and checked (`Framer::peek`)
//!   before it is forwarded; the batch of complete messages from one read goes out in
//!   one write, zero-copy.
//! - upstream → client: `Scanner` finds boundaries and reads the few replies the
//!   proxy tracks; everything else streams through unbuffered.
//!
//! Both directions feed `Conversation`, the protocol state (`Phase`) shared between them.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::{Buf, BytesMut};
use pgward_policy::QueryDecision;
use pgward_wire::backend::{self, Scanner};
use pgward_wire::build::{self, Severity};
use pgward_wire::frontend::{self, Framer};
use pgward_wire::tag::{backend as be, frontend as fe, target};
use pgward_wire::{TxStatus, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client_encoding::{EncodingTrack, Unreadable};
use crate::enforce::{denial_of, Denial, Denials, Gate, Verdict, INLINE_ANALYSIS_BYTES};
use crate::limits::Permit;
use crate::masking::{withheld_error, MaskStream};
use crate::metrics::Metrics;
use crate::sides::Sides;
use crate::trail::{Audited, Trail};
use pgward_audit::Append;

const READ_CHUNK: usize = 64 * 1024;

/// Where the conversation stands, derived from both directions' messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The server's last word was ReadyForQuery and nothing is outstanding.
    Idle(TxStatus),
    /// Requests are outstanding; replies run until ReadyForQuery.
    Busy,
    /// COPY FROM STDIN: the client streams CopyData.
    CopyIn,
    /// COPY TO STDOUT: the server streams CopyData.
    CopyOut,
}

/// Protocol state both directions update.
#[derive(Debug)]
pub struct Conversation {
    phase: Phase,
    /// Query, Sync and FunctionCall messages sent whose ReadyForQuery hasn't come back.
    outstanding: u32,
    /// Refused statements whose marked server error is still to be rewritten.
    denials: Denials,
    /// The audit trail, when an audit log is configured.
    trail: Option<Trail>,
    /// The identity's statement-rate bucket, when `[limits]` sets a rate.
    rate: Option<Permit>,
    /// The client_encodings the server may read the next statement in.
    encoding: EncodingTrack,
    /// Column masks on the stream, for a caller with masks.
    masks: Option<MaskStream>,
}

impl Conversation {
    pub fn new(
        tx: TxStatus,
        denials: Denials,
        trail: Option<Trail>,
        encoding: EncodingTrack,
    ) -> Self {
        Self {
            phase: Phase::Idle(tx),
            outstanding: 0,
            denials,
            trail,
            rate: None,
            encoding,
            masks: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn on_client_message(&mut self, tag: u8) {
        self.encoding.on_client_message(tag);
        match tag {
            fe::QUERY | fe::SYNC | fe::FUNCTION_CALL => {
                self.outstanding += 1;
                if self.phase != Phase::CopyIn {
                    self.phase = Phase::Busy;
                }
            }
            // Extended-protocol messages before their Sync: the server may already be
            // working (Execute + Flush) even though no ReadyForQuery is due yet.
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE | fe::FLUSH => {
                if matches!(self.phase, Phase::Idle(_)) {
                    self.phase = Phase::Busy;
                }
            }
            fe::COPY_DONE | fe::COPY_FAIL if self.phase == Phase::CopyIn => {
                self.phase = Phase::Busy
            }
            _ => {}
        }
    }

    fn on_server_message(&mut self, tag: u8, body: &[u8]) -> Result<(), WireError> {
        match tag {
            be::READY_FOR_QUERY => {
                let tx = backend::ready_for_query(body)?;
                self.outstanding = self.outstanding.saturating_sub(1);
                self.encoding
                    .on_ready(self.outstanding == 0, tx != TxStatus::Idle);
                self.phase = if self.outstanding == 0 {
                    // Nothing outstanding: any denial not rewritten by now was skipped
                    // by the server (earlier error in its batch, or 25P02).
                    self.denials.clear();
                    Phase::Idle(tx)
                } else {
                    Phase::Busy
                };
            }
            be::PARAMETER_STATUS => {
                if let Err(e) = self.encoding.on_parameter_status(body) {
                    // Statements already decided may have been read in the wrong encoding.
                    tracing::warn!(reason = %e, "ending the session");
                    return Err(WireError::malformed(
                        "ParameterStatus",
                        "client_encoding changed where pgward could not see it",
                    ));
                }
            }
            be::COPY_IN_RESPONSE => self.phase = Phase::CopyIn,
            be::COPY_OUT_RESPONSE => self.phase = Phase::CopyOut,
            be::COPY_DONE if self.phase == Phase::CopyOut => self.phase = Phase::Busy,
            // Cancel keys, authentication and protocol negotiation belong to startup;
            // mid-session they would leak upstream secrets or confuse the client.
            be::BACKEND_KEY_DATA
            | be::AUTHENTICATION
            | be::NEGOTIATE_PROTOCOL_VERSION
            | be::COPY_BOTH_RESPONSE => {
                return Err(WireError::malformed(
                    "backend message",
                    "startup-only message after startup",
                ))
            }
            _ => {}
        }
        Ok(())
    }
}

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client sent Terminate.
    ClientTerminated,
    /// The client's connection closed or failed without Terminate.
    ClientGone(Option<io::Error>),
    ClientProtocol(WireError),
    UpstreamGone(Option<io::Error>),
    UpstreamProtocol(WireError),
    /// pgward is shutting down and the drain deadline passed.
    Shutdown,
    /// The client's access token expired (plus grace): ended when idle, or at the
    /// client's next message.
    TokenExpired,
    /// A statement's audit record could not be written: its result is withheld.
    AuditFailed(String),
}

impl RelayEnd {
    /// Error-kind metric label, `None` for a normal end.
    pub fn error_kind(&self) -> Option<&'static str> {
        match self {
            Self::ClientTerminated => None,
            Self::ClientGone(_) => Some("client_gone"),
            Self::ClientProtocol(_) => Some("protocol"),
            Self::UpstreamGone(_) => Some("upstream_gone"),
            Self::UpstreamProtocol(_) => Some("upstream_protocol"),
            Self::Shutdown => Some("shutdown"),
            Self::TokenExpired => Some("token_expired"),
            Self::AuditFailed(_) => Some("audit_failed"),
        }
    }
}

/// Totals for the session log and audit.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
    pub messages_to_upstream: u64,
    pub messages_to_client: u64,
}

pub struct RelayOutcome {
    pub end: RelayEnd,
    /// Statement records written to the audit log.
    pub recorded: u64,
    pub totals: Totals,
    /// True when an upstream query may still be running (the caller cancels it).
    pub upstream_busy: bool,
}

/// What both directions share for the life of a relay.
struct Link<'a> {
    conversation: &'a Mutex<Conversation>,
    /// Set when the token expired while a statement was in flight.
    expired: &'a AtomicBool,
    metrics: &'a Metrics,
    /// Whether writes to each side need a flush ([`HoldsWrites`]).
    flush_client: bool,
    flush_upstream: bool,
}

/// State of the upstream → client direction that outlives a cancelled future, so the
/// caller can tell whether it is safe to write a final ErrorResponse to the client.
struct ToClient {
    scanner: Scanner,
    /// A write to the client was in progress (possibly a partial message).
    writing: bool,
    /// Bytes read from upstream but not yet forwarded.
    held: usize,
}

impl ToClient {
    fn at_boundary(&self) -> bool {
        !self.writing && self.held == 0 && self.scanner.at_boundary()
    }
}

/// What a relay needs to know about its session.
pub struct RelayParams {
    /// Transaction status from the upstream's first ReadyForQuery.
    pub tx: TxStatus,
    /// When the client's token (plus grace) runs out, and the runtime that times it (the
    /// main one: deadline.rs).
    pub expires_at: Option<(Instant, tokio::runtime::Handle)>,
    pub max_message_bytes: usize,
    /// Policy enforcement, when a policy is configured.
    pub gate: Option<Gate>,
    /// Statement records, when an audit log is configured.
    pub trail: Option<Trail>,
    /// Per-session secret for the markers of refused statements.
    pub nonce: String,
    /// The session's place in the per-identity limits (and its statement-rate bucket).
    pub permit: Option<Permit>,
    /// The client_encoding the server reported at startup.
    pub client_encoding: String,
}

/// Relays until either side ends, `shutdown` fires, or the session reaches `expires_at`.
/// `client_buf` holds bytes the client already sent.
pub async fn run<C, U>(
    client: C,
    upstream: U,
    client_buf: BytesMut,
    params: RelayParams,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + HoldsWrites + Send,
    U: AsyncRead + AsyncWrite + HoldsWrites + Send,
{
    let (flush_client, flush_upstream) = (client.holds_writes(), upstream.holds_writes());
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut upstream_rd, mut upstream_wr) = tokio::io::split(upstream);
    let RelayParams {
        tx,
        expires_at,
        max_message_bytes,
        mut gate,
        trail,
        nonce,
        permit,
        client_encoding,
    } = params;
    let encoding = EncodingTrack::new(&client_encoding, gate.is_some());
    let mut conversation = Conversation::new(tx, Denials::new(&nonce), trail, encoding);
    // Held for the whole relay: dropping it gives the connection slot back.
    conversation.rate = permit;
    conversation.masks = gate
        .as_ref()
        .filter(|g| g.has_masks())
        .map(|g| MaskStream::new(g.mask_key()));
    // Column masks rewrite rows: the scanner hands them over whole.
    let scanner = if conversation.masks.is_some() {
        Scanner::inspecting_rows(max_message_bytes)
    } else {
        Scanner::new(max_message_bytes)
    };
    let conversation = Mutex::new(conversation);
    let mut to_client = ToClient {
        scanner,
        writing: false,
        held: 0,
    };
    let mut totals = Totals::default();
    let mut up_totals = Totals::default();
    let expired = AtomicBool::new(false);
    let link = Link {
        conversation: &conversation,
        expired: &expired,
        metrics,
        flush_client,
        flush_upstream,
    };

    let end = {
        let inbound = client_to_upstream(
            &mut client_rd,
            &mut upstream_wr,
            client_buf,
            Framer::new(max_message_bytes),
            gate.as_mut(),
            &link,
            &mut totals,
        );
        let outbound = upstream_to_client(
            &mut upstream_rd,
            &mut client_wr,
            &mut to_client,
            &link,
            &mut up_totals,
        );
        let expiry = async {
            match expires_at {
                Some((t, timers)) => crate::deadline::Deadline::at(&timers, t).await,
                None => std::future::pending().await,
            }
        };
        let cancelled = shutdown.cancelled();
        tokio::pin!(inbound, outbound, expiry, cancelled);
        let mut expiry_armed = true;
        // Each wake-up polls only what woke it (sides.rs): a message from one socket
        // does not also check the other socket, the drain signal and the expiry.
        let sides = Sides::new(4);
        std::future::poll_fn(|cx| {
            let fired = sides.begin(cx);
            if fired & 1 != 0 {
                if let Poll::Ready(end) = inbound.as_mut().poll(&mut sides.context(0)) {
                    return Poll::Ready(end);
                }
            }
            if fired & 2 != 0 {
                if let Poll::Ready(end) = outbound.as_mut().poll(&mut sides.context(1)) {
                    return Poll::Ready(end);
                }
            }
            if fired & 4 != 0 && cancelled.as_mut().poll(&mut sides.context(2)).is_ready() {
                return Poll::Ready(RelayEnd::Shutdown);
            }
            if fired & 8 != 0
                && expiry_armed
                && expiry.as_mut().poll(&mut sides.context(3)).is_ready()
            {
                expiry_armed = false;
                let idle = matches!(conversation.lock().map(|c| c.phase()), Ok(Phase::Idle(_)));
                if idle {
                    return Poll::Ready(RelayEnd::TokenExpired);
                }
                // Busy: the statement in flight finishes; the session ends when it is
                // idle again or the client sends anything more.
                expired.store(true, Ordering::Release);
            }
            Poll::Pending
        })
        .await
    };
    totals.bytes_to_client = up_totals.bytes_to_client;
    totals.messages_to_client = up_totals.messages_to_client;

    let phase = conversation
        .lock()
        .map(|c| c.phase())
        .unwrap_or(Phase::Busy);
    let fatal = match &end {
        RelayEnd::ClientProtocol(e) => Some(("08P01", format!("invalid message: {e}"))),
        RelayEnd::UpstreamProtocol(_) | RelayEnd::UpstreamGone(_) => Some((
            "08006",
            "pgward lost the connection to the upstream server".to_owned(),
        )),
        RelayEnd::Shutdown => Some((
            "57P01",
            "terminating connection because pgward is shutting down".to_owned(),
        )),
        RelayEnd::TokenExpired => Some(("28000", "token expired".to_owned())),
        RelayEnd::AuditFailed(_) => Some((
            "58030",
            "pgward could not record this statement in the audit log; its result is withheld"
                .to_owned(),
        )),
        RelayEnd::ClientTerminated | RelayEnd::ClientGone(_) => None,
    };
    if let Some((code, message)) = fatal {
        if to_client.at_boundary() {
            let mut out = BytesMut::new();
            build::error_response(&mut out, Severity::Fatal, code, &message);
            let _ = client_wr.write_all(&out).await;
            let _ = client_wr.flush().await;
        }
    }
    let _ = client_wr.shutdown().await;
    if !matches!(end, RelayEnd::UpstreamGone(_) | RelayEnd::ClientTerminated) {
        // Ends the upstream backend at once; a running query is cancelled by the caller.
        let mut out = BytesMut::new();
        build::terminate(&mut out);
        let _ = upstream_wr.write_all(&out).await;
        let _ = upstream_wr.flush().await;
    }
    let _ = upstream_wr.shutdown().await;
    let recorded = conversation
        .lock()
        .map(|c| c.trail.as_ref().map_or(0, |t| t.recorded))
        .unwrap_or(0);
    RelayOutcome {
        recorded,
        upstream_busy: !matches!(phase, Phase::Idle(_))
            && !matches!(end, RelayEnd::UpstreamGone(_) | RelayEnd::ClientTerminated),
        end,
        totals,
    }
}

async fn client_to_upstream<C, U>(
    client: &mut ReadHalf<C>,
    upstream: &mut WriteHalf<U>,
    mut buf: BytesMut,
    framer: Framer,
    mut gate: Option<&mut Gate>,
    link: &Link<'_>,
    totals: &mut Totals,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    // A message `judge` could not decide without analysis on the pool was left in the
    // buffer: the next pass analyses it first, then decides it.
    let mut deferred = false;
    loop {
        if !buf.is_empty() && link.expired.load(Ordering::Acquire) {
            return RelayEnd::TokenExpired;
        }
        // A buffer this short holds no statement that needs the pool (the common case).
        let may_hold_long = buf.len() > INLINE_ANALYSIS_BYTES / 2;
        if let (Some(g), true) = (gate.as_deref_mut(), may_hold_long || deferred) {
            let max = g.max_statement_bytes();
            let texts = {
                let conv = link.conversation.lock().unwrap_or_else(|p| p.into_inner());
                long_statements(&framer, &buf, deferred, &conv.encoding, max)
            };
            analyse_ahead(g, texts).await;
        }
        // Frame every whole message in the buffer and decide the ones that carry SQL;
        // forward them as one write (zero-copy unless a message had to be replaced).
        let mut ready = 0;
        let mut messages = 0u64;
        let mut terminated = false;
        let mut replaced: Option<(BytesMut, usize)> = None;
        deferred = false;
        {
            let mut conv = link.conversation.lock().unwrap_or_else(|p| p.into_inner());
            if let (Some(g), Phase::Idle(TxStatus::Idle)) = (gate.as_deref_mut(), conv.phase()) {
                g.transaction_ended();
            }
            loop {
                let msg = match framer.peek(&buf[ready..]) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => return RelayEnd::ClientProtocol(e),
                };
                // Without a policy or an audit log nothing reads the statement's text.
                let text = if gate.is_some() || conv.trail.is_some() {
                    statement_text(msg.tag, msg.body, &conv.encoding)
                } else {
                    None
                };
                let readable = text.as_ref().and_then(|t| t.as_deref().ok());
                let judged = match (gate.as_deref_mut(), readable) {
                    (Some(g), Some(sql)) => match judge(g, sql) {
                        Judgement::Defer => {
                            deferred = true;
                            break;
                        }
                        Judgement::Decided(j) => Some(j),
                    },
                    _ => None,
                };
                let verdict = match decide(
                    gate.as_deref_mut(),
                    msg.tag,
                    msg.body,
                    text,
                    judged,
                    &mut conv,
                ) {
                    Ok(v) => v,
                    Err(e) => return RelayEnd::ClientProtocol(e),
                };
                conv.on_client_message(msg.tag);
                let start = ready;
                ready += msg.total_len;
                messages += 1;
                if let Verdict::Replace(bytes) = verdict {
                    let (out, copied) = replaced.get_or_insert_with(|| (BytesMut::new(), 0));
                    out.extend_from_slice(&buf[*copied..start]);
                    out.extend_from_slice(&bytes);
                    *copied = ready;
                }
                if msg.tag == fe::TERMINATE {
                    terminated = true;
                    break;
                }
            }
        }
        if ready > 0 {
            // Written from the buffer and then skipped (no split-off chunk to allocate
            // and free); the read buffer is reused from its start once it is empty.
            let written = match replaced {
                None => write_flush(upstream, &buf[..ready], link.flush_upstream).await,
                Some((mut out, copied)) => {
                    out.extend_from_slice(&buf[copied..ready]);
                    write_flush(upstream, &out, link.flush_upstream).await
                }
            };
            if let Err(e) = written {
                return RelayEnd::UpstreamGone(Some(e));
            }
            buf.advance(ready);
            totals.bytes_to_upstream += ready as u64;
            totals.messages_to_upstream += messages;
            link.metrics.bytes_to_upstream.inc_by(ready as u64);
            link.metrics.messages_to_upstream.inc_by(messages);
        }
        if terminated {
            return RelayEnd::ClientTerminated;
        }
        if deferred {
            // The rest of the buffer is whole messages: decide them before reading more.
            continue;
        }
        if let Some(g) = gate.as_deref_mut() {
            g.forget_ahead();
        }
        if buf.capacity() - buf.len() < 8 * 1024 {
            buf.reserve(READ_CHUNK);
        }
        frontend::reserve_for_next(&mut buf);
        match client.read_buf(&mut buf).await {
            Ok(0) => return RelayEnd::ClientGone(None),
            Ok(_) => {}
            Err(e) => return RelayEnd::ClientGone(Some(e)),
        }
    }
}

async fn upstream_to_client<C, U>(
    upstream: &mut ReadHalf<U>,
    client: &mut WriteHalf<C>,
    state: &mut ToClient,
    link: &Link<'_>,
    totals: &mut Totals,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // The records a chunk completes; kept across chunks so steady state allocates nothing.
    let mut records: Vec<Append> = Vec::new();
    loop {
        if buf.capacity() - buf.len() < 8 * 1024 {
            buf.reserve(READ_CHUNK);
        }
        match upstream.read_buf(&mut buf).await {
            Ok(0) => return RelayEnd::UpstreamGone(None),
            Ok(_) => {}
            Err(e) => return RelayEnd::UpstreamGone(Some(e)),
        }
        let mut messages = 0u64;
        let idle_again;
        // Marked errors answering denied statements, rewritten into 42501:
        // (offset, length, replacement).
        // (offset, length, range in `replacements`): the replacements of one chunk share
        // one buffer, so a result with masked rows allocates once, not once a row.
        let mut rewrites: Vec<(usize, usize, std::ops::Range<usize>)> = Vec::new();
        let mut replacements = BytesMut::new();
        records.clear();
        let chunk_starts_at_boundary = state.scanner.at_boundary();
        let scanned = {
            let mut conv = link.conversation.lock().unwrap_or_else(|p| p.into_inner());
            let conv = &mut *conv;
            let r = state.scanner.scan::<WireError>(&buf, |at, tag, body| {
                messages += 1;
                // Rows are most of a result and nothing here reads them, unless the
                // caller has masks and this result has masked columns.
                if tag == be::DATA_ROW {
                    if let Some(m) = conv.masks.as_mut() {
                        let start = replacements.len();
                        if m.rewrite_row(body, &mut replacements) {
                            rewrites.push((at, 5 + body.len(), start..replacements.len()));
                        }
                    }
                    return Ok(());
                }
                if let Some(m) = conv.masks.as_mut() {
                    // Errors and notices of a statement that read masked columns may quote
                    // their values: sent without their text (a denial's is pgward's own).
                    if tag == be::NOTICE_RESPONSE && m.withholds_errors() {
                        let start = replacements.len();
                        replacements.extend_from_slice(&withheld_error(tag, body));
                        rewrites.push((at, 5 + body.len(), start..replacements.len()));
                    }
                    if tag == be::ERROR_RESPONSE
                        && m.withholds_errors()
                        && !conv.denials.is_marked(body)
                    {
                        let start = replacements.len();
                        replacements.extend_from_slice(&withheld_error(tag, body));
                        rewrites.push((at, 5 + body.len(), start..replacements.len()));
                    }
                    if matches!(
                        tag,
                        be::ROW_DESCRIPTION
                            | be::COMMAND_COMPLETE
                            | be::EMPTY_QUERY_RESPONSE
                            | be::PORTAL_SUSPENDED
                            | be::ERROR_RESPONSE
                            | be::READY_FOR_QUERY
                    ) {
                        m.on_server(tag, body);
                    }
                }
                if tag == be::ERROR_RESPONSE {
                    let encoding = &conv.encoding;
                    let rewritten = conv.denials.rewrite(body, |m| encoding.message_bytes(m));
                    if let Some(trail) = conv.trail.as_mut() {
                        match &rewritten {
                            Some(r) => {
                                records.extend(trail.on_result(None, Some((r.code, &r.message))))
                            }
                            None => {
                                let e = backend::error_fields(body);
                                records.extend(trail.on_result(None, Some((&e.code, &e.message))));
                            }
                        }
                    }
                    if let Some(new) = rewritten {
                        let start = replacements.len();
                        replacements.extend_from_slice(&new.bytes);
                        rewrites.push((at, 5 + body.len(), start..replacements.len()));
                    }
                } else if let Some(trail) = conv.trail.as_mut() {
                    match tag {
                        be::COMMAND_COMPLETE => {
                            let t = String::from_utf8_lossy(backend::command_tag(body));
                            records.extend(trail.on_result(Some(&t), None));
                        }
                        be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED => {
                            records.extend(trail.on_result(None, None))
                        }
                        be::FUNCTION_CALL_RESPONSE => {
                            records.extend(trail.on_result(Some("FUNCTION CALL"), None))
                        }
                        be::READY_FOR_QUERY => records.extend(trail.on_ready()),
                        _ => {}
                    }
                }
                conv.on_server_message(tag, body)
            });
            idle_again = matches!(conv.phase(), Phase::Idle(_));
            if let Some(m) = conv.masks.as_mut() {
                let n = m.take_masked();
                if n > 0 {
                    link.metrics.masked_values.inc_by(n);
                }
            }
            r
        };
        let ready = match scanned {
            Ok(s) => s.ready,
            Err(e) => return RelayEnd::UpstreamProtocol(e),
        };
        // The records of the statements this chunk completes are written before any of
        // it reaches the client.
        for r in records.drain(..) {
            if let Err(e) = r.await {
                // Nothing of this chunk was written: the client stands where it began.
                state.held = 0;
                state.scanner = Scanner::new(0);
                if !chunk_starts_at_boundary {
                    state.writing = true;
                }
                return RelayEnd::AuditFailed(e.to_string());
            }
        }
        state.held = buf.len() - ready;
        if ready > 0 {
            let chunk = &buf[..ready];
            state.writing = true;
            let written = if rewrites.is_empty() {
                write_flush(client, chunk, link.flush_client).await
            } else {
                let mut out = BytesMut::with_capacity(chunk.len());
                let mut copied = 0;
                for (at, len, new) in &rewrites {
                    out.extend_from_slice(&chunk[copied..*at]);
                    out.extend_from_slice(&replacements[new.clone()]);
                    copied = at + len;
                }
                out.extend_from_slice(&chunk[copied..]);
                write_flush(client, &out, link.flush_client).await
            };
            if let Err(e) = written {
                return RelayEnd::ClientGone(Some(e));
            }
            buf.advance(ready);
            state.writing = false;
            totals.bytes_to_client += ready as u64;
            totals.messages_to_client += messages;
            link.metrics.bytes_to_client.inc_by(ready as u64);
            link.metrics.messages_to_client.inc_by(messages);
        }
        if idle_again && state.held == 0 && link.expired.load(Ordering::Acquire) {
            return RelayEnd::TokenExpired;
        }
    }
}

/// The SQL a Query or Parse carries, as the server will read it from the client's bytes
/// (`None` for other messages, or a malformed one, which `decide` reports).
fn statement_text<'a>(
    tag: u8,
    body: &'a [u8],
    encoding: &EncodingTrack,
) -> Option<Result<Cow<'a, str>, Unreadable>> {
    let bytes = match tag {
        fe::QUERY => frontend::query_bytes(body).ok()?,
        fe::PARSE => frontend::parse_message_bytes(body).ok()?.query,
        _ => return None,
    };
    Some(encoding.decode(bytes))
}

/// The long statements among the whole messages in `buf` (read while the conversation is
/// locked, since their encoding depends on it). After a deferral (`force_first`) the first
/// statement is included whatever its length, so every pass makes progress. Strings over
/// `max` bytes are refused unread and not copied.
fn long_statements(
    framer: &Framer,
    buf: &[u8],
    force_first: bool,
    encoding: &EncodingTrack,
    max: usize,
) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut first = true;
    while let Ok(Some(msg)) = framer.peek(&buf[at..]) {
        at += msg.total_len;
        if msg.tag == fe::TERMINATE {
            break;
        }
        let Some(Ok(sql)) = statement_text(msg.tag, msg.body, encoding) else {
            continue;
        };
        let force = first && force_first;
        first = false;
        if !force && sql.len() <= INLINE_ANALYSIS_BYTES / 2 {
            // Short even after pgward's application_name rewrite: decided inline.
            continue;
        }
        if sql.len() > max {
            continue;
        }
        out.push((sql.into_owned(), force));
    }
    out
}

/// Analyses, on the analysis pool, the long statements that no cached decision covers, so
/// that deciding them under the conversation lock takes microseconds. The runtime thread
/// serves other sessions meanwhile.
async fn analyse_ahead(gate: &mut Gate, texts: Vec<(String, bool)>) {
    for (sql, force) in texts {
        let rewritten = gate.rewrite(&sql);
        let text = rewritten.as_deref().unwrap_or(&sql);
        if gate.needs_analysis(text, force) {
            gate.analyse_ahead(text).await;
        }
    }
}

/// A statement message judged before anything about it is recorded or forwarded.
enum Judgement {
    /// Long and not analysed yet: leave it in the buffer for `analyse_ahead`.
    Defer,
    Decided(Judged),
}

/// The text pgward decided (a client's plain SET application_name is rewritten) and the
/// decision.
struct Judged {
    rewritten: Option<String>,
    qd: Arc<QueryDecision>,
}

fn judge(gate: &mut Gate, sql: &str) -> Judgement {
    let rewritten = gate.rewrite(sql);
    match gate.judge(rewritten.as_deref().unwrap_or(sql)) {
        Some(qd) => Judgement::Decided(Judged { rewritten, qd }),
        None => Judgement::Defer,
    }
}

/// What happens to one client message: the policy decision (`judged`, for a Query or
/// Parse), the audit log's readiness (fail-closed), and the statement units the audit
/// trail needs.
fn decide(
    mut gate: Option<&mut Gate>,
    tag: u8,
    body: &[u8],
    text: Option<Result<Cow<'_, str>, Unreadable>>,
    judged: Option<Judged>,
    conv: &mut Conversation,
) -> Result<Verdict, WireError> {
    let Some(masks) = conv.masks.as_mut() else {
        // A reload gave this caller masks the session was not started with: nothing
        // would rewrite its rows, so nothing runs until it reconnects.
        if let Some(g) = gate.as_deref() {
            if g.has_masks() && matches!(tag, fe::QUERY | fe::BIND | fe::FUNCTION_CALL) {
                let d = Denial::policy(
                    "builtin.mask".to_owned(),
                    "masks now apply to you (the policy was reloaded): reconnect to have them applied".to_owned(),
                );
                return Ok(match tag {
                    fe::BIND => conv.denials.replace_bind(frontend::bind_names(body)?.0, d),
                    _ => conv.denials.replace_query(d),
                });
            }
        }
        return decide_message(gate, tag, body, text, judged, conv);
    };
    // Results are matched to statements in the server's order: every message that will
    // be answered with rows (or ends a batch) is noted before it is forwarded.
    match tag {
        fe::QUERY => {
            // In order: a FETCH reads a cursor declared earlier in the same string.
            if let Some(j) = judged.as_ref() {
                let allowed = !j.qd.decision.blocks();
                for s in &j.qd.statements {
                    let plan = match &s.analysis.fetches {
                        Some(cursor) => masks.cursor(cursor),
                        None => s.masks.clone(),
                    };
                    masks.on_statement(plan);
                    for e in s.analysis.effects.iter().filter(|_| allowed) {
                        if let pgward_policy::SessionEffect::DeclareCursor { name, .. } = e {
                            masks.on_declare(name, s.masks.clone());
                        }
                    }
                }
            }
            // The Query's ReadyForQuery.
            masks.on_sync();
        }
        fe::BIND => {
            // Nothing to note while no statement of the session has a plan and no portal
            // holds one (pgbench -S under a mask on columns it does not read).
            let may_plan = gate.as_deref().is_some_and(Gate::binds_may_plan);
            if may_plan || masks.has_planned_portals() {
                let (portal, statement) = frontend::bind_names(body)?;
                // A plan that cannot be made any more (after a reload) denies the Bind in
                // `Gate::on_bind`; the portal then runs nothing.
                let plan = gate
                    .as_deref_mut()
                    .filter(|_| may_plan)
                    .and_then(|g| g.bind_plan(statement).ok().flatten());
                masks.on_bind(portal, plan, body);
            }
        }
        fe::PARSE => {
            // A DECLARE sent with Parse: FETCH reads the cursor with its plan.
            if let Some(j) = judged.as_ref().filter(|j| !j.qd.decision.blocks()) {
                for s in &j.qd.statements {
                    for e in &s.analysis.effects {
                        if let pgward_policy::SessionEffect::DeclareCursor { name, .. } = e {
                            masks.on_declare(name, s.masks.clone());
                        }
                    }
                }
            }
        }
        fe::EXECUTE if !masks.has_planned_portals() => masks.on_plain_execute(),
        fe::EXECUTE => masks.on_execute(frontend::execute_portal(body)?),
        fe::CLOSE => {
            let (kind, name) = frontend::target(body, "Close")?;
            if kind == target::PORTAL {
                masks.on_close_portal(name);
            }
        }
        fe::SYNC | fe::FUNCTION_CALL => masks.on_sync(),
        _ => {}
    }
    decide_message(gate, tag, body, text, judged, conv)
}

/// [`decide`] for one message, masks aside.
fn decide_message(
    mut gate: Option<&mut Gate>,
    tag: u8,
    body: &[u8],
    text: Option<Result<Cow<'_, str>, Unreadable>>,
    judged: Option<Judged>,
    conv: &mut Conversation,
) -> Result<Verdict, WireError> {
    // Asked only for messages that would run something (CopyData etc. never need it).
    let audit_down = |conv: &Conversation| conv.trail.as_ref().is_some_and(|t| !t.ready());
    // Over the identity's statement rate: refused like a denial (53400), recorded, and the
    // session stays usable. Counted per Query and per Bind (one execution each).
    let over_rate = |conv: &Conversation| {
        conv.rate
            .as_ref()
            .and_then(|p| p.take_statement().err())
            .map(Denial::rate_limited)
    };
    Ok(match tag {
        fe::QUERY => {
            let bytes = frontend::query_bytes(body)?;
            let read = match text {
                Some(Ok(sql)) => Ok(sql),
                Some(Err(e)) => Err(e),
                // Nothing reads the text (no policy, no audit log): only the rate applies,
                // and nothing is allocated for a text no one reads.
                None if gate.is_none() && conv.trail.is_none() => {
                    return Ok(match over_rate(conv) {
                        Some(d) => conv.denials.replace_query(d),
                        None => Verdict::Forward,
                    });
                }
                None => Err(Unreadable::Invalid("malformed".into())),
            };
            // Refused before the policy: over the rate, nothing could record it, or text
            // pgward cannot read as the server will (a policy can't be applied to it).
            let early = over_rate(conv)
                .or_else(|| audit_down(conv).then(Denial::audit_unavailable))
                .or_else(|| {
                    read.as_ref()
                        .err()
                        .and_then(|e| unreadable(gate.is_some(), e))
                });
            if let Some(d) = early {
                if let Some(t) = conv.trail.as_mut() {
                    let shown = read
                        .as_deref()
                        .map_or_else(|_| String::from_utf8_lossy(bytes), Cow::Borrowed);
                    t.on_query(&shown, None, Some(Audited::refused(&d.rule)));
                }
                return Ok(conv.denials.replace_query(d));
            }
            if judged.is_none() && conv.trail.is_none() {
                return Ok(Verdict::Forward);
            }
            let sql = read.unwrap_or_else(|_| String::from_utf8_lossy(bytes));
            let (rewritten, qd) = match judged {
                Some(j) => (j.rewritten, Some(j.qd)),
                None => (None, None),
            };
            let sql = rewritten.as_deref().unwrap_or(&sql);
            if let (Some(g), Some(qd)) = (gate, &qd) {
                g.commit(qd);
            }
            if let Some(t) = conv.trail.as_mut() {
                t.on_query(sql, qd.as_deref(), None);
            }
            if let Some(qd) = qd.as_ref().filter(|qd| !qd.decision.blocks()) {
                conv.encoding.forwarded(qd);
            }
            match (qd, rewritten) {
                (Some(qd), _) if qd.decision.blocks() => conv.denials.replace_query(denial_of(&qd)),
                (_, Some(new_sql)) => match conv.encoding.encode(&new_sql) {
                    Some(b) => {
                        let mut out = BytesMut::new();
                        build::query_bytes(&mut out, &b);
                        Verdict::Replace(out)
                    }
                    None => conv.denials.replace_query(unencodable()),
                },
                _ => Verdict::Forward,
            }
        }
        fe::PARSE => {
            let p = frontend::parse_message_bytes(body)?;
            let read = match text {
                Some(Ok(sql)) => Ok(sql),
                Some(Err(e)) => Err(e),
                // Nothing reads the text (no policy, no audit log).
                None if gate.is_none() && conv.trail.is_none() => return Ok(Verdict::Forward),
                None => Err(Unreadable::Invalid("malformed".into())),
            };
            let early = if audit_down(conv) {
                Some(Denial::audit_unavailable())
            } else {
                read.as_ref()
                    .err()
                    .and_then(|e| unreadable(gate.is_some(), e))
            };
            if let Some(d) = early {
                if let Some(t) = conv.trail.as_mut() {
                    let shown = read
                        .as_deref()
                        .map_or_else(|_| String::from_utf8_lossy(p.query), Cow::Borrowed);
                    t.on_parse(
                        p.statement,
                        &shown,
                        p.param_types,
                        None,
                        Some(Audited::refused(&d.rule)),
                    );
                }
                return Ok(conv.denials.replace_parse(p.statement, d));
            }
            if judged.is_none() && conv.trail.is_none() {
                return Ok(Verdict::Forward);
            }
            let query_text = read.unwrap_or_else(|_| String::from_utf8_lossy(p.query));
            let (rewritten, qd) = match judged {
                Some(j) => (j.rewritten, Some(j.qd)),
                None => (None, None),
            };
            let query = rewritten.as_deref().unwrap_or(&query_text);
            if let (Some(g), Some(qd)) = (gate, &qd) {
                g.commit(qd);
                g.parsed(p.statement, qd);
            }
            if let Some(qd) = qd.as_ref().filter(|qd| !qd.decision.blocks()) {
                conv.encoding.forwarded(qd);
            }
            let verdict = match (&qd, &rewritten) {
                (Some(qd), _) if qd.decision.blocks() => {
                    conv.denials.replace_parse(p.statement, denial_of(qd))
                }
                (_, Some(new_sql)) => match conv.encoding.encode(new_sql) {
                    Some(b) => {
                        let mut out = BytesMut::new();
                        build::parse_bytes_with_types(&mut out, p.statement, &b, &p.param_types);
                        Verdict::Replace(out)
                    }
                    None => conv.denials.replace_parse(p.statement, unencodable()),
                },
                _ => Verdict::Forward,
            };
            if let Some(t) = conv.trail.as_mut() {
                t.on_parse(p.statement, query, p.param_types, qd.as_ref(), None);
            }
            verdict
        }
        fe::BIND => {
            // The parameters are read only for the audit log (no allocation without it).
            let (portal, statement) = match conv.trail.as_mut() {
                Some(t) => {
                    let (portal, statement, params) = frontend::bind_params(body)?;
                    t.on_bind(portal, statement, &params);
                    (portal, statement)
                }
                None => frontend::bind_names(body)?,
            };
            if let Some(d) = over_rate(conv) {
                return Ok(conv.denials.replace_bind(portal, d));
            }
            match gate.and_then(|g| g.on_bind(portal, statement)) {
                Some(denial) => conv.denials.replace_bind(portal, denial),
                None => Verdict::Forward,
            }
        }
        fe::EXECUTE => {
            let portal = frontend::execute_portal(body)?;
            if let Some(t) = conv.trail.as_mut() {
                t.on_execute(portal);
            }
            match gate.and_then(|g| g.on_execute(portal)) {
                Some(denial) => conv.denials.replace_execute(denial),
                None => Verdict::Forward,
            }
        }
        fe::CLOSE => {
            let (kind, name) = frontend::target(body, "Close")?;
            match (gate.as_deref_mut(), kind) {
                (Some(g), target::STATEMENT) => g.on_close_statement(name),
                (Some(g), target::PORTAL) => g.on_close_portal(name),
                _ => {}
            }
            if let Some(t) = conv.trail.as_mut() {
                t.on_close(kind, name);
            }
            Verdict::Forward
        }
        fe::SYNC => {
            if let Some(t) = conv.trail.as_mut() {
                t.on_sync();
            }
            Verdict::Forward
        }
        fe::FUNCTION_CALL => {
            let call = frontend::function_call(body)?;
            let early =
                over_rate(conv).or_else(|| audit_down(conv).then(Denial::audit_unavailable));
            let (text, decided) = match (&early, gate) {
                (Some(_), _) => (format!("FunctionCall of function OID {}", call.oid), None),
                (None, Some(g)) => {
                    let (text, decided) = g.judge_function_call(call.oid, call.args.len());
                    if let Ok(qd) = &decided {
                        g.commit(qd);
                    }
                    (text, Some(decided))
                }
                // No policy: nothing resolves the OID, and nothing needs to.
                (None, None) => (format!("FunctionCall of function OID {}", call.oid), None),
            };
            let denial = match (early, &decided) {
                (Some(d), _) => Some(d),
                (None, Some(Ok(qd))) if qd.decision.blocks() => Some(denial_of(qd)),
                (None, Some(Err(d))) if d.blocks() => Some(Denial::from(d.clone())),
                _ => None,
            };
            if let Some(t) = conv.trail.as_mut() {
                let (qd, refused) = match (&denial, &decided) {
                    (Some(d), None | Some(Err(_))) => (None, Some(Audited::refused(&d.rule))),
                    (_, Some(Ok(qd))) => (Some(&**qd), None),
                    (None, Some(Err(d))) => (None, Some(Audited::observed(d))),
                    (None, None) => (None, None),
                };
                t.on_function_call(&text, qd, refused, &call.args);
            }
            match denial {
                Some(d) => conv.denials.replace_query(d),
                None => Verdict::Forward,
            }
        }
        _ => Verdict::Forward,
    })
}

/// The refusal of text pgward cannot read as the server will, when a policy is enforced
/// (without one nothing is decided, and the audit records the text as best it can).
fn unreadable(enforced: bool, e: &Unreadable) -> Option<Denial> {
    if !enforced {
        return None;
    }
    Some(match e {
        // What the server itself answers for bytes invalid in the client's encoding.
        Unreadable::Invalid(r) => Denial {
            rule: "builtin.client_encoding".into(),
            reason: r.clone(),
            code: "22021",
            position: 0,
        },
        Unreadable::Ambiguous(r) => Denial::policy("builtin.client_encoding".into(), r.clone()),
    })
}

/// A rewritten statement (pgward's application_name) that the client's encoding cannot hold.
fn unencodable() -> Denial {
    Denial::policy(
        "builtin.client_encoding".into(),
        "the statement pgward would send cannot be written in the session's client_encoding".into(),
    )
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8], flush: bool) -> io::Result<()> {
    w.write_all(data).await?;
    if flush {
        w.flush().await?;
    }
    Ok(())
}

/// Whether a stream holds written bytes until it is flushed. TLS does; a TCP socket's
/// flush does nothing, and skipping it saves a lock of the split stream per write.
pub trait HoldsWrites {
    fn holds_writes(&self) -> bool;
}

impl HoldsWrites for crate::stream::ClientStream {
    fn holds_writes(&self) -> bool {
        self.is_tls()
    }
}

impl HoldsWrites for pgward_upstream::UpstreamStream {
    fn holds_writes(&self) -> bool {
        !matches!(self, pgward_upstream::UpstreamStream::Plain(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_tracks_pipelined_syncs_and_copy() {
        let mut c = Conversation::new(
            TxStatus::Idle,
            Denials::default(),
            None,
            EncodingTrack::new("UTF8", true),
        );
        c.on_client_message(fe::PARSE);
        c.on_client_message(fe::SYNC);
        c.on_client_message(fe::QUERY);
        assert_eq!(c.phase(), Phase::Busy);
        c.on_server_message(be::READY_FOR_QUERY, b"T").unwrap();
        assert_eq!(c.phase(), Phase::Busy, "one ReadyForQuery still due");
        c.on_server_message(be::READY_FOR_QUERY, b"I").unwrap();
        assert_eq!(c.phase(), Phase::Idle(TxStatus::Idle));
        c.on_client_message(fe::QUERY);
        c.on_server_message(be::COPY_IN_RESPONSE, b"").unwrap();
        assert_eq!(c.phase(), Phase::CopyIn);
        c.on_client_message(fe::COPY_DATA);
        c.on_client_message(fe::COPY_DONE);
        assert_eq!(c.phase(), Phase::Busy);
        c.on_server_message(be::READY_FOR_QUERY, b"I").unwrap();
        assert_eq!(c.phase(), Phase::Idle(TxStatus::Idle));
        assert!(c
            .on_server_message(be::BACKEND_KEY_DATA, b"12345678")
            .is_err());
    }
}
