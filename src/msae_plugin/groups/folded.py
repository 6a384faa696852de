"""The folded view of a group-composition network: three lookup tables per hidden neuron.

The network (Chughtai et al. 2023; Wu et al. 2024) maps one-hot x and y through separate
embeddings, a linear layer, a ReLU and an unembedding. The first layer is linear in the
concatenated embeddings, so neuron i is fully described by ``w_l[i, x]``, ``w_r[i, y]`` and
``w_u[i, z]``: ``logits(z | x, y) = Σ_i w_u[i, z] · ReLU(w_l[i, x] + w_r[i, y]) + bias[z]``.
Everything that explains or verifies a network works on these tables (the model class provides
``folded()``); constructed ground-truth networks are written directly in this form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msae_plugin.errors import GroupError
from msae_plugin.groups.finite import FiniteGroup


@dataclass
class FoldedWeights:
    """``w_l``, ``w_r``, ``w_u``: ``[m, |G|]`` float64 tables; ``bias``: ``[|G|]`` or None."""

    w_l: torch.Tensor
    w_r: torch.Tensor
    w_u: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def n_neurons(self) -> int:
        return self.w_l.shape[0]

    @property
    def n_elements(self) -> int:
        return self.w_l.shape[1]

    def check(self, group: FiniteGroup) -> None:
        """Refuse tables that do not match ``group`` (a model for another group)."""
        shapes = {t.shape for t in (self.w_l, self.w_r, self.w_u)}
        if len(shapes) != 1 or self.w_l.dim() != 2:
            raise GroupError(f"w_l, w_r, w_u must be [neurons, |G|] of one shape, got "
                             f"{[tuple(t.shape) for t in (self.w_l, self.w_r, self.w_u)]}")
        if self.n_elements != group.order:
            raise GroupError(
                f"the network has {self.n_elements} outputs but {group.name} has {group.order} "
                f"elements; it was trained on another group (one of order {self.n_elements})."
            )

    def hidden(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[len(x), m]`` post-ReLU activations for element ids ``x``, ``y``."""
        return torch.relu(self.w_l[:, x].T + self.w_r[:, y].T)

    def logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[len(x), |G|]`` logits."""
        out = self.hidden(x, y) @ self.w_u
        return out + self.bias if self.bias is not None else out
