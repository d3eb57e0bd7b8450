"""Go's parsers for option strings, with their error texts.

dockerd reads log options (and a few others) with strconv and docker/go-units;
clients see the Go error text in the API error, so we reproduce both what is
accepted and what is said about the rest. Each function raises ValueError with
Go's message.
"""

from __future__ import annotations

import math
import re

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# docker/go-units (v0.4): digits, optional fraction(s), one optional space, an
# optional unit prefix, an optional "i" and an optional "b". ASCII digits only.
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)*) ?([kKmMgGtTpP])?[iI]?[bB]?", re.ASCII)
_PREFIXES = "kmgtp"
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
          "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def size(text: str, binary: bool = False) -> int:
    """go-units FromHumanSize (k = 1000) or, with `binary`, RAMInBytes (k = 1024)."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid size: '{text}'")
    number, prefix = m.group(1), (m.group(2) or "").lower()
    if number.count(".") > 1:
        raise ValueError(f'strconv.ParseFloat: parsing "{number}": invalid syntax')
    value = float(number)
    if math.isinf(value):
        raise ValueError(f'strconv.ParseFloat: parsing "{number}": value out of range')
    if prefix:
        value *= (1024 if binary else 1000) ** (_PREFIXES.index(prefix) + 1)
    # Go's int64(float) of an out-of-range value is the minimum int64 on amd64.
    return int(value) if value < 2**63 else INT64_MIN


def atoi(text: str) -> int:
    """strconv.Atoi."""
    if _INT.fullmatch(text) is None:
        raise ValueError(f'strconv.Atoi: parsing "{text}": invalid syntax')
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f'strconv.Atoi: parsing "{text}": value out of range')
    return value


def parse_bool(text: str) -> bool:
    """strconv.ParseBool."""
    if text not in BOOLS:
        raise ValueError(f'strconv.ParseBool: parsing "{text}": invalid syntax')
    return BOOLS[text]
