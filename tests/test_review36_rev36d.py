"""Review 36 (rev36d): this session's agent-side changes read again, adversarially
(CONTRACT §5, §7, §10, §11). Each test marked "failed before the fix" did; the others pin
what was checked and found right. Real parts: the reference hub on 127.0.0.1 (stopped:
a hub away, then started again), the till's real hub authoriser, real SQLite files, a
real TCP printer listener.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import SteppingClock
from .test_review31_long31 import DEVICE, _sale, stepped_while_it_asks

# ---------------------------------------- 1. the offline limit's open holds, across a step


def test_a_step_while_the_hub_is_asked_keeps_the_offline_limit_of_the_open_holds(
    tmp_path: Path,
) -> None:
    """CONTRACT §5 step 4, §11: offline, a card redeems at most `offlineRedeemLimitPoints`
    a store-day at this till, its open OFFLINE holds counted (a hold reserves). A Hold
    asks the hub first; the hub is away, and NTP steps the wall clock an hour forward
    while the request waits. The other open holds are still on the time line of before
    the step (the call follows it after its pricing), but the offline limit's use was read
    against the stepped clock (`self.clock()`, not `Agent._now()`): a hold with 9 of its
    10 minutes left counted as expired, and the second hold redeemed the day's whole
    limit again (1,000 points offline where 500 may go). Failed before the fix."""
    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    with stepped_while_it_asks(tmp_path, clock, 1.0) as (agent, data, steps, hub):
        limit = data["program"]["offlineRedeemLimitPoints"]  # 500; Anna has 1,200 points
        program = {**data["program"], "holdTtlSeconds": 600}
        agent.load_snapshot({**data, "version": 1, "baseVersion": 0, "program": program})
        hub.stop()  # the hub away: every Hold prices OFFLINE
        agent.sweep_holds()  # the clock's mark made (the hold timer's round)
        first = agent.hold(receipt_from_json(_sale("h-1", clock(), redeemPoints=limit)))
        assert (first.mode, first.redeemed_points) == ("OFFLINE", limit)
        clock.passes(60)
        steps.append(3600.0)  # NTP, while the next Hold asks the hub
        second = agent.hold(receipt_from_json(_sale("h-2", clock(), redeemPoints=limit)))
        assert not steps
        assert (second.mode, second.redeemed_points) == ("OFFLINE", 0)  # the limit is h-1's
        # h-1 kept its time left, and still confirms with its points
        assert agent.confirm("h-1").redeemed_points == limit


# ---------------------------------------- 2. the printer's close: a slow reader, late status


@pytest.mark.parametrize("late_status", [False, True], ids=["quiet", "late-ASB"])
def test_a_job_larger_than_the_socket_buffers_reaches_a_slow_printer_whole(
    late_status: bool,
) -> None:
    """CONTRACT §7 (a coupon's bytes reach the printer whole). A job of 1 MiB, larger than
    both sides' socket buffers, to a printer that reads 4 KiB every millisecond (the
    close's first look comes while most of the job is still in the kernel's queue), and
    one that, once it has the job, sends its status bytes (ASB) a few milliseconds
    later, after the close had ended at the data's ACK (our kernel then answers them
    with a reset): every byte reaches the printer, in order, and the close waits no
    longer than the printer takes to read. Checked and found right (the close ends at
    `unsent <= fin`: the data acknowledged; what the printer sends after the close
    resets a connection whose bytes it has all taken)."""
    import socket

    from tillpoint.printer.transport import NetworkTransport

    job = bytes(range(256)) * 4096  # 1 MiB, every byte's place checkable
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # the accepted one's
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10.0)
    got = bytearray()
    ended: list[str] = []

    def printer() -> None:
        conn, _ = listener.accept()
        conn.settimeout(30.0)
        with conn:
            try:
                while chunk := conn.recv(4096):
                    got.extend(chunk)
                    if late_status and len(got) == len(job):
                        time.sleep(0.005)
                        conn.sendall(b"\x14\x00\x00\x0f")  # ASB: 4 status bytes
                    time.sleep(0.001)
                ended.append("EOF")
            except ConnectionResetError:
                ended.append("RST")

    at_printer = threading.Thread(target=printer, daemon=True)
    at_printer.start()
    try:
        transport = NetworkTransport("127.0.0.1", listener.getsockname()[1], 2.0, 30.0)
        transport.open()
        transport.write(job)
        transport.close()
        at_printer.join(30.0)
        assert not at_printer.is_alive()
        assert ended and bytes(got) == job
    finally:
        listener.close()


# ---------------------------------------- 3. the shrinks owed, on the holds' time line


def test_the_shrinks_owed_gauge_reads_the_open_holds_on_their_time_line(tmp_path: Path) -> None:
    """CONTRACT §10 (`tillpoint_hub_calls_owed`), §11: an open hold priced OFFLINE whose
    grant came past the deadline owes the hub a shrink until it is sent or the hold
    closes. NTP steps the wall clock an hour forward and no call has followed the step
    yet (a quiet till between the hold timer's rounds): the hold still has 9 of its 10
    minutes (`Agent._now`), but the gauge read its expiry against the stepped clock and
    said no shrink was owed, and the owed shrinks' round took the hold for expired and
    sent nothing. Failed before the fix."""
    from tillpoint.sync.authoriser import HubAuthoriser
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    data = sample_master_data()
    hub = LoopbackHub(tmp_path / "hub", data=data)
    enrollment = hub.enroll(DEVICE, tmp_path / "till")
    link = HubLink(hub.address, enrollment)
    authoriser = HubAuthoriser(link, tmp_path / "till", DEVICE, 1.0)
    agent = Agent(tmp_path / "till", DEVICE, clock=clock, monotonic=clock.steady, hub=authoriser)
    try:
        program = {**data["program"], "holdTtlSeconds": 600}
        agent.load_snapshot({**data, "version": 1, "baseVersion": 0, "program": program})
        hub.stop()  # away: the hold is priced OFFLINE
        agent.sweep_holds()  # the clock's mark made
        held = agent.hold(receipt_from_json(_sale("h-1", clock(), redeemPoints=100)))
        assert held.mode == "OFFLINE"
        # it asked the hub (whose grant may come past the deadline): a shrink owed
        assert agent._life("h-1").shrink_owed
        assert agent.hub_calls_owed() == {"release": 0, "shrink": 1}
        clock.passes(60)
        clock.stepped(3600.0)  # no call follows it yet
        assert agent.hub_calls_owed() == {"release": 0, "shrink": 1}
        # the hub back: the owed shrink is sent, the step still not followed (the same
        # comparison took the hold for expired and left its shrink for a later round)
        hub.restart()
        assert link.probe(10.0)  # the channel connected again (out of its back-off)
        assert agent._send_shrinks() == 1
        assert agent.hub_calls_owed() == {"release": 0, "shrink": 0}
        assert agent.confirm("h-1").redeemed_points == 100  # it kept its time left
    finally:
        agent.close()
        authoriser.close()
        link.close()
        hub.stop()
