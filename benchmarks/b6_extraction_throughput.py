"""B6 — activation-extraction throughput for SAE training (tokens per second).

The pipeline an SAE trainer runs for every batch of images:

    acts = model.run_with_cache(x, names_filter=[hook], stop_at_layer=layer + 1)[1][hook]
    tokens = acts.reshape(-1, d_model)          # every token of every image (CLS included)

with ``hook = blocks.{layer}.hook_resid_post`` (default ``layer = n_layers // 2``: block 6 of
ViT-B-32, block 2 of the embedded model). The images start on the host and are moved to the
device inside the timed region; with ``--store cpu`` the tokens are also copied back to the host.
For reference the same extraction without ``stop_at_layer`` (all blocks + head) is timed
interleaved with it; the speed-up shows what ``stop_at_layer`` saves. ``torch.no_grad()``, fp32.

Reported per model: median seconds per batch, tokens/s, images/s and activation MB/s.

    python benchmarks/b6_extraction_throughput.py                # CPU, 2 threads (~1-2 min)
    python benchmarks/b6_extraction_throughput.py --device cuda --batch-size 512
    python benchmarks/b6_extraction_throughput.py --quick
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
    MODELS,
    calibrate_inner,
    default_device,
    each_model,
    interleaved,
    model_facts,
    save_run,
    start_run,
)

CPU_BATCH = {"vit-b-32": 32, "embedded": 256}
CUDA_BATCH = {"vit-b-32": 512, "embedded": 4096}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=default_device())
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default: ViT-B-32 32 / embedded 256 on CPU, "
                   "512 / 4096 on CUDA)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--layer", type=int, default=None, help="block (default n_layers // 2)")
    p.add_argument("--hook-point", default="hook_resid_post",
                   help="hook inside the block (default hook_resid_post)")
    p.add_argument("--store", choices=("device", "cpu"), default="device",
                   help="where the extracted tokens end up (cpu: include the copy back)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--min-seconds", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch default)")
    p.add_argument("--quick", action="store_true", help="smoke test (3 rounds)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.repeats, args.min_seconds = 1, 3, 0.05
    return args


def bench_model(name: str, model: Any, args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    on_cuda = torch.device(device).type == "cuda"
    batch = args.batch_size or (CUDA_BATCH if on_cuda else CPU_BATCH)[name]
    layer = args.layer if args.layer is not None else model.cfg.n_layers // 2
    hook = f"blocks.{layer}.{args.hook_point}"
    h, w = model.cfg.image_size
    host = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    if on_cuda:
        host = host.pin_memory()
    store = torch.device("cpu") if args.store == "cpu" else torch.device(device)

    def extract(stop: int | None) -> torch.Tensor:
        x = host.to(device, non_blocking=True)
        _, cache = model.run_with_cache(x, names_filter=[hook], stop_at_layer=stop)
        acts = cache[hook]
        return acts.reshape(-1, acts.shape[-1]).to(store)

    fns = {"stop_at_layer": lambda: extract(layer + 1), "full_forward": lambda: extract(None)}
    with torch.no_grad():
        a, b = extract(layer + 1), extract(None)
        tokens_per_batch, d = a.shape
        same = float((a - b).abs().max())
        inner = calibrate_inner(fns["full_forward"], device, args.min_seconds)
        timings = interleaved(fns, device, args.warmup, args.repeats, inner, f"B6 {name}")
    out = {}
    for variant in fns:
        t = timings[variant]["median_s"]
        out[variant] = {
            "median_s_per_batch": t,
            "min_s_per_batch": timings[variant]["min_s"],
            "tokens_per_s": tokens_per_batch / t,
            "images_per_s": batch / t,
            "activation_MB_per_s": tokens_per_batch * d * a.element_size() / t / 1e6,
        }
    return {
        "model": model_facts(model),
        "batch_size": batch,
        "hook": hook,
        "stop_at_layer": layer + 1,
        "tokens_per_batch": tokens_per_batch,
        "d_in": d,
        "store": str(store),
        "calls_per_measurement": inner,
        "max_abs_diff_stop_vs_full": same,
        "throughput": out,
        "speedup_stop_over_full": timings["full_forward"]["median_s"]
        / timings["stop_at_layer"]["median_s"],
        "timings": timings,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    info, t_start = start_run(args)
    results: dict[str, Any] = {}
    rows = []
    for name, res in each_model(args, bench_model, results):
        for variant, r in res["throughput"].items():
            rows.append([name, res["hook"], res["batch_size"], res["tokens_per_batch"], variant,
                         f"{1e3 * r['median_s_per_batch']:.1f}", f"{r['tokens_per_s']:,.0f}",
                         f"{r['images_per_s']:,.1f}", f"{r['activation_MB_per_s']:,.1f}"])
    print()
    table = print_table(["model", "hook", "batch", "tokens/batch", "run", "ms/batch", "tokens/s",
                         "images/s", "MB/s"], rows)
    for name, res in results.items():
        if "speedup_stop_over_full" in res:
            print(f"{name}: stop_at_layer={res['stop_at_layer']} is "
                  f"{res['speedup_stop_over_full']:.2f}x faster than the full forward")
    return save_run("b6_extraction_throughput", args, info, t_start, results, table, {
        "pipeline": "host images -> device -> run_with_cache(names_filter=[hook], "
                       "stop_at_layer=layer+1) -> reshape(-1, d_model) -> store"})


if __name__ == "__main__":
    main()
