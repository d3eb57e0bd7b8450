"""Guest templates: a guest booted once to where its init waits for a host,
saved, and restored as many times as guests of its shape are wanted (a
clone starts in tens of milliseconds where a boot takes most of a second
under TCG). Knows nothing of Docker.

A template is two things:
- its RAM, in a memfd: the template's QEMU maps it shared and writes it
  while it boots; then the memfd is sealed against writes and every clone
  maps it private copy-on-write, so clones share the template's pages until
  they write them. Sealed, because QEMU 7.2 discards guest RAM a clone's
  balloon reports free by punching holes in the RAM's file, private mapping
  or not (fixed in QEMU 8.2): in the template's file that would zero pages
  under every other clone. The seal makes that fallocate fail (EPERM); a
  clone then keeps the pages its guest frees, a cost the template's shared
  pages more than pay for.
- its device state (QEMU migration with x-ignore-shared: RAM left out),
  a few hundred KiB in a file under the store's directory.

Both live as long as the hbd that built them: the memfd is hbd's, so a
restarted hbd builds its templates again (clones already running keep their
mappings). A template is keyed by a hash of every input a clone must match:
kernel and initrd (their content), the full kernel command line, memory,
vCPUs, the device slots (NICs, balloon), the accelerator, the TCG cache
size and the QEMU binary. Another input means another key, so another
template: one whose input changed is never used again.

Building is on demand and shared: concurrent callers wanting one shape wait
on one build; callers of other shapes, and clones, never wait on each
other. A failed build is not retried for a while; callers then boot cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hbd.drivers import net
from hbd.drivers.agent import T_SANDBOX, AgentClient, NicSlot, SandboxSetup, connect_unless
from hbd.drivers.vm import MicroVM, NicSpec, QemuMicrovmDriver, VMSpec, kernel_cmdline

log = logging.getLogger(__name__)

# Bump when what a template is (its saved guest, how clones use it) changes.
TEMPLATE_FORMAT = 1
TEMPLATE_CMDLINE = "hbd.template"
# Templates kept at most (one per guest shape in use).
MAX_TEMPLATES = 4
# A build that failed is not tried again for this long.
RETRY_AFTER = 60.0
SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class TemplateError(Exception):
    """A template could not be built."""


def template_macs(count: int) -> list[str]:
    """The MACs of a template's NICs, and so of every clone's (migration
    carries them). The guest gives a NIC the MAC of the network endpoint it
    serves when it hands it to a namespace (NETWORK), so no two clones show
    these on a bridge."""
    return [f"02:68:62:ff:ff:{i:02x}" for i in range(count)]


def nic_name(index: int) -> str:
    """The name a template gives its NIC `index` in the guest (PROTOCOL §3's
    slot names; a clone keeps them)."""
    return f"slot{index}"


@dataclass(frozen=True)
class TemplateShape:
    """What a guest is made of, as far as a clone must match its template."""

    kernel: Path
    initrd: Path
    accel: str
    memory_mib: int
    vcpus: int
    nics: int
    balloon: bool
    cmdline: str
    tcg_tb_size_mib: int

    @classmethod
    def of(cls, vm: VMSpec) -> TemplateShape:
        return cls(kernel=vm.kernel, initrd=vm.initrd, accel=vm.accel,
                   memory_mib=vm.memory_mib, vcpus=vm.vcpus, nics=len(vm.nics),
                   balloon=vm.balloon, cmdline=vm.cmdline, tcg_tb_size_mib=vm.tcg_tb_size_mib)

    @property
    def full_cmdline(self) -> str:
        """The kernel command line of the template, as the guest has it."""
        extra = f"{self.cmdline} {TEMPLATE_CMDLINE}".strip()
        return kernel_cmdline(self.accel, extra)


def template_key(shape: TemplateShape, kernel_digest: str, initrd_digest: str,
                 qemu_identity: str) -> str:
    """The hash of every input of a template."""
    inputs = {
        "format": TEMPLATE_FORMAT,
        "kernel": kernel_digest,
        "initrd": initrd_digest,
        "qemu": qemu_identity,
        "cmdline": shape.full_cmdline,
        "accel": shape.accel,
        "memory_mib": shape.memory_mib,
        "vcpus": shape.vcpus,
        "nics": shape.nics,
        "balloon": shape.balloon,
        "tcg_tb_size_mib": shape.tcg_tb_size_mib,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Template:
    key: str
    shape: TemplateShape
    # hbd's descriptor of the sealed memfd holding the guest's RAM.
    ram_fd: int
    state: Path
    macs: list[str] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.ram_fd)


class FileDigests:
    """sha256 of files, computed again only when a file's size, mtime or
    inode changed (a kernel is 20 MiB: hashing it per clone would cost more
    than the clone)."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[int, int, int], str]] = {}

    async def digest(self, path: Path) -> str:
        st = path.stat()
        ident = (st.st_size, st.st_mtime_ns, st.st_ino)
        known = self._known.get(path)
        if known is not None and known[0] == ident:
            return known[1]
        value = await asyncio.to_thread(_sha256_file, path)
        self._known[path] = (ident, value)
        return value


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class TemplateStore:
    """The templates of one hbd: built on demand, kept by key."""

    def __init__(self, vm_driver: QemuMicrovmDriver, root: Path, tap_prefix: str,
                 boot_timeout: float) -> None:
        self.vm_driver = vm_driver
        self.root = root
        # Of the taps of template guests (only while one is built): not the
        # sandboxes' prefix, a template holds no sandbox's NICs.
        self.tap_prefix = tap_prefix
        self.boot_timeout = boot_timeout
        self.digests = FileDigests()
        self.templates: dict[str, Template] = {}
        self._building: dict[str, asyncio.Task[Template]] = {}
        self._failed: dict[str, float] = {}
        self._qemu_identity = ""

    async def start(self) -> None:
        """Clear what an earlier hbd left: its templates are of no use (their
        RAM went with it), a template guest it was building is killed."""
        for run_dir in self.root.glob("*/run"):
            vm = self.vm_driver.find(run_dir)
            if vm is not None:
                await vm.destroy()
        shutil.rmtree(self.root, ignore_errors=True)

    async def qemu_identity(self) -> str:
        """QEMU's version and its binary's identity (an upgrade in place
        keeps the path)."""
        if not self._qemu_identity:
            binary = shutil.which(self.vm_driver.qemu) or self.vm_driver.qemu
            proc = await asyncio.create_subprocess_exec(
                binary, "--version", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL)
            out, _ = await proc.communicate()
            st = Path(binary).stat()
            self._qemu_identity = (f"{out.decode(errors='replace').splitlines()[:1]} "
                                   f"{binary} {st.st_size} {st.st_mtime_ns}")
        return self._qemu_identity

    async def key(self, shape: TemplateShape) -> str:
        return template_key(shape, await self.digests.digest(shape.kernel),
                            await self.digests.digest(shape.initrd),
                            await self.qemu_identity())

    async def get(self, shape: TemplateShape) -> Template | None:
        """The template of `shape`: a ready one, or the one being built (a
        build takes about as long as a boot, and its waiters then start in
        parallel). None when there is none: the caller boots, while the
        template is built in the background for the guests after it."""
        try:
            key = await self.key(shape)
        except OSError as e:
            log.warning("no guest template: %s", e)
            return None
        template = self.templates.get(key)
        if template is not None:
            template.last_used = time.monotonic()
            return template
        task = self._building.get(key)
        if task is None:
            self._start_build(key, shape)
            return None
        try:
            # A caller that gives up (its request was cancelled) leaves the
            # build to the others.
            return await asyncio.shield(task)
        except Exception:  # logged once, by _built; the caller boots cold
            return None

    async def prepare(self, shape: TemplateShape) -> None:
        """Build the template of `shape` in the background, unless it is
        ready, being built or failed a moment ago."""
        key = await self.key(shape)
        if key not in self.templates and key not in self._building:
            self._start_build(key, shape)

    def _start_build(self, key: str, shape: TemplateShape) -> None:
        if time.monotonic() < self._failed.get(key, 0.0):
            return
        task = asyncio.ensure_future(self._build(key, shape))
        self._building[key] = task
        task.add_done_callback(lambda t: self._built(key, shape, t))

    def _built(self, key: str, shape: TemplateShape, task: asyncio.Task[Template]) -> None:
        self._building.pop(key, None)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.warning("cannot build the guest template %s (booting cold for %.0f s): %s",
                        key[:12], RETRY_AFTER, error)
            self._failed[key] = time.monotonic() + RETRY_AFTER
            return
        template = task.result()
        # A template of the same shape with other inputs (a rebuilt kernel)
        # is of no more use; clones made from it keep their own mappings.
        for old_key, old in list(self.templates.items()):
            if old.shape == shape:
                self._drop(old_key)
        self.templates[key] = template
        # Each holds the RAM its guest touched (tens of MiB): the shapes used
        # least lately go (built again if wanted again).
        while len(self.templates) > MAX_TEMPLATES:
            self._drop(min(self.templates.values(), key=lambda t: t.last_used).key)
        log.info("guest template %s ready (%d MiB, %d NICs)", key[:12], shape.memory_mib,
                 shape.nics)

    def _drop(self, key: str) -> None:
        template = self.templates.pop(key)
        template.close()
        shutil.rmtree(template.state.parent, ignore_errors=True)

    async def _build(self, key: str, shape: TemplateShape) -> Template:
        started = time.monotonic()
        directory = self.root / key
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        # Not among the sandboxes' run directories (a template is none), and
        # there for the time of the build only.
        run_dir = directory / "run"
        ram_fd = os.memfd_create(f"hbd-template-{key[:12]}",
                                 os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        tap_fds: list[int] = []
        vm: MicroVM | None = None
        try:
            os.ftruncate(ram_fd, shape.memory_mib * 1024 * 1024)
            macs = template_macs(shape.nics)
            nics = []
            for i, mac in enumerate(macs):
                # Real taps, opened as a clone's are: the virtio-net features
                # the guest agreed to depend on the backend (vnet headers).
                tap = f"{self.tap_prefix}{key[:7]}{i:x}"
                tap_fds.append(net.open_tap(tap))
                nics.append(NicSpec(tap, mac, tap_fds[-1]))
            spec = VMSpec(run_dir=run_dir, kernel=shape.kernel, initrd=shape.initrd,
                          accel=shape.accel, memory_mib=shape.memory_mib, vcpus=shape.vcpus,
                          nics=nics, balloon=shape.balloon,
                          cmdline=f"{shape.cmdline} {TEMPLATE_CMDLINE}".strip(),
                          tcg_tb_size_mib=shape.tcg_tb_size_mib,
                          ram_file=f"/proc/self/fd/{ram_fd}", ram_shared=True,
                          extra_fds=[ram_fd], name=f"template-{key[:12]}")
            vm = await self.vm_driver.launch(spec)
            # The template names its NICs once for every clone; after this
            # SANDBOX's ACK its init waits for the next host, in poll().
            setup = SandboxSetup(nics=[NicSlot(mac, nic_name(i)) for i, mac in enumerate(macs)])
            agent = await _connect(vm, self.boot_timeout,
                                   [(T_SANDBOX, setup.payload())])
            await agent.close()
            state = directory / "state"
            await vm.save(state)
            await vm.destroy()
            vm = None
            # No writable shared mapping is left: seal it.
            fcntl.fcntl(ram_fd, fcntl.F_ADD_SEALS, SEALS)
            (directory / "meta.json").write_text(json.dumps(
                {"key": key, "shape": {k: str(v) for k, v in asdict(shape).items()},
                 "built_s": round(time.monotonic() - started, 3),
                 "ram_bytes": os.fstat(ram_fd).st_blocks * 512,
                 "state_bytes": state.stat().st_size}))
        except BaseException:
            if vm is not None:
                await vm.destroy()
            os.close(ram_fd)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        finally:
            for fd in tap_fds:
                os.close(fd)
            shutil.rmtree(run_dir, ignore_errors=True)
        return Template(key=key, shape=shape, ram_fd=ram_fd, state=state, macs=macs)

    async def close(self) -> None:
        """hbd stops: builds under way stop (their guests are killed), the
        templates go (clones running keep their RAM)."""
        tasks = list(self._building.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for key in list(self.templates):
            self._drop(key)


async def _connect(vm: MicroVM, timeout: float,
                   boot: list[tuple[int, dict[str, object]]]) -> AgentClient:
    """The agent of a guest booting, or an error as soon as its QEMU dies."""
    client = await connect_unless(vm.wait_exit(), vm.agent_socket, timeout=timeout,
                                  boot=boot)
    if client is None:
        raise TemplateError("QEMU exited while the template booted")
    return client
