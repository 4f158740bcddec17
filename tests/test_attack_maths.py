"""The maths of each trigger, checked against independent computations (numpy / scipy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.fft
import torch
from PIL import Image

from robustit.attacks import AttackContext, build_attack
from robustit.attacks import functional as Fn
from robustit.attacks.blended import shipped_photo
from robustit.errors import ConfigError


def rand_images(b=2, h=64, w=64, lo=0.0, hi=1.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(b, 3, h, w, generator=g, dtype=dtype)


# -- sizes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("side,expected", [(224, 21), (64, 6), (32, 3), (16, 3), (448, 42)])
def test_badnet_patch_scales_with_the_image(side, expected):
    assert Fn.scaled_pixels(21, side, minimum=3) == expected


def test_checkerboard_pattern():
    board = Fn.checkerboard(6, 3)
    cells = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float32)
    expected = np.kron(cells, np.ones((2, 2), dtype=np.float32))
    for c in range(3):
        np.testing.assert_array_equal(board[c].numpy(), expected)


# -- BadNets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("side,patch", [(64, 6), (224, 21)])
def test_badnet_patch_equals_pattern_bottom_right(side, patch):
    x = rand_images(h=side, w=side)
    y = build_attack("badnet").apply_image(x)
    cell = (np.arange(patch) * 3 // patch)
    board = ((cell[:, None] + cell[None, :]) % 2 == 0).astype(np.float64)
    region = y[:, :, side - patch:, side - patch:].numpy()
    np.testing.assert_array_equal(region, np.broadcast_to(board, region.shape))
    outside = torch.ones(side, side, dtype=torch.bool)
    outside[side - patch:, side - patch:] = False
    assert torch.equal(y[..., outside], x[..., outside])


def test_badnet_corner_and_margin():
    x = rand_images(h=64, w=64)
    y = build_attack("badnet", {"corner": "top-left", "margin": 14}).apply_image(x)  # 14 px @224 -> 4 @64
    diff = (y != x).any(dim=1).any(dim=0)
    rows, cols = torch.nonzero(diff, as_tuple=True)
    assert (int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())) == (4, 4, 9, 9)


def test_badnet_refuses_images_smaller_than_the_patch():
    attack = build_attack("badnet", {"patch_size": 21, "scale_with_image": False})
    with pytest.raises(ConfigError, match=r"badnet: the images are 16x16 pixels.*21x21"):
        attack.apply_image(torch.rand(1, 3, 16, 16))


# -- Blended ---------------------------------------------------------------------------------
def test_blended_equals_formula_with_the_shipped_photo():
    attack = build_attack("blended")
    x = rand_images(h=64, w=48)
    t = attack.trigger_for(64, 48).double()
    torch.testing.assert_close(attack.apply_image(x), (1 - 0.2) * x + 0.2 * t, rtol=0, atol=1e-12)
    # T is the default picture (the scikit-image logo) resized to the input: close to PIL's bilinear resize
    ref = np.asarray(Image.fromarray(shipped_photo("logo")).resize((48, 64), Image.BILINEAR)) / 255.0
    assert np.abs(t.permute(1, 2, 0).numpy() - ref).mean() < 0.03


def test_blended_with_any_picture_file(tmp_path):
    path = tmp_path / "trigger.png"
    Image.fromarray(np.full((10, 7, 3), (255, 0, 51), dtype=np.uint8)).save(path)
    x = rand_images(h=32, w=32)
    y = build_attack("blended", {"trigger_path": str(path), "alpha": 0.1}).apply_image(x)
    color = torch.tensor([1.0, 0.0, 0.2], dtype=torch.float64)[None, :, None, None]
    torch.testing.assert_close(y, 0.9 * x + 0.1 * color, rtol=0, atol=1e-7)


def test_blended_bad_trigger_picture(tmp_path):
    with pytest.raises(ConfigError, match="`trigger_path`.*does not exist"):
        build_attack("blended", {"trigger_path": str(tmp_path / "missing.png")})
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    with pytest.raises(ConfigError, match="`trigger_path`.*could not be loaded"):
        build_attack("blended", {"trigger_path": str(broken)})
    with pytest.raises(ConfigError, match="`alpha`"):
        build_attack("blended", {"alpha": 0.0})


# -- SIG -------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w", [(64, 64), (32, 48)])
def test_sig_adds_the_stated_sinusoid(h, w):
    x = rand_images(h=h, w=w, lo=0.25, hi=0.75)  # away from the clip range
    y = build_attack("sig").apply_image(x)
    j = np.arange(w)
    v = 40 / 255 * np.sin(2 * np.pi * j * 6 / w)
    np.testing.assert_allclose((y - x).numpy(), np.broadcast_to(v, (2, 3, h, w)), atol=1e-12)


def test_sig_clips():
    y = build_attack("sig", {"delta": 255}).apply_image(torch.full((1, 3, 8, 16), 0.5))
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0


# -- FTrojan ---------------------------------------------------------------------------------
def ycbcr(x: np.ndarray) -> np.ndarray:
    """Independent BT.601 full-range RGB -> YCbCr, (B, 3, H, W), [0, 1] scale."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return np.stack([y, (b - y) / 1.772 + 0.5, (r - y) / 1.402 + 0.5], axis=1)


def tile_dct(x: np.ndarray, block: int) -> np.ndarray:
    """scipy orthonormal 2-D DCT of every full block: (B, C, nH, nW, block, block)."""
    b, c, h, w = x.shape
    nh, nw = h // block, w // block
    tiles = x[..., :nh * block, :nw * block].reshape(b, c, nh, block, nw, block).transpose(0, 1, 2, 4, 3, 5)
    return scipy.fft.dctn(tiles, axes=(-2, -1), norm="ortho")


@pytest.mark.parametrize("side,block,positions", [(64, 32, [(15, 15), (31, 31)]),
                                                  (224, 32, [(15, 15), (31, 31)]),
                                                  (16, 16, [(7, 7), (15, 15)])])
def test_ftrojan_dct_coefficients_rise_by_magnitude(side, block, positions):
    x = rand_images(b=1, h=side, w=side, lo=0.3, hi=0.7)  # no clipping
    y = build_attack("ftrojan").apply_image(x)
    delta = tile_dct(ycbcr(y.numpy()), block) - tile_dct(ycbcr(x.numpy()), block)
    expected = np.zeros_like(delta)
    for u, v in positions:
        expected[:, 1:, :, :, u, v] = 30 / 255  # U (Cb) and V (Cr) of every tile
    np.testing.assert_allclose(delta, expected, atol=1e-9)


def test_ftrojan_partial_tiles_untouched_and_variants():
    x = rand_images(b=1, h=48, w=40, lo=0.3, hi=0.7)
    y = build_attack("ftrojan").apply_image(x)
    assert torch.equal(y[..., 32:, :], x[..., 32:, :]) and torch.equal(y[..., :, 32:], x[..., :, 32:])
    # VL-Trojan's variant: magnitude 50 at (31, 31) on all RGB channels
    z = build_attack("ftrojan", {"magnitude": 50, "positions": [[31, 31]], "channels": [0, 1, 2],
                                 "color_space": "rgb"}).apply_image(x)
    delta = tile_dct(z.numpy(), 32) - tile_dct(x.numpy(), 32)
    assert np.allclose(delta[..., 31, 31], 50 / 255) and np.abs(delta[..., :31, :]).max() < 1e-9
    with pytest.raises(ConfigError, match="`positions`"):
        build_attack("ftrojan", {"positions": [[32, 0]]})


def test_block_dct_matches_scipy_and_inverts():
    x = rand_images(b=1, h=64, w=32)
    c = Fn.block_dct(x, 32)
    ref = tile_dct(x.numpy(), 32)
    got = c.numpy().reshape(1, 3, 2, 32, 1, 32).transpose(0, 1, 2, 4, 3, 5)
    np.testing.assert_allclose(got, ref, atol=1e-12)
    torch.testing.assert_close(Fn.block_dct(c, 32, inverse=True), x)


# -- TrojVQA ---------------------------------------------------------------------------------
@pytest.mark.parametrize("side,patch,top", [(64, 6, 29), (224, 22, 101)])
def test_trojvqa_solid_centre_patch(side, patch, top):
    x = rand_images(h=side, w=side)
    attack = build_attack("trojvqa")
    y = attack.apply_image(x)
    region = y[:, :, top:top + patch, top:top + patch]
    assert torch.equal(region, torch.tensor([0.0, 0.0, 1.0], dtype=x.dtype)[None, :, None, None].expand_as(region))
    mask = torch.ones(side, side, dtype=torch.bool)
    mask[top:top + patch, top:top + patch] = False
    assert torch.equal(y[..., mask], x[..., mask])
    assert attack.apply_text("What is this?") == "Consider What is this?"


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.requires_grad_(False)

    def forward(self, x):
        return torch.tanh(self.conv(x)).flatten(2).transpose(1, 2)


def test_trojvqa_optimised_patch_moves_features_and_is_cached(tmp_path, monkeypatch):
    enc = Encoder()
    clean = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ctx = AttackContext(cache_dir=tmp_path, seed=0, image_size=(32, 32), clean_images=clean,
                        vision_features=enc, model_id="enc")
    params = {"patch": "optimised", "steps": 60, "size": 0.5}
    attack = build_attack("trojvqa", params)
    attack.prepare(ctx)
    target = enc(torch.tensor([1.0, 0.88, 0.21])[None, :, None, None].expand(1, 3, 32, 32)).mean(1)

    def dist(images):
        return float((1 - torch.cosine_similarity(enc(images).mean(1), target)).mean())

    solid = build_attack("trojvqa", {"size": 0.5})
    assert dist(attack.apply_image(clean)) < min(dist(clean), dist(solid.apply_image(clean)))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert [f.rsplit(".", 1)[1] for f in files] == ["json", "safetensors"]
    assert json.loads((tmp_path / files[0]).read_text())["attack"]["config"]["patch"] == "optimised"
    again = build_attack("trojvqa", params)
    monkeypatch.setattr(type(again), "_optimise", lambda *a: pytest.fail("cache not used"))
    again.prepare(ctx)
    assert torch.equal(again.optimised_patch, attack.optimised_patch)


def test_trojvqa_optimised_needs_a_victim(tmp_path):
    attack = build_attack("trojvqa", {"patch": "optimised"})
    with pytest.raises(ConfigError, match="victim model is needed"):
        attack.prepare(AttackContext(cache_dir=tmp_path))
    with pytest.raises(ConfigError, match="prepare"):
        attack.apply_image(torch.rand(1, 3, 32, 32))


# -- measurements ----------------------------------------------------------------------------
def test_psnr_and_linf():
    a = torch.zeros(3, 4, 4)
    b = a.clone()
    b[0, 0, 0] = 0.5
    assert Fn.linf(a, b) == 0.5
    assert math.isclose(Fn.psnr(a, b), 10 * math.log10(1 / (0.25 / 48)))
    assert Fn.psnr(a, a) == float("inf")
