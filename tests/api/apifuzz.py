"""What schemathesis's cases against hbd are judged by, and what they run against.

The bar (issue 11): whatever a client sends, hbd answers as dockerd would:
no unhandled exception (a traceback in hbd's log, or a 500 whose message is
a Python exception's text), every error a Docker-style `{"message": str}`
JSON body, an answer's headers within a deadline, and a daemon that is
still there afterwards. dockerd itself answers 500 or 503 to some requests
(swarm calls on a node in no swarm, "Bad parameters" of service logs): a
5xx with a Docker-style message is no failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

# An exception's text as error_middleware's last line of defence renders it.
EXCEPTION_TEXT = re.compile(r"^[A-Z]\w*(Error|Exception|Exit|Interrupt)\b: ")
# Headers (or a complete error body) within this long, else the request hangs.
DEADLINE_S = 10.0


class LogWatch(logging.Handler):
    """Every ERROR record logged while the daemon runs (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._guard = threading.Lock()
        self._records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self._records.append(record)

    def take(self) -> list[str]:
        """The records since the last take, each formatted with its traceback."""
        with self._guard:
            records, self._records = self._records, []
        formatter = logging.Formatter("%(name)s: %(message)s")
        return [formatter.format(r) for r in records]


@contextlib.contextmanager
def watching_logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    try:
        yield watch
    finally:
        root.removeHandler(watch)


# More of a body than any inspect or error holds.
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Answer:
    """What came back for one request: status, headers and (unless it is a stream) body."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    request: requests.PreparedRequest | None = None


def send(kwargs: dict[str, Any]) -> Answer:
    """One request. A success without a Content-Length is a stream that may
    not end (events, attach, wait, stats, logs): only its headers are waited
    for. Any other body is read whole, within the deadline."""
    with requests.request(**kwargs, stream=True, allow_redirects=False,
                          timeout=(DEADLINE_S, DEADLINE_S)) as response:
        complete = response.status_code >= 400 or "Content-Length" in response.headers
        body = response.raw.read(MAX_BODY) if complete else b""
        return Answer(response.status_code, body, response.headers.get("Content-Type", ""),
                      {k: [v] for k, v in response.headers.items()}, response.request)


def problems_of(method: str, answer: Answer, logged: list[str]) -> list[tuple[str, str]]:
    """(kind, detail) of each way an answer misses the bar; none when it is fine."""
    found = [("traceback", record) for record in logged]
    if answer.status < 400 or (method == "HEAD" and not answer.body):
        return found
    message = error_message(answer)
    if message is None:
        found.append(("error-body", f"{answer.status} {answer.content_type}: "
                                    f"{answer.body[:300]!r}"))
    elif answer.status >= 500 and EXCEPTION_TEXT.match(message):
        found.append(("exception-text", f"{answer.status}: {message[:300]}"))
    return found


def error_message(answer: Answer) -> str | None:
    """The message of a Docker-style error body, None for anything else."""
    if not answer.content_type.startswith("application/json"):
        return None
    try:
        parsed = json.loads(answer.body)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("message"), str):
        return None
    message: str = parsed["message"]
    return message


@dataclass
class Tally:
    """Counts over a whole run, for the closing note: cases, statuses and
    failures by kind (and the distinct failures, by operation)."""

    cases: int = 0
    operations: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    server_errors: Counter[str] = field(default_factory=Counter)
    distinct: dict[str, set[str]] = field(default_factory=dict)

    def add(self, operation: str, answer: Answer | None,
            problems: list[tuple[str, str]]) -> None:
        self.cases += 1
        self.operations.add(operation)
        if answer is not None:
            self.statuses[answer.status] += 1
            if answer.status >= 500:
                self.server_errors[f"{operation} {answer.status} "
                                   f"{(error_message(answer) or '')[:120]}"] += 1
        for kind, detail in problems:
            self.failures[kind] += 1
            self.distinct.setdefault(kind, set()).add(f"{operation}: {detail.splitlines()[0]}")

    def as_json(self) -> dict[str, Any]:
        return {
            "operations": len(self.operations),
            "cases": self.cases,
            "statuses": dict(sorted(self.statuses.items())),
            "failures": dict(self.failures),
            "distinct": {k: sorted(v) for k, v in self.distinct.items()},
            "server_errors": dict(self.server_errors.most_common()),
        }
