#!/usr/bin/env python3
"""Per-request cost accounting, gateway and HAProxy side by side (bench/README.md, "What a
request costs"): user-space instructions (valgrind callgrind), heap allocations (valgrind
dhat) and system calls (strace -c -f) per proxied request, for HTTP/1.1 keep-alive and for
HTTP/2 over TLS, each proxy with one worker in front of the same NGINX upstream.

Every figure is a difference of two runs with different request counts,
(X(N_HIGH) - X(N_LOW)) / (N_HIGH - N_LOW), so start-up, TLS handshakes and connection
set-up cancel out. Instruction and allocation counts do not depend on what else the machine
is doing, which is why code changes are measured this way rather than in requests per
second.

Usage: bench/costs.py [--proxies gateway,haproxy] [--scenarios h1,h2] [--tools ir,alloc,sys]
Needs what bench/run installs, plus valgrind and strace (installed here if missing), and a
release build (`cargo build --release`). Loopback only; every run is bounded."""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work" / "costs"
RESULTS = ROOT / "bench" / "results"
N_LOW, N_HIGH = 2000, 12000
UPSTREAM = 19100
PORT = {"gateway": 19101, "haproxy": 19102}
TLS_PORT = {"gateway": 19111, "haproxy": 19112}


def need(tool, package):
    if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def configs():
    WORK.mkdir(parents=True, exist_ok=True)
    cert, key = WORK / "tls.pem", WORK / "tls.key"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "30", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=bench.test",
                        "-addext", "subjectAltName=DNS:bench.test"], check=True, capture_output=True)
    (WORK / "tls-haproxy.pem").write_text(cert.read_text() + key.read_text())
    (WORK / "upstream.conf").write_text(f"""
worker_processes 1;
pid {WORK}/upstream.pid;
error_log {WORK}/upstream-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {WORK}/cb; proxy_temp_path {WORK}/pt; fastcgi_temp_path {WORK}/ft;
  uwsgi_temp_path {WORK}/ut; scgi_temp_path {WORK}/st;
  keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{UPSTREAM}; location = / {{ return 200 "hello world\\n"; }} }}
}}
""")
    (WORK / "gateway.yaml").write_text(f"""
workers: 1
reload: {{ watch: false }}
listeners:
  - {{ name: plain, address: "127.0.0.1:{PORT['gateway']}", timeouts: {{ idle: 300s }} }}
  - name: tls
    address: "127.0.0.1:{TLS_PORT['gateway']}"
    timeouts: {{ idle: 300s }}
    tls: {{ certificates: [{{ cert: "{cert}", key: "{key}" }}] }}
routes: [{{ name: all, cluster: up }}]
clusters: [{{ name: up, endpoints: [{{ address: "127.0.0.1:{UPSTREAM}" }}] }}]
""")
    (WORK / "haproxy.cfg").write_text(f"""
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  option http-keep-alive
  http-reuse always
frontend plain
  bind 127.0.0.1:{PORT['haproxy']}
  default_backend b
frontend tls
  bind 127.0.0.1:{TLS_PORT['haproxy']} ssl crt {WORK / 'tls-haproxy.pem'} alpn h2,http/1.1
  default_backend b
backend b
  server s1 127.0.0.1:{UPSTREAM}
""")


def proxy_argv(proxy):
    if proxy == "gateway":
        return [str(ROOT / "target" / "release" / "gateway"), "run", "--config", str(WORK / "gateway.yaml")]
    return ["haproxy", "-db", "-f", str(WORK / "haproxy.cfg")]


def tool_argv(tool, out):
    if tool == "ir":
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    if tool == "alloc":
        return ["valgrind", "--tool=dhat", f"--dhat-out-file={out}"]
    return ["strace", "-f", "-c", "-o", str(out)]


def load(scenario, proxy, n):
    if scenario == "h1":
        argv = ["h2load", "--h1", "-t1", "-c16", f"-n{n}", f"http://127.0.0.1:{PORT[proxy]}/"]
    else:
        argv = ["h2load", "-t1", "-c4", "-m16", f"-n{n}", f"https://127.0.0.1:{TLS_PORT[proxy]}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900).stdout
    ok = re.search(r"(\d+) succeeded", out)
    if not ok or int(ok.group(1)) != n:
        raise RuntimeError(f"load failed for {proxy} {scenario}:\n{out}")


def measure(tool, proxy, scenario, n):
    out = Path(tempfile.mkstemp(dir=WORK, prefix=f"{tool}-{proxy}-{scenario}-{n}-")[1])
    env = {**os.environ, "GATEWAY_LOG": "error"}
    p = subprocess.Popen(tool_argv(tool, out) + proxy_argv(proxy), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env)
    try:
        wait_port(PORT[proxy], 120)
        wait_port(TLS_PORT[proxy], 120)
        load(scenario, proxy, n)
    finally:
        # valgrind runs the proxy in its own process; strace runs it as a child, and on
        # SIGTERM would detach and leave it running. Stop the proxy itself.
        target = p.pid
        if tool == "sys":
            kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
            target = int(kids[0]) if kids else p.pid
        os.kill(target, signal.SIGTERM)
        try:
            p.wait(120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    # A proxy that could not bind (a previous one still there) would measure nothing.
    for port in (PORT[proxy], TLS_PORT[proxy]):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                raise RuntimeError(f"port {port} still served after the proxy exited")
        except OSError:
            pass
    text = out.read_text(errors="replace")
    if tool == "ir":
        return int(re.search(r"^summary:\s+(\d+)", text, re.M).group(1))
    if tool == "alloc":
        data = json.loads(text)
        return sum(pp["tbk"] for pp in data["pps"])  # total blocks allocated
    calls = 0
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m and m.group(2) != "total":
            calls += int(m.group(1))
    return calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxies", default="gateway,haproxy")
    ap.add_argument("--scenarios", default="h1,h2")
    ap.add_argument("--tools", default="ir,alloc,sys")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    for tool, package in [("valgrind", "valgrind"), ("strace", "strace"), ("h2load", "nghttp2-client"),
                          ("nginx", "nginx-light"), ("haproxy", "haproxy")]:
        need(tool, package)
    configs()
    upstream = subprocess.Popen(["nginx", "-c", str(WORK / "upstream.conf")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_port(UPSTREAM)
        for scenario in args.scenarios.split(","):
            for proxy in args.proxies.split(","):
                row = {"scenario": scenario, "proxy": proxy}
                for tool in args.tools.split(","):
                    lo = measure(tool, proxy, scenario, N_LOW)
                    hi = measure(tool, proxy, scenario, N_HIGH)
                    row[tool] = (hi - lo) / (N_HIGH - N_LOW)
                    print(f"{scenario} {proxy:8} {tool:5} {row[tool]:>10.1f} per request", flush=True)
                rows.append(row)
    finally:
        upstream.send_signal(signal.SIGTERM)
        upstream.wait(30)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    name = "costs" + (f"-{args.label}" if args.label else "")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    (RESULTS / f"{name}.json").write_text(json.dumps({"date": stamp, "commit": commit, "rows": rows}, indent=2))
    names = {"ir": "user-space instructions", "alloc": "heap allocations", "sys": "system calls"}
    lines = [f"# Per-request costs ({stamp}, commit {commit})", "",
             f"Produced by `bench/costs.py`: (X({N_HIGH}) − X({N_LOW})) / {N_HIGH - N_LOW} per proxied request; "
             "h1 = HTTP/1.1 keep-alive (h2load --h1 -c16), h2 = HTTP/2 over TLS (h2load -c4 -m16).", "",
             "| scenario | proxy | " + " | ".join(names[t] for t in args.tools.split(",")) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in args.tools.split(",")) + " |"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['proxy']} | " +
                     " | ".join(f"{r[t]:,.1f}" for t in args.tools.split(",")) + " |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
