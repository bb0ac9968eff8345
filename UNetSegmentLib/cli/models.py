"""``unetsegment models``: list, download, import, verify, locate and remove model packages."""

from __future__ import annotations

import argparse

from ..progress import ProgressReporter
from .common import EXIT_MODEL, EXIT_OK, EXIT_USAGE, Cancellation, CliError


def add_parser(sub, parents, **fmt) -> None:
    p = sub.add_parser("models", parents=parents, help="list, download, import, verify or remove models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    msub.add_parser("list", parents=parents, help="installed and downloadable models")
    q = msub.add_parser("download", parents=parents, help="download a model from the catalogue")
    q.add_argument("id", help="ID or ID@VERSION")
    q = msub.add_parser("import", parents=parents, help="install a model package .zip")
    q.add_argument("zip")
    q = msub.add_parser("verify", parents=parents, help="re-check the weights' checksums")
    q.add_argument("id", nargs="?", help="ID or ID@VERSION (default: every installed model)")
    q = msub.add_parser("path", parents=parents, help="the model cache folder, or an installed model's folder")
    q.add_argument("id", nargs="?")
    q = msub.add_parser("remove", parents=parents, help="delete a downloaded model")
    q.add_argument("id", help="ID or ID@VERSION")
    p.set_defaults(func=run)


def model_store():
    from ..store import ModelStore

    return ModelStore()


def _describe(pkg, store) -> str:
    where = "bundled" if store.bundled_dir in pkg.path.parents else "cache"
    line = f"  {pkg.info.id:<28} {pkg.info.version:<10} {', '.join(pkg.info.structures):<36} [{where}] {pkg.path}"
    return line + (f" [{pkg.info.members_summary()}]" if pkg.info.is_ensemble else "")


def run(args: argparse.Namespace, reporter: ProgressReporter, cancel: Cancellation) -> int:
    from ..model_package import ModelPackageError
    from ..store import parse_spec

    store = model_store()
    action = args.models_command
    if action == "list":
        installed = store.installed()
        print(f"Installed models (cache {store.models_dir}):")
        for pkg in installed:
            print(_describe(pkg, store))
        if not installed:
            print("  none")
        have = {(p.info.id, p.info.version) for p in installed}
        try:
            available = [e for e in store.catalogue if (e.id, e.version) not in have]
        except ModelPackageError as e:
            print(f"The model catalogue cannot be read: {e}")
            return EXIT_OK
        print("Available to download (unetsegment models download ID):")
        for e in available:
            size = f"{e.size / 1e6:.0f} MB" if e.size else "size unknown"
            note = "" if e.sha256 else " (not published yet)"
            print(f"  {e.id:<28} {e.version:<10} {', '.join(e.structures):<36} {size}{note}")
        if not available:
            print("  none")
        return EXIT_OK
    if action == "path":
        if args.id:
            model_id, version = parse_spec(args.id)
            pkg = store.find(model_id, version)
            if pkg is None:
                from ..store import ModelNotFoundError

                raise ModelNotFoundError(f"model {args.id} is not installed")
            print(pkg.path)
        else:
            print(store.root)
        return EXIT_OK
    if action == "download":
        model_id, version = parse_spec(args.id)
        pkg = store.download(
            model_id, version, progress=reporter.bytes_callback("downloading"), should_cancel=cancel.is_set
        )
        reporter.end_line()
        print(f"Installed {pkg.info.id} {pkg.info.version} in {pkg.path}")
        return EXIT_OK
    if action == "import":
        pkg = store.import_zip(args.zip)
        print(f"Installed {pkg.info.id} {pkg.info.version} in {pkg.path}")
        return EXIT_OK
    if action == "verify":
        if args.id:
            targets = [parse_spec(args.id)]
        else:
            targets = [(p.info.id, p.info.version) for p in store.installed()]
            if not targets:
                print("No models installed.")
        code = EXIT_OK
        for model_id, version in targets:
            try:
                pkg = store.verify(model_id, version)
                checked = f"; {len(pkg.info.members)} members checked" if pkg.info.is_ensemble else ""
                print(f"ok      {pkg.info.id} {pkg.info.version} ({pkg.path}{checked})")
            except ModelPackageError as e:
                print(f"FAILED  {model_id} {version or ''}: {e}")
                code = EXIT_MODEL
        return code
    if action == "remove":
        model_id, version = parse_spec(args.id)
        store.remove(model_id, version)
        print(f"Removed {args.id} from {store.models_dir}")
        return EXIT_OK
    raise CliError(EXIT_USAGE, f"unknown models command {action!r}")
