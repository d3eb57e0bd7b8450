"""Register direct-assigned volumes for hbd, as `kata-runtime direct-volume`
does for Kata Containers (hbd/services/volume/direct.py):

    python3 -m hbd.tools.direct_volume add --volume-path /var/lib/kubelet/…/mount \\
        --mount-info '{"volume-type": "block", "device": "/dev/sdb", "fstype": "ext4"}'
    python3 -m hbd.tools.direct_volume remove --volume-path …
    python3 -m hbd.tools.direct_volume stats --volume-path …

The registry is hbd.toml's [volumes] direct_volumes (`--config`), or
`--root`. A CSI driver calls `add` in NodePublishVolume instead of mounting
the device, and `remove` in NodeUnpublishVolume.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hbd.config import load_config
from hbd.errors import HbdError
from hbd.services.volume.direct import DirectVolumes, parse_mount_info


def _registry(args: argparse.Namespace) -> DirectVolumes:
    if args.root:
        return DirectVolumes(Path(args.root))
    config = load_config(Path(args.config) if args.config else None)
    return DirectVolumes(Path(config.volumes.direct_volumes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m hbd.tools.direct_volume",
                                     description="directly assign a volume to hbd's guests")
    parser.add_argument("--config", help="hbd.toml naming the registry directory")
    parser.add_argument("--root", help="the registry directory itself")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="register a volume path's block device")
    add.add_argument("--volume-path", required=True)
    add.add_argument("--mount-info", required=True, help="mountInfo JSON")
    for name, what in (("remove", "forget a volume path"),
                       ("stats", "a registered volume's registration and device size")):
        sub = commands.add_parser(name, help=what)
        sub.add_argument("--volume-path", required=True)
    args = parser.parse_args(argv)
    try:
        registry = _registry(args)
        if args.command == "add":
            registry.add(args.volume_path, parse_mount_info(args.mount_info))
        elif args.command == "remove":
            if not registry.remove(args.volume_path):
                print(f"{args.volume_path} is not registered", file=sys.stderr)
                return 1
        else:
            print(json.dumps(registry.stats(args.volume_path)))
    except HbdError as e:
        print(e.message, file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{args.volume_path}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
