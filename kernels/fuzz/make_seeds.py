#!/usr/bin/env python3
"""Write the archive fuzzer's seeds, seeds/tar/*.tar (committed; rerun after
changing this). Each seed is one flags byte (fuzz_archive.c: bit 0 keep
owners, 1 no-overwrite-dir-nondir, 2 rename to one name, 3 unpack at r/d
instead of r, 4 archive r's content) and a tar aimed at a weak spot."""
import io
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))


def entry(name: str, kind: str = "file", data: bytes = b"", link: str = "",
          mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.mode = mode
    ti.mtime = 1700000000
    if kind == "dir":
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o755
    elif kind == "sym":
        ti.type, ti.linkname = tarfile.SYMTYPE, link
    elif kind == "hard":
        ti.type, ti.linkname = tarfile.LNKTYPE, link
    elif kind == "fifo":
        ti.type = tarfile.FIFOTYPE
    elif kind == "chr":
        ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
    else:
        ti.size = len(data)
    return ti, data


def write(name: str, entries: list[tuple[tarfile.TarInfo, bytes]], flags: int = 0,
          fmt: int = tarfile.PAX_FORMAT, typeflag: bytes | None = None) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    with open(os.path.join(HERE, "seeds", "tar", name + ".tar"), "wb") as f:
        # Without tarfile's padding to 10 KiB: a missing end is tolerated.
        data = buf.getvalue().rstrip(b"\0")
        data += b"\0" * (-len(data) % 512)
        if typeflag is not None:  # every header's typeflag (old tars: NUL)
            data = b"".join(data[i:i + 156] + typeflag + data[i + 157:i + 512]
                            if i == 0 else data[i:i + 512] for i in range(0, len(data), 512))
        f.write(bytes([flags]) + data)


def main() -> None:
    os.makedirs(os.path.join(HERE, "seeds", "tar"), exist_ok=True)
    write("plain", [entry("d", "dir"), entry("d/f", data=b"hello\n"), entry("d/s", "sym", link="f"),
                    entry("d/h", "hard", link="d/f"), entry("p", "fifo"), entry("c", "chr")])
    write("plain-content", [entry("./", "dir"), entry("./f", data=b"x", mode=0o4755)], flags=0x19)
    # A symlink in a parent of an entry, aimed above the root, absolute or relative.
    write("symlink-parent-rel", [entry("a", "sym", link="../o"), entry("a/x", data=b"pwned")])
    write("symlink-parent-abs", [entry("a", "sym", link="/o"), entry("a/x", data=b"pwned")])
    write("symlink-parent-deep", [entry("d", "dir"), entry("d/l", "sym", link="../../../o"),
                                  entry("d/l/x", data=b"pwned")], flags=8)
    write("symlink-chain", [entry("a", "sym", link="b/.."), entry("b", "sym", link=".."),
                            entry("a/b/x", data=b"pwned")])
    # Symlinks the container made (fuzz_archive.c puts up -> ../o, abs -> /o,
    # d/up -> ../../o and loop -> loop in the root first).
    write("container-symlink-rel", [entry("up/x", data=b"pwned"), entry("up/y", "dir")])
    write("container-symlink-abs", [entry("abs/x", data=b"pwned"), entry("abs/s", "sym", link="z")])
    write("container-symlink-dest", [entry("up/x", data=b"pwned")], flags=8)
    write("container-symlink-loop", [entry("loop/x", data=b"x")])
    write("hardlink-via-container-symlink", [entry("h", "hard", link="up/canary"),
                                             entry("h2", "hard", link="abs/canary")])
    write("symlink-breakout", [entry("s", "sym", link="x/../../o"),
                               entry("d/s", "sym", link="../y")], flags=8)
    # "..", absolute names.
    write("dotdot", [entry("../o/x", data=b"pwned")])
    write("absolute", [entry("/o/x", data=b"inside")])
    # Hard links out, directly or through a symlinked parent.
    write("hardlink-out", [entry("h", "hard", link="../o/canary")])
    write("hardlink-abs", [entry("h", "hard", link="/o/canary")])
    write("hardlink-via-symlink", [entry("s", "sym", link="../o"),
                                   entry("h", "hard", link="s/canary")])
    # A symlink, then a file or directory of the same name.
    write("symlink-then-file", [entry("l", "sym", link="../o/canary"), entry("l", data=b"pwned")])
    write("symlink-then-dir", [entry("l", "sym", link="../o"), entry("l", "dir"),
                               entry("l/x", data=b"inside")])
    write("symlink-then-file-rename", [entry("l", "sym", link="/o/canary"),
                                       entry("l", data=b"pwned")], flags=4)
    # Deep trees and long names (PAX and GNU).
    deep = "/".join(["a"] * 2000)
    write("deep", [entry(deep + "/f", data=b"deep")])
    write("deep-dirs", [entry("/".join(["b"] * n), "dir") for n in range(1, 40)], flags=0x10)
    long = "n" * 200 + "/" + "m" * 250
    write("long-pax", [entry(long, data=b"x"), entry("ln", "sym", link="t" * 300)])
    write("long-gnu", [entry(long, data=b"x"), entry("ln", "sym", link="t" * 300)],
          fmt=tarfile.GNU_FORMAT)
    write("ustar", [entry("u" * 90 + "/" + "v" * 90, data=b"prefix")], fmt=tarfile.USTAR_FORMAT)
    write("v7-regular", [entry("v7", data=b"old")], fmt=tarfile.USTAR_FORMAT, typeflag=b"\0")
    write("high-typeflag", [entry("hi", data=b"x")], fmt=tarfile.USTAR_FORMAT, typeflag=b"\xff")
    write("no-overwrite", [entry("x", data=b"1"), entry("x", "dir")], flags=2)


if __name__ == "__main__":
    main()
