"""Review 49 (ci49): short twins, in the default run, of `slow` tests CI stopped running.

Since review 49 CI runs `make test`'s default suite and only the `slow` tests marked `ci`
(`.ci/run`); every other `slow` test runs in `make test-all` only. The project's rule (a
test longer than ~5 s is `slow` with a short twin in the default run keeping its promise
in small) left a few groups of those tests with no such twin (docs/DECISIONS.md, "Review
49 (ci49)", holds the table of every dropped group and its twin). Each test here keeps one
such group's promise with one real `tillpoint run` (a process, HTTP and gRPC on random
loopback ports, its ledger a real SQLite file), running the very checks of the slow tests
against it: the same assertions, fewer process starts.

- pos34 (tests/test_review34_pos34.py, a POS's HTTP manners: a body cut short, pipelined
  calls, `Expect: 100-continue`, a chunked body, HTTP/1.0, any Content-Type, int64s as
  strings and keys twice, what the contract refuses, another method or spelling of a path):
  its module-scoped `till` fixture is the one run they share; here the same run, its
  fifteen cheap checks in one test.
- conc32 (tests/test_review32_conc32.py, one receiptId through three doors of one run at
  once): each of its tests starts its own run (the tests count the whole ledger); here one
  run takes three of them in turn whose counts do not meet (the same hold from three
  doors, a hold and a checkout of one receipt, a confirm and a cancel at once), with the
  print jobs counted as they do.
- Slow tests of groups with no default twin that were small already (~1-3 s quiet:
  rev27, rev25b, rev25c, sync25, sync27, rev28, left29, left34, ops25, five PostgreSQL-only
  hub31/rev31d tests, and, whose default twins were partial only, exp27's three, sync30's
  second sale across midnight, deal26's code that wins after a refusal, ref27's big
  receipt returned line by line) are no longer `slow`: they run in the default suite
  where they stand (the lead's call; ci49 first called them from here).
- doc26's walk of what openapi.json allows and forbids, for the `Receipt` schema at
  /v1/quote (its quote, hold and checkout runs are slow).
"""

from __future__ import annotations

from pathlib import Path

from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent
from tillpoint.printer.virtual import VirtualPrinter

from . import test_review26_doc26 as doc26
from . import test_review32_conc32 as conc32
from . import test_review34_pos34 as pos34
from .conftest import PROGRAM, snapshot


def test_pos34_s_http_edges_on_one_run(tmp_path: Path) -> None:
    """The checks of pos34's one-till tests (no hub), on one real `tillpoint run` seeded as
    its module fixture seeds it, each with its own receiptIds as there."""
    program = {**PROGRAM, "holdTtlSeconds": 600, "offlineRedeemLimitPoints": 100_000}
    till = conc32.Till(tmp_path, conc32.seeded(tmp_path / "till", snapshot(program=program)))
    try:
        pos34.test_a_body_cut_short_by_the_clients_end_is_408_at_once_not_after_the_body_timeout(
            till
        )
        pos34.test_pipelined_calls_on_one_connection_are_answered_in_order_and_committed_once(till)
        pos34.test_expect_100_continue_is_answered_continue_then_the_call(till)
        pos34.test_a_chunked_checkout_is_committed_once_and_its_retry_is_the_same_answer(till)
        for connection in (None, "keep-alive"):
            pos34.test_http_1_0_is_answered_then_the_connection_closes(till, connection)
        pos34.test_any_content_type_or_none_is_read_as_utf8_json(till)
        pos34.test_what_a_pos_may_spell_another_way_is_one_receipt_for_its_retry(till)
        pos34.test_what_the_contract_refuses_is_a_400_that_stores_nothing(till)
        for method, path, status, allow in (
            ("HEAD", "/v1/checkout", 405, "POST"),
            ("OPTIONS", "/v1/checkout", 405, "POST"),
            ("GET", "/v1/checkout", 405, "POST"),
            ("PUT", "/v1/checkout", 405, "POST"),
            ("post", "/v1/checkout", 405, "POST"),
            ("POST", "/V1/CHECKOUT", 404, None),
            ("POST", "/v1/checkout/", 404, None),
            ("POST", "//v1/checkout", 404, None),
        ):
            pos34.test_another_method_or_spelling_of_a_path_runs_nothing(
                till, method, path, status, allow
            )
    finally:
        till.stop()


def test_conc32_s_one_receipt_through_three_doors_on_one_run(tmp_path: Path) -> None:
    """conc32's races of one receiptId through HTTP, gRPC and the forwarded CLI at once,
    on one run seeded as conc32's `till` fixture seeds it: held once, committed once (one
    journal row, one outbox row, one print job printed once), confirm or cancel never
    both. Their counts do not meet: the first holds without a commit, the others count
    their own receiptIds and the journal against the outbox."""
    program = {
        **PROGRAM,
        "holdTtlSeconds": 600,
        "offlineRedeemLimitPoints": 100_000,
        "offerPrintCooldownDays": 0,
    }
    snap = snapshot(program=program, offers=[conc32.PRINTABLE])
    with VirtualPrinter() as printer:
        till = conc32.Till(tmp_path, conc32.seeded(tmp_path / "till", snap), printer=printer)
        till.printer = printer
        try:
            conc32.test_the_same_hold_from_three_doors_at_once_is_held_once(till)
            conc32.test_hold_and_checkout_of_one_receipt_at_once_commit_it_once(till)
            conc32.test_confirm_and_cancel_at_once_one_wins(till)
        finally:
            till.stop()


# ---------------------------------------------------------------- doc26's walk, one Receipt path


def test_doc26_s_openapi_walk_of_the_receipt_schema_at_quote(tmp_path: Path) -> None:
    """doc26's walk of every body openapi.json allows and forbids, for the three paths
    that take a `Receipt` (quote, hold, checkout: slow, ~1.5-3 s each at load) once: at
    /v1/quote, the same variants of the same schema (hold and checkout answer the same
    bodies through the same validation, and their answers' schema is walked in
    test_review31_pos31's guide run). The server as doc26's `served` fixture makes it."""
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot(offers=doc26.OFFERS))
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    client = doc26.Client(server.port)
    try:
        doc26.test_every_call_answers_what_openapi_declares_for_what_its_schema_allows_and_forbids(
            client, "/v1/quote"
        )
    finally:
        client.close()
        server.stop()
        agent.close()
