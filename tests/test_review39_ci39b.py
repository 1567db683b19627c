"""Review 39 (ci39b): what CI's time cuts rest on.

The test suite's PostgreSQL cluster lives in /dev/shm when there is room (its rmtree on a
loaded disk took 47-69 s at the end of a CI run), never in a small one (a container's
64 MB) nor in one it cannot write.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import pgcluster


def test_the_clusters_memory_dir_is_used_only_with_room_to_spare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgcluster, "MEMORY_DIR", str(tmp_path))
    monkeypatch.setattr(pgcluster, "MEMORY_FREE_MIN", 0)
    assert pgcluster._memory_dir() == str(tmp_path)
    monkeypatch.setattr(pgcluster, "MEMORY_FREE_MIN", 1 << 60)  # more than any disk
    assert pgcluster._memory_dir() is None
    monkeypatch.setattr(pgcluster, "MEMORY_FREE_MIN", 0)
    monkeypatch.setattr(pgcluster, "MEMORY_DIR", str(tmp_path / "absent"))
    assert pgcluster._memory_dir() is None


def test_the_test_suites_cluster_is_in_memory_and_makes_databases_by_copying_files(
    pg_cluster: object,
) -> None:
    """The session's cluster is in /dev/shm when it has room (this machine's has), and a
    new database of it is made with STRATEGY FILE_COPY on PostgreSQL 15+: a few kB of
    WAL, where WAL_LOG, the default, wrote each page of the 7.5 MB template into the WAL
    too (kept there by the cluster's 4 GB max_wal_size)."""
    import psycopg

    cluster: pgcluster.Cluster = pg_cluster  # type: ignore[assignment]
    if pgcluster._memory_dir() is not None:
        assert str(cluster.root).startswith(pgcluster.MEMORY_DIR + "/")
    with psycopg.connect(cluster.url, autocommit=True, connect_timeout=10) as conn:
        wal_at = "SELECT pg_current_wal_insert_lsn()"
        before = conn.execute(wal_at).fetchone()
        url = cluster.new_database("ci39b")
        row = conn.execute(f"SELECT pg_wal_lsn_diff(({wal_at}), %s)", before).fetchone()
        assert row is not None
        if conn.info.server_version >= 150000:
            assert int(row[0]) < 1 << 20, f"{row[0]} bytes of WAL for an empty database"
    with psycopg.connect(url, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
