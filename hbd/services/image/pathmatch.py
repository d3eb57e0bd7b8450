"""Go's `path.Match`, which dockerd's `reference` image filter uses.

It differs from `fnmatch`: `*` and `?` never match `/`, a class is negated
with `^` (not `!`), `\\` escapes, and a malformed pattern is an error even
when the name fails to match before the bad part.
"""

from __future__ import annotations

from dataclasses import dataclass


class BadPattern(ValueError):
    """path.ErrBadPattern; dockerd's message for it is `syntax error in pattern`."""

    def __init__(self) -> None:
        super().__init__("syntax error in pattern")


def match(pattern: str, name: str) -> bool:
    """Whether `name` matches all of `pattern` (Go 1.16+ path.Match)."""
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and not chunk:
            return "/" not in name  # a trailing * matches the rest without a /
        rest = _match_chunk(chunk, name)
        if rest is not None and (not rest or pattern):
            name = rest
            continue
        if star:
            skipped = _match_after_skip(chunk, name, last=not pattern)
            if skipped is not None:
                name = skipped
                continue
        _check_syntax(pattern)
        return False
    return not name


def _match_after_skip(chunk: str, name: str, last: bool) -> str | None:
    """A star before `chunk`: skip 1, 2, ... characters (never a /) and retry."""
    for i in range(len(name)):
        if name[i] == "/":
            break
        rest = _match_chunk(chunk, name[i + 1:])
        if rest is not None and not (last and rest):
            return rest
    return None


def _check_syntax(pattern: str) -> None:
    """Go checks the rest of a pattern that failed to match; bad syntax is an error."""
    while pattern:
        _, chunk, pattern = _scan_chunk(pattern)
        _match_chunk(chunk, "")


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    """(leading star?, the chunk up to the next star outside a class, the rest)."""
    stripped = pattern.lstrip("*")
    star = len(stripped) != len(pattern)
    in_range = False
    i = 0
    while i < len(stripped):
        ch = stripped[i]
        if ch == "\\" and i + 1 < len(stripped):
            i += 1
        elif ch == "[":
            in_range = True
        elif ch == "]":
            in_range = False
        elif ch == "*" and not in_range:
            break
        i += 1
    return star, stripped[:i], stripped[i:]


@dataclass
class _Cursor:
    """A chunk being read; `failed` once the name no longer matches (the rest
    of the chunk is still read, to find syntax errors)."""

    chunk: str
    name: str
    failed: bool = False

    def take_char(self) -> str:
        ch, self.name = self.name[0], self.name[1:]
        return ch


def _match_chunk(chunk: str, name: str) -> str | None:
    """What is left of `name` after `chunk` (no stars) matches its start, or None."""
    cur = _Cursor(chunk, name)
    while cur.chunk:
        if not cur.failed and not cur.name:
            cur.failed = True
        head = cur.chunk[0]
        if head == "[":
            _match_class(cur)
        elif head == "?":
            if not cur.failed and cur.take_char() == "/":
                cur.failed = True
            cur.chunk = cur.chunk[1:]
        else:
            if head == "\\":
                cur.chunk = cur.chunk[1:]
                if not cur.chunk:
                    raise BadPattern()
            if not cur.failed and cur.take_char() != cur.chunk[0]:
                cur.failed = True
            cur.chunk = cur.chunk[1:]
    return None if cur.failed else cur.name


def _match_class(cur: _Cursor) -> None:
    ch = "" if cur.failed else cur.take_char()
    chunk = cur.chunk[1:]
    negated = chunk.startswith("^")
    if negated:
        chunk = chunk[1:]
    matched = False
    ranges = 0
    while not (chunk.startswith("]") and ranges > 0):
        lo, chunk = _class_char(chunk)
        hi = lo
        if chunk[0] == "-":
            hi, chunk = _class_char(chunk[1:])
        if ch and lo <= ch <= hi:
            matched = True
        ranges += 1
    cur.chunk = chunk[1:]
    if matched == negated:
        cur.failed = True


def _class_char(chunk: str) -> tuple[str, str]:
    """One (possibly escaped) character of a class, and what follows it."""
    if not chunk or chunk[0] in "-]":
        raise BadPattern()
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise BadPattern()
    ch, rest = chunk[0], chunk[1:]
    if not rest:
        raise BadPattern()
    return ch, rest
