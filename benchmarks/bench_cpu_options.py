"""CPU runtimes side by side: ONNX Runtime, OpenVINO and PyTorch, float32 and bf16, 1 and N threads.

    python benchmarks/bench_cpu_options.py                     # bundled model on ProstateX-0000, every variant
    python benchmarks/bench_cpu_options.py --model /tmp/pkg --variants ort-fp32,ov-fp32 --threads 2 --repeats 1

The same model segments the same image with each runtime configuration, through
``UNetSegmentLib.inference.Predictor(backend=..., precision=..., memory_format=..., threads=...)``:

- ``ort-fp32``: ONNX Runtime, float32: the default on CPUs without native bf16, the baseline;
- ``ov-fp32`` / ``ov-bf16``: OpenVINO on the same ``model.onnx``, float32 / bf16 inference precision;
- ``torch-ncdhw-fp32`` / ``torch-cl-fp32``: PyTorch in NCDHW / channels-last (NDHWC) layout, float32;
- ``torch-cl-bf16``: PyTorch channels-last under bf16 autocast (float32 weights);

each at every thread count of ``--threads`` (default 1 and the CPUs this process may use).
A variant that cannot run here is skipped with a note: its runtime is not installed, the
package has no ``model.onnx``, or it is bf16 on a CPU without native bf16 (AVX-512 BF16 or
AMX), where bf16 is emulated and many times slower. The baseline is the first variant that
runs, at the most threads. After one warm-up each the variants alternate. Reported per
variant: median time of the whole ``predict`` call and of its inference stage, the
speed-up against the baseline, and the agreement of its labelmap with the baseline's (Dice
of the whole gland and the lowest Dice over the labels), so an option is kept only where
it holds accuracy. The process CPU time of each ``predict`` is shown too: a wall time far
above CPU time / threads means the machine was busy and the run should be repeated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from benchmarks.common import (  # noqa: E402
    add_case_arguments,
    dice,
    environment,
    environment_markdown,
    load_package,
    markdown_table,
    parse_int_list,
    ratio,
    resolve_input,
    run_alternating,
    summarize,
    write_results,
)
from UNetSegmentLib.inference import QUALITIES  # noqa: E402


class Variant(NamedTuple):
    backend: str  #: "onnxruntime", "openvino" or "torch"
    memory_format: str  #: the torch runtime's layout ("auto" for the ONNX runtimes)
    precision: str  #: "float32" or "bfloat16"


VARIANTS: Dict[str, Variant] = {
    "ort-fp32": Variant("onnxruntime", "auto", "float32"),
    "ov-fp32": Variant("openvino", "auto", "float32"),
    "ov-bf16": Variant("openvino", "auto", "bfloat16"),
    "torch-ncdhw-fp32": Variant("torch", "contiguous", "float32"),
    "torch-cl-fp32": Variant("torch", "channels_last", "float32"),
    "torch-cl-bf16": Variant("torch", "channels_last", "bfloat16"),
}


def parse_variants(text: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"variants must be among {', '.join(VARIANTS)}, not {text!r}")
    return names


def variant_key(name: str, threads: int) -> str:
    return f"{name}@{threads}t"


def skip_reason(name: str, package, native_bf16: bool) -> Optional[str]:
    """Why variant ``name`` cannot run here (None: it can)."""
    from UNetSegmentLib import runtime

    v = VARIANTS[name]
    installed = {
        "onnxruntime": (runtime.onnxruntime_installed, "ONNX Runtime is not installed (pip install onnxruntime)"),
        "openvino": (runtime.openvino_installed, "OpenVINO is not installed (pip install openvino)"),
        "torch": (runtime.torch_installed, "PyTorch is not installed (pip install torch)"),
    }
    check, message = installed[v.backend]
    if not check():
        return message
    if v.backend != "torch" and not package.has_onnx:
        return "the model package has no model.onnx"
    if v.precision == "bfloat16" and not native_bf16:
        return "this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 would be emulated, many times slower"
    return None


def label_agreement(labels_zyx: np.ndarray, baseline_zyx: np.ndarray, values: Sequence[int]) -> Dict[str, float]:
    """Dice against the baseline: whole gland (every non-zero label) and each label value."""
    out = {"gland": dice(labels_zyx > 0, baseline_zyx > 0)}
    for v in values:
        out[f"label_{v}"] = dice(labels_zyx == v, baseline_zyx == v)
    out["min_label"] = min(out[f"label_{v}"] for v in values) if values else out["gland"]
    return out


def _set_torch_threads(n: int) -> None:
    """Torch's thread count is process-wide: set it before each torch variant's run."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def run_variants(
    package,
    image: sitk.Image,
    variants: Sequence[str],
    threads: Sequence[int],
    repeats: int,
    warmup: int,
    quality: str = "standard",
    native_bf16: Optional[bool] = None,
) -> Dict[str, Any]:
    """Time every runnable variant x thread count on ``image``, alternating; labelmaps compared with the
    baseline's (the first runnable variant at the most threads). Variants that cannot run are in
    ``skipped`` with the reason."""
    from UNetSegmentLib.hardware import cpu_info
    from UNetSegmentLib.inference import Predictor
    from UNetSegmentLib.runtime import RuntimeUnavailable

    if native_bf16 is None:
        native_bf16 = cpu_info().native_bf16
    threads = sorted(set(threads), reverse=True)
    skipped: Dict[str, str] = {}
    runnable = []
    for v in variants:
        reason = skip_reason(v, package, native_bf16)
        if reason is None:
            runnable.append(v)
        else:
            skipped[v] = reason
    predictors = {}
    for t in threads:
        for v in list(runnable):
            spec = VARIANTS[v]
            try:
                predictors[variant_key(v, t)] = (
                    Predictor(
                        package,
                        device="cpu",
                        backend=spec.backend,
                        precision=spec.precision,
                        memory_format=spec.memory_format,
                        quality=quality,
                        threads=t,
                    ),
                    t,
                )
            except RuntimeUnavailable as e:
                skipped[v] = str(e)
                runnable.remove(v)
                predictors = {k: p for k, p in predictors.items() if not k.startswith(v + "@")}
    if not runnable:
        return {"baseline": None, "variants": {}, "runs": {}, "skipped": skipped}
    keys = [variant_key(v, t) for t in threads for v in runnable]
    baseline = variant_key(runnable[0], threads[0])
    last_labels: Dict[str, np.ndarray] = {}

    def runner(key: str):
        predictor, t = predictors[key]

        def run() -> Dict[str, float]:
            if predictor.runtime.name == "torch":
                _set_torch_threads(t)
            cpu0 = time.process_time()
            pred = predictor.predict(image)
            cpu = time.process_time() - cpu0
            last_labels[key] = sitk.GetArrayFromImage(pred.labelmap)
            timings = {f"{k}_s": v for k, v in pred.timings_s.items()}
            return {"total_s": sum(pred.timings_s.values()), "cpu_s": cpu, **timings}

        return run

    raw = run_alternating({k: runner(k) for k in keys}, repeats, warmup)
    values = [lab.value for lab in package.info.labels]
    summary: Dict[str, Any] = {}
    for k in keys:
        predictor, t = predictors[k]
        rt = predictor.runtime
        summary[k] = {
            "variant": k.split("@")[0],
            "backend": rt.name,
            "runtime_version": getattr(rt, "version", None),
            "memory_format": ("channels_last" if rt._channels_last() else "contiguous") if rt.name == "torch" else "-",
            "precision": rt.precision,
            "threads": t,
            "runtime_threads": rt.threads,
            "total_s": summarize([r["total_s"] for r in raw[k]]),
            "inference_s": summarize([r["inference_s"] for r in raw[k]]),
            "cpu_s": summarize([r["cpu_s"] for r in raw[k]]),
            "agreement": label_agreement(last_labels[k], last_labels[baseline], values),
        }
    base = summary[baseline]
    for s in summary.values():
        s["speedup_total"] = ratio(base["total_s"]["median"], s["total_s"]["median"])
        s["speedup_inference"] = ratio(base["inference_s"]["median"], s["inference_s"]["median"])
    return {"baseline": baseline, "variants": summary, "runs": raw, "skipped": skipped}


def report(result: Dict[str, Any], header: str) -> str:
    rows = []
    for k, s in result["variants"].items():
        rows.append(
            [
                k + (" (baseline)" if k == result["baseline"] else ""),
                f"{s['backend']} {str(s['runtime_version'] or '').split('-')[0]}".strip(),
                s["memory_format"],
                s["precision"],
                s["threads"],
                s["total_s"]["median"],
                s["inference_s"]["median"],
                s["cpu_s"]["median"],
                s["speedup_total"],
                s["speedup_inference"],
                s["agreement"]["gland"],
                s["agreement"]["min_label"],
            ]
        )
    table = markdown_table(
        [
            "variant",
            "runtime",
            "memory format",
            "precision",
            "threads",
            "predict s (median)",
            "inference s (median)",
            "predict CPU s (median)",
            "speed-up predict",
            "speed-up inference",
            "Dice gland vs baseline",
            "min label Dice",
        ],
        rows,
    )
    parts = [header, table]
    if result["skipped"]:
        parts.append("\n".join(f"- skipped {v}: {why}" for v, why in result["skipped"].items()))
    return "\n\n".join(parts)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="CPU runtimes side by side (ONNX Runtime, OpenVINO, PyTorch; float32, bf16; threads)."
    )
    add_case_arguments(p)
    p.add_argument("--model", type=Path, help="model package folder (default: the bundled model)")
    p.add_argument(
        "--variants",
        type=parse_variants,
        default=list(VARIANTS),
        help=f"comma-separated, first = baseline ({','.join(VARIANTS)})",
    )
    p.add_argument(
        "--threads",
        type=parse_int_list,
        help="comma-separated inference thread counts (default: 1 and the CPUs this process may use)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--quality", default="standard", choices=QUALITIES, help="as unetsegment segment's (default standard)"
    )
    p.add_argument("--out-dir", type=Path)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is None:
        from UNetSegmentLib.hardware import default_threads

        args.threads = sorted({1, default_threads()})
    resolve_input(p, args)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from UNetSegmentLib.hardware import cpu_info
    from UNetSegmentLib.io import ImageReadError, read_image

    package = load_package(args.model)
    try:
        image = read_image(str(args.input))
    except (ImageReadError, OSError, RuntimeError) as e:
        print(f"bench_cpu_options: cannot read {args.input}: {e}", file=sys.stderr)
        return 1
    native_bf16 = cpu_info().native_bf16
    result = run_variants(
        package, image, args.variants, args.threads, args.repeats, args.warmup, args.quality, native_bf16
    )
    if not result["variants"]:
        why = "; ".join(f"{v}: {r}" for v, r in result["skipped"].items())
        print(f"bench_cpu_options: no variant can run here ({why})", file=sys.stderr)
        return 1
    env_info = environment(backend=result["variants"][result["baseline"]]["backend"])
    env_info["threads"] = args.threads  # each row has its own
    header = "\n".join(
        [
            "# CPU runtimes side by side",
            "",
            f"input: {args.input}; model: {package.path}; {args.repeats} alternating rounds after {args.warmup} "
            f"warm-up; baseline {result['baseline']}; speed-up = baseline median time / variant median time; "
            f"Dice of each labelmap against the baseline's. Each row records its backend and threads; the "
            f"environment's backend is the baseline's.",
            "",
            environment_markdown(env_info),
        ]
    )
    text = report(result, header)
    print(text)
    payload = {
        "benchmark": "cpu_options",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": env_info,
        **result,
    }
    json_path, md_path = write_results("cpu_options", payload, text, args.out_dir, args.tag)
    print(f"\nresults: {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
