"""Behaviour shared by the inference and training MSAE classes.

Standardisation (paper §3, code ``SAEDataset``): inputs are mean-centred and scaled,
x' = (x − μ)·s, before the SAE; outputs are mapped back, x̂ = x̂'/s + μ. μ and s live in
persistent buffers (``input_mean``, ``input_scale``) so a saved checkpoint applies them at
inference and ``SAE.load_from_disk`` (which instantiates on the meta device) restores them.

TopK ranks latents by their contribution to the reconstruction, pre_j·‖W_dec_j‖ (as SAELens's
TopK does with ``rescale_acts_by_decoder_norm``). MSAE keeps decoder rows at unit norm, so this is
the paper's plain TopK of the pre-activations; for non-unit rows it is what makes
``fold_W_dec_norm`` (and the per-step decoder renormalisation) exact for every k.

SAELens's folds are exact here or refused: the activation-norm scaling factor is absorbed into
``input_mean`` / ``input_scale``, decoder norms into the encoder; a whitening cannot keep TopK
exact and raises :class:`FoldNotSupportedError` (a ``NotImplementedError``, SAELens's convention).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msae_plugin.errors import (
    ActivationShapeError,
    FoldNotSupportedError,
    MSAEConfigError,
    NonFiniteActivationsError,
)
from msae_plugin.msae.nested import topk_relu


class MSAECoreMixin:
    """Mixed into ``SAE`` subclasses; relies on ``self.cfg`` being an MSAE config."""

    cfg: Any
    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_enc: nn.Parameter
    b_dec: nn.Parameter
    input_mean: torch.Tensor
    input_scale: torch.Tensor
    input_stats_fitted: torch.Tensor

    #: ``encode`` refuses NaN/inf pre-activations. The check is one ``isfinite(...).all()``
    #: reduction, i.e. one host-device sync per call on GPU; set to ``False`` on an instance to
    #: skip it (e.g. inside CUDA graphs), at the price of NaN codes for non-finite inputs.
    check_finite: bool = True

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
    def _check_tensor(self, x: Any, what: str, width: int, name: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise ActivationShapeError(
                f"MSAE {what} expects a torch.Tensor, got {type(x).__name__}. Convert it first, "
                "e.g. torch.as_tensor(x)."
            )
        if x.is_complex():
            raise ActivationShapeError(
                f"MSAE {what} got a complex tensor ({x.dtype}); activations must be real. Pass "
                "x.real (or a float tensor)."
            )
        if x.dim() == 0 or x.shape[-1] != width:
            hook = getattr(self.cfg.metadata, "hook_name", None)
            where = f" (trained on hook {hook!r})" if hook and name == "d_in" else ""
            fix = (
                f"Pass activations from the hook the SAE was trained on, or train an SAE with "
                f"d_in={x.shape[-1] if x.dim() else '...'}."
                if name == "d_in"
                else "Pass codes produced by this SAE's encode()."
            )
            raise ActivationShapeError(
                f"MSAE {what} expects a last dimension of {name}={width}{where}, got shape "
                f"{tuple(x.shape)}. {fix}"
            )

    def _check_width(self, x: torch.Tensor) -> None:
        self._check_tensor(x, "encode", self.cfg.d_in, "d_in")

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) * self.input_scale

    def destandardize(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.input_scale + self.input_mean

    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        if not isinstance(sae_in, torch.Tensor):
            self._check_width(sae_in)
        sae_in = sae_in.to(self.dtype) if not sae_in.is_complex() else sae_in
        sae_in = self.reshape_fn_in(sae_in)  # hook_z SAEs: (..., heads, d_head) -> (..., d_in)
        self._check_width(sae_in)
        sae_in = self.hook_sae_input(sae_in)
        sae_in = self.run_time_activation_norm_fn_in(sae_in)
        sae_in = self.standardize(sae_in)
        return sae_in - self.b_dec * self.cfg.apply_b_dec_to_input

    # ---- encode / decode ------------------------------------------------------------------
    def resolve_k(self, k: Any) -> int | None:
        """``k`` if given, else ``cfg.default_k``; ``None`` means the ReLU-only path."""
        k = self.cfg.default_k if k is None else k
        if k is None:
            return None
        try:
            k_int = None if isinstance(k, bool) else operator.index(k)
        except TypeError:
            k_int = None
        if k_int is None or k_int < 1:
            raise MSAEConfigError(
                f"k must be a positive integer or None (ReLU path), got {k!r}. Pass e.g. k=64, "
                f"any 1 ≤ k ≤ d_sae={self.cfg.d_sae}."
            )
        if k_int > self.cfg.d_sae:
            raise MSAEConfigError(
                f"k={k_int} exceeds d_sae={self.cfg.d_sae}: TopK cannot keep more latents than the "
                f"dictionary has. Use k ≤ {self.cfg.d_sae} (trained ladder: "
                f"{list(self.cfg.ladder)}) or k=None for the ReLU-only path."
            )
        return k_int

    def _check_finite_pre(self, x: torch.Tensor, hidden_pre: torch.Tensor) -> None:
        """Refuse non-finite pre-activations (NaN/inf inputs, or overflow in the SAE's dtype).

        One reduction over the pre-activations; the slow diagnosis runs only on failure.
        """
        if not self.check_finite or bool(torch.isfinite(hidden_pre).all()):
            return
        if isinstance(x, torch.Tensor) and x.dim() > 0 and not x.is_complex():
            rows_in = ~torch.isfinite(x.reshape(-1, x.shape[-1])).all(-1)
        else:
            rows_in = torch.zeros(0, dtype=torch.bool)
        rows_pre = ~torch.isfinite(hidden_pre.reshape(-1, hidden_pre.shape[-1])).all(-1)
        n_rows = rows_pre.numel()
        if int(rows_in.sum()) > 0:
            raise NonFiniteActivationsError(
                f"MSAE encode got {int(rows_in.sum())} of {n_rows} activation rows containing "
                "NaN or inf; their codes would be NaN with every latent active. Check the "
                "model/hook that produced them (fp16 overflow? a bad input?) or drop those rows, "
                "e.g. x[torch.isfinite(x).all(-1)]."
            )
        raise NonFiniteActivationsError(
            f"MSAE encode: pre-activations of {int(rows_pre.sum())} of {n_rows} rows overflowed "
            f"{self.dtype} (finite inputs up to |x| = {float(x.abs().max()):.3g}). The activations "
            "are far outside the range the SAE was fitted on; check the hook, or load the SAE "
            "with dtype='float32' (or 'float64')."
        )

    def hidden_pre_from(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = self.process_sae_in(x)
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        self._check_finite_pre(x, hidden_pre)
        return hidden_pre

    def activate(self, hidden_pre: torch.Tensor, k: int | None) -> torch.Tensor:
        """ReLU (k=None or k=d_sae) or TopK-ReLU ranked by pre_j·‖W_dec_j‖ (see module doc)."""
        k = self.resolve_k(k)
        if k is None or k >= self.cfg.d_sae:
            return F.relu(hidden_pre)
        with torch.no_grad():
            rank_scale = self.W_dec.norm(dim=-1).to(hidden_pre.dtype)
        return topk_relu(hidden_pre, k, rank_scale=rank_scale)

    def encode_with_hidden_pre(
        self, x: torch.Tensor, k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.resolve_k(k)  # before any compute: a bad k fails fast
        hidden_pre = self.hidden_pre_from(x)
        return self.hook_sae_acts_post(self.activate(hidden_pre, k)), hidden_pre

    def encode(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Latents at TopK ``k`` (any 1 ≤ k ≤ d_sae) or, with k=None and no ``default_k``,
        the ReLU-only code (the paper's headline mode).

        Raises :class:`NonFiniteActivationsError` for NaN/inf inputs (see ``check_finite``),
        :class:`ActivationShapeError` for a wrong width, :class:`MSAEConfigError` for a bad k.
        """
        return self.encode_with_hidden_pre(x, k)[0]

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """x̂ = (z @ W_dec + b_dec) / s + μ: the reconstruction in the caller's (raw) space."""
        self._check_tensor(feature_acts, "decode", self.cfg.d_sae, "d_sae")
        out = feature_acts.to(self.dtype) @ self.W_dec + self.b_dec
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

    # ---- weight folding (exact, or refused) -------------------------------------------------------
    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Absorb SAELens's activation scaling x → c·x into the input statistics.

        An SAE fed c·x standardises (c·x − μ)·s = (x − μ/c)·(c·s), so μ ← μ/c and s ← c·s give
        identical codes on unscaled x, and the decoded output x̂/s + μ becomes (x̂/s + μ)/c:
        exactly the unfolded output mapped back by the trainer's ``unscale``.
        """
        c = float(scaling_factor)
        if not (c > 0 and c < float("inf")):
            raise MSAEConfigError(
                f"scaling_factor must be a finite number > 0, got {scaling_factor!r}. It is the "
                "factor activations were multiplied by (SAELens: sqrt(d_in) / mean norm)."
            )
        self.input_mean.div_(c)
        self.input_scale.mul_(c)
        self.cfg.normalize_activations = "none"

    def fold_activation_whitening(
        self,
        mean: torch.Tensor,
        whitening_matrix: torch.Tensor,
        unwhitening_matrix: torch.Tensor,
    ) -> None:
        """Refused: no fold of a whitening z = (x − m)·M can keep every TopK exact.

        The affine part would fold exactly (μ' = m + μ·M⁻¹, W_enc' = M·W_enc, W_dec' = W_dec·M⁻¹,
        b_dec' = b_dec·M⁻¹), but TopK ranks latents by pre_j·‖W_dec_j‖, their contribution in the
        space the SAE was trained in; after folding, ‖W_dec_j·M⁻¹‖ measures it in raw space and
        ``encode(x, k)`` would select other latents. (SAELens never calls this for MSAE: its
        config requires normalize_activations='none'.)
        """
        raise FoldNotSupportedError(
            "MSAE cannot fold an activation whitening exactly: its TopK (encode(x, k)) ranks "
            "latents by their decoder contribution in the whitened space, which the folded SAE "
            "no longer sees. Whiten the activations before calling the SAE instead "
            "(z = (x - mean) @ whitening_matrix; x_hat = sae(z) @ unwhitening_matrix + mean), or "
            "train the MSAE on raw activations: it standardises its inputs itself."
        )

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Make decoder rows unit-norm; the encoder columns and ``b_enc`` absorb the norms.

        Exact for every k: the ReLU codes scale by ‖W_dec_j‖ and the decoded output is unchanged,
        and TopK ranks pre_j·‖W_dec_j‖, which folding leaves unchanged. A no-op for a trained
        MSAE, whose rows are kept at unit norm.
        """
        self.fold_and_get_W_dec_norm()
