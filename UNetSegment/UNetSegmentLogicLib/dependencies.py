"""Python packages the background process needs, checked without importing them and installed on first use.

- torch comes from the PyTorch extension (``PyTorchUtils``), which picks the
  build matching the GPU driver (``PyTorchUtils`` imports torch once, right
  after installing it; this module never imports torch). Without the
  extension, pip installs torch with the other packages.
- safetensors is installed with pip, with a constraints file that
  pins the torch, numpy, scipy and SimpleITK already present, so installing
  can never replace Slicer's own packages (pip fails instead, with a message).
- Slicer >= 5.12 has ``slicer.packaging.pip_ensure`` (confirmation dialog,
  progress, restart prompt); older Slicer gets ``slicer.util.pip_install``
  after our own confirmation.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import tempfile
from typing import Dict, List, Optional, Sequence

#: What UNetSegmentLib needs besides Slicer's numpy, scipy and SimpleITK (pip requirement strings).
PIP_REQUIREMENTS = ["safetensors>=0.4,<1"]
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


def missingRequirements() -> List[str]:
    """Pip requirements (not torch) that are absent or too old."""
    return [r for r in PIP_REQUIREMENTS if not isSatisfied(r)]


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
    """Installed versions of everything the segmentation uses ("not installed" if absent)."""
    names = ["torch", "safetensors", "numpy", "scipy", "SimpleITK"]
    return {name: installedVersion(name) or "not installed" for name in names}


def ensureTorch(slicer) -> bool:
    """Install PyTorch through the PyTorch extension if missing (it asks the user first).

    Returns False when torch is missing and the extension is not there: then
    pip installs torch with the other packages (after the same confirmation).
    """
    if not torchMissing():
        return True
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        logging.warning("The PyTorch extension is not installed; PyTorch will be installed with pip")
        return False
    logging.info("Installing PyTorch%s through the PyTorch extension", TORCH_REQUIREMENT)
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT
    )
    if torch is None or torchMissing():
        raise DependencyError(
            f"PyTorch {TORCH_REQUIREMENT} is needed. Install it with the PyTorch Utils module, then try again."
        )
    return True


def ensurePipPackages(slicer, reinstall: bool = False, extra: Sequence[str] = ()) -> None:
    """Install missing pip packages (all of them with ``reinstall``), plus ``extra``, after the user agrees."""
    requirements = (list(PIP_REQUIREMENTS) if reinstall else missingRequirements()) + list(extra)
    if not requirements:
        return
    constraints = writeConstraints(slicer.app.temporaryPath)
    try:
        packaging = _slicerPackaging()
        if packaging is not None and not reinstall:
            packaging.pip_ensure(requirements, constraints=constraints, requester=REQUESTER, skip_in_testing=False)
        else:
            what = "reinstalled" if reinstall else "installed"
            text = f"UNetSegment needs these Python packages {what}:\n\n" + "\n".join(requirements) + "\n\nContinue?"
            if not slicer.util.confirmOkCancelDisplay(text, "UNetSegment - Python packages"):
                raise DependencyError("The Python packages UNetSegment needs were not installed.")
            args = ["-c", constraints, *requirements]
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
    still = [r for r in missingRequirements() + list(extra) if not isSatisfied(r)]
    if still:
        raise DependencyError(f"Installing {', '.join(still)} failed; see the Python console for pip's messages.")


def _slicerPackaging():
    """``slicer.packaging`` where this Slicer has it (5.12 and later), else None."""
    try:
        import slicer.packaging as packaging
    except ImportError:
        return None
    return packaging if hasattr(packaging, "pip_ensure") else None


def ensureDependencies(slicer, reinstall: bool = False) -> None:
    """Everything the background process needs: torch first, then the pip packages."""
    torchPresent = ensureTorch(slicer)
    ensurePipPackages(slicer, reinstall=reinstall, extra=[] if torchPresent else ["torch" + TORCH_REQUIREMENT])
