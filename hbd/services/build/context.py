"""The build context of the classic builder: the tar the client uploads.

It is read on the host, never extracted: its members are looked up by name,
`.dockerignore` hides some, and COPY/ADD get a fresh tar made of the chosen
members (owned by root, the guest's copy-in builtin sets the owners), plus a
digest of their content for the layer cache. The guest unpacks that tar into
the step's container (PROTOCOL.md §4, copy-in).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import posixpath
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from hbd.errors import InvalidParameter

CHUNK = 1024 * 1024
_MAGIC = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}


def _compression(head: bytes) -> str:
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return ""


def decompress_file(path: Path, out: Path) -> bool:
    """Write `path` decompressed to `out`; False when it was not compressed."""
    with open(path, "rb") as f:
        kind = _compression(f.read(6))
        if not kind:
            return False
        f.seek(0)
        try:
            with _decompressing(f, kind) as src, open(out, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise InvalidParameter(f"failed to decompress the build context: {e}") from e
    return True


def clean_path(name: str) -> str:
    """A context-relative path: no leading /, no `..` escaping the root; "" is the root."""
    return posixpath.normpath("/" + name).lstrip("/")


# -- .dockerignore (moby's patternmatcher) -----------------------------------------


@dataclass
class _Pattern:
    regex: re.Pattern[str]
    exclusion: bool
    parts: int


def _compile(pattern: str) -> re.Pattern[str]:
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 1
                if i + 1 < len(pattern) and pattern[i + 1] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise InvalidParameter(f"syntax error in pattern {pattern!r}")
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out += "[" + body.replace("\\", "\\\\") + "]"
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


class IgnoreMatcher:
    """`.dockerignore`: the last matching pattern decides; `!` re-includes."""

    def __init__(self, text: str) -> None:
        self.patterns: list[_Pattern] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
            line = posixpath.normpath(line).lstrip("/") if line not in ("", "/") else "."
            if not line:
                continue
            self.patterns.append(_Pattern(_compile(line), exclusion, line.count("/") + 1))

    def excluded(self, path: str) -> bool:
        parts = path.split("/")
        matched = False
        for p in self.patterns:
            hit = bool(p.regex.match(path))
            if not hit and len(parts) > 1:
                # A pattern matching a parent directory covers what is inside it.
                for n in range(1, len(parts)):
                    if p.regex.match("/".join(parts[:n])):
                        hit = True
                        break
            if hit:
                matched = not p.exclusion
        return matched


# -- the context -----------------------------------------------------------------


@dataclass
class Entry:
    name: str  # context-relative, clean
    info: tarfile.TarInfo | None  # None: a directory only implied by its contents

    @property
    def is_dir(self) -> bool:
        return self.info is None or self.info.isdir()


class BuildContext:
    """The members of a context tar, by clean name, with `.dockerignore` applied."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Entry] = {}
        self.tar: tarfile.TarFile | None = None
        self.plain_dockerfile: bytes | None = None
        if not tarfile.is_tarfile(path):
            # Not a tar: the body is the Dockerfile itself (`docker build - < Dockerfile`).
            self.plain_dockerfile = path.read_bytes()
            return
        try:
            self.tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by close()
            members = self.tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise InvalidParameter(f"failed to read the build context: {e}") from e
        for m in members:
            name = clean_path(m.name)
            if not name or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                continue
            self.entries[name] = Entry(name, m)
            parent = posixpath.dirname(name)
            while parent and parent not in self.entries:
                self.entries[parent] = Entry(parent, None)
                parent = posixpath.dirname(parent)
        self.ignore = IgnoreMatcher("")

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()

    def read(self, name: str, limit: int = 64 * 1024 * 1024) -> bytes | None:
        """A regular file's content (Dockerfile, .dockerignore), or None."""
        if self.plain_dockerfile is not None:
            return self.plain_dockerfile if name == "Dockerfile" else None
        entry = self.entries.get(clean_path(name))
        if entry is None or entry.info is None or self.tar is None:
            return None
        if not (entry.info.isfile() or entry.info.islnk()):
            return None
        f = self.tar.extractfile(entry.info)
        if f is None:
            return None
        with f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise InvalidParameter(f"{name} is too large")
        return data

    def set_ignore(self, text: str) -> None:
        self.ignore = IgnoreMatcher(text)

    def visible(self, name: str) -> bool:
        return name in self.entries and not self.ignore.excluded(name)

    def resolve(self, source: str, keyword: str) -> list[str]:
        """The context paths a COPY/ADD source names (wildcards allowed); "" is the root."""
        name = clean_path(source)
        if any(ch in name for ch in "*?["):
            regex = _compile(name)
            found = sorted(n for n in self.entries if regex.match(n) and self.visible(n))
            if not found:
                raise InvalidParameter(f"{keyword} failed: no source files were specified")
            return found
        real = self.real(name)
        if name == "" or (not self.ignore.excluded(name) and
                          (real == "" or self.visible(real))):
            return [name]
        raise InvalidParameter(f"{keyword} failed: file not found in build context or "
                               f"excluded by .dockerignore: stat {source}: file does not exist")

    def real(self, name: str) -> str:
        """`name` with its symlinks followed, as COPY follows a source's links;
        inside the context (an absolute link starts at its root, `..` stops there)."""
        parts = [p for p in name.split("/") if p]
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            entry = self.entries.get("/".join([*done, part]))
            if entry is not None and entry.info is not None and entry.info.issym():
                hops += 1
                if hops > 40:
                    raise InvalidParameter(f"too many levels of symbolic links: {name}")
                target = entry.info.linkname
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p] + parts
                continue
            done.append(part)
        return "/".join(done)

    def is_dir(self, name: str) -> bool:
        real = self.real(name)
        return real == "" or self.entries[real].is_dir

    def under(self, directory: str) -> list[Entry]:
        """Everything below a directory (not itself), parents before children."""
        prefix = directory + "/" if directory else ""
        return sorted((e for n, e in self.entries.items()
                       if n.startswith(prefix) and n != directory and self.visible(n)),
                      key=lambda e: e.name)

    def open_member(self, info: tarfile.TarInfo) -> IO[bytes]:
        if self.tar is None:
            raise InvalidParameter("the build context is not an archive")
        f = self.tar.extractfile(info)
        if f is None:
            return io.BytesIO(b"")
        return f

    def is_archive(self, name: str) -> bool:
        """ADD's test: a (possibly compressed) tar."""
        entry = self.entries.get(self.real(name))
        if entry is None or entry.info is None or not entry.info.isfile():
            return False
        with self.open_member(entry.info) as f:
            head = f.read(6)
            kind = _compression(head)
            f.seek(0)
            try:
                with _decompressing(f, kind) as raw:
                    block = raw.read(512)
            except (OSError, EOFError, lzma.LZMAError):
                return False
        if len(block) < 512:
            return False
        try:
            tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return False
        return True

    def write_archive(self, name: str, out: IO[bytes]) -> str:
        """ADD of a local archive: the tar decompressed; returns its digest."""
        entry = self.entries[self.real(name)]
        assert entry.info is not None
        digest = hashlib.sha256()
        with self.open_member(entry.info) as f:
            kind = _compression(f.read(6))
            f.seek(0)
            try:
                with _decompressing(f, kind) as raw:
                    while chunk := raw.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except (OSError, EOFError, lzma.LZMAError) as e:
                raise InvalidParameter(f"ADD failed: cannot decompress {name}: {e}") from e
        return digest.hexdigest()


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _decompressing(f: IO[bytes], kind: str) -> contextlib.AbstractContextManager[_Reader]:
    if kind == "gz":
        return gzip.GzipFile(fileobj=f, mode="rb")
    if kind == "bz2":
        return bz2.BZ2File(f, "rb")
    if kind == "xz":
        return lzma.LZMAFile(f, "rb")
    return contextlib.nullcontext(f)


@dataclass
class CopyItem:
    """One member of a COPY tar: what it is called there, and where it comes from."""
    arcname: str
    entry: Entry


def copy_items(ctx: BuildContext, sources: Iterable[str], single_file_name: str = ""
               ) -> list[CopyItem]:
    """The tar members for COPY of these context paths into a directory: a
    directory's content, a file under its own name (or `single_file_name`)."""
    items: list[CopyItem] = []
    for source in sources:
        real = ctx.real(source)
        if ctx.is_dir(real):
            for e in ctx.under(real):
                rel = e.name[len(real) + 1:] if real else e.name
                items.append(CopyItem(rel, e))
        else:
            items.append(CopyItem(single_file_name or posixpath.basename(source),
                                  ctx.entries[real]))
    return items


def write_copy_tar(ctx: BuildContext, items: list[CopyItem], out: IO[bytes]) -> str:
    """Write the COPY tar; returns the digest of names, modes and contents (not
    times or owners: the layer cache's notion of "the same files")."""
    digest = hashlib.sha256()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for item in items:
            src = item.entry.info
            info = tarfile.TarInfo(item.arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = int(src.mtime) if src is not None else 0
            if src is None or src.isdir():
                info.type = tarfile.DIRTYPE
                info.mode = src.mode if src is not None else 0o755
                digest.update(f"d {item.arcname} {info.mode:o}\n".encode())
                tar.addfile(info)
            elif src.issym():
                info.type = tarfile.SYMTYPE
                info.linkname = src.linkname
                info.mode = src.mode
                digest.update(f"l {item.arcname} {src.linkname}\n".encode())
                tar.addfile(info)
            else:  # a regular file, or a hard link read as the file it links to
                info.type = tarfile.REGTYPE
                info.mode = src.mode
                with ctx.open_member(src) as f:
                    data_hash = hashlib.sha256()
                    spool = _HashingReader(f, data_hash)
                    info.size = src.size if src.isfile() else _size_of(ctx, src)
                    tar.addfile(info, spool)
                digest.update(f"f {item.arcname} {info.mode:o} {data_hash.hexdigest()}\n"
                              .encode())
    return digest.hexdigest()


def _size_of(ctx: BuildContext, info: tarfile.TarInfo) -> int:
    with ctx.open_member(info) as f:
        size = 0
        while chunk := f.read(CHUNK):
            size += len(chunk)
        return size


class _HashingReader:
    def __init__(self, f: IO[bytes], digest: hashlib._Hash) -> None:
        self.f = f
        self.digest = digest

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.digest.update(data)
        return data
