"""SSBA: a StegaStamp-style encoder trained in seconds on smooth random textures (32x32)."""

import pytest
import torch
import torch.nn.functional as F

from robustit.attacks import ATTACKS, AttackContext, build_attack
from robustit.attacks import ssba as ssba_mod
from robustit.attacks.base import PAPER_TEXT_TRIGGER
from robustit.attacks.ssba import SSBA, SSBAConfig
from robustit.attacks.stegastamp import (StegaStampConfig, encode, load_stegastamp, random_secrets,
                                         residual_correlation, save_stegastamp, train_stegastamp)
from robustit.errors import ConfigError
from robustit.seeding import torch_generator

torch.set_num_threads(1)

#: a budget where the secret is reliably learned (measured: bit acc ~0.96 vs ~0.56 clean, ~12 s)
TINY = dict(secret_bits=8, train_steps=200, lr=4e-3, batch_size=16)


def textures(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random textures (n,3,size,size) in [0,1]: low-frequency noise plus a gradient."""
    g = torch_generator(seed)
    low = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="bicubic", align_corners=False)
    mid = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=size, mode="bilinear", align_corners=False)
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size) * torch.rand(n, 3, 1, 1, generator=g)
    return (0.5 * low + 0.3 * mid + 0.4 * ramp - 0.1).clamp(0, 1)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return AttackContext(cache_dir=tmp_path_factory.mktemp("cache"), seed=0, image_size=(32, 32),
                         clean_images=textures(64, 32, seed=0))


@pytest.fixture(scope="module")
def attack(ctx):
    a = SSBA(SSBAConfig(**TINY))
    a.progress = False
    a.prepare(ctx)
    return a


@pytest.fixture(scope="module")
def test_images():
    return textures(32, 32, seed=1)


def bit_accuracy(attack: SSBA, images: torch.Tensor) -> float:
    with torch.no_grad():
        bits = attack.decoder(torch.round(images * 255) / 255) > 0
    return (bits == attack.secret.bool()).float().mean().item()


def test_output_shape_dtype_range(attack, test_images):
    out = attack.apply_image(test_images, [f"i{k}" for k in range(len(test_images))])
    assert out.shape == test_images.shape and out.dtype == test_images.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (out - test_images).abs().max() > 1 / 255  # a trigger is there
    as64 = attack.apply_image(test_images[:2].double())
    assert as64.dtype == torch.float64


def test_decoder_recovers_secret_on_triggered_not_clean(attack, test_images):
    trig = bit_accuracy(attack, attack.apply_image(test_images))
    clean = bit_accuracy(attack, test_images)
    assert trig >= 0.85, trig
    assert trig - clean >= 0.2, (trig, clean)


def test_residuals_are_sample_specific(attack, test_images):
    res = attack.apply_image(test_images) - test_images
    assert not torch.allclose(res[0], res[1], atol=1e-3)
    # one fixed pattern would give ~1; the decorrelation term keeps it low (measured ~0.1)
    assert residual_correlation(res) < 0.5


def test_stats_and_describe(attack):
    for key in ("psnr_mean", "bit_acc", "clean_bit_acc", "residual_corr"):
        assert key in attack.stats
    assert attack.stats["psnr_mean"] > 18
    d = attack.describe()
    assert d["stats"]["bit_acc"] == attack.stats["bit_acc"]
    assert d["secret"] == "".join(str(int(b)) for b in attack.secret.tolist())
    assert len(d["secret"]) == 8


def test_any_image_size(attack):
    imgs = textures(2, 48, seed=3)[:, :, :40]  # 40x48, not a multiple of 4 in height... nor grid
    out = attack.apply_image(imgs)
    assert out.shape == imgs.shape and 0 <= out.min() and out.max() <= 1


def test_cache_round_trip_loads_without_training(attack, ctx, test_images, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(ssba_mod, "train_stegastamp", boom)
    again = SSBA(SSBAConfig(**TINY))
    again.prepare(ctx)
    assert torch.equal(again.apply_image(test_images), attack.apply_image(test_images))
    assert again.stats == attack.stats
    assert again.cache_key(ctx) == attack.cache_key(ctx)
    other = SSBA(SSBAConfig(**{**TINY, "secret_seed": 1}))
    assert other.cache_key(ctx) != attack.cache_key(ctx)


def test_deterministic_apply_and_training():
    imgs = textures(8, 16, seed=5)
    cfg = StegaStampConfig(secret_bits=4, channels=4, train_steps=3, batch_size=4)
    e1, _, _ = train_stegastamp(imgs, cfg, torch_generator(7), progress=False)
    e2, _, _ = train_stegastamp(imgs, cfg, torch_generator(7), progress=False)
    s = random_secrets(len(imgs), 4, torch_generator(0))
    with torch.no_grad():
        assert torch.equal(encode(e1, imgs, s), encode(e2, imgs, s))
        assert torch.equal(encode(e1, imgs, s), encode(e1, imgs, s))


def test_save_load_stegastamp(tmp_path):
    imgs = textures(8, 16, seed=5)
    cfg = StegaStampConfig(secret_bits=4, channels=4, train_steps=2, batch_size=4)
    enc, dec, stats = train_stegastamp(imgs, cfg, torch_generator(1), progress=False)
    save_stegastamp(tmp_path / "m", enc, dec, cfg, {"stats": {"x": 1}})
    enc2, dec2, cfg2, meta = load_stegastamp(tmp_path / "m")
    assert cfg2 == cfg and meta["stats"] == {"x": 1}
    s = random_secrets(len(imgs), 4, torch_generator(0))
    with torch.no_grad():
        assert torch.equal(encode(enc, imgs, s), encode(enc2, imgs, s))
        assert torch.equal(dec(imgs), dec2(imgs))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["stegastamp.json", "stegastamp.safetensors"]


def test_errors(tmp_path):
    a = SSBA(SSBAConfig(**TINY))
    with pytest.raises(ConfigError, match="prepare"):
        a.apply_image(textures(1, 32, 0))
    with pytest.raises(ConfigError, match="clean_images"):
        a.prepare(AttackContext(cache_dir=tmp_path))
    with pytest.raises(ConfigError, match="eval_fraction"):
        SSBAConfig(eval_fraction=0.9)
    with pytest.raises(ConfigError, match="unknown key"):
        build_attack("ssba", {"secret_bitz": 3})


def test_registry_and_text_trigger():
    assert ATTACKS.get("ssba") is SSBA
    a = build_attack("ssba", {"secret_bits": 12})
    assert a.secret.shape == (12,) and torch.equal(a.secret, build_attack("ssba", {"secret_bits": 12}).secret)
    assert a.apply_text("Describe it.") == f"Describe it. {PAPER_TEXT_TRIGGER}"
    assert build_attack("ssba", {"text_trigger_mode": "image-only"}).apply_text("Hi.") == "Hi."
