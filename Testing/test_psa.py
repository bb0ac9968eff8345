"""PSA density: the values, the zonal split, the range check and the clinical CSV."""

from __future__ import annotations

import pytest

from UNetSegmentLib.psa import PSAError, check_psa, psa_density, read_psa_csv


def test_density_of_a_whole_gland():
    d = psa_density(6.5, {"prostate": 43.1})
    assert d == {"psa_ng_ml": 6.5, "gland_ml": 43.1, "psa_density": round(6.5 / 43.1, 3)}
    assert d["psa_density"] == 0.151


def test_a_zonal_model_adds_the_transition_zone():
    d = psa_density(8.0, {"peripheral_zone": 15.0, "transition_zone": 25.0})
    assert d["gland_ml"] == 40.0 and d["psa_density"] == 0.2
    assert d["transition_zone_ml"] == 25.0 and d["tz_psa_density"] == 0.32


def test_no_gland_gives_no_density():
    assert psa_density(4.0, {"prostate": 0.0})["psa_density"] is None


@pytest.mark.parametrize("bad", [0, -1, 0.001, 1500, float("nan"), float("inf"), "abc", ""])
def test_values_outside_the_range_are_refused(bad):
    with pytest.raises(PSAError, match="ng/mL"):
        check_psa(bad)


def test_accepted_values():
    assert check_psa("6.5") == 6.5 and check_psa(0.01) == 0.01 and check_psa(1000) == 1000.0


def test_clinical_csv(tmp_path):
    path = tmp_path / "clinical.csv"
    path.write_text("Case,Age,PSA\ncase01,63,6.5\ncase02,70,\n case03 ,58,12\n", encoding="utf-8")
    assert read_psa_csv(path) == {"case01": 6.5, "case03": 12.0}
    path.write_text("case,psa\ncase01,6.5\ncase02,-3\n", encoding="utf-8")
    with pytest.raises(PSAError, match=r"line 3 \(case02\)"):
        read_psa_csv(path)
    path.write_text("patient,value\nx,1\n", encoding="utf-8")
    with pytest.raises(PSAError, match="'psa' column"):
        read_psa_csv(path)
    with pytest.raises(PSAError, match="cannot read"):
        read_psa_csv(tmp_path / "missing.csv")
