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
import json
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


class _Context:
    """The daemon's one libnftables context, made once and kept.

    Why one, made early, and not one per call: a context opens its netlink
    socket when it is made, and libnftables waits on that socket with
    select(), whose fd_set holds descriptors below 1024 only (glibc's
    fortified FD_SET aborts the whole process beyond). An hbd with a few
    hundred guests holds well over 1024 descriptors, so a context made then
    would get a socket numbered above and kill the daemon at its next rule
    change (it did, at 248 idle containers). Made at start-up (`open`), the
    socket has a low number for good. A context is not safe to share
    between threads: the lock serialises its calls."""

    _ctx: int | None = None
    _lock = threading.Lock()

    @classmethod
    def open(cls) -> None:
        with cls._lock:
            cls._open_locked()

    @classmethod
    def _open_locked(cls) -> int:
        if cls._ctx is None:
            lib = _Library.get()
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise NftError("nft_ctx_new failed")
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            cls._ctx = int(ctx)
        return cls._ctx

    @classmethod
    def run(cls, document: str, flags: int) -> tuple[int, str, str]:
        lib = _Library.get()
        with cls._lock:
            ctx = cls._open_locked()
            lib.nft_ctx_output_set_flags(ctx, flags)
            status = int(lib.nft_run_cmd_from_buffer(ctx, document.encode()))
            # Reading a buffer empties it for the next call.
            output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        return status, output, error


def open_context() -> None:
    """Make the daemon's context now, while it holds few descriptors (see
    _Context): call at start-up, before guests are found or started."""
    _Context.open()


def run(commands: list[dict[str, Any]], echo: bool = False) -> list[dict[str, Any]]:
    """Apply `commands` as one transaction; what libnftables answers, as JSON
    objects: with `echo`, the commands back with the handles the kernel gave
    what they added; for `list` commands, what was listed."""
    flags = NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE | (NFT_CTX_OUTPUT_ECHO if echo else 0)
    status, output, error = _Context.run(json.dumps({"nftables": commands}), flags)
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
