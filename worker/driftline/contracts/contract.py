"""A contract: one public schema file, generated from the struct the code decodes or encodes
with, decorated with the prose a type cannot say; and how its JSON Schema is built."""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URL = "https://driftline.dev/schemas/"
SCHEMA_SUFFIX = ".schema.json"


@dataclass(frozen=True)
class Contract:
    """One schema file: the struct it is generated from, plus the prose a type lacks."""

    name: str  # file stem, also the last segment of ``$id``
    struct: type[msgspec.Struct]
    title: str
    description: str
    #: JSON property name -> description.  Every key must be a property of the struct
    #: (checked at generation), so a renamed field cannot silently lose its doc.
    fields: Mapping[str, str]
    examples: tuple[Mapping[str, Any], ...] = field(default=())
    #: Property whose value is a struct (or an array of them, or either or null; ``a.b``
    #: for a struct inside another) -> its own property docs,
    #: checked like ``fields``; the nested struct's docstring is dropped (it is for Python
    #: readers, the property's description speaks for it).
    nested: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return self.name + SCHEMA_SUFFIX


def schema_for(contract: Contract) -> dict[str, Any]:
    """The standalone JSON Schema of one contract (see the module docstring)."""
    generated = msgspec.json.schema(contract.struct)
    definitions = generated.pop("$defs", {})
    body = _inline(generated, definitions, ())
    properties: dict[str, Any] = body.get("properties", {})
    unknown = sorted(set(contract.fields) - set(properties))
    if unknown:
        raise ValueError(f"{contract.name}: documented fields not in the struct: {unknown}")
    for name, doc in contract.fields.items():
        properties[name] = {"description": doc, **properties[name]}
    for name, docs in contract.nested.items():
        nested = _nested_struct(properties, name)
        nested.pop("title", None)
        nested.pop("description", None)
        inner: dict[str, Any] = nested.get("properties", {})
        unknown = sorted(set(docs) - set(inner))
        if unknown:
            raise ValueError(f"{contract.name}.{name}: documented fields not in it: {unknown}")
        for key, doc in docs.items():
            inner[key] = {"description": doc, **inner[key]}
    body.pop("title", None)
    body.pop("description", None)  # the struct docstring is for Python readers
    schema: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": SCHEMA_BASE_URL + contract.file_name,
        "title": contract.title,
        "description": contract.description,
        **body,
    }
    if contract.examples:
        schema["examples"] = [dict(example) for example in contract.examples]
    return schema


def _nested_struct(properties: dict[str, Any], path: str) -> dict[str, Any]:
    """The struct schema a ``nested`` key names: a property holding a struct, an array of
    them, or either or null (``anyOf``); ``a.b`` walks into ``a``'s struct first."""
    node: dict[str, Any] = {"properties": properties}
    for part in path.split("."):
        node = node["properties"][part]
        if "anyOf" in node:  # X | None: the member that is not null
            node = next(m for m in node["anyOf"] if m.get("type") != "null")
        if node.get("type") == "array":
            node = node["items"]
    return node


def _inline(node: Any, definitions: Mapping[str, Any], seen: tuple[str, ...]) -> Any:
    """Replace every ``{"$ref": "#/$defs/X"}`` by a copy of ``X``, recursively."""
    if isinstance(node, list):
        return [_inline(item, definitions, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        if name in seen:  # a recursive type cannot be inlined; none of ours is
            raise ValueError(f"recursive schema reference {' -> '.join((*seen, name))}")
        target = _inline(copy.deepcopy(definitions[name]), definitions, (*seen, name))
        siblings = {k: _inline(v, definitions, seen) for k, v in node.items() if k != "$ref"}
        return {**target, **siblings}
    return {key: _inline(value, definitions, seen) for key, value in node.items()}


def render(schema: Mapping[str, Any]) -> str:
    """The exact text written to disk: stable key order, 2-space indent, final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _first_difference(have: str, want: str) -> str:
    """A one-line hint of where the file and the code part ways."""
    for line in difflib.unified_diff(
        have.splitlines(), want.splitlines(), "file", "code", n=0, lineterm=""
    ):
        if line[:1] in "+-" and not line.startswith(("+++", "---")):
            return f"first change {line[:160]!r}"
    return "whitespace or line endings"
