//! Protocol step, HTTP/2 connections only: reads the frame headers a client sends (and the
//! frame boundaries of what the gateway writes back) to catch the abuse that h2 itself
//! does not stop, and closes the abuser's connection with GOAWAY (ENHANCE_YOUR_CALM).
//!
//! What h2 0.4 already does, configured in `server::builder`: CONTINUATION floods (a cap on
//! CONTINUATION frames per header block, then GOAWAY), HPACK bombs (the *decoded* header
//! list is bounded by `max_header_list_size`, so an oversized block is refused without
//! being held; a client that keeps sending them runs into `max_local_error_reset_streams`,
//! then GOAWAY), streams reset before the server accepted them (rapid reset in one burst:
//! `max_pending_accept_reset_streams`, then GOAWAY) and floods of empty DATA frames. PING
//! and SETTINGS frames are acknowledged one at a time before h2 reads on, so they cannot
//! pile up memory, but h2 answers them for ever. `tests/h2_abuse.rs` has one raw-frame
//! client per attack.
//!
//! What this adds:
//! - **Rapid reset spread over time** (CVE-2023-44487): once a client has cancelled
//!   [`MIN_RESETS`] streams and at least half of all the streams it opened, it is closed.
//!   A client that cancels now and then (gRPC deadlines) never gets there.
//! - **Control-frame floods**: PING, SETTINGS, PRIORITY and empty DATA frames cost a strike;
//!   a request (HEADERS, non-empty DATA) from the client or a response frame (HEADERS,
//!   DATA) from the gateway clears them. More than [`MAX_STRIKES`] in a row close the connection.
//!   Keep-alive and BDP pings come with traffic, or far apart, and never get there.
//!
//! The guard never changes the bytes. It switches itself off for HTTP/1.x connections.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Client-cancelled streams before the reset ratio is looked at.
pub const MIN_RESETS: u64 = 100;
/// Consecutive control frames without any request or response traffic that are tolerated;
/// the next one closes the connection.
pub const MAX_STRIKES: u32 = 256;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Where a byte stream is, frame-wise.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// Matching the client preface; bytes matched so far.
    Preface(usize),
    /// Reading a 9-byte frame header.
    Header([u8; 9], usize),
    /// Skipping a payload.
    Payload(usize),
    Off,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Framing {
    /// Feeds bytes; calls `on_head` for each complete frame header.
    fn feed(&mut self, mut data: &[u8], mut on_head: impl FnMut(Head)) {
        while !data.is_empty() {
            match self {
                Framing::Off => return,
                Framing::Preface(matched) => {
                    let want = &PREFACE[*matched..];
                    let n = want.len().min(data.len());
                    if data[..n] != want[..n] {
                        *self = Framing::Off;
                        return;
                    }
                    data = &data[n..];
                    *matched += n;
                    if *matched == PREFACE.len() {
                        *self = Framing::Header([0; 9], 0);
                    }
                }
                Framing::Header(buf, have) => {
                    let n = (9 - *have).min(data.len());
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == 9 {
                        let b = *buf;
                        let head = Head {
                            len: (usize::from(b[0]) << 16)
                                | (usize::from(b[1]) << 8)
                                | usize::from(b[2]),
                            kind: b[3],
                            flags: b[4],
                            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
                        };
                        on_head(head);
                        *self = if head.len == 0 {
                            Framing::Header([0; 9], 0)
                        } else {
                            Framing::Payload(head.len)
                        };
                    }
                }
                Framing::Payload(left) => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    data = &data[n..];
                    if *left == 0 {
                        *self = Framing::Header([0; 9], 0);
                    }
                }
            }
        }
    }

    fn at_boundary(&self) -> bool {
        matches!(self, Framing::Header(_, 0))
    }
}

/// The counters behind the two rules.
#[derive(Debug, Default)]
struct Tally {
    highest_stream: u32,
    opened: u64,
    resets: u64,
    strikes: u32,
}

impl Tally {
    /// Accounts for one client frame; returns why the client must go, if it must.
    fn client_frame(&mut self, h: Head) -> Option<&'static str> {
        match h.kind {
            HEADERS => {
                if h.stream > self.highest_stream {
                    self.highest_stream = h.stream;
                    self.opened += 1;
                }
                self.strikes = 0;
            }
            DATA if h.len > 0 || h.flags & FLAG_END_STREAM != 0 => self.strikes = 0,
            RST_STREAM => {
                self.resets += 1;
                if self.resets >= MIN_RESETS && self.resets * 2 >= self.opened {
                    return Some("rapid_reset");
                }
            }
            DATA | PRIORITY => self.strikes += 1,
            SETTINGS | PING if h.flags & FLAG_ACK == 0 => self.strikes += 1,
            _ => {}
        }
        (self.strikes > MAX_STRIKES).then_some("control_frame_flood")
    }

    fn gateway_frame(&mut self, h: Head) {
        if h.kind == HEADERS || h.kind == DATA {
            self.strikes = 0;
        }
    }
}

/// A client connection's IO, watched for HTTP/2 abuse.
#[derive(Debug)]
pub struct H2Guard<T> {
    inner: T,
    inbound: Framing,
    outbound: Framing,
    tally: Tally,
    /// Set once the client was judged abusive: no more of its bytes are read.
    tripped: Option<&'static str>,
    /// GOAWAY bytes still to write, and how many are written.
    goaway: Option<([u8; 17], usize)>,
    peer: Option<std::net::SocketAddr>,
}

impl<T> H2Guard<T> {
    /// Watches a connection that may turn out to be HTTP/2 (by its preface).
    pub fn new(inner: T, peer: Option<std::net::SocketAddr>) -> Self {
        H2Guard {
            inner,
            inbound: Framing::Preface(0),
            // The server's first bytes are its SETTINGS frame: no preface that way.
            outbound: Framing::Header([0; 9], 0),
            tally: Tally::default(),
            tripped: None,
            goaway: None,
            peer,
        }
    }

    /// A guard that only passes bytes through (HTTP/1.x by ALPN).
    pub fn off(inner: T) -> Self {
        let mut g = Self::new(inner, None);
        g.inbound = Framing::Off;
        g.outbound = Framing::Off;
        g
    }

    /// Why the connection was closed as abusive, if it was.
    pub fn tripped(&self) -> Option<&'static str> {
        self.tripped
    }

    fn trip(&mut self, reason: &'static str) {
        match self.peer {
            Some(peer) => {
                tracing::info!(%peer, reason, "closing an abusive HTTP/2 connection with GOAWAY")
            }
            None => tracing::info!(reason, "closing an abusive HTTP/2 connection with GOAWAY"),
        }
        self.tripped = Some(reason);
        let mut f = [0u8; 17];
        f[2] = 8; // length
        f[3] = 0x7; // GOAWAY
        f[9..13].copy_from_slice(&self.tally.highest_stream.to_be_bytes());
        f[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        self.goaway = Some((f, 0));
    }
}

fn aborted(reason: &'static str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("HTTP/2 client closed for abuse: {reason}"),
    )
}

impl<T: AsyncWrite + Unpin> H2Guard<T> {
    /// Best effort: writes the GOAWAY if the gateway's own output is between frames, without
    /// waiting on a slow peer (an abuser gets no more of our time).
    fn send_goaway(&mut self, cx: &mut Context<'_>) {
        if !self.outbound.at_boundary() {
            return;
        }
        while let Some((frame, written)) = self.goaway.as_mut() {
            match Pin::new(&mut self.inner).poll_write(cx, &frame[*written..]) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    *written += n;
                    if *written == frame.len() {
                        self.goaway = None;
                        let _ = Pin::new(&mut self.inner).poll_flush(cx);
                    }
                }
                _ => return,
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for H2Guard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(reason) = this.tripped {
            this.send_goaway(cx);
            return Poll::Ready(Err(aborted(reason)));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if matches!(this.inbound, Framing::Off) {
                return r;
            }
            let mut verdict = None;
            let tally = &mut this.tally;
            this.inbound.feed(&buf.filled()[before..], |h| {
                if verdict.is_none() {
                    verdict = tally.client_frame(h);
                }
            });
            if let Some(reason) = verdict {
                // None of this read reaches h2.
                buf.set_filled(before);
                this.trip(reason);
                this.send_goaway(cx);
                return Poll::Ready(Err(aborted(reason)));
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for H2Guard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(reason) = this.tripped {
            return Poll::Ready(Err(aborted(reason)));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = r {
            let tally = &mut this.tally;
            this.outbound.feed(&b[..n], |h| tally.gateway_frame(h));
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(reason) = this.tripped {
            return Poll::Ready(Err(aborted(reason)));
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = r {
            let tally = &mut this.tally;
            for b in bufs {
                if n == 0 {
                    break;
                }
                let take = n.min(b.len());
                this.outbound.feed(&b[..take], |h| tally.gateway_frame(h));
                n -= take;
            }
        }
        r
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

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn run(bytes: &[u8], split: usize) -> Option<&'static str> {
        let mut framing = Framing::Preface(0);
        let mut tally = Tally::default();
        let mut verdict = None;
        for chunk in bytes.chunks(split) {
            framing.feed(chunk, |h| {
                if verdict.is_none() {
                    verdict = tally.client_frame(h);
                }
            });
        }
        verdict
    }

    #[test]
    fn ordinary_requests_with_occasional_cancels_pass_and_pings_with_traffic_pass() {
        let mut s = PREFACE.to_vec();
        s.extend(frame(SETTINGS, 0, 0, &[0; 6]));
        for i in 0..1000u32 {
            let id = 2 * i + 1;
            s.extend(frame(HEADERS, 0x4, id, &[0x82]));
            s.extend(frame(DATA, FLAG_END_STREAM, id, b"x"));
            s.extend(frame(PING, 0, 0, &[0; 8]));
            if i % 5 == 0 {
                s.extend(frame(RST_STREAM, 0, id, &[0, 0, 0, 8]));
            }
        }
        for split in [1, 7, 4096] {
            assert_eq!(run(&s, split), None, "split {split}");
        }
    }

    #[test]
    fn opening_and_cancelling_every_stream_is_rapid_reset() {
        let mut s = PREFACE.to_vec();
        for i in 0..MIN_RESETS as u32 {
            s.extend(frame(HEADERS, 0x4, 2 * i + 1, &[0x82]));
            s.extend(frame(RST_STREAM, 0, 2 * i + 1, &[0, 0, 0, 8]));
        }
        assert_eq!(run(&s, 13), Some("rapid_reset"));
    }

    #[test]
    fn pings_and_settings_without_traffic_are_a_flood() {
        let mut s = PREFACE.to_vec();
        for i in 0..=MAX_STRIKES {
            let kind = if i % 2 == 0 { PING } else { SETTINGS };
            s.extend(frame(
                kind,
                0,
                0,
                &[0; 8][..if kind == PING { 8 } else { 0 }],
            ));
        }
        assert_eq!(run(&s, 5), Some("control_frame_flood"));
        // Acknowledgements are answers to the gateway's own frames, not strikes.
        let mut s = PREFACE.to_vec();
        for _ in 0..=MAX_STRIKES {
            s.extend(frame(PING, FLAG_ACK, 0, &[0; 8]));
        }
        assert_eq!(run(&s, 5), None);
    }

    #[test]
    fn http1_switches_the_guard_off() {
        let mut f = Framing::Preface(0);
        f.feed(b"GET / HTTP/1.1\r\n\r\n", |_| panic!("no frames in HTTP/1"));
        assert!(matches!(f, Framing::Off));
    }
}
