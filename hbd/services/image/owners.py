"""Whose an image's tags are, and who holds the image (issue 12).

Image content is shared by digest: one config blob, one set of layer blobs,
one disk, whoever pulled, loaded or built it. Tags are not: a tenant's
`app:latest` is stored as the key `docker.io/library/app:latest@<project>`,
the operator's as `docker.io/library/app:latest`, so two tenants may each
have an `app:latest` naming different images. A digest reference keeps its
`@sha256:…`; an owner suffix is told from it by having no `:` (Keystone
project ids are hex).

Beside its tags an image has holders: the operator ("") and the projects
that have it (pulled, loaded, built, committed, imported or tagged it), so
that an untagged image (dangling, a build step) is still someone's. A
tenant sees the images it holds and the operator's (the shared, read-only
catalogue), with its own tags and the operator's; an image only another
tenant holds is absent. Content goes when nobody holds it any more.
"""

from __future__ import annotations

from hbd.services.image.reference import Reference, parse_reference
from hbd.services.scope import OWNER_MARK, Scope

OPERATOR_HOLDER = ""


def holder_of(scope: Scope) -> str:
    """The holder name of the asker: its project, or "" for the operator."""
    return scope.project or OPERATOR_HOLDER


def owned_key(ref: Reference, owner: str | None) -> str:
    """The stored key of a reference owned by `owner` (None: the operator)."""
    return str(ref) + (f"{OWNER_MARK}{owner}" if owner else "")


def split_owned(key: str) -> tuple[Reference, str | None]:
    """A stored key -> (reference, owner or None for the operator's)."""
    base, mark, tail = key.rpartition(OWNER_MARK)
    if mark and base and tail and ":" not in tail:
        return parse_reference(base), tail
    return parse_reference(key), None


def key_owner(key: str) -> str | None:
    return split_owned(key)[1]


def shown_key(key: str, scope: Scope) -> str:
    """A stored key as the asker sees it: familiar, a tenant's own without its
    suffix, another owner's (only the operator sees those) with it."""
    ref, owner = split_owned(key)
    familiar = ref.familiar + (f"{OWNER_MARK}{owner}" if owner else "")
    return scope.shown(familiar)


def sees_key(key: str, scope: Scope) -> bool:
    """The operator sees every tag; a tenant its own and the operator's."""
    owner = key_owner(key)
    return scope.project is None or owner is None or owner == scope.project


def own_key(key: str, scope: Scope) -> bool:
    """Whether the tag is the asker's own (the operator owns the unqualified ones)."""
    return key_owner(key) == scope.project


def operator_keys(keys: list[str]) -> list[str]:
    """The operator's own keys among these (full references, as stored)."""
    return [k for k in keys if key_owner(k) is None]


def sorted_shown(keys: list[str], scope: Scope) -> list[str]:
    """Keys the asker sees, shown, in the order dockerd's reference store
    gives them: sorted by the full form."""
    return [shown_key(k, scope) for k in sorted(keys) if sees_key(k, scope)]
