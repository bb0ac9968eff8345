"""The record of a finished batch case, so that a rerun can skip it: input and output hashes, model, options.

A record lives beside the outputs, in ``OUTPUT_DIR/.unetsegment-done/<labelmap name>.json``,
and is written (atomically) after the labelmap. A case counts as done when its record
names the same model and options, the labelmap is still there with the recorded
sha256, and the input still has the recorded sha256. Anything else (no record, an edited
input or labelmap, another model) means the case is segmented again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

log = logging.getLogger(__name__)

RECORD_DIR = ".unetsegment-done"
#: Data files that a MetaImage / detached NRRD header may point to, besides itself (same stem).
_DATA_SUFFIXES = (".raw", ".raw.gz", ".zraw", ".img", ".img.gz")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted: a DICOM series).

    A ``.mhd`` or ``.nhdr`` header is hashed together with its data file beside it.
    """
    h = hashlib.sha256()
    for name, f in _files_of(Path(path)):
        h.update(name.encode("utf-8") + b"\0")
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(chunk), b""):
                h.update(block)
    return h.hexdigest()


def _files_of(path: Path) -> Iterator[tuple]:
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            yield f.relative_to(path).as_posix(), f
        return
    yield path.name, path
    low = path.name.lower()
    for header in (".mhd", ".nhdr"):
        if low.endswith(header):
            stem = path.name[: -len(header)]
            for suffix in _DATA_SUFFIXES:
                data = path.with_name(stem + suffix)
                if data.is_file():
                    yield data.name, data


def record_path(output: Path) -> Path:
    return output.parent / RECORD_DIR / f"{output.name}.json"


def write_record(output: Path, input_path: Path, input_sha256: str, key: Dict[str, Any], row: Dict[str, Any]) -> None:
    """Record ``output`` (already in place) as the result of ``input_path`` under ``key`` (model and options)."""
    path = record_path(output)
    record = {
        "input": str(input_path),
        "input_sha256": input_sha256,
        "output": str(output),
        "output_sha256": sha256_of(output),
        "key": key,
        "row": row,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def done_row(output: Path, input_path: Path, key: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The summary row recorded for ``output`` if the case is done (see the module's doc), else None."""
    path = record_path(output)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring the unreadable record %s: %s", path, e)
        return None
    if not isinstance(record, dict) or record.get("key") != key or not output.is_file():
        return None
    if record.get("output_sha256") != sha256_of(output):
        log.info("%s changed since it was recorded; segmenting again", output.name)
        return None
    if not input_path.exists() or record.get("input_sha256") != sha256_of(input_path):
        log.info("%s changed since %s was recorded; segmenting again", input_path, output.name)
        return None
    row = record.get("row")
    return dict(row) if isinstance(row, dict) else None
