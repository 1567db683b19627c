"""Review 31, second read (rev31b) of left31's and dev31's merged changes.

Each test reproduces a fault found in them (it failed before the fix that follows it):

1. a stop that reaches a coupon's write the moment it finished (every byte, the cut
   included, handed to the network printer) kept the job PENDING, "no cut went out", and
   the next start printed it again: one coupon cut twice (CONTRACT §7, §12);
2. the same on a serial line: a write that pyserial finished whole was said broken off
   because the stop had come (the `aborted` flag, not what the write did), and printed
   again at the next start; and a write the stop broke off as it began was counted 0
   bytes by pyserial while the kernel had taken the whole coupon, cut included (§7);
3. the plain words of a bound (review 31) said a whole-number bound of a decimal setting
   as pydantic's float ("hub.poll_interval_s must be more than 0.0"), and the device
   tables ([printer], [display], [scanner]) still said pydantic's own ("Input should be
   greater than 0", "Input should be 'network', 'serial' ...") (CONTRACT §10).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import config as config_mod
from tillpoint.agent.errors import InputError
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.errors import PrinterConfigError
from tillpoint.printer.service import load_configs
from tillpoint.printer.transport import NetworkTransport, SerialTransport
from tillpoint.printer.virtual import VirtualPrinter

from .test_review31_dev31 import _coupons, _jobs, _prime, _printer, _sale, _until, till

# ---------------------------------------------------------------- 1. network: stop after the cut


def test_a_stop_right_after_a_coupon_went_out_whole_does_not_print_it_again(
    tmp_path: Path,
) -> None:
    """CONTRACT §7 (at most once across agent stops, as across crashes) and §12's stop: a
    stop breaks off a coupon's write still under way, "no cut went out". One that comes
    as the write has just returned (every byte, the cut last, is the printer's) found the
    transport still marked as sending: the socket was shut down, the job put back PENDING
    saying no cut went out, and the next start cut the coupon a second time."""
    _prime(tmp_path)
    with VirtualPrinter() as vp:
        config = _printer(vp.port)
        with till(tmp_path, config) as (agent, devices):
            worker = devices.worker

            class StopAsTheWriteEnds(NetworkTransport):
                """The printer's own transport; the agent's stop comes (as `stop` does:
                the stop flag, then the abort) the moment the job's write returns."""

                def write(self, data: bytes) -> None:
                    super().write(data)
                    if len(data) > 64:  # the job's bytes, not a status question
                        worker._stop.set()
                        worker._wake.set()
                        worker._abort_send()

            worker._factory = lambda: StopAsTheWriteEnds(
                "127.0.0.1", vp.port, 1.0, write_timeout_s=1.0
            )
            _sale(agent, 0)
            assert _until(lambda: _coupons(vp) == ["r-000"])
            assert _until(lambda: worker._thread is not None and not worker._thread.is_alive())
            assert _jobs(agent) == [("r-000", "DONE")]
            job = worker.job("r-000")
            assert job is not None and "no cut went out" not in (job["last_error"] or "")
        with till(tmp_path, config) as (agent, _):
            _sale(agent, 1)
            assert _until(lambda: _coupons(vp) == ["r-000", "r-001"], 10)
            assert _until(lambda: all(s == "DONE" for _, s in _jobs(agent)))
        assert _coupons(vp) == ["r-000", "r-001"]  # r-000 once


# ---------------------------------------------------------------- 2. serial: a whole write


def test_a_serial_write_that_went_out_whole_is_not_said_broken_off() -> None:
    """CONTRACT §7: `SerialTransport.write` said "the write was broken off" whenever the
    stop's abort had come, even when pyserial wrote every byte (the abort a moment before
    or after the write: pyserial's loop and a write that needs no wait ignore a
    `cancel_write` that finds no write waiting). The job, on the printer whole, was put
    back PENDING and printed again at the next start. A write broken off is one pyserial
    says it did not finish (fewer bytes than the job's)."""
    t = SerialTransport(PrinterConfig(kind="serial", device="loop://", write_timeout_s=1.0))
    t.open()
    try:
        job = b"\x1b@coupon r-000\n\x1dV\x00"  # ends with the cut
        t.abort()  # the stop came as the write began
        t.write(job)
        assert t.read(len(job), 1.0) == job  # every byte went out: the cut too
    finally:
        t.close()


def test_a_serial_write_broken_off_leaves_nothing_queued_for_the_line() -> None:
    """CONTRACT §7: a write the stop broke off sent no cut, so the job is printed again in
    full. pyserial queues a chunk with the kernel and then waits; a `cancel_write` met
    then ends the write saying that chunk was not written, while the kernel still had it
    to send, the cut too for a coupon that fits the line's buffer: the printer would cut
    it, and the next start again. What the line still queues is dropped (the printer is
    the far end of a real pty that has read nothing yet)."""
    from tillpoint.printer.errors import ConnectionLost

    far, near = os.openpty()
    try:
        t = SerialTransport(
            PrinterConfig(kind="serial", device=os.ttyname(near), write_timeout_s=5.0)
        )
        t.open()
        try:
            t.abort()  # the stop, as the write begins
            with pytest.raises(ConnectionLost, match="broken off"):
                t.write(b"\x1b@coupon r-000\n\x1dV\x00")
        finally:
            t.close()
        os.set_blocking(far, False)
        try:
            queued = os.read(far, 4096)
        except BlockingIOError:
            queued = b""
        assert b"\x1dV" not in queued, queued  # no cut reaches the printer
    finally:
        os.close(far)
        os.close(near)


# ---------------------------------------------------------------- 3. plain words of the config


def test_a_bound_of_a_decimal_setting_is_said_as_written(tmp_path: Path) -> None:
    """The configuration's refusals in the project's words (review 31): a bound is the
    number the setting's rule says, not pydantic's float of it."""
    path = tmp_path / "tillpoint.toml"
    path.write_text("[hub]\npoll_interval_s = 0\n")
    with pytest.raises(InputError) as refused:
        config_mod.load(path)
    assert "hub.poll_interval_s must be more than 0 " in str(refused.value), refused.value
    assert "0.0" not in str(refused.value)


@pytest.mark.parametrize(
    ("tables", "said"),
    [
        (({"kind": "network", "host": "p", "status_timeout_s": 0}, {}, {}),
         "[printer.status_timeout_s]: must be more than 0"),
        (({"kind": "network", "host": "p", "probe_interval_s": -1}, {}, {}),
         "[printer.probe_interval_s]: must be 0 or more"),
        (({"kind": "parallel"}, {}, {}), '[printer.kind]: "parallel" is not one of'),
        (({}, {"kind": "vfd"}, {}), '[display.kind]: "vfd" is not one of'),
    ],
)  # fmt: skip
def test_the_device_tables_say_their_refusals_in_plain_words(
    tables: tuple[dict[str, Any], dict[str, Any], dict[str, Any]], said: str
) -> None:
    """The [printer], [display] and [scanner] tables are refused in the words of every
    other table (review 31 made them plain there; the device tables still showed pydantic's
    "Input should be greater than 0" to the engineer at `config check` and at start)."""
    with pytest.raises(PrinterConfigError) as refused:
        load_configs(*tables)
    assert said in str(refused.value), refused.value
    assert "Input should" not in str(refused.value)
