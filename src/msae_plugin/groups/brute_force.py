"""Exact accuracy of a group-composition network over its whole input space, timed.

The input space is ``G×G`` (14,400 pairs for S5), so accuracy can be computed exactly: this is the
"brute-force verifier" of Gross et al. 2024 / Wu et al. 2024 that a compact proof must beat in
runtime and approach in tightness. A pair counts as correct only when the logit of ``x·y`` is the
strict maximum: a tie is not a certified answer (argmax would pick one arbitrarily).
"""

from __future__ import annotations

import time

import torch

from msae_plugin.groups.finite import FiniteGroup
from msae_plugin.groups.folded import FoldedWeights


def _as_folded(model_or_folded, group: FiniteGroup | None) -> tuple[FoldedWeights, FiniteGroup]:
    if isinstance(model_or_folded, FoldedWeights):
        if group is None:
            from msae_plugin.errors import GroupError

            raise GroupError("brute_force_accuracy(FoldedWeights, group): the group is required "
                             "for folded tables")
        folded = model_or_folded
    else:  # a GroupMLP (anything with .folded() and .group)
        folded = model_or_folded.folded()
        group = group if group is not None else model_or_folded.group
    folded.check(group)
    return folded, group


def correct_pairs(model_or_folded, group: FiniteGroup | None = None,
                  chunk: int | None = None) -> torch.Tensor:
    """``[|G|, |G|]`` bool: whether the network's answer for ``(x, y)`` is exactly ``x·y``
    (the correct logit is the strict maximum). Computed a chunk of x values at a time."""
    folded, group = _as_folded(model_or_folded, group)
    n, m = group.order, folded.n_neurons
    if chunk is None:  # ~32M float64 hidden entries per chunk at most
        chunk = max(1, min(n, (1 << 25) // max(1, n * m)))
    table = group.table
    out = torch.empty(n, n, dtype=torch.bool)
    w_r = folded.w_r.T  # [n, m]
    for start in range(0, n, chunk):
        xs = slice(start, min(n, start + chunk))
        h = torch.relu(folded.w_l[:, xs].T[:, None, :] + w_r[None, :, :])  # [cx, n, m]
        logits = h @ folded.w_u  # [cx, n, n]
        if folded.bias is not None:
            logits = logits + folded.bias
        target = table[xs]  # [cx, n]
        right = logits.gather(-1, target[..., None])  # [cx, n, 1]
        n_at_max = (logits >= right).sum(-1)  # 1 iff the right logit is the strict maximum
        out[xs] = n_at_max == 1
    return out


def brute_force_accuracy(model_or_folded, group: FiniteGroup | None = None,
                         chunk: int | None = None) -> tuple[float, float]:
    """``(accuracy, seconds)``: the fraction of all ``|G|²`` pairs answered correctly (ties are
    wrong) and the wall-clock time of the check on the folded tables (the same input a verifier
    gets, so the two runtimes compare). Accepts a :class:`GroupMLP` (folded first; the
    group defaults to the model's) or :class:`FoldedWeights` with its group."""
    folded, group = _as_folded(model_or_folded, group)  # folding is not part of the check
    start = time.perf_counter()
    ok = correct_pairs(folded, group, chunk)
    seconds = time.perf_counter() - start
    return float(ok.double().mean()), seconds
