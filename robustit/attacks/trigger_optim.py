"""Trigger optimisation routines of VL-Trojan (Liang et al., 2024). Pure optimisation: no model
code is imported; the frozen victim arrives as callables.

* :func:`optimise_universal_patch`: a universal image patch learned with the
  isolating-and-clustering objective. With ``z_i`` the L2-normalised, token-pooled features of
  patched image ``i`` and ``c_i`` those of the same clean image (both under the same random
  resized crop)::

      L = mean_i ||z_i - mean_j z_j||^2  +  lam * mean_i cos(z_i, c_i)
          (clustering: poisoned pulled      (isolating: poisoned pushed
           toward their centre)              away from their clean twin)

  minimised with Adam (lr 0.1, cosine schedule) over the patch logits (patch = sigmoid(logits),
  so it stays in [0,1]).
* :func:`beam_search_text_trigger`: a short lowercase character trigger grown one character at
  a time by beam search, scored by how much appending it moves the text representation
  (mean ``1 - cos`` to the instruction alone). Without a text representation the trigger falls
  back to :data:`FALLBACK_TEXT_TRIGGER` (``"zbw"``, the trigger VL-Trojan reports for CLIP
  ViT-L/14).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CheckpointError
from ..io import atomic_path

from ..errors import ConfigError
from . import functional as Fn

#: the text trigger used when no text representation is available to search against
FALLBACK_TEXT_TRIGGER = "zbw"
#: where a patch can be placed
POSITIONS = Fn.PATCH_POSITIONS

VisionFeatures = Callable[[Tensor], Tensor]
TextFeatures = Callable[[List[str]], Tensor]


# -- patch geometry ----------------------------------------------------------------------------
def patch_side(image_hw: Sequence[int], fraction: float) -> int:
    """Side of a square patch covering ``fraction`` of an ``(H, W)`` image (>= 1 pixel).

    1 % of 224x224 -> 22; of 64x64 -> 6; of 32x32 -> 3.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    return max(1, min(h, w, int(round(math.sqrt(fraction * h * w)))))


def patch_origin(image_hw: Sequence[int], patch_hw: Sequence[int], position: str) -> Tuple[int, int]:
    """Top-left corner ``(y0, x0)`` of a ``patch_hw`` patch at ``position`` (flush with the
    corner, as the BadNets mask) in an ``image_hw`` image (see ``functional.patch_origin``)."""
    (h, w), (ph, pw) = image_hw[-2:], patch_hw[-2:]
    if ph > h or pw > w:
        raise ConfigError(f"patch {ph}x{pw} does not fit an image of {h}x{w}; lower `patch_fraction`")
    return Fn.patch_origin(h, w, ph, pw, position)


def paste_patch(images: Tensor, patch: Tensor, position: str) -> Tensor:
    """Paste ``patch`` (3,h,w) onto ``images`` (B,3,H,W) at ``position`` (differentiable in the
    patch). Returns a new (B,3,H,W) tensor; the other pixels are unchanged."""
    y0, x0 = patch_origin(images.shape[-2:], patch.shape[-2:], position)
    return Fn.paste_patch(images, patch, y0, x0)


# -- augmentation ------------------------------------------------------------------------------
def random_resized_crop(images: Tensor, generator: torch.Generator, scale: Tuple[float, float] = (0.8, 1.0),
                        keep: Optional[Tuple[int, int, int, int]] = None) -> Tensor:
    """Seeded random resized crop of each image, resized back to its size (bilinear).

    Args:
        images: (B,3,H,W).
        generator: draws crop areas (``scale`` of the image), aspect ratios (3/4..4/3) and offsets.
        keep: optional box ``(y0, x0, h, w)`` that every crop contains when it can (the patch).
    Returns:
        (B,3,H,W), differentiable in ``images``.
    """
    b, _, h, w = images.shape
    u = torch.rand(b, 4, generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1])
    ch = torch.sqrt(area / ratio).clamp(max=1.0) * h
    cw = torch.sqrt(area * ratio).clamp(max=1.0) * w
    y0 = _crop_offsets(ch, h, u[:, 2], None if keep is None else (keep[0], keep[2]))
    x0 = _crop_offsets(cw, w, u[:, 3], None if keep is None else (keep[1], keep[3]))
    theta = torch.zeros(b, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 1, 1] = (cw / w).to(theta), (ch / h).to(theta)
    theta[:, 0, 2] = ((x0 + cw / 2) / w * 2 - 1).to(theta)
    theta[:, 1, 2] = ((y0 + ch / 2) / h * 2 - 1).to(theta)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _crop_offsets(size: Tensor, full: int, u: Tensor, keep: Optional[Tuple[int, int]]) -> Tensor:
    """Offsets (B,) of crops of ``size`` (B,) in ``[0, full]``; containing ``keep=(start, len)``
    where possible."""
    lo, hi = torch.zeros_like(size), full - size
    if keep is not None:
        klo, khi = (keep[0] + keep[1] - size).clamp(min=0), torch.minimum(hi, torch.full_like(size, keep[0]))
        ok = klo <= khi
        lo, hi = torch.where(ok, klo, lo), torch.where(ok, khi, hi)
    return lo + u * (hi - lo)


# -- the isolating-and-clustering objective ------------------------------------------------------
def pooled_features(vision_features: VisionFeatures, images: Tensor) -> Tensor:
    """L2-normalised mean over tokens of ``vision_features(images)``: (B,3,H,W) -> (B,D)."""
    feats = vision_features(images)
    if feats.dim() != 3:
        raise ConfigError(f"`vision_features` must return (B, P, D) features; got shape "
                          f"{tuple(feats.shape)}")
    return F.normalize(feats.float().mean(1), dim=-1)


def isolate_cluster_loss(z: Tensor, c: Tensor, lam: float) -> Tuple[Tensor, Tensor, Tensor]:
    """``(loss, cluster, isolate)`` for poisoned ``z`` (B,D) and clean ``c`` (B,D), both unit.

    cluster = mean_i ||z_i - mean_j z_j||^2; isolate = mean_i cos(z_i, c_i);
    loss = cluster + lam * isolate.
    """
    cluster = (z - z.mean(0, keepdim=True)).pow(2).sum(1).mean()
    isolate = (z * c).sum(1).mean()
    return cluster + lam * isolate, cluster, isolate


def _index_batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless batches of indices over shuffled passes of ``range(n)``."""
    while True:
        order = torch.randperm(n, generator=generator)
        for i in range(0, max(1, n - batch_size + 1), batch_size):
            yield order[i:i + batch_size]


def optimise_universal_patch(vision_features: VisionFeatures, clean_images: Tensor,
                             patch_size: int | Tuple[int, int], position: str = "bottom-right",
                             steps: int = 250, lr: float = 0.1, lam: float = 1.0,
                             batch_size: int = 16, crop_scale: Tuple[float, float] = (0.8, 1.0),
                             generator: Optional[torch.Generator] = None,
                             progress: bool = True) -> Tuple[Tensor, List[float]]:
    """Learn a universal patch with the isolating-and-clustering objective (module docstring).

    Args:
        vision_features: frozen victim encoder, (B,3,H,W) in [0,1] -> (B,P,D); must let gradients
            flow to its input (no ``torch.no_grad`` inside).
        clean_images: float (N,3,H,W) in [0,1].
        patch_size: side ``s`` or ``(h, w)`` in pixels at the images' size.
        position: one of :data:`POSITIONS`.
        steps, lr, lam, batch_size: Adam steps (cosine schedule to 0), learning rate, isolating
            weight, images per step.
        crop_scale: area range of the random resized crop (which keeps the patch in view).
        generator: seeds the initial patch, batches and crops (default seed 0).
        progress: show a tqdm bar.
    Returns:
        ``(patch (3,h,w) in [0,1], history)``; ``history[t]`` is the objective at step ``t``.
    """
    from tqdm.auto import tqdm

    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    _check_patch_args(clean_images, ph, pw, position, steps, lr)
    images = clean_images.detach().float()
    logits = torch.randn(3, ph, pw, generator=g).to(images.device).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    batches, history = _index_batches(len(images), batch_size, g), []
    bar = tqdm(range(steps), desc="vltrojan patch", disable=not progress, leave=False)
    for _ in bar:
        seed = int(torch.randint(2**62, (1,), generator=g))
        loss = _patch_loss(vision_features, images[next(batches)], torch.sigmoid(logits), position,
                           lam, seed, crop_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item())
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    return torch.sigmoid(logits.detach()).cpu(), history


def _patch_loss(vision_features: VisionFeatures, x: Tensor, patch: Tensor, position: str,
                lam: float, crop_seed: int, crop_scale: Tuple[float, float]) -> Tensor:
    """The objective on one batch x (B,3,H,W): patched and clean views share the same crops."""
    y0, x0 = patch_origin(x.shape[-2:], patch.shape[-2:], position)
    keep = (y0, x0, patch.shape[-2], patch.shape[-1])
    crop = lambda t: random_resized_crop(t, torch.Generator().manual_seed(crop_seed),  # noqa: E731
                                         crop_scale, keep)
    z = pooled_features(vision_features, crop(paste_patch(x, patch, position)))
    with torch.no_grad():
        c = pooled_features(vision_features, crop(x))
    return isolate_cluster_loss(z, c, lam)[0]


def _check_patch_args(images: Tensor, ph: int, pw: int, position: str, steps: int, lr: float) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 or len(images) < 2:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ConfigError(f"`clean_images` must be a float tensor (N>=2, 3, H, W) in [0, 1]; got {shape}")
    if ph < 1 or pw < 1:
        raise ConfigError(f"`patch_size` must be >= 1 pixel; got {(ph, pw)}")
    patch_origin(images.shape[-2:], (ph, pw), position)  # validates position and fit
    if steps < 1 or lr <= 0:
        raise ConfigError(f"`steps` must be >= 1 and `lr` > 0; got steps={steps}, lr={lr}")


# -- text trigger ------------------------------------------------------------------------------
def text_trigger_scores(text_features: TextFeatures, base_instructions: Sequence[str],
                        candidates: Sequence[str], base: Optional[Tensor] = None,
                        batch_size: int = 256) -> Tensor:
    """Score (K,) of each candidate: mean over instructions of ``1 - cos(f(t + " " + cand), f(t))``.

    Args:
        text_features: list[str] -> (B,D).
        base_instructions: the n instructions t.
        candidates: K trigger strings.
        base: precomputed unit ``f(t)`` (n,D), or None.
        batch_size: texts per call of ``text_features``.
    """
    n = len(base_instructions)
    if base is None:
        base = F.normalize(text_features(list(base_instructions)).float(), dim=-1)
    texts = [f"{t.rstrip()} {c}" for c in candidates for t in base_instructions]
    feats = torch.cat([text_features(texts[i:i + batch_size]).float()
                       for i in range(0, len(texts), batch_size)])
    feats = F.normalize(feats, dim=-1).view(len(candidates), n, -1)
    return (1.0 - (feats * base.to(feats)).sum(-1)).mean(1)


@torch.no_grad()
def beam_search_text_trigger(text_features: Optional[TextFeatures], base_instructions: Sequence[str],
                             beam_width: int = 5, max_len: int = 5,
                             alphabet: str = "abcdefghijklmnopqrstuvwxyz",
                             progress: bool = True) -> Tuple[str, List[dict]]:
    """Grow a character trigger that most changes the text representation (deterministic).

    Each round extends every beam by every character, scores all candidates with
    :func:`text_trigger_scores` and keeps the ``beam_width`` best (ties: alphabetical).

    Args:
        text_features: frozen victim text representation list[str] -> (B,D); ``None`` -> the
            fallback :data:`FALLBACK_TEXT_TRIGGER` with an empty history.
        base_instructions: instructions the trigger is appended to.
        beam_width, max_len, alphabet: search space.
        progress: show a tqdm bar.
    Returns:
        ``(trigger, history)``: the best-scoring string over all lengths (<= ``max_len``) and one
        ``{"length", "best", "score"}`` record per round.
    """
    from tqdm.auto import tqdm

    if text_features is None:
        return FALLBACK_TEXT_TRIGGER, []
    if not base_instructions or beam_width < 1 or max_len < 1 or not alphabet:
        raise ConfigError("beam search needs >= 1 instruction, `beam_width` >= 1, `max_len` >= 1 "
                          f"and a non-empty alphabet; got {len(base_instructions)} instructions, "
                          f"beam_width={beam_width}, max_len={max_len}, alphabet={alphabet!r}")
    base = F.normalize(text_features(list(base_instructions)).float(), dim=-1)
    beams, best, history = [""], ("", -math.inf), []
    for length in tqdm(range(1, max_len + 1), desc="vltrojan text", disable=not progress, leave=False):
        cands = sorted({b + ch for b in beams for ch in alphabet})
        scores = text_trigger_scores(text_features, base_instructions, cands, base).tolist()
        ranked = sorted(zip(cands, scores), key=lambda t: (-t[1], t[0]))[:beam_width]
        beams = [c for c, _ in ranked]
        history.append({"length": length, "best": ranked[0][0], "score": ranked[0][1]})
        if ranked[0][1] > best[1]:
            best = ranked[0]
    return best[0], history


# -- cache identity ----------------------------------------------------------------------------
def tensor_fingerprint(images: Optional[Tensor]) -> str:
    """A short stable hash of an image batch (its shape and 8-bit content); ``"none"`` for None."""
    if images is None:
        return "none"
    q = torch.round(images.detach().float().cpu().clamp(0, 1) * 255).to(torch.uint8).contiguous()
    h = hashlib.sha256(str(tuple(q.shape)).encode())
    h.update(q.numpy().tobytes())
    return h.hexdigest()[:16]


PATCH_FILE = "patch.safetensors"


def save_patch_cache(folder: Path, patch: Tensor, meta: Dict[str, Any], meta_file: str) -> None:
    """Write a learned patch (3, h, w) in [0, 1] and its JSON metadata as one folder, atomically."""
    from safetensors.torch import save_file

    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        save_file({"patch": patch.contiguous().float()}, str(tmp / PATCH_FILE))
        (tmp / meta_file).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_patch_cache(folder: Path, meta_file: str, who: str) -> Tuple[Tensor, Dict[str, Any]]:
    """(patch (3, h, w) in [0, 1], metadata) from a folder written by :func:`save_patch_cache`;
    a missing, corrupt or malformed cache raises CheckpointError saying to delete it."""
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / meta_file).read_text())
        patch = load_file(str(folder / PATCH_FILE))["patch"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{who} cache {folder} is missing or corrupt ({exc}); delete the folder "
                              f"to optimise again") from None
    in_range = patch.numel() > 0 and 0.0 <= float(patch.min()) <= float(patch.max()) <= 1.0
    if patch.dim() != 3 or patch.shape[0] != 3 or not in_range:
        raise CheckpointError(f"{who} cache {folder}: the patch must be (3, h, w) in [0, 1]; delete the "
                              f"folder to optimise again")
    return patch, meta
