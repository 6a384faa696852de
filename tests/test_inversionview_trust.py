"""InversionView inputs that used to fail late, silently or unsafely (issue 9): crafted resume
states, all-zero / NaN queries, bad sample counts, EOS positions in the ε-preimage minimum, and
the name-suggestion helper's home."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from msae_plugin.errors import (
    CheckpointError,
    InversionViewError,
    QueryActivationError,
    UnsafeCheckpointError,
)
from msae_plugin.inversionview.decoder import DecoderConfig, InversionViewDecoder
from msae_plugin.inversionview.preimage import (
    activations_at,
    min_distances,
    paired_min_distances,
    score_candidates,
)
from msae_plugin.inversionview.sampling import batch_precision, sample_preimage
from msae_plugin.inversionview.training import STATE_FILE, PairGenerator, train_decoder

V, PAD, BOS, EOS = 9, 0, 1, 2
SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
SRC = Path(__file__).resolve().parents[1] / "src" / "msae_plugin"


@pytest.fixture(scope="module")
def probed() -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=7, d_head=4, n_heads=4,
                                  d_vocab=V, act_fn="relu", normalization_type="LN")
    return HookedTransformer(cfg).eval()


def decoder() -> InversionViewDecoder:
    torch.manual_seed(0)
    return InversionViewDecoder(DecoderConfig(
        vocab_size=V, n_ctx=7, d_act=16, n_sites=len(SITES), pad_id=PAD, bos_id=BOS,
        eos_id=EOS, d_model=32, n_layers=2, n_heads=4, n_act_blocks=2)).eval()


def sample_inputs(n: int, g: torch.Generator) -> torch.Tensor:
    t = torch.full((n, 6), EOS)
    t[:, 0] = BOS
    t[:, 1:5] = torch.randint(3, V, (n, 4), generator=g)
    return t


class _Marker:
    """Unpickling this creates ``path``: a stand-in for arbitrary code in a crafted file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ----------------------------------------------------------------------------- unsafe files
@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 2"])
def test_crafted_resume_state_is_refused_without_running_code(probed, tmp_path, writer) -> None:
    marker = tmp_path / "code_ran"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    state = {"decoder": _Marker(marker), "optimizer": {}, "step": 0, "losses": [],
             "generator": torch.Generator().get_state()}
    if writer == "torch.save":
        torch.save(state, ckpt / STATE_FILE)
    else:
        (ckpt / STATE_FILE).write_bytes(pickle.dumps(state, protocol=2))
    pairs = PairGenerator(probed, SITES, sample_inputs, [PAD, BOS, EOS], bos_id=BOS)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to resume from .*could run "
                       r"arbitrary code\. Delete it to start over"):
        train_decoder(decoder(), pairs, steps=2, batch_size=4, progress=False,
                      checkpoint_dir=ckpt)
    assert not marker.exists()


def test_saved_resume_state_is_tensors_only(probed, tmp_path) -> None:
    """What train_decoder writes loads under torch's safe unpickler (so resuming needs no
    trust), and a state with missing keys is a clear CheckpointError, not a KeyError."""
    pairs = PairGenerator(probed, SITES, sample_inputs, [PAD, BOS, EOS], bos_id=BOS)
    train_decoder(decoder(), pairs, steps=2, batch_size=4, progress=False,
                  checkpoint_dir=tmp_path, save_every=1)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert state["step"] == 2 and state["generator"].dtype == torch.uint8
    torch.save({"step": 1}, tmp_path / STATE_FILE)
    with pytest.raises(CheckpointError, match="not a training state written by train_decoder"):
        train_decoder(decoder(), pairs, steps=3, batch_size=4, progress=False,
                      checkpoint_dir=tmp_path)


# ----------------------------------------------------------------------------- bad queries
def test_all_zero_query_is_an_error_not_1e12(probed) -> None:
    acts = torch.randn(3, 5, 16)
    with pytest.raises(QueryActivationError, match=r"all zeros.*query another site or position"):
        min_distances(acts, torch.zeros(16))
    queries = torch.randn(3, 16)
    queries[1] = 0
    with pytest.raises(QueryActivationError, match=r"\(row 1\) is all zeros"):
        paired_min_distances(acts, queries)
    with pytest.raises(QueryActivationError, match="all zeros"):
        sample_preimage(decoder(), probed, SITES, SITES[0], torch.zeros(16), n=4)
    with pytest.raises(QueryActivationError, match="all zeros"):
        score_candidates(probed, SITES[0], torch.zeros(16), sample_inputs(2, torch.Generator()))


def test_nan_query_never_reaches_the_sampler(probed, monkeypatch) -> None:
    dec = decoder()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a NaN query reached decoder.sample")

    monkeypatch.setattr(dec, "sample", must_not_run)
    for bad in (float("nan"), float("inf")):
        q = torch.randn(16)
        q[3] = bad
        with pytest.raises(QueryActivationError, match=r"contains NaN or inf.*isfinite"):
            sample_preimage(dec, probed, SITES, SITES[0], q, n=4)
    with pytest.raises(QueryActivationError, match="1-D activation vector"):
        sample_preimage(dec, probed, SITES, SITES[0], torch.randn(2, 16), n=4)
    # batched: a probed model producing NaN is caught before sampling as well
    probed.blocks[0].hook_resid_post.add_hook(lambda x, hook: x * float("nan"))
    try:
        with pytest.raises(QueryActivationError, match=r"row 0\) contains NaN"):
            batch_precision(dec, probed, SITES, SITES[0], sample_inputs(3, torch.Generator()), 2)
    finally:
        probed.reset_hooks()


def test_decoder_sample_refuses_nan_activations() -> None:
    dec = decoder()
    act = torch.randn(2, 16)
    act[1, 0] = float("nan")
    with pytest.raises(QueryActivationError, match="NaN or inf"):
        dec.sample(act, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_sample_count(probed, n) -> None:
    with pytest.raises(InversionViewError, match=r"n \(the number of samples\) must be an int ≥ 1"):
        sample_preimage(decoder(), probed, SITES, SITES[0], torch.randn(16), n=n)


def test_unknown_site_suggests_the_nearest(probed) -> None:
    with pytest.raises(InversionViewError, match="Did you mean 'blocks.1.hook_resid_post'"):
        sample_preimage(decoder(), probed, SITES, "blocks.1.hook_resid_pots", torch.randn(16))


# ----------------------------------------------------------------------------- EOS positions
def test_eos_position_is_never_the_match(probed) -> None:
    """The paper's minimum skips PAD and EOS. A query equal to the activation at a candidate's
    EOS position must match elsewhere (distance > 0) unless EOS matching is asked for."""
    cand = torch.tensor([[BOS, 3, 4, 5, EOS, PAD]])
    with torch.no_grad():
        _, cache = probed.run_with_cache(cand)
    acts = cache[SITES[0]][0]
    q = acts[4]  # the EOS position's activation
    (c,) = score_candidates(probed, SITES[0], q, cand, pad_id=PAD, eos_id=EOS)
    ref = ((acts[:4] - q).norm(dim=-1) / q.norm()).min()  # independent: BOS and body only
    assert c.position != 4 and c.distance == pytest.approx(ref.item(), abs=1e-5)
    (c,) = score_candidates(probed, SITES[0], q, cand, pad_id=PAD)  # no eos_id: EOS can match
    assert c.position == 4 and c.distance < 1e-6


def test_sample_preimage_distances_skip_eos(probed) -> None:
    """Every decoded sample's distance equals an independent full forward minimised over its
    non-PAD, non-EOS positions (the query is an EOS activation, so EOS would often win)."""
    tokens = sample_inputs(1, torch.Generator().manual_seed(0))
    q = activations_at(probed, tokens, SITES[0])[0, 5]  # the input's EOS position
    scored = sample_preimage(decoder(), probed, SITES, SITES[0], q, n=32, seed=1)
    width = max(len(c.tokens) for c in scored)
    t = torch.tensor([c.tokens + [PAD] * (width - len(c.tokens)) for c in scored])
    with torch.no_grad():
        _, cache = probed.run_with_cache(t)  # full forward, trailing PAD changes nothing before
    d = (cache[SITES[0]] - q).norm(dim=-1) / q.norm()
    ref = d.masked_fill((t == PAD) | (t == EOS), float("inf")).min(dim=-1).values
    assert [c.distance for c in scored] == pytest.approx(ref.tolist(), abs=1e-5)
    assert all(c.tokens[c.position] not in (PAD, EOS) for c in scored)
    # the check is sensitive: for some of these samples the EOS position would be the closest
    with_eos = d.masked_fill(t == PAD, float("inf")).min(dim=-1).values
    assert (with_eos < ref - 1e-4).sum() > 0
    matched = sample_preimage(decoder(), probed, SITES, SITES[0], q, n=32, seed=1,
                              match_eos=True)
    assert any(c.tokens[c.position] == EOS for c in matched)


# ----------------------------------------------------------------------------- module rooms
def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
    return mods


def test_name_suggestions_live_in_a_leaf_module() -> None:
    """InversionView must not reach into the vision package for a shared helper; the helper's
    module imports nothing from the project, and vision.hook_names still offers it."""
    from msae_plugin.names import suggest
    from msae_plugin.vision import hook_names

    for path in (SRC / "inversionview").glob("*.py"):
        assert not any(m.startswith("msae_plugin.vision") for m in _imports(path)), path
    assert not any(m.startswith("msae_plugin") for m in _imports(SRC / "names.py"))
    assert hook_names.suggest is suggest
    assert suggest("blocks.0.hook_resid_pots", ["blocks.0.hook_resid_post", "hook_embed"]) == (
        " Did you mean 'blocks.0.hook_resid_post'?")
    assert suggest("zzz", ["blocks.0.hook_resid_post"]) == ""
