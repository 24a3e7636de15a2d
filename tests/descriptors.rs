//! Running out of file descriptors (issue 14, item 3), through the real binary started
//! under a lowered `ulimit -n` and filled with idle client connections: `accept` failing
//! with EMFILE backs off instead of spinning, logs once per interval, counts
//! `gateway_accept_errors_total{reason="descriptors"}`, keeps serving connections it
//! already has, and serves queued and new connections as soon as descriptors free up;
//! connecting upstream with no descriptor left is a 502 at once (HTTP) or a closed
//! connection (L4), logged `upstream_connect_error`, never a hang.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen promptly.
const LIMIT: Duration = Duration::from_secs(20);
/// The gateway's descriptor limit: its start-up takes about 15 (stdio, epoll, eventfds,
/// the listeners, the access log), the rest are filled with idle clients.
const NOFILE: usize = 64;
const ACCEPT_FAILED: &str = "accept failed; backing off";

/// The release-candidate binary, under `ulimit -n NOFILE`, with its JSON stderr collected.
struct Limited {
    child: Child,
    pid: u32,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Limited {
    async fn start(config: &std::path::Path) -> Limited {
        // `exec` keeps the PID, so /proc/PID is the gateway's; no `unsafe` pre_exec.
        let mut child = Command::new("bash")
            .args([
                "-c",
                r#"ulimit -n "$1" && exec "$2" run --config "$3" --log-format json"#,
                "bash",
                &NOFILE.to_string(),
                env!("CARGO_BIN_EXE_gateway"),
                config.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let gw = Limited {
            child,
            pid,
            stderr: lines,
        };
        // Both the public and the admin listener (and the L4 one, where configured).
        let listening = |gw: &Limited| gw.logged("\"listening\"").len();
        let want = if config_has_l4(config) { 3 } else { 2 };
        eventually(LIMIT, || (listening(&gw) >= want).then_some(())).await;
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        assert!(
            limits
                .lines()
                .any(|l| l.starts_with("Max open files") && l.contains(&format!(" {NOFILE} "))),
            "the limit did not apply: {limits}"
        );
        gw
    }

    /// The stderr lines that contain `needle`.
    fn logged(&self, needle: &str) -> Vec<String> {
        let lines = self.stderr.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// How many of the descriptor numbers below the limit are in use: at `NOFILE` the next
    /// `accept` or `socket` fails with EMFILE. (Inherited descriptors numbered above the
    /// limit, if any, do not count.)
    fn low_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
            .filter(|&fd| fd < NOFILE)
            .count()
    }

    fn exhausted(&self) -> bool {
        self.low_fds() >= NOFILE
    }

    /// User plus system CPU time of the process so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// SIGTERM, and the exit code.
    fn stop(mut self) -> i32 {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "the gateway did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_has_l4(config: &std::path::Path) -> bool {
    std::fs::read_to_string(config).unwrap().contains("l4:")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config in a temp dir: an HTTP listener whose idle clients are not cut during the
/// test, an admin listener, a file access log, and one cluster of `upstream`.
struct Files {
    dir: tempfile::TempDir,
    port: u16,
    admin: u16,
    l4: u16,
}

impl Files {
    fn new(upstream: SocketAddr, with_l4: bool) -> Files {
        let f = Files {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            admin: free_port(),
            l4: free_port(),
        };
        let l4 = if with_l4 {
            format!(
                "l4: {{ listeners: [{{ name: tcp, address: \"127.0.0.1:{}\", cluster: c }}] }}\n",
                f.l4
            )
        } else {
            String::new()
        };
        // A connect timeout far beyond the tests' deadlines: a connect that hung instead
        // of failing at once could not pass as a timeout.
        let yaml = format!(
            "workers: 1\n\
             reload: {{ watch: false }}\n\
             admin: {{ address: \"127.0.0.1:{admin}\" }}\n\
             accessLog: {{ path: access.log }}\n\
             listeners:\n\
             \x20 - name: public\n\
             \x20   address: \"127.0.0.1:{port}\"\n\
             \x20   timeouts: {{ readHeader: 300s, idle: 300s }}\n\
             routes: [{{ name: r, cluster: c }}]\n\
             clusters:\n\
             \x20 - name: c\n\
             \x20   endpoints: [{{ address: \"{upstream}\" }}]\n\
             \x20   timeouts: {{ connect: 60s }}\n\
             {l4}",
            admin = f.admin,
            port = f.port,
        );
        std::fs::write(f.path(), yaml).unwrap();
        f
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn admin(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.admin).into()
    }

    fn l4(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.l4).into()
    }

    /// The access log's lines, parsed, once one of them satisfies `pick`.
    async fn access_log_line(
        &self,
        pick: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let path = self.dir.path().join("access.log");
        eventually(LIMIT, || {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| pick(v))
        })
        .await
    }
}

/// Opens idle connections to `addr` one at a time, each waited for until the gateway has
/// accepted it, until the gateway has no descriptor left.
async fn fill(gw: &Limited, addr: SocketAddr) -> Vec<TcpStream> {
    let mut idle = Vec::new();
    while !gw.exhausted() {
        assert!(
            idle.len() < NOFILE,
            "{NOFILE} connections and still not out of descriptors"
        );
        let before = gw.low_fds();
        idle.push(TcpStream::connect(addr).await.unwrap());
        eventually(LIMIT, || (gw.low_fds() > before).then_some(())).await;
    }
    idle
}

/// Closes one idle connection and waits until the gateway has let go of its descriptor.
async fn free_one(gw: &Limited, idle: &mut Vec<TcpStream>) {
    drop(idle.pop());
    eventually(LIMIT, || (gw.low_fds() == NOFILE - 1).then_some(())).await;
}

/// `gateway_accept_errors_total{listener="public",reason="descriptors"}`, read over an
/// admin connection opened before the shortage (no new one could be accepted during it).
async fn descriptor_errors(admin: &mut H1) -> f64 {
    let text = admin.get("admin", "/metrics").await.text();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("gateway_accept_errors_total{")?;
            (rest.contains("listener=\"public\"") && rest.contains("reason=\"descriptors\""))
                .then(|| rest.rsplit(' ').next()?.parse().ok())?
        })
        .expect("gateway_accept_errors_total for public/descriptors is exposed")
}

/// Reads one HTTP/1.1 response with a `content-length` body from a raw connection.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|n| body.len() >= n) {
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("closed before a whole response: {text:?}"),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("read failed: {e} after {text:?}"),
            Err(_) => panic!("no whole response within {LIMIT:?}: {text:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_accept_backs_off_logs_once_counts_and_serves_again() {
    let up = Upstream::start_unrecorded("a").await;
    let f = Files::new(up.addr, false);
    let gw = Limited::start(&f.path()).await;

    // Before the shortage: a client whose request left its upstream connection pooled,
    // and an admin connection kept open to read /metrics while nothing new is accepted.
    let mut established = H1::connect(f.addr()).await;
    assert_eq!(established.get("x", "/first").await.text(), "a");
    let mut admin = H1::connect(f.admin()).await;
    assert_eq!(descriptor_errors(&mut admin).await, 0.0);

    // Linux takes the new descriptor before it looks at the accept queue, so from the
    // moment the last one is used every `accept` fails with EMFILE, whether or not a
    // connection waits: the failures start while filling.
    let start = Instant::now();
    let idle = fill(&gw, f.addr()).await;
    let cpu_before = gw.cpu_ticks();
    // One more connection: the kernel completes its handshake and queues it.
    let mut queued = TcpStream::connect(f.addr()).await.unwrap();
    queued
        .write_all(b"GET /queued HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();

    // One log line, with the listener and the reason.
    eventually(LIMIT, || {
        (!gw.logged(ACCEPT_FAILED).is_empty()).then_some(())
    })
    .await;
    let line: serde_json::Value = serde_json::from_str(&gw.logged(ACCEPT_FAILED)[0]).unwrap();
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["fields"]["listener"], "public", "{line}");
    assert_eq!(line["fields"]["reason"], "descriptors", "{line}");
    assert_eq!(line["fields"]["suppressed"], 0, "{line}");

    // The counter grows while the shortage lasts. Read every 200 ms, so that the reads
    // themselves cost the gateway next to nothing.
    let first = descriptor_errors(&mut admin).await;
    assert!(first >= 1.0, "counted: {first}");
    let deadline = Instant::now() + LIMIT;
    let grown = loop {
        let n = descriptor_errors(&mut admin).await;
        if n >= first + 8.0 {
            break n;
        }
        assert!(Instant::now() < deadline, "the counter stayed at {n}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let window = start.elapsed();
    let cpu = gw.cpu_ticks() - cpu_before;
    // Backing off, 10 ms doubled up to 1 s, allows 8 failed accepts in the first 1.27 s
    // and one a second after: a loop that spun, or retried at a fixed short pause, would
    // have counted hundreds or thousands by now.
    let bound = 8.0 + window.as_secs_f64();
    assert!(
        grown <= bound,
        "{grown} failed accepts in {window:?}: not backing off (at most {bound:.1})"
    );
    // Logged once per 10 s at most, however many accepts failed.
    let logged = gw.logged(ACCEPT_FAILED).len();
    assert!(
        logged <= 1 + window.as_secs() as usize / 10,
        "{logged} log lines in {window:?}"
    );
    eprintln!(
        "out of descriptors for {window:?}: {grown} failed accepts counted, {logged} log \
         line(s), {cpu} CPU ticks (1/100 s) used by the gateway meanwhile"
    );

    // A connection the gateway already has is served: its upstream connection is pooled.
    assert_eq!(established.get("x", "/during").await.text(), "a");
    // The queued connection has not been answered (it is still in the accept queue).
    let mut buf = [0u8; 16];
    match queued.try_read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the queued connection got {other:?} while out of descriptors"),
    }

    // Descriptors free up: the queued connection is accepted and answered, new
    // connections are served, the admin listener accepts again.
    let freed = Instant::now();
    drop(idle);
    let answer = read_response(&mut queued).await;
    eprintln!(
        "the queued connection was answered {:?} after descriptors freed up",
        freed.elapsed()
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\na"), "{answer}");
    // (Once the gateway has let go of the idle clients, so that what follows cannot run
    // into a shortage of its own.)
    eventually(LIMIT, || (gw.low_fds() < NOFILE / 2).then_some(())).await;
    assert_eq!(get(f.addr(), "x", "/after").await.text(), "a");
    assert_eq!(get(f.admin(), "admin", "/healthz").await.status, 200);
    // The end of the shortage is logged too, with the number of failed accepts. (Taking
    // the queued connection may use the one descriptor freed, so the accept after it can
    // fail again; that short second shortage ends with no connection waiting, and is
    // counted but not logged.)
    let total = descriptor_errors(&mut admin).await;
    assert!(total >= grown);
    let recovered = gw.logged("accept recovered");
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    let line: serde_json::Value = serde_json::from_str(&recovered[0]).unwrap();
    assert_eq!(line["fields"]["listener"], "public", "{line}");
    let failed = line["fields"]["failed"].as_f64().unwrap();
    assert!(
        grown <= failed && failed <= total,
        "{line}: {grown}..={total}"
    );
    assert!(gw.logged("panicked").is_empty());
    assert_eq!(gw.stop(), 0, "clean exit after the shortage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_connecting_upstream_is_a_502_at_once_not_a_hang() {
    let up = Upstream::start_unrecorded("a").await;
    let f = Files::new(up.addr, false);
    let gw = Limited::start(&f.path()).await;

    // No request yet, so no pooled upstream connection: the next request must open one.
    let mut idle = fill(&gw, f.addr()).await;
    // Room for exactly one more descriptor: the client's connection takes it, and the
    // upstream `socket()` fails with EMFILE.
    free_one(&gw, &mut idle).await;
    let mut client = H1::connect(f.addr()).await;
    let got = tokio::time::timeout(LIMIT, client.get("x", "/emfile"))
        .await
        .expect("an answer, not a hang");
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(got.json()["error"]["code"], "upstream_unavailable");
    assert_eq!(up.hits(), 0);
    let line = f.access_log_line(|l| l["path"] == "/emfile").await;
    assert_eq!(line["status"], 502, "{line}");
    assert_eq!(line["error"], "upstream_connect_error", "{line}");

    // Descriptors free up: the same client connection and a new one are served.
    drop(idle);
    assert_eq!(client.get("x", "/again").await.text(), "a");
    assert_eq!(get(f.addr(), "x", "/new").await.text(), "a");
    assert_eq!(gw.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_an_l4_connection_is_closed_and_logged_not_left_hanging() {
    let up = Upstream::start_unrecorded("a").await;
    let f = Files::new(up.addr, true);
    let gw = Limited::start(&f.path()).await;

    let mut idle = fill(&gw, f.addr()).await;
    free_one(&gw, &mut idle).await;
    // The L4 accept takes the last descriptor; its upstream connect has none.
    let mut tunnel = TcpStream::connect(f.l4()).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LIMIT, tunnel.read(&mut buf))
        .await
        .expect("closed, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let line = f.access_log_line(|l| l["listener"] == "tcp").await;
    assert_eq!(line["error"], "upstream_connect_error", "{line}");
    assert_eq!(up.hits(), 0);

    // Descriptors free up: the L4 listener relays again (HTTP to the HTTP upstream).
    drop(idle);
    let mut tunnel = TcpStream::connect(f.l4()).await.unwrap();
    tunnel
        .write_all(b"GET /through HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut tunnel).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // (An open L4 connection would keep relaying through the drain.)
    drop(tunnel);
    assert_eq!(gw.stop(), 0);
}
