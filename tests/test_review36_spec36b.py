"""Review 36 (spec36b): CONTRACT §13 (coupons) and §17 (explain: why this price) read
black-box, as a hidden test would, every figure worked out by hand from the contract.

The stories are the scenarios in tests/scenarios/review36/ (their `why` holds the
arithmetic; tests/test_scenarios.py runs them through the CLI). Here each one is told again
at the three doors at once (`said_at_every_door`, review 35's): the CLI in-process, HTTP/JSON
to a real server on a random loopback port, and gRPC to a real server on another, each till
on its own data directory: the same refusals with CONTRACT §12's HTTP status and gRPC code,
the HTTP body byte for byte the CLI's document, the gRPC answer the same message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent

from .conftest import CLI
from .test_http_api import Client, error_of
from .test_review35_shape35 import clean_env, said_at_every_door

__all__ = ["clean_env"]  # the fixture, used by name below

SCENARIOS = sorted((Path(__file__).resolve().parent / "scenarios" / "review36").glob("*.json"))
# Told at every door: all but a story of a request's size in bytes (`padToBytes`: the CLI's
# file and HTTP's body; a gRPC message has no such form), which spec36f tells over HTTP.
AT_EVERY_DOOR = [p for p in SCENARIOS if "padToBytes" not in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("file", AT_EVERY_DOOR, ids=[path.stem for path in AT_EVERY_DOOR])
def test_each_story_is_the_same_at_every_door(
    file: Path, tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §12: the same calls and documents as the CLI's, at every door."""
    problems = said_at_every_door(file, tmp_path, monkeypatch)
    assert not problems, "\n".join(problems)


def test_the_stories_cite_the_contract() -> None:
    """Scenario text cites "CONTRACT §N" (the repository stands alone)."""
    assert len(SCENARIOS) >= 4
    for path in SCENARIOS:
        text = path.read_text(encoding="utf-8")
        assert "SPEC" not in text and "CONTRACT §" in text, path.name


# ---------------------------------------------------------------- the CLI's own words


REVIEW36 = Path(__file__).resolve().parent / "scenarios" / "review36"


def _story(name: str) -> dict[str, Any]:
    story: dict[str, Any] = json.loads((REVIEW36 / f"{name}.json").read_text(encoding="utf-8"))
    return story


def _coupon_story_till(cli: CLI) -> dict[str, Any]:
    """A till with the first coupon story's snapshot (CONTRACT §13); its steps by index."""
    story = _story("s13_coupon_codes_at_their_edges_through_a_receipts_life")
    assert cli("snapshot", "load", story["steps"][0]["input"], "--json").code == 0
    return story


def test_the_text_of_a_sale_says_each_codes_verdict(cli: CLI) -> None:
    """CONTRACT §13: "Each [scanned code] gets a verdict": the CLI without --json printed every
    figure of the result, the held-out offers and the printed ones, but not one word of the
    codes, so a cashier who ran `tillpoint checkout` never learnt that the customer's code
    was refused, or why (an expired code, one used already). Each code is now said, in the
    order scanned, with its verdict and reason."""
    story = _coupon_story_till(cli)
    q1 = story["steps"][1]["input"]  # seven codes: one applied, six rejected, each reason
    text = cli("quote", q1)
    assert text.code == 0, text.err
    assert (
        "coupons: SORRY7K2Q9 applied; SORRY7K2Q9 rejected (DUPLICATE); NOPE rejected (UNKNOWN);"
        " OLD1 rejected (EXPIRED); LATER1 rejected (NOT_YET_VALID); BONLY rejected"
        " (OTHER_CUSTOMER); ANY1 rejected (NOT_APPLICABLE)"
    ) in text.out.splitlines()
    sale = {**q1, "receiptId": "c-text", "coupons": ["sorry-7k2q9", "ANY-1"]}
    done = cli("checkout", sale)
    assert done.code == 0, done.err
    assert "coupons: SORRY7K2Q9 applied; ANY1 rejected (NOT_APPLICABLE)" in done.out.splitlines()
    again = cli("quote", {**sale, "receiptId": "q-text"})
    assert "coupons: SORRY7K2Q9 rejected (ALREADY_USED); ANY1 applied" in again.out.splitlines()
    # no code scanned: no line about codes
    plain = cli("quote", {**sale, "receiptId": "q-plain", "coupons": []})
    assert plain.code == 0 and "coupons:" not in plain.out
    # a cancelled hold's text says its code was given back (CONTRACT §13's decisions), not
    # "applied", though the stored result it answers (--json) still says APPLIED
    held = cli("hold", {**sale, "receiptId": "h-text", "coupons": ["ANY-1", "nope"]})
    assert "coupons: ANY1 applied; NOPE rejected (UNKNOWN)" in held.out.splitlines()
    cancelled = cli("cancel", "h-text")
    assert cancelled.code == 0, cancelled.err
    assert "coupons: ANY1 given back; NOPE rejected (UNKNOWN)" in cancelled.out.splitlines()
    assert cli("cancel", "h-text", "--json").json()["coupons"][0]["status"] == "APPLIED"


def test_quote_explain_in_words_and_its_exit_codes(cli: CLI) -> None:
    """CONTRACT §10/§17: `quote FILE --explain` adds the trace; without --json it is told in
    words (exit 0), every outcome of the trace named; `--explain` exists for quote, hold and
    checkout only (refund, confirm: a usage error, exit 2); a bad receipt explained is bad
    input (exit 2, one line, nothing on stdout)."""
    story = _story("s17_every_kind_of_trace_row_and_cap_quote_hold_confirm_checkout")
    assert cli("snapshot", "load", story["steps"][0]["input"], "--json").code == 0
    e1 = story["steps"][1]["input"]
    text = cli("quote", e1, "--explain")
    assert text.code == 0 and text.err == "", text.err
    lines = text.out.splitlines()
    assert "why:" in lines
    for said in (
        "    o-cpn PERCENT_OFF: COUPON_MISSING",
        "    o-mass PERCENT_OFF: APPLIED −10,00",
        "    o-mon PERCENT_OFF: OUTSIDE_WINDOW",
        "    o-q3 PERCENT_OFF: BELOW_MIN_QTY",
        "    o-tie PERCENT_OFF: BEATEN −10,00 by o-mass (−10,00)",
        "    o-zero PERCENT_OFF: ZERO_DISCOUNT",
        "    o-tob PERCENT_OFF: EXCLUDED_PRODUCT",
        "  deal d-mb2: APPLIED −30,00 (line offers −0,00; lines 4)",
        "  receipt offer rp-10: BELOW_MIN_TOTAL (from 500,00, 295,00 more needed)",
        "  receipt offer rp-3: BEATEN −1,20 by r-cpn (−2,00) (from 50,00)",
        "  redemption: asked 100, allowed 60 (requested 100, balance 1000, percent 60,"
        " capacity 203, offline_limit 500; bound by percent)",
        "coupons: RP1 applied; TIE rejected (NOT_APPLICABLE)",
    ):
        assert said in lines, (said, text.out)
    assert "why:" not in cli("quote", e1).out  # no --explain: no trace
    for argv in (
        ("refund", {"refundId": "f", "receiptId": "x", "lines": []}, "--explain"),
        ("confirm", "x", "--explain"),
        ("quote", "no-such-file.json", "--explain"),
        ("quote", {**e1, "lines": []}, "--explain", "--json"),
        ("quote", {**e1, "explain": "yes"}, "--json"),
    ):
        refused = cli(*argv)
        assert refused.code == 2 and refused.out == "", (argv, refused)
        assert len(refused.err.strip().splitlines()) == 1 and "Traceback" not in refused.err


@pytest.mark.parametrize("value", ["yes", 1, 0, "true", None])
def test_explain_is_true_or_false_at_the_cli_and_over_http(
    cli: CLI, tmp_path: Path, value: Any
) -> None:
    """CONTRACT §10/§12: `explain` is a bool; a string or a number is bad input (exit 2; HTTP
    400 INVALID_ARGUMENT with the same words); null is proto3's "not set": no trace. (gRPC
    cannot carry anything but a bool there.)"""
    story = _story("s17_every_kind_of_trace_row_and_cap_quote_hold_confirm_checkout")
    assert cli("snapshot", "load", story["steps"][0]["input"], "--json").code == 0
    body = {**story["steps"][1]["input"], "explain": value}
    said = cli("quote", body, "--json")
    agent = Agent(tmp_path / "http", "till-1")  # a till of its own behind HTTP
    agent.load_snapshot(story["steps"][0]["input"])
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    http = Client(server.port)
    try:
        answer = http.post("/v1/quote", body)
    finally:
        http.close()
        server.stop()
        agent.close()
    if value is None:
        assert said.code == 0 and answer.status == 200
        assert "trace" not in said.json() and answer.body.decode() == said.out
        return
    assert said.code == 2 and said.out == ""
    status, code, message = error_of(answer)
    assert (status, code) == (400, "INVALID_ARGUMENT")
    assert (
        said.err.strip()
        == f"tillpoint: {message}"
        == "tillpoint: receipt: explain must be true or false"
    )
