"""Mean per-channel activation at a hook point: the picture of the paper's Appendix E (Fig. 9).

For n samples of a split (a seeded choice, kept in file order) this measures, per channel d of
the hook point's output X (B, T, N, D),

    a_d = mean over batch, images and tokens of |X_..d|

which is exactly what AAR's importance ranks (Eq. 9: b_d = -a_d; the sums come from
:func:`robustit.models.masks.abs_sum_and_count`), accumulated over the whole chosen set rather
than per batch. The model's channel masks are OFF (no ``masks_active()``): the point is the raw
statistics, in which a poisoned model's outlier channels show. With an attack, the same samples'
triggered twins (:func:`robustit.attacks.poison.trigger_dataset`, as the ASR evaluation builds
them) are measured too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from torch import Tensor

from ..attacks.base import Attack
from ..attacks.poison import trigger_dataset
from ..data.records import InstructionSet
from ..errors import ConfigError, DataError
from ..models.masks import abs_sum_and_count
from ..seeding import derive_seed, torch_generator
from ..data.batching import ImageStore

__all__ = ["choose_samples", "channel_activation_means", "hook_point_means"]


def choose_samples(dataset: InstructionSet, n: int, seed: int) -> InstructionSet:
    """``min(n, len(dataset))`` samples drawn with a generator seeded by ``seed``, in file order
    (with only the images they use)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"`n` must be a positive number of samples; got {n!r}")
    if len(dataset) == 0:
        raise DataError(f"split {dataset.name!r} is empty: no samples to measure activations on")
    g = torch_generator(derive_seed(seed, "activations", dataset.name))
    keep = set(torch.randperm(len(dataset), generator=g)[: min(n, len(dataset))].tolist())
    samples = [s for i, s in enumerate(dataset.samples) if i in keep]
    used = {i for s in samples for i in s.image_ids}
    return InstructionSet(dataset.name, samples, {k: v for k, v in dataset.images.items() if k in used},
                          dict(dataset.meta), None)


def _first_tensor(output, path: str) -> Tensor:
    """The activation tensor of a module output: a Tensor, a tuple's first element, or a
    Mapping's (ModelOutput's) first entry, as the channel-mask hooks read it."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, Mapping) and output and isinstance(next(iter(output.values())), Tensor):
        return next(iter(output.values()))
    raise ConfigError(f"hook point `{path}` returns {type(output).__name__}; expected a Tensor "
                      f"(..., D), a tuple starting with one, or a ModelOutput")


@torch.no_grad()
def hook_point_means(model, dataset: InstructionSet, hook_point: str, batch_size: int = 32) -> Tensor:
    """Per-channel mean |activation| at ``hook_point`` over every sample of ``dataset``.

    Runs the visual path (``model.visual_features``: vision encoder + adapter) in eval mode,
    outside ``masks_active()`` so no channel mask acts; a forward hook (removed in ``finally``)
    sums |X| per channel in float64.

    Returns:
        (D,) float32: sum over all batches of sum |X_..d| divided by the number of (b, t, n) rows.
    """
    path = model.hook_module_path(hook_point)  # ConfigError listing the model's hook points
    if batch_size < 1:
        raise ConfigError(f"`batch_size` must be >= 1; got {batch_size}")
    acc = {"sum": None, "rows": 0}

    def hook(_module, _inputs, output):
        total, rows = abs_sum_and_count(_first_tensor(output, path))
        acc["sum"] = total if acc["sum"] is None else acc["sum"] + total
        acc["rows"] += rows

    store = ImageStore(dataset, size=getattr(model, "image_size", None))
    was_training = model.training
    handle = model.get_submodule(path).register_forward_hook(hook)
    try:
        model.eval()  # no dropout: the statistics of the model as it is used
        for start in range(0, len(dataset), batch_size):
            chunk = dataset.samples[start:start + batch_size]
            images = store.batch([s.image_ids for s in chunk]).to(model.device)  # (B, T, 3, H, W)
            model.visual_features(images, None)
    finally:
        handle.remove()
        model.train(was_training)
    if not acc["rows"]:
        raise ConfigError(f"hook point {hook_point!r} (`{path}`) produced no output in the visual "
                          f"forward (vision encoder + adapter); choose one of "
                          f"{sorted(model.spec.hook_points)} on that path")
    return (acc["sum"] / acc["rows"]).float()


def channel_activation_means(model, dataset: InstructionSet, hook_point: str, n: int = 256,
                             batch_size: int = 32, seed: int = 0,
                             attack: Optional[Attack] = None) -> dict:
    """Mean |activation| per channel at ``hook_point`` on n samples (and their triggered twins).

    Args:
        model: an LVLM (a base, or a base with a tuned checkpoint loaded); its masks stay off.
        dataset: the split to sample from.
        hook_point: a key of ``model.spec.hook_points`` (e.g. ``"perceiver"``).
        n: how many samples (all when the split is smaller), chosen with ``seed``.
        batch_size: images per forward.
        seed: seeds the choice of samples.
        attack: a prepared attack; when given, the same samples' triggered twins (image and text
            trigger, as for ASR; only the image reaches the hook point) are measured too.

    Returns:
        {"hook_point", "module", "n", "ids": [n sample ids], "width": D,
         "channel_mean": [D floats], "channel_mean_triggered": [D floats] or None,
         "mask": [D ints in {0, 1}] (the model's channel mask at this hook point) or None}.
    """
    path = model.hook_module_path(hook_point)
    subset = choose_samples(dataset, n, seed)
    clean = hook_point_means(model, subset, hook_point, batch_size)
    triggered = None
    if attack is not None:
        triggered = hook_point_means(model, trigger_dataset(subset, attack), hook_point, batch_size)
    mask = model.channel_masks[hook_point].mask if hook_point in model.channel_masks else None
    return {"hook_point": hook_point, "module": path, "n": len(subset), "ids": [s.id for s in subset.samples],
            "width": int(clean.numel()), "channel_mean": clean.tolist(),
            "channel_mean_triggered": None if triggered is None else triggered.tolist(),
            "mask": None if mask is None else [int(v != 0) for v in mask.tolist()]}
