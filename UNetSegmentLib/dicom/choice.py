"""Which series of a study is the axial T2-weighted one, decided from DICOM attributes (never file names).

Each series gets a kind from its headers (:func:`classify`):

- ``secondary capture`` (SOP class 1.2.840.10008.5.1.4.1.1.7*), ``not MR`` (Modality);
- ``localizer``: ImageType LOCALIZER, or a description/protocol naming a
  localizer, scout, survey or tri-pilot;
- ``ADC``, ``DWI``: ImageType ADC/TRACEW, a b-value, an ``ep_b`` sequence name,
  or a description naming diffusion;
- ``DCE / T1``: a description naming dynamic, perfusion, contrast or T1, a
  contrast agent, or short timing (TR < 1000 ms and TE < 30 ms);
- ``derived``: ImageType DERIVED (subtractions, MIPs, maps) not already named;
- ``T2``: a description or protocol naming T2 (not T2*), or long timing
  (TR >= 1500 ms and TE >= 60 ms) of a spin-echo (ScanningSequence SE) that is
  not echo-planar;
- else ``other``.

A T2 series whose slice normal is closest to the patient's head-foot axis is
``axial`` (oblique up to 45 degrees is still axial). :func:`choose_series`
picks the one axial T2 series; with none or several it raises
:class:`SeriesChoiceError`, whose ``listing`` is the numbered list to show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..io import ImageReadError
from .index import DicomIndex, Series

T2 = "T2"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
#: timing of a T2-weighted spin echo (ms)
T2_MIN_TR_MS, T2_MIN_TE_MS = 1500.0, 60.0
#: timing of a T1-weighted (DCE) acquisition (ms)
T1_MAX_TR_MS, T1_MAX_TE_MS = 1000.0, 30.0

_LOCALIZER = re.compile(r"locali[sz]|scout|survey|tri.?pilot|3.?plane|\bloc\b|aahscout|\bpilot", re.I)
_ADC = re.compile(r"\badc\b|apparent.?diff|_adc|adc_", re.I)
_DWI = re.compile(r"dwi|diff|ep2d_d|\btrace|\bb[-_ ]?\d{2,4}\b|calc.?bval|resolve", re.I)
_DCE = re.compile(r"dce|dyn|perf|vibe|twist|tricks|thrive|lava|\bt1|gad|contrast|\bpost|\bpre\b|subtract|\bsub\b", re.I)
_T2 = re.compile(r"t2(?![_ ]?(\*|star|map|fl2d|_?me2d|medic))|space|tse|fse|blade|propeller|haste|ssfse", re.I)
_T2_STRONG = re.compile(r"t2(?![_ ]?(\*|star|map))", re.I)


@dataclass(frozen=True)
class Kind:
    """What a series is (``T2``, ``DWI`` ...) and the attributes that said so."""

    name: str
    because: str


def _names(s: Series) -> str:
    """SeriesDescription and ProtocolName (once when they are the same)."""
    parts = [t for t in (s.description, s.protocol) if t]
    return " / ".join(dict.fromkeys(parts))


def classify(s: Series) -> Kind:
    """The kind of a series from its headers; see the module docstring for the rules."""
    names = _names(s)
    itype = set(s.image_type)
    quoted = f"'{names}'" if names else "(no description)"
    if s.sop_class_uid.startswith(SECONDARY_CAPTURE_PREFIX):
        return Kind("secondary capture", "SOP class Secondary Capture")
    if s.modality and s.modality != "MR":
        return Kind(f"not MR ({s.modality})", f"Modality {s.modality}")
    if "LOCALIZER" in itype or _LOCALIZER.search(names):
        return Kind("localizer", "ImageType LOCALIZER" if "LOCALIZER" in itype else f"name {quoted}")
    if itype & {"ADC", "EADC"} or _ADC.search(names):
        return Kind("ADC", "ImageType ADC" if itype & {"ADC", "EADC"} else f"name {quoted}")
    seq = s.sequence_name.lower()
    if itype & {"DIFFUSION", "TRACEW", "TRACE"} or (s.b_value or 0) > 0 or "ep_b" in seq or _DWI.search(names):
        why = (
            f"b-value {s.b_value:g}" if (s.b_value or 0) > 0 else f"sequence {s.sequence_name}" if "ep_b" in seq else ""
        )
        return Kind(
            "DWI",
            why or ("ImageType DIFFUSION/TRACEW" if itype & {"DIFFUSION", "TRACEW", "TRACE"} else f"name {quoted}"),
        )
    timing = _timing(s)
    short = (
        s.repetition_time_ms is not None
        and s.echo_time_ms is not None
        and s.repetition_time_ms < T1_MAX_TR_MS
        and s.echo_time_ms < T1_MAX_TE_MS
    )
    t2_name = bool(_T2_STRONG.search(names))
    if s.contrast_agent or (_DCE.search(names) and not t2_name) or (short and not t2_name):
        why = (
            f"contrast agent {s.contrast_agent}"
            if s.contrast_agent
            else f"name {quoted}"
            if _DCE.search(names)
            else timing
        )
        return Kind("DCE / T1", why)
    if "DERIVED" in itype:
        return Kind("derived", "ImageType DERIVED")
    long_se = (
        s.repetition_time_ms is not None
        and s.echo_time_ms is not None
        and s.repetition_time_ms >= T2_MIN_TR_MS
        and s.echo_time_ms >= T2_MIN_TE_MS
        and "EP" not in s.scanning_sequence.upper().split("\\")
    )
    if t2_name or (_T2.search(names) and long_se):
        reasons = [f"name {quoted}"] + ([timing] if long_se else [])
        return Kind(T2, " and ".join(reasons))
    if long_se:
        return Kind(T2, f"{timing} of a spin echo ({s.scanning_sequence or 'SE'})")
    return Kind("other", f"name {quoted}" + (f", {timing}" if timing else ""))


def _timing(s: Series) -> str:
    if s.repetition_time_ms is None or s.echo_time_ms is None:
        return ""
    return f"TR {s.repetition_time_ms:g} ms / TE {s.echo_time_ms:g} ms"


def is_t2_axial(s: Series) -> bool:
    return classify(s).name == T2 and s.plane == "axial" and not s.orientation_text.startswith("mixed")


def describe(s: Series) -> str:
    """One line of the numbered list: number, description, slices, size, orientation, kind."""
    kind = classify(s)
    desc = s.description or s.protocol or "(no description)"
    frames = f"{len(s.frames)} slices" + (" (multi-frame)" if s.multi_frame else "")
    study = f"patient {s.patient_id or '?'}, study {s.study_date or '?'}"
    return (
        f"{s.number:>3}. {desc[:40]:<40} {frames:<22} {s.size_text:<9} {s.orientation_text:<24} {kind.name:<18} {study}"
    )


def listing(series: Sequence[Series]) -> List[str]:
    """The numbered list of ``series``, with a header line."""
    head = f"{'#':>3}  {'description':<40} {'slices':<22} {'size':<9} {'orientation':<24} {'kind':<18} patient/study"
    return [head] + [describe(s) for s in series]


class SeriesChoiceError(ImageReadError):
    """No single axial T2 series can be chosen; ``listing`` is the numbered list of the series to choose from.

    A kind of ``ImageReadError`` for library callers (training readers); the command line answers it with
    exit 2 and the list, since a choice on the command line settles it.
    """

    def __init__(self, message: str, listing_lines: Sequence[str]) -> None:
        super().__init__(message)
        self.listing = list(listing_lines)


@dataclass(frozen=True)
class Choice:
    """The chosen series and the one-line reason given to the user."""

    series: Series
    reason: str
    warning: Optional[str] = None


def _left_out(series: Sequence[Series], chosen: Series) -> str:
    counts: dict = {}
    for s in series:
        if s is chosen:
            continue
        k = classify(s).name
        if k == T2:
            k = f"T2 {s.plane}"
        counts[k] = counts.get(k, 0) + 1
    if not counts:
        return ""
    return "; left out: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def choose_series(
    index: DicomIndex,
    number: Optional[int] = None,
    uid: Optional[str] = None,
    series: Optional[Sequence[Series]] = None,
) -> Choice:
    """The series to segment: ``number`` (``--series N``), ``uid`` (``--series-uid``), or the one axial T2 series.

    ``series`` restricts the automatic choice to some series of the index (one study, in batch).
    A lone series is used even when it does not look like an axial T2, with a warning.
    """
    pool = list(series if series is not None else index.series)
    if number is not None:
        match = [s for s in index.series if s.number == number]
        if not match:
            raise SeriesChoiceError(
                f"--series {number} does not exist; {index.root} holds series 1 to {len(index.series)}",
                listing(index.series),
            )
        return Choice(match[0], f"{match[0].label()}: chosen with --series {number}")
    if uid is not None:
        match = [s for s in index.series if s.uid == uid.strip()]
        if not match:
            raise SeriesChoiceError(f"no series with SeriesInstanceUID {uid} in {index.root}", listing(index.series))
        return Choice(match[0], f"{match[0].label()}: chosen with --series-uid")
    if len(pool) == 1:
        s = pool[0]
        kind = classify(s)
        reason = f"{s.label()} ({len(s.frames)} slices, {s.orientation_text}): the only series"
        warning = None
        # no evidence either way (kind 'other') is not warned about; a CT is warned about by validation
        if (
            kind.name not in ("other", T2)
            and not kind.name.startswith("not MR")
            or (kind.name == T2 and not is_t2_axial(s))
        ):
            what = f"{s.plane} {kind.name}" if kind.name == T2 else kind.name
            warning = (
                f"{s.label()} does not look like an axial T2-weighted series ({what}, from {kind.because}); "
                "the model was trained on axial T2 and its result may be wrong"
            )
        return Choice(s, reason, warning)
    candidates = [s for s in pool if is_t2_axial(s)]
    if len(candidates) == 1:
        s = candidates[0]
        reason = (
            f"{s.label()} ({len(s.frames)} slices, {s.orientation_text}): the only axial T2-weighted series "
            f"(T2 from {classify(s).because}){_left_out(pool, s)}"
        )
        return Choice(s, reason)
    where = f"the {len(pool)} series in {index.root}"
    if not candidates:
        message = f"no axial T2-weighted series among {where}"
    else:
        numbers = ", ".join(str(s.number) for s in candidates)
        message = f"{len(candidates)} axial T2-weighted series (numbers {numbers}) among {where}"
    raise SeriesChoiceError(
        f"{message}; choose one with --series N or --series-uid UID (list: unetsegment series {index.root})",
        listing(index.series),
    )


def study_choices(index: DicomIndex) -> List[Tuple[Tuple[str, str], Optional[Choice], Optional[SeriesChoiceError]]]:
    """For ``batch``: per study ``((patient, study uid), choice or None, error or None)``."""
    out = []
    for key, members in index.studies().items():
        try:
            out.append((key, choose_series(index, series=members), None))
        except SeriesChoiceError as e:
            out.append((key, None, e))
    return out
