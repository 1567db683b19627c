"""Full snapshots build a new cache file and switch `cache.db` (a symlink) to it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import cache as cache_mod
from tillpoint.agent.cache import Row
from tillpoint.agent.db import GENERATION, cache_file
from tillpoint.agent.errors import InputError, SnapshotRefused
from tillpoint.agent.models import Snapshot, SnapshotHeader
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import receipt, snapshot


def generations(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if GENERATION.match(p.name))


def target(data_dir: Path) -> str:
    return os.readlink(data_dir / "cache.db")


def test_sqlite_names_wal_and_shm_after_the_symlinks_target(tmp_path: Path) -> None:
    """The switch is safe only because SQLite resolves the symlink before it names the
    -wal and -shm files: two generations never share them."""
    real = tmp_path / "gen-1.db"
    first = sqlite3.connect(real, isolation_level=None)
    first.execute("PRAGMA journal_mode = WAL")
    first.execute("CREATE TABLE t (x)")
    os.symlink(real.name, tmp_path / "cache.db")
    via_link = sqlite3.connect(tmp_path / "cache.db", isolation_level=None)
    via_link.execute("INSERT INTO t VALUES (1)")
    assert via_link.execute("PRAGMA database_list").fetchone()[2] == str(real)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["cache.db", "gen-1.db", "gen-1.db-shm", "gen-1.db-wal"]
    assert first.execute("SELECT count(*) FROM t").fetchone()[0] == 1  # one WAL, shared
    first.close()
    via_link.close()


def test_a_full_snapshot_becomes_a_generation_and_old_ones_go(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    assert not (tmp_path / "cache.db").is_symlink()  # a fresh till: a plain file, as before
    agent.load_snapshot(snapshot())
    first = target(tmp_path)
    assert (tmp_path / "cache.db").is_symlink() and first.startswith("cache-1-")
    assert generations(tmp_path) == [first]
    assert agent.identify("2770000000017").status == "FOUND"

    agent.load_snapshot(snapshot(version=2))
    second = target(tmp_path)
    assert generations(tmp_path) == sorted([first, second])  # the one before is kept
    assert not (tmp_path / "cache.db-wal").exists()  # the plain file's leftovers are gone

    agent.load_snapshot(snapshot(version=3))
    assert generations(tmp_path) == sorted([second, target(tmp_path)])
    assert agent.status().cache_version == 3
    assert not [p for p in tmp_path.iterdir() if ".building" in p.name or p.name.endswith(".link")]
    agent.close()


def test_an_older_plain_cache_is_read_until_the_first_full_apply(tmp_path: Path) -> None:
    # An install from before generations: cache.db is a plain file with the snapshot.
    built = Agent(tmp_path / "built", "till-1")
    built.load_snapshot(snapshot())
    built.close()
    shutil.copyfile(cache_file(tmp_path / "built"), tmp_path / "cache.db")
    shutil.copyfile(tmp_path / "built" / "phone.key", tmp_path / "phone.key")
    agent = Agent(tmp_path, "till-1")
    assert agent.status().cache_version == 1
    assert agent.identify("2770000000024").status == "FOUND"
    agent.load_snapshot({"version": 2, "baseVersion": 1, "removed": {"cards": ["2770000000024"]}})
    assert not (tmp_path / "cache.db").is_symlink()  # a delta patches the plain file
    agent.load_snapshot(snapshot(version=3))
    assert (tmp_path / "cache.db").is_symlink()
    assert agent.identify("2770000000024").status == "FOUND"
    agent.close()


def test_a_delta_applies_in_the_current_generation(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    before = target(tmp_path)
    agent.load_snapshot({"version": 2, "baseVersion": 1, "removed": {"cards": ["2770000000024"]}})
    assert target(tmp_path) == before and generations(tmp_path) == [before]
    assert agent.identify("2770000000024").to_json() == {"status": "UNKNOWN"}
    agent.close()


def test_a_bad_row_discards_the_build_and_keeps_the_cache(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    before, link = cache_mod.dump(agent._cache), target(tmp_path)
    bad = snapshot(version=2)
    bad["cards"].append(dict(bad["cards"][0]))  # the same card twice: the key catches it
    header = Snapshot.model_validate(snapshot(version=2)).header
    rows = cache_mod.rows_of(Snapshot.model_validate(snapshot(version=2)))
    dup = (
        r for pair in ((row, row) if row[0] == "cards" else (row,) for row in rows) for r in pair
    )
    with pytest.raises(InputError, match="same key"):
        agent._apply(header, dup)

    def failing() -> Iterator[Row]:
        yield from cache_mod.rows_of(Snapshot.model_validate(snapshot(version=2)))
        raise InputError("snapshot line 99: broken")

    with pytest.raises(InputError, match="line 99"):
        agent._apply(header, failing())
    with pytest.raises(SnapshotRefused):
        agent.load_snapshot(snapshot(version=1, issuedAt="2026-11-23T07:00:00Z"))
    assert target(tmp_path) == link and generations(tmp_path) == [link]
    assert cache_mod.dump(agent._cache) == before
    assert [p.name for p in tmp_path.iterdir() if "building" in p.name] == []
    agent.close()


def test_a_crashed_build_is_deleted_by_the_next_apply(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    left = tmp_path / "cache-2-0badc0de.db.building"
    left.write_bytes(b"half a database")
    (tmp_path / ".cache.db.0badc0de.link").symlink_to("cache-2-0badc0de.db")
    assert agent.status().cache_version == 1  # the old cache stays in use
    agent.load_snapshot(snapshot(version=2))
    assert not left.exists() and not (tmp_path / ".cache.db.0badc0de.link").is_symlink()
    assert agent.status().cache_version == 2
    agent.close()


def test_a_reader_moves_to_a_generation_switched_in_by_another_process(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    assert agent.checkout(receipt_from_json(receipt("r1"))).card.status == "FOUND"
    old = agent._cache
    pinned = sqlite3.connect(tmp_path / "cache.db")  # a reader that never looks again
    pinned.execute("BEGIN")
    assert pinned.execute("SELECT count(*) FROM cards").fetchone()[0] == 3
    doc = tmp_path / "snap.json"
    doc.write_text(json.dumps(snapshot(version=2, cards=[]), ensure_ascii=False))
    env = dict(os.environ, TILLPOINT_DEVICE_ID="till-1")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tillpoint.agent.cli",
            "--data-dir",
            tmp_path,
            "snapshot",
            "load",
            doc,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert pinned.execute("SELECT count(*) FROM cards").fetchone()[0] == 3  # its old file
    pinned.execute("COMMIT")
    assert agent.identify("2770000000017").to_json() == {"status": "UNKNOWN"}  # the next read moved
    assert agent.status().cache_version == 2  # the writer's connection moved too
    assert agent._cache is not old
    pinned.close()
    agent.close()


def test_an_apply_waiting_for_the_lock_follows_the_switch(tmp_path: Path) -> None:
    """A delta that waited while a full snapshot was built lands in the new generation."""
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    building, release = threading.Event(), threading.Event()

    def slow_rows() -> Iterator[Row]:
        building.set()
        release.wait(10)
        yield from cache_mod.rows_of(Snapshot.model_validate(snapshot(version=2)))

    full = threading.Thread(
        target=agent._apply,
        args=(Snapshot.model_validate(snapshot(version=2)).header, slow_rows()),
    )
    full.start()
    building.wait(10)
    delta_header = SnapshotHeader.model_validate(
        {"version": 3, "baseVersion": 2, "removed": {"cards": ["2770000000024"]}}
    )
    outcome: list[Any] = []
    delta = threading.Thread(
        target=lambda: outcome.append(agent._apply(delta_header, iter(()))),
    )
    delta.start()
    threading.Timer(0.3, release.set).start()
    full.join(20)
    delta.join(20)
    assert outcome and outcome[0].version == 3
    assert agent.status().cache_version == 3
    assert agent.identify("2770000000024").to_json() == {"status": "UNKNOWN"}
    agent.close()


def test_reset_removes_every_generation(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    agent.load_snapshot(snapshot(version=2))
    agent.reset()
    assert generations(tmp_path) == []
    assert not (tmp_path / "cache.db").is_symlink()
    assert agent.status().cache_version == 0
    agent.load_snapshot(snapshot())
    assert agent.identify("2770000000017").status == "FOUND"
    agent.close()


def test_no_cache_file_ever_holds_a_phone(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    delta = {
        "version": 2,
        "baseVersion": 1,
        "customers": [{"id": "c-d", "firstName": "Глеб", "phone": "+79267770011"}],
    }
    agent.load_snapshot(delta)
    agent.load_snapshot(snapshot(version=3))
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("cache*") if p.is_file())
    for digits in (b"9161234567", b"9035550001", b"9267770011", b"916123"):
        assert digits not in raw
    assert agent.identify("89161234567").status == "FOUND"
    agent.close()


def test_a_customer_without_a_phone_is_stored_as_it_came(tmp_path: Path) -> None:
    text = (
        '{"format": "tillpoint.snapshot/jsonl", "version": 1}\n{"section": "customers"}\n'
        '{"id":"c-1","firstName":"Анна","balancePoints":"12"}\n'
        '{"id":"c-2","firstName":"Борис","phone":"+79161234567"}\n'
        '{"id":"c-3","firstName":"Вера","phone":null}\n'
        '{"id":"c-4","firstName":"Глеб","ph\\u006fne":"+79035550001"}\n'
    )
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot_lines(text.splitlines())
    docs = dict(sqlite3.connect(cache_file(tmp_path)).execute("SELECT id, doc FROM customers"))
    assert docs["c-1"] == '{"id":"c-1","firstName":"Анна","balancePoints":"12"}'
    assert all("phone" not in docs[c] and "u006f" not in docs[c] for c in ("c-2", "c-3", "c-4"))
    assert "+7903555" not in docs["c-4"]
    found = cache_mod.CacheView(agent._cache, agent._secret).customer_by_phone("+79035550001")
    assert found is not None and found.id == "c-4" and found.phone is None
    agent.close()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 11, 23, tzinfo=UTC)


def test_phone_index_is_hmac_sha256() -> None:
    import hashlib
    import hmac

    for key in (b"", b"k" * 32, bytes(range(64)), b"x" * 100):
        for phone in ("+79161234567", "+70000000000"):
            expected = hmac.new(key, phone.encode(), hashlib.sha256).hexdigest()
            assert cache_mod.phone_index(phone, key) == expected


def test_a_reader_on_a_deleted_generation_keeps_its_file_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    first = target(tmp_path)
    pinned = sqlite3.connect(tmp_path / "cache.db", isolation_level=None)
    assert pinned.execute("SELECT count(*) FROM cards").fetchone()[0] == 3
    agent.load_snapshot(snapshot(version=2, cards=[]))
    agent.load_snapshot(snapshot(version=3, cards=[]))
    assert first not in generations(tmp_path)  # unlinked while `pinned` holds it
    pinned.execute("BEGIN")
    assert pinned.execute("SELECT count(*) FROM cards").fetchone()[0] == 3
    assert pinned.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0] == "1"
    pinned.execute("COMMIT")
    pinned.close()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(first)]
    current = sqlite3.connect(tmp_path / "cache.db")
    assert current.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert current.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    current.close()
    assert agent.status().cache_version == 3
    agent.close()


def switch_in_a_later_generation(data_dir: Path, name: str) -> Path:
    """A copy of the current generation, named `name`, marked with a migration this
    release does not know (a later release's `snapshot load`), switched in as cache.db."""
    current = cache_file(data_dir)
    later = current.with_name(name)
    shutil.copy(current, later)
    conn = sqlite3.connect(later)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " SELECT migration_set, 'm099_from_a_later_release', '2027-01-01'"
        " FROM _sqlite_migrations LIMIT 1"
    )
    conn.commit()
    conn.close()
    os.symlink(later.name, data_dir / "next.link")
    os.replace(data_dir / "next.link", data_dir / "cache.db")
    return later


def forget_the_later_migration(later: Path) -> None:
    """Make a generation `switch_in_a_later_generation` marked readable again (the file
    replaced, the release upgraded): its unknown migration gone."""
    conn = sqlite3.connect(later)
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm099_from_a_later_release'")
    conn.commit()
    conn.close()


def test_a_generation_a_later_release_wrote_is_tried_again_only_after_a_while(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """During an upgrade in place, the new release's `snapshot load` can switch in a
    generation the running (older) agent cannot read. The agent keeps pricing from the
    generation it has and says why once, instead of opening the new file again (and
    logging a warning) on every call of a till's day."""
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snapshot())
        switch_in_a_later_generation(tmp_path / "data", "cache-2-0badcafe.db")
        with caplog.at_level("WARNING", logger="tillpoint"):
            for i in range(50):
                assert agent.quote(receipt_from_json(receipt(f"later-{i}"))).total_minor > 0
        warned = [r.getMessage() for r in caplog.records if "generation" in r.getMessage()]
        assert len(warned) == 1, warned
        assert "m099_from_a_later_release" in warned[0]
        assert agent.status().cache_version == 1
    finally:
        agent.close()


def test_a_plain_cache_switched_while_it_is_being_opened_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh till's empty plain ``cache.db`` (or an older install's) opened by name just as
    the first full apply switched it to a generation and removed its -wal and -shm: SQLite
    says "unable to open database file" (CI saw it from `cache_version` while a till
    enrolled). The cache is fine, so the open resolves the link again. The switch is made
    to land inside the open here; `test_opening_the_cache_races_its_first_switch` is the
    real race."""
    from tillpoint.agent import db

    agent = Agent(tmp_path, "till-1")
    agent.close()
    assert not (tmp_path / "cache.db").is_symlink()
    gen = tmp_path / "cache-1-0123abcd.db"
    conn = db.connect(gen)
    db.migrate(conn, db.cache_migrations)
    conn.close()
    real_connect = db.connect
    calls: list[Path] = []

    def switched_inside(path: Path, **kwargs: Any) -> sqlite3.Connection:
        calls.append(path)
        if len(calls) == 1:
            db.switch_cache(tmp_path, gen)
            db.remove_old_generations(tmp_path, {gen})
            raise db.StorageError(f"cannot open {path}: unable to open database file")
        return real_connect(path, **kwargs)

    monkeypatch.setattr(db, "connect", switched_inside)
    conn = db.open_cache(tmp_path)
    conn.close()
    assert [p.name for p in calls] == ["cache.db", gen.name]


def test_a_plain_cache_that_cannot_be_opened_still_says_why(tmp_path: Path) -> None:
    """Resolving again is for a switch only: a cache.db that is a directory (nothing
    switched) fails at once with SQLite's words, not "it keeps being replaced"."""
    from tillpoint.agent import db

    (tmp_path / "cache.db").mkdir()
    with pytest.raises(db.StorageError, match="unable to open database file"):
        db.open_cache(tmp_path)


@pytest.mark.slow
def test_opening_the_cache_races_its_first_switch(tmp_path: Path) -> None:
    """Readers open the cache in a loop while a plain ``cache.db`` is switched to a
    generation (before the fix, 20 in 600 rounds failed; ~6 s for 200 here)."""
    from tillpoint.agent import db

    failures: list[str] = []
    for i in range(200):
        data_dir = tmp_path / str(i)
        db.open_cache(data_dir).close()
        gen = data_dir / "cache-1-0123abcd.db"
        conn = db.connect(gen)
        db.migrate(conn, db.cache_migrations)
        conn.close()
        stop = threading.Event()

        def read(where: Path = data_dir, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                try:
                    db.open_cache(where).close()
                except db.StorageError as exc:
                    failures.append(exc.message)
                    return

        readers = [threading.Thread(target=read) for _ in range(3)]
        for t in readers:
            t.start()
        db.switch_cache(data_dir, gen)
        db.remove_old_generations(data_dir, {gen})
        stop.set()
        for t in readers:
            t.join()
    assert failures == []
