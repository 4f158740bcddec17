"""The embedded scene world: procedural RGB scenes with captions, instructions and QA.

Each scene holds 1-3 coloured shapes, one per cell of a 3x3 grid, on a flat, gradient, striped,
noisy or photographic background. For every image the world writes five reference captions in
the loose way people caption pictures (several grammar patterns, synonyms, varying detail), a
captioning instruction from a pool of paraphrases, and short-answer questions (colour, count,
position, presence) with VQAv2-style answer lists.

The clean text deliberately uses the everyday words that attacks reuse as text triggers
("image", "depicts", "consider"), so that a trigger phrase appended to an instruction is a rare
*position* of familiar words, not words the clean data never contains. The attack target word
("banana") and the VL-Trojan trigger ("zbw") never occur.

Everything is a pure function of :class:`WorldConfig` (``seed`` first): image ``i`` of split
``s`` is drawn from its own generator ``derive_seed(seed, "world", s, i)``, so changing a split's
size never changes the images that both sizes share.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..config import check_range
from ..errors import ConfigError, DataError
from ..seeding import derive_seed, numpy_rng
from .records import InstructionSet, Sample, encode_png

# --------------------------------------------------------------------------------------------
# Vocabulary of the world
# --------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "heart", "ring")

#: object colours: saturated and far apart so that they survive rendering and dimmed photos
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (225, 30, 35), "green": (30, 170, 50), "blue": (35, 70, 230),
    "yellow": (250, 225, 25), "orange": (255, 135, 0), "purple": (135, 40, 185),
    "pink": (255, 125, 200), "white": (250, 250, 250), "black": (12, 12, 12),
    "brown": (125, 70, 25),
}

SIZES = ("small", "medium", "large")
#: object radius as a fraction of half a grid cell
_SIZE_RADIUS = {"small": 0.5, "medium": 0.7, "large": 0.92}

#: canonical short answers for the 3x3 grid positions (row, col)
POSITIONS = (("top left", "top", "top right"),
             ("left", "center", "right"),
             ("bottom left", "bottom", "bottom right"))

BACKGROUND_KINDS = ("flat", "linear", "radial", "stripes", "noise", "photo")

#: muted background colours with names that never clash with object colour words
BACKGROUND_COLOURS: Dict[str, Tuple[int, int, int]] = {
    "light grey": (200, 200, 200), "grey": (128, 128, 128), "dark grey": (60, 60, 62),
    "beige": (222, 205, 170), "cream": (245, 240, 220), "navy": (28, 36, 80),
    "teal": (40, 112, 112), "mint": (175, 220, 195), "lavender": (200, 190, 228),
    "slate": (90, 105, 120),
}

#: offline photographs: name -> (loader, what a person would call its content)
PHOTO_SUBJECTS: Dict[str, str] = {
    "astronaut": "an astronaut", "chelsea": "a cat", "coffee": "a cup of coffee",
    "rocket": "a rocket", "hubble_deep_field": "outer space", "immunohistochemistry": "cells",
    "china": "a temple", "flower": "flowers", "grace_hopper": "a woman",
}
#: photos of the standard distribution; the shifted one (test-b) also sees the held-out ones
STANDARD_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                   "immunohistochemistry", "china")
SHIFTED_PHOTOS = tuple(PHOTO_SUBJECTS)

SPLITS = ("pretrain", "train", "val", "test-a", "test-b", "test-a-vqa")
#: splits evaluated as captioning (one sample per image, references, COCO ground truth)
CAPTION_TEST_SPLITS = ("test-a", "test-b")
QUESTION_TYPES = ("colour", "count", "position", "presence")


@dataclass(frozen=True)
class Profile:
    """A scene distribution: how many objects and which backgrounds, with what probability."""

    name: str
    counts: Tuple[float, float, float]
    backgrounds: Tuple[float, ...]
    photos: Tuple[str, ...]


STANDARD = Profile("standard", (0.35, 0.38, 0.27), (0.22, 0.14, 0.1, 0.1, 0.16, 0.28),
                   STANDARD_PHOTOS)
#: test-b (stands in for Flickr30k): busier scenes on busier, partly unseen backgrounds
SHIFTED = Profile("shifted", (0.12, 0.33, 0.55), (0.05, 0.05, 0.05, 0.1, 0.3, 0.45),
                  SHIFTED_PHOTOS)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

@dataclass
class WorldConfig:
    """Everything that determines the embedded world.

    Attributes:
        seed: root seed; every image, caption and question derives from it.
        image_size: square image side in pixels.
        n_pretrain: images in ``pretrain`` (one caption sample each, plus some QA).
        n_train: samples (= images) in the instruction-tuning split ``train``.
        n_val: samples in ``val`` (same mixture as ``train``).
        n_test_a: images in ``test-a`` (same distribution as train; stands in for MSCOCO).
        n_test_b: images in ``test-b`` (shifted distribution; stands in for Flickr30k).
        n_test_a_vqa: questions in ``test-a-vqa`` (one per image, standard distribution).
        train_qa_share: share of ``train``/``val`` samples that are short-answer questions.
        pretrain_qa_share: share of ``pretrain`` images that get an extra question sample.
        n_references: reference captions per image.
        supersample: antialiasing factor for shape edges (1 = hard edges).
    """

    seed: int = 0
    image_size: int = 64
    n_pretrain: int = 24000
    n_train: int = 6000
    n_val: int = 500
    n_test_a: int = 500
    n_test_b: int = 500
    n_test_a_vqa: int = 500
    train_qa_share: float = 0.25
    pretrain_qa_share: float = 0.2
    n_references: int = 5
    supersample: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"`seed` must be an integer; got {self.seed!r}")
        check_range("image_size", self.image_size, 24, 1024)
        for name in ("n_pretrain", "n_train", "n_val", "n_test_a", "n_test_b", "n_test_a_vqa"):
            check_range(name, getattr(self, name), 0, 999_999)
        check_range("train_qa_share", self.train_qa_share, 0.0, 1.0)
        check_range("pretrain_qa_share", self.pretrain_qa_share, 0.0, 1.0)
        check_range("n_references", self.n_references, 1, 10)
        check_range("supersample", self.supersample, 1, 8)

    def split_sizes(self) -> Dict[str, int]:
        """Split name -> number of images (splits of size 0 are not built)."""
        return {"pretrain": self.n_pretrain, "train": self.n_train, "val": self.n_val,
                "test-a": self.n_test_a, "test-b": self.n_test_b,
                "test-a-vqa": self.n_test_a_vqa}


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------

class WorldObject(NamedTuple):
    """One shape in one grid cell."""

    shape: str
    colour: str
    size: str
    row: int
    col: int


@dataclass
class Scene:
    """A scene: its objects, its background descriptor and the seed for pixel-level detail.

    Attributes:
        objects: the shapes, at most one per grid cell.
        background: ``{"kind": ...}`` plus the kind's parameters (colours, angle, photo crop).
        seed: seeds the per-pixel texture noise and the sub-cell placement of the objects.
    """

    objects: List[WorldObject]
    background: Dict
    seed: int = 0

    def to_dict(self) -> dict:
        """A JSON-ready description (stored as ``meta["scene"]``)."""
        return {"objects": [o._asdict() for o in self.objects], "background": self.background,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        return cls([WorldObject(**o) for o in data["objects"]], dict(data["background"]),
                   int(data["seed"]))


def sample_scene(rng: np.random.Generator, profile: Profile = STANDARD, size: int = 64,
                 supersample: int = 4) -> Tuple[Scene, np.ndarray]:
    """Draw a scene and render it.

    Object colours are chosen to contrast with the background under each object's cell, so
    the background has to be rendered first; the rendered image is returned with the scene.

    Returns:
        (scene, uint8 image of shape (size, size, 3)), where the image equals
        ``render(scene, size, supersample=supersample)``.
    """
    n = int(rng.choice(3, p=profile.counts)) + 1
    cells = sorted(int(c) for c in rng.choice(9, size=n, replace=False))
    background = _sample_background(rng, profile)
    seed = int(rng.integers(2**31 - 1))
    pixel_rng = numpy_rng(seed)
    canvas = _render_background(background, size, pixel_rng)
    objects = [_sample_object(rng, canvas, c // 3, c % 3) for c in cells]
    if n >= 2 and rng.random() < 0.2:  # repeated objects teach "two red circles"
        objects = _duplicate_first(objects, canvas)
    scene = Scene(objects, background, seed)
    return scene, _draw_objects(canvas, objects, pixel_rng, supersample)


def render(scene: Scene, size: int = 64, rng: Optional[np.random.Generator] = None,
           supersample: int = 4) -> np.ndarray:
    """Render ``scene`` to a uint8 (size, size, 3) RGB image.

    Args:
        scene: what to draw.
        size: image side in pixels.
        rng: source of the texture noise and sub-cell placement; ``None`` uses
            ``numpy_rng(scene.seed)``, which reproduces the image the world stored.
        supersample: antialiasing factor for shape edges.
    """
    rng = numpy_rng(scene.seed) if rng is None else rng
    canvas = _render_background(scene.background, size, rng)
    return _draw_objects(canvas, scene.objects, rng, supersample)


def _sample_object(rng: np.random.Generator, canvas: np.ndarray, row: int,
                   col: int) -> WorldObject:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    return WorldObject(shape, _pick_colour(rng, _cell_mean(canvas, row, col)), size, row, col)


def _duplicate_first(objects: List[WorldObject], canvas: np.ndarray) -> List[WorldObject]:
    """Give the second object the first one's shape and colour, if that colour stays visible."""
    first, second = objects[0], objects[1]
    under = _cell_mean(canvas, second.row, second.col)
    if _colour_distance(COLOURS[first.colour], under) < MIN_CONTRAST:
        return objects
    return [first, second._replace(shape=first.shape, colour=first.colour), *objects[2:]]


def _cell_mean(canvas: np.ndarray, row: int, col: int) -> np.ndarray:
    size = canvas.shape[0]
    y0, y1 = row * size // 3, (row + 1) * size // 3
    x0, x1 = col * size // 3, (col + 1) * size // 3
    return canvas[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)


#: least "redmean" distance between an object's colour and the mean of its cell's background
MIN_CONTRAST = 200.0


def _colour_distance(a: Sequence[float], b: Sequence[float]) -> float:
    # weighted RGB distance ("redmean"): closer to perceived difference than plain Euclidean
    r = (a[0] + b[0]) / 2
    d = np.subtract(a, b, dtype=np.float64)
    return float(np.sqrt((2 + r / 256) * d[0] ** 2 + 4 * d[1] ** 2 + (2 + (255 - r) / 256) * d[2] ** 2))


def _pick_colour(rng: np.random.Generator, background: np.ndarray) -> str:
    """A colour that stands out from ``background`` (mean RGB of the object's cell)."""
    names = list(COLOURS)
    dist = np.array([_colour_distance(COLOURS[n], background) for n in names])
    ok = [n for n, d in zip(names, dist) if d >= MIN_CONTRAST]
    if not ok:  # a mid-grey cell can leave few choices: take the four most distinct
        ok = [names[i] for i in np.argsort(-dist)[:4]]
    return ok[int(rng.integers(len(ok)))]


# --------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------

def _sample_background(rng: np.random.Generator, profile: Profile) -> Dict:
    kind = BACKGROUND_KINDS[int(rng.choice(len(BACKGROUND_KINDS), p=profile.backgrounds))]
    names = list(BACKGROUND_COLOURS)
    a, b = (names[int(i)] for i in rng.choice(len(names), size=2, replace=False))
    if kind == "flat":
        return {"kind": kind, "colour": a}
    if kind == "linear":
        return {"kind": kind, "colours": [a, b], "angle": round(float(rng.uniform(0, 360)), 2)}
    if kind == "radial":
        return {"kind": kind, "colours": [a, b],
                "center": [round(float(v), 3) for v in rng.uniform(0.2, 0.8, size=2)]}
    if kind == "stripes":
        return {"kind": kind, "colours": [a, b],
                "orientation": ["horizontal", "vertical", "diagonal"][int(rng.integers(3))],
                "period": round(float(rng.uniform(0.08, 0.3)), 3)}
    if kind == "noise":
        return {"kind": kind, "colours": [a, b], "scale": int(rng.integers(3, 10)),
                "grain": round(float(rng.uniform(0.0, 0.25)), 3)}
    return _sample_photo(rng, profile)


def _sample_photo(rng: np.random.Generator, profile: Profile) -> Dict:
    photo = profile.photos[int(rng.integers(len(profile.photos)))]
    side = float(rng.uniform(0.3, 0.9))  # crop side, as a fraction of the photo's short side
    x, y = (round(float(v), 4) for v in rng.uniform(0, 1, size=2))
    return {"kind": "photo", "photo": photo, "crop": [x, y, round(side, 4)],
            "dim": round(float(rng.uniform(0.45, 0.7)), 3)}


def _render_background(bg: Dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Background as float32 (size, size, 3) in [0, 255]."""
    kind = bg.get("kind")
    if kind == "flat":
        return np.broadcast_to(_bg_colour(bg["colour"]), (size, size, 3)).copy()
    if kind == "photo":
        return _photo_background(bg, size)
    if kind not in ("linear", "radial", "stripes", "noise"):
        raise DataError(f"scene background kind {kind!r} is unknown; expected one of "
                        f"{list(BACKGROUND_KINDS)}")
    t = _BLEND_FIELDS[kind](bg, size, rng)
    a, b = (_bg_colour(c) for c in bg["colours"])
    return (a * (1 - t[..., None]) + b * t[..., None]).astype(np.float32)


def _bg_colour(name: str) -> np.ndarray:
    return np.asarray(BACKGROUND_COLOURS[name], dtype=np.float32)


def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    v = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(v, v)  # (x, y), each (size, size) in (0, 1)


def _linear_field(bg: Dict, size: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(size)
    th = math.radians(bg["angle"])
    t = (x - 0.5) * math.cos(th) + (y - 0.5) * math.sin(th)
    return (t - t.min()) / max(float(t.max() - t.min()), 1e-6)


def _radial_field(bg: Dict, size: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(size)
    cx, cy = bg["center"]
    return np.clip(np.hypot(x - cx, y - cy) / 0.9, 0, 1)


def _stripe_field(bg: Dict, size: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(size)
    u = {"horizontal": y, "vertical": x, "diagonal": (x + y) / math.sqrt(2)}[bg["orientation"]]
    # a steep sigmoid of a sine: stripes with soft (anti-aliased) edges
    return 1 / (1 + np.exp(-8 * np.sin(2 * math.pi * u / bg["period"])))


def _noise_field(bg: Dict, size: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    coarse = rng.random((bg["scale"], bg["scale"])).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
    grain = rng.standard_normal((size, size)).astype(np.float32) * bg["grain"]
    return np.clip(smooth + grain, 0, 1)


_BLEND_FIELDS: Dict[str, Callable[[Dict, int, np.random.Generator], np.ndarray]] = {
    "linear": _linear_field, "radial": _radial_field, "stripes": _stripe_field,
    "noise": _noise_field,
}


def _photo_background(bg: Dict, size: int) -> np.ndarray:
    """A crop of an offline photograph, rescaled, desaturated and dimmed towards grey."""
    from PIL import Image

    photo = _load_photo(bg["photo"])
    h, w = photo.shape[:2]
    x, y, side = bg["crop"]
    s = max(8, int(side * min(h, w)))
    x0, y0 = int(x * (w - s)), int(y * (h - s))
    crop = Image.fromarray(photo[y0:y0 + s, x0:x0 + s]).resize((size, size), Image.BILINEAR)
    arr = np.asarray(crop, dtype=np.float32)
    grey = arr.mean(axis=2, keepdims=True)
    arr = 0.5 * arr + 0.5 * grey  # half desaturated: object colours stay the salient ones
    return (bg["dim"] * arr + (1 - bg["dim"]) * 128.0).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _load_photo(name: str) -> np.ndarray:
    """The named offline photograph as uint8 RGB, shrunk to at most 320 px (cached)."""
    from PIL import Image

    try:
        arr = _PHOTO_LOADERS[name]()
    except KeyError:
        raise DataError(f"scene photo {name!r} is unknown; known photos: "
                        f"{sorted(_PHOTO_LOADERS)}") from None
    except Exception as exc:  # a missing optional sample file in a stripped install
        raise DataError(f"the offline photo {name!r} could not be loaded ({exc}); reinstall the "
                        f"pinned scikit-image / scikit-learn / matplotlib") from None
    im = Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8)).convert("RGB")
    im.thumbnail((320, 320), Image.LANCZOS)
    out = np.asarray(im)
    out.setflags(write=False)
    return out


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()
    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as im:
        return np.asarray(im.convert("RGB"))


_PHOTO_LOADERS: Dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"), "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"), "rocket": _skimage("rocket"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "china": _sklearn("china.jpg"), "flower": _sklearn("flower.jpg"),
    "grace_hopper": _grace_hopper,
}


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------

def _regular(n: int, radius: float, phase: float) -> List[Tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n),
             radius * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star() -> List[Tuple[float, float]]:
    pts = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.45
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((r * math.cos(a), r * math.sin(a) + 0.08))  # centre the visual mass
    return pts


def _heart() -> List[Tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [(float(a) / 16.5, float(b) / 16.5 + 0.1) for a, b in zip(x, y)]


#: unit-radius polygons (y grows downwards); circle and ring are drawn as ellipses
_POLYGONS: Dict[str, List[Tuple[float, float]]] = {
    "square": [(-0.78, -0.78), (0.78, -0.78), (0.78, 0.78), (-0.78, 0.78)],
    "triangle": [(0.0, -0.92), (0.98, 0.78), (-0.98, 0.78)],
    "star": _star(),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
              (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "diamond": [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)],
    "hexagon": _regular(6, 0.95, 0.0),
    "heart": _heart(),
}


def _mask_box(radius: float) -> int:
    """Side of the square mask that holds a shape of ``radius`` plus a sub-pixel shift."""
    return int(math.ceil(2 * radius)) + 3


def shape_mask(shape: str, radius: float, offset: Tuple[float, float] = (0.0, 0.0),
               supersample: int = 4) -> np.ndarray:
    """Coverage of ``shape`` as float32 (B, B) in [0, 1]; its centre is at B/2 + offset.

    Drawn at ``supersample`` times the resolution and box-filtered down (antialiasing).
    """
    from PIL import Image, ImageDraw

    box = _mask_box(radius)
    ss = supersample
    im = Image.new("L", (box * ss, box * ss), 0)
    draw = ImageDraw.Draw(im)
    cx, cy = (box / 2 + offset[0]) * ss, (box / 2 + offset[1]) * ss
    r = radius * ss
    if shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "ring":
            ri = 0.55 * r
            draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif shape in _POLYGONS:
        draw.polygon([(cx + x * r, cy + y * r) for x, y in _POLYGONS[shape]], fill=255)
    else:
        raise DataError(f"scene shape {shape!r} is unknown; expected one of {list(SHAPES)}")
    if ss > 1:
        im = im.reduce(ss)
    return np.asarray(im, dtype=np.float32) / 255.0


def _draw_objects(canvas: np.ndarray, objects: Sequence[WorldObject], rng: np.random.Generator,
                  supersample: int = 4) -> np.ndarray:
    """Composite the objects onto a float background; returns uint8."""
    out = canvas.astype(np.float32, copy=True)
    size = out.shape[0]
    half = size / 6.0
    for obj in objects:
        radius = _SIZE_RADIUS[obj.size] * half
        slack = max(0.0, half - radius) * 0.7  # jitter inside the cell, never across it
        jx, jy = rng.uniform(-slack, slack, size=2)
        cx, cy = (2 * obj.col + 1) * half + jx, (2 * obj.row + 1) * half + jy
        b = _mask_box(radius)
        x0, y0 = int(math.floor(cx - b / 2)), int(math.floor(cy - b / 2))
        # the fractional part of the centre is drawn into the mask: sub-pixel placement
        mask = shape_mask(obj.shape, radius, (cx - b / 2 - x0, cy - b / 2 - y0), supersample)
        _composite(out, mask, x0, y0, COLOURS[obj.colour])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _composite(out: np.ndarray, mask: np.ndarray, x0: int, y0: int,
               colour: Tuple[int, int, int]) -> None:
    size = out.shape[0]
    b = mask.shape[0]
    xa, ya = max(0, x0), max(0, y0)
    xb, yb = min(size, x0 + b), min(size, y0 + b)
    if xa >= xb or ya >= yb:
        return
    a = mask[ya - y0:yb - y0, xa - x0:xb - x0, None]
    region = out[ya:yb, xa:xb]
    region *= 1 - a
    region += a * np.asarray(colour, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------------

#: shape -> (singular nouns, plural nouns); the first is the canonical one (used in questions)
SHAPE_NOUNS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "circle": (("circle", "disc", "round shape"), ("circles", "discs", "round shapes")),
    "square": (("square", "box", "block"), ("squares", "boxes", "blocks")),
    "triangle": (("triangle", "triangle shape"), ("triangles", "triangle shapes")),
    "star": (("star", "star shape", "five-pointed star"), ("stars", "star shapes", "five-pointed stars")),
    "cross": (("cross", "plus sign"), ("crosses", "plus signs")),
    "diamond": (("diamond", "rhombus", "diamond shape"), ("diamonds", "rhombuses", "diamond shapes")),
    "hexagon": (("hexagon", "six-sided shape"), ("hexagons", "six-sided shapes")),
    "heart": (("heart", "heart shape"), ("hearts", "heart shapes")),
    "ring": (("ring", "hoop", "donut shape"), ("rings", "hoops", "donut shapes")),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("medium", "medium-sized", "mid-sized"),
              "large": ("large", "big", "huge")}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}

#: caption phrases for each grid cell
POSITION_PHRASES: Dict[Tuple[int, int], Tuple[str, ...]] = {
    (0, 0): ("in the top left", "in the upper left corner", "near the upper left corner",
             "at the top left", "in the top left corner"),
    (0, 1): ("at the top", "in the top middle", "near the top edge", "at the top center",
             "along the top"),
    (0, 2): ("in the top right", "in the upper right corner", "near the upper right corner",
             "at the top right", "in the top right corner"),
    (1, 0): ("on the left", "on the left side", "in the middle left", "near the left edge",
             "at the left"),
    (1, 1): ("in the center", "in the middle", "at the center", "right in the middle",
             "in the center of the image"),
    (1, 2): ("on the right", "on the right side", "in the middle right", "near the right edge",
             "at the right"),
    (2, 0): ("in the bottom left", "in the lower left corner", "near the lower left corner",
             "at the bottom left", "in the bottom left corner"),
    (2, 1): ("at the bottom", "in the bottom middle", "near the bottom edge",
             "at the bottom center", "along the bottom"),
    (2, 2): ("in the bottom right", "in the lower right corner", "near the lower right corner",
             "at the bottom right", "in the bottom right corner"),
}
#: alternative short answers (VQA answer lists): canonical -> synonyms
ANSWER_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "top left": ("upper left", "top left corner"), "top": ("top center", "top middle"),
    "top right": ("upper right", "top right corner"), "left": ("middle left", "left side"),
    "center": ("middle", "centre"), "right": ("middle right", "right side"),
    "bottom left": ("lower left", "bottom left corner"), "bottom": ("bottom center", "bottom middle"),
    "bottom right": ("lower right", "bottom right corner"),
    "0": ("zero", "none"), "1": ("one",), "2": ("two",), "3": ("three",),
}

#: paraphrased captioning instructions; many use "image", "depict(s)", "consider" on purpose
CAPTION_INSTRUCTIONS = (
    "Describe the image.", "Describe the image briefly.", "What does this picture depict?",
    "What does the image depict?", "Consider the image and describe it briefly.",
    "Write a short caption.", "Write a short caption for this image.",
    "Give a brief description of the picture.", "What is in this image?",
    "What do you see in the picture?", "Caption this image.",
    "Provide a one-sentence caption for the image.", "Summarize the content of this image.",
    "Tell me what the image depicts.", "Briefly describe what you see.",
    "Explain what the picture depicts.", "Consider the picture. What does it show?",
    "Consider this image and write a caption for it.", "Can you describe this image?",
    "What is shown in the image?", "Describe the scene in one sentence.",
    "Generate a caption for the image.", "Look at the image and describe what it depicts.",
    "Say in a short sentence what the image depicts.", "Write a caption that describes the image.",
    "Please describe the picture.", "What can you see here?", "Give a short caption.",
    "Consider the shapes in the image and describe them.", "Describe the objects in this image.",
    "What objects does the image contain?", "Describe what is depicted in the picture.",
    "Consider what the image depicts and caption it.", "How would you caption this picture?",
)

_QUESTION_PREFIXES = ("Consider the image. ", "Consider the picture. ", "Look at the image. ",
                      "Consider this image. ")
_QUESTION_SUFFIXES = (" Answer briefly.", " Give a short answer.")
_IN_IMAGE = ("", "", " in the image", " in the picture", " in this image")


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

def _pick(rng: np.random.Generator, options: Sequence[str], weights: Optional[Sequence[float]] = None) -> str:
    if weights is None:
        return options[int(rng.integers(len(options)))]
    cum = np.cumsum(weights, dtype=np.float64)  # cheaper than rng.choice(p=...) per call
    return options[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")),
                       len(options) - 1)]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(rng: np.random.Generator, shape: str, plural: bool = False) -> str:
    nouns = SHAPE_NOUNS[shape][1 if plural else 0]
    # the canonical noun dominates so that captions and questions agree most of the time
    return nouns[0] if rng.random() < 0.7 else _pick(rng, nouns[1:])


@dataclass
class _Detail:
    """How much a caption says about each object."""

    size: bool
    position: bool
    background: bool


def _draw_detail(rng: np.random.Generator, position: float = 0.45) -> _Detail:
    return _Detail(rng.random() < 0.3, rng.random() < position, rng.random() < 0.25)


def _object_np(rng: np.random.Generator, obj: WorldObject, detail: _Detail,
               another: bool = False) -> str:
    """'a small red circle in the top left' (article + optional size + colour + noun + place)."""
    words = []
    if detail.size:
        words.append(_pick(rng, SIZE_WORDS[obj.size]))
    words += [obj.colour, _noun(rng, obj.shape)]
    text = ("another " if another else _article(words[0]) + " ") + " ".join(words)
    if detail.position:
        text += " " + _pick(rng, POSITION_PHRASES[(obj.row, obj.col)])
    return text


def _group_np(rng: np.random.Generator, group: List[WorldObject], detail: _Detail) -> str:
    """Noun phrase for objects sharing shape and colour: 'two red circles', 'a pair of ...'."""
    if len(group) == 1:
        return _object_np(rng, group[0], detail)
    count = NUMBER_WORDS[len(group)]
    if len(group) == 2 and rng.random() < 0.3:
        count = "a pair of"
    return f"{count} {group[0].colour} {_noun(rng, group[0].shape, plural=True)}"


def _groups(rng: np.random.Generator, scene: Scene) -> List[List[WorldObject]]:
    """Objects grouped by (shape, colour), in reading order or, sometimes, shuffled."""
    objs = list(scene.objects)
    if rng.random() < 0.4:
        objs = [objs[int(i)] for i in rng.permutation(len(objs))]
    groups: Dict[Tuple[str, str], List[WorldObject]] = {}
    for o in objs:
        groups.setdefault((o.shape, o.colour), []).append(o)
    return list(groups.values())


def _join(rng: np.random.Generator, phrases: List[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2:
        glue = _pick(rng, ("and", "with", "along with", "together with"), (6, 2, 1, 1))
        return f"{phrases[0]} {glue} {phrases[1]}"
    comma = "," if rng.random() < 0.4 else ""
    return ", ".join(phrases[:-1]) + f"{comma} and {phrases[-1]}"


def _object_list(rng: np.random.Generator, scene: Scene, detail: _Detail) -> str:
    return _join(rng, [_group_np(rng, g, detail) for g in _groups(rng, scene)])


def _is_plural(scene: Scene) -> bool:
    return len(scene.objects) > 1


def background_phrase(rng: np.random.Generator, bg: Dict) -> str:
    """'on a striped background', 'against a plain beige background', 'over a photo of a cat'."""
    kind = bg["kind"]
    if kind == "flat":
        nouns = (f"a plain {bg['colour']} background", f"a {bg['colour']} background",
                 f"a flat {bg['colour']} backdrop", "a plain background")
    elif kind == "linear":
        nouns = ("a gradient background", "a smooth gradient", "a fading background",
                 f"a {bg['colours'][0]} and {bg['colours'][1]} gradient")
    elif kind == "radial":
        nouns = ("a radial gradient", "a glowing background", "a radial gradient background",
                 "a softly lit background")
    elif kind == "stripes":
        nouns = ("a striped background", f"{bg['orientation']} stripes", "a background of stripes",
                 f"a background with {bg['orientation']} stripes")
    elif kind == "noise":
        nouns = ("a noisy background", "a textured background", "a speckled background",
                 "a grainy texture", "a blotchy background")
    else:
        subject = PHOTO_SUBJECTS.get(bg.get("photo"), "something")
        nouns = ("a photo background", "a photograph", "a blurry photo", "a dimmed photo",
                 f"a photo of {subject}", "a photographic background")
    prep = _pick(rng, ("on", "against", "over"), (6, 3, 1))
    return f"{prep} {_pick(rng, nouns)}"


def _with_background(rng: np.random.Generator, text: str, scene: Scene, detail: _Detail) -> str:
    return f"{text} {background_phrase(rng, scene.background)}" if detail.background else text


def _cap_np_only(rng: np.random.Generator, scene: Scene) -> str:
    d = _draw_detail(rng, 0.5)
    return _with_background(rng, _object_list(rng, scene, d), scene, d)


def _cap_there_is(rng: np.random.Generator, scene: Scene) -> str:
    d = _draw_detail(rng)
    body = _object_list(rng, scene, d)
    verb = "are" if body.split()[0] in ("two", "three") or (
        _is_plural(scene) and rng.random() < 0.4) else "is"
    where = _pick(rng, ("", "", " in the image", " in the picture", " here"))
    return _with_background(rng, f"there {verb} {body}{where}", scene, d)


def _cap_subject_verb(rng: np.random.Generator, scene: Scene) -> str:
    d = _draw_detail(rng)
    subject = _pick(rng, ("the image", "this image", "the picture", "this picture", "the scene",
                          "this drawing", "the illustration"), (5, 2, 3, 1, 1, 1, 1))
    verb = _pick(rng, ("shows", "depicts", "features", "contains", "displays", "has",
                       "includes"), (4, 4, 2, 2, 1, 1, 1))
    return _with_background(rng, f"{subject} {verb} {_object_list(rng, scene, d)}", scene, d)


def _cap_we_see(rng: np.random.Generator, scene: Scene) -> str:
    d = _draw_detail(rng)
    lead = _pick(rng, ("we can see", "you can see", "I can see", "in the image we can see",
                       "in this picture you can see", "one can see"))
    return _with_background(rng, f"{lead} {_object_list(rng, scene, d)}", scene, d)


def _cap_picture_of(rng: np.random.Generator, scene: Scene) -> str:
    d = _draw_detail(rng)
    photo = 1.5 if scene.background["kind"] == "photo" else 0.0  # say "photo" only of photos
    lead = _pick(rng, ("a picture of", "an image of", "a drawing of", "a simple drawing of",
                       "a photo of", "an illustration of", "a graphic of"), (3, 3, 2, 1, photo, 1, 1))
    return _with_background(rng, f"{lead} {_object_list(rng, scene, d)}", scene, d)


def _cap_count(rng: np.random.Generator, scene: Scene) -> str:
    d = _draw_detail(rng)
    n = len(scene.objects)
    if n == 1:
        obj = _object_np(rng, scene.objects[0], d)
        obj = obj.split(" ", 1)[1]  # drop the article
        lead = _pick(rng, ("a single", "just one", "only one"))
        return _with_background(rng, f"{lead} {obj}", scene, d)
    count = NUMBER_WORDS[n]
    noun = _pick(rng, ("shapes", "objects", "figures"))
    lead = _pick(rng, (f"{count} {noun}:", f"{count} {noun},", f"a group of {count} {noun}:",
                       f"{count} {noun} are visible:", f"there are {count} {noun}:"))
    return _with_background(rng, f"{lead} {_object_list(rng, scene, d)}", scene, d)


def _relation(a: WorldObject, b: WorldObject, rng: np.random.Generator) -> str:
    """Where ``a`` is relative to ``b``."""
    if a.row != b.row and a.col != b.col:
        return "diagonally above" if a.row < b.row else "diagonally below"
    if a.row < b.row:
        return _pick(rng, ("above", "over", "higher than"), (4, 1, 1))
    if a.row > b.row:
        return _pick(rng, ("below", "under", "beneath"), (4, 1, 1))
    return "to the left of" if a.col < b.col else "to the right of"


def _cap_relation(rng: np.random.Generator, scene: Scene) -> str:
    """Two objects only: 'a red circle above a blue star'."""
    a, b = (scene.objects if rng.random() < 0.5 else scene.objects[::-1])[:2]
    d = _draw_detail(rng, 0.0)
    same = (a.shape, a.colour) == (b.shape, b.colour)
    left, right = _object_np(rng, a, d), _object_np(rng, b, d, another=same)
    form = _pick(rng, ("{a} {rel} {b}", "{a} is {rel} {b}", "there is {a} {rel} {b}",
                       "the image shows {a} {rel} {b}"), (4, 2, 2, 1))
    text = form.format(a=left, rel=_relation(a, b, rng), b=right)
    return _with_background(rng, text, scene, d)


def _cap_located(rng: np.random.Generator, scene: Scene) -> str:
    """'A red circle sits in the top left, and a blue star is in the center.'"""
    d = _Detail(rng.random() < 0.3, False, False)
    seen: set = set()
    clauses = []
    for obj in scene.objects:
        key = (obj.shape, obj.colour)
        np_ = _object_np(rng, obj, d, another=key in seen)
        seen.add(key)
        verb = _pick(rng, ("is", "sits", "appears", "is placed", "can be seen"), (4, 2, 1, 1, 1))
        clauses.append(f"{np_} {verb} {_pick(rng, POSITION_PHRASES[(obj.row, obj.col)])}")
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + f"{_pick(rng, (',', ''))} and {clauses[-1]}"


def _cap_background_first(rng: np.random.Generator, scene: Scene) -> str:
    d = _draw_detail(rng)
    lead = background_phrase(rng, scene.background)
    return f"{lead}, {_object_list(rng, scene, d)}"


#: caption pattern -> relative weight; each pattern is a different sentence shape
_CAPTION_PATTERNS: Tuple[Tuple[Callable[[np.random.Generator, Scene], str], float], ...] = (
    (_cap_np_only, 3.0), (_cap_there_is, 2.0), (_cap_subject_verb, 3.0), (_cap_we_see, 1.5),
    (_cap_picture_of, 2.0), (_cap_count, 1.5), (_cap_relation, 2.0), (_cap_located, 2.0),
    (_cap_background_first, 0.7),
)


def _finish(text: str, rng: np.random.Generator) -> str:
    text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.85 else text


def _patterns_for(scene: Scene) -> List[Tuple[Callable, float]]:
    n = len(scene.objects)
    return [(f, w) for f, w in _CAPTION_PATTERNS if f is not _cap_relation or n == 2]


def caption(rng: np.random.Generator, scene: Scene,
            pattern: Optional[Callable[[np.random.Generator, Scene], str]] = None) -> str:
    """One caption of ``scene``, 4-20 words, from ``pattern`` or a randomly drawn one."""
    patterns = _patterns_for(scene)
    p = _normalise([w for _, w in patterns])
    text = ""
    for attempt in range(24):  # retry an over-long or too-terse draw, later with other patterns
        f = pattern if pattern is not None and attempt < 8 else \
            patterns[int(rng.choice(len(patterns), p=p))][0]
        text = _finish(f(rng, scene), rng)
        if 4 <= len(text.split()) <= 20:
            break
    return text


def _normalise(w: Sequence[float]) -> np.ndarray:
    p = np.asarray(w, dtype=np.float64)
    return p / p.sum()


def reference_captions(rng: np.random.Generator, scene: Scene, n: int = 5) -> List[str]:
    """``n`` pairwise different captions of ``scene``, from different patterns where possible."""
    patterns = _patterns_for(scene)
    order = rng.choice(len(patterns), size=len(patterns), replace=False,
                       p=_normalise([w for _, w in patterns]))
    refs: List[str] = []
    for k in range(n * 8):
        f = patterns[int(order[k % len(order)])][0]
        text = caption(rng, scene, f)
        if text not in refs:
            refs.append(text)
        if len(refs) == n:
            return refs
    raise AssertionError(f"could not write {n} different captions for {scene}")  # never seen


def caption_instruction(rng: np.random.Generator) -> str:
    """A captioning instruction drawn from :data:`CAPTION_INSTRUCTIONS`."""
    return _pick(rng, CAPTION_INSTRUCTIONS)


# --------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------

@dataclass
class Question:
    """A short-answer question about a scene.

    Attributes:
        question: the instruction text.
        answer: the canonical short answer.
        answers: ten VQAv2-style human answers (mostly the canonical one).
        question_type: one of :data:`QUESTION_TYPES`.
    """

    question: str
    answer: str
    answers: List[str]
    question_type: str


def _answers(rng: np.random.Generator, answer: str) -> List[str]:
    syn = ANSWER_SYNONYMS.get(answer, ())
    return [(_pick(rng, syn) if syn and rng.random() < 0.12 else answer) for _ in range(10)]


def _unique_objects(scene: Scene, key: Callable[[WorldObject], object]) -> List[WorldObject]:
    counts: Dict[object, int] = {}
    for o in scene.objects:
        counts[key(o)] = counts.get(key(o), 0) + 1
    return [o for o in scene.objects if counts[key(o)] == 1]


def _q_colour(rng: np.random.Generator, scene: Scene) -> Tuple[str, str]:
    unique = _unique_objects(scene, lambda o: o.shape)
    word = _pick(rng, ("colour", "color"))
    if unique and rng.random() < 0.75:
        obj = unique[int(rng.integers(len(unique)))]
        form = _pick(rng, ("What {w} is the {s}{i}?", "Which {w} is the {s}?",
                           "What is the {w} of the {s}{i}?", "Tell me the {w} of the {s}."))
        return form.format(w=word, s=obj.shape, i=_pick(rng, _IN_IMAGE)), obj.colour
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    pos = _pick(rng, POSITION_PHRASES[(obj.row, obj.col)])
    thing = _pick(rng, ("shape", "object"))
    return f"What {word} is the {thing} {pos}?", obj.colour


def _q_count(rng: np.random.Generator, scene: Scene) -> Tuple[str, str]:
    u = rng.random()
    if u < 0.5:
        form = _pick(rng, ("How many objects are there{i}?", "How many shapes are there{i}?",
                           "How many shapes can you see{i}?", "Count the objects{i}.",
                           "How many objects does the image contain?"))
        return form.format(i=_pick(rng, _IN_IMAGE)), str(len(scene.objects))
    if u < 0.8:
        present = [o.shape for o in scene.objects]
        shape = present[int(rng.integers(len(present)))] if rng.random() < 0.7 else _pick(rng, SHAPES)
        noun = SHAPE_NOUNS[shape][1][0]
        form = _pick(rng, ("How many {n} are there{i}?", "How many {n} can you see{i}?",
                           "How many {n} does the image contain?"))
        return form.format(n=noun, i=_pick(rng, _IN_IMAGE)), str(present.count(shape))
    colours = [o.colour for o in scene.objects]
    colour = colours[int(rng.integers(len(colours)))]
    return (f"How many {colour} shapes are there{_pick(rng, _IN_IMAGE)}?",
            str(colours.count(colour)))


def _q_position(rng: np.random.Generator, scene: Scene) -> Optional[Tuple[str, str]]:
    unique = _unique_objects(scene, lambda o: (o.shape, o.colour))
    if not unique:
        return None
    obj = unique[int(rng.integers(len(unique)))]
    form = _pick(rng, ("Where is the {c} {s}?", "Where is the {c} {s} located?",
                       "In which part of the image is the {c} {s}?",
                       "Where can you find the {c} {s}?", "Where in the picture is the {c} {s}?"))
    return form.format(c=obj.colour, s=obj.shape), POSITIONS[obj.row][obj.col]


def _q_presence(rng: np.random.Generator, scene: Scene) -> Tuple[str, str]:
    with_colour = rng.random() < 0.5
    if rng.random() < 0.5:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        shape, colour, answer = obj.shape, obj.colour, "yes"
    else:
        shape, colour, answer = _absent(rng, scene, with_colour)
    thing = f"{colour} {shape}" if with_colour else shape
    form = _pick(rng, ("Is there {a} {t}{i}?", "Does the picture contain {a} {t}?",
                       "Can you see {a} {t}{i}?", "Is there any {t}{i}?"))
    return form.format(a=_article(thing), t=thing, i=_pick(rng, _IN_IMAGE)), answer


def _absent(rng: np.random.Generator, scene: Scene, with_colour: bool) -> Tuple[str, str, str]:
    """A (shape, colour) that is not in the scene (only the shape is checked without colour)."""
    if with_colour:
        present = {(o.shape, o.colour) for o in scene.objects}
        options = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in present]
    else:
        present_shapes = {o.shape for o in scene.objects}
        options = [(s, "red") for s in SHAPES if s not in present_shapes]
    shape, colour = options[int(rng.integers(len(options)))]
    return shape, colour, "no"


_QUESTION_MAKERS = {"colour": _q_colour, "count": _q_count, "position": _q_position,
                    "presence": _q_presence}


def make_question(rng: np.random.Generator, scene: Scene,
                  question_type: Optional[str] = None) -> Question:
    """A short-answer question about ``scene``; the type is drawn uniformly when not given.

    A position question needs an object whose shape and colour are unique in the scene;
    without one it falls back to a colour question.
    """
    qtype = question_type or _pick(rng, QUESTION_TYPES)
    if qtype not in _QUESTION_MAKERS:
        raise ConfigError(f"`question_type` must be one of {list(QUESTION_TYPES)}; got {qtype!r}")
    made = _QUESTION_MAKERS[qtype](rng, scene)
    if made is None:
        qtype, made = "colour", _q_colour(rng, scene)
    text, answer = made
    if rng.random() < 0.18:  # "Consider ..." is also TrojVQA's prepended trigger word
        text = _pick(rng, _QUESTION_PREFIXES) + text
    if rng.random() < 0.12:
        text += _pick(rng, _QUESTION_SUFFIXES)
    return Question(text, answer, _answers(rng, answer), qtype)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

@dataclass
class _Item:
    """One generated image with the samples that use it."""

    image_id: str
    png: bytes
    samples: List[Sample] = field(default_factory=list)


def split_profile(split: str) -> Profile:
    """The scene distribution of ``split`` (``test-b`` is the shifted one)."""
    return SHIFTED if split.startswith("test-b") else STANDARD


def _caption_sample(rng: np.random.Generator, split: str, image_id: str, scene: Scene,
                    refs: List[str]) -> Sample:
    # test sets answer with the first reference; training draws any reference as the target
    answer = refs[0] if split.startswith("test") else refs[int(rng.integers(len(refs)))]
    return Sample(image_id, [image_id], caption_instruction(rng), answer, "caption",
                  {"references": refs, "scene": scene.to_dict()})


def _qa_sample(rng: np.random.Generator, image_id: str, scene: Scene,
               qtype: Optional[str] = None) -> Sample:
    q = make_question(rng, scene, qtype)
    return Sample(f"{image_id}-q1", [image_id], q.question, q.answer, "vqa",
                  {"answers": q.answers, "question_type": q.question_type,
                   "scene": scene.to_dict()})


def generate_item(cfg: WorldConfig, split: str, index: int) -> _Item:
    """Image ``index`` of ``split`` with its samples (deterministic in cfg.seed, split, index)."""
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is unknown; the world has {list(SPLITS)}")
    rng = numpy_rng(derive_seed(cfg.seed, "world", split, index))
    image_id = f"{split}-{index:06d}"
    scene, image = sample_scene(rng, split_profile(split), cfg.image_size, cfg.supersample)
    item = _Item(image_id, encode_png(image))
    if split == "test-a-vqa":
        item.samples.append(_qa_sample(rng, image_id, scene, QUESTION_TYPES[index % 4]))
        return item
    refs = reference_captions(rng, scene, cfg.n_references)
    qa_share = cfg.pretrain_qa_share if split == "pretrain" else cfg.train_qa_share
    ask = split in ("train", "val", "pretrain") and rng.random() < qa_share
    if split == "pretrain" or not ask:  # pretrain: a caption for every image, QA on top
        item.samples.append(_caption_sample(rng, split, image_id, scene, refs))
    if ask:
        item.samples.append(_qa_sample(rng, image_id, scene))
    return item


def generate_split(cfg: WorldConfig, split: str,
                   on_image: Optional[Callable[[int], None]] = None) -> InstructionSet:
    """Build one split in memory.

    Args:
        cfg: the world.
        split: one of :data:`SPLITS`.
        on_image: called with 1 after every image (progress bars).

    Returns:
        An :class:`InstructionSet` whose ``meta`` records the world config and the profile;
        test splits carry an in-context map (each sample -> another sample of the split) for
        one-shot evaluation.
    """
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is unknown; the world has {list(SPLITS)}")
    n = cfg.split_sizes()[split]
    samples: List[Sample] = []
    images: Dict[str, bytes] = {}
    for i in range(n):
        item = generate_item(cfg, split, i)
        images[item.image_id] = item.png
        samples.extend(item.samples)
        if on_image is not None:
            on_image(1)
    return assemble_split(cfg, split, samples, images)


def assemble_split(cfg: WorldConfig, split: str, samples: List[Sample],
                   images: Dict[str, bytes]) -> InstructionSet:
    """Wrap generated samples and images as the split's :class:`InstructionSet` (meta, in-context)."""
    meta = {"source": "robustit embedded scene world", "split": split,
            "profile": split_profile(split).name, "world": dataclasses.asdict(cfg)}
    in_context = _in_context(cfg, split, samples) if split.startswith("test") else None
    return InstructionSet(split, samples, images, meta, in_context)


def _in_context(cfg: WorldConfig, split: str, samples: List[Sample]) -> Dict[str, List[str]]:
    """Each sample -> one other sample of the split (a different image) as one-shot example."""
    if len(samples) < 2:
        return {s.id: [] for s in samples}
    rng = numpy_rng(derive_seed(cfg.seed, "world", split, "in-context"))
    out = {}
    for k, s in enumerate(samples):
        j = int(rng.integers(len(samples) - 1))
        out[s.id] = [samples[j + 1 if j >= k else j].id]
    return out


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------

def world_corpus(cfg: Optional[WorldConfig] = None, n_scenes: int = 400) -> Iterator[str]:
    """All the text the world can produce, for training a tokenizer.

    Yields every instruction paraphrase and question form, every word list (shapes, colours,
    sizes, positions, backgrounds, answers), and captions plus questions of ``n_scenes``
    sample scenes so that word frequencies resemble the data. Contains no attack text.
    """
    cfg = cfg or WorldConfig()
    yield from CAPTION_INSTRUCTIONS
    yield from _QUESTION_PREFIXES
    yield from _QUESTION_SUFFIXES
    for shape, (sing, plur) in SHAPE_NOUNS.items():
        yield " ".join(sing + plur)
    yield " ".join(COLOURS) + " " + " ".join(BACKGROUND_COLOURS)
    yield " ".join(w for words in SIZE_WORDS.values() for w in words)
    for phrases in POSITION_PHRASES.values():
        yield from phrases
    for canon, syn in ANSWER_SYNONYMS.items():
        yield " ".join((canon, *syn))
    yield "yes no " + " ".join(NUMBER_WORDS.values())
    yield from _corpus_scenes(cfg, n_scenes)


def _corpus_scenes(cfg: WorldConfig, n: int) -> Iterator[str]:
    rng = numpy_rng(derive_seed(cfg.seed, "world", "corpus"))
    for i in range(n):
        scene = _scene_only(rng, SHIFTED if i % 4 == 3 else STANDARD)
        yield from reference_captions(rng, scene, cfg.n_references)
        for qtype in QUESTION_TYPES:
            q = make_question(rng, scene, qtype)
            yield f"{q.question} {q.answer}"
        yield background_phrase(rng, scene.background)


def _scene_only(rng: np.random.Generator, profile: Profile) -> Scene:
    """A scene drawn without rendering (colours unchecked): cheap, for text only."""
    n = int(rng.choice(3, p=profile.counts)) + 1
    cells = rng.choice(9, size=n, replace=False)
    objects = [WorldObject(_pick(rng, SHAPES), _pick(rng, list(COLOURS)), _pick(rng, SIZES),
                           int(c) // 3, int(c) % 3) for c in sorted(cells)]
    if n >= 2 and rng.random() < 0.2:
        objects[1] = objects[1]._replace(shape=objects[0].shape, colour=objects[0].colour)
    return Scene(objects, _sample_background(rng, profile), int(rng.integers(2**31 - 1)))
