"""Train the InversionView decoder for the three-digit-addition case study (13 sites).

Usage::

    .venv/bin/python scripts/train_addition_decoder.py OUT_DIR [--steps 30000] [--d-model 128]

Writes the decoder in its release format (``OUT_DIR/decoder.safetensors`` +
``OUT_DIR/decoder_cfg.json``, loadable with ``load_decoder``) after every ``--save-every``
steps, with the resumable training state in ``OUT_DIR/train_state/``: run the same command
again after an interruption and it continues. Every save also measures, per site, the paper's
"ratio" (one T=1 sample per held-out query at '=' and the answer positions; fraction inside the
ε = 0.1 preimage) and appends it to ``OUT_DIR/eval_log.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from msae_plugin.inversionview import addition_decoder as AD  # noqa: E402
from msae_plugin.inversionview.checkpoint import load_decoder, save_decoder  # noqa: E402
from msae_plugin.inversionview.decoder import InversionViewDecoder  # noqa: E402
from msae_plugin.inversionview.sampling import batch_precision  # noqa: E402
from msae_plugin.inversionview.training import train_decoder  # noqa: E402


def evaluate(decoder, probed, n_queries: int, seed: int = 1) -> dict[str, float]:
    tokens = AD.held_out_inputs(n_queries, seed=seed)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for site in AD.SITES:
        d = torch.cat([
            batch_precision(decoder, probed, AD.SITES, site, tokens, pos, generator=g)
            for pos in AD.QUERY_POSITIONS
        ])
        out[site] = float((d <= 0.1).float().mean())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--steps", type=int, default=30_000)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.0,
                   help="decoder dropout (the paper's is 0.1; the shipped decoder has none)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--save-every", type=int, default=2000)
    p.add_argument("--eval-queries", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--act-noise", type=float, default=0.0,
                   help="Gaussian noise on training activations, in units of their std")
    p.add_argument("--all-positions", action="store_true",
                   help="train on every non-special position, not only +, =, A1-A3")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this decoder's weights (a release directory, e.g. the "
                        "shipped one: src/msae_plugin/inversionview/data/addition_decoder) with a "
                        "fresh optimiser and schedule; the run's own train_state still resumes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    probed = AD.load_shipped_probed_model()
    decoder = InversionViewDecoder(AD.decoder_config(d_model=args.d_model, dropout=args.dropout))
    steps_before = 0
    if args.init_from is not None:
        start, meta = load_decoder(args.init_from, probed)
        if start.cfg != decoder.cfg:
            raise SystemExit(f"--init-from {args.init_from}: its config {start.cfg} differs from "
                             f"this run's {decoder.cfg}; pass the same --d-model/--dropout")
        decoder.load_state_dict(start.state_dict())
        steps_before = int(meta.get("training", {}).get("steps_done", 0)) + int(
            meta.get("training", {}).get("steps_before", 0))
    pairs = AD.pair_generator(probed, seed=args.seed,
                              positions=None if args.all_positions else AD.QUERY_POSITIONS)
    pairs.noise = args.act_noise
    args.out_dir.mkdir(parents=True, exist_ok=True)
    log_path = args.out_dir / "eval_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else []
    t0 = time.monotonic()

    def on_save(step: int) -> None:
        ratios = evaluate(decoder, probed, args.eval_queries)
        mean = sum(ratios.values()) / len(ratios)
        log.append({"step": step, "total_steps": steps_before + step, "elapsed_s": time.monotonic() - t0, "mean_ratio": mean,
                    "ratio": ratios})
        save_decoder(decoder, args.out_dir, list(AD.SITES), probed, probed_name=AD.PROBED_NAME,
                     extra={"training": vars(args) | {"out_dir": str(args.out_dir),
                                                      "init_from": str(args.init_from),
                                                      "steps_before": steps_before,
                                                      "steps_done": step}})
        log_path.write_text(json.dumps(log, indent=1))
        print(f"\nstep {step}: mean ratio {mean:.3f} "
              + " ".join(f"{k.replace('blocks.', 'b').replace('attn.hook_result', 'h')}="
                         f"{v:.2f}" for k, v in ratios.items()), flush=True)

    train_decoder(
        decoder, pairs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        schedule=args.schedule, warmup=args.warmup, checkpoint_dir=args.out_dir / "train_state",
        save_every=args.save_every, on_save=on_save, progress=not args.no_progress,
        log_every=100,
    )
    print(f"done in {time.monotonic() - t0:.0f} s; decoder in {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
