"""Limits on what a request may carry (docs/CONTRACT.md §10), shared by the CLI, gRPC and
the models. A module of its own, without imports, so the CLI can read it at start-up."""

from __future__ import annotations

# Every text field of a request (receipt, refund, identify, balance), in characters.
TEXT_MAX = 128
# One request (a receipt or refund file, a gRPC message to the PosAgent server), in bytes.
REQUEST_MAX_BYTES = 4 << 20  # 4 MiB
