"""Go's path.Match, ported for the `reference` image filter: Go's own test table."""

from __future__ import annotations

import pytest

from hbd.services.image.pathmatch import BadPattern, match

# From Go's src/path/match_test.go (pattern, name, matched); errors below.
GO_CASES = [
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True),
    ("a*", "abc", True), ("a*", "ab/c", False), ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False), ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True), ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False), ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False), ("ab[c]", "abc", True), ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False), ("ab[^c]", "abc", False), ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True), ("a\\*b", "a*b", True), ("a\\*b", "ab", False),
    ("a?b", "a☺b", True), ("a[^a]b", "a☺b", True), ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False), ("[a-ζ]*", "\u03b1", True), ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False), ("a*b", "a/b", False), ("[\\]a]", "]", True), ("[\\-]", "-", True),
    ("[x\\-]", "x", True), ("[x\\-]", "-", True), ("[x\\-]", "z", False),
    ("[\\-x]", "x", True), ("[\\-x]", "-", True), ("[\\-x]", "a", False), ("*x", "xxx", True),
]
GO_BAD = [
    ("[]a]", "]"), ("[-]", "-"), ("[x-]", "x"), ("[x-]", "-"), ("[x-]", "z"), ("[-x]", "x"),
    ("[-x]", "-"), ("[-x]", "a"), ("\\", "a"), ("[a-b-c]", "a"), ("[", "a"), ("[^", "a"),
    ("[^bc", "a"), ("a[", "a"), ("a[", "ab"), ("a[", "x"), ("a/b[", "x"),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), GO_CASES)
def test_matches_as_go_does(pattern: str, name: str, expected: bool) -> None:
    assert match(pattern, name) is expected


@pytest.mark.parametrize(("pattern", "name"), GO_BAD)
def test_malformed_patterns_are_errors_wherever_matching_stops(pattern: str, name: str) -> None:
    with pytest.raises(BadPattern, match="syntax error in pattern"):
        match(pattern, name)


def test_image_references_as_dockerd_filters_them() -> None:
    # What dockerd 20.10 answered for `docker images PATTERN` here.
    assert match("busy*", "busybox")
    assert match("*", "busybox:latest")
    assert not match("*", "i9/other:x")  # * stops at /
    assert not match("*/bb", "localhost:5000/i9/bb")
    assert match("busybox:[^l]*", "busybox:i9a")
    assert match("busybox:[!l]*", "busybox:latest")  # ! is no negation in Go
