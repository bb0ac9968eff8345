"""pytest fixtures for the Slicer module tests: Slicer's core with the Qt stand-ins, the module imported, a model installed.

Test modules load them with ``pytest_plugins = ("slicer_standin.fixtures",)``.
The module under test runs its real background process: ``sys.executable -m
UNetSegmentLib`` stands in for ``PythonSlicer -m UNetSegmentLib``.
"""

from __future__ import annotations

import sys
import types

import pytest

from .helpers import MODULE_FILE, importModule


@pytest.fixture
def slicer_env(tmp_path, monkeypatch):
    """``(slicer, UNetSegment module)`` with a fresh scene; the model cache is a temporary folder.

    Skips where slicer-core is not installed (Python 3.9: it has no wheel there).
    """
    from . import available, install, uninstall

    if not available():
        pytest.skip("slicer-core is not installed (pip install -e .[dev] on Python 3.10 or later)")
    temp = tmp_path / "slicer-temp"
    temp.mkdir()
    monkeypatch.setenv("UNETSEGMENT_HOME", str(tmp_path / "model-cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    slicer = install(str(temp), modulePaths={"UNetSegment": str(MODULE_FILE)})
    module = importModule()
    yield types.SimpleNamespace(slicer=slicer, module=module, temp=temp, tmp=tmp_path)
    uninstall()
    for name in list(sys.modules):
        if name == "UNetSegment" or name.startswith("UNetSegmentLogicLib"):
            del sys.modules[name]


@pytest.fixture
def installed_tiny_model(slicer_env, tiny_package):
    """The ``tiny_package`` test model installed into the (temporary) model cache, as the panel's import does."""
    zip_path = tiny_package.to_zip(slicer_env.tmp / "tiny-test-model.zip")
    logic = slicer_env.module.UNetSegmentLogic(pythonCommand=[sys.executable])
    info = logic.importModelZip(str(zip_path))
    return f"{info.id}@{info.version}"


_CLI_TAKES_BACKEND = []


def cliTakesBackend() -> bool:
    """Whether this checkout's ``segment`` command has ``--backend`` (issue 15); asked once per session."""
    import subprocess

    if not _CLI_TAKES_BACKEND:
        from .helpers import REPO

        env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run(
            [sys.executable, "-m", "UNetSegmentLib", "segment", "--help"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        _CLI_TAKES_BACKEND.append("--backend" in out.stdout)
    return _CLI_TAKES_BACKEND[0]


@pytest.fixture
def real_cli(slicer_env, monkeypatch):
    """The module runs the real command line. Until the CLI has ``--backend`` (issue 15), the flag is left out.

    The module always passes ``--backend`` (``onnxruntime`` for the CPU); where the checked-out
    CLI predates it, this drops the two words so the same tests run on either engine.
    """
    if cliTakesBackend():
        return
    import UNetSegmentLogicLib.run as runlib

    build = runlib.segmentCommand

    def withoutBackend(*args, **kwargs):
        command = build(*args, **kwargs)
        i = command.index("--backend")
        return command[:i] + command[i + 2 :]

    monkeypatch.setattr(runlib, "segmentCommand", withoutBackend)
