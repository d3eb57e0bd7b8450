"""Image references as docker/distribution parses and normalises them.

`busybox` is `docker.io/library/busybox:latest`; `localhost:5000/a/b@sha256:…`
keeps its registry. The API shows the familiar form (`busybox:latest`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hbd.errors import InvalidParameter

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_TAG_RE = re.compile(rf"^{_TAG}$")
_ID_PREFIX = re.compile(r"^(sha256:)?[0-9a-f]{1,64}$")
_FULL_ID = re.compile(r"^[0-9a-f]{64}$")
NAME_TOTAL_LENGTH_MAX = 255


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(OFFICIAL_PREFIX) and "/" not in path[len(OFFICIAL_PREFIX):]:
            path = path[len(OFFICIAL_PREFIX):]
        return path

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    @property
    def familiar(self) -> str:
        s = self.familiar_name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    def with_default_tag(self) -> Reference:
        if self.tag or self.digest:
            return self
        return Reference(self.domain, self.path, DEFAULT_TAG)

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag)


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"
                   and first.lower() == first):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def parse_reference(text: str) -> Reference:
    """ParseNormalizedNamed: a familiar or full reference, tag and digest optional."""
    if not text:
        raise InvalidParameter("invalid reference format")
    m = _REFERENCE.match(text)
    if m is None:
        if text.lower() != text and _REFERENCE.match(text.lower()):
            raise InvalidParameter(
                f"invalid reference format: repository name ({text}) must be lowercase"
            )
        raise InvalidParameter("invalid reference format")
    name = m.group("name")
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidParameter("invalid reference format: repository name must not be more "
                               f"than {NAME_TOTAL_LENGTH_MAX} characters")
    domain, path = _split_domain(name)
    if _FULL_ID.match(path.removeprefix(OFFICIAL_PREFIX)):
        raise InvalidParameter(f"invalid repository name ({name}), cannot specify "
                               "64-byte hexadecimal strings")
    if path.lower() != path:
        raise InvalidParameter(
            f"invalid reference format: repository name ({path}) must be lowercase"
        )
    return Reference(domain, path, m.group("tag") or "", (m.group("digest") or "").lower())


def validate_tag(tag: str) -> None:
    if not _TAG_RE.match(tag):
        raise InvalidParameter("invalid tag format")


def looks_like_id_prefix(text: str) -> bool:
    return bool(_ID_PREFIX.match(text))


def is_full_id(text: str) -> bool:
    return bool(_FULL_ID.match(text))
