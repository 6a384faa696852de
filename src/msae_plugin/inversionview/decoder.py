"""The InversionView decoder network (Huang et al. 2024): a small GPT-2-style causal transformer
conditioned on (hook/site identity, activation vector).

Design (the reference design of the paper's code, re-written in plain PyTorch):

* **Activation processor.** ``concat(activation, site_embedding)`` (width ``R = d_act + n_sites``)
  goes through ``n_act_blocks`` pre-LN residual MLP blocks ``h += W2 relu(W1 LN(h))``
  (``W1: R -> d_act``, ``W2: d_act -> R``) and a final LayerNorm. One decoder serves every site
  (hook) of a probed model; the site embedding tells them apart.
* **Injection.** Every block projects the processed activation to one extra key/value *slot*
  (``LN(Linear_l(z))``) that is put in front of the normed token states before the block's
  shared QKV projection. Every token attends to the slot; the slot has no query row and
  nothing is added to the residual stream directly.
* **Output.** Next-token logits over the probed model's own vocabulary (tied embeddings).

Why a slot instead of a prefix token or cross-attention: it is what the paper's results were
obtained with, it costs one key/value per layer, and positions stay those of the input.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from msae_plugin.errors import QueryActivationError

_MATH_SDPA_MAX_KEYS = 64
KV = tuple[torch.Tensor, torch.Tensor]  # one block's cached keys/values [b, heads, 1 + t, d_head]


@dataclass
class DecoderConfig:
    """Shape of a decoder. ``vocab_size``/``n_ctx`` and the special ids come from the probed
    model's tokenizer; ``d_act`` is the probed activation width, ``n_sites`` the number of
    hooks it was trained on."""

    vocab_size: int
    n_ctx: int
    d_act: int
    n_sites: int
    pad_id: int
    bos_id: int
    eos_id: int
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int | None = None
    n_act_blocks: int = 6
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        for name in ("vocab_size", "n_ctx", "d_act", "n_sites", "n_layers", "n_act_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is outside the vocabulary")

    @property
    def mlp_width(self) -> int:
        return self.d_mlp or 4 * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)


class ActivationProcessor(nn.Module):
    """``(activation, site) -> z`` of width ``d_act + n_sites``."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        width = cfg.d_act + cfg.n_sites
        self.site_embed = nn.Embedding(cfg.n_sites, cfg.n_sites)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, cfg.d_act), nn.ReLU(),
                nn.Linear(cfg.d_act, width),
            )
            for _ in range(cfg.n_act_blocks)
        )
        self.ln = nn.LayerNorm(width)

    def forward(self, act: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        h = torch.cat([act, self.site_embed(site)], dim=-1)
        for block in self.blocks:
            h = h + block(h)
        return self.ln(h)


class SlotAttention(nn.Module):
    """Causal self-attention whose keys/values have one extra slot in front (the activation)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(
        self, x: torch.Tensor, slot: torch.Tensor | None, past: KV | None = None
    ) -> tuple[torch.Tensor, KV]:
        """``x``: new token states ``[b, t, d]``. Without ``past`` these are the whole prefix
        and ``slot`` is projected in front; with ``past`` (keys/values of the slot and earlier
        tokens, from a previous call) they continue it. Returns the output and the keys/values
        to pass next time (sampling without recomputing the prefix)."""
        b, t, d = x.shape
        h = self.n_heads
        if past is None:
            # one projection of [slot, tokens]: queries from the token rows (the slot has none),
            # keys/values from all (projecting the tokens twice cost ~13 % of a training step)
            q, k, v = self.qkv(torch.cat([slot.unsqueeze(1), x], dim=1)).chunk(3, dim=-1)
            q = q[:, 1:]
            k = k.view(b, t + 1, h, d // h).transpose(1, 2)
            v = v.view(b, t + 1, h, d // h).transpose(1, 2)
            # query i sees the slot (key 0) and tokens 0..i (keys 1..i+1)
            mask = torch.ones(t, t + 1, dtype=torch.bool, device=x.device).tril(diagonal=1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            k = torch.cat([past[0], k.view(b, t, h, d // h).transpose(1, 2)], dim=2)
            v = torch.cat([past[1], v.view(b, t, h, d // h).transpose(1, 2)], dim=2)
            n_past = past[0].shape[2]
            mask = torch.ones(t, n_past + t, dtype=torch.bool, device=x.device).tril(
                diagonal=n_past)
        q = q.reshape(b, t, h, d // h).transpose(1, 2)
        # Training (whole prefix) on CPU: the "math" kernel is ~2x faster than the default
        # (flash) kernel, forward and backward, at short sequences like the addition task's 14
        # keys (equal at ~77 keys); same result to float rounding. Sampling one new token at a
        # time is faster with the default.
        math = past is None and x.device.type == "cpu" and k.shape[2] <= _MATH_SDPA_MAX_KEYS
        with sdpa_kernel(SDPBackend.MATH) if math else nullcontext():
            z = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        return self.out(z.transpose(1, 2).reshape(b, t, d)), (k, v)


class DecoderBlock(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.slot_proj = nn.Linear(cfg.d_act + cfg.n_sites, cfg.d_model)
        self.slot_ln = nn.LayerNorm(cfg.d_model)
        self.attn = SlotAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_width), nn.GELU(), nn.Linear(cfg.mlp_width, cfg.d_model)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, z: torch.Tensor | None, past: KV | None = None
    ) -> tuple[torch.Tensor, KV]:
        slot = None if past is not None else self.slot_ln(self.slot_proj(z))
        a, kv = self.attn(self.ln1(x), slot, past)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.ln2(x))), kv


class InversionViewDecoder(nn.Module):
    """``forward(tokens, act, site) -> logits[batch, seq, vocab]``; :meth:`loss` is the
    next-token cross-entropy over non-pad targets; :meth:`sample` generates inputs."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.act_proc = ActivationProcessor(cfg)
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.tok_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed.weight, std=0.02)

    def _check(self, tokens: torch.Tensor, act: torch.Tensor, site: torch.Tensor) -> None:
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            raise ValueError(f"tokens must be a non-empty [batch, seq] tensor, got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"sequence of length {tokens.shape[1]} exceeds the decoder's n_ctx={self.cfg.n_ctx}"
            )
        if act.shape[-1] != self.cfg.d_act:
            raise ValueError(
                f"activation width {act.shape[-1]} does not match the decoder's d_act="
                f"{self.cfg.d_act} (it was trained on a probed model of that width)"
            )
        if site.min() < 0 or site.max() >= self.cfg.n_sites:
            raise ValueError(f"site ids must be in [0, {self.cfg.n_sites}), got {site.tolist()}")

    def forward(self, tokens: torch.Tensor, act: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        self._check(tokens, act, site)
        return self._run(tokens, self.act_proc(act, site))[0]

    def _run(
        self, tokens: torch.Tensor, z: torch.Tensor | None, past: list[KV] | None = None
    ) -> tuple[torch.Tensor, list[KV]]:
        start = 0 if past is None else past[0][0].shape[2] - 1  # minus the slot
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.tok_embed(tokens) + self.pos_embed(pos)
        kvs = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, z, None if past is None else past[i])
            kvs.append(kv)
        return self.ln_f(x) @ self.tok_embed.weight.T, kvs

    def loss(self, tokens: torch.Tensor, act: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; padding targets are ignored."""
        logits = self(tokens[:, :-1], act, site)
        targets = tokens[:, 1:].masked_fill(tokens[:, 1:] == self.cfg.pad_id, -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-100)

    @torch.no_grad()
    def sample(
        self,
        act: torch.Tensor,
        site: torch.Tensor,
        temperature: float = 1.0,
        noise: float = 0.0,
        max_len: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One sampled input per row of ``act``: ``[batch, <= max_len]`` tokens starting with
        BOS, padded after EOS. ``noise`` adds ``N(0, 1) * std(act) * noise`` to each query
        (the paper's query perturbation)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not bool(torch.isfinite(act).all()):  # would surface as torch.multinomial's error
            raise QueryActivationError(
                "an activation to sample from contains NaN or inf; check where it came from "
                "(torch.isfinite(act).all() must hold)"
            )
        max_len = min(max_len or self.cfg.n_ctx, self.cfg.n_ctx)
        if noise:
            eps = torch.randn(act.shape, generator=generator, device=act.device, dtype=act.dtype)
            act = act + eps * act.std(dim=-1, keepdim=True) * noise
        b = act.shape[0]
        tokens = torch.full((b, 1), self.cfg.bos_id, dtype=torch.long, device=act.device)
        self._check(tokens, act, site)
        done = torch.zeros(b, dtype=torch.bool, device=act.device)
        past = None
        z = self.act_proc(act, site)
        while tokens.shape[1] < max_len and not done.all():
            # keys/values of the slot and the prefix are cached: one new token per step
            step_logits, past = self._run(tokens if past is None else tokens[:, -1:], z, past)
            logits = step_logits[:, -1] / temperature
            probs = torch.softmax(logits.float(), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, self.cfg.pad_id), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            done |= nxt == self.cfg.eos_id
        return tokens
