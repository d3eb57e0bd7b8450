"""Image store: images, their tags, their layers and their guest disks.

An image is its config blob (the image ID is the config's digest) plus an
ordered list of layer blobs. Each image is flattened once into a read-only
ext4 disk, cached by the chain ID of its layers, which every container of
that image attaches. Tag and delete semantics follow dockerd's
daemon/images/image_delete.go.

Tags are their owner's and images have holders (owners.py): every call that
names, lists or changes images takes the asker's scope. A tenant finds its
own tags and images and the operator's (which it may use and tag, not
untag or remove); another tenant's are absent, and their events, container
users and space are none of its business. A tenant's rmi or prune lets go of
its tags and its hold; the content goes when nobody holds or uses it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from hbd.drivers import disks
from hbd.errors import Conflict, Forbidden, InvalidParameter, SystemError_, no_such_image
from hbd.events import EventBus
from hbd.services.filters import PruneFilter
from hbd.services.image import usage
from hbd.services.image.archive import (
    OCI_LAYER_ZSTD,
    ArchiveImage,
    ArchiveLayer,
    oci_layer_media_type,
    write_image_archive,
)
from hbd.services.image.blobs import BlobStore, DigestMismatch
from hbd.services.image.changes import apply_changes
from hbd.services.image.filters import ImageFilter
from hbd.services.image.layers import (
    Inflater,
    LayerError,
    UnpackLimits,
    flatten_layers,
    inflater_for_head,
)
from hbd.services.image.loadarchive import (
    GO_UNEXPECTED_EOF,
    ArchiveReader,
    archive_images,
    tar_error,
)
from hbd.services.image.model import Image, Layer, now_rfc3339, short_id
from hbd.services.image.owners import (
    OPERATOR_HOLDER,
    holder_of,
    own_key,
    owned_key,
    sees_key,
    sorted_shown,
    split_owned,
)
from hbd.services.image.reference import (
    Reference,
    is_full_id,
    looks_like_id_prefix,
    parse_reference,
    validate_tag,
)
from hbd.services.scope import OPERATOR, Scope
from hbd.services.timefmt import parse_rfc3339
from hbd.store import StateStore

log = logging.getLogger(__name__)

MEDIA_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CHUNK = 1024 * 1024


# The container service tells the image store which containers use an image:
# (container id, running) pairs, of those the scope sees. Injected so images
# do not depend on containers.
ContainerUsage = Callable[[str, Scope], list[tuple[str, bool]]]


@dataclass
class _Conflict:
    hard: bool
    message: str


def refused(what: str) -> Forbidden:
    """The operator's images are a read-only catalogue for tenants: refused
    in the words of the other tenant policy refusals (container/tenancy.py)."""
    return Forbidden(f"authorization denied by plugin hbd-tenancy: {what} is not allowed "
                     "for tenants")


def _delete_conflict(image_id: str, c: _Conflict) -> Conflict:
    force = "cannot be forced" if c.hard else "must be forced"
    return Conflict(f"conflict: unable to delete {short_id(image_id)} ({force}) - {c.message}")


class ImageStore:
    def __init__(self, state: StateStore, root: Path, events: EventBus,
                 limits: UnpackLimits | None = None) -> None:
        self.state = state
        self.root = root
        self.events = events
        self.limits = limits or UnpackLimits()
        self.blobs = BlobStore(root / "blobs")
        self.disk_dir = root / "disks"
        self.disk_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tmp_dir = root / "tmp"
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        # Layers are unpacked under here (with their owners and setuid bits):
        # no other user may reach them. The trees themselves keep 0755, their
        # root's mode becomes the image's / in the guest.
        self.tmp_dir.mkdir(mode=0o700, parents=True)
        os.chmod(self.tmp_dir, 0o700)
        os.chmod(self.disk_dir, 0o700)
        self.images: dict[str, Image] = {}
        self.refs: dict[str, str] = {}  # full normalized reference -> image id
        self.container_usage: ContainerUsage = lambda image_id, scope: []
        self._disk_locks: dict[str, asyncio.Lock] = {}
        # Held while blobs are staged for images not yet recorded, and by
        # garbage collection, so one never deletes what the other stages.
        self._store_lock = asyncio.Lock()
        self._pinned: collections.Counter[str] = collections.Counter()
        self._tmp_counter = 0
        self._load_state()

    # -- persistence -------------------------------------------------------

    def _load_state(self) -> None:
        for key, rec in self.state.load("images"):
            image_id = rec["id"]
            try:
                config = json.loads(self.blobs.read_bytes(image_id))
            except (OSError, ValueError) as e:
                log.error("dropping image %s: config blob unusable: %s", key, e)
                self.state.delete("images", key)
                continue
            img = Image(
                id=image_id,
                config=config,
                layers=[Layer(**layer) for layer in rec["layers"]],
                repo_tags=rec.get("repo_tags", []),
                repo_digests=rec.get("repo_digests", []),
                last_tag_time=rec.get("last_tag_time", ""),
                parent=rec.get("parent", ""),
                # Records from before tenants had images are the operator's.
                holders=list(rec.get("holders", [OPERATOR_HOLDER])),
            )
            self.images[image_id] = img
            for ref in img.repo_tags + img.repo_digests:
                self.refs[ref] = image_id

    def _save(self, img: Image) -> None:
        self.state.put("images", short_key(img.id), img.record())

    # -- lookup --------------------------------------------------------------

    def get(self, ref_or_id: str, scope: Scope = OPERATOR) -> Image:
        """GetImage: by ID, ID prefix, name[:tag] or name@digest, among the
        images the asker sees (a tenant's own tags first, then the operator's)."""
        text = ref_or_id
        if text.startswith("sha256:") and is_full_id(text[7:]):
            img = self.images.get(text)
            if img is None or not self.visible(img, scope):
                raise no_such_image(text)
            return img
        try:
            ref = parse_reference(text)
        except InvalidParameter:
            ref = None
        if ref is not None:
            image_id = self._ref_target(ref.with_default_tag(), scope)
            if image_id is not None:
                return self.images[image_id]
        if looks_like_id_prefix(text):
            prefix = text if text.startswith("sha256:") else "sha256:" + text
            matches = [i for i, img in self.images.items()
                       if i.startswith(prefix) and self.visible(img, scope)]
            if len(matches) == 1:
                return self.images[matches[0]]
        if ref is not None and not ref.digest:
            raise no_such_image(ref.with_default_tag().familiar)
        raise no_such_image(text)

    def _ref_target(self, ref: Reference, scope: Scope) -> str | None:
        """The image a reference names for the asker: its own tag, else the operator's."""
        if scope.is_tenant and (mine := self.refs.get(owned_key(ref, scope.project))):
            return mine
        return self.refs.get(str(ref))

    def visible(self, img: Image, scope: Scope) -> bool:
        """Whether the asker sees the image: the operator sees all, a tenant
        those it holds, the operator's, and those its containers use."""
        return (not scope.is_tenant or holder_of(scope) in img.holders or
                OPERATOR_HOLDER in img.holders or bool(self.container_usage(img.id, scope)))

    def visible_refs(self, img: Image, scope: Scope) -> tuple[list[str], list[str]]:
        """The image's tag and digest keys the asker sees."""
        return ([k for k in img.repo_tags if sees_key(k, scope)],
                [k for k in img.repo_digests if sees_key(k, scope)])

    def _seen_refs(self, img: Image, scope: Scope) -> list[str]:
        tags, digests = self.visible_refs(img, scope)
        return tags + digests

    def _own_refs(self, img: Image, scope: Scope) -> list[str]:
        """The keys the asker may untag: a tenant its own, the operator all."""
        keys = img.repo_tags + img.repo_digests
        return keys if not scope.is_tenant else [k for k in keys if own_key(k, scope)]

    def all_images(self, scope: Scope = OPERATOR) -> list[Image]:
        return sorted((img for img in self.images.values() if self.visible(img, scope)),
                      key=lambda i: i.created_unix, reverse=True)

    def _publish(self, action: str, img: Image, name: str, scope: Scope) -> None:
        """An image event, named so that /events shows it to its owner only."""
        self.events.publish("image", action, img.id, {"name": scope.qualify(name)})

    # -- tagging -------------------------------------------------------------

    def _add_ref(self, img: Image, ref: Reference, scope: Scope) -> None:
        full = owned_key(ref, scope.project)
        self._hold(img, scope)
        old_id = self.refs.get(full)
        if old_id == img.id:
            self._save(img)
            return
        if old_id is not None:
            old = self.images[old_id]
            old.repo_tags = [t for t in old.repo_tags if t != full]
            old.repo_digests = [t for t in old.repo_digests if t != full]
            self._save(old)
        self.refs[full] = img.id
        if ref.digest:
            img.repo_digests.append(full)
        else:
            img.repo_tags.append(full)
        img.last_tag_time = now_rfc3339()
        self._save(img)

    @staticmethod
    def _hold(img: Image, scope: Scope) -> None:
        if holder_of(scope) not in img.holders:
            img.holders.append(holder_of(scope))

    def tag(self, source: str, repo: str, tag: str, scope: Scope = OPERATOR) -> None:
        img = self.get(source, scope)
        if not repo:
            raise InvalidParameter("repository name must have at least one component")
        ref = parse_reference(repo)
        if ref.digest:
            raise InvalidParameter("refusing to create a tag with a digest reference")
        if tag:
            validate_tag(tag)
            ref = ref.with_tag(tag)
        ref = ref.with_default_tag()
        self._add_ref(img, ref, scope)
        self._publish("tag", img, ref.familiar, scope)

    def _remove_ref(self, full: str) -> None:
        image_id = self.refs.pop(full)
        img = self.images[image_id]
        img.repo_tags = [t for t in img.repo_tags if t != full]
        img.repo_digests = [t for t in img.repo_digests if t != full]
        self._save(img)

    def _untag(self, key: str, scope: Scope, records: list[dict[str, str]]) -> None:
        img = self.images[self.refs[key]]
        self._remove_ref(key)
        familiar = split_owned(key)[0].familiar
        records.append({"Untagged": familiar})
        self._publish("untag", img, familiar, scope)

    def _used_by_others(self, img: Image, scope: Scope) -> bool:
        """Whether containers the asker does not see use the image."""
        return scope.is_tenant and \
            len(self.container_usage(img.id, OPERATOR)) > len(self.container_usage(img.id, scope))

    # -- delete --------------------------------------------------------------

    def _check_conflict(self, img: Image, refs: list[str], scope: Scope, hard_only: bool
                        ) -> _Conflict | None:
        """What stops the asker removing the image: its containers using it,
        or (unless forced) `refs`, its tags in more than one repository."""
        users = self.container_usage(img.id, scope)
        running = [cid for cid, is_running in users if is_running]
        if running:
            return _Conflict(True, f"image is being used by running container {running[0][:12]}")
        if hard_only:
            return None
        if refs:
            return _Conflict(False, "image is referenced in multiple repositories")
        stopped = [cid for cid, is_running in users if not is_running]
        if stopped:
            return _Conflict(False, f"image is being used by stopped container {stopped[0][:12]}")
        return None

    @staticmethod
    def _single_repository(refs: list[str]) -> bool:
        repos = {split_owned(r)[0].name for r in refs}
        return len(repos) <= 1

    async def delete(self, ref_or_id: str, force: bool = False, scope: Scope = OPERATOR
                     ) -> list[dict[str, str]]:
        async with self._store_lock:
            return self._delete_locked(ref_or_id, force, scope)

    def _delete_locked(self, ref_or_id: str, force: bool, scope: Scope
                       ) -> list[dict[str, str]]:
        img = self.get(ref_or_id, scope)
        records: list[dict[str, str]] = []
        by_id = ref_or_id.startswith("sha256:") or (
            looks_like_id_prefix(ref_or_id) and img.id.startswith("sha256:" + ref_or_id))
        if not by_id:
            self._untag_by_name(img, ref_or_id, force, scope, records)
            if self._own_refs(img, scope):
                return records
        else:
            if scope.is_tenant and holder_of(scope) not in img.holders:
                raise refused(f"removing the operator's image {short_id(img.id)}")
            mine = self._own_refs(img, scope)
            if self._single_repository(self._seen_refs(img, scope)):
                conflict = self._check_conflict(img, [], scope, hard_only=force)
                if conflict is not None:
                    raise _delete_conflict(img.id, conflict)
                for key in list(mine):
                    self._untag(key, scope, records)
        conflict = self._check_conflict(img, self._own_refs(img, scope), scope,
                                        hard_only=force)
        if conflict is not None:
            raise _delete_conflict(img.id, conflict)
        for key in list(self._own_refs(img, scope)):
            self._remove_ref(key)
            records.append({"Untagged": split_owned(key)[0].familiar})
        self._let_go(img, scope, records, outright=by_id)
        return records

    def _untag_by_name(self, img: Image, name: str, force: bool, scope: Scope,
                       records: list[dict[str, str]]) -> None:
        """rmi NAME: the asker's tag goes (with its digests of the same
        repository once it was the repository's last tag)."""
        ref = parse_reference(name).with_default_tag()
        full = owned_key(ref, scope.project)
        if full not in self.refs:
            if scope.is_tenant and str(ref) in self.refs:
                raise refused(f"untagging the operator's image {ref.familiar}")
            raise no_such_image(ref.familiar)
        if not force and self._single_repository(self._seen_refs(img, scope)):
            users = self.container_usage(img.id, scope)
            if users:
                raise Conflict(
                    f'conflict: unable to remove repository reference "{name}" '
                    f"(must force) - container {users[0][0][:12]} is using its "
                    f"referenced image {short_id(img.id)}")
        self._untag(full, scope, records)
        mine = self._own_refs(img, scope)
        if not any(split_owned(t)[0].name == ref.name for t in img.repo_tags if t in mine):
            for d in [d for d in img.repo_digests
                      if d in mine and split_owned(d)[0].name == ref.name]:
                self._remove_ref(d)
                records.append({"Untagged": split_owned(d)[0].familiar})

    def _let_go(self, img: Image, scope: Scope, records: list[dict[str, str]],
                outright: bool = False) -> None:
        """The asker no longer holds the image (its tags are gone): the
        content goes if nobody else holds or uses it. The operator's rmi by
        ID removes the image outright, whoever held it. A tenant is told its
        image is deleted once it no longer sees it, whoever else keeps it, so
        that nothing says whether another tenant has it."""
        if outright and not scope.is_tenant:
            for key in list(img.repo_tags + img.repo_digests):
                self._remove_ref(key)
            img.holders.clear()
        elif holder_of(scope) in img.holders:
            img.holders.remove(holder_of(scope))
        if img.holders or img.repo_tags or img.repo_digests or self._used_by_others(img, scope):
            self._save(img)
            if not self.visible(img, scope):
                records.append({"Deleted": img.id})
                self._publish("delete", img, img.id, scope)
            return
        self._delete_image(img)
        records.append({"Deleted": img.id})
        self._publish("delete", img, img.id, scope)

    def _delete_image(self, img: Image) -> None:
        del self.images[img.id]
        self.state.delete("images", short_key(img.id))
        self.collect_garbage()

    @contextlib.contextmanager
    def pinned(self, digests: Iterable[str]) -> Iterator[None]:
        """Keep blobs that no image references yet (a pull in progress) from GC."""
        pinned = list(digests)
        self._pinned.update(pinned)
        try:
            yield
        finally:
            self._pinned.subtract(pinned)
            self._pinned += collections.Counter()  # drop the zero counts

    def collect_garbage(self) -> None:
        """Remove blobs and disks no image references any more."""
        live_blobs = set(self.images) | set(self._pinned)
        live_disks = set()
        for img in self.images.values():
            live_blobs.update(layer.digest for layer in img.layers)
            live_disks.add(img.chain_id.removeprefix("sha256:"))
        for digest in list(self.blobs.digests()):
            if digest not in live_blobs:
                self.blobs.delete(digest)
        for disk in self.disk_dir.glob("*.ext4"):
            if disk.stem not in live_disks:
                disk.unlink(missing_ok=True)

    # -- guest disks ---------------------------------------------------------

    def disk_path(self, img: Image) -> Path:
        return self.disk_dir / f"{img.chain_id.removeprefix('sha256:') or 'empty'}.ext4"

    def _tmp(self, prefix: str) -> Path:
        self._tmp_counter += 1
        return self.tmp_dir / f"{prefix}-{self._tmp_counter}"

    async def ensure_disk(self, img: Image) -> Path:
        """The image's read-only ext4 disk, built on first use."""
        path = self.disk_path(img)
        lock = self._disk_locks.setdefault(path.name, asyncio.Lock())
        async with lock:
            if path.exists():
                return path
            tree = self._tmp("flatten")
            tree.mkdir()
            try:
                blob_paths = [self.blobs.path(layer.digest) for layer in img.layers]
                await asyncio.to_thread(flatten_layers, blob_paths, tree, self.limits)
                await disks.ext4_from_tree(tree, path, label="hbd-image")
            except LayerError as e:
                raise InvalidParameter(f"failed to unpack image {short_id(img.id)}: {e}") from e
            except disks.DiskError as e:
                raise SystemError_(f"failed to build disk of image {short_id(img.id)}: {e}") \
                    from e
            finally:
                await asyncio.to_thread(shutil.rmtree, tree, True)
        return path

    async def has_path(self, img: Image, path: str) -> bool:
        """Whether the image's filesystem has `path` (relative to its root)."""
        disk = await self.ensure_disk(img)
        try:
            return await disks.ext4_has_path(disk, path)
        except disks.DiskError as e:
            raise SystemError_(f"cannot read image {short_id(img.id)}: {e}") from e

    # -- load ----------------------------------------------------------------

    async def load(self, body: Any, scope: Scope = OPERATOR) -> list[str]:
        """`docker load`: read a docker-archive or OCI-layout tar, return messages.

        Everything is verified and every disk built before any image is
        recorded, so a bad archive leaves no trace.
        """
        # Named as dockerd's extraction directory, which its errors name.
        archive_path = self._tmp("docker-import")
        try:
            await self._receive_archive(body, archive_path)
            async with self._store_lock:
                try:
                    staged = await asyncio.to_thread(self._stage_archive, archive_path)
                    for img, _ in staged:
                        await self.ensure_disk(img)
                except BaseException:
                    self.collect_garbage()
                    raise
                return self._commit_loaded(staged, scope)
        finally:
            archive_path.unlink(missing_ok=True)

    async def _receive_archive(self, body: Any, path: Path) -> None:
        """Spool the request body to disk, decompressing gzip or zstd on the fly."""
        first = True
        decompressor: Inflater | None = None
        with open(path, "wb") as f:
            async for received in body.iter_chunked(CHUNK):
                if first:
                    first = False
                    decompressor = inflater_for_head(received[:4])
                if decompressor is None:
                    f.write(received)
                    continue
                try:
                    for data in decompressor.pieces(received):
                        f.write(data)
                except LayerError as e:  # "not valid gzip: ..."
                    # dockerd's words: "Error processing tar file(flate: corrupt input ...): "
                    raise InvalidParameter(f"Error processing tar file({e}): ") from e
        if decompressor is not None and not decompressor.eof:
            raise tar_error(GO_UNEXPECTED_EOF)

    def _store_layer(self, ar: ArchiveReader, member: str,
                     expected_digest: str | None) -> tuple[str, str, int, str]:
        """Copy one layer into the blob store: (digest, diff_id, size, media type)."""
        writer = self.blobs.writer()
        diff_hash = hashlib.sha256()
        size = 0
        try:
            with ar.open(member) as f:
                head = f.read(4)
                f.seek(0)
                inflater = inflater_for_head(head)
                while chunk := f.read(CHUNK):
                    writer.write(chunk)
                    for raw in inflater.pieces(chunk) if inflater else (chunk,):
                        diff_hash.update(raw)
                        size += len(raw)
                        if size > self.limits.max_bytes:
                            raise InvalidParameter(f"layer {member} is larger than the limit")
                if inflater is not None and not inflater.eof:
                    raise InvalidParameter(f"invalid layer {member}: truncated {inflater.kind}")
            digest = writer.commit(expected_digest)
        except (LayerError, zlib.error, gzip.BadGzipFile, tarfile.TarError, EOFError) as e:
            writer.abort()
            raise InvalidParameter(f"invalid layer {member}: {e}") from e
        except DigestMismatch as e:
            raise InvalidParameter(f"invalid layer {member}: {e}") from e
        except BaseException:
            writer.abort()
            raise
        kind = inflater.kind if inflater else ""
        media = {"gzip": MEDIA_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}.get(kind, MEDIA_LAYER_TAR)
        return digest, "sha256:" + diff_hash.hexdigest(), size, media

    def _stage_archive(self, path: Path) -> list[tuple[Image, list[Reference]]]:
        """Store an archive's blobs; the caller records the images."""
        ar = ArchiveReader(path, shown_root=str(path))
        try:
            staged: list[tuple[Image, list[Reference]]] = []
            for entry in archive_images(ar):
                config_bytes = ar.read(entry.config_member)
                try:
                    config = json.loads(config_bytes)
                    diff_ids = list(config["rootfs"]["diff_ids"])
                except (ValueError, KeyError, TypeError) as e:
                    raise InvalidParameter(f"invalid image config {entry.config_member}") from e
                if len(diff_ids) != len(entry.layer_members):
                    raise InvalidParameter(
                        f"invalid image archive: {len(entry.layer_members)} layers for "
                        f"{len(diff_ids)} diff_ids")
                layers = []
                for i, (member, expected) in enumerate(
                        zip(entry.layer_members, entry.layer_digests, strict=True)):
                    digest, diff_id, size, media = self._store_layer(ar, member, expected)
                    if diff_id != diff_ids[i]:
                        raise InvalidParameter(
                            f"invalid diffID for layer {i}: calculated {diff_id}, "
                            f"expected {diff_ids[i]}")
                    layers.append(Layer(digest, diff_id, size, media))
                image_id = self.blobs.put_bytes(config_bytes)
                refs = [parse_reference(n).with_default_tag() for n in entry.names]
                existing = self.images.get(image_id)
                img = existing or Image(id=image_id, config=config, layers=layers)
                staged.append((img, refs))
        finally:
            ar.close()
        return staged

    def _commit_loaded(self, staged: list[tuple[Image, list[Reference]]], scope: Scope
                       ) -> list[str]:
        messages = []
        for img, refs in staged:
            self.record_image(img, refs, scope)
            messages += [f"Loaded image: {ref.familiar}\n" for ref in refs]
            if not refs:
                messages.append(f"Loaded image ID: {img.id}\n")
            self._publish("load", img, img.id, scope)
        return messages

    def record_image(self, img: Image, refs: Iterable[Reference], scope: Scope = OPERATOR
                     ) -> Image:
        """Keep an image whose blobs are stored and disk built, held by the
        asker; point the asker's refs at it."""
        current = self.images.setdefault(img.id, img)
        if current is not img:
            # Known already: it may have learnt where its layers live.
            for mine, theirs in zip(current.layers, img.layers, strict=False):
                mine.sources = sorted(set(mine.sources) | set(theirs.sources))
        self._hold(current, scope)
        self._save(current)
        for ref in refs:
            self._add_ref(current, ref, scope)
        return current

    def replace_layer_blob(self, diff_id: str, digest: str, media_type: str) -> None:
        """Every image now keeps layer `diff_id` as blob `digest` (e.g. gzip for a push)."""
        for img in self.images.values():
            changed = False
            for layer in img.layers:
                if layer.diff_id == diff_id and layer.digest != digest:
                    layer.digest, layer.media_type, layer.sources = digest, media_type, []
                    changed = True
            if changed:
                self._save(img)
        self.collect_garbage()

    async def import_tarball(self, body: Any, ref: Reference | None, message: str,
                             changes: list[str], scope: Scope = OPERATOR) -> str:
        """`docker import`: a filesystem tarball becomes a one-layer image."""
        image_config = apply_changes({}, changes)  # bad changes fail before any upload
        archive = self._tmp("import")
        try:
            await self._receive_archive(body, archive)  # gunzipped on the way in
            async with self._store_lock:
                digest, diff_id, size = await asyncio.to_thread(self._store_file_layer, archive)
                config: dict[str, Any] = {
                    "architecture": "amd64", "os": "linux", "created": now_rfc3339(),
                    "config": image_config,
                    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                    "history": [{"created": now_rfc3339(), "created_by": "docker import",
                                 **({"comment": message} if message else {})}],
                }
                if message:
                    config["comment"] = message
                config_bytes = json.dumps(config, separators=(",", ":")).encode()
                image_id = self.blobs.put_bytes(config_bytes)
                img = Image(id=image_id, config=config,
                            layers=[Layer(digest, diff_id, size, MEDIA_LAYER_TAR)])
                try:
                    await self.ensure_disk(img)
                except BaseException:
                    self.collect_garbage()
                    raise
                self.record_image(img, [ref] if ref else [], scope)
        finally:
            archive.unlink(missing_ok=True)
        self._publish("import", img, image_id, scope)
        return image_id

    def _store_file_layer(self, path: Path) -> tuple[str, str, int]:
        """An uncompressed layer file into the blob store: (digest, diff_id, size)."""
        if not tarfile.is_tarfile(path):
            raise InvalidParameter("the archive to import is not a tar")
        writer = self.blobs.writer()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    writer.write(chunk)
            digest = writer.commit()
        except BaseException:
            writer.abort()
            raise
        return digest, digest, path.stat().st_size

    # -- save / history / prune ----------------------------------------------------

    def _archive_entry(self, img: Image, refs: list[Reference]) -> ArchiveImage:
        return ArchiveImage(
            config=self.blobs.read_bytes(img.id),
            layers=[ArchiveLayer(layer.digest, "gzip" in layer.media_type,
                                 self.blobs.path(layer.digest),
                                 oci_layer_media_type(layer.media_type))
                    for layer in img.layers],
            tags=[(r.name, r.tag, r.familiar) for r in refs if r.tag])

    def save(self, names: list[str], out: BinaryIO, scope: Scope = OPERATOR) -> None:
        """`docker save`: the images and the tags they were named by."""
        if not names:
            raise InvalidParameter("no images given")
        chosen: dict[str, tuple[Image, list[Reference]]] = {}
        for name in names:
            img = self.get(name, scope)
            refs: list[Reference] = []
            if not (name.startswith("sha256:") or img.id.startswith("sha256:" + name)):
                ref = parse_reference(name)
                if ref.tag:
                    refs = [ref]
                else:  # a bare repository name: every tag of it
                    tags = [split_owned(t)[0] for t in self.visible_refs(img, scope)[0]]
                    refs = [t for t in tags if t.name == ref.name] or [ref.with_default_tag()]
            entry = chosen.setdefault(img.id, (img, []))
            entry[1].extend(r for r in refs if r not in entry[1])
        for digest in [layer.digest for img, _ in chosen.values() for layer in img.layers]:
            with self.blobs.open_verified(digest):
                pass  # a corrupt blob must not go out as a valid archive
        write_image_archive(out, [self._archive_entry(img, refs)
                                  for img, refs in chosen.values()])

    def history(self, ref: str, scope: Scope = OPERATOR) -> list[dict[str, Any]]:
        """`docker history`: newest first, sizes from the layers in order."""
        img = self.get(ref, scope)
        tags = sorted_shown(img.repo_tags, scope) or None
        entries = [h for h in self.config_history(img) if isinstance(h, dict)]
        sizes = [layer.size for layer in img.layers]
        out = []
        for h in entries:
            empty = bool(h.get("empty_layer"))
            size = 0 if empty or not sizes else sizes.pop(0)
            created = h.get("created", "")
            out.append({
                "Id": "<missing>", "Created": int(parse_rfc3339(created)),
                "CreatedBy": h.get("created_by", ""), "Tags": None, "Size": size,
                "Comment": h.get("comment", ""),
            })
        out.reverse()
        if out:
            out[0]["Id"] = img.id
            out[0]["Tags"] = tags
        else:
            out = [{"Id": img.id, "Created": img.created_unix, "CreatedBy": "",
                    "Tags": tags,
                    "Size": img.size, "Comment": ""}]
        return out

    @staticmethod
    def config_history(img: Image) -> list[Any]:
        history = img.config.get("history")
        if isinstance(history, list) and history:
            return history
        # No history in the config: one entry per layer, as dockerd shows it.
        return [{"created": img.config.get("created", "")} for _ in img.layers]

    async def prune(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                    ) -> dict[str, Any]:
        """`image prune`: dangling=true (the default) or false, until, label."""
        filters = dict(filters)
        dangling = filters.pop("dangling", ["true"])[0].lower() in ("true", "1")
        prune_filter = PruneFilter(filters)

        def matches(img: Image) -> bool:
            return prune_filter(str(img.config.get("created", "")), img.container_config)

        return await self._prune(dangling, matches, scope)

    async def _prune(self, dangling_only: bool, matches: Callable[[Image], bool],
                     scope: Scope) -> dict[str, Any]:
        """Remove unused images the asker holds: untagged ones (for it), or
        (dangling=false) all unused."""
        async with self._store_lock:
            doomed = [img for img in self.images.values()
                      if self._holds(img, scope) and not self.container_usage(img.id, scope)
                      and matches(img) and
                      not (dangling_only and any(self.visible_refs(img, scope)))]
            deleted, reclaimed = self._remove_images(doomed, scope)
        self.events.publish("image", "prune", "", {"reclaimed": str(reclaimed)})
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    @staticmethod
    def _holds(img: Image, scope: Scope) -> bool:
        """Whether the asker may remove the image: the operator any, a tenant its own."""
        return not scope.is_tenant or holder_of(scope) in img.holders

    async def remove_intermediates(self, image_ids: Iterable[str], scope: Scope = OPERATOR
                                   ) -> int:
        """Remove those of these images that `docker images` does not list (a
        build's intermediate steps) and no container uses; the space freed."""
        async with self._store_lock:
            listed = {img.id for img in self.listed_images(scope)}
            doomed = [img for i in image_ids if (img := self.images.get(i)) is not None and
                      self._holds(img, scope) and i not in listed and
                      not self.container_usage(i, scope)]
            return self._remove_images(doomed, scope)[1]

    def _remove_images(self, doomed: list[Image], scope: Scope
                       ) -> tuple[list[dict[str, str]], int]:
        """Untag the images and let go of them: the records for the API, the space freed."""
        before = list(self.images.values())
        deleted: list[dict[str, str]] = []
        for img in doomed:
            for full in list(self._own_refs(img, scope)):
                self._remove_ref(full)
                deleted.append({"Untagged": split_owned(full)[0].familiar})
            self._let_go(img, scope, deleted, outright=True)
        self.collect_garbage()
        return deleted, usage.freed(before, self.images.values())

    # -- API views -------------------------------------------------------------

    def list_summaries(self, filters: dict[str, list[str]], all_: bool = False,
                       scope: Scope = OPERATOR) -> list[dict[str, Any]]:
        """`docker images`."""
        matches = ImageFilter(filters, lambda ref: self.get(ref, scope),
                              lambda img: self.visible_refs(img, scope))
        images = self.all_images(scope) if all_ else self.listed_images(scope)
        return [self.summary(img, scope, *matches.matching_refs(img))
                for img in images if matches(img)]

    def listed_images(self, scope: Scope = OPERATOR) -> list[Image]:
        """What `docker images` lists: all but the untagged images a build made
        others from (intermediate steps), as dockerd leaves them out."""
        images = self.all_images(scope)
        parents = {img.parent for img in images if img.parent}
        return [img for img in images
                if not (img.id in parents and not any(self.visible_refs(img, scope)))]

    def disk_usage(self, scope: Scope = OPERATOR) -> tuple[int, list[dict[str, Any]]]:
        """`system df`: the size of the layers of the images the asker sees,
        and the listed images with how many of its containers use each and how
        much of it others share."""
        listed = self.listed_images(scope)
        shared = usage.shared_sizes(listed)
        return usage.layers_size(self.all_images(scope)), [
            self.summary(img, scope, containers=len(self.container_usage(img.id, scope)),
                         shared_size=shared[img.id]) for img in listed]

    def summary(self, img: Image, scope: Scope = OPERATOR, tags: list[str] | None = None,
                digests: list[str] | None = None, containers: int = -1,
                shared_size: int = -1) -> dict[str, Any]:
        """An ImageSummary listing `tags` and `digests` (those a filter let
        through; all the image's the asker sees without a filter)."""
        return {
            "Id": img.id,
            "ParentId": img.parent,
            "RepoTags": sorted_shown(img.repo_tags if tags is None else tags, scope),
            "RepoDigests": sorted_shown(img.repo_digests if digests is None else digests, scope),
            "Created": img.created_unix,
            "Size": img.size,
            "SharedSize": shared_size,
            "Labels": img.container_config.get("Labels") or {},
            "Containers": containers,
        }

    def inspect(self, img: Image, scope: Scope = OPERATOR) -> dict[str, Any]:
        cfg = img.config
        return {
            "Id": img.id,
            "RepoTags": sorted_shown(img.repo_tags, scope),
            "RepoDigests": sorted_shown(img.repo_digests, scope),
            "Parent": img.parent,
            "Comment": cfg.get("comment", ""),
            "Created": cfg.get("created", ""),
            "DockerVersion": cfg.get("docker_version", ""),
            "Author": cfg.get("author", ""),
            "Config": container_config_view(img.container_config),
            "Architecture": cfg.get("architecture", ""),
            "Variant": cfg.get("variant", ""),
            "Os": cfg.get("os", ""),
            "OsVersion": cfg.get("os.version", ""),
            "Size": img.size,
            "GraphDriver": {"Name": "hbd-ext4", "Data": {"Disk": str(self.disk_path(img))}},
            "RootFS": {"Type": "layers", "Layers": [layer.diff_id for layer in img.layers]},
            "Metadata": {"LastTagTime": img.last_tag_time or "0001-01-01T00:00:00Z"},
        }


def short_key(image_id: str) -> str:
    return image_id.removeprefix("sha256:")


_CONFIG_FIELDS = ("Hostname", "Domainname", "User", "AttachStdin", "AttachStdout",
                  "AttachStderr", "ExposedPorts", "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd",
                  "Healthcheck", "ArgsEscaped", "Image", "Volumes", "WorkingDir", "Entrypoint",
                  "NetworkDisabled", "MacAddress", "OnBuild", "Labels", "StopSignal",
                  "StopTimeout", "Shell")


def container_config_view(cfg: dict[str, Any]) -> dict[str, Any]:
    """An image's config as the API shows it: dockerd fills absent fields with zero values."""
    defaults: dict[str, Any] = {
        "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
        "AttachStdout": False, "AttachStderr": False, "Tty": False, "OpenStdin": False,
        "StdinOnce": False, "Env": None, "Cmd": None, "Image": "", "Volumes": None,
        "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": None,
    }
    out = {**defaults, **{k: v for k, v in cfg.items() if k in _CONFIG_FIELDS}}
    return out

