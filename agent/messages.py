"""What the customer display shows (SPEC §8): 2 lines × 20 characters, first name only."""

from __future__ import annotations

from .money import format_minor

WIDTH = 20


def fit(text: str, width: int = WIDTH) -> str:
    """Shorten to `width` characters, ending with '…' when something had to go."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def greeting(first_name: str) -> str:
    if not first_name:
        return "Добрый день!"
    line = f"{first_name}, добрый день!"
    return line if len(line) <= WIDTH else fit(f"{first_name}, привет!")


def quote_display(first_name: str, payable_minor: int, savings_minor: int) -> list[str]:
    second = f"Итого {format_minor(payable_minor)}"
    if savings_minor:
        with_savings = f"{second} −{format_minor(savings_minor)}"
        second = with_savings if len(with_savings) <= WIDTH else second
    return [greeting(first_name), fit(second)]


def checkout_display(first_name: str, earned: int, available: int) -> list[str]:
    return [
        greeting(first_name),
        fit(f"Бонусы: {available}" if not earned else f"+{earned}, бонусы: {available}"),
    ]
