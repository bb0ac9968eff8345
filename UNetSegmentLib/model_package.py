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

An **ensemble** package (``format_version`` 2) holds several networks of the same
architecture, preprocessing, inference settings and labels (e.g. the folds of a
cross-validation), whose softmax outputs inference averages. Instead of ``weights`` and
``onnx``, its ``model.json`` lists them under ``members``::

    "members": [
      {"name": "fold0",
       "weights": {"file": "members/fold0/weights.safetensors", "sha256": "..."},
       "onnx": {"file": "members/fold0/model.onnx", "sha256": "...", "opset": 17},
       "provenance": {"fold": 0, "run": "runs/cv/fold0/NAME", ...}},
      ...],
    "members_per_quality": {"fast": 1, "standard": 1, "best": 4}

Every member's files are checked against their sha256 on load, and the bytes checked are
the bytes run. ``members_per_quality`` says how many members (the first N, in listed
order) run at each ``--quality``; absent, every member runs at every quality. A package
with one network keeps format 1, byte for byte as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .labels import STRUCTURES, Structure
from .preprocessing import PreprocessingSpec

log = logging.getLogger(__name__)

#: Timestamp of every zip entry (the earliest the zip format holds), so zips are reproducible.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)

#: ``model.json`` format of a package with one network, and of an ensemble package (``members``)
FORMAT_VERSION = 1
ENSEMBLE_FORMAT_VERSION = 2
MODEL_JSON = "model.json"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "model.onnx"
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SEMVER_RE = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: The inference qualities ``members_per_quality`` may name (``inference.QUALITY_SETTINGS``'s keys).
QUALITY_NAMES = ("fast", "standard", "best")
#: Where an ensemble's member files go inside the package: ``members/<name>/``.
MEMBERS_DIR = "members"
#: What an ensemble's members share, as the keys of ``model.json`` (a member may not set its own).
SHARED_KEYS = ("architecture", "input", "preprocessing", "inference", "labels")


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


def _package_relative(path: str, what: str) -> str:
    """``path`` if it names a file inside the package folder ('/'-separated, relative, no '..')."""
    parts = path.split("/")
    if not path or "\\" in path or path.startswith("/") or ":" in path or any(p in ("", ".", "..") for p in parts):
        raise ModelPackageError(f"{what} {path!r} is not a relative path inside the package")
    return path


@dataclass(frozen=True)
class MemberSpec:
    """One network of a package: its files (relative to the package folder, '/'-separated) with
    their sha256, and where it came from (``provenance``: fold, run, source package; free form).

    An ensemble lists these in ``model.json``'s ``members``; a package with one network has one
    implicit member, ``"model"``, made of its top-level ``weights.safetensors`` and ``model.onnx``.
    """

    name: str
    weights_file: str
    weights_sha256: str
    onnx_file: str = ""
    onnx_sha256: str = ""
    onnx_opset: int = 0
    provenance: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"name": self.name, "weights": {"file": self.weights_file, "sha256": self.weights_sha256}}
        if self.onnx_sha256:
            d["onnx"] = {"file": self.onnx_file, "sha256": self.onnx_sha256, "opset": self.onnx_opset}
        if self.provenance:
            d["provenance"] = self.provenance
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any], index: int) -> MemberSpec:
        """Parse ``members[index]``; a member that sets what members share, or an unknown key, is refused."""
        if not isinstance(d, dict):
            raise ModelPackageError(f"members[{index}] in {MODEL_JSON} is not an object")
        name = str(d.get("name", ""))
        if not _ID_RE.match(name):
            raise ModelPackageError(
                f"members[{index}] needs a name of lower-case letters, digits, '.', '_' or '-', not {name!r}"
            )
        shared = [k for k in SHARED_KEYS if k in d]
        if shared:
            raise ModelPackageError(
                f"member {name!r} sets its own {', '.join(shared)}: the members of an ensemble share the "
                f"package's (make a separate package for a different network)"
            )
        unknown = sorted(set(d) - {"name", "weights", "onnx", "provenance"})
        if unknown:
            raise ModelPackageError(f"member {name!r} has unknown keys {unknown} in {MODEL_JSON}")
        weights, onnx = d.get("weights") or {}, d.get("onnx") or {}
        sha = str(weights.get("sha256", "")).lower()
        if not _SHA256_RE.match(sha):
            raise ModelPackageError(f"member {name!r} has no valid weights sha256 in {MODEL_JSON}")
        onnx_sha = str(onnx.get("sha256", "")).lower()
        if onnx and not _SHA256_RE.match(onnx_sha):
            raise ModelPackageError(f"member {name!r} has no valid ONNX sha256 in {MODEL_JSON}")
        return cls(
            name=name,
            weights_file=_package_relative(str(weights.get("file", "")), f"member {name!r} weights file"),
            weights_sha256=sha,
            onnx_file=_package_relative(str(onnx["file"]), f"member {name!r} ONNX file") if onnx else "",
            onnx_sha256=onnx_sha,
            onnx_opset=int(onnx.get("opset", 0)),
            provenance=dict(d.get("provenance") or {}),
        )


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
    #: an ensemble's networks (empty: one network, the top-level weights and ONNX above)
    members: Tuple[MemberSpec, ...] = ()
    #: quality -> how many members (the first N) run at it; absent qualities run every member
    members_per_quality: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.id):
            raise ModelPackageError(f"model id {self.id!r} must be lower-case letters, digits, '.', '_' or '-'")
        if not _SEMVER_RE.match(self.version):
            raise ModelPackageError(f"model version {self.version!r} is not a semantic version (e.g. 1.0.0)")
        values = [lab.value for lab in self.labels]
        if not values or len(set(values)) != len(values):
            raise ModelPackageError("model labels must be non-empty with distinct values")
        if self.members:
            self._check_members()
        elif self.members_per_quality:
            raise ModelPackageError("members_per_quality is for ensemble packages (with members)")

    def _check_members(self) -> None:
        if self.weights_sha256 or self.onnx_sha256:
            raise ModelPackageError("an ensemble package lists its networks under members, not weights or onnx")
        names = [m.name for m in self.members]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ModelPackageError(f"ensemble members must have distinct names; {', '.join(dup)} is repeated")
        files = [f for m in self.members for f in (m.weights_file, m.onnx_file) if f]
        dup = sorted({f for f in files if files.count(f) > 1})
        if dup:
            raise ModelPackageError(f"ensemble members must have their own files; {', '.join(dup)} is listed twice")
        with_onnx = [m.name for m in self.members if m.onnx_sha256]
        if with_onnx and len(with_onnx) != len(self.members):
            without = [m.name for m in self.members if not m.onnx_sha256]
            raise ModelPackageError(
                f"member {without[0]!r} has no ONNX network but {with_onnx[0]!r} has: every member needs one, or none"
            )
        for quality, n in self.members_per_quality.items():
            if quality not in QUALITY_NAMES:
                raise ModelPackageError(
                    f"members_per_quality names {quality!r}; the qualities are {', '.join(QUALITY_NAMES)}"
                )
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self.members):
                raise ModelPackageError(
                    f"members_per_quality gives {quality} {n!r} members; it must be 1 to {len(self.members)}"
                )

    @property
    def num_classes(self) -> int:
        """Network output channels: background plus one per label."""
        return max(lab.value for lab in self.labels) + 1

    @property
    def structures(self) -> List[str]:
        return [lab.structure.name for lab in self.labels]

    @property
    def is_ensemble(self) -> bool:
        return bool(self.members)

    @property
    def networks(self) -> Tuple[MemberSpec, ...]:
        """The package's networks: the ensemble's members, or the one network as member ``"model"``."""
        if self.members:
            return self.members
        onnx = ONNX_FILE if self.onnx_sha256 else ""
        return (MemberSpec("model", WEIGHTS_FILE, self.weights_sha256, onnx, self.onnx_sha256, self.onnx_opset),)

    def members_for(self, quality: str) -> Tuple[MemberSpec, ...]:
        """The networks that run at ``quality``: the first ``members_per_quality[quality]`` (default all)."""
        networks = self.networks
        return networks[: self.members_per_quality.get(quality, len(networks))]

    def members_summary(self) -> str:
        """``"1 network"``, or e.g. ``"ensemble of 4 networks (fast 1, standard 1, best 4)"``: how many run at each quality."""
        if not self.members:
            return "1 network"
        per = ", ".join(f"{q} {len(self.members_for(q))}" for q in QUALITY_NAMES)
        return f"ensemble of {len(self.members)} networks ({per})"

    @property
    def weights_digest(self) -> str:
        """A sha256 naming the exact weights: the weights file's for one network; for an ensemble the
        sha256 of its members' weight sha256s, one per line in member order."""
        if not self.members:
            return self.weights_sha256
        return hashlib.sha256("".join(m.weights_sha256 + "\n" for m in self.members).encode("ascii")).hexdigest()

    def to_dict(self) -> Dict[str, Any]:
        """``model.json``: format 1 with ``weights`` (and ``onnx``) for one network, format 2 with ``members``."""
        d = self._common_dict()
        if self.members:
            d["members"] = [m.to_dict() for m in self.members]
            if self.members_per_quality:
                d["members_per_quality"] = {
                    q: self.members_per_quality[q] for q in QUALITY_NAMES if q in self.members_per_quality
                }
            return d
        d["weights"] = {"file": WEIGHTS_FILE, "sha256": self.weights_sha256}
        if self.onnx_sha256:
            d["onnx"] = {"file": ONNX_FILE, "sha256": self.onnx_sha256, "opset": self.onnx_opset}
        return d

    def _common_dict(self) -> Dict[str, Any]:
        """``model.json`` without the networks' files."""
        return {
            "format_version": ENSEMBLE_FORMAT_VERSION if self.members else FORMAT_VERSION,
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
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> ModelInfo:
        try:
            fmt = int(d.get("format_version", 0))
            if fmt not in (FORMAT_VERSION, ENSEMBLE_FORMAT_VERSION):
                raise ModelPackageError(
                    f"model.json format_version {fmt} is not supported (this UNetSegment reads "
                    f"{FORMAT_VERSION} and {ENSEMBLE_FORMAT_VERSION})"
                )
            members: Tuple[MemberSpec, ...] = ()
            if fmt == ENSEMBLE_FORMAT_VERSION:
                listed = d.get("members")
                if not isinstance(listed, list) or not listed:
                    raise ModelPackageError(f"model.json format_version {fmt} (an ensemble) lists no members")
                if "weights" in d or "onnx" in d:
                    raise ModelPackageError("an ensemble package lists its networks under members, not weights or onnx")
                members = tuple(MemberSpec.from_dict(m, i) for i, m in enumerate(listed))
            elif "members" in d or "members_per_quality" in d:
                raise ModelPackageError(
                    f"model.json lists members (an ensemble) but has format_version {fmt}, "
                    f"not {ENSEMBLE_FORMAT_VERSION}"
                )
            per_quality = d.get("members_per_quality") or {}
            if not isinstance(per_quality, dict):
                raise ModelPackageError("members_per_quality must map qualities to member counts")
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
                members=members,
                members_per_quality=dict(per_quality),
            )
        except ModelPackageError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ModelPackageError(f"model.json is malformed: {type(e).__name__}: {e}") from e


def _first_difference(a: Any, b: Any, where: str) -> Optional[str]:
    """``"where.key: A vs B"`` for the first place two JSON-like values differ (None: equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{where}.{key}: {json.dumps(a.get(key))} vs {json.dumps(b.get(key))} (absent in one)"
            found = _first_difference(a[key], b[key], f"{where}.{key}")
            if found:
                return found
        return None
    nested = isinstance(a, list) and isinstance(b, list) and any(isinstance(v, (dict, list)) for v in a + b)
    if nested and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{where}: {json.dumps(a)} vs {json.dumps(b)}"


def ensemble_difference(a: ModelInfo, b: ModelInfo) -> Optional[str]:
    """Where two models differ in what an ensemble's members share (:data:`SHARED_KEYS`), e.g.
    ``"preprocessing.spacing_xyz_mm: [1.0, 1.0, 3.0] vs [0.5, 0.5, 3.0]"``; None if they do not."""
    da, db = a._common_dict(), b._common_dict()
    for key in SHARED_KEYS:
        found = _first_difference(da[key], db[key], key)
        if found:
            return found
    return None


class PackageMember:
    """One network of a package, in the package's folder: what a runtime loads.

    A package with one network has one member (``"model"``); an ensemble one per entry of
    ``members``. ``read_onnx`` and ``build_network`` read the file once and check those very
    bytes against ``model.json``'s sha256 before using them, so the bytes checked are the bytes run.
    """

    def __init__(self, package: ModelPackage, spec: MemberSpec) -> None:
        self.package = package
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def info(self) -> ModelInfo:
        return self.package.info

    @property
    def weights_path(self) -> Path:
        return self.package.path / self.spec.weights_file

    @property
    def onnx_path(self) -> Path:
        return self.package.path / (self.spec.onnx_file or ONNX_FILE)

    @property
    def has_onnx(self) -> bool:
        """The member has an ONNX network (listed in ``model.json`` and present)."""
        return bool(self.spec.onnx_sha256) and self.onnx_path.is_file()

    def _prefix(self) -> str:
        """How messages name an ensemble's member (a single network needs no name)."""
        return f"member {self.name!r}: " if self.package.info.is_ensemble else ""

    def _read_checked(self, path: Path, expected: str, what: str, verb: str) -> bytes:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelPackageError(f"{self._prefix()}cannot read {path}: {e.strerror or e}") from e
        actual = hashlib.sha256(data).hexdigest()
        if expected and actual != expected:
            raise ModelPackageError(
                f"{self._prefix()}{what} {path} {verb} (sha256 {actual[:12]}..., expected {expected[:12]}...)"
            )
        return data

    def read_weights(self) -> bytes:
        """The bytes of the weights file, checked against ``model.json``'s sha256."""
        return self._read_checked(self.weights_path, self.spec.weights_sha256, "model weights", "fail their checksum")

    def read_onnx(self) -> bytes:
        """The bytes of the ONNX network, checked against ``model.json``'s sha256 (read once, so what
        is checked is what runs)."""
        if not self.spec.onnx_sha256:
            raise ModelPackageError(f"{self._prefix()}model package {self.package.path} has no ONNX network")
        return self._read_checked(self.onnx_path, self.spec.onnx_sha256, "ONNX network", "fails its checksum")

    def check_files(self) -> None:
        """The files ``model.json`` lists for this member exist (their checksums: :meth:`verify`)."""
        if not self.weights_path.is_file():
            raise ModelPackageError(
                f"{self._prefix()}model package {self.package.path} has no {self.spec.weights_file}"
            )
        if self.spec.onnx_sha256 and not self.onnx_path.is_file():
            raise ModelPackageError(
                f"{self._prefix()}model package {self.package.path} lists {self.spec.onnx_file} in {MODEL_JSON} "
                "but has no such file"
            )

    def verify(self) -> None:
        """Raise :class:`ModelPackageError` unless the weights (and ONNX network, where listed) match their sha256."""
        if not self.spec.weights_sha256:
            raise ModelPackageError(
                f"{self._prefix()}model package {self.package.path} has no weights sha256 in {MODEL_JSON}"
            )
        self.read_weights()
        if self.spec.onnx_sha256:
            self.read_onnx()

    def build_network(self):  # -> torch.nn.Module
        """The network described by ``architecture``, with this member's weights loaded (on CPU)."""
        from safetensors.torch import load

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
        data = self.read_weights()
        try:
            net.load_state_dict(load(data), strict=True)
        except Exception as e:  # safetensors and torch raise several types on corrupt or mismatched files
            reason = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
            raise ModelPackageError(f"{self._prefix()}cannot load weights {self.weights_path}: {reason[:300]}") from e
        net.eval()
        return net


class ModelPackage:
    """A model package folder on disk. ``ModelPackage.load(folder)`` reads and checks it.

    Its networks are :attr:`members` (one, or an ensemble's); ``weights_path``, ``onnx_path``,
    ``read_onnx`` and ``build_network`` are those of a package with one network.
    """

    def __init__(self, path: Path, info: ModelInfo) -> None:
        self.path = Path(path)
        self.info = info

    @property
    def members(self) -> List[PackageMember]:
        """Every network of the package, in ``model.json``'s order."""
        return [PackageMember(self, spec) for spec in self.info.networks]

    def members_for(self, quality: str) -> List[PackageMember]:
        """The networks that run at ``quality`` (``members_per_quality``; default every one)."""
        return [PackageMember(self, spec) for spec in self.info.members_for(quality)]

    def _single(self) -> PackageMember:
        if self.info.is_ensemble:
            raise ModelPackageError(
                f"{self.path} is an ensemble of {len(self.info.members)} networks; use one of its members"
            )
        return self.members[0]

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def has_onnx(self) -> bool:
        """Every network of the package has its ONNX file (listed in ``model.json`` and present)."""
        return all(m.has_onnx for m in self.members)

    def read_onnx(self) -> bytes:
        """The bytes of ``model.onnx``, checked against ``model.json``'s sha256 (read once, so what
        is checked is what runs)."""
        return self._single().read_onnx()

    @classmethod
    def load(cls, path: Union[str, Path], verify: bool = True) -> ModelPackage:
        """Read ``model.json``; with ``verify`` also check every network's sha256."""
        path = Path(path)
        meta = path / MODEL_JSON
        if not meta.is_file():
            raise ModelPackageError(f"{path} is not a model package (no {MODEL_JSON})")
        try:
            d = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelPackageError(f"cannot read {meta}: {e}") from e
        pkg = cls(path, ModelInfo.from_dict(d))
        for member in pkg.members:
            member.check_files()
        if verify:
            pkg.verify()
        return pkg

    def verify(self) -> None:
        """Raise :class:`ModelPackageError` unless every network's weights (and ONNX network, where the
        package has them) match ``model.json``'s sha256; the message names a failing member."""
        for member in self.members:
            member.verify()

    def build_network(self):  # -> torch.nn.Module
        """The network described by ``architecture``, with the package's weights loaded (on CPU)."""
        return self._single().build_network()

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

        if info.is_ensemble:
            raise ModelPackageError("ModelPackage.write writes one network; an ensemble: ModelPackage.write_ensemble")
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
        return ModelPackage._finish(folder, info, extra_files)

    @staticmethod
    def write_ensemble(
        folder: Union[str, Path],
        info: ModelInfo,
        sources: Sequence[Tuple[str, ModelPackage, Dict[str, Any]]],
        members_per_quality: Optional[Dict[str, int]] = None,
        extra_files: Optional[Dict[str, Union[str, Path]]] = None,
        onnx: bool = True,
    ) -> ModelPackage:
        """Write an ensemble package: one member per ``(name, package, provenance)`` of ``sources``.

        ``info`` carries the metadata (id, version, name, description, training, licence) and what
        the members share; every source must be a package with one network that matches it in
        :data:`SHARED_KEYS` (else :class:`ModelPackageError` naming the first difference). Each
        member's weights are copied byte for byte into ``members/<name>/`` (the bytes checked
        against the source's sha256 are the bytes written) and its ONNX network exported from them
        (``onnx``; needs PyTorch). ``members_per_quality``: see :class:`ModelInfo` (None: every
        member at every quality). Files of an earlier package in ``folder`` are replaced.
        """
        import shutil

        folder = Path(folder)
        if len(sources) < 2:
            raise ModelPackageError(f"an ensemble needs at least two members, not {len(sources)}")
        for name, src, _ in sources:
            if src.info.is_ensemble:
                raise ModelPackageError(f"member {name!r} ({src.path}) is itself an ensemble; give its members")
            difference = ensemble_difference(info, src.info)
            if difference:
                raise ModelPackageError(
                    f"member {name!r} ({src.path}) differs from the ensemble's {info.id} {info.version} "
                    f"(first member) in {difference}; the members of an ensemble must share "
                    f"{', '.join(SHARED_KEYS)}"
                )
        folder.mkdir(parents=True, exist_ok=True)
        for stale in (folder / MEMBERS_DIR, folder / WEIGHTS_FILE, folder / ONNX_FILE):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()  # a single network's files must not stay beside an ensemble's
        specs = []
        for name, src, provenance in sources:
            member_dir = f"{MEMBERS_DIR}/{name}"
            (folder / member_dir).mkdir(parents=True)
            source = src.members[0]
            data = source.read_weights()
            (folder / member_dir / WEIGHTS_FILE).write_bytes(data)
            spec = MemberSpec(
                name, f"{member_dir}/{WEIGHTS_FILE}", hashlib.sha256(data).hexdigest(), provenance=dict(provenance)
            )
            if onnx:
                from .onnx_export import OPSET, export_onnx

                export_onnx(source.build_network(), folder / member_dir / ONNX_FILE)
                digest = sha256_file(folder / member_dir / ONNX_FILE)
                spec = replace(spec, onnx_file=f"{member_dir}/{ONNX_FILE}", onnx_sha256=digest, onnx_opset=OPSET)
            specs.append(spec)
        fields = {"weights_sha256": "", "onnx_sha256": "", "onnx_opset": 0, "members": tuple(specs)}
        info = ModelInfo(**{**info.__dict__, **fields, "members_per_quality": dict(members_per_quality or {})})
        return ModelPackage._finish(folder, info, extra_files)

    @staticmethod
    def _finish(folder: Path, info: ModelInfo, extra_files: Optional[Dict[str, Union[str, Path]]]) -> ModelPackage:
        """Copy the extra files, then write ``model.json`` last (atomically): a package is whole or absent."""
        import shutil

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
