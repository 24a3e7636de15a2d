//! The real binary: `gateway demo` as the README shows it, and SIGTERM draining.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::*;

/// Runs the binary and waits for a stderr line containing `marker`; returns the child and
/// that line. The rest of stderr keeps being drained so the child never blocks on it.
fn spawn_until(args: &[&str], marker: &'static str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(marker) {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the gateway never printed {marker:?}")
        });
    (child, line)
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_exit(mut child: Child) -> i32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_weighted_routes_and_a_504_then_exits_cleanly_on_sigterm() {
    let (child, line) = spawn_until(
        &["demo", "--port", "0", "--admin-port", "0"],
        "curl -i http://127.0.0.1:",
    );
    let port: u16 = line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut c = H1::connect(addr).await;
    let mut seq = Vec::new();
    for _ in 0..5 {
        let body = c.get("localhost", "/").await.text();
        seq.push(
            body.split(':')
                .next()
                .unwrap_or_default()
                .trim_start_matches("hello from ")
                .to_string(),
        );
    }
    assert_eq!(
        seq,
        [
            "upstream-a",
            "upstream-b",
            "upstream-a",
            "upstream-c",
            "upstream-a"
        ]
    );
    let api = c.get("api.localhost", "/users").await;
    assert!(
        api.text().starts_with("hello from upstream-c"),
        "{}",
        api.text()
    );
    let slow = c.get("localhost", "/slow").await;
    assert_eq!(slow.status, 504);
    assert_eq!(slow.json()["error"]["code"], "upstream_timeout");
    sigterm(&child);
    assert_eq!(wait_exit(child), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let path = dir.path().join("gw.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners: [{{ name: public, address: \"127.0.0.1:{port}\" }}]\nroutes: [{{ name: r, cluster: c }}]\nclusters: [{{ name: c, endpoints: [{{ address: \"{}\" }}] }}]\n",
            up.addr
        ),
    )
    .unwrap();
    let (child, _) = spawn_until(&["run", "--config", path.to_str().unwrap()], "listening");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let inflight = tokio::spawn(async move { get(addr, "h", "/sleep/700").await });
    eventually(Duration::from_secs(10), || (up.hits() >= 1).then_some(())).await;
    sigterm(&child);
    let got = inflight.await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "u");
    assert_eq!(wait_exit(child), 0);
}

#[test]
fn run_without_a_valid_config_exits_one_with_the_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "listeners: [{ name: public, address: nowhere }]\nroutes: [{ name: r, cluster: missing }]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listeners[0].address"), "{err}");
    assert!(err.contains("routes[0].cluster"), "{err}");
}

#[test]
fn log_format_json_makes_the_gateways_own_logs_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, "listeners: [{ name: public, address: \"127.0.0.1:0\" }]\nroutes: [{ name: r, cluster: c }]\nclusters: [{ name: c, endpoints: [{ address: \"127.0.0.1:9\" }] }]\n").unwrap();
    let (child, line) = spawn_until(
        &[
            "--log-format",
            "json",
            "run",
            "--config",
            path.to_str().unwrap(),
        ],
        "listening",
    );
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["fields"]["listener"], "public");
    sigterm(&child);
    assert_eq!(wait_exit(child), 0);
}
