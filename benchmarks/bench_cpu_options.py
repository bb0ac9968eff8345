"""CPU inference options side by side: memory format, precision, threads.

    python benchmarks/bench_cpu_options.py                     # bundled model on ProstateX-0000
    python benchmarks/bench_cpu_options.py --model /tmp/pkg --repeats 1 --threads 2

The same model segments the same image with each variant, through
``UNetSegmentLib.inference.Predictor``:

- ``ncdhw-fp32``: NCDHW (contiguous) float32, the baseline;
- ``cl-fp32``: channels-last (NDHWC) float32;
- ``cl-bf16``: channels-last under bf16 autocast (float32 weights);

each at every thread count of ``--threads`` (default 1 and 2). The baseline is
the first variant at the highest thread count. After one warm-up each the
variants alternate. Reported per variant: median time of the whole ``predict``
call and of its inference stage, the speed-up against the baseline, and the
agreement of its labelmap with the baseline's (Dice of the whole gland and the
lowest Dice over the labels), so an option is kept only where it holds accuracy.
The process CPU time of each ``predict`` is shown too: a wall time far above
CPU time / threads means the machine was busy and the run should be repeated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

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
from UNetSegmentLib.cli import QUALITIES  # noqa: E402

#: variant name -> (Predictor memory_format, precision)
VARIANTS: Dict[str, Tuple[str, str]] = {
    "ncdhw-fp32": ("contiguous", "float32"),
    "cl-fp32": ("channels_last", "float32"),
    "cl-bf16": ("channels_last", "bfloat16"),
}


def parse_variants(text: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"variants must be among {', '.join(VARIANTS)}, not {text!r}")
    return names


def variant_key(name: str, threads: int) -> str:
    return f"{name}@{threads}t"


def label_agreement(labels_zyx: np.ndarray, baseline_zyx: np.ndarray, values: Sequence[int]) -> Dict[str, float]:
    """Dice against the baseline: whole gland (every non-zero label) and each label value."""
    out = {"gland": dice(labels_zyx > 0, baseline_zyx > 0)}
    for v in values:
        out[f"label_{v}"] = dice(labels_zyx == v, baseline_zyx == v)
    out["min_label"] = min(out[f"label_{v}"] for v in values) if values else out["gland"]
    return out


def run_variants(
    package,
    image: sitk.Image,
    variants: Sequence[str],
    threads: Sequence[int],
    repeats: int,
    warmup: int,
    quality: str = "standard",
) -> Dict[str, Any]:
    """Time every variant x thread count on ``image``, alternating; labelmaps compared with the baseline's."""
    from UNetSegmentLib.inference import Predictor

    threads = sorted(set(threads), reverse=True)
    keys = [variant_key(v, t) for t in threads for v in variants]
    baseline = variant_key(variants[0], threads[0])
    predictors = {}
    for t in threads:
        for v in variants:
            fmt_name, precision = VARIANTS[v]
            predictors[variant_key(v, t)] = (
                Predictor(package, device="cpu", precision=precision, memory_format=fmt_name, quality=quality),
                t,
            )
    last_labels: Dict[str, np.ndarray] = {}

    def runner(key: str):
        predictor, t = predictors[key]

        def run() -> Dict[str, float]:
            torch.set_num_threads(t)
            cpu0 = time.process_time()
            pred = predictor.predict(image)
            cpu = time.process_time() - cpu0
            last_labels[key] = sitk.GetArrayFromImage(pred.labelmap)
            timings = {f"{k}_s": v for k, v in pred.timings_s.items()}
            return {"total_s": sum(pred.timings_s.values()), "cpu_s": cpu, **timings}

        return run

    default_threads = torch.get_num_threads()
    try:
        raw = run_alternating({k: runner(k) for k in keys}, repeats, warmup)
    finally:
        torch.set_num_threads(default_threads)
    values = [lab.value for lab in package.info.labels]
    summary: Dict[str, Any] = {}
    for k in keys:
        predictor, t = predictors[k]
        summary[k] = {
            "memory_format": VARIANTS[k.split("@")[0]][0],
            "dtype": str(predictor.dtype).replace("torch.", ""),
            "threads": t,
            "total_s": summarize([r["total_s"] for r in raw[k]]),
            "inference_s": summarize([r["inference_s"] for r in raw[k]]),
            "cpu_s": summarize([r["cpu_s"] for r in raw[k]]),
            "agreement": label_agreement(last_labels[k], last_labels[baseline], values),
        }
    base = summary[baseline]
    for s in summary.values():
        s["speedup_total"] = ratio(base["total_s"]["median"], s["total_s"]["median"])
        s["speedup_inference"] = ratio(base["inference_s"]["median"], s["inference_s"]["median"])
    return {"baseline": baseline, "variants": summary, "runs": raw}


def report(result: Dict[str, Any], header: str) -> str:
    rows = []
    for k, s in result["variants"].items():
        rows.append(
            [
                k + (" (baseline)" if k == result["baseline"] else ""),
                s["memory_format"],
                s["dtype"],
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
            "memory format",
            "dtype",
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
    return header + "\n\n" + table


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="CPU inference options (memory format, bf16, threads) side by side.")
    add_case_arguments(p)
    p.add_argument("--model", type=Path, help="model package folder (default: the bundled model)")
    p.add_argument(
        "--variants",
        type=parse_variants,
        default=list(VARIANTS),
        help=f"comma-separated, first = baseline ({','.join(VARIANTS)})",
    )
    p.add_argument(
        "--threads", type=parse_int_list, default=[1, 2], help="comma-separated torch thread counts (default 1,2)"
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
    resolve_input(p, args)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from UNetSegmentLib.runtime.torch_runtime import cpu_supports_bf16
    from UNetSegmentLib.io import ImageReadError, read_image

    package = load_package(args.model)
    try:
        image = read_image(str(args.input))
    except (ImageReadError, OSError, RuntimeError) as e:
        print(f"bench_cpu_options: cannot read {args.input}: {e}", file=sys.stderr)
        return 1
    result = run_variants(package, image, args.variants, args.threads, args.repeats, args.warmup, args.quality)
    env_info = environment()
    note = "" if cpu_supports_bf16() else " This CPU has no native bf16: bf16 variants are emulated and slow."
    header = "\n".join(
        [
            "# CPU inference options side by side",
            "",
            f"input: {args.input}; model: {package.path}; {args.repeats} alternating rounds after {args.warmup} warm-up; "
            f"speed-up = baseline median time / variant median time; Dice of each labelmap against the baseline's.{note}",
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
