"""Model packages: one folder with everything inference needs.

A package folder holds::

    model.json          id, version, architecture, preprocessing, labels, training, licence, sha256 of
                        the weights and of the ONNX network
    weights.safetensors network weights (safetensors: loading cannot run code); PyTorch reads them
    model.onnx          the same network exported to ONNX (optional); ONNX Runtime runs it on the CPU
    README.md           optional model card
    report/             optional evaluation report

``model.json`` is the only thing inference reads besides the weights, so a
model trained by ``training/`` and one downloaded by the Slicer module are
used the same way. Axis orders are named in the keys: ``*_xyz_mm`` is ITK
order (x, y, z), ``*_zyx`` is numpy/tensor order (z, y, x).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .labels import STRUCTURES, Structure
from .preprocessing import PreprocessingSpec

log = logging.getLogger(__name__)

#: Timestamp of every zip entry (the earliest the zip format holds), so zips are reproducible.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "model.onnx"
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SEMVER_RE = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")


class ModelPackageError(Exception):
    """A model package is missing, malformed or fails its checksum."""


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class LabelEntry:
    """One output label of a model: its value in the labelmap and its structure."""

    value: int
    structure: Structure

    def to_dict(self) -> Dict[str, Any]:
        d = {"value": self.value}
        d.update(self.structure.to_dict())
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> LabelEntry:
        name = d["name"]
        base = STRUCTURES.get(name)
        term = d.get("terminology", {}).get("type", {})
        s = Structure(
            name=name,
            display_name=d.get("display_name", base.display_name if base else name),
            color=tuple(int(c) for c in d.get("color", base.color if base else (128, 128, 128))),  # type: ignore[arg-type]
            snomed_code=str(term.get("code", base.snomed_code if base else "")),
            snomed_meaning=str(term.get("meaning", base.snomed_meaning if base else name)),
        )
        value = int(d["value"])
        if value < 1 or value > 255:
            raise ModelPackageError(f"label value {value} of {name!r} is outside 1-255")
        return cls(value, s)


@dataclass(frozen=True)
class InferenceSpec:
    """Sliding-window settings: patch size (z, y, x) voxels on the model grid, window overlap, blending,
    and the test-time flips the model supports: the image axes (``"x"`` left-right, ``"y"``,
    ``"z"``) it was trained to be mirror-invariant along, e.g. ``("x",)`` for left-right flip
    augmentation. Flipping along an axis the model never saw mirrored gives it an image unlike its
    training data (prostate anatomy is not symmetric front-back), so only these are used."""

    patch_size_zyx: Tuple[int, int, int]
    overlap: float = 0.5
    blend_mode: str = "gaussian"
    test_time_flips: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < 1:
            raise ModelPackageError(f"inference overlap must be in [0, 1), not {self.overlap}")
        flips = self.test_time_flips
        if any(a not in ("x", "y", "z") for a in flips) or len(set(flips)) != len(flips):
            raise ModelPackageError(f"inference test_time_flips must be distinct axes among x, y, z, not {list(flips)}")

    def to_dict(self) -> Dict[str, Any]:
        return {
            "patch_size_zyx": list(self.patch_size_zyx),
            "overlap": self.overlap,
            "blend_mode": self.blend_mode,
            "test_time_flips": list(self.test_time_flips),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> InferenceSpec:
        return cls(
            tuple(int(v) for v in d["patch_size_zyx"]),
            float(d.get("overlap", 0.5)),
            str(d.get("blend_mode", "gaussian")),
            tuple(str(a) for a in d.get("test_time_flips", ())),
        )  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelInfo:
    """The parsed ``model.json`` of a model package."""

    id: str
    version: str
    name: str
    description: str
    architecture: Dict[str, Any]
    preprocessing: PreprocessingSpec
    inference: InferenceSpec
    labels: Tuple[LabelEntry, ...]
    input: Dict[str, Any] = field(default_factory=lambda: {"modality": "MR", "sequence": "T2w", "channels": 1})
    training: Dict[str, Any] = field(default_factory=dict)
    license: Dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    #: sha256 of ``model.onnx``; empty when the package has no ONNX network
    onnx_sha256: str = ""
    onnx_opset: int = 0

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.id):
            raise ModelPackageError(f"model id {self.id!r} must be lower-case letters, digits, '.', '_' or '-'")
        if not _SEMVER_RE.match(self.version):
            raise ModelPackageError(f"model version {self.version!r} is not a semantic version (e.g. 1.0.0)")
        values = [lab.value for lab in self.labels]
        if not values or len(set(values)) != len(values):
            raise ModelPackageError("model labels must be non-empty with distinct values")

    @property
    def num_classes(self) -> int:
        """Network output channels: background plus one per label."""
        return max(lab.value for lab in self.labels) + 1

    @property
    def structures(self) -> List[str]:
        return [lab.structure.name for lab in self.labels]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "id": self.id,
            "version": self.version,
            "name": self.name,
            "description": self.description,
            "architecture": self.architecture,
            "input": self.input,
            "preprocessing": self.preprocessing.to_dict(),
            "inference": self.inference.to_dict(),
            "labels": [lab.to_dict() for lab in self.labels],
            "training": self.training,
            "license": self.license,
            "weights": {"file": WEIGHTS_FILE, "sha256": self.weights_sha256},
            **(
                {"onnx": {"file": ONNX_FILE, "sha256": self.onnx_sha256, "opset": self.onnx_opset}}
                if self.onnx_sha256
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> ModelInfo:
        try:
            fmt = int(d.get("format_version", 0))
            if fmt != FORMAT_VERSION:
                raise ModelPackageError(
                    f"model.json format_version {fmt} is not supported (this UNetSegment reads {FORMAT_VERSION})"
                )
            return cls(
                id=str(d["id"]),
                version=str(d["version"]),
                name=str(d.get("name", d["id"])),
                description=str(d.get("description", "")),
                architecture=dict(d["architecture"]),
                preprocessing=PreprocessingSpec.from_dict(d["preprocessing"]),
                inference=InferenceSpec.from_dict(d["inference"]),
                labels=tuple(LabelEntry.from_dict(x) for x in d["labels"]),
                input=dict(d.get("input", {})),
                training=dict(d.get("training", {})),
                license=dict(d.get("license", {})),
                weights_sha256=str(d.get("weights", {}).get("sha256", "")),
                onnx_sha256=str(d.get("onnx", {}).get("sha256", "")),
                onnx_opset=int(d.get("onnx", {}).get("opset", 0)),
            )
        except ModelPackageError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ModelPackageError(f"model.json is malformed: {type(e).__name__}: {e}") from e


class ModelPackage:
    """A model package folder on disk. ``ModelPackage.load(folder)`` reads and checks it."""

    def __init__(self, path: Path, info: ModelInfo) -> None:
        self.path = Path(path)
        self.info = info

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def has_onnx(self) -> bool:
        """The package carries an ONNX network (listed in ``model.json`` and present)."""
        return bool(self.info.onnx_sha256) and self.onnx_path.is_file()

    def read_onnx(self) -> bytes:
        """The bytes of ``model.onnx``, checked against ``model.json``'s sha256 (read once, so what
        is checked is what runs)."""
        if not self.info.onnx_sha256:
            raise ModelPackageError(f"model package {self.path} has no ONNX network")
        try:
            data = self.onnx_path.read_bytes()
        except OSError as e:
            raise ModelPackageError(f"cannot read {self.onnx_path}: {e.strerror or e}") from e
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.info.onnx_sha256:
            raise ModelPackageError(
                f"ONNX network {self.onnx_path} fails its checksum (sha256 {actual[:12]}..., "
                f"expected {self.info.onnx_sha256[:12]}...)"
            )
        return data

    @classmethod
    def load(cls, path: Union[str, Path], verify: bool = True) -> ModelPackage:
        """Read ``model.json``; with ``verify`` also check the weights' sha256."""
        path = Path(path)
        meta = path / MODEL_JSON
        if not meta.is_file():
            raise ModelPackageError(f"{path} is not a model package (no {MODEL_JSON})")
        try:
            d = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelPackageError(f"cannot read {meta}: {e}") from e
        pkg = cls(path, ModelInfo.from_dict(d))
        if not pkg.weights_path.is_file():
            raise ModelPackageError(f"model package {path} has no {WEIGHTS_FILE}")
        if pkg.info.onnx_sha256 and not pkg.onnx_path.is_file():
            raise ModelPackageError(f"model package {path} lists {ONNX_FILE} in {MODEL_JSON} but has no such file")
        if verify:
            pkg.verify()
        return pkg

    def verify(self) -> None:
        """Raise :class:`ModelPackageError` unless the weights (and the ONNX network, where the package
        has one) match ``model.json``'s sha256."""
        expected = self.info.weights_sha256
        if not expected:
            raise ModelPackageError(f"model package {self.path} has no weights sha256 in {MODEL_JSON}")
        actual = sha256_file(self.weights_path)
        if actual != expected:
            raise ModelPackageError(
                f"model weights {self.weights_path} fail their checksum (sha256 {actual[:12]}..., expected {expected[:12]}...)"
            )
        if self.info.onnx_sha256:
            self.read_onnx()

    def build_network(self):  # -> torch.nn.Module
        """The network described by ``architecture``, with the package's weights loaded (on CPU)."""
        from safetensors.torch import load_file

        from .network import UNet3D, UNet3DConfig

        arch = self.info.architecture
        if arch.get("name") != "UNet3D":
            raise ModelPackageError(f"unsupported architecture {arch.get('name')!r}")
        try:
            config = UNet3DConfig.from_dict(arch.get("parameters", {}))
        except (TypeError, ValueError) as e:
            raise ModelPackageError(f"bad UNet3D parameters in {MODEL_JSON}: {e}") from e
        if config.out_channels != self.info.num_classes:
            raise ModelPackageError(
                f"network has {config.out_channels} outputs but the labels need {self.info.num_classes}"
            )
        net = UNet3D(config)
        try:
            state = load_file(str(self.weights_path), device="cpu")
            net.load_state_dict(state, strict=True)
        except Exception as e:  # safetensors and torch raise several types on corrupt or mismatched files
            reason = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
            raise ModelPackageError(f"cannot load weights {self.weights_path}: {reason[:300]}") from e
        net.eval()
        return net

    @staticmethod
    def write(
        folder: Union[str, Path],
        info: ModelInfo,
        state_dict: Dict[str, Any],
        extra_files: Optional[Dict[str, Union[str, Path]]] = None,
        onnx: bool = True,
        weights_from: Optional[Union[str, Path]] = None,
    ) -> ModelPackage:
        """Write a package: weights (safetensors), the ONNX network exported from them (``onnx``),
        then ``model.json`` with their sha256.

        ``extra_files`` maps names inside the package to files to copy (model
        card, report figures). ``weights_from``: copy this safetensors file byte for byte
        instead of serialising ``state_dict`` (re-packaging released weights unchanged).
        """
        import shutil

        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        # one metadata entry: safetensors writes its metadata map in hash order, so with several the
        # bytes (and the sha256) of the same weights would change from one export to the next
        if weights_from is not None:
            shutil.copyfile(weights_from, folder / WEIGHTS_FILE)
        else:
            save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"model": f"{info.id} {info.version}"})
        digest = sha256_file(folder / WEIGHTS_FILE)
        info = ModelInfo(**{**info.__dict__, "weights_sha256": digest, "onnx_sha256": "", "onnx_opset": 0})
        if onnx:
            from .onnx_export import OPSET, export_onnx

            pkg = ModelPackage(folder, info)
            export_onnx(pkg.build_network(), folder / ONNX_FILE)
            info = ModelInfo(**{**info.__dict__, "onnx_sha256": sha256_file(folder / ONNX_FILE), "onnx_opset": OPSET})
        elif (folder / ONNX_FILE).exists():
            (folder / ONNX_FILE).unlink()  # an ONNX of other weights must not stay beside these
        for name, src in (extra_files or {}).items():
            dst = folder / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        tmp = folder / (MODEL_JSON + ".tmp")
        tmp.write_text(json.dumps(info.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, folder / MODEL_JSON)
        return ModelPackage(folder, info)

    def to_zip(self, zip_path: Union[str, Path]) -> Path:
        """Zip the package folder (files at the zip's top level) and return the zip's path.

        The zip is byte-reproducible: entries sorted by name, stored uncompressed
        (float weights barely compress, and deflate output differs between zlib
        builds), with a fixed timestamp and permissions. The same package files
        therefore give the same sha256 on every machine, which is what lets a
        catalogue entry be checked against the package in the repository.
        """
        zip_path = Path(zip_path)
        tmp = zip_path.with_name(zip_path.name + ".part")
        files = sorted((f.relative_to(self.path).as_posix(), f) for f in self.path.rglob("*") if f.is_file())
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            for name, f in files:
                entry = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
                entry.external_attr = 0o644 << 16  # rw-r--r--, whatever the local umask
                entry.create_system = 3  # Unix, also when zipped on Windows
                z.writestr(entry, f.read_bytes(), compress_type=zipfile.ZIP_STORED)
        os.replace(tmp, zip_path)
        return zip_path
