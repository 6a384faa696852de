"""Evaluation metrics of the MSAE paper, defined as in its reference code.

* FVU — per sample, Var_j(x_j − x̂_j) / Var_j(x_j) over the d_in features, then the mean over
  samples (the paper's ``explained_variance_full``). We also report SAELens's batch-level
  ``explained_variance`` = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² for comparison with SAELens evals.
* cosine similarity — per sample cos(x, x̂), mean.
* L0 — mean number of non-zero latents; ``frac_zero`` is the paper's "sparsity"/"L0": the
  fraction of latents that are exactly zero, per sample, averaged (higher = sparser).
* dead fraction — latents that are zero on every evaluated sample.
* CKNNA (Huh et al. 2024, platonic-rep) between inputs and latent codes: linear kernels, mutual
  top-k nearest neighbours (diagonal excluded), unbiased HSIC on the masked kernels.

All metrics are computed in the input (raw activation) space, after the SAE's de-standardisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

RELU = "relu"


def fvu_per_sample(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-sample fraction of variance unexplained (variance over features)."""
    return (x - x_hat).var(dim=-1) / x.var(dim=-1).clamp_min(1e-12)


def cosine_per_sample(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(x, x_hat, dim=-1)


def hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator (Song et al. 2012) of two m×m kernel matrices (m > 3)."""
    m = K.shape[0]
    if m < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples, got {m}.")
    Kt = K.clone()
    Lt = L.clone()
    Kt.fill_diagonal_(0)
    Lt.fill_diagonal_(0)
    term1 = (Kt * Lt.T).sum()
    term2 = Kt.sum() * Lt.sum() / ((m - 1) * (m - 2))
    term3 = 2.0 * (Kt @ Lt).sum() / (m - 2)
    return (term1 + term2 - term3) / (m * (m - 3))


def _mutual_knn_mask(K: torch.Tensor, L: torch.Tensor, topk: int) -> torch.Tensor:
    n = K.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=K.device)
    Kh = K.masked_fill(eye, float("-inf"))
    Lh = L.masked_fill(eye, float("-inf"))
    mk = torch.zeros_like(K).scatter_(1, Kh.topk(topk, dim=1).indices, 1.0)
    ml = torch.zeros_like(L).scatter_(1, Lh.topk(topk, dim=1).indices, 1.0)
    return mk * ml


def cknna(A: torch.Tensor, B: torch.Tensor, topk: int = 10) -> float:
    """Centered kernel nearest-neighbour alignment of representations A (n×p) and B (n×q)."""
    n = A.shape[0]
    if B.shape[0] != n:
        raise ValueError(f"A and B must have the same number of rows, got {n} and {B.shape[0]}.")
    if not 2 <= topk < n:
        raise ValueError(f"topk must be in [2, n−1] = [2, {n - 1}], got {topk}.")
    A = A.double()
    B = B.double()
    K = A @ A.T
    L = B @ B.T

    def sim(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        mask = _mutual_knn_mask(P, Q, topk)
        return hsic_unbiased(mask * P, mask * Q)

    kl, kk, ll = sim(K, L), sim(K, K), sim(L, L)
    return float(kl / (torch.sqrt(kk * ll) + 1e-6))


class _Accumulator:
    """Streaming sums for one evaluation mode (a k, or the ReLU path)."""

    def __init__(self, d_sae: int, device: torch.device):
        self.n = 0
        self.fvu = 0.0
        self.cos = 0.0
        self.l0 = 0.0
        self.frac_zero = 0.0
        self.sq_err = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.bool, device=device)

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor) -> None:
        nz = (z != 0).float()
        self.n += x.shape[0]
        self.fvu += float(fvu_per_sample(x, x_hat).sum())
        self.cos += float(cosine_per_sample(x, x_hat).sum())
        self.l0 += float(nz.sum())
        self.frac_zero += float((1 - nz.mean(-1)).sum())
        self.sq_err += float((x - x_hat).pow(2).sum())
        self.fired |= nz.bool().any(0)

    def result(self, total_var: float) -> dict[str, dict[str, float]]:
        n = max(self.n, 1)
        return {
            "reconstruction_quality": {
                "fvu": self.fvu / n,
                "cossim": self.cos / n,
                "mse": self.sq_err / n,
                "explained_variance": 1.0 - self.sq_err / max(total_var, 1e-12),
            },
            "sparsity": {
                "l0": self.l0 / n,
                "frac_zero": self.frac_zero / n,
                "dead_fraction": float((~self.fired).float().mean()),
                "n_dead": int((~self.fired).sum()),
            },
        }


def mode_name(k: int | None) -> str:
    return RELU if k is None else f"k={k}"


@torch.no_grad()
def evaluate_sae(
    sae: Any,
    activations: torch.Tensor | Iterable[torch.Tensor],
    ks: Sequence[int | None] | None = None,
    batch_size: int = 4096,
    cknna_samples: int = 1000,
    cknna_topk: int = 10,
) -> dict[str, Any]:
    """Evaluate an MSAE at every k of ``ks`` (default: its ladder plus the ReLU path).

    Works for any SAELens SAE whose ``encode`` accepts ``k=`` (MSAE) — for other SAEs pass
    ``ks=[None]`` to evaluate their own ``encode``. Returns a nested dict in SAELens's style::

        {"k=64": {"reconstruction_quality": {...}, "sparsity": {...}}, ..., "relu": {...},
         "alignment": {"cknna_relu": ...}}
    """
    if ks is None:
        ks = [*getattr(sae.cfg, "ladder", ()), None]
    if isinstance(activations, torch.Tensor):
        batches: Iterable[torch.Tensor] = activations.split(batch_size)
    else:
        batches = activations
    device = next(sae.parameters()).device
    accs = {mode_name(k): _Accumulator(sae.cfg.d_sae, device) for k in ks}
    sum_x = None
    sum_x2 = 0.0
    n_total = 0
    ck_x: list[torch.Tensor] = []
    ck_z: list[torch.Tensor] = []
    n_ck = 0
    for x in batches:
        x = x.to(device=device, dtype=sae.dtype)
        sum_x = x.sum(0) if sum_x is None else sum_x + x.sum(0)
        sum_x2 += float(x.pow(2).sum())
        n_total += x.shape[0]
        for k in ks:
            z = sae.encode(x, k=k) if k is not None or _accepts_k(sae) else sae.encode(x)
            x_hat = sae.decode(z)
            accs[mode_name(k)].update(x, x_hat, z)
            if k is None and n_ck < cknna_samples:
                take = min(cknna_samples - n_ck, x.shape[0])
                ck_x.append(x[:take].cpu())
                ck_z.append(z[:take].cpu())
        if ck_x:
            n_ck = sum(t.shape[0] for t in ck_x)
    if n_total == 0:
        raise ValueError("evaluate_sae got no activations: pass a non-empty tensor or iterator.")
    total_var = sum_x2 - float(sum_x.pow(2).sum()) / n_total
    out: dict[str, Any] = {name: acc.result(total_var) for name, acc in accs.items()}
    if ck_x and n_ck > max(cknna_topk, 4):
        out["alignment"] = {
            "cknna_relu": cknna(torch.cat(ck_x), torch.cat(ck_z), topk=cknna_topk)
        }
    return out


def _accepts_k(sae: Any) -> bool:
    import inspect

    return "k" in inspect.signature(sae.encode).parameters


def flatten(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"k=64/reconstruction_quality/fvu": 0.1, ...}`` — handy for logging or JSON."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def curve(results: dict[str, Any]) -> list[dict[str, float | str]]:
    """Rows (mode, l0, fvu, cossim, ...) sorted by L0, for tables and plots."""
    rows = []
    for mode, res in results.items():
        if mode == "alignment":
            continue
        rows.append(
            {
                "mode": mode,
                "l0": res["sparsity"]["l0"],
                "frac_zero": res["sparsity"]["frac_zero"],
                "dead_fraction": res["sparsity"]["dead_fraction"],
                "fvu": res["reconstruction_quality"]["fvu"],
                "cossim": res["reconstruction_quality"]["cossim"],
                "explained_variance": res["reconstruction_quality"]["explained_variance"],
            }
        )
    return sorted(rows, key=lambda r: r["l0"])


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of :func:`curve`."""
    lines = [f"{'mode':>10} {'L0':>9} {'frac_zero':>9} {'FVU':>8} {'cos':>7} {'dead':>6}"]
    for r in curve(results):
        lines.append(
            f"{r['mode']:>10} {r['l0']:9.2f} {r['frac_zero']:9.4f} {r['fvu']:8.4f} "
            f"{r['cossim']:7.4f} {r['dead_fraction']:6.3f}"
        )
    if "alignment" in results:
        lines.append(f"CKNNA(inputs, ReLU latents) = {results['alignment']['cknna_relu']:.4f}")
    return "\n".join(lines)
