"""Outage probe (long21): shipped defaults; what recovers how fast after the hub is back."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import difflong as D
from bench import difflong_hub as H


def main(work: Path, outage_s: float) -> None:
    import shutil

    from tillpoint.sync.loopback import LoopbackHub

    from bench.faults import free_port

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    root, data = work / "hub", work / "data"
    setup = LoopbackHub(root, data=H.master(D.SNAPSHOT), start=False)
    port = free_port()
    setup.port = port
    setup.enroll(D.DEVICE, data)
    setup.server.store.close()
    hub = H.HubProc(root, port, work / "hub.log")
    hub.start()
    ll = D.LongLived(work, data)

    def status() -> dict:
        import http.client

        c = http.client.HTTPConnection("127.0.0.1", ll.http_port, timeout=30)
        try:
            c.request("GET", "/v1/status")
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def hub_hold(rid: str) -> str | None:
        row = (
            sqlite3.connect(root / "hub.db")
            .execute("SELECT state FROM holds WHERE receipt_id = ?", (rid,))
            .fetchone()
        )
        return row[0] if row else None

    try:
        while status()["cacheVersion"] < 1:
            time.sleep(0.1)
        now = datetime.now(UTC).isoformat()

        def rec(rid: str) -> dict:
            return {
                "receiptId": rid,
                "storeId": "s1",
                "tillId": "t1",
                "at": now,
                "card": "2770000000055",
                "lines": [{"sku": D.MILK, "qty": "3", "priceMinor": 8990}],
                "redeemPoints": 20,
            }

        # a hold the hub knows, cancelled while the hub is away
        got = ll.http("/v1/hold", rec("h-1"))
        print(
            "hold h-1:", got[1].get("mode"), got[1].get("redeemedPoints"), "hub:", hub_hold("h-1")
        )
        hub.kill()
        t_kill = time.monotonic()
        print(
            "cancel h-1 during the outage:",
            ll.http("/v1/cancel", {"receiptId": "h-1"})[1].get("state"),
        )
        # sales during the outage
        for i in range(5):
            ll.http("/v1/checkout", rec(f"o-{i}") | {"redeemPoints": 0})
        time.sleep(outage_s)
        hub.start()
        t_back = time.monotonic()
        print(f"hub down {t_back - t_kill:.1f} s")
        marks: dict[str, float] = {}
        published = False
        while time.monotonic() - t_back < 120 and len(marks) < 4:
            st = status()
            t = time.monotonic() - t_back
            if "online" not in marks and st["mode"] == "ONLINE":
                marks["online"] = t
            if "drained" not in marks and st["outboxDepth"] == 0:
                marks["drained"] = t
            if "released" not in marks and hub_hold("h-1") != "ACTIVE":
                marks["released"] = t
            if "online" in marks and not published:
                before = st["cacheVersion"]
                H.hub_cli(root, "import", str(work / "imp.json"), "--publish") if (
                    work / "imp.json"
                ).write_text(
                    json.dumps(
                        {
                            "offers": [
                                {
                                    "id": "m-new",
                                    "kind": "PERCENT_OFF",
                                    "skus": [D.BUN],
                                    "value": "3",
                                }
                            ]
                        }
                    )
                ) else None
                t_pub = time.monotonic()
                published = True
            if published and "pushed" not in marks and st["cacheVersion"] > before:
                marks["pushed"] = time.monotonic() - t_pub
            time.sleep(0.05)
        print("after the hub is back (s):", {k: round(v, 2) for k, v in marks.items()})
        time.sleep(3)
        print("status:", json.dumps(status(), ensure_ascii=False))
    finally:
        ll.stop()
        hub.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]))
