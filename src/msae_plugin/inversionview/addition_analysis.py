"""What the samples in an ε-preimage have in common: the paper's reading of InversionView
results (which digits / carries are fixed across the preimage), made quantitative.

For a query problem and the decoded samples inside its ε-preimage, each task variable (operand
digits, commutativity-invariant digit pairs, carries, answer digits) gets the fraction of
samples that agree with the query on it. A variable the activation encodes is shared by
(nearly) all of the preimage; one it does not encode agrees only at its chance rate, which is
measured the same way on random task inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from msae_plugin.inversionview import addition as A

# Variables in reading order. F/S = first/second operand digits (1 = hundreds), {F1,S1} = the
# unordered pair, C2 = carry out of the ones (F3+S3 ≥ 10), C3 = carry out of the tens
# (F2+S2+C2 ≥ 10), A1.. = digits of the true sum (A1 = '1' for a four-digit sum), len = its
# number of digits.
VARIABLES: tuple[str, ...] = (
    "F1", "F2", "F3", "S1", "S2", "S3", "{F1,S1}", "{F2,S2}", "{F3,S3}",
    "F1+S1", "F2+S2", "F3+S3", "C2", "C3", "A1", "A2", "A3", "A4", "len",
)


def variables(tokens: Sequence[int]) -> dict[str, object] | None:
    """Task variables of one token sequence, or ``None`` when its operand part
    (``B ddd + ddd =``) is not a valid problem. The sum is computed from the operands (a
    sample's own answer tokens may be wrong: the decoder is not a calculator)."""
    t = list(tokens)
    if len(t) < 9 or t[0] != A.BOS or t[4] != A.PLUS or t[8] != A.EQUALS:
        return None
    f, s = t[1:4], t[5:8]
    if any(not 0 <= d <= 9 for d in f + s) or f[0] == 0 or s[0] == 0:
        return None
    a = f[0] * 100 + f[1] * 10 + f[2]
    b = s[0] * 100 + s[1] * 10 + s[2]
    c2 = int(f[2] + s[2] >= 10)
    c3 = int(f[1] + s[1] + c2 >= 10)
    ans = str(a + b)
    out: dict[str, object] = {
        "F1": f[0], "F2": f[1], "F3": f[2], "S1": s[0], "S2": s[1], "S3": s[2],
        "{F1,S1}": tuple(sorted((f[0], s[0]))), "{F2,S2}": tuple(sorted((f[1], s[1]))),
        "{F3,S3}": tuple(sorted((f[2], s[2]))), "F1+S1": f[0] + s[0], "F2+S2": f[1] + s[1],
        "F3+S3": f[2] + s[2], "C2": c2, "C3": c3, "len": len(ans),
    }
    for i in range(4):
        out[f"A{i + 1}"] = int(ans[i]) if i < len(ans) else None
    return out


def agreement(query: Sequence[int], samples: Sequence[Sequence[int]]) -> dict[str, float]:
    """Per variable, the fraction of (valid) samples that agree with the query; NaN when no
    sample is a valid problem."""
    qv = variables(query)
    if qv is None:
        raise A.AdditionTaskError(f"the query {A.decode(list(query), True)!r} is not a problem")
    vs = [v for v in (variables(s) for s in samples) if v is not None]
    if not vs:
        return {k: float("nan") for k in VARIABLES}
    return {k: sum(v[k] == qv[k] for v in vs) / len(vs) for k in VARIABLES}


def chance_agreement(query: Sequence[int], n: int = 4000, seed: int = 0) -> dict[str, float]:
    """The same agreement for random held-out problems: each variable's chance rate."""
    _, test = A.train_test_split()
    g = torch.Generator().manual_seed(seed)
    rand = A.make_batch(torch.tensor(test), batch_size=n, generator=g)[0]
    return agreement(query, [r.tolist() for r in rand])


def encoded_variables(
    agree: dict[str, float], chance: dict[str, float], threshold: float = 0.95
) -> list[str]:
    """Variables fixed across the preimage (agreement ≥ ``threshold``) that are not fixed by
    chance (chance rate < ``threshold``), minus those implied by a finer one listed (e.g.
    ``{F1,S1}`` when F1 and S1 are both kept)."""
    kept = [k for k in VARIABLES
            if agree.get(k, 0) >= threshold and chance.get(k, 1) < threshold]
    implied: dict[str, tuple[tuple[str, ...], ...]] = {}
    for i in (1, 2, 3):
        pair, total = f"{{F{i},S{i}}}", f"F{i}+S{i}"
        implied[pair] = ((f"F{i}", f"S{i}"),)
        implied[total] = ((f"F{i}", f"S{i}"), (pair,))
    return [k for k in kept
            if not any(all(p in kept for p in finer) for finer in implied.get(k, ()))]
