import dataclasses
import tomllib
from pathlib import Path

import pytest

from hbd.config import REPO_ROOT, Config, load_config
from hbd.errors import InvalidParameter
from hbd.store import StateStore


def test_state_store_round_trip_and_atomic_leftovers(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.put("containers", "abc", {"x": 1})
    assert store.get("containers", "abc") == {"x": 1}
    # A crash between write and rename leaves a dot-temp file: load drops it.
    (tmp_path / "containers" / ".abc.json.tmp-1").write_text("{torn")
    assert list(store.load("containers")) == [("abc", {"x": 1})]
    assert not (tmp_path / "containers" / ".abc.json.tmp-1").exists()
    store.delete("containers", "abc")
    assert store.get("containers", "abc") is None
    with pytest.raises(ValueError):
        store.put("containers", "../escape", {})


def test_hbd_toml_documents_every_setting_with_its_default() -> None:
    with open(REPO_ROOT / "hbd.toml", "rb") as f:
        documented = tomllib.load(f)
    defaults = Config()
    for section in dataclasses.fields(defaults):
        values = dataclasses.asdict(getattr(defaults, section.name))
        assert documented[section.name] == values, section.name


def test_config_rejects_unknown_and_mistyped(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[vm]\nmemory_mib = 'lots'\n")
    with pytest.raises(InvalidParameter, match="memory_mib must be int"):
        load_config(bad)
    bad.write_text("[vm]\nnope = 1\n")
    with pytest.raises(InvalidParameter, match="unknown setting"):
        load_config(bad)
    good = tmp_path / "good.toml"
    good.write_text("[vm]\nmemory_mib = 512\nboot_timeout = 5\n")
    config = load_config(good)
    assert config.vm.memory_mib == 512 and config.vm.boot_timeout == 5.0
