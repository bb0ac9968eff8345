"""``unetsegment batch --workers N`` / ``--scheduler ADDRESS``: the cases of a batch on Dask distributed.

The client (this process) finds the cases, resolves the model, keeps one case in flight per
worker thread (task slot), shows one progress line and writes the summary CSV. A worker process builds its
predictor on its first case and keeps it for the next ones (:func:`cached_predictor`);
each case writes its labelmap all-or-nothing, then its record (``case_record``), so a rerun
skips the cases already done. A failed case is a row with its exit code and message; a
worker that dies mid-case (killed, out of memory) has its case rerun on another worker by
the scheduler, and a case that kills ``distributed.scheduler.allowed-failures`` + 1
workers is reported as failed.

Threads: every task slot on a host gets ``cores // slots`` threads (``--threads`` overrides),
so that workers x threads never exceeds the cores (see :func:`fair_threads`).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..progress import ProgressReporter
from .common import EXIT_CANCELLED, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, Cancellation, CliError, classify_error

log = logging.getLogger(__name__)

#: ``args`` attributes a worker needs to build the same predictor as ``batch`` would.
PREDICTOR_OPTIONS = ("device", "quality", "precision", "threads", "backend")
#: Options that change a case's outputs: a recorded case counts as done only under the same ones
#: (and the extra outputs asked for, ``extras.BATCH_SUFFIXES``, and the case's PSA).
RESULT_OPTIONS = ("quality", "precision", "channel", "backend")
#: ``args`` attributes a worker needs to write a case as ``batch`` does.
CASE_OPTIONS = ("channel", "dicom_seg", "uncertainty", "report", "resample_uneven")
CSV_EVERY_S = 10.0

_predictors: Dict[Tuple, Any] = {}
_predictors_lock = threading.Lock()
#: (device, threads, backend) of every predictor this process built (see :func:`built_predictors`)
_built: List[Tuple[str, int, str]] = []


def available_cores() -> int:
    """CPU cores this process may run on (its affinity: a Slurm/PBS job's share, a container's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def fair_threads(worker) -> int:
    """Predictor threads for ``worker``: its host's cores shared by every task slot on that host, at least 1.

    A host's task slots are the ``nthreads`` of all the workers the scheduler knows there
    (one per process with ``--workers``), so that workers x threads never exceeds the cores.
    """
    from distributed import get_client

    workers = _all_workers(get_client())
    host = workers.get(worker.address, {}).get("host")
    slots = sum(int(w.get("nthreads", 1)) for w in workers.values() if host is not None and w.get("host") == host)
    return max(1, available_cores() // max(slots, worker.state.nthreads, 1))


def _all_workers(client) -> Dict[str, Dict[str, Any]]:
    try:
        return client.scheduler_info(n_workers=-1)["workers"]  # newer versions list 5 unless asked
    except TypeError:
        return client.scheduler_info()["workers"]


def cached_predictor(package_path: str, options: Dict[str, Any]):
    """This worker process's predictor for the package and options: built on its first case, then kept.

    ``options["threads"]`` None: :func:`fair_threads`.
    """
    from distributed import get_worker

    worker = get_worker()
    with _predictors_lock:
        key = (package_path, tuple(sorted(options.items())))
        predictor = _predictors.get(key)
        if predictor is None:
            from ..model_package import ModelPackage
            from .common import build_predictor

            threads = options.get("threads") or fair_threads(worker)
            device = options.get("device")
            if device == "cuda":
                device = _worker_gpu(worker.name)
            package = ModelPackage.load(package_path, verify=True)
            predictor = build_predictor(
                package, argparse.Namespace(**{**options, "threads": threads, "device": device})
            )
            _predictors[key] = predictor
            _built.append((str(device), int(threads), str(getattr(predictor, "backend", ""))))
            log.info("worker %s built its predictor (%s, %d threads)", worker.address, device, threads)
    return predictor


def built_predictors() -> List[Tuple[str, int, str]]:
    """``(device, threads, backend)`` of the predictors this worker process has built (``client.run`` it)."""
    return list(_built)


def gpu_for(worker_name: Any, gpus: int) -> Optional[int]:
    """The GPU of a worker on a machine with ``gpus`` GPUs: its number (a local cluster's 0, 1, ...
    or ``dask worker --nworkers``' ``NAME-0``, ``NAME-1``, ...) modulo ``gpus``; None with one GPU or
    a name without a number."""
    if gpus < 2:
        return None
    try:
        return int(str(worker_name).rsplit("-", 1)[-1]) % gpus
    except ValueError:
        return None


def _worker_gpu(worker_name: Any) -> str:
    """``cuda:N`` for this worker where it sees several GPUs (one worker per GPU), else ``cuda``.

    A dask-cuda worker keeps ``cuda``: dask-cuda lists the worker's own GPU first in its
    ``CUDA_VISIBLE_DEVICES``. So does a worker that sees one GPU (one per worker by hand).
    A ``CUDA_VISIBLE_DEVICES`` that Slurm set for the whole job lists the same GPUs to
    every worker: they are shared out by number.
    """
    if "dask_cuda" in sys.modules:
        return "cuda"
    import torch  # --device cuda: the torch runtime

    index = gpu_for(worker_name, torch.cuda.device_count())
    return "cuda" if index is None else f"cuda:{index}"


def segment_remote(
    name: str,
    input_path: str,
    output: str,
    overwrite: bool,
    skip_done: bool,
    case_options: Dict[str, Any],
    psa: Optional[float],
    package_path: str,
    options: Dict[str, Any],
    record_key: Dict[str, Any],
    series_uid: Optional[str] = None,
    choice_problem: Optional[Tuple[int, str]] = None,
) -> Dict[str, Any]:
    """One case on a worker: its summary row, with its ``--report`` index entry under ``"_index"``.

    Never raises for a failure of the case itself. ``overwrite``: the outputs may be replaced
    (``--overwrite``, or the labelmap was not there when the batch started: a rerun after a
    lost worker). ``skip_done``: return the recorded row, with status ``skipped``, when the
    case is done (``case_record.done_row``). ``case_options``: :data:`CASE_OPTIONS`.
    """
    from .batch import case_row, index_row, segment_case
    from .case_record import done_row, sha256_of, write_record

    t0 = time.perf_counter()
    path, out = Path(input_path), Path(output)
    row = case_row(name, path, out)
    key = {**record_key, "psa": psa}
    try:
        if skip_done:
            done = done_row(out, path, key)
            if done is not None:
                return {**done, "status": "skipped"}
        input_sha256 = sha256_of(path) if path.exists() else ""
        predictor = cached_predictor(package_path, options)
        args = argparse.Namespace(overwrite=overwrite, **case_options)
        silent = ProgressReporter("none")
        problem = CliError(*choice_problem) if choice_problem else None  # (exit code, message): picklable
        result = segment_case(row, path, out, args, psa, predictor, silent, Cancellation(), t0, series_uid, problem)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["_index"] = index_row(name, result)
        write_record(out, path, input_sha256, key, row)
    except Exception as e:  # noqa: BLE001 - a failing case is a row; the batch goes on
        code, message = classify_error(e)
        row.update(exit_code=code, error=message, status="failed")
        row["_index"] = {"case": name, "status": "failed", "error": message}
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _connect(args: argparse.Namespace):
    """``(client, cluster or None)``: a local cluster of ``--workers`` processes, or ``--scheduler``'s."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CliError(EXIT_USAGE, "--workers and --scheduler need Dask: pip install 'unetsegment[dask]'") from None
    if args.scheduler:
        try:
            return Client(args.scheduler, timeout="30s"), None
        except (OSError, TimeoutError) as e:
            raise CliError(EXIT_USAGE, f"cannot reach the Dask scheduler {args.scheduler}: {e}") from None
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,  # one case at a time per process; its predictor gets the threads
        processes=True,
        dashboard_address=":0",  # any free port: several clusters may share a machine
        silence_logs=logging.ERROR,
    )
    return Client(cluster), cluster


def _check_threads(client, threads: Optional[int]) -> None:
    """Warn where ``--threads`` times the task slots on a host exceeds its cores."""
    if not threads:
        return
    workers = _all_workers(client)
    slots: Dict[str, int] = {}
    for w in workers.values():
        slots[w.get("host", "")] = slots.get(w.get("host", ""), 0) + int(w.get("nthreads", 1))
    cores = client.run(available_cores)  # {address: cores}
    warned = set()
    for address, w in workers.items():
        host = w.get("host", "")
        if host not in warned and address in cores and threads * slots[host] > cores[address]:
            log.warning(
                "--threads %d on the %d task slot(s) of %s oversubscribes its %d cores",
                threads,
                slots[host],
                host,
                cores[address],
            )
            warned.add(host)


def _options(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: getattr(args, k) for k in PREDICTOR_OPTIONS if hasattr(args, k)}


def _record_key(package, args: argparse.Namespace) -> Dict[str, Any]:
    from .extras import BATCH_SUFFIXES

    info = package.info
    key: Dict[str, Any] = {"model": {"id": info.id, "version": info.version, "weights_sha256": info.weights_digest}}
    key.update({k: getattr(args, k) for k in (*RESULT_OPTIONS, *BATCH_SUFFIXES) if hasattr(args, k)})
    return key


class _Bar:
    """One progress line on the client: a tqdm bar on a terminal, otherwise a line per finished case."""

    def __init__(self, total: int, reporter: ProgressReporter, names: Dict[str, str]) -> None:
        self.total, self.done, self.reporter, self.names = total, 0, reporter, names
        self.bar = None
        if reporter.mode == "human" and reporter.stream.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="case", desc="segmenting", file=reporter.stream)
            except ImportError:
                pass

    def update(self, row: Dict[str, Any]) -> None:
        self.done += 1
        if row["status"] == "failed":
            status = f"FAILED ({row['error']})"
        else:
            vols = ", ".join(
                f"{shown} {float(row[f'{s}_ml']):.1f} mL"
                for s, shown in self.names.items()
                if row.get(f"{s}_ml") not in ("", None)
            )
            status = f"{row['status']}, {vols}" if vols else row["status"]
        line = f"[{self.done}/{self.total}] {row['case']}: {status}"
        if self.bar is not None:
            self.bar.update(1)
            if row["status"] == "failed":
                self.bar.write(line)
            return
        print(line, flush=True)  # stdout, as the plain batch's lines
        if self.reporter.mode == "machine":
            self.reporter("inference", self.done / self.total, f"{self.done}/{self.total} cases")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_distributed(
    args: argparse.Namespace,
    reporter: ProgressReporter,
    cancel: Cancellation,
    cases: Sequence[Tuple[str, Path, Optional[str], Optional[BaseException]]],
    out_dir: Path,
    csv_path: Path,
    package,
    columns: List[str],
    psa_by_case: Dict[str, float],
) -> int:
    """``batch`` on Dask: the same cases, outputs and summary CSV as the plain loop (plus ``skipped`` rows)."""
    from .batch import output_for, write_index

    columns = list(columns)
    names = {lab.structure.name: lab.structure.display_name for lab in package.info.labels}
    client, cluster = _connect(args)
    try:
        if args.workers:
            client.wait_for_workers(args.workers, timeout=120)
        # with --scheduler the tasks wait in the scheduler for workers (a queued Slurm job, say)
        _check_threads(client, args.threads)
        options, key = _options(args), _record_key(package, args)
        print(
            f"Segmenting {len(cases)} case(s) from {Path(args.input_dir)} with {package.info.id} "
            f"{package.info.version} on {len(_all_workers(client))} Dask worker(s) ({client.scheduler.address})"
        )
        run_id = uuid.uuid4().hex[:8]

        def submit(i: int, name: str, path: Path, series_uid: Optional[str], problem: Optional[BaseException]):
            output = output_for(out_dir, name, args.format)
            may_replace = bool(args.overwrite) or not output.exists()  # not there before: a retry may replace it
            future = client.submit(
                segment_remote,
                name,
                str(path),
                str(output),
                may_replace,
                not args.overwrite,
                {k: getattr(args, k, None) for k in CASE_OPTIONS},
                psa_by_case.get(name),
                str(package.path),
                options,
                key,
                series_uid,
                classify_error(problem) if problem is not None else None,
                key=f"unetsegment-{run_id}-{i}-{name}",
                pure=False,
            )
            return future, (i, name, path, output)

        rows = _collect(client, cases, submit, cancel, csv_path, columns, _Bar(len(cases), reporter, names))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        _remove_stale_temporaries(out_dir, [case[0] for case in cases])
    index_rows = [r.pop("_index", None) or {"case": r["case"], "status": r["status"]} for r in rows]
    code = _summarise(rows, out_dir, csv_path, reporter)
    if getattr(args, "report", False):
        write_index(index_rows, out_dir, Path(args.input_dir).expanduser().absolute())
    return code


class _Slots:
    """The task slots of the cluster (the workers' threads), looked up at most every ``every_s``."""

    def __init__(self, client, every_s: float = 2.0) -> None:
        self.client, self.every_s = client, every_s
        self.value, self.when = 1, -float("inf")

    def __call__(self) -> int:
        if time.monotonic() - self.when > self.every_s:
            self.value = max(1, sum(self.client.nthreads().values()))
            self.when = time.monotonic()
        return self.value


def _collect(client, cases, submit, cancel, csv_path, columns, bar) -> List[Dict[str, Any]]:
    """Keep one case in flight per task slot and gather the rows as the cases finish.

    Submitting no more than the slots (re-counted as workers come and go) means no case waits
    on a busy worker while another is idle, a lost worker takes only the case it was running
    with it, and the scheduler holds a few tasks, not a cohort.
    """
    from distributed import as_completed

    from .batch import case_row, write_csv

    rows: Dict[int, Dict[str, Any]] = {}
    in_flight: Dict[Any, tuple] = {}
    todo = iter(enumerate(cases))
    slots = _Slots(client)
    done = as_completed(with_results=False)

    def fill() -> None:
        while len(in_flight) < slots():
            nxt = next(todo, None)
            if nxt is None:
                return
            i, (name, path, series_uid, problem) = nxt
            future, spec = submit(i, name, path, series_uid, problem)
            in_flight[future] = spec
            done.add(future)

    last_csv = time.monotonic()
    try:
        fill()
        while in_flight:
            if cancel.is_set():  # Ctrl-C / SIGTERM: polled between cases and while waiting
                raise KeyboardInterrupt
            if not done.has_ready():
                time.sleep(0.1)
                fill()  # workers may have joined
                continue
            future = next(done)
            i, name, path, output = in_flight.pop(future)
            rows[i] = _row_of(future, case_row(name, path, output))
            bar.update(rows[i])
            fill()
            if time.monotonic() - last_csv > CSV_EVERY_S:
                write_csv(csv_path, [rows[k] for k in sorted(rows)], columns)
                last_csv = time.monotonic()
    except BaseException:
        client.cancel(list(in_flight))
        write_csv(csv_path, [rows[k] for k in sorted(rows)], columns)
        raise
    finally:
        bar.close()
    ordered = [rows[k] for k in sorted(rows)]
    write_csv(csv_path, ordered, columns)
    return ordered


def _row_of(future, row: Dict[str, Any]) -> Dict[str, Any]:
    """The task's row, or a failed row when the task itself failed (a case that kept killing workers)."""
    from distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker:
        row.update(
            status="failed",
            exit_code=EXIT_INTERNAL,
            error="the case stopped every worker that took it (out of memory?); try fewer workers or more memory",
        )
    except Exception as e:  # noqa: BLE001 - an error in the task machinery is that case's failure
        code, message = classify_error(e)
        row.update(status="failed", exit_code=code, error=message)
    return row


def _remove_stale_temporaries(out_dir: Path, names: Sequence[str]) -> None:
    """Hidden partial files of this batch's cases, left by workers that died while writing."""
    for name in names:
        for tmp in out_dir.glob(f".{glob.escape(name)}*.unetsegment-tmp*"):
            try:
                tmp.unlink()
            except OSError:
                pass


def _summarise(rows: List[Dict[str, Any]], out_dir: Path, csv_path: Path, reporter: ProgressReporter) -> int:
    failed = [r for r in rows if r["status"] not in ("ok", "skipped")]
    skipped = sum(r["status"] == "skipped" for r in rows)
    segmented = len(rows) - len(failed) - skipped
    print(
        f"{segmented} of {len(rows)} case(s) segmented into {out_dir}"
        + (f", {skipped} already done (skipped)" if skipped else "")
        + f"; summary: {csv_path}"
    )
    if failed:
        reporter.warning(f"{len(failed)} of {len(rows)} case(s) failed; see {csv_path}")
        code = int(failed[0]["exit_code"] or EXIT_INTERNAL)
        return EXIT_CANCELLED if code == EXIT_CANCELLED else code
    return EXIT_OK
