"""A snapshot field or section the contract does not define is left out, not refused
(docs/CONTRACT.md §3): a newer hub's field or a CRM export's surname must not stop a till
loading its data. It is never stored, and it is named in a warning. Receipts and refunds
still refuse unknown fields (§10), and so does the hub's import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import InputError
from tillpoint.agent.service import Agent

from .conftest import CLI

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SURNAME = "Ивановаъ"  # in no example: found in a file only if it was stored


def snapshot() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXAMPLES / "snapshot.json").read_text(encoding="utf-8"))
    return doc


def receipt() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXAMPLES / "receipt-card.json").read_text(encoding="utf-8"))
    return doc


def with_unknown_fields() -> dict[str, Any]:
    doc = snapshot()
    for customer in doc["customers"]:
        customer["lastName"] = SURNAME
    doc["products"][0]["vatRate"] = "20"
    doc["program"]["loyaltyName"] = "Клуб"
    doc["stores"] = [{"id": "s1", "city": "Тверь"}]
    return doc


def stored_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.iterdir()) if p.is_file())


def test_unknown_snapshot_fields_are_left_out_named_and_never_stored(
    cli: CLI, tmp_path: Path
) -> None:
    plain = cli("snapshot", "load", snapshot(), "--json")
    assert plain.code == 0 and plain.err == ""
    before = cli("checkout", receipt(), "--json").json()

    loaded = cli(
        "--data-dir", tmp_path / "other", "snapshot", "load", with_unknown_fields(), "--json"
    )
    assert loaded.code == 0, loaded.err
    assert json.loads(loaded.out) == {"version": 7, "issuedAt": "2026-11-23T06:00:00Z"}
    assert loaded.err.startswith("tillpoint: warning: ") and loaded.err.count("\n") == 1
    for name in (
        "customers[].lastName",
        "products[].vatRate",
        "program.loyaltyName",
        "stores",
    ):
        assert name in loaded.err
    assert SURNAME.encode() not in stored_bytes(tmp_path / "other")

    after = cli("--data-dir", tmp_path / "other", "checkout", receipt(), "--json").json()
    assert after == before  # the same figures, card and display: only the first name
    assert all(SURNAME not in line for line in after["display"])


def test_a_real_problem_beside_an_unknown_field_is_still_refused(cli: CLI) -> None:
    assert cli("snapshot", "load", snapshot(), "--json").code == 0
    doc = with_unknown_fields()
    doc["version"] = 8
    doc["customers"][0]["balancePoints"] = "many"
    refused = cli("snapshot", "load", doc, "--json")
    assert refused.code == 2 and refused.out == ""
    assert "customers[0].balancePoints" in refused.err and "lastName" not in refused.err
    assert cli("status", "--json").json()["cacheVersion"] == 7


def test_json_lines_leave_out_unknown_header_fields_and_sections(tmp_path: Path) -> None:
    doc = with_unknown_fields()
    sections = ("categories", "products", "customers", "cards", "offers")
    head = {k: v for k, v in doc.items() if k not in (*sections, "stores")}
    lines = [json.dumps({"format": "tillpoint.snapshot/jsonl", "shard": 3, **head})]
    for section in (*sections[:2], "stores", *sections[2:]):
        lines.append(json.dumps({"section": section}))
        lines += [json.dumps(row, ensure_ascii=False) for row in doc[section]]
    agent = Agent(tmp_path / "till", "till-1")
    try:
        info = agent.load_snapshot_lines(line + "\n" for line in lines)
        assert info.version == 7
        assert info.ignored == (
            "customers[].lastName",
            "products[].vatRate",
            "program.loyaltyName",
            "section stores",
            "shard",
        )
        assert agent.identify("2770000000017").first_name == "Анна"
    finally:
        agent.close()
    assert SURNAME.encode() not in stored_bytes(tmp_path / "till")


def test_receipts_and_the_hubs_import_still_refuse_unknown_fields(cli: CLI) -> None:
    assert cli("snapshot", "load", snapshot(), "--json").code == 0
    body = receipt() | {"cashier": "Петрова"}
    refused = cli("checkout", body, "--json")
    assert refused.code == 2 and "cashier is not a known field" in refused.err
    imported = cli("hub", "import", with_unknown_fields())
    assert imported.code == 2 and "stores is not a known section" in imported.err


def test_a_near_miss_of_a_known_name_is_a_typo_and_refused(cli: CLI, tmp_path: Path) -> None:
    """A name one letter, a case or a plural's `s` away from one the contract defines is
    a typo (tobacco earning points, a balance of 0, a snapshot with no customers), not a
    newer hub's field: refused as before, naming the field it resembles."""
    assert cli("snapshot", "load", snapshot(), "--json").code == 0
    for edit, said in (
        (
            lambda d: d["products"][0].update(excludedFromLoyality=True),
            "products[0]."
            "excludedFromLoyality is not a known field (did you mean excludedFromLoyalty?)",
        ),
        (lambda d: d["customers"][0].update(balancePoint=5), "did you mean balancePoints?"),
        (lambda d: d.update(customer=d.pop("customers")), "customer is not a known field"),
        (lambda d: d["offers"][0].update(validfrom="2026-11-01T00:00:00+03:00"), "validFrom?"),
    ):
        doc = snapshot()
        doc["version"] = 8
        edit(doc)
        refused = cli("snapshot", "load", doc, "--json")
        assert refused.code == 2 and refused.out == "" and said in refused.err, refused.err
    assert cli("status", "--json").json()["cacheVersion"] == 7
    # a name with a number after a known one is another field, not a typo
    doc = snapshot()
    doc["customers"][0]["phone2"] = "+79160000000"
    loaded = cli("--data-dir", tmp_path / "other", "snapshot", "load", doc, "--json")
    assert loaded.code == 0 and "customers[].phone2" in loaded.err


def test_a_misspelt_json_lines_section_is_refused(tmp_path: Path) -> None:
    doc = snapshot()
    lines = [json.dumps({"format": "tillpoint.snapshot/jsonl", "version": 7})]
    lines.append(json.dumps({"section": "customer"}))
    lines += [json.dumps(row, ensure_ascii=False) for row in doc["customers"]]
    agent = Agent(tmp_path / "till", "till-1")
    try:
        with pytest.raises(InputError, match=r"line 2: section 'customer' .*customers\?"):
            agent.load_snapshot_lines(line + "\n" for line in lines)
    finally:
        agent.close()


def test_a_customer_row_repeating_a_key_is_stored_without_its_first_value(
    tmp_path: Path,
) -> None:
    """A row saying `firstName` twice is read as its last value (as JSON readers do); its
    text, holding both, is not what the till stores: the first value (a surname, here) is
    data pricing does not need (CONTRACT §3, personal data on the till)."""
    doc = snapshot()
    sections = ("categories", "products", "customers", "cards", "offers")
    head = {k: v for k, v in doc.items() if k not in sections}
    lines = [json.dumps({"format": "tillpoint.snapshot/jsonl", **head})]
    for section in sections:
        lines.append(json.dumps({"section": section}))
        for row in doc[section]:
            text = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
            if section == "customers":
                text = text.replace('{"id"', f'{{"firstName":"{SURNAME}","id"', 1)
                text = text.replace(
                    "}",
                    f',"pending":[{{"points":"{SURNAME}x","points":5,'
                    '"activatesAt":"2026-11-01T00:00:00Z"}]}',
                    1,
                )
            lines.append(text)
    assert sum(SURNAME in line for line in lines) == len(doc["customers"])
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot_lines(line + "\n" for line in lines)
        assert agent.identify("2770000000017").first_name == "Анна"
    finally:
        agent.close()
    assert SURNAME.encode() not in stored_bytes(tmp_path / "till")
