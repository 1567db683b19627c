"""A one-shot CLI call's wall time against a floor measured in the same run (review 38).

A POS that calls `tillpoint quote FILE` pays the interpreter's start, the imports and
the call itself each time. Each round runs every command once per `tillpoint` being
compared (the console script next to each Python; `--old` names a second one, a
worktree of another commit with its own venv, run interleaved with this one, the order
alternating per round) and the floors: `python -c pass` and `python -c 'import
pydantic'` (a program that validates with pydantic cannot start faster). Each
`tillpoint` gets its own data directory with examples/snapshot.json loaded; a checkout,
a hold and its confirm use a new receiptId each run (no redemption, so the balance
never runs out). Children run with their bytecode written and read (a till's package
has it; this machine's PYTHONDONTWRITEBYTECODE=1 is dropped for them). Prints one JSON
document: per command and `tillpoint`, the wall time's minimum and median and the
median CPU time (user + system: less moved by other processes on a shared machine).

    .venv/bin/python -m bench.cli_startup [--runs 10] [--old PATH/TO/python] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CARD = "2770000000017"
COMMANDS = ("quote", "checkout", "hold", "confirm", "identify", "balance", "status", "load")


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, child CPU seconds, exit code) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if run.returncode != 0:
        sys.stderr.write(f"{argv[1:]}: exit {run.returncode}: {run.stderr.decode()[-300:]}\n")
    return wall, cpu, run.returncode


class Till:
    """One `tillpoint` (the console script beside `python`) with its own data directory."""

    def __init__(self, name: str, python: Path, work: Path) -> None:
        self.name = name
        self.python = python
        self.exe = str(python.parent / "tillpoint")
        self.data = work / name
        self.work = work
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.upper().startswith("TILLPOINT_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        self.env["TILLPOINT_DATA_DIR"] = str(self.data)
        self.env["TILLPOINT_DEVICE_ID"] = "bench-till"
        self.receipt = json.loads((EXAMPLES / "receipt-redemption.json").read_text())
        self.receipt.pop("redeemPoints", None)
        self.count = 0
        self.held = ""

    def setup(self, commands: list[str]) -> None:
        code = self.run_one("load")[2]
        if code != 0:
            raise SystemExit(f"{self.name}: snapshot load failed")
        for command in commands:  # bytecode written, caches warm
            if command == "confirm" and not self.held:
                self.run_one("hold")
            self.run_one(command)

    def _receipt_file(self) -> tuple[str, str]:
        self.count += 1
        receipt_id = f"bench-{self.name}-{self.count}"
        path = self.work / f"{receipt_id}.json"
        path.write_text(json.dumps({**self.receipt, "receiptId": receipt_id}))
        return receipt_id, str(path)

    def argv(self, command: str) -> list[str]:
        if command == "load":
            return [self.exe, "snapshot", "load", str(EXAMPLES / "snapshot.json")]
        if command == "quote":
            return [self.exe, "quote", str(EXAMPLES / "receipt-redemption.json")]
        if command in ("checkout", "hold"):
            receipt_id, path = self._receipt_file()
            if command == "hold":
                self.held = receipt_id
            return [self.exe, command, path]
        if command == "confirm":
            return [self.exe, "confirm", self.held or "none"]
        if command in ("identify", "balance"):
            return [self.exe, command, CARD]
        return [self.exe, command]

    def run_one(self, command: str) -> tuple[float, float, int]:
        return _timed(self.argv(command), self.env)


def _summary(walls: list[float], cpus: list[float]) -> dict[str, float]:
    return {
        "wall_ms_min": round(min(walls) * 1000, 1),
        "wall_ms_median": round(statistics.median(walls) * 1000, 1),
        "cpu_ms_median": round(statistics.median(cpus) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="rounds (default 10)")
    parser.add_argument("--old", type=Path, help="a second Python whose tillpoint is compared")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="which, comma-separated")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args()
    commands = [c for c in args.commands.split(",") if c]
    unknown = sorted(set(commands) - set(COMMANDS))
    if unknown:
        parser.error(f"unknown command(s): {', '.join(unknown)}")

    with tempfile.TemporaryDirectory(prefix="tp-cli-startup-") as tmp:
        work = Path(tmp)
        tills = [Till("new", Path(sys.executable), work)]
        if args.old is not None:
            tills.append(Till("old", args.old, work))
        for till in tills:
            till.setup(commands)
        floor_env = tills[0].env
        floors = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import pydantic'": [sys.executable, "-c", "import pydantic"],
        }
        times: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        for round_no in range(args.runs):
            for name, argv in floors.items():
                wall, cpu, _ = _timed(argv, floor_env)
                walls, cpus = times.setdefault(("floor", name), ([], []))
                walls.append(wall)
                cpus.append(cpu)
            for command in commands:
                order = tills if round_no % 2 == 0 else tills[::-1]
                for till in order:
                    wall, cpu, _ = till.run_one(command)
                    walls, cpus = times.setdefault((till.name, command), ([], []))
                    walls.append(wall)
                    cpus.append(cpu)

    result: dict[str, Any] = {
        "runs": args.runs,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "floor": {name: _summary(*times[("floor", name)]) for name in floors},
        "commands": {},
    }
    for command in commands:
        entry: dict[str, Any] = {t.name: _summary(*times[(t.name, command)]) for t in tills}
        if args.old is not None:
            new, old = entry["new"], entry["old"]
            entry["saved_pct_wall_median"] = round(
                100 * (1 - new["wall_ms_median"] / old["wall_ms_median"]), 1
            )
            entry["saved_pct_cpu_median"] = round(
                100 * (1 - new["cpu_ms_median"] / old["cpu_ms_median"]), 1
            )
        result["commands"][command] = entry
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
