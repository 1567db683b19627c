"""Review 25, second pair of eyes (rev25): what the session's merged change missed."""

from __future__ import annotations

from datetime import date

from tillpoint.agent.messages import checkout_display, expiry_line

from .test_review25_print25 import _shown


def test_a_narrow_display_keeps_the_points_of_the_expiry_warning() -> None:
    """docs/CONTRACT.md §8 and §16: after a commit the warning of points about to expire
    takes the place of the points earned. The message has its own shorter wording for a
    narrow line, "31.12: -300" (`expiry_line`); a 16-column display showed "Сгорят 31.12."
    instead: the date without the points, the one figure the warning is about."""
    lines = checkout_display("Анна", 57, 1192, None, (300, date(2026, 12, 31)))
    assert lines[0] == "Сгорят 31.12: 300"  # made for 20 columns
    assert _shown(lines, 16)[0] == expiry_line(300, date(2026, 12, 31), 16) == "31.12: -300"
    assert _shown(lines, 12)[0] == "31.12: -300"
    assert _shown(lines, 20)[0] == "Сгорят 31.12: 300"
