"""``VisionSAERunnerConfig``: what a vision SAE training run does, field by field.

Mirrors SAELens's ``LanguageModelSAERunnerConfig`` where the meaning carries over (``sae``,
``model_name``, ``model_class_name``, ``hook_name``, ``dataset_path``, ``training_tokens``,
``train_batch_size_tokens``, ``n_batches_in_buffer``, the learning-rate and Adam fields,
dead-feature windows, checkpoints, ``logger``...) and replaces the text-only ones
(``context_size``, ``prepend_bos``, ``seqpos_slice``, ``store_batch_size_prompts``) with
``token_selection`` and ``store_batch_size_images``.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.sae import TrainingSAEConfig

from msae_plugin.errors import UnsupportedModelError
from msae_plugin.vision.activations import to_torch_dtype
from msae_plugin.vision.config_files import (
    VisionConfigError,
    apply_overrides,
    build_sae_config,
    check_field_types,
    load_config_dict,
    suggest,
)
from msae_plugin.vision.token_selection import TokenSelection


def resolve_model_class(name: str) -> type:
    """The hooked-model class registered as ``name`` (``msae_plugin.registration``)."""
    import msae_plugin
    from msae_plugin.registration import HOOKED_MODELS

    msae_plugin.register()
    if name not in HOOKED_MODELS:
        known = sorted(HOOKED_MODELS)
        raise UnsupportedModelError(
            f"unknown model_class_name {name!r}.{suggest(name, known)} Registered hooked "
            f"models: {', '.join(known) or '(none)'}; plugins add more (`msae plugins`)."
        )
    return HOOKED_MODELS[name]


def default_cached_activations_path(
    dataset_path: str, model_name: str, hook_name: str, token_selection: str
) -> str:
    """``activations/{dataset}/{model}/{hook}_{tokens}`` (SAELens's layout + the tokens kept)."""
    tokens = str(token_selection).replace(":", "-")
    clean = [s.replace("/", "_") for s in (dataset_path, model_name)]
    return f"activations/{clean[0]}/{clean[1]}/{hook_name}_{tokens}"


@dataclass
class VisionSAERunnerConfig:
    """Configuration for training an SAE on a hooked CLIP image tower.

    Fields shared with ``LanguageModelSAERunnerConfig`` mean the same thing. Vision-specific:

    Args:
        dataset_path: a registered image dataset (``"msae-digits"``) or a folder of image files.
        dataset_kwargs: extra arguments of a named dataset (e.g. ``{"images_per_epoch": 4096}``).
        token_selection: ``"all"`` (CLS + patches), ``"cls"``, ``"patches"``, a position or a
            slice ``"a:b"``; replaces ``context_size`` / ``seqpos_slice``.
        store_batch_size_images: images per model forward (``store_batch_size_prompts``).
        model_device: device of the CLIP model (``llm_device``); defaults to ``device``.
        n_eval_batches: evaluation uses ``n_eval_batches * store_batch_size_images`` images
            (held out when the dataset has a test split).
        n_batches_for_norm_estimate: batches used to estimate activation normalisation
            (``normalize_activations="expected_average_only_in"``) and, for MSAE, its input mean
            and scale (capped at ``MAX_STATS_TOKENS`` tokens).

    Differences from SAELens: ``logger`` defaults to ``LoggingConfig(log_to_wandb=False)``.
    """

    sae: TrainingSAEConfig

    # data generating function (model + images)
    model_name: str = "msae-tiny-clip"
    model_class_name: str = "HookedOpenCLIP"
    hook_name: str = "blocks.2.hook_resid_post"
    dataset_path: str = "msae-digits"
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    token_selection: str | int = "all"
    use_cached_activations: bool = False
    cached_activations_path: str | None = None
    from_pretrained_path: str | None = None

    # activation provider
    n_batches_in_buffer: int = 20
    training_tokens: int = 2_000_000
    store_batch_size_images: int = 32
    activations_mixing_fraction: float = 0.5

    # misc
    device: str = "cpu"
    model_device: str | None = None
    seed: int = 42
    dtype: str = "float32"
    autocast: bool = False

    # training
    train_batch_size_tokens: int = 4096
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr: float = 3e-4
    lr_scheduler_name: str = "constant"
    lr_warm_up_steps: int = 0
    lr_end: float | None = None
    lr_decay_steps: int = 0
    n_restart_cycles: int = 1
    dead_feature_window: int = 1000
    feature_sampling_window: int = 2000
    n_eval_batches: int = 10

    logger: LoggingConfig = field(default_factory=lambda: LoggingConfig(log_to_wandb=False))

    # outputs / checkpoints
    n_checkpoints: int = 0
    checkpoint_path: str | None = "checkpoints"
    save_final_checkpoint: bool = False
    output_path: str | None = "output"
    resume_from_checkpoint: str | None = None

    verbose: bool = True
    model_from_pretrained_kwargs: dict[str, Any] | None = None
    n_batches_for_norm_estimate: int = 1000

    def __post_init__(self) -> None:
        if isinstance(self.sae, dict):
            raise VisionConfigError(
                "sae is a dict: build the config with VisionSAERunnerConfig.from_dict(...) so the "
                "SAE config class is looked up from sae['architecture']"
            )
        if not isinstance(self.sae, TrainingSAEConfig):
            raise VisionConfigError(
                f"sae must be a SAELens training-SAE config (e.g. StandardTrainingSAEConfig, "
                f"MSAETrainingSAEConfig), got {type(self.sae).__name__}"
            )
        self._check_types()
        self.token_selection = str(TokenSelection.parse(self.token_selection))
        self._check_ranges()
        if self.training_tokens < self.train_batch_size_tokens:
            raise VisionConfigError(
                f"training_tokens={self.training_tokens} is less than one batch "
                f"(train_batch_size_tokens={self.train_batch_size_tokens})"
            )
        if not 0 <= self.activations_mixing_fraction <= 1:
            raise VisionConfigError("activations_mixing_fraction must be in [0, 1]")
        try:
            to_torch_dtype(self.dtype)
        except ValueError as exc:
            raise VisionConfigError(str(exc)) from None
        if str(self.sae.dtype).removeprefix("torch.") != str(self.dtype).removeprefix("torch."):
            raise VisionConfigError(
                f"sae.dtype={self.sae.dtype!r} differs from dtype={self.dtype!r} (the dtype of the "
                "activations); set both to the same value"
            )
        resolve_model_class(self.model_class_name)
        if self.model_from_pretrained_kwargs is None:
            self.model_from_pretrained_kwargs = {}
        if self.model_device is None:
            self.model_device = self.device
        if self.lr_end is None:
            self.lr_end = self.lr / 10
        if self.use_cached_activations and self.cached_activations_path is None:
            self.cached_activations_path = default_cached_activations_path(
                self.dataset_path, self.model_name, self.hook_name, self.token_selection
            )
        if self.logger.run_name is None:
            self.logger.run_name = (
                f"{self.sae.architecture()}-{self.sae.d_sae}-LR-{self.lr}-Tokens-"
                f"{self.training_tokens:3.3e}"
            )
        if self.checkpoint_path is not None:
            unique_id = self.logger.wandb_id or uuid.uuid4().hex[:8]
            self.checkpoint_path = f"{self.checkpoint_path}/{unique_id}"

    def _check_types(self) -> None:
        """Every field (and every sae field) has the type its annotation says: ``"lots"`` for
        ``training_tokens`` or ``8192.5`` for an int would otherwise fail deep inside training."""
        mine = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("sae",)}
        mine.pop("logger")
        for key, value in check_field_types(type(self), mine).items():
            setattr(self, key, value)
        if isinstance(self.logger, LoggingConfig):
            log = {f.name: getattr(self.logger, f.name) for f in fields(self.logger)}
            for key, value in check_field_types(LoggingConfig, log, "logger.").items():
                setattr(self.logger, key, value)
        sae = {f.name: getattr(self.sae, f.name) for f in fields(self.sae) if f.name != "metadata"}
        for key, value in check_field_types(type(self.sae), sae, "sae.").items():
            if value is not sae[key]:
                setattr(self.sae, key, value)

    def _check_ranges(self) -> None:
        """Values of the right type but outside what training can use."""
        for name in (
            "training_tokens",
            "train_batch_size_tokens",
            "store_batch_size_images",
            "n_batches_in_buffer",
            "n_eval_batches",
            "n_batches_for_norm_estimate",
            "n_restart_cycles",
            "dead_feature_window",
            "feature_sampling_window",
        ):
            if int(getattr(self, name)) < 1:
                raise VisionConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_warm_up_steps", "lr_decay_steps", "n_checkpoints"):
            if int(getattr(self, name)) < 0:
                raise VisionConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise VisionConfigError(
                f"lr must be a positive learning rate, got {self.lr!r} (e.g. lr: 3.0e-4)"
            )
        if self.lr_end is not None and not self.lr_end >= 0:
            raise VisionConfigError(f"lr_end must be >= 0 (or null for lr / 10), got {self.lr_end}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise VisionConfigError(
                    f"{name} must be in [0, 1), got {getattr(self, name)} (defaults: 0.9, 0.999)"
                )
        for name in ("d_in", "d_sae"):
            if int(getattr(self.sae, name)) < 1:
                raise VisionConfigError(f"sae.{name} must be >= 1, got {getattr(self.sae, name)}")

    # ------------------------------------------------------------------ derived
    @property
    def total_training_tokens(self) -> int:
        return self.training_tokens

    @property
    def total_training_steps(self) -> int:
        return self.total_training_tokens // self.train_batch_size_tokens

    @property
    def tokens_per_buffer(self) -> int:
        return self.train_batch_size_tokens * self.n_batches_in_buffer

    def get_training_sae_cfg_dict(self) -> dict[str, Any]:
        return self.sae.to_dict()

    def to_sae_trainer_config(self) -> SAETrainerConfig:
        """The ``SAETrainerConfig`` SAELens's trainer runs with (as the LM runner builds it)."""
        return SAETrainerConfig(
            n_checkpoints=self.n_checkpoints,
            checkpoint_path=self.checkpoint_path,
            save_final_checkpoint=self.save_final_checkpoint,
            total_training_samples=self.total_training_tokens,
            device=self.device,
            autocast=self.autocast,
            lr=self.lr,
            lr_end=self.lr_end,
            lr_scheduler_name=self.lr_scheduler_name,
            lr_warm_up_steps=self.lr_warm_up_steps,
            adam_beta1=self.adam_beta1,
            adam_beta2=self.adam_beta2,
            lr_decay_steps=self.lr_decay_steps,
            n_restart_cycles=self.n_restart_cycles,
            train_batch_size_samples=self.train_batch_size_tokens,
            dead_feature_window=self.dead_feature_window,
            feature_sampling_window=self.feature_sampling_window,
            logger=self.logger,
            n_batches_for_norm_estimate=self.n_batches_for_norm_estimate,
        )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["logger"] = asdict(self.logger)
        d["sae"] = self.sae.to_dict()
        return d

    @classmethod
    def from_dict(cls, cfg_dict: dict[str, Any]) -> VisionSAERunnerConfig:
        """Build from a dict (``to_dict`` output or a hand-written config file).

        ``sae`` is ``{"architecture": "msae", "d_in": ..., "d_sae": ..., ...}``; the config class
        comes from SAELens's training registry. ``checkpoint_path`` is kept as written (as in
        SAELens's ``from_dict``: no unique id is appended).
        """
        import msae_plugin
        from msae_plugin.registry_errors import get_sae_training_class

        msae_plugin.register()
        if not isinstance(cfg_dict, dict):
            raise VisionConfigError(
                f"a config must be a JSON object, got {type(cfg_dict).__name__}"
            )
        known = [f.name for f in fields(cls)]
        for key in cfg_dict:
            if key not in known:
                raise VisionConfigError(
                    f"unknown config field {key!r}.{suggest(key, known)} Vision configs use "
                    "token_selection instead of context_size/seqpos_slice and "
                    "store_batch_size_images instead of store_batch_size_prompts."
                    if key in ("context_size", "seqpos_slice", "prepend_bos",
                               "store_batch_size_prompts")
                    else f"unknown config field {key!r}.{suggest(key, known)}"
                )
        if "sae" not in cfg_dict:
            raise VisionConfigError(
                'the config needs an "sae" section, e.g. {"architecture": "msae", "d_in": 128, '
                '"d_sae": 1024, "k_start": 16}'
            )
        sae_dict = cfg_dict["sae"]
        if isinstance(sae_dict, TrainingSAEConfig):
            sae_cfg = sae_dict
        else:
            sae_cfg = build_sae_config(sae_dict, get_sae_training_class)
        logger_cfg = cfg_dict.get("logger", {})
        if isinstance(logger_cfg, dict):
            logger_known = [f.name for f in fields(LoggingConfig)]
            for key in logger_cfg:
                if key not in logger_known:
                    raise VisionConfigError(
                        f"unknown logger field {key!r}.{suggest(key, logger_known)}"
                    )
            logger_cfg = check_field_types(LoggingConfig, logger_cfg, "logger.")
            logger_cfg = LoggingConfig(**{"log_to_wandb": False, **logger_cfg})
        elif not isinstance(logger_cfg, LoggingConfig):
            raise VisionConfigError(
                f'"logger" must be an object such as {{"log_to_wandb": false}}, got '
                f"{type(logger_cfg).__name__}"
            )
        out = cls(**{**cfg_dict, "sae": sae_cfg, "logger": logger_cfg})
        if "checkpoint_path" in cfg_dict:
            out.checkpoint_path = cfg_dict["checkpoint_path"]
        return out

    @classmethod
    def from_file(
        cls, path: str | Path, overrides: list[str] | None = None
    ) -> VisionSAERunnerConfig:
        """Load a JSON (or, with PyYAML installed, YAML) config, applying ``key=value``
        overrides (dotted keys reach into ``sae.`` and ``logger.``)."""
        return cls.from_dict(apply_overrides(load_config_dict(path), overrides or []))
