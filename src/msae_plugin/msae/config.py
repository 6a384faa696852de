"""SAELens config dataclasses for the MSAE architecture.

They subclass SAELens's own ``SAEConfig`` / ``TrainingSAEConfig`` so they nest in
``LanguageModelSAERunnerConfig(sae=...)``, ``SyntheticSAERunnerConfig(sae=...)`` and serialise to
the usual ``cfg.json``. Every inference field also exists on the training config, as SAELens's
``get_inference_sae_cfg_dict`` requires.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig

from msae_plugin import __version__
from msae_plugin.errors import MSAEConfigError
from msae_plugin.msae.ladder import build_ladder, level_weights

ARCHITECTURE = "msae"


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in str(v).split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _validate_common(cfg: Any) -> None:
    if cfg.normalize_activations != "none":
        raise MSAEConfigError(
            f"normalize_activations={cfg.normalize_activations!r} is not supported by MSAE: it "
            "mean-centres and scales inputs itself (the statistics are stored in the checkpoint). "
            "Set normalize_activations='none'."
        )
    if _version_tuple(cfg.msae_version) > _version_tuple(__version__):
        raise MSAEConfigError(
            f"this MSAE config was written by msae-plugin {cfg.msae_version}, newer than the "
            f"installed {__version__}. Upgrade with `pip install -U msae-plugin`."
        )
    ladder = build_ladder(cfg.d_sae, cfg.k_start, cfg.k_factor, cfg.k_levels)
    if cfg.default_k is not None and not (1 <= cfg.default_k <= cfg.d_sae):
        raise MSAEConfigError(
            f"default_k={cfg.default_k} must be between 1 and d_sae={cfg.d_sae}, or None for the "
            f"ReLU-only path. The trained ladder is {list(ladder)}."
        )


def check_required(cls: type, config_dict: dict[str, Any]) -> None:
    missing = [
        f.name
        for f in fields(cls)
        if f.name in ("d_in", "d_sae") and f.name not in config_dict
    ]
    if missing:
        raise MSAEConfigError(
            f"MSAE cfg.json is missing required field(s) {missing}. The file is incomplete or "
            "was not written by SAELens/msae-plugin; re-save the SAE with `sae.save_model(path)`."
        )


@dataclass
class MSAEConfig(SAEConfig):
    """Inference config of a Matryoshka SAE.

    Args:
        k_start, k_factor, k_levels: the trained k ladder (see :func:`build_ladder`).
        default_k: TopK applied by ``encode``/``forward`` when no k is passed; ``None`` (default)
            is the paper's headline ReLU-only path.
        msae_version: plugin version that wrote the config (refused if newer than installed).
    """

    k_start: int = 64
    k_factor: int = 2
    k_levels: list[int] | None = None
    default_k: int | None = None
    msae_version: str = __version__

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        super().__post_init__()
        _validate_common(self)

    @property
    def ladder(self) -> tuple[int, ...]:
        return build_ladder(self.d_sae, self.k_start, self.k_factor, self.k_levels)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> MSAEConfig:
        check_required(cls, config_dict)
        return super().from_dict(config_dict)  # type: ignore[return-value]


@dataclass(kw_only=True)
class MSAETrainingSAEConfig(TrainingSAEConfig):
    """Training config of a Matryoshka SAE.

    Args:
        weighting: ``"RW"`` (α_i = h − i + 1, sparsest level weighs most) or ``"UW"`` (α_i = 1).
        reconstruction_loss: ``"nmse"`` (‖x − x̂‖²/‖x‖², the paper's default) or ``"mse"``
            (‖x − x̂‖² summed over d_in, SAELens's convention); both on standardised inputs.
        aux_loss_coefficient: SAELens's TopK auxiliary (AuxK) loss on dead latents; 0 (default)
            is faithful to the paper, which only counts dead latents.
        target_norm: inputs are scaled so that E‖x − μ‖ = target_norm (default √d_in).
    """

    k_start: int = 64
    k_factor: int = 2
    k_levels: list[int] | None = None
    default_k: int | None = None
    msae_version: str = __version__
    weighting: Literal["RW", "UW"] = "RW"
    reconstruction_loss: Literal["nmse", "mse"] = "nmse"
    aux_loss_coefficient: float = 0.0
    target_norm: float | None = None

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        super().__post_init__()
        _validate_common(self)
        level_weights(len(self.ladder), self.weighting)
        if self.reconstruction_loss not in ("nmse", "mse"):
            raise MSAEConfigError(
                f"reconstruction_loss must be 'nmse' or 'mse', got {self.reconstruction_loss!r}."
            )
        if self.aux_loss_coefficient < 0:
            raise MSAEConfigError("aux_loss_coefficient must be ≥ 0 (0 switches AuxK off).")

    def get_inference_config_class(self) -> type[SAEConfig]:
        return MSAEConfig

    @property
    def ladder(self) -> tuple[int, ...]:
        return build_ladder(self.d_sae, self.k_start, self.k_factor, self.k_levels)

    @property
    def weights(self) -> tuple[float, ...]:
        return level_weights(len(self.ladder), self.weighting)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> MSAETrainingSAEConfig:
        check_required(cls, config_dict)
        return super().from_dict(config_dict)  # type: ignore[return-value]
