"""images/debian-python: which mirrors the bookworm image comes from, on a
Debian 12 host (its own bookworm sources) and on a Debian 13 one (its trixie
sources' mirrors, asked for bookworm)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "recipe_debian_python", REPO / "images" / "debian-python" / "recipe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def _host(tmp_path: Path, codename: str, sources: str) -> tuple[Path, Path]:
    etc_apt = tmp_path / "apt"
    (etc_apt / "sources.list.d").mkdir(parents=True)
    (etc_apt / "sources.list.d" / "debian.sources").write_text(sources)
    (etc_apt / "sources.list.d" / "docker.list").write_text(
        f"deb [arch=amd64] https://download.example/linux/debian {codename} stable\n")
    os_release = tmp_path / "os-release"
    os_release.write_text(f'PRETTY_NAME="Debian"\nVERSION_CODENAME={codename}\nID=debian\n')
    return etc_apt, os_release


DEB822 = """Types: deb
URIs: http://deb.debian.org/debian
Suites: {0} {0}-updates {0}-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.pgp

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: {0}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.pgp
"""


def _pairs(sources: list) -> list[tuple[str, str]]:
    return [(s.uri, s.suite) for s in sources]


def test_a_bookworm_host_gives_its_bookworm_sources(recipe: ModuleType, tmp_path: Path) -> None:
    etc_apt, os_release = _host(tmp_path, "bookworm", DEB822.format("bookworm"))
    assert _pairs(recipe.host_sources(etc_apt, os_release)) == [
        ("http://deb.debian.org/debian", "bookworm"),
        ("https://download.example/linux/debian", "bookworm"),
        ("http://deb.debian.org/debian", "bookworm-updates"),
        ("http://deb.debian.org/debian-security", "bookworm-security")]


def test_a_trixie_host_gives_its_mirrors_for_bookworm(recipe: ModuleType, tmp_path: Path) -> None:
    etc_apt, os_release = _host(tmp_path, "trixie", DEB822.format("trixie"))
    assert _pairs(recipe.host_sources(etc_apt, os_release)) == [
        ("http://deb.debian.org/debian", "bookworm"),
        ("https://download.example/linux/debian", "bookworm"),
        ("http://deb.debian.org/debian", "bookworm-updates"),
        ("http://deb.debian.org/debian-security", "bookworm-security")]


def test_a_host_with_no_debian_sources_says_so(recipe: ModuleType, tmp_path: Path) -> None:
    etc_apt, os_release = _host(tmp_path, "trixie", "")
    (etc_apt / "sources.list.d" / "docker.list").unlink()
    with pytest.raises(SystemExit, match="no 'bookworm' source"):
        recipe.host_sources(etc_apt, os_release)
