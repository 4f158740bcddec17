"""Channel masks: AAR's importance-tracked top-k mask (and Fine-Pruning's fixed mask, built by
``robustit.defenses.fineprune``: ``tracking=False``, set with ``set_mask``).

The RobustIT paper's Anomalous Activation Regularization (Sec. 3.4, Eqs. 9-11) keeps, of the D
channels of the adapter's visual features X (B, T, N, D), the k = floor(gamma * D) channels
that are the *least* active on average, and zeroes the others:

    b_d   = -mean_{B,T,N} |X_{..d}|                    (Eq. 9, batch importance)
    g^t   = beta * g^{t-1} + (1 - beta) * b^t          (Eq. 10, g^0 = 0)
    M_d   = 1[d in top_k(g^t)]                         (Eq. 11)

This module holds the pure maths (:func:`batch_importance`, :func:`momentum_update`,
:func:`topk_mask`), the stateful :class:`ChannelMask` (buffers, so the mask travels with the
checkpoint), and :func:`channel_mask_hooks`, the one context manager that makes masks act on a
model's module outputs through forward hooks (removed in ``finally``; no module replacement).

It lives in ``robustit.models`` because the model owns its masks (``model.channel_masks``);
``robustit.defenses.aar`` builds them from an ``AARConfig`` (imports go models <- defenses).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from functools import partial
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..config import check_range
from ..errors import CheckpointError, ConfigError

__all__ = [
    "batch_importance",
    "abs_sum_and_count",
    "momentum_update",
    "topk_mask",
    "keep_count",
    "ChannelMask",
    "channel_mask_hooks",
    "paused_tracking",
]

# floor(gamma * D) on floats: 0.29 * 100 == 28.999999999999996; the tolerance makes it 29.
_FLOOR_EPS = 1e-9


# --------------------------------------------------------------------------- pure maths


def abs_sum_and_count(x: Tensor) -> Tuple[Tensor, int]:
    """Per-channel sum of |x| over all leading dims, and how many rows were summed.

    Args:
        x: activations (..., D), channels last.

    Returns:
        (sum_abs (D,) float64, count) with count = x.numel() // D. float64 so that sums packed
        and all-reduced across ranks agree with a single-process sum to ~1e-12.
    """
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ConfigError(f"channel statistics need a tensor (..., D) with D >= 1; got shape {tuple(x.shape)}")
    flat = x.detach().reshape(-1, x.shape[-1])
    return flat.abs().sum(dim=0, dtype=torch.float64), int(flat.shape[0])


def batch_importance(x: Tensor) -> Tensor:
    """Eq. 9: b_d = -mean |x_{...d}| over every leading dim (B, T, N for adapter features).

    Args:
        x: activations (..., D).

    Returns:
        (D,) float32: higher = less active = more important to keep.
    """
    total, count = abs_sum_and_count(x)
    return (-total / max(count, 1)).float()


def momentum_update(g: Tensor, b: Tensor, beta: float) -> Tensor:
    """Eq. 10: g <- beta * g + (1 - beta) * b.

    Args:
        g: global importance (D,).
        b: batch importance (D,).
        beta: momentum in [0, 1]; 0 = only the current batch, 1 = g never changes.

    Returns:
        the new global importance (D,), dtype of ``g``.
    """
    return (beta * g + (1.0 - beta) * b.to(g.dtype)).to(g.dtype)


def topk_mask(g: Tensor, k: int) -> Tensor:
    """Eq. 11: 1 for the k channels of highest ``g``, 0 elsewhere.

    Ties are broken deterministically by the *lower channel index* (a stable descending sort),
    so equal scores (e.g. the all-zero g of beta = 1) always keep channels 0..k-1.

    Args:
        g: importance (D,).
        k: how many channels to keep, 1 <= k <= D.

    Returns:
        float32 (D,) with exactly k ones.
    """
    if not 1 <= k <= g.numel():
        raise ConfigError(f"top-k mask: `k` must be in [1, {g.numel()}]; got {k}")
    order = torch.sort(g.detach(), descending=True, stable=True).indices[:k]
    mask = torch.zeros(g.numel(), dtype=torch.float32, device=g.device)
    mask[order] = 1.0
    return mask


def keep_count(gamma: float, width: int) -> int:
    """k = floor(gamma * D) (with a 1e-9 tolerance for float error); raises if k < 1."""
    check_range("gamma", gamma, 0.0, 1.0, lo_open=True)
    k = int(math.floor(gamma * width + _FLOOR_EPS))
    if k < 1:
        raise ConfigError(
            f"`gamma`={gamma} keeps floor({gamma} * {width}) = 0 of the {width} channels; "
            f"use gamma >= {1.0 / width:.4g} for this width"
        )
    return k


# --------------------------------------------------------------------------- the module


class ChannelMask(nn.Module):
    """A per-channel {0,1} mask with AAR's momentum importance statistics.

    Buffers (all persistent, so they round-trip through ``state_dict`` and checkpoints):
        mask (D,) float32 in {0, 1}: all ones at construction (nothing pruned before statistics).
        importance (D,) float32: the global importance g, zeros at construction (Eq. 10's g^0 = 0,
            so the first update gives g^1 = (1 - beta) * b^1, which ranks channels as b^1 does).
        steps () int64: how many updates have been made.
        enabled () bool: whether the mask acts in **eval** mode (the paper applies it at inference;
            AARConfig.apply_at_inference). In training mode a hooked mask always acts.

    Attributes (not saved; configuration is saved with the run's config):
        gamma: keep ratio in (0, 1]; k = floor(gamma * D) >= 1.
        beta: momentum in [0, 1].
        tracking: when True and the module is in training mode, every forward first updates
            the statistics from its (unmasked) input, then masks it.
        process_group: the torch.distributed group used to all-reduce statistics (None = default).

    Note:
        ``model.half()`` also casts ``importance``; keep masks in float32 if rankings must be exact.
    """

    def __init__(self, width: int, gamma: float = 0.5, beta: float = 0.9, enabled: bool = True,
                 tracking: bool = True) -> None:
        super().__init__()
        if int(width) < 1:
            raise ConfigError(f"ChannelMask `width` must be >= 1; got {width}")
        check_range("beta", beta, 0.0, 1.0)
        self.width = int(width)
        self.k = keep_count(gamma, self.width)
        self.gamma = float(gamma)
        self.beta = float(beta)
        self.tracking = bool(tracking)
        self.process_group = None
        self.register_buffer("mask", torch.ones(self.width))
        self.register_buffer("importance", torch.zeros(self.width))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("enabled", torch.tensor(bool(enabled)))

    def extra_repr(self) -> str:
        return f"width={self.width}, gamma={self.gamma}, k={self.k}, beta={self.beta}, tracking={self.tracking}"

    @torch.no_grad()
    def update(self, x: Tensor) -> Tensor:
        """One AAR statistics step from activations ``x`` (..., D); returns the new mask (D,).

        Under an initialised torch.distributed, [sum |x| (D), row count] is all-reduced (SUM) in
        one float64 tensor, so every rank computes the same b (the mean over the global batch,
        weighted by each rank's row count) and the same mask. This is a collective: every rank
        must call it the same number of times (true for DDP forwards in training mode).
        """
        self._check_width(x.shape[-1], "activations")
        total, count = abs_sum_and_count(x)
        packed = self._all_reduce(torch.cat([total, total.new_tensor([float(count)])]))
        # divide on the device (no .item() sync); count >= 1 whenever any rank saw a row
        b = (-packed[:-1] / packed[-1].clamp_min(1.0)).to(self.importance.dtype)
        self.importance.copy_(momentum_update(self.importance, b, self.beta))
        self.mask.copy_(topk_mask(self.importance, self.k).to(self.mask.dtype))
        self.steps += 1
        return self.mask

    def _all_reduce(self, packed: Tensor) -> Tensor:
        """SUM-reduce [sum_abs (D), count] over ranks when torch.distributed is initialised."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=self.process_group)
        return packed

    def forward(self, x: Tensor) -> Tensor:
        """Mask ``x`` (..., D) channel-wise; update statistics first when tracking in training.

        Acts in training mode always, in eval mode iff ``enabled``; chosen with a tensor select,
        not a Python branch on the buffer, so no device sync per call.
        """
        self._check_width(x.shape[-1], "hooked output")
        if self.training and self.tracking:
            self.update(x)
        if self.training:
            effective = self.mask
        else:
            effective = torch.where(self.enabled, self.mask, torch.ones_like(self.mask))
        return x * effective.to(dtype=x.dtype)

    def set_mask(self, keep: Tensor) -> None:
        """Set the mask by hand (e.g. Fine-Pruning); ``keep`` is (D,) bool or {0,1}."""
        self._check_width(keep.numel(), "set_mask(keep)")
        self.mask.copy_(keep.reshape(-1).to(self.mask.dtype) != 0)

    def kept_channels(self) -> Tensor:
        """Indices (k',) int64 of the channels the mask keeps, ascending."""
        return torch.nonzero(self.mask != 0).reshape(-1)

    def _check_width(self, got: int, what: str) -> None:
        if int(got) != self.width:
            raise ConfigError(
                f"ChannelMask width mismatch: the mask has D={self.width} channels but the {what} "
                f"has {got} in its last dim; the hook point must output channels last with D={self.width}, "
                f"or build the mask with width={got}"
            )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # A mask for another width would silently mis-prune or fail later: refuse it clearly.
        for name in ("mask", "importance"):
            key = prefix + name
            if key in state_dict and tuple(state_dict[key].shape) != (self.width,):
                raise CheckpointError(
                    f"channel mask `{key}`: expected width {self.width}, got shape "
                    f"{tuple(state_dict[key].shape)}; the checkpoint was made for a model with a "
                    f"different hook-point width (check the model family / hook_point)"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


# --------------------------------------------------------------------------- hooks


def _mask_hook(mask, path: str, _module, _inputs, out):
    """Forward hook (bound to one mask and its module path with functools.partial)."""
    return _mask_output(mask, out, path)


def _mask_output(mask: ChannelMask, output, path: str):
    """Apply ``mask`` to a module output: a Tensor, the first element of a tuple/list, or the
    first entry of a Mapping (e.g. a transformers ModelOutput, masked in place)."""
    if isinstance(output, Tensor):
        return mask(output)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        masked = [mask(output[0]), *output[1:]]
        return masked if isinstance(output, list) else tuple(masked)
    if isinstance(output, Mapping) and output:
        first = next(iter(output.keys()))
        output[first] = mask(output[first])
        return output
    raise ConfigError(
        f"channel mask hook on `{path}`: cannot mask an output of type {type(output).__name__}; "
        f"hook a module that returns a Tensor (..., D), a tuple whose first element is one, or a "
        f"ModelOutput"
    )


def _resolve(root: nn.Module, path: str, available: Optional[Sequence[str]]) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        if available is not None:
            listing = ", ".join(sorted(available)) or "(none)"
        else:
            names = [n for n, _ in root.named_modules() if n][:20]
            listing = ", ".join(names) + (" ..." if len(names) == 20 else "")
        raise ConfigError(
            f"channel mask target `{path}` is not a submodule of {type(root).__name__}; "
            f"available hook points: {listing}"
        ) from None


@contextlib.contextmanager
def channel_mask_hooks(root: nn.Module, targets: Mapping[str, ChannelMask],
                       available: Optional[Sequence[str]] = None,
                       only_enabled: bool = False) -> Iterator[Dict[str, ChannelMask]]:
    """Make ``targets`` act on ``root``'s submodule outputs while the context is open.

    A forward hook on ``root.get_submodule(path)`` replaces that module's output by
    ``mask(output)`` (see :class:`ChannelMask` for when it updates statistics and when it acts;
    output types: Tensor (..., D), tuple/list with the Tensor first, Mapping/ModelOutput with the
    Tensor as first entry). All hooks are removed in ``finally``, also when the body raises.

    Args:
        root: the model.
        targets: module path (as for ``get_submodule``) -> ChannelMask. The masks should be
            submodules of ``root`` (``model.channel_masks``) so ``train()/eval()`` reach them.
        available: hook-point paths listed in the error for an unknown path (default: the first
            20 submodule names).
        only_enabled: skip targets whose ``enabled`` buffer is False (read once on entry). Off by
            default, because ``enabled`` means "acts at inference" and a disabled mask still acts
            in training mode.

    Yields:
        the dict of targets that got a hook.
    """
    modules = {path: _resolve(root, path, available) for path in targets}  # all paths first
    active = {p: m for p, m in targets.items() if not only_enabled or bool(m.enabled)}
    handles = []
    try:
        for path, mask in active.items():
            handles.append(modules[path].register_forward_hook(partial(_mask_hook, mask, path)))
        yield active
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def paused_tracking(masks) -> Iterator[None]:
    """Temporarily stop statistics updates of ``masks`` (an iterable of ChannelMask, or a
    ModuleDict); the masks still act. Use around a second adapter pass (e.g. IDR's clean view)
    whose activations must not count twice. Restores each mask's previous flag in ``finally``."""
    items = list(masks.values()) if isinstance(masks, (Mapping, nn.ModuleDict)) else list(masks)
    previous = [m.tracking for m in items]
    try:
        for m in items:
            m.tracking = False
        yield
    finally:
        for m, flag in zip(items, previous):
            m.tracking = flag
