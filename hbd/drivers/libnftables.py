"""nftables through libnftables' JSON API (ctypes on libnftables.so.1).

Why ctypes and not Debian's python3-nftables: that module is only importable
from Debian's own python3, and hbd runs in a virtualenv (or a pyenv python)
that does not see it; the C library (Debian's libnftables1, which the `nft`
command itself uses) is there either way, and the five calls below are all
of the API hbd needs.

Every call takes one JSON document (`{"nftables": [command, ...]}`), which
the kernel applies as one transaction: all of it or none of it.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import socket
import threading
from typing import Any

# Output flags of libnftables (nftables/libnftables.h).
NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4
NFT_CTX_OUTPUT_ECHO = 1 << 5

LIBRARY = "libnftables.so.1"


class NftError(Exception):
    """libnftables refused a command (or could not be loaded)."""


class _Library:
    """The C library, loaded on first use, its signatures declared once."""

    _lib: ctypes.CDLL | None = None
    _guard = threading.Lock()

    @classmethod
    def get(cls) -> ctypes.CDLL:
        with cls._guard:
            if cls._lib is None:
                try:
                    lib = ctypes.CDLL(LIBRARY)
                except OSError as e:
                    raise NftError(f"cannot load {LIBRARY} (Debian package libnftables1): "
                                   f"{e}") from e
                lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
                lib.nft_ctx_new.restype = ctypes.c_void_p
                lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
                for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                    getattr(lib, name).argtypes = [ctypes.c_void_p]
                for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                    getattr(lib, name).argtypes = [ctypes.c_void_p]
                    getattr(lib, name).restype = ctypes.c_char_p
                lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
                cls._lib = lib
            return cls._lib


# How many descriptor numbers below 1024 are held for contexts made after
# start-up (one per network namespace whose rules the daemon keeps).
LOW_SLOTS = 256
FD_SETSIZE = 1024
NETLINK_NETFILTER = 12


class _LowDescriptors:
    """Descriptor numbers below FD_SETSIZE, held open on /dev/null from
    start-up until a context needs one (see _Contexts)."""

    held: list[int] = []
    reserved = False  # once reserve() ran, contexts take held numbers only

    @classmethod
    def reserve(cls, count: int) -> None:
        cls.reserved = True
        for _ in range(count):
            fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            if fd >= FD_SETSIZE:
                os.close(fd)
                return
            cls.held.append(fd)

    @classmethod
    def release_one(cls) -> int | None:
        """A held number, closed: the next descriptor made takes it (or a lower one)."""
        if not cls.held:
            return None
        fd = cls.held.pop()
        os.close(fd)
        return fd

    @classmethod
    def hold_again(cls, fd: int) -> None:
        """Hold `fd` again, if nobody has taken it meanwhile."""
        with open("/dev/null", "rb") as null:
            again = fcntl.fcntl(null.fileno(), fcntl.F_DUPFD_CLOEXEC, fd)
        if again == fd:
            cls.held.append(fd)
        else:
            os.close(again)


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def _is_netfilter_socket(fd: int) -> bool:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return sock.family == socket.AF_NETLINK and sock.proto == NETLINK_NETFILTER
    finally:
        sock.close()


class _Contexts:
    """libnftables contexts, one per network namespace, each kept for as long
    as its namespace is in use.

    Why kept, and why their descriptors are chosen: a context opens its
    netlink socket when it is made, and libnftables waits on that socket
    with select(), whose fd_set holds descriptors below 1024 only (glibc's
    fortified FD_SET aborts the whole process beyond). An hbd with a few
    hundred guests holds well over 1024 descriptors, so a context made then
    got a socket numbered above and killed the daemon at its next rule
    change (it did, at 248 idle containers). The daemon's own context is made
    at start-up; one made later (a tenant's namespace) takes a number held
    free for it since start-up, and a context that ends up above 1024 all
    the same is refused (NftError), never used.

    A context's socket belongs to the network namespace of the thread that
    made it: `key` names that namespace, and a context is made by the first
    call with its key, in the caller's thread. Contexts are not safe to
    share between threads: one lock serialises every call."""

    # key -> (context, the low number its socket took, if it took a held one)
    by_key: dict[str, tuple[int, int | None]] = {}
    lock = threading.Lock()

    @classmethod
    def get(cls, key: str) -> int:
        """(Call with the lock held.)"""
        made = cls.by_key.get(key)
        if made is None:
            made = cls._make()
            cls.by_key[key] = made
        return made[0]

    @classmethod
    def _make(cls) -> tuple[int, int | None]:
        """A new context whose socket has a number below 1024, and the held
        number it took (None: a lower free one, or nothing was ever held)."""
        lib = _Library.get()
        for _ in range(8):
            slot = _LowDescriptors.release_one()
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise NftError("nft_ctx_new failed")
            taken: int | None = None
            if slot is None:
                if _LowDescriptors.reserved:  # all of them in use
                    lib.nft_ctx_free(ctx)
                    raise NftError("no descriptor below 1024 left for an nftables context "
                                   f"(hbd holds {LOW_SLOTS} for them)")
            elif _is_netfilter_socket(slot):
                taken = slot
            elif not _is_open(slot):
                # The socket took a lower free number (still below it).
                _LowDescriptors.hold_again(slot)
            else:
                # Another thread's descriptor took the number first: where
                # the socket went is unknown, perhaps above 1024.
                lib.nft_ctx_free(ctx)
                continue
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            return int(ctx), taken
        raise NftError("cannot make an nftables context with a descriptor below 1024")

    @classmethod
    def forget(cls, key: str) -> None:
        with cls.lock:
            made = cls.by_key.pop(key, None)
            if made is None:
                return
            ctx, slot = made
            _Library.get().nft_ctx_free(ctx)
            if slot is not None:
                _LowDescriptors.hold_again(slot)


def open_context(low_slots: int = LOW_SLOTS) -> None:
    """Make the daemon's own context now, while it holds few descriptors, and
    hold `low_slots` low numbers for contexts made later (see _Contexts):
    call at start-up, before guests are found or started."""
    with _Contexts.lock:
        _Contexts.get("")
        if not _LowDescriptors.reserved:
            _LowDescriptors.reserve(low_slots)


def forget_context(key: str) -> None:
    """The context of a network namespace that is going away closed (it would
    keep the namespace alive)."""
    _Contexts.forget(key)


def run(commands: list[dict[str, Any]], echo: bool = False, key: str = "") -> list[dict[str, Any]]:
    """Apply `commands` as one transaction; what libnftables answers, as JSON
    objects: with `echo`, the commands back with the handles the kernel gave
    what they added; for `list` commands, what was listed. `key` names the
    network namespace the calling thread is in ("": the daemon's own)."""
    lib = _Library.get()
    flags = NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE | (NFT_CTX_OUTPUT_ECHO if echo else 0)
    document = json.dumps({"nftables": commands}).encode()
    with _Contexts.lock:
        ctx = _Contexts.get(key)
        lib.nft_ctx_output_set_flags(ctx, flags)
        status = int(lib.nft_run_cmd_from_buffer(ctx, document))
        # Reading a buffer empties it for the next call.
        output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
    if status != 0:
        raise NftError(error.strip() or f"libnftables failed ({status})")
    return _objects(output)


def _objects(output: str) -> list[dict[str, Any]]:
    """The objects of every JSON document in `output` (an echo and a listing
    each print one, one after the other)."""
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(output) and output[position].isspace():
            position += 1
        if position >= len(output):
            return objects
        document, position = decoder.raw_decode(output, position)
        objects.extend(document.get("nftables", []))
