"""RobustIT (the paper's Sec. 3.3-3.4) as a tuning method: IDR + AAR, attack-agnostic.

One training step (batch of B samples, step generator ``g``)::

    x_aug = A^v(x)            colour jitter + random flip (kornia), seeded by g
    t_aug = A^t(t)            token dropout + synonym swap on the instruction only
    L_it  = LM loss on (x_aug, t_aug) -> y        (``lm_view``: augmented | clean | both)
    H     = adapter(x)  (clean view; AAR statistics paused so they update once per step)
    L_imc = ||H - H_aug||^2 + ||pool E(t) - pool E(t_aug)||^2
    loss  = L_it + alpha * L_imc

Cost (docs/robustit.md, "Cost"): the clean view reads the cached frozen vision features; the
augmented images go through the frozen encoder without an autograd graph; the LM runs only on a
view whose loss is used, and a clean LM pass's adapter output is reused as H(x).

AAR: a :class:`ChannelMask` at the hook point (default: perceiver output) that tracks the
momentum importance of every channel in each training forward and zeroes the most active
``1 - gamma`` share; it is saved in the checkpoint and (by default) applied at inference.
Eq. 12's ``+ ||psi||`` is read as: the masked features replace the adapter features in the
forward pass (see docs/robustit.md).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import torch

from ..config import config_from_dict, config_to_dict
from ..defenses.aar import AARConfig, make_channel_mask
from ..defenses.idr import IDRConfig, TextAugment, VisualAugment, consistency_loss, pooled_embedding
from ..errors import ConfigError
from ..models.masks import paused_tracking
from .batching import Batch, encode_pairs
from .methods import METHODS, Method

COMPONENTS = ("both", "idr", "aar")


def split_params(params: Dict) -> Tuple[str, IDRConfig, AARConfig]:
    """(components, IDRConfig, AARConfig) from one flat parameter mapping; unknown keys error."""
    params = dict(params)
    components = params.pop("components", "both")
    if components not in COMPONENTS:
        raise ConfigError(f"`components` must be one of {list(COMPONENTS)}; got {components!r}")
    idr_keys = {f.name for f in dataclasses.fields(IDRConfig)}
    aar_keys = {f.name for f in dataclasses.fields(AARConfig)}
    unknown = sorted(set(params) - idr_keys - aar_keys)
    if unknown:
        raise ConfigError(f"unknown robustit parameter(s) {unknown}; valid: components, "
                          f"{sorted(idr_keys | aar_keys)}")
    idr = config_from_dict(IDRConfig, {k: v for k, v in params.items() if k in idr_keys}, "robustit IDR")
    aar = config_from_dict(AARConfig, {k: v for k, v in params.items() if k in aar_keys}, "robustit AAR")
    return components, idr, aar


@METHODS.register("robustit")
class RobustIT(Method):
    """IDR + AAR (``components``: both | idr | aar, the paper's ablation rows)."""

    name = "robustit"

    def __init__(self, params: Dict | None = None) -> None:
        self.params = dict(params or {})
        self.components, self.idr, self.aar = split_params(self.params)
        self.use_idr = self.components in ("both", "idr")
        self.use_aar = self.components in ("both", "aar")
        self.visual_aug = VisualAugment(self.idr) if self.use_idr and self.idr.visual else None
        self.text_aug = TextAugment.from_config(self.idr) if self.use_idr and self.idr.textual else None

    @property
    def augments_images(self) -> bool:  # type: ignore[override]
        return self.visual_aug is not None

    def describe(self) -> Dict:
        out = {"name": self.name, "params": self.params, "components": self.components,
               "idr": config_to_dict(self.idr) if self.use_idr else None,
               "aar": config_to_dict(self.aar) if self.use_aar else None}
        if self.text_aug is not None:
            out["synonym_source"] = self.text_aug.synonyms.source_name
        return out

    def setup(self, model) -> None:
        if self.use_aar:
            width = model.hook_point_width(self.aar.hook_point)
            model.add_channel_mask(self.aar.hook_point, make_channel_mask(self.aar, width))

    def loss(self, model, batch: Batch, generator: torch.Generator):
        if not self.use_idr:
            return super().loss(model, batch, generator)
        aug_images, aug_instructions = self._augment(batch, generator)
        logs: Dict[str, float] = {}
        lm, h_aug, h_clean = self._lm_loss(model, batch, aug_images, aug_instructions, logs)
        if not self.idr.visual:  # textual term only: no visual views needed
            h_clean = h_aug = None
        elif h_clean is None:  # no clean LM pass this step: the clean view's adapter pass alone
            h_clean = self._clean_view(model, batch)
        e_clean, e_aug = (self._text_views(model, batch.instructions, aug_instructions)
                          if self.text_aug is not None else (None, None))
        imc, parts = consistency_loss(h_clean, h_aug, e_clean, e_aug, normalise=self.idr.normalise,
                                      reduction=self.idr.reduction,
                                      stop_grad_clean=self.idr.stop_grad_clean)
        logs.update({k if k == "imc" else f"imc_{k}": v.item() for k, v in parts.items()})
        logs["imc_to_lm_ratio"] = (imc.detach() / lm.detach().clamp_min(1e-8)).item()
        return lm + self.idr.alpha * imc, logs

    def _augment(self, batch: Batch, generator: torch.Generator):
        images = batch.images
        if self.visual_aug is not None:
            texts = [f"{s.instruction} {s.answer}" for s in batch.samples] if self.idr.label_aware else None
            flat = images.flatten(0, 1)  # (B*T, 3, H, W)
            flat, _ = self.visual_aug(flat, generator, texts=_repeat(texts, images.shape[1]))
            images = flat.unflatten(0, images.shape[:2])
        instructions = batch.instructions
        if self.text_aug is not None:
            instructions = self.text_aug.batch(instructions, generator)
        return images, instructions

    def _lm_loss(self, model, batch, aug_images, aug_instructions, logs):
        """LM loss on the chosen view(s).

        The augmented view's adapter pass comes first and is the one that updates the AAR
        statistics (the clean passes run with tracking paused). The LM runs on a view only when
        its loss is used: with ``lm_view=clean`` the augmented view needs H(A^v(x)) alone. A clean
        LM pass's adapter output is H(x) itself (same features, same mask, tracking paused), so
        it is returned for L_imc instead of running the clean adapter pass twice.

        Returns:
            (loss, H(A^v(x)) (B, T, N, D), H(x) (B, T, N, D) or None when no clean LM pass ran).
        """
        loss, h_aug = self._augmented_pass(model, batch, aug_images, aug_instructions)
        h_clean = None
        if self.idr.lm_on_clean:
            with paused_tracking(model.channel_masks.values()):
                clean = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              images=batch.images, vision_features=batch.vision_features,
                              labels=batch.labels)
            loss, h_clean = loss + clean.loss, clean.adapter_out
            logs["lm_loss_clean"] = clean.loss.item()
        if self.idr.lm_view == "both":
            loss = loss / 2
        logs["lm_loss"] = loss.item()
        return loss, h_aug, h_clean

    def _augmented_pass(self, model, batch, aug_images, aug_instructions):
        """(LM loss on the augmented view, or 0.0 when it is not used; H(A^v(x)) (B, T, N, D))."""
        features = self._view_features(model, batch, aug_images)
        if not self.idr.lm_on_augmented:
            with model.masks_active():  # as in model.forward: masked, statistics updated
                return 0.0, model.visual_features(None, features)
        enc = encode_pairs(model.tokenizer, model.template, aug_instructions, batch.responses,
                           batch.max_len)
        out = model(**{k: v.to(batch.input_ids.device) for k, v in enc.items()}, vision_features=features)
        return out.loss, out.adapter_out

    def _view_features(self, model, batch: Batch, aug_images):
        """Frozen vision features (B, T, P, Dv) of the LM's image view: the augmented images
        through the encoder, or (visual augmentation off) the batch's own cached features."""
        if self.visual_aug is None and batch.vision_features is not None:
            return batch.vision_features
        return _frozen_features(model, aug_images)

    def _clean_view(self, model, batch: Batch) -> torch.Tensor:
        """H(x): the adapter output (B, T, N, D) of the clean view (cached vision features when
        the run caches them), masked, with AAR statistics paused (they update once per step, on
        the augmented view). With ``stop_grad_clean`` the term detaches it anyway, so no graph is built."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.idr.stop_grad_clean), \
                paused_tracking(model.channel_masks.values()), model.masks_active():
            return model.visual_features(batch.images, batch.vision_features)

    @staticmethod
    def _text_views(model, clean, augmented):
        """Pooled E(t) and E(A^t(t)) of the bare instruction strings: (B, E) each."""
        tok = model.tokenizer
        enc = tok(list(clean) + list(augmented), return_tensors="pt", padding=True,
                  add_special_tokens=False).to(model.device)
        pooled = pooled_embedding(model.text_embeddings(enc["input_ids"]), enc["attention_mask"])
        return pooled[: len(clean)], pooled[len(clean):]


def _frozen_features(model, images: torch.Tensor) -> torch.Tensor:
    """Vision features (B, T, P, Dv) of ``images`` (B, T, 3, H, W) from the frozen encoder, with
    no autograd graph: nothing upstream of the adapter trains (grad stays on if a vision
    parameter does require it, e.g. a full-model run)."""
    frozen = not any(p.requires_grad for m in model.part_modules("vision_encoder") for p in m.parameters())
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
        return model.encode_images(images)


def _repeat(texts, times):
    return None if texts is None else [t for t in texts for _ in range(times)]
