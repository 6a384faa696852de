"""Full-batch training of a :class:`GroupMLP` with the predecessors' settings.

Chughtai et al. 2023 and Stander et al. 2024 train on a fixed random fraction of all ``|G|²``
pairs with full-batch AdamW (lr 1e-3, betas (0.9, 0.98), weight decay 1.0) and a cross-entropy
loss computed in float64; these are the defaults here. Weight decay this strong is what makes the
networks "grok": test accuracy jumps long after the training set is fitted (S4 at 60 % train,
256/128: ~25-30k steps, ~1 minute on 2 CPU cores; see docs). The split is a seeded permutation
of the pairs, the first ``train_frac`` of which are the training set, so a (seed, fraction)
names one split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from msae_plugin.errors import GroupError
from msae_plugin.groups.model import GroupMLP


@dataclass
class TrainConfig:
    """``steps``: the most full-batch steps; ``split_seed``: None uses the model's seed;
    ``early_stop_acc`` / ``early_stop_hold``: stop once test accuracy has stayed at or above the
    threshold for that many steps (None: run all steps); ``grok_acc``: the test accuracy whose
    first crossing is recorded as the grokking step."""

    train_frac: float = 0.6
    steps: int = 30_000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 1.0
    split_seed: int | None = None
    eval_every: int = 100
    early_stop_acc: float | None = None
    early_stop_hold: int = 0
    grok_acc: float = 0.99
    progress: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0.0 < self.train_frac < 1.0:
            raise GroupError(f"train_frac must be in (0, 1), got {self.train_frac}")
        if self.steps < 1 or self.eval_every < 1:
            raise GroupError("steps and eval_every must be >= 1")


@dataclass
class TrainHistory:
    """Evaluations every ``eval_every`` steps (and at the end); ``grok_step``: the first
    evaluated step with test accuracy >= ``grok_acc`` (None if never)."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    grok_step: int | None = None
    final_step: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    n_train: int = 0
    n_test: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def split_pairs(n_elements: int, train_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair indices ``x·|G| + y`` for the train and test sets: a seeded permutation of all
    ``|G|²`` pairs, the first ``round(train_frac·|G|²)`` of which are the training set."""
    total = n_elements * n_elements
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    n_train = int(round(train_frac * total))
    if n_train < 1 or n_train >= total:
        raise GroupError(f"train_frac {train_frac} leaves an empty train or test set of "
                         f"{total} pairs")
    return perm[:n_train], perm[n_train:]


def _loss_acc(model: GroupMLP, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor
              ) -> tuple[torch.Tensor, float]:
    logits = model.fast_logits(x, y).double()  # float64 loss, as in the predecessors' code
    loss = F.cross_entropy(logits, z)
    acc = float((logits.argmax(-1) == z).double().mean())
    return loss, acc


def train_group_model(model: GroupMLP, cfg: TrainConfig | None = None,
                      on_eval: Callable[[int, GroupMLP, TrainHistory], None] | None = None
                      ) -> TrainHistory:
    """Train ``model`` in place on ``x·y`` and return its history (see :class:`TrainConfig`).

    ``on_eval(step, model, history)`` runs after each evaluation (e.g. to measure how the
    bi-equivariance R² grows after grokking without restarting the optimiser)."""
    cfg = cfg or TrainConfig()
    device = torch.device(cfg.device)
    model.to(device)
    n = model.group.order
    seed = model.cfg.seed if cfg.split_seed is None else cfg.split_seed
    train_idx, test_idx = split_pairs(n, cfg.train_frac, seed)
    table = model.group.table.to(device)
    xs, ys = train_idx.to(device) // n, train_idx.to(device) % n
    xt, yt = test_idx.to(device) // n, test_idx.to(device) % n
    zs, zt = table[xs, ys], table[xt, yt]
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas,
                            weight_decay=cfg.weight_decay)
    hist = TrainHistory(n_train=len(train_idx), n_test=len(test_idx))
    above_since: int | None = None
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc=f"{model.group.name} seed {model.cfg.seed}",
                   unit="step", mininterval=1.0)
    start = time.perf_counter()
    model.train()
    step = 0
    for step in range(1, cfg.steps + 1):
        loss, train_acc = _loss_acc(model, xs, ys, zs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise GroupError(f"training diverged at step {step} (loss {loss_value})")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            with torch.no_grad():
                test_loss, test_acc = _loss_acc(model, xt, yt, zt)
            hist.steps.append(step)
            hist.train_loss.append(loss_value)
            hist.train_acc.append(train_acc)
            hist.test_loss.append(float(test_loss))
            hist.test_acc.append(test_acc)
            if hist.grok_step is None and test_acc >= cfg.grok_acc:
                hist.grok_step = step
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{loss_value:.3g}", test_acc=f"{test_acc:.3f}")
            if on_eval is not None:
                on_eval(step, model, hist)
                model.train()
            if cfg.early_stop_acc is not None:
                if test_acc >= cfg.early_stop_acc:
                    above_since = step if above_since is None else above_since
                    if step - above_since >= cfg.early_stop_hold:
                        hist.stopped_early = True
                        break
                else:
                    above_since = None
    hist.final_step = step
    hist.seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    model.eval()
    return hist
