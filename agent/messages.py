"""Which customer-display message a result carries (the contract §8); the wording and the fitting
to 2 × 20 characters live in `tillpoint.printer.messages`.

- identify (FOUND): the greeting with the first name;
- quote: the running total and the savings;
- checkout: points earned and the balance, or the birthday wish in the birthday window;
  when points expire within 14 days (§16), the first batch's points and day instead of
  the points earned.
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction

from tillpoint.printer import messages


def identify_display(first_name: str) -> list[str]:
    return messages.greeting(first_name)


def quote_display(total_minor: int, savings_minor: int) -> list[str]:
    return messages.quote_lines(total_minor, savings_minor)


def checkout_display(
    first_name: str,
    earned: int,
    available: int,
    birthday_multiplier: Fraction | None,
    expiring_soon: tuple[int, date] | None = None,
) -> list[str]:
    if birthday_multiplier is not None:
        return [
            messages.birthday_line(first_name),
            *messages.after_commit_lines(earned, available)[1:],
        ]
    lines = messages.after_commit_lines(earned, available)
    if expiring_soon is not None:  # §16: the warning takes the place of the points earned
        lines[0] = expiry_line(*expiring_soon)
    return lines


def expiry_line(points: int, day: date, width: int = messages.WIDTH) -> str:
    """``expiry_line(300, date(2026, 12, 31)) == "Сгорят 31.12: 300"``."""
    for text in (f"Сгорят {day:%d.%m}: {points}", f"{day:%d.%m}: -{points}"):
        if len(text) <= width:
            return text
    return f"Сгорят {day:%d.%m}"[:width]
