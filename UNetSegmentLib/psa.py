"""PSA density: the serum PSA divided by the gland volume, an item of a PI-RADS v2.1 report.

    psa = check_psa(6.5)                                   # ng/mL; PSAError outside PSA_RANGE
    psa_density(psa, {"prostate": 43.1})                   # {"psa_ng_ml": 6.5, "gland_ml": 43.1, "psa_density": 0.151}
    read_psa_csv("clinical.csv")                           # {"case01": 6.5, ...} from columns case, psa

The gland volume is the sum of the model's structures (prostate, or peripheral + transition zone);
with a zonal model the transition zone's volume and its PSA density (PSA / TZ volume) are added.
1 mL = 1 cc, so the density is in ng/mL/cc.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

#: PSA values accepted, ng/mL: below is a typo or a unit error (ug/L = ng/mL; pg/mL is 1000x), above is not a serum PSA.
PSA_RANGE = (0.01, 1000.0)
#: Column names accepted for the case and the PSA in a clinical CSV (lower-case).
CASE_COLUMNS = ("case", "case_id", "id", "name")
PSA_COLUMNS = ("psa", "psa_ng_ml", "psa_ng_per_ml")


class PSAError(ValueError):
    """A PSA value or a clinical CSV that cannot be used; the message says why."""


def check_psa(value: Union[str, float]) -> float:
    """A PSA in ng/mL as a float; :class:`PSAError` unless it is a number within :data:`PSA_RANGE`."""
    lo, hi = PSA_RANGE
    try:
        psa = float(value)
    except (TypeError, ValueError):
        raise PSAError(f"PSA {value!r} is not a number; give it in ng/mL, e.g. 6.5") from None
    if not math.isfinite(psa) or not lo <= psa <= hi:
        raise PSAError(f"PSA {value} ng/mL is outside the accepted {lo:g}-{hi:g} ng/mL; give it in ng/mL, e.g. 6.5")
    return psa


def psa_density(psa_ng_ml: float, volumes_ml: Mapping[str, float]) -> Dict[str, Optional[float]]:
    """Gland volume (mL), PSA density (ng/mL/cc) and, with a transition zone, its volume and density.

    ``volumes_ml``: structure name -> volume (``Prediction.volumes_ml``). A zero volume gives a density
    of None.
    """
    psa = check_psa(psa_ng_ml)
    gland = float(sum(volumes_ml.values()))
    out: Dict[str, Optional[float]] = {
        "psa_ng_ml": psa,
        "gland_ml": round(gland, 2),
        "psa_density": round(psa / gland, 3) if gland > 0 else None,
    }
    if "transition_zone" in volumes_ml:
        tz = float(volumes_ml["transition_zone"])
        out["transition_zone_ml"] = round(tz, 2)
        out["tz_psa_density"] = round(psa / tz, 3) if tz > 0 else None
    return out


def read_psa_csv(path: Union[str, Path]) -> Dict[str, float]:
    """Case name -> PSA (ng/mL) from a CSV with a case column and a ``psa`` column; blank PSAs are skipped.

    :class:`PSAError` names the file, the row and the reason for a missing column or a bad value.
    """
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = {name.strip().lower(): name for name in (reader.fieldnames or [])}
            case_col = next((fields[c] for c in CASE_COLUMNS if c in fields), None)
            psa_col = next((fields[c] for c in PSA_COLUMNS if c in fields), None)
            if case_col is None or psa_col is None:
                raise PSAError(f"{p} needs a 'case' column and a 'psa' column (ng/mL); it has {list(fields)}")
            out: Dict[str, float] = {}
            for line, row in enumerate(reader, start=2):
                case, value = (row.get(case_col) or "").strip(), (row.get(psa_col) or "").strip()
                if not case or not value:
                    continue
                try:
                    out[case] = check_psa(value)
                except PSAError as e:
                    raise PSAError(f"{p} line {line} ({case}): {e}") from None
            return out
    except OSError as e:
        raise PSAError(f"cannot read {p}: {e.strerror or e}") from None
