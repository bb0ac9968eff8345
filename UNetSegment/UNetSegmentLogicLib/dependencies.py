"""Python packages the background process needs, checked without importing them and installed on first use.

What is installed depends on where the network runs:

- CPU (and "auto"): ONNX Runtime only, a small wheel (the model package
  carries ``model.onnx``; numpy, scipy and SimpleITK come with Slicer).
  PyTorch is never installed for the CPU.
- GPU: PyTorch through the PyTorch extension (``PyTorchUtils``), which picks
  the build matching the GPU driver and asks the user first (it imports torch
  once, right after installing it; this module never imports torch), then
  safetensors with pip to read the weights. Without the extension the GPU is
  refused with what to do: pip would install a CPU-only or mismatched build.

pip runs with a constraints file that pins the torch, numpy, scipy and
SimpleITK already present, so installing can never replace Slicer's own
packages (pip fails instead, with a message). Slicer >= 5.12 has
``slicer.packaging.pip_ensure`` (confirmation dialog, progress, restart
prompt); older Slicer gets ``slicer.util.pip_install`` after our own
confirmation.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import tempfile
from typing import Dict, List, Optional

#: pip requirements of each device choice (the ``--device`` values of the command line).
CPU_REQUIREMENTS = ["onnxruntime>=1.17"]
GPU_REQUIREMENTS = ["safetensors>=0.4,<1"]
TORCH_REQUIREMENT = ">=2.1"
#: Packages Slicer (or the PyTorch extension) provides: pinned, never replaced.
PROTECTED = ["torch", "numpy", "scipy", "SimpleITK"]
REQUESTER = "UNetSegment"


class DependencyError(Exception):
    """A package is missing and was not (or could not be) installed; the message says what to do."""


def installedVersion(name: str) -> Optional[str]:
    """Version of an installed distribution, without importing it; None if absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def isSatisfied(requirement: str) -> bool:
    """True if the installed version meets a pip requirement string."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no packaging: presence is all we can check
        name = requirement.split(">")[0].split("<")[0].split("=")[0].strip()
        return installedVersion(name) is not None
    req = Requirement(requirement)
    version = installedVersion(req.name)
    return version is not None and req.specifier.contains(version, prereleases=True)


def requirementsFor(device: str) -> List[str]:
    """pip requirements (never torch) for ``device`` (cpu, cuda or auto)."""
    if device == "cuda":
        return list(GPU_REQUIREMENTS)
    if device == "auto" and installedVersion("torch") is not None:
        return CPU_REQUIREMENTS + GPU_REQUIREMENTS  # the process may pick the GPU with the torch already there
    return list(CPU_REQUIREMENTS)


def missingRequirements(device: str = "cpu") -> List[str]:
    """pip requirements of ``device`` that are absent or too old."""
    return [r for r in requirementsFor(device) if not isSatisfied(r)]


def torchMissing() -> bool:
    return not isSatisfied("torch" + TORCH_REQUIREMENT)


def writeConstraints(folder: Optional[str] = None) -> str:
    """A pip constraints file pinning the protected packages to their installed versions; returns its path."""
    lines = [f"{name}=={version}" for name in PROTECTED for version in [installedVersion(name)] if version]
    fd, path = tempfile.mkstemp(prefix="UNetSegment-constraints-", suffix=".txt", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def versions() -> Dict[str, str]:
    """Installed versions of everything a segmentation may use ("not installed" if absent)."""
    names = ["onnxruntime", "torch", "safetensors", "numpy", "scipy", "SimpleITK"]
    return {name: installedVersion(name) or "not installed" for name in names}


def ensureTorch(slicer) -> None:
    """Install PyTorch through the PyTorch extension if missing (it asks the user first)."""
    if not torchMissing():
        return
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise DependencyError(
            "Segmenting on the GPU needs PyTorch, installed by the PyTorch extension: install that extension "
            "from the Extensions Manager and restart Slicer, or choose the CPU."
        ) from None
    logging.info("Installing PyTorch%s through the PyTorch extension", TORCH_REQUIREMENT)
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT
    )
    if torch is None or torchMissing():
        raise DependencyError(
            f"PyTorch {TORCH_REQUIREMENT} is needed on the GPU. Install it with the PyTorch Utils module, "
            "or choose the CPU."
        )


def ensurePipPackages(slicer, requirements: List[str], reinstall: bool = False) -> None:
    """Install ``requirements`` that are missing (all of them with ``reinstall``), after the user agrees."""
    wanted = list(requirements) if reinstall else [r for r in requirements if not isSatisfied(r)]
    if not wanted:
        return
    constraints = writeConstraints(slicer.app.temporaryPath)
    try:
        packaging = _slicerPackaging()
        if packaging is not None and not reinstall:
            packaging.pip_ensure(wanted, constraints=constraints, requester=REQUESTER, skip_in_testing=False)
        else:
            what = "reinstalled" if reinstall else "installed"
            text = f"UNetSegment needs these Python packages {what}:\n\n" + "\n".join(wanted) + "\n\nContinue?"
            if not slicer.util.confirmOkCancelDisplay(text, "UNetSegment - Python packages"):
                raise DependencyError("The Python packages UNetSegment needs were not installed.")
            args = ["-c", constraints, *wanted]
            if reinstall:
                args = ["--force-reinstall", "--no-deps", *args]
            slicer.util.pip_install(args)
    except RuntimeError as e:  # pip_ensure raises RuntimeError when the user declines
        raise DependencyError(f"The Python packages UNetSegment needs were not installed ({e}).") from None
    except subprocess.CalledProcessError:
        raise DependencyError(
            "pip could not install the Python packages; see the Python console for its messages."
        ) from None
    finally:
        os.remove(constraints)
    importlib.invalidate_caches()
    still = [r for r in requirements if not isSatisfied(r)]
    if still:
        raise DependencyError(f"Installing {', '.join(still)} failed; see the Python console for pip's messages.")


def _slicerPackaging():
    """``slicer.packaging`` where this Slicer has it (5.12 and later), else None."""
    try:
        import slicer.packaging as packaging
    except ImportError:
        return None
    return packaging if hasattr(packaging, "pip_ensure") else None


def ensureDependencies(slicer, device: str = "cpu", reinstall: bool = False) -> None:
    """Everything the background process needs on ``device``: PyTorch first for the GPU, then pip packages."""
    if device == "cuda":
        ensureTorch(slicer)
    ensurePipPackages(slicer, requirementsFor(device), reinstall=reinstall)
