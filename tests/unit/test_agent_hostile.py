"""The host side of the agent channel against a hostile guest: the frame
parser, bounded queues and backpressure, unknown ids, deadlines."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hbd.drivers import agent as agent_mod
from hbd.drivers.agent import (
    HEADER,
    MAX_FRAME,
    T_ACK,
    T_PING,
    T_STDOUT,
    T_STDOUT_EOF,
    AgentClient,
    AgentDisconnected,
    ExitStatus,
    FrameDecoder,
    GuestBroken,
    OutputResume,
    ProcessSpec,
)
from hbd.drivers.flow import Drain, StreamQueue, combine
from hbd.drivers.guest import CONSOLE_KEPT, CONSOLE_LIMIT, trim_console_log
from hbd.services.container.logfile import LogFile, Rotation
from hbd.services.container.logs import LogWriter, encode
from hbd.services.container.outputmark import OutputMark, OutputMarkFile
from tests.hostile_peer import HostilePeer, frame

# -- the frame parser ---------------------------------------------------------------


def test_frames_fed_a_byte_at_a_time_come_out_whole() -> None:
    stream = frame(T_ACK, 7, b'{"a":1}') + frame(T_STDOUT, 3, b"hello") + frame(0xA2, 3)
    decoder = FrameDecoder()
    frames = []
    for i in range(len(stream)):
        frames += decoder.feed(stream[i:i + 1])
    assert [(f.type, f.ident, f.payload) for f in frames] == [
        (T_ACK, 7, b'{"a":1}'), (T_STDOUT, 3, b"hello"), (0xA2, 3, b"")]
    assert decoder.buffered == 0


def test_a_partial_frame_waits_for_the_rest() -> None:
    data = frame(T_STDOUT, 1, b"x" * 1000)
    decoder = FrameDecoder()
    assert decoder.feed(data[:500]) == []
    assert decoder.buffered == 500
    [f] = decoder.feed(data[500:])
    assert f.payload == b"x" * 1000


def test_a_huge_length_breaks_the_channel_before_its_payload_is_awaited() -> None:
    decoder = FrameDecoder()
    with pytest.raises(GuestBroken, match="frame of 4294967295 bytes"):
        decoder.feed(HEADER.pack(0xFFFFFFFF, T_STDOUT, 0, 1))
    with pytest.raises(GuestBroken):
        FrameDecoder().feed(HEADER.pack(MAX_FRAME + 1, T_STDOUT, 0, 1))
    # The limit itself is allowed.
    assert FrameDecoder().feed(HEADER.pack(MAX_FRAME, T_STDOUT, 0, 1)) == []


def test_garbage_is_a_broken_channel_or_frames_of_unknown_types() -> None:
    rng = os.urandom(1 << 16)
    decoder = FrameDecoder()
    try:
        frames = decoder.feed(rng)
    except GuestBroken:
        return  # a length field over the limit: the usual outcome
    # Otherwise only whole frames came out and the rest is held.
    assert sum(HEADER.size + len(f.payload) for f in frames) + decoder.buffered == len(rng)


def test_many_small_frames_cost_linear_time() -> None:
    one = frame(T_STDOUT, 1, b"y\n")
    stream = one * 200_000  # 2.8 MB in one chunk
    started = time.monotonic()
    frames = FrameDecoder().feed(stream)
    assert len(frames) == 200_000
    # Quadratic slicing of the rest after each frame would take minutes.
    assert time.monotonic() - started < 5


# -- bounded queues ---------------------------------------------------------------------


async def test_a_queue_asks_its_producer_to_wait_past_its_limit() -> None:
    queue: StreamQueue[bytes] = StreamQueue(limit=100)
    assert queue.put(b"a" * 60, 60) is None
    assert queue.put(b"b" * 60, 60) is not None  # 120 > 100
    drained = queue.put(b"c" * 60, 60)
    assert drained is not None and not drained.done()
    assert await queue.get() == b"a" * 60  # 120 left: over the limit
    assert not drained.done()
    assert await queue.get() == b"b" * 60  # 60 left: still over half of it
    assert not drained.done()
    assert await queue.get() == b"c" * 60  # empty
    assert drained.done()


async def test_a_closed_queue_releases_its_producer_and_drops_what_follows() -> None:
    queue: StreamQueue[bytes] = StreamQueue(limit=10)
    drained = queue.put(b"x" * 20, 20)
    assert drained is not None
    queue.close()
    assert drained.done()
    assert queue.put(b"more", 4) is None
    assert queue.size == 0
    assert await queue.get() is None


async def test_a_consumer_that_stalls_its_producer_too_long_is_cut_off() -> None:
    queue: StreamQueue[bytes] = StreamQueue(limit=10, stall_limit=0.2)
    drained = queue.put(b"x" * 20, 20)
    assert drained is not None
    await asyncio.wait_for(drained, 2)
    assert queue.overrun and queue.closed
    assert await queue.get() is None
    # One that catches up in time is not.
    patient: StreamQueue[bytes] = StreamQueue(limit=10, stall_limit=0.2)
    waiting = patient.put(b"x" * 20, 20)
    assert await patient.get() == b"x" * 20
    await asyncio.sleep(0.3)
    assert waiting is not None and waiting.done() and not patient.overrun


async def test_a_queue_ends_after_its_last_item() -> None:
    queue: StreamQueue[int] = StreamQueue()
    queue.put(1, 1)
    queue.put(2, 1)
    queue.end()
    assert [item async for item in queue.items()] == [1, 2]


async def test_combined_drains_wait_for_every_consumer() -> None:
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    assert combine([None, None]) is None
    assert combine([None, first]) is first
    both = asyncio.ensure_future(combine([first, second]))  # type: ignore[arg-type]
    first.set_result(None)
    await asyncio.sleep(0)
    assert not both.done()
    second.set_result(None)
    await both


# -- a client connected to a hostile peer ---------------------------------------------


class SlowSink:
    """A process's consumer that takes everything into a bounded queue."""

    def __init__(self, limit: int) -> None:
        self.queue: StreamQueue[bytes] = StreamQueue(limit)
        self.exits: list[ExitStatus] = []

    def on_output(self, stream: int, data: bytes) -> Drain:
        return self.queue.put(data, len(data))

    def on_output_eof(self, stream: int) -> None:
        pass

    def on_exit(self, status: ExitStatus) -> None:
        self.exits.append(status)


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[HostilePeer]:
    p = HostilePeer(tmp_path / "agent.sock")
    await p.start()
    yield p
    await p.stop()


async def connected(peer: HostilePeer) -> tuple[AgentClient, list[str]]:
    client = await AgentClient.connect(peer.socket_path, timeout=10)
    broken: list[str] = []
    client.on_broken = broken.append
    return client, broken


async def test_frames_for_unknown_processes_are_dropped_and_counted(
        peer: HostilePeer) -> None:
    client, broken = await connected(peer)
    sink = SlowSink(1 << 30)
    await client.start(ProcessSpec(proc=5, args=["x"], env=[]), sink)
    for ident in range(1000, 1500):
        peer.send(frame(T_STDOUT, ident, b"z" * 1000))
    peer.event({"type": "exit", "proc": 4242, "exit_code": 0})
    peer.send(frame(T_STDOUT, 5, b"mine"))
    await client.ping()
    assert client.dropped_frames == 501
    assert await sink.queue.get() == b"mine"
    assert sink.exits == [] and broken == []
    await client.close()


async def test_malformed_json_marks_the_guest_broken(peer: HostilePeer) -> None:
    client, broken = await connected(peer)
    peer.send(frame(T_ACK, 99, b"not json"))
    await asyncio.wait_for(client.wait_closed(), 5)
    assert broken == ["guest sent malformed JSON"]
    with pytest.raises(AgentDisconnected):
        await client.ping()
    await client.close()


async def test_json_nested_too_deep_marks_the_guest_broken(peer: HostilePeer) -> None:
    client, broken = await connected(peer)
    peer.send(frame(T_ACK, 99, b"[" * 500_000 + b"]" * 500_000))
    await asyncio.wait_for(client.wait_closed(), 5)
    assert broken == ["guest sent malformed JSON"]
    await client.close()


async def test_an_oversize_frame_marks_the_guest_broken(peer: HostilePeer) -> None:
    client, broken = await connected(peer)
    peer.send(HEADER.pack(64 * MAX_FRAME, T_STDOUT, 0, 1))
    await asyncio.wait_for(client.wait_closed(), 5)
    assert broken and "frame of" in broken[0]
    await client.close()


async def test_a_request_past_its_deadline_breaks_the_guest(
        peer: HostilePeer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(agent_mod.DEADLINES, T_PING, 0.3)
    client, broken = await connected(peer)
    peer.silent.add(T_PING)
    started = time.monotonic()
    with pytest.raises(GuestBroken, match="did not answer"):
        await client.ping()
    assert 0.3 <= time.monotonic() - started < 3
    assert broken and "did not answer" in broken[0]
    assert client.closed
    await client.close()


async def test_time_spent_waiting_for_a_slow_consumer_does_not_count(
        peer: HostilePeer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reply sits behind output nobody consumes yet: not the guest's fault."""
    monkeypatch.setitem(agent_mod.DEADLINES, T_PING, 0.5)
    client, broken = await connected(peer)
    sink = SlowSink(limit=1000)
    await client.start(ProcessSpec(proc=1, args=["x"], env=[]), sink)
    peer.send(frame(T_STDOUT, 1, b"o" * 5000))  # over the sink's limit: the reader waits
    ping = asyncio.ensure_future(client.ping())
    await asyncio.sleep(1.2)  # past the deadline, all of it spent waiting for the sink
    assert not ping.done() and broken == []
    await sink.queue.get()
    await asyncio.wait_for(ping, 2)
    await client.close()


async def test_a_flood_is_held_by_the_guest_not_by_hbd(peer: HostilePeer) -> None:
    """A sink that does not read: hbd holds about its limit plus a read's worth
    (the rest waits in the socket and, for a real guest, in the guest)."""
    client, _ = await connected(peer)
    sink = SlowSink(limit=256 * 1024)
    await client.start(ProcessSpec(proc=1, args=["x"], env=[]), sink)
    chunk = frame(T_STDOUT, 1, b"f" * 65536)

    async def flood() -> None:
        for _ in range(2000):  # 128 MiB
            peer.send(chunk)
            await peer.drain()

    flooding = asyncio.ensure_future(flood())
    await asyncio.sleep(2)
    assert not flooding.done()  # the socket is full: hbd stopped reading
    assert sink.queue.size <= 256 * 1024 + 65536
    flooding.cancel()
    await client.close()


async def test_held_output_of_unattached_processes_is_bounded(
        peer: HostilePeer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_mod, "UNCLAIMED_LIMIT", 100_000)
    peer.processes = [{"proc": 3, "container": "c", "pid": 9, "main": True,
                       "running": True, "exit_code": 0, "signal": 0, "oom_killed": False}]
    client, _ = await connected(peer)
    for _ in range(50):
        peer.send(frame(T_STDOUT, 3, b"u" * 10_000))
    await client.ping()
    sink = SlowSink(1 << 30)
    client.attach_output(3, sink)
    assert sink.queue.size <= 100_000
    await client.close()


# -- the log writer keeps up ------------------------------------------------------------


def test_a_flood_of_short_lines_is_logged_in_linear_time(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "c-json.log", Rotation())
    writer = LogWriter(log)
    started = time.monotonic()
    for _ in range(64):  # 4 MiB of `yes`: 2M records
        writer.write(1, b"y\n" * 32768)
    writer.close()
    assert time.monotonic() - started < 30
    lines = (tmp_path / "c-json.log").read_bytes().splitlines()
    assert len(lines) == 64 * 32768
    assert json.loads(lines[-1])["log"] == "y\n"


def test_batched_appends_rotate_where_single_ones_do(tmp_path: Path) -> None:
    records = [encode(1, f"line {i}\n".encode(), 1_700_000_000_000_000_000)
               for i in range(100)]
    rotation = Rotation(max_size=len(records[0]) * 7 + 3, max_file=50)
    one, many = tmp_path / "one" / "log", tmp_path / "many" / "log"
    single = LogFile(one, rotation)
    for r in records:
        single.append(r)
    LogFile(many, rotation).append_many(records)
    names = sorted(p.name for p in one.parent.iterdir())
    assert names == sorted(p.name for p in many.parent.iterdir())
    for name in names:
        assert (one.parent / name).read_bytes() == (many.parent / name).read_bytes()


# -- console.log -----------------------------------------------------------------------


def test_a_flooded_console_log_is_trimmed_to_its_tail(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_bytes(b"a" * CONSOLE_LIMIT + b"the end\n")
    assert trim_console_log(console)
    assert console.stat().st_size == 0
    kept = (tmp_path / "console.log.1").read_bytes()
    assert len(kept) == CONSOLE_KEPT and kept.endswith(b"the end\n")
    # QEMU writes on at its offset: the file is sparse, its blocks are what count.
    with console.open("r+b") as f:
        f.seek(64 * CONSOLE_LIMIT)
        f.write(b"more\n")
    assert not trim_console_log(console)


# -- output acknowledged, resumed after a crash (PROTOCOL.md §6) -------------------------


async def acks_reach(peer: HostilePeer, proc: int, count: int) -> None:
    async with asyncio.timeout(5):
        while peer.acks.get(proc) != count:
            peer.acked.clear()
            await peer.acked.wait()


async def test_output_is_acknowledged_by_count_once_its_consumer_has_it(
        peer: HostilePeer) -> None:
    client, _ = await connected(peer)
    hello = peer.requests[0][2]
    assert hello["output_acks"] is True and hello["resume"] == []
    sink = SlowSink(1 << 30)
    await client.start(ProcessSpec(proc=5, args=["x"], env=[]), sink)
    for _ in range(3):
        peer.send(frame(T_STDOUT, 5, b"abc"))
    peer.send(frame(T_STDOUT_EOF, 5))
    await acks_reach(peer, 5, 4)  # cumulative: three chunks and the EOF
    assert sink.queue.size == 9
    await client.close()


async def test_a_returning_host_says_where_it_wants_output_from_and_counts_on(
        peer: HostilePeer) -> None:
    peer.processes = [{"proc": 3, "container": "c1", "pid": 9, "main": True,
                       "running": True, "exit_code": 0, "signal": 0, "oom_killed": False}]
    peer.output_from = [{"proc": 3, "from": 40}]
    client = await AgentClient.connect(peer.socket_path, timeout=10,
                                       resume=[OutputResume("c1", 3, 40)])
    assert peer.requests[0][2]["resume"] == [{"container": "c1", "proc": 3, "from": 40}]
    peer.send(frame(T_STDOUT, 3, b"again"))  # frame 40, held until attached
    await client.ping()
    assert client.output_from(3) == 40 and 3 not in peer.acks
    sink = SlowSink(1 << 30)
    client.attach_output(3, sink)
    await acks_reach(peer, 3, 41)
    assert await sink.queue.get() == b"again"
    await client.close()


async def test_output_nobody_claims_after_a_reconnect_is_acknowledged_and_dropped(
        peer: HostilePeer) -> None:
    """An exec an earlier hbd ran: the guest must not keep its output for ever
    (it would stop reading every process's output)."""
    peer.processes = [{"proc": 8, "container": "c1", "pid": 9, "main": False,
                       "running": True, "exit_code": 0, "signal": 0, "oom_killed": False}]
    peer.output_from = [{"proc": 8, "from": 2}]
    client, _ = await connected(peer)
    peer.send(frame(T_STDOUT, 8, b"held"))
    await client.ping()
    assert 8 not in peer.acks
    client.output_claimed()
    await acks_reach(peer, 8, 3)
    peer.send(frame(T_STDOUT, 8, b"later"))
    await acks_reach(peer, 8, 4)
    await client.close()


def test_an_output_mark_keeps_the_count_and_the_unfinished_lines(tmp_path: Path) -> None:
    path = tmp_path / "output.mark"
    writer = LogWriter(LogFile(tmp_path / "c-json.log", Rotation()),
                       marks=OutputMarkFile(path, fresh=True))
    writer.write(1, b"whole\npart")
    writer.write(2, b"err")
    writer.mark(7, 2)
    assert OutputMarkFile.read(path) == OutputMark(7, 2, {1: b"part", 2: b"err"})
    # The next hbd's writer goes on from the unfinished lines.
    resumed = LogWriter(LogFile(tmp_path / "c-json.log", Rotation()),
                        marks=OutputMarkFile(path, fresh=False))
    mark = OutputMarkFile.read(path)
    assert mark is not None
    resumed.resume(mark)
    resumed.write(1, b"ial\n")
    resumed.close()  # logs "err": the mark then holds no unfinished line
    assert OutputMarkFile.read(path) == OutputMark(7, 2, {1: b"", 2: b""})
    logged = [json.loads(line)["log"] for line in
              (tmp_path / "c-json.log").read_text().splitlines()]
    assert logged == ["whole\n", "partial\n", "err"]
    # A fresh run starts with no mark; garbage is no mark either.
    OutputMarkFile(path, fresh=True).close()
    assert OutputMarkFile.read(path) is None
    path.write_bytes(b"hbo1" + b"\xff" * 40)
    assert OutputMarkFile.read(path) is None


@pytest.mark.parametrize("features, known", [
    (None, frozenset()),                                  # an init from before features
    (["connect"], frozenset({"connect"})),
    (["connect", 7, {"x": 1}, None], frozenset({"connect"})),   # junk ignored
    ("connect", frozenset()),                             # not a list: none
])
async def test_hellos_features_are_taken_as_strings_only(
        peer: HostilePeer, features: object, known: frozenset[str]) -> None:
    peer.features = features
    client, broken = await connected(peer)
    assert client.guest_info.features == known
    assert broken == []
    await client.close()


@pytest.mark.parametrize(("reply", "started"), [
    ({"pid": 7}, agent_mod.Started(7)),
    ({"pid": 7, "user": {"uid": 1000, "gid": 1000, "groups": [1000, 1234, 50000]}},
     agent_mod.Started(7, agent_mod.ProcessUser(1000, 1000, (1000, 1234, 50000)))),
    # A guest's odd answer is read as far as it makes sense, never raises.
    ({"pid": 7, "user": "root"}, agent_mod.Started(7)),
    ({"pid": 7, "user": {"uid": "0", "groups": ["x", True, 5]}},
     agent_mod.Started(7, agent_mod.ProcessUser(0, 0, (0, 0, 5)))),
])
def test_start_replies_with_the_identity_a_process_runs_as(
        reply: dict[str, object], started: agent_mod.Started) -> None:
    assert agent_mod._started(reply) == started
