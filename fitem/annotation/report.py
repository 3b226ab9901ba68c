"""``fitem annotate --report DIR``: spot bad fits in an annotated data set at a glance.

Writes into ``DIR``:

* ``contact_sheet.png`` — the worst-fitting images first, each the input with its
  mask tinted (green visible face, red occlusion) and titled with its key and fit error;
* ``costs.png`` — the distributions of the per-image fit errors;
* ``report.json`` — the per-image numbers (worst first) and the counts by status and error type.

"Worst" is the photometric RMSE over the visible face after the last EM round (colour
units in [0, 1]; comparable across images, unlike the raw cost, which scales with the
number of pixels), ties broken by the landmark reprojection error.

Example:
    >>> from fitem.annotation.report import write_report        # doctest: +SKIP
    >>> write_report("annotations/", "annotations/report")        # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fitem._files import atomic_write_bytes, png_bytes, read_mask_png
from fitem.errors import InvalidInputError

__all__ = ["write_report", "fit_quality"]

log = logging.getLogger(__name__)


def fit_quality(result_dir: str | Path) -> dict[str, float]:
    """Per-image fit numbers from a result folder's ``params.json``.

    Returns:
        ``photometric_rmse`` (visible face, last round), ``landmark_error_px`` (median, crop
        pixels), ``final_cost`` (last LM cost), ``visible_fraction`` (of the face region),
        ``rounds`` and ``seconds``; NaN where the fit recorded none.
    """
    meta = json.loads((Path(result_dir) / "params.json").read_text())
    rounds = meta.get("rounds") or []
    last = rounds[-1] if rounds else {}
    costs = last.get("cost_history") or [math.nan]

    def num(v: Any) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    return {
        "photometric_rmse": num(last.get("photometric_rmse")),
        "landmark_error_px": num(last.get("landmark_error_px")),
        "final_cost": num(costs[-1]),
        "visible_fraction": num(last.get("mask_fraction")),
        "rounds": float(len(rounds)),
        "seconds": num((meta.get("timings") or {}).get("total")),
    }


def _costs_figure(rows: list[dict[str, Any]], counts: dict[str, int]) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from io import BytesIO

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    for ax, (key, label) in zip(axes.ravel(), (
            ("photometric_rmse", "photometric RMSE (visible face, [0, 1] colour)"),
            ("landmark_error_px", "median landmark error (crop px)"),
            ("final_cost", "final M-step cost"),
            ("visible_fraction", "visible fraction of the face region"))):
        v = np.array([r[key] for r in rows], float)
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=min(40, max(5, v.size // 3)), color="#4a7")
            ax.axvline(float(np.median(v)), color="k", lw=1, ls="--", label=f"median {np.median(v):.3g}")
            ax.legend(fontsize=8)
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylabel("images", fontsize=9)
    fig.suptitle(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), fontsize=10)
    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(annotation_dir: str | Path, report_dir: str | Path, *, n: int = 48, ncols: int = 8,
                 cell: int = 160) -> dict[str, Any]:
    """Write ``contact_sheet.png``, ``costs.png`` and ``report.json`` for an annotation folder.

    Args:
        annotation_dir: a ``fitem annotate`` output folder.
        report_dir: where to write (created).
        n: images on the contact sheet (the ``n`` worst).
        ncols: contact-sheet columns.
        cell: contact-sheet cell side in pixels.

    Returns:
        The report (what ``report.json`` holds).

    Raises:
        InvalidInputError: not an annotation folder, or no image in its manifest.
    """
    from fitem.annotation.manifest import read_manifest
    from fitem.image import load_image
    from fitem.viz import contact_sheet, mask_overlay

    if not isinstance(n, int) or n < 1 or not isinstance(ncols, int) or ncols < 1:
        raise InvalidInputError(f"n and ncols must be positive integers, got n={n!r}, ncols={ncols!r}")
    ann = Path(annotation_dir)
    records = read_manifest(ann)
    if not records:
        raise InvalidInputError(f"{ann} has no manifest records: run `fitem annotate IN --out {ann}` first")
    counts = Counter(r.get("status", "?") for r in records.values())
    errors = Counter(r.get("error_type") for r in records.values() if r.get("status") == "failed")
    rows = []
    for key, rec in records.items():
        if rec.get("status") != "done" or not rec.get("result"):
            continue
        try:
            rows.append({"key": key, "input": rec.get("input"), "result": rec["result"],
                         **fit_quality(ann / rec["result"])})
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable result (%s); left out of the report", key, exc)

    def worst_first(r: dict[str, Any]) -> tuple[float, float]:
        rmse, lm = r["photometric_rmse"], r["landmark_error_px"]
        return (-(rmse if math.isfinite(rmse) else math.inf), -(lm if math.isfinite(lm) else 0.0))

    rows.sort(key=worst_first)
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    tiles, titles = [], []
    for r in rows[:n]:
        try:
            img = load_image(r["input"])
            res = ann / r["result"]
            tiles.append(mask_overlay(img, read_mask_png(res / "mask.png"), read_mask_png(res / "occlusion.png")))
        except Exception as exc:  # noqa: BLE001 - a moved or damaged input must not stop the report
            log.warning("%s: cannot show (%s: %s)", r["key"], type(exc).__name__, exc)
            continue
        name = r["key"].encode("ascii", "replace").decode()[-18:]
        titles.append(f"{name} {r['photometric_rmse']:.3f}")
    if tiles:
        atomic_write_bytes(out / "contact_sheet.png",
                           png_bytes(contact_sheet(tiles, min(ncols, len(tiles)), cell=cell, titles=titles)))
    if rows:
        atomic_write_bytes(out / "costs.png", _costs_figure(rows, dict(counts)))
    report = {"annotation": str(ann), "counts": dict(counts), "failed_by_error": dict(errors),
              "ranking": "photometric_rmse (visible face, last round), worst first", "images": rows}
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=1).encode())
    log.info("report of %d done images written to %s", len(rows), out)
    return report
