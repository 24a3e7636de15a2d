"""Checks what actionlint cannot know about .github/workflows: that the release workflow
does what docs/release.md promises, in the right order.

    python3 check-workflows.py [WORKFLOWS_DIR]

- ci.yml runs .ci/run on pull requests;
- release.yml runs on v* tags only; the tag check comes first and everything needs it;
- the build matrix covers exactly the platforms of docs/install.md, each through
  tools/release/package.sh, with a provenance attestation;
- the image is built from the musl archives, pushed with X.Y.Z, X.Y, latest and
  sha-<commit> tags, signed with cosign and attested;
- the release is published only after every archive, the SBOM and the image, with one
  SHA256SUMS and notes from CHANGELOG.md;
- only the jobs that need them may write (contents, packages, id-token, attestations).
"""

import os
import sys

import yaml

TARGETS = {
    "x86_64-unknown-linux-gnu",
    "aarch64-unknown-linux-gnu",
    "x86_64-unknown-linux-musl",
    "aarch64-unknown-linux-musl",
    "x86_64-apple-darwin",
    "aarch64-apple-darwin",
    "x86_64-pc-windows-msvc",
}
WRITERS = {
    "build": {"id-token", "attestations"},
    "image": {"packages", "id-token", "attestations"},
    "publish": {"contents", "id-token", "attestations"},
}


def load(path):
    with open(path) as f:
        doc = yaml.safe_load(f)
    # YAML 1.1 reads the key `on` as the boolean true.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def needs(job):
    n = job.get("needs", [])
    return {n} if isinstance(n, str) else set(n)


def ancestors(jobs, name):
    seen, todo = set(), list(needs(jobs[name]))
    while todo:
        j = todo.pop()
        if j not in seen:
            seen.add(j)
            todo.extend(needs(jobs[j]))
    return seen


def text(job):
    """Every run script and action reference of a job, to look for what it does."""
    parts = []
    for step in job.get("steps", []):
        parts.append(step.get("run", ""))
        parts.append(step.get("uses", ""))
        parts.extend(str(v) for v in (step.get("with") or {}).values())
    return "\n".join(parts)


def main() -> int:
    d = sys.argv[1] if len(sys.argv) > 1 else ".github/workflows"
    errors = []
    err = errors.append

    ci = load(os.path.join(d, "ci.yml"))
    if "pull_request" not in (ci["on"] or {}):
        err("ci.yml does not run on pull_request")
    if not any(".ci/run" in text(j) for j in ci["jobs"].values()):
        err("ci.yml does not run .ci/run")

    rel = load(os.path.join(d, "release.yml"))
    on = rel["on"] or {}
    if set(on) != {"push"} or on["push"].get("tags") != ["v*"] or "branches" in on["push"]:
        err(f"release.yml must run on pushed v* tags only, runs on {on}")
    jobs = rel["jobs"]
    for name in ("version", "build", "sbom", "image", "publish"):
        if name not in jobs:
            err(f"release.yml has no job {name}")
    if errors:
        return report(errors)

    if "tools/release/check-tag.sh" not in text(jobs["version"]):
        err("the version job does not run check-tag.sh")
    for name in jobs:
        if name != "version" and "version" not in ancestors(jobs, name):
            err(f"job {name} does not wait for the tag check")

    build = jobs["build"]
    got = {e["target"] for e in build["strategy"]["matrix"]["include"]}
    if got != TARGETS:
        err(f"build matrix targets differ: missing {TARGETS - got}, extra {got - TARGETS}")
    if "tools/release/package.sh" not in text(build):
        err("the build job does not run package.sh")
    if "actions/attest-build-provenance" not in text(build):
        err("the build job does not attest its archives")

    image = jobs["image"]
    t = text(image)
    if "build" not in needs(image) or "archive-*-linux-musl" not in t:
        err("the image is not built from the musl archives")
    for want in ("tools/release/image.sh", "tools/release/check-image.sh", "ghcr.io/",
                 '"$VERSION"', '"${VERSION%.*}" latest', "sha-${GITHUB_SHA::12}",
                 "cosign sign", "actions/attest-build-provenance"):
        if want not in t:
            err(f"the image job lacks {want!r}")
    if '[ "$STABLE" = true ]; then tags+=("${VERSION%.*}" latest)' not in t:
        err("X.Y and latest are not limited to stable versions")

    publish = jobs["publish"]
    if ancestors(jobs, "publish") != set(jobs) - {"publish"}:
        err("publish does not wait for every other job")
    t = text(publish)
    for want in ("tools/release/checksums.sh", "sha256sum -c", "tools/release/notes.sh",
                 "gh release create", "actions/attest-sbom"):
        if want not in t:
            err(f"the publish job lacks {want!r}")
    if "cargo cyclonedx" not in text(jobs["sbom"]):
        err("the sbom job does not run cargo cyclonedx")

    top = rel.get("permissions") or {}
    if any(v != "read" for v in top.values()):
        err(f"release.yml's default permissions must be read-only: {top}")
    for name, job in jobs.items():
        perms = job.get("permissions") or {}
        writes = {k for k, v in perms.items() if v == "write"}
        allowed = WRITERS.get(name, set())
        if writes - allowed:
            err(f"job {name} may write {sorted(writes - allowed)}")
        if writes != allowed:
            err(f"job {name} lacks write access to {sorted(allowed - writes)}")

    if errors:
        return report(errors)
    print(f"check-workflows: ok: ci.yml; release.yml jobs {' -> '.join(order(jobs))}")
    return 0


def order(jobs):
    """Jobs in an order that respects `needs`, for the summary line."""
    done = []
    while len(done) < len(jobs):
        for name in jobs:
            if name not in done and needs(jobs[name]) <= set(done):
                done.append(name)
                break
    return done


def report(errors) -> int:
    print("\n".join(f"check-workflows: {e}" for e in errors), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
