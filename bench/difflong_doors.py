"""The two processes of tests/test_review32_long32.py's differential through every door.

`python -m bench.difflong_doors serve CLOCK RECORD ARGS...`: the `tillpoint` command line
(`run`: its gRPC and HTTP servers, its sync loops with the shipped settings, its hold
sweeper, everything), its wall clock and the seconds that pass beside it read from the
file CLOCK at each call ("WALL STEADY": an RFC 3339 time and a float, written by the test:
time passes when both move, NTP steps the clock when WALL moves alone), every answer of
the hub's `HubAuthoriser` (authorise, reachable) appended to the file RECORD as a JSON line.

`python -m bench.difflong_doors fresh CLOCK COPY CALL VIA BODY REPLAY`: a FRESH process on
COPY (a copy of the long-lived till's data directory made just before the call) answers
the call in BODY (a JSON file) at the moment of CLOCK, as door VIA (http, grpc, cli)
gives it, its hub the long-lived one's answers to the same call read from REPLAY (the
lines RECORD got during that call). It prints one JSON line: ["ok", doc] or
["error", [code, message]].
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

DEVICE = "till-1"


def read_clock(path: Path) -> tuple[datetime, float]:
    wall, steady = path.read_text(encoding="utf-8").split()
    return datetime.fromisoformat(wall), float(steady)


def write_clock(path: Path, wall: datetime, steady: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{wall.isoformat()} {steady!r}", encoding="utf-8")
    tmp.replace(path)  # never half a file read by the till


def _key(
    customer_id: str,
    receipt_id: str,
    points: int,
    at: datetime,
    hold_ttl_s: int | None,
    coupon_codes: Any,
) -> list[Any]:
    return [customer_id, receipt_id, points, at.isoformat(), hold_ttl_s, sorted(coupon_codes)]


def serve(argv: list[str]) -> int:
    clock_path, record = Path(argv[0]), Path(argv[1])

    from tillpoint.agent import service
    from tillpoint.agent.cli import main as cli
    from tillpoint.agent.errors import TillpointError
    from tillpoint.sync.authoriser import HubAuthoriser

    service.system_clock = lambda: read_clock(clock_path)[0]
    service.steady_clock = lambda: read_clock(clock_path)[1]

    def note(doc: dict[str, Any]) -> None:
        with open(record, "a", encoding="utf-8") as out:
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")

    authorise, reachable = HubAuthoriser.authorise, HubAuthoriser.reachable

    def recorded_authorise(
        self: HubAuthoriser,
        customer_id: str,
        receipt_id: str,
        points: int,
        at: datetime,
        hold_ttl_s: int | None = None,
        coupon_codes: Any = (),
        since: float | None = None,
        offline_limit: int | None = None,
    ) -> Any:
        key = _key(customer_id, receipt_id, points, at, hold_ttl_s, coupon_codes)
        try:
            grant = authorise(
                self,
                customer_id,
                receipt_id,
                points,
                at,
                hold_ttl_s,
                coupon_codes,
                since,
                offline_limit=offline_limit,
            )
        except TillpointError as exc:
            note({"authorise": key, "error": [type(exc).__name__, exc.message]})
            raise
        note({"authorise": key, "points": grant.points, "used": sorted(grant.used_coupons)})
        return grant

    def recorded_reachable(self: HubAuthoriser) -> bool:
        up = bool(reachable(self))
        note({"reachable": up})
        return up

    HubAuthoriser.authorise = recorded_authorise  # type: ignore[method-assign]
    HubAuthoriser.reachable = recorded_reachable  # type: ignore[method-assign]
    return cli(argv[2:])


class Replay:
    """A fresh agent's hub: the long-lived agent's answers to the same call, played back
    (tests/test_review31_long31.py's `Replay`, read from the record's lines)."""

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.asked = [line for line in lines if "authorise" in line]
        self.seen = [bool(line["reachable"]) for line in lines if "reachable" in line]
        self.online = self.seen[0] if self.seen else bool(self.asked)
        self.unasked: list[list[Any]] = []

    def authorise(
        self,
        customer_id: str,
        receipt_id: str,
        points: int,
        at: datetime,
        hold_ttl_s: int | None = None,
        coupon_codes: Any = (),
        since: float | None = None,
        offline_limit: int | None = None,
    ) -> Any:
        from tillpoint.agent import errors
        from tillpoint.agent.models import HubGrant

        key = _key(customer_id, receipt_id, points, at, hold_ttl_s, coupon_codes)
        for i, line in enumerate(self.asked):
            if line["authorise"] == key:
                del self.asked[i]
                if "error" in line:
                    self.online = False
                    name, message = line["error"]
                    raise getattr(errors, name)(message)
                self.online = True
                return HubGrant(int(line["points"]), frozenset(line["used"]))
        self.unasked.append(key)
        self.online = False
        raise errors.HubUnavailable("not asked by the long-lived agent")

    def release(self, receipt_id: str) -> bool:
        return True

    def reachable(self) -> bool:
        return self.seen.pop(0) if self.seen else self.online


def fresh(argv: list[str]) -> int:
    clock_path, copy_dir, call, via = Path(argv[0]), Path(argv[1]), argv[2], argv[3]
    body = json.loads(Path(argv[4]).read_text(encoding="utf-8"))
    lines = [json.loads(x) for x in Path(argv[5]).read_text(encoding="utf-8").splitlines() if x]
    doc = fresh_doc(read_clock(clock_path)[0], copy_dir, call, via, body, lines)
    print(json.dumps(doc, ensure_ascii=False))
    return 0


def fresh_doc(
    moment: datetime, copy_dir: Path, call: str, via: str, body: Any, lines: list[dict[str, Any]]
) -> dict[str, Any]:
    """The fresh agent's answer as `fresh` prints it. In a process of its own (`fresh`), or
    in the harness's after `difflong.clear_module_caches()` (review 38's thousands of
    calls: a process a call would take an hour)."""
    from tillpoint.agent import wire
    from tillpoint.agent.app import till_agent
    from tillpoint.agent.errors import TillpointError, edge_of, exit_code_of
    from tillpoint.agent.results import json_text, receipt_from_json, refund_from_json

    hub = Replay(lines)
    agent = till_agent(copy_dir, DEVICE, clock=lambda: moment, hub=hub)
    answer: Any
    try:
        try:
            if call in ("quote", "hold", "checkout"):
                result: Any = getattr(agent, call)(receipt_from_json(body))
            elif call == "confirm":
                result = agent.confirm(body["receiptId"])
            elif call == "cancel":
                result = agent.cancel(body["receiptId"])
            elif call == "refund":
                result = agent.refund(refund_from_json(body))
            elif call == "identify":
                result = agent.identify(body["text"])
            else:
                at = body.get("at")
                result = agent.balance(body["card"], datetime.fromisoformat(at) if at else None)
        except TillpointError as exc:
            edge = edge_of(exc)
            if via == "cli":
                answer = ["error", [exit_code_of(edge.code), edge.message]]
            else:
                answer = ["error", [edge.code, edge.message]]
        else:
            if via == "grpc":
                answer = ["ok", wire.reply_json(wire.message_of(result))]
            else:
                answer = ["ok", json.loads(json_text(result)), json_text(result)]
    finally:
        agent.close()
    return {"answer": answer, "unasked": hub.unasked}


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    sys.exit(serve(rest) if mode == "serve" else fresh(rest))
