#!/usr/bin/env bash
# Checks an image built by image.sh the way a container runtime sees it: its config
# (user, entrypoint, labels), its root filesystem, and a run of its process (args, env
# and user from the unpacked runtime spec) from that filesystem mounted read-only, as
# uid 65532 with no new privileges, on the image's own config file, until /readyz
# answers 200; then SIGTERM must end it with exit 0.
#
#   tools/release/check-image.sh OCI_ARCHIVE VERSION REVISION COMMIT
#
# Needs root (mount and network namespaces), skopeo, umoci, jq, curl, unshare, setpriv.
# The run has its own network namespace, so the image's fixed ports clash with nothing.
set -euo pipefail

usage="usage: check-image.sh OCI_ARCHIVE VERSION REVISION COMMIT"
oci=${1:?$usage}
version=${2:?$usage}
revision=${3:?$usage}
commit=${4:?$usage}

fail() { echo "check-image: FAIL: $*" >&2; exit 1; }
ok() { echo "check-image: ok: $*"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- the image config ------------------------------------------------------------------
cfg=$(skopeo inspect --config "oci-archive:$oci")
jqv() { jq -r "$1" <<<"$cfg"; }
[ "$(jqv .config.User)" = "65532:65532" ] || fail "User is $(jqv .config.User), not 65532:65532"
[ "$(jqv '.config.Entrypoint | tojson')" = '["/usr/local/bin/gateway"]' ] ||
  fail "Entrypoint is not exec-form [\"/usr/local/bin/gateway\"]: $(jqv '.config.Entrypoint | tojson')"
[ "$(jqv '.config.Cmd | tojson')" = '["run","--config","/etc/gateway/gateway.yaml"]' ] ||
  fail "Cmd: $(jqv '.config.Cmd | tojson')"
label() { jqv ".config.Labels[\"org.opencontainers.image.$1\"] // \"\""; }
[ "$(label version)" = "$version" ] || fail "label version=$(label version), want $version"
[ "$(label revision)" = "$revision" ] || fail "label revision=$(label revision), want $revision"
[ "$(label licenses)" = "Apache-2.0" ] || fail "label licenses=$(label licenses)"
for l in title description source created; do
  [ -n "$(label "$l")" ] || fail "label org.opencontainers.image.$l is missing"
done
[ "$(label created)" = "$(jqv .created)" ] ||
  fail "label created $(label created) is not the image's created $(jqv .created)"
ok "config: user 65532:65532, exec-form entrypoint, org.opencontainers.image.* labels"

# --- the root filesystem, as a runtime unpacks it ---------------------------------------
skopeo copy --quiet "oci-archive:$oci" "oci:$work/layout:gateway"
umoci unpack --image "$work/layout:gateway" "$work/bundle" >/dev/null
fs="$work/bundle/rootfs"
spec="$work/bundle/config.json"
grep -q '^nonroot:x:65532:65532:' "$fs/etc/passwd" || fail "/etc/passwd has no user 65532"
grep -q '^nonroot:x:65532:' "$fs/etc/group" || fail "/etc/group has no group 65532"
[ "$(stat -c %a "$fs/tmp")" = 1777 ] || fail "/tmp is mode $(stat -c %a "$fs/tmp"), not 1777"
grep -q 'BEGIN CERTIFICATE' "$fs/etc/ssl/certs/ca-certificates.crt" || fail "no CA certificates"
[ -f "$fs/etc/gateway/gateway.yaml" ] || fail "no /etc/gateway/gateway.yaml"
[ ! -e "$fs/bin/sh" ] || fail "the image has a shell"
ok "rootfs: passwd/group 65532, /tmp 1777, CA bundle, /etc/gateway/gateway.yaml, no shell"

# --- a run: read-only root, uid 65532, the image's own process spec ---------------------
uid=$(jq -r .process.user.uid "$spec")
gid=$(jq -r .process.user.gid "$spec")
[ "$uid:$gid" = "65532:65532" ] || fail "runtime spec user is $uid:$gid"
[ "$(jq -r .process.cwd "$spec")" = / ] || fail "runtime spec cwd is not /"
mapfile -t args < <(jq -r '.process.args[]' "$spec")
mapfile -t envs < <(jq -r '.process.env[]' "$spec")

out="$work/out"
mkdir "$out"
set +e
unshare --mount --net --fork bash -s -- "$fs" "$uid" "$gid" "$out" "${#envs[@]}" \
  "${envs[@]}" "${args[@]}" <<'NS'
set -euo pipefail
fs=$1 uid=$2 gid=$3 out=$4 nenv=$5
shift 5
envs=("${@:1:$nenv}")
shift "$nenv"
args=("$@")
die() { echo "$*" >"$out/fail"; exit 1; }
ip link set lo up
mount --bind "$fs" "$fs"
mount -o remount,bind,ro "$fs"
if touch "$fs/probe" 2>/dev/null || touch "$fs/tmp/probe" 2>/dev/null; then
  die "the root filesystem is writable"
fi
# As a runtime does: no new privileges, chroot into the rootfs (cwd /), then the user.
env -i "${envs[@]}" setpriv --no-new-privs \
  chroot --userspec="$uid:$gid" --groups="$gid" "$fs" "${args[@]}" \
  >"$out/stdout" 2>"$out/stderr" &
pid=$!
deadline=$((SECONDS + 30))
code=000
until [ "$code" = 200 ]; do
  kill -0 "$pid" 2>/dev/null || die "the gateway exited before /readyz answered 200"
  if [ "$SECONDS" -ge "$deadline" ]; then kill "$pid"; die "/readyz never answered 200 (last: $code)"; fi
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 http://127.0.0.1:9901/readyz || true)
done
grep -E '^(Uid|Gid|CapEff|NoNewPrivs):' "/proc/$pid/status" >"$out/proc"
curl -s --max-time 5 http://127.0.0.1:9901/status >"$out/status"
curl -s --max-time 5 -o "$out/proxy" -w '%{http_code}' http://127.0.0.1:8080/ >"$out/proxy.code" || true
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
echo "$rc" >"$out/exit"
NS
ns=$?
set -e
if [ -f "$out/fail" ] || [ "$ns" != 0 ]; then
  echo "--- gateway stderr" >&2
  cat "$out/stderr" >&2 2>/dev/null || true
  fail "$(cat "$out/fail" 2>/dev/null || echo "the namespace run failed ($ns)")"
fi
grep -Eq '^Uid:\s+65532\s+65532\s+65532\s+65532$' "$out/proc" || fail "not uid 65532: $(cat "$out/proc")"
grep -Eq '^Gid:\s+65532\s+65532\s+65532\s+65532$' "$out/proc" || fail "not gid 65532: $(cat "$out/proc")"
grep -Eq '^CapEff:\s+0+$' "$out/proc" || fail "has capabilities: $(cat "$out/proc")"
grep -Eq '^NoNewPrivs:\s+1$' "$out/proc" || fail "no_new_privs is not set"
[ "$(jq -r .version "$out/status")" = "$version" ] || fail "/status version: $(cat "$out/status")"
[ "$(jq -r .commit "$out/status")" = "$commit" ] || fail "/status commit: $(jq -r .commit "$out/status"), want $commit"
[ "$(jq -r .configPath "$out/status")" = /etc/gateway/gateway.yaml ] || fail "/status configPath"
# No upstream exists in the namespace: the gateway itself must answer, with its envelope.
[ "$(jq -r '.error.status' "$out/proxy" 2>/dev/null)" = "$(cat "$out/proxy.code")" ] ||
  fail "the listener on 8080 did not answer with the gateway's error envelope: $(cat "$out/proxy.code") $(cat "$out/proxy")"
[ "$(cat "$out/exit")" = 0 ] || fail "exit status after SIGTERM: $(cat "$out/exit")"
ok "run: read-only root, uid/gid 65532, no capabilities, no_new_privs; /readyz 200;" \
  "/status $version ($commit); :8080 answered $(cat "$out/proxy.code") $(jq -r .error.code "$out/proxy"); SIGTERM exit 0"
