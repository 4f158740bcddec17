"""In-memory instruction data: one :class:`Sample` per instruction-response pair.

Images are kept as encoded bytes (PNG/JPEG, as stored on disk) keyed by image id and decoded on
demand, so that a poisoning step can copy untouched images byte-for-byte and a 100k-sample set
does not sit decoded in memory.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ..errors import DataError

#: images larger than this many pixels are refused (a decompression-bomb guard).
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass
class Sample:
    """One instruction-tuning triplet (x, t, y) plus bookkeeping.

    Attributes:
        id: unique record id (MIMIC-IT ``INS_ID``).
        image_ids: ids of the images this sample shows, in order (usually one).
        instruction: the user's instruction / question t.
        answer: the response y.
        task: ``"caption"`` or ``"vqa"``.
        meta: everything else (reference captions, question type, VQA answers, rel_ins_ids, ...).
    """

    id: str
    image_ids: List[str]
    instruction: str
    answer: str
    task: str = "caption"
    meta: Dict = field(default_factory=dict)


@dataclass
class InstructionSet:
    """A split of instruction data: samples plus the encoded images they reference.

    Attributes:
        name: split name (``train``, ``test-a``, ...).
        samples: the records, in file order.
        images: image id -> encoded image bytes (PNG or JPEG).
        meta: the file's ``meta`` block (MIMIC-IT) plus provenance.
        in_context: optional sample id -> ids of in-context example samples (MIMIC-IT ``_train.json``).
    """

    name: str
    samples: List[Sample]
    images: Dict[str, bytes]
    meta: Dict = field(default_factory=dict)
    in_context: Optional[Dict[str, List[str]]] = None

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, image_id: str) -> np.ndarray:
        """Decode one image to ``uint8`` (H, W, 3) RGB."""
        try:
            data = self.images[image_id]
        except KeyError:
            raise DataError(f"{self.name}: image id {image_id!r} is referenced but not present "
                            f"in the images file; add it or remove the records that use it") from None
        return decode_image(data, where=f"{self.name}: image {image_id!r}")

    def by_id(self) -> Dict[str, Sample]:
        return {s.id: s for s in self.samples}

    def head(self, n: int) -> "InstructionSet":
        """The first ``n`` samples, with only the images and in-context entries they use."""
        return self.subset(self.samples[:n])

    def subset(self, samples: List[Sample]) -> "InstructionSet":
        """A set of ``samples`` (drawn from this one), with only the images and in-context
        entries they use; name and meta are kept."""
        used = {i for s in samples for i in s.image_ids}
        keep = {s.id for s in samples}
        in_context = None if self.in_context is None else {
            k: [i for i in v if i in keep] for k, v in self.in_context.items() if k in keep}
        return InstructionSet(self.name, samples, {k: v for k, v in self.images.items() if k in used},
                              dict(self.meta), in_context)


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """Decode PNG/JPEG bytes to uint8 (H, W, 3). Raises DataError naming ``where``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(f"{where} is {w}x{h} pixels, over the limit of {MAX_IMAGE_PIXELS}; "
                                f"resize it before use")
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DataError(f"{where} could not be decoded ({type(exc).__name__}: {exc}); "
                        f"the file is missing or corrupt: re-create it or drop the record "
                        f"(or pass --skip-invalid)") from None


def encode_png(image: np.ndarray) -> bytes:
    """Encode uint8 (H, W, 3) as PNG bytes (lossless, deterministic)."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, where: str = "image") -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except Exception:
        raise DataError(f"{where}: not valid base64; the images file is corrupt, re-create it") from None
