//! Hot reload through the real server with real clients: nothing dropped under load, what
//! a reload keeps (sockets, pools, health, tunnels, streams, in-flight requests), what it
//! changes (routes on open connections, limits, tokens, certificates, the access log),
//! what it drains (removed listeners), and rollback (an invalid file, an unbindable
//! address: nothing changes, nothing is left behind).
#![allow(clippy::unwrap_used)]

mod support;

use http::Request;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

impl Gateway {
    /// Replaces the configuration file (`{dir}` is the gateway's folder).
    fn write_config(&self, yaml: &str) {
        let text = yaml.replace("{dir}", &self.dir.path().display().to_string());
        std::fs::write(self.dir.path().join("gateway.yaml"), text).unwrap();
    }

    async fn reload(&self) -> Result<u64, Vec<String>> {
        self.running.as_ref().unwrap().reload().await
    }

    fn addr_of(&self, name: &str) -> Option<SocketAddr> {
        self.running.as_ref().unwrap().addr(name)
    }
}

/// One listener `public`, a route `r` to the cluster `c` of `ups`, no file watching (the
/// tests reload explicitly), and `extra` appended.
fn config(ups: &[&Upstream], extra: &str) -> String {
    let endpoints: Vec<String> = ups
        .iter()
        .map(|u| format!("{{ address: \"{}\" }}", u.addr))
        .collect();
    format!(
        r#"
reload: {{ watch: false }}
admin: {{ address: 127.0.0.1:0 }}
accessLog: {{ path: "{{dir}}/access.log" }}
listeners:
  - {{ name: public, address: 127.0.0.1:0 }}
routes:
  - {{ name: r, cluster: c }}
clusters:
  - {{ name: c, endpoints: [{}] }}
{extra}"#,
        endpoints.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_thirty_reloads_under_keep_alive_and_new_connection_load() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&config(&[&a], "")).await;
    let addr = gw.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..12 {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut conn = if i < 8 {
                Some(H1::connect(addr).await)
            } else {
                None
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
                let got = match &mut conn {
                    // 8 keep-alive clients: one connection each for the whole test.
                    Some(c) => c.get("example.test", "/").await,
                    // 4 clients opening a new connection per request.
                    None => get(addr, "example.test", "/").await,
                };
                if got.status == 200 && (got.text() == "a" || got.text() == "b") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push(format!("{} {}", got.status, got.text()));
                }
            }
            failures
        }));
    }
    for i in 0..30 {
        // Alternate the endpoints, so each reload changes the snapshot for real.
        let ups: Vec<&Upstream> = if i % 2 == 0 { vec![&a, &b] } else { vec![&b] };
        gw.write_config(&config(&ups, ""));
        assert_eq!(gw.reload().await, Ok(i + 2));
        let before = ok.load(Ordering::Relaxed);
        eventually(LIMIT, || {
            (ok.load(Ordering::Relaxed) > before + 12).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Release);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok.load(Ordering::Relaxed) > 30 * 12);
    assert!(b.hits() > 0, "later generations were used");
    let m = |s: &str| gw.metric(s).unwrap_or(-1.0);
    assert_eq!(m("gateway_reload_success_total"), 30.0);
    assert_eq!(m("gateway_reload_failure_total"), 0.0);
    assert_eq!(m("gateway_config_generation"), 31.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_requests_on_an_open_connection_use_the_new_routes_while_one_in_flight_finishes_on_its_old_route(
) {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&config(&[&a], "")).await;
    let mut conn = H1::connect(gw.addr).await;
    assert_eq!(conn.get("x", "/").await.text(), "a");
    // A slow request, routed to `a` before the reload, answered after it.
    let addr = gw.addr;
    let slow = tokio::spawn(async move { get(addr, "x", "/sleep/600").await });
    eventually(LIMIT, || (a.hits() == 2).then_some(())).await;
    gw.write_config(&config(&[&b], ""));
    assert_eq!(gw.reload().await, Ok(2));
    let slow = slow.await.unwrap();
    assert_eq!((slow.status.as_u16(), slow.text().as_str()), (200, "a"));
    // The same keep-alive connection, its next request: the new route.
    assert_eq!(conn.get("x", "/").await.text(), "b");
    assert_eq!(get(gw.addr, "x", "/").await.text(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_rolled_back_with_every_reason_and_the_old_config_keeps_serving() {
    let a = Upstream::start("a").await;
    let gw = Gateway::start(&config(&[&a], "")).await;
    gw.write_config(
        "listeners:\n  - { name: public, address: 127.0.0.1:0, maxConnections: 0 }\nroutes: [{ name: r, cluster: nope }]\n",
    );
    let reasons = gw.reload().await.unwrap_err();
    assert!(reasons.len() >= 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("listeners[0].maxConnections")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("routes[0].cluster")),
        "{reasons:?}"
    );
    assert_eq!(get(gw.addr, "x", "/").await.text(), "a");
    let status = get(gw.running.as_ref().unwrap().admin.unwrap(), "x", "/status")
        .await
        .json();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["lastReload"]["ok"], false);
    assert!(status["lastReload"]["errors"].as_array().unwrap().len() >= 2);
    assert_eq!(gw.metric("gateway_reload_failure_total"), Some(1.0));
    // The next good file is applied.
    gw.write_config(&config(&[&a], ""));
    assert_eq!(gw.reload().await, Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbindable_new_listener_rolls_back_everything_and_leaves_no_trace() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&config(&[&a], "")).await;
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let free_addr = free.local_addr().unwrap();
    drop(free);
    // A new listener on a free port, one on a taken port, a new route target and a new
    // access-log file: all of it or nothing.
    let next = config(&[&b], "")
        .replace("{dir}/access.log", "{dir}/new-access.log")
        .replace(
            "  - { name: public, address: 127.0.0.1:0 }",
            &format!(
                "  - {{ name: public, address: 127.0.0.1:0 }}\n  - {{ name: extra, address: \"{free_addr}\" }}\n  - {{ name: clash, address: \"{taken_addr}\" }}"
            ),
        );
    gw.write_config(&next);
    let reasons = gw.reload().await.unwrap_err();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("listener `clash`") && r.contains(&taken_addr.to_string())),
        "{reasons:?}"
    );
    assert_eq!(get(gw.addr, "x", "/").await.text(), "a", "old routes");
    assert!(
        TcpListener::bind(free_addr).await.is_ok(),
        "the socket bound for the rolled-back listener was closed again"
    );
    assert!(
        !gw.dir.path().join("new-access.log").exists(),
        "the rolled-back access log was never opened"
    );
    assert_eq!(gw.addr_of("extra"), None);
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_listener_keeps_its_socket_and_a_removed_one_refuses_and_frees_its_port() {
    let a = Upstream::start("a").await;
    let two = config(&[&a], "").replace(
        "  - { name: public, address: 127.0.0.1:0 }",
        "  - { name: public, address: 127.0.0.1:0 }\n  - { name: other, address: 127.0.0.1:0 }",
    );
    let gw = Gateway::start(&two).await;
    let other = gw.addr_of("other").unwrap();
    // A connection waiting in the kept listener's accept queue across the reload: it is
    // served by the same socket afterwards.
    let mut queued = TcpStream::connect(gw.addr).await.unwrap();
    // And a keep-alive connection on the listener about to go, with a request in flight.
    let mut leaving = H1::connect(other).await;
    let in_flight = tokio::spawn(async move {
        let got = leaving.get("x", "/sleep/500").await;
        (got, leaving)
    });
    eventually(LIMIT, || (a.hits() == 1).then_some(())).await;
    gw.write_config(&config(&[&a], ""));
    assert_eq!(gw.reload().await, Ok(2));
    assert_eq!(gw.addr_of("public"), Some(gw.addr), "same socket");
    assert_eq!(gw.addr_of("other"), None);
    queued
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(LIMIT, queued.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The in-flight request finishes, told to close the connection (it drains).
    let (got, _conn) = in_flight.await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.header("connection"), Some("close"));
    // The removed listener refuses new connections, and its port is free again.
    eventually(LIMIT, || {
        std::net::TcpStream::connect_timeout(&other, Duration::from_millis(200))
            .is_err()
            .then_some(())
    })
    .await;
    assert!(TcpListener::bind(other).await.is_ok(), "port freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_on_a_removed_listener_gets_goaway_and_its_stream_finishes() {
    let a = Upstream::start("a").await;
    let two = config(&[&a], "").replace(
        "  - { name: public, address: 127.0.0.1:0 }",
        "  - { name: public, address: 127.0.0.1:0 }\n  - { name: other, address: 127.0.0.1:0 }",
    );
    let gw = Gateway::start(&two).await;
    let other = gw.addr_of("other").unwrap();
    let stream = TcpStream::connect(other).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(stream).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("http://x/sleep/400").body(()).unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    eventually(LIMIT, || (a.hits() == 1).then_some(())).await;
    gw.write_config(&config(&[&a], ""));
    assert_eq!(gw.reload().await, Ok(2));
    let resp = tokio::time::timeout(LIMIT, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200, "the stream in flight finishes");
    // GOAWAY: the connection ends without error once its streams are done.
    let ended = tokio::time::timeout(LIMIT, conn).await.unwrap().unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let _ = h2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_survives_ten_reloads_and_is_closed_only_with_its_removed_listener() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let a = Upstream::start("a").await;
    let gw = Gateway::start(&config(&[&a], "shutdown: { drainTimeout: 300ms }\n")).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    for i in 0..10 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("m{i}"));
        assert_eq!(gw.reload().await, Ok(i + 2));
    }
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "after"
    );
    // Renamed listener: the tunnel belongs to `public`, which goes away; it is closed at
    // the drain deadline.
    gw.write_config(
        &config(&[&a], "shutdown: { drainTimeout: 300ms }\n")
            .replace("name: public", "name: renamed"),
    );
    assert_eq!(gw.reload().await, Ok(12));
    let closed = tokio::time::timeout(LIMIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "closed at the drain deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l4_connection_survives_ten_reloads() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let a = Upstream::start("a").await;
    let l4 = |idle: &str| {
        config(&[&a], "")
            + &format!(
                "  - {{ name: tcp-c, endpoints: [{{ address: \"{echo_addr}\" }}] }}\nl4:\n  listeners: [{{ name: tcp, address: 127.0.0.1:0, cluster: tcp-c, idleTimeout: {idle} }}]\n"
            )
    };
    let gw = Gateway::start(&l4("1m")).await;
    let addr = gw.running.as_ref().unwrap().l4_addr("tcp").unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    for i in 0..10 {
        let msg = format!("ping {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(LIMIT, s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg.as_bytes());
        gw.write_config(&l4(if i % 2 == 0 { "2m" } else { "1m" }));
        assert_eq!(gw.reload().await, Ok(i + 2));
        assert_eq!(gw.running.as_ref().unwrap().l4_addr("tcp"), Some(addr));
    }
    s.write_all(b"last").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"last");
}

/// An upstream that counts the TCP connections it accepts (so a test can tell a reused
/// pooled connection from a new one) and answers with its name.
async fn counting_upstream(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(full(name)))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_warm_upstream_connections_of_endpoints_that_stay() {
    let (up, conns) = counting_upstream("u").await;
    let yaml = |timeout: &str| {
        format!(
            "reload: {{ watch: false }}\nlisteners: [{{ name: public, address: 127.0.0.1:0 }}]\n\
             routes: [{{ name: r, cluster: c, timeouts: {{ request: {timeout} }} }}]\n\
             clusters: [{{ name: c, endpoints: [{{ address: \"{up}\" }}] }}]\n"
        )
    };
    let gw = Gateway::start(&yaml("10s")).await;
    let mut client = H1::connect(gw.addr).await;
    assert_eq!(client.get("x", "/").await.text(), "u");
    assert_eq!(client.get("x", "/").await.text(), "u");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
    for i in 0..5 {
        gw.write_config(&yaml(if i % 2 == 0 { "20s" } else { "10s" }));
        assert_eq!(gw.reload().await, Ok(i + 2));
        assert_eq!(client.get("x", "/").await.text(), "u");
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "the pool survived five reloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_max_connections_applies_to_the_next_connections() {
    let a = Upstream::start("a").await;
    let with_max = |n: usize| {
        config(&[&a], "").replace(
            "  - { name: public, address: 127.0.0.1:0 }",
            &format!("  - {{ name: public, address: 127.0.0.1:0, maxConnections: {n} }}"),
        )
    };
    let gw = Gateway::start(&with_max(100)).await;
    let mut first = H1::connect(gw.addr).await;
    assert_eq!(first.get("x", "/").await.status, 200);
    gw.write_config(&with_max(1));
    assert_eq!(gw.reload().await, Ok(2));
    // The second connection waits in the backlog while the first is open...
    let addr = gw.addr;
    let second = tokio::spawn(async move { get(addr, "x", "/").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "over the new limit: not served yet");
    assert_eq!(
        first.get("x", "/").await.status,
        200,
        "the open one still is"
    );
    // ...and is served once it closes.
    drop(first);
    let got = tokio::time::timeout(LIMIT, second).await.unwrap().unwrap();
    assert_eq!(got.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_and_the_access_log_path_change_with_a_reload() {
    let a = Upstream::start("a").await;
    let gw = Gateway::start(&config(&[&a], "")).await;
    std::fs::write(gw.dir.path().join("token"), "first-token\n").unwrap();
    let with_token = config(&[&a], "").replace(
        "admin: { address: 127.0.0.1:0 }",
        "admin: { address: 127.0.0.1:0, tokenFile: token }",
    );
    gw.write_config(&with_token);
    assert_eq!(gw.reload().await, Ok(2));
    let admin = gw.running.as_ref().unwrap().admin_addr().unwrap();
    assert_eq!(admin, gw.running.as_ref().unwrap().admin.unwrap(), "kept");
    assert_eq!(get(admin, "x", "/status").await.status, 401);
    assert_eq!(
        get_with_token(admin, "/status", "first-token").await.status,
        200
    );
    std::fs::write(gw.dir.path().join("token"), "second-token\n").unwrap();
    gw.write_config(&with_token.replace("access.log", "second.log"));
    assert_eq!(gw.reload().await, Ok(3));
    assert_eq!(
        get_with_token(admin, "/status", "first-token").await.status,
        401
    );
    assert_eq!(
        get_with_token(admin, "/status", "second-token")
            .await
            .status,
        200
    );
    assert_eq!(get(gw.addr, "x", "/after-switch").await.status, 200);
    let second = gw.dir.path().join("second.log");
    let line = eventually(LIMIT, || {
        std::fs::read_to_string(&second)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("/after-switch"))
            .map(str::to_string)
    })
    .await;
    assert!(line.contains("\"status\":200"), "{line}");
    let first = std::fs::read_to_string(gw.access_log_path()).unwrap_or_default();
    assert!(
        !first.contains("/after-switch"),
        "the old file gets no new lines"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_for_new_handshakes_and_a_mismatched_key_keeps_the_old_pair() {
    let a = Upstream::start("a").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf(dir.path(), "site", &["site.test"]);
    let yaml = format!(
        r#"
reload: {{ watch: false }}
listeners:
  - name: public
    address: 127.0.0.1:0
    tls: {{ certificates: [{{ cert: site.pem, key: site.key }}] }}
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        a.addr
    );
    let gw = Gateway::start_in(dir, &yaml).await;
    // A new client config per connection: no session to resume, a full handshake each.
    let client = || tls_client(&[b"http/1.1"], &[], Some(&ca));
    let served = |gw: &Gateway| {
        let (addr, client) = (gw.addr, client());
        async move {
            let io = tls_connect(addr, Some("site.test"), client).await.unwrap();
            let der = served_cert(&io);
            let mut h = H1::over(io).await;
            assert_eq!(h.get("site.test", "/").await.status, 200);
            der
        }
    };
    // A connection open across the rotation keeps working.
    let io = tls_connect(gw.addr, Some("site.test"), client())
        .await
        .unwrap();
    let mut open = H1::over(io).await;
    assert_eq!(served(&gw).await, first.der);
    let second = ca.leaf(gw.dir.path(), "site", &["site.test"]);
    assert_eq!(gw.reload().await, Ok(2));
    assert_eq!(
        served(&gw).await,
        second.der,
        "new handshakes get the new pair"
    );
    assert_eq!(open.get("site.test", "/").await.status, 200);
    // A key that does not match its certificate: the reload fails, the pair in use stays.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = ca.leaf(elsewhere.path(), "other", &["site.test"]);
    std::fs::copy(&other.key, gw.dir.path().join("site.key")).unwrap();
    let reasons = gw.reload().await.unwrap_err();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("certificates[0].key") && r.contains("does not match")),
        "{reasons:?}"
    );
    assert_eq!(served(&gw).await, second.der);
}

/// An upstream that answers `/fail-slowly` with a 503 after a pause, everything else 200
/// with its name, and counts what it answered.
async fn slow_failing_upstream(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let mut resp = http::Response::new(full(name));
                        if req.uri().path() == "/fail-slowly" {
                            tokio::time::sleep(Duration::from_millis(400)).await;
                            *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejection_recorded_through_the_old_snapshot_reaches_the_new_one() {
    let (bad, bad_hits) = slow_failing_upstream("bad").await;
    let (good, _) = slow_failing_upstream("good").await;
    let yaml = |timeout: &str| {
        format!(
            "reload: {{ watch: false }}\nlisteners: [{{ name: public, address: 127.0.0.1:0 }}]\n\
             routes: [{{ name: r, cluster: c, retry: {{ attempts: 0 }}, timeouts: {{ request: {timeout} }} }}]\n\
             clusters:\n  - name: c\n    endpoints: [{{ address: \"{bad}\" }}, {{ address: \"{good}\" }}]\n    \
             passiveHealth: {{ consecutiveFailures: 1, baseEjectionTime: 1m }}\n"
        )
    };
    let gw = Gateway::start(&yaml("10s")).await;
    // The first pick is the first endpoint: this request is on its way to `bad`...
    let addr = gw.addr;
    let failing = tokio::spawn(async move { get(addr, "x", "/fail-slowly").await });
    eventually(LIMIT, || {
        (bad_hits.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // ...when a reload swaps in a new snapshot (and a new balancer) for the same cluster.
    gw.write_config(&yaml("20s"));
    assert_eq!(gw.reload().await, Ok(2));
    // The 503 arrives and is recorded through the old snapshot's balancer.
    assert_eq!(failing.await.unwrap().status, 503);
    // The new snapshot's balancer must know: `bad` gets nothing more.
    for _ in 0..10 {
        assert_eq!(get(gw.addr, "x", "/").await.text(), "good");
    }
    assert_eq!(bad_hits.load(Ordering::SeqCst), 1);
}
