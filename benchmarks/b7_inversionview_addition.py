"""B7: InversionView preimage precision on the three-digit-addition case study.

For held-out problems (never seen by the probed model or the decoder), queries are taken at the
positions the paper queries ('+', '=', A1, A2, A3) at each of the decoder's 13 sites. For every
query the shipped decoder (or ``--decoder-dir``) draws ``--samples`` inputs per sampling setting
and each is verified against the probed model (ε = 0.1, normalised distance minimised over
positions). Reported per site:

* precision at temperature 1 (the paper's training-log "ratio"; the headline, target ≥ 0.90),
  at temperature 0.5, and over the paper's full plan (τ, η) = (0.5, 0), (1, 0), (2, 0), (2, 0.1)
  (τ = 2 and noise deliberately probe the preimage's boundary, so it is lower by design);
* the baseline: the same fraction for inputs drawn at random from the task distribution;
* throughput: samples decoded *and* verified per second (batched, and one query at a time as
  ``msae inversionview`` does).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_info, print_table, write_json  # noqa: E402

TARGET = 0.90
EPS = 0.1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decoder-dir", type=Path, default=None,
                   help="decoder checkpoint (default: the shipped one)")
    p.add_argument("--queries", type=int, default=40, help="held-out problems per position")
    p.add_argument("--samples", type=int, default=8, help="samples per query and setting")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from msae_plugin.inversionview import addition as A
    from msae_plugin.inversionview import addition_decoder as AD
    from msae_plugin.inversionview.preimage import (
        activations_at,
        match_positions,
        paired_min_distances,
    )
    from msae_plugin.inversionview.releases import load_release
    from msae_plugin.inversionview.sampling import DEFAULT_PLAN, batch_precision, sample_preimage

    info = machine_info()
    rel = load_release("addition", args.decoder_dir)
    dec, probed, sites = rel.decoder, rel.probed, rel.sites
    queries = AD.held_out_inputs(args.queries, seed=args.seed)
    n_pos = len(AD.QUERY_POSITIONS)
    # every query repeated `samples` times: one sample per row
    rep = queries.repeat_interleave(args.samples, dim=0)
    rand = AD.held_out_inputs(args.queries * args.samples, seed=args.seed + 1)
    g = torch.Generator().manual_seed(args.seed)

    rows, results = [], {}
    n_verified, secs = 0, 0.0
    for site in sites:
        r: dict = {"by_position": {}}
        t1 = {}
        plan_hits: list[torch.Tensor] = []
        for pos in AD.QUERY_POSITIONS:
            per = {}
            for tau, eta in DEFAULT_PLAN:
                t0 = time.perf_counter()
                d = batch_precision(dec, probed, sites, site, rep, pos, temperature=tau,
                                    noise=eta, generator=g)
                secs += time.perf_counter() - t0
                n_verified += len(d)
                per[f"tau={tau},eta={eta}"] = float((d <= EPS).float().mean())
                plan_hits.append(d <= EPS)
            # baseline: random task inputs scored against the same queries
            q = activations_at(probed, rep, site)[:, pos]
            # PAD and EOS never match, as for the decoded samples (the paper's rule)
            dist = paired_min_distances(activations_at(probed, rand, site), q,
                                        match_positions(rand, A.PAD, A.EOS))
            per["random"] = float((dist <= EPS).float().mean())
            r["by_position"][A.VOCAB[int(queries[0, pos])] if pos in (4, 8) else
                             f"A{pos - 8}"] = per
            t1[pos] = per
        r["t1"] = sum(v["tau=1.0,eta=0.0"] for v in t1.values()) / n_pos
        r["t05"] = sum(v["tau=0.5,eta=0.0"] for v in t1.values()) / n_pos
        r["plan"] = float(torch.cat(plan_hits).float().mean())
        r["random"] = sum(v["random"] for v in t1.values()) / n_pos
        r["pass"] = r["t1"] >= TARGET
        results[site] = r
        by_pos = [f"{v['tau=1.0,eta=0.0']:.2f}" for v in r["by_position"].values()]
        rows.append([site, *by_pos, f"{r['t1']:.3f}", f"{r['t05']:.3f}", f"{r['plan']:.3f}",
                     f"{r['random']:.3f}"])
    table = print_table(["site", "τ=1 @+", "@=", "@A1", "@A2", "@A3", "τ=1 mean", "τ=0.5 mean",
                         "paper plan", "random inputs"], rows)
    # a cell is informative when random inputs mostly miss its preimage (resid_pre at '+' or
    # '=' is the same for every input: any sample matches, so it says nothing)
    cells = [(s_, k, v["random"]) for s_, r in results.items()
             for k, v in r["by_position"].items() if v["tau=1.0,eta=0.0"] >= TARGET]
    informative = [(s_, k) for s_, k, rnd in cells if rnd < 0.5]
    print(f"\n(site, position) cells with τ=1 precision ≥ {TARGET}: {len(cells)} of "
          f"{len(results) * n_pos}; informative (random inputs < 0.5): {informative}")
    batched_rate = n_verified / secs

    # one query at a time, 64 samples with the paper's plan (what the CLI does)
    q = activations_at(probed, queries[:5], "blocks.0.hook_resid_post")[:, A.EQUALS_POS]
    t0 = time.perf_counter()
    n1 = sum(len(sample_preimage(dec, probed, sites, "blocks.0.hook_resid_post", q[i], n=64,
                                 seed=i)) for i in range(len(q)))
    single_rate = n1 / (time.perf_counter() - t0)
    print(f"\nverified samples/s: batched {batched_rate:,.0f}; one query × 64 samples "
          f"{single_rate:,.0f}")
    path = write_json(
        "b7_inversionview_addition",
        {
            "benchmark": "b7_inversionview_addition",
            "command": "python benchmarks/b7_inversionview_addition.py " + " ".join(sys.argv[1:]),
            "config": vars(args) | {"out": str(args.out), "decoder_dir": str(args.decoder_dir)},
            "decoder_training": rel.meta.get("training"),
            "machine": info,
            "machine_end": {"load_average_1_5_15min": load_average()},
            "epsilon": EPS,
            "target": TARGET,
            "results": results,
            "verified_samples_per_s_batched": batched_rate,
            "verified_samples_per_s_single_query": single_rate,
            "table": table,
            "cells_at_target": cells,
            "informative_cells_at_target": informative,
        },
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
