"""Fine-Pruning (Liu et al., 2018) adapted to instruction tuning (RobustIT paper, Appendix F).

After tuning on the (possibly poisoned) set, the defender measures the mean activation of every
adapter channel at a hook point (default: the model's default hook point, the perceiver output
(B, T, N, D)) on a slice of the training data, prunes the least active channels (mask to zero)
up to a percentile, and optionally re-tunes with the mask fixed.

Choices of ours (docs/baselines.md):

* **Which data.** The defender has no clean validation set, so the slice is a seeded share of
  the *training* samples (``measurement_slice``): it may itself hold poisoned samples. It is not
  withheld from tuning, so Fine-Pruning tunes on exactly the data VanillaIT tunes on.
* **Activity** is the mean absolute activation per channel, mean_{B,T,N} |X_..d| (the original
  measures post-ReLU activations, which are non-negative; the perceiver output is a LayerNorm
  output of either sign). It is the statistic AAR uses (``abs_sum_and_count``).
* **How many.** floor(percentile / 100 * D) channels are pruned (``prune_count``); percentile in
  [0, 100), so at least one channel always stays. Ties in activity: the lower channel index is
  kept (``topk_mask``'s stable order).
* **The mask** is a :class:`ChannelMask` with ``tracking=False`` (it never updates itself),
  ``enabled=True`` (it acts at inference), and the measured activity stored in its
  ``importance`` buffer, so the checkpoint carries both the mask and the evidence for it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional

import torch
from torch import Tensor

from ..config import check_range
from ..errors import ConfigError
from ..models.masks import ChannelMask, abs_sum_and_count, topk_mask
from ..seeding import derive_seed, torch_generator

__all__ = ["FinePruneConfig", "prune_count", "measurement_slice", "channel_activity",
           "keep_most_active", "install_prune_mask"]

_FLOOR_EPS = 1e-9  # floor(0.29 * 100) must be 29, not 28 (float error)


@dataclass
class FinePruneConfig:
    """Fine-Pruning settings.

    Attributes:
        percentile: share of channels pruned, in percent, [0, 100): the floor(percentile / 100 * D)
            least active channels are masked to zero (default 20).
        slice_share: share of the training samples the activity is measured on, (0, 1]
            (default 0.05; ceil(share * n) samples, at least one).
        retune_steps: optimizer steps of re-tuning with the mask fixed after pruning (default 0).
        retune_lr: constant learning rate of the re-tuning (None: the run's ``lr``).
        hook_point: where to measure and mask (None: the model's default hook point).
    """

    percentile: float = 20.0
    slice_share: float = 0.05
    retune_steps: int = 0
    retune_lr: Optional[float] = None
    hook_point: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("percentile", "slice_share") + (("retune_lr",) if self.retune_lr is not None else ()):
            _require_number(name, getattr(self, name))
        check_range("percentile", self.percentile, 0.0, 100.0, hi_open=True)
        check_range("slice_share", self.slice_share, 0.0, 1.0, lo_open=True)
        steps = self.retune_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"`retune_steps` must be an integer >= 0; got {self.retune_steps!r}")
        if self.retune_lr is not None:
            check_range("retune_lr", self.retune_lr, 0.0, lo_open=True)


def _require_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"`{name}` must be a number; got {value!r}")


def prune_count(percentile: float, width: int) -> int:
    """How many of ``width`` channels are pruned: floor(percentile / 100 * width), < width."""
    check_range("percentile", percentile, 0.0, 100.0, hi_open=True)
    return int(math.floor(percentile / 100.0 * width + _FLOOR_EPS))


def measurement_slice(n_samples: int, share: float, seed: int) -> List[int]:
    """Indices (ascending) of the seeded slice: ceil(share * n) of n samples (at least one).

    A pure function of (n, share, seed): the same run always measures on the same samples.
    """
    check_range("slice_share", share, 0.0, 1.0, lo_open=True)
    k = min(n_samples, max(1, math.ceil(share * n_samples - _FLOOR_EPS)))
    perm = torch.randperm(n_samples, generator=torch_generator(derive_seed(seed, "fineprune-slice")))
    return sorted(perm[:k].tolist())


@contextlib.contextmanager
def _recording(module: torch.nn.Module, sums: dict) -> Iterator[None]:
    """Accumulate per-channel sum |x| and the row count of ``module``'s output (Tensor or tuple)."""
    def hook(_m, _inp, out):
        x = out[0] if isinstance(out, (tuple, list)) else out
        total, count = abs_sum_and_count(x)
        sums["total"] = total if "total" not in sums else sums["total"] + total
        sums["count"] = sums.get("count", 0) + count

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def channel_activity(model, hook_point: str, image_batches: Iterable[Tensor]) -> Tensor:
    """Mean |activation| per channel at ``hook_point`` over all given images (eval mode).

    Args:
        model: an LVLM.
        hook_point: a key of ``model.spec.hook_points``.
        image_batches: tensors (B, T, 3, H, W) in [0, 1].

    Returns:
        (D,) float32 activity, measured before any channel mask at that hook point (the hook is
        registered before the masks'), with the model's other masks acting as at inference.
    """
    module = model.get_submodule(model.hook_module_path(hook_point))
    was_training, sums = model.training, {}
    model.eval()
    try:
        with _recording(module, sums), model.masks_active():
            for images in image_batches:
                model.visual_features(images.to(model.device), None)
    finally:
        model.train(was_training)
    if not sums:
        raise ConfigError("Fine-Pruning: no activations were recorded (empty measurement slice)")
    return (sums["total"] / max(sums["count"], 1)).float()


def keep_most_active(activity: Tensor, percentile: float) -> Tensor:
    """The Fine-Pruning mask: 1 for the D - floor(p/100 D) most active channels, 0 elsewhere.

    Args:
        activity: (D,) mean |activation|.

    Returns:
        float32 (D,) in {0, 1}; ties keep the lower channel index.
    """
    width = activity.numel()
    return topk_mask(activity, width - prune_count(percentile, width))


def install_prune_mask(model, hook_point: str, activity: Tensor, percentile: float) -> ChannelMask:
    """Build the fixed mask from ``activity`` (D,) and attach it to ``model`` at ``hook_point``."""
    if hook_point in model.channel_masks:
        raise ConfigError(f"Fine-Pruning: hook point {hook_point!r} already has a channel mask "
                          f"(another defense); choose another `hook_point`")
    keep = keep_most_active(activity, percentile)
    width = activity.numel()
    # gamma = kept / D makes ChannelMask's k equal the kept count (beta unused: no tracking)
    mask = ChannelMask(width, gamma=int(keep.sum()) / width, beta=0.0, enabled=True,
                       tracking=False).to(activity.device)
    mask.set_mask(keep)
    mask.importance.copy_(activity)
    return model.add_channel_mask(hook_point, mask)
