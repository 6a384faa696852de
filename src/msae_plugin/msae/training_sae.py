"""The training Matryoshka SAE (SAELens ``TrainingSAE`` subclass, architecture ``msae``).

One encoder/decoder, pre-activations computed once, TopK-ReLU at every level of the k ladder
(last level k = d_sae is plain ReLU), loss = Σ α_i R(x, x̂_i) / Σ α_i with no L1 term
(Zaigrajew et al. 2025, arXiv 2502.20578; reference code WolodjaZ/MSAE ``train.py``).

Decoder rows are kept at unit norm: the gradient component parallel to each row is removed in
the backward pass, and rows are renormalised (function-preservingly for every k: encoder columns
and ``b_enc`` absorb the norm, and TopK ranks pre_j·‖W_dec_j‖) at the start of each step. SAELens's trainer has no post-step hook, so
this is the reference code's ``scale_to_unit_norm`` moved from after ``backward`` to before the
next forward; the weights seen by every forward are the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens.saes.sae import (
    TrainCoefficientConfig,
    TrainingSAE,
    TrainStepInput,
    TrainStepOutput,
)
from sae_lens.saes.topk_sae import calculate_topk_aux_acts

from msae_plugin.errors import DegenerateActivationsError, NonFiniteActivationsError
from msae_plugin.msae.checkpoint import save_atomic
from msae_plugin.msae.config import MSAETrainingSAEConfig
from msae_plugin.msae.core import MSAECoreMixin
from msae_plugin.msae.loading import checked_load
from msae_plugin.msae.nested import nested_decodes


class _ProjectOutParallelGrad(torch.autograd.Function):
    """Identity whose backward removes each decoder row's gradient component along the row."""

    @staticmethod
    def forward(ctx: Any, W: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(W)
        return W.view_as(W)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (W,) = ctx.saved_tensors
        unit = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return grad - (grad * unit).sum(-1, keepdim=True) * unit


class MSAETrainingSAE(MSAECoreMixin, TrainingSAE[MSAETrainingSAEConfig]):
    """Trainable Matryoshka SAE; plugs into ``SAETrainer`` and SAELens's runners."""

    def __init__(self, cfg: MSAETrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    def initialize_weights(self) -> None:
        super().initialize_weights()
        self._init_msae_tensors()

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}

    # ---- input statistics ---------------------------------------------------------------
    @torch.no_grad()
    def fit_input_statistics(self, x: torch.Tensor) -> None:
        """Set μ = mean(x) and s = target_norm / E‖x − μ‖ (target_norm defaults to √d_in).

        Called automatically on the first training batch if not called before; call it yourself
        with a larger sample for a better estimate. Raises :class:`DegenerateActivationsError`
        for data without spread (constant rows, a single row): its scale would be unbounded.
        """
        self._check_width(x)
        x = x.to(self.dtype).reshape(-1, self.cfg.d_in)
        self._check_finite(x)
        # statistics in at least float32: a float16/bfloat16 sum over many rows loses the mean
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        mean = xf.mean(0)
        spread = float((xf - mean).norm(dim=-1).mean()) if x.shape[0] else 0.0
        magnitude = float(xf.norm(dim=-1).mean()) if x.shape[0] else 0.0
        # Refuse rather than clamp: s = target/spread would be ~1e13 and every later input would
        # be blown up to garbage. Spread at rounding level of the data is no spread at all.
        if x.shape[0] < 2 or spread <= 1e-6 * magnitude or spread == 0.0:
            raise DegenerateActivationsError(
                f"cannot fit MSAE input statistics: the {x.shape[0]} activation row(s) have "
                f"(almost) no spread (mean ‖x − μ‖ = {spread:.3g}, mean ‖x‖ = {magnitude:.3g}), "
                "so the input scale would be infinite. Pass at least two distinct rows of real "
                "activations (check the hook: a constant output, all padding?), or set "
                "input_mean / input_scale yourself."
            )
        target = self.cfg.target_norm or float(self.cfg.d_in) ** 0.5
        self.input_mean.copy_(mean.to(self.dtype))
        self.input_scale.copy_(torch.tensor(target / spread, dtype=self.dtype))
        self.input_stats_fitted.fill_(1.0)

    @staticmethod
    def _check_finite(x: torch.Tensor) -> None:
        if not torch.isfinite(x).all():
            n_nan = int(torch.isnan(x).sum())
            n_inf = int(torch.isinf(x).sum())
            raise NonFiniteActivationsError(
                f"activation batch contains {n_nan} NaN and {n_inf} inf values; refusing to train "
                "on it. Check the model/hook that produced it (fp16 overflow? a bad input?) or "
                "filter such rows out of your data provider."
            )

    @torch.no_grad()
    def _renormalize_decoder(self) -> None:
        norms = self.W_dec.norm(dim=-1).clamp_min(1e-12)
        self.W_dec.data /= norms[:, None]
        self.W_enc.data *= norms[None, :]
        self.b_enc.data *= norms

    # ---- the training step --------------------------------------------------------------
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        x = step_input.sae_in
        self._check_width(x)
        self._check_finite(x)
        if not bool(self.input_stats_fitted):
            self.fit_input_statistics(x)
        self._renormalize_decoder()

        sae_in_c = self.process_sae_in(x)  # standardised, minus b_dec if apply_b_dec_to_input
        target_c = sae_in_c if self.cfg.apply_b_dec_to_input else sae_in_c - self.b_dec
        x_std = target_c + self.b_dec
        hidden_pre = self.hook_sae_acts_pre(sae_in_c @ self.W_enc + self.b_enc)
        feature_acts = self.hook_sae_acts_post(F.relu(hidden_pre))

        W_dec = _ProjectOutParallelGrad.apply(self.W_dec)
        ladder = self.cfg.ladder
        decs = nested_decodes(hidden_pre, feature_acts, W_dec, ladder)

        if self.cfg.reconstruction_loss == "nmse":
            denom = x_std.pow(2).sum(-1).clamp_min(1e-12)
        level_losses = []
        for dec in decs:
            err = (target_c - dec).pow(2).sum(-1)
            level_losses.append((err / denom).mean() if self.cfg.reconstruction_loss == "nmse"
                                else err.mean())
        weights = self.cfg.weights
        recon_loss = sum(w * loss for w, loss in zip(weights, level_losses, strict=True)) / sum(
            weights
        )
        losses: dict[str, torch.Tensor] = {"mse_loss": recon_loss}
        total = recon_loss

        if self.cfg.aux_loss_coefficient > 0:
            aux = self._aux_loss(hidden_pre, (target_c - decs[-1]).detach(), step_input)
            losses["auxiliary_reconstruction_loss"] = aux
            total = total + aux

        sae_out = self.destandardize(decs[-1] + self.b_dec)
        sae_out = self.hook_sae_recons(sae_out)
        sae_out = self.run_time_activation_norm_fn_out(sae_out)

        metrics: dict[str, Any] = {
            f"msae/level_loss_k{k}": loss.detach()
            for k, loss in zip(ladder, level_losses, strict=True)
        }
        return TrainStepOutput(
            sae_in=x,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=total,
            losses=losses,
            metrics=metrics,
        )

    def _aux_loss(
        self, hidden_pre: torch.Tensor, residual: torch.Tensor, step_input: TrainStepInput
    ) -> torch.Tensor:
        """SAELens's TopK AuxK loss: the top dead latents reconstruct the dense-level residual."""
        mask = step_input.dead_neuron_mask
        if mask is None or (num_dead := int(mask.sum())) == 0:
            return hidden_pre.new_tensor(0.0)
        k_aux = self.cfg.d_in // 2
        scale = min(num_dead / k_aux, 1.0)
        acts = calculate_topk_aux_acts(min(k_aux, num_dead), hidden_pre, mask)
        recons = acts @ self.W_dec
        return self.cfg.aux_loss_coefficient * scale * (recons - residual).pow(2).sum(-1).mean()

    def calculate_aux_loss(self, step_input, feature_acts, hidden_pre, sae_out):  # noqa: D401
        """Unused: :meth:`training_forward_pass` computes the aux loss itself."""
        return {}

    # ---- saving / loading ---------------------------------------------------------------
    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        state_dict = self.state_dict()
        self.process_state_dict_for_saving(state_dict)
        return save_atomic(state_dict, self.cfg.to_dict(), path)

    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        state_dict = self.state_dict()
        self.process_state_dict_for_saving_inference(state_dict)
        return save_atomic(state_dict, self.cfg.get_inference_sae_cfg_dict(), path)

    @classmethod
    def load_from_disk(cls, path: str | Path, **kwargs: Any) -> MSAETrainingSAE:  # type: ignore[override]
        return checked_load(cls, super().load_from_disk, path, **kwargs)
