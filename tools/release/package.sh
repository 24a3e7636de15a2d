#!/usr/bin/env bash
# Release archives: builds the release binary and packs it, reproducibly, into dist/.
#
#   tools/release/package.sh [--target TRIPLE] [--no-build | --binary PATH] [--dist DIR]
#
# Writes dist/gateway-<version>-<target>.tar.gz (.zip for Windows targets), one top folder
# gateway-<version>-<target>/ with gateway, LICENSE, README.md, CHANGELOG.md, examples/,
# then rewrites dist/gateway-<version>-SHA256SUMS over every archive of that version in
# dist/. The same inputs pack to the same bytes: sorted entries, every mtime set to
# SOURCE_DATE_EPOCH (default: the commit time of HEAD), owner and group 0, fixed modes,
# gzip -n. The release workflow runs this same script on every platform it builds.
#
#   --target TRIPLE  build and name for TRIPLE (default: the host's triple)
#   --no-build       pack the binary cargo already built for that target
#   --binary PATH    pack this binary (named as --target says) instead of building
#   --dist DIR       where the archive and SHA256SUMS go (default: dist/)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here=$(cd "$(dirname "$0")" && pwd)
target=""
build=1
binary=""
dist="$root/dist"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=${2:?--target needs a triple}; shift 2 ;;
    --no-build) build=0; shift ;;
    --binary) binary=${2:?--binary needs a path}; build=0; shift 2 ;;
    --dist) dist=${2:?--dist needs a directory}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "package.sh: unknown argument $1" >&2; usage ;;
  esac
done

cd "$root"
pkgid=$(cargo pkgid --quiet)
version=${pkgid##*[#@]}
host=$(rustc -vV | sed -n 's/^host: //p')
triple=${target:-$host}
case "$triple" in
  *-windows-*) exe=gateway.exe; format=zip ;;
  *) exe=gateway; format=tar.gz ;;
esac

if [ "$build" = 1 ]; then
  if [ -n "$target" ]; then
    cargo build --release --locked --target "$target"
  else
    cargo build --release --locked
  fi
fi
if [ -z "$binary" ]; then
  out=${CARGO_TARGET_DIR:-$root/target}
  if [ -n "$target" ]; then out="$out/$target"; fi
  binary="$out/release/$exe"
fi
[ -f "$binary" ] || { echo "package.sh: no binary at $binary (build it, or drop --no-build)" >&2; exit 1; }

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null) || {
    echo "package.sh: not a git checkout: set SOURCE_DATE_EPOCH (seconds) for the archive mtimes" >&2
    exit 1
  }
fi
export SOURCE_DATE_EPOCH

name="gateway-$version-$triple"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/$name"
cp "$binary" "$stage/$name/$exe"
cp LICENSE README.md CHANGELOG.md "$stage/$name/"
cp -R examples "$stage/$name/examples"
# Modes from the files' kind, not from the umask or the checkout.
chmod -R u=rwX,go=rX "$stage/$name"
chmod 0755 "$stage/$name/$exe"

mkdir -p "$dist"
archive="$dist/$name.$format"
if [ "$format" = zip ]; then
  py=$(command -v python3 || command -v python) || { echo "package.sh: python is needed for .zip" >&2; exit 1; }
  "$py" "$here/zip.py" "$stage" "$name" "$archive"
else
  tar=$(command -v gtar || command -v tar)
  "$tar" --version 2>/dev/null | grep -q 'GNU tar' || {
    echo "package.sh: GNU tar is needed (macOS: brew install gnu-tar)" >&2
    exit 1
  }
  "$tar" -C "$stage" --sort=name --format=gnu --mtime="@$SOURCE_DATE_EPOCH" \
    --owner=0 --group=0 --numeric-owner -cf - "$name" | gzip -9n >"$archive.partial"
  mv "$archive.partial" "$archive"
fi

"$here/checksums.sh" "$dist" "$version"
echo "package.sh: $archive"
