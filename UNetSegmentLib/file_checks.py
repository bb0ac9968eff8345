"""Checks that an image file is whole before its voxels are trusted.

ITK reads some damaged files without a word: a truncated ``.nii`` or
``.nii.gz`` comes back at full size with the missing voxels zero, and a
gzip/zlib stream whose bytes were corrupted in the middle (NRRD ``gzip``,
MetaImage ``CompressedData``) decodes to a half-garbage volume. Before
reading, :func:`check_image_file` therefore

- parses the header (NRRD, NIfTI-1/2, MetaImage) and computes the number of
  data bytes it declares;
- for raw data, compares that with the bytes the file (or its detached data
  file) holds;
- for compressed data, decompresses the whole stream to its end (which also
  checks its CRC-32 or Adler-32) and compares the decompressed length.

It raises :class:`DamagedFileError` (a kind of ``ImageReadError``, exit 3) with
a message that names the file. DICOM files are checked in
``UNetSegmentLib.dicom.integrity``. Uncorrupted-looking raw bytes cannot be
told from corrupted ones (raw formats carry no checksum); only the size is
checked for them.
"""

from __future__ import annotations

import bz2
import logging
import re
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Tuple, Union

from .io import ImageReadError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
_CHUNK = 1 << 20


class DamagedFileError(ImageReadError):
    """An image file is truncated or corrupted (the data it holds does not match its header)."""


def check_image_file(path: PathLike) -> None:
    """Raise :class:`DamagedFileError` if ``path`` is a NRRD, NIfTI or MetaImage file that is not whole.

    Other file types are left to their readers. A zero-byte file is refused whatever its type.
    """
    p = Path(path)
    if p.stat().st_size == 0:
        raise DamagedFileError(f"cannot read {p}: the file is empty (0 bytes)")
    name = p.name.lower()
    if name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(p)
    elif name.endswith((".nii", ".nii.gz")):
        _check_nifti(p)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(p)


def _damaged(p: Path, what: str) -> DamagedFileError:
    return DamagedFileError(f"cannot read {p}: the file is damaged, {what}")


# -- streams ---------------------------------------------------------------------------------


def _new_decompressor(kind: str):
    return bz2.BZ2Decompressor() if kind == "bzip2" else zlib.decompressobj(47)  # 47: gzip or zlib header


def _inflate_length(p: Path, offset: int, kind: str) -> int:
    """Decompress ``p`` from ``offset`` to the end of its stream; the decompressed byte count.

    ``kind``: ``gzip``/``zlib`` (either header is accepted: NRRD and MetaImage
    writers differ) or ``bzip2``. Concatenated gzip members are followed, as
    gzip readers do. Raises :class:`DamagedFileError` when the stream is
    corrupt or ends before its end-of-stream marker.
    """
    dec = _new_decompressor(kind)
    total = 0
    with open(p, "rb") as f:
        f.seek(offset)
        try:
            pending = b""
            while True:
                chunk = pending or f.read(_CHUNK)
                pending = b""
                if not chunk:
                    break
                total += len(dec.decompress(chunk))
                if dec.eof:
                    rest = dec.unused_data + f.read(2)
                    if rest[:2] == b"\x1f\x8b" and kind != "bzip2":  # another gzip member follows
                        dec, pending = _new_decompressor(kind), rest
                        continue
                    break
        except (zlib.error, OSError, EOFError, ValueError) as e:
            raise _damaged(p, f"its compressed data is corrupt ({e})") from None
    if not dec.eof:
        raise _damaged(p, f"its compressed data stops early, after {total} decompressed bytes (truncated file)")
    return total


def _check_length(p: Path, have: int, need: int, compressed: bool) -> None:
    if have < need:
        what = "decompresses to" if compressed else "holds"
        raise _damaged(p, f"it {what} {have} bytes of voxel data but its header declares {need} (truncated file)")


# -- NRRD ------------------------------------------------------------------------------------

_NRRD_TYPES: Dict[str, int] = {}
for _names, _size in (
    (("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), 2),
    (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    (("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"), 4),
    (("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"), 8),
    (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"), 8),
):
    for _n in _names:
        _NRRD_TYPES[_n] = _size


def _read_header_lines(p: Path, limit: int = 1 << 20) -> Tuple[List[str], int]:
    """Header lines up to the first empty line (attached NRRD) and the byte offset after it."""
    lines: List[str] = []
    offset = 0
    with open(p, "rb") as f:
        while offset < limit:
            raw = f.readline()
            if not raw:
                break
            offset += len(raw)
            line = raw.decode("latin-1").rstrip("\r\n")
            if not line:
                return lines, offset
            lines.append(line)
    return lines, offset


def _check_nrrd(p: Path) -> None:
    lines, data_offset = _read_header_lines(p)
    if not lines or not lines[0].startswith("NRRD000"):
        raise _damaged(p, "it does not start with a NRRD header")
    fields: Dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith("#") or (":=" in line and line.index(":=") <= line.find(":")):
            continue  # a comment or a key:=value pair
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    try:
        sizes = [int(s) for s in fields["sizes"].split()]
        item = _NRRD_TYPES[fields["type"].lower()]
    except (KeyError, ValueError):
        raise _damaged(p, "its header has no valid 'sizes' or 'type' field") from None
    need = item
    for s in sizes:
        need *= s
    encoding = fields.get("encoding", "raw").lower()
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file:
        if data_file.startswith("LIST") or "%" in data_file:
            return  # several data files: left to the reader
        target = (p.parent / data_file) if not Path(data_file).is_absolute() else Path(data_file)
        if not target.is_file():
            raise DamagedFileError(f"cannot read {p}: its data file {target} is missing")
        p, data_offset = target, 0
    skip = int(fields.get("byte skip", fields.get("byteskip", "0")) or 0)
    if encoding == "raw":
        have = p.stat().st_size - data_offset - max(skip, 0)
        _check_length(p, have, need, False)
    elif encoding in ("gzip", "gz", "bzip2", "bz2"):
        have = _inflate_length(p, data_offset, "bzip2" if encoding.startswith("bz") else "gzip")
        _check_length(p, have - max(skip, 0), need, True)


# -- NIfTI -----------------------------------------------------------------------------------


def _nifti_header(head: bytes, p: Path) -> Tuple[int, int]:
    """``(voxel data offset, voxel data bytes)`` from a NIfTI-1 or NIfTI-2 header."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            return max(offset, 352), _voxel_bytes(dims, bitpix, p)
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            return max(int(offset), 544), _voxel_bytes(dims, bitpix, p)
    raise _damaged(p, "its NIfTI header is missing or corrupt")


def _voxel_bytes(dims, bitpix: int, p: Path) -> int:
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or bitpix % 8:
        raise _damaged(p, f"its NIfTI header is corrupt (dim[0]={ndim}, bitpix={bitpix})")
    n = 1
    for d in dims[1 : ndim + 1]:
        n *= max(int(d), 1)
    return n * bitpix // 8


def _check_nifti(p: Path) -> None:
    if p.name.lower().endswith(".gz"):
        dec = zlib.decompressobj(47)
        with open(p, "rb") as f:
            try:
                head = dec.decompress(f.read(4096), 600)
            except zlib.error as e:
                raise _damaged(p, f"its gzip stream is corrupt ({e})") from None
        offset, need = _nifti_header(head, p)
        have = _inflate_length(p, 0, "gzip")
        _check_length(p, have - offset, need, True)
    else:
        with open(p, "rb") as f:
            head = f.read(544)
        offset, need = _nifti_header(head, p)
        _check_length(p, p.stat().st_size - offset, need, False)


# -- MetaImage -------------------------------------------------------------------------------

_MET_SIZES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
_MET_LINE = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=\s*(.*?)\s*$")


def _check_metaimage(p: Path) -> None:
    fields: Dict[str, str] = {}
    offset = 0
    with open(p, "rb") as f:
        while offset < (1 << 20):
            raw = f.readline()
            if not raw:
                break
            offset += len(raw)
            m = _MET_LINE.match(raw.decode("latin-1"))
            if not m:
                raise _damaged(p, "its MetaImage header is corrupt")
            fields[m.group(1).lower()] = m.group(2)
            if m.group(1).lower() == "elementdatafile":
                break
    data_file = fields.get("elementdatafile")
    if data_file is None or "dimsize" not in fields:
        raise _damaged(p, "its MetaImage header ends before ElementDataFile (truncated file)")
    try:
        need = _MET_SIZES[fields.get("elementtype", "").upper()] * int(fields.get("elementnumberofchannels", "1"))
        for s in fields["dimsize"].split():
            need *= int(s)
    except (KeyError, ValueError):
        raise _damaged(p, "its MetaImage header has no valid DimSize or ElementType") from None
    if data_file.upper() != "LOCAL":
        if data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
            return  # one file per slice: left to the reader
        target = p.parent / data_file
        if not target.is_file():
            raise DamagedFileError(f"cannot read {p}: its data file {target} is missing")
        p, offset = target, 0
    header_skip = int(fields.get("headersize", "0") or 0)
    if fields.get("compresseddata", "false").lower() == "true":
        _check_length(p, _inflate_length(p, offset, "zlib"), need, True)
    else:
        available = p.stat().st_size - offset
        if header_skip > 0:
            available -= header_skip
        _check_length(p, available, need, False)
