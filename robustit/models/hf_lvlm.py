"""Real Hugging Face LVLMs behind the LVLM protocol: the part every family shares.

A family (``hf_families.py``) wraps one ``transformers`` class as ``self.hf`` and says
- ``encode_images``: the frozen vision path, (B, T, 3, H, W) in [0, 1] -> (B, T, P, Dv);
- ``adapt``: the trainable adapter, (B, T, P, Dv) -> (B, T, N, D) (the default hook point);
- ``conditioned(media)``: a context manager that makes every language-model call inside it see
  the adapter output (hooks registered on entry, removed in ``finally``; no class is swapped);
- ``_hidden(input_ids, attention_mask)``: the LM's last hidden state (B, L', H) and
  ``_generator``: the module whose HF ``generate()`` decodes.

Prompts carry ONE ``<image>`` token per image, as for the embedded model, so ``max_len`` counts
text tokens. Projector families (LLaVA, BLIP-2) feed N visual tokens per image to the LM: each
``<image>`` is expanded to N slots inside :meth:`HFLVLM.forward` / :meth:`HFLVLM.generate`, the
input embedding of those slots is replaced by the adapter output, and the logits are read back
at the original positions, so ``logits`` (B, L, V) line up with the caller's ``input_ids``.
Cross-attention families (IDEFICS) keep one token per image (``expands_images = False``).

Images are resized to the vision encoder's side and normalised with the mean/std of the
folder's ``preprocessor_config.json`` inside ``encode_images``: attacks, augmentations and the
feature cache keep working in plain [0, 1] pixel space at any resolution.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..data.template import IMAGE_TOKEN, ChatTemplate
from ..errors import CheckpointError, DataError
from ..io import atomic_path
from .lvlm import LVLM, LVLMOutput

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
IGNORE = -100


# -- image settings -------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageSettings:
    """How a family wants its pixels: square side, per-channel mean and std (of [0, 1] pixels)."""

    size: int
    mean: Tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: Tuple[float, float, float] = OPENAI_CLIP_STD

    def to_json(self) -> dict:
        """A ``preprocessor_config.json`` a CLIP-style image processor reads back."""
        return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "do_rescale": True,
                "do_normalize": True, "do_center_crop": True, "rescale_factor": 1 / 255,
                "size": {"shortest_edge": self.size},
                "crop_size": {"height": self.size, "width": self.size},
                "image_mean": list(self.mean), "image_std": list(self.std)}


def read_image_settings(folder: Path, encoder_size: int) -> ImageSettings:
    """Mean/std from the folder's image-processor file (CLIP's when absent).

    The side is always the vision encoder's ``image_size`` (its position embeddings fix it);
    the processor's shortest-edge resize + centre crop is simplified to one resize.
    """
    conf = {}
    for name in PROCESSOR_FILES:
        path = folder / name
        if path.is_file():
            try:
                conf = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{path} is not valid JSON (line {exc.lineno})") from None
            conf = conf.get("image_processor", conf)
            break
    if conf.get("do_normalize") is False:
        return ImageSettings(encoder_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    mean, std = conf.get("image_mean", OPENAI_CLIP_MEAN), conf.get("image_std", OPENAI_CLIP_STD)
    return ImageSettings(int(encoder_size), tuple(float(x) for x in mean), tuple(float(x) for x in std))


def to_pixels(images: torch.Tensor, settings: ImageSettings, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, 3, H, W) in [0, 1] -> (B*T, 3, S, S) resized (bilinear, antialiased) and normalised."""
    if images.dim() != 5 or images.shape[2] != 3:
        raise DataError(f"images must be (B, T, 3, H, W) in [0, 1]; got shape {tuple(images.shape)}")
    x = images.flatten(0, 1).float()
    if tuple(x.shape[-2:]) != (settings.size, settings.size):
        x = F.interpolate(x, size=(settings.size, settings.size), mode="bilinear", antialias=True,
                          align_corners=False)
    mean = x.new_tensor(settings.mean).view(1, 3, 1, 1)
    std = x.new_tensor(settings.std).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No per-shard progress bars from transformers while loading or saving (restored after)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


# -- tokens ---------------------------------------------------------------------------------
def load_hf_tokenizer(folder: Path):
    """The folder's tokenizer (local files only), with a pad token and an ``<image>`` token."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: no usable tokenizer ({exc}); save the model's tokenizer "
                              f"into the folder (tokenizer.save_pretrained(folder))") from None
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    if tok.eos_token is None:
        raise CheckpointError(f"{folder}: the tokenizer has no end-of-sequence token; robustit "
                              f"supervises and stops generation on it")
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id is None or image_id == tok.unk_token_id:
        raise CheckpointError(f"{folder}: the tokenizer has no {IMAGE_TOKEN} token; add it "
                              f"(tokenizer.add_tokens(['{IMAGE_TOKEN}'], special_tokens=True)) and "
                              f"resize the model's embeddings, as the family's processor does")
    tok.padding_side = "right"
    return tok


def template_for(tokenizer, layout: str, image: str = IMAGE_TOKEN) -> ChatTemplate:
    """The family layout with this tokenizer's EOS as ``end`` and its BOS as ``begin`` when the
    tokenizer adds one by default (LLaMA, OPT)."""
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    return ChatTemplate(layout, end=tokenizer.eos_token, begin=tokenizer.bos_token if adds_bos else "",
                        image=image)


def expand_image_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_id: int,
                        n: int, pad_id: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Repeat every ``image_id`` token n times.

    Args:
        input_ids, attention_mask: (B, L); every row must hold the same number of image tokens.
    Returns:
        (ids (B, L'), mask (B, L'), last (B, L)) where ``last[b, j]`` is the position in the
        expanded row of original token j (its last slot for an image token).
    """
    is_img = (input_ids == image_id).long()
    counts = is_img.sum(1)
    if bool((counts != counts[0]).any()):
        raise DataError(f"every prompt of a batch needs the same number of {IMAGE_TOKEN} tokens; got "
                        f"{counts.tolist()}: was a prompt cut by max_len? Raise --max-len")
    extra = is_img * (n - 1)
    start = torch.arange(input_ids.shape[1], device=input_ids.device) + extra.cumsum(1) - extra
    width = input_ids.shape[1] + int(counts[0]) * (n - 1)
    # (B, L*n) targets: slot s of token j goes to start + s for an image token, else to start
    # (text tokens write the same value n times)
    slots = torch.arange(n, device=input_ids.device)
    where = (start.unsqueeze(-1) + slots * is_img.unsqueeze(-1)).flatten(1)
    ids = input_ids.new_full((input_ids.shape[0], width), pad_id)
    mask = attention_mask.new_zeros((input_ids.shape[0], width))
    ids.scatter_(1, where, input_ids.repeat_interleave(n, dim=1))
    mask.scatter_(1, where, attention_mask.repeat_interleave(n, dim=1))
    return ids, mask, start + extra


def shifted_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits (B, L, V) at t predict labels (B, L) at t+1 (-100 ignored)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE)


def module_path(root: nn.Module, target: nn.Module) -> str:
    """The ``get_submodule`` path of ``target`` inside ``root`` (raises if it is not there)."""
    for name, module in root.named_modules():
        if module is target:
            return name
    raise ValueError(f"{type(target).__name__} is not a submodule of {type(root).__name__}")


# -- the shared model -------------------------------------------------------------------------
class HFLVLM(LVLM):
    """A ``transformers`` vision-language model (``self.hf``) behind the LVLM protocol.

    Subclasses set ``model_type`` and ``architecture`` (how config.json is recognised),
    ``expands_images``, build their :class:`FamilySpec` in ``family_spec(hf)`` (module paths
    start with ``hf.``) and implement ``encode_images``, ``adapt`` and ``conditioned``;
    ``_hidden``, ``_generator`` and ``encoder_size(config)`` have defaults for the usual
    Hugging Face layout (BLIP-2 overrides the first two).
    """

    model_type: str = ""
    architecture: str = ""

    #: projector families: N LM slots per ``<image>``; cross-attention families: one token.
    expands_images: bool = True

    def __init__(self, hf: nn.Module, tokenizer, images: ImageSettings, template: ChatTemplate) -> None:
        super().__init__()
        self.hf = hf
        self.tokenizer = tokenizer
        self.images = images
        self.template = template
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))

    # -- facts ------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.images.size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def identity(self) -> dict:
        """Family, HF class and a hash of the tuned parts' names and shapes."""
        shapes = sorted((n, list(p.shape)) for part in ("adapter", "embeddings")
                        for n, p in self.part_parameters(part).items())
        digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
        return {"family": self.spec.name, "architecture": self.spec.architecture, "tuned_parts": digest}

    # -- interface for families -------------------------------------------------------------
    @contextlib.contextmanager
    def conditioned(self, media: Optional[torch.Tensor]) -> Iterator[None]:
        """Make LM calls inside see ``media`` (B, T, N, D); None = no images (text only)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L') -> the language model's last hidden state (B, L', H) (call inside ``conditioned``).

        Default: the usual Hugging Face layout, ``self.hf.model`` the conditioned base model
        (LLaVA, IDEFICS); families laid out otherwise override it."""
        return self.hf.model(input_ids=input_ids, attention_mask=attention_mask,
                             use_cache=False).last_hidden_state

    @property
    def _generator(self) -> nn.Module:
        """The module whose ``generate(input_ids=..., ...)`` decodes (inside ``conditioned``);
        default: the whole Hugging Face model."""
        return self.hf

    @staticmethod
    def encoder_size(config) -> int:
        """The vision encoder's input side in pixels, from the family's config."""
        return int(config.vision_config.image_size)

    # -- shared -----------------------------------------------------------------------------
    def _lm_inputs(self, input_ids, attention_mask, media):
        """Check one ``<image>`` per image, expand each to N slots (projector families).

        Returns (ids (B, L'), mask (B, L'), last (B, L)) as :func:`expand_image_tokens`.
        """
        counts = (input_ids == self.image_token_id).sum(1)
        if bool((counts != media.shape[1]).any()):
            raise DataError(f"the prompts hold {counts.tolist()} {IMAGE_TOKEN} tokens but {media.shape[1]} "
                            f"image(s) per sample were given: give one {IMAGE_TOKEN} per image (was a "
                            f"prompt cut by max_len? raise --max-len)")
        if not self.expands_images:
            last = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            return input_ids, attention_mask, last
        return expand_image_tokens(input_ids, attention_mask, self.image_token_id, media.shape[2],
                                   self.tokenizer.pad_token_id)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                images: Optional[torch.Tensor] = None, vision_features: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> LVLMOutput:
        """LM loss and logits.

        Args:
            input_ids, attention_mask: (B, L), one ``<image>`` token per image.
            images: (B, T, 3, H, W) in [0, 1], or vision_features (B, T, P, Dv) (cached).
            labels: (B, L) with -100 on unsupervised tokens.
        Returns:
            LVLMOutput with logits (B, L, V) aligned with ``input_ids`` and adapter_out (B, T, N, D).
        """
        with self.masks_active():
            media = self.visual_features(images, vision_features)
        ids, mask, last = self._lm_inputs(input_ids, attention_mask, media)
        with self.conditioned(media):
            hidden = self._hidden(ids, mask)
        hidden = hidden.gather(1, last.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        logits = self.hf.get_output_embeddings()(hidden)
        loss = shifted_lm_loss(logits, labels) if labels is not None else None
        return LVLMOutput(loss=loss, logits=logits, adapter_out=media)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], images: Optional[torch.Tensor] = None,
                 vision_features: Optional[torch.Tensor] = None, max_new_tokens: int = 20,
                 num_beams: int = 1, use_cache: bool = True) -> List[str]:
        """Greedy (num_beams=1) or beam decoding with HF ``generate()`` and its KV cache.

        Args:
            prompts: B prompt strings, each with one ``<image>`` per image given.
            images: (B, T, 3, H, W) in [0, 1] (or vision_features (B, T, P, Dv)).
        Returns:
            B decoded responses (special tokens removed, stripped).
        """
        tok = self.tokenizer
        enc = self.encode_prompts(prompts)
        with self.masks_active():
            media = self.visual_features(images, vision_features)
        ids, mask, _ = self._lm_inputs(enc["input_ids"], enc["attention_mask"], media)
        with self.conditioned(media):
            out = self._generator.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
                do_sample=False, use_cache=use_cache, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, bad_words_ids=[[self.image_token_id]])
        return [s.strip() for s in tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)]

    def text_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The frozen LM's last hidden state for text without images: (B, L) -> (B, L, H)."""
        with self.conditioned(None):
            return self._hidden(input_ids, attention_mask)

    def _check_image_count(self, input_ids: torch.Tensor, expected: int) -> None:
        """Every row holds ``expected`` image slots, or (an incremental decoding step) none."""
        counts = (input_ids == self.image_token_id).sum(1)
        if bool((counts == 0).all()):
            return
        if bool((counts != expected).any()):
            raise DataError(f"the prompts hold {counts.tolist()} image slots, the images give "
                            f"{expected} per sample: give one {IMAGE_TOKEN} per image")

    # -- saving -------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write an HF folder (weights, config, tokenizer, preprocessor_config.json) atomically."""
        folder = Path(folder)
        with atomic_path(folder) as tmp:
            tmp.mkdir(parents=True)
            with quiet_transformers():
                self.hf.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            (tmp / PROCESSOR_FILES[0]).write_text(json.dumps(self.images.to_json(), indent=2) + "\n")
        return folder

