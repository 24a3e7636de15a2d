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

// ---- command-line habits -------------------------------------------------------------

/// Runs the binary to its end, within a deadline: a command that should have refused its
/// arguments but serves instead is killed, and the test fails rather than hangs.
fn gateway(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "gateway {args:?} did not exit: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A config file serving one route to an endpoint that is never used, in a temp dir.
fn minimal(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("gw.yaml");
    std::fs::write(
        &path,
        format!("{extra}listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nroutes: [{{ name: r, cluster: c }}]\nclusters: [{{ name: c, endpoints: [{{ address: \"127.0.0.1:9\" }}] }}]\n"),
    )
    .unwrap();
    path
}

#[test]
fn bare_gateway_prints_the_usage_with_every_subcommand_and_exits_2() {
    let out = gateway(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for sub in ["run", "validate", "demo", "version"] {
        assert!(
            err.lines().any(|l| l.trim_start().starts_with(sub)),
            "`{sub}` is not listed:\n{err}"
        );
    }
    assert!(err.contains("--config"), "{err}");
}

#[test]
fn dash_c_is_short_for_config_everywhere_config_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = minimal(dir.path(), "");
    let p = path.to_str().unwrap();
    for args in [vec!["validate", "-c", p], vec!["-c", p, "validate"]] {
        let out = gateway(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    let (child, _) = spawn_until(&["run", "-c", p], "listening");
    sigterm(&child);
    assert_eq!(wait_exit(child), 0);
    let (child, _) = spawn_until(&["-c", p], "listening");
    sigterm(&child);
    assert_eq!(wait_exit(child), 0);
}

#[test]
fn config_is_refused_by_the_commands_that_run_no_configuration() {
    for args in [
        vec!["demo", "--config", "x.yaml"],
        vec!["version", "--config", "x.yaml"],
        vec!["--config", "x.yaml", "demo"],
        vec!["--config", "x.yaml", "version"],
        vec!["-c", "x.yaml", "validate", "-c", "y.yaml"],
    ] {
        let out = gateway(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?} was accepted");
        assert!(
            stderr(&out).contains("config"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "{args:?} ran anyway");
    }
}

#[test]
fn validate_format_json_prints_every_problem_for_tools() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - name: public\n    address: nowhere\n    maxConections: 3\nroutes: [{ name: r, cluster: missing }]\n",
    )
    .unwrap();
    let out = gateway(&[
        "validate",
        "--config",
        path.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().unwrap();
    let paths: Vec<&str> = errors.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "listeners[0].address",
            "listeners[0].maxConections",
            "routes[0].cluster"
        ],
        "every error, in file order: {v}"
    );
    assert_eq!(errors[0]["line"], 3, "{v}");
    assert_eq!(errors[0]["column"], 14, "{v}");
    assert!(
        errors[1]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `maxConnections`?"),
        "{v}"
    );

    let good = minimal(dir.path(), "");
    let out = gateway(&["validate", "-c", good.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["errors"], serde_json::json!([]));
}

#[test]
fn an_access_log_in_a_missing_directory_fails_validate_and_run_alike_at_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = minimal(dir.path(), "accessLog:\n  path: no/such/dir/access.log\n");
    let p = path.to_str().unwrap();
    let checked = gateway(&["validate", "-c", p]);
    assert_eq!(
        checked.status.code(),
        Some(1),
        "validate passed what run refuses"
    );
    let ran = gateway(&["run", "-c", p]);
    assert_eq!(ran.status.code(), Some(1));
    for (what, out) in [("validate", &checked), ("run", &ran)] {
        let err = stderr(out);
        let line = err
            .lines()
            .find(|l| l.contains("accessLog.path"))
            .unwrap_or_else(|| panic!("{what}: no error at accessLog.path:\n{err}"));
        assert!(
            line.contains(":2:9:"),
            "{what}: the position of the value: {line}"
        );
        assert!(line.contains("does not exist"), "{what}: {line}");
        assert!(
            !dir.path().join("no").exists(),
            "{what} created the directory"
        );
    }
    assert_eq!(
        stderr(&checked)
            .lines()
            .find(|l| l.contains("accessLog.path")),
        stderr(&ran).lines().find(|l| l.contains("accessLog.path")),
        "validate and run say the same thing"
    );
    assert_no_repeated_cause(&stderr(&ran));
}

/// No message says the same thing twice, such as an OS error repeated by its cause.
fn assert_no_repeated_cause(text: &str) {
    for line in text.lines() {
        let causes = line.matches("(os error").count();
        assert!(causes <= 1, "a cause is repeated: {line}");
    }
}

#[test]
fn a_configuration_with_nothing_to_serve_is_a_warning_for_validate_and_refused_by_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.yaml");
    for text in ["version: 1\n", "{}\n"] {
        std::fs::write(&path, text).unwrap();
        let p = path.to_str().unwrap();
        let out = gateway(&["validate", "-c", p]);
        assert_eq!(out.status.code(), Some(1), "{text:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("warning:") && err.contains("nothing to serve"),
            "{err}"
        );
        let out = gateway(&["run", "-c", p]);
        assert_eq!(out.status.code(), Some(1), "{text:?}: run did not refuse");
        assert!(
            stderr(&out).contains("nothing to serve"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn run_pid_file_holds_the_process_id_while_serving_and_is_removed_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = minimal(dir.path(), "");
    let pid_path = dir.path().join("run/gateway.pid");
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let (child, _) = spawn_until(
        &[
            "run",
            "-c",
            path.to_str().unwrap(),
            "--pid-file",
            pid_path.to_str().unwrap(),
        ],
        "listening",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Ok(text) = std::fs::read_to_string(&pid_path) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(pid, format!("{}\n", child.id()));
    sigterm(&child);
    assert_eq!(wait_exit(child), 0);
    assert!(!pid_path.exists(), "the pid file was left behind");

    let out = gateway(&[
        "run",
        "-c",
        path.to_str().unwrap(),
        "--pid-file",
        dir.path().join("missing/gateway.pid").to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unwritable pid file must stop the start"
    );
    assert!(stderr(&out).contains("--pid-file"), "{}", stderr(&out));
    assert_no_repeated_cause(&stderr(&out));
}

#[test]
fn a_busy_demo_port_names_the_flag_that_changes_it_and_says_so_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = gateway(&["demo", "--port", &port, "--admin-port", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("already in use") && err.contains("--port"),
        "{err}"
    );
    assert_no_repeated_cause(&err);
    let out = gateway(&["demo", "--port", "0", "--admin-port", &port]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--admin-port"), "{}", stderr(&out));
}

/// Runs the binary to a bind failure after one warning from its own logger (a listener
/// without routes, on a port that is taken), with stderr piped or, through `script`, on a
/// terminal. Returns what it wrote.
fn a_logged_warning(terminal: bool, no_color: Option<&str>) -> String {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners: [{{ name: lonely, address: \"{}\" }}]\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let exe = env!("CARGO_BIN_EXE_gateway");
    let mut cmd = if terminal {
        // util-linux's script(1) gives the child a pseudo-terminal.
        let mut c = Command::new("script");
        c.args([
            "-qec",
            &format!("{exe} run -c {}", path.display()),
            "/dev/null",
        ]);
        c
    } else {
        let mut c = Command::new(exe);
        c.args(["run", "-c", path.to_str().unwrap()]);
        c
    };
    cmd.env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(
        text.contains("has no routes"),
        "the warning is missing: {text}"
    );
    text
}

#[test]
fn the_gateways_own_logs_have_colour_codes_only_on_a_terminal_and_never_with_no_color() {
    assert!(
        !a_logged_warning(false, None).contains('\x1b'),
        "colour codes on a pipe"
    );
    assert!(
        a_logged_warning(true, None).contains('\x1b'),
        "no colour on a terminal: the check above proves nothing"
    );
    assert!(
        !a_logged_warning(true, Some("1")).contains('\x1b'),
        "NO_COLOR=1 is not honoured"
    );
}

/// Every tracing call in the source: its text from the macro name to the closing paren.
fn tracing_calls(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for level in ["trace!(", "debug!(", "info!(", "warn!(", "error!("] {
        let mut rest = text;
        while let Some(at) = rest.find(level) {
            let call = &rest[at + level.len()..];
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(call.len(), |(i, _)| i);
            out.push(call[..end].to_string());
            rest = &call[end..];
        }
    }
    out
}

#[test]
fn no_log_field_is_written_with_rusts_debug_syntax() {
    let mut files = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for call in tracing_calls(&text) {
            // `field = ?value` and the shorthand `?value` print `Some(…)`, `File("…")`.
            let debug = call
                .split(['(', ',', '='])
                .any(|part| part.trim_start().starts_with('?'));
            if debug {
                found.push(format!("{}: {}", f.display(), call.trim()));
            }
        }
    }
    assert!(found.len() < files.len(), "the scan read nothing");
    assert!(
        found.is_empty(),
        "log fields with Debug formatting (use `%` or a plain value):\n{}",
        found.join("\n")
    );
}

/// Starts the demo on free ports and returns it with the "Try" lines it printed.
fn demo_with_lines() -> (Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["demo", "--port", "0", "--admin-port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
        let mut tries = Vec::new();
        let mut inside = false;
        for line in &mut lines {
            if line.starts_with("Try") {
                inside = true;
            } else if inside && line.trim().is_empty() {
                let _ = tx.send(std::mem::take(&mut tries));
                break;
            } else if inside {
                tries.push(line);
            }
        }
        for _ in lines {}
    });
    let lines = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the demo printed no lines to try")
        });
    (child, lines)
}

/// The `http://127.0.0.1:PORT/...` URL of a printed line.
fn url_of(line: &str) -> (SocketAddr, String) {
    let at = line.find("http://127.0.0.1:").unwrap();
    let rest = &line[at + "http://127.0.0.1:".len()..];
    let end = rest.find(['\'', ';', ' ']).unwrap_or(rest.len());
    let rest = &rest[..end];
    let (port, path) = rest.split_at(rest.find('/').unwrap());
    (
        ([127, 0, 0, 1], port.parse().unwrap()).into(),
        path.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_lines_run_in_order_show_what_their_comments_claim() {
    let (child, lines) = demo_with_lines();
    assert!(lines.len() >= 5, "{lines:#?}");

    // First: the WRR loop, five requests whose upstreams are the sequence its comment prints.
    let wrr = &lines[0];
    assert!(
        wrr.contains("for i in 1 2 3 4 5"),
        "the first line is the WRR loop: {wrr}"
    );
    let claimed: Vec<String> = wrr
        .rsplit(':')
        .next()
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let (addr, path) = url_of(wrr);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let body = get(addr, "127.0.0.1", &path).await.text();
        let name = body
            .strip_prefix("hello from upstream-")
            .and_then(|r| r.split(':').next())
            .unwrap_or_default()
            .to_string();
        seen.push(name);
    }
    assert_eq!(seen, claimed, "{wrr}");

    // The path-normalisation line: curl only sends the dot-segments with --path-as-is.
    let dots = lines
        .iter()
        .find(|l| l.contains("/../"))
        .expect("a dot-segment line");
    assert!(
        dots.contains("--path-as-is"),
        "curl would normalise the path itself: {dots}"
    );
    let (addr, path) = url_of(dots);
    let (text, _) = raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        text.contains(": GET /b?q=1 "),
        "the upstream saw the normalised path: {text}"
    );

    sigterm(&child);
    assert_eq!(wait_exit(child), 0);
}

/// Reads notifications from a datagram socket until `want` arrives (or panics).
fn notifications_until(socket: &std::os::unix::net::UnixDatagram, want: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {want:?} notification ({e}); got {got:?}"));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg.lines().any(|l| l == want);
        got.push(msg);
        if done {
            return got;
        }
    }
}

fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_is_told_ready_then_reloading_and_ready_around_each_reload_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap();
    drop(admin);
    let path = minimal(
        dir.path(),
        &format!("admin: {{ address: \"{admin_addr}\" }}\n"),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["run", "-c", path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let started = notifications_until(&socket, "READY=1");
    assert_eq!(started.len(), 1, "{started:?}");
    // READY comes once the listeners are bound: the admin API answers.
    assert_eq!(get(admin_addr, "admin", "/readyz").await.status, 200);

    let before = monotonic_usec();
    let ok = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let reload = notifications_until(&socket, "READY=1");
    let after = monotonic_usec();
    assert!(reload[0].lines().any(|l| l == "RELOADING=1"), "{reload:?}");
    let usec: u64 = reload[0]
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reload:?}"))
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC now ({before}..{after})"
    );
    assert_eq!(reload.len(), 2, "RELOADING=1, then READY=1: {reload:?}");

    // A reload that is not a signal (the admin API) is announced the same way.
    let answer = H1::connect(admin_addr)
        .await
        .send(
            http::Request::post("/reload")
                .header("host", "admin")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let reload = notifications_until(&socket, "READY=1");
    assert!(reload[0].starts_with("RELOADING=1\n"), "{reload:?}");

    sigterm(&child);
    let stopping = notifications_until(&socket, "STOPPING=1");
    assert_eq!(stopping.len(), 1, "{stopping:?}");
    assert_eq!(wait_exit(child), 0);
}
