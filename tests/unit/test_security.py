"""Capability sets, SecurityOpt and seccomp profiles as dockerd 20.10 + runc
make them (values from that dockerd on this machine); the compiled filters
are run in a forked child to see what they block."""

from __future__ import annotations

import base64
import ctypes
import errno
import json
import os

import pytest

from hbd.errors import InvalidParameter, SystemError_
from hbd.services.container import capabilities, seccomp, security
from hbd.services.container.config import normalize_host_config

DEFAULT_MASK = 0xA80425FB


@pytest.mark.parametrize(("add", "drop", "privileged", "mask"), [
    (None, None, False, DEFAULT_MASK),
    (None, ["ALL"], False, 0),
    (["NET_ADMIN"], None, False, 0xA80435FB),
    (["cap_sys_admin"], None, False, 0xA82425FB),
    (["chown"], ["ALL"], False, 0x1),
    (["ALL"], ["NET_RAW"], False, (1 << 41) - 1 - (1 << 13)),
    (None, ["CHOWN", "cap_kill"], False, DEFAULT_MASK & ~0x21),
    (None, None, True, (1 << 41) - 1),
])
def test_capability_sets_as_dockerd(add: list[str] | None, drop: list[str] | None,
                                    privileged: bool, mask: int) -> None:
    assert capabilities.mask(capabilities.effective(add, drop, privileged)) == mask


def test_unknown_capability_is_dockerds_400() -> None:
    with pytest.raises(InvalidParameter, match=r'^invalid CapAdd: unknown capability: '
                                               r'"CAP_FOO"$'):
        capabilities.validate(["foo"], None)
    with pytest.raises(InvalidParameter, match='invalid CapDrop: unknown capability: "CAP_X"'):
        capabilities.validate(None, ["CAP_X"])


def test_runc_sets_for_the_guest() -> None:
    sets = security.cap_sets(capabilities.effective(["NET_ADMIN"], None, False))
    assert sets["bounding"] == sets["effective"] == sets["permitted"]
    assert sum(1 << n for n in sets["bounding"]) == 0xA80435FB
    assert sets["inheritable"] == sets["ambient"] == []


@pytest.mark.parametrize(("opts", "nnp", "profile"), [
    (["no-new-privileges"], True, None),
    (["no-new-privileges=false"], False, None),
    (["no-new-privileges:True"], True, None),
    (["seccomp=unconfined", "apparmor=x", "label=disable", "disable"], False, "unconfined"),
    (["seccomp:{}"], False, "{}"),
])
def test_security_opt_parsed_as_dockerd(opts: list[str], nnp: bool,
                                        profile: str | None) -> None:
    parsed = security.parse_security_opt(opts)
    assert (parsed.no_new_privileges, parsed.seccomp) == (nnp, profile)


@pytest.mark.parametrize(("opt", "message"), [
    ("foo", 'invalid --security-opt 1: "foo"'),
    ("foo=1", 'invalid --security-opt 2: "foo=1"'),
    ("no-new-privileges=maybe", 'invalid --security-opt 2: "no-new-privileges=maybe"'),
    ("systempaths=foo", 'invalid --security-opt 2: "systempaths=foo"'),
])
def test_security_opt_errors_are_dockerds_500(opt: str, message: str) -> None:
    with pytest.raises(SystemError_) as e:
        security.parse_security_opt([opt])
    assert str(e.value) == message


def test_inspect_shapes_as_dockerd() -> None:
    privileged = normalize_host_config({"Privileged": True, "CapAdd": ["net_admin"]})
    assert privileged["MaskedPaths"] is None and privileged["ReadonlyPaths"] is None
    assert privileged["SecurityOpt"] == ["label=disable"]
    assert privileged["CapAdd"] == ["net_admin"]
    unconfined = normalize_host_config({"MaskedPaths": [], "ReadonlyPaths": [],
                                        "SecurityOpt": ["no-new-privileges"]})
    assert (unconfined["MaskedPaths"], unconfined["ReadonlyPaths"]) == ([], [])
    assert unconfined["SecurityOpt"] == ["no-new-privileges"]
    plain = normalize_host_config({})
    assert "/proc/kcore" in plain["MaskedPaths"] and "/proc/sys" in plain["ReadonlyPaths"]
    assert plain["SecurityOpt"] is None and plain["CapAdd"] is None


def test_default_profile_conditions_follow_caps_and_arch() -> None:
    profile = seccomp.load(seccomp.default_profile_text())
    plain = seccomp.resolve(profile, list(capabilities.DEFAULT))
    admin = seccomp.resolve(profile, [*capabilities.DEFAULT, "CAP_SYS_ADMIN"])
    assert plain is not None and admin is not None
    assert plain.arches == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]

    def allowed(r: seccomp.Resolved) -> set[str]:
        return {n for c in r.syscalls if c.action == "SCMP_ACT_ALLOW" for n in c.names}
    assert "mount" not in allowed(plain) and "mount" in allowed(admin)
    assert "arch_prctl" in allowed(plain) and "s390_runtime_instr" not in allowed(plain)
    assert "chroot" in allowed(plain) and "ptrace" in allowed(plain)


def _run_filtered(bpf: bytes, syscall_nr: int, *args: int) -> int:
    """errno (0 for success) of one syscall in a child under the filter."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 255
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            buf = ctypes.create_string_buffer(bpf, len(bpf))

            class Prog(ctypes.Structure):
                _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
            prog = Prog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
            libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
            if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0:  # SECCOMP_MODE_FILTER
                rc = libc.syscall(syscall_nr, *[ctypes.c_long(a) for a in args])
                code = 0 if rc >= 0 else ctypes.get_errno()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


SYS_KEYCTL, SYS_GETPID, SYS_MKDIR, SYS_UNSHARE = 250, 39, 83, 272
CLONE_NEWUTS = 0x04000000


def test_default_filter_blocks_what_docker_blocks() -> None:
    plain = seccomp.compile_profile(None, list(capabilities.DEFAULT))
    assert len(plain) % 8 == 0 and len(plain) > 800
    assert _run_filtered(plain, SYS_GETPID) == 0
    assert _run_filtered(plain, SYS_KEYCTL, 0, 0) == errno.EPERM
    assert _run_filtered(plain, SYS_UNSHARE, CLONE_NEWUTS) == errno.EPERM
    admin = seccomp.compile_profile(None, [*capabilities.DEFAULT, "CAP_SYS_ADMIN"])
    assert _run_filtered(admin, SYS_UNSHARE, CLONE_NEWUTS) == 0


def test_a_given_profile_with_errno_and_unknown_names() -> None:
    profile = json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "nosuchcall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]})
    bpf = seccomp.compile_profile(profile, [])
    assert _run_filtered(bpf, SYS_MKDIR, 0, 0) == errno.EACCES
    assert _run_filtered(bpf, SYS_GETPID) == 0
    assert seccomp.compile_profile('{"defaultAction": ""}', []) == b""


@pytest.mark.parametrize(("profile", "message"), [
    ("{bad", "Decoding seccomp profile failed: "),
    ('{"defaultAction": "SCMP_ACT_FOO"}',
     "failed to create task for container: string SCMP_ACT_FOO is not a valid action for "
     "seccomp: unknown"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "a", "names": ["b"], '
     '"action": "SCMP_ACT_ERRNO"}]}',
     "'name' and 'names' were specified in the seccomp profile"),
])
def test_bad_profiles_fail_at_start_as_dockerd(profile: str, message: str) -> None:
    with pytest.raises(SystemError_) as e:
        security.for_guest({"SecurityOpt": [f"seccomp={profile}"]})
    assert message in str(e.value)


def test_what_the_guest_gets() -> None:
    default = security.for_guest(normalize_host_config({}))
    assert default.seccomp and not default.no_new_privileges
    assert "/proc/timer_list" in default.masked_paths
    payload = default.payload()
    assert base64.b64decode(payload["seccomp"]) == default.seccomp
    assert payload["capabilities"]["bounding"] == capabilities.numbers(
        list(capabilities.DEFAULT))
    privileged = security.for_guest(normalize_host_config({"Privileged": True}))
    assert privileged.seccomp == b"" and privileged.masked_paths == []
    assert len(privileged.capabilities["bounding"]) == 41
    unconfined = security.for_guest({"SecurityOpt": ["seccomp=unconfined",
                                                     "no-new-privileges"]})
    assert unconfined.seccomp == b"" and unconfined.no_new_privileges
