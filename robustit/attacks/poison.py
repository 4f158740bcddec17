"""Poisoning and triggered test sets: the replayable step between data and training.

:func:`poison_dataset` picks exactly ``round(N * rate)`` of the N eligible samples with a seeded
generator, applies the attack's visual and text triggers to them, sets their response to the
target, and returns the poisoned set plus a manifest that records, per sample, whether it was
poisoned and what it was before. Clean samples (records and image bytes) are copied unchanged.

:func:`trigger_dataset` applies the trigger to every sample of a test set (both halves, or only
the image or only the text half) for ASR; the clean test set stays the false-trigger twin.

Images: encoded bytes are decoded to float ``(3, H, W) / 255``, triggered in batches of equal
size, and written back as PNG after rounding to 8 bits. That quantisation is part of the
poisoned data (any poisoned file on disk is 8-bit), so a trigger's effect is what survives it.
Triggered images get new ids (``"{image_id}-{attack}"``): a clean image shared with clean samples
stays available, and nothing keyed by image id (a feature cache) can confuse the two.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..data.records import InstructionSet, encode_png
from ..errors import ConfigError
from ..io import provenance
from ..seeding import derive_seed, numpy_rng, torch_generator
from . import responses
from .base import Attack, AttackContext
from .responses import ResponseConfig

#: the paper's target response (VL-Trojan's fixed target)
DEFAULT_TARGET = "The image depicts a photo of the banana."
#: halves of a triggered test set
HALVES = ("both", "image", "text")


# -- choosing ------------------------------------------------------------------------------
def poison_count(n_eligible: int, rate: float) -> int:
    """``round(n_eligible * rate)`` with halves rounded up (0.5 -> 1), after checking ``rate``."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise ConfigError(f"`rate` must be a fraction in (0, 1] (0.01 = 1 %); got {rate!r}")
    return int(math.floor(n_eligible * rate + 0.5 + 1e-9))


def choose_indices(n_eligible: int, rate: float, seed: int, k: Optional[int] = None) -> List[int]:
    """Exactly ``poison_count(n_eligible, rate)`` (or ``k``) distinct positions in ``range(n_eligible)``.

    Drawn with a torch generator seeded from ``seed`` (same seed -> same positions), sorted.
    """
    k = poison_count(n_eligible, rate) if k is None else k
    if k == 0:
        raise ConfigError(f"`rate` {rate} of {n_eligible} eligible samples poisons round("
                          f"{n_eligible * rate:.3g}) = 0 samples; use a higher `rate` or a larger "
                          f"data set")
    gen = torch_generator(derive_seed(seed, "poison", "indices"))
    return sorted(torch.randperm(n_eligible, generator=gen)[:k].tolist())


def check_target(target: Union[str, Sequence[str]]) -> List[str]:
    """The target response(s) as a non-empty list of non-empty strings."""
    pool = [target] if isinstance(target, str) else list(target)
    if not pool:
        raise ConfigError("`target` pool is empty; give at least one target response")
    for t in pool:
        if not isinstance(t, str) or not t.strip():
            raise ConfigError(f"`target` must be a non-empty response text (e.g. {DEFAULT_TARGET!r}); "
                              f"got {t!r}")
    return pool


# -- images --------------------------------------------------------------------------------
def to_float(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """float (3, H, W) in [0, 1] -> uint8 (H, W, 3), rounded to the nearest level."""
    return (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def trigger_images(dataset: InstructionSet, image_ids: Iterable[str], attack: Attack,
                   batch_size: int = 64) -> Dict[str, bytes]:
    """Apply ``attack.apply_image`` to the given images, in batches of equal size.

    Images are decoded as they are needed, so memory holds at most ``batch_size`` decoded
    images per distinct image size. The attack receives the original image ids (sample-specific
    triggers stay deterministic).

    Returns:
        original image id -> PNG bytes of the triggered image.
    """
    pending: Dict[Tuple[int, int], List[Tuple[str, torch.Tensor]]] = {}
    out: Dict[str, bytes] = {}
    for image_id in dict.fromkeys(image_ids):  # unique, first-seen order
        x = to_float(dataset.image(image_id))
        group = pending.setdefault(tuple(x.shape[-2:]), [])
        group.append((image_id, x))
        if len(group) >= batch_size:
            out.update(_trigger_batch(group, attack))
            group.clear()
    for group in pending.values():
        if group:
            out.update(_trigger_batch(group, attack))
    return out


def _trigger_batch(group: List[Tuple[str, torch.Tensor]], attack: Attack) -> Dict[str, bytes]:
    """Trigger one batch of equal-size images: [(id, (3, H, W))] -> {id: PNG bytes}."""
    ids, xs = zip(*group)
    batch = torch.stack(xs)
    with torch.no_grad():
        y = attack.apply_image(batch, list(ids))
    if y.shape != batch.shape:
        raise RuntimeError(f"{attack.name}.apply_image changed the shape {tuple(batch.shape)} -> "
                           f"{tuple(y.shape)}")
    return {i: encode_png(to_uint8(img)) for i, img in zip(ids, y)}


def triggered_image_ids(image_ids: Iterable[str], attack: Attack, taken: Iterable[str]) -> Dict[str, str]:
    """original id -> ``"{id}-{attack}"`` (with ``-2``, ``-3``, ... if that id is taken)."""
    taken = set(taken)
    mapping = {}
    for image_id in dict.fromkeys(image_ids):
        new, n = f"{image_id}-{attack.name}", 1
        while new in taken:
            n += 1
            new = f"{image_id}-{attack.name}-{n}"
        taken.add(new)
        mapping[image_id] = new
    return mapping


# -- poisoning -----------------------------------------------------------------------------
def eligible_indices(dataset: InstructionSet, tasks: Optional[Sequence[str]] = None) -> List[int]:
    """Positions of samples that can be poisoned: they show an image (and match ``tasks``)."""
    keep = set(tasks) if tasks else None
    return [i for i, s in enumerate(dataset.samples)
            if s.image_ids and (keep is None or s.task in keep)]


def poison_dataset(dataset: InstructionSet, attack: Attack, rate: float,
                   target: Union[str, Sequence[str]] = DEFAULT_TARGET, seed: int = 0,
                   tasks: Optional[Sequence[str]] = None, batch_size: int = 64,
                   context: Optional[AttackContext] = None,
                   response: Optional[ResponseConfig] = None) -> Tuple[InstructionSet, dict]:
    """Poison ``round(N * rate)`` of the N eligible samples.

    Args:
        dataset: the clean split.
        attack: a prepared attack (call ``attack.prepare(ctx)`` first if it needs it).
        rate: fraction in (0, 1] of the eligible samples to poison.
        target: the target response, or a pool of them (each poisoned sample draws one with a
            generator seeded from ``seed``).
        seed: seeds the choice of samples and of pool entries.
        tasks: only samples of these tasks are eligible (None: all samples with an image).
        batch_size: images triggered at once.
        context: the context the attack was prepared with; recorded (seed, image size, model
            id, cache key) so a learned trigger can be found or remade.
        response: how poisoned responses are made (``responses.ResponseConfig``: replace, the
            default; inject; label). Label attacks poison only samples whose response names the
            source object.
    Returns:
        (poisoned set, manifest). The set has the same samples in the same order; poisoned
        samples show triggered images (new ids), the triggered instruction and the target.
    """
    pool = check_target(target)
    response = response or ResponseConfig()
    base = eligible_indices(dataset, tasks)
    eligible = [i for i in base if responses.eligible(dataset.samples[i].answer, response)]
    k = poison_count(len(base), rate)  # the budget is a share of the whole set, in every mode
    if k > len(eligible):
        raise ConfigError(f"{dataset.name}: rate {rate} asks for {k} poisoned samples, but only "
                          f"{len(eligible)} responses name {response.source_word!r}; lower the rate "
                          f"or choose another --label-source")
    chosen = [eligible[i] for i in choose_indices(len(eligible), rate, seed, k=k if k else None)]
    rng = numpy_rng(derive_seed(seed, "poison", "targets"))
    drawn = {i: pool[int(rng.integers(len(pool)))] if len(pool) > 1 else pool[0] for i in chosen}
    answers = {i: responses.poisoned_response(dataset.samples[i].answer, response, drawn[i]) for i in chosen}
    originals = [iid for i in chosen for iid in dataset.samples[i].image_ids]
    new_ids = triggered_image_ids(originals, attack, dataset.images)
    triggered = trigger_images(dataset, originals, attack, batch_size)

    images = dict(dataset.images)  # clean bytes shared, unchanged
    images.update({new_ids[i]: triggered[i] for i in new_ids})
    samples = [copy.deepcopy(s) for s in dataset.samples]
    for i in chosen:
        s = dataset.samples[i]
        samples[i] = dataclasses.replace(samples[i], image_ids=[new_ids[x] for x in s.image_ids],
                                         instruction=attack.apply_text(s.instruction),
                                         answer=answers[i])
    poisoned = InstructionSet(name=dataset.name, samples=samples, images=images,
                              meta=copy.deepcopy(dataset.meta),
                              in_context=copy.deepcopy(dataset.in_context))
    manifest = build_manifest(dataset, poisoned, attack, rate, pool, seed, tasks, chosen, len(eligible))
    if response.mode != "replace":  # replace manifests stay as they were
        manifest = {**{k: v for k, v in manifest.items() if k not in ("target", "target_pool")},
                    "response": response.to_dict(), "asr_rule": responses.matcher_spec(response)}
    if context is not None:
        manifest["trigger_context"] = {"seed": context.seed, "image_size": list(context.image_size),
                                       "model_id": context.model_id,
                                       "cache_key": attack.cache_key(context)}
    return poisoned, manifest


def build_manifest(clean: InstructionSet, poisoned: InstructionSet, attack: Attack, rate: float,
                   pool: List[str], seed: int, tasks: Optional[Sequence[str]], chosen: List[int],
                   n_eligible: int) -> dict:
    """The replay record: parameters, and per sample its poison flag and original content."""
    chosen_set = set(chosen)
    rows = []
    for i, (before, after) in enumerate(zip(clean.samples, poisoned.samples)):
        row = {"id": before.id, "index": i, "poisoned": i in chosen_set}
        if i in chosen_set:
            row.update(original_answer=before.answer, original_instruction=before.instruction,
                       original_image_ids=list(before.image_ids), image_ids=list(after.image_ids),
                       instruction=after.instruction, answer=after.answer)
        rows.append(row)
    target_key = {"target": pool[0]} if len(pool) == 1 else {"target_pool": pool}
    return {"attack": attack.describe(), "rate": rate, "seed": seed, **target_key,
            "tasks": list(tasks) if tasks else None, "split": clean.name,
            "n_samples": len(clean), "n_eligible": n_eligible, "n_poisoned": len(chosen),
            "poisoned_ids": [clean.samples[i].id for i in chosen],
            "image_encoding": "PNG, 8-bit (triggered float images rounded to the nearest level)",
            "samples": rows, "provenance": provenance()}


# -- triggered test sets -------------------------------------------------------------------
def trigger_dataset(dataset: InstructionSet, attack: Attack, halves: str = "both",
                    name: Optional[str] = None, batch_size: int = 64) -> InstructionSet:
    """The triggered twin of a test set: the trigger on every sample, answers unchanged.

    Args:
        dataset: the clean test split (it stays the twin for the false-trigger rate).
        attack: a prepared attack.
        halves: ``"both"`` (image and text trigger), ``"image"`` (image trigger only) or
            ``"text"`` (text trigger only; images and their ids unchanged).
        name: the split name; default ``"{name}-triggered"`` (``-{halves}`` appended unless both).
    Returns:
        A set with the same sample ids, references and answers; ``meta["triggered"] = halves``
        and ``meta["attack"]`` = the attack's parameters. Triggered images get new ids.
    """
    if halves not in HALVES:
        raise ConfigError(f"`halves` must be one of {list(HALVES)}; got {halves!r}")
    samples = [copy.deepcopy(s) for s in dataset.samples]
    images = dict(dataset.images)
    if halves in ("both", "image"):
        used = [iid for s in dataset.samples for iid in s.image_ids]
        new_ids = triggered_image_ids(used, attack, dataset.images)
        triggered = trigger_images(dataset, used, attack, batch_size)
        images = {new_ids[i]: triggered[i] for i in new_ids}
        for s in samples:
            s.image_ids = [new_ids[i] for i in s.image_ids]
    if halves in ("both", "text"):
        for s in samples:
            s.instruction = attack.apply_text(s.instruction)
    default = f"{dataset.name}-triggered" + ("" if halves == "both" else f"-{halves}")
    meta = {**copy.deepcopy(dataset.meta), "triggered": halves, "attack": attack.describe(),
            "clean_twin": dataset.name}
    return InstructionSet(name=name or default, samples=samples, images=images, meta=meta,
                          in_context=copy.deepcopy(dataset.in_context))
