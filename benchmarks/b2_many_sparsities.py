"""B2 — one model, many sparsities: ONE MSAE vs a separately trained SAELens TopK SAE per k.

Datasets (``--data``):

* ``synthetic`` (default, the original B2): SAELens's synthetic generator
  (``sae_lens.synthetic.SyntheticModel``): a random overcomplete feature dictionary (unit-norm
  feature vectors plus a bias), Zipfian firing probabilities, firing magnitudes (mean 1, std 0.3),
  plus small isotropic Gaussian noise; d_in 64, d_sae 1024, ladder 8, 16, ..., 1024. Caveat: at
  k >= d_in any TopK SAE reconstructs it almost exactly, so the k >= 64 rows compare numbers
  near zero.
* ``synthetic-overcomplete``: the same generator with more true features than latents
  (n_features = 4 x d_sae = 2048, d_sae = 512), denser firing (true L0 ~ 33) and more noise
  (std 0.05), and a ladder 2, 4, ..., 32 (+ d_sae) that stays below d_in = 64, so a dedicated
  TopK's FVU is clearly above zero at every compared k.
* ``clip-embed``: the embedded CLIP's (``msae-tiny-clip``) pooled ``hook_image_embed`` (width 64,
  one vector per image) on rendered digit scenes (``msae_plugin.embedded.make_digit_scenes``);
  d_sae 512 (8x), ladder 1, 2, 4, 8 (+ 512): a dedicated TopK already reaches FVU < 0.005 at
  k = 16 on this embedding (run ``--ladder 2,4,8,16,32 --tag k2-32`` to see it).
* ``clip-patches``: its ``blocks.2.hook_resid_post``, the 64 patch tokens of every image, CLS
  token EXCLUDED (token_selection ``patches``, as the shipped patch MSAE is trained); width 96,
  d_sae 768 (8x), ladder 1, 2, 4, 8, 16 (+ 768): a dedicated TopK reaches FVU 0.007 at k = 32
  and 0.002 at k = 64 here (``--ladder 4,8,16,32,64 --tag k4-64`` reproduces that run).

CLIP activations are extracted with the project's ``ImageActivationProvider`` (the same hook,
``stop_at_layer`` and token selection the vision training runner uses) and cached under
``runs/b2_cache/`` (git-ignored; keyed by every setting that made them), so reruns skip it.
Train and validation scenes come from the train-split source digits (different seeds), the test
scenes from the held-out test-split digits (handwriting no model saw).

One fixed training set is drawn once; every model is trained with SAELens's ``SAETrainer`` on
exactly the same batch stream (same rows, same order, same number of samples). Separate
validation (LR selection) and held-out test sets.

Models:
* MSAE (RW weighting, nmse loss — the paper's defaults) on the dataset's ladder (the last level
  is always d_sae, the ReLU path);
* SAELens ``topk`` (SAELens defaults: AuxK coefficient 1, decoder-norm rescaling, inputs scaled to
  E‖x‖ = √d_in like ``normalize_activations="expected_average_only_in"``), one per k of the ladder
  below d_sae.
Both families use the same schedule shape (constant LR, linear decay to 0 over the last 20 % of
the steps) and, by default, the SAME LR grid (``--lrs``); each model keeps the LR with the lowest
validation FVU (for the MSAE: mean FVU over its TopK levels; for TopK at k: FVU at k). Nothing
else is tuned per family.

Evaluation on the held-out test set with ``msae_plugin.metrics`` (per-sample FVU, the paper's
definition): MSAE at every k vs the dedicated TopK at that k (target MSAE ≤ 1.05 × TopK, PASS/FAIL
per k); the TopK trained at the largest compared k evaluated at every smaller k (what nesting
buys); the MSAE's ReLU-only path (L0 and FVU).

    python benchmarks/b2_many_sparsities.py                      # original synthetic B2
    python benchmarks/b2_many_sparsities.py --data clip-embed    # one of the harder datasets
    python benchmarks/b2_many_sparsities.py --quick [--data ...] # smoke test (< 1 min)

Results: ``benchmarks/results/b2_many_sparsities[_<data>][_quick].json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Idle OpenMP workers sleep instead of spinning (the 2-core machine is shared); before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    evaluate_plain,
    fvu_verdict,
    load_average,
    load_or_build_tensors,
    machine_info,
    parse_floats,
    parse_ints,
    print_table,
    row,
    sample_synthetic,
    topk_at,
    train,
    write_json,
)

TARGET = 1.05
#: a dedicated TopK FVU below this counts as "near zero" in the printed check
NEAR_ZERO_FVU = 0.01
DATASETS = ("synthetic", "synthetic-overcomplete", "clip-embed", "clip-patches")
REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / "runs" / "b2_cache"
CLIP_MODEL = "msae-tiny-clip"
#: per dataset: (hook, token selection) of the embedded CLIP
CLIP_SITES = {"clip-embed": ("hook_image_embed", "all"),
              "clip-patches": ("blocks.2.hook_resid_post", "patches")}

#: Per-dataset defaults; every value can be overridden on the command line. ``ladder`` None
#: means the doubling ladder from ``k_start``; otherwise the explicit MSAE ``k_levels`` (d_sae is
#: appended as the ReLU level). For the CLIP sets the sample counts are images (x 64 tokens for
#: clip-patches); ``train_samples`` is always the number of rows each model trains on.
DEFAULTS: dict[str, dict] = {
    "synthetic": dict(d_in=64, d_sae=1024, k_start=8, ladder=None, n_features=2048,
                      noise_std=0.02, zipf_exponent=0.7, max_prob=0.3, min_prob=0.005,
                      batch=1024, train_samples=1_228_800, val_samples=16_384,
                      test_samples=65_536, lrs="4e-3,1e-2"),
    "synthetic-overcomplete": dict(d_in=64, d_sae=512, k_start=2, ladder="2,4,8,16,32",
                                   n_features=2048, noise_std=0.05, zipf_exponent=0.5,
                                   max_prob=0.3, min_prob=0.01, batch=1024,
                                   train_samples=1_228_800, val_samples=16_384,
                                   test_samples=65_536, lrs="2e-3,5e-3,1.2e-2"),
    "clip-embed": dict(d_in=None, d_sae=512, k_start=1, ladder="1,2,4,8",
                       train_images=131_072, val_images=8_192, test_images=16_384,
                       batch=1024, train_samples=1_228_800, lrs="2e-3,5e-3,1.2e-2"),
    "clip-patches": dict(d_in=None, d_sae=768, k_start=1, ladder="1,2,4,8,16",
                         train_images=12_288, val_images=512, test_images=1_024,
                         batch=1024, train_samples=1_228_800, lrs="2e-3,5e-3,1.2e-2"),
}
#: --quick overrides (smoke test, < 1 min; the CLIP ones still extract a few thousand images)
QUICK: dict[str, dict] = {
    "synthetic": dict(d_in=32, d_sae=256, k_start=8, n_features=512, batch=512,
                      train_samples=512 * 120, val_samples=4096, test_samples=8192),
    "synthetic-overcomplete": dict(d_in=32, d_sae=256, ladder="2,4,8,16", n_features=1024,
                                   batch=512, train_samples=512 * 120, val_samples=4096,
                                   test_samples=8192),
    "clip-embed": dict(d_sae=256, ladder="1,2,4,8", train_images=4096, val_images=1024,
                       test_images=1024, batch=512, train_samples=512 * 120),
    "clip-patches": dict(d_sae=384, ladder="1,2,4,8", train_images=256, val_images=32,
                         test_images=64, batch=512, train_samples=512 * 120),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=DATASETS, default="synthetic")
    p.add_argument("--quick", action="store_true", help="small smoke configuration (< 1 min)")
    p.add_argument("--d-in", type=int, default=None, help="synthetic sets only (CLIP: the hook's)")
    p.add_argument("--d-sae", type=int, default=None)
    p.add_argument("--k-start", type=int, default=None, help="doubling ladder start")
    p.add_argument("--ladder", type=str, default=None,
                   help="explicit MSAE k_levels, comma-separated ('' = doubling from --k-start); "
                        "d_sae is appended")
    p.add_argument("--n-features", type=int, default=None, help="ground-truth dictionary size")
    p.add_argument("--noise-std", type=float, default=None)
    p.add_argument("--zipf-exponent", type=float, default=None)
    p.add_argument("--max-prob", type=float, default=None)
    p.add_argument("--min-prob", type=float, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--train-samples", type=int, default=None, help="rows each model trains on")
    p.add_argument("--val-samples", type=int, default=None, help="synthetic sets: rows")
    p.add_argument("--test-samples", type=int, default=None, help="synthetic sets: rows")
    p.add_argument("--train-images", type=int, default=None, help="CLIP sets: training images")
    p.add_argument("--val-images", type=int, default=None)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--lrs", type=str, default=None,
                   help="comma-separated LR grid shared by both families")
    p.add_argument("--lrs-msae", type=str, default=None, help="override the MSAE's grid")
    p.add_argument("--lrs-topk", type=str, default=None, help="override the TopK grid")
    p.add_argument("--msae-weighting", choices=("RW", "UW"), default="RW",
                   help="diagnostic only: the MSAE's level weighting (RW is the benchmark's)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the 2-core machine is shared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="CLIP activation cache")
    p.add_argument("--tag", type=str, default="",
                   help="suffix for the result file names (variants of one dataset)")
    p.add_argument("--replot", type=Path, default=None,
                   help="only redraw the PNG of an existing results JSON (no training)")
    args = p.parse_args(argv)
    if args.replot is not None:
        return args
    settings = dict(DEFAULTS[args.data])
    if args.quick:
        settings |= QUICK[args.data]
    for name, value in settings.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.quick:  # one LR per family keeps the smoke test short
        args.lrs = args.lrs.split(",")[0]
    args.lrs_msae = parse_floats(args.lrs_msae if args.lrs_msae is not None else args.lrs)
    args.lrs_topk = parse_floats(args.lrs_topk if args.lrs_topk is not None else args.lrs)
    args.lrs = parse_floats(args.lrs)
    args.ladder = parse_ints(args.ladder) if args.ladder else None
    return args


def make_data(args: argparse.Namespace) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor,
                                                 float | None]:
    """``(description, train, val, test, true mean L0 or None)`` for ``args.data``."""
    if args.data.startswith("clip"):
        return make_clip_data(args)
    from sae_lens.synthetic import SyntheticModel, SyntheticModelConfig
    from sae_lens.synthetic.firing_probabilities import ZipfianFiringProbabilityConfig

    cfg = SyntheticModelConfig(
        num_features=args.n_features,
        hidden_dim=args.d_in,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=args.zipf_exponent,
                                                          max_prob=args.max_prob,
                                                          min_prob=args.min_prob),
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
    return {"synthetic_model": cfg.to_dict()}, train_x, val_x, test_x, true_l0


def clip_activations(model, hook: str, selection: str, split: str, n_images: int, seed: int,
                     chunk: int = 1024) -> torch.Tensor:
    """Activations of ``n_images`` rendered digit scenes of ``split`` at ``hook``, taken by the
    project's ``ImageActivationProvider`` (so hook, ``stop_at_layer`` and token selection are
    exactly those of SAE training). Scenes are rendered in chunks with seeds ``seed``, ``seed+1``,
    ... so memory stays small; the result is deterministic in (split, n_images, seed)."""
    from tqdm.auto import tqdm

    from msae_plugin.embedded import make_digit_scenes, normalize
    from msae_plugin.vision.activations import ImageActivationProvider

    probe = torch.zeros(1, 3, *model.cfg.image_size)  # the provider wants a non-empty source
    provider = ImageActivationProvider(model, hook, probe, token_selection=selection)
    out = []
    for i, start in enumerate(tqdm(range(0, n_images, chunk), desc=f"{split} {hook}",
                                   leave=False)):
        scenes = make_digit_scenes(min(chunk, n_images - start), split=split, seed=seed + i)
        out.append(provider.activations(normalize(scenes.images)).float())
    return torch.cat(out)


def make_clip_data(args: argparse.Namespace):
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP

    hook, selection = CLIP_SITES[args.data]
    key = {"model": CLIP_MODEL, "hook": hook, "token_selection": selection,
           "train_images": args.train_images, "val_images": args.val_images,
           "test_images": args.test_images, "seed": args.seed, "chunk": 1024}
    name = (f"{args.data}_{args.train_images}_{args.val_images}_{args.test_images}"
            f"_s{args.seed}.pt")
    model = None

    def build() -> dict[str, torch.Tensor]:
        nonlocal model
        # HookedOpenCLIP.from_pretrained("msae-tiny-clip") loads through load_embedded_clip
        model = HookedOpenCLIP.from_pretrained(CLIP_MODEL)
        s = args.seed * 1_000_000
        return {"train": clip_activations(model, hook, selection, "train", args.train_images, s),
                "val": clip_activations(model, hook, selection, "train", args.val_images,
                                        s + 500_000),
                "test": clip_activations(model, hook, selection, "test", args.test_images, s)}

    t0 = time.perf_counter()
    tensors, cached = load_or_build_tensors(args.cache_dir / name, key, build)
    print(f"CLIP activations {hook} ({selection}): "
          f"{'read from cache' if cached else 'extracted'} {args.cache_dir / name} "
          f"in {time.perf_counter() - t0:.1f} s")
    args.d_in = int(tensors["train"].shape[1])
    args.val_samples, args.test_samples = len(tensors["val"]), len(tensors["test"])
    desc = {"clip": key | {"cache_file": str(args.cache_dir / name), "from_cache": cached,
                           "cls_token": "excluded" if selection == "patches" else "n/a (pooled)",
                           "train_rows": len(tensors["train"]),
                           "train_epochs": args.train_samples / len(tensors["train"]),
                           "train_and_val_split": "train (source digits 0..1437)",
                           "test_split": "test (held-out source digits)"}}
    return desc, tensors["train"], tensors["val"], tensors["test"], None


def new_msae(args, ladder_seed: int):
    from msae_plugin.msae.config import MSAETrainingSAEConfig
    from msae_plugin.msae.training_sae import MSAETrainingSAE

    torch.manual_seed(ladder_seed)
    return MSAETrainingSAE(MSAETrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae,
                                                 k_start=args.k_start, k_levels=args.ladder,
                                                 weighting=args.msae_weighting,
                                                 reconstruction_loss="nmse"))


def new_topk(args, k: int, seed: int):
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(seed)
    return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=k,
                                                 normalize_activations="expected_average_only_in"))


def main(argv: list[str] | None = None) -> dict:
    from msae_plugin.metrics import evaluate_sae, mode_name

    args = parse_args(argv)
    if args.replot is not None:
        return replot(args.replot)
    torch.set_num_threads(max(1, args.threads))
    t_start = time.perf_counter()
    info = machine_info()
    print(f"machine: {info['platform']} | cpus={info['cpu_count']} | torch {info['torch']} "
          f"threads={info['torch_threads']} | load={info['load_average_1_5_15min']}")

    data_desc, train_x, val_x, test_x, true_l0 = make_data(args)
    l0_text = f"; true mean L0 (test) = {true_l0:.2f}" if true_l0 is not None else ""
    print(f"data {args.data}: train {tuple(train_x.shape)}, val {tuple(val_x.shape)}, test "
          f"{tuple(test_x.shape)}{l0_text}; LR grid MSAE {args.lrs_msae}, TopK {args.lrs_topk}")

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
        by_k = {k: val[mode_name(k)]["reconstruction_quality"]["fvu"] for k in topk_ks}
        runs.append({"model": "msae", "lr": lr, "val_mean_fvu": score, "val_fvu_by_k": by_k}
                    | info_run)
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
        ratio, verdict = fvu_verdict(m["fvu"], t["fvu"], TARGET)
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
             + (f"true mean L0 of the data = {true_l0:.2f}\n" if true_l0 is not None else "")
             + "dedicated TopK test FVU per k: "
             + ", ".join(f"k={k}: {per_k[k]['topk_dedicated']['fvu']:.4f}" for k in topk_ks)
             + f" (min {min(v['topk_dedicated']['fvu'] for v in per_k.values()):.4f}; "
             f"{sum(v['topk_dedicated']['fvu'] >= NEAR_ZERO_FVU for v in per_k.values())}/"
             f"{len(per_k)} ks >= {NEAR_ZERO_FVU})")
    print(extra)
    n_pass = sum(v["verdict"] == "PASS" for v in per_k.values())
    worst = max(per_k, key=lambda k: per_k[k]["ratio_msae_over_topk"])
    verdict_line = (f"target MSAE ≤ {TARGET} × TopK: {n_pass}/{len(per_k)} ks PASS "
                    f"(worst ratio {per_k[worst]['ratio_msae_over_topk']:.3f} at k={worst})")
    print(verdict_line)
    extra += "\n" + verdict_line

    # ---- plot ----------------------------------------------------------------------------------
    out_dir = args.out or RESULTS_DIR
    suffix = "" if args.data == "synthetic" else "_" + args.data.replace("-", "_")
    tag = f"_{args.tag}" if args.tag else ""
    name = "b2_many_sparsities" + suffix + tag + ("_quick" if args.quick else "")
    png = _plot(per_k, relu, k_max, out_dir / f"{name}.png",
                title=f"B2 [{args.data}]: held-out FVU vs L0 (d_in={args.d_in}, "
                      f"d_sae={args.d_sae}, {args.train_samples:,} samples per model)")
    argv_used = sys.argv[1:] if argv is None else list(argv)

    payload = {
        "benchmark": "b2_many_sparsities",
        "data": args.data,
        "command": " ".join(["python benchmarks/b2_many_sparsities.py", *argv_used]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | data_desc | {"ladder": ladder, "topk_ks": topk_ks,
           "msae": {"weighting": args.msae_weighting, "reconstruction_loss": "nmse",
                    "aux_loss_coefficient": 0.0},
           "topk": {"aux_loss_coefficient": 1.0, "rescale_acts_by_decoder_norm": True,
                    "normalize_activations": "expected_average_only_in"},
           "schedule": "constant LR, linear decay to 0 over the last 20% of steps; Adam; grad clip 1",
           "lr_selection": "per model, lowest validation FVU (MSAE: mean over its TopK levels); "
                           "the same grid for both families unless --lrs-msae/--lrs-topk",
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


def replot(json_path: Path) -> dict:
    """Redraw the PNG next to a results JSON from its numbers (plot changes need no retraining)."""
    import json

    payload = json.loads(Path(json_path).read_text())
    cfg, res = payload["config"], payload["results"]
    data = payload.get("data", "synthetic")
    png = _plot(res["per_k"], res["msae_relu"], cfg["topk_ks"][-1],
                Path(json_path).with_suffix(".png"),
                title=f"B2 [{data}]: held-out FVU vs L0 (d_in={cfg['d_in']}, "
                      f"d_sae={cfg['d_sae']}, {cfg['train_samples']:,} samples per model)")
    print(f"wrote {png}")
    return payload


def _plot(per_k: dict, relu: dict, k_max: int, path: Path, title: str) -> Path:
    """FVU vs L0 (log-log, so the k ≥ d_in regime stays visible) and the per-k FVU ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    path.parent.mkdir(parents=True, exist_ok=True)
    per_k = {int(k): v for k, v in per_k.items()}  # JSON keys are strings (--replot)
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
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = sorted({*ks, round(relu["l0"])})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("L0 (active latents per sample; the star is the MSAE's ReLU path)")
    ax.set_ylabel("FVU, per-sample (log)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ratios = [per_k[k]["ratio_msae_over_topk"] for k in ks]
    colors = ["tab:green" if per_k[k]["verdict"] == "PASS" else "tab:red" for k in ks]
    ax_r.bar([str(k) for k in ks], ratios, color=colors)
    ax_r.axhline(TARGET, color="k", ls="--", lw=1, label=f"target {TARGET}x")
    ax_r.axhline(1.0, color="gray", lw=0.8)
    if max(ratios) > 3:  # only a huge ratio (near-zero TopK FVU) needs a log axis
        ax_r.set_yscale("log")
        ax_r.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_r.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax_r.set_ylim(min(0.9, min(ratios) - 0.02), max(TARGET, max(ratios)) + 0.05)
    ax_r.set_xlabel("k")
    ax_r.set_ylabel("FVU ratio MSAE / dedicated TopK")
    for i, r in enumerate(ratios):
        ax_r.annotate(f"{r:.3f}", (i, r), ha="center", va="bottom", fontsize=8)
    ax_r.legend(fontsize=8)
    ax_r.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
