"""The LVLM protocol: what every backbone offers to freezing, tuning, AAR, generation, checkpoints.

A backbone subclasses :class:`LVLM`, sets ``spec`` (a :class:`FamilySpec`), and implements
``encode_images``, ``adapt``, ``conditioned``, ``forward`` and ``generate``. Everything else (freezing,
trainable-set checks, channel masks, hook-point widths, prompt building) is shared. The embedded
model (``embedded.py``) and the Hugging Face families (``hf_lvlm.py``, ``hf_families.py``) are
the implementations.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from ..data.template import PromptTemplate
from ..errors import ConfigError
from .family import FamilySpec
from .masks import ChannelMask, channel_mask_hooks


@dataclass
class LVLMOutput:
    """Output of :meth:`LVLM.forward`.

    Attributes:
        loss: scalar LM loss on labelled tokens (None without labels).
        logits: (B, L, V).
        adapter_out: (B, T, N, D) the adapter's visual features (after any channel mask).
    """

    loss: Optional[torch.Tensor]
    logits: torch.Tensor
    adapter_out: torch.Tensor


class LVLM(nn.Module):
    """Base class of every backbone. See ``docs/architecture.md`` (LVLM protocol)."""

    spec: FamilySpec
    template: PromptTemplate = PromptTemplate()

    def __init__(self) -> None:
        super().__init__()
        #: hook point name -> ChannelMask (AAR, Fine-Pruning); saved with tuned checkpoints.
        self.channel_masks = nn.ModuleDict()

    # -- parts ----------------------------------------------------------------------------
    def part_modules(self, part: str) -> List[nn.Module]:
        return [self.get_submodule(path) for path in getattr(self.spec, part)]

    def part_parameters(self, part: str) -> Dict[str, nn.Parameter]:
        """Named parameters of a part (``adapter``, ``embeddings``...), tied weights once. A path
        may name a module or a bare parameter (BLIP-2's ``query_tokens``)."""
        out: Dict[str, nn.Parameter] = {}
        seen = set()
        for path in getattr(self.spec, part):
            for name, p in self._path_parameters(path):
                if id(p) not in seen:
                    seen.add(id(p))
                    out[name] = p
        return out

    def _path_parameters(self, path: str) -> List[tuple]:
        """[(full name, parameter)] under a module path, or [(path, p)] for a parameter path."""
        try:
            module = self.get_submodule(path)
        except AttributeError:
            return [(path, self.get_parameter(path))]
        return [(f"{path}.{name}", p) for name, p in module.named_parameters()]

    def trainable_parameter_names(self) -> List[str]:
        names = []
        for part in ("adapter", "embeddings"):
            names += list(self.part_parameters(part))
        return names

    def freeze_for_tuning(self) -> int:
        """Freeze everything, unfreeze adapter + embeddings; assert and return the trainable count."""
        self.requires_grad_(False)
        for part in ("adapter", "embeddings"):
            for p in self.part_parameters(part).values():
                p.requires_grad_(True)
        expected = {id(p) for part in ("adapter", "embeddings") for p in self.part_parameters(part).values()}
        actual = {id(p) for p in self.parameters() if p.requires_grad}
        if expected != actual:  # a bug, not user input
            raise AssertionError("trainable set differs from adapter + embeddings")
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # -- hook points and masks --------------------------------------------------------------
    def resolve_hook_point(self, hook_point: Optional[str]) -> str:
        """A hook point name; None means the family's default (its adapter output)."""
        return self.spec.default_hook_point if hook_point is None else hook_point

    def hook_module_path(self, hook_point: Optional[str]) -> str:
        hook_point = self.resolve_hook_point(hook_point)
        if hook_point not in self.spec.hook_points:
            raise ConfigError(f"`hook_point` {hook_point!r} is not a hook point of the "
                              f"{self.spec.name} model; it has: {sorted(self.spec.hook_points)}")
        return self.spec.hook_points[hook_point]

    def add_channel_mask(self, hook_point: Optional[str], mask: ChannelMask) -> ChannelMask:
        hook_point = self.resolve_hook_point(hook_point)
        self.hook_module_path(hook_point)
        self.channel_masks[hook_point] = mask
        return mask

    def encode_prompts(self, prompts) -> dict:
        """Left-padded prompt batch for generation: {"input_ids", "attention_mask"} (B, L) on the
        model's device; the tokenizer is back to right padding (training's) afterwards."""
        tok = self.tokenizer
        tok.padding_side = "left"
        try:
            enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = "right"
        return {k: v.to(self.device) for k, v in enc.items()}

    def hook_point_width(self, hook_point: Optional[str]) -> int:
        """Channels D at a hook point, found by one forward of a blank image through the adapter."""
        path = self.hook_module_path(hook_point)
        seen = {}
        def record(module, args, out) -> None:  # returns None: the output is left as it is
            seen.setdefault("d", _first_tensor(out).shape[-1])

        handle = self.get_submodule(path).register_forward_hook(record)
        try:
            size = self.image_size
            with torch.no_grad():
                self.adapt(self.encode_images(torch.zeros(1, 1, 3, size, size, device=self.device)))
        finally:
            handle.remove()
        return int(seen["d"])

    @contextlib.contextmanager
    def masks_active(self) -> Iterator[None]:
        """Apply the channel masks through forward hooks (removed on exit). Each mask decides
        itself: in training it always acts (and updates when tracking); in eval iff enabled."""
        targets = {self.hook_module_path(hp): m for hp, m in self.channel_masks.items()}
        with channel_mask_hooks(self, targets, available=sorted(self.spec.hook_points)):
            yield

    # -- interface for subclasses -------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [0, 1] -> frozen vision features (B, T, P, Dv)."""
        raise NotImplementedError

    def adapt(self, vision_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, Dv) -> adapter visual features (B, T, N, D) (the default hook point)."""
        raise NotImplementedError

    def text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """E_phi(t): (B, L) -> (B, L, E)."""
        return self.get_submodule(self.spec.embeddings[0])(input_ids)

    def text_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The frozen language model's last hidden state for text without images: (B, L) -> (B, L, H)."""
        return self.language_model(input_ids=input_ids, attention_mask=attention_mask,
                                   output_hidden_states=True).hidden_states[-1]

    # -- shared behaviour ------------------------------------------------------------------
    def visual_features(self, images: Optional[torch.Tensor],
                        vision_features: Optional[torch.Tensor]) -> torch.Tensor:
        if vision_features is None:
            if images is None:
                raise ValueError("pass images or vision_features")
            vision_features = self.encode_images(images)
        return self.adapt(vision_features)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_size(self) -> int:
        """Square side (pixels) the vision encoder takes; other sizes are resized to it."""
        return int(self.config.image_size)

    def identity(self) -> Dict:
        """What identifies this base model (checked when a tuned checkpoint is loaded)."""
        return {"family": self.spec.name}

    def prompts(self, instructions: Sequence[str],
                examples: Optional[Sequence[Sequence[tuple]]] = None) -> List[str]:
        """Render query prompts (zero-shot, or few-shot with per-sample in-context examples)."""
        if examples is None:
            return [self.template.prompt(i) for i in instructions]
        return [self.template.few_shot(ex, i) for ex, i in zip(examples, instructions)]


def _first_tensor(output) -> torch.Tensor:
    """The tensor a hooked module returns: itself, the first of a tuple, or a ModelOutput's first."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return next(iter(output.values()))
