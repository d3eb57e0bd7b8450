"""The in-memory registry of containers, by ID and by name, backed by their
records in the state store; and where each container's files live."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from hbd.errors import Conflict, InvalidParameter, no_such_container
from hbd.events import EventBus
from hbd.services.container.logs import LogDriver, json_file_name, log_driver
from hbd.services.container.model import Container
from hbd.services.container.outputmark import FILE_NAME, OutputMark, OutputMarkFile
from hbd.services.scope import OPERATOR, Scope, owner_of, split_owner
from hbd.services.timefmt import ZERO_TIME
from hbd.store import StateStore

log = logging.getLogger(__name__)


class ContainerStore:
    def __init__(self, state: StateStore, events: EventBus, root: Path,
                 exec_root: Path) -> None:
        self.state = state
        self.events = events
        self.root = root
        self.exec_root = exec_root
        self.root.mkdir(parents=True, exist_ok=True)
        self.containers: dict[str, Container] = {}
        self.names: dict[str, str] = {}
        # Told when a container's run ends (removed=False) and when it is
        # removed (removed=True); exec instances use it to settle and forget.
        self.on_stopped: list[Callable[[Container, bool], None]] = []
        for key, rec in state.load("containers"):
            try:
                c = Container.from_record(rec)
            except (KeyError, TypeError) as e:
                log.error("dropping unreadable container record %s: %s", key, e)
                continue
            self.containers[c.id] = c
            self.names[c.name] = c.id

    def get(self, ref: str) -> Container:
        """By full ID, name, or unique ID prefix (dockerd's GetContainer order).
        A reference qualified with an owner (`X@project`, hbd.services.scope)
        finds that owner's containers only."""
        base, owner = split_owner(ref)
        if not base:
            raise no_such_container(ref)
        candidates = self.containers if owner is None else \
            {cid: c for cid, c in self.containers.items() if owner_of(c.name) == owner}
        if base in candidates:
            return candidates[base]
        name = ref if ref.startswith("/") else "/" + ref
        if name in self.names:
            return self.containers[self.names[name]]
        matches = [cid for cid in candidates if cid.startswith(base)]
        if len(matches) == 1:
            return candidates[matches[0]]
        if len(matches) > 1:
            raise InvalidParameter(f"Multiple IDs found with provided prefix: {ref}")
        raise no_such_container(ref)

    def visible(self, scope: Scope) -> list[Container]:
        """The containers the asker may see."""
        return [c for c in self.containers.values() if scope.sees(c.name)]

    def check_name_free(self, name: str) -> None:
        if name in self.names:
            raise Conflict(
                f'Conflict. The container name "{name}" is already in use by container '
                f'"{self.names[name]}". You have to remove (or rename) that container to be '
                "able to reuse that name.")

    def add(self, c: Container) -> None:
        self.names[c.name] = c.id
        self.containers[c.id] = c
        self.save(c)

    def forget(self, c: Container) -> None:
        """Out of the registry and out of the state store."""
        self.names.pop(c.name, None)
        self.containers.pop(c.id, None)
        self.state.delete("containers", c.id)

    def rename(self, c: Container, name: str) -> None:
        del self.names[c.name]
        self.names[name] = c.id
        c.name = name
        self.save(c)

    def save(self, c: Container) -> None:
        self.state.put("containers", c.id, c.record())

    def event(self, c: Container, action: str, **extra: str) -> None:
        self.events.publish("container", action, c.id, {**c.event_attributes(), **extra})

    # -- who uses what -----------------------------------------------------------

    def image_usage(self, image_id: str, scope: Scope = OPERATOR) -> list[tuple[str, bool]]:
        """The containers the asker sees that use the image, as their own or
        mounted: (id, running)."""
        return [(c.id, c.state.running) for c in self.containers.values()
                if scope.sees(c.name) and (c.image_id == image_id or any(
                    m.type == "image" and m.source == image_id for m in c.mounts))]

    def volume_users(self, name: str) -> list[str]:
        return [c.id for c in self.containers.values()
                if any(m.type == "volume" and m.source == name for m in c.mounts)]

    def configured_on(self, network_name: str) -> list[str]:
        return [c.id for c in self.containers.values() if network_name in c.networks]

    # -- where a container's files are ---------------------------------------------

    def dir(self, c: Container) -> Path:
        return self.root / c.id

    def log_driver(self, c: Container) -> LogDriver:
        """Where the container's output goes; SystemError_ for the option values
        that dockerd refuses when the logger starts."""
        return log_driver(c.host_config.get("LogConfig") or {}, self.dir(c), c.id)

    def output_marks(self, c: Container, *, fresh: bool) -> OutputMarkFile | None:
        """Where the run's output is recorded as logged (outputmark.py);
        `fresh` for a new run, else the one an earlier hbd left."""
        try:
            return OutputMarkFile(self.dir(c) / FILE_NAME, fresh=fresh)
        except OSError as e:
            log.warning("container %s: no output mark (%s): a crash of hbd may lose "
                        "or repeat some of its output", c.id[:12], e)
            return None

    def output_mark(self, c: Container) -> OutputMark | None:
        return OutputMarkFile.read(self.dir(c) / FILE_NAME)

    def log_path_shown(self, c: Container) -> str:
        """Inspect's LogPath: dockerd sets it when a json-file logger starts; the
        files of other drivers are private."""
        driver = (c.host_config.get("LogConfig") or {}).get("Type") or "json-file"
        if driver != "json-file" or c.state.started_at == ZERO_TIME:
            return ""
        return str(self.dir(c) / json_file_name(c.id))

