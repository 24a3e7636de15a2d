#![allow(clippy::unwrap_used)]
//! HTTP/2 abuse, written as raw frames over h2c: each abusive client is sent GOAWAY and
//! closed, and a well-behaved client on another connection keeps being served.

mod support;

use http::Request;
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://h/`: static-table entries, and `:authority` as a literal.
fn get_block() -> Vec<u8> {
    vec![0x82, 0x86, 0x84, 0x01, 0x01, b'h']
}

async fn start() -> (Gateway, Upstream) {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        up.addr
    ))
    .await;
    (gw, up)
}

/// Opens an h2c connection and writes the preface and an empty SETTINGS frame.
async fn open(addr: SocketAddr) -> (tokio::net::tcp::OwnedReadHalf, OwnedWriteHalf) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = s.into_split();
    w.write_all(PREFACE).await.unwrap();
    w.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    (r, w)
}

/// Writes `frames` in a task of its own (the server may stop reading, or close).
fn flood(mut w: OwnedWriteHalf, frames: Vec<u8>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for chunk in frames.chunks(16 * 1024) {
            if w.write_all(chunk).await.is_err() {
                return;
            }
        }
        // Keep the write side open: the server, not the client, must end this.
        std::future::pending::<()>().await;
    })
}

/// What the server did: the GOAWAY error code it sent (if any) and whether it closed.
async fn outcome(mut r: tokio::net::tcp::OwnedReadHalf) -> (Option<u32>, bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut goaway = None;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Err(_) => return (goaway, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (goaway, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == GOAWAY && len >= 8 {
                goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
            }
            buf.drain(..9 + len);
        }
    }
}

/// A well-behaved client, connected before the abuse, still gets answers after it.
async fn bystander_is_served(h2: &mut H2) {
    let got = h2
        .send(Request::get("http://h/after").body(empty()).unwrap())
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "u");
}

async fn abuse(frames: Vec<u8>) -> (Option<u32>, bool) {
    let (gw, _up) = start().await;
    let mut bystander = H2::connect(gw.addr).await;
    let got = bystander
        .send(Request::get("http://h/before").body(empty()).unwrap())
        .await;
    assert_eq!(got.status, 200);
    let (r, w) = open(gw.addr).await;
    let writer = flood(w, frames);
    let result = outcome(r).await;
    writer.abort();
    bystander_is_served(&mut bystander).await;
    assert_eq!(
        H2::connect(gw.addr)
            .await
            .send(Request::get("http://h/new").body(empty()).unwrap())
            .await
            .status,
        200
    );
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_client_gets_goaway_and_is_closed_while_others_are_served() {
    let mut frames = Vec::new();
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        frames.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &get_block()));
        frames.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let (goaway, closed) = abuse(frames).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_spread_over_time_is_caught_too() {
    // Each stream is reset only after the server has accepted it (its response has
    // started), so h2's pending-accept limit never sees it; the gateway's ratio does.
    let (gw, _up) = start().await;
    let mut bystander = H2::connect(gw.addr).await;
    let (mut r, mut w) = open(gw.addr).await;
    let mut goaway = None;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    'outer: for i in 0..500u32 {
        let id = 2 * i + 1;
        // A request the upstream answers slowly, so it is in flight when cancelled.
        let mut block = vec![0x82, 0x86, 0x04, 0x0a];
        block.extend_from_slice(b"/sleep/500");
        block.extend_from_slice(&[0x01, 0x01, b'h']);
        if w.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, id, &block))
            .await
            .is_err()
        {
            break;
        }
        // Give the server a moment to accept the stream before cancelling it.
        tokio::task::yield_now().await;
        if w.write_all(&frame(RST_STREAM, 0, id, &8u32.to_be_bytes()))
            .await
            .is_err()
        {
            break;
        }
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), r.read(&mut chunk)).await
        {
            if n == 0 {
                break 'outer;
            }
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 9 {
                let len =
                    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                if buf[3] == GOAWAY {
                    goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
                }
                buf.drain(..9 + len);
            }
        }
    }
    drop(w);
    if goaway.is_none() {
        goaway = outcome(r).await.0;
    }
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    bystander_is_served(&mut bystander).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_gets_goaway_and_is_closed_while_others_are_served() {
    let mut frames = frame(HEADERS, END_STREAM, 1, &get_block());
    for _ in 0..100_000 {
        frames.extend(frame(CONTINUATION, 0, 1, &[0x40, 0x01, b'x', 0x01, b'y']));
    }
    let (goaway, closed) = abuse(frames).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_gets_goaway_and_is_closed_while_others_are_served() {
    let mut frames = Vec::new();
    for i in 0..100_000u64 {
        frames.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    let (goaway, closed) = abuse(frames).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_gets_goaway_and_is_closed_while_others_are_served() {
    let mut frames = Vec::new();
    for _ in 0..100_000 {
        frames.extend(frame(SETTINGS, 0, 0, &[0x00, 0x03, 0x00, 0x00, 0x00, 0x64]));
    }
    let (goaway, closed) = abuse(frames).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_data_frame_flood_gets_goaway() {
    // POST / with a body that never comes: empty DATA frames only.
    let mut frames = frame(
        HEADERS,
        END_HEADERS,
        1,
        &[0x83, 0x86, 0x84, 0x01, 0x01, b'h'],
    );
    for _ in 0..100_000 {
        frames.extend(frame(DATA, 0, 1, &[]));
    }
    let (goaway, closed) = abuse(frames).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    assert!(closed);
}

/// An HPACK bomb: one 4000-byte header put in the dynamic table, then referenced over
/// and over with one byte each, so a few KiB of HPACK decode to megabytes.
fn bomb_block() -> Vec<u8> {
    let mut b = get_block();
    // Literal with incremental indexing, new name "x-bomb", value 4000 x 'a'.
    b.push(0x40);
    b.push(6);
    b.extend_from_slice(b"x-bomb");
    // 4000 as a 7-bit-prefix integer: 127, then 3873 in base 128.
    b.extend_from_slice(&[0x7f, 0xa1, 0x1e]);
    b.extend(std::iter::repeat_n(b'a', 4000));
    // Index 62 is the entry just added: 0x80 | 62.
    b.extend(std::iter::repeat_n(0xbe, 2000));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_bombs_are_refused_and_a_client_that_keeps_sending_them_gets_goaway() {
    let mut frames = Vec::new();
    for i in 0..2000u32 {
        frames.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            2 * i + 1,
            &bomb_block(),
        ));
    }
    let (goaway, closed) = abuse(frames).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    assert!(closed);
}
