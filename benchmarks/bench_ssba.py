"""Measure SSBA's StegaStamp encoder and VL-Trojan's patch optimisation at default settings.

    python benchmarks/bench_ssba.py [--n 2000] [--size 64] [--threads 2] [--source world|mixed]
                                    [--model embedded] [--skip-ssba] [--skip-vltrojan]

SSBA: trains :func:`robustit.attacks.stegastamp.train_stegastamp` on ``--n`` images (the
embedded scene world's renders, or with ``--source mixed`` random crops of scikit-image's sample
photos plus random PIL shapes on gradients), then reports wall time, PSNR, fixed-secret bit
accuracy and cross-image residual correlation on 256 held-out images.
VL-Trojan: prepares the attack at default settings against a randomly initialised ~2M-parameter
``CLIPVisionModel`` (hidden 192, 4 layers, 4 heads, patch 8, 64x64), or against a robustit base
model's frozen parts with ``--model`` (then the text trigger is searched too), and reports wall
time and the objective (start / end of optimisation, and on a fixed set for the learned patch
vs a noise patch). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def natural_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n,3,size,size) in [0,1]: half crops of skimage photos, half PIL shapes on gradients."""
    from PIL import Image, ImageDraw
    from skimage import data as skd

    rng = np.random.default_rng(seed)
    photos = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                 "colorwheel", "retina", "cat", "motorcycle_left", "camera", "brick", "grass", "gravel"):
        try:
            im = np.asarray(getattr(skd, name)())
        except Exception:  # noqa: BLE001 - a sample image may need a download; skip it
            continue
        photos.append(np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3])
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        if i % 2 == 0 and photos:
            im = photos[rng.integers(len(photos))]
            c = int(rng.integers(size, min(im.shape[:2]) + 1))
            y, x = rng.integers(0, im.shape[0] - c + 1), rng.integers(0, im.shape[1] - c + 1)
            out[i] = np.asarray(Image.fromarray(im[y:y + c, x:x + c]).resize((size, size), Image.BILINEAR))
        else:
            out[i] = _shapes(rng, size, Image, ImageDraw)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255


def _shapes(rng, size, Image, ImageDraw) -> np.ndarray:
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[:, None, None]
    bg = (a * (1 - t) + b * t) * np.ones((size, size, 1))
    img = Image.fromarray(bg.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = rng.integers(-size // 4, size, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        [d.ellipse, d.rectangle][int(rng.integers(2))]([x0, y0, x0 + w, y0 + h], fill=col)
    return np.asarray(img)


def world_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n,3,size,size) in [0,1] rendered by the embedded scene world."""
    from robustit.data.world import sample_scene

    rng = np.random.default_rng(seed)
    out = np.stack([sample_scene(rng, size=size)[1] for _ in range(n)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255


def bench_images(n: int, size: int, source: str, seed: int = 0) -> torch.Tensor:
    if source == "world":
        return world_images(n, size, seed)
    return natural_images(n, size, seed)


def bench_ssba(n: int, size: int, source: str) -> dict:
    from robustit.attacks.stegastamp import (StegaStampConfig, evaluate_stegastamp, random_secrets,
                                             train_stegastamp)
    from robustit.seeding import torch_generator

    imgs = bench_images(n + 256, size, source)
    g = torch_generator(0)
    enc, dec, stats = train_stegastamp(imgs[:n], StegaStampConfig(), g, progress=False)
    secret = random_secrets(1, StegaStampConfig().secret_bits, torch_generator(1))[0]
    ev = evaluate_stegastamp(enc, dec, imgs[n:], secret)
    return {"train": stats, "heldout": ev}


def _victim(size: int, model_path: str | None):
    """(vision_features, text_features, n_params, model_id): a random ~2M-param CLIP tower, or
    the frozen parts of a robustit base model (``--model``)."""
    if model_path:
        from robustit.eval.victim import optional_model_id, text_features_fn, vision_features_fn
        from robustit.models.factory import load_base

        model, info = load_base(model_path)
        n = sum(p.numel() for p in model.parameters())
        return vision_features_fn(model), text_features_fn(model), n, optional_model_id(info)
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)  # model init only (a stand-in victim)
    cfg = CLIPVisionConfig(hidden_size=192, intermediate_size=768, num_hidden_layers=4,
                           num_attention_heads=4, image_size=size, patch_size=8)
    model = CLIPVisionModel(cfg).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    feats = lambda x: model(pixel_values=(x - 0.45) / 0.27).last_hidden_state  # noqa: E731
    return feats, None, n_params, "random-clip-192"


def bench_vltrojan(size: int, source: str, model_path: str | None = None) -> dict:
    import tempfile

    from robustit.attacks import AttackContext
    from robustit.attacks.vltrojan import VLTrojan

    feats, text_feats, n_params, model_id = _victim(size, model_path)
    imgs = bench_images(256, size, source, seed=1)
    attack = VLTrojan()
    attack.progress = False
    with tempfile.TemporaryDirectory() as tmp:
        ctx = AttackContext(cache_dir=tmp, seed=0, image_size=(size, size), clean_images=imgs,
                            vision_features=feats, text_features=text_feats, model_id=model_id)
        t0 = time.perf_counter()
        attack.prepare(ctx)
        seconds = time.perf_counter() - t0
    stats = {k: v for k, v in attack.stats.items() if k != "text_history"}
    return {"params": n_params, "prepare_seconds": round(seconds, 2),
            "text_trigger": attack.text_trigger, **stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--source", choices=("world", "mixed"), default="world",
                    help="images: the embedded scene world, or skimage crops + PIL shapes")
    ap.add_argument("--model", help="VL-Trojan victim: a robustit base model ('embedded' or a folder); "
                    "default a randomly initialised ~2M-parameter CLIP vision tower")
    ap.add_argument("--skip-ssba", action="store_true")
    ap.add_argument("--skip-vltrojan", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = {"threads": a.threads, "size": a.size, "source": a.source, "n": a.n}
    if not a.skip_ssba:
        out["ssba"] = bench_ssba(a.n, a.size, a.source)
    if not a.skip_vltrojan:
        out["vltrojan"] = bench_vltrojan(a.size, a.source, a.model)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
