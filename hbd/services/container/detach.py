"""Detach keys: the key sequence that leaves a tty attach or exec running.

As dockerd (moby/term's ToBytes and EscapeProxy): keys are "ctrl-<c>",
"DEL" or single characters, comma-separated, spelled exactly; default
ctrl-p,ctrl-q. A key counts only when it arrives alone in one read, which is
how a terminal sends a keypress; pasted text passes through whole.
"""

from __future__ import annotations

import string

DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p, ctrl-q
# ctrl-@ is 0, ctrl-a 1 … ctrl-z 26, then ctrl-[ ctrl-\ ctrl-] ctrl-^ ctrl-_.
_CONTROL = {f"ctrl-{c}": code for code, c in enumerate("@" + string.ascii_lowercase + "[\\]^_")}


def parse_detach_keys(spec: str) -> bytes:
    """The bytes of a detach-keys spec; "" is the default. ValueError if unknown."""
    if not spec:
        return DEFAULT_DETACH_KEYS
    out = bytearray()
    for key in spec.split(","):
        raw = key.encode()
        if len(raw) == 1:
            out += raw
        elif key in _CONTROL:
            out.append(_CONTROL[key])
        elif key == "DEL":
            out.append(127)
        else:
            raise ValueError(f"Unknown character: '{key}'")
    return bytes(out)


class DetachDetector:
    """Watches a client's stdin for the detach keys, holding back a partial match."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys or DEFAULT_DETACH_KEYS
        self._matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to pass on, whether the sequence is complete)."""
        if len(data) != 1 or data[0] != self.keys[self._matched]:
            return self.flush() + data, False
        self._matched += 1
        if self._matched == len(self.keys):
            self._matched = 0
            return b"", True
        return b"", False

    def flush(self) -> bytes:
        """The keys held back (the client's stdin ended or went on otherwise)."""
        held, self._matched = self.keys[: self._matched], 0
        return held
