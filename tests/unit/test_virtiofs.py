"""virtiofsd: either one Debian ships, each spoken to in its own options."""

from __future__ import annotations

import asyncio
import os
import socket as socketlib
from pathlib import Path

import pytest

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


def test_a_socket_bound_but_not_yet_listening_is_not_ready(tmp_path: Path) -> None:
    """virtiofsd's socket path exists from bind(); QEMU may connect only after listen()."""
    path = tmp_path / "virtiofsd.sock"
    with socketlib.socket(socketlib.AF_UNIX) as sock:
        sock.bind(str(path))
        assert path.exists() and not _listening(os.getpid(), path)
        sock.listen(1)
        assert _listening(os.getpid(), path)
