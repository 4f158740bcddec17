"""CleanCLIP (Bansal et al., 2023) adapted to instruction tuning (RobustIT paper, Appendix F).

"For each training sample, we generate multiple augmented variants by editing both the natural
language instruction and, optionally, applying minor transformations to the associated image
(e.g., color jitter or cropping). The model is then fine-tuned on this augmented set under a
standard instruction-tuning objective." (Appendix F)

Each sample of a batch becomes R = ``variants`` (+ 1 when ``include_clean``) rows:

* instruction (CleanCLIP's EDA edits): word deletion + synonym swap (IDR's :class:`TextAugment`,
  reused) and, with probability ``reorder_prob``, EDA's random swap of word pairs
  (:func:`swap_words`, max(1, int(swap_share * words)) swaps);
* image: colour jitter (IDR's :class:`VisualAugment` with the flip off, reused) and, with
  probability ``p_crop``, a random resized crop (:class:`RandomResizedCrop`, kornia);
* the response is never changed; the loss is the ordinary LM loss over all R * B rows.

Everything is drawn from the step's ``torch.Generator``, so a run is a function of its seed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from kornia.geometry.transform import crop_and_resize
from torch import Tensor

from ..config import check_range
from ..data.template import SPECIAL_TOKENS
from ..errors import ConfigError
from .idr import IDRConfig, TextAugment, VisualAugment
from .synonyms import SOURCE_KINDS, SynonymSource

__all__ = ["CleanCLIPConfig", "CleanCLIPAugment", "RandomResizedCrop", "swap_words"]

_PROTECTED = sorted({t for t in SPECIAL_TOKENS if t}, key=len, reverse=True)
_SPLIT = re.compile("(" + "|".join(map(re.escape, _PROTECTED)) + ")")
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)  # leading punctuation, word, trailing punctuation


@dataclass
class CleanCLIPConfig:
    """CleanCLIP-for-instruction-tuning settings (see the module doc and docs/baselines.md).

    Attributes:
        variants: augmented variants per sample and step, >= 1 (default 2).
        include_clean: also train on the unaugmented sample (CleanCLIP keeps its clean loss).
        textual / visual: augment the instruction / the image.
        token_dropout, synonym_prob: per-word deletion / synonym-swap probabilities.
        synonym_source: ``auto`` | ``table`` | ``wordnet`` (as IDR).
        reorder_prob: probability that a variant's words are reordered (EDA random swap).
        swap_share: swaps per reordered instruction = max(1, int(swap_share * words)) (EDA's alpha).
        jitter_brightness / jitter_contrast / jitter_saturation / jitter_hue: colour jitter (as IDR).
        p_crop: probability that a variant's image is cropped; crop_scale: the crop's smallest
            area share, (0, 1] (aspect ratio in [3/4, 4/3], resized back to the input size).
    """

    variants: int = 2
    include_clean: bool = True
    textual: bool = True
    visual: bool = True
    token_dropout: float = 0.1
    synonym_prob: float = 0.1
    synonym_source: str = "auto"
    reorder_prob: float = 0.5
    swap_share: float = 0.1
    jitter_brightness: float = 0.2
    jitter_contrast: float = 0.2
    jitter_saturation: float = 0.2
    jitter_hue: float = 0.05
    p_crop: float = 0.5
    crop_scale: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.variants, bool) or not isinstance(self.variants, int) or self.variants < 1:
            raise ConfigError(f"`variants` must be an integer >= 1; got {self.variants!r}")
        for name in ("include_clean", "textual", "visual"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"`{name}` must be true or false; got {getattr(self, name)!r}")
        for name in ("synonym_prob", "reorder_prob", "swap_share", "p_crop"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        check_range("token_dropout", self.token_dropout, 0.0, 1.0, hi_open=True)
        for name in ("jitter_brightness", "jitter_contrast", "jitter_saturation"):
            check_range(name, getattr(self, name), 0.0, 1.0, hi_open=True)
        check_range("jitter_hue", self.jitter_hue, 0.0, 0.5)
        check_range("crop_scale", self.crop_scale, 0.0, 1.0, lo_open=True)
        if self.synonym_source not in SOURCE_KINDS:
            raise ConfigError(f"`synonym_source` must be one of {list(SOURCE_KINDS)}; "
                              f"got {self.synonym_source!r}")

    def idr_config(self) -> IDRConfig:
        """The IDR settings that reuse A^t (deletion + synonyms) and A^v's colour jitter, no flip."""
        return IDRConfig(jitter_brightness=self.jitter_brightness, jitter_contrast=self.jitter_contrast,
                         jitter_saturation=self.jitter_saturation, jitter_hue=self.jitter_hue,
                         p_flip=0.0, token_dropout=self.token_dropout, synonym_prob=self.synonym_prob,
                         synonym_source=self.synonym_source)


# --------------------------------------------------------------------------- text: reordering


def swap_words(text: str, generator: torch.Generator, n_swaps: int) -> str:
    """EDA's random swap: ``n_swaps`` times exchange two distinct words of ``text``.

    Only the word cores move; each token's leading/trailing punctuation stays in its slot
    ("Describe the image." -> "Describe image the."), special tokens never move, and tokens in
    one segment are rejoined with single spaces. Fewer than two words: ``text`` unchanged.
    Draws 2 * n_swaps integers from ``generator`` (none when nothing can be swapped).
    """
    segments = _SPLIT.split(text)
    tokens = {i: [list(_CORE.match(t).groups()) for t in seg.split()]
              for i, seg in enumerate(segments) if seg not in _PROTECTED}
    words = [tok for i in sorted(tokens) for tok in tokens[i] if tok[1]]
    if len(words) < 2 or n_swaps < 1:
        return text
    for _ in range(n_swaps):
        i = int(torch.randint(len(words), (), generator=generator))
        j = (i + 1 + int(torch.randint(len(words) - 1, (), generator=generator))) % len(words)
        words[i][1], words[j][1] = words[j][1], words[i][1]
    return "".join(_rejoin(seg, tokens[i]) if i in tokens else seg for i, seg in enumerate(segments))


def _rejoin(segment: str, tokens: List[List[str]]) -> str:
    """One unprotected segment from its [prefix, word, suffix] tokens, outer whitespace kept."""
    if not segment.strip():
        return segment
    lead = segment[: len(segment) - len(segment.lstrip())]
    trail = segment[len(segment.rstrip()):]
    return lead + " ".join("".join(tok) for tok in tokens) + trail


# --------------------------------------------------------------------------- image: cropping


class RandomResizedCrop:
    """Per-sample random resized crop (torchvision's recipe without retries), seeded.

    Area share s ~ U[scale_min, 1], aspect ratio r = exp(U[log 3/4, log 4/3]); the box is
    w = round(sqrt(s H W r)), h = round(sqrt(s H W / r)), clamped to the image, at a uniform
    position; it is resized back to (H, W) bilinearly (kornia ``crop_and_resize``). A sample is
    cropped with probability ``p``; the others are returned bit-exactly. Five uniforms per sample.
    """

    def __init__(self, scale_min: float = 0.5, p: float = 0.5,
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        check_range("crop_scale", scale_min, 0.0, 1.0, lo_open=True)
        check_range("p_crop", p, 0.0, 1.0)
        self.scale_min, self.p, self.ratio = float(scale_min), float(p), ratio

    def sample_boxes(self, shape: Sequence[int], generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        """(boxes (B, 4, 2) float pixel corners tl, tr, br, bl as (x, y); gate (B,) bool)."""
        b, h_img, w_img = int(shape[0]), int(shape[-2]), int(shape[-1])
        u = torch.rand((b, 5), generator=generator, dtype=torch.float64)
        area = (self.scale_min + (1 - self.scale_min) * u[:, 0]) * h_img * w_img
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        r = torch.exp(lo + (hi - lo) * u[:, 1])
        w = torch.sqrt(area * r).round().clamp(1, w_img)
        h = torch.sqrt(area / r).round().clamp(1, h_img)
        x0 = torch.floor(u[:, 2] * (w_img - w + 1))
        y0 = torch.floor(u[:, 3] * (h_img - h + 1))
        x1, y1 = x0 + w - 1, y0 + h - 1
        boxes = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                             torch.stack([x1, y1], -1), torch.stack([x0, y1], -1)], dim=1)
        return boxes.float(), u[:, 4] < self.p

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Crop ``images`` (B, 3, H, W) in [0, 1]; returns (B, 3, H, W) in [0, 1]."""
        boxes, gate = self.sample_boxes(images.shape, generator)
        if not bool(gate.any()):
            return images
        out = crop_and_resize(images, boxes.to(images.device), tuple(images.shape[-2:]))
        return torch.where(gate.to(images.device).view(-1, 1, 1, 1), out.clamp(0, 1), images)


# --------------------------------------------------------------------------- the variants


class CleanCLIPAugment:
    """Builds the R rows per sample (clean first when ``include_clean``, then the variants)."""

    def __init__(self, cfg: Optional[CleanCLIPConfig] = None,
                 synonyms: Optional[SynonymSource] = None) -> None:
        self.cfg = cfg or CleanCLIPConfig()
        idr = self.cfg.idr_config()
        self.text = TextAugment.from_config(idr, synonyms) if self.cfg.textual else None
        self.colour = VisualAugment(idr) if self.cfg.visual else None
        self.crop = RandomResizedCrop(self.cfg.crop_scale, self.cfg.p_crop) if self.cfg.visual else None

    @property
    def rows_per_sample(self) -> int:
        return self.cfg.variants + int(self.cfg.include_clean)

    def instruction(self, text: str, generator: torch.Generator) -> str:
        """One augmented instruction: deletion + synonyms, then maybe a reordering."""
        if self.text is None:
            return text
        out = self.text(text, generator)
        reorder = float(torch.rand((), generator=generator)) < self.cfg.reorder_prob  # always drawn
        if reorder:
            n_words = len(out.split())
            out = swap_words(out, generator, max(1, int(self.cfg.swap_share * n_words)))
        return out

    def instructions(self, texts: Sequence[str], generator: torch.Generator) -> List[str]:
        """B instructions -> B * R rows, sample-major."""
        out: List[str] = []
        for t in texts:
            out += [t] if self.cfg.include_clean else []
            out += [self.instruction(t, generator) for _ in range(self.cfg.variants)]
        return out

    def images(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """(B, T, 3, H, W) -> (B * R, T, 3, H, W), sample-major, each image augmented on its own."""
        b, t = images.shape[:2]
        aug = images.repeat_interleave(self.cfg.variants, dim=0).flatten(0, 1)  # (B*V*T, 3, H, W)
        if self.colour is not None:
            aug, _ = self.colour(aug, generator)
            aug = self.crop(aug, generator)
        aug = aug.reshape(b, self.cfg.variants, t, *images.shape[2:])
        if self.cfg.include_clean:
            aug = torch.cat([images.unsqueeze(1), aug], dim=1)
        return aug.flatten(0, 1)

    def repeat(self, x: Optional[Tensor]) -> Optional[Tensor]:
        """Rows that are not augmented (responses' tensors, cached features): (B, ...) -> (B*R, ...)."""
        return None if x is None else x.repeat_interleave(self.rows_per_sample, dim=0)
