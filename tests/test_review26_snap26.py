"""Review 26 (snap26): snapshots made by people and scripts, as hostile or sloppy input
(docs/CONTRACT.md §3, §10's `snapshot load`).

Each refused snapshot is answered in one line (exit 2) naming what is wrong, and the
cache is exactly as it was: every row of the cache and the ledger compared before and
after, and a quote answering as before. Real parts: the CLI in-process on a real data
directory, the reference hub's import on its SQLite store.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, receipt, snapshot

V2 = {"version": 2, "issuedAt": "2026-11-24T03:00:00Z"}


def rows(data_dir: Path) -> dict[tuple[str, str], list[str]]:
    """Every row of the cache and the ledger, by table."""
    found: dict[tuple[str, str], list[str]] = {}
    for name in ("cache.db", "ledger.db"):
        conn = sqlite3.connect(data_dir / name)
        try:
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                found[(name, table)] = sorted(map(repr, conn.execute(f"SELECT * FROM {table}")))
        finally:
            conn.close()
    return found


def refused_and_unchanged(cli: CLI, tmp_path: Path, text: str, *words: str) -> str:
    """Load `text` as a snapshot file over the base snapshot: exit 2, one line naming
    `words`, and nothing changed (rows and a quote). The message is returned."""
    assert cli("snapshot", "load", snapshot(), "--json").code == 0
    quoted = cli("quote", receipt(), "--json")
    assert quoted.code == 0
    before = rows(tmp_path / "data")
    bad = tmp_path / "bad.json"
    bad.write_text(text, encoding="utf-8")
    run = cli("snapshot", "load", bad, "--json")
    assert run.code == 2, run
    assert run.out == ""
    message = run.err.strip()
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in run.err
    for word in words:
        assert word in message, message
    assert rows(tmp_path / "data") == before
    assert cli("quote", receipt(), "--json").out == quoted.out
    return message


# ------------------------------------------------- a key given twice in one JSON object


def test_a_section_given_twice_is_refused_not_half_loaded(cli: CLI, tmp_path: Path) -> None:
    """docs/CONTRACT.md §3: a script that wrote `"products"` twice (a second, empty list
    appended) loaded the second one only: every product of the first was silently gone,
    and the milk earned nothing. Refused now, as the hub's import refuses it."""
    text = json.dumps(snapshot(**V2), ensure_ascii=False)[:-1] + ', "products": []}'
    message = refused_and_unchanged(cli, tmp_path, text, "products", "twice")
    assert message.startswith("tillpoint: snapshot: products is given twice in one object")


@pytest.mark.parametrize(
    ("name", "twice"),
    [
        ("version", '"version": 2, "version": 3'),
        ("program", '"program": {}, "program": {"pointValueMinor": 50}'),
        ("removed", '"removed": {}, "removed": {"cards": ["2770000000017"]}'),
        ("appliedThrough", '"appliedThrough": {}, "appliedThrough": {"till-1": 5}'),
    ],
)
def test_a_header_field_given_twice_is_refused(
    cli: CLI, tmp_path: Path, name: str, twice: str
) -> None:
    """docs/CONTRACT.md §3: `"version": 2, "version": 3` loaded version 3; which of two
    programs or two `appliedThrough` maps a till takes is no guess to make silently."""
    doc = snapshot(**V2)
    doc.pop(name, None)
    text = json.dumps(doc, ensure_ascii=False)[:-1] + ", " + twice + "}"
    refused_and_unchanged(cli, tmp_path, text, f"{name} is given twice")


def test_a_list_of_removed_given_twice_is_refused(cli: CLI, tmp_path: Path) -> None:
    """docs/CONTRACT.md §3: `removed.cards` named twice kept the second list only: the
    cards of the first stayed on the till."""
    delta: dict[str, Any] = {"version": 2, "baseVersion": 1, "issuedAt": V2["issuedAt"]}
    text = json.dumps(delta)[:-1] + ', "removed": {"cards": ["2770000000017"], "cards": []}}'
    refused_and_unchanged(cli, tmp_path, text, "cards is given twice")


def test_a_json_lines_header_with_a_field_twice_is_refused(cli: CLI, tmp_path: Path) -> None:
    """docs/CONTRACT.md §3: the JSON Lines form's header line reads the same way."""
    head = '{"format": "tillpoint.snapshot/jsonl", "version": 2, "version": 3, "baseVersion": 0,'
    head += ' "issuedAt": "2026-11-24T03:00:00Z"}'
    lines = [head, '{"section": "products"}', '{"sku": "4601234000017", "name": "Молоко"}']
    message = refused_and_unchanged(
        cli, tmp_path, "\n".join(lines) + "\n", "version is given twice"
    )
    assert "line 1" in message


def test_a_field_of_a_row_given_twice_still_counts_its_last(cli: CLI, tmp_path: Path) -> None:
    """docs/CONTRACT.md §3 (the phone decision): a row's own field given twice is not
    refused (the last one counts), as before; only sections and header fields are."""
    text = json.dumps(snapshot(**V2), ensure_ascii=False).replace(
        '"firstName": "Анна"', '"firstName": "Аня", "firstName": "Анна"'
    )
    assert cli("snapshot", "load", snapshot(), "--json").code == 0
    bad = tmp_path / "twice.json"
    bad.write_text(text, encoding="utf-8")
    assert cli("snapshot", "load", bad, "--json").code == 0
    assert cli("identify", "2770000000017", "--json").json()["firstName"] == "Анна"


# ------------------------------------------------- a coupon that ends before it starts

REVERSED_COUPON = {
    "code": "SORRY-7K2Q9",
    "offerId": "o-77",
    "validFrom": "2026-12-20T00:00:00+03:00",
    "validTo": "2026-11-20T23:59:59+03:00",
}


def test_a_coupon_that_ends_before_it_starts_is_refused(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §3 and §13: validity windows that end before they start are
    refused when the snapshot is loaded; a coupon's was loaded (a code no receipt could
    ever use, the hub's typo unseen) while an offer's was refused. The hub's import
    refuses it as well, naming the row."""
    doc = snapshot(**V2, coupons=[REVERSED_COUPON])
    message = refused_and_unchanged(cli, tmp_path, json.dumps(doc), "coupons[0]", "validTo")
    assert "SORRY7K2Q9" in message
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(tmp_path / "hub"))
    assert cli("hub", "init").code == 0
    run = cli("hub", "import", {"coupons": [REVERSED_COUPON]})
    assert run.code == 2 and "validFrom is after validTo" in run.err, run.err


def test_a_coupon_stored_with_one_still_reads_back(tmp_path: Path) -> None:
    """A rule of input: a coupon an earlier release stored (in the cache) still reads."""
    from pydantic import ValidationError
    from tillpoint.agent.models import STORED, Coupon

    text = json.dumps(REVERSED_COUPON)
    with pytest.raises(ValidationError):
        Coupon.model_validate_json(text)
    assert Coupon.model_validate_json(text, context=STORED).code == "SORRY7K2Q9"


# ------------------------------------------------- a key twice in a JSON Lines snapshot


def test_a_key_twice_in_a_json_lines_snapshot_is_named(cli: CLI, tmp_path: Path) -> None:
    """docs/CONTRACT.md §3: a full JSON Lines snapshot (built by child processes) with a
    card given twice said "two cards rows have the same key" and not which: in a file of
    millions of rows the support engineer had nothing to search for. It names the key."""
    from tests.test_snapshot_stream import to_jsonl

    text = to_jsonl(snapshot(**V2)).rstrip("\n")
    extra = '{"number": "2770000000024", "customerId": "c-a", "status": "ACTIVE"}'
    text += '\n{"section": "cards"}\n' + extra + "\n"
    message = refused_and_unchanged(cli, tmp_path, text, "cards", "'2770000000024'")
    assert "same key" in message


@pytest.mark.slow
def test_a_key_twice_across_build_workers_is_named(tmp_path: Path) -> None:
    """The same when the two rows are read by different build processes (the merge)."""
    from tillpoint.agent.errors import InputError
    from tillpoint.agent.service import Agent

    from tests.test_snapshot_stream import to_jsonl

    doc = snapshot(**V2)
    doc["offers"] = [
        {"id": f"o-{i:03}", "kind": "PERCENT_OFF", "skus": ["4601234000017"], "value": "1"}
        for i in range(40)
    ]
    again = json.dumps(doc["offers"][39])
    text = to_jsonl(doc).rstrip("\n") + '\n{"section": "offers"}\n' + again + "\n"
    path = tmp_path / "dup.jsonl"
    path.write_text(text, encoding="utf-8")
    agent = Agent(tmp_path / "till", "till-1")
    agent.build_workers, agent.build_min_chunk = 2, 256
    try:
        with pytest.raises(InputError, match="same key, 'o-039'"):
            agent.load_snapshot_file(path)
    finally:
        agent.close()


# ------------------------------------------------- pending parts past int64


def test_pending_parts_past_int64_name_the_pending_field(cli: CLI) -> None:
    """docs/CONTRACT.md §3, §10: two `pending` parts that each fit in int64 load (one
    customer does not stop a snapshot), and that customer's receipts are refused in one
    line. The line sent the support engineer to `balancePoints` (1200, nothing wrong
    with it); it names `pending` now."""
    doc = snapshot(**V2)
    part = {"points": 2**63 - 1, "activatesAt": "2026-11-30T00:00:00+03:00"}
    doc["customers"][0]["pending"] = [part, part]
    assert cli("snapshot", "load", doc, "--json").code == 0
    run = cli("quote", receipt(), "--json")
    assert run.code == 2 and len(run.err.strip().splitlines()) == 1
    assert "does not fit in a signed 64-bit integer" in run.err
    hint = run.err.split("64-bit integer", 1)[1]  # what to check
    assert "pending" in hint, run.err
    other = cli("quote", receipt(card="2770000000024"), "--json")
    assert other.code == 0, other.err


# ------------------------------------------------- rows in a JSON Lines header line


def test_rows_in_a_json_lines_header_line_refuse_the_snapshot(cli: CLI, tmp_path: Path) -> None:
    """docs/CONTRACT.md §3: a snapshot written on one line with the JSON Lines `format`
    (a plain snapshot a script stamped with it) was read as a header whose `products`,
    `customers`, ... were fields a newer hub adds: left out with a warning, and the full
    snapshot with no rows replaced the cache (exit 0, every product and customer gone).
    Rows in the header line are refused, naming the section."""
    doc = {"format": "tillpoint.snapshot/jsonl", **snapshot(**V2)}
    message = refused_and_unchanged(
        cli, tmp_path, json.dumps(doc, ensure_ascii=False), "line 1", "categories"
    )
    assert '{"section": "categories"}' in message


# ------------------------------------------------- QUANTITY_PRICE tiers with one minQty


def _quantity_price(*tiers: tuple[str, int]) -> dict[str, Any]:
    return {
        "id": "q-1",
        "kind": "QUANTITY_PRICE",
        "skus": ["4601234000017"],
        "tiers": [{"minQty": q, "unitPriceMinor": p} for q, p in tiers],
    }


def test_quantity_price_tiers_with_one_min_qty_and_two_prices_are_refused(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §15: "the highest tier whose minQty it reaches" is no one tier
    when two have that minQty ("2" and "2.000") at two prices: the discount depended on
    the list's order (a tier code given twice in the program is refused for the same
    reason). Refused with the snapshot and by the hub's import, naming the offer."""
    offer = _quantity_price(("2", 5000), ("2.000", 4000))
    doc = snapshot(**V2, offers=[offer])
    message = refused_and_unchanged(cli, tmp_path, json.dumps(doc), "offers[0]", "minQty 2")
    assert "q-1" in message
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(tmp_path / "hub"))
    assert cli("hub", "init").code == 0
    run = cli("hub", "import", {"offers": [offer]})
    assert run.code == 2 and "minQty 2" in run.err, run.err


def test_quantity_price_tiers_said_twice_at_one_price_still_load(cli: CLI) -> None:
    """The same tier written twice is no ambiguity: it loads and prices as one."""
    doc = snapshot(**V2, offers=[_quantity_price(("2", 5000), ("2", 5000), ("4", 4000))])
    assert cli("snapshot", "load", doc, "--json").code == 0
    line = cli("quote", receipt(), "--json").json()["lines"][0]
    assert (line["offerId"], line["discountMinor"]) == ("q-1", 17980 - 2 * 5000)


def test_an_offer_stored_with_them_still_reads_back() -> None:
    """A rule of input: an offer an earlier release stored keeps pricing (its first tier
    of that minQty, as before)."""
    from pydantic import ValidationError
    from tillpoint.agent.models import STORED, Offer

    text = json.dumps(_quantity_price(("2", 5000), ("2", 4000)))
    with pytest.raises(ValidationError):
        Offer.model_validate_json(text)
    assert len(Offer.model_validate_json(text, context=STORED).tiers) == 2


# ------------------------------------------------- JSON Lines on standard input


def test_a_json_lines_snapshot_on_stdin_loads_as_from_a_file(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §3, §10: `snapshot load` takes the JSON Lines form; given on
    standard input (`zcat snap.jsonl.gz | tillpoint snapshot load -`) it was read as one
    JSON document and refused as "not valid JSON (Extra data at line 2 column 1)". It
    loads as the same file does, and a bad row is named by its line."""
    import io
    import sys

    from tests.test_snapshot_stream import to_jsonl

    assert cli("snapshot", "load", snapshot(), "--json").code == 0
    text = to_jsonl(snapshot(**V2, customers=snapshot()["customers"][:1]))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    run = cli("snapshot", "load", "-", "--json")
    assert run.code == 0 and run.json()["version"] == 2, run.err
    assert cli("identify", "2770000000024", "--json").json()["status"] == "UNKNOWN"
    before = rows(tmp_path / "data")
    bad = text.replace('"balancePoints": 1200', '"balancePoints": "x"').replace(
        '"version": 2', '"version": 3'
    )
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(bad.encode())))
    run = cli("snapshot", "load", "-", "--json")
    assert run.code == 2 and "snapshot line" in run.err and "balancePoints" in run.err, run.err
    assert len(run.err.strip().splitlines()) == 1
    assert rows(tmp_path / "data") == before


# ------------------------------------------------- what Python's JSON reader cannot take

HEADER = '{"format": "tillpoint.snapshot/jsonl", "version": 2, "baseVersion": 0,'
HEADER += ' "issuedAt": "2026-11-24T03:00:00Z"'
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (HEADER + ', "x": ' + DEEP + "}\n", ("line 1", "nested too deeply")),
        (
            '{"format": "tillpoint.snapshot/jsonl", "version": ' + "9" * 5000 + "}\n",
            ("line 1", "too many digits"),
        ),
        (HEADER + '}\n{"section": ' + DEEP + "}\n", ("line 2", "nested too deeply")),
    ],
    ids=["header-nested", "header-digits", "section-line-nested"],
)
def test_json_lines_python_cannot_read_is_bad_input_not_an_internal_error(
    cli: CLI, tmp_path: Path, text: str, words: tuple[str, ...]
) -> None:
    """docs/CONTRACT.md §10: a JSON Lines snapshot whose header or section line nests
    past Python's recursion limit, or holds an integer of more than 4,300 digits, was
    "internal error: RecursionError" / "ValueError: Exceeds the limit" (exit 1) or "the
    cache build failed" (exit 1). It is bad input (exit 2), with its line, as the same
    in a plain snapshot or in a row already was."""
    refused_and_unchanged(cli, tmp_path, text, *words)


# ------------------------------------------------- sections wrapped in another object


def test_sections_wrapped_in_an_unknown_object_refuse_the_snapshot(
    cli: CLI, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §3: an export that put the sections under `"data"` (or any name
    the contract does not define) had that field left out as a newer hub's, with a
    warning, and the full snapshot with no rows replaced the cache (exit 0: every
    product and customer gone). A field of the top level holding a section's name is
    not a newer hub's field: the snapshot is refused, naming both."""
    doc = snapshot(**V2)
    data = {name: doc.pop(name) for name in ("categories", "products", "customers", "cards")}
    doc["data"] = data
    refused_and_unchanged(
        cli, tmp_path, json.dumps(doc, ensure_ascii=False), "data holds categories"
    )


def test_a_section_line_with_a_blank_in_it_is_named_as_one(cli: CLI, tmp_path: Path) -> None:
    """docs/CONTRACT.md §3: `{ "section": "cards" }` (a writer that puts a blank after
    the brace) was "a row before any section line" (it is one) or a row's error. The
    line is refused (the form is `{"section": NAME}`) in words that say what to mend."""
    from tests.test_snapshot_stream import to_jsonl

    text = to_jsonl(snapshot(**V2)).replace('{"section": "cards"}', '{ "section": "cards" }')
    refused_and_unchanged(cli, tmp_path, text, "is written", '{"section": NAME}')
    text = to_jsonl(snapshot(**V2)).replace(
        '{"section": "categories"}', '{ "section": "categories"}'
    )
    refused_and_unchanged(cli, tmp_path, text, "line 2", "is written")
