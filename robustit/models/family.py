"""Family specs: which modules of a backbone are which.

Freezing, AAR hooks and checkpointing are written once against a :class:`FamilySpec`, so a new
backbone only has to name its parts. Paths are ``nn.Module.get_submodule`` paths relative to the
LVLM; a trailing ``.*`` is not used: list every part explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple


@dataclass(frozen=True)
class FamilySpec:
    """Names the parts of a backbone.

    Attributes:
        name: family name (``embedded-flamingo``, ``idefics``, ``blip2``, ``llava``).
        vision_encoder: module paths of the frozen vision encoder.
        adapter: module paths of the trainable cross-modal adapter H_psi.
        language_model: module paths of the frozen language model.
        embeddings: module (or parameter owner) paths of the trainable word embeddings and LM
            head E_phi (tied weights are counted once).
        hook_points: AAR hook point name -> module path whose output is (..., D) adapter
            features, channels last; the first entry is the default.
        caches_vision: whether ``encode_images`` is the whole frozen vision path, so its output
            may be cached once per image (False for a family whose adapter cannot be separated
            from the frozen encoder; every family shipped so far separates cleanly).
        architecture: the Hugging Face class a real checkpoint of this family loads with
            (empty for robustit's own models).
    """

    name: str
    vision_encoder: Tuple[str, ...]
    adapter: Tuple[str, ...]
    language_model: Tuple[str, ...]
    embeddings: Tuple[str, ...]
    hook_points: Dict[str, str] = field(default_factory=dict)
    caches_vision: bool = True
    architecture: str = ""

    @property
    def default_hook_point(self) -> str:
        return next(iter(self.hook_points))

    def trainable_parts(self) -> Tuple[str, ...]:
        return self.adapter + self.embeddings
