#![allow(clippy::unwrap_used)]
//! Bad and hostile client input: malformed request heads and bodies, oversized heads and
//! bodies, slow and stalled clients, idle connections and the connection limit. Every
//! case checks what the client sees (status, envelope, connection close) and that other
//! clients keep being served.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::{empty, full, get, raw, Gateway, Upstream, H1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A gateway config with one plaintext listener on 127.0.0.1:0 (plus `listener_extra`,
/// YAML lines indented for the listener's map) and a default route to `up`.
fn config(up: SocketAddr, listener_extra: &str) -> String {
    format!(
        r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:0
{listener_extra}routes:
  - name: default
    match: {{ pathPrefix: / }}
    cluster: web
clusters:
  - name: web
    endpoints:
      - address: "{up}"
"#
    )
}

async fn start(listener_extra: &str) -> (Upstream, Gateway) {
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&config(up.addr, listener_extra)).await;
    (up, gw)
}

/// One HTTP/1.1 response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

impl RawResponse {
    /// Parses the first response in `text`, if it holds a complete head.
    fn parse(text: &str) -> Option<RawResponse> {
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some(RawResponse {
            status,
            head: head.to_string(),
            body: body.to_string(),
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Asserts the gateway's JSON error envelope with this status (and code, if given).
    fn assert_envelope(&self, status: u16, code: Option<&str>) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("envelope is not JSON ({e}): {self:?}"));
        let err = &v["error"];
        assert_eq!(err["status"], status, "{v}");
        if let Some(code) = code {
            assert_eq!(err["code"], code, "{v}");
        } else {
            assert!(err["code"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
        }
        assert!(err["message"].is_string(), "{v}");
        assert!(
            err["requestId"].as_str().is_some_and(|r| !r.is_empty()),
            "{v}"
        );
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).escape_debug().to_string()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one complete response (head plus a `content-length` body) from `s`.
async fn read_response(s: &mut TcpStream, limit: Duration) -> RawResponse {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = RawResponse::parse(&String::from_utf8_lossy(&buf[..end + 4]))
                .unwrap_or_else(|| panic!("not an HTTP response: {}", show(&buf)));
            let len: usize = head
                .header("content-length")
                .unwrap_or_else(|| panic!("response without content-length: {head:?}"))
                .parse()
                .unwrap();
            if buf.len() >= end + 4 + len {
                return RawResponse::parse(&String::from_utf8_lossy(&buf[..end + 4 + len]))
                    .unwrap();
            }
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) => panic!("connection closed before a full response: {}", show(&buf)),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => panic!("read failed ({e}) after: {}", show(&buf)),
            Err(_) => panic!("no full response within {limit:?}: {}", show(&buf)),
        }
    }
}

/// Reads from `s` until the peer closes it or `limit` passes. Returns what was read and
/// whether the connection was closed (EOF or reset).
async fn read_until_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// Sends `input` on its own connection and asserts a 400 with the gateway's JSON
/// envelope (`{"error":{"status":400,"code":"bad_request",...}}`) followed by the
/// connection closing, whoever found the fault (the gateway's checks or hyper's parser);
/// the response is returned for further checks.
async fn assert_400_and_close(addr: SocketAddr, input: &[u8]) -> RawResponse {
    let (text, closed) = raw(addr, input, Duration::from_secs(5)).await;
    let resp = RawResponse::parse(&text).unwrap_or_else(|| {
        panic!(
            "no HTTP response to {}; got {:?} (closed: {closed})",
            show(input),
            text
        )
    });
    assert_eq!(
        resp.status,
        400,
        "input {} got {resp:?} (closed: {closed})",
        show(input)
    );
    assert!(
        closed,
        "connection left open after a 400 to {}: {resp:?}",
        show(input)
    );
    resp.assert_envelope(400, Some("bad_request"));
    resp
}

/// The whole malformed-request scenario: a client on another connection is served before
/// and after; the bad input gets 400 and a close; `reaches_upstream` says whether the
/// upstream may have seen the request head (a body error is found only after forwarding).
async fn malformed_request_is_rejected(input: &[u8], reaches_upstream: bool) {
    let (up, gw) = start("").await;
    let mut other = H1::connect(gw.addr).await;
    assert_eq!(other.get("x", "/").await.status, 200);
    let hits = up.hits();

    assert_400_and_close(gw.addr, input).await;

    if !reaches_upstream {
        assert_eq!(
            up.hits(),
            hits,
            "a malformed request reached the upstream: {}",
            show(input)
        );
    }
    let again = other.get("x", "/").await;
    assert_eq!(
        again.status, 200,
        "the other client's connection stopped being served"
    );
    assert_eq!(again.text(), "up");
    assert_eq!(
        get(gw.addr, "x", "/").await.status,
        200,
        "new connections stopped being served"
    );
}

/// Every malformed input of the scenarios. The first four, the control byte and the
/// target that is not origin-form are what hyper's own parser refuses: the gateway sees
/// them first (src/http/sniff.rs) and answers them like the rest, with the envelope.
const MALFORMED: &[&[u8]] = &[
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n",
    b"GET a/b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"GET /<script> HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_request_line_gets_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[0], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_line_without_a_colon_gets_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[1], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_obs_fold_header_continuation_gets_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[2], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_content_lengths_get_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[3], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_chunk_size_gets_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[4], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_transfer_encoding_gets_a_400_envelope_and_a_closed_connection()
{
    malformed_request_is_rejected(MALFORMED[5], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_target_with_a_fragment_gets_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[6], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_nul_in_the_target_gets_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[7], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_control_byte_in_the_target_gets_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[8], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_1_without_host_gets_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[9], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_is_not_origin_form_gets_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[10], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_other_than_chunked_gets_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[11], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_character_the_uri_grammar_forbids_gets_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[12], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_that_is_not_a_number_gets_a_400_envelope_and_a_closed_connection() {
    malformed_request_is_rejected(MALFORMED[13], false).await;
}

/// The bytes of a TLS ClientHello, as a client that believes the port speaks HTTPS sends
/// them: no blank line ever comes, and the answer must not wait for `readHeader`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_garbage_gets_a_400_envelope_at_once_without_waiting_for_a_blank_line() {
    let (up, gw) = start("    timeouts: { readHeader: 30s }\n").await;
    let hello: &[u8] = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03";
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(hello).await.unwrap();
    let resp = read_response(&mut s, Duration::from_secs(5)).await;
    resp.assert_envelope(400, Some("bad_request"));
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    assert_eq!(up.hits(), 0);
}

/// Requests refused before hyper sees them still get an access-log line and a request
/// metric, like every other request the gateway answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_head_is_logged_with_its_request_line_status_and_error_code() {
    let up = Upstream::start("up").await;
    let text =
        config(up.addr, "").replace("listeners:", "accessLog: { path: access.log }\nlisteners:");
    let gw = Gateway::start(&text).await;
    assert_400_and_close(gw.addr, b"GET /bad HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n").await;
    assert_400_and_close(gw.addr, b"GARBAGE\r\n\r\n").await;
    let lines = gw.access_log(2).await;
    let bad = lines
        .iter()
        .find(|l| l["path"] == "/bad")
        .expect("the /bad line");
    assert_eq!(bad["method"], "GET", "{bad}");
    assert_eq!(bad["status"], 400, "{bad}");
    assert_eq!(bad["error"], "bad_request", "{bad}");
    let garbage = lines
        .iter()
        .find(|l| l["path"] != "/bad")
        .expect("the garbage line");
    assert_eq!(
        garbage["method"], "-",
        "an unreadable request line is logged as `-`: {garbage}"
    );
    assert_eq!(garbage["status"], 400, "{garbage}");
    let metrics = gw.running.as_ref().unwrap().metrics_text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_requests_total{")
                && l.contains("code=\"400\"")
                && l.ends_with(" 2")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_max_request_headers_size_gets_431_and_a_small_one_passes() {
    let (up, gw) = start("    limits: { maxRequestHeadersSize: 1KiB }\n").await;

    let big = "a".repeat(2048);
    let req = http::Request::get("/")
        .header("host", "x")
        .header("x-big", big.as_str())
        .body(empty())
        .unwrap();
    let got = H1::connect(gw.addr).await.send(req).await;
    assert_eq!(got.status, 431, "{}", got.text());
    let v = got.json();
    assert_eq!(v["error"]["status"], 431, "{v}");
    assert_eq!(up.hits(), 0, "an oversized head reached the upstream");

    // Far beyond the limit (and beyond the parser's buffer): still a 431 envelope, and a
    // close.
    let mut huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Huge: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let (text, closed) = raw(gw.addr, &huge, Duration::from_secs(5)).await;
    let resp = RawResponse::parse(&text).unwrap_or_else(|| panic!("no response: {text:?}"));
    resp.assert_envelope(431, Some("headers_too_large"));
    assert!(closed, "connection left open after 431: {resp:?}");
    assert_eq!(up.hits(), 0, "an oversized head reached the upstream");

    // More header lines than the parser takes: 431 with the envelope too.
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..300 {
        many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let (_, gw_big) = start("    limits: { maxRequestHeadersSize: 64KiB }\n").await;
    let (text, closed) = raw(gw_big.addr, &many, Duration::from_secs(5)).await;
    let resp = RawResponse::parse(&text).unwrap_or_else(|| panic!("no response: {text:?}"));
    resp.assert_envelope(431, Some("headers_too_large"));
    assert!(closed, "connection left open after 431: {resp:?}");

    let small = "a".repeat(100);
    let req = http::Request::get("/")
        .header("host", "x")
        .header("x-small", small.as_str())
        .body(empty())
        .unwrap();
    let got = H1::connect(gw.addr).await.send(req).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), "up");
    assert_eq!(up.last_seen().headers["x-small"], small.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_request_body_gets_413_whether_declared_or_streamed() {
    let (up, gw) = start("    limits: { maxRequestBody: 1KiB }\n").await;

    // Declared too large.
    let mut req = b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'a', 2048));
    let (text, closed) = raw(gw.addr, &req, Duration::from_secs(5)).await;
    let resp = RawResponse::parse(&text).unwrap_or_else(|| panic!("no response: {text:?}"));
    resp.assert_envelope(413, None);
    assert!(closed, "connection left open after 413: {resp:?}");

    // Chunked, streamed in 512-byte chunks past the limit, never finished.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk: Vec<u8> = [b"200\r\n".as_slice(), &[b'b'; 512], b"\r\n"].concat();
    for _ in 0..4 {
        s.write_all(&chunk).await.unwrap();
    }
    let (bytes, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    let resp = RawResponse::parse(&String::from_utf8_lossy(&bytes))
        .unwrap_or_else(|| panic!("no response to a streamed oversize body: {}", show(&bytes)));
    resp.assert_envelope(413, None);
    assert!(closed, "connection left open after 413: {resp:?}");
    assert!(
        up.seen.lock().unwrap().iter().all(|s| s.body_len <= 1024),
        "the upstream received more than the limit"
    );

    // Under the limit: passes whole.
    let req = http::Request::post("/collect")
        .header("host", "x")
        .body(full(vec![b'c'; 512]))
        .unwrap();
    let got = H1::connect(gw.addr).await.send(req).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), "512");
    // The upstream records a request when its body ends: the aborted oversize one may be
    // recorded after this one, so look for this one rather than taking the last record.
    support::eventually(Duration::from_secs(5), || {
        up.seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.body_len == 512)
            .then_some(())
    })
    .await;
    assert!(
        up.seen.lock().unwrap().iter().all(|s| s.body_len <= 1024),
        "the upstream received more than the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_halfway_through_its_head_is_cut_off_by_read_header() {
    let (_up, gw) = start("    timeouts: { readHeader: 300ms }\n").await;

    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ")
        .await
        .unwrap();
    let started = Instant::now();

    let got = get(gw.addr, "x", "/").await;
    assert_eq!(got.status, 200, "another connection was not served");

    let (bytes, closed) = read_until_close(&mut slow, Duration::from_secs(3)).await;
    assert!(
        closed,
        "a half-sent head kept its connection for 3s: {}",
        show(&bytes)
    );
    // No response is required; if there is one it is a timeout, not a success.
    if let Some(resp) = RawResponse::parse(&String::from_utf8_lossy(&bytes)) {
        assert_eq!(resp.status, 408, "{resp:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(get(gw.addr, "x", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_connects_and_sends_nothing_is_cut_off_by_read_header() {
    // idle is long, so only readHeader can end the connection in time.
    let (_up, gw) = start("    timeouts: { readHeader: 300ms, idle: 30s }\n").await;

    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(get(gw.addr, "x", "/").await.status, 200);
    let (bytes, closed) = read_until_close(&mut silent, Duration::from_secs(3)).await;
    assert!(
        closed,
        "a connection that never sent a byte was kept for 3s (readHeader: 300ms)"
    );
    if let Some(resp) = RawResponse::parse(&String::from_utf8_lossy(&bytes)) {
        assert_eq!(resp.status, 408, "{resp:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_part_of_the_http2_preface_is_cut_off_by_read_header() {
    let (_up, gw) = start("    timeouts: { readHeader: 300ms, idle: 30s }\n").await;

    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert_eq!(get(gw.addr, "x", "/").await.status, 200);
    let (_, closed) = read_until_close(&mut slow, Duration::from_secs(3)).await;
    assert!(
        closed,
        "a partial HTTP/2 preface kept its connection for 3s (readHeader: 300ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (_up, gw) = start("    timeouts: { idle: 300ms }\n").await;

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut s, Duration::from_secs(5)).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, "up");
    let answered = Instant::now();

    let (bytes, closed) = read_until_close(&mut s, Duration::from_secs(3)).await;
    assert!(
        closed,
        "an idle keep-alive connection was kept for 3s (idle: 300ms)"
    );
    assert!(
        bytes.is_empty(),
        "unexpected bytes on an idle connection: {}",
        show(&bytes)
    );
    let after = answered.elapsed();
    assert!(
        after >= Duration::from_millis(200),
        "closed {after:?} after the response: that is not keep-alive (idle: 300ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_governed_by_idle_not_read_header() {
    let (_up, gw) = start("    timeouts: { readHeader: 300ms, idle: 5s }\n").await;

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut s, Duration::from_secs(5)).await;
    assert_eq!(resp.status, 200, "{resp:?}");

    // Between requests nothing of a head has been sent, so readHeader does not apply.
    let answered = Instant::now();
    let (bytes, closed) = read_until_close(&mut s, Duration::from_millis(1500)).await;
    assert!(
        !closed,
        "keep-alive connection closed {:?} after the response, before idle (5s) ran out; read: {:?}",
        answered.elapsed(),
        show(&bytes)
    );
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut s, Duration::from_secs(5)).await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_gets_408_or_a_close_and_never_completes_upstream() {
    let (up, gw) = start("    timeouts: { read: 300ms }\n").await;

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let (bytes, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    if bytes.is_empty() {
        assert!(
            closed,
            "a stalled body got neither a response nor a close within 5s"
        );
    } else {
        let resp = RawResponse::parse(&String::from_utf8_lossy(&bytes))
            .unwrap_or_else(|| panic!("not an HTTP response: {}", show(&bytes)));
        resp.assert_envelope(408, Some("client_timeout"));
        assert!(closed, "connection left open after 408: {resp:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        up.seen.lock().unwrap().iter().all(|s| s.body_len < 100),
        "the upstream received a complete request from a stalled client"
    );
    assert_eq!(get(gw.addr, "x", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_a_new_connection_waits_until_one_closes() {
    let (up, gw) = start("    maxConnections: 2\n").await;

    let mut first = H1::connect(gw.addr).await;
    assert_eq!(first.get("x", "/").await.status, 200);
    let mut second = H1::connect(gw.addr).await;
    assert_eq!(second.get("x", "/").await.status, 200);

    // The kernel completes the handshake from the backlog; the gateway must not serve it.
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was answered while two were open: {:?}",
        early.map(|r| r.map(|n| show(&buf[..n])))
    );
    assert_eq!(up.hits(), 2);

    drop(first);
    let resp = read_response(&mut third, Duration::from_secs(5)).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, "up");
    assert_eq!(second.get("x", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_kind_of_bad_input_the_gateway_still_serves() {
    let (_up, gw) = start(
        "    limits: { maxRequestHeadersSize: 1KiB, maxRequestBody: 1KiB }\n    timeouts: { readHeader: 300ms, read: 300ms, idle: 300ms }\n",
    )
    .await;
    let addr = gw.addr;

    // Malformed heads and bodies, all at once.
    let mut tasks = tokio::task::JoinSet::new();
    for input in MALFORMED {
        tasks.spawn(async move { raw(addr, input, Duration::from_secs(5)).await });
    }
    // Oversized head, oversized bodies (declared and streamed), stalled head and body.
    let mut huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 2048));
    huge.extend_from_slice(b"\r\n\r\n");
    let mut declared =
        b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n".to_vec();
    declared.extend(std::iter::repeat_n(b'a', 4096));
    let mut chunked =
        b"POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..8 {
        chunked.extend_from_slice(b"100\r\n");
        chunked.extend(std::iter::repeat_n(b'b', 256));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let others: Vec<Vec<u8>> = vec![
        huge,
        declared,
        chunked,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ".to_vec(),
        b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789".to_vec(),
        b"PRI * HTTP/2.0\r\n".to_vec(),
        Vec::new(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ];
    for input in others {
        tasks.spawn(async move { raw(addr, &input, Duration::from_secs(5)).await });
    }
    // An HTTP/2 client with a body over the limit.
    let mut h2 = support::H2::connect(addr).await;
    let req = http::Request::post("/collect")
        .header("host", "x")
        .body(full(vec![b'd'; 4096]))
        .unwrap();
    assert_eq!(h2.send(req).await.status, 413);
    while tasks.join_next().await.is_some() {}

    let got = get(addr, "x", "/").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), "up");
    drop(h2);
    assert!(
        gw.shutdown(Duration::from_secs(5)).await,
        "connections were still open 5s into shutdown after the bad input"
    );
}
