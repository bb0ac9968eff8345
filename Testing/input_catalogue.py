"""A catalogue of bad and awkward inputs, each written in its true format, with the answer the tool owes it.

Every entry builds its input in a fresh folder (from synthetic volumes, or from
the real DICOM series in ../shared/data) and states the exit code and a
fragment of the one-line message. Used by ``test_input_catalogue.py`` (the
command line) and ``test_slicer_input_catalogue.py`` (the Slicer module's
process path). Builders return ``(input path, extra command-line arguments)``.
"""

from __future__ import annotations

import gzip
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from fixtures_dicom import compress, volume, write_dicomdir, write_enhanced_mr, write_series, write_study

EXIT_USAGE, EXIT_INPUT, EXIT_INVALID, EXIT_OUTPUT = 2, 3, 4, 7
REAL_T2 = ("prostatex", "ProstateX-0000", "dicom", "t2w")

Built = Tuple[Path, List[str]]


@dataclass(frozen=True)
class Case:
    """One input: ``build(folder, shared_data) -> (path, args)``, the exit code, and words the message must hold.

    ``names_input``: the message must name the input file (or, for a series, the
    damaged file's name ``names_file``).
    """

    name: str
    build: Callable[[Path, Path], Built]
    code: int
    words: Sequence[str]
    names_file: Optional[str] = None
    real_data: bool = False


# -- file builders ----------------------------------------------------------------------------


def _scan() -> sitk.Image:
    return volume(size_xyz=(48, 48, 12), spacing=(1.5, 1.5, 3.0))


def _write(folder: Path, name: str, image: sitk.Image, compress_data: bool = False) -> Path:
    path = folder / name
    sitk.WriteImage(image, str(path), compress_data)
    return path


def _truncate(path: Path, fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _corrupt(path: Path, at: float = 0.6, n: int = 64) -> Path:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    rng = np.random.default_rng(1)
    data[i : i + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def file_case(name: str, ext: str, compressed: bool, damage: str) -> Callable[[Path, Path], Built]:
    def build(folder: Path, _shared: Path) -> Built:
        path = _write(folder, f"{name}{ext}", _scan(), compressed)
        if damage == "truncate":
            _truncate(path)
        elif damage == "corrupt":
            _corrupt(path)
        elif damage == "empty":
            path.write_bytes(b"")
        return path, []

    return build


def detached_mhd(damage: str) -> Callable[[Path, Path], Built]:
    def build(folder: Path, _shared: Path) -> Built:
        path = _write(folder, "scan.mhd", _scan())
        raw = folder / "scan.raw"
        if damage == "missing":
            raw.unlink()
        else:
            _truncate(raw, 0.5)
        return path, []

    return build


def detached_nhdr(folder: Path, _shared: Path) -> Built:
    path = _write(folder, "scan.nhdr", _scan())
    for p in folder.iterdir():
        if p.name != "scan.nhdr":
            p.unlink()  # the detached .raw(.gz) data file is gone
    return path, []


def nifti_header_only(folder: Path, _shared: Path) -> Built:
    path = _write(folder, "scan.nii", _scan())
    path.write_bytes(path.read_bytes()[:352])
    return path, []


def gzip_of_truncated_nifti(folder: Path, _shared: Path) -> Built:
    """A whole gzip stream (valid CRC) of a NIfTI whose voxels were cut: the header declares more than there is."""
    raw = _write(folder, "inner.nii", _scan())
    path = folder / "scan.nii.gz"
    path.write_bytes(gzip.compress(raw.read_bytes()[:-5000]))
    raw.unlink()
    return path, []


def random_bytes(name: str) -> Callable[[Path, Path], Built]:
    def build(folder: Path, _shared: Path) -> Built:
        path = folder / name
        path.write_bytes(np.random.default_rng(2).integers(0, 256, 3000, dtype=np.uint8).tobytes())
        return path, []

    return build


def text_as_nrrd(folder: Path, _shared: Path) -> Built:
    path = folder / "notes.nrrd"
    path.write_text("this is not an image\n" * 10, encoding="utf-8")
    return path, []


def missing_input(folder: Path, _shared: Path) -> Built:
    return folder / "no_such_scan.nii.gz", []


def folder_without_dicom(folder: Path, _shared: Path) -> Built:
    (folder / "export").mkdir()
    (folder / "export" / "readme.txt").write_text("nothing here", encoding="utf-8")
    return folder / "export", []


def zlib_mha_truncated_stream(folder: Path, _shared: Path) -> Built:
    path = _write(folder, "scan.mha", _scan(), True)
    data = path.read_bytes()
    head = data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    stream = zlib.decompressobj().decompress(data[head:])  # the whole stream, then re-deflated without its end
    comp = zlib.compressobj()
    cut = comp.compress(stream) + comp.flush(zlib.Z_SYNC_FLUSH)  # no final block, no Adler-32
    path.write_bytes(data[:head] + cut)
    return path, []


# -- images that are not a T2 scan ------------------------------------------------------------------


def _like_scan(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.5, 3.0))
    return img


def _gland(shape=(12, 48, 48)) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (((x - 24) / 10) ** 2 + ((y - 24) / 8) ** 2 + ((z - 6) / 4) ** 2) < 1


def labelmap(values: Sequence[int], ext: str) -> Callable[[Path, Path], Built]:
    def build(folder: Path, _shared: Path) -> Built:
        g = _gland()
        arr = np.zeros(g.shape, np.uint8)
        arr[g] = values[0]
        if len(values) > 1:
            arr[g & (np.arange(g.shape[1])[None, :, None] > 24)] = values[1]
        return _write(folder, f"mask{ext}", _like_scan(arr), True), []

    return build


def probability_map(folder: Path, _shared: Path) -> Built:
    g = _gland().astype(np.float32)
    p = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(g), 1.5))
    return _write(folder, "prostate_probability.nrrd", _like_scan(np.clip(p, 0, 1).astype(np.float32)), True), []


def probability_4d(folder: Path, _shared: Path) -> Built:
    g = _gland().astype(np.float32)
    img = sitk.JoinSeries([sitk.GetImageFromArray(1 - g), sitk.GetImageFromArray(g)])  # 4D: background, prostate
    return _write(folder, "probabilities.nii.gz", img, True), []


def own_output(folder: Path, _shared: Path) -> Built:
    img = _like_scan(_gland().astype(np.uint8) * 1)
    img.SetMetaData("unetsegment_model", "prostate-wholegland-t2 1.3.0")
    return _write(folder, "t2_segmentation.nrrd", img, True), []


def own_seg_nrrd(folder: Path, _shared: Path) -> Built:
    from UNetSegmentLib.labels import structure
    from UNetSegmentLib.model_package import LabelEntry
    from UNetSegmentLib.segfile import write_seg_nrrd

    path = folder / "t2.seg.nrrd"
    write_seg_nrrd(_like_scan(_gland().astype(np.uint8)), path, [LabelEntry(1, structure("prostate"))])
    return path, []


def image_2d(folder: Path, _shared: Path) -> Built:
    return _write(folder, "slice.nrrd", sitk.GetImageFromArray(sitk.GetArrayFromImage(_scan())[5])), []


def constant(folder: Path, _shared: Path) -> Built:
    return _write(folder, "flat.nrrd", _like_scan(np.full((12, 48, 48), 300, np.int16))), []


def nan_values(folder: Path, _shared: Path) -> Built:
    arr = sitk.GetArrayFromImage(_scan()).astype(np.float32)
    arr[3, 10:20, 10:20] = np.nan
    return _write(folder, "nan.nrrd", _like_scan(arr), True), []


def two_slices(folder: Path, _shared: Path) -> Built:
    return _write(folder, "thin.nrrd", _like_scan(sitk.GetArrayFromImage(_scan())[:2])), []


def tiny_field(folder: Path, _shared: Path) -> Built:
    img = _like_scan(sitk.GetArrayFromImage(_scan())[:, :10, :10])
    return _write(folder, "crop.nrrd", img), []


def zero_spacing(folder: Path, _shared: Path) -> Built:
    path = _write(folder, "zero.nrrd", _scan())
    text = path.read_bytes().replace(b"space directions: (1.5,0,0)", b"space directions: (0,0,0)")
    path.write_bytes(text)
    return path, []


def vector_image(folder: Path, _shared: Path) -> Built:
    arr = sitk.GetArrayFromImage(_scan())
    img = sitk.GetImageFromArray(np.stack([arr, arr, arr], axis=-1).astype(np.uint8), isVector=True)
    img.SetSpacing((1.5, 1.5, 3.0))
    return _write(folder, "rgb.nrrd", img), []


# -- DICOM series ---------------------------------------------------------------------------------


def series(positions: Optional[Sequence[float]] = None, **tags) -> Callable[[Path, Path], Built]:
    def build(folder: Path, _shared: Path) -> Built:
        write_series(folder / "t2", _scan(), positions_k=positions, **tags)
        return folder / "t2", []

    return build


def series_then(edit: Callable[[List[Path]], None], args: Sequence[str] = ()) -> Callable[[Path, Path], Built]:
    def build(folder: Path, _shared: Path) -> Built:
        files = write_series(folder / "t2", _scan())
        edit(files)
        return folder / "t2", list(args)

    return build


def _retilt(files: List[Path]) -> None:
    import pydicom

    ds = pydicom.dcmread(str(files[4]))
    a = np.radians(20)
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, float(np.cos(a)), float(np.sin(a))]
    ds.save_as(str(files[4]))


def _resize(files: List[Path]) -> None:
    import pydicom

    ds = pydicom.dcmread(str(files[6]))
    arr = ds.pixel_array[:24, :24].copy()
    ds.Rows, ds.Columns = 24, 24
    ds.PixelData = arr.tobytes()
    ds.save_as(str(files[6]))


def _copy_file(files: List[Path]) -> None:
    shutil.copy(files[3], files[3].with_name("IM0003_copy.dcm"))


def _empty_file(files: List[Path]) -> None:
    files[5].write_bytes(b"")


def _truncate_file(files: List[Path]) -> None:
    _truncate(files[7], 0.7)


def _garbage_file(files: List[Path]) -> None:
    files[2].write_bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes())


def _cut_jpeg2000(files: List[Path]) -> None:
    compress(files, "jpeg2000")
    _cut_last_fragment(files[4])


def _cut_rle(files: List[Path]) -> None:
    compress(files, "rle")
    _cut_last_fragment(files[4])


def _cut_last_fragment(path: Path) -> None:
    """Shorten the compressed frame of ``path`` by a third, keeping the DICOM encapsulation valid."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(str(path))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    cut = frame[: (2 * len(frame) // 3) & ~1]
    ds.PixelData = encapsulate([cut])
    ds.save_as(str(path))


def _htj2k(files: List[Path]) -> None:
    import pydicom
    from pydicom.encaps import encapsulate

    for p in files:
        ds = pydicom.dcmread(str(p))
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K: no decoder here
        ds.PixelData = encapsulate([b"\xff\x0a" + b"\0" * 98])
        ds["PixelData"].VR = "OB"
        ds.save_as(str(p), enforce_file_format=True)


def mixed_uids(folder: Path, _shared: Path) -> Built:
    """One folder: a T2 series and its derived copy on the same grid (another SeriesInstanceUID)."""
    import pydicom.uid

    study = pydicom.uid.generate_uid()
    write_series(folder / "t2", _scan(), study_uid=study, series_number=3)
    write_series(
        folder / "t2",
        _scan(),
        study_uid=study,
        series_number=1003,
        names="IM1{k:03d}.dcm",
        ImageType=["DERIVED", "SECONDARY", "OTHER"],
        SeriesDescription="t2_tse_tra_filtered",
    )
    return folder / "t2", []


def study(kinds: Sequence[str], args: Sequence[str] = ()) -> Callable[[Path, Path], Built]:
    def build(folder: Path, _shared: Path) -> Built:
        write_study(folder / "study", kinds=kinds)
        return folder / "study", list(args)

    return build


def dicomdir_missing_file(folder: Path, _shared: Path) -> Built:
    write_study(folder / "tree", kinds=("localizer", "t2_tra", "dwi"))
    cd = write_dicomdir(folder / "tree")
    import pydicom

    for se in sorted(p for p in cd.rglob("SE*") if p.is_dir()):
        files = sorted(se.iterdir())
        if pydicom.dcmread(str(files[0]), stop_before_pixels=True).SeriesDescription == "t2_tse_tra":
            files[4].unlink()
    return cd, []


def file_given_series(folder: Path, _shared: Path) -> Built:
    return _write(folder, "scan.nrrd", _scan()), ["--series", "2"]


def real(edit: Callable[[List[Path]], None], args: Sequence[str] = ()) -> Callable[[Path, Path], Built]:
    """A copy of the real ProstateX T2 series (../shared/data), then ``edit`` on its files in slice order."""

    def build(folder: Path, shared: Path) -> Built:
        src = shared.joinpath(*REAL_T2)
        dst = folder / "t2w"
        shutil.copytree(src, dst)
        files = sorted(dst.iterdir())  # 1-01 ... 1-19: instance order
        edit(files)
        return dst, list(args)

    return build


def _drop(i: int) -> Callable[[List[Path]], None]:
    return lambda files: files[i].unlink()


def _real_duplicate(files: List[Path]) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(str(files[8]))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = 99
    ds.save_as(str(files[8].with_name("1-99.dcm")))


def _real_shift(files: List[Path]) -> None:
    import pydicom

    ds = pydicom.dcmread(str(files[10]))
    iop = np.asarray(ds.ImageOrientationPatient, float)
    n = np.cross(iop[:3], iop[3:])
    ds.ImagePositionPatient = [float(v) for v in np.asarray(ds.ImagePositionPatient, float) + 1.2 * n]
    ds.save_as(str(files[10]))


# -- the catalogue ----------------------------------------------------------------------------------

CATALOGUE: List[Case] = [
    # damaged files of every supported format (exit 3, the file named)
    Case("nrrd raw truncated", file_case("scan", ".nrrd", False, "truncate"), EXIT_INPUT, ["damaged", "truncated"], "scan.nrrd"),
    Case("nrrd gzip truncated", file_case("scan", ".nrrd", True, "truncate"), EXIT_INPUT, ["damaged", "stops early"], "scan.nrrd"),
    Case("nrrd gzip corrupted", file_case("scan", ".nrrd", True, "corrupt"), EXIT_INPUT, ["damaged", "corrupt"], "scan.nrrd"),
    Case("nrrd detached data missing", detached_nhdr, EXIT_INPUT, ["missing"], "scan.nhdr"),
    Case("nrrd empty", file_case("scan", ".nrrd", False, "empty"), EXIT_INPUT, ["empty"], "scan.nrrd"),
    Case("nifti truncated", file_case("scan", ".nii", False, "truncate"), EXIT_INPUT, ["damaged", "truncated"], "scan.nii"),
    Case("nifti header only", nifti_header_only, EXIT_INPUT, ["damaged", "declares"], "scan.nii"),
    Case("nii.gz truncated stream", file_case("scan", ".nii.gz", True, "truncate"), EXIT_INPUT, ["damaged", "stops early"], "scan.nii.gz"),
    Case("nii.gz corrupted stream", file_case("scan", ".nii.gz", True, "corrupt"), EXIT_INPUT, ["damaged", "corrupt"], "scan.nii.gz"),
    Case("nii.gz whole stream of a cut nifti", gzip_of_truncated_nifti, EXIT_INPUT, ["damaged", "declares"], "scan.nii.gz"),
    Case("nii.gz empty", file_case("scan", ".nii.gz", True, "empty"), EXIT_INPUT, ["empty"], "scan.nii.gz"),
    Case("nii.gz random bytes", random_bytes("junk.nii.gz"), EXIT_INPUT, ["cannot read"], "junk.nii.gz"),
    Case("mha raw truncated", file_case("scan", ".mha", False, "truncate"), EXIT_INPUT, ["damaged", "truncated"], "scan.mha"),
    Case("mha zlib corrupted", file_case("scan", ".mha", True, "corrupt"), EXIT_INPUT, ["damaged", "corrupt"], "scan.mha"),
    Case("mha zlib stream without its end", zlib_mha_truncated_stream, EXIT_INPUT, ["damaged", "stops early"], "scan.mha"),
    Case("mhd with short raw", detached_mhd("truncate"), EXIT_INPUT, ["damaged", "truncated"], "scan.raw"),
    Case("mhd with its raw missing", detached_mhd("missing"), EXIT_INPUT, ["missing"], "scan.raw"),
    Case("text named .nrrd", text_as_nrrd, EXIT_INPUT, ["cannot read"], "notes.nrrd"),
    Case("input missing", missing_input, EXIT_INPUT, ["not found"], "no_such_scan.nii.gz"),
    Case("folder without DICOM", folder_without_dicom, EXIT_INPUT, ["no DICOM"], "export"),
    # damaged files inside a DICOM series (exit 3, the file named)
    Case("dicom zero-byte slice", series_then(_empty_file), EXIT_INPUT, ["empty"], "IM0006.dcm"),
    Case("dicom truncated slice", series_then(_truncate_file), EXIT_INPUT, ["damaged"], "IM0008.dcm"),
    Case("dicom garbage named .dcm", series_then(_garbage_file), EXIT_INPUT, ["not a"], "IM0003.dcm"),
    Case("dicom jpeg2000 codestream cut", series_then(_cut_jpeg2000), EXIT_INPUT, ["end marker"], "IM0005.dcm"),
    Case("dicom rle frame cut", series_then(_cut_rle), EXIT_INPUT, ["RLE", "damaged"], "IM0005.dcm"),
    Case("dicom HTJ2K refused by name", series_then(_htj2k), EXIT_INPUT, ["High-Throughput JPEG 2000", "cannot decode"]),
    Case("dicomdir lists a missing file", dicomdir_missing_file, EXIT_INPUT, ["missing"], "IM000004"),
    Case("single truncated .dcm given", lambda f, s: (_truncate(write_series(f / "d", _scan())[0], 0.5), []), EXIT_INPUT, ["damaged"], "IM0001.dcm"),
    # DICOM series that are not whole or regular (exit 4, positions named)
    Case("dicom slice missing", series(positions=[0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11]), EXIT_INVALID, ["missing slices", "between -11.00 and -5.00 mm"]),
    Case("dicom two slices missing at two places", series(positions=[0, 1, 3, 4, 5, 6, 8, 9, 10, 11]), EXIT_INVALID, ["missing slices", "-17.00", "-2.00"]),
    Case("dicom duplicated position", series(positions=[0, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10, 11]), EXIT_INVALID, ["duplicated", "-8.00 mm"]),
    Case("dicom same file twice", series_then(_copy_file), EXIT_INVALID, ["duplicated"], "IM0003_copy.dcm"),
    Case("dicom uneven spacing", series(positions=[0, 1, 2, 3, 4, 5.3, 6, 7, 8, 9, 10, 11]), EXIT_INVALID, ["uneven", "--resample-uneven"]),
    Case("dicom mixed orientation", series_then(_retilt), EXIT_INVALID, ["mixes orientations"], "IM0005.dcm"),
    Case("dicom mixed slice sizes", series_then(_resize), EXIT_INVALID, ["mixes slice sizes", "24x24"], "IM0007.dcm"),
    Case("dicom mixed series UIDs in one folder", mixed_uids, EXIT_INVALID, ["mixed SeriesInstanceUIDs", "--series"]),
    # the series to read is not clear (exit 2, numbered list on stdout)
    Case("study with two axial T2", study(("localizer", "t2_tra", "t2_tra", "dwi")), EXIT_USAGE, ["2 axial T2", "--series N"]),
    Case("study without T2", study(("localizer", "dwi", "adc", "dce")), EXIT_USAGE, ["no axial T2", "--series N"]),
    Case("study with only sagittal and coronal T2", study(("t2_sag", "t2_cor")), EXIT_USAGE, ["no axial T2"]),
    Case("--series beyond the list", study(("t2_tra", "dwi"), ["--series", "9"]), EXIT_USAGE, ["--series 9 does not exist"]),
    Case("--series-uid unknown", study(("t2_tra", "dwi"), ["--series-uid", "1.2.3.4"]), EXIT_USAGE, ["1.2.3.4"]),
    Case("--series with a file", file_given_series, EXIT_USAGE, ["--series", "DICOM folder"]),
    # not a T2 scan (exit 4)
    Case("binary mask", labelmap([1], ".nrrd"), EXIT_INVALID, ["labelmap or mask"]),
    Case("mask 0/255", labelmap([255], ".nii.gz"), EXIT_INVALID, ["labelmap or mask", "255"]),
    Case("zonal labelmap", labelmap([1, 2], ".nii.gz"), EXIT_INVALID, ["labelmap or mask"]),
    Case("probability map", probability_map, EXIT_INVALID, ["probability map"]),
    Case("probability maps as 4D", probability_4d, EXIT_INVALID, ["4D"]),
    Case("own labelmap output", own_output, EXIT_INVALID, ["written by unetsegment", "prostate-wholegland-t2"]),
    Case("own .seg.nrrd output", own_seg_nrrd, EXIT_INVALID, ["segmentation"]),
    # not segmentable (exit 4, the classes that existed before)
    Case("2D image", image_2d, EXIT_INVALID, ["2D"]),
    Case("constant image", constant, EXIT_INVALID, ["constant"]),
    Case("NaN values", nan_values, EXIT_INVALID, ["NaN"]),
    Case("two slices", two_slices, EXIT_INVALID, ["slices"]),
    Case("15 mm field of view", tiny_field, EXIT_INVALID, ["in-plane"]),
    Case("zero spacing", zero_spacing, EXIT_INVALID, ["spacing"]),
    Case("colour image", vector_image, EXIT_INVALID, ["components"]),
    # real scanner DICOM (ProstateX-0000 t2w), damaged as a transfer or an export damages it
    Case("real: slice 10 missing", real(_drop(9)), EXIT_INVALID, ["missing slices"], real_data=True),
    Case("real: extra copy of slice 9", real(_real_duplicate), EXIT_INVALID, ["duplicated"], "1-99.dcm", real_data=True),
    Case("real: one slice moved 1.2 mm", real(_real_shift), EXIT_INVALID, ["uneven"], real_data=True),
    Case("real: zero-byte slice", real(lambda fs: fs[6].write_bytes(b"")), EXIT_INPUT, ["empty"], "1-07.dcm", real_data=True),
    Case("real: truncated slice", real(lambda fs: _truncate(fs[12], 0.8)), EXIT_INPUT, ["damaged"], "1-13.dcm", real_data=True),
]  # fmt: skip


#: awkward inputs that are read: (name, builder, words one of the stdout or stderr lines must hold)
READABLE: List[Tuple[str, Callable[[Path, Path], Built], Sequence[str]]] = [
    ("study tree picks the axial T2", study(("localizer", "t2_tra", "t2_sag", "dwi", "adc", "dce")), ["series 2 't2_tse_tra'", "only axial T2", "left out"]),
    ("T2 known by timing only", study(("localizer", "anonymous_t2", "dwi")), ["series 2 'series 5'", "TR 6000 ms / TE 110 ms"]),
    ("study with two axial T2, --series 3", study(("localizer", "t2_tra", "t2_tra"), ["--series", "3"]), ["chosen with --series 3"]),
    ("flat export, all series in one folder", lambda f, s: (write_study(f / "flat", flat=True) and f / "flat", []), ["only axial T2"]),
    ("DICOMDIR followed", lambda f, s: (write_dicomdir(write_study(f / "tree") and f / "tree"), []), ["only axial T2"]),
    ("RLE", series_then(lambda fs: compress(fs, "rle")), ["the only series"]),
    ("JPEG Lossless", series_then(lambda fs: compress(fs, "jpeg_lossless")), ["the only series"]),
    ("JPEG 2000", series_then(lambda fs: compress(fs, "jpeg2000")), ["the only series"]),
    ("enhanced multi-frame MR, frames shuffled", lambda f, s: (write_enhanced_mr(f / "mf" / "mf.dcm", frame_order=[5, 0, 11, 3, 1, 2, 4, 6, 7, 8, 9, 10]).parent, []), ["T2W_TSE_ax", "the only series"]),
    ("uneven spacing resampled", series(positions=[0, 1, 2, 3, 4, 5.3, 6, 7, 8, 9, 10, 11]), ["resampled"]),
    ("missing slice resampled", series(positions=[0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11]), ["resampled", "11 slices -> 12"]),
    ("sagittal T2 alone: warned", lambda f, s: (write_study(f / "s", kinds=("t2_sag",)) and f / "s", []), ["does not look like an axial T2"]),
]  # fmt: skip
#: the readable cases that need --resample-uneven
RESAMPLED = {"uneven spacing resampled", "missing slice resampled"}
