"""A host cgroup per guest process (QEMU, virtiofsd): memory, pids and CPU
weight bounded, so a guest that breaks out into its QEMU still cannot take
the host's memory or fork-bomb it.

cgroup v2 first (Debian 12 and 13 use it alone): a group per process under
`<cgroup2 mount>/<parent>/`, with the controllers enabled on the way down.
On a host with v1 hierarchies (hybrid, as these machines) the group is
made in each of the memory, pids and cpu hierarchies, under the cgroup hbd
itself is in there (so QEMU stays inside whatever bounds hbd). With
neither writable, guests run unbounded and hbd says so once.

What files a group gets is pure data (`v2_settings`, `v1_settings`); the
`Cgroups` class only writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CONTROLLERS = ("memory", "pids", "cpu")
MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    pids: int
    # cgroup v2's scale: 1..10000, 100 the default.
    cpu_weight: int = 100


def qemu_limits(memory_mib: int, vcpus: int, tb_size_mib: int) -> Limits:
    """A QEMU's bounds: guest RAM, the TCG translation cache, and what QEMU
    itself takes (code, device state, I/O buffers: ~40 MiB measured, bounded
    at 96). Threads: main, vCPUs, RCU, and up to 64 block I/O workers."""
    return Limits(memory_bytes=(memory_mib + tb_size_mib + 96) * MIB,
                  pids=128 + vcpus, cpu_weight=100 * max(1, vcpus))


# virtiofsd: its thread pool (64 at most by default) and its buffers; the
# page cache of the files it serves is charged here too, and reclaimed.
VIRTIOFSD_LIMITS = Limits(memory_bytes=256 * MIB, pids=128, cpu_weight=100)


def v2_settings(limits: Limits) -> dict[str, str]:
    return {"memory.max": str(limits.memory_bytes), "pids.max": str(limits.pids),
            "cpu.weight": str(limits.cpu_weight)}


def v1_settings(limits: Limits) -> dict[str, dict[str, str]]:
    """Per hierarchy. v1's cpu.shares is 1024 for v2's weight 100."""
    return {"memory": {"memory.limit_in_bytes": str(limits.memory_bytes)},
            "pids": {"pids.max": str(limits.pids)},
            "cpu": {"cpu.shares": str(max(2, limits.cpu_weight * 1024 // 100))}}


@dataclass(frozen=True)
class Mount:
    path: Path
    fstype: str  # cgroup or cgroup2
    controllers: frozenset[str]


def parse_mounts(mountinfo: str) -> list[Mount]:
    """The cgroup mounts of /proc/self/mountinfo (controllers of v1 ones from
    their super options)."""
    mounts = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, after = left.split(), right.split()
        if len(fields) < 5 or len(after) < 3 or after[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(after[2].split(",")) & frozenset(CONTROLLERS)
        mounts.append(Mount(Path(fields[4]), after[0], options))
    return mounts


def parse_own_cgroups(text: str) -> dict[str, str]:
    """/proc/self/cgroup: the path per v1 controller, and "" for v2."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            paths[controller] = parts[2]
    return paths


@dataclass(frozen=True)
class Layout:
    """Where this hbd's groups go: one parent directory per hierarchy used."""

    version: int
    parents: tuple[Path, ...]
    # The cgroup2 mount (v2 only).
    root: Path = Path("/")


def v2_chain(root: Path, parent: Path) -> list[Path]:
    """The directories from the v2 mount down to `parent`, whose
    subtree_control must list the controllers its groups use."""
    chain = [root]
    for part in parent.relative_to(root).parts:
        chain.append(chain[-1] / part)
    return chain


def choose_layout(mounts: list[Mount], own: dict[str, str], v2_controllers: set[str],
                  parent: str) -> Layout | None:
    """v2 when its mount offers memory and pids; else v1 when there are
    memory, pids and cpu hierarchies; else None."""
    v2 = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if v2 is not None and {"memory", "pids"} <= v2_controllers:
        return Layout(2, (v2.path / parent,), v2.path)
    parents = []
    for controller in CONTROLLERS:
        mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.controllers),
                     None)
        if mount is None:
            return None
        inside = own.get(controller, "/").lstrip("/")
        parents.append(mount.path / inside / parent)
    return Layout(1, tuple(parents))


class Cgroups:
    """The groups of one hbd's guests."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @classmethod
    def detect(cls, parent: str) -> Cgroups | None:
        try:
            mounts = parse_mounts(Path("/proc/self/mountinfo").read_text())
            own = parse_own_cgroups(Path("/proc/self/cgroup").read_text())
            v2 = next((m for m in mounts if m.fstype == "cgroup2"), None)
            v2_controllers = set((v2.path / "cgroup.controllers").read_text().split()) \
                if v2 is not None else set()
        except OSError as e:
            log.warning("guests run without host cgroup limits: %s", e)
            return None
        layout = choose_layout(mounts, own, v2_controllers, parent)
        if layout is None:
            log.warning("guests run without host cgroup limits: no cgroup v2 with memory "
                        "and pids, nor v1 memory, pids and cpu hierarchies")
            return None
        groups = cls(layout)
        try:
            groups._make_parents()
        except OSError as e:
            log.warning("guests run without host cgroup limits: cannot write %s: %s",
                        layout.parents[0], e)
            return None
        log.info("guest cgroups: v%d under %s", layout.version,
                 ", ".join(str(p) for p in layout.parents))
        return groups

    def _make_parents(self) -> None:
        for parent in self.layout.parents:
            parent.mkdir(parents=True, exist_ok=True)
        if self.layout.version == 2:
            # Controllers must be enabled in every ancestor's subtree_control.
            for directory in v2_chain(self.layout.root, self.layout.parents[0]):
                for controller in CONTROLLERS:
                    with contextlib.suppress(OSError):
                        (directory / "cgroup.subtree_control").write_text(f"+{controller}")

    def create(self, name: str, limits: Limits) -> tuple[Path, ...]:
        """The group `name` with `limits`; returns its cgroup.procs files."""
        procs = []
        if self.layout.version == 2:
            settings = [(self.layout.parents[0], v2_settings(limits))]
        else:
            per = v1_settings(limits)
            settings = [(p, per[c]) for p, c in zip(self.layout.parents, CONTROLLERS, strict=True)]
        for parent, files in settings:
            group = parent / name
            group.mkdir(exist_ok=True)
            for file, value in files.items():
                try:
                    (group / file).write_text(value)
                except OSError as e:  # a controller the host lacks (cpu.weight)
                    log.debug("cgroup %s: cannot set %s: %s", group, file, e)
            procs.append(group / "cgroup.procs")
        return tuple(procs)

    def paths(self, name: str) -> list[Path]:
        return [parent / name for parent in self.layout.parents]

    def remove(self, name: str) -> bool:
        """Remove the group once its processes are gone; False while it has some."""
        removed = True
        for group in self.paths(name):
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.EBUSY:
                    log.warning("cannot remove cgroup %s: %s", group, e)
                removed = False
        return removed

    def sweep(self) -> None:
        """Remove the groups of processes that are gone (guests that exited
        while no hbd watched them)."""
        for parent in self.layout.parents:
            with contextlib.suppress(OSError):
                for group in parent.iterdir():
                    if group.is_dir():
                        with contextlib.suppress(OSError):
                            group.rmdir()

    def remove_parents(self) -> None:
        """Remove this hbd's parent groups if no guest's is left in them."""
        for parent in self.layout.parents:
            with contextlib.suppress(OSError):
                parent.rmdir()

    @staticmethod
    def limits_of(group: Path) -> dict[str, str]:
        """The limit files of a group, as read back (tests, diagnostics)."""
        out = {}
        for file in ("memory.max", "memory.limit_in_bytes", "pids.max", "cpu.weight",
                     "cpu.shares"):
            with contextlib.suppress(OSError):
                out[file] = (group / file).read_text().strip()
        return out


async def remove_soon(groups: Cgroups | None, name: str) -> None:
    """Remove a group whose process just exited (its task may take a moment
    to leave the group after it is reaped)."""
    if groups is None:
        return
    for _ in range(50):
        if groups.remove(name):
            return
        await asyncio.sleep(0.01)
    log.warning("cgroup %s still has processes", name)
