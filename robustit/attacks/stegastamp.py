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
        mask_weight: weight of the texture-masked MSE (:func:`texture_mask`) once ramped.
        warmup_fraction: fraction of the steps with the secret loss only (and no 8-bit rounding):
            the encoder first learns to hide, then to hide invisibly.
        ramp_fraction: fraction of the steps, after the warm-up, over which the image losses ramp
            linearly from 0 to full weight.
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
    mask_weight: float = 0.0
    warmup_fraction: float = 0.2
    ramp_fraction: float = 0.4
    quantise: bool = True

    def __post_init__(self) -> None:
        for name in ("secret_bits", "channels", "secret_channels", "secret_grid", "train_steps",
                     "batch_size"):
            check_range(name, getattr(self, name), lo=1)
        check_range("residual_scale", self.residual_scale, lo=0, hi=1, lo_open=True)
        check_range("lr", self.lr, lo=0, lo_open=True)
        check_range("image_weight", self.image_weight, lo=0)
        check_range("edge_weight", self.edge_weight, lo=0)
        check_range("mask_weight", self.mask_weight, lo=0)
        check_range("warmup_fraction", self.warmup_fraction, lo=0, hi=1)
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


def texture_mask(images: Tensor, window: int = 5, floor: float = 0.02) -> Tensor:
    """Contrast-masking weights (B,1,H,W), mean 1 per image: high where the image is flat.

    ``1 / (local std of the grey image over a window + floor)``; a residual hidden in texture is
    less visible than one on a flat area, so penalising it by this weight makes the residual
    follow the image content (sample-specific), a cheap stand-in for LPIPS.
    """
    g = images.mean(1, keepdim=True)
    pad = (window // 2,) * 4
    mu = F.avg_pool2d(F.pad(g, pad, mode="replicate"), window, stride=1)
    var = F.avg_pool2d(F.pad(g * g, pad, mode="replicate"), window, stride=1) - mu * mu
    m = 1.0 / (var.clamp_min(0).sqrt() + floor)
    return m / m.mean(dim=(2, 3), keepdim=True)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB of two (B,3,H,W) batches in [0,1] -> (B,)."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10.0 * torch.log10(1.0 / mse)


def random_secrets(n: int, bits: int, generator: torch.Generator) -> Tensor:
    """``n`` random bit strings (n,L) of float 0/1 from ``generator``."""
    return torch.randint(0, 2, (n, bits), generator=generator).float()


# -- training ----------------------------------------------------------------------------------
def _losses(enc: StegaEncoder, dec: StegaDecoder, x: Tensor, s: Tensor, cfg: StegaStampConfig,
            quantise: bool) -> Dict[str, Tensor]:
    """Losses of one batch x (B,3,H,W), s (B,L): ``bce``, ``mse``, ``edge``, ``bit_acc``."""
    y = encode(enc, x, s)
    if quantise:
        y = _quantise_st(y)
    logits = dec(y)
    mse = (y - x).pow(2).mean()
    edge = (sobel(y) - sobel(x)).pow(2).mean() if cfg.edge_weight > 0 else mse.new_zeros(())
    masked = ((y - x).pow(2) * texture_mask(x)).mean() if cfg.mask_weight > 0 else mse.new_zeros(())
    return {"bce": F.binary_cross_entropy_with_logits(logits, s), "mse": mse, "edge": edge,
            "masked": masked,
            "bit_acc": ((logits.detach() > 0) == s.bool()).float().mean()}


def image_loss_weight(step: int, cfg: StegaStampConfig) -> float:
    """The ramp ``w(t)``: 0 during the warm-up, then linear to 1 over ``ramp_fraction``."""
    warm = int(cfg.warmup_fraction * cfg.train_steps)
    ramp = max(1, int(cfg.ramp_fraction * cfg.train_steps))
    return min(1.0, max(0.0, (step - warm) / ramp)) if step >= warm else 0.0


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless index batches (B,) over shuffled epochs of ``range(n)``."""
    while True:
        order = torch.randperm(n, generator=generator)
        for i in range(0, n - batch_size + 1, batch_size):
            yield order[i:i + batch_size]
        if n < batch_size:
            yield order


def _check_images(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ConfigError(f"`{name}` must be a float tensor (N, 3, H, W) in [0, 1]; got {shape}")
    if images.shape[0] < 2 or min(images.shape[2:]) < 8:
        raise ConfigError(f"`{name}` needs at least 2 images of at least 8x8 pixels; got "
                          f"{tuple(images.shape)}")


def train_stegastamp(images: Tensor, cfg: StegaStampConfig, generator: torch.Generator,
                     progress: bool = True) -> Tuple[StegaEncoder, StegaDecoder, Dict]:
    """Train the encoder/decoder on clean images with a fresh random secret per image.

    Args:
        images: clean float (N,3,H,W) in [0,1] (one size; the nets train at it).
        cfg: architecture and budget.
        generator: seeds initialisation, batch order and secrets.
        progress: show a tqdm bar.
    Returns:
        ``(encoder, decoder, stats)`` in eval mode. ``stats``: ``train_seconds``, ``steps``,
        ``train_images``, ``image_size``, the means over the last 10 % of steps of ``bce``,
        ``psnr`` and ``bit_acc`` (random secrets, 8-bit images), and ``history`` (every 50 steps).
    """
    from tqdm.auto import tqdm

    _check_images(images)
    images = images.detach().float().cpu()
    enc, dec = build_stegastamp(cfg, generator)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train_steps, eta_min=cfg.lr * 0.05)
    batches, log, t0 = _batches(len(images), cfg.batch_size, generator), [], time.perf_counter()
    for step in tqdm(range(cfg.train_steps), desc="stegastamp", disable=not progress, leave=False):
        x = images[next(batches)]
        w = image_loss_weight(step, cfg)
        out = _losses(enc, dec, x, random_secrets(len(x), cfg.secret_bits, generator), cfg,
                      quantise=cfg.quantise and step >= int(cfg.warmup_fraction * cfg.train_steps))
        loss = out["bce"] + w * (cfg.image_weight * out["mse"] + cfg.edge_weight * out["edge"]
                                 + cfg.mask_weight * out["masked"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log.append((out["bce"].item(), _psnr_of_mse(out["mse"].item()), out["bit_acc"].item()))
    return enc.eval(), dec.eval(), _train_stats(log, images, time.perf_counter() - t0)


def _psnr_of_mse(mse: float) -> float:
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def _train_stats(log: list, images: Tensor, seconds: float) -> Dict:
    """Summary of the per-step ``(bce, psnr, bit_acc)`` log."""
    tail = log[-max(1, len(log) // 10):]
    mean = lambda i: float(sum(r[i] for r in tail) / len(tail))  # noqa: E731
    return {"bce": mean(0), "psnr": mean(1), "bit_acc": mean(2), "train_seconds": round(seconds, 2),
            "steps": len(log), "train_images": len(images), "image_size": list(images.shape[2:]),
            "history": [[i, round(r[0], 4), round(r[1], 2), round(r[2], 4)]
                        for i, r in enumerate(log) if i % 50 == 0 or i == len(log) - 1]}


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
