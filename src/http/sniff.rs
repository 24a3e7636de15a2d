//! Accept step, HTTP/1.x: every request head passes through here, whole, before hyper
//! parses it, so that the gateway (not hyper) answers whatever is wrong with it.
//!
//! hyper answers a head it cannot parse with a bare 400 (or 431, 414) and an empty body;
//! the spec promises the JSON envelope for every response the gateway makes. So a head is
//! held back until it is complete and checked with the rules hyper applies (its own parser,
//! `httparse`, then the URI, `Content-Length` and `Transfer-Encoding` checks hyper makes),
//! plus the spec's own: no fragment in the request-target (the `http` crate drops it) and
//! no `Content-Length` together with `Transfer-Encoding` (hyper drops the `Content-Length`,
//! which RFC 9112 permits, but a smuggling attempt gets a 400). A head that fails is never
//! shown to hyper: a small stand-in head takes its place, the proxy answers that request
//! number with the envelope (`HeadWatch::refused`) and `connection: close`, and nothing
//! the client sends afterwards is read. A head that grows past the size limit without
//! ending is refused the same way, with 431.
//!
//! Valid bytes pass unchanged, in place when a head arrives in one read (the common case),
//! copied once when it spans reads. Message framing (Content-Length, chunked) is followed
//! only to find the next head; the sniffer switches itself off after an HTTP/2 preface,
//! after an upgrade or CONNECT, and on chunked framing it does not understand (hyper then
//! decides alone, and the proxy answers with the envelope).
//!
//! It also enforces which HTTP versions a connection may speak (hyper-util's auto server
//! ignores `http1_only`/`http2_only` when it serves upgrades): a connection that may not
//! speak HTTP/2 is closed at the preface, and one that must (TLS with ALPN `h2`) is closed
//! at anything else.
//!
//! And it keeps the `readHeader` clock: a head is "in progress" from accept (for the first
//! request) or from its first byte (for later ones) until its blank line, or until the
//! 24-byte HTTP/2 preface is complete. hyper's own header timer restarts as soon as a
//! keep-alive connection goes idle, which would make `idle` no longer than `readHeader`.

use crate::error::ErrorKind;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest line kept while following chunked framing.
const MAX_LINE: usize = 4096;

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Header lines in one request head, at most (hyper's `max_headers`, set from this): more
/// get 431.
pub const MAX_HEADERS: usize = 256;

/// hyper's longest request-target (it answers 414 beyond it); the gateway answers 431,
/// since the target is part of the head whose size the listener limits.
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// The head that stands in for a refused one whose request line cannot be kept: method
/// `-` (a valid token, and what logs write for "unknown"), path `/`.
const STAND_IN: &[u8] = b"- / HTTP/1.1\r\n\r\n";

/// No head in progress.
const NONE: u64 = u64::MAX;

/// Reads with nothing to hand on, in one `poll_read`, before yielding to other tasks.
const READS_PER_POLL: usize = 16;

/// A read into a buffer with less room than this goes through a buffer of this size on
/// the stack instead (hyper-util reads a connection's first bytes 24 at a time, to tell
/// HTTP/2 from HTTP/1; a head must not be read from the socket in such steps).
const SCRATCH: usize = 4096;

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed, or framed in a way the gateway does not accept: 400 `bad_request`.
    BadRequest,
    /// More than the listener's `maxRequestHeadersSize` (with slack), or more than
    /// [`MAX_HEADERS`] header lines: 431 `headers_too_large`.
    HeadersTooLarge,
    /// Plain HTTP sent to a TLS listener: 400 `bad_request`, saying so.
    PlainHttp,
}

impl Refusal {
    /// The error the proxy answers with.
    pub(crate) fn kind(self) -> ErrorKind {
        match self {
            Refusal::BadRequest => ErrorKind::BadRequest,
            Refusal::HeadersTooLarge => ErrorKind::HeadersTooLarge,
            Refusal::PlainHttp => ErrorKind::PlainHttpOnTls,
        }
    }

    const ALL: [Refusal; 3] = [
        Refusal::BadRequest,
        Refusal::HeadersTooLarge,
        Refusal::PlainHttp,
    ];

    fn code(self) -> u64 {
        match self {
            Refusal::BadRequest => 0,
            Refusal::HeadersTooLarge => 1,
            Refusal::PlainHttp => 2,
        }
    }
}

/// Which HTTP versions a connection may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.x, or HTTP/2 by prior knowledge (plaintext with `http2` on).
    Any,
    /// HTTP/1.x only: the HTTP/2 preface closes the connection.
    Http1,
    /// HTTP/2 only (TLS, ALPN chose `h2`): anything but the preface closes it.
    Http2,
}

#[derive(Debug)]
enum State {
    /// Reading a request head (or the HTTP/2 preface); held in `buf` while it spans reads.
    Head,
    /// Skipping a fixed-length body.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its line end.
    ChunkData(u64),
    ChunkDataEnd,
    /// Reading trailer lines until an empty one.
    Trailers,
    /// Everything passes unchecked.
    Off,
    /// A head was refused: nothing more is handed on (the connection closes after the
    /// answer).
    Discard,
}

/// What the sniffer tells the rest of the connection: which request (1-based, 0 = none)
/// to refuse and why, and since when a request head has been in progress.
#[derive(Debug)]
pub struct HeadWatch {
    /// `request number × 4 + refusal code`; 0 = none.
    refused: AtomicU64,
    /// Milliseconds on the sniffer's clock; `NONE` when no head is in progress.
    head_since_ms: AtomicU64,
}

impl HeadWatch {
    /// A watch for a connection accepted at `now_ms`: its first head is due from then.
    pub fn new(now_ms: u64) -> Self {
        HeadWatch {
            refused: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(now_ms),
        }
    }

    /// Why request `request_number` (1-based, HTTP/1.x order) was refused, if it was.
    pub fn refused(&self, request_number: u64) -> Option<Refusal> {
        let v = self.refused.load(Ordering::Acquire);
        if v == 0 || v >> 2 != request_number {
            return None;
        }
        Refusal::ALL.into_iter().find(|r| r.code() == v & 3)
    }

    fn refuse(&self, request_number: u64, why: Refusal) {
        self.refused
            .store(request_number << 2 | why.code(), Ordering::Release);
    }

    /// When the head now being read started, if one is.
    pub fn head_since_ms(&self) -> Option<u64> {
        Some(self.head_since_ms.load(Ordering::Acquire)).filter(|&t| t != NONE)
    }
}

/// How a checked head frames what follows it.
#[derive(Debug, Clone, Copy)]
struct Framing {
    chunked: bool,
    length: Option<u64>,
    /// An upgrade or CONNECT: after the response, the bytes are not HTTP any more.
    tunnel: bool,
}

/// Where the bytes of one `feed` call go: `pass` leading bytes stay in place (hyper reads
/// them where they are); once anything else has to be handed on first, the rest follows
/// through the sniffer's output queue instead.
struct Emit {
    in_place: bool,
    pass: usize,
}

#[derive(Debug)]
pub struct Sniffer {
    state: State,
    /// A head in progress that spans reads, held back from hyper until it is complete.
    buf: Vec<u8>,
    /// `buf.len()` when the partial head was last checked (again once it has doubled, so
    /// a head that trickles in is parsed O(n) times in all, not once per byte).
    checked: usize,
    /// A chunked-framing line being read (these bytes pass; the copy is for parsing).
    line: Vec<u8>,
    /// Bytes to hand on before anything read later: a completed held head, a stand-in.
    out: Vec<u8>,
    out_pos: usize,
    heads: u64,
    max_head: usize,
    protocols: Protocols,
    /// Refuse every head for this reason (plain HTTP on a TLS port).
    forced: Option<Refusal>,
    /// The connection is past its first bytes (the protocol check is done).
    started: bool,
    watch: Arc<HeadWatch>,
    clock: crate::util::Clock,
}

impl Sniffer {
    /// A sniffer for a connection that may speak any HTTP version. `max_head` bounds a
    /// head in bytes; `clock` is the origin of the millisecond times in `watch`.
    pub fn new(max_head: usize, watch: Arc<HeadWatch>, clock: crate::util::Clock) -> Self {
        Sniffer {
            state: State::Head,
            buf: Vec::new(),
            checked: 0,
            line: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            heads: 0,
            max_head,
            protocols: Protocols::Any,
            forced: None,
            started: false,
            watch,
            clock,
        }
    }

    /// A sniffer on the process clock, for callers outside the crate (the fuzz targets
    /// and their stable replay), which cannot name `util::Clock`.
    pub fn on_process_clock(max_head: usize, watch: Arc<HeadWatch>) -> Self {
        Self::new(max_head, watch, crate::util::Clock::process())
    }

    /// Restricts the HTTP versions the connection may speak.
    pub fn protocols(mut self, protocols: Protocols) -> Self {
        self.protocols = protocols;
        self
    }

    /// Refuses the first head, whatever it is, for `why` (and with it the connection).
    pub fn refuse_first_head(mut self, why: Refusal) -> Self {
        self.forced = Some(why);
        self
    }

    /// Feeds bytes read into a buffer too small for the in-place path: everything is
    /// handed on through the output queue.
    fn feed_queued(&mut self, data: &[u8]) -> io::Result<()> {
        let pass = self.feed(data)?;
        let queued = std::mem::take(&mut self.out);
        let from = self.out_pos.min(queued.len());
        self.out.extend_from_slice(&data[..pass]);
        self.out.extend_from_slice(&queued[from..]);
        self.out_pos = 0;
        Ok(())
    }

    fn head_started(&self) {
        if self.watch.head_since_ms.load(Ordering::Relaxed) == NONE {
            let now = self.clock.now_ms();
            self.watch.head_since_ms.store(now, Ordering::Release);
        }
    }

    fn head_done(&self) {
        self.watch.head_since_ms.store(NONE, Ordering::Release);
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.buf = Vec::new();
        self.line = Vec::new();
        self.head_done();
    }

    /// Whether everything passes unchecked from now on.
    pub fn is_off(&self) -> bool {
        matches!(self.state, State::Off)
    }

    /// Feeds bytes just read from the client. The first `n` (the return value) are handed
    /// on as they are; then whatever [`Sniffer::take_output`] gives. The rest of `data`
    /// was taken by the sniffer: held (a head in progress), or dropped (after a refusal).
    /// An error means the connection must close (a protocol it may not speak).
    pub fn feed(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut e = Emit {
            in_place: self.buf.is_empty() && self.out_pos >= self.out.len(),
            pass: 0,
        };
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Off => {
                    self.pass(data, i, data.len(), &mut e);
                    i = data.len();
                }
                State::Discard => i = data.len(),
                State::Head => i = self.head_bytes(data, i, &mut e)?,
                State::Fixed(n) => {
                    let take = (data.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    self.pass(data, i, i + take, &mut e);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Fixed(left)
                    };
                }
                State::ChunkData(n) => {
                    let take = (data.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    self.pass(data, i, i + take, &mut e);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkSize | State::Trailers | State::ChunkDataEnd => {
                    let rest = &data[i..];
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        self.pass(data, i, data.len(), &mut e);
                        self.line.extend_from_slice(rest);
                        if self.line.len() > MAX_LINE {
                            self.off();
                        }
                        i = data.len();
                        continue;
                    };
                    self.pass(data, i, i + nl + 1, &mut e);
                    self.line.extend_from_slice(&rest[..nl]);
                    i += nl + 1;
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.framing_line(line);
                }
            }
        }
        Ok(e.pass)
    }

    /// Hands on `data[from..to]`: in place while nothing else had to come first, else
    /// through the output queue.
    fn pass(&mut self, data: &[u8], from: usize, to: usize, e: &mut Emit) {
        if from == to {
            return;
        }
        if e.in_place && e.pass == from {
            e.pass = to;
        } else {
            e.in_place = false;
            self.out.extend_from_slice(&data[from..to]);
        }
    }

    /// Bytes queued to be handed on, if any, after the in-place ones of the last `feed`.
    /// Copies as many as fit into `buf`; returns whether it copied anything.
    pub fn take_output(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let left = &self.out[self.out_pos.min(self.out.len())..];
        if left.is_empty() || buf.remaining() == 0 {
            return false;
        }
        let n = left.len().min(buf.remaining());
        buf.put_slice(&left[..n]);
        self.out_pos += n;
        if self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        true
    }

    /// The client closed its side: a head still held back is handed on as it is (hyper
    /// then sees an incomplete message, as it would have), and nothing more is checked.
    /// Returns whether there is anything to hand on.
    fn end_of_input(&mut self) -> bool {
        if matches!(self.state, State::Discard) {
            return false;
        }
        let held = std::mem::take(&mut self.buf);
        self.out.extend_from_slice(&held);
        self.off();
        self.out_pos < self.out.len()
    }

    /// Request-head bytes from `data[i..]`; returns where the head's bytes end in `data`.
    fn head_bytes(&mut self, data: &[u8], mut i: usize, e: &mut Emit) -> io::Result<usize> {
        if self.buf.is_empty() {
            // Empty lines before a request line are allowed (RFC 9112 §2.2).
            let skip = data[i..]
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if skip > 0 && self.protocols != Protocols::Http2 {
                self.pass(data, i, i + skip, e);
                i += skip;
                if i == data.len() {
                    return Ok(i);
                }
            }
            self.head_started();
            let rest = &data[i..];
            match preface(rest) {
                Preface::Complete => return self.preface_complete(data, i, e),
                Preface::Partial => {}
                Preface::No => {
                    self.not_h2()?;
                    if let Some(end) = head_end(rest) {
                        // However it arrived, a head is held to the same size limit.
                        let verdict = if end > self.max_head {
                            Err(Refusal::HeadersTooLarge)
                        } else {
                            self.check(&rest[..end])
                        };
                        return Ok(match verdict {
                            Ok(framing) => {
                                self.pass(data, i, i + end, e);
                                self.head_passed(framing);
                                i + end
                            }
                            Err(why) => {
                                self.refuse(&rest[..end], why, e);
                                data.len()
                            }
                        });
                    }
                }
            }
        }
        // The head spans reads: hold it.
        let before = self.buf.len();
        self.buf.extend_from_slice(&data[i..]);
        match preface(&self.buf) {
            Preface::Complete => {
                // The held part of the preface, then everything after it.
                e.in_place = false;
                self.out.extend_from_slice(&self.buf[..before]);
                self.buf.clear();
                return self.preface_complete(data, i, e);
            }
            Preface::Partial => return Ok(data.len()),
            Preface::No => self.not_h2()?,
        }
        let from = before.saturating_sub(3);
        if let Some(end) = head_end(&self.buf[from..]).map(|end| from + end) {
            let verdict = if end > self.max_head {
                Err(Refusal::HeadersTooLarge)
            } else {
                self.check(&self.buf[..end])
            };
            return Ok(match verdict {
                Ok(framing) => {
                    e.in_place = false;
                    self.out.extend_from_slice(&self.buf[..end]);
                    self.buf.clear();
                    self.checked = 0;
                    self.head_passed(framing);
                    // What followed the head in this read goes on being read as usual.
                    i + (end - before)
                }
                Err(why) => {
                    let head = std::mem::take(&mut self.buf);
                    self.refuse(&head[..end], why, e);
                    data.len()
                }
            });
        }
        if self.buf.len() > self.max_head {
            let head = std::mem::take(&mut self.buf);
            self.refuse(&head, Refusal::HeadersTooLarge, e);
            return Ok(data.len());
        }
        // Garbage (a TLS hello, a binary protocol) is refused as soon as it is seen, not
        // when a blank line that may never come arrives.
        if self.buf.len() >= self.checked.saturating_mul(2) {
            self.checked = self.buf.len();
            if let Err(why) = check_partial(&self.buf) {
                let head = std::mem::take(&mut self.buf);
                self.refuse(&head, why, e);
            }
        }
        Ok(data.len())
    }

    /// The HTTP/2 preface starts at `data[i..]` (its first bytes may have been held and
    /// queued already): HTTP/2 from here on, unless the connection may not speak it.
    fn preface_complete(&mut self, data: &[u8], i: usize, e: &mut Emit) -> io::Result<usize> {
        if self.protocols == Protocols::Http1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP/2 is not enabled on this connection",
            ));
        }
        self.started = true;
        self.pass(data, i, data.len(), e);
        // Streams have their own limits, and h2guard watches the frames.
        self.off();
        Ok(data.len())
    }

    /// The bytes at a head's start are not the HTTP/2 preface.
    fn not_h2(&mut self) -> io::Result<()> {
        if !self.started && self.protocols == Protocols::Http2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ALPN chose h2, but the client did not send the HTTP/2 preface",
            ));
        }
        self.started = true;
        Ok(())
    }

    /// Checks a complete head (or refuses it regardless, when every head is refused).
    fn check(&self, head: &[u8]) -> Result<Framing, Refusal> {
        match self.forced {
            Some(why) => Err(why),
            None => check_head(head),
        }
    }

    /// A complete head passed: follow the framing of what comes after it.
    fn head_passed(&mut self, framing: Framing) {
        self.heads += 1;
        self.head_done();
        if framing.tunnel {
            return self.off();
        }
        self.state = match (framing.chunked, framing.length) {
            (true, _) => State::ChunkSize,
            (false, Some(n)) if n > 0 => State::Fixed(n),
            _ => State::Head,
        };
    }

    /// Refuses `head` (complete, or as much of it as arrived): a stand-in takes its place,
    /// and nothing after it is handed on.
    fn refuse(&mut self, head: &[u8], why: Refusal, e: &mut Emit) {
        self.heads += 1;
        self.watch.refuse(self.heads, self.forced.unwrap_or(why));
        e.in_place = false;
        stand_in(head, &mut self.out);
        self.state = State::Discard;
        self.buf = Vec::new();
        self.line = Vec::new();
        self.head_done();
    }

    fn framing_line(&mut self, line: &[u8]) {
        match self.state {
            State::ChunkSize => {
                let size = line.split(|&b| b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(size).ok().map(str::trim);
                match size.and_then(|s| u64::from_str_radix(s, 16).ok()) {
                    Some(0) => self.state = State::Trailers,
                    Some(n) => self.state = State::ChunkData(n),
                    None => self.off(),
                }
            }
            State::ChunkDataEnd => {
                if line.is_empty() {
                    self.state = State::ChunkSize;
                } else {
                    self.off();
                }
            }
            State::Trailers => {
                if line.is_empty() {
                    self.state = State::Head;
                }
            }
            _ => self.off(),
        }
    }
}

enum Preface {
    /// The bytes start with the whole preface.
    Complete,
    /// The bytes are a beginning of it: wait for more.
    Partial,
    No,
}

fn preface(bytes: &[u8]) -> Preface {
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] != H2_PREFACE[..n] {
        Preface::No
    } else if n == H2_PREFACE.len() {
        Preface::Complete
    } else {
        Preface::Partial
    }
}

/// Checks a complete head (ending with its blank line) as hyper would parse it, plus the
/// spec's own refusals; returns how the message is framed.
fn check_head(head: &[u8]) -> Result<Framing, Refusal> {
    let mut headers: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        // httparse ends the head elsewhere than the blank line: not a head hyper accepts.
        Ok(_) => return Err(Refusal::BadRequest),
        Err(e) => return Err(refusal(e)),
    }
    let target = req.path.unwrap_or_default();
    if target.len() > MAX_URI_LEN {
        return Err(Refusal::HeadersTooLarge);
    }
    if !valid_target(target) || target.contains('#') {
        return Err(Refusal::BadRequest);
    }
    let http11 = req.version == Some(1);
    let (mut length, mut te, mut chunked) = (None::<u64>, false, false);
    let mut tunnel = req.method == Some("CONNECT");
    for h in req.headers.iter() {
        if h.name.len() >= 1 << 16 {
            return Err(Refusal::HeadersTooLarge);
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Err(Refusal::BadRequest);
            }
            te = true;
            // As hyper: the last Transfer-Encoding line decides, and chunked must be last.
            chunked = last_coding_is_chunked(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = from_digits(h.value).ok_or(Refusal::BadRequest)?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal::BadRequest);
            }
            if n >= u64::MAX - 1 {
                return Err(Refusal::HeadersTooLarge);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            tunnel = true;
        }
    }
    if te && (!chunked || length.is_some()) {
        return Err(Refusal::BadRequest);
    }
    Ok(Framing {
        chunked: te,
        length,
        tunnel,
    })
}

/// Checks the start of a head that has not ended yet: what is there must parse so far.
fn check_partial(head: &[u8]) -> Result<(), Refusal> {
    let mut headers: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(_) => Ok(()),
        Err(e) => Err(refusal(e)),
    }
}

/// hyper's answer to a parse error: 431 for too many headers, else 400.
fn refusal(e: httparse::Error) -> Refusal {
    match e {
        httparse::Error::TooManyHeaders => Refusal::HeadersTooLarge,
        _ => Refusal::BadRequest,
    }
}

/// Whether hyper's URI parser (the `http` crate) accepts `target`. Origin-form targets
/// made of the characters almost every request uses are checked here without allocating.
fn valid_target(target: &str) -> bool {
    let simple = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'?'
                    | b'%'
            )
    };
    if target.starts_with('/') && target.bytes().all(simple) {
        return true;
    }
    http::Uri::try_from(target).is_ok()
}

/// hyper's Content-Length parse: ASCII digits only, no sign, no spaces, no overflow.
fn from_digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn last_coding_is_chunked(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// The head hyper parses in place of a refused one: its request line when that is valid
/// (so the access log shows what was asked), else [`STAND_IN`]. No headers, no body.
fn stand_in(head: &[u8], out: &mut Vec<u8>) {
    let mut headers: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let _ = req.parse_with_uninit_headers(head, &mut headers);
    match (req.method, req.path) {
        (Some(method), Some(path))
            if path.len() <= MAX_URI_LEN && valid_target(path) && !path.contains('#') =>
        {
            out.extend_from_slice(method.as_bytes());
            out.push(b' ');
            out.extend_from_slice(path.as_bytes());
            out.extend_from_slice(if req.version == Some(0) {
                b" HTTP/1.0\r\n\r\n"
            } else {
                b" HTTP/1.1\r\n\r\n"
            });
        }
        _ => out.extend_from_slice(STAND_IN),
    }
}

/// The end (exclusive) of a head: after the first empty line (`\r\n\r\n` or `\n\n`).
fn head_end(data: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = data[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let rest = &data[nl + 1..];
        if rest.first() == Some(&b'\n') {
            return Some(nl + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    None
}

/// A client socket whose reads pass through a [`Sniffer`].
#[derive(Debug)]
pub struct SniffIo<T> {
    inner: T,
    sniffer: Sniffer,
}

impl<T> SniffIo<T> {
    pub fn new(inner: T, sniffer: Sniffer) -> Self {
        SniffIo { inner, sniffer }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SniffIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..READS_PER_POLL {
            if this.sniffer.take_output(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.sniffer.is_off() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if buf.remaining() < SCRATCH {
                let mut space = [0u8; SCRATCH];
                let mut small = ReadBuf::new(&mut space);
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut small))?;
                if small.filled().is_empty() {
                    if matches!(this.sniffer.state, State::Discard) {
                        return Poll::Pending;
                    }
                    if this.sniffer.end_of_input() {
                        continue;
                    }
                    return Poll::Ready(Ok(()));
                }
                this.sniffer.feed_queued(small.filled())?;
                continue;
            }
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let n = buf.filled().len() - before;
            if n == 0 {
                // The client closed its side.
                if matches!(this.sniffer.state, State::Discard) {
                    // A refused head's answer is on its way; an end of input now would make
                    // hyper drop it. The connection closes after the answer.
                    return Poll::Pending;
                }
                if this.sniffer.end_of_input() {
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let pass = this.sniffer.feed(&buf.filled()[before..])?;
            buf.set_filled(before + pass);
            if pass > 0 {
                return Poll::Ready(Ok(()));
            }
            // Nothing to hand on yet: held (read on), or queued (handed on next turn).
        }
        // A client that keeps sending what is held or dropped: let other tasks run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SniffIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sniffer(protocols: Protocols) -> (Sniffer, Arc<HeadWatch>) {
        let w = Arc::new(HeadWatch::new(0));
        let s =
            Sniffer::new(64 * 1024, w.clone(), crate::util::Clock::process()).protocols(protocols);
        (s, w)
    }

    /// Feeds `chunks` in turn and returns what hyper would have read, in order.
    fn handed_on(s: &mut Sniffer, chunks: &[&[u8]]) -> io::Result<Vec<u8>> {
        let mut seen = Vec::new();
        for c in chunks {
            let pass = s.feed(c)?;
            seen.extend_from_slice(&c[..pass]);
            let mut space = [0u8; 7];
            loop {
                let mut b = ReadBuf::new(&mut space);
                if !s.take_output(&mut b) {
                    break;
                }
                seen.extend_from_slice(b.filled());
            }
        }
        Ok(seen)
    }

    fn run(chunks: &[&[u8]]) -> (u64, Option<(u64, Refusal)>, Vec<u8>) {
        let (mut s, w) = sniffer(Protocols::Any);
        let seen = handed_on(&mut s, chunks).expect("no protocol error");
        let refused = (1..=s.heads).find_map(|n| w.refused(n).map(|r| (n, r)));
        (s.heads, refused, seen)
    }

    const PIPELINE: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn follows_framing_across_pipelined_requests_and_split_reads() {
        let (heads, refused, seen) = run(&[PIPELINE]);
        assert_eq!((heads, refused), (3, None));
        assert_eq!(seen, PIPELINE, "valid bytes pass unchanged");
        let bytes: Vec<&[u8]> = PIPELINE.chunks(1).collect();
        let (heads, refused, seen) = run(&bytes);
        assert_eq!(
            (heads, refused),
            (3, None),
            "byte by byte gives the same answer"
        );
        assert_eq!(seen, PIPELINE);
    }

    proptest! {
        #[test]
        fn valid_traffic_reaches_hyper_byte_for_byte_however_it_is_split(
            cuts in proptest::collection::vec(0..PIPELINE.len(), 0..12)
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            cuts.dedup();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain([PIPELINE.len()]) {
                chunks.push(&PIPELINE[last..c]);
                last = c;
            }
            let (heads, refused, seen) = run(&chunks);
            prop_assert_eq!((heads, refused), (3, None));
            prop_assert_eq!(seen, PIPELINE);
        }
    }

    #[test]
    fn a_head_split_across_reads_is_held_until_it_is_complete() {
        let (mut s, _) = sniffer(Protocols::Any);
        assert_eq!(handed_on(&mut s, &[b"GET / HTTP/1.1\r\nHo"]).unwrap(), b"");
        assert_eq!(
            handed_on(&mut s, &[b"st: h\r\n\r\nGET /next"]).unwrap(),
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
        );
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused_and_replaced() {
        let s: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\n\r\nPOST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (heads, refused, seen) = run(&[s]);
        assert_eq!((heads, refused), (2, Some((2, Refusal::BadRequest))));
        assert_eq!(
            seen, b"GET / HTTP/1.1\r\nHost: h\r\n\r\nPOST /x HTTP/1.1\r\n\r\n",
            "the refused head's request line stands in for it; nothing after it passes"
        );
    }

    #[test]
    fn heads_hyper_would_reject_are_refused_before_hyper_sees_them() {
        let cases: &[(&[u8], Refusal, &[u8])] = &[
            (b"GARBAGE\r\n\r\n", Refusal::BadRequest, STAND_IN),
            (
                b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
                Refusal::BadRequest,
                b"GET / HTTP/1.1\r\n\r\n",
            ),
            (
                b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
                Refusal::BadRequest,
                b"GET / HTTP/1.1\r\n\r\n",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                Refusal::BadRequest,
                b"POST / HTTP/1.1\r\n\r\n",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
                Refusal::BadRequest,
                b"POST / HTTP/1.1\r\n\r\n",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                Refusal::BadRequest,
                b"POST / HTTP/1.1\r\n\r\n",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::BadRequest,
                b"POST / HTTP/1.0\r\n\r\n",
            ),
            (
                b"GET /a\x01b HTTP/1.1\r\n\r\n",
                Refusal::BadRequest,
                STAND_IN,
            ),
            (b"GET a/b HTTP/1.1\r\n\r\n", Refusal::BadRequest, STAND_IN),
            (b"GET /<x> HTTP/1.1\r\n\r\n", Refusal::BadRequest, STAND_IN),
            (
                b"GET /a#frag HTTP/1.1\r\n\r\n",
                Refusal::BadRequest,
                STAND_IN,
            ),
            (
                b"GET / HTTP/1.2\r\n\r\n",
                Refusal::BadRequest,
                b"GET / HTTP/1.1\r\n\r\n",
            ),
        ];
        for &(input, why, stand_in) in cases {
            let (heads, refused, seen) = run(&[input]);
            assert_eq!(
                (heads, refused),
                (1, Some((1, why))),
                "{}",
                input.escape_ascii()
            );
            assert_eq!(seen, stand_in, "{}", input.escape_ascii());
            let (mut s, _) = sniffer(Protocols::Any);
            let mut hyper = [httparse::EMPTY_HEADER; 4];
            let mut req = httparse::Request::new(&mut hyper);
            assert!(
                matches!(
                    req.parse(&handed_on(&mut s, &[input]).unwrap()),
                    Ok(httparse::Status::Complete(_))
                ),
                "the stand-in parses"
            );
        }
    }

    #[test]
    fn garbage_is_refused_before_any_blank_line_arrives() {
        let (heads, refused, seen) = run(&[b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]);
        assert_eq!((heads, refused), (1, Some((1, Refusal::BadRequest))));
        assert_eq!(seen, STAND_IN);
    }

    #[test]
    fn a_head_that_grows_past_the_limit_or_has_too_many_lines_gets_431() {
        let w = Arc::new(HeadWatch::new(0));
        let mut s = Sniffer::new(1024, w.clone(), crate::util::Clock::process());
        let mut head = b"GET /big HTTP/1.1\r\nX: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 2000));
        let seen = handed_on(&mut s, &[&head[..500], &head[500..]]).unwrap();
        assert_eq!(w.refused(1), Some(Refusal::HeadersTooLarge));
        assert_eq!(seen, b"GET /big HTTP/1.1\r\n\r\n");
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let (_, refused, _) = run(&[&many]);
        assert_eq!(refused, Some((1, Refusal::HeadersTooLarge)));
        // A complete head over the limit, in one read or two, is refused alike.
        let mut whole = b"GET /big HTTP/1.1\r\nX: ".to_vec();
        whole.extend(std::iter::repeat_n(b'a', 2000));
        whole.extend_from_slice(b"\r\n\r\n");
        for cut in [whole.len(), 100] {
            let w = Arc::new(HeadWatch::new(0));
            let mut s = Sniffer::new(1024, w.clone(), crate::util::Clock::process());
            handed_on(&mut s, &[&whole[..cut], &whole[cut..]]).unwrap();
            assert_eq!(w.refused(1), Some(Refusal::HeadersTooLarge), "cut at {cut}");
        }
    }

    #[test]
    fn a_head_is_in_progress_from_accept_until_its_blank_line_and_again_from_its_first_byte() {
        let (mut s, w) = sniffer(Protocols::Any);
        assert_eq!(
            w.head_since_ms(),
            Some(0),
            "the first head is due from accept"
        );
        s.feed(b"GET / HTTP/1.1\r\nHo").unwrap();
        assert!(w.head_since_ms().is_some());
        s.feed(b"st: h\r\n\r\n").unwrap();
        assert_eq!(
            w.head_since_ms(),
            None,
            "idle between requests is not readHeader's"
        );
        s.feed(b"G").unwrap();
        assert!(w.head_since_ms().is_some());
        let (mut h2, w2) = sniffer(Protocols::Any);
        let seen = handed_on(&mut h2, &[b"PRI * HTTP/2.0\r\n"]).unwrap();
        assert!(seen.is_empty(), "a partial preface is held");
        assert!(
            w2.head_since_ms().is_some(),
            "a partial preface is still a head"
        );
        let seen = handed_on(&mut h2, &[b"\r\nSM\r\n\r\n\x00\x00"]).unwrap();
        assert_eq!(seen, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00");
        assert_eq!(w2.head_since_ms(), None);
    }

    #[test]
    fn the_preface_closes_an_http1_only_connection_and_anything_else_an_h2_only_one() {
        let (mut s, _) = sniffer(Protocols::Http1);
        assert!(s.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_err());
        let (mut s, _) = sniffer(Protocols::Http1);
        assert!(
            s.feed(b"PRI * HTTP/2.0\r\n").is_ok(),
            "only a whole preface decides"
        );
        assert!(s.feed(b"\r\nSM\r\n\r\n").is_err());
        let (mut s, _) = sniffer(Protocols::Http1);
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\n\r\n").unwrap(), 18);
        let (mut s, _) = sniffer(Protocols::Http2);
        assert!(s.feed(b"GET / HTTP/1.1\r\n\r\n").is_err());
        let (mut s, _) = sniffer(Protocols::Http2);
        assert_eq!(s.feed(H2_PREFACE).unwrap(), H2_PREFACE.len());
    }

    #[test]
    fn an_http2_preface_split_inside_its_first_four_bytes_is_still_a_preface() {
        // Found by the `sniff` fuzz target (on the sniffer before heads were held): with
        // "PR" in one read, the preface was read as an HTTP/1 head, and the HTTP/2 frames
        // after it as the next head, whose readHeader clock then closed a busy connection.
        for split in 1..4 {
            let (mut s, w) = sniffer(Protocols::Any);
            let frames: &[u8] = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00";
            let seen = handed_on(
                &mut s,
                &[&H2_PREFACE[..split], &H2_PREFACE[split..], frames],
            )
            .unwrap();
            assert_eq!(seen, [H2_PREFACE, frames].concat(), "split at {split}");
            assert_eq!(w.head_since_ms(), None, "split at {split}");
            assert!(matches!(s.state, State::Off), "split at {split}");
        }
    }

    #[test]
    fn body_bytes_that_look_like_heads_are_not_read_as_heads() {
        let s: &[u8] =
            b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\nGET /#x HTTP/1.1\r\nA: b\r\n\r\n1234";
        let (heads, refused, seen) = run(&[s]);
        assert_eq!((heads, refused), (1, None));
        assert_eq!(seen, s);
    }

    #[test]
    fn after_an_upgrade_everything_passes_unchecked() {
        let s: &[u8] = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello GARBAGE\r\n\r\n";
        let (heads, refused, seen) = run(&[s]);
        assert_eq!((heads, refused), (1, None));
        assert_eq!(seen, s);
    }
}
