"""MIMIC-IT images stored as parquet (the public release's ``LA.parquet``, ``CGD.parquet``, ...).

The release writes ``pandas.DataFrame.from_dict({IMG_ID: base64}, orient="index",
columns=["base64"]).to_parquet(...)``: the image id is the (unnamed) pandas index, stored as
column ``__index_level_0__`` and named in the file's pandas metadata, and the images are base64
strings in column ``base64``. Files with an ``image_id``/``id`` column, and raw image bytes (or
``{"bytes": ...}`` structs, as Hugging Face writes them) instead of base64, are read too.

Only pyarrow is needed (not pandas), imported when a parquet file is read; rows are streamed in
batches and only the ids a split uses are kept, so a shared multi-GB file is never held whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

from ...errors import DataError
from ..records import b64encode

#: the version this code is tested with (pin it in requirements.lock)
PYARROW_PIN = "pyarrow==26.0.1"
ID_COLUMNS = ("image_id", "id", "key", "img_id", "__index_level_0__")
DATA_COLUMNS = ("base64", "image", "bytes", "img")


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading parquet images needs pyarrow, which is not installed: "
                        f"pip install {PYARROW_PIN} (or convert the images to NAME.json)") from None
    return pq


def columns(schema, path: Path) -> Tuple[str, str]:
    """(image id column, image column) of a parquet schema; DataError naming what is there."""
    names = list(schema.names)
    index = [c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
    id_col = next((c for c in index + list(ID_COLUMNS) if c in names), None)
    data_col = next((c for c in DATA_COLUMNS if c in names and c != id_col), None)
    rest = [n for n in names if n != id_col]
    if data_col is None and len(rest) == 1:
        data_col = rest[0]
    if id_col is None or data_col is None:
        raise DataError(f"{path}: parquet columns {names}: expected an image id column (the "
                        f"pandas index, as MIMIC-IT writes it, or 'image_id') and a 'base64' "
                        f"column; is this a MIMIC-IT images parquet?")
    return id_col, data_col


def _as_base64(value: Any) -> Optional[Any]:
    """A cell as the base64 string the MIMIC-IT reader expects (other types pass through)."""
    if isinstance(value, dict) and "bytes" in value:
        value = value["bytes"]
    return b64encode(value) if isinstance(value, (bytes, bytearray)) else value


def read_images(path: Path, wanted: Iterable[str]) -> Dict[str, Any]:
    """``{IMG_ID: base64}`` for the ids in ``wanted`` that the parquet file holds."""
    pq = _pyarrow_parquet()
    wanted = set(wanted)
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise DataError(f"images file {path} does not exist; fix --images") from None
    except Exception as exc:  # pyarrow raises ArrowInvalid and others for non-parquet data
        raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc}); "
                        f"copy it again") from None
    id_col, data_col = columns(pf.schema_arrow, path)
    out: Dict[str, Any] = {}
    for batch in pf.iter_batches(batch_size=256, columns=[id_col, data_col]):
        ids = [str(i) for i in batch.column(id_col).to_pylist()]
        hits = [k for k, i in enumerate(ids) if i in wanted]
        data = batch.column(data_col) if hits else None
        for k in hits:
            out[ids[k]] = _as_base64(data[k].as_py())
    return out
