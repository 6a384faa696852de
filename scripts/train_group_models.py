"""Train group-composition networks (Chughtai architecture) over several seeds and record, for
each, the grokking step, the brute-force accuracy over all |G|² pairs, the logit
bi-equivariance R² and the wall-clock time, in a results JSON.

    python scripts/train_group_models.py --group S4 --seeds 0 1 2 --steps 90000 \
        --out runs/groups --ship-seed 0

``--ship-seed`` copies that seed's model into the package (msae_plugin/groups/data/<group>/), where
``load_shipped_model(group)`` finds it. Threads default to 1: these models are tiny, and on a
shared 2-core machine torch's thread pool loses ~10x to contention (measured: 2.1 ms/step with 1
thread vs 25-90 ms/step with 2 on a loaded machine). For statistics across seeds (the paper trains
100 S5 models) run >= 20 seeds, e.g. on a GPU machine with --device cuda.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from msae_plugin.atomic_io import atomic_write_text
from msae_plugin.groups.brute_force import brute_force_accuracy
from msae_plugin.groups.equivariance import equivariance_report
from msae_plugin.groups.model import DATA_DIR, GroupMLP, GroupMLPConfig
from msae_plugin.groups.training import TrainConfig, train_group_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", default="S4")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=90_000)
    ap.add_argument("--train-frac", type=float, default=0.6)
    ap.add_argument("--d-embed", type=int, default=256)
    ap.add_argument("--d-hidden", type=int, default=128)
    ap.add_argument("--unembed-bias", action="store_true")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--early-stop-hold", type=int, default=None,
                    help="stop this many steps after test accuracy first stays >= 0.99")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/groups")
    ap.add_argument("--ship-seed", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results_path = out / f"{args.group}_results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": {}}
    for seed in args.seeds:
        cfg = GroupMLPConfig(args.group, args.d_embed, args.d_hidden, args.unembed_bias, seed)
        model = GroupMLP(cfg)
        tcfg = TrainConfig(
            train_frac=args.train_frac, steps=args.steps, eval_every=args.eval_every,
            early_stop_acc=0.99 if args.early_stop_hold is not None else None,
            early_stop_hold=args.early_stop_hold or 0, progress=not args.no_progress,
            device=args.device,
        )
        hist = train_group_model(model, tcfg)
        model.cpu()
        acc, bf_seconds = brute_force_accuracy(model)
        t0 = time.perf_counter()
        report = equivariance_report(model)
        report_seconds = time.perf_counter() - t0
        run = {
            "config": cfg.to_dict(), "train_frac": args.train_frac,
            "optimizer": {"lr": tcfg.lr, "betas": list(tcfg.betas),
                          "weight_decay": tcfg.weight_decay, "batch": "full"},
            "steps": hist.final_step, "grok_step": hist.grok_step,
            "train_seconds": round(hist.seconds, 2),
            "ms_per_step": round(1000 * hist.seconds / max(1, hist.final_step), 3),
            "final_train_acc": hist.train_acc[-1], "final_test_acc": hist.test_acc[-1],
            "final_train_loss": hist.train_loss[-1],
            "brute_force_accuracy": acc, "brute_force_seconds": round(bf_seconds, 4),
            "equivariance": report, "equivariance_seconds": round(report_seconds, 2),
            "threads": args.threads, "device": args.device,
        }
        model.save(out / f"{args.group}_seed{seed}", metadata=run)
        results["runs"][str(seed)] = run
        results["machine"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                              "platform": platform.platform(), "processor": platform.processor()}
        atomic_write_text(results_path, json.dumps(results, indent=2, sort_keys=True))
        print(json.dumps({"seed": seed, "grok_step": hist.grok_step, "steps": hist.final_step,
                          "seconds": run["train_seconds"], "accuracy": acc,
                          "r2": report["biequivariance_r2"]}), flush=True)
        if args.ship_seed == seed:
            dest = DATA_DIR / model.group.name
            tmp = out / f"{args.group}_seed{seed}"
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(tmp, dest)
            print(f"shipped {tmp} -> {dest}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
