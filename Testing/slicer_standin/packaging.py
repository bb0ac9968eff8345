"""``slicer.packaging`` (Slicer 5.12 and later), which slicer-core does not ship: same signatures, no pip.

The signatures are Slicer's, keyword for keyword and without ``**kwargs``,
so a call that Slicer would reject fails here too. ``pip_ensure`` checks the
requirements against the installed distributions as Slicer does, skips in
testing mode when asked to, asks with ``slicer.util.confirmOkCancelDisplay``
and raises ``RuntimeError`` when the user declines; ``pip_install`` records
its arguments in ``installCalls`` instead of running pip, so tests never
change the Python environment. ``slicer.util.pip_install`` (Slicer's own,
from slicer-core) delegates here, as in Slicer.
"""

from __future__ import annotations

import importlib.metadata
import types
from typing import Any, Callable, List, Optional, Union


def _requirements(reqs: Any) -> List[Any]:
    from packaging.requirements import InvalidRequirement, Requirement

    if isinstance(reqs, str):
        try:
            return [Requirement(reqs)]
        except InvalidRequirement:
            return [Requirement(s) for s in reqs.split()]
    if isinstance(reqs, Requirement):
        return [reqs]
    if isinstance(reqs, list):
        return [Requirement(r) if isinstance(r, str) else r for r in reqs]
    raise TypeError(f"Expected str, Requirement, or list, got {type(reqs).__name__}")


def makeModule(slicer: types.ModuleType) -> types.ModuleType:
    module = types.ModuleType("slicer.packaging")
    module.installCalls = []  # the keyword arguments of each pip_install call

    def pip_check(req: Any, _seen: Optional[set] = None) -> bool:
        for r in _requirements(req):
            if r.marker is not None and not r.marker.evaluate():
                continue
            try:
                installed = importlib.metadata.version(r.name)
            except importlib.metadata.PackageNotFoundError:
                return False
            if installed not in r.specifier:
                return False
        return True

    def pip_install(
        requirements: Union[str, List[str]],
        constraints: Any = None,
        no_deps_requirements: Any = None,
        skip_packages: Optional[List[str]] = None,
        blocking: bool = True,
        show_progress: bool = True,
        requester: Optional[str] = None,
        parent: Any = None,
        logCallback: Optional[Callable[[str], None]] = None,
        completedCallback: Optional[Callable[[int], None]] = None,
    ) -> Optional[List[str]]:
        constraintsText = None
        if constraints is not None:
            with open(constraints, encoding="utf-8") as f:
                constraintsText = f.read()
        module.installCalls.append(
            {
                "requirements": requirements,
                "constraints": constraintsText,
                "no_deps_requirements": no_deps_requirements,
                "requester": requester,
            }
        )
        return None

    def pip_ensure(
        requirements: Any,
        constraints: Any = None,
        skip_packages: Optional[List[str]] = None,
        prompt_install: bool = True,
        prompt_restart: bool = True,
        requester: Optional[str] = None,
        skip_in_testing: bool = True,
        show_progress: bool = True,
    ) -> Optional[List[str]]:
        missing = [r for r in _requirements(requirements) if not pip_check(r)]
        if not missing:
            return None
        if skip_in_testing and slicer.app.testingEnabled():
            return None
        if prompt_install:
            title = f"{requester} - Install Python Packages" if requester else "Install Python Packages"
            text = f"{len(missing)} Python package(s) need to be installed.\n\nThis will modify Slicer's Python environment. Continue?"
            details = "\n".join(f"- {r}" for r in missing)
            if not slicer.util.confirmOkCancelDisplay(text, title, detailedText=details):
                raise RuntimeError("User declined package installation")
        return pip_install(
            [str(r) for r in missing],
            constraints=constraints,
            skip_packages=skip_packages,
            blocking=True,
            show_progress=show_progress,
            requester=requester,
        )

    module.pip_check = pip_check
    module.pip_install = pip_install
    module.pip_ensure = pip_ensure
    return module
