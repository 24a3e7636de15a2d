//! Accept step, HTTP/1.x only: a light pass over raw request heads, before hyper parses
//! them, for what hyper's parser normalises away but the spec refuses: a request-target
//! with a fragment (the `http` crate drops it) and Content-Length together with
//! Transfer-Encoding (hyper drops the Content-Length, which RFC 9112 permits, but a
//! smuggling attempt should get a 400).
//!
//! It also keeps the `readHeader` clock: a head is "in progress" from accept (for the
//! first request) or from its first byte (for later ones) until its blank line, or until
//! the 24-byte HTTP/2 preface is complete. hyper's own header timer restarts as soon as a
//! keep-alive connection goes idle, which would make `idle` no longer than `readHeader`.
//!
//! It follows message framing (Content-Length, chunked) only to find the next head, and
//! switches itself off on anything it does not understand (hyper then decides alone),
//! after an HTTP/2 preface, and after an upgrade or CONNECT. It never changes the bytes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest line kept while following chunked framing.
const MAX_LINE: usize = 4096;

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// No head in progress.
const NONE: u64 = u64::MAX;

#[derive(Debug)]
enum State {
    /// Reading a request head (buffered only when it spans reads).
    Head,
    /// Reading the rest of the HTTP/2 preface: bytes still expected.
    Preface(usize),
    /// Skipping a fixed-length body.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its line end.
    ChunkData(u64),
    ChunkDataEnd,
    /// Reading trailer lines until an empty one.
    Trailers,
    Off,
}

/// What the sniffer tells the rest of the connection: which request (1-based, 0 = none)
/// to refuse, and since when a request head has been in progress.
#[derive(Debug)]
pub struct HeadWatch {
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

    pub fn refused(&self, request_number: u64) -> bool {
        self.refused.load(Ordering::Acquire) == request_number
    }

    /// When the head now being read started, if one is.
    pub fn head_since_ms(&self) -> Option<u64> {
        Some(self.head_since_ms.load(Ordering::Acquire)).filter(|&t| t != NONE)
    }
}

#[derive(Debug)]
pub struct Sniffer {
    state: State,
    buf: Vec<u8>,
    heads: u64,
    max_head: usize,
    watch: Arc<HeadWatch>,
    clock: crate::util::Clock,
}

impl Sniffer {
    /// `clock` is the origin of the millisecond times in `watch`.
    pub fn new(max_head: usize, watch: Arc<HeadWatch>, clock: crate::util::Clock) -> Self {
        Sniffer {
            state: State::Head,
            buf: Vec::new(),
            heads: 0,
            max_head,
            watch,
            clock,
        }
    }

    /// A sniffer on the process clock, for callers outside the crate (the fuzz targets
    /// and their stable replay), which cannot name `util::Clock`.
    pub fn on_process_clock(max_head: usize, watch: Arc<HeadWatch>) -> Self {
        Self::new(max_head, watch, crate::util::Clock::process())
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

    /// Feeds bytes just read from the client.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Head => {
                    if self.buf.is_empty() {
                        // Empty lines before a request line are allowed (RFC 9112 §2.2).
                        let skip = data
                            .iter()
                            .take_while(|&&b| b == b'\r' || b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                        self.head_started();
                        if data.starts_with(b"PRI ") {
                            self.state = State::Preface(H2_PREFACE.len());
                            continue;
                        }
                        if let Some(end) = head_end(data) {
                            self.head(&data[..end]);
                            data = &data[end..];
                            continue;
                        }
                    }
                    let before = self.buf.len();
                    self.buf.extend_from_slice(data);
                    if self.buf.starts_with(b"PRI ") {
                        // An HTTP/2 preface whose first bytes came in an earlier read.
                        let seen = std::mem::take(&mut self.buf).len();
                        match H2_PREFACE.len().checked_sub(seen) {
                            Some(left) if left > 0 => self.state = State::Preface(left),
                            _ => self.off(),
                        }
                        return;
                    }
                    // Search from a little before the join, so a split "\r\n\r\n" is found.
                    let from = before.saturating_sub(3);
                    match head_end(&self.buf[from..]) {
                        Some(end) => {
                            let end = from + end;
                            let head = std::mem::take(&mut self.buf);
                            self.head(&head[..end]);
                            let consumed = end - before;
                            data = &data[consumed..];
                        }
                        None => {
                            if self.buf.len() > self.max_head {
                                self.off();
                            }
                            return;
                        }
                    }
                }
                State::Preface(left) => {
                    let take = data.len().min(left);
                    data = &data[take..];
                    if take == left {
                        // HTTP/2 from here on: streams have their own limits.
                        self.off();
                        return;
                    }
                    self.state = State::Preface(left - take);
                }
                State::Fixed(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::Head
                    } else {
                        State::Fixed(n - take)
                    };
                }
                State::ChunkSize | State::Trailers | State::ChunkDataEnd => {
                    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                        self.buf.extend_from_slice(data);
                        if self.buf.len() > MAX_LINE {
                            self.off();
                        }
                        return;
                    };
                    self.buf.extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    let line = std::mem::take(&mut self.buf);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.line(line);
                }
                State::ChunkData(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(n - take)
                    };
                }
            }
        }
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.buf = Vec::new();
        self.head_done();
    }

    fn line(&mut self, line: &[u8]) {
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

    /// Checks one complete head (including its final blank line) and sets up framing.
    fn head(&mut self, head: &[u8]) {
        self.heads += 1;
        self.head_done();
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let Some(request_line) = lines.next() else {
            return self.off();
        };
        let mut parts = request_line.split(|&b| b == b' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        let mut refuse = target.contains(&b'#');
        let (mut content_length, mut chunked, mut upgrade) = (None::<u64>, false, false);
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                match n {
                    Some(n) => content_length = Some(n),
                    None => return self.off(),
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = true;
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            }
        }
        refuse |= chunked && content_length.is_some();
        if refuse {
            self.watch.refused.store(self.heads, Ordering::Release);
            // The connection closes after the 400; nothing more to check.
            return self.off();
        }
        if upgrade || method == b"CONNECT" {
            return self.off();
        }
        self.state = match (chunked, content_length) {
            (true, _) => State::ChunkSize,
            (false, Some(n)) if n > 0 => State::Fixed(n),
            _ => State::Head,
        };
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
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
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if !matches!(this.sniffer.state, State::Off) {
                this.sniffer.feed(&buf.filled()[before..]);
            }
        }
        r
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

    fn run(chunks: &[&[u8]]) -> (u64, u64) {
        let v = Arc::new(HeadWatch::new(0));
        let mut s = Sniffer::new(64 * 1024, v.clone(), crate::util::Clock::process());
        for c in chunks {
            s.feed(c);
        }
        (s.heads, v.refused.load(Ordering::Acquire))
    }

    #[test]
    fn follows_framing_across_pipelined_requests_and_split_reads() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(run(&[stream]), (3, 0));
        // Byte by byte gives the same answer.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes), (3, 0));
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        let s: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\n\r\nPOST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(run(&[s]), (2, 2));
    }

    #[test]
    fn a_head_is_in_progress_from_accept_until_its_blank_line_and_again_from_its_first_byte() {
        let w = Arc::new(HeadWatch::new(0));
        let mut s = Sniffer::new(64 * 1024, w.clone(), crate::util::Clock::process());
        assert_eq!(
            w.head_since_ms(),
            Some(0),
            "the first head is due from accept"
        );
        s.feed(b"GET / HTTP/1.1\r\nHo");
        assert!(w.head_since_ms().is_some());
        s.feed(b"st: h\r\n\r\n");
        assert_eq!(
            w.head_since_ms(),
            None,
            "idle between requests is not readHeader's"
        );
        s.feed(b"G");
        assert!(w.head_since_ms().is_some());
        let w2 = Arc::new(HeadWatch::new(0));
        let mut h2 = Sniffer::new(64 * 1024, w2.clone(), crate::util::Clock::process());
        h2.feed(b"PRI * HTTP/2.0\r\n");
        assert!(
            w2.head_since_ms().is_some(),
            "a partial preface is still a head"
        );
        h2.feed(b"\r\nSM\r\n\r\n\x00\x00");
        assert_eq!(w2.head_since_ms(), None);
    }

    #[test]
    fn an_http2_preface_split_inside_its_first_four_bytes_is_still_a_preface() {
        // Found by the `sniff` fuzz target: with "PR" in one read, the preface used to be
        // read as an HTTP/1 head, and the HTTP/2 frames after it as the next head, whose
        // readHeader clock then closed a busy HTTP/2 connection.
        for split in 1..4 {
            let w = Arc::new(HeadWatch::new(0));
            let mut s = Sniffer::new(64 * 1024, w.clone(), crate::util::Clock::process());
            s.feed(&H2_PREFACE[..split]);
            s.feed(&H2_PREFACE[split..]);
            s.feed(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
            assert_eq!(w.head_since_ms(), None, "split at {split}");
            assert!(matches!(s.state, State::Off), "split at {split}");
        }
    }

    #[test]
    fn a_fragment_in_the_target_is_refused() {
        assert_eq!(run(&[b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n"]), (1, 1));
    }

    #[test]
    fn body_bytes_that_look_like_heads_are_not_read_as_heads() {
        let s: &[u8] =
            b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\nGET /#x HTTP/1.1\r\nA: b\r\n\r\n1234";
        assert_eq!(run(&[s]), (1, 0));
    }
}
