"""Review 53 (mut53b): mutation testing of the full snapshot's build in child processes
(agent/cache_build.py; the contract §3, §9, §10). Each test pins a rule a mutant of the
module broke with every earlier test passing (docs/DECISIONS.md, "Review 53 (mut53b)").
Real snapshot files, real coordinator and worker processes, real SQLite files; the chunks
are the module's own plan of the file (`_plan_of`), so each rule is met at a real chunk
edge, and each refusal leaves the cache of version 1 as it was."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tillpoint.agent import cache_build
from tillpoint.agent.errors import InputError, StorageError
from tillpoint.agent.service import Agent

# test_cache_build's till: its clock, phone key and chunk size (256 bytes)
from .test_cache_build import NOW, dump, leftovers, make_agent

MIN_CHUNK = 256
HEADER = (
    '{"format":"tillpoint.snapshot/jsonl","version":%d,"baseVersion":0,'
    '"issuedAt":"2026-11-23T03:00:00Z",'
    '"program":{"tiers":[{"code":"base","accrualPercent":"3"}]}}\n'
)


def category(i: int) -> str:
    """A category row of 28 bytes (with its newline)."""
    return f'{{"code":"k{i:04d}","name":"n"}}\n'


def snapshot_lines(version: int, rows: int = 30) -> list[str]:
    return [HEADER % version, '{"section":"categories"}\n', *map(category, range(rows))]


def write(path: Path, lines: list[str], prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + "".join(lines).encode())
    return path


def plan(path: Path, workers: int, offset: int = 0) -> list[list[cache_build.Chunk]]:
    size = path.stat().st_size
    return cache_build._plan_of(path, offset, size - offset, workers, MIN_CHUNK)


def line_at(lines: list[str], at: int) -> int:
    """The number (from 1) of the payload's line that starts at byte `at` of it."""
    pos = 0
    for number, line in enumerate(lines, start=1):
        if pos == at:
            return number
        pos += len(line.encode())
    raise AssertionError(f"no line starts at {at}")


@pytest.fixture(scope="module")
def version_1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A till's data directory holding version 1, built by 3 workers (copied per test)."""
    data = tmp_path_factory.mktemp("v1") / "till"
    agent = make_agent(data, 3)
    try:
        v1 = write(data.parent / "v1.jsonl", snapshot_lines(1))
        assert len(plan(v1, 3)) == 3
        assert agent.load_snapshot_file(v1).version == 1
    finally:
        agent.close()
    return data


@pytest.fixture
def till(
    version_1: Path, tmp_path: Path
) -> Iterator[tuple[Agent, Path, dict[str, list[tuple[object, ...]]]]]:
    """A till with 3 build workers holding version 1, and its cache's dump."""
    data = tmp_path / "till"
    shutil.copytree(version_1, data, symlinks=True)
    agent = make_agent(data, 3)
    assert agent.status().cache_version == 1
    yield agent, data, dump(data)
    agent.close()


def refused(
    till: tuple[Agent, Path, dict[str, list[tuple[object, ...]]]],
    path: Path,
    pattern: str,
    offset: int = 0,
) -> None:
    """`path` is refused with a message matching `pattern`, the cache left at version 1
    as it was and no build file left behind."""
    agent, data, before = till
    with pytest.raises(InputError, match=pattern):
        agent.load_snapshot_file(path, offset)
    assert dump(data) == before
    assert agent.status().cache_version == 1
    assert leftovers(data) == []


# ------------------------------------------------------------ line numbers at chunk edges


@pytest.mark.parametrize("edge", ["last of the first", "first of the second", "last of all"])
def test_a_bad_row_at_each_edge_of_each_chunk_is_refused_by_its_files_line_number(
    tmp_path: Path, till: tuple[Agent, Path, dict[str, list[tuple[object, ...]]]], edge: str
) -> None:
    """Three workers, the categories cut into three chunks at line ends. A bad row as the
    last line of the first chunk, the first line of the second, and the last line of the
    file (the third worker's chunk, no newline after it) is refused naming the file's own
    line number: a worker counts from its chunk and adds the lines before it only for its
    error (the count, its `+ 1`s and the newline count of the bytes before the chunk)."""
    lines = snapshot_lines(2)
    lines[-1] = lines[-1].rstrip("\n")
    chunks = plan(write(tmp_path / "good.jsonl", lines), 3)
    assert [len(c) for c in chunks] == [1, 1, 1]
    (_, _, end0), (_, start1, _), (_, start2, _) = chunks[0][0], chunks[1][0], chunks[2][0]
    assert chunks[1][0][0] == chunks[2][0][0] == "categories"  # they start inside it
    last0, first1 = line_at(lines, end0) - 1, line_at(lines, start1)
    assert first1 == last0 + 1 and line_at(lines, start2) > first1 + 1
    number = {"last of the first": last0, "first of the second": first1}.get(edge, len(lines))
    lines[number - 1] = lines[number - 1].replace('"n"}', "  7}")  # as long as it was
    path = write(tmp_path / "bad.jsonl", lines)
    assert plan(path, 3) == chunks
    refused(till, path, rf"^snapshot line {number}: categories: name must be a string$")


def test_a_payload_at_an_offset_numbers_a_workers_line_from_the_payloads_start(
    tmp_path: Path, till: tuple[Agent, Path, dict[str, list[tuple[object, ...]]]]
) -> None:
    """A signed message's payload after a prefix of eleven lines (211 bytes): the third
    worker's bad row is named by its line in the payload (the lines before its chunk are
    counted from the payload's offset to the chunk, not from the file's start, nor past
    the chunk's start, nor from the chunk)."""
    lines = snapshot_lines(2)
    prefix = b"one\ntwo\nthree\n" + b"0123456789abcdefghi\n" * 8 + b"x" * 36 + b"\n"
    chunks = plan(write(tmp_path / "p.jsonl", lines, prefix), 3, len(prefix))
    start2 = chunks[2][0][1] - len(prefix)
    number = line_at(lines, start2) + 1  # the third worker's second line
    lines[number - 1] = lines[number - 1].replace('"n"}', "7}  ")
    path = write(tmp_path / "p.jsonl", lines, prefix)
    assert plan(path, 3, len(prefix)) == chunks
    refused(till, path, rf"^snapshot line {number}: categories: name", len(prefix))


def test_a_bad_section_line_cut_into_chunks_is_named_not_the_chunks_after_it(
    tmp_path: Path, till: tuple[Agent, Path, dict[str, list[tuple[object, ...]]]]
) -> None:
    """A section line the scan finds but that is not `{"section": NAME}` alone starts a
    range cut into three chunks: the chunks after the first start in no section, and
    their workers refuse their first rows as rows before any section line. The first bad
    line of the file, the section line (line 2), is the one named, as one process would
    name it (the workers all finish, and the least line number is taken)."""
    lines = snapshot_lines(2)
    lines[1] = '{"section":"categories","x":1}\n'
    path = write(tmp_path / "bad.jsonl", lines)
    chunks = plan(path, 3)
    assert [c[0][0] for c in chunks] == [None, None, None]  # no section known for any
    refused(till, path, r'^snapshot line 2: a section line is \{"section": NAME\}')


def test_the_first_bad_line_is_named_though_the_first_worker_finds_a_later_one(
    tmp_path: Path, till: tuple[Agent, Path, dict[str, list[tuple[object, ...]]]]
) -> None:
    """Worker 0 holds the first chunk of every section: with the categories given in two
    sections, its chunk of the second one comes after the second worker's chunk of the
    first. A bad row in each: the file's first bad line (the second worker's) is named,
    not the one of the worker that comes first (each failure is ordered by its line)."""
    lines = snapshot_lines(2)
    lines += ['{"section":"categories"}\n', *map(category, range(100, 130))]
    chunks = plan(write(tmp_path / "good.jsonl", lines), 3)
    assert [len(c) for c in chunks] == [2, 2, 2]
    early = line_at(lines, chunks[1][0][1]) + 1  # worker 1, the first section
    late = line_at(lines, chunks[0][1][1]) + 1  # worker 0, the second section
    assert early < late
    for number in (early, late):
        lines[number - 1] = lines[number - 1].replace('"n"}', "  7}")
    path = write(tmp_path / "bad.jsonl", lines)
    assert plan(path, 3) == chunks
    refused(till, path, rf"^snapshot line {early}: categories: name must be a string$")


def test_the_scan_refuses_a_long_line_inside_one_of_its_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The section scan reads blocks of at most the line bound (`min(block, bound)`), so a
    line inside one block is within the bound and only a line carried across blocks is
    measured: given blocks larger than the bound (here 100 bytes, blocks of 4 KiB), a line
    of 101 bytes wholly inside the first block is still refused by its number."""
    from tillpoint.agent import limits

    monkeypatch.setattr(limits, "LINE_MAX_BYTES", 100)
    text = b'{"section":"categories"}\n' + b"x" * 100 + b"\n" + b"y" * 101 + b"\nz\n"
    path = tmp_path / "scan.jsonl"
    path.write_bytes(text)
    with path.open("rb", buffering=0) as fh:
        with pytest.raises(InputError, match=r"^snapshot line 3: longer than"):
            cache_build._sections(fh, 0, len(text), block=4096)
        assert cache_build._sections(fh, 0, len(text) - 105, block=4096) == [0]


def test_a_payload_said_to_end_past_its_file_is_refused(
    tmp_path: Path, till: tuple[Agent, Path, dict[str, list[tuple[object, ...]]]]
) -> None:
    """A payload whose length runs past the end of its file (a message cut short under a
    header that says more) is refused as such, not built from what is there."""
    path = write(tmp_path / "v2.jsonl", snapshot_lines(2))
    agent, data, before = till
    with pytest.raises(InputError, match=r"^snapshot: the payload lies outside its file$"):
        agent.load_snapshot_file(path, 0, path.stat().st_size + 1)
    assert dump(data) == before and leftovers(data) == []
    assert agent.load_snapshot_file(path, 0, path.stat().st_size).version == 2


def test_bytes_after_the_payload_are_not_read(
    tmp_path: Path, till: tuple[Agent, Path, dict[str, list[tuple[object, ...]]]]
) -> None:
    """A payload followed by other bytes in its file (a message's payload given by offset
    and length): the scan for section lines stops at the payload's end, so a section line
    and rows after it are neither built nor refused; only the payload's 30 rows are."""
    lines = snapshot_lines(2)
    size = len("".join(lines).encode())
    after = ['{"section":"categories"}\n', category(999), '{"section":"cards"}\n', "junk\n"]
    path = write(tmp_path / "message", lines + after)
    agent, data, _ = till
    assert agent.load_snapshot_file(path, 0, size).version == 2
    codes = [row[0] for row in dump(data)["categories"]]
    assert len(codes) == 30 and "k0999" not in codes
    assert leftovers(data) == []


def test_the_scan_names_a_long_line_by_its_number_in_the_payload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator's scan (`_plan_of`, as `run`'s coordinator calls it) refuses a line
    past the bound (here 200 bytes) before any worker starts, numbered in the payload: its
    count starts at the body's first line (2, after the header), whatever the prefix."""
    from tillpoint.agent import limits

    monkeypatch.setattr(limits, "LINE_MAX_BYTES", 200)
    lines = snapshot_lines(2)
    lines[6] = '{"code":"k0004","name":"' + "n" * 180 + '"}\n'
    prefix = b"one\ntwo\n"
    path = write(tmp_path / "long.jsonl", lines, prefix)
    with pytest.raises(InputError, match=r"^snapshot line 7: longer than"):
        cache_build._plan_of(path, len(prefix), path.stat().st_size - len(prefix), 3, 1)


# ------------------------------------------------------------ a key given twice


@pytest.mark.parametrize(("first", "again"), [(0, 2), (1, 2), (2, 0)])
def test_a_key_given_in_two_workers_chunks_is_refused_naming_it(
    tmp_path: Path,
    till: tuple[Agent, Path, dict[str, list[tuple[object, ...]]]],
    first: int,
    again: int,
) -> None:
    """A category code given in one worker's chunk and again in another's (the first and
    the third, the second and the third — neither of them the build's own part — and the
    third's before the first's): refused at the merge, naming the key, as one process
    names it; the cache is unchanged."""
    lines = snapshot_lines(2)
    chunks = plan(write(tmp_path / "good.jsonl", lines), 3)
    # the second line of worker `first`'s chunk, copied over the last line of `again`'s
    source = line_at(lines, chunks[first][0][1]) + 1
    target = line_at(lines, chunks[again][0][2]) - 1 if again < 2 else len(lines)
    key = json.loads(lines[source - 1])["code"]
    lines[target - 1] = lines[source - 1]
    path = write(tmp_path / "twice.jsonl", lines)
    assert plan(path, 3) == chunks
    refused(till, path, rf"^snapshot: two categories rows have the same key, '{key}'$")


# ------------------------------------------------------------ sections and chunk edges


def test_tiny_sections_each_cut_at_its_own_line_build_what_one_process_builds(
    tmp_path: Path,
) -> None:
    """Every section cut (min_chunk 1, three workers): a section of its line alone, one
    of one row, a section a newer hub adds (its rows left out in every chunk, the later
    ones told its name by the plan), and a last row without a newline. The parallel build
    stores what one process stores and names what it left out the same way."""
    lines = [
        HEADER % 1,
        '{"section":"products"}\n',
        '{"section":"categories"}\n',
        category(0),
        '{"section":"stores"}\n',
        *(f'{{"id":"s-{i}","city":"Тверь"}}\n' for i in range(6)),
        '{"section":"cards"}\n',
        '{"section":"categories"}\n',
        *map(category, range(1, 8)),
    ]
    lines[-1] = lines[-1].rstrip("\n")
    path = write(tmp_path / "tiny.jsonl", lines)
    chunks = cache_build._plan_of(path, 0, path.stat().st_size, 3, 1)
    named = {c[0] for worker in chunks for c in worker}
    assert {"stores", "categories"} <= named  # chunks that start inside those sections
    serial = make_agent(tmp_path / "serial", 1)
    with path.open("rb") as f:
        one = serial.load_snapshot_lines(f)
    agent = make_agent(tmp_path / "till", 3)
    agent.build_min_chunk = 1
    parallel = agent.load_snapshot_file(path)
    assert parallel.ignored == one.ignored == ("section stores",)
    assert dump(tmp_path / "till") == dump(tmp_path / "serial")
    assert len(dump(tmp_path / "till")["categories"]) == 8
    assert leftovers(tmp_path / "till") == []


@pytest.mark.parametrize(("rows", "workers"), [(17, 1), (18, 2), (26, 2), (27, 3)])
def test_a_worker_is_started_for_each_whole_min_chunk_of_the_payload(
    tmp_path: Path, rows: int, workers: int
) -> None:
    """The workers are at most the payload's bytes after its header over `min_chunk`
    (one process below two of them: the module's "a payload under 16 MB is built by the
    coordinator alone"). Here the payload is the section line (25 bytes) and 28 bytes a
    row: 17 rows (501 bytes) are one chunk's worth at 256, 18 (529) and 26 (753) two,
    27 (781) three of the three asked for."""
    lines = snapshot_lines(1, rows)
    path = write(tmp_path / "s.jsonl", lines)
    payload = path.stat().st_size - len(lines[0])
    assert payload == 25 + 28 * rows
    assert len(plan(path, 3)) == workers


def test_a_section_smaller_than_min_chunk_is_one_workers_whole_chunk(tmp_path: Path) -> None:
    """Sections smaller than `min_chunk` are not cut: each is one chunk, dealt to the
    workers in turn (a big one is cut into one piece a worker, each piece starting at a
    line). Here the categories (865 bytes) are cut in three; the cards and the products
    sections (their lines alone) and a section of 5 categories (165 bytes) are whole,
    one a worker in turn."""
    lines = snapshot_lines(1)
    lines += ['{"section":"cards"}\n', '{"section":"products"}\n']
    lines += ['{"section":"categories"}\n', *map(category, range(100, 105))]
    path = write(tmp_path / "s.jsonl", lines)
    # by hand: 25 + 30 x 28 = 865 bytes, cut at the first line end at or after 865 / 3 and
    # 2 x 865 / 3 from the section's start (288 and 576): after 10 rows (305) and 20 (585)
    assert [[(n, line_at(lines, a), b - a) for n, a, b in c] for c in plan(path, 3)] == [
        [(None, 2, 305), (None, 33, 20)],
        [("categories", 13, 280), (None, 34, 23)],
        [("categories", 23, 280), (None, 35, 25 + 5 * 28)],
    ]
    # a section of exactly min_chunk bytes is cut: 165 at 165, after 2 rows (81) and 4 (137)
    size = path.stat().st_size
    assert [
        [(n, line_at(lines, a), b - a) for n, a, b in c]
        for c in cache_build._plan_of(path, 0, size, 3, 165)
    ] == [
        [(None, 2, 305), (None, 33, 20), (None, 35, 81)],
        [("categories", 13, 280), (None, 34, 23), ("categories", 38, 56)],
        [("categories", 23, 280), ("categories", 40, 28)],
    ]


def test_a_cut_that_falls_on_a_lines_start_is_made_there(tmp_path: Path) -> None:
    """A cut is the first line end at or after its share of the section: when the share
    ends exactly where a line starts, that line begins the next chunk. The first row 16
    bytes longer makes the section 881 bytes; 881 // 3 = 293 = 25 + 9 x 28 + 16, the start
    of the 10th row (line 12)."""
    lines = snapshot_lines(1)
    lines[2] = lines[2].replace('"n"', '"n' + "x" * 16 + '"')
    path = write(tmp_path / "s.jsonl", lines)
    assert [[(n, line_at(lines, a), b - a) for n, a, b in c] for c in plan(path, 3)] == [
        [(None, 2, 293)],
        [("categories", 12, 308)],
        [("categories", 23, 280)],
    ]


def test_the_agent_waits_for_the_coordinator_its_own_timeout_and_30_s_more(
    tmp_path: Path,
) -> None:
    """`run(timeout=T)` gives the coordinator T for its workers and waits T + 30 s for it
    (the grace lets the coordinator's own "worker N took more than T s" come first): with
    T = 20 a build of a few seconds is taken, not stopped at once."""
    data = tmp_path / "till"
    make_agent(data, 2).close()
    source = write(tmp_path / "v1.jsonl", snapshot_lines(1))
    size = source.stat().st_size
    info = cache_build.run(data, source, 0, size, NOW, workers=2, min_chunk=MIN_CHUNK, timeout=20)
    assert info.version == 1
    assert leftovers(data) == []


def test_workers_past_the_builds_timeout_are_stopped_and_nothing_is_stored(
    tmp_path: Path, till: tuple[Agent, Path, dict[str, list[tuple[object, ...]]]]
) -> None:
    """The coordinator waits for its workers until one deadline, `timeout` seconds after
    they start: with 0.1 s (no interpreter imports the build in that) the first worker
    waited for is past it, and the build is refused as a storage fault naming the
    worker and the time, the cache unchanged, no part left; the next load works."""
    agent, data, before = till
    path = write(tmp_path / "v2.jsonl", snapshot_lines(2))
    size = path.stat().st_size
    with pytest.raises(StorageError, match=r"^the cache build's worker 0 took more than 0 s;"):
        cache_build.run(data, path, 0, size, NOW, workers=3, min_chunk=MIN_CHUNK, timeout=0.1)
    assert dump(data) == before and leftovers(data) == []
    assert agent.load_snapshot_file(path).version == 2


# ------------------------------------------------------------ a child's report


def coordinator(data: Path, source: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", cache_build.MODULE, "build", "--data-dir", str(data)]
    command += ["--source", str(source), "--now", NOW.isoformat(), "--workers", "2"]
    command += ["--min-chunk", str(MIN_CHUNK), *extra]
    # a session of its own, as `run` starts it: its orphan watch kills its process group
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, start_new_session=True
    )


def test_the_coordinator_reports_a_refusal_as_one_json_line_and_exit_2(tmp_path: Path) -> None:
    """The coordinator's own protocol (the module's docstring): bad data is exit 2 and one
    JSON line on stderr naming the error's class and its message, nothing on stdout."""
    make_agent(tmp_path / "till", 2).close()
    lines = snapshot_lines(1)
    lines[-1] = '{"code":"k0029","name":  7}\n'
    bad = write(tmp_path / "bad.jsonl", lines)
    done = coordinator(tmp_path / "till", bad)
    assert (done.returncode, done.stdout) == (2, "")
    assert [json.loads(line) for line in done.stderr.splitlines()] == [
        {"error": "InputError", "message": "snapshot line 32: categories: name must be a string"}
    ]
    assert leftovers(tmp_path / "till") == []


def test_the_coordinator_reports_a_missing_file_as_unreadable_exit_2(tmp_path: Path) -> None:
    make_agent(tmp_path / "till", 2).close()
    missing = coordinator(tmp_path / "till", tmp_path / "none.jsonl")
    assert (missing.returncode, missing.stdout) == (2, "")
    assert json.loads(missing.stderr) == {
        "error": "UnreadableFile",
        "message": f"{tmp_path / 'none.jsonl'}: no such file",
    }


def test_a_child_that_dies_without_its_json_line_is_reported_by_its_last_words(
    tmp_path: Path,
) -> None:
    """A child that fails without the JSON line (an exception nobody caught: here a
    worker given chunks that are not JSON) is a storage fault naming its exit code and
    the last line it wrote, the exception, not the first ("Traceback ..."); one that
    wrote nothing says so; one killed names the signal."""
    make_agent(tmp_path / "till", 2).close()
    source = write(tmp_path / "v1.jsonl", snapshot_lines(1))
    command = [sys.executable, "-m", cache_build.MODULE, "work", "--data-dir"]
    command += [str(tmp_path / "till"), "--source", str(source), "--part"]
    command += [str(tmp_path / "part"), "--chunks", "[["]
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 1 and done.stderr.startswith(b"Traceback")
    error = cache_build._error_of(done.returncode, done.stderr, "the cache build's worker 3")
    assert isinstance(error, StorageError)
    assert error.message == (
        "the cache build's worker 3 failed (exit 1: json.decoder.JSONDecodeError:"
        " Expecting value: line 1 column 3 (char 2)); nothing was stored"
    )
    silent = cache_build._error_of(1, b"", "the cache build")
    assert silent.message == "the cache build failed (exit 1: no message); nothing was stored"
    # the signals' own action restored (a runner under nohup ignores SIGHUP, its children
    # too), and sent once the child says so
    code = (
        "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL);"
        " signal.signal(signal.SIGTERM, signal.SIG_DFL); print('ready', flush=True);"
        " time.sleep(60)"
    )
    for sig in (signal.SIGHUP, signal.SIGTERM):  # SIGHUP: -1, the least of them
        stopped = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert stopped.stdout is not None and stopped.stdout.readline() == b"ready\n"
        stopped.send_signal(sig)
        assert stopped.wait(timeout=60) == -sig
        stopped.stdout.close()
        killed = cache_build._error_of(-sig, b"", "the cache build")
        assert killed.message == f"the cache build was killed ({sig.name}); nothing was stored"
