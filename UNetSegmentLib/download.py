"""Streamed, resumable, cancellable HTTP downloads and safe zip extraction.

Only the standard library (``urllib``): no ``requests`` dependency, so this
runs unchanged inside 3D Slicer. :mod:`UNetSegmentLib.store` builds the model
cache on these two functions; nothing here knows about models.
"""

from __future__ import annotations

import http.client
import logging
import shutil
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from . import __version__
from .model_package import ModelPackageError

log = logging.getLogger(__name__)

#: Bytes read from the socket per step; progress and cancellation are checked between steps.
CHUNK_SIZE = 1 << 16
#: A dropped connection is resumed until this many attempts in a row add no byte...
MAX_ATTEMPTS = 4
#: ... or this many requests were made in all.
MAX_REQUESTS = 100
#: Pause before the ``n``-th attempt in a row without progress is ``RETRY_DELAY_S * n`` seconds.
RETRY_DELAY_S = 0.2
#: A zip that unpacks to more than this is refused (a model package is tens of MB).
MAX_UNZIPPED_BYTES = 4 << 30
MAX_ZIP_MEMBERS = 10_000
#: The most a small document (a catalogue) fetched by :func:`fetch_bytes` may weigh.
MAX_DOCUMENT_BYTES = 16 << 20

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]


class DownloadError(ModelPackageError):
    """A download failed: no connection, an HTTP error, a dropped connection, a wrong size."""


class DownloadCancelled(DownloadError):
    """The caller's ``should_cancel()`` returned True; the partial file is kept for resuming."""


class ChecksumError(DownloadError):
    """A downloaded file is not the file the catalogue describes (sha256 mismatch)."""


class _Interrupted(Exception):
    """The connection dropped after the response started: worth resuming."""


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url


def _open(url: str, headers: dict, timeout: float):
    """``urlopen`` with our User-Agent; connection failures become one-line :class:`DownloadError`."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"cannot download {url!r}: only http, https and file addresses are supported")
    req = urllib.request.Request(url, headers={"User-Agent": f"UNetSegment/{__version__}", **headers})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot connect to {_host(url)} ({e.reason}); check the internet connection") from e
    except (OSError, http.client.HTTPException, ValueError) as e:  # timeouts are OSError
        raise DownloadError(
            f"cannot connect to {_host(url)} ({e or type(e).__name__}); check the internet connection"
        ) from e


def fetch_bytes(url: str, timeout: float = 30, max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The body of a small document (a catalogue) at ``url``; :class:`DownloadError` on any failure."""
    try:
        with _open(url, {}, timeout) as resp:
            data = resp.read(max_bytes + 1)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"cannot fetch {url}: the server answered HTTP {e.code} {e.reason}") from e
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(f"cannot fetch {url}: {e or type(e).__name__}") from e
    if len(data) > max_bytes:
        raise DownloadError(f"{url} is larger than {_mb(max_bytes)}; it is not a catalogue")
    return data


def download_file(
    url: str,
    dest: Path,
    expected_size: int = 0,
    progress: Optional[ProgressCallback] = None,
    should_cancel: Optional[CancelCallback] = None,
    timeout: float = 30,
) -> None:
    """Download ``url`` into ``dest``, resuming from what ``dest`` already holds.

    ``expected_size`` (bytes, 0 if unknown) bounds the download: a server that
    offers another size is refused. ``progress(done_bytes, total_bytes)`` is
    called after every chunk (``total_bytes`` is 0 if unknown); a server that
    ignores the ``Range`` request restarts the file from byte 0, and progress
    with it. ``should_cancel()`` is polled between chunks and raises
    :class:`DownloadCancelled`. A connection that drops mid-body or times out
    is resumed while attempts add bytes (see :data:`MAX_ATTEMPTS`). ``timeout`` (s) applies to connecting and
    to every socket read. ``dest`` is left in place on failure or
    cancellation, so a later call resumes; the caller verifies its checksum.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stalled = 0  # consecutive attempts that added no byte
    for attempt in range(1, MAX_REQUESTS + 1):
        if should_cancel is not None and should_cancel():
            raise DownloadCancelled("The download was cancelled.")
        have = dest.stat().st_size if dest.exists() else 0
        if expected_size and have > expected_size:
            dest.unlink()
            have = 0
        if expected_size and have == expected_size:
            log.info("%s is already complete (%d bytes)", dest.name, have)
            return
        try:
            _fetch_once(url, dest, have, expected_size, progress, should_cancel, timeout)
            return
        except _Interrupted as e:
            done = dest.stat().st_size if dest.exists() else 0
            stalled = 0 if done > have else stalled + 1
            if stalled >= MAX_ATTEMPTS or attempt == MAX_REQUESTS:
                total = f" of {_mb(expected_size)}" if expected_size else ""
                raise DownloadError(
                    f"the download from {_host(url)} was interrupted ({e}) after {_mb(done)}{total}; try again to resume"
                ) from None
            log.warning("download from %s interrupted (%s) at %d bytes; resuming", _host(url), e, done)
            time.sleep(RETRY_DELAY_S * (stalled + 1))


def _fetch_once(url, dest: Path, have: int, expected_size: int, progress, should_cancel, timeout: float) -> None:
    """One HTTP request: append from ``have`` on a 206 answer, rewrite from 0 on a 200 answer."""
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = _open(url, headers, timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:  # our partial file does not fit the server's file: start over
            dest.unlink()
            raise _Interrupted("the server refused to resume") from None
        raise DownloadError(f"the server {_host(url)} answered HTTP {e.code} {e.reason} for {url}") from e
    with resp:
        status = getattr(resp, "status", None) or 200
        start = _content_range_start(resp.headers.get("Content-Range")) if status == 206 else None
        if have and start != have:
            if status == 206:  # a range we did not ask for: trust nothing and start over
                dest.unlink()
                raise _Interrupted(f"the server resumed at byte {start}, not {have}")
            log.info("%s ignored the resume request; downloading %s again from the start", _host(url), dest.name)
            have = 0
        length = resp.headers.get("Content-Length")
        offered = have + int(length) if length and length.isdigit() else 0
        if expected_size and offered and offered != expected_size:
            raise DownloadError(
                f"{url} is {_mb(offered)} but the catalogue expects {_mb(expected_size)}; the catalogue may be out of date"
            )
        total = expected_size or offered
        done = have
        with open(dest, "ab" if have else "wb") as out:
            while True:
                if should_cancel is not None and should_cancel():
                    raise DownloadCancelled("The download was cancelled.")
                try:
                    chunk = resp.read(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                    raise _Interrupted(str(e) or type(e).__name__) from None
                if not chunk:
                    break
                if total and done + len(chunk) > total:
                    out.close()
                    dest.unlink()
                    raise DownloadError(f"{url} sent more than the expected {_mb(total)}; download stopped")
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    if total and done < total:
        raise _Interrupted("the connection closed early")


def _content_range_start(value: Optional[str]) -> Optional[int]:
    """First byte of a ``Content-Range: bytes START-END/TOTAL`` header, or None."""
    if not value or not value.strip().lower().startswith("bytes"):
        return None
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _member_parts(info: zipfile.ZipInfo, zip_name: str) -> Tuple[str, ...]:
    """The path components of a zip member; :class:`ModelPackageError` for unsafe members."""
    name = info.filename.replace("\\", "/")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    first = name.split("/")[0]
    if name.startswith("/") or (len(first) >= 2 and first[1] == ":") or ".." in parts:
        raise ModelPackageError(f"{zip_name} contains an unsafe file path {info.filename!r}; nothing was installed")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ModelPackageError(f"{zip_name} contains a symbolic link {info.filename!r}; nothing was installed")
    if info.flag_bits & 0x1:
        raise ModelPackageError(f"{zip_name} is encrypted; model packages are plain zip files")
    return parts


def safe_extract(zip_path: Path, dest: Path, max_bytes: int = MAX_UNZIPPED_BYTES) -> None:
    """Extract ``zip_path`` into the existing folder ``dest``, refusing anything unsafe.

    Refused with :class:`ModelPackageError`: absolute paths, ``..``
    components, drive letters, symbolic links, encrypted members, more than
    :data:`MAX_ZIP_MEMBERS` members and more than ``max_bytes`` unpacked
    bytes (zip bombs). macOS ``__MACOSX/`` and ``.DS_Store`` entries are
    skipped. Nothing is written before every member has been checked.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        z = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelPackageError(f"{zip_path.name} is not a readable zip file ({e})") from e
    with z:
        members = z.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise ModelPackageError(f"{zip_path.name} has {len(members)} files; a model package has a handful")
        plan: List[Tuple[zipfile.ZipInfo, Tuple[str, ...]]] = []
        total = 0
        for info in members:
            parts = _member_parts(info, zip_path.name)
            if not parts or parts[0] == "__MACOSX" or parts[-1] == ".DS_Store" or info.is_dir():
                continue
            total += info.file_size
            if total > max_bytes:
                raise ModelPackageError(
                    f"{zip_path.name} unpacks to more than {_mb(max_bytes)}; it is not a model package"
                )
            plan.append((info, parts))
        try:
            for info, parts in plan:
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK_SIZE)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise ModelPackageError(f"{zip_path.name} is damaged ({e})") from e
