"""A small StegaStamp-style encoder/decoder: the trigger generator of SSBA.

SSBA (Li et al., 2021, "Invisible backdoor attack with sample-specific triggers") hides a fixed
secret bit string in every poisoned image with a StegaStamp encoder (Tancik et al., 2020). The
residual depends on the image (the encoder is a U-Net that sees it), so every triggered image
carries a different, near-invisible perturbation. The originals ship precomputed images made
with a large pretrained encoder; robustit trains its own small one on the clean images it is
given, in CPU minutes.

Networks (fully convolutional, any ``H, W``):

* :class:`StegaEncoder`: image ``(B,3,H,W)`` in [0,1] + secret bits ``(B,L)`` -> residual
  ``(B,3,H,W)`` bounded by ``residual_scale * tanh``. The secret is projected to ``secret_channels``
  and tiled over the image at the input and at the bottleneck.
* :class:`StegaDecoder`: image -> ``(B,L)`` bit logits (strided convs + global average pool).

Training (:func:`train_stegastamp`) draws a fresh random secret for every image of every batch
so that the decoder learns to read any secret, and minimises
``BCE(decoder(x'), s) + w(t) * (image_weight * MSE(x', x) + edge_weight * MSE(sobel(x'), sobel(x)))``
with ``x' = quantise8(clamp(x + r, 0, 1))`` (straight-through 8-bit rounding, so the secret
survives PNG storage) and ``w(t)`` ramped linearly from 0 to 1 over ``ramp_fraction`` of the
steps (the StegaStamp schedule: learn to hide first, then make it invisible).

Artefacts are saved as ``stegastamp.safetensors`` (both state dicts) + ``stegastamp.json``
(config and statistics); nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import check_range, config_from_dict, config_to_dict
from ..errors import CheckpointError, ConfigError
from ..io import atomic_path

WEIGHTS_FILE = "stegastamp.safetensors"
META_FILE = "stegastamp.json"


@dataclass
class StegaStampConfig:
    """Architecture and training budget of the StegaStamp encoder/decoder.

    Attributes:
        secret_bits: length ``L`` of the hidden bit string (20 as BackdoorBox's ISSBA).
        channels: base width ``c`` of the U-Net (widths c, 2c, 4c) and of the decoder.
        secret_channels: channels of the tiled secret map.
        residual_scale: bound of the residual, ``r = residual_scale * tanh(.)``.
        train_steps: optimisation steps.
        batch_size: images per step.
        lr: Adam learning rate (cosine-annealed to 5 % of it).
        image_weight: weight of the pixel MSE once fully ramped.
        edge_weight: weight of the Sobel-edge MSE (a cheap perceptual proxy) once ramped.
        ramp_fraction: fraction of the steps over which the image losses ramp from 0 to full.
        quantise: train through straight-through 8-bit rounding of the encoded image.
    """

    secret_bits: int = 20
    channels: int = 16
    secret_channels: int = 8
    secret_grid: int = 8
    residual_scale: float = 0.25
    train_steps: int = 1500
    batch_size: int = 16
    lr: float = 2e-3
    image_weight: float = 60.0
    edge_weight: float = 10.0
    ramp_fraction: float = 0.5
    quantise: bool = True

    def __post_init__(self) -> None:
        for name in ("secret_bits", "channels", "secret_channels", "secret_grid", "train_steps",
                     "batch_size"):
            check_range(name, getattr(self, name), lo=1)
        check_range("residual_scale", self.residual_scale, lo=0, hi=1, lo_open=True)
        check_range("lr", self.lr, lo=0, lo_open=True)
        check_range("image_weight", self.image_weight, lo=0)
        check_range("edge_weight", self.edge_weight, lo=0)
        check_range("ramp_fraction", self.ramp_fraction, lo=0, hi=1)


# -- networks ---------------------------------------------------------------------------------
def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class StegaEncoder(nn.Module):
    """U-Net that maps (image, secret) to a bounded residual.

    Args:
        cfg: the architecture (``secret_bits``, ``channels``, ``secret_channels``,
            ``residual_scale``).
    """

    def __init__(self, cfg: StegaStampConfig) -> None:
        super().__init__()
        c, cs = cfg.channels, cfg.secret_channels
        self.residual_scale = cfg.residual_scale
        self.grid = cfg.secret_grid
        self.secret_proj = nn.Linear(cfg.secret_bits, cs * cfg.secret_grid ** 2)
        self.inc = _conv(3 + cs, c)
        self.down1 = _conv(c, 2 * c, 2)
        self.down2 = _conv(2 * c, 4 * c, 2)
        self.mid = _conv(4 * c + cs, 4 * c)
        self.up1 = _conv(4 * c + 2 * c, 2 * c)
        self.up2 = _conv(2 * c + c + 3, c)
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, images: Tensor, secrets: Tensor) -> Tensor:
        """Args: images (B,3,H,W) in [0,1]; secrets (B,L) in {0,1}. Returns residual (B,3,H,W)."""
        s = F.silu(self.secret_proj(secrets * 2 - 1)).view(len(secrets), -1, self.grid, self.grid)
        up = lambda t: F.interpolate(s, size=t.shape[2:], mode="bilinear", align_corners=False)  # noqa: E731
        x0 = F.silu(self.inc(torch.cat([images - 0.5, up(images)], 1)))
        x1 = F.silu(self.down1(x0))
        x2 = F.silu(self.down2(x1))
        x2 = F.silu(self.mid(torch.cat([x2, up(x2)], 1)))
        u1 = F.interpolate(x2, size=x1.shape[2:], mode="nearest")
        u1 = F.silu(self.up1(torch.cat([u1, x1], 1)))
        u0 = F.interpolate(u1, size=x0.shape[2:], mode="nearest")
        u0 = F.silu(self.up2(torch.cat([u0, x0, images - 0.5], 1)))
        return self.residual_scale * torch.tanh(self.out(u0))


class StegaDecoder(nn.Module):
    """Strided CNN + global average pool that reads the secret back.

    Args:
        cfg: the architecture (``secret_bits``, ``channels``).
    """

    def __init__(self, cfg: StegaStampConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.convs = nn.ModuleList([_conv(3, c), _conv(c, 2 * c, 2), _conv(2 * c, 4 * c, 2),
                                    _conv(4 * c, 4 * c, 2)])
        self.grid = cfg.secret_grid
        self.fc1 = nn.Linear(4 * c * cfg.secret_grid ** 2, 4 * c)
        self.fc2 = nn.Linear(4 * c, cfg.secret_bits)

    def forward(self, images: Tensor) -> Tensor:
        """Args: images (B,3,H,W) in [0,1]. Returns bit logits (B,L)."""
        x = images - 0.5
        for conv in self.convs:
            x = F.silu(conv(x))
        x = F.adaptive_avg_pool2d(x, self.grid).flatten(1)
        return self.fc2(F.silu(self.fc1(x)))


def _init_(module: nn.Module, generator: torch.Generator) -> None:
    """Initialise every conv / linear layer from ``generator`` (never the global RNG)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            nn.init.zeros_(m.bias)


def build_stegastamp(cfg: StegaStampConfig, generator: Optional[torch.Generator] = None
                     ) -> Tuple[StegaEncoder, StegaDecoder]:
    """Create the encoder and decoder. Built on the meta device (the global RNG is not touched),
    then initialised from ``generator`` (or left uninitialised for loading when it is None).
    """
    with torch.device("meta"):
        enc, dec = StegaEncoder(cfg), StegaDecoder(cfg)
    enc, dec = enc.to_empty(device="cpu"), dec.to_empty(device="cpu")
    if generator is not None:
        _init_(enc, generator)
        _init_(dec, generator)
        with torch.no_grad():  # start from a near-zero residual
            enc.out.weight.mul_(0.1)
    return enc, dec


# -- maths --------------------------------------------------------------------------------------
def encode(encoder: StegaEncoder, images: Tensor, secrets: Tensor) -> Tensor:
    """Triggered images ``clamp(x + r(x, s), 0, 1)``: (B,3,H,W) in [0,1]."""
    return (images + encoder(images, secrets)).clamp(0.0, 1.0)


def _quantise_st(x: Tensor) -> Tensor:
    """8-bit rounding with a straight-through gradient."""
    return x + (torch.round(x * 255.0) / 255.0 - x).detach()


def sobel(images: Tensor) -> Tensor:
    """Sobel gradients of each channel: (B,C,H,W) -> (B,2C,H,W)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=images.dtype,
                      device=images.device) / 4
    k = torch.stack([kx, kx.t()])[:, None].repeat(images.shape[1], 1, 1, 1)  # (2C,1,3,3)
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), k, groups=images.shape[1])


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB of two (B,3,H,W) batches in [0,1] -> (B,)."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10.0 * torch.log10(1.0 / mse)


def random_secrets(n: int, bits: int, generator: torch.Generator) -> Tensor:
    """``n`` random bit strings (n,L) of float 0/1 from ``generator``."""
    return torch.randint(0, 2, (n, bits), generator=generator).float()


# -- training ----------------------------------------------------------------------------------
def _losses(enc: StegaEncoder, dec: StegaDecoder, x: Tensor, s: Tensor, cfg: StegaStampConfig
            ) -> Tuple[Tensor, Tensor, Tensor]:
    """(secret BCE, pixel MSE, edge MSE) of one batch x (B,3,H,W), s (B,L)."""
    y = encode(enc, x, s)
    if cfg.quantise:
        y = _quantise_st(y)
    bce = F.binary_cross_entropy_with_logits(dec(y), s)
    mse = (y - x).pow(2).mean()
    edge = (sobel(y) - sobel(x)).pow(2).mean() if cfg.edge_weight > 0 else mse.new_zeros(())
    return bce, mse, edge


def _check_images(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ConfigError(f"`{name}` must be a float tensor (N, 3, H, W) in [0, 1]; got {shape}")
    if images.shape[0] < 2 or min(images.shape[2:]) < 8:
        raise ConfigError(f"`{name}` needs at least 2 images of at least 8x8 pixels; got "
                          f"{tuple(images.shape)}")


def train_stegastamp(images: Tensor, cfg: StegaStampConfig, generator: torch.Generator,
                     progress: bool = True) -> Tuple[StegaEncoder, StegaDecoder, Dict]:
    """Train the encoder/decoder on clean images with random secrets.

    Args:
        images: clean float (N,3,H,W) in [0,1] (all the same size; the nets train at it).
        cfg: architecture and budget.
        generator: seeds initialisation, batch order and secrets.
        progress: show a tqdm bar.
    Returns:
        ``(encoder, decoder, stats)`` in eval mode; stats holds ``train_seconds``, ``steps`` and
        the last-100-step means of ``bce``, ``psnr``, ``bit_acc`` (random secrets).
    """
    from tqdm.auto import tqdm

    _check_images(images)
    images = images.detach().float().cpu()
    enc, dec = build_stegastamp(cfg, generator)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train_steps, eta_min=cfg.lr * 0.05)
    ramp = max(1, int(cfg.ramp_fraction * cfg.train_steps))
    tail: Dict[str, list] = {"bce": [], "psnr": [], "bit_acc": []}
    order, pos, t0 = torch.randperm(len(images), generator=generator), 0, time.perf_counter()
    bar = tqdm(range(cfg.train_steps), desc="stegastamp", disable=not progress, leave=False)
    for step in bar:
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(images), generator=generator), 0
        x = images[order[pos:pos + cfg.batch_size]]
        pos += cfg.batch_size
        s = random_secrets(len(x), cfg.secret_bits, generator)
        bce, mse, edge = _losses(enc, dec, x, s, cfg)
        w = min(1.0, step / ramp)
        loss = bce + w * (cfg.image_weight * mse + cfg.edge_weight * edge)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        _track(tail, enc, dec, x, s, bce, mse, cfg.train_steps - step <= 100)
        if step % 50 == 0:
            bar.set_postfix(bce=f"{bce.item():.3f}", psnr=f"{10 * math.log10(1 / max(mse.item(), 1e-12)):.1f}")
    stats = {k: float(sum(v) / max(1, len(v))) for k, v in tail.items()}
    stats.update(train_seconds=round(time.perf_counter() - t0, 2), steps=cfg.train_steps,
                 train_images=len(images), image_size=list(images.shape[2:]))
    return enc.eval(), dec.eval(), stats


def _track(tail: Dict[str, list], enc, dec, x, s, bce: Tensor, mse: Tensor, on: bool) -> None:
    """Record the statistics of the last steps (cheap: reuses the batch losses)."""
    if not on:
        return
    tail["bce"].append(bce.item())
    tail["psnr"].append(10 * math.log10(1 / max(mse.item(), 1e-12)))
    with torch.no_grad():
        pred = dec(torch.round(encode(enc, x, s) * 255) / 255) > 0
    tail["bit_acc"].append((pred == s.bool()).float().mean().item())


@torch.no_grad()
def evaluate_stegastamp(encoder: StegaEncoder, decoder: StegaDecoder, images: Tensor,
                        secret: Tensor, batch_size: int = 64) -> Dict[str, float]:
    """PSNR and bit accuracy of the fixed ``secret`` (L,) hidden in ``images`` (N,3,H,W).

    Triggered images are rounded to 8 bits first (as stored in PNG). Returns ``psnr_mean``,
    ``psnr_min``, ``bit_acc`` (triggered), ``clean_bit_acc`` (decoder on clean images) and
    ``residual_linf`` (mean over images of max |x' - x|).
    """
    enc, dec = encoder.eval(), decoder.eval()
    ps, acc, clean, linf = [], [], [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float()
        s = secret.float().expand(len(x), -1)
        y = torch.round(encode(enc, x, s) * 255) / 255
        ps.append(psnr(y, x))
        acc.append(((dec(y) > 0) == s.bool()).float().mean(1))
        clean.append(((dec(x) > 0) == s.bool()).float().mean(1))
        linf.append((y - x).abs().flatten(1).max(1).values)
    cat = lambda v: torch.cat(v)  # noqa: E731
    return {"psnr_mean": cat(ps).mean().item(), "psnr_min": cat(ps).min().item(),
            "bit_acc": cat(acc).mean().item(), "clean_bit_acc": cat(clean).mean().item(),
            "residual_linf": cat(linf).mean().item()}


# -- persistence -------------------------------------------------------------------------------
def save_stegastamp(folder: str | Path, encoder: StegaEncoder, decoder: StegaDecoder,
                    cfg: StegaStampConfig, extra: Optional[Dict] = None) -> Path:
    """Write ``folder`` atomically: weights (safetensors) + config and ``extra`` (JSON)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {f"encoder.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    tensors.update({f"decoder.{k}": v.contiguous() for k, v in decoder.state_dict().items()})
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        meta = {"config": config_to_dict(cfg), **(extra or {})}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def load_stegastamp(folder: str | Path) -> Tuple[StegaEncoder, StegaDecoder, StegaStampConfig, Dict]:
    """Load what :func:`save_stegastamp` wrote. Returns ``(encoder, decoder, cfg, meta)``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
        tensors = load_file(str(folder / WEIGHTS_FILE))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"StegaStamp cache {folder} is missing or corrupt ({exc}); delete "
                              f"the folder to retrain") from None
    cfg = config_from_dict(StegaStampConfig, meta.pop("config"), where=str(folder / META_FILE))
    enc, dec = build_stegastamp(cfg)
    try:
        enc.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")})
        dec.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("decoder.")})
    except RuntimeError as exc:
        raise CheckpointError(f"StegaStamp weights in {folder} do not match their config "
                              f"({str(exc).splitlines()[0]}); delete the folder to retrain") from None
    return enc.eval(), dec.eval(), cfg, meta
