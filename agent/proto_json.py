"""The generic proto3 JSON of `tillpoint.v1` messages now lives in the one mapper,
`agent/wire.py`; these names stay importable from here for the sync and printer commands."""

from __future__ import annotations

from .wire import message_json, status_json, status_message

__all__ = ["message_json", "status_json", "status_message"]
