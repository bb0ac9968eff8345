"""DICOM studies written in their true format for the input tests: series, study trees, DICOMDIR,
enhanced multi-frame MR, compressed transfer syntaxes, and damaged files.

Series are MR Image Storage files written with pydicom, one per slice, with
the attributes a scanner writes and the series choice reads (SeriesDescription,
ProtocolName, ImageType, ScanningSequence, SequenceName, EchoTime,
RepetitionTime, DiffusionBValue, orientation). Geometry follows the given
image: ImagePositionPatient of slice k is the LPS position of voxel (0, 0, k).
Compressed files are encoded by real codecs: JPEG Lossless and JPEG 2000 by
GDCM (SimpleITK's writer), RLE by pydicom's encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

#: attributes of the usual series of a prostate MR study (mpMRI), as a scanner writes them
KINDS: Dict[str, Dict[str, object]] = {
    "t2_tra": dict(SeriesDescription="t2_tse_tra", ProtocolName="t2_tse_tra", ImageType=["ORIGINAL", "PRIMARY", "M", "NORM"], ScanningSequence="SE", SequenceName="*tse2d1_25", EchoTime=104, RepetitionTime=5660),
    "t2_sag": dict(SeriesDescription="t2_tse_sag", ProtocolName="t2_tse_sag", ImageType=["ORIGINAL", "PRIMARY", "M", "NORM"], ScanningSequence="SE", SequenceName="*tse2d1_25", EchoTime=101, RepetitionTime=3800),
    "t2_cor": dict(SeriesDescription="t2_tse_cor", ProtocolName="t2_tse_cor", ImageType=["ORIGINAL", "PRIMARY", "M", "NORM"], ScanningSequence="SE", SequenceName="*tse2d1_25", EchoTime=101, RepetitionTime=3800),
    "localizer": dict(SeriesDescription="localizer", ProtocolName="localizer", ImageType=["ORIGINAL", "PRIMARY", "M", "NORM"], ScanningSequence="GR", SequenceName="*fl2d1", EchoTime=4, RepetitionTime=8.6),
    "dwi": dict(SeriesDescription="ep2d_diff_b50_400_800", ProtocolName="ep2d_diff", ImageType=["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"], ScanningSequence="EP", SequenceName="*ep_b800t", EchoTime=81, RepetitionTime=2700, DiffusionBValue=800),
    "adc": dict(SeriesDescription="ep2d_diff_ADC", ProtocolName="ep2d_diff", ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "ADC"], ScanningSequence="EP", SequenceName="*ep_b50_800", EchoTime=81, RepetitionTime=2700),
    "dce": dict(SeriesDescription="tfl_3d dynamic", ProtocolName="dce_vibe", ImageType=["ORIGINAL", "PRIMARY", "M", "NORM"], ScanningSequence="GR", SequenceName="*tfl3d1", EchoTime=1.4, RepetitionTime=3.9),
    "anonymous_t2": dict(SeriesDescription="series 5", ProtocolName="", ImageType=["ORIGINAL", "PRIMARY", "M", "NORM"], ScanningSequence="SE", SequenceName="*tse2d1_17", EchoTime=110, RepetitionTime=6000),
}  # fmt: skip

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
#: rows posterior, columns inferior, slices towards the right (normal -x), as a sagittal acquisition
SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
#: rows to the left, columns inferior, slices posterior
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)


def volume(size_xyz=(64, 64, 12), spacing=(1.5, 1.5, 3.0), direction=AXIAL, seed: int = 0) -> sitk.Image:
    """A uint16-range noisy volume with a bright ellipsoid (a stand-in for a T2 scan), ITK order x, y, z."""
    rng = np.random.default_rng(seed)
    x, y, z = size_xyz
    zz, yy, xx = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    r = ((xx - x / 2) / (x / 5)) ** 2 + ((yy - y / 2) / (y / 6)) ** 2 + ((zz - z / 2) / (z / 4)) ** 2
    arr = (200 + 300 * (r < 1) + rng.normal(0, 20, r.shape)).clip(0, 4000).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin((-50.0, -60.0, -20.0))
    return img


def _base(kind: str, k: int, study_uid: str, series_uid: str, patient_id: str, series_number: int):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240102", "101500", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "", "", "", "M"
    ds.Manufacturer = "SIEMENS"
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame of reference"])  # one per study
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = k + 1
    for key, value in KINDS[kind].items():
        setattr(ds, key, value)
    return ds


def write_series(
    folder: Path,
    image: Optional[sitk.Image] = None,
    kind: str = "t2_tra",
    patient_id: str = "P1",
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    series_number: int = 3,
    positions_k: Optional[Sequence[float]] = None,
    names: str = "IM{k:04d}.dcm",
    **tags,
) -> List[Path]:
    """Write ``image`` as one MR series, one file per slice; returns the files in slice order.

    ``positions_k``: the slice index (may be fractional, repeated or skipped) at
    which each written slice lies; default every slice once. ``tags`` set or
    override attributes on every file.
    """
    import pydicom
    from pydicom.uid import generate_uid

    image = image if image is not None else volume()
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.clip(sitk.GetArrayFromImage(image), 0, 65535).astype(np.uint16)
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    sx, sy, sz = image.GetSpacing()
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    ks = list(positions_k) if positions_k is not None else list(range(arr.shape[0]))
    files = []
    for n, kpos in enumerate(ks):
        ds = _base(kind, n, study_uid, series_uid, patient_id, series_number)
        ds.ImagePositionPatient = [float(v) for v in image.TransformContinuousIndexToPhysicalPoint((0, 0, float(kpos)))]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([d[:, 0], d[:, 1]])]
        ds.PixelSpacing = [float(sy), float(sx)]
        ds.SliceThickness = float(sz)
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = arr[int(round(kpos)) % arr.shape[0]].tobytes()
        for key, value in tags.items():
            setattr(ds, key, value)
        path = folder / names.format(k=n + 1, series=series_number)
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
        files.append(path)
    return files


def write_study(root: Path, patient_id: str = "P1", kinds: Sequence[str] = ("localizer", "t2_tra", "t2_sag", "dwi", "adc", "dce"), seed: int = 0, flat: bool = False) -> Dict[str, List[Path]]:  # fmt: skip
    """A study tree ``root/<patient>/<study>/<series>/`` (or every file in ``root`` when ``flat``)."""
    from pydicom.uid import generate_uid

    study_uid = generate_uid()
    planes = {"t2_sag": SAGITTAL, "t2_cor": CORONAL}
    # matrix sizes differ between series, as on a scanner (diffusion and localizers are coarser)
    grids = {"localizer": ((40, 40, 3), (4.0, 4.0, 8.0)), "dwi": ((32, 32, 12), (3.0, 3.0, 3.0)), "adc": ((32, 32, 12), (3.0, 3.0, 3.0)), "dce": ((48, 48, 12), (2.0, 2.0, 3.0))}  # fmt: skip
    out = {}
    for n, kind in enumerate(kinds, start=1):
        size, spacing = grids.get(kind, ((64, 64, 12), (1.5, 1.5, 3.0)))
        img = volume(size_xyz=size, spacing=spacing, direction=planes.get(kind, AXIAL), seed=seed + n)
        folder = root if flat else root / patient_id / "study1" / f"{n:02d}_{kind}"
        out[kind] = write_series(
            folder,
            img,
            kind,
            patient_id,
            study_uid,
            series_number=n,
            names=f"S{n:02d}_IM{{k:04d}}.dcm" if flat else "IM{k:04d}.dcm",
        )
    return out


def write_dicomdir(root: Path) -> Path:
    """A DICOMDIR in ``root`` listing every DICOM file below it (pydicom's FileSet), files renamed to its IDs."""
    import pydicom
    from pydicom.fileset import FileSet

    fs = FileSet()
    for p in sorted(root.rglob("*.dcm")):
        fs.add(pydicom.dcmread(str(p)))
    out = root.parent / (root.name + "_cd")
    fs.write(str(out))
    return out


def compress(files: Sequence[Path], syntax: str) -> None:
    """Re-encode each single-frame file in place: ``jpeg_lossless`` or ``jpeg2000`` (GDCM), ``rle`` (pydicom)."""
    import pydicom
    from pydicom.uid import RLELossless

    for path in files:
        ds = pydicom.dcmread(str(path))
        if syntax == "rle":
            ds.compress(RLELossless, encoding_plugin="pydicom")
        else:
            arr = ds.pixel_array
            tmp = path.with_suffix(".tmp.dcm")
            w = sitk.ImageFileWriter()
            w.SetFileName(str(tmp))
            w.SetUseCompression(True)
            w.SetCompressor({"jpeg_lossless": "JPEG", "jpeg2000": "JPEG2000"}[syntax])
            w.Execute(sitk.GetImageFromArray(arr.astype(np.uint16)))
            enc = pydicom.dcmread(str(tmp))
            tmp.unlink()
            ds.file_meta.TransferSyntaxUID = enc.file_meta.TransferSyntaxUID
            ds.PixelData = enc.PixelData
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        ds.save_as(str(path), enforce_file_format=True)


def write_enhanced_mr(
    path: Path, image: Optional[sitk.Image] = None, frame_order: Optional[Sequence[int]] = None
) -> Path:
    """``image`` as one Enhanced MR Image Storage file (multi-frame, per-frame plane positions).

    ``frame_order``: which slice each frame holds (default in order); a shuffled
    order checks that frames are placed by their positions, not their numbers.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    image = image if image is not None else volume()
    arr = np.clip(sitk.GetArrayFromImage(image), 0, 65535).astype(np.uint16)
    order = list(frame_order) if frame_order is not None else list(range(arr.shape[0]))
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    sx, sy, sz = image.GetSpacing()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENHANCED_MR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_MR_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = "MR", "P1", "P1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), generate_uid(), 7, 1
    ds.SeriesDescription = ds.ProtocolName = "T2W_TSE_ax"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = int(arr.shape[1]), int(arr.shape[2]), len(order)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    ori, meas, timing, echo = Dataset(), Dataset(), Dataset(), Dataset()
    ori.ImageOrientationPatient = [float(v) for v in np.concatenate([d[:, 0], d[:, 1]])]
    meas.PixelSpacing, meas.SliceThickness = [float(sy), float(sx)], float(sz)
    timing.RepetitionTime = 4500.0
    echo.EffectiveEchoTime = 100.0
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Seq([ori]), Seq([meas])
    shared.MRTimingAndRelatedParametersSequence, shared.MREchoSequence = Seq([timing]), Seq([echo])
    ds.SharedFunctionalGroupsSequence = Seq([shared])
    frames = []
    for k in order:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [float(v) for v in image.TransformIndexToPhysicalPoint((0, 0, int(k)))]
        item.PlanePositionSequence = Seq([pos])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Seq(frames)
    ds.PixelData = arr[order].tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path
