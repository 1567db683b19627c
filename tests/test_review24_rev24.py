"""rev24: second look at the session's changes (review24)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tillpoint.agent.db import LiveCache, cache_file
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import receipt, snapshot
from .test_cache_generations import forget_the_later_migration, switch_in_a_later_generation


def _switch_in_a_later_generation(data_dir: Path) -> Path:
    return switch_in_a_later_generation(data_dir, "cache-2-0badbeef.db")


def test_a_reader_started_on_the_fallback_tries_the_refused_generation_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader opened while the current generation is refused starts on the agent's
    (the fallback). Once that generation can be read (the file replaced, the release
    upgraded), the reader moves to it as the agent's own connection does, rather than
    pricing from the old generation until the next snapshot switch."""
    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    try:
        agent.load_snapshot(snapshot())
        old = cache_file(data)
        later = _switch_in_a_later_generation(data)
        monkeypatch.setattr(LiveCache, "RETRY_S", 0.0)  # tried again at its next read
        # a reader of its own, opened while `later` is refused: it starts on the fallback
        reader = LiveCache(data, fallback=old)
        try:
            assert reader.path == old
            # the refused generation becomes readable (the later migration gone)
            forget_the_later_migration(later)
            reader.connection()
            assert reader.path == later
        finally:
            reader.close()
        assert agent.quote(receipt_from_json(receipt("after-1"))).total_minor > 0
    finally:
        agent.close()


def test_a_wrong_device_is_refused_when_a_crash_left_the_marker_as_next(
    tmp_path: Path,
) -> None:
    """A first `sync install` killed after its commit point (the journal written, the
    marker still `enrollment.json.next`) is an enrolment (`is_enrolled`); a till command
    run as another device is refused then too, not let through because the marker's
    rename had not happened yet."""
    from tillpoint.sync import SET_JOURNAL, WrongDevice, is_enrolled, pki, require_device

    keys = pki.HubKeys(tmp_path / "hub" / "keys")
    assert pki.init_hub_keys(keys)
    bundle = pki.make_bundle(keys, pki.issue_device(keys, "till-1"), "hub:7443")
    till = tmp_path / "till"
    pki.install_bundle(till, bundle, "till-1")
    root = till / "enrollment"
    # the state a SIGKILL before the marker's rename leaves (tests/test_key_sets.py)
    os.replace(root / "enrollment.json", root / "enrollment.json.next")
    (root / SET_JOURNAL).write_text('["enrollment.json"]')
    assert is_enrolled(till)
    with pytest.raises(WrongDevice):
        require_device(till, "till-2")
    require_device(till, "till-1")
    assert (root / "enrollment.json").is_file() and not (root / SET_JOURNAL).exists()


def test_the_new_files_names_are_on_disk_before_the_journal_that_commits_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut (not a SIGKILL: the kernel's unwritten directory entries are lost too)
    must not keep the journal's rename and lose a `.next` file's: the journal would then
    name a file that is not there, `finish_set` skip it, and the set end mixed (a new
    certificate beside the old key). So the directory is fsynced once every `.next` is
    in it and before the journal is renamed into place."""
    from tillpoint.sync import SET_JOURNAL, pki

    events: list[str] = []
    real_replace, real_fsync_dir = os.replace, pki.fsync_path

    def replace(src: object, dst: object) -> None:
        events.append(f"rename {Path(str(dst)).name}")
        real_replace(src, dst)  # type: ignore[arg-type]

    def fsync_dir(path: Path) -> None:
        events.append("fsync dir")
        real_fsync_dir(path)

    monkeypatch.setattr(pki.os, "replace", replace)
    monkeypatch.setattr(pki, "fsync_path", fsync_dir)
    pki._write_set(tmp_path / "set", [("a.pem", b"a", False), ("a.key", b"k", True)])
    journal = events.index(f"rename {SET_JOURNAL}")
    last_next = max(i for i, e in enumerate(events) if e.endswith(".next"))
    assert "fsync dir" in events[last_next:journal], events
    assert (tmp_path / "set" / "a.key").read_bytes() == b"k"
