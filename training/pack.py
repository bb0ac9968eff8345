"""A data pack: every case of a recipe on the model grid, in one file, for training without the sources.

::

    python training/pack.py -o .gpudata/promise12.pack --config A.yaml [--config B.yaml ...] [key=value ...]
    python training/pack.py --check .gpudata/promise12.pack --config A.yaml ...   # does it serve these configs?

A machine lent for training (a GPU) may have neither the datasets nor SimpleITK and MONAI.
``pack`` preprocesses every labelled case of the configs' sources once, exactly as training
does (``training.dataset.load_volume``, whose cache it shares), and writes the volumes and
each case's metadata (id, source, centre, split, label map, files) into one file. Training
from it (``train.py --pack``, ``crossval.py run --pack``) reads the cases from the pack instead
of the sources, in the readers' order, so the validation split and the cross-validation folds
are those of the sources (``training.data.registry.read_all`` assigns them the same way), and
needs neither SimpleITK nor MONAI.

Format: a zip without compression of ``index.json`` (format, preprocessing, structures, the
image quantisation, each source's reader settings and cases, each volume's shape and members)
and, per case, ``volumes/ID.image.xz`` and ``volumes/ID.target.xz``: xz streams of the
little-endian arrays, byte-shuffled. Targets (uint8) are kept exactly. Images are kept exactly
with ``--lossless`` (float32), else quantised to a step of 2^-bits (default 2^-10) from the
volume's minimum as uint16: the minimum (the sampler's padding value) is kept exactly and
every voxel is within half a step (2^-11 = 0.00049 by default) of the float32 that
``load_volume`` gives. On z-scored intensities that is below the rounding of the network's own
bf16 input for every |value| >= 0.125, 200 times smaller than the augmentation's intensity
shift (+-0.1) and far below the images' noise; it makes PROMISE12's 36 cases fit the device
machine's 64 MiB (float32 does not compress below ~105 MB).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import lzma
import os
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from training.config import ConfigError, DatasetSource, ExperimentConfig, load_config  # noqa: E402
from training.data import Case  # noqa: E402

FORMAT = "unetsegment-data-pack"
VERSION = 1
INDEX = "index.json"
#: the fields of a source that decide how its cases are split or weighed, not which cases its reader
#: returns: a pack serves sources that differ in these only (any other field, also one added later, counts)
SPLIT_FIELDS = ("validation", "use_for_validation", "weight")
DEFAULT_BITS = 10


def source_key(src: DatasetSource) -> str:
    """A source's reader settings as canonical JSON: two sources with the same key read the same cases."""
    d = {k: v for k, v in dataclasses.asdict(src).items() if k not in SPLIT_FIELDS}
    d["label_map"] = {str(k): v for k, v in sorted(d["label_map"].items())}
    return json.dumps(d, sort_keys=True)


def _case_to_dict(c: Case) -> Dict[str, Any]:
    d = dataclasses.asdict(c)
    d["label_map"] = [[int(k), v] for k, v in c.label_map.items()]  # JSON keys would become text
    return d


def _case_from_dict(d: Dict[str, Any]) -> Case:
    return Case(**{**d, "label_map": {int(k): v for k, v in d["label_map"]}})


def _shuffled(a: np.ndarray) -> bytes:
    """Little-endian bytes grouped by significance (all first bytes, then all second ...): xz compresses them better."""
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return a.view(np.uint8).reshape(-1, a.itemsize).T.tobytes()


def _unshuffled(raw: bytes, dtype: str, shape: Sequence[int]) -> np.ndarray:
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    b = np.frombuffer(raw, np.uint8).reshape(dt.itemsize, n).T
    return np.ascontiguousarray(b).view(dt).reshape(tuple(shape)).astype(dt.newbyteorder("="))


def quantize(image: np.ndarray, step: float) -> Tuple[np.ndarray, float]:
    """``(q uint16, lo)`` with ``lo + q * step`` within ``step / 2`` of ``image``; ``lo`` is the image's minimum."""
    lo = float(image.min())
    q = np.round((image.astype(np.float64) - lo) / step)
    if q.max() > np.iinfo(np.uint16).max:
        raise ValueError(
            f"intensities span {float(image.max()) - lo:.1f}: more than 65536 steps of {step}; "
            "use fewer --bits or --lossless"
        )
    return q.astype(np.uint16), lo


def dequantize(q: np.ndarray, lo: float, step: float) -> np.ndarray:
    return (lo + q.astype(np.float64) * step).astype(np.float32)


def _encode_volume(v, step: float, preset: int) -> Tuple[Dict[str, Any], bytes, bytes]:
    image = np.asarray(v.image, dtype=np.float32)
    entry: Dict[str, Any] = {"shape": list(image.shape), "kind": v.kind}
    if step > 0:
        q, lo = quantize(image, step)
        entry.update(dtype="<u2", lo=lo, step=step)
        err = float(np.abs(dequantize(q, lo, step) - image).max())
        entry["max_abs_error"] = err
        image_bytes = _shuffled(q)
    else:
        entry.update(dtype="<f4", lo=None, step=0.0, max_abs_error=0.0)
        image_bytes = _shuffled(image)
    target = np.asarray(v.target, dtype=np.uint8)
    if target.shape != image.shape:
        raise ValueError(f"case {v.case.case_id}: target {target.shape} and image {image.shape} differ")
    return entry, lzma.compress(image_bytes, preset=preset), lzma.compress(target.tobytes(), preset=preset)


def _preprocessing(cfg: ExperimentConfig) -> Dict[str, Any]:
    from training.trainer import preprocessing_spec

    # through JSON, as the index stores it (tuples become lists)
    return json.loads(json.dumps({"spec": preprocessing_spec(cfg).to_dict(), "structures": list(cfg.model.structures)}))


def write_pack(
    path: Union[str, Path],
    configs: Sequence[ExperimentConfig],
    cache_dir: Union[str, Path],
    bits: Optional[int] = DEFAULT_BITS,
    preset: int = 6,
    log=print,
) -> Dict[str, Any]:
    """Preprocess every labelled case of the configs' sources (cached) and write the pack; its index.

    ``bits``: images quantised to a step of 2^-bits; None keeps them exactly (float32).
    The configs must share their preprocessing and structures (the stages of one recipe do).
    """
    from training.data.registry import read_source
    from training.dataset import load_volume
    from training.trainer import preprocessing_spec

    if not configs:
        raise ValueError("a pack needs at least one config")
    prep = _preprocessing(configs[0])
    for cfg in configs[1:]:
        if _preprocessing(cfg) != prep:
            raise ConfigError(
                f"{cfg.name} preprocesses differently from {configs[0].name} (model.spacing_xyz_mm, "
                "clip_percentiles or structures): one pack serves one preprocessing"
            )
    spec = preprocessing_spec(configs[0])
    structures = configs[0].model.structures
    sources: Dict[str, DatasetSource] = {}
    for cfg in configs:
        for src in cfg.data.sources:
            sources.setdefault(source_key(src), src)
    step = 0.0 if bits is None else 2.0**-bits
    index: Dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        **prep,
        "image_step": step,
        "sources": [],
        "volumes": {},
    }
    wanted = []
    seen: Dict[str, str] = {}
    for key, src in sources.items():
        cases = read_source(src)
        index["sources"].append({"key": json.loads(key), "cases": [_case_to_dict(c) for c in cases]})
        for c in cases:
            if c.case_id in seen:
                raise ValueError(f"case id {c.case_id} is in two sources ({seen[c.case_id]} and {src.path})")
            seen[c.case_id] = src.path
            if c.label and c.split != "test":  # the cases training can use (an official test split never trains)
                wanted.append(c)
    cache = Path(cache_dir)
    log(f"preprocessing {len(wanted)} labelled cases (cache {cache})")
    volumes = [load_volume(c, spec, structures, cache) for c in wanted]
    log(f"compressing {len(volumes)} volumes (images {'float32, exact' if step == 0 else f'step 2^-{bits}'})")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # lzma releases the GIL
        encoded = list(pool.map(lambda v: _encode_volume(v, step, preset), volumes))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for v, (entry, image_xz, target_xz) in zip(volumes, encoded):
            cid = v.case.case_id
            entry.update(image=f"volumes/{cid}.image.xz", target=f"volumes/{cid}.target.xz")
            index["volumes"][cid] = entry
            z.writestr(entry["image"], image_xz)
            z.writestr(entry["target"], target_xz)
        z.writestr(INDEX, json.dumps(index, indent=1))
    os.replace(tmp, path)
    index["bytes"] = path.stat().st_size
    return index


class Pack:
    """A pack opened for training: its cases per source (:meth:`reader`) and its volumes (:meth:`volume`)."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"data pack {self.path} does not exist (make it with training/pack.py)")
        try:
            with zipfile.ZipFile(self.path) as z:
                self.index = json.loads(z.read(INDEX))
        except (zipfile.BadZipFile, KeyError, ValueError) as e:
            raise ValueError(f"{self.path} is not a data pack ({e})") from None
        if self.index.get("format") != FORMAT or self.index.get("version") != VERSION:
            raise ValueError(f"{self.path} is not a version {VERSION} data pack")
        self._sources = {json.dumps(s["key"], sort_keys=True): s["cases"] for s in self.index["sources"]}
        self._volumes: Dict[str, Tuple[np.ndarray, np.ndarray, str]] = {}
        self._sha256: Optional[str] = None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._sha256 = h.hexdigest()
        return self._sha256

    @property
    def max_abs_error(self) -> float:
        return max((v["max_abs_error"] for v in self.index["volumes"].values()), default=0.0)

    def reader(self, src: DatasetSource) -> List[Case]:
        """The source's cases as its reader returned them when the pack was made (``read_all``'s ``reader``)."""
        cases = self._sources.get(source_key(src))
        if cases is None:
            raise ValueError(
                f"data pack {self.path} does not hold the {src.format} source at {src.path!r} "
                f"(it holds {', '.join(s['key']['format'] + ' ' + repr(s['key']['path']) for s in self.index['sources'])}); "
                "make the pack again with this config"
            )
        return [_case_from_dict(c) for c in cases]

    def check(self, cfg: ExperimentConfig) -> None:
        """Refuse a config this pack was not made for (other preprocessing, structures or sources)."""
        prep = _preprocessing(cfg)
        if prep != {"spec": self.index["spec"], "structures": self.index["structures"]}:
            raise ConfigError(
                f"data pack {self.path} was made for other preprocessing or structures than {cfg.name}'s "
                f"({self.index['spec']}, {self.index['structures']}); make the pack again with this config"
            )
        for src in cfg.data.sources:
            self.reader(src)

    def volume(self, case: Case):
        """The case on the model grid, as ``load_volume`` gives it (images within the pack's step); decoded once."""
        from training.dataset import Volume

        if case.case_id not in self._volumes:
            entry = self.index["volumes"].get(case.case_id)
            if entry is None:
                raise ValueError(f"data pack {self.path} has no volume of case {case.case_id}")
            with zipfile.ZipFile(self.path) as z:
                image_raw = lzma.decompress(z.read(entry["image"]))
                target_raw = lzma.decompress(z.read(entry["target"]))
            image = _unshuffled(image_raw, entry["dtype"], entry["shape"])
            if entry["step"]:
                image = dequantize(image, entry["lo"], entry["step"])
            target = np.frombuffer(target_raw, np.uint8).reshape(entry["shape"]).copy()
            self._volumes[case.case_id] = (image, target, entry["kind"])
        image, target, kind = self._volumes[case.case_id]
        return Volume(case, image, target, kind)

    def record(self) -> Dict[str, Any]:
        """What a run folder notes about the pack it trained from (``pack.json``)."""
        return {
            "pack": str(self.path),
            "sha256": self.sha256,
            "image_step": self.index["image_step"],
            "max_abs_error": self.max_abs_error,
            "volumes": len(self.index["volumes"]),
        }


_OPEN: Dict[Tuple[str, int, int], Pack] = {}


def open_pack(path: Union[str, Path]) -> Pack:
    """The pack at ``path``, opened once per process (the stages of a chain share its decoded volumes)."""
    p = Path(path).resolve()
    st = p.stat() if p.exists() else None
    key = (str(p), st.st_mtime_ns if st else 0, st.st_size if st else 0)
    if key not in _OPEN:
        _OPEN.clear()
        _OPEN[key] = Pack(path)
    return _OPEN[key]


def summary(index: Dict[str, Any]) -> str:
    vols = index["volumes"].values()
    per_source = ", ".join(f"{len(s['cases'])} {s['key']['format']}" for s in index["sources"])
    err = max((v["max_abs_error"] for v in vols), default=0.0)
    size = index.get("bytes")
    return (
        f"{len(index['volumes'])} volumes ({sum(int(np.prod(v['shape'])) for v in vols):,} voxels) from {per_source} cases"
        + (f"; {size / 2**20:.1f} MiB" if size else "")
        + (
            "; images exact (float32)"
            if not index["image_step"]
            else f"; image step {index['image_step']:g}, largest error {err:.2g}"
        )
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Pack every case of a recipe on the model grid into one file.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", type=Path, help="the pack to write (e.g. .gpudata/promise12.pack)")
    where.add_argument("--check", type=Path, metavar="PACK", help="only check that PACK serves the configs")
    p.add_argument("--config", action="append", required=True, help="a config (YAML); repeat for a recipe's stages")
    p.add_argument(
        "--cache", type=Path, help="preprocessing cache (default: the config's data.cache_dir, else runs/cache)"
    )
    q = p.add_mutually_exclusive_group()
    q.add_argument("--bits", type=int, default=DEFAULT_BITS, help=f"image step 2^-BITS (default {DEFAULT_BITS})")
    q.add_argument("--lossless", action="store_true", help="keep the images exactly (float32; about 2.5x larger)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every config, e.g. data.sources.0.path=/data/x")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        configs = [load_config(c, args.overrides) for c in args.config]
        if args.check:
            pack = Pack(args.check)
            for cfg in configs:
                pack.check(cfg)
            print(f"{args.check}: {summary(pack.index)}; serves {', '.join(c.name for c in configs)}")
            return 0
        cache = args.cache or Path(configs[0].data.cache_dir or "runs/cache")
        index = write_pack(args.output, configs, cache, None if args.lossless else args.bits)
    except (ConfigError, ValueError, OSError) as e:
        print(f"pack.py: {e}", file=sys.stderr)
        return 1
    print(f"{args.output}: {summary(index)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
