"""A chain-sized dataset, deterministic from a seed, written as a JSON Lines snapshot.

Default scale: 1,000,000 customers and cards, 100,000 products in a category tree,
five personal offers per customer plus mass offers and deals; one customer in a thousand
(`heavy`) has 50 personal offers (three of them basket deals) and five coupons. Rows are
written as they are made, so memory stays flat whatever the scale.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

FORMAT = "tillpoint.snapshot/jsonl"
VALID_FROM = "2026-11-01T00:00:00+03:00"
VALID_TO = "2026-12-31T23:59:59+03:00"


@dataclass(frozen=True)
class Scale:
    customers: int
    products: int
    offers_per_customer: int = 5
    mass_offers: int = 200

    @classmethod
    def named(cls, name: str) -> Scale:
        return {
            "chain": cls(1_000_000, 100_000),
            "store": cls(100_000, 20_000),
            "quick": cls(5_000, 2_000, mass_offers=50),
            "tiny": cls(300, 200, mass_offers=10),
        }[name]


def ean13(body12: str) -> str:
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body12))
    return body12 + str((10 - total % 10) % 10)


def sku(n: int) -> str:
    return ean13(f"46{n:010d}")


def card(n: int) -> str:
    return ean13(f"27{n:010d}")


def personal_sku(scale: Scale, customer: int, k: int) -> str:
    """The sku of customer `customer`'s personal offer `k`: spread over the products and
    known to the bench without the dataset, so its baskets can hit personal offers."""
    return sku((customer * 7919 + k * 104_729) % scale.products)


def category_tree() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for top in range(10):
        rows.append({"code": f"c{top}", "name": f"Отдел {top}"})
        for mid in range(10):
            rows.append({"code": f"c{top}{mid}", "parent": f"c{top}", "name": f"Группа {top}{mid}"})
            for leaf in range(5):
                rows.append(
                    {
                        "code": f"c{top}{mid}{leaf}",
                        "parent": f"c{top}{mid}",
                        "name": f"Подгруппа {top}{mid}{leaf}",
                    }
                )
    return rows


LEAVES = [f"c{t}{m}{leaf}" for t in range(10) for m in range(10) for leaf in range(5)]


# The customers `bench.hub` redeems on from 100 tills (500 calls of 10 points each, closed
# loop and paced): a balance for 450 of them, so that most calls grant and hold points,
# as a hot card's do, and the last ones meet an empty balance (the exactness check).
HOT_CARDS = ("c0", "c1")
HOT_BALANCE = 4500


def _customers(rng: random.Random, scale: Scale) -> Iterator[dict[str, Any]]:
    tiers = ["base", "silver", "gold"]
    segments = ["NEW", "ACTIVE", "AT_RISK", "CHURNED"]
    for n in range(scale.customers):
        row: dict[str, Any] = {
            "id": f"c{n}",
            "firstName": "Анна",
            "tier": tiers[n % 3],
            "birthday": f"19{70 + n % 30}-{1 + n % 12:02d}-{1 + n % 28:02d}",
            "phone": f"+79{n:09d}",
            "balancePoints": rng.randrange(0, 5000),
            "segment": segments[n % 4],
        }
        if n < len(HOT_CARDS):  # the hub bench's hot cards (the draw above keeps the others')
            row["balancePoints"] = HOT_BALANCE
        if n % 10 == 0:
            row["controlGroups"] = ["camp-ctl"]
        yield row


def _offers(rng: random.Random, scale: Scale) -> Iterator[dict[str, Any]]:
    kinds = ["PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "BONUS_MULTIPLIER", "PERCENT_OFF"]
    values = {
        "PERCENT_OFF": "15",
        "AMOUNT_OFF": "1000",
        "FIXED_PRICE": "5000",
        "BONUS_MULTIPLIER": "3",
    }
    for n in range(scale.customers):
        for k in range(scale.offers_per_customer):
            kind = kinds[k]
            yield {
                "id": f"p{n}-{k}",
                "campaignId": "camp-ctl" if k == 0 else f"camp-{k}",
                "customerId": f"c{n}",
                "kind": kind,
                "skus": [personal_sku(scale, n, k)],
                "value": values[kind],
                "validFrom": VALID_FROM,
                "validTo": VALID_TO,
                "priority": k,
                "rank": k + 1,
                "printable": True,
                "printText": f"Ваше предложение {k + 1}",
            }
        if heavy(n):
            yield from _heavy_offers(scale, n)
    for m in range(scale.mass_offers):
        row: dict[str, Any] = {
            "id": f"m{m}",
            "campaignId": f"camp-mass-{m % 7}",
            "kind": "PERCENT_OFF" if m % 3 else "BONUS_MULTIPLIER",
            "categories": [LEAVES[m % len(LEAVES)]],
            "value": "5" if m % 3 else "2",
            "validFrom": VALID_FROM,
            "validTo": VALID_TO,
            "priority": 50,
        }
        if m % 10 == 0:  # basket deals: buy 2 get 1, and a price for 3 or more
            row.pop("value")
            row.update(kind="MULTIBUY", buyQty="2", freeQty="1")
        elif m % 10 == 5:
            row.pop("value")
            row.update(kind="QUANTITY_PRICE", tiers=[{"minQty": "3", "unitPriceMinor": 900}])
        if m % 20 == 7:  # a happy hour on weekdays
            row.update(weekdays=[1, 2, 3, 4, 5], hours=[{"from": "08:00", "to": "22:00"}])
        yield row
    for k in range(COUPON_OFFERS):  # unlocked by a customer's coupon (section "coupons")
        yield {
            "id": f"mcoupon-{k}",
            "campaignId": "camp-coupon",
            "kind": "AMOUNT_OFF",
            "categories": [LEAVES[(k * 37) % len(LEAVES)]],
            "value": "500",
            "validFrom": VALID_FROM,
            "validTo": VALID_TO,
            "couponRequired": True,
        }


COUPON_OFFERS = 5
COUPON_EVERY = 10  # one customer in ten holds a coupon


def coupon(customer: int) -> str | None:
    """The code of the coupon customer `customer` holds, if any."""
    return f"CPN{customer:09d}" if customer % COUPON_EVERY == 0 else None


def _coupons(scale: Scale) -> Iterator[dict[str, Any]]:
    for n in range(0, scale.customers, COUPON_EVERY):
        yield {
            "code": coupon(n),
            "offerId": f"mcoupon-{n // COUPON_EVERY % COUPON_OFFERS}",
            "customerId": f"c{n}",
            "validFrom": VALID_FROM,
            "validTo": VALID_TO,
        }
    for n in range(HEAVY_FIRST, scale.customers, HEAVY_EVERY):
        for k, code in enumerate(heavy_coupons(n)):  # one for each coupon offer
            yield {
                "code": code,
                "offerId": f"mcoupon-{k}",
                "customerId": f"c{n}",
                "validFrom": VALID_FROM,
                "validTo": VALID_TO,
            }


# ---------------------------------------------------------------- heavy customers
# One customer in HEAVY_EVERY (none of them a coupon holder above nor in a control group)
# has HEAVY_OFFERS personal offers in all, the last three of them basket deals on SKUs of
# categories with no mass offer (`quiet_products`), and a coupon for each coupon offer.

HEAVY_EVERY = 1000
HEAVY_FIRST = 1
HEAVY_OFFERS = 50
HEAVY_DEALS = 3


def heavy(customer: int) -> bool:
    return customer % HEAVY_EVERY == HEAVY_FIRST


def heavy_coupons(customer: int) -> list[str]:
    return [f"CPH{customer:09d}{k}" for k in range(COUPON_OFFERS)]


@functools.cache  # (per scale: the chain's generator asks for it 3,000 times)
def quiet_products(scale: Scale) -> list[int]:
    """Products whose category has no mass offer, deal or coupon offer (and that take part
    in the loyalty programme): a line of one gets only personal offers."""
    low = max(scale.mass_offers, max((k * 37) % len(LEAVES) for k in range(COUPON_OFFERS)) + 1)
    return [n for n in range(scale.products) if n % len(LEAVES) >= low and n % 97]


def heavy_deal_sku(scale: Scale, customer: int, j: int) -> str:
    """The SKU of heavy customer `customer`'s basket deal `j` (0 … HEAVY_DEALS − 1)."""
    quiet = quiet_products(scale)
    return sku(quiet[(customer * 31 + j * 7) % len(quiet)])


def coupon_product(scale: Scale, k: int, pick: int) -> str:
    """A product in the category coupon offer `k` targets."""
    choices = _coupon_products(scale, k)
    return sku(choices[pick % len(choices)])


@functools.cache
def _coupon_products(scale: Scale, k: int) -> list[int]:
    leaf = (k * 37) % len(LEAVES)
    return [n for n in range(leaf, scale.products, len(LEAVES)) if n % 97] or [leaf]


def _heavy_offers(scale: Scale, n: int) -> Iterator[dict[str, Any]]:
    kinds = ["PERCENT_OFF", "AMOUNT_OFF", "BONUS_MULTIPLIER"]
    values = {"PERCENT_OFF": "10", "AMOUNT_OFF": "300", "BONUS_MULTIPLIER": "2"}
    base = {"customerId": f"c{n}", "validFrom": VALID_FROM, "validTo": VALID_TO}
    for k in range(scale.offers_per_customer, HEAVY_OFFERS - HEAVY_DEALS):
        kind = kinds[k % 3]
        yield {
            "id": f"p{n}-{k}",
            "campaignId": f"camp-h{k % 4}",
            **base,
            "kind": kind,
            "skus": [personal_sku(scale, n, k)],
            "value": values[kind],
            "priority": k,
        }
    for j in range(HEAVY_DEALS):
        deal: dict[str, Any] = {
            "id": f"p{n}-deal{j}",
            "campaignId": "camp-hdeal",
            **base,
            "skus": [heavy_deal_sku(scale, n, j)],
            "priority": 10 + j,
        }
        if j < 2:
            deal.update(kind="MULTIBUY", buyQty="2", freeQty="1")
        else:
            deal.update(kind="QUANTITY_PRICE", tiers=[{"minQty": "3", "unitPriceMinor": 900}])
        yield deal


def _line(out: TextIO, row: dict[str, Any]) -> None:
    out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
    out.write("\n")


def write_full(path: Path, scale: Scale, seed: int = 42, version: int = 1) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        _line(
            out,
            {
                "format": FORMAT,
                "version": version,
                "baseVersion": 0,
                "issuedAt": "2026-11-23T03:00:00Z",
                "program": {
                    "tiers": [
                        {"code": "base", "accrualPercent": "3"},
                        {"code": "silver", "accrualPercent": "5"},
                        {"code": "gold", "accrualPercent": "7.5"},
                    ]
                },
            },
        )
        _line(out, {"section": "categories"})
        for row in category_tree():
            _line(out, row)
        _line(out, {"section": "products"})
        for n in range(scale.products):
            _line(
                out,
                {
                    "sku": sku(n),
                    "name": f"Товар {n}",
                    "category": LEAVES[n % len(LEAVES)],
                    **({"excludedFromLoyalty": True} if n % 97 == 0 else {}),
                },
            )
        _line(out, {"section": "customers"})
        for row in _customers(rng, scale):
            _line(out, row)
        _line(out, {"section": "cards"})
        for n in range(scale.customers):
            _line(out, {"number": card(n), "customerId": f"c{n}", "status": "ACTIVE"})
        _line(out, {"section": "offers"})
        for row in _offers(rng, scale):
            _line(out, row)
        _line(out, {"section": "coupons"})
        for row in _coupons(scale):
            _line(out, row)
    return path


def write_delta(path: Path, scale: Scale, rows: int, base: int, seed: int = 43) -> Path:
    """A delta of `rows` rows: offers replaced, customers' balances changed, a few removed."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        removed = [f"p{rng.randrange(scale.customers)}-4" for _ in range(rows // 100)]
        _line(
            out,
            {
                "format": FORMAT,
                "version": base + 1,
                "baseVersion": base,
                "issuedAt": "2026-11-23T04:00:00Z",
                "removed": {"offers": sorted(set(removed))},
            },
        )
        half = rows // 2
        _line(out, {"section": "customers"})
        picked = rng.sample(range(scale.customers), half)
        for n in picked:
            _line(
                out,
                {
                    "id": f"c{n}",
                    "firstName": "Анна",
                    "tier": "gold",
                    "balancePoints": rng.randrange(0, 5000),
                    "phone": f"+79{n:09d}",
                },
            )
        _line(out, {"section": "offers"})
        for n in picked[: rows - half]:
            _line(
                out,
                {
                    "id": f"p{n}-1",
                    "campaignId": "camp-1",
                    "customerId": f"c{n}",
                    "kind": "AMOUNT_OFF",
                    "skus": [sku(rng.randrange(scale.products))],
                    "value": "2000",
                    "validFrom": VALID_FROM,
                    "validTo": VALID_TO,
                },
            )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--scale", default="chain", choices=["chain", "store", "quick", "tiny"])
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    write_full(args.out, Scale.named(args.scale), args.seed)


if __name__ == "__main__":
    main()
