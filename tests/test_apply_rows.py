"""The full apply's row path (issue 15): a customer's row is stored as its own text with the
phone cut out, not written again by pydantic; anything unusual still goes through the model."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from tillpoint.agent import cache as cache_mod
from tillpoint.agent.db import cache_file
from tillpoint.agent.models import Customer
from tillpoint.agent.service import Agent

HEAD = '{"format": "tillpoint.snapshot/jsonl", "version": 1}\n{"section": "customers"}\n'

CUT = [
    # phone first, in the middle, last; blanks around the colon and the commas
    '{"phone":"+79161234567","id":"c-1","firstName":"Анна"}',
    '{"id":"c-1","phone":"+79161234567","balancePoints":12,"segment":"NEW"}',
    '{"id":"c-1","firstName":"Анна","phone":"+79161234567"}',
    '{ "id" : "c-1" , "phone" : "+79161234567" , "tier": "gold" }',
    '{"id": "c-1",\t"phone":\t"+79161234567"\t}',
    # the hub's canonical rows: sorted keys, every default written
    '{"balancePoints":204,"birthday":"1971-02-02","controlGroups":[],"expiring":[],'
    '"firstName":"Анна","id":"c-1","pending":[],"phone":"+79161234567","tier":"silver"}',
]


@pytest.mark.parametrize("raw", CUT)
def test_a_phone_is_cut_from_the_rows_own_text(raw: str) -> None:
    row = Customer.model_validate_json(raw)
    doc = cache_mod._customer_doc(row, raw)
    assert "phone" not in doc and "9161234567" not in doc
    expected = {k: v for k, v in json.loads(raw).items() if k != "phone"}
    assert json.loads(doc) == expected  # the row's own members and spelling, not a dump
    assert Customer.model_validate_json(doc) == row.model_copy(update={"phone": None})


@pytest.mark.parametrize(
    "raw",
    [
        '{"id":"c-1","firstName":"phone","phone":"+79161234567"}',  # "phone" twice
        '{"id":"c-1","controlGroups":["phone"],"phone":"+79161234567"}',
        '{"id":"c-1","ph\\u006fne":"+79161234567"}',  # an escape: never trusted
        '{"id":"c-1","phone":"+7916\\u0031234567"}',
    ],
)
def test_a_text_it_cannot_be_sure_of_goes_through_the_model(raw: str) -> None:
    row = Customer.model_validate_json(raw)
    doc = cache_mod._customer_doc(row, raw)
    assert doc == row.model_dump_json(by_alias=True, exclude={"phone"})
    assert "+7916" not in doc and "u0031" not in doc


def test_the_built_cache_keeps_the_rows_text_without_the_phone(tmp_path: Path) -> None:
    rows = [
        '{"id":"c-1","firstName":"Анна","phone":"+79161234567","balancePoints":12}',
        '{"id":"c-2","phone":"+79035550001"}',
    ]
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot_lines((HEAD + "\n".join(rows) + "\n").splitlines())
    docs = dict(sqlite3.connect(cache_file(tmp_path)).execute("SELECT id, doc FROM customers"))
    assert docs == {
        "c-1": '{"id":"c-1","firstName":"Анна","balancePoints":12}',
        "c-2": '{"id":"c-2"}',
    }
    view = cache_mod.CacheView(agent._cache, agent._secret)
    found = view.customer_by_phone("+79035550001")
    assert found is not None and found.id == "c-2" and found.phone is None
    agent.close()
