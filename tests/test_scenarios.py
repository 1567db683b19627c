"""Conformance scenarios: every file in the shared examples and in tests/scenarios (sub-folders
included, e.g. tests/scenarios/review23/), run through the CLI step by step in a fresh data
directory.

A scenario is {"scenario", "deviceId", "slow"?, "steps": [...]}; a step is
{"command": "snapshot load" | "checkout" | "quote" | "refund" | "balance" | "identify" | "hold"
             | "confirm" | "cancel" | "status" | "wait",
 "input": {...} (or a string: written to the file verbatim, e.g. malformed JSON),
 "card"/"at" (balance), "text" (identify), "receiptId"/"fiscal" (confirm, cancel),
 "seconds" (wait: let wall-clock time pass, e.g. a hold's TTL), "explain": true (adds --explain),
 "padToBytes": N (blanks appended to the input file up to N bytes),
 "expect": {...} | {"exitCode": N}, "expectContains": [text, ...] (the printed document contains
 each), "expectAbsent": [key, ...] (top-level keys it must not have), "note"/"why": "..."}.
A step without "expect" only has to succeed. "note"/"why" is free text (the hand arithmetic).
A scenario with "slow": true runs only in `make test-all`.

Comparison: dicts - every key in `expect` present and equal (extra output keys are fine);
lists - same length, element by element; `{"exitCode": N}` - that exit code, stdout empty,
stderr one non-empty line without a traceback. Any printed `display` must fit the customer
display (at most 2 lines of at most 20 characters).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from tillpoint.agent import cli
from tillpoint.agent.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED_EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "examples"
OWN_SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def _files(folder: Path) -> list[Path]:
    """The scenarios of a folder and of its sub-folders (tests/scenarios/review23/, ...)."""
    return sorted(folder.rglob("*.json")) if folder.is_dir() else []


def _id(path: Path) -> str:
    for root in (OWN_SCENARIOS, SHARED_EXAMPLES):
        if path.is_relative_to(root):
            return path.relative_to(root).with_suffix("").as_posix()
    return path.stem


def _params(folder: Path) -> list[Any]:
    """One pytest param per file; a scenario with "slow": true runs only in `make test-all`."""
    out = []
    for path in _files(folder):
        slow = json.loads(path.read_text(encoding="utf-8")).get("slow") is True
        marks = [pytest.mark.slow] if slow else []
        out.append(pytest.param(path, id=_id(path), marks=marks))
    return out


def _mismatches(expected: Any, actual: Any, path: str = "$") -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        out: list[str] = []
        for key, value in expected.items():
            if key not in actual:
                out.append(f"{path}.{key}: missing (expected {value!r})")
            else:
                out.extend(_mismatches(value, actual[key], f"{path}.{key}"))
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {actual!r}"]
        if len(expected) != len(actual):
            return [f"{path}: expected {len(expected)} items, got {len(actual)}: {actual!r}"]
        out = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            out.extend(_mismatches(e, a, f"{path}[{i}]"))
        return out
    # bool is an int in Python: keep true/1 and false/0 apart
    same = expected == actual and isinstance(expected, bool) == isinstance(actual, bool)
    return [] if same else [f"{path}: expected {expected!r}, got {actual!r}"]


def _argv(step: dict[str, Any], data_dir: Path, index: int) -> list[str]:
    command = step["command"]
    base = ["--data-dir", str(data_dir)]
    if command == "identify":
        return [*base, "identify", step["text"], "--json"]
    if command == "balance":
        at = ["--at", step["at"]] if step.get("at") is not None else []
        return [*base, "balance", step["card"], *at, "--json"]
    if command == "status":
        return [*base, "status", "--json"]
    if command == "confirm":
        fiscal = ["--fiscal", step["fiscal"]] if step.get("fiscal") is not None else []
        return [*base, "confirm", step["receiptId"], *fiscal, "--json"]
    if command == "cancel":
        return [*base, "cancel", step["receiptId"], "--json"]
    file = data_dir.parent / f"step-{index:03d}.json"
    payload = step["input"]
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    if step.get("padToBytes"):  # blanks after the document: still valid JSON, but too large
        text += " " * max(0, int(step["padToBytes"]) - len(text.encode("utf-8")))
    file.write_text(text, encoding="utf-8")
    if command == "snapshot load":
        return [*base, "snapshot", "load", str(file), "--json"]
    if command in ("checkout", "quote", "refund", "hold"):
        explain = ["--explain"] if step.get("explain") else []
        return [*base, command, str(file), *explain, "--json"]
    raise AssertionError(f"unknown command in scenario: {command!r}")


# The parser of each command, built once a process (review 40, ci40): building it was a
# third of an in-process call's time (argparse's sub-parsers and their shared options;
# ~3,000 calls in this file). A `tillpoint` process builds it once for its one call; here
# the same parser serves every call of the same command (argparse keeps nothing of a
# parse in the parser; `main` sets only `argv` on it, per call, and these calls run one
# at a time).
_PARSERS: dict[str | None, argparse.ArgumentParser] = {}
_BUILD_PARSER = cli.build_parser


def _parser_of(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    key = None if argv is None else cli._command_of(argv)
    if key not in _PARSERS:
        _PARSERS[key] = _BUILD_PARSER(argv)
    return _PARSERS[key]


def _run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        with mock.patch.object(cli, "build_parser", _parser_of):
            code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _check_step(
    name: str, index: int, step: dict[str, Any], code: int, out: str, err: str
) -> list[str]:
    where = f"{name} step {index} ({step['command']})"
    expect = step.get("expect")
    if isinstance(expect, dict) and set(expect) == {"exitCode"}:
        problems = []
        if code != expect["exitCode"]:
            problems.append(f"exit code {code}, expected {expect['exitCode']}; stdout={out!r}")
        if out:
            problems.append(f"stdout should be empty, got {out!r}")
        lines = err.strip("\n").split("\n") if err.strip() else []
        if len(lines) != 1 or "Traceback" in err:
            problems.append(f"stderr should be one non-empty line, got {err!r}")
        return [f"{where}: {p}" for p in problems]
    if code != 0:
        return [f"{where}: exit code {code}, stderr={err.strip()!r}"]
    if expect is None:
        return []
    try:
        actual = json.loads(out)
    except json.JSONDecodeError:
        return [f"{where}: stdout is not one JSON document: {out!r}"]
    problems = _mismatches(expect, actual)
    # "expectContains": texts the printed document must contain (e.g. trace outcomes of §17);
    # "expectAbsent": top-level keys it must not have
    problems += [f"stdout lacks {t!r}" for t in step.get("expectContains", []) if t not in out]
    if isinstance(actual, dict):
        problems += [f"unexpected key {k!r}" for k in step.get("expectAbsent", []) if k in actual]
        problems += _display_problems(actual.get("display"))
    return [f"{where}: {m}" for m in problems]


def _display_problems(display: Any) -> list[str]:
    """§8: whatever the display shows fits it (default 2 lines x 20 characters)."""
    if display is None:
        return []
    if not isinstance(display, list) or len(display) > 2:
        return [f"display is not at most 2 lines: {display!r}"]
    return [f"display line longer than 20: {line!r}" for line in display if len(str(line)) > 20]


def _run_scenario(
    file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scenario = json.loads(file.read_text(encoding="utf-8"))
    for key in list(os.environ):
        if key.startswith("TILLPOINT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", scenario.get("deviceId", "till-1"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    name = scenario.get("scenario", file.stem)
    problems: list[str] = []
    for index, step in enumerate(scenario["steps"]):
        if step["command"] == "wait":  # let wall-clock time pass (a hold's TTL, §11)
            time.sleep(float(step["seconds"]))
            continue
        argv = _argv(step, data_dir, index)
        code, out, err = _run_in_process(argv, capsys)
        problems.extend(_check_step(name, index, step, code, out, err))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("file", _params(OWN_SCENARIOS))
def test_own_scenario(
    file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _run_scenario(file, tmp_path, monkeypatch, capsys)


@pytest.mark.skipif(not _files(SHARED_EXAMPLES), reason="no shared examples next to the repo")
@pytest.mark.parametrize("file", _params(SHARED_EXAMPLES))
def test_shared_example(
    file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _run_scenario(file, tmp_path, monkeypatch, capsys)


def test_scenarios_exist() -> None:
    assert len(_files(OWN_SCENARIOS)) >= 15


def test_entry_point_subprocess(tmp_path: Path) -> None:
    """One scenario through the installed `tillpoint` script, as the POS host would run it."""
    exe = Path(sys.executable).with_name("tillpoint")
    if not exe.exists():
        exe = REPO / ".venv" / "bin" / "tillpoint"
    if not exe.exists():
        pytest.skip("the tillpoint entry point is not installed")
    file = OWN_SCENARIOS / "spec_worked_example.json"
    scenario = json.loads(file.read_text(encoding="utf-8"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env["TILLPOINT_DEVICE_ID"] = scenario["deviceId"]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    problems: list[str] = []
    for index, step in enumerate(scenario["steps"]):
        argv = _argv(step, data_dir, index)
        proc = subprocess.run(
            [str(exe), *argv], capture_output=True, text=True, env=env, timeout=60, check=False
        )
        problems.extend(
            _check_step(
                scenario["scenario"], index, step, proc.returncode, proc.stdout, proc.stderr
            )
        )
    # and one refusal through the real process: exit 2, one line on stderr, nothing on stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"receiptId": "x", "lines": [', encoding="utf-8")
    proc = subprocess.run(
        [str(exe), "--data-dir", str(data_dir), "checkout", str(bad), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    problems.extend(
        _check_step(
            "subprocess",
            0,
            {"command": "checkout", "expect": {"exitCode": 2}},
            proc.returncode,
            proc.stdout,
            proc.stderr,
        )
    )
    assert not problems, "\n".join(problems)
