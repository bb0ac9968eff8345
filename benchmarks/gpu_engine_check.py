"""The inference engine on a GPU: the torch CUDA runtime, this engine against the previous tiling.

    python benchmarks/gpu_engine_check.py prepare DIR      # here: model-grid arrays + ONNX Runtime labels
    python benchmarks/gpu_engine_check.py run DIR          # on the GPU machine (needs torch, no SimpleITK)

``prepare`` preprocesses ProstateX-0000, PROMISE12 Case06 and Case35 of ../shared/data with the
bundled model's preprocessing and saves their model-grid arrays and ONNX Runtime's labels (CPU).
``run`` times the inference stage (``Predictor._probabilities``, 7 runs after a warm-up, CUDA
synchronised) of ``standard`` and ``best`` against the previous tiling (``windows="patch"``), and
the Dice of each against ONNX Runtime on the CPU; it writes ``$OUT/gpu_check.json`` (or DIR's).
The GPU machine of this project had no SimpleITK, hence the split (a stub module stands in for
SimpleITK there: the in-process pipeline does not call it).
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CASES = {
    "px": "prostatex/ProstateX-0000/t2w.nii.gz",
    "Case06": "promise12/Case06_image.nii.gz",
    "Case35": "promise12/Case35_image.nii.gz",
}
ENGINES = {
    "new (grid, standard)": {"windows": "grid", "quality": "standard"},
    "previous (patch windows, standard)": {"windows": "patch", "quality": "standard"},
    "new (grid, best)": {"windows": "grid", "quality": "best"},
}


def prepare(folder: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    from benchmarks.common import BUNDLED_MODEL, SHARED_DATA
    from UNetSegmentLib.inference import Predictor
    from UNetSegmentLib.model_package import ModelPackage
    from UNetSegmentLib.preprocessing import preprocess_image

    folder.mkdir(parents=True, exist_ok=True)
    pkg = ModelPackage.load(BUNDLED_MODEL)
    predictor = Predictor(pkg, backend="onnxruntime")
    for name, rel in CASES.items():
        array, _ = preprocess_image(sitk.ReadImage(str(SHARED_DATA / rel)), pkg.info.preprocessing)
        probs, _ = predictor._probabilities(array, lambda stage, frac: None, None)
        np.save(folder / f"{name}.npy", array)
        np.save(folder / f"{name}_ort.npy", probs.argmax(0).astype(np.uint8))


def _dice(a, b) -> float:
    return 2 * float(((a > 0) & (b > 0)).sum()) / max(float((a > 0).sum() + (b > 0).sum()), 1.0)


def run(folder: Path) -> dict:
    if "SimpleITK" not in sys.modules:
        try:
            import SimpleITK  # noqa: F401
        except ImportError:
            sys.modules["SimpleITK"] = types.ModuleType("SimpleITK")
    import numpy as np
    import torch

    from benchmarks.common import BUNDLED_MODEL
    from UNetSegmentLib.inference import Predictor
    from UNetSegmentLib.model_package import ModelPackage

    pkg = ModelPackage.load(BUNDLED_MODEL)
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cases": {}}
    predictors = {k: Predictor(pkg, device="cuda", backend="torch", **kw) for k, kw in ENGINES.items()}
    for name in CASES:
        array, ort = np.load(folder / f"{name}.npy"), np.load(folder / f"{name}_ort.npy")
        record, labels = {"grid": list(array.shape)}, {}
        for key, predictor in predictors.items():
            predictor._probabilities(array, lambda stage, frac: None, None)  # warm-up
            times = []
            for _ in range(7):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                probs, computed = predictor._probabilities(array, lambda stage, frac: None, None)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            labels[key] = probs.argmax(0)
            record[key] = {
                "median_s": float(np.median(times)),
                "min_s": float(min(times)),
                "computed_over_grid": computed / array.size,
                "dice_vs_cpu_onnxruntime": _dice(labels[key], ort),
            }
        record["dice_new_vs_previous"] = _dice(
            labels["new (grid, standard)"], labels["previous (patch windows, standard)"]
        )
        out["cases"][name] = record
        print(name, json.dumps(record), flush=True)
    target = Path(os.environ.get("OUT", folder))
    target.mkdir(parents=True, exist_ok=True)
    (target / "gpu_check.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] not in ("prepare", "run"):
        print(__doc__.strip().splitlines()[0], "\nusage: gpu_engine_check.py prepare|run DIR", file=sys.stderr)
        return 2
    (prepare if argv[0] == "prepare" else run)(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
