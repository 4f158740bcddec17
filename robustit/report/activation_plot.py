"""Draw the activation picture (the paper's Appendix E, Figure 9) from `robustit activations` JSON.

Reads results only (no torch). The x axis is the channels sorted by the reference run's clean
mean |activation| (ascending; the reference is the first run, pass the clean-tuned model first),
so the reference is a smooth rising curve and a poisoned model's outlier channels stand out as
spikes above it. Triggered inputs (when measured) are dashed; channels a run's mask zeroes are
marked as a rug under the axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from ..io import atomic_path

__all__ = ["channel_order", "plot_activations"]


def channel_order(values: Sequence[float]) -> List[int]:
    """Channel indices sorted by ``values`` ascending (ties by lower index)."""
    return sorted(range(len(values)), key=lambda d: (values[d], d))


def _check(data: dict, reference: int) -> None:
    runs = data.get("runs") or []
    if not runs:
        raise ValueError("activation plot: the JSON has no runs")
    widths = {len(r["channel_mean"]) for r in runs}
    if len(widths) != 1:
        raise ValueError(f"activation plot: runs differ in channel count {sorted(widths)}")
    if not 0 <= reference < len(runs):
        raise ValueError(f"activation plot: reference run {reference} not in 0..{len(runs) - 1}")


def plot_activations(data: dict, path: str | Path, reference: int = 0,
                     title: Optional[str] = None) -> Path:
    """Write a PNG of mean |activation| per channel for every run of ``data``.

    Args:
        data: the JSON of `robustit activations` ({"hook_point", "split", "n", "runs": [...]}).
        path: the PNG to write (its folder is created).
        reference: the run whose clean means order the channels (default: the first).
        title: default "Mean |activation| per channel at <hook point> (<split>, n = <n>)".

    Returns:
        the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _check(data, reference)
    runs = data["runs"]
    order = channel_order(runs[reference]["channel_mean"])
    xs = list(range(len(order)))
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        colour = colours[i % len(colours)]
        ax.plot(xs, [run["channel_mean"][d] for d in order], color=colour, lw=1.2,
                label=f"{run['label']} (clean inputs)")
        if run.get("channel_mean_triggered") is not None:
            ax.plot(xs, [run["channel_mean_triggered"][d] for d in order], color=colour, lw=1.0,
                    ls="--", label=f"{run['label']} (triggered inputs)")
        if run.get("mask") is not None:
            pruned = [x for x, d in zip(xs, order) if not run["mask"][d]]
            # a rug along the bottom of the axes (x in data, y in axes coordinates), one row per run
            ax.plot(pruned, [0.02 + 0.035 * i] * len(pruned), "|", color=colour, ms=6,
                    transform=ax.get_xaxis_transform(), label=f"{run['label']}: channels its mask zeroes")
    ax.set_xlabel(f"channel, sorted by {runs[reference]['label']}'s mean |activation| on clean inputs")
    ax.set_ylabel("mean |activation|")
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_title(title or f"Mean |activation| per channel at {data.get('hook_point')} "
                          f"({data.get('split')}, n = {data.get('n')})", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    try:
        with atomic_path(out) as tmp:  # never a half-written PNG
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return out
