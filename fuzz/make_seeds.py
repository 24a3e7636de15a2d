#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target under fuzz/corpus/<target>/.

Run from anywhere: python3 fuzz/make_seeds.py. It overwrites the seeds it makes and
leaves other files alone (the two OpenSSL-made certificates in corpus/x509/, an RSA one
with a critical SAN and UTCTime and an EC P-384 one without SAN, were made once with
`openssl req -x509` and are committed as they are). The input formats are described in
fuzz/src/checks.rs, one function per target.
"""
import base64
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


# ---- config: the examples, JSON forms, and invalid files with many errors
for f in sorted((ROOT / "examples").glob("*.yaml")):
    write("config", f.name, f.read_bytes())
write("config", "quickstart.json", json.dumps({
    "version": 1,
    "admin": {"address": "127.0.0.1:9901"},
    "listeners": [{"name": "public", "address": "0.0.0.0:8080", "http2": True,
                   "limits": {"maxRequestHeadersSize": "64KiB", "maxRequestBody": 0},
                   "timeouts": {"readHeader": "10s", "idle": "60s"}}],
    "routes": [{"name": "api", "match": {"host": "api.example.com", "pathPrefix": "/v1"},
                "cluster": "api", "retry": {"attempts": 1}},
               {"name": "web", "cluster": "web"}],
    "clusters": [{"name": "api", "endpoints": [{"address": "127.0.0.1:9001", "weight": 3},
                                               {"address": "127.0.0.1:9002"}],
                  "passiveHealth": {"consecutiveFailures": 5, "baseEjectionTime": "30s"}},
                 {"name": "web", "protocol": "http1",
                  "endpoints": [{"address": "localhost:9003"}]}],
}, indent=2))
write("config", "tls.json", json.dumps({
    "version": 1,
    "listeners": [{"name": "https", "address": "127.0.0.1:8443",
                   "tls": {"certificates": [
                       {"cert": "certs/example.com.pem", "key": "certs/example.com.key"},
                       {"cert": "certs/api.example.net.pem", "key": "certs/api.example.net.key",
                        "serverNames": ["api.example.net"]}],
                       "minVersion": "1.3", "alpn": ["http/1.1"]}}],
    "routes": [{"name": "site", "cluster": "web"}],
    "clusters": [{"name": "web", "endpoints": [{"address": "127.0.0.1:9003"}],
                  "security": {"mode": "tls", "caBundle": "certs/ca.pem",
                               "serverName": "example.com"}}],
}))
write("config", "many-errors.yaml", """version: 2
workers: -1
bogus: true
listeners:
  - name: "bad name!"
    address: 999.0.0.1:80
    maxConnections: zero
    limits: { maxRequestHeadersSize: 64 parsecs }
    timeouts: { readHeader: 5, idle: 5 parsecs }
    tls:
      certificates:
        - cert: certs/missing.pem
          key: certs/example.com.key
  - name: public
    address: 127.0.0.1:8080
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: r
    match: { host: "exa mple.com", pathPrefix: "v1" }
    cluster: nowhere
    cluster2: x
  - name: r
    redirect: { code: 300 }
    directResponse: { status: 99 }
clusters:
  - name: c
    protocol: http3
    endpoints:
      - address: nohost
        weight: 0
      - { address: "127.0.0.1:1", weight: 1001 }
    passiveHealth: { maxEjectedPercent: 150 }
l4:
  listeners:
    - { name: pg, address: 127.0.0.1:8080, cluster: c, allow: [10.0.0.0/33] }
""")
write("config", "syntax-error.yaml", "listeners:\n  - name: a\n   address: [\n")
write("config", "syntax-error.json", '{"version": 1, "listeners": [ {"name": "a",}\n')
write("config", "anchors.yaml", """version: 1
x-defaults: &ep { address: 127.0.0.1:9001, weight: 2 }
listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: r, cluster: c }]
clusters: [{ name: c, endpoints: [*ep, *ep] }]
""")
write("config", "empty.yaml", "")

# ---- sniff: mode byte (even: raw client bytes; odd: a pipeline description), then data
RAW = {
    "get": b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
    "post-cl": b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world",
    "chunked": b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
               b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
    "pipelined": b"\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"
                 b"HEAD /c HTTP/1.0\n\n",
    "smuggle-cl-te": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "smuggle-te-cl": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
    "fragment": b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n",
    "body-looks-like-head": b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\nGET /#x HTTP/1.1\r\nA: b\r\n\r\n1234",
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    "upgrade": b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x85#frag",
    "connect": b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\nGET /#x HTTP/1.1\r\n\r\n",
    "partial": b"GET / HTTP/1.1\r\nHost: h\r\nX-Half: ",
}
for name, data in RAW.items():
    write("sniff", name, b"\x00" + data)
    write("sniff", name + "-split", b"\x06" + data)
# Pipelines: each request is 4 bytes (method/target, framing, body length, extras) and
# then its body bytes.
write("sniff", "pipeline-mixed", b"\x01" + bytes([0, 0, 0, 0]) + bytes([1, 1, 5, 0x10]) + b"hello"
      + bytes([2, 2, 9, 1]) + b"GET /#x H" + bytes([3, 3, 4, 0x22]) + b"abcd")
write("sniff", "pipeline-smuggle", b"\x03" + bytes([1, 1, 3, 0]) + b"abc" + bytes([1, 4, 2, 0]) + b"0\r")
write("sniff", "pipeline-fragment", b"\x05" + bytes([0, 0, 0, 0, 16, 0, 0, 0]))
write("sniff", "pipeline-h2", b"\x07" + bytes([1, 1, 2, 0]) + b"ab" + bytes([0, 0, 5, 15])
      + b"\x00\x00\x00\x04\x00")
write("sniff", "pipeline-upgrade", b"\x09" + bytes([0, 5, 4, 0]) + b"\x81\x80ab" + bytes([16, 0, 0, 0]))

# ---- path: request-targets as a client sends them
for i, p in enumerate([
    "/", "/index.html", "/a/../b", "/../../etc/passwd", "/%2e%2e/%2E%2e/x",
    "/a/./b/.", "/a/b/..", "//double//slash/../x", "/%7Euser/~x", "/a%2Fb%5cc?x=%2e",
    "/%252e%252e/", "/..%2f..%2f", "/%C3%A9t%C3%A9?q=%C3%A9", "/a?b#c", "/v1/users/7?page=2",
    "/.hidden/.%2e/x", "/a%00b", "/a%zz", "/%2", "/a b", "*", "http://h/x/../y",
    "/grpc.health.v1.Health/Check", "/%41%42%43/%5F%2D%2E%7E",
]):
    write("path", f"target-{i:02}", p)

# ---- router: text tables (see checks::router)
write("router", "spec-example", """R api.example.com /v1
R *.example.com /
R - /
R - /v1/
R api.example.com /v1/admin
Q API.example.com:443 /v1/users
Q api.example.com /v1/admin/x
Q api.example.com /v10
Q www.example.com /v1/x
Q a.b.example.com /v1/x
Q - /v1
Q - /v1/
Q example.com. /x
""")
big = "".join(f"R - /bulk{i}\n" for i in range(40)) + "".join(
    f"R *.example.com /w{i}/\n" for i in range(20))
big += "R - /\nR api.example.com /bulk7\nR - /bulk7\n"
big += "".join(f"Q {h} {p}\n" for h in ["-", "x.example.com", "api.example.com", "API.EXAMPLE.COM:80"]
               for p in ["/bulk7/x", "/bulk7x", "/w3/", "/w3", "/w3/a/b", "/", "/bulk39"])
write("router", "large-groups", big)
write("router", "fallback", """R a.example.com /only
R *.example.com /wild
R - /any
Q a.example.com /wild/x
Q a.example.com /any
Q a.example.com /only/
Q b.a.example.com /wild
Q [::1]:8080 /any
Q 127.0.0.1:8080 /any
Q a.example.com:notaport /only
""")
write("router", "no-default", """R *.example.com /api/
R x.example.com /api
Q x.example.com /api/v1
Q x.example.com /apix
Q y.example.com /api
Q - /api/
""")

# ---- x509: DER from the demo certificates
for f in sorted((ROOT / "examples" / "certs").glob("*.pem")):
    text = f.read_text()
    b64 = "".join(l for l in text.split("-----BEGIN CERTIFICATE-----")[1]
                  .split("-----END CERTIFICATE-----")[0].split())
    write("x509", f.stem + ".der", base64.b64decode(b64))


# ---- h2guard: records (tag, length, bytes): tag%4 0/1 client read, 2 gateway write,
# 3 gateway vectored write
def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def records(ops):
    out = b""
    for tag, data in ops:
        while True:
            part, data = data[:255], data[255:]
            out += bytes([tag, len(part)]) + part
            if not data:
                break
    return out


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, HEADERS, DATA, PING, RST, PRIORITY, WINDOW = 4, 1, 0, 6, 3, 2, 8
get = bytes([0x82, 0x86, 0x84, 0x01, 0x01]) + b"h"
client_hello = PREFACE + frame(SETTINGS, 0, 0, b"\x00\x03\x00\x00\x00\x64") + frame(WINDOW, 0, 0, b"\x00\x0f\x00\x01")
server_hello = frame(SETTINGS, 0, 0, b"\x00\x03\x00\x00\x00\x64") + frame(SETTINGS, 1, 0)
write("h2guard", "session", records([
    (0, client_hello), (2, server_hello), (0, frame(SETTINGS, 1, 0)),
    (0, frame(HEADERS, 0x5, 1, get)), (0x12, frame(HEADERS, 0x4, 1, b"\x88") + frame(DATA, 1, 1, b"hello")),
    (0, frame(HEADERS, 0x4, 3, get) + frame(DATA, 0, 3, b"body") + frame(DATA, 1, 3)),
    (3 | (7 << 2), frame(DATA, 1, 3, b"answer")), (0, frame(PING, 0, 0, b"\x00" * 8)),
    (2, frame(PING, 1, 0, b"\x00" * 8)), (0, frame(RST, 0, 3, b"\x00\x00\x00\x08")),
]))
write("h2guard", "http1", records([(0, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), (2, b"HTTP/1.1 200 OK\r\n\r\n")]))
write("h2guard", "bad-preface", records([(0, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + frame(PING, 0, 0, b"\x00" * 8))]))
rapid = b"".join(frame(HEADERS, 0x5, 2 * i + 1, get) + frame(RST, 0, 2 * i + 1, b"\x00\x00\x00\x08")
                 for i in range(101))
write("h2guard", "rapid-reset", records([(0, client_hello), (2, server_hello)] + [(1, rapid)]))
flood = b"".join(frame(SETTINGS if i % 3 else PRIORITY, 0, 0 if i % 3 else 1,
                       b"" if i % 3 else b"\x00\x00\x00\x00\x10") for i in range(258))
write("h2guard", "control-flood", records([(0, client_hello), (0x2 | (5 << 2), server_hello)]
                                          + [(0, flood[:1000]), (1, flood[1000:])]))
# A flood cut short by the gateway's own response frames, then resumed: no trip.
pings = b"".join(frame(PING, 0, 0, b"\x00" * 8) for _ in range(200))
write("h2guard", "pings-with-traffic", records([
    (0, client_hello), (0, frame(HEADERS, 0x5, 1, get)), (0, pings),
    (2, frame(HEADERS, 0x4, 1, b"\x88")), (0, pings)]))
# The trip lands while the gateway is half-way through a frame: no GOAWAY then.
write("h2guard", "trip-mid-frame", records([
    (0, client_hello), (2, frame(DATA, 0, 1, b"x" * 40)[:20]), (0, flood)]))
