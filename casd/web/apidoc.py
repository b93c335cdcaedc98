"""The API reference page's view of the OpenAPI description: references resolved, operations
in the order the description lists them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METHODS = ("get", "head", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]
    parameters: list[dict[str, Any]]
    responses: list[tuple[str, dict[str, Any]]]

    @property
    def anchor(self) -> str:
        return self.spec.get("operationId") or f"{self.method}-{self.path}"


def resolve(api: dict[str, Any], node: Any) -> Any:
    """``node`` with a local ``$ref`` (``#/components/...``) replaced by what it points at."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = api
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def schema_text(api: dict[str, Any], schema: Any) -> str:
    """A one-line summary of a schema: its type, pattern or referenced name."""
    if not isinstance(schema, dict):
        return ""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return " | ".join(str(value) for value in schema["enum"])
    kind = schema.get("type", "")
    text = " | ".join(kind) if isinstance(kind, list) else str(kind)
    if "pattern" in schema:
        text += f" {schema['pattern']}"
    if "minimum" in schema or "maximum" in schema:
        text += f" [{schema.get('minimum', '')}..{schema.get('maximum', '')}]"
    return text


def operations(api: dict[str, Any]) -> list[Operation]:
    found = []
    for path, item in api.get("paths", {}).items():
        shared = [resolve(api, p) for p in item.get("parameters", [])]
        for method in METHODS:
            if method not in item:
                continue
            spec = item[method]
            own = [resolve(api, p) for p in spec.get("parameters", [])]
            responses = [
                (status, resolve(api, answer)) for status, answer in spec["responses"].items()
            ]
            found.append(Operation(method.upper(), path, spec, shared + own, responses))
    return found
