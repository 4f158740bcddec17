"""Input Diversity Regularization (IDR, RobustIT Sec. 3.3).

IDR perturbs the inputs during tuning and adds an intra-modal consistency loss (Eq. 3):

    L_imc = E_x ||H(x) - H(A^v(x))||^2  +  E_t ||E(t) - E(A^t(t))||^2
    L     = L_it + alpha * L_imc                                     (Eq. 6, alpha = 2)

* A^v (:class:`VisualAugment`): "slight colour jitter or random flip" (the paper's words; its
  appendix gives no strengths). Defaults: brightness/contrast/saturation factors uniform in
  [0.8, 1.2], hue shift uniform in [-0.05, 0.05] turns (+-18 degrees), every sample jittered,
  horizontal flip with p = 0.5 (kornia's ColorJitter / RandomHorizontalFlip, torchvision
  semantics). Seeded by a ``torch.Generator``; returns its parameters so a view can be replayed.
* A^t (:class:`TextAugment`): random word dropout (p = 0.1, never every word) and synonym
  substitution (q = 0.1) on the *instruction string* only; special tokens are never touched and
  the response is never augmented.
* :func:`consistency_loss`: H = adapter output (B, T, N, D); E = the text embedding output pooled
  over the instruction's tokens (:func:`pooled_embedding`), since t and A^t(t) differ in length.

Label-preserving option (``label_aware``, see :func:`label_conflicts`): a flip contradicts a
caption that says "left"/"right" and a hue shift one that names a colour. With
``label_aware=True`` a sample whose instruction or response contains a direction word is not
flipped, and one that names a chromatic colour gets no hue shift (the other jitters remain). The
response is never rewritten (no left<->right swap), because IDR never augments responses. The
default is the paper's plain augmentation; the strength used is recorded with the config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import kornia.augmentation as KA
import numpy as np
import torch
from torch import Tensor

from ..config import check_range
from ..data.template import SPECIAL_TOKENS
from ..errors import ConfigError
from .synonyms import SOURCE_KINDS, SynonymSource

__all__ = [
    "IDRConfig",
    "VisualAugment",
    "TextAugment",
    "label_conflicts",
    "consistency_loss",
    "pooled_embedding",
    "DIRECTION_WORDS",
    "COLOUR_WORDS",
]

LM_VIEWS = ("augmented", "clean", "both")
NORMALISATIONS = ("none", "relative")
REDUCTIONS = ("mean", "sample_sum")

#: words whose meaning a horizontal flip inverts ("left-hand" is matched as "left")
DIRECTION_WORDS = frozenset({"left", "right", "leftmost", "rightmost", "lefthand", "righthand",
                             "leftward", "rightward", "leftwards", "rightwards"})
#: chromatic colour names a hue shift can falsify (black/white/grey have no hue and stay allowed)
COLOUR_WORDS = frozenset({
    "red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "cyan", "magenta",
    "teal", "turquoise", "indigo", "lime", "maroon", "navy", "olive", "gold", "golden", "brown",
    "beige", "tan", "amber", "crimson", "scarlet", "azure", "lavender", "reddish", "bluish",
    "greenish", "yellowish", "orangish", "purplish", "pinkish", "brownish", "colour", "color",
    "colours", "colors", "coloured", "colored",
})

Generator = Union[torch.Generator, np.random.Generator]


@dataclass
class IDRConfig:
    """IDR settings. Defaults follow the paper where it is explicit (alpha = 2, LM loss on the
    augmented view, plain squared L2); the augmentation strengths are this project's reading of
    "slight colour jitter or random flip".

    Attributes:
        alpha: weight of L_imc in L_it + alpha * L_imc, >= 0.
        visual / textual: enable A^v (and the visual term) / A^t (and the textual term).
        jitter_brightness / jitter_contrast / jitter_saturation: factor ~ U[1-s, 1+s], s in [0, 1).
        jitter_hue: hue shift ~ U[-h, h] in turns, h in [0, 0.5].
        p_jitter: probability that a sample is jittered; p_flip: that it is flipped.
        token_dropout: probability that an instruction word is dropped, in [0, 1).
        synonym_prob: probability that a (kept) word is replaced by a synonym, in [0, 1].
        synonym_source: ``"auto"`` | ``"table"`` | ``"wordnet"`` (see ``defenses.synonyms``).
        lm_view: view(s) the language-modelling loss sees: ``"augmented"`` (paper), ``"clean"``,
            ``"both"`` (mean of the two).
        normalise: ``"none"`` (paper: plain squared L2) or ``"relative"`` (each term divided by
            the detached mean squared magnitude of the clean features, making L_imc scale-free so
            alpha weighs a relative change; a prototype saw the raw term ~100x below the LM loss).
        reduction: ``"mean"`` over all elements (default) or ``"sample_sum"`` (the literal
            squared norm per sample, mean over the batch).
        stop_grad_clean: detach the clean view in L_imc (default: gradients reach both views).
        label_aware: skip flips / hue shifts that contradict the sample's text (see module doc).
    """

    alpha: float = 2.0
    visual: bool = True
    textual: bool = True
    jitter_brightness: float = 0.2
    jitter_contrast: float = 0.2
    jitter_saturation: float = 0.2
    jitter_hue: float = 0.05
    p_jitter: float = 1.0
    p_flip: float = 0.5
    token_dropout: float = 0.1
    synonym_prob: float = 0.1
    synonym_source: str = "auto"
    lm_view: str = "augmented"
    normalise: str = "none"
    reduction: str = "mean"
    stop_grad_clean: bool = False
    label_aware: bool = False

    def __post_init__(self) -> None:
        check_range("idr.alpha", self.alpha, 0.0)
        for name in ("jitter_brightness", "jitter_contrast", "jitter_saturation"):
            check_range(f"idr.{name}", getattr(self, name), 0.0, 1.0, hi_open=True)
        check_range("idr.jitter_hue", self.jitter_hue, 0.0, 0.5)
        for name in ("p_jitter", "p_flip", "synonym_prob"):
            check_range(f"idr.{name}", getattr(self, name), 0.0, 1.0)
        check_range("idr.token_dropout", self.token_dropout, 0.0, 1.0, hi_open=True)
        for name, value, choices in (("lm_view", self.lm_view, LM_VIEWS),
                                     ("normalise", self.normalise, NORMALISATIONS),
                                     ("reduction", self.reduction, REDUCTIONS),
                                     ("synonym_source", self.synonym_source, SOURCE_KINDS)):
            if value not in choices:
                raise ConfigError(f"`idr.{name}` must be one of {list(choices)}; got {value!r}")

    @property
    def lm_on_augmented(self) -> bool:
        return self.lm_view in ("augmented", "both")

    @property
    def lm_on_clean(self) -> bool:
        return self.lm_view in ("clean", "both")


# --------------------------------------------------------------------------- label conflicts


def label_conflicts(texts: Sequence[str]) -> Tuple[Tensor, Tensor]:
    """Which samples may be flipped / hue-shifted without contradicting their text.

    Args:
        texts: one string per sample (pass instruction + " " + response).

    Returns:
        (flip_ok (B,) bool, hue_ok (B,) bool): flip_ok is False when the text contains a word of
        :data:`DIRECTION_WORDS`; hue_ok is False when it contains one of :data:`COLOUR_WORDS`.
        Matching is on lowercase letter runs, so "Left-hand" matches and "bright" does not;
        it is conservative ("that's right" also blocks the flip).
    """
    flip_ok, hue_ok = [], []
    for text in texts:
        words = set(re.findall(r"[a-z]+", text.lower()))
        flip_ok.append(not (words & DIRECTION_WORDS))
        hue_ok.append(not (words & COLOUR_WORDS))
    return torch.tensor(flip_ok, dtype=torch.bool), torch.tensor(hue_ok, dtype=torch.bool)


# --------------------------------------------------------------------------- visual


class VisualAugment:
    """A^v: colour jitter then horizontal flip, per sample, seeded and replayable.

    Parameters are drawn by this class from a ``torch.Generator`` (kornia itself only draws
    from the global RNG) and handed to kornia's ``ColorJitter`` / ``RandomHorizontalFlip`` with
    ``params=``; ``augment(x, params=p)`` therefore reproduces a view exactly. The output is
    differentiable w.r.t. the input (an adaptive attacker can optimise through it).
    Samples whose gate is off are returned bit-exactly; with zero strengths and ``p_flip = 0``
    the whole call is the identity.
    """

    def __init__(self, cfg: Optional[IDRConfig] = None) -> None:
        self.cfg = cfg or IDRConfig()
        c = self.cfg
        # p < 1 on both modules makes kornia honour the per-sample gate we pass in `batch_prob`.
        self._jitter = KA.ColorJitter(c.jitter_brightness, c.jitter_contrast, c.jitter_saturation,
                                      c.jitter_hue, p=0.5)
        self._flip = KA.RandomHorizontalFlip(p=0.5)

    def sample_params(self, shape: Sequence[int], generator: torch.Generator,
                      flip_ok: Optional[Tensor] = None,
                      hue_ok: Optional[Tensor] = None) -> Dict[str, Dict[str, Tensor]]:
        """Draw one view's parameters (CPU tensors) for a batch of ``shape`` (B, 3, H, W).

        The draw order is fixed (brightness, contrast, saturation, hue, order, jitter gate,
        flip gate), so the same generator state gives the same view on every machine.
        ``flip_ok`` / ``hue_ok`` (B,) bool switch the flip / the hue shift off per sample (a
        zero hue shift still runs kornia's HSV round trip when other samples shift: ~6e-7 error).
        """
        c, b = self.cfg, int(shape[0])

        def uniform(s: float, centre: float) -> Tensor:
            return centre - s + 2.0 * s * torch.rand(b, generator=generator)

        jitter = {"brightness_factor": uniform(c.jitter_brightness, 1.0),
                  "contrast_factor": uniform(c.jitter_contrast, 1.0),
                  "saturation_factor": uniform(c.jitter_saturation, 1.0),
                  "hue_factor": uniform(c.jitter_hue, 0.0),
                  "order": torch.randperm(4, generator=generator),
                  "batch_prob": (torch.rand(b, generator=generator) < c.p_jitter).float(),
                  "forward_input_shape": torch.tensor(list(shape), dtype=torch.long)}
        flip = (torch.rand(b, generator=generator) < c.p_flip)
        if hue_ok is not None:
            hue = jitter["hue_factor"]
            jitter["hue_factor"] = torch.where(hue_ok.cpu(), hue, torch.zeros_like(hue))
        if flip_ok is not None:
            flip = flip & flip_ok.cpu()
        return {"jitter": jitter, "flip": {"batch_prob": flip.float(),
                                           "forward_input_shape": jitter["forward_input_shape"].clone()}}

    def apply(self, images: Tensor, params: Dict[str, Dict[str, Tensor]]) -> Tensor:
        """Apply a drawn view to ``images`` (B, 3, H, W) in [0, 1]; returns (B, 3, H, W) in [0, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"VisualAugment expects images (B, 3, H, W); got shape {tuple(images.shape)}")

        def on_device(p: Dict[str, Tensor]) -> Dict[str, Tensor]:
            # kornia keeps the dict it is given: pass copies so `params` stays the caller's record.
            return {k: (v if k in ("order", "forward_input_shape") else v.to(images.device))
                    for k, v in p.items()}

        out = self._jitter(images, params=on_device(params["jitter"]))
        return self._flip(out, params=on_device(params["flip"]))

    def __call__(self, images: Tensor, generator: Optional[torch.Generator] = None, *,
                 params: Optional[Dict[str, Dict[str, Tensor]]] = None,
                 texts: Optional[Sequence[str]] = None) -> Tuple[Tensor, Dict[str, Dict[str, Tensor]]]:
        """Augment a batch. Give ``generator`` to draw a new view, or ``params`` to replay one.

        Args:
            images: (B, 3, H, W) float in [0, 1].
            generator: seeded CPU ``torch.Generator`` (required unless ``params`` is given).
            params: a view returned by an earlier call (replays it exactly).
            texts: per-sample instruction + response; required when ``cfg.label_aware``.

        Returns:
            (augmented (B, 3, H, W), params).
        """
        if params is None:
            if generator is None:
                raise ConfigError("VisualAugment needs a seeded `generator` (or `params` to replay a view)")
            flip_ok = hue_ok = None
            if self.cfg.label_aware:
                if texts is None or len(texts) != images.shape[0]:
                    raise ConfigError("`idr.label_aware`=true: pass `texts` (one instruction + response per "
                                      "image) to VisualAugment, or set label_aware=false")
                flip_ok, hue_ok = label_conflicts(texts)
            params = self.sample_params(tuple(images.shape), generator, flip_ok, hue_ok)
        return self.apply(images, params), params


# --------------------------------------------------------------------------- textual

_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)


def _uniforms(generator: Generator, n: int) -> List[List[float]]:
    """n rows of 3 uniforms in [0, 1) from a torch or numpy generator."""
    if isinstance(generator, np.random.Generator):
        return generator.random((n, 3)).tolist()
    if isinstance(generator, torch.Generator):
        return torch.rand((n, 3), generator=generator, dtype=torch.float64).tolist()
    raise ConfigError(f"TextAugment needs a torch.Generator or numpy Generator; got {type(generator).__name__}")


class TextAugment:
    """A^t: word dropout + synonym substitution on an instruction string.

    The string is first split around protected tokens (the template's special tokens, by
    default), which are kept verbatim in place even inside the instruction; the rest is split on
    whitespace. A token's leading/trailing punctuation is kept apart from its word: a replaced
    word keeps its punctuation, and a dropped word's trailing punctuation moves to the previous
    kept token ("Describe the image." -> "Describe the."). Tokens without a word character are
    never dropped or replaced. If every word would be dropped, the word with the highest dropout
    draw is kept. Each word consumes exactly three uniforms (drop, replace, which synonym), so
    the result is a function of the generator state only. When nothing changes, the input string
    is returned unchanged (whitespace included).

    Args:
        token_dropout: per-word drop probability p in [0, 1).
        synonym_prob: per-word replacement probability q in [0, 1].
        synonyms: the synonym source (default: ``SynonymSource("auto")``).
        protected: strings never dropped or changed.
    """

    def __init__(self, token_dropout: float = 0.1, synonym_prob: float = 0.1,
                 synonyms: Optional[SynonymSource] = None,
                 protected: Sequence[str] = SPECIAL_TOKENS) -> None:
        check_range("token_dropout", token_dropout, 0.0, 1.0, hi_open=True)
        check_range("synonym_prob", synonym_prob, 0.0, 1.0)
        self.token_dropout = float(token_dropout)
        self.synonym_prob = float(synonym_prob)
        self.synonyms = synonyms if synonyms is not None else SynonymSource("auto")
        ordered = sorted({p for p in protected if p}, key=len, reverse=True)  # longest match first
        self._split = re.compile("(" + "|".join(map(re.escape, ordered)) + ")") if ordered else None
        self._protected = frozenset(ordered)

    @classmethod
    def from_config(cls, cfg: IDRConfig, synonyms: Optional[SynonymSource] = None) -> "TextAugment":
        return cls(cfg.token_dropout, cfg.synonym_prob, synonyms or SynonymSource(cfg.synonym_source))

    def __call__(self, text: str, generator: Generator) -> str:
        """Augment one instruction (deterministic given the generator state)."""
        segments = self._split.split(text) if self._split else [text]
        # per unprotected segment: list of [prefix, word, suffix] tokens
        tokens = {i: [list(_CORE.match(t).groups()) for t in seg.split()]
                  for i, seg in enumerate(segments) if seg not in self._protected}
        words = [tok for i in sorted(tokens) for tok in tokens[i]]
        draws = _uniforms(generator, len(words))
        changed = self._decide(words, draws)
        if not changed:
            return text
        out = []
        for i, seg in enumerate(segments):
            out.append(seg if i not in tokens else self._join(seg, tokens[i]))
        return "".join(out)

    def _decide(self, words: List[List[str]], draws: List[List[float]]) -> bool:
        """Mark dropped tokens (word set to None) and substitute synonyms in place."""
        candidates = [j for j, w in enumerate(words) if w[1]]
        drop = {j for j in candidates if draws[j][0] < self.token_dropout}
        if candidates and len(drop) == len(candidates):
            drop.discard(max(candidates, key=lambda j: draws[j][0]))
        changed = bool(drop)
        for j in candidates:
            if j in drop:
                words[j][1] = None
            elif draws[j][1] < self.synonym_prob:
                options = self.synonyms.synonyms(words[j][1])
                if options:
                    words[j][1] = options[min(int(draws[j][2] * len(options)), len(options) - 1)]
                    changed = True
        return changed

    @staticmethod
    def _join(segment: str, tokens: List[List[str]]) -> str:
        """Rebuild one unprotected segment, keeping its outer whitespace."""
        kept: List[str] = []
        for prefix, word, suffix in tokens:
            if word is None:
                if suffix and kept:
                    kept[-1] += suffix
                continue
            kept.append(prefix + word + suffix)
        lead = segment[: len(segment) - len(segment.lstrip())]
        trail = segment[len(segment.rstrip()):] if segment.strip() else ""
        return lead + " ".join(kept) + trail

    def batch(self, texts: Sequence[str], generator: Generator) -> List[str]:
        """Augment each instruction in order with the same generator."""
        return [self(t, generator) for t in texts]


# --------------------------------------------------------------------------- loss


def pooled_embedding(emb: Tensor, mask: Tensor) -> Tensor:
    """Mean of token embeddings over the tokens where ``mask`` is set.

    Args:
        emb: (B, L, E) token embeddings (the output of E_phi).
        mask: (B, L) bool or {0, 1}: 1 on the instruction's tokens, 0 on padding / other tokens.

    Returns:
        (B, E); a row with no selected token is all zeros.
    """
    if emb.dim() != 3 or mask.shape != emb.shape[:2]:
        raise ValueError(f"pooled_embedding: expected emb (B, L, E) and mask (B, L); got "
                         f"{tuple(emb.shape)} and {tuple(mask.shape)}")
    weights = mask.to(emb.dtype).unsqueeze(-1)
    return (emb * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def _term(clean: Tensor, aug: Tensor, normalise: str, reduction: str, eps: float) -> Tensor:
    """Squared-difference term (scalar, float32) between a clean and an augmented view."""
    if clean.shape != aug.shape:
        raise ValueError(f"consistency_loss: views differ in shape {tuple(clean.shape)} vs {tuple(aug.shape)}")
    clean, aug = clean.float(), aug.float()
    sq = (clean - aug).pow(2)
    ref = clean.detach().pow(2)
    if reduction == "sample_sum":  # literal E_x ||.||^2: sum over features, mean over samples
        sq, ref = sq.reshape(sq.shape[0], -1).sum(1), ref.reshape(ref.shape[0], -1).sum(1)
    value = sq.mean()
    if normalise == "relative":
        value = value / (ref.mean() + eps)
    return value


def consistency_loss(h_clean: Optional[Tensor], h_aug: Optional[Tensor],
                     e_clean: Optional[Tensor] = None, e_aug: Optional[Tensor] = None, *,
                     normalise: str = "none", reduction: str = "mean",
                     stop_grad_clean: bool = False, eps: float = 1e-8) -> Tuple[Tensor, Dict[str, Tensor]]:
    """L_imc (Eq. 3): visual term on adapter outputs + textual term on pooled text embeddings.

    Exactly zero when the two views are identical, positive otherwise. Gradients flow to both
    views unless ``stop_grad_clean``; the "relative" denominator is always detached.

    Args:
        h_clean, h_aug: adapter outputs H(x), H(A^v(x)), e.g. (B, T, N, D); both None to skip.
        e_clean, e_aug: pooled text embeddings (B, E) of t and A^t(t); both None to skip.
        normalise: ``"none"`` (paper) or ``"relative"`` (term / mean squared clean feature).
        reduction: ``"mean"`` over elements or ``"sample_sum"`` (sum per sample, mean over B).
        stop_grad_clean: detach the clean view.
        eps: added to the "relative" denominator.

    Returns:
        (loss scalar float32, {"visual", "textual", "imc"} detached scalars). The caller adds
        ``alpha * loss`` to the language-modelling loss.
    """
    if normalise not in NORMALISATIONS or reduction not in REDUCTIONS:
        raise ConfigError(f"consistency_loss: `normalise` must be in {list(NORMALISATIONS)} and `reduction` "
                          f"in {list(REDUCTIONS)}; got {normalise!r}, {reduction!r}")
    terms: Dict[str, Tensor] = {}
    for name, clean, aug in (("visual", h_clean, h_aug), ("textual", e_clean, e_aug)):
        if (clean is None) != (aug is None):
            raise ValueError(f"consistency_loss: give both views of the {name} term or neither")
        if clean is not None:
            clean = clean.detach() if stop_grad_clean else clean
            terms[name] = _term(clean, aug, normalise, reduction, eps)
    if not terms:
        raise ValueError("consistency_loss: no term given (pass h_clean/h_aug and/or e_clean/e_aug)")
    loss = sum(terms.values())
    zero = loss.detach().new_zeros(())
    parts = {name: terms[name].detach() if name in terms else zero for name in ("visual", "textual")}
    parts["imc"] = loss.detach()
    return loss, parts
