"""Whose objects a request sees: the operator's (all of them) or one
tenant's (its Keystone project's own).

Tenant objects are named with their owner: a tenant's container `web` is
`/web@<project id>` in the registry and the state store, its volume `data`
is `data@<project id>` (and its directory), its network `front` is
`front@<project id>`. No Docker name may hold `@` (dockerd's container and
volume name rules forbid it, and hbd refuses it in a tenant's network
names), so names stay unique per tenant without a second key, two tenants
may each have a `web`, and the operator, who sees everything, sees names
that are never ambiguous (`web` is the operator's own, `web@<project>` a
tenant's) and may use them as references.

A reference qualified with an owner (`X@<project>`) looks among that
owner's objects only: by full ID, by name, by unique ID prefix. A tenant's
every reference is qualified with its own project before it is looked up,
so another tenant's object is never found: it is absent (404), never
forbidden. What a tenant is shown has its own qualifier taken off again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

OWNER_MARK = "@"

T = TypeVar("T")


def split_owner(ref: str) -> tuple[str, str | None]:
    """`X@owner` -> (X, owner); an unqualified reference -> (ref, None)."""
    base, mark, owner = ref.rpartition(OWNER_MARK)
    if not mark or not base or not owner:
        return ref, None
    return base, owner


def owner_of(name: str) -> str | None:
    """The project that owns the object of this (stored) name; None: the operator."""
    return split_owner(name)[1]


@dataclass(frozen=True)
class Scope:
    """The asker: a tenant's project id, or None for the operator."""

    project: str | None = None
    project_name: str = ""  # for what the operator configures by name (quotas)

    @property
    def is_tenant(self) -> bool:
        return self.project is not None

    @property
    def _suffix(self) -> str:
        return f"{OWNER_MARK}{self.project}"

    def qualify(self, ref: str) -> str:
        """The reference as the registries know it: a tenant's own object."""
        if self.project is None or not ref:
            return ref
        return ref + self._suffix

    def sees(self, name: str) -> bool:
        """Whether the object of this stored name is the asker's to see."""
        return self.project is None or owner_of(name) == self.project

    def shown(self, view: T) -> T:
        """A view (string, list or JSON object) as the tenant sees it: its own
        names without the qualifier. The operator's views are as stored."""
        if self.project is None:
            return view
        return self._strip(view)  # type: ignore[no-any-return]

    def _strip(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(self._suffix, "")
        if isinstance(value, list):
            return [self._strip(v) for v in value]
        if isinstance(value, dict):
            return {self._strip(k): self._strip(v) for k, v in value.items()}
        return value


OPERATOR = Scope()
