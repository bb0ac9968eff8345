"""Builders of small datasets written in exactly each reader's on-disk format.

- NCI-ISBI 2013 (TCIA): DICOM MR series written with pydicom under patient /
  study / series folders, and NRRD labels written with pynrrd (LPS space) in
  Training / Leaderboard / Test folders.
- MSD Task05_Prostate: 4D NIfTI (T2, ADC) with nibabel, 3D labels, dataset.json.
- PROMISE12: MetaImage ``CaseNN.mhd`` with ``CaseNN_segmentation.mhd``.

Images come from ``UNetSegmentLib.synthetic.make_case`` on a coarse grid
(32 x 32 x 8 voxels of 3 x 3 x 8 mm), so labels sit on plausible anatomy: the
PZ is posterior of the TZ, which is what the NCI-ISBI reader's anatomical rule
checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentLib.synthetic import make_case

SIZE_XYZ = (32, 32, 8)
SPACING_XYZ = (3.0, 3.0, 8.0)
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def small_case(
    seed: int, zones: bool = True, direction: Optional[Sequence[float]] = None
) -> Tuple[sitk.Image, sitk.Image]:
    """A coarse synthetic case (image int16, label uint8 1 = PZ, 2 = TZ), optionally re-oriented (same voxels)."""
    image, label = make_case(seed, spacing_xyz=SPACING_XYZ, size_xyz=SIZE_XYZ, zones=zones)
    if direction is not None:
        for img in (image, label):
            img.SetDirection([float(d) for d in direction])
    return image, label


def oblique_direction(degrees: float) -> Tuple[float, ...]:
    """Row-major 3x3 direction of an axial grid tilted by ``degrees`` about the LPS x axis."""
    a = np.radians(degrees)
    m = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    return tuple(float(v) for v in m.ravel())


def remap(label: sitk.Image, mapping: Dict[int, int]) -> sitk.Image:
    """A copy of ``label`` with values replaced (``{old: new}``; others unchanged)."""
    arr = sitk.GetArrayFromImage(label)
    out = arr.copy()
    for old, new in mapping.items():
        out[arr == old] = new
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(label)
    return img


def write_dicom_series(
    folder: Path,
    image: sitk.Image,
    patient_id: str,
    series_description: str = "T2 TSE AX",
    field_strength: float = 3.0,
    series_number: int = 3,
) -> Path:
    """Write a 3D image as an MR Image Storage series, one file per slice (``1-01.dcm`` ...).

    Geometry follows the image exactly: ImagePositionPatient of slice k is the
    LPS position of voxel (0, 0, k), ImageOrientationPatient the first two
    direction columns, PixelSpacing (row spacing, column spacing).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    arr = np.clip(sitk.GetArrayFromImage(image), 0, 65535).astype(np.uint16)  # (z, y, x)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    sx, sy, sz = image.GetSpacing()
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    for k in range(arr.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.Manufacturer = "SIEMENS" if field_strength >= 3 else "Philips Medical Systems"
        ds.MagneticFieldStrength = field_strength
        ds.PatientID = patient_id
        ds.PatientName = patient_id
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = series_description
        ds.BodyPartExamined = "PROSTATE"
        ds.ScanningSequence = "SE"
        ds.ImagePositionPatient = [float(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.PixelSpacing = [float(sy), float(sx)]
        ds.SliceThickness = float(sz)
        ds.SpacingBetweenSlices = float(sz)
        ds.SliceLocation = float(ds.ImagePositionPatient[2])
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = arr[k].tobytes()
        pydicom.dcmwrite(str(folder / f"1-{k + 1:02d}.dcm"), ds, enforce_file_format=True)
    return folder


def write_nrrd_label(path: Path, label: sitk.Image) -> Path:
    """Write a 3D label as NRRD with pynrrd: ``space: left-posterior-superior``, gzip, axes (x, y, z)."""
    import nrrd

    path.parent.mkdir(parents=True, exist_ok=True)
    data_xyz = np.transpose(sitk.GetArrayFromImage(label).astype(np.uint8), (2, 1, 0))
    direction = np.asarray(label.GetDirection()).reshape(3, 3)
    header = {
        "type": "unsigned char",
        "dimension": 3,
        "space": "left-posterior-superior",
        # one row per axis: the LPS step of one voxel along i, j, k
        "space directions": (direction * np.asarray(label.GetSpacing())).T,
        "space origin": np.asarray(label.GetOrigin(), dtype=float),
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    nrrd.write(str(path), data_xyz, header, index_order="F")
    return path


def crop_z(image: sitk.Image, start: int, stop: int) -> sitk.Image:
    """Slices ``start:stop`` of an image, with the origin moved accordingly (same physical positions)."""
    size = list(image.GetSize())
    size[2] = stop - start
    return sitk.RegionOfInterest(image, size, [0, 0, start])


def make_nci_isbi(root: Path) -> Path:
    """An NCI-ISBI 2013 tree as TCIA distributes it.

    ======================  ===========  =====================================================
    patient                 label        what it tests
    ======================  ===========  =====================================================
    Prostate3T-01-0001      Training     default values (1 = CG, 2 = PZ), label on the DICOM grid
    ProstateDx-01-0001      Training     swapped values (1 = PZ, 2 = CG); label cropped in z;
                                         a second, unrelated series in the study
    Prostate3T-01-0002      Leaderboard  ``_truth`` name; oblique series (10 degrees)
    ProstateDx-01-0002      Test         default values
    ProstateDx-01-0003      Training     label 300 mm away from its series (left out)
    Prostate3T-01-0003      none         DICOM only (not in the challenge: skipped)
    ======================  ===========  =====================================================
    """
    default = {1: 2, 2: 1}  # synthetic 1 = PZ, 2 = TZ  ->  NCI default 1 = CG, 2 = PZ
    swapped: Dict[int, int] = {}
    plan = [
        ("Prostate3T-01-0001", "Training", "", default, None, 0),
        ("ProstateDx-01-0001", "Training", "", swapped, None, 1),
        ("Prostate3T-01-0002", "Leaderboard", "_truth", default, oblique_direction(10.0), 2),
        ("ProstateDx-01-0002", "Test", "", default, None, 3),
        ("ProstateDx-01-0003", "Training", "", default, None, 4),
        ("Prostate3T-01-0003", None, "", default, None, 5),
    ]
    for pid, split, suffix, mapping, direction, seed in plan:
        image, label = small_case(seed, direction=direction)
        collection = "Prostate-3T" if pid.startswith("Prostate3T") else "PROSTATE-DIAGNOSIS"
        strength = 3.0 if pid.startswith("Prostate3T") else 1.5
        study = root / collection / pid / f"1.3.6.1.4.1.14519.5.2.1.7308.{seed}"
        write_dicom_series(study / f"1.3.6.1.4.1.14519.5.2.1.7308.{seed}.3", image, pid, field_strength=strength)
        if pid == "ProstateDx-01-0001":
            other = sitk.Image([16, 16, 12], sitk.sitkInt16) + 100
            other.SetOrigin([200.0, 200.0, 200.0])
            other.SetSpacing([2.0, 2.0, 4.0])
            write_dicom_series(study / "1.3.6.1.4.1.14519.5.2.1.7308.1.7", other, pid, "ADC", strength, 7)
        if split is None:
            continue
        lab = remap(label, mapping)
        if pid == "ProstateDx-01-0001":
            nz = lab.GetSize()[2]
            lab = crop_z(lab, 1, nz - 1)
        if pid == "ProstateDx-01-0003":
            lab.SetOrigin([o + 300.0 for o in lab.GetOrigin()])
        write_nrrd_label(root / split / f"{pid}{suffix}.nrrd", lab)
    return root


def write_nifti(path: Path, data_xyz: np.ndarray, image: sitk.Image) -> Path:
    """Write ``data_xyz`` (x, y, z[, t]) with ``image``'s geometry as NIfTI via nibabel (RAS affine)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = lps_to_ras @ np.asarray(image.GetOrigin())
    img = nib.Nifti1Image(data_xyz, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def make_msd(root: Path, train_ids: Sequence[int] = (0, 2), test_ids: Sequence[int] = (5,)) -> Path:
    """A Task05_Prostate folder: 4D T2+ADC NIfTI images, 3D labels (1 = PZ, 2 = TZ), dataset.json."""
    training, test = [], []
    for n in list(train_ids) + list(test_ids):
        image, label = small_case(100 + n)
        t2 = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)).astype(np.float32)
        adc = 2000.0 - t2  # a different contrast, so the channel read can be told apart
        name = f"prostate_{n:02d}.nii.gz"
        if n in train_ids:
            write_nifti(root / "imagesTr" / name, np.stack([t2, adc], axis=-1), image)
            write_nifti(root / "labelsTr" / name, np.transpose(sitk.GetArrayFromImage(label), (2, 1, 0)), label)
            (root / "imagesTr" / f"._{name}").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            write_nifti(root / "imagesTs" / name, np.stack([t2, adc], axis=-1), image)
            test.append(f"./imagesTs/{name}")
    meta = {
        "name": "PROSTATE",
        "description": "Prostate transitional zone and peripheral zone segmentation",
        "reference": "Radboud University, Nijmegen Medical Centre",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0 04/05/2018",
        "tensorImageSize": "4D",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=4), encoding="utf-8")
    return root


def make_promise12_mhd(
    root: Path, train_numbers: Sequence[int] = (0, 13, 38), test_numbers: Sequence[int] = (50,)
) -> Path:
    """A PROMISE12 folder in the challenge's MetaImage layout (whole-gland labels, value 1)."""
    root.mkdir(parents=True, exist_ok=True)
    for n in list(train_numbers) + list(test_numbers):
        image, label = small_case(200 + n, zones=False)
        sitk.WriteImage(image, str(root / f"Case{n:02d}.mhd"))
        if n in train_numbers:
            sitk.WriteImage(label, str(root / f"Case{n:02d}_segmentation.mhd"))
    return root


def make_promise12_download(root: Path) -> Path:
    """The PROMISE12 download as its zips unpack: TrainingData_Part1..3 (MetaImage with labels) and TestData.

    The test set's case numbers repeat the training set's, as in the challenge.
    """
    make_promise12_mhd(root / "TrainingData_Part1", train_numbers=(0, 1), test_numbers=())
    make_promise12_mhd(root / "TrainingData_Part2", train_numbers=(13, 26), test_numbers=())
    make_promise12_mhd(root / "TrainingData_Part3", train_numbers=(38,), test_numbers=())
    make_promise12_mhd(root / "TestData", train_numbers=(), test_numbers=(0, 1))
    return root


def make_msd_download(root: Path) -> Path:
    """``Task05_Prostate.tar`` as unpacked: the folder that holds ``Task05_Prostate/``."""
    make_msd(root / "Task05_Prostate")
    return root


def make_prostatex(root: Path, patients: Sequence[int] = (0, 1), unlabelled: Sequence[int] = (2,)) -> Path:
    """ProstateX patients as ../shared/data keeps them: ``ProstateX-NNNN/t2w.nii.gz`` and ``labels/``
    with a whole-gland AI reference (1 = gland) and a zonal one (1 = PZ, 2 = TZ)."""
    for n in list(patients) + list(unlabelled):
        image, label = small_case(300 + n)
        folder = root / f"ProstateX-{n:04d}"
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / "t2w.nii.gz"))
        if n in patients:
            sitk.WriteImage(remap(label, {2: 1}), str(folder / "labels" / "wholegland_AI_Guerbet23.nii.gz"))
            sitk.WriteImage(label, str(folder / "labels" / "zonal_pz1_tz2_AI_Yuan23.nii.gz"))
    return root
