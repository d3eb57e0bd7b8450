"""busybox:latest from Debian's busybox-static, laid out like the official image.

Every applet is a hard link to /bin/busybox in /bin; the account files are
the official image's.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
"""
SHADOW_USERS = ["root", "daemon", "bin", "sys", "sync", "mail", "www-data", "operator",
                "nobody"]
CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"],
    },
    "history": [{"created": "2023-11-14T22:13:20Z",
                 "created_by": "images/busybox/recipe.py (Debian busybox-static)"}],
}


def busybox_binary(work: Path) -> Path:
    """The busybox binary of Debian's busybox-static package."""
    subprocess.run(["apt-get", "download", "-q", "busybox-static"], cwd=work, check=True,
                   capture_output=True)
    deb = next(work.glob("busybox-static_*.deb"))
    unpacked = work / "deb"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    # /bin up to Debian 12; Debian 13's packages moved it to /usr/bin (merged /usr)
    return next(p for p in (unpacked / "bin" / "busybox", unpacked / "usr" / "bin" / "busybox")
                if p.exists())


def build_tree(tree: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            binary = busybox_binary(Path(tmp))
        except (subprocess.CalledProcessError, StopIteration):
            # No network: the installed package's binary is the same file
            # (/bin/busybox on both releases, through merged /usr on Debian 13).
            binary = Path("/bin/busybox")
        for d in ("bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "usr/sbin",
                  "var/spool/mail", "var/www"):
            (tree / d).mkdir(parents=True, exist_ok=True)
        os.chmod(tree / "root", 0o700)
        os.chmod(tree / "tmp", 0o1777)
        target = tree / "bin" / "busybox"
        target.write_bytes(binary.read_bytes())
        os.chmod(target, 0o755)
    applets = subprocess.run([str(target), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = tree / "bin" / applet
        if applet != "busybox" and not link.exists():
            os.link(target, link)
    (tree / "etc" / "passwd").write_text(PASSWD)
    (tree / "etc" / "group").write_text(GROUP)
    shadow = tree / "etc" / "shadow"
    shadow.write_text("".join(f"{u}:*::0:::::\n" for u in SHADOW_USERS))
    os.chmod(shadow, 0o640)
