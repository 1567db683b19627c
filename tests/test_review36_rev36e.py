"""Review 36 (rev36e): the hub's delta floor and late grants read again (CONTRACT §3, §9, §11).

1. The first prune after upgrading a hub that kept a year of versions deleted them all in
   one write transaction: on a generated SQLite store of 10,000 versions, 240 tills and
   50,000 customers it held the write lock 5 s (every push, authorisation and release
   waited that long); a year of balance refreshes every 5 minutes is ten times that, past
   the store's 30 s busy timeout, so those calls failed as "database is locked" and the
   tills went OFFLINE. The prune now climbs to its floor a bounded number of versions a
   transaction (`hub_sql.PRUNE_STEP`); each step leaves a store whose floor is a version,
   exactly as a prune to that version would.

Real parts: the hub stores on real SQLite files and on the throwaway PostgreSQL cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tillpoint.sync import hub_sql
from tillpoint.sync.loopback import import_doc, sample_master_data

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TTL_S = 400 * 86400.0


def seven_versions(store: Any) -> None:
    """Versions 1..7, a day apart from NOW, each changing a customer (revisions to prune)."""
    import_doc(store, sample_master_data())
    store.publish(NOW, TTL_S)
    for v in range(2, 8):
        import_doc(store, {"customers": [{"id": "c-9", "firstName": f"Вера {v}"}]})
        store.publish(NOW + (v - 1) * DAY, TTL_S)


def pruned_state(store: Any) -> dict[str, list[tuple[Any, ...]]]:
    """What the prune leaves: revisions, publications, appliedThrough rows, the floor."""
    queries = {
        "revisions": "SELECT kind, key, version, doc FROM revisions ORDER BY kind, key, version",
        "publications": "SELECT version, cut FROM publications ORDER BY version",
        "progress": "SELECT version, device_id, through FROM publication_progress"
        " ORDER BY version, device_id",
        "floor": "SELECT value FROM meta WHERE key = 'delta_floor'",
    }
    with store.read_tx() as tx:
        return {k: [tuple(r) for r in tx.execute(q).fetchall()] for k, q in queries.items()}


def floors_seen(store: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The delta floor at the start of each write transaction of `store` from now on."""
    seen: list[int] = []
    writing = store._writing

    @contextmanager
    def counted() -> Iterator[Any]:
        with writing() as tx:
            row = tx.execute("SELECT value FROM meta WHERE key = 'delta_floor'").fetchone()
            seen.append(0 if row is None else int(row[0]))
            yield tx

    monkeypatch.setattr(store, "_writing", counted)
    return seen


def test_a_prune_of_many_versions_climbs_to_its_floor_a_few_versions_a_transaction(
    hub_store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §3 (review 36's delta floor): the write lock is held for a bounded number
    of versions at a time, and the store ends exactly as one prune to the floor leaves it."""
    stepped, whole = hub_store_factory(), hub_store_factory()
    seven_versions(stepped)
    seven_versions(whole)
    full_7 = stepped.snapshot_doc(7, 0)
    delta_7 = stepped.snapshot_doc(7, 6)
    before = NOW + 6 * DAY  # version 7 is the newest issued by then: the floor
    assert whole.prune_versions(before) == 7

    monkeypatch.setattr(hub_sql, "PRUNE_STEP", 2, raising=False)
    seen = floors_seen(stepped, monkeypatch)
    assert stepped.prune_versions(before) == 7
    assert seen == [0, 2, 4, 6]  # 2 versions a transaction, then the last one
    assert stepped.publication(6) is None
    assert stepped.snapshot_doc(7, 0) == full_7
    with pytest.raises(Exception, match="no delta from version 6"):
        stepped.snapshot_doc(7, 6)
    assert delta_7["version"] == 7
    assert pruned_state(stepped) == pruned_state(whole)
    seen.clear()
    assert stepped.prune_versions(before) == 7  # nothing more to do: one look
    assert seen == [7]
