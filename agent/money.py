"""Integer money arithmetic. Minor units and whole points outside; exact fractions inside."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction

# Values `frac` keeps: offers' values, rates and whole quantities repeat and stay; a weighed
# quantity rarely repeats, and each kept one holds ≈ 350 bytes for the agent's life (at
# 65,536, the former bound, 22.7 MB that a till selling weighed goods reached in days).
FRACTIONS_KEPT = 2048


@functools.lru_cache(maxsize=FRACTIONS_KEPT)
def frac(value: Decimal | int) -> Fraction:
    """Exact Fraction of a decimal (cached: offers and rates repeat the same few values)."""
    return Fraction(value)


def round_half_up_ratio(numerator: int, denominator: int) -> int:
    """round_half_up(numerator / denominator) for a positive denominator, in integers:
    halves away from zero (the contract §2)."""
    if numerator >= 0:
        return (2 * numerator + denominator) // (2 * denominator)
    return -((-2 * numerator + denominator) // (2 * denominator))


def line_amount(price_minor: int, qty: Decimal) -> int:
    """round_half_up(price × qty), exact: a quantity is a decimal, so a ratio of integers."""
    numerator, denominator = qty.as_integer_ratio()
    if denominator == 1:
        return price_minor * numerator
    return round_half_up_ratio(price_minor * numerator, denominator)


def split_integer(numerators: Sequence[int], denominator: int, total: int) -> list[int]:
    """Split `total` into integer shares of the values numerator/denominator (all over one
    denominator), whose floors sum to at most `total`: the largest remainder method.

    Each share is the value's floor; the units still missing go one each to the largest
    fractional parts, ties to the earlier position (the contract §5 steps 4 and 5).
    Remainders are compared as integers, no Fraction objects.
    """
    shares = [n // denominator for n in numerators]
    missing = total - sum(shares)
    if missing <= 0:
        return shares
    # by remainder, largest first; ties keep their order (`sorted` is stable)
    remainders = [-(n % denominator) for n in numerators]
    order = sorted(range(len(numerators)), key=remainders.__getitem__)
    for i in order[:missing]:
        shares[i] += 1
    return shares


def decimal_text(value: Fraction) -> str:
    """A quantity (at most 3 decimals, so an exact decimal) as text: 3/2 -> "1.5".

    Exact at any length, in integers: a Decimal division keeps 28 digits, and a
    quantity may have more (a text field holds 128 characters; the POS may send the
    amount, so the quantity need not fit in a price × qty).
    """
    numerator, denominator = value.numerator, value.denominator
    places = 0
    while denominator % 10 == 0 or denominator % 2 == 0 or denominator % 5 == 0:
        if denominator % 10 == 0:
            denominator //= 10
        elif denominator % 2 == 0:
            denominator //= 2
            numerator *= 5
        else:
            denominator //= 5
            numerator *= 2
        places += 1
    if denominator != 1:
        raise ValueError(f"{value} is not a finite decimal")
    sign = "-" if numerator < 0 else ""
    whole, part = divmod(abs(numerator), 10**places)
    decimals = f"{part:0{places}d}".rstrip("0") if places else ""
    return f"{sign}{whole}.{decimals}" if decimals else f"{sign}{whole}"
