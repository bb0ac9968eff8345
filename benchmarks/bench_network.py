"""How much of this CPU's convolution throughput inference achieves.

    python benchmarks/bench_network.py                        # bundled model on ProstateX-0000
    python benchmarks/bench_network.py --model /tmp/pkg --case promise12:Case25 --repeats 1

Reports, for the model package and input:

- FLOPs of one forward pass over the model's patch (every convolution, 2 per
  multiply-add: ``UNetSegmentLib.network.conv_flops``);
- the number of sliding windows the input needs (times the test-time flips);
- the time of a single forward pass over one patch, and of the whole
  ``Predictor`` inference stage, and the GFLOP/s each achieves;
- a conv3d microbenchmark on this CPU (3x3x3, ``--micro-channels`` in and out,
  ``--micro-size`` voxels) in NCDHW float32, channels-last float32 and
  channels-last bf16, and the achieved GFLOP/s as a fraction of each.

A fraction well below 1 for the forward pass means the network's layers run
less efficiently than the microbenchmark's (few channels, memory-bound
normalisation); a gap between the forward pass and the inference stage is the
sliding window's overhead (padding, Gaussian blending, softmax, argmax).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    add_case_arguments,
    environment,
    environment_markdown,
    load_package,
    markdown_table,
    parse_triple,
    ratio,
    resolve_input,
    run_alternating,
    summarize,
    write_results,
)
from UNetSegmentLib.cli import QUALITIES  # noqa: E402

#: (name, memory format, dtype) of the conv3d microbenchmark.
MICRO_CONFIGS: Tuple[Tuple[str, str, torch.dtype], ...] = (
    ("NCDHW fp32", "contiguous", torch.float32),
    ("channels-last fp32", "channels_last", torch.float32),
    ("channels-last bf16", "channels_last", torch.bfloat16),
)


def conv3d_flops(channels_in: int, channels_out: int, size_zyx: Sequence[int], kernel: int = 3) -> int:
    """FLOPs (2 per multiply-add) of one same-padded conv3d over ``size_zyx`` voxels, batch 1."""
    voxels = 1
    for s in size_zyx:
        voxels *= int(s)
    return 2 * channels_in * channels_out * kernel**3 * voxels


def _timed(fn, repeats: int, warmup: int) -> Tuple[List[float], List[float]]:
    """Wall and process CPU seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


@torch.no_grad()
def conv3d_microbenchmark(
    channels: int, size_zyx: Sequence[int], repeats: int, warmup: int = 1
) -> Dict[str, Dict[str, float]]:
    """GFLOP/s of a 3x3x3 conv3d (``channels`` -> ``channels``) per configuration, alternating them.

    bf16 runs the convolution the way inference does: float32 weights under
    ``torch.autocast(cpu, bfloat16)``.
    """
    flops = conv3d_flops(channels, channels, size_zyx)
    runners = {}
    for name, fmt_name, dtype in MICRO_CONFIGS:
        conv = torch.nn.Conv3d(channels, channels, 3, padding=1, bias=False).eval()
        x = torch.randn(1, channels, *size_zyx)
        if fmt_name == "channels_last":
            conv = conv.to(memory_format=torch.channels_last_3d)
            x = x.contiguous(memory_format=torch.channels_last_3d)

        def run(conv=conv, x=x, dtype=dtype) -> float:
            t0 = time.perf_counter()
            if dtype == torch.bfloat16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    conv(x)
            else:
                conv(x)
            return time.perf_counter() - t0

        runners[name] = run
    results = run_alternating(runners, repeats, warmup)
    out = {}
    for name, times in results.items():
        s = summarize(times)
        out[name] = {"median_s": s["median"], "min_s": s["min"], "gflops": flops / s["min"] / 1e9, "flops": flops}
    return out


def analyse(package, image, repeats: int, warmup: int, precision: str, quality: str) -> Dict[str, Any]:
    """FLOPs, windows, forward-pass and inference-stage GFLOP/s of ``package`` on ``image`` (CPU)."""
    from UNetSegmentLib.inference import Predictor
    from UNetSegmentLib.network import conv_flops
    from UNetSegmentLib.preprocessing import preprocess_image
    from UNetSegmentLib.sliding_window import window_count

    predictor = Predictor(package, device="cpu", precision=precision, quality=quality)
    patch = tuple(package.info.inference.patch_size_zyx)
    flops = conv_flops(predictor.network, patch)
    array_zyx, _ = preprocess_image(image, package.info.preprocessing)
    passes = 1 + len(predictor.flips)
    windows = window_count(array_zyx.shape, patch, predictor.overlap) * passes
    net = predictor.network.eval()
    x = torch.randn(1, net.config.in_channels, *patch)
    if predictor._channels_last():
        x = x.contiguous(memory_format=torch.channels_last_3d)

    @torch.no_grad()
    def forward() -> None:
        with predictor._autocast():
            net(x)

    forward_times, forward_cpu = _timed(forward, repeats, warmup)
    inference_times: List[float] = []
    predict_cpu, _ = _timed(
        lambda: inference_times.append(predictor.predict(image).timings_s["inference"]), repeats, warmup
    )
    inference_times = inference_times[warmup:]
    fwd = summarize(forward_times)
    inf = summarize(inference_times)
    return {
        "patch_zyx": list(patch),
        "model_grid_zyx": list(array_zyx.shape),
        "overlap": predictor.overlap,
        "passes": passes,
        "quality": quality,
        "windows": windows,
        "flops_per_forward": flops,
        "flops_per_image": flops * windows,
        "dtype": str(predictor.dtype).replace("torch.", ""),
        "channels_last": predictor._channels_last(),
        "threads": torch.get_num_threads(),
        "forward_s": fwd,
        "forward_cpu_s": summarize(forward_cpu),
        "inference_s": inf,
        "predict_cpu_s": summarize(predict_cpu),
        "forward_gflops": flops / fwd["min"] / 1e9,
        "inference_gflops": flops * windows / inf["min"] / 1e9,
    }


def report(net: Dict[str, Any], micro: Dict[str, Dict[str, float]], header: str) -> str:
    rows = [
        ["conv FLOPs per forward (GFLOP)", net["flops_per_forward"] / 1e9],
        ["patch z,y,x", "x".join(str(v) for v in net["patch_zyx"])],
        ["model grid z,y,x", "x".join(str(v) for v in net["model_grid_zyx"])],
        ["sliding windows (x TTA passes)", net["windows"]],
        ["conv GFLOP per image", net["flops_per_image"] / 1e9],
        ["predictor dtype / channels-last / threads", f"{net['dtype']} / {net['channels_last']} / {net['threads']}"],
        ["one forward pass s (min)", net["forward_s"]["min"]],
        ["one forward pass CPU s (min)", net["forward_cpu_s"]["min"]],
        ["inference stage s (min)", net["inference_s"]["min"]],
        ["whole predict CPU s (min)", net["predict_cpu_s"]["min"]],
        ["forward GFLOP/s", net["forward_gflops"]],
        ["inference GFLOP/s", net["inference_gflops"]],
    ]
    micro_rows = [
        [
            name,
            m["min_s"],
            m["gflops"],
            ratio(net["forward_gflops"], m["gflops"]),
            ratio(net["inference_gflops"], m["gflops"]),
        ]
        for name, m in micro.items()
    ]
    return "\n\n".join(
        [
            header,
            markdown_table(["network", "value"], rows),
            markdown_table(
                ["conv3d microbenchmark", "s (min)", "GFLOP/s", "forward fraction", "inference fraction"], micro_rows
            ),
        ]
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Network FLOPs, sliding windows and achieved GFLOP/s against a conv3d microbenchmark."
    )
    add_case_arguments(p)
    p.add_argument("--model", type=Path, help="model package folder (default: the bundled model)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument(
        "--quality", default="standard", choices=QUALITIES, help="windows and test-time flips of this quality"
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    p.add_argument("--micro-channels", type=int, default=32, help="channels in and out of the microbenchmark conv3d")
    p.add_argument(
        "--micro-size", type=parse_triple, default=(16, 64, 64), help="z,y,x voxels of the microbenchmark input"
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
    from UNetSegmentLib.io import ImageReadError, read_image

    if args.threads:
        torch.set_num_threads(args.threads)
    package = load_package(args.model)
    try:
        image = read_image(str(args.input))
    except (ImageReadError, OSError, RuntimeError) as e:
        print(f"bench_network: cannot read {args.input}: {e}", file=sys.stderr)
        return 1
    net = analyse(package, image, args.repeats, args.warmup, args.precision, args.quality)
    micro = conv3d_microbenchmark(args.micro_channels, args.micro_size, args.repeats, args.warmup)
    env_info = environment()
    header = "\n".join(
        [
            "# Network throughput against a conv3d microbenchmark",
            "",
            f"input: {args.input}; model: {package.path}; {args.repeats} repeats after {args.warmup} warm-up; "
            f"microbenchmark: conv3d 3x3x3 {args.micro_channels}->{args.micro_channels} channels over "
            f"{'x'.join(str(v) for v in args.micro_size)} voxels",
            "",
            environment_markdown(env_info),
        ]
    )
    text = report(net, micro, header)
    print(text)
    payload = {
        "benchmark": "network",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": env_info,
        "network": net,
        "microbenchmark": micro,
    }
    json_path, md_path = write_results("network", payload, text, args.out_dir, args.tag)
    print(f"\nresults: {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
