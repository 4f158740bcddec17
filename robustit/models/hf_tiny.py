"""Tiny random-weight checkpoints of the Hugging Face families, saved as real local folders.

For tests, benchmarks and a smoke test of a set-up without downloading anything::

    python -m robustit.models.hf_tiny llava /tmp/tiny-llava     # then: robustit train --model /tmp/tiny-llava ...

Each folder is what a real checkpoint looks like to robustit: ``config.json`` (``model_type``
and ``architectures``), ``model.safetensors``, the tokenizer files (a byte-level BPE trained
here on a few sentences) and ``preprocessor_config.json`` (image side, mean, std).
The models have 50-100K parameters, random weights, and build and save in well under a second.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .hf_families import HF_FAMILIES
from .hf_lvlm import ImageSettings

COLOURS = ("red", "green", "blue", "yellow")
WIDTH = 32


def tiny_tokenizer():
    """A 300-token byte-level BPE with ``<pad>``, ``<image>`` and ``<|endofchunk|>`` (EOS)."""
    from .tokenizer import train_tokenizer

    corpus = [f"USER: Describe the image. ASSISTANT: a {c} square one {c} square. Question: What "
              f"colour Answer: {c} User: Assistant: GPT:" for c in COLOURS] * 20
    return train_tokenizer(corpus, vocab_size=300)


def _llama_text(tok, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, **extra)


def _vision(image_size: int, patch: int) -> dict:
    return dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=1,
                num_attention_heads=2, image_size=image_size, patch_size=patch)


def llava_config(tok, image_size: int = 24, patch: int = 8):
    from transformers import CLIPVisionConfig, LlavaConfig

    return LlavaConfig(vision_config=CLIPVisionConfig(**_vision(image_size, patch)),
                       text_config=_llama_text(tok, tie_word_embeddings=False),
                       image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)


def blip2_config(tok, image_size: int = 24, patch: int = 8):
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

    qformer = Blip2QFormerConfig(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=2 * WIDTH, encoder_hidden_size=WIDTH, vocab_size=len(tok))
    text = OPTConfig(vocab_size=len(tok), hidden_size=WIDTH, num_hidden_layers=2, ffn_dim=2 * WIDTH,
                     num_attention_heads=2, max_position_embeddings=512, word_embed_proj_dim=WIDTH,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                     bos_token_id=tok.eos_token_id)
    return Blip2Config(vision_config=Blip2VisionConfig(**_vision(image_size, patch)).to_dict(),
                       qformer_config=qformer.to_dict(), text_config=text.to_dict(), num_query_tokens=4,
                       image_token_index=tok.convert_tokens_to_ids("<image>"))


def idefics_config(tok, image_size: int = 24, patch: int = 8):
    from transformers import IdeficsConfig

    vision = dict(embed_dim=WIDTH, image_size=image_size, patch_size=patch, num_hidden_layers=1,
                  num_attention_heads=2, intermediate_size=2 * WIDTH)
    # gates start open ("ones"): a real IDEFICS has trained gates; zero gates would hide the images
    return IdeficsConfig(vocab_size=len(tok), additional_vocab_size=0, hidden_size=WIDTH,
                         intermediate_size=2 * WIDTH, num_hidden_layers=2, num_attention_heads=2,
                         vision_config=vision, cross_layer_interval=1, use_resampler=True,
                         perceiver_config=dict(resampler_n_latents=4, resampler_depth=1,
                                               resampler_n_heads=2, resampler_head_dim=8),
                         alpha_initializer="ones", pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                         tie_word_embeddings=False)


CONFIGS = {"llava": llava_config, "blip2": blip2_config, "idefics": idefics_config}


def build_tiny(family: str, image_size: int = 24, seed: int = 0):
    """A tiny random-weight model of ``family`` (``llava``, ``blip2``, ``idefics``) in memory."""
    import transformers

    cls = HF_FAMILIES[family]
    tok = tiny_tokenizer()
    config = CONFIGS[family](tok, image_size=image_size)
    torch.manual_seed(seed)
    hf = getattr(transformers, cls.architecture)(config)
    return cls(hf, tok, ImageSettings(image_size)).eval()


def save_tiny(family: str, folder: str | Path, image_size: int = 24, seed: int = 0) -> Path:
    """Build a tiny model and save it as a local HF folder that ``load_base(folder)`` reads."""
    return build_tiny(family, image_size=image_size, seed=seed).save_pretrained(folder)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="write a tiny random-weight HF family checkpoint folder")
    ap.add_argument("family", choices=sorted(CONFIGS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--image-size", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(save_tiny(args.family, args.out, args.image_size, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
