"""Classic BPF seccomp filters compiled by libseccomp (Debian's libseccomp2,
through ctypes): the guest init installs the program as it is.

libseccomp rather than a compiler of our own: runc builds its filters with
it, so the same rules give the same program (the multi-architecture
dispatch, x32's syscall numbers, argument comparisons of 64-bit values on
32-bit ABIs), and a ctypes binding to a shared library works in the
virtualenv install.sh may make, where Debian's python3-seccomp does not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile
from dataclasses import dataclass, field

from hbd.errors import SystemError_

# Actions (seccomp.h): the return value of the filter for a matching call.
ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000


def act_errno(errno: int) -> int:
    return 0x00050000 | (errno & 0xFFFF)


def act_trace(msg: int) -> int:
    return 0x7FF00000 | (msg & 0xFFFF)


# Comparisons (enum scmp_compare).
OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
       "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
# Architecture tokens (AUDIT_ARCH_*) of the ABIs an x86-64 guest runs.
ARCHES = {"SCMP_ARCH_X86_64": 0xC000003E, "SCMP_ARCH_X86": 0x40000003,
          "SCMP_ARCH_X32": 0x4000003E}
NATIVE_ARCH = "SCMP_ARCH_X86_64"


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


@dataclass(frozen=True)
class ArgCondition:
    index: int
    op: int
    value: int
    value_two: int = 0


@dataclass
class Rule:
    """One libseccomp rule: `syscall` (a name) gets `action` when all conditions hold."""

    syscall: str
    action: int
    conditions: list[ArgCondition] = field(default_factory=list)


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise SystemError_(f"libseccomp is not available ({e}): install libseccomp2") from e
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_exist.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


_LIB: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        _LIB = _library()
    return _LIB


def syscall_number(name: str) -> int | None:
    """The native number of a syscall, or None when libseccomp knows no such name."""
    nr = int(_lib().seccomp_syscall_resolve_name(name.encode()))
    return None if nr < 0 else nr


def compile_filter(default_action: int, arches: list[str], rules: list[Rule]) -> bytes:
    """The BPF program (struct sock_filter[]) for these rules; names libseccomp
    does not know are skipped, as runc skips them."""
    lib = _lib()
    ctx = lib.seccomp_init(default_action)
    if not ctx:
        raise SystemError_("seccomp_init failed")
    try:
        for arch in arches:
            token = ARCHES[arch]
            if lib.seccomp_arch_exist(ctx, token) != 0:
                _check(lib.seccomp_arch_add(ctx, token), f"add architecture {arch}")
        for rule in rules:
            _add_rule(lib, ctx, rule)
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _add_rule(lib: ctypes.CDLL, ctx: int, rule: Rule) -> None:
    nr = syscall_number(rule.syscall)
    if nr is None:
        return
    conds = (_ArgCmp * max(1, len(rule.conditions)))(
        *[_ArgCmp(c.index, c.op, c.value, c.value_two) for c in rule.conditions])
    _check(lib.seccomp_rule_add_array(ctx, rule.action, nr, len(rule.conditions), conds),
           f"add a rule for {rule.syscall}")


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    with tempfile.TemporaryFile() as out:
        _check(lib.seccomp_export_bpf(ctx, out.fileno()), "export the filter")
        out.seek(0)
        return out.read()


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise SystemError_(f"seccomp: cannot {what}: {os.strerror(-rc)}")
