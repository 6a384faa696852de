"""B5 — ``stop_at_layer``: running blocks ``0..L`` only should cost about ``(L+1)/N`` of the full
image forward.

``model(x, stop_at_layer=L+1)`` (patch embedding + ``L+1`` of the ``N`` blocks; returns the
residual stream) against ``model(x)`` (all ``N`` blocks + ln_post + pooling + projection), both on
``HookedOpenCLIP`` with no hooks, same batch, interleaved rounds (rotating order), warm-up rounds
excluded, medians. ``torch.no_grad()``, fp32.

Target per L: time(stop_at_layer=L+1) / time(full) <= (L+1)/N + 0.1.

    python benchmarks/b5_stop_at_layer.py                        # CPU, 2 threads (~1-2 min)
    python benchmarks/b5_stop_at_layer.py --device cuda --batch-size 256
    python benchmarks/b5_stop_at_layer.py --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402
from b4_hooked_forward import (  # noqa: E402
    CPU_BATCH,
    CUDA_BATCH,
    MODELS,
    calibrate_inner,
    default_device,
    each_model,
    interleaved,
    model_facts,
    random_images,
    save_run,
    start_run,
)

SLACK = 0.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=default_device())
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward (default: ViT-B-32 8 / embedded 64 on CPU, "
                   "256 / 1024 on CUDA)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="L values (0-based last block run); default: 0, ~N/4, ~N/2, ~3N/4, N-1")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--min-seconds", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch default)")
    p.add_argument("--quick", action="store_true", help="smoke test (3 rounds)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.repeats, args.min_seconds = 1, 3, 0.05
    return args


def default_layers(n: int) -> list[int]:
    return sorted({0, max(0, n // 4 - 1), n // 2 - 1, max(0, 3 * n // 4 - 1), n - 1})


def bench_model(name: str, model: Any, args: argparse.Namespace) -> dict[str, Any]:
    on_cuda = torch.device(args.device).type == "cuda"
    batch = args.batch_size or (CUDA_BATCH if on_cuda else CPU_BATCH)[name]
    n = model.cfg.n_layers
    layers = [layer for layer in (args.layers or default_layers(n)) if 0 <= layer < n]
    x = random_images(model, batch, args.device)
    fns = {"full": lambda: model(x)}
    for layer in layers:
        fns[f"stop_{layer + 1}"] = (lambda s: (lambda: model(x, stop_at_layer=s)))(layer + 1)
    with torch.no_grad():
        inner = calibrate_inner(fns["full"], args.device, args.min_seconds)
        timings = interleaved(fns, args.device, args.warmup, args.repeats, inner, f"B5 {name}")
    full = timings["full"]["median_s"]
    per_layer = []
    for layer in layers:
        t = timings[f"stop_{layer + 1}"]["median_s"]
        frac = t / full
        bound = (layer + 1) / n + SLACK
        per_layer.append({"L": layer, "stop_at_layer": layer + 1, "blocks_run": layer + 1,
                          "median_s": t, "fraction_of_full": frac,
                          "ideal_fraction": (layer + 1) / n, "bound": bound,
                          "verdict": "PASS" if frac <= bound else "FAIL"})
    return {"model": model_facts(model), "batch_size": batch, "calls_per_measurement": inner,
            "full_median_s": full, "per_layer": per_layer, "timings": timings}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    info, t_start = start_run(args)
    results: dict[str, Any] = {}
    rows = []
    for name, res in each_model(args, bench_model, results):
        rows.append([name, res["batch_size"], "full", res["model"]["n_layers"],
                     f"{1e3 * res['full_median_s']:.2f}", "1.000", "", ""])
        for r in res["per_layer"]:
            rows.append([name, res["batch_size"], f"L={r['L']}", r["blocks_run"],
                         f"{1e3 * r['median_s']:.2f}", f"{r['fraction_of_full']:.3f}",
                         f"<= {r['bound']:.3f}", r["verdict"]])
    print()
    table = print_table(["model", "batch", "run", "blocks", "median ms", "t / t_full",
                         "target", "verdict"], rows)
    n_fail = sum(r[-1] == "FAIL" for r in rows)
    print(f"\n{'all PASS' if n_fail == 0 else f'{n_fail} FAIL'}")
    return save_run("b5_stop_at_layer", args, info, t_start, results, table, {
        "target": f"t(stop_at_layer=L+1) / t(full) <= (L+1)/N + {SLACK}"})


if __name__ == "__main__":
    main()
