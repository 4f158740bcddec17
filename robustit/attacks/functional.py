"""Pure trigger maths: tensors in, tensors out, no randomness and no I/O.

Every function here takes images as float tensors ``(B, 3, H, W)`` in ``[0, 1]`` and returns a
new tensor of the same shape, dtype and device (the input is never modified). Anything random
(which samples, which pool entry) is sampled by the caller with a seeded ``torch.Generator``;
the attack classes in this package are thin wrappers that turn their config into the
arguments below.

Units: intensities are on the ``[0, 1]`` scale here (an attack whose standard parameter is given
on the 0-255 scale, such as SIG's ``delta = 40``, divides by 255 before calling).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError

#: the image side the standard pixel sizes refer to (BackdoorBench / VL-Trojan use 224 x 224)
REFERENCE_SIDE = 224

#: corners (and the centre) a patch can be placed at
PATCH_POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")

# BT.601 full-range RGB -> YCbCr (JPEG / OpenCV COLOR_RGB2YCrCb coefficients; rows Y, Cb, Cr).
_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                              [-0.168735892, -0.331264108, 0.5],
                              [0.5, -0.418687589, -0.081312411]], dtype=torch.float64)
_YCBCR_OFFSET = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)


# -- checks --------------------------------------------------------------------------------
def check_images(images: torch.Tensor, where: str = "images") -> None:
    """Raise ValueError unless ``images`` is a floating (B, 3, H, W) tensor."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{where}: expected a float tensor (B, 3, H, W) in [0, 1]; got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{where}: expected a floating tensor in [0, 1]; got {images.dtype} "
                         f"(divide uint8 images by 255 first)")


def check_fits(attack: str, images: torch.Tensor, need_h: int, need_w: int, fix: str) -> None:
    """Raise ConfigError when the images are smaller than a trigger of ``need_h x need_w``."""
    h, w = images.shape[-2:]
    if h < need_h or w < need_w:
        raise ConfigError(f"{attack}: the images are {h}x{w} pixels but the trigger needs at least "
                          f"{need_h}x{need_w}; {fix}")


# -- sizes and positions -------------------------------------------------------------------
def scaled_pixels(pixels_at_reference: float, side: int, minimum: int = 1,
                  reference: int = REFERENCE_SIDE) -> int:
    """Scale a pixel size given for ``reference``-pixel images to images of ``side`` pixels.

    Example: BadNets' 21 px patch at 224 -> ``round(21 * 64 / 224) = 6`` px at 64.

    Args:
        pixels_at_reference: the size at the reference side.
        side: the (shorter) side of the images the trigger is applied to.
        minimum: the smallest size returned (a trigger must stay visible).
        reference: the side the size refers to.
    Returns:
        ``max(minimum, round(pixels_at_reference * side / reference))`` (round half up).
    """
    return max(int(minimum), int(math.floor(pixels_at_reference * side / reference + 0.5)))


def patch_origin(height: int, width: int, patch_h: int, patch_w: int, position: str,
                 margin: int = 0) -> Tuple[int, int]:
    """Top-left pixel of a ``patch_h x patch_w`` patch placed at ``position``.

    ``"center"`` follows TrojVQA: ``int(H / 2 - patch_h / 2)``. Corners keep ``margin`` pixels
    to the image border.

    Returns:
        (top, left).
    """
    if position not in PATCH_POSITIONS:
        raise ConfigError(f"patch position must be one of {list(PATCH_POSITIONS)}; got {position!r}")
    if position == "center":
        return int(height // 2 - patch_h / 2), int(width // 2 - patch_w / 2)
    top = margin if position.startswith("top") else height - patch_h - margin
    left = margin if position.endswith("left") else width - patch_w - margin
    return top, left


# -- patches -------------------------------------------------------------------------------
def checkerboard(size: int, cells: int = 3, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """A ``cells x cells`` black/white checkerboard drawn at ``size x size`` pixels.

    Cell ``(r, c)`` is white when ``r + c`` is even (so the corners of an odd grid are white, as
    in the BadNets pattern). Pixel ``(i, j)`` belongs to cell ``(i * cells // size,
    j * cells // size)``, i.e. nearest-neighbour upscaling of the cell grid.

    Returns:
        float (3, size, size) with values in {0, 1}.
    """
    cell = torch.arange(size, device=device) * cells // size
    board = ((cell[:, None] + cell[None, :]) % 2 == 0).to(dtype)
    return board.expand(3, size, size).clone()


def solid_patch(size: int, color: Sequence[float], dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """A ``size x size`` patch of one RGB colour (values in [0, 1]).

    Returns:
        float (3, size, size).
    """
    rgb = torch.tensor([float(c) for c in color], dtype=dtype, device=device)
    return rgb[:, None, None].expand(3, size, size).clone()


def paste_patch(images: torch.Tensor, patch: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Replace the pixels under the patch (differentiable in ``patch``).

    Args:
        images: float (B, 3, H, W).
        patch: float (3, h, w) or (B, 3, h, w), same dtype.
        top, left: the patch's top-left pixel; the patch must lie inside the image.
    Returns:
        float (B, 3, H, W): ``images`` with ``[top:top+h, left:left+w]`` set to ``patch``.
    """
    h, w = patch.shape[-2:]
    if top < 0 or left < 0 or top + h > images.shape[-2] or left + w > images.shape[-1]:
        raise ValueError(f"patch {h}x{w} at ({top}, {left}) does not fit images "
                         f"{tuple(images.shape[-2:])}")
    out = images.clone()
    out[..., top:top + h, left:left + w] = patch.to(images.dtype)
    return out


# -- blending and additive signals ---------------------------------------------------------
def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize (3, h, w) or (B, 3, h, w) to ``height x width`` (bilinear, antialiased).

    Deterministic on CPU. Values are clamped to [0, 1] (antialiasing may overshoot slightly).
    """
    batch = image if image.ndim == 4 else image[None]
    if tuple(batch.shape[-2:]) != (height, width):
        batch = F.interpolate(batch.float(), size=(height, width), mode="bilinear",
                              align_corners=False, antialias=True).clamp(0, 1).to(image.dtype)
    return batch if image.ndim == 4 else batch[0]


def blend(images: torch.Tensor, trigger: torch.Tensor, alpha: float) -> torch.Tensor:
    """Blended attack: ``x' = (1 - alpha) * x + alpha * T``.

    Args:
        images: float (B, 3, H, W) in [0, 1].
        trigger: float (3, H, W) or (B, 3, H, W) in [0, 1], already resized to the images.
        alpha: blend ratio in (0, 1].
    Returns:
        float (B, 3, H, W) in [0, 1].
    """
    trigger = trigger.to(device=images.device, dtype=images.dtype)
    return ((1.0 - alpha) * images + alpha * trigger).clamp(0, 1)


def sinusoid(height: int, width: int, delta: float, frequency: float,
             dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> torch.Tensor:
    """SIG's horizontal sinusoid ``v(i, j) = delta * sin(2 pi j f / m)`` with ``m = width``.

    Every row (and every channel) carries the same signal.

    Args:
        delta: amplitude on the [0, 1] scale (SIG's 40/255).
        frequency: number of periods across the width (SIG's f = 6).
    Returns:
        float (H, W).
    """
    j = torch.arange(width, dtype=torch.float64, device=device)
    row = delta * torch.sin(2 * math.pi * j * frequency / width)
    return row.expand(height, width).to(dtype).clone()


def add_signal(images: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """Add a (H, W), (3, H, W) or (B, 3, H, W) signal and clip to [0, 1]."""
    return (images + signal.to(device=images.device, dtype=images.dtype)).clamp(0, 1)


# -- colour spaces and the block DCT -------------------------------------------------------
def rgb_to_ycbcr(images: torch.Tensor) -> torch.Tensor:
    """BT.601 full-range RGB -> YCbCr on the [0, 1] scale (Cb, Cr centred at 0.5).

    Channel 1 (Cb) and 2 (Cr) are FTrojan's "U" and "V". Shape (B, 3, H, W) -> (B, 3, H, W).
    """
    m = _RGB_TO_YCBCR.to(device=images.device, dtype=images.dtype)
    off = _YCBCR_OFFSET.to(device=images.device, dtype=images.dtype)
    return torch.einsum("ck,bkhw->bchw", m, images) + off[None, :, None, None]


def ycbcr_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`rgb_to_ycbcr` (no clipping). (B, 3, H, W) -> (B, 3, H, W)."""
    m = torch.linalg.inv(_RGB_TO_YCBCR).to(device=images.device, dtype=images.dtype)
    off = _YCBCR_OFFSET.to(device=images.device, dtype=images.dtype)
    return torch.einsum("ck,bkhw->bchw", m, images - off[None, :, None, None])


def dct_matrix(n: int, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (n, n): ``D @ x`` is ``scipy.fft.dct(x, norm='ortho')``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(device=device, dtype=dtype)


def block_dct(x: torch.Tensor, block: int, inverse: bool = False) -> torch.Tensor:
    """2-D orthonormal DCT-II (or its inverse) of every ``block x block`` tile.

    Args:
        x: (..., H, W) with H and W multiples of ``block``.
        block: tile side.
        inverse: apply the inverse transform (DCT-III) instead.
    Returns:
        (..., H, W): tile ``(p, q)`` holds the coefficients of that tile, coefficient ``(u, v)``
        at ``[p * block + u, q * block + v]``.
    """
    h, w = x.shape[-2:]
    if h % block or w % block:
        raise ValueError(f"block_dct: {h}x{w} is not a multiple of the block size {block}")
    d = dct_matrix(block, dtype=x.dtype, device=x.device)
    if inverse:
        d = d.T
    tiles = x.reshape(*x.shape[:-2], h // block, block, w // block, block)
    out = torch.einsum("uk,...pkqj,vj->...puqv", d, tiles, d)
    return out.reshape(x.shape)


def scale_positions(positions: Iterable[Sequence[int]], block: int,
                    reference_block: int) -> Tuple[Tuple[int, int], ...]:
    """Map frequency positions given for ``reference_block`` tiles onto ``block`` tiles.

    ``(u, v) -> (round((u + 1) * block / reference_block) - 1, ...)``, so the highest frequency
    stays the highest ((31, 31) in a 32 tile -> (15, 15) in a 16 tile) and the middle one stays in
    the middle ((15, 15) -> (7, 7)). Identity when ``block == reference_block``.
    """
    def one(p: int) -> int:
        return max(0, int(math.floor((p + 1) * block / reference_block + 0.5)) - 1)

    return tuple((one(u), one(v)) for u, v in positions)


def frequency_trigger(images: torch.Tensor, block: int, positions: Sequence[Sequence[int]],
                      magnitude: float, channels: Sequence[int], ycbcr: bool = True) -> torch.Tensor:
    """FTrojan: add ``magnitude`` to fixed block-DCT coefficients, then clip to [0, 1].

    The image is converted to YCbCr (``ycbcr=True``; else the RGB channels are used), every full
    ``block x block`` tile of the chosen channels gets ``+magnitude`` at each ``(u, v)`` of
    ``positions`` in its orthonormal 2-D DCT, and the result is transformed back. Pixels in a
    partial tile at the bottom / right border (when the side is not a multiple of ``block``) are
    left unchanged, as in the reference implementation.

    Args:
        images: float (B, 3, H, W) in [0, 1] with H, W >= block.
        block: tile side.
        positions: (u, v) pairs, each in [0, block).
        magnitude: coefficient increase on the [0, 1] scale (FTrojan's 30/255).
        channels: channel indices (YCbCr: 1 = Cb "U", 2 = Cr "V").
    Returns:
        float (B, 3, H, W) in [0, 1].
    """
    h, w = images.shape[-2:]
    hb, wb = h // block * block, w // block * block
    impulse = torch.zeros(block, block, dtype=torch.float64, device=images.device)
    for u, v in positions:
        impulse[u, v] += magnitude
    # The DCT and the colour transform are linear, so adding the impulses to every tile's
    # coefficients equals adding their inverse DCT to the pixels, mapped back to RGB by the
    # inverse colour matrix: pixels outside the full tiles stay bit-identical.
    pattern = block_dct(impulse, block, inverse=True).repeat(hb // block, wb // block)
    delta = torch.zeros(3, hb, wb, dtype=torch.float64, device=images.device)
    for c in channels:
        delta[c] += pattern
    if ycbcr:
        inverse = torch.linalg.inv(_RGB_TO_YCBCR).to(images.device)
        delta = torch.einsum("ck,khw->chw", inverse, delta)
    out = images.to(torch.float64)  # a copy unless the input is float64
    out = out.clone() if out is images else out
    out[..., :hb, :wb] += delta
    return out.clamp(0, 1).to(images.dtype)


# -- measurements ----------------------------------------------------------------------------
def psnr(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB between two images in [0, 1] (inf when equal)."""
    mse = torch.mean((clean.double() - triggered.double()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def linf(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    """Largest absolute pixel change (on the [0, 1] scale)."""
    return float((clean.double() - triggered.double()).abs().max().item())
