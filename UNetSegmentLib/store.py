"""The model store: a catalogue of downloadable models and a per-user cache.

Layout of the cache (root: :func:`default_cache_root`)::

    <root>/models/<id>/<version>/   installed packages (model.json + weights.safetensors)
    <root>/staging/                 partial downloads (*.part) and folders being extracted

A package appears under ``models/`` only by one ``os.replace`` of a folder
that has been extracted and verified in ``staging/`` (same file system), so
a failed, corrupt or cancelled download never leaves a folder that looks
installed. Packages bundled with the library (``UNetSegmentLib/models/<id>/``)
are found too, so a fresh install works offline. Once a model is installed,
resolving it never touches the network.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .download import (
    CancelCallback,
    ChecksumError,
    DownloadCancelled,
    DownloadError,
    ProgressCallback,
    download_file,
    fetch_bytes,
    safe_extract,
)
from .model_package import _ID_RE, _SEMVER_RE, MODEL_JSON, ModelPackage, ModelPackageError, sha256_file

__all__ = [
    "DEFAULT_MODEL_ID",
    "CatalogueEntry",
    "ChecksumError",
    "DownloadCancelled",
    "DownloadError",
    "ModelNotFoundError",
    "ModelStore",
    "default_cache_root",
    "load_catalogue",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "prostate-wholegland-t2"
CATALOGUE_FORMAT_VERSION = 1
CATALOGUE_ENV = "UNETSEGMENT_CATALOGUE"
HOME_ENV = "UNETSEGMENT_HOME"
BUNDLED_DIR = Path(__file__).resolve().parent / "models"
BUILTIN_CATALOGUE = BUNDLED_DIR / "catalogue.json"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ModelNotFoundError(ModelPackageError):
    """No model with this id (and version) is installed or in the catalogue."""


def version_key(version: str) -> Tuple[Any, ...]:
    """Sort key of a semantic version: ``1.10.0 > 1.9.0 > 1.9.0-rc1``."""
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?", version)
    if not m:
        return (-1, -1, -1, 0, version)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if m.group(4) else 1, m.group(4) or "")


@dataclass(frozen=True)
class CatalogueEntry:
    """One downloadable model: where its zip lives, its sha256 (hex) and size (bytes).

    An empty ``sha256`` marks an entry not yet published; it cannot be downloaded.
    """

    id: str
    version: str
    name: str
    description: str
    structures: list
    url: str
    sha256: str
    size: int
    license: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``id version``, as messages name a model."""
        return f"{self.id} {self.version}"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], base: str = "") -> CatalogueEntry:
        """Parse and check one record; a relative ``url`` is resolved against ``base`` (the catalogue's address)."""
        if not isinstance(d, dict):
            raise ValueError("is not an object")
        missing = [k for k in ("id", "version", "url") if not d.get(k)]
        if missing:
            raise ValueError(f"has no {', '.join(missing)}")
        entry = cls(
            id=str(d["id"]),
            version=str(d["version"]),
            name=str(d.get("name") or d["id"]),
            description=str(d.get("description", "")),
            structures=[str(s) for s in d.get("structures", [])],
            url=_absolute_url(str(d["url"]), base),
            sha256=str(d.get("sha256", "")).lower(),
            size=int(d.get("size", 0)),
            license=dict(d.get("license", {})),
        )
        if not _ID_RE.match(entry.id):
            raise ValueError(f"has an invalid id {entry.id!r}")
        if not _SEMVER_RE.match(entry.version):
            raise ValueError(f"has an invalid version {entry.version!r}")
        if entry.sha256 and not _SHA256_RE.match(entry.sha256):
            raise ValueError("has a sha256 that is not 64 hexadecimal digits")
        if entry.size < 0:
            raise ValueError("has a negative size")
        return entry


def _absolute_url(url: str, base: str) -> str:
    """``url`` as given if it has a scheme, else relative to the catalogue at ``base`` (URL or folder)."""
    if len(urllib.parse.urlsplit(url).scheme) > 1 or not base:
        return url
    if re.match(r"^[a-z][a-z0-9+.-]+://", base, re.IGNORECASE):
        return urllib.parse.urljoin(base, url)
    return (Path(base).parent / url).resolve().as_uri()


def load_catalogue(source: Optional[str] = None) -> List[CatalogueEntry]:
    """The catalogue at ``source`` (a path or an http(s) URL), else ``$UNETSEGMENT_CATALOGUE``, else the built-in one.

    Raises :class:`DownloadError` if a remote catalogue cannot be fetched and
    :class:`ModelPackageError` if the catalogue cannot be read or is malformed.
    """
    src = str(source or os.environ.get(CATALOGUE_ENV) or BUILTIN_CATALOGUE)
    if re.match(r"^https?://", src, re.IGNORECASE):
        data = fetch_bytes(src)
        base = src
    else:
        path = (
            Path(urllib.request.url2pathname(urllib.parse.urlsplit(src).path)) if src.startswith("file:") else Path(src)
        )
        path = path.expanduser()
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelPackageError(f"cannot read the model catalogue {path}: {e.strerror or e}") from e
        base = str(path)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelPackageError(f"the model catalogue {src} is not valid JSON ({e})") from e
    return parse_catalogue(doc, base, src)


def parse_catalogue(doc: Any, base: str = "", name: str = "catalogue") -> List[CatalogueEntry]:
    """Entries of a parsed catalogue document ``{"format_version": 1, "models": [...]}``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise ModelPackageError(f"the model catalogue {name} has no list of models")
    if doc.get("format_version") != CATALOGUE_FORMAT_VERSION:
        raise ModelPackageError(
            f"the model catalogue {name} has format_version {doc.get('format_version')!r}; "
            f"this UNetSegment reads {CATALOGUE_FORMAT_VERSION}"
        )
    entries: List[CatalogueEntry] = []
    seen = set()
    for i, d in enumerate(doc["models"]):
        try:
            entry = CatalogueEntry.from_dict(d, base)
        except (TypeError, ValueError) as e:
            raise ModelPackageError(f"the model catalogue {name} is malformed: model {i + 1} {e}") from e
        if (entry.id, entry.version) in seen:
            raise ModelPackageError(f"the model catalogue {name} lists {entry.label} twice")
        seen.add((entry.id, entry.version))
        entries.append(entry)
    return entries


def default_cache_root() -> Path:
    """``$UNETSEGMENT_HOME``, else ``%LOCALAPPDATA%\\unetsegment`` on Windows, else
    ``$XDG_CACHE_HOME/unetsegment``, else ``~/.cache/unetsegment``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "unetsegment"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "unetsegment"
    return Path.home() / ".cache" / "unetsegment"


def parse_spec(spec: str) -> Tuple[str, Optional[str]]:
    """``"id"`` or ``"id@version"`` -> (id, version or None)."""
    model_id, _, version = spec.strip().partition("@")
    return model_id, (version or None)


def _package_root(folder: Path, zip_name: str) -> Path:
    """The package folder inside an extracted zip: the top level, or its single sub-folder."""
    if (folder / MODEL_JSON).is_file():
        return folder
    children = [p for p in folder.iterdir()]
    if len(children) == 1 and (children[0] / MODEL_JSON).is_file():
        return children[0]
    raise ModelPackageError(
        f"{zip_name} is not a model package (no {MODEL_JSON} at its top level or in its single folder)"
    )


class ModelStore:
    """Installed models (per-user cache, then the bundled ones) and the catalogue to download more.

    ``root`` defaults to :func:`default_cache_root`; ``catalogue`` to
    :func:`load_catalogue`, read only when a download or a catalogue lookup
    needs it; ``bundled_dir`` to the models shipped in ``UNetSegmentLib/models``.
    """

    def __init__(
        self,
        root: Optional[Path] = None,
        catalogue: Optional[List[CatalogueEntry]] = None,
        bundled_dir: Optional[Path] = None,
    ) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.models_dir = self.root / "models"
        self.staging_dir = self.root / "staging"
        self.bundled_dir = Path(bundled_dir) if bundled_dir is not None else BUNDLED_DIR
        self._catalogue = catalogue

    @property
    def catalogue(self) -> List[CatalogueEntry]:
        """The catalogue's entries (loaded on first use)."""
        if self._catalogue is None:
            self._catalogue = load_catalogue()
        return self._catalogue

    def entry(self, model_id: str, version: Optional[str] = None) -> CatalogueEntry:
        """The catalogue entry of ``model_id`` (newest version if ``version`` is None)."""
        matches = [e for e in self.catalogue if e.id == model_id]
        if not matches:
            known = ", ".join(sorted({e.id for e in self.catalogue})) or "none"
            raise ModelNotFoundError(f"Unknown model '{model_id}'. Models in the catalogue: {known}.")
        if version is not None:
            matches = [e for e in matches if e.version == version]
            if not matches:
                raise ModelNotFoundError(f"The catalogue has no version {version} of model '{model_id}'.")
        return max(matches, key=lambda e: version_key(e.version))

    def path_for(self, model_id: str, version: str) -> Path:
        """Where ``model_id`` ``version`` is (or would be) installed in the cache."""
        return self.models_dir / model_id / version

    # -- installed models ----------------------------------------------------------

    def _scan(self, folders: List[Path], where: str) -> List[ModelPackage]:
        found = []
        for folder in folders:
            try:
                found.append(ModelPackage.load(folder, verify=False))
            except ModelPackageError as e:
                log.warning("ignoring the broken %s model %s: %s", where, folder, e)
        return found

    def _cached(self) -> List[ModelPackage]:
        if not self.models_dir.is_dir():
            return []
        folders = sorted(
            p.parent for p in self.models_dir.glob(f"*/*/{MODEL_JSON}") if not p.parent.name.startswith(".")
        )
        packages = []
        for pkg in self._scan(folders, "cached"):
            if pkg.path != self.path_for(pkg.info.id, pkg.info.version):
                log.warning("ignoring %s: it holds %s %s", pkg.path, pkg.info.id, pkg.info.version)
            else:
                packages.append(pkg)
        return packages

    def _bundled(self) -> List[ModelPackage]:
        if not self.bundled_dir.is_dir():
            return []
        folders = [p.parent for p in self.bundled_dir.glob(f"*/{MODEL_JSON}")]
        folders += [p.parent for p in self.bundled_dir.glob(f"*/*/{MODEL_JSON}")]
        return self._scan(sorted(folders), "bundled")

    def installed(self) -> List[ModelPackage]:
        """Installed packages (cache, then bundled), sorted by id, newest version first.

        A version both cached and bundled is listed once, the cached copy.
        Weights are not re-checked here (see :meth:`verify`).
        """
        unique: Dict[Tuple[str, str], ModelPackage] = {}
        for pkg in self._cached() + self._bundled():
            unique.setdefault((pkg.info.id, pkg.info.version), pkg)
        newest_first = sorted(unique.values(), key=lambda p: version_key(p.info.version), reverse=True)
        return sorted(newest_first, key=lambda p: p.info.id)

    def find(self, model_id: str, version: Optional[str] = None) -> Optional[ModelPackage]:
        """The installed ``model_id`` (newest version if ``version`` is None), cache before bundled; None if absent."""
        for pkg in self.installed():
            if pkg.info.id == model_id and (version is None or pkg.info.version == version):
                return pkg
        return None

    def verify(self, model_id: str, version: Optional[str] = None) -> ModelPackage:
        """Re-check the weights' sha256 of an installed model; :class:`ModelPackageError` if they fail."""
        pkg = self.find(model_id, version)
        if pkg is None:
            what = f"{model_id} {version}" if version else model_id
            raise ModelNotFoundError(f"Model {what} is not installed.")
        return ModelPackage.load(pkg.path, verify=True)

    def remove(self, model_id: str, version: Optional[str] = None) -> None:
        """Delete ``model_id`` (one ``version``, or all) from the cache; bundled models stay."""
        folders = [
            pkg.path for pkg in self._cached() if pkg.info.id == model_id and version in (None, pkg.info.version)
        ]
        if version is not None and not folders and self.path_for(model_id, version).is_dir():
            folders = [self.path_for(model_id, version)]  # a broken copy
        if not folders:
            what = f"{model_id} {version}" if version else model_id
            bundled = any(p.info.id == model_id for p in self._bundled())
            hint = " It is bundled with UNetSegment and cannot be removed." if bundled else ""
            raise ModelNotFoundError(f"Model {what} is not in the download cache {self.models_dir}.{hint}")
        for folder in folders:
            self._discard(folder)
            log.info("removed %s", folder)
        if not any((self.models_dir / model_id).iterdir()):
            (self.models_dir / model_id).rmdir()

    def clear(self) -> None:
        """Delete every cached model and partial download (bundled models stay)."""
        for folder in (self.models_dir, self.staging_dir):
            if folder.exists():
                self._discard(folder)
        log.info("cleared the model cache %s", self.root)

    def _discard(self, folder: Path) -> None:
        """Move ``folder`` out of sight first (one rename), then delete it."""
        trash = self.root / f".trash-{uuid.uuid4().hex[:12]}"
        try:
            os.replace(folder, trash)
        except OSError as e:  # Windows: a file in use
            raise ModelPackageError(
                f"cannot remove {folder}: {e.strerror or e}; close programs using it and try again"
            ) from e
        shutil.rmtree(trash, ignore_errors=True)

    # -- installing ----------------------------------------------------------------

    def download(
        self,
        model_id: str,
        version: Optional[str] = None,
        progress: Optional[ProgressCallback] = None,
        should_cancel: Optional[CancelCallback] = None,
        timeout: float = 30,
    ) -> ModelPackage:
        """Download, check and install ``model_id`` from the catalogue (newest version if None).

        ``progress(done_bytes, total_bytes)`` follows the download;
        ``should_cancel()`` stops it with :class:`DownloadCancelled` (the
        partial file is kept so the next call resumes); ``timeout`` (s)
        applies to every socket operation. Raises :class:`ModelNotFoundError`,
        :class:`DownloadError`, :class:`ChecksumError` (also a
        :class:`DownloadError`) or :class:`ModelPackageError`.
        """
        entry = self.entry(model_id, version)
        if not entry.sha256:
            raise DownloadError(f"Model {entry.label} is not published yet (the catalogue has no checksum for it).")
        part = self.staging_dir / f"{entry.id}-{entry.version}-{entry.sha256[:16]}.zip.part"
        log.info("downloading %s from %s", entry.label, entry.url)
        try:
            download_file(entry.url, part, entry.size, progress, should_cancel, timeout)
        except DownloadCancelled:
            log.info("download of %s cancelled; %s kept for resuming", entry.label, part.name)
            raise
        except DownloadError as e:
            raise type(e)(f"Cannot download model {entry.label}: {e}") from e
        actual = sha256_file(part)
        if actual != entry.sha256:
            part.unlink()
            raise ChecksumError(
                f"The download of model {entry.label} is damaged or not the published file "
                f"(sha256 {actual[:12]}..., expected {entry.sha256[:12]}...); it was deleted, please try again."
            )
        if should_cancel is not None and should_cancel():
            raise DownloadCancelled("The download was cancelled.")
        try:
            return self._install_zip(part, expect=(entry.id, entry.version))
        finally:
            part.unlink(missing_ok=True)

    def import_zip(self, zip_path: Union[str, Path]) -> ModelPackage:
        """Install a package zip from disk, with the same checks as a download."""
        zip_path = Path(zip_path).expanduser()
        if not zip_path.is_file():
            raise ModelPackageError(f"The model file {zip_path} does not exist.")
        return self._install_zip(zip_path)

    def _install_zip(self, zip_path: Path, expect: Optional[Tuple[str, str]] = None) -> ModelPackage:
        """Extract into staging, load with weight verification, then move into place in one rename."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="extract-", dir=self.staging_dir))
        try:
            safe_extract(zip_path, tmp)
            staged = _package_root(tmp, zip_path.name)
            pkg = ModelPackage.load(staged, verify=True)
            got = (pkg.info.id, pkg.info.version)
            if expect is not None and got != expect:
                raise ModelPackageError(f"{zip_path.name} holds model {' '.join(got)}, not {' '.join(expect)}")
            target = self._move_into_place(staged, *got)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("installed %s %s in %s", pkg.info.id, pkg.info.version, target)
        return ModelPackage(target, pkg.info)

    def _move_into_place(self, staged: Path, model_id: str, version: str) -> Path:
        target = self.path_for(model_id, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        old = None
        try:
            if target.exists():
                old = self.staging_dir / f"old-{uuid.uuid4().hex[:12]}"
                os.replace(target, old)
            try:
                os.replace(staged, target)
            except OSError:
                if old is not None:
                    os.replace(old, target)
                    old = None
                raise
        except OSError as e:
            raise ModelPackageError(
                f"cannot install model {model_id} {version} into {target}: {e.strerror or e}"
            ) from e
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target

    # -- one entry point -------------------------------------------------------------

    def resolve(
        self,
        spec: Optional[str] = None,
        allow_download: bool = True,
        progress: Optional[ProgressCallback] = None,
        should_cancel: Optional[CancelCallback] = None,
    ) -> ModelPackage:
        """The verified package named by ``spec``.

        ``spec``: None (the default model), a package folder, a ``.zip``
        (imported first), or ``id`` / ``id@version`` (installed, else
        downloaded when ``allow_download``).
        """
        spec = (spec or "").strip() or DEFAULT_MODEL_ID
        path = Path(spec).expanduser()
        if path.is_dir():
            return ModelPackage.load(path, verify=True)
        if path.is_file():
            return ModelPackage.load(path.parent, verify=True) if path.name == MODEL_JSON else self.import_zip(path)
        if spec.lower().endswith(".zip") or "/" in spec or os.sep in spec:
            raise ModelPackageError(f"No model folder or file at {spec}.")
        model_id, version = parse_spec(spec)
        if not _ID_RE.match(model_id) or (version is not None and not _SEMVER_RE.match(version)):
            raise ModelNotFoundError(
                f"'{spec}' is neither a model folder, a model .zip file nor a model name (id or id@version)."
            )
        pkg = self.find(model_id, version)
        if pkg is not None:
            try:
                return ModelPackage.load(pkg.path, verify=True)
            except ModelPackageError as e:
                raise ModelPackageError(
                    f"The installed model {model_id} is damaged ({e}); remove it and download it again."
                ) from e
        what = f"{model_id} {version}" if version else model_id
        if not allow_download:
            raise ModelNotFoundError(
                f"Model {what} is not installed and downloading is switched off; allow downloads or import the model's .zip file."
            )
        return self.download(model_id, version, progress=progress, should_cancel=should_cancel)
