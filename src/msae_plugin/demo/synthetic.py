"""The demo: train one MSAE on SAELens's synthetic hierarchical data and read it at every k.

Until the embedded CLIP model exists (vision issue), the default job uses
``sae_lens.synthetic.SyntheticModel`` with a feature hierarchy, so it runs anywhere in a couple of
minutes on 2 CPU cores. It trains with SAELens's own ``SAETrainer`` (progress bar included), saves
an SAELens checkpoint, reloads it with ``SAE.load_from_disk`` and reports, for each k on the
ladder and for the ReLU-only path: FVU, cosine similarity, L0, fraction of zeros, dead latents,
plus CKNNA and SAELens's synthetic-data MCC. A SAELens TopK SAE trained on the same samples is
shown for reference.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: what the demo writes into ``out_dir`` (checked by ``msae demo`` before it starts)
TRADEOFF_PNG, METRICS_JSON, CHECKPOINT_DIR = (
    "msae_demo_tradeoff.png", "msae_demo_metrics.json", "msae_checkpoint")
OUTPUT_FILES = (TRADEOFF_PNG, METRICS_JSON)
OUTPUT_FOLDERS = (CHECKPOINT_DIR,)


@dataclass
class DemoConfig:
    out_dir: str = "demo_output"
    num_features: int = 512
    hidden_dim: int = 64
    d_sae: int = 1024
    k_start: int = 4
    batch_size: int = 1024
    training_samples: int = 400_000
    eval_samples: int = 10_000
    lr: float = 1e-3
    topk_k: int = 16
    seed: int = 0


def _synthetic_model(cfg: DemoConfig) -> Any:
    from sae_lens.synthetic import HierarchyConfig, SyntheticModel, SyntheticModelConfig

    return SyntheticModel(
        SyntheticModelConfig(
            num_features=cfg.num_features,
            hidden_dim=cfg.hidden_dim,
            hierarchy=HierarchyConfig(total_root_nodes=32, branching_factor=4, max_depth=2),
            seed=cfg.seed,
        )
    )


def _provider(model: Any, batch_size: int):
    while True:
        yield model.sample(batch_size)


def _train(sae: Any, model: Any, cfg: DemoConfig, label: str) -> Any:
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    print(f"\n== training {label} on {cfg.training_samples:,} synthetic samples ==", flush=True)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.training_samples,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        lr_scheduler_name="cosineannealing",
        lr_decay_steps=cfg.training_samples // cfg.batch_size,
    )
    return SAETrainer(trainer_cfg, sae, _provider(model, cfg.batch_size)).fit()


def run_demo(cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo; returns the metrics dict (also written to ``out_dir``)."""
    import msae_plugin

    msae_plugin.register()
    from sae_lens import SAE
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    from msae_plugin.metrics import evaluate_sae, format_table
    from msae_plugin.msae.config import MSAETrainingSAEConfig
    from msae_plugin.msae.training_sae import MSAETrainingSAE
    from msae_plugin.plots import plot_sparsity_tradeoff

    cfg = cfg or DemoConfig()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    model = _synthetic_model(cfg)

    msae = MSAETrainingSAE(
        MSAETrainingSAEConfig(
            d_in=cfg.hidden_dim, d_sae=cfg.d_sae, k_start=cfg.k_start, weighting="RW"
        )
    )
    msae = _train(msae, model, cfg, f"MSAE (ladder {list(msae.cfg.ladder)})")
    ckpt = out / CHECKPOINT_DIR
    msae.save_inference_model(ckpt)
    loaded = SAE.load_from_disk(ckpt)  # plain SAELens loading, by registry name
    print(f"\nsaved and reloaded {ckpt} as {type(loaded).__name__} via sae_lens.SAE.load_from_disk")

    topk = TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=cfg.hidden_dim, d_sae=cfg.d_sae, k=cfg.topk_k)
    )
    topk = _train(topk, model, cfg, f"SAELens TopK (k={cfg.topk_k}) for reference")

    torch.manual_seed(cfg.seed + 1)
    held_out = model.sample(cfg.eval_samples)
    print("\n== evaluating on held-out samples ==", flush=True)
    msae_results = evaluate_sae(loaded, held_out)
    topk_results = evaluate_sae(topk, held_out, ks=[None])
    topk_results[f"k={cfg.topk_k}"] = topk_results.pop("relu")

    mcc = {}
    for k in (cfg.topk_k, None):
        loaded.set_default_k(k)
        res = eval_sae_on_synthetic_data(
            loaded, model.feature_dict, model.activation_generator, num_samples=cfg.eval_samples
        )
        mcc["relu" if k is None else f"k={k}"] = res.mcc
    loaded.set_default_k(None)
    topk_mcc = eval_sae_on_synthetic_data(
        topk, model.feature_dict, model.activation_generator, num_samples=cfg.eval_samples
    ).mcc

    print("\nMSAE, one model read at every k of its ladder (and the ReLU-only path):")
    print(format_table(msae_results))
    print(f"\nSAELens TopK trained at k={cfg.topk_k}:")
    print(format_table(topk_results))
    print(f"\nMCC vs ground-truth features: MSAE {mcc}, TopK(k={cfg.topk_k}) {topk_mcc:.4f}")

    png = plot_sparsity_tradeoff(
        {"MSAE (one model, all k)": msae_results, f"TopK k={cfg.topk_k}": topk_results},
        out / TRADEOFF_PNG,
        title="MSAE on SAELens synthetic hierarchical data",
    )
    summary = {
        "config": cfg.__dict__,
        "msae": msae_results,
        "topk": topk_results,
        "mcc": {"msae": mcc, "topk": topk_mcc},
        "seconds": time.perf_counter() - t0,
    }
    (out / METRICS_JSON).write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {png} and {out / METRICS_JSON} in {summary['seconds']:.0f} s")
    return summary
