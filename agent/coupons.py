"""Coupon verdicts (the contract §13): pure functions; the cache and the ledger are passed in.

A receipt's scanned codes are checked before pricing (`check`): the accepted ones unlock
their offers for the pricing core. After pricing, `verdicts` says for each code whether it
was used (`APPLIED`) or why not (`REJECTED` with a reason).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .expiry import last_instant
from .models import Coupon, Customer, coupon_code


@dataclass(frozen=True)
class CouponCheck:
    code: str
    offer_id: str | None = None  # the offer it unlocks, when it passed every check
    reason: str | None = None  # why it is rejected; None: accepted before pricing


def check(
    texts: Iterable[str],
    at: datetime,
    customer: Customer | None,
    find: Callable[[str], Coupon | None],
    used: Callable[[str], bool],
) -> list[CouponCheck]:
    """Each scanned code, in order: rejected with its reason, or accepted with its offer.

    The checks, in this order: the same code twice on the receipt (DUPLICATE), a code the
    till does not know (UNKNOWN), another customer's code (OTHER_CUSTOMER), before or after
    its validity (NOT_YET_VALID, EXPIRED), already used on this till (ALREADY_USED). Only a
    FOUND card uses coupons: with any other, every known code is NOT_APPLICABLE."""
    out: list[CouponCheck] = []
    seen: set[str] = set()
    for text in texts:
        code = coupon_code(text)
        if code in seen:
            out.append(CouponCheck(code, reason="DUPLICATE"))
            continue
        seen.add(code)
        coupon = find(code) if code else None
        if coupon is None:
            out.append(CouponCheck(code, reason="UNKNOWN"))
        elif customer is None:
            out.append(CouponCheck(code, reason="NOT_APPLICABLE"))
        elif coupon.customer_id is not None and coupon.customer_id != customer.id:
            out.append(CouponCheck(code, reason="OTHER_CUSTOMER"))
        elif coupon.valid_from is not None and at < coupon.valid_from:
            out.append(CouponCheck(code, reason="NOT_YET_VALID"))
        elif coupon.valid_to is not None and at > last_instant(coupon.valid_to):
            out.append(CouponCheck(code, reason="EXPIRED"))
        elif used(code):
            out.append(CouponCheck(code, reason="ALREADY_USED"))
        else:
            out.append(CouponCheck(code, offer_id=coupon.offer_id))
    return out


def mark_used(checks: Iterable[CouponCheck], used: Collection[str]) -> list[CouponCheck]:
    """The checks again with the accepted codes the hub says another receipt used or holds
    turned into ALREADY_USED (online authorisation, the contract §13)."""
    return [
        CouponCheck(c.code, reason="ALREADY_USED") if c.reason is None and c.code in used else c
        for c in checks
    ]


def issued_code(device_id: str, number: int) -> str:
    """A till-issued code, unique in the chain without asking the hub: "TP", the length of
    the device id's normal form, that form, and the device's coupon number (never reused).
    ("till-1", 17) → "TP5TILL117"."""
    return f"{issued_prefix(device_id)}{number}"


def issued_prefix(device_id: str) -> str:
    device = coupon_code(device_id)
    return f"TP{len(device)}{device}"


def issued_by(code: str, device_id: str) -> bool:
    """Whether `code` is one of the device's own till-issued codes (the hub takes no other
    from it: a till could otherwise put any code, another's or the retailer's, in every
    till's next snapshot)."""
    prefix = issued_prefix(device_id)
    number = code[len(prefix) :]
    return code.startswith(prefix) and number.isascii() and number.isdigit()


def unlocked(checks: Iterable[CouponCheck]) -> frozenset[str]:
    """The offers the accepted codes unlock."""
    return frozenset(c.offer_id for c in checks if c.offer_id is not None)


def verdicts(checks: Iterable[CouponCheck], applied: Collection[str]) -> list[dict[str, Any]]:
    """`CheckoutResult.coupons`: an accepted code is APPLIED when its offer gave the receipt
    something; one offer is unlocked by one code (the first), a second code for the same
    offer is NOT_APPLICABLE and is not used."""
    out: list[dict[str, Any]] = []
    taken: set[str] = set()
    for c in checks:
        reason = c.reason
        if reason is None:
            if c.offer_id is not None and c.offer_id in applied and c.offer_id not in taken:
                taken.add(c.offer_id)
                out.append({"code": c.code, "status": "APPLIED", "reason": ""})
                continue
            reason = "NOT_APPLICABLE"
        out.append({"code": c.code, "status": "REJECTED", "reason": reason})
    return out


def applied_codes(result: dict[str, Any]) -> list[str]:
    return [v["code"] for v in result.get("coupons", ()) if v["status"] == "APPLIED"]
