"""A container's files: `docker cp` (the archive endpoints), `export`, `diff`
and `commit`. All of it happens in the guest (the init's builtin programs);
the host only passes tar streams along. A stopped container is booted for
the purpose without its main process, as hbd's maintenance mode.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from hbd.drivers.agent import AgentError, ExitStatus, ProcessSpec
from hbd.drivers.flow import Drain, StreamQueue
from hbd.errors import Conflict, Forbidden, HbdError, InvalidParameter, NotFound, SystemError_
from hbd.services.container.model import Container
from hbd.services.container.sandbox import ContainerInGuest
from hbd.services.container.service import ContainerService
from hbd.services.image.commit import CommitRequest, committed_config
from hbd.services.image.model import Image, Layer
from hbd.services.image.reference import parse_reference, validate_tag
from hbd.services.scope import OPERATOR, Scope
from hbd.services.timefmt import rfc3339_nano
from hbd.tasks import spawn

log = logging.getLogger(__name__)

GO_MODE_DIR = 1 << 31
GO_MODE_SYMLINK = 1 << 27
GO_MODE_DEVICE = 1 << 26
GO_MODE_NAMED_PIPE = 1 << 25
GO_MODE_SOCKET = 1 << 24
GO_MODE_SETUID = 1 << 23
GO_MODE_SETGID = 1 << 22
GO_MODE_CHAR_DEVICE = 1 << 21
GO_MODE_STICKY = 1 << 20
NO_SUCH_FILE = 2


def go_file_mode(st_mode: int) -> int:
    """Go's os.FileMode for a Unix st_mode, which the stat header carries."""
    kind = st_mode & 0o170000
    mode = st_mode & 0o777
    mode |= {0o040000: GO_MODE_DIR, 0o120000: GO_MODE_SYMLINK, 0o010000: GO_MODE_NAMED_PIPE,
             0o140000: GO_MODE_SOCKET, 0o060000: GO_MODE_DEVICE,
             0o020000: GO_MODE_DEVICE | GO_MODE_CHAR_DEVICE}.get(kind, 0)
    if st_mode & 0o4000:
        mode |= GO_MODE_SETUID
    if st_mode & 0o2000:
        mode |= GO_MODE_SETGID
    if st_mode & 0o1000:
        mode |= GO_MODE_STICKY
    return mode


class _Pipe:
    """ProcessOutput of a builtin: stdout as a stream, stderr kept for errors.

    Its stdout queue is bounded: a client that reads a `docker cp` slowly
    makes the guest wait (hbd.drivers.flow); one that goes away releases it."""

    def __init__(self) -> None:
        self.chunks: StreamQueue[bytes] = StreamQueue()
        self.stderr = b""
        self.exited: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()

    def on_output(self, stream: int, data: bytes) -> Drain:
        if stream == 1:
            return self.chunks.put(data, len(data))
        if len(self.stderr) < 65536:
            self.stderr += data
        return None

    def on_output_eof(self, stream: int) -> None:
        if stream == 1:
            self.chunks.end()

    def on_exit(self, status: ExitStatus) -> None:
        self.chunks.end()
        if not self.exited.done():
            self.exited.set_result(status)

    def vanished(self) -> None:
        """The guest went away under the builtin: it ends as killed."""
        if not self.exited.done():
            self.stderr = b"the container's guest went away"
            self.on_exit(ExitStatus(137, 9, False))

    async def stdout(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.chunks.items():
                yield chunk
        finally:
            self.chunks.close()


async def _end_when_gone(guest: ContainerInGuest, pipe: _Pipe) -> None:
    await guest.wait_gone()
    pipe.vanished()


class ContainerFiles:
    def __init__(self, containers: ContainerService) -> None:
        self.containers = containers

    @contextlib.asynccontextmanager
    async def _guest(self, c: Container) -> AsyncIterator[ContainerInGuest]:
        """The container in its running guest, or in a guest for just this."""
        run = c.run
        if run is not None and c.state.running and not c.state.restarting:
            if c.state.paused:
                raise Conflict(f"Container {c.id} is paused, unpause the container first")
            yield run.guest
            return
        async with c.lock:
            if c.removing:
                raise Conflict(f"removal of container {c.id[:12]} is already in progress")
            if c.state.running:
                raise Conflict(f"Container {c.id} is starting; try again")
            guest = await self.containers.boot_maintenance(c)
            try:
                yield guest
            finally:
                await self.containers.end_maintenance(c, guest)

    async def _builtin(self, guest: ContainerInGuest, name: str, args: list[str],
                       stdin: bool = False) -> tuple[int, _Pipe]:
        proc = guest.take_proc()
        pipe = _Pipe()
        spec = ProcessSpec(proc=proc, args=args, env=["PATH=/bin"], builtin=name, stdin=stdin)
        try:
            await guest.start(spec, pipe)
        except AgentError as e:
            raise SystemError_(f"guest refused {name}: {e.message}") from e
        # A guest killed (or crashing) mid-copy ends the copy, not hangs it.
        watch = spawn(_end_when_gone(guest, pipe))
        pipe.exited.add_done_callback(lambda _: watch.cancel())
        return proc, pipe

    async def _finish(self, guest: ContainerInGuest, proc: int, pipe: _Pipe) -> int:
        status = await pipe.exited
        with contextlib.suppress(AgentError):
            await guest.release(proc)
        return status.exit_code

    # -- stat / get / put ----------------------------------------------------------

    async def stat(self, ref: str, path: str, scope: Scope = OPERATOR) -> dict[str, Any]:
        c = self.containers.get(scope.qualify(ref))
        async with self._guest(c) as guest:
            return await self._stat(guest, c, path)

    async def _stat(self, guest: ContainerInGuest, c: Container, path: str) -> dict[str, Any]:
        proc, pipe = await self._builtin(guest, "stat", [_absolute(path)])
        out = b"".join([chunk async for chunk in pipe.stdout()])
        code = await self._finish(guest, proc, pipe)
        if code == NO_SUCH_FILE:
            raise NotFound(f"Could not find the file {path} in container {c.name.lstrip('/')}")
        if code != 0:
            raise SystemError_(pipe.stderr.decode(errors="replace").strip() or "stat failed")
        raw: dict[str, Any] = json.loads(out)
        mtime = rfc3339_nano(int(raw["mtime"]) * 1_000_000_000 + int(raw.get("mtime_ns", 0)))
        return {"name": raw["name"], "size": raw["size"], "mode": go_file_mode(raw["mode"]),
                "mtime": mtime, "linkTarget": raw["linkTarget"]}

    @staticmethod
    def stat_header(stat: dict[str, Any]) -> str:
        return base64.b64encode(json.dumps(stat).encode()).decode()

    async def get_archive(self, ref: str, path: str, dir_contents: bool = False,
                          scope: Scope = OPERATOR
                          ) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
        """The stat of `path` and the tar stream of it, for GET /archive; with
        `dir_contents`, a directory's entries without the directory (COPY --from)."""
        c = self.containers.get(scope.qualify(ref))
        # The guest stays up until the stream is consumed (or abandoned).
        stack = contextlib.AsyncExitStack()
        try:
            guest = await stack.enter_async_context(self._guest(c))
            stat = await self._stat(guest, c, path)
            if dir_contents and stat["mode"] & GO_MODE_DIR:
                path = _absolute(path).rstrip("/") + "/."
            proc, pipe = await self._builtin(guest, "tar-create", [_absolute(path)])
        except BaseException:
            await stack.aclose()
            raise

        async def stream() -> AsyncIterator[bytes]:
            async with stack:
                async for chunk in pipe.stdout():
                    yield chunk
                if await self._finish(guest, proc, pipe) != 0:
                    # Cut short (its guest killed): the client must not take a
                    # truncated archive for a whole one.
                    raise SystemError_(pipe.stderr.decode(errors="replace").strip() or
                                       "copying from the container failed")

        return stat, stream()

    async def put_archive(self, ref: str, path: str, body: AsyncIterator[bytes],
                          copy_uid_gid: bool, no_overwrite_dir_non_dir: bool,
                          scope: Scope = OPERATOR) -> None:
        c = self.containers.get(scope.qualify(ref))
        if c.host_config.get("ReadonlyRootfs"):
            raise Forbidden("container rootfs is marked read-only")
        async with self._guest(c) as guest:
            stat = await self._stat(guest, c, path)
            if not stat["mode"] & GO_MODE_DIR:
                raise InvalidParameter("extraction point is not a directory")
            args = [_absolute(path), "keep-owners" if copy_uid_gid else "root-owners"]
            if no_overwrite_dir_non_dir:
                args.append("no-overwrite-dir-nondir")
            proc, pipe = await self._builtin(guest, "tar-extract", args, stdin=True)
            try:
                async for chunk in body:
                    await guest.write_stdin(proc, chunk)
            finally:
                with contextlib.suppress(AgentError):
                    await guest.close_stdin(proc)
            async for _ in pipe.stdout():
                pass
            code = await self._finish(guest, proc, pipe)
            if code != 0:
                message = pipe.stderr.decode(errors="replace").strip()
                if "cannot overwrite" in message:
                    raise InvalidParameter(message)
                raise SystemError_(message or "extracting the archive failed")

    # -- export / diff ------------------------------------------------------------

    async def export(self, ref: str, scope: Scope = OPERATOR) -> AsyncIterator[bytes]:
        c = self.containers.get(scope.qualify(ref))
        async with self._guest(c) as guest:
            proc, pipe = await self._builtin(guest, "tar-export", [])
            async for chunk in pipe.stdout():
                yield chunk
            code = await self._finish(guest, proc, pipe)
            if code != 0:
                raise SystemError_(pipe.stderr.decode(errors="replace") or "export failed")

    async def changes(self, ref: str, scope: Scope = OPERATOR) -> list[dict[str, Any]]:
        c = self.containers.get(scope.qualify(ref))
        async with self._guest(c) as guest:
            proc, pipe = await self._builtin(guest, "changes", [])
            out = b"".join([chunk async for chunk in pipe.stdout()])
            code = await self._finish(guest, proc, pipe)
        if code != 0:
            raise SystemError_(pipe.stderr.decode(errors="replace") or "diff failed")
        changes = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [{"Path": ch["path"], "Kind": ch["kind"]} for ch in changes]

    # -- commit -------------------------------------------------------------------

    async def commit(self, ref: str, repo: str, tag: str, comment: str, author: str,
                     pause: bool, config_overrides: dict[str, Any] | None,
                     changes: list[str], scope: Scope = OPERATOR) -> str:
        """A new image: the container's image plus a layer of its changes."""
        c = self.containers.get(scope.qualify(ref))
        store = self.containers.images
        base = store.images.get(c.image_id)
        if base is None:
            raise SystemError_(f"the image of container {c.id[:12]} is gone")
        target = None
        if repo:
            target = parse_reference(repo)
            if tag:
                validate_tag(tag)
                target = target.with_tag(tag)
            target = target.with_default_tag()
        # Pausing means freezing the container's cgroup in the guest while the
        # init (outside it) reads the changes; the VM itself keeps running.
        freeze = pause and c.state.running and not c.state.paused
        # The config first, as dockerd does: bad changes fail before any guest work.
        request = CommitRequest(comment, author, config_overrides, tuple(changes))
        config = committed_config(base, c.id, c.config, " ".join([c.path, *c.args]), request)
        async with self._guest(c) as guest:
            layer = await self._changes_layer(guest, freeze)
        config["rootfs"] = {"type": "layers",
                            "diff_ids": [*(x.diff_id for x in base.layers), layer.diff_id]}
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        image_id = store.blobs.put_bytes(config_bytes)
        # dockerd records the container's image as the commit's Parent.
        img = Image(id=image_id, config=config, layers=[*base.layers, layer], parent=base.id)
        digest = layer.digest
        with store.pinned([image_id, digest]):
            await store.ensure_disk(img)
            store.record_image(img, [target] if target else [], scope)
        store.events.publish("container", "commit", c.id, {"comment": comment,
                                                            "imageID": image_id,
                                                            "imageRef": target.familiar
                                                            if target else ""})
        return image_id


    async def _changes_layer(self, guest: ContainerInGuest, freeze: bool) -> Layer:
        """The container's changes as a layer blob in the image store."""
        store = self.containers.images
        proc, pipe = await self._builtin(guest, "tar-changes", ["freeze"] if freeze else [])
        writer = store.blobs.writer()
        diff = hashlib.sha256()
        size = 0
        try:
            async for chunk in pipe.stdout():
                writer.write(chunk)
                diff.update(chunk)
                size += len(chunk)
            code = await self._finish(guest, proc, pipe)
            if code != 0:
                raise SystemError_(pipe.stderr.decode(errors="replace") or "commit failed")
            digest = writer.commit()
        except BaseException:
            writer.abort()
            raise
        return Layer(digest, "sha256:" + diff.hexdigest(), size,
                     "application/vnd.docker.image.rootfs.diff.tar")

    # -- build --------------------------------------------------------------------

    async def layer(self, ref: str, copies: list[CopyIn] | None = None) -> Layer:
        """The layer a build step makes: a stopped container's changes (RUN),
        after copying tars into it first (COPY/ADD), all in one guest boot.
        The caller pins the blob until an image records it."""
        c = self.containers.get(ref)
        async with self._guest(c) as guest:
            for copy in copies or []:
                await self._copy_in(guest, copy)
            return await self._changes_layer(guest, freeze=False)

    async def layer_of_run(self, guest: ContainerInGuest) -> Layer:
        """The changes of a container whose main process just exited, from its
        guest before it leaves it (no second boot for a RUN step)."""
        return await self._changes_layer(guest, freeze=False)

    async def _copy_in(self, guest: ContainerInGuest, copy: CopyIn) -> None:
        args = [copy.dest, copy.mode, *([copy.owner] if copy.owner else [])]
        proc, pipe = await self._builtin(guest, "copy-in", args, stdin=True)

        async def feed() -> None:
            try:
                async for chunk in copy.body:
                    await guest.write_stdin(proc, chunk)
            finally:
                with contextlib.suppress(AgentError):
                    await guest.close_stdin(proc)
                close = getattr(copy.body, "aclose", None)
                if close is not None:  # a generator holding a guest (COPY --from)
                    await close()

        feeder = asyncio.ensure_future(feed())
        # A builtin that gives up early reads no more: stop feeding it then.
        waiting: set[asyncio.Future[Any]] = {feeder, pipe.exited}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not feeder.done():
            feeder.cancel()
        fed = (await asyncio.gather(feeder, return_exceptions=True))[0]
        async for _ in pipe.stdout():
            pass
        code = await self._finish(guest, proc, pipe)
        if isinstance(fed, HbdError):
            raise fed  # the source of the files failed (COPY --from)
        if code != 0:
            message = pipe.stderr.decode(errors="replace").strip()
            if message.startswith("unable to find"):
                raise InvalidParameter("unable to convert uid/gid chown string to host "
                                       f"mapping: {message}")
            raise InvalidParameter(f"failed to copy files: {message or 'copy-in failed'}")


@dataclass
class CopyIn:
    """Files for the guest's copy-in builtin (PROTOCOL.md §4): a tar stream."""
    dest: str
    mode: str  # dir | files | archive | file
    owner: str
    body: AsyncIterator[bytes]


def _absolute(path: str) -> str:
    return path if path.startswith("/") else "/" + path
