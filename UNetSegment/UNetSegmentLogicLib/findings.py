"""What the panel shows of a result besides the segments: volumes, PSA density, confidence and quality flags.

Reads the result record of ``UNetSegmentLib segment`` (its ``UNETSEGMENT_RESULT`` line):

- ``volumes_ml``: structure name -> mL;
- ``confidence`` (None where the run had no probabilities) and ``confidence_threshold``;
- ``flags``: ``[{"kind", "code", "message"}]``, one plain sentence each; none blocks the result;
- ``psa``, when a PSA was given: ``psa_ng_ml``, ``gland_ml``, ``psa_density`` (ng/mL/cc, None for an
  empty gland) and, with a zonal model, ``transition_zone_ml`` and ``tz_psa_density``.

The command line's own summary (volumes, confidence, PSA density, one line per flag) reaches the
panel's log as it is. Pure Python: no Slicer, no Qt.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: argparse's prefix of a refused option ("argument --psa: "), left out of the panel's message.
_ARGUMENT_PREFIX = re.compile(r"^argument (--?[\w-]+(/--?[\w-]+)*|[\w-]+): ")


def psaArgument(psa: Optional[float]) -> Optional[str]:
    """``--psa`` value of the panel's PSA (ng/mL); None where it was not given (empty or 0).

    Any other value goes to the command line as it is: the command line checks the range and
    refuses a value outside it (exit 2) with a plain message, which the panel shows.
    """
    if psa is None or psa == 0:
        return None
    return f"{float(psa):g}"


def plainMessage(text: str) -> str:
    """One sentence for the user from the command line's error message (argparse's prefix left out)."""
    text = _ARGUMENT_PREFIX.sub("", str(text).strip())
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _density(value: Optional[float]) -> str:
    return f"{float(value):.3f} ng/mL/cc" if value is not None else "- (no gland segmented)"


def resultRows(result: Dict[str, Any], labels: Sequence[Dict[str, Any]] = ()) -> List[Tuple[str, str]]:
    """(what, value) rows of the Results table: each structure's volume, the PSA density, the confidence."""
    names = {label["name"]: label.get("display_name", label["name"]) for label in labels}
    volumes = result.get("volumes_ml") or {}
    rows = [(names.get(structure, structure), f"{float(ml):.1f} mL") for structure, ml in volumes.items()]
    psa = result.get("psa") or {}
    if psa:
        if len(volumes) != 1:
            rows.append(("Gland", f"{float(psa['gland_ml']):.1f} mL"))
        rows.append(("PSA", f"{float(psa['psa_ng_ml']):g} ng/mL"))
        rows.append(("PSA density", _density(psa.get("psa_density"))))
        if "tz_psa_density" in psa:
            rows.append(("Transition-zone PSA density", _density(psa.get("tz_psa_density"))))
    confidence = result.get("confidence")
    if confidence is not None:
        threshold = result.get("confidence_threshold")
        low = threshold is not None and float(confidence) < float(threshold)
        rows.append(("Confidence", f"{float(confidence):.2f}" + (f" (below {float(threshold):.2f})" if low else "")))
    return rows


def flagSentences(result: Dict[str, Any]) -> List[str]:
    """The quality flags of a result, one plain sentence each."""
    sentences = []
    for flag in result.get("flags") or []:
        message = str(flag.get("message", "") if isinstance(flag, dict) else flag).strip()
        if message:
            sentences.append(message if message.endswith(".") else message + ".")
    return sentences


def flagsText(result: Dict[str, Any]) -> str:
    """Text under the Results table: the flags as a list, or that there are none."""
    if "flags" not in result:
        return ""
    sentences = flagSentences(result)
    if not sentences:
        return "Quality checks: nothing to flag."
    heading = (
        "Quality flag (the result is kept; check it):"
        if len(sentences) == 1
        else (f"{len(sentences)} quality flags (the result is kept; check it):")
    )
    return "\n".join([heading] + [f"- {s}" for s in sentences])
