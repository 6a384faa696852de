"""B1 — cost of one full training step: MSAE vs SAELens TopK.

One ``SAETrainer.step(batch)`` per SAE (forward, backward, grad-norm clipping, Adam, LR
scheduler, SAELens's firing statistics), fp32 on CPU, d_in=512, d_sae=8192, batch 4096, MSAE
ladder 64, 128, …, 4096, 8192. Baselines, all SAELens architectures of the same size:

* ``topk`` at k = 4096, the ladder's largest TopK level k_max (= d_sae/2 here) — the headline;
* ``standard`` (ReLU + L1): the dense lower limit of any SAE step of this size;
* ``batchtopk`` at k = k_max;
* ``topk`` at every other level of the ladder: the sum over the ladder is the cost of the
  alternative a user would otherwise train (one TopK SAE per sparsity), per step.

All SAEs live in ONE process and are stepped interleaved (A B C A B C …) on the same batch, so
load changes on a shared machine hit all of them alike; warm-up rounds are excluded. Reported:
median and min seconds per step and the ratio MSAE/TopK of the medians (and of the mins).

MSAE's step cost depends on how many pre-activations are positive: levels whose k is at least the
batch's largest per-row count of positive pre-activations collapse into the dense ReLU level. So
two states are measured:

(a) at initialisation (about half of the pre-activations are positive);
(b) after the MSAE has been trained briefly on the sparse synthetic data
    x = relu(N(0, 1) − 2) · A + offset (A: n_features × d_in random dictionary).
Both states time the same batch of that data. The TopK SAEs are untrained in both states (their
step cost does not depend on the weights: TopK at k ≥ 4096 is dense work either way).

Targets (issue 14): MSAE/TopK(k_max) ≤ 1.5× on CPU at init and after training (≤ 1.2× on a
GPU), and well below the per-level sum.

    python benchmarks/b1_step_cost.py            # the real benchmark (~8–10 min on 2 cores)
    python benchmarks/b1_step_cost.py --quick    # smoke test (< 1 min)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_info, make_trainer, print_table, write_json  # noqa: E402

TARGET_RATIO = 1.5  # CPU target of issue 14
TARGET_RATIO_GPU = 1.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke configuration (< 1 min)")
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k-start", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1, help="interleaved warm-up rounds (excluded)")
    p.add_argument("--repeats", type=int, default=5, help="measured interleaved rounds per state")
    p.add_argument("--train-steps", type=int, default=100,
                   help="brief MSAE training steps before state (b)")
    p.add_argument("--train-batch", type=int, default=512)
    p.add_argument("--train-lr", type=float, default=4e-3)
    p.add_argument("--n-features", type=int, default=2048,
                   help="dictionary size of the sparse synthetic data")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (target 1.2x on a GPU)")
    p.add_argument("--no-per-level", action="store_true",
                   help="skip the TopK SAEs at the other ladder levels (faster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.quick:
        args.d_in, args.d_sae, args.batch, args.k_start = 128, 2048, 1024, 64
        args.repeats, args.train_steps, args.train_batch = 3, 30, 256
        args.n_features = 512
    return args


def build_saes(args: argparse.Namespace) -> dict[str, tuple[object, object]]:
    """name -> (sae, trainer). Trainers never call fit(); step(batch) is driven by hand."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    from msae_plugin.msae.config import MSAETrainingSAEConfig
    from msae_plugin.msae.training_sae import MSAETrainingSAE

    torch.manual_seed(args.seed)
    msae = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae,
                                                 k_start=args.k_start, device=args.device))
    ladder = msae.cfg.ladder
    k_head = ladder[-2] if len(ladder) > 1 else ladder[-1]
    saes = {"msae": msae}
    size = {"d_in": args.d_in, "d_sae": args.d_sae, "device": args.device}
    saes[f"topk_k{k_head}"] = TopKTrainingSAE(TopKTrainingSAEConfig(**size, k=k_head))
    saes["standard"] = StandardTrainingSAE(StandardTrainingSAEConfig(**size))
    saes[f"batchtopk_k{k_head}"] = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**size,
                                                                                   k=k_head))
    if not args.no_per_level:
        for k in ladder[:-2]:
            saes[f"topk_k{k}"] = TopKTrainingSAE(TopKTrainingSAEConfig(**size, k=k))
    out = {}
    for name, sae in saes.items():
        # an "infinite" budget: we only call step(), the LR schedule stays constant
        trainer = make_trainer(sae, iter(()), args.batch, args.batch * 10**6, lr=1e-4,
                               decay_frac=0.0, device=args.device)
        out[name] = (sae, trainer)
    return out


def positive_stats(msae, x: torch.Tensor) -> dict[str, float]:
    """Code density of the MSAE on ``x`` and which ladder levels stay sparse in
    ``msae_plugin.msae.nested.nested_decodes`` (k < d_sae and k < max positives per row)."""
    with torch.no_grad():
        hp = msae.hidden_pre_from(x)
        pos = (hp > 0).sum(-1)
    n_max = int(pos.max())
    ladder = msae.cfg.ladder
    sparse_levels = [k for k in ladder if k < msae.cfg.d_sae and k < n_max]
    return {
        "frac_positive": float((hp > 0).float().mean()),
        "mean_positive_per_row": float(pos.float().mean()),
        "max_positive_per_row": n_max,
        "sparse_levels": sparse_levels,
        "n_levels_collapsed_into_dense": len(ladder) - len(sparse_levels),
    }


def measure(saes: dict, x: torch.Tensor, warmup: int, repeats: int, label: str) -> dict:
    times: dict[str, list[float]] = {name: [] for name in saes}
    loads = []
    total = (warmup + repeats) * len(saes)
    with tqdm(total=total, desc=f"steps {label}", leave=False) as pbar:
        for r in range(warmup + repeats):
            for name, (_, trainer) in saes.items():
                _sync(x)
                t0 = time.perf_counter()
                trainer.step(x)
                _sync(x)
                dt = time.perf_counter() - t0
                if r >= warmup:
                    times[name].append(dt)
                pbar.update(1)
            loads.append(load_average())
    return {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "all_s": [round(t, 4) for t in ts],
        }
        for name, ts in times.items()
    } | {"_load_average_per_round": loads}


def _sync(x: torch.Tensor) -> None:
    """Wait for queued GPU work, so a step's time is its own."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def sparse_data(n: int, A: torch.Tensor, offset: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.relu(torch.randn(n, A.shape[0], generator=gen) - 2.0) @ A + offset


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    info = machine_info()
    print(f"machine: {info['platform']} | cpus={info['cpu_count']} | torch {info['torch']} "
          f"threads={info['torch_threads']} | load={info['load_average_1_5_15min']}")

    saes = build_saes(args)
    msae = saes["msae"][0]
    ladder = list(msae.cfg.ladder)
    print(f"MSAE ladder: {ladder}; baselines: {[n for n in saes if n != 'msae']}")

    gen = torch.Generator().manual_seed(args.seed)
    A = torch.randn(args.n_features, args.d_in, generator=gen) / args.d_in**0.5
    offset = torch.randn(args.d_in, generator=gen)
    x_sparse = sparse_data(args.batch, A, offset, gen).to(args.device)

    results: dict = {"states": {}}

    # (a) at initialisation ------------------------------------------------------------------
    # both states time the same batch of sparse synthetic data; only the MSAE weights differ
    msae.fit_input_statistics(x_sparse)
    stats_a = positive_stats(msae, x_sparse)
    meas_a = measure(saes, x_sparse, args.warmup, args.repeats, "(a) init")
    results["states"]["a_init"] = {"batch": "relu(N(0,1)-2)·A + offset", "msae_code": stats_a,
                                   "timings": meas_a}

    # brief training of the MSAE on sparse synthetic data -------------------------------------
    t0 = time.perf_counter()
    trainer_b = make_trainer(msae, iter(()), args.train_batch, args.train_batch * args.train_steps,
                             lr=args.train_lr, decay_frac=0.0, device=args.device)
    for _ in tqdm(range(args.train_steps), desc="brief MSAE training", leave=False):
        trainer_b.step(sparse_data(args.train_batch, A, offset, gen).to(args.device))
        trainer_b.n_training_steps += 1
    train_s = time.perf_counter() - t0
    # the timing trainer keeps its own (fresh) Adam state; only the weights changed
    stats_b = positive_stats(msae, x_sparse)
    meas_b = measure(saes, x_sparse, args.warmup, args.repeats, "(b) trained")
    results["states"]["b_trained"] = {
        "batch": "relu(N(0,1)-2)·A + offset",
        "brief_training": {"steps": args.train_steps, "batch": args.train_batch,
                           "lr": args.train_lr, "seconds": round(train_s, 1)},
        "msae_code": stats_b,
        "timings": meas_b,
    }

    # table ----------------------------------------------------------------------------------
    headers = ["state", "frac>0", "max #>0/row", "sparse lvls", "SAE", "median s", "min s",
               "MSAE/SAE (med)", "MSAE/SAE (min)", "target"]
    rows = []
    verdicts = {}
    target = TARGET_RATIO if args.device == "cpu" else TARGET_RATIO_GPU
    k_head = ladder[-2] if len(ladder) > 1 else ladder[-1]
    for state, res in results["states"].items():
        t = res["timings"]
        st = res["msae_code"]
        for name in saes:
            ratio_med = t["msae"]["median_s"] / t[name]["median_s"]
            ratio_min = t["msae"]["min_s"] / t[name]["min_s"]
            if name != "msae":
                t[name]["ratio_msae_over_this_median"] = ratio_med
                t[name]["ratio_msae_over_this_min"] = ratio_min
            verdict = ""
            if name == f"topk_k{k_head}":
                verdict = "PASS" if ratio_med <= target else "FAIL"
                verdicts[state] = {"baseline": name, "ratio_median": ratio_med,
                                   "ratio_min": ratio_min, "target": target,
                                   "verdict": verdict}
            rows.append([state, f"{st['frac_positive']:.3f}", st["max_positive_per_row"],
                         len(st["sparse_levels"]), name, f"{t[name]['median_s']:.3f}",
                         f"{t[name]['min_s']:.3f}",
                         "" if name == "msae" else f"{ratio_med:.2f}x",
                         "" if name == "msae" else f"{ratio_min:.2f}x", verdict])
        per_level = [f"topk_k{k}" for k in ladder[:-1]]
        if all(name in t for name in per_level):
            med = sum(t[name]["median_s"] for name in per_level)
            low = sum(t[name]["min_s"] for name in per_level)
            t["_one_topk_per_level_sum"] = {"median_s": med, "min_s": low, "models": per_level}
            rows.append([state, "", "", "", f"sum: one topk per level ({len(per_level)})",
                         f"{med:.3f}", f"{low:.3f}", f"{t['msae']['median_s'] / med:.2f}x",
                         f"{t['msae']['min_s'] / low:.2f}x", ""])
    print()
    table = print_table(headers, rows)
    results["verdicts"] = verdicts

    payload = {
        "benchmark": "b1_step_cost",
        "command": "python benchmarks/b1_step_cost.py" + (" --quick" if args.quick else ""),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"ladder": ladder, "dtype": "float32", "device": args.device,
           "step": "SAETrainer.step(batch): forward, backward, clip_grad_norm_(1.0), Adam, LR "
                   "scheduler, firing stats",
           "target": f"MSAE / TopK(k={k_head}) <= {target}x (median)"},
        "machine": info,
        "machine_end": {"load_average_1_5_15min": load_average()},
        "results": results,
        "table": table,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    name = "b1_step_cost" + ("_cuda" if args.device != "cpu" else "") + ("_quick" if args.quick
                                                                        else "")
    path = write_json(name, payload, args.out)
    print(f"\nwrote {path}  (total {payload['wall_seconds']} s)")
    return payload


if __name__ == "__main__":
    main()
