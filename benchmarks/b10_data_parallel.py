"""B10 — data-parallel training throughput: one process vs ``torchrun --nproc-per-node N``.

Runs ``msae train configs/vision_msae_tiny.json`` (msae-tiny-clip, blocks.2.hook_resid_post,
MSAE d_sae 1024, global batch 4096 tokens, activations extracted on the fly) as one process
and through torchrun with ``N`` processes, each at two lengths (``--steps`` and twice that).
Throughput is the *difference* of the two lengths' tokens over the difference of their wall
times, so process start, imports, model loading and the final evaluation cancel out:

    tokens/s = (tokens(2S) - tokens(S)) / (wall(2S) - wall(S))

Every run trains the same global batches; one process uses all ``--threads`` threads, each of
the ``N`` ranks ``threads / N`` (torchrun's OMP_NUM_THREADS), so the comparison is at equal
cores. On a GPU node pass ``--device cuda``: each rank takes its own GPU (``cuda:LOCAL_RANK``).

    python benchmarks/b10_data_parallel.py                    # 1 vs 2 processes, CPU (~3 min)
    python benchmarks/b10_data_parallel.py --nproc 4 --device cuda --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4096


def run(nproc: int, steps: int, threads: int, device: str, work: Path) -> float:
    """Wall seconds of one ``msae train`` run of ``steps`` steps on ``nproc`` processes."""
    out = work / f"n{nproc}_s{steps}"
    overrides = [f"training_tokens={BATCH * steps}", f"device={device}",
                 f"checkpoint_path={out / 'ckpt'}", f"output_path={out / 'sae'}",
                 "n_checkpoints=0", "lr_warm_up_steps=2", "n_eval_batches=1"]
    args = ["train", str(ROOT / "configs" / "vision_msae_tiny.json")]
    for o in overrides:
        args += ["--override", o]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // nproc)), "TQDM_DISABLE": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "msae_plugin", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(nproc), "-m", "msae_plugin", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)

    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, args.nproc):
            walls = {s: [] for s in (args.steps, 2 * args.steps)}
            for _ in range(args.repeats):
                for s in walls:
                    walls[s].append(run(nproc, s, args.threads, args.device, Path(tmp)))
            short, long_ = min(walls[args.steps]), min(walls[2 * args.steps])
            tps = BATCH * args.steps / (long_ - short)
            results[nproc] = {"wall_s": {str(k): v for k, v in walls.items()},
                              "tokens_per_s": tps, "steps_per_s": tps / BATCH}
            rows.append([nproc, f"{short:.1f}", f"{long_:.1f}", f"{tps:,.0f}",
                         f"{tps / BATCH:.2f}"])
    speedup = results[args.nproc]["tokens_per_s"] / results[1]["tokens_per_s"]
    print_table(["processes", f"wall {args.steps} steps (s)", f"wall {2 * args.steps} steps (s)",
                 "tokens/s", "steps/s"], rows)
    print(f"speed-up with {args.nproc} processes: {speedup:.2f}x")
    path = write_json(f"b10_data_parallel_{args.device}", {
        "benchmark": "B10 data-parallel throughput", "args": vars(args),
        "machine": machine_info(), "results": results, "speedup": speedup,
    })
    print(f"results: {path}")
    print(json.dumps({"speedup": round(speedup, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
