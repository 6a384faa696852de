"""Train SAELens SAEs on CLIP image activations from a config, the SAELens way.

:class:`VisionSAERunnerConfig` mirrors SAELens's ``LanguageModelSAERunnerConfig`` field by field
where the meaning carries over (``sae``, ``model_name``, ``model_class_name``, ``hook_name``,
``dataset_path``, ``training_tokens``, ``train_batch_size_tokens``, ``n_batches_in_buffer``, the
learning-rate and Adam fields, dead-feature windows, checkpoints, ``logger``...) and replaces the
text-only ones (``context_size``, ``prepend_bos``, ``seqpos_slice``, ``store_batch_size_prompts``)
with ``token_selection`` and ``store_batch_size_images``.

:class:`VisionSAETrainingRunner` is the analogue of ``LanguageModelSAETrainingRunner``: it loads
the hooked model, builds the activation provider and the training SAE (any architecture in
SAELens's training registry, ``"msae"`` included), trains with SAELens's ``SAETrainer``, and
saves the SAE with ``save_inference_model`` (``cfg.json`` + ``sae_weights.safetensors``) plus
``runner_cfg.json``. Checkpoints are SAELens training checkpoints plus the provider's position in
the image stream, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import difflib
import json
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from sae_lens import logger
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.constants import (
    RUNNER_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
    TRAINER_STATE_FILENAME,
)
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.training._interruption import InterruptedException
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import save_file

from msae_plugin.errors import SAEModelMismatchError, UnsupportedModelError
from msae_plugin.vision.activation_cache import ActivationCache, cache_key
from msae_plugin.vision.activations import (
    ImageActivationProvider,
    check_image_hook,
    to_torch_dtype,
)
from msae_plugin.vision.token_selection import TokenSelection

#: MSAE input statistics (mean, scale) are fitted on at most this many tokens
MAX_STATS_TOKENS = 1 << 17


class VisionConfigError(ValueError):
    """An invalid vision training config (unknown field, bad value, missing sae fields)."""


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def resolve_model_class(name: str) -> type:
    """The hooked-model class registered as ``name`` (``msae_plugin.registration``)."""
    import msae_plugin
    from msae_plugin.registration import HOOKED_MODELS

    msae_plugin.register()
    if name not in HOOKED_MODELS:
        known = sorted(HOOKED_MODELS)
        raise UnsupportedModelError(
            f"unknown model_class_name {name!r}.{_suggest(name, known)} Registered hooked "
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
        self.token_selection = str(TokenSelection.parse(self.token_selection))
        for name in (
            "training_tokens",
            "train_batch_size_tokens",
            "store_batch_size_images",
            "n_batches_in_buffer",
            "n_eval_batches",
            "n_batches_for_norm_estimate",
        ):
            if int(getattr(self, name)) < 1:
                raise VisionConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
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
                    f"unknown config field {key!r}.{_suggest(key, known)} Vision configs use "
                    "token_selection instead of context_size/seqpos_slice and "
                    "store_batch_size_images instead of store_batch_size_prompts."
                    if key in ("context_size", "seqpos_slice", "prepend_bos",
                               "store_batch_size_prompts")
                    else f"unknown config field {key!r}.{_suggest(key, known)}"
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
                        f"unknown logger field {key!r}.{_suggest(key, logger_known)}"
                    )
            logger_cfg = LoggingConfig(**{"log_to_wandb": False, **logger_cfg})
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


def build_sae_config(sae_dict: Any, get_training_class: Any) -> TrainingSAEConfig:
    """A training-SAE config from ``{"architecture": ..., fields...}`` with readable errors."""
    if not isinstance(sae_dict, dict):
        raise VisionConfigError(f'"sae" must be an object, got {type(sae_dict).__name__}')
    if "architecture" not in sae_dict:
        raise VisionConfigError(
            '"sae" needs an "architecture" (e.g. "msae", "standard", "topk", "batchtopk", '
            '"jumprelu")'
        )
    arch = sae_dict["architecture"]
    _, cfg_class = get_training_class(arch)
    allowed = [f.name for f in fields(cfg_class)] + ["architecture", "metadata"]
    for key in sae_dict:
        if key not in allowed:
            raise VisionConfigError(
                f"unknown field {key!r} for sae architecture {arch!r}.{_suggest(key, allowed)} "
                f"Fields of {cfg_class.__name__}: "
                + ", ".join(a for a in allowed if a != "metadata")
            )
    missing = [k for k in ("d_in", "d_sae") if k not in sae_dict]
    if missing:
        raise VisionConfigError(
            f"sae is missing {missing}: d_in is the activation width at the hook "
            "(model.activation_width(hook_name), e.g. d_model for hook_resid_post) and d_sae the "
            "number of latents"
        )
    try:
        return cfg_class.from_dict(sae_dict)
    except TypeError as exc:
        raise VisionConfigError(f"bad sae config for {arch!r}: {exc}") from exc


def load_config_dict(path: str | Path) -> dict[str, Any]:
    """Read a JSON / YAML config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise VisionConfigError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise VisionConfigError(
                f"{path} is YAML but PyYAML is not installed: `pip install pyyaml`, or write "
                "the config as JSON"
            ) from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VisionConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise VisionConfigError(f"{path} must hold a JSON/YAML object at the top level")
    return data


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg_dict: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["lr=1e-3", "sae.d_sae=512", "logger.log_to_wandb=false"]`` applied to a copy.

    Values are parsed as JSON when they can be (numbers, booleans, null, lists, objects) and are
    strings otherwise.
    """
    out = json.loads(json.dumps(cfg_dict))
    for item in overrides:
        if "=" not in item:
            raise VisionConfigError(f"override {item!r} must look like key=value (e.g. lr=1e-3)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise VisionConfigError(f"override {item!r}: {part!r} is not a section")
        target[parts[-1]] = _parse_value(value.strip())
    return out


def check_config_for_model(cfg: VisionSAERunnerConfig, model: Any) -> int:
    """Raise unless the config fits ``model`` (hook, width, tokens); return the hook width."""
    width = check_image_hook(model, cfg.hook_name)
    if int(cfg.sae.d_in) != width:
        raise SAEModelMismatchError(
            f"sae.d_in={cfg.sae.d_in} does not match the activation width {width} at "
            f"{cfg.hook_name!r} of {cfg.model_name!r} (d_model={model.cfg.d_model}, "
            f"d_mlp={model.cfg.d_mlp}). Set sae.d_in to {width} (e.g. --override "
            f"sae.d_in={width}) and pick d_sae accordingly."
        )
    TokenSelection.parse(cfg.token_selection).validate(
        int(model.cfg.n_ctx), int(model.cfg.n_prefix_tokens)
    )
    return width


class _InterruptibleProvider:
    """Forwards the provider; raises a pending interrupt at the start of ``next`` (a safe point:
    the previous step, its checkpoint and counters are complete)."""

    def __init__(self, provider: ImageActivationProvider) -> None:
        self.provider = provider
        self.interrupt_requested = False

    def request_interrupt(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.interrupt_requested:  # a second signal: stop now
            raise InterruptedException()
        self.interrupt_requested = True

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        if self.interrupt_requested:
            raise InterruptedException()
        return next(self.provider)


class VisionSAEEvaluator:
    """SAETrainer evaluator (called when logging to W&B): FVU, cosine, L0 and dead fraction on
    a fixed set of evaluation activations, through ``msae_plugin.metrics.evaluate_sae``."""

    def __init__(self, runner: VisionSAETrainingRunner) -> None:
        self.runner = runner

    def __call__(
        self, sae: Any, data_provider: Any, activation_scaler: ActivationScaler
    ) -> dict[str, Any]:
        from msae_plugin.metrics import flatten

        x, _ = self.runner.eval_activations()
        results = self.runner.evaluate(sae, activation_scaler(x))
        return {f"eval/{k}": v for k, v in flatten(results).items()}


class VisionSAETrainingRunner:
    """Train an SAE on hooked CLIP image activations with SAELens's ``SAETrainer``.

    Args:
        cfg: the run configuration.
        override_model: a ready hooked model instead of loading ``cfg.model_name``.
        override_images: images (a folder, a dataset name, an ``ImageSource`` or an iterable)
            instead of ``cfg.dataset_path``.
        resume_from_checkpoint: a checkpoint folder of an earlier run of this config.
    """

    def __init__(
        self,
        cfg: VisionSAERunnerConfig,
        override_model: Any = None,
        override_images: Any = None,
        resume_from_checkpoint: str | Path | None = None,
    ) -> None:
        import msae_plugin

        msae_plugin.register()
        self.cfg = cfg
        if resume_from_checkpoint is not None:
            cfg.resume_from_checkpoint = str(resume_from_checkpoint)
        if override_model is not None:
            logger.warning(
                f"You just passed in a model which will override the one specified in your "
                f"configuration: {cfg.model_name}. As a consequence this run will not be "
                "reproducible via configuration alone."
            )
        if override_images is not None:
            logger.warning(
                f"You just passed in images which will override the dataset specified in your "
                f"configuration: {cfg.dataset_path}. As a consequence this run will not be "
                "reproducible via configuration alone."
            )
        torch.manual_seed(cfg.seed)
        if override_model is None:
            model_cls = resolve_model_class(cfg.model_class_name)
            self.model = model_cls.from_pretrained(
                cfg.model_name,
                device=cfg.model_device,
                dtype=to_torch_dtype(cfg.dtype),
                **(cfg.model_from_pretrained_kwargs or {}),
            )
        else:
            self.model = override_model
        self.model.eval()
        check_config_for_model(cfg, self.model)
        if cfg.resume_from_checkpoint is not None:
            self._check_resume_checkpoint(Path(cfg.resume_from_checkpoint))

        if cfg.from_pretrained_path is not None:
            self.sae = TrainingSAE.load_from_disk(cfg.from_pretrained_path, cfg.device)
        else:
            self.sae = TrainingSAE.from_dict(
                TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()).to_dict()
            )
        self.sae.to(cfg.device)

        images = override_images if override_images is not None else cfg.dataset_path
        self.provider = ImageActivationProvider(
            self.model,
            cfg.hook_name,
            images,
            token_selection=cfg.token_selection,
            store_batch_size_images=cfg.store_batch_size_images,
            train_batch_size_tokens=cfg.train_batch_size_tokens,
            n_batches_in_buffer=cfg.n_batches_in_buffer,
            device=cfg.device,
            dtype=cfg.dtype,
            seed=cfg.seed,
            mix_fraction=cfg.activations_mixing_fraction,
            dataset_kwargs=cfg.dataset_kwargs if override_images is None else None,
        )
        if cfg.use_cached_activations:
            assert cfg.cached_activations_path is not None
            self.provider.cache = ActivationCache.open(
                cfg.cached_activations_path, self.cache_key()
            )
        if cfg.verbose:
            tpi = self.provider.tokens_per_image
            logger.info(f"Run name: {cfg.logger.run_name}")
            logger.info(
                f"{cfg.hook_name} of {cfg.model_name}: d_in={self.provider.d_in}, {tpi} tokens "
                f"per image (token_selection={cfg.token_selection!r}), "
                f"~{cfg.training_tokens / tpi:.0f} training images"
            )
            logger.info(f"Total training steps: {cfg.total_training_steps}")
        self.trainer: SAETrainer[Any, Any] | None = None
        self.interrupted_checkpoint: Path | None = None
        self._eval_cache: tuple[torch.Tensor, bool] | None = None

    # ------------------------------------------------------------------ facts
    def cache_key(self) -> dict[str, Any]:
        mcfg = self.model.cfg
        return cache_key(
            model_name=self.cfg.model_name,
            pretrained=mcfg.pretrained,
            hook_name=self.cfg.hook_name,
            token_selection=self.cfg.token_selection,
            image_size=mcfg.image_size,
            n_ctx=mcfg.n_ctx,
            tokens_per_image=self.provider.tokens_per_image,
            d_in=self.provider.d_in,
            dtype=str(self.cfg.dtype).removeprefix("torch."),
            dataset_path=str(self.cfg.dataset_path),
        )

    def _check_resume_checkpoint(self, path: Path) -> None:
        for name in (SAE_WEIGHTS_FILENAME, TRAINER_STATE_FILENAME):
            if not (path / name).is_file():
                raise FileNotFoundError(
                    f"cannot resume from {path}: {name} is missing (pass a checkpoint folder "
                    "written by a training run, e.g. checkpoints/<id>/<n_tokens>)"
                )
        runner_cfg = path / RUNNER_CFG_FILENAME
        if runner_cfg.is_file():
            old = json.loads(runner_cfg.read_text())
            now = self.cfg.to_dict()
            diffs = [
                f"{k}: checkpoint {old.get(k)!r}, this run {now[k]!r}"
                for k in ("model_name", "hook_name", "token_selection")
                if old.get(k) != now[k]
            ]
            diffs += [
                f"sae.{k}: checkpoint {old['sae'].get(k)!r}, this run {now['sae'][k]!r}"
                for k in ("architecture", "d_in", "d_sae")
                if old.get("sae", {}).get(k) != now["sae"][k]
            ]
            if diffs:
                raise VisionConfigError(
                    f"checkpoint {path} comes from a different run: " + "; ".join(diffs)
                )

    # ------------------------------------------------------------------ run
    def run(self) -> TrainingSAE[Any]:
        """Train, save the final SAE to ``cfg.output_path`` and return it."""
        import wandb

        cfg = self.cfg
        self._set_sae_metadata()
        if cfg.logger.log_to_wandb:
            wandb.init(
                project=cfg.logger.wandb_project,
                entity=cfg.logger.wandb_entity,
                config=cfg.to_dict(),
                name=cfg.logger.run_name,
                id=cfg.logger.wandb_id,
            )
        data_provider = _InterruptibleProvider(self.provider)
        trainer = SAETrainer(
            cfg=cfg.to_sae_trainer_config(),
            sae=self.sae,
            data_provider=data_provider,
            evaluator=VisionSAEEvaluator(self),
            save_checkpoint_fn=self.save_checkpoint,
        )
        self.trainer = trainer
        if cfg.resume_from_checkpoint is not None:
            logger.info(f"Resuming from checkpoint: {cfg.resume_from_checkpoint}")
            trainer.load_trainer_state(cfg.resume_from_checkpoint)
            self.sae.load_weights_from_checkpoint(cfg.resume_from_checkpoint)
            self.provider.load_from_checkpoint(cfg.resume_from_checkpoint)
        else:
            torch.manual_seed(cfg.seed)
            self._fit_input_statistics()

        sae = self._fit_with_interruption_handling(trainer, data_provider)
        self.provider.flush_cache()
        if cfg.output_path is not None:
            self.save_final_sae(sae, cfg.output_path, trainer.log_feature_sparsity)
        if cfg.logger.log_to_wandb:
            wandb.finish()
        return sae

    def _fit_input_statistics(self) -> None:
        """MSAE standardises its inputs with a mean and scale fitted once before training."""
        fit = getattr(self.sae, "fit_input_statistics", None)
        if fit is None or bool(getattr(self.sae, "input_stats_fitted", True)):
            return
        n_batches = min(
            self.cfg.n_batches_for_norm_estimate,
            max(1, MAX_STATS_TOKENS // self.cfg.train_batch_size_tokens),
            self.cfg.total_training_steps,
        )
        sample = torch.cat([next(self.provider) for _ in range(n_batches)])
        fit(sample)

    def _fit_with_interruption_handling(
        self, trainer: SAETrainer[Any, Any], data_provider: _InterruptibleProvider
    ) -> TrainingSAE[Any]:
        in_main = threading.current_thread() is threading.main_thread()
        previous = {}
        if in_main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, data_provider.request_interrupt)
        try:
            return trainer.fit()
        except (KeyboardInterrupt, InterruptedException):
            if self.cfg.checkpoint_path is not None:
                logger.warning("interrupted, saving progress")
                name = str(trainer.n_training_samples)
                trainer.save_checkpoint(checkpoint_name=name)
                self.interrupted_checkpoint = Path(self.cfg.checkpoint_path) / name
                logger.info(f"checkpoint saved to {self.interrupted_checkpoint}")
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def save_checkpoint(self, checkpoint_path: Path | None) -> None:
        """SAETrainer's ``save_checkpoint_fn``: provider state + runner config."""
        if checkpoint_path is None:
            return
        self.provider.save_to_checkpoint(checkpoint_path)
        with open(Path(checkpoint_path) / RUNNER_CFG_FILENAME, "w") as f:
            json.dump(self.cfg.to_dict(), f)

    def save_final_sae(
        self,
        sae: TrainingSAE[Any],
        output_path: str | Path,
        log_feature_sparsity: torch.Tensor | None = None,
    ) -> None:
        base = Path(output_path)
        base.mkdir(exist_ok=True, parents=True)
        weights_path, cfg_path = sae.save_inference_model(str(base))
        sparsity_path = None
        if log_feature_sparsity is not None:
            sparsity_path = base / SPARSITY_FILENAME
            save_file({"sparsity": log_feature_sparsity}, sparsity_path)
        with open(base / RUNNER_CFG_FILENAME, "w") as f:
            json.dump(self.cfg.to_dict(), f)
        if self.cfg.logger.log_to_wandb and self.trainer is not None:
            self.cfg.logger.log(
                self.trainer, weights_path, cfg_path, sparsity_path=sparsity_path,
                wandb_aliases=["final_model"],
            )

    def _set_sae_metadata(self) -> None:
        meta = self.sae.cfg.metadata
        mcfg = self.model.cfg
        meta.model_name = self.cfg.model_name
        meta.model_class_name = self.cfg.model_class_name
        meta.hook_name = self.cfg.hook_name
        meta.hook_head_index = None
        meta.context_size = self.provider.tokens_per_image
        meta.token_selection = self.cfg.token_selection
        meta.image_size = list(mcfg.image_size)
        meta.patch_size = list(mcfg.patch_size)
        meta.grid_size = list(mcfg.grid_size)
        meta.n_ctx = int(mcfg.n_ctx)
        meta.n_prefix_tokens = int(mcfg.n_prefix_tokens)
        meta.dataset_path = self.cfg.dataset_path
        meta.pretrained = mcfg.pretrained
        # (model_from_pretrained_kwargs stay in runner_cfg.json: SAELens warns on load about
        # HookedSAETransformer whenever an SAE's metadata holds non-empty ones)

    # ------------------------------------------------------------------ evaluation
    def eval_activations(self) -> tuple[torch.Tensor, bool]:
        """``(tokens, held_out)`` of ``n_eval_batches * store_batch_size_images`` images (fixed
        per runner; held out when the dataset has a test split)."""
        if self._eval_cache is None:
            n_images = self.cfg.n_eval_batches * self.cfg.store_batch_size_images
            self._eval_cache = self.provider.eval_activations(n_images)
        return self._eval_cache

    def evaluate(self, sae: Any = None, activations: torch.Tensor | None = None) -> dict[str, Any]:
        """``msae_plugin.metrics.evaluate_sae`` on the evaluation activations: FVU, cosine, L0,
        dead fraction (for MSAE at every k of its ladder and the ReLU path)."""
        from msae_plugin.metrics import evaluate_sae

        sae = self.sae if sae is None else sae
        x = self.eval_activations()[0] if activations is None else activations
        ks = None if hasattr(sae.cfg, "ladder") else [None]
        was_training = sae.training
        sae.eval()
        try:
            return evaluate_sae(sae, x, ks=ks)
        finally:
            sae.train(was_training)
