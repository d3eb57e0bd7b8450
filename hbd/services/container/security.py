"""A container's security settings as dockerd 20.10 + runc make them:
HostConfig.CapAdd/CapDrop/Privileged/SecurityOpt/MaskedPaths/ReadonlyPaths
checked at create, and turned at start into what the guest init applies to
every process of the container (PROTOCOL.md §3, CREATE's security fields).

SecurityOpt, as dockerd's parseSecurityOpt reads it:
- `no-new-privileges`, `no-new-privileges=<bool>` (or `:`): PR_SET_NO_NEW_PRIVS.
- `seccomp=unconfined`: no filter; `seccomp=<json>` (the CLI sends a
  profile file's content): that profile instead of Docker's default.
- `apparmor=…`, `label=…`, `disable`: accepted and without effect, as
  dockerd leaves them on a host without AppArmor and SELinux (a guest has
  neither).
- `systempaths=unconfined` is the CLI's: it sends empty MaskedPaths and
  ReadonlyPaths instead, which hbd honours as given.
Anything else is dockerd's `invalid --security-opt` error (a 500, as there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hbd.drivers.agent import SecuritySpec
from hbd.errors import SystemError_
from hbd.services.container import capabilities, seccomp

_GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
             "0": False, "f": False, "F": False, "FALSE": False, "false": False,
             "False": False}
_ACCEPTED_KEYS = ("label", "apparmor")
# dockerd adds this to a privileged container's SecurityOpt at create.
PRIVILEGED_LABEL = "label=disable"


@dataclass
class SecurityOptions:
    """SecurityOpt, parsed."""

    no_new_privileges: bool = False
    # None: Docker's default profile; "unconfined": none; else a profile's JSON.
    seccomp: str | None = None


def parse_security_opt(opts: list[str] | None) -> SecurityOptions:
    out = SecurityOptions()
    for opt in opts or []:
        if not isinstance(opt, str):
            raise SystemError_(f'invalid --security-opt 1: "{opt}"')
        if opt == "no-new-privileges":
            out.no_new_privileges = True
            continue
        if opt == "disable":
            continue
        sep = "=" if "=" in opt else ":" if ":" in opt else ""
        if not sep:
            raise SystemError_(f'invalid --security-opt 1: "{opt}"')
        key, value = opt.split(sep, 1)
        if key == "seccomp":
            out.seccomp = value
        elif key == "no-new-privileges" and value in _GO_BOOLS:
            out.no_new_privileges = _GO_BOOLS[value]
        elif key not in _ACCEPTED_KEYS:
            raise SystemError_(f'invalid --security-opt 2: "{opt}"')
    return out


def check(hc: dict[str, Any]) -> None:
    """dockerd's checks at create and update, normalising hc as it shows it."""
    capabilities.validate(hc.get("CapAdd"), hc.get("CapDrop"))
    parse_security_opt(hc.get("SecurityOpt"))
    for key in ("MaskedPaths", "ReadonlyPaths"):
        paths = hc.get(key)
        if paths is not None and not (isinstance(paths, list) and
                                      all(isinstance(p, str) for p in paths)):
            raise SystemError_(f"json: cannot unmarshal into Go struct field "
                               f"HostConfig.{key} of type string")


def normalize_privileged(hc: dict[str, Any], body: dict[str, Any]) -> None:
    """A privileged container has no masked or read-only paths unless the
    request names some, and dockerd's label=disable in SecurityOpt."""
    if not hc.get("Privileged"):
        return
    for key in ("MaskedPaths", "ReadonlyPaths"):
        if body.get(key) is None:
            hc[key] = None
    opts = list(hc.get("SecurityOpt") or [])
    if PRIVILEGED_LABEL not in opts:
        hc["SecurityOpt"] = [*opts, PRIVILEGED_LABEL]


def cap_sets(caps: list[str]) -> dict[str, list[int]]:
    """The OCI process capabilities dockerd 20.10.24 sets: bounding,
    effective and permitted; inheritable empty since CVE-2022-24769; no
    ambient. The kernel then clears a non-root user's at execve, as there."""
    nums = capabilities.numbers(caps)
    return {"bounding": nums, "effective": nums, "permitted": nums, "inheritable": [],
            "ambient": []}


def for_guest(hc: dict[str, Any]) -> SecuritySpec:
    """At start: the container's capability sets, seccomp filter (compiled
    against its bounding set, as moby resolves a profile's caps
    conditions), no_new_privs and paths. Profile errors are dockerd's."""
    privileged = bool(hc.get("Privileged"))
    caps = capabilities.effective(hc.get("CapAdd"), hc.get("CapDrop"), privileged)
    opts = parse_security_opt(hc.get("SecurityOpt"))
    confined = not privileged and opts.seccomp != "unconfined"
    try:
        bpf = seccomp.compile_profile(opts.seccomp, caps) if confined else b""
    except seccomp.ProfileError as e:
        if str(e).startswith("Decoding"):
            raise
        raise SystemError_(f"failed to create task for container: {e}: unknown") from None
    return SecuritySpec(
        capabilities=cap_sets(caps), no_new_privileges=opts.no_new_privileges,
        seccomp=bpf,
        # As given: a privileged container's are null unless its request named some.
        masked_paths=list(hc.get("MaskedPaths") or []),
        readonly_paths=list(hc.get("ReadonlyPaths") or []))
