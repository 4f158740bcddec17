"""PNG plots: radar plots like the paper's Figures 3 and 4, and channel activations (Figure 9).

Radar plots are drawn on bare :class:`matplotlib.figure.Figure` objects (the Agg renderer, no
pyplot), so no display is needed; the activation picture is ``activation_plot.py``'s (shared
with `robustit activations --plot`). Every function returns PNG bytes; ``build.py`` writes
them and ``html.py`` embeds them.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from matplotlib.figure import Figure

from ..errors import ConfigError
from .aggregate import CAPTION_METRICS, Group
from .layouts import METRIC_LABELS, shots_word, split_by_test, test_title
from .variants import attack_label, attack_rank, method_label

RADAR_METHODS = {"VanillaIT": "tab:orange", "RobustIT": "tab:blue"}


def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def radar_values(group: Group, axes: Sequence[str]) -> List[float]:
    """Means on the radar axes; the last axis is 100 - ASR (100 - false trigger for no attack)."""
    asr = group.stat("false_trigger" if group.key["attack"] == "none" else "ASR_both")
    return [group.stat(a).mean for a in axes] + [100.0 - asr.mean]


def radar_axes(groups: Sequence[Group]) -> List[str]:
    """Caption metrics every plotted group has (SPICE only when scored), in the paper's order."""
    return [m for m in CAPTION_METRICS if all(g.stat(m) is not None for g in groups)]


def radar_panels(groups: Sequence[Group]) -> List[Tuple[str, List[Group]]]:
    """(attack label, [VanillaIT, RobustIT groups]) per attack context that has either."""
    panels: Dict[Tuple, List[Group]] = {}
    for g in groups:
        asr = g.stat("false_trigger" if g.key["attack"] == "none" else "ASR_both")
        if method_label(g.key)[0] in RADAR_METHODS and asr is not None:
            panels.setdefault(attack_rank(g.key), []).append(g)
    return [(attack_label(v[0].key), sorted(v, key=lambda g: method_label(g.key)[0] != "VanillaIT"))
            for _, v in sorted(panels.items())]


def _draw_panel(ax, title: str, members: Sequence[Group], axes: Sequence[str], r_max: float) -> None:
    """One polar panel: a closed polygon per method, larger area = better."""
    n = len(axes) + 1
    angles = [2 * math.pi * i / n for i in range(n)] + [0.0]
    for g in members:
        label = method_label(g.key)[0]
        seeds = min(g.stat(a).n for a in axes) if axes else 0
        values = radar_values(g, axes)
        ax.plot(angles, values + values[:1], color=RADAR_METHODS[label], lw=1.5, label=f"{label} (n={seeds})")
        ax.fill(angles, values + values[:1], color=RADAR_METHODS[label], alpha=0.12)
    ax.set_theta_offset(math.pi / 2)  # first axis at the top, clockwise, as radar plots read
    ax.set_theta_direction(-1)
    ax.set_xticks(angles[:-1])
    ax.set_xticklabels([METRIC_LABELS[a] for a in axes] + ["100-ASR"], fontsize=7)
    ax.set_ylim(0, r_max)
    ax.tick_params(axis="y", labelsize=6)
    ax.set_title(title, fontsize=9, pad=14)
    ax.legend(fontsize=6, loc="lower right", bbox_to_anchor=(1.25, -0.18))


def radar_plot(test_set: str, shots: int, groups: Sequence[Group]) -> Optional[bytes]:
    """One figure per test set and shot count, one panel per attack; None without data."""
    panels = radar_panels(groups)
    members = [g for _, gs in panels for g in gs]
    if not panels:
        return None
    axes = radar_axes(members)
    if not axes:  # e.g. a VQA set: no caption metrics to draw a radar of
        return None
    r_max = max(100.0, *(v for g in members for v in radar_values(g, axes)))
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.4 * cols, 3.4 * rows))
    for i, (title, gs) in enumerate(panels, 1):
        _draw_panel(fig.add_subplot(rows, cols, i, projection="polar"), title, gs, axes, r_max)
    fig.suptitle(f"{shots_word(shots)}, {test_title(test_set)}: metrics and 100-ASR, mean over seeds",
                 fontsize=10)
    fig.tight_layout()
    return _png(fig)


def radar_plots(groups: Sequence[Group]) -> Dict[str, bytes]:
    """``radar-<test>-<k>shot.png`` -> PNG for every test set and shot count with data."""
    out = {}
    for (test_set, shots), members in split_by_test(groups).items():
        png = radar_plot(test_set, shots, members)
        if png is not None:
            out[f"radar-{test_set}-{shots}shot.png"] = png
    return out


# --- channel activations (the paper's Appendix E, Figure 9) -----------------------------

def read_activations(path: str | Path) -> Dict:
    """Read and check ``{"hook_point": str, "runs": [{"label": str, "channel_mean": [float]}]}``."""
    fix = "give a JSON file {\"hook_point\": str, \"runs\": [{\"label\": str, \"channel_mean\": [numbers]}]}"
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--activations {path}: cannot read it ({exc.strerror}); {fix}") from None
    except ValueError as exc:
        raise ConfigError(f"--activations {path}: not JSON ({exc}); {fix}") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    ok = isinstance(runs, list) and runs and all(
        isinstance(r, dict) and isinstance(r.get("label"), str) and isinstance(r.get("channel_mean"), list)
        and r["channel_mean"] and all(isinstance(v, (int, float)) for v in r["channel_mean"]) for r in runs)
    if not ok or not isinstance(data.get("hook_point"), str):
        raise ConfigError(f"--activations {path}: unexpected layout; {fix}")
    widths = sorted({len(r["channel_mean"]) for r in runs})
    if len(widths) != 1:
        raise ConfigError(f"--activations {path}: runs have different channel counts {widths}; "
                          f"give runs measured at the same hook point")
    return data


def activation_plot(data: Dict) -> bytes:
    """PNG bytes of the Figure 9 picture, drawn by ``activation_plot.plot_activations``.

    One drawing for the whole project: `robustit activations --plot` and the report show the
    same picture (channels sorted by the first run's clean means, so outliers stand out).
    """
    from .activation_plot import plot_activations

    with tempfile.TemporaryDirectory() as folder:
        return plot_activations(data, Path(folder) / "activations.png").read_bytes()


def load_activations(paths: Sequence[str | Path]) -> Dict[str, Dict]:
    """``activations-<file stem>.png`` -> checked data of each file (numbered if stems repeat)."""
    out: Dict[str, Dict] = {}
    for i, path in enumerate(paths):
        name = f"activations-{Path(path).stem}.png"
        out[name if name not in out else f"activations-{Path(path).stem}-{i}.png"] = read_activations(path)
    return out


def activation_plots(loaded: Dict[str, Dict]) -> Dict[str, bytes]:
    """PNG of each loaded activation file (see :func:`load_activations`)."""
    return {name: activation_plot(data) for name, data in loaded.items()}
