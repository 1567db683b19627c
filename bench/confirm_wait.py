"""What a POS sees on the HTTP door while Confirms wait for their Hold's hub turn (left36).

A Confirm (or Cancel) sent while its Hold still asks the hub (a POS that gave up on the
Hold) waits for that Hold's turn to end (`HubTurns.hold_ended`) in one of the door's 8
`http-call` workers. Here a hub slow to authorise (it answers past the till's redemption
deadline, so every Hold waits the whole deadline and prices OFFLINE), `--holds` Holds at
once, each followed 30 ms later by `--confirms` Confirms of its receipt; meanwhile another
client asks `/healthz` (a pool call), a quote (on the loop) and a checkout that redeems
nothing (a pool call, no hub request). Prints each round's times; `--redeem-ms` is the
till's `hub.redeem_timeout_ms` (shipped: 300).

    .venv/bin/python -m bench.confirm_wait [--holds 4] [--confirms 1] [--redeem-ms 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ANNA = "2770000000017"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holds", type=int, default=4)
    parser.add_argument("--confirms", type=int, default=1, help="Confirms sent per Hold")
    parser.add_argument("--redeem-ms", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from tillpoint.agent.http_api import HttpServer
    from tillpoint.sync.hub_server import HubServicer
    from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data, timings
    from tillpoint.sync.pull import Puller

    authorise = HubServicer.AuthorizeRedemption
    late_s = args.redeem_ms / 1000 + 0.5

    def slowly(self: Any, request: Any, context: Any) -> Any:
        time.sleep(late_s)  # past the till's deadline: the Hold waits all of it
        return authorise(self, request, context)

    HubServicer.AuthorizeRedemption = slowly  # type: ignore[method-assign]
    tmp = Path(tempfile.mkdtemp(prefix="confirm-wait-"))
    hub = LoopbackHub(tmp / "hub", data=sample_master_data())
    till = hub.till(
        "till-1", tmp / "till", start=False, timings=timings(redeem_timeout_s=args.redeem_ms / 1000)
    )
    Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5).pull()
    door = HttpServer(till.agent, "127.0.0.1:0")
    door.start()
    base = f"http://127.0.0.1:{door.port}"

    def post(path: str, body: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        started = time.perf_counter()
        request = urllib.request.Request(
            base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                code, doc = answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            code, doc = exc.code, json.loads(exc.read())
        return time.perf_counter() - started, code, doc

    def healthz() -> float:
        started = time.perf_counter()
        with urllib.request.urlopen(base + "/healthz", timeout=60) as answer:
            answer.read()
        return time.perf_counter() - started

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.0f} ms"

    try:
        for i in range(5):  # warm
            healthz()
            post("/v1/checkout", receipt(f"warm-{i}", ANNA))
        idle_h = statistics.median(healthz() for _ in range(20))
        idle_c = statistics.median(
            post("/v1/checkout", receipt(f"i-{i}", ANNA))[0] for i in range(10)
        )
        print(f"idle: /healthz {ms(idle_h)}, checkout {ms(idle_c)} (medians)")
        for r in range(args.rounds):
            got: dict[tuple[Any, ...], tuple[float, int, dict[str, Any]]] = {}

            def hold(i: int, r: int = r, got: dict[Any, Any] = got) -> None:
                got["hold", i] = post("/v1/hold", receipt(f"h{r}-{i}", ANNA, redeem=10))

            def confirm(i: int, k: int, r: int = r, got: dict[Any, Any] = got) -> None:
                got["confirm", i, k] = post("/v1/confirm", {"receiptId": f"h{r}-{i}"})

            holds = [threading.Thread(target=hold, args=(i,)) for i in range(args.holds)]
            for t in holds:
                t.start()
            time.sleep(0.03)
            confirms = [
                threading.Thread(target=confirm, args=(i, k))
                for i in range(args.holds)
                for k in range(args.confirms)
            ]
            for t in confirms:
                t.start()
            time.sleep(0.02)
            other: dict[str, float] = {}
            checker = threading.Thread(
                target=lambda o=other, r=r: o.update(
                    checkout=post("/v1/checkout", receipt(f"other-{r}", ANNA))[0]
                )
            )
            checker.start()
            other["healthz"] = healthz()
            other["quote"] = post("/v1/quote", receipt(f"q-{r}", ANNA))[0]
            for t in [*holds, *confirms, checker]:
                t.join()
            held = sorted(ms(v[0]) for k, v in got.items() if k[0] == "hold")
            done = sorted(v[0] for k, v in got.items() if k[0] == "confirm")
            codes = sorted({v[1] for k, v in got.items() if k[0] == "confirm"})
            waited = f"{ms(done[0])}..{ms(done[-1])} {codes}" if done else "none"
            print(
                f"round {r}: holds {held}; confirms {waited};"
                f" the other client: /healthz {ms(other['healthz'])}, quote"
                f" {ms(other['quote'])}, checkout {ms(other['checkout'])}"
            )
            time.sleep(0.5)
    finally:
        door.stop()
        till.stop()
        hub.stop()


if __name__ == "__main__":
    main()
