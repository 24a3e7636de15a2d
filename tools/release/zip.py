"""Reproducible .zip of one folder, for Windows release archives (package.sh calls it).

    python3 zip.py STAGE NAME OUT   # packs STAGE/NAME/ as NAME/ into OUT

Sorted entries, every timestamp at SOURCE_DATE_EPOCH (zip cannot go before 1980),
fixed Unix modes and creator system, so the same folder zips to the same bytes on any
runner.
"""

import os
import sys
import time
import zipfile


def main() -> None:
    stage, name, out = sys.argv[1:4]
    epoch = max(int(os.environ["SOURCE_DATE_EPOCH"]), 315532800)
    stamp = time.gmtime(epoch)[:6]
    root = os.path.join(stage, name)
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, stage).replace(os.sep, "/")
        entries.append((rel + "/", None))
        entries.extend((f"{rel}/{f}", os.path.join(dirpath, f)) for f in filenames)
    entries.sort()
    partial = out + ".partial"
    with zipfile.ZipFile(partial, "w") as z:
        for arcname, path in entries:
            info = zipfile.ZipInfo(arcname, date_time=stamp)
            info.create_system = 3  # Unix, so the modes below are read
            if path is None:
                info.external_attr = (0o40755 << 16) | 0x10
                z.writestr(info, b"")
                continue
            mode = 0o755 if arcname.endswith(".exe") else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f:
                z.writestr(info, f.read(), compresslevel=9)
    os.replace(partial, out)


if __name__ == "__main__":
    main()
