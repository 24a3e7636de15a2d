#!/usr/bin/env bash
# Refuses a release whose pieces disagree: the tag, Cargo.toml's version, a dated
# CHANGELOG.md section, and the image tag in deploy/kubernetes/kustomization.yaml.
#
#   tools/release/check-tag.sh vX.Y.Z
#
# Prints `version=X.Y.Z` and `stable=true|false` (false for a pre-release such as
# 1.0.0-rc.1), the lines the release workflow appends to $GITHUB_OUTPUT.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
tag=${1:?usage: check-tag.sh vX.Y.Z}
fail() { echo "check-tag: $*" >&2; exit 1; }

[[ "$tag" =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || fail "tag $tag is not vMAJOR.MINOR.PATCH[-PRE]"
version=${tag#v}
pkgid=$(cargo pkgid --quiet)
cargo_version=${pkgid##*[#@]}
[ "$version" = "$cargo_version" ] || fail "tag $tag but Cargo.toml says $cargo_version"
grep -Eq "^## \[${version//./\\.}\] - [0-9]{4}-[0-9]{2}-[0-9]{2}$" CHANGELOG.md ||
  fail "CHANGELOG.md has no '## [$version] - YYYY-MM-DD' section"
k8s_tag=$(sed -n 's/^ *newTag: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' deploy/kubernetes/kustomization.yaml)
[ "$k8s_tag" = "$version" ] || fail "deploy/kubernetes/kustomization.yaml pins image tag $k8s_tag, not $version"
echo "version=$version"
if [[ "$version" == *-* ]]; then echo "stable=false"; else echo "stable=true"; fi
