"""Experiment configs: commented YAML parsed into frozen dataclasses.

Unknown or misspelt keys are errors, never silently ignored. Command-line
overrides use dotted keys: ``train.epochs=5 data.cache_dir=/tmp/c``; the index one past a
list's end appends: ``data.sources.2={format: prostatex, path: ../shared/data/prostatex}``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid."""


@dataclass(frozen=True)
class DatasetSource:
    """One dataset to read. ``format``: nci_isbi | msd | promise12 | prostatex | pairs | synthetic."""

    format: str
    path: str = ""
    #: for ``pairs``: glob patterns of images and labels; the label's name is
    #: the image's with ``image_suffix`` replaced by ``label_suffix``
    image_suffix: str = "_image"
    label_suffix: str = "_label"
    #: label value in the files -> structure name, for ``pairs`` (e.g. {1: prostate})
    label_map: Dict[int, str] = field(default_factory=dict)
    #: cases of this source used only for validation (ids), or "official"
    validation: List[str] = field(default_factory=list)
    #: synthetic: number of cases and seed
    num_cases: int = 0
    seed: int = 0
    #: false: every case of this source trains (none is held out for validation)
    use_for_validation: bool = True
    #: how often training draws a patch from each case of this source, relative to a case of
    #: weight 1 (e.g. 3: one 3 T case counts as three); 0: never trained on, but still dealt to a
    #: cross-validation fold and scored there (a recipe without it stays paired with one with it)
    weight: float = 1.0
    #: for ``prostatex``: which reference label of each patient (a file stem under ``labels/``,
    #: e.g. ``wholegland_AI_Guerbet23``); empty = the first whole-gland reference found
    reference: str = ""


@dataclass(frozen=True)
class DataConfig:
    sources: List[DatasetSource] = field(default_factory=list)
    #: cache of preprocessed volumes (model grid); empty = <output>/cache
    cache_dir: str = ""
    #: fraction of training patches centred on a labelled voxel
    foreground_fraction: float = 0.67
    #: validation cases chosen per group (centre) when a source names none
    validation_per_group: int = 0
    #: k-fold cross-validation by patient (0 = off, else >= 2): the validation cases are fold
    #: ``fold`` (0 .. folds-1) of the labelled cases, dealt out per source and group (centre)
    #: in a seeded order, so every fold mixes the centres; ``validation_per_group`` is then
    #: not used, and cases of an official test split stay test. See training/crossval.py.
    folds: int = 0
    fold: int = 0


@dataclass(frozen=True)
class ModelConfig:
    id: str = "prostate-model"
    version: str = "0.1.0"
    name: str = "Prostate segmentation"
    #: output structures in label order: [prostate] or [peripheral_zone, transition_zone]
    structures: List[str] = field(default_factory=lambda: ["prostate"])
    base_channels: int = 8
    pool_sizes: List[List[int]] = field(default_factory=lambda: [[1, 2, 2], [2, 2, 2], [2, 2, 2]])
    norm: str = "batch"
    padding: str = "same"
    spacing_xyz_mm: List[float] = field(default_factory=lambda: [1.0, 1.0, 3.0])
    patch_size_zyx: List[int] = field(default_factory=lambda: [20, 128, 128])
    clip_percentiles: List[float] = field(default_factory=lambda: [0.5, 99.5])


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    rotate_deg: float = 15.0
    scale: float = 0.15
    flip_x: bool = True
    elastic_prob: float = 0.0
    gamma_prob: float = 0.3
    noise_prob: float = 0.15
    intensity_prob: float = 0.3
    low_resolution_prob: float = 0.15
    blur_prob: float = 0.1
    #: true: the DataLoader only cuts patches and the augmentation runs on whole batches on the
    #: training device (``training/device_augment.py``; a GPU's, not the CPU workers')
    on_device: bool = False
    #: what differs between centres (issue 20; 0 = off): a smooth multiplicative bias field (log
    #: amplitude up to ``bias_field_strength``), a coil profile (signal falling off from one side,
    #: by up to ``coil_strength``), contrast about the mean (factor in ``contrast_range``), and thick
    #: slices (averaged over up to ``through_plane_factor`` slices)
    bias_field_prob: float = 0.0
    bias_field_strength: float = 0.5
    coil_prob: float = 0.0
    coil_strength: float = 0.6
    contrast_prob: float = 0.0
    contrast_range: List[float] = field(default_factory=lambda: [0.75, 1.25])
    through_plane_prob: float = 0.0
    through_plane_factor: float = 3.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    iterations_per_epoch: int = 50
    batch_size: int = 2
    learning_rate: float = 0.01
    weight_decay: float = 3e-5
    #: poly learning-rate decay exponent (nnU-Net uses 0.9)
    poly_power: float = 0.9
    #: validate every N epochs (always after the last)
    validate_every: int = 5
    seed: int = 0
    #: seed of the initial weights, the patches drawn and their augmentation; -1: ``seed``. Only
    #: ``seed`` chooses the validation cases and the folds, so ``init_seed=1`` trains a second
    #: initialisation on the same split (the ensemble's paired test in a cross-validation)
    init_seed: int = -1
    #: auto | float32 | bfloat16 (bf16 autocast on CPUs with native bf16 and on GPUs)
    precision: str = "auto"
    device: str = "auto"
    num_threads: int = 0
    num_workers: int = 0
    #: stop after this many minutes of training (0 = no limit); the best model is kept
    time_limit_min: float = 0.0
    #: start from these weights (fine-tuning): a model package folder (e.g. the bundled default
    #: model's) or a training checkpoint (.pt); the architecture must match ``model``. The optimizer, learning-rate
    #: schedule and epochs start afresh. "" = random initialisation. ``--resume`` takes precedence.
    init_from: str = ""
    #: slice terms added to Dice + cross-entropy (0 = off; see training/losses.py): per z-slice of a
    #: patch, binary cross-entropy of the largest foreground probability against whether the label
    #: has the gland there. ``slice_presence_weight`` weighs the labelled slices (missed base/apex
    #: slices), ``slice_absence_weight`` the others (gland predicted past the labelled extent)
    slice_presence_weight: float = 0.0
    slice_absence_weight: float = 0.0


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    output_dir: str = "runs/experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, List, Sequence):
        (item,) = get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        return tuple(value)
    if origin in (dict, Dict):
        kt, vt = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(kt, k, where): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            v = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return v
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    return value


def from_dict(cls: Type[T], d: Dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in d.items()}
    return cls(**kwargs)


def _apply_override(d: Dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not key=value (e.g. train.epochs=5)")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    parts = key.strip().split(".")
    node: Any = d
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            # the index one past the end appends (data.sources.2={format: prostatex, ...})
            if not p.isdigit() or int(p) > len(node) or (int(p) == len(node) and not last):
                raise ConfigError(f"override {override!r}: {p} is not an index of that list")
            if last and int(p) == len(node):
                node.append(value)
            elif last:
                node[int(p)] = value
            else:
                node = node[int(p)]
        elif isinstance(node, dict):
            if last:
                node[p] = value
            else:
                node = node.setdefault(p, {})
        else:
            raise ConfigError(f"override {override!r}: {'.'.join(parts[:i])} is not a section")


def load_config(path: Optional[Union[str, Path]], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML config (or defaults when ``path`` is None) and apply ``key=value`` overrides."""
    d: Dict[str, Any] = {}
    if path is not None:
        try:
            d = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path} is not valid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
    for o in overrides:
        _apply_override(d, o)
    cfg = from_dict(ExperimentConfig, d)
    _validate(cfg)
    return cfg


def _validate(cfg: ExperimentConfig) -> None:
    m, t = cfg.model, cfg.train
    if len(m.patch_size_zyx) != 3 or len(m.spacing_xyz_mm) != 3:
        raise ConfigError("model.patch_size_zyx and model.spacing_xyz_mm need three values")
    div = [1, 1, 1]
    for p in m.pool_sizes:
        div = [a * b for a, b in zip(div, p)]
    if any(s % d for s, d in zip(m.patch_size_zyx, div)):
        raise ConfigError(f"model.patch_size_zyx {m.patch_size_zyx} must be a multiple of {div} (the pooling)")
    if t.epochs < 1 or t.iterations_per_epoch < 1 or t.batch_size < 1:
        raise ConfigError("train.epochs, train.iterations_per_epoch and train.batch_size must be at least 1")
    if t.slice_presence_weight < 0 or t.slice_absence_weight < 0:
        raise ConfigError("train.slice_presence_weight and train.slice_absence_weight must be >= 0")
    a = cfg.augment
    probs = [a.gamma_prob, a.noise_prob, a.intensity_prob, a.low_resolution_prob, a.blur_prob, a.elastic_prob]
    probs += [a.bias_field_prob, a.coil_prob, a.contrast_prob, a.through_plane_prob]
    if any(not 0 <= p <= 1 for p in probs):
        raise ConfigError("augment: every *_prob must be between 0 and 1")
    if a.on_device and a.elastic_prob > 0:
        raise ConfigError(
            "augment.elastic_prob: the elastic deformation runs on the CPU only; not with augment.on_device"
        )
    if len(a.contrast_range) != 2 or not 0 < a.contrast_range[0] <= a.contrast_range[1]:
        raise ConfigError(f"augment.contrast_range must be two factors 0 < low <= high, not {a.contrast_range}")
    if a.through_plane_factor < 1 or not 0 <= a.coil_strength < 1 or a.bias_field_strength < 0:
        raise ConfigError("augment: through_plane_factor >= 1, 0 <= coil_strength < 1, bias_field_strength >= 0")
    if not m.structures:
        raise ConfigError("model.structures must name at least one structure")
    d = cfg.data
    bad = [i for i, s in enumerate(d.sources) if not s.weight >= 0]
    if bad:
        raise ConfigError(f"data.sources.{bad[0]}.weight must be 0 or more, not {d.sources[bad[0]].weight}")
    if d.sources and sum(s.weight for s in d.sources) <= 0:
        raise ConfigError("data.sources: every source has weight 0; nothing would train")
    if d.folds == 1 or d.folds < 0:
        raise ConfigError(f"data.folds must be 0 (no cross-validation) or at least 2, not {d.folds}")
    if not 0 <= d.fold < max(d.folds, 1):
        raise ConfigError(f"data.fold must be between 0 and {max(d.folds - 1, 0)} (data.folds={d.folds}), not {d.fold}")
