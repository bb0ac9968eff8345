"""Cross-validate a training recipe by patient, and compare two recipes case by case.

::

    python training/crossval.py run -o runs/cv --folds 4 --config A.yaml [--config B.yaml ...] [--final] [key=value ...]
    python training/crossval.py compare runs/cv/A runs/cv/B [-o comparison.md]
    python training/crossval.py run ... --pack P --parallel 5 --train-only --time-budget-min M   # a lent GPU
    python training/crossval.py archive -o runs/cv DEST        # then, back here:
    python training/crossval.py restore DEST                   # prints the run command that evaluates

``run`` trains, for each fold, the recipe's stages in order: every stage after the first
starts from the last epoch of the stage before it in the same fold (its ``train.init_from``
is rewritten), so a recipe such as the default model's (a first schedule, then fine-tunings)
is cross-validated as a whole. The validation cases of fold ``i`` are ``data.folds=K
data.fold=i`` of the configs (``training.data.registry.assign_fold``: by patient, every fold
mixing the centres); the other patients train. The last stage's last epoch is exported and
evaluated on its fold's patients with ``training/evaluate.py``'s metrics, and the folds'
per-case results are pooled into ``OUT/NAME/`` (``per_case.csv``, ``summary.json``; NAME is
the last stage's config name): every patient is evaluated once, by a model that never
trained on it. That pooled folder is an evaluation folder like any other
(``benchmark.py --eval OUT/NAME``).

Layout: ``OUT/foldI/STAGE/`` (each stage's run), ``OUT/foldI/NAME.model`` and
``OUT/foldI/NAME.eval``, ``OUT/cache`` (preprocessed volumes, shared by all runs). A stage
whose run folder has finished (``summary.json``) is not trained again, and one that stopped
part-way resumes from its ``last.pt``: an interrupted run restarts with the same command,
and two recipes that share their first stages (the default model 1.2.0 and 1.3.0) share
those runs when given the same ``-o``. A run folder trained with another config is refused.
``--fold`` runs chosen folds only (several machines); the pooling happens once every fold
has its evaluation.

``--final`` then trains the same recipe once more on every labelled case (no case held out;
``data.folds=0`` and every source's ``use_for_validation: false``) and exports its last epoch
as ``OUT/final/NAME.model``: the model to ship once the cross-validation has chosen the
recipe. ``--final-only`` trains that model alone (e.g. on another machine). Each stage's
training time and device are added to ``OUT/stage_times.json`` (the device minutes of
issue 20).

Training elsewhere (issue 20: a GPU lent for minutes, without the datasets, SimpleITK or
MONAI): ``--pack FILE`` trains from a data pack (``training/pack.py``; same patients per fold
as from the sources), ``--parallel N`` trains up to N chains at once (each fold's stages in
order, and the final model's) as subprocesses with their own logs in ``OUT/logs/``,
``--train-only`` trains without exporting or evaluating, and ``--time-budget-min M`` gives
each chain M minutes, shared by its stages in proportion to their patches (epochs x
iterations x batch; each stage's ``train.time_limit_min`` becomes the smaller of its own and
its share). ``archive -o OUT DEST`` then packs the chains' run folders (the last stage's
``last.pt`` without its optimizer state, the configs, logs and ``stage_times.json``) into at
most 8 files of at most 16 MiB, and ``restore DEST`` unpacks them into ``OUT`` on this
machine, where the same ``run`` command (``OUT/cv_run.json`` records it) skips the
finished training and evaluates and pools. ``training/gpu_cv.sh`` is the device call.

``average A B -o DIR`` is the paired test of an ensemble: per fold, A's and B's fold models
averaged (a two-member package), scored on the fold's held-out patients and pooled into
``DIR/average``; ``compare A DIR/average`` then pairs one model with the average of two (B: the
recipe again with ``train.init_seed=1``, the same folds and other weights).

``compare`` pairs two pooled evaluations by patient and structure: mean of each, the mean
difference (B - A) with a bootstrap 95% interval over patients, and how many patients each
one wins. Both must have evaluated the same patients.

``ensemble`` packs the fold models ``OUT/foldI/NAME.model`` of a finished cross-validation
(given by its pooled folder ``OUT/NAME``) into one ensemble package, whose softmax outputs
inference averages (``training/export.py --ensemble``)::

    python training/crossval.py ensemble runs/cv/NAME -o PKG [--final] [--members-per-quality ...] [--version X]

Member ``foldI`` records its fold, run folder and held-out patients; ``--final`` puts the
final model (``OUT/final/NAME.model``, every labelled case) first, as member ``final``, so
that with the default ``--members-per-quality`` (``fast=1,standard=1,best=all``) the default
quality runs the final model alone and ``best`` averages it with the folds. Every patient
of the cross-validation trained some member, so the ensemble is compared with the single
model on other patients (``evaluate.py`` on both, then ``compare``), not on the folds'.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from training.config import ConfigError, ExperimentConfig, load_config  # noqa: E402
from UNetSegmentLib.cli import QUALITIES  # noqa: E402

log = logging.getLogger("unetsegment.crossval")

#: compared metrics: name, whether higher is better
COMPARED = (
    ("dice", True),
    ("hd95_mm", False),
    ("asd_mm", False),
    ("slices_missed", False),
)


def fold_dir(out: Path, fold: int) -> Path:
    return Path(out) / f"fold{fold}"


def stage_configs(
    configs: Sequence[str], overrides: Sequence[str], out: Path, folds: int, fold: int
) -> List[ExperimentConfig]:
    """The recipe's stage configs for one fold: its split, its run folders, each stage from the one before."""
    stages: List[ExperimentConfig] = []
    names: List[str] = []
    for i, path in enumerate(configs):
        base = load_config(path, overrides)
        if base.name in names:
            raise ConfigError(f"two stages of the recipe are both named {base.name!r}; give each its own name")
        names.append(base.name)
        extra = [
            f"data.folds={folds}",
            f"data.fold={fold}",
            f"output_dir={fold_dir(out, fold) / base.name}",
            f"name={base.name}-fold{fold}",
        ]
        if not base.data.cache_dir:
            extra.append(f"data.cache_dir={Path(out) / 'cache'}")  # the folds preprocess each patient once
        if i > 0:
            extra.append(f"train.init_from={Path(stages[-1].output_dir) / 'last.pt'}")
        elif base.train.init_from and fold == 0:
            log.warning(
                "the first stage (%s) starts from %s: if those weights saw any of these patients, the folds "
                "are not held out (train.init_from= starts from random weights; or make that training a stage)",
                path,
                base.train.init_from,
            )
        stages.append(load_config(path, [*overrides, *extra]))
    return stages


def final_configs(configs: Sequence[str], overrides: Sequence[str], out: Path) -> List[ExperimentConfig]:
    """The recipe's stage configs for the final model: every labelled case trains, none is held out."""
    stages: List[ExperimentConfig] = []
    names: List[str] = []
    for path in configs:
        base = load_config(path, overrides)
        if base.name in names:
            raise ConfigError(f"two stages of the recipe are both named {base.name!r}; give each its own name")
        names.append(base.name)
        extra = [
            "data.folds=0",
            "data.fold=0",
            f"output_dir={final_dir(out) / base.name}",
            f"name={base.name}-final",
            *(f"data.sources.{j}.use_for_validation=false" for j in range(len(base.data.sources))),
        ]
        if not base.data.cache_dir:
            extra.append(f"data.cache_dir={Path(out) / 'cache'}")
        if stages:
            extra.append(f"train.init_from={Path(stages[-1].output_dir) / 'last.pt'}")
        stages.append(load_config(path, [*overrides, *extra]))
    return stages


def final_dir(out: Path) -> Path:
    return Path(out) / "final"


@contextmanager
def _locked(path: Path, wait_s: float = 30.0):
    """Hold ``PATH.lock`` (made exclusively) while the body runs: the chains of a parallel run share files."""
    lock = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            if time.monotonic() > deadline:  # left by a killed process
                log.warning("taking over the stale lock %s", lock)
                break
            time.sleep(0.05)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def record_time(out: Path, key: str, seconds: float, device: str) -> None:
    """Add one stage's training time (minutes) and device to ``OUT/stage_times.json``."""
    path = Path(out) / "stage_times.json"
    with _locked(path):
        times = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        times[key] = {"minutes": round(seconds / 60, 2), "device": device}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(times, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def stage_patches(cfg: ExperimentConfig) -> int:
    """Patches a stage trains on when no time limit stops it first."""
    t = cfg.train
    return t.epochs * t.iterations_per_epoch * t.batch_size


def with_budget(stages: Sequence[ExperimentConfig], budget_min: float) -> List[ExperimentConfig]:
    """The stages of a chain sharing ``budget_min`` minutes of training in proportion to their patches.

    Each stage's ``train.time_limit_min`` becomes the smaller of its own (if any) and its share;
    ``budget_min`` <= 0 leaves the stages as they are.
    """
    if budget_min <= 0:
        return list(stages)
    total = sum(stage_patches(s) for s in stages)
    out = []
    for s in stages:
        limit = round(budget_min * stage_patches(s) / total, 3)
        if s.train.time_limit_min > 0:
            limit = min(limit, s.train.time_limit_min)
        out.append(replace(s, train=replace(s.train, time_limit_min=limit)))
    return out


def _pack_reader(pack: Optional[str]):
    if not pack:
        return None
    from training.pack import open_pack

    return open_pack(pack).reader


def _device_name(cfg: ExperimentConfig) -> str:
    import torch

    from UNetSegmentLib.runtime.torch_runtime import resolve_device

    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def train_stages(
    stages: Sequence[ExperimentConfig], out: Path, where: str, train: bool = True, pack: Optional[str] = None
) -> None:
    """Train each stage unless finished (resuming a stopped one); a folder trained with another config is refused.

    ``pack``: train from this data pack (``training/pack.py``) instead of the sources.
    """
    from training.trainer import run

    for cfg in stages:
        run_dir = Path(cfg.output_dir)
        if (run_dir / "config.yaml").is_file() and not same_recipe(_saved_config(run_dir), cfg):
            raise ConfigError(
                f"{run_dir} was trained with another config than this recipe's {cfg.name} now gives; "
                "remove the folder or choose another --output"
            )
        if (run_dir / "summary.json").is_file():
            log.info("%s: %s already trained (%s)", where, cfg.name, run_dir)
            continue
        if not train:
            raise FileNotFoundError(f"{where}: {run_dir} has not finished training (no summary.json)")
        t0 = time.monotonic()
        run(cfg, resume=(run_dir / "last.pt").is_file(), pack=pack)
        record_time(out, f"{where}/{run_dir.name}", time.monotonic() - t0, _device_name(cfg))


def run_final(
    configs: Sequence[str],
    overrides: Sequence[str],
    out: Path,
    train: bool = True,
    pack: Optional[str] = None,
    budget_min: float = 0.0,
    export: bool = True,
) -> Optional[Path]:
    """Train the recipe on every labelled case (unless done) and export its last epoch; the package folder.

    ``export=False``: train only (None). ``pack``, ``budget_min``: as :func:`run_fold`'s.
    """
    from training.data.registry import config_cases

    stages = with_budget(final_configs(configs, overrides, out), budget_min)
    cases = [c for c in config_cases(stages[0], _pack_reader(pack)) if c.label]
    held = [c.case_id for c in cases if c.split != "train"]
    if held:
        raise ConfigError(f"the final model would not train on {len(held)} labelled cases ({', '.join(held[:5])})")
    log.info("final model: %d labelled cases, none held out", len(cases))
    train_stages(stages, out, "final", train, pack)
    if not export:
        return None
    from training.export import export_run

    return export_run(
        Path(stages[-1].output_dir), final_dir(out) / f"{recipe_name(configs, overrides)}.model", checkpoint="last.pt"
    ).path


def check_same_split(stages: Sequence[ExperimentConfig], reader=None) -> List[str]:
    """The fold's validation patients, the same in every stage (else the later stages would train on them).

    ``reader``: read the sources with it (a data pack's, ``training.pack.Pack.reader``).
    """
    from training.data.registry import config_cases

    splits = []
    for cfg in stages:
        cases = config_cases(cfg, reader)
        splits.append(sorted(c.case_id for c in cases if c.split == "validation" and c.label))
    for cfg, split in zip(stages[1:], splits[1:]):
        if split != splits[0]:
            raise ConfigError(
                f"stage {cfg.name} holds out other patients than {stages[0].name} in this fold "
                "(different data sources or train.seed); the stages of a recipe must share them"
            )
    if not splits[0]:
        raise ConfigError(f"fold {stages[0].data.fold} holds out no labelled patient")
    return splits[0]


def same_recipe(a: ExperimentConfig, b: ExperimentConfig) -> bool:
    """Equal configs, but for ``train.time_limit_min``: a resource limit (a device's budget, which a rerun
    there may change); how far each stage got is in its log.csv and summary.json."""

    def unlimited(c: ExperimentConfig) -> ExperimentConfig:
        return replace(c, train=replace(c.train, time_limit_min=0.0))

    return unlimited(a) == unlimited(b)


def _saved_config(run_dir: Path) -> ExperimentConfig:
    import yaml

    from training.config import from_dict

    return from_dict(ExperimentConfig, yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))


def run_fold(
    configs: Sequence[str],
    overrides: Sequence[str],
    out: Path,
    folds: int,
    fold: int,
    device: str = "auto",
    quality: str = "standard",
    train: bool = True,
    pack: Optional[str] = None,
    budget_min: float = 0.0,
    evaluate_fold: bool = True,
) -> Optional[Path]:
    """Train the recipe on one fold (unless done), export the last epoch, evaluate it; the evaluation folder.

    ``pack``: train from this data pack; ``budget_min``: the chain's minutes (:func:`with_budget`);
    ``evaluate_fold=False``: train only (None), no export and no evaluation (they need SimpleITK).
    """
    stages = with_budget(stage_configs(configs, overrides, out, folds, fold), budget_min)
    held_out = check_same_split(stages, _pack_reader(pack))
    log.info("fold %d of %d: %d held-out patients: %s", fold, folds, len(held_out), ", ".join(held_out))
    train_stages(stages, out, f"fold{fold}", train, pack)
    if not evaluate_fold:
        return None
    from training.evaluate import cases_from_data, evaluate
    from training.export import export_run

    last_run = Path(stages[-1].output_dir)
    recipe = recipe_name(configs, overrides)
    package = export_run(last_run, fold_dir(out, fold) / f"{recipe}.model", checkpoint="last.pt")
    cases = cases_from_data(last_run, "validation")
    eval_dir = fold_dir(out, fold) / f"{recipe}.eval"
    description = f"fold {fold} of {folds}, held out by {', '.join(str(c) for c in configs)}"
    evaluate(package, cases, eval_dir, device=device, quality=quality, description=description)
    return eval_dir


class ChainFailed(RuntimeError):
    """A chain of a parallel run failed (its log says why)."""


def chain_jobs(args: argparse.Namespace, chosen: Sequence[int]) -> List[Tuple[str, List[str]]]:
    """``(name, command line)`` of each chain of a parallel run: this script training that chain alone."""
    base = [sys.executable, str(Path(__file__).resolve()), "run", "-o", str(args.output), "--folds", str(args.folds)]
    base += ["--train-only", "--chain"]
    for c in args.config:
        base += ["--config", str(c)]
    if args.pack:
        base += ["--pack", str(args.pack)]
    if args.time_budget_min:
        base += ["--time-budget-min", repr(args.time_budget_min)]
    jobs = [] if args.final_only else [(f"fold{f}", [*base, "--fold", str(f), *args.overrides]) for f in chosen]
    if args.final or args.final_only:
        jobs.append(("final", [*base, "--final-only", *args.overrides]))
    return jobs


def run_parallel(jobs: Sequence[Tuple[str, List[str]]], out: Path, parallel: int, poll_s: float = 1.0) -> None:
    """Run the chains as subprocesses, up to ``parallel`` at once, each logging to ``OUT/logs/NAME.log``.

    The others go on when one fails; then :class:`ChainFailed` names it with the end of its log.
    Stopped (SIGTERM, Ctrl-C), it stops the chains (each keeps its ``last.pt`` of the last epoch).
    """
    import signal

    logs = Path(out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    waiting = list(jobs)
    running: Dict[str, Tuple[Any, Any, float]] = {}
    failed: List[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        previous = None
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                name, cmd = waiting.pop(0)
                f = open(logs / f"{name}.log", "a", encoding="utf-8")
                log.info("%s: started, log %s", name, logs / f"{name}.log")
                running[name] = (
                    subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env),
                    f,
                    time.monotonic(),
                )
            time.sleep(poll_s)
            for name, (proc, f, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                f.close()
                del running[name]
                minutes = (time.monotonic() - t0) / 60
                if rc:
                    failed.append(name)
                    log.error(
                        "%s: failed (exit code %d) after %.1f min; see %s", name, rc, minutes, logs / f"{name}.log"
                    )
                else:
                    log.info("%s: trained in %.1f min", name, minutes)
    finally:
        for proc, _f, _t in running.values():
            proc.terminate()
        for proc, f, _ in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            f.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if failed:
        ends = []
        for name in failed:
            tail = (logs / f"{name}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            ends.append(f"{name}: " + " | ".join(tail))
        raise ChainFailed(f"{len(failed)} chain(s) failed: " + "; ".join(ends))


def evaluate_command(args: argparse.Namespace) -> List[str]:
    """The ``run`` command that evaluates (here, on the CPU) what ``args`` trained: no pack, chains or --train-only."""
    cmd = ["python", "training/crossval.py", "run", "-o", str(args.output), "--folds", str(args.folds)]
    for c in args.config:
        cmd += ["--config", str(c)]
    for f in args.fold or []:
        cmd += ["--fold", str(f)]
    if args.final:
        cmd.append("--final")
    if args.final_only:
        cmd.append("--final-only")
    if args.time_budget_min:
        cmd += ["--time-budget-min", repr(args.time_budget_min)]
    return cmd + list(args.overrides)


def write_run_record(args: argparse.Namespace) -> None:
    """``OUT/cv_run.json``: this run's arguments, and the command that evaluates its training here."""
    import shlex

    record = {
        "folds": args.folds,
        "configs": [str(c) for c in args.config],
        "overrides": list(args.overrides),
        "fold": args.fold,
        "final": args.final,
        "final_only": args.final_only,
        "time_budget_min": args.time_budget_min,
        "pack": str(args.pack) if args.pack else None,
        "parallel": args.parallel,
        "train_only": args.train_only,
        "evaluate": shlex.join(evaluate_command(args)),
    }
    path = Path(args.output) / "cv_run.json"
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("evaluate") == record["evaluate"]:
        return  # the same run again (evaluating here what a device trained): keep how it was trained
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def recipe_name(configs: Sequence[str], overrides: Sequence[str]) -> str:
    """A recipe is named after its last stage (its folders: foldN/NAME.model, foldN/NAME.eval, NAME/)."""
    return load_config(configs[-1], overrides).name


def pool(out: Path, folds: int, configs: Sequence[str], overrides: Sequence[str]) -> Optional[Path]:
    """Pool the folds' evaluations into OUT/RECIPE/ (per_case.csv, summary.json); None while a fold is missing."""
    from training.evaluate import read_per_case, summarize, write_per_case

    recipe = recipe_name(configs, overrides)
    evals = [fold_dir(out, f) / f"{recipe}.eval" for f in range(folds)]
    missing = [f for f in range(folds) if not (evals[f] / "per_case.csv").is_file()]
    if missing:
        log.warning("not pooled yet: fold(s) %s have no evaluation", ", ".join(map(str, missing)))
        return None
    rows: List[Dict[str, Any]] = []
    fold_of: Dict[str, int] = {}
    per_fold = []
    for f in range(folds):
        fold_rows = read_per_case(evals[f] / "per_case.csv")
        for r in fold_rows:
            if fold_of.setdefault(r["case_id"], f) != f:
                raise ValueError(f"patient {r['case_id']} is held out by folds {fold_of[r['case_id']]} and {f}")
        summary = json.loads((evals[f] / "summary.json").read_text(encoding="utf-8"))
        per_fold.append({"fold": f, "cases": summary["cases"], "model": summary.get("model", {})})
        rows.extend(fold_rows)
    pooled = Path(out) / recipe
    pooled.mkdir(parents=True, exist_ok=True)
    write_per_case(rows, pooled / "per_case.csv")
    summary = summarize(rows)
    summary["data"] = f"{folds}-fold cross-validation by patient of {' then '.join(str(c) for c in configs)}"
    summary["crossval"] = {
        "folds": folds,
        "recipe": [str(c) for c in configs],
        "overrides": list(overrides),
        "fold_of_case": fold_of,
        "per_fold": per_fold,
    }
    summary["targets"] = targets(rows)
    (pooled / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_report(pooled, summary)
    return pooled


#: the project's accuracy targets for the whole gland (issue 20): every PROMISE12 patient scored once
#: by a model that never saw it, and ProstateX-0000 against the Guerbet23 reference
TARGET_MEAN_DICE = 0.89
TARGET_LOWEST_DICE = 0.80
TARGET_PROSTATEX_DICE = 0.85


def _gland(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r for r in rows if r["structure"] in ("prostate", "gland")]


def targets(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each whole-gland target the pooled rows can answer: what, the value, the bound, whether it is met."""
    from UNetSegmentLib.labels import PLAUSIBLE_GLAND_ML

    out: List[Dict[str, Any]] = []
    gland = [r for r in _gland(rows) if np.isfinite(r["dice"])]
    p12 = [r for r in gland if r.get("source") == "promise12"]
    if p12:
        mean = float(np.mean([r["dice"] for r in p12]))
        low = min(p12, key=lambda r: r["dice"])
        out.append(
            {
                "target": f"PROMISE12 mean Dice ({len(p12)} patients)",
                "value": mean,
                "bound": f">= {TARGET_MEAN_DICE}",
                "met": mean >= TARGET_MEAN_DICE,
            }
        )
        out.append(
            {
                "target": f"PROMISE12 lowest patient ({low['case_id']})",
                "value": float(low["dice"]),
                "bound": f">= {TARGET_LOWEST_DICE}",
                "met": low["dice"] >= TARGET_LOWEST_DICE,
            }
        )
    for r in gland:
        if "ProstateX-0000" in str(r["case_id"]) and "Guerbet23" in str(r.get("label", "")):
            out.append(
                {
                    "target": "ProstateX-0000 vs Guerbet23",
                    "value": float(r["dice"]),
                    "bound": f">= {TARGET_PROSTATEX_DICE}",
                    "met": r["dice"] >= TARGET_PROSTATEX_DICE,
                }
            )
    lo, hi = PLAUSIBLE_GLAND_ML
    all_gland = _gland(rows)
    checks = (
        (f"volume within {lo:g}-{hi:g} mL", "volume_pred_ml", lambda v: lo <= v <= hi),
        ("one connected component", "components", lambda v: v == 1),
        ("every labelled slice found", "slices_missed", lambda v: v == 0),
    )
    for name, column, ok in checks:
        if all_gland and all(column in r for r in all_gland):
            failing = [r["case_id"] for r in all_gland if not ok(r[column])]
            out.append(
                {
                    "target": f"{name}: every patient",
                    "value": f"{len(all_gland) - len(failing)}/{len(all_gland)}",
                    "bound": "all",
                    "met": not failing,
                    "failing": failing,
                }
            )
    return out


def write_report(pooled: Path, summary: Dict[str, Any]) -> Path:
    """``pooled/crossval.md``: the targets, the table per centre, the plausibility checks, published results."""
    import datetime

    from training.benchmark import _per_group_section, _plausibility_section, _published_section, load_eval

    e = load_eval(pooled)
    cv = summary["crossval"]
    lines = [
        f"# Cross-validation of {' then '.join(f'`{c}`' for c in cv['recipe'])}",
        "",
        f"{cv['folds']} folds by patient; every patient is scored once, by the fold model that never trained on it "
        f"({summary['n_cases']} patients). Written by `training/crossval.py` on {datetime.date.today().isoformat()}"
        + (f"; overrides: `{' '.join(cv['overrides'])}`" if cv["overrides"] else "")
        + ".",
        "",
        "## Targets",
        "",
        "| target | value | bound | met |",
        "|---|---|---|---|",
    ]
    for t in summary["targets"]:
        value = f"{t['value']:.3f}" if isinstance(t["value"], float) else t["value"]
        fails = f" (fails: {', '.join(t['failing'])})" if t.get("failing") else ""
        lines.append(f"| {t['target']} | {value}{fails} | {t['bound']} | {'yes' if t['met'] else 'no'} |")
    lines += ["", *_per_group_section([e]), "", *_plausibility_section([e]), ""]
    lines += _published_section([e])[0] + [""]
    report = pooled / "crossval.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


# --- comparing two recipes ---------------------------------------------------


def paired(a: Sequence[float], b: Sequence[float], higher_is_better: bool, n_boot: int = 10000, seed: int = 0):
    """Paired statistics of ``b - a`` over the cases where both are finite."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    d = y - x
    out: Dict[str, Any] = {"n": int(d.size)}
    if not d.size:
        return out
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    better = d > 0 if higher_is_better else d < 0
    worse = d < 0 if higher_is_better else d > 0
    out.update(
        mean_a=float(x.mean()),
        mean_b=float(y.mean()),
        diff=float(d.mean()),
        diff_sd=float(d.std(ddof=1)) if d.size > 1 else 0.0,
        ci95=[float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))],
        b_better=int(better.sum()),
        a_better=int(worse.sum()),
        ties=int(d.size - better.sum() - worse.sum()),
    )
    return out


def compare(a_dir: Path, b_dir: Path) -> Dict[str, Dict[str, Any]]:
    """``{structure: {metric: paired(...)}}`` of two evaluation folders over the same patients."""
    from training.evaluate import read_per_case

    a = {(r["case_id"], r["structure"]): r for r in read_per_case(Path(a_dir) / "per_case.csv")}
    b = {(r["case_id"], r["structure"]): r for r in read_per_case(Path(b_dir) / "per_case.csv")}
    if set(a) != set(b):
        only_a = sorted({k[0] for k in set(a) - set(b)})
        only_b = sorted({k[0] for k in set(b) - set(a)})
        raise ValueError(
            f"{a_dir} and {b_dir} did not evaluate the same patients "
            f"(only in the first: {only_a[:5] or 'none'}; only in the second: {only_b[:5] or 'none'})"
        )
    result: Dict[str, Dict[str, Any]] = {}
    for structure in sorted({k[1] for k in a}):
        keys = sorted(k for k in a if k[1] == structure)
        result[structure] = {
            m: paired([a[k][m] for k in keys], [b[k][m] for k in keys], higher) for m, higher in COMPARED
        }
    return result


def comparison_table(result: Dict[str, Dict[str, Any]], a_name: str, b_name: str) -> str:
    lines = [
        f"A = {a_name}, B = {b_name}; differences are B - A, paired by patient, with a bootstrap 95% interval.",
        "",
        "| structure | metric | n | A mean | B mean | B - A | 95% interval | B better / A better / tied |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for structure, metrics in result.items():
        for m, s in metrics.items():
            if not s.get("n"):
                lines.append(f"| {structure} | {m} | 0 | - | - | - | - | - |")
                continue
            fmt = "{:.3f}" if m == "dice" else "{:.2f}"
            lo, hi = s["ci95"]
            lines.append(
                f"| {structure} | {m} | {s['n']} | {fmt.format(s['mean_a'])} | {fmt.format(s['mean_b'])} | "
                f"{s['diff']:+.4f} | {lo:+.4f} to {hi:+.4f} | {s['b_better']} / {s['a_better']} / {s['ties']} |"
            )
    return "\n".join(lines) + "\n"


# --- the fold models as one ensemble -----------------------------------------


def pack_ensemble(
    pooled: Path,
    output: Path,
    final: bool = False,
    members_per_quality: Optional[str] = None,
    model_id: Optional[str] = None,
    version: Optional[str] = None,
) -> Path:
    """Write the ensemble package of the fold models of the cross-validation pooled in ``pooled``
    (``OUT/NAME``; with ``final``, the final model first); the package folder."""
    from training.export import (
        DEFAULT_MEMBERS_PER_QUALITY,
        export_ensemble,
        metrics_from_evaluation,
        parse_members_per_quality,
        source_package,
    )

    pooled = Path(pooled)
    summary_path = pooled / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{pooled} has no summary.json: give the pooled folder OUT/NAME of a cross-validation")
    crossval = json.loads(summary_path.read_text(encoding="utf-8")).get("crossval")
    if not crossval:
        raise ValueError(f"{summary_path} is not a cross-validation's pooled summary (no 'crossval')")
    out, name, folds = pooled.parent, pooled.name, int(crossval["folds"])
    places = [("final", final_dir(out), {"final": True})] if final else []
    places += [(f"fold{f}", fold_dir(out, f), {"fold": f, "folds": folds}) for f in range(folds)]
    members = []
    for member, folder, extra in places:
        if not (folder / f"{name}.model").is_dir():
            raise FileNotFoundError(f"{folder / f'{name}.model'} does not exist: has {member} been trained?")
        package, provenance = source_package(folder / f"{name}.model")
        provenance.update(extra)
        if (folder / name).is_dir():
            provenance["run"] = str(folder / name)
        members.append((member, package, provenance))
    per_quality = parse_members_per_quality(members_per_quality or DEFAULT_MEMBERS_PER_QUALITY, len(members))
    training = {
        "crossval": {
            "folds": folds,
            "recipe": crossval.get("recipe", []),
            "overrides": crossval.get("overrides", []),
            "evaluation": str(pooled),
            # each patient by the fold model that did not train on it: the members, not the ensemble
            "members_held_out": metrics_from_evaluation(pooled),
        }
    }
    package = export_ensemble(output, members, per_quality, model_id, version, training=training)
    return package.path


def average_folds(a: Path, b: Path, output: Path, quality: str = "standard", device: str = "auto") -> Path:
    """The paired test of an ensemble: per fold, the average of cross-validation ``a``'s and ``b``'s
    fold models (``OUT/NAME`` pooled folders over the same folds; e.g. the recipe and the recipe with
    ``train.init_seed=1``), scored on that fold's held-out patients and pooled into ``output`` like a
    cross-validation, so ``compare a output`` pairs one model with the average of two."""
    from training.evaluate import cases_from_data, evaluate, read_per_case, summarize, write_per_case
    from training.export import export_ensemble, source_package

    summaries = []
    for pooled in (Path(a), Path(b)):
        path = pooled / "summary.json"
        cv = json.loads(path.read_text(encoding="utf-8")).get("crossval") if path.is_file() else None
        if not cv:
            raise ValueError(f"{pooled} is not a cross-validation's pooled folder (OUT/NAME with summary.json)")
        summaries.append(cv)
    if summaries[0]["fold_of_case"] != summaries[1]["fold_of_case"]:
        raise ValueError(f"{a} and {b} hold out other patients in their folds (train.seed or data differ)")
    folds = int(summaries[0]["folds"])
    output = Path(output)
    rows: List[Dict[str, Any]] = []
    for f in range(folds):
        members, runs = [], []
        for tag, pooled in (("a", Path(a)), ("b", Path(b))):
            out, name = pooled.parent, pooled.name
            package, provenance = source_package(fold_dir(out, f) / f"{name}.model")
            members.append((tag, package, {**provenance, "fold": f, "folds": folds}))
            runs.append(fold_dir(out, f) / name)
        pair = export_ensemble(fold_dir(output, f) / "average.model", members, {q: 2 for q in QUALITIES})
        cases = cases_from_data(runs[0], "validation")
        held = sorted(c.case_id for c in cases)
        if held != sorted(c.case_id for c in cases_from_data(runs[1], "validation")):
            raise ValueError(f"fold {f}: {runs[0]} and {runs[1]} hold out other patients")
        eval_dir = fold_dir(output, f) / "average.eval"
        if not (eval_dir / "per_case.csv").is_file():
            description = f"fold {f} of {folds}: the average of {a} and {b}'s fold models"
            evaluate(pair, cases, eval_dir, device=device, quality=quality, description=description)
        rows.extend(read_per_case(eval_dir / "per_case.csv"))
    pooled = output / "average"
    pooled.mkdir(parents=True, exist_ok=True)
    write_per_case(rows, pooled / "per_case.csv")
    summary = summarize(rows)
    summary["data"] = f"{folds}-fold cross-validation: per fold, the average of {a} and {b}'s models"
    summary["crossval"] = {**summaries[0], "averaged": [str(a), str(b)], "quality": quality}
    summary["targets"] = targets(rows)
    (pooled / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_report(pooled, summary)
    return pooled


# --- command line -----------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Cross-validate a training recipe by patient, or compare two.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and evaluate every fold, then pool the folds' results")
    r.add_argument("-o", "--output", required=True, type=Path, help="folder for the folds and the pooled results")
    r.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    r.add_argument(
        "--config",
        action="append",
        required=True,
        help="a stage of the recipe (YAML); repeat for stages that start from the one before",
    )
    r.add_argument("--fold", type=int, action="append", help="run this fold only (repeatable; default: all)")
    r.add_argument("--device", default="auto", help="evaluation device: auto, cpu or cuda")
    r.add_argument("--quality", default="standard", choices=QUALITIES, help="evaluation --quality (default standard)")
    r.add_argument("--eval-only", action="store_true", help="do not train: evaluate and pool finished folds")
    r.add_argument("--final", action="store_true", help="then train the recipe on every labelled case (OUT/final)")
    r.add_argument("--final-only", action="store_true", help="train only the final model, no folds")
    r.add_argument("--pack", help="train from this data pack (training/pack.py) instead of the sources")
    r.add_argument(
        "--parallel", type=int, default=1, help="train up to N chains (folds, final) at once, as subprocesses"
    )
    r.add_argument("--train-only", action="store_true", help="train; no export, evaluation or pooling")
    r.add_argument(
        "--time-budget-min",
        type=float,
        default=0.0,
        help="minutes of training per chain, shared by its stages in proportion to their patches",
    )
    r.add_argument("--chain", action="store_true", help=argparse.SUPPRESS)  # one chain of a parallel run
    r.add_argument("overrides", nargs="*", help="dotted overrides for every stage, e.g. train.epochs=5")
    a = sub.add_parser("archive", help="pack a run's training results into at most 8 files of 16 MiB")
    a.add_argument("-o", "--output", required=True, type=Path, help="the run's output folder (as given to run)")
    a.add_argument("dest", type=Path, help="folder for the archive (e.g. a lent device's $OUT)")
    a.add_argument("--max-files", type=int, default=8, help="at most this many files (default 8)")
    s = sub.add_parser("restore", help="unpack an archive into the output folder it came from")
    s.add_argument("src", type=Path, help="the folder holding cv-manifest.json and the archive files")
    s.add_argument("--force", action="store_true", help="overwrite files already there")
    c = sub.add_parser("compare", help="two pooled evaluations side by side, paired by patient")
    c.add_argument("a", type=Path, help="evaluation folder A (per_case.csv), e.g. a cross-validation's output")
    c.add_argument("b", type=Path, help="evaluation folder B, over the same patients")
    c.add_argument("-o", "--output", type=Path, help="also write the table (Markdown) and the numbers (.json) here")
    v = sub.add_parser("average", help="per fold, the average of two cross-validations' models, pooled")
    v.add_argument("a", type=Path, help="pooled folder OUT/NAME of one cross-validation")
    v.add_argument("b", type=Path, help="pooled folder of another over the same folds (e.g. train.init_seed=1)")
    v.add_argument("-o", "--output", required=True, type=Path, help="folder for the pairs and the pooled results")
    v.add_argument("--quality", default="standard", choices=QUALITIES, help="evaluation --quality (default standard)")
    v.add_argument("--device", default="auto", help="evaluation device: auto, cpu or cuda")
    e = sub.add_parser("ensemble", help="pack the fold models into one ensemble package")
    e.add_argument("pooled", type=Path, help="the cross-validation's pooled folder, OUT/NAME")
    e.add_argument("-o", "--output", required=True, type=Path, help="the ensemble package folder to write")
    e.add_argument("--final", action="store_true", help="the final model (OUT/final/NAME.model) as the first member")
    e.add_argument(
        "--members-per-quality",
        help="members (the first N) per --quality, e.g. fast=1,standard=1,best=all (the default), or all",
    )
    e.add_argument("--id", help="model id (default: the recipe's model id + '-ensemble')")
    e.add_argument("--version", help="package version (default: the fold models')")
    return p.parse_args(argv)


def restore_and_report(src: Path, force: bool) -> int:
    """``restore``: unpack, say what each stage reached, and print the command that evaluates it here."""
    from training.cv_archive import restore

    out, manifest = restore(src, force)
    for key, state in manifest["stages"].items():
        status = "finished" if state["finished"] else "stopped part-way"
        print(f"{key}: {status} after {state.get('epochs')} epochs, checkpoint {state.get('checkpoint', 'none')}")
    record = out / "cv_run.json"
    if record.is_file():
        print("evaluate and pool here with:\n  " + json.loads(record.read_text(encoding="utf-8"))["evaluate"])
    print(f"restored into {out}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    errors: List[type] = [ConfigError, ValueError, OSError, ChainFailed]
    try:
        from UNetSegmentLib.io import ImageReadError
        from UNetSegmentLib.model_package import ModelPackageError

        errors += [ModelPackageError, ImageReadError]
    except ImportError:  # no SimpleITK (training from a data pack): no image is read here
        pass
    try:
        if args.command == "average":
            pooled = average_folds(args.a, args.b, args.output, args.quality, args.device)
            print(f"pooled results of the averages in {pooled}; compare with: crossval.py compare {args.a} {pooled}")
            return 0
        if args.command == "ensemble":
            path = pack_ensemble(args.pooled, args.output, args.final, args.members_per_quality, args.id, args.version)
            from UNetSegmentLib.model_package import ModelPackage

            print(f"ensemble package: {path}: {ModelPackage.load(path, verify=False).info.members_summary()}")
            return 0
        if args.command == "compare":
            result = compare(args.a, args.b)
            table = comparison_table(result, str(args.a), str(args.b))
            print(table, end="")
            if args.output:
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(table, encoding="utf-8")
                args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            return 0
        if args.command == "archive":
            from training.cv_archive import archive

            for p in archive(args.output, args.dest, args.max_files):
                print(f"{p} ({p.stat().st_size / 2**20:.1f} MiB)")
            return 0
        if args.command == "restore":
            return restore_and_report(args.src, args.force)
        if args.folds < 2:
            raise ConfigError(f"--folds must be at least 2, not {args.folds}")
        chosen = args.fold if args.fold is not None else list(range(args.folds))
        bad = [f for f in chosen if not 0 <= f < args.folds]
        if bad:
            raise ConfigError(f"--fold {bad[0]} is not between 0 and {args.folds - 1}")
        if args.train_only and args.eval_only:
            raise ConfigError("--train-only and --eval-only exclude each other")
        if not args.chain:
            write_run_record(args)
        pooled = final = None
        if args.parallel > 1 and not args.eval_only:
            # the parent reads the sources once (synthetic cases are written before the chains start)
            reader = _pack_reader(args.pack)
            if not args.final_only:
                for f in chosen:
                    check_same_split(stage_configs(args.config, args.overrides, args.output, args.folds, f), reader)
            run_parallel(chain_jobs(args, chosen), args.output, args.parallel)
        if not args.final_only:
            for f in chosen:
                run_fold(
                    args.config,
                    args.overrides,
                    args.output,
                    args.folds,
                    f,
                    args.device,
                    args.quality,
                    not args.eval_only,
                    args.pack,
                    args.time_budget_min,
                    not args.train_only,
                )
            if not args.train_only:
                pooled = pool(args.output, args.folds, args.config, args.overrides)
        if args.final or args.final_only:
            final = run_final(
                args.config,
                args.overrides,
                args.output,
                not args.eval_only,
                args.pack,
                args.time_budget_min,
                not args.train_only,
            )
    except tuple(errors) as e:  # as evaluate.py: one line
        print(f"crossval.py: {e}", file=sys.stderr)
        return 1
    if pooled is not None:
        summary = json.loads((pooled / "summary.json").read_text(encoding="utf-8"))
        for name, s in summary["structures"].items():
            d = s["dice"]
            if d["mean"] is not None:  # None where no case had a finite Dice
                print(f"{name}: Dice {d['mean']:.3f} +/- {d['std']:.3f} over {s['n']} patients")
        print(f"pooled results in {pooled}")
    if final is not None:
        print(f"final model (every labelled case) in {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
