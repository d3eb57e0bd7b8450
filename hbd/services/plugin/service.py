"""Managed plugins (`docker plugin ...`): installed, inspected, configured,
moved to and from registries, but never run.

dockerd runs a managed plugin as a runc container beside itself on the host,
with whatever host privileges the plugin asks for (host network, mounts,
devices, capabilities). hbd runs nothing outside a VM, so it keeps plugins as
dockerd keeps them (a record per plugin in the state store, its config and
rootfs layer as blobs under <data-root>/plugins/<id>/) and refuses to enable
one, with a message that says why. Everything else answers as dockerd 20.10
does: names get `:latest`, lookups take a name, a full id or an id prefix,
and the texts and statuses are dockerd's.

A plugin's files are written before its record and removed after it, so a
crash leaves at worst files without a record, which the next start removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hbd.errors import (
    Conflict,
    HbdError,
    InvalidParameter,
    NotFound,
    NotImplementedByHbd,
    SystemError_,
)
from hbd.events import EventBus
from hbd.services.image.distribution import progress, short
from hbd.services.image.reference import Reference, is_full_id, parse_reference
from hbd.services.image.registry import (
    MEDIA_LAYER_GZIP,
    MEDIA_MANIFEST_V2,
    Credentials,
    Manifest,
    RegistryClient,
    Session,
    sha256_digest,
)
from hbd.services.plugin import config as plugin_config
from hbd.services.plugin.config import ConfigError
from hbd.services.plugin.rootfs import Layer, split_context, verify_blob
from hbd.services.system.service import ENGINE_VERSION
from hbd.store import StateStore, write_atomic

log = logging.getLogger(__name__)

MEDIA_PLUGIN_CONFIG = "application/vnd.docker.plugin.v1+json"
LIST_FILTERS = ("capability", "enabled")
MAX_CONFIG = 4 * 1024 * 1024
PRIVILEGES_TIMEOUT = 30.0
NOT_RUN = ("hbd does not run plugins (a managed plugin runs as a process on the host, beside "
           "the daemon and with host privileges, and hbd runs nothing outside a VM); it stays "
           "installed and disabled")


@dataclass
class Plugin:
    id: str
    name: str  # familiar, with a tag: vieux/sshfs:latest
    reference: str  # where it came from (PluginReference)
    config: dict[str, Any]  # types.PluginConfig, as the API shows it
    settings: dict[str, Any]
    config_digest: str
    layers: list[dict[str, Any]] = field(default_factory=list)  # digest, diff_id, size
    enabled: bool = False  # never true in hbd; kept for dockerd's shape

    def view(self) -> dict[str, Any]:
        return {"Config": self.config, "Enabled": self.enabled, "Id": self.id,
                "Name": self.name, "PluginReference": self.reference,
                "Settings": self.settings}

    def blobs(self) -> set[str]:
        return {self.config_digest, *(layer["digest"] for layer in self.layers)}


def _old_reference_text(message: str) -> str:
    """dockerd 20.10's reference parser does not repeat the name when it refuses
    an upper-case one."""
    return re.sub(r"repository name \(.*\) must be lowercase",
                  "repository name must be lowercase", message)


def parse_name(text: str) -> Reference:
    """A reference as dockerd's plugin routes parse one: a bad one is a 500."""
    try:
        return parse_reference(text)
    except InvalidParameter as e:
        raise SystemError_(_old_reference_text(e.message)) from None


def remote_reference(text: str) -> Reference:
    """parseRemoteRef: `:latest` when neither tag nor digest is given."""
    ref = parse_name(text)
    return ref if ref.digest else ref.with_default_tag()


def _go_list(values: list[str]) -> str:
    return "[" + " ".join(values) + "]"


class PluginService:
    def __init__(self, state: StateStore, root: Path, events: EventBus,
                 registry: RegistryClient) -> None:
        self.state = state
        self.root = root
        self.events = events
        self.registry = registry
        self.plugins: dict[str, Plugin] = {}
        self._names: set[str] = set()  # taken by a create or pull under way
        self._lock = asyncio.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        for key, record in state.load("plugins"):
            try:
                p = Plugin(**record)
            except TypeError:
                log.warning("plugin record %s is unreadable; ignored", key)
                continue
            self.plugins[p.id] = p
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Files of plugins whose record never got written (or was removed)."""
        for entry in self.root.iterdir():
            p = self.plugins.get(entry.name)
            if p is None:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else \
                    entry.unlink(missing_ok=True)
                continue
            wanted = {d.removeprefix("sha256:") for d in p.blobs()}
            for blob in entry.iterdir():
                if blob.name not in wanted:
                    blob.unlink(missing_ok=True)

    def _dir(self, plugin_id: str) -> Path:
        return self.root / plugin_id

    def blob_path(self, p: Plugin, digest: str) -> Path:
        return self._dir(p.id) / digest.removeprefix("sha256:")

    # -- lookup ------------------------------------------------------------------------

    def get(self, ref: str) -> Plugin:
        """A full id, a name (`:latest` optional) or an unambiguous id prefix."""
        if is_full_id(ref):
            p = self.plugins.get(ref)
            if p is None:
                raise NotFound(f"plugin {json.dumps(ref)} not found")
            return p
        try:
            parsed = parse_reference(ref)
        except InvalidParameter:
            raise NotFound(f"plugin {json.dumps(ref)} not found") from None
        if parsed.digest:
            raise NotFound(f"plugin {json.dumps(ref)} not found")
        name = parsed.with_default_tag().familiar
        for p in self.plugins.values():
            if p.name == name:
                return p
        found = [p for p in self.plugins.values() if p.id.startswith(ref)]
        if len(found) > 1:
            raise InvalidParameter(f"multiple plugins found for {json.dumps(ref)}")
        if not found:
            raise NotFound(f"plugin {json.dumps(ref)} not found")
        return found[0]

    def get_tagged(self, text: str) -> Plugin:
        """Upgrade's lookup: the name is parsed, and given `:latest`, first."""
        ref = parse_name(text)
        if ref.digest:
            raise SystemError_("cannot use digest in plugin tag")
        return self.get(ref.familiar if ref.tag else ref.with_default_tag().familiar)

    def inspect(self, ref: str) -> dict[str, Any]:
        return self.get(ref).view()

    def list_views(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        for key in filters:
            if key not in LIST_FILTERS:
                raise InvalidParameter(f"Invalid filter '{key}'")
        enabled: bool | None = None
        if "enabled" in filters:
            values = filters["enabled"]
            if "true" in values:
                enabled = True
            elif "false" in values:
                enabled = False
            else:
                raise InvalidParameter(f"Invalid filter 'enabled={_go_list(values)}'")
        wanted = filters.get("capability")
        out = []
        for p in self.plugins.values():
            if enabled is not None and p.enabled != enabled:
                continue
            if wanted and not all(_matches_any(wanted, cap)
                                  for cap in plugin_config.capabilities(p.config)):
                continue
            out.append(p.view())
        return out

    # -- create, remove, settings ------------------------------------------------------

    def _local_name(self, text: str) -> str:
        try:
            ref = parse_reference(text)
        except InvalidParameter as e:
            raise SystemError_(f"failed to parse reference {text}: "
                               f"{_old_reference_text(e.message)}") from None
        if ref.digest:
            raise SystemError_("canonical references are not permitted")
        return ref.with_default_tag().familiar

    def _name_taken(self, name: str) -> bool:
        return name in self._names or any(p.name == name for p in self.plugins.values())

    @contextlib.contextmanager
    def _reserve(self, name: str, status: type[HbdError] = Conflict) -> Any:
        if self._name_taken(name):
            raise status(f"plugin {name} already exists")
        self._names.add(name)
        try:
            yield
        finally:
            self._names.discard(name)

    async def create(self, name: str, context: AsyncIterator[bytes]) -> None:
        """`docker plugin create NAME DIR`: config.json and rootfs/ in a tar."""
        local = self._local_name(name)
        with self._reserve(local):
            plugin_id = secrets.token_hex(32)
            directory = self._dir(plugin_id)
            directory.mkdir(parents=True)
            try:
                with tempfile.TemporaryFile(dir=self.root) as spool:
                    async for chunk in context:
                        await asyncio.to_thread(spool.write, chunk)
                    spool.seek(0)
                    layer_tmp = directory / ".layer.tmp"
                    raw, layer = await asyncio.to_thread(split_context, spool, layer_tmp)
                os.replace(layer_tmp, directory / layer.digest.removeprefix("sha256:"))
                try:
                    config = plugin_config.decode(raw)
                except ConfigError as e:
                    raise SystemError_(f"failed to parse config: {e}") from None
                config["DockerVersion"] = ENGINE_VERSION
                config["rootfs"] = {"diff_ids": [layer.diff_id], "type": "layers"}
                config = plugin_config.ordered(config)
                p = self._new_plugin(plugin_id, local, local, config, plugin_config.encode(config),
                                     [layer])
                self._record(p)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
        self.events.publish("plugin", "create", p.id, {"name": p.name})

    def _new_plugin(self, plugin_id: str, name: str, reference: str, config: dict[str, Any],
                    config_blob: bytes, layers: list[Layer]) -> Plugin:
        digest = sha256_digest(config_blob)
        write_atomic(self._dir(plugin_id) / digest.removeprefix("sha256:"), config_blob, 0o644)
        return Plugin(plugin_id, name, reference, config, plugin_config.initial_settings(config),
                      digest, [asdict(layer) for layer in layers])

    def _record(self, p: Plugin) -> None:
        self.state.put("plugins", p.id, asdict(p))
        self.plugins[p.id] = p

    async def remove(self, ref: str, force: bool = False) -> None:
        p = self.get(ref)
        async with self._lock:
            self.state.delete("plugins", p.id)
            self.plugins.pop(p.id, None)
            await asyncio.to_thread(shutil.rmtree, self._dir(p.id), True)
        self.events.publish("plugin", "remove", p.id, {"name": p.name})

    def set(self, ref: str, args: list[str]) -> None:
        """`docker plugin set`: settable Env, Args, mount sources, device paths."""
        p = self.get(ref)
        if p.enabled:
            raise SystemError_("cannot set on an active plugin, disable plugin before setting")
        new_config, new_settings = plugin_config.apply_settings(p.config, p.settings, args)
        updated = Plugin(**{**asdict(p), "config": new_config, "settings": new_settings})
        self._record(updated)

    def enable(self, ref: str) -> None:
        p = self.get(ref)
        raise NotImplementedByHbd(f"cannot enable plugin {p.name}: {NOT_RUN}")

    def disable(self, ref: str, force: bool = False) -> None:
        p = self.get(ref)
        raise Conflict(f"plugin is already disabled: plugin {p.name} found but disabled")

    # -- registries --------------------------------------------------------------------

    async def _resolve(self, remote: Reference, credentials: Credentials
                       ) -> tuple[Session, Manifest]:
        target = remote.digest or remote.tag or "latest"
        try:
            last: HbdError | None = None
            for session in await self.registry.sessions(remote, credentials, "pull"):
                try:
                    return session, await session.get_manifest(target)
                except HbdError as e:
                    last = e  # a mirror may lack it: try the next endpoint
            assert last is not None
            raise last
        except HbdError as e:
            error = NotFound if isinstance(e, NotFound) else SystemError_
            raise error(f"error resolving plugin reference: {e.message}") from None

    async def _fetch_config(self, session: Session, manifest: Manifest, remote: Reference
                            ) -> tuple[bytes, dict[str, Any], list[dict[str, Any]]]:
        doc = manifest.document
        desc = doc.get("config") if isinstance(doc.get("config"), dict) else None
        layers = doc.get("layers")
        if desc is None or desc.get("mediaType") != MEDIA_PLUGIN_CONFIG or \
                not isinstance(layers, list):
            raise SystemError_(f"{remote.familiar} is not a plugin: its manifest has no "
                               f"plugin config ({MEDIA_PLUGIN_CONFIG})")
        digest = str(desc.get("digest"))
        data = bytearray()
        async for chunk in session.blob_stream(digest):
            data += chunk
            if len(data) > MAX_CONFIG:
                raise SystemError_(f"plugin config {digest} is too large")
        if sha256_digest(bytes(data)) != digest:
            raise SystemError_(f"digest mismatch for plugin config {digest}")
        try:
            config = plugin_config.decode(bytes(data))
        except ConfigError as e:
            raise SystemError_(f"failed to parse config: {e}") from None
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(layers):
            raise SystemError_("plugin config and manifest disagree on layers")
        return bytes(data), config, layers

    async def privileges(self, remote: Reference, credentials: Credentials
                         ) -> list[dict[str, Any]]:
        """What the plugin at `remote` asks of the host; dockerd answers an empty
        list when it cannot fetch the plugin's config, and so do we."""
        try:
            async with asyncio.timeout(PRIVILEGES_TIMEOUT):
                session, manifest = await self._resolve(remote, credentials)
                _, config, _ = await self._fetch_config(session, manifest, remote)
        except (HbdError, TimeoutError) as e:
            log.info("plugin privileges of %s: %s", remote, e)
            return []
        return plugin_config.privileges(config)

    @staticmethod
    def _check_privileges(config: dict[str, Any], granted: list[dict[str, Any]]) -> None:
        def norm(privs: list[dict[str, Any]]) -> list[tuple[str, tuple[str, ...]]]:
            return sorted((str(p.get("Name", "")), tuple(sorted(map(str, p.get("Value") or []))))
                          for p in privs)

        if norm(plugin_config.privileges(config)) != norm(granted):
            raise SystemError_("incorrect privileges")

    async def _download(self, session: Session, directory: Path, layers: list[dict[str, Any]],
                        diff_ids: list[str], done: list[Layer]) -> AsyncIterator[dict[str, Any]]:
        for desc, diff_id in zip(layers, diff_ids, strict=True):
            digest = str(desc.get("digest"))
            ident = short(digest)
            target = directory / digest.removeprefix("sha256:")
            if target.exists():
                done.append(await asyncio.to_thread(verify_blob, target))
                yield progress("Already exists", ident)
                continue
            total = int(desc.get("size") or 0)
            tmp = directory / f".{ident}.tmp"
            received = 0
            with open(tmp, "wb") as f:
                async for chunk in session.blob_stream(digest):
                    await asyncio.to_thread(f.write, chunk)
                    received += len(chunk)
                    yield progress("Downloading", ident, received, total)
            try:
                layer = await asyncio.to_thread(verify_blob, tmp)
            except Exception as e:  # zlib.error, EOFError: not a gzip stream
                raise SystemError_(f"layer {digest}: not a gzipped tar: {e}") from None
            if layer.digest != digest:
                raise SystemError_(f"digest mismatch for {digest}: the registry sent other "
                                   "bytes")
            if layer.diff_id != diff_id:
                raise SystemError_(f"layer {digest}: content does not match diff_id {diff_id}")
            os.replace(tmp, target)
            done.append(layer)
            yield progress("Download complete", ident)

    async def pull(self, remote: Reference, name: str, granted: list[dict[str, Any]],
                   credentials: Credentials) -> AsyncIterator[dict[str, Any]]:
        """`docker plugin install` without the enabling (which hbd refuses).
        Raises before its first message for what dockerd answers with an error."""
        local = self._local_name_for_pull(remote, name)
        with self._reserve(local, InvalidParameter):
            session, manifest = await self._resolve(remote, credentials)
            raw, config, layers = await self._fetch_config(session, manifest, remote)
            self._check_privileges(config, granted)
            plugin_id = secrets.token_hex(32)
            directory = self._dir(plugin_id)
            directory.mkdir(parents=True)
            try:
                yield {"status": f"Pulling from {remote.familiar_name}",
                       "id": remote.tag or remote.digest}
                done: list[Layer] = []
                async for message in self._download(session, directory, layers,
                                                    config["rootfs"]["diff_ids"], done):
                    yield message
                p = self._new_plugin(plugin_id, local, str(remote), config, raw, done)
                self._record(p)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
        self.events.publish("plugin", "pull", p.id, {"name": p.name})
        yield {"status": f"Digest: {manifest.digest}"}
        yield {"status": f"Status: Downloaded newer image for {remote.familiar}"}

    def _local_name_for_pull(self, remote: Reference, name: str) -> str:
        """getName: the remote's name when none is given, else `name` (`:latest`
        added when it has no tag)."""
        if not name:
            return Reference(remote.domain, remote.path, remote.tag or "latest").familiar
        local = parse_name(name)
        if local.digest:
            raise SystemError_("cannot use digest in plugin tag")
        return local.with_default_tag().familiar

    async def upgrade(self, name: str, remote: Reference, granted: list[dict[str, Any]],
                      credentials: Credentials) -> AsyncIterator[dict[str, Any]]:
        """A disabled plugin takes another version's config and rootfs; its
        id, name and settings stay."""
        p = self.get_tagged(name)
        session, manifest = await self._resolve(remote, credentials)
        raw, config, layers = await self._fetch_config(session, manifest, remote)
        self._check_privileges(config, granted)
        directory = self._dir(p.id)
        yield {"status": f"Pulling from {remote.familiar_name}",
               "id": remote.tag or remote.digest}
        done: list[Layer] = []
        async for message in self._download(session, directory, layers,
                                            config["rootfs"]["diff_ids"], done):
            yield message
        current = self.plugins.get(p.id)
        if current is None:
            raise NotFound(f"plugin {json.dumps(name)} not found")
        fresh = self._new_plugin(p.id, current.name, str(remote), config, raw, done)
        fresh.settings = current.settings
        old = current.blobs()
        self._record(fresh)
        for digest in old - fresh.blobs():
            self.blob_path(fresh, digest).unlink(missing_ok=True)
        self.events.publish("plugin", "upgrade", p.id, {"name": p.name})
        yield {"status": f"Digest: {manifest.digest}"}
        yield {"status": f"Status: Downloaded newer image for {remote.familiar}"}

    async def push(self, ref: str, credentials: Credentials) -> AsyncIterator[dict[str, Any]]:
        """To the registry its name says; errors after the first message go in
        the stream, as dockerd's do."""
        p = self.get(ref)
        target = parse_reference(p.name)
        yield {"status": f"The push refers to repository [{target.familiar_name}]"}
        for layer in p.layers:
            yield progress("Preparing", short(layer["digest"]))
        try:
            session = (await self.registry.sessions(target, credentials, "push,pull"))[-1]
            descriptors = []
            for layer in p.layers:
                ident = short(layer["digest"])
                descriptors.append({"mediaType": MEDIA_LAYER_GZIP, "size": layer["size"],
                                    "digest": layer["digest"]})
                if await session.blob_exists(layer["digest"]):
                    yield progress("Layer already exists", ident)
                    continue
                yield progress("Pushing", ident, 0, layer["size"])
                await session.upload_blob(layer["digest"], layer["size"],
                                          _file_chunks(self.blob_path(p, layer["digest"])))
                yield progress("Pushed", ident)
            config_path = self.blob_path(p, p.config_digest)
            config_size = config_path.stat().st_size
            if not await session.blob_exists(p.config_digest):
                await session.upload_blob(p.config_digest, config_size,
                                          _file_chunks(config_path))
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": MEDIA_MANIFEST_V2,
                "config": {"mediaType": MEDIA_PLUGIN_CONFIG, "size": config_size,
                           "digest": p.config_digest},
                "layers": descriptors,
            }, indent=3).encode()
            digest = await session.put_manifest(target.tag, manifest, MEDIA_MANIFEST_V2)
        except HbdError as e:
            raise SystemError_(f"error pushing plugin: {e.message}") from None
        self.events.publish("plugin", "push", p.id, {"name": p.name})
        yield {"status": f"{target.tag}: digest: {digest} size: {len(manifest)}"}
        yield {"progressDetail": {}, "aux": {"Tag": target.tag, "Digest": digest,
                                             "Size": len(manifest)}}


def _file_chunks(path: Path) -> Any:
    async def chunks() -> AsyncIterator[bytes]:
        with open(path, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, 1024 * 1024):
                yield chunk
    return chunks


def _matches_any(patterns: list[str], text: str) -> bool:
    """filters.Args.Match: each value is a regular expression."""
    for pattern in patterns:
        try:
            if re.search(pattern, text):
                return True
        except re.error:
            continue
    return False
