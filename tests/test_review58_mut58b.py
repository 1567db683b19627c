"""Review 58 (mut58b): mutation testing of `sync/hub_import.py`, `tillpoint hub import`'s
reading of master data (docs/CONTRACT.md §3, §10; docs/DECISIONS.md, review 58 mut58b).

What the central team's import decides is what every till of the chain prices with: which
rows reach the hub, with which values, and where a refused row is said to be. The tests
here pin the rules the existing tests let a mutant change unseen, with the real parts: the
module's readers on real files, `tillpoint hub import` run in this process on a real hub
directory and SQLite store, and as a real subprocess fed standard input and signals.

The fault found: `hub import -` told JSON Lines from one JSON document by the first 4 KiB
of its first line; a JSON Lines file whose first row was longer (an offer of 300 SKUs) was
read as one document and refused, "not valid JSON (Extra data at line 2 column 1)", with
no hint, though the same file by its name imported.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main
from tillpoint.agent.errors import InputError
from tillpoint.sync import hub_import as hub_import_module
from tillpoint.sync.hub_import import read_file
from tillpoint.sync.hub_rules import canon
from tillpoint.sync.hub_sqlite import SqliteHubStore
from tillpoint.sync.hub_store import SECTIONS, ImportRow, RowProblem

from .test_review28_rev28 import import_stopped_while_copying

TILLPOINT = str(Path(sys.executable).with_name("tillpoint"))
SKUS = [f"460123400{n:04d}" for n in range(400)]  # 6 KiB of SKUs: past the first 4 KiB


def hub_import(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *args: str,
    stdin: bytes | None = None,
) -> tuple[int, Any, str]:
    """`tillpoint hub import ARGS --json` in this process on `tmp_path`'s hub: (exit code,
    the JSON it printed or None, what it said on stderr)."""
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    argv = ["hub", "import", *args, "--hub-dir", str(tmp_path / "hub"), "--json"]
    code = main([*argv, "--data-dir", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def jsonl(*rows: dict[str, Any]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


# ------------------------------------------------------------------ the fault: sniffing


def test_standard_input_whose_first_row_is_past_4_kib_is_read_as_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §10: `hub import -` tells JSON Lines by its first line that is not
    blank, a whole row `{"<kind>": {...}}`. It read that line's first 4 KiB only: an offer
    of 400 SKUs first was no whole row there, the text was read as one JSON document and
    refused, "not valid JSON (Extra data at line 2 column 1)", exit 2, with no hint (that
    hint reads the same 4 KiB), though the same file by its name imported."""
    offer = {"id": "o-1", "kind": "PERCENT_OFF", "value": "10", "skus": SKUS}
    data = jsonl({"offer": offer}, {"customer": {"id": "c-1", "balancePoints": 5}})
    assert len(data.split(b"\n")[0]) > 4096
    code, out, err = hub_import(tmp_path, capsys, monkeypatch, "-", stdin=b"\n" + data)
    assert code == 0, err
    assert out["byKind"] == {"customer": 1, "offer": 1}
    # a one-line JSON document (`jq -c`) as long is still one document
    doc = {"program": {"currency": "RUB"}, "offers": [offer]}
    code, out, err = hub_import(tmp_path, capsys, monkeypatch, "-", stdin=json.dumps(doc).encode())
    assert code == 0, err
    assert out["byKind"] == {"program": 1, "offer": 1}


def test_standard_input_of_a_hubs_snapshot_with_a_long_header_is_read_as_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub's JSON Lines snapshot has its header's keys sorted: `format` after
    `appliedThrough`, which names every till (the till's `snapshot load` had the same
    fault, review 26). With 300 tills the header was refused as one JSON document."""
    header = {
        "appliedThrough": {f"till-{n:04d}": n for n in range(300)},
        "format": "tillpoint.snapshot/jsonl",
        "version": 7,
    }
    data = jsonl(header, {"section": "customers"}, {"id": "c-1", "balancePoints": 12})
    assert data.index(b"tillpoint.snapshot/jsonl") > 4096
    code, out, err = hub_import(tmp_path, capsys, monkeypatch, "-", stdin=data)
    assert code == 0, err
    assert out["byKind"] == {"customer": 1}


def test_a_long_first_row_refused_as_one_document_is_hinted_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hint of a JSON document's refusal (review 42, polish42) reads the whole first
    line too: `rows.txt` with a long first row is told `--format jsonl`."""
    offer = {"id": "o-1", "kind": "PERCENT_OFF", "value": "10", "skus": SKUS}
    path = tmp_path / "rows.txt"
    path.write_bytes(jsonl({"offer": offer}, {"customer": {"id": "c-1"}}))
    code, _, err = hub_import(tmp_path, capsys, monkeypatch, str(path))
    assert code == 2
    assert "Extra data at line 2 column 1" in err
    assert "the text is JSON Lines (one row a line): give --format jsonl" in err


# ------------------------------------------------------- what a line is read as, and where


def read_rows(tmp_path: Path, name: str, data: bytes, **kw: Any) -> list[tuple[str, ...]]:
    """The rows of a real import file `name` holding `data`, as `hub import` reads them:
    (kind, key, canonical text or "-" for a removal, where), or ("problem", where, words)."""
    path = tmp_path / name
    path.write_bytes(data)
    out: list[tuple[str, ...]] = []
    for row in read_file(path, **kw):
        if isinstance(row, RowProblem):
            out.append(("problem", row.where, row.message))
        else:
            text = row.text if row.text is not None else canon(row.doc)
            out.append((row.kind, row.key, "-" if text is None else text, row.where))
    return out


def problems(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [row[1:] for row in rows if row[0] == "problem"]


def test_each_wrong_json_lines_line_is_named_with_its_line_and_words(tmp_path: Path) -> None:
    """docs/CONTRACT.md §10: a bad row is refused with its line and what is wrong; the
    rows around it are read (the import is refused as a whole by the store)."""
    lines = [
        b'{"customer": {"id": "c-1", "balancePoints": 5}}',  # 1: good
        b"",  # 2: blank, skipped
        b'{"customers": [{"id": "c-2"}]}',  # 3: a section's name
        b'{"client": {"id": "c-3"}}',  # 4: no kind
        b'{"customer": {"id": "c-4"}, "card": {"number": "1"}}',  # 5: two kinds
        b"[1, 2]",  # 6: no object
        b'{"customer": [1]}',  # 7: a row that is no object
        b'{"customer": {"id": "c-5", "balancePoints": 1.5}}',  # 8: a fraction
        b'{"customer": {"id": "c-6",}}',  # 9: not JSON
        b'{"section": "customers"}',  # 10: a snapshot's line, no snapshot
        b'{"removed": {"customers": ["c-7"], "tills": ["t"]}}',  # 11: a removal, and a bad one
        b'{"card": {"number": "2770000000017", "customerId": "c-1"}}',  # 12: good
    ]
    rows = read_rows(tmp_path, "rows.jsonl", b"\n".join(lines) + b"\n")
    assert rows[0] == ("customer", "c-1", '{"balancePoints":5,"id":"c-1"}', "line 1")
    assert problems(rows) == [
        ("line 3", 'write one row per line as {"customer": {...}}'),
        ("line 4", "'client' is not a known kind of row"),
        ("line 5", 'expected one object like {"customer": {...}}'),
        ("line 6", "expected a JSON object"),
        ("line 7", "expected a JSON object"),
        (
            "line 8",
            "customer.balancePoints: the number 1.5 has a fraction: write a whole number of points",
        ),
        (
            "line 9",
            "not valid JSON (Expecting property name enclosed in double quotes"
            " at line 9 column 27)",
        ),
        ("line 10", "'section' is not a known kind of row"),
        ("line 11.tills", "is not a known section"),
    ]
    assert ("customer", "c-7", "-", "line 11.customers[0]") in rows
    assert rows[-1] == (
        "card",
        "2770000000017",
        '{"customerId":"c-1","number":"2770000000017"}',
        "line 12",
    )


# --------------------------------------------------------- the values that reach the hub

BIG = 2**63 - 1  # int64's largest: the hub adds a customer's figures up (§3)
LATER = "2027-01-01T00:00:00Z"


def customer(cid: str, balance: int, pending: list[int], expiring: list[int]) -> dict[str, Any]:
    return {
        "id": cid,
        "balancePoints": balance,
        "pending": [{"points": p, "activatesAt": LATER} for p in pending],
        "expiring": [{"points": p, "expiresAt": LATER} for p in expiring],
    }


def snapshot_jsonl(sections: dict[str, list[dict[str, Any]]]) -> bytes:
    """A JSON Lines snapshot (its sections' runs read by the bulk path)."""
    out = [{"format": "tillpoint.snapshot/jsonl", "version": 1}]
    for name, rows in sections.items():
        out += [{"section": name}, *rows]
    return jsonl(*out)


POINTS_CASES = [  # (balance, pending, expiring, refused)
    (BIG, [], [], False),  # the balance alone: the model's check
    (BIG - 10, [10], [], False),  # exactly int64's largest
    (BIG - 10, [11], [], True),  # one past it: pending points alone, no expiring part
    (BIG, [5, -10], [], True),  # the parts may join in any order: +5 first
    (-BIG - 1 + 5, [-6], [], True),  # below the smallest
    (-BIG - 1 + 5, [-5, 3], [], False),
    (0, [], [BIG - 1, 1], False),  # the expiring parts sum to exactly the largest
    (0, [], [BIG, 1], True),  # expiring parts alone, no pending part
]


@pytest.mark.parametrize(("balance", "pending", "expiring", "refused"), POINTS_CASES)
def test_a_customers_points_must_add_up_within_int64_in_either_form(
    balance: int, pending: list[int], expiring: list[int], refused: bool, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §3: `hub import` refuses a customer whose balancePoints and pending
    points, or whose expiring points, add up past int64; at the limit it is taken. The
    same in a JSON Lines snapshot (the bulk path) and in rows of `{"customer": ...}`."""
    row = customer("c-1", balance, pending, expiring)
    for name, data in (
        ("bulk.jsonl", snapshot_jsonl({"customers": [row]})),
        ("rows.jsonl", jsonl({"customer": row})),
    ):
        found = read_rows(tmp_path, name, data)
        assert len(found) == 1, found
        if not refused:
            assert found[0][:2] == ("customer", "c-1") and json.loads(found[0][2]) == {
                k: v for k, v in row.items() if v or k == "balancePoints"
            }
            continue
        which = "the expiring points" if expiring else "balancePoints and the pending points"
        assert found[0][0] == "problem" and found[0][2] == (
            f"customer c-1: {which} add up past a signed 64-bit integer"
        ), found


@pytest.mark.parametrize(
    ("number", "refused"),
    [
        ("2770000000017", None),
        (
            "2770000000018",
            "card number 2770000000018 has a wrong EAN-13 check digit: tills would refuse it",
        ),
        ("277000000001", None),  # 12 digits: no EAN-13 to check
        ("27700000000179", None),  # 14 digits
        ("277000000001a", "card number '277000000001a' must be digits only (as a till reads it)"),
        ("２７７０", "card number '２７７０' must be digits only (as a till reads it)"),
    ],
)
def test_a_card_number_is_checked_as_a_till_reads_it_in_either_form(
    number: str, refused: str | None, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §4: a card the hub would publish and every till refuse is refused
    at the import; a number of other lengths than 13 has no check digit to check."""
    row = {"number": number, "customerId": "c-1"}
    for name, data in (
        ("bulk.jsonl", snapshot_jsonl({"cards": [row]})),
        ("rows.jsonl", jsonl({"card": row})),
    ):
        found = read_rows(tmp_path, name, data)
        if refused is None:
            assert found == [
                (
                    "card",
                    number,
                    json.dumps({"customerId": "c-1", "number": number}, separators=(",", ":")),
                    found[0][3],
                )
            ]
        else:
            assert found == [("problem", found[0][1], refused)], found


def test_the_programs_whole_figures_and_tiers_are_checked_and_kept_as_numbers(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §3: `maxRedeemPercent` and `birthdayMultiplier` are whole numbers,
    stored as JSON numbers; a tier given twice is refused; the program keeps every value,
    its defaults too, under the key "" (one program)."""

    def program(fields: dict[str, Any]) -> list[tuple[str, ...]]:
        return read_rows(tmp_path, "p.json", json.dumps({"program": fields}).encode())

    assert program({"maxRedeemPercent": "12.5"}) == [
        ("problem", "program", "maxRedeemPercent must be a whole number (got 12.5)")
    ]
    assert program({"birthdayMultiplier": "1.5"}) == [
        ("problem", "program", "birthdayMultiplier must be a whole number (got 1.5)")
    ]
    assert program({"birthdayMultiplier": "x"}) == [
        ("problem", "program", 'birthdayMultiplier must be a whole number such as "30"')
    ]
    tiers = [{"code": "g", "accrualPercent": "1"}, {"code": "g", "accrualPercent": "2"}]
    assert program({"tiers": tiers}) == [("problem", "program", "tier 'g' appears twice")]
    ((kind, key, text, where),) = program({"maxRedeemPercent": "20", "birthdayMultiplier": 2})
    assert (kind, key, where) == ("program", "", "program")
    doc = json.loads(text)
    assert doc["maxRedeemPercent"] == 20 and doc["birthdayMultiplier"] == 2
    assert doc["offlineRedeemLimitPoints"] == 500 and doc["currency"] == "RUB"  # defaults kept


def test_removals_are_read_key_by_key_and_a_bad_list_is_named(tmp_path: Path) -> None:
    """docs/CONTRACT.md §3: `removed` holds a list of keys a section; a `null` list removes
    nothing, a coupon's key is its normal form, each problem names its place."""
    removed = {
        "tills": ["t-1"],
        "customers": ["c-1", "c-2"],
        "cards": None,
        "coupons": ["ab-12 cd", "--"],
        "offers": "o-1",
        "products": ["4601234000017", ""],
    }
    rows = read_rows(tmp_path, "r.json", json.dumps({"removed": removed}).encode())
    assert rows == [
        ("problem", "removed.tills", "is not a known section"),
        ("customer", "c-1", "-", "removed.customers[0]"),
        ("customer", "c-2", "-", "removed.customers[1]"),
        ("coupon", "AB12CD", "-", "removed.coupons[0]"),
        ("problem", "removed.coupons[1]", "a coupon code needs letters or digits"),
        ("problem", "removed.offers", "expected a list of keys"),
        ("problem", "removed.products", "expected a list of keys"),
    ]
    line = json.dumps({"removed": removed}).encode() + b"\n"
    assert [r[-1] for r in read_rows(tmp_path, "r.jsonl", line)][1:3] == [
        "line 1.customers[0]",
        "line 1.customers[1]",
    ]
    assert read_rows(tmp_path, "r.json", b'{"removed": ["c-1"]}') == [
        ("problem", "removed", "expected an object of key lists")
    ]


def test_a_section_named_twice_in_one_object_is_refused_a_key_twice_in_a_row_is_not(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §3: the reader kept the last of two `customers` lists, and the
    rows of the first were silently not imported; a row's own key given twice is taken
    as JSON readers take it (the last), as is a header field's."""
    for text, section in (
        (b'{"customers": [{"id": "a"}], "customers": [{"id": "b"}]}', "customers"),
        (b'{"program": {}, "program": {}}', "program"),
        (b'{"removed": {"cards": ["1"]}, "removed": {}}', "removed"),
        (b'{"removed": {"cards": ["1"], "cards": ["2"]}}', "cards"),
    ):
        with pytest.raises(InputError) as refused:
            read_rows(tmp_path, "twice.json", text)
        assert str(refused.value) == (
            f"import: {section} is given twice in one object: merge them into one"
        )
    text = b'{"version": 1, "version": 2, "customers": [{"id": "a", "id": "b"}]}'
    assert read_rows(tmp_path, "once.json", text) == [
        ("customer", "b", '{"balancePoints":0,"id":"b"}', "customers[0]")
    ]


# ------------------------------------------------ where each row is said to be, and chunks


def test_every_row_of_a_long_file_is_placed_on_its_own_line_across_chunks(
    tmp_path: Path,
) -> None:
    """An error names the file's line (a million-line export: which one?). Lines are read
    2,000 at a time, a section's run in one call: every row's place is its line, blank
    lines counted, over chunks, sections and a row whose text holds "section"."""
    lines: list[bytes] = [json.dumps({"format": "tillpoint.snapshot/jsonl"}).encode()]
    want: dict[str, int] = {}
    for section, kind, key in (
        ("customers", "customer", "id"),
        ("products", "product", "sku"),
        ("customers", "customer", "id"),
    ):
        lines.append(json.dumps({"section": section}).encode())
        for n in range(1700):
            if n % 401 == 7:
                lines.append(b"   ")
            name = f"{section}-{len(lines) + 1}"
            row: dict[str, Any] = {key: name}
            if kind == "product":
                row.update(name="section", category="section")
            elif n == 999:
                row["id"] = "section"
                name = "section"
            lines.append(json.dumps(row).encode())
            want[name] = len(lines)
    rows = read_rows(tmp_path, "long.jsonl", b"\n".join(lines) + b"\n")
    assert not problems(rows)
    assert {key: int(where.removeprefix("line ")) for _, key, _, where in rows} == want
    assert len(rows) == len(want) + 1  # "section" twice: both rows read


def test_a_bad_row_is_named_by_its_line_past_the_first_chunk(tmp_path: Path) -> None:
    """Both forms: a snapshot's run (refused by the bulk path, then read line by line)
    and `{"<kind>": ...}` rows; the rows before it and after are read."""
    header = json.dumps({"format": "tillpoint.snapshot/jsonl"}).encode()
    body = [json.dumps({"id": f"c-{n}"}).encode() for n in range(4500)]
    body[3000] = b'{"id": "c-bad", "balancePoints": "many"}'  # line 3003
    data = b"\n".join([header, b'{"section": "customers"}', *body]) + b"\n"
    rows = read_rows(tmp_path, "s.jsonl", data)
    assert problems(rows) == [("line 3003", rows[3000][2])]
    assert "balancePoints" in rows[3000][2]
    assert rows[2999][3] == "line 3002" and rows[3001][3] == "line 3004"
    assert rows[-1] == ("customer", "c-4499", '{"balancePoints":0,"id":"c-4499"}', "line 4502")
    plain = [json.dumps({"customer": json.loads(line)}).encode() for line in body]
    rows = read_rows(tmp_path, "r.jsonl", b"\n".join(plain) + b"\n")
    assert [r[1] for r in rows if r[0] == "problem"] == ["line 3001"]
    assert rows[-1][3] == "line 4500" and len(rows) == 4500


# ------------------------------------------------------ PostgreSQL's COPY text, read back

ODD_KEY = "odd\tkey\\with\nbreaks\r"


def unescape_copy(field: bytes) -> str | None:
    """A field of COPY's text format as PostgreSQL reads it (`\\N` is NULL)."""
    if field == b"\\N":
        return None
    out, i = [], 0
    while i < len(field):
        if field[i : i + 1] == b"\\":
            out.append({b"t": b"\t", b"n": b"\n", b"r": b"\r", b"\\": b"\\"}[field[i + 1 : i + 2]])
            i += 2
        else:
            out.append(field[i : i + 1])
            i += 1
    return b"".join(out).decode()


def copy_rows(data: bytes) -> list[tuple[str, str, str | None]]:
    lines = data.split(b"\n")
    assert lines.pop() == b""  # every line ends with its newline
    out = []
    for line in lines:
        kind, key, doc = line.split(b"\t")
        out.append((kind.decode(), unescape_copy(key) or "", unescape_copy(doc)))
    return out


def test_the_copy_blocks_are_the_rows_in_copy_text_with_their_tallies(tmp_path: Path) -> None:
    """PostgreSQL's fast import loads `ImportFile.copy_blocks` as they are: read back as
    PostgreSQL reads COPY text, they are the file's rows, in order, tabs, newlines and
    backslashes in keys and texts intact, a removal's doc NULL, the program apart (the
    last one), and their counts the rows'."""
    customers = [{"id": ODD_KEY, "firstName": 'Анна "\\ tab\t'}, {"id": "c-2", "balancePoints": 7}]
    cards = [{"number": "2770000000017", "customerId": ODD_KEY}]
    header = {
        "format": "tillpoint.snapshot/jsonl",
        "program": {"currency": "EUR"},
        "removed": {"offers": ["gone\\1", "gone\t2"]},
    }
    snap = jsonl(header, {"section": "customers"}, *customers, {"section": "cards"}, *cards)
    plain = jsonl(
        {"program": {"currency": "USD"}},
        *({"customer": c} for c in customers),
        {"removed": {"offers": ["gone\\1"]}},
        {"program": {"currency": "EUR"}},
        *({"card": c} for c in cards),
    )
    document = json.dumps(
        {
            "program": {"currency": "EUR"},
            "customers": customers,
            "cards": cards,
            "removed": {"offers": ["gone\\1", "gone\t2"]},
        }
    ).encode()
    for name, data in (("s.jsonl", snap), ("p.jsonl", plain), ("d.json", document)):
        path = tmp_path / name
        path.write_bytes(data)
        source = read_file(path)
        rows = [r for r in source if isinstance(r, ImportRow)]
        texts = [(r.kind, r.key, r.text if r.text is not None else canon(r.doc)) for r in rows]
        blocks = list(source.copy_blocks())
        assert not any(b.problem for b in blocks)
        data_rows = copy_rows(b"".join(b.data for b in blocks))
        assert data_rows == [t for t in texts if t[0] != "program"], name
        programs = [b.program for b in blocks if b.program is not None]
        assert programs[-1] == ("", [t[2] for t in texts if t[0] == "program"][-1])
        assert json.loads(programs[-1][1] or "")["currency"] == "EUR"
        counts: dict[str, int] = {}
        for b in blocks:
            for kind, count in b.counts.items():
                counts[kind] = counts.get(kind, 0) + count
        want = {"customer": 2, "card": 1, "program": 1 if name != "p.jsonl" else 2}
        assert counts == want, name
        assert sum(b.removed for b in blocks) == (1 if name == "p.jsonl" else 2)
        assert sum(b.rows for b in blocks) == len(rows)


def test_a_block_with_a_bad_row_says_so_and_carries_nothing(tmp_path: Path) -> None:
    """The fast import falls back to reading row by row, which names the problem."""
    for name, data in (
        ("s.jsonl", snapshot_jsonl({"customers": [{"id": "c-1"}, {"id": "c-2", "tier": 5}]})),
        ("p.jsonl", jsonl({"customer": {"id": "c-1"}}, {"customer": {"id": 5}})),
        ("d.json", json.dumps({"customers": [{"id": "c-1"}, {"id": 5}]}).encode()),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        blocks = list(read_file(path).copy_blocks())
        # (a file of rows: its first line is a block of its own)
        assert [b.problem for b in blocks] == [False] * (name == "p.jsonl") + [True], name
        assert (blocks[-1].data, blocks[-1].counts, blocks[-1].program) == (b"", {}, None)


# ---------------------------------------------------------------- the readers and forms


def test_the_progress_goes_up_to_the_files_size_in_either_form(tmp_path: Path) -> None:
    """The progress bar's figures (bytes): a JSON document's at every 1,000 rows, a JSON
    Lines file's after each 2,000 lines, never past the file's size, ending at it."""
    customers = [{"id": f"c-{n}"} for n in range(2500)]
    document = tmp_path / "d.json"
    document.write_bytes(json.dumps({"customers": customers}).encode())
    lines = tmp_path / "r.jsonl"
    lines.write_bytes(jsonl(*({"customer": c} for c in customers)))
    for path in (document, lines):
        seen: list[tuple[int, int]] = []
        total = path.stat().st_size
        assert len(list(read_file(path, progress=lambda d, t, s=seen: s.append((d, t))))) == 2500
        assert {t for _, t in seen} == {total}
        if path is document:
            assert [d for d, _ in seen] == [total * 1000 // 2500, total * 2000 // 2500, total]
        else:
            first = len(path.read_bytes().split(b"\n")[0]) + 1
            chunk = sum(len(x) + 1 for x in path.read_bytes().split(b"\n")[1:2001])
            assert [d for d, _ in seen] == [first + chunk, total, total]


def test_a_file_is_named_and_its_form_told_by_its_name(tmp_path: Path) -> None:
    """docs/CONTRACT.md §10: `.jsonl` and `.ndjson` (any case) are JSON Lines, any other
    name one JSON document; a file that is not there or cannot be read is named; a form
    other than json or jsonl is refused. The rows are read again on each iteration (a
    store may read them twice)."""
    rows = jsonl({"customer": {"id": "c-1"}})
    for name in ("a.JSONL", "b.ndjson", "c.NdJson"):
        assert [r[1] for r in read_rows(tmp_path, name, rows)] == ["c-1"]
    with pytest.raises(InputError, match="not a known section"):
        read_rows(tmp_path, "d.json", rows)
    assert [r[1] for r in read_rows(tmp_path, "e.txt", rows, fmt="jsonl")] == ["c-1"]
    with pytest.raises(InputError) as refused:
        read_file(tmp_path / "e.txt", "csv")
    assert str(refused.value) == "unknown import format 'csv': json or jsonl"
    with pytest.raises(InputError) as refused:
        read_file(tmp_path / "gone.jsonl")
    assert str(refused.value) == f"{tmp_path / 'gone.jsonl'}: no such file"
    with pytest.raises(InputError) as refused:
        read_file(tmp_path)
    assert str(refused.value) == f"{tmp_path}: cannot read it (Is a directory)"
    source = read_file(tmp_path / "b.ndjson")
    assert list(source) == list(source) and len(list(source)) == 1


@pytest.mark.parametrize(
    ("head", "form"),
    [
        (b'{"program": {"currency": "EUR"}}\n', "jsonl"),
        (b'{"removed": {"customers": ["c-8"]}}\n', "jsonl"),
        (b'\xef\xbb\xbf\n  \r\n{"removed": {"customers": ["c-8"]}}\n', "jsonl"),
        (
            b'\xef\xbb\xbf{"format" : "tillpoint.snapshot/jsonl"}\n{"section": "customers"}\n',
            "jsonl",
        ),
        (b'{\n  "program": {"currency": "EUR"}\n}\n', "json"),
        (b'{"program": {"currency": "EUR"}, "customers": []}\n', "json"),
        (b'{"customers": [{"id": "c-9"}]}\n', "json"),
    ],
)
def test_standard_input_is_told_json_lines_by_its_first_line_that_is_not_blank(
    head: bytes,
    form: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/CONTRACT.md §10: a snapshot header, or one whole row `{"<kind>": ...}` (the
    program and `removed` too), is JSON Lines; a document, however laid out, is one. The
    copy of standard input is gone afterwards, the import taken or refused."""
    if form == "jsonl" and b"section" not in head:
        data = head + b'{"customer": {"id": "c-9"}}\n'
    elif form == "jsonl":
        data = head + b'{"id": "c-9"}\n'
    else:
        data = head
    code, out, err = hub_import(tmp_path, capsys, monkeypatch, "-", stdin=data)
    assert code == 0, err
    assert out["rows"] >= 1
    code, _, err = hub_import(tmp_path, capsys, monkeypatch, "-", stdin=data + b"}\n")
    assert code == 2
    if form == "jsonl":
        assert err.startswith("tillpoint: import refused, nothing was imported: line "), err
    else:
        assert err.startswith("tillpoint: import: not valid JSON (Extra data at line"), err
    assert list((tmp_path / "hub").glob(".import-stdin-*")) == []


def test_chunk_lines_set_small_reads_the_file_in_that_many_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`CHUNK_LINES` was a default argument's value, fixed at import: the tests that set
    it small (`test_hub_import_parallel`, `_bulk`, `_fast`: "many chunks, sections inside
    them") read every file in one chunk, and the parallel reader's chunk read again from
    a wrong guess was never run. Seen by the progress, reported after each chunk."""
    monkeypatch.setattr(hub_import_module, "CHUNK_LINES", 3)
    path = tmp_path / "r.jsonl"
    path.write_bytes(jsonl(*({"customer": {"id": f"c-{n}"}} for n in range(11))))
    lines = path.read_bytes().splitlines(keepends=True)
    seen: list[int] = []
    assert len(list(read_file(path, progress=lambda done, _: seen.append(done)))) == 11
    ends = [4, 7, 10, 11, 11]  # the first line, then three at a time; the end again
    assert seen == [sum(map(len, lines[:n])) for n in ends]


# ------------------------------------------------------------ the bulk path is the one taken


@pytest.mark.parametrize(
    "section", ["products", "categories", "customers", "cards", "offers", "coupons"]
)
def test_a_run_of_good_rows_is_read_in_one_call_not_line_by_line(
    section: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk path is `hub import`'s speed (docs/PERFORMANCE.md): a run of a snapshot
    section's good rows, every field's type among them (the module's own probe rows), is
    read in one call, rows and COPY blocks alike, the same rows as line by line. A bulk
    path that gave up on good rows went line by line unseen: the same rows, several times
    slower. (`_line_rows` is watched, not replaced: it reads what it reads.)"""
    kind = SECTIONS[section]
    probes = hub_import_module._PROBES[kind]
    after = "cards" if section == "products" else "products"  # a second section's run
    more = hub_import_module._PROBES[SECTIONS[after]]
    path = tmp_path / "s.jsonl"
    path.write_bytes(snapshot_jsonl({section: probes * 3, after: more}))
    read_one_by_one: list[int] = []
    real = hub_import_module._line_rows

    def watched(number: int, *args: Any) -> Any:
        read_one_by_one.append(number)
        return real(number, *args)

    monkeypatch.setattr(hub_import_module, "_line_rows", watched)
    rows = read_rows(tmp_path, "s.jsonl", path.read_bytes())
    blocks = list(read_file(path).copy_blocks())
    sections = [1, 2, 3 + 3 * len(probes)]  # the header and the sections' lines
    assert read_one_by_one == sections * 2  # (rows, then blocks)
    assert len(rows) == 3 * len(probes) + len(more) and not problems(rows)
    assert len(blocks) == 1 and blocks[0].rows == len(rows)  # (the header: no rows)
    monkeypatch.setattr(hub_import_module, "BULK", {})
    assert read_rows(tmp_path, "s.jsonl", path.read_bytes()) == rows


# --------------------------------------------- standard input's copy, stops and clean-up


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_import_from_standard_input_exits_as_the_signal_says_and_leaves_no_copy(
    sig: int, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """docs/CONTRACT.md §10: SIGTERM (a job runner's `timeout`) or SIGHUP (the terminal
    closed) while `hub import -` reads ends it as the signal would, 128 + its number (what
    a job runner reads as "stopped by SIGTERM"), with no traceback, its copy of standard
    input removed and nothing imported (review 28 tested SIGTERM's copy alone)."""
    hub = tmp_path / "hub"
    env = {**os.environ, "TILLPOINT_DATA_DIR": str(tmp_path / "data")}
    code, out, err = import_stopped_while_copying([TILLPOINT], hub, env, sig, procs)
    assert code == 128 + sig, err
    assert b"Traceback" not in err and out == b"", err
    assert list(hub.glob(".import-stdin-*")) == []
    with closing(SqliteHubStore(hub / "hub.db")) as store:
        assert store.draft_size() == 0


def test_the_signal_handlers_are_put_back_after_an_import_from_standard_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub import -` handles SIGTERM and SIGHUP while it runs (to remove its copy), then
    puts back the handlers it found (a process that runs the CLI keeps its own)."""

    def mine(signum: int, frame: object) -> None:
        raise AssertionError("not called")

    before = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        code, out, err = hub_import(
            tmp_path, capsys, monkeypatch, "-", stdin=jsonl({"customer": {"id": "c-1"}})
        )
        assert code == 0 and out["byKind"] == {"customer": 1}, err
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGHUP) is mine
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


# ------------------------------------------------------------------------------ the words

DEEP = b"[" * 100_000 + b"]" * 100_000
DIGITS = b"9" * 5000


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            b'{"customers": [{"id": "a"}, {"id": "b", "balancePoints": 1.5}]}',
            "customers[1].balancePoints: the number 1.5 has a fraction:"
            " write a whole number of points",
        ),
        (b'{"customers": [' + DEEP + b"]}", "not valid JSON (nested too deeply)"),
        (
            b'{"customers": [{"id": "a", "balancePoints": ' + DIGITS + b"}]}",
            "not valid JSON (a number with too many digits)",
        ),
        (b'{"customers": [{"id": "\xe9"}]}', "not valid JSON (not UTF-8 text)"),
        (
            b'{"customers": [{"id": "a"}]',
            "not valid JSON (Expecting ',' delimiter at line 1 column 28)",
        ),
        (b'{"customers": [], "tills": []}', "tills is not a known section"),
        (
            b'{"format": "tillpoint-signed-snapshot/1"}',
            "the file is a signed snapshot (what 'hub export' writes for 'snapshot load'),"
            " not master data",
        ),
        (
            b'{"format": "tillpoint-enrollment/1"}',
            "the file is an enrolment bundle (a till's secret: keep it for 'sync install'),"
            " not master data",
        ),
        (b"  [1]", "not an import file: it does not start with a JSON object's {"),
    ],
)
def test_a_json_document_refused_is_said_in_one_line(
    text: bytes, said: str, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §10: what is wrong with a JSON document, in the agent's words,
    the field of a fraction named; nothing read from it."""
    with pytest.raises(InputError) as refused:
        read_rows(tmp_path, "d.json", text)
    assert str(refused.value) == f"import: {said}"


def test_a_json_lines_line_refused_is_named_by_its_line_and_the_rest_read(tmp_path: Path) -> None:
    """The same words for a line of JSON Lines, after its line; `null` sections and fields
    of a JSON document are left out (docs/CONTRACT.md §3)."""
    good = b'{"customer": {"id": "a"}}\n'
    for bad, said in (
        (b'{"customer": ' + DEEP + b"}", "not valid JSON (nested too deeply)"),
        (
            b'{"customer": {"id": "a", "balancePoints": ' + DIGITS + b"}}",
            "not valid JSON (a number with too many digits)",
        ),
        (b'{"customer": {"id": "\xe9"}}', "not valid JSON (not UTF-8 text)"),
    ):
        rows = read_rows(tmp_path, "r.jsonl", good + bad + b"\n" + good)
        assert problems(rows) == [("line 2", said)]
        assert [r[3] for r in rows if r[0] == "customer"] == ["line 1", "line 3"]
    text = b'{"customers": null, "program": null, "cards": [{"number": "2770000000017",'
    text += b' "customerId": "a", "status": null}]}'
    assert read_rows(tmp_path, "n.json", text) == [
        ("card", "2770000000017", '{"customerId":"a","number":"2770000000017"}', "cards[0]")
    ]
    assert read_rows(tmp_path, "l.json", b'{"customers": {"id": "a"}}') == [
        ("problem", "customers", "expected a list")
    ]


def test_a_kind_whose_probe_the_bulk_path_reads_otherwise_is_left_line_by_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At start-up each kind's probe rows are read both ways; a kind the bulk path reads
    otherwise (say under another pydantic) is left to the line-by-line path. A lax number
    (`"favoriteWeekday": "3"`, which the line path takes and the strict bulk path refuses)
    stands for such a difference."""
    monkeypatch.setitem(
        hub_import_module._PROBES, "customer", [{"id": "c-1", "favoriteWeekday": "3"}]
    )
    assert sorted(hub_import_module._bulk_checked()) == [
        "card",
        "category",
        "coupon",
        "offer",
        "product",
    ]


@pytest.mark.parametrize("text", [b"", b"\n", b"  \n\n", b"\xef\xbb\xbf"])
def test_an_empty_json_lines_file_holds_no_rows(text: bytes, tmp_path: Path) -> None:
    assert read_rows(tmp_path, "e.jsonl", text) == []


def test_a_block_holds_the_rows_read_line_by_line_beside_a_bulk_run(tmp_path: Path) -> None:
    """A run the bulk path refuses and the line path takes (a lax `"3"` for a number) and a
    run the bulk path reads, in one chunk: the block's COPY text has both, in order."""
    data = snapshot_jsonl(
        {
            "customers": [{"id": "c-1", "favoriteWeekday": "3"}, {"id": "c-2"}],
            "cards": [{"number": "2770000000017", "customerId": "c-1"}],
        }
    )
    path = tmp_path / "lax.jsonl"
    path.write_bytes(data)
    (block,) = read_file(path).copy_blocks()
    assert copy_rows(block.data) == [
        ("customer", "c-1", '{"balancePoints":0,"favoriteWeekday":3,"id":"c-1"}'),
        ("customer", "c-2", '{"balancePoints":0,"id":"c-2"}'),
        ("card", "2770000000017", '{"customerId":"c-1","number":"2770000000017"}'),
    ]
    assert (block.rows, block.counts) == (3, {"customer": 2, "card": 1})


def test_worker_processes_read_only_when_more_than_one_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker is the reading process itself (docs/PERFORMANCE.md: a pool of processes
    costs their start and the rows sent back); two read the chunks in processes, the same
    rows in the file's order. (`_read_jsonl_parallel` is watched, not replaced.)"""
    monkeypatch.setattr(hub_import_module, "CHUNK_LINES", 50)
    data = snapshot_jsonl({"customers": [{"id": f"c-{n}"} for n in range(120)]})
    calls: list[int] = []
    real = hub_import_module._read_jsonl_parallel

    def watched(stream: Any, total: int, progress: Any, workers: int, *args: Any) -> Any:
        calls.append(workers)
        return real(stream, total, progress, workers, *args)

    monkeypatch.setattr(hub_import_module, "_read_jsonl_parallel", watched)
    read = {
        workers: list(hub_import_module.read_jsonl(io.BytesIO(data), len(data), None, workers))
        for workers in (1, 2)
    }
    assert calls == [2]
    assert read[1] == read[2] and len(read[1]) == 120


def test_a_snapshots_row_before_any_section_line_is_named(tmp_path: Path) -> None:
    data = jsonl({"format": "tillpoint.snapshot/jsonl"}, {"id": "c-1"}, {"section": "x"})
    assert problems(read_rows(tmp_path, "s.jsonl", data)) == [
        ("line 2", 'a row before any {"section": ...} line'),
        ("line 3", "unknown section 'x'"),
    ]
