"""Times as dockerd formats them."""

from __future__ import annotations

import datetime as dt
import re
import time

ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339_nano(ns: int | None = None) -> str:
    if ns is None:
        ns = time.time_ns()
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch; 0 for dockerd's zero time or garbage."""
    return parse_rfc3339_ns(text) / 1e9


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch; 0 for dockerd's zero time or garbage."""
    if not text or text.startswith("0001-"):
        return 0
    main, _, rest = text.partition(".")
    digits = ""
    tz = "Z"
    for i, ch in enumerate(rest):
        if not ch.isdigit():
            tz = rest[i:]
            break
        digits += ch
    if not rest:
        main, tz = text[:19], text[19:] or "Z"
    try:
        stamp = dt.datetime.strptime(main[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return 0
    offset = dt.timedelta()
    if tz not in ("", "Z") and len(tz) >= 6 and tz[0] in "+-":
        sign = 1 if tz[0] == "+" else -1
        offset = sign * dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    stamp = stamp.replace(tzinfo=dt.UTC) - offset
    return int(stamp.timestamp()) * 1_000_000_000 + int(digits[:9].ljust(9, "0") or "0")


def human_duration(seconds: float) -> str:
    """go-units HumanDuration, which `docker ps` STATUS uses."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{s // 3600 // 24 // 365} years"


def parse_timestamp_ns(text: str) -> int:
    """An API time parameter: "seconds[.nanoseconds]" (what the CLI sends) or
    RFC 3339. Exact to the nanosecond: a float would round a log record's own
    time past itself. 0 for garbage."""
    seconds, dot, fraction = text.partition(".")
    if seconds.isdigit() and (not dot or fraction.isdigit()):
        return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9] or "0")
    return parse_rfc3339_ns(text)


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}
_UNIX_TIME = re.compile(r"^\d+(\.\d+)?$")


def parse_go_duration(text: str) -> float | None:
    """Go's time.ParseDuration in seconds ("1h30m", "-5s", "300ms"), or None."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in "+-" else text
    parts = _DURATION_PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        return None
    return sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def parse_go_timestamp(text: str, now: float | None = None) -> float:
    """A filter's time as dockerd's GetTimestamp reads it: a duration before
    `now` ("10m"), an RFC 3339 date or part of one (local time without a
    zone), or unix seconds[.fraction]. ValueError with dockerd's words else."""
    now = time.time() if now is None else now
    duration = parse_go_duration(text) if text != "0" else None
    if duration is not None:
        return float(int(now - duration))
    if "-" in text:
        try:
            stamp = dt.datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise ValueError(f"failed to parse value as time or duration: \"{text}\"") from None
        return stamp.timestamp() if stamp.tzinfo else stamp.astimezone().timestamp()
    if _UNIX_TIME.match(text):
        return float(text)
    raise ValueError(f"failed to parse value as time or duration: \"{text}\"")
