#!/usr/bin/env bash
# TLS configuration scan: runs testssl.sh against the gateway's HTTPS listener (the demo
# certificates of examples/certs, default TLS settings) on 127.0.0.1 and fails if it
# finds SSLv2/SSLv3/TLS 1.0/TLS 1.1, a non-AEAD or otherwise weak cipher, a suite
# without forward secrecy, insecure or client-initiated renegotiation, or any TLS
# vulnerability testssl.sh rates MEDIUM or worse.
#
#   tools/tls-scan.sh                  # builds the gateway (debug) and scans it
#   GATEWAY_BIN=path/to/gateway tools/tls-scan.sh
#
# Takes about a minute (the scan itself; plus the build, and ~10 s to install testssl.sh
# the first time). Loopback only. The full report is left in bench/work/tls-scan/
# (scan.log, scan.json). Findings about the demo certificates themselves (self-made CA,
# 2,000-year validity, no OCSP) and about HTTP headers are printed but do not fail the
# scan: they are properties of the certificate and the upstream, not of the gateway's
# TLS configuration. docs/security/tls-termination.md summarises a run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/bench/work/tls-scan
mkdir -p "$OUT"
rm -f "$OUT/scan.json" "$OUT/scan.log"

if ! command -v testssl >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tls-scan: testssl.sh is not installed; run: sudo apt-get install testssl.sh" >&2
        exit 2
    fi
    echo "== installing testssl.sh (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq testssl.sh >/dev/null
fi

BIN=${GATEWAY_BIN:-}
if [ -z "$BIN" ]; then
    echo "== cargo build --bin gateway"
    cargo build --quiet --bin gateway
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/gateway
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "tls-scan: nothing listens on 127.0.0.1:$1" >&2
    return 1
}

# An upstream that answers 200, so the HTTP part of the scan sees a real response.
UP_PORT=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$WORK" "$UP_PORT" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT"

# The listener of examples/tls.yaml, on loopback: two certificates chosen by SNI, the
# default minVersion (1.2) and ALPN (h2, http/1.1).
PORT=$(free_port)
CERTS=$ROOT/examples/certs
cat >"$WORK/gateway.yaml" <<EOF
version: 1
listeners:
  - name: https
    address: 127.0.0.1:$PORT
    tls:
      certificates:
        - cert: $CERTS/example.com.pem
          key: $CERTS/example.com.key
        - cert: $CERTS/api.example.net.pem
          key: $CERTS/api.example.net.key
          serverNames: [api.example.net]
routes:
  - name: site
    cluster: web
clusters:
  - name: web
    endpoints: [{ address: "127.0.0.1:$UP_PORT" }]
EOF
"$BIN" run --config "$WORK/gateway.yaml" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
wait_port "$PORT"

echo "== testssl.sh $(testssl --version 2>/dev/null | grep -o 'testssl *[0-9.]*' | head -1 | tr -s ' ') against 127.0.0.1:$PORT"
start=$(date +%s)
# testssl.sh's exit code counts findings of any kind; the verdict is made below.
testssl --quiet --color 0 --warnings batch --jsonfile "$OUT/scan.json" \
    "127.0.0.1:$PORT" >"$OUT/scan.log" 2>&1 || true
echo "   scan took $(($(date +%s) - start)) s; report: $OUT/scan.log"

python3 - "$OUT/scan.json" <<'EOF'
import json, re, sys

findings = json.load(open(sys.argv[1]))
by_id = {f["id"]: f for f in findings}
bad = []

def need(fid, ok, why):
    f = by_id.get(fid)
    if f is None:
        bad.append(f"{fid}: missing from the scan ({why})")
    elif not ok(f["finding"]):
        bad.append(f"{fid}: {f['finding']} ({why})")

for p in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"]:
    need(p, lambda s: s.startswith("not offered"), "only TLS 1.2 and 1.3 may be offered")
need("TLS1_2", lambda s: s.startswith("offered"), "TLS 1.2 is the default minVersion")
need("TLS1_3", lambda s: s.startswith("offered"), "TLS 1.3 must be offered")
for c in ["NULL", "aNULL", "EXPORT", "LOW", "3DES_IDEA", "AVERAGE"]:
    need("cipherlist_" + c, lambda s: s.startswith("not offered"),
         "AEAD suites only (AVERAGE is CBC)")
fs = "FS" if "FS" in by_id else "PFS"
need(fs, lambda s: s.startswith("offered"), "forward secrecy")

# Every suite the server accepts, one by one: ECDHE/DHE key exchange and an AEAD cipher.
suites = [f for f in findings if re.fullmatch(r"cipher_x[0-9a-f]+", f["id"])]
if not suites:
    bad.append("no cipher suite was enumerated: the scan did not reach the server")
for f in suites:
    fields = f["finding"].split()
    kx, enc = fields[2], next((w for w in fields[3:] if not w.isdigit()), "")
    if kx not in ("ECDH", "DH") or enc not in ("AESGCM", "ChaCha20", "AESCCM"):
        bad.append(f"{f['id']}: {' '.join(fields[:6])} (needs forward secrecy and AEAD)")

# Renegotiation and every TLS vulnerability test: nothing rated MEDIUM or worse.
not_tls = ("cert", "HTTP", "HSTS", "HPKP", "security_headers", "banner", "cookie",
           "DNS_CAA", "OCSP", "clientsimulation", "scanTime", "service", "certs_",
           "certificate_transparency")
for f in findings:
    if f["id"] == "scanProblem":
        bad.append(f"testssl.sh could not finish: {f['finding']}")
    elif f["severity"] in ("MEDIUM", "HIGH", "CRITICAL") and not f["id"].startswith(not_tls):
        bad.append(f"{f['id']}: {f['finding']} (rated {f['severity']})")

print("   protocols:", ", ".join(p for p in ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"]
                                 if by_id.get(p, {}).get("finding", "").startswith("offered")))
print("   suites:   ", ", ".join(f["finding"].split()[1] for f in suites))
for fid in ["secure_renego", "secure_client_renego", fs + "_ECDHE_curves"]:
    if fid in by_id:
        print(f"   {fid}: {by_id[fid]['finding']}")
others = [f for f in findings if f["severity"] in ("MEDIUM", "HIGH", "CRITICAL")
          and f["id"].startswith(not_tls)]
for f in others:
    print(f"   (not a TLS setting) {f['id']}: {f['finding']} [{f['severity']}]")
if bad:
    print("FAIL:")
    for b in bad:
        print("  ", b)
    sys.exit(1)
print("PASS: TLS 1.2/1.3 only, AEAD suites with forward secrecy only, no renegotiation "
      "or TLS vulnerability rated MEDIUM or worse")
EOF
