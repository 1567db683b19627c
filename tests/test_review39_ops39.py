"""Review 39 (ops39): a retailer IT team's and a support engineer's black box — install,
configure, run out of room (docs/CONTRACT.md §10, exit codes and storage) — each finding
with the test that failed before its fix. Real SQLite files in a real child process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from .conftest import CLI, REPO, snapshot

# ------------------------------------------ §10: a file size limit is named, not "disk I/O error"

# A child of its own (the limit is the process's; this worker's own files must not meet
# it): a till's ledger sells under RLIMIT_FSIZE (`ulimit -f`, systemd's LimitFSIZE=, or a
# file system's largest file) until a sale is refused, then the limit is lifted and it
# sells again. Python ignores SIGXFSZ, so the write fails with EFBIG, which SQLite says
# as "disk I/O error".
_FILE_SIZE_LIMIT = r"""
import json, resource, sys
from pathlib import Path
from tillpoint.agent.errors import StorageError
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

data, examples = Path(sys.argv[1]), Path(sys.argv[2])
agent = Agent(data, "till-1")
agent.load_snapshot(json.loads((examples / "snapshot.json").read_text(encoding="utf-8")))
base = json.loads((examples / "receipt-card.json").read_text(encoding="utf-8"))
base["lines"] = base["lines"] * 40
limit = max(f.stat().st_size for f in data.glob("ledger.db*")) + 256 * 1024
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
sold, refusal = 0, None
for i in range(400):
    try:
        agent.checkout(receipt_from_json({**base, "receiptId": f"f-{i}"}))
        sold += 1
    except StorageError as exc:
        refusal = str(exc)
        break
status = agent.status().to_json()
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
agent.checkout(receipt_from_json({**base, "receiptId": "after"}))
agent.close()
print(json.dumps({"sold": sold, "limit": limit, "refusal": refusal, "status": status}, default=str))
"""


def test_a_ledger_at_the_process_file_size_limit_says_so(tmp_path: Path) -> None:
    """CONTRACT §10 (storage). A ledger whose file reached the process's file size limit
    (`ulimit -f`, `LimitFSIZE=` in a unit's drop-in) refused the sale with "the ledger
    could not be written, nothing was stored: disk I/O error" — at the POS (503 /
    UNAVAILABLE), in `status`'s storageError and the log: a support engineer went looking
    for a broken disk. Now the line names the file and the limit; nothing half-written,
    and the till sells again once the limit is lifted."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    child = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT, str(data), str(REPO / "examples")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout)
    refusal = out["refusal"]
    assert refusal is not None and out["sold"] > 0, out
    assert refusal.startswith("the ledger could not be written, nothing was stored: "), refusal
    assert "file size limit" in refusal and f"{out['limit'] // 1024} KiB" in refusal, refusal
    assert str(data / "ledger.db") in refusal, refusal
    assert "\n" not in refusal and "Traceback" not in child.stderr
    assert refusal in json.dumps(out["status"], ensure_ascii=False), out["status"]
    import sqlite3

    with sqlite3.connect(data / "ledger.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = {row[0] for row in conn.execute("SELECT receipt_id FROM receipts")}
    assert ids == {f"f-{i}" for i in range(out["sold"])} | {"after"}


# ------------------------------------------ §10: the example configuration names every choice


def _choices(model: type[Any]) -> dict[str, tuple[str, ...]]:
    """Each field of `model` that takes one of a few words, and those words."""
    out: dict[str, tuple[str, ...]] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        while get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        if get_origin(annotation) is Literal:
            words = tuple(v for v in get_args(annotation) if isinstance(v, str))
            if words:
                out[name] = words
    return out


def _said_about(lines: list[str], table: str, key: str) -> str:
    """The example file's words about `[table] key`: its line (commented out or not) and
    the comment lines right above it."""
    current, said = "", []
    for i, line in enumerate(lines):
        head = re.match(r"^\[([a-z_]+)\]", line)
        if head:
            current = head.group(1)
            continue
        if current == table and re.match(rf"^#?\s*{key}\s*=", line):
            said.append(line)
            j = i - 1
            while (
                j >= 0 and lines[j].startswith("#") and not re.match(r"^#\s*[a-z_]+\s*=", lines[j])
            ):
                said.append(lines[j])
                j -= 1
    return "\n".join(said)


def test_the_example_configuration_names_every_value_a_choice_takes() -> None:
    """CONTRACT §10 (configuration). The example file's `[display]` and `[scanner]` said
    "A 2 x 20 pole display on a serial port, or "none"" and "A serial barcode scanner …,
    or "none"": an IT person setting up a kiosk's scanner had no value to write but
    "none" (`kind = "pole"` is refused). Every setting that takes one of a few words now
    has each of them in the example's words about it; a `kind` in TOML's quotes."""
    from tillpoint.agent.config import LogSettings
    from tillpoint.printer.config import DisplayConfig, PrinterConfig, ScannerConfig

    lines = (REPO / "packaging" / "tillpoint.example.toml").read_text(encoding="utf-8").splitlines()
    missing = []
    for table, model in (
        ("printer", PrinterConfig),
        ("display", DisplayConfig),
        ("scanner", ScannerConfig),
        ("log", LogSettings),
    ):
        for key, words in _choices(model).items():
            said = _said_about(lines, table, key)
            for word in words:
                shown = f'"{word}"' in said if key == "kind" else re.search(rf"\b{word}\b", said)
                if not shown:
                    missing.append(f"[{table}] {key}: {word}")
    assert not missing, missing


# ------------------------------------------ §10: `status` of a data directory no till has used


def test_status_of_a_data_directory_no_till_used_says_so_and_where_the_service_s_is(
    cli: CLI,
) -> None:
    """CONTRACT §10 (`status`). A support engineer who runs `tillpoint status` under
    their own login (not root, no `sudo`: the data directory is then theirs,
    `~/.local/share/tillpoint`) was shown a blank till — no snapshot, no sale, their host
    name as the device — and "agent: not running (…: mode, devices and errors are as it
    last left them; `systemctl status tillpoint` says why)": the service looked down while
    it sold in /var/lib/tillpoint. Now the last line says no till has used that directory
    yet and names the packaged service's; a till that has sold keeps the line it had."""
    fresh = cli("status")
    assert fresh.code == 0, fresh.err
    last = fresh.out.rstrip("\n").splitlines()[-1]
    assert last.startswith("agent: not running (no `tillpoint run` serves"), last
    assert "no till has used it yet" in last, last
    assert "/var/lib/tillpoint" in last and "sudo tillpoint status" in last, last
    assert "as it last left them" not in last, last
    assert cli("--json", "status").code == 0  # the document is the Status message, unchanged

    assert cli("snapshot", "load", snapshot()).code == 0
    loaded = cli("status").out.rstrip("\n").splitlines()[-1]
    assert "as it last left them" in loaded and "no till has used" not in loaded, loaded
