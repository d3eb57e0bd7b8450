import asyncio
import json
from pathlib import Path

from hbd.services.container.logs import MAX_LINE, JsonFileWriter, LogQuery, query_logs


async def collect(path: Path, query: LogQuery, writer: JsonFileWriter | None = None) -> list:
    return [r async for r in query_logs(path, query, writer)]


async def test_lines_are_split_and_streams_kept_apart(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    w = JsonFileWriter(path)
    w.write(1, b"one\ntw")
    w.write(2, b"err\n")
    w.write(1, b"o\nthree")
    w.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["stream"], x["log"]) for x in lines] == [
        ("stdout", "one\n"), ("stderr", "err\n"), ("stdout", "two\n"), ("stdout", "three")]
    assert all(x["time"].endswith("Z") for x in lines)
    out = await collect(path, LogQuery(stderr=False))
    assert [r.data for r in out] == [b"one\n", b"two\n", b"three"]
    tail = await collect(path, LogQuery(tail=1))
    assert [r.data for r in tail] == [b"three"]
    assert await collect(path, LogQuery(tail=0)) == []


async def test_long_lines_are_cut(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    w = JsonFileWriter(path)
    w.write(1, b"x" * (MAX_LINE * 2 + 5) + b"\n")
    w.close()
    sizes = [len(r.data) for r in await collect(path, LogQuery())]
    assert sizes == [MAX_LINE, MAX_LINE, 6]


async def test_follow_sees_writes_until_close(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    w = JsonFileWriter(path)
    w.write(1, b"before\n")
    got: list[bytes] = []

    async def reader() -> None:
        async for r in query_logs(path, LogQuery(follow=True), w):
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
    out = await collect(path, LogQuery(since_ns=base + 2 * 10**9, until_ns=base + 3 * 10**9))
    assert [r.data for r in out] == [b"b\n"]
