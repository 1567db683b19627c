"""A 50-line quote's cost in instructions (issue 11), counted by callgrind.

    python -m bench.quote_instructions [--calls 200] [--kind known|unknown] [--http]
                                       [--base REV] [--new REV]

Quick-scale data (`bench.generate`) loaded into a till once, outside valgrind; the
receipts of `bench.known_card.receipts` (known cards each of a customer not seen before:
first sight; or unknown cards). Each count runs a fresh copy of that till's directory in
`valgrind --tool=callgrind` (`PYTHONHASHSEED=0`): the till opened, 40 warm-up quotes,
then `--calls` measured ones; the same process with no measured quote is counted too and
subtracted, so what is printed is the measured quotes' instructions, per quote.
`--http`: the HTTP call's work as the server runs it (the body's bytes →
`receipt_of_body` → `Agent.quote` → `json_text`) instead of `Agent.quote` on receipts
parsed before. `--base REV`: the `agent/` of REV counted the same way (imported as
`bench.known_card --ab` does); the answers of both are hashed and compared equal.
valgrind: `make deps-bench` installs it (`make instructions BASE=main` runs this).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

WARM = 40


def inner(
    data: Path, bodies: Path, calls: int, kind: str, http: bool, old: str, hashed: bool
) -> None:
    """The counted process: open the till at `data`, warm it, quote `calls` receipts."""
    if old:
        sys.path.insert(0, old)
        from tillpoint_ab_old.http_api import json_text, receipt_of_body  # type: ignore
        from tillpoint_ab_old.service import Agent  # type: ignore
    else:
        from tillpoint.agent.http_api import json_text, receipt_of_body
        from tillpoint.agent.service import Agent
    every = json.loads(bodies.read_text())
    warm = [json.dumps(b).encode() for b in every["warm"]]
    todo = [json.dumps(b).encode() for b in every[kind]]
    agent = Agent(data, "bench-till")
    if http:
        ready: list[Any] = todo
    else:
        ready = [receipt_of_body(b) for b in todo]
    for body in warm:
        json_text(agent.quote(receipt_of_body(body)))
    answers = []
    for item in ready[:calls]:
        if http:
            answers.append(json_text(agent.quote(receipt_of_body(item))))
        else:
            answers.append(agent.quote(item))
    if hashed:  # a run outside valgrind: the answers' text, hashed
        texts = answers if http else [json_text(a) for a in answers]
        print(f"answers {hashlib.sha256(''.join(texts).encode()).hexdigest()[:16]}")


def count(
    work: Path, data: Path, bodies: Path, calls: int, args: Any, old: str, counted: bool = True
) -> tuple[int, str]:
    """(instructions, 0) of one process counted by callgrind, or (0, the answers' hash) of
    the same process run plainly (`counted` False)."""
    label = Path(old).parent.name if old else "tree"
    run = work / f"till-{calls}-{label}"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(data, run)
    out = work / f"callgrind-{calls}-{label}.out"
    cmd = [
        sys.executable,
        "-m",
        "bench.quote_instructions",
        "--inner",
        str(run),
        str(bodies),
        str(calls),
        args.kind,
        "1" if args.http else "0",
        old,
        "0" if counted else "1",
    ]
    if counted:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    if not counted:
        answers = re.search(r"answers (\w+)", done.stdout)
        assert answers is not None, done.stdout
        return 0, answers[1]
    total = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
    assert total is not None, done.stderr[-2000:]
    return int(total[1]), ""


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--inner":
        data, bodies, calls, kind, http, old, hashed = sys.argv[2:9]
        inner(Path(data), Path(bodies), int(calls), kind, http == "1", old, hashed == "1")
        return 0
    from bench.generate import Scale, write_full
    from bench.known_card import load, old_agent_dir, receipts

    def agent_of(rev: str, work: Path, name: str) -> Path:
        """The `agent/` of `rev` as `tillpoint_ab_old`, in a directory of its own."""
        (work / name).mkdir()
        return old_agent_dir(rev, work / name)

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--kind", choices=("known", "unknown"), default="known")
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--base", metavar="REV")
    parser.add_argument("--new", metavar="REV", help="a revision instead of the work tree")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is missing: apt-get install -y valgrind", file=sys.stderr)
        return 2
    scale = Scale.named("quick")
    work = Path(tempfile.mkdtemp(prefix="tillpoint-instr-"))
    try:
        snap = write_full(work / "full.jsonl", scale)
        known, unknown = receipts(scale, args.calls + WARM // 2)
        bodies = work / "bodies.json"
        bodies.write_text(
            json.dumps(
                {
                    "warm": known[: WARM // 2] + unknown[: WARM // 2],
                    "known": known[WARM // 2 :],
                    "unknown": unknown[WARM // 2 :],
                }
            )
        )
        load(work, "data", snap).close()
        olds = {"new": ""}
        if args.new:
            olds["new"] = str(agent_of(args.new, work, "new"))
        if args.base:
            olds["old"] = str(agent_of(args.base, work, "old"))
        per: dict[str, float] = {}
        hashes: dict[str, str] = {}
        for name, old in olds.items():
            base, _ = count(work, work / "data", bodies, 0, args, old)
            full, _ = count(work, work / "data", bodies, args.calls, args, old)
            _, hashes[name] = count(work, work / "data", bodies, args.calls, args, old, False)
            per[name] = (full - base) / args.calls
            print(f"{name}: {per[name]:,.0f} instructions a quote (answers {hashes[name]})")
        if args.base:
            change = per["new"] / per["old"] - 1
            print(f"new - old: {per['new'] - per['old']:,.0f} ({change:+.2%})")
            assert hashes["new"] == hashes["old"], "the answers differ"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
