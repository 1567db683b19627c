"""`tillpoint demo`: a whole store on one machine, on embedded defaults, told step by step.

Everything is the real thing, on loopback: a reference hub (its own SQLite store, CA and
signing key) seeded with the embedded chain (`demo_data`), one or more tills enrolled
over mTLS that pull signed snapshots and push their journal, a virtual receipt printer
(a port-9100 listener that decodes each coupon it receives) and a virtual 2 × 20 pole
display on a pseudo-terminal (when socat is installed). The day: card and phone
identification, quotes as items are scanned, checkouts with personal offers and online
redemption, a refund, the hub going away (the tills keep selling offline, redemption
capped), the hub coming back (outboxes drain, balances agree), a new offer snapshot
pushed to the tills, and the afternoon's offers: a sorry-bonus coupon the hub lets the chain
use once, a next-visit coupon printed with a one-time code and scanned back, "3 for 2", a
happy hour, points about to expire on the display, and an explained quote. It exits 0 when
every step behaved as the contract says.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from .demo_data import chain
from .errors import InputError, TillpointError

if TYPE_CHECKING:  # `tillpoint --help` must not import pydantic (agent/app.py)
    from .config import Settings
    from .results import CheckoutResult, TillStatus
from tillpoint.printer.text import format_money

ZONE = ZoneInfo("Europe/Moscow")
Out = Callable[[str], None]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo",
        help="a whole store on one machine: hub, tills, printer, display, a scripted day",
        description=(
            "Runs a store's day on embedded demo data, all on this machine and on loopback: "
            "a reference hub, tills enrolled over mTLS, a virtual receipt printer and a "
            "virtual customer display. Identification by card and phone, quotes, checkouts "
            "with offers and redemption, a refund, a hub outage and its recovery, and a new "
            "offer snapshot. Nothing outside a temporary directory is touched."
        ),
    )
    p.add_argument(
        "--speed",
        type=_pause,
        default=0.0,
        help="seconds to pause between steps, to follow along (default 0: full speed)",
    )
    p.add_argument("--tills", type=int, default=2, choices=(1, 2, 3), help="number of tills")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="after the day, keep the hub, tills and devices up until Ctrl-C",
    )
    p.add_argument("--keep", action="store_true", help="keep the demo's directory afterwards")
    p.add_argument("--seed", type=int, default=7, help="seed of the embedded chain")
    p.add_argument(
        "--hub-store",
        default="",
        metavar="URL",
        help="play the day with the hub on this PostgreSQL database (postgresql://...; it"
        " must hold no hub yet); default: a SQLite file in the demo's directory",
    )
    p.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="write the demo's data as the files of examples/ (a snapshot, receipts, a refund,"
        " a hub catalogue) into DIR and exit, without playing the day",
    )
    p.set_defaults(handler=run_demo)


def _pause(text: str) -> float:
    """`--speed`: seconds from 0 to 60. NaN, a negative or an infinite pause failed at the
    first step, the hub and tills already started ("internal error", exit 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 60:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"{text!r}: a pause from 0 to 60 seconds")
    return value


def export(directory: Path, *, seed: int = 7, out: Out = print) -> list[Path]:
    """`demo --export DIR`: the demo's chain and day as example files, dated today."""
    from .demo_data import example_files
    from .files import write_whole

    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: not a directory")
    path = directory  # the file being written when a write fails
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, doc in example_files(datetime.now(ZONE).date(), seed=seed).items():
            path = directory / name
            write_whole(path, (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode())
            written.append(path)
    except OSError as exc:  # a full disk or `ulimit -f`: exit 1 (review 40, rev40c)
        from .db import write_refused

        raise write_refused(path, exc, f"{directory}: cannot write the files") from None
    out(f"wrote {len(written)} files to {directory}: " + ", ".join(p.name for p in written))
    return written


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    if args.export is not None:
        export(args.export, seed=int(args.seed))
        return 0
    if args.hub_store:
        _empty_hub_store(args.hub_store)
    root = Path(tempfile.mkdtemp(prefix="tillpoint-demo-"))
    try:
        return play(
            root,
            speed=float(args.speed),
            tills=int(args.tills),
            seed=int(args.seed),
            keep_running=bool(args.keep_running),
            hub_store=str(args.hub_store),
        )
    finally:
        if args.keep:
            print(f"\n(demo files kept in {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _empty_hub_store(url: str) -> None:
    """The demo plays its day on a PostgreSQL database only while it holds no hub (a
    production hub's database is never written by a demo)."""
    from tillpoint.sync.hub_postgres import PostgresHubStore, is_postgres_url

    if not is_postgres_url(url):
        # a mistyped scheme's URL ("postgressql://user:pw@…") is named by its scheme only,
        # never its password (review 58, rev58), as `HubDir` names it
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
        shown = f"'{scheme.group(1)}://…'" if scheme else repr(url)
        raise InputError(f"--hub-store must be a postgresql:// URL, not {shown}")
    store = PostgresHubStore(url, migrate_schema=True)
    try:
        if store.latest() is not None or store.draft_size():
            raise InputError("--hub-store: that database already holds a hub; give an empty one")
    finally:
        store.close()


class DemoFailed(Exception):
    """A step did not behave as the contract says."""


class Story:
    def __init__(self, speed: float, out: Out) -> None:
        self.speed, self.out, self.step = speed, out, 0
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            self.out(text)

    def heading(self, text: str) -> None:
        if self.speed:
            time.sleep(self.speed)
        self.step += 1
        self.say(f"\n── {self.step}. {text}")

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            raise DemoFailed(what)


# ---------------------------------------------------------------- virtual devices


class DisplayWatcher:
    """Reads the pole display's pseudo-terminal and tells the story what the customer sees."""

    def __init__(self, directory: Path, story: Story) -> None:
        from tillpoint.printer.virtual_display import DisplayScreen, PtyPair

        self.pair = PtyPair(directory)
        self.screen = DisplayScreen("epson")
        self.story = story
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.shown: list[list[str]] = []

    def start(self) -> Path:
        import serial
        from tillpoint.printer.transport import open_serial

        self.pair.start()
        port = open_serial(str(self.pair.peer), read_timeout_s=0.1)

        def run() -> None:
            last: list[str] = []
            try:
                while not self._stop.is_set():
                    try:
                        data = port.read(256)
                    except (OSError, serial.SerialException):
                        return  # the pty went away (Ctrl-C reaches socat too)
                    if data:
                        self.screen.feed(data)
                    elif self.screen.lines != last and any(self.screen.lines):
                        last = list(self.screen.lines)
                        self.shown.append(last)
                        self.story.say("     ┌" + "─" * 20 + "┐  display")
                        for line in last:
                            self.story.say(f"     │{line:<20}│")
                        self.story.say("     └" + "─" * 20 + "┘")
            finally:
                port.close()

        self._thread = threading.Thread(target=run, name="demo-display", daemon=True)
        self._thread.start()
        return self.pair.device

    def settle(self, timeout: float = 2.0) -> None:
        """Wait until the display has shown what it was sent."""
        deadline = time.monotonic() + timeout
        count = len(self.shown)
        while time.monotonic() < deadline:
            time.sleep(0.15)
            if len(self.shown) > count:
                count = len(self.shown)
                deadline = min(deadline, time.monotonic() + 0.3)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.pair.stop()


@contextlib.contextmanager
def devices_for(data_dir: Path, root: Path, story: Story) -> Iterator[tuple[Any, Any, Any]]:
    """A virtual printer and (with socat) a virtual display for the till in `data_dir`, as
    `run` builds them: running `Devices`, for the till's agent to be built with."""
    from tillpoint.printer.config import DisplayConfig, PrinterConfig, ScannerConfig
    from tillpoint.printer.render import render_text
    from tillpoint.printer.service import Devices
    from tillpoint.printer.virtual import VirtualPrinter
    from tillpoint.printer.virtual_display import PtyPair

    def coupon(doc: Any) -> None:
        story.say("     ╔═ the receipt printer prints ══════════════════╗")
        for line in render_text(doc, 48).rstrip("\n").splitlines():
            story.say(f"     ║ {line}")
        story.say(f"     ╚═ scan codes: {', '.join(doc.codes) or '-'}")

    printer = VirtualPrinter(columns=48, on_document=coupon)
    port = printer.start()
    watcher = DisplayWatcher(root / "display", story) if PtyPair.available() else None
    display = DisplayConfig()
    if watcher is not None:
        display = DisplayConfig(kind="serial", device=str(watcher.start()), refresh_s=3600)
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    devices = Devices(
        Path(data_dir) / "ledger.db",
        PrinterConfig(kind="network", host="127.0.0.1", port=port, retry_base_s=0.2),
        display,
        ScannerConfig(),
    )
    devices.start()
    try:
        yield printer, watcher, devices
    finally:
        devices.stop()
        if watcher is not None:
            watcher.stop()
        printer.stop()


# ---------------------------------------------------------------- the day


def play(
    root: Path,
    *,
    speed: float = 0.0,
    tills: int = 2,
    seed: int = 7,
    keep_running: bool = False,
    out: Out = print,
    hub_store: str = "",
) -> int:
    story = Story(speed, out)
    try:
        _day(root, story, tills, seed, keep_running, hub_store)
    except (DemoFailed, TillpointError, TimeoutError) as exc:
        story.say(f"\nDEMO FAILED: {exc}")
        return 1
    story.say("\nDemo finished: every step behaved as the contract says.")
    return 0


def _day(
    root: Path, story: Story, n_tills: int, seed: int, keep_running: bool, hub_store: str = ""
) -> None:
    from tillpoint.sync.loopback import LoopbackHub, import_doc, timings

    from .results import receipt_from_json

    today = datetime.now(ZONE).date()
    master = chain(today, seed=seed)
    for key in ("version", "baseVersion", "issuedAt"):
        master.pop(key, None)
    products = {p["sku"]: p for p in master["products"]}
    food = [p for p in master["products"] if not p.get("excludedFromLoyalty")]
    tobacco = next(p for p in master["products"] if p["category"] == "tobacco")
    anna, boris = master["customers"][0], master["customers"][1]
    anna_card, boris_card = master["cards"][0]["number"], master["cards"][1]["number"]
    blocked_card = master["cards"][3]["number"]

    def at(hour: int, minute: int, days: int = 0) -> str:
        moment = datetime.combine(today + timedelta(days=days), datetime.min.time(), ZONE)
        return moment.replace(hour=hour, minute=minute).isoformat()

    story.heading("The chain's hub starts, with its master data")
    hub = LoopbackHub(root / "hub", data=master, store=hub_store)  # "": hub.db, never $ENV
    story.say(
        f"  hub on {hub.address} (gRPC over mTLS, its own CA and Ed25519 signing key): "
        f"{len(master['products'])} products in {len(master['categories'])} categories, "
        f"{len(master['customers'])} customers, {len(master['offers'])} offers"
    )
    tills = []
    # The first till's virtual printer and display, given to its agent when it is built
    # (`app.till_agent`, as `run` does) and running while the day's sales are rung up.
    devices_of_till1 = contextlib.ExitStack()
    try:
        printer, watcher, devices = devices_of_till1.enter_context(
            devices_for(root / "till1", root, story)
        )
        story.heading(f"{n_tills} till(s) are enrolled and pull their signed snapshot")
        for n in range(n_tills):
            till = hub.till(
                f"store1-till{n + 1}",
                root / f"till{n + 1}",
                devices=devices if n == 0 else None,
                # A whole store on one machine, perhaps under a test runner's load (the hub
                # on PostgreSQL too): its answers get 2 s, not a till's 300 ms, so a slow
                # moment does not turn the day's scripted online steps into offline ones.
                timings=timings(redeem_timeout_s=DEMO_REDEEM_TIMEOUT_S),
            )
            tills.append(till)
        for till in tills:
            _until(till, lambda s: s.cache_version >= 1 and s.mode == "ONLINE")
            status = till.agent.status()
            story.say(
                f"  {till.device_id}: snapshot v{status.cache_version} verified and applied,"
                f" mode {status.mode}"
            )
        till, other = tills[0], tills[-1]
        with devices_of_till1:
            _sales(
                story,
                till,
                other,
                products,
                food,
                tobacco,
                anna,
                anna_card,
                boris,
                boris_card,
                blocked_card,
                at,
                watcher,
            )
            story.heading("The hub goes away (the store's link is down)")
            hub.stop()
            offline = till.agent.checkout(
                receipt_from_json(
                    _receipt("d-off-1", anna_card, at(14, 5), [_line(food[7], "2", 45000)] * 4, -1)
                )
            )
            story.say(
                f"  Anna pays with points again: mode {offline.mode}, "
                f"{offline.redeemed_points} points spent (offline limit "
                f"{master['program']['offlineRedeemLimitPoints']} a card a day)"
            )
            story.check(offline.mode == "OFFLINE", "the till should be OFFLINE")
            for i in range(3):
                other.agent.checkout(
                    receipt_from_json(
                        _receipt(
                            f"d-off-{i + 2}",
                            boris_card,
                            at(14, 10 + i),
                            [_line(food[10 + i], "1", 9900)],
                            0,
                        )
                    )
                )
            waiting = sum(t.agent.status().outbox_depth for t in tills)
            story.say(f"  the tills keep selling; {waiting} transactions wait in their outboxes")
            if watcher is not None:
                watcher.settle()

            story.heading("The hub comes back: the outboxes drain, balances agree")
            hub.restart()
            for t in tills:
                _until(t, lambda s: s.outbox_depth == 0)
            for t in tills:
                story.say(f"  {t.device_id}: outbox empty, mode {t.agent.status().mode}")
            version = hub.publish()  # balances folded in; appliedThrough per till
            for t in tills:
                _until(t, lambda s: s.cache_version >= version)
            story.say(
                f"  snapshot v{version} carries the new balances and each till's appliedThrough"
            )
            evening = datetime.fromisoformat(at(23, 59))  # after the day's last receipt
            for person, number in ((anna, anna_card), (boris, boris_card)):
                central = hub.store.balance(person["id"], evening).available
                local = [t.agent.balance(number, evening).available_points for t in tills]
                story.say(
                    f"  {person['firstName']}: hub {central} points; tills "
                    + ", ".join(str(x) for x in local)
                )
                story.check(all(x == central for x in local), "balances differ")
            entries = len(hub.store.ledger())
            journal = sum(t.agent.status().last_seq for t in tills)
            story.say(f"  hub ledger {entries} transactions = the tills' journals {journal}")
            story.check(entries == journal, "the hub's ledger and the journals differ")

            story.heading("Marketing publishes a new offer; the hub tells the tills at once")
            offer = {
                "id": "m-bread-25",
                "campaignId": "camp-bread",
                "kind": "PERCENT_OFF",
                "categories": ["bakery"],
                "value": "25",
                "validFrom": at(0, 0),
                "validTo": at(23, 59, days=7),
                "priority": 1,
            }
            import_doc(hub.store, {"offers": [offer]})
            version = hub.publish()
            for t in tills:
                _until(t, lambda s: s.cache_version >= version)
            story.say(f"  snapshot v{version} (a delta) pulled by every till")
            bread = next(p for p in food if p["category"] == "bakery")
            quote = till.agent.quote(
                receipt_from_json(
                    _receipt("d-new", anna_card, at(16, 0), [_line(bread, "1", 6000)], 0)
                )
            )
            story.say(
                f"  {bread['name']}: 60,00 → {format_money(quote.payable_minor)} "
                f"(offer {quote.lines[0].offer_id})"
            )
            story.check(quote.lines[0].offer_id == "m-bread-25", "new offer not applied")
            _afternoon(story, hub, till, other, master, at, printer)
            _summary(story, tills, hub, printer)
            if keep_running:
                story.say("\nEverything keeps running; press Ctrl-C to stop.")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
    finally:
        for t in tills:
            t.stop()
        devices_of_till1.close()
        hub.stop()


def _sales(
    story: Story,
    till: Any,
    other: Any,
    products: dict[str, Any],
    food: list[dict[str, Any]],
    tobacco: dict[str, Any],
    anna: dict[str, Any],
    anna_card: str,
    boris: dict[str, Any],
    boris_card: str,
    blocked_card: str,
    at: Callable[..., str],
    watcher: DisplayWatcher | None,
) -> None:
    from .results import receipt_from_json, refund_from_json

    agent = till.agent
    story.heading(f"Anna shows her loyalty card {anna_card} at {till.device_id}")
    card = agent.identify(anna_card)
    story.say(f"  → {card.status}: {card.first_name}, tier {card.tier}")
    story.check(card.status == "FOUND", "Anna's card should be found")
    if watcher is not None:
        watcher.settle()
    offers = [o for o in _offers_of(agent, anna["id"])]
    favourite = products[next(o for o in offers if o["kind"] == "PERCENT_OFF")["skus"][0]]
    basket: list[dict[str, Any]] = []
    for product, qty, price in (
        (favourite, "2", 12990),
        (food[0], "1", 8990),
        (food[5], "1.250", 19900),
        (tobacco, "1", 21900),
    ):
        basket.append(_line(product, qty, price))
        quote = agent.quote(receipt_from_json(_receipt("d-1", anna_card, at(10, 15), basket, 0)))
        story.say(
            f"  scan {product['name']} × {qty}: total {format_money(quote.total_minor)},"
            f" savings {format_money(quote.discount_minor)}"
        )
        if watcher is not None:
            watcher.settle(0.6)

    story.heading("Anna pays, spending as many points as allowed (the hub authorises them)")
    result = agent.checkout(receipt_from_json(_receipt("d-1", anna_card, at(10, 16), basket, -1)))
    _tell(story, result, products)
    story.check(result.mode == "ONLINE", "the hub should authorise online")
    story.check(bool(result.printed_offers), "Anna's next offers should print")
    if watcher is not None:
        watcher.settle()
    seq = agent.status().last_seq
    with _pos_client(agent) as pos:
        again = pos.checkout(_receipt("d-1", anna_card, at(10, 16), basket, -1))
    same = all(again[k] == result.to_json()[k] for k in FIGURES) and agent.status().last_seq == seq
    story.say(
        "  the POS sends the same receipt again over gRPC (tillpoint.agent.client, as after a"
        f" timeout on its side): same answer, nothing counted twice: {'yes' if same else 'NO'}"
    )
    story.check(same, "a replayed receipt must return the stored result")
    time.sleep(0.5)  # let the coupon print before the next story step

    phone = "8" + boris["phone"][2:]
    story.heading(f"Boris gives his phone number at {other.device_id}: {phone[:4]}…")
    card = other.agent.identify(phone)
    story.say(f"  → {card.status}: {card.first_name or ''}")
    held = next(o for o in _offers_of(other.agent, boris["id"]) if o["campaignId"] == "camp-autumn")
    lines = [_line(products[held["skus"][0]], "1", 15000)]
    lines += [_line(p, "1", 15000 + 1700 * i) for i, p in enumerate(food[3::41])]
    result = other.agent.checkout(receipt_from_json(_receipt("d-2", phone, at(11, 40), lines, 0)))
    _tell(story, result, products)
    story.check(held["id"] in result.held_out, "Boris is in the control group")

    story.heading(
        "A blocked card and a mistyped card are refused; the sale goes on without loyalty"
    )
    mistyped = anna_card[:-1] + str((int(anna_card[-1]) + 1) % 10)
    for text in (blocked_card, mistyped):
        try:
            agent.checkout(receipt_from_json(_receipt("d-x", text, at(12, 0), basket[:1], 0)))
        except TillpointError as exc:
            story.say(f"  {text}: {exc}")
        else:
            raise DemoFailed(f"card {text} should have been refused")

    story.heading("Anna brings one item back")
    refund = agent.refund(
        refund_from_json(
            {
                "refundId": "d-r1",
                "receiptId": "d-1",
                "at": at(13, 30),
                "lines": [{"sku": favourite["sku"], "qty": "1"}],
            }
        )
    )
    story.say(
        f"  {refund.returned_points} points given back, {refund.taken_back_points} taken back;"
        f" balance {refund.balance.available_points}"
    )


def _afternoon(
    story: Story,
    hub: Any,
    till: Any,
    other: Any,
    master: dict[str, Any],
    at: Callable[..., str],
    printer: Any,
) -> None:
    """Coupons, a 3-for-2, a happy hour, expiring points and an explained receipt (the
    contract §13–§17), on offers marketing imports in the afternoon."""
    from tillpoint.sync.loopback import import_doc

    from .demo_data import SORRY_CODE, offers_day
    from .results import receipt_from_json

    story.heading("Afternoon offers: a sorry bonus, 3 for 2, a happy hour, a next-visit coupon")
    import_doc(hub.store, offers_day(datetime.fromisoformat(at(0, 0)).date(), master))
    version = hub.publish()
    for t in {id(till): till, id(other): other}.values():
        _until(t, lambda s: s.cache_version >= version)
    story.say(
        f"  snapshot v{version}: 4 offers, Anna's coupon {SORRY_CODE}, Вера's expiring points"
    )
    products = {p["sku"]: p for p in master["products"]}
    by_category: dict[str, list[dict[str, Any]]] = {}
    for p in master["products"]:
        by_category.setdefault(p["category"], []).append(p)
    anna_card, vera_card = master["cards"][0]["number"], master["cards"][2]["number"]
    fruit, meat = by_category["fruit"][0], by_category["meat"][0]
    dairy, household = by_category["dairy"][0], by_category["household"][:3]

    story.heading(f"Anna scans her sorry-bonus coupon {SORRY_CODE} at {till.device_id}")
    routed = till.agent.scan(SORRY_CODE)
    story.say(f"  the scanner's text is a {routed.kind}: {routed.code}")
    story.check(routed.kind == "COUPON", "the sorry code should be routed as a coupon")
    printed = len(printer.complete)
    lines = [_line(dairy, "2", 9900), _line(by_category["bakery"][0], "1", 5900)]
    result = till.agent.checkout(
        receipt_from_json(
            _receipt("d-sorry", anna_card, at(17, 0), lines, 0)
            | {"coupons": till.agent.take_scanned_coupons()}
        )
    )
    _tell(story, result, products)
    verdict = result.coupons[0] if result.coupons else None
    assert verdict is not None, "the sale should carry its coupon's verdict"
    story.say(f"  coupon {verdict.code}: {verdict.status} ({result.mode})")
    story.check(verdict.status == "APPLIED", "the sorry bonus should apply")
    again = other.agent.checkout(
        receipt_from_json(
            _receipt("d-sorry-2", anna_card, at(17, 5), lines, 0) | {"coupons": [SORRY_CODE]}
        )
    )
    story.say(
        f"  the same code at {other.device_id}: {again.coupons[0].status}"
        f" {again.coupons[0].reason} (the hub authorises each code; one use in the chain)"
    )
    story.check(again.coupons[0].reason == "ALREADY_USED", "a coupon is used once")

    story.heading("The next-visit coupon printed for Anna is scanned back at her next visit")
    docs = printer.wait_for(printed + 1, timeout_s=10)
    codes = [c for d in docs[printed:] for c in d.codes if not c.startswith("TP1-")]
    story.check(bool(codes), "the next-visit coupon should print with a one-time code")
    routed = till.agent.scan(codes[0])
    story.say(f"  scanned {codes[0]} from the paper coupon: a {routed.kind} for {routed.offer_id}")
    visit = till.agent.checkout(
        receipt_from_json(
            _receipt("d-next", anna_card, at(19, 40), [_line(meat, "1", 30000)], 0)
            | {"coupons": till.agent.take_scanned_coupons()}
        )
    )
    _tell(story, visit, products)
    story.check(
        [v.status for v in visit.coupons or ()] == ["APPLIED"],
        "the printed coupon should apply",
    )

    story.heading("Вера buys 3 household items (3 for 2) and fruit in the happy hour")
    basket = [_line(p, "1", 25000 - 4000 * i) for i, p in enumerate(household)]
    basket.append(_line(fruit, "1", 12000))
    vera = other.agent.checkout(
        receipt_from_json(_receipt("d-vera", vera_card, at(18, 30), basket, 0))
    )
    _tell(story, vera, products)
    offers = [line.offer_id for line in vera.lines]
    story.check(offers.count("m-household-3for2") == 3, "the 3-for-2 should take the 3 items")
    story.check(offers[3] == "m-fruit-happy-hour", "the happy hour should apply at 18:30")
    story.say(f"  her display: {' / '.join(vera.display or ())}")
    story.check((vera.display or ("",))[0].startswith("Сгорят"), "the expiry warning should show")

    story.heading("The cashier asks why the fruit has no discount at 17:30: an explained quote")
    early = till.agent.quote(
        receipt_from_json(
            _receipt("d-why", anna_card, at(17, 30), [_line(fruit, "2", 12000)], 0)
            | {"explain": True}
        )
    )
    for row in (early.trace or {})["lines"][0]["offers"]:
        story.say(f"  {row['offerId']}: {row['outcome']}")
    for row in (early.trace or {})["receiptOffers"]:
        missing = f", {format_money(row['missingMinor'])} more" if row.get("missingMinor") else ""
        story.say(f"  {row['offerId']}: {row['outcome']}{missing}")
    story.say(f"  the display while it is priced: {' / '.join(early.display or ())}")
    outcomes = {r["offerId"]: r["outcome"] for r in (early.trace or {})["lines"][0]["offers"]}
    story.check(outcomes.get("m-fruit-happy-hour") == "OUTSIDE_WINDOW", "happy hour at 17:30")

    for t in {id(till): till, id(other): other}.values():
        _until(t, lambda s: s.outbox_depth == 0)
    conflicts = hub.store.coupon_conflicts()
    story.say(
        f"  the hub has every afternoon receipt; coupons used twice in the chain: {len(conflicts)}"
    )
    story.check(conflicts == [], "no coupon is used twice online")


# The demo's deadline for the hub's redemption answers (a till's default: 0.3 s).
DEMO_REDEEM_TIMEOUT_S = 2.0

FIGURES = (
    "receiptId",
    "totalMinor",
    "discountMinor",
    "redeemedPoints",
    "payableMinor",
    "earnedPoints",
    "balance",
    "printedOffers",
)


@contextlib.contextmanager
def _pos_client(agent: Any) -> Iterator[Any]:
    """The till's local PosAgent gRPC server, as `tillpoint run` serves it, and a client."""
    from .client import PosAgentClient
    from .server import build_server

    server, port, _ = build_server(agent, "127.0.0.1:0")
    server.start()
    try:
        with PosAgentClient(f"127.0.0.1:{port}", timeout=5.0) as client:
            yield client
    finally:
        server.stop(0).wait()


def _until(till: Any, condition: Callable[[TillStatus], bool], timeout: float = 30) -> None:
    """Wait until the till's status meets `condition` (TimeoutError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while not condition(till.agent.status()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{till.device_id} did not get there within {timeout:.0f} s")
        time.sleep(0.02)


def _offers_of(agent: Any, customer_id: str) -> list[dict[str, Any]]:
    from .cache import CacheView

    # under the agent's lock: its sync thread moves `_cache` to a new snapshot's file
    # (closing the old one) and its other threads use the connections (review 42)
    with agent._lock, CacheView.reading(agent._cache, agent._secret) as view:
        return [
            o.model_dump(mode="json", by_alias=True)
            for o in view.offers_for(customer_id)
            if o.customer_id == customer_id
        ]


def _summary(story: Story, tills: list[Any], hub: Any, printer: Any) -> None:
    story.heading("The day's summary")
    receipts = refunds = 0
    for t in tills:
        with t.agent._lock:  # the writer's connection: its other users hold the lock
            kinds = t.agent._ledger.execute("SELECT kind, count(*) FROM journal GROUP BY kind")
            counts = dict(kinds.fetchall())
        receipts += counts.get("CHECKOUT", 0)
        refunds += counts.get("REFUND", 0)
        s = t.agent.status()
        story.say(
            f"  {t.device_id}: {s.last_seq} transactions, outbox {s.outbox_depth},"
            f" snapshot v{s.cache_version}, mode {s.mode}, printer {s.printer_state}"
        )
    coupons = len(printer.complete)
    story.say(
        f"  {receipts} receipts and {refunds} refund(s), every one in the hub exactly once; "
        f"{coupons} coupon(s) printed"
    )
    story.check(coupons >= 1, "a coupon should have printed")


def _line(product: dict[str, Any], qty: str, price: int) -> dict[str, Any]:
    return {"sku": product["sku"], "qty": qty, "priceMinor": price}


def _receipt(
    receipt_id: str, card: str, at: str, lines: list[dict[str, Any]], redeem: int
) -> dict[str, Any]:
    return {
        "receiptId": receipt_id,
        "storeId": "store1",
        "tillId": "t1",
        "at": at,
        "card": card,
        "lines": lines,
        "redeemPoints": redeem,
    }


def _tell(story: Story, r: CheckoutResult, products: dict[str, Any]) -> None:
    for line in r.lines:
        name = products[line.sku]["name"]
        extra = f"  offer {line.offer_id}" if line.offer_id else ""
        story.say(
            f"  {name:<40.40} {format_money(line.amount_minor):>9}"
            f"  −{format_money(line.discount_minor)}{extra}  +{line.earned_points} pts"
        )
    story.say(
        f"  total {format_money(r.total_minor)}, discounts {format_money(r.discount_minor)},"
        f" points spent {r.redeemed_points}, to pay {format_money(r.payable_minor)};"
        f" earned {r.earned_points} points ({r.mode})"
    )
    if r.balance is not None:
        story.say(f"  balance now {r.balance.available_points} points")
    if r.printed_offers:
        story.say(f"  coupons for the next visit: {', '.join(r.printed_offers)}")
    if r.held_out:
        story.say(
            f"  held out (control group, for measuring the campaign): {', '.join(r.held_out)}"
        )
