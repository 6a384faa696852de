"""MaPLe-style deep visual prompts: learnable tokens carried by a ``HookedOpenCLIP`` image tower.

Layout (MaPLe, Khattak et al. 2023, as in its ``VisionTransformer_MaPLe``): ``prompts[0]`` is
appended after the patch tokens once the positional embedding is added (before ``ln_pre``);
before block ``i`` for ``1 <= i < depth`` the last ``n_ctx`` positions are *replaced* by
``prompts[i]``; after block ``depth - 1`` the prompt positions simply flow on. The sequence is
therefore ``[CLS, patches..., prompts...]`` in every block, the CLS token stays at position 0, and
pooling must read CLS only (``pool_type="tok"``), otherwise the prompts would enter the pooled
embedding directly.

``depth == 0`` or ``n_ctx == 0`` gives no extra position at all: the model is exactly the base
model (tested bit for bit).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from msae_plugin.errors import ModelInputError


class VisualPrompts(nn.Module):
    """``prompts``: a ``[depth, n_ctx, d_model]`` parameter (one set of ``n_ctx`` tokens per
    prompted block). Attach with ``hooked_model.set_visual_prompts(prompts)``."""

    def __init__(self, depth: int, n_ctx: int, d_model: int, init_std: float = 0.02,
                 seed: int | None = 0) -> None:
        super().__init__()
        for name, value in (("depth", depth), ("n_ctx", n_ctx), ("d_model", d_model)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ModelInputError(f"visual prompt {name} must be an int >= 0, got {value!r}")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        # MaPLe initialises its prompts with N(0, 0.02^2).
        init = torch.randn(depth, n_ctx, d_model, generator=gen) * init_std
        self.prompts = nn.Parameter(init)

    @classmethod
    def from_tensor(cls, prompts: torch.Tensor) -> VisualPrompts:
        """Wrap a ``[depth, n_ctx, d_model]`` tensor (e.g. loaded from a file)."""
        if not isinstance(prompts, torch.Tensor) or prompts.dim() != 3:
            shape = tuple(prompts.shape) if isinstance(prompts, torch.Tensor) else type(prompts)
            raise ModelInputError(
                f"visual prompts must be a [depth, n_ctx, d_model] tensor, got {shape}"
            )
        if not prompts.is_floating_point() or not bool(torch.isfinite(prompts).all()):
            raise ModelInputError("visual prompts must be finite floating-point values")
        module = cls(*prompts.shape, seed=None)
        with torch.no_grad():
            module.prompts.copy_(prompts)
        return module

    @property
    def depth(self) -> int:
        return int(self.prompts.shape[0])

    @property
    def n_ctx(self) -> int:
        """Extra positions at the end of the sequence (0 when depth is 0: nothing is appended)."""
        return int(self.prompts.shape[1]) if self.depth > 0 else 0

    @property
    def d_model(self) -> int:
        return int(self.prompts.shape[2])

    def check_fits(self, model: Any) -> None:
        """Refuse prompts whose width or depth do not fit ``model`` (a ``HookedOpenCLIP``), and
        image towers whose pooling would read the appended tokens."""
        cfg = model.cfg
        if self.d_model != cfg.d_model:
            raise ModelInputError(
                f"visual prompts have width {self.d_model} but the image tower's residual stream "
                f"has d_model={cfg.d_model}; build them with d_model={cfg.d_model}"
            )
        if self.depth > cfg.n_layers:
            raise ModelInputError(
                f"visual prompt depth {self.depth} exceeds the image tower's {cfg.n_layers} "
                f"blocks; use depth 0..{cfg.n_layers}"
            )
        if cfg.pool_type != "tok":
            raise ModelInputError(
                f"visual prompts need CLS-token pooling (pool_type 'tok'), but this image tower "
                f"pools with {cfg.pool_type!r}: the appended prompt tokens would enter the image "
                "embedding directly"
            )

    def append(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` tokens after the positional embedding -> ``[B, T + n_ctx, D]``."""
        if self.n_ctx == 0:
            return x
        p = self.prompts[0].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x, p], dim=1)

    def before_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Replace the last ``n_ctx`` positions by ``prompts[i]`` for ``1 <= i < depth``."""
        if not 1 <= i < self.depth or self.n_ctx == 0:
            return x
        p = self.prompts[i].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, : x.shape[1] - self.n_ctx], p], dim=1)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, n_ctx={self.n_ctx}, d_model={self.d_model}"
