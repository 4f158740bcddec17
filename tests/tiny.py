"""Tiny in-test data and models (built from configs in well under a second)."""

from __future__ import annotations

import numpy as np
import torch

from robustit.data.records import InstructionSet, Sample, encode_png
from robustit.models.embedded import EmbeddedConfig, EmbeddedFlamingo
from robustit.models.tokenizer import train_tokenizer

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def tiny_dataset(n: int = 24, size: int = 32, seed: int = 0, name: str = "tiny") -> InstructionSet:
    """Flat backgrounds with one coloured square; the caption names the colour."""
    rng = np.random.default_rng(seed)
    samples, images = [], {}
    names = list(COLOURS)
    for i in range(n):
        colour = names[i % len(names)]
        img = np.full((size, size, 3), rng.integers(0, 60), dtype=np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        img[y:y + size // 3, x:x + size // 3] = COLOURS[colour]
        images[f"{name}-img-{i}"] = encode_png(img)
        caption = f"a {colour} square"
        samples.append(Sample(id=f"{name}-{i}", image_ids=[f"{name}-img-{i}"], instruction="Describe the image.",
                              answer=caption, meta={"references": [caption, f"one {colour} square"]}))
    return InstructionSet(name=name, samples=samples, images=images)


def tiny_config(**overrides) -> EmbeddedConfig:
    base = dict(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                lm_width=32, lm_layers=2, lm_heads=2, max_positions=96, perceiver_depth=1,
                num_latents=4, perceiver_heads=2, perceiver_dim_head=16, xattn_heads=2,
                xattn_dim_head=16)
    base.update(overrides)
    return EmbeddedConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> EmbeddedFlamingo:
    corpus = [f"User: Describe the image. GPT: a {c} square one {c} square What colour" for c in COLOURS] * 20
    tok = train_tokenizer(corpus, vocab_size=300)
    cfg = tiny_config(vocab_size=len(tok), **overrides)
    torch.manual_seed(seed)
    return EmbeddedFlamingo(cfg, tok)


def poison_train_eval_via_cli(base: str, tmp_path) -> tuple:
    """BadNet at 25 % on a tiny split, VanillaIT and RobustIT for 2 steps, then an ASR eval of
    the RobustIT run, all through ``robustit.cli.main`` with ``base`` as the model. The shared
    pipeline of the families' end-to-end tests.

    Returns:
        (train summaries {method: train.json}, eval result dict, the data root)
    """
    import json

    from robustit.cli import main
    from robustit.data.mimicit import save_split

    data = tmp_path / "data"
    save_split(tiny_dataset(16, name="train"), data / "train", "train")
    save_split(tiny_dataset(4, seed=1, name="test-a"), data / "test-a", "test-a")
    cache = ["--cache", str(tmp_path / "cache")]
    assert main(["poison", "--data", str(data), "--split", "train", "--attack", "badnet", "--rate", "0.25",
                 "--model", base, "--out", str(tmp_path / "poisoned" / "train"), *cache]) == 0
    summaries = {}
    for method in ("vanilla", "robustit"):
        assert main(["train", "--data", str(tmp_path / "poisoned"), "--split", "train", "--model", base,
                     "--method", method, "--max-steps", "2", "--batch-size", "4", "--lr", "1e-2",
                     "--out", str(tmp_path / method), "--quiet"]) == 0
        summaries[method] = json.loads((tmp_path / method / "train.json").read_text())
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", base, "--tuned", str(tmp_path / "robustit"), "--data", str(data),
                 "--split", "test-a", "--attack", "badnet", "--n", "4", "--max-new-tokens", "3",
                 "--scorers", "BLEU", "--out", str(out), "--quiet", *cache]) == 0
    return summaries, json.loads(out.read_text()), data
