"""Markdown helpers for the studies' reports."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence


def fmt(value: float | int | None, digits: int = 3) -> str:
    """A number for a table: ``—`` for missing or diverged values, scientific when tiny."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def two_decimals(value: float) -> str:
    return f"{value:.2f}"


def mean_std(
    mean: float | None, std: float | None, number: Callable[[float], str] = two_decimals
) -> str:
    """``mean ± std`` for a table, each written by ``number``: ``—`` without a mean, the mean
    alone without a standard deviation."""
    if mean is None:
        return "—"
    return f"{number(mean)} ± {number(std)}" if std is not None else number(mean)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], bold: set[int] = frozenset()):
    """A markdown table; rows whose index is in ``bold`` are set in bold."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for index, row in enumerate(rows):
        cells = [f"**{cell}**" if index in bold and cell else cell for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sections(markdown: str, titles: Sequence[str], folder: str = "") -> str:
    """The ``## title`` sections of ``markdown`` named in ``titles``, in that order, each up to
    the next ``## `` heading; relative links are rewritten to point into ``folder``."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            current = found.setdefault(title, []) if title in titles else None
        if current is not None:
            current.append(line)
    text = "\n".join("\n".join(found[title]).rstrip() + "\n" for title in titles if title in found)
    if folder:
        text = re.sub(r"\]\((?![a-z]+://|/|#)", f"]({folder}/", text)
    return text
