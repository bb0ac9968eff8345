"""The models offered in the panel: installed ones (cache and bundled) and downloadable ones.

Reads ``model.json`` files and the catalogue through ``UNetSegmentLib.store``
(JSON only; torch is never imported here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model selector: ``spec`` (``id@version``) is what the command line gets."""

    id: str
    version: str
    name: str
    description: str
    structures: Tuple[str, ...]
    trainedOn: Tuple[str, ...]
    license: Dict[str, Any] = field(default_factory=dict)
    installed: bool = False
    path: Optional[str] = None

    @property
    def spec(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def label(self) -> str:
        """Text of the combo box item."""
        return f"{self.name} ({self.version}){'' if self.installed else ' - download'}"

    def licenseText(self) -> str:
        parts = []
        if self.license.get("weights"):
            parts.append(f"weights: {self.license['weights']}")
        if self.license.get("code"):
            parts.append(f"code: {self.license['code']}")
        return "; ".join(parts) or "not stated"

    def summary(self) -> str:
        """Plain-text description shown under the selector."""
        lines = [
            f"{self.name}, version {self.version}",
            f"Structures: {', '.join(self.structures) or 'unknown'}",
            f"Trained on: {'; '.join(self.trainedOn) or 'not stated'}",
            f"Licence: {self.licenseText()}",
            "Installed" if self.installed else "Downloaded on first use",
        ]
        return "\n".join(lines)


def _trainedOn(training: Dict[str, Any], license: Dict[str, Any]) -> Tuple[str, ...]:
    data = training.get("data") if isinstance(training, dict) else None
    sources = data.get("sources") if isinstance(data, dict) else None
    if sources:
        return tuple(str(s) for s in sources)
    return tuple(str(s) for s in license.get("training_data", []) or [])


def listModelChoices(store: Any, defaultId: Optional[str] = None) -> List[ModelChoice]:
    """Installed models first (newest version first), then catalogue models not installed.

    The default model comes first in each group. From the catalogue only the newest
    version of each model is offered, and only when it is newer than every installed
    version: an older release is not something to download by accident (the command line
    still takes ``--model id@version``). A catalogue that cannot be read (offline with a
    remote catalogue) just contributes nothing.
    """
    from UNetSegmentLib.labels import STRUCTURES
    from UNetSegmentLib.model_package import ModelPackageError
    from UNetSegmentLib.store import DownloadError, version_key

    choices: List[ModelChoice] = []
    seen = set()
    for pkg in store.installed():
        info = pkg.info
        choices.append(
            ModelChoice(
                id=info.id,
                version=info.version,
                name=info.name,
                description=info.description,
                structures=tuple(lab.structure.display_name for lab in info.labels),
                trainedOn=_trainedOn(info.training, info.license),
                license=dict(info.license),
                installed=True,
                path=str(pkg.path),
            )
        )
        seen.add((info.id, info.version))
    try:
        catalogue = store.catalogue
    except (ModelPackageError, DownloadError, OSError):
        catalogue = []
    newest: Dict[str, Any] = {}
    for modelId, version in seen:
        newest[modelId] = max(newest.get(modelId, (-1,)), version_key(version))
    offered: Dict[str, Any] = {}
    for entry in catalogue:
        if version_key(entry.version) <= newest.get(entry.id, (-1,)):
            continue  # installed, or older than an installed version
        if entry.id not in offered or version_key(entry.version) > version_key(offered[entry.id].version):
            offered[entry.id] = entry
    for entry in offered.values():
        choices.append(
            ModelChoice(
                id=entry.id,
                version=entry.version,
                name=entry.name,
                description=entry.description,
                structures=tuple(STRUCTURES[s].display_name if s in STRUCTURES else s for s in entry.structures),
                trainedOn=_trainedOn({}, entry.license),
                license=dict(entry.license),
                installed=False,
            )
        )
    return sorted(choices, key=lambda c: (not c.installed, c.id != defaultId))


def modelLabels(store: Any, spec: str, model: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Labels (value, name, display name, colour, terminology) of the model that produced a result.

    ``spec`` is what the run was given (a package folder is read directly);
    ``model`` is the result's ``{"id", "version"}``, looked up in the store.
    """
    from UNetSegmentLib.model_package import ModelPackage

    if os.path.isdir(spec):
        info = ModelPackage.load(spec, verify=False).info
    else:
        package = store.find(model.get("id", ""), model.get("version"))
        if package is None:
            raise RuntimeError(f"model {spec} is not installed")
        info = package.info
    return [label.to_dict() for label in info.labels]
