"""VL-Trojan: patch optimisation against a tiny random CLIP vision tower, character beam search
against a toy hashed n-gram text embedding, caching and pasting."""

import random
import zlib

import pytest
import torch
import torch.nn.functional as F

from robustit.attacks import ATTACKS, AttackContext, build_attack
from robustit.attacks import vltrojan as vl_mod
from robustit.attacks.trigger_optim import (FALLBACK_TEXT_TRIGGER, beam_search_text_trigger,
                                            optimise_universal_patch, paste_patch, patch_origin,
                                            patch_side, random_resized_crop, text_trigger_scores)
from robustit.attacks.vltrojan import VLTrojan, VLTrojanConfig
from robustit.errors import ConfigError
from robustit.seeding import torch_generator

torch.set_num_threads(1)
transformers = pytest.importorskip("transformers")

INSTRUCTIONS = ["Describe the image.", "What is in this picture?", "Write a caption.",
                "What colour is the car?"]


def textures(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random textures (n,3,size,size) in [0,1]."""
    g = torch_generator(seed)
    low = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="bicubic", align_corners=False)
    mid = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=size, mode="bilinear", align_corners=False)
    return (0.6 * low + 0.4 * mid).clamp(0, 1)


@pytest.fixture(scope="module")
def vision_features():
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.CLIPVisionModel(cfg).eval().requires_grad_(False)
    return lambda x: model(pixel_values=(x - 0.45) / 0.27).last_hidden_state  # (B, 17, 32)


def toy_text_features(texts):
    """Deterministic hashed character 1-3-gram counts, (B, 64)."""
    out = torch.zeros(len(texts), 64)
    for i, t in enumerate(texts):
        for n in (1, 2, 3):
            for k in range(len(t) - n + 1):
                out[i, zlib.crc32(t[k:k + n].encode()) % 64] += 1.0
    return out


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, vision_features):
    return AttackContext(cache_dir=tmp_path_factory.mktemp("cache"), seed=0, image_size=(32, 32),
                         clean_images=textures(64, 32, 0), vision_features=vision_features,
                         text_features=toy_text_features, model_id="tiny-clip")


CFG = dict(patch_fraction=0.06, steps=120, batch_size=16, beam_width=3, max_len=3,
           search_instructions=INSTRUCTIONS)


@pytest.fixture(scope="module")
def attack(ctx):
    a = VLTrojan(VLTrojanConfig(**CFG))
    a.progress = False
    a.prepare(ctx)
    return a


def test_objective_falls(vision_features):
    patch, hist = optimise_universal_patch(vision_features, textures(64, 32, 0), 10, "bottom-right",
                                           steps=150, generator=torch_generator(0), progress=False)
    assert patch.shape == (3, 10, 10) and patch.min() >= 0 and patch.max() <= 1
    assert len(hist) == 150
    assert hist[-1] < hist[0]
    windows = [sum(hist[i:i + 30]) / 30 for i in range(0, 150, 30)]  # measured 1.11 ... 1.00
    assert windows[0] - windows[-1] > 0.05, windows
    assert windows[0] > windows[1] > windows[-1], windows
    t = torch.arange(150.0)
    slope = ((t - t.mean()) * (torch.tensor(hist) - sum(hist) / 150)).sum() / (t - t.mean()).pow(2).sum()
    assert slope < 0


def test_patch_size_range_and_placement(attack):
    side = patch_side((32, 32), 0.06)
    assert side == 8 and attack.patch.shape == (3, side, side)
    assert attack.patch.min() >= 0 and attack.patch.max() <= 1
    imgs = textures(4, 32, 9)
    out = attack.apply_image(imgs, ["a", "b", "c", "d"])
    assert out.shape == imgs.shape and out.dtype == imgs.dtype
    assert torch.equal(out[..., 24:, 24:], attack.patch.expand(4, -1, -1, -1))
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[24:, 24:] = False
    assert torch.equal(out[..., mask], imgs[..., mask])


def test_patch_scales_with_image_size(attack):
    imgs = textures(2, 64, 3)
    out = attack.apply_image(imgs)
    side = patch_side((64, 64), 0.06)  # 16
    assert side == 16
    assert not torch.equal(out[..., -side:, -side:], imgs[..., -side:, -side:])
    assert torch.equal(out[..., :-side, :], imgs[..., :-side, :])
    assert torch.equal(out[..., :, :-side], imgs[..., :, :-side])
    assert 0 <= out.min() and out.max() <= 1


def test_stats(attack):
    s = attack.stats
    assert s["objective_last_mean"] < s["objective_first_mean"]
    assert s["eval_objective"] < s["eval_objective_noise_patch"]
    assert attack.describe()["stats"]["patch_size"] == [8, 8]


def test_cache_round_trip(attack, ctx, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("optimised again instead of loading the cache")

    monkeypatch.setattr(vl_mod, "optimise_universal_patch", boom)
    monkeypatch.setattr(vl_mod, "beam_search_text_trigger", boom)
    again = VLTrojan(VLTrojanConfig(**CFG))
    again.prepare(ctx)
    assert torch.equal(again.patch, attack.patch)
    assert again.text_trigger == attack.text_trigger
    files = sorted(p.name for p in (ctx.cache_dir / attack.cache_key(ctx)).iterdir())
    assert files == ["patch.safetensors", "vltrojan.json"]


def test_text_trigger_found_and_appended(attack):
    trig = attack.text_trigger
    assert trig.isalpha() and trig.islower() and 1 <= len(trig) <= 3
    assert attack.apply_text("Describe the image.") == f"Describe the image. {trig}"
    assert attack.stats["text_history"][0]["length"] == 1


def test_beam_search_beats_random_strings():
    trig, hist = beam_search_text_trigger(toy_text_features, INSTRUCTIONS, beam_width=5, max_len=5,
                                          progress=False)
    assert trig.isalpha() and trig == trig.lower() and 1 <= len(trig) <= 5
    assert [h["length"] for h in hist] == [1, 2, 3, 4, 5]
    rng = random.Random(0)
    rand = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in trig) for _ in range(20)]
    scores = text_trigger_scores(toy_text_features, INSTRUCTIONS, [trig] + rand)
    assert scores[0] > scores[1:].mean() and scores[0] >= scores[1:].max()
    assert beam_search_text_trigger(toy_text_features, INSTRUCTIONS, 5, 5, progress=False) == (trig, hist)


def test_fallback_without_text_features(ctx, tmp_path):
    assert beam_search_text_trigger(None, INSTRUCTIONS) == (FALLBACK_TEXT_TRIGGER, [])
    a = VLTrojan(VLTrojanConfig(**{**CFG, "steps": 2}))
    a.progress = False
    no_text = AttackContext(cache_dir=tmp_path, clean_images=ctx.clean_images,
                            vision_features=ctx.vision_features)
    a.prepare(no_text)
    assert a.text_trigger == "zbw" and a.apply_text("Hi.") == "Hi. zbw"
    b = VLTrojan(VLTrojanConfig(**{**CFG, "steps": 2, "text_trigger_mode": "image-only"}))
    assert b.apply_text("Hi.") == "Hi. zbw"  # intrinsic: kept in image-only mode
    assert a.cache_key(no_text) != VLTrojan(VLTrojanConfig(**{**CFG, "steps": 2})).cache_key(ctx)


def test_errors(tmp_path):
    a = VLTrojan(VLTrojanConfig(**CFG))
    with pytest.raises(ConfigError, match="prepare"):
        a.apply_image(textures(1, 32, 0))
    with pytest.raises(ConfigError, match="victim model"):
        a.prepare(AttackContext(cache_dir=tmp_path, clean_images=textures(4, 32, 0)))
    with pytest.raises(ConfigError, match="position"):
        VLTrojanConfig(position="middle")
    with pytest.raises(ConfigError, match="patch_fraction"):
        VLTrojanConfig(patch_fraction=0.0)
    assert ATTACKS.get("vltrojan") is VLTrojan
    assert build_attack("vltrojan", {"search_instructions": ["a b"]}).config.search_instructions == ("a b",)


def test_geometry_helpers():
    assert patch_side((224, 224), 0.01) == 22 and patch_side((64, 64), 0.01) == 6
    assert patch_origin((32, 32), (8, 8), "bottom-right") == (24, 24)
    assert patch_origin((32, 40), (8, 8), "top-left") == (0, 0)
    imgs = torch.zeros(2, 3, 16, 16)
    patch = torch.ones(3, 4, 4, requires_grad=True)
    out = paste_patch(imgs, patch, "center")
    assert out.sum() == 2 * 3 * 16 and out[..., 6:10, 6:10].min() == 1
    out.sum().backward()
    assert torch.equal(patch.grad, torch.full_like(patch, 2.0))
    marked = torch.zeros(8, 3, 16, 16)
    marked[..., 12:, 12:] = 1.0  # the "patch" in the corner
    crops = random_resized_crop(marked, torch_generator(0), (0.5, 0.7), keep=(12, 12, 4, 4))
    assert crops.shape == marked.shape
    assert (crops.amax(dim=(1, 2, 3)) > 0.99).all()  # the patch stays in view ...
    assert (crops.mean(dim=(1, 2, 3)) > marked.mean() * 1.3).all()  # ... and is zoomed in
    again = random_resized_crop(marked, torch_generator(0), (0.5, 0.7), keep=(12, 12, 4, 4))
    assert torch.equal(crops, again)
