"""Reading a `docker load` archive (docker-archive or OCI layout): its members
by name, and which images it holds.

What is not an image archive fails with dockerd's words. dockerd untars the
archive into a directory (`.../tmp/docker-import-N`), reads manifest.json,
and without one loads it as a legacy (v1) archive: every top-level directory
an image with a `json`, then a `repositories` file. So a tar of any
directory fails with `open …/DIR/json: no such file or directory`, an empty
one with `open …/repositories: …`, and data that is no tar with Go's
archive/tar error after `Error processing tar file(exit status 1): `.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hbd.errors import InvalidParameter

MAX_JSON = 16 * 1024 * 1024
BLOCK = 512
GO_UNEXPECTED_EOF = "unexpected EOF"
GO_BAD_HEADER = "archive/tar: invalid tar header"
_GO_JSON_KINDS = {dict: "object", str: "string", int: "number", float: "number",
                  bool: "bool"}  # what Go's decoder calls them in its errors


def tar_error(go_error: str) -> InvalidParameter:
    return InvalidParameter(f"Error processing tar file(exit status 1): {go_error}")


def _clean(name: str) -> str:
    """A member name as a path inside the extracted directory ("" for the
    directory itself)."""
    return posixpath.normpath("/" + name).lstrip("/")


def _members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    try:
        return tar.getmembers()
    except tarfile.ReadError as e:
        # Python says "truncated header" / "unexpected end of data" where Go
        # runs out of input; anything else is a header Go rejects as well.
        text = str(e)
        raise tar_error(GO_UNEXPECTED_EOF if "truncated" in text or "end of data" in text
                        else GO_BAD_HEADER) from e
    except (tarfile.TarError, EOFError) as e:
        raise tar_error(GO_BAD_HEADER) from e


def _check_end(f: IO[bytes], offset: int) -> None:
    """After the last header Python read, Go reads on: a partial block is
    `unexpected EOF`, one that is neither zeros nor a header is bad."""
    f.seek(offset)
    block = f.read(BLOCK)
    if not block:
        return
    if len(block) < BLOCK:
        raise tar_error(GO_UNEXPECTED_EOF)
    if block.count(0) != BLOCK:
        raise tar_error(GO_BAD_HEADER)
    second = f.read(BLOCK)  # one zero block: Go wants a second or the end
    if second and len(second) < BLOCK:
        raise tar_error(GO_UNEXPECTED_EOF)
    if second and second.count(0) != BLOCK:
        raise tar_error(GO_BAD_HEADER)


def _open_tar(path: Path) -> tuple[tarfile.TarFile | None, list[tarfile.TarInfo]]:
    """The tar and its members; no tar (and none) for an empty file, which
    Go reads as an archive of nothing."""
    if path.stat().st_size == 0:
        return None, []
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by ArchiveReader.close
    except tarfile.ReadError as e:
        raise tar_error(GO_UNEXPECTED_EOF if "truncated" in str(e) else GO_BAD_HEADER) from e
    try:
        members = _members(tar)
        with open(path, "rb") as f:
            _check_end(f, tar.offset)
    except BaseException:
        tar.close()
        raise
    return tar, members


class ArchiveReader:
    """Members of a `docker save` tarball, read by name, with bounded JSON.

    `shown_root` is the directory the errors name, as dockerd names the one
    it extracts to."""

    def __init__(self, path: Path, shown_root: str) -> None:
        self.root = shown_root
        self.tar, members = _open_tar(path)
        self.names = {_clean(m.name): m for m in members if _clean(m.name)}

    def missing(self, name: str) -> InvalidParameter:
        return InvalidParameter(f"open {self.root}/{name}: no such file or directory")

    def has(self, name: str) -> bool:
        return name in self.names

    def top_directories(self) -> list[str]:
        """What extracting makes at the top: directories, explicit or implied."""
        tops = {name.split("/", 1)[0] for name, m in self.names.items()
                if "/" in name or m.isdir()}
        return sorted(tops)

    def open(self, name: str) -> IO[bytes]:
        member = self.names.get(_clean(name))
        if member is None or self.tar is None:
            raise self.missing(_clean(name))
        if member.issym() or member.islnk():
            # A layer stored once and linked from a second image's directory.
            target = self.names.get(_clean(posixpath.join(
                posixpath.dirname(_clean(name)), member.linkname)) if member.issym()
                else _clean(member.linkname))
            if target is None or target.issym() or target.islnk():
                raise InvalidParameter(f"invalid image archive: {name} links nowhere")
            member = target
        f = self.tar.extractfile(member)
        if f is None:
            raise InvalidParameter(f"invalid image archive: {name} is not a file")
        return f

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            data = f.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise InvalidParameter(f"invalid image archive: {name} is too large")
        return data

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidParameter(f"invalid image archive: {name}: {e}") from e

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


@dataclass
class ArchiveEntry:
    """One image an archive holds: where its config and layers are, its names."""

    config_member: str
    layer_members: list[str]
    layer_digests: list[str | None]
    names: list[str]


def archive_images(ar: ArchiveReader) -> list[ArchiveEntry]:
    if ar.has("manifest.json"):
        return _docker_images(ar)
    if ar.has("index.json"):
        return _oci_images(ar)
    raise _legacy_failure(ar)


def _legacy_failure(ar: ArchiveReader) -> InvalidParameter:
    """Where dockerd's legacy (v1) load of this archive fails first."""
    for directory in ar.top_directories():
        if not ar.has(f"{directory}/json"):
            return ar.missing(f"{directory}/json")
    if not ar.has("repositories"):
        return ar.missing("repositories")
    return InvalidParameter("invalid image archive: a legacy (v1) image archive, which hbd "
                            "does not load: save it again with Docker 1.10 or later")


def _docker_images(ar: ArchiveReader) -> list[ArchiveEntry]:
    manifest = ar.json("manifest.json")
    if manifest is None:  # Go reads null as an empty list: nothing to load
        return []
    if not isinstance(manifest, list):
        kind = _GO_JSON_KINDS.get(type(manifest), "value")
        raise InvalidParameter(
            f"json: cannot unmarshal {kind} into Go value of type []tarexport.manifestItem")
    out = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or \
                not isinstance(entry.get("Layers"), list):
            raise InvalidParameter("invalid image archive: malformed manifest.json")
        out.append(ArchiveEntry(
            config_member=entry["Config"],
            layer_members=[str(x) for x in entry["Layers"]],
            layer_digests=[None] * len(entry["Layers"]),
            names=[str(t) for t in entry.get("RepoTags") or []],
        ))
    return out


def _oci_blob(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def _oci_images(ar: ArchiveReader) -> list[ArchiveEntry]:
    try:
        return _oci_entries(ar)
    except (KeyError, TypeError, AttributeError) as e:
        raise InvalidParameter(f"invalid image archive: malformed OCI layout: {e}") from e


def _oci_entries(ar: ArchiveReader) -> list[ArchiveEntry]:
    out = []
    pending = [(d, None) for d in ar.json("index.json").get("manifests", [])]
    while pending:
        desc, name = pending.pop(0)
        annotations = desc.get("annotations") or {}
        name = annotations.get("io.containerd.image.name") or name
        media = desc.get("mediaType", "")
        doc = ar.json(_oci_blob(desc["digest"]))
        if "manifests" in doc:  # an index: take linux/amd64
            for sub in doc["manifests"]:
                plat = sub.get("platform") or {}
                if plat.get("os", "linux") == "linux" and \
                        plat.get("architecture", "amd64") == "amd64":
                    pending.append((sub, name))
                    break
            continue
        if "config" not in doc:
            raise InvalidParameter(f"invalid image archive: unsupported manifest {media}")
        out.append(ArchiveEntry(
            config_member=_oci_blob(doc["config"]["digest"]),
            layer_members=[_oci_blob(layer["digest"]) for layer in doc["layers"]],
            layer_digests=[layer["digest"] for layer in doc["layers"]],
            names=[name] if name else [],
        ))
    return out
