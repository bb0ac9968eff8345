"""A cross-validation's training results in a few files, and back (``crossval.py archive`` / ``restore``).

A lent device returns at most 8 files of at most 16 MiB. ``archive`` writes, from a
``crossval.py run`` output folder, one ``cv-CHAIN.tar.gz`` per chain (``fold0`` ...,
``final``) holding its stages' run folders (config, split, logs, summary, ``pack.json``)
and the ``last.pt`` of its latest stage: without the optimizer state and random-number
state once that stage has finished (evaluation and export need only the weights), whole
when it stopped part-way (then training can resume from it). Where that is more than comes
back (64 MiB together), the weights alone travel, and then, if need be, rounded to float16
(a base-16 network: 18 MiB of float32 per model); ``restore`` makes them float32 again, and
the manifest says which (``checkpoint``: resumable, weights, weights (float16)). ``cv-meta.tar.gz`` holds
``stage_times.json``, ``cv_run.json`` and ``logs/``, and ``cv-manifest.json`` each file's
sha256 and each stage's state. ``restore`` checks the files and unpacks them into the
output folder they came from (the run folders' configs name it), so that ``crossval.py run``
with the same arguments (``cv_run.json``) skips the finished training and evaluates.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

MANIFEST = "cv-manifest.json"
META = "cv-meta.tar.gz"
#: the small files of a stage's run folder that travel (not best.pt, not TensorBoard's copy of log.csv)
RUN_FILES = ("config.yaml", "summary.json", "split.csv", "log.csv", "versions.json", "pack.json")
META_FILES = ("stage_times.json", "cv_run.json")
MAX_FILES = 8
MAX_MIB = 16.0
MAX_TOTAL_MIB = 64.0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def chains(out: Path) -> List[Path]:
    """The chain folders of a cross-validation output (``fold0`` ..., ``final``) that hold a stage."""
    found = [d for d in Path(out).iterdir() if d.is_dir() and (d.name.startswith("fold") or d.name == "final")]
    found = [d for d in found if stage_dirs(d)]
    return sorted(found, key=lambda d: (d.name == "final", len(d.name), d.name))


def stage_dirs(chain: Path) -> List[Path]:
    return sorted(d for d in chain.iterdir() if d.is_dir() and (d / "config.yaml").is_file())


def latest_checkpoint(chain: Path) -> Optional[Path]:
    """The ``last.pt`` written last in the chain: its latest stage's (stages run one after another)."""
    found = [d / "last.pt" for d in stage_dirs(chain) if (d / "last.pt").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


#: how a chain's latest checkpoint travels, from the most faithful to the smallest
WHOLE, WEIGHTS, WEIGHTS_F16 = "resumable", "weights", "weights (float16)"


def _tensor_bytes(obj: Any) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def slim_state(state: Dict[str, Any], float16: bool = False) -> Dict[str, Any]:
    """A checkpoint without its optimizer and random-number states (the weights, epoch, scores and config);
    ``float16``: its float32 weights rounded to float16 (where they fit), half the bytes."""
    import torch

    slim = {k: v for k, v in state.items() if k not in ("optimizer", "rng")}
    slim["slim"] = True  # training cannot resume from it
    if float16:
        fits = {
            k: v.dtype == torch.float32
            and (v.numel() == 0 or float(v.abs().max()) < 6.5e4)
            and bool(v.isfinite().all())
            for k, v in state["model"].items()
        }
        slim["model"] = {k: v.half() if fits[k] else v for k, v in state["model"].items()}
        slim["weights_float16"] = sorted(k for k, f in fits.items() if f)
    return slim


def stage_state(run_dir: Path) -> Dict[str, Any]:
    """Whether a stage finished, and how far it got (epochs, from summary.json or log.csv)."""
    state: Dict[str, Any] = {"finished": (run_dir / "summary.json").is_file()}
    if state["finished"]:
        state["epochs"] = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("epochs")
    elif (run_dir / "log.csv").is_file():
        lines = (run_dir / "log.csv").read_text(encoding="utf-8").splitlines()[1:]
        state["epochs"] = max((int(line.split(",")[0]) for line in lines if line), default=0)
    return state


def _plan(found: List[Path], groups: List[List[Path]], max_mib: float, max_total_mib: float):
    """How each chain's latest checkpoint travels: ``{chain: (path, mode, state)}``, the most faithful that fits.

    First a finished stage's weights (float32) and a stopped stage's whole checkpoint (resumable);
    then weights alone everywhere; then weights rounded to float16 (a base-16 network's five
    models are 91 MiB in float32, over the 64 MiB that come back).
    """
    import torch

    loaded = {}
    for chain in found:
        ckpt = latest_checkpoint(chain)
        if ckpt is not None:
            loaded[chain] = (ckpt, torch.load(ckpt, map_location="cpu", weights_only=False))

    def small(chain: Path) -> int:
        return sum((d / f).stat().st_size for d in stage_dirs(chain) for f in RUN_FILES if (d / f).is_file())

    for level in range(3):
        plan, size = {}, {}
        for chain in found:
            size[chain] = small(chain) + 64 * 1024
            if chain not in loaded:
                continue
            ckpt, state = loaded[chain]
            finished = (ckpt.parent / "summary.json").is_file()
            mode = WHOLE if level == 0 and not finished else WEIGHTS if level < 2 else WEIGHTS_F16
            plan[chain] = (ckpt, mode, state)
            size[chain] += ckpt.stat().st_size if mode == WHOLE else _tensor_bytes(slim_state(state, level == 2))
        per_file = max(sum(size[c] for c in g) for g in groups)
        if per_file <= max_mib * 2**20 and sum(size.values()) <= (max_total_mib - 1) * 2**20:
            return plan
    raise ValueError(
        f"the chains' weights do not fit in files of {max_mib:g} MiB, {max_total_mib:g} MiB together, "
        "even as float16: archive fewer chains (crossval.py run --fold) or ask for more room"
    )


def archive(
    out: Path, dest: Path, max_files: int = MAX_FILES, max_mib: float = MAX_MIB, max_total_mib: float = MAX_TOTAL_MIB
) -> List[Path]:
    """Write the archive of ``out`` into ``dest`` (at most ``max_files`` files of ``max_mib``, ``max_total_mib``
    together); the files written."""
    import torch

    out, dest = Path(out), Path(dest)
    found = chains(out)
    if not found:
        raise FileNotFoundError(f"{out} holds no trained stage (foldN/STAGE or final/STAGE with config.yaml)")
    slots = max_files - 2  # the meta archive and the manifest
    groups = [found[i::slots] for i in range(min(slots, len(found)))]
    plan = _plan(found, groups, max_mib, max_total_mib)
    dest.mkdir(parents=True, exist_ok=True)
    manifest: Dict[str, Any] = {"output": str(out), "files": {}, "stages": {}}
    written: List[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for group in groups:
            name = "cv-" + "_".join(c.name for c in group) + ".tar.gz"
            with tarfile.open(dest / name, "w:gz", compresslevel=6) as tar:
                for chain in group:
                    for run_dir in stage_dirs(chain):
                        key = f"{chain.name}/{run_dir.name}"
                        manifest["stages"][key] = stage_state(run_dir)
                        for f in RUN_FILES:
                            if (run_dir / f).is_file():
                                tar.add(run_dir / f, arcname=f"{key}/{f}")
                        if chain not in plan or plan[chain][0].parent != run_dir:
                            continue
                        ckpt, mode, state = plan[chain]
                        if mode == WHOLE:
                            tar.add(ckpt, arcname=f"{key}/last.pt")
                        else:
                            slim = Path(tmp) / f"{chain.name}-{run_dir.name}.pt"
                            torch.save(slim_state(state, mode == WEIGHTS_F16), slim)
                            os.utime(slim, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns))
                            tar.add(slim, arcname=f"{key}/last.pt")
                        manifest["stages"][key]["checkpoint"] = mode
            written.append(dest / name)
        with tarfile.open(dest / META, "w:gz") as tar:
            for f in META_FILES:
                if (out / f).is_file():
                    tar.add(out / f, arcname=f)
            if (out / "logs").is_dir():
                tar.add(out / "logs", arcname="logs")
        written.append(dest / META)
    for p in written:
        manifest["files"][p.name] = _sha256(p)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    written.append(dest / MANIFEST)
    too_big = [f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in written if p.stat().st_size > max_mib * 2**20]
    if too_big or len(written) > max_files:
        raise ValueError(f"the archive is over {max_files} files of {max_mib:g} MiB: {', '.join(too_big) or written}")
    return written


def _members(tar: tarfile.TarFile) -> List[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        p = Path(m.name)
        if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
            raise ValueError(f"{tar.name}: unsafe member {m.name!r}")
    return members


def restore(src: Path, force: bool = False) -> Tuple[Path, Dict[str, Any]]:
    """Check and unpack the archive in ``src`` into the output folder it came from; (that folder, its manifest).

    Refuses to overwrite files already there unless ``force``.
    """
    src = Path(src)
    if not (src / MANIFEST).is_file():
        raise FileNotFoundError(f"{src} has no {MANIFEST} (is it the folder crossval.py archive wrote?)")
    manifest = json.loads((src / MANIFEST).read_text(encoding="utf-8"))
    for name, sha in manifest["files"].items():
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src / name} is missing")
        if _sha256(src / name) != sha:
            raise ValueError(f"{src / name} is damaged (its sha256 is not the manifest's)")
    out = Path(manifest["output"])
    archives = [tarfile.open(src / name, "r:gz") for name in manifest["files"]]
    try:
        clashes = [
            str(out / m.name) for tar in archives for m in _members(tar) if m.isfile() and (out / m.name).exists()
        ]
        if clashes and not force:
            raise FileExistsError(
                f"{len(clashes)} files are already in {out} (e.g. {clashes[0]}); move them away or use --force"
            )
        out.mkdir(parents=True, exist_ok=True)
        for tar in archives:
            members = _members(tar)
            try:
                tar.extractall(out, members=members, filter="data")
            except TypeError:  # Python < 3.11.4: no extraction filters (the members were checked above)
                tar.extractall(out, members=members)
    finally:
        for tar in archives:
            tar.close()
    for key, state in manifest["stages"].items():
        if state.get("checkpoint") == WEIGHTS_F16:
            _float32_again(out / key / "last.pt")
    return out, manifest


def _float32_again(path: Path) -> None:
    """Weights rounded to float16 for the journey, as float32 again (the rounded values: the model evaluated)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    rounded = set(state.get("weights_float16", ()))
    state["model"] = {k: v.float() if k in rounded else v for k, v in state["model"].items()}
    st = path.stat()
    torch.save(state, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
