"""Parameter counts and an ESTIMATE of tuning memory for real-size family checkpoints.

    python benchmarks/family_sizes.py

Each model is instantiated on PyTorch's ``meta`` device (no memory, no download) from the main
sizes of its published config (typed below: llava-hf/llava-1.5-7b-hf, Salesforce/blip2-opt-2.7b,
HuggingFaceM4/idefics-9b), and its parameters are split with the family's own
:class:`FamilySpec` into frozen and tuned (adapter + embeddings). The memory figure is
arithmetic, not a measurement:

    weights (all parameters, float32 as robustit loads them: 4 B each)
    + tuned parameters' gradient and AdamW moments (3 x 4 B each)

Activations come on top and grow with batch x sequence length (LLaVA puts 576 visual tokens per
image into the LM; since the input embeddings train, backpropagation runs through every LM
block). Measure a small batch first.
"""

from __future__ import annotations

import torch

GIB = 1024 ** 3


def llava_1_5_7b():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000, vision_feature_layer=-2)


def blip2_opt_2_7b():
    from transformers import Blip2Config

    vision = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                  image_size=224, patch_size=14)
    qformer = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   cross_attention_frequency=2, encoder_hidden_size=1408)
    text = dict(model_type="opt", vocab_size=50304, hidden_size=2560, ffn_dim=10240, num_hidden_layers=32,
                num_attention_heads=32, word_embed_proj_dim=2560, max_position_embeddings=2048)
    return Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=32,
                       image_token_index=50265)


def idefics_9b():
    from transformers import IdeficsConfig

    return IdeficsConfig(vocab_size=32000, additional_vocab_size=2, hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=32, num_attention_heads=32, cross_layer_interval=4,
                         vision_config=dict(embed_dim=1280, image_size=224, patch_size=14, num_hidden_layers=32,
                                            num_attention_heads=16, intermediate_size=5120),
                         perceiver_config=dict(resampler_n_latents=64, resampler_depth=6, resampler_n_heads=16,
                                               resampler_head_dim=96), use_resampler=True)


CHECKPOINTS = {"llava": ("llava-1.5-7b", llava_1_5_7b), "blip2": ("blip2-opt-2.7b", blip2_opt_2_7b),
               "idefics": ("idefics-9b", idefics_9b)}


def count(family: str) -> dict:
    import transformers

    from robustit.models.hf_families import HF_FAMILIES
    from robustit.models.lvlm import LVLM

    class Holder(LVLM):  # just ``self.hf`` and the spec: the LVLM's own part bookkeeping
        def __init__(self, hf):
            super().__init__()
            self.hf, self.spec = hf, cls.family_spec(hf)

    cls = HF_FAMILIES[family]
    name, make = CHECKPOINTS[family]
    with torch.device("meta"):
        holder = Holder(getattr(transformers, cls.architecture)(make()))
    hf = holder.hf
    tuned = {id(p): p for part in ("adapter", "embeddings") for p in holder.part_parameters(part).values()}
    total = sum(p.numel() for p in {id(p): p for p in hf.parameters()}.values())
    n_tuned = sum(p.numel() for p in tuned.values())
    memory = (4 * total + 12 * n_tuned) / GIB
    return {"family": family, "checkpoint": name, "total": total, "tuned": n_tuned, "estimate_gib": memory}


def main() -> int:
    print(f"{'family':8s} {'checkpoint':16s} {'parameters':>11s} {'tuned':>9s} {'tuned %':>7s} "
          f"{'weights+optimizer (GiB, estimate)':>34s}")
    for family in CHECKPOINTS:
        r = count(family)
        print(f"{r['family']:8s} {r['checkpoint']:16s} {r['total'] / 1e9:10.2f}B {r['tuned'] / 1e6:8.0f}M "
              f"{100 * r['tuned'] / r['total']:6.1f}% {r['estimate_gib']:34.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
