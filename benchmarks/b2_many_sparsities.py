"""B2 — one model, many sparsities: ONE MSAE vs a separately trained SAELens TopK SAE per k.

Data: SAELens's synthetic generator (``sae_lens.synthetic.SyntheticModel``): a random
overcomplete feature dictionary (n_features > d_in, unit-norm feature vectors plus a bias),
Zipfian firing probabilities, folded-normal-ish firing magnitudes (mean 1, std 0.3), plus small
isotropic Gaussian noise. One fixed training set is drawn once; every model is trained with
SAELens's ``SAETrainer`` on exactly the same batch stream (same rows, same order, same number of
samples). Separate validation (LR selection) and held-out test sets.

Models:
* MSAE (RW weighting, nmse loss — the paper's defaults), ladder k_start, 2·k_start, …, d_sae;
* SAELens ``topk`` (SAELens defaults: AuxK coefficient 1, decoder-norm rescaling, inputs scaled to
  E‖x‖ = √d_in like ``normalize_activations="expected_average_only_in"``), one per k of the ladder
  below d_sae.
Both families use the same schedule shape (constant LR, linear decay to 0 over the last 20 % of
the steps); each family tries the same LR grid and keeps, per model, the LR with the lowest
validation FVU (for the MSAE: mean FVU over its TopK levels; for TopK at k: FVU at k).

Evaluation on the held-out test set with ``msae_plugin.metrics`` (per-sample FVU, the paper's
definition): MSAE at every k vs the dedicated TopK at that k (target MSAE ≤ 1.05 × TopK, PASS/FAIL
per k); the TopK trained at the largest TopK level evaluated at every smaller k (why nesting
matters); the MSAE's ReLU-only path (L0 and FVU).

    python benchmarks/b2_many_sparsities.py           # the real benchmark (≤ 15 min on 2 cores)
    python benchmarks/b2_many_sparsities.py --quick   # smoke test (< 1 min)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    evaluate_plain,
    load_average,
    machine_info,
    print_table,
    row,
    sample_synthetic,
    topk_at,
    train,
    write_json,
)

TARGET = 1.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke configuration (< 1 min)")
    p.add_argument("--d-in", type=int, default=64)
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--k-start", type=int, default=8)
    p.add_argument("--n-features", type=int, default=2048, help="ground-truth dictionary size")
    p.add_argument("--noise-std", type=float, default=0.02)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--train-samples", type=int, default=1_228_800)
    p.add_argument("--val-samples", type=int, default=16_384)
    p.add_argument("--test-samples", type=int, default=65_536)
    p.add_argument("--lrs-msae", type=str, default="4e-3,1e-2", help="comma-separated LR grid")
    p.add_argument("--lrs-topk", type=str, default="4e-3,1e-2", help="comma-separated LR grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.quick:
        args.d_in, args.d_sae, args.k_start, args.n_features = 32, 256, 8, 512
        args.batch, args.train_samples = 512, 512 * 120
        args.val_samples, args.test_samples = 4096, 8192
        args.lrs_msae = args.lrs_msae.split(",")[0]
        args.lrs_topk = args.lrs_topk.split(",")[0]
    args.lrs_msae = [float(v) for v in str(args.lrs_msae).split(",")]
    args.lrs_topk = [float(v) for v in str(args.lrs_topk).split(",")]
    return args


def make_data(args: argparse.Namespace):
    from sae_lens.synthetic import SyntheticModel, SyntheticModelConfig
    from sae_lens.synthetic.firing_probabilities import ZipfianFiringProbabilityConfig

    cfg = SyntheticModelConfig(
        num_features=args.n_features,
        hidden_dim=args.d_in,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=0.7, max_prob=0.3,
                                                          min_prob=0.005),
        std_firing_magnitudes=0.3,
        mean_firing_magnitudes=1.0,
        seed=args.seed,
    )
    model = SyntheticModel(cfg)
    train_x, _ = sample_synthetic(model, args.train_samples, args.seed + 1,
                                  noise_std=args.noise_std, desc="train data")
    val_x, _ = sample_synthetic(model, args.val_samples, args.seed + 2,
                                noise_std=args.noise_std, desc="val data")
    test_x, test_f = sample_synthetic(model, args.test_samples, args.seed + 3,
                                      noise_std=args.noise_std, desc="test data",
                                      keep_features=True)
    true_l0 = float((test_f > 0).float().sum(-1).mean())
    return cfg, train_x, val_x, test_x, true_l0


def new_msae(args, ladder_seed: int):
    from msae_plugin.msae.config import MSAETrainingSAEConfig
    from msae_plugin.msae.training_sae import MSAETrainingSAE

    torch.manual_seed(ladder_seed)
    return MSAETrainingSAE(MSAETrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae,
                                                 k_start=args.k_start, weighting="RW",
                                                 reconstruction_loss="nmse"))


def new_topk(args, k: int, seed: int):
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(seed)
    return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=k,
                                                 normalize_activations="expected_average_only_in"))


def main(argv: list[str] | None = None) -> dict:
    from msae_plugin.metrics import evaluate_sae, mode_name

    args = parse_args(argv)
    t_start = time.perf_counter()
    info = machine_info()
    print(f"machine: {info['platform']} | cpus={info['cpu_count']} | torch {info['torch']} "
          f"threads={info['torch_threads']} | load={info['load_average_1_5_15min']}")

    syn_cfg, train_x, val_x, test_x, true_l0 = make_data(args)
    print(f"data: train {tuple(train_x.shape)}, val {tuple(val_x.shape)}, test "
          f"{tuple(test_x.shape)}; true mean L0 (test) = {true_l0:.2f}")

    ladder = list(new_msae(args, 0).cfg.ladder)
    topk_ks = [k for k in ladder if k < args.d_sae]
    print(f"MSAE ladder {ladder}; dedicated TopK at k in {topk_ks}")
    runs: list[dict] = []

    # ---- MSAE: LR grid, select on validation mean FVU over its TopK levels ------------------
    best_msae, best_msae_score, msae_lr_scores = None, float("inf"), {}
    for lr in args.lrs_msae:
        sae = new_msae(args, args.seed + 10)
        info_run = train(sae, train_x, args.batch, args.train_samples, lr, seed=args.seed + 100,
                         desc=f"MSAE lr={lr:g}")
        val = evaluate_sae(sae, val_x, ks=topk_ks, cknna_samples=0)
        score = sum(val[mode_name(k)]["reconstruction_quality"]["fvu"] for k in topk_ks) / len(topk_ks)
        msae_lr_scores[lr] = score
        runs.append({"model": "msae", "lr": lr, "val_mean_fvu": score} | info_run)
        print(f"   MSAE lr={lr:g}: val mean FVU {score:.4f} ({info_run['train_seconds']} s)")
        if score < best_msae_score:
            best_msae, best_msae_score = sae, score
    msae_lr = min(msae_lr_scores, key=msae_lr_scores.get)

    # ---- TopK per k: LR grid, select on validation FVU at k --------------------------------
    best_topk: dict[int, tuple[object, float, float]] = {}
    for k in topk_ks:
        for lr in args.lrs_topk:
            sae = new_topk(args, k, args.seed + 10)
            info_run = train(sae, train_x, args.batch, args.train_samples, lr,
                             seed=args.seed + 100, desc=f"TopK k={k} lr={lr:g}")
            score = row(evaluate_plain(sae, val_x))["fvu"]
            runs.append({"model": f"topk_k{k}", "lr": lr, "val_fvu": score} | info_run)
            print(f"   TopK k={k} lr={lr:g}: val FVU {score:.4f} ({info_run['train_seconds']} s)")
            if k not in best_topk or score < best_topk[k][1]:
                best_topk[k] = (sae, score, lr)

    # ---- test-set evaluation ---------------------------------------------------------------
    msae_res = evaluate_sae(best_msae, test_x, ks=[*ladder, None])
    topk_res = {mode_name(k): evaluate_plain(best_topk[k][0], test_x) for k in topk_ks}
    k_max = topk_ks[-1]
    big = best_topk[k_max][0]
    big_res = {}
    for k in topk_ks:
        with topk_at(big, k):
            big_res[mode_name(k)] = evaluate_plain(big, test_x)

    headers = ["k", "MSAE FVU", "TopK@k FVU", "ratio", "ΔFVU", f"≤{TARGET}x", "TopK lr",
               f"TopK(k={k_max})@k FVU", "MSAE L0", "TopK L0"]
    rows, per_k = [], {}
    for k in topk_ks:
        m = row(msae_res[mode_name(k)])
        t = row(topk_res[mode_name(k)])
        b = row(big_res[mode_name(k)])
        ratio = m["fvu"] / max(t["fvu"], 1e-12)
        verdict = "PASS" if m["fvu"] <= TARGET * t["fvu"] else "FAIL"
        per_k[k] = {"msae": m, "topk_dedicated": t, "topk_dedicated_lr": best_topk[k][2],
                    f"topk_k{k_max}_at_k": b, "ratio_msae_over_topk": ratio, "verdict": verdict}
        rows.append([k, f"{m['fvu']:.3g}", f"{t['fvu']:.3g}", f"{ratio:.3f}",
                     f"{m['fvu'] - t['fvu']:+.1e}", verdict,
                     f"{best_topk[k][2]:g}", f"{b['fvu']:.3g}", f"{m['l0']:.1f}",
                     f"{t['l0']:.1f}"])
    relu = row(msae_res["relu"])
    dense_k = row(msae_res[mode_name(args.d_sae)])
    print()
    table = print_table(headers, rows)
    extra = (f"MSAE ReLU path: L0 = {relu['l0']:.1f} / {args.d_sae}, FVU = {relu['fvu']:.5f}, "
             f"cos = {relu['cossim']:.4f}, dead = {relu['n_dead']}; "
             f"CKNNA(inputs, ReLU latents) = {msae_res.get('alignment', {}).get('cknna_relu', float('nan')):.4f}\n"
             f"MSAE lr = {msae_lr:g} (val mean FVU by lr: "
             f"{ {f'{k:g}': round(v, 5) for k, v in msae_lr_scores.items()} })\n"
             f"true mean L0 of the data = {true_l0:.2f}")
    print(extra)
    n_pass = sum(v["verdict"] == "PASS" for v in per_k.values())
    print(f"target MSAE ≤ {TARGET} × TopK: {n_pass}/{len(per_k)} ks PASS")

    # ---- plot ----------------------------------------------------------------------------------
    out_dir = args.out or RESULTS_DIR
    name = "b2_many_sparsities" + ("_quick" if args.quick else "")
    png = _plot(per_k, relu, k_max, out_dir / f"{name}.png",
                title=f"B2: held-out FVU vs L0 (d_in={args.d_in}, d_sae={args.d_sae}, "
                      f"{args.train_samples:,} samples per model)")

    payload = {
        "benchmark": "b2_many_sparsities",
        "command": "python benchmarks/b2_many_sparsities.py" + (" --quick" if args.quick else ""),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"ladder": ladder, "topk_ks": topk_ks, "synthetic_model": syn_cfg.to_dict(),
           "msae": {"weighting": "RW", "reconstruction_loss": "nmse", "aux_loss_coefficient": 0.0},
           "topk": {"aux_loss_coefficient": 1.0, "rescale_acts_by_decoder_norm": True,
                    "normalize_activations": "expected_average_only_in"},
           "schedule": "constant LR, linear decay to 0 over the last 20% of steps; Adam; grad clip 1",
           "lr_selection": "per model, lowest validation FVU (MSAE: mean over its TopK levels)",
           "fvu": "per-sample Var_j(x-x̂)/Var_j(x), mean over test samples (msae_plugin.metrics)",
           "target": f"MSAE FVU(k) <= {TARGET} x dedicated TopK FVU(k), each k"},
        "machine": info,
        "machine_end": {"load_average_1_5_15min": load_average()},
        "results": {
            "true_l0": true_l0,
            "msae_lr": msae_lr,
            "msae_val_mean_fvu_by_lr": {f"{k:g}": v for k, v in msae_lr_scores.items()},
            "per_k": per_k,
            "n_pass": n_pass,
            "n_ks": len(per_k),
            "msae_relu": relu,
            "msae_k_d_sae": dense_k,
            "msae_cknna_relu": msae_res.get("alignment", {}).get("cknna_relu"),
            "msae_full": msae_res,
            "training_runs": runs,
        },
        "table": table + "\n" + extra,
        "plot": str(png),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    path = write_json(name, payload, args.out)
    print(f"\nwrote {path} and {png}  (total {payload['wall_seconds']} s)")
    return payload


def _plot(per_k: dict, relu: dict, k_max: int, path: Path, title: str) -> Path:
    """FVU vs L0 (log-log, so the k ≥ d_in regime stays visible) and the per-k FVU ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    ks = sorted(per_k)
    floor = 1e-7
    fig, (ax, ax_r) = plt.subplots(1, 2, figsize=(12, 4.4))
    series = [("MSAE (one model, TopK-k)", "msae", "o-", "tab:blue"),
              ("SAELens TopK (one model per k)", "topk_dedicated", "s-", "tab:orange"),
              (f"SAELens TopK trained k={k_max}, run at k", f"topk_k{k_max}_at_k", "^-",
               "tab:green")]
    for label, key, style, color in series:
        l0 = [per_k[k][key]["l0"] for k in ks]
        fvu = [max(per_k[k][key]["fvu"], floor) for k in ks]
        ax.plot(l0, fvu, style, color=color, label=label)
    ax.plot([relu["l0"]], [max(relu["fvu"], floor)], "*", ms=14, color="tab:purple",
            label="MSAE ReLU path")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("L0 (active latents per sample)")
    ax.set_ylabel("FVU, per-sample (log)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ratios = [per_k[k]["ratio_msae_over_topk"] for k in ks]
    colors = ["tab:green" if per_k[k]["verdict"] == "PASS" else "tab:red" for k in ks]
    ax_r.bar([str(k) for k in ks], ratios, color=colors)
    ax_r.axhline(TARGET, color="k", ls="--", lw=1, label=f"target {TARGET}x")
    ax_r.axhline(1.0, color="gray", lw=0.8)
    ax_r.set_yscale("log")
    ax_r.set_xlabel("k")
    ax_r.set_ylabel("FVU ratio MSAE / dedicated TopK (log)")
    for i, r in enumerate(ratios):
        ax_r.annotate(f"{r:.2f}", (i, r), ha="center", va="bottom", fontsize=8)
    ax_r.legend(fontsize=8)
    ax_r.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
