"""Copy one directory out of a wheel (a zip archive): `unpack_wheel_dir.py WHEEL PREFIX OUT`.

Run by `cargo xtask setup` with the cache's Python, so xtask needs no zip library. Every member under PREFIX is
written below OUT with PREFIX removed; a member whose path would leave OUT is refused.
"""

import pathlib
import sys
import zipfile


def main() -> None:
    wheel, prefix, out = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]).resolve()
    count = 0
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if not name.startswith(prefix) or name.endswith("/"):
                continue
            target = (out / name[len(prefix) :]).resolve()
            if out not in target.parents:
                sys.exit(f"{wheel}: refusing member {name!r}, which points outside {out}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
            count += 1
    if count == 0:
        sys.exit(f"{wheel} has no files under {prefix}")


if __name__ == "__main__":
    main()
