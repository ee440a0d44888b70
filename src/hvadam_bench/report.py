"""Markdown helpers for the studies' reports."""

from __future__ import annotations

import math
from collections.abc import Sequence


def fmt(value: float | int | None, digits: int = 3) -> str:
    """A number for a table: ``—`` for missing or diverged values, scientific when tiny."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], bold: set[int] = frozenset()):
    """A markdown table; rows whose index is in ``bold`` are set in bold."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for index, row in enumerate(rows):
        cells = [f"**{cell}**" if index in bold and cell else cell for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
