"""Validate API responses against the Engine API spec (../shared/spec, read in place).

Go encodes nil slices and maps as null, so dockerd itself answers null for
many fields the spec types as arrays or objects: null is accepted everywhere.
Otherwise types, enums and required fields are checked.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "engine-api-v1.47.yaml"


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
    with open(SPEC) as f:
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
