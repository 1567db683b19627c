"""The demo's embedded chain: deterministic, realistic, small (the contract §3 snapshot shape).

A few hundred products with Russian names in a category tree, customers in every
lifecycle segment and tier, personal top-5 offers, a birthday this week, a control
group, and tobacco and alcohol excluded from loyalty. Everything is derived from a seed
and a business date, so the demo tells the same story every day.
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

CATEGORY_TREE: dict[str, tuple[str, str | None, list[str]]] = {
    # code: (name, parent, product names)
    "food": ("Продукты", None, []),
    "dairy": (
        "Молочные продукты",
        "food",
        [
            "Молоко 3,2%",
            "Кефир 1%",
            "Сметана 20%",
            "Творог 5%",
            "Йогурт клубничный",
            "Ряженка",
            "Масло сливочное 82%",
            "Сыр Российский",
        ],
    ),
    "bakery": (
        "Хлеб и выпечка",
        "food",
        [
            "Хлеб Бородинский",
            "Батон нарезной",
            "Лаваш",
            "Круассан",
            "Сушки ванильные",
            "Пряники тульские",
        ],
    ),
    "fruit": (
        "Фрукты и овощи",
        "food",
        [
            "Яблоки Гала",
            "Бананы",
            "Мандарины",
            "Картофель",
            "Морковь",
            "Огурцы",
            "Помидоры черри",
            "Лук репчатый",
        ],
    ),
    "grocery": (
        "Бакалея",
        "food",
        [
            "Гречка",
            "Рис круглозёрный",
            "Макароны",
            "Мука пшеничная",
            "Сахар",
            "Чай чёрный",
            "Кофе молотый",
            "Подсолнечное масло",
        ],
    ),
    "meat": (
        "Мясо и птица",
        "food",
        ["Филе куриное", "Фарш говяжий", "Сосиски молочные", "Колбаса докторская", "Пельмени"],
    ),
    "household": (
        "Товары для дома",
        None,
        ["Средство для посуды", "Бумажные полотенца", "Стиральный порошок", "Губки для посуды"],
    ),
    "tobacco": ("Табак", None, ["Сигареты", "Стики для нагревания"]),
    "alcohol": ("Алкоголь", None, ["Пиво светлое 0,5 л", "Вино красное сухое", "Водка 0,5 л"]),
}
EXCLUDED = {"tobacco", "alcohol"}
SIZES = ["", " 0,5 кг", " 1 кг", " 450 г", " 900 г", " большая упаковка"]
BRANDS = ["", " «Домик»", " «Простоквашино»", " «Вкусвилл»", " «Глобус»", " «Красная цена»"]
FIRST_NAMES = [
    "Анна",
    "Борис",
    "Вера",
    "Глеб",
    "Дарья",
    "Егор",
    "Жанна",
    "Захар",
    "Ирина",
    "Кирилл",
    "Людмила",
    "Максим",
    "Наталья",
    "Олег",
    "Полина",
    "Роман",
    "Светлана",
    "Тимур",
    "Ульяна",
    "Фёдор",
]
SEGMENTS = ["NEW", "ACTIVE", "AT_RISK", "CHURNED"]
TIERS = ["base", "silver", "gold"]


def ean13(body12: str) -> str:
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body12))
    return body12 + str((10 - total % 10) % 10)


def chain(today: date, seed: int = 7, customers: int = 40) -> dict[str, Any]:
    """A full snapshot (version 1) of a small chain, as of `today` (the store's date)."""
    rng = random.Random(seed)
    categories = [
        {"code": code, "name": name, **({"parent": parent} if parent else {})}
        for code, (name, parent, _) in CATEGORY_TREE.items()
    ]
    products: list[dict[str, Any]] = []
    n = 0
    for code, (_, _, names) in CATEGORY_TREE.items():
        for base in names:
            variants = (
                [("", "")]
                if code in EXCLUDED
                else [
                    (brand, size)
                    for brand in rng.sample(BRANDS, 3)
                    for size in rng.sample(SIZES, 3)
                ]
            )
            for brand, size in variants:
                if True:
                    n += 1
                    products.append(
                        {
                            "sku": ean13(f"460{n:09d}"),
                            "name": f"{base}{brand}{size}".strip(),
                            "category": code,
                            **({"excludedFromLoyalty": True} if code in EXCLUDED else {}),
                        }
                    )
    people: list[dict[str, Any]] = []
    cards: list[dict[str, Any]] = []
    offers: list[dict[str, Any]] = []
    start = f"{today - timedelta(days=3)}T00:00:00+03:00"
    end = f"{today + timedelta(days=20)}T23:59:59+03:00"
    food = [p for p in products if p["category"] not in EXCLUDED]
    for i in range(customers):
        cid = f"c-{i + 1:04d}"
        birthday = date(1970 + rng.randrange(35), rng.randrange(1, 13), rng.randrange(1, 28))
        if i == 0:  # the demo's heroine has her birthday in two days (maybe 29 February:
            birthday = (today + timedelta(days=2)).replace(year=1992)  # born in a leap year)
        customer: dict[str, Any] = {
            "id": cid,
            "firstName": FIRST_NAMES[i % len(FIRST_NAMES)],
            "tier": "gold" if i == 0 else TIERS[i % 3],
            "birthday": birthday.isoformat(),
            "phone": f"+7916{1234567 + i:07d}",
            "balancePoints": 1200 if i == 0 else rng.randrange(0, 3000),
            "segment": SEGMENTS[i % 4],
            "favoriteWeekday": rng.randrange(1, 8),
        }
        if i % 5 == 1:
            customer["controlGroups"] = ["camp-autumn"]
        people.append(customer)
        cards.append(
            {
                "number": ean13(f"277{i + 1:09d}"),
                "customerId": cid,
                "status": "BLOCKED" if i == 3 else "ACTIVE",
            }
        )
        for rank, product in enumerate(rng.sample(food, 5), start=1):
            kind = ["PERCENT_OFF", "AMOUNT_OFF", "BONUS_MULTIPLIER"][rank % 3]
            value = {"PERCENT_OFF": "15", "AMOUNT_OFF": "2000", "BONUS_MULTIPLIER": "3"}[kind]
            text = {
                "PERCENT_OFF": f"−15% на {product['name']}",
                "AMOUNT_OFF": f"−20 ₽ на {product['name']}",
                "BONUS_MULTIPLIER": f"×3 бонуса за {product['name']}",
            }[kind]
            offers.append(
                {
                    "id": f"p-{cid}-{rank}",
                    "campaignId": "camp-autumn" if rank == 1 else f"camp-top5-{rank}",
                    "customerId": cid,
                    "kind": kind,
                    "skus": [product["sku"]],
                    "value": value,
                    "minQty": "1",
                    "validFrom": start,
                    "validTo": end,
                    "priority": 10,
                    "rank": rank,
                    "printable": True,
                    "printText": text,
                }
            )
    offers.append(
        {
            "id": "m-dairy-10",
            "campaignId": "camp-dairy",
            "kind": "PERCENT_OFF",
            "categories": ["dairy"],
            "value": "10",
            "validFrom": start,
            "validTo": end,
            "priority": 20,
            "rank": 50,
        }
    )
    offers.append(
        {
            "id": "m-basket-1000",
            "campaignId": "camp-basket",
            "kind": "EXTRA_POINTS",
            "value": "50",
            "minTotalMinor": 100000,
            "validFrom": start,
            "validTo": end,
        }
    )
    return {
        "version": 1,
        "baseVersion": 0,
        "issuedAt": f"{today}T03:00:00+03:00",
        "program": {
            "currency": "RUB",
            "timezone": "Europe/Moscow",
            "pointValueMinor": 100,
            "maxRedeemPercent": 30,
            "activationDelayDays": 0,
            "offlineRedeemLimitPoints": 500,
            "birthdayMultiplier": 5,
            "birthdayWindowDays": 7,
            "maxOffersPrinted": 5,
            "offerPrintCooldownDays": 7,
            "tiers": [
                {"code": "base", "accrualPercent": "3"},
                {"code": "silver", "accrualPercent": "5"},
                {"code": "gold", "accrualPercent": "7"},
            ],
        },
        "categories": categories,
        "products": products,
        "customers": people,
        "cards": cards,
        "offers": offers,
    }


# ---------------------------------------------------------------- the afternoon's offers

SORRY_CODE = "SORRY-ANNA-1"


def offers_day(today: date, master: dict[str, Any]) -> dict[str, Any]:
    """What marketing imports in the afternoon of the demo's day (a catalogue delta): a
    sorry-bonus coupon for Anna, "3 for 2" on household goods, a happy hour on fruit, a
    next-visit offer printed with a one-time code, and Вера's points that expire in 5 days.
    Kept apart from `chain`, so the morning and the example files stay as they are."""
    start = f"{today - timedelta(days=3)}T00:00:00+03:00"
    end = f"{today + timedelta(days=20)}T23:59:59+03:00"
    anna, vera = master["customers"][0], dict(master["customers"][2])
    household = [p["sku"] for p in master["products"] if p["category"] == "household"]
    window = {"validFrom": start, "validTo": end}
    offers = [
        {
            "id": "m-sorry-15",
            "campaignId": "camp-sorry",
            "kind": "PERCENT_OFF",
            "categories": ["food"],
            "value": "15",
            "couponRequired": True,
            "priority": 5,
            **window,
        },
        {
            "id": "m-household-3for2",
            "campaignId": "camp-3for2",
            "kind": "MULTIBUY",
            "skus": household,
            "buyQty": "2",
            "freeQty": "1",
            "priority": 5,
            **window,
        },
        {
            "id": "m-fruit-happy-hour",
            "campaignId": "camp-happy-hour",
            "kind": "PERCENT_OFF",
            "categories": ["fruit"],
            "value": "20",
            "hours": [{"from": "18:00", "to": "20:00"}],
            "priority": 5,
            **window,
        },
        {
            "id": f"p-{anna['id']}-next-visit",
            "campaignId": "camp-next-visit",
            "customerId": anna["id"],
            "kind": "PERCENT_OFF",
            "categories": ["meat"],
            "value": "20",
            "couponRequired": True,
            "issueCoupon": True,
            "printable": True,
            "printText": "−20% на мясо в следующий раз",
            "priority": 5,
            **window,
        },
    ]
    coupons = [{"code": SORRY_CODE, "offerId": "m-sorry-15", "customerId": anna["id"], **window}]
    # Вера: 300 of her points expire in 5 days, and no birthday greeting hides the warning
    vera["balancePoints"] = max(int(vera["balancePoints"]), 600)
    vera["expiring"] = [{"points": 300, "expiresAt": f"{today + timedelta(days=5)}T23:59:59+03:00"}]
    vera["birthday"] = (today + timedelta(days=120)).replace(year=1988).isoformat()
    return {"offers": offers, "coupons": coupons, "customers": [vera]}


# ---------------------------------------------------------------- the chain as files

EXAMPLE_FILES = (
    "snapshot.json",
    "catalogue.json",
    "receipt-card.json",
    "receipt-phone.json",
    "receipt-unknown-card.json",
    "receipt-weighed.json",
    "receipt-redemption.json",
    "refund.json",
)
SNAPSHOT_HEADER = ("version", "baseVersion", "issuedAt")


def example_files(today: date, seed: int = 7) -> dict[str, dict[str, Any]]:
    """The demo's data as the files of `examples/` (`tillpoint demo --export DIR`).

    The snapshot a standalone till loads, the same master data as the hub's catalogue,
    receipts paid with a card, a phone number, an unknown card, a weighed item and
    points, and a refund of the card receipt; all dated `today` in the store's zone.
    """
    snapshot = chain(today, seed=seed)
    catalogue = {k: v for k, v in snapshot.items() if k not in SNAPSHOT_HEADER}
    products = snapshot["products"]
    food = [p for p in products if not p.get("excludedFromLoyalty")]
    tobacco = next(p for p in products if p["category"] == "tobacco")
    fruit = next(p for p in products if p["category"] == "fruit")
    anna, boris = snapshot["customers"][0], snapshot["customers"][1]
    anna_card = snapshot["cards"][0]["number"]
    favourite = next(
        o["skus"][0]
        for o in snapshot["offers"]
        if o.get("customerId") == anna["id"] and o["kind"] == "PERCENT_OFF"
    )
    known = {c["number"] for c in snapshot["cards"]}
    unknown = next(
        n for n in (ean13(f"277{i:09d}") for i in range(999_999_999, 0, -1)) if n not in known
    )
    phone = boris["phone"]  # "+7916…" written as a cashier types it: 8 916 123-45-68
    typed = f"8 {phone[2:5]} {phone[5:8]}-{phone[8:10]}-{phone[10:12]}"

    def at(hour: int, minute: int, days: int = 0) -> str:
        return f"{today + timedelta(days=days)}T{hour:02d}:{minute:02d}:00+03:00"

    def receipt(n: int, card: str, when: str, lines: list[Any], redeem: int = 0) -> Any:
        return {
            "receiptId": f"store1-t1-{n:06d}",
            "storeId": "store1",
            "tillId": "t1",
            "at": when,
            "card": card,
            "lines": lines,
            "redeemPoints": redeem,
        }

    def line(product: dict[str, Any], qty: str, price: int) -> dict[str, Any]:
        return {"sku": product["sku"], "qty": qty, "priceMinor": price}

    by_sku = {p["sku"]: p for p in products}
    card_receipt = receipt(
        1,
        anna_card,
        at(10, 15),
        [line(by_sku[favourite], "2", 12990), line(food[0], "1", 8990), line(tobacco, "1", 21900)],
    )
    return {
        "snapshot.json": snapshot,
        "catalogue.json": catalogue,
        "receipt-card.json": card_receipt,
        "receipt-phone.json": receipt(2, typed, at(11, 40), [line(food[3], "1", 15000)]),
        "receipt-unknown-card.json": receipt(3, unknown, at(12, 5), [line(food[5], "2", 4990)]),
        "receipt-weighed.json": receipt(4, anna_card, at(12, 30), [line(fruit, "1.250", 19900)]),
        "receipt-redemption.json": receipt(
            5, anna_card, at(13, 0), [line(food[7], "2", 45000)], redeem=-1
        ),
        "refund.json": {
            "refundId": "store1-t1-r-000001",
            "receiptId": card_receipt["receiptId"],
            "at": at(13, 30),
            "lines": [{"sku": favourite, "qty": "1"}],
        },
    }
