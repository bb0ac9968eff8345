"""End-to-end inference, ours against the peer tool TAPS, side by side.

    python benchmarks/bench_inference.py                      # ProstateX-0000, bundled model, 3 rounds
    python benchmarks/bench_inference.py --case promise12:Case25 --model /tmp/pkg --repeats 1

Each tool runs as a fresh process, as a user would run it: ``unetsegment
segment`` (``python -m UNetSegmentLib segment IN -o OUT``) and ``taps segment
IN OUT --exact`` (lavlab-taps, a whole-gland SegResNet run with onnxruntime).
After one warm-up each (disk cache, imports) they alternate: ours, TAPS, ours,
TAPS, ... Measured per run:

- time from process start to the output file being written (its mtime), and to
  process exit;
- peak memory: the maximum resident set size of the process and every
  descendant it waited for (``os.wait4`` on the child: the kernel's max RSS of
  that process tree's largest member);
- CPU time (user + system, the process and its waited-for descendants): a
  wall time far above CPU time / threads means the machine was busy.

Reported: median and minimum of each, the ratios against the targets (TAPS
time / ours >= 5, our peak / TAPS peak <= 0.5), and the Dice of the two
whole-gland outputs with each other and with the reference label, so speed is
never bought with accuracy. A JSON and a Markdown result go to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    add_case_arguments,
    environment,
    environment_markdown,
    fmt,
    image_dice,
    markdown_table,
    ratio,
    resolve_input,
    run_alternating,
    summarize,
    verdict,
    write_results,
)

#: Targets of the project (issue 15): at least 15x faster than TAPS end to end, at most 0.3x its
#: peak memory; every PROMISE12 case of ../shared/data in at most 6 s (``--all-promise12``).
SPEEDUP_TARGET = 15.0
MEMORY_TARGET = 0.3
CASE_SECONDS_TARGET = 6.0

OURS_CMD = "{python} -m UNetSegmentLib segment {input} -o {output}"
TAPS_CMD = "taps segment {input} {output} --exact"
TAPS_CMD_FALLBACK = (
    "{python} -c 'import sys; from taps.cli import main; sys.exit(main())' segment {input} {output} --exact"
)


@dataclass
class RunResult:
    """One process run: times in seconds, peak memory in MiB."""

    to_output_s: float
    to_exit_s: float
    peak_rss_mib: float
    cpu_s: float
    returncode: int
    output: str
    log: str


def taps_template() -> str:
    """The TAPS console script where it is on PATH, else the same entry point through this Python."""
    return TAPS_CMD if shutil.which("taps") else TAPS_CMD_FALLBACK


def build_command(
    template: str, input_path: Path, output_path: Path, model: Optional[Path] = None, device: Optional[str] = None
) -> List[str]:
    """Split ``template`` like a shell, then fill ``{python} {input} {output} {model}`` in each word."""
    values = {"python": sys.executable, "input": str(input_path), "output": str(output_path), "model": str(model or "")}
    argv = [word.format(**values) for word in shlex.split(template)]
    if device:
        argv += ["--device", device]
    return argv


def ours_template(model: Optional[Path], backend: Optional[str] = None, quality: Optional[str] = None) -> str:
    return (
        OURS_CMD
        + (" --model {model}" if model else "")
        + (f" --backend {backend}" if backend else "")
        + (f" --quality {quality}" if quality else "")
    )


def our_backend(backend: Optional[str], device: Optional[str]) -> Dict[str, object]:
    """The runtime our command uses here (what ``--backend auto`` resolves to), with the CPU it runs on."""
    from UNetSegmentLib.hardware import cpu_summary, default_threads
    from UNetSegmentLib.runtime import RuntimeUnavailable, choose_backend

    try:
        chosen = choose_backend(backend or "auto", device or "auto", has_onnx=True)
    except RuntimeUnavailable as e:
        chosen = f"unavailable: {e}"
    return {"backend": chosen, "requested": backend or "auto", "threads": default_threads(), "cpu": cpu_summary()}


def measure_command(
    argv: Sequence[str], output: Path, log_path: Path, env: Optional[Dict[str, str]] = None, timeout_s: float = 1800.0
) -> RunResult:
    """Run ``argv`` once; wall times from just before the fork and peak RSS of its process tree.

    stdout and stderr go to ``log_path`` (a pipe left unread could block the child).
    """
    if output.exists():
        output.unlink()
    with open(log_path, "wb") as log:
        start_wall = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        timer = threading.Timer(timeout_s, _kill_group, (proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        to_exit = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss: kilobytes on Linux, bytes on macOS
    peak_mib = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    to_output = output.stat().st_mtime - start_wall if output.exists() else float("nan")
    tail = log_path.read_text(errors="replace", encoding="utf-8")[-2000:]
    cpu_s = usage.ru_utime + usage.ru_stime
    return RunResult(min(to_output, to_exit), to_exit, peak_mib, cpu_s, proc.returncode, str(output), tail)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def tool_summary(runs: Sequence[RunResult]) -> Dict[str, Dict[str, float]]:
    return {
        "to_output_s": summarize([r.to_output_s for r in runs]),
        "to_exit_s": summarize([r.to_exit_s for r in runs]),
        "peak_rss_mib": summarize([r.peak_rss_mib for r in runs]),
        "cpu_s": summarize([r.cpu_s for r in runs]),
    }


def compare(ours: Dict[str, Dict[str, float]], peer: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """Ratios against the targets: speed-up = peer time / ours; memory = our peak / peer peak."""
    return {
        "speedup_median": ratio(peer["to_output_s"]["median"], ours["to_output_s"]["median"]),
        "speedup_min": ratio(peer["to_output_s"]["min"], ours["to_output_s"]["min"]),
        "memory_ratio_median": ratio(ours["peak_rss_mib"]["median"], peer["peak_rss_mib"]["median"]),
        "memory_ratio_max": ratio(ours["peak_rss_mib"]["max"], peer["peak_rss_mib"]["max"]),
        "cpu_time_ratio_median": ratio(peer["cpu_s"]["median"], ours["cpu_s"]["median"]),
    }


def gland_volume_ml(path: Path) -> float:
    """Volume of every non-zero voxel in mL (1 mL = 1000 mm^3)."""
    import numpy as np
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return float((sitk.GetArrayViewFromImage(img) > 0).sum() * np.prod(img.GetSpacing()) / 1000.0)


def accuracy(ours: Optional[Path], peer: Optional[Path], label: Optional[Path]) -> Dict[str, float]:
    """Whole-gland Dice between the tools and against the label (on the label's grid), volumes in mL."""
    out: Dict[str, float] = {}
    have = {k: p for k, p in (("ours", ours), ("taps", peer)) if p is not None and p.exists()}
    if len(have) == 2:
        out["dice_ours_vs_taps"] = image_dice(have["ours"], have["taps"])
    for k, p in have.items():
        out[f"volume_ml_{k}"] = gland_volume_ml(p)
        if label is not None:
            out[f"dice_{k}_vs_label"] = image_dice(p, label)
    if label is not None:
        out["volume_ml_label"] = gland_volume_ml(label)
    return out


def report(
    summary: Dict[str, Dict[str, Dict[str, float]]], ratios: Dict[str, float], acc: Dict[str, float], header: str
) -> str:
    """The Markdown report (also printed): a table per tool, the ratios against the targets, accuracy."""
    rows = []
    for tool, s in summary.items():
        rows.append(
            [
                tool,
                s["to_output_s"]["n"],
                s["to_output_s"]["median"],
                s["to_output_s"]["min"],
                s["to_exit_s"]["median"],
                s["cpu_s"]["median"],
                s["peak_rss_mib"]["median"],
                s["peak_rss_mib"]["max"],
                acc.get(f"volume_ml_{tool}", float("nan")),
                acc.get(f"dice_{tool}_vs_label", float("nan")),
            ]
        )
    table = markdown_table(
        [
            "tool",
            "runs",
            "to output s (median)",
            "min s",
            "to exit s (median)",
            "CPU s (median)",
            "peak RSS MiB (median)",
            "max MiB",
            "gland mL",
            "Dice vs label",
        ],
        rows,
    )
    sp, mem = ratios.get("speedup_median", float("nan")), ratios.get("memory_ratio_median", float("nan"))
    ratio_rows = [
        ["speed-up: TAPS time / ours (median)", sp, f">= {SPEEDUP_TARGET:g}", verdict(sp, SPEEDUP_TARGET, True)],
        [
            "speed-up: TAPS time / ours (min)",
            ratios.get("speedup_min"),
            f">= {SPEEDUP_TARGET:g}",
            verdict(ratios.get("speedup_min", float("nan")), SPEEDUP_TARGET, True),
        ],
        ["memory: our peak / TAPS peak (median)", mem, f"<= {MEMORY_TARGET:g}", verdict(mem, MEMORY_TARGET, False)],
        [
            "memory: our peak / TAPS peak (max)",
            ratios.get("memory_ratio_max"),
            f"<= {MEMORY_TARGET:g}",
            verdict(ratios.get("memory_ratio_max", float("nan")), MEMORY_TARGET, False),
        ],
        ["CPU time: TAPS / ours (median; context)", ratios.get("cpu_time_ratio_median"), "", ""],
        ["whole-gland Dice ours vs TAPS", acc.get("dice_ours_vs_taps", float("nan")), "", ""],
        ["label volume mL", acc.get("volume_ml_label", float("nan")), "", ""],
    ]
    return "\n\n".join([header, table, markdown_table(["ratio", "value", "target", "verdict"], ratio_rows)])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="End-to-end time and peak memory of unetsegment vs TAPS, side by side.")
    add_case_arguments(p)
    p.add_argument("--model", type=Path, help="model package folder for our CLI (default: the bundled model)")
    p.add_argument("--repeats", type=int, default=3, help="measured rounds (each: ours then TAPS)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs of each tool first")
    p.add_argument("--device", help="passed to both tools as --device (default: each tool's own)")
    p.add_argument("--backend", help="our --backend (default: auto, as a user runs it)")
    p.add_argument("--quality", choices=("fast", "standard", "best"), help="our --quality (default: standard)")
    p.add_argument(
        "--all-promise12",
        action="store_true",
        help=f"time our tool alone on every PROMISE12 case of ../shared/data and print the slowest "
        f"(target <= {CASE_SECONDS_TARGET:g} s each)",
    )
    p.add_argument("--threads", type=int, help="set OMP_NUM_THREADS/MKL_NUM_THREADS for both processes")
    p.add_argument("--ours-cmd", help=f"command template for our tool (default {OURS_CMD!r} [+ --model {{model}}])")
    p.add_argument("--peer-cmd", help=f"command template for TAPS (default {TAPS_CMD!r})")
    p.add_argument("--no-peer", action="store_true", help="time our tool only (no ratios)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run is killed")
    p.add_argument("--keep", type=Path, help="keep outputs and logs in this folder")
    p.add_argument("--out-dir", type=Path, help="where the JSON and Markdown results go (default benchmarks/results)")
    p.add_argument("--tag", default="", help="added to the result file names")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    resolve_input(p, args)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for path in [args.input] + ([args.label] if args.label else []) + ([args.model] if args.model else []):
        if not path.exists():
            print(f"bench_inference: {path} does not exist", file=sys.stderr)
            return 1
    if args.keep:
        work = Path(args.keep)
    elif args.dry_run:
        work = Path(tempfile.gettempdir()) / "bench_inference_XXXX"
    else:
        work = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    if not args.dry_run:
        work.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz"
    if args.all_promise12:
        return run_all_cases(args, work)
    tools = {"ours": args.ours_cmd or ours_template(args.model, args.backend, args.quality)}
    if not args.no_peer:
        tools["taps"] = args.peer_cmd or taps_template()
    commands = {
        t: build_command(tpl, args.input, work / f"{t}{suffix}", args.model, args.device) for t, tpl in tools.items()
    }
    if args.dry_run:
        for t, c in commands.items():
            print(f"{t}: {shlex.join(c)}")
        return 0
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    counter = {t: 0 for t in tools}
    failures: List[str] = []

    def runner(tool: str):
        def run() -> RunResult:
            counter[tool] += 1
            out = work / f"{tool}{suffix}"
            r = measure_command(commands[tool], out, work / f"{tool}-{counter[tool]}.log", env, args.timeout)
            if r.returncode != 0 or not out.exists():
                last = r.log.strip().splitlines()[-1] if r.log.strip() else "no output"
                failures.append(f"{tool} failed (exit {r.returncode}): {last}")
            return r

        return run

    def progress(tool: str, rnd: int, r: RunResult) -> None:
        what = "warm-up" if rnd == 0 else f"round {rnd}/{args.repeats}"
        print(
            f"{what}: {tool} {fmt(r.to_output_s)} s ({fmt(r.cpu_s)} CPU s), peak {fmt(r.peak_rss_mib)} MiB (exit {r.returncode})",
            file=sys.stderr,
            flush=True,
        )
        if failures:
            raise RuntimeError(failures[0])

    try:
        results = run_alternating({t: runner(t) for t in tools}, args.repeats, args.warmup, progress)
    except RuntimeError as e:
        print(f"bench_inference: {e} (logs in {work})", file=sys.stderr)
        return 1
    summary = {t: tool_summary(rs) for t, rs in results.items()}
    ratios = compare(summary["ours"], summary["taps"]) if "taps" in summary else {}
    acc = accuracy(work / f"ours{suffix}", work / f"taps{suffix}" if "taps" in tools else None, args.label)
    env_info = {**environment(), "ours": our_backend(args.backend, args.device)}
    header = "\n".join(
        [
            "# Inference end to end: unetsegment vs TAPS",
            "",
            f"input: {args.input}; label: {args.label}; model: {args.model or 'bundled'}; "
            f"quality: {args.quality or 'standard'}; "
            f"{args.repeats} alternating rounds after {args.warmup} warm-up",
            "",
            environment_markdown(env_info),
        ]
    )
    text = report(summary, ratios, acc, header)
    print(text)
    payload = {
        "benchmark": "inference",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "commands": {t: c for t, c in commands.items()},
        "environment": env_info,
        "runs": {t: [asdict(r) for r in rs] for t, rs in results.items()},
        "summary": summary,
        "ratios": ratios,
        "targets": {"speedup_min": SPEEDUP_TARGET, "memory_ratio_max": MEMORY_TARGET},
        "accuracy": acc,
    }
    json_path, md_path = write_results("inference", payload, text, args.out_dir, args.tag)
    print(f"\nresults: {json_path} and {md_path}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_all_cases(args: argparse.Namespace, work: Path) -> int:
    """Our tool alone on every PROMISE12 case (one warm-up, then ``--repeats`` runs each): the slowest."""
    from benchmarks.common import SHARED_DATA

    cases = sorted((SHARED_DATA / "promise12").glob("Case*_image.nii.gz"))
    if not cases:
        print(f"bench_inference: no PROMISE12 cases in {SHARED_DATA / 'promise12'}", file=sys.stderr)
        return 1
    template = args.ours_cmd or ours_template(args.model, args.backend, args.quality)
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    out = work / "ours.nii.gz"
    measure_command(build_command(template, cases[0], out, args.model, args.device), out, work / "warmup.log", env)
    rows, raw = [], {}
    for case in cases:
        argv = build_command(template, case, out, args.model, args.device)
        runs = [measure_command(argv, out, work / f"{case.name}.log", env, args.timeout) for _ in range(args.repeats)]
        if any(r.returncode != 0 for r in runs):
            print(f"bench_inference: {case.name} failed: {runs[-1].log.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        best = min(r.to_output_s for r in runs)
        raw[case.name] = [asdict(r) for r in runs]
        rows.append([case.name.replace("_image.nii.gz", ""), best, max(r.peak_rss_mib for r in runs)])
        print(f"{case.name}: {best:.2f} s", file=sys.stderr, flush=True)
    slowest = max(rows, key=lambda r: r[1])
    env_info = {**environment(), "ours": our_backend(args.backend, args.device)}
    text = "\n\n".join(
        [
            "# Every PROMISE12 case end to end: unetsegment alone\n\n"
            f"{len(rows)} cases, the fastest of {args.repeats} run(s) each after one warm-up\n\n"
            + environment_markdown(env_info),
            markdown_table(["case", "to output s (min)", "peak RSS MiB"], rows),
            markdown_table(
                ["slowest case", "s", "target", "verdict"],
                [
                    [
                        slowest[0],
                        slowest[1],
                        f"<= {CASE_SECONDS_TARGET:g}",
                        verdict(slowest[1], CASE_SECONDS_TARGET, False),
                    ]
                ],
            ),
        ]
    )
    print(text)
    payload = {
        "benchmark": "inference-all-promise12",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": env_info,
        "runs": raw,
        "slowest": {"case": slowest[0], "seconds": slowest[1]},
        "targets": {"case_seconds_max": CASE_SECONDS_TARGET},
    }
    json_path, md_path = write_results("inference-all-promise12", payload, text, args.out_dir, args.tag)
    print(f"\nresults: {json_path} and {md_path}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
