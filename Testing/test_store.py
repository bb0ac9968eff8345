"""The model store: catalogue, download (resume, cancel, checksums), cache, zip import, resolve.

Downloads go to an HTTP server each test starts on 127.0.0.1; the cache is
always under ``tmp_path``.
"""

from __future__ import annotations

import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from conftest import make_tiny_package

from UNetSegmentLib.download import MAX_ATTEMPTS, safe_extract
from UNetSegmentLib.model_package import (
    MODEL_JSON,
    ONNX_FILE,
    WEIGHTS_FILE,
    ModelPackage,
    ModelPackageError,
    sha256_file,
)
from UNetSegmentLib.store import (
    DEFAULT_MODEL_ID,
    CatalogueEntry,
    ChecksumError,
    DownloadCancelled,
    DownloadError,
    ModelNotFoundError,
    ModelStore,
    default_cache_root,
    load_catalogue,
)

MODEL_ID, VERSION = "tiny-test-model", "0.0.1"


class FileServer:
    """A tiny HTTP server with switchable misbehaviour; records every request's path and Range header."""

    def __init__(self) -> None:
        self.files: Dict[str, bytes] = {}
        self.requests: List[Dict[str, Optional[str]]] = []
        self.drop_first = False  # first request: send half the body, then close the socket
        self.stall_first = 0.0  # first request: send half the body, then go silent for up to this many seconds
        self.stalling = False  # the first request is silent now (until `release` is set or stall_first passes)
        self.release = threading.Event()
        self.ignore_range = False
        self.body_limit: Optional[int] = None  # every request: send at most this many body bytes, then close
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append(
                    {"path": self.path, "range": self.headers.get("Range"), "during_stall": owner.stalling}
                )
                first = len(owner.requests) == 1
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and not owner.ignore_range:
                    start, status = int(rng.split("=")[1].split("-")[0]), 206
                payload = body[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if first and (owner.drop_first or owner.stall_first):
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    if owner.stall_first:
                        owner.stalling = True
                        owner.release.wait(owner.stall_first)
                        owner.stalling = False
                    return  # HTTP/1.0: the connection closes here
                self.wfile.write(payload if owner.body_limit is None else payload[: owner.body_limit])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop serving (idempotent): later requests are refused."""
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETSEGMENT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("UNETSEGMENT_CATALOGUE", raising=False)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> ModelPackage:
    """A real tiny package (a zip of ~0.26 MB: several 64 KiB download chunks) with a model card."""
    pkg = make_tiny_package(tmp_path_factory.mktemp("pkg") / "tiny")
    (pkg.path / "README.md").write_text("# Tiny test model\n\nRandom weights.\n", encoding="utf-8")
    return pkg


@pytest.fixture(scope="module")
def package_zip(package, tmp_path_factory) -> Path:
    return package.to_zip(tmp_path_factory.mktemp("zip") / "tiny.zip")


def _entry(url: str, zip_path: Path, **overrides) -> CatalogueEntry:
    d = dict(
        id=MODEL_ID,
        version=VERSION,
        name="Tiny",
        description="",
        structures=["prostate"],
        url=url,
        sha256=sha256_file(zip_path),
        size=zip_path.stat().st_size,
        license={},
    )
    d.update(overrides)
    return CatalogueEntry(**d)


def _serving_store(
    server: FileServer, tmp_path: Path, zip_path: Path, body: Optional[bytes] = None, **overrides
) -> ModelStore:
    """A store whose catalogue lists ``zip_path`` at the server (which serves ``body``, default the zip)."""
    server.files["/tiny.zip"] = zip_path.read_bytes() if body is None else body
    entry = _entry(overrides.pop("url", server.url + "/tiny.zip"), zip_path, **overrides)
    return ModelStore(root=tmp_path / "cache", catalogue=[entry], bundled_dir=tmp_path / "no-bundled")


def _assert_nothing_installed(store: ModelStore) -> None:
    assert store.find(MODEL_ID) is None
    assert store.installed() == []
    assert not list(store.root.rglob(MODEL_JSON)), "a model.json was left in the cache"
    assert not list(store.root.glob("staging/extract-*")), "an extraction folder was left behind"


def _versioned_zip(package: ModelPackage, tmp_path: Path, version: str, single_folder: bool = False) -> Path:
    """A zip of ``package`` relabelled as ``version``, optionally inside one top-level folder."""
    zip_path = tmp_path / f"tiny-{version}.zip"
    meta = json.loads((package.path / MODEL_JSON).read_text(encoding="utf-8"))
    meta["version"] = version
    prefix = f"tiny-{version}/" if single_folder else ""
    with zipfile.ZipFile(zip_path, "w") as z:
        z.writestr(prefix + MODEL_JSON, json.dumps(meta))
        z.write(package.weights_path, prefix + WEIGHTS_FILE)
        z.write(package.onnx_path, prefix + ONNX_FILE)
    return zip_path


# -- catalogue and cache root -----------------------------------------------------------


def test_default_cache_root_follows_environment(monkeypatch, tmp_path):
    assert default_cache_root() == tmp_path / "home"
    monkeypatch.delenv("UNETSEGMENT_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "unetsegment"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_cache_root() == tmp_path / "user" / ".cache" / "unetsegment"


def test_builtin_catalogue_lists_the_default_model():
    from UNetSegmentLib.model_package import ModelPackage
    from UNetSegmentLib.store import BUNDLED_DIR

    version = ModelPackage.load(BUNDLED_DIR / DEFAULT_MODEL_ID).info.version
    entries = {(e.id, e.version): e for e in load_catalogue()}
    entry = entries[(DEFAULT_MODEL_ID, version)]
    assert entry.url.endswith(f"/v{version}/prostate-wholegland-t2-{version}.zip")
    assert entry.structures == ["prostate"]


def test_catalogue_from_env_path_and_url_resolves_relative_urls(server, tmp_path, monkeypatch, package_zip):
    doc = {"format_version": 1, "models": [dict(_entry("tiny.zip", package_zip).to_dict())]}
    path = tmp_path / "mirror" / "catalogue.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc), encoding="utf-8")
    monkeypatch.setenv("UNETSEGMENT_CATALOGUE", str(path))
    (entry,) = load_catalogue()
    assert entry.url == (tmp_path / "mirror" / "tiny.zip").as_uri()
    assert entry.sha256 == sha256_file(package_zip) and entry.size == package_zip.stat().st_size

    server.files["/models/catalogue.json"] = json.dumps(doc).encode()
    (entry,) = load_catalogue(server.url + "/models/catalogue.json")
    assert entry.url == server.url + "/models/tiny.zip"


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"format_version": 2, "models": []}, "format_version"),
        ({"format_version": 1}, "no list of models"),
        ({"format_version": 1, "models": [{"id": "a", "version": "1.0.0"}]}, "has no url"),
        (
            {"format_version": 1, "models": [{"id": "a", "version": "1.0.0", "url": "x.zip", "sha256": "abc"}]},
            "64 hexadecimal",
        ),
        ({"format_version": 1, "models": [{"id": "A B", "version": "1.0.0", "url": "x.zip"}]}, "invalid id"),
        ({"format_version": 1, "models": [{"id": "a", "version": "1.0.0", "url": "x"}] * 2}, "twice"),
    ],
)
def test_malformed_catalogue_is_rejected(tmp_path, doc, message):
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ModelPackageError, match=message):
        load_catalogue(str(path))


def test_missing_or_unreachable_catalogue(tmp_path, server):
    with pytest.raises(ModelPackageError, match="cannot read the model catalogue"):
        load_catalogue(str(tmp_path / "nope.json"))
    with pytest.raises(DownloadError, match="404"):
        load_catalogue(server.url + "/catalogue.json")


# -- downloading ------------------------------------------------------------------------


def test_download_installs_and_resolves_offline(server, tmp_path, package_zip, monkeypatch):
    store = _serving_store(server, tmp_path, package_zip)
    seen: List[tuple] = []
    pkg = store.download(MODEL_ID, progress=lambda done, total: seen.append((done, total)))

    assert pkg.path == tmp_path / "cache" / "models" / MODEL_ID / VERSION
    ModelPackage.load(pkg.path, verify=True)
    size = package_zip.stat().st_size
    dones = [d for d, _ in seen]
    assert package_zip.stat().st_size > 4 * 65536
    assert len(seen) >= 4 and dones == sorted(dones) and dones[-1] == size
    assert {t for _, t in seen} == {size}
    assert not list(store.staging_dir.glob("*.part"))
    assert [p.info.version for p in store.installed()] == [VERSION]

    server.stop()
    monkeypatch.setenv("UNETSEGMENT_CATALOGUE", server.url + "/gone/catalogue.json")  # would fail if read
    offline = ModelStore(root=tmp_path / "cache", bundled_dir=tmp_path / "no-bundled")
    for spec in (MODEL_ID, f"{MODEL_ID}@{VERSION}"):
        again = offline.resolve(spec)
        assert again.path == pkg.path and again.info.weights_sha256 == pkg.info.weights_sha256


def test_resume_after_dropped_connection(server, tmp_path, package_zip):
    server.drop_first = True
    store = _serving_store(server, tmp_path, package_zip)
    pkg = store.download(MODEL_ID)

    assert len(server.requests) == 2
    assert server.requests[0]["range"] is None
    offset = int(server.requests[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset < package_zip.stat().st_size
    assert ModelPackage.load(pkg.path, verify=True).info.id == MODEL_ID


def test_connection_dropping_repeatedly(server, tmp_path, package_zip, monkeypatch):
    monkeypatch.setattr("UNetSegmentLib.download.RETRY_DELAY_S", 0.0)
    limit = package_zip.stat().st_size // 5 + 1
    server.body_limit = limit  # five requests for the whole zip: more than MAX_ATTEMPTS, each one adds bytes
    store = _serving_store(server, tmp_path, package_zip)
    pkg = store.download(MODEL_ID)
    assert len(server.requests) == 5 and server.requests[-1]["range"] == f"bytes={4 * limit}-"
    ModelPackage.load(pkg.path, verify=True)

    server.body_limit = 0  # headers, then nothing: give up after MAX_ATTEMPTS requests without progress
    server.requests.clear()
    store.remove(MODEL_ID)
    with pytest.raises(
        DownloadError, match=r"interrupted \(the connection closed early\) after 0.0 MB of \d.\d MB; try again"
    ):
        store.download(MODEL_ID)
    assert len(server.requests) == MAX_ATTEMPTS
    _assert_nothing_installed(store)


def test_server_ignoring_range_restarts_cleanly(server, tmp_path, package_zip):
    server.drop_first = True
    server.ignore_range = True
    store = _serving_store(server, tmp_path, package_zip)
    seen: List[int] = []
    pkg = store.download(MODEL_ID, progress=lambda done, total: seen.append(done))

    assert len(server.requests) == 2 and server.requests[1]["range"] is not None
    ModelPackage.load(pkg.path, verify=True)
    assert seen[-1] == package_zip.stat().st_size


def test_read_timeout_resumes(server, tmp_path, package_zip):
    server.stall_first = 60.0  # silent until released: only a read timeout lets the download go on
    store = _serving_store(server, tmp_path, package_zip)
    pkg = store.download(MODEL_ID, timeout=0.3)
    server.release.set()
    assert len(server.requests) == 2 and server.requests[1]["range"] is not None
    assert server.requests[1]["during_stall"], "the stalled read did not time out: the resume came after the stall"
    ModelPackage.load(pkg.path, verify=True)


def test_corrupt_download_is_not_installed(server, tmp_path, package_zip):
    body = bytearray(package_zip.read_bytes())
    body[len(body) // 2] ^= 0xFF
    store = _serving_store(server, tmp_path, package_zip, body=bytes(body))
    with pytest.raises(ChecksumError) as err:
        store.download(MODEL_ID)
    message = str(err.value)
    assert isinstance(err.value, ModelPackageError) and "\n" not in message
    assert sha256_file(package_zip)[:12] in message
    _assert_nothing_installed(store)
    assert not list(store.staging_dir.glob("*.part"))


def test_wrong_checksum_in_catalogue(server, tmp_path, package_zip):
    store = _serving_store(server, tmp_path, package_zip, sha256="0" * 64)
    with pytest.raises(ChecksumError, match=f"sha256 {sha256_file(package_zip)[:12]}.*expected 000000000000"):
        store.download(MODEL_ID)
    _assert_nothing_installed(store)


def test_published_zip_with_tampered_weights_is_not_installed(server, tmp_path, package):
    bad = tmp_path / "bad"
    pkg = make_tiny_package(bad)
    weights = bytearray(pkg.weights_path.read_bytes())
    weights[-1] ^= 0xFF
    pkg.weights_path.write_bytes(bytes(weights))
    zip_path = pkg.to_zip(tmp_path / "bad.zip")
    store = _serving_store(server, tmp_path, zip_path)  # the catalogue's zip checksum matches
    with pytest.raises(ModelPackageError, match="fail their checksum"):
        store.download(MODEL_ID)
    _assert_nothing_installed(store)
    assert not list(store.staging_dir.glob("*.part"))


def test_zip_holding_another_version_is_refused(server, tmp_path, package):
    zip_path = _versioned_zip(package, tmp_path, "0.0.2")
    store = _serving_store(server, tmp_path, zip_path)  # catalogue says 0.0.1
    with pytest.raises(ModelPackageError, match="holds model tiny-test-model 0.0.2, not tiny-test-model 0.0.1"):
        store.download(MODEL_ID)
    _assert_nothing_installed(store)


def test_http_404(server, tmp_path, package_zip):
    store = _serving_store(server, tmp_path, package_zip, url=server.url + "/missing.zip")
    with pytest.raises(DownloadError, match=r"Cannot download model tiny-test-model 0\.0\.1: .*HTTP 404"):
        store.download(MODEL_ID)
    _assert_nothing_installed(store)


def test_size_differing_from_catalogue(server, tmp_path, package_zip):
    store = _serving_store(server, tmp_path, package_zip, size=package_zip.stat().st_size + 10)
    with pytest.raises(DownloadError, match="catalogue expects"):
        store.download(MODEL_ID)
    _assert_nothing_installed(store)


def test_connection_refused_fails_fast(tmp_path, package_zip):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = _entry(f"http://127.0.0.1:{port}/tiny.zip", package_zip)
    store = ModelStore(root=tmp_path / "cache", catalogue=[entry], bundled_dir=tmp_path / "none")
    with pytest.raises(DownloadError, match="cannot connect to 127.0.0.1"):
        store.download(MODEL_ID, timeout=2)
    _assert_nothing_installed(store)


def test_unknown_model_and_unpublished_entry(tmp_path, package_zip):
    store = ModelStore(
        root=tmp_path / "cache", catalogue=[_entry("x.zip", package_zip, sha256="")], bundled_dir=tmp_path / "none"
    )
    with pytest.raises(ModelNotFoundError, match="Unknown model 'nope'.*tiny-test-model"):
        store.download("nope")
    with pytest.raises(ModelNotFoundError, match="no version 9.9.9"):
        store.download(MODEL_ID, "9.9.9")
    with pytest.raises(DownloadError, match="not published yet"):
        store.download(MODEL_ID)


def test_cancel_mid_download_then_resume(server, tmp_path, package_zip):
    store = _serving_store(server, tmp_path, package_zip)
    seen: List[int] = []
    with pytest.raises(DownloadCancelled):
        store.download(MODEL_ID, progress=lambda done, total: seen.append(done), should_cancel=lambda: len(seen) >= 2)
    assert 0 < seen[-1] < package_zip.stat().st_size
    _assert_nothing_installed(store)

    pkg = store.download(MODEL_ID)
    assert server.requests[-1]["range"] == f"bytes={seen[-1]}-"
    ModelPackage.load(pkg.path, verify=True)


# -- importing, verifying, removing ----------------------------------------------------------


def test_import_zip_top_level_and_single_folder(tmp_path, package, package_zip):
    store = ModelStore(root=tmp_path / "cache", catalogue=[], bundled_dir=tmp_path / "none")
    pkg = store.import_zip(package_zip)
    assert pkg.path == store.path_for(MODEL_ID, VERSION)
    assert (pkg.path / "README.md").read_bytes() == (package.path / "README.md").read_bytes()

    pkg2 = store.import_zip(_versioned_zip(package, tmp_path, "0.0.2", single_folder=True))
    assert pkg2.path == store.path_for(MODEL_ID, "0.0.2")
    assert [p.info.version for p in store.installed()] == ["0.0.2", VERSION]
    assert store.find(MODEL_ID).info.version == "0.0.2"
    assert store.find(MODEL_ID, VERSION).path == pkg.path


def test_import_replaces_an_installed_copy(tmp_path, package_zip):
    store = ModelStore(root=tmp_path / "cache", catalogue=[], bundled_dir=tmp_path / "none")
    other = make_tiny_package(tmp_path / "other", seed=1)
    store.import_zip(other.to_zip(tmp_path / "other.zip"))
    pkg = store.import_zip(package_zip)
    assert store.verify(MODEL_ID).info.weights_sha256 == pkg.info.weights_sha256 != other.info.weights_sha256
    assert len(store.installed()) == 1 and not list(store.staging_dir.iterdir())


def test_import_zip_with_tampered_weights_is_refused(tmp_path, package):
    zip_path = tmp_path / "tampered.zip"
    weights = bytearray(package.weights_path.read_bytes())
    weights[100] ^= 0x01
    with zipfile.ZipFile(zip_path, "w") as z:
        z.write(package.path / MODEL_JSON, MODEL_JSON)
        z.writestr(WEIGHTS_FILE, bytes(weights))
        z.write(package.onnx_path, ONNX_FILE)
    store = ModelStore(root=tmp_path / "cache", catalogue=[], bundled_dir=tmp_path / "none")
    with pytest.raises(ModelPackageError, match="fail their checksum"):
        store.import_zip(zip_path)
    _assert_nothing_installed(store)


def test_import_refuses_non_zips_and_non_packages(tmp_path):
    store = ModelStore(root=tmp_path / "cache", catalogue=[], bundled_dir=tmp_path / "none")
    (tmp_path / "notes.zip").write_text("not a zip", encoding="utf-8")
    with pytest.raises(ModelPackageError, match="not a readable zip"):
        store.import_zip(tmp_path / "notes.zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("a/readme.txt", "hello")
        z.writestr("b/readme.txt", "hello")
    with pytest.raises(ModelPackageError, match="is not a model package"):
        store.import_zip(tmp_path / "other.zip")
    with pytest.raises(ModelPackageError, match="does not exist"):
        store.import_zip(tmp_path / "absent.zip")
    _assert_nothing_installed(store)


@pytest.mark.parametrize("member", ["../evil.txt", "sub/../../evil.txt", "/tmp/unetsegment-evil.txt", "C:/evil.txt"])
def test_zip_slip_member_is_rejected(tmp_path, package, member):
    zip_path = tmp_path / "slip.zip"
    with zipfile.ZipFile(zip_path, "w") as z:
        z.write(package.path / MODEL_JSON, MODEL_JSON)
        z.write(package.weights_path, WEIGHTS_FILE)
        z.write(package.onnx_path, ONNX_FILE)
        z.writestr(member, "gotcha")
    store = ModelStore(root=tmp_path / "cache", catalogue=[], bundled_dir=tmp_path / "none")
    with pytest.raises(ModelPackageError, match="unsafe file path"):
        store.import_zip(zip_path)
    _assert_nothing_installed(store)
    assert not list(tmp_path.rglob("evil.txt")) and not Path("/tmp/unetsegment-evil.txt").exists()


def test_zip_bomb_and_symlink_are_rejected(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.json", b"\0" * (3 << 20))
    assert bomb.stat().st_size < 50_000
    (tmp_path / "out").mkdir()
    with pytest.raises(ModelPackageError, match="unpacks to more than"):
        safe_extract(bomb, tmp_path / "out", max_bytes=1 << 20)
    assert not list((tmp_path / "out").iterdir())

    link = tmp_path / "link.zip"
    info = zipfile.ZipInfo("model.json")
    info.external_attr = 0o120777 << 16  # a symbolic link to /etc/passwd
    with zipfile.ZipFile(link, "w") as z:
        z.writestr(info, "/etc/passwd")
    with pytest.raises(ModelPackageError, match="symbolic link"):
        safe_extract(link, tmp_path / "out")


def test_verify_detects_tampered_weights(tmp_path, package_zip):
    store = ModelStore(root=tmp_path / "cache", catalogue=[], bundled_dir=tmp_path / "none")
    pkg = store.import_zip(package_zip)
    assert store.verify(MODEL_ID, VERSION).path == pkg.path
    with open(pkg.weights_path, "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelPackageError, match="fail their checksum"):
        store.verify(MODEL_ID)
    with pytest.raises(ModelPackageError, match="is damaged.*remove it and download it again"):
        store.resolve(MODEL_ID, allow_download=False)
    with pytest.raises(ModelNotFoundError):
        store.verify("nope")


def test_remove_and_clear(tmp_path, package, package_zip):
    store = ModelStore(root=tmp_path / "cache", catalogue=[], bundled_dir=tmp_path / "none")
    store.import_zip(package_zip)
    store.import_zip(_versioned_zip(package, tmp_path, "0.0.2"))
    store.remove(MODEL_ID, VERSION)
    assert [p.info.version for p in store.installed()] == ["0.0.2"]
    store.remove(MODEL_ID)
    assert store.installed() == [] and not (store.models_dir / MODEL_ID).exists()
    with pytest.raises(ModelNotFoundError, match="not in the download cache"):
        store.remove(MODEL_ID)

    store.import_zip(package_zip)
    (store.staging_dir / "leftover.zip.part").write_bytes(b"x")
    store.clear()
    assert store.installed() == [] and not store.staging_dir.exists()
    assert not [p for p in store.root.iterdir() if p.name.startswith(".trash")]


def test_bundled_models_are_found_and_cache_wins(tmp_path, package, package_zip):
    bundled = tmp_path / "bundled"
    make_tiny_package(bundled / MODEL_ID, seed=3)
    store = ModelStore(root=tmp_path / "cache", catalogue=[], bundled_dir=bundled)
    found = store.find(MODEL_ID)
    assert found is not None and found.path == bundled / MODEL_ID
    assert store.resolve(MODEL_ID, allow_download=False).path == bundled / MODEL_ID
    with pytest.raises(ModelNotFoundError, match="bundled with UNetSegment"):
        store.remove(MODEL_ID)

    store.import_zip(package_zip)  # same version in the cache: listed once, the cached copy
    assert [p.path for p in store.installed()] == [store.path_for(MODEL_ID, VERSION)]
    store.remove(MODEL_ID)
    assert store.find(MODEL_ID).path == bundled / MODEL_ID


def test_resolve_accepts_folders_zips_and_names(tmp_path, package, package_zip):
    store = ModelStore(root=tmp_path / "cache", catalogue=[], bundled_dir=tmp_path / "none")
    assert store.resolve(str(package.path)).path == package.path
    assert store.resolve(str(package.path / MODEL_JSON)).path == package.path
    imported = store.resolve(str(package_zip))
    assert imported.path == store.path_for(MODEL_ID, VERSION)
    assert store.resolve(f"{MODEL_ID}@{VERSION}", allow_download=False).path == imported.path

    with pytest.raises(
        ModelNotFoundError, match=f"{DEFAULT_MODEL_ID} is not installed and downloading is switched off"
    ):
        store.resolve(None, allow_download=False)
    with pytest.raises(ModelNotFoundError, match="0.0.9 is not installed"):
        store.resolve(f"{MODEL_ID}@0.0.9", allow_download=False)
    with pytest.raises(ModelPackageError, match="No model folder or file"):
        store.resolve(str(tmp_path / "absent.zip"))
    with pytest.raises(ModelNotFoundError, match="neither a model folder"):
        store.resolve("Not A Model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelPackageError, match="is not a model package"):
        store.resolve(str(tmp_path / "empty"))


def test_resolve_downloads_when_allowed(server, tmp_path, package_zip):
    store = _serving_store(server, tmp_path, package_zip)
    seen: List[int] = []
    pkg = store.resolve(MODEL_ID, progress=lambda done, total: seen.append(done))
    assert pkg.path == store.path_for(MODEL_ID, VERSION) and seen[-1] == package_zip.stat().st_size
    n = len(server.requests)
    assert store.resolve(MODEL_ID).path == pkg.path and len(server.requests) == n
