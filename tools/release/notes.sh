#!/usr/bin/env bash
# Release notes for VERSION: its CHANGELOG.md section, then how to verify what was
# published. REPO is owner/name on GitHub (the workflow passes $GITHUB_REPOSITORY).
#
#   tools/release/notes.sh VERSION REPO
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
version=${1:?usage: notes.sh VERSION REPO}
repo=${2:?usage: notes.sh VERSION REPO}
owner=$(tr '[:upper:]' '[:lower:]' <<<"${repo%%/*}")
section=$(awk -v head="## [$version]" '
  index($0, head) == 1 { on = 1; next }
  on && /^## \[/ { exit }
  on { print }
' "$root/CHANGELOG.md")
[ -n "$(tr -d '[:space:]' <<<"$section")" ] || { echo "notes.sh: no CHANGELOG.md section for $version" >&2; exit 1; }
cat <<NOTES
$section

## Verify

\`\`\`sh
# Checksums: every archive of this release is in gateway-$version-SHA256SUMS.
sha256sum --ignore-missing -c gateway-$version-SHA256SUMS

# Provenance: built by this repository's release workflow from tag v$version.
gh attestation verify gateway-$version-x86_64-unknown-linux-musl.tar.gz --repo $repo

# Image: signed keylessly by the same workflow.
cosign verify ghcr.io/$owner/gateway:$version \\
  --certificate-identity-regexp '^https://github.com/$repo/\.github/workflows/release\.yml@refs/tags/v' \\
  --certificate-oidc-issuer https://token.actions.githubusercontent.com
\`\`\`

Install guide: docs/install.md. Versioning policy: docs/versioning.md.
NOTES
