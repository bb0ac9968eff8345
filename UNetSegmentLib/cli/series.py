"""``unetsegment series``: the numbered list of a DICOM folder's series, and which one ``segment`` would use.

Also the DICOM input options shared by ``segment`` and ``batch`` (``--series``,
``--series-uid``, ``--resample-uneven``) and :func:`read_case`, which reads an
input with them and says which series it chose and why, in one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from ..progress import ProgressReporter
from .common import EXIT_INPUT, EXIT_OK, EXIT_USAGE, Cancellation, CliError, positive_int


def add_input_options(p: argparse.ArgumentParser) -> None:
    """``--series``, ``--series-uid`` and ``--resample-uneven`` on a command that reads DICOM folders."""
    g = p.add_argument_group("DICOM folders")
    g.add_argument(
        "--series", type=positive_int, metavar="N", help="read series N of the list 'unetsegment series FOLDER' prints"
    )
    g.add_argument("--series-uid", metavar="UID", help="read the series with this SeriesInstanceUID")
    g.add_argument(
        "--resample-uneven",
        action="store_true",
        help="accept missing slices or uneven slice spacing by interpolating onto a uniform spacing (stated in the output)",
    )


def add_parser(sub, parents, **fmt) -> None:
    p = sub.add_parser("series", parents=parents, help="list the DICOM series of a folder or study tree", **fmt)
    p.add_argument("input", help="folder holding DICOM files at any depth (a DICOMDIR is followed)")
    p.set_defaults(func=run)


def print_listing(lines: List[str]) -> None:
    for line in lines:
        print(line)


def choice_error(e) -> CliError:
    """A ``SeriesChoiceError`` as exit 2: the numbered list goes to stdout, the one-line reason to stderr."""
    print_listing(e.listing)
    return CliError(EXIT_USAGE, str(e))


def read_case(source: Path, args: argparse.Namespace, reporter: ProgressReporter, series_uid: Optional[str] = None):
    """Read and validate ``source`` with the command's DICOM options: a ``validation.InputRead``.

    Its ``chosen`` is the one line that says which DICOM series was read and why (None for a
    file), printed here with the warnings; its ``dicom`` (``dicom.DicomRead``) holds the series,
    whose instances in slice order a DICOM SEG writer references (``dicom.series_instances``).
    ``series_uid`` overrides ``--series-uid`` (batch: the study's choice).
    """
    from ..dicom import SeriesChoiceError
    from ..validation import read_input_info

    uid = series_uid or getattr(args, "series_uid", None)
    if source.is_file() and (uid or getattr(args, "series", None)):
        raise CliError(EXIT_USAGE, f"--series and --series-uid choose a series in a DICOM folder; {source} is a file")
    try:
        got = read_input_info(
            source,
            args.channel,
            series=None if series_uid else getattr(args, "series", None),
            series_uid=uid,
            resample_uneven=getattr(args, "resample_uneven", False),
        )
    except SeriesChoiceError as e:
        raise choice_error(e) from None
    if got.chosen:
        print(f"Reading {got.chosen}")
    for w in got.warnings:
        reporter.warning(w)
    return got


def series_folder(got) -> Optional[Path]:
    """The one folder holding the DICOM series ``read_case`` read, or None (a file, or a series in several folders)."""
    folders = got.dicom.series.folders if got.dicom is not None else []
    return folders[0] if len(folders) == 1 else None


def run(args: argparse.Namespace, reporter: ProgressReporter, cancel: Cancellation) -> int:
    from ..dicom import SeriesChoiceError, choose_series, index_folder, listing

    folder = Path(args.input).expanduser().absolute()
    if not folder.is_dir():
        raise CliError(EXIT_INPUT, f"{folder} is not a folder; 'series' lists the DICOM series in a folder")
    index = index_folder(folder)
    studies = index.studies()
    where = " (via its DICOMDIR)" if index.via_dicomdir else ""
    print(f"{len(index.series)} series in {len(studies)} study(ies) under {folder}{where}:")
    print_listing(listing(index.series))
    for path, why in index.unreadable[:10]:
        print(f"  unreadable: {path} {why}")
    try:
        print(f"segment would read {choose_series(index).reason}")
    except SeriesChoiceError as e:
        print(f"segment needs a choice: {e}")
    if len(studies) > 1:
        for members in studies.values():
            try:
                print(
                    f"batch would read, for study {members[0].study_date or '?'} of patient "
                    f"{members[0].patient_id or '?'}: {choose_series(index, series=members).reason}"
                )
            except SeriesChoiceError as e:
                print(
                    f"batch would skip study {members[0].study_date or '?'} of patient {members[0].patient_id or '?'}: {str(e).split(';')[0]}"
                )
    return EXIT_OK
