"""Behaviour shared by the inference and training MSAE classes.

Standardisation (paper §3, code ``SAEDataset``): inputs are mean-centred and scaled,
x' = (x − μ)·s, before the SAE; outputs are mapped back, x̂ = x̂'/s + μ. μ and s live in
persistent buffers (``input_mean``, ``input_scale``) so a saved checkpoint applies them at
inference and ``SAE.load_from_disk`` (which instantiates on the meta device) restores them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msae_plugin.errors import ActivationShapeError, MSAEConfigError
from msae_plugin.msae.nested import topk_relu


class MSAECoreMixin:
    """Mixed into ``SAE`` subclasses; relies on ``self.cfg`` being an MSAE config."""

    cfg: object
    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_enc: nn.Parameter
    b_dec: nn.Parameter
    input_mean: torch.Tensor
    input_scale: torch.Tensor
    input_stats_fitted: torch.Tensor

    def _init_msae_tensors(self) -> None:
        cfg = self.cfg
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=self.dtype, device=self.device))
        self.register_buffer(
            "input_mean", torch.zeros(cfg.d_in, dtype=self.dtype, device=self.device)
        )
        self.register_buffer("input_scale", torch.ones((), dtype=self.dtype, device=self.device))
        self.register_buffer(
            "input_stats_fitted", torch.zeros((), dtype=self.dtype, device=self.device)
        )

    # ---- input checks and standardisation -------------------------------------------------
    def _check_width(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            hook = getattr(self.cfg.metadata, "hook_name", None)
            where = f" (trained on hook {hook!r})" if hook else ""
            raise ActivationShapeError(
                f"MSAE expects activations of width d_in={self.cfg.d_in}{where}, got shape "
                f"{tuple(x.shape)}. Pass activations from the hook the SAE was trained on, or "
                f"train an SAE with d_in={x.shape[-1]}."
            )

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) * self.input_scale

    def destandardize(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.input_scale + self.input_mean

    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        self._check_width(sae_in)
        sae_in = sae_in.to(self.dtype)
        sae_in = self.reshape_fn_in(sae_in)
        sae_in = self.hook_sae_input(sae_in)
        sae_in = self.run_time_activation_norm_fn_in(sae_in)
        sae_in = self.standardize(sae_in)
        return sae_in - self.b_dec * self.cfg.apply_b_dec_to_input

    # ---- encode / decode ------------------------------------------------------------------
    def resolve_k(self, k: int | None) -> int | None:
        """``k`` if given, else ``cfg.default_k``; ``None`` means the ReLU-only path."""
        k = self.cfg.default_k if k is None else k
        if k is None:
            return None
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise MSAEConfigError(f"k must be a positive integer or None (ReLU path), got {k!r}.")
        if k > self.cfg.d_sae:
            raise MSAEConfigError(
                f"k={k} exceeds d_sae={self.cfg.d_sae}: TopK cannot keep more latents than the "
                f"dictionary has. Use k ≤ {self.cfg.d_sae} (trained ladder: "
                f"{list(self.cfg.ladder)}) or k=None for the ReLU-only path."
            )
        return k

    def hidden_pre_from(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = self.process_sae_in(x)
        return self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)

    def activate(self, hidden_pre: torch.Tensor, k: int | None) -> torch.Tensor:
        k = self.resolve_k(k)
        if k is None or k >= self.cfg.d_sae:
            return F.relu(hidden_pre)
        return topk_relu(hidden_pre, k)

    def encode_with_hidden_pre(
        self, x: torch.Tensor, k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_pre = self.hidden_pre_from(x)
        return self.hook_sae_acts_post(self.activate(hidden_pre, k)), hidden_pre

    def encode(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Latents at TopK ``k`` (any 1 ≤ k ≤ d_sae) or, with k=None and no ``default_k``,
        the ReLU-only code (the paper's headline mode)."""
        return self.encode_with_hidden_pre(x, k)[0]

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        out = feature_acts @ self.W_dec + self.b_dec
        out = self.destandardize(out)
        out = self.hook_sae_recons(out)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)

    def reconstruct(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """decode(encode(x, k)) without the error term: a convenience for evaluation."""
        return self.decode(self.encode(x, k))

    def set_default_k(self, k: int | None) -> None:
        """Choose the TopK used by ``forward`` (e.g. when spliced into a model)."""
        self.cfg.default_k = None if k is None else self.resolve_k(k)

    # ---- weight folding -----------------------------------------------------------------
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        raise MSAEConfigError(
            "MSAE keeps its own input statistics (input_mean, input_scale); SAELens's "
            "activation norm scaling does not apply. Use normalize_activations='none'."
        )

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Make decoder rows unit-norm. Exact for the ReLU path; TopK selections may change
        where row norms differed from 1 (training keeps them at 1, so this is a no-op there)."""
        norms = self.W_dec.norm(dim=-1).clamp_min(1e-12)
        self.W_dec.data /= norms[:, None]
        self.W_enc.data *= norms[None, :]
        self.b_enc.data *= norms
