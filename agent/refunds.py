"""Refund arithmetic (the contract §6), pure: which original lines a return takes, and the points.

For an original line with qty q, redeemed points p and earned points e, once r of its qty
has been returned over all refunds the customer has got back floor(p·r/q) and lost
floor(e·r/q). Each refund applies the difference from the refunds before it, so any
split of a full return gives back exactly p and takes back exactly e.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from .errors import Refused
from .money import decimal_text


@dataclass(frozen=True)
class SoldLine:
    sku: str
    qty: Fraction
    redeemed_points: int
    earned_points: int
    returned_qty: Fraction  # over all refunds so far


@dataclass(frozen=True)
class RefundOutcome:
    returned_qty: tuple[Fraction, ...]  # per original line, after this refund
    returned_points: int  # redeemed points given back to the customer
    taken_back_points: int  # earned points taken back (extra points included)


def apply_refund(
    sold: Sequence[SoldLine],
    returns: Sequence[tuple[str, Fraction]],
    extra_points: int,
    receipt_id: str,
) -> RefundOutcome:
    after = [line.returned_qty for line in sold]
    # Each SKU's lines in order, and where its first line with qty left may be: a line
    # before it is returned in full (every return fills the lines in this order), so no
    # return looks at it again: a refund's work grows with its lines and the receipt's,
    # not with their product (a 2,000-line receipt returned line by line took ~40 s).
    lines_of: dict[str, list[int]] = {}
    for i, line in enumerate(sold):
        lines_of.setdefault(line.sku, []).append(i)
    first_left: dict[str, int] = {}
    for sku, qty in returns:
        left = qty
        indices = lines_of.get(sku, [])
        k = first_left.get(sku, 0)
        while left > 0 and k < len(indices):
            i = indices[k]
            take = min(left, sold[i].qty - after[i])
            if take > 0:
                after[i] += take
                left -= take
            if after[i] >= sold[i].qty:
                k += 1
        first_left[sku] = k
        if left > 0:
            bought = sum((line.qty for line in sold if line.sku == sku), Fraction(0))
            if bought == 0:
                raise Refused(f"receipt {receipt_id} has no line with sku {sku}")
            earlier = sum((line.returned_qty for line in sold if line.sku == sku), Fraction(0))
            asked = sum((q for s, q in returns if s == sku), Fraction(0))
            raise Refused(
                f"receipt {receipt_id}: returning more of sku {sku} than was bought"
                f" ({decimal_text(bought)} bought, {decimal_text(earlier)} returned before,"
                f" {decimal_text(bought - earlier)} left to return; this refund asks"
                f" {decimal_text(asked)})"
            )

    returned = taken = 0
    for line, new in zip(sold, after, strict=True):
        old = line.returned_qty
        if new == old:  # a line this refund did not return: no points move
            continue
        returned += _share(line.redeemed_points, new, line.qty) - _share(
            line.redeemed_points, old, line.qty
        )
        taken += _share(line.earned_points, new, line.qty) - _share(
            line.earned_points, old, line.qty
        )
    was_complete = all(line.returned_qty == line.qty for line in sold)
    now_complete = all(new == line.qty for line, new in zip(sold, after, strict=True))
    if now_complete and not was_complete:
        taken += extra_points
    return RefundOutcome(tuple(after), returned, taken)


def _share(points: int, returned: Fraction, qty: Fraction) -> int:
    return math.floor(points * returned / qty)
