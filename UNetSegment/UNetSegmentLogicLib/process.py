"""A background process the module can poll from Qt's event loop, and kill with all its children.

``PythonSlicer`` is a launcher that starts the real Python as a child, so
killing only the launcher's PID would leave inference running: the process
is started in its own process group (POSIX) or process tree (Windows), and
:meth:`BackgroundProcess.kill` ends the whole group.

Anything with the same four methods can stand in for it (tests drive the
module's logic with a scripted fake, as SlicerNNUNet does).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from typing import Dict, List, Optional, Sequence

try:
    from typing import Protocol
except ImportError:  # Python < 3.8
    Protocol = object  # type: ignore[assignment,misc]


class ProcessProtocol(Protocol):
    """What the module needs from a background process."""

    def start(self, args: Sequence[str], env: Dict[str, str], cwd: str) -> None:
        """Start ``args`` (program first) with environment ``env`` in folder ``cwd``."""

    def readLines(self) -> List[str]:
        """Output lines (stdout and stderr merged) received since the last call; never blocks."""

    def exitCode(self) -> Optional[int]:
        """None while running or while output is still unread, else the exit code."""

    def kill(self) -> None:
        """End the process and every process it started; returns at once."""


class BackgroundProcess:
    """``subprocess.Popen`` with a reader thread: the GUI thread only ever polls a queue."""

    def __init__(self) -> None:
        self._proc: Optional[subprocess.Popen] = None
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader: Optional[threading.Thread] = None

    def start(self, args: Sequence[str], env: Dict[str, str], cwd: str) -> None:
        if self._proc is not None:
            raise RuntimeError("this BackgroundProcess was already started")
        kwargs: Dict[str, object] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True  # own process group: kill() reaches the launcher's child too
        logging.info("Starting: %s", subprocess.list2cmdline(list(args)))
        self._proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,  # type: ignore[arg-type]
        )
        self._reader = threading.Thread(target=self._read, name="UNetSegment output reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\r\n"))
        self._proc.stdout.close()

    def readLines(self) -> List[str]:
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def exitCode(self) -> Optional[int]:
        if self._proc is None or self._reader is None:
            return None
        if self._reader.is_alive() or not self._lines.empty():
            return None
        return self._proc.wait()

    def kill(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if os.name == "nt":
                subprocess.run(
                    ["taskkill", "/F", "/T", "/PID", str(proc.pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    creationflags=subprocess.CREATE_NO_WINDOW,  # type: ignore[attr-defined]
                    check=False,
                )
            else:
                os.killpg(proc.pid, signal.SIGKILL)
        except (OSError, ValueError) as e:  # already gone
            logging.debug("kill of process %s: %s", proc.pid, e)
        try:
            proc.kill()
        except OSError:
            pass


def pythonSlicerCommand() -> List[str]:
    """``[path of PythonSlicer]``: the launcher beside Slicer's executable, which is on Slicer's PATH."""
    found = shutil.which("PythonSlicer") or os.path.join(
        os.path.dirname(sys.executable), "PythonSlicer" + (".exe" if os.name == "nt" else "")
    )
    if not os.path.isfile(found):
        raise RuntimeError("PythonSlicer was not found; this Slicer installation is incomplete.")
    return [found]


def processEnvironment(libraryParent: str) -> Dict[str, str]:
    """This process's environment with ``libraryParent`` (the folder holding UNetSegmentLib) first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (libraryParent, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env
