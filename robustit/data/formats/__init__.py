"""Loaders for public instruction / evaluation data on local disk (nothing is downloaded).

One module per format, each registering a :class:`DataFormat` in :data:`FORMATS`:

- ``mimicit`` (:mod:`.mimicit`): MIMIC-IT split folders, or ``X_instructions.json`` with images
  in ``.json`` or ``.parquet``;
- ``karpathy`` / ``coco-karpathy`` / ``flickr30k-karpathy`` (:mod:`.karpathy`):
  ``dataset_coco.json`` / ``dataset_flickr30k.json`` and an image folder;
- ``vqav2`` (:mod:`.vqav2`): VQAv2 questions + annotations JSON and a COCO image folder;
- ``llava`` (:mod:`.llava`): LLaVA conversation JSON and an image folder.

``load_dataset(path, format="auto", split=..., images=..., limit=..., skip_invalid=...)``
returns the project's :class:`~robustit.data.records.InstructionSet` (encoded image bytes as
found on disk), so poisoning, training and evaluation work on any of them;
``convert_dataset`` writes it in the MIMIC-IT layout (+ COCO caption ground truth).
"""

from . import karpathy, llava, mimicit, vqav2  # noqa: F401  (register the formats)
from .base import FORMATS, DataFormat, LoadOptions
from .loader import convert_dataset, detect_format, formats, identity, load_dataset

__all__ = ["FORMATS", "DataFormat", "LoadOptions", "convert_dataset", "detect_format", "formats",
           "identity", "load_dataset"]
