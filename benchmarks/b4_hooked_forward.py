"""B4 — overhead of the hooked image forward: ``HookedOpenCLIP`` vs OpenCLIP's ``encode_image``.

Same model object, same batch, same process; the variants are timed interleaved (the order
rotates every round, so load changes on a shared machine hit all of them alike), warm-up rounds
excluded, median and min reported:

* ``raw``       — ``clip.encode_image(x)`` (OpenCLIP itself);
* ``hooked``    — ``model(x)`` with no hook attached (fast path: OpenCLIP's fused attention);
* ``cache_1``   — ``model.run_with_cache(x, names_filter=["blocks.{mid}.hook_resid_post"])``;
* ``hook_z``    — ``model.run_with_hooks(x, fwd_hooks=[("blocks.{mid}.attn.hook_z", noop)])``
  (that block's attention is decomposed: q/k/v projections + SDPA + out-projection).

``mid`` is ``n_layers // 2`` (block 6 of ViT-B-32). All under ``torch.no_grad()``, fp32.
Models: ViT-B-32 with random initialisation (224 px; the weights do not change the cost) and the
embedded ``msae-tiny-clip`` (32 px) when its weights are installed.

Target: hooked / raw <= 1.05 (median).

    python benchmarks/b4_hooked_forward.py                       # CPU, 2 threads (~1-2 min)
    python benchmarks/b4_hooked_forward.py --device cuda --batch-size 256
    python benchmarks/b4_hooked_forward.py --quick               # smoke test
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_info, print_table, write_json  # noqa: E402

TARGET_RATIO = 1.05
MODELS = ("vit-b-32", "embedded")
CPU_BATCH = {"vit-b-32": 8, "embedded": 64}
CUDA_BATCH = {"vit-b-32": 256, "embedded": 1024}


# ---- shared with b5 / b6 ------------------------------------------------------------------
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def load_model(name: str, device: str) -> tuple[Any | None, str]:
    """``(HookedOpenCLIP or None, note)``; None with the reason when it cannot be loaded."""
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP

    if name == "vit-b-32":
        import open_clip

        torch.manual_seed(0)
        clip = open_clip.create_model("ViT-B-32", pretrained=None, device=device).eval()
        return HookedOpenCLIP(clip, model_name="ViT-B-32"), "ViT-B-32, random init"
    if name == "embedded":
        try:
            model = HookedOpenCLIP.from_pretrained("msae-tiny-clip", device=device)
            return model, "msae-tiny-clip (embedded weights)"
        except (FileNotFoundError, ImportError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        try:  # the cost does not depend on the weights: time the same architecture
            from msae_plugin.embedded.model import build_embedded_clip
        except ImportError:
            return None, f"skipped: {why}"
        torch.manual_seed(0)
        clip = build_embedded_clip().to(device).eval()
        return (HookedOpenCLIP(clip, model_name="msae-tiny-clip"),
                f"msae-tiny-clip architecture, random init (weights not loadable: {why})")
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def model_facts(model: Any) -> dict[str, Any]:
    c = model.cfg
    return {"n_layers": c.n_layers, "d_model": c.d_model, "n_heads": c.n_heads,
            "image_size": list(c.image_size), "n_ctx": c.n_ctx,
            "parameters_visual": sum(p.numel() for p in model.clip.visual.parameters())}


def random_images(model: Any, batch: int, device: str, seed: int = 0) -> torch.Tensor:
    h, w = model.cfg.image_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, h, w, generator=g).to(device)


def time_once(fn: Callable[[], Any], device: str, inner: int = 1) -> float:
    """Seconds per call of ``fn`` (mean over ``inner`` back-to-back calls)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / inner


def calibrate_inner(fn: Callable[[], Any], device: str, min_seconds: float) -> int:
    """Calls per measurement so that one measurement lasts at least ``min_seconds``."""
    fn()  # warm (allocator, kernels)
    t = time_once(fn, device)
    return max(1, math.ceil(min_seconds / max(t, 1e-6)))


def interleaved(
    fns: dict[str, Callable[[], Any]],
    device: str,
    warmup: int,
    repeats: int,
    inner: int,
    desc: str,
) -> dict[str, Any]:
    """Time every function once per round, rotating the order each round; median/min/max."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    loads = []
    with tqdm(total=(warmup + repeats) * len(names), desc=desc, leave=False) as pbar:
        for r in range(warmup + repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for n in order:
                t = time_once(fns[n], device, inner)
                if r >= warmup:
                    times[n].append(t)
                pbar.update(1)
            loads.append(load_average())
    out: dict[str, Any] = {
        n: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
            "all_s": [round(t, 6) for t in ts]}
        for n, ts in times.items()
    }
    out["_load_average_per_round"] = loads
    return out


def setup_threads(threads: int, device: str) -> None:
    if threads and torch.device(device).type == "cpu":
        torch.set_num_threads(threads)


# ---- B4 -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=default_device(), help="cpu or cuda (default: cuda if "
                   "available)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward for every model (default: ViT-B-32 8 / embedded 64 "
                   "on CPU, 256 / 1024 on CUDA)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--warmup", type=int, default=2, help="interleaved warm-up rounds (excluded)")
    p.add_argument("--repeats", type=int, default=15, help="measured interleaved rounds")
    p.add_argument("--min-seconds", type=float, default=0.2,
                   help="calls are repeated back to back until one measurement lasts this long")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch default)")
    p.add_argument("--quick", action="store_true", help="smoke test (3 rounds)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default "
                   "benchmarks/results)")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.repeats, args.min_seconds = 1, 3, 0.05
    return args


def bench_model(name: str, model: Any, args: argparse.Namespace) -> dict[str, Any]:
    on_cuda = torch.device(args.device).type == "cuda"
    batch = args.batch_size or (CUDA_BATCH if on_cuda else CPU_BATCH)[name]
    x = random_images(model, batch, args.device)
    mid = model.cfg.n_layers // 2
    cache_hook = f"blocks.{mid}.hook_resid_post"
    z_hook = f"blocks.{mid}.attn.hook_z"
    clip = model.clip

    def noop(z: torch.Tensor, hook: Any) -> None:
        return None

    fns = {
        "raw": lambda: clip.encode_image(x),
        "hooked": lambda: model(x),
        "cache_1": lambda: model.run_with_cache(x, names_filter=[cache_hook]),
        "hook_z": lambda: model.run_with_hooks(x, fwd_hooks=[(z_hook, noop)]),
    }
    with torch.no_grad():
        ref = clip.encode_image(x)
        parity = float((model(x) - ref).abs().max())
        inner = calibrate_inner(fns["raw"], args.device, args.min_seconds)
        timings = interleaved(fns, args.device, args.warmup, args.repeats, inner, f"B4 {name}")
    raw = timings["raw"]
    for n in ("hooked", "cache_1", "hook_z"):
        timings[n]["ratio_over_raw_median"] = timings[n]["median_s"] / raw["median_s"]
        timings[n]["ratio_over_raw_min"] = timings[n]["min_s"] / raw["min_s"]
    ratio = timings["hooked"]["ratio_over_raw_median"]
    return {
        "model": model_facts(model),
        "batch_size": batch,
        "calls_per_measurement": inner,
        "cache_hook": cache_hook,
        "z_hook": z_hook,
        "parity_max_abs_diff_hooked_vs_raw": parity,
        "timings": timings,
        "verdict": {"ratio_hooked_over_raw_median": ratio,
                    "ratio_hooked_over_raw_min": timings["hooked"]["ratio_over_raw_min"],
                    "target": TARGET_RATIO,
                    "verdict": "PASS" if ratio <= TARGET_RATIO else "FAIL"},
    }


def start_run(args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """Threads, machine facts and the header line shared by B4-B6: ``(info, t_start)``."""
    setup_threads(args.threads, args.device)
    t_start = time.perf_counter()
    info = machine_info()
    print(f"machine: {info['platform']} | cpus={info['cpu_count']} | torch {info['torch']} "
          f"threads={info['torch_threads']} | device={args.device} | "
          f"load={info['load_average_1_5_15min']}")
    if torch.device(args.device).type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name()
    return info, t_start


def each_model(
    args: argparse.Namespace,
    bench: Callable[[str, Any, argparse.Namespace], dict[str, Any]],
    results: dict[str, Any],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Load each of ``args.models``, run ``bench`` on it and record the result (or why it was
    skipped) in ``results``; yields ``(name, result)`` for the caller's table rows."""
    for name in args.models:
        model, note = load_model(name, args.device)
        if model is None:
            print(f"{name}: {note}")
            results[name] = {"skipped": note}
            continue
        res = bench(name, model, args)
        res["note"] = note
        results[name] = res
        del model
        yield name, res


def save_run(
    benchmark: str, args: argparse.Namespace, info: dict[str, Any], t_start: float,
    results: dict[str, Any], table: str, config: dict[str, Any],
) -> dict[str, Any]:
    """Write the result JSON (``_quick`` / ``_cuda`` suffixes) and return its payload."""
    suffix = "_quick" if args.quick else ("_cuda" if args.device.startswith("cuda") else "")
    payload = {
        "benchmark": benchmark,
        "command": "python " + " ".join([f"benchmarks/{benchmark}.py", *sys.argv[1:]]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"dtype": "float32", "grad": "torch.no_grad()"} | config,
        "machine": info,
        "machine_end": {"load_average_1_5_15min": load_average()},
        "results": results,
        "table": table,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    path = write_json(benchmark + suffix, payload, args.out)
    print(f"\nwrote {path}  (total {payload['wall_seconds']} s)")
    return payload


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    info, t_start = start_run(args)
    results: dict[str, Any] = {}
    rows = []
    for name, res in each_model(args, bench_model, results):
        t = res["timings"]
        for n in ("raw", "hooked", "cache_1", "hook_z"):
            ratio = t[n].get("ratio_over_raw_median")
            verdict = res["verdict"]["verdict"] if n == "hooked" else ""
            rows.append([name, res["batch_size"], n, f"{1e3 * t[n]['median_s']:.2f}",
                         f"{1e3 * t[n]['min_s']:.2f}",
                         "" if ratio is None else f"{ratio:.3f}x",
                         f"<= {TARGET_RATIO}x" if n == "hooked" else "", verdict])
    print()
    table = print_table(["model", "batch", "variant", "median ms", "min ms", "/raw (med)",
                         "target", "verdict"], rows)
    return save_run("b4_hooked_forward", args, info, t_start, results, table, {
        "variants": {"raw": "clip.encode_image(x)", "hooked": "model(x), no hooks",
                     "cache_1": "run_with_cache(x, names_filter=[blocks.{mid}.hook_resid_post])",
                     "hook_z": "run_with_hooks(x, fwd_hooks=[(blocks.{mid}.attn.hook_z, noop)])"},
        "target": f"hooked / raw <= {TARGET_RATIO}x (median)"})


if __name__ == "__main__":
    main()
