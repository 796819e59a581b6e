"""Plain-text and JSON renderings of predictions and model lists for the CLI."""

from __future__ import annotations

from typing import Any

from edge_agent.runtime.engine import Prediction

MAX_ROWS_SHOWN = 8


def prediction_dict(pred: Prediction) -> dict[str, Any]:
    return {
        "model": pred.model,
        "version": pred.version,
        "results": pred.results,
        "timings_ms": pred.timings_ms,
    }


def _row_text(row: dict[str, Any]) -> str:
    if "boxes" in row:
        if not row["boxes"]:
            return "no detection"
        return "; ".join(
            f"{b['label']} {b['score']:.2f} at x {b['xmin']:.0f}-{b['xmax']:.0f}, "
            f"y {b['ymin']:.0f}-{b['ymax']:.0f}"
            for b in row["boxes"]
        )
    if "top_k" in row:
        rest = ", ".join(f"{t['label']} {t['score']:.3f}" for t in row["top_k"][1:])
        return f"{row['label']} ({row['score']:.3f})" + (f"  next: {rest}" if rest else "")
    return str(row)[:120]


def prediction_text(pred: Prediction, source: str) -> str:
    t = pred.timings_ms
    lines = [
        f"{pred.model}/{pred.version} <- {source}  "
        f"[preprocess {t['preprocess']:.2f} ms, infer {t['infer']:.2f} ms, "
        f"postprocess {t['postprocess']:.2f} ms, total {t['total']:.2f} ms]"
    ]
    for i, row in enumerate(pred.results[:MAX_ROWS_SHOWN]):
        lines.append(f"  [{i}] {_row_text(row)}")
    if len(pred.results) > MAX_ROWS_SHOWN:
        lines.append(f"  ... {len(pred.results) - MAX_ROWS_SHOWN} more rows")
    return "\n".join(lines)


def models_table(rows: list[dict[str, Any]]) -> str:
    header = f"{'model':22} {'active':8} {'versions':10} {'backend':7} {'task':15} {'accuracy':8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        acc = f"{r['metrics']['heldout_accuracy']:.4f}" if r.get("metrics") else "-"
        lines.append(
            f"{r['name']:22} {r['active_version']:8} {','.join(r['versions']):10} {r['backend']:7} "
            f"{r['task']:15} {acc:8}"
        )
    return "\n".join(lines)
