//! Signals to the real binary, as operators and their tools send them (spec "Signals"):
//! SIGHUP reloads, SIGUSR1 reopens the access log (logrotate's `postrotate`), SIGUSR2 and
//! SIGWINCH are ignored, SIGTERM drains with `/readyz` at 503 from the first moment and
//! the admin listener up to the end, and a second SIGTERM exits at once.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(20);

/// The binary, running a config file, with its stderr collected.
struct Binary {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    fn run(config: &Path) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let b = Binary {
            child,
            stderr: lines,
        };
        b.wait_for_log("listening");
        b
    }

    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never logged {needle:?}: {:?}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit; returns its code and how long it took.
    fn wait_exit(&mut self) -> (i32, Duration) {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), start.elapsed());
            }
            assert!(start.elapsed() < LIMIT, "the gateway did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Files {
    dir: tempfile::TempDir,
    port: u16,
    admin: u16,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            admin: free_port(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    fn write(&self, up: &Upstream, extra: &str) {
        std::fs::write(
            self.path(),
            format!(
                "reload: {{ watch: false }}\n\
                 admin: {{ address: \"127.0.0.1:{}\" }}\n\
                 accessLog: {{ path: access.log }}\n\
                 listeners: [{{ name: public, address: \"127.0.0.1:{}\" }}]\n\
                 routes: [{{ name: r, cluster: c }}]\n\
                 clusters: [{{ name: c, endpoints: [{{ address: \"{}\" }}] }}]\n{extra}",
                self.admin, self.port, up.addr
            ),
        )
        .unwrap();
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn admin(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.admin).into()
    }
}

async fn generation(f: &Files) -> u64 {
    get(f.admin(), "x", "/status").await.json()["generation"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_while_requests_in_flight_finish() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let f = Files::new();
    f.write(&a, "");
    let mut gw = Binary::run(&f.path());
    let addr = f.addr();
    let in_flight = tokio::spawn(async move { get(addr, "x", "/sleep/600").await });
    eventually(LIMIT, || (a.hits() == 1).then_some(())).await;
    f.write(&b, "");
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded");
    let got = in_flight.await.unwrap();
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "a"));
    assert_eq!(get(addr, "x", "/").await.text(), "b");
    assert_eq!(generation(&f).await, 2);
    // A broken file and SIGHUP: logged, nothing changes, the process goes on.
    std::fs::write(f.path(), "listeners: nope\n").unwrap();
    gw.signal("HUP");
    let line = gw.wait_for_log("configuration reload failed");
    assert!(line.contains("listeners"), "{line}");
    assert!(gw.alive());
    assert_eq!(get(addr, "x", "/").await.text(), "b");
    assert_eq!(generation(&f).await, 2);
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_after_logrotate_moved_it() {
    let a = Upstream::start("a").await;
    let f = Files::new();
    f.write(&a, "");
    let mut gw = Binary::run(&f.path());
    let log = f.dir.path().join("access.log");
    let rotated = f.dir.path().join("access.log.1");
    let has = |p: &Path, needle: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .contains(needle)
    };
    assert_eq!(get(f.addr(), "x", "/before").await.status, 200);
    eventually(LIMIT, || has(&log, "/before").then_some(())).await;
    std::fs::rename(&log, &rotated).unwrap();
    gw.signal("USR1");
    gw.wait_for_log("access log reopened");
    assert_eq!(get(f.addr(), "x", "/after").await.status, 200);
    eventually(LIMIT, || has(&log, "/after").then_some(())).await;
    assert!(!has(&rotated, "/after"), "the moved file gets no new lines");
    assert!(has(&rotated, "/before"));
    assert!(gw.alive());
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_sent_by_habit_do_not_end_the_process() {
    let a = Upstream::start("a").await;
    let f = Files::new();
    f.write(&a, "");
    let mut gw = Binary::run(&f.path());
    for sig in ["USR2", "WINCH"] {
        gw.signal(sig);
        gw.wait_for_log(&format!("SIG{sig} received and ignored"));
        assert!(gw.alive(), "SIG{sig}");
        assert_eq!(get(f.addr(), "x", "/").await.status, 200);
    }
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_readyz_503_at_once_keeps_serving_for_the_delay_then_drains() {
    let a = Upstream::start("a").await;
    let f = Files::new();
    f.write(&a, "shutdown: { delay: 1s, drainTimeout: 10s }\n");
    let mut gw = Binary::run(&f.path());
    assert_eq!(get(f.admin(), "x", "/readyz").await.status, 200);
    let addr = f.addr();
    let in_flight = tokio::spawn(async move { get(addr, "x", "/sleep/1800").await });
    eventually(LIMIT, || (a.hits() == 1).then_some(())).await;
    gw.signal("TERM");
    gw.wait_for_log("shutting down");
    // During the delay: not ready, still serving new connections.
    let ready = get(f.admin(), "x", "/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "not ready");
    assert_eq!(
        get(addr, "x", "/").await.status,
        200,
        "served during the delay"
    );
    // Draining: new connections refused, the admin listener still answers.
    gw.wait_for_log("draining in-flight requests");
    eventually(LIMIT, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .is_err()
            .then_some(())
    })
    .await;
    assert_eq!(get(f.admin(), "x", "/readyz").await.status, 503);
    let got = in_flight.await.unwrap();
    assert_eq!(got.status, 200, "the request in flight finished");
    assert_eq!(gw.wait_exit().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let a = Upstream::start("a").await;
    let f = Files::new();
    f.write(&a, "shutdown: { drainTimeout: 30s }\n");
    let mut gw = Binary::run(&f.path());
    let addr = f.addr();
    let _stuck = tokio::spawn(async move { get(addr, "x", "/sleep/15000").await });
    eventually(LIMIT, || (a.hits() == 1).then_some(())).await;
    gw.signal("TERM");
    gw.wait_for_log("draining in-flight requests");
    gw.signal("TERM");
    let (code, took) = gw.wait_exit();
    assert_eq!(code, 1);
    assert!(
        took < Duration::from_secs(10),
        "left without waiting: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_workers_says_it_needs_a_restart() {
    let a = Upstream::start("a").await;
    let f = Files::new();
    f.write(&a, "workers: 1\n");
    let mut gw = Binary::run(&f.path());
    f.write(&a, "workers: 2\n");
    gw.signal("HUP");
    let line = gw.wait_for_log("takes effect only after a restart");
    assert!(line.contains("workers"), "{line}");
    gw.wait_for_log("configuration reloaded");
    assert_eq!(get(f.addr(), "x", "/").await.status, 200);
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().0, 0);
}
