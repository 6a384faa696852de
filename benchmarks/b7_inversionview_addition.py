"""B7: InversionView preimage precision on the 3-digit addition probed model (preliminary).

Trains an InversionView decoder (fresh pairs at 4 hooks of the shipped probed model) for
``--steps`` steps on this machine, then for held-out queries at the ``=`` position samples
``--samples`` candidates per query with the paper's (temperature, noise) plan and reports, per
hook: the fraction inside the ε = 0.1 preimage, the same fraction for random inputs from the
task distribution (baseline), and verified samples per second.

The paper trains its decoder ~390k steps on a GPU; a CPU budget of a few minutes gives far
fewer, so the figures here are a lower bound for the method, not a reproduction.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib.resources import files
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_info, print_table, write_json  # noqa: E402

HOOKS = [
    "blocks.0.hook_resid_post",
    "blocks.0.hook_attn_out",
    "blocks.1.hook_resid_mid",
    "blocks.1.hook_resid_post",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from msae_plugin.inversionview import addition as A
    from msae_plugin.inversionview.decoder import DecoderConfig, InversionViewDecoder
    from msae_plugin.inversionview.preimage import preimage_fraction, score_candidates
    from msae_plugin.inversionview.sampling import sample_preimage
    from msae_plugin.inversionview.training import PairGenerator, train_decoder

    info = machine_info()
    probed = A.load_probed_model(
        str(files("msae_plugin.inversionview") / "data" / "addition_probed")
    ).eval()
    train, test = A.train_test_split()
    train_t, test_t = torch.tensor(train), torch.tensor(test)

    def sample_inputs(n: int, g: torch.Generator) -> torch.Tensor:
        return A.make_batch(train_t, batch_size=n, generator=g)[0]

    dec = InversionViewDecoder(DecoderConfig(
        vocab_size=A.D_VOCAB, n_ctx=A.SEQ_LEN, d_act=probed.cfg.d_model, n_sites=len(HOOKS),
        pad_id=A.PAD, bos_id=A.BOS, eos_id=A.EOS, d_model=args.d_model, n_layers=2, n_heads=4,
    ))
    pairs = PairGenerator(probed, HOOKS, sample_inputs, [A.PAD, A.BOS, A.EOS], bos_id=A.BOS)
    t0 = time.perf_counter()
    losses = train_decoder(dec, pairs, steps=args.steps, batch_size=256, lr=1e-3, log_every=250)
    train_s = time.perf_counter() - t0

    g = torch.Generator().manual_seed(5)
    queries = A.make_batch(test_t, batch_size=args.queries, generator=g)[0]
    with torch.no_grad():
        _, cache = probed.run_with_cache(queries)
    rows, results = [], {}
    for hook in HOOKS:
        dec_f, base_f, n_verified, secs = [], [], 0, 0.0
        for j in range(args.queries):
            q = cache[hook][j, A.EQUALS_POS]
            t1 = time.perf_counter()
            scored = sample_preimage(dec, probed, HOOKS, hook, q, n=args.samples, seed=j)
            secs += time.perf_counter() - t1
            n_verified += len(scored)
            dec_f.append(preimage_fraction(scored))
            rand = A.make_batch(test_t, batch_size=args.samples,
                                generator=torch.Generator().manual_seed(100 + j))[0]
            base_f.append(preimage_fraction(score_candidates(probed, hook, q, rand, pad_id=A.PAD)))
        r = {
            "decoded_in_preimage": sum(dec_f) / len(dec_f),
            "random_in_preimage": sum(base_f) / len(base_f),
            "verified_samples_per_s": n_verified / secs,
            "per_query": dec_f,
        }
        results[hook] = r
        rows.append([hook, r["decoded_in_preimage"], r["random_in_preimage"],
                     r["verified_samples_per_s"]])
    table = print_table(["hook (query at '=')", "decoded in ε-preimage", "random inputs",
                         "verified samples/s"], rows)
    path = write_json(
        "b7_inversionview_addition",
        {
            "benchmark": "b7_inversionview_addition",
            "command": "python benchmarks/b7_inversionview_addition.py " + " ".join(sys.argv[1:]),
            "config": vars(args) | {"out": str(args.out)},
            "machine": info,
            "machine_end": {"load_average_1_5_15min": load_average()},
            "train_seconds": train_s,
            "losses": losses,
            "results": results,
            "table": table,
        },
        args.out,
    )
    print(f"\ntrained {args.steps} steps in {train_s:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
