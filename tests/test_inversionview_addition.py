"""The InversionView three-digit-addition task and its probed model (CPU, a few seconds)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from msae_plugin.errors import CheckpointError, ModelInputError
from msae_plugin.inversionview import addition as A


@pytest.fixture(scope="module")
def split():
    return A.train_test_split()


def _tokens_to_ints(row: list[int]) -> tuple[int, int, int]:
    """Independent parse of one encoded row back to Python ints (a, b, c)."""
    assert row[0] == A.BOS and row[4] == A.PLUS and row[8] == A.EQUALS
    a = int("".join(str(d) for d in row[1:4]))
    b = int("".join(str(d) for d in row[5:8]))
    rest = row[9:]
    end = rest.index(A.EOS)
    assert all(t == A.PAD for t in rest[end + 1 :])
    assert all(0 <= d <= 9 for d in rest[:end])
    return a, b, int("".join(str(d) for d in rest[:end]))


# ----------------------------------------------------------------------------- tokenizer
def test_vocabulary_matches_the_brief():
    assert A.D_VOCAB == 15
    assert [A.TOKEN_TO_ID[str(d)] for d in range(10)] == list(range(10))
    assert (A.BOS, A.PLUS, A.EQUALS, A.EOS, A.PAD) == (10, 11, 12, 13, 14)
    assert A.encode("123+456=579") == [10, 1, 2, 3, 11, 4, 5, 6, 12, 5, 7, 9, 13, 14]
    assert A.encode("999+999=1998") == [10, 9, 9, 9, 11, 9, 9, 9, 12, 1, 9, 9, 8, 13]
    assert A.encode("123+456=") == [10, 1, 2, 3, 11, 4, 5, 6, 12]
    assert len(A.encode("123+456=579", pad=False)) == 13


def test_tokenizer_round_trip():
    rng = random.Random(1)
    for _ in range(200):
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        s = A.problem_text(a, b)
        ids = A.encode(s)
        assert len(ids) == A.SEQ_LEN
        assert A.decode(ids) == s
        full = A.decode(ids, keep_special=True)
        assert full.startswith("B") and "E" in full
        assert A.encode(full) == ids  # the form with specials is accepted too
        assert A.decode(torch.tensor(ids)) == s
        assert A.decode(A.encode(A.problem_text(a, b, with_answer=False))) == f"{a}+{b}="


# ----------------------------------------------------------------------------- problem set
def test_enumeration_and_split(split):
    problems = A.all_problems()
    assert len(problems) == A.N_PROBLEMS == 810_000
    assert len(set(problems)) == 810_000
    assert min(min(p) for p in problems) == 100 and max(max(p) for p in problems) == 999
    train, test = split
    assert (len(train), len(test)) == (607_500, 202_500)
    assert set(train).isdisjoint(test)
    assert set(train) | set(test) == set(problems)
    train2, test2 = A.train_test_split()
    assert train2[:1000] == train[:1000] and test2[-1000:] == test[-1000:]  # deterministic
    assert A.train_test_split(seed=1)[0][:1000] != train[:1000]


def test_batch_shapes_and_arithmetic(split):
    train = split[0]
    g = torch.Generator().manual_seed(0)
    tokens, mask = A.make_batch(train, batch_size=512, generator=g)
    assert tokens.shape == mask.shape == (512, A.SEQ_LEN)
    assert tokens.dtype == torch.long and mask.dtype == torch.bool
    for row, m in zip(tokens.tolist(), mask.tolist(), strict=True):
        a, b, c = _tokens_to_ints(row)
        assert a + b == c
        n_answer = len(str(c)) + 1  # digits + E
        assert m == [False] * 9 + [True] * n_answer + [False] * (5 - n_answer)
    # Explicit problems are encoded in order; both 3- and 4-digit answers occur.
    probs = [(100, 100), (999, 999), (500, 499), (500, 500)]
    tokens, _ = A.make_batch(probs)
    assert [_tokens_to_ints(r) for r in tokens.tolist()] == [
        (100, 100, 200),
        (999, 999, 1998),
        (500, 499, 999),
        (500, 500, 1000),
    ]
    _, mask_all = A.make_batch(probs, loss_on="all")
    assert mask_all[:, 0].sum() == 0
    assert mask_all[:, 1:].sum(1).tolist() == [12, 13, 12, 13]


# ----------------------------------------------------------------------------- model
def test_probed_model_config():
    cfg = A.probed_model_config()
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp) == (2, 4, 32, 8, 128)
    assert (cfg.n_ctx, cfg.d_vocab, cfg.act_fn, cfg.normalization_type) == (
        14,
        15,
        "gelu_new",
        "LN",
    )
    assert A.config_hash(cfg) == A.config_hash(A.probed_model_config(seed=5))
    assert A.config_hash(cfg) != A.config_hash(A.probed_model_config(d_mlp=64))


class _Oracle(torch.nn.Module):
    """Emits the correct next token (or drops the EOS of 3-digit answers when ``broken``)."""

    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.broken = broken

    def forward(self, toks: torch.Tensor, return_type: str = "logits") -> torch.Tensor:
        a = toks[:, 1] * 100 + toks[:, 2] * 10 + toks[:, 3]
        b = toks[:, 5] * 100 + toks[:, 6] * 10 + toks[:, 7]
        full = A.make_batch(torch.stack([a, b], 1))[0]
        nxt = full[:, toks.shape[1]]
        if self.broken and toks.shape[1] == 12:  # the E right after a 3-digit answer
            nxt = torch.where(nxt == A.EOS, torch.full_like(nxt, A.PAD), nxt)
        logits = torch.zeros(toks.shape[0], toks.shape[1], A.D_VOCAB)
        logits[torch.arange(toks.shape[0]), -1, nxt] = 1.0
        return logits


def test_answer_accuracy_is_exact_match():
    probs = [(100, 100), (999, 999), (123, 456), (500, 500)]
    assert A.answer_accuracy(_Oracle(), probs) == 1.0
    # 3-digit answers without their E are wrong; 4-digit ones end at position 13 anyway.
    assert A.answer_accuracy(_Oracle(broken=True), probs) == pytest.approx(0.5)


@pytest.fixture
def one_thread():
    """Tiny matmuls: extra intra-op threads only add contention on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_short_training_reduces_loss(split, one_thread):
    cfg = A.probed_model_config(n_layers=1, d_model=16, n_heads=2, seed=0)
    history: list[tuple[int, float]] = []
    model = A.train_probed_model(
        steps=150,
        batch_size=64,
        lr=3e-3,
        seed=0,
        progress=False,
        cfg=cfg,
        train_problems=split[0][:20_000],
        warmup_steps=10,
        log_every=25,
        history=history,
    )
    assert [s for s, _ in history] == [25, 50, 75, 100, 125, 150]
    assert history[-1][1] < 0.75 * history[0][1]
    assert not model.training
    problems = split[1][:256]
    acc = A.answer_accuracy(model, problems)
    # independent count: greedy-decode each problem one token at a time, compare as text
    hits = 0
    with torch.no_grad():
        for a, b in problems:
            toks = [A.BOS, *map(int, str(a)), A.PLUS, *map(int, str(b)), A.EQUALS]
            out = ""
            while len(toks) < A.SEQ_LEN:
                nxt = int(model(torch.tensor([toks]), return_type="logits")[0, -1].argmax())
                toks.append(nxt)
                if nxt == A.EOS:
                    break
                out += A.VOCAB[nxt]
            hits += out == str(a + b) and toks[-1] == A.EOS
    assert acc == pytest.approx(hits / len(problems))
    assert hits < len(problems) // 2  # 150 tiny steps are far from solving the task


# ----------------------------------------------------------------------------- save / load
@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return A.build_probed_model(A.probed_model_config(seed=0))


def test_save_load_round_trip(tmp_path, small_model):
    path = A.save_probed_model(small_model, tmp_path / "m", extra={"note": "x"})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((path / "config.json").read_text())
    assert meta["task"] == A.TASK_NAME
    assert meta["config_hash"] == A.config_hash(small_model.cfg)
    assert meta["extra"] == {"note": "x"}
    loaded = A.load_probed_model(path, expected_config_hash=A.config_hash(A.probed_model_config()))
    tokens, _ = A.make_batch([(123, 456), (999, 999)])
    small_model.eval()
    assert torch.equal(small_model(tokens), loaded(tokens))
    # Re-saving over the same folder works (atomic replace) and leaves no temp files.
    A.save_probed_model(loaded, path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]


def test_corrupt_or_mismatched_checkpoint(tmp_path, small_model):
    path = A.save_probed_model(small_model, tmp_path / "m")
    weights = path / "model.safetensors"
    cfg_path = path / "config.json"
    good_weights, good_cfg = weights.read_bytes(), cfg_path.read_text()

    with pytest.raises(CheckpointError, match="config_hash .* expected"):
        A.load_probed_model(path, expected_config_hash="0" * 64)

    data = bytearray(good_weights)
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="weights_sha256"):
        A.load_probed_model(path)
    weights.write_bytes(good_weights[:100])
    with pytest.raises(CheckpointError, match="weights_sha256"):
        A.load_probed_model(path)
    weights.write_bytes(good_weights)

    meta = json.loads(good_cfg)
    meta["config"]["d_model"] = 64  # edited config: the recorded hash no longer matches
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="config_hash does not match"):
        A.load_probed_model(path)

    meta = json.loads(good_cfg)
    meta["task"] = "counting"
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="task 'counting'"):
        A.load_probed_model(path)

    cfg_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        A.load_probed_model(path)

    # Weights of another (smaller) model under this model's config.json.
    cfg_path.write_text(good_cfg)
    other = A.build_probed_model(A.probed_model_config(d_mlp=64))
    other_dir = A.save_probed_model(other, tmp_path / "other")
    weights.write_bytes((other_dir / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="weights_sha256"):
        A.load_probed_model(path)

    with pytest.raises(CheckpointError, match="missing"):
        A.load_probed_model(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "text, match",
    [
        ("12a+456=", "not a three-digit addition problem"),
        ("1234+456=", "not a three-digit addition problem"),
        ("123-456=579", "not a three-digit addition problem"),
        ("", "not a three-digit addition problem"),
        ("099+456=", "out of range"),
        ("123+456=580", "answer must be 579"),
        ("500+500=01000", "not a three-digit"),
    ],
)
def test_encode_rejects_bad_text(text, match):
    with pytest.raises(A.AdditionTaskError, match=match):
        A.encode(text)


def test_bad_problems_and_ids():
    assert issubclass(A.AdditionTaskError, ModelInputError)
    with pytest.raises(A.AdditionTaskError, match="out of range"):
        A.problem_text(1000, 5)
    with pytest.raises(A.AdditionTaskError, match="must be an int"):
        A.problem_text("123", 456)  # type: ignore[arg-type]
    with pytest.raises(A.AdditionTaskError, match=r"\(99, 100\).*out of range"):
        A.make_batch([(123, 456), (99, 100)])
    with pytest.raises(A.AdditionTaskError, match="non-empty"):
        A.make_batch([])
    with pytest.raises(A.AdditionTaskError, match="pairs of ints"):
        A.make_batch([("123", "456")])  # type: ignore[list-item]
    with pytest.raises(A.AdditionTaskError, match="loss_on"):
        A.make_batch([(123, 456)], loss_on="operands")  # type: ignore[arg-type]
    with pytest.raises(A.AdditionTaskError, match="integers"):
        A.make_batch(torch.tensor([[123.0, 456.0]]))
    with pytest.raises(A.AdditionTaskError, match="not in the vocabulary"):
        A.decode([10, 15])
    with pytest.raises(A.AdditionTaskError, match="1-D"):
        A.decode(torch.zeros(2, 14, dtype=torch.long))
    with pytest.raises(A.AdditionTaskError, match="out of range"):
        A.answer_accuracy(_Oracle(), [(1000, 100)])


def test_shipped_probed_model_solves_held_out_problems() -> None:
    """The probed model shipped as package data (scripts/train_addition_model.py, seed 0)."""
    from importlib.resources import files

    from msae_plugin.inversionview.addition import (
        answer_accuracy,
        load_probed_model,
        train_test_split,
    )

    path = files("msae_plugin.inversionview") / "data" / "addition_probed"
    model = load_probed_model(str(path))
    _, test = train_test_split()
    g = torch.Generator().manual_seed(7)
    pick = torch.randperm(len(test), generator=g)[:500].tolist()
    assert answer_accuracy(model, [test[i] for i in pick]) >= 0.98
