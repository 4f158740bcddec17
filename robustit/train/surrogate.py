"""The adaptive attacker's simulation of the victim's RobustIT tuning (paper App. C.3).

The attacker of ``robustit/attacks/adaptive.py`` knows the defense and has the frozen base
model, not the victim's run. :class:`RobustITSurrogate` is its own copy of the base model, tuned
with the victim's method (``robustit`` with the parameters the attacker assumes; AAR's channel
mask installed as the victim's is) and exposing the two moves of the alternating attack:

* :meth:`trigger_loss`: the LM loss of the target response given triggered images, seen
  through the victim's IDR augmentation (kornia colour jitter + flip, differentiable) and
  with the AAR mask acting, plus the share of the triggered activation that falls in the
  channels the mask removes. Differentiable in the images; the surrogate does not change.
* :meth:`adapter_step`: one optimiser step of the surrogate's adapter and embeddings with the
  victim's loss (L_it + alpha * L_imc, AAR statistics updated) on a poisoned batch.

Attacks never import this module (nor models or defenses): ``robustit.eval.victim`` builds it
and hands the attack a factory in ``AttackContext.surrogate``.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..data.records import Sample
from ..defenses.idr import VisualAugment
from ..errors import ConfigError
from ..models.masks import paused_tracking
from .batching import Batch, encode_pairs
from .methods import METHODS
from .robustit_method import split_params


class RobustITSurrogate:
    """A tuned copy of the base model that simulates the victim's RobustIT tuning.

    Args:
        base: the frozen base model (an ``LVLM``); it is copied, never changed.
        defense: ``robustit`` parameters the attacker assumes the victim uses ({}: defaults).
        lr: AdamW learning rate of :meth:`adapter_step`.
        max_len: token budget per (instruction, response) pair.
    """

    def __init__(self, base, defense: Optional[Dict] = None, lr: float = 1e-3, max_len: int = 96) -> None:
        self.defense = dict(defense or {})
        try:
            components, idr, _ = split_params(self.defense)
            self.method = METHODS.get("robustit")(self.defense)
        except ConfigError as exc:
            raise ConfigError(f"adaptive attack `defense`: {exc}") from None
        self.model = copy.deepcopy(base)
        self.model.freeze_for_tuning()
        self.method.setup(self.model)  # the AAR channel mask, as the victim's run installs it
        uses_visual = components in ("both", "idr") and idr.visual
        self.augment = VisualAugment(idr) if uses_visual else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.max_len = int(max_len)

    # -- the trigger's view ------------------------------------------------------------------
    def trigger_loss(self, images: Tensor, instructions: Sequence[str], responses: Sequence[str],
                     generator: torch.Generator, evade_weight: float = 1.0) -> Tuple[Tensor, Dict[str, float]]:
        """Loss of the responses given augmented, masked images; differentiable in ``images``.

        Args:
            images: float (B, 3, H, W) in [0, 1] (triggered).
            instructions, responses: B strings each (the triggered instruction, the target).
            generator: seeds the augmentation (the victim draws a fresh view every step).
            evade_weight: weight of the masked-activation share (see :meth:`masked_share`).
        Returns:
            (scalar loss, {"lm_loss", "masked_share"}).
        """
        views = self.augment(images, generator)[0] if self.augment is not None else images
        views = self._fit(views)
        enc = self._encode(instructions, responses)
        with self._adapter_frozen(), paused_tracking(self.model.channel_masks.values()), \
                self._hook_activations() as seen:
            self.model.train()
            out = self.model(**enc, images=views.unsqueeze(1))
        share = self.masked_share(seen[0]) if seen else out.loss.new_zeros(())
        loss = out.loss + evade_weight * share
        return loss, {"lm_loss": out.loss.item(), "masked_share": float(share.detach())}

    def masked_share(self, activations: Tensor) -> Tensor:
        """Share of the mean |activation| per channel (..., D) that the AAR mask removes: the
        triggered signal AAR would cut (0 when no mask is installed). Scalar in [0, 1]."""
        mask = self._mask()
        if mask is None:
            return activations.new_zeros(())
        per_channel = activations.abs().reshape(-1, activations.shape[-1]).mean(0)  # (D,)
        return (per_channel * (1 - mask.to(per_channel))).sum() / per_channel.sum().clamp_min(1e-8)

    # -- the victim's view -------------------------------------------------------------------
    def adapter_step(self, images: Tensor, instructions: Sequence[str], responses: Sequence[str],
                     generator: torch.Generator) -> Dict[str, float]:
        """One victim-style optimiser step on a (poisoned) batch.

        Args:
            images: float (B, 3, H, W) in [0, 1], some of them triggered.
            instructions, responses: B strings each.
            generator: the step's generator (the method's augmentation draws from it).
        Returns:
            the method's logs plus ``"loss"``.
        """
        enc = self._encode(instructions, responses)
        samples = [Sample(f"surrogate-{i}", [f"surrogate-img-{i}"], ins, resp)
                   for i, (ins, resp) in enumerate(zip(instructions, responses))]
        batch = Batch(samples=samples, images=self._fit(images.detach()).unsqueeze(1), vision_features=None,
                      max_len=self.max_len, **enc)
        self.model.train()
        loss, logs = self.method.loss(self.model, batch, generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # no stale gradients between steps
        return {**logs, "loss": loss.item()}

    # -- helpers -----------------------------------------------------------------------------
    def _fit(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 3, S, S) at the model's input size S (differentiable resize), so
        triggers are optimised on data of any size, as the victim's batching resizes it."""
        size = self.model.image_size
        if tuple(images.shape[-2:]) == (size, size):
            return images
        return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                               antialias=True, align_corners=False)

    def _encode(self, instructions: Sequence[str], responses: Sequence[str]) -> Dict[str, Tensor]:
        enc = encode_pairs(self.model.tokenizer, self.model.template, list(instructions), list(responses),
                           self.max_len)
        return {k: v.to(self.model.device) for k, v in enc.items()}

    def _mask(self) -> Optional[Tensor]:
        """The AAR mask (D,) of the surrogate, or None (components=idr)."""
        masks = list(self.model.channel_masks.values())
        return masks[0].mask if masks else None

    @contextlib.contextmanager
    def _adapter_frozen(self) -> Iterator[None]:
        """No gradients into the surrogate's parameters (only into the images)."""
        flags = [p.requires_grad for p in self.params]
        try:
            for p in self.params:
                p.requires_grad_(False)
            yield
        finally:
            for p, flag in zip(self.params, flags):
                p.requires_grad_(flag)

    @contextlib.contextmanager
    def _hook_activations(self) -> Iterator[List[Tensor]]:
        """Record the unmasked output of the masked hook point (registered before the mask's
        own hook, so it sees the activations the mask is about to cut)."""
        seen: List[Tensor] = []
        names = list(self.model.channel_masks.keys())
        if not names:
            yield seen
            return
        module = self.model.get_submodule(self.model.hook_module_path(names[0]))
        handle = module.register_forward_hook(lambda _m, _inp, out: seen.append(_first_tensor(out)))
        try:
            yield seen
        finally:
            handle.remove()


def _first_tensor(output) -> Tensor:
    """The activations of a module output: a Tensor, a tuple's first element, a mapping's first
    value (the outputs channel masks accept)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return next(iter(output.values()))


def surrogate_factory(base, max_len: int = 96):
    """``(defense params, lr) -> RobustITSurrogate`` over ``base`` (for ``AttackContext``)."""
    def make(defense: Optional[Dict] = None, lr: float = 1e-3) -> RobustITSurrogate:
        return RobustITSurrogate(base, defense, lr, max_len)
    return make
