"""Markdown tables for the benchmarks' output (pasted into the README as they are)."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def markdown(head: Sequence[str], body: Sequence[Sequence[str]], *, left: Collection[int] = ()) -> list[str]:
    """``head`` and ``body`` as aligned Markdown lines: columns in ``left`` flush left, the rest
    (figures) flush right with a ``---:`` rule so renderers align them too."""
    widths = [max([len(h), *(len(row[i]) for row in body)]) for i, h in enumerate(head)]

    def fmt(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in pairs]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * w if i in left else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    return [fmt(head), "| " + " | ".join(rule) + " |", *(fmt(row) for row in body)]
