"""Dockerfile parsing and word expansion, as the classic builder does them.

`parse` turns the text into instructions: parser directives (`# escape=`),
comments, line continuations, JSON ("exec") and shell forms, `--flag=value`
options. `expand` substitutes `$VAR`, `${VAR}`, `${VAR:-default}` and
`${VAR:+alternative}` from the build environment. The arguments of some
instructions (ENV/LABEL pairs, EXPOSE, HEALTHCHECK) are read here too, with
dockerd's errors: the builder and `docker commit --change` share them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from hbd.errors import InvalidParameter

KNOWN = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
         "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
         "HEALTHCHECK", "SHELL"}
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z]+)\s*=\s*(.+?)\s*$")
_FLAG = re.compile(r"^--([a-zA-Z-]+)(?:=(.*))?$")


class DockerfileError(InvalidParameter):
    pass


@dataclass
class Instruction:
    keyword: str
    rest: str  # everything after the keyword and the flags
    flags: dict[str, str] = field(default_factory=dict)
    line: int = 0
    original: str = ""

    def json_args(self) -> list[str] | None:
        """The exec form's arguments, or None for the shell form."""
        text = self.rest.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None  # dockerd falls back to the shell form
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None


def parse(text: str) -> list[Instruction]:
    instructions = [instruction(line, number) for number, line in logical_lines(text)]
    if not instructions:
        raise DockerfileError("the Dockerfile (Dockerfile) cannot be empty")
    return instructions


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each instruction: parser directives read,
    comments and blank lines dropped, continued lines joined."""
    escape = "\\"
    lines = text.splitlines()
    # Parser directives: only at the very top, before any other line.
    start = 0
    for i, line in enumerate(lines):
        m = _DIRECTIVE.match(line)
        if not m:
            break
        if m.group(1).lower() == "escape":
            if m.group(2) not in ("\\", "`"):
                raise DockerfileError(f"invalid escape token '{m.group(2)}' does not "
                                      "match ` or \\")
            escape = m.group(2)
        start = i + 1
    out: list[tuple[int, str]] = []
    pending = ""
    first_line = 0
    for number, raw in enumerate(lines[start:], start=start + 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comments inside a continuation are dropped
        if not pending:
            first_line = number
        if raw.rstrip().endswith(escape):
            pending += raw.rstrip()[:-1]
            continue
        pending += raw
        out.append((first_line, pending.strip()))
        pending = ""
    if pending.strip():
        out.append((first_line, pending.strip()))
    return out


def instruction(text: str, line: int) -> Instruction:
    """One instruction: its keyword (known), --flags where it takes them, the rest."""
    keyword, _, rest = text.partition(" ")
    if "\t" in keyword:
        keyword, _, more = keyword.partition("\t")
        rest = more + " " + rest
    upper = keyword.upper()
    if upper not in KNOWN:
        raise DockerfileError(f"dockerfile parse error line {line}: unknown instruction: "
                              f"{keyword}")
    flags: dict[str, str] = {}
    rest = rest.strip()
    if upper in ("FROM", "RUN", "COPY", "ADD", "HEALTHCHECK"):
        while rest.startswith("--"):
            word, _, remainder = rest.partition(" ")
            m = _FLAG.match(word)
            if not m:
                break
            flags[m.group(1)] = m.group(2) if m.group(2) is not None else "true"
            rest = remainder.strip()
    if not rest:
        raise DockerfileError(f"dockerfile parse error line {line}: {upper} requires at "
                              "least one argument")
    return Instruction(upper, rest, flags, line, text)


def expand(word: str, env: dict[str, str], escape: str = "\\") -> str:
    """Substitute variables in one word (or line), honouring escapes and quotes."""
    out = []
    i = 0
    quote = ""
    while i < len(word):
        ch = word[i]
        if ch == escape and i + 1 < len(word):
            out.append(word[i + 1] if word[i + 1] == "$" else ch + word[i + 1])
            i += 2
            continue
        if ch == "'" and quote != '"':
            quote = "" if quote == "'" else "'"
            out.append(ch)
            i += 1
            continue
        if ch == '"' and quote != "'":
            quote = "" if quote == '"' else '"'
            out.append(ch)
            i += 1
            continue
        if ch == "$" and quote != "'" and i + 1 < len(word):
            value, i = _variable(word, i + 1, env)
            out.append(value)
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _variable(word: str, i: int, env: dict[str, str]) -> tuple[str, int]:
    if word[i] == "{":
        end = word.find("}", i)
        if end < 0:
            raise DockerfileError(f"missing '}}' in {word!r}")
        body = word[i + 1:end]
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?::([-+])(.*))?$", body, re.S)
        if not m:
            raise DockerfileError(f"bad substitution: ${{{body}}}")
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        value = env.get(name, "")
        if op == "-":
            value = value or expand(arg, env)
        elif op == "+":
            value = expand(arg, env) if value else ""
        return value, end + 1
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", word[i:])
    if not m:
        return "$", i
    return env.get(m.group(0), ""), i + len(m.group(0))


def split_words(text: str) -> list[str]:
    """Whitespace-separated words with quotes removed (ENV/LABEL/EXPOSE/COPY)."""
    words: list[str] = []
    current: list[str] = []
    quote = ""
    have = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and quote == '"' and i + 1 < len(text):
                i += 1
                current.append(text[i])
            else:
                current.append(ch)
        elif ch in "\"'":
            quote = ch
            have = True
        elif ch.isspace():
            if current or have:
                words.append("".join(current))
                current, have = [], False
        elif ch == "\\" and i + 1 < len(text):
            i += 1
            current.append(text[i])
        else:
            current.append(ch)
        i += 1
    if quote:
        raise DockerfileError(f"unmatched quote in {text!r}")
    if current or have:
        words.append("".join(current))
    return words


def key_values(text: str, keyword: str) -> list[tuple[str, str]]:
    """ENV/LABEL/ARG pairs: `k=v k2="v 2"`, or the old `ENV k v` form."""
    words = split_words(text)
    if not words:
        raise DockerfileError(f"{keyword} requires at least one argument")
    if "=" not in words[0]:
        if keyword == "ARG":
            return [(words[0], "")]
        name, _, value = text.strip().partition(" ")
        if not value.strip():
            raise DockerfileError(f"{keyword} must have two arguments")
        return [(name, " ".join(split_words(value)))]
    pairs = []
    for w in words:
        name, sep, value = w.partition("=")
        if not sep and keyword != "ARG":
            raise DockerfileError(f'Syntax error - can\'t find = in "{w}". Must be of the '
                                  "form: name=value")
        if not name:
            raise DockerfileError(f"{keyword} names can not be blank")
        pairs.append((name, value))
    return pairs


def set_env(env: list[str], name: str, value: str) -> list[str]:
    """ENV's effect on a config's Env: a variable set before keeps its place."""
    entry = f"{name}={value}"
    names = [e.partition("=")[0] for e in env]
    if name in names:
        return [entry if n == name else e for n, e in zip(names, env, strict=True)]
    return [*env, entry]


# -- instruction arguments ------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_DURATION_NS = {"ns": 1, "us": 1000, "µs": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
                "h": 3600 * 10**9}
_PORT_PROTOCOLS = ("tcp", "udp", "sctp")
_HEALTHCHECK_DURATIONS = (("interval", "Interval"), ("timeout", "Timeout"),
                          ("start-period", "StartPeriod"), ("start-interval", "StartInterval"))


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration, to nanoseconds."""
    if text in ("0", ""):
        return 0
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_NS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise DockerfileError(f'time: invalid duration "{text}"')
    return int(total)


def expose_ports(ports: list[str]) -> list[str]:
    """EXPOSE's words as "port/proto" keys, ranges spelt out (nat.ParsePortSpecs)."""
    out = []
    for p in ports:
        number, _, proto = p.partition("/")
        proto = (proto or "tcp").lower()
        if not re.fullmatch(r"\d+(-\d+)?", number):
            raise DockerfileError(f"Invalid containerPort: {number}")
        if proto not in _PORT_PROTOCOLS:
            raise DockerfileError(f"Invalid proto: {proto}")
        low, _, high = number.partition("-")
        for n in range(int(low), int(high or low) + 1):
            out.append(f"{n}/{proto}")
    return out


def healthcheck(ins: Instruction) -> dict[str, Any]:
    """HEALTHCHECK's config: NONE, or CMD with its options (dockerd's checks and words)."""
    word, _, cmd = ins.rest.strip().partition(" ")
    kind = word.upper()
    if kind == "NONE":
        if ins.flags or cmd.strip():
            raise DockerfileError("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    unknown = set(ins.flags) - {flag for flag, _ in _HEALTHCHECK_DURATIONS} - {"retries"}
    if unknown:
        raise DockerfileError(f"Unknown flag: {sorted(unknown)[0]}")
    if kind != "CMD":
        raise DockerfileError(f"Unknown type \"{kind}\" in HEALTHCHECK (try CMD)")
    if not cmd.strip():
        raise DockerfileError("Missing command after HEALTHCHECK CMD")
    args = Instruction("CMD", cmd.strip()).json_args()
    out: dict[str, Any] = {"Test": ["CMD", *args] if args is not None
                           else ["CMD-SHELL", cmd.strip()]}
    for flag, key in _HEALTHCHECK_DURATIONS:
        value = parse_duration(ins.flags.get(flag, ""))
        if 0 < value < 10**6:  # dockerd says "Interval" whichever flag it is
            raise DockerfileError(f'Interval "{flag}" cannot be less than 1ms')
        if value:
            out[key] = value
    if "retries" in ins.flags:
        out["Retries"] = _retries(ins.flags["retries"])
    return out


def _retries(text: str) -> int:
    try:
        retries = int(text)
    except ValueError:
        raise DockerfileError(f'strconv.ParseInt: parsing "{text}": invalid syntax') from None
    if retries < 1:
        raise DockerfileError(f"--retries must be at least 1 (not {retries})")
    return retries
