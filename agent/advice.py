"""The words a number with a fraction in an integer field is told to become, by the
field's name (money, a percent, a count of a unit, a plain whole number): the till's
wire and CLI and the hub's import say the same (a helper sync/ may import,
docs/ARCHITECTURE.md)."""

from __future__ import annotations

import re

# What an integer field's fraction is told to become: money's words, unless the field's
# name says what it counts (`holdTtlSeconds: 1.5` was told to "write money in minor
# units": review 38, rev38c; `maxRedeemPercent: 1.5` and `balancePoints: 1.5` too:
# review 39, rev38k).
MONEY_ADVICE = "write money in minor units (whole numbers) and quantities as decimal strings"
_COUNTED = (
    ("seconds", "seconds"),
    ("days", "days"),
    ("_s", "seconds"),
    ("_ms", "milliseconds"),
    ("points", "points"),
)
DECIMAL_ADVICE = 'write it as a decimal string ("1.5")'


def whole_number_advice(place: str, *, decimals: bool = False) -> str:
    """What to write instead of a number with a point in the field at `place`
    (`program.holdTtlSeconds`, `lines[0].priceMinor`). `decimals`: where the field is a
    percent or a multiplier, the reader takes a decimal string (a till's snapshot: §3's
    `maxRedeemPercent`, `accrualPercent`, `birthdayMultiplier`); else it is a whole number
    (the proto's int64, the hub's program)."""
    if place.startswith("appliedThrough."):
        # a sequence number keyed by a device's id, which may end like a unit's name
        # (`lane_s`, `kasse-points`): told seconds' or a decimal string's words until
        # review 39 (rev39j)
        return "write a whole number"
    name = re.split(r"[.\[]", place)[-1].lower() if place else ""
    if name in _PLAIN_WHOLE:
        # before the units' endings: an offer's `weekdays` (ISO weekday numbers) was told
        # "a whole number of days" for its ending, its items [i] "a whole number" (review
        # 56, mut56a)
        return "write a whole number"
    for ending, what in (("percent", "a percent"), ("multiplier", "a multiplier")):
        if name.endswith(ending):
            return DECIMAL_ADVICE if decimals else f"write a whole number ({what}, not money)"
    for ending, unit in _COUNTED:
        if name.endswith(ending):
            return f"write a whole number of {unit}"
    # a field that counts neither money nor a quantity (an offer's priority, a weekday, the
    # snapshot's version, a device's seq) was told money's words (review 39, rev39h)
    named = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", place)
    if named and named[-1].lower() in _PLAIN_WHOLE:
        return "write a whole number"
    return MONEY_ADVICE


# Integer fields that are neither money nor a quantity nor counted in a unit `_COUNTED`
# names: their fraction is told "write a whole number".
_PLAIN_WHOLE = frozenset(
    {
        "priority",
        "rank",
        "version",
        "baseversion",
        "weekday",
        "weekdays",
        "favoriteweekday",
        "maxoffersprinted",
        "seq",
        "limit",
        "offset",
        "attempts",
    }
)
