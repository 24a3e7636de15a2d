#![allow(clippy::unwrap_used)]
//! L4 TCP passthrough through the real gateway, with raw TCP peers in-process: relaying,
//! balancing, allow/deny, the connection limit, timeouts, half-close, connect retries,
//! the access log, `/status`, shutdown, and validation of the `l4` section.

mod support;

use gateway::config::load_str;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// How long a test waits for something that should happen promptly.
const LIMIT: Duration = Duration::from_secs(5);

// ---- peers ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Behaviour {
    /// Echoes every byte; on EOF, shuts its write side too.
    Echo,
    /// Writes its name and closes.
    Name(&'static str),
    /// Reads to EOF, then replies `got <n>` followed by `reply` bytes of `r`, and closes.
    Sink { reply: usize },
    /// Writes `hello`, shuts its write side, then reads to EOF and records the count.
    Greet,
}

/// A raw TCP upstream on 127.0.0.1:0.
struct TcpServer {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    /// Bytes each `Greet` connection received before EOF.
    received: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpServer {
    async fn start(behaviour: Behaviour) -> TcpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (accepts.clone(), received.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    match behaviour {
                        Behaviour::Echo => {
                            let (mut rd, mut wr) = s.split();
                            let _ = tokio::io::copy(&mut rd, &mut wr).await;
                            let _ = wr.shutdown().await;
                        }
                        Behaviour::Name(name) => {
                            let _ = s.write_all(name.as_bytes()).await;
                        }
                        Behaviour::Sink { reply } => {
                            let mut got = Vec::new();
                            if s.read_to_end(&mut got).await.is_ok() {
                                let _ =
                                    s.write_all(format!("got {}\n", got.len()).as_bytes()).await;
                                let _ = s.write_all(&vec![b'r'; reply]).await;
                                let _ = s.shutdown().await;
                            }
                        }
                        Behaviour::Greet => {
                            let _ = s.write_all(b"hello").await;
                            let _ = s.shutdown().await;
                            let mut got = Vec::new();
                            if s.read_to_end(&mut got).await.is_ok() {
                                r.lock().unwrap().push(got.len());
                            }
                        }
                    }
                });
            }
        });
        TcpServer {
            addr,
            accepts,
            received,
            task,
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

// ---- helpers -------------------------------------------------------------------------

/// A gateway with one HTTP listener (the test harness expects one), an admin listener, an
/// access log, cluster `c` over `endpoints` (`address` or `address:weight` pairs) and the
/// L4 listeners given as YAML list items.
fn config(endpoints: &[(SocketAddr, u32)], l4_listeners: &str, access_log_extra: &str) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(a, w)| format!("      - {{ address: \"{a}\", weight: {w} }}\n"))
        .collect();
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
accessLog: {{ path: "{{dir}}/access.log"{access_log_extra} }}
listeners: [{{ name: http, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: c }}]
clusters:
  - name: c
    timeouts: {{ connect: 2s }}
    endpoints:
{eps}l4:
  listeners:
{l4_listeners}"#
    )
}

/// One L4 listener named `tcp` on cluster `c`, with extra keys (`key: value, ...`).
fn tcp_listener(extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { ", " };
    format!("    - {{ name: tcp, address: \"127.0.0.1:0\", cluster: c{sep}{extra} }}\n")
}

/// `(active, accepted, rejected denied, rejected over the limit)` of an L4 listener.
fn stats(gw: &Gateway, name: &str) -> (u64, u64, u64, u64) {
    let m = |series: String| gw.metric(&series).unwrap_or(0.0) as u64;
    (
        m(format!(
            "gateway_l4_active_connections{{listener=\"{name}\"}}"
        )),
        m(format!(
            "gateway_l4_connections_total{{listener=\"{name}\"}}"
        )),
        m(format!(
            "gateway_l4_rejected_total{{listener=\"{name}\",reason=\"denied\"}}"
        )),
        m(format!(
            "gateway_l4_rejected_total{{listener=\"{name}\",reason=\"connection_limit\"}}"
        )),
    )
}

async fn wait_until_active(gw: &Gateway, name: &str, active: u64) {
    eventually(LIMIT, || (stats(gw, name).0 == active).then_some(())).await;
}

/// Writes `msg` and reads the same number of bytes back.
async fn ping(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    timeout(LIMIT, s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    back
}

/// Whether the gateway closes `s` (EOF or reset) within the limit, with no data first.
async fn closed_by_gateway(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        timeout(LIMIT, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Reads until EOF (or panics after the limit).
async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut out))
        .await
        .expect("EOF in time")
        .unwrap();
    out
}

/// A port that refuses connections and stays that way: bound, never listening, and held
/// (so no other test can start listening on it, as could happen with a port just freed).
fn refusing_endpoint() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

async fn status(gw: &Gateway) -> serde_json::Value {
    get(gw.admin(), "admin", "/status").await.json()
}

fn l4_status<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["l4"]
        .as_array()
        .expect("an l4 section")
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no L4 listener {name} in {status}"))
}

// ---- relaying ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_round_trips_intact() {
    let echo = TcpServer::start(Behaviour::Echo).await;
    let gw = Gateway::start(&config(&[(echo.addr, 1)], &tcp_listener(""), "")).await;
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let s = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    timeout(LIMIT, rd.read_to_end(&mut back))
        .await
        .expect("the echo ends in time")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the bytes came back unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_across_two_endpoints_by_weight() {
    let (a, b) = (
        TcpServer::start(Behaviour::Name("a")).await,
        TcpServer::start(Behaviour::Name("b")).await,
    );
    let gw = Gateway::start(&config(&[(a.addr, 3), (b.addr, 1)], &tcp_listener(""), "")).await;
    let mut seen = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
        seen.push(String::from_utf8(read_to_end(&mut s).await).unwrap());
    }
    // Smooth WRR over {a: 3, b: 1} is exactly `a a b a`, repeated.
    assert_eq!(seen.join(" "), "a a b a a a b a");
    assert_eq!((a.accepts(), b.accepts()), (6, 2));
}

// ---- allow / deny --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_client_is_closed_without_an_upstream_connect_and_counted() {
    let echo = TcpServer::start(Behaviour::Echo).await;
    let listeners = "    - { name: denied, address: \"127.0.0.1:0\", cluster: c, allow: [127.0.0.0/8], deny: [127.0.0.1] }\n\
                     \x20   - { name: not-allowed, address: \"127.0.0.1:0\", cluster: c, allow: [10.0.0.0/8, \"2001:db8::/32\"] }\n\
                     \x20   - { name: allowed, address: \"127.0.0.1:0\", cluster: c, allow: [192.0.2.0/24, 127.0.0.1], deny: [\"::1\"] }\n";
    let gw = Gateway::start(&config(&[(echo.addr, 1)], listeners, "")).await;

    for name in ["denied", "not-allowed"] {
        let mut s = TcpStream::connect(gw.l4_addr(name)).await.unwrap();
        assert!(closed_by_gateway(&mut s).await, "{name} closes the client");
    }
    let mut s = TcpStream::connect(gw.l4_addr("allowed")).await.unwrap();
    assert_eq!(ping(&mut s, b"let me in").await, b"let me in");
    assert_eq!(
        echo.accepts(),
        1,
        "only the admitted client reached the upstream"
    );

    assert_eq!(stats(&gw, "denied"), (0, 1, 1, 0));
    assert_eq!(stats(&gw, "not-allowed"), (0, 1, 1, 0));
    assert_eq!(stats(&gw, "allowed"), (1, 1, 0, 0));
    let status = status(&gw).await;
    assert_eq!(l4_status(&status, "denied")["rejected"]["denied"], 1);
    assert_eq!(l4_status(&status, "allowed")["rejected"]["denied"], 0);
    assert_eq!(l4_status(&status, "allowed")["activeConnections"], 1);
}

// ---- the connection limit ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_over_max_connections_is_closed_and_counted() {
    let echo = TcpServer::start(Behaviour::Echo).await;
    let gw = Gateway::start(&config(
        &[(echo.addr, 1)],
        &tcp_listener("maxConnections: 2"),
        "",
    ))
    .await;
    let addr = gw.l4_addr("tcp");
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ping(&mut first, b"1").await, b"1");
    assert_eq!(ping(&mut second, b"2").await, b"2");

    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_gateway(&mut third).await);
    assert_eq!(stats(&gw, "tcp"), (2, 3, 0, 1));
    assert_eq!(echo.accepts(), 2);
    let status = status(&gw).await;
    let l = l4_status(&status, "tcp");
    assert_eq!(l["rejected"]["connection_limit"], 1);
    assert_eq!(l["accepted"], 3);
    assert_eq!(l["maxConnections"], 2);

    // A slot frees when a connection ends.
    drop(first);
    wait_until_active(&gw, "tcp", 1).await;
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ping(&mut fourth, b"4").await, b"4");
    assert_eq!(stats(&gw, "tcp"), (2, 4, 0, 1));
}

// ---- timeouts ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_keeps_a_connection_open_and_silence_closes_it_after_idle_timeout() {
    let echo = TcpServer::start(Behaviour::Echo).await;
    let gw = Gateway::start(&config(
        &[(echo.addr, 1)],
        &tcp_listener("idleTimeout: 600ms"),
        "",
    ))
    .await;
    let mut s = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
    // Twice the idle timeout in all, but never quiet for long: the clock restarts on
    // every byte.
    for _ in 0..24 {
        assert_eq!(ping(&mut s, b"tick").await, b"tick");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed_by_gateway(&mut s).await, "quiet for 600ms: closed");
    let log = gw.access_log(1).await;
    assert_eq!(log[0]["error"], "idle_timeout");
    assert_eq!(log[0]["bytesIn"], 24 * 4);
    assert_eq!(log[0]["bytesOut"], 24 * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_closes_even_a_busy_connection() {
    let echo = TcpServer::start(Behaviour::Echo).await;
    let gw = Gateway::start(&config(
        &[(echo.addr, 1)],
        &tcp_listener("maxDuration: 300ms"),
        "",
    ))
    .await;
    let mut s = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut buf = [0u8; 4];
    loop {
        assert!(tokio::time::Instant::now() < deadline, "not closed in time");
        if s.write_all(b"busy").await.is_err() {
            break;
        }
        match timeout(LIMIT, s.read(&mut buf))
            .await
            .expect("an answer or a close")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let log = gw.access_log(1).await;
    assert_eq!(log[0]["error"], "max_duration");
}

// ---- half-close ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_shuts_its_write_side_still_reads_the_whole_reply() {
    let sink = TcpServer::start(Behaviour::Sink { reply: 256 * 1024 }).await;
    let gw = Gateway::start(&config(&[(sink.addr, 1)], &tcp_listener(""), "")).await;
    let mut s = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
    s.write_all(&vec![b'q'; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let reply = read_to_end(&mut s).await;
    let head = b"got 100000\n";
    assert!(
        reply.starts_with(head),
        "{:?}",
        &reply[..reply.len().min(32)]
    );
    assert_eq!(reply.len(), head.len() + 256 * 1024);
    let log = gw.access_log(1).await;
    assert_eq!(log[0]["error"], serde_json::Value::Null);
    assert_eq!(log[0]["bytesIn"], 100_000);
    assert_eq!(log[0]["bytesOut"], head.len() + 256 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_shuts_its_write_side_still_receives_what_the_client_sends() {
    let greet = TcpServer::start(Behaviour::Greet).await;
    let gw = Gateway::start(&config(&[(greet.addr, 1)], &tcp_listener(""), "")).await;
    let mut s = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
    assert_eq!(
        read_to_end(&mut s).await,
        b"hello",
        "the upstream's FIN arrives"
    );
    s.write_all(&vec![b'x'; 50_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let received = eventually(LIMIT, || greet.received.lock().unwrap().first().copied()).await;
    assert_eq!(received, 50_000);
    let log = gw.access_log(1).await;
    assert_eq!(log[0]["error"], serde_json::Value::Null);
}

// ---- connect retries -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_skipped_by_the_retry_so_no_connection_fails() {
    let (_held, dead) = refusing_endpoint();
    let echo = TcpServer::start(Behaviour::Echo).await;
    let gw = Gateway::start(&config(&[(dead, 1), (echo.addr, 1)], &tcp_listener(""), "")).await;
    for i in 0..6u8 {
        let mut s = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
        assert_eq!(ping(&mut s, &[i]).await, [i]);
    }
    assert_eq!(echo.accepts(), 6);
    let log = gw.access_log(6).await;
    for line in &log {
        assert_eq!(line["error"], serde_json::Value::Null, "{line}");
        assert_eq!(line["upstream"], echo.addr.to_string(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_is_dead_the_client_is_closed_and_the_log_says_why() {
    let ((_held1, dead1), (_held2, dead2)) = (refusing_endpoint(), refusing_endpoint());
    let gw = Gateway::start(&config(&[(dead1, 1), (dead2, 1)], &tcp_listener(""), "")).await;
    let mut s = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
    assert!(closed_by_gateway(&mut s).await);
    let log = gw.access_log(1).await;
    assert_eq!(log[0]["error"], "upstream_connect_error");
    assert_eq!(
        log[0]["upstream"],
        dead2.to_string(),
        "the second endpoint was tried last"
    );
    wait_until_active(&gw, "tcp", 0).await;
}

// ---- access log ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_connection_with_the_l4_fields() {
    let echo = TcpServer::start(Behaviour::Echo).await;
    let listeners = format!(
        "{}    - {{ name: closed, address: \"127.0.0.1:0\", cluster: c, deny: [127.0.0.0/8] }}\n",
        tcp_listener("")
    );
    let gw = Gateway::start(&config(&[(echo.addr, 1)], &listeners, "")).await;
    let mut clients = Vec::new();
    for msg in [&b"one"[..], b"three"] {
        let mut s = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
        assert_eq!(ping(&mut s, msg).await, msg);
        let local = s.local_addr().unwrap();
        s.shutdown().await.unwrap();
        assert!(read_to_end(&mut s).await.is_empty());
        clients.push((local, msg.len()));
        wait_until_active(&gw, "tcp", 0).await;
    }
    let mut s = TcpStream::connect(gw.l4_addr("closed")).await.unwrap();
    let denied_client = s.local_addr().unwrap();
    assert!(closed_by_gateway(&mut s).await);

    let log = gw.access_log(3).await;
    assert_eq!(log.len(), 3, "one line per connection: {log:#?}");
    let keys = [
        "ts",
        "clientAddr",
        "listener",
        "cluster",
        "upstream",
        "bytesIn",
        "bytesOut",
        "durationMs",
        "error",
    ];
    for line in &log {
        let obj = line.as_object().unwrap();
        let got: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut want = keys.to_vec();
        want.sort_unstable();
        let mut got_sorted = got.clone();
        got_sorted.sort_unstable();
        assert_eq!(got_sorted, want, "exactly the L4 fields: {line}");
        assert!(line["ts"].as_str().unwrap().ends_with('Z'));
        assert!(line["durationMs"].as_f64().unwrap() >= 0.0);
        assert_eq!(line["cluster"], "c");
    }
    for (line, (client, len)) in log.iter().zip(&clients) {
        assert_eq!(line["clientAddr"], client.to_string());
        assert_eq!(line["listener"], "tcp");
        assert_eq!(line["upstream"], echo.addr.to_string());
        assert_eq!(line["bytesIn"], *len);
        assert_eq!(line["bytesOut"], *len);
        assert_eq!(line["error"], serde_json::Value::Null);
    }
    assert_eq!(log[2]["clientAddr"], denied_client.to_string());
    assert_eq!(log[2]["listener"], "closed");
    assert_eq!(log[2]["upstream"], serde_json::Value::Null);
    assert_eq!(log[2]["error"], "denied");
    assert_eq!(log[2]["bytesIn"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_skips_quiet_connections_but_not_errors_and_field_selection_applies() {
    let echo = TcpServer::start(Behaviour::Echo).await;
    let listeners = format!(
        "{}    - {{ name: closed, address: \"127.0.0.1:0\", cluster: c, deny: [127.0.0.0/8] }}\n",
        tcp_listener("")
    );
    let gw = Gateway::start(&config(
        &[(echo.addr, 1)],
        &listeners,
        ", sampleRate: 0.0, alwaysLogErrors: true, fields: [error, status, listener, bytesIn]",
    ))
    .await;
    let mut ok = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
    assert_eq!(ping(&mut ok, b"fine").await, b"fine");
    drop(ok);
    // A connection's line is queued before its slot is freed, so from here on a line for
    // it would come before the next one.
    wait_until_active(&gw, "tcp", 0).await;
    let mut denied = TcpStream::connect(gw.l4_addr("closed")).await.unwrap();
    assert!(closed_by_gateway(&mut denied).await);
    let lines = gw.access_log_lines(1).await;
    assert_eq!(
        lines,
        vec![r#"{"error":"denied","listener":"closed","bytesIn":0}"#],
        "only errors are logged at sampleRate 0, with the selected L4 fields in order"
    );
}

// ---- status and shutdown -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_l4_listeners_with_their_counters() {
    let echo = TcpServer::start(Behaviour::Echo).await;
    let gw = Gateway::start(&config(
        &[(echo.addr, 1)],
        &tcp_listener("maxConnections: 7"),
        "",
    ))
    .await;
    let mut s = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
    assert_eq!(ping(&mut s, b"12345").await, b"12345");
    // The counter moves just after the write that the client has already read from.
    let bytes_out = |gw: &Gateway| {
        gw.metric("gateway_l4_bytes_total{listener=\"tcp\",direction=\"out\"}")
            .unwrap_or(0.0) as u64
    };
    eventually(LIMIT, || (bytes_out(&gw) == 5).then_some(())).await;
    let status = status(&gw).await;
    let l = l4_status(&status, "tcp");
    assert_eq!(l["address"], "127.0.0.1:0", "the configured address");
    assert_eq!(l["cluster"], "c");
    assert_eq!(l["maxConnections"], 7);
    assert_eq!(l["activeConnections"], 1);
    assert_eq!(l["accepted"], 1);
    assert_eq!(
        l["rejected"],
        serde_json::json!({"denied": 0, "connection_limit": 0})
    );
    assert_eq!(l["bytesIn"], 5);
    assert_eq!(l["bytesOut"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_open_connections_run_until_the_drain_time_is_over() {
    let echo = TcpServer::start(Behaviour::Echo).await;
    let gw = Gateway::start(&config(&[(echo.addr, 1)], &tcp_listener(""), "")).await;
    let addr = gw.l4_addr("tcp");
    let mut open = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ping(&mut open, b"before").await, b"before");
    let mut gw = gw;
    let running = gw.running.take().unwrap();
    let mut stopping = tokio::spawn(running.shutdown(Duration::from_secs(30)));
    // New connections are refused once the accept loop has stopped and dropped its
    // socket. (One that slips in before that is relayed and ends at once.)
    let deadline = tokio::time::Instant::now() + LIMIT;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The open connection still relays, and shutdown waits for it.
    assert_eq!(ping(&mut open, b"during").await, b"during");
    assert!(timeout(Duration::from_millis(50), &mut stopping)
        .await
        .is_err());
    drop(open);
    assert!(timeout(LIMIT, stopping).await.unwrap().unwrap(), "drained");
    let path = gw.access_log_path();
    let line = eventually(LIMIT, || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l["bytesIn"] == 12)
    })
    .await;
    assert_eq!(line["error"], serde_json::Value::Null, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_still_open_when_the_drain_time_is_over_are_closed() {
    let echo = TcpServer::start(Behaviour::Echo).await;
    let gw = Gateway::start(&config(&[(echo.addr, 1)], &tcp_listener(""), "")).await;
    let mut open = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
    assert_eq!(ping(&mut open, b"hi").await, b"hi");
    let mut gw = gw;
    let running = gw.running.take().unwrap();
    assert!(
        !running.shutdown(Duration::from_millis(100)).await,
        "not drained"
    );
    assert!(closed_by_gateway(&mut open).await);
    let log = gw.access_log(1).await;
    assert_eq!(log[0]["error"], "shutdown");
}

// ---- validation ----------------------------------------------------------------------

const BASE: &str = "\
admin: { address: 127.0.0.1:9901 }
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";

fn problems(text: &str) -> (Vec<gateway::config::Problem>, Vec<gateway::config::Problem>) {
    match load_str(Path::new("gateway.yaml"), text) {
        Ok(loaded) => (Vec::new(), loaded.warnings),
        Err(invalid) => (invalid.errors, invalid.warnings),
    }
}

/// The message at `path`, which must be on the line holding `needle`.
fn error_at(errors: &[gateway::config::Problem], text: &str, path: &str, needle: &str) -> String {
    let e = errors
        .iter()
        .find(|p| p.path == path)
        .unwrap_or_else(|| panic!("no error at `{path}`; errors were:\n{errors:#?}"));
    let at = text.find(needle).unwrap();
    assert_eq!(
        e.line,
        text[..at].matches('\n').count() + 1,
        "line of {e:?}"
    );
    e.message.clone()
}

#[test]
fn an_l4_listener_gets_the_documented_defaults() {
    let text = format!(
        "{BASE}l4:\n  listeners:\n    - {{ name: pg, address: 127.0.0.1:15432, cluster: app }}\n"
    );
    let loaded = load_str(Path::new("gateway.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let l = &loaded.config.l4[0];
    assert_eq!(l.idle_timeout, Duration::from_secs(600));
    assert_eq!(l.max_duration, None);
    assert_eq!(l.max_connections, 10_000);
    assert!(l.allow.is_empty() && l.deny.is_empty());
}

#[test]
fn every_l4_problem_is_reported_with_its_key_path_and_line() {
    let text = format!(
        "{BASE}l4:
  listeners:
    - name: public
      address: 127.0.0.1:8080
      cluster: nowhere
      allow: [10.0.0.0/33, \"::1\", not-an-ip, 7]
      deny: [192.168.1.0/24]
      maxConnections: 0
      idleTimeout: 0s
      maxDuration: forever
    - name: admin-clash
      address: 127.0.0.1:9901
      cluster: app
      color: blue
    - name: admin-clash
      address: 0.0.0.0:15432
      cluster: app
      idleTimeout: 5
    - name: wide
      address: 127.0.0.1:15432
      cluster: app
"
    );
    let (errors, _) = problems(&text);
    let msg = error_at(
        &errors,
        &text,
        "l4.listeners[0].address",
        "address: 127.0.0.1:8080\n      cluster: nowhere",
    );
    assert!(msg.contains("listeners[0].address"), "{msg}");
    let msg = error_at(
        &errors,
        &text,
        "l4.listeners[0].name",
        "name: public\n      address: 127.0.0.1:8080\n      cluster: nowhere",
    );
    assert!(
        msg.contains("listeners[0]") && msg.contains("metrics"),
        "{msg}"
    );
    let msg = error_at(
        &errors,
        &text,
        "l4.listeners[0].cluster",
        "cluster: nowhere",
    );
    assert!(msg.contains("does not exist"), "{msg}");
    for i in [0, 2, 3] {
        let msg = error_at(
            &errors,
            &text,
            &format!("l4.listeners[0].allow[{i}]"),
            "allow: [10.0.0.0/33",
        );
        assert!(msg.contains("CIDR"), "{msg}");
    }
    assert!(
        !errors.iter().any(|e| e.path == "l4.listeners[0].allow[1]"),
        "a bare IPv6 address is fine"
    );
    let msg = error_at(
        &errors,
        &text,
        "l4.listeners[0].maxConnections",
        "maxConnections: 0",
    );
    assert!(msg.contains("at least 1"), "{msg}");
    let msg = error_at(
        &errors,
        &text,
        "l4.listeners[0].idleTimeout",
        "idleTimeout: 0s",
    );
    assert!(msg.contains("0s"), "{msg}");
    let msg = error_at(
        &errors,
        &text,
        "l4.listeners[0].maxDuration",
        "maxDuration: forever",
    );
    assert!(msg.contains("duration"), "{msg}");
    let msg = error_at(
        &errors,
        &text,
        "l4.listeners[1].address",
        "address: 127.0.0.1:9901\n      cluster: app",
    );
    assert!(msg.contains("admin.address"), "{msg}");
    let msg = error_at(&errors, &text, "l4.listeners[1].color", "color: blue");
    assert!(msg.contains("unknown key"), "{msg}");
    let msg = error_at(
        &errors,
        &text,
        "l4.listeners[2].name",
        "name: admin-clash\n      address: 0.0.0.0",
    );
    assert!(msg.contains("duplicate name"), "{msg}");
    let msg = error_at(
        &errors,
        &text,
        "l4.listeners[2].idleTimeout",
        "idleTimeout: 5",
    );
    assert!(msg.contains("duration"), "{msg}");
    let msg = error_at(
        &errors,
        &text,
        "l4.listeners[3].address",
        "address: 127.0.0.1:15432",
    );
    assert!(msg.contains("overlaps 0.0.0.0:15432"), "{msg}");
    assert_eq!(errors.len(), 14, "{errors:#?}");
}

#[test]
fn a_route_naming_an_l4_listener_says_routes_are_for_http_listeners() {
    let text = format!(
        "{BASE}l4:\n  listeners:\n    - {{ name: pg, address: 127.0.0.1:15432, cluster: app }}\n"
    )
    .replace(
        "    cluster: app\n",
        "    listeners: [pg]\n    cluster: app\n",
    );
    let (errors, _) = problems(&text);
    let msg = error_at(&errors, &text, "routes[0].listeners[0]", "[pg]");
    assert!(msg.contains("L4 listener"), "{msg}");
}

#[test]
fn host_bits_in_a_network_are_a_warning_and_an_access_log_without_l4_fields_too() {
    let text = format!(
        "{BASE}accessLog: {{ fields: [status, method] }}\nl4:\n  listeners:\n    - {{ name: pg, address: 127.0.0.1:15432, cluster: app, allow: [10.1.2.3/8] }}\n"
    );
    let loaded = load_str(Path::new("gateway.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.config.l4[0].allow,
        vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
    );
    let w = &loaded.warnings;
    assert!(
        w.iter()
            .any(|p| p.path == "l4.listeners[0].allow[0]" && p.message.contains("10.0.0.0/8")),
        "{w:#?}"
    );
    assert!(
        w.iter()
            .any(|p| p.path == "accessLog.fields" && p.message.contains("L4")),
        "{w:#?}"
    );
}
