"""debian-python:bookworm: Debian 12 minbase with Debian's python3, trimmed like debian:slim.

Built with mmdebstrap (packaged in bookworm; it resolves with apt, so it is
faster than debootstrap and honours SOURCE_DATE_EPOCH for reproducible
output) from the Debian mirrors this machine's apt already uses: the sources
are read from /etc/apt at build time, nothing here names a host. On a host of
another release (Debian 13) the image is still bookworm, from the mirrors of
the host's own release's sources.

What is kept and why:
  * minbase (the Essential and Priority: required packages and apt, as for
    debootstrap's minbase and the official debian image) plus python3,
    ca-certificates (python's ssl and urllib verify https) and netbase
    (/etc/services and /etc/protocols, which socket.getservbyname reads).
  * dpkg path-exclude rules (left in the image, as the official slim images
    do, so a later `apt-get install` stays slim too) drop docs but their
    copyright files, man and info pages, and translations.
  * apt is left usable (`apt-get update && apt-get install ...` works) but
    keeps no package lists, caches or downloaded debs in the image.
Everything that differs between two builds on the same mirror state (logs,
ldconfig's aux-cache, debconf's backup copies, the machine-id) is removed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REF = "debian-python:bookworm"
# images/build.py keeps the built archive in $HBD_CACHE/images, keyed by this
# directory and the builder: a bootstrap downloads ~30 MB, so CI and every
# `./install.sh` rebuild it only when the recipe changes.
CACHE = True

SUITE = "bookworm"
# The suites of the image's sources.list, in the official image's order; the
# ones the host does not use are left out.
SUITES = (SUITE, f"{SUITE}-updates", f"{SUITE}-security")
PACKAGES = ("python3", "ca-certificates", "netbase")
# 2023-11-14T22:13:20Z, the archive writer's fixed time (hbd image_archive.EPOCH):
# mmdebstrap and dpkg stamp this instead of the build time (shadow's lastchg...).
SOURCE_DATE_EPOCH = 1_700_000_000
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"  # shipped by the image's apt

# What debian:bookworm-slim excludes (debuerreotype's slimify lists).
DPKG_PATH_RULES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
# The official image's apt settings: no translations, no binary caches, debs
# removed after install, so `apt-get install` in a container stays small.
APT_CONF = {
    "docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb'
        ' /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb'
        ' /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    ),
    "docker-no-languages": 'Acquire::Languages "none";\n',
    "docker-gzip-indexes": (
        'Acquire::GzipIndexes "true";\nAcquire::CompressionTypes::Order:: "gz";\n'
    ),
    "docker-autoremove-suggests": 'Apt::AutoRemove::SuggestsImportant "false";\n',
    "docker-no-recommends": 'APT::Install-Recommends "false";\n',
}

CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            # glibc 2.36 has C.UTF-8 built in: UTF-8 stdio for python without locales.
            "LANG=C.UTF-8",
        ],
        "Cmd": ["python3"],
    },
    "history": [{"created": "2023-11-14T22:13:20Z",
                 "created_by": "images/debian-python/recipe.py (mmdebstrap --variant=minbase"
                               f" --include={','.join(PACKAGES)} {SUITE})"}],
}


@dataclass(frozen=True)
class AptSource:
    """One `deb URI SUITE` pair of the host's apt configuration."""

    uri: str
    suite: str


def _one_line_sources(text: str) -> list[AptSource]:
    """`deb [opts] URI SUITE COMPONENT...` lines of a sources.list file."""
    found = []
    for raw in text.splitlines():
        # drop comments and the [arch=... signed-by=...] options
        words = re.sub(r"\[[^\]]*\]", " ", raw.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            found.append(AptSource(words[1].rstrip("/"), words[2]))
    return found


def _deb822_sources(text: str) -> list[AptSource]:
    """The Types: deb stanzas of a deb822 .sources file."""
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:  # a folded continuation line
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                found.append(AptSource(uri.rstrip("/"), suite))
    return found


def host_codename(os_release: Path = Path("/etc/os-release")) -> str | None:
    """The host's release (VERSION_CODENAME of os-release), if it says."""
    try:
        text = os_release.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_CODENAME":
            return value.strip().strip("\"'") or None
    return None


def host_sources(etc_apt: Path = Path("/etc/apt"),
                 os_release: Path = Path("/etc/os-release")) -> list[AptSource]:
    """The host's Debian sources for SUITES, in SUITES order (several mirrors kept).

    A host of another release has no SUITE sources: its own release's ones
    (trixie, trixie-updates, trixie-security) name the mirrors, which serve
    SUITE too (bookworm, bookworm-updates, bookworm-security)."""
    found: list[AptSource] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        found += _one_line_sources(main.read_text())
    parts = etc_apt / "sources.list.d"
    for path in sorted(parts.glob("*")) if parts.is_dir() else []:
        if path.suffix == ".list":
            found += _one_line_sources(path.read_text())
        elif path.suffix == ".sources":
            found += _deb822_sources(path.read_text())
    codename = host_codename(os_release)
    if codename and codename != SUITE and not any(s.suite == SUITE for s in found):
        found = [AptSource(s.uri, SUITE + s.suite.removeprefix(codename)) for s in found
                 if s.suite == codename or s.suite.startswith(f"{codename}-")]
    wanted = [s for suite in SUITES for s in found if s.suite == suite]
    unique = list(dict.fromkeys(wanted))
    if not any(s.suite == SUITE for s in unique):
        raise SystemExit(f"debian-python: the host's apt has no '{SUITE}' source"
                         f" (nor one of its own release, {codename}) in {etc_apt}")
    return unique


def debian_sources(sources: list[AptSource]) -> str:
    """The image's /etc/apt/sources.list.d/debian.sources, deb822 like the official image."""
    by_uri: dict[str, list[str]] = {}
    for s in sources:
        by_uri.setdefault(s.uri, []).append(s.suite)
    return "\n".join(
        f"Types: deb\nURIs: {uri}\nSuites: {' '.join(suites)}\nComponents: main\n"
        f"Signed-By: {KEYRING}\n"
        for uri, suites in by_uri.items())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _empty_dir(path: Path) -> None:
    for child in path.iterdir() if path.is_dir() else []:
        _remove(child)


def trim(tree: Path) -> None:
    """Drop what a container image should not carry and what differs between builds."""
    for d in ("var/lib/apt/lists", "var/cache/apt", "var/cache/debconf", "var/log", "tmp",
              "var/tmp", "run"):
        for child in (tree / d).glob("*") if (tree / d).is_dir() else []:
            # keep the directory skeletons apt, dpkg and debconf expect
            if d == "var/lib/apt/lists" and child.name in ("partial", "auxfiles"):
                continue
            if d == "var/cache/apt" and child.name == "archives":
                _empty_dir(child / "partial")
                for deb in child.glob("*.deb"):
                    deb.unlink()
                continue
            if d == "var/cache/debconf" and not child.name.endswith("-old"):
                continue
            if d == "var/log" and child.is_dir():
                _empty_dir(child)
                continue
            _remove(child)
    for rel in ("var/cache/ldconfig/aux-cache", "etc/machine-id", "var/lib/dbus/machine-id",
                "etc/hostname", "etc/resolv.conf", "etc/apt/sources.list",
                "etc/apt/apt.conf.d/99mmdebstrap", "var/lib/dpkg/status-old",
                "var/lib/dpkg/diversions-old", "var/lib/dpkg/statoverride-old",
                "etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-"):
        _remove(tree / rel)
    # The runtime mounts /dev (docker a tmpfs, hbd's guest devtmpfs): ship it empty,
    # as the official images do, instead of mmdebstrap's device nodes.
    _empty_dir(tree / "dev")
    # mmdebstrap copies the host's /etc/resolv.conf and /etc/hostname in (removed above):
    # the runtime provides both. An empty resolv.conf keeps a bind-mount target without
    # carrying this machine's resolver into the image.
    (tree / "etc/resolv.conf").write_text("")


def build_tree(tree: Path) -> None:
    sources = host_sources()
    mirrors = [f"deb {s.uri} {s.suite} main" for s in sources]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), "LC_ALL": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["mmdebstrap", "--quiet", "--mode=root", "--format=directory", "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            # merged /usr the way debootstrap (and so the official image) does it:
            # symlinks plus usr-is-merged; else apt picks usrmerge, which pulls in perl
            f"--hook-dir={MERGED_USR_HOOKS}",
            # no Translation-* indexes: less to download (the image keeps the same setting)
            "--aptopt=Acquire::Languages \"none\"",
            *(f"--dpkgopt={rule}" for rule in DPKG_PATH_RULES),
            SUITE, str(tree), *mirrors]
    # mmdebstrap and the hook's apt and dpkg talk a lot even with --quiet: show it on failure only
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"debian-python: mmdebstrap failed ({done.returncode})")
    (tree / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (tree / "etc/apt/sources.list.d/debian.sources").write_text(debian_sources(sources))
    for name, text in APT_CONF.items():
        (tree / "etc/apt/apt.conf.d" / name).write_text(text)
    # the dpkg rules mmdebstrap wrote, under the name the official slim image uses
    dpkg_cfg = tree / "etc/dpkg/dpkg.cfg.d"
    generated = dpkg_cfg / "99mmdebstrap"
    if generated.exists():
        generated.rename(dpkg_cfg / "docker")
    trim(tree)
