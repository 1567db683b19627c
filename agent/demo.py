"""`tillpoint demo`: a store's day on one machine, on embedded defaults, told step by step.

The demo drives the same `Agent` the POS drives: it seeds a fresh data directory with the
embedded chain (`demo_data`), then identifies cards and phones, quotes baskets as items
are scanned, commits receipts with offers and redemption, refunds one, and ends with a
summary. It exits 0 when every step behaved as the contract says.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from .config import Settings
from .demo_data import chain
from .errors import TillpointError
from .money import format_minor
from .service import Agent

ZONE = ZoneInfo("Europe/Moscow")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo",
        help="a whole store on one machine: a scripted day of checkouts",
        description=(
            "Runs a store's day on embedded demo data in a throw-away data directory: "
            "card and phone identification, quotes, checkouts with personal offers and "
            "redemption, a refund, and a summary. Nothing outside that directory is touched."
        ),
    )
    p.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="seconds to pause between steps (default 0: as fast as it goes)",
    )
    p.add_argument("--tills", type=int, default=1, choices=(1, 2), help="number of tills")
    p.add_argument("--keep", action="store_true", help="keep the demo's data directory")
    p.add_argument("--seed", type=int, default=7, help="seed of the embedded chain")
    p.set_defaults(handler=run_demo)


class Story:
    def __init__(self, speed: float, out: Callable[[str], None] = print) -> None:
        self.speed = speed
        self.out = out
        self.step = 0

    def say(self, text: str) -> None:
        self.out(text)

    def heading(self, text: str) -> None:
        self.step += 1
        if self.speed:
            time.sleep(self.speed)
        self.out(f"\n── {self.step}. {text}")


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    keep = bool(getattr(args, "keep", False))
    root = Path(tempfile.mkdtemp(prefix="tillpoint-demo-"))
    try:
        return play(
            root,
            speed=float(getattr(args, "speed", 0.0)),
            tills=int(args.tills),
            seed=int(args.seed),
        )
    finally:
        if keep:
            print(f"\n(demo data kept in {root})")
        else:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


def play(
    root: Path,
    *,
    speed: float = 0.0,
    tills: int = 1,
    seed: int = 7,
    out: Callable[[str], None] = print,
) -> int:
    story = Story(speed, out)
    today = datetime.now(ZONE).date()
    snap = chain(today, seed=seed)
    products = {p["sku"]: p for p in snap["products"]}
    food = [p for p in snap["products"] if not p.get("excludedFromLoyalty")]
    tobacco = next(p for p in snap["products"] if p["category"] == "tobacco")
    anna, anna_card = snap["customers"][0], snap["cards"][0]["number"]
    boris_phone = snap["customers"][1]["phone"]
    blocked_card = snap["cards"][3]["number"]
    agents = [Agent(root / f"till-{n + 1}", f"demo-till-{n + 1}") for n in range(tills)]
    totals = {"receipts": 0, "earned": 0, "redeemed": 0, "refunds": 0}

    def at(hour: int, minute: int) -> str:
        return (
            datetime.combine(today, datetime.min.time(), ZONE)
            .replace(hour=hour, minute=minute)
            .isoformat()
        )

    try:
        story.heading("The hub's snapshot is loaded on every till")
        for agent in agents:
            info = agent.load_snapshot(snap)
            story.say(
                f"  {agent.device_id}: snapshot version {info.version}: "
                f"{len(snap['products'])} products, {len(snap['customers'])} customers, "
                f"{len(snap['offers'])} offers"
            )
        till = agents[0]

        story.heading(f"Anna shows her card {anna_card}")
        card = till.identify(anna_card)
        story.say(f"  → {card['status']}: {card['firstName']}, tier {card['tier']}")
        anna_offers = [o for o in snap["offers"] if o.get("customerId") == anna["id"]]
        basket: list[dict[str, Any]] = []
        money = [o for o in anna_offers if o["kind"] in ("PERCENT_OFF", "AMOUNT_OFF")]
        favourite = products[money[0]["skus"][0]]
        for product, qty in ((favourite, "2"), (food[0], "1"), (food[5], "1.250"), (tobacco, "1")):
            basket.append(
                {"sku": product["sku"], "qty": qty, "priceMinor": 4990 + 1000 * len(basket)}
            )
            quote = till.quote(_receipt("demo-1", anna_card, at(10, 15), basket, 0))
            story.say(
                f"  scan {product['name']} × {qty}: total "
                f"{format_minor(quote['totalMinor'])}, to pay "
                f"{format_minor(quote['payableMinor'])}  [display: "
                f"{' | '.join(quote['display'])}]"
            )

        story.heading("Anna pays, spending as many points as the rules allow")
        result = till.checkout(_receipt("demo-1", anna_card, at(10, 16), basket, -1))
        _tell_result(story, result, products)
        totals["receipts"] += 1
        totals["earned"] += result["earnedPoints"]
        totals["redeemed"] += result["redeemedPoints"]
        again = till.checkout(_receipt("demo-1", anna_card, at(10, 16), basket, -1))
        story.say(
            f"  the POS retries the same receipt: same answer "
            f"({'yes' if again == result else 'NO'}), nothing counted twice"
        )

        story.heading(f"Boris gives his phone number {boris_phone[:5]}…{boris_phone[-2:]}")
        phone_text = "8" + boris_phone[2:]
        card = till.identify(phone_text)
        story.say(f"  → {card['status']}: {card.get('firstName', '')}")
        held = next(o for o in snap["offers"] if o.get("customerId") == "c-0002")
        boris_skus = [held["skus"][0]] + [p["sku"] for p in food[3::41]]
        boris_basket = [
            {"sku": sku, "qty": "1", "priceMinor": 15000 + 1700 * i}
            for i, sku in enumerate(boris_skus)
        ]
        result = agents[-1].checkout(_receipt("demo-2", phone_text, at(11, 40), boris_basket, 0))
        _tell_result(story, result, products)
        totals["receipts"] += 1
        totals["earned"] += result["earnedPoints"]

        story.heading("A blocked card and a mistyped card are refused; the sale goes on")
        for text in (blocked_card, anna_card[:-1] + str((int(anna_card[-1]) + 1) % 10)):
            try:
                till.checkout(_receipt("demo-x", text, at(12, 0), basket[:1], 0))
                story.say("  UNEXPECTED: accepted")
                return 1
            except TillpointError as exc:
                story.say(f"  {text}: {exc}")

        story.heading("Anna brings one item back the next morning")
        tomorrow = (
            datetime.combine(today + timedelta(days=1), datetime.min.time(), ZONE).replace(hour=9)
        ).isoformat()
        refund = till.refund(
            {
                "refundId": "demo-r1",
                "receiptId": "demo-1",
                "at": tomorrow,
                "lines": [{"sku": favourite["sku"], "qty": "1"}],
            }
        )
        story.say(
            f"  {refund['returnedPoints']} points given back, "
            f"{refund['takenBackPoints']} taken back; balance "
            f"{refund['balance']['availablePoints']}"
        )
        totals["refunds"] += 1

        story.heading("The day's summary")
        for agent in agents:
            status = agent.status()
            story.say(
                f"  {agent.device_id}: last seq {status['lastSeq']}, "
                f"{status['outboxDepth']} transactions waiting for the hub, "
                f"{status['printQueueDepth']} coupon job(s) queued"
            )
        story.say(
            f"  receipts {totals['receipts']}, refunds {totals['refunds']}, "
            f"points earned {totals['earned']}, points redeemed {totals['redeemed']}"
        )
        balance = till.balance(anna_card)
        story.say(
            f"  Anna's balance now: {balance['availablePoints']} "
            f"(+{balance['pendingPoints']} pending)"
        )
        story.say("\nDemo finished: every step behaved as the contract says.")
        return 0
    finally:
        for agent in agents:
            agent.close()


def _receipt(
    receipt_id: str, card: str, at: str, lines: list[dict[str, Any]], redeem: int
) -> dict[str, Any]:
    return {
        "receiptId": receipt_id,
        "storeId": "demo-store",
        "tillId": "t1",
        "at": at,
        "card": card,
        "lines": lines,
        "redeemPoints": redeem,
    }


def _tell_result(story: Story, r: dict[str, Any], products: dict[str, Any]) -> None:
    for line in r["lines"]:
        name = products[line["sku"]]["name"]
        extra = f", offer {line['offerId']}" if line["offerId"] else ""
        story.say(
            f"  {name:<42.42} {format_minor(line['amountMinor']):>10}"
            f"  −{format_minor(line['discountMinor'])}{extra}"
            f"  +{line['earnedPoints']} pts"
        )
    story.say(
        f"  total {format_minor(r['totalMinor'])}, discounts "
        f"{format_minor(r['discountMinor'])}, points spent {r['redeemedPoints']}, "
        f"to pay {format_minor(r['payableMinor'])}; earned {r['earnedPoints']} points"
    )
    if r["balance"]:
        story.say(
            f"  balance {r['balance']['availablePoints']}; display: {' | '.join(r['display'])}"
        )
    if r["printedOffers"]:
        story.say(f"  coupons for the next visit: {', '.join(r['printedOffers'])}")
    if r["heldOut"]:
        story.say(f"  held out for the control group: {', '.join(r['heldOut'])}")


__all__ = ["date", "play", "register"]
