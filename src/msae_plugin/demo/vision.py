"""The main demo: an MSAE on the embedded CLIP's patch activations, read at every k.

It trains one Matryoshka SAE with ``VisionSAETrainingRunner`` (SAELens's ``SAETrainer``) on the
patch tokens of ``blocks.{L}.hook_resid_post`` of the shipped ``msae-tiny-clip`` model, saves it
as an SAELens checkpoint, reloads it with ``sae_lens.SAE.load_from_disk``, then reports for each
k of the ladder and the ReLU path: FVU, cosine similarity, L0, dead latents on held-out digit
scenes, and zero-shot accuracy with the SAE's reconstruction spliced in (CLS bypassed, since
the SAE saw only patches) with its expected calibration error (ECE, 15 bins) next to the
original model's. Plots (including a reliability diagram) go to ``demo_output/*.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

#: what the demo writes into ``out_dir`` (checked by ``msae demo`` before it starts)
TRADEOFF_PNG, ZERO_SHOT_PNG, RELIABILITY_PNG, METRICS_JSON = (
    "msae_vision_tradeoff.png", "msae_vision_zero_shot.png", "msae_vision_reliability.png",
    "msae_vision_metrics.json")
CHECKPOINTS_DIR, CHECKPOINT_DIR = "checkpoints", "msae_vision_checkpoint"
OUTPUT_FILES = (TRADEOFF_PNG, ZERO_SHOT_PNG, RELIABILITY_PNG, METRICS_JSON)
OUTPUT_FOLDERS = (CHECKPOINTS_DIR, CHECKPOINT_DIR)


@dataclass
class VisionDemoConfig:
    out_dir: str = "demo_output"
    hook_name: str = "blocks.2.hook_resid_post"
    token_selection: str = "patches"
    d_sae: int = 512
    k_start: int = 8
    training_tokens: int = 614_400
    train_batch_size_tokens: int = 4096
    lr: float = 1e-3
    n_eval_images: int = 1000
    seed: int = 0


def _runner_config(cfg: VisionDemoConfig, d_in: int) -> Any:
    from msae_plugin.vision.training import VisionSAERunnerConfig

    return VisionSAERunnerConfig.from_dict(
        {
            "sae": {
                "architecture": "msae",
                "d_in": d_in,
                "d_sae": cfg.d_sae,
                "k_start": cfg.k_start,
                "weighting": "RW",
                "reconstruction_loss": "nmse",
            },
            "model_name": "msae-tiny-clip",
            "hook_name": cfg.hook_name,
            "dataset_path": "msae-digits",
            "dataset_kwargs": {"images_per_epoch": 8192},
            "token_selection": cfg.token_selection,
            "training_tokens": cfg.training_tokens,
            "train_batch_size_tokens": cfg.train_batch_size_tokens,
            "store_batch_size_images": 128,
            "n_batches_in_buffer": 16,
            "lr": cfg.lr,
            "lr_scheduler_name": "cosineannealing",
            "lr_warm_up_steps": 20,
            "lr_end": cfg.lr / 10,
            "n_batches_for_norm_estimate": 8,
            "n_eval_batches": 4,
            "checkpoint_path": str(Path(cfg.out_dir) / CHECKPOINTS_DIR),
            "output_path": str(Path(cfg.out_dir) / CHECKPOINT_DIR),
            "seed": cfg.seed,
            "device": "cpu",
        }
    )


def _test_scenes(model: Any, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from msae_plugin.embedded.dataset import make_digit_scenes, normalize

    scenes = make_digit_scenes(n, split="test", seed=seed)
    return normalize(scenes.images).to(model.dtype), scenes.labels


def _patch_activations(model: Any, images: torch.Tensor, hook: str) -> torch.Tensor:
    from msae_plugin.vision.hook_names import block_of

    layer = block_of(hook)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            images, names_filter=[hook], stop_at_layer=None if layer is None else layer + 1
        )
    return cache[hook][:, model.cfg.n_prefix_tokens :].reshape(-1, model.cfg.d_model)


def run_vision_demo(cfg: VisionDemoConfig | None = None) -> dict[str, Any]:
    """Run the demo; returns the metrics (also written to ``out_dir``)."""
    import msae_plugin

    msae_plugin.register()
    from sae_lens import SAE

    from msae_plugin.embedded.zero_shot import build_zero_shot_classifier
    from msae_plugin.metrics import evaluate_sae, format_table
    from msae_plugin.plots import (
        plot_reliability_diagram,
        plot_sparsity_tradeoff,
        plot_zero_shot_kept,
    )
    from msae_plugin.vision.evaluation import ladder_levels, zero_shot_accuracy_kept
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP
    from msae_plugin.vision.training import VisionSAETrainingRunner

    cfg = cfg or VisionDemoConfig()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()

    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip")
    print(
        f"embedded model msae-tiny-clip: {model.cfg.n_layers} blocks, width {model.cfg.d_model}, "
        f"{model.cfg.n_ctx} tokens per image ({model.cfg.grid_size[0]}x{model.cfg.grid_size[1]} "
        "patches + CLS)",
        flush=True,
    )
    runner_cfg = _runner_config(cfg, model.cfg.d_model)
    print(f"\n== training an MSAE (ladder from k={cfg.k_start}) on {cfg.hook_name} "
          f"{cfg.token_selection} tokens: {cfg.training_tokens:,} activations ==", flush=True)
    VisionSAETrainingRunner(runner_cfg, override_model=model).run()
    ckpt = Path(runner_cfg.output_path)
    sae = SAE.load_from_disk(str(ckpt))  # plain SAELens loading, by registry name
    sae.eval()
    print(f"saved and reloaded {ckpt} as {type(sae).__name__} via sae_lens.SAE.load_from_disk")
    train_seconds = time.perf_counter() - t0

    images, labels = _test_scenes(model, cfg.n_eval_images, seed=cfg.seed + 1000)
    acts = _patch_activations(model, images, cfg.hook_name)
    print(f"\n== evaluating on {len(images)} held-out scenes ({len(acts):,} patch tokens) ==")
    recon = evaluate_sae(sae, acts)
    print(format_table(recon))

    classifier = build_zero_shot_classifier(model, model.tokenizer)
    zs = zero_shot_accuracy_kept(model, sae, images, labels, classifier, exclude_cls=True)
    cal = zs["calibration"]
    print(f"\nzero-shot digit accuracy: original {zs['original']:.3f} "
          f"(ECE {zs['original_ece']:.3f}; {cal['n_bins']} bins, softmax at the model's "
          f"logit scale {cal['logit_scale']:.1f})")
    for key in ladder_levels(zs):
        value = zs[key]
        print(f"  SAE spliced at {key:>7}: {value['accuracy']:.3f} "
              f"(kept {100 * value['kept']:.1f} %, ECE {value['ece']:.3f})")

    png1 = plot_sparsity_tradeoff(
        {"MSAE (one model, all k)": recon}, out / TRADEOFF_PNG,
        title=f"MSAE on msae-tiny-clip {cfg.hook_name} (patch tokens)",
    )
    png2 = plot_zero_shot_kept(zs, recon, out / ZERO_SHOT_PNG)
    png3 = plot_reliability_diagram(
        cal["reliability"], out / RELIABILITY_PNG,
        title="Zero-shot calibration: original vs SAE spliced in at each k",
    )
    summary = {
        "config": asdict(cfg),
        "reconstruction": recon,
        "zero_shot": zs,
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - t0,
    }
    (out / METRICS_JSON).write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {png1}, {png2}, {png3} and {out / METRICS_JSON} "
          f"in {summary['seconds']:.0f} s")
    return summary
