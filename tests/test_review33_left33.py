"""Review 33 (left33): small faults left by review 32, each shown first by a test here
(CONTRACT §4, §5, §6, §7, §9, §10). Real parts: the reference hub on SQLite, enrolled tills
over mTLS on 127.0.0.1, their SQLite ledgers, `tillpoint` processes, a TCP printer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.decode import Decoder
from tillpoint.printer.queue import ensure_schema
from tillpoint.printer.virtual import VirtualPrinter
from tillpoint.sync.loopback import LoopbackHub
from tillpoint.sync.loopback import receipt as hub_receipt
from tillpoint.sync.pull import Puller
from tillpoint.sync.push import Pusher

from .conftest import enrolled_till, free_port, snapshot
from .test_printer_queue import add_job, payload, worker
from .test_review32_rev32a import ANNA, drain, expiring_data, ledger_rows, refund_body

# ---------------------------------------------------------------- 1. a refund after its sale


@pytest.fixture
def expiring_hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    hub = LoopbackHub(tmp_path / "hub", data=expiring_data())
    yield hub
    hub.stop()


def test_a_refund_never_reaches_the_hub_before_its_sale_numbered_again_in_an_earlier_push(
    expiring_hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §9, §6, §16. Till W, wiped and enrolled again, sells n-1 from a snapshot
    file (seq 1, redeeming 50 of the 200 points that expire in January) and refunds part
    of it (seq 2, 25 back into that batch); the hub holds seq 1 of W's old disk. The
    first push carries the sale alone (a narrow batch): seq taken, the sale is numbered
    again as seq 3, the refund still unsent under seq 2. The next push (one row, as a
    thin link's is) sent seq 2 first: the hub stored the refund without its sale, and
    the snapshot published then told the till 146 of Anna's points expire in January
    where 175 do. A refund now goes after its sale's transaction."""
    hub = expiring_hub
    data_dir = tmp_path / "w"
    till = enrolled_till(hub, data_dir, "till-w")
    till.agent.checkout(receipt_from_json(hub_receipt("w-1", ANNA)))
    assert drain(till) == 1
    till.stop()
    shutil.rmtree(data_dir)

    hub.enroll("till-w", data_dir)
    agent = Agent(data_dir, "till-w")
    try:
        agent.load_snapshot(hub.store.snapshot_doc(1, 0))
        sold = agent.checkout(receipt_from_json(hub_receipt("n-1", ANNA, redeem=50)))
        returned = agent.refund(refund_from_json(refund_body("n-1-r", "n-1")))
        own = agent.balance(ANNA)
    finally:
        agent.close()
    assert (sold.seq, returned.seq, returned.returned_points) == (1, 2, 25)
    assert own.expiring[0].points == 175

    till = hub.till("till-w", data_dir, start=False)
    pusher = Pusher(till.data_dir, "till-w", till.link, call_timeout_s=5)
    try:
        pusher.know_mark()
        pusher.rows_limit = 1  # the sale alone
        pusher.push_batch()
        journal = ledger_rows(data_dir, "SELECT seq, ref_id FROM journal ORDER BY seq")
        assert journal == [(2, "n-1-r"), (3, "n-1")]  # the sale numbered again
        pusher.batch_size = pusher.rows_limit = 1  # one row a push
        pusher.push_batch()
        assert [e.ref_id for e in hub.store.ledger("till-w")] == ["w-1", "n-1"]  # not the refund
        hub.publish()
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5).pull()
        assert till.agent.balance(ANNA).expiring[0].points == 175  # was 146
        pusher.push_batch()
        assert [(e.seq, e.ref_id) for e in hub.store.ledger("till-w")] == [
            (1, "w-1"),
            (2, "n-1-r"),
            (3, "n-1"),
        ]
        assert hub.store.applied_through("till-w") == 3
    finally:
        pusher.close()
        till.stop()


def test_a_whole_batch_sends_a_refund_after_its_sale_numbered_again(
    expiring_hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §9: in one batch too, the sale numbered again goes first, its refund
    (the lower seq) right after it; the other rows keep their seq order."""
    hub = expiring_hub
    data_dir = tmp_path / "w"
    till = enrolled_till(hub, data_dir, "till-w")
    till.agent.checkout(receipt_from_json(hub_receipt("w-1", ANNA)))
    assert drain(till) == 1
    till.stop()
    shutil.rmtree(data_dir)

    hub.enroll("till-w", data_dir)
    agent = Agent(data_dir, "till-w")
    try:
        agent.load_snapshot(hub.store.snapshot_doc(1, 0))
        agent.checkout(receipt_from_json(hub_receipt("n-1", ANNA, redeem=50)))
        agent.refund(refund_from_json(refund_body("n-1-r", "n-1")))
        agent.checkout(receipt_from_json(hub_receipt("n-2", ANNA)))
    finally:
        agent.close()

    till = hub.till("till-w", data_dir, start=False)
    pusher = Pusher(till.data_dir, "till-w", till.link, call_timeout_s=5)
    try:
        pusher.know_mark()
        pusher.rows_limit = 1
        pusher.push_batch()  # n-1 numbered again as 4
        pusher.rows_limit = 2
        assert [seq for seq, _ in pusher._batch()] == [3]  # the refund waits for its sale
        pusher.rows_limit = 200
        assert [seq for seq, _ in pusher._batch()] == [3, 4, 2]
        assert pusher.drain() == 3
        assert [(e.seq, e.ref_id) for e in hub.store.ledger("till-w")] == [
            (1, "w-1"),
            (2, "n-1-r"),
            (3, "n-2"),
            (4, "n-1"),
        ]
    finally:
        pusher.close()
        till.stop()


# ---------------------------------------------------------------- 5. invisible format characters

# Unicode's format characters (category Cf) that show nothing (Default_Ignorable_Code_Point):
# what a number copied from a phone's contacts, a messenger or a web page carries unseen
# (Android and iOS wrap a phone number in U+202A…U+202C or U+2068…U+2069; U+200E/U+200F
# in a right-to-left text; U+2060 the WORD JOINER a word processor puts for a no-break).
INVISIBLE = [
    "\u00ad", "\u061c", "\u180e", "\u200b", "\u200c", "\u200d", "\u200e", "\u200f",
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2060", "\u2061", "\u2062",
    "\u2063", "\u2064", "\u2066", "\u2067", "\u2068", "\u2069", "\u206a", "\u206f",
    "\ufeff", "\U0001bca0", "\U0001d173", "\U000e0001", "\U000e0041", "\U000e007f",
]  # fmt: skip
# The format characters that show a sign (Arabic and Syriac number and year signs, the
# Kaithi and Egyptian format controls, the interlinear annotation marks): a number with
# one is written with another character, INVALID as §4 says.
VISIBLE_FORMAT = [
    "\u0600",
    "\u0605",
    "\u06dd",
    "\u070f",
    "\u08e2",
    "\ufff9",
    "\ufffb",
    "\U000110bd",
]


def _format_characters() -> list[str]:
    import unicodedata

    return [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"]


def test_the_invisible_format_characters_are_every_default_ignorable_format_character() -> None:
    """CONTRACT §4's decisions: the set dropped is Unicode's format characters (Cf) that
    are default-ignorable (show nothing), written out (a scan of every code point costs
    a CLI call 0.3 s), held here to this Python's Unicode data."""
    from tillpoint.agent.models import INVISIBLE_FORMAT

    cf = set(_format_characters())
    visible = {
        ch
        for ch in cf
        if (
            "\u0600" <= ch <= "\u08ff"  # Arabic, Syriac prepended marks (but U+061C)
            and ch != "\u061c"
        )
        or "\ufff9" <= ch <= "\ufffb"  # interlinear annotation
        or "\U000110bd" <= ch <= "\U000110cd"  # Kaithi number signs
        or "\U00013430" <= ch <= "\U0001345f"  # Egyptian hieroglyph format controls
    }
    assert cf - visible == INVISIBLE_FORMAT
    assert set(INVISIBLE) <= INVISIBLE_FORMAT and not set(VISIBLE_FORMAT) & INVISIBLE_FORMAT


@pytest.mark.parametrize("sign", INVISIBLE, ids=lambda s: f"U+{ord(s):04X}")
def test_an_invisible_format_character_inside_a_card_or_phone_is_dropped(
    agent: Agent, sign: str
) -> None:
    """CONTRACT §4: U+FEFF was dropped as a zero-width space while U+2060 (the WORD JOINER,
    its successor in that role), U+200D, U+200E and the bidi marks a phone's contacts
    wrap a number in made the same number INVALID ("digits only"): a cashier saw a right
    number refused for a sign she could not see. Every invisible format character is
    now dropped, as white space is; coupon codes drop the same set (§13)."""
    from tillpoint.agent.models import coupon_code

    for text in (
        f"{sign}277{sign}0000000017{sign}",
        f"+7{sign}916{sign}1234567",
        "\u202a+7 916 123-45-67\u202c",
        "\u2068+7 916 123-45-67\u2069",
    ):
        found = agent.identify(text)
        assert (found.status, found.customer_id) == ("FOUND", "c-a"), (text, found)
    assert coupon_code(f"ab{sign}c-1") == "ABC1"


@pytest.mark.parametrize("sign", VISIBLE_FORMAT, ids=lambda s: f"U+{ord(s):04X}")
def test_a_format_character_that_shows_a_sign_keeps_a_number_invalid(
    agent: Agent, sign: str
) -> None:
    """CONTRACT §4: "anything with other characters is INVALID": a format character
    that shows (the Arabic number sign, the interlinear annotation marks) is one."""
    for text in (f"{sign}2770000000017", f"+7916{sign}1234567"):
        found = agent.identify(text)
        assert found.status == "INVALID", (text, found)


def test_a_receipt_whose_card_carries_invisible_format_characters_is_priced_for_its_customer(
    agent: Agent,
) -> None:
    """CONTRACT §4, §5: the checkout identifies as identify does; its stored card is the
    card identified, the marks gone (a replay spelling it without them is a retry)."""
    from .conftest import receipt

    wrapped = agent.checkout(receipt_from_json(receipt("r-wj", card="277\u20600000000017\u200e")))
    assert wrapped.to_json()["card"]["status"] == "FOUND"
    again = agent.checkout(receipt_from_json(receipt("r-wj", card="2770000000017")))
    assert again.to_json() == wrapped.to_json()


# ---------------------------------------------------------------- 2. a torn job across a restart


@pytest.mark.parametrize("restart", [False, True], ids=["same-run", "after-restart"])
def test_a_job_after_a_torn_job_that_failed_is_cut_off_from_it_across_a_restart(
    tmp_path: Path, restart: bool
) -> None:
    """CONTRACT §7. A printer drops a five-offer coupon 800 bytes in (its buffer): the job
    FAILED (`max_send_failures` 1), its torn part on the printer with no cut after it.
    The next job must begin with the cut that takes that part off (`separator_bytes`).
    The "torn" mark lived in the worker's memory only: after `run` restarted, the next
    coupon was glued onto the torn part (one piece of paper, the first offers of the
    failed coupon on top of the next customer's). Read as one stream, as the paper is,
    the next coupon is a piece of its own."""
    ledger = tmp_path / "ledger.db"
    conn = sqlite3.connect(ledger, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    ensure_schema(conn)
    conn.close()
    offer = payload()["offers"][0]
    five = [dict(offer, id=f"o-{i}", code=f"TP1-o-{i}") for i in range(1, 6)]
    with VirtualPrinter() as printer:
        add_job(ledger, payload("s1-t1-000123", offers=five))
        printer.close_after_bytes = 800
        w = worker(ledger, printer.port, max_send_failures=1)
        try:
            w.run_once()
            job = w.job("s1-t1-000123")
            assert job is not None and job["state"] == "FAILED", job
            if restart:
                w.close()
                w = worker(ledger, printer.port, max_send_failures=1)
            printer.close_after_bytes = None
            add_job(ledger, payload("s1-t1-000124"))
            w.run_once()
            job = w.job("s1-t1-000124")
            assert job is not None and job["state"] == "DONE", job
        finally:
            w.close()
        paper = Decoder()
        paper.feed(bytes(printer.received))
    pieces = [d for d in paper.documents if d.complete]
    after = [d for d in pieces if "Чек s1-t1-000124" in d.text]
    assert len(after) == 1
    assert after[0].text.count("ВАШИ ПРЕДЛОЖЕНИЯ") == 1, after[0].text  # not glued on
    assert after[0].codes == ["TP1-o-1"]


def test_a_job_after_one_a_crash_left_sending_is_cut_off_from_it(tmp_path: Path) -> None:
    """CONTRACT §7: `run` killed while a coupon was sent (its row left SENDING, failed at
    the next start as "interrupted while printing", not reprinted): the part of it on
    the printer has no cut. The mark is written with the claim, in the same transaction,
    so the next start's first coupon begins with the cut that takes that part off."""
    ledger = tmp_path / "ledger.db"
    conn = sqlite3.connect(ledger, isolation_level=None)
    ensure_schema(conn)
    conn.close()
    with VirtualPrinter() as printer:
        add_job(ledger, payload("s1-t1-000123"))
        w = worker(ledger, printer.port)
        job = w._head()
        assert job is not None and w._claim(job.id, ("TP1-o-1",))  # then the kill
        w._conn.close()
        w = worker(ledger, printer.port)
        try:
            assert w.recover() == 1
            add_job(ledger, payload("s1-t1-000124"))
            before = len(printer.received)
            w.run_once()
            assert w.job("s1-t1-000124")["state"] == "DONE"  # type: ignore[index]
            again = worker(ledger, printer.port)  # settled: no mark left for the next start
            assert again._torn is False
            again.close()
        finally:
            w.close()
        sent = (
            bytes(printer.received[before:])
            .replace(b"\x10\x04\x02", b"")
            .replace(b"\x10\x04\x04", b"")
        )
    assert sent.startswith(b"\x00" * 8), sent[:40]  # the NULs that end a torn command, then the cut


# ---------------------------------------------------------------- 7. confirm_timeout_s above 17 s


def test_run_asks_systemd_for_the_stop_time_a_long_printer_confirmation_needs(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """CONTRACT §10 (a graceful stop) and §7: a stop waits for a coupon the printer is
    confirming (`confirm_timeout_s` + `status_timeout_s` + 5 s, beside the display's 2 s,
    after the in-flight calls' 5 s). The docs said a `confirm_timeout_s` above 17 s needs
    a longer `TimeoutStopSec`: the unit's 30 s ran out and systemd killed the agent
    mid-confirmation (the coupon left SENDING, failed at the next start). Such a value is
    valid: `run` now tells systemd, with STOPPING=1, how long its stop may take
    (`EXTEND_TIMEOUT_USEC`, which never shortens the unit's own)."""
    data = tmp_path / "data"
    Agent(data, "till-1").load_snapshot(snapshot())
    conf = tmp_path / "tillpoint.toml"
    conf.write_text(
        f'device_id = "till-1"\ndata_dir = "{data}"\n'
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
        '[http]\nlisten = "127.0.0.1:0"\n[metrics]\nenabled = false\n'
        f'[printer]\nkind = "network"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        "confirm_timeout_s = 40\nstatus_timeout_s = 0.5\n"
    )
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    env.pop("TILLPOINT_DEVICE_ID", None)
    exe = Path(sys.executable).parent / "tillpoint"
    proc = subprocess.Popen([exe, "--config", conf, "run"], env=env, stderr=subprocess.DEVNULL)
    procs.append(proc)
    try:
        assert notify.recv(200).decode() == "READY=1"
        proc.send_signal(signal.SIGTERM)
        said = notify.recv(200).decode().split("\n")
        assert said[0] == "STOPPING=1"
        extend = dict(line.split("=", 1) for line in said[1:])
        # 5 s of calls, then the display's 2 s and the coupon's 40 + 0.5 + 5 s, and a margin
        assert int(extend["EXTEND_TIMEOUT_USEC"]) >= (5 + 2 + 40 + 0.5 + 5) * 1_000_000
        assert proc.wait(timeout=30) == 0
    finally:
        notify.close()


# ---------------------------------------------------------------- 4. phone.key's temporary files


def test_a_phone_key_temporary_file_a_killed_writer_left_is_removed_at_the_next_start(
    tmp_path: Path,
) -> None:
    """CONTRACT §4's decisions (the phone key), §10. `phone.key` is written whole under a
    name of its own (`phone.key.XXXX.tmp`) and linked; a SIGKILL in between left that file
    for good, a copy of a key that never became the till's (or of one that did, readable
    as a secret beside it). The next start removes those no live process is writing: a
    writer holds a lock on its file while it writes; one just made is left too (its
    maker may not hold the lock yet)."""
    import fcntl
    import tempfile
    import time

    data = tmp_path / "data"
    data.mkdir()
    old = time.time() - 3600

    def temp() -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(prefix="phone.key.", suffix=".tmp", dir=data)
        os.write(fd, b"0" * 64)
        return fd, Path(name)

    killed_fd, killed = temp()
    os.close(killed_fd)
    os.utime(killed, (old, old))
    live_fd, live = temp()
    fcntl.flock(live_fd, fcntl.LOCK_EX)  # a writer at work
    os.utime(live, (old, old))
    fresh_fd, fresh = temp()
    os.close(fresh_fd)
    other = data / "cache.db.tmp"  # not the key's: not this clean-up's business
    other.write_bytes(b"x")
    os.utime(other, (old, old))
    try:
        Agent(data, "till-1").close()
        assert not killed.exists()
        assert live.exists() and fresh.exists() and other.exists()
        assert (data / "phone.key").exists()
    finally:
        os.close(live_fd)
    os.utime(fresh, (old, old))
    Agent(data, "till-1").close()  # an agent opened again (a CLI command) cleans too
    assert not live.exists() and not fresh.exists()
    assert sorted(p.name for p in data.glob("phone.key*")) == ["phone.key"]


# ---------------------------------------------------------------- 3. the replaced cache's -wal


def test_a_reset_between_the_check_and_the_unlink_keeps_its_fresh_caches_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10 (`reset`). `db.remove_replaced_plain_wal` (every open of the cache
    calls it) checked that `cache.db` is the symlink a full apply made and that the
    replaced plain file's `cache.db-wal` is empty, then unlinked it and `-shm`. A `reset`
    in another process in between removes the symlink and makes a fresh plain `cache.db`,
    open in WAL mode with its own `-wal` and `-shm`: those were unlinked from under it
    (the next opener makes new ones beside the live connection's: two WAL indexes of one
    database). Here the reset runs in a thread at that moment, as another process's
    would (the interleaving forced, the files real). The check and the unlink now hold
    the lock the reset takes around its switch, so the reset waits for them."""
    import threading

    from tillpoint.agent import db as db_mod

    data = tmp_path / "data"
    Agent(data, "till-1").load_snapshot(snapshot())
    assert (data / "cache.db").is_symlink()
    other = Agent(data, "till-1")  # the process that resets
    done = threading.Event()
    real_stat = Path.stat
    forced = []

    def stat(self: Path, *args: object, **kw: object) -> os.stat_result:
        try:
            seen: os.stat_result | OSError = real_stat(self, *args, **kw)  # type: ignore[arg-type]
        except FileNotFoundError as exc:  # none (emptied and removed before): as good
            seen = exc
        if self.name == "cache.db-wal" and not forced and threading.current_thread() is main:
            forced.append(1)  # checked: empty or none; now the reset, before the unlink
            threading.Thread(target=lambda: (other.reset(), done.set()), daemon=True).start()
            done.wait(2)  # the reset's whole switch, unless it waits for this check
        if isinstance(seen, OSError):
            raise seen
        return seen

    main = threading.current_thread()
    monkeypatch.setattr(Path, "stat", stat)
    db_mod.remove_replaced_plain_wal(data)
    assert forced and done.wait(30)
    monkeypatch.undo()
    try:
        assert not (data / "cache.db").is_symlink()  # the reset's fresh plain cache
        other.status()  # its live connection reads
        assert (data / "cache.db-wal").exists() and (data / "cache.db-shm").exists()
    finally:
        other.close()


# ---------------------------------------------------------------- 8. `hub import -`'s copy


def _import_from_stdin(hub_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    import time

    before = set(hub_dir.glob(".import-stdin-*"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tillpoint.agent.cli",
            "hub",
            "import",
            "-",
            "--hub-dir",
            str(hub_dir),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdin is not None
    proc.stdin.write(b'{"customer": {"id": "c-1", "balancePoints": 10}}\n')
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while set(hub_dir.glob(".import-stdin-*")) == before and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.02)
    return proc


@pytest.mark.slow
def test_hub_import_killed_leaves_a_copy_the_next_import_and_serve_remove(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """CONTRACT §10 (`hub import -` keeps a copy of standard input in the hub's directory,
    removed afterwards). SIGTERM and SIGHUP remove it since review 28; SIGKILL (the OOM
    killer, `kill -9`, a power cut) left it for good, as large as the chain's export. The
    next `hub import` and `hub serve` remove such copies, but never one a live import
    reads (it holds a lock on it)."""
    import time

    from tillpoint.agent.cli import main

    hub_dir = tmp_path / "hub"
    env = {**os.environ, "TILLPOINT_DATA_DIR": str(tmp_path / "data")}
    killed = _import_from_stdin(hub_dir, env)
    procs.append(killed)
    (left,) = hub_dir.glob(".import-stdin-*")
    killed.kill()
    killed.wait(20)
    assert left.exists()  # SIGKILL: nothing runs on the way out
    live = _import_from_stdin(hub_dir, env)
    procs.append(live)
    (reading,) = set(hub_dir.glob(".import-stdin-*")) - {left}
    old = time.time() - 3600
    for path in (left, reading):
        os.utime(path, (old, old))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"customer": {"id": "c-2", "balancePoints": 5}}\n', encoding="utf-8")
    assert main(["hub", "import", str(rows), "--hub-dir", str(hub_dir)]) == 0
    capsys.readouterr()
    assert not left.exists()
    assert reading.exists()  # a live import's: left alone
    assert live.stdin is not None
    live.stdin.close()
    assert live.wait(60) == 0
    assert list(hub_dir.glob(".import-stdin-*")) == []

    again = _import_from_stdin(hub_dir, env)  # killed again; then the hub is served
    procs.append(again)
    (left,) = hub_dir.glob(".import-stdin-*")
    again.kill()
    again.wait(20)
    os.utime(left, (old, old))
    port_file = tmp_path / "hub.port"
    serve = subprocess.Popen(
        [sys.executable, "-m", "tillpoint.agent.cli", "hub", "serve", "--hub-dir", str(hub_dir),
         "--listen", "127.0.0.1:0", "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )  # fmt: skip
    procs.append(serve)
    deadline = time.monotonic() + 60
    while not port_file.exists() and time.monotonic() < deadline:
        assert serve.poll() is None
        time.sleep(0.05)
    assert port_file.exists()
    assert not left.exists()
    serve.terminate()
    assert serve.wait(30) == 0
