"""The group-composition network of Chughtai et al. 2023 (also studied by Stander et al. 2024 and
Wu et al. 2024), with TransformerLens hook points.

Architecture: one-hot x and y go through *separate* embeddings ``E_l``, ``E_r`` ``[|G|, d_e]``;
the two embeddings are concatenated (``2·d_e``), mapped by a bias-free linear layer
``W [2·d_e, m]``, passed through a ReLU and unembedded by ``W_U [m, |G|]`` (optionally with a
bias, as in Stander's ``SnMLP``). The first layer is linear in the concatenation, so the whole
network folds into three ``[m, |G|]`` lookup tables (:meth:`GroupMLP.folded`), which is the form
the explanation, the verifier and the equivariance metrics work on.

Hook points (every activation is a function of the input pair only, so caching every hook over
all ``|G|²`` pairs gives an exhaustive activation dataset): ``hook_embed_l`` / ``hook_embed_r``
``[batch, d_e]``, ``hook_pre`` / ``hook_post`` ``[batch, m]`` (before / after the ReLU) and
``hook_logits`` ``[batch, |G|]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from transformer_lens.hook_points import HookedRootModule, HookPoint

from msae_plugin.atomic_io import atomic_directory
from msae_plugin.errors import GroupError
from msae_plugin.groups.finite import FiniteGroup, get_group
from msae_plugin.groups.folded import FoldedWeights

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: shipped trained models live in ``msae_plugin/groups/data/<group>/``
DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass
class GroupMLPConfig:
    """``group``: a name :func:`get_group` accepts; ``d_embed`` (d_e) and ``d_hidden`` (m) as in
    Chughtai et al. (256 / 128); ``unembed_bias``: a bias on the logits (Stander's variant);
    ``seed``: the initialisation seed (the training split uses it too unless told otherwise)."""

    group: str = "S4"
    d_embed: int = 256
    d_hidden: int = 128
    unembed_bias: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_embed", "d_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GroupError(f"GroupMLPConfig.{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GroupMLPConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GroupError(f"unknown GroupMLPConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


class GroupMLP(HookedRootModule):
    """The Chughtai MLP for ``x·y`` on a finite group; ``forward(x_ids, y_ids) -> logits``."""

    def __init__(self, cfg: GroupMLPConfig | None = None, **kwargs) -> None:
        super().__init__()
        if cfg is None:
            cfg = GroupMLPConfig(**kwargs)
        elif kwargs:
            raise GroupError("pass either a GroupMLPConfig or keyword fields, not both")
        self.cfg = cfg
        self.group: FiniteGroup = get_group(cfg.group)
        n, d_e, m = self.group.order, cfg.d_embed, cfg.d_hidden
        gen = torch.Generator().manual_seed(cfg.seed)
        # Gaussian init scaled by 1/sqrt(fan_in) (Chughtai et al.); the embeddings act on
        # one-hot inputs, scaled by their output width so an embedding row has unit norm
        self.embed_l = torch.nn.Parameter(torch.randn(n, d_e, generator=gen) / math.sqrt(d_e))
        self.embed_r = torch.nn.Parameter(torch.randn(n, d_e, generator=gen) / math.sqrt(d_e))
        self.W = torch.nn.Parameter(torch.randn(2 * d_e, m, generator=gen) / math.sqrt(2 * d_e))
        self.W_U = torch.nn.Parameter(torch.randn(m, n, generator=gen) / math.sqrt(m))
        self.b_U = torch.nn.Parameter(torch.zeros(n)) if cfg.unembed_bias else None
        self.hook_embed_l = HookPoint()
        self.hook_embed_r = HookPoint()
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()
        self.hook_logits = HookPoint()
        self.setup()

    @property
    def n_elements(self) -> int:
        return self.group.order

    def all_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every input pair, x-major: ``x = i // |G|``, ``y = i % |G|`` (``|G|²`` each)."""
        n = self.group.order
        ids = torch.arange(n * n, device=self.W.device)
        return ids // n, ids % n

    def _ids(self, ids: torch.Tensor | list | int, what: str) -> torch.Tensor:
        t = torch.as_tensor(ids, device=self.W.device)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise GroupError(f"{what} must be integer element ids, got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.group.order):
            raise GroupError(f"{what} holds ids outside 0..{self.group.order - 1} "
                             f"({self.group.name} has {self.group.order} elements)")
        return t.long()

    def forward(self, x_ids: torch.Tensor, y_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., |G|]`` for the products ``x·y`` of element ids ``x_ids``, ``y_ids``."""
        x, y = self._ids(x_ids, "x_ids"), self._ids(y_ids, "y_ids")
        if x.shape != y.shape:
            raise GroupError(f"x_ids and y_ids must have one shape, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        e_l = self.hook_embed_l(self.embed_l[x])
        e_r = self.hook_embed_r(self.embed_r[y])
        pre = self.hook_pre(torch.cat([e_l, e_r], dim=-1) @ self.W)
        post = self.hook_post(torch.relu(pre))
        logits = post @ self.W_U
        if self.b_U is not None:
            logits = logits + self.b_U
        return self.hook_logits(logits)

    def fast_logits(self, x_ids: torch.Tensor, y_ids: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without hook points or input checks, for training: the first layer is
        applied to the ``|G|`` embedding rows once (``E_l W_top``, ``E_r W_bottom``) and then
        gathered, instead of to every input pair. Same function and gradients, and ~|batch|/|G|
        times fewer multiply-adds (A5 at 50 % train: 30x)."""
        d_e = self.cfg.d_embed
        pre = (self.embed_l @ self.W[:d_e])[x_ids] + (self.embed_r @ self.W[d_e:])[y_ids]
        logits = torch.relu(pre) @ self.W_U
        return logits + self.b_U if self.b_U is not None else logits

    @torch.no_grad()
    def folded(self) -> FoldedWeights:
        """The ``[m, |G|]`` float64 tables: ``w_l = (E_l W_top)ᵀ``, ``w_r = (E_r W_bottom)ᵀ``,
        ``w_u = W_U`` (and the unembedding bias); computed in float64 so that folded logits
        agree with :meth:`forward` to float32 rounding, not worse."""
        d_e = self.cfg.d_embed
        w = self.W.detach().double().cpu()
        w_l = (self.embed_l.detach().double().cpu() @ w[:d_e]).T.contiguous()
        w_r = (self.embed_r.detach().double().cpu() @ w[d_e:]).T.contiguous()
        w_u = self.W_U.detach().double().cpu().clone()
        bias = None if self.b_U is None else self.b_U.detach().double().cpu().clone()
        return FoldedWeights(w_l, w_r, w_u, bias)

    # ---- saving and loading -------------------------------------------------------------

    def save(self, folder: str | Path, metadata: dict | None = None) -> Path:
        """Write ``model.safetensors`` + ``config.json`` into ``folder`` atomically (the folder
        holds the previous complete model or the new one, never half of either)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        doc = {"config": self.cfg.to_dict(), "n_elements": self.group.order,
               "metadata": metadata or {}}
        with atomic_directory(folder) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> GroupMLP:
        """Load a model :meth:`save` wrote. A model whose output size does not match the group
        its config names is refused with a :class:`GroupError` naming both sizes."""
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise GroupError(f"{folder} is not a saved GroupMLP: it needs {CONFIG_FILE} and "
                             f"{WEIGHTS_FILE}")
        try:
            doc = json.loads(cfg_path.read_text())
            cfg = GroupMLPConfig.from_dict(doc["config"])
        except (ValueError, KeyError, TypeError) as exc:
            raise GroupError(f"{cfg_path} is not a GroupMLP config: {exc}") from exc
        state = load_file(str(w_path))
        model = cls(cfg)
        n = model.group.order
        w_u, e_l = state.get("W_U"), state.get("embed_l")
        if w_u is None or w_u.dim() != 2 or e_l is None:
            raise GroupError(f"{w_path} has no [m, |G|] unembedding W_U or no embed_l")
        if w_u.shape[1] != n or e_l.shape[0] != n:
            raise GroupError(
                f"the saved model has {w_u.shape[1]} outputs but {cfg.group} has {n} elements; "
                f"it was trained on another group (one of order {w_u.shape[1]})."
            )
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if expected != got:
            raise GroupError(f"{w_path} does not match its config {cfg}: expected tensors "
                             f"{expected}, found {got}")
        model.load_state_dict(state)
        model.metadata = doc.get("metadata", {})
        return model.to(device)


def shipped_models() -> list[str]:
    """Group names with a trained model shipped in the package."""
    if not DATA_DIR.is_dir():
        return []
    return sorted(p.name for p in DATA_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def load_shipped_model(group: str = "S4", device: str | torch.device = "cpu") -> GroupMLP:
    """The trained model shipped for ``group`` (S4: seed 0, 60 % train, trained well past
    grokking; its ``metadata`` records the training run and its measured accuracy / R²)."""
    name = get_group(group).name  # validates the name ("s4" -> "S4")
    if name not in shipped_models():
        raise GroupError(f"no shipped model for {name}; shipped: {shipped_models()}. Train one "
                         "with scripts/train_group_models.py.")
    return GroupMLP.load(DATA_DIR / name, device=device)
