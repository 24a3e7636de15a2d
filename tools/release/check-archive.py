"""Checks one release archive from package.sh: its layout and the metadata that makes it
reproducible, and (with --run) what the packaged binary says about itself.

    python3 check-archive.py ARCHIVE --version V --target T [--epoch S] [--run [--commit C]]

Layout: one top folder gateway-V-T/ holding gateway (gateway.exe on Windows), LICENSE,
README.md, CHANGELOG.md and examples/. Metadata: entries in sorted order, owner and
group 0, one mtime (--epoch, when given) and modes 0755/0644 only. --run extracts the
binary and compares `gateway version --json` with V, T and C (commit), and checks that
`gateway --version` prints the same. Used by .ci/run and by the release workflow on
every runner that can execute its own build.
"""

import argparse
import calendar
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile


def entries(path):
    """(name, mode, uid, gid, mtime, is_dir) per entry, in archive order."""
    if path.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            out = []
            for i in z.infolist():
                mode = (i.external_attr >> 16) & 0o7777
                mtime = calendar.timegm(i.date_time + (0, 0, -1))
                out.append((i.filename.rstrip("/"), mode, 0, 0, mtime, i.is_dir()))
            return out
    with tarfile.open(path, "r:gz") as t:
        return [(m.name, m.mode, m.uid, m.gid, m.mtime, m.isdir()) for m in t.getmembers()]


def report(errors) -> int:
    shown = errors[:10] + ([f"... and {len(errors) - 10} more"] if len(errors) > 10 else [])
    print("\n".join(f"check-archive: {e}" for e in shown), file=sys.stderr)
    return 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("archive")
    ap.add_argument("--version", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--epoch", type=int)
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--commit")
    a = ap.parse_args()

    errors = []
    top = f"gateway-{a.version}-{a.target}"
    windows = "-windows-" in a.target
    exe = "gateway.exe" if windows else "gateway"
    want_name = top + (".zip" if windows else ".tar.gz")
    if os.path.basename(a.archive) != want_name:
        errors.append(f"archive is named {os.path.basename(a.archive)}, want {want_name}")

    es = entries(a.archive)
    names = [e[0] for e in es]
    if names != sorted(names):
        errors.append("entries are not in sorted order")
    outside = [n for n in names if n != top and not n.startswith(top + "/")]
    if outside:
        errors.append(f"entries outside {top}/: {outside[:5]}")
    for f in (exe, "LICENSE", "README.md", "CHANGELOG.md", "examples/quickstart.yaml"):
        if f"{top}/{f}" not in names:
            errors.append(f"{top}/{f} is missing")
    for name, mode, uid, gid, mtime, is_dir in es:
        if (uid, gid) != (0, 0):
            errors.append(f"{name}: owner {uid}:{gid}, want 0:0")
        want = 0o755 if is_dir or name == f"{top}/{exe}" else 0o644
        if mode != want:
            errors.append(f"{name}: mode {mode:o}, want {want:o}")
        # zip keeps seconds in steps of 2 (and nothing before 1980); zip.py writes UTC.
        if a.epoch is not None and abs(mtime - max(a.epoch, 315532800)) > 1:
            errors.append(f"{name}: mtime {mtime}, want {a.epoch}")
    if errors:
        return report(errors)

    ran = ""
    if a.run:
        with tempfile.TemporaryDirectory() as d:
            binary = os.path.join(d, exe)
            member = f"{top}/{exe}"
            if windows:
                with zipfile.ZipFile(a.archive) as z, open(binary, "wb") as out:
                    out.write(z.read(member))
            else:
                with tarfile.open(a.archive, "r:gz") as t:
                    f = t.extractfile(member)
                    assert f is not None
                    with open(binary, "wb") as out:
                        out.write(f.read())
            os.chmod(binary, 0o755)
            got = json.loads(subprocess.run([binary, "version", "--json"], check=True,
                                            capture_output=True, text=True).stdout)
            want = {"version": a.version, "target": a.target}
            if a.commit:
                want["commit"] = a.commit
            for k, v in want.items():
                if got.get(k) != v:
                    errors.append(f"version --json: {k} is {got.get(k)!r}, want {v!r}")
            line = subprocess.run([binary, "--version"], check=True, capture_output=True,
                                  text=True).stdout.strip()
            expect = f"gateway {got['version']} (commit {got['commit']}, {got['target']})"
            if line != expect:
                errors.append(f"--version prints {line!r}, want {expect!r}")
            ran = f"; {line}"
    if errors:
        return report(errors)
    print(f"check-archive: ok: {os.path.basename(a.archive)}: {len(es)} entries{ran}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
