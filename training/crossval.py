"""Cross-validate a training recipe by patient, and compare two recipes case by case.

::

    python training/crossval.py run -o runs/cv --folds 4 --config A.yaml [--config B.yaml ...] [--final] [key=value ...]
    python training/crossval.py compare runs/cv/A runs/cv/B [-o comparison.md]

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
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

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


def record_time(out: Path, key: str, seconds: float, device: str) -> None:
    """Add one stage's training time (minutes) and device to ``OUT/stage_times.json``."""
    path = Path(out) / "stage_times.json"
    times = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    times[key] = {"minutes": round(seconds / 60, 2), "device": device}
    path.write_text(json.dumps(times, indent=2) + "\n", encoding="utf-8")


def _device_name(cfg: ExperimentConfig) -> str:
    import torch

    from UNetSegmentLib.runtime.torch_runtime import resolve_device

    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def train_stages(stages: Sequence[ExperimentConfig], out: Path, where: str, train: bool = True) -> None:
    """Train each stage unless finished (resuming a stopped one); a folder trained with another config is refused."""
    import time

    from training.trainer import run

    for cfg in stages:
        run_dir = Path(cfg.output_dir)
        if (run_dir / "config.yaml").is_file() and _saved_config(run_dir) != cfg:
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
        run(cfg, resume=(run_dir / "last.pt").is_file())
        record_time(out, f"{where}/{run_dir.name}", time.monotonic() - t0, _device_name(cfg))


def run_final(configs: Sequence[str], overrides: Sequence[str], out: Path, train: bool = True) -> Path:
    """Train the recipe on every labelled case (unless done) and export its last epoch; the package folder."""
    from training.data.registry import config_cases
    from training.export import export_run

    stages = final_configs(configs, overrides, out)
    cases = [c for c in config_cases(stages[0]) if c.label]
    held = [c.case_id for c in cases if c.split != "train"]
    if held:
        raise ConfigError(f"the final model would not train on {len(held)} labelled cases ({', '.join(held[:5])})")
    log.info("final model: %d labelled cases, none held out", len(cases))
    train_stages(stages, out, "final", train)
    return export_run(
        Path(stages[-1].output_dir), final_dir(out) / f"{recipe_name(configs, overrides)}.model", checkpoint="last.pt"
    ).path


def check_same_split(stages: Sequence[ExperimentConfig]) -> List[str]:
    """The fold's validation patients, the same in every stage (else the later stages would train on them)."""
    from training.data.registry import config_cases

    splits = []
    for cfg in stages:
        cases = config_cases(cfg)
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
) -> Path:
    """Train the recipe on one fold (unless done), export the last epoch, evaluate it; the evaluation folder."""
    from training.evaluate import cases_from_data, evaluate
    from training.export import export_run

    stages = stage_configs(configs, overrides, out, folds, fold)
    held_out = check_same_split(stages)
    log.info("fold %d of %d: %d held-out patients: %s", fold, folds, len(held_out), ", ".join(held_out))
    train_stages(stages, out, f"fold{fold}", train)
    last_run = Path(stages[-1].output_dir)
    recipe = recipe_name(configs, overrides)
    package = export_run(last_run, fold_dir(out, fold) / f"{recipe}.model", checkpoint="last.pt")
    cases = cases_from_data(last_run, "validation")
    eval_dir = fold_dir(out, fold) / f"{recipe}.eval"
    description = f"fold {fold} of {folds}, held out by {', '.join(str(c) for c in configs)}"
    evaluate(package, cases, eval_dir, device=device, quality=quality, description=description)
    return eval_dir


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
    (pooled / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return pooled


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
    r.add_argument("overrides", nargs="*", help="dotted overrides for every stage, e.g. train.epochs=5")
    c = sub.add_parser("compare", help="two pooled evaluations side by side, paired by patient")
    c.add_argument("a", type=Path, help="evaluation folder A (per_case.csv), e.g. a cross-validation's output")
    c.add_argument("b", type=Path, help="evaluation folder B, over the same patients")
    c.add_argument("-o", "--output", type=Path, help="also write the table (Markdown) and the numbers (.json) here")
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


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from UNetSegmentLib.io import ImageReadError
    from UNetSegmentLib.model_package import ModelPackageError

    try:
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
        if args.folds < 2:
            raise ConfigError(f"--folds must be at least 2, not {args.folds}")
        chosen = args.fold if args.fold is not None else list(range(args.folds))
        bad = [f for f in chosen if not 0 <= f < args.folds]
        if bad:
            raise ConfigError(f"--fold {bad[0]} is not between 0 and {args.folds - 1}")
        pooled = final = None
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
                )
            pooled = pool(args.output, args.folds, args.config, args.overrides)
        if args.final or args.final_only:
            final = run_final(args.config, args.overrides, args.output, not args.eval_only)
    except (ConfigError, ValueError, OSError, ModelPackageError, ImageReadError) as e:  # as evaluate.py: one line
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
