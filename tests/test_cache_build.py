"""Full snapshots from a file built by child processes (`agent/cache_build.py`): real
files, real processes, checked against the in-process (serial) build."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import cache as cache_mod
from tillpoint.agent import cache_build
from tillpoint.agent.db import cache_file
from tillpoint.agent.errors import InputError, StorageError
from tillpoint.agent.service import Agent

from bench.generate import Scale, card, write_full

from .conftest import CLI

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
KEY = "ab" * 32


def make_agent(data_dir: Path, workers: int = 2) -> Agent:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "phone.key").write_text(KEY)  # the same phone hashes in every till here
    agent = Agent(data_dir, "till-1", clock=lambda: NOW)
    agent.build_workers = workers
    agent.build_min_chunk = 256  # tiny files, still cut into chunks
    return agent


def dump(data_dir: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(cache_file(data_dir))
    try:
        return cache_mod.dump(conn)
    finally:
        conn.close()


def leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if ".part" in p.name or "building" in p.name)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_full(tmp_path_factory.mktemp("snap") / "full.jsonl", Scale.named("tiny"))


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def section_range(lines: list[str], name: str) -> tuple[int, int]:
    """Indexes (0-based) of the section's first and last row."""
    start = lines.index(f'{{"section":"{name}"}}\n') + 1
    end = start
    while end < len(lines) and not lines[end].startswith('{"section"'):
        end += 1
    return start, end - 1


def test_the_parallel_build_equals_the_serial_one_row_for_row(source: Path, tmp_path: Path) -> None:
    serial = make_agent(tmp_path / "serial")
    with source.open("rb") as f:
        serial.load_snapshot_lines(f)
    for workers in (1, 2, 3):
        agent = make_agent(tmp_path / f"w{workers}", workers)
        plan = cache_build._plan_of(source, 0, source.stat().st_size, workers, 256)
        assert len(plan) == workers  # every worker has chunks
        info = agent.load_snapshot_file(source)
        assert info.version == 1
        assert dump(tmp_path / f"w{workers}") == dump(tmp_path / "serial")
        assert leftovers(tmp_path / f"w{workers}") == []
        assert agent.identify(card(0)).status == "FOUND"


def test_a_payload_after_a_prefix_is_read_from_its_offset(source: Path, tmp_path: Path) -> None:
    prefixed = tmp_path / "message"
    prefixed.write_bytes(b"some signed prefix\n\x00\x01" + source.read_bytes())
    serial = make_agent(tmp_path / "serial")
    with source.open("rb") as f:
        serial.load_snapshot_lines(f)
    agent = make_agent(tmp_path / "till")
    agent.load_snapshot_file(prefixed, len(b"some signed prefix\n\x00\x01"))
    assert dump(tmp_path / "till") == dump(tmp_path / "serial")


def bad_copy(source: Path, tmp_path: Path, edit: Any) -> tuple[Path, int]:
    lines = lines_of(source)
    number = edit(lines)
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return path, number


def test_a_bad_row_in_the_second_workers_chunk_names_its_line_and_changes_nothing(
    source: Path, tmp_path: Path
) -> None:
    def edit(lines: list[str]) -> int:
        first, last = section_range(lines, "offers")
        at = first + (last - first) * 3 // 4  # well inside the second half
        lines[at] = lines[at].replace('"kind":"', '"kind":"NO_SUCH_', 1)
        return at + 1

    bad, number = bad_copy(source, tmp_path, edit)
    agent = make_agent(tmp_path / "till")
    agent.load_snapshot_file(source)
    before = dump(tmp_path / "till")
    offset = sum(len(line.encode()) for line in lines_of(bad)[: number - 1])
    plan = cache_build._plan_of(bad, 0, bad.stat().st_size, 2, 256)
    assert any(a <= offset < b for _, a, b in plan[1])  # the second worker has it
    newer = bad.read_text(encoding="utf-8").replace('"version":1,', '"version":2,', 1)
    bad.write_text(newer, encoding="utf-8")
    with pytest.raises(InputError, match=rf"^snapshot line {number}: offers: kind"):
        agent.load_snapshot_file(bad)
    assert dump(tmp_path / "till") == before
    assert leftovers(tmp_path / "till") == []
    # One process reports the same line.
    other = make_agent(tmp_path / "serial")
    with bad.open("rb") as f, pytest.raises(InputError, match=rf"^snapshot line {number}: "):
        other.load_snapshot_lines(f)


def test_the_first_bad_line_of_the_file_is_reported_whichever_worker_finds_it(
    source: Path, tmp_path: Path
) -> None:
    def edit(lines: list[str]) -> int:
        first, last = section_range(lines, "offers")
        late = first + (last - first) * 3 // 4
        lines[late] = "{not json\n"
        early = first + 2
        lines[early] = lines[early].replace('"kind":"', '"kind":"NO_SUCH_', 1)
        return early + 1

    bad, number = bad_copy(source, tmp_path, edit)
    agent = make_agent(tmp_path / "till")
    with pytest.raises(InputError, match=rf"^snapshot line {number}: "):
        agent.load_snapshot_file(bad)
    assert leftovers(tmp_path / "till") == []


def test_fields_and_sections_a_newer_hub_adds_are_left_out_by_every_worker(
    source: Path, tmp_path: Path
) -> None:
    """A field the contract does not define, in the second worker's chunk, and a whole
    section it does not know: the parallel build leaves them out as one process does,
    stores none of them, and names them (`CacheInfo.ignored`)."""

    def edit(lines: list[str]) -> int:
        first, last = section_range(lines, "offers")
        at = first + (last - first) * 3 // 4
        lines[at] = lines[at].replace('"kind"', '"surname":"Иванова","kind"', 1)
        first, _ = section_range(lines, "customers")
        lines[first] = lines[first].replace("{", '{"middleName":"Ъ",', 1)
        lines.insert(first - 1, '{"section":"stores"}\n{"id":"s-1","city":"Тверь"}\n')
        return at + 1

    newer, _ = bad_copy(source, tmp_path, edit)
    assert len(cache_build._plan_of(newer, 0, newer.stat().st_size, 2, 256)) == 2
    serial = make_agent(tmp_path / "serial")
    with source.open("rb") as f:
        serial.load_snapshot_lines(f)
    one = make_agent(tmp_path / "one")
    with newer.open("rb") as f:
        in_process = one.load_snapshot_lines(f)
    agent = make_agent(tmp_path / "till")
    parallel = agent.load_snapshot_file(newer)
    expected = ("customers[].middleName", "offers[].surname", "section stores")
    assert parallel.ignored == in_process.ignored == expected
    assert dump(tmp_path / "till") == dump(tmp_path / "one") == dump(tmp_path / "serial")
    for name in ("till", "one"):
        for db in (tmp_path / name).glob("cache-*.db"):
            assert "Иванова".encode() not in db.read_bytes()
    assert leftovers(tmp_path / "till") == []


def test_a_key_given_twice_in_different_chunks_is_refused(source: Path, tmp_path: Path) -> None:
    def edit(lines: list[str]) -> int:
        first, last = section_range(lines, "offers")
        lines.insert(last + 1, lines[first])  # the first offer again, at the section's end
        return 0

    bad, _ = bad_copy(source, tmp_path, edit)
    agent = make_agent(tmp_path / "till")
    with pytest.raises(InputError, match="two offers rows have the same key"):
        agent.load_snapshot_file(bad)
    assert not (tmp_path / "till" / "cache.db").is_symlink()  # nothing was switched in
    assert leftovers(tmp_path / "till") == []


def test_a_killed_worker_is_a_clean_refusal(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = make_agent(tmp_path / "till")
    agent.load_snapshot_file(source)
    before = dump(tmp_path / "till")
    newer = tmp_path / "v2.jsonl"
    newer.write_text(source.read_text().replace('"version":1,', '"version":2,', 1))
    monkeypatch.setenv(cache_build.FAULT_ENV, "kill:1")
    with pytest.raises(StorageError, match=r"worker 1 was killed \(SIGKILL\); nothing was stored"):
        agent.load_snapshot_file(newer)
    assert dump(tmp_path / "till") == before
    assert leftovers(tmp_path / "till") == []
    monkeypatch.delenv(cache_build.FAULT_ENV)
    assert agent.load_snapshot_file(newer).version == 2  # and the next try works


def test_the_cli_builds_in_child_processes_with_its_exit_codes(
    cli: CLI, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TILLPOINT_BUILD_WORKERS", "2")
    calls: list[tuple[Any, ...]] = []
    real = cache_build.run

    def spy(*args: Any, **kwargs: Any) -> cache_mod.CacheInfo:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_build, "run", spy)
    assert cli("snapshot", "load", source).code == 0
    assert len(calls) == 1
    again = cli("snapshot", "load", source)  # the same snapshot again: nothing changed
    assert again.code == 0 and "loaded already" in again.out, again.err


def test_every_process_of_the_build_runs_at_nice_10_or_more() -> None:
    code = (
        "import os; from tillpoint.agent import cache_build as b;"
        " b.lower_priority(); b.lower_priority(); print(os.nice(0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= max(10, os.nice(0))


def test_a_pull_from_a_real_hub_is_applied_by_child_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for

    calls: list[tuple[Any, ...]] = []
    real = cache_build.run

    def spy(*args: Any, **kwargs: Any) -> cache_mod.CacheInfo:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_build, "run", spy)
    monkeypatch.setattr(Agent, "build_min_chunk", 64)
    monkeypatch.setattr(Agent, "build_workers", 2)
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till-1")
    try:
        wait_for(lambda: till.agent.status().cache_version == 1)
        assert len(calls) == 1
        data_dir, message, offset = calls[0][:3]
        assert Path(message).is_relative_to(till.data_dir)  # the download, not a copy
        assert data_dir == till.data_dir and offset == 0  # the verified file is the payload
        assert till.agent.identify("2770000000017").status == "FOUND"
        assert leftovers(till.data_dir) == []
    finally:
        till.stop()
        hub.stop()


def test_the_section_scan_finds_every_section_line_across_its_read_blocks(
    source: Path,
) -> None:
    text = source.read_bytes().replace(b'\n{"section":"cards"}', b'\n \t{"section":"cards"}')
    text += b'{"id": "x", "nested": {"section": 1}}\n'  # not a section line
    expected, at = [], 0
    for line in text.splitlines(keepends=True):
        if line.strip().startswith(b'{"section"'):
            expected.append(at)
        at += len(line)
    path = source.with_name("scan.jsonl")
    path.write_bytes(text)
    with path.open("rb") as fh:
        for block in (7, 10, 11, 4096, 1 << 24):
            assert cache_build._sections(fh, 0, len(text), block) == expected


def test_a_killed_coordinator_is_a_clean_refusal_and_its_files_go(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import threading
    import time

    agent = make_agent(tmp_path / "till")
    agent.load_snapshot_file(source)
    before = dump(tmp_path / "till")
    newer = tmp_path / "v2.jsonl"
    newer.write_text(source.read_text().replace('"version":1,', '"version":2,', 1))
    monkeypatch.setenv(cache_build.FAULT_ENV, "stall")
    failed: list[BaseException] = []

    def apply() -> None:
        try:
            agent.load_snapshot_file(newer)
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=apply)
    thread.start()
    deadline = time.monotonic() + 20
    while not any(".part1" in name for name in leftovers(tmp_path / "till")):
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    coordinators = [
        int(pid)
        for task in Path(f"/proc/{os.getpid()}/task").iterdir()
        for pid in (task / "children").read_text().split()
        if b"\0build\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(coordinators) == 1
    os.kill(coordinators[0], signal.SIGKILL)
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert len(failed) == 1 and isinstance(failed[0], StorageError)
    assert "killed (SIGKILL)" in str(failed[0])
    assert dump(tmp_path / "till") == before
    assert leftovers(tmp_path / "till") == []


def build_processes(role: str, data: Path) -> list[int]:
    """The pids of this data directory's build children in `role` ("build", "work")."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"\0{role}\0".encode() in cmdline and str(data).encode() in cmdline:
            found.append(int(proc.name))
    return found


def test_a_build_whose_starter_is_killed_stops_and_the_next_load_works(
    source: Path, tmp_path: Path
) -> None:
    """`snapshot load` killed outside systemd (no KillMode to take its build with it): the
    build stops within a second or so instead of going on alone with the cache's write
    lock, and the next load takes the snapshot and removes what the build left."""
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "till"
    make_agent(data).close()
    env = {**os.environ, "TILLPOINT_DEVICE_ID": "till-1", cache_build.FAULT_ENV: "stall"}
    command = [sys.executable, "-m", "tillpoint.agent.cli", "--data-dir", str(data)]
    loader = subprocess.Popen(
        [*command, "snapshot", "load", str(source)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def coordinators() -> list[int]:
        return build_processes("build", data)

    try:
        deadline = time.monotonic() + 30
        while not coordinators():
            assert time.monotonic() < deadline and loader.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)  # the build under way (it stalls before its merge)
        loader.kill()
        loader.wait(timeout=10)
        deadline = time.monotonic() + 5
        while coordinators():
            assert time.monotonic() < deadline, "the orphaned build went on"
            time.sleep(0.05)
    finally:
        loader.kill()
        for pid in coordinators():
            os.killpg(pid, signal.SIGKILL)
    env.pop(cache_build.FAULT_ENV)
    done = subprocess.run(
        [*command, "snapshot", "load", str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert leftovers(data) == []
