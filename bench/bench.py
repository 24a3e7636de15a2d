#!/usr/bin/env python3
"""Drives bench/run: starts one NGINX upstream and three proxies in front of it (the
gateway, HAProxy, NGINX), each with one worker thread, a plaintext and an HTTPS port
(the same ECDSA P-256 certificate for all three), keep-alive to the upstream and
access logs off; runs every scenario interleaved (gateway, HAProxy, NGINX, repeated
BENCH_ROUNDS times); and writes medians and ratios to bench/results/latest.{md,json}.

Every process it starts is stopped at the end, whatever happens. Load goes to 127.0.0.1
only, and every load run is bounded in time."""

import asyncio
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"
QUICK = "--quick" in sys.argv
# `--only a,b`: run just these scenarios (keys as in SCENARIOS, plus reload and memory).
ONLY = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--only=")), [])
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1" if QUICK else "3"))
DURATION = int(os.environ.get("BENCH_DURATION", "3" if QUICK else "10"))
# 10,000 is the target in DESIGN.md, but with this machine's 20,000-descriptor hard limit
# HAProxy cannot be configured above ~9,990 connections; all three hold the same number.
IDLE_CONNS = int(os.environ.get("BENCH_IDLE_CONNS", "2000" if QUICK else "9000"))
PORTS = {"upstream": 19000, "gateway": 19001, "haproxy": 19002, "nginx": 19003}
# HTTPS listeners of the same three proxies, all with one ECDSA P-256 certificate.
TLS_PORTS = {"gateway": 19011, "haproxy": 19012, "nginx": 19013}
# L4 TCP passthrough: gateway `l4` listener, HAProxy `mode tcp`, NGINX `stream`.
L4_PORTS = {"gateway": 19021, "haproxy": 19022, "nginx": 19023}
PROXIES = ["gateway", "haproxy", "nginx"]
NCPU = os.cpu_count() or 1
# The proxy under test gets the last core to itself when there are two or more; the
# load generator and the upstream share the others.
PROXY_CPU = str(NCPU - 1)
LOAD_CPUS = ",".join(str(c) for c in range(max(NCPU - 1, 1)))

procs = []


def pinned(cpus, argv):
    return ["taskset", "-c", cpus] + argv


def start(name, argv, **kw):
    log = open(WORK / f"{name}.log", "w")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kw)
    procs.append((name, p))
    return p


def stop_all():
    for name, p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + 10
    for name, p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    procs.clear()


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s; see {WORK}")


def nginx_common(name):
    d = WORK / name
    d.mkdir(parents=True, exist_ok=True)
    return f"""
user root;
worker_processes 1;
worker_rlimit_nofile 19000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections 15000; multi_accept on; }}
"""


def write_cert():
    """One self-signed ECDSA P-256 certificate for all three proxies (HAProxy wants the
    key in the same file)."""
    cert, key = WORK / "tls.pem", WORK / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "30", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test"], check=True, capture_output=True)
    (WORK / "tls-haproxy.pem").write_text(cert.read_text() + key.read_text())


def write_configs():
    WORK.mkdir(parents=True, exist_ok=True)
    write_cert()
    www = WORK / "www"
    www.mkdir(exist_ok=True)
    (www / "1m").write_bytes(os.urandom(1 << 20))
    if not (www / "100m").exists() or (www / "100m").stat().st_size != 100 << 20:
        (www / "100m").write_bytes(os.urandom(100 << 20))
    temp = lambda n: "\n".join(
        f"{k}_temp_path {WORK / n / k};" for k in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    )
    (WORK / "upstream.conf").write_text(nginx_common("upstream") + f"""
http {{
  access_log off;
  {temp("upstream")}
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{PORTS['upstream']} backlog=4096;
    location = / {{ return 200 "hello world\\n"; }}
    location = /post {{ client_max_body_size 1m; return 200 "ok\\n"; }}
    location = /1m {{ root {www}; }}
    location = /100m {{ root {www}; }}
  }}
}}
""")
    (WORK / "nginx.conf").write_text("load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n" + nginx_common("nginx") + f"""
stream {{
  server {{
    listen 127.0.0.1:{L4_PORTS['nginx']} backlog=4096;
    proxy_pass 127.0.0.1:{PORTS['upstream']};
  }}
}}
http {{
  access_log off;
  {temp("nginx")}
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  upstream u {{ server 127.0.0.1:{PORTS['upstream']}; keepalive 128; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']} backlog=4096;
    location / {{
      proxy_pass http://u;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
      client_max_body_size 1m;
    }}
  }}
  server {{
    listen 127.0.0.1:{TLS_PORTS['nginx']} ssl http2 backlog=4096;
    ssl_certificate {WORK / "tls.pem"};
    ssl_certificate_key {WORK / "tls.key"};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    http2_max_concurrent_streams 100;
    location / {{
      proxy_pass http://u;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }}
  }}
}}
""")
    (WORK / "haproxy.cfg").write_text(f"""
global
  nbthread 1
  # Master-worker mode with listening sockets handed to the new worker on reload
  # (HAProxy's "seamless reload"), for the reload-under-load row.
  stats socket {WORK / "haproxy.sock"} mode 600 level admin expose-fd listeners
  # This machine's hard limit is 20,000 descriptors and HAProxy reserves 2 per
  # connection, so it cannot be configured for more than ~9,990 connections here.
  ulimit-n 19990
  maxconn 9980
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:{PORTS['haproxy']}
  maxconn 9980
  default_backend b
frontend fl4
  mode tcp
  bind 127.0.0.1:{L4_PORTS['haproxy']}
  default_backend bl4
backend bl4
  mode tcp
  server s1 127.0.0.1:{PORTS['upstream']} maxconn 10000
frontend ftls
  bind 127.0.0.1:{TLS_PORTS['haproxy']} ssl crt {WORK / "tls-haproxy.pem"} alpn h2,http/1.1 ssl-min-ver TLSv1.2
  default_backend b
backend b
  server s1 127.0.0.1:{PORTS['upstream']} maxconn 10000
""")
    (WORK / "gateway.yaml").write_text(f"""
version: 1
workers: 1
# The reload row reloads with SIGHUP, as NGINX and HAProxy are reloaded with signals.
reload: {{ watch: false }}
listeners:
  - name: bench
    address: 127.0.0.1:{PORTS['gateway']}
    maxConnections: 15000
    limits: {{ maxRequestBody: 1MiB }}
    timeouts: {{ idle: 300s }}
  - name: bench-tls
    address: 127.0.0.1:{TLS_PORTS['gateway']}
    maxConnections: 15000
    timeouts: {{ idle: 300s }}
    tls:
      certificates: [{{ cert: "{WORK / 'tls.pem'}", key: "{WORK / 'tls.key'}" }}]
l4:
  listeners:
    - name: bench-l4
      address: 127.0.0.1:{L4_PORTS['gateway']}
      cluster: upstream
      maxConnections: 15000
routes:
  - name: all
    cluster: upstream
clusters:
  - name: upstream
    endpoints: [{{ address: "127.0.0.1:{PORTS['upstream']}" }}]
""")
    (WORK / "post.lua").write_text(
        'wrk.method = "POST"\nwrk.body = string.rep("x", 4096)\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\nwrk.path = "/post"\n'
    )


def start_all():
    start("upstream", pinned(LOAD_CPUS, ["nginx", "-c", str(WORK / "upstream.conf")]))
    wait_port(PORTS["upstream"])
    gw = ROOT / "target" / "release" / "gateway"
    start("gateway", pinned(PROXY_CPU, [str(gw), "run", "--config", str(WORK / "gateway.yaml")]),
          env={**os.environ, "GATEWAY_LOG": "warn"})
    start("haproxy", pinned(PROXY_CPU, ["haproxy", "-W", "-f", str(WORK / "haproxy.cfg")]))
    start("nginx", pinned(PROXY_CPU, ["nginx", "-c", str(WORK / "nginx.conf")]))
    for p in PROXIES:
        wait_port(PORTS[p])
        wait_port(TLS_PORTS[p])
        wait_port(L4_PORTS[p])


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
SIZE = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def wrk(port, path="/", conns=64, extra=(), scheme="http"):
    argv = pinned(LOAD_CPUS, ["wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", "--latency", "--timeout", "5s",
                              *extra, f"{scheme}://127.0.0.1:{port}{path}"])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=DURATION + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    mbps = float(m.group(1)) * SIZE.get(m.group(2), 1) / (1 << 20)
    p99 = re.search(r"99%\s+([\d.]+)(\w+)", out)
    p99ms = float(p99.group(1)) * UNITS.get(p99.group(2), 1.0)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = int(errors.group(1)) if errors else 0
    if sock:
        bad += sum(int(x) for x in sock.groups())
    return {"rps": rps, "mbps": mbps, "p99_ms": p99ms, "errors": bad}


def h2load(port, conns=16, streams=16):
    """HTTP/2 over TLS (ALPN h2) with h2load: `conns` connections, `streams` each."""
    argv = pinned(LOAD_CPUS, ["h2load", "-t1", f"-c{conns}", f"-m{streams}", "-D", str(DURATION),
                              "--warm-up-time=1", f"https://127.0.0.1:{port}/"])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=DURATION + 60).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s, ([\d.]+)(\w+)/s", out)
    if not m:
        raise RuntimeError(f"h2load output not understood:\n{out}")
    rps = float(m.group(1))
    mbps = float(m.group(2)) * SIZE.get(m.group(3), 1) / (1 << 20)
    req = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed, (\d+) errored", out)
    codes = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    bad = (sum(int(x) for x in req.groups()) if req else 0) + (sum(int(x) for x in codes.groups()) if codes else 0)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(\w+)", out)
    mean_ms = float(mean.group(1)) * UNITS.get(mean.group(2), 1.0) if mean else None
    # h2load reports no percentiles; the mean request time stands in the p99 column.
    return {"rps": rps, "mbps": mbps, "p99_ms": mean_ms, "errors": bad}


def cpu_seconds(pid):
    """User + system CPU time of a process and its children (NGINX's master and worker)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    pids += [int(k) for k in kids]
    total = 0.0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, IndexError, ValueError):
            pass
    return total


def handshakes(proxy, batch=500):
    """Full TLS handshakes: h2load (which never resumes sessions) opens `batch` new
    connections with one HTTP/1.1 request each, again and again for DURATION seconds.
    On a small machine the client's side of a handshake (ECDHE, verifying the ECDSA
    signature) costs more than the server's, so the wall-clock rate measures the client;
    the figure compared is handshakes per CPU second of the proxy."""
    pid = dict(procs)[proxy].pid
    port = TLS_PORTS[proxy]
    done, bad = 0, 0
    cpu0, t0 = cpu_seconds(pid), time.time()
    while time.time() - t0 < DURATION:
        out = subprocess.run(pinned(LOAD_CPUS, ["h2load", "--h1", "-t1", f"-c{batch}", f"-n{batch}",
                                                f"https://127.0.0.1:{port}/"]),
                             capture_output=True, text=True, timeout=60).stdout
        req = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
        if not req:
            raise RuntimeError(f"h2load output not understood:\n{out}")
        done += int(req.group(1))
        bad += int(req.group(2)) + int(req.group(3))
    cpu, wall = cpu_seconds(pid) - cpu0, time.time() - t0
    return {"rps": done / max(cpu, 1e-9), "mbps": 0.0, "p99_ms": None, "errors": bad,
            "wall_rps": done / wall, "proxy_cpu_s": cpu}


def rss_kib(pid):
    """RSS of a process and its children (NGINX's master and worker)."""
    total = 0
    pids = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(k) for k in kids]
    except FileNotFoundError:
        pass
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


async def hold_idle(port, n):
    """Opens n keep-alive connections, completes one request on each, and keeps them."""
    conns = []
    sem = asyncio.Semaphore(500)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            await w.drain()
            data = b""
            while b"hello world" not in data:
                chunk = await asyncio.wait_for(r.read(4096), 10)
                if not chunk:
                    raise ConnectionError("closed")
                data += chunk
            conns.append(w)

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    failed = sum(1 for r in results if isinstance(r, Exception))
    return conns, failed


def memory(proxy):
    pid = dict((n, p) for n, p in procs)[proxy].pid
    # Children of taskset are exec'd in place, so the pid is the proxy's own.
    before = rss_kib(pid)

    async def run():
        conns, failed = await hold_idle(PORTS[proxy], IDLE_CONNS)
        await asyncio.sleep(1.0)
        held = rss_kib(pid)
        for w in conns:
            w.close()
        return held, failed

    held, failed = asyncio.run(run())
    return {"rss_kib": held, "idle_rss_kib": before, "per_conn_bytes": (held - before) * 1024 / max(IDLE_CONNS, 1),
            "errors": failed}


SCENARIOS = [
    ("http1_keepalive_small", "HTTP/1.1 keep-alive, small GET (wrk -c64)", lambda port: wrk(port)),
    ("http1_new_connections", "HTTP/1.1 Connection: close (new connections)",
     lambda port: wrk(port, conns=32, extra=("-H", "Connection: close"))),
    ("download_1mib", "1 MiB download (wrk -c8)", lambda port: wrk(port, "/1m", conns=8)),
    ("post_4kib", "4 KiB POST (wrk -c64)", lambda port: wrk(port, "/post", extra=("-s", str(WORK / "post.lua")))),
    # TLS scenarios run against each proxy's HTTPS port (see TLS_PORTS).
    ("https_keepalive", "HTTPS keep-alive, small GET, HTTP/1.1 (wrk -c64, TLS 1.3)",
     lambda port: wrk(TLS_PORTS[proxy_of(port)], scheme="https")),
    ("tls_handshakes", "New TLS connections: full handshakes per proxy CPU second (h2load, no resumption)",
     lambda port: handshakes(proxy_of(port))),
    ("h2_tls", "HTTP/2 over TLS, small GET (h2load -c16 -m16; p99 column: mean)",
     lambda port: h2load(TLS_PORTS[proxy_of(port)])),
    # L4 rows: the same upstream reached through TCP passthrough.
    ("l4_http_requests", "L4 TCP: HTTP keep-alive requests through it (wrk -c64)",
     lambda port: wrk(L4_PORTS[proxy_of(port)])),
    ("l4_bulk_100mib", "L4 TCP: bulk transfer, 100 MiB downloads (wrk -c4)",
     lambda port: wrk(L4_PORTS[proxy_of(port)], "/100m", conns=4)),
]


RELOADS = int(os.environ.get("BENCH_RELOADS", "10"))


def reload_proxy(proxy):
    """One configuration reload, the way each proxy's operators do it: SIGHUP to the
    gateway, `nginx -s reload`, SIGUSR2 to HAProxy's master (master-worker mode, listening
    sockets passed to the new worker)."""
    pid = dict(procs)[proxy].pid
    if proxy == "gateway":
        os.kill(pid, signal.SIGHUP)
    elif proxy == "haproxy":
        os.kill(pid, signal.SIGUSR2)
    else:
        subprocess.run(["nginx", "-s", "reload", "-c", str(WORK / "nginx.conf")], check=True,
                       capture_output=True, timeout=30)


def reload_under_load(proxy):
    """Keep-alive load (wrk -c32) and new-connection load (wrk -c8, Connection: close)
    while the proxy reloads its configuration RELOADS times; every socket error, timeout
    and non-2xx response counts as a failed request."""
    port = PORTS[proxy]
    duration = max(DURATION, RELOADS) + 2
    runs = []
    for conns, extra in ((32, ()), (8, ("-H", "Connection: close"))):
        argv = pinned(LOAD_CPUS, ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "5s",
                                  *extra, f"http://127.0.0.1:{port}/"])
        runs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
    time.sleep(1)
    for _ in range(RELOADS):
        reload_proxy(proxy)
        time.sleep((duration - 2) / RELOADS)
    total = {"rps": 0.0, "mbps": 0.0, "p99_ms": None, "errors": 0, "requests": 0}
    for p in runs:
        out, _ = p.communicate(timeout=duration + 60)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        total["rps"] += rps
        total["requests"] += int(re.search(r"(\d+) requests in", out).group(1))
        total["errors"] += (int(errors.group(1)) if errors else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    return total


def proxy_of(port):
    return next(p for p, x in PORTS.items() if x == port)


def machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = open("/proc/meminfo").readline().split(":")[1].strip()
    except OSError:
        pass
    ver = lambda argv: subprocess.run(argv, capture_output=True, text=True).stderr.strip().splitlines()[0] if argv[0] == "nginx" else subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
    return {
        "cpu": cpu, "cores": NCPU, "memory": mem, "kernel": platform.release(),
        "nginx": ver(["nginx", "-v"]), "haproxy": ver(["haproxy", "-v"]),
        "gateway": subprocess.run([str(ROOT / "target/release/gateway"), "version"], capture_output=True, text=True).stdout.strip(),
        "pinning": f"proxy on CPU {PROXY_CPU}; wrk and upstream on CPU {LOAD_CPUS}",
        "rounds": ROUNDS, "duration_s": DURATION, "idle_connections": IDLE_CONNS,
    }


def main():
    write_configs()
    raw = {s[0]: {p: [] for p in PROXIES} for s in SCENARIOS}
    raw["memory_idle"] = {p: [] for p in PROXIES}
    raw["reload_under_load"] = {p: [] for p in PROXIES}
    try:
        start_all()
        for p in PROXIES:  # warm up pools and caches
            wrk_short = subprocess.run(pinned(LOAD_CPUS, ["wrk", "-t1", "-c16", "-d1s", f"http://127.0.0.1:{PORTS[p]}/"]),
                                       capture_output=True, timeout=30)
        for r in range(ROUNDS):
            for key, title, fn in [s for s in SCENARIOS if not ONLY or s[0] in ONLY]:
                for p in PROXIES:
                    res = fn(PORTS[p])
                    raw[key][p].append(res)
                    extra = f" ({res['wall_rps']:.0f}/s wall clock)" if "wall_rps" in res else ""
                    print(f"round {r + 1} {key:24} {p:8} {res['rps']:>10.0f} req/s {res['mbps']:>9.1f} MiB/s "
                          f"p99 {res['p99_ms'] or 0:.2f} ms errors {res['errors']}{extra}", flush=True)
        for r in range(ROUNDS if "reload" in ONLY or not ONLY else 0):
            for p in PROXIES:
                res = reload_under_load(p)
                raw["reload_under_load"][p].append(res)
                print(f"round {r + 1} reload_under_load        {p:8} {res['requests']:>8} requests "
                      f"{res['errors']:>6} failed over {RELOADS} reloads", flush=True)
        for p in (PROXIES if not ONLY or "memory" in ONLY else []):
            res = memory(p)
            raw["memory_idle"][p].append(res)
            print(f"memory {p:8} {res['rss_kib'] / 1024:.1f} MiB with {IDLE_CONNS} idle connections "
                  f"({res['per_conn_bytes']:.0f} B/conn, {res['errors']} failed)", flush=True)
    finally:
        stop_all()
    report(raw)


def med(xs, k):
    return statistics.median(x[k] for x in xs)


def report(raw):
    m = machine()
    rows = []
    for key, title, _ in SCENARIOS:
        if not raw[key]["gateway"]:
            continue  # not run (--only)
        metric = "mbps" if key in ("download_1mib", "l4_bulk_100mib") else "rps"
        unit = "MiB/s" if metric == "mbps" else ("handshakes/CPU-s" if key == "tls_handshakes" else "req/s")
        vals = {p: med(raw[key][p], metric) for p in PROXIES}
        p99 = {p: (med(raw[key][p], "p99_ms") if all(x["p99_ms"] is not None for x in raw[key][p]) else None)
               for p in PROXIES}
        errs = {p: sum(x["errors"] for x in raw[key][p]) for p in PROXIES}
        rows.append({"scenario": key, "title": title, "unit": unit, "median": vals, "p99_ms": p99, "errors": errs,
                     "vs_haproxy": vals["gateway"] / vals["haproxy"], "vs_nginx": vals["gateway"] / vals["nginx"]})
    if any(raw["reload_under_load"][p] for p in PROXIES):
        failed = {p: sum(x["errors"] for x in raw["reload_under_load"][p]) for p in PROXIES}
        sent = {p: sum(x["requests"] for x in raw["reload_under_load"][p]) for p in PROXIES}
        rows.append({"scenario": "reload_under_load",
                     "title": f"{RELOADS} config reloads under load, per round (wrk keep-alive -c32 + Connection: close -c8)",
                     "unit": "failed requests (lower is better)", "median": failed, "requests": sent,
                     "vs_haproxy": None, "vs_nginx": None, "errors": failed})
    if not all(raw["memory_idle"][p] for p in PROXIES):
        return write_report(m, rows, raw)
    mem = {p: raw["memory_idle"][p][0]["rss_kib"] / 1024 for p in PROXIES}
    rows.append({"scenario": "memory_idle", "title": f"RSS with {IDLE_CONNS} idle keep-alive connections",
                 "unit": "MiB (lower is better)", "median": mem,
                 "vs_haproxy": mem["gateway"] / mem["haproxy"], "vs_nginx": mem["gateway"] / mem["nginx"],
                 "errors": {p: raw["memory_idle"][p][0]["errors"] for p in PROXIES}})
    write_report(m, rows, raw)


def write_report(m, rows, raw):
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # A partial run (--only) does not replace the full results.
    name = "latest" if not ONLY else "only-" + "-".join(ONLY)
    (RESULTS / f"{name}.json").write_text(json.dumps({"date": stamp, "machine": m, "rows": rows, "raw": raw}, indent=2))
    lines = [f"# Benchmark results ({stamp})", "",
             "Produced by `bench/run`; medians of " + str(m["rounds"]) + f" interleaved rounds of {m['duration_s']} s each.",
             "", "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items() if k not in ("rounds", "duration_s")), "",
             "| scenario | unit | gateway | HAProxy | NGINX | gateway/HAProxy | gateway/NGINX | p99 ms (gw / hap / ngx) | errors (gw/hap/ngx) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        v = r["median"]
        p99 = r.get("p99_ms")
        fmt = lambda x: "—" if x is None else f"{x:.2f}"
        p99s = f"{fmt(p99['gateway'])} / {fmt(p99['haproxy'])} / {fmt(p99['nginx'])}" if p99 else "—"
        e = r["errors"]
        ratio = lambda x: "—" if x is None else f"{x:.2f}×"
        lines.append(f"| {r['title']} | {r['unit']} | {v['gateway']:.1f} | {v['haproxy']:.1f} | {v['nginx']:.1f} | "
                     f"{ratio(r['vs_haproxy'])} | {ratio(r['vs_nginx'])} | {p99s} | {e['gateway']}/{e['haproxy']}/{e['nginx']} |")
    reload_row = next((r for r in rows if r["scenario"] == "reload_under_load"), None)
    if reload_row:
        s = reload_row["requests"]
        lines += ["", f"Reload row: requests sent over all rounds: gateway {s['gateway']}, HAProxy {s['haproxy']}, "
                      f"NGINX {s['nginx']}; the value is the number that failed (socket error, timeout or non-2xx)."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
