#!/usr/bin/env bash
# Writes DIST/gateway-VERSION-SHA256SUMS over every release archive of VERSION in DIST, in
# name order, in the format `sha256sum -c` checks (run it from inside DIST).
#
#   tools/release/checksums.sh DIST VERSION
set -euo pipefail
dist=${1:?usage: checksums.sh DIST VERSION}
version=${2:?usage: checksums.sh DIST VERSION}
cd "$dist"
if command -v sha256sum >/dev/null; then sum=(sha256sum); else sum=(shasum -a 256); fi
shopt -s nullglob
export LC_ALL=C # glob order: byte order, the same on every runner
archives=()
for f in "gateway-$version-"*; do
  case "$f" in *.tar.gz | *.zip) archives+=("$f") ;; esac
done
[ "${#archives[@]}" -gt 0 ] || { echo "checksums.sh: no gateway-$version archives in $dist" >&2; exit 1; }
"${sum[@]}" "${archives[@]}" >"gateway-$version-SHA256SUMS.partial"
mv "gateway-$version-SHA256SUMS.partial" "gateway-$version-SHA256SUMS"
