"""The Hugging Face families: LLaVA, BLIP-2 and IDEFICS (the Flamingo/Otter family).

=========  ===============================  ==========================================  ====================
family     HF class                         adapter H_psi (trained)                     default hook point
=========  ===============================  ==========================================  ====================
llava      LlavaForConditionalGeneration    multi_modal_projector                       projector output
blip2      Blip2ForConditionalGeneration    query_tokens + qformer + language_projection  projection output
idefics    IdeficsForVisionText2Text        perceiver_resampler + gated_cross_attn_layers perceiver output
=========  ===============================  ==========================================  ====================

In every family the word embeddings E_phi (the LM's input embeddings and LM head) train too;
the vision encoder and the LM blocks stay frozen. Each class names its parts in a
:class:`FamilySpec` and implements the family-specific steps of :class:`HFLVLM`; see
docs/models.md for the checklist to add one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, Iterator, Optional, Type

import torch
from torch import nn
from torch.nn import functional as F

from ..data.template import IMAGE_TOKEN
from ..errors import CheckpointError
from .family import FamilySpec
from .hf_lvlm import (HFLVLM, load_hf_tokenizer, module_path, quiet_transformers, read_image_settings,
                      template_for, to_pixels)


def _embedding_paths(hf: nn.Module) -> tuple:
    """Module paths (from the LVLM) of the input embeddings and the LM head, tied or not."""
    return (f"hf.{module_path(hf, hf.get_input_embeddings())}",
            f"hf.{module_path(hf, hf.get_output_embeddings())}")


class _ProjectorFamily(HFLVLM):
    """Families that put N visual tokens per image into the LM's input sequence (LLaVA, BLIP-2)."""

    expands_images = True

    @contextlib.contextmanager
    def conditioned(self, media: Optional[torch.Tensor]) -> Iterator[None]:
        """A forward hook on the LM's input embeddings writes ``media`` (B, T, N, D) into the
        image slots (T*N per row, in order); removed in ``finally``. Decoding steps without image
        slots pass through; beam search's expanded batch gets the media repeated."""
        if media is None:
            yield
            return
        slots_per_row = media.shape[1] * media.shape[2]

        def hook(module, args, out):
            ids = args[0] if args else None
            if ids is None:
                return out
            self._check_image_count(ids, slots_per_row)
            slots = ids == self.image_token_id
            if not bool(slots.any()):
                return out
            m = media if ids.shape[0] == media.shape[0] else \
                media.repeat_interleave(ids.shape[0] // media.shape[0], dim=0)
            return out.masked_scatter(slots.unsqueeze(-1), m.reshape(-1, m.shape[-1]).to(out.dtype))

        handle = self.hf.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


class LlavaLVLM(_ProjectorFamily):
    """LLaVA: CLIP vision tower (frozen) -> 2-layer MLP projector (adapter) -> causal LM.

    Vision features are the hidden states of ``vision_feature_layer`` (CLS dropped for the
    ``default`` strategy), (B, T, P, Dv); the projector output (B, T, P, D) is the hook point.
    """

    model_type = "llava"
    architecture = "LlavaForConditionalGeneration"
    layout = "USER: {image}\n{instruction} ASSISTANT:"

    def __init__(self, hf: nn.Module, tokenizer, images) -> None:
        super().__init__(hf, tokenizer, images, template_for(tokenizer, self.layout))
        _check_image_token(hf.config.image_token_id, self.image_token_id, self.architecture)
        self.spec = self.family_spec(hf)

    @classmethod
    def family_spec(cls, hf: nn.Module) -> FamilySpec:
        return FamilySpec(
            name="llava", vision_encoder=("hf.model.vision_tower",),
            adapter=("hf.model.multi_modal_projector",), language_model=("hf.model.language_model",),
            embeddings=_embedding_paths(hf), hook_points={"projector": "hf.model.multi_modal_projector"},
            architecture=cls.architecture)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [0, 1] -> (B, T, P, Dv) features of the chosen vision layer(s)."""
        cfg = self.hf.config
        out = self.hf.model.vision_tower(to_pixels(images, self.images, self.dtype),
                                         output_hidden_states=True)
        layers = cfg.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        feats = torch.cat([out.hidden_states[k] for k in layers], dim=-1)
        if cfg.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        return feats.unflatten(0, images.shape[:2])

    def adapt(self, vision_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, Dv) -> (B, T, P, D) projected visual tokens."""
        return self.hf.model.multi_modal_projector(vision_features.to(self.dtype))


class Blip2LVLM(_ProjectorFamily):
    """BLIP-2: ViT (frozen) -> query tokens + Q-Former + language projection (adapter) -> LM.

    Hook points: ``projection`` (default, (B, T, Q, D) LM-width visual tokens) and ``qformer``
    (the Q-Former's last hidden state, (B*T, Q, Dq)). Decoder-only language models (OPT) only.
    """

    model_type = "blip-2"
    architecture = "Blip2ForConditionalGeneration"
    layout = "{image}Question: {instruction} Answer:"

    def __init__(self, hf: nn.Module, tokenizer, images) -> None:
        if not hf.config.use_decoder_only_language_model:
            raise CheckpointError("BLIP-2 with an encoder-decoder language model (Flan-T5) is not "
                                  "supported: robustit tunes decoder-only LMs (BLIP-2 OPT)")
        super().__init__(hf, tokenizer, images, template_for(tokenizer, self.layout))
        _check_image_token(getattr(hf.config, "image_token_id", None), self.image_token_id,
                           self.architecture)
        self.spec = self.family_spec(hf)

    @classmethod
    def family_spec(cls, hf: nn.Module) -> FamilySpec:
        return FamilySpec(
            name="blip2", vision_encoder=("hf.vision_model",),
            adapter=("hf.query_tokens", "hf.qformer", "hf.language_projection"),
            language_model=("hf.language_model",), embeddings=_embedding_paths(hf),
            hook_points={"projection": "hf.language_projection", "qformer": "hf.qformer"},
            architecture=cls.architecture)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [0, 1] -> (B, T, P+1, Dv) ViT last hidden state."""
        out = self.hf.vision_model(pixel_values=to_pixels(images, self.images, self.dtype))
        return out.last_hidden_state.unflatten(0, images.shape[:2])

    def adapt(self, vision_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, Dv) -> (B, T, Q, D): the query tokens read the image, then are projected."""
        x = vision_features.flatten(0, 1).to(self.dtype)
        queries = self.hf.query_tokens.expand(x.shape[0], -1, -1)
        q = self.hf.qformer(query_embeds=queries, encoder_hidden_states=x,
                            encoder_attention_mask=torch.ones(x.shape[:2], dtype=torch.long,
                                                              device=x.device)).last_hidden_state
        return self.hf.language_projection(q.to(self.dtype)).unflatten(0, vision_features.shape[:2])

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf.language_model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                                 use_cache=False).last_hidden_state

    @property
    def _generator(self) -> nn.Module:
        return self.hf.language_model


class IdeficsLVLM(HFLVLM):
    """IDEFICS (Flamingo/Otter): ViT (frozen) -> perceiver resampler + gated cross-attention
    layers (adapter) -> LLaMA blocks (frozen). One ``<image>`` token per image; each text token
    attends to the latest image before it (``image_attention_mask``)."""

    model_type = "idefics"
    architecture = "IdeficsForVisionText2Text"
    expands_images = False
    FAKE = "<fake_token_around_image>"
    END = "<end_of_utterance>"

    def __init__(self, hf: nn.Module, tokenizer, images) -> None:
        if not hf.config.use_resampler:
            raise CheckpointError("IDEFICS without a perceiver resampler (use_resampler=false) is not "
                                  "supported: the resampler output is the AAR hook point")
        vocab = tokenizer.get_vocab()
        image = f"{self.FAKE}{IMAGE_TOKEN}{self.FAKE}" if self.FAKE in vocab else IMAGE_TOKEN
        end = self.END if self.END in vocab else ""
        super().__init__(hf, tokenizer, images,
                         template_for(tokenizer, "User:{image}{instruction}" + end + "\nAssistant:", image))
        self.spec = self.family_spec(hf)

    @classmethod
    def family_spec(cls, hf: nn.Module) -> FamilySpec:
        return FamilySpec(
            name="idefics", vision_encoder=("hf.model.vision_model",),
            adapter=("hf.model.perceiver_resampler", "hf.model.gated_cross_attn_layers"),
            language_model=("hf.model.layers", "hf.model.norm"),
            embeddings=("hf.model.embed_tokens", "hf.lm_head"),
            hook_points={"perceiver": "hf.model.perceiver_resampler"}, architecture=cls.architecture)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [0, 1] -> (B, T, P+1, Dv) ViT last hidden state."""
        out = self.hf.model.vision_model(pixel_values=to_pixels(images, self.images, self.dtype))
        return out.last_hidden_state.unflatten(0, images.shape[:2])

    def adapt(self, vision_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, Dv) -> (B, T, N, Dv) perceiver latents."""
        x = vision_features.flatten(0, 1).to(self.dtype)
        return self.hf.model.perceiver_resampler(x).unflatten(0, vision_features.shape[:2])

    @contextlib.contextmanager
    def conditioned(self, media: Optional[torch.Tensor]) -> Iterator[None]:
        """A pre-hook on the IDEFICS decoder passes ``media`` (B, T, N, D) as perceiver embeddings
        and builds the image attention mask from each call's input_ids (the running image count
        carries over cached decoding steps); removed in ``finally``."""
        state: dict = {"last": None}
        handle = self.hf.model.register_forward_pre_hook(
            lambda mod, args, kwargs: (args, self._inject(state, media, kwargs)), with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def _inject(self, state: dict, media: Optional[torch.Tensor], kwargs: dict) -> dict:
        """The decoder's keyword arguments with ``perceiver_embeddings`` (B'*T, N, D) and
        ``image_attention_mask`` (B', L, T): each token attends to the latest image before it."""
        ids = kwargs.get("input_ids")
        if ids is None:
            raise ValueError("IDEFICS conditioning reads the decoder's input_ids keyword; "
                             "inputs_embeds is not supported")
        if media is None:  # text only: one blank image nobody attends to
            p = self.hf.config.perceiver_config
            media = torch.zeros(ids.shape[0], 1, p.resampler_n_latents, self.hf.config.vision_config.embed_dim,
                                dtype=self.dtype, device=ids.device)
        elif media.shape[0] != ids.shape[0]:  # beam search expands the batch
            media = media.repeat_interleave(ids.shape[0] // media.shape[0], dim=0)
        count = torch.cumsum((ids == self.image_token_id).long(), dim=1)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and cache.get_seq_length() > 0:  # a cached decoding step
            count = count + state["last"].unsqueeze(1)
        else:
            self._check_image_count(ids, media.shape[1])
        state["last"] = count[:, -1]
        latest = F.one_hot((count - 1).clamp_min(0), media.shape[1]) * (count > 0).unsqueeze(-1)
        kwargs.update(pixel_values=None, image_encoder_embeddings=None,
                      perceiver_embeddings=media.flatten(0, 1), image_attention_mask=latest)
        return kwargs


def _check_image_token(config_id: Optional[int], tokenizer_id: int, arch: str) -> None:
    if config_id is None:
        raise CheckpointError(f"{arch}: config.json has no image_token_id; re-save the checkpoint "
                              f"with a current transformers processor (it adds the {IMAGE_TOKEN} token)")
    if int(config_id) != int(tokenizer_id):
        raise CheckpointError(f"{arch}: config.json's image_token_id is {config_id} but the tokenizer's "
                              f"{IMAGE_TOKEN} is {tokenizer_id}; use the tokenizer saved with the model")


#: family name -> class; the factory registers one loader per entry.
HF_FAMILIES: Dict[str, Type[HFLVLM]] = {"llava": LlavaLVLM, "blip2": Blip2LVLM, "idefics": IdeficsLVLM}


def matches(cls: Type[HFLVLM], meta: dict) -> bool:
    """Whether a config.json belongs to this family (``model_type`` or ``architectures``)."""
    return meta.get("model_type") == cls.model_type or cls.architecture in (meta.get("architectures") or [])


def load_hf_family(name: str, folder: Path) -> HFLVLM:
    """Load ``folder`` (config.json + *.safetensors + tokenizer + preprocessor_config.json) as
    family ``name`` from local files only, in float32."""
    import transformers

    cls = HF_FAMILIES[name]
    hf_cls = getattr(transformers, cls.architecture)
    try:
        with quiet_transformers():
            hf = hf_cls.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: {cls.architecture}.from_pretrained failed ({exc})") from None
    tokenizer = load_hf_tokenizer(folder)
    images = read_image_settings(folder, cls.encoder_size(hf.config))
    return cls(hf, tokenizer, images).eval()
