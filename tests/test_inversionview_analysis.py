"""Task variables of addition samples and the agreement analysis of preimages."""

from __future__ import annotations

import math

import pytest

from msae_plugin.inversionview import addition as A
from msae_plugin.inversionview.addition_analysis import (
    VARIABLES,
    agreement,
    chance_agreement,
    encoded_variables,
    variables,
)


def test_variables_by_hand() -> None:
    v = variables(A.encode("673+489=1162"))
    assert (v["F1"], v["F2"], v["F3"], v["S1"], v["S2"], v["S3"]) == (6, 7, 3, 4, 8, 9)
    assert v["{F1,S1}"] == (4, 6) and v["F2+S2"] == 15
    assert v["C2"] == 1 and v["C3"] == 1  # 3+9 carries, 7+8+1 carries
    assert (v["A1"], v["A2"], v["A3"], v["A4"], v["len"]) == (1, 1, 6, 2, 4)
    v = variables(A.encode("123+456=579"))
    assert v["C2"] == 0 and v["C3"] == 0 and v["A4"] is None and v["len"] == 3
    # the sum comes from the operands, not from a (wrong) sampled answer
    assert variables([A.BOS, 1, 2, 3, A.PLUS, 4, 5, 6, A.EQUALS, 9, 9, 9, A.EOS])["A1"] == 5
    assert variables([A.BOS, 0, 2, 3, A.PLUS, 4, 5, 6, A.EQUALS]) is None  # leading zero
    assert variables([A.BOS, 1, 2, A.PLUS, 3, 4, 5, 6, A.EQUALS]) is None  # malformed


def test_agreement_and_encoded_variables() -> None:
    q = A.encode("673+489=1162")
    same_hundreds = [A.encode(t) for t in ("612+400=1012", "401+699=1100", "699+401=1100")]
    same_hundreds.append([A.BOS, A.PLUS, 1])  # invalid samples are ignored
    a = agreement(q, same_hundreds)
    assert a["{F1,S1}"] == 1.0 and a["F1+S1"] == 1.0
    assert a["F1"] == pytest.approx(2 / 3) and a["S1"] == pytest.approx(2 / 3)
    chance = chance_agreement(q, n=2000)
    assert chance["F1"] == pytest.approx(0.1, abs=0.03) and chance["C2"] > 0.3
    enc = encoded_variables(a, chance)
    assert "{F1,S1}" in enc and "F1+S1" not in enc and "F1" not in enc  # finest kept only
    assert all(math.isnan(x) for x in agreement(q, [[A.BOS]]).values())
    assert set(a) == set(VARIABLES)
    with pytest.raises(A.AdditionTaskError, match="not a problem"):
        agreement([A.BOS, 1], same_hundreds)
