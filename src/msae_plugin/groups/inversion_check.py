"""InversionView on a group-composition network: do preimages keep what the explanation says?

InversionView (``msae_plugin.inversionview``) reads an activation by sampling inputs whose
activation is within ε of it. Its decoder, pair generator and ε-preimage criterion are written for
token-sequence models with a position axis; a :class:`GroupMLP` takes two element ids. The
adapter :class:`GroupSequenceModel` presents it as a sequence model over the vocabulary
``{0..|G|-1} ∪ {PAD, BOS, EOS}`` reading ``[BOS, x, y, EOS]``. Its hooks have the names of the
GroupMLP's hooks and a position axis; each activation sits at the position where, in a causal
reading, it first becomes computable: ``hook_embed_l`` at position 1 (x), everything that needs
y (``hook_embed_r``, ``hook_pre``, ``hook_post``, ``hook_logits``) at position 2. Every other
position holds zeros, whose normalised distance to any query is exactly 1, so they never match
(ε < 1). A malformed decoded sample (a special token where an element id belongs) has zeros
everywhere: it is never in the preimage and counts as "malformed".

What the explanation says is stored (the ground truth the preimages are scored on):

* ``hook_post`` determines the logits, so the product ``z = x·y``; per circuit, neuron
  ``(a, b)`` reads x only through ``ρ(x)⁻¹a`` and y only through ``ρ(y)b``, so the pair of
  *coset patterns* ``((ρ(x)⁻¹a)_a, (ρ(y)b)_b)`` is all a circuit sees (the ReLU may keep less).
* ``hook_embed_l`` feeds the circuits only through the left patterns ``(ρ(x)⁻¹a)_a`` (likewise
  ``hook_embed_r`` with the right patterns); a full embedding may keep more (x itself).

Agreement of a sample ``(x', y')`` with its query ``(x, y)`` is measured for ``z``, ``x``,
``y`` and each circuit's patterns, over the in-preimage samples and over all well-formed
samples, and compared with chance: the same agreement for uniformly random pairs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens.hook_points import HookedRootModule, HookPoint

from msae_plugin.groups.finite import FiniteGroup
from msae_plugin.groups.folded import FoldedWeights
from msae_plugin.groups.model import GroupMLP, GroupMLPConfig
from msae_plugin.groups.sae_check import GroundTruthCircuit
from msae_plugin.inversionview.decoder import DecoderConfig, InversionViewDecoder
from msae_plugin.inversionview.preimage import activations_at
from msae_plugin.inversionview.training import PairBatch, PairGenerator, train_decoder

#: where each hook's activation sits in ``[BOS, x, y, EOS]``
HOOK_POSITIONS = {"hook_embed_l": 1, "hook_embed_r": 2, "hook_pre": 2, "hook_post": 2,
                  "hook_logits": 2}
SEQ_LEN = 4


def group_mlp_from_folded(folded: FoldedWeights, group: FiniteGroup) -> GroupMLP:
    """A :class:`GroupMLP` computing exactly the folded network (``d_embed = m``:
    ``E_l = w_lᵀ``, ``E_r = w_rᵀ``, ``W = [I; I]``, ``W_U = w_u``), so constructed networks
    (which exist only as tables) can be probed through the same hooks as trained ones."""
    folded.check(group)
    m = folded.n_neurons
    model = GroupMLP(GroupMLPConfig(group=group.name, d_embed=m, d_hidden=m,
                                    unembed_bias=folded.bias is not None))
    eye = torch.eye(m)
    with torch.no_grad():
        model.embed_l.copy_(folded.w_l.T.float())
        model.embed_r.copy_(folded.w_r.T.float())
        model.W.copy_(torch.cat([eye, eye]))
        model.W_U.copy_(folded.w_u.float())
        if folded.bias is not None:
            model.b_U.copy_(folded.bias.float())
    return model.eval()


class GroupSequenceModel(HookedRootModule):
    """A :class:`GroupMLP` read as a token-sequence model ``[BOS, x, y, EOS]`` (module
    docstring). ``forward(tokens) -> [batch, seq, |G|]`` logits (at position 2). The wrapped
    model is run through its own ``run_with_cache``, so the activations are its hooks' values."""

    def __init__(self, model: GroupMLP) -> None:
        super().__init__()
        self._inner = [model]  # a list: keep its hooks out of this module's hook_dict
        n = model.group.order
        self.n_elements = n
        self.pad_id, self.bos_id, self.eos_id = n, n + 1, n + 2
        self.vocab_size = n + 3
        for name in HOOK_POSITIONS:
            setattr(self, name, HookPoint())
        self.setup()

    @property
    def model(self) -> GroupMLP:
        return self._inner[0]

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[n, 4]`` tokens ``[BOS, x, y, EOS]``."""
        x, y = torch.as_tensor(x).long(), torch.as_tensor(y).long()
        return torch.stack([torch.full_like(x, self.bos_id), x, y,
                            torch.full_like(x, self.eos_id)], dim=1)

    def decode_pairs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, y, ok)`` read from ``[n, seq]`` tokens: ``ok`` is False where BOS is missing or
        positions 1, 2 do not hold element ids (x, y are 0 there)."""
        tokens = torch.as_tensor(tokens).long()
        if tokens.dim() != 2 or tokens.shape[1] < 3:
            z = torch.zeros(len(tokens), dtype=torch.long)
            return z, z, torch.zeros(len(tokens), dtype=torch.bool)
        x, y = tokens[:, 1], tokens[:, 2]
        ok = (tokens[:, 0] == self.bos_id) & (x < self.n_elements) & (y < self.n_elements)
        return torch.where(ok, x, 0), torch.where(ok, y, 0), ok

    def forward(self, tokens: torch.Tensor, stop_at_layer: int | None = None) -> torch.Tensor:
        """``stop_at_layer`` is accepted (InversionView passes it) and ignored: one layer."""
        del stop_at_layer
        tokens = torch.as_tensor(tokens).long()
        b, t = tokens.shape
        x, y, ok = self.decode_pairs(tokens)
        model = self.model
        _, cache = model.run_with_cache(x.to(model.W.device), y.to(model.W.device),
                                        names_filter=list(HOOK_POSITIONS))
        out = None
        for name, pos in HOOK_POSITIONS.items():
            act = cache[name] * ok[:, None].to(cache[name].dtype)
            full = act.new_zeros(b, t, act.shape[-1])
            if pos < t:
                full[:, pos] = act
            full = getattr(self, name)(full)
            out = full
        return out


class GroupPairs(PairGenerator):
    """InversionView training pairs for a :class:`GroupSequenceModel`: a random site per batch,
    input pairs drawn from ``pairs`` (the training split; the rest are held-out queries), the
    activation taken at the site's own position (:data:`HOOK_POSITIONS`)."""

    def __init__(self, probed: GroupSequenceModel, hooks: Sequence[str], pairs: torch.Tensor,
                 seed: int = 0) -> None:
        super().__init__(probed, hooks, self._unused, [probed.pad_id, probed.bos_id,
                                                        probed.eos_id], probed.bos_id,
                         p_bos=0.0, seed=seed)
        self.pairs = pairs

    @staticmethod
    def _unused(n: int, g: torch.Generator) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, batch_size: int) -> PairBatch:
        g = self.generator
        site = int(torch.randint(len(self.hooks), (1,), generator=g))
        hook = self.hooks[site]
        idx = torch.randint(len(self.pairs), (batch_size,), generator=g)
        tokens = self.probed.encode(self.pairs[idx, 0], self.pairs[idx, 1])
        pos = HOOK_POSITIONS[hook]
        acts = activations_at(self.probed, tokens, hook)[:, pos]
        return PairBatch(tokens, acts, torch.full((batch_size,), site),
                         torch.full((batch_size,), pos))


def make_decoder(probed: GroupSequenceModel, d_act: int, n_sites: int, d_model: int = 64,
                 seed: int = 0) -> InversionViewDecoder:
    """A tiny decoder (2 layers, 2 activation blocks): the sequences are 4 tokens long."""
    torch.manual_seed(seed)
    return InversionViewDecoder(DecoderConfig(
        vocab_size=probed.vocab_size, n_ctx=SEQ_LEN, d_act=d_act, n_sites=n_sites,
        pad_id=probed.pad_id, bos_id=probed.bos_id, eos_id=probed.eos_id, d_model=d_model,
        n_layers=2, n_heads=4, n_act_blocks=2))


def coset_patterns(circuit: GroundTruthCircuit) -> tuple[torch.Tensor, torch.Tensor]:
    """``(left [|G|, |A|], right [|G|, |B|])`` long: ``left[x, i]`` = index of ``ρ(x)⁻¹a_i`` in
    ``a_points``, ``right[y, j]`` = index of ``ρ(y)b_j`` in ``b_points`` (nearest point; the
    points of an exact ρ-set are permuted, so the nearest is the image)."""
    rho, a, b = circuit.rho.double(), circuit.a_points.double(), circuit.b_points.double()
    left_img = torch.einsum("gji,aj->gai", rho, a)  # ρ(x)ᵀ a = ρ(x)⁻¹ a (orthogonal)
    right_img = torch.einsum("gij,bj->gbi", rho, b)
    left = torch.cdist(left_img, a[None].expand(len(rho), -1, -1)).argmin(-1)
    right = torch.cdist(right_img, b[None].expand(len(rho), -1, -1)).argmin(-1)
    return left, right


def stored_quantities(group: FiniteGroup, circuits: Sequence[GroundTruthCircuit], hook: str
                      ) -> dict[str, Any]:
    """``name -> [|G|, |G|, ...] tensor`` indexed by ``(x, y)``: the quantities the agreement is
    measured on for ``hook`` (z, x, y always; the circuits' patterns where they apply)."""
    n = group.order
    xs = torch.arange(n)[:, None].expand(n, n)
    ys = torch.arange(n)[None, :].expand(n, n)
    out: dict[str, Any] = {"z": group.table, "x": xs, "y": ys}
    for c in circuits:
        if c.rho is None or c.a_points is None or c.b_points is None:
            continue
        left, right = coset_patterns(c)
        lp, rp = left[xs], right[ys]  # [n, n, |A|], [n, n, |B|]
        if hook == "hook_embed_l":
            out[f"{c.name}:left"] = lp
        elif hook == "hook_embed_r":
            out[f"{c.name}:right"] = rp
        else:
            out[f"{c.name}:pattern"] = torch.cat([lp, rp], dim=-1)
    return out


def _agree(q: torch.Tensor, xq, yq, xs, ys) -> torch.Tensor:
    a, b = q[xq, yq], q[xs, ys]
    return (a == b).reshape(len(xq), -1).all(-1) if a.dim() > 1 else a == b


@dataclass
class InversionResult:
    """Per site: sample counts, agreement rates (in-preimage and all well-formed samples) and
    chance, plus the training record."""

    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """One row per site and quantity; the circuits' patterns are summarised per irrep
        (mean over its circuits, "×n" = how many) so that an explanation with dozens of small
        circuits stays readable (the JSON keeps every circuit)."""
        lines = ["site | samples | well-formed | in preimage | quantity | agree (in) | "
                 "agree (all) | chance"]
        for site, r in self.sites.items():
            for q, v in _by_irrep(r["agreement"]).items():
                lines.append(f"{site} | {r['n_samples']} | {r['well_formed']:.3f} | "
                             f"{r['in_preimage']:.3f} | {q} | {_f(v['in_preimage'])} | "
                             f"{_f(v['all'])} | {_f(v['chance'])}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "sites": self.sites}


def _by_irrep(agreement: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``z``, ``x``, ``y`` as they are; ``<irrep>#<i>:<kind>`` rows averaged per (irrep, kind)."""
    out: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[dict[str, Any]]] = {}
    for name, v in agreement.items():
        if "#" not in name:
            out[name] = v
            continue
        irrep, rest = name.split("#", 1)
        groups.setdefault(f"{irrep}:{rest.split(':', 1)[1]}", []).append(v)
    for key, vs in groups.items():
        irrep, kind = key.split(":", 1)
        row = {}
        for col in ("in_preimage", "all", "chance"):
            vals = [v[col] for v in vs if v[col] is not None]
            row[col] = sum(vals) / len(vals) if vals else None
        out[f"{kind} [{irrep} ×{len(vs)}]"] = row
    return out


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def split_pairs(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train [k, 2], held_out [n² - k, 2])`` pairs from a seeded permutation."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n * n, generator=g)
    pairs = torch.stack([perm // n, perm % n], dim=1)
    cut = n * n - max(1, int(round(holdout * n * n)))
    return pairs[:cut], pairs[cut:]


@torch.no_grad()
def score_site(probed: GroupSequenceModel, decoder: InversionViewDecoder, hooks: Sequence[str],
               hook: str, queries: torch.Tensor, circuits: Sequence[GroundTruthCircuit],
               n_samples: int = 16, epsilon: float = 0.1, temperature: float = 1.0,
               seed: int = 0) -> dict[str, Any]:
    """Sample ``n_samples`` inputs per held-out query pair (``queries [q, 2]``) at ``hook`` and
    measure agreement (module docstring). Sampling is batched over queries (one decoder call);
    the ε-criterion is InversionView's ``‖a − q‖ / ‖q‖`` at the site's position."""
    from msae_plugin.inversionview.preimage import match_positions, paired_min_distances

    group = probed.model.group
    pos = HOOK_POSITIONS[hook]
    qt = probed.encode(queries[:, 0], queries[:, 1])
    q_act = activations_at(probed, qt, hook)[:, pos]
    keep = q_act.norm(dim=-1) > 0  # an all-zero query has no normalised distance
    queries, q_act = queries[keep], q_act[keep]
    reps = queries.repeat_interleave(n_samples, 0)
    acts = q_act.repeat_interleave(n_samples, 0)
    gen = torch.Generator().manual_seed(seed)
    site = torch.full((len(acts),), list(hooks).index(hook))
    samples = decoder.sample(acts, site, temperature, 0.0, generator=gen)
    xs, ys, ok = probed.decode_pairs(samples)
    s_act = activations_at(probed, samples, hook)
    valid = match_positions(samples, probed.pad_id, probed.eos_id)
    dist = paired_min_distances(s_act, acts, valid)
    inside = ok & (dist <= epsilon)
    rx = torch.randint(group.order, (len(reps),), generator=gen)
    ry = torch.randint(group.order, (len(reps),), generator=gen)
    agreement = {}
    for name, q in stored_quantities(group, circuits, hook).items():
        hit = _agree(q, reps[:, 0], reps[:, 1], xs, ys)
        chance = _agree(q, reps[:, 0], reps[:, 1], rx, ry)
        agreement[name] = {
            "in_preimage": float(hit[inside].float().mean()) if inside.any() else None,
            "all": float(hit[ok].float().mean()) if ok.any() else None,
            "chance": float(chance.float().mean()),
        }
    return {"n_queries": len(queries), "n_samples": len(samples),
            "well_formed": float(ok.float().mean()), "in_preimage": float(inside.float().mean()),
            "median_distance": float(dist[ok].median()) if ok.any() else None,
            "agreement": agreement}


def inversion_check(model: GroupMLP, circuits: Sequence[GroundTruthCircuit],
                    steps: int = 1500, batch_size: int = 128, lr: float = 1e-3,
                    d_model: int = 64, holdout: float = 0.2, n_queries: int = 64,
                    n_samples: int = 16, epsilon: float = 0.1, seed: int = 0,
                    progress: bool = False,
                    site_groups: Sequence[Sequence[str]] = (("hook_post",),
                                                            ("hook_embed_l", "hook_embed_r")),
                    ) -> InversionResult:
    """Train one decoder per entry of ``site_groups`` (by default one on ``hook_post`` and one
    on the two embedding hooks: a decoder has one activation width, and d_embed ≠ m in a trained
    GroupMLP) on the training split of input pairs; score held-out queries at each site."""
    probed = GroupSequenceModel(model).eval()
    train_pairs, held = split_pairs(model.group.order, holdout, seed)
    held = held[:n_queries]
    res = InversionResult(config={
        "group": model.group.name, "steps": steps, "batch_size": batch_size, "lr": lr,
        "d_model": d_model, "holdout": holdout, "n_queries": len(held), "n_samples": n_samples,
        "epsilon": epsilon, "seed": seed, "hook_positions": HOOK_POSITIONS})
    for hooks in map(list, site_groups):
        unknown = [h for h in hooks if h not in HOOK_POSITIONS]
        if unknown:
            raise ValueError(f"unknown sites {unknown}; the adapter has {list(HOOK_POSITIONS)}")
        width = activations_at(probed, probed.encode(held[:1, 0], held[:1, 1]), hooks[0]).shape[-1]
        dec = make_decoder(probed, width, len(hooks), d_model=d_model, seed=seed)
        pairs = GroupPairs(probed, hooks, train_pairs, seed=seed)
        t0 = time.perf_counter()
        losses = train_decoder(dec, pairs, steps=steps, batch_size=batch_size, lr=lr,
                               schedule="cosine", warmup=min(100, steps // 10),
                               progress=progress)
        secs = time.perf_counter() - t0
        for hook in hooks:
            r = score_site(probed, dec, hooks, hook, held, circuits, n_samples=n_samples,
                           epsilon=epsilon, seed=seed)
            r["train_seconds"] = round(secs, 2)
            r["final_loss"] = losses[-1] if losses else None
            res.sites[hook] = r
    return res
