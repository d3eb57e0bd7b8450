"""Apply image layers to a directory tree, treating every tar as hostile.

No write may land outside `root`. Every operation is relative to a directory
file descriptor reached from `root` one component at a time with O_NOFOLLOW;
symlinks met in a parent path are resolved *inside* root, as if root were the
real root (what dockerd gets by unpacking in a chroot), so a symlink planted
by an earlier entry (`a -> /etc`) cannot carry a later one (`a/passwd`) out.
Whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`) follow the
OCI layer spec; overwrite rules follow moby's archive.UnpackLayer.

Contract with the caller: unpack into a fresh directory and delete it if
this raises; a failed layer may be half applied.

Device nodes are created as the layer says: the tree is only ever packed
into an ext4 image that a guest mounts, never used on the host.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Protocol

import zstandard

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
MAX_SYMLINK_HOPS = 40
COPY_CHUNK = 1024 * 1024


class LayerError(ValueError):
    pass


@dataclass
class UnpackLimits:
    max_bytes: int = 64 * 1024**3
    max_entries: int = 2_000_000
    max_path_len: int = 4096


@dataclass
class LayerStats:
    entries: int = 0
    bytes: int = 0


GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Most bytes one step of an inflater hands out: a few bytes of a hostile
# stream can stand for gigabytes (zstd packs 128 KiB into 4 bytes, 32768:1).
INFLATE_PIECE = 16 * 1024 * 1024
ZSTD_SLICE = INFLATE_PIECE // 32768


class Inflater(Protocol):
    """Decompresses a layer fed in chunks of any size, in pieces of at most
    INFLATE_PIECE bytes. Members (gzip) or frames (zstd, skippable ones too)
    one after another are one stream, as Go's readers that dockerd and
    containerd use take them. Raises LayerError on data that is not valid."""

    kind: str

    def pieces(self, data: bytes) -> Iterator[bytes]: ...

    @property
    def eof(self) -> bool:
        """The data so far ends where a member or frame ends (else truncated)."""
        ...


class GzipInflater:
    kind = "gzip"

    def __init__(self) -> None:
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)

    @property
    def eof(self) -> bool:
        return self._z.eof

    def pieces(self, data: bytes) -> Iterator[bytes]:
        more = bool(data)
        try:
            while more:
                if self._z.eof:  # another member follows
                    self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out = self._z.decompress(data, INFLATE_PIECE)
                data = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
                if out:
                    yield out
                # A full piece may leave output inside zlib with no input left.
                more = bool(data) or (len(out) == INFLATE_PIECE and not self._z.eof)
        except zlib.error as e:
            raise LayerError(f"not valid gzip: {e}") from None


class ZstdInflater:
    kind = "zstd"

    def __init__(self) -> None:
        self._dctx = zstandard.ZstdDecompressor()
        self._z = self._dctx.decompressobj()

    @property
    def eof(self) -> bool:
        return self._z.eof

    def pieces(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        try:
            # decompressobj has no output bound: feed it little at a time.
            while view:
                step, view = view[:ZSTD_SLICE], view[ZSTD_SLICE:]
                while step:
                    if self._z.eof:  # another frame follows
                        self._z = self._dctx.decompressobj()
                    out = self._z.decompress(step)
                    step = memoryview(self._z.unused_data) if self._z.eof else memoryview(b"")
                    if out:
                        yield out
        except zstandard.ZstdError as e:
            raise LayerError(f"not valid zstd: {e}") from None


def inflater_for_media_type(media_type: str) -> Inflater | None:
    """The inflater for a layer of this media type; None: an uncompressed tar."""
    if "zstd" in media_type:
        return ZstdInflater()
    if "gzip" in media_type:
        return GzipInflater()
    return None


def inflater_for_head(head: bytes) -> Inflater | None:
    """The inflater for a stream that starts with `head` (4 bytes or more)."""
    if head.startswith(ZSTD_MAGIC):
        return ZstdInflater()
    if head.startswith(GZIP_MAGIC):
        return GzipInflater()
    return None


def _open_stream(blob: BinaryIO) -> IO[bytes]:
    head = blob.read(4)
    blob.seek(0)
    if head.startswith(ZSTD_MAGIC):
        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(
            blob, read_across_frames=True, closefd=False)
        return reader
    # Plain, or one that tarfile's stream mode decompresses itself (gzip,
    # bzip2, xz).
    return blob


def _clean(name: str, limits: UnpackLimits) -> list[str]:
    """Tar member name -> path components inside root ('..' clamped at root)."""
    if len(name) > limits.max_path_len:
        raise LayerError(f"path longer than {limits.max_path_len} bytes")
    if "\0" in name:
        raise LayerError("path with a NUL byte")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return parts


class _Tree:
    """Directory handles inside one root, never leaving it."""

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.root_fd)

    def resolve(self, parts: list[str], create: bool) -> list[str]:
        """The real directory path (no symlinks) that `parts` names inside root."""
        resolved: list[str] = []
        pending = list(parts)
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            fd = self.open_dir(resolved)
            try:
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise LayerError("too many levels of symbolic links")
                    target = os.readlink(part, dir_fd=fd)
                    if target.startswith("/"):
                        resolved = []
                    pending = target.split("/") + pending
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    if not create:
                        raise NotADirectoryError(errno.ENOTDIR, "not a directory", part)
                    # A file where a layer needs a directory: the layer wins.
                    os.unlink(part, dir_fd=fd)
                    os.mkdir(part, 0o755, dir_fd=fd)
                resolved.append(part)
            finally:
                os.close(fd)
        return resolved

    def open_dir(self, real: list[str]) -> int:
        """Open an already resolved directory path, refusing any symlink."""
        fd = os.dup(self.root_fd)
        for part in real:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            finally:
                os.close(fd)
            fd = nxt
        return fd

    @contextlib.contextmanager
    def parent(self, parts: list[str], create: bool = True) -> Iterator[tuple[int, str]]:
        real = self.resolve(parts[:-1], create=create)
        fd = self.open_dir(real)
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)


def _remove(fd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=fd)
    else:
        os.unlink(name, dir_fd=fd)


def _copy(src: IO[bytes], fd: int, size: int, stats: LayerStats, limits: UnpackLimits) -> None:
    remaining = size
    while remaining > 0:
        chunk = src.read(min(COPY_CHUNK, remaining))
        if not chunk:
            raise LayerError("layer ends inside a file")
        stats.bytes += len(chunk)
        if stats.bytes > limits.max_bytes:
            raise LayerError(f"layer unpacks to more than {limits.max_bytes} bytes")
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
        remaining -= len(chunk)


def _set_xattrs(fd: int, name: str, member: tarfile.TarInfo) -> None:
    xattrs = {k[len("SCHILY.xattr."):]: v for k, v in member.pax_headers.items()
              if k.startswith("SCHILY.xattr.")}
    if not xattrs or not (member.isreg() or member.isdir()):
        return  # user.* xattrs exist only on files and directories
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if member.isdir() else 0)
    target = os.open(name, flags, dir_fd=fd)
    try:
        for key, value in xattrs.items():
            with contextlib.suppress(OSError):  # one the host refuses is not fatal
                os.setxattr(target, key, value.encode("utf-8", "surrogateescape"))
    finally:
        os.close(target)


def _apply_metadata(fd: int, name: str, member: tarfile.TarInfo) -> None:
    os.chown(name, member.uid, member.gid, dir_fd=fd, follow_symlinks=False)
    if not member.issym():
        # After chown, which clears set-id bits.
        os.chmod(name, stat.S_IMODE(member.mode), dir_fd=fd)
    _set_xattrs(fd, name, member)
    mtime_ns = int(member.mtime * 1_000_000_000)
    os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)


def unpack_layer(blob: BinaryIO | Path, root: Path,
                 limits: UnpackLimits | None = None) -> LayerStats:
    limits = limits or UnpackLimits()
    if isinstance(blob, Path):
        with open(blob, "rb") as f:
            return unpack_layer(f, root, limits)
    stats = LayerStats()
    tree = _Tree(root)
    unpacked: set[tuple[str, ...]] = set()
    dir_times: list[tuple[list[str], tarfile.TarInfo]] = []
    try:
        stream = _open_stream(blob)
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                stats.entries += 1
                if stats.entries > limits.max_entries:
                    raise LayerError(f"layer has more than {limits.max_entries} entries")
                parts = _clean(member.name, limits)
                if not parts:
                    continue  # the root itself
                base = parts[-1]
                if base == OPAQUE_MARKER:
                    _opaque(tree, parts[:-1], unpacked)
                    continue
                if base.startswith(WHITEOUT_PREFIX):
                    target = base[len(WHITEOUT_PREFIX):]
                    if target in ("", ".", ".."):
                        raise LayerError(f"invalid whiteout {member.name!r}")
                    with contextlib.suppress(FileNotFoundError, NotADirectoryError), \
                            tree.parent([*parts[:-1], target], create=False) as (fd, name):
                        _remove(fd, name)
                    continue
                _apply_entry(tree, parts, member, tar, stats, limits)
                unpacked.add(tuple(parts))
                if member.isdir():
                    dir_times.append((parts, member))
        for parts, member in reversed(dir_times):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError), \
                    tree.parent(parts, create=False) as (fd, name):
                mtime_ns = int(member.mtime * 1_000_000_000)
                os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)
    except LayerError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, zstandard.ZstdError, OSError,
            ValueError) as e:
        raise LayerError(f"invalid layer: {e}") from e
    finally:
        tree.close()
    return stats


def _opaque(tree: _Tree, dir_parts: list[str], unpacked: set[tuple[str, ...]]) -> None:
    """Hide lower layers' content of a directory; keep what this layer added."""
    try:
        real = tree.resolve(dir_parts, create=True)
    except NotADirectoryError:
        return
    fd = tree.open_dir(real)
    try:
        for name in os.listdir(fd):
            if (*dir_parts, name) not in unpacked:
                _remove(fd, name)
    finally:
        os.close(fd)


def _apply_entry(tree: _Tree, parts: list[str], member: tarfile.TarInfo,
                 tar: tarfile.TarFile, stats: LayerStats, limits: UnpackLimits) -> None:
    with tree.parent(parts) as (fd, name):
        try:
            existing = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
            _remove(fd, name)
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(name, 0o755, dir_fd=fd)
        elif member.isreg():
            if member.size > limits.max_bytes:
                raise LayerError(f"layer unpacks to more than {limits.max_bytes} bytes")
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                          os.O_CLOEXEC, 0o600, dir_fd=fd)
            try:
                source = tar.extractfile(member)
                _copy(source or io.BytesIO(), out, member.size, stats, limits)
            finally:
                os.close(out)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=fd)
        elif member.islnk():
            _hard_link(tree, member, fd, name, limits)
            return  # a hard link shares its target's metadata
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                     dir_fd=fd)
        elif member.isfifo():
            os.mkfifo(name, 0o600, dir_fd=fd)
        else:
            raise LayerError(f"{member.name}: unsupported tar entry type {member.type!r}")
        _apply_metadata(fd, name, member)


def _hard_link(tree: _Tree, member: tarfile.TarInfo, fd: int, name: str,
               limits: UnpackLimits) -> None:
    target_parts = _clean(member.linkname, limits)
    if not target_parts:
        raise LayerError(f"{member.name}: hard link to the root")
    try:
        with tree.parent(target_parts, create=False) as (target_fd, target_name):
            st = os.stat(target_name, dir_fd=target_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise LayerError(f"{member.name}: hard link to a directory")
            os.link(target_name, name, src_dir_fd=target_fd, dst_dir_fd=fd,
                    follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        raise LayerError(f"{member.name}: hard link to missing {member.linkname!r}") from None


def flatten_layers(blobs: list[Path], root: Path, limits: UnpackLimits | None = None
                   ) -> LayerStats:
    total = LayerStats()
    for blob in blobs:
        stats = unpack_layer(blob, root, limits)
        total.entries += stats.entries
        total.bytes += stats.bytes
    return total
