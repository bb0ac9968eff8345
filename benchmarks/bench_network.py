"""How close inference comes to the convolution floor of this CPU and runtime.

    python benchmarks/bench_network.py                        # bundled model on ProstateX-0000, --backend auto
    python benchmarks/bench_network.py --backend openvino --threads 1
    python benchmarks/bench_network.py --model /tmp/pkg --case promise12:Case25 --repeats 1

For the model package, the input and the runtime (``--backend``, ``--precision``, ``--threads``):

- **FLOPs per voxel**: the convolution FLOPs of one forward pass over the model's patch
  (``UNetSegmentLib.network.conv_flops``, 2 per multiply-add) divided by the patch's voxels;
  the network is fully convolutional, so its work grows with the voxels it is run on;
- **computed voxels**: what the ``Predictor`` actually ran the network on for this case,
  summed over its passes (first pass, test-time flips), windows padded
  (``Prediction.computed_voxels``);
- **floor work** = FLOPs per voxel x computed voxels;
- **micro throughput**: GFLOP/s of one 3x3x3 convolution (``--micro-channels`` in and out,
  default the network's full-resolution width, over ``--micro-size`` voxels, default the
  model's patch) run ON THE SAME RUNTIME with the same settings: for onnxruntime and
  openvino a one-node ONNX ``Conv`` model in a session built like the runtime's (threads,
  options, precision), for torch a ``Conv3d`` in the runtime's memory format and autocast.
  The full-resolution layers do most of the network's FLOPs (the report shows how much),
  so this is the throughput the network's work could run at;
- **floor time** = floor work / micro throughput: the time inference would take if every
  FLOP ran as fast as that convolution;
- **network time**: the ``Predictor``'s inference stage (all passes, blending, softmax,
  argmax), minimum over ``--repeats``; and **network time / floor**, target <= 1.5
  (``met``/``missed``);
- for reference, the time and GFLOP/s of one forward pass over one patch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.common import (  # noqa: E402
    add_case_arguments,
    environment,
    environment_markdown,
    load_package,
    markdown_table,
    parse_triple,
    ratio,
    resolve_input,
    summarize,
    verdict,
    write_results,
)
from UNetSegmentLib.inference import QUALITIES  # noqa: E402
from UNetSegmentLib.runtime import BACKENDS, PRECISIONS  # noqa: E402

#: The issue's target: inference stage time / floor time.
FLOOR_TARGET = 1.5


def conv3d_flops(channels_in: int, channels_out: int, size_zyx: Sequence[int], kernel: int = 3) -> int:
    """FLOPs (2 per multiply-add) of one same-padded conv3d over ``size_zyx`` voxels, batch 1."""
    return 2 * channels_in * channels_out * kernel**3 * int(np.prod([int(s) for s in size_zyx]))


def _timed(fn: Callable[[], Any], repeats: int, warmup: int) -> Tuple[List[float], List[float]]:
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


def full_resolution_width(package) -> int:
    """Output channels of the network's full-resolution convolutions (2 x ``base_channels``), 16 if unknown."""
    base = package.info.architecture.get("parameters", {}).get("base_channels")
    return 2 * int(base) if base else 16


def flops_by_level(network, patch_zyx: Sequence[int]) -> List[Dict[str, Any]]:
    """Convolution FLOPs of one forward pass over ``patch_zyx``, grouped by output resolution
    (largest first), with each group's layers as ``"in->out"`` channels."""
    import torch

    groups: Dict[Tuple[int, ...], Dict[str, Any]] = {}

    def hook(module, inputs, output) -> None:
        w = module.weight
        if isinstance(module, torch.nn.ConvTranspose3d):
            macs = inputs[0][0].numel() * w.shape[1] * int(np.prod(w.shape[2:]))
            c_in, c_out = w.shape[0], w.shape[1]
        else:
            macs = output[0].numel() * w.shape[1] * int(np.prod(w.shape[2:]))
            c_in, c_out = w.shape[1], w.shape[0]
        g = groups.setdefault(tuple(output.shape[2:]), {"flops": 0, "layers": []})
        g["flops"] += 2 * macs
        g["layers"].append(f"{c_in}->{c_out}" + (" (up)" if isinstance(module, torch.nn.ConvTranspose3d) else ""))

    convs = [m for m in network.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    handles = [m.register_forward_hook(hook) for m in convs]
    try:
        with torch.no_grad():
            network.eval()(torch.zeros((1, network.config.in_channels, *patch_zyx)))
    finally:
        for h in handles:
            h.remove()
    total = sum(g["flops"] for g in groups.values()) or 1
    return [
        {"size_zyx": list(size), "flops": g["flops"], "share": g["flops"] / total, "layers": g["layers"]}
        for size, g in sorted(groups.items(), key=lambda kv: -int(np.prod(kv[0])))
    ]


# --- the conv3d microbenchmark on each runtime ---------------------------------------------


def conv_onnx_model(channels: int, seed: int = 0) -> bytes:
    """A one-node ONNX model: 3x3x3 ``Conv``, ``channels`` in and out, pads 1, random weights, no bias;
    input ``x`` of shape (1, channels, z, y, x) with free spatial axes, opset of the package export."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from UNetSegmentLib.onnx_export import OPSET

    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((channels, channels, 3, 3, 3)) / np.sqrt(27 * channels)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3, 3], pads=[1] * 6)
    graph = helper.make_graph(
        [node],
        "conv3d_micro",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, "z", "y", "x"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, "z", "y", "x"])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def micro_runner(runtime, channels: int, size_zyx: Sequence[int]) -> Tuple[Callable[[], None], Dict[str, Any]]:
    """A call that runs the microbenchmark convolution once on ``runtime``'s engine with its settings,
    and a description of how it is configured."""
    x = np.random.default_rng(1).standard_normal((1, channels, *size_zyx)).astype(np.float32)
    if runtime.name == "onnxruntime":
        import onnxruntime as ort

        # the runtime's own session options: threads, sequential execution, graph optimisations, arena
        options = runtime.session.get_session_options()
        session = ort.InferenceSession(conv_onnx_model(channels), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        info = {
            "engine": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "threads": options.intra_op_num_threads,
            "precision": "float32",
        }
        return (lambda: session.run(None, {name: x})), info
    if runtime.name == "openvino":
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": runtime.threads,
            "INFERENCE_PRECISION_HINT": "bf16" if runtime.precision == "bfloat16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        compiled = core.compile_model(core.read_model(conv_onnx_model(channels), b""), "CPU", config)
        request = compiled.create_infer_request()
        info = {
            "engine": f"openvino {str(runtime.version).split('-')[0]} CPU",
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "precision": runtime.precision,
            "inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
        }
        return (lambda: request.infer({0: x})), info
    if runtime.name == "torch":
        import torch

        conv = torch.nn.Conv3d(channels, channels, 3, padding=1, bias=False).eval().to(runtime.torch_device)
        t = torch.from_numpy(x).to(runtime.torch_device)
        if runtime._channels_last():
            conv = conv.to(memory_format=torch.channels_last_3d)
            t = t.contiguous(memory_format=torch.channels_last_3d)

        @torch.no_grad()
        def run() -> None:
            with runtime._autocast():
                conv(t)
            if runtime.torch_device.type == "cuda":
                torch.cuda.synchronize()

        info = {
            "engine": f"torch {torch.__version__} {runtime.torch_device.type}",
            "threads": torch.get_num_threads(),
            "precision": runtime.precision,
            "channels_last": runtime._channels_last(),
        }
        return run, info
    raise ValueError(f"no microbenchmark for runtime {runtime.name!r}")


def conv3d_microbenchmark(runtime, channels: int, size_zyx: Sequence[int], repeats: int, warmup: int = 1):
    """GFLOP/s of the 3x3x3 convolution (``channels`` -> ``channels`` over ``size_zyx``) on ``runtime``."""
    run, info = micro_runner(runtime, channels, size_zyx)
    flops = conv3d_flops(channels, channels, size_zyx)
    wall, _ = _timed(run, repeats, max(warmup, 1))  # the first call builds the kernels
    s = summarize(wall)
    return {
        **info,
        "channels": channels,
        "size_zyx": list(size_zyx),
        "flops": flops,
        "s": s,
        "gflops": flops / s["min"] / 1e9,
    }


# --- the network on the case -------------------------------------------------------------------


def analyse(
    package,
    image,
    repeats: int,
    warmup: int,
    backend: str = "auto",
    precision: str = "auto",
    quality: str = "standard",
    threads: Optional[int] = None,
) -> Tuple[Any, Dict[str, Any]]:
    """The predictor on ``image`` (CPU): FLOPs per voxel, computed voxels, floor work, inference stage
    time, and one forward pass over one patch. Returns the predictor (its runtime runs the
    microbenchmark) and the measurements."""
    from UNetSegmentLib.inference import Predictor
    from UNetSegmentLib.network import conv_flops

    predictor = Predictor(package, device="cpu", backend=backend, precision=precision, quality=quality, threads=threads)
    runtime = predictor.runtime
    patch = tuple(int(p) for p in package.info.inference.patch_size_zyx)
    patch_voxels = int(np.prod(patch))
    network = package.build_network()
    flops_patch = conv_flops(network, patch)
    flops_per_voxel = flops_patch / patch_voxels
    levels = flops_by_level(network, patch)

    x = np.random.default_rng(0).standard_normal((1, network.config.in_channels, *patch)).astype(np.float32)
    forward_wall, forward_cpu = _timed(lambda: runtime.run(x), repeats, warmup)

    inference: List[float] = []
    computed: List[int] = []
    grid_voxels = 0

    def predict() -> None:
        nonlocal grid_voxels
        pred = predictor.predict(image)
        inference.append(pred.timings_s["inference"])
        computed.append(int(pred.computed_voxels))
        grid_voxels = int(pred.grid_voxels)

    predict_cpu, _ = _timed(predict, repeats, warmup)
    inference, computed = inference[warmup:], computed[warmup:]
    fwd = summarize(forward_wall)
    inf = summarize(inference)
    voxels = computed[-1]
    floor_work = flops_per_voxel * voxels
    return predictor, {
        "backend": runtime.name,
        "precision": runtime.precision,
        "threads": runtime.threads,
        "runtime_version": getattr(runtime, "version", None),
        "channels_last": runtime._channels_last() if runtime.name == "torch" else None,
        "quality": quality,
        "passes": 1 + len(predictor.flips),
        "patch_zyx": list(patch),
        "flops_per_patch": flops_patch,
        "flops_per_voxel": flops_per_voxel,
        "flops_by_level": levels,
        "grid_voxels": grid_voxels,
        "computed_voxels": voxels,
        "computed_voxels_per_repeat": computed,
        "floor_work_flops": floor_work,
        "inference_s": inf,
        "predict_cpu_s": summarize(predict_cpu),
        "inference_gflops": floor_work / inf["min"] / 1e9,
        "forward_s": fwd,
        "forward_cpu_s": summarize(forward_cpu),
        "forward_gflops": flops_patch / fwd["min"] / 1e9,
    }


def floor_comparison(net: Dict[str, Any], micro: Dict[str, Any]) -> Dict[str, Any]:
    """Floor time (floor work at the microbenchmark's throughput) and network time / floor."""
    floor_s = net["floor_work_flops"] / (micro["gflops"] * 1e9)
    network_s = net["inference_s"]["min"]
    r = ratio(network_s, floor_s)
    return {
        "floor_s": floor_s,
        "network_s": network_s,
        "ratio": r,
        "target": FLOOR_TARGET,
        "verdict": verdict(r, FLOOR_TARGET, higher_is_better=False),
        "forward_fraction_of_micro": ratio(net["forward_gflops"], micro["gflops"]),
    }


def _size(v: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in v)


def report(net: Dict[str, Any], micro: Dict[str, Any], floor: Dict[str, Any], header: str) -> str:
    runtime = f"{net['backend']} {str(net['runtime_version'] or '').split('-')[0]}".strip()
    if net["channels_last"] is not None:
        runtime += ", channels-last" if net["channels_last"] else ", NCDHW"
    rows = [
        ["runtime / precision / threads", f"{runtime} / {net['precision']} / {net['threads']}"],
        ["quality (passes)", f"{net['quality']} ({net['passes']})"],
        ["conv FLOPs per voxel", net["flops_per_voxel"]],
        ["model grid voxels", net["grid_voxels"]],
        ["computed voxels (all passes)", net["computed_voxels"]],
        ["floor work (GFLOP)", net["floor_work_flops"] / 1e9],
        ["micro conv throughput (GFLOP/s)", micro["gflops"]],
        ["floor time s", floor["floor_s"]],
        ["network time s (inference stage, min)", floor["network_s"]],
        [f"network time / floor (target <= {FLOOR_TARGET:g})", f"{floor['ratio']:.2f} {floor['verdict']}"],
        ["achieved GFLOP/s over the inference stage", net["inference_gflops"]],
        ["whole predict CPU s (min)", net["predict_cpu_s"]["min"]],
    ]
    reference = [
        [f"patch {_size(net['patch_zyx'])}: conv GFLOP", net["flops_per_patch"] / 1e9],
        ["one forward pass s (min)", net["forward_s"]["min"]],
        ["one forward pass CPU s (min)", net["forward_cpu_s"]["min"]],
        ["forward GFLOP/s", net["forward_gflops"]],
        ["forward GFLOP/s / micro GFLOP/s", floor["forward_fraction_of_micro"]],
    ]
    levels = [
        [_size(lv["size_zyx"]), lv["flops"] / 1e9, lv["share"], ", ".join(lv["layers"])] for lv in net["flops_by_level"]
    ]
    micro_desc = (
        f"conv3d microbenchmark: 3x3x3 {micro['channels']}->{micro['channels']} channels over "
        f"{_size(micro['size_zyx'])} voxels on {micro['engine']}, {micro['threads']} threads, {micro['precision']}: "
        f"{micro['s']['min']:.4g} s (min), {micro['gflops']:.3g} GFLOP/s"
    )
    return "\n\n".join(
        [
            header,
            markdown_table(["floor", "value"], rows),
            micro_desc,
            markdown_table(["one patch, for reference", "value"], reference),
            markdown_table(["conv FLOPs by output size z,y,x", "GFLOP per patch", "share", "layers"], levels),
        ]
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Inference time against the convolution floor of this CPU and runtime (conv3d microbenchmark)."
    )
    add_case_arguments(p)
    p.add_argument("--model", type=Path, help="model package folder (default: the bundled model)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="runtime, as unetsegment segment's")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument(
        "--quality", default="standard", choices=QUALITIES, help="passes and test-time flips of this quality"
    )
    p.add_argument("--threads", type=int, help="inference threads (default: the CPUs this process may use)")
    p.add_argument(
        "--micro-channels",
        type=int,
        help="channels in and out of the microbenchmark conv (default: the network's full-resolution width, "
        "2 x base_channels: 16 for the bundled model)",
    )
    p.add_argument(
        "--micro-size", type=parse_triple, help="z,y,x voxels of the microbenchmark input (default: the model's patch)"
    )
    p.add_argument("--out-dir", type=Path)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.micro_channels is not None and args.micro_channels < 1:
        p.error("--micro-channels must be >= 1")
    resolve_input(p, args)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from UNetSegmentLib.hardware import default_threads
    from UNetSegmentLib.io import ImageReadError, read_image
    from UNetSegmentLib.runtime import RuntimeUnavailable

    package = load_package(args.model)
    try:
        image = read_image(str(args.input))
    except (ImageReadError, OSError, RuntimeError) as e:
        print(f"bench_network: cannot read {args.input}: {e}", file=sys.stderr)
        return 1
    threads = default_threads(args.threads)  # the same count for every runtime, and for the microbenchmark
    try:
        predictor, net = analyse(
            package, image, args.repeats, args.warmup, args.backend, args.precision, args.quality, threads
        )
    except RuntimeUnavailable as e:
        print(f"bench_network: {e}", file=sys.stderr)
        return 1
    channels = args.micro_channels or full_resolution_width(package)
    size = args.micro_size or tuple(net["patch_zyx"])
    micro = conv3d_microbenchmark(predictor.runtime, channels, size, args.repeats, args.warmup)
    floor = floor_comparison(net, micro)
    env_info = environment(backend=net["backend"], threads=net["threads"])
    why = (
        "the network's full-resolution width"
        if args.micro_channels is None
        else f"--micro-channels {args.micro_channels}"
    )
    header = "\n".join(
        [
            "# Inference against the convolution floor",
            "",
            f"input: {args.input}; model: {package.path}; {args.repeats} repeats after {args.warmup} warm-up; "
            f"floor = conv FLOPs per voxel x computed voxels / the microbenchmark's throughput on the same runtime. "
            f"Microbenchmark: one 3x3x3 conv, {channels}->{channels} channels ({why}) over "
            f"{_size(size)} voxels ({'the model patch' if args.micro_size is None else '--micro-size'}): the "
            f"full-resolution layers do {net['flops_by_level'][0]['share']:.0%} of the network's conv FLOPs.",
            "",
            environment_markdown(env_info),
        ]
    )
    text = report(net, micro, floor, header)
    print(text)
    payload = {
        "benchmark": "network",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": env_info,
        "network": net,
        "microbenchmark": micro,
        "floor": floor,
    }
    json_path, md_path = write_results("network", payload, text, args.out_dir, args.tag)
    print(f"\nresults: {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
