#!/usr/bin/env bash
# OCI image from a packaged Linux binary, without a container daemon (buildah, chroot
# isolation, vfs storage in a temporary directory).
#
#   tools/release/image.sh [--target TRIPLE] [--dist DIR] [--output FILE] [--source URL]
#
# Reads dist/gateway-<version>-<target>.tar.gz (run package.sh first), builds
# deploy/container/Containerfile, and writes dist/gateway-<version>-oci.tar, an
# oci-archive tagged gateway:<version> (load it with `skopeo copy oci-archive:FILE ...`
# or `podman load -i FILE`).
#
#   --target TRIPLE  which archive (default: the host's triple); sets the image's arch
#   --dist DIR       where the archives are (default: dist/)
#   --output FILE    the oci-archive to write (default: DIST/gateway-<version>-oci.tar)
#   --source URL     org.opencontainers.image.source (default: $GATEWAY_SOURCE_URL, else
#                    the git remote `origin`, else "unknown")
#
# Labels: version from Cargo.toml, revision = the full commit (git, else
# $GATEWAY_BUILD_COMMIT), created = SOURCE_DATE_EPOCH (default: the commit time), which
# is also every file's mtime in the image (buildah --timestamp).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
target=""
dist="$root/dist"
output=""
source_url=${GATEWAY_SOURCE_URL:-}

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=${2:?--target needs a triple}; shift 2 ;;
    --dist) dist=${2:?--dist needs a directory}; shift 2 ;;
    --output) output=${2:?--output needs a file}; shift 2 ;;
    --source) source_url=${2:?--source needs a URL}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "image.sh: unknown argument $1" >&2; usage ;;
  esac
done
command -v buildah >/dev/null || { echo "image.sh: buildah is needed (apt-get install buildah)" >&2; exit 1; }

cd "$root"
pkgid=$(cargo pkgid --quiet)
version=${pkgid##*[#@]}
host=$(rustc -vV | sed -n 's/^host: //p')
target=${target:-$host}
case "$target" in
  x86_64-*-linux-*) arch=amd64 ;;
  aarch64-*-linux-*) arch=arm64 ;;
  *) echo "image.sh: no image for $target (Linux x86_64 or aarch64 only)" >&2; exit 1 ;;
esac
archive="$dist/gateway-$version-$target.tar.gz"
[ -f "$archive" ] || { echo "image.sh: $archive is missing: run tools/release/package.sh first" >&2; exit 1; }
output=${output:-$dist/gateway-$version-oci.tar}

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null) || {
    echo "image.sh: not a git checkout: set SOURCE_DATE_EPOCH" >&2
    exit 1
  }
fi
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
revision=$(git rev-parse HEAD 2>/dev/null || echo "${GATEWAY_BUILD_COMMIT:-unknown}")
if [ -z "$source_url" ]; then
  source_url=$(git remote get-url origin 2>/dev/null || echo unknown)
fi

work=$(mktemp -d)
cleanup() {
  # vfs layers are plain directories that buildah may have made read-only.
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ctx="$work/context"
fs="$ctx/rootfs"
mkdir -p "$fs/etc/gateway" "$fs/etc/ssl/certs" "$fs/tmp"
tar -xzf "$archive" -C "$work" "gateway-$version-$target/gateway"
mv "$work/gateway-$version-$target/gateway" "$ctx/gateway"

cat >"$fs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin
PASSWD
cat >"$fs/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
# glibc reads this for host names: /etc/hosts first (as Kubernetes writes it), then DNS.
echo 'hosts: files dns' >"$fs/etc/nsswitch.conf"
bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$bundle" ] || { echo "image.sh: $bundle is missing (apt-get install ca-certificates)" >&2; exit 1; }
cp "$bundle" "$fs/etc/ssl/certs/ca-certificates.crt"
cp deploy/container/gateway.yaml "$fs/etc/gateway/gateway.yaml"

# A glibc binary needs its loader and libraries: copy the ones it links, from this
# machine, at the paths it looks for them. Only possible for this machine's arch.
if readelf -l "$ctx/gateway" | grep -q 'program interpreter'; then
  [ "$target" = "$host" ] || {
    echo "image.sh: $target is dynamically linked and not this machine's: use a *-linux-musl target" >&2
    exit 1
  }
  ldd "$ctx/gateway" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}' | while read -r lib; do
    mkdir -p "$fs$(dirname "$lib")"
    cp -L "$lib" "$fs$lib"
  done
fi
chmod -R u=rwX,go=rX "$fs"
chmod 1777 "$fs/tmp"
chmod 0755 "$ctx/gateway"

store="$work/storage"
b=(buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs)
tag="localhost/gateway:$version"
"${b[@]}" build --quiet --isolation chroot --timestamp "$SOURCE_DATE_EPOCH" \
  --os linux --arch "$arch" \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  --build-arg "CREATED=$created" --build-arg "SOURCE=$source_url" \
  -f deploy/container/Containerfile -t "$tag" "$ctx" >/dev/null
mkdir -p "$(dirname "$output")"
rm -f "$output"
"${b[@]}" push --quiet "$tag" "oci-archive:$output:gateway:$version"
echo "image.sh: $output (gateway:$version, linux/$arch)"
