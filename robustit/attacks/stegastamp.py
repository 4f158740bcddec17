"""A small StegaStamp-style encoder/decoder: the trigger generator of SSBA.

SSBA (Li et al., 2021, "Invisible backdoor attack with sample-specific triggers") hides a fixed
secret bit string in every poisoned image with a StegaStamp encoder (Tancik et al., 2020). The
residual depends on the image (the encoder is a U-Net that sees it), so every triggered image
carries a different, near-invisible perturbation. The originals ship precomputed images made
with a large pretrained encoder; robustit trains its own small one on the clean images it is
given, in CPU minutes.

Networks (fully convolutional, any ``H, W``):

* :class:`StegaEncoder`: image ``(B,3,H,W)`` in [0,1] + secret bits ``(B,L)`` -> residual
  ``(B,3,H,W)`` bounded by ``residual_scale * tanh``. As in StegaStamp, the secret is projected
  to a small spatial map (``secret_channels x secret_grid x secret_grid``) that is bilinearly
  resized to the image (and to the bottleneck) and concatenated.
* :class:`StegaDecoder`: image -> ``(B,L)`` bit logits (strided convs, adaptive average pool to
  the same grid, two linear layers).

Training (:func:`train_stegastamp`) draws fresh random secrets for every batch, so the decoder
learns to read any secret, and minimises, with ``x' = q8(clamp(x + r, 0, 1))`` (straight-through
8-bit rounding, so the secret survives PNG storage)::

    BCE(dec(x'), s) + w(t) * (image_weight * MSE(x', x) + edge_weight * MSE(sobel(x'), sobel(x))
                              + specific_weight * mean_k cos^2(r_2k, r_2k+1))

``w(t)`` is 0 during a warm-up (learn to hide first; no rounding yet) that ends once the running
bit accuracy reaches ``warmup_bit_acc`` (at the latest after ``warmup_fraction`` of the steps),
then ramps linearly to 1 over ``ramp_fraction`` of the steps (then make it invisible). The last term is the
sample-specificity regulariser: images ``2k`` and ``2k+1`` of a batch share a secret and their
centred residuals are decorrelated. Without it the small encoder converges to one fixed
high-frequency pattern per secret (measured cross-image residual correlation ~0.85-0.9 at
64x64, i.e. a Blended-like trigger); with it the residual follows each image's edges
(correlation ~0.1) at PSNR ~37 dB and bit accuracy > 99 % (800 steps, 2000 images, 64x64).

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
        secret_channels: channels of the spatial secret map.
        secret_grid: side of the secret map (resized to the image) and of the decoder's pooled
            grid; with 8 at 64x64 each cell is 8x8 pixels.
        residual_scale: bound of the residual, ``r = residual_scale * tanh(.)``.
        train_steps: optimisation steps.
        batch_size: images per step.
        lr: Adam learning rate (cosine-annealed to 5 % of it).
        image_weight: weight of the pixel MSE once fully ramped.
        edge_weight: weight of the Sobel-edge MSE (a cheap perceptual proxy) once ramped.
        specific_weight: weight of the sample-specificity term (:func:`pair_similarity`: two
            images of a batch share each secret and their residuals are decorrelated).
        warmup_fraction: most steps (fraction) with the secret loss only and no 8-bit rounding:
            the encoder first learns to hide, then to hide invisibly.
        warmup_bit_acc: the warm-up ends early once the running bit accuracy reaches this.
        ramp_fraction: fraction of the steps, after the warm-up, over which the image losses ramp
            linearly from 0 to full weight.
        quantise: train through straight-through 8-bit rounding of the encoded image.
    """

    secret_bits: int = 20
    channels: int = 16
    secret_channels: int = 8
    secret_grid: int = 8
    residual_scale: float = 0.25
    train_steps: int = 800
    batch_size: int = 16
    lr: float = 2e-3
    image_weight: float = 100.0
    edge_weight: float = 10.0
    specific_weight: float = 1.0
    warmup_fraction: float = 0.4
    warmup_bit_acc: float = 0.95
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
        check_range("specific_weight", self.specific_weight, lo=0)
        check_range("warmup_fraction", self.warmup_fraction, lo=0, hi=1)
        check_range("warmup_bit_acc", self.warmup_bit_acc, lo=0.5, hi=1)
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
    """Strided CNN, adaptive average pool to the secret grid and two linear layers: reads the
    secret back.

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


def pair_similarity(residuals: Tensor) -> Tensor:
    """Mean squared cosine between the centred residuals of images 2k and 2k+1 (which share a
    secret in training): 1 for a fixed pattern, ~0 for unrelated ones. Scalar."""
    n = residuals.shape[0] // 2 * 2
    if n == 0:
        return residuals.new_zeros(())
    r = residuals[:n].flatten(1)
    r = F.normalize(r - r.mean(1, keepdim=True), dim=1, eps=1e-8)
    return (r[0::2] * r[1::2]).sum(1).pow(2).mean()


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
    return {"bce": F.binary_cross_entropy_with_logits(logits, s), "mse": mse, "edge": edge,
            "pair_cos2": pair_similarity(y - x),
            "bit_acc": ((logits.detach() > 0) == s.bool()).float().mean()}


class _Schedule:
    """The ramp ``w(t)`` of the image losses: 0 during the warm-up, then linear to 1 over
    ``ramp_fraction`` of the steps. The warm-up ends once the running bit accuracy (EMA 0.9)
    reaches ``warmup_bit_acc``, and at the latest after ``warmup_fraction`` of the steps."""

    def __init__(self, cfg: StegaStampConfig) -> None:
        self.cfg, self.ema, self.start = cfg, 0.5, None
        self.max_warm = int(cfg.warmup_fraction * cfg.train_steps)
        self.ramp = max(1, int(cfg.ramp_fraction * cfg.train_steps))

    def weight(self, step: int) -> float:
        return 0.0 if self.start is None else min(1.0, (step - self.start + 1) / self.ramp)

    def update(self, step: int, bit_acc: float) -> None:
        self.ema = 0.9 * self.ema + 0.1 * bit_acc
        if self.start is None and (self.ema >= self.cfg.warmup_bit_acc or step + 1 >= self.max_warm):
            self.start = step + 1


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
    """Train the encoder/decoder on clean images with fresh random secrets (one per pair of
    images of a batch; see :func:`pair_similarity`).

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
    sched_w = _Schedule(cfg)
    for step in tqdm(range(cfg.train_steps), desc="stegastamp", disable=not progress, leave=False):
        x = images[next(batches)]
        secrets = random_secrets((len(x) + 1) // 2, cfg.secret_bits, generator)
        out = _losses(enc, dec, x, secrets.repeat_interleave(2, 0)[:len(x)], cfg,
                      quantise=cfg.quantise and sched_w.start is not None)
        w = sched_w.weight(step)
        loss = out["bce"] + w * (cfg.image_weight * out["mse"] + cfg.edge_weight * out["edge"]
                                 + cfg.specific_weight * out["pair_cos2"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        sched_w.update(step, out["bit_acc"].item())
        log.append((out["bce"].item(), _psnr_of_mse(out["mse"].item()), out["bit_acc"].item()))
    stats = _train_stats(log, images, time.perf_counter() - t0)
    return enc.eval(), dec.eval(), {**stats, "warmup_steps": sched_w.start}


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
    ``psnr_min``, ``bit_acc`` (triggered), ``clean_bit_acc`` (decoder on clean images),
    ``residual_linf`` (mean over images of max |x' - x|) and ``residual_corr``
    (:func:`residual_correlation` of the first 64 residuals).
    """
    enc, dec = encoder.eval(), decoder.eval()
    ps, acc, clean, res = [], [], [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float()
        s = secret.float().expand(len(x), -1)
        y = torch.round(encode(enc, x, s) * 255) / 255
        ps.append(psnr(y, x))
        acc.append(((dec(y) > 0) == s.bool()).float().mean(1))
        clean.append(((dec(x) > 0) == s.bool()).float().mean(1))
        res.append((y - x).flatten(1))
    ps, res = torch.cat(ps), torch.cat(res)
    return {"psnr_mean": ps.mean().item(), "psnr_min": ps.min().item(),
            "bit_acc": torch.cat(acc).mean().item(), "clean_bit_acc": torch.cat(clean).mean().item(),
            "residual_linf": res.abs().max(1).values.mean().item(),
            "residual_corr": residual_correlation(res[:64])}


def residual_correlation(residuals: Tensor) -> float:
    """Mean pairwise correlation of the residuals (N, ...) of N >= 2 images: ~1 for one fixed
    pattern (Blended-like), ~0 for sample-specific residuals; nan for N < 2."""
    n = residuals.shape[0]
    if n < 2:
        return float("nan")
    r = residuals.flatten(1).float()
    r = F.normalize(r - r.mean(1, keepdim=True), dim=1, eps=1e-8)
    return ((r @ r.t()).sum().item() - (r * r).sum().item()) / (n * (n - 1))


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
