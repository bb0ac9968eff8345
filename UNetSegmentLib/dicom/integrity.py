"""Is a series whole and regular? Slice order, spacing and the checks that refuse a broken series.

:func:`slice_plan` sorts a series' frames along the slice normal
(``n = row direction x column direction``, LPS) and refuses (raises
:class:`SeriesIntegrityError`, exit 4) a series that

- mixes orientations (ImageOrientationPatient differs by more than
  ``ORIENTATION_TOLERANCE``) or sizes (Rows, Columns) or pixel spacings;
- has two slices at the same position (within ``DUPLICATE_TOLERANCE_MM``);
- has a gap: a step of about twice the usual spacing or more, i.e. missing slices;
- has uneven spacing: a step differing from the median by more than
  ``SPACING_TOLERANCE`` (relative) and ``SPACING_TOLERANCE_MM``.

The error names the slice positions (mm along the normal) and files that are
wrong. Gaps and uneven spacing are accepted with ``allow_uneven=True``; the
plan then says so, and the reader resamples the slices onto a uniform grid.

:func:`check_dicom_file` checks one file's pixel data against its header
(native: byte count; encapsulated: every frame's fragments present and each
JPEG/JPEG-LS/JPEG 2000 codestream closed by its end marker), so a truncated
or cut compressed file fails by name instead of decoding to part of an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..io import ImageReadError
from ..validation import InvalidImageError
from .index import Frame, Series

#: max difference of a direction cosine between slices of one series
ORIENTATION_TOLERANCE = 1e-3
#: two slices closer than this (mm) along the normal are the same position
DUPLICATE_TOLERANCE_MM = 0.01
#: a step may differ from the median step by this fraction ...
SPACING_TOLERANCE = 0.05
#: ... or by this many mm, whichever is larger
SPACING_TOLERANCE_MM = 0.05
#: a step of at least this many median steps is a gap (missing slices)
GAP_FACTOR = 1.5

#: transfer syntaxes the reader (GDCM in SimpleITK) decodes
SUPPORTED_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
#: transfer syntaxes refused by name (no decoder here)
UNSUPPORTED_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.92": "JPEG 2000 Part 2 Multi-component Lossless",
    "1.2.840.10008.1.2.4.93": "JPEG 2000 Part 2 Multi-component",
    "1.2.840.10008.1.2.4.94": "JPIP Referenced",
    "1.2.840.10008.1.2.4.95": "JPIP Referenced Deflate",
    "1.2.840.10008.1.2.4.100": "MPEG2 Main Profile",
    "1.2.840.10008.1.2.4.101": "MPEG2 High Profile",
    "1.2.840.10008.1.2.4.102": "MPEG-4 AVC/H.264",
    "1.2.840.10008.1.2.4.103": "MPEG-4 AVC/H.264 BD-compatible",
    "1.2.840.10008.1.2.4.104": "MPEG-4 AVC/H.264 for 2D Video",
    "1.2.840.10008.1.2.4.105": "MPEG-4 AVC/H.264 for 3D Video",
    "1.2.840.10008.1.2.4.106": "MPEG-4 AVC/H.264 Stereo",
    "1.2.840.10008.1.2.4.107": "HEVC/H.265 Main Profile",
    "1.2.840.10008.1.2.4.108": "HEVC/H.265 Main 10 Profile",
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
    "1.2.840.10008.1.2.4.201": "High-Throughput JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.202": "High-Throughput JPEG 2000 with RPCL Lossless",
    "1.2.840.10008.1.2.4.203": "High-Throughput JPEG 2000",
}
#: encapsulated syntaxes whose codestreams end with the marker FFD9 (JPEG EOI, JPEG 2000 EOC)
_ENDS_WITH_FFD9 = {k for k in SUPPORTED_TRANSFER_SYNTAXES if k.startswith("1.2.840.10008.1.2.4.")}
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}


class SeriesIntegrityError(InvalidImageError):
    """A DICOM series is not whole or not regular (exit 4): missing, duplicated or unevenly spaced slices ..."""


@dataclass
class SlicePlan:
    """The frames of a series in slice order along the normal, and the grid they form.

    ``positions_mm``: each frame's position along ``normal`` (ascending);
    ``spacing_mm``: the median step; ``uneven``: a description of the gaps or
    uneven steps that ``allow_uneven`` let through (empty when the series is regular).
    """

    frames: List[Frame]
    positions_mm: np.ndarray
    normal: np.ndarray
    spacing_mm: float
    uneven: str = ""
    notes: List[str] = field(default_factory=list)

    @property
    def direction_lps(self) -> np.ndarray:
        """3x3 with the LPS unit vectors of the ITK i (row), j (column), k (normal) axes as columns."""
        o = np.asarray(self.frames[0].orientation, float)
        return np.stack([o[:3], o[3:], self.normal], axis=1)

    @property
    def pixel_spacing_xy(self) -> Tuple[float, float]:
        """(column spacing along i, row spacing along j) in mm: DICOM PixelSpacing is (row, column)."""
        ps = self.frames[0].pixel_spacing or (1.0, 1.0)
        return float(ps[1]), float(ps[0])


def _where(f: Frame) -> str:
    return f.path.name + (f" frame {f.frame + 1}" if f.frame is not None else "")


def _positions_text(values: Sequence[float], limit: int = 6) -> str:
    text = ", ".join(f"{v:.2f}" for v in values[:limit])
    return text + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _check_uniform(series: Series) -> None:
    frames = series.frames
    name = series.label()
    missing = [f for f in frames if f.orientation is None or f.position_lps is None]
    if missing:
        raise SeriesIntegrityError(
            f"{name}: {len(missing)} slice(s) have no ImagePositionPatient/ImageOrientationPatient "
            f"(e.g. {_where(missing[0])}); the slices cannot be placed"
        )
    ref = np.asarray(frames[0].orientation, float)
    odd = [f for f in frames if np.max(np.abs(np.asarray(f.orientation, float) - ref)) > ORIENTATION_TOLERANCE]
    if odd:
        raise SeriesIntegrityError(
            f"{name} mixes orientations: {len(odd)} of {len(frames)} slices differ from the first "
            f"(e.g. {', '.join(_where(f) for f in odd[:3])}); a localizer or another plane is mixed in"
        )
    sizes = {(f.columns, f.rows) for f in frames}
    if len(sizes) > 1:
        first = (frames[0].columns, frames[0].rows)
        odd = [f for f in frames if (f.columns, f.rows) != first]
        raise SeriesIntegrityError(
            f"{name} mixes slice sizes {' and '.join(f'{c}x{r}' for c, r in sorted(sizes))} "
            f"(e.g. {', '.join(_where(f) for f in odd[:3])})"
        )
    spacings = {tuple(np.round(f.pixel_spacing, 4)) for f in frames if f.pixel_spacing}
    if len(spacings) > 1:
        raise SeriesIntegrityError(f"{name} mixes pixel spacings {sorted(spacings)} mm")


def slice_plan(series: Series, allow_uneven: bool = False) -> SlicePlan:
    """Sort and check the frames of ``series``; raise :class:`SeriesIntegrityError` if it is not whole and regular."""
    _check_uniform(series)
    normal = series.normal
    if normal is None:
        raise SeriesIntegrityError(f"{series.label()}: its ImageOrientationPatient is degenerate")
    pos = np.array([float(np.dot(normal, f.position_lps)) for f in series.frames])
    order = np.argsort(pos, kind="stable")
    frames = [series.frames[i] for i in order]
    pos = pos[order]
    name = series.label()
    if len(frames) < 2:
        return SlicePlan(frames, pos, normal, 1.0)
    steps = np.diff(pos)
    dup = np.nonzero(steps < DUPLICATE_TOLERANCE_MM)[0]
    if len(dup):
        pairs = "; ".join(f"{pos[i]:.2f} mm ({_where(frames[i])} and {_where(frames[i + 1])})" for i in dup[:3])
        more = f" and {len(dup) - 3} more" if len(dup) > 3 else ""
        raise SeriesIntegrityError(f"{name} has {len(dup)} duplicated slice position(s): {pairs}{more}")
    # the in-plane offset must follow the normal: slices of one stack lie on one line of positions
    lps = np.array([f.position_lps for f in frames], float)
    offsets = lps - np.outer(pos, normal)
    drift = np.linalg.norm(offsets - offsets[0], axis=1)
    if np.max(drift) > max(1.0, 0.5 * float(np.median(steps))) and len(frames) > 2:
        i = int(np.argmax(drift))
        raise SeriesIntegrityError(
            f"{name}: slice {_where(frames[i])} at {pos[i]:.2f} mm is shifted {drift[i]:.1f} mm in-plane from the "
            "first slice; the slices do not form one stack"
        )
    spacing = float(np.median(steps))
    tolerance = max(SPACING_TOLERANCE * spacing, SPACING_TOLERANCE_MM)
    gaps = [i for i in range(len(steps)) if steps[i] >= GAP_FACTOR * spacing]
    uneven = [i for i in range(len(steps)) if abs(steps[i] - spacing) > tolerance and i not in gaps]
    problems = []
    if gaps:
        text = "; ".join(
            f"between {pos[i]:.2f} and {pos[i + 1]:.2f} mm (about {round(steps[i] / spacing) - 1} slice(s))"
            for i in gaps[:4]
        )
        more = f" and {len(gaps) - 4} more" if len(gaps) > 4 else ""
        problems.append(f"missing slices {text}{more}")
    if uneven:
        text = ", ".join(f"{steps[i]:.2f} mm after {pos[i]:.2f} mm" for i in uneven[:4])
        more = f" and {len(uneven) - 4} more" if len(uneven) > 4 else ""
        problems.append(f"uneven slice spacing ({text}{more}; usual {spacing:.2f} mm, tolerance {tolerance:.2f} mm)")
    if problems and not allow_uneven:
        raise SeriesIntegrityError(
            f"{name} is not whole: {'; '.join(problems)}; --resample-uneven reads it by interpolating onto "
            f"a uniform {spacing:.2f} mm spacing"
        )
    return SlicePlan(frames, pos, normal, spacing, uneven="; ".join(problems))


def transfer_syntax_name(uid: str) -> str:
    import pydicom.uid

    return (
        SUPPORTED_TRANSFER_SYNTAXES.get(uid)
        or UNSUPPORTED_TRANSFER_SYNTAXES.get(uid)
        or (pydicom.uid.UID(uid).name if uid else "unknown")
    )


def check_transfer_syntaxes(series: Series) -> None:
    """Raise ``ImageReadError`` (exit 3) naming a transfer syntax the reader cannot decode."""
    for uid in series.transfer_syntaxes:
        if uid not in SUPPORTED_TRANSFER_SYNTAXES:
            raise ImageReadError(
                f"{series.label()} is stored as {transfer_syntax_name(uid)} ({uid}), a compression this tool "
                f"cannot decode; supported: uncompressed, JPEG, JPEG-LS, JPEG 2000 and RLE (convert it, e.g. "
                f"with dcmdjpeg or gdcmconv --raw)"
            )


def check_dicom_file(path: Path) -> None:
    """Raise ``ImageReadError`` naming ``path`` if its pixel data is shorter than its header declares.

    Native pixel data: Rows x Columns x SamplesPerPixel x frames x BitsAllocated/8
    bytes. Encapsulated: one fragment set per frame, each JPEG family codestream
    closed by FFD9, each RLE frame as long as its segment offsets say.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        if "PixelData" not in ds:
            raise ImageReadError(f"cannot read {path}: the file is damaged, it has no pixel data")
        ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        data = ds.PixelData
        if ts in _NATIVE or not ts:
            need = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
            need = need * int(ds.BitsAllocated) // 8
            if len(data) < need:
                raise ImageReadError(
                    f"cannot read {path}: the file is damaged, it holds {len(data)} bytes of pixel data, its header declares {need} "
                    "(truncated file)"
                )
            return
        got = _frames_of(data, frames)
    except ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on truncated data
        raise ImageReadError(
            f"cannot read {path}: the file is damaged, its data cannot be parsed ({type(e).__name__}: {str(e)[:80]})"
        ) from None
    if len(got) < frames:
        raise ImageReadError(
            f"cannot read {path}: the file is damaged, it holds {len(got)} of its {frames} compressed frames"
        )
    for i, frame in enumerate(got):
        if ts in _ENDS_WITH_FFD9 and not _ends_with_eoi(frame):
            raise ImageReadError(
                f"cannot read {path}: the file is damaged, compressed frame {i + 1} ({transfer_syntax_name(ts)}) stops before its end "
                "marker (truncated or cut data)"
            )
        if ts == "1.2.840.10008.1.2.5":
            _check_rle(path, frame, i, int(ds.Rows) * int(ds.Columns))


def _ends_with_eoi(frame: bytes) -> bool:
    """The codestream's last marker is FFD9, followed at most by padding (00 or FF fill bytes)."""
    i = frame.rfind(b"\xff\xd9", max(0, len(frame) - 16))
    return i >= 0 and all(b in (0x00, 0xFF) for b in frame[i + 2 :])


def _frames_of(data: bytes, frames: int) -> list:
    """The encapsulated frames of ``data`` (pydicom 3 ``generate_frames``, or pydicom 2's older name)."""
    try:
        from pydicom.encaps import generate_frames

        return list(generate_frames(data, number_of_frames=frames))
    except ImportError:  # pydicom 2.x (as bundled with some Slicer releases)
        from pydicom.encaps import generate_pixel_data_frame

        return list(generate_pixel_data_frame(data, frames))


def _check_rle(path: Path, frame: bytes, index: int, pixels: int) -> None:
    """Each RLE segment (PackBits) must decode to ``pixels`` bytes (one byte plane of the frame)."""
    if len(frame) < 64:
        raise ImageReadError(f"cannot read {path}: the file is damaged, RLE frame {index + 1} has no header")
    header = np.frombuffer(frame[:64], dtype="<u4")
    n = int(header[0])
    offsets = [int(v) for v in header[1 : 1 + n]] + [len(frame)]
    if not 1 <= n <= 15 or any(o < 64 or o > len(frame) for o in offsets) or offsets != sorted(offsets):
        raise ImageReadError(
            f"cannot read {path}: the file is damaged, RLE frame {index + 1}'s segments lie beyond its data (truncated)"
        )
    for k in range(n):
        got = _packbits_length(frame, offsets[k], offsets[k + 1], pixels)
        if got < pixels:
            raise ImageReadError(
                f"cannot read {path}: the file is damaged, RLE frame {index + 1} segment {k + 1} decodes to {got} of "
                f"its {pixels} bytes (truncated or cut data)"
            )


def _packbits_length(data: bytes, start: int, stop: int, limit: int) -> int:
    """Bytes a PackBits run (DICOM RLE segment) decodes to, reading ``data[start:stop]`` (stops at ``limit``)."""
    i, out = start, 0
    while i < stop and out < limit:
        n = data[i]
        if n < 128:
            if i + 1 + n + 1 > stop:
                return out + max(0, stop - i - 1)
            out += n + 1
            i += n + 2
        elif n > 128:
            if i + 1 >= stop:
                return out
            out += 257 - n
            i += 2
        else:
            i += 1
    return out


def instance_problem(path: Path) -> Optional[str]:
    """The reason ``path`` cannot be used as a slice, or None (a one-line wrapper for listings)."""
    try:
        check_dicom_file(path)
    except ImageReadError as e:
        return str(e)
    return None
