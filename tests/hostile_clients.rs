#![allow(clippy::unwrap_used)]
//! Slow and greedy clients through the real server: slowloris heads, a client that stops
//! reading a large response, a client that takes every connection slot and sits on it,
//! and HTTP/2 streams whose responses are never read. Each test checks that the gateway
//! cuts or bounds the hostile client, and that another client is served meanwhile.
//!
//! Memory is measured indirectly, from the upstream's side: a "firehose" upstream that
//! writes a large body as fast as its socket takes it, counting the bytes the gateway
//! accepted. A gateway that buffered whole bodies would take all of them.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{eventually, get, Gateway, Upstream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const MIB: u64 = 1024 * 1024;

/// One upstream connection of the firehose, as its writer saw it.
#[derive(Debug, Default)]
struct Hose {
    /// Body bytes the gateway's socket accepted.
    sent: AtomicU64,
    /// A write failed: the gateway closed the connection.
    closed: AtomicBool,
    /// The whole body went out.
    finished: AtomicBool,
}

/// An HTTP/1.1 upstream that answers every request with a `body`-byte response, written
/// in 64 KiB pieces as fast as the gateway takes them, from a small send buffer so that
/// the kernel holds little on this side.
struct Firehose {
    addr: SocketAddr,
    hoses: Arc<Mutex<Vec<Arc<Hose>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Firehose {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Firehose {
    async fn start(body: u64) -> Firehose {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hoses: Arc<Mutex<Vec<Arc<Hose>>>> = Arc::default();
        let registry = hoses.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let _ = socket2::SockRef::from(&s).set_send_buffer_size(32 * 1024);
                let hose = Arc::new(Hose::default());
                registry.lock().unwrap().push(hose.clone());
                tokio::spawn(async move {
                    // The request head (the gateway sends no body for a GET).
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {body}\r\n\r\n");
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        hose.closed.store(true, Ordering::SeqCst);
                        return;
                    }
                    let piece = vec![b'z'; 64 * 1024];
                    let mut left = body;
                    while left > 0 {
                        let n = left.min(piece.len() as u64) as usize;
                        match s.write(&piece[..n]).await {
                            Ok(0) | Err(_) => {
                                hose.closed.store(true, Ordering::SeqCst);
                                return;
                            }
                            Ok(w) => {
                                hose.sent.fetch_add(w as u64, Ordering::SeqCst);
                                left -= w as u64;
                            }
                        }
                    }
                    hose.finished.store(true, Ordering::SeqCst);
                    // Keep the connection until the gateway drops it.
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        Firehose { addr, hoses, task }
    }

    fn hoses(&self) -> Vec<Arc<Hose>> {
        self.hoses.lock().unwrap().clone()
    }

    fn total_sent(&self) -> u64 {
        self.hoses()
            .iter()
            .map(|h| h.sent.load(Ordering::SeqCst))
            .sum()
    }

    /// Waits until `n` connections exist and none has sent a byte for `quiet`: the
    /// gateway has stopped taking the bodies. Returns what each had sent by then.
    async fn wait_blocked(&self, n: usize, quiet: Duration, limit: Duration) -> Vec<u64> {
        let deadline = Instant::now() + limit;
        let mut last = (Vec::new(), Instant::now());
        loop {
            let now: Vec<u64> = self
                .hoses()
                .iter()
                .map(|h| h.sent.load(Ordering::SeqCst))
                .collect();
            if now != last.0 {
                last = (now, Instant::now());
            } else if now.len() >= n && now.iter().all(|&s| s > 0) && last.1.elapsed() >= quiet {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "the upstream never blocked within {limit:?}: sent {:?}",
                last.0
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A gateway on a plaintext listener with `listener_extra` (YAML lines for the listener's
/// map), routing `/big` to `big` and everything else to `small`.
async fn gateway(listener_extra: &str, big: SocketAddr, small: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:0
{listener_extra}routes:
  - name: big
    match: {{ pathPrefix: /big }}
    cluster: big
  - name: small
    cluster: small
clusters:
  - name: big
    endpoints: [{{ address: "{big}" }}]
  - name: small
    endpoints: [{{ address: "{small}" }}]
"#
    ))
    .await
}

/// What one slowloris client saw: how long its connection lived, how many head bytes it
/// got out, and whether the gateway closed it (rather than the test giving up).
#[derive(Debug)]
struct Trickled {
    lived: Duration,
    sent: usize,
    closed: bool,
}

/// Connects and sends a request head one byte a second, watching for the close.
async fn slowloris(
    addr: SocketAddr,
    connected: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
) -> Trickled {
    const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: one byte a second\r\n\r\n";
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    open.fetch_add(1, Ordering::SeqCst);
    connected.fetch_add(1, Ordering::SeqCst);
    let give_up = start + Duration::from_secs(15);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    let closed = loop {
        tokio::select! {
            _ = tick.tick() => {
                if sent < HEAD.len() {
                    if s.write_all(&HEAD[sent..=sent]).await.is_err() {
                        break true;
                    }
                    sent += 1;
                }
            }
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => break true,
                // A 408 before the close is allowed; the close is what counts.
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(give_up) => break false,
        }
    };
    open.fetch_sub(1, Ordering::SeqCst);
    Trickled {
        lived: start.elapsed(),
        sent,
        closed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_slowloris_clients_neither_starve_others_nor_outlive_read_header() {
    const CLIENTS: usize = 300;
    let read_header = Duration::from_secs(2);
    let up = Upstream::start("up").await;
    let gw = gateway(
        "    timeouts: { readHeader: 2s, idle: 60s }\n",
        up.addr,
        up.addr,
    )
    .await;

    let connected = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let mut attack = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (c, o) = (connected.clone(), open.clone());
        attack.spawn(slowloris(gw.addr, c, o));
    }
    eventually(Duration::from_secs(10), || {
        (connected.load(Ordering::SeqCst) == CLIENTS).then_some(())
    })
    .await;

    // A normal client, while the slowloris connections are all open.
    let got = get(gw.addr, "x", "/").await;
    let open_when_served = open.load(Ordering::SeqCst);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), "up");
    assert!(
        open_when_served > 0,
        "the normal client was only served once the attack was over"
    );

    let mut results = Vec::new();
    while let Some(r) = attack.join_next().await {
        results.push(r.unwrap());
    }
    let longest = results.iter().map(|r| r.lived).max().unwrap();
    let shortest = results.iter().map(|r| r.lived).min().unwrap();
    eprintln!(
        "{CLIENTS} slowloris clients: lived {shortest:?}..{longest:?}; {open_when_served} open when the normal client was served"
    );
    for r in &results {
        assert!(r.closed, "a slowloris client was never closed: {r:?}");
        assert!(
            r.lived >= read_header - Duration::from_millis(250),
            "closed before readHeader ran out: {r:?}"
        );
        assert!(
            r.lived <= read_header + Duration::from_millis(1500),
            "a slowloris client outlived readHeader ({read_header:?}): {r:?}"
        );
        assert!(
            r.sent <= 4,
            "a slowloris client sent {} bytes of its head: {r:?}",
            r.sent
        );
    }
    assert_eq!(up.hits(), 1, "a slowloris head reached the upstream");
    assert_eq!(get(gw.addr, "x", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_large_response_is_cut_by_write_and_nothing_buffers_the_body()
{
    const BODY: u64 = 64 * MIB;
    let hose = Firehose::start(BODY).await;
    let up = Upstream::start("up").await;
    let gw = gateway("    timeouts: { write: 1s }\n", hose.addr, up.addr).await;

    // A client with a small receive window that reads the head and then nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    let mut slow = socket.connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut first))
        .await
        .expect("no response head")
        .unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );

    // The gateway stops taking the body once the client's side is full...
    let blocked = hose
        .wait_blocked(1, Duration::from_millis(300), Duration::from_secs(10))
        .await;
    // ...and another client is served meanwhile.
    let got = get(gw.addr, "x", "/").await;
    assert_eq!(got.status, 200, "{}", got.text());

    // Then `write` runs out: the gateway gives up the exchange and closes the upstream.
    let h = hose.hoses()[0].clone();
    eventually(Duration::from_secs(10), || {
        h.closed.load(Ordering::SeqCst).then_some(())
    })
    .await;
    let sent = h.sent.load(Ordering::SeqCst);
    eprintln!(
        "slow reader: upstream sent {:.1} MiB of {} MiB before blocking, {:.1} MiB in all",
        blocked[0] as f64 / MIB as f64,
        BODY / MIB,
        sent as f64 / MIB as f64
    );
    assert!(!h.finished.load(Ordering::SeqCst));
    assert!(
        sent < BODY / 4,
        "the upstream sent {sent} of {BODY} bytes to a client that read none: the body was buffered"
    );

    // The client's connection ends short of the body: what was in flight, then the close.
    let mut received = n as u64;
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(k)) => received += k as u64,
            Err(_) => panic!("the slow client's connection was not closed ({received} bytes)"),
        }
    }
    assert!(received < BODY, "the client got the whole body: {received}");
    assert_eq!(get(gw.addr, "x", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_every_connection_idle_is_cut_by_idle_and_the_next_client_is_served() {
    const MAX: usize = 20;
    let idle = Duration::from_secs(1);
    let up = Upstream::start("up").await;
    let gw = gateway(
        "    maxConnections: 20\n    timeouts: { idle: 1s, readHeader: 30s }\n",
        up.addr,
        up.addr,
    )
    .await;

    // Take every slot: one request each, then sit on the keep-alive connection.
    let mut holders = tokio::task::JoinSet::new();
    let (served_tx, mut served_rx) = tokio::sync::mpsc::channel(MAX);
    for _ in 0..MAX {
        let addr = gw.addr;
        let served = served_tx.clone();
        holders.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let got = read_head_and_body(&mut s).await;
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
            let answered = Instant::now();
            served.send(()).await.unwrap();
            let mut buf = [0u8; 256];
            let closed = matches!(
                tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
                Ok(Ok(0)) | Ok(Err(_))
            );
            (closed, answered.elapsed(), Instant::now())
        });
    }
    drop(served_tx);
    for _ in 0..MAX {
        served_rx.recv().await.expect("a holder was not served");
    }

    // The next client waits in the backlog while every slot is held...
    let mut next = TcpStream::connect(gw.addr).await.unwrap();
    next.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(idle / 2, next.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a client beyond maxConnections was answered while every slot was held"
    );
    // ...and is served once `idle` frees the slots.
    let got = tokio::time::timeout(Duration::from_secs(10), read_head_and_body(&mut next))
        .await
        .expect("the next client was not served after the idle connections were cut");
    let served_at = Instant::now();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");

    let mut first_cut = None::<Instant>;
    while let Some(r) = holders.join_next().await {
        let (closed, after, at) = r.unwrap();
        assert!(closed, "an idle connection was kept for 10s (idle: 1s)");
        assert!(
            after >= idle - Duration::from_millis(100)
                && after <= idle + Duration::from_millis(1500),
            "an idle connection was closed {after:?} after its response (idle: {idle:?})"
        );
        first_cut = Some(first_cut.map_or(at, |f| f.min(at)));
    }
    assert!(
        first_cut.unwrap() <= served_at,
        "the next client was served before any held connection was cut"
    );
    assert_eq!(up.hits(), MAX + 1);
    assert_eq!(get(gw.addr, "x", "/").await.status, 200);
}

/// Reads one response with a `content-length` body off a raw socket, as text.
async fn read_head_and_body(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if out.len() >= end + 4 + len {
                return String::from_utf8_lossy(&out).into_owned();
            }
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_that_are_never_read_are_bounded_by_flow_control_not_buffers() {
    const BODY: u64 = 64 * MIB;
    const STREAMS: usize = 20;
    let hose = Firehose::start(BODY).await;
    let up = Upstream::start("up").await;
    let gw = gateway("", hose.addr, up.addr).await;

    // An h2c client with the protocol's default windows (64 KiB per stream and for the
    // connection) that opens streams and never reads a byte of their bodies.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut unread = Vec::new();
    for _ in 0..STREAMS {
        let req = http::Request::get("http://x/big").body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        unread.push(resp);
        client = client.ready().await.unwrap();
    }
    let mut bodies = Vec::new();
    for resp in unread {
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .expect("no response head")
            .unwrap();
        assert_eq!(resp.status(), 200);
        bodies.push(resp.into_body());
    }

    // Every upstream blocks: the windows, not the gateway's memory, decide how much moves.
    let sent = hose
        .wait_blocked(STREAMS, Duration::from_millis(500), Duration::from_secs(15))
        .await;
    let total: u64 = sent.iter().sum();
    let most = *sent.iter().max().unwrap();
    eprintln!(
        "{STREAMS} unread HTTP/2 streams: the upstreams sent {:.2} MiB in all, at most {:.2} MiB on one ({} MiB bodies)",
        total as f64 / MIB as f64,
        most as f64 / MIB as f64,
        BODY / MIB
    );
    assert!(
        hose.hoses()
            .iter()
            .all(|h| !h.finished.load(Ordering::SeqCst) && !h.closed.load(Ordering::SeqCst)),
        "an upstream finished or was closed while its stream was merely unread"
    );
    assert!(
        most < 2 * MIB,
        "one unread stream let its upstream send {most} bytes: the gateway buffers responses"
    );

    // Another client is served meanwhile, on HTTP/2 too.
    let got = get(gw.addr, "x", "/").await;
    assert_eq!(got.status, 200);
    let mut h2 = support::H2::connect(gw.addr).await;
    let got = h2
        .send(
            http::Request::get("http://x/")
                .body(support::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 200);

    // Once the client goes, so do the streams: every upstream connection is released.
    drop(bodies);
    drop(client);
    driver.abort();
    eventually(Duration::from_secs(10), || {
        hose.hoses()
            .iter()
            .all(|h| h.closed.load(Ordering::SeqCst))
            .then_some(())
    })
    .await;
    assert!(hose.total_sent() < BODY, "{}", hose.total_sent());
}

/// A socket whose first write takes only two bytes, and whose next write waits a moment,
/// so the server reads the HTTP/2 preface in two pieces.
struct SplitFirstWrite {
    inner: TcpStream,
    state: u8,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for SplitFirstWrite {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SplitFirstWrite {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::future::Future;
        let this = &mut *self;
        match this.state {
            0 => {
                let n = b.len().min(2);
                let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, &b[..n]);
                if matches!(r, std::task::Poll::Ready(Ok(_))) {
                    this.state = 1;
                    this.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(200))));
                }
                r
            }
            1 => {
                let pause = this.pause.as_mut().unwrap();
                if pause.as_mut().poll(cx).is_pending() {
                    return std::task::Poll::Pending;
                }
                this.state = 2;
                std::pin::Pin::new(&mut this.inner).poll_write(cx, b)
            }
            _ => std::pin::Pin::new(&mut this.inner).poll_write(cx, b),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_client_whose_preface_arrives_in_pieces_outlives_read_header() {
    // The sniff fuzz target found that a preface split inside "PRI " was taken for an
    // HTTP/1 head, and the frames after it for a head that never ended: readHeader then
    // closed a working HTTP/2 connection.
    let up = Upstream::start("up").await;
    let gw = gateway("    timeouts: { readHeader: 1s }\n", up.addr, up.addr).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let io = SplitFirstWrite {
        inner: tcp,
        state: 0,
        pause: None,
    };
    let mut h2 = support::H2::over(io).await;
    let req = || {
        http::Request::get("http://x/")
            .body(support::empty())
            .unwrap()
    };
    assert_eq!(h2.send(req()).await.status, 200);
    // Past readHeader, on the same connection, while it is in use.
    let until = Instant::now() + Duration::from_millis(1800);
    while Instant::now() < until {
        assert_eq!(h2.send(req()).await.status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(h2.send(req()).await.status, 200);
    assert_eq!(get(gw.addr, "x", "/").await.status, 200);
}
