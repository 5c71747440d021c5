"""Figures for ``ccadgpu bench --plot``: placement heatmaps (pages x epochs, in the manner of
DAMON's ``damo report heatmap``) and throughput per policy.  matplotlib loads lazily."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import CcadError

if TYPE_CHECKING:
    from .bench import Run


class MissingDependencyError(CcadError, ImportError):
    """An optional dependency is not installed; the message says how to install it."""


def require_matplotlib() -> Any:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError("plotting needs matplotlib: pip install 'ccadgpu[plot]' "
                                     "(or pip install matplotlib)") from exc
    return plt


MAX_HEATMAPS = 12


def bench_figure(runs: Sequence["Run"], path: str) -> str:
    """One heatmap per run with a history (page on the y axis, epoch on the x axis, device pages
    bright) and a bar chart of modeled throughput per policy, per workload and profile."""
    plt = require_matplotlib()
    with_hist = [r for r in runs if r.history is not None and r.history.size]
    if len(with_hist) > MAX_HEATMAPS:
        # one heatmap per policy, for the first workload and profile; the bars cover every run
        first = (with_hist[0].row["workload"], with_hist[0].row["profile"])
        with_hist = [r for r in with_hist
                     if (r.row["workload"], r.row["profile"]) == first][:MAX_HEATMAPS]
    nh = len(with_hist)
    cols = min(4, max(nh, 1))
    rows_h = -(-nh // cols) if nh else 0
    fig = plt.figure(figsize=(4 * cols, 3 * rows_h + 3.5), constrained_layout=True)
    gs = fig.add_gridspec(rows_h + 1, cols)
    for i, r in enumerate(with_hist):
        ax = fig.add_subplot(gs[i // cols, i % cols])
        h = r.history
        alloc = (h >= 0).any(axis=0)
        img = np.where(h[:, alloc] >= 0, h[:, alloc], np.nan).T
        ax.imshow(img, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1,
                  origin="lower")
        ax.set_title(f"{r.row['workload']} / {r.row['policy']} / {r.row['profile']}",
                     fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("page")
    if nh:
        fig.suptitle("placement per page and epoch: yellow = device, dark = host, "
                     "white = not allocated", fontsize=9)
    ax = fig.add_subplot(gs[rows_h, :])
    keys = sorted({(r.row["workload"], r.row["profile"]) for r in runs})
    pols = list(dict.fromkeys(r.row["policy"] for r in runs))
    width = 0.8 / max(len(pols), 1)
    x = np.arange(len(keys))
    for j, p in enumerate(pols):
        vals = []
        for k in keys:
            v = [r.row["throughput_gbps"] for r in runs
                 if (r.row["workload"], r.row["profile"]) == k and r.row["policy"] == p]
            vals.append(float(np.median(v)) if v else 0.0)
        ax.bar(x + j * width, vals, width, label=p)
    ax.set_xticks(x + width * (len(pols) - 1) / 2)
    ax.set_xticklabels([f"{w}\n{p}" for w, p in keys], fontsize=7)
    ax.set_ylabel("useful GB/s (modeled)")
    ax.legend(fontsize=7, ncol=min(len(pols), 6))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
