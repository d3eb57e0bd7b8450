"""Request bodies against dockerd's Go types, and JSON read as encoding/json reads it."""

from __future__ import annotations

from typing import Any

import pytest

from hbd.api import gotypes
from hbd.errors import InvalidParameter
from hbd.services import goparse


def test_null_is_the_zero_value_and_keys_match_in_any_case() -> None:
    assert gotypes.check_body(None, "types.NetworkDisconnect") == {}
    body = {"container": "c1", "FORCE": True}
    assert gotypes.check_body(body, "types.NetworkDisconnect") is body
    assert gotypes.field(body, "Container") == "c1" and gotypes.field(body, "Force") is True
    assert gotypes.field({"Force": False, "force": True}, "Force") is False  # exact key first


@pytest.mark.parametrize(("body", "struct", "message"), [
    ([1], "volume.CreateOptions",
     "json: cannot unmarshal array into Go value of type volume.CreateOptions"),
    ({"IPAM": {"Config": [{"AuxiliaryAddresses": {"a": True}}]}}, "network.CreateRequest",
     "json: cannot unmarshal bool into Go struct field "
     "CreateRequest.IPAM.Config.AuxiliaryAddresses of type string"),
    ({"ConsoleSize": [-1, 2]}, "types.ExecStartCheck",
     "json: cannot unmarshal number -1 into Go struct field ExecStartCheck.ConsoleSize "
     "of type uint"),
    ({"ConsoleSize": [1.5]}, "types.ExecStartCheck",
     "json: cannot unmarshal number 1.5 into Go struct field ExecStartCheck.ConsoleSize "
     "of type uint"),
])
def test_a_value_of_the_wrong_kind_is_gos_error(body: Any, struct: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as e:
        gotypes.check_body(body, struct)
    assert e.value.message == f"invalid JSON: {message}"


def test_fields_a_service_checks_are_left_to_it_but_not_what_they_hold() -> None:
    # HostConfig.Binds of the wrong kind: the container service's text, not ours.
    gotypes.check_body({"HostConfig": {"Binds": 5}}, "container.CreateRequest")
    with pytest.raises(InvalidParameter, match=r"HostConfig.Binds of type string"):
        gotypes.check_body({"HostConfig": {"Binds": [5]}}, "container.CreateRequest")


def test_a_plain_decoder_reads_the_first_value_only() -> None:
    assert goparse.json_decode_first(b' ["a"] trailing') == ["a"]
    assert gotypes.decode(b'{"username": "u"} x', "registry.AuthConfig") == {"username": "u"}
    with pytest.raises(ValueError, match=r"^EOF$"):
        gotypes.decode(b"  ", "registry.AuthConfig")


def test_invalid_utf8_in_strings_is_replaced_as_go_does() -> None:
    assert goparse.json_loads(b'{"a": "\xbe"}') == {"a": "\ufffd"}
    with pytest.raises(ValueError, match="after top-level value"):
        goparse.json_loads(b"1 2")
