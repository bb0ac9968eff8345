"""Inference: a predictor built once from a model package and called per image.

    predictor = Predictor(ModelPackage.load(folder))        # ONNX Runtime on the CPU by default
    result = predictor.predict(sitk.ReadImage("t2.nrrd"))
    result.labelmap          # sitk.Image, uint8, exactly the input grid
    result.volumes_ml        # {"prostate": 43.1}

Steps: shared preprocessing (``preprocessing.preprocess_image``); the network over the
whole model grid in one window (the network is fully convolutional; grids larger than
the runtime's window limit are tiled with Gaussian blending, ``sliding_window``); then,
by quality, the test-time flips the model was trained with, computed only where the
gland is: on a crop around what the first pass found (``standard``) or on the whole
grid (``best``). An ensemble package runs each of its members that the quality asks for
(``members_per_quality``) on the same regions and windows. Softmax outputs are averaged
(over members and passes), the argmax is taken on the model grid,
post-processed (largest connected component and hole filling per structure), and each
label is brought back onto the input grid. Everything here is numpy: the runtime
(:mod:`.runtime`) is the only part that knows ONNX Runtime or PyTorch, so a CPU run
never imports torch.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .model_package import ModelPackage, ModelPackageError
from .postprocessing import largest_component, postprocess_labels
from .preprocessing import ModelGrid, preprocess_image
from .runtime import BACKENDS, DEVICES, PRECISIONS, CancelledError, Runtime, create_runtime
from .sliding_window import sliding_window

log = logging.getLogger(__name__)

#: ``progress(stage, fraction)``: stage is one of "preprocessing", "inference",
#: "postprocessing", "resampling"; fraction in 0..1 of that stage.
ProgressCallback = Callable[[str, float], None]

#: Image axes -> axes of the (1, C, z, y, x) network input.
FLIP_AXES = {"z": 2, "y": 3, "x": 4}
#: ``quality`` -> where the model's test-time flips run: None (no flipped pass), "crop" (a box
#: around the gland found by the first pass, plus :data:`CROP_MARGIN_ZYX`) or "full" (the grid).
QUALITY_SETTINGS: Dict[str, Optional[str]] = {"fast": None, "standard": "crop", "best": "full"}
QUALITIES = tuple(QUALITY_SETTINGS)
#: ``windows``: "grid" runs the whole model grid per call (tiled only past the runtime's limit);
#: "patch" runs the model's training patch with its overlap, as UNetSegment did before 0.2.
WINDOW_MODES = ("grid", "patch")
#: Context kept around the first pass's gland for the flipped passes, in model-grid voxels (z, y, x).
CROP_MARGIN_ZYX = (2, 16, 16)
#: Smallest crop for the flipped passes, as a fraction of the training patch per axis: the crop is
#: widened (within the grid) to at least this much real image, so the network sees the context
#: it was trained with rather than padding.
CROP_MIN_FRACTION_ZYX = (1.0, 0.75, 0.75)
#: In-plane size of the first pass's field of view, as a fraction of the training patch (see
#: :meth:`Predictor.centre_box`).
FIRST_PASS_FRACTION_YX = 1.0
#: How far (z, y, x voxels) the first pass's box grows beyond the gland it found at the box's edge,
#: and the largest box (fraction of the grid) worth running instead of the whole grid.
GROW_MARGIN_ZYX = (4, 40, 40)
GROW_LIMIT = 0.7
#: Overlap of the tiles when a grid is larger than one window.
TILE_OVERLAP = 0.25

__all__ = [
    "BACKENDS",
    "DEVICES",
    "PRECISIONS",
    "QUALITIES",
    "CancelledError",
    "Prediction",
    "Predictor",
    "label_volumes_ml",
]


@dataclass
class Prediction:
    """Result of one ``Predictor.predict`` call.

    ``probabilities``: the averaged softmax (over passes and an ensemble's members), float32
    ``(K, z, y, x)`` on the model grid (K = background + one per label value); ``grid`` maps
    model-grid arrays back to the input.
    """

    labelmap: sitk.Image
    volumes_ml: Dict[str, float]
    timings_s: Dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    backend: str = "onnxruntime"
    probabilities: Optional[np.ndarray] = None
    grid: Optional[ModelGrid] = None
    #: voxels the networks computed, over all passes and members, and the model grid's voxels
    computed_voxels: int = 0
    grid_voxels: int = 0
    #: networks whose softmax was averaged: 1, or the ensemble members the quality ran
    members: int = 1


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of ``(1, K, ...)`` logits, float32."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


class Predictor:
    """Segments images with one model package; build once, call :meth:`predict` many times.

    ``backend`` / ``device`` / ``precision`` choose the runtime (:func:`.runtime.create_runtime`;
    ``auto``: ONNX Runtime on the CPU, PyTorch on a GPU). ``quality``
    (:data:`QUALITY_SETTINGS`) sets the test-time flips and, for an ensemble package, how many
    of its members run (``members_per_quality`` in ``model.json``; one runtime per member, all
    loaded at once). ``windows`` (:data:`WINDOW_MODES`) and ``overlap`` (``patch`` windows only;
    default the model's) select the older tiling. ``memory_format`` is passed to the torch
    runtime (``contiguous``: the NCDHW baseline of ``benchmarks/bench_cpu_options.py``).
    ``runtime``: runtimes built elsewhere, one per member that runs at ``quality`` (a single
    runtime for a package with one network).
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
        backend: str = "auto",
        windows: str = "grid",
        runtime: Optional[Union[Runtime, Sequence[Runtime]]] = None,
    ) -> None:
        if quality not in QUALITY_SETTINGS:
            raise ValueError(f"quality must be one of {QUALITIES}, not {quality!r}")
        if windows not in WINDOW_MODES:
            raise ValueError(f"windows must be one of {WINDOW_MODES}, not {windows!r}")
        self.package = package
        self.info = package.info
        self.quality = quality
        self.windows = windows
        self.flip_region = QUALITY_SETTINGS[quality]
        #: flipped passes besides the plain one, as input axes: every combination of the model's axes
        self.flips: Tuple[Tuple[int, ...], ...] = ()
        if self.flip_region is not None:
            axes = sorted(FLIP_AXES[a] for a in self.info.inference.test_time_flips)
            self.flips = tuple(c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n))
        self.overlap = float(self.info.inference.overlap if overlap is None else overlap)
        #: the networks that run at this quality (one, or the ensemble's first N)
        self.members = package.members_for(quality)
        if runtime is None:
            runtimes: List[Runtime] = []
            for member in self.members:
                if memory_format != "auto" and backend in ("auto", "torch"):
                    from .runtime.torch_runtime import TorchRuntime

                    runtimes.append(TorchRuntime(member, device, precision, threads, memory_format))
                else:
                    runtimes.append(
                        create_runtime(member, backend=backend, device=device, precision=precision, threads=threads)
                    )
        else:
            runtimes = list(runtime) if isinstance(runtime, (list, tuple)) else [runtime]
            if len(runtimes) != len(self.members):
                raise ValueError(
                    f"{len(self.members)} network(s) of {self.info.id} run at quality {quality}: "
                    f"give one runtime each, not {len(runtimes)}"
                )
        #: one runtime per member of :attr:`members`, in the same order
        self.runtimes: List[Runtime] = runtimes
        arch = self.info.architecture.get("parameters", {})
        divisor = [1, 1, 1]
        for pool in arch.get("pool_sizes", ()):
            divisor = [d * int(p) for d, p in zip(divisor, pool)]
        self.divisor: Tuple[int, int, int] = (divisor[0], divisor[1], divisor[2])

    @property
    def runtime(self) -> Runtime:
        """The (first member's) runtime: every member runs on the same backend and device."""
        return self.runtimes[0]

    @property
    def device(self) -> str:
        return self.runtime.device

    @property
    def backend(self) -> str:
        return self.runtime.name

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
        if should_cancel is not None and should_cancel():
            raise CancelledError("cancelled")

        t0 = time.perf_counter()
        try:
            probs, computed = self._probabilities(array_zyx, report, should_cancel)
        except CancelledError:
            raise
        except Exception as e:  # a GPU out of memory: the runtimes' CPU fallback, once
            fallbacks = self._fallbacks(e)
            if fallbacks is None:
                raise
            self.runtimes = fallbacks
            probs, computed = self._probabilities(array_zyx, report, should_cancel)
        labels_zyx = probs.argmax(0).astype(np.uint8)
        timings["inference"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        report("postprocessing", 0.0)
        values = [lab.value for lab in self.info.labels]
        labels_zyx = postprocess_labels(labels_zyx, values)
        timings["postprocessing"] = time.perf_counter() - t0
        if should_cancel is not None and should_cancel():
            raise CancelledError("cancelled")

        t0 = time.perf_counter()
        report("resampling", 0.0)
        labelmap = grid.labels_to_input(labels_zyx, values)
        timings["resampling"] = time.perf_counter() - t0
        report("resampling", 1.0)
        return Prediction(
            labelmap,
            label_volumes_ml(labelmap, self.info.labels),
            timings,
            self.runtime.device,
            self.runtime.name,
            probs,
            grid,
            computed,
            int(array_zyx.size),
            len(self.runtimes),
        )

    def _fallbacks(self, error: BaseException) -> Optional[List[Runtime]]:
        """After ``error``: each runtime's CPU fallback if it was a device out of memory (None: re-raise)."""
        is_oom = getattr(self.runtime, "is_out_of_memory", None)
        if is_oom is None or not is_oom(error):
            return None
        fallbacks = [runtime.fallback() for runtime in self.runtimes]
        return None if any(f is None for f in fallbacks) else fallbacks  # type: ignore[misc]

    # -- the passes ----------------------------------------------------------------------------

    def window_for(self, shape_zyx: Sequence[int]) -> Tuple[Tuple[int, int, int], float]:
        """Window size (z, y, x) and overlap for a region of ``shape_zyx`` model-grid voxels.

        ``grid`` mode: the region rounded up to the network's divisor and to at least the
        training patch (short axes are padded as in training), in one window when that fits
        the runtime's limit, else split along its longest axis into tiles that do.
        """
        patch = tuple(int(p) for p in self.info.inference.patch_size_zyx)
        if self.windows == "patch":
            return (patch[0], patch[1], patch[2]), self.overlap
        win = [max(_round_up(s, d), p) for s, d, p in zip(shape_zyx, self.divisor, patch)]
        runtime_limit = min(int(r.max_window_voxels) for r in self.runtimes)
        limit = max(runtime_limit, int(np.prod(patch)))
        while int(np.prod(win)) > limit:
            axis = int(np.argmax([w / p for w, p in zip(win, patch)]))
            smaller = max(_round_up(int(win[axis] * 0.6), self.divisor[axis]), patch[axis])
            if smaller >= win[axis]:
                break
            win[axis] = smaller
        return (win[0], win[1], win[2]), TILE_OVERLAP

    def _run_region(
        self,
        x: np.ndarray,
        flip: Tuple[int, ...],
        should_cancel: Optional[Callable[[], bool]],
        on_window: Callable[[int, int], None],
    ) -> Tuple[np.ndarray, int]:
        """Softmax ``(1, K, *x.shape[2:])`` over ``x`` (flipped along ``flip``, and back), averaged over
        the members: each runs the same windows, one member after the other (one softmax of the
        region and the running sum in memory, whatever the number of members)."""
        xi = np.ascontiguousarray(np.flip(x, flip) if flip else x)
        win, overlap = self.window_for(x.shape[2:])
        computed = 0
        total: Optional[np.ndarray] = None
        count = len(self.runtimes)
        for i, (member, runtime) in enumerate(zip(self.members, self.runtimes)):

            def network(t: np.ndarray, runtime: Runtime = runtime) -> np.ndarray:
                nonlocal computed
                computed += int(np.prod(t.shape[2:]))
                return runtime.run(t, should_cancel)

            def member_progress(done: int, windows: int, i: int = i) -> None:
                on_window(i * windows + done, count * windows)

            logits = sliding_window(
                xi,
                win,
                network,
                overlap=overlap,
                mode=self.info.inference.blend_mode,
                pad_value=float(x.min()),
                on_window=member_progress,
                pad_mode="edge" if self.windows == "grid" else "constant",
            )
            if logits.shape[1] != self.info.num_classes:
                raise ModelPackageError(
                    f"network {member.name!r} of {self.info.id} gives {logits.shape[1]} classes; "
                    f"its labels need {self.info.num_classes}"
                )
            if count > 1 and hasattr(runtime, "release_memory"):
                runtime.release_memory()  # one member's buffers at a time, however many members
            p = _softmax(logits)
            del logits
            if total is None:
                total = p
            else:
                total += p
        assert total is not None
        if count > 1:
            total /= count
        return (np.flip(total, flip) if flip else total), computed

    def gland_box(self, labels_zyx: np.ndarray) -> Optional[Tuple[slice, slice, slice]]:
        """The box the flipped passes run on: the first pass's structures plus :data:`CROP_MARGIN_ZYX`,
        widened to :data:`CROP_MIN_FRACTION_ZYX` of the patch, clamped to the grid (None: nothing found)."""
        fg = np.nonzero(labels_zyx)
        if fg[0].size == 0:
            return None
        patch = self.info.inference.patch_size_zyx
        box = []
        for axis, n in enumerate(labels_zyx.shape):
            lo = int(fg[axis].min()) - CROP_MARGIN_ZYX[axis]
            hi = int(fg[axis].max()) + 1 + CROP_MARGIN_ZYX[axis]
            need = min(_round_up(int(round(patch[axis] * CROP_MIN_FRACTION_ZYX[axis])), self.divisor[axis]), n)
            if hi - lo < need:  # widen around the centre
                lo -= (need - (hi - lo)) // 2
                hi = lo + need
            shift = max(0, -lo) - max(0, hi - n)  # slide back inside the grid
            lo, hi = max(lo + shift, 0), min(hi + shift, n)
            box.append(slice(lo, hi))
        return (box[0], box[1], box[2])

    def centre_box(self, shape_zyx: Sequence[int]) -> Tuple[slice, slice, slice]:
        """Where the first pass looks: every slice, and :data:`FIRST_PASS_FRACTION_YX` of the training
        patch in-plane around the grid's centre (prostate protocols centre the field of view on it)."""
        patch = self.info.inference.patch_size_zyx
        box = [slice(0, shape_zyx[0])]
        for axis in (1, 2):
            n = shape_zyx[axis]
            need = min(_round_up(int(round(patch[axis] * FIRST_PASS_FRACTION_YX)), self.divisor[axis]), n)
            lo = (n - need) // 2
            box.append(slice(lo, lo + need))
        return (box[0], box[1], box[2])

    def _contained(self, labels_zyx: np.ndarray, box: Tuple[slice, ...], shape_zyx: Sequence[int]) -> bool:
        """The structures found in ``box`` keep :data:`CROP_MARGIN_ZYX` from every side of it that is
        not the grid's own border (else the gland may go on outside the box)."""
        fg = np.nonzero(labels_zyx)
        if fg[0].size == 0:
            return False
        for axis, s in enumerate(box):
            m = CROP_MARGIN_ZYX[axis]
            lo, hi = int(fg[axis].min()) + s.start, int(fg[axis].max()) + 1 + s.start
            if (s.start > 0 and lo - s.start < m) or (s.stop < shape_zyx[axis] and s.stop - hi < m):
                return False
        return True

    def _first_pass_near_centre(
        self, x: np.ndarray, should_cancel: Optional[Callable[[], bool]], on_window: Callable[[int, int], None]
    ) -> Tuple[Optional[np.ndarray], int]:
        """The first pass on :meth:`centre_box`, grown once towards where the gland continues.

        Returns the softmax on the whole grid (background outside the box) when the gland lies
        well inside the box (see :meth:`_contained`), else ``(None, voxels computed)``: then the
        caller runs the whole grid. A box that would cover most of the grid is not worth it.
        """
        shape = tuple(int(s) for s in x.shape[2:])
        grid_voxels = int(np.prod(shape))
        box = self.centre_box(shape)
        computed = 0
        for _attempt in range(2):
            if int(np.prod([s.stop - s.start for s in box])) > GROW_LIMIT * grid_voxels:
                return None, computed
            p, n = self._run_region(x[(slice(None), slice(None)) + box], (), should_cancel, on_window)
            computed += n
            labels = largest_component(p[0].argmax(0) > 0)  # what post-processing will keep
            if self._contained(labels, box, shape):
                probs = np.zeros((1, p.shape[1]) + shape, dtype=np.float32)
                probs[:, 0] = 1.0  # not computed: background
                probs[(slice(None), slice(None)) + box] = p
                return probs, computed
            fg = np.nonzero(labels)
            if fg[0].size == 0:
                return None, computed  # nothing near the centre: look everywhere
            grown = []
            for axis, s in enumerate(box):
                lo = min(s.start, int(fg[axis].min()) + s.start - GROW_MARGIN_ZYX[axis])
                hi = max(s.stop, int(fg[axis].max()) + 1 + s.start + GROW_MARGIN_ZYX[axis])
                grown.append(slice(max(lo, 0), min(hi, shape[axis])))
            log.debug("gland reaches the edge of the first pass's box %s; growing it to %s", box, grown)
            box = (grown[0], grown[1], grown[2])
        return None, computed

    def _probabilities(
        self, array_zyx: np.ndarray, report: ProgressCallback, should_cancel: Optional[Callable[[], bool]]
    ) -> Tuple[np.ndarray, int]:
        """Model-grid ``(z, y, x)`` float array -> averaged softmax ``(K, z, y, x)`` and voxels computed.

        ``grid`` windows: the first pass looks at the centre of the grid (:meth:`centre_box`) and
        at the whole grid only when the gland is not found there well inside; voxels that no pass
        computed are background with probability 1. The flipped passes then run around the gland
        (``standard``) or over the whole grid (``best``) and are averaged with the first.
        """
        x = np.ascontiguousarray(array_zyx, dtype=np.float32)[None, None]
        passes = 1 + len(self.flips)
        share = 1.0 / passes if self.flip_region == "full" else (0.6 if self.flips else 1.0)
        report("inference", 0.0)

        def progress(start: float, width: float) -> Callable[[int, int], None]:
            return lambda done, total: report("inference", min(start + width * done / total, 1.0))

        full: Tuple[slice, ...] = (slice(None),) * 3
        computed = 0
        probs: Optional[np.ndarray] = None
        if self.windows == "grid" and self.flip_region != "full":
            probs, computed = self._first_pass_near_centre(x, should_cancel, progress(0.0, share))
        if probs is None:
            probs, n = self._run_region(x, (), should_cancel, progress(0.0, share))
            computed += n
        if not self.flips:
            return probs[0], computed

        region = full
        if self.flip_region == "crop" and self.windows == "grid":
            box = self.gland_box(largest_component(probs[0].argmax(0) > 0))
            if box is not None:
                region = box
        sub = x[(slice(None), slice(None)) + region]
        total = probs[(slice(None), slice(None)) + region].copy()
        width = (1.0 - share) / len(self.flips)
        for i, flip in enumerate(self.flips):
            p, n = self._run_region(sub, flip, should_cancel, progress(share + i * width, width))
            total += p
            computed += n
        probs[(slice(None), slice(None)) + region] = total / passes
        return probs[0], computed


def label_volumes_ml(labelmap: sitk.Image, labels: Sequence) -> Dict[str, float]:
    """Volume of each label in mL (1 mL = 1000 mm^3) from voxel counts and spacing."""
    counts = np.bincount(sitk.GetArrayViewFromImage(labelmap).ravel(), minlength=256)
    voxel_ml = float(np.prod(labelmap.GetSpacing())) / 1000.0
    return {lab.structure.name: float(counts[lab.value] * voxel_ml) for lab in labels}
