import pytest

from hbd.errors import InvalidParameter
from hbd.services.image.reference import parse_reference


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("busybox", "docker.io/library/busybox", "busybox"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox", "busybox"),
        ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest",
         "busybox:latest"),
        ("index.docker.io/foo/bar", "docker.io/foo/bar", "foo/bar"),
        ("localhost:5000/a/b:c", "localhost:5000/a/b:c", "localhost:5000/a/b:c"),
        ("localhost/x", "localhost/x", "localhost/x"),
        ("127.0.0.1:5000/x@sha256:" + "a" * 64, "127.0.0.1:5000/x@sha256:" + "a" * 64,
         "127.0.0.1:5000/x@sha256:" + "a" * 64),
    ],
)
def test_normalises_like_docker(text: str, full: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == full
    assert ref.familiar == familiar


def test_default_tag_only_when_untagged() -> None:
    assert parse_reference("busybox").with_default_tag().tag == "latest"
    assert parse_reference("busybox:1").with_default_tag().tag == "1"
    digested = parse_reference("busybox@sha256:" + "b" * 64).with_default_tag()
    assert digested.tag == "" and digested.digest


@pytest.mark.parametrize("bad", ["", "UPPER", "a b", "-x", "x:", "x:-bad", "a//b", "a/../b"])
def test_rejects_malformed(bad: str) -> None:
    with pytest.raises(InvalidParameter):
        parse_reference(bad)


def test_uppercase_message_names_the_repository() -> None:
    with pytest.raises(InvalidParameter, match="must be lowercase"):
        parse_reference("Busybox")


def test_rejects_64_hex_repository_names() -> None:
    with pytest.raises(InvalidParameter, match="64-byte hexadecimal"):
        parse_reference("a" * 64)
