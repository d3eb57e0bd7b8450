"""The classic builder (`POST /build`, `DOCKER_BUILDKIT=0 docker build`).

Every step makes an image from the one before. RUN creates a container of
the current image, runs it (a guest like any other) and commits its changes
as a layer, through the container service and the same guest-side path as
`docker commit`. COPY/ADD make a tar on the host from the uploaded context
(or, with --from, have a guest of the source image tar the files) and let a
maintenance guest of the current image unpack it (copy-in) and hand back the
changes. The other instructions only change the config. A step whose parent
image and instruction (with the digest of the files a COPY/ADD copies) were
built before reuses that result: the layer cache. The cache is its
builder's: a tenant's steps are hits for its own builds only (the key has
its project in it), and `docker builder prune` and `system df` show each
asker its own.

Output is dockerd's jsonmessage stream, as dicts; failures are BuildError.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import posixpath
import re
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hbd.drivers.agent import AgentError
from hbd.errors import HbdError, InvalidParameter, NotFound
from hbd.services.build import context as bc
from hbd.services.build.dockerfile import (
    DockerfileError,
    Instruction,
    expand,
    expose_ports,
    healthcheck,
    key_values,
    parse,
    set_env,
    split_words,
)
from hbd.services.container import config as cc
from hbd.services.container.files import GO_MODE_DIR, ContainerFiles, CopyIn
from hbd.services.container.model import Run
from hbd.services.container.service import ContainerService
from hbd.services.image.distribution import Distribution, Platform
from hbd.services.image.model import Image, Layer, now_rfc3339, short_id
from hbd.services.image.owners import holder_of
from hbd.services.image.reference import Reference, parse_reference
from hbd.services.image.registry import Credentials
from hbd.services.image.store import ImageStore
from hbd.services.scope import OPERATOR, Scope
from hbd.services.system.service import ENGINE_VERSION
from hbd.store import StateStore

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
CACHE_KIND = "build-cache"
DEFAULT_SHELL = ["/bin/sh", "-c"]
PROXY_ARGS = {"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
              "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"}
SCRATCH_CONFIG: dict[str, Any] = {"architecture": "amd64", "os": "linux", "config": {},
                                  "rootfs": {"type": "layers", "diff_ids": []}}


class BuildError(InvalidParameter):
    """A step failed; `code` is a RUN's exit status (errorDetail.code)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class BuildOptions:
    tags: list[str] = field(default_factory=list)
    dockerfile: str = "Dockerfile"
    target: str = ""
    build_args: dict[str, str | None] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    nocache: bool = False
    rm: bool = True
    forcerm: bool = False
    quiet: bool = False
    network_mode: str = ""
    pull: bool = False
    # Whose build: a tenant's RUN containers are its own (its network, policy, quotas).
    scope: Scope = OPERATOR
    # --cache-from: only these images' histories serve as the cache.
    cache_from: list[str] = field(default_factory=list)
    # Limits for the RUN steps' containers (memory, shmsize, cpu…), as HostConfig.
    host_config: dict[str, Any] = field(default_factory=dict)
    credentials: dict[str, Credentials] = field(default_factory=dict)


@dataclass
class _Stage:
    name: str
    instructions: list[Instruction]
    image: Image | None = None
    config: dict[str, Any] = field(default_factory=dict)
    author: str = ""
    args: dict[str, str | None] = field(default_factory=dict)  # declared in this stage
    cmd_set: bool = False

    @property
    def shell(self) -> list[str]:
        return list(self.config.get("Shell") or DEFAULT_SHELL)

    def env(self) -> dict[str, str]:
        out = {}
        for e in self.config.get("Env") or []:
            k, _, v = e.partition("=")
            out[k] = v
        return out


def stream(text: str) -> dict[str, Any]:
    return {"stream": text}


def _clean_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if v not in (None, "", [], {}, False)}


class Builder:
    def __init__(self, images: ImageStore, containers: ContainerService,
                 files: ContainerFiles, distribution: Distribution, state: StateStore,
                 tmp_dir: Path) -> None:
        self.images = images
        self.containers = containers
        self.files = files
        self.distribution = distribution
        self.state = state
        self.tmp_dir = tmp_dir
        shutil.rmtree(tmp_dir, ignore_errors=True)  # contexts of builds a crash cut short
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, str] = {}
        self._cache_owner: dict[str, str] = {}  # key -> project ("" the operator's)
        for key, rec in state.load(CACHE_KIND):
            image_id = str(rec.get("image", ""))
            if image_id in images.images:
                self._cache[key] = image_id
                self._cache_owner[key] = str(rec.get("owner", ""))
            else:  # the image went (rmi, prune) while no build looked
                state.delete(CACHE_KIND, key)

    # -- the build ----------------------------------------------------------------

    async def build(self, body: AsyncIterator[bytes], options: BuildOptions
                    ) -> AsyncGenerator[dict[str, Any], None]:
        """The jsonmessage stream of one build. Errors before the first message
        (context, Dockerfile syntax, tags) are raised before it."""
        tags = [parse_reference(t).with_default_tag() for t in options.tags]
        for ref in tags:
            if ref.digest:
                raise InvalidParameter(f"invalid reference format: {ref} is a digest")
        workdir = Path(tempfile.mkdtemp(prefix="build-", dir=self.tmp_dir))
        try:
            ctx = await self._receive(body, workdir)
        except BaseException:
            await asyncio.to_thread(_rmtree, workdir)
            raise
        try:
            stages, meta_args = plan(ctx, options)
        except BaseException:
            ctx.close()
            await asyncio.to_thread(_rmtree, workdir)
            raise
        return self._messages(ctx, workdir, stages, meta_args, tags, options)

    async def _messages(self, ctx: bc.BuildContext, workdir: Path, stages: list[_Stage],
                        meta_args: dict[str, str | None], tags: list[Reference],
                        options: BuildOptions) -> AsyncGenerator[dict[str, Any], None]:
        run = _Run(self, ctx, workdir, stages, meta_args, options)
        buffered: list[dict[str, Any]] = []
        try:
            async for message in run.steps():
                if options.quiet:
                    buffered.append(message)
                else:
                    yield message
            final = run.final
            assert final is not None
            if not options.quiet:
                yield {"aux": {"ID": final.id}}
            unused = sorted(k for k in options.build_args
                            if k not in run.consumed and k not in PROXY_ARGS)
            if unused and not options.quiet:
                yield stream(f"[Warning] One or more build-args [{' '.join(unused)}] "
                             "were not consumed\n")
            if options.quiet:
                yield stream(final.id + "\n")
            else:
                yield stream(f"Successfully built {short_id(final.id)}\n")
            for ref in tags:
                self.images.tag(final.id, ref.name, ref.tag, options.scope)
                if not options.quiet:
                    yield stream(f"Successfully tagged {ref.familiar}\n")
        except HbdError:
            for message in buffered:  # quiet: the output matters now
                yield message
            raise
        except BaseException:
            run.interrupted = True  # the client went away: its step's container goes too
            raise
        finally:
            ctx.close()
            await run.cleanup()
            self._drop_step_disks(run.made, run.final)
            await asyncio.to_thread(_rmtree, workdir)

    async def _receive(self, body: AsyncIterator[bytes], workdir: Path) -> bc.BuildContext:
        raw = workdir / "context.raw"
        with open(raw, "wb") as f:
            async for chunk in body:
                await asyncio.to_thread(f.write, chunk)
        plain = workdir / "context.tar"
        if not await asyncio.to_thread(bc.decompress_file, raw, plain):
            raw.rename(plain)
        else:
            raw.unlink()
        return await asyncio.to_thread(bc.BuildContext, plain)

    def _drop_step_disks(self, made: list[Image], final: Image | None) -> None:
        """The guest disks of the steps' images were needed only to boot the
        next step: keep those of tagged images (and in use), rebuild the rest
        on demand (a later build that changes a step needs its parent's)."""
        keep = {img.chain_id for img in self.images.images.values()
                if img.repo_tags or img.repo_digests or
                self.images.container_usage(img.id, OPERATOR)}
        if final is not None:
            keep.add(final.chain_id)
        for img in made:
            if img.layers and img.chain_id not in keep:
                self.images.disk_path(img).unlink(missing_ok=True)

    # -- cache ------------------------------------------------------------------

    def cache_key(self, scope: Scope, parent: str, created_by: str, config: dict[str, Any]
                  ) -> str:
        """A step's key: the same step of another builder has another key."""
        fields: list[Any] = [parent, created_by, config]
        if scope.is_tenant:
            fields.append(scope.project)
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def cached(self, key: str, scope: Scope) -> Image | None:
        """The step's image, if it is still the asker's to use."""
        image_id = self._cache.get(key)
        img = self.images.images.get(image_id) if image_id else None
        if img is None or self._cache_owner.get(key, "") != holder_of(scope) or \
                not self.images.visible(img, scope):
            return None
        return img

    def remember(self, key: str, img: Image, scope: Scope) -> None:
        self._cache[key] = img.id
        self._cache_owner[key] = holder_of(scope)
        self.state.put(CACHE_KIND, key, {"image": img.id, "owner": holder_of(scope)})

    def cached_steps(self, scope: Scope = OPERATOR) -> dict[str, Image]:
        """The asker's cache (the operator's: all of it): key -> the image the
        step made (of those still here)."""
        return {key: img for key, image_id in self._cache.items()
                if (img := self.images.images.get(image_id)) is not None and
                (not scope.is_tenant or self._cache_owner.get(key) == holder_of(scope))}

    async def prune_cache(self, scope: Scope = OPERATOR) -> dict[str, Any]:
        """`POST /build/prune`: forget the asker's cached steps (the
        operator's: every one), and remove the intermediate images that were
        kept only as the cache (images that `docker images` lists stay); the
        space that freed."""
        mine = self.cached_steps(scope)
        deleted = sorted(mine)
        image_ids = {img.id for img in mine.values()}
        for key in [k for k in self._cache if not scope.is_tenant or k in mine]:
            self.state.delete(CACHE_KIND, key)
            del self._cache[key]
            self._cache_owner.pop(key, None)
        reclaimed = await self.images.remove_intermediates(image_ids, scope)
        return {"CachesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    # -- images -----------------------------------------------------------------

    scratch_id = "sha256:" + hashlib.sha256(
        json.dumps(SCRATCH_CONFIG, separators=(",", ":")).encode()).hexdigest()

    def scratch(self, scope: Scope) -> Image:
        """FROM scratch: an image of no layers (a COPY into it needs one to boot)."""
        config = copy.deepcopy(SCRATCH_CONFIG)
        image_id = self.images.blobs.put_bytes(
            json.dumps(config, separators=(",", ":")).encode())
        return self.images.record_image(Image(image_id, config, []), [], scope)

    def child(self, scope: Scope, parent: Image, config: dict[str, Any], author: str,
              created_by: str, layer: Layer | None, container_id: str = "") -> Image:
        """Record the image a step makes from `parent`, held by the builder."""
        base = parent.config
        history = list(self.images.config_history(parent)) if parent.layers else \
            list(base.get("history") or [])
        created = now_rfc3339()
        entry: dict[str, Any] = {"created": created, "created_by": created_by}
        if layer is None:
            entry["empty_layer"] = True
        history.append(entry)
        container_config = dict(config)
        container_config["Cmd"] = [*DEFAULT_SHELL, created_by.removeprefix("/bin/sh -c ")] \
            if created_by.startswith("/bin/sh -c #(nop)") else container_config.get("Cmd")
        new: dict[str, Any] = {
            "architecture": base.get("architecture") or "amd64",
            "os": base.get("os") or "linux",
            "config": _clean_config({**config, "Image": parent.id}),
            "container_config": _clean_config(container_config),
            "created": created,
            "docker_version": ENGINE_VERSION,
            "history": history,
            "rootfs": {"type": "layers", "diff_ids": [
                *(x.diff_id for x in parent.layers), *([layer.diff_id] if layer else [])]},
        }
        if author:
            new["author"] = author
        if container_id:
            new["container"] = container_id
        image_id = self.images.blobs.put_bytes(json.dumps(new, separators=(",", ":")).encode())
        img = Image(image_id, new, [*parent.layers, *([layer] if layer else [])],
                    parent=parent.id)
        return self.images.record_image(img, [], scope)


def arg_pairs(text: str) -> list[tuple[str, str | None]]:
    """ARG's `NAME` or `NAME=default` words; None when there is no default."""
    pairs: list[tuple[str, str | None]] = []
    for word in split_words(text):
        name, sep, value = word.partition("=")
        if not name:
            raise DockerfileError("ARG names can not be blank")
        pairs.append((name, value if sep else None))
    if not pairs:
        raise DockerfileError("ARG requires at least one argument")
    return pairs


def plan(ctx: bc.BuildContext, options: BuildOptions
         ) -> tuple[list[_Stage], dict[str, str | None]]:
    """Parse the Dockerfile into stages up to the target."""
    name = options.dockerfile or "Dockerfile"
    data = ctx.read(name)
    if data is None and name == "Dockerfile":
        data = ctx.read("dockerfile")
    if data is None:
        raise InvalidParameter(f"Cannot locate specified Dockerfile: {name}")
    ignore = ctx.read(".dockerignore")
    if ignore is not None:
        ctx.set_ignore(ignore.decode(errors="replace"))
    instructions = parse(data.decode(errors="replace").removeprefix("\ufeff"))
    meta_args: dict[str, str | None] = {}
    stages: list[_Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.rest.split()
            stage_name = ""
            if len(words) == 3 and words[1].upper() == "AS":
                stage_name = words[2].lower()
            elif len(words) != 1:
                raise DockerfileError("FROM requires either one or three arguments")
            stages.append(_Stage(stage_name, [ins]))
        elif not stages:
            if ins.keyword != "ARG":
                raise DockerfileError("Please provide a source image with `from` prior "
                                      "to commit")
            for k, v in arg_pairs(ins.rest):
                meta_args[k] = v
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise DockerfileError("No build stage in current context")
    if options.target:
        index = next((i for i, s in enumerate(stages)
                      if s.name == options.target.lower()), None)
        if index is None:
            raise InvalidParameter(f"failed to reach build target {options.target} in "
                                   "Dockerfile")
        stages = stages[:index + 1]
    if options.labels:
        text = " ".join(f"{json.dumps(k)}={json.dumps(v)}"
                        for k, v in sorted(options.labels.items()))
        stages[-1].instructions.append(Instruction("LABEL", text, {}, 0, f"LABEL {text}"))
    return stages, meta_args


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class _Run:
    """One build in progress."""

    def __init__(self, builder: Builder, ctx: bc.BuildContext, workdir: Path,
                 stages: list[_Stage], meta_args: dict[str, str | None],
                 options: BuildOptions) -> None:
        self.b = builder
        self.ctx = ctx
        self.workdir = workdir
        self.stages = stages
        self.meta_args = meta_args
        self.options = options
        self.consumed: set[str] = set()
        self.final: Image | None = None
        self.leftover: list[str] = []  # containers to remove at the end (forcerm)
        self.temporary: list[str] = []  # containers always removed
        self.interrupted = False
        self.made: list[Image] = []  # images with a new layer, made by this build
        self._tmp_counter = 0
        self.cache_sources = self._cache_sources(options.cache_from)

    def _cache_sources(self, refs: list[str]) -> set[str] | None:
        """With --cache-from, the images whose histories may serve as the cache:
        each one named (those that exist) and its parents. None: the local cache."""
        if not refs:
            return None
        sources: set[str] = set()
        for ref in refs:
            try:
                img: Image | None = self.b.images.get(ref, self.options.scope)
            except NotFound:
                continue
            while img is not None and img.id not in sources:
                sources.add(img.id)
                img = self.b.images.images.get(img.parent) if img.parent else None
        return sources

    def cache_hit(self, key: str) -> Image | None:
        """The image a step made before, unless --no-cache; with --cache-from
        only one from those images' histories (dockerd's classic builder then
        ignores the rest of the local cache)."""
        if self.options.nocache:
            return None
        hit = self.b.cached(key, self.options.scope)
        if hit is None or (self.cache_sources is not None and hit.id not in self.cache_sources):
            return None
        return hit

    @property
    def total(self) -> int:
        return sum(len(s.instructions) for s in self.stages)

    def arg_value(self, name: str, default: str | None) -> str | None:
        if name in self.options.build_args:
            self.consumed.add(name)
            value = self.options.build_args[name]
            return value if value is not None else default
        return default

    async def steps(self) -> AsyncIterator[dict[str, Any]]:
        number = 0
        for stage in self.stages:
            for ins in stage.instructions:
                number += 1
                yield stream(f"Step {number}/{self.total} : {ins.original}")
                yield stream("\n")
                async for message in self.dispatch(stage, ins):
                    yield message
                image = stage.image
                assert image is not None
                scratch = ins.keyword == "FROM" and image.id == self.b.scratch_id
                yield stream(f" ---> {'' if scratch else short_id(image.id)}\n")
        self.final = self.stages[-1].image

    async def cleanup(self) -> None:
        remove_all = self.options.forcerm or self.interrupted
        for cid in self.temporary + (self.leftover if remove_all else []):
            with contextlib.suppress(HbdError):
                await self.b.containers.remove(cid, force=True, volumes=True)

    def tmp(self, prefix: str) -> Path:
        self._tmp_counter += 1
        return self.workdir / f"{prefix}-{self._tmp_counter}"

    # -- variables ----------------------------------------------------------------

    def variables(self, stage: _Stage) -> dict[str, str]:
        out = {k: v for k, v in stage.args.items() if v is not None}
        out.update(stage.env())
        return out

    def x(self, stage: _Stage, text: str) -> str:
        return expand(text, self.variables(stage))

    # -- instructions -------------------------------------------------------------

    async def dispatch(self, stage: _Stage, ins: Instruction) -> AsyncIterator[dict[str, Any]]:
        k = ins.keyword
        if k == "FROM":
            async for m in self.do_from(stage, ins):
                yield m
            return
        if k == "RUN":
            async for m in self.do_run(stage, ins):
                yield m
            return
        if k in ("COPY", "ADD"):
            async for m in self.do_copy(stage, ins):
                yield m
            return
        message = self.metadata(stage, ins)
        if message:
            yield message

    async def do_from(self, stage: _Stage, ins: Instruction) -> AsyncIterator[dict[str, Any]]:
        variables = {k: v for k, v in self.meta_args.items() if v is not None}
        for k in list(self.meta_args):
            value = self.arg_value(k, self.meta_args[k])
            if value is not None:
                variables[k] = value
        name = expand(ins.rest.split()[0], variables)
        earlier = next((s for s in self.stages if s.name and s.name == name.lower()
                        and s is not stage and s.image is not None), None)
        img: Image | None = None
        if earlier is not None:
            img = earlier.image
        elif name == "scratch":
            img = self.b.scratch(self.options.scope)
        else:
            async for m in self.image(name):
                if isinstance(m, Image):
                    img = m
                else:
                    yield m
        assert img is not None
        stage.image = img
        stage.config = copy.deepcopy(img.container_config)
        stage.config.pop("Image", None)
        stage.author = str(img.config.get("author") or "")
        for trigger in stage.config.pop("OnBuild", None) or []:
            yield stream(f"# Executing build trigger: {trigger}\n")
            for sub in parse(trigger):
                async for m in self.dispatch(stage, sub):
                    yield m

    async def image(self, name: str) -> AsyncIterator[dict[str, Any] | Image]:
        """A local image, else (or with `pull`) pulled; the progress goes into the stream."""
        if not self.options.pull:
            try:
                yield self.b.images.get(name, self.options.scope)
                return
            except NotFound:
                pass
        ref = parse_reference(name)
        if not ref.digest:
            ref = ref.with_default_tag()
        creds = self.options.credentials.get(ref.domain) or Credentials()
        async for message in self.b.distribution.pull(ref, Platform(), creds,
                                                      self.options.scope):
            yield message
        yield self.b.images.get(str(ref), self.options.scope)

    def metadata(self, stage: _Stage, ins: Instruction) -> dict[str, Any] | None:
        """Steps that change only the config; returns " ---> Using cache" or None."""
        assert stage.image is not None
        k = ins.keyword
        cfg = stage.config
        comment = ""
        if k == "ENV":
            pairs = key_values(self.x(stage, ins.rest), "ENV")
            env = list(cfg.get("Env") or [])
            for name, value in pairs:
                env = set_env(env, name, value)
            cfg["Env"] = env
            comment = "ENV " + " ".join(f"{n}={v}" for n, v in pairs)
        elif k == "ARG":
            shown = []
            for name, default in arg_pairs(ins.rest):
                if default is None and name in self.meta_args:
                    arg = self.arg_value(name, self.meta_args[name])
                else:
                    arg = self.arg_value(name, None if default is None
                                         else self.x(stage, default))
                self.consumed.add(name)
                stage.args[name] = arg
                shown.append(name if default is None else f"{name}={default}")
            comment = "ARG " + " ".join(shown)
        elif k == "LABEL":
            labels = dict(cfg.get("Labels") or {})
            pairs = key_values(self.x(stage, ins.rest), "LABEL")
            for name, value in pairs:
                labels[name] = value
            cfg["Labels"] = labels
            comment = "LABEL " + " ".join(f"{n}={v}" for n, v in pairs)
        elif k == "MAINTAINER":
            stage.author = ins.rest.strip()
            comment = f"MAINTAINER {stage.author}"
        elif k == "WORKDIR":
            path = self.x(stage, ins.rest.strip())
            if not path:
                raise DockerfileError("WORKDIR requires exactly one argument")
            cfg["WorkingDir"] = posixpath.normpath(
                posixpath.join(cfg.get("WorkingDir") or "/", path))
            comment = f"WORKDIR {cfg['WorkingDir']}"
        elif k == "USER":
            user = self.x(stage, ins.rest.strip())
            if not user:
                raise DockerfileError("USER requires exactly one argument")
            cfg["User"] = user
            comment = f"USER {user}"
        elif k == "EXPOSE":
            ports = expose_ports(split_words(self.x(stage, ins.rest)))
            exposed = dict(cfg.get("ExposedPorts") or {})
            exposed.update({p: {} for p in ports})
            cfg["ExposedPorts"] = exposed
            comment = "EXPOSE " + " ".join(sorted(exposed))
        elif k == "VOLUME":
            paths = ins.json_args()
            if paths is None:
                paths = split_words(self.x(stage, ins.rest))
            if not paths or any(not p.strip() for p in paths):
                raise DockerfileError("VOLUME specified can not be an empty string")
            volumes = dict(cfg.get("Volumes") or {})
            volumes.update({p: {} for p in paths})
            cfg["Volumes"] = volumes
            comment = f"VOLUME [{' '.join(paths)}]"
        elif k == "STOPSIGNAL":
            sig = self.x(stage, ins.rest.strip())
            cc.parse_signal(sig)
            cfg["StopSignal"] = sig
            comment = f"STOPSIGNAL {sig}"
        elif k in ("CMD", "ENTRYPOINT"):
            args = ins.json_args()
            if args is None:
                args = [*stage.shell, ins.rest]
            if k == "CMD":
                cfg["Cmd"] = args
                stage.cmd_set = True
                comment = f"CMD {json.dumps(args)}"
            else:
                cfg["Entrypoint"] = args
                if not stage.cmd_set:
                    cfg["Cmd"] = None
                comment = f"ENTRYPOINT {json.dumps(args)}"
        elif k == "SHELL":
            args = ins.json_args()
            if not args:
                raise DockerfileError("SHELL requires the arguments to be in JSON form")
            cfg["Shell"] = args
            comment = f"SHELL {json.dumps(args)}"
        elif k == "HEALTHCHECK":
            cfg["Healthcheck"] = healthcheck(ins)
            comment = f"HEALTHCHECK {json.dumps(cfg['Healthcheck'], sort_keys=True)}"
        elif k == "ONBUILD":
            trigger = ins.rest.strip()
            word = trigger.split()[0].upper() if trigger else ""
            if word in ("ONBUILD", "FROM", "MAINTAINER") or not word:
                raise DockerfileError(f"{word or 'ONBUILD'} isn't allowed as an ONBUILD "
                                      "trigger")
            cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), trigger]
            comment = f"ONBUILD {trigger}"
        else:
            raise DockerfileError(f"unknown instruction: {k}")
        return self.commit_config(stage, f"/bin/sh -c #(nop)  {comment}")

    def commit_config(self, stage: _Stage, created_by: str) -> dict[str, Any] | None:
        assert stage.image is not None
        key = self.b.cache_key(self.options.scope, stage.image.id, created_by, stage.config)
        hit = self.cache_hit(key)
        if hit is not None:
            stage.image = hit
            return stream(" ---> Using cache\n")
        stage.image = self.b.child(self.options.scope, stage.image, stage.config, stage.author,
                                   created_by, None)
        self.b.remember(key, stage.image, self.options.scope)
        return None

    # -- RUN ----------------------------------------------------------------------

    def run_args(self, stage: _Stage) -> list[str]:
        """The build args in effect for a RUN: KEY=value, ENV winning over ARG."""
        env = stage.env()
        return [f"{k}={v}" for k, v in sorted(stage.args.items())
                if v is not None and k not in env]

    async def do_run(self, stage: _Stage, ins: Instruction) -> AsyncIterator[dict[str, Any]]:
        assert stage.image is not None
        args = ins.json_args()
        if args is None:
            args = [*stage.shell, ins.rest]
        if not args:
            raise DockerfileError("RUN requires at least one argument")
        arg_env = self.run_args(stage)
        created_by = " ".join(args)
        if arg_env:
            created_by = f"|{len(arg_env)} {' '.join(arg_env)} {created_by}"
        key = self.b.cache_key(self.options.scope, stage.image.id, created_by, stage.config)
        hit = self.cache_hit(key)
        if hit is not None:
            stage.image = hit
            yield stream(" ---> Using cache\n")
            return
        proxies = [f"{k}={v}" for k, v in self.options.build_args.items()
                   if k in PROXY_ARGS and v is not None and k not in stage.args]
        body: dict[str, Any] = {
            "Image": stage.image.id,
            "Cmd": args,
            "Entrypoint": [""],
            "Env": cc.replace_or_append_env(list(stage.config.get("Env") or []),
                                            arg_env + proxies),
            "User": str(stage.config.get("User") or ""),
            "WorkingDir": str(stage.config.get("WorkingDir") or ""),
            "Healthcheck": {"Test": ["NONE"]},
            "AttachStdout": True,
            "AttachStderr": True,
            "HostConfig": {**self.options.host_config,
                           "NetworkMode": self.options.network_mode or "default"},
        }
        cid = str((await self.b.containers.create(None, body, scope=self.options.scope))["Id"])
        self.leftover.append(cid)
        yield stream(f" ---> Running in {cid[:12]}\n")
        c, attachment = self.b.containers.attach(cid, stdout=True, stderr=True)
        exit_code = self.b.containers.wait_future(cid, "next-exit")
        changes: asyncio.Future[Layer] = asyncio.get_running_loop().create_future()

        async def capture(run: Run) -> None:
            # The guest is still up when the command exits: take its changes now.
            status = run.exited.result() if run.exited.done() else None
            if status is None or status.exit_code != 0:
                changes.cancel()  # the step failed (or its guest vanished): no layer
                return
            try:
                layer = await self.b.files.layer_of_run(run.guest)
            except (HbdError, AgentError) as e:
                if not changes.done():
                    changes.set_exception(e)
                return
            if not changes.done():
                changes.set_result(layer)

        c.before_poweroff = capture
        try:
            try:
                await self.b.containers.start(cid)
            except HbdError as e:
                raise BuildError(e.message) from e
            async for stream_no, data in attachment.output():
                text = data.decode(errors="replace")
                yield stream(f"\x1b[91m{text}\x1b[0m" if stream_no == 2 else text)
            code = await exit_code
        finally:
            self.b.containers.detach(c, attachment)
            if not exit_code.done():
                exit_code.cancel()
        if code != 0:
            raise BuildError(f"The command '{' '.join(args)}' returned a non-zero code: "
                             f"{code}", code)
        await asyncio.wait({changes})
        failed = changes.cancelled() or changes.exception() is not None
        if failed:
            log.info("RUN step %s: its changes from a second boot (%s)", cid[:12],
                     "cancelled" if changes.cancelled() else changes.exception())
            layer = await self.b.files.layer(cid)
        else:
            layer = changes.result()
        with self.b.images.pinned([layer.digest]):
            stage.image = self.b.child(self.options.scope, stage.image, stage.config,
                                       stage.author, created_by, layer, cid)
        self.made.append(stage.image)
        self.b.remember(key, stage.image, self.options.scope)
        if self.options.rm or self.options.forcerm:
            self.leftover.remove(cid)
            await self.b.containers.remove(cid, force=True, volumes=True)
            yield stream(f"Removing intermediate container {cid[:12]}\n")

    # -- COPY / ADD -----------------------------------------------------------------

    async def do_copy(self, stage: _Stage, ins: Instruction) -> AsyncIterator[dict[str, Any]]:
        assert stage.image is not None
        k = ins.keyword
        unknown = set(ins.flags) - {"chown", "from"} - ({"from"} if k == "ADD" else set())
        if k == "ADD" and "from" in ins.flags:
            raise DockerfileError("ADD does not support the --from flag")
        if unknown:
            raise DockerfileError(f"Unknown flag: {sorted(unknown)[0]}")
        words = ins.json_args()
        if words is None:
            words = split_words(self.x(stage, ins.rest))
        else:
            words = [self.x(stage, w) for w in words]
        if len(words) < 2:
            raise DockerfileError(f"{k} requires at least two arguments, but only "
                                  f"{len(words)} {'was' if len(words) == 1 else 'were'} "
                                  "provided. Destination could not be determined.")
        sources, dest_text = words[:-1], words[-1]
        workdir = str(stage.config.get("WorkingDir") or "/")
        dest_is_dir = dest_text.endswith("/") or dest_text in (".", "..") or \
            dest_text.endswith("/.")
        dest = posixpath.normpath(posixpath.join(workdir, dest_text))
        chown = self.x(stage, ins.flags.get("chown", ""))
        if chown and ":" not in chown:
            chown = f"{chown}:{chown}"  # dockerd looks the user's name up as the group too
        for s in sources:
            if re.match(r"^[a-z][a-z0-9+.-]*://", s):
                raise BuildError(f"{k} failed: hbd does not download URLs in {k} ({s}); "
                                 "fetch it with RUN or put it in the build context")
        source_image: Image | None = None
        copies: list[CopyIn] = []
        if "from" in ins.flags:
            async for m in self.from_image(stage, ins):
                if isinstance(m, Image):
                    source_image = m
                else:
                    yield m
            assert source_image is not None
            summary = f"--from={source_image.id} {' '.join(sources)}"
        else:
            copies, summary = await self.from_context(k, sources, dest, dest_is_dir, chown)
        created_by = (f"/bin/sh -c #(nop) {k} {'--chown=' + chown + ' ' if chown else ''}"
                      f"{summary} in {dest_text} ")
        key = self.b.cache_key(self.options.scope, stage.image.id, created_by, stage.config)
        hit = self.cache_hit(key)
        if hit is not None:
            for c in copies:
                await _close(c.body)
            stage.image = hit
            yield stream(" ---> Using cache\n")
            return
        if source_image is not None:
            copies = await self.image_copies(source_image, sources, dest, dest_is_dir, chown)
        body = {"Image": stage.image.id, "Cmd": [*DEFAULT_SHELL, created_by[11:]],
                "Entrypoint": [""], "Healthcheck": {"Test": ["NONE"]},
                "HostConfig": {"NetworkMode": "none"}}
        try:
            cid = await self.file_container(body)
        except BaseException:
            for c in copies:
                await _close(c.body)
            raise
        try:
            layer = await self.b.files.layer(cid, copies)
        except HbdError as e:
            chown_failed = e.message.startswith("unable to convert uid/gid")
            raise BuildError(e.message if chown_failed else f"{k} failed: {e.message}") from e
        finally:
            for c in copies:
                await _close(c.body)
        with self.b.images.pinned([layer.digest]):
            stage.image = self.b.child(self.options.scope, stage.image, stage.config,
                                       stage.author, created_by, layer)
        self.made.append(stage.image)
        self.b.remember(key, stage.image, self.options.scope)
        self.temporary.remove(cid)
        await self.b.containers.remove(cid, force=True, volumes=True)

    async def file_container(self, body: dict[str, Any]) -> str:
        """A container for COPY/ADD (or its --from source) that is never
        started: its files are the image's own, without the image's VOLUMEs
        (dockerd copies into and out of the image, not into volumes)."""
        cid = str((await self.b.containers.create(None, body))["Id"])
        self.temporary.append(cid)
        c = self.b.containers.get(cid)
        anonymous = [m.source for m in c.mounts if m.type == "volume"]
        c.mounts = [m for m in c.mounts if m.type != "volume"]
        for name in anonymous:
            with contextlib.suppress(HbdError):
                await self.b.containers.volumes.remove(name)
        return cid

    async def from_context(self, keyword: str, sources: list[str], dest: str,
                           dest_is_dir: bool, chown: str) -> tuple[list[CopyIn], str]:
        ctx = self.ctx
        found: list[str] = []
        for s in sources:
            found += ctx.resolve(s, keyword)
        if (len(found) > 1 or len(sources) > 1) and not dest_is_dir:
            raise BuildError(f"When using {keyword} with more than one source file, the "
                             "destination must be a directory and end with a /")
        archives = [n for n in found if keyword == "ADD" and ctx.is_archive(n)]
        plain = [n for n in found if n not in archives]
        copies: list[CopyIn] = []
        digests: list[str] = []
        if plain:
            single = len(plain) == 1 and not ctx.is_dir(plain[0])
            only_files = not any(ctx.is_dir(n) for n in plain)
            mode = "file" if single and not dest_is_dir and not archives else \
                "files" if only_files else "dir"
            items = bc.copy_items(ctx, plain)
            path = self.tmp("copy")
            digest = await asyncio.to_thread(_write_to, path, lambda f: bc.write_copy_tar(
                ctx, items, f))
            kind = "file" if single else ("dir" if len(plain) == 1 else "multi")
            digests.append(f"{kind}:{digest}")
            copies.append(CopyIn(dest, mode, chown, _file_chunks(path)))
        for name in archives:
            path = self.tmp("archive")
            digest = await asyncio.to_thread(_write_to, path,
                                             lambda f, n=name: ctx.write_archive(n, f))
            digests.append(f"file:{digest}")
            copies.append(CopyIn(dest, "archive", "", _file_chunks(path)))
        summary = digests[0] if len(digests) == 1 else \
            "multi:" + hashlib.sha256(" ".join(digests).encode()).hexdigest()
        return copies, summary

    async def from_image(self, stage: _Stage, ins: Instruction
                         ) -> AsyncIterator[dict[str, Any] | Image]:
        """The image COPY --from names: a stage (by name or number) or an image."""
        ref = self.x(stage, ins.flags["from"])
        source_stage = next((s for s in self.stages if s.name and s.name == ref.lower()),
                            None)
        if source_stage is None and ref.isdigit() and int(ref) < len(self.stages):
            source_stage = self.stages[int(ref)]
        if source_stage is not None:
            if source_stage is stage:
                raise DockerfileError(f"invalid from flag value {ref}: refers to current "
                                      "build stage")
            if source_stage.image is None:
                raise DockerfileError(f"invalid from flag value {ref}: stage not built yet")
            yield source_stage.image
            return
        async for m in self.image(ref):
            yield m

    async def image_copies(self, img: Image, sources: list[str], dest: str,
                           dest_is_dir: bool, chown: str) -> list[CopyIn]:
        """Tars of files of another image, each from a guest of that image."""
        if len(sources) > 1 and not dest_is_dir:
            raise BuildError("When using COPY with more than one source file, the "
                             "destination must be a directory and end with a /")
        copies: list[CopyIn] = []
        try:
            for s in sources:
                if any(ch in s for ch in "*?["):
                    raise BuildError("COPY failed: hbd does not expand wildcards in "
                                     f"COPY --from ({s})")
                path = posixpath.normpath("/" + s)
                cid = await self.file_container({
                    "Image": img.id, "Cmd": ["#(nop)"], "Entrypoint": [""],
                    "Healthcheck": {"Test": ["NONE"]},
                    "HostConfig": {"NetworkMode": "none"}})
                try:
                    st, body = await self.b.files.get_archive(cid, path, dir_contents=True)
                except NotFound:
                    raise BuildError(f"COPY failed: stat {path}: file does not exist") from None
                is_dir = bool(st["mode"] & GO_MODE_DIR)
                mode = "dir" if is_dir else "files" if dest_is_dir else "file"
                copies.append(CopyIn(dest, mode, chown, body))
        except BaseException:
            for c in copies:
                await _close(c.body)
            raise
        return copies


def _write_to(path: Path, write: Any) -> str:
    with open(path, "wb") as f:
        digest: str = write(f)
    return digest


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    try:
        with open(path, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
    finally:
        path.unlink(missing_ok=True)


async def _close(body: AsyncIterator[bytes]) -> None:
    close = getattr(body, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()

