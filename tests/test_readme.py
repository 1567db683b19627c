"""The README's walkthrough, run as a person pastes it: every command in order, in one shell.

The commands are the lines starting with `$ ` in the shell blocks under the heading
"## Walkthrough"; the lines after a command are what it prints. A command that exits
non-zero fails the test with its output. A printed line is checked too: a JSON line
must be contained in the command's JSON answer (keys shown must be there with these
values; `…` marks what the README leaves out), other text must appear as shown, its
parts around `…` in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# The sections whose shell blocks are one session, in this order: the later ones go on in
# the walkthrough's shell ($W, its tills) and were not pasteable before (a data directory
# with no snapshot, receipt files the clone does not have).
HEADINGS = ("## Walkthrough", "## Hold, confirm, cancel", "## Deals, time windows")
MARK = "@@walkthrough@@"


@dataclass
class Step:
    command: str
    shown: list[str] = field(default_factory=list)


def walkthrough(readme: str) -> list[Step]:
    """The walkthrough's commands and the output shown after each."""
    sections = []
    for heading in HEADINGS:
        start = readme.index("\n" + heading) + 1 + len(heading)
        end = readme.find("\n## ", start)
        sections.append(readme[start : end if end >= 0 else len(readme)])
    steps: list[Step] = []
    for block in re.findall(r"```sh\n(.*?)```", "\n".join(sections), flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append(Step(line[2:]))
            elif line.strip():
                assert steps, f"output before any command: {line!r}"
                steps[-1].shown.append(line)
    return steps


def script(steps: list[Step]) -> str:
    out = []
    for i, step in enumerate(steps):
        out.append(
            f"echo '{MARK} {i}'\n{{ {step.command}\n}}\nrc=$?\n"
            f"echo '{MARK} rc' $rc\n[ $rc -eq 0 ] || exit 97\n"
        )
    return "".join(out)


def _shortened_json(line: str) -> Any:
    """A README JSON line with `…` left out, parsed (None when it is not JSON)."""
    text = re.sub(r",\s*…", "", line)
    text = text.replace("…", "")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _contains(actual: Any, shown: Any, where: str = "") -> list[str]:
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return [f"{where or 'answer'}: expected an object, got {actual!r}"]
        problems = []
        for key, value in shown.items():
            if key not in actual:
                problems.append(f"{where}{key}: missing")
            else:
                problems += _contains(actual[key], value, f"{where}{key}.")
        return problems
    if isinstance(shown, list):
        if not isinstance(actual, list) or len(actual) != len(shown):
            return [f"{where.rstrip('.')}: expected {shown!r}, got {actual!r}"]
        problems = []
        for i, (a, s) in enumerate(zip(actual, shown, strict=True)):
            problems += _contains(a, s, f"{where}{i}.")
        return problems
    if actual != shown:
        return [f"{where.rstrip('.')}: README shows {shown!r}, the command printed {actual!r}"]
    return []


def check_shown(step: Step, stdout: str) -> list[str]:
    problems: list[str] = []
    for line in step.shown:
        wanted = _shortened_json(line) if line.lstrip().startswith("{") else None
        if wanted is not None:
            try:
                actual = json.loads(stdout)
            except json.JSONDecodeError:
                problems.append(f"expected one JSON document, got {stdout!r}")
                continue
            problems += _contains(actual, wanted)
            if "…" not in line and actual != wanted:  # shown whole: the whole answer
                problems.append(f"{line!r} is not the whole answer (no …): {stdout!r}")
            continue
        position = 0
        for part in (p.strip() for p in line.split("…")):
            found = stdout.find(part, position)
            if found < 0:
                problems.append(f"{line!r} is not in what it printed: {stdout!r}")
                break
            position = found + len(part)
    return problems


def test_the_repository_cites_its_own_contract() -> None:
    """The docs and the code point at docs/CONTRACT.md, never at a file outside the clone."""
    outside = re.compile("SP" + r"EC(\.md|\s*§)|\.\./shared", re.IGNORECASE)
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for folder, pattern in (
        ("agent", "*.py"),
        ("sync", "*.py"),
        ("printer", "*.py"),
        ("proto/tillpoint/v1", "*.proto"),
        ("tests", "*.py"),
        ("tests/scenarios", "**/*.json"),
        ("examples", "*.json"),
    ):
        files += sorted((REPO / folder).glob(pattern))
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if outside.search(line)
    ]
    assert not found, "\n".join(found)
    contract = (REPO / "docs" / "CONTRACT.md").read_text(encoding="utf-8")
    sections = re.findall(r"(?m)^## (\d+)\. .*\n\n\*\*Status:\*\* ", contract)
    assert [int(n) for n in sections] == list(range(1, 18))


def test_the_examples_are_strict_proto3_json() -> None:
    """Each example file parses as its tillpoint.v1 message with no unknown field."""
    from google.protobuf import json_format
    from tillpoint.v1 import tillpoint_pb2 as pb

    kinds: dict[str, Any] = {"snapshot": pb.Snapshot, "catalogue": pb.Snapshot}
    kinds.update(receipt=pb.Receipt, refund=pb.Refund)
    for path in sorted((REPO / "examples").glob("*.json")):
        kind = kinds[path.stem.split("-")[0]]
        data = json.loads(path.read_text(encoding="utf-8"))
        json_format.ParseDict(data, kind(), ignore_unknown_fields=False)


def test_the_walkthrough_parses() -> None:
    steps = walkthrough((REPO / "README.md").read_text(encoding="utf-8"))
    commands = [s.command for s in steps]
    assert any("examples/snapshot.json" in c for c in commands)
    assert any("hub import examples/catalogue.json" in c for c in commands)
    for example in sorted((REPO / "examples").glob("*.json")):
        assert any(f"examples/{example.name}" in c for c in commands), example.name
    # the hold's life and the trace are pasted too, in the same shell (they named
    # `/tmp/till` with no snapshot and `receipt.json`, a file the clone does not have)
    for verb in ("hold examples/", "confirm s1-t1-000123 --fiscal", "cancel s1-t1-000124"):
        assert any(c.startswith(f"tillpoint {verb}") for c in commands), verb
    assert any(c.startswith("tillpoint quote") and "--explain" in c for c in commands)
    assert not [c for c in commands if "/tmp/till" in c or " receipt.json" in c]
    shown = next(s for s in steps if s.command.startswith("tillpoint balance"))
    assert check_shown(shown, '{"availablePoints": 1230, "pendingPoints": 0}') == []
    assert check_shown(shown, '{"availablePoints": 1231, "pendingPoints": 0}') != []
    # shown without `…`, the answer is whole: a field it does not show is a difference
    assert check_shown(shown, '{"availablePoints": 1230, "pendingPoints": 0, "x": 1}') != []
    shortened = next(s for s in steps if s.command.startswith("tillpoint status"))
    assert (
        check_shown(
            shortened,
            '{"deviceId": "till-1", "cacheVersion": 7, "lastSeq": 6,'
            ' "outboxDepth": 6, "mode": "OFFLINE", "x": 1}',
        )
        == []
    )


@pytest.mark.ci
@pytest.mark.slow  # about 30 tillpoint processes and two syncs: 20-40 s
def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    steps = walkthrough((REPO / "README.md").read_text(encoding="utf-8"))
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copytree(REPO / "examples", clone / "examples")
    (clone / ".venv").symlink_to(Path(sys.prefix))  # what `make venv` made
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env.update(HOME=str(tmp_path), TMPDIR=str(scratch), LANG="C.UTF-8")
    process = subprocess.Popen(
        ["bash", "-c", script(steps)],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=240)
    finally:
        # the walkthrough stops its hub itself; anything it left behind goes with the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    outputs: dict[int, str] = {}
    codes: dict[int, int] = {}
    current = -1
    for line in stdout.splitlines(keepends=True):
        if line.startswith(MARK):
            word = line.split()[1]
            if word == "rc":
                codes[current] = int(line.split()[2])
            else:
                current = int(word)
                outputs[current] = ""
        elif current >= 0:
            outputs[current] += line
    for i, step in enumerate(steps):
        assert i in codes, f"never got to `{step.command}`\nstderr:\n{stderr}"
        assert codes[i] == 0, (
            f"`{step.command}` exited {codes[i]}\nstdout:\n{outputs.get(i, '')}\nstderr:\n{stderr}"
        )
        problems = check_shown(step, outputs[i].strip())
        assert not problems, f"`{step.command}`:\n" + "\n".join(problems)
    assert process.returncode == 0, stderr


if __name__ == "__main__":  # pragma: no cover - print the walkthrough as a script
    print(script(walkthrough((REPO / "README.md").read_text(encoding="utf-8"))))
    pytest.main([__file__])
