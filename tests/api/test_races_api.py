"""One container's operations take turns (the lock rule of
hbd/services/container/service.py), through the real API and services with
the fake guest driver, whose boots a test holds back."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import docker
import pytest

from hbd.drivers.fake import FakeGuest, FakeGuestDriver
from hbd.drivers.guest import Guest, GuestSpec
from tests.api.conftest import ApiDaemon


class HeldBoots:
    """Boots of the daemon's fake driver wait until `release`."""

    def __init__(self, api: ApiDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
        self.api = api
        guests = api.daemon.containers.sandboxes.driver
        assert isinstance(guests, FakeGuestDriver)
        self.driver = guests
        self.gate = asyncio.Event()
        self.entered = threading.Event()
        original = guests.boot

        async def boot(spec: GuestSpec) -> Guest:
            self.entered.set()
            await self.gate.wait()
            return await original(spec)

        monkeypatch.setattr(guests, "boot", boot)

    def release(self) -> None:
        self.api.loop.call_soon_threadsafe(self.gate.set)


@pytest.fixture
def held(api_daemon: ApiDaemon, monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldBoots]:
    boots = HeldBoots(api_daemon, monkeypatch)
    yield boots
    boots.release()


def in_thread(call, *args) -> tuple[threading.Thread, list[object]]:  # type: ignore[no-untyped-def]
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call(*args))
        except Exception as e:
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_rm_f_during_a_start_waits_for_it_then_leaves_nothing(
        api_daemon: ApiDaemon, raw: docker.APIClient, held: HeldBoots) -> None:
    cid = raw.create_container("busybox", ["sleep", "600"], name="race-rm-start")["Id"]
    starting, started = in_thread(raw.start, cid)
    assert held.entered.wait(10)
    removing, removed = in_thread(raw.remove_container, cid, False, False, True)
    removing.join(0.5)
    assert removing.is_alive()  # waits for the start, does not pull its record away
    held.release()
    starting.join(10)
    removing.join(10)
    assert removed == [None], removed
    assert started == [None], started
    with pytest.raises(docker.errors.NotFound):
        raw.inspect_container(cid)
    guest: FakeGuest = held.driver.booted[-1]
    assert guest._exited.is_set()  # the guest the start booted is gone too
    sandboxes = api_daemon.daemon.containers.sandboxes
    assert sandboxes.holding(cid) is None


def test_a_start_queued_behind_an_rm_gives_up(
        api_daemon: ApiDaemon, raw: docker.APIClient, held: HeldBoots) -> None:
    cid = raw.create_container("busybox", ["sleep", "600"], name="race-start-rm")["Id"]
    first, _ = in_thread(raw.start, cid)
    assert held.entered.wait(10)
    removing, removed = in_thread(raw.remove_container, cid, False, False, True)
    removing.join(0.3)
    second, second_outcome = in_thread(raw.start, cid)
    second.join(0.3)
    held.release()
    for thread in (first, removing, second):
        thread.join(10)
    assert removed == [None]
    [error] = second_outcome
    assert isinstance(error, docker.errors.APIError), error
    assert error.status_code in (404, 409)
    assert api_daemon.daemon.containers.sandboxes.holding(cid) is None
    assert held.driver.booted[-1]._exited.is_set()


def test_pause_waits_for_an_in_flight_start_and_then_pauses(
        api_daemon: ApiDaemon, raw: docker.APIClient, held: HeldBoots) -> None:
    cid = raw.create_container("busybox", ["sleep", "600"], name="race-pause")["Id"]
    starting, _ = in_thread(raw.start, cid)
    assert held.entered.wait(10)
    pausing, paused = in_thread(raw.pause, cid)
    pausing.join(0.3)
    assert pausing.is_alive()
    held.release()
    starting.join(10)
    pausing.join(10)
    assert paused == [None], paused
    assert raw.inspect_container(cid)["State"]["Paused"] is True
    raw.unpause(cid)
    raw.remove_container(cid, force=True)
