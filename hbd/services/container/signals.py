"""Signals as dockerd reads them (moby/sys/signal for Linux).

A signal is a number or a name, with or without `SIG`, in any case; the
real-time ones are `RTMIN`, `RTMIN+1` … `RTMIN+15`, `RTMAX-14` … `RTMAX-1`,
`RTMAX` (34 to 64, as Go numbers them). Parsing accepts any non-zero integer;
`docker kill` then refuses the numbers Linux has no name for (32, 33, above
64), while a stop signal is only parsed, as in dockerd.
"""

from __future__ import annotations

import re

from hbd.errors import InvalidParameter

SIGRTMIN = 34
SIGRTMAX = 64

SIGNAL_MAP: dict[str, int] = {
    "ABRT": 6, "ALRM": 14, "BUS": 7, "CHLD": 17, "CLD": 17, "CONT": 18, "FPE": 8, "HUP": 1,
    "ILL": 4, "INT": 2, "IO": 29, "IOT": 6, "KILL": 9, "PIPE": 13, "POLL": 29, "PROF": 27,
    "PWR": 30, "QUIT": 3, "SEGV": 11, "STKFLT": 16, "STOP": 19, "SYS": 31, "TERM": 15,
    "TRAP": 5, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "USR1": 10, "USR2": 12,
    "VTALRM": 26, "WINCH": 28, "XCPU": 24, "XFSZ": 25,
    "RTMIN": SIGRTMIN, "RTMAX": SIGRTMAX,
    **{f"RTMIN+{n}": SIGRTMIN + n for n in range(1, 16)},
    **{f"RTMAX-{n}": SIGRTMAX - n for n in range(1, 15)},
}
_VALID = frozenset(SIGNAL_MAP.values())
# Go's strconv.Atoi: an optional sign and decimal digits, nothing else.
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_INT64 = 2**63


def parse_signal(raw: str | int) -> int:
    """Go's signal.ParseSignal: `15`, `TERM`, `SIGTERM`, `sigrtmin+3`; dockerd's
    error for 0 and for names it does not know."""
    if isinstance(raw, int):
        number = raw
    elif _INTEGER.match(raw) and -_INT64 <= int(raw) < _INT64:
        number = int(raw)
    else:
        name = raw.upper().removeprefix("SIG")
        if name not in SIGNAL_MAP:
            raise InvalidParameter(f"Invalid signal: {raw}")
        number = SIGNAL_MAP[name]
    if number == 0:
        raise InvalidParameter(f"Invalid signal: {raw}")
    return number


def valid_for_platform(number: int) -> bool:
    """Whether Linux has a name for it (dockerd's ValidSignalForPlatform)."""
    return number in _VALID


def as_go_uint64(number: int) -> int:
    """How dockerd prints a parsed signal it refuses: as the uint64 it became."""
    return number % 2**64
