"""virtiofsd: either one Debian ships, each spoken to in its own options."""

from __future__ import annotations

import asyncio
import os
import socket as socketlib
from pathlib import Path

import pytest

from hbd.drivers import guest as guest_driver
from hbd.drivers.guest import QemuGuest
from hbd.drivers.virtiofs import (
    VIRTIOFSD_BINARIES,
    Virtiofsd,
    VirtiofsdBinary,
    VirtiofsdError,
    _listening,
    find_virtiofsd,
)


def test_rust_and_c_options_say_the_same() -> None:
    socket, source = Path("/run/x/virtiofsd.sock"), Path("/var/lib/x/shared")
    rust = VirtiofsdBinary("/usr/libexec/virtiofsd", rust=True).argv(socket, source)
    assert rust == ["/usr/libexec/virtiofsd", "--socket-path=/run/x/virtiofsd.sock",
                    "--shared-dir=/var/lib/x/shared", "--cache=auto", "--sandbox=namespace",
                    "--announce-submounts"]
    c = VirtiofsdBinary("/usr/lib/qemu/virtiofsd", rust=False).argv(socket, source)
    assert c == ["/usr/lib/qemu/virtiofsd", "--socket-path=/run/x/virtiofsd.sock",
                 "-o", "source=/var/lib/x/shared", "-o", "cache=auto",
                 "-o", "sandbox=namespace", "-o", "announce_submounts"]


def test_the_first_installed_one_is_used(tmp_path: Path) -> None:
    rust = VirtiofsdBinary(str(tmp_path / "libexec-virtiofsd"), rust=True)
    c = VirtiofsdBinary(str(tmp_path / "qemu-virtiofsd"), rust=False)
    with pytest.raises(VirtiofsdError, match="no virtiofsd"):
        find_virtiofsd((rust, c))
    Path(c.path).write_text("#!/bin/sh\n")
    Path(c.path).chmod(0o755)
    assert find_virtiofsd((rust, c)) == c
    Path(rust.path).write_text("#!/bin/sh\n")
    Path(rust.path).chmod(0o755)
    assert find_virtiofsd((rust, c)) == rust


@pytest.mark.skipif(os.geteuid() != 0, reason="virtiofsd's namespace sandbox needs root")
@pytest.mark.skipif(not any(os.access(b.path, os.X_OK) for b in VIRTIOFSD_BINARIES),
                    reason="no virtiofsd installed")
async def test_this_hosts_virtiofsd_takes_hbds_options(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    daemon = await Virtiofsd.start(tmp_path, shared)
    try:
        # Both say so once they listen; the Rust one only after entering its
        # sandbox, which can still fail after its socket appeared.
        log = tmp_path / "virtiofsd.log"
        async with asyncio.timeout(10):
            while daemon.running:
                if b"Waiting for vhost-user socket connection" in log.read_bytes():
                    break
                await asyncio.sleep(0.01)
        assert daemon.running, log.read_text()
        assert daemon.socket.exists()
        again = Virtiofsd.find(tmp_path)  # as an hbd restarted meanwhile would
        assert again is not None and again.pid == daemon.pid
        again.close()
    finally:
        await daemon.stop()
    assert not daemon.running
    daemon.close()


class _Process:
    """What QemuGuest needs of a QEMU, a virtiofsd and an agent, exiting on demand."""

    def __init__(self, tmp_path: Path) -> None:
        self.exited = asyncio.Event()
        self.run_dir = tmp_path
        self.console_log = tmp_path / "console.log"
        self.on_broken = None

    @property
    def running(self) -> bool:
        return not self.exited.is_set()

    async def wait_exit(self) -> None:
        await self.exited.wait()

    async def destroy(self) -> None:
        self.exited.set()

    async def stop(self) -> None:
        self.exited.set()

    async def close(self) -> None:
        pass


def _guest(tmp_path: Path) -> tuple[QemuGuest, _Process, _Process]:
    vm, virtiofsd = _Process(tmp_path), _Process(tmp_path)
    guest = QemuGuest(vm, _Process(tmp_path), virtiofsd)  # type: ignore[arg-type]
    return guest, vm, virtiofsd


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest_driver, "VIRTIOFSD_EXIT_GRACE", 0.05)


async def test_a_virtiofsd_dying_under_a_running_guest_destroys_it(
        tmp_path: Path, short_grace: None) -> None:
    guest, vm, virtiofsd = _guest(tmp_path)
    virtiofsd.exited.set()
    await asyncio.wait_for(vm.exited.wait(), 10)  # a hang guard, not a measure
    assert "virtiofsd" in guest.failure


async def test_a_virtiofsd_let_go_by_its_exiting_qemu_is_no_failure(
        tmp_path: Path, short_grace: None) -> None:
    for ending in ("qemu exits", "hbd kills it"):
        guest, vm, virtiofsd = _guest(tmp_path)
        if ending == "hbd kills it":
            await guest.kill()
        else:
            virtiofsd.exited.set()
            vm.exited.set()
        assert guest._shared_fs_watch is not None
        await asyncio.wait_for(guest._shared_fs_watch, 10)
        assert guest.failure == "", ending


def test_a_socket_bound_but_not_yet_listening_is_not_ready(tmp_path: Path) -> None:
    """virtiofsd's socket path exists from bind(); QEMU may connect only after listen()."""
    path = tmp_path / "virtiofsd.sock"
    with socketlib.socket(socketlib.AF_UNIX) as sock:
        sock.bind(str(path))
        assert path.exists() and not _listening(os.getpid(), path)
        sock.listen(1)
        assert _listening(os.getpid(), path)
