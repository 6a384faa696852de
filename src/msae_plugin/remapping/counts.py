"""Per-latent activation statistics of one SAE on one model: the counts PatchSAE compares.

PatchSAE (Lim et al. 2025, §3.2): a latent is *active* at a token when its code exceeds a
threshold τ (0.2 there); the class-level count ``a_c[s]`` is the number of (image, token) pairs
of class c where latent s is active; the dataset-level count sums over classes. Firing frequency
(code > 0) and mean activation when firing are the per-latent statistics of the scatter plots.

Tokens: by default CLS + patch tokens only (``n_prefix + grid`` positions); prompt tokens that
an adapted model appends (``adaptation.visual_prompts``) are left out so both models are counted
on the same positions, and counted only with ``include_extra_tokens=True`` (the released PatchSAE
code counts MaPLe's prompt tokens too; the brief's proposal treats that as a separate variant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from msae_plugin.errors import RemappingError


@dataclass
class ActivationSummary:
    """Counts of one SAE on one model over a labelled image set."""

    counts: torch.Tensor  # [C, d_sae] class-level active (image, token) counts, code > tau
    image_counts: torch.Tensor  # [C] images per class
    fires_token: torch.Tensor  # [d_sae] tokens with code > 0
    fires_image: torch.Tensor  # [d_sae] images with a token > 0
    active_sum: torch.Tensor  # [d_sae] sum of codes where > 0
    n_tokens: int
    n_images: int
    tau: float

    @property
    def dataset_counts(self) -> torch.Tensor:
        return self.counts.sum(0)

    @property
    def freq(self) -> torch.Tensor:
        """Firing frequency per token (code > 0)."""
        return self.fires_token / max(1, self.n_tokens)

    @property
    def mean_active(self) -> torch.Tensor:
        return self.active_sum / self.fires_token.clamp(min=1)


def sae_codes(sae: Any, x: torch.Tensor, k: int | None) -> torch.Tensor:
    """Codes of ``x`` (an MSAE at ladder ``k`` when given, else its default encode)."""
    x = x.to(sae.dtype)
    if getattr(sae.cfg, "ladder", None) and k is not None:
        return sae.encode(x, k=k)
    if k is not None:
        raise RemappingError(
            f"k={k} needs an MSAE (a ladder of TopK levels); this {sae.cfg.architecture()} SAE "
            "has one encode. Leave k out."
        )
    return sae.encode(x)


def check_k(sae: Any, k: int | None) -> None:
    if k is not None and not 1 <= k <= sae.cfg.d_sae:
        raise RemappingError(f"k={k} is outside 1..d_sae={sae.cfg.d_sae}; pick a ladder level "
                             f"such as {list(getattr(sae.cfg, 'ladder', []) or [])[:4]}.")


def n_base_tokens(model: Any) -> int:
    """CLS + patch positions of a HookedOpenCLIP image forward (prompt tokens excluded)."""
    gh, gw = model.cfg.grid_size
    return int(model.cfg.n_prefix_tokens) + gh * gw


@torch.no_grad()
def summarize(
    zsm: Any,
    sae: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    tau: float = 0.2,
    k: int | None = None,
    include_extra_tokens: bool = False,
    batch_size: int = 128,
) -> ActivationSummary:
    """Count the SAE's activations on ``zsm.model`` at the SAE's hook (see module)."""
    if not tau > 0:
        raise RemappingError(f"threshold tau must be > 0 (PatchSAE uses 0.2), got {tau!r}; a "
                             "threshold of 0 counts every firing token as 'active'.")
    check_k(sae, k)
    hook = str(sae.cfg.metadata.hook_name)
    labels = torch.as_tensor(labels).long()
    if len(labels) != len(images):
        raise RemappingError(f"{len(labels)} labels for {len(images)} images; pass one per image.")
    d_sae = sae.cfg.d_sae
    counts = torch.zeros(n_classes, d_sae)
    fires_token = torch.zeros(d_sae)
    fires_image = torch.zeros(d_sae)
    active_sum = torch.zeros(d_sae, dtype=torch.float64)
    n_tok = n_base_tokens(zsm.model)
    total_tokens = 0
    from msae_plugin.vision.hook_names import block_of

    stop = None if block_of(hook) is None else block_of(hook) + 1
    for i in range(0, len(images), batch_size):
        _, cache = zsm.model.run_with_cache(images[i:i + batch_size], names_filter=[hook],
                                            stop_at_layer=stop)
        a = cache[hook]
        if a.dim() == 2:
            a = a[:, None]
        if not include_extra_tokens:
            a = a[:, :n_tok]
        if a.shape[-1] != sae.cfg.d_in:
            raise RemappingError(
                f"{zsm.name}: {hook!r} is {a.shape[-1]} wide but the SAE has d_in={sae.cfg.d_in}; "
                "the SAE must be trained on this hook of the base model."
            )
        z = sae_codes(sae, a, k).float().cpu()  # [b, t, d_sae]
        y = labels[i:i + len(z)]
        counts.index_add_(0, y, (z > tau).sum(1).float())
        on = z > 0
        fires_token += on.sum((0, 1))
        fires_image += on.any(1).sum(0)
        active_sum += z.sum((0, 1)).double()
        total_tokens += z.shape[0] * z.shape[1]
    image_counts = torch.bincount(labels, minlength=n_classes).float()
    return ActivationSummary(counts, image_counts, fires_token, fires_image,
                             active_sum.float(), total_tokens, len(images), float(tau))
