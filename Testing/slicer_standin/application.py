"""``slicer.app`` of the stand-in: temporary path, testing flag, and an event loop for timers.

Qt's event loop is replaced by :meth:`Application.processEvents`, which runs
the timeouts of started ``qt.QTimer`` objects whose interval has elapsed, as
the real loop would between two calls.
"""

from __future__ import annotations

import types
from typing import Any, Callable, List


class Application:
    majorVersion = 5
    minorVersion = 8
    applicationVersion = "5.8.1-standin"

    def __init__(self, temporaryPath: str, testingEnabled: bool = True) -> None:
        self.temporaryPath = temporaryPath
        self._testingEnabled = testingEnabled
        self.overrideCursorDepth = 0
        self._startupSlots: List[Callable] = []

    def testingEnabled(self) -> bool:
        return self._testingEnabled

    def commandOptions(self) -> Any:
        return types.SimpleNamespace(testingEnabled=self._testingEnabled, noMainWindow=True)

    def processEvents(self, *args: Any) -> None:
        from .qtwidgets import QTimer

        QTimer.fireDue()

    def setOverrideCursor(self, cursor: Any) -> None:
        self.overrideCursorDepth += 1

    def restoreOverrideCursor(self) -> None:
        self.overrideCursorDepth -= 1

    def connect(self, signal: str, slot: Callable) -> None:
        if signal == "startupCompleted()":
            self._startupSlots.append(slot)

    def completeStartup(self) -> None:
        """What Slicer does once all modules are loaded: emit ``startupCompleted()``."""
        for slot in self._startupSlots:
            slot()

    def moduleManager(self) -> Any:
        return types.SimpleNamespace(connect=lambda *a: None, disconnect=lambda *a: None)
