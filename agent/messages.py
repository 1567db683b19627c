"""Which customer-display message a result carries (the contract §8); the wording and the fitting
to 2 × 20 characters live in `tillpoint.printer.messages`.

- identify (FOUND): the greeting with the first name;
- quote: the running total and the savings;
- checkout: points earned and the balance, or the birthday wish in the birthday window.
"""

from __future__ import annotations

from fractions import Fraction

from tillpoint.printer import messages


def identify_display(first_name: str) -> list[str]:
    return messages.greeting(first_name)


def quote_display(total_minor: int, savings_minor: int) -> list[str]:
    return messages.quote_lines(total_minor, savings_minor)


def checkout_display(
    first_name: str, earned: int, available: int, birthday_multiplier: Fraction | None
) -> list[str]:
    if birthday_multiplier is not None:
        return [
            messages.birthday_line(first_name),
            *messages.after_commit_lines(earned, available)[1:],
        ]
    return messages.after_commit_lines(earned, available)
