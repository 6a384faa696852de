"""Three-digit addition, the second InversionView case study, and its probed model.

Task format (InversionView brief, section 3.2)::

    B a + b = c E  P...      e.g. "B123+456=579EP"  (always padded to 14 tokens)

* vocabulary of 15 tokens: digits ``0``-``9`` have ids 0-9, then ``B`` (BOS)=10, ``+``=11,
  ``=``=12, ``E`` (EOS)=13, ``P`` (PAD)=14;
* ``a, b`` in [100, 999], ``c = a + b`` written with 3 or 4 digits (no leading zeros);
* positions: 0 = B, 1-3 = F1F2F3, 4 = ``+``, 5-7 = S1S2S3, 8 = ``=``, 9-12 = A1..A4/E, 13 = E/P;
* all 900 x 900 = 810,000 ordered pairs, split 75/25 into train/test with a seeded shuffle.

The probed model is the GPT-2 architecture with 2 layers, 4 heads, d_model 32 (d_mlp 128,
gelu_new, LayerNorm, learned positions, n_ctx 14), built directly as a TransformerLens
``HookedTransformer``.  Differences from the reference run (documented, deliberate):

* TransformerLens has no dropout, so the reference's resid/embd dropout 0.1 is not reproduced;
* by default the loss covers only the answer tokens (digits after ``=`` and the final ``E``);
  ``loss_on="all"`` gives the reference's LM loss on every non-pad token;
* the reference trains 59,350 steps at lr 1e-4; on CPU we use fewer steps with a larger lr.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Sequence
from typing import Literal

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from msae_plugin.errors import ModelInputError

TASK_NAME = "inversionview/three_digit_addition"
FORMAT_VERSION = 1

# ----------------------------------------------------------------------------- vocabulary
BOS, PLUS, EQUALS, EOS, PAD = 10, 11, 12, 13, 14
VOCAB: tuple[str, ...] = tuple("0123456789") + ("B", "+", "=", "E", "P")
TOKEN_TO_ID: dict[str, int] = {ch: i for i, ch in enumerate(VOCAB)}
D_VOCAB = len(VOCAB)  # 15
SEQ_LEN = 14  # B + 3 + '+' + 3 + '=' + up to 4 answer digits + E
EQUALS_POS = 8
ANSWER_START = 9
MIN_OPERAND, MAX_OPERAND = 100, 999
N_PROBLEMS = (MAX_OPERAND - MIN_OPERAND + 1) ** 2  # 810,000
TRAIN_FRACTION = 0.75
SPLIT_SEED = 0

Problem = tuple[int, int]

_PROBLEM_RE = re.compile(r"^(\d{3})\+(\d{3})=(\d{3,4})?$")


class AdditionTaskError(ModelInputError):
    """Input that is not a valid three-digit addition problem or token sequence."""


def _check_operand(x: object, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise AdditionTaskError(f"{name} must be an int in [100, 999], got {x!r}")
    if not MIN_OPERAND <= x <= MAX_OPERAND:
        raise AdditionTaskError(
            f"{name}={x} is out of range: operands must be three-digit numbers in "
            f"[{MIN_OPERAND}, {MAX_OPERAND}]"
        )
    return x


def problem_text(a: int, b: int, with_answer: bool = True) -> str:
    """The human-readable form without specials, e.g. ``"123+456=579"``."""
    _check_operand(a, "a")
    _check_operand(b, "b")
    return f"{a}+{b}=" + (str(a + b) if with_answer else "")


def encode(text: str, pad: bool = True) -> list[int]:
    """Tokenise ``"123+456=579"`` (answer optional: ``"123+456="`` is a prompt).

    A full problem becomes ``B 1 2 3 + 4 5 6 = 5 7 9 E`` (padded with ``P`` to 14 tokens when
    ``pad``); a prompt becomes ``B 1 2 3 + 4 5 6 =`` (never padded).  The answer, when given,
    must be the correct sum: this tokenizer is for the task, not for arbitrary strings.
    """
    if not isinstance(text, str):
        raise AdditionTaskError(f"expected a string like '123+456=579', got {type(text).__name__}")
    s = text.strip()
    if s.startswith("B"):
        s = s[1:]
    s = s.rstrip("P")
    if s.endswith("E"):
        s = s[:-1]
    m = _PROBLEM_RE.match(s)
    if m is None:
        raise AdditionTaskError(
            f"{text!r} is not a three-digit addition problem: expected 'AAA+BBB=' optionally "
            "followed by the sum (digits only, e.g. '123+456=579')"
        )
    a, b = int(m.group(1)), int(m.group(2))
    _check_operand(a, "first operand")
    _check_operand(b, "second operand")
    prompt = [BOS, *map(int, m.group(1)), PLUS, *map(int, m.group(2)), EQUALS]
    if m.group(3) is None:
        return prompt
    if int(m.group(3)) != a + b or m.group(3) != str(a + b):
        raise AdditionTaskError(f"{text!r}: the answer must be {a + b} (no leading zeros)")
    ids = prompt + [int(c) for c in m.group(3)] + [EOS]
    if pad:
        ids += [PAD] * (SEQ_LEN - len(ids))
    return ids


def decode(ids: Sequence[int] | torch.Tensor, keep_special: bool = False) -> str:
    """Inverse of :func:`encode`: ``[10, 1, 2, 3, 11, ...]`` -> ``"123+456=579"``.

    With ``keep_special`` the ``B``/``E``/``P`` symbols are kept (``"B123+456=579EP"``).
    Unlike :func:`encode` this accepts any token sequence (e.g. a decoder's samples).
    """
    if isinstance(ids, torch.Tensor):
        if ids.ndim != 1:
            raise AdditionTaskError(
                f"decode takes one sequence (1-D), got shape {tuple(ids.shape)}"
            )
        ids = ids.tolist()
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < D_VOCAB:
            raise AdditionTaskError(f"token id {i!r} is not in the vocabulary (0..{D_VOCAB - 1})")
        if keep_special or i not in (BOS, EOS, PAD):
            out.append(VOCAB[i])
    return "".join(out)


# ----------------------------------------------------------------------------- problem set
def all_problems() -> list[Problem]:
    """All 810,000 ordered pairs ``(a, b)``, a-major then b, each in [100, 999]."""
    rng = range(MIN_OPERAND, MAX_OPERAND + 1)
    return [(a, b) for a in rng for b in rng]


def train_test_split(seed: int = SPLIT_SEED) -> tuple[list[Problem], list[Problem]]:
    """Deterministic 75/25 split (607,500 / 202,500) by a ``random.Random(seed)`` shuffle.

    Mirrors the reference's ``random.seed(0)`` shuffle in spirit; the exact membership of the
    original split is not reproducible (its enumeration order is unknown).
    """
    problems = all_problems()
    random.Random(seed).shuffle(problems)
    n_train = int(round(TRAIN_FRACTION * len(problems)))
    return problems[:n_train], problems[n_train:]


def _as_tensor(problems: Sequence[Problem] | torch.Tensor) -> torch.Tensor:
    if isinstance(problems, torch.Tensor):
        t = problems
    else:
        try:
            t = torch.tensor(list(problems))
        except (TypeError, ValueError, RuntimeError) as e:
            raise AdditionTaskError(f"problems must be (a, b) pairs of ints ({e})") from e
    if t.ndim != 2 or t.shape[1] != 2 or t.shape[0] == 0:
        raise AdditionTaskError(
            f"expected a non-empty sequence of (a, b) pairs / an [N, 2] tensor, got shape "
            f"{tuple(t.shape)}"
        )
    if t.dtype not in (torch.int64, torch.int32, torch.int16):
        raise AdditionTaskError(f"operands must be integers, got dtype {t.dtype}")
    t = t.long()
    bad = (t < MIN_OPERAND) | (t > MAX_OPERAND)
    if bool(bad.any()):
        row = int(bad.any(dim=1).nonzero()[0])
        raise AdditionTaskError(
            f"problem {tuple(t[row].tolist())} has an operand out of range: operands must be "
            f"in [{MIN_OPERAND}, {MAX_OPERAND}]"
        )
    return t


def _digits3(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x // 100, (x // 10) % 10, x % 10], dim=-1)


def make_batch(
    problems: Sequence[Problem] | torch.Tensor,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    loss_on: Literal["answer", "all"] = "answer",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[B, 14]`` and a boolean loss mask ``[B, 14]`` over the *target* positions.

    With ``batch_size`` the rows are drawn uniformly with replacement from ``problems`` (using
    ``generator``); otherwise every problem is encoded in order.  ``mask[i, t]`` is True when
    the token at ``t`` is supervised (predicted from position ``t - 1``): the answer digits and
    ``E`` for ``loss_on="answer"``, every non-pad token after ``B`` for ``loss_on="all"``.
    """
    t = _as_tensor(problems)
    if batch_size is not None:
        if batch_size <= 0:
            raise AdditionTaskError(f"batch_size must be positive, got {batch_size}")
        idx = torch.randint(0, t.shape[0], (batch_size,), generator=generator)
        t = t[idx]
    a, b = t[:, 0], t[:, 1]
    c = a + b
    n = t.shape[0]
    tokens = torch.full((n, SEQ_LEN), PAD, dtype=torch.long)
    tokens[:, 0] = BOS
    tokens[:, 1:4] = _digits3(a)
    tokens[:, 4] = PLUS
    tokens[:, 5:8] = _digits3(b)
    tokens[:, EQUALS_POS] = EQUALS
    four = c >= 1000
    c_digits4 = torch.stack([c // 1000, (c // 100) % 10, (c // 10) % 10, c % 10], dim=-1)
    c_digits3 = _digits3(c % 1000)
    tokens[:, 9:13] = torch.where(
        four[:, None], c_digits4, torch.cat([c_digits3, torch.full((n, 1), EOS)], dim=1)
    )
    tokens[:, 13] = torch.where(four, torch.tensor(EOS), torch.tensor(PAD))
    if loss_on == "answer":
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[:, ANSWER_START:] = tokens[:, ANSWER_START:] != PAD
    elif loss_on == "all":
        mask = tokens != PAD
        mask[:, 0] = False
    else:
        raise AdditionTaskError(f"loss_on must be 'answer' or 'all', got {loss_on!r}")
    return tokens, mask


# ----------------------------------------------------------------------------- probed model
def probed_model_config(
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    d_mlp: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
) -> HookedTransformerConfig:
    """GPT-2-style config of the probed model: 2 layers, 4 heads, d_model 32 by default.

    ``d_mlp`` defaults to GPT-2's ``4 * d_model`` (128); gelu_new, LayerNorm, learned absolute
    positions, n_ctx 14, vocabulary 15.  Smaller values are for tests only.
    """
    if d_model % n_heads:
        raise AdditionTaskError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
    return HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=4 * d_model if d_mlp is None else d_mlp,
        n_ctx=SEQ_LEN,
        d_vocab=D_VOCAB,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        attn_only=False,
        seed=seed,
        device=device,
        default_prepend_bos=False,
    )


_HASHED_FIELDS = (
    "n_layers",
    "d_model",
    "n_heads",
    "d_head",
    "d_mlp",
    "n_ctx",
    "d_vocab",
    "act_fn",
    "normalization_type",
    "positional_embedding_type",
    "attn_only",
    "final_rms",
    "parallel_attn_mlp",
    "original_architecture",
    "tokenizer_prepends_bos",
)


def config_dict(cfg: HookedTransformerConfig) -> dict:
    """The architecture-defining fields of ``cfg`` as JSON-safe values (what is hashed)."""
    return {k: getattr(cfg, k, None) for k in _HASHED_FIELDS}


def config_hash(cfg: HookedTransformerConfig | dict) -> str:
    """sha256 of the task name, vocabulary and the architecture fields of ``cfg``."""
    d = cfg if isinstance(cfg, dict) else config_dict(cfg)
    payload = {"task": TASK_NAME, "vocab": list(VOCAB), "seq_len": SEQ_LEN, "config": d}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def build_probed_model(cfg: HookedTransformerConfig | None = None) -> HookedTransformer:
    return HookedTransformer(cfg if cfg is not None else probed_model_config())


def _masked_loss(
    model: HookedTransformer, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    logits = model(tokens[:, :-1], return_type="logits")
    logp = logits.log_softmax(-1)
    tgt = tokens[:, 1:]
    nll = -logp.gather(-1, tgt[..., None])[..., 0]
    m = mask[:, 1:].to(nll.dtype)
    return (nll * m).sum() / m.sum()


def train_probed_model(
    steps: int = 6_500,
    batch_size: int = 512,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    *,
    weight_decay: float = 0.01,
    warmup_steps: int = 200,
    loss_on: Literal["answer", "all"] = "answer",
    cfg: HookedTransformerConfig | None = None,
    train_problems: Sequence[Problem] | torch.Tensor | None = None,
    time_budget_s: float | None = None,
    log_every: int = 100,
    history: list[tuple[int, float]] | None = None,
) -> HookedTransformer:
    """Train the probed model with AdamW on random batches of the training split.

    The LR warms up linearly for ``warmup_steps`` and then decays by cosine to 10 % over
    ``steps``.  ``time_budget_s`` stops early (the schedule still assumes ``steps``).  When a
    ``history`` list is given, ``(step, mean loss over the last log_every steps)`` is appended.
    """
    from tqdm.auto import tqdm

    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    torch.manual_seed(seed)
    cfg = cfg if cfg is not None else probed_model_config(seed=seed)
    model = build_probed_model(cfg)
    model.train()
    if train_problems is None:
        train_problems = train_test_split()[0]
    problems = _as_tensor(train_problems)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        frac = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * frac)).item())

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start = time.monotonic()
    running, n_run = 0.0, 0
    bar = tqdm(range(steps), disable=not progress, desc="train addition", mininterval=1.0)
    for step in bar:
        tokens, mask = make_batch(problems, batch_size, generator=gen, loss_on=loss_on)
        loss = _masked_loss(model, tokens, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        n_run += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean = running / n_run
            if history is not None:
                history.append((step + 1, mean))
            bar.set_postfix(loss=f"{mean:.4f}")
            running, n_run = 0.0, 0
        if time_budget_s is not None and time.monotonic() - start > time_budget_s:
            if history is not None and n_run:
                history.append((step + 1, running / n_run))
            break
    model.eval()
    return model


@torch.no_grad()
def greedy_answers(
    model: HookedTransformer, problems: Sequence[Problem] | torch.Tensor, batch_size: int = 8192
) -> torch.Tensor:
    """Greedy continuation after ``=``: ``[N, 5]`` generated ids at positions 9-13."""
    t = _as_tensor(problems)
    outs = []
    for chunk in t.split(batch_size):
        toks = make_batch(chunk)[0][:, :ANSWER_START].clone()
        for _ in range(SEQ_LEN - ANSWER_START):
            nxt = model(toks, return_type="logits")[:, -1].argmax(-1)
            toks = torch.cat([toks, nxt[:, None]], dim=1)
        outs.append(toks[:, ANSWER_START:])
    return torch.cat(outs)


@torch.no_grad()
def answer_accuracy(
    model: HookedTransformer, problems: Sequence[Problem] | torch.Tensor, batch_size: int = 8192
) -> float:
    """Exact-match accuracy of the greedy answer (all digits and the closing ``E``)."""
    was_training = model.training
    model.eval()
    try:
        gen = greedy_answers(model, problems, batch_size)
    finally:
        model.train(was_training)
    target = make_batch(problems)[0][:, ANSWER_START:]
    # Compare up to and including the first EOS of the target; what follows is padding.
    relevant = torch.cumsum((target == EOS).long(), dim=1) - (target == EOS).long() == 0
    ok = ((gen == target) | ~relevant).all(dim=1)
    return ok.float().mean().item()


# The probed model's files (save / load with hash checks) live in addition_checkpoint; the names
# stay reachable here, as they were before the split.
_CHECKPOINT_NAMES = ("save_probed_model", "read_probed_model_meta", "load_probed_model")


def __getattr__(name: str) -> object:
    if name in _CHECKPOINT_NAMES:
        from msae_plugin.inversionview import addition_checkpoint

        return getattr(addition_checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
