"""Train the MSAEs shipped as the SAELens release ``msae-tiny-clip-msae`` and write them.

    .venv/bin/python scripts/train_embedded_msaes.py            # train both, write the release
    .venv/bin/python scripts/train_embedded_msaes.py --no-write # train and evaluate only

Two Matryoshka SAEs on the embedded CLIP (``msae-tiny-clip``), trained with the project's
``VisionSAETrainingRunner`` (SAELens's ``SAETrainer``) on freshly rendered train-split digit
scenes:

* ``hook_image_embed``: the pooled, projected image embedding (one vector of width 64 per
  image), the site the MSAE paper trains on; d_sae 512 (8x), ladder 4, 8, ..., 512;
* ``blocks.2.hook_resid_post``: the 64 patch tokens of each image (width 96); d_sae 1024,
  ladder 8, 16, ..., 1024.

Each SAE is evaluated on held-out test-split scenes (FVU, cosine and L0 at every k, via
``msae_plugin.metrics.evaluate_sae``) and by zero-shot digit accuracy with its reconstruction
spliced in (``msae_plugin.vision.evaluation.zero_shot_accuracy_kept``). The release folder
(``src/msae_plugin/releases/data/msae-tiny-clip-msae/`` or ``--out-dir``) gets one SAELens
folder per sae_id (``cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``), each
written atomically, and ``training_log.json`` with every figure and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Idle OpenMP workers sleep instead of spinning (shared 2-core machines); before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from msae_plugin.releases import EMBEDDED_RELEASE, release_dir  # noqa: E402

#: per sae_id: the runner settings that differ between the two SAEs
SAES: dict[str, dict[str, Any]] = {
    "hook_image_embed": {
        "token_selection": "all",  # pooled hook: one vector per image
        "d_sae": 512,
        "k_start": 4,
        "training_tokens": 512 * 400,  # = images
        "train_batch_size_tokens": 512,
        "store_batch_size_images": 256,
        "lr": 1e-3,
        "exclude_cls": False,
    },
    "blocks.2.hook_resid_post": {
        "token_selection": "patches",
        "d_sae": 1024,
        "k_start": 8,
        "training_tokens": 4096 * 160,  # = 10,240 images x 64 patches
        "train_batch_size_tokens": 4096,
        "store_batch_size_images": 128,
        "lr": 1e-3,
        "exclude_cls": True,  # the SAE saw only patches: CLS passes through unchanged
    },
}
SHIPPED_FILES = ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors")


def runner_config(sae_id: str, d_in: int, work: Path, seed: int) -> Any:
    from msae_plugin.vision.training import VisionSAERunnerConfig

    s = SAES[sae_id]
    return VisionSAERunnerConfig.from_dict(
        {
            "sae": {
                "architecture": "msae",
                "d_in": d_in,
                "d_sae": s["d_sae"],
                "k_start": s["k_start"],
                "weighting": "RW",
                "reconstruction_loss": "nmse",
            },
            "model_name": "msae-tiny-clip",
            "hook_name": sae_id,
            "dataset_path": "msae-digits",
            "dataset_kwargs": {"images_per_epoch": 8192},
            "token_selection": s["token_selection"],
            "training_tokens": s["training_tokens"],
            "train_batch_size_tokens": s["train_batch_size_tokens"],
            "store_batch_size_images": s["store_batch_size_images"],
            "n_batches_in_buffer": 16,
            "lr": s["lr"],
            "lr_scheduler_name": "cosineannealing",
            "lr_warm_up_steps": 20,
            "lr_end": s["lr"] / 10,
            "n_batches_for_norm_estimate": 16,
            "n_eval_batches": 2,
            "checkpoint_path": str(work / "checkpoints"),
            "output_path": str(work / "out"),
            "save_final_checkpoint": False,
            "seed": seed,
            "device": "cpu",
        }
    )


def held_out_activations(model: Any, images: torch.Tensor, sae_id: str) -> torch.Tensor:
    """Activations of held-out images at ``sae_id``, selected as in training (patches only for
    ``blocks.2``)."""
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=[sae_id])
    acts = cache[sae_id]
    if acts.ndim == 3:
        acts = acts[:, model.cfg.n_prefix_tokens :].reshape(-1, acts.shape[-1])
    return acts


def evaluate(model: Any, sae: Any, sae_id: str, n_images: int, seed: int) -> dict[str, Any]:
    from msae_plugin.embedded.dataset import make_digit_scenes, normalize
    from msae_plugin.embedded.zero_shot import build_zero_shot_classifier
    from msae_plugin.metrics import evaluate_sae
    from msae_plugin.vision.evaluation import zero_shot_accuracy_kept

    scenes = make_digit_scenes(n_images, split="test", seed=seed)
    images = normalize(scenes.images)
    acts = held_out_activations(model, images, sae_id)
    recon = evaluate_sae(sae, acts)
    classifier = build_zero_shot_classifier(model, model.tokenizer)
    zs = zero_shot_accuracy_kept(
        model, sae, images, scenes.labels, classifier, exclude_cls=SAES[sae_id]["exclude_cls"]
    )
    return {"n_images": n_images, "seed": seed, "n_tokens": len(acts),
            "reconstruction": recon, "zero_shot": zs}


def print_table(sae_id: str, ev: dict[str, Any]) -> None:
    zs = ev["zero_shot"]
    print(f"\n{sae_id}: {ev['n_tokens']} held-out tokens from {ev['n_images']} test scenes; "
          f"zero-shot digit accuracy without SAE {zs['original']:.3f}")
    print(f"{'k':>6} {'L0':>7} {'FVU':>7} {'cos':>6} {'zero-shot (kept)':>18}")
    for key, res in ev["reconstruction"].items():
        if key == "alignment":
            continue
        rq, sp = res["reconstruction_quality"], res["sparsity"]
        z = zs.get(key, {})
        kept = f"{z['accuracy']:.3f} ({100 * z['kept']:.1f} %)" if z else "-"
        print(f"{key:>6} {sp['l0']:>7.1f} {rq['fvu']:>7.4f} {rq['cossim']:>6.3f} {kept:>18}")


def write_sae(src: Path, dest: Path) -> None:
    from msae_plugin.atomic_io import atomic_directory

    with atomic_directory(dest) as tmp:
        for name in SHIPPED_FILES:
            shutil.copyfile(src / name, tmp / name)
            os.chmod(tmp / name, 0o644)  # package data: readable by everyone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=None,
                        help=f"release folder (default: the package's {EMBEDDED_RELEASE} folder)")
    parser.add_argument("--no-write", action="store_true", help="train and evaluate only")
    parser.add_argument("--only", choices=sorted(SAES), action="append",
                        help="train only this sae_id (repeatable)")
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    import msae_plugin
    from msae_plugin.preflight import ensure_writable_dir
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP
    from msae_plugin.vision.training import VisionSAETrainingRunner

    msae_plugin.register()
    from sae_lens import SAE

    out = Path(args.out_dir) if args.out_dir else release_dir(EMBEDDED_RELEASE)
    if not args.no_write:  # refuse an unwritable destination before minutes of training
        ensure_writable_dir(out, f"release folder {out}", "pass a writable --out-dir.")
    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip")
    log_path = out / "training_log.json"
    log: dict[str, Any] = json.loads(log_path.read_text()) if log_path.is_file() else {}
    log.setdefault("saes", {})
    log["command"] = "python scripts/train_embedded_msaes.py " + " ".join(sys.argv[1:] if argv is None else argv)
    log["torch_threads"] = torch.get_num_threads()
    t_all = time.perf_counter()
    for sae_id in args.only or list(SAES):
        with tempfile.TemporaryDirectory(prefix="msae-release-") as tmp:
            work = Path(tmp)
            cfg = runner_config(sae_id, model.activation_width(sae_id), work, args.seed)
            print(f"\n== {sae_id}: MSAE d_sae {cfg.sae.d_sae}, ladder {list(cfg.sae.ladder)}, "
                  f"{cfg.training_tokens:,} tokens ({cfg.token_selection}) ==", flush=True)
            t0 = time.perf_counter()
            VisionSAETrainingRunner(cfg, override_model=model).run()
            seconds = time.perf_counter() - t0
            sae = SAE.load_from_disk(str(work / "out")).eval()
            ev = evaluate(model, sae, sae_id, args.eval_images, seed=args.seed + 10_000)
            print_table(sae_id, ev)
            print(f"training: {seconds:.0f} s")
            log["saes"][sae_id] = {"settings": SAES[sae_id], "train_seconds": seconds, **ev}
            if not args.no_write:
                write_sae(work / "out", out / sae_id)
                print(f"wrote {out / sae_id}")
    log["total_seconds"] = time.perf_counter() - t_all
    if not args.no_write:
        from msae_plugin.atomic_io import atomic_write_text

        atomic_write_text(log_path, json.dumps(log, indent=1) + "\n")
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"wrote {log_path}; release folder {size:,} bytes")
    print(f"total {log['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
