"""The MSAE config nests inside SAELens's own training machinery and actually trains.

* ``LanguageModelSAETrainingRunner`` on a tiny random ``HookedTransformer`` and an in-memory
  tokenised dataset (no network), output loaded back with ``SAE.load_from_disk``;
* ``SyntheticSAERunner`` on a small synthetic feature dictionary, with its MCC eval;
* ``SAETrainer`` with a Python generator, a mid-run checkpoint and a resume from it;
* bit-exact save/load round trips of the training and inference checkpoints.

Every test pins torch to one thread (see ``_one_torch_thread``): on a shared 2-core machine the
default 2-thread OpenMP pool makes tiny matmuls pathologically slow (a 64x16 @ 16x128 product was
measured at ~23 ms with 2 threads vs ~17 us with 1 while other jobs were running).
"""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.constants import (
    RUNNER_CFG_FILENAME,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
    TRAINER_STATE_FILENAME,
)
from sae_lens.saes.sae import TrainingSAE, TrainStepInput
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import load_file

import msae_plugin
from msae_plugin.msae.config import MSAEConfig, MSAETrainingSAEConfig
from msae_plugin.msae.sae import MSAE
from msae_plugin.msae.training_sae import MSAETrainingSAE

msae_plugin.register()  # harmless: the .pth hook has already registered "msae"

D_IN = 16
D_SAE = 128
K_START = 4
BATCH = 64
STAT_BUFFERS = ("input_mean", "input_scale", "input_stats_fitted")


# ---- fixtures and helpers -------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any accidental hub / wandb access fail fast instead of hanging."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    """The LM runner installs SIGINT/SIGTERM handlers and never restores them."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def msae_cfg(**kw) -> MSAETrainingSAEConfig:
    base = dict(d_in=D_IN, d_sae=D_SAE, k_start=K_START)
    base.update(kw)
    return MSAETrainingSAEConfig(**base)


@torch.no_grad()
def fvu(sae, x: torch.Tensor, k: int | None = None) -> float:
    """Fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − x̄‖² (the eval-set mean predictor is 1)."""
    recon = sae.decode(sae.encode(x, k=k))
    return float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@torch.no_grad()
def fvu_of_constant(x: torch.Tensor, c: torch.Tensor) -> float:
    return float((x - c).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def sparse_batches(seed: int, batch: int = BATCH, n_feats: int = 48) -> Iterator[torch.Tensor]:
    """Endless deterministic stream of x = z @ D + offset with sparse non-negative z.

    The offset and overall scale are far from (0, 1) so the SAE's own input statistics matter.
    The dictionary is fixed (seed 1234); only the codes depend on ``seed``.
    """
    g_dict = torch.Generator().manual_seed(1234)
    D = torch.randn(n_feats, D_IN, generator=g_dict)
    offset = 3.0 * torch.randn(D_IN, generator=g_dict)
    g = torch.Generator().manual_seed(seed)
    while True:
        fires = torch.rand(batch, n_feats, generator=g) < 0.06
        z = fires * (0.5 + torch.rand(batch, n_feats, generator=g))
        yield 5.0 * (z @ D) + offset


def state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name].cpu(), b[name].cpu()), f"{name} differs"


# ---- 1. LanguageModelSAETrainingRunner --------------------------------------------------------
def _tiny_model_and_data():
    from datasets import Dataset
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    mcfg = HookedTransformerConfig(
        n_layers=1,
        d_model=D_IN,
        n_ctx=16,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        d_vocab=64,
        act_fn="relu",
        device="cpu",
        seed=0,
    )
    model = HookedTransformer(mcfg)
    model.eval()
    g = torch.Generator().manual_seed(0)
    train_tokens = torch.randint(0, mcfg.d_vocab, (128, 16), generator=g)
    eval_tokens = torch.randint(0, mcfg.d_vocab, (64, 16), generator=g)
    dataset = Dataset.from_dict({"tokens": train_tokens.tolist()})
    return model, dataset, eval_tokens


def _lm_runner_cfg(tmp_path: Path, **kw) -> LanguageModelSAERunnerConfig:
    base = dict(
        sae=msae_cfg(),
        model_name="tiny-random-hooked-transformer",  # never loaded: override_model is used
        model_class_name="HookedTransformer",
        hook_name="blocks.0.hook_resid_post",
        dataset_path="in-memory/tiny-random-tokens",  # never loaded: override_dataset is used
        is_dataset_tokenized=True,
        streaming=False,
        context_size=16,
        prepend_bos=False,
        n_batches_in_buffer=8,
        store_batch_size_prompts=8,
        train_batch_size_tokens=BATCH,
        training_tokens=BATCH * 200,
        lr=1e-3,
        device="cpu",
        seed=0,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=1,
        checkpoint_path=str(tmp_path / "ckpt"),
        output_path=str(tmp_path / "out"),
        n_eval_batches=2,
        verbose=False,
    )
    base.update(kw)
    return LanguageModelSAERunnerConfig(**base)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_lm_runner_trains_saves_and_loads_msae(tmp_path, offline, restore_signal_handlers):
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    torch.manual_seed(0)
    model, dataset, eval_tokens = _tiny_model_and_data()
    cfg = _lm_runner_cfg(tmp_path)
    assert isinstance(cfg.sae, MSAETrainingSAEConfig)

    # the runner config round-trips with the msae sae config inside it
    cfg_dict = cfg.to_dict()
    assert cfg_dict["sae"]["architecture"] == "msae"
    json.dumps(cfg_dict)  # JSON-serialisable, as the runner writes it to runner_cfg.json
    cfg2 = LanguageModelSAERunnerConfig.from_dict(cfg_dict)
    assert type(cfg2.sae) is MSAETrainingSAEConfig
    assert cfg2.sae == cfg.sae
    assert cfg2.sae.ladder == (4, 8, 16, 32, 64, 128)
    assert cfg2.to_dict() == cfg_dict

    hook = cfg.hook_name
    _, cache = model.run_with_cache(eval_tokens, names_filter=[hook])
    x_eval = cache[hook].reshape(-1, D_IN)

    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model)
    assert type(runner.sae) is MSAETrainingSAE  # built from the config through the registry
    # untrained baseline, given input statistics fitted on the eval set itself (a head start)
    untrained = MSAETrainingSAE(msae_cfg())
    untrained.fit_input_statistics(x_eval)

    sae = runner.run()
    assert type(sae) is MSAETrainingSAE
    assert bool(sae.input_stats_fitted)

    # honest training check on held-out token sequences: dense (ReLU) level and a TopK level
    fvu_mean_pred = fvu_of_constant(x_eval, sae.input_mean)  # predict the training mean
    fvu_untrained = fvu(untrained, x_eval)
    fvu_dense = fvu(sae, x_eval)
    fvu_k16 = fvu(sae, x_eval, k=16)
    print(
        f"\nLM runner FVU: mean-predictor {fvu_mean_pred:.3f}, untrained {fvu_untrained:.3f}, "
        f"trained dense {fvu_dense:.4f}, trained k=16 {fvu_k16:.4f}"
    )
    assert fvu_mean_pred >= 0.999  # any constant predictor has FVU ≥ 1 on the eval set
    assert fvu_dense < 0.1
    assert fvu_dense < 0.2 * fvu_untrained
    assert fvu_k16 < 0.25

    # the runner's own evaluator (run_evals: SAE spliced into the model for CE, variance, L0),
    # which SAELens only calls when logging to wandb
    from sae_lens.training.activation_scaler import ActivationScaler

    metrics = runner.evaluator(sae, runner.activations_store, ActivationScaler())
    print(f"LM runner evaluator: {metrics}")
    perf = metrics["model_performance_preservation"]
    assert metrics["reconstruction_quality"]["explained_variance"] > 0.85
    assert 0 < metrics["sparsity"]["l0"] <= D_SAE
    assert math.isfinite(perf["ce_loss_with_sae"])
    assert perf["ce_loss_score"] > 0.75  # splicing the SAE in ≈ the clean model, ≠ ablation

    # the final output folder: inference checkpoint + runner config
    out = Path(cfg.output_path)
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME, RUNNER_CFG_FILENAME):
        assert (out / name).is_file(), name
    loaded = SAE.load_from_disk(out)
    assert type(loaded) is MSAE
    assert type(loaded.cfg) is MSAEConfig
    assert loaded.cfg.metadata.hook_name == hook
    assert loaded.cfg.metadata.model_name == cfg.model_name
    assert loaded.cfg.metadata.context_size == 16
    assert loaded.cfg.metadata.prepend_bos is False
    assert loaded.cfg.ladder == cfg.sae.ladder
    assert json.loads((out / SAE_CFG_FILENAME).read_text())["architecture"] == "msae"
    state_dicts_equal(loaded.state_dict(), sae.state_dict())
    assert torch.equal(loaded.encode(x_eval), sae.encode(x_eval))
    assert torch.equal(loaded.decode(loaded.encode(x_eval)), sae.decode(sae.encode(x_eval)))

    runner_cfg = LanguageModelSAERunnerConfig.from_dict(
        json.loads((out / RUNNER_CFG_FILENAME).read_text())
    )
    assert runner_cfg.sae == cfg.sae
    assert runner_cfg.hook_name == hook

    # the mid-run checkpoint (n_checkpoints=1) is a training checkpoint of the msae SAE
    ckpts = [p for p in Path(cfg.checkpoint_path).iterdir() if p.is_dir()]
    assert len(ckpts) == 1
    ckpt = ckpts[0]
    assert 0 < int(ckpt.name) < cfg.training_tokens
    for name in (
        SAE_CFG_FILENAME,
        SAE_WEIGHTS_FILENAME,
        TRAINER_STATE_FILENAME,
        RUNNER_CFG_FILENAME,
    ):
        assert (ckpt / name).is_file(), name
    ck_sae = TrainingSAE.load_from_disk(ckpt)
    assert type(ck_sae) is MSAETrainingSAE
    assert ck_sae.cfg.weighting == cfg.sae.weighting
    for name in STAT_BUFFERS:  # the statistics are fitted once, on the first batch
        assert torch.equal(getattr(ck_sae, name), getattr(sae, name)), name

    # the runner's own resume path (trainer state + load_weights_from_checkpoint + store state)
    resume_cfg = _lm_runner_cfg(
        tmp_path,
        resume_from_checkpoint=str(ckpt),
        n_checkpoints=0,
        checkpoint_path=str(tmp_path / "ckpt_resumed"),
        output_path=str(tmp_path / "out_resumed"),
    )
    resumed_runner = LanguageModelSAETrainingRunner(
        resume_cfg, override_dataset=dataset, override_model=model
    )
    resumed = resumed_runner.run()
    assert type(resumed) is MSAETrainingSAE
    for name in STAT_BUFFERS:  # restored from the checkpoint, not refitted on a new batch
        assert torch.equal(getattr(resumed, name), getattr(ck_sae, name)), name
    assert fvu(resumed, x_eval) < 0.1
    assert type(SAE.load_from_disk(tmp_path / "out_resumed")) is MSAE


# ---- 2. SyntheticSAERunner ------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_synthetic_runner_trains_msae_and_recovers_features(tmp_path, offline):
    from sae_lens.synthetic import ZipfianFiringProbabilityConfig, mean_correlation_coefficient
    from sae_lens.synthetic.synthetic_model import SyntheticModelConfig
    from sae_lens.synthetic.synthetic_sae_runner import (
        SyntheticSAERunner,
        SyntheticSAERunnerConfig,
    )

    torch.manual_seed(0)
    n_features, d_sae = 32, 64
    cfg = SyntheticSAERunnerConfig(
        synthetic_model=SyntheticModelConfig(
            num_features=n_features,
            hidden_dim=D_IN,
            firing_probability=ZipfianFiringProbabilityConfig(max_prob=0.2, min_prob=0.02),
            seed=0,
        ),
        sae=msae_cfg(d_sae=d_sae),
        training_samples=128 * 400,
        batch_size=128,
        lr=3e-3,
        eval_samples=4096,
        checkpoint_path=None,
        output_path=str(tmp_path / "out"),
        logger=LoggingConfig(log_to_wandb=False),
    )
    cfg_dict = cfg.to_dict()
    assert type(SyntheticSAERunnerConfig.from_dict(cfg_dict).sae) is MSAETrainingSAEConfig

    result = SyntheticSAERunner(cfg).run()
    assert type(result.sae) is MSAETrainingSAE
    ev = result.final_eval
    assert ev is not None

    # chance level: MCC of random decoders of the same shape (seeds far from the model's seed 0,
    # whose first randn draws *are* the ground-truth feature vectors)
    gt = result.synthetic_model.feature_dict.feature_vectors.detach()
    random_mcc = max(
        mean_correlation_coefficient(
            torch.randn(d_sae, D_IN, generator=torch.Generator().manual_seed(s)), gt
        )
        for s in range(1000, 1005)
    )
    print(
        f"\nsynthetic eval: explained_variance {ev.explained_variance:.3f}, MCC {ev.mcc:.3f} "
        f"(random decoders ≤ {random_mcc:.3f}), sae_l0 {ev.sae_l0:.1f} vs true_l0 "
        f"{ev.true_l0:.2f}, dead {ev.dead_latents}, uniqueness {ev.uniqueness:.3f}"
    )
    assert ev.explained_variance > 0.9
    assert ev.mcc > random_mcc + 0.1
    assert ev.dead_latents < d_sae // 2

    out = result.output_path
    assert out is not None
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, "eval_stats.json", "runner_config.json"):
        assert (out / name).is_file(), name
    stats = json.loads((out / "eval_stats.json").read_text())
    assert stats["mcc"] == pytest.approx(ev.mcc)
    loaded = SAE.load_from_disk(out)
    assert type(loaded) is MSAE
    state_dicts_equal(loaded.state_dict(), result.sae.state_dict())
    saved_runner_cfg = json.loads((out / "runner_config.json").read_text())
    assert saved_runner_cfg["sae"]["architecture"] == "msae"
    assert SyntheticSAERunnerConfig.from_dict(saved_runner_cfg).sae == cfg.sae


# ---- 3. SAETrainer + checkpoint + resume ------------------------------------------------------
def _trainer_cfg(ckpt_dir: Path, total: int) -> SAETrainerConfig:
    return SAETrainerConfig(
        total_training_samples=total,
        train_batch_size_samples=BATCH,
        lr=2e-3,
        lr_end=2e-4,
        lr_scheduler_name="cosineannealing",
        n_checkpoints=1,
        checkpoint_path=str(ckpt_dir),
        device="cpu",
    )


def _record_losses(trainer: SAETrainer, losses: list[float]) -> None:
    orig_step = trainer.step

    def step(batch: torch.Tensor):
        out = orig_step(batch)
        losses.append(float(out.loss))
        return out

    trainer.step = step  # type: ignore[method-assign]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sae_trainer_checkpoint_and_resume(tmp_path):
    n_steps = 300
    total = BATCH * n_steps
    x_eval = next(sparse_batches(seed=999, batch=2048))

    # --- uninterrupted run A, which writes one checkpoint halfway
    torch.manual_seed(0)
    sae_a = MSAETrainingSAE(msae_cfg())
    trainer_a = SAETrainer(
        cfg=_trainer_cfg(tmp_path / "ckpt", total), sae=sae_a, data_provider=sparse_batches(seed=0)
    )
    losses_a: list[float] = []
    _record_losses(trainer_a, losses_a)
    trainer_a.fit()
    assert trainer_a.n_training_samples == total
    assert len(losses_a) == n_steps
    first, last = sum(losses_a[:10]) / 10, sum(losses_a[-10:]) / 10
    fvu_dense, fvu_k4 = fvu(sae_a, x_eval), fvu(sae_a, x_eval, k=K_START)
    print(
        f"\nSAETrainer: loss {first:.4f} -> {last:.4f}; held-out FVU dense {fvu_dense:.4f}, "
        f"k={K_START} {fvu_k4:.4f}, mean-predictor {fvu_of_constant(x_eval, sae_a.input_mean):.3f}"
    )
    assert last < 0.35 * first
    assert fvu_dense < 0.1
    assert fvu_k4 < 0.5
    assert fvu_of_constant(x_eval, sae_a.input_mean) >= 0.999

    ckpts = [p for p in (tmp_path / "ckpt").iterdir() if p.is_dir()]
    assert len(ckpts) == 1
    ckpt = ckpts[0]
    n_ckpt = int(ckpt.name)
    threshold = list(range(0, total, math.ceil(total / 2)))[1]
    assert n_ckpt == threshold + BATCH  # first step past the halfway threshold
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME, TRAINER_STATE_FILENAME):
        assert (ckpt / name).is_file(), name

    # --- resume B from the checkpoint
    on_disk = load_file(str(ckpt / SAE_WEIGHTS_FILENAME))
    sae_b = MSAETrainingSAE.load_from_disk(ckpt)
    assert type(sae_b) is MSAETrainingSAE
    state_dicts_equal(sae_b.state_dict(), on_disk)
    for name in STAT_BUFFERS:
        assert torch.equal(getattr(sae_b, name), on_disk[name]), name
        # fitted once on A's first batch and never refitted
        assert torch.equal(getattr(sae_b, name), getattr(sae_a, name)), name
    assert float(sae_b.input_stats_fitted) == 1.0

    # the data provider continues where A was at the checkpoint
    provider_b = sparse_batches(seed=0)
    for _ in range(n_ckpt // BATCH):
        next(provider_b)
    trainer_b = SAETrainer(
        cfg=_trainer_cfg(tmp_path / "ckpt_b", total), sae=sae_b, data_provider=provider_b
    )
    trainer_b.load_trainer_state(ckpt)
    assert trainer_b.n_training_samples == n_ckpt
    # SAELens saves the checkpoint inside the step before incrementing n_training_steps, so the
    # restored step counter lags the restored sample counter by one step (upstream quirk; the LR
    # scheduler, stepped inside _train_step, is not affected)
    assert trainer_b.n_training_steps == n_ckpt // BATCH - 1
    assert trainer_b.lr_scheduler.last_epoch == n_ckpt // BATCH
    losses_b: list[float] = []
    _record_losses(trainer_b, losses_b)
    trainer_b.fit()
    assert trainer_b.n_training_samples == total
    assert trainer_b.n_training_steps == n_steps - 1  # see the quirk above
    assert trainer_b.lr_scheduler.last_epoch == trainer_a.lr_scheduler.last_epoch == n_steps
    assert len(losses_b) == (total - n_ckpt) // BATCH

    # statistics survived the resume: B did not refit them on its first (different) batch
    for name in STAT_BUFFERS:
        assert torch.equal(getattr(sae_b, name), on_disk[name]), name
    # and resuming replays A's second half: same losses, same final weights
    # (bit-exact: CPU, one thread, same deterministic data)
    assert losses_b == losses_a[n_ckpt // BATCH :]
    state_dicts_equal(sae_b.state_dict(), sae_a.state_dict())
    assert trainer_b.optimizer.param_groups[0]["lr"] == pytest.approx(
        trainer_a.optimizer.param_groups[0]["lr"]
    )


# ---- 4. bit-exact save/load round trips -------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_save_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    sae = MSAETrainingSAE(msae_cfg(k_levels=[4, 16], weighting="UW"))
    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=BATCH * 30, train_batch_size_samples=BATCH, lr=2e-3, lr_end=2e-3
        ),
        sae=sae,
        data_provider=sparse_batches(seed=5),
    )
    trainer.fit()
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    with torch.no_grad():  # make sure every tensor is non-trivial
        sae.b_dec.add_(0.01 * torch.randn_like(sae.b_dec))
    assert bool(sae.input_stats_fitted)
    assert not torch.equal(sae.input_mean, torch.zeros_like(sae.input_mean))
    x = next(sparse_batches(seed=77, batch=256))

    sae.save_model(tmp_path / "train")
    sae.save_inference_model(tmp_path / "infer")
    train_loaded = TrainingSAE.load_from_disk(tmp_path / "train")
    infer_loaded = SAE.load_from_disk(tmp_path / "infer")
    assert type(train_loaded) is MSAETrainingSAE
    assert type(infer_loaded) is MSAE
    assert train_loaded.cfg.to_dict() == sae.cfg.to_dict()
    assert infer_loaded.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    assert infer_loaded.cfg.ladder == sae.cfg.ladder == (4, 16, D_SAE)

    ref = sae.state_dict()
    assert set(STAT_BUFFERS) <= set(ref)
    state_dicts_equal(train_loaded.state_dict(), ref)
    state_dicts_equal(infer_loaded.state_dict(), ref)

    sae.eval()
    with torch.no_grad():
        for k in (None, 1, K_START, 16, 50, D_SAE):
            z = sae.encode(x, k=k)
            for other in (train_loaded, infer_loaded):
                assert torch.equal(other.encode(x, k=k), z), k
                assert torch.equal(other.decode(z), sae.decode(z)), k
        assert torch.equal(infer_loaded(x), sae.decode(sae.encode(x)))

    # the training checkpoint also round-trips a second time unchanged (load -> save -> load)
    train_loaded.save_model(tmp_path / "train2")
    state_dicts_equal(TrainingSAE.load_from_disk(tmp_path / "train2").state_dict(), ref)


def test_training_step_reports_all_ladder_levels():
    """Cheap sanity check that the trainer-facing output has what SAETrainer consumes."""
    torch.manual_seed(0)
    sae = MSAETrainingSAE(msae_cfg())
    x = next(sparse_batches(seed=3))
    out = sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
    )
    assert out.feature_acts.shape == (BATCH, D_SAE)
    assert set(out.metrics) == {f"msae/level_loss_k{k}" for k in sae.cfg.ladder}
    assert torch.isfinite(out.loss)
