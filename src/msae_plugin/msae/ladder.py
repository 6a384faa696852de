"""The k ladder of a Matryoshka SAE.

The paper's ladder starts at k = 64 and doubles while k ≤ d_sae, then appends k = d_sae, whose
TopK is a plain ReLU (every latent may fire). We allow any start and integer factor, or an explicit
strictly increasing list; the last level is always d_sae (added when missing) so the dense ReLU
path is always trained, which is what the paper evaluates as its headline mode.
"""

from __future__ import annotations

from collections.abc import Sequence

from msae_plugin.errors import MSAEConfigError


def build_ladder(
    d_sae: int,
    k_start: int = 64,
    k_factor: int = 2,
    k_levels: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Resolve the ladder. Raises :class:`MSAEConfigError` with the fix on invalid input."""
    if d_sae < 1:
        raise MSAEConfigError(f"d_sae must be a positive integer, got {d_sae}.")
    if k_levels is not None:
        levels = [int(k) for k in k_levels]
        if len(levels) == 0:
            raise MSAEConfigError(
                "k_levels is empty: give at least one k (e.g. k_levels=[64, 128]) or leave it "
                "None to build the ladder from k_start and k_factor."
            )
        for a, b in zip(levels, levels[1:], strict=False):
            if b <= a:
                raise MSAEConfigError(
                    f"k_levels must be strictly increasing, got {levels} ({a} is followed by "
                    f"{b}). Sort the list and drop duplicates, e.g. {sorted(set(levels))}."
                )
        if levels[0] < 1:
            raise MSAEConfigError(f"every k must be ≥ 1, got {levels[0]} in k_levels={levels}.")
        if levels[-1] > d_sae:
            raise MSAEConfigError(
                f"k={levels[-1]} in k_levels={levels} exceeds d_sae={d_sae}: a TopK level cannot "
                f"keep more latents than the dictionary has. Drop the levels above {d_sae} or "
                "raise d_sae."
            )
    else:
        if k_start < 1:
            raise MSAEConfigError(f"k_start must be ≥ 1, got {k_start}.")
        if k_start > d_sae:
            raise MSAEConfigError(
                f"k_start={k_start} exceeds d_sae={d_sae}: lower k_start (the paper uses 64) "
                "or raise d_sae."
            )
        if k_factor < 2:
            raise MSAEConfigError(
                f"k_factor must be an integer ≥ 2 so the ladder increases, got {k_factor}."
            )
        levels = []
        k = k_start
        while k <= d_sae:
            levels.append(k)
            k *= k_factor
    if levels[-1] != d_sae:
        levels.append(d_sae)
    return tuple(levels)


def level_weights(n_levels: int, weighting: str) -> tuple[float, ...]:
    """UW: α_i = 1. RW: α_i = h − i + 1 (the sparsest level weighs most), as in the paper's code."""
    key = weighting.upper()
    if key == "UW":
        return tuple(1.0 for _ in range(n_levels))
    if key == "RW":
        return tuple(float(n_levels - i) for i in range(n_levels))
    raise MSAEConfigError(f"weighting must be 'UW' or 'RW', got {weighting!r}.")
