"""Image tag keys with their owners (hbd/services/image/owners.py): a
tenant's suffix is told from a digest, and each asker is shown the keys it
may see, in familiar form."""

from __future__ import annotations

from hbd.services.image.owners import (
    operator_keys,
    owned_key,
    sees_key,
    shown_key,
    sorted_shown,
    split_owned,
)
from hbd.services.image.reference import parse_reference
from hbd.services.scope import OPERATOR, Scope

A, B = "a" * 32, "b" * 32
DIGEST = "sha256:" + "d" * 64
TENANT_A = Scope(A, "tenant-a")


def test_keys_round_trip_with_and_without_owner_and_digest() -> None:
    for text in ("app:1", f"app@{DIGEST}", f"localhost:5000/x/app@{DIGEST}", "localhost:5000/y"):
        ref = parse_reference(text).with_default_tag()
        for owner in (None, A):
            assert split_owned(owned_key(ref, owner)) == (ref, owner)
    assert owned_key(parse_reference("app:1"), A) == f"docker.io/library/app:1@{A}"
    assert split_owned(f"docker.io/library/app@{DIGEST}")[1] is None


def test_each_asker_sees_its_own_keys_and_the_operators() -> None:
    keys = [f"docker.io/library/app:1@{A}", f"docker.io/library/app:1@{B}",
            "docker.io/library/busybox:latest", f"docker.io/library/app@{DIGEST}@{A}"]
    assert [k for k in keys if sees_key(k, TENANT_A)] == [keys[0], keys[2], keys[3]]
    assert sorted_shown(keys, TENANT_A) == ["app:1", f"app@{DIGEST}", "busybox:latest"]
    assert sorted_shown(keys, OPERATOR) == [f"app:1@{A}", f"app:1@{B}", f"app@{DIGEST}@{A}",
                                            "busybox:latest"]
    assert shown_key(keys[1], OPERATOR) == f"app:1@{B}"
    assert operator_keys(keys) == ["docker.io/library/busybox:latest"]
