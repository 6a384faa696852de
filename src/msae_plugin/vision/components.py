"""TransformerLens-style hooked views of OpenCLIP's transformer pieces.

Each class here *borrows* an OpenCLIP module (held by reference, not registered as a child, so the
parameters exist once, in the wrapped CLIP model, and cannot drift) and re-expresses its forward
with :class:`~transformer_lens.hook_points.HookPoint` s at the places TransformerLens names them.

Why fast paths: a hook point with nothing attached is an identity, but recomputing attention by
hand is slower than PyTorch's fused kernels. So each component checks whether any hook *inside*
it is live: if none is, it calls OpenCLIP's own module (bit-for-bit the reference computation);
if some are, it computes the decomposed version (q, k, v, scores, pattern, z) from the same
weights. Parity between the two paths is what the test suite checks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint


def _live(*points: nn.Module) -> bool:
    """True when any of the hook points has a forward or backward hook attached, or has been
    *replaced* by another module.

    SAELens splices an SAE by setting its wrapper module in place of the ``HookPoint`` (and the
    wrapper has no hooks of its own), so "nothing attached" is only proof of an identity for a
    plain ``HookPoint``; anything else must run, or the spliced SAE would silently be skipped.
    """
    return any(
        not isinstance(p, HookPoint) or p._forward_hooks or p._backward_hooks for p in points
    )


def _spliced_sae(point: nn.Module) -> object | None:
    """The SAE held by a SAELens splicing wrapper at a hook point (``None`` for a HookPoint)."""
    if isinstance(point, HookPoint):
        return None
    return point.__dict__.get("_sae", getattr(point, "sae", None))


def _run_head_hook(point: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Call a ``[batch, pos, head, d_head]`` hook point (q, k, v or z).

    Hooks see the per-head tensor, as in TransformerLens. A spliced SAE reads heads flattened to
    ``n_heads * d_head`` (SAELens's convention for ``hook_z``, which ``check_sae`` enforces for
    q/k/v too), so the tensor is flattened for it and its output put back per head, unless the SAE
    flattens by itself (SAELens's ``reshape_activations="hook_z"``)."""
    sae = _spliced_sae(point)
    if sae is None or getattr(sae, "hook_z_reshaping_mode", False):
        return point(x)
    return point(x.flatten(-2)).reshape(x.shape)


class _Borrowing(nn.Module):
    """Holds a reference to an OpenCLIP module without registering it (no duplicated params)."""

    def __init__(self, borrowed: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_borrowed", borrowed)

    @property
    def borrowed(self) -> nn.Module:
        return self._borrowed  # type: ignore[return-value]


class HookedLayerNorm(_Borrowing):
    """OpenCLIP ``LayerNorm`` / ``LayerNormFp32`` with ``hook_scale`` and ``hook_normalized``.

    As in TransformerLens, ``hook_normalized`` is the centred, scaled input *before* the affine
    weight and bias; ``hook_scale`` is ``sqrt(var + eps)`` with a trailing singleton dimension.
    """

    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__(ln)
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()
        self._fp32 = type(ln).__name__ == "LayerNormFp32"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ln = self.borrowed
        if not _live(self.hook_scale, self.hook_normalized):
            return ln(x)
        orig_dtype = x.dtype
        h = x.float() if self._fp32 else x
        h = h - h.mean(-1, keepdim=True)
        scale = self.hook_scale((h.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt())
        h = self.hook_normalized(h / scale)
        if ln.weight is not None:
            h = h * ln.weight.to(h.dtype)
        if ln.bias is not None:
            h = h + ln.bias.to(h.dtype)
        return h.to(orig_dtype)


class HookedAttention(_Borrowing):
    """``nn.MultiheadAttention`` (self-attention, batch-first) with TransformerLens hooks.

    Shapes follow TransformerLens: ``hook_q/k/v/z`` are ``[batch, pos, head, d_head]``,
    ``hook_attn_scores`` and ``hook_pattern`` are ``[batch, head, query_pos, key_pos]``. Scores
    are hooked after the additive mask (masked entries are ``-inf``), as in TransformerLens.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__(mha)
        if not getattr(mha, "batch_first", False):
            raise ValueError("only batch-first nn.MultiheadAttention is supported (OpenCLIP >= 2.26)")
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("only plain self-attention MultiheadAttention blocks are supported")
        self.n_heads = mha.num_heads
        self.d_head = mha.head_dim
        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        mha = self.borrowed
        qkvz = (self.hook_q, self.hook_k, self.hook_v, self.hook_z)
        need_pattern = _live(self.hook_attn_scores, self.hook_pattern)
        if attn_mask is not None:
            attn_mask = attn_mask.to(x.dtype)
        if not need_pattern and not _live(*qkvz):
            return mha(x, x, x, need_weights=False, attn_mask=attn_mask)[0]

        b, n, d = x.shape
        qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
        q, k, v = (t.reshape(b, n, self.n_heads, self.d_head) for t in qkv.chunk(3, dim=-1))
        q, k, v = (_run_head_hook(h, t) for h, t in zip(qkvz[:3], (q, k, v), strict=True))
        if need_pattern:
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.d_head)
            if attn_mask is not None:
                scores = scores + self._broadcast_mask(attn_mask, b)
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        else:
            mask = None if attn_mask is None else self._broadcast_mask(attn_mask, b)
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
            ).transpose(1, 2)
        z = _run_head_hook(self.hook_z, z)
        return F.linear(z.reshape(b, n, d), mha.out_proj.weight, mha.out_proj.bias)

    def _broadcast_mask(self, mask: torch.Tensor, batch: int) -> torch.Tensor:
        """OpenCLIP passes ``[q, k]`` or ``[batch*heads, q, k]`` additive masks."""
        if mask.dim() == 2:
            return mask
        return mask.reshape(batch, self.n_heads, *mask.shape[-2:])


class HookedMLP(_Borrowing):
    """OpenCLIP's ``c_fc -> act -> c_proj`` MLP with ``hook_pre`` / ``hook_post``.

    The activation module (``nn.GELU`` or ``QuickGELU``) is OpenCLIP's own, so QuickGELU models
    are reproduced exactly.
    """

    def __init__(self, mlp: nn.Sequential) -> None:
        super().__init__(mlp)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.borrowed
        return mlp.c_proj(self.hook_post(mlp.gelu(self.hook_pre(mlp.c_fc(x)))))


class HookedBlock(_Borrowing):
    """One OpenCLIP ``ResidualAttentionBlock`` with TransformerLens block-level hooks.

    ``hook_attn_out`` and ``hook_mlp_out`` are what the block *adds to the residual stream*, i.e.
    after LayerScale (``ls_1`` / ``ls_2``) when the model uses it, so that
    ``resid_mid = resid_pre + attn_out`` and ``resid_post = resid_mid + mlp_out`` hold exactly.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__(block)
        self.hook_resid_pre = HookPoint()
        self.ln1 = HookedLayerNorm(block.ln_1)
        self.attn = HookedAttention(block.attn)
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.ln2 = HookedLayerNorm(block.ln_2)
        self.mlp = HookedMLP(block.mlp)
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        blk = self.borrowed
        x = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(blk.ls_1(self.attn(self.ln1(x), attn_mask=attn_mask)))
        x = self.hook_resid_mid(x + attn_out)
        mlp_out = self.hook_mlp_out(blk.ls_2(self.mlp(self.ln2(x))))
        return self.hook_resid_post(x + mlp_out)
