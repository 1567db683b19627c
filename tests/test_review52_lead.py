"""Review 52 (lead): survivors the mutation reviews left. The two defaults of §7 that
review 52's sample of `agent/models.py` left unpinned (mut52a's "Left"):
`offerPrintCooldownDays` absent is 7, an offer's `rank` absent is 0 (every print test sets
both, so a changed default passed them all); and a signed header's `version` that is not a
whole number (mut51b's "Left")."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.signing import SnapshotRefused, check_header

from .conftest import PROGRAM, receipt, snapshot

MILK = "4601234000017"


def _offer(offer_id: str, **changes: Any) -> dict[str, Any]:
    offer: dict[str, Any] = {
        "id": offer_id,
        "campaignId": "camp-" + offer_id,
        "customerId": "c-a",
        "kind": "PERCENT_OFF",
        "skus": [MILK],
        "value": "5",
        "validFrom": "2026-11-01T00:00:00+03:00",
        "validTo": "2027-03-31T23:59:59+03:00",
        "priority": 10,
        "printable": True,
        "printText": "−5% на молоко",
    }
    offer.update(changes)
    return offer


def _till(tmp_path: Path, offers: list[dict[str, Any]], **program: Any) -> Agent:
    changed = copy.deepcopy(PROGRAM)
    changed.pop("offerPrintCooldownDays")
    changed.update(program)
    till = Agent(tmp_path / "data", "till-1")
    till.load_snapshot(snapshot(program=changed, offers=offers))
    return till


def _printed(till: Agent, receipt_id: str, at: str) -> list[str]:
    done = till.checkout(receipt_from_json(receipt(receipt_id, at=at)))
    return list(done.to_json()["printedOffers"])


def test_an_absent_print_cooldown_is_seven_store_days(tmp_path: Path) -> None:
    """§3: absent program fields take the defaults shown (`offerPrintCooldownDays` 7);
    §7: not printed to this customer within it (printed exactly 7 days ago prints again,
    CONTRACT §7's decision). Printed on 23.11 at 10:15: not on 24.11 nor at 10:14 on
    30.11, again at 10:15 on 30.11."""
    till = _till(tmp_path, [_offer("o-p")])
    try:
        assert _printed(till, "r1", "2026-11-23T10:15:00+03:00") == ["o-p"]
        assert _printed(till, "r2", "2026-11-24T10:15:00+03:00") == []
        assert _printed(till, "r3", "2026-11-30T10:14:00+03:00") == []
        assert _printed(till, "r4", "2026-11-30T10:15:00+03:00") == ["o-p"]
    finally:
        till.close()


def test_an_absent_rank_is_zero_and_prints_before_rank_one(tmp_path: Path) -> None:
    """§7: offers are printed ordered by `rank` then `id`; a `rank` left out is proto3's
    0. With one offer printed (`maxOffersPrinted` 1), "o-b" without a rank goes before
    "o-a" of rank 1 (by id alone "o-a" would go first), and "o-c" of rank -1 (an int32)
    before both."""
    two = [_offer("o-a", rank=1), _offer("o-b")]
    till = _till(tmp_path / "two", two, maxOffersPrinted=1)
    try:
        assert _printed(till, "r1", "2026-11-23T10:15:00+03:00") == ["o-b"]
    finally:
        till.close()
    three = [*two, _offer("o-c", rank=-1)]
    till = _till(tmp_path / "three", three, maxOffersPrinted=5)
    try:
        assert _printed(till, "r1", "2026-11-23T10:15:00+03:00") == ["o-c", "o-b", "o-a"]
    finally:
        till.close()


def test_a_signed_header_without_a_whole_number_version_is_refused_in_words() -> None:
    """mut51b's survivor left: `check_header` reads a signed payload's `version` as a
    whole number, or says it has none. A `true` was compared as 1 (a "rollback" of a
    version the hub never published), a text raised an internal TypeError."""
    now = datetime(2026, 11, 23, 7, 15, tzinfo=UTC)
    doc: dict[str, Any] = {"expiresAt": "2026-11-30T00:00:00Z"}
    for bad in (True, False, "x", "", None, 8.5, [8]):
        with pytest.raises(SnapshotRefused, match=r"^snapshot refused: it has no version$"):
            check_header({**doc, "version": bad}, 7, now, None)
    check_header({**doc, "version": "8"}, 7, now, 8)  # the text of a whole number reads
    with pytest.raises(
        SnapshotRefused, match=r"version 7 is not newer than the cache's 7 \(rollback\)$"
    ):
        check_header({**doc, "version": 7}, 7, now, None)
