"""The inference Matryoshka SAE, registered in SAELens as architecture ``msae``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_lens.saes.sae import SAE

from msae_plugin.msae.checkpoint import save_atomic
from msae_plugin.msae.config import MSAEConfig
from msae_plugin.msae.core import MSAECoreMixin
from msae_plugin.msae.loading import checked_load


class MSAE(MSAECoreMixin, SAE[MSAEConfig]):
    """Matryoshka SAE for inference.

    ``encode(x)`` gives the ReLU-only code (variable L0, the paper's headline mode) unless
    ``cfg.default_k`` is set; ``encode(x, k=128)`` applies TopK-ReLU at any k ≤ d_sae.
    ``forward`` (used when the SAE is spliced into a model) follows ``cfg.default_k``;
    change it with :meth:`set_default_k`.
    """

    def __init__(self, cfg: MSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    def initialize_weights(self) -> None:
        super().initialize_weights()
        self._init_msae_tensors()

    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        state_dict = self.state_dict()
        self.process_state_dict_for_saving(state_dict)
        return save_atomic(state_dict, self.cfg.to_dict(), path)

    @classmethod
    def load_from_disk(cls, path: str | Path, **kwargs: Any) -> MSAE:  # type: ignore[override]
        return checked_load(cls, super().load_from_disk, path, **kwargs)
