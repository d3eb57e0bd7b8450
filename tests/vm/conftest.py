"""End-to-end tests: a real hbd daemon booting real guests under QEMU.

Every test here is marked `vm`. On failure the daemon log and the console
logs of its guests are attached to the report.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.daemon_fixture import RunningDaemon, hbd_daemon

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.vm)


_daemons: list[RunningDaemon] = []


@pytest.fixture(scope="session")
def hbd() -> Iterator[RunningDaemon]:
    with hbd_daemon() as daemon:
        _daemons.append(daemon)
        yield daemon
        _daemons.remove(daemon)


@pytest.fixture
def sdk(hbd: RunningDaemon) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=hbd.host, version="1.47", timeout=120)
    yield client
    client.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for daemon in _daemons:
        report.sections.append(("hbd log (tail)", daemon.log_tail()))
        for console in sorted(daemon.exec_root.glob("*/console.log"))[-3:]:
            report.sections.append((f"guest console {console.parent.name[:12]}",
                                    console.read_text(errors="replace")[-3000:]))
