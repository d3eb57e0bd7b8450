"""Go's parsers for option strings, with their error texts.

dockerd reads log options (and a few others) with strconv and docker/go-units;
clients see the Go error text in the API error, so we reproduce both what is
accepted and what is said about the rest. Each function raises ValueError with
Go's message.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

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


# -- encoding/json ---------------------------------------------------------------


def json_kind(value: Any) -> str:
    """The kind of JSON value that encoding/json's UnmarshalTypeError names."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "value"


def go_json_error(e: json.JSONDecodeError) -> str:
    """encoding/json's words for a syntax error, near enough."""
    if e.pos >= len(e.doc.rstrip()):
        return "unexpected end of JSON input"
    ch = e.doc[e.pos]
    if e.msg.startswith("Expecting property name"):
        return f"invalid character '{ch}' looking for beginning of object key string"
    if e.msg.startswith("Expecting value"):
        return f"invalid character '{ch}' looking for beginning of value"
    if e.msg.startswith("Extra data"):
        return f"invalid character '{ch}' after top-level value"
    return f"invalid character '{ch}' in JSON"


def json_loads(raw: bytes) -> Any:
    """One JSON document as encoding/json reads it: invalid UTF-8 in strings
    becomes U+FFFD (Go accepts it), and a syntax error raises ValueError with
    Go's words."""
    try:
        return json.loads(raw.decode("utf-8", "replace"))
    except json.JSONDecodeError as e:
        raise ValueError(go_json_error(e)) from None


def json_decode_first(raw: bytes) -> Any:
    """The first JSON value of a body, as a json.Decoder's Decode reads it
    (dockerd's routers decode so): what follows that value is never read."""
    text = raw.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise ValueError(go_json_error(e)) from None
    return value
