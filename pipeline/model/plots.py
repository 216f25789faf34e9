"""The figures of a served model's performance, drawn with matplotlib (Agg, no screen) from
:mod:`pipeline.model.performance`'s numbers: the ROC curve with its bootstrap band, the
reliability diagram (before and after calibration) and the decision curve. Training's report,
``egfr-node evaluate`` and the console's performance page draw the same pictures.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["roc_figure", "reliability_figure", "decision_curve_figure", "save_png", "png_bytes"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_figure(curves: Sequence[tuple[str, Sequence[int], Sequence[float]]], band: Mapping[str, list[float]] | None = None,
               title: str = "ROC, patient level") -> Any:
    """ROC curves ``(label, labels, scores)``, the first drawn bold; ``band`` from
    :func:`pipeline.model.performance.roc_band` shaded around it."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    if band and band.get("fpr"):
        ax.fill_between(band["fpr"], band["low"], band["high"], color="tab:blue", alpha=0.2, lw=0,
                        label="95 % bootstrap band")
    for index, (label, y, s) in enumerate(curves):
        if len(set(np.asarray(y).tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, color="black" if index == 0 else None, lw=2 if index == 0 else 1, alpha=1 if index == 0 else 0.5,
                label=label)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def reliability_figure(curves: Mapping[str, Mapping[str, list[float]]], title: str) -> Any:
    """Reliability diagram: each curve (``performance.reliability_curve`` output) by name, the
    count of patients beside each point, and the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="ideal")
    for (name, curve), marker in zip(curves.items(), ("o", "s", "^", "v")):
        if not curve.get("predicted"):
            continue
        ax.plot(curve["predicted"], curve["observed"], marker=marker, label=name)
        for x, y, n in zip(curve["predicted"], curve["observed"], curve.get("count") or []):
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel="predicted probability (bins of equal counts)", ylabel="observed fraction EGFR positive",
           xlim=(0, 1), ylim=(0, 1), title=title)
    ax.title.set_fontsize(9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def decision_curve_figure(rows: Sequence[Mapping[str, float]], title: str = "Decision curve") -> Any:
    """Net benefit of the model, treat-all and treat-none over threshold probabilities."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    t = [r["threshold"] for r in rows]
    ax.plot(t, [r["model"] for r in rows], color="black", lw=2, label="model")
    ax.plot(t, [r["treat_all"] for r in rows], color="tab:red", lw=1, label="treat all")
    ax.plot(t, [r["treat_none"] for r in rows], color="grey", lw=1, ls="--", label="treat none")
    top = max([r["model"] for r in rows] + [r["treat_all"] for r in rows] + [0.05])
    ax.set(xlabel="threshold probability", ylabel="net benefit", title=title, xlim=(0, 1), ylim=(-0.05, top * 1.1))
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def save_png(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return Path(path)


def png_bytes(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()
