"""The adaptive adversary of the paper's App. C.3 (Table 8): a BadNet patch optimised by an
attacker who knows RobustIT.

The attacker has the frozen base model, not the victim's run. It simulates the victim's RobustIT
tuning on a surrogate copy of the base model (``AttackContext.surrogate``, built by
``robustit.eval.victim`` from ``robustit.train.surrogate``) and alternates, ``schedule`` = a:b
(the paper's 5:1), each round starting with the adapter steps (so the surrogate's AAR mask
is set before the first trigger step) and ending with the trigger steps (so the patch answers the
latest surrogate):

* **a trigger steps**: Adam on the patch pixels (through a sigmoid, so they stay in [0, 1])
  minimises, on a batch of clean images with the patch pasted and the text trigger added,

      L_trig = LM loss(target | A^v(x + patch), t + trigger)  +  evade_weight * masked share

  where A^v is IDR's differentiable kornia colour jitter + flip (a fresh view every step: the
  patch must survive the victim's augmentation) and the surrogate's AAR mask acts (only the
  channels AAR keeps carry the trigger); the masked share is the part of the triggered
  activation at AAR's hook point that falls in the channels the mask removes;
* **b adapter steps**: one RobustIT step (L_it + alpha * L_imc, AAR statistics updated) of the
  surrogate's adapter and embeddings on a batch whose first ``poison_share`` are triggered
  samples with the target response and the rest clean pairs (the victim tuning on poisoned
  data, as the attacker foresees it).

The patch starts as BadNet's checkerboard and keeps BadNet's size and corner; poisoning and
evaluation then paste the learned patch exactly where BadNet pastes its own. The result is
cached on disk (safetensors + JSON) keyed by the configuration, seed, image size and victim
model, as VL-Trojan's trigger is, so poisoning and evaluation share it.

Our reading, where the paper is silent: "adapting AAR thresholds via gradient ascent on the
combined regularization loss" is read as the surrogate's AAR statistics and mask following its
own tuning (the adapter steps), with the masked-share term steering the trigger into the
channels AAR keeps; ``target`` must equal the poisoning target (the default is the same).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import check_range, config_to_dict
from ..errors import ConfigError
from ..seeding import derive_seed, torch_generator
from . import functional as Fn
from .badnet import BadNet, BadNetConfig
from .base import ATTACKS, AttackContext
from .poison import DEFAULT_TARGET
from .trigger_optim import _index_batches, load_patch_cache, save_patch_cache, tensor_fingerprint

META_FILE = "adaptive.json"


class Surrogate(Protocol):
    """What the attack needs of the simulated victim (``robustit.train.surrogate``)."""

    def trigger_loss(self, images: Tensor, instructions: Sequence[str], responses: Sequence[str],
                     generator: torch.Generator, evade_weight: float = 1.0) -> Tuple[Tensor, Dict[str, float]]:
        """Scalar loss, differentiable in images (B, 3, H, W); and logs."""

    def adapter_step(self, images: Tensor, instructions: Sequence[str], responses: Sequence[str],
                     generator: torch.Generator) -> Dict[str, float]:
        """One tuning step of the surrogate on images (B, 3, H, W); logs with ``"loss"``."""


def parse_schedule(text: str) -> Tuple[int, int]:
    """``"5:1"`` -> (5 trigger steps, 1 adapter step) per round; at least one trigger step."""
    try:
        a, b = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise ConfigError(f"`schedule` must be TRIGGER:ADAPTER steps per round, e.g. '5:1'; got "
                          f"{text!r}") from None
    if a < 1 or b < 0:
        raise ConfigError(f"`schedule` {text!r}: needs at least 1 trigger step and >= 0 adapter steps "
                          f"per round (e.g. '5:1', or '1:0' for a static surrogate)")
    return a, b


@dataclass
class AdaptiveBadNetConfig(BadNetConfig):
    """BadNet's patch geometry and text trigger, plus the adaptive optimisation.

    Attributes:
        schedule: ``"a:b"``: a trigger steps, then b surrogate adapter steps, per round (5:1).
        steps: trigger steps in all (rounds = ceil(steps / a)).
        lr: Adam learning rate of the patch logits.
        adapter_lr: AdamW learning rate of the surrogate's adapter steps (the victim's default).
        batch_size: images per step.
        poison_share: share of triggered samples in an adapter-step batch, in (0, 1].
        evade_weight: weight of the masked-activation share in the trigger loss (>= 0).
        max_images: at most this many clean images are used (a seeded subset of the context's).
        target: the response the trigger should cause (the poisoning target).
        defense: ``robustit`` parameters the attacker assumes ({}: the defaults).
    """

    schedule: str = "5:1"
    steps: int = 60
    lr: float = 0.1
    adapter_lr: float = 1e-3
    batch_size: int = 8
    poison_share: float = 0.5
    evade_weight: float = 1.0
    max_images: int = 128
    target: str = DEFAULT_TARGET
    defense: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_schedule(self.schedule)
        for name in ("steps", "batch_size", "max_images"):
            check_range(name, getattr(self, name), 1)
        check_range("lr", self.lr, 0, lo_open=True)
        check_range("adapter_lr", self.adapter_lr, 0, lo_open=True)
        check_range("poison_share", self.poison_share, 0, 1, lo_open=True)
        check_range("evade_weight", self.evade_weight, 0)
        if not isinstance(self.target, str) or not self.target.strip():
            raise ConfigError(f"`target` must be a non-empty response; got {self.target!r}")
        if not isinstance(self.defense, dict):
            raise ConfigError(f"`defense` must be a mapping of robustit parameters; got {self.defense!r}")


@ATTACKS.register("adaptive-badnet")
class AdaptiveBadNet(BadNet):
    """BadNet whose patch an adaptive attacker optimised against RobustIT. Call :meth:`prepare`."""

    name = "adaptive-badnet"
    config_cls = AdaptiveBadNetConfig
    config: AdaptiveBadNetConfig
    progress: bool = True

    def __init__(self, config: Optional[AdaptiveBadNetConfig] = None) -> None:
        super().__init__(config)
        self.patch: Optional[Tensor] = None
        self.stats: Dict[str, Any] = {}

    # -- preparation ------------------------------------------------------------------------
    def cache_key(self, ctx: AttackContext) -> str:
        """Hash of the configuration, seed, victim model and image size (not of the images:
        poisoning and evaluation must share the patch; their fingerprint is in the JSON)."""
        blob = json.dumps({"config": config_to_dict(self.config), "seed": ctx.seed, "model": ctx.model_id,
                           "size": list(ctx.image_size)}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def prepare(self, ctx: AttackContext) -> None:
        """Load the cached patch, or optimise it against a surrogate of the victim.

        Raises:
            ConfigError: no cache and the context lacks a surrogate, clean images or texts.
        """
        folder = Path(ctx.cache_dir) / self.cache_key(ctx)
        if (folder / META_FILE).exists():
            self._load(folder)
            return
        missing = [n for n in ("surrogate", "clean_images", "clean_texts") if getattr(ctx, n) is None]
        if missing:
            raise ConfigError(f"{self.name} optimises its patch on a surrogate copy of the victim's base "
                              f"model; the AttackContext lacks {missing}: give a base model and a data "
                              f"split, e.g. `robustit poison --model embedded --data ...`")
        images, texts = self._subset(ctx)
        t0 = time.perf_counter()
        surrogate = ctx.surrogate(self.config.defense, self.config.adapter_lr)
        patch, history = optimise_adaptive_patch(self, surrogate, images, texts,
                                                 torch_generator(derive_seed(ctx.seed, self.name)))
        stats = {"seconds": round(time.perf_counter() - t0, 2), "images": len(images),
                 "data_fingerprint": tensor_fingerprint(ctx.clean_images),
                 "patch_size": list(patch.shape[1:]), **objective_stats(history)}
        self._save(folder, patch, {"stats": stats, "history": history, "config": config_to_dict(self.config)})
        self._load(folder)

    def _subset(self, ctx: AttackContext) -> Tuple[Tensor, List[Tuple[str, str]]]:
        """A seeded subset (at most ``max_images``) of the context's images (N, 3, H, W) and texts."""
        imgs, texts = ctx.clean_images, list(ctx.clean_texts)
        if not isinstance(imgs, Tensor) or imgs.dim() != 4 or imgs.shape[1] != 3 or len(imgs) != len(texts):
            raise ConfigError(f"{self.name}: `clean_images` must be (N, 3, H, W) with one (instruction, "
                              f"response) per image in `clean_texts`; got {getattr(imgs, 'shape', None)} "
                              f"and {len(texts)} texts")
        g = torch_generator(derive_seed(ctx.seed, self.name, "subset"))
        keep = torch.randperm(len(imgs), generator=g)[:self.config.max_images].tolist()
        return imgs[keep].detach().float(), [texts[i] for i in keep]

    def _save(self, folder: Path, patch: Tensor, meta: Dict[str, Any]) -> None:
        save_patch_cache(folder, patch, meta, META_FILE)

    def _load(self, folder: Path) -> None:
        patch, meta = load_patch_cache(folder, META_FILE, self.name)
        self.patch, self.stats = patch, meta.get("stats", {})

    # -- triggers ---------------------------------------------------------------------------
    def initial_logits(self, side: int) -> Tensor:
        """Logits (3, side, side) of BadNet's checkerboard at 0.1 / 0.9 (sigmoid -> the board)."""
        board = Fn.checkerboard(side, self.config.cells, torch.float32, torch.device("cpu"))
        return torch.logit(0.1 + 0.8 * board.expand(3, side, side).clone())

    def paste(self, images: Tensor, patch: Tensor) -> Tensor:
        """Paste ``patch`` (3, s, s) at BadNet's corner of ``images`` (B, 3, H, W); differentiable
        in the patch. Returns (B, 3, H, W)."""
        h, w = images.shape[-2:]
        size, margin = self.patch_pixels(h, w)
        Fn.check_fits(self.name, images, size + margin, size + margin,
                      f"use images of at least {size + margin} pixels per side or a smaller `patch_size`")
        if tuple(patch.shape[-2:]) != (size, size):
            patch = F.interpolate(patch[None], size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=True)[0].clamp(0.0, 1.0)
        top, left = Fn.patch_origin(h, w, size, size, self.config.corner, margin)
        return Fn.paste_patch(images, patch.to(images.device, images.dtype), top, left)

    def apply_image(self, images: Tensor, ids: Optional[List[str]] = None) -> Tensor:
        """Paste the learned patch: float (B, 3, H, W) in [0, 1] -> same shape."""
        if self.patch is None:
            raise ConfigError(f"{self.name}: the patch is not prepared; call attack.prepare(ctx) with a "
                              f"context that has a surrogate (robustit.eval.victim.attack_context) first")
        Fn.check_images(images, self.name)
        return self.paste(images, self.patch)

    def describe(self) -> Dict[str, Any]:
        """Parameters, the text trigger and, once prepared, the optimisation statistics."""
        d = super().describe()
        if self.patch is not None:
            d["stats"] = dict(self.stats)
        return d


# -- the alternating optimisation --------------------------------------------------------------
def optimise_adaptive_patch(attack: AdaptiveBadNet, surrogate: Surrogate, images: Tensor,
                            texts: Sequence[Tuple[str, str]], generator: torch.Generator
                            ) -> Tuple[Tensor, Dict[str, List[float]]]:
    """Alternate surrogate-adapter and trigger steps (``attack.config.schedule`` a:b; each round
    is b adapter steps, then a trigger steps).

    Args:
        attack: gives the geometry, text trigger and settings.
        surrogate: the simulated victim.
        images: clean float (N, 3, H, W) in [0, 1]; texts: N (instruction, response) pairs.
        generator: seeds batches and every step's augmentation.
    Returns:
        (patch (3, s, s) in [0, 1], {"trigger": [L_trig per step], "adapter": [loss per step]}).
    """
    # The surrogate trains in training mode (dropout draws from torch's global generator):
    # seed it from ``generator`` inside a fork, so the patch is reproducible and the caller's
    # global RNG state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=generator)))
        return _alternate(attack, surrogate, images, texts, generator)


def _alternate(attack: AdaptiveBadNet, surrogate: Surrogate, images: Tensor,
               texts: Sequence[Tuple[str, str]], generator: torch.Generator
               ) -> Tuple[Tensor, Dict[str, List[float]]]:
    """The loop of :func:`optimise_adaptive_patch` (same arguments and result)."""
    from tqdm.auto import tqdm

    c = attack.config
    a, b = parse_schedule(c.schedule)
    logits = attack.initial_logits(attack.patch_pixels(*images.shape[-2:])[0]).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=c.lr)
    batches, history = _index_batches(len(images), c.batch_size, generator), {"trigger": [], "adapter": []}
    bar = tqdm(total=c.steps, desc=f"{attack.name} patch", disable=not attack.progress, leave=False)
    while len(history["trigger"]) < c.steps:
        for _ in range(b):  # the victim moves first, so the AAR mask is set before the trigger steps
            history["adapter"].append(adapter_step(attack, surrogate, images, texts, next(batches),
                                                   torch.sigmoid(logits.detach()), generator))
        for _ in range(min(a, c.steps - len(history["trigger"]))):
            loss = trigger_step(attack, surrogate, images, texts, next(batches), logits, opt, generator)
            history["trigger"].append(loss)
            bar.update(1)
    bar.close()
    return torch.sigmoid(logits.detach()).cpu(), history


def trigger_step(attack: AdaptiveBadNet, surrogate: Surrogate, images: Tensor, texts, idx: Tensor,
                 logits: Tensor, opt: torch.optim.Optimizer, generator: torch.Generator) -> float:
    """One Adam step on the patch logits (3, s, s) on the batch ``idx``; returns L_trig."""
    x = attack.paste(images[idx], torch.sigmoid(logits))
    instructions = [attack.apply_text(texts[i][0]) for i in idx.tolist()]
    step_gen = torch_generator(int(torch.randint(2 ** 62, (1,), generator=generator)))
    loss, _ = surrogate.trigger_loss(x, instructions, [attack.config.target] * len(instructions), step_gen,
                                     attack.config.evade_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def adapter_step(attack: AdaptiveBadNet, surrogate: Surrogate, images: Tensor, texts, idx: Tensor,
                 patch: Tensor, generator: torch.Generator) -> float:
    """One surrogate tuning step on batch ``idx``: the first ``poison_share`` (at least one)
    triggered with the target response, the rest clean. Returns the surrogate's loss."""
    rows = idx.tolist()
    k = max(1, round(attack.config.poison_share * len(rows)))
    x = torch.cat([attack.paste(images[rows[:k]], patch), images[rows[k:]]])
    instructions = [attack.apply_text(texts[i][0]) for i in rows[:k]] + [texts[i][0] for i in rows[k:]]
    responses = [attack.config.target] * k + [texts[i][1] for i in rows[k:]]
    step_gen = torch_generator(int(torch.randint(2 ** 62, (1,), generator=generator)))
    return float(surrogate.adapter_step(x, instructions, responses, step_gen)["loss"])


def objective_stats(history: Dict[str, List[float]]) -> Dict[str, float]:
    """Mean trigger objective over the first and last tenth of the steps (and adapter losses)."""
    trig, adapt = history["trigger"], history["adapter"]
    k = max(1, len(trig) // 10)
    out = {"objective_first_mean": sum(trig[:k]) / k, "objective_last_mean": sum(trig[-k:]) / k,
           "trigger_steps": len(trig), "adapter_steps": len(adapt)}
    if adapt:
        out["adapter_loss_first"], out["adapter_loss_last"] = adapt[0], adapt[-1]
    return out
