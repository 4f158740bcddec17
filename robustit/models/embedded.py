"""The embedded LVLM: a small Flamingo/Otter-style model that runs on a laptop CPU.

    images (B,T,3,H,W) -> CLIPVisionModel (frozen) -> (B,T,P,Dv)
        -> PerceiverResampler (adapter)  -> (B,T,N,Dv)   [AAR hook point "perceiver"]
        -> GatedCrossAttentionBlock before each LM block (adapter), tanh-gated
    text -> HF causal LM (GPT-2 or LLaMA config; frozen blocks, trainable embeddings + LM head)

The cross-attention blocks are applied through forward pre-hooks on the LM's decoder layers,
registered only inside :meth:`EmbeddedFlamingo.conditioned` and removed in ``finally``: the HF
language model keeps its own class, module layout and weight names (so a real local causal LM
can be composed the same way), and no class is swapped at run time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, GPT2Config, GPT2LMHeadModel

from ..config import check_range
from ..data.template import ANSWER_TOKEN, IMAGE_TOKEN
from ..errors import ConfigError
from .family import FamilySpec
from .flamingo_parts import FlamingoAdapter
from .lvlm import LVLM, LVLMOutput

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class EmbeddedConfig:
    """Sizes of the embedded model (defaults: ~8M parameters at 64x64)."""

    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 192
    vision_layers: int = 4
    vision_heads: int = 4
    lm_family: str = "gpt2"
    lm_width: int = 256
    lm_layers: int = 4
    lm_heads: int = 4
    max_positions: int = 320
    vocab_size: int = 2048
    perceiver_depth: int = 2
    num_latents: int = 16
    perceiver_heads: int = 4
    perceiver_dim_head: int = 48
    xattn_heads: int = 4
    xattn_dim_head: int = 32
    xattn_every: int = 1
    ff_mult: int = 2
    #: starting value of the tanh gates. 0 (Flamingo) protects a pretrained LM; the embedded
    #: model trains its LM from scratch, where zero gates never open (see GatedCrossAttentionBlock).
    xattn_gate_init: float = 1.0
    #: LM layer of the first cross-attention block (``xattn_every - 1``: OpenFlamingo's placement).
    xattn_first: int = 0
    #: feed the adapter the patch tokens only (OpenFlamingo drops CLIP's CLS token).
    vision_drop_cls: bool = False
    #: restart token positions at each in-context example's ``<image>`` (the first example's
    #: positions are unchanged, so single-example inputs are not affected). The shipped base
    #: learned positions from single examples of <= 49 tokens; with absolute positions a one-shot
    #: prompt's query sits where position embeddings were never trained (docs/models.md,
    #: "In-context examples"). Off by default: the recorded one-shot results use absolute ones.
    chunk_positions: bool = False

    def __post_init__(self) -> None:
        if self.lm_family not in LM_FAMILIES:
            raise ConfigError(f"`lm_family` must be one of {sorted(LM_FAMILIES)}; got {self.lm_family!r}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"`image_size` ({self.image_size}) must be a multiple of "
                              f"`patch_size` ({self.patch_size})")
        check_range("xattn_every", self.xattn_every, 1, self.lm_layers)
        check_range("xattn_first", self.xattn_first, 0, self.xattn_every - 1)


#: lm_family -> (decoder blocks, input embeddings) module paths inside the HF causal LM.
LM_FAMILIES = {"gpt2": ("transformer.h", "transformer.wte"),
               "llama": ("model.layers", "model.embed_tokens"),
               "mpt": ("transformer.blocks", "transformer.wte")}
#: fields added after base models were shipped: left out of ``identity()`` at their default, so
#: tuned checkpoints of older bases still load.
LATER_FIELDS = {"xattn_first": 0, "vision_drop_cls": False, "chunk_positions": False}


def _build_lm(cfg: EmbeddedConfig, pad_id: int, eos_id: int) -> nn.Module:
    if cfg.lm_family not in ("gpt2", "llama"):
        raise ConfigError(f"a random-init embedded LM is GPT-2 or LLaMA; {cfg.lm_family!r} comes "
                          f"from a pretrained folder (`robustit compose --lm DIR`)")
    common = dict(vocab_size=cfg.vocab_size, pad_token_id=pad_id, eos_token_id=eos_id,
                  bos_token_id=eos_id, tie_word_embeddings=True)
    if cfg.lm_family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=cfg.lm_width, n_layer=cfg.lm_layers,
                                          n_head=cfg.lm_heads, n_positions=cfg.max_positions,
                                          **common))
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(hidden_size=cfg.lm_width, num_hidden_layers=cfg.lm_layers,
                                        num_attention_heads=cfg.lm_heads,
                                        intermediate_size=cfg.lm_width * 4,
                                        max_position_embeddings=cfg.max_positions, **common))


def _family_spec(cfg: EmbeddedConfig, name: Optional[str] = None) -> FamilySpec:
    lm_blocks, emb = (f"language_model.{p}" for p in LM_FAMILIES[cfg.lm_family])
    return FamilySpec(
        name=name or f"embedded-flamingo-{cfg.lm_family}",
        vision_encoder=("vision_encoder",),
        adapter=("adapter",),
        language_model=("language_model",),
        embeddings=(emb, "language_model.lm_head"),
        hook_points={"perceiver": "adapter.perceiver", "vision": "vision_proj"},
    ), lm_blocks


class EmbeddedFlamingo(LVLM):
    """The embedded Flamingo-style LVLM. See the module docstring for the data flow.

    ``vision_encoder`` (an HF ``CLIPVisionModel``) and ``language_model`` (an HF causal LM of
    ``cfg.lm_family``, embeddings already sized to the tokenizer) may be given pretrained (the
    ``flamingo-compose`` family, ``compose.py``); otherwise both are built with random weights
    from ``cfg``. ``family`` names the family in the spec (default ``embedded-flamingo-<lm>``).
    """

    def __init__(self, cfg: EmbeddedConfig, tokenizer, vision_encoder: Optional[nn.Module] = None,
                 language_model: Optional[nn.Module] = None, family: Optional[str] = None) -> None:
        super().__init__()
        self.config = cfg
        self.tokenizer = tokenizer
        self.spec, self._lm_blocks_path = _family_spec(cfg, family)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.answer_token_id = tokenizer.convert_tokens_to_ids(ANSWER_TOKEN)
        self.vision_encoder = vision_encoder if vision_encoder is not None else CLIPVisionModel(CLIPVisionConfig(
            hidden_size=cfg.vision_width, intermediate_size=cfg.vision_width * 4,
            num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
            image_size=cfg.image_size, patch_size=cfg.patch_size))
        # Identity whose output is the adapter's input: the AAR "vision" hook point.
        self.vision_proj = nn.Identity()
        self.language_model = language_model if language_model is not None else \
            _build_lm(cfg, tokenizer.pad_token_id, tokenizer.eos_token_id)
        self.adapter = FlamingoAdapter(
            cfg.vision_width, cfg.lm_width, cfg.lm_layers, perceiver_depth=cfg.perceiver_depth,
            num_latents=cfg.num_latents, heads=cfg.perceiver_heads, dim_head=cfg.perceiver_dim_head,
            xattn_heads=cfg.xattn_heads, xattn_dim_head=cfg.xattn_dim_head,
            xattn_every=cfg.xattn_every, ff_mult=cfg.ff_mult, gate_init=cfg.xattn_gate_init,
            xattn_first=cfg.xattn_first)
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def identity(self) -> dict:
        from ..config import config_to_dict

        config = {k: v for k, v in config_to_dict(self.config).items()
                  if k not in LATER_FIELDS or v != LATER_FIELDS[k]}
        return {"family": self.spec.name, "config": config}

    # -- vision and adapter -------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [0, 1] -> (B, T, P+1, Dv) frozen CLIP features (P without CLS when
        ``vision_drop_cls``); other sizes are resized to ``image_size`` first."""
        b, t = images.shape[:2]
        x = images.flatten(0, 1)
        size = self.config.image_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.pixel_mean) / self.pixel_std
        feats = self.vision_encoder(pixel_values=x).last_hidden_state
        if self.config.vision_drop_cls:
            feats = feats[:, 1:]
        return feats.unflatten(0, (b, t))

    def adapt(self, vision_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, Dv) -> (B, T, N, Dv) perceiver latents."""
        return self.adapter.perceiver(self.vision_proj(vision_features))

    # -- conditioning the language model on images ----------------------------------------------
    @contextlib.contextmanager
    def conditioned(self, media: torch.Tensor) -> Iterator[None]:
        """Inject gated cross-attention on ``media`` (B, T, N, D) into every LM call inside.

        A pre-hook on the LM reads each call's ``input_ids`` to track, per token, which image it
        follows (the running count carries over incremental decoding steps); pre-hooks on the
        decoder layers apply the cross-attention blocks. All hooks are removed in ``finally``.
        """
        state: dict = {"index": None, "last": None, "offset": None}
        handles = [self.language_model.register_forward_pre_hook(
            lambda mod, args, kwargs: self._track_media(state, args, kwargs), with_kwargs=True)]
        blocks = self.get_submodule(self._lm_blocks_path)
        for xattn, layer_id in zip(self.adapter.xattn, self.adapter.xattn_layer_ids):
            handles.append(blocks[layer_id].register_forward_pre_hook(
                self._xattn_hook(xattn, media, state), with_kwargs=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _track_media(self, state: dict, args: tuple, kwargs: dict):
        ids = kwargs.get("input_ids")
        if ids is None:
            raise ValueError("the embedded model conditions on input_ids; inputs_embeds is unsupported")
        count = torch.cumsum((ids == self.image_token_id).long(), dim=1)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        incremental = cache is not None and cache.get_seq_length() > 0
        if incremental:
            # An incremental decoding step: continue the count of images seen so far.
            count = count + state["last"].unsqueeze(1)
        state["index"], state["last"] = count, count[:, -1]
        if not self.config.chunk_positions:
            return None
        return args, {**kwargs, "position_ids": self._chunk_positions(state, ids, kwargs, incremental)}

    def _chunk_positions(self, state: dict, ids: torch.Tensor, kwargs: dict, incremental: bool) -> torch.Tensor:
        """(B, L) positions that restart at every ``<image>`` after the first, so each in-context
        chunk takes the positions the first chunk has (its own positions are left as they are).

        The base positions are the caller's (generation passes mask cumsum - 1, continued step
        by step) or, without them, 0..L-1 as the LM itself would take (training and scoring).
        """
        base = kwargs.get("position_ids")
        if base is None:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = cache.get_seq_length() if incremental else 0
            base = (torch.arange(ids.shape[1], device=ids.device) + past).expand_as(ids)
        if incremental:  # no new images are generated: the offset of the last chunk holds
            return base - state["offset"].unsqueeze(1)
        is_image = ids == self.image_token_id
        big = torch.iinfo(base.dtype).max
        first = torch.where(is_image, base, big).min(dim=1).values  # (B,) first image's position
        at_image = torch.where(is_image, base, torch.full_like(base, -1))
        latest = torch.cummax(at_image, dim=1).values  # (B, L): position of the latest image
        offset = torch.where(latest >= 0, latest - first.unsqueeze(1), torch.zeros_like(base))
        state["offset"] = offset[:, -1]
        return base - offset

    @staticmethod
    def _xattn_hook(xattn: nn.Module, media: torch.Tensor, state: dict):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            m = media
            if hidden.shape[0] != m.shape[0]:  # beam search expands the batch
                m = m.repeat_interleave(hidden.shape[0] // m.shape[0], dim=0)
            hidden = xattn(hidden, m, state["index"])
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}
        return hook

    # -- forward ------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                images: Optional[torch.Tensor] = None, vision_features: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> LVLMOutput:
        """LM loss and logits.

        Args:
            input_ids, attention_mask: (B, L).
            images: (B, T, 3, H, W) in [0, 1], or vision_features (B, T, P, Dv) (cached).
            labels: (B, L) with -100 on unsupervised tokens.
        """
        with self.masks_active():
            media = self.visual_features(images, vision_features)
        with self.conditioned(media):
            out = self.language_model(input_ids=input_ids, attention_mask=attention_mask,
                                      labels=labels)
        return LVLMOutput(loss=out.loss, logits=out.logits, adapter_out=media)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], images: Optional[torch.Tensor] = None,
                 vision_features: Optional[torch.Tensor] = None, max_new_tokens: int = 20,
                 num_beams: int = 1, use_cache: bool = True) -> List[str]:
        """Greedy (num_beams=1) or beam decoding with a KV cache.

        Args:
            prompts: B prompt strings, each with as many ``<image>`` tokens as images given.
            images: (B, T, 3, H, W) in [0, 1] (or vision_features (B, T, P, Dv)).
        Returns:
            B decoded responses (special tokens removed, stripped).
        """
        tok = self.tokenizer
        enc = self.encode_prompts(prompts)
        with self.masks_active():
            media = self.visual_features(images, vision_features)
        with self.conditioned(media):
            out = self.language_model.generate(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                use_cache=use_cache, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                bad_words_ids=[[self.image_token_id], [self.answer_token_id]])
        new = out[:, enc["input_ids"].shape[1]:]
        return [s.strip() for s in tok.batch_decode(new, skip_special_tokens=True)]
