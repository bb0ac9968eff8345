"""Batch throughput: cases per minute of ``unetsegment batch``, plain and on Dask with 1 and 2 local workers.

    python benchmarks/bench_batch.py                                   # 8 RUNMC cases of PROMISE12, 3 rounds
    python benchmarks/bench_batch.py --input-dir scans/ --variants plain,dask-2 --repeats 1
    python benchmarks/bench_batch.py --dry-run                         # print the commands

Each variant is the command a user runs, as a fresh process with an empty output folder:

- ``plain``: ``python -m UNetSegmentLib batch IN -o OUT`` (one process, the baseline);
- ``dask-N``: the same with ``--workers N`` (a local cluster of N worker processes; each
  worker's predictor gets ``cores // N`` threads unless ``--threads`` is given).

After one warm-up each the variants alternate. Reported per variant: the wall time of the
whole command (process start to exit: interpreter, cluster, model, every case, summary),
**cases/min** over that time, the steady rate between the first and the last labelmap
written (start-up left out; needs 3 cases or more), the CPU time of the process tree, each
as a ratio to the baseline, the scaling of the largest Dask variant over ``dask-1``
(efficiency = speed-up / extra workers), and the Dice of every labelmap against the
baseline's (min over cases; 1 = the same labelmaps).
"""

from __future__ import annotations

import argparse
import csv
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
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    BUNDLED_MODEL,
    SHARED_DATA,
    environment,
    environment_markdown,
    fmt,
    image_dice,
    markdown_table,
    ratio,
    run_alternating,
    summarize,
    write_results,
)

DEFAULT_CASES = ("Case13", "Case14", "Case16", "Case17", "Case18", "Case19", "Case21", "Case22")


@dataclass
class BatchRun:
    """One batch command: wall time (s) from start to exit, CPU time of the process tree, labelmap times."""

    wall_s: float
    cpu_s: float
    returncode: int
    cases: int
    ok: int
    first_output_s: float
    last_output_s: float
    log: str

    @property
    def cases_per_min(self) -> float:
        return 60.0 * self.ok / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def steady_cases_per_min(self) -> float:
        span = self.last_output_s - self.first_output_s
        return 60.0 * (self.ok - 1) / span if self.ok >= 3 and span > 0 else float("nan")


def parse_variants(text: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    for v in names:
        if v != "plain" and not (v.startswith("dask-") and v[5:].isdigit() and int(v[5:]) >= 1):
            raise argparse.ArgumentTypeError(f"variants are plain or dask-N (N >= 1), not {v!r}")
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"give distinct variants, the first the baseline, not {text!r}")
    return names


def build_command(variant: str, input_dir: Path, output_dir: Path, args: argparse.Namespace) -> List[str]:
    cmd = [sys.executable, "-m", "UNetSegmentLib", "batch", str(input_dir), "-o", str(output_dir)]
    cmd += ["--model", str(args.model), "--quality", args.quality, "--offline", "--progress", "none"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if variant.startswith("dask-"):
        cmd += ["--workers", variant[5:]]
    return cmd


def measure_batch(argv: Sequence[str], output_dir: Path, log_path: Path, timeout_s: float) -> BatchRun:
    """Run one batch command into an empty ``output_dir``; times from just before the process starts.

    CPU time: ``os.wait4``'s usage of the batch process and of the children it waited for
    (its Dask worker processes), so the whole tree.
    """
    shutil.rmtree(output_dir, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(_repo()), os.environ.get("PYTHONPATH")) if p)}
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
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    rows = _summary_rows(output_dir / "summary.csv")
    times = sorted(Path(r["output"]).stat().st_mtime - start_wall for r in rows if r.get("status") == "ok")
    return BatchRun(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        returncode=proc.returncode,
        cases=len(rows),
        ok=len(times),
        first_output_s=times[0] if times else float("nan"),
        last_output_s=times[-1] if times else float("nan"),
        log=log_path.read_text(errors="replace", encoding="utf-8")[-2000:],
    )


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _repo() -> Path:
    return Path(__file__).resolve().parent.parent


def _summary_rows(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def summarise(runs: Dict[str, List[BatchRun]], baseline: str) -> Dict[str, Dict[str, Any]]:
    """Per variant: statistics of wall time, cases/min (whole and steady) and CPU, and ratios to the baseline."""
    out: Dict[str, Dict[str, Any]] = {}
    for name, rs in runs.items():
        out[name] = {
            "wall_s": summarize([r.wall_s for r in rs]),
            "cases_per_min": summarize([r.cases_per_min for r in rs]),
            "steady_cases_per_min": summarize([r.steady_cases_per_min for r in rs]),
            "cpu_s": summarize([r.cpu_s for r in rs]),
        }
    base = out[baseline]
    for s in out.values():
        s["speedup"] = ratio(s["cases_per_min"]["median"], base["cases_per_min"]["median"])
        s["speedup_steady"] = ratio(s["steady_cases_per_min"]["median"], base["steady_cases_per_min"]["median"])
        s["cpu_ratio"] = ratio(s["cpu_s"]["median"], base["cpu_s"]["median"])
    return out


def scaling(summary: Dict[str, Dict[str, Any]]) -> Dict[str, float]:
    """The largest ``dask-N`` against ``dask-1``: speed-up and efficiency (speed-up / N), whole and steady."""
    dask = sorted((int(k[5:]), k) for k in summary if k.startswith("dask-"))
    if len(dask) < 2 or dask[0][0] != 1:
        return {}
    n, top = dask[-1]
    one = summary["dask-1"]
    whole = ratio(summary[top]["cases_per_min"]["median"], one["cases_per_min"]["median"])
    steady = ratio(summary[top]["steady_cases_per_min"]["median"], one["steady_cases_per_min"]["median"])
    return {
        "workers": n,
        "speedup": whole,
        "efficiency": whole / n,
        "speedup_steady": steady,
        "efficiency_steady": steady / n,
    }


def agreement(outputs: Dict[str, Path], baseline: str, cases: Sequence[str]) -> Dict[str, float]:
    """Min over cases of the whole-gland Dice of each variant's labelmap against the baseline's."""
    out = {}
    for name, folder in outputs.items():
        dices = [
            image_dice(folder / f"{c}_segmentation.nrrd", outputs[baseline] / f"{c}_segmentation.nrrd") for c in cases
        ]
        out[name] = min(dices) if dices else float("nan")
    return out


def report(result: Dict[str, Any], header: str) -> str:
    rows = []
    for name, s in result["variants"].items():
        rows.append(
            [
                name + (" (baseline)" if name == result["baseline"] else ""),
                result["threads"].get(name, ""),
                s["wall_s"]["median"],
                s["cases_per_min"]["median"],
                s["steady_cases_per_min"]["median"],
                s["cpu_s"]["median"],
                s["speedup"],
                s["speedup_steady"],
                s["cpu_ratio"],
                result["dice_vs_baseline"].get(name, float("nan")),
            ]
        )
    table = markdown_table(
        [
            "variant",
            "predictor threads",
            "wall s (median)",
            "cases/min",
            "steady cases/min",
            "CPU s (median)",
            "speed-up",
            "speed-up steady",
            "CPU ratio",
            "min Dice vs baseline",
        ],
        rows,
    )
    parts = [header, table]
    sc = result.get("scaling") or {}
    if sc:
        parts.append(
            f"Scaling: dask-{sc['workers']} / dask-1 = {fmt(sc['speedup'])} (efficiency {fmt(sc['efficiency'])}); "
            f"steady {fmt(sc['speedup_steady'])} (efficiency {fmt(sc['efficiency_steady'])})."
        )
    return "\n\n".join(parts)


def predictor_threads(variant: str, threads: Optional[int], cores: int) -> str:
    """What each variant's predictors run with: ``--threads``, else torch's default or the Dask plan."""
    if threads:
        return str(threads)
    if variant == "plain":
        return f"torch default ({cores})"
    return str(max(1, cores // int(variant[5:])))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Cases/minute of unetsegment batch: plain vs Dask local workers.")
    p.add_argument("--input-dir", type=Path, help="a folder of cases (default: --cases from ../shared/data)")
    p.add_argument(
        "--cases",
        default=",".join(DEFAULT_CASES),
        help="PROMISE12 cases of ../shared/data, comma-separated (default: 8 RUNMC cases, 160x160x~20 voxels)",
    )
    p.add_argument("--model", type=Path, default=BUNDLED_MODEL, help="model package folder (default: bundled)")
    p.add_argument("--quality", default="standard", choices=("fast", "standard", "best"))
    p.add_argument("--variants", type=parse_variants, default=["plain", "dask-1", "dask-2"], help="first = baseline")
    p.add_argument("--threads", type=int, help="--threads for every variant (default: each variant's own)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a run is killed")
    p.add_argument("--keep", type=Path, help="keep the inputs, outputs and logs in this folder")
    p.add_argument("--out-dir", type=Path, help="where the JSON and Markdown results go (default benchmarks/results)")
    p.add_argument("--tag", default="", help="added to the result file names")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def _input_folder(args: argparse.Namespace, work: Path) -> Path:
    if args.input_dir is not None:
        return args.input_dir
    folder = work / "input"
    folder.mkdir(parents=True, exist_ok=True)
    for case in args.cases.split(","):
        src = SHARED_DATA / "promise12" / f"{case.strip()}_image.nii.gz"
        if not src.is_file():
            raise SystemExit(f"bench_batch: {src} does not exist (pass --input-dir)")
        link = folder / f"{case.strip()}.nii.gz"
        if not link.exists():
            link.symlink_to(src)
    return folder


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_batch_"))
    work.mkdir(parents=True, exist_ok=True)
    input_dir = _input_folder(args, work)
    outputs = {v: work / f"out-{v}" for v in args.variants}
    commands = {v: build_command(v, input_dir, outputs[v], args) for v in args.variants}
    if args.dry_run:
        for v, c in commands.items():
            print(f"{v}: {shlex.join(c)}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    counter = {v: 0 for v in args.variants}

    def runner(variant: str):
        def run() -> BatchRun:
            counter[variant] += 1
            return measure_batch(
                commands[variant], outputs[variant], work / f"{variant}-{counter[variant]}.log", args.timeout
            )

        return run

    def progress(variant: str, rnd: int, r: BatchRun) -> None:
        what = "warm-up" if rnd == 0 else f"round {rnd}/{args.repeats}"
        print(
            f"{what}: {variant} {r.ok}/{r.cases} cases in {fmt(r.wall_s)} s = {fmt(r.cases_per_min)} cases/min"
            f" ({fmt(r.cpu_s)} CPU s, exit {r.returncode})",
            file=sys.stderr,
            flush=True,
        )
        if r.returncode != 0 or r.ok == 0:
            raise RuntimeError(f"{variant} failed (exit {r.returncode}): {r.log.strip().splitlines()[-1:]}")

    try:
        runs = run_alternating({v: runner(v) for v in args.variants}, args.repeats, args.warmup, progress)
    except RuntimeError as e:
        print(f"bench_batch: {e} (logs in {work})", file=sys.stderr)
        return 1
    baseline = args.variants[0]
    cases = [r["case"] for r in _summary_rows(outputs[baseline] / "summary.csv")]
    env = environment()
    env["instruction_sets"] = env["cpu_isa"]  # from UNetSegmentLib.hardware, as every benchmark records it
    cores = env["cpus_available"]
    env["cores_available"] = cores
    variants = summarise(runs, baseline)
    result = {
        "baseline": baseline,
        "input_dir": str(input_dir),
        "cases": cases,
        "model": str(args.model),
        "quality": args.quality,
        "threads": {v: predictor_threads(v, args.threads, cores) for v in args.variants},
        "commands": {v: shlex.join(c) for v, c in commands.items()},
        "variants": variants,
        "scaling": scaling(variants),
        "dice_vs_baseline": agreement(outputs, baseline, cases),
        "environment": env,
        "runs": {v: [{**asdict(r), "log": r.log[-300:]} for r in rs] for v, rs in runs.items()},
    }
    header = "\n".join(
        [
            "# Batch throughput: plain vs Dask local workers",
            "",
            f"{len(cases)} case(s) from {input_dir}, model {args.model}, quality {args.quality}; "
            f"{args.repeats} round(s) after {args.warmup} warm-up(s), variants alternating.",
            "",
            environment_markdown(env),
        ]
    )
    text = report(result, header)
    print(text)
    json_path, md_path = write_results("batch", result, text, args.out_dir, args.tag)
    print(f"\nresults: {json_path} and {md_path}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
