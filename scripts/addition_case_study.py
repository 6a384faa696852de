"""Read the three-digit-addition model with its InversionView decoder: for every site and query
position, which task variables are fixed across the sampled ε-preimages.

Usage::

    .venv/bin/python scripts/addition_case_study.py [--out docs/inversionview-addition]

For ``--queries`` held-out problems per query position ('+', '=', A1, A2, A3) and each of the 13
sites, draws ``--samples`` decoder samples (temperature 1), keeps those inside the ε = 0.1
preimage and measures, per task variable, how many of them agree with the query
(``msae_plugin.inversionview.addition_analysis``). Writes ``case_study.json``, a markdown table
``table.md`` (variables kept by ≥ 95 % of the preimage, chance below that), ``examples.md``
(sampled preimages of one problem per site) and an HTML page per example.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from msae_plugin.inversionview import addition as A  # noqa: E402
from msae_plugin.inversionview import addition_analysis as AA  # noqa: E402
from msae_plugin.inversionview import addition_decoder as AD  # noqa: E402
from msae_plugin.inversionview.preimage import activations_at  # noqa: E402
from msae_plugin.inversionview.releases import load_release  # noqa: E402
from msae_plugin.inversionview.sampling import (  # noqa: E402
    batch_precision,
    sample_preimage,
    token_contrast,
)
from msae_plugin.inversionview.views import render_html, render_table  # noqa: E402

POS_NAMES = {4: "+", 8: "=", 9: "A1", 10: "A2", 11: "A3"}
EXAMPLE = "673+489=1162"
# a query counts when ≥ MIN_INSIDE of its samples are in the preimage; a cell is read when
# ≥ MIN_QUERIES queries count (else "n/a": too few preimage samples to say what they share)
MIN_INSIDE, MIN_QUERIES = 3, 4  # carries out of the ones and the tens: a four-digit sum


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_agreement(results: dict, sites: list[str], path: Path) -> None:
    """Per query position, a sites × variables heat map of (agreement − chance) inside the
    preimage: 1 = the variable is fixed across the preimage, 0 = no more than chance."""
    plt = _plt()
    names = list(POS_NAMES.values())
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 5.2), sharey=True)
    for ax, pname in zip(axes, names, strict=True):
        m = [[results[s][pname]["agreement"][v] - results[s][pname]["chance"][v]
              if results[s][pname]["encoded"] is not None else float("nan")
              for v in AA.VARIABLES] for s in sites]
        cmap = plt.get_cmap("viridis").copy()
        cmap.set_bad("#dddddd")  # grey: too few preimage samples to read the cell
        im = ax.imshow(m, vmin=-0.2, vmax=1.0, cmap=cmap, aspect="auto")
        ax.set_title(f"query at '{pname}'")
        ax.set_xticks(range(len(AA.VARIABLES)), AA.VARIABLES, rotation=90, fontsize=7)
        ax.set_yticks(range(len(sites)), [s.replace("attn.hook_result", "head") for s in sites],
                      fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.6, label="agreement − chance (in-preimage samples)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_training(log: list[dict], path: Path, continuations: list[int] = ()) -> None:
    """Per-site precision (one T=1 sample per held-out query) over training steps; dotted lines
    where a continued run (fresh optimiser and schedule) began."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for step in continuations:
        ax.axvline(step, ls=":", c="grey", lw=1)
    steps = [e["step"] for e in log]
    for site in log[-1]["ratio"]:
        ax.plot(steps, [e["ratio"][site] for e in log], lw=1, label=site)
    ax.plot(steps, [e["mean_ratio"] for e in log], "k", lw=2.5, label="mean")
    ax.axhline(0.9, ls="--", c="grey")
    ax.set_xlabel("decoder training step (batch 256)")
    ax.set_ylabel("fraction in ε=0.1 preimage (τ=1)")
    ax.legend(fontsize=6, ncol=2)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


POSITION_NAMES = "B F1 F2 F3 + S1 S2 S3 = A1 A2 A3 A4/E E".split()


@torch.no_grad()
def attention_table(probed, n: int = 2000) -> str:
    """Where each head looks from each query position (mean pattern over held-out problems,
    the top-3 keys): an independent check on what the per-head sites can carry."""
    tokens = AD.held_out_inputs(n, seed=0)
    _, cache = probed.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    names = list(POS_NAMES.values())
    lines = ["| head | " + " | ".join(f"from `{p}`" for p in names) + " |",
             "|---|" + "---|" * len(names)]
    for layer in range(probed.cfg.n_layers):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"].mean(0)  # [head, query, key]
        for h in range(probed.cfg.n_heads):
            cells = []
            for pos in POS_NAMES:
                top = pat[h, pos].topk(3)
                cells.append(", ".join(f"{POSITION_NAMES[k]} {v:.2f}" for v, k in
                                       zip(top.values.tolist(), top.indices.tolist(),
                                           strict=True)))
            lines.append(f"| {layer}.{h} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/inversionview-addition"))
    p.add_argument("--decoder-dir", type=Path, default=None)
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--samples", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rel = load_release("addition", args.decoder_dir)
    dec, probed, sites = rel.decoder, rel.probed, rel.sites
    queries = AD.held_out_inputs(args.queries, seed=args.seed)
    chance = [AA.chance_agreement(q.tolist(), n=2000, seed=i) for i, q in enumerate(queries)]
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.monotonic()
    results: dict = {}
    bar = tqdm(total=len(sites) * len(POS_NAMES), desc="sites x positions")
    for site in sites:
        results[site] = {}
        for pos, pname in POS_NAMES.items():
            rep = queries.repeat_interleave(args.samples, dim=0)
            dist, samples, _ = batch_precision(dec, probed, sites, site, rep, pos,
                                               generator=g, return_samples=True)
            inside = (dist <= 0.1).view(args.queries, args.samples)
            samples = samples.view(args.queries, args.samples, -1)
            agree: dict[str, list[float]] = {k: [] for k in AA.VARIABLES}
            ch: dict[str, list[float]] = {k: [] for k in AA.VARIABLES}
            n_with = 0
            for i in range(args.queries):
                ins = [s.tolist() for s, ok in zip(samples[i], inside[i], strict=True) if ok]
                if len(ins) < MIN_INSIDE:
                    continue
                a = AA.agreement(queries[i].tolist(), ins)
                if any(math.isnan(v) for v in a.values()):
                    continue
                n_with += 1
                for k in AA.VARIABLES:
                    agree[k].append(a[k])
                    ch[k].append(chance[i][k])
            mean_agree = {k: sum(v) / len(v) if v else float("nan") for k, v in agree.items()}
            mean_chance = {k: sum(v) / len(v) if v else float("nan") for k, v in ch.items()}
            results[site][pname] = {
                "precision": float(inside.float().mean()),
                "queries_with_preimage_samples": n_with,
                "agreement": mean_agree,
                "chance": mean_chance,
                "encoded": (AA.encoded_variables(mean_agree, mean_chance)
                            if n_with >= MIN_QUERIES else None),
            }
            bar.update(1)
    bar.close()
    elapsed = time.monotonic() - t0

    # the table: one row per site, one column per position
    lines = ["| site | " + " | ".join(f"`{n}`" for n in POS_NAMES.values()) + " |",
             "|---|" + "---|" * len(POS_NAMES)]
    for site in sites:
        cells = []
        for pname in POS_NAMES.values():
            r = results[site][pname]
            enc = "n/a" if r["encoded"] is None else ", ".join(r["encoded"]) or "—"
            cells.append(f"{enc} <sub>({r['precision']:.2f})</sub>")
        lines.append(f"| `{site}` | " + " | ".join(cells) + " |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")

    # examples: the same problem read at '=' at every site
    ex = A.encode(EXAMPLE)
    real = [t for t in ex if t != A.PAD]
    md = [f"Query `{EXAMPLE}` at `=` (position 8); 32 samples from the paper's plan, the 8 "
          "closest shown; `[x]` marks the position whose activation matched.\n"]
    for j, site in enumerate(sites):
        q = activations_at(probed, torch.tensor([ex]), site)[0, 8]
        scored = sample_preimage(dec, probed, sites, site, q, n=32, seed=j)
        md.append(f"#### `{site}`\n\n```\n"
                  + render_table(scored, rel.decode, rel.decode(real), 8, limit=8) + "\n```\n")
        base = activations_at(probed, torch.tensor([ex]), site)[0, 0]
        contrast = token_contrast(dec, [c.tokens for c in scored], j, q, base)
        page = render_html(scored, rel.decode, real, 8, site, contrast=contrast,
                           title=f"InversionView: {EXAMPLE} @ {site}")
        (args.out / f"{site}.html").write_text(page)
    (args.out / "examples.md").write_text("\n".join(md))
    (args.out / "attention.md").write_text(attention_table(probed))
    plot_agreement(results, sites, args.out / "agreement.png")
    log_path = (args.decoder_dir or AD.data_dir() / "addition_decoder") / "eval_log.json"
    if log_path.is_file():
        log = json.loads(log_path.read_text())
        # a shipped log joined from continued runs (scripts/plot_decoder_training.py) marks them
        starts = [prev["step"] for prev, e in zip(log, log[1:], strict=False)
                  if e.get("run", 0) != prev.get("run", 0)]
        plot_training(log, args.out / "training.png", continuations=starts)
    (args.out / "case_study.json").write_text(json.dumps({
        "command": "python scripts/addition_case_study.py " + " ".join(argv or []),
        "decoder_training": rel.meta.get("training"),
        "queries": args.queries, "samples": args.samples, "seconds": elapsed,
        "results": results,
    }, indent=1))
    print((args.out / "table.md").read_text())
    print(f"{elapsed:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
