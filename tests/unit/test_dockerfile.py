"""The classic builder's host-side logic: Dockerfile parsing, word expansion,
.dockerignore, the build context and its COPY tars, build planning. No VM."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from hbd.errors import InvalidParameter
from hbd.services.build import context as bc
from hbd.services.build.builder import BuildOptions, arg_pairs, plan
from hbd.services.build.dockerfile import (
    DockerfileError,
    expand,
    expose_ports,
    key_values,
    parse,
    parse_duration,
    split_words,
)

# -- parser -----------------------------------------------------------------------


def test_parse_continuations_comments_flags_and_forms() -> None:
    text = (
        "# syntax-ish comment\n"
        "FROM busybox AS base\n"
        "\n"
        "RUN echo one \\\n"
        "# dropped comment inside a continuation\n"
        "    && echo two\n"
        'COPY --chown=1:2 --from=base ["a b", "/c/"]\n'
        'CMD ["echo", "hi"]\n'
        "ENTRYPOINT [not json\n"
        "healthcheck --interval=5s CMD true\n"
    )
    ins = parse(text)
    assert [i.keyword for i in ins] == ["FROM", "RUN", "COPY", "CMD", "ENTRYPOINT",
                                        "HEALTHCHECK"]
    assert ins[1].rest == "echo one     && echo two"
    assert ins[1].line == 4
    assert ins[2].flags == {"chown": "1:2", "from": "base"}
    assert ins[2].json_args() == ["a b", "/c/"]
    assert ins[3].json_args() == ["echo", "hi"]
    assert ins[4].json_args() is None  # falls back to the shell form
    assert ins[5].flags == {"interval": "5s"} and ins[5].rest == "CMD true"
    # The Step lines show the instruction as one line.
    assert ins[0].original == "FROM busybox AS base"


def test_parse_escape_directive_and_errors() -> None:
    ins = parse("# escape=`\nFROM x\nRUN echo a `\n  b\n")
    assert ins[1].rest == "echo a   b"
    with pytest.raises(DockerfileError, match="unknown instruction: FOO"):
        parse("FROM x\nFOO bar\n")
    with pytest.raises(DockerfileError, match="cannot be empty"):
        parse("# only a comment\n\n")
    with pytest.raises(DockerfileError, match="line 2: RUN requires at least one argument"):
        parse("FROM x\nRUN\n")


def test_expand() -> None:
    env = {"A": "1", "EMPTY": "", "P": "/x"}
    assert expand("$A ${A} ${B:-dflt} ${A:+alt} ${B:+alt}", env) == "1 1 dflt alt "
    assert expand("${EMPTY:-d}", env) == "d"
    assert expand(r"\$A '$A' \"$A\"", env) == r"$A '$A' \"1\""
    assert expand("$P/bin", env) == "/x/bin"
    with pytest.raises(DockerfileError):
        expand("${A", env)


def test_words_and_key_values() -> None:
    assert split_words('a "b c" d\\ e \'f g\'') == ["a", "b c", "d e", "f g"]
    assert key_values('A=1 B="two words" C=', "ENV") == [("A", "1"), ("B", "two words"),
                                                         ("C", "")]
    assert key_values("A old style value", "ENV") == [("A", "old style value")]
    assert key_values("NAME", "ARG") == [("NAME", "")]
    with pytest.raises(DockerfileError):
        key_values("", "LABEL")


def test_durations_and_ports() -> None:
    assert parse_duration("5s") == 5_000_000_000
    assert parse_duration("1m30s") == 90_000_000_000
    assert parse_duration("250ms") == 250_000_000
    with pytest.raises(DockerfileError, match="invalid duration"):
        parse_duration("5 s")
    assert expose_ports(["80", "53/UDP", "8000-8002"]) == ["80/tcp", "53/udp", "8000/tcp",
                                                     "8001/tcp", "8002/tcp"]
    with pytest.raises(DockerfileError):
        expose_ports(["http"])


# -- .dockerignore ----------------------------------------------------------------


def test_dockerignore_patterns() -> None:
    m = bc.IgnoreMatcher("# comment\n*.log\n!keep.log\nbuild/\n**/tmp\n/docs/*.md\n")
    assert m.excluded("a.log")
    assert not m.excluded("keep.log")
    assert not m.excluded("sub/a.log")  # * does not cross directories
    assert m.excluded("build") and m.excluded("build/x/y.o")  # a directory covers its files
    assert m.excluded("tmp") and m.excluded("a/b/tmp/c")
    assert m.excluded("docs/readme.md") and not m.excluded("docs/sub/readme.md")
    assert not m.excluded("src/main.c")


# -- the context ---------------------------------------------------------------------


def _context(tmp_path: Path, files: dict[str, bytes | None], mtime: int = 1_700_000_000,
             links: dict[str, str] | None = None) -> bc.BuildContext:
    path = tmp_path / f"ctx-{mtime}.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o750
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o755 if name.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return bc.BuildContext(path)


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_context_resolve_and_ignore(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"./Dockerfile": b"FROM x\n", "a.txt": b"a", "sub/b.txt": b"b",
                              "sub/c.log": b"c", "../escape": b"x", "/abs/d": b"d"})
    ctx.set_ignore("*.log\nsub/*.log\n")
    assert ctx.read("Dockerfile") == b"FROM x\n"
    assert ctx.resolve("./a.txt", "COPY") == ["a.txt"]
    assert ctx.resolve("sub", "COPY") == ["sub"] and ctx.is_dir("sub")  # implied directory
    assert ctx.resolve("*.txt", "COPY") == ["a.txt"]
    assert ctx.resolve("sub/*", "COPY") == ["sub/b.txt"]
    assert ctx.resolve("../../a.txt", "COPY") == ["a.txt"]  # cannot climb out of the root
    assert "escape" in ctx.entries and "abs/d" in ctx.entries  # names made relative
    with pytest.raises(InvalidParameter, match=r"excluded by \.dockerignore"):
        ctx.resolve("sub/c.log", "COPY")
    with pytest.raises(InvalidParameter, match="no source files were specified"):
        ctx.resolve("*.nothing", "COPY")


def test_copy_tar_contents_owners_and_digest(tmp_path: Path) -> None:
    files: dict[str, bytes | None] = {"run.sh": b"#!/bin/sh\n", "d": None, "d/x": b"x",
                                      "d/e/y": b"y"}
    ctx = _context(tmp_path, files, links={"d/link": "x"})
    items = bc.copy_items(ctx, ["d", "run.sh"])
    out = io.BytesIO()
    digest = bc.write_copy_tar(ctx, items, out)
    members = _members(out.getvalue())
    # A directory's content (not the directory), a file under its own name.
    assert sorted(members) == ["e", "e/y", "link", "run.sh", "x"]
    assert members["run.sh"].mode == 0o755 and members["x"].mode == 0o644
    assert members["link"].issym() and members["link"].linkname == "x"
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    # Same names, modes and contents with other times: the same digest (cache hit).
    later = _context(tmp_path, files, mtime=1_800_000_000, links={"d/link": "x"})
    assert bc.write_copy_tar(later, bc.copy_items(later, ["d", "run.sh"]),
                             io.BytesIO()) == digest
    changed = _context(tmp_path, {**files, "d/x": b"X"}, mtime=5, links={"d/link": "x"})
    assert bc.write_copy_tar(changed, bc.copy_items(changed, ["d", "run.sh"]),
                             io.BytesIO()) != digest


def test_add_archive_detection(tmp_path: Path) -> None:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        info = tarfile.TarInfo("inside.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"in"))
    ctx = _context(tmp_path, {"a.tar.gz": gzip.compress(inner.getvalue()),
                              "plain.txt": b"not a tar" * 100})
    assert ctx.is_archive("a.tar.gz") and not ctx.is_archive("plain.txt")
    out = io.BytesIO()
    ctx.write_archive("a.tar.gz", out)
    assert list(_members(out.getvalue())) == ["inside.txt"]


def test_plain_dockerfile_body(tmp_path: Path) -> None:
    path = tmp_path / "body"
    path.write_bytes(b"\xef\xbb\xbfFROM busybox\r\nRUN true\r\n")  # BOM and CRLF too
    ctx = bc.BuildContext(path)
    stages, _ = plan(ctx, BuildOptions())
    assert [i.keyword for i in stages[0].instructions] == ["FROM", "RUN"]


# -- planning ------------------------------------------------------------------------


def test_plan_stages_target_labels_and_meta_args(tmp_path: Path) -> None:
    dockerfile = (b"ARG BASE=busybox\nFROM $BASE AS one\nRUN true\n"
                  b"FROM scratch AS Two\nCOPY --from=one /x /\nFROM one\nCMD x\n")
    ctx = _context(tmp_path, {"docker/Dockerfile.dev": dockerfile})
    stages, meta = plan(ctx, BuildOptions(dockerfile="docker/Dockerfile.dev"))
    assert meta == {"BASE": "busybox"}
    assert [s.name for s in stages] == ["one", "two", ""]
    stages, _ = plan(ctx, BuildOptions(dockerfile="docker/Dockerfile.dev", target="two",
                                       labels={"k": "v w"}))
    assert [s.name for s in stages] == ["one", "two"]
    assert stages[-1].instructions[-1].keyword == "LABEL"
    assert key_values(stages[-1].instructions[-1].rest, "LABEL") == [("k", "v w")]
    with pytest.raises(InvalidParameter, match="failed to reach build target nope"):
        plan(ctx, BuildOptions(dockerfile="docker/Dockerfile.dev", target="nope"))
    with pytest.raises(InvalidParameter, match="Cannot locate specified Dockerfile"):
        plan(ctx, BuildOptions())
    bad = _context(tmp_path, {"Dockerfile": b"RUN true\n"}, mtime=7)
    with pytest.raises(DockerfileError):
        plan(bad, BuildOptions())


def test_arg_pairs() -> None:
    assert arg_pairs('AB=1 B C="x y" D=') == [("AB", "1"), ("B", None), ("C", "x y"),
                                              ("D", "")]
    with pytest.raises(DockerfileError):
        arg_pairs("=1")


def test_sources_follow_their_symlinks_inside_the_context(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"a.txt": b"a", "real/f": b"f"},
                   links={"link": "a.txt", "linkdir": "real", "abs": "/real/f",
                          "up": "../../../a.txt", "loop": "loop"})
    assert ctx.real("link") == "a.txt" and ctx.real("linkdir/f") == "real/f"
    assert ctx.real("abs") == "real/f" and ctx.real("up") == "a.txt"
    assert ctx.resolve("linkdir/f", "COPY") == ["linkdir/f"] and ctx.is_dir("linkdir")
    items = bc.copy_items(ctx, ["link", "linkdir"])
    assert [(i.arcname, i.entry.name) for i in items] == [("link", "a.txt"), ("f", "real/f")]
    with pytest.raises(InvalidParameter, match="too many levels"):
        ctx.real("loop")
