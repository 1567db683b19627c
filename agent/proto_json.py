"""The one JSON mapping of `tillpoint.v1` messages that `--json` prints (docs/CONTRACT.md §1).

proto3 JSON (lowerCamelCase names, enums as names) with every field present, empty ones
too, so a script sees the same keys every time; 64-bit integers are JSON numbers, as in
every other document the CLI prints (proto3 JSON parsers accept a number or a string).
`tillpoint status --json` and the gRPC `Status` go through `message_json` and
`status_message`, so both say the same thing field by field.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tillpoint.v1 import tillpoint_pb2 as pb

_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def message_json(message: Message) -> dict[str, Any]:
    """The message as the CLI prints it with --json: keys in the order of the proto."""
    data = json_format.MessageToDict(
        message,
        preserving_proto_field_name=False,
        always_print_fields_with_no_presence=True,
    )
    return _shape(message.DESCRIPTOR, data)


def _shape(descriptor: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Field order, int64 as numbers, an unset message field as null (not left out)."""
    out: dict[str, Any] = {}
    for field in descriptor.fields:
        name = field.json_name
        if name not in data:
            if field.type == FieldDescriptor.TYPE_MESSAGE and not _repeated(field):
                out[name] = None
            continue
        value = data[name]
        if field.type in _INT64:
            value = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            inner: Any = field.message_type
            if inner.GetOptions().map_entry:
                pass  # a map: keys are strings, values left as json_format gives them
            elif isinstance(value, list):
                value = [_shape(inner, v) for v in value]
            elif isinstance(value, dict):
                value = _shape(inner, value)
        out[name] = value
    return out


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def status_message(status: dict[str, Any]) -> pb.Status:
    """`Agent.status()` as the proto `Status`; a key the proto lacks is a bug, not dropped."""
    return json_format.ParseDict(status, pb.Status(), ignore_unknown_fields=False)


def status_json(status: dict[str, Any]) -> dict[str, Any]:
    """`tillpoint status --json`: the same document a gRPC client gets from `message_json`."""
    return message_json(status_message(status))
