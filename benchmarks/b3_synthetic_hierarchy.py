"""B3 — SAELens synthetic hierarchical benchmark: MSAE vs topk, batchtopk, matryoshka_batchtopk.

Data: ``sae_lens.synthetic.SyntheticModel`` with a feature hierarchy (``HierarchyConfig``: a
forest of trees, children fire only when their parent fires, part of the sibling groups mutually
exclusive, firing probabilities compensated for the gating), Zipfian firing probabilities,
folded-normal-ish magnitudes and an orthogonalised feature dictionary in superposition
(n_features > d_in). One fixed training set is drawn once; every SAE is trained with SAELens's
``SAETrainer`` on the identical batch stream (same rows, same order, same number of samples).

Matched L0: target k = round(true mean L0 of the data). SAELens baselines use k = target
(``topk`` per sample; ``batchtopk`` and ``matryoshka_batchtopk`` on average over the batch), with
SAELens defaults (AuxK 1.0, decoder-norm rescaling, E‖x‖ = √d_in input scaling). The MSAE (RW,
nmse) is trained with the ladder target, 2·target, 4·target, …, d_sae and evaluated at TopK
k = target and, separately, on its ReLU-only path. d_sae = n_features for every SAE.

Each architecture tries the same LR grid; the LR with the lowest validation FVU (at the matched
L0) is kept. Test metrics:
* MCC, uniqueness, dead latents, SAELens explained variance, precision/recall/F1 of latents as
  feature detectors: SAELens's own ``sae_lens.synthetic.eval_sae_on_synthetic_data`` (MCC =
  ``mean_correlation_coefficient``: Hungarian matching of |cos| between SAE decoder rows and the
  true feature vectors, mean over matched pairs), on the same freshly generated evaluation
  samples for every SAE (fixed seed, batches of 4096; BatchTopK models are evaluated as SAELens's
  ``SyntheticSAERunner`` does, with their training-time batch-level TopK);
* per-sample FVU and L0 (``msae_plugin.metrics``) on a held-out test set.
Target: MSAE best or tied-best MCC (tie = within ``--mcc-tie`` absolute).

    python benchmarks/b3_synthetic_hierarchy.py           # the real benchmark (≤ 10 min on 2 cores)
    python benchmarks/b3_synthetic_hierarchy.py --quick   # smoke test (< 1 min)
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
    train,
    write_json,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke configuration (< 1 min)")
    p.add_argument("--n-features", type=int, default=256, help="true features = d_sae")
    p.add_argument("--d-in", type=int, default=64)
    p.add_argument("--roots", type=int, default=16, help="hierarchy root nodes")
    p.add_argument("--branching", type=str, default="2,4", help="min,max children per parent")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--me-portion", type=float, default=0.5,
                   help="fraction of parents with mutually exclusive children")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--train-samples", type=int, default=2_560_000)
    p.add_argument("--val-samples", type=int, default=16_384)
    p.add_argument("--test-samples", type=int, default=65_536)
    p.add_argument("--eval-samples", type=int, default=65_536,
                   help="samples for SAELens's eval_sae_on_synthetic_data")
    p.add_argument("--lrs", type=str, default="1e-3,4e-3,1e-2", help="comma-separated LR grid (all SAEs)")
    p.add_argument("--mcc-tie", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_features, args.d_in, args.roots = 64, 32, 6
        args.batch, args.train_samples = 512, 512 * 100
        args.val_samples, args.test_samples, args.eval_samples = 4096, 8192, 8192
        args.lrs = args.lrs.split(",")[0]
    args.lrs = [float(v) for v in str(args.lrs).split(",")]
    return args


def make_model(args: argparse.Namespace):
    from sae_lens.synthetic import (
        HierarchyConfig,
        OrthogonalizationConfig,
        SyntheticModel,
        SyntheticModelConfig,
        ZipfianFiringProbabilityConfig,
    )

    lo, hi = (int(v) for v in args.branching.split(","))
    cfg = SyntheticModelConfig(
        num_features=args.n_features,
        hidden_dim=args.d_in,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=0.7, max_prob=0.25,
                                                          min_prob=0.02),
        hierarchy=HierarchyConfig(total_root_nodes=args.roots, branching_factor=(lo, hi),
                                  max_depth=args.depth,
                                  mutually_exclusive_portion=args.me_portion,
                                  compensate_probabilities=True),
        orthogonalization=OrthogonalizationConfig(num_steps=100),
        std_firing_magnitudes=0.15,
        mean_firing_magnitudes=1.0,
        seed=args.seed,
    )
    return cfg, SyntheticModel(cfg)


def build(arch: str, args: argparse.Namespace, k: int, seed: int):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    from msae_plugin.msae.config import MSAETrainingSAEConfig
    from msae_plugin.msae.training_sae import MSAETrainingSAE

    d_sae = args.n_features
    common = {"d_in": args.d_in, "d_sae": d_sae}
    scaled = common | {"normalize_activations": "expected_average_only_in"}
    torch.manual_seed(seed)
    if arch == "msae":
        return MSAETrainingSAE(MSAETrainingSAEConfig(**common, k_start=k, weighting="RW",
                                                     reconstruction_loss="nmse"))
    if arch == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(**scaled, k=k))
    if arch == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**scaled, k=k))
    if arch == "matryoshka_batchtopk":
        widths = [d_sae // 8, d_sae // 4, d_sae // 2, d_sae]
        return MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(**scaled, k=k, matryoshka_widths=widths))
    raise ValueError(arch)


def synthetic_eval(sae, model, args) -> dict:
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    torch.manual_seed(args.seed + 7)  # identical evaluation samples for every SAE
    res = eval_sae_on_synthetic_data(sae, model.feature_dict, model.activation_generator,
                                     num_samples=args.eval_samples, batch_size=4096)
    return res.to_dict()


def main(argv: list[str] | None = None) -> dict:
    from msae_plugin.metrics import evaluate_sae, mode_name

    args = parse_args(argv)
    t_start = time.perf_counter()
    info = machine_info()
    print(f"machine: {info['platform']} | cpus={info['cpu_count']} | torch {info['torch']} "
          f"threads={info['torch_threads']} | load={info['load_average_1_5_15min']}")

    syn_cfg, model = make_model(args)
    n_hier = len(model.hierarchy.feature_indices_used) if model.hierarchy else 0
    train_x, _ = sample_synthetic(model, args.train_samples, args.seed + 1, desc="train data")
    val_x, _ = sample_synthetic(model, args.val_samples, args.seed + 2, desc="val data")
    test_x, test_f = sample_synthetic(model, args.test_samples, args.seed + 3, desc="test data",
                                      keep_features=True)
    true_l0 = float((test_f > 0).float().sum(-1).mean())
    k = max(1, round(true_l0))
    print(f"data: {args.n_features} true features ({n_hier} in the hierarchy) in d_in={args.d_in}; "
          f"true mean L0 = {true_l0:.2f} -> matched k = {k}; train {tuple(train_x.shape)}")

    archs = ["msae", "topk", "batchtopk", "matryoshka_batchtopk"]
    best: dict[str, dict] = {}
    runs = []
    for arch in archs:
        for lr in args.lrs:
            sae = build(arch, args, k, args.seed + 10)
            info_run = train(sae, train_x, args.batch, args.train_samples, lr,
                             seed=args.seed + 100, desc=f"{arch} lr={lr:g}")
            if arch == "msae":
                val = row(evaluate_sae(sae, val_x, ks=[k], cknna_samples=0)[mode_name(k)])
            else:
                val = row(evaluate_plain(sae, val_x))
            runs.append({"model": arch, "lr": lr, "val_fvu": val["fvu"], "val_l0": val["l0"]}
                        | info_run)
            print(f"   {arch} lr={lr:g}: val FVU {val['fvu']:.4f}, L0 {val['l0']:.2f} "
                  f"({info_run['train_seconds']} s)")
            if arch not in best or val["fvu"] < best[arch]["val_fvu"]:
                best[arch] = {"sae": sae, "lr": lr, "val_fvu": val["fvu"]}

    # ---- test-set evaluation ---------------------------------------------------------------
    entries = []  # (label, arch, sae, msae_k or "plain")
    for arch in archs:
        sae = best[arch]["sae"]
        if arch == "msae":
            entries.append((f"msae @ TopK k={k}", arch, sae, k))
            entries.append(("msae @ ReLU path", arch, sae, None))
        else:
            entries.append((arch, arch, sae, "plain"))
    results = {}
    for label, arch, sae, mode in entries:
        if mode == "plain":
            fvu_res = row(evaluate_plain(sae, test_x))
            syn = synthetic_eval(sae, model, args)
        else:
            fvu_res = row(evaluate_sae(sae, test_x, ks=[mode], cknna_samples=0)[mode_name(mode)])
            sae.set_default_k(mode)
            syn = synthetic_eval(sae, model, args)
            sae.set_default_k(None)
        results[label] = {"arch": arch, "lr": best[arch]["lr"], "test": fvu_res,
                          "synthetic_eval": syn}

    mccs = {lab: r["synthetic_eval"]["mcc"] for lab, r in results.items()}
    best_other = max(v for lab, v in mccs.items() if not lab.startswith("msae"))
    msae_mcc = max(v for lab, v in mccs.items() if lab.startswith("msae"))
    verdict = "PASS" if msae_mcc >= best_other - args.mcc_tie else "FAIL"

    headers = ["model", "lr", "L0", "FVU (per-sample)", "expl. var (SAELens)", "MCC",
               "uniqueness", "dead", "F1"]
    rows = []
    for label, r in results.items():
        s, t = r["synthetic_eval"], r["test"]
        rows.append([label, f"{r['lr']:g}", f"{t['l0']:.2f}", f"{t['fvu']:.4f}",
                     f"{s['explained_variance']:.4f}", f"{s['mcc']:.4f}",
                     f"{s['uniqueness']:.3f}", s["dead_latents"],
                     f"{s['classification']['f1_score']:.3f}"])
    print()
    table = print_table(headers, rows)
    summary = (f"matched L0: k = {k} (true mean L0 {true_l0:.2f}); MSAE MCC (decoder-only, same "
               f"for both paths) = {msae_mcc:.4f}; best baseline MCC = {best_other:.4f} -> "
               f"target 'MSAE best or tied-best (±{args.mcc_tie})': {verdict}")
    print(summary)

    # ---- plot ----------------------------------------------------------------------------------
    out_dir = args.out or RESULTS_DIR
    name = "b3_synthetic_hierarchy" + ("_quick" if args.quick else "")
    png = out_dir / f"{name}.png"
    _plot(results, png, title=f"B3: hierarchical synthetic data, matched L0 k={k}")

    payload = {
        "benchmark": "b3_synthetic_hierarchy",
        "command": "python benchmarks/b3_synthetic_hierarchy.py" + (" --quick" if args.quick else ""),
        "config": {k_: (str(v) if isinstance(v, Path) else v) for k_, v in vars(args).items()}
        | {"synthetic_model": syn_cfg.to_dict(), "d_sae": args.n_features,
           "matched_k": k, "msae_ladder": list(best["msae"]["sae"].cfg.ladder),
           "matryoshka_widths": list(best["matryoshka_batchtopk"]["sae"].cfg.matryoshka_widths),
           "mcc_definition": "sae_lens.synthetic.mean_correlation_coefficient (Hungarian on |cos|"
                             " of decoder rows vs true features)",
           "schedule": "constant LR, linear decay to 0 over the last 20% of steps; Adam; grad clip 1",
           "lr_selection": "per architecture, lowest validation FVU at the matched L0"},
        "machine": info,
        "machine_end": {"load_average_1_5_15min": load_average()},
        "results": {"true_l0": true_l0, "n_features_in_hierarchy": n_hier, "models": results,
                    "msae_mcc": msae_mcc, "best_baseline_mcc": best_other, "verdict": verdict,
                    "training_runs": runs},
        "table": table + "\n" + summary,
        "plot": str(png),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    path = write_json(name, payload, args.out)
    print(f"\nwrote {path} and {png}  (total {payload['wall_seconds']} s)")
    return payload


def _plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    labels = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    metrics = [("MCC (higher better)", lambda r: r["synthetic_eval"]["mcc"]),
               ("FVU per-sample (lower better)", lambda r: r["test"]["fvu"]),
               ("L0", lambda r: r["test"]["l0"])]
    colors = ["tab:blue", "tab:cyan", "tab:orange", "tab:green", "tab:red"]
    for ax, (name, fn) in zip(axes, metrics, strict=True):
        vals = [fn(results[lab]) for lab in labels]
        ax.bar(range(len(labels)), vals, color=colors[: len(labels)])
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(name)
        for i, v in enumerate(vals):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
