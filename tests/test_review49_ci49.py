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
- Slow tests of groups with no default twin that are small already (~1-3 s quiet, 2-9 s at
  load ~10: rev27, rev25b, rev25c, sync25, sync27, rev28, left29, left34, ops25, and five
  PostgreSQL-only hub31/rev31d tests on the session's cluster): each called as it is, with
  its own fixtures.
- Six slow tests whose default twins were partial only, as small (exp27's three
  explanations and quotes of the hub's grant, sync30's second sale across midnight, deal26's
  code that wins after a refusal, ref27's big receipt returned line by line): called so too.
- doc26's walk of what openapi.json allows and forbids, for the `Receipt` schema at
  /v1/quote (its quote, hold and checkout runs are slow).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent
from tillpoint.printer.virtual import VirtualPrinter
from tillpoint.sync.loopback import LoopbackHub, sample_master_data

from . import test_review25_ops25 as ops25
from . import test_review25_rev25b as rev25b
from . import test_review25_rev25c as rev25c
from . import test_review25_sync25 as sync25
from . import test_review26_deal26 as deal26
from . import test_review26_doc26 as doc26
from . import test_review27_exp27 as exp27
from . import test_review27_ref27 as ref27
from . import test_review27_rev27 as rev27
from . import test_review27_sync27 as sync27
from . import test_review28_rev28 as rev28
from . import test_review29_left29 as left29
from . import test_review30_sync30 as sync30
from . import test_review31_hub31 as hub31
from . import test_review31_rev31d as rev31d
from . import test_review32_conc32 as conc32
from . import test_review34_left34 as left34
from . import test_review34_pos34 as pos34
from .conftest import CLI, PROGRAM, snapshot


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


# ---------------------------------------------------------------- already small, called as they are
#
# Each test below is a `slow` test of a group with no default twin that takes ~1-3 s quiet
# (2-9 s at load ~10): its own size is the small one. It is called here as it is, with its
# own fixtures, so that CI runs its promise; the slow original stays in `make test-all`.


def test_rev27_a_remembered_expiry_in_lower_case_is_checked_again(tmp_path: Path) -> None:
    """rev27 (CONTRACT §9): a remembered certificate expiry in lower case is read again."""
    rev27.test_a_remembered_expiry_written_in_lower_case_is_checked_again(tmp_path)


def test_rev27_an_outbox_row_whose_result_does_not_read_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """rev27: an outbox row whose result does not read is named, not an internal error."""
    rev27.test_an_outbox_row_whose_result_does_not_read_is_named_not_an_internal_error(
        tmp_path, caplog
    )


def test_rev27_an_unexpected_error_of_the_sync_thread_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rev27: an unexpected error of the sync thread is logged with its trace, once."""
    rev27.test_an_unexpected_error_of_the_sync_thread_is_logged_with_its_trace_once(
        tmp_path, caplog, monkeypatch
    )


def test_rev27_a_pull_that_fails_on_the_tills_side_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rev27: a pull that fails on the till's side is logged once."""
    rev27.test_a_pull_that_fails_on_the_tills_side_is_logged_once(tmp_path, caplog, monkeypatch)


def test_rev25c_a_long_lived_till_keeps_what_its_hub_acknowledged(tmp_path: Path) -> None:
    """rev25c (CONTRACT §9): what the hub acknowledged is kept for that hub across a
    ledger of the release before, a renewed server certificate and a restart."""
    rev25c.test_a_long_lived_till_of_one_hub_keeps_what_it_acknowledged(tmp_path)


def test_rev25c_a_renewed_bundle_of_the_same_hub_keeps_what_it_acknowledged(
    tmp_path: Path, cli: CLI
) -> None:
    """rev25c (CONTRACT §9): the same CA in other line endings is the same hub."""
    rev25c.test_a_renewed_bundle_of_the_same_hub_keeps_what_it_acknowledged(tmp_path, cli)


def test_rev25b_a_till_enrolled_with_another_hub_sends_it_none_of_the_old_hubs_sales(
    tmp_path: Path, cli: CLI
) -> None:
    """rev25b (CONTRACT §9): the 35 days kept are sent again to their own hub only."""
    rev25b.test_a_till_enrolled_with_another_hub_does_not_send_it_the_old_hubs_sales(tmp_path, cli)


def test_rev25b_a_hub_restored_from_a_backup_gets_the_discarded_seqs_again(
    tmp_path: Path,
) -> None:
    """rev25b (CONTRACT §9): a restored hub is told again the seqs `reset --force` discarded."""
    rev25b.test_a_hub_restored_from_a_backup_gets_the_discarded_seqs_again(tmp_path)


def test_sync25_a_hub_restored_from_a_backup_is_not_taken_for_the_tills_base(
    tmp_path: Path,
) -> None:
    """sync25 (CONTRACT §3): a delta applies only on top of exactly its base."""
    hub = LoopbackHub(tmp_path / "hub", data=sync25.no_accrual_data())
    try:
        sync25.test_a_hub_restored_from_a_backup_is_not_taken_for_the_tills_base(hub, tmp_path)
    finally:
        hub.stop()


def test_sync25_after_reset_force_the_tills_later_sales_still_reach_the_snapshots(
    tmp_path: Path,
) -> None:
    """sync25 (CONTRACT §9): the seqs `reset --force` discarded are set aside at the hub."""
    hub = LoopbackHub(tmp_path / "hub", data=sync25.no_accrual_data())
    try:
        sync25.test_after_reset_force_the_tills_later_sales_still_reach_the_snapshots(hub, tmp_path)
    finally:
        hub.stop()


def test_sync25_without_notifications_the_till_polls(tmp_path: Path) -> None:
    """sync25 (CONTRACT §9): a hub whose notifications never come is polled."""
    hub = LoopbackHub(tmp_path / "hub", data=sync25.no_accrual_data())
    try:
        sync25.test_without_notifications_the_till_polls(hub, tmp_path)
    finally:
        hub.stop()


def test_sync27_an_outbox_row_the_till_cannot_read_stops_neither_pulls_nor_status(
    tmp_path: Path,
) -> None:
    """sync27: an unreadable outbox row stops neither the pulls nor `status`."""
    sync27.test_an_outbox_row_the_till_cannot_read_stops_neither_pulls_nor_status(tmp_path)


def test_sync27_two_tills_running_as_one_device_are_told_apart_in_words(tmp_path: Path) -> None:
    """sync27: two tills running as one device are said so, in words."""
    sync27.test_two_tills_running_as_one_device_are_told_apart_in_words(tmp_path)


def test_rev28_hub_import_from_stdin_stopped_leaves_no_copy_behind(tmp_path: Path) -> None:
    """rev28: `hub import -` stopped leaves no copy of standard input behind."""
    rev28.test_hub_import_from_stdin_stopped_leaves_no_copy_behind(tmp_path)


def test_left29_a_multiplier_code_held_by_the_hub_with_its_smaller_grant(tmp_path: Path) -> None:
    """left29 (CONTRACT §13): a multiplier code that applies only with the hub's smaller
    grant is held by the hub too."""
    left29.test_a_multiplier_code_that_applies_only_with_the_hubs_smaller_grant_is_held_by_the_hub(
        tmp_path
    )


def test_left34_hub_serve_says_which_copies_of_standard_input_it_removed(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """left34: `hub serve` says at start which copies of standard input it removed."""
    left34.test_hub_serve_says_at_start_which_copies_of_standard_input_it_removed(tmp_path, procs)


def test_ops25_run_logs_its_release_and_the_snapshot_it_serves_or_that_it_has_none(
    tmp_path: Path,
) -> None:
    """ops25: `run`'s start line names its release and its snapshot, or says it has none."""
    ops25.test_run_logs_its_release_and_the_snapshot_it_serves_or_that_it_has_none(tmp_path)


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


# ---------------------------------------------------------------- PostgreSQL-only, already small
#
# These five have no SQLite form (PostgreSQL's advisory lock that a hub holds while the
# database is open); ~1 s each on the session's cluster, which the default run starts
# anyway for its other PostgreSQL tests.


def test_hub31_hub_migrate_refuses_while_a_hub_has_the_database_open(pg_url: str) -> None:
    """hub31 (docs/HUB.md, Migrations): `hub migrate` beside an open hub is refused."""
    hub31.test_hub_migrate_refuses_while_a_hub_has_the_database_open(pg_url)


def test_rev31d_a_hub_that_waited_for_a_migration_checks_the_schema_it_got(pg_url: str) -> None:
    """rev31d: a hub that waited for a migration checks the schema it got."""
    rev31d.test_a_hub_that_waited_for_a_migration_checks_the_schema_it_got(pg_url)


def test_rev31d_a_hub_whose_open_lock_connection_is_killed_serves_and_stops_clean(
    pg_url: str, tmp_path: Path
) -> None:
    """rev31d: a hub whose open-lock connection is killed serves on and stops clean."""
    rev31d.test_a_hub_whose_open_lock_connection_is_killed_serves_and_stops_clean(pg_url, tmp_path)


def test_rev31d_two_hubs_starting_at_once_on_an_older_schema_both_serve(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rev31d: two hubs starting at once on an older schema both serve."""
    rev31d.test_two_hubs_starting_at_once_on_an_older_schema_both_serve(pg_url, monkeypatch)


def test_rev31d_a_hub_takes_its_open_lock_again_once_its_connection_is_gone(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rev31d: a hub takes its open lock again once its connection is gone."""
    rev31d.test_a_hub_takes_its_open_lock_again_once_its_connection_is_gone(
        pg_url, tmp_path, monkeypatch
    )


# ---------------------------------------------------------------- partial twins closed, as they are


def test_exp27_a_quote_of_a_held_receipt_answers_the_points_the_hub_granted_it(
    tmp_path: Path,
) -> None:
    """exp27 (CONTRACT §11): a quote of a held receipt answers the hub's grant."""
    exp27.test_a_quote_of_a_held_receipt_answers_the_points_the_hub_granted_it(tmp_path)


def test_exp27_why_a_sale_got_only_what_the_hub_granted(tmp_path: Path) -> None:
    """exp27 (CONTRACT §17): the explanation names the hub's grant as the cap."""
    exp27.test_why_a_sale_got_only_what_the_hub_granted(tmp_path)


def test_exp27_why_a_sale_made_while_the_hub_was_away_got_the_offline_limit(
    tmp_path: Path,
) -> None:
    """exp27 (CONTRACT §17): the explanation names the offline limit as the cap."""
    exp27.test_why_a_sale_made_while_the_hub_was_away_got_the_offline_limit(tmp_path)


def test_sync30_a_second_sale_across_midnight_before_the_first_is_sent(tmp_path: Path) -> None:
    """sync30 (CONTRACT §16, §9): a second sale across midnight before the first is sent."""
    hub = LoopbackHub(tmp_path / "hub", data=sync30.expiring_data(), clock=lambda: sync30.HUB_NOW)
    try:
        sync30.test_a_second_sale_across_midnight_before_the_first_is_sent(hub, tmp_path)
    finally:
        hub.stop()


def test_deal26_a_code_that_wins_after_the_hub_refused_another_is_authorised_too(
    tmp_path: Path,
) -> None:
    """deal26 (CONTRACT §13): a code that comes to apply after the hub's answer is
    authorised too; the hub as deal26's `two_offer_hub` fixture makes it."""
    offers = [
        {"id": "o-big", "kind": "PERCENT_OFF", "skus": [deal26.MILK], "value": "50",
         "couponRequired": True},
        {"id": "o-small", "kind": "AMOUNT_OFF", "skus": [deal26.MILK], "value": "2000",
         "couponRequired": True},
    ]  # fmt: skip
    codes = [{"code": "BIG1", "offerId": "o-big"}, {"code": "SMALL1", "offerId": "o-small"}]
    hub = LoopbackHub(
        tmp_path / "hub", data=sample_master_data() | {"offers": offers, "coupons": codes}
    )
    try:
        deal26.test_a_code_that_wins_after_the_hub_refused_another_is_authorised_too(hub, tmp_path)
    finally:
        hub.stop()


def test_ref27_a_big_receipt_returned_line_by_line_is_answered_at_once(cli: CLI) -> None:
    """ref27 (CONTRACT §6): a 1,400-line sale returned line by line, each refund at once."""
    ref27.test_a_big_receipt_returned_line_by_line_is_answered_at_once(cli)
