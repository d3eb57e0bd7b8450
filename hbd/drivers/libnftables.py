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


def run(commands: list[dict[str, Any]], echo: bool = False) -> list[dict[str, Any]]:
    """Apply `commands` as one transaction; what libnftables answers, as JSON
    objects: with `echo`, the commands back with the handles the kernel gave
    what they added; for `list` commands, what was listed.

    A context per call: a context is not safe to share between threads, and
    making one costs microseconds (it reads no ruleset until a command needs it)."""
    lib = _Library.get()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NftError("nft_ctx_new failed")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        flags = NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE
        lib.nft_ctx_output_set_flags(ctx, flags | (NFT_CTX_OUTPUT_ECHO if echo else 0))
        document = json.dumps({"nftables": commands})
        status = lib.nft_run_cmd_from_buffer(ctx, document.encode())
        output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
    finally:
        lib.nft_ctx_free(ctx)
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
