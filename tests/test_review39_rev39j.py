"""Review 39, rev39j: a second look at rev39g (an HTTP answer's progress by what the
client's kernel acknowledged, SIOCOUTQ; the reset with a linger of 0) and rev39h (a
serial job's rest offered to the port every 10 ms in the stop's grace; an integer
field's fraction told "write a whole number"), with real sockets, real ptys and the real
CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import CLI, snapshot

# ------------------------- an integer field's fraction, told in its own words (CONTRACT §3)


@pytest.mark.parametrize("device", ["lane_s", "till-7_ms", "kasse-points", "pos-percent"])
def test_a_fraction_in_applied_through_is_a_sequence_whatever_the_device_is_called(
    cli: CLI, tmp_path: Path, device: str
) -> None:
    """CONTRACT §3: `appliedThrough[device]` is a sequence number, and a device id is any
    1 to 64 characters without blanks or slashes (CONTRACT §10): `lane_s`, `kasse-points`.
    rev39h told a fraction there "write a whole number", but only after the field's last
    name was matched against the units' endings, which for this map is the device's id:
    `appliedThrough.lane_s: 1.5` was told "write a whole number of seconds", and
    `pos-percent` 'write it as a decimal string ("1.5")' (a decimal string there is
    refused next). Failing first."""
    snap = snapshot()
    snap["appliedThrough"] = {device: "__F__"}
    file = tmp_path / "fraction.json"
    file.write_text(json.dumps(snap).replace('"__F__"', "1.5"), encoding="utf-8")
    run = cli("snapshot", "load", file)
    assert run.code == 2, run.err
    assert run.err.count("\n") == 1, run.err
    assert run.err.endswith(
        f"appliedThrough.{device}: the number 1.5 has a decimal point: write a whole number\n"
    ), run.err
