import asyncio
import gzip
import io
import json
from pathlib import Path

import pytest

from hbd.errors import NotImplementedByHbd, SystemError_
from hbd.services.container.logfile import (
    BLOCK,
    LogFile,
    Rotation,
    Segment,
    Snapshot,
    settle,
)
from hbd.services.container.logs import (
    MAX_LINE,
    LogDriver,
    LogQuery,
    LogWriter,
    encode,
    log_driver,
    query_logs,
)


def json_file(path: Path, rotation: Rotation | None = None) -> tuple[LogDriver, LogWriter]:
    driver = LogDriver("json-file", path, rotation or Rotation())
    return driver, driver.open()


async def collect(driver: LogDriver, query: LogQuery, writer: LogWriter | None = None) -> list:
    return [r async for r in query_logs(driver, query, writer)]


async def data(driver: LogDriver, query: LogQuery, writer: LogWriter | None = None) -> list:
    return [r.data for r in await collect(driver, query, writer)]


def numbered(writer: LogWriter, count: int, stream: int = 1) -> None:
    for i in range(count):
        writer.write(stream, f"line-{i:03}\n".encode())


async def test_lines_are_split_and_streams_kept_apart(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    driver, w = json_file(path)
    w.write(1, b"one\ntw")
    w.write(2, b"err\n")
    w.write(1, b"o\nthree")
    w.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["stream"], x["log"]) for x in lines] == [
        ("stdout", "one\n"), ("stderr", "err\n"), ("stdout", "two\n"), ("stdout", "three")]
    assert all(x["time"].endswith("Z") for x in lines)
    assert await data(driver, LogQuery(stderr=False)) == [b"one\n", b"two\n", b"three"]
    assert await data(driver, LogQuery(tail=1)) == [b"three"]
    assert await data(driver, LogQuery(tail=0)) == []


async def test_tail_counts_records_of_both_streams_before_choosing_one(tmp_path: Path) -> None:
    # dockerd takes the last N records, then drops those of unwanted streams.
    driver, w = json_file(tmp_path / "c-json.log")
    w.write(1, b"out1\nout2\n")
    w.write(2, b"err1\n")
    w.close()
    assert await data(driver, LogQuery(stdout=False, tail=1)) == [b"err1\n"]
    assert await data(driver, LogQuery(stderr=False, tail=1)) == []
    assert await data(driver, LogQuery(stderr=False, tail=2)) == [b"out2\n"]


async def test_long_lines_are_cut(tmp_path: Path) -> None:
    driver, w = json_file(tmp_path / "c-json.log")
    w.write(1, b"x" * (MAX_LINE * 2 + 5) + b"\n")
    w.close()
    sizes = [len(r.data) for r in await collect(driver, LogQuery())]
    assert sizes == [MAX_LINE, MAX_LINE, 6]


async def test_follow_sees_writes_until_close(tmp_path: Path) -> None:
    driver, w = json_file(tmp_path / "c-json.log")
    w.write(1, b"before\n")
    got: list[bytes] = []

    async def reader() -> None:
        async for r in query_logs(driver, LogQuery(follow=True), w):
            got.append(r.data)

    task = asyncio.ensure_future(reader())
    await asyncio.sleep(0.01)
    w.write(1, b"after\n")
    await asyncio.sleep(0.01)
    w.write(2, b"partial")
    w.close()
    await asyncio.wait_for(task, 2)
    assert got == [b"before\n", b"after\n", b"partial"]


async def test_since_until(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    path.write_text(
        '{"log":"a\\n","stream":"stdout","time":"2024-01-01T00:00:01.5Z"}\n'
        '{"log":"b\\n","stream":"stdout","time":"2024-01-01T00:00:02.5Z"}\n'
        'garbage\n'
        '{"log":"c\\n","stream":"stdout","time":"2024-01-01T00:00:03.5Z"}\n')
    base = 1704067200 * 10**9
    driver = LogDriver("json-file", path)
    out = await data(driver, LogQuery(since_ns=base + 2 * 10**9, until_ns=base + 3 * 10**9))
    assert out == [b"b\n"]


# -- rotation ---------------------------------------------------------------------------


def record_size() -> int:
    return len(encode(1, b"line-000\n", 0))


async def test_rotation_names_and_reading_across_files(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    # Four records per file: a file is rotated once it has reached max-size.
    driver, w = json_file(path, Rotation(max_size=record_size() * 4, max_file=3))
    numbered(w, 30)
    w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    assert len(path.read_text().splitlines()) == 2  # 30 = 7 full files + 2
    everything = await data(driver, LogQuery())
    assert everything == [f"line-{i:03}\n".encode() for i in range(20, 30)]
    assert await data(driver, LogQuery(tail=7)) == everything[-7:]
    assert await data(driver, LogQuery(tail=100)) == everything


async def test_max_file_one_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    driver, w = json_file(path, Rotation(max_size=record_size() * 4, max_file=1))
    numbered(w, 10)
    w.close()
    assert [p.name for p in tmp_path.iterdir()] == ["c-json.log"]
    assert await data(driver, LogQuery()) == [b"line-008\n", b"line-009\n"]


async def test_compressed_rotation(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    driver, w = json_file(path, Rotation(max_size=record_size() * 4, max_file=3,
                                         compress=True))
    numbered(w, 10)
    w.close()
    settle(path)  # the compression in flight
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["c-json.log", "c-json.log.1.gz", "c-json.log.2.gz"]
    with gzip.open(tmp_path / "c-json.log.2.gz") as f:
        assert json.loads(f.readline())["log"] == "line-000\n"
    assert await data(driver, LogQuery()) == [f"line-{i:03}\n".encode() for i in range(10)]
    assert await data(driver, LogQuery(tail=3)) == [b"line-007\n", b"line-008\n", b"line-009\n"]
    assert await data(driver, LogQuery(tail=5)) == [f"line-{i:03}\n".encode()
                                                    for i in range(5, 10)]


async def test_a_restarted_writer_appends_and_rotates_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    rotation = Rotation(max_size=record_size() * 4, max_file=2)
    driver, w = json_file(path, rotation)
    numbered(w, 3)
    w.close()
    w = driver.open()
    numbered(w, 3)
    w.close()
    assert len((tmp_path / "c-json.log.1").read_text().splitlines()) == 4
    assert len(path.read_text().splitlines()) == 2


async def test_follow_goes_on_across_rotations(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    driver, w = json_file(path, Rotation(max_size=record_size() * 2, max_file=3))
    numbered(w, 3)
    records = query_logs(driver, LogQuery(follow=True), w)
    first = await anext(records)
    # The follower holds its place (as a slow client) while the writer rotates
    # three times: it reads on from there, and the files started since.
    for i in range(3, 9):
        w.write(1, f"line-{i:03}\n".encode())
    w.close()
    rest = [r.data async for r in records]
    assert [first.data, *rest] == [f"line-{i:03}\n".encode() for i in range(9)]


class CountingFile(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        out = super().read(size)
        self.bytes_read += len(out)
        return out

    def readline(self, size: int | None = -1, /) -> bytes:
        out = super().readline(size)
        self.bytes_read += len(out)
        return out


def test_tail_reads_from_the_end_only() -> None:
    line = encode(1, b"x" * 100 + b"\n", 0)
    f = CountingFile(line * (100 * BLOCK // len(line)))
    segments = Snapshot([Segment(f, False)]).tail(2)
    assert [s.file for s in segments] == [f]
    assert list(segments[0].lines()) == [line, line]
    assert f.bytes_read < 2 * BLOCK


# -- drivers and their options ---------------------------------------------------------


def driver_for(tmp_path: Path, kind: str, **opts: str) -> LogDriver:
    return log_driver({"Type": kind, "Config": opts}, tmp_path, "abc")


@pytest.mark.parametrize(("opts", "rotation"), [
    ({}, Rotation(-1, 1, False)),
    ({"max-size": "10m", "max-file": "3"}, Rotation(10_000_000, 3, False)),
    ({"max-size": "1.5k", "max-file": "+2", "compress": "true"}, Rotation(1500, 2, True)),
    ({"max-size": "1KiB", "max-file": "1"}, Rotation(1000, 1, False)),
    ({"max-size": "5 "}, Rotation(5, 1, False)),
])
def test_json_file_options(tmp_path: Path, opts: dict[str, str], rotation: Rotation) -> None:
    driver = driver_for(tmp_path, "json-file", **opts)
    assert driver.path == tmp_path / "abc-json.log"
    assert driver.rotation == rotation


@pytest.mark.parametrize(("opts", "message"), [
    ({"max-size": "abc"}, "invalid size: 'abc'"),
    ({"max-size": "-1"}, "invalid size: '-1'"),
    ({"max-size": " 5"}, "invalid size: ' 5'"),
    ({"max-size": "1e3"}, "invalid size: '1e3'"),
    ({"max-size": "1.5.3"}, 'strconv.ParseFloat: parsing "1.5.3": invalid syntax'),
    ({"max-size": "0"}, "max-size must be a positive number"),
    ({"max-file": "0"}, "max-file cannot be less than 1"),
    ({"max-file": "x"}, 'strconv.Atoi: parsing "x": invalid syntax'),
    ({"max-file": "99999999999999999999"},
     'strconv.Atoi: parsing "99999999999999999999": value out of range'),
    ({"max-size": "1k", "max-file": "3", "compress": "maybe"},
     'strconv.ParseBool: parsing "maybe": invalid syntax'),
    ({"max-size": "1k", "compress": "true"},
     "compress cannot be true when max-file is less than 2 or max-size is not set"),
])
def test_json_file_option_values_fail_as_dockerd(tmp_path: Path, opts: dict[str, str],
                                                 message: str) -> None:
    with pytest.raises(SystemError_) as e:
        driver_for(tmp_path, "json-file", **opts)
    assert e.value.message == f"failed to initialize logging driver: {message}"


def test_local_driver(tmp_path: Path) -> None:
    driver = driver_for(tmp_path, "local")
    assert driver.path == tmp_path / "local-logs" / "container.log"
    assert driver.rotation == Rotation(20 * 1024 * 1024, 5, True)
    assert driver_for(tmp_path, "local", **{"max-file": "1", "compress": "false",
                                           "max-size": "1m"}).rotation == \
        Rotation(1_000_000, 1, False)


@pytest.mark.parametrize(("opts", "message"), [
    ({"max-size": "abc"}, "invalid value for max-size: abc: invalid size: 'abc'"),
    ({"max-file": "x"}, 'invalid value for max-file: x: strconv.Atoi: parsing "x": '
                        'invalid syntax'),
    ({"compress": "x"}, 'error reading compress log option: strconv.ParseBool: parsing "x": '
                        'invalid syntax'),
    ({"max-file": "1"}, "compression cannot be enabled when max file count is 1"),
    ({"max-file": "-1", "compress": "false"}, "max file count cannot be less than 0"),
])
def test_local_option_values_fail_as_dockerd(tmp_path: Path, opts: dict[str, str],
                                             message: str) -> None:
    with pytest.raises(SystemError_) as e:
        driver_for(tmp_path, "local", **opts)
    assert e.value.message == f"failed to initialize logging driver: {message}"


async def test_none_keeps_nothing_and_cannot_be_read(tmp_path: Path) -> None:
    driver = driver_for(tmp_path, "none")
    w = driver.open()
    w.write(1, b"dropped\n")
    w.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NotImplementedByHbd) as e:
        driver.readable()
    assert e.value.message == "configured logging driver does not support reading"


async def test_local_driver_rotates_into_its_directory(tmp_path: Path) -> None:
    driver = log_driver({"Type": "local", "Config": {"max-size": "1k", "max-file": "2"}},
                        tmp_path, "abc")
    w = driver.open()
    numbered(w, 40)
    w.close()
    settle(tmp_path / "local-logs" / "container.log")
    assert sorted(p.name for p in (tmp_path / "local-logs").iterdir()) == [
        "container.log", "container.log.1.gz"]
    assert (await data(driver, LogQuery(tail=1))) == [b"line-039\n"]


def test_the_writer_closes_its_file(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "x.log", Rotation())
    log.append(b"a\n")
    log.close()
    log.close()
    assert (tmp_path / "x.log").read_bytes() == b"a\n"


async def test_a_damaged_compressed_file_is_read_as_far_as_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    good = gzip.compress(b"".join(encode(1, f"old-{i}\n".encode(), 0) for i in range(50)))
    (tmp_path / "c-json.log.1.gz").write_bytes(good[: len(good) // 2])
    driver, w = json_file(path, Rotation(max_size=10_000, max_file=2, compress=True))
    w.write(1, b"new\n")
    w.close()
    everything = await data(driver, LogQuery())
    old = everything[:-1]
    assert 0 < len(old) < 50 and old == [f"old-{i}\n".encode() for i in range(len(old))]
    assert everything[-1] == b"new\n"
    assert await data(driver, LogQuery(tail=2)) == everything[-2:]


@pytest.mark.parametrize("max_file", [0, 1])
async def test_follow_with_a_single_file(tmp_path: Path, max_file: int) -> None:
    path = tmp_path / "c-json.log"
    driver, w = json_file(path, Rotation(max_size=record_size() * 2, max_file=max_file))
    numbered(w, 1)
    records = query_logs(driver, LogQuery(follow=True), w)
    first = await anext(records)
    for i in range(1, 5):  # two rotations, each file unlinked
        w.write(1, f"line-{i:03}\n".encode())
    w.close()
    rest = [r.data async for r in records]
    assert [first.data, *rest] == [f"line-{i:03}\n".encode() for i in range(5)]
    assert len(path.read_text().splitlines()) == 1


def test_a_log_that_cannot_be_written_loses_records_not_the_container(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "gone"
    _, w = json_file(directory / "c-json.log", Rotation(max_size=1, max_file=2))
    w.write(1, b"kept\n")
    (directory / "c-json.log").unlink()
    directory.rmdir()
    w.write(1, b"lost\n")  # the rotation cannot rename: no exception to the guest's reader
    w.write(1, b"lost too\n")
    w.close()
    assert [r.message for r in caplog.records].count(
        f"cannot write the log {directory / 'c-json.log'}: "
        f"[Errno 2] No such file or directory: '{directory / 'c-json.log'}' -> "
        f"'{directory / 'c-json.log.1'}'") == 1


def test_a_rotated_file_left_plain_is_compressed_when_the_log_opens(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    (tmp_path / "c-json.log.1").write_bytes(encode(1, b"old\n", 0))
    (tmp_path / "c-json.log.1.gz").write_bytes(b"\x1f\x8b cut short")
    LogFile(path, Rotation(max_size=1000, max_file=2, compress=True)).close()
    settle(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c-json.log", "c-json.log.1.gz"]
    with gzip.open(tmp_path / "c-json.log.1.gz") as f:
        assert f.read() == encode(1, b"old\n", 0)
