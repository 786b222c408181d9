"""A declaration (methods/params.py Params) against its proto message: names, types, presence, and
the defaults and choices its field comments state. Shared by the method and metric tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from explaind.methods.params import BOOL, FLOAT, INT, STRING

PROTO = Path(__file__).resolve().parents[2] / "proto" / "explaind" / "v1" / "explaind.proto"
SCALARS = {FieldDescriptor.TYPE_INT32: INT, FieldDescriptor.TYPE_FLOAT: FLOAT, FieldDescriptor.TYPE_BOOL: BOOL,
           FieldDescriptor.TYPE_STRING: STRING}


def proto_comments() -> dict[str, dict[str, str]]:
    """message name -> field name -> its comment (the trailing one and the comment lines below it)."""
    messages: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last = ""
    for line in PROTO.read_text().splitlines():
        start = re.match(r"^message (\w+) \{", line)
        if start:
            current, last = messages.setdefault(start.group(1), {}), ""
            continue
        if current is None:
            continue
        if line.startswith("}"):
            current = None
            continue
        field = re.match(r"^\s*(?:optional |repeated )?\w+ (\w+) = \d+;\s*(?://(.*))?$", line)
        if field:
            last = field.group(1)
            current[last] = (field.group(2) or "").strip()
            continue
        more = re.match(r"^\s*//(.*)$", line)
        if more and last:
            current[last] += " " + more.group(1).strip()
    return messages



COMMENTS = proto_comments()


def check_declaration(name: str, params: tuple[Any, ...], message: Any) -> None:
    declared = {p.name: p for p in params}
    assert set(declared) == set(message.fields_by_name), (name, sorted(declared), sorted(message.fields_by_name))
    comments = COMMENTS[message.name]
    for field_name, field in message.fields_by_name.items():
        p = declared[field_name]
        kind = SCALARS[field.type]
        expected = ("repeated " + kind) if field.is_repeated else kind
        assert p.type == expected, (name, field_name, p.type, expected)
        if p.type in (INT, FLOAT, BOOL):
            assert field.has_presence, f"{message.name}.{field_name} must be `optional` (unset vs 0)"
        comment = " ".join(comments[field_name].split())
        default = " ".join(p.default_text.split())
        assert f"default {default}" in comment or f"{default} (default)" in comment, \
            f"{message.name}.{field_name}: the proto comment {comment!r} does not state the default {default!r}"
        for choice in p.choices:
            assert choice in comment, f"{message.name}.{field_name}: choice {choice!r} missing from {comment!r}"
