"""Progress of a segmentation run: for a person (stderr) or for a program (one JSON line per update).

The machine protocol is what the Slicer module reads from ``PythonSlicer -m
UNetSegmentLib segment ... --progress machine``. Each line on stderr is one
of::

    UNETSEGMENT_PROGRESS {"stage": "inference", "fraction": 0.42, "overall": 0.51, "message": ""}
    UNETSEGMENT_WARNING {"message": "..."}
    UNETSEGMENT_RESULT {"input": ..., "output": ..., "model": {...}, "volumes_ml": {...}, ...}
    UNETSEGMENT_ERROR {"code": 4, "message": "..."}

``fraction`` is the progress (0-1) of the stage, ``overall`` of the whole
run; ``overall`` never decreases. Any other line (a library warning, say)
is not part of the protocol: :func:`parse_progress_line` returns None for it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Dict, Optional, TextIO

PROGRESS_PREFIX = "UNETSEGMENT_PROGRESS"
WARNING_PREFIX = "UNETSEGMENT_WARNING"
RESULT_PREFIX = "UNETSEGMENT_RESULT"
ERROR_PREFIX = "UNETSEGMENT_ERROR"

_KINDS = {PROGRESS_PREFIX: "progress", WARNING_PREFIX: "warning", RESULT_PREFIX: "result", ERROR_PREFIX: "error"}

#: Stages in the order a run goes through them, with their share of the whole run.
STAGE_WEIGHTS: Dict[str, float] = {
    "loading": 0.04,
    "downloading": 0.10,
    "preprocessing": 0.06,
    "inference": 0.65,
    "postprocessing": 0.04,
    "resampling": 0.08,
    "writing": 0.03,
}
STAGES = tuple(STAGE_WEIGHTS)

PROGRESS_MODES = ("human", "machine", "none")


def _line(prefix: str, payload: Dict[str, Any]) -> str:
    return f"{prefix} {json.dumps(payload, separators=(', ', ': '))}"


def _clip01(value: float) -> float:
    return round(min(max(float(value), 0.0), 1.0), 4)


def format_progress_line(stage: str, fraction: float, overall: float, message: str = "") -> str:
    """``UNETSEGMENT_PROGRESS {...}`` for one update (fractions clipped to 0-1, 4 decimals)."""
    payload = {"stage": stage, "fraction": _clip01(fraction), "overall": _clip01(overall), "message": message}
    return _line(PROGRESS_PREFIX, payload)


def format_warning_line(message: str) -> str:
    return _line(WARNING_PREFIX, {"message": message})


def format_result_line(result: Dict[str, Any]) -> str:
    """``UNETSEGMENT_RESULT {...}``: the same object as ``--volumes-json`` writes."""
    return _line(RESULT_PREFIX, result)


def format_error_line(code: int, message: str) -> str:
    return _line(ERROR_PREFIX, {"code": int(code), "message": message})


def parse_progress_line(line: str) -> Optional[Dict[str, Any]]:
    """One protocol line -> its JSON object plus ``"kind"`` (progress, warning, result or error).

    Returns None for lines that are not protocol lines or whose JSON is
    damaged, so a reader can pass every line of stderr through it.

    >>> parse_progress_line('UNETSEGMENT_ERROR {"code": 3, "message": "input not found"}')["code"]
    3
    """
    prefix, _, rest = line.strip().partition(" ")
    kind = _KINDS.get(prefix)
    if kind is None:
        return None
    try:
        payload = json.loads(rest)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    return {**payload, "kind": kind}


def overall_fraction(stage: str, fraction: float) -> float:
    """Progress of the whole run when ``stage`` is ``fraction`` done (stages in :data:`STAGES` order)."""
    if stage not in STAGE_WEIGHTS:
        return 0.0
    done = 0.0
    for s in STAGES:
        if s == stage:
            break
        done += STAGE_WEIGHTS[s]
    total = sum(STAGE_WEIGHTS.values())
    return (done + STAGE_WEIGHTS[stage] * min(max(fraction, 0.0), 1.0)) / total


class ProgressReporter:
    """Reports ``(stage, fraction)`` updates in one of :data:`PROGRESS_MODES`; usable as ``Predictor``'s callback.

    ``human``: on a terminal one self-overwriting line with a bar, otherwise
    one line per stage. ``machine``: one protocol line per update (updates
    closer than 1% of a stage are merged), flushed at once. ``none``: silent.
    ``span`` maps this run into a part of a larger one (batch: case i of n
    reports ``overall`` in ``(i/n, (i+1)/n)``). ``check`` is called on every
    update; it may raise to stop the run (cancellation between stages).
    """

    def __init__(
        self,
        mode: str = "human",
        stream: Optional[TextIO] = None,
        span: tuple = (0.0, 1.0),
        check: Optional[Callable[[], None]] = None,
    ) -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode must be one of {PROGRESS_MODES}, not {mode!r}")
        self.mode = mode
        self._stream = stream
        self.span = span
        self.check = check
        self.overall = 0.0
        self._last: tuple = ("", -1.0)
        self._tty_line = False
        self._t_stage = time.perf_counter()

    @property
    def stream(self) -> TextIO:
        # looked up per write, so a replaced sys.stderr (pytest's capture) is honoured
        return self._stream if self._stream is not None else sys.stderr

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        if self.check is not None:
            self.check()
        lo, hi = self.span
        self.overall = max(self.overall, lo + (hi - lo) * overall_fraction(stage, fraction))
        last_stage, last_fraction = self._last
        new_stage = stage != last_stage
        if not new_stage and fraction < 1.0 and fraction - last_fraction < 0.01:
            return
        self._last = (stage, fraction)
        if self.mode == "machine":
            self._write(format_progress_line(stage, fraction, self.overall, message) + "\n")
        elif self.mode == "human":
            self._human(stage, fraction, message, new_stage)

    def begin_span(self, lo: float, hi: float) -> None:
        """Report the next run (batch: the next case) into ``overall`` range ``(lo, hi)``."""
        self.span = (lo, hi)
        self._last = ("", -1.0)

    def bytes_callback(self, stage: str = "downloading", message: str = "") -> Callable[[int, int], None]:
        """A ``progress(done_bytes, total_bytes)`` callback (model downloads) reporting ``stage``."""

        def report(done: int, total: int) -> None:
            frac = done / total if total else 0.0
            text = message or (f"{done / 1e6:.1f} of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB")
            self(stage, frac, text)

        return report

    def warning(self, message: str) -> None:
        """A warning about the input or the run: ``WARNING: ...`` (human) or a protocol line (machine)."""
        self.end_line()
        if self.mode == "machine":
            self._write(format_warning_line(message) + "\n")
        else:
            self._write(f"WARNING: {message}\n")

    def result(self, result: Dict[str, Any]) -> None:
        self.end_line()
        if self.mode == "machine":
            self._write(format_result_line(result) + "\n")

    def error(self, code: int, message: str) -> None:
        self.end_line()
        if self.mode == "machine":
            self._write(format_error_line(code, message) + "\n")

    def end_line(self) -> None:
        """Finish a self-overwriting terminal line so the next output starts on its own line."""
        if self._tty_line:
            self._write("\n")
            self._tty_line = False

    def _human(self, stage: str, fraction: float, message: str, new_stage: bool) -> None:
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if tty:
            width = 24
            filled = int(round(width * min(max(fraction, 0.0), 1.0)))
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r{stage:<15}|{bar}| {100 * fraction:3.0f}%  {message[:40]:<40}"
            self._write(text)
            self._tty_line = True
        elif new_stage:
            self._write(f"{stage}...{' ' + message if message else ''}\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not fail the run
            pass
