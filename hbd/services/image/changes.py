"""`--change`: Dockerfile instructions applied to an image config, as dockerd's
BuildFromConfig does for `docker commit` and `docker import`.

The changes are one Dockerfile (joined with newlines, so a line may continue
into the next change). Only instructions that set config are allowed; their
arguments expand `$VAR` from the config's Env where dockerd expands them
(ENV, LABEL, EXPOSE, USER, WORKDIR, VOLUME, STOPSIGNAL), and a shell-form
CMD or ENTRYPOINT runs in the config's Shell.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hbd.errors import InvalidParameter
from hbd.services.build.dockerfile import (
    DockerfileError,
    Instruction,
    expand,
    expose_ports,
    healthcheck,
    instruction,
    key_values,
    logical_lines,
    set_env,
    split_words,
)
from hbd.services.container.config import parse_signal

DEFAULT_SHELL = ["/bin/sh", "-c"]
# What a change may be (moby's validCommitCommands; STOPSIGNAL since Docker 25).
VALID = {"CMD", "ENTRYPOINT", "HEALTHCHECK", "ENV", "EXPOSE", "LABEL", "ONBUILD",
         "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
_EXACTLY_ONE = {"USER", "WORKDIR", "STOPSIGNAL"}
_NOT_TRIGGERS = {"ONBUILD", "FROM", "MAINTAINER"}


@dataclass
class _State:
    """The config being changed, and whether a CMD was set (an ENTRYPOINT
    drops the old Cmd unless one was)."""

    config: dict[str, Any]
    cmd_set: bool = False

    def x(self, text: str) -> str:
        """`$VAR` expanded from the config's Env as it is now."""
        env = dict(e.partition("=")[::2] for e in self.config.get("Env") or [])
        return expand(text, env)

    @property
    def shell(self) -> list[str]:
        return list(self.config.get("Shell") or DEFAULT_SHELL)


def apply_changes(config: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """A copy of `config` with `changes` applied; dockerd's 400s for bad ones."""
    if not changes:
        return copy.deepcopy(config)
    lines = logical_lines("\n".join(changes))
    if not lines:
        raise InvalidParameter("file with no instructions")
    for _, text in lines:
        keyword = text.split(None, 1)[0]
        if keyword.upper() not in VALID:
            raise InvalidParameter(f"{keyword.lower()} is not a valid change command")
    instructions = [_parse(text, number) for number, text in lines]
    state = _State(copy.deepcopy(config))
    for ins in instructions:
        _DISPATCH[ins.keyword](state, ins)
    return state.config


def _parse(text: str, number: int) -> Instruction:
    words = text.split(None, 1)
    keyword = words[0].upper()
    if len(words) > 1:
        return instruction(text, number)
    if keyword in ("CMD", "ENTRYPOINT"):
        return Instruction(keyword, "", line=number, original=text)  # dockerd takes it
    how = "exactly one argument" if keyword in _EXACTLY_ONE else "at least one argument"
    raise DockerfileError(f"{keyword} requires {how}")


def _command(state: _State, ins: Instruction) -> list[str]:
    args = ins.json_args()
    if args is not None:
        return args
    return [*state.shell, ins.rest] if ins.rest else state.shell


def _cmd(state: _State, ins: Instruction) -> None:
    state.config["Cmd"] = _command(state, ins)
    state.cmd_set = True


def _entrypoint(state: _State, ins: Instruction) -> None:
    state.config["Entrypoint"] = _command(state, ins)
    if not state.cmd_set:
        state.config["Cmd"] = None


def _env(state: _State, ins: Instruction) -> None:
    env = list(state.config.get("Env") or [])
    for name, value in key_values(state.x(ins.rest), "ENV"):
        env = set_env(env, name, value)
    state.config["Env"] = env


def _label(state: _State, ins: Instruction) -> None:
    labels = dict(state.config.get("Labels") or {})
    labels.update(key_values(state.x(ins.rest), "LABEL"))
    state.config["Labels"] = labels


def _expose(state: _State, ins: Instruction) -> None:
    ports = dict(state.config.get("ExposedPorts") or {})
    ports.update({p: {} for p in expose_ports(split_words(state.x(ins.rest)))})
    state.config["ExposedPorts"] = ports


def _user(state: _State, ins: Instruction) -> None:
    state.config["User"] = state.x(ins.rest.strip())


def _workdir(state: _State, ins: Instruction) -> None:
    path = state.x(ins.rest.strip())
    state.config["WorkingDir"] = posixpath.normpath(
        posixpath.join(state.config.get("WorkingDir") or "/", path))


def _volume(state: _State, ins: Instruction) -> None:
    paths = ins.json_args()
    if paths is None:
        paths = split_words(state.x(ins.rest))
    if not paths or any(not p.strip() for p in paths):
        raise DockerfileError("VOLUME specified can not be an empty string")
    volumes = dict(state.config.get("Volumes") or {})
    volumes.update({p: {} for p in paths})
    state.config["Volumes"] = volumes


def _stopsignal(state: _State, ins: Instruction) -> None:
    signal = state.x(ins.rest.strip())
    parse_signal(signal)
    state.config["StopSignal"] = signal


def _healthcheck(state: _State, ins: Instruction) -> None:
    state.config["Healthcheck"] = healthcheck(ins)


def _onbuild(state: _State, ins: Instruction) -> None:
    trigger = ins.rest.strip()
    word = trigger.split(None, 1)[0].upper()
    if word == "ONBUILD":
        raise DockerfileError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if word in _NOT_TRIGGERS:
        raise DockerfileError(f"{word} isn't allowed as an ONBUILD trigger")
    state.config["OnBuild"] = [*(state.config.get("OnBuild") or []), trigger]


_DISPATCH: dict[str, Callable[[_State, Instruction], None]] = {
    "CMD": _cmd, "ENTRYPOINT": _entrypoint, "ENV": _env, "LABEL": _label,
    "EXPOSE": _expose, "USER": _user, "WORKDIR": _workdir, "VOLUME": _volume,
    "STOPSIGNAL": _stopsignal, "HEALTHCHECK": _healthcheck, "ONBUILD": _onbuild,
}
