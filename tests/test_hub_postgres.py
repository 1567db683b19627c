"""The hub on PostgreSQL: migrations, store selection, several servers over one database
(a real throwaway cluster; skipped only where the server cannot be installed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main
from tillpoint.agent.errors import StorageError
from tillpoint.sync.hub_postgres import MIGRATIONS, SCHEMA_VERSION, PostgresHubStore, migrate
from tillpoint.sync.loopback import sample_master_data


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    doc = json.loads(out) if out.strip() and "--json" in argv else out
    return code, doc, err


def test_migrations_are_numbered_once_and_applied_once(pg_url: str) -> None:
    numbers = [n for n, _, _ in MIGRATIONS]
    assert numbers == list(range(1, len(numbers) + 1))
    assert migrate(pg_url) == numbers
    assert migrate(pg_url) == []  # each step once, whoever runs it again


def test_a_database_behind_the_schema_is_refused_with_the_command_to_run(pg_url: str) -> None:
    with pytest.raises(StorageError, match="run 'tillpoint hub migrate --store URL'"):
        PostgresHubStore(pg_url)
    store = PostgresHubStore(pg_url, migrate_schema=True)
    store.close()


def test_hub_commands_take_the_store_from_the_flag_or_the_environment(
    pg_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    hub = ["--hub-dir", str(tmp_path / "hub")]
    code, doc, _ = run(capsys, "hub", "migrate", "--store", pg_url, *hub, "--json")
    assert code == 0 and doc == {
        "store": "postgresql",
        "applied": [n for n, _, _ in MIGRATIONS],
        "schemaVersion": SCHEMA_VERSION,
    }
    code, doc, _ = run(capsys, "hub", "migrate", "--store", pg_url, *hub, "--json")
    assert code == 0 and doc["applied"] == []
    catalogue = tmp_path / "c.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    code, doc, _ = run(
        capsys, "hub", "import", str(catalogue), "--publish", "--store", pg_url, *hub, "--json"
    )
    assert code == 0 and doc["publishedVersion"] == 1
    assert not (tmp_path / "hub" / "hub.db").exists()  # nothing went to SQLite
    monkeypatch.setenv("TILLPOINT_HUB_STORE", pg_url)
    code, doc, _ = run(capsys, "hub", "balance", "c-1", *hub, "--json")
    assert code == 0 and doc["availablePoints"] == 1200
    code, doc, _ = run(capsys, "hub", "publish", *hub, "--json")
    assert code == 0 and doc["version"] == 2


def test_an_unreachable_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.pgcluster import _free_port

    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/nothing"
    code, _, err = run(capsys, "hub", "migrate", "--store", url, "--hub-dir", str(tmp_path))
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("tillpoint: cannot migrate the hub database")
    assert "Traceback" not in err


def test_publish_counts_everything_committed_before_it_and_nothing_after(pg_url: str) -> None:
    """Two stores (two servers) over one database publish one version each, numbered in
    turn; the second sees the first's publication."""
    a = PostgresHubStore(pg_url, migrate_schema=True)
    b = PostgresHubStore(pg_url)
    try:
        from tillpoint.sync.loopback import import_doc

        import_doc(a, sample_master_data())
        now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
        assert a.publish(now, 3600).version == 1
        assert b.publish(now, 3600).version == 2
        assert a.latest() == b.latest()
    finally:
        a.close()
        b.close()
