"""`docker pull` and `docker push`: images between the store and registries.

Both report progress as dockerd's JSON message stream (jsonmessage), so the
CLI draws its usual progress bars. A pull stores nothing it has not checked:
each blob against its digest as it streams in, each layer's uncompressed
content against the config's diff_ids, and the image is only recorded once
its disk is built.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from hbd.errors import HbdError, InvalidParameter, NotFound, Unauthorized
from hbd.services.image.archive import OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from hbd.services.image.blobs import DigestMismatch
from hbd.services.image.layers import LayerError, inflater_for_media_type
from hbd.services.image.model import Image, Layer
from hbd.services.image.owners import owned_key, split_owned
from hbd.services.image.reference import Reference, parse_reference
from hbd.services.image.registry import (
    MEDIA_CONFIG_V1,
    MEDIA_LAYER_GZIP,
    MEDIA_MANIFEST_LIST,
    MEDIA_MANIFEST_V2,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    Credentials,
    Manifest,
    RegistryClient,
    RegistryError,
    Session,
    sha256_digest,
)
from hbd.services.image.store import ImageStore
from hbd.services.scope import OPERATOR, Scope

log = logging.getLogger(__name__)

PARALLEL_DOWNLOADS = 3
PARALLEL_UPLOADS = 5
COMPRESSED = ("gzip", "zstd")


def short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}"


def progress(status: str, ident: str, current: int = 0, total: int = 0) -> dict[str, Any]:
    """A jsonmessage with dockerd's text progress bar beside the numbers."""
    message: dict[str, Any] = {"status": status, "progressDetail": {}, "id": ident}
    if total > 0:
        width = 50
        done = min(width, int(width * current / total))
        bar = "=" * done + (">" if done < width else "") + " " * (width - done - 1)
        message["progressDetail"] = {"current": current, "total": total}
        message["progress"] = f"[{bar[:width]}] {_size(current):>8}/{_size(total)}"
    return message


@dataclass
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        if not text:
            return cls()
        parts = text.split("/")
        if len(parts) < 2 or len(parts) > 3:
            raise InvalidParameter(f"invalid platform: {text}")
        return cls(parts[0], {"x86_64": "amd64", "x86-64": "amd64"}.get(parts[1], parts[1]),
                   parts[2] if len(parts) == 3 else "")

    def matches(self, entry: dict[str, Any]) -> bool:
        plat = entry.get("platform") or {}
        return (plat.get("os") == self.os and plat.get("architecture") == self.architecture
                and (not self.variant or plat.get("variant", "") == self.variant))


class Distribution:
    def __init__(self, store: ImageStore, client: RegistryClient) -> None:
        self.store = store
        self.client = client
        self._pull_locks: dict[str, asyncio.Lock] = {}

    # -- pull ----------------------------------------------------------------------

    async def _manifest(self, ref: Reference, credentials: Credentials
                        ) -> tuple[Session, Manifest]:
        target = ref.digest or ref.tag or "latest"
        last: HbdError | None = None
        for session in await self.client.sessions(ref, credentials, "pull"):
            try:
                return session, await session.get_manifest(target)
            except (NotFound, Unauthorized, RegistryError) as e:
                last = e  # a mirror may lack it: try the next endpoint
        assert last is not None
        if isinstance(last, NotFound):
            raise NotFound(f"manifest for {ref.familiar} not found: manifest unknown: "
                           "manifest unknown")
        if isinstance(last, Unauthorized):
            raise NotFound(f"pull access denied for {ref.familiar_name}, repository does not "
                           "exist or may require 'docker login': denied: requested access to "
                           "the resource is denied")
        raise last

    async def _platform_manifest(self, session: Session, manifest: Manifest,
                                 platform: Platform) -> Manifest:
        if manifest.media_type not in (MEDIA_MANIFEST_LIST, MEDIA_OCI_INDEX) and \
                "manifests" not in manifest.document:
            return manifest
        for entry in manifest.document.get("manifests") or []:
            if isinstance(entry, dict) and platform.matches(entry):
                return await session.get_manifest(str(entry["digest"]))
        raise NotFound(f"no matching manifest for {platform.os}/{platform.architecture} in "
                       "the manifest list entries")

    async def pull(self, ref: Reference, platform: Platform, credentials: Credentials,
                   scope: Scope = OPERATOR) -> AsyncIterator[dict[str, Any]]:
        """Progress messages; raises before the first one if the image is not there.

        The registry is always asked for the manifest with the asker's own
        credentials, even when the image is here already (another tenant's
        pull): only an asker the registry lets read it reuses the local
        content, so a private image does not leak from one tenant to another
        through the cache."""
        if not ref.digest:
            ref = ref.with_default_tag()
        session, listed = await self._manifest(ref, credentials)
        manifest = await self._platform_manifest(session, listed, platform)
        lock = self._pull_locks.setdefault(listed.digest, asyncio.Lock())
        async with lock:
            try:
                async for message in self._pull_manifest(ref, session, listed, manifest,
                                                         scope):
                    yield message
            except BaseException:
                # Blobs that arrived before the failure belong to no image.
                self.store.collect_garbage()
                raise

    async def _pull_manifest(self, ref: Reference, session: Session, listed: Manifest,
                             manifest: Manifest, scope: Scope
                             ) -> AsyncIterator[dict[str, Any]]:
        doc = manifest.document
        config_desc = doc.get("config") or {}
        layer_descs = doc.get("layers") or []
        if not isinstance(config_desc, dict) or not config_desc.get("digest") or \
                not isinstance(layer_descs, list):
            raise RegistryError("malformed manifest: no config or layers")
        yield {"status": f"Pulling from {ref.familiar_name}", "id": ref.tag or ref.digest}
        repo_digest = Reference(ref.domain, ref.path, digest=listed.digest)
        tags = [ref] if ref.tag else []
        config_digest = str(config_desc["digest"])
        existing = self.store.images.get(config_digest)
        if existing is not None and all(self.store.blobs.has(layer.digest)
                                        for layer in existing.layers):
            before = list(existing.repo_tags)
            self.store.record_image(existing, [*tags, repo_digest], scope)
            yield {"status": f"Digest: {listed.digest}"}
            fresh = owned_key(ref.with_default_tag(), scope.project) not in before \
                if ref.tag else False
            yield {"status": ("Status: Downloaded newer image for " if fresh else
                              "Status: Image is up to date for ") + ref.familiar}
            return
        with self.store.pinned([config_digest] + [str(d.get("digest")) for d in layer_descs]):
            config_bytes = await self._fetch_small_blob(session, config_digest)
            try:
                config = json.loads(config_bytes)
                diff_ids = list(config["rootfs"]["diff_ids"])
            except (ValueError, KeyError, TypeError):
                raise RegistryError("malformed image config") from None
            if len(diff_ids) != len(layer_descs):
                raise RegistryError("image config and manifest disagree on layers")
            queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
            source = f"{ref.domain}/{ref.path}"

            async def one(i: int, desc: dict[str, Any]) -> Layer:
                return await self._pull_layer(session, desc, diff_ids[i], source, queue)

            for desc in layer_descs:
                queue.put_nowait(progress("Pulling fs layer", short(str(desc.get("digest")))))
            downloads = asyncio.ensure_future(_bounded(PARALLEL_DOWNLOADS, [
                one(i, d) for i, d in enumerate(layer_descs)]))
            downloads.add_done_callback(lambda _: queue.put_nowait(None))
            while (message := await queue.get()) is not None:
                yield message
            layers = downloads.result()
            img = Image(id=config_digest, config=config, layers=layers)
            for layer in layers:
                yield progress("Extracting", short(layer.digest))
            await self.store.ensure_disk(img)
            for layer in layers:
                yield progress("Pull complete", short(layer.digest))
            self.store.record_image(img, [*tags, repo_digest], scope)
        self.store.events.publish("image", "pull", img.id, {"name": scope.qualify(ref.familiar)})
        yield {"status": f"Digest: {listed.digest}"}
        yield {"status": f"Status: Downloaded newer image for {ref.familiar}"}

    async def _fetch_small_blob(self, session: Session, digest: str) -> bytes:
        data = bytearray()
        async for chunk in session.blob_stream(digest):
            data += chunk
            if len(data) > 16 * 1024 * 1024:
                raise RegistryError(f"blob {digest} is too large for a config")
        if sha256_digest(bytes(data)) != digest:
            raise RegistryError(f"digest mismatch for {digest}: the registry sent other bytes")
        return self.store.blobs.read_bytes(self.store.blobs.put_bytes(bytes(data), digest))

    async def _pull_layer(self, session: Session, desc: dict[str, Any], diff_id: str,
                          source: str, queue: asyncio.Queue[dict[str, Any] | None]) -> Layer:
        digest = str(desc.get("digest"))
        media = str(desc.get("mediaType") or MEDIA_LAYER_GZIP)
        total = int(desc.get("size") or 0)
        ident = short(digest)
        known = next((layer for img in self.store.images.values() for layer in img.layers
                      if layer.digest == digest), None)
        if known is not None and self.store.blobs.has(digest):
            queue.put_nowait(progress("Already exists", ident))
            return Layer(digest, known.diff_id, known.size, known.media_type,
                         sorted({*known.sources, source}))
        writer = self.store.blobs.writer()
        diff = hashlib.sha256()
        inflater = inflater_for_media_type(media)
        size = 0
        received = 0
        last_report = 0
        try:
            async for chunk in session.blob_stream(digest):
                writer.write(chunk)
                received += len(chunk)
                for raw in inflater.pieces(chunk) if inflater else (chunk,):
                    diff.update(raw)
                    size += len(raw)
                    if size > self.store.limits.max_bytes:
                        raise RegistryError(f"layer {digest} unpacks beyond the size limit")
                if received - last_report >= 512 * 1024 or received == total:
                    last_report = received
                    queue.put_nowait(progress("Downloading", ident, received, total))
            if inflater is not None and not inflater.eof:
                raise RegistryError(f"layer {digest} is truncated")
            queue.put_nowait(progress("Verifying Checksum", ident))
            writer.commit(digest)
        except DigestMismatch as e:
            raise RegistryError(f"filesystem layer verification failed for digest {digest}: "
                                f"{e}") from None
        except LayerError as e:  # from the inflater: "not valid gzip: ..."
            writer.abort()
            raise RegistryError(f"layer {digest} is {e}") from None
        except BaseException:
            writer.abort()
            raise
        if "sha256:" + diff.hexdigest() != diff_id:
            raise RegistryError(f"layer {digest}: content does not match diff_id {diff_id}")
        queue.put_nowait(progress("Download complete", ident))
        return Layer(digest, diff_id, size, media, [source])

    # -- push ----------------------------------------------------------------------

    async def push(self, name: str, tag: str, credentials: Credentials,
                   scope: Scope = OPERATOR) -> AsyncIterator[dict[str, Any]]:
        ref = parse_reference(name)
        if ref.digest:
            raise InvalidParameter("cannot push a digest reference")
        if tag:
            refs = [ref.with_tag(tag)]
        elif ref.tag:
            refs = [ref]
        else:
            refs = sorted({r for img in self.store.all_images(scope)
                           for r in map(lambda t: split_owned(t)[0],
                                        self.store.visible_refs(img, scope)[0])
                           if r.name == ref.name}, key=str)
        if not refs:
            raise NotFound(f"An image does not exist locally with the tag: {ref.familiar_name}")
        images = [(r, self.store.get(str(r), scope)) for r in refs]
        sessions = await self.client.sessions(refs[0], credentials, "push,pull")
        session = sessions[-1]  # never push to a mirror
        yield {"status": f"The push refers to repository [{ref.name}]"}
        for r, img in images:
            async for message in self._push_image(session, r, img, scope):
                yield message

    async def _push_image(self, session: Session, ref: Reference, img: Image, scope: Scope
                          ) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        target = f"{ref.domain}/{ref.path}"
        # zstd layers go as they are, which only an OCI manifest can say;
        # everything else as before: Docker's schema 2 with gzip layers.
        oci = any("zstd" in layer.media_type for layer in img.layers)
        for layer in reversed(img.layers):
            queue.put_nowait(progress("Preparing", short(layer.diff_id)))
        uploads = asyncio.ensure_future(_bounded(PARALLEL_UPLOADS, [
            self._push_layer(session, layer, target, queue, oci) for layer in img.layers]))
        uploads.add_done_callback(lambda _: queue.put_nowait(None))
        while (message := await queue.get()) is not None:
            yield message
        descriptors = uploads.result()
        for layer in img.layers:  # remembered for cross-repository mounts
            layer.sources = sorted({*layer.sources, target})
        config_bytes = self.store.blobs.read_bytes(img.id)
        if not await session.blob_exists(img.id):
            await session.upload_blob(img.id, len(config_bytes), lambda: _once(config_bytes))
        manifest_type = MEDIA_OCI_MANIFEST if oci else MEDIA_MANIFEST_V2
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": OCI_CONFIG if oci else MEDIA_CONFIG_V1,
                       "size": len(config_bytes), "digest": img.id},
            "layers": descriptors,
        }, indent=3).encode()
        digest = await session.put_manifest(ref.tag, manifest, manifest_type)
        self.store.record_image(img, [Reference(ref.domain, ref.path, digest=digest)], scope)
        self.store.events.publish("image", "push", img.id, {"name": scope.qualify(ref.familiar)})
        yield {"status": f"{ref.tag}: digest: {digest} size: {len(manifest)}"}
        yield {"progressDetail": {}, "aux": {"Tag": ref.tag, "Digest": digest,
                                             "Size": len(manifest)}}

    async def _gzip_layer(self, layer: Layer) -> Layer:
        """Registries get compressed layers: gzip an uncompressed one once, keep that;
        gzip and zstd ones go as they are."""
        if any(word in layer.media_type for word in COMPRESSED):
            return layer

        def compress() -> str:
            writer = self.store.blobs.writer()
            # zlib's gzip framing writes mtime 0: the same layer compresses to
            # the same blob every time, so registries see one digest.
            deflate = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            try:
                with self.store.blobs.open_verified(layer.digest) as src:
                    while chunk := src.read(1024 * 1024):
                        writer.write(deflate.compress(chunk))
                writer.write(deflate.flush())
                return writer.commit()
            except BaseException:
                writer.abort()
                raise

        digest = await asyncio.to_thread(compress)
        self.store.replace_layer_blob(layer.diff_id, digest, MEDIA_LAYER_GZIP)
        return Layer(digest, layer.diff_id, layer.size, MEDIA_LAYER_GZIP)

    async def _push_layer(self, session: Session, layer: Layer, target: str,
                          queue: asyncio.Queue[dict[str, Any] | None], oci: bool
                          ) -> dict[str, Any]:
        ident = short(layer.diff_id)
        layer = await self._gzip_layer(layer)
        size = self.store.blobs.path(layer.digest).stat().st_size
        if "zstd" in layer.media_type:
            media = OCI_LAYER_ZSTD
        else:
            media = OCI_LAYER_GZIP if oci else MEDIA_LAYER_GZIP
        descriptor = {"mediaType": media, "size": size, "digest": layer.digest}
        if await session.blob_exists(layer.digest):
            queue.put_nowait(progress("Layer already exists", ident))
            return descriptor
        registry = target.split("/", 1)[0]
        for source in layer.sources:
            host, _, repo = source.partition("/")
            if host == registry and source != target and \
                    await session.mount_blob(layer.digest, repo):
                queue.put_nowait(progress(f"Mounted from {repo}", ident))
                return descriptor
        queue.put_nowait(progress("Pushing", ident, 0, size))
        path = self.store.blobs.path(layer.digest)

        async def chunks() -> AsyncIterator[bytes]:
            sent = 0
            with open(path, "rb") as f:
                while chunk := await asyncio.to_thread(f.read, 1024 * 1024):
                    sent += len(chunk)
                    queue.put_nowait(progress("Pushing", ident, sent, size))
                    yield chunk

        await session.upload_blob(layer.digest, size, chunks)
        queue.put_nowait(progress("Pushed", ident))
        return descriptor


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _bounded(limit: int, jobs: list[Any]) -> list[Any]:
    """Run coroutines `limit` at a time. When one fails the others are cancelled
    and awaited before the error propagates: none may still be writing a blob
    when the caller cleans up after the failure."""
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Any) -> Any:
        async with semaphore:
            return await job

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(job)) for job in jobs]
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return [task.result() for task in tasks]
