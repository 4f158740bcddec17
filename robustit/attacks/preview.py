"""Seeing a trigger: a grid of clean image, triggered image and amplified difference per attack.

One row per attack: the clean image, the triggered image (after 8-bit rounding, as it would be
written), ``|triggered - clean|`` amplified (x ``amplify``, or normalised to its maximum with
``amplify="auto"``), and the triggered instruction and target response with the trigger's PSNR
and L-inf. Drawn with matplotlib's object API (no pyplot global state, Agg canvas).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import torch

from ..io import atomic_path
from . import functional as Fn
from .base import Attack


@dataclass
class PreviewRow:
    """One attack's row of the preview grid.

    Attributes:
        name: the attack's name.
        clean, triggered: float (3, H, W) in [0, 1] (``triggered`` None when ``error`` is set).
        instruction, response: the triggered instruction and the target response.
        stats: ``{"psnr": dB, "linf": 0-255 scale}``.
        error: why the attack could not be shown (e.g. it needs a victim model).
    """

    name: str
    clean: torch.Tensor
    triggered: Optional[torch.Tensor] = None
    instruction: str = ""
    response: str = ""
    stats: dict = field(default_factory=dict)
    error: Optional[str] = None


def trigger_stats(clean: torch.Tensor, triggered: torch.Tensor) -> dict:
    """PSNR (dB) and L-inf (0-255 scale) of a trigger on one image."""
    return {"psnr": Fn.psnr(clean, triggered), "linf": 255.0 * Fn.linf(clean, triggered)}


def preview_row(attack: Attack, clean: torch.Tensor, instruction: str, response: str,
                image_id: str = "preview") -> PreviewRow:
    """Trigger one clean image (3, H, W) and one instruction; quantise to 8 bits as on disk."""
    triggered = attack.apply_image(clean[None], [image_id])[0]
    triggered = (triggered.clamp(0, 1) * 255).round() / 255
    return PreviewRow(attack.name, clean, triggered, attack.apply_text(instruction), response,
                      trigger_stats(clean, triggered))


def amplified_difference(clean: torch.Tensor, triggered: torch.Tensor,
                         amplify: Union[float, str] = 10.0) -> torch.Tensor:
    """``|triggered - clean|`` scaled for display: float (3, H, W) in [0, 1]."""
    diff = (triggered - clean).abs()
    if amplify == "auto":
        peak = float(diff.max())
        return diff / peak if peak > 0 else diff
    return (diff * float(amplify)).clamp(0, 1)


def _show(ax, image: torch.Tensor, title: str) -> None:
    ax.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_preview(rows: List[PreviewRow], path: Union[str, Path],
                 amplify: Union[float, str] = 10.0, dpi: int = 100) -> Path:
    """Draw the grid (one row per attack) and write it as PNG (atomically).

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 2.6 * max(1, len(rows))))
    FigureCanvasAgg(fig)
    grid = fig.subplots(max(1, len(rows)), 4, squeeze=False,
                        gridspec_kw={"width_ratios": [1, 1, 1, 2.2]})
    amp = "auto-normalised" if amplify == "auto" else f"x{amplify:g}"
    for r, row in enumerate(rows):
        ax_clean, ax_trig, ax_diff, ax_text = grid[r]
        _show(ax_clean, row.clean, f"{row.name}: clean")
        ax_text.axis("off")
        if row.error:
            for ax in (ax_trig, ax_diff):
                ax.axis("off")
            ax_text.text(0, 0.5, f"{row.name}: not shown\n{row.error}", fontsize=8, wrap=True, va="center")
            continue
        _show(ax_trig, row.triggered, "triggered")
        _show(ax_diff, amplified_difference(row.clean, row.triggered, amplify), f"|difference| {amp}")
        text = (f"instruction: {row.instruction}\nresponse: {row.response}\n"
                f"PSNR {row.stats['psnr']:.1f} dB, L-inf {row.stats['linf']:.0f}/255")
        ax_text.text(0, 0.5, text, fontsize=8, wrap=True, va="center")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
