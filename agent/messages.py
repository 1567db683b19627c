"""Which customer-display message a result carries (the contract §8); the wording and the fitting
to 2 × 20 characters live in `tillpoint.printer.messages`.

- identify: the greeting with the first name (FOUND), without one (UNKNOWN), or
  "Карта не принята" (BLOCKED, INVALID);
- quote: the running total and the savings;
- checkout: points earned and the balance, the birthday wish beside the points earned in
  the birthday window; when points expire within 14 days (§16), the first batch's points
  and day instead of the points earned;
- checkout of an UNKNOWN card: the total and the points earned (the hub settles them when
  it knows the card, §4); the till knows no balance to show;
- cancel (§11): "Чек отменён", so the held total does not stay on the display after a
  failed payment or an abandoned basket.
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction

from tillpoint.printer import messages
from tillpoint.printer.text import format_decimal

from .identify import Identification


def identify_display(ident: Identification) -> list[str]:
    """The greeting with the first name; an UNKNOWN card's without one (its sale earns
    points, §4); a blocked or invalid card is not accepted (the kiosk's scanner says the
    same): never the last customer's balance left in front of the next one."""
    if ident.status == "FOUND" and ident.customer is not None:
        return messages.greeting(ident.customer.first_name)
    if ident.status == "UNKNOWN":
        return messages.greeting(None)
    return [messages.REFUSED_CARD, ""]


def unknown_card_display(total_minor: int, earned: int) -> list[str]:
    return [messages.quote_lines(total_minor, 0)[0], messages.after_commit_lines(earned, 0)[0]]


def cancelled_display() -> list[str]:
    return ["Чек отменён", ""]


def quote_display(
    total_minor: int,
    savings_minor: int,
    reach: tuple[int, str, str] | None = None,
    points_minor: int = 0,
) -> list[str]:
    """The running total and the savings (§8). With no savings yet and a receipt discount
    within reach (`Priced.reach`), the second line says how much more the basket needs
    ("Ещё 520 ₽ до скидки 5%", §17's example) instead of staying empty. The points paid
    (`points_minor`) count in the savings row (`messages.quote_lines`). Worked out from
    the pricing, not from a trace: `explain` never changes the display (§17)."""
    lines = messages.quote_lines(total_minor, savings_minor, points_minor=points_minor)
    if savings_minor > 0 or points_minor > 0 or reach is None:
        return lines
    hint = reach_line(reach[0], reach[2])
    return [lines[0], hint] if hint else lines


def reach_line(missing_minor: int, percent: str, width: int = messages.WIDTH) -> str | None:
    """How much more the basket needs for a receipt discount, in whole roubles rounded up."""
    roubles = -(-missing_minor // 100)
    money = f"{roubles:,}".replace(",", " ") + " ₽"
    percent = format_decimal(percent)  # written as money is: "7.50" → "7,5"
    for text in (
        f"Ещё {money} до скидки {percent}%",
        f"Ещё {money} до −{percent}%",
        f"+{money} до −{percent}%",
        f"+{roubles}₽ до −{percent}%",  # the narrow display's last wording (its spaces out)
    ):
        if len(text) <= width:
            return text
    return None


def checkout_display(
    first_name: str,
    earned: int,
    available: int,
    birthday_multiplier: Fraction | None,
    expiring_soon: tuple[int, date] | None = None,
) -> list[str]:
    if birthday_multiplier is not None:  # the wish and the points earned share a line
        return [
            messages.birthday_earned_line(earned),
            *messages.after_commit_lines(earned, available)[1:],
        ]
    lines = messages.after_commit_lines(earned, available)
    if expiring_soon is not None:  # §16: the warning takes the place of the points earned
        # ... when it can be said whole; else the points earned stay (§8 asks for them)
        lines[0] = expiry_line(*expiring_soon) or lines[0]
    return lines


def expiry_line(points: int, day: date, width: int = messages.WIDTH) -> str:
    """``expiry_line(300, date(2026, 12, 31)) == "Сгорят 31.12: 300"``; the shorter
    wordings the narrow display's driver uses too, and "" when none holds the date and the
    points together (never the date alone: "Сгорят 31.12" told no figure)."""
    for text in (
        f"Сгорят {day:%d.%m}: {points}",
        f"{day:%d.%m}: -{points}",
        f"{day:%d.%m}:-{points}",
    ):
        if len(text) <= width:
            return text
    return ""
