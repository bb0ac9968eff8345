"""Inference: a predictor built once from a model package and called per image.

    predictor = Predictor(ModelPackage.load(folder), device="auto")
    result = predictor.predict(sitk.ReadImage("t2.nrrd"))
    result.labelmap          # sitk.Image, uint8, exactly the input grid
    result.volumes_ml        # {"prostate": 43.1}

Steps: shared preprocessing (``preprocessing.preprocess_image``),
sliding-window inference with Gaussian blending on the model grid
(``sliding_window``), test-time flips by quality, argmax on the model grid, post-processing (largest connected
component and hole filling per structure), then each label brought back onto
the input grid. Full-resolution float maps exist for one label at a time.
"""

from __future__ import annotations

import itertools
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from .model_package import ModelPackage
from .postprocessing import postprocess_labels
from .preprocessing import ModelGrid, preprocess_image
from .sliding_window import sliding_window, window_count

log = logging.getLogger(__name__)

#: ``progress(stage, fraction)``: stage is one of "preprocessing", "inference",
#: "postprocessing", "resampling"; fraction in 0..1 of that stage.
ProgressCallback = Callable[[str, float], None]

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "float32", "bfloat16")
#: ``auto``: channels-last (NDHWC) on the CPU, where oneDNN is faster with it; ``contiguous``: NCDHW.
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")

#: Image axes -> tensor axes of the (N, C, z, y, x) network input.
FLIP_AXES = {"z": 2, "y": 3, "x": 4}
#: ``quality`` -> (sliding-window overlap, None = the model's; whether to add the model's test-time flips).
#: ``fast``: one pass, less overlap; ``standard``: the model's overlap, plus a pass flipped along each
#: combination of the axes the model declares (``inference.test_time_flips``; the default model: x,
#: left-right, so 2 passes); ``best``: as standard with denser windows (overlap 0.75).
QUALITY_SETTINGS: Dict[str, Tuple[Optional[float], bool]] = {
    "fast": (0.25, False),
    "standard": (None, True),
    "best": (0.75, True),
}
QUALITIES = tuple(QUALITY_SETTINGS)


class CancelledError(Exception):
    """Raised inside ``predict`` when the ``should_cancel`` callback returns True."""


@dataclass
class Prediction:
    """Result of one ``Predictor.predict`` call.

    ``probabilities``: float32 ``(K, z, y, x)`` softmax averaged over the test-time passes, on the model
    grid (K = background + labels); ``grid``: that grid (``preprocessing.ModelGrid``), whose
    ``input_reference`` is the input's grid.
    """

    labelmap: sitk.Image
    volumes_ml: Dict[str, float]
    timings_s: Dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    probabilities: Optional[np.ndarray] = None
    grid: Optional[ModelGrid] = None


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; ``cuda`` without CUDA is an error."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("a GPU (CUDA) was requested but PyTorch sees none; use --device cpu")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX-512 BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - private op; absent on some builds
        return False


class Predictor:
    """Segments images with one model package; build once, call :meth:`predict` many times.

    ``precision``: ``auto`` uses bf16 autocast on CUDA and on CPUs with native
    bf16, float32 elsewhere. ``quality`` (:data:`QUALITY_SETTINGS`) sets the window
    overlap and the test-time flips, whose softmax outputs are averaged; ``overlap``
    overrides the quality's. ``memory_format``: see :data:`MEMORY_FORMATS`
    (``contiguous`` is the NCDHW baseline of ``benchmarks/bench_cpu_options.py``).
    """

    def __init__(
        self,
        package: ModelPackage,
        device: str = "auto",
        quality: str = "standard",
        precision: str = "auto",
        overlap: Optional[float] = None,
        threads: Optional[int] = None,
        memory_format: str = "auto",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}")
        self.memory_format = memory_format
        self.package = package
        self.info = package.info
        if quality not in QUALITY_SETTINGS:
            raise ValueError(f"quality must be one of {QUALITIES}, not {quality!r}")
        self.quality = quality
        quality_overlap, with_flips = QUALITY_SETTINGS[quality]
        #: flipped passes besides the plain one, as tensor axes: every combination of the model's axes
        self.flips: Tuple[Tuple[int, ...], ...] = ()
        if with_flips:
            axes = sorted(FLIP_AXES[a] for a in self.info.inference.test_time_flips)
            self.flips = tuple(c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n))
        if overlap is None:
            overlap = self.info.inference.overlap if quality_overlap is None else quality_overlap
        self.overlap = float(overlap)
        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        self._precision = precision
        self.network = package.build_network()
        self._to_device(self.device)

    def _to_device(self, device: torch.device) -> None:
        self.device = device
        net = self.network.to(device)
        if self._channels_last():
            net = net.to(memory_format=torch.channels_last_3d)
        self.network = net
        if self._precision == "auto":
            bf16 = device.type == "cuda" or cpu_supports_bf16()
        else:
            bf16 = self._precision == "bfloat16"
        self.dtype = torch.bfloat16 if bf16 else torch.float32

    def _channels_last(self) -> bool:
        if self.memory_format == "auto":
            return self.device.type == "cpu"
        return self.memory_format == "channels_last"

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def predict(
        self,
        image: sitk.Image,
        progress: Optional[ProgressCallback] = None,
        should_cancel: Optional[Callable[[], bool]] = None,
    ) -> Prediction:
        """Segment ``image`` (any grid, scalar); the labelmap is on exactly that grid."""
        report = progress or (lambda stage, frac: None)
        timings: Dict[str, float] = {}
        t0 = time.perf_counter()
        report("preprocessing", 0.0)
        array_zyx, grid = preprocess_image(image, self.info.preprocessing)
        timings["preprocessing"] = time.perf_counter() - t0
        report("preprocessing", 1.0)

        t0 = time.perf_counter()
        self._probabilities: Optional[np.ndarray] = None
        try:
            labels_zyx = self._segment(array_zyx, report, should_cancel)
        except torch.cuda.OutOfMemoryError:
            log.warning("GPU out of memory; running on the CPU instead")
            torch.cuda.empty_cache()
            self._to_device(torch.device("cpu"))
            labels_zyx = self._segment(array_zyx, report, should_cancel)
        timings["inference"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        report("postprocessing", 0.0)
        values = [lab.value for lab in self.info.labels]
        labels_zyx = postprocess_labels(labels_zyx, values)
        timings["postprocessing"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        report("resampling", 0.0)
        labelmap = grid.labels_to_input(labels_zyx, values)
        timings["resampling"] = time.perf_counter() - t0
        report("resampling", 1.0)
        volumes = label_volumes_ml(labelmap, self.info.labels)
        return Prediction(labelmap, volumes, timings, self.device.type, self._probabilities, grid)

    @torch.no_grad()
    def _segment(
        self, array_zyx: np.ndarray, report: ProgressCallback, should_cancel: Optional[Callable[[], bool]]
    ) -> np.ndarray:
        """Model-grid ``(z, y, x)`` float array -> ``(z, y, x)`` uint8 argmax labels."""
        patch = self.info.inference.patch_size_zyx
        flips: List[Tuple[int, ...]] = [(), *self.flips]
        per_pass = window_count(array_zyx.shape, patch, self.overlap)
        total = per_pass * len(flips)
        done = 0
        report("inference", 0.0)

        def network(x: torch.Tensor) -> torch.Tensor:
            nonlocal done
            if should_cancel is not None and should_cancel():
                raise CancelledError("cancelled")
            if self._channels_last():
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with self._autocast():
                y = self.network(x)
            done += x.shape[0]
            report("inference", min(done / total, 1.0))
            return y.float()

        x = torch.from_numpy(np.ascontiguousarray(array_zyx))[None, None].to(self.device)
        probs: Optional[torch.Tensor] = None
        for axes in flips:
            xi = torch.flip(x, axes) if axes else x
            logits = sliding_window(
                xi, patch, network, overlap=self.overlap, mode=self.info.inference.blend_mode, pad_value=float(x.min())
            )
            p = torch.softmax(logits, dim=1)
            p = torch.flip(p, axes) if axes else p
            probs = p if probs is None else probs + p
            del logits
        assert probs is not None
        self._probabilities = (probs[0] / len(flips)).float().cpu().numpy()
        return probs[0].argmax(0).to(torch.uint8).cpu().numpy()


def label_volumes_ml(labelmap: sitk.Image, labels: Sequence) -> Dict[str, float]:
    """Volume of each label in mL (1 mL = 1000 mm^3) from voxel counts and spacing."""
    counts = np.bincount(sitk.GetArrayViewFromImage(labelmap).ravel(), minlength=256)
    voxel_ml = float(np.prod(labelmap.GetSpacing())) / 1000.0
    return {lab.structure.name: float(counts[lab.value] * voxel_ml) for lab in labels}
