"""Review 55 (mut55c): mutation testing of the agent's housekeeping — the logs' masking
(`agent/logs.py`), files written whole (`agent/files.py`), one agent per data directory
(`agent/lock.py`) and the /metrics endpoint (`agent/metrics.py`, the gauges of
`server.register_gauges`). Each test pins a rule a surviving mutant broke and no test
held, with real parts: real files in tmp_path, a real small file system (a tmpfs in a
mount namespace of its own) for a full disk, real second processes for the lock, real
HTTP scrapes of a real endpoint. Figures are worked out by hand in the comments.
docs/DECISIONS.md, "Review 55 (mut55c)", lists the mutants."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from tillpoint.agent.errors import Refused
from tillpoint.agent.lock import DataDirLock
from tillpoint.agent.logs import mask, mask_identifier
from tillpoint.agent.metrics import Histogram, Registry, serve
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.server import register_gauges
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import LoopbackHub, receipt, wait_for
from tillpoint.sync.push import Pusher

from .conftest import enrolled_till, snapshot


def _scrape(port: int) -> dict[str, str]:
    """One real scrape of /metrics: each sample's name (with its labels) -> its value as
    written."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        body = answer.read().decode()
    samples = [line.rsplit(" ", 1) for line in body.splitlines() if not line.startswith("#")]
    return {name: value for name, value in samples}


# ------------------------------------------------------------------ logs: what is masked

# (message, as logged): each pins a rule of `logs.mask` a mutant broke with every test
# passing; the figures by the rule (a card keeps its last four digits, a phone its prefix
# and last four, 7 digits hidden; `******4567` without a prefix).
MASKED = [
    # a card or a phone first in the message: `before` is nothing, not the text's last
    # character (`start >= 0` read text[-1], a letter here, and left the card whole)
    ("2770000000017 was not found", "*********0017 was not found"),
    ("+79161234567 called", "+7*******4567 called"),
    # a digit two places before, across a blank, is not a decimal point's
    ("3 2770000000017", "3 *********0017"),
    ("qty 2 2770000000017", "qty 2 *********0017"),
    # the run's bounds: 8 and 19 digits are a card's, 7 and 20 are not (a longer run is
    # `mask_identifier`'s, below)
    ("card 12345678", "card ****5678"),
    ("card 1234567890123456789", "card ***************6789"),
    ("card 1234567", "card 1234567"),
    ("card 12345678901234567890", "card 12345678901234567890"),
    # a phone's shapes: the prefixes +7, 8 and 7, blanks, dashes and brackets between
    ("8 (916) 123-45-67", "8*******4567"),
    ("+7 916 123 45 67", "+7*******4567"),
    ("7-916-123-45-67", "7*******4567"),
    ("call +79161234567 or 89167654321", "call +7*******4567 or 8*******4321"),
    # fourteen digits are a card's run, not a phone and three more
    ("89161234567890", "**********7890"),
    # a number at the end of a sentence is still a card: only a digit after the point
    # makes a decimal
    ("x 12345678.", "x ****5678."),
    # a word that only ends in a counted one is not it; nor a unit that only begins one
    ("subsequent 12345678", "subsequent ****5678"),
    ("passport 12345678", "passport ****5678"),  # not `port`: a word of its own
    # a counted word only names the number just after it, not one further on
    ("seq 5 for card 2770000000017", "seq 5 for card *********0017"),
    ("took 12345678 sorts", "took ****5678 sorts"),
]
# left as they are: glued to a letter, `_` or a decimal point, before or after; followed
# by a unit; named by what it counts
LEFT = [
    "v0000000001-full.snap",  # the letter first in the message (`start > 1` lost it)
    "12345678abc",
    "2770000000017_x",
    "12345678.5",
    "weighs 12345678.5 kg",  # one digit after the point, then a blank
    "seq12345678",
    "pid 12345678",
    "port 12345678",
    "at byte 12345678",
    "kept versions 12345678",
    "balancePoints 12345678",
    "Seq 12345678",
    "seq=12345678",
    "seq #12345678",
    "seq '12345678'",
    'version: "12345678"',
    "took 12345678 ms",
    "took 12345678ms",
    "took 12345678 s",
    "read 12345678 byte",
    "12345678 bytes",
]


@pytest.mark.parametrize(("text", "logged"), MASKED)
def test_a_card_or_phone_is_masked_wherever_it_stands(text: str, logged: str) -> None:
    assert mask(text) == logged


@pytest.mark.parametrize("text", LEFT)
def test_a_number_that_is_not_a_card_by_its_context_is_left(text: str) -> None:
    assert mask(text) == text


def test_an_identifier_in_an_error_line_keeps_four_digits_of_a_run_of_five_or_more() -> None:
    """`mask_identifier` (the `balance` error line): a run of 22 digits (past a card's 19,
    which `mask` leaves) all but its last four; five digits too; four are left."""
    assert mask_identifier("1234567890123456789012") == "*" * 18 + "9012"
    assert mask_identifier("12345") == "*2345"
    assert mask_identifier("1234") == "1234"


def test_a_json_lines_fields_and_a_text_lines_stack_are_masked_too(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The masking is of the whole line, not only its message: a JSON line's fields
    (`receipt_id` and the others a record may carry: a POS that numbers its receipts by
    the card) and a text line's stack (`stack_info`: the source line of the call, here
    with a card in its comment). Unmasked, each passed every test; and a JSON line's
    Cyrillic is written as it is, not as `\\u` escapes a person cannot read in the journal."""
    import json
    import logging

    from tillpoint.agent import logs

    log = logging.getLogger("tillpoint.test55")
    try:
        logs.setup("INFO", "json")
        log.warning("refused", extra={"receipt_id": "r-2770000000017", "seq": 7})
        entry = json.loads(capfd.readouterr().err.strip().splitlines()[-1])
        assert (entry["receipt_id"], entry["seq"]) == ("r-*********0017", "7")
        log.warning("карта %s не найдена", "2770000000017")  # the journal shows it as written
        assert '"msg": "карта *********0017 не найдена"' in capfd.readouterr().err
        logs.setup("INFO", "text")
        log.warning("where", stack_info=True)  # card 2770000000017
        said = capfd.readouterr().err
        assert "Stack (most recent call last):" in said and "card *********0017" in said
        assert "2770000000017" not in said
    finally:
        logging.getLogger().handlers.clear()


def test_a_one_shots_warnings_are_masked_and_its_info_and_the_levels_below_are_not_said(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A one-shot command's stderr (`setup_one_shot`): a warning is `tillpoint: warning:
    …` with a card masked (a handler without the masking filter passed), an ERROR
    `tillpoint: error: …` (`<=` for `<` made it a warning), an INFO line is
    not printed (the handler's WARNING level dropped passed). `setup`'s level is the one
    given (WARNING: an INFO line is not written; a level ignored passed), and a JSON
    line's time is UTC with its offset (`+00:00`; a naive local time passed here, where
    the machine's zone is UTC)."""
    import json
    import logging

    from tillpoint.agent import logs

    log = logging.getLogger("tillpoint.test55")
    try:
        logs.setup_one_shot()
        log.info("loaded %s", "2770000000017")
        log.warning("card %s is read twice", "2770000000017")
        log.error("the ledger cannot be written")
        assert capfd.readouterr().err == (
            "tillpoint: warning: card *********0017 is read twice\n"
            "tillpoint: error: the ledger cannot be written\n"
        )
        logs.setup("WARNING", "json")
        log.info("not said")
        log.warning("said")
        lines = capfd.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        entry = json.loads(lines[0])
        assert entry["msg"] == "said" and entry["ts"].endswith("+00:00"), entry
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)


# ------------------------------------------------------------------ /metrics: the values


def test_a_gauge_of_seven_digits_is_scraped_exactly(tmp_path: Path) -> None:
    """A sample's value was written `{value:g}`: six significant digits. A till on snapshot
    version 1234567 said `tillpoint_snapshot_version 1.23457e+06`, which Prometheus reads
    as 1234570 — three versions ahead of what it holds; a chain numbering its versions by
    date (2026120701) read 2026120000. Now an integer is written whole: 1234567."""
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot(version=1234567))
    registry = Registry()
    register_gauges(registry, agent)
    servers, port = serve(registry, "127.0.0.1", 0)
    try:
        samples = _scrape(port)
    finally:
        servers.shutdown()
        agent.close()
    assert samples["tillpoint_snapshot_version"] == "1234567"
    assert samples["tillpoint_outbox_depth"] == "0"
    # an agent without the sync's status (no sync fields): nothing set aside or renumbered
    assert samples["tillpoint_sync_set_aside"] == samples["tillpoint_sync_renumbered"] == "0"
    age = samples["tillpoint_snapshot_age_seconds"]
    assert "e" not in age and float(age) > 0, age  # seconds since it was issued, in full


def test_the_outbox_depth_scraped_rises_with_a_sale_and_falls_when_the_hub_takes_it(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """`tillpoint_outbox_depth` is read from the ledger when scraped (a second at most
    after): 0 on a fresh till, 2 after two sales, 0 once the hub has acknowledged them.
    The tests scraped a till that never sold; a depth read once and kept (a status cached
    for a minute, not a second), or the print queue's read in its place, passed."""
    till = enrolled_till(hub, tmp_path / "till", "till-1")
    registry = Registry()
    register_gauges(registry, till.agent)
    servers, port = serve(registry, "127.0.0.1", 0)
    try:
        assert _scrape(port)["tillpoint_outbox_depth"] == "0"
        for receipt_id in ("o-1", "o-2"):
            till.agent.checkout(receipt_from_json(receipt(receipt_id, "2770000000017")))
        wait_for(lambda: _scrape(port)["tillpoint_outbox_depth"] == "2", timeout=30)
        assert _scrape(port)["tillpoint_print_queue_depth"] == "0"
        Pusher(till.data_dir, "till-1", till.link, call_timeout_s=10).drain()
        wait_for(lambda: _scrape(port)["tillpoint_outbox_depth"] == "0", timeout=30)
    finally:
        servers.shutdown()
        till.stop()


def test_the_sync_gauges_follow_what_the_sync_loop_records(tmp_path: Path) -> None:
    """`tillpoint_sync_error` and `tillpoint_hub_online` read the sync's state in the
    ledger as the sync loop records it (`sync.state`, what `run` wires as the agent's
    status source): 0 and 0 on a fresh till; 1 and 1 with a push error outstanding while
    the hub answers; 0 once the error is cleared. The tests saw only the 0s: a gauge
    stuck at 0 passed."""
    import sqlite3

    from tillpoint.sync import sync_status
    from tillpoint.sync.state import put, set_error

    agent = Agent(tmp_path / "data", "till-1", status_sources=(sync_status,))
    agent.load_snapshot(snapshot())
    registry = Registry()
    register_gauges(registry, agent)
    servers, port = serve(registry, "127.0.0.1", 0)
    conn = sqlite3.connect(tmp_path / "data" / "ledger.db", timeout=10)
    try:
        first = _scrape(port)
        assert (first["tillpoint_sync_error"], first["tillpoint_hub_online"]) == ("0", "0")
        put(conn, {"mode": "ONLINE"})
        set_error(conn, "push", "the hub refused the batch")

        def shown() -> tuple[str, str]:
            now = _scrape(port)
            return now["tillpoint_sync_error"], now["tillpoint_hub_online"]

        wait_for(lambda: shown() == ("1", "1"), timeout=30)
        set_error(conn, "push", None)
        wait_for(lambda: shown() == ("0", "1"), timeout=30)
    finally:
        conn.close()
        servers.shutdown()
        agent.close()


def test_a_value_that_is_not_whole_keeps_its_digits_and_infinity_is_prometheus_words() -> None:
    """What is not a whole number keeps every digit Python's shortest form needs (`repr`):
    12345.678 was `12345.7`; and the words for the infinities and not-a-number are the
    text format's own (`+Inf`, `-Inf`, `NaN`; `{:g}` wrote `inf`, which no parser takes)."""
    registry = Registry()
    registry.gauge(
        "t_values",
        "test values",
        lambda: {
            'k="a"': 12345.678,
            'k="b"': float("inf"),
            'k="c"': float("-inf"),
            'k="d"': 0.25,
            'k="e"': -3.0,
            'k="f"': 2.0**53,
        },
    )
    text = registry.render()
    assert 't_values{k="a"} 12345.678\n' in text
    assert 't_values{k="b"} +Inf\n' in text and 't_values{k="c"} -Inf\n' in text
    assert 't_values{k="d"} 0.25\n' in text and 't_values{k="e"} -3\n' in text
    assert 't_values{k="f"} 9007199254740992\n' in text
    registry.gauge("t_nan", "not a number", lambda: {"": float("nan")})
    assert "t_nan NaN\n" in registry.render()


def test_a_scrape_says_every_code_survives_a_failing_gauge_and_reads_its_query() -> None:
    """The endpoint as Prometheus meets it: `Content-Type: text/plain; version=0.0.4`
    (the version picks its parser), a query string (`/metrics?…`, a federating scraper's)
    still answered, any other path 404; every code counted, in order (a counter that
    wrote one passed); a gauge whose reading fails (the ledger busy) leaves the rest of
    the scrape as it is (a scrape that failed with it passed)."""
    import urllib.error

    registry = Registry()
    for code in ("UNAVAILABLE", "INTERNAL", "UNAVAILABLE"):
        registry.count_error(code)

    def failing() -> dict[str, float]:
        raise RuntimeError("database is locked")

    registry.gauge("t_failing", "a gauge whose reading fails", failing)
    registry.gauge("t_after", "a gauge after it", lambda: {"": 7.0})
    servers, port = serve(registry, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{port}/metrics?name[]=t_after"
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.status == 200  # Prometheus takes no other (201 passed)
            kind = answer.headers["Content-Type"]
            lines = answer.read().decode().splitlines()
        with pytest.raises(urllib.error.HTTPError) as other:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    finally:
        servers.shutdown()
    assert kind == "text/plain; version=0.0.4; charset=utf-8"
    assert other.value.code == 404
    assert [line for line in lines if line.startswith("tillpoint_call_errors_total{")] == [
        'tillpoint_call_errors_total{code="INTERNAL"} 1',
        'tillpoint_call_errors_total{code="UNAVAILABLE"} 2',
    ]
    assert lines[-5:] == [  # the gauges by name: the failing one says no sample
        "# HELP t_after a gauge after it",
        "# TYPE t_after gauge",
        "t_after 7",
        "# HELP t_failing a gauge whose reading fails",
        "# TYPE t_failing gauge",
    ]


def test_a_duration_on_a_bucket_bound_is_counted_in_that_bucket() -> None:
    """Prometheus' `le` is "less than or equal": a checkout of exactly 1 ms is in
    `le="0.001"`. Only 0.003 s had been observed (between bounds), so a histogram that put
    a value at a bound in the next bucket up (`bisect_right`) passed. By hand: 0 and 0.001
    are <= 0.001 (2); 0.0010001 <= 0.002 (3, cumulative); nothing more up to 1.0 (3); 2.0
    and 2.5 <= 2.5 (5); 2.5000001 only in +Inf (6: the last bucket's 2 and the overflow's 1
    differ, so +Inf adds the overflow, not the last bucket again). The sum 0 + 0.001 +
    0.0010001 + 2.0 + 2.5 + 2.5000001 = 7.0020002, written to the microsecond: 7.002000."""
    histogram = Histogram("t_seconds", "test")
    for seconds in (0.001, 0.0010001, 2.0, 2.5, 2.5000001, 0.0):
        histogram.observe(seconds)
    registry = Registry()
    registry.checkout_seconds = histogram
    servers, port = serve(registry, "127.0.0.1", 0)
    try:
        samples = _scrape(port)
    finally:
        servers.shutdown()
    cumulative = {
        "0.001": "2",
        "0.002": "3",
        "0.005": "3",
        "0.01": "3",
        "0.025": "3",
        "0.05": "3",
        "0.1": "3",
        "0.25": "3",
        "0.5": "3",
        "1.0": "3",
        "2.5": "5",
        "+Inf": "6",
    }
    assert {
        name[len('t_seconds_bucket{le="') : -2]: value
        for name, value in samples.items()
        if name.startswith("t_seconds_bucket")
    } == cumulative
    assert samples["t_seconds_count"] == "6" and samples["t_seconds_sum"] == "7.002000"


# ------------------------------------------------------------- files written whole

_MODES = textwrap.dedent(
    """
    import os, stat, sys
    from pathlib import Path
    from tillpoint.agent.files import replacing, write_whole

    d = Path(sys.argv[1])
    secret, export = d / "device.key", d / "export.json"
    secret.write_bytes(b"old key")
    os.chmod(secret, 0o600)
    with replacing(secret, mode=0o600) as out:
        out.write(b"new")
        half = os.stat(d / "device.key.tmp")  # half written: its mode from the start
        print("half", oct(stat.S_IMODE(half.st_mode)), (d / "device.key").read_bytes())
    print("secret", oct(stat.S_IMODE(secret.stat().st_mode)), secret.read_bytes())
    write_whole(export, b"{}")
    print("export", oct(stat.S_IMODE(export.stat().st_mode)))
    with replacing(d / "export.txt", encoding="utf-8") as out:  # `hub export --out`'s
        out.write("{}")
    print("text", oct(stat.S_IMODE((d / "export.txt").stat().st_mode)))
    try:
        with replacing(secret, mode=0o600) as out:
            out.write(b"never seen")
            raise ValueError("a failure inside the block")
    except ValueError:
        pass
    try:  # Ctrl-C in the middle of a write (`hub export --out` at a terminal)
        with replacing(secret, mode=0o600) as out:
            out.write(b"never seen either")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    print("failed", secret.read_bytes(), sorted(p.name for p in d.iterdir()))
    os.fstat(0)  # the process's standard input is still open
    print("stdin", sys.stdin.read())
    """
)


def test_a_files_mode_is_the_asked_one_from_the_start_and_a_failure_leaves_it_whole(
    tmp_path: Path,
) -> None:
    """`files.replacing`'s rules in a real process of umask 0 (so the mode seen is exactly
    the one asked): a secret's temporary file is 0600 while half written, the old content
    still under the name; the new one 0600 after; a file of the default mode (an export,
    a certificate, the hub's port file) 0644 — no test read that default, and 0643 or 0645
    passed; a failure inside the block leaves the old content, no `NAME.tmp`, and the
    process's standard input open (a mutant that closed descriptor 0 on the way out passed
    too)."""
    run = subprocess.run(
        ["sh", "-c", 'umask 0 && exec "$0" "$@"', sys.executable, "-c", _MODES, str(tmp_path)],
        input="still here",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "half 0o600 b'old key'",
        "secret 0o600 b'new'",
        "export 0o644",
        "text 0o644",
        "failed b'new' ['device.key', 'export.json', 'export.txt']",
        "stdin still here",
    ]


_WRITES = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tillpoint.agent.files import create_once, write_whole

    d = Path(sys.argv[1])
    write_whole(d / "out.json", b"new")
    create_once(d / "phone.key", b"k" * 64)
    """
)


def test_a_file_is_fsynced_before_its_rename_or_link_and_the_directory_after(
    tmp_path: Path,
) -> None:
    """What makes a write survive a power cut, read from the system calls of a real
    process (strace): `write_whole` fsyncs `NAME.tmp`, renames it over `NAME`, then fsyncs
    the directory (the rename itself durable); `create_once` fsyncs its own temporary
    file, links it to `NAME`, removes it, then fsyncs the directory. No test saw an fsync:
    each of the four could be dropped and every test passed."""
    if shutil.which("strace") is None:
        pytest.skip("no strace here: the system calls cannot be read")
    run = subprocess.run(
        [
            "strace",
            "-f",
            "-y",
            "-e",
            "trace=fsync,rename,renameat,renameat2,link,linkat,unlink,unlinkat",
            sys.executable,
            "-c",
            _WRITES,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if run.returncode != 0 and "ptrace" in run.stderr:
        pytest.skip(f"strace cannot trace here: {run.stderr[-200:]}")
    assert run.returncode == 0, run.stderr[-2000:]
    folder = str(tmp_path)
    calls = []
    for line in run.stderr.splitlines():
        line = re.sub(r"^\[pid +\d+\] ", "", line)
        if folder not in line or "= -1" in line:
            continue  # another file's, or the removal of a NAME.tmp that was not there
        call = re.sub(r"\d+<", "<", line.split(" = ")[0]).replace(folder, "D")
        calls.append(re.sub(r"phone\.key\.\w+\.tmp", "phone.key.X.tmp", call))
    assert calls == [
        "fsync(<D/out.json.tmp>)",
        'rename("D/out.json.tmp", "D/out.json")',
        "fsync(<D>)",
        "fsync(<D/phone.key.X.tmp>)",
        'link("D/phone.key.X.tmp", "D/phone.key")',
        'unlink("D/phone.key.X.tmp")',
        "fsync(<D>)",
    ], run.stderr[-2000:]


_FULL = textwrap.dedent(
    """
    import errno, os, sys
    from pathlib import Path
    from tillpoint.agent.files import create_once, write_whole

    d = Path(sys.argv[1])
    (d / "export.json").write_bytes(b"the old export")
    try:
        write_whole(d / "export.json", b"x" * 1_000_000)  # more than the disk holds
    except OSError as exc:
        print("export", errno.errorcode[exc.errno], (d / "export.json").read_bytes())
    (d / "fill").write_bytes(b"")
    try:  # the rest of the disk filled: a key cannot be written either
        with open(d / "fill", "wb") as fill:
            while True:
                fill.write(b"f" * 4096)
                fill.flush()
    except OSError:
        pass
    try:
        create_once(d / "phone.key", b"k" * 64_000)
    except OSError as exc:
        print("key", errno.errorcode[exc.errno])
    print("left", sorted(p.name for p in d.iterdir()))
    """
)


def on_a_small_disk(directory: Path, size: str, code: str) -> subprocess.CompletedProcess[str]:
    """Python's `code` run with a tmpfs of `size` mounted on `directory` (its argv[1]), in
    a mount namespace of its own, asserted to exit 0; the test is skipped where no such
    namespace or tmpfs can be made."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here: cannot make a small file system")
    script = f'mount -t tmpfs -o size={size} tmpfs "$0" || exit 90\nexec "$1" -c "$2" "$0"'
    for unshare in (["unshare", "--mount"], ["unshare", "--mount", "--map-root-user"]):
        probe = subprocess.run([*unshare, "true"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            break
    else:
        pytest.skip("no mount namespace here (unshare refused): cannot make a small disk")
    run = subprocess.run(
        [*unshare, "sh", "-c", script, str(directory), sys.executable, code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if run.returncode == 90:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def test_a_full_disk_leaves_the_old_file_whole_and_no_temporary_file(tmp_path: Path) -> None:
    """A real full disk: a tmpfs of 256 KiB, mounted in a mount namespace of this test's
    own (skipped where none can be made). `write_whole` of 1,000,000 bytes over an export
    fails with ENOSPC, the old export whole under its name and no `export.json.tmp` left;
    the disk filled, `create_once` of a phone key fails with ENOSPC and leaves neither the
    key nor its temporary file (the next start would find a key cut short, or a copy of
    the key lying about)."""
    full = tmp_path / "full"
    full.mkdir()
    run = on_a_small_disk(full, "256k", _FULL)
    assert run.stdout.splitlines() == [
        "export ENOSPC b'the old export'",
        "key ENOSPC",
        "left ['export.json', 'fill']",
    ]


def test_a_key_renamed_in_without_hard_links_is_said_made_and_its_directory_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`create_once` on a file system without hard links (vfat; simulated at `os.link`
    alone, as review 32's tests do: this kernel has no vfat and no FUSE file system
    without links can be mounted here) renames its file in under the directory's lock and
    says True, made — then False for a second maker, whose content does not stand. A
    mutant that said False for the first (and skipped the directory's fsync) passed: the
    phone key's maker reads the file back either way."""
    from tillpoint.agent.files import create_once

    from .test_review32_left32a import _no_hard_links

    tried = _no_hard_links(monkeypatch)
    key = tmp_path / "phone.key"
    assert create_once(key, b"first") is True
    assert create_once(key, b"second") is False
    assert tried == [str(key), str(key)]
    assert key.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == [
        "phone.key"
    ]


def test_stale_temporary_files_are_all_removed_past_those_a_writer_or_a_link_holds(
    tmp_path: Path,
) -> None:
    """`remove_stale_temps` goes on past each file it must leave — a young one, one a
    writer has locked, one a process holds open without a lock, a link — to the stale ones
    after it in the directory's order (each `continue` as `break` passed: no test had a
    file to leave before a stale one). A name that is only the prefix and the suffix
    (`phone.key..tmp`, no maker's) is not one of them; a missing folder removes 0 (a -1 or
    1 there passed). The roles are given by the order `os.scandir` reads the folder, which
    is the order the function reads it in."""
    import fcntl
    import time

    from tillpoint.agent.files import remove_stale_temps

    for n in range(20):
        (tmp_path / f"phone.key.f{n:02d}.tmp").write_bytes(b"k" * n)
    for n in range(5):
        (tmp_path / f"phone.key.s{n:02d}.tmp").symlink_to(tmp_path / "nowhere")
    order = [entry.name for entry in os.scandir(tmp_path)]
    files = [name for name in order if ".f" in name]
    young, locked, held, stale = files[0], files[1], files[2], files[3:]
    link = next(name for name in order if ".s" in name)
    assert order.index(link) < order.index(stale[-1])  # a stale file after each of them
    exact = tmp_path / "phone.key..tmp"
    exact.write_bytes(b"")
    then = time.time() - 600
    for name in [locked, held, *stale, exact.name]:
        os.utime(tmp_path / name, (then, then))
    with (tmp_path / locked).open("rb") as lock, (tmp_path / held).open("rb"):
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # its writer at work
        removed: list[tuple[str, int]] = []
        count = remove_stale_temps(tmp_path, "phone.key.", ".tmp", removed_files=removed)
    assert count == len(stale) == 17
    assert sorted(removed) == sorted((name, int(name[11:13])) for name in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [young, locked, held, exact.name] + [n for n in order if ".s" in n]
    )
    assert remove_stale_temps(tmp_path / "missing", "phone.key.", ".tmp") == 0


def test_a_maker_without_hard_links_waits_for_the_directorys_lock_another_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without hard links a maker renames its file in under the directory's lock, waiting
    up to `LOCK_WAIT_S` (10 s) for another maker's (held for one rename). A real second
    process holds that lock for about half a second: the maker waits, then makes the key.
    A deadline taken as 10 s ago (or the wait's test turned) gave up at once: "stayed
    locked by another maker", a fresh till that could not start."""
    from tillpoint.agent.files import create_once

    from .test_review32_left32a import _no_hard_links

    _no_hard_links(monkeypatch)
    holder = subprocess.Popen(
        [sys.executable, "-c", _DIRECTORY_HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert holder.stdin is not None
        holder.stdin.write("let go in half a second\n")
        holder.stdin.flush()
        assert create_once(tmp_path / "phone.key", b"mine") is True
        assert holder.stdout.readline() == "let go\n"  # the key came after the release
    finally:
        holder.kill()
        holder.wait(timeout=20)
    assert (tmp_path / "phone.key").read_bytes() == b"mine"


_DIRECTORY_HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time

    folder = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(folder, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.readline()
    time.sleep(0.5)
    print("let go", flush=True)
    os.close(folder)
    sys.stdin.read()
    """
)


# ------------------------------------------------------------- one agent per data directory

_HOLDER = textwrap.dedent(
    """
    import sys
    from tillpoint.agent.lock import DataDirLock

    lock = DataDirLock(sys.argv[1]).acquire()
    print("held", flush=True)
    sys.stdin.read()  # until the test closes it, or kills this process
    """
)


def test_the_lock_names_its_holder_exactly_over_an_older_longer_pid_and_dies_with_it(
    tmp_path: Path,
) -> None:
    """A real holder process on a data directory whose lock file an earlier agent left
    with a longer pid in it (`4194304`, and a line more). The file is emptied before the
    holder's pid is written: a second agent's refusal names exactly that pid (without the
    truncation it read `pid 1234\n94304…`, a pid no one has), `status`'s holder reads the
    same, the file is the pid and a newline (one the agent makes is 0600: a mutant making it 0644
    passed). Killed
    (SIGKILL: no release), the lock goes with the process: the next agent takes it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "tillpoint.lock").write_text("4194304\nleft by an earlier agent\n")
    holder = subprocess.Popen(
        ["sh", "-c", 'umask 022 && exec "$0" "$@"', sys.executable, "-c", _HOLDER, str(data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        lock_file = data / "tillpoint.lock"
        assert lock_file.read_text() == f"{holder.pid}\n"
        with pytest.raises(Refused) as refused:
            DataDirLock(data).acquire()
        assert str(refused.value) == f"another tillpoint (pid {holder.pid}) is running on {data}"
        assert DataDirLock(data).holder() == str(holder.pid)
        assert not DataDirLock(data).unheld()
    finally:
        holder.kill()
        holder.wait(timeout=20)
    mine = DataDirLock(data).acquire()
    try:
        assert (data / "tillpoint.lock").read_text() == f"{os.getpid()}\n"
        assert DataDirLock(data).holder() == str(os.getpid())
    finally:
        mine.release()
    assert DataDirLock(data).unheld()
    with DataDirLock(tmp_path / "fresh"):  # a lock file it makes is 0600
        assert stat.S_IMODE((tmp_path / "fresh" / "tillpoint.lock").stat().st_mode) == 0o600


def test_a_timed_flock_waits_for_another_process_to_let_go(tmp_path: Path) -> None:
    """`flock_within` (the sync's lock between the service and `sync now`, the cache's
    switch lock) tries until its time is up: a real second process holds the lock and
    lets go after about half a second; a wait of 30 s takes it. A deadline already past
    (or a loop that never ran) said "not taken" at once: `sync now` beside a service
    between two of its rounds said "another sync of this till is running"."""
    from tillpoint.agent.lock import flock_within

    path = tmp_path / "sync.lock"
    path.write_bytes(b"")
    holder = subprocess.Popen(
        [sys.executable, "-c", _FILE_HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    fd = os.open(path, os.O_RDWR)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert flock_within(fd, 0) is False  # one try: held
        assert holder.stdin is not None
        holder.stdin.write("let go in half a second\n")
        holder.stdin.flush()
        assert flock_within(fd, 30.0) is True
        assert holder.stdout.readline() == "let go\n"
    finally:
        os.close(fd)
        holder.kill()
        holder.wait(timeout=20)


_FILE_HOLDER = _DIRECTORY_HOLDER.replace("os.O_RDONLY | os.O_DIRECTORY", "os.O_RDWR")


def test_a_data_directory_the_agent_cannot_use_names_its_owner(tmp_path: Path) -> None:
    """The lock's error names whose the path is and whom the agent runs as, for `chown`
    (`db.owner_hint`). Its only test is skipped as root ("root writes anywhere"), where a
    mutant that dropped the hint (`no_space_hint and owner_hint`) passed. As root: a data
    directory that is a file of user 65534's; as another user: one under `/`, root's."""
    import pwd

    from tillpoint.agent.errors import InputError

    me = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        data = tmp_path / "data"
        data.write_text("")
        os.chown(data, 65534, 65534)
        owner, at = pwd.getpwuid(65534).pw_name, data
    else:
        data = Path("/tillpoint-review55-not-made") / "data"
        owner, at = "root", Path("/")
    with pytest.raises(InputError) as refused:
        DataDirLock(data).acquire()
    said = str(refused.value)
    assert said.startswith(f"cannot use the data directory {data}: "), said
    assert said.endswith(f" ({at} belongs to user {owner}; this runs as {me})"), said


def test_the_lock_holder_is_the_flocks_not_a_posix_locks_on_the_same_file() -> None:
    """/proc/locks lists the POSIX locks (`fcntl`, `lockf`: a backup tool's, say) beside
    the flocks; on the lock file itself only the flock is the agent's. The tests' POSIX
    line was another file's, so a filter that kept lines of another kind when they had
    six fields or more (`and` for `or`) passed; here a POSIX lock on the same file, listed
    first, is not taken for the holder. (The kernel's text as it writes it: its order
    cannot be chosen with real locks.)"""
    from tillpoint.agent.lock import flock_holder

    locks = (
        "1: POSIX  ADVISORY  WRITE 10 fe:00:99 0 EOF\n"
        "2: FLOCK  ADVISORY  WRITE 5151 fe:00:99 0 EOF\n"
        "2: -> FLOCK  ADVISORY  WRITE 6262 fe:00:99 0 EOF\n"
    )
    assert flock_holder(locks, 0xFE, 0, 99) == "5151"
    assert flock_holder(locks.splitlines()[0] + "\n", 0xFE, 0, 99) is None
