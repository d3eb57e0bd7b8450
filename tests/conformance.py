"""Validate API responses against the Engine API spec (../shared/spec, read in place).

Go encodes nil slices and maps as null, so dockerd itself answers null for
many fields the spec types as arrays or objects: null is accepted everywhere.
Otherwise types, enums and required fields are checked.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

# Read in place from the shared directory beside the checkout (never copied in).
SPEC_NAME = Path("spec") / "engine-api-v1.47.yaml"
SPEC_CANDIDATES = [
    Path(os.environ["HBD_API_SPEC"]) if os.environ.get("HBD_API_SPEC") else None,
    Path(__file__).resolve().parents[2] / "shared" / SPEC_NAME,
    Path("/work/shared") / SPEC_NAME,
]


def _nullable(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_nullable(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _nullable(v) for k, v in schema.items() if not k.startswith("x-")}
    for key in ("properties", "definitions"):
        if key in schema:
            out[key] = {name: _nullable(s) for name, s in schema[key].items()}
    if "$ref" in out:
        return {"anyOf": [{"$ref": out["$ref"]}, {"type": "null"}]}
    if "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


@functools.cache
def spec() -> dict[str, Any]:
    found = [p for p in SPEC_CANDIDATES if p is not None and p.exists()]
    if not found:
        pytest.skip("the Engine API spec (../shared/spec/engine-api-v1.47.yaml) is not here; "
                    "set HBD_API_SPEC to its path")
    with open(found[0]) as f:
        loaded: dict[str, Any] = yaml.safe_load(f)
    return loaded


@functools.cache
def _definitions() -> dict[str, Any]:
    converted: dict[str, Any] = _nullable({"definitions": spec()["definitions"]})
    return converted


def validate(instance: Any, schema: dict[str, Any]) -> None:
    root = {**_definitions(), **_nullable(schema)}
    jsonschema.validate(instance, root, cls=jsonschema.Draft4Validator)


def validate_definition(instance: Any, name: str) -> None:
    validate(instance, {"$ref": f"#/definitions/{name}"})


def validate_response(instance: Any, path: str, method: str, status: int = 200) -> None:
    response = spec()["paths"][path][method.lower()]["responses"][status]
    validate(instance, response["schema"])
