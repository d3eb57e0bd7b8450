"""Docker's seccomp profiles (moby's profiles/seccomp): the default one and
those `--security-opt seccomp=<json>` sends, resolved against the
container's capabilities and the guest's architecture as dockerd resolves
them (setupSeccomp), then compiled to BPF as runc compiles them."""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from hbd.drivers import libseccomp
from hbd.drivers.libseccomp import ArgCondition, Rule
from hbd.errors import SystemError_

DEFAULT_PROFILE = Path(__file__).parent / "profiles" / "seccomp-default.json"
# The guest's architecture, as moby names it (Go's "amd64" in libseccomp's words).
GUEST_ARCH = "amd64"
# The oldest guest kernel hbd builds: profiles' minKernel conditions are
# decided against it (every one the default profile has is older).
GUEST_KERNEL = (6, 1)
# runc's default errno for SCMP_ACT_ERRNO without errnoRet.
DEFAULT_ERRNO = errno.EPERM


class ProfileError(SystemError_):
    """A profile dockerd or runc would refuse; the message is theirs."""


@dataclass
class Syscall:
    names: list[str]
    action: str
    errno_ret: int | None = None
    args: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Resolved:
    """A profile after its includes and excludes: what runc gets."""

    default_action: str
    default_errno: int | None
    arches: list[str]
    syscalls: list[Syscall]


@cache
def default_profile_text() -> str:
    return DEFAULT_PROFILE.read_text()


def load(text: str) -> dict[str, Any]:
    try:
        profile = json.loads(text)
    except ValueError as e:
        raise ProfileError(f"Decoding seccomp profile failed: {e}") from None
    if not isinstance(profile, dict):
        raise ProfileError("Decoding seccomp profile failed: json: cannot unmarshal "
                           "into Go value of type seccomp.Seccomp")
    return profile


def resolve(profile: dict[str, Any], bounding: list[str]) -> Resolved | None:
    """moby's setupSeccomp; None when the profile asks for no filter."""
    default_action = str(profile.get("defaultAction") or "")
    calls = profile.get("syscalls") or []
    if not default_action and not calls:
        return None
    if profile.get("architectures") and profile.get("archMap"):
        raise ProfileError("'architectures' and 'archMap' were specified in the seccomp "
                           "profile, use either 'architectures' or 'archMap'")
    arches = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == libseccomp.NATIVE_ARCH:
            arches += [entry["architecture"], *(entry.get("subArchitectures") or [])]
            break
    syscalls = [_syscall(call) for call in calls if _applies(call, bounding)]
    return Resolved(default_action, profile.get("defaultErrnoRet"), arches, syscalls)


def _applies(call: dict[str, Any], bounding: list[str]) -> bool:
    """A rule's includes and excludes: arches, caps (of the bounding set), minKernel."""
    excludes = call.get("excludes") or {}
    includes = call.get("includes") or {}
    if GUEST_ARCH in (excludes.get("arches") or []):
        return False
    if any(c in bounding for c in excludes.get("caps") or []):
        return False
    if excludes.get("minKernel") and _kernel_at_least(excludes["minKernel"]):
        return False
    if includes.get("arches") and GUEST_ARCH not in includes["arches"]:
        return False
    if any(c not in bounding for c in includes.get("caps") or []):
        return False
    return not (includes.get("minKernel") and not _kernel_at_least(includes["minKernel"]))


def _kernel_at_least(version: str) -> bool:
    try:
        wanted = tuple(int(p) for p in version.split("-", maxsplit=1)[0].split(".")[:2])
    except ValueError:
        raise ProfileError(f"invalid kernel version: {version}") from None
    return wanted <= GUEST_KERNEL


def _syscall(call: dict[str, Any]) -> Syscall:
    if call.get("name") and call.get("names"):
        raise ProfileError("'name' and 'names' were specified in the seccomp profile, use "
                           "either 'name' or 'names'")
    names = [call["name"]] if call.get("name") else list(call.get("names") or [])
    return Syscall(names, str(call.get("action") or ""), call.get("errnoRet"),
                   list(call.get("args") or []))


# -- compiled as runc compiles it ----------------------------------------------------------


def _action(name: str, errno_ret: int | None) -> int:
    simple = {"SCMP_ACT_KILL": libseccomp.ACT_KILL_THREAD,
              "SCMP_ACT_KILL_THREAD": libseccomp.ACT_KILL_THREAD,
              "SCMP_ACT_KILL_PROCESS": libseccomp.ACT_KILL_PROCESS,
              "SCMP_ACT_TRAP": libseccomp.ACT_TRAP, "SCMP_ACT_ALLOW": libseccomp.ACT_ALLOW,
              "SCMP_ACT_LOG": libseccomp.ACT_LOG}
    if name in simple:
        return simple[name]
    if name == "SCMP_ACT_ERRNO":
        return libseccomp.act_errno(DEFAULT_ERRNO if errno_ret is None else errno_ret)
    if name == "SCMP_ACT_TRACE":
        return libseccomp.act_trace(errno.EPERM if errno_ret is None else errno_ret)
    raise ProfileError(f"string {name} is not a valid action for seccomp")


def _conditions(args: list[dict[str, Any]]) -> list[list[ArgCondition]]:
    """runc's rule split: conditions on distinct arguments make one rule (all
    must hold); two on one argument make one rule each (either may)."""
    conds = []
    for arg in args:
        op = str(arg.get("op") or "")
        if op not in libseccomp.OPS:
            raise ProfileError(f"string {op} is not a valid operator for seccomp")
        index = int(arg.get("index") or 0)
        if not 0 <= index <= 5:
            raise ProfileError("syscalls can have at most 6 arguments")
        conds.append(ArgCondition(index, libseccomp.OPS[op], int(arg.get("value") or 0),
                                  int(arg.get("valueTwo") or 0)))
    indexes = [c.index for c in conds]
    if len(set(indexes)) < len(indexes):
        return [[c] for c in conds]
    return [conds]


def compile_resolved(resolved: Resolved) -> bytes:
    default = _action(resolved.default_action, resolved.default_errno)
    rules = []
    for call in resolved.syscalls:
        action = _action(call.action, call.errno_ret)
        if action == default:
            continue  # runc skips a rule that says what the default says
        for conds in _conditions(call.args):
            rules += [Rule(name, action, conds) for name in call.names]
    return libseccomp.compile_filter(default, resolved.arches, rules)


def compile_profile(text: str | None, bounding: list[str]) -> bytes:
    """The BPF filter for a container: `text` is a profile's JSON (None: the
    default profile); b"" when the profile asks for none."""
    return _compile_cached(text, tuple(sorted(bounding)))


@lru_cache(maxsize=64)
def _compile_cached(text: str | None, bounding: tuple[str, ...]) -> bytes:
    # Cached: most containers share the default profile and capability set,
    # and compiling takes ~15 ms of the event loop.
    resolved = resolve(load(text if text is not None else default_profile_text()),
                       list(bounding))
    return b"" if resolved is None else compile_resolved(resolved)
