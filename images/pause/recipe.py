"""hbd/pause:1, the image of a pod's infrastructure container (the CRI's pod
sandbox): one static binary, /pause, built here from pause.c."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REF = "hbd/pause:1"
CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
    "history": [{"created": "2026-12-03T00:00:00Z",
                 "created_by": "images/pause/recipe.py (static pause.c)"}],
}


def build_tree(tree: Path) -> None:
    # Mount points and the files a container's /etc gets (hostname, hosts,
    # resolv.conf), as runc would create them in an empty image.
    for d in ("dev", "proc", "sys", "etc", "tmp"):
        (tree / d).mkdir()
    os.chmod(tree / "tmp", 0o1777)
    target = tree / "pause"
    subprocess.run(["cc", "-static", "-Os", "-s", "-o", str(target),
                    str(Path(__file__).resolve().parent / "pause.c")], check=True)
    os.chmod(target, 0o755)
